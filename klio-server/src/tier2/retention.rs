//! Tier 2's retention: its own policy (`tier2.retention`, typically longer than Tier 1's),
//! with Tier 1's rules, run by the primary (read-write) server right after Tier 1's run of the
//! same cluster, under the same lock. A read-only server never runs it.
//!
//! # What goes, in order
//!
//! 1. **Backups**: [`retention::decide`] over the backups Tier 2's catalog lists (one LIST of
//!    `backups/catalog/`; entries and pin markers fetched into the cache and read with the
//!    store's checks). A removed backup's `entry.json` goes first, so it stops being a backup
//!    of Tier 2 at once (the relay puts it last for the same reason); then its file list,
//!    manifest and pin marker.
//! 2. **WAL**: [`retention::plan_listing`] over Tier 2's WAL objects (one LIST of `wal/`) with
//!    the starts of the backups Tier 2 keeps, by LSN and timeline through the history files
//!    (fetched and read with their checks): completed segments only, never a journal.
//! 3. **Packs**: a pack leaves Tier 2 only when Tier 1 no longer has it (Tier 1's reclaim
//!    judged it dead, against running backups and its grace period: a pack of a backup still
//!    running or not yet relayed is on Tier 1) and no block of it is referenced by a backup
//!    Tier 2 keeps. Its index goes first, so no index built afterwards points into it; a
//!    pack Tier 1 rewrote left its live blocks in a new pack, which the relay uploads before
//!    any backup that needs it.
//!
//! # Object Lock
//!
//! Every removal is a purge of every version of the object ([`klio_tier2::ObjectStore::purge`]),
//! so that a versioned bucket frees the space. A version still under Object Lock is refused
//! by S3: the object stays, the run goes on, and the report counts it (a backup whose entry is
//! locked is kept, `RetainedBecause::ObjectLock`). The next run tries again.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use klio_crypto::Keyring;
use klio_proto::klio::{
    BackupInfo, BackupVerdict, BlockHash, ClusterName, ReportPolicy, RetainedBecause,
    RetentionReport, Tier2RetentionReport, WalTimelineReport,
};
use klio_store::backup::{BackupId, BackupStore, BackupStoreError, FileListItem, PackId, read_idx};
use klio_store::retention::{self, RetentionPolicy, Verdict};
use klio_store::wal_archive::{
    ArchiveListing, IDENTITY_FILE, PartialSegment, SegmentRange, TimelineListing, WalArchiveError,
    WalArchiveReader, file_of_stored,
};
use klio_tier2::Tier2Error;
use klio_wal::{ByteSize, ErrorChain, Lsn, SegmentNo, TimelineId, WalFileName, WalPosition};

use super::fetch::{FetchError, Tier2Cache};
use super::{ServerMode, Tier2, layout};
use crate::retention::config::ClusterPolicy;
use crate::session::BackupEnv;

/// Tier 2's retention of a cluster could not finish; what it removed stays removed, and the
/// next run goes on from there.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum Tier2RetentionError {
    /// A listing or a removal failed.
    #[error("Tier 2 retention of cluster {cluster} could not list or remove objects")]
    Objects {
        /// The cluster.
        cluster: String,
        /// What the object store reported (it names the key).
        #[source]
        source: Box<Tier2Error>,
    },
    /// An object could not be fetched into the cache to be read.
    #[error("Tier 2 retention of cluster {cluster} could not read an object")]
    Fetch {
        /// The cluster.
        cluster: String,
        /// What failed.
        #[source]
        source: Box<FetchError>,
    },
    /// A fetched catalog file, file list or index failed its checks.
    #[error("Tier 2 retention of cluster {cluster} found a damaged backup object")]
    Backups {
        /// The cluster.
        cluster: String,
        /// What the store reported (it names the file).
        #[source]
        source: BackupStoreError,
    },
    /// Tier 2's WAL identity or a history file failed its checks.
    #[error("Tier 2 retention of cluster {cluster} could not read its WAL")]
    Wal {
        /// The cluster.
        cluster: String,
        /// What the archive reader reported.
        #[source]
        source: WalArchiveError,
    },
    /// The blocking part of the run did not finish.
    #[error("Tier 2 retention of cluster {cluster} stopped: the server is shutting down")]
    Stopped {
        /// The cluster.
        cluster: String,
    },
}

