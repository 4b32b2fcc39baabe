//! Per-cluster state of base backups: the backup lease (one backup session per cluster at a
//! time; a second one is refused, not queued), the cluster's cached block index, shared by
//! its backup and catalog sessions so that a request does not reread every pack index, the
//! claims of a running backup on blocks, and the locks that keep retention apart from
//! backups and from itself.
//!
//! # Claims
//!
//! A block the server told a running backup it holds (or that the backup stored, or named in
//! a file entry) must stay until that backup ends, although no catalog entry refers to it yet.
//! The session records such blocks as claims on their index slots, always while it holds the
//! index lock under which it found them held; retention forgets unreferenced blocks only under
//! the index's write lock and only those nobody claims. A session that ends while retention
//! marks (its backup maybe published after retention listed the catalog) leaves its claims
//! until that sweep has chosen what to forget.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use klio_proto::klio::ClusterName;
use klio_store::backup::{BackupStore, BackupStoreError, BlockIndex, SlotSet};
use tokio::sync::OwnedMutexGuard;

/// A cluster's block index, shared: the backup session adds the packs it closes, readers look
/// blocks up.
pub(crate) type SharedIndex = Arc<RwLock<BlockIndex>>;

#[derive(Debug, Default)]
struct BackupSlot {
    lease: Arc<tokio::sync::Mutex<()>>,
    index: Mutex<Option<SharedIndex>>,
    claims: Mutex<ClaimBook>,
    /// Changes to the catalog's directories: a backup's start (which clears leftovers in
    /// `staging/` and `deleted/`), deletions and pins.
    catalog: Mutex<()>,
    /// One retention run of the cluster at a time.
    retention: Mutex<()>,
}

/// The claims of a cluster's running backup sessions.
#[derive(Debug, Default)]
struct ClaimBook {
    next_session: u64,
    sessions: HashMap<u64, SlotSet>,
    sweep: SweepState,
}

/// Whether retention is choosing blocks to forget.
#[derive(Debug, Default)]
enum SweepState {
    #[default]
    Idle,
    /// A sweep listed the catalog and marks: the claims of sessions that end meanwhile stay
    /// here until it has chosen.
    Marking { ended: Vec<SlotSet> },
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain values and unit locks: a panic elsewhere leaves nothing half-updated.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A backup session's claims on index slots; dropping it (however the session ends) ends them.
#[derive(Debug)]
pub(crate) struct Claims {
    slot: Arc<BackupSlot>,
    session: u64,
}

impl Claims {
    /// Claims `slots`. Call it while holding the index lock (read or write) under which the
    /// slots were found held or added, so that no sweep chooses between the two.
    pub(crate) fn claim(&self, slots: impl IntoIterator<Item = u32>) {
        let mut book = lock(&self.slot.claims);
        if let Some(set) = book.sessions.get_mut(&self.session) {
            for s in slots {
                set.insert(s);
            }
        }
    }
}

impl Drop for Claims {
    fn drop(&mut self) {
        let mut book = lock(&self.slot.claims);
        let Some(set) = book.sessions.remove(&self.session) else {
            return;
        };
        if let SweepState::Marking { ended } = &mut book.sweep {
            ended.push(set);
        }
    }
}

/// A sweep between listing the catalog and choosing what to forget; dropping it ends that.
#[derive(Debug)]
pub(crate) struct Marking {
    slot: Arc<BackupSlot>,
}

impl Marking {
    /// Every slot claimed now, or by a session that ended since the sweep began. Call it
    /// under the index's write lock, right before choosing.
    pub(crate) fn claimed(&self) -> SlotSet {
        let book = lock(&self.slot.claims);
        let mut all = SlotSet::default();
        for set in book.sessions.values() {
            all.union_with(set);
        }
        if let SweepState::Marking { ended } = &book.sweep {
            for set in ended {
                all.union_with(set);
            }
        }
        all
    }
}

impl Drop for Marking {
    fn drop(&mut self) {
        lock(&self.slot.claims).sweep = SweepState::Idle;
    }
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

    /// Starts recording claims of a new backup session of `cluster`.
    pub(crate) fn claims(&self, cluster: &ClusterName) -> Claims {
        let slot = self.slot(cluster);
        let session = {
            let mut book = lock(&slot.claims);
            book.next_session += 1;
            let id = book.next_session;
            book.sessions.insert(id, SlotSet::default());
            id
        };
        Claims { slot, session }
    }

    /// Starts a sweep's marking of `cluster` (before it lists the catalog): until the returned
    /// guard is dropped, claims of sessions that end are kept for it.
    pub(crate) fn begin_marking(&self, cluster: &ClusterName) -> Marking {
        let slot = self.slot(cluster);
        lock(&slot.claims).sweep = SweepState::Marking { ended: Vec::new() };
        Marking { slot }
    }

    /// Runs `f` while no other change to `cluster`'s catalog directories runs.
    pub(crate) fn with_catalog_lock<T>(&self, cluster: &ClusterName, f: impl FnOnce() -> T) -> T {
        let slot = self.slot(cluster);
        let _guard = lock(&slot.catalog);
        f()
    }

    /// Runs `f` while no other retention run of `cluster` runs (blocking: waits for one).
    pub(crate) fn with_retention_lock<T>(&self, cluster: &ClusterName, f: impl FnOnce() -> T) -> T {
        let slot = self.slot(cluster);
        let _guard = lock(&slot.retention);
        f()
    }

    /// The cluster's block index, read from its pack indexes on first use (blocking I/O: call
    /// it from blocking storage work). The first load also finishes what a crash interrupted
    /// (packs without index, pack removals; `BackupStore::open_index`).
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

    #[test]
    fn claims_of_a_session_that_ends_while_a_sweep_marks_stay_until_it_chooses() {
        let registry = BackupRegistry::default();
        let a = ClusterName::new("a").unwrap();
        let running = registry.claims(&a);
        running.claim([1, 2]);
        let ending = registry.claims(&a);
        ending.claim([7]);
        let marking = registry.begin_marking(&a);
        drop(ending);
        let claimed = marking.claimed();
        assert!(claimed.contains(1) && claimed.contains(2) && claimed.contains(7));
        drop(marking);
        let ended_before = registry.claims(&a);
        ended_before.claim([9]);
        drop(ended_before);
        let marking = registry.begin_marking(&a);
        let claimed = marking.claimed();
        assert!(claimed.contains(1) && !claimed.contains(7) && !claimed.contains(9));
        drop(running);
        assert!(!registry.begin_marking(&a).claimed().contains(1));
    }
}
