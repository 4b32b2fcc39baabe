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
//! small and latency matters); the completed segment is.
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
//! reported as damaged instead of being cut short silently.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use klio_crypto::{Compression, CryptoError, KeyId, ObjectHeader, SealOptions, SecureRandom};
use klio_wal::{FsAction, Lsn, SegmentNo, SegmentSize, TimelineId, WalFileName, durable};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

use super::sealed::SegmentWriter;
use super::{Ctx, WalArchiveError, optional_file};

/// Suffix appended to a segment's name for its journal.
pub(super) const JOURNAL_SUFFIX: &str = ".klio-journal";

/// Length of a plain frame header.
pub(super) const HEADER_LEN: u64 = 32;
const MAGIC: [u8; 4] = *b"KLWJ";
const VERSION: u8 = 1;
const FLAG_CONTINUED: u8 = 0x01;
/// Bytes read per I/O when scanning or copying.
const IO_CHUNK: u64 = 1 << 20;

/// Length of an encrypted frame header.
pub(super) const ENC_HEADER_LEN: u64 = 48;
/// Length of an encrypted frame's tag.
pub(super) const TAG_LEN: u64 = 16;
const ENC_MAGIC: [u8; 4] = *b"KLWE";
const NONCE_LEN: usize = 12;
/// File offset of an encrypted journal's first frame.
pub(super) const ENC_FRAMES_START: u64 = 4096;
const KEY_BLOCK_MAGIC: [u8; 8] = *b"KLWJKEY1";
const KEY_BLOCK_LEN: usize = 64;
/// Length of the sealed key header of an encrypted journal: object header, one chunk (length
/// field, stored marker, key block, tag).
pub(super) const KEY_OBJECT_LEN: usize =
    klio_crypto::HEADER_LEN + 4 + 1 + KEY_BLOCK_LEN + klio_crypto::format::TAG_LEN;

/// The per-journal frame key of an encrypted journal.
pub(super) struct FrameKey {
    aead: LessSafeKey,
    journal_id: [u8; 16],
}

impl fmt::Debug for FrameKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameKey")
            .field("journal_id", &self.journal_id)
            .finish_non_exhaustive()
    }
}

/// How a journal's frames are protected.
#[derive(Clone, Debug)]
pub(super) enum FrameFormat {
    /// CRC-32C frames from offset 0.
    Plain,
    /// AES-256-GCM frames after a sealed key header.
    Encrypted(Arc<FrameKey>),
}

impl FrameFormat {
    fn first_frame(&self) -> u64 {
        match self {
            FrameFormat::Plain => 0,
            FrameFormat::Encrypted(_) => ENC_FRAMES_START,
        }
    }
}

/// What protects one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FrameSeal {
    /// The stored CRC of a plain frame.
    Crc(u32),
    /// Sequence number and nonce of an encrypted frame.
    Aead { seq: u64, nonce: [u8; NONCE_LEN] },
}

/// One valid frame of a journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Frame {
    /// File offset of the frame header.
    pub(super) offset: u64,
    /// LSN of the first data byte.
    pub(super) start: Lsn,
    /// Data length.
    pub(super) len: u32,
    /// No fdatasync followed this frame before the next one was written.
    pub(super) continued: bool,
    /// The stored CRC, or the AEAD parameters.
    seal: FrameSeal,
}

impl Frame {
    fn header_len(&self) -> u64 {
        match self.seal {
            FrameSeal::Crc(_) => HEADER_LEN,
            FrameSeal::Aead { .. } => ENC_HEADER_LEN,
        }
    }

    fn data_offset(&self) -> u64 {
        self.offset + self.header_len()
    }

    /// Bytes of data (and tag) stored after the header.
    fn stored_len(&self) -> u64 {
        u64::from(self.len)
            + match self.seal {
                FrameSeal::Crc(_) => 0,
                FrameSeal::Aead { .. } => TAG_LEN,
            }
    }

    /// File offset just past the frame.
    pub(super) fn end_offset(&self) -> u64 {
        self.data_offset() + self.stored_len()
    }

    /// LSN just past the frame's data.
    pub(super) fn end_lsn(&self) -> Lsn {
        Lsn(self.start.0 + u64::from(self.len))
    }
}

fn header_fields(timeline: TimelineId, start: Lsn, len: u32, continued: bool) -> [u8; 28] {
    let mut h = [0u8; 28];
    h[0..4].copy_from_slice(&MAGIC);
    h[4] = VERSION;
    h[5] = if continued { FLAG_CONTINUED } else { 0 };
    h[8..12].copy_from_slice(&timeline.get().to_le_bytes());
    h[12..16].copy_from_slice(&len.to_le_bytes());
    h[16..24].copy_from_slice(&start.0.to_le_bytes());
    h
}