/// Adds Tier 2's run of the cluster of `env` to Tier 1's `report`, when the server is
/// read-write and has a `tier2.retention` policy. A failure of it leaves Tier 1's report as it
/// is, with a note saying what failed (and a warning in the log): Tier 1's removals stand.
pub(crate) async fn add_to(env: &BackupEnv, report: &mut RetentionReport, dry_run: bool) {
    let Some(backups) = &env.tier2 else {
        return;
    };
    let Some(policy) = backups.settings().retention else {
        return;
    };
    if env.mode != ServerMode::ReadWrite {
        return;
    }
    let _one_at_a_time = backups.retention_lock().lock().await;
    match backups
        .retention(policy, env.store.packs_dir(), dry_run)
        .run()
        .await
    {
        Ok(tier2) => report.tier2 = Some(tier2),
        Err(e) => {
            let text = ErrorChain(&e).to_string();
            tracing::warn!("{text}");
            report.notes.push(text);
        }
    }
}

/// One run of Tier 2's retention over one cluster.
pub(crate) struct Tier2Retention<'a> {
    pub(crate) tier2: &'a Tier2,
    pub(crate) cache: &'a Tier2Cache,
    pub(crate) cluster: &'a ClusterName,
    pub(crate) keyring: Option<Keyring>,
    /// Tier 1's `packs/` directory of the cluster.
    pub(crate) tier1_packs: PathBuf,
    pub(crate) policy: ClusterPolicy,
    pub(crate) dry_run: bool,
}

/// What a removal did.
enum Removal {
    Removed,
    Locked,
}

