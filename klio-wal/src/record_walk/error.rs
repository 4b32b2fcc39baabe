//! What the record walker reports: where the WAL stops being what PostgreSQL wrote.

use std::fmt;

use crate::page::PageHeaderError;
use crate::{Lsn, SegmentNo, TimelineId};

/// A record named by its start, or one that began before the first segment walked (its start is
/// unknown because the walk began in its middle).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordRef(pub Option<Lsn>);

impl fmt::Display for RecordRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(lsn) => write!(f, "the record at {lsn}"),
            None => f.write_str("the record begun before the first segment walked"),
        }
    }
}

/// Bytes PostgreSQL always leaves zeroed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Padding {
    /// The 4 bytes after `xlp_rem_len` in a page header.
    PageHeader,
    /// The gap that MAXALIGNs the start of the next record.
    RecordAlignment,
}

impl fmt::Display for Padding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PageHeader => f.write_str("the padding of a page header"),
            Self::RecordAlignment => f.write_str("the alignment padding after a record"),
        }
    }
}

/// Why a WAL stream is not intact: what is wrong, and the LSN where it is.
///
/// [`WalCorruption::lsn`] is never after the damaged byte: errors found while reassembling a
/// record name the record's start, which is where recovery would stop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WalCorruption {
    /// The segment fed is not exactly one segment long.
    #[error("WAL segment {:X} at {start} has {len} bytes, expected {expected}", .segno.0)]
    SegmentLength {
        /// The segment number.
        segno: SegmentNo,
        /// Its first LSN.
        start: Lsn,
        /// Bytes given.
        len: usize,
        /// The segment size.
        expected: u32,
    },
    /// The segment number lies beyond the 64-bit LSN space.
    #[error("WAL segment {:X} lies beyond the largest LSN", .segno.0)]
    SegmentOutOfRange {
        /// The segment number.
        segno: SegmentNo,
    },
    /// `end` of a partial segment is not inside the segment, or beyond the bytes given.
    #[error(
        "end {end} of the partial WAL segment at {start} is outside it (or past the {len} bytes given)"
    )]
    EndOutsideSegment {
        /// The end given.
        end: Lsn,
        /// The segment's first LSN.
        start: Lsn,
        /// Bytes given.
        len: usize,
    },
    /// A page header is invalid or does not fit its position (see [`PageHeaderError`]).
    #[error("invalid WAL page header at {page}")]
    PageHeader {
        /// The page's LSN.
        page: Lsn,
        /// What is wrong with the header.
        #[source]
        source: PageHeaderError,
    },
    /// `xlp_tli` is not the timeline the history says wrote this position.
    #[error(
        "WAL page at {page} is from timeline {found}, but the timeline history given puts timeline {expected} there"
    )]
    PageTimeline {
        /// The page's LSN.
        page: Lsn,
        /// `xlp_tli` found.
        found: TimelineId,
        /// The timeline expected.
        expected: TimelineId,
    },
    /// A byte PostgreSQL leaves zeroed is not zero.
    #[error("non-zero byte 0x{value:02X} at {lsn} in {area}")]
    NonZeroPadding {
        /// The byte's LSN.
        lsn: Lsn,
        /// Its value.
        value: u8,
        /// Which padding.
        area: Padding,
    },
    /// A record continues past a page, but the next page does not say it continues one.
    #[error(
        "WAL page at {page} has no XLP_FIRST_IS_CONTRECORD flag, but {record} continues on it (lost or misplaced page?)"
    )]
    MissingContrecord {
        /// The page's LSN.
        page: Lsn,
        /// The record being reassembled.
        record: RecordRef,
    },
    /// `xlp_rem_len` disagrees with what is left of the record being reassembled.
    #[error(
        "WAL page at {page} says {found} bytes of a record remain, but {expected} bytes of {record} remain"
    )]
    RemLenMismatch {
        /// The page's LSN.
        page: Lsn,
        /// The record being reassembled.
        record: RecordRef,
        /// `xlp_rem_len` found.
        found: u32,
        /// Bytes left of the record.
        expected: u32,
    },
    /// A page says it continues a record, but the previous record ended before it.
    #[error(
        "WAL page at {page} claims to continue a record ({rem_len} bytes remaining), but the previous record ended before this page"
    )]
    UnexpectedContrecord {
        /// The page's LSN.
        page: Lsn,
        /// `xlp_rem_len` found.
        rem_len: u32,
    },
    /// A page says it overwrites a lost record continuation, but none was lost before it.
    #[error(
        "WAL page at {page} has XLP_FIRST_IS_OVERWRITE_CONTRECORD, but no record was left unfinished before it"
    )]
    UnexpectedOverwrite {
        /// The page's LSN.
        page: Lsn,
    },
    /// A page has both XLP_FIRST_IS_CONTRECORD and XLP_FIRST_IS_OVERWRITE_CONTRECORD.
    #[error(
        "WAL page at {page} both continues and overwrites a record (XLP_FIRST_IS_CONTRECORD and XLP_FIRST_IS_OVERWRITE_CONTRECORD)"
    )]
    ContrecordAndOverwrite {
        /// The page's LSN.
        page: Lsn,
    },
    /// Zeros where the next record must start: the WAL ends early. Only an `XLOG_SWITCH`
    /// record leaves the rest of a segment empty.
    #[error(
        "no WAL record at {lsn}: zeros where the next record must start, but only an XLOG_SWITCH record may end a segment early"
    )]
    MissingRecord {
        /// Where the record should start.
        lsn: Lsn,
    },
    /// `xl_tot_len` is smaller than a record header or larger than any readable record.
    #[error("invalid record length {tot_len} at {lsn}: expected 24 to {max} bytes")]
    RecordLength {
        /// The record's LSN.
        lsn: Lsn,
        /// `xl_tot_len` found.
        tot_len: u32,
        /// The largest length accepted.
        max: u32,
    },
    /// `xl_rmid` is no resource manager PostgreSQL 15–17 know.
    #[error("invalid resource manager ID {rmid} in record at {lsn}")]
    InvalidRmgr {
        /// The record's LSN.
        lsn: Lsn,
        /// `xl_rmid` found.
        rmid: u8,
    },
    /// `xl_prev` does not point at the previous record.
    #[error("record at {lsn} has prev-link {found}, expected {expected} (the previous record)")]
    PrevLink {
        /// The record's LSN.
        lsn: Lsn,
        /// `xl_prev` found.
        found: Lsn,
        /// The previous record's LSN.
        expected: Lsn,
    },
    /// `xl_prev` of the first record walked is not before it (the previous record is unknown).
    #[error("record at {lsn} has prev-link {found}, which is not before the record")]
    PrevLinkNotBefore {
        /// The record's LSN.
        lsn: Lsn,
        /// `xl_prev` found.
        found: Lsn,
    },
    /// The record's CRC-32C does not match its bytes.
    #[error(
        "incorrect CRC-32C in record at {lsn}: stored 0x{stored:08X}, computed 0x{computed:08X}"
    )]
    Crc {
        /// The record's LSN.
        lsn: Lsn,
        /// `xl_crc` found.
        stored: u32,
        /// The CRC of the record's bytes.
        computed: u32,
    },
    /// The block references and data headers inside a record do not add up.
    #[error("invalid layout of record at {lsn}: {detail}")]
    RecordLayout {
        /// The record's LSN.
        lsn: Lsn,
        /// What does not add up.
        detail: &'static str,
    },
    /// The first record after an overwritten continuation is not the `XLOG_OVERWRITE_CONTRECORD`
    /// record that names the lost record.
    #[error(
        "record at {lsn} follows an XLP_FIRST_IS_OVERWRITE_CONTRECORD page but is no XLOG_OVERWRITE_CONTRECORD record naming {aborted}"
    )]
    OverwriteRecord {
        /// The record's LSN.
        lsn: Lsn,
        /// The record left unfinished.
        aborted: RecordRef,
    },
}