/// Encodes a complete frame (header and data) ready to be written.
pub(super) fn encode_frame(
    timeline: TimelineId,
    start: Lsn,
    data: &[u8],
    continued: bool,
) -> Vec<u8> {
    // Frames never exceed a segment (at most 1 GiB), so the length fits in 32 bits.
    let len = data.len() as u32;
    let fields = header_fields(timeline, start, len, continued);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&fields), data);
    let mut out = Vec::with_capacity(HEADER_LEN as usize + data.len());
    out.extend_from_slice(&fields);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(data);
    out
}

fn enc_header(
    timeline: TimelineId,
    start: Lsn,
    len: u32,
    continued: bool,
    seq: u64,
    nonce: &[u8; NONCE_LEN],
) -> [u8; ENC_HEADER_LEN as usize] {
    let mut h = [0u8; ENC_HEADER_LEN as usize];
    h[0..4].copy_from_slice(&ENC_MAGIC);
    h[4] = VERSION;
    h[5] = if continued { FLAG_CONTINUED } else { 0 };
    h[8..12].copy_from_slice(&timeline.get().to_le_bytes());
    h[12..16].copy_from_slice(&len.to_le_bytes());
    h[16..24].copy_from_slice(&start.0.to_le_bytes());
    h[24..32].copy_from_slice(&seq.to_le_bytes());
    h[32..44].copy_from_slice(nonce);
    h
}

fn enc_aad(key: &FrameKey, header: &[u8; ENC_HEADER_LEN as usize]) -> [u8; 64] {
    let mut aad = [0u8; 64];
    aad[..16].copy_from_slice(&key.journal_id);
    aad[16..].copy_from_slice(header);
    aad
}

/// Encodes an encrypted frame with a fresh random nonce.
fn encode_encrypted_frame(
    key: &FrameKey,
    timeline: TimelineId,
    start: Lsn,
    data: &[u8],
    continued: bool,
    seq: u64,
    rng: &dyn SecureRandom,
) -> Result<(Vec<u8>, FrameSeal), CryptoError> {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut nonce).map_err(|_| CryptoError::Random)?;
    let header = enc_header(timeline, start, data.len() as u32, continued, seq, &nonce);
    let mut out = Vec::with_capacity(ENC_HEADER_LEN as usize + data.len() + TAG_LEN as usize);
    out.extend_from_slice(&header);
    out.extend_from_slice(data);
    let tag = key
        .aead
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(enc_aad(key, &header)),
            &mut out[ENC_HEADER_LEN as usize..],
        )
        .map_err(|_| CryptoError::Encryption {
            reason: "sealing a journal frame",
        })?;
    out.extend_from_slice(tag.as_ref());
    Ok((out, FrameSeal::Aead { seq, nonce }))
}

/// Random-access bytes a journal can be scanned from: a file, or memory (tests, fuzzing).
pub(super) trait Source {
    /// Length in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; the range lies within `size()`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl Source for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|o| self.get(o..)?.get(..buf.len()))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// A journal file opened for reading, with its length taken once.
#[derive(Debug)]
pub(super) struct FileSource<'a> {
    pub(super) file: &'a File,
    pub(super) len: u64,
}

impl<'a> FileSource<'a> {
    pub(super) fn new(file: &'a File) -> io::Result<Self> {
        Ok(FileSource {
            file,
            len: file.metadata()?.len(),
        })
    }
}

impl Source for FileSource<'_> {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self.file, buf, offset)
    }
}

/// Reads `[offset, offset + len)` in chunks and hands each to `f`.
fn for_each_chunk<S: Source + ?Sized>(
    src: &S,
    offset: u64,
    len: u64,
    mut f: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut buf = vec![0u8; len.min(IO_CHUNK) as usize];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(IO_CHUNK) as usize;
        src.read_exact_at(&mut buf[..n], offset + done)?;
        f(&buf[..n])?;
        done += n as u64;
    }
    Ok(())
}

/// The result of checking the bytes at one position.
enum Check {
    Valid(Frame),
    /// Not a valid frame. `header` is set when the header itself was well formed (only the CRC
    /// or tag failed), which makes the frame's extent known.
    Invalid {
        reason: &'static str,
        header: Option<Frame>,
    },
}

/// What the frame checks need to know besides the bytes.
#[derive(Clone, Copy)]
struct Expect<'a> {
    format: &'a FrameFormat,
    timeline: TimelineId,
    start: Lsn,
    /// Sequence number (encrypted frames).
    seq: u64,
    segment_end: Lsn,
}

fn check_frame<S: Source + ?Sized>(src: &S, offset: u64, exp: Expect<'_>) -> io::Result<Check> {
    match exp.format {
        FrameFormat::Plain => check_plain_frame(src, offset, exp),
        FrameFormat::Encrypted(key) => check_encrypted_frame(src, offset, exp, key, None),
    }
}

fn le32(h: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&h[at..at + 4]);
    u32::from_le_bytes(b)
}

fn le64(h: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[at..at + 8]);
    u64::from_le_bytes(b)
}

fn invalid(reason: &'static str) -> io::Result<Check> {
    Ok(Check::Invalid {
        reason,
        header: None,
    })
}

