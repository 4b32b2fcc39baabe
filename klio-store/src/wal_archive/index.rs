//! An in-memory index of an archive, so that a server's restores, position queries and
//! status pages cost the same with a million segments as with ten.
//!
//! # Contract
//!
//! [`ArchiveIndexes`] holds one [`ArchiveIndex`] per archive directory of a process. An index
//! is built once, by the first question that needs it ([`ArchiveIndex::durable`],
//! [`ArchiveIndex::listing`], [`ArchiveIndex::summary`]): one listing of the directory, one
//! stat per file and one scan per journal in progress, like [`WalArchiveReader::open`];
//! questions asked meanwhile wait for that one build. Nothing is persisted, so opening the
//! indexes costs nothing per cluster: a server listens at once and builds its clusters'
//! indexes in the background, one after the other (`klio-server`'s `Server::run`). After that the index is kept true by the process that changes the directory: a
//! [`WalArchive`](super::WalArchive) opened with the indexes in its
//! [`StorageOptions`](super::StorageOptions) reports the journals it creates, the durable end
//! of each sync, each segment complete in its journal, the final file its finisher thread
//! publishes for it, and the history files it stores; a
//! [`WalPruner`](super::WalPruner) given the index ([`WalPruner::with_index`]) reports what it
//! removes. Changes made while an index is being built are queued and applied on top of the
//! listing (every change is idempotent: "this file exists / is gone"), so none is lost. A
//! writer whose crash recovery finished or removed journals drops the index, which the next
//! question builds again. This holds as long as the process is the only one changing the
//! directory (a server holds its data directory's lock; its one writer per cluster holds the
//! cluster's lease); files changed behind its back are seen once it restarts.
//!
//! # Reads
//!
//! [`ArchiveIndex::read_file`] never waits for a build: it asks the index (when built) which
//! file holds the name and opens that one first, and on a miss, or when that file is gone (a
//! prune, a journal finished meanwhile), opens the other names the archive may hold it under
//! ([`stored_files`](super::stored_files)), exactly like [`WalArchiveReader::read_file`]. A
//! file is therefore answered "not in the archive" only after every name it could have on
//! disk was looked for: an index that is behind never ends a recovery early. Every format
//! check of the reader applies; the index is never a source of bytes.
//!
//! # Cost
//!
//! Measured with `klio-bench archive-scale` (release build, 2 busy cores), 10,000 and
//! 1,000,000 plain 1 MiB segments side by side; `tests/archive_scale.rs` checks the bounds
//! in brackets with 1,000,000 segments behind a debug build of the server:
//!
//! - server start: 0.10 s at both sizes [< 10 s].
//! - `read_file` (`GetFile`): at most three opens and the file's own read, no listing:
//!   p50 5.2 ms and 7.5 ms, p99 32 ms and 28 ms [median < 100 ms, each < 500 ms]. Before the
//!   index every request opened a reader that lists the archive: 40 ms and 7.0 s.
//! - `durable` (`GetPosition`): a lookup once built, from the newest segment of each
//!   timeline and the ends the writer reported for its journals, no journal rescan: 0.05 ms
//!   at both sizes [< 50 ms].
//! - the build: one readdir and one stat per file, 51 ms and 5.4 s [< 30 s]; it runs on a
//!   blocking thread of its own, never on a request's path except a `GetPosition` or a
//!   status page that comes before it ends.
//! - `summary` and `listing`: in memory, proportional to the runs of consecutive segments
//!   (not to the segments), plus one stat per journal in progress for the bytes.
//! - memory: the segments are held as runs of consecutive numbers, a few words per run.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use klio_crypto::Keyring;
use klio_wal::{Lsn, SegmentNo, SegmentSize, TimelineId, WalFileName, WalPosition};

use super::read::{ArchiveListing, ArchivedFile, PartialSegment, SegmentRange, TimelineListing};
use super::recover::{self, Measured, Survey};
use super::summary::ArchiveSummary;
use super::{WalArchiveError, WalArchiveReader, identity, journal, sealed};

/// The indexes of the archives of one process, by directory (see the
/// [module documentation](self)). Cloning shares them.
#[derive(Clone, Debug, Default)]
pub struct ArchiveIndexes {
    keyring: Option<Keyring>,
    by_dir: Arc<Mutex<HashMap<PathBuf, Arc<ArchiveIndex>>>>,
}

