//! One writer per cluster: a new WAL session of a cluster takes over from the previous one
//! (which may belong to a client that died without closing its connection).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use klio_proto::klio::ClusterName;
use tokio::sync::{OwnedMutexGuard, watch};

/// Per-cluster coordination.
#[derive(Debug)]
struct ClusterSlot {
    writer: Arc<tokio::sync::Mutex<()>>,
    generation: watch::Sender<u64>,
}

/// All clusters that have had a session since start.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    clusters: Mutex<HashMap<ClusterName, Arc<ClusterSlot>>>,
}

/// The right to write a cluster's archive; `preempted` fires when a newer session wants it.
#[derive(Debug)]
pub(crate) struct WriterLease {
    _guard: OwnedMutexGuard<()>,
    generation: u64,
    watch: watch::Receiver<u64>,
}

impl WriterLease {
    /// Resolves when a newer session of the same cluster asks for the archive.
    pub(crate) async fn preempted(&mut self) {
        let mine = self.generation;
        let _ = self.watch.wait_for(|g| *g != mine).await;
    }
}

impl Registry {
    /// Takes the writer role for `cluster`, asking a current writer to stop first.
    pub(crate) async fn acquire_writer(&self, cluster: &ClusterName) -> WriterLease {
        let slot = {
            let mut map = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(cluster.clone())
                .or_insert_with(|| {
                    Arc::new(ClusterSlot {
                        writer: Arc::new(tokio::sync::Mutex::new(())),
                        generation: watch::channel(0).0,
                    })
                })
                .clone()
        };
        let mut generation = 0;
        slot.generation.send_modify(|g| {
            *g += 1;
            generation = *g;
        });
        let guard = slot.writer.clone().lock_owned().await;
        WriterLease {
            _guard: guard,
            generation,
            watch: slot.generation.subscribe(),
        }
    }
}