fn check_plain_frame<S: Source + ?Sized>(
    src: &S,
    offset: u64,
    exp: Expect<'_>,
) -> io::Result<Check> {
    if src.size().saturating_sub(offset) < HEADER_LEN {
        return invalid("end of file inside a frame header");
    }
    let mut h = [0u8; HEADER_LEN as usize];
    src.read_exact_at(&mut h, offset)?;
    if h.iter().all(|&b| b == 0) {
        return invalid("zeros (no frame written here)");
    }
    if h[0..4] != MAGIC {
        return invalid("bad frame magic");
    }
    if h[4] != VERSION {
        return invalid("unknown frame format version");
    }
    if h[5] & !FLAG_CONTINUED != 0 || h[6..8] != [0, 0] || h[24..28] != [0; 4] {
        return invalid("unknown flags or non-zero reserved bytes");
    }
    let start = Lsn(le64(&h, 16));
    let len = le32(&h, 12);
    if le32(&h, 8) != exp.timeline.get() {
        return invalid("frame of another timeline");
    }
    if start != exp.start {
        return invalid("frame does not continue the previous one");
    }
    if len == 0 || exp.segment_end.0 - start.0 < u64::from(len) {
        return invalid("frame length out of range");
    }
    let stored_crc = le32(&h, 28);
    let frame = Frame {
        offset,
        start,
        len,
        continued: h[5] & FLAG_CONTINUED != 0,
        seal: FrameSeal::Crc(stored_crc),
    };
    if src.size() < frame.end_offset() {
        return invalid("end of file inside frame data");
    }
    let mut crc = crc32c::crc32c(&h[..28]);
    for_each_chunk(src, frame.data_offset(), u64::from(len), |c| {
        crc = crc32c::crc32c_append(crc, c);
        Ok(())
    })?;
    if crc != stored_crc {
        return Ok(Check::Invalid {
            reason: "CRC mismatch",
            header: Some(frame),
        });
    }
    Ok(Check::Valid(frame))
}

/// Checks (and decrypts) an encrypted frame; with `plain`, the plaintext of a valid frame is
/// left in it.
fn check_encrypted_frame<S: Source + ?Sized>(
    src: &S,
    offset: u64,
    exp: Expect<'_>,
    key: &FrameKey,
    plain: Option<&mut Vec<u8>>,
) -> io::Result<Check> {
    if src.size().saturating_sub(offset) < ENC_HEADER_LEN {
        return invalid("end of file inside a frame header");
    }
    let mut h = [0u8; ENC_HEADER_LEN as usize];
    src.read_exact_at(&mut h, offset)?;
    if h.iter().all(|&b| b == 0) {
        return invalid("zeros (no frame written here)");
    }
    if h[0..4] != ENC_MAGIC {
        return invalid("bad frame magic");
    }
    if h[4] != VERSION {
        return invalid("unknown frame format version");
    }
    if h[5] & !FLAG_CONTINUED != 0 || h[6..8] != [0, 0] || h[44..48] != [0; 4] {
        return invalid("unknown flags or non-zero reserved bytes");
    }
    let len = le32(&h, 12);
    let start = Lsn(le64(&h, 16));
    let seq = le64(&h, 24);
    if le32(&h, 8) != exp.timeline.get() {
        return invalid("frame of another timeline");
    }
    if start != exp.start {
        return invalid("frame does not continue the previous one");
    }
    if seq != exp.seq {
        return invalid("frame out of sequence");
    }
    if len == 0 || exp.segment_end.0 - start.0 < u64::from(len) {
        return invalid("frame length out of range");
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&h[32..44]);
    let frame = Frame {
        offset,
        start,
        len,
        continued: h[5] & FLAG_CONTINUED != 0,
        seal: FrameSeal::Aead { seq, nonce },
    };
    if src.size() < frame.end_offset() {
        return invalid("end of file inside frame data");
    }
    let mut local = Vec::new();
    let buf = match plain {
        Some(b) => b,
        None => &mut local,
    };
    buf.clear();
    buf.resize(frame.stored_len() as usize, 0);
    src.read_exact_at(buf, frame.data_offset())?;
    let opened = key.aead.open_in_place(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(enc_aad(key, &h)),
        buf,
    );
    if opened.is_err() {
        return Ok(Check::Invalid {
            reason: "authentication tag mismatch",
            header: Some(frame),
        });
    }
    buf.truncate(len as usize);
    Ok(Check::Valid(frame))
}

/// What a scan found in a journal.
#[derive(Clone, Debug)]
pub(super) struct JournalScan {
    /// The valid frames, in order.
    pub(super) frames: Vec<Frame>,
    /// The segment's first LSN.
    pub(super) segment_start: Lsn,
    /// End of the last valid frame: the durable end (the segment start if there is none).
    pub(super) end: Lsn,
    /// File offset just past the last valid frame.
    pub(super) write_offset: u64,
    /// The frames cover the whole segment.
    pub(super) complete: bool,
    /// Why the scan stopped before the end of the segment.
    pub(super) stop_reason: Option<&'static str>,
    /// The journal's format (and frame key).
    pub(super) format: FrameFormat,
}