impl ArchiveIndexes {
    /// No index yet; archives holding encrypted files are read with `keyring`.
    pub fn new(keyring: Option<Keyring>) -> Self {
        Self {
            keyring,
            by_dir: Arc::default(),
        }
    }

    /// The index of the archive in `dir` (created unbuilt on first use). Directories are
    /// compared as given: name each archive by one path.
    pub fn of(&self, dir: &Path) -> Arc<ArchiveIndex> {
        lock(&self.by_dir)
            .entry(dir.to_owned())
            .or_insert_with(|| {
                Arc::new(ArchiveIndex {
                    dir: dir.to_owned(),
                    keyring: self.keyring.clone(),
                    reader: OnceLock::new(),
                    build: Mutex::new(()),
                    state: Mutex::new(State::Unbuilt),
                })
            })
            .clone()
    }
}

/// The index of one archive (see the [module documentation](self)).
#[derive(Debug)]
pub struct ArchiveIndex {
    dir: PathBuf,
    keyring: Option<Keyring>,
    /// A reader for single files, made once the identity file exists (it never changes).
    reader: OnceLock<WalArchiveReader>,
    /// Held while the index is built: one build at a time, and questions wait for it.
    build: Mutex<()>,
    state: Mutex<State>,
}

#[derive(Debug)]
enum State {
    /// Not built, or dropped: changes are not recorded (a build will see them on disk).
    Unbuilt,
    /// The directory is being listed: changes are queued, applied on top of the listing.
    Building {
        pending: Vec<Change>,
    },
    Built(Box<Entries>),
}

/// A change to the directory, reported by the writer or the pruner after it happened.
#[derive(Clone, Copy, Debug)]
pub(super) enum Change {
    /// The journal of `segno` exists; its WAL is durable up to `end` (`None`: no WAL yet).
    Journal {
        timeline: TimelineId,
        segno: SegmentNo,
        end: Option<Lsn>,
    },
    /// The final file of `segno` exists (`bytes` long); its journal is gone.
    Final {
        timeline: TimelineId,
        segno: SegmentNo,
        sealed: bool,
        bytes: u64,
    },
    /// The final files of `segno` (`bytes` in all) were removed.
    Removed {
        timeline: TimelineId,
        segno: SegmentNo,
        bytes: u64,
    },
    /// The history file of `timeline` exists (`bytes` long).
    History { timeline: TimelineId, bytes: u64 },
    /// The history file of `timeline` was removed.
    HistoryRemoved { timeline: TimelineId },
    /// The index cannot follow what happened: build it again when next asked.
    Rebuild,
}

