//! The QUIC listener: accepts connections, identifies their cluster, runs their sessions.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use klio_proto::klio::ClusterName;
use klio_store::wal_archive::{ArchiveIndex, ArchiveIndexes, WalArchiveError};
use klio_wal::{ErrorChain, FsAction, FsError};
use tracing::Instrument;

use crate::backup_registry::BackupRegistry;
use crate::certificates::CertificateReloader;
use crate::config::ServerConfig;
use crate::registry::Registry;
use crate::retention::Retention;
use crate::session;
use crate::telemetry::Telemetry;
use crate::tier2::ServerMode;
use crate::tls::{self, TlsSetupError};

/// The server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// TLS files are missing or invalid.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    /// Encryption keys could not be loaded.
    #[error(transparent)]
    Keys(#[from] crate::keys::KeyFileError),
    /// The data directory (or a file in it) is unusable.
    #[error(transparent)]
    DataDir(#[from] FsError),
    /// The system's random number generator failed.
    #[error(
        "the system's random number generator failed while creating the QUIC endpoint keys: \
         check that the kernel's getrandom (or /dev/urandom) works, then start again"
    )]
    Randomness,
    /// Another process holds the data directory.
    #[error(
        "data directory {0} is in use by another klio server (or `klio keys rotate`): stop it first"
    )]
    DataDirInUse(PathBuf),
    /// The metrics listener could not be bound.
    #[error(transparent)]
    Metrics(#[from] klio_metrics::MetricsError),
    /// A read-write server was pointed at a read-only server's data directory.
    #[error(
        "data directory {0} is a read-only server's cache of Tier 2, not a Tier 1 archive: give \
         the read-write server a data directory of its own (or start this one with mode: read-only)"
    )]
    ReadOnlyDataDir(PathBuf),
    /// A read-only server was pointed at a read-write server's data directory.
    #[error(
        "data directory {0} holds a Tier 1 archive, which a read-only server would evict as a \
         cache: give the read-only server an empty data directory of its own"
    )]
    Tier1DataDir(PathBuf),
    /// The `tier2` section cannot be used.
    #[error("cannot set up Tier 2")]
    Tier2(#[source] klio_tier2::Tier2Error),
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// State shared by all connections.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) data_dir: PathBuf,
    pub(crate) registry: Registry,
    /// Per cluster: the backup lease and the cached block index.
    pub(crate) backups: Arc<BackupRegistry>,
    /// How archives store WAL (encrypted with these keys, or plain); its `indexes` are
    /// [`Shared::indexes`], so that each cluster's writer keeps its archive's index true.
    pub(crate) storage: klio_store::wal_archive::StorageOptions,
    /// The in-memory index of each cluster's WAL archive, built on its first question
    /// (nothing per cluster at start): restores, positions and the status survey read these.
    pub(crate) indexes: ArchiveIndexes,
    /// Files being read for restores at once (each is held whole in memory while sent).
    pub(crate) file_reads: tokio::sync::Semaphore,
    /// WAL read by ingest sessions and not yet stored, and the connections' receive windows,
    /// across all clusters.
    pub(crate) ingest_budget: Arc<crate::ingest_budget::IngestBudget>,
    /// Metrics, health and status.
    pub(crate) telemetry: Arc<Telemetry>,
    /// Retention settings and the runs asked for after backups.
    pub(crate) retention: Arc<Retention>,
    /// Read-write, or read-only from Tier 2.
    pub(crate) mode: ServerMode,
    /// The object storage relayed to and read from, if configured.
    pub(crate) tier2: Option<Arc<crate::tier2::Tier2>>,
    /// Where files read from Tier 2 are kept while served (with `tier2`).
    pub(crate) tier2_cache: Option<Arc<crate::tier2::fetch::Tier2Cache>>,
}

/// How often the expiry of the server's certificates is looked at again while it runs.
const CERTIFICATE_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(86_400);

