//! The server's Prometheus series. Names follow Prometheus conventions: a `klio_` prefix,
//! base units in the name (`_bytes`, `_seconds`), `_total` on counters; every per-cluster
//! series is labelled `cluster`.

use klio_metrics::prometheus_client::metrics::counter::Counter;
use klio_metrics::prometheus_client::metrics::family::Family;
use klio_metrics::prometheus_client::metrics::gauge::Gauge;
use klio_metrics::prometheus_client::metrics::histogram::Histogram;
use klio_metrics::prometheus_client::registry::Registry;
use klio_metrics::{CertificateLabel, ClusterKindLabels, ClusterLabel, ReasonLabel};

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
    pub(crate) backups: PerCluster<Gauge>,
    pub(crate) blocks_offered: PerCluster<Counter>,
    pub(crate) blocks_held: PerCluster<Counter>,
    pub(crate) oldest_recoverable: PerCluster<Gauge>,
    pub(crate) retention_reclaimed: Family<ClusterKindLabels, Counter>,
    pub(crate) retention_backups_removed: PerCluster<Counter>,
    pub(crate) retention_last_run: PerCluster<Gauge>,
    pub(crate) retention_last_success: PerCluster<Gauge>,
    pub(crate) tier2_lag_bytes: PerCluster<Gauge>,
    pub(crate) tier2_lag_seconds: PerCluster<Gauge>,
    pub(crate) tier2_queue_depth: PerCluster<Gauge>,
    pub(crate) tier2_uploads: Family<ClusterKindLabels, Counter>,
    pub(crate) tier2_uploaded_bytes: PerCluster<Counter>,
    pub(crate) tier2_upload_errors: Family<ClusterKindLabels, Counter>,
    pub(crate) tier2_last_success: PerCluster<Gauge>,
    pub(crate) disk_free: Gauge,
    pub(crate) disk_size: Gauge,
    pub(crate) disk_nearly_full: Gauge,
    pub(crate) certificate_expiry: Family<CertificateLabel, Gauge>,
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
            backups: Family::default(),
            blocks_offered: Family::default(),
            blocks_held: Family::default(),
            oldest_recoverable: Family::default(),
            retention_reclaimed: Family::default(),
            retention_backups_removed: Family::default(),
            retention_last_run: Family::default(),
            retention_last_success: Family::default(),
            tier2_lag_bytes: Family::default(),
            tier2_lag_seconds: Family::default(),
            tier2_queue_depth: Family::default(),
            tier2_uploads: Family::default(),
            tier2_uploaded_bytes: Family::default(),
            tier2_upload_errors: Family::default(),
            tier2_last_success: Family::default(),
            disk_free: Gauge::default(),
            certificate_expiry: Family::default(),
            disk_size: Gauge::default(),
            disk_nearly_full: Gauge::default(),
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
        r.register(
            "backups",
            "Complete backups in the cluster's catalog (what retention keeps)",
            m.backups.clone(),
        );
        r.register(
            "backup_blocks_offered",
            "Block hashes running backups offered the server",
            m.blocks_offered.clone(),
        );
        r.register(
            "backup_blocks_held",
            "Offered block hashes the server already held (deduplicated, not sent)",
            m.blocks_held.clone(),
        );
        r.register(
            "oldest_recoverable_timestamp_seconds",
            "Unix time of the oldest point a restore can reach (the end of the oldest backup)",
            m.oldest_recoverable.clone(),
        );
        r.register(
            "retention_reclaimed_bytes",
            "Bytes retention removed, by kind (wal, blocks)",
            m.retention_reclaimed.clone(),
        );
        r.register(
            "retention_backups_removed",
            "Backups retention removed by policy",
            m.retention_backups_removed.clone(),
        );
        r.register(
            "retention_last_run_timestamp_seconds",
            "Unix time the last retention run ended",
            m.retention_last_run.clone(),
        );
        r.register(
            "retention_last_run_success",
            "1 if the last retention run did all it had to, 0 if it failed",
            m.retention_last_success.clone(),
        );
        r.register(
            "tier2_relay_lag_bytes",
            "Tier 1's durable WAL end minus Tier 2's WAL end on the same timeline",
            m.tier2_lag_bytes.clone(),
        );
        r.register(
            "tier2_relay_lag_seconds",
            "0 when Tier 2 holds all durable WAL, else seconds since it last did",
            m.tier2_lag_seconds.clone(),
        );
        r.register(
            "tier2_queue_depth",
            "Files waiting to be uploaded to Tier 2",
            m.tier2_queue_depth.clone(),
        );
        r.register(
            "tier2_uploads",
            "Files uploaded to Tier 2, by kind (segment, history, partial, pack, index, catalog)",
            m.tier2_uploads.clone(),
        );
        r.register(
            "tier2_uploaded_bytes",
            "Bytes uploaded to Tier 2",
            m.tier2_uploaded_bytes.clone(),
        );
        r.register(
            "tier2_upload_errors",
            "Failed uploads to Tier 2, by kind of error (transport, throttled, access_denied, ...)",
            m.tier2_upload_errors.clone(),
        );
        r.register(
            "tier2_last_success_timestamp_seconds",
            "Unix time of the last successful upload to Tier 2",
            m.tier2_last_success.clone(),
        );
        r.register(
            "certificate_expiry_timestamp_seconds",
            "Unix time a certificate ends its validity (notAfter): the server's and its CA's, and each cluster's client certificate as last presented",
            m.certificate_expiry.clone(),
        );
        r.register(
            "data_dir_free_bytes",
            "Bytes available on the data directory's file system",
            m.disk_free.clone(),
        );
        r.register(
            "data_dir_size_bytes",
            "Size of the data directory's file system",
            m.disk_size.clone(),
        );
        r.register(
            "data_dir_nearly_full",
            "1 when the data directory's file system is used beyond retention.disk_warning",
            m.disk_nearly_full.clone(),
        );
        Self { registry: r, ..m }
    }
}
