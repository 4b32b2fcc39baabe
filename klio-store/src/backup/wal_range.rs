//! Whether the cluster's WAL archive holds everything a backup needs to become consistent:
//! all WAL from its start to its end, on the end timeline's history.

use std::fmt;

use klio_wal::{Lsn, SegmentNo, TimelineId, WalFileName, WalPosition, parse_history};

use crate::wal_archive::{ArchiveListing, WalArchiveError, WalArchiveReader};

/// The answer of [`wal_coverage`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WalCoverage {
    /// Every segment from the start LSN's through the end LSN's is stored, the last one (if
    /// in progress) durable at least up to the end LSN.
    Archived,
    /// This segment is not stored (complete) yet.
    MissingSegment {
        /// The segment's name.
        name: String,
    },
    /// The last segment is in progress and not yet durable up to the end LSN.
    ShortOfEnd {
        /// The segment's name.
        name: String,
        /// Its durable end.
        durable: Lsn,
    },
    /// The end timeline's history file is not in the archive (or cannot be parsed), so the
    /// path of timelines to it is unknown.
    MissingHistory {
        /// The timeline.
        timeline: TimelineId,
    },
}

impl fmt::Display for WalCoverage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Archived => f.write_str("the WAL is archived"),
            Self::MissingSegment { name } => write!(f, "segment {name} is not archived"),
            Self::ShortOfEnd { name, durable } => {
                write!(f, "segment {name} is archived only up to {durable}")
            }
            Self::MissingHistory { timeline } => {
                write!(f, "the history file of timeline {timeline} is not archived")
            }
        }
    }
}

/// Whether `archive` holds all WAL from `start` to `end` on `end.timeline`'s history: the
/// segments from the start LSN's through the end LSN's (the segment holding a switch point read
/// from the newer timeline, as recovery reads it), the last one possibly in progress with its
/// durable end at or past `end.lsn`.
pub fn wal_coverage(
    archive: &WalArchiveReader,
    start: WalPosition,
    end: WalPosition,
) -> Result<WalCoverage, WalArchiveError> {
    wal_coverage_in(archive, &archive.list()?, start, end)
}

/// Like [`wal_coverage`], judged from `listing` (what the archive holds, as
/// [`WalArchiveReader::list`] or the archive's index reports it) instead of a new listing.
pub fn wal_coverage_in(
    archive: &WalArchiveReader,
    listing: &ArchiveListing,
    start: WalPosition,
    end: WalPosition,
) -> Result<WalCoverage, WalArchiveError> {
    let size = archive.identity().segment_size;
    // The timelines leading to the end timeline, each with the switch point where it ends.
    let mut path: Vec<(TimelineId, Option<Lsn>)> = Vec::new();
    if end.timeline != TimelineId::FIRST {
        let missing = WalCoverage::MissingHistory {
            timeline: end.timeline,
        };
        let Some(content) = archive.history(end.timeline)? else {
            return Ok(missing);
        };
        let Ok(entries) = parse_history(&content) else {
            return Ok(missing);
        };
        path.extend(entries.iter().map(|e| (e.parent, Some(e.switchpoint))));
    }
    path.push((end.timeline, None));
    let first = size.segment_of(start.lsn);
    let last = if end.lsn > start.lsn && size.offset_of(end.lsn) == 0 {
        // The end is exactly a segment boundary: nothing of the next segment is needed.
        SegmentNo(size.segment_of(end.lsn).0.saturating_sub(1))
    } else {
        size.segment_of(end.lsn)
    };
    let mut segno = first;
    while segno <= last {
        let timeline = path
            .iter()
            .find(|(_, until)| until.is_none_or(|e| size.segment_of(e) > segno))
            .map_or(end.timeline, |(t, _)| *t);
        let name = WalFileName::Segment { timeline, segno }.to_string_with(size);
        let stored = listing.timelines.iter().find(|t| t.timeline == timeline);
        let complete = stored.is_some_and(|t| {
            t.segments
                .iter()
                .any(|r| r.first <= segno && segno <= r.last)
        });
        if !complete {
            let partial =
                stored.and_then(|t| t.partials.iter().find(|p| p.segno == segno).copied());
            match partial {
                Some(p) if segno == last && p.end >= end.lsn => {}
                Some(p) if segno == last => {
                    return Ok(WalCoverage::ShortOfEnd {
                        name,
                        durable: p.end,
                    });
                }
                _ => return Ok(WalCoverage::MissingSegment { name }),
            }
        }
        segno = SegmentNo(segno.0 + 1);
    }
    Ok(WalCoverage::Archived)
}
