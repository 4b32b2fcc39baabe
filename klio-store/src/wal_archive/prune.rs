//! The pruner: the archive's third role, beside the writer and the readers. It removes what
//! retention no longer needs, as a [`WalPlan`](crate::retention::WalPlan) says: completed
//! segments (plain `<segment>` or sealed `<segment>.klio`) and history files (plain or sealed),
//! never a journal, a partial segment, a temporary file or the identity.
//!
//! # Alongside the writer
//!
//! The writer never reopens a completed segment (it only ever appends to journals and
//! finishes them into new final names) and never rewrites a stored history file, so removing
//! those files cannot disturb a stream in progress. A segment the plan names that is still a
//! journal (whole, not yet finished) is not removed: only final files are. Readers opened
//! before a prune may find a file gone; they report it like any missing segment. The server
//! serializes prunes of a cluster, so two pruners never work on one archive.
//!
//! # Durability
//!
//! Removals go oldest first (timelines ascending, segments ascending, a timeline's history
//! after its segments), and one directory fsync follows the last of them: the removals must
//! be durable before retention reports them. A crash before that fsync may leave any part of
//! the plan done (the file system need not keep the order of unlinks it has not synced): at
//! worst a hole among segments that no retained backup needs, which the next run, planning
//! again from what is left, removes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use klio_wal::{FsAction, SegmentNo, SegmentSize, TimelineId, WalFileName, durable};

use super::index::{ArchiveIndex, Change};
use super::{WalArchiveError, identity, sealed};
use crate::retention::{TimelinePlan, WalPlan};

/// Removes what retention no longer needs: completed segments and history files only (never a
/// journal, a partial or the identity). Runs alongside the writer: the writer never reopens a
/// completed segment. The server serializes prunes of a cluster. See the
/// `prune` module's documentation.
#[derive(Debug)]
pub struct WalPruner {
    dir: PathBuf,
    size: SegmentSize,
    /// Told of every file removed.
    index: Option<Arc<ArchiveIndex>>,
}

/// What [`WalPruner::apply`] removed (or [`WalPruner::measure`] would remove).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrunedWal {
    /// One per timeline of the plan, ascending.
    pub timelines: Vec<PrunedTimeline>,
}

/// What was removed of one timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrunedTimeline {
    /// The timeline.
    pub timeline: TimelineId,
    /// The oldest segment removed.
    pub first: Option<WalFileName>,
    /// The newest segment removed.
    pub last: Option<WalFileName>,
    /// Segments removed.
    pub segments: u64,
    /// Stored bytes of the segments removed (sealed files: compressed, as on disk).
    pub bytes: u64,
    /// Whether the timeline's history file was removed.
    pub history_removed: bool,
}

impl PrunedWal {
    /// Segments removed on all timelines.
    pub fn segments(&self) -> u64 {
        self.timelines.iter().map(|t| t.segments).sum()
    }

    /// Stored bytes of the segments removed on all timelines.
    pub fn bytes(&self) -> u64 {
        self.timelines.iter().map(|t| t.bytes).sum()
    }
}

/// A file the plan removes, with its stored size.
struct Doomed {
    path: PathBuf,
    bytes: u64,
}

