//! The relay: every cluster's sealed Tier 1 files, uploaded to Tier 2 as they appear.
//!
//! # The relay
//!
//! [`work`] runs while a read-write server with a `tier2` section runs. It watches
//! `<data_dir>/clusters/` (a new cluster directory is picked up within a second) and runs one
//! task per cluster: a loop of passes, woken when the cluster's WAL became durable (WAL ingest
//! notifies without waiting: a permit, never an await on Tier 2), when a backup completed
//! (`Retention::after_backup`, likewise without waiting) and at least every second,
//! at most four times a second. A pass uploads what the cluster's [frontier](super::frontier)
//! lacks, in this order:
//!
//! 1. WAL (`wal/`): `klio-archive.identity` once; history files; completed segments in
//!    (timeline, segment) order, as the raw bytes of the Tier 1 file (`<seg>.klio` sealed or
//!    `<seg>` plain). Backups: `block-hash-key` once; the `.pack` of every indexed pack not yet
//!    relayed. The catalog is listed *before* the packs, so every pack a listed backup needs
//!    is among them.
//! 2. The `.idx` of each pack whose `.pack` went up; the segment in progress as its journal
//!    cut after its last valid frame ([`klio_store::wal_archive::JournalSnapshot`]),
//!    overwriting the previous one, when its end advanced and at least
//!    `tier2.partial_interval` after the previous partial upload; for each listed backup not
//!    yet relayed whose packs are all up, `catalog/<id>/files`, `backup_manifest` and `pinned`
//!    if present; pins set or lifted on relayed backups (`pinned` uploaded or deleted).
//! 3. `catalog/<id>/entry.json` of each backup whose other files all went up: its presence is
//!    what makes the backup exist in Tier 2.
//!
//! Then the journal object of a segment whose completed file is now up is deleted, and the
//! frontier is written if it changed (also between chunks of step 1, at most four times a
//! second, so that a long backlog is recorded as it goes up). Immutable objects (everything but the journal and
//! `pinned`) go up create-only (`If-None-Match: *`): an object already there (a crash after
//! the upload, before the frontier was written) counts as uploaded only if its size and
//! CRC32C equal the local file's, else it is an integrity problem naming both, and is never
//! overwritten. With `tier2.object_lock`, every put carries its retention. Files are read on
//! blocking threads, `tier2.upload_concurrency` uploads in flight. The relay never lists the
//! bucket: the frontier is what it knows.
//!
//! # Failures
//!
//! The SDK retries each request (5 attempts, with backoff, on throttling, 5xx and transport
//! errors). Above it, a cluster whose pass had any failed upload waits before its next pass:
//! 1 s, doubling to 60 s, back to none after a pass without failures. A file that keeps
//! failing stays pending (it is planned again by every pass, never dropped) and is reported:
//! a warning per backoff step naming the file and the error chain, the
//! `klio_tier2_upload_errors_total{kind}` counter (the kind from the [`Tier2Error`] variant),
//! `klio_tier2_queue_depth`, and the last error in `/status`. A frontier that cannot be read
//! stops the relay of its cluster (reported in `/status` and the log) rather than re-deciding
//! what is up. Whatever Tier 2 does, WAL ingest and its acknowledgements never wait on it.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use klio_proto::klio::ClusterName;
use klio_store::backup::{DICTIONARY_FILE, HASH_KEY_FILE};
use klio_store::wal_archive::{ArchiveIndex, IDENTITY_FILE, JournalSnapshot, WalArchiveError};
use klio_tier2::{ObjectInfo, ObjectLock, Put, PutOptions, Tier2Error};
use klio_wal::{
    ErrorChain, FsAction, FsError, Lsn, SegmentNo, TimelineId, WalFileName, WalPosition,
};
use tokio::sync::{Semaphore, watch};

use super::Tier2;
use super::frontier::{Frontier, FrontierError, PartialUp, RelayedBackup, WalEnd, frontier_path};
use super::layout;
use crate::server::Shared;
use crate::telemetry::{ClusterTelemetry, RelayProgress};

/// How often a pass runs at least, and how often new clusters are looked for.
const TICK: Duration = Duration::from_secs(1);
/// Passes (and frontier writes) are at least this far apart.
const MIN_PASS_SPACING: Duration = Duration::from_millis(250);
/// The first outer backoff after a failed pass.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Phase-1 uploads per upload slot between two frontier writes.
const CHUNK_PER_SLOT: usize = 8;
/// The longest outer backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Runs the relay of every cluster until `stop` turns true.
pub(crate) async fn work(shared: Arc<Shared>, tier2: Arc<Tier2>, stop: watch::Receiver<bool>) {
    let uploads = Arc::new(Semaphore::new(tier2.settings.upload_concurrency.max(1)));
    let mut running: HashSet<ClusterName> = HashSet::new();
    let mut stopped = stop.clone();
    loop {
        for cluster in shared.clusters_on_disk() {
            if running.insert(cluster.clone()) {
                let relay = ClusterRelay::new(&shared, &tier2, &uploads, cluster);
                tokio::spawn(relay.run(stop.clone()));
            }
        }
        tokio::select! {
            _ = stopped.wait_for(|s| *s) => return,
            () = tokio::time::sleep(TICK) => {}
        }
    }
}

/// What an upload is, for metrics and for what the frontier records once it is confirmed.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Item {
    Identity,
    History(TimelineId),
    Segment(TimelineId, SegmentNo),
    Partial(PartialUp),
    HashKey,
    Dictionary,
    PackData(String),
    PackIndex(String),
    CatalogFile(String),
    Entry(String, bool),
    Pin(String, bool),
}

