//! Backups read from the data directory by the client itself, on the PostgreSQL host: the
//! `local` capture method.
//!
//! `BASE_BACKUP` is one stream from one walsender: it reads files on one core. On the host
//! itself the client can read them in parallel. The protocol is PostgreSQL's low-level backup
//! API, on one SQL session held open for the whole backup (closing it aborts the backup):
//!
//! 1. `pg_backup_start(label, fast)`: a checkpoint; its redo point is the backup's start.
//! 2. The data directory and every tablespace (`pg_tblspc/<oid>` links) are walked, leaving
//!    out what PostgreSQL's own backups leave out ([`exclude`]), and read by `--jobs`
//!    threads ([`readers`]) into the same blocks, keyed hashes, dedup exchanges and catalog
//!    entries as the `BASE_BACKUP` path. `global/pg_control` is read last, as PostgreSQL
//!    sends it last.
//! 3. `pg_backup_stop(false)`: the end LSN, the `backup_label` and the `tablespace_map`
//!    contents, recorded as files of the backup. (It does not wait for WAL archiving: the
//!    Klio server waits for the backup's WAL to arrive through send-wal.)
//! 4. A `backup_manifest` written as PostgreSQL writes its own ([`manifest`]), with each
//!    file's CRC-32C computed while it was read, streamed to the server as it grows.
//!
//! Files that change while they are read are repaired by replaying the WAL from the start
//! LSN, as for every online backup: PostgreSQL writes full-page images while a backup runs.
//!
//! # When a capture is local
//!
//! `--mode auto` reads locally when all of these hold, and otherwise uses `BASE_BACKUP`,
//! logging why: a SQL session can be opened, the server is not a standby (a standby's
//! backup may end on a later timeline, which `pg_backup_stop` does not report), and the data
//! directory PostgreSQL names is readable here and its `global/pg_control` holds the system
//! identifier of the server connected to (it is this host's cluster, not a namesake).
//! `--mode local` requires them and fails naming the one that does not hold.

mod exclude;
mod manifest;
mod readers;
mod throttle;
mod walk;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use bytes::Bytes;
use klio_crypto::BlockHashKey;
use klio_proto::base_backup::quote_literal;
use klio_proto::klio::{BlockHash, FileEntry, FileKind, TablespaceInfo};
use klio_wal::{Lsn, TimelineId, WalPosition};

use crate::conn_string::ConnConfig;
use crate::connection::ReplicationConnection;
use crate::error::ConnectionError;

pub(crate) use manifest::ManifestWriter;
pub(crate) use readers::{Cut, PageChecks, READ_LAST, Readers, Reading, cut_file};
pub(crate) use throttle::Throttle;
pub(crate) use walk::{Walk, WalkRoot};

use super::BLOCK_SIZE;
use super::batch::PendingBlock;

/// How `klio backup run` reads the files (`--mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CaptureMode {
    /// Read the data directory here when it is this host's cluster, else `BASE_BACKUP`.
    #[default]
    Auto,
    /// Read the data directory here; fail if that cannot be done.
    Local,
    /// `BASE_BACKUP` over the replication connection, wherever PostgreSQL is.
    Stream,
}

/// Why a backup cannot be read from the data directory here.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotLocal {
    /// No SQL session could be opened (only replication connections may be allowed).
    #[error("no SQL session could be opened to call pg_backup_start")]
    NoSqlSession(#[source] ConnectionError),
    /// The server is a standby.
    #[error(
        "the server is a standby, and a standby's backup may end on a later timeline, which \
         pg_backup_stop does not report"
    )]
    Standby,
    /// The data directory cannot be read here.
    #[error("the data directory {dir} cannot be read on this host")]
    Unreadable {
        /// What PostgreSQL reported as `data_directory`.
        dir: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The data directory here belongs to another cluster.
    #[error(
        "{dir}/global/pg_control holds system identifier {found}, but the server connected to \
         is system {expected}: it is another cluster's data directory"
    )]
    OtherCluster {
        /// The data directory.
        dir: PathBuf,
        /// The system id in its `pg_control`.
        found: u64,
        /// The server's.
        expected: u64,
    },
}

/// Why a backup read from the data directory failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalCaptureError {
    /// `--mode local` was asked for and cannot be done.
    #[error(
        "--mode local cannot be used: run klio backup run on the PostgreSQL host as a user \
         that can read the data directory, or use --mode stream (BASE_BACKUP)"
    )]
    NotLocal(#[source] NotLocal),
    /// A file or directory could not be read.
    #[error("could not read {path} for the backup")]
    Read {
        /// What.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A name that is not UTF-8 (the catalog stores names as text).
    #[error(
        "the data directory holds {path:?}, whose name is not UTF-8; Klio records names as \
         UTF-8: rename it"
    )]
    PathNotUtf8 {
        /// The path, with the name's bytes as they are.
        path: PathBuf,
    },
    /// The reading threads could not be started.
    #[error("the backup's reading threads could not be started")]
    Threads(#[source] io::Error),
    /// Pages fail their checksums.
    #[error(
        "the backup was not cataloged because pages of the data directory fail their \
         checksums: {}",
        .warnings.join("; ")
    )]
    DamagedPages {
        /// What was found, file by file, in PostgreSQL's words.
        warnings: Vec<String>,
    },
    /// PostgreSQL answered the backup functions with something else than they return.
    #[error("PostgreSQL's {function} returned {what}, not what PostgreSQL 15 returns")]
    BadAnswer {
        /// `pg_backup_start`, `pg_backup_stop`.
        function: &'static str,
        /// What was wrong.
        what: String,
    },
}

