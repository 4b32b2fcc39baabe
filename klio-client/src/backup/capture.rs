//! One capture: PostgreSQL's `BASE_BACKUP` on one side, a backup session with the Klio server
//! on the other (see the module documentation of [`super`] for the flow).

use std::time::{Duration, SystemTime};

use klio_crypto::BlockHashKey;
use klio_proto::base_backup::{
    BackupPosition, BaseBackupFailure, BaseBackupOptions, Checkpoint, CopyStreamEvent, MaxRate,
    TablespaceKind,
};
use klio_proto::klio::{
    BackupFinish, BackupInfo, BlockCompression, BlockDictionary, CaptureMethod, CatalogEntryError,
    ClusterName, ErrorCode, FileEntry, MAX_HASHES_PER_MESSAGE, Message, PROTOCOL_VERSION,
    TablespaceInfo,
};
use klio_proto::tar::TarError;
use klio_wal::{ErrorChain, WalPosition};
use tokio::time::Instant;

use super::archives::ArchiveStream;
use super::batch::{Batch, BatchLimits, HeldCountMismatch, compress_all};
use super::cutter::CaptureFault;
use super::local::{self, CaptureMode, LocalCaptureError};
use super::progress::CaptureProgress;
use super::{BLOCK_SIZE, DEFAULT_WAL_TIMEOUT};
use crate::client_config::{ClientConfig, ClientConfigError};
use crate::conn_string::ConnConfig;
use crate::connection::ReplicationConnection;
use crate::error::ConnectionError;
use crate::server_link::{
    FramedRecv, FramedSend, ServerConnection, ServerLinkError, block_hash_key,
};

/// The oldest `server_version_num` whose `BASE_BACKUP` takes `TARGET 'client'`.
const MIN_SERVER_VERSION_NUM: u32 = 150_000;

/// How long an abandoned backup waits for its `Error` message to reach the server.
const ABANDON_DELIVERY: Duration = Duration::from_secs(5);

/// Bytes queued on the server stream before they are written out.
pub(super) const SEND_CHUNK: usize = 1 << 20;

/// What a capture needs.
#[derive(Clone, Debug)]
pub struct BackupOptions {
    /// The PostgreSQL connection (a replication connection is made from it).
    pub pg: ConnConfig,
    /// The Klio server, this cluster's certificates and its name.
    pub client: ClientConfig,
    /// The backup's label; `None` for `klio <UTC time>`.
    pub label: Option<String>,
    /// How PostgreSQL does the start checkpoint.
    pub checkpoint: Checkpoint,
    /// How long the server may wait for send-wal to deliver the backup's WAL.
    pub wal_timeout: Duration,
    /// How fast the data directory is read (`None`: as fast as it can), to spare a busy
    /// primary's disks: PostgreSQL's `MAX_RATE` for a streamed backup, the readers' shared
    /// pace for a local one.
    pub max_rate: Option<MaxRate>,
    /// How the files are read.
    pub mode: CaptureMode,
    /// Readers of a local capture, and threads compressing new blocks (at least 1).
    pub jobs: usize,
    /// How new blocks are compressed: zstd (the default: smaller) or LZ4 (faster).
    pub compression: BlockCompression,
}

impl BackupOptions {
    /// Options with a fast checkpoint, the default label and [`DEFAULT_WAL_TIMEOUT`].
    pub fn new(pg: ConnConfig, client: ClientConfig) -> Self {
        Self {
            pg,
            client,
            label: None,
            checkpoint: Checkpoint::Fast,
            wal_timeout: DEFAULT_WAL_TIMEOUT,
            max_rate: None,
            mode: CaptureMode::Auto,
            jobs: default_jobs(),
            compression: BlockCompression::Zstd,
        }
    }
}

/// One job per core.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// What a capture moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// File entries (files, directories, symbolic links).
    pub files: u64,
    /// Sum of the files' sizes.
    pub logical_bytes: u64,
    /// Block references of all files.
    pub blocks_total: u64,
    /// Blocks the server did not hold, which were sent.
    pub blocks_new: u64,
    /// Plaintext bytes of those blocks.
    pub new_bytes: u64,
    /// Bytes of those blocks as sent (compressed).
    pub bytes_sent: u64,
}

/// A complete backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupOutcome {
    /// Its catalog entry, as the server recorded it.
    pub info: BackupInfo,
    /// What this run moved.
    pub stats: CaptureStats,
}