impl Tier2Retention<'_> {
    /// Runs it: see the module documentation for what goes.
    pub(crate) async fn run(self) -> Result<Tier2RetentionReport, Tier2RetentionError> {
        let now = SystemTime::now();
        let mut locked_objects = 0u64;
        let mut notes = Vec::new();

        // 1. Backups.
        let backups = self.backups().await?;
        let policy = RetentionPolicy {
            keep_backups: self.policy.keep_backups,
            recovery_window: self.policy.recovery_window,
            min_backups: self.policy.min_backups,
        };
        let verdicts = retention::decide(&backups, &policy, now);
        let mut report_backups = Vec::new();
        let mut kept = Vec::new();
        for (info, verdict) in backups.iter().zip(verdicts) {
            let mut fate = BackupVerdict {
                id: info.id.clone(),
                ended_at: info.ended_at.clone(),
                end: info.end,
                removed: !verdict.is_keep(),
                kept_because: match verdict {
                    Verdict::Remove => Vec::new(),
                    Verdict::Keep(reasons) => reasons,
                },
            };
            if fate.removed && !self.dry_run {
                match self.remove_backup(&info.id).await? {
                    Removal::Removed => {
                        tracing::info!("Tier 2 retention: backup {} removed", info.id);
                    }
                    Removal::Locked => {
                        locked_objects += 1;
                        fate.removed = false;
                        fate.kept_because = vec![RetainedBecause::ObjectLock];
                    }
                }
            }
            if !fate.removed {
                kept.push(info.clone());
            }
            report_backups.push(fate);
        }

        // 2. WAL.
        let (wal, locked) = self.prune_wal(&kept).await?;
        locked_objects += locked;

        // 3. Packs.
        let (packs_removed, pack_bytes_removed, locked) = self.remove_packs(&kept).await?;
        locked_objects += locked;

        if locked_objects > 0 {
            notes.push(format!(
                "{locked_objects} object(s) in Tier 2 are still under Object Lock retention and \
                 stay until it ends; the next run removes them"
            ));
        }
        Ok(Tier2RetentionReport {
            policy: ReportPolicy {
                keep_backups: self.policy.keep_backups,
                recovery_window: self
                    .policy
                    .recovery_window
                    .map(|w| humantime::format_duration(w).to_string()),
                min_backups: self.policy.min_backups,
            },
            backups: report_backups,
            wal,
            packs_removed,
            pack_bytes_removed,
            locked_objects,
            notes,
        })
    }

    fn objects_err(&self) -> impl Fn(Tier2Error) -> Tier2RetentionError + '_ {
        |source| Tier2RetentionError::Objects {
            cluster: self.cluster.to_string(),
            source: Box::new(source),
        }
    }

    fn fetch_err(&self) -> impl Fn(FetchError) -> Tier2RetentionError + '_ {
        |source| Tier2RetentionError::Fetch {
            cluster: self.cluster.to_string(),
            source: Box::new(source),
        }
    }

    fn backups_err(&self) -> impl Fn(BackupStoreError) -> Tier2RetentionError + '_ {
        |source| Tier2RetentionError::Backups {
            cluster: self.cluster.to_string(),
            source,
        }
    }

    fn wal_err(&self) -> impl Fn(WalArchiveError) -> Tier2RetentionError + '_ {
        |source| Tier2RetentionError::Wal {
            cluster: self.cluster.to_string(),
            source,
        }
    }

    /// Runs `work` on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, Tier2RetentionError> + Send + 'static,
    ) -> Result<T, Tier2RetentionError> {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|_| Tier2RetentionError::Stopped {
                cluster: self.cluster.to_string(),
            })?
    }

    /// The store over the cache's copy of the cluster's `backups/`.
    fn cached_store(&self) -> BackupStore {
        BackupStore::new(
            &self.cache.cluster_dir(self.cluster).join("backups"),
            self.keyring.clone(),
        )
    }

    /// Keys (relative to the cluster's `backups/`) and sizes under `backups/<prefix>`.
    async fn list_backup_objects(
        &self,
        prefix: &str,
    ) -> Result<BTreeMap<String, u64>, Tier2RetentionError> {
        let store_prefix = layout::backup_key(self.cluster, "");
        let keys = self
            .tier2
            .store
            .list(&layout::backup_key(self.cluster, prefix))
            .await
            .map_err(self.objects_err())?;
        Ok(keys
            .into_iter()
            .filter_map(|(k, size)| Some((k.strip_prefix(&store_prefix)?.to_owned(), size)))
            .collect())
    }

    /// Fetches `backups/<relative>` into the cache; `false` when Tier 2 has no such object.
    async fn fetch_backup_file(&self, relative: &str) -> Result<bool, Tier2RetentionError> {
        Ok(self
            .cache
            .fetch(self.cluster, &Path::new("backups").join(relative))
            .await
            .map_err(self.fetch_err())?
            .is_some())
    }

    /// Every backup Tier 2's catalog holds, read from the cache.
    async fn backups(&self) -> Result<Vec<BackupInfo>, Tier2RetentionError> {
        let names = self.list_backup_objects("catalog/").await?;
        let mut ids = Vec::new();
        for name in names.keys() {
            let Some(id) = BackupStore::entry_file_of(name) else {
                continue;
            };
            self.fetch_backup_file(name).await?;
            let pin = BackupStore::pin_file(&id);
            let cached_pin = self
                .cache
                .cluster_dir(self.cluster)
                .join("backups")
                .join(&pin);
            if names.contains_key(&pin) {
                self.fetch_backup_file(&pin).await?;
            } else {
                self.cache.forget(&cached_pin);
            }
            ids.push(id);
        }
        let store = self.cached_store();
        self.blocking(move || {
            Ok(ids
                .iter()
                .map(|id| store.entry(id))
                .collect::<Result<Vec<_>, _>>())
        })
        .await?
        .map_err(self.backups_err())
    }

    /// Purges every object of backup `id`, its entry first.
    async fn remove_backup(&self, id: &str) -> Result<Removal, Tier2RetentionError> {
        let id = BackupId::parse(id).map_err(self.backups_err())?;
        let files = BackupStore::backup_files(&id);
        // `backup_files` starts with the cluster's hash key, which every backup shares.
        let [_, entry, rest @ ..] = &files;
        if let Removal::Locked = self.purge(&layout::backup_key(self.cluster, entry)).await? {
            return Ok(Removal::Locked);
        }
        for file in rest.iter().chain([&BackupStore::pin_file(&id)]) {
            // The entry is gone: what is left of the backup is no backup, and a locked
            // remainder is only space, which the next run frees.
            let _ = self.purge(&layout::backup_key(self.cluster, file)).await?;
        }
        Ok(Removal::Removed)
    }

    /// Purges one object; a version under Object Lock is [`Removal::Locked`].
    async fn purge(&self, key: &str) -> Result<Removal, Tier2RetentionError> {
        match self.tier2.store.purge(key).await {
            Ok(()) => Ok(Removal::Removed),
            Err(Tier2Error::AccessDenied { .. }) if self.tier2.settings.object_lock.is_some() => {
                tracing::info!("Tier 2 retention: {key} is under Object Lock; it stays for now");
                Ok(Removal::Locked)
            }
            Err(e) => Err(self.objects_err()(e)),
        }
    }

    /// Removes the WAL that the kept backups do not need; the reports, and the objects
    /// refused by Object Lock.
    async fn prune_wal(
        &self,
        kept: &[BackupInfo],
    ) -> Result<(Vec<WalTimelineReport>, u64), Tier2RetentionError> {
        let prefix = layout::wal_key(self.cluster, "");
        let objects: BTreeMap<String, u64> = self
            .tier2
            .store
            .list(&prefix)
            .await
            .map_err(self.objects_err())?
            .into_iter()
            .filter_map(|(k, size)| Some((k.strip_prefix(&prefix)?.to_owned(), size)))
            .collect();
        if !objects.contains_key(IDENTITY_FILE) {
            return Ok((Vec::new(), 0));
        }
        let wal = Path::new("wal");
        let Some(identity) = self
            .cache
            .fetch(self.cluster, &wal.join(IDENTITY_FILE))
            .await
            .map_err(self.fetch_err())?
        else {
            return Ok((Vec::new(), 0));
        };
        let wal_dir = identity
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| self.cache.cluster_dir(self.cluster).join("wal"));
        let reader = WalArchiveReader::open_for_file_reads(&wal_dir, self.keyring.clone())
            .map_err(self.wal_err())?;
        let size = reader.identity().segment_size;

        // Every object by what it stores.
        let mut segments: BTreeMap<(TimelineId, SegmentNo), Vec<&str>> = BTreeMap::new();
        let mut journals: BTreeMap<TimelineId, Vec<SegmentNo>> = BTreeMap::new();
        let mut histories: BTreeMap<TimelineId, Vec<&str>> = BTreeMap::new();
        for name in objects.keys() {
            match file_of_stored(name, size) {
                Some(WalFileName::Segment { timeline, segno })
                    if name.ends_with(".klio-journal") =>
                {
                    journals.entry(timeline).or_default().push(segno);
                }
                Some(WalFileName::Segment { timeline, segno }) => {
                    segments.entry((timeline, segno)).or_default().push(name);
                }
                Some(WalFileName::History { timeline }) => {
                    histories.entry(timeline).or_default().push(name);
                }
                _ => {}
            }
        }
        for names in histories.values() {
            for name in names {
                self.cache
                    .fetch(self.cluster, &wal.join(name))
                    .await
                    .map_err(self.fetch_err())?;
            }
        }
        let listing = listing_of(&segments, &journals, &histories);
        let starts: Vec<(String, WalPosition)> = kept
            .iter()
            .map(|b| (b.id.clone(), b.start.position()))
            .collect();
        let plan = self
            .blocking(move || {
                Ok(retention::plan_listing(
                    &listing,
                    size,
                    &|timeline| reader.history(timeline).ok().flatten(),
                    Some(starts.as_slice()),
                ))
            })
            .await?;

        let mut reports = Vec::new();
        let mut locked = 0;
        for t in &plan.timelines {
            let name = |segno| {
                WalFileName::Segment {
                    timeline: t.timeline,
                    segno,
                }
                .to_string_with(size)
            };
            let mut report = WalTimelineReport {
                timeline: t.timeline.get(),
                segments_removed: 0,
                bytes_removed: 0,
                first_removed: None,
                last_removed: None,
                kept_from: t.keep_from.map(name),
                kept_because: t.kept_because.clone(),
                history_removed: false,
            };
            for range in &t.remove {
                for segno in range.first.0..=range.last.0 {
                    let segno = SegmentNo(segno);
                    let Some(stored) = segments.get(&(t.timeline, segno)) else {
                        continue;
                    };
                    let mut all_gone = true;
                    for stored_name in stored {
                        if !self.dry_run
                            && let Removal::Locked =
                                self.purge(&format!("{prefix}{stored_name}")).await?
                        {
                            locked += 1;
                            all_gone = false;
                            continue;
                        }
                        report.bytes_removed += objects.get(*stored_name).copied().unwrap_or(0);
                    }
                    if all_gone {
                        report.segments_removed += 1;
                        report.first_removed.get_or_insert_with(|| name(segno));
                        report.last_removed = Some(name(segno));
                    }
                }
            }
            if t.remove_history {
                let mut gone = true;
                for stored_name in histories.get(&t.timeline).into_iter().flatten() {
                    if !self.dry_run
                        && let Removal::Locked =
                            self.purge(&format!("{prefix}{stored_name}")).await?
                    {
                        locked += 1;
                        gone = false;
                    }
                }
                report.history_removed = gone;
            }
            if !self.dry_run {
                crate::retention::log_wal_removed("Tier 2 retention", &report);
            }
            reports.push(report);
        }
        Ok((reports, locked))
    }

    /// Removes the packs Tier 1 no longer has and no kept backup refers to: how many, their
    /// bytes, and the objects refused by Object Lock.
    async fn remove_packs(
        &self,
        kept: &[BackupInfo],
    ) -> Result<(u64, u64, u64), Tier2RetentionError> {
        let objects = self.list_backup_objects("packs/").await?;
        let mut candidates: BTreeMap<String, (PackId, u64)> = BTreeMap::new();
        for (name, size) in &objects {
            let Some(stem) = name
                .strip_prefix("packs/")
                .and_then(|n| n.strip_suffix(".pack").or_else(|| n.strip_suffix(".idx")))
            else {
                continue;
            };
            let Some(id) = PackId::parse(stem) else {
                continue;
            };
            let on_tier1 = [
                id.pack_path(&self.tier1_packs),
                id.idx_path(&self.tier1_packs),
                id.dead_path(&self.tier1_packs),
            ]
            .iter()
            .any(|p| p.exists());
            if !on_tier1 {
                candidates.entry(stem.to_owned()).or_insert((id, 0)).1 += size;
            }
        }
        if candidates.is_empty() {
            return Ok((0, 0, 0));
        }

        // The blocks the kept backups refer to, from their file lists.
        let mut ids = Vec::new();
        for info in kept {
            let id = BackupId::parse(&info.id).map_err(self.backups_err())?;
            let [key, _, files, ..] = BackupStore::backup_files(&id);
            self.fetch_backup_file(&key).await?;
            self.fetch_backup_file(&files).await?;
            ids.push(id);
        }
        let idx_names: Vec<String> = candidates
            .keys()
            .map(|stem| format!("packs/{stem}.idx"))
            .filter(|name| objects.contains_key(name))
            .collect();
        for name in &idx_names {
            self.fetch_backup_file(name).await?;
        }
        let store = self.cached_store();
        let packs_dir = store.packs_dir();
        let ids_of_candidates: Vec<(String, PackId)> = candidates
            .iter()
            .map(|(stem, (id, _))| (stem.clone(), *id))
            .collect();
        let with_index: BTreeSet<String> = idx_names.into_iter().collect();
        let dead: Vec<String> = self
            .blocking(move || Ok(dead_packs(&store, &ids, ids_of_candidates, &with_index)))
            .await?
            .map_err(self.backups_err())?;

        let (mut removed, mut bytes, mut locked) = (0, 0, 0);
        for stem in dead {
            let Some(&(id, size)) = candidates.get(&stem) else {
                continue;
            };
            if self.dry_run {
                removed += 1;
                bytes += size;
                continue;
            }
            let idx_key = layout::backup_key(self.cluster, &format!("packs/{stem}.idx"));
            let pack_key = layout::backup_key(self.cluster, &format!("packs/{stem}.pack"));
            let gone = matches!(self.purge(&idx_key).await?, Removal::Removed)
                && matches!(self.purge(&pack_key).await?, Removal::Removed);
            self.cache.forget(&id.idx_path(&packs_dir));
            self.cache.forget(&id.pack_path(&packs_dir));
            if gone {
                removed += 1;
                bytes += size;
            } else {
                locked += 1;
            }
        }
        if removed > 0 && !self.dry_run {
            tracing::info!(
                "Tier 2 retention: {removed} pack(s) removed ({})",
                ByteSize(bytes)
            );
        }
        Ok((removed, bytes, locked))
    }
}

