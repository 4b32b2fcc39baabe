//! A one-shot HTTP GET against a [`MetricsEndpoint`](crate::MetricsEndpoint): what
//! `klio status` uses to ask a running server.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;

/// The page could not be fetched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpGetError {
    /// No connection (nothing listens there, or it is unreachable).
    #[error("cannot connect to {addr}")]
    Connect {
        /// The address.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("HTTP request to {addr} failed")]
    Http {
        /// The address.
        addr: String,
        /// What went wrong.
        #[source]
        source: hyper::Error,
    },
    /// The request itself could not be built (the path is not a valid URI path).
    #[error("cannot request {path:?} from {addr}")]
    Request {
        /// The address.
        addr: String,
        /// The path asked for.
        path: String,
        /// Why the request is invalid.
        #[source]
        source: hyper::http::Error,
    },
    /// No answer in time.
    #[error("{addr} did not answer within {0:?}", .timeout)]
    Timeout {
        /// The address.
        addr: String,
        /// How long we waited.
        timeout: Duration,
    },
}

/// A fetched page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// HTTP status code.
    pub status: u16,
    /// The body, as text (lossy for non-UTF-8 bytes).
    pub body: String,
}

/// GETs `path` from `addr` (`host:port`), giving up after `timeout`.
pub async fn http_get(addr: &str, path: &str, timeout: Duration) -> Result<Page, HttpGetError> {
    tokio::time::timeout(timeout, get(addr, path))
        .await
        .map_err(|_| HttpGetError::Timeout {
            addr: addr.to_owned(),
            timeout,
        })?
}

async fn get(addr: &str, path: &str) -> Result<Page, HttpGetError> {
    let http = |source: hyper::Error| HttpGetError::Http {
        addr: addr.to_owned(),
        source,
    };
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|source| HttpGetError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    let driver = tokio::spawn(conn);
    let req = Request::get(path)
        .header(hyper::header::HOST, addr)
        .body(Empty::<Bytes>::new())
        .map_err(|source| HttpGetError::Request {
            addr: addr.to_owned(),
            path: path.to_owned(),
            source,
        })?;
    let resp = sender.send_request(req).await.map_err(http)?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(http)?.to_bytes();
    driver.abort();
    Ok(Page {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
