//! Reading a journal back: its format from the first bytes, its valid frames, the durable end,
//! and whether what stops the scan is a torn tail or damage (see [`super::defect`]).

use std::io;
use std::path::Path;
use std::sync::Arc;

use klio_crypto::journal_frame::{FrameAeadError, FrameKey};
use klio_crypto::{CryptoError, KeyId, ObjectHeader};
use klio_wal::{FsAction, Lsn, SegmentNo, TimelineId};

use super::defect::{FrameDefect, JournalDamage, ScanStop};
use super::format::{
    ENC_FRAMES_START, ENC_HEADER_LEN, Frame, FrameFormat, FrameSeal, HEADER_LEN, KEY_OBJECT_LEN,
    KeyBinding, crc_of_fields, decode_encrypted_header, decode_plain_header, header_fields,
    is_enc_magic,
};
use super::source::{Source, for_each_chunk, nonzero_tail_end};
use crate::wal_archive::{Ctx, WalArchiveError};

/// What a scan found in a journal.
#[derive(Clone, Debug)]
pub(crate) struct JournalScan {
    /// The valid frames, in order.
    pub(crate) frames: Vec<Frame>,
    /// The segment's first LSN.
    pub(crate) segment_start: Lsn,
    /// End of the last valid frame: the durable end (the segment start if there is none).
    pub(crate) end: Lsn,
    /// File offset just past the last valid frame.
    pub(crate) write_offset: u64,
    /// The frames cover the whole segment.
    pub(crate) complete: bool,
    /// Why the scan stopped before the end of the segment (`None` when complete).
    pub(crate) stop_reason: Option<ScanStop>,
    /// The journal's format (and frame key).
    pub(crate) format: FrameFormat,
}

/// Why a scan failed.
#[derive(Debug)]
pub(crate) enum ScanError {
    Io(io::Error),
    /// The journal is damaged at `offset`: data in it was lost or altered after it was made
    /// durable, or it is not the journal its name says.
    Damaged {
        offset: u64,
        damage: JournalDamage,
    },
    /// An encrypted journal, and no keyring.
    Encrypted {
        key_id: Option<KeyId>,
    },
    /// The key header cannot be opened with the keyring for a reason the operator must fix
    /// (an unknown key).
    Crypto(CryptoError),
    /// The frame key from the key header was refused by the AEAD.
    FrameKey(FrameAeadError),
}

impl ScanError {
    pub(crate) fn into_archive_error(self, path: &Path) -> WalArchiveError {
        match self {
            Self::Io(e) => WalArchiveError::io(FsAction::Read, path, e),
            Self::Damaged { offset, damage } => WalArchiveError::DamagedJournal {
                path: path.to_owned(),
                offset,
                damage,
            },
            Self::Encrypted { key_id } => WalArchiveError::Encrypted {
                path: path.to_owned(),
                key_id,
            },
            Self::Crypto(source) => WalArchiveError::Crypto {
                action: "open the key header of journal",
                path: path.to_owned(),
                source,
            },
            Self::FrameKey(source) => WalArchiveError::JournalFrame {
                action: "use the frame key of journal",
                path: path.to_owned(),
                source,
            },
        }
    }
}

impl From<io::Error> for ScanError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// The result of checking the bytes at one position.
enum Check {
    Valid(Frame),
    /// A well-formed header that fits here, but the frame fails its CRC or tag: its extent is
    /// known, so what follows it can be checked.
    Failed(Frame),
    /// Not the next frame.
    Invalid(FrameDefect),
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

impl Expect<'_> {
    /// Whether a header's timeline and start make it the next frame (an encrypted frame's
    /// sequence number is checked next, then [`Expect::fits_length`]).
    fn fits(&self, timeline: u32, start: Lsn) -> Result<(), FrameDefect> {
        if timeline != self.timeline.get() {
            return Err(FrameDefect::OtherTimeline {
                expected: self.timeline.get(),
                got: timeline,
            });
        }
        if start != self.start {
            return Err(FrameDefect::Discontinuity {
                expected: self.start,
                got: start,
            });
        }
        Ok(())
    }

