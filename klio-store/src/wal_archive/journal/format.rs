//! The journal's bytes: constants, frame headers and the key block, encoded and decoded (the
//! layout is in the [module documentation](super)). Nothing here reads a file.

use std::sync::Arc;

use klio_crypto::SecureRandom;
use klio_crypto::journal_frame::{self, FrameAeadError, FrameKey};
use klio_wal::{Lsn, SegmentNo, SegmentSize, TimelineId, WalFileName};

use super::defect::{FrameCheck, FrameDefect, JournalDamage};

/// Suffix appended to a segment's name for its journal.
pub(crate) const JOURNAL_SUFFIX: &str = ".klio-journal";

/// Length of a plain frame header.
pub(crate) const HEADER_LEN: u64 = 32;
const MAGIC: [u8; 4] = *b"KLWJ";
const VERSION: u8 = 1;
const FLAG_CONTINUED: u8 = 0x01;
/// Bytes of a plain header the CRC covers before the data (all but the CRC itself).
const CRC_FIELDS_LEN: usize = 28;

/// Length of an encrypted frame header.
pub(crate) const ENC_HEADER_LEN: u64 = 48;
/// Length of an encrypted frame's tag.
pub(crate) const TAG_LEN: u64 = journal_frame::TAG_LEN as u64;
const ENC_MAGIC: [u8; 4] = *b"KLWE";
const NONCE_LEN: usize = journal_frame::NONCE_LEN;
/// File offset of an encrypted journal's first frame.
pub(crate) const ENC_FRAMES_START: u64 = 4096;
const KEY_BLOCK_MAGIC: [u8; 8] = *b"KLWJKEY1";
pub(super) const KEY_BLOCK_LEN: usize = 64;
/// Length of the sealed key header of an encrypted journal: object header, one chunk (length
/// field, stored marker, key block, tag).
pub(crate) const KEY_OBJECT_LEN: usize =
    klio_crypto::HEADER_LEN + 4 + 1 + KEY_BLOCK_LEN + klio_crypto::format::TAG_LEN;

/// The journal's file name for a segment.
pub(crate) fn journal_name(timeline: TimelineId, segno: SegmentNo, size: SegmentSize) -> String {
    let base = WalFileName::Segment { timeline, segno }.to_string_with(size);
    format!("{base}{JOURNAL_SUFFIX}")
}

/// How a journal's frames are protected.
#[derive(Clone, Debug)]
pub(crate) enum FrameFormat {
    /// CRC-32C frames from offset 0.
    Plain,
    /// AES-256-GCM frames after a sealed key header.
    Encrypted(Arc<FrameKey>),
}

impl FrameFormat {
    /// File offset of the first frame.
    pub(super) fn first_frame(&self) -> u64 {
        match self {
            Self::Plain => 0,
            Self::Encrypted(_) => ENC_FRAMES_START,
        }
    }

    /// What protects this format's frames.
    pub(super) fn check(&self) -> FrameCheck {
        match self {
            Self::Plain => FrameCheck::Crc,
            Self::Encrypted(_) => FrameCheck::Tag,
        }
    }
}

/// What protects one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FrameSeal {
    /// The stored CRC of a plain frame.
    Crc(u32),
    /// Sequence number and nonce of an encrypted frame.
    Aead { seq: u64, nonce: [u8; NONCE_LEN] },
}

/// One frame of a journal whose header is well formed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Frame {
    /// File offset of the frame header.
    pub(crate) offset: u64,
    /// LSN of the first data byte.
    pub(crate) start: Lsn,
    /// Data length.
    pub(crate) len: u32,
    /// No fdatasync followed this frame before the next one was written.
    pub(crate) continued: bool,
    /// The stored CRC, or the AEAD parameters.
    pub(super) seal: FrameSeal,
}

impl Frame {
    fn header_len(&self) -> u64 {
        match self.seal {
            FrameSeal::Crc(_) => HEADER_LEN,
            FrameSeal::Aead { .. } => ENC_HEADER_LEN,
        }
    }

