//! Client TLS for the Klio server: TLS 1.3, the server verified against the configured CA,
//! and this cluster's certificate presented.

use std::sync::Arc;
use std::time::Duration;

use klio_proto::klio::ALPN;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{BoxedError, ServerEndpoint, ServerLinkError};

pub(super) fn quic_client_config(
    cfg: &ServerEndpoint,
) -> Result<quinn::ClientConfig, ServerLinkError> {
    let read_certs = |path: &std::path::Path, what: &str| {
        CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| tls_err(format!("cannot read {what} {}", path.display()), e))
            .and_then(|v| {
                if v.is_empty() {
                    Err(ServerLinkError::Tls {
                        what: format!("{} holds no PEM certificate", path.display()),
                        source: None,
                    })
                } else {
                    Ok(v)
                }
            })
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(&cfg.ca, "CA certificate")? {
        roots
            .add(c)
            .map_err(|e| tls_err(format!("CA certificate {}", cfg.ca.display()), e))?;
    }
    let chain = read_certs(&cfg.cert, "client certificate")?;
    let key = PrivateKeyDer::from_pem_file(&cfg.key)
        .map_err(|e| tls_err(format!("cannot read client key {}", cfg.key.display()), e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_err("TLS 1.3".to_owned(), e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| tls_err("client certificate and key do not match".to_owned(), e))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| tls_err("QUIC cipher suites".to_owned(), e))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    // Keep-alives keep NAT state alive, and after a server restart they draw the stateless
    // reset that makes the client reconnect at once.
    transport.keep_alive_interval(Some(Duration::from_secs(1)));
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(15))
            .map_err(|e| tls_err("idle timeout".to_owned(), e))?,
    ));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// TLS setup failed at `what` (naming the file, if any) because of `source`.
fn tls_err(what: String, source: impl Into<BoxedError>) -> ServerLinkError {
    ServerLinkError::Tls {
        what,
        source: Some(source.into()),
    }
}
