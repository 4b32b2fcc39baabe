//! The retention worker: runs every cluster's retention each `retention.interval`, and a
//! cluster's as soon as one of its backups completes. Each run is blocking work on a thread
//! of its own, so the WAL sessions on the server's runtime never wait for it.

use std::collections::BTreeSet;
use std::sync::Arc;

use klio_proto::klio::ClusterName;
use klio_wal::ErrorChain;
use tokio::sync::watch;

use crate::server::Shared;
use crate::session::BackupEnv;

/// Runs until `stop` turns true.
pub(crate) async fn work(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let Some(mut triggered) = shared.retention.take_triggers() else {
        return;
    };
    let interval = shared.retention.config().interval;
    let mut ticks = interval.map(|every| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    loop {
        let due: BTreeSet<ClusterName> = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            first = triggered.recv() => {
                let Some(first) = first else { return };
                // Backups that completed meanwhile need one run each, not one per backup.
                let mut due = BTreeSet::from([first]);
                while let Ok(more) = triggered.try_recv() {
                    due.insert(more);
                }
                due
            }
            () = next_tick(&mut ticks) => shared.clusters_on_disk(),
        };
        for cluster in due {
            run_logged(&shared, &cluster).await;
        }
    }
}

/// The next scheduled round; never, without a schedule.
async fn next_tick(ticks: &mut Option<tokio::time::Interval>) {
    match ticks {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// One run of `cluster`, its outcome logged and reported to telemetry.
pub(crate) async fn run_logged(shared: &Arc<Shared>, cluster: &ClusterName) {
    let env = BackupEnv::of(shared, cluster);
    let telemetry = shared.telemetry.cluster(cluster);
    let settings = shared.retention.config().clone();
    let run_env = env.clone();
    let outcome = tokio::task::spawn_blocking(move || super::run(&run_env, &settings, false)).await;
    match outcome {
        Ok(Ok(mut report)) => {
            crate::tier2::retention::add_to(&env, &mut report, false).await;
            telemetry.retention_ran(&report);
        }
        Ok(Err(e)) => {
            let text = ErrorChain(&e).to_string();
            tracing::warn!("{text}");
            telemetry.retention_failed(&text);
        }
        Err(e) => {
            let text = format!("retention of cluster {cluster} stopped: {}", ErrorChain(&e));
            tracing::warn!("{text}");
            telemetry.retention_failed(&text);
        }
    }
}