impl WalPruner {
    /// A pruner of the archive in `dir`, which must be one (it has an identity file).
    pub fn open(dir: &Path) -> Result<Self, WalArchiveError> {
        let identity = identity::read_required(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
            size: identity.segment_size,
            index: None,
        })
    }

    /// Tells `index` (the archive's, see [`ArchiveIndexes`](super::ArchiveIndexes)) of every
    /// file this pruner removes, so that it stays true.
    pub fn with_index(mut self, index: Arc<ArchiveIndex>) -> Self {
        self.index = Some(index);
        self
    }

    fn note(&self, change: Change) {
        if let Some(index) = &self.index {
            index.note(change);
        }
    }

    /// Stored bytes of segment `segno` of `timeline` (plain or sealed `.klio` name), if present.
    pub fn segment_bytes(
        &self,
        timeline: TimelineId,
        segno: SegmentNo,
        size: SegmentSize,
    ) -> Result<Option<u64>, WalArchiveError> {
        self.check_size(size)?;
        let files = self.segment_files(timeline, segno)?;
        Ok((!files.is_empty()).then(|| files.iter().map(|f| f.bytes).sum()))
    }

    /// Removes the plan's segments and history files, oldest first; one directory fsync at
    /// the end. What it removed.
    pub fn apply(&self, plan: &WalPlan, size: SegmentSize) -> Result<PrunedWal, WalArchiveError> {
        self.run(plan, size, true)
    }

    /// What [`WalPruner::apply`] would remove, without removing (for `--dry-run`), same shape.
    pub fn measure(&self, plan: &WalPlan, size: SegmentSize) -> Result<PrunedWal, WalArchiveError> {
        self.run(plan, size, false)
    }

    fn run(
        &self,
        plan: &WalPlan,
        size: SegmentSize,
        remove: bool,
    ) -> Result<PrunedWal, WalArchiveError> {
        self.check_size(size)?;
        let mut out = PrunedWal::default();
        let mut removed_any = false;
        let mut timelines: Vec<&TimelinePlan> = plan.timelines.iter().collect();
        timelines.sort_by_key(|t| t.timeline);
        for t in timelines {
            let mut pruned = PrunedTimeline {
                timeline: t.timeline,
                first: None,
                last: None,
                segments: 0,
                bytes: 0,
                history_removed: false,
            };
            let mut runs = t.remove.clone();
            runs.sort_by_key(|r| r.first);
            for r in &runs {
                for segno in (r.first.0..=r.last.0).map(SegmentNo) {
                    let files = self.segment_files(t.timeline, segno)?;
                    if files.is_empty() {
                        // Already gone, or still a journal: nothing to remove.
                        continue;
                    }
                    for f in &files {
                        if remove {
                            remove_file(&f.path)?;
                            removed_any = true;
                        }
                        pruned.bytes += f.bytes;
                    }
                    if remove {
                        self.note(Change::Removed {
                            timeline: t.timeline,
                            segno,
                            bytes: files.iter().map(|f| f.bytes).sum(),
                        });
                    }
                    let name = WalFileName::Segment {
                        timeline: t.timeline,
                        segno,
                    };
                    pruned.first.get_or_insert(name);
                    pruned.last = Some(name);
                    pruned.segments += 1;
                }
            }
            if t.remove_history {
                let files = self.history_files(t.timeline)?;
                for f in &files {
                    if remove {
                        remove_file(&f.path)?;
                        removed_any = true;
                    }
                }
                pruned.history_removed = !files.is_empty();
                if remove && pruned.history_removed {
                    self.note(Change::HistoryRemoved {
                        timeline: t.timeline,
                    });
                }
            }
            out.timelines.push(pruned);
        }
        if removed_any {
            // The removals must be durable before retention reports them.
            durable::sync_dir(&self.dir)?;
        }
        Ok(out)
    }

    /// A segment size other than the archive's is a caller's mistake: names would not match.
    fn check_size(&self, size: SegmentSize) -> Result<(), WalArchiveError> {
        if size != self.size {
            return Err(WalArchiveError::SegmentSizeMismatch {
                dir: self.dir.clone(),
                recorded: self.size,
                offered: size,
            });
        }
        Ok(())
    }

    /// The stored files of a completed segment: its plain and its sealed name, whichever exist.
    fn segment_files(
        &self,
        timeline: TimelineId,
        segno: SegmentNo,
    ) -> Result<Vec<Doomed>, WalArchiveError> {
        let plain = WalFileName::Segment { timeline, segno }.to_string_with(self.size);
        let sealed = sealed::sealed_name(timeline, segno, self.size);
        self.existing([plain, sealed])
    }

    /// The stored history file of `timeline`: plain or sealed, whichever exist.
    fn history_files(&self, timeline: TimelineId) -> Result<Vec<Doomed>, WalArchiveError> {
        let plain = WalFileName::History { timeline }.to_string_with(self.size);
        let sealed = sealed::sealed_history_name(timeline, self.size);
        self.existing([plain, sealed])
    }

    fn existing(&self, names: [String; 2]) -> Result<Vec<Doomed>, WalArchiveError> {
        let mut out = Vec::new();
        for name in names {
            let path = self.dir.join(name);
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.is_file() => out.push(Doomed {
                    path,
                    bytes: m.len(),
                }),
                // Not a file the archive wrote: left alone.
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(WalArchiveError::io(FsAction::Stat, &path, e)),
            }
        }
        Ok(out)
    }
}

fn remove_file(path: &Path) -> Result<(), WalArchiveError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        // Gone since it was looked at: what the plan wanted.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(WalArchiveError::io(FsAction::Remove, path, e)),
    }
}