/// Which file holds a segment, as the index knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Holder {
    Sealed,
    Plain,
    Journal,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the state whole (a panic inside one is a bug elsewhere,
    // and the worst a poisoned index can be is behind, which reads tolerate).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ArchiveIndex {
    /// The archive directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The reader for single files (no listing), once the archive has its identity file.
    pub fn reader(&self) -> Result<&WalArchiveReader, WalArchiveError> {
        if let Some(r) = self.reader.get() {
            return Ok(r);
        }
        let identity = identity::read_required(&self.dir)?;
        Ok(self.reader.get_or_init(|| WalArchiveReader {
            dir: self.dir.clone(),
            identity,
            keyring: self.keyring.clone(),
            durable: BTreeMap::new(),
        }))
    }

    /// Reads one archived file by PostgreSQL name, like [`WalArchiveReader::read_file`],
    /// opening first the file the index says holds it (see the [module documentation](self)).
    /// `Err(NotAnArchive)` when the directory is not an archive (yet).
    pub fn read_file(&self, name: &WalFileName) -> Result<Option<ArchivedFile>, WalArchiveError> {
        let reader = self.reader()?;
        let holder = match *name {
            WalFileName::Segment { timeline, segno } => match &*lock(&self.state) {
                State::Built(e) => e.holder(timeline, segno),
                _ => None,
            },
            _ => None,
        };
        reader.read_file_preferring(name, holder)
    }

    /// The newest timeline that has WAL and the durable end on it (building the index on
    /// first use).
    pub fn durable(&self) -> Result<Option<WalPosition>, WalArchiveError> {
        let size = self.reader()?.identity.segment_size;
        self.with_entries(|e| {
            e.durable_ends(size)
                .last_key_value()
                .map(|(&t, &l)| WalPosition::new(t, l))
        })
    }

    /// The durable end on `timeline`, if it has WAL (building the index on first use).
    pub fn durable_on(&self, timeline: TimelineId) -> Result<Option<Lsn>, WalArchiveError> {
        let size = self.reader()?.identity.segment_size;
        self.with_entries(|e| e.durable_ends(size).get(&timeline).copied())
    }

    /// What the archive holds, as [`WalArchiveReader::list`] reports it, from the index.
    pub fn listing(&self) -> Result<ArchiveListing, WalArchiveError> {
        let size = self.reader()?.identity.segment_size;
        self.with_entries(|e| e.listing(size))
    }

    /// The archive's summary, as [`WalArchiveReader::summary`] reports it, from the index
    /// (the bytes: the files as the index knows them, and the journals as they are now).
    pub fn summary(&self) -> Result<ArchiveSummary, WalArchiveError> {
        let reader = self.reader()?;
        let size = reader.identity.segment_size;
        let (listing, known_bytes, journals) =
            self.with_entries(|e| (e.listing(size), e.bytes(), e.journal_names(size)))?;
        let mut bytes = known_bytes;
        for name in journals {
            bytes += recover::stored_len(&self.dir.join(name))?;
        }
        reader.summarize(&listing, bytes)
    }

    /// Records a change the writer or the pruner made (see the [module documentation](self)).
    pub(super) fn note(&self, change: Change) {
        let mut state = lock(&self.state);
        match &mut *state {
            State::Unbuilt => {}
            State::Building { pending } => pending.push(change),
            State::Built(entries) => {
                if !entries.apply(change) {
                    *state = State::Unbuilt;
                }
            }
        }
    }

    /// Runs `f` on the built index, building it first if needed.
    fn with_entries<T>(&self, f: impl Fn(&Entries) -> T) -> Result<T, WalArchiveError> {
        loop {
            if let State::Built(e) = &*lock(&self.state) {
                return Ok(f(e));
            }
            self.build()?;
        }
    }

    /// Lists the directory into a new index, unless one is built already; changes reported
    /// meanwhile are applied on top.
    fn build(&self) -> Result<(), WalArchiveError> {
        let _one_build = lock(&self.build);
        if matches!(*lock(&self.state), State::Built(_)) {
            return Ok(());
        }
        let reader = self.reader()?;
        *lock(&self.state) = State::Building {
            pending: Vec::new(),
        };
        // Listed and turned into runs without the state's lock: the writer's reports are
        // queued meanwhile, never held up by the build.
        let listed = recover::survey_measured(&self.dir, &reader.ctx())
            .map(|(survey, measured)| Entries::of(&survey, measured));
        let mut state = lock(&self.state);
        let pending = match std::mem::replace(&mut *state, State::Unbuilt) {
            State::Building { pending } => pending,
            _ => Vec::new(),
        };
        let mut entries = listed?;
        if pending.into_iter().all(|c| entries.apply(c)) {
            *state = State::Built(Box::new(entries));
        }
        Ok(())
    }
}

/// Runs of consecutive segment numbers, `first -> last` (inclusive).
#[derive(Debug, Default)]
pub(super) struct Runs(pub(super) BTreeMap<u64, u64>);

impl Runs {
    pub(super) fn contains(&self, s: u64) -> bool {
        self.0.range(..=s).next_back().is_some_and(|(_, &l)| s <= l)
    }

    /// Adds `s`; false if it was there.
    pub(super) fn insert(&mut self, s: u64) -> bool {
        if self.contains(s) {
            return false;
        }
        let mut first = s;
        let mut last = s;
        if let Some((&f, &l)) = self.0.range(..s).next_back()
            && l.checked_add(1) == Some(s)
        {
            first = f;
        }
        if let Some(next) = s.checked_add(1)
            && let Some(l) = self.0.remove(&next)
        {
            last = l;
        }
        self.0.insert(first, last);
        true
    }