    /// File offset of the data (or ciphertext).
    pub(super) fn data_offset(&self) -> u64 {
        self.offset + self.header_len()
    }

    /// Bytes of data (and tag) stored after the header.
    pub(super) fn stored_len(&self) -> u64 {
        u64::from(self.len)
            + match self.seal {
                FrameSeal::Crc(_) => 0,
                FrameSeal::Aead { .. } => TAG_LEN,
            }
    }

    /// File offset just past the frame.
    pub(crate) fn end_offset(&self) -> u64 {
        self.data_offset() + self.stored_len()
    }

    /// LSN just past the frame's data.
    pub(crate) fn end_lsn(&self) -> Lsn {
        Lsn(self.start.0 + u64::from(self.len))
    }
}

/// The fields both frame headers have, decoded but not yet checked against the journal.
#[derive(Clone, Copy, Debug)]
pub(super) struct Header {
    pub(super) timeline: u32,
    pub(super) len: u32,
    pub(super) start: Lsn,
    pub(super) continued: bool,
}

impl Header {
    /// The frame this header starts at `offset`, protected by `seal`.
    pub(super) fn frame_at(&self, offset: u64, seal: FrameSeal) -> Frame {
        Frame {
            offset,
            start: self.start,
            len: self.len,
            continued: self.continued,
            seal,
        }
    }
}

pub(super) fn le32(h: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&h[at..at + 4]);
    u32::from_le_bytes(b)
}

pub(super) fn le64(h: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[at..at + 8]);
    u64::from_le_bytes(b)
}

/// The bytes of a plain header the CRC covers (all but the CRC).
pub(super) fn header_fields(
    timeline: TimelineId,
    start: Lsn,
    len: u32,
    continued: bool,
) -> [u8; CRC_FIELDS_LEN] {
    let mut h = [0u8; CRC_FIELDS_LEN];
    h[0..4].copy_from_slice(&MAGIC);
    h[4] = VERSION;
    h[5] = if continued { FLAG_CONTINUED } else { 0 };
    h[8..12].copy_from_slice(&timeline.get().to_le_bytes());
    h[12..16].copy_from_slice(&len.to_le_bytes());
    h[16..24].copy_from_slice(&start.0.to_le_bytes());
    h
}

/// The CRC-32C of a plain header's fields, to be continued over the data.
pub(super) fn crc_of_fields(header: &[u8; HEADER_LEN as usize]) -> u32 {
    crc32c::crc32c(&header[..CRC_FIELDS_LEN])
}

