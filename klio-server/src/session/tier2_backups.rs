//! Backups read from Tier 2: those Tier 1 does not hold (or a read-only server, which has no
//! Tier 1), served from the [`Tier2Cache`] by a [`BackupStore`] over the cache's copy of the
//! cluster's `backups/` directory, with every check of the store's formats.
//!
//! - The catalog is one LIST of `clusters/<c>/backups/catalog/`: a backup is in Tier 2 when
//!   its `entry.json` object is (the relay uploads it last, after the backup's blocks).
//! - A backup to serve has its hash key, entry, file list and manifest fetched (and its pin
//!   marker when Tier 2 has one).
//! - Blocks: the block index is built from every `backups/packs/*.idx` object (a LIST and a
//!   fetch of each index not cached; they are small), kept per cluster and rebuilt when a
//!   requested block is not in it; the packs holding the requested blocks are fetched whole
//!   and read with the store's pack reader.
//! - Verifying a backup checks its WAL range in Tier 1, else in Tier 2: the segments and
//!   history files the check finds missing are fetched into the cache (and read through
//!   their formats' checks) one at a time. A backup still being published waits for its WAL
//!   in Tier 1 only: it must be durable on the server that acknowledges it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, RwLock};

use klio_crypto::Keyring;
use klio_proto::klio::{BackupInfo, BlockHash, ClusterName, ErrorCode};
use klio_store::backup::{
    BackupId, BackupStore, BackupStoreError, DICTIONARY_FILE, WalCoverage, wal_coverage,
};
use klio_store::wal_archive::WalArchiveReader;
use klio_wal::{ErrorChain, WalFileName, WalPosition};

use super::error_code::{Request, backup_refusal, fetch_refusal, refusal};
use super::{End, blocking, restore};
use crate::backup_registry::SharedIndex;
use crate::server::Shared;
use crate::tier2::fetch::Tier2Cache;
use crate::tier2::{Tier2, layout};

/// What Tier 2's catalog holds of one backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Listed {
    /// Its pin marker is there too.
    pub(super) pinned: bool,
}

/// One cluster's backups in Tier 2.
#[derive(Clone, Debug)]
pub(crate) struct Tier2Backups {
    tier2: Arc<Tier2>,
    cache: Arc<Tier2Cache>,
    cluster: ClusterName,
    /// The store over the cache's copy of the cluster's `backups/`.
    store: BackupStore,
    /// Opens the WAL fetched into the cache.
    keyring: Option<Keyring>,
}

impl Tier2Backups {
    /// The cluster's Tier 2 backups, when the server has a Tier 2.
    pub(crate) fn of(shared: &Shared, cluster: &ClusterName) -> Option<Self> {
        let (tier2, cache) = (shared.tier2.clone()?, shared.tier2_cache.clone()?);
        let store = BackupStore::new(
            &cache.cluster_dir(cluster).join("backups"),
            shared.storage.keyring.clone(),
        );
        Some(Self {
            tier2,
            cache,
            cluster: cluster.clone(),
            store,
            keyring: shared.storage.keyring.clone(),
        })
    }

    /// The `tier2` section.
    pub(crate) fn settings(&self) -> &crate::tier2::Tier2Settings {
        &self.tier2.settings
    }

