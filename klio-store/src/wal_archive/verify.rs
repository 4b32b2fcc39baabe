//! `klio verify`: is the archive continuous and intact, and what can it recover?
//!
//! The newest timeline's history names the timelines it descends from and where each was left;
//! the segments a recovery to the newest point would read are walked in order, record by
//! record ([`klio_wal::record_walk`]: page headers, `xl_prev` links, CRC-32C of every record),
//! after the file-level checks of reading (sealed files authenticated, journals checksummed).
//! Every other stored file is read and checked too. Missing segments and damage are reported
//! precisely; the recoverable range ends before the first problem.

use klio_wal::record_walk::{RecordWalker, SegmentSummary};
use klio_wal::{ErrorChain, Lsn, PageHeader, SegmentNo, TimelineId, WalFileName, WalPosition};

use super::recovery_plan::{PathStep, RecoveryPlan};
use super::{WalArchiveError, WalArchiveReader};

/// A problem found by [`WalArchiveReader::verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyProblem {
    /// Segments a recovery needs are not in the archive.
    Gap {
        /// Their timeline.
        timeline: TimelineId,
        /// The first missing segment's name.
        first: String,
        /// The last missing segment's name.
        last: String,
    },
    /// A file is damaged or its WAL does not check out.
    Damaged {
        /// The file's name.
        file: String,
        /// What is wrong (and where, for WAL: the LSN).
        reason: String,
    },
    /// The history of a timeline is missing: which timelines lead to it is unknown.
    MissingHistory {
        /// The timeline.
        timeline: TimelineId,
    },
}

impl std::fmt::Display for VerifyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Gap {
                timeline,
                first,
                last,
            } if first == last => write!(f, "missing segment {first} (timeline {timeline})"),
            Self::Gap {
                timeline,
                first,
                last,
            } => write!(
                f,
                "missing segments {first} to {last} (timeline {timeline})"
            ),
            Self::Damaged { file, reason } => write!(f, "{file} is damaged: {reason}"),
            Self::MissingHistory { timeline } => write!(
                f,
                "the history file of timeline {timeline} is missing: the timelines before it \
                 cannot be followed"
            ),
        }
    }
}

/// What [`WalArchiveReader::verify`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// The continuous, checked WAL from the start: a recovery from a backup whose start lies
    /// in it can reach any point up to its end. `None` if nothing could be checked.
    pub recoverable: Option<(WalPosition, WalPosition)>,
    /// Timelines followed, oldest first.
    pub timelines: Vec<TimelineId>,
    /// Segments read and walked record by record.
    pub segments_walked: u64,
    /// Records whose CRC and links were checked.
    pub records_checked: u64,
    /// Other files read and checked (history files, segments off the recovery path).
    pub other_files_checked: u64,
    /// Everything wrong, in stream order.
    pub problems: Vec<VerifyProblem>,
}