/// Files read for restores at the same time, across all clients: bounds the server's memory
/// (a 16 MiB segment each) whatever the clients' prefetch settings.
const CONCURRENT_FILE_READS: usize = 16;

impl Shared {
    /// The WAL archive directory of a cluster.
    pub(crate) fn wal_dir(&self, cluster: &ClusterName) -> PathBuf {
        self.data_dir
            .join("clusters")
            .join(cluster.as_str())
            .join("wal")
    }

    /// The index of a cluster's WAL archive (see [`Shared::indexes`]).
    pub(crate) fn wal_index(&self, cluster: &ClusterName) -> Arc<ArchiveIndex> {
        self.indexes.of(&self.wal_dir(cluster))
    }

    /// Every cluster with a directory under `clusters/` (for the workers that visit them all).
    pub(crate) fn clusters_on_disk(&self) -> std::collections::BTreeSet<ClusterName> {
        let Ok(entries) = std::fs::read_dir(self.data_dir.join("clusters")) else {
            return Default::default();
        };
        entries
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|name| ClusterName::new(&name).ok())
            .collect()
    }

    /// The backup store of a cluster (blocks and catalog), sealing with the server's keyring.
    pub(crate) fn backup_store(&self, cluster: &ClusterName) -> klio_store::backup::BackupStore {
        let dir = self
            .data_dir
            .join("clusters")
            .join(cluster.as_str())
            .join("backups");
        klio_store::backup::BackupStore::new(&dir, self.storage.keyring.clone())
    }
}

/// A bound Klio server.
#[derive(Debug)]
pub struct Server {
    endpoint: quinn::Endpoint,
    metrics: Option<klio_metrics::MetricsEndpoint>,
    /// Read again by [`Server::certificate_reloader`].
    tls_files: tls::TlsFiles,
    shared: Arc<Shared>,
    /// Held while the server runs: one process per data directory.
    _lock: std::fs::File,
}

impl Server {
    /// Checks the configuration, prepares the data directory and binds the sockets (QUIC, and
    /// the metrics listener if configured), and builds the Tier 2 client. Must be called
    /// inside a Tokio runtime.
    pub async fn bind(config: &ServerConfig) -> Result<Self, ServerError> {
        let quic = tls::quic_server_config(&config.tls)?;
        let certificates = crate::certificates::expiries(&config.tls)?;
        crate::certificates::refuse_expired_server_certificate(&certificates)?;
        crate::certificates::warn_if_expiring(&certificates);
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| FsError::new(FsAction::CreateDirectory, &config.data_dir, e))?;
        let lock = crate::data_dir_lock::lock(&config.data_dir)?;
        crate::data_dir_mode::claim(&config.data_dir, config.mode)?;
        let mut storage = match &config.encryption {
            None => klio_store::wal_archive::StorageOptions::default(),
            Some(e) => klio_store::wal_archive::StorageOptions {
                keyring: Some(crate::keys::load_keyring(&e.key, &e.old_keys)?),
                seal: klio_crypto::SealOptions {
                    compression: e.compression,
                    ..Default::default()
                },
                indexes: None,
            },
        };
        let indexes = ArchiveIndexes::new(storage.keyring.clone());
        storage.indexes = Some(indexes.clone());
        if config.mode == ServerMode::ReadWrite {
            // A read-only server has no Tier 1: `clusters/` is its cache, made as it fills.
            let clusters = config.data_dir.join("clusters");
            std::fs::create_dir_all(&clusters)
                .map_err(|e| FsError::new(FsAction::CreateDirectory, &clusters, e))?;
        }
        let endpoint_config = crate::endpoint_keys::endpoint_config(&config.data_dir)?;
        let bind_err = |source| ServerError::Bind {
            addr: config.listen,
            source,
        };
        let socket = std::net::UdpSocket::bind(config.listen).map_err(bind_err)?;
        let endpoint = quinn::Endpoint::new(
            endpoint_config,
            Some(quic),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(bind_err)?;
        let tier2 = match &config.tier2 {
            None => None,
            Some(settings) => Some(Arc::new(
                crate::tier2::Tier2::connect(settings.clone())
                    .await
                    .map_err(ServerError::Tier2)?,
            )),
        };
        let tier2_cache = tier2.as_ref().map(|t| {
            let root = match config.mode {
                ServerMode::ReadWrite => config.data_dir.join(crate::tier2::fetch::CACHE_DIR),
                ServerMode::ReadOnly => config.data_dir.clone(),
            };
            Arc::new(crate::tier2::fetch::Tier2Cache::new(t.clone(), root))
        });
        let metrics = config
            .metrics_listen
            .map(klio_metrics::MetricsEndpoint::bind)
            .transpose()?;
        let telemetry = Arc::new(Telemetry::new(
            &config.data_dir,
            storage.keyring.clone(),
            indexes.clone(),
            config.retention.disk_warning_percent,
        ));
        telemetry.set_certificates(certificates);
        Ok(Self {
            endpoint,
            metrics,
            tls_files: config.tls.clone(),
            shared: Arc::new(Shared {
                data_dir: config.data_dir.clone(),
                registry: Registry::default(),
                backups: Arc::new(BackupRegistry::default()),
                storage,
                indexes,
                file_reads: tokio::sync::Semaphore::new(CONCURRENT_FILE_READS),
                ingest_budget: crate::ingest_budget::IngestBudget::new(config.ingest_memory),
                telemetry,
                retention: Arc::new(
                    Retention::new(config.retention.clone(), &config.data_dir)
                        .with_tier2(config.tier2.is_some()),
                ),
                mode: config.mode,
                tier2,
                tier2_cache,
            }),
            _lock: lock,
        })
    }