/// Encodes a complete plain frame (header and data) ready to be written.
pub(crate) fn encode_frame(
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

/// The stored CRC of an encoded plain frame.
pub(super) fn stored_crc(frame: &[u8]) -> u32 {
    le32(frame, CRC_FIELDS_LEN)
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

/// Encodes an encrypted frame (header, ciphertext, tag) with a fresh random nonce.
pub(super) fn encode_encrypted_frame(
    key: &FrameKey,
    timeline: TimelineId,
    start: Lsn,
    data: &[u8],
    continued: bool,
    seq: u64,
    rng: &dyn SecureRandom,
) -> Result<(Vec<u8>, FrameSeal), FrameAeadError> {
    let nonce = journal_frame::random_nonce(rng)?;
    let header = enc_header(timeline, start, data.len() as u32, continued, seq, &nonce);
    let mut out = Vec::with_capacity(ENC_HEADER_LEN as usize + data.len() + TAG_LEN as usize);
    out.extend_from_slice(&header);
    out.extend_from_slice(data);
    let tag = key.seal(&nonce, &header, &mut out[ENC_HEADER_LEN as usize..])?;
    out.extend_from_slice(&tag);
    Ok((out, FrameSeal::Aead { seq, nonce }))
}

/// Decodes what a header says about itself (zeros, magic, version, flags, reserved bytes);
/// `magic` and `reserved` tell the formats apart.
fn decode_common(h: &[u8], magic: [u8; 4], reserved: &[u8]) -> Result<(), FrameDefect> {
    if h.iter().all(|&b| b == 0) {
        return Err(FrameDefect::Zeros);
    }
    if h[0..4] != magic {
        return Err(FrameDefect::BadMagic);
    }
    if h[4] != VERSION {
        return Err(FrameDefect::UnknownVersion { version: h[4] });
    }
    if h[5] & !FLAG_CONTINUED != 0 || h[6..8] != [0, 0] || reserved.iter().any(|&b| b != 0) {
        return Err(FrameDefect::ReservedBits);
    }
    Ok(())
}

/// Decodes a plain frame header: its fields and the stored CRC.
pub(super) fn decode_plain_header(
    h: &[u8; HEADER_LEN as usize],
) -> Result<(Header, u32), FrameDefect> {
    decode_common(h, MAGIC, &h[24..28])?;
    Ok((common_fields(h), le32(h, 28)))
}

/// Decodes an encrypted frame header: its fields, sequence number and nonce.
pub(super) fn decode_encrypted_header(
    h: &[u8; ENC_HEADER_LEN as usize],
) -> Result<(Header, u64, [u8; NONCE_LEN]), FrameDefect> {
    decode_common(h, ENC_MAGIC, &h[44..48])?;
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&h[32..44]);
    Ok((common_fields(h), le64(h, 24), nonce))
}

fn common_fields(h: &[u8]) -> Header {
    Header {
        timeline: le32(h, 8),
        len: le32(h, 12),
        start: Lsn(le64(h, 16)),
        continued: h[5] & FLAG_CONTINUED != 0,
    }
}

/// Whether `m` is the magic of an encrypted frame header.
pub(super) fn is_enc_magic(m: &[u8; 4]) -> bool {
    *m == ENC_MAGIC
}

/// What a journal's key block binds it to: the cluster and the segment.
#[derive(Clone, Copy, Debug)]
pub(super) struct KeyBinding {
    pub(super) system_id: u64,
    pub(super) timeline: TimelineId,
    pub(super) segno: SegmentNo,
    pub(super) size: SegmentSize,
}

impl KeyBinding {
    /// The 64-byte key block sealed at the start of an encrypted journal.
    pub(super) fn key_block(
        &self,
        frame_key: &[u8; journal_frame::KEY_LEN],
    ) -> [u8; KEY_BLOCK_LEN] {
        let mut b = [0u8; KEY_BLOCK_LEN];
        b[0..8].copy_from_slice(&KEY_BLOCK_MAGIC);
        b[8..16].copy_from_slice(&self.system_id.to_le_bytes());
        b[16..20].copy_from_slice(&self.timeline.get().to_le_bytes());
        b[20..28].copy_from_slice(&self.segno.0.to_le_bytes());
        b[28..32].copy_from_slice(&(self.size.bytes_u64() as u32).to_le_bytes());
        b[32..64].copy_from_slice(frame_key);
        b
    }

    /// The frame key of an opened key block, if the block is bound to this journal.
    pub(super) fn frame_key(
        &self,
        block: &[u8],
    ) -> Result<[u8; journal_frame::KEY_LEN], JournalDamage> {
        if block.len() != KEY_BLOCK_LEN || block[0..8] != KEY_BLOCK_MAGIC {
            return Err(JournalDamage::NotAKeyBlock);
        }
        let expected = self.key_block(&[0u8; journal_frame::KEY_LEN]);
        if block[8..16] != expected[8..16] {
            return Err(JournalDamage::OtherCluster {
                system_id: le64(block, 8),
            });
        }
        if block[16..32] != expected[16..32] {
            return Err(JournalDamage::OtherSegment {
                timeline: le32(block, 16),
                segno: le64(block, 20),
                segment_size: le32(block, 28),
            });
        }
        let mut key = [0u8; journal_frame::KEY_LEN];
        key.copy_from_slice(&block[32..64]);
        Ok(key)
    }
}