/// A cluster whose data directory can be read here, and the SQL session to back it up with.
pub(crate) struct LocalCluster {
    pub(crate) sql: ReplicationConnection,
    pub(crate) data_directory: PathBuf,
    /// `PG_<major>_<catversion>`: where a tablespace's files are.
    pub(crate) tablespace_version: String,
    /// With data checksums: pages per relation segment file, to number pages for their
    /// checksums; `None` without checksums.
    pub(crate) checksum_segment_pages: Option<u32>,
}

/// Decides whether the backup of system `system_id` (PostgreSQL `pg_version`) is read here:
/// `Ok(None)` means `BASE_BACKUP` (the reason logged when `mode` is auto).
pub(crate) async fn choose(
    mode: CaptureMode,
    pg: &ConnConfig,
    system_id: u64,
    pg_version: u32,
) -> Result<Option<LocalCluster>, LocalCaptureError> {
    if mode == CaptureMode::Stream {
        tracing::info!("capture method: stream (BASE_BACKUP), as --mode stream asks");
        return Ok(None);
    }
    match local_cluster(pg, system_id, pg_version).await {
        Ok(local) => {
            tracing::info!(
                "capture method: local, reading {} on this host",
                local.data_directory.display()
            );
            Ok(Some(local))
        }
        Err(why) if mode == CaptureMode::Auto => {
            tracing::info!(
                "capture method: stream (BASE_BACKUP), because {}",
                klio_wal::ErrorChain(&why)
            );
            Ok(None)
        }
        Err(why) => Err(LocalCaptureError::NotLocal(why)),
    }
}

async fn local_cluster(
    pg: &ConnConfig,
    system_id: u64,
    pg_version: u32,
) -> Result<LocalCluster, NotLocal> {
    let mut sql = ReplicationConnection::connect_sql(pg)
        .await
        .map_err(NotLocal::NoSqlSession)?;
    let facts = sql
        .simple_query(
            "SELECT pg_is_in_recovery()::text, current_setting('data_directory'), \
             (SELECT catalog_version_no FROM pg_control_system())::text, \
             current_setting('data_checksums'), current_setting('block_size'), \
             (SELECT setting FROM pg_settings WHERE name = 'segment_size')",
        )
        .await
        .map_err(NotLocal::NoSqlSession)?;
    let row = facts
        .single("SELECT")
        .map_err(|e| NotLocal::NoSqlSession(e.into()))?;
    let text = |col| {
        row.text(0, col)
            .ok()
            .flatten()
            .unwrap_or_default()
            .to_owned()
    };
    if text(0) == "true" {
        sql.close().await;
        return Err(NotLocal::Standby);
    }
    let data_directory = PathBuf::from(text(1));
    let found = match read_system_id(&data_directory) {
        Ok(id) => id,
        Err(source) => {
            sql.close().await;
            return Err(NotLocal::Unreadable {
                dir: data_directory,
                source,
            });
        }
    };
    if found != system_id {
        sql.close().await;
        return Err(NotLocal::OtherCluster {
            dir: data_directory,
            found,
            expected: system_id,
        });
    }
    // Pages are checked as PostgreSQL checks them, which needs its default page size.
    let checksum_segment_pages = (text(3) == "on" && text(4) == "8192")
        .then(|| text(5).parse().ok())
        .flatten();
    Ok(LocalCluster {
        sql,
        data_directory,
        tablespace_version: format!("PG_{}_{}", pg_version / 10_000, text(2)),
        checksum_segment_pages,
    })
}

/// The system identifier in `<dir>/global/pg_control`: its first field, a `uint64` in the
/// host's byte order.
fn read_system_id(dir: &Path) -> io::Result<u64> {
    use io::Read as _;
    let mut first = [0u8; 8];
    std::fs::File::open(dir.join("global/pg_control"))?.read_exact(&mut first)?;
    Ok(u64::from_ne_bytes(first))
}