    /// What reloads the server's certificates from their files (see
    /// [`CertificateReloader::reload`]), for the caller's SIGHUP handler.
    pub fn certificate_reloader(&self) -> CertificateReloader {
        CertificateReloader {
            endpoint: self.endpoint.clone(),
            files: self.tls_files.clone(),
            telemetry: self.shared.telemetry.clone(),
        }
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The address of the metrics listener, if there is one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|m| m.local_addr().ok())
    }

    /// Serves connections until `shutdown` resolves.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let (stop_metrics, metrics_stopped) = tokio::sync::watch::channel(false);
        let metrics_stopped_for_retention = metrics_stopped.clone();
        if let Some(m) = self.metrics.take() {
            if let Ok(addr) = m.local_addr() {
                tracing::info!("metrics on http://{addr}/metrics (also /healthz and /status)");
            }
            let pages: Arc<dyn klio_metrics::Pages> = self.shared.telemetry.clone();
            let mut stopped = metrics_stopped;
            tokio::spawn(m.serve(pages, async move {
                let _ = stopped.wait_for(|s| *s).await;
            }));
        }
        tracing::info!(
            "listening on {} (data directory {}, {})",
            self.local_addr()
                .map_or_else(|e| e.to_string(), |a| a.to_string()),
            self.shared.data_dir.display(),
            match &self.shared.storage.keyring {
                Some(k) => format!("WAL encrypted with key {}", k.primary_id()),
                None => "WAL not encrypted".to_owned(),
            }
        );
        {
            // A certificate that nears its end while the server runs is warned about daily.
            let telemetry = self.shared.telemetry.clone();
            let mut stopped = metrics_stopped_for_retention.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(CERTIFICATE_CHECK_INTERVAL) => {}
                        _ = stopped.wait_for(|s| *s) => return,
                    }
                    crate::certificates::warn_if_expiring(&telemetry.certificates());
                }
            });
        }
        if self.shared.mode == ServerMode::ReadWrite {
            // A read-only server deletes nothing and writes nothing to the bucket: relay and
            // Tier 2's retention run on the primary.
            if let Some(tier2) = self.shared.tier2.clone() {
                tokio::spawn(crate::tier2::relay::work(
                    self.shared.clone(),
                    tier2,
                    metrics_stopped_for_retention.clone(),
                ));
            }
            tokio::spawn(crate::retention::work(
                self.shared.clone(),
                metrics_stopped_for_retention,
            ));
            tokio::task::spawn_blocking({
                let shared = self.shared.clone();
                move || build_indexes(&shared)
            });
        }
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    let shared = self.shared.clone();
                    tokio::spawn(async move { handle_connection(incoming, shared).await });
                }
            }
        }
        let _ = stop_metrics.send(true);
        self.endpoint.close(0u32.into(), b"server shutting down");
        self.endpoint.wait_idle().await;
        tracing::info!("server stopped");
    }
}

