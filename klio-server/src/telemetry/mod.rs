//! What the server tells operators: Prometheus metrics, health and status per cluster, served
//! by a [`klio_metrics::MetricsEndpoint`].
//!
//! Sessions report events through a [`ClusterTelemetry`]; the live state (who streams, the
//! newest acknowledgement, the last error) is kept here, and what is on disk (archive size,
//! recoverable range) is surveyed when a page is asked for, at most every
//! [`SURVEY_INTERVAL`]: from each archive's in-memory index (`klio_store`'s `ArchiveIndex`,
//! built on first use, then kept true by the writer and the pruner), so that a survey costs
//! the same with a million segments as with ten once the index is built.

mod backups;
mod metrics;
mod relay;

pub(crate) use relay::RelayProgress;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use klio_metrics::{
    CertificateLabel, ClusterKindLabels, ClusterLabel, Health, Pages, ReasonLabel, gauge_value,
};
use klio_proto::klio::{ClusterName, ErrorCode};
use klio_store::wal_archive::{ArchiveIndexes, ArchiveSummary};
use klio_wal::{ErrorChain, Lsn, TimelineId, WalPosition};

use crate::certificates::CertificateExpiry;
use crate::status::{
    self, CertificateStatus, ClusterStatus, ServerStatus, StatusPoint, StreamingClient,
};
use metrics::ServerMetrics;

/// How old a survey of the archives may be when a page is served: scrapes and `klio status`
/// then cost at most one look at each archive's index (and one stat of each journal in
/// progress) per cluster per interval.
const SURVEY_INTERVAL: Duration = Duration::from_secs(5);

/// The server's observability state.
#[derive(Debug)]
pub(crate) struct Telemetry {
    metrics: ServerMetrics,
    clusters: Mutex<BTreeMap<ClusterName, Arc<ClusterState>>>,
    data_dir: PathBuf,
    clusters_dir: PathBuf,
    keyring: Option<klio_crypto::Keyring>,
    /// The archives' indexes: a survey reads them instead of listing the archives.
    indexes: ArchiveIndexes,
    disk_warning_percent: u8,
    started: SystemTime,
    survey: Mutex<Option<Survey>>,
    /// The server's certificates as last loaded.
    certificates: Mutex<Vec<CertificateExpiry>>,
}

#[derive(Debug)]
struct Survey {
    at: Instant,
    found: Surveyed,
}

/// What a survey found on disk.
#[derive(Clone, Debug)]
struct Surveyed {
    archives: BTreeMap<String, Result<ArchiveSummary, String>>,
    backups: BTreeMap<String, Result<backups::BackupSurvey, String>>,
    disk: Option<crate::retention::DiskSpace>,
}

#[derive(Debug)]
struct ClusterState {
    label: ClusterLabel,
    live: Mutex<Live>,
    /// Wakes the cluster's Tier 2 relay when WAL became durable (never waits for it).
    relay_wake: Arc<tokio::sync::Notify>,
    /// Marked changed whenever WAL became durable, for the backups waiting for their WAL
    /// (a mark, never a wait: ingest does not block on its receivers).
    wal_stored: tokio::sync::watch::Sender<()>,
}

/// What only the running server knows about a cluster.
#[derive(Debug, Default)]
struct Live {
    connections: u32,
    writer: Option<Writer>,
    writers_started: u64,
    durable: Option<WalPosition>,
    last_ack: Option<SystemTime>,
    upstream: Option<WalPosition>,
    last_error: Option<status::LastError>,
    retention: Option<status::RetentionRun>,
    tier2: Option<status::Tier2RelayStatus>,
    client_certificate_expires: Option<SystemTime>,
}

#[derive(Debug)]
struct Writer {
    id: u64,
    remote: SocketAddr,
    since: SystemTime,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state is plain values: a panic elsewhere cannot leave it half-updated in a way that
    // matters more than losing the pages would.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| gauge_value(d.as_secs()))
}

