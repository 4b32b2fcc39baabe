//! What stops a scan of a journal, and what makes a journal damaged rather than torn.
//!
//! A scan stops at the first bytes that are not the next valid frame ([`FrameDefect`]); that
//! is the torn tail a crash leaves, and the end of the frames before it is the durable end
//! ([`ScanStop`]). Some findings are proof that data was lost or altered after it was made
//! durable, which no crash does: the journal is then damaged ([`JournalDamage`]) and refused.
//! Which one a finding is is decided by matching these variants, never by their text.

use std::fmt;

use klio_crypto::CryptoError;
use klio_wal::Lsn;

/// Why the bytes at one position of a journal are not the next valid frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameDefect {
    /// The file ends inside a frame header.
    TornHeader,
    /// The header is all zeros: no frame was written here.
    Zeros,
    /// The header does not start with the frame magic.
    BadMagic,
    /// A frame format version this build does not know.
    UnknownVersion {
        /// The version byte found.
        version: u8,
    },
    /// Flags this build does not know, or reserved bytes that are not zero.
    ReservedBits,
    /// A frame of another timeline than the journal's.
    OtherTimeline {
        /// The journal's timeline.
        expected: u32,
        /// The timeline the frame names.
        got: u32,
    },
    /// The frame does not start where the previous one ended.
    Discontinuity {
        /// Where the previous frame ended (the segment start for the first frame).
        expected: Lsn,
        /// Where the frame starts.
        got: Lsn,
    },
    /// An encrypted frame whose sequence number is not the next one.
    OutOfSequence {
        /// The next sequence number.
        expected: u64,
        /// The frame's sequence number.
        got: u64,
    },
    /// A frame length of zero, or one reaching past the end of the segment.
    LengthOutOfRange {
        /// The length the header names.
        len: u32,
    },
    /// The file ends inside the frame's data.
    TornData,
    /// A well-formed plain frame whose CRC does not match.
    BadCrc,
    /// A well-formed encrypted frame whose authentication tag does not match.
    BadTag,
}

impl FrameDefect {
    /// Whether this is a well-formed header that a crash cannot leave here: every frame is
    /// written continuing the valid ones, and a torn tail is zeroed (and fdatasynced) by
    /// recovery before new frames follow, so a stale frame never lies after the valid ones.
    /// Only authenticated (encrypted) headers can prove this: a plain header may be any bytes.
    pub fn is_out_of_place(&self) -> bool {
        matches!(
            self,
            Self::OtherTimeline { .. } | Self::Discontinuity { .. } | Self::OutOfSequence { .. }
        )
    }
}

impl fmt::Display for FrameDefect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TornHeader => f.write_str("end of file inside a frame header"),
            Self::Zeros => f.write_str("zeros (no frame written here)"),
            Self::BadMagic => f.write_str("bad frame magic"),
            Self::UnknownVersion { version } => {
                write!(f, "unknown frame format version {version}")
            }
            Self::ReservedBits => f.write_str("unknown flags or non-zero reserved bytes"),
            Self::OtherTimeline { expected, got } => {
                write!(f, "frame of another timeline ({got}, expected {expected})")
            }
            Self::Discontinuity { expected, got } => write!(
                f,
                "frame does not continue the previous one (it starts at {got}, expected \
                 {expected})"
            ),
            Self::OutOfSequence { expected, got } => {
                write!(
                    f,
                    "frame out of sequence (number {got}, expected {expected})"
                )
            }
            Self::LengthOutOfRange { len } => {
                write!(f, "frame length out of range ({len} bytes)")
            }
            Self::TornData => f.write_str("end of file inside frame data"),
            Self::BadCrc => f.write_str("CRC mismatch"),
            Self::BadTag => f.write_str("authentication tag mismatch"),
        }
    }
}

/// Why a scan stopped before the end of the segment: what follows the durable end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScanStop {
    /// An encrypted journal's key header was cut short while the journal was being created
    /// (nothing follows it, so nothing in it was ever acknowledged).
    IncompleteKeyHeader,
    /// The bytes after the last valid frame are not the next frame.
    Frame(FrameDefect),
}

impl fmt::Display for ScanStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::IncompleteKeyHeader => {
                f.write_str("encrypted key header incomplete (the journal was being created)")
            }
            Self::Frame(defect) => defect.fmt(f),
        }
    }
}