/// Why a backup failed. Whatever the reason, it is not in the catalog.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The client settings are incomplete (no cluster name).
    #[error(transparent)]
    Config(#[from] ClientConfigError),
    /// PostgreSQL could not be reached, or the connection failed during the backup.
    #[error(
        "the PostgreSQL side of the backup failed, so it was not cataloged; fix the cause and rerun `klio backup run` (blocks already stored are reused)"
    )]
    Postgres(#[source] ConnectionError),
    /// PostgreSQL is older than 15.
    #[error(
        "PostgreSQL {version} cannot be backed up by Klio, which needs PostgreSQL 15 or newer (BASE_BACKUP with TARGET 'client')"
    )]
    PostgresTooOld {
        /// `server_version_num`.
        version: u32,
    },
    /// `server_version_num` is not a number.
    #[error("PostgreSQL reported server_version_num {0:?}, which is not a version number")]
    BadServerVersion(String),
    /// PostgreSQL found pages whose checksums do not verify.
    #[error(
        "the backup was not cataloged because PostgreSQL found damaged data pages{}",
        damaged_files_text(.warnings)
    )]
    DamagedPages {
        /// PostgreSQL's warnings during the backup, which name the files and blocks.
        warnings: Vec<String>,
        /// PostgreSQL's final error.
        #[source]
        source: ConnectionError,
    },
    /// An archive of the stream is not a valid tar archive.
    #[error(
        "PostgreSQL's archive {archive} is not a valid tar archive, so the backup was not cataloged; rerun it, and report a bug if it fails again"
    )]
    Archive {
        /// The archive's name (`base.tar`, `<oid>.tar`).
        archive: String,
        /// What was wrong.
        #[source]
        source: TarError,
    },
    /// An archive's contents cannot be recorded.
    #[error(transparent)]
    Fault(#[from] CaptureFault),
    /// An archive of the stream is named neither `base.tar` nor `<oid>.tar`.
    #[error(
        "PostgreSQL sent a tablespace archive named {0:?}, not <oid>.tar; Klio cannot place its files"
    )]
    ArchiveName(String),
    /// The stream had no `backup_manifest`.
    #[error(
        "PostgreSQL sent no backup_manifest (MANIFEST 'yes' was asked for), so the backup was not cataloged"
    )]
    NoManifest,
    /// The Klio server could not be reached, refused, or failed during the backup.
    #[error(
        "the Klio server side of the backup failed, so it was not cataloged; fix the cause and rerun `klio backup run` (blocks already stored are reused)"
    )]
    Server(#[source] ServerLinkError),
    /// The server answered with a message that does not belong there.
    #[error(
        "the Klio server answered message {got:#04x} where {expected} was due; check that client and server run the same Klio version"
    )]
    Unexpected {
        /// What was due.
        expected: &'static str,
        /// The tag of what came.
        got: u8,
    },
    /// The server answered a dedup question with the wrong number of flags.
    #[error(transparent)]
    HeldCount(#[from] HeldCountMismatch),
    /// The server's catalog entry cannot be read.
    #[error("the Klio server completed the backup but its catalog entry cannot be read")]
    Entry(#[source] CatalogEntryError),
    /// The data directory could not be read here.
    #[error(transparent)]
    Local(#[from] LocalCaptureError),
}

fn damaged_files_text(warnings: &[String]) -> String {
    if warnings.is_empty() {
        return " (see the PostgreSQL server log for the files)".to_owned();
    }
    format!(": {}", warnings.join("; "))
}

impl From<ConnectionError> for BackupError {
    fn from(e: ConnectionError) -> Self {
        Self::Postgres(e)
    }
}

impl From<ServerLinkError> for BackupError {
    fn from(e: ServerLinkError) -> Self {
        Self::Server(e)
    }
}

impl BackupError {
    /// The code of the `Error` message that tells the server the backup is abandoned.
    fn code(&self) -> ErrorCode {
        match self {
            Self::DamagedPages { .. } | Self::Local(LocalCaptureError::DamagedPages { .. }) => {
                ErrorCode::DamagedFile
            }
            Self::Unexpected { .. } | Self::HeldCount(_) => ErrorCode::BadRequest,
            _ => ErrorCode::Internal,
        }
    }
}

/// Takes a base backup of the PostgreSQL at `opts.pg` into the Klio server's catalog, calling
/// `progress` as it goes. Returns only once the backup is complete on the server.
pub async fn run(
    opts: &BackupOptions,
    progress: &mut dyn FnMut(&CaptureProgress),
) -> Result<BackupOutcome, BackupError> {
    let cluster = opts.client.cluster()?.clone();
    let mut pg = ReplicationConnection::connect(&opts.pg).await?;
    let result = async {
        let version = pg.show("server_version_num").await?;
        let version: u32 = version
            .trim()
            .parse()
            .map_err(|_| BackupError::BadServerVersion(version.clone()))?;
        if version < MIN_SERVER_VERSION_NUM {
            return Err(BackupError::PostgresTooOld { version });
        }
        let system = pg.identify_system().await?;
        let mut local_cluster =
            local::choose(opts.mode, &opts.pg, system.system_id, version).await?;

        let server = ServerConnection::connect(&opts.client.server).await?;
        let result = async {
            let (mut send, mut recv, backup_id, key, dictionary) =
                start_session(&server, &cluster, system.system_id).await?;
            tracing::info!(cluster = %cluster, backup = %backup_id, "backup started");
            let mut session = Session {
                send: &mut send,
                recv: &mut recv,
                stats: CaptureStats::default(),
                jobs: opts.jobs.max(1),
                compression: opts.compression,
                dictionary,
                compress_ahead: true,
            };
            let captured = match local_cluster.as_mut() {
                Some(cluster) => {
                    let facts = SystemFacts {
                        system_id: system.system_id,
                        pg_version: version,
                    };
                    session
                        .capture_local(cluster, opts, key, facts, progress)
                        .await
                }
                None => session.capture(&mut pg, opts, key, version, progress).await,
            };
            match captured {
                Ok(outcome) => Ok(outcome),
                Err(e) => {
                    // Tells the server to abandon the backup, and waits for the message to
                    // arrive before the connection closes; if the stream is gone, so is the
                    // backup anyway.
                    let _ = send
                        .send(&Message::Error {
                            code: e.code(),
                            message: ErrorChain(&e).to_string(),
                        })
                        .await;
                    send.finish_delivered(ABANDON_DELIVERY).await;
                    Err(e)
                }
            }
        }
        .await;
        server.close().await;
        if let Some(cluster) = local_cluster {
            cluster.sql.close().await;
        }
        result
    }
    .await;
    pg.close().await;
    result
}

/// What the capture of a local backup needs to know of the server.
#[derive(Clone, Copy, Debug)]
pub(super) struct SystemFacts {
    pub(super) system_id: u64,
    pub(super) pg_version: u32,
}

/// How long a backup waits for the cluster's backup lease. A backup whose client vanished
/// (kill -9, lost network) holds it until the server notices, within its 15 s idle timeout; a
/// rerun right after such a crash waits that out instead of failing.
const LEASE_WAIT: Duration = Duration::from_secs(30);

/// Opens the backup's stream: `BackupHello`, then the backup id, the block-hash key and the
/// cluster's dictionary. While another backup of the cluster holds the server, retries for up
/// to [`LEASE_WAIT`].
async fn start_session(
    server: &ServerConnection,
    cluster: &ClusterName,
    system_id: u64,
) -> Result<
    (
        FramedSend,
        FramedRecv,
        String,
        BlockHashKey,
        Option<BlockDictionary>,
    ),
    BackupError,
> {
    let waiting_since = Instant::now();
    loop {
        let (mut send, mut recv) = server.open_stream().await?;
        send.send(&Message::BackupHello {
            version: PROTOCOL_VERSION,
            cluster: cluster.clone(),
            system_id,
        })
        .await?;
        let backup_id = match recv.recv().await {
            Ok(Some(Message::BackupWelcome { backup_id, .. })) => backup_id,
            Err(ServerLinkError::Refused {
                code: ErrorCode::BackupInProgress,
                ..
            }) if waiting_since.elapsed() < LEASE_WAIT => {
                if waiting_since.elapsed() < Duration::from_secs(1) {
                    tracing::info!(
                        "another backup of cluster {cluster} holds the server; waiting up to {} s \
                         in case its client vanished (the server notices that within 15 s)",
                        LEASE_WAIT.as_secs()
                    );
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Ok(other) => return Err(unexpected("BackupWelcome", other)),
            Err(e) => return Err(e.into()),
        };
        let (key, dictionary) = match recv.recv().await? {
            Some(Message::HashKey {
                key,
                algorithm,
                dictionary,
            }) => (block_hash_key(key, algorithm)?, dictionary),
            other => return Err(unexpected("HashKey", other)),
        };
        return Ok((send, recv, backup_id, key, dictionary));
    }
}

pub(super) fn unexpected(expected: &'static str, got: Option<Message>) -> BackupError {
    match got {
        Some(m) => BackupError::Unexpected {
            expected,
            got: m.tag(),
        },
        None => BackupError::Server(ServerLinkError::Closed),
    }
}

/// The server side of one capture and what it moved.
pub(super) struct Session<'s> {
    pub(super) send: &'s mut FramedSend,
    pub(super) recv: &'s mut FramedRecv,
    pub(super) stats: CaptureStats,
    /// Threads compressing a batch's new blocks.
    pub(super) jobs: usize,
    /// How they are compressed.
    pub(super) compression: BlockCompression,
    /// The cluster's dictionary, which LZ4 compresses against once the cluster has one.
    pub(super) dictionary: Option<BlockDictionary>,
    /// Whether the next batch is compressed while the server answers its `HaveBlocks`, before
    /// it is known which of its blocks are new: so while most of the last batch was new.
    pub(super) compress_ahead: bool,
}

/// The backup's label: the one given, or `klio <UTC time it started>`.
pub(super) fn backup_label(opts: &BackupOptions, started_at: SystemTime) -> String {
    opts.label
        .clone()
        .unwrap_or_else(|| format!("klio {}", humantime::format_rfc3339_seconds(started_at)))
}

pub(super) fn epoch_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The WAL timeout as the protocol carries it (`parse_wal_timeout` keeps it within u32
/// seconds; saturated otherwise).
pub(super) fn wal_timeout_seconds(t: Duration) -> u32 {
    u32::try_from(t.as_secs()).unwrap_or(u32::MAX)
}

fn wal_position(p: BackupPosition) -> WalPosition {
    WalPosition::new(p.timeline, p.lsn)
}

/// The messages announcing `entry`: its `FileEntry` with the first hashes, then `FileBlocks`
/// continuations, each with at most [`MAX_HASHES_PER_MESSAGE`] hashes.
pub(super) fn file_messages(mut entry: FileEntry) -> Vec<Message> {
    if entry.blocks.len() <= MAX_HASHES_PER_MESSAGE {
        return vec![Message::FileEntry { entry }];
    }
    let rest = entry.blocks.split_off(MAX_HASHES_PER_MESSAGE);
    let mut messages = vec![Message::FileEntry { entry }];
    messages.extend(
        rest.chunks(MAX_HASHES_PER_MESSAGE)
            .map(|c| Message::FileBlocks { blocks: c.to_vec() }),
    );
    messages
}

impl Session<'_> {
    async fn capture(
        &mut self,
        pg: &mut ReplicationConnection,
        opts: &BackupOptions,
        key: BlockHashKey,
        pg_version: u32,
        progress: &mut dyn FnMut(&CaptureProgress),
    ) -> Result<BackupOutcome, BackupError> {
        let started_at = SystemTime::now();
        let label = backup_label(opts, started_at);
        let options = BaseBackupOptions {
            label: label.clone(),
            checkpoint: opts.checkpoint,
            max_rate: opts.max_rate,
            ..BaseBackupOptions::default()
        };
        let clock = Instant::now();
        let mut stream = pg.base_backup(&options).await?;
        let start = stream.start();
        let tablespaces: Vec<TablespaceInfo> = stream
            .tablespaces()
            .iter()
            .filter_map(|t| match &t.kind {
                TablespaceKind::User { oid, location } => Some(TablespaceInfo {
                    oid: *oid,
                    location: location.clone(),
                }),
                TablespaceKind::MainDataDirectory => None,
            })
            .collect();
        let total = stream
            .tablespaces()
            .iter()
            .filter_map(|t| t.size_kb)
            .sum::<u64>()
            .saturating_mul(1024);
        let mut report = CaptureProgress {
            done: 0,
            total,
            sent: 0,
            elapsed: Duration::ZERO,
        };
        progress(&report);

        let mut archives = ArchiveStream::new(key, BatchLimits::default());
        let mut manifest_started = false;
        while let Some(event) = stream.next_event().await? {
            match event {
                CopyStreamEvent::NewArchive { name, tablespace } => {
                    archives.new_archive(name, tablespace.as_deref())?;
                }
                CopyStreamEvent::ArchiveData(data) => {
                    for batch in archives.data(&data)? {
                        self.exchange(batch).await?;
                        report.sent = self.stats.bytes_sent;
                        report.elapsed = clock.elapsed();
                        progress(&report);
                    }
                }
                CopyStreamEvent::Progress(done) => {
                    report.done = done;
                    report.elapsed = clock.elapsed();
                    progress(&report);
                }
                CopyStreamEvent::ManifestStart => {
                    self.exchange(archives.finish()?).await?;
                    manifest_started = true;
                }
                CopyStreamEvent::ManifestData(data) => {
                    self.send.push(&Message::ManifestData { data });
                    if self.send.queued() >= SEND_CHUNK {
                        self.send.flush().await?;
                    }
                }
            }
        }
        if !manifest_started {
            return Err(BackupError::NoManifest);
        }
        let warnings: Vec<String> = stream.warnings().iter().map(|w| w.to_string()).collect();
        let end = match stream.finish().await {
            Ok(end) => end,
            Err(source @ ConnectionError::BaseBackup(BaseBackupFailure::ChecksumFailure(_))) => {
                return Err(BackupError::DamagedPages { warnings, source });
            }
            Err(e) => return Err(e.into()),
        };
        let ended_at = SystemTime::now();
        let totals = archives.totals();
        self.stats.files = totals.files;
        self.stats.logical_bytes = totals.logical_bytes;
        self.stats.blocks_total = totals.blocks;
        report.elapsed = clock.elapsed();
        progress(&report);

        let finish = BackupFinish {
            label,
            start: wal_position(start),
            end: wal_position(end),
            started_at_ms: epoch_ms(started_at),
            ended_at_ms: epoch_ms(ended_at),
            pg_version,
            tablespaces,
            block_size: BLOCK_SIZE as u32,
            wal_timeout_s: wal_timeout_seconds(opts.wal_timeout),
            capture: CaptureMethod::Stream,
        };
        self.finish_backup(finish).await
    }

    /// Sends `FinishBackup` and waits for the server's catalog entry: the backup is complete.
    pub(super) async fn finish_backup(
        &mut self,
        finish: BackupFinish,
    ) -> Result<BackupOutcome, BackupError> {
        self.send.send(&Message::FinishBackup { finish }).await?;
        let info = match self.recv.recv().await? {
            Some(Message::BackupEntry { json }) => {
                BackupInfo::from_json(&json).map_err(BackupError::Entry)?
            }
            other => return Err(unexpected("BackupEntry", other)),
        };
        self.send.finish();
        Ok(BackupOutcome {
            info,
            stats: self.stats,
        })
    }

    /// One dedup round: which blocks does the server hold; send the others, then the files.
    pub(super) async fn exchange(&mut self, batch: Batch) -> Result<(), BackupError> {
        if batch.is_empty() {
            return Ok(());
        }
        let hashes = batch.hashes();
        let asked = hashes.len();
        let (jobs, codec) = (self.jobs, self.compression);
        let dictionary = self.dictionary.clone();
        // The server answers once it has read what came before (the last batch's blocks,
        // which it stores meanwhile): compressing while the answer comes keeps both sides
        // busy. What turns out held is compressed for nothing, so this is
        // done only while most blocks are new (a full backup, a much changed database). The
        // copy shares the blocks' bytes.
        let ahead = self.compress_ahead.then(|| batch.blocks().to_vec());
        let (held, compressed) = if hashes.is_empty() {
            (Vec::new(), None)
        } else {
            self.send.send(&Message::HaveBlocks { hashes }).await?;
            let answer = async {
                match self.recv.recv().await? {
                    Some(Message::BlocksHeld { held }) => Ok(held),
                    other => Err(unexpected("BlocksHeld", other)),
                }
            };
            match ahead {
                Some(blocks) => {
                    let (held, compressed) = tokio::join!(
                        answer,
                        compress_all(blocks, jobs, codec, dictionary.clone())
                    );
                    (held?, Some(compressed))
                }
                None => (answer.await?, None),
            }
        };
        let resolved = batch.resolve(&held)?;
        self.stats.blocks_new += resolved.new_blocks.len() as u64;
        self.stats.new_bytes += resolved.new_plain_bytes;
        self.compress_ahead = 2 * resolved.new_blocks.len() >= asked;
        let new_blocks = match compressed {
            // `resolve` checked that there is one flag per block.
            Some(all) => all
                .into_iter()
                .zip(&held)
                .filter(|(_, held)| !**held)
                .map(|(block, _)| block)
                .collect(),
            None => compress_all(resolved.new_blocks, jobs, codec, dictionary).await,
        };
        for block in new_blocks {
            self.stats.bytes_sent += block.data.len() as u64;
            self.send.push(&Message::PutBlock { block });
            if self.send.queued() >= SEND_CHUNK {
                self.send.flush().await?;
            }
        }
        for entry in resolved.files {
            for message in file_messages(entry) {
                self.send.push(&message);
            }
            if self.send.queued() >= SEND_CHUNK {
                self.send.flush().await?;
            }
        }
        self.send.flush().await?;
        Ok(())
    }
}