    /// Whether a header's length fits the segment.
    fn fits_length(&self, start: Lsn, len: u32) -> Result<(), FrameDefect> {
        if len == 0 || self.segment_end.0 - start.0 < u64::from(len) {
            return Err(FrameDefect::LengthOutOfRange { len });
        }
        Ok(())
    }
}

fn check_frame<S: Source + ?Sized>(src: &S, offset: u64, exp: Expect<'_>) -> io::Result<Check> {
    match exp.format {
        FrameFormat::Plain => check_plain_frame(src, offset, exp),
        FrameFormat::Encrypted(key) => check_encrypted_frame(src, offset, exp, key, None),
    }
}

fn check_plain_frame<S: Source + ?Sized>(
    src: &S,
    offset: u64,
    exp: Expect<'_>,
) -> io::Result<Check> {
    if src.size().saturating_sub(offset) < HEADER_LEN {
        return Ok(Check::Invalid(FrameDefect::TornHeader));
    }
    let mut h = [0u8; HEADER_LEN as usize];
    src.read_exact_at(&mut h, offset)?;
    let (header, stored_crc) = match decode_plain_header(&h).and_then(|(header, crc)| {
        exp.fits(header.timeline, header.start)?;
        exp.fits_length(header.start, header.len)?;
        Ok((header, crc))
    }) {
        Ok(decoded) => decoded,
        Err(defect) => return Ok(Check::Invalid(defect)),
    };
    let frame = header.frame_at(offset, FrameSeal::Crc(stored_crc));
    if src.size() < frame.end_offset() {
        return Ok(Check::Invalid(FrameDefect::TornData));
    }
    let mut crc = crc_of_fields(&h);
    for_each_chunk(src, frame.data_offset(), u64::from(frame.len), |c| {
        crc = crc32c::crc32c_append(crc, c);
        Ok(())
    })?;
    if crc != stored_crc {
        return Ok(Check::Failed(frame));
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
        return Ok(Check::Invalid(FrameDefect::TornHeader));
    }
    let mut h = [0u8; ENC_HEADER_LEN as usize];
    src.read_exact_at(&mut h, offset)?;
    let (header, seq, nonce) = match decode_encrypted_header(&h).and_then(|(header, seq, nonce)| {
        exp.fits(header.timeline, header.start)?;
        if seq != exp.seq {
            return Err(FrameDefect::OutOfSequence {
                expected: exp.seq,
                got: seq,
            });
        }
        exp.fits_length(header.start, header.len)?;
        Ok((header, seq, nonce))
    }) {
        Ok(decoded) => decoded,
        Err(defect) => return Ok(Check::Invalid(defect)),
    };
    let frame = header.frame_at(offset, FrameSeal::Aead { seq, nonce });
    if src.size() < frame.end_offset() {
        return Ok(Check::Invalid(FrameDefect::TornData));
    }
    let mut local = Vec::new();
    let buf = match plain {
        Some(b) => b,
        None => &mut local,
    };
    buf.clear();
    buf.resize(frame.stored_len() as usize, 0);
    src.read_exact_at(buf, frame.data_offset())?;
    if key.open(&nonce, &h, buf).is_err() {
        return Ok(Check::Failed(frame));
    }
    buf.truncate(frame.len as usize);
    Ok(Check::Valid(frame))
}

/// Whether the object magic starts `src`: the journal is encrypted.
pub(crate) fn is_encrypted<S: Source + ?Sized>(src: &S) -> io::Result<bool> {
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
                damage: JournalDamage::KeyHeaderUnopenable(e),
            });
        }
    };
    let binding = KeyBinding {
        system_id: ctx.system_id,
        timeline,
        segno,
        size: ctx.size,
    };
    let frame_key = binding
        .frame_key(&block)
        .map_err(|damage| ScanError::Damaged { offset: 0, damage })?;
    let journal_id = ObjectHeader::parse(&header)
        .map_err(ScanError::Crypto)?
        .object_id();
    let key = FrameKey::new(&frame_key, journal_id).map_err(ScanError::FrameKey)?;
    Ok(Some(FrameFormat::Encrypted(Arc::new(key))))
}

