//! `klio restore`: a base backup from the Klio server rebuilt into an empty data directory,
//! prepared to recover through `klio get-wal`.
//!
//! # Steps
//!
//! 1. `ListBackups`, and the choice of the backup for the recovery target ([`choose`]).
//! 2. The data directory and every tablespace location ([`layout`], mapped with
//!    `--tablespace-mapping`) must be missing or empty; `force` empties them first.
//! 3. The marker `klio-restore-in-progress` is written into the data directory.
//! 4. `GetBackup` streams the file list on one stream: directories and `pg_tblspc/<oid>` links
//!    are made as they come; regular files go through a bounded channel to `jobs` workers,
//!    each on its own stream, which fetch their blocks with `GetBlocks` (small files
//!    together, up to one request's worth of blocks), check each one ([`blocks`]) and write
//!    them at their offsets (see "Writes"), then set each file's mode and mtime and fsync
//!    it. `backup_manifest` is written as its chunks arrive.
//! 5. The final steps ([`files::finish`]): `backup_manifest`, `tablespace_map` (rewritten for
//!    mapped tablespaces), the recovery settings of `klio prepare-recovery`
//!    ([`RecoveryConfig::apply`]), then `global/pg_control` and `backup_label`, then the
//!    marker's removal.
//!
//! # Durability
//!
//! A restore is complete only when the marker is gone. Every restored file is fsynced, and
//! every directory that got entries is fsynced, before `global/pg_control` and
//! `backup_label` are written (each atomically, then its directory fsynced); the marker's
//! removal is fsynced last. A crash or an error at any point before leaves the marker and no
//! `backup_label`: PostgreSQL cannot start on the directory (no `pg_control`), and a later
//! restore into it names the interrupted backup and needs `force`.
//!
//! # Memory
//!
//! Bounded whatever the size of the backup: the file list is read as it streams (at most
//! `4 × jobs` files queued), each worker holds at most 16 MiB of blocks as received (two
//! requests of 8), one request's blocks decompressed ([`write_buffer`]) and 64 open files,
//! and only the list of directories (for their modes, set at the end) is kept whole.
//!
//! # Writes
//!
//! A request's blocks are decompressed into one buffer and written one run of consecutive
//! blocks at a time. Large files of whole 4 KiB pages (relation segments) are written with
//! direct I/O where the file system has it ([`files::create_file`]): nothing reads them
//! before PostgreSQL starts, so the page cache would only cost a copy, an allocation per page
//! and the eviction of what the host had cached. Durability is the same either way: every
//! file is fsynced.

mod blocks;
mod catalog;
mod choose;
mod delta;
mod files;
mod layout;
mod target_dir;
mod write_buffer;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use klio_crypto::BlockHashKey;
use klio_proto::klio::{
    BackupInfo, Block, BlockDictionary, BlockHash, CatalogEntryError, ErrorCode, FileEntry,
    FileKind, MAX_BLOCK_LEN,
};
use klio_wal::{FsError, Lsn, durable};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinSet;

use crate::client_config::ClientConfig;
use crate::recovery_config::{RecoveryConfig, RecoveryConfigError};
use crate::server_link::{ServerConnection, ServerLinkError};

pub use blocks::BlockFault;
pub use choose::{BackupRef, choose_backup};
pub use layout::{Layout, Placement, RestoredTablespace, TablespaceMapping, UnsafePathReason};
pub use target_dir::RESTORE_MARKER;

use blocks::{BlockStream, FetchFailure, block_len, check_into, hashes_per_request};
use catalog::{BackupContents, ContentItem};
use files::{FinalFiles, RestoredFile, SmallFile};
use target_dir::{Existing, TargetKind};
use write_buffer::WriteBuffer;

/// The default number of parallel block streams.
pub const DEFAULT_JOBS: usize = 4;

/// The most parallel block streams: with the catalog streams they stay within the 16
/// concurrent streams a Klio server allows a connection (more would wait for ever).
pub const MAX_JOBS: usize = 12;

/// What to restore, where, and how to recover afterwards.
#[derive(Clone, Debug)]
pub struct RestoreSettings {
    /// The Klio server and this cluster's certificates.
    pub client: ClientConfig,
    /// Which backup.
    pub backup: BackupRef,
    /// The data directory to restore into (missing or empty, unless `force`).
    pub pgdata: PathBuf,
    /// Where to restore tablespaces that were elsewhere on the backed-up host.
    pub tablespace_mappings: Vec<TablespaceMapping>,
    /// Parallel block streams ([`DEFAULT_JOBS`], at most [`MAX_JOBS`]).
    pub jobs: usize,
    /// Remove the contents of a non-empty data directory or tablespace location first.
    pub force: bool,
    /// Restore over what the directories hold, rewriting only blocks that differ and
    /// removing what the backup does not have (see the `delta` module).
    pub delta: bool,
    /// The recovery settings written at the end; their target also chooses the backup.
    pub recovery: RecoveryConfig,
}