impl Item {
    /// The `kind` label of `klio_tier2_uploads_total`.
    fn kind(&self) -> &'static str {
        match self {
            Self::Identity | Self::Segment(..) => "segment",
            Self::History(_) => "history",
            Self::Partial(_) => "partial",
            Self::PackData(_) => "pack",
            Self::PackIndex(_) => "index",
            Self::HashKey
            | Self::Dictionary
            | Self::CatalogFile(_)
            | Self::Entry(..)
            | Self::Pin(..) => "catalog",
        }
    }

    /// Whether the object is never replaced (create-only).
    fn immutable(&self) -> bool {
        !matches!(self, Self::Partial(_) | Self::Pin(..))
    }
}

/// Where an upload's bytes come from.
#[derive(Clone, Debug)]
enum Source {
    /// A Tier 1 file, uploaded as it is on disk.
    File(PathBuf),
    /// Bytes already read (the cut journal).
    Bytes(Bytes),
}

/// One file to put in Tier 2 (or, for a lifted pin, to delete).
#[derive(Clone, Debug)]
struct Upload {
    item: Item,
    /// The path relative to the cluster's directory (`wal/...`, `backups/...`).
    relative: String,
    /// `None`: delete the object.
    source: Option<Source>,
}

/// Why one upload failed.
#[derive(Debug, thiserror::Error)]
enum UploadError {
    /// The local file could not be read.
    #[error("cannot read {file} on Tier 1")]
    Read {
        file: String,
        #[source]
        source: FsError,
    },
    /// The S3 request failed.
    #[error("cannot upload {file} to Tier 2")]
    Tier2 {
        file: String,
        #[source]
        source: Tier2Error,
    },
    /// An object already in Tier 2 under the file's key holds other bytes.
    #[error(
        "Tier 2 already holds s3://{bucket}/{key} for {file}, with other bytes \
         ({remote_size} bytes, CRC32C {remote_crc} there; {local_size} bytes, CRC32C \
         {local_crc:08x} here): it is not overwritten; compare both copies and remove the wrong one"
    )]
    Differs {
        file: String,
        bucket: String,
        key: String,
        local_size: u64,
        local_crc: u32,
        remote_size: u64,
        remote_crc: String,
    },
    /// A relative path that maps to no key (a bug: paths come from Klio's own listings).
    #[error("{file} has no Tier 2 key")]
    NoKey { file: String },
    /// The blocking read was cancelled (the runtime is shutting down).
    #[error("reading {file} was cancelled")]
    Cancelled { file: String },
}

impl UploadError {
    /// The `kind` label of `klio_tier2_upload_errors_total`.
    fn kind(&self) -> &'static str {
        match self {
            Self::Read { .. } => "local_read",
            Self::Differs { .. } => "integrity",
            Self::NoKey { .. } | Self::Cancelled { .. } => "internal",
            Self::Tier2 { source, .. } => tier2_error_kind(source),
        }
    }

    fn file(&self) -> &str {
        match self {
            Self::Read { file, .. }
            | Self::Tier2 { file, .. }
            | Self::Differs { file, .. }
            | Self::NoKey { file }
            | Self::Cancelled { file } => file,
        }
    }
}

/// The kind of a Tier 2 error, from its variant.
fn tier2_error_kind(e: &Tier2Error) -> &'static str {
    match e {
        Tier2Error::PreconditionFailed { .. } => "precondition_failed",
        Tier2Error::Throttled { .. } => "throttled",
        Tier2Error::AccessDenied { .. } => "access_denied",
        Tier2Error::NotSent { .. } => "not_sent",
        Tier2Error::Transport { .. } => "transport",
        Tier2Error::Rejected { .. } => "rejected",
        Tier2Error::IncompleteAnswer { .. } => "incomplete_answer",
        Tier2Error::Integrity { .. } => "integrity",
        Tier2Error::Configuration(_) => "configuration",
    }
}

