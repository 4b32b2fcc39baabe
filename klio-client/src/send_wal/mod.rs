//! `klio send-wal`: streams WAL from PostgreSQL to a Klio server, and reports to PostgreSQL
//! as flushed only what the server has acknowledged as durable.
//!
//! With `synchronous_standby_names = 'klio'` a commit therefore returns only once its WAL is
//! on the server's stable storage, and the replication slot never releases WAL that Klio could
//! still lose. The start position is the server's exact durable position (else the slot's), so
//! reconnecting after any crash, of either side, skips nothing.

mod session;
mod telemetry;

use std::sync::Arc;
use std::time::Duration;

use klio_proto::klio::ClusterName;
use klio_wal::ErrorChain;

use crate::conn_string::ConnConfig;
use crate::error::ConnectionError;
use crate::server_link::{ServerEndpoint, ServerLinkError};
use crate::shutdown::Shutdown;

/// Settings of `send-wal`.
#[derive(Clone, Debug)]
pub struct SendWalOptions {
    /// The PostgreSQL connection (replication).
    pub pg: ConnConfig,
    /// The Klio server.
    pub server: ServerEndpoint,
    /// The cluster this client's certificate is for.
    pub cluster: ClusterName,
    /// The physical replication slot (created if missing).
    pub slot: String,
    /// How often to send status updates to PostgreSQL even when nothing changes.
    pub status_interval: Duration,
    /// First wait before reconnecting; doubled after each failure.
    pub reconnect_min: Duration,
    /// Longest wait between reconnection attempts.
    pub reconnect_max: Duration,
    /// TCP address for `/metrics` and `/healthz`; `None` serves none.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Why `send-wal` stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendWalError {
    /// PostgreSQL side.
    #[error("PostgreSQL")]
    Postgres(#[from] ConnectionError),
    /// Klio server side.
    #[error(transparent)]
    Server(#[from] ServerLinkError),
    /// The server is older than PostgreSQL 15.
    #[error(
        "server version {0} is not supported: Klio needs PostgreSQL 15 or newer (READ_REPLICATION_SLOT)"
    )]
    ServerTooOld(String),
    /// The slot exists but is not a physical slot.
    #[error("replication slot {0:?} is not a physical slot")]
    SlotNotPhysical(String),
    /// The replication stream broke its own rules.
    #[error("invalid replication stream: {0}")]
    Stream(String),
    /// The metrics listener could not be started.
    #[error(transparent)]
    Metrics(#[from] klio_metrics::MetricsError),
}

impl SendWalError {
    /// Whether reconnecting can help.
    fn is_retryable(&self) -> bool {
        match self {
            Self::Postgres(ConnectionError::Settings(_) | ConnectionError::Tls(_)) => false,
            Self::Server(e) => e.is_retryable(),
            Self::ServerTooOld(_) | Self::SlotNotPhysical(_) | Self::Metrics(_) => false,
            _ => true,
        }
    }

    /// Whether this cluster's certificate files cannot be used (checked before every
    /// connection to the server).
    fn is_identity(&self) -> bool {
        matches!(self, Self::Server(ServerLinkError::Identity(_)))
    }

    /// The `kind` label of `klio_errors_total`.
    fn kind(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::Server(_) => "server",
            _ => "stream",
        }
    }
}

/// Streams until `shutdown` fires, reconnecting with backoff after failures that retrying can
/// fix; returns the first error that it cannot.
pub async fn send_wal(opts: &SendWalOptions, shutdown: Shutdown) -> Result<(), SendWalError> {
    // Every log line of this client names its cluster.
    let span = tracing::info_span!("send_wal", cluster = %opts.cluster);
    let telemetry = Arc::new(telemetry::SendWalTelemetry::new(opts.cluster.as_str()));
    let (_stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    if let Some(addr) = opts.metrics_listen {
        let endpoint = {
            let _entered = span.enter();
            let endpoint = klio_metrics::MetricsEndpoint::bind(addr)?;
            if let Ok(a) = endpoint.local_addr() {
                tracing::info!("metrics on http://{a}/metrics (also /healthz)");
            }
            endpoint
        };
        let pages: Arc<dyn klio_metrics::Pages> = telemetry.clone();
        // Served until this function returns and drops the sender.
        tokio::spawn(endpoint.serve(pages, async move {
            let _ = metrics_stopped.await;
        }));
    }
    tracing::Instrument::instrument(reconnect_loop(opts, shutdown, &telemetry), span).await
}

async fn reconnect_loop(
    opts: &SendWalOptions,
    mut shutdown: Shutdown,
    telemetry: &telemetry::SendWalTelemetry,
) -> Result<(), SendWalError> {
    let mut delay = opts.reconnect_min;
    let mut first = true;
    loop {
        let started = tokio::time::Instant::now();
        let outcome = session::run(opts, &mut shutdown, telemetry).await;
        let retry_identity = !std::mem::replace(&mut first, false);
        match outcome {
            Ok(()) => return Ok(()),
            // Unusable certificate files end the first attempt at once. Later, they were
            // usable before: they are being replaced (a renewal) or were broken since, and
            // waiting for them beats ending the stream for good.
            Err(e) if !(e.is_retryable() || retry_identity && e.is_identity()) => return Err(e),
            Err(e) => {
                telemetry.failed(e.kind(), ErrorChain(&e).to_string());
                if shutdown.is_triggered() {
                    return Ok(());
                }
                // A session that ran for a while was healthy: start the backoff afresh.
                if started.elapsed() > Duration::from_secs(30) {
                    delay = opts.reconnect_min;
                }
                if e.is_identity() {
                    tracing::error!(
                        "{}; the certificate files changed since send-wal connected: fix them (a renewal copies both the certificate and its key); retrying in {:.1} s",
                        ErrorChain(&e),
                        delay.as_secs_f32()
                    );
                } else {
                    tracing::warn!(
                        "{}; reconnecting in {:.1} s",
                        ErrorChain(&e),
                        delay.as_secs_f32()
                    );
                }
                tokio::select! {
                    _ = shutdown.wait() => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(opts.reconnect_max);
            }
        }
    }
}