/// Builds the index of every cluster's WAL archive, one after the other, in the background:
/// the server listens at once, and a cluster's first `GetPosition` (or status page) finds its
/// index built, or waits only for the rest of its build. `GetFile` never waits for one.
fn build_indexes(shared: &Shared) {
    for cluster in shared.clusters_on_disk() {
        let index = shared.wal_index(&cluster);
        if !index.path().is_dir() {
            continue;
        }
        let started = std::time::Instant::now();
        match index.durable() {
            Ok(_) => tracing::info!(
                %cluster,
                "indexed the WAL archive in {:.1} s",
                started.elapsed().as_secs_f64()
            ),
            // Its first stream creates it.
            Err(WalArchiveError::NotAnArchive { .. }) => {}
            // Asked again (and reported to the client) by the first request that needs it.
            Err(e) => tracing::warn!(%cluster, "cannot index the WAL archive: {}", ErrorChain(&e)),
        }
    }
}

async fn handle_connection(incoming: quinn::Incoming, shared: Arc<Shared>) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            // Missing or untrusted client certificates end here, in the TLS handshake.
            tracing::warn!(%remote, "refused connection: {}", ErrorChain(&e));
            shared.telemetry.connection_refused("handshake");
            return;
        }
    };
    let cluster = match tls::cluster_of(&conn) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(%remote, "refused connection: {}", ErrorChain(&e));
            shared.telemetry.connection_refused("no_cluster");
            conn.close(1u32.into(), b"certificate does not name a cluster");
            return;
        }
    };
    let span = tracing::info_span!("client", cluster = %cluster, %remote);
    let telemetry = shared.telemetry.cluster(&cluster);
    let _counted = telemetry.connected();
    if let Some(not_after) = tls::client_certificate(&conn)
        .ok()
        .and_then(|c| crate::certificates::not_after(&c))
    {
        span.in_scope(|| telemetry.client_certificate(not_after));
    }
    // The connection's share of the ingest budget, resized as connections come and go: what
    // its sessions have not read yet waits in quinn's buffers, within this window.
    let mut window = shared.ingest_budget.connection();
    set_receive_window(&conn, window.current());
    async move {
        tracing::debug!("connected");
        loop {
            let accepted = tokio::select! {
                accepted = conn.accept_bi() => accepted,
                w = window.changed() => {
                    set_receive_window(&conn, w);
                    continue;
                }
            };
            match accepted {
                Ok((send, recv)) => {
                    let shared = shared.clone();
                    let cluster = cluster.clone();
                    let telemetry = telemetry.clone();
                    tokio::spawn(
                        session::run(shared, cluster, telemetry, remote, send, recv)
                            .in_current_span(),
                    );
                }
                Err(e) => {
                    tracing::debug!("connection closed: {}", ErrorChain(&e));
                    break;
                }
            }
        }
    }
    .instrument(span)
    .await;
}

fn set_receive_window(conn: &quinn::Connection, bytes: u64) {
    // Windows are at most MAX_WINDOW (16 MiB): always a valid VarInt.
    if let Ok(w) = quinn::VarInt::from_u64(bytes) {
        conn.set_receive_window(w);
    }
}
