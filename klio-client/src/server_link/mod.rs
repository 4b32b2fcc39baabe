//! The client side of Klio's protocol: a QUIC connection with mutual TLS to a Klio server, and
//! framed streams over it.

mod framed;
mod identity;
mod tls;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use klio_crypto::{BlockHashAlgorithm, BlockHashKey};
use klio_proto::klio::{ErrorCode, KlioProtocolError};

pub use framed::{FramedRecv, FramedSend};
pub use identity::{ClientIdentity, IdentityError, TlsFile};

/// Where the Klio server is and which certificates prove who we are.
#[derive(Clone, Debug)]
pub struct ServerEndpoint {
    /// `host:port` of the server.
    pub address: String,
    /// Name to verify in the server certificate (default: the host part of `address`).
    pub server_name: Option<String>,
    /// CA certificate that signed the server certificate (PEM).
    pub ca: PathBuf,
    /// This cluster's client certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

/// A cause of another library's type, kept as the source of a [`ServerLinkError`].
pub type BoxedError = Box<dyn std::error::Error + Send + Sync>;

/// Talking to the Klio server failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerLinkError {
    /// Certificates or keys could not be loaded, or rustls refused them.
    #[error("TLS setup: {what}")]
    Tls {
        /// What could not be set up, naming the file.
        what: String,
        /// Why, when a library said so.
        #[source]
        source: Option<BoxedError>,
    },
    /// The CA, certificate or key file cannot be used (boxed: it is large and rare).
    #[error(transparent)]
    Identity(Box<IdentityError>),
    /// The address could not be resolved.
    #[error("cannot resolve Klio server address {address}")]
    Resolve {
        /// The address.
        address: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The address resolved to nothing.
    #[error("cannot resolve Klio server address {address}: no address found")]
    NoAddress {
        /// The address.
        address: String,
    },
    /// The connection could not be established or was lost.
    #[error("connection to the Klio server {address} failed")]
    Connection {
        /// The address.
        address: String,
        /// Why (a quinn or OS error).
        #[source]
        source: BoxedError,
    },
    /// The server broke the protocol.
    #[error("invalid data from the Klio server")]
    Protocol(#[from] KlioProtocolError),
    /// The server refused a request.
    #[error("the Klio server refused: {message} ({code:?})")]
    Refused {
        /// Error class.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// The server closed the stream.
    #[error("the Klio server closed the stream")]
    Closed,
    /// The TLS handshake failed: one side refused the other's certificate. A daemon may retry
    /// (certificates may be replaced), a one-shot command should report it at once.
    #[error(
        "TLS handshake with the Klio server {address} failed; check that --tls-ca signed the \
         server's certificate (and that it names {server_name}), and that the server trusts \
         this client certificate"
    )]
    Handshake {
        /// The address.
        address: String,
        /// The name the server's certificate was checked against.
        server_name: String,
        /// The TLS alert (boxed: the error is large).
        #[source]
        source: Box<quinn::ConnectionError>,
    },
    /// The server's answer does not make sense (wrong message, size or checksum).
    #[error("unexpected answer from the Klio server {0}")]
    Unexpected(String),
    /// The server's block-hash key is for an algorithm this client does not know: the server
    /// is newer.
    #[error(
        "the Klio server names backup blocks with hash algorithm {0}, which this klio does not \
         know: install the server's version of klio on this host"
    )]
    UnknownHashAlgorithm(u8),
}

/// The block-hash key of a `HashKey` message.
pub(crate) fn block_hash_key(
    key: [u8; 32],
    algorithm: u8,
) -> Result<BlockHashKey, ServerLinkError> {
    let algorithm = BlockHashAlgorithm::from_u8(algorithm)
        .ok_or(ServerLinkError::UnknownHashAlgorithm(algorithm))?;
    Ok(BlockHashKey::new(algorithm, key))
}

impl From<IdentityError> for ServerLinkError {
    fn from(e: IdentityError) -> Self {
        Self::Identity(Box::new(e))
    }
}

impl ServerLinkError {
    /// Whether trying again later can help.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Tls { .. } | Self::Identity(_) | Self::UnknownHashAlgorithm(_) => false,
            Self::Refused { code, .. } => code.is_retryable(),
            _ => true,
        }
    }
}

