//! The HTTP listener: `/metrics`, `/healthz` and `/status`, nothing else.
//!
//! Plain HTTP on purpose: Prometheus scrapes it and load balancers probe it, and it carries no
//! secrets (positions, counts and cluster names only). Bind it to a loopback or management
//! address; the default is loopback.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use klio_wal::ErrorChain;

/// What a process shows on its HTTP pages. Every method may read files (archive sizes, say):
/// they are called on a blocking thread, never on the async runtime.
pub trait Pages: Send + Sync + 'static {
    /// The body of `/metrics`, in the OpenMetrics text format ([`crate::encode`]).
    fn metrics(&self) -> String;
    /// The answer of `/healthz`.
    fn health(&self) -> Health;
    /// The body of `/status` (JSON), if this process has one.
    fn status(&self) -> Option<String> {
        None
    }
}

/// The answer of `/healthz`: 200 when healthy, 503 with the reason otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Doing its job.
    Healthy,
    /// Not doing its job, and why (shown to whoever probes).
    Unhealthy(String),
}

/// The listener could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// The TCP socket could not be bound.
    #[error(
        "cannot listen for metrics on {addr} (choose another address with \
         --metrics-listen, or `off` to disable the metrics listener)"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once; more wait in the listen backlog. Scrapers and probes are few.
const MAX_CONNECTIONS: usize = 32;

/// A bound HTTP listener for the observability pages.
#[derive(Debug)]
pub struct MetricsEndpoint {
    listener: tokio::net::TcpListener,
}

impl MetricsEndpoint {
    /// Binds `addr` (port 0 picks a free port). Must be called inside a Tokio runtime.
    pub fn bind(addr: SocketAddr) -> Result<Self, MetricsError> {
        let bind = || -> std::io::Result<tokio::net::TcpListener> {
            let std_listener = std::net::TcpListener::bind(addr)?;
            std_listener.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(std_listener)
        };
        bind()
            .map(|listener| Self { listener })
            .map_err(|source| MetricsError::Bind { addr, source })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `pages` until `shutdown` resolves.
    pub async fn serve(self, pages: Arc<dyn Pages>, shutdown: impl Future<Output = ()>) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                _ = &mut shutdown => return,
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let (stream, peer) = tokio::select! {
                _ = &mut shutdown => return,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors, say: wait instead of spinning.
                        tracing::warn!("metrics listener: accept failed: {}", ErrorChain(&e));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let pages = pages.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let service = hyper::service::service_fn(move |req| answer(pages.clone(), req));
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                if let Err(e) = served {
                    tracing::debug!(%peer, "metrics connection ended: {}", ErrorChain(&e));
                }
            });
        }
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

const TEXT: &str = "text/plain; charset=utf-8";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const JSON: &str = "application/json";

async fn answer(
    pages: Arc<dyn Pages>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "only GET and HEAD\n".to_owned(),
        ));
    }
    let path = req.uri().path().to_owned();
    let page = tokio::task::spawn_blocking(move || match path.as_str() {
        "/metrics" => Some(reply(StatusCode::OK, OPENMETRICS, pages.metrics())),
        "/healthz" => Some(match pages.health() {
            Health::Healthy => reply(StatusCode::OK, TEXT, "ok\n".to_owned()),
            Health::Unhealthy(why) => {
                reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{why}\n"))
            }
        }),
        "/status" => pages.status().map(|body| reply(StatusCode::OK, JSON, body)),
        _ => None,
    })
    .await;
    Ok(match page {
        Ok(Some(r)) => r,
        Ok(None) => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: try /metrics, /healthz or /status\n".to_owned(),
        ),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            TEXT,
            format!("page failed: {e}\n"),
        ),
    })
}
