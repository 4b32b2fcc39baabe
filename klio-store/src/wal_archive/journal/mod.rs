//! The journal of an in-progress segment: authenticated frames in a zero-padded file.
//!
//! A journal `<segment name>.klio-journal` holds the WAL of one segment received so far as a
//! sequence of frames. The first frame starts at the segment's first byte and every frame
//! continues the previous one exactly. A journal comes in one of two formats, told apart by its
//! first bytes: plain (CRC-32C frames from offset 0) or encrypted (a sealed key header, then
//! AES-256-GCM frames from offset 4096). The format is fixed when the journal is created: an
//! archive opened with a keyring creates encrypted journals, one without creates plain ones,
//! and either continues an existing journal in the format it has.
//!
//! # Plain journals
//!
//! Frames are written back to back from file offset 0. A frame is a 32-byte header followed by
//! its data (all integers little-endian):
//!
//! | bytes  | field                                                        |
//! |--------|--------------------------------------------------------------|
//! | 0..4   | magic `KLWJ`                                                 |
//! | 4      | format version, 1                                            |
//! | 5      | flags: bit 0 `CONTINUED` (no fdatasync followed this frame   |
//! |        | before the next one was written); other bits zero            |
//! | 6..8   | reserved, zero                                               |
//! | 8..12  | timeline                                                     |
//! | 12..16 | data length in bytes (> 0)                                   |
//! | 16..24 | start LSN of the data                                        |
//! | 24..28 | reserved, zero                                               |
//! | 28..32 | CRC-32C over bytes 0..28 of the header and then the data     |
//!
//! # Encrypted journals
//!
//! Bytes `0..209` hold a klio-crypto sealed object (compression none, one chunk; see
//! `klio_crypto::format`) whose plaintext is the 64-byte *key block* (integers little-endian):
//!
//! | bytes  | field                                                        |
//! |--------|--------------------------------------------------------------|
//! | 0..8   | magic `KLWJKEY1`                                             |
//! | 8..16  | the cluster's system id                                      |
//! | 16..20 | timeline                                                     |
//! | 20..28 | segment number                                               |
//! | 28..32 | segment size in bytes                                        |
//! | 32..64 | the journal's frame key (random, AES-256-GCM)                |
//!
//! So the frame key is wrapped by the keyring's KEK exactly like any sealed object's data key,
//! and key rotation rewrites only the object's key slot (bytes 48..124) in place. The object's
//! random 16-byte object id (bytes 16..32) is the *journal id*. The name binding in the key
//! block is checked on every open, so a journal renamed, swapped or copied from another archive
//! is refused. Bytes 209..4096 are zero. Frames follow from offset 4096, back to back, each a
//! 48-byte header, the ciphertext (as long as the data) and a 16-byte tag:
//!
//! | bytes  | field                                                        |
//! |--------|--------------------------------------------------------------|
//! | 0..4   | magic `KLWE`                                                 |
//! | 4      | format version, 1                                            |
//! | 5      | flags: bit 0 `CONTINUED`, as above                           |
//! | 6..8   | reserved, zero                                               |
//! | 8..12  | timeline                                                     |
//! | 12..16 | data length in bytes (> 0)                                   |
//! | 16..24 | start LSN of the data                                        |
//! | 24..32 | sequence number: 0 for the first frame, then +1 per frame    |
//! | 32..44 | AES-256-GCM nonce: 12 random bytes                           |
//! | 44..48 | reserved, zero                                               |
//!
//! The AEAD's additional data is the journal id followed by the whole 48-byte header, so a
//! frame cannot be altered, reordered (sequence number and start LSN), dropped from the middle
//! (the next one would not continue it), or moved to another journal (journal id) undetected.
//! The nonce is random rather than the sequence number on purpose: after a crash the torn tail
//! is cleared and a frame with the same sequence number is written again, with different
//! length and flags; a counter nonce would then be reused under the same key with different
//! data, which breaks AES-GCM. Random 96-bit nonces make that as unlikely as a collision among
//! the (at most a few million) frames of one journal. Frames are not compressed (they are
//! small and latency matters); the completed segment is. The AEAD itself is
//! [`klio_crypto::journal_frame`].
//!
//! # Both formats
//!
//! The file is pre-padded with real zeros (segment size + 1/8, after the key header when
//! encrypted), so appending a frame never changes the file size and `fdatasync` makes it
//! durable; a journal that outgrows the padding is extended by another eighth of a segment,
//! with an fsync. An encrypted journal's key header is written with the padding and fsynced
//! before any frame. A scan stops at the first frame that is not valid (zeros, a torn write, a
//! bad CRC or tag, a discontinuity): the end of the last valid frame is the exact durable end
//! after a crash. An encrypted journal whose key header cannot be opened but that holds nothing
//! after it was cut short while being created (nothing in it was ever acknowledged); with
//! anything after it, it is damaged.
//!
//! Only a torn tail is expected. A frame with a bad CRC (or tag) is proven to have been damaged
//! *after* it was made durable when a valid frame written after a later fdatasync follows it
//! (the `CONTINUED` flag tells which frames were followed by an fdatasync); such a journal is
//! reported as damaged instead of being cut short silently. What stops a scan and what makes
//! a journal damaged are typed ([`FrameDefect`], [`ScanStop`], [`JournalDamage`]).
//!
//! # Files
//!
//! - `format`: constants, frame headers and the key block, encoded and decoded;
//! - `source`: the bytes a journal is read from (a file, or memory);
//! - `scan`: reading frames back, the durable end, torn tail or damage;
//! - `defect`: the typed findings of a scan;
//! - `writer`: [`JournalWriter`], and turning a complete journal into the segment file.

mod defect;
mod format;
mod scan;
mod source;
mod writer;

#[cfg(test)]
mod tests;

pub use defect::{FrameCheck, FrameDefect, JournalDamage, ScanStop};
/// The frame layout, for tests that write journals by hand or damage them at exact offsets.
#[cfg(test)]
pub(crate) use format::{ENC_FRAMES_START, ENC_HEADER_LEN, HEADER_LEN, TAG_LEN, encode_frame};
pub(crate) use format::{FrameFormat, JOURNAL_SUFFIX, journal_name};
pub(crate) use scan::{JournalScan, ScanError, copy_frames, scan_with};
pub(crate) use source::{FileSource, nonzero_tail_end};
pub(crate) use writer::{JournalWriter, finish_segment};