impl Telemetry {
    pub(crate) fn new(
        data_dir: &std::path::Path,
        keyring: Option<klio_crypto::Keyring>,
        indexes: ArchiveIndexes,
        disk_warning_percent: u8,
    ) -> Self {
        Self {
            metrics: ServerMetrics::new(),
            clusters: Mutex::default(),
            data_dir: data_dir.to_owned(),
            clusters_dir: data_dir.join("clusters"),
            keyring,
            indexes,
            disk_warning_percent,
            started: SystemTime::now(),
            survey: Mutex::default(),
            certificates: Mutex::default(),
        }
    }

    /// Records the server's certificates as just loaded.
    pub(crate) fn set_certificates(&self, expiries: Vec<CertificateExpiry>) {
        for e in &expiries {
            self.metrics
                .certificate_expiry
                .get_or_create(&CertificateLabel {
                    certificate: e.certificate.to_owned(),
                    cluster: String::new(),
                })
                .set(unix_seconds(e.not_after));
        }
        *lock(&self.certificates) = expiries;
    }

    /// The server's certificates as last loaded.
    pub(crate) fn certificates(&self) -> Vec<CertificateExpiry> {
        lock(&self.certificates).clone()
    }

    /// The reporting handle of `cluster`.
    pub(crate) fn cluster(self: &Arc<Self>, cluster: &ClusterName) -> ClusterTelemetry {
        let state = lock(&self.clusters)
            .entry(cluster.clone())
            .or_insert_with(|| {
                Arc::new(ClusterState {
                    label: ClusterLabel {
                        cluster: cluster.to_string(),
                    },
                    live: Mutex::default(),
                    relay_wake: Arc::default(),
                    wal_stored: tokio::sync::watch::Sender::new(()),
                })
            })
            .clone();
        ClusterTelemetry {
            telemetry: self.clone(),
            state,
        }
    }