/// The tablespaces of the data directory: its `pg_tblspc/<oid>` links and where they point.
pub(crate) fn tablespaces(data_directory: &Path) -> Result<Vec<TablespaceInfo>, LocalCaptureError> {
    let dir = data_directory.join("pg_tblspc");
    let read_err = |path: &Path, source| LocalCaptureError::Read {
        path: path.to_owned(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| read_err(&dir, e))? {
        let entry = entry.map_err(|e| read_err(&dir, e))?;
        let Some(oid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let link = entry.path();
        let target = match std::fs::read_link(&link) {
            Ok(t) => t,
            // Dropped meanwhile, or not a link (an in-place tablespace of a test build).
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::InvalidInput
                ) =>
            {
                continue;
            }
            Err(e) => return Err(read_err(&link, e)),
        };
        let location = target
            .into_os_string()
            .into_string()
            .map_err(|raw| LocalCaptureError::PathNotUtf8 { path: raw.into() })?;
        out.push(TablespaceInfo { oid, location });
    }
    out.sort_by_key(|t| t.oid);
    Ok(out)
}

/// The roots to walk and the directories to leave out of them (tablespaces inside the data
/// directory, walked as tablespaces).
pub(crate) fn walk_of(
    data_directory: &Path,
    tablespaces: &[TablespaceInfo],
    version: &str,
) -> Walk {
    let mut roots = vec![WalkRoot::data_directory(data_directory)];
    let mut skip = Vec::new();
    let canonical_data = std::fs::canonicalize(data_directory).ok();
    for t in tablespaces {
        let location = Path::new(&t.location);
        roots.push(WalkRoot::tablespace(t.oid, location, version));
        if let (Some(data), Ok(at)) = (&canonical_data, std::fs::canonicalize(location))
            && let Ok(inside) = at.strip_prefix(data)
        {
            skip.push(data_directory.join(inside));
        }
    }
    Walk::new(roots, skip)
}

/// What `pg_backup_start` and `pg_backup_stop` said.
pub(crate) struct Stopped {
    pub(crate) start: WalPosition,
    pub(crate) end: WalPosition,
    pub(crate) label_file: String,
    pub(crate) tablespace_map: String,
}

/// `pg_backup_start(label, fast)`: the start LSN.
pub(crate) async fn backup_start(
    sql: &mut ReplicationConnection,
    label: &str,
    fast: bool,
) -> Result<Lsn, super::BackupError> {
    let r = sql
        .simple_query(&format!(
            "SELECT pg_backup_start({}, {fast})::text",
            quote_literal(label)
        ))
        .await?;
    let set = r.single("SELECT").map_err(ConnectionError::from)?;
    let text = set
        .text(0, 0)
        .map_err(ConnectionError::from)?
        .unwrap_or_default();
    text.parse().map_err(|_| {
        LocalCaptureError::BadAnswer {
            function: "pg_backup_start",
            what: format!("{text:?} as its start LSN"),
        }
        .into()
    })
}

/// `pg_backup_stop(false)`: the backup's end and the files it adds; the start timeline is
/// read from the backup label.
pub(crate) async fn backup_stop(
    sql: &mut ReplicationConnection,
    start: Lsn,
) -> Result<Stopped, super::BackupError> {
    let r = sql
        .simple_query("SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)")
        .await?;
    let set = r.single("SELECT").map_err(ConnectionError::from)?;
    let col = |i| -> Result<String, super::BackupError> {
        Ok(set
            .text(0, i)
            .map_err(ConnectionError::from)?
            .unwrap_or_default()
            .to_owned())
    };
    let (lsn, label_file, tablespace_map) = (col(0)?, col(1)?, col(2)?);
    let bad = |what: String| LocalCaptureError::BadAnswer {
        function: "pg_backup_stop",
        what,
    };
    let end: Lsn = lsn
        .parse()
        .map_err(|_| bad(format!("{lsn:?} as its end LSN")))?;
    let timeline = label_file
        .lines()
        .find_map(|l| l.strip_prefix("START TIMELINE: "))
        .and_then(|t| t.trim().parse().ok())
        .and_then(|t| TimelineId::new(t).ok())
        .ok_or_else(|| bad("a backup label without START TIMELINE".to_owned()))?;
    Ok(Stopped {
        start: WalPosition::new(timeline, start),
        end: WalPosition::new(timeline, end),
        label_file,
        tablespace_map,
    })
}

/// A file of the backup made from `content` (the backup label and tablespace map): its blocks
/// and entry, and its CRC-32C.
pub(crate) fn file_of(
    path: &str,
    content: &str,
    mtime: i64,
    key: &BlockHashKey,
) -> (Vec<PendingBlock>, FileEntry, u32) {
    let bytes = Bytes::copy_from_slice(content.as_bytes());
    let mut blocks = Vec::new();
    let mut hashes: Vec<BlockHash> = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let plain = bytes.slice(at..(at + BLOCK_SIZE).min(bytes.len()));
        at += plain.len();
        let hash = BlockHash(key.hash(&plain));
        hashes.push(hash);
        blocks.push(PendingBlock { hash, plain });
    }
    let entry = FileEntry {
        path: path.to_owned(),
        kind: FileKind::File,
        mode: 0o600,
        size: bytes.len() as u64,
        mtime,
        blocks: hashes,
    };
    (blocks, entry, crc32c::crc32c(&bytes))
}

/// Bytes read so far by `readers`.
pub(crate) fn bytes_read(readers: &Readers) -> u64 {
    readers.read.load(Ordering::Relaxed)
}