/// A pass could not even plan: Tier 1 could not be read.
#[derive(Debug, thiserror::Error)]
enum PlanError {
    #[error("the relay cannot read the WAL archive of cluster {cluster}")]
    Wal {
        cluster: String,
        #[source]
        source: WalArchiveError,
    },
    #[error("the relay cannot list {dir}")]
    List {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the relay's planning thread was cancelled")]
    Cancelled,
}

/// What a pass found to upload, in its phases.
#[derive(Debug, Default)]
struct Plan {
    /// Phase 1: identity, histories, segments, hash key, dictionary, pack files.
    first: Vec<Upload>,
    /// The cluster-wide objects among phase 1's uploads (the block-hash key, the dictionary):
    /// no entry goes up before they are confirmed (a backup is read with the key, and its
    /// blocks may be compressed against the dictionary).
    cluster_objects: Vec<Item>,
    /// Phase 2, for packs whose `.pack` went up: their `.idx`, by pack id.
    indexes: Vec<(String, Upload)>,
    /// Phase 2: the segment in progress.
    partial: Option<Upload>,
    /// Phase 2 and 3: backups not yet relayed.
    backups: Vec<BackupUpload>,
    /// Phase 2: pins to mirror.
    pins: Vec<Upload>,
    /// Tier 1's durable end.
    tier1_end: Option<WalPosition>,
    /// The completed segments Tier 1 holds on `tier1_end`'s timeline and Tier 2 lacks.
    missing_on_end_timeline: BTreeSet<u64>,
    /// The segment size.
    segment_bytes: u64,
}

/// One backup's catalog files.
#[derive(Debug)]
struct BackupUpload {
    id: String,
    /// Packs its blocks may be in: every pack indexed when it was listed.
    needs_packs: Vec<String>,
    files: Vec<Upload>,
    entry: Upload,
}

/// The relay state of one cluster.
struct ClusterRelay {
    cluster: ClusterName,
    dir: PathBuf,
    /// The index of the cluster's WAL archive: a pass plans from it, without a listing.
    wal_index: Arc<ArchiveIndex>,
    tier2: Arc<Tier2>,
    uploads: Arc<Semaphore>,
    telemetry: ClusterTelemetry,
    /// Where backup completions are announced.
    retention: Arc<crate::retention::Retention>,
    frontier_path: PathBuf,
    frontier: Frontier,
    /// When the partial was last uploaded (since this relay started).
    last_partial: Option<Instant>,
    /// The outer backoff: the current step, and when the next pass may run.
    backoff: Option<Duration>,
    retry_at: Instant,
}

impl ClusterRelay {
    fn new(
        shared: &Shared,
        tier2: &Arc<Tier2>,
        uploads: &Arc<Semaphore>,
        cluster: ClusterName,
    ) -> Self {
        let dir = layout::cluster_dir(&shared.data_dir, &cluster);
        Self {
            frontier_path: frontier_path(&dir),
            dir,
            wal_index: shared.wal_index(&cluster),
            tier2: tier2.clone(),
            uploads: uploads.clone(),
            telemetry: shared.telemetry.cluster(&cluster),
            retention: shared.retention.clone(),
            cluster,
            frontier: Frontier::default(),
            last_partial: None,
            backoff: None,
            retry_at: Instant::now(),
        }
    }

    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        match Frontier::load(&self.frontier_path) {
            Ok(f) => self.frontier = f,
            Err(e) => {
                self.stop_for_good(&e);
                return;
            }
        }
        let wake = self.telemetry.relay_wake();
        let retention = self.retention.clone();
        let mut last_pass: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                () = wake.notified() => {}
                () = retention.backup_completed().notified() => {}
                () = tokio::time::sleep(TICK) => {}
            }
            if let Some(wait) = last_pass
                .map(|t| MIN_PASS_SPACING.saturating_sub(t.elapsed()))
                .filter(|w| !w.is_zero())
            {
                tokio::time::sleep(wait).await;
            }
            if Instant::now() < self.retry_at {
                continue;
            }
            last_pass = Some(Instant::now());
            match self.pass().await {
                Ok(failures) if failures.is_empty() => self.backoff = None,
                Ok(failures) => self.back_off(&failures),
                Err(PassError::Frontier(e)) => {
                    self.stop_for_good(&e);
                    return;
                }
                Err(PassError::Plan(e)) => {
                    tracing::warn!(cluster = %self.cluster, "{}", ErrorChain(&e));
                    self.back_off(&[]);
                }
            }
        }
    }

    fn stop_for_good(&self, e: &FrontierError) {
        let message = ErrorChain(e).to_string();
        tracing::error!(cluster = %self.cluster, "Tier 2 relay stopped: {message}");
        self.telemetry.relay_stopped(&message);
    }

    /// One more backoff step after a pass with `failures`.
    fn back_off(&mut self, failures: &[UploadError]) {
        let step = self
            .backoff
            .map_or(FIRST_BACKOFF, |b| (b * 2).min(MAX_BACKOFF));
        self.backoff = Some(step);
        self.retry_at = Instant::now() + step;
        const LOGGED: usize = 5;
        if failures.len() > LOGGED {
            tracing::warn!(
                cluster = %self.cluster,
                "{} Tier 2 uploads failed, retrying in {} s; the first {LOGGED}:",
                failures.len(),
                step.as_secs()
            );
        }
        for f in failures.iter().take(LOGGED) {
            tracing::warn!(
                cluster = %self.cluster,
                file = f.file(),
                "Tier 2 upload failed, retrying in {} s: {}",
                step.as_secs(),
                ErrorChain(f)
            );
        }
    }

    /// One pass: plan, upload in phases, record in the frontier. The failed uploads.
    async fn pass(&mut self) -> Result<Vec<UploadError>, PassError> {
        let partial_due = self
            .last_partial
            .is_none_or(|t| t.elapsed() >= self.tier2.settings.partial_interval);
        let plan = {
            let dir = self.dir.clone();
            let wal_index = self.wal_index.clone();
            let frontier = self.frontier.clone();
            let cluster = self.cluster.to_string();
            tokio::task::spawn_blocking(move || {
                plan(&dir, &wal_index, &frontier, partial_due, &cluster)
            })
            .await
            .map_err(|_| PassError::Plan(PlanError::Cancelled))?
            .map_err(PassError::Plan)?
        };
        let before = self.frontier.clone();
        let planned = plan.count();
        let mut failures = Vec::new();
        let mut done = 0usize;

        // Phase 1, in chunks: after a long outage the frontier (and with it Tier 1 retention
        // and Tier 2's WAL end) moves as the backlog goes up, not only at the end of the pass.
        let mut packs_up: BTreeSet<String> = self.frontier.packs.clone();
        let mut saved = before.clone();
        let chunk = self.tier2.settings.upload_concurrency.max(1) * CHUNK_PER_SLOT;
        let mut first = plan.first.into_iter().peekable();
        let mut saved_at = Instant::now();
        while first.peek().is_some() {
            let results = self.upload_all(first.by_ref().take(chunk).collect()).await;
            for r in results {
                match r {
                    Ok(item) => {
                        done += 1;
                        if let Item::PackData(id) = &item {
                            packs_up.insert(id.clone());
                        }
                        self.record(item);
                    }
                    Err(e) => failures.push(e),
                }
            }
            // At most a few frontier writes a second, however fast the uploads go.
            if first.peek().is_some() && saved_at.elapsed() >= MIN_PASS_SPACING {
                self.save_frontier(&mut saved).await?;
                saved_at = Instant::now();
            }
        }

        // Phase 2.
        let mut second: Vec<Upload> = plan
            .indexes
            .into_iter()
            .filter(|(id, _)| packs_up.contains(id))
            .map(|(_, u)| u)
            .collect();
        second.extend(plan.partial);
        second.extend(plan.pins);
        let mut backups = Vec::new();
        for b in plan.backups {
            if b.needs_packs.iter().all(|p| packs_up.contains(p)) {
                second.extend(b.files.iter().cloned());
                backups.push(b);
            }
        }
        let results = self.upload_all(second).await;
        let mut catalog_up: BTreeMap<String, usize> = BTreeMap::new();
        for r in results {
            match r {
                Ok(item) => {
                    done += 1;
                    if let Item::CatalogFile(id) = &item {
                        *catalog_up.entry(id.clone()).or_default() += 1;
                    }
                    if matches!(item, Item::Partial(_)) {
                        self.last_partial = Some(Instant::now());
                    }
                    self.record(item);
                }
                Err(e) => failures.push(e),
            }
        }
        // Phase 3: an entry only once its other files, every pack it may need (data and
        // index), the key it is read with and the dictionary its blocks may be compressed
        // against are up.
        let readable = plan.cluster_objects.iter().all(|item| match item {
            Item::HashKey => self.frontier.hash_key,
            Item::Dictionary => self.frontier.dictionary,
            _ => true,
        });
        let third: Vec<Upload> = backups
            .into_iter()
            .filter(|_| readable)
            .filter(|b| catalog_up.get(&b.id).copied().unwrap_or(0) == b.files.len())
            .filter(|b| {
                b.needs_packs
                    .iter()
                    .all(|p| self.frontier.packs.contains(p))
            })
            .map(|b| b.entry)
            .collect();
        for r in self.upload_all(third).await {
            match r {
                Ok(item) => {
                    done += 1;
                    self.record(item);
                }
                Err(e) => failures.push(e),
            }
        }

        // The journal object of a segment now complete in Tier 2.
        if let Some(p) = self.frontier.partial
            && let Ok(t) = TimelineId::new(p.timeline)
            && self.frontier.has_segment(t, SegmentNo(p.segno))
        {
            let name = journal_file_name(t, SegmentNo(p.segno), plan.segment_bytes);
            let key = layout::wal_key(&self.cluster, &name);
            match self.tier2.store.delete(&key).await {
                Ok(()) => self.frontier.partial = None,
                Err(source) => failures.push(UploadError::Tier2 {
                    file: format!("wal/{name}"),
                    source,
                }),
            }
        }

        let progress = self.advance_wal_end(
            plan.tier1_end,
            &plan.missing_on_end_timeline,
            plan.segment_bytes,
        );
        for f in &failures {
            self.telemetry
                .relay_failed(f.kind(), f.file(), &ErrorChain(f).to_string());
        }
        self.telemetry.relay_progress(RelayProgress {
            pending: planned.saturating_sub(done) as u64,
            ..progress
        });
        self.save_frontier(&mut saved).await?;
        Ok(failures)
    }

    /// Writes the frontier if it differs from `saved` (what is on disk), then remembers it.
    async fn save_frontier(&self, saved: &mut Frontier) -> Result<(), PassError> {
        if self.frontier == *saved {
            return Ok(());
        }
        let frontier = self.frontier.clone();
        let path = self.frontier_path.clone();
        tokio::task::spawn_blocking(move || frontier.save(&path))
            .await
            .map_err(|_| PassError::Plan(PlanError::Cancelled))?
            .map_err(PassError::Frontier)?;
        *saved = self.frontier.clone();
        Ok(())
    }

    /// Records a confirmed upload in the frontier (in memory; written at the end of the pass).
    fn record(&mut self, item: Item) {
        let f = &mut self.frontier;
        match item {
            Item::Identity => f.identity = true,
            Item::History(t) => {
                f.histories.insert(t.get());
            }
            Item::Segment(t, s) => f.add_segment(t, s),
            Item::Partial(p) => f.partial = Some(p),
            Item::HashKey => f.hash_key = true,
            Item::Dictionary => f.dictionary = true,
            Item::PackData(_) | Item::CatalogFile(_) => {}
            Item::PackIndex(id) => {
                f.packs.insert(id);
            }
            Item::Entry(id, pinned) => {
                f.backups.insert(id, RelayedBackup { pinned });
            }
            Item::Pin(id, pinned) => {
                if let Some(b) = f.backups.get_mut(&id) {
                    b.pinned = pinned;
                }
            }
        }
    }

    /// Moves Tier 2's WAL end forward as far as everything before it on Tier 1's newest
    /// timeline is up; the lag against Tier 1's durable end.
    fn advance_wal_end(
        &mut self,
        tier1_end: Option<WalPosition>,
        missing: &BTreeSet<u64>,
        segment_bytes: u64,
    ) -> RelayProgress {
        let Some(tier1) = tier1_end else {
            return RelayProgress::default();
        };
        let t = tier1.timeline;
        let candidate = wal_end_candidate(&self.frontier, t, missing, segment_bytes);
        let f = &self.frontier;
        let now = unix_now();
        if let Some(lsn) = candidate {
            // Never backwards on a timeline: what is up stays up.
            let not_newer = f
                .wal_end
                .is_some_and(|e| e.timeline == t.get() && e.lsn >= lsn);
            if !not_newer {
                let since = f.wal_end.map_or(now, |e| e.since);
                self.frontier.wal_end = Some(WalEnd {
                    timeline: t.get(),
                    lsn,
                    since,
                });
            }
        }
        let Some(end) = self.frontier.wal_end.as_mut() else {
            return RelayProgress {
                lag_bytes: Some(tier1.lsn.0),
                ..RelayProgress::default()
            };
        };
        let caught_up = end.timeline == t.get() && end.lsn >= tier1.lsn.0;
        if caught_up {
            end.since = now;
        }
        let on_timeline = if end.timeline == t.get() { end.lsn } else { 0 };
        let wal_end = TimelineId::new(end.timeline)
            .ok()
            .map(|tl| WalPosition::new(tl, Lsn(end.lsn)));
        RelayProgress {
            wal_end,
            lag_bytes: Some(tier1.lsn.0.saturating_sub(on_timeline)),
            lag_seconds: Some(if caught_up {
                0
            } else {
                now.saturating_sub(end.since)
            }),
            pending: 0,
        }
    }

    /// Runs `uploads` with at most `upload_concurrency` in flight (shared by all clusters);
    /// each result names what went up, or why it did not.
    async fn upload_all(&self, uploads: Vec<Upload>) -> Vec<Result<Item, UploadError>> {
        let mut set = tokio::task::JoinSet::new();
        for upload in uploads {
            let tier2 = self.tier2.clone();
            let cluster = self.cluster.clone();
            let uploads = self.uploads.clone();
            let telemetry = self.telemetry.clone();
            set.spawn(async move {
                let _permit = uploads.acquire_owned().await.ok();
                let kind = upload.item.kind();
                let item = upload.item.clone();
                let bytes = upload_one(&tier2, &cluster, upload).await?;
                telemetry.relay_uploaded(kind, bytes);
                Ok(item)
            });
        }
        let mut out = Vec::new();
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok(r) => out.push(r),
                Err(_) => out.push(Err(UploadError::Cancelled {
                    file: "an upload".to_owned(),
                })),
            }
        }
        out
    }
}