/// Why a scan failed.
#[derive(Debug)]
pub(super) enum ScanError {
    Io(io::Error),
    Damaged {
        offset: u64,
        reason: String,
    },
    /// An encrypted journal, and no keyring.
    Encrypted {
        key_id: Option<KeyId>,
    },
    /// The key header cannot be opened with the keyring for a reason the operator must fix
    /// (an unknown key).
    Crypto(CryptoError),
}

impl ScanError {
    pub(super) fn into_archive_error(self, path: &Path) -> WalArchiveError {
        match self {
            ScanError::Io(e) => WalArchiveError::io(FsAction::Read, path, e),
            ScanError::Damaged { offset, reason } => WalArchiveError::DamagedJournal {
                path: path.to_owned(),
                offset,
                reason,
            },
            ScanError::Encrypted { key_id } => WalArchiveError::Encrypted {
                path: path.to_owned(),
                key_id,
            },
            ScanError::Crypto(source) => WalArchiveError::Crypto {
                action: "open the key header of journal",
                path: path.to_owned(),
                source,
            },
        }
    }
}

impl From<io::Error> for ScanError {
    fn from(e: io::Error) -> Self {
        ScanError::Io(e)
    }
}

/// The 64-byte key block sealed at the start of an encrypted journal.
fn key_block(
    ctx: &Ctx<'_>,
    timeline: TimelineId,
    segno: SegmentNo,
    frame_key: &[u8; 32],
) -> [u8; KEY_BLOCK_LEN] {
    let mut b = [0u8; KEY_BLOCK_LEN];
    b[0..8].copy_from_slice(&KEY_BLOCK_MAGIC);
    b[8..16].copy_from_slice(&ctx.system_id.to_le_bytes());
    b[16..20].copy_from_slice(&timeline.get().to_le_bytes());
    b[20..28].copy_from_slice(&segno.0.to_le_bytes());
    b[28..32].copy_from_slice(&(ctx.size.bytes_u64() as u32).to_le_bytes());
    b[32..64].copy_from_slice(frame_key);
    b
}

fn frame_key(key: &[u8], journal_id: [u8; 16]) -> Result<FrameKey, CryptoError> {
    let unbound = UnboundKey::new(&AES_256_GCM, key).map_err(|_| CryptoError::Encryption {
        reason: "creating a journal frame key",
    })?;
    Ok(FrameKey {
        aead: LessSafeKey::new(unbound),
        journal_id,
    })
}

/// Whether the object magic starts `src`: the journal is encrypted.
pub(super) fn is_encrypted<S: Source + ?Sized>(src: &S) -> io::Result<bool> {
    let mut m = [0u8; 8];
    if src.size() < m.len() as u64 {
        return Ok(false);
    }
    src.read_exact_at(&mut m, 0)?;
    Ok(m == klio_crypto::MAGIC)
}

/// The format of a journal, from its first bytes; `None` when it is an encrypted journal whose
/// key header was cut short while it was being created (nothing follows it).
fn read_format<S: Source + ?Sized>(
    src: &S,
    timeline: TimelineId,
    segno: SegmentNo,
    ctx: &Ctx<'_>,
) -> Result<Option<FrameFormat>, ScanError> {
    if !is_encrypted(src)? {
        return Ok(Some(FrameFormat::Plain));
    }
    let mut header = vec![0u8; (KEY_OBJECT_LEN as u64).min(src.size()) as usize];
    src.read_exact_at(&mut header, 0)?;
    let Some(keyring) = ctx.keyring else {
        return Err(ScanError::Encrypted {
            key_id: klio_crypto::object_key_id(&header).ok(),
        });
    };
    let block = match klio_crypto::open(keyring, &header) {
        Ok(block) => block,
        Err(e) => {
            if nonzero_tail_end(src, KEY_OBJECT_LEN as u64)?.is_none() {
                // Nothing after the key header: no frame was ever written (the header is
                // fsynced before the first one), so the journal was being created.
                return Ok(None);
            }
            if matches!(e, CryptoError::UnknownKey { .. }) {
                return Err(ScanError::Crypto(e));
            }
            return Err(ScanError::Damaged {
                offset: 0,
                reason: format!("its encrypted key header cannot be opened: {e}"),
            });
        }
    };
    let bind_err = |what: &str| ScanError::Damaged {
        offset: 0,
        reason: format!(
            "its key header {what}: the journal was renamed, swapped or copied from another \
             archive"
        ),
    };
    if block.len() != KEY_BLOCK_LEN || block[0..8] != KEY_BLOCK_MAGIC {
        return Err(bind_err("is not a journal key block"));
    }
    let expected = key_block(ctx, timeline, segno, &[0u8; 32]);
    if block[8..16] != expected[8..16] {
        return Err(bind_err(&format!(
            "belongs to the cluster with system id {}",
            le64(&block, 8)
        )));
    }
    if block[16..32] != expected[16..32] {
        return Err(bind_err(&format!(
            "belongs to timeline {} segment {} (segment size {})",
            le32(&block, 16),
            le64(&block, 20),
            le32(&block, 28)
        )));
    }
    let journal_id = ObjectHeader::parse(&header)
        .map_err(ScanError::Crypto)?
        .object_id();
    let key = frame_key(&block[32..64], journal_id).map_err(ScanError::Crypto)?;
    Ok(Some(FrameFormat::Encrypted(Arc::new(key))))
}

