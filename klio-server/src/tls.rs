//! TLS for the QUIC listener: TLS 1.3 only, client certificates required and checked against
//! the configured CA, and the client's cluster taken from its certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use klio_proto::klio::{ALPN, ClusterName};
use rustls::pki_types::pem::{Error as PemError, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

/// Where the server's certificates live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificate(s) that sign client certificates (PEM).
    pub ca: PathBuf,
    /// The server's certificate chain (PEM).
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
}

/// TLS could not be set up from the configured files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsSetupError {
    /// A PEM file could not be read or parsed.
    #[error("cannot read {what} from {path}")]
    File {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why not.
        #[source]
        source: PemError,
    },
    /// A PEM file holds no certificate.
    #[error("cannot read {what} from {path}: no PEM certificate found")]
    NoCertificate {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// The server certificate's validity has ended.
    #[error(
        "the server certificate {path} expired at {at}: renew it with `klio certs renew -D <certificates directory> --server`"
    )]
    Expired {
        /// The certificate file.
        path: PathBuf,
        /// When it expired (RFC 3339).
        at: String,
    },
    /// A certificate cannot be parsed for its validity.
    #[error(
        "cannot read the validity of the certificate in {path}: it is not a valid X.509 certificate"
    )]
    Unparsable {
        /// The file.
        path: PathBuf,
    },
    /// A CA certificate cannot be used as a trust anchor.
    #[error("invalid TLS configuration: CA certificate {path}")]
    CaCertificate {
        /// The CA file.
        path: PathBuf,
        /// Why rustls refused it.
        #[source]
        source: rustls::Error,
    },
    /// The server's certificate and key do not make a usable pair.
    #[error("invalid TLS configuration: server certificate and key")]
    CertificateAndKey(#[source] rustls::Error),
    /// rustls or quinn refused the configuration.
    #[error("invalid TLS configuration")]
    Config(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Why a peer has no usable identity.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The peer presented no certificate.
    #[error("the client presented no certificate")]
    NoCertificate,
    /// The certificate could not be parsed.
    #[error("the client certificate cannot be parsed")]
    Unparsable(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
    /// The certificate does not name a cluster (`CN=klio@<cluster>`).
    #[error(
        "the client certificate's common name {0:?} does not name a cluster (expected klio@<cluster>)"
    )]
    NotAClusterCertificate(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads all certificates of a PEM file.
pub fn load_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let err = |source| TlsSetupError::File {
        what,
        path: path.to_owned(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    if certs.is_empty() {
        return Err(TlsSetupError::NoCertificate {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Reads a private key from a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsSetupError::File {
        what: "a private key",
        path: path.to_owned(),
        source,
    })
}

/// The QUIC server configuration: mutual TLS 1.3 with ALPN `klio/1`.
pub fn quic_server_config(files: &TlsFiles) -> Result<quinn::ServerConfig, TlsSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(&files.ca, "CA certificates")? {
        roots
            .add(c)
            .map_err(|source| TlsSetupError::CaCertificate {
                path: files.ca.clone(),
                source,
            })?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| TlsSetupError::Config(e.into()))?;
    let certs = load_certs(&files.cert, "the server certificate")?;
    let key = load_key(&files.key)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsSetupError::Config(e.into()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(TlsSetupError::CertificateAndKey)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TlsSetupError::Config(e.into()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    // A vanished client (kill -9, network loss) is noticed within this time; its cluster's
    // archive is then free for the reconnecting client.
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(15))
            .map_err(|e| TlsSetupError::Config(e.into()))?,
    ));
    transport.max_concurrent_uni_streams(0u8.into());
    transport.max_concurrent_bidi_streams(16u8.into());
    // Room for several MiB of WAL in flight per stream, bounded per connection. A connection
    // starts with the smallest window (what the handshake promises cannot be taken back) and
    // gets its share of the ingest budget once it is up (`ingest_budget::ConnectionWindow`).
    transport.stream_receive_window((8u32 << 20).into());
    transport.receive_window(
        quinn::VarInt::from_u64(crate::ingest_budget::MIN_WINDOW)
            .map_err(|e| TlsSetupError::Config(e.into()))?,
    );
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(u16::MAX);
    transport.mtu_discovery_config(Some(mtu));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// The cluster named by the verified client certificate of `conn`.
pub fn cluster_of(conn: &quinn::Connection) -> Result<ClusterName, IdentityError> {
    cluster_of_certificate(&client_certificate(conn)?)
}

/// The verified client certificate of `conn` (the leaf of its chain).
pub fn client_certificate(
    conn: &quinn::Connection,
) -> Result<CertificateDer<'static>, IdentityError> {
    let identity = conn.peer_identity().ok_or(IdentityError::NoCertificate)?;
    let certs = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| IdentityError::NoCertificate)?;
    certs.first().cloned().ok_or(IdentityError::NoCertificate)
}

/// The cluster named by a DER certificate's common name (`klio@<cluster>`).
pub fn cluster_of_certificate(cert: &CertificateDer<'_>) -> Result<ClusterName, IdentityError> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert).map_err(IdentityError::Unparsable)?;
    let cn = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| IdentityError::NotAClusterCertificate(String::new()))?;
    ClusterName::from_common_name(cn)
        .map_err(|_| IdentityError::NotAClusterCertificate(cn.to_owned()))
}