/// Of the `candidates` (stem, id), those no block of which the backups `ids` (in `store`)
/// refer to. A pack without its index in Tier 2 (`with_index` lacks it) has blocks nothing
/// can find: it is garbage whatever it holds.
fn dead_packs(
    store: &BackupStore,
    ids: &[BackupId],
    candidates: Vec<(String, PackId)>,
    with_index: &BTreeSet<String>,
) -> Result<Vec<String>, BackupStoreError> {
    let referenced = referenced_blocks(store, ids)?;
    let mut dead = Vec::new();
    for (stem, id) in candidates {
        let live = with_index.contains(&format!("packs/{stem}.idx"))
            && read_idx(&id.idx_path(&store.packs_dir()), id)?
                .iter()
                .any(|entry| referenced.contains(&entry.hash));
        if !live {
            dead.push(stem);
        }
    }
    Ok(dead)
}

/// The blocks the file lists of backups `ids` (in `store`) refer to.
fn referenced_blocks(
    store: &BackupStore,
    ids: &[BackupId],
) -> Result<HashSet<BlockHash>, BackupStoreError> {
    let mut referenced = HashSet::new();
    for id in ids {
        let mut list = store.file_list(id)?;
        while let Some(item) = list.next_item()? {
            // An entry carries its file's first blocks; more follow it.
            let hashes = match item {
                FileListItem::Entry(entry) => entry.blocks,
                FileListItem::Blocks(hashes) => hashes,
            };
            referenced.extend(hashes);
        }
    }
    Ok(referenced)
}