    /// A connection was refused before it named a cluster (`reason`: `tls`, `no_cluster`).
    pub(crate) fn connection_refused(&self, reason: &str) {
        self.metrics
            .connections_refused
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Summaries of every archive and catalog on disk, and the disk's space, surveyed again
    /// when older than [`SURVEY_INTERVAL`].
    fn survey(&self) -> Surveyed {
        let mut survey = lock(&self.survey);
        if let Some(s) = survey.as_ref().filter(|s| s.at.elapsed() < SURVEY_INTERVAL) {
            return s.found.clone();
        }
        let mut archives = BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir(&self.clusters_dir) {
            for entry in entries.flatten() {
                let Ok(name) = entry.file_name().into_string() else {
                    continue;
                };
                let wal = entry.path().join("wal");
                if !wal.is_dir() {
                    continue;
                }
                // From the archive's index: a listing of the archive only the first time.
                let summary = self
                    .indexes
                    .of(&wal)
                    .summary()
                    .map_err(|e| ErrorChain(&e).to_string());
                archives.insert(name, summary);
            }
        }
        let found = Surveyed {
            archives,
            backups: backups::survey_backups(&self.clusters_dir, self.keyring.as_ref()),
            disk: crate::retention::DiskSpace::of(&self.data_dir),
        };
        *survey = Some(Survey {
            at: Instant::now(),
            found: found.clone(),
        });
        found
    }

    /// Sets the archive gauges from a fresh survey.
    fn refresh_archive_gauges(&self, archives: &BTreeMap<String, Result<ArchiveSummary, String>>) {
        let m = &self.metrics;
        for (name, summary) in archives {
            let Ok(s) = summary else { continue };
            let label = ClusterLabel {
                cluster: name.clone(),
            };
            m.archive_size
                .get_or_create(&label)
                .set(gauge_value(s.bytes));
            m.archive_segments
                .get_or_create(&label)
                .set(gauge_value(s.segments));
            m.archive_gaps
                .get_or_create(&label)
                .set(gauge_value(s.gaps));
            if let Some((from, to)) = s.recoverable {
                m.recoverable_from
                    .get_or_create(&label)
                    .set(gauge_value(from.lsn.0));
                let live_to = ClusterName::new(name)
                    .ok()
                    .and_then(|c| lock(&self.clusters).get(&c).cloned())
                    .and_then(|c| lock(&c.live).durable);
                let to = live_to.map_or(to.lsn, |d| d.lsn.max(to.lsn));
                m.recoverable_to
                    .get_or_create(&label)
                    .set(gauge_value(to.0));
            }
            // Clusters not streamed since the server started still show their position.
            if let Some(newest) = s.recoverable.map(|r| r.1) {
                let d = m.durable_lsn.get_or_create(&label);
                if d.get() < gauge_value(newest.lsn.0) {
                    d.set(gauge_value(newest.lsn.0));
                    m.durable_timeline
                        .get_or_create(&label)
                        .set(i64::from(newest.timeline.get()));
                }
            }
        }
    }

    /// The `/status` document.
    pub(crate) fn status(&self) -> ServerStatus {
        let Surveyed {
            archives,
            backups,
            disk,
        } = self.survey();
        let live: BTreeMap<String, Arc<ClusterState>> = lock(&self.clusters)
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let mut names: Vec<&String> = archives
            .keys()
            .chain(backups.keys())
            .chain(live.keys())
            .collect();
        names.sort();
        names.dedup();
        let clusters = names
            .into_iter()
            .map(|name| {
                let summary = archives.get(name);
                let state = live.get(name).map(|s| lock(&s.live));
                let mut c = cluster_status(name, summary, state.as_deref());
                backups::fill_backup_status(&mut c, backups.get(name));
                c
            })
            .collect();
        ServerStatus {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started: rfc3339(self.started),
            clusters,
            disk: self.disk_status(disk),
            certificates: lock(&self.certificates)
                .iter()
                .map(|e| CertificateStatus {
                    certificate: e.certificate.to_owned(),
                    path: e.path.display().to_string(),
                    not_after: rfc3339(e.not_after),
                    expires_soon: e.expires_soon(SystemTime::now()),
                })
                .collect(),
        }
    }
}

fn status_point(timeline: TimelineId, lsn: Lsn) -> StatusPoint {
    StatusPoint {
        timeline: timeline.get(),
        lsn: lsn.to_string(),
    }
}

fn cluster_status(
    name: &str,
    summary: Option<&Result<ArchiveSummary, String>>,
    live: Option<&Live>,
) -> ClusterStatus {
    let mut c = ClusterStatus {
        cluster: name.to_owned(),
        ..ClusterStatus::default()
    };
    let ok = summary.and_then(|s| s.as_ref().ok());
    c.archive_error = summary.and_then(|s| s.as_ref().err().cloned());
    // The live acknowledgement is newer than any survey; the survey covers clusters that have
    // not streamed since the server started.
    let durable = live
        .and_then(|l| l.durable)
        .into_iter()
        .chain(ok.and_then(|s| s.recoverable).map(|(_, to)| to))
        .max();
    if let Some(WalPosition {
        timeline: t,
        lsn: l,
    }) = durable
    {
        c.timeline = Some(t.get());
        c.durable_lsn = Some(l.to_string());
        c.recoverable_to = Some(status_point(t, l));
    }
    if let Some(s) = ok {
        c.recoverable_from = s
            .recoverable
            .map(|(from, _)| status_point(from.timeline, from.lsn));
        if c.recoverable_from.is_none() {
            c.recoverable_to = None;
        }
        c.gaps = Some(s.gaps);
        c.segments = Some(s.segments);
        c.archive_bytes = Some(s.bytes);
    }
    if let Some(l) = live {
        c.connections = l.connections;
        c.last_ack = l.last_ack.map(rfc3339);
        c.upstream_lsn = l.upstream.map(|u| u.lsn.to_string());
        c.lag_bytes = l
            .upstream
            .zip(durable)
            .map(|(u, d)| u.lsn.0.saturating_sub(d.lsn.0));
        c.streaming_client = l.writer.as_ref().map(|w| StreamingClient {
            address: w.remote.to_string(),
            since: rfc3339(w.since),
        });
        c.last_error = l.last_error.clone();
        c.last_retention = l.retention.clone();
        c.tier2 = l.tier2.clone();
        c.client_certificate_expires = l.client_certificate_expires.map(rfc3339);
        c.client_certificate_expires_soon = l
            .client_certificate_expires
            .is_some_and(|t| crate::certificates::expires_soon(t, SystemTime::now()));
    }
    c
}

impl Pages for Telemetry {
    fn metrics(&self) -> String {
        let found = self.survey();
        self.refresh_archive_gauges(&found.archives);
        self.refresh_backup_gauges(&found.backups, found.disk);
        klio_metrics::encode(&self.metrics.registry)
    }

