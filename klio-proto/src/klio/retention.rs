//! A retention run's report: the stable JSON document that `klio retention run --output json`
//! prints, the same for a dry run and a real one.
//!
//! # Schema (version 1)
//!
//! ```json
//! {
//!   "schema": 1,
//!   "cluster": "pg-main",
//!   "dry_run": false,
//!   "ran_at": "2026-12-01T12:00:00Z",
//!   "policy": { "keep_backups": 2, "recovery_window": "7days", "min_backups": 1 },
//!   "backups": [
//!     { "id": "20261130T120000Z-3f9a", "ended_at": "2026-11-30T12:00:05Z",
//!       "end": { "timeline": 1, "lsn": "0/2000138" }, "removed": true, "kept_because": [] },
//!     { "id": "20261201T120000Z-1b2c", "ended_at": "2026-12-01T12:00:05Z",
//!       "end": { "timeline": 2, "lsn": "0/5000100" }, "removed": false,
//!       "kept_because": [ { "reason": "newest", "rank": 1, "keep": 2 } ] }
//!   ],
//!   "wal": [
//!     { "timeline": 1, "segments_removed": 3, "bytes_removed": 50331648,
//!       "first_removed": "000000010000000000000001", "last_removed": "000000010000000000000003",
//!       "kept_from": "000000010000000000000004",
//!       "kept_because": [ { "reason": "backup", "id": "20261201T120000Z-1b2c" } ],
//!       "history_removed": false }
//!   ],
//!   "blocks": { "blocks": 120, "bytes": 7340032, "packs_removed": 1, "packs_rewritten": 0 },
//!   "oldest_recoverable": { "backup": "20261201T120000Z-1b2c", "time": "2026-12-01T12:00:05Z",
//!                           "end": { "timeline": 2, "lsn": "0/5000100" } },
//!   "disk": { "free_bytes": 1000000, "total_bytes": 2000000, "nearly_full": false },
//!   "notes": []
//! }
//! ```
//!
//! - `policy` is `null` when the cluster has none: then no backup and no WAL is removed (blocks
//!   of backups deleted by hand are still reclaimed).
//! - `backups` lists every complete backup, oldest first (by end position, never by id), with
//!   `removed` and, for each kept one, every reason that keeps it.
//! - In a dry run every count says what would go; nothing was removed.
//! - `notes` are sentences for the operator (for example a nearly full disk); never parsed.
//! - New fields may be added; existing ones keep their meaning.

use serde::{Deserialize, Serialize};

use super::catalog::CatalogPosition;

/// The schema version written by this crate.
pub const RETENTION_REPORT_SCHEMA: u32 = 1;

/// What a retention run removed (or, in a dry run, would remove), and why the rest stays.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionReport {
    /// [`RETENTION_REPORT_SCHEMA`].
    pub schema: u32,
    /// The cluster.
    pub cluster: String,
    /// Whether nothing was removed (only reported).
    pub dry_run: bool,
    /// When the run started (RFC 3339, UTC).
    pub ran_at: String,
    /// The policy applied; `None` when the cluster has none.
    pub policy: Option<ReportPolicy>,
    /// Every complete backup, oldest first.
    pub backups: Vec<BackupVerdict>,
    /// The WAL archive, per timeline.
    pub wal: Vec<WalTimelineReport>,
    /// Blocks and packs reclaimed.
    pub blocks: BlockReport,
    /// The oldest point a restore can reach after this run: the end of the oldest retained
    /// backup.
    pub oldest_recoverable: Option<RecoverablePoint>,
    /// Space on the server's data directory.
    pub disk: Option<DiskReport>,
    /// Sentences for the operator.
    pub notes: Vec<String>,
    /// Tier 2's own run, when the server has a `tier2.retention` policy (absent in reports of
    /// servers without one, and of older servers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier2: Option<Tier2RetentionReport>,
}

/// What Tier 2's retention removed from the bucket (or would, in a dry run), by its own policy
/// and the same rules as Tier 1's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier2RetentionReport {
    /// `tier2.retention`.
    pub policy: ReportPolicy,
    /// Every backup Tier 2 holds, oldest first.
    pub backups: Vec<BackupVerdict>,
    /// Tier 2's WAL, per timeline.
    pub wal: Vec<WalTimelineReport>,
    /// Packs removed: those Tier 1 no longer has and no backup Tier 2 keeps refers to.
    pub packs_removed: u64,
    /// Their bytes.
    pub pack_bytes_removed: u64,
    /// Objects S3 refused to delete because Object Lock still holds them.
    pub locked_objects: u64,
    /// Sentences for the operator.
    pub notes: Vec<String>,
}