    /// Held by Tier 2's retention runs.
    pub(crate) fn retention_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.tier2.retention_runs
    }

    /// Tier 2's retention run over this cluster with `policy` (`tier1_packs`: Tier 1's
    /// `packs/` directory of the cluster).
    pub(crate) fn retention(
        &self,
        policy: crate::retention::config::ClusterPolicy,
        tier1_packs: std::path::PathBuf,
        dry_run: bool,
    ) -> crate::tier2::retention::Tier2Retention<'_> {
        crate::tier2::retention::Tier2Retention {
            tier2: &self.tier2,
            cache: &self.cache,
            cluster: &self.cluster,
            keyring: self.keyring.clone(),
            tier1_packs,
            policy,
            dry_run,
        }
    }

    /// The store serving what was fetched.
    pub(super) fn store(&self) -> &BackupStore {
        &self.store
    }

    /// The backups Tier 2's catalog holds, by id (one LIST).
    pub(super) async fn listed(&self) -> Result<BTreeMap<BackupId, Listed>, End> {
        let prefix = layout::backup_key(&self.cluster, "catalog/");
        let store_prefix = layout::backup_key(&self.cluster, "");
        let keys = self.list(&prefix).await?;
        let names: BTreeSet<&str> = keys
            .iter()
            .filter_map(|k| k.strip_prefix(&store_prefix))
            .collect();
        Ok(names
            .iter()
            .filter_map(|name| BackupStore::entry_file_of(name))
            .map(|id| {
                let pinned = names.contains(BackupStore::pin_file(&id).as_str());
                (id, Listed { pinned })
            })
            .collect())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, End> {
        let keys = self.tier2.store.list(prefix).await.map_err(|e| {
            End::Refused(
                ErrorCode::Storage,
                format!("cannot list {prefix} in Tier 2: {}", ErrorChain(&e)),
            )
        })?;
        Ok(keys.into_iter().map(|(k, _)| k).collect())
    }

    /// Fetches the store file `relative` (`/` separators) of the cluster's `backups/`.
    async fn fetch(&self, relative: &str) -> Result<bool, End> {
        let path = Path::new("backups").join(relative);
        Ok(self
            .cache
            .fetch(&self.cluster, &path)
            .await
            .map_err(|e| fetch_refusal(&e))?
            .is_some())
    }

    /// Removes a cached copy of the store file `relative` (a pin marker that may be gone).
    fn forget(&self, relative: &str) {
        self.cache.forget(
            &self
                .cache
                .cluster_dir(&self.cluster)
                .join("backups")
                .join(relative),
        );
    }

    /// The entry of backup `id` listed in Tier 2 as `listed`, fetched and read.
    pub(super) async fn entry(&self, id: &BackupId, listed: Listed) -> Result<BackupInfo, End> {
        let [_, entry, ..] = BackupStore::backup_files(id);
        self.fetch(&entry).await?;
        self.fetch_pin(id, listed).await?;
        let (store, id) = (self.store.clone(), id.clone());
        blocking(move || store.entry(&id))
            .await?
            .map_err(|e| backup_refusal(&e))
    }

    async fn fetch_pin(&self, id: &BackupId, listed: Listed) -> Result<(), End> {
        let pin = BackupStore::pin_file(id);
        if listed.pinned {
            self.fetch(&pin).await?;
        } else {
            self.forget(&pin);
        }
        Ok(())
    }

    /// Fetches everything serving backup `id` reads but its blocks; `false` when Tier 2 has no
    /// such backup.
    pub(super) async fn fetch_backup(&self, id: &BackupId) -> Result<bool, End> {
        let files = BackupStore::backup_files(id);
        let [key, entry, ..] = &files;
        if !self.fetch(entry).await? {
            return Ok(false);
        }
        if !self.fetch(key).await? {
            return Err(backup_refusal(&BackupStoreError::MissingHashKey {
                path: self.store.dir().join(key),
            }));
        }
        // A cluster has a dictionary once a backup was big enough to sample one; the relay
        // puts it up before any pack of a backup that compressed against it.
        self.fetch(DICTIONARY_FILE).await?;
        for file in &files[2..] {
            self.fetch(file).await?;
        }
        Ok(true)
    }

    /// A block index of Tier 2's packs that holds every one of `wanted` that Tier 2 has: the
    /// one kept for the cluster, or a new one if some are not in it.
    pub(super) async fn index_with(&self, wanted: &[BlockHash]) -> Result<SharedIndex, End> {
        if let Some(index) = self.cache.block_index(&self.cluster) {
            let idx = index.read().unwrap_or_else(|p| p.into_inner());
            if wanted.iter().all(|h| idx.contains(h)) {
                drop(idx);
                return Ok(index);
            }
        }
        let prefix = layout::backup_key(&self.cluster, "packs/");
        let store_prefix = layout::backup_key(&self.cluster, "");
        for key in self.list(&prefix).await? {
            if let Some(relative) = key.strip_prefix(&store_prefix)
                && relative.ends_with(".idx")
            {
                self.fetch(relative).await?;
            }
        }
        let store = self.store.clone();
        let index = blocking(move || store.load_index())
            .await?
            .map_err(|e| backup_refusal(&e))?;
        let index = Arc::new(RwLock::new(index));
        self.cache.set_block_index(&self.cluster, index.clone());
        Ok(index)
    }

    /// Whether Tier 2 holds all WAL from `start` to `end` ([`wal_coverage`] of the cache, the
    /// segments and history files it lacks fetched one at a time as the check finds them);
    /// `None` when Tier 2 has no WAL of the cluster.
    pub(super) async fn wal_coverage(
        &self,
        start: WalPosition,
        end: WalPosition,
    ) -> Result<Option<WalCoverage>, End> {
        let Some(dir) = restore::tier2_wal_dir(&self.cache, &self.cluster).await? else {
            return Ok(None);
        };
        let mut fetched = BTreeSet::new();
        loop {
            let (reading, keyring) = (dir.clone(), self.keyring.clone());
            let (coverage, size) = blocking(move || {
                let archive = WalArchiveReader::open_with(&reading, keyring)?;
                let size = archive.identity().segment_size;
                wal_coverage(&archive, start, end).map(|c| (c, size))
            })
            .await?
            .map_err(|e| refusal(&e, Request::Position))?;
            let wanted = match &coverage {
                WalCoverage::MissingSegment { name } | WalCoverage::ShortOfEnd { name, .. } => {
                    name.clone()
                }
                WalCoverage::MissingHistory { timeline } => WalFileName::History {
                    timeline: *timeline,
                }
                .to_string_with(size),
                _ => return Ok(Some(coverage)),
            };
            // Each file is fetched once: one Tier 2 lacks (or holds short) is the answer.
            if !fetched.insert(wanted.clone()) {
                return Ok(Some(coverage));
            }
            let keyring = self.keyring.clone();
            if restore::from_tier2(&self.cache, keyring, &self.cluster, &wanted)
                .await?
                .is_none()
            {
                return Ok(Some(coverage));
            }
        }
    }

    /// Fetches the packs that hold `hashes` in `index` (the hashes it does not hold are left
    /// for the reader to report missing).
    pub(super) async fn fetch_packs(
        &self,
        index: &SharedIndex,
        hashes: &[BlockHash],
    ) -> Result<(), End> {
        let packs_dir = self.store.packs_dir();
        let packs: BTreeSet<String> = {
            let idx = index.read().unwrap_or_else(|p| p.into_inner());
            let reader = self.store.block_reader();
            hashes
                .iter()
                .filter(|h| idx.contains(h))
                .filter_map(|h| {
                    let path = reader.pack_path(&idx, h);
                    let name = path.strip_prefix(&packs_dir).ok()?.to_str()?;
                    Some(format!("packs/{name}"))
                })
                .collect()
        };
        for pack in packs {
            self.fetch(&pack).await?;
        }
        Ok(())
    }
}