/// Scans the plain journal of `timeline`/`segno` (an encrypted one is an error).
#[cfg(test)]
pub(super) fn scan<S: Source + ?Sized>(
    src: &S,
    timeline: TimelineId,
    segno: SegmentNo,
    size: SegmentSize,
) -> Result<JournalScan, ScanError> {
    scan_with(src, timeline, segno, &Ctx::plain(size))
}

/// Scans the journal of `timeline`/`segno`, plain or encrypted.
pub(super) fn scan_with<S: Source + ?Sized>(
    src: &S,
    timeline: TimelineId,
    segno: SegmentNo,
    ctx: &Ctx<'_>,
) -> Result<JournalScan, ScanError> {
    let size = ctx.size;
    let overflow = || ScanError::Damaged {
        offset: 0,
        reason: "segment number past the end of the WAL space".to_owned(),
    };
    let segment_start = size.segment_start(segno).ok_or_else(overflow)?;
    let segment_end = segment_start
        .checked_add(size.bytes_u64())
        .ok_or_else(overflow)?;
    let Some(format) = read_format(src, timeline, segno, ctx)? else {
        return Ok(JournalScan {
            frames: Vec::new(),
            segment_start,
            end: segment_start,
            write_offset: 0,
            complete: false,
            stop_reason: Some("encrypted key header incomplete (the journal was being created)"),
            format: FrameFormat::Plain,
        });
    };
    let mut frames: Vec<Frame> = Vec::new();
    let mut offset = format.first_frame();
    let mut expected = segment_start;
    let mut stop_reason = None;
    while expected < segment_end {
        let exp = Expect {
            format: &format,
            timeline,
            start: expected,
            seq: frames.len() as u64,
            segment_end,
        };
        match check_frame(src, offset, exp)? {
            Check::Valid(f) => {
                frames.push(f);
                offset = f.end_offset();
                expected = f.end_lsn();
            }
            Check::Invalid { reason, header } => {
                if header.is_none()
                    && matches!(format, FrameFormat::Encrypted(_))
                    && OUT_OF_PLACE.contains(&reason)
                {
                    return Err(ScanError::Damaged {
                        offset,
                        reason: format!(
                            "a well-formed frame header is out of place ({reason}): frames were \
                             reordered, dropped or spliced in, which no crash does (the torn tail \
                             of a journal is cleared before new frames follow)"
                        ),
                    });
                }
                if let Some(bad) = header
                    && damage_proven(src, bad, exp)?
                {
                    return Err(ScanError::Damaged {
                        offset,
                        reason: format!(
                            "the frame for {}+{} bytes fails its {}, but frames written after \
                                 a later fdatasync follow it, so it was damaged after it was made \
                                 durable",
                            bad.start,
                            bad.len,
                            match format {
                                FrameFormat::Plain => "CRC",
                                FrameFormat::Encrypted(_) => "authentication",
                            }
                        ),
                    });
                }
                stop_reason = Some(reason);
                break;
            }
        }
    }
    if frames.is_empty() && matches!(format, FrameFormat::Plain) && looks_encrypted_after(src)? {
        return Err(ScanError::Damaged {
            offset: 0,
            reason: "encrypted frames follow, but the journal does not start with an encrypted \
                     key header: the header was overwritten"
                .to_owned(),
        });
    }
    Ok(JournalScan {
        frames,
        segment_start,
        end: expected,
        write_offset: offset,
        complete: expected == segment_end,
        stop_reason,
        format,
    })
}

/// Reasons a well-formed encrypted frame header is refused that a crash cannot produce: every
/// frame is written continuing the valid ones, and a torn tail is zeroed (and fdatasynced) by
/// recovery before new frames follow, so a stale frame never lies after the valid ones.
const OUT_OF_PLACE: [&str; 3] = [
    "frame of another timeline",
    "frame does not continue the previous one",
    "frame out of sequence",
];

/// Whether an encrypted frame header sits where an encrypted journal's first frame goes.
fn looks_encrypted_after<S: Source + ?Sized>(src: &S) -> io::Result<bool> {
    let mut m = [0u8; 4];
    if src.size() < ENC_FRAMES_START + 4 {
        return Ok(false);
    }
    src.read_exact_at(&mut m, ENC_FRAMES_START)?;
    Ok(m == ENC_MAGIC)
}