/// What protects a frame against damage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameCheck {
    /// The CRC-32C of a plain frame.
    Crc,
    /// The AES-256-GCM tag of an encrypted frame.
    Tag,
}

impl FrameCheck {
    /// The defect of a well-formed frame that fails this check.
    pub fn failure(self) -> FrameDefect {
        match self {
            Self::Crc => FrameDefect::BadCrc,
            Self::Tag => FrameDefect::BadTag,
        }
    }
}

/// Why a journal is damaged: acknowledged WAL in it was lost or altered, or it is not the
/// journal its name says.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum JournalDamage {
    /// The journal's segment number lies past the end of the WAL space.
    SegmentOutOfRange,
    /// The encrypted key header does not open with the keyring, and bytes follow it (so it was
    /// complete once).
    KeyHeaderUnopenable(CryptoError),
    /// The key header opens, but does not hold a journal key block.
    NotAKeyBlock,
    /// The key header belongs to a journal of another cluster.
    OtherCluster {
        /// The system id the key block names.
        system_id: u64,
    },
    /// The key header belongs to the journal of another segment.
    OtherSegment {
        /// The timeline the key block names.
        timeline: u32,
        /// The segment number the key block names.
        segno: u64,
        /// The segment size the key block names.
        segment_size: u32,
    },
    /// Encrypted frames follow, but the journal does not start with a key header.
    KeyHeaderOverwritten,
    /// A well-formed encrypted frame header that a crash cannot leave where it is (see
    /// [`FrameDefect::is_out_of_place`]).
    OutOfPlace(FrameDefect),
    /// A frame fails its check, but frames written after a later fdatasync follow it.
    DamagedAfterSync {
        /// The frame's start LSN.
        start: Lsn,
        /// The frame's data length.
        len: u32,
        /// The check it fails.
        check: FrameCheck,
    },
    /// A frame that was valid when scanned fails its check when read again.
    ChangedSinceScan {
        /// The check it fails.
        check: FrameCheck,
    },
    /// A frame of the other journal format than the scan found.
    OtherFormat,
}

impl JournalDamage {
    fn key_header_moved(f: &mut fmt::Formatter<'_>, what: fmt::Arguments<'_>) -> fmt::Result {
        write!(
            f,
            "its key header {what}: the journal was renamed, swapped or copied from another \
             archive"
        )
    }
}

impl fmt::Display for JournalDamage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SegmentOutOfRange => f.write_str("segment number past the end of the WAL space"),
            Self::KeyHeaderUnopenable(e) => {
                write!(f, "its encrypted key header cannot be opened: {e}")
            }
            Self::NotAKeyBlock => {
                Self::key_header_moved(f, format_args!("is not a journal key block"))
            }
            Self::OtherCluster { system_id } => Self::key_header_moved(
                f,
                format_args!("belongs to the cluster with system id {system_id}"),
            ),
            Self::OtherSegment {
                timeline,
                segno,
                segment_size,
            } => Self::key_header_moved(
                f,
                format_args!(
                    "belongs to timeline {timeline} segment {segno} (segment size {segment_size})"
                ),
            ),
            Self::KeyHeaderOverwritten => f.write_str(
                "encrypted frames follow, but the journal does not start with an encrypted key \
                 header: the header was overwritten",
            ),
            Self::OutOfPlace(defect) => write!(
                f,
                "a well-formed frame header is out of place ({defect}): frames were reordered, \
                 dropped or spliced in, which no crash does (the torn tail of a journal is \
                 cleared before new frames follow)"
            ),
            Self::DamagedAfterSync { start, len, check } => write!(
                f,
                "the frame for {start}+{len} bytes fails its {}, but frames written after a \
                 later fdatasync follow it, so it was damaged after it was made durable",
                match check {
                    FrameCheck::Crc => "CRC",
                    FrameCheck::Tag => "authentication",
                }
            ),
            Self::ChangedSinceScan {
                check: FrameCheck::Crc,
            } => f.write_str("frame CRC no longer matches when read again"),
            Self::ChangedSinceScan {
                check: FrameCheck::Tag,
            } => f.write_str("frame no longer authenticates when read again"),
            Self::OtherFormat => f.write_str("frame of the other journal format"),
        }
    }
}