/// A pass ended early.
#[derive(Debug)]
enum PassError {
    Plan(PlanError),
    Frontier(FrontierError),
}

impl Plan {
    /// Files this plan would upload or delete.
    fn count(&self) -> usize {
        self.first.len()
            + self.indexes.len()
            + usize::from(self.partial.is_some())
            + self.pins.len()
            + self
                .backups
                .iter()
                .map(|b| b.files.len() + 1)
                .sum::<usize>()
    }
}

/// Where Tier 2's WAL on timeline `t` ends by `frontier`: the end of the segment before the
/// first one of `missing` (Tier 1's completed segments on `t` the frontier lacked when the pass
/// began) that is still not up, or, with none, of the last segment up or the partial after it.
/// `None` when that cannot be said (the first segment on `t` is not up).
fn wal_end_candidate(
    frontier: &Frontier,
    t: TimelineId,
    missing: &BTreeSet<u64>,
    segment_bytes: u64,
) -> Option<u64> {
    let seg_end = |s: u64| s.saturating_add(1).saturating_mul(segment_bytes);
    // `missing` was listed before this pass's uploads: what went up since is not missing.
    let first_missing = missing
        .iter()
        .copied()
        .find(|&s| !frontier.has_segment(t, SegmentNo(s)));
    match first_missing {
        Some(m) => m
            .checked_sub(1)
            .filter(|&prev| frontier.has_segment(t, SegmentNo(prev)))
            .map(seg_end),
        None => {
            let last = frontier
                .segments
                .get(&t.get())
                .and_then(|runs| runs.last())
                .map(|r| r[1]);
            let partial = frontier
                .partial
                .filter(|p| p.timeline == t.get())
                .filter(|p| last.is_none_or(|l| p.segno == l + 1))
                .map(|p| p.end);
            partial.or(last.map(seg_end))
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn journal_file_name(t: TimelineId, segno: SegmentNo, segment_bytes: u64) -> String {
    let size = klio_wal::SegmentSize::new(segment_bytes).unwrap_or(klio_wal::SegmentSize::DEFAULT);
    format!(
        "{}.klio-journal",
        WalFileName::Segment { timeline: t, segno }.to_string_with(size)
    )
}

/// Uploads (or deletes) one file; the bytes sent.
async fn upload_one(
    tier2: &Tier2,
    cluster: &ClusterName,
    upload: Upload,
) -> Result<u64, UploadError> {
    let file = upload.relative.clone();
    let key = layout::object_key(cluster, Path::new(&upload.relative))
        .ok_or_else(|| UploadError::NoKey { file: file.clone() })?;
    let tier2_err = |source| UploadError::Tier2 {
        file: file.clone(),
        source,
    };
    let Some(source) = upload.source else {
        tier2.store.delete(&key).await.map_err(tier2_err)?;
        return Ok(0);
    };
    let bytes = match source {
        Source::Bytes(b) => b,
        Source::File(path) => {
            let read_path = path.clone();
            tokio::task::spawn_blocking(move || std::fs::read(&read_path))
                .await
                .map_err(|_| UploadError::Cancelled { file: file.clone() })?
                .map_err(|e| UploadError::Read {
                    file: file.clone(),
                    source: FsError::new(FsAction::Read, &path, e),
                })?
                .into()
        }
    };
    let len = bytes.len() as u64;
    let crc = crc32c::crc32c(&bytes);
    let options = PutOptions {
        if_none_match: upload.item.immutable(),
        object_lock: tier2.settings.object_lock.map(|l| ObjectLock {
            mode: l.mode,
            retain_until: SystemTime::now() + l.retain,
        }),
    };
    let put = tier2
        .store
        .put(&key, bytes, options)
        .await
        .map_err(tier2_err)?;
    if put == Put::AlreadyExists {
        // A crash after an upload and before the frontier recorded it: the object counts only
        // if it is the same file.
        let info = tier2.store.head(&key).await.map_err(tier2_err)?;
        let same = match info {
            Some(ObjectInfo {
                size,
                crc32c: Some(c),
            }) => size == len && c == crc,
            // An object of the right size without Klio's checksum: an S3 server that lost
            // the metadata of an upload cut short, or one that keeps none. Its bytes decide.
            Some(ObjectInfo { size, crc32c: None }) if size == len => tier2
                .store
                .get_unchecked(&key)
                .await
                .map_err(tier2_err)?
                .is_some_and(|there| there.len() as u64 == len && crc32c::crc32c(&there) == crc),
            _ => false,
        };
        if !same {
            return Err(UploadError::Differs {
                file,
                bucket: tier2.store.bucket().to_owned(),
                key: tier2.store.full_key(&key),
                local_size: len,
                local_crc: crc,
                remote_size: info.map_or(0, |i| i.size),
                remote_crc: info
                    .and_then(|i| i.crc32c)
                    .map_or_else(|| "none".to_owned(), |c| format!("{c:08x}")),
            });
        }
        return Ok(0);
    }
    Ok(len)
}

/// Lists what Tier 1 holds that `frontier` lacks (blocking).
fn plan(
    dir: &Path,
    wal_index: &ArchiveIndex,
    frontier: &Frontier,
    partial_due: bool,
    cluster: &str,
) -> Result<Plan, PlanError> {
    let mut plan = Plan {
        segment_bytes: u64::from(klio_wal::SegmentSize::DEFAULT.bytes()),
        ..Plan::default()
    };
    plan_wal(dir, wal_index, frontier, partial_due, cluster, &mut plan)?;
    plan_backups(dir, frontier, &mut plan)?;
    Ok(plan)
}

fn file_upload(item: Item, dir: &Path, relative: String) -> Upload {
    Upload {
        item,
        source: Some(Source::File(dir.join(&relative))),
        relative,
    }
}

fn plan_wal(
    dir: &Path,
    wal_index: &ArchiveIndex,
    frontier: &Frontier,
    partial_due: bool,
    cluster: &str,
    plan: &mut Plan,
) -> Result<(), PlanError> {
    let wal_dir = dir.join("wal");
    if !wal_dir.join(IDENTITY_FILE).is_file() {
        return Ok(());
    }
    let wal_err = |source| PlanError::Wal {
        cluster: cluster.to_owned(),
        source,
    };
    // From the archive's index: no listing of the archive per pass.
    let reader = wal_index.reader().map_err(wal_err)?;
    let size = reader.identity().segment_size;
    plan.segment_bytes = size.bytes_u64();
    let listing = wal_index.listing().map_err(wal_err)?;
    plan.tier1_end = wal_index.durable().map_err(wal_err)?;
    if !frontier.identity {
        plan.first.push(file_upload(
            Item::Identity,
            dir,
            format!("wal/{IDENTITY_FILE}"),
        ));
    }
    for &t in &listing.histories {
        if frontier.histories.contains(&t.get()) {
            continue;
        }
        let plain = WalFileName::History { timeline: t }.to_string_with(size);
        let sealed = format!("{plain}.klio");
        let name = if wal_dir.join(&sealed).is_file() {
            sealed
        } else {
            plain
        };
        plan.first
            .push(file_upload(Item::History(t), dir, format!("wal/{name}")));
    }
    for tl in &listing.timelines {
        let t = tl.timeline;
        for range in &tl.segments {
            for s in range.first.0..=range.last.0 {
                let segno = SegmentNo(s);
                if frontier.has_segment(t, segno) {
                    continue;
                }
                if plan.tier1_end.is_some_and(|e| e.timeline == t) {
                    plan.missing_on_end_timeline.insert(s);
                }
                let plain = WalFileName::Segment { timeline: t, segno }.to_string_with(size);
                let sealed = format!("{plain}.klio");
                let name = if wal_dir.join(&sealed).is_file() {
                    sealed
                } else if wal_dir.join(&plain).is_file() {
                    plain
                } else {
                    // A complete journal the writer has not finished yet: next pass.
                    continue;
                };
                plan.first.push(file_upload(
                    Item::Segment(t, segno),
                    dir,
                    format!("wal/{name}"),
                ));
            }
        }
    }
    // The segment in progress: the newest partial of the newest timeline.
    let newest = plan.tier1_end.and_then(|end| {
        listing
            .timelines
            .iter()
            .find(|tl| tl.timeline == end.timeline)
            .and_then(|tl| tl.partials.last().copied())
            .map(|p| (end.timeline, p))
    });
    if let Some((t, p)) = newest
        && partial_due
    {
        let up = frontier.partial;
        // On the same timeline, the journal object of an earlier segment is deleted first
        // (once that segment is up); one left on an older timeline is that timeline's end.
        let same_segment = up.is_none_or(|u| u.timeline != t.get() || u.segno == p.segno.0);
        let advanced = up.is_none_or(|u| u.end < p.end.0);
        if same_segment && advanced {
            let snapshot: Option<JournalSnapshot> =
                reader.journal_snapshot(t, p.segno).map_err(wal_err)?;
            if let Some(snap) = snapshot {
                plan.partial = Some(Upload {
                    item: Item::Partial(PartialUp {
                        timeline: t.get(),
                        segno: p.segno.0,
                        end: snap.end.0,
                        uploaded_at: unix_now(),
                    }),
                    relative: format!("wal/{}", snap.file_name),
                    source: Some(Source::Bytes(Bytes::from(snap.bytes))),
                });
            }
        }
    }
    Ok(())
}

/// The names in `dir` (empty when it does not exist).
fn names_in(dir: &Path) -> Result<Vec<String>, PlanError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(PlanError::List {
                dir: dir.to_owned(),
                source,
            });
        }
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

fn plan_backups(dir: &Path, frontier: &Frontier, plan: &mut Plan) -> Result<(), PlanError> {
    let backups = dir.join("backups");
    if !backups.is_dir() {
        return Ok(());
    }
    for (item, name, up) in [
        (Item::HashKey, HASH_KEY_FILE, frontier.hash_key),
        (Item::Dictionary, DICTIONARY_FILE, frontier.dictionary),
    ] {
        if !up && backups.join(name).is_file() {
            plan.cluster_objects.push(item.clone());
            plan.first
                .push(file_upload(item, dir, format!("backups/{name}")));
        }
    }
    // The catalog before the packs: every pack a listed backup needs is indexed by now (a
    // backup is published only after its packs are indexed), so it is in the listing below.
    let catalog_dir = backups.join("catalog");
    let catalog: Vec<String> = names_in(&catalog_dir)?
        .into_iter()
        .filter(|id| catalog_dir.join(id).join("entry.json").is_file())
        .collect();
    let mut indexed = Vec::new();
    for name in names_in(&backups.join("packs"))? {
        let Some(id) = name.strip_suffix(".idx") else {
            continue;
        };
        if !backups.join("packs").join(format!("{id}.pack")).is_file() {
            continue;
        }
        indexed.push(id.to_owned());
        if frontier.packs.contains(id) {
            continue;
        }
        plan.first.push(file_upload(
            Item::PackData(id.to_owned()),
            dir,
            format!("backups/packs/{id}.pack"),
        ));
        plan.indexes.push((
            id.to_owned(),
            file_upload(
                Item::PackIndex(id.to_owned()),
                dir,
                format!("backups/packs/{id}.idx"),
            ),
        ));
    }
    for id in catalog {
        let rel = |file: &str| format!("backups/catalog/{id}/{file}");
        let pinned = catalog_dir.join(&id).join("pinned").is_file();
        match frontier.backups.get(&id) {
            Some(b) if b.pinned == pinned => {}
            Some(_) => plan.pins.push(Upload {
                item: Item::Pin(id.clone(), pinned),
                source: pinned.then(|| Source::File(dir.join(rel("pinned")))),
                relative: rel("pinned"),
            }),
            None => {
                let mut files = vec![
                    file_upload(Item::CatalogFile(id.clone()), dir, rel("files")),
                    file_upload(Item::CatalogFile(id.clone()), dir, rel("backup_manifest")),
                ];
                if pinned {
                    files.push(file_upload(
                        Item::CatalogFile(id.clone()),
                        dir,
                        rel("pinned"),
                    ));
                }
                plan.backups.push(BackupUpload {
                    needs_packs: indexed
                        .iter()
                        .filter(|p| !frontier.packs.contains(*p))
                        .cloned()
                        .collect(),
                    entry: file_upload(Item::Entry(id.clone(), pinned), dir, rel("entry.json")),
                    id,
                    files,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use klio_testkit::S3Server;

    async fn tier2_of(s3: &S3Server) -> Tier2 {
        let mut s3_config = klio_tier2::Tier2Config::new(S3Server::REGION, S3Server::BUCKET);
        s3_config.endpoint = Some(s3.endpoint().to_owned());
        s3_config.credentials = klio_tier2::Credentials::Static {
            access_key_id: S3Server::ACCESS_KEY_ID.to_owned(),
            secret_access_key: S3Server::SECRET_ACCESS_KEY.to_owned(),
        };
        Tier2::connect(super::super::Tier2Settings {
            s3: s3_config,
            partial_interval: Duration::from_secs(1),
            upload_concurrency: 2,
            object_lock: None,
            cache_bytes: 0,
            retention: None,
        })
        .await
        .unwrap()
    }

    #[test]
    fn tier2_wal_end_stops_before_the_first_segment_still_missing() {
        const SEG: u64 = 1 << 20;
        let t = TimelineId::FIRST;
        let mut f = Frontier::default();
        for s in [1, 2, 3, 5] {
            f.add_segment(t, SegmentNo(s));
        }
        // Listed as missing before the pass: 2, 3 went up meanwhile, 4 did not.
        let missing: BTreeSet<u64> = [2, 3, 4, 5].into();
        assert_eq!(wal_end_candidate(&f, t, &missing, SEG), Some(4 * SEG));
        // Nothing missing: the last segment up, or the partial right after it.
        assert_eq!(
            wal_end_candidate(&f, t, &BTreeSet::new(), SEG),
            Some(6 * SEG)
        );
        f.partial = Some(PartialUp {
            timeline: 1,
            segno: 6,
            end: 6 * SEG + 100,
            uploaded_at: 0,
        });
        assert_eq!(
            wal_end_candidate(&f, t, &BTreeSet::new(), SEG),
            Some(6 * SEG + 100)
        );
        // The first segment of the timeline is not up: no end can be claimed.
        assert_eq!(wal_end_candidate(&f, t, &[0].into(), SEG), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_object_already_in_tier2_counts_only_when_it_holds_the_same_bytes() {
        let s3 = S3Server::start();
        let tier2 = tier2_of(&s3).await;
        let cluster = ClusterName::new("pg-main").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let rel = "wal/000000010000000000000003.klio";
        let local = dir.path().join(rel);
        std::fs::create_dir_all(local.parent().unwrap()).unwrap();
        std::fs::write(&local, b"sealed segment, first copy").unwrap();
        let upload = || {
            file_upload(
                Item::Segment(TimelineId::FIRST, SegmentNo(3)),
                dir.path(),
                rel.to_owned(),
            )
        };
        assert_eq!(upload_one(&tier2, &cluster, upload()).await.unwrap(), 26);
        // Again, as after a crash before the frontier was written: the same bytes are there.
        assert_eq!(upload_one(&tier2, &cluster, upload()).await.unwrap(), 0);
        // The same, with the object's checksum lost (an upload cut short between object and
        // metadata): its bytes are read and compared.
        assert_eq!(s3.drop_all_metadata(), 1);
        assert_eq!(upload_one(&tier2, &cluster, upload()).await.unwrap(), 0);

        std::fs::write(&local, b"other bytes under the same name").unwrap();
        let e = upload_one(&tier2, &cluster, upload()).await.unwrap_err();
        assert!(matches!(e, UploadError::Differs { .. }), "{e:?}");
        assert_eq!(e.kind(), "integrity");
        let message = e.to_string();
        assert!(message.contains(rel), "{message}");
        assert!(
            message.contains(&format!("clusters/pg-main/{rel}")),
            "{message}"
        );
        // Never overwritten.
        let object = std::fs::read(s3.object_file(&format!("clusters/pg-main/{rel}"))).unwrap();
        assert_eq!(object, b"sealed segment, first copy");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_object_lock_a_relayed_object_cannot_be_purged_before_it_ends() {
        let moto = tokio::task::spawn_blocking(klio_testkit::MotoServer::start)
            .await
            .unwrap();
        let mut s3_config = klio_tier2::Tier2Config::new(
            klio_testkit::MotoServer::REGION,
            klio_testkit::MotoServer::BUCKET,
        );
        s3_config.endpoint = Some(moto.endpoint().to_owned());
        s3_config.credentials = klio_tier2::Credentials::Static {
            access_key_id: "moto".to_owned(),
            secret_access_key: "moto-secret".to_owned(),
        };
        let tier2 = Tier2::connect(super::super::Tier2Settings {
            s3: s3_config,
            partial_interval: Duration::from_secs(1),
            upload_concurrency: 2,
            object_lock: Some(super::super::config::ObjectLockSettings {
                mode: klio_tier2::ObjectLockMode::Compliance,
                retain: Duration::from_secs(3600),
            }),
            cache_bytes: 0,
            retention: None,
        })
        .await
        .unwrap();
        let cluster = ClusterName::new("pg-main").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("wal")).unwrap();
        std::fs::write(dir.path().join("wal/klio-archive.identity"), b"identity").unwrap();
        let upload = file_upload(
            Item::Identity,
            dir.path(),
            "wal/klio-archive.identity".to_owned(),
        );
        assert_eq!(upload_one(&tier2, &cluster, upload).await.unwrap(), 8);
        let refused = tier2
            .store
            .purge(&layout::wal_key(&cluster, "klio-archive.identity"))
            .await
            .unwrap_err();
        assert!(
            matches!(refused, Tier2Error::AccessDenied { .. }),
            "{refused:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_tier2_is_a_transport_error_naming_the_file() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let s3 = S3Server::start();
        let mut tier2 = tier2_of(&s3).await;
        let mut s3_config = tier2.settings.s3.clone();
        s3_config.endpoint = Some(format!("http://127.0.0.1:{port}"));
        tier2.store = klio_tier2::ObjectStore::connect(&s3_config).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("wal")).unwrap();
        std::fs::write(
            dir.path().join("wal/00000002.history"),
            b"1\t0/3000000\tno reason\n",
        )
        .unwrap();
        let cluster = ClusterName::new("pg-main").unwrap();
        let upload = file_upload(
            Item::History(TimelineId::new(2).unwrap()),
            dir.path(),
            "wal/00000002.history".to_owned(),
        );
        let e = upload_one(&tier2, &cluster, upload).await.unwrap_err();
        assert_eq!(e.kind(), "transport", "{e:?}");
        assert_eq!(e.file(), "wal/00000002.history");
    }
}