/// Whether the frames after `bad` (whose header is intact, CRC or tag not) prove that `bad` had
/// been made durable: a valid frame written after an fdatasync that came after `bad`.
fn damage_proven<S: Source + ?Sized>(src: &S, bad: Frame, exp: Expect<'_>) -> io::Result<bool> {
    let mut synced_before = !bad.continued;
    let mut offset = bad.end_offset();
    let mut exp = Expect {
        start: bad.end_lsn(),
        seq: exp.seq + 1,
        ..exp
    };
    while exp.start < exp.segment_end {
        match check_frame(src, offset, exp)? {
            Check::Valid(f) => {
                if synced_before {
                    return Ok(true);
                }
                synced_before = !f.continued;
                offset = f.end_offset();
                exp.start = f.end_lsn();
                exp.seq += 1;
            }
            Check::Invalid { .. } => return Ok(false),
        }
    }
    Ok(false)
}

/// Copies the data of `frames` to `out` in order, checking every CRC or tag again while
/// reading, so that bytes damaged since the scan are never returned.
pub(super) fn copy_frames<S: Source + ?Sized>(
    src: &S,
    timeline: TimelineId,
    format: &FrameFormat,
    frames: &[Frame],
    mut out: impl FnMut(&[u8]) -> io::Result<()>,
) -> Result<(), ScanError> {
    let mut plain = Vec::new();
    for f in frames {
        match (format, f.seal) {
            (FrameFormat::Plain, FrameSeal::Crc(stored)) => {
                let fields = header_fields(timeline, f.start, f.len, f.continued);
                let mut crc = crc32c::crc32c(&fields);
                for_each_chunk(src, f.data_offset(), u64::from(f.len), |c| {
                    crc = crc32c::crc32c_append(crc, c);
                    out(c)
                })?;
                if crc != stored {
                    return Err(ScanError::Damaged {
                        offset: f.offset,
                        reason: "frame CRC no longer matches when read again".to_owned(),
                    });
                }
            }
            (FrameFormat::Encrypted(key), FrameSeal::Aead { seq, .. }) => {
                let exp = Expect {
                    format,
                    timeline,
                    start: f.start,
                    seq,
                    segment_end: Lsn(u64::MAX),
                };
                match check_encrypted_frame(src, f.offset, exp, key, Some(&mut plain))? {
                    Check::Valid(g) if g == *f => out(&plain)?,
                    _ => {
                        return Err(ScanError::Damaged {
                            offset: f.offset,
                            reason: "frame no longer authenticates when read again".to_owned(),
                        });
                    }
                }
            }
            _ => {
                return Err(ScanError::Damaged {
                    offset: f.offset,
                    reason: "frame of the other journal format".to_owned(),
                });
            }
        }
    }
    Ok(())
}

/// Offset just past the last non-zero byte at or after `from`, if any.
pub(super) fn nonzero_tail_end<S: Source + ?Sized>(src: &S, from: u64) -> io::Result<Option<u64>> {
    let mut end = None;
    let mut pos = from;
    for_each_chunk(src, from, src.size().saturating_sub(from), |c| {
        if let Some(i) = c.iter().rposition(|&b| b != 0) {
            end = Some(pos + i as u64 + 1);
        }
        pos += c.len() as u64;
        Ok(())
    })?;
    Ok(end)
}

/// The journal's file name for a segment.
pub(super) fn journal_name(timeline: TimelineId, segno: SegmentNo, size: SegmentSize) -> String {
    let base = WalFileName::Segment { timeline, segno }.to_string_with(size);
    format!("{base}{JOURNAL_SUFFIX}")
}

/// Size a new journal's frame area is pre-padded to, and the step it grows by.
fn padded_len(size: SegmentSize) -> (u64, u64) {
    let step = size.bytes_u64() / 8;
    (size.bytes_u64() + step, step)
}

/// A journal open for appending frames.
#[derive(Debug)]
pub(super) struct JournalWriter {
    file: File,
    pub(super) path: PathBuf,
    pub(super) timeline: TimelineId,
    pub(super) segno: SegmentNo,
    format: FrameFormat,
    /// Valid frames so far (the ones to assemble the segment from).
    frames: Vec<Frame>,
    write_offset: u64,
    file_len: u64,
    grow_step: u64,
    /// Frames written since the last fdatasync.
    dirty: bool,
}

