//! Retention: each cluster's policy (`config`) enforced on its backups, its WAL archive and
//! its blocks, through the server so that it never races the WAL writer or a running backup.
//!
//! A run (`run`), one per cluster at a time:
//!
//! 1. decides which complete backups the policy keeps (`klio_store::retention::decide`: by
//!    end position and end time, never by id; pinned backups and the `min_backups` floor
//!    always stay) and deletes the others;
//! 2. removes the WAL no retained backup's recovery path needs, judged by LSN and timeline
//!    through the history files (`klio_store::retention::plan_wal`, then a `WalPruner`: only
//!    completed segments and history files, never the segment in progress);
//! 3. reclaims blocks by mark and sweep: it begins marking (so that claims of backup sessions
//!    that end meanwhile are kept, `backup_registry`), lists the catalog, marks every block
//!    the listed backups refer to, then under the index's write lock forgets the blocks
//!    nobody marked or claimed whose pack is older than `block_grace`, and finally removes or
//!    rewrites the packs they leave dead (crash-safe, `klio_store::backup` documents how).
//!
//! With a `tier2` section, each step is clamped to the cluster's relay frontier
//! (`tier2-frontier.json`): a backup not yet relayed stays (`not_yet_in_tier2`), no segment or
//! history file not yet in Tier 2 is pruned, and no pack not yet relayed is removed or
//! rewritten. A frontier that cannot be read fails the run: nothing is removed on a guess.
//!
//! A dry run does 1-3 without removing anything and reports the same numbers. Runs happen
//! on the schedule (`retention.interval`), after each completed backup, and on request
//! (`klio retention run`). A nearly full disk is reported (logs, metrics, `klio status`, the
//! report's notes), never a reason to remove more than the policy allows.

pub mod config;
mod disk;
mod pause;
mod run;
mod schedule;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use klio_proto::klio::ClusterName;
use tokio::sync::mpsc;

pub(crate) use config::RetentionConfig;
pub(crate) use disk::DiskSpace;
pub(crate) use run::{log_wal_removed, run};
pub(crate) use schedule::work;

/// The server's retention settings and the queue of runs asked for after backups.
#[derive(Debug)]
pub(crate) struct Retention {
    config: RetentionConfig,
    data_dir: PathBuf,
    trigger: mpsc::UnboundedSender<ClusterName>,
    triggered: Mutex<Option<mpsc::UnboundedReceiver<ClusterName>>>,
    /// Tier 2 is configured: nothing leaves Tier 1 before the relay's frontier records it.
    tier2: bool,
    /// Wakes the Tier 2 relay when a backup completed.
    backup_completed: tokio::sync::Notify,
}

impl Retention {
    /// Retention with these settings, for the server whose data directory is `data_dir`.
    pub(crate) fn new(config: RetentionConfig, data_dir: &Path) -> Self {
        let (trigger, triggered) = mpsc::unbounded_channel();
        Self {
            config,
            data_dir: data_dir.to_owned(),
            trigger,
            triggered: Mutex::new(Some(triggered)),
            tier2: false,
            backup_completed: tokio::sync::Notify::new(),
        }
    }

    /// With `tier2`, runs keep on Tier 1 whatever the relay has not uploaded yet (backups,
    /// WAL segments and history files, packs), whatever the policy says.
    pub(crate) fn with_tier2(self, tier2: bool) -> Self {
        Self { tier2, ..self }
    }

    /// Notified (to whoever waits at that moment) when a backup of any cluster completed.
    pub(crate) fn backup_completed(&self) -> &tokio::sync::Notify {
        &self.backup_completed
    }

    /// Whether runs are clamped to the Tier 2 frontier.
    pub(crate) fn clamped_to_tier2(&self) -> bool {
        self.tier2
    }

    /// The settings.
    pub(crate) fn config(&self) -> &RetentionConfig {
        &self.config
    }

    /// The server's data directory (for its free space).
    pub(crate) fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Asks the worker for a run of `cluster`, as a backup of it completed (unless
    /// `retention.after_backup` is off); never waits.
    pub(crate) fn after_backup(&self, cluster: &ClusterName) {
        // The relay uploads the new backup now rather than at its next tick; never waits.
        self.backup_completed.notify_waiters();
        if self.config.after_backup {
            // No worker (tests of sessions alone, or a server shutting down): nothing to ask.
            let _ = self.trigger.send(cluster.clone());
        }
    }

    /// The queue of runs asked for, for the one worker.
    fn take_triggers(&self) -> Option<mpsc::UnboundedReceiver<ClusterName>> {
        self.triggered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}