impl VerifyReport {
    /// No gap and no damage.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl WalArchiveReader {
    /// Checks the archive from `from` (default: the oldest WAL stored) to the newest WAL;
    /// see the [module documentation](self). Read-only; safe while a writer streams.
    pub fn verify(&self, from: Option<Lsn>) -> Result<VerifyReport, WalArchiveError> {
        let size = self.identity.segment_size;
        let listing = self.list()?;
        let mut report = VerifyReport::default();
        let Some(RecoveryPlan {
            path,
            wanted,
            start,
            problems,
            ..
        }) = self.recovery_plan(&listing, from)
        else {
            return Ok(report);
        };
        report.problems = problems;
        report.timelines = path.iter().map(|s| s.timeline).collect();

        // Walk them.
        let mut walker: Option<RecordWalker> = None;
        let mut recoverable_end: Option<WalPosition> = None;
        let mut recoverable_start: Option<WalPosition> = None;
        let mut clean = true;
        let mut gap: Option<(TimelineId, SegmentNo, SegmentNo)> = None;
        let mut walked = std::collections::BTreeSet::new();
        let flush_gap = |gap: &mut Option<(TimelineId, SegmentNo, SegmentNo)>,
                         problems: &mut Vec<VerifyProblem>| {
            if let Some((t, a, b)) = gap.take() {
                let name = |s| {
                    WalFileName::Segment {
                        timeline: t,
                        segno: s,
                    }
                    .to_string_with(size)
                };
                problems.push(VerifyProblem::Gap {
                    timeline: t,
                    first: name(a),
                    last: name(b),
                });
            }
        };
        for (i, segno) in wanted {
            let step = &path[i];
            let t = step.timeline;
            let name = WalFileName::Segment { timeline: t, segno };
            let file_name = name.to_string_with(size);
            walked.insert((t, segno));
            let file = match self.read_file(&name) {
                Ok(Some(f)) => f,
                Ok(None) => {
                    clean = false;
                    walker = None;
                    gap = match gap {
                        Some((gt, a, b)) if gt == t && b.0 + 1 == segno.0 => Some((t, a, segno)),
                        other => {
                            let mut other = other;
                            flush_gap(&mut other, &mut report.problems);
                            Some((t, segno, segno))
                        }
                    };
                    continue;
                }
                Err(e) => {
                    flush_gap(&mut gap, &mut report.problems);
                    clean = false;
                    walker = None;
                    report.problems.push(VerifyProblem::Damaged {
                        file: file_name,
                        reason: ErrorChain(&e).to_string(),
                    });
                    continue;
                }
            };
            flush_gap(&mut gap, &mut report.problems);
            let seg_start = size.segment_start(segno).unwrap_or(Lsn(0));
            if walker.is_none() {
                walker = match new_walker(self, &path, i, segno, &file.content) {
                    Ok(w) => Some(w),
                    Err(reason) => {
                        clean = false;
                        report.problems.push(VerifyProblem::Damaged {
                            file: file_name,
                            reason,
                        });
                        continue;
                    }
                };
            } else if let Some(w) = walker.as_mut()
                && w.timeline() != t
                && let Err(e) = w.switch_timeline(t, step.begin)
            {
                clean = false;
                report.problems.push(VerifyProblem::Damaged {
                    file: file_name,
                    reason: format!("timeline switch at {}: {}", step.begin, ErrorChain(&e)),
                });
                walker = None;
                continue;
            }
            let Some(w) = walker.as_mut() else { continue };
            let fed = if file.partial {
                w.feed_partial(&file.content, Lsn(seg_start.0 + file.valid_len))
            } else {
                w.feed_segment(&file.content)
            };
            report.segments_walked += 1;
            match fed {
                Ok(summary) => {
                    report.records_checked += summary.records;
                    if clean {
                        if recoverable_start.is_none() {
                            recoverable_start = Some(WalPosition {
                                timeline: t,
                                lsn: first_point(&summary, seg_start, start),
                            });
                        }
                        let end = if file.partial {
                            Lsn(seg_start.0 + file.valid_len)
                        } else {
                            summary
                                .last_record_end
                                .unwrap_or(Lsn(seg_start.0 + size.bytes_u64()))
                        };
                        recoverable_end = Some(WalPosition {
                            timeline: t,
                            lsn: end,
                        });
                    }
                }
                Err(e) => {
                    if clean {
                        // Every record before the damaged one checked out.
                        recoverable_end = Some(WalPosition {
                            timeline: t,
                            lsn: e.lsn(),
                        });
                    }
                    clean = false;
                    report.problems.push(VerifyProblem::Damaged {
                        file: file_name,
                        reason: ErrorChain(&e).to_string(),
                    });
                    walker = None;
                }
            }
        }
        flush_gap(&mut gap, &mut report.problems);
        report.recoverable = recoverable_start.zip(recoverable_end);

        // Every other stored file must read back intact too.
        for tl in &listing.timelines {
            let others = tl
                .segments
                .iter()
                .flat_map(|r| (r.first.0..=r.last.0).map(SegmentNo))
                .chain(tl.partials.iter().map(|p| p.segno))
                .filter(|s| !walked.contains(&(tl.timeline, *s)));
            for segno in others {
                let name = WalFileName::Segment {
                    timeline: tl.timeline,
                    segno,
                };
                report.other_files_checked += 1;
                if let Err(e) = self.read_file(&name) {
                    report.problems.push(VerifyProblem::Damaged {
                        file: name.to_string_with(size),
                        reason: ErrorChain(&e).to_string(),
                    });
                }
            }
        }
        for &timeline in &listing.histories {
            report.other_files_checked += 1;
            if let Err(e) = self.history(timeline) {
                report.problems.push(VerifyProblem::Damaged {
                    file: WalFileName::History { timeline }.to_string_with(size),
                    reason: ErrorChain(&e).to_string(),
                });
            }
        }
        Ok(report)
    }
}

/// The first LSN a recovery can start at in a segment: `start` if that is inside it, else the
/// first record that begins in it.
fn first_point(summary: &SegmentSummary, seg_start: Lsn, start: Lsn) -> Lsn {
    if start >= seg_start {
        start
    } else {
        summary.first_record.unwrap_or(seg_start)
    }
}

/// A walker starting at `segno`, whose first page header gives the WAL format version. A
/// segment that holds a switch point starts on the older timeline and switches at once.
fn new_walker(
    archive: &WalArchiveReader,
    path: &[PathStep],
    i: usize,
    segno: SegmentNo,
    content: &[u8],
) -> Result<RecordWalker, String> {
    let size = archive.identity.segment_size;
    let header = PageHeader::parse(content).map_err(|e| format!("first page header: {e}"))?;
    let step = &path[i];
    let starts_here = i > 0 && size.segment_of(step.begin) == segno;
    let first_tl = if starts_here {
        path[i - 1].timeline
    } else {
        step.timeline
    };
    let mut w = RecordWalker::new(
        size,
        first_tl,
        segno,
        header.magic,
        archive.identity.system_id,
    );
    if starts_here {
        w.switch_timeline(step.timeline, step.begin)
            .map_err(|e| format!("timeline switch at {}: {}", step.begin, ErrorChain(&e)))?;
    }
    Ok(w)
}