impl JournalWriter {
    /// Creates a new, empty journal: pre-padded with zeros (after its sealed key header when the
    /// archive has a keyring) and durable before any WAL goes in.
    pub(super) fn create(
        dir: &Path,
        timeline: TimelineId,
        segno: SegmentNo,
        ctx: &Ctx<'_>,
    ) -> Result<Self, WalArchiveError> {
        let size = ctx.size;
        let path = dir.join(journal_name(timeline, segno, size));
        let (header, format) = match ctx.keyring {
            None => (Vec::new(), FrameFormat::Plain),
            Some(keyring) => {
                let crypto = |source| WalArchiveError::Crypto {
                    action: "create the key header of journal",
                    path: path.clone(),
                    source,
                };
                let mut key = [0u8; 32];
                ctx.rng
                    .fill(&mut key)
                    .map_err(|_| crypto(CryptoError::Random))?;
                let block = key_block(ctx, timeline, segno, &key);
                let opts = SealOptions {
                    compression: Compression::None,
                    chunk_size: KEY_BLOCK_LEN,
                };
                let object = klio_crypto::seal(keyring, &opts, &block, ctx.rng).map_err(crypto)?;
                if object.len() != KEY_OBJECT_LEN {
                    return Err(WalArchiveError::Inconsistent {
                        path,
                        reason: format!(
                            "sealed journal key header is {} bytes, expected {KEY_OBJECT_LEN}",
                            object.len()
                        ),
                    });
                }
                let journal_id = ObjectHeader::parse(&object).map_err(crypto)?.object_id();
                let key = frame_key(&key, journal_id).map_err(crypto)?;
                (object, FrameFormat::Encrypted(Arc::new(key)))
            }
        };
        let first = format.first_frame();
        let (pad, grow_step) = padded_len(size);
        let len = first + pad;
        // The padding (and the file size), and the key header of an encrypted journal, must be
        // on disk before frames go in, so that the fdatasync after each frame needs no metadata
        // update, a crash never shortens the file, and no frame exists whose key could be lost.
        // The new directory entry must be durable too: a crash must not lose the file that is
        // about to hold acknowledged WAL. create_prepadded fsyncs both before it returns.
        let file = durable::create_prepadded(&path, &header, len)?;
        Ok(JournalWriter {
            file,
            path,
            timeline,
            segno,
            format,
            frames: Vec::new(),
            write_offset: first,
            file_len: len,
            grow_step,
            dirty: false,
        })
    }