    fn health(&self) -> Health {
        match std::fs::read_dir(&self.clusters_dir) {
            Ok(_) => Health::Healthy,
            Err(e) => Health::Unhealthy(format!(
                "data directory {} is not readable: {e}",
                self.clusters_dir.display()
            )),
        }
    }

    fn status(&self) -> Option<String> {
        serde_json::to_string(&Self::status(self)).ok()
    }
}

/// Reports the events of one cluster's connections and sessions.
#[derive(Clone, Debug)]
pub(crate) struct ClusterTelemetry {
    telemetry: Arc<Telemetry>,
    state: Arc<ClusterState>,
}

/// Counts a connection while it lives.
#[derive(Debug)]
pub(crate) struct ConnectionGuard(ClusterTelemetry);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let t = &self.0;
        lock(&t.state.live).connections -= 1;
        t.m().connected_clients.get_or_create(t.label()).dec();
    }
}

/// Shows a WAL session as the cluster's streaming client while it lives.
#[derive(Debug)]
pub(crate) struct WriterGuard {
    cluster: ClusterTelemetry,
    id: u64,
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        let mut live = lock(&self.cluster.state.live);
        // A newer session may already have taken over.
        if live.writer.as_ref().is_some_and(|w| w.id == self.id) {
            live.writer = None;
        }
    }
}

impl ClusterTelemetry {
    fn m(&self) -> &ServerMetrics {
        &self.telemetry.metrics
    }

    fn label(&self) -> &ClusterLabel {
        &self.state.label
    }

    /// A client of this cluster connected; it counts until the guard drops.
    pub(crate) fn connected(&self) -> ConnectionGuard {
        lock(&self.state.live).connections += 1;
        self.m().connected_clients.get_or_create(self.label()).inc();
        ConnectionGuard(self.clone())
    }

    /// A client connected with a certificate valid until `not_after`: exported, in the
    /// status, and warned about when it nears its end.
    pub(crate) fn client_certificate(&self, not_after: SystemTime) {
        lock(&self.state.live).client_certificate_expires = Some(not_after);
        self.m()
            .certificate_expiry
            .get_or_create(&CertificateLabel {
                certificate: "client".to_owned(),
                cluster: self.label().cluster.clone(),
            })
            .set(unix_seconds(not_after));
        if crate::certificates::expires_soon(not_after, SystemTime::now()) {
            tracing::warn!(
                "this cluster's client certificate expires at {}: renew it with `klio certs renew -D <certificates directory> --cluster {}` and put the new files in place on the PostgreSQL host",
                rfc3339(not_after),
                self.label().cluster
            );
        }
    }

    /// A WAL session from `remote` started with the archive at `durable`.
    pub(crate) fn writer_started(
        &self,
        remote: SocketAddr,
        durable: Option<WalPosition>,
    ) -> WriterGuard {
        let mut live = lock(&self.state.live);
        live.writers_started += 1;
        let id = live.writers_started;
        live.writer = Some(Writer {
            id,
            remote,
            since: SystemTime::now(),
        });
        if live.durable.is_none() {
            live.durable = durable;
        }
        drop(live);
        if let Some(d) = durable {
            self.set_durable(d);
        }
        WriterGuard {
            cluster: self.clone(),
            id,
        }
    }

    fn set_durable(&self, durable: WalPosition) {
        let m = self.m();
        m.durable_lsn
            .get_or_create(self.label())
            .set(gauge_value(durable.lsn.0));
        m.durable_timeline
            .get_or_create(self.label())
            .set(i64::from(durable.timeline.get()));
    }

    /// WAL bytes arrived.
    pub(crate) fn received(&self, bytes: u64) {
        if bytes > 0 {
            self.m()
                .wal_received
                .get_or_create(self.label())
                .inc_by(bytes);
        }
    }