/// An archive listing of Tier 2's WAL objects.
fn listing_of(
    segments: &BTreeMap<(TimelineId, SegmentNo), Vec<&str>>,
    journals: &BTreeMap<TimelineId, Vec<SegmentNo>>,
    histories: &BTreeMap<TimelineId, Vec<&str>>,
) -> ArchiveListing {
    let timelines: BTreeSet<TimelineId> = segments
        .keys()
        .map(|(t, _)| *t)
        .chain(journals.keys().copied())
        .collect();
    ArchiveListing {
        timelines: timelines
            .into_iter()
            .map(|timeline| {
                let mut runs: Vec<SegmentRange> = Vec::new();
                for &(_, segno) in segments
                    .range((timeline, SegmentNo(0))..=(timeline, SegmentNo(u64::MAX)))
                    .map(|(k, _)| k)
                {
                    match runs.last_mut() {
                        Some(run) if run.last.0 + 1 == segno.0 => run.last = segno,
                        _ => runs.push(SegmentRange {
                            first: segno,
                            last: segno,
                        }),
                    }
                }
                TimelineListing {
                    timeline,
                    segments: runs,
                    partials: journals
                        .get(&timeline)
                        .into_iter()
                        .flatten()
                        .map(|&segno| PartialSegment { segno, end: Lsn(0) })
                        .collect(),
                    durable_end: Lsn(0),
                }
            })
            .collect(),
        histories: histories.keys().copied().collect(),
    }
}