    /// Reopens an existing journal (already recovered: zeros after its last valid frame) to
    /// append after `scan`'s end, in the journal's own format.
    pub(super) fn reopen(
        path: PathBuf,
        timeline: TimelineId,
        segno: SegmentNo,
        ctx: &Ctx<'_>,
    ) -> Result<(Self, JournalScan), WalArchiveError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| WalArchiveError::io(FsAction::Open, &path, e))?;
        let src =
            FileSource::new(&file).map_err(|e| WalArchiveError::io(FsAction::Stat, &path, e))?;
        let scan =
            scan_with(&src, timeline, segno, ctx).map_err(|e| e.into_archive_error(&path))?;
        let file_len = src.len;
        let (_, grow_step) = padded_len(ctx.size);
        let writer = JournalWriter {
            file,
            path,
            timeline,
            segno,
            format: scan.format.clone(),
            frames: scan.frames.clone(),
            write_offset: scan.write_offset,
            file_len,
            grow_step,
            dirty: false,
        };
        Ok((writer, scan))
    }

    /// Appends one frame (not durable until [`JournalWriter::sync`]).
    pub(super) fn write_frame(
        &mut self,
        start: Lsn,
        data: &[u8],
        continued: bool,
        rng: &dyn SecureRandom,
    ) -> Result<(), WalArchiveError> {
        let (frame, seal) = match &self.format {
            FrameFormat::Plain => {
                let frame = encode_frame(self.timeline, start, data, continued);
                let crc = le32(&frame, 28);
                (frame, FrameSeal::Crc(crc))
            }
            FrameFormat::Encrypted(key) => {
                let seq = self.frames.len() as u64;
                encode_encrypted_frame(key, self.timeline, start, data, continued, seq, rng)
                    .map_err(|source| WalArchiveError::Crypto {
                        action: "encrypt a frame of journal",
                        path: self.path.clone(),
                        source,
                    })?
            }
        };
        let end = self.write_offset + frame.len() as u64;
        if end > self.file_len {
            let mut new_len = self.file_len;
            while new_len < end {
                new_len += self.grow_step;
            }
            durable::write_zeros(&self.file, &self.path, self.file_len, new_len)?;
            // Make the new size durable now, so that the fdatasync after the frame again needs no
            // metadata update (and the padding beyond the frame reads as zeros after a crash).
            self.file
                .sync_all()
                .map_err(|e| WalArchiveError::io(FsAction::Fsync, &self.path, e))?;
            self.file_len = new_len;
        }
        self.file
            .write_all_at(&frame, self.write_offset)
            .map_err(|e| WalArchiveError::io(FsAction::Write, &self.path, e))?;
        self.frames.push(Frame {
            offset: self.write_offset,
            start,
            len: data.len() as u32,
            continued,
            seal,
        });
        self.write_offset = end;
        self.dirty = true;
        Ok(())
    }

    /// Makes every written frame durable.
    pub(super) fn sync(&mut self) -> Result<(), WalArchiveError> {
        if self.dirty {
            // fdatasync suffices: the file was pre-padded (or extended and fsynced), so no metadata
            // needed to read the frames back changes. Only after this may their end be acknowledged.
            self.file
                .sync_data()
                .map_err(|e| WalArchiveError::io(FsAction::Fdatasync, &self.path, e))?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Turns a journal holding the whole segment (and already synced) into the final segment
    /// file (sealed when the archive has a keyring), durably, then removes the journal.
    pub(super) fn finish(self, dir: &Path, ctx: &Ctx<'_>) -> Result<(), WalArchiveError> {
        finish_segment(
            dir,
            &self.file,
            &self.path,
            self.timeline,
            self.segno,
            &self.format,
            &self.frames,
            ctx,
        )
    }
}

/// Assembles the final segment file from a complete journal's frames (read back from `file`),
/// makes it final atomically and durably, then removes the journal. With a keyring the segment
/// is sealed (see the `sealed` module), otherwise stored as it is.
#[allow(clippy::too_many_arguments)]
pub(super) fn finish_segment(
    dir: &Path,
    file: &File,
    journal_path: &Path,
    timeline: TimelineId,
    segno: SegmentNo,
    format: &FrameFormat,
    frames: &[Frame],
    ctx: &Ctx<'_>,
) -> Result<(), WalArchiveError> {
    let size = ctx.size;
    let total: u64 = frames.iter().map(|f| u64::from(f.len)).sum();
    if total != size.bytes_u64() {
        return Err(WalArchiveError::Inconsistent {
            path: journal_path.to_owned(),
            reason: format!(
                "asked to finish a journal holding {total} of {} bytes",
                size.bytes()
            ),
        });
    }
    let src =
        FileSource::new(file).map_err(|e| WalArchiveError::io(FsAction::Stat, journal_path, e))?;
    let mut out = SegmentWriter::create(dir, timeline, segno, ctx)?;
    let mut failed = None;
    let copied = copy_frames(&src, timeline, format, frames, |chunk| {
        out.write(chunk).map_err(|e| {
            let msg = e.to_string();
            failed = Some(e);
            io::Error::other(msg)
        })
    });
    if let Some(e) = failed {
        return Err(e);
    }
    copied.map_err(|e| e.into_archive_error(journal_path))?;
    out.publish()?;
    // No fsync of the directory after this removal: if a crash brings the journal back, it is
    // stale (its final segment exists) and recovery removes it again.
    optional_file::remove_if_present(journal_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tl(n: u32) -> TimelineId {
        TimelineId::new(n).unwrap()
    }

    fn size() -> SegmentSize {
        SegmentSize::new(1 << 20).unwrap()
    }

    fn journal(frames: &[(u64, &[u8], bool)]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(start, data, continued) in frames {
            out.extend(encode_frame(tl(1), Lsn(start), data, continued));
        }
        out.resize(out.len() + 100, 0);
        out
    }

    #[test]
    fn scans_valid_frames_and_stops_at_zeros() {
        let seg = 5u64 << 20;
        let j = journal(&[(seg, b"abc", false), (seg + 3, b"defg", false)]);
        let s = scan(j.as_slice(), tl(1), SegmentNo(5), size()).unwrap();
        assert_eq!(s.frames.len(), 2);
        assert_eq!(s.end, Lsn(seg + 7));
        assert_eq!(s.write_offset, 2 * HEADER_LEN + 7);
        assert!(!s.complete);
        assert_eq!(s.stop_reason, Some("zeros (no frame written here)"));
        // Wrong timeline or segment: nothing valid.
        assert!(
            scan(j.as_slice(), tl(2), SegmentNo(5), size())
                .unwrap()
                .frames
                .is_empty()
        );
        assert!(
            scan(j.as_slice(), tl(1), SegmentNo(4), size())
                .unwrap()
                .frames
                .is_empty()
        );
    }

    #[test]
    fn torn_tail_is_accepted_and_damage_in_the_middle_is_not() {
        let seg = 0u64;
        // Last frame torn: accepted, durable end before it.
        let mut j = journal(&[(seg, b"abc", false), (seg + 3, b"defg", false)]);
        let last_data = (2 * HEADER_LEN + 5) as usize;
        j[last_data] ^= 0xff;
        let s = scan(j.as_slice(), tl(1), SegmentNo(0), size()).unwrap();
        assert_eq!(s.end, Lsn(3));
        // First frame damaged, later synced frames follow: damage.
        let mut j = journal(&[
            (seg, b"abc", false),
            (seg + 3, b"defg", false),
            (seg + 7, b"h", false),
        ]);
        j[HEADER_LEN as usize] ^= 1;
        assert!(matches!(
            scan(j.as_slice(), tl(1), SegmentNo(0), size()),
            Err(ScanError::Damaged { offset: 0, .. })
        ));
        // Damaged frame was continued by frames of the same unsynced batch only: torn.
        let mut j = journal(&[(seg, b"abc", true), (seg + 3, b"defg", false)]);
        j[HEADER_LEN as usize] ^= 1;
        let s = scan(j.as_slice(), tl(1), SegmentNo(0), size()).unwrap();
        assert_eq!(s.end, Lsn(0));
        assert!(s.frames.is_empty());
    }

    #[test]
    fn nonzero_tail() {
        let mut v = vec![0u8; 3 << 20];
        assert_eq!(nonzero_tail_end(v.as_slice(), 0).unwrap(), None);
        v[(2 << 20) + 7] = 1;
        assert_eq!(
            nonzero_tail_end(v.as_slice(), 10).unwrap(),
            Some((2 << 20) + 8)
        );
        assert_eq!(nonzero_tail_end(v.as_slice(), (2 << 20) + 8).unwrap(), None);
    }
}
