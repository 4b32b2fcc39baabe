//! The Tier 2 relay in the telemetry: uploads and failures as counters, the relay's position,
//! lag and queue as gauges, and the same in `/status`.

use std::sync::Arc;
use std::time::SystemTime;

use klio_metrics::{ClusterKindLabels, gauge_value};
use klio_wal::WalPosition;

use super::{ClusterTelemetry, lock, rfc3339, status_point, unix_seconds};
use crate::status::{RelayFailure, Tier2RelayStatus};

/// Where a cluster's relay stands after a pass.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RelayProgress {
    /// Tier 2's WAL end.
    pub(crate) wal_end: Option<WalPosition>,
    /// Tier 1's durable end minus `wal_end`, on the same timeline.
    pub(crate) lag_bytes: Option<u64>,
    /// 0 when caught up, else seconds since Tier 2 last was.
    pub(crate) lag_seconds: Option<u64>,
    /// Files waiting to go up.
    pub(crate) pending: u64,
}

impl ClusterTelemetry {
    /// What wakes the cluster's relay: notified (never awaited) when WAL became durable.
    pub(crate) fn relay_wake(&self) -> Arc<tokio::sync::Notify> {
        self.state.relay_wake.clone()
    }

    fn with_tier2(&self, f: impl FnOnce(&mut Tier2RelayStatus)) {
        let mut live = lock(&self.state.live);
        f(live.tier2.get_or_insert_with(Tier2RelayStatus::default));
    }

    fn kind_labels(&self, kind: &str) -> ClusterKindLabels {
        ClusterKindLabels {
            cluster: self.label().cluster.clone(),
            kind: kind.to_owned(),
        }
    }

    /// A file of `kind` (segment, history, partial, pack, index, catalog) went up.
    pub(crate) fn relay_uploaded(&self, kind: &str, bytes: u64) {
        let m = self.m();
        let now = SystemTime::now();
        m.tier2_uploads.get_or_create(&self.kind_labels(kind)).inc();
        m.tier2_uploaded_bytes
            .get_or_create(self.label())
            .inc_by(bytes);
        m.tier2_last_success
            .get_or_create(self.label())
            .set(unix_seconds(now));
        self.with_tier2(|t| t.last_success = Some(rfc3339(now)));
    }

    /// Uploading `file` failed with an error of `kind`; `message` is its chain.
    pub(crate) fn relay_failed(&self, kind: &str, file: &str, message: &str) {
        self.m()
            .tier2_upload_errors
            .get_or_create(&self.kind_labels(kind))
            .inc();
        self.with_tier2(|t| {
            t.last_error = Some(RelayFailure {
                at: rfc3339(SystemTime::now()),
                file: file.to_owned(),
                kind: kind.to_owned(),
                message: message.to_owned(),
            });
        });
    }

    /// The relay of this cluster stopped for good (until the server restarts).
    pub(crate) fn relay_stopped(&self, message: &str) {
        self.with_tier2(|t| t.stopped = Some(message.to_owned()));
    }

    /// A pass ended here.
    pub(crate) fn relay_progress(&self, p: RelayProgress) {
        let m = self.m();
        if let Some(lag) = p.lag_bytes {
            m.tier2_lag_bytes
                .get_or_create(self.label())
                .set(gauge_value(lag));
        }
        if let Some(lag) = p.lag_seconds {
            m.tier2_lag_seconds
                .get_or_create(self.label())
                .set(gauge_value(lag));
        }
        m.tier2_queue_depth
            .get_or_create(self.label())
            .set(gauge_value(p.pending));
        self.with_tier2(|t| {
            t.wal_end = p.wal_end.map(|e| status_point(e.timeline, e.lsn));
            t.lag_bytes = p.lag_bytes;
            t.lag_seconds = p.lag_seconds;
            t.pending = p.pending;
        });
    }
}