    /// Removes `s`; false if it was not there.
    pub(super) fn remove(&mut self, s: u64) -> bool {
        let Some((&f, &l)) = self.0.range(..=s).next_back() else {
            return false;
        };
        if s > l {
            return false;
        }
        self.0.remove(&f);
        if f < s {
            self.0.insert(f, s - 1);
        }
        if s < l {
            self.0.insert(s + 1, l);
        }
        true
    }

    pub(super) fn last(&self) -> Option<u64> {
        self.0.last_key_value().map(|(_, &l)| l)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What the index holds of one timeline.
#[derive(Debug, Default)]
struct TimelineFiles {
    sealed: Runs,
    plain: Runs,
    /// Bytes of the final files.
    final_bytes: u64,
    /// Journals and the durable end of their WAL (`None`: none yet).
    journals: BTreeMap<SegmentNo, Option<Lsn>>,
}

impl TimelineFiles {
    fn has_final(&self, segno: SegmentNo) -> bool {
        self.sealed.contains(segno.0) || self.plain.contains(segno.0)
    }

    fn is_empty(&self) -> bool {
        self.sealed.is_empty() && self.plain.is_empty() && self.journals.is_empty()
    }
}

/// The built index.
#[derive(Debug, Default)]
struct Entries {
    timelines: BTreeMap<TimelineId, TimelineFiles>,
    /// Stored history files and their bytes.
    histories: BTreeMap<TimelineId, u64>,
    /// Bytes of the other files found by the build (the identity, temporary files).
    other_bytes: u64,
}

impl Entries {
    fn of(survey: &Survey, measured: Measured) -> Self {
        let mut e = Self {
            other_bytes: measured.other,
            ..Self::default()
        };
        for &(timeline, segno) in &survey.segments {
            let t = e.timelines.entry(timeline).or_default();
            if survey.sealed.contains(&(timeline, segno)) {
                t.sealed.insert(segno.0);
            } else {
                t.plain.insert(segno.0);
            }
        }
        for (&(timeline, segno), j) in &survey.journals {
            let end = (!j.scan.frames.is_empty()).then_some(j.scan.end);
            e.timelines
                .entry(timeline)
                .or_default()
                .journals
                .insert(segno, end);
        }
        for (timeline, bytes) in measured.finals {
            e.timelines.entry(timeline).or_default().final_bytes += bytes;
        }
        for &timeline in &survey.histories {
            let bytes = measured.histories.get(&timeline).copied().unwrap_or(0);
            e.histories.insert(timeline, bytes);
        }
        e
    }

    /// Applies a change; false when the index must be built again.
    fn apply(&mut self, change: Change) -> bool {
        match change {
            Change::Journal {
                timeline,
                segno,
                end,
            } => {
                let t = self.timelines.entry(timeline).or_default();
                if !t.has_final(segno) {
                    let known = t.journals.entry(segno).or_default();
                    // A journal only grows: keep the newer end whatever the order of reports.
                    *known = (*known).max(end);
                }
            }
            Change::Final {
                timeline,
                segno,
                sealed,
                bytes,
            } => {
                let t = self.timelines.entry(timeline).or_default();
                t.journals.remove(&segno);
                if !t.has_final(segno) {
                    if sealed {
                        t.sealed.insert(segno.0);
                    } else {
                        t.plain.insert(segno.0);
                    }
                    t.final_bytes += bytes;
                }
            }
            Change::Removed {
                timeline,
                segno,
                bytes,
            } => {
                if let Some(t) = self.timelines.get_mut(&timeline) {
                    let sealed = t.sealed.remove(segno.0);
                    let plain = t.plain.remove(segno.0);
                    if sealed || plain {
                        t.final_bytes = t.final_bytes.saturating_sub(bytes);
                    }
                    if t.is_empty() {
                        self.timelines.remove(&timeline);
                    }
                }
            }
            Change::History { timeline, bytes } => {
                self.histories.entry(timeline).or_insert(bytes);
            }
            Change::HistoryRemoved { timeline } => {
                self.histories.remove(&timeline);
            }
            Change::Rebuild => return false,
        }
        true
    }

    fn holder(&self, timeline: TimelineId, segno: SegmentNo) -> Option<Holder> {
        let t = self.timelines.get(&timeline)?;
        if t.sealed.contains(segno.0) {
            Some(Holder::Sealed)
        } else if t.plain.contains(segno.0) {
            Some(Holder::Plain)
        } else if t.journals.contains_key(&segno) {
            Some(Holder::Journal)
        } else {
            None
        }
    }

    fn durable_ends(&self, size: SegmentSize) -> BTreeMap<TimelineId, Lsn> {
        let mut ends = BTreeMap::new();
        for (&timeline, t) in &self.timelines {
            let newest_final = t
                .sealed
                .last()
                .max(t.plain.last())
                .and_then(|s| recover::segment_end(size, SegmentNo(s)));
            let newest_journal = t.journals.values().flatten().max().copied();
            if let Some(end) = newest_final.max(newest_journal) {
                ends.insert(timeline, end);
            }
        }
        ends
    }

    fn listing(&self, size: SegmentSize) -> ArchiveListing {
        let ends = self.durable_ends(size);
        let mut timelines = Vec::new();
        for (&timeline, &durable_end) in &ends {
            let Some(t) = self.timelines.get(&timeline) else {
                continue;
            };
            let complete_journals = t
                .journals
                .iter()
                .filter(|(s, end)| is_complete(size, **s, **end))
                .map(|(s, _)| (s.0, s.0));
            let mut runs: Vec<(u64, u64)> = t
                .sealed
                .0
                .iter()
                .chain(&t.plain.0)
                .map(|(&f, &l)| (f, l))
                .chain(complete_journals)
                .collect();
            runs.sort_unstable();
            let mut segments: Vec<SegmentRange> = Vec::new();
            for (first, last) in runs {
                match segments.last_mut() {
                    Some(r) if r.last.0.checked_add(1) >= Some(first) => {
                        r.last = SegmentNo(r.last.0.max(last));
                    }
                    _ => segments.push(SegmentRange {
                        first: SegmentNo(first),
                        last: SegmentNo(last),
                    }),
                }
            }
            let partials = t
                .journals
                .iter()
                .filter_map(|(&segno, &end)| {
                    let end = end?;
                    (!is_complete(size, segno, Some(end))).then_some(PartialSegment { segno, end })
                })
                .collect();
            timelines.push(TimelineListing {
                timeline,
                segments,
                partials,
                durable_end,
            });
        }
        ArchiveListing {
            timelines,
            histories: self.histories.keys().copied().collect(),
        }
    }

    fn bytes(&self) -> u64 {
        self.other_bytes
            + self.histories.values().sum::<u64>()
            + self.timelines.values().map(|t| t.final_bytes).sum::<u64>()
    }

    fn journal_names(&self, size: SegmentSize) -> Vec<String> {
        self.timelines
            .iter()
            .flat_map(|(&timeline, t)| {
                t.journals
                    .keys()
                    .map(move |&segno| journal::journal_name(timeline, segno, size))
            })
            .collect()
    }
}

/// What `survey` found, as [`WalArchiveReader::list`] reports it (the same rules as the
/// index's listing: complete journals count as segments, journals without WAL not at all).
pub(super) fn listing_of(survey: &Survey, size: SegmentSize) -> ArchiveListing {
    Entries::of(survey, Measured::default()).listing(size)
}

/// Whether a journal ending at `end` holds the whole segment `segno`.
fn is_complete(size: SegmentSize, segno: SegmentNo, end: Option<Lsn>) -> bool {
    end.is_some() && end == recover::segment_end(size, segno)
}

/// The change a finished segment makes: its final file (sealed with a keyring) and its size.
pub(super) fn finished(
    dir: &Path,
    timeline: TimelineId,
    segno: SegmentNo,
    size: SegmentSize,
    sealed: bool,
) -> Change {
    let name = if sealed {
        sealed::sealed_name(timeline, segno, size)
    } else {
        WalFileName::Segment { timeline, segno }.to_string_with(size)
    };
    match recover::stored_len(&dir.join(name)) {
        Ok(bytes) => Change::Final {
            timeline,
            segno,
            sealed,
            bytes,
        },
        // Its size unknown, the index cannot stay exact: build it again when next asked.
        Err(_) => Change::Rebuild,
    }
}