/// How far a restore has come, in bytes of file contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestoreProgress {
    /// Bytes written so far.
    pub written: u64,
    /// Bytes in all (the backup's `logical_bytes`).
    pub total: u64,
}

/// Called with progress after each batch of blocks written (from several tasks).
pub type ProgressCallback = Arc<dyn Fn(RestoreProgress) + Send + Sync>;

/// What a finished restore did.
#[derive(Clone, Debug)]
pub struct RestoreReport {
    /// The backup restored.
    pub backup: BackupInfo,
    /// Where.
    pub pgdata: PathBuf,
    /// Where its tablespaces went.
    pub tablespaces: Vec<RestoredTablespace>,
    /// Regular files written.
    pub files: u64,
    /// Bytes of file contents written (fetched from the server).
    pub bytes: u64,
    /// Bytes a delta restore found already as the backup has them, and kept.
    pub reused_bytes: u64,
    /// Entries a delta restore removed because the backup does not have them.
    pub removed: u64,
    /// How long it took.
    pub elapsed: Duration,
}

/// A restore failed; the data directory keeps its marker (unless nothing was written yet).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// The server could not be reached.
    #[error("cannot connect to the Klio server to restore")]
    Connect(#[source] ServerLinkError),
    /// The catalog could not be listed.
    #[error("listing the backups on the Klio server failed")]
    Listing(#[source] crate::backup::catalog::CatalogError),
    /// A backup's contents could not be read from the catalog.
    #[error("reading the backup catalog from the Klio server failed")]
    Catalog(#[source] ServerLinkError),
    /// The server sent a catalog entry this version cannot read.
    #[error("the Klio server sent a backup catalog entry this klio cannot read; upgrade klio")]
    CatalogEntry(#[source] CatalogEntryError),
    /// The cluster has no backup.
    #[error("the Klio server has no backup of this cluster yet: take one with klio backup run")]
    NoBackups,
    /// No backup of that id.
    #[error("there is no backup {id} of this cluster: klio backup list shows its backups")]
    NoSuchBackup {
        /// The id asked for.
        id: String,
    },
    /// Every backup ends after the target.
    #[error(
        "no backup of this cluster ends before the recovery target {target}: recovery can stop \
         only after the end of the backup it starts from; choose a later target"
    )]
    NoBackupReachesTarget {
        /// The target, as given.
        target: String,
    },
    /// The backup asked for ends after the target.
    #[error(
        "backup {backup} ends at {end} ({ended_at}), after the recovery target {target}: \
         recovery from it cannot stop there; {}",
        instead.as_ref().map_or_else(
            || "no backup of this cluster ends before it".to_owned(),
            |id| format!("use --backup {id}, the newest backup that ends before it"),
        )
    )]
    BackupEndsAfterTarget {
        /// The backup asked for.
        backup: String,
        /// Its end LSN.
        end: Lsn,
        /// When it ended.
        ended_at: String,
        /// The target, as given.
        target: String,
        /// The newest backup that ends before the target, if any.
        instead: Option<String>,
    },
    /// A target time that cannot be compared with backup end times.
    #[error(
        "cannot compare the recovery target time {0:?} with the end times of the backups: give \
         it with a UTC offset, such as '2026-11-21 09:59:00+00', or choose the backup with \
         --backup ID"
    )]
    UnreadableTargetTime(String),
    /// `--tablespace-mapping` is not `OLD=NEW`.
    #[error("--tablespace-mapping {0:?} is not OLD=NEW with two absolute paths")]
    BadTablespaceMapping(String),
    /// A mapping names no tablespace of the backup.
    #[error(
        "--tablespace-mapping names {old:?}, which is no tablespace location of the backup \
         (its tablespaces: {}); check the old location",
        if locations.is_empty() { "none".to_owned() } else { locations.join(", ") }
    )]
    MappingMatchesNoTablespace {
        /// The mapping's old location.
        old: PathBuf,
        /// The backup's tablespace locations.
        locations: Vec<String>,
    },
    /// A tablespace location of the backup is relative.
    #[error(
        "tablespace {oid} of the backup has the relative location {location:?}; map it to an \
         absolute one with --tablespace-mapping"
    )]
    RelativeTablespace {
        /// The tablespace.
        oid: u32,
        /// Its location.
        location: String,
    },
    /// A target directory holds files.
    #[error(
        "{0:?} is not empty: restore into an empty or missing directory, or pass --force to \
         remove its contents first"
    )]
    NotEmpty(PathBuf),
    /// `--force` was given for a data directory a live PostgreSQL runs on.
    #[error(
        "PostgreSQL (pid {pid}, from {dir:?}/postmaster.pid) is running on {dir:?}: stop it \
         before restoring over its data directory"
    )]
    PostgresRunning {
        /// The directory.
        dir: PathBuf,
        /// The postmaster's process id.
        pid: u32,
    },
    /// A target directory holds an unfinished restore.
    #[error(
        "{dir:?} holds an unfinished restore of backup {backup} ({RESTORE_MARKER} is there): it \
         is incomplete; pass --force to remove it and restore again"
    )]
    InterruptedRestore {
        /// The directory.
        dir: PathBuf,
        /// The backup its marker names.
        backup: String,
    },
    /// An entry path of the backup is refused.
    #[error("backup {backup} has the entry {path:?}, which is refused: {reason}")]
    UnsafePath {
        /// The backup.
        backup: String,
        /// The entry's path.
        path: String,
        /// Why.
        reason: UnsafePathReason,
    },
    /// A file's block list does not fit its size.
    #[error(
        "backup {backup}: the file list gives {path} {size} bytes but {blocks} blocks, which \
         does not fit its block size; the catalog entry is inconsistent"
    )]
    BlockCountMismatch {
        /// The backup.
        backup: String,
        /// The file.
        path: String,
        /// Its size.
        size: u64,
        /// Its number of blocks.
        blocks: usize,
    },
    /// The server found a block of a file damaged.
    #[error(
        "backup {backup}: {path} has a damaged block on the Klio server; klio backup verify \
         {backup} checks every block"
    )]
    DamagedBlock {
        /// The backup.
        backup: String,
        /// The file.
        path: String,
        /// The server's refusal (naming the block and its pack).
        #[source]
        source: ServerLinkError,
    },
    /// A block failed the client's checks.
    #[error("backup {backup}: {path}: {fault}; klio backup verify {backup} checks every block")]
    BadBlock {
        /// The backup.
        backup: String,
        /// The file.
        path: String,
        /// What is wrong with the block.
        fault: BlockFault,
    },
    /// Fetching a file's blocks failed.
    #[error("backup {backup}: fetching the blocks of {path} from the Klio server failed")]
    FetchBlocks {
        /// The backup.
        backup: String,
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: ServerLinkError,
    },
    /// A file every data directory needs is not in the backup.
    #[error("backup {backup} has no {path}: it cannot be restored as a PostgreSQL data directory")]
    MissingFile {
        /// The backup.
        backup: String,
        /// The file.
        path: &'static str,
    },
    /// A file restored from memory is implausibly large.
    #[error(
        "backup {backup}: {path} has {size} bytes, far more than PostgreSQL writes there; \
         refusing to restore it"
    )]
    SmallFileTooLarge {
        /// The backup.
        backup: String,
        /// The file.
        path: &'static str,
        /// Its size.
        size: u64,
    },
    /// Writing the restored directory failed.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// The recovery settings could not be written.
    #[error("preparing the restored data directory for recovery failed")]
    Recovery(#[from] RecoveryConfigError),
    /// A restore task panicked or was cancelled.
    #[error("a restore task stopped before it finished")]
    Task(#[source] tokio::task::JoinError),
}

/// Restores the chosen backup into `settings.pgdata` and prepares recovery; calls
/// `on_progress` as file contents are written.
pub async fn restore(
    settings: &RestoreSettings,
    on_progress: ProgressCallback,
) -> Result<RestoreReport, RestoreError> {
    let started = Instant::now();
    let conn = ServerConnection::connect(&settings.client.server)
        .await
        .map_err(RestoreError::Connect)?;
    let result = restore_over(&conn, settings, on_progress).await;
    conn.close().await;
    let mut report = result?;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// The files restored from memory in the final steps, by their path in the backup.
const PG_CONTROL: &str = "global/pg_control";
const BACKUP_LABEL: &str = "backup_label";
const TABLESPACE_MAP: &str = "tablespace_map";

/// The largest file restored from memory (`pg_control` is 8 KiB; labels and maps are small).
const SMALL_FILE_MAX: u64 = 16 << 20;

/// What every worker needs to know.
struct Shared {
    backup: String,
    key: BlockHashKey,
    /// The cluster's dictionary, for blocks compressed against it.
    dictionary: Option<BlockDictionary>,
    block_size: u32,
    /// A delta restore: existing files are compared, not truncated.
    delta: bool,
    written: AtomicU64,
    /// Bytes found equal to the backup's and kept.
    reused: AtomicU64,
    total: u64,
    on_progress: ProgressCallback,
}

impl Shared {
    fn wrote(&self, bytes: u64) {
        self.written.fetch_add(bytes, Ordering::Relaxed);
        self.report();
    }

    fn kept(&self, bytes: u64) {
        self.reused.fetch_add(bytes, Ordering::Relaxed);
        self.report();
    }

    fn report(&self) {
        let done = self.written.load(Ordering::Relaxed) + self.reused.load(Ordering::Relaxed);
        (self.on_progress)(RestoreProgress {
            written: done,
            total: self.total,
        });
    }

    fn fetch_failed(&self, path: &str, source: ServerLinkError) -> RestoreError {
        let (backup, path) = (self.backup.clone(), path.to_owned());
        match source {
            ServerLinkError::Refused {
                code: ErrorCode::DamagedFile,
                ..
            } => RestoreError::DamagedBlock {
                backup,
                path,
                source,
            },
            source => RestoreError::FetchBlocks {
                backup,
                path,
                source,
            },
        }
    }

    fn bad_block(&self, path: &str, fault: BlockFault) -> RestoreError {
        RestoreError::BadBlock {
            backup: self.backup.clone(),
            path: path.to_owned(),
            fault,
        }
    }
}

/// A regular file for a worker.
struct FileJob {
    /// Where it goes.
    path: PathBuf,
    entry: FileEntry,
}

/// The files held back for the final steps.
#[derive(Default)]
struct HeldBack {
    pg_control: Option<FileEntry>,
    backup_label: Option<FileEntry>,
    tablespace_map: Option<FileEntry>,
}

impl HeldBack {
    /// The slot for the entry at `path` in the backup, if it is held back.
    fn slot(&mut self, path: &str) -> Option<&mut Option<FileEntry>> {
        match path {
            PG_CONTROL => Some(&mut self.pg_control),
            BACKUP_LABEL => Some(&mut self.backup_label),
            TABLESPACE_MAP => Some(&mut self.tablespace_map),
            _ => None,
        }
    }
}

/// Directories made so far: to give them their modes at the end, and to fsync every one
/// that got entries.
#[derive(Default)]
struct Directories {
    /// Restored directory entries, in the order they came: (path, mode, mtime).
    restored: Vec<(PathBuf, u32, i64)>,
    /// Directories that got new entries.
    touched: BTreeSet<PathBuf>,
    /// The parent made last, to skip asking again for each file of a directory.
    last_parent: Option<PathBuf>,
}

impl Directories {
    /// Makes sure the directory holding `path` exists, and records that it gets an entry.
    fn parent_of(&mut self, path: &Path) -> Result<(), FsError> {
        let Some(parent) = path.parent() else {
            return Ok(());
        };
        if self.last_parent.as_deref() == Some(parent) {
            return Ok(());
        }
        if !parent.is_dir() {
            // A directory the file list did not name first: made like one, so that its own
            // entry is fsynced in its parent too.
            self.parent_of(parent)?;
            files::create_directory(parent)?;
        }
        self.touched.insert(parent.to_owned());
        self.last_parent = Some(parent.to_owned());
        Ok(())
    }

    /// Gives the restored directories their modes and times (children first), then fsyncs
    /// every directory that got entries: the entries must be on disk before `backup_label`
    /// says the directory is complete.
    fn finish(&self) -> Result<(), FsError> {
        for (path, mode, mtime) in self.restored.iter().rev() {
            files::set_directory_metadata(path, *mode, *mtime)?;
        }
        for dir in &self.touched {
            durable::sync_dir(dir)?;
        }
        Ok(())
    }
}

async fn restore_over(
    conn: &ServerConnection,
    settings: &RestoreSettings,
    on_progress: ProgressCallback,
) -> Result<RestoreReport, RestoreError> {
    let backups = crate::backup::catalog::CatalogClient::new(conn)
        .list()
        .await
        .map_err(RestoreError::Listing)?;
    let chosen = choose_backup(&backups, &settings.backup, &settings.recovery.target)?;
    let layout = Layout::new(&settings.pgdata, chosen, &settings.tablespace_mappings)?;
    // Buffers are sized from the block size: it must be one a block can have.
    if chosen.block_size == 0 || chosen.block_size > MAX_BLOCK_LEN {
        return Err(RestoreError::Catalog(ServerLinkError::Unexpected(format!(
            "backup {} has block size {}, outside 1 to {MAX_BLOCK_LEN} bytes",
            chosen.id, chosen.block_size
        ))));
    }
    let existing = match (settings.delta, settings.force) {
        (true, _) => Existing::Keep,
        (false, true) => Existing::Clear,
        (false, false) => Existing::Refuse,
    };
    target_dir::prepare(&settings.pgdata, TargetKind::DataDirectory, existing)?;
    for ts in layout.tablespaces() {
        target_dir::prepare(&ts.location, TargetKind::Tablespace, existing)?;
    }
    let (info, key, dictionary, mut contents) = BackupContents::open(conn, &chosen.id).await?;
    // Before any restored file: whatever happens next, the directory says it is incomplete.
    target_dir::write_marker(&settings.pgdata, &info.id)?;
    let mut wanted = if settings.delta {
        delta::disarm(&settings.pgdata)?;
        Some(delta::Wanted::default())
    } else {
        None
    };
    let jobs = settings.jobs.clamp(1, MAX_JOBS);
    let shared = Arc::new(Shared {
        backup: info.id.clone(),
        key,
        dictionary,
        block_size: info.block_size,
        delta: settings.delta,
        written: AtomicU64::new(0),
        reused: AtomicU64::new(0),
        total: info.logical_bytes,
        on_progress,
    });
    let (queue, queued) = mpsc::channel::<FileJob>(4 * jobs);
    let queued = Arc::new(Mutex::new(queued));
    let mut workers = JoinSet::new();
    for _ in 0..jobs {
        let (send, recv) = conn.open_stream().await.map_err(RestoreError::Catalog)?;
        workers.spawn(worker(
            BlockStream::new(send, recv),
            Arc::clone(&queued),
            Arc::clone(&shared),
        ));
    }
    // The workers hold the only receivers now: if they all fail, sending fails.
    drop(queued);

    let mut dirs = Directories::default();
    dirs.touched.insert(settings.pgdata.clone());
    let mut held = HeldBack::default();
    let mut linked = BTreeSet::new();
    let mut manifest: Option<(durable::TempFile, u64)> = None;
    let mut file_count = 0u64;
    let unsafe_path = |path: &str, reason| RestoreError::UnsafePath {
        backup: info.id.clone(),
        path: path.to_owned(),
        reason,
    };
    loop {
        // A worker ends before the queue closes only when it failed.
        if let Some(done) = workers.try_join_next() {
            done.map_err(RestoreError::Task)??;
        }
        let Some(item) = contents.next().await? else {
            break;
        };
        let entry = match item {
            ContentItem::Manifest(data) => {
                if manifest.is_none() {
                    let temp = durable::TempFile::create(&settings.pgdata.join("backup_manifest"))?;
                    manifest = Some((temp, 0));
                }
                if let Some((temp, len)) = &mut manifest {
                    temp.write_all_at(&data, *len)?;
                    *len += data.len() as u64;
                }
                continue;
            }
            ContentItem::File(entry) => entry,
        };
        check_blocks(&entry, &info)?;
        let placement = layout
            .place(&entry.path, &entry.kind)
            .map_err(|reason| unsafe_path(&entry.path, reason))?;
        if let Some(wanted) = wanted.as_mut() {
            make_room(wanted, &placement, &entry.kind)?;
        }
        match placement {
            Placement::TablespaceRoot => {}
            Placement::TablespaceLink {
                oid,
                link,
                location,
            } => {
                dirs.parent_of(&link)?;
                files::create_symlink(&location, &link)?;
                linked.insert(oid);
            }
            Placement::Local(path) => match entry.kind {
                FileKind::Directory => {
                    dirs.parent_of(&path)?;
                    files::create_directory(&path)?;
                    dirs.restored.push((path, entry.mode, entry.mtime));
                }
                FileKind::File => {
                    if let Some(slot) = held.slot(&entry.path) {
                        *slot = Some(entry);
                        continue;
                    }
                    dirs.parent_of(&path)?;
                    file_count += 1;
                    if queue.send(FileJob { path, entry }).await.is_err() {
                        // Every worker stopped: their errors are collected below.
                        break;
                    }
                }
                FileKind::Symlink { .. } => {
                    return Err(unsafe_path(
                        &entry.path,
                        UnsafePathReason::SymlinkOutsidePgTblspc,
                    ));
                }
            },
        }
    }
    drop(queue);
    let mut spare = None;
    while let Some(done) = workers.join_next().await {
        let stream = done.map_err(RestoreError::Task)??;
        spare.get_or_insert(stream);
    }
    let mut stream = match spare {
        Some(stream) => stream,
        None => {
            let (send, recv) = conn.open_stream().await.map_err(RestoreError::Catalog)?;
            BlockStream::new(send, recv)
        }
    };

    // A backup whose links were not listed as entries still gets them.
    for ts in layout.tablespaces() {
        if !linked.contains(&ts.oid) {
            let link = settings.pgdata.join(format!("pg_tblspc/{}", ts.oid));
            if let Some(wanted) = wanted.as_mut() {
                delta::make_room_for_link(&link)?;
                wanted.keep(&link);
            }
            dirs.parent_of(&link)?;
            files::create_symlink(&ts.location, &link)?;
        }
    }
    for ts in layout.tablespaces() {
        dirs.touched.insert(ts.location.clone());
    }
    let removed = match &mut wanted {
        Some(wanted) => {
            // The held-back files come in the final steps; the manifest is being written.
            for name in [PG_CONTROL, BACKUP_LABEL, TABLESPACE_MAP] {
                wanted.keep(&settings.pgdata.join(name));
            }
            if let Some((temp, _)) = &manifest {
                wanted.keep(temp.path());
            }
            let locations: Vec<PathBuf> =
                layout.tablespaces().map(|t| t.location.clone()).collect();
            delta::remove_extras(&settings.pgdata, &locations, wanted)?
        }
        None => 0,
    };
    dirs.finish()?;

    let missing = |path| RestoreError::MissingFile {
        backup: info.id.clone(),
        path,
    };
    let pg_control = held.pg_control.take().ok_or_else(|| missing(PG_CONTROL))?;
    let backup_label = held
        .backup_label
        .take()
        .ok_or_else(|| missing(BACKUP_LABEL))?;
    let pg_control = fetch_small(&mut stream, &shared, &layout, PG_CONTROL, pg_control).await?;
    let backup_label =
        fetch_small(&mut stream, &shared, &layout, BACKUP_LABEL, backup_label).await?;
    let tablespace_map = match held.tablespace_map.take() {
        Some(entry) => {
            let mut map = fetch_small(&mut stream, &shared, &layout, TABLESPACE_MAP, entry).await?;
            if let Some(rewritten) = layout.rewrite_tablespace_map(&map.content) {
                map.content = rewritten;
            }
            Some(map)
        }
        None => None,
    };
    let has_tablespace_map = tablespace_map.is_some();
    let final_files = FinalFiles {
        manifest: manifest.map(|(temp, _)| temp),
        tablespace_map,
        pg_control,
        backup_label,
    };
    let pgdata = settings.pgdata.clone();
    let recovery = settings.recovery.clone();
    tokio::task::spawn_blocking(move || files::finish(&pgdata, final_files, &recovery))
        .await
        .map_err(RestoreError::Task)??;
    Ok(RestoreReport {
        backup: info.clone(),
        pgdata: settings.pgdata.clone(),
        tablespaces: layout.tablespaces().cloned().collect(),
        files: file_count + 2 + u64::from(has_tablespace_map),
        bytes: shared.written.load(Ordering::Relaxed),
        reused_bytes: shared.reused.load(Ordering::Relaxed),
        removed,
        elapsed: Duration::ZERO,
    })
}

/// Delta: records where `placement` puts an entry of `kind`, and removes what stands in its
/// way there (an entry of another kind, an old link).
fn make_room(
    wanted: &mut delta::Wanted,
    placement: &Placement,
    kind: &FileKind,
) -> Result<(), FsError> {
    match placement {
        Placement::TablespaceRoot => Ok(()),
        Placement::TablespaceLink { link, .. } => {
            wanted.keep(link);
            delta::make_room_for_link(link)
        }
        Placement::Local(path) => {
            wanted.keep(path);
            match kind {
                FileKind::Directory => delta::make_room_for_directory(path),
                FileKind::File => delta::make_room_for_file(path),
                // Refused by the caller.
                FileKind::Symlink { .. } => Ok(()),
            }
        }
    }
}

/// A file's block list must fit its size; directories and links have no blocks.
fn check_blocks(entry: &FileEntry, info: &BackupInfo) -> Result<(), RestoreError> {
    let expected = match entry.kind {
        FileKind::File => entry.size.div_ceil(u64::from(info.block_size)),
        FileKind::Directory | FileKind::Symlink { .. } => 0,
    };
    if entry.blocks.len() as u64 == expected {
        return Ok(());
    }
    Err(RestoreError::BlockCountMismatch {
        backup: info.id.clone(),
        path: entry.path.clone(),
        size: entry.size,
        blocks: entry.blocks.len(),
    })
}

/// The most files restored together (their blocks fetched in shared requests): bounds the
/// files a worker holds open.
const MAX_FILES_PER_GROUP: usize = 64;

/// Restores the files of the queue until it closes; returns its stream for the final steps.
///
/// Small files are taken from the queue together, up to one request's worth of blocks, so
/// that a data directory of many small files costs one round trip per group, not per file.
async fn worker(
    mut stream: BlockStream,
    queue: Arc<Mutex<mpsc::Receiver<FileJob>>>,
    shared: Arc<Shared>,
) -> Result<BlockStream, RestoreError> {
    let per_request = hashes_per_request(shared.block_size);
    loop {
        let group = {
            let mut queue = queue.lock().await;
            let Some(first) = queue.recv().await else {
                return Ok(stream);
            };
            let mut blocks = first.entry.blocks.len();
            let mut group = vec![first];
            while blocks < per_request && group.len() < MAX_FILES_PER_GROUP {
                let Ok(next) = queue.try_recv() else {
                    break;
                };
                blocks += next.entry.blocks.len();
                group.push(next);
            }
            group
        };
        restore_files(&mut stream, group, &shared).await?;
    }
}

/// One block of a group of files: which file, which of its blocks.
#[derive(Clone, Copy)]
struct BlockRef {
    file: usize,
    index: usize,
}

/// Fetches, checks and writes the blocks of `jobs`' files in requests of at most
/// [`hashes_per_request`] blocks, then sets each file's mode and mtime and fsyncs it. File
/// work runs on the blocking pool, and the next request is asked for before the blocks of
/// the last one are checked and written: the server reads and sends while this worker
/// writes. In a delta restore the existing files are compared meanwhile too ([`Requests`]).
async fn restore_files(
    stream: &mut BlockStream,
    jobs: Vec<FileJob>,
    shared: &Arc<Shared>,
) -> Result<(), RestoreError> {
    let jobs = Arc::new(jobs);
    let opened = {
        let (jobs, shared) = (Arc::clone(&jobs), Arc::clone(shared));
        Arc::new(blocking(move || open_files(&jobs, &shared)).await?)
    };
    let mut requests = Requests::new(&jobs, &opened, shared);
    let hashes_of = |chunk: &[BlockRef]| -> Vec<BlockHash> {
        chunk
            .iter()
            .map(|r| jobs[r.file].entry.blocks[r.index])
            .collect()
    };
    // Where a failed request failed: the block it stopped at names the file.
    let fetch_failed = |chunk: &[BlockRef], failure: FetchFailure| {
        let at = chunk[failure.received.min(chunk.len() - 1)];
        shared.fetch_failed(&jobs[at.file].entry.path, failure.source)
    };
    let mut writing: Option<tokio::task::JoinHandle<Result<(u64, WriteBuffer), RestoreError>>> =
        None;
    let mut buffer = WriteBuffer::default();
    let mut next = requests.next().await?;
    if let Some(first) = &next {
        stream
            .request(&hashes_of(first))
            .await
            .map_err(|f| fetch_failed(first, f))?;
    }
    while let Some(chunk) = next.take() {
        let blocks = stream
            .receive(chunk.len())
            .await
            .map_err(|f| fetch_failed(&chunk, f))?;
        next = requests.next().await?;
        if let Some(following) = &next {
            stream
                .request(&hashes_of(following))
                .await
                .map_err(|f| fetch_failed(following, f))?;
        }
        if let Some(previous) = writing.take() {
            let (written, returned) = previous.await.map_err(RestoreError::Task)??;
            shared.wrote(written);
            buffer = returned;
        }
        let (jobs, opened, shared_c) = (Arc::clone(&jobs), Arc::clone(&opened), Arc::clone(shared));
        let mut buffer = std::mem::take(&mut buffer);
        writing = Some(tokio::task::spawn_blocking(move || {
            let written = write_chunk(&jobs, &opened, &shared_c, &chunk, &blocks, &mut buffer)?;
            Ok((written, buffer))
        }));
    }
    if let Some(last) = writing {
        shared.wrote(last.await.map_err(RestoreError::Task)??.0);
    }
    let delta = shared.delta;
    blocking(move || {
        for (job, file) in jobs.iter().zip(opened.iter()) {
            if delta {
                delta::set_size(file.file(), &job.path, job.entry.size)?;
            }
            files::finish_file(file.file(), &job.path, job.entry.mode, job.entry.mtime)?;
        }
        Ok(())
    })
    .await
}

/// The blocks a group of files' requests ask for, a request's worth at a time.
enum Requests {
    /// All of them, known from the start: a fresh restore fetches every block.
    Listed(std::vec::IntoIter<Vec<BlockRef>>),
    /// Those that differ, found as a task on the blocking pool compares the existing files
    /// (a delta restore): the first request goes out when its blocks are found, not when the
    /// whole group has been read.
    Compared {
        /// Requests' worth of differing blocks, in file order (the last one shorter).
        found: mpsc::Receiver<Vec<BlockRef>>,
        /// The comparison, which fails on a read error.
        comparing: tokio::task::JoinHandle<Result<(), RestoreError>>,
    },
}

/// Requests' worth of differing blocks found ahead of the one being fetched: the comparison
/// runs at most this far ahead.
const REQUESTS_FOUND_AHEAD: usize = 2;

impl Requests {
    fn new(
        jobs: &Arc<Vec<FileJob>>,
        opened: &Arc<Vec<RestoredFile>>,
        shared: &Arc<Shared>,
    ) -> Self {
        let per_request = hashes_per_request(shared.block_size);
        if !shared.delta {
            let all: Vec<BlockRef> = jobs
                .iter()
                .enumerate()
                .flat_map(|(file, job)| {
                    (0..job.entry.blocks.len()).map(move |index| BlockRef { file, index })
                })
                .collect();
            let chunks: Vec<Vec<BlockRef>> = all.chunks(per_request).map(<[_]>::to_vec).collect();
            return Self::Listed(chunks.into_iter());
        }
        let (send, found) = mpsc::channel(REQUESTS_FOUND_AHEAD);
        let (jobs, opened, shared) = (Arc::clone(jobs), Arc::clone(opened), Arc::clone(shared));
        let comparing = tokio::task::spawn_blocking(move || {
            let mut pending = Vec::with_capacity(per_request);
            // False once the worker stopped listening (it failed): the comparison stops.
            let mut listening = true;
            for (file, (job, opened)) in jobs.iter().zip(opened.iter()).enumerate() {
                let kept = delta::differing_blocks(
                    opened.file(),
                    &job.path,
                    &job.entry,
                    &shared.key,
                    shared.block_size,
                    |index| {
                        pending.push(BlockRef { file, index });
                        if pending.len() == per_request {
                            let full =
                                std::mem::replace(&mut pending, Vec::with_capacity(per_request));
                            listening = send.blocking_send(full).is_ok();
                        }
                        listening
                    },
                )?;
                shared.kept(kept);
                if !listening {
                    return Ok(());
                }
            }
            if !pending.is_empty() {
                // A worker that stopped listening has failed and reports why.
                let _ = send.blocking_send(pending);
            }
            Ok(())
        });
        Self::Compared { found, comparing }
    }

    /// The next request's blocks, or `None` after the last.
    async fn next(&mut self) -> Result<Option<Vec<BlockRef>>, RestoreError> {
        match self {
            Self::Listed(chunks) => Ok(chunks.next()),
            Self::Compared { found, comparing } => match found.recv().await {
                Some(chunk) => Ok(Some(chunk)),
                None => {
                    // The comparison ended: with an error, or after its last request.
                    comparing.await.map_err(RestoreError::Task)??;
                    Ok(None)
                }
            },
        }
    }
}

/// Decompresses and checks the blocks of `chunk` (`blocks`, as received for it) into
/// `buffer`, and writes them, one write per run of consecutive blocks of a file; returns the
/// bytes written.
fn write_chunk(
    jobs: &[FileJob],
    opened: &[RestoredFile],
    shared: &Shared,
    chunk: &[BlockRef],
    blocks: &[Block],
    buffer: &mut WriteBuffer,
) -> Result<u64, RestoreError> {
    let block_size = shared.block_size;
    let len_of = |r: BlockRef| block_len(r.index, jobs[r.file].entry.size, block_size);
    let (runs, len) =
        write_buffer::plan_runs(chunk, block_size, len_of, |file| opened[file].is_direct());
    let buffer = buffer.aligned(len);
    let mut written = 0;
    for run in &runs {
        let job = &jobs[run.file];
        let mut at = run.at;
        for (r, block) in chunk[run.blocks.clone()]
            .iter()
            .zip(&blocks[run.blocks.clone()])
        {
            let asked = &job.entry.blocks[r.index];
            let len = len_of(*r) as usize;
            check_into(
                &shared.key,
                shared.dictionary.as_ref(),
                asked,
                block,
                &mut buffer[at..at + len],
            )
            .map_err(|fault| shared.bad_block(&job.entry.path, fault))?;
            at += len;
        }
        files::write_at(
            &opened[run.file],
            &job.path,
            &buffer[run.span()],
            run.offset,
        )?;
        written += run.len as u64;
    }
    Ok(written)
}

/// Opens the files of `jobs`: created empty, or in a delta restore as they are (compared by
/// [`Requests`]).
fn open_files(jobs: &[FileJob], shared: &Shared) -> Result<Vec<RestoredFile>, RestoreError> {
    let mut opened = Vec::with_capacity(jobs.len());
    for job in jobs {
        opened.push(if shared.delta {
            RestoredFile::buffered(delta::open_file(&job.path)?)
        } else {
            files::create_file(&job.path, files::writes_direct(job.entry.size))?
        });
    }
    Ok(opened)
}

/// Runs file work on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RestoreError> + Send + 'static,
) -> Result<T, RestoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(RestoreError::Task)?
}

