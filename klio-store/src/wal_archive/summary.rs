//! A cheap overview of an archive for metrics and `klio status`: sizes and the recoverable
//! range judged by which files exist. [`WalArchiveReader::verify`] is the thorough check (it reads
//! and walks every record); this only lists the directory and scans the journal in progress.

use klio_wal::{FsAction, Lsn, SegmentNo, TimelineId, WalPosition};

use super::recovery_plan::RecoveryPlan;
use super::{ArchiveListing, WalArchiveError, WalArchiveReader};

/// What an archive holds (see the [module documentation](self)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ArchiveSummary {
    /// Bytes of the files in the archive directory (sealed, compressed sizes as stored).
    pub bytes: u64,
    /// Completed segments stored, on all timelines.
    pub segments: u64,
    /// The oldest WAL stored on the path of timelines to the newest WAL.
    pub oldest: Option<WalPosition>,
    /// What a recovery to the newest WAL can cover without a gap: from the first segment
    /// after the last missing one (else from `oldest`) to the newest durable byte.
    pub recoverable: Option<(WalPosition, WalPosition)>,
    /// Runs of missing segments on that path; WAL before the last one cannot be replayed
    /// to the newest point.
    pub gaps: u64,
}

impl WalArchiveReader {
    /// Summarizes the archive (see the [module documentation](self)). Read-only; safe while
    /// a writer streams.
    pub fn summary(&self) -> Result<ArchiveSummary, WalArchiveError> {
        let listing = self.list()?;
        let bytes = directory_bytes(&self.dir)?;
        self.summarize(&listing, bytes)
    }

    /// The summary of what `listing` holds, `bytes` stored in all (from a listing of the
    /// directory, or from the archive's index).
    pub(super) fn summarize(
        &self,
        listing: &ArchiveListing,
        bytes: u64,
    ) -> Result<ArchiveSummary, WalArchiveError> {
        let mut s = ArchiveSummary {
            bytes,
            segments: listing
                .timelines
                .iter()
                .flat_map(|t| &t.segments)
                .map(|r| r.last.0 - r.first.0 + 1)
                .sum(),
            ..ArchiveSummary::default()
        };
        let Some(plan) = self.recovery_plan(listing, None) else {
            return Ok(s);
        };
        let size = self.identity.segment_size;
        let point = |i: usize, segno: SegmentNo| {
            let step = &plan.path[i];
            let lsn = size.segment_start(segno).unwrap_or(Lsn(0)).max(plan.start);
            // A segment holding a switch point starts with its parent timeline's WAL.
            let timeline = if lsn < step.begin && i > 0 {
                plan.path[i - 1].timeline
            } else {
                step.timeline
            };
            WalPosition { timeline, lsn }
        };
        let mut run_start: Option<WalPosition> = None;
        let mut first_present: Option<WalPosition> = None;
        let mut in_gap = false;
        for &(i, segno) in &plan.wanted {
            if stored(listing, plan.path[i].timeline, segno) {
                let p = point(i, segno);
                first_present.get_or_insert(p);
                run_start.get_or_insert(p);
                in_gap = false;
            } else {
                if !in_gap {
                    s.gaps += 1;
                }
                in_gap = true;
                run_start = None;
            }
        }
        s.oldest = first_present;
        let newest = newest_point(&plan);
        s.recoverable = match (run_start, plan.wanted.is_empty()) {
            (Some(from), _) => Some((from, newest)),
            // The newest WAL ends exactly on a segment boundary with nothing after it: the
            // archive is the path's segments, all present or not, and nothing more to read.
            (None, true) => Some((newest, newest)),
            (None, false) => None,
        };
        Ok(s)
    }
}

fn newest_point(plan: &RecoveryPlan) -> WalPosition {
    WalPosition {
        timeline: plan.path.last().map_or(TimelineId::FIRST, |s| s.timeline),
        lsn: plan.newest_end,
    }
}

/// Whether segment `segno` of `timeline` is stored, complete or in progress.
fn stored(listing: &ArchiveListing, timeline: TimelineId, segno: SegmentNo) -> bool {
    listing
        .timelines
        .iter()
        .find(|t| t.timeline == timeline)
        .is_some_and(|t| {
            t.segments
                .iter()
                .any(|r| r.first <= segno && segno <= r.last)
                || t.partials.iter().any(|p| p.segno == segno)
        })
}

/// The total size of the regular files in `dir` (not recursive: an archive is flat).
fn directory_bytes(dir: &std::path::Path) -> Result<u64, WalArchiveError> {
    let read = |e| WalArchiveError::io(FsAction::ReadDirectory, dir, e);
    let mut total = 0;
    for entry in std::fs::read_dir(dir).map_err(read)? {
        let entry = entry.map_err(read)?;
        match entry.metadata() {
            Ok(m) if m.is_file() => total += m.len(),
            Ok(_) => {}
            // Removed since the listing (a journal finishing): not part of the archive now.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(WalArchiveError::io(FsAction::Stat, &entry.path(), e)),
        }
    }
    Ok(total)
}