/// How long [`ServerConnection::close`] waits for its CONNECTION_CLOSE to leave.
const CLOSE_SEND_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A QUIC connection to a Klio server.
#[derive(Debug)]
pub struct ServerConnection {
    /// Kept for as long as the connection: its socket and driver.
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    address: String,
}

impl ServerConnection {
    /// Connects and completes the TLS handshake.
    pub async fn connect(cfg: &ServerEndpoint) -> Result<Self, ServerLinkError> {
        let client_config = tls::quic_client_config(cfg)?;
        let addr: SocketAddr = tokio::net::lookup_host(&cfg.address)
            .await
            .map_err(|source| ServerLinkError::Resolve {
                address: cfg.address.clone(),
                source,
            })?
            .next()
            .ok_or_else(|| ServerLinkError::NoAddress {
                address: cfg.address.clone(),
            })?;
        let host = cfg
            .address
            .rsplit_once(':')
            .map_or(cfg.address.as_str(), |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let server_name = cfg.server_name.clone().unwrap_or_else(|| host.to_owned());
        let bind = if addr.is_ipv6() {
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
        } else {
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
        };
        let mut endpoint =
            quinn::Endpoint::client(bind).map_err(|e| closed_err(e, &cfg.address))?;
        endpoint.set_default_client_config(client_config);
        let conn = endpoint
            .connect(addr, &server_name)
            .map_err(|e| closed_err(e, &cfg.address))?
            .await
            .map_err(|e| {
                if is_tls_failure(&e) {
                    ServerLinkError::Handshake {
                        address: cfg.address.clone(),
                        server_name: server_name.clone(),
                        source: Box::new(e),
                    }
                } else {
                    closed_err(e, &cfg.address)
                }
            })?;
        Ok(Self {
            _endpoint: endpoint,
            conn,
            address: cfg.address.clone(),
        })
    }

    /// Opens a bidirectional stream for one session.
    pub async fn open_stream(&self) -> Result<(FramedSend, FramedRecv), ServerLinkError> {
        let (send, recv) = self
            .conn
            .open_bi()
            .await
            .map_err(|e| closed_err(e, &self.address))?;
        Ok((FramedSend::new(send), FramedRecv::new(recv)))
    }

    /// Closes the connection and waits (at most [`CLOSE_SEND_WAIT`]) until its
    /// CONNECTION_CLOSE has been sent, so that the server frees it at once instead of after its
    /// idle timeout.
    ///
    /// Not [`quinn::Endpoint::wait_idle`]: that waits out the closing period of three probe
    /// timeouts (at least 75 ms even on loopback, since each includes the 25 ms maximum ACK
    /// delay), which a one-shot `get-wal` would add to every file PostgreSQL waits for.
    pub async fn close(self) {
        // Once closed, a connection sends nothing but its CONNECTION_CLOSE: a datagram counted
        // from here on is that one (or, rarely, one queued just before: then the server waits
        // out its idle timeout, as after a lost close).
        let sent_before = self.conn.stats().udp_tx.datagrams;
        self.conn.close(0u32.into(), b"done");
        let until = std::time::Instant::now() + CLOSE_SEND_WAIT;
        while self.conn.stats().udp_tx.datagrams == sent_before && std::time::Instant::now() < until
        {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
}

/// A handshake that ended in a TLS alert (either side refused a certificate): retrying
/// cannot help.
fn is_tls_failure(e: &quinn::ConnectionError) -> bool {
    // QUIC carries TLS alerts as the transport error codes 0x100..=0x1ff (RFC 9001, 4.8).
    let is_crypto = |code: quinn::TransportErrorCode| (0x100..=0x1ff).contains(&u64::from(code));
    match e {
        quinn::ConnectionError::TransportError(t) => is_crypto(t.code),
        quinn::ConnectionError::ConnectionClosed(c) => is_crypto(c.error_code),
        _ => false,
    }
}

/// The connection to `address` failed or was lost; shared with the framing module.
pub(crate) fn closed_err(e: impl Into<BoxedError>, address: &str) -> ServerLinkError {
    ServerLinkError::Connection {
        address: address.to_owned(),
        source: e.into(),
    }
}
