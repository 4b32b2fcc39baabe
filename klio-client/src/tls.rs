//! TLS to PostgreSQL with rustls (ring provider), following libpq's `sslmode` semantics.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::conn_string::{ConnConfig, SslMode};
use crate::error::ConnectionError;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the rustls configuration for `cfg`'s `sslmode`, CA, revocation lists and client
/// certificate (for any mode but [`SslMode::Disable`], which never asks for TLS).
pub(crate) fn client_config(
    cfg: &ConnConfig,
) -> Result<Arc<rustls::ClientConfig>, ConnectionError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectionError::tls_because("protocol versions", e))?;
    // As libpq: with a CA file that exists, `prefer` and `require` verify the chain, as
    // `verify-ca` does; without one they only encrypt.
    let root_exists = cfg.sslrootcert.as_deref().is_some_and(Path::exists);
    let mode = match (cfg.sslmode, root_exists) {
        (SslMode::Prefer | SslMode::Require, true) => SslMode::VerifyCa,
        (mode, _) => mode,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => Arc::new(AcceptAnyCertificate {
            algorithms: provider().signature_verification_algorithms,
        }),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let path = cfg.sslrootcert.as_deref().ok_or_else(|| {
                ConnectionError::tls(
                    "sslmode verify-ca/verify-full needs sslrootcert (or PGSSLROOTCERT, or ~/.postgresql/root.crt) naming the CA certificate file",
                )
            })?;
            let mut roots = RootCertStore::empty();
            for c in read_pem::<CertificateDer<'static>>(path, "sslrootcert", "certificate")? {
                roots.add(c).map_err(|e| {
                    ConnectionError::tls_because(
                        format!("bad certificate in {}", path.display()),
                        e,
                    )
                })?;
            }
            let mut webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider());
            if let Some(crl) = &cfg.sslcrl {
                webpki = webpki.with_crls(read_pem(crl, "sslcrl", "certificate revocation list")?);
            }
            let webpki = webpki
                .build()
                .map_err(|e| ConnectionError::tls_because("server certificate verifier", e))?;
            if mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(IgnoreHostName { inner: webpki })
            }
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match &cfg.sslcert {
        None => builder.with_no_client_auth(),
        Some(cert_path) => {
            let key_path = cfg.sslkey.as_deref().ok_or_else(|| {
                ConnectionError::tls(format!(
                    "sslcert {} needs its private key: name it with sslkey (or PGSSLKEY)",
                    cert_path.display()
                ))
            })?;
            let certs = read_pem(cert_path, "sslcert", "certificate")?;
            let key = read_private_key(key_path)?;
            builder.with_client_auth_cert(certs, key).map_err(|e| {
                ConnectionError::tls_because(
                    format!(
                        "sslkey {} is not the key of sslcert {}",
                        key_path.display(),
                        cert_path.display()
                    ),
                    e,
                )
            })?
        }
    };
    Ok(Arc::new(config))
}

/// The PEM items (certificates, revocation lists: `kind`) of `path`, the file connection
/// option `option` names; at least one.
fn read_pem<T: PemObject>(
    path: &Path,
    option: &str,
    kind: &str,
) -> Result<Vec<T>, ConnectionError> {
    let items = T::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            ConnectionError::tls_because(format!("cannot read {option} {}", path.display()), e)
        })?;
    if items.is_empty() {
        return Err(ConnectionError::tls(format!(
            "{option} {} holds no PEM {kind}",
            path.display()
        )));
    }
    Ok(items)
}

/// The private key of `path` (`sslkey`), refused as libpq refuses it when others may read it.
fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, ConnectionError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| {
        ConnectionError::tls_because(format!("cannot read sslkey {}", path.display()), e)
    })?;
    if !meta.is_file() {
        return Err(ConnectionError::tls(format!(
            "private key file {} is not a regular file",
            path.display()
        )));
    }
    let mode = meta.mode();
    let too_open = if meta.uid() == 0 {
        mode & 0o037 != 0
    } else {
        mode & 0o077 != 0
    };
    if too_open {
        return Err(ConnectionError::tls(format!(
            "private key file {} has group or world access; it must have permissions u=rw (0600) or less if owned by the current user, or u=rw,g=r (0640) or less if owned by root",
            path.display()
        )));
    }
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        ConnectionError::tls_because(
            format!(
                "cannot read sslkey {} as an unencrypted PEM private key",
                path.display()
            ),
            e,
        )
    })
}

/// `sslmode=require`/`prefer`: encryption without authentication of the server, as libpq.
/// Handshake signatures are still checked, so the session keys belong to the presented key.
#[derive(Debug)]
struct AcceptAnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `sslmode=verify-ca`: the chain must lead to the given CA; the host name is not checked.
#[derive(Debug)]
struct IgnoreHostName {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for IgnoreHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