impl WalCorruption {
    /// Where the damage is: the page, byte or record start named in the message; for errors
    /// found while reassembling a record, the record's start (or the page, if the walk began in
    /// the record's middle).
    pub fn lsn(&self) -> Lsn {
        match self {
            Self::SegmentLength { start, .. } | Self::EndOutsideSegment { start, .. } => *start,
            Self::SegmentOutOfRange { .. } => Lsn::INVALID,
            Self::PageHeader { page, .. }
            | Self::PageTimeline { page, .. }
            | Self::UnexpectedContrecord { page, .. }
            | Self::UnexpectedOverwrite { page }
            | Self::ContrecordAndOverwrite { page } => *page,
            Self::MissingContrecord { page, record }
            | Self::RemLenMismatch { page, record, .. } => record.0.unwrap_or(*page),
            Self::NonZeroPadding { lsn, .. }
            | Self::MissingRecord { lsn }
            | Self::RecordLength { lsn, .. }
            | Self::InvalidRmgr { lsn, .. }
            | Self::PrevLink { lsn, .. }
            | Self::PrevLinkNotBefore { lsn, .. }
            | Self::Crc { lsn, .. }
            | Self::RecordLayout { lsn, .. }
            | Self::OverwriteRecord { lsn, .. } => *lsn,
        }
    }
}

/// Why [`RecordWalker::switch_timeline`](super::RecordWalker::switch_timeline) refused a switch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TimelineSwitchError {
    /// Child timelines always have a larger id than their parent.
    #[error("cannot switch from timeline {current} to timeline {requested}: timelines only grow")]
    NotNewer {
        /// The walker's timeline.
        current: TimelineId,
        /// The timeline asked for.
        requested: TimelineId,
    },
    /// The switch point lies in a segment the walker has already passed.
    #[error(
        "timeline switch point {at} is before {next_segment}, the start of the next segment to walk"
    )]
    AlreadyPassed {
        /// The switch point given.
        at: Lsn,
        /// The first LSN of the next segment to feed.
        next_segment: Lsn,
    },
    /// The switch point is before the previous switch.
    #[error("timeline switch point {at} is before the previous switch point {previous}")]
    BeforePrevious {
        /// The switch point given.
        at: Lsn,
        /// The previous switch point.
        previous: Lsn,
    },
}
