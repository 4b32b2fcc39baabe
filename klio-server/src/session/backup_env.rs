//! What the backup and catalog sessions of one cluster work on: its backup store, its WAL
//! archive (for the WAL range), the backup lease and the cached block index.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use klio_crypto::Keyring;
use klio_proto::klio::{ClusterName, Message};
use klio_store::backup::{BackupStore, BlockCoding, WalCoverage, wal_coverage, wal_coverage_in};
use klio_store::wal_archive::{ArchiveIndex, WalArchiveError, WalArchiveReader};
use klio_wal::WalPosition;

use super::error_code::{Request, backup_refusal, refusal};
use super::tier2_backups::Tier2Backups;
use super::{End, blocking};
use crate::backup_registry::{BackupRegistry, SharedIndex};
use crate::retention::Retention;
use crate::server::Shared;
use crate::telemetry::ClusterTelemetry;
use crate::tier2::ServerMode;

/// How often a finishing backup looks for its WAL in the archive.
const WAL_POLL: Duration = Duration::from_millis(200);

/// One cluster's backup state, as the sessions need it.
#[derive(Clone, Debug)]
pub(crate) struct BackupEnv {
    pub(crate) cluster: ClusterName,
    pub(crate) backups: Arc<BackupRegistry>,
    pub(crate) store: BackupStore,
    pub(crate) wal_dir: PathBuf,
    /// The index of that archive, told of what retention prunes (`None`: no index).
    pub(crate) wal_index: Option<Arc<ArchiveIndex>>,
    pub(crate) keyring: Option<Keyring>,
    /// How often a finishing backup looks for its WAL.
    pub(crate) wal_poll: Duration,
    /// Retention settings, and where to ask for a run after a backup.
    pub(crate) retention: Arc<Retention>,
    /// Where retention outcomes are reported.
    pub(crate) telemetry: ClusterTelemetry,
    /// A read-only server refuses every write (and has no Tier 1 to read).
    pub(crate) mode: ServerMode,
    /// The cluster's backups in Tier 2, when the server has one.
    pub(crate) tier2: Option<Tier2Backups>,
}

impl BackupEnv {
    pub(crate) fn of(shared: &Shared, cluster: &ClusterName) -> Self {
        Self {
            cluster: cluster.clone(),
            backups: shared.backups.clone(),
            store: shared.backup_store(cluster),
            wal_dir: shared.wal_dir(cluster),
            wal_index: Some(shared.wal_index(cluster)),
            keyring: shared.storage.keyring.clone(),
            wal_poll: WAL_POLL,
            retention: shared.retention.clone(),
            telemetry: shared.telemetry.cluster(cluster),
            mode: shared.mode,
            tier2: Tier2Backups::of(shared, cluster),
        }
    }

    /// Whether the server has a Tier 1 to read (a read-only server has only Tier 2).
    pub(super) fn has_tier1(&self) -> bool {
        self.mode == ServerMode::ReadWrite
    }

    /// The cluster's block index (read from disk on first use).
    pub(super) async fn index(&self) -> Result<SharedIndex, End> {
        let (backups, cluster, store) = (
            self.backups.clone(),
            self.cluster.clone(),
            self.store.clone(),
        );
        blocking(move || backups.index(&cluster, &store))
            .await?
            .map_err(|e| backup_refusal(&e))
    }

    /// Whether the WAL archive holds all WAL from `start` to `end` in Tier 1 (what a backup
    /// waits for before it is published: its WAL must be durable on this server); `None` when
    /// the cluster has no archive yet.
    pub(super) async fn wal_coverage(
        &self,
        start: WalPosition,
        end: WalPosition,
    ) -> Result<Option<WalCoverage>, End> {
        self.tier1_wal_coverage(start, end).await
    }

    /// Whether Tier 1, or else Tier 2, holds all WAL from `start` to `end` (for verifying a
    /// backup that may be restored from either); `None` when neither has an archive.
    pub(super) async fn wal_coverage_in_any_tier(
        &self,
        start: WalPosition,
        end: WalPosition,
    ) -> Result<Option<WalCoverage>, End> {
        let tier1 = match self.has_tier1() {
            true => self.tier1_wal_coverage(start, end).await?,
            false => None,
        };
        match &self.tier2 {
            Some(tier2) if tier1 != Some(WalCoverage::Archived) => {
                let tier2 = tier2.wal_coverage(start, end).await?;
                Ok(match tier2 {
                    Some(WalCoverage::Archived) => tier2,
                    _ => tier1.or(tier2),
                })
            }
            _ => Ok(tier1),
        }
    }

    /// Whether Tier 1's WAL archive holds all WAL from `start` to `end`.
    async fn tier1_wal_coverage(
        &self,
        start: WalPosition,
        end: WalPosition,
    ) -> Result<Option<WalCoverage>, End> {
        let (dir, keyring) = (self.wal_dir.clone(), self.keyring.clone());
        let index = self.wal_index.clone();
        blocking(move || {
            // The server's index of the archive answers without a listing per poll.
            if let Some(index) = index {
                return match index.reader() {
                    Ok(archive) => {
                        wal_coverage_in(archive, &index.listing()?, start, end).map(Some)
                    }
                    Err(WalArchiveError::NotAnArchive { .. }) => Ok(None),
                    Err(e) => Err(e),
                };
            }
            let archive = match WalArchiveReader::open_with(&dir, keyring) {
                Ok(a) => a,
                Err(WalArchiveError::NotAnArchive { .. }) => return Ok(None),
                Err(e) => return Err(e),
            };
            wal_coverage(&archive, start, end).map(Some)
        })
        .await?
        .map_err(|e| refusal(&e, Request::Position))
    }

    /// The system id the cluster's WAL archive records, if it has an archive.
    pub(super) async fn archived_system_id(&self) -> Result<Option<u64>, End> {
        let (dir, keyring) = (self.wal_dir.clone(), self.keyring.clone());
        blocking(move || match WalArchiveReader::open_with(&dir, keyring) {
            Ok(a) => Ok(Some(a.identity().system_id)),
            Err(WalArchiveError::NotAnArchive { .. }) => Ok(None),
            Err(e) => Err(e),
        })
        .await?
        .map_err(|e| refusal(&e, Request::Position))
    }
}

/// "the WAL from 0/2000028 to 0/2000138 on timeline 1", for messages.
pub(super) fn wal_range_text(start: WalPosition, end: WalPosition) -> String {
    if start.timeline == end.timeline {
        format!(
            "the WAL from {} to {} on timeline {}",
            start.lsn, end.lsn, end.timeline
        )
    } else {
        format!("the WAL from {start} to {end}")
    }
}

/// Why the WAL is not archived, for messages.
pub(super) fn coverage_text(coverage: Option<&WalCoverage>) -> String {
    match coverage {
        Some(c) => c.to_string(),
        None => "the cluster has no WAL archive yet".to_owned(),
    }
}

/// The `HashKey` message that gives a client its cluster's block-hash key and dictionary.
pub(super) fn hash_key_message(coding: &BlockCoding) -> Message {
    Message::HashKey {
        key: coding.hash_key.to_bytes(),
        algorithm: coding.hash_key.algorithm().to_u8(),
        dictionary: coding.dictionary.clone(),
    }
}
