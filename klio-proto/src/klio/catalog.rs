//! A backup's catalog entry: the stable JSON document that `klio backup list|show --output
//! json` print and that the server keeps per backup.
//!
//! # Schema (version 1)
//!
//! ```json
//! {
//!   "schema": 1,
//!   "id": "20261201T120000Z-3f9a",
//!   "cluster": "pg-main",
//!   "label": "nightly",
//!   "status": "complete",
//!   "start": { "timeline": 1, "lsn": "0/2000028" },
//!   "end": { "timeline": 1, "lsn": "0/2000138" },
//!   "started_at": "2026-12-01T12:00:00Z",
//!   "ended_at": "2026-12-01T12:00:05Z",
//!   "completed_at": "2026-12-01T12:00:05Z",
//!   "postgres_version": 150010,
//!   "system_identifier": "7312345678901234567",
//!   "block_size": 65536,
//!   "tablespaces": [ { "oid": 16385, "location": "/srv/ts1" } ],
//!   "files": 1234,
//!   "blocks": 23456,
//!   "logical_bytes": 1610612736,
//!   "referenced_stored_bytes": 180000000,
//!   "new_stored_bytes": 2000000,
//!   "pinned": false
//! }
//! ```
//!
//! - `status` is `complete` for every listed backup: a backup enters the catalog only when
//!   its blocks, file list, manifest and WAL range are durable on the server.
//! - LSNs are PostgreSQL's `X/X` text; `system_identifier` is a string because it does not fit
//!   a JSON number safely; times are RFC 3339 in UTC, to the second.
//! - `logical_bytes` is the sum of file sizes; `referenced_stored_bytes` what its blocks take on
//!   the server (compressed, before encryption overhead); `new_stored_bytes` what this backup
//!   added (blocks no earlier backup had).
//! - `pinned`: the backup is pinned (`klio backup pin ID`) and never removed by a retention
//!   policy. Added after version 1 was first written: a document without it reads as `false`.
//!   The server keeps the pin beside the entry, not in it, and fills this field when it lists
//!   or shows a backup.
//! - New fields may be added; existing ones keep their meaning. `schema` changes only when a
//!   field changes meaning.

use klio_wal::{Lsn, TimelineId, WalPosition};
use serde::{Deserialize, Serialize};

/// The schema version written by this crate.
pub const CATALOG_SCHEMA: u32 = 1;

/// One backup's catalog entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    /// [`CATALOG_SCHEMA`].
    pub schema: u32,
    /// The backup id (letters, digits and `-`; sortable by start time, but order backups by
    /// [`BackupInfo::order_key`], never by id).
    pub id: String,
    /// The cluster it belongs to.
    pub cluster: String,
    /// The label given to `BASE_BACKUP`.
    pub label: String,
    /// Always [`BackupStatus::Complete`] for a listed backup.
    pub status: BackupStatus,
    /// Where the backup starts.
    pub start: CatalogPosition,
    /// Where recovery from it becomes consistent.
    pub end: CatalogPosition,
    /// When the backup started (client clock).
    pub started_at: String,
    /// When PostgreSQL finished sending it (client clock).
    pub ended_at: String,
    /// When the server recorded it as complete.
    pub completed_at: String,
    /// PostgreSQL's `server_version_num`.
    pub postgres_version: u32,
    /// PostgreSQL's system identifier, as a decimal string.
    pub system_identifier: String,
    /// The block size files were cut with.
    pub block_size: u32,
    /// The tablespaces other than the data directory.
    pub tablespaces: Vec<CatalogTablespace>,
    /// Entries in the file list (files, directories, symlinks).
    pub files: u64,
    /// Block references in the file list.
    pub blocks: u64,
    /// Sum of the sizes of its files.
    pub logical_bytes: u64,
    /// Stored bytes of the distinct blocks it refers to.
    pub referenced_stored_bytes: u64,
    /// Stored bytes of the blocks this backup added.
    pub new_stored_bytes: u64,
    /// Pinned: never removed by a retention policy (absent in older documents: `false`).
    #[serde(default)]
    pub pinned: bool,
    /// How its files were read: `stream` (`BASE_BACKUP`) or `local` (from the data directory;
    /// absent in older documents: `stream`).
    #[serde(default)]
    pub capture: super::CaptureMethod,
}

impl BackupInfo {
    /// The order of backups: by end position (timeline, then LSN), then by completion time.
    pub fn order_key(&self) -> (WalPosition, &str) {
        (self.end.position(), &self.completed_at)
    }
}

/// A backup's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupStatus {
    /// Everything a restore needs is durable on the server.
    Complete,
}

/// A WAL position in the catalog: timeline and `X/X` LSN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogPosition {
    /// The timeline.
    pub timeline: u32,
    /// The LSN, as PostgreSQL writes it.
    #[serde(with = "lsn_text")]
    pub lsn: Lsn,
}

impl CatalogPosition {
    /// The position as a [`WalPosition`] (a timeline 0 from a bad document becomes 1).
    pub fn position(&self) -> WalPosition {
        WalPosition::new(
            TimelineId::new(self.timeline).unwrap_or(TimelineId::FIRST),
            self.lsn,
        )
    }
}

impl From<WalPosition> for CatalogPosition {
    fn from(p: WalPosition) -> Self {
        Self {
            timeline: p.timeline.get(),
            lsn: p.lsn,
        }
    }
}

/// A tablespace in the catalog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogTablespace {
    /// Its OID.
    pub oid: u32,
    /// Its location on the backed-up host.
    pub location: String,
}

mod lsn_text {
    use klio_wal::Lsn;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(lsn: &Lsn, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(lsn)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Lsn, D::Error> {
        let text = String::deserialize(d)?;
        text.parse()
            .map_err(|_| serde::de::Error::custom(format!("{text:?} is not an LSN like 0/16B3748")))
    }
}

/// A catalog entry could not be read.
#[derive(Debug, thiserror::Error)]
#[error("the backup catalog entry is not valid JSON of catalog schema {CATALOG_SCHEMA}")]
pub struct CatalogEntryError(#[source] pub(super) serde_json::Error);

impl BackupInfo {
    /// The entry as a JSON document (pretty-printed, as stored and printed).
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain structs of strings and numbers cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Reads an entry written by [`BackupInfo::to_json`].
    pub fn from_json(json: &[u8]) -> Result<Self, CatalogEntryError> {
        serde_json::from_slice(json).map_err(CatalogEntryError)
    }
}
