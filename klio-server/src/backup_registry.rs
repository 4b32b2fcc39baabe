//! Per-cluster state of base backups: the backup lease (one backup session per cluster at a
//! time; a second one is refused, not queued) and the cluster's cached block index, shared by
//! its backup and catalog sessions so that a request does not reread every pack index.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use klio_proto::klio::ClusterName;
use klio_store::backup::{BackupStore, BackupStoreError, BlockIndex};
use tokio::sync::OwnedMutexGuard;

/// A cluster's block index, shared: the backup session adds the packs it closes, readers look
/// blocks up.
pub(crate) type SharedIndex = Arc<RwLock<BlockIndex>>;

#[derive(Debug, Default)]
struct BackupSlot {
    lease: Arc<tokio::sync::Mutex<()>>,
    index: Mutex<Option<SharedIndex>>,
}

/// The backup state of every cluster that had a backup or catalog session since start.
#[derive(Debug, Default)]
pub(crate) struct BackupRegistry {
    clusters: Mutex<HashMap<ClusterName, Arc<BackupSlot>>>,
}

/// The right to run the one backup session of a cluster; dropping it (however the session
/// ends) lets the next one start.
#[derive(Debug)]
pub(crate) struct BackupLease {
    _guard: OwnedMutexGuard<()>,
}

impl BackupRegistry {
    fn slot(&self, cluster: &ClusterName) -> Arc<BackupSlot> {
        let mut map = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(cluster.clone()).or_default().clone()
    }

    /// Takes the backup lease of `cluster`; `None` while another backup session holds it.
    pub(crate) fn try_lease(&self, cluster: &ClusterName) -> Option<BackupLease> {
        let guard = self.slot(cluster).lease.clone().try_lock_owned().ok()?;
        Some(BackupLease { _guard: guard })
    }

    /// The cluster's block index, read from its pack indexes on first use (blocking I/O: call
    /// it from blocking storage work).
    pub(crate) fn index(
        &self,
        cluster: &ClusterName,
        store: &BackupStore,
    ) -> Result<SharedIndex, BackupStoreError> {
        let slot = self.slot(cluster);
        let mut cached = slot.index.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(index) = &*cached {
            return Ok(index.clone());
        }
        let index = Arc::new(RwLock::new(store.open_index()?));
        *cached = Some(index.clone());
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_backup_lease_per_cluster_released_when_dropped() {
        let registry = BackupRegistry::default();
        let a = ClusterName::new("a").unwrap();
        let b = ClusterName::new("b").unwrap();
        let lease = registry.try_lease(&a).unwrap();
        assert!(registry.try_lease(&a).is_none());
        assert!(
            registry.try_lease(&b).is_some(),
            "clusters do not share leases"
        );
        drop(lease);
        assert!(registry.try_lease(&a).is_some());
    }
}