    /// Changes whenever WAL of the cluster became durable (a segment completed or an
    /// acknowledgement), for whoever waits for the archive to reach a position.
    pub(crate) fn wal_stored(&self) -> tokio::sync::watch::Receiver<()> {
        self.state.wal_stored.subscribe()
    }

    /// A batch was stored: its fsync took `fsync`, it made `bytes` of WAL durable up to `ack`,
    /// completing `segments` segments.
    pub(crate) fn stored(
        &self,
        fsync: Option<Duration>,
        bytes: u64,
        segments: u64,
        ack: Option<WalPosition>,
    ) {
        let m = self.m();
        if let Some(d) = fsync {
            m.fsync_duration
                .get_or_create(self.label())
                .observe(d.as_secs_f64());
        }
        if bytes > 0 {
            m.wal_acknowledged.get_or_create(self.label()).inc_by(bytes);
        }
        if segments > 0 {
            m.segments_completed
                .get_or_create(self.label())
                .inc_by(segments);
        }
        if segments > 0 || ack.is_some() {
            // A permit, not a wait: ingest never waits on Tier 2.
            self.state.relay_wake.notify_one();
            self.state.wal_stored.send_modify(|()| {});
        }
        if let Some(ack) = ack {
            let now = SystemTime::now();
            let upstream = {
                let mut live = lock(&self.state.live);
                live.durable = Some(ack);
                live.last_ack = Some(now);
                live.upstream
            };
            self.set_durable(ack);
            m.last_ack
                .get_or_create(self.label())
                .set(unix_seconds(now));
            self.set_lag(upstream, Some(ack));
        }
    }

    /// An acknowledgement was sent, `latency` after its batch was received.
    pub(crate) fn acknowledged(&self, latency: Duration) {
        self.m()
            .ack_latency
            .get_or_create(self.label())
            .observe(latency.as_secs_f64());
    }

    /// The client says PostgreSQL's WAL ends at `wal_end` on `timeline`.
    pub(crate) fn upstream(&self, timeline: TimelineId, wal_end: Lsn) {
        let durable = {
            let mut live = lock(&self.state.live);
            live.upstream = Some(WalPosition::new(timeline, wal_end));
            live.durable
        };
        self.m()
            .upstream_lsn
            .get_or_create(self.label())
            .set(gauge_value(wal_end.0));
        self.set_lag(Some(WalPosition::new(timeline, wal_end)), durable);
    }

    fn set_lag(&self, upstream: Option<WalPosition>, durable: Option<WalPosition>) {
        if let Some((u, d)) = upstream.zip(durable) {
            self.m()
                .lag_bytes
                .get_or_create(self.label())
                .set(gauge_value(u.lsn.0.saturating_sub(d.lsn.0)));
        }
    }

    /// A session ended with an error that the client was told.
    pub(crate) fn error(&self, code: ErrorCode, message: &str) {
        let kind = code.name().to_owned();
        self.m()
            .errors
            .get_or_create(&ClusterKindLabels {
                cluster: self.label().cluster.clone(),
                kind: kind.clone(),
            })
            .inc();
        if code == ErrorCode::Preempted {
            // A client reconnecting takes over from its own old session: routine, not an
            // error to show an operator.
            return;
        }
        lock(&self.state.live).last_error = Some(status::LastError {
            at: rfc3339(SystemTime::now()),
            kind,
            message: message.to_owned(),
        });
    }

    /// A file was served for a restore (`kind`: segment, partial, history).
    pub(crate) fn restore_served(&self, kind: &str, bytes: u64) {
        let m = self.m();
        m.restores_served
            .get_or_create(&ClusterKindLabels {
                cluster: self.label().cluster.clone(),
                kind: kind.to_owned(),
            })
            .inc();
        m.restore_bytes.get_or_create(self.label()).inc_by(bytes);
    }

    /// A restore asked for a file the archive does not have.
    pub(crate) fn restore_missing(&self) {
        self.m().restores_missing.get_or_create(self.label()).inc();
    }
}