/// A policy, as the report shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportPolicy {
    /// Keep the newest N complete backups.
    pub keep_backups: Option<u32>,
    /// Keep what recovery to any point of this window needs (humantime, e.g. `7days`).
    pub recovery_window: Option<String>,
    /// Never fewer backups than this.
    pub min_backups: u32,
}

/// One backup's fate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupVerdict {
    /// The backup id.
    pub id: String,
    /// When its WAL end was reached (RFC 3339).
    pub ended_at: String,
    /// Where it ends.
    pub end: CatalogPosition,
    /// Removed (or, in a dry run, would be).
    pub removed: bool,
    /// Why it stays (empty when removed).
    pub kept_because: Vec<RetainedBecause>,
}

/// Why a backup stays.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum RetainedBecause {
    /// Pinned (`klio backup pin`).
    Pinned,
    /// Among the newest `keep` (rank 1 is the newest).
    Newest {
        /// Its rank.
        rank: u32,
        /// `keep_backups`.
        keep: u32,
    },
    /// It ended inside the recovery window.
    InWindow,
    /// The newest backup that ended before the window starts: recovery to the window's oldest
    /// points starts from it.
    WindowBase,
    /// The `min_backups` floor (at least one backup stays under any policy, even with
    /// `min_backups: 0`).
    Floor {
        /// `min_backups`.
        min_backups: u32,
    },
    /// The cluster has no retention policy.
    NoPolicy,
    /// Its end time cannot be read, so no time rule removes it.
    UnknownEndTime,
    /// Its objects in Tier 2 are still under S3 Object Lock retention (Tier 2's report only).
    ObjectLock,
    /// Tier 2 is configured and the relay has not uploaded it yet: Tier 1 keeps it until it
    /// is there.
    NotYetInTier2,
}

/// One timeline of the WAL archive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalTimelineReport {
    /// The timeline.
    pub timeline: u32,
    /// Completed segments removed.
    pub segments_removed: u64,
    /// Their stored bytes.
    pub bytes_removed: u64,
    /// The first and last removed (file names).
    pub first_removed: Option<String>,
    /// See `first_removed`.
    pub last_removed: Option<String>,
    /// The first segment kept (file name); `None` when none is.
    pub kept_from: Option<String>,
    /// Why the rest stays.
    pub kept_because: Vec<WalKeptBecause>,
    /// Whether its history file was removed.
    pub history_removed: bool,
}

/// Why a timeline's WAL stays.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum WalKeptBecause {
    /// A retained backup's recovery path runs over it.
    Backup {
        /// The backup.
        id: String,
    },
    /// The newest timeline keeps everything from the oldest retained backup's start on.
    NewestTimeline,
    /// A timeline without a history file: its ancestry is unknown, so nothing goes.
    UnknownHistory,
    /// Tier 2 is configured and the relay has not uploaded these segments (or the history
    /// file) yet: Tier 1 keeps them until they are there.
    NotYetInTier2,
}

/// Blocks reclaimed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockReport {
    /// Blocks no retained backup (nor a running one) refers to, reclaimed.
    pub blocks: u64,
    /// Bytes freed on disk.
    pub bytes: u64,
    /// Pack files removed whole.
    pub packs_removed: u64,
    /// Pack files rewritten without their dead blocks.
    pub packs_rewritten: u64,
}

/// The oldest point a restore can reach.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoverablePoint {
    /// The backup it starts from.
    pub backup: String,
    /// When that backup ended (RFC 3339).
    pub time: String,
    /// Where that backup ends.
    pub end: CatalogPosition,
}

/// Space on the data directory's file system.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskReport {
    /// Bytes available.
    pub free_bytes: u64,
    /// The file system's size.
    pub total_bytes: u64,
    /// Used beyond the configured warning level.
    pub nearly_full: bool,
}

/// A report could not be read.
#[derive(Debug, thiserror::Error)]
#[error("the retention report is not valid JSON of report schema {RETENTION_REPORT_SCHEMA}")]
pub struct RetentionReportError(#[source] serde_json::Error);

impl RetentionReport {
    /// The report as a JSON document (pretty-printed).
    pub fn to_json(&self) -> Vec<u8> {
        // Plain structs of strings and numbers always serialize.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Reads a report written by [`RetentionReport::to_json`].
    pub fn from_json(json: &[u8]) -> Result<Self, RetentionReportError> {
        serde_json::from_slice(json).map_err(RetentionReportError)
    }
}
