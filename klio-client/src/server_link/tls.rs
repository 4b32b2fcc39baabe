//! Client TLS for the Klio server: TLS 1.3, the server verified against the configured CA,
//! and this cluster's certificate presented.

use std::sync::Arc;
use std::time::Duration;

use klio_proto::klio::ALPN;

use super::identity::ClientIdentity;
use super::{BoxedError, ServerEndpoint, ServerLinkError};

pub(super) fn quic_client_config(
    cfg: &ServerEndpoint,
) -> Result<quinn::ClientConfig, ServerLinkError> {
    let identity = ClientIdentity::load(cfg)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_err("TLS 1.3".to_owned(), e))?
        .with_root_certificates(identity.roots)
        .with_client_auth_cert(identity.chain, identity.key)
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
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(u16::MAX);
    transport.mtu_discovery_config(Some(mtu));
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
