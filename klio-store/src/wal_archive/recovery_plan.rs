//! The segments a recovery to the newest WAL reads, in order: the timeline path from the
//! newest timeline's history, and the segment numbers along it. Shared by
//! [`WalArchiveReader::verify`] (which reads them) and [`WalArchiveReader::summary`] (which only looks for
//! them).

use klio_wal::{ErrorChain, Lsn, SegmentNo, TimelineId, WalFileName, parse_history};

use super::verify::VerifyProblem;
use super::{ArchiveListing, WalArchiveReader};

/// One timeline of the path to the newest WAL: from `begin` (its first LSN) to `end` (where a
/// newer timeline takes over; `None` for the newest).
pub(super) struct PathStep {
    pub(super) timeline: TimelineId,
    pub(super) begin: Lsn,
    pub(super) end: Option<Lsn>,
}

/// What a recovery to the newest WAL reads.
pub(super) struct RecoveryPlan {
    /// The timelines, oldest first.
    pub(super) path: Vec<PathStep>,
    /// The segments, in reading order, each with its index in `path`.
    pub(super) wanted: Vec<(usize, SegmentNo)>,
    /// Where the recovery starts.
    pub(super) start: Lsn,
    /// The durable end of the newest timeline.
    pub(super) newest_end: Lsn,
    /// Problems with the history files met while planning.
    pub(super) problems: Vec<VerifyProblem>,
}

impl WalArchiveReader {
    /// The plan from `from` (default: the oldest WAL stored on the path); `None` for an empty
    /// archive.
    pub(super) fn recovery_plan(
        &self,
        listing: &ArchiveListing,
        from: Option<Lsn>,
    ) -> Option<RecoveryPlan> {
        let size = self.identity.segment_size;
        let newest = listing.timelines.last()?;
        let mut problems = Vec::new();
        let newest_tl = newest.timeline;
        let newest_end = newest.durable_end;

        // The path of timelines leading to the newest one.
        let mut path = Vec::new();
        let history_name = WalFileName::History {
            timeline: newest_tl,
        }
        .to_string_with(size);
        match self.history(newest_tl) {
            Ok(Some(content)) => match parse_history(&content) {
                Ok(entries) => {
                    let mut begin = Lsn(0);
                    for e in entries {
                        path.push(PathStep {
                            timeline: e.parent,
                            begin,
                            end: Some(e.switchpoint),
                        });
                        begin = e.switchpoint;
                    }
                    path.push(PathStep {
                        timeline: newest_tl,
                        begin,
                        end: None,
                    });
                }
                Err(e) => problems.push(VerifyProblem::Damaged {
                    file: history_name,
                    reason: ErrorChain(&e).to_string(),
                }),
            },
            Ok(None) if newest_tl.get() > 1 => {
                problems.push(VerifyProblem::MissingHistory {
                    timeline: newest_tl,
                });
            }
            Ok(None) => {}
            Err(e) => problems.push(VerifyProblem::Damaged {
                file: history_name,
                reason: ErrorChain(&e).to_string(),
            }),
        }
        if path.is_empty() {
            path.push(PathStep {
                timeline: newest_tl,
                begin: Lsn(0),
                end: None,
            });
        }

        // Where to start: `from`, else the oldest segment stored on the path.
        let first_stored = |t: TimelineId| {
            listing
                .timelines
                .iter()
                .find(|l| l.timeline == t)
                .and_then(|l| {
                    l.segments
                        .first()
                        .map(|r| r.first)
                        .into_iter()
                        .chain(l.partials.first().map(|p| p.segno))
                        .min()
                })
        };
        let start = match from {
            Some(lsn) => lsn,
            None => path
                .iter()
                .find_map(|s| {
                    first_stored(s.timeline).map(|seg| {
                        let lo = size.segment_start(seg).unwrap_or(Lsn(0));
                        if lo < s.begin { s.begin } else { lo }
                    })
                })
                .unwrap_or(newest_end),
        };

        // The segments a recovery from `start` reads, in order.
        let mut wanted: Vec<(usize, SegmentNo)> = Vec::new();
        for (i, step) in path.iter().enumerate() {
            let begin = step.begin.max(start);
            let (last, exclusive) = match step.end {
                // The segment holding the switch point is read from the newer timeline.
                Some(end) => (size.segment_of(end), true),
                None if size.offset_of(newest_end) == 0 => (size.segment_of(newest_end), true),
                None => (size.segment_of(newest_end), false),
            };
            if step.end.is_some_and(|end| end <= begin) {
                continue;
            }
            let mut seg = size.segment_of(begin);
            while seg < last || (!exclusive && seg == last) {
                wanted.push((i, seg));
                seg = SegmentNo(seg.0 + 1);
            }
        }
        Some(RecoveryPlan {
            path,
            wanted,
            start,
            newest_end,
            problems,
        })
    }
}