/// Fetches a held-back file into memory, checked like any other.
async fn fetch_small(
    stream: &mut BlockStream,
    shared: &Shared,
    layout: &Layout,
    name: &'static str,
    entry: FileEntry,
) -> Result<SmallFile, RestoreError> {
    if entry.size > SMALL_FILE_MAX {
        return Err(RestoreError::SmallFileTooLarge {
            backup: shared.backup.clone(),
            path: name,
            size: entry.size,
        });
    }
    // The held-back names are plain data directory paths, never a tablespace's.
    let path = layout.pgdata().join(name);
    let mut content = Vec::with_capacity(entry.size as usize);
    let per_request = hashes_per_request(shared.block_size);
    for hashes in entry.blocks.chunks(per_request) {
        let blocks = stream
            .fetch(hashes)
            .await
            .map_err(|failure| shared.fetch_failed(&entry.path, failure.source))?;
        for (block, asked) in blocks.iter().zip(hashes) {
            let at = content.len();
            let len = block_len(
                at / shared.block_size as usize,
                entry.size,
                shared.block_size,
            );
            // At most SMALL_FILE_MAX in all: a usize.
            content.resize(at + len as usize, 0);
            check_into(
                &shared.key,
                shared.dictionary.as_ref(),
                asked,
                block,
                &mut content[at..],
            )
            .map_err(|fault| shared.bad_block(&entry.path, fault))?;
        }
    }
    shared.wrote(content.len() as u64);
    Ok(SmallFile {
        path,
        mode: entry.mode,
        mtime: entry.mtime,
        content,
    })
}

#[cfg(test)]
mod tests;
