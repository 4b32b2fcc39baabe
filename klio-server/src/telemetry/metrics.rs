//! The server's Prometheus series. Names follow Prometheus conventions: a `klio_` prefix,
//! base units in the name (`_bytes`, `_seconds`), `_total` on counters; every per-cluster
//! series is labelled `cluster`.

use klio_metrics::prometheus_client::metrics::counter::Counter;
use klio_metrics::prometheus_client::metrics::family::Family;
use klio_metrics::prometheus_client::metrics::gauge::Gauge;
use klio_metrics::prometheus_client::metrics::histogram::Histogram;
use klio_metrics::prometheus_client::registry::Registry;
use klio_metrics::{ClusterKindLabels, ClusterLabel, ReasonLabel};

type PerCluster<M> = Family<ClusterLabel, M>;
type Histograms = Family<ClusterLabel, Histogram, fn() -> Histogram>;

/// Every series the server exports.
#[derive(Debug)]
pub(crate) struct ServerMetrics {
    pub(crate) registry: Registry,
    pub(crate) wal_received: PerCluster<Counter>,
    pub(crate) wal_acknowledged: PerCluster<Counter>,
    pub(crate) durable_lsn: PerCluster<Gauge>,
    pub(crate) durable_timeline: PerCluster<Gauge>,
    pub(crate) last_ack: PerCluster<Gauge>,
    pub(crate) upstream_lsn: PerCluster<Gauge>,
    pub(crate) lag_bytes: PerCluster<Gauge>,
    pub(crate) ack_latency: Histograms,
    pub(crate) fsync_duration: Histograms,
    pub(crate) segments_completed: PerCluster<Counter>,
    pub(crate) archive_size: PerCluster<Gauge>,
    pub(crate) archive_segments: PerCluster<Gauge>,
    pub(crate) archive_gaps: PerCluster<Gauge>,
    pub(crate) recoverable_from: PerCluster<Gauge>,
    pub(crate) recoverable_to: PerCluster<Gauge>,
    pub(crate) connected_clients: PerCluster<Gauge>,
    pub(crate) errors: Family<ClusterKindLabels, Counter>,
    pub(crate) restores_served: Family<ClusterKindLabels, Counter>,
    pub(crate) restore_bytes: PerCluster<Counter>,
    pub(crate) restores_missing: PerCluster<Counter>,
    pub(crate) connections_refused: Family<ReasonLabel, Counter>,
}

impl ServerMetrics {
    pub(crate) fn new() -> Self {
        let histograms = || Histograms::new_with_constructor(klio_metrics::latency_histogram as _);
        let m = Self {
            registry: Registry::with_prefix("klio"),
            wal_received: Family::default(),
            wal_acknowledged: Family::default(),
            durable_lsn: Family::default(),
            durable_timeline: Family::default(),
            last_ack: Family::default(),
            upstream_lsn: Family::default(),
            lag_bytes: Family::default(),
            ack_latency: histograms(),
            fsync_duration: histograms(),
            segments_completed: Family::default(),
            archive_size: Family::default(),
            archive_segments: Family::default(),
            archive_gaps: Family::default(),
            recoverable_from: Family::default(),
            recoverable_to: Family::default(),
            connected_clients: Family::default(),
            errors: Family::default(),
            restores_served: Family::default(),
            restore_bytes: Family::default(),
            restores_missing: Family::default(),
            connections_refused: Family::default(),
        };
        let mut r = m.registry;
        r.register(
            "wal_received_bytes",
            "WAL bytes received from the cluster's client",
            m.wal_received.clone(),
        );
        r.register(
            "wal_acknowledged_bytes",
            "WAL bytes made durable (fsynced) and acknowledged to the client",
            m.wal_acknowledged.clone(),
        );
        r.register(
            "wal_durable_lsn",
            "End of the durable WAL on the newest timeline, as a byte position (LSN)",
            m.durable_lsn.clone(),
        );
        r.register(
            "wal_durable_timeline",
            "The timeline of klio_wal_durable_lsn",
            m.durable_timeline.clone(),
        );
        r.register(
            "wal_last_ack_timestamp_seconds",
            "Unix time of the last durable acknowledgement",
            m.last_ack.clone(),
        );
        r.register(
            "wal_upstream_lsn",
            "End of PostgreSQL's WAL, as its walsender last told the client",
            m.upstream_lsn.clone(),
        );
        r.register(
            "wal_replication_lag_bytes",
            "WAL bytes PostgreSQL has that are not yet durable here",
            m.lag_bytes.clone(),
        );
        r.register(
            "wal_ack_latency_seconds",
            "From a batch of WAL received to its acknowledgement sent (storing and fsync included)",
            m.ack_latency.clone(),
        );
        r.register(
            "wal_fsync_duration_seconds",
            "Duration of the fsyncs that make a batch of WAL durable",
            m.fsync_duration.clone(),
        );
        r.register(
            "wal_segments_completed",
            "WAL segments completed (sealed) since the server started",
            m.segments_completed.clone(),
        );
        r.register(
            "archive_size_bytes",
            "Bytes stored in the cluster's WAL archive",
            m.archive_size.clone(),
        );
        r.register(
            "archive_segments",
            "Completed WAL segments stored in the archive",
            m.archive_segments.clone(),
        );
        r.register(
            "archive_gaps",
            "Runs of missing segments on the path to the newest WAL (0 when continuous)",
            m.archive_gaps.clone(),
        );
        r.register(
            "archive_recoverable_from_lsn",
            "Oldest point from which recovery can replay without a gap to the newest WAL",
            m.recoverable_from.clone(),
        );
        r.register(
            "archive_recoverable_to_lsn",
            "Newest recoverable point (the durable end of the newest timeline)",
            m.recoverable_to.clone(),
        );
        r.register(
            "connected_clients",
            "QUIC connections of the cluster's clients",
            m.connected_clients.clone(),
        );
        r.register(
            "errors",
            "Sessions ended by an error, by kind",
            m.errors.clone(),
        );
        r.register(
            "restore_files_served",
            "Files served for restores, by kind (segment, partial, history)",
            m.restores_served.clone(),
        );
        r.register(
            "restore_served_bytes",
            "Bytes served for restores",
            m.restore_bytes.clone(),
        );
        r.register(
            "restore_files_missing",
            "Restore requests for files the archive does not have",
            m.restores_missing.clone(),
        );
        r.register(
            "connections_refused",
            "Connections refused before they named a cluster, by reason",
            m.connections_refused.clone(),
        );
        Self { registry: r, ..m }
    }
}