/// Scans the plain journal of `timeline`/`segno` (an encrypted one is an error).
#[cfg(test)]
pub(super) fn scan<S: Source + ?Sized>(
    src: &S,
    timeline: TimelineId,
    segno: SegmentNo,
    size: klio_wal::SegmentSize,
) -> Result<JournalScan, ScanError> {
    scan_with(src, timeline, segno, &Ctx::plain(size))
}

/// Scans the journal of `timeline`/`segno`, plain or encrypted.
pub(crate) fn scan_with<S: Source + ?Sized>(
    src: &S,
    timeline: TimelineId,
    segno: SegmentNo,
    ctx: &Ctx<'_>,
) -> Result<JournalScan, ScanError> {
    let size = ctx.size;
    let overflow = || ScanError::Damaged {
        offset: 0,
        damage: JournalDamage::SegmentOutOfRange,
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
            stop_reason: Some(ScanStop::IncompleteKeyHeader),
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
            Check::Invalid(defect) => {
                if matches!(format, FrameFormat::Encrypted(_)) && defect.is_out_of_place() {
                    return Err(ScanError::Damaged {
                        offset,
                        damage: JournalDamage::OutOfPlace(defect),
                    });
                }
                stop_reason = Some(ScanStop::Frame(defect));
                break;
            }
            Check::Failed(bad) => {
                if damage_proven(src, bad, exp)? {
                    return Err(ScanError::Damaged {
                        offset,
                        damage: JournalDamage::DamagedAfterSync {
                            start: bad.start,
                            len: bad.len,
                            check: format.check(),
                        },
                    });
                }
                stop_reason = Some(ScanStop::Frame(format.check().failure()));
                break;
            }
        }
    }
    if frames.is_empty() && matches!(format, FrameFormat::Plain) && looks_encrypted_after(src)? {
        return Err(ScanError::Damaged {
            offset: 0,
            damage: JournalDamage::KeyHeaderOverwritten,
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

/// Whether an encrypted frame header sits where an encrypted journal's first frame goes.
fn looks_encrypted_after<S: Source + ?Sized>(src: &S) -> io::Result<bool> {
    let mut m = [0u8; 4];
    if src.size() < ENC_FRAMES_START + 4 {
        return Ok(false);
    }
    src.read_exact_at(&mut m, ENC_FRAMES_START)?;
    Ok(is_enc_magic(&m))
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
            Check::Failed(_) | Check::Invalid(_) => return Ok(false),
        }
    }
    Ok(false)
}

/// Copies the data of `frames` to `out` in order, checking every CRC or tag again while
/// reading, so that bytes damaged since the scan are never returned.
pub(crate) fn copy_frames<S: Source + ?Sized>(
    src: &S,
    timeline: TimelineId,
    format: &FrameFormat,
    frames: &[Frame],
    mut out: impl FnMut(&[u8]) -> io::Result<()>,
) -> Result<(), ScanError> {
    let mut plain = Vec::new();
    for f in frames {
        let changed = ScanError::Damaged {
            offset: f.offset,
            damage: JournalDamage::ChangedSinceScan {
                check: format.check(),
            },
        };
        match (format, f.seal) {
            (FrameFormat::Plain, FrameSeal::Crc(stored)) => {
                let fields = header_fields(timeline, f.start, f.len, f.continued);
                let mut crc = crc32c::crc32c(&fields);
                for_each_chunk(src, f.data_offset(), u64::from(f.len), |c| {
                    crc = crc32c::crc32c_append(crc, c);
                    out(c)
                })?;
                if crc != stored {
                    return Err(changed);
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
                    _ => return Err(changed),
                }
            }
            _ => {
                return Err(ScanError::Damaged {
                    offset: f.offset,
                    damage: JournalDamage::OtherFormat,
                });
            }
        }
    }
    Ok(())
}
