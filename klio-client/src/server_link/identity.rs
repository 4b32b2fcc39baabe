//! A client's TLS files, loaded and checked the way the server will check them: the CA
//! certificate (PEM, one or more certificates) that signed the server's certificate, and this
//! cluster's certificate chain and private key (PEM).
//!
//! Loading checks, without any network: every file is readable PEM of the right kind, the key
//! belongs to the certificate, and the certificate chains to the CA and is valid now (so a
//! certificate from another CA, or an expired one, is reported at start instead of as a
//! refused handshake). One CA signs both the server's and the clients' certificates
//! (`klio certs init`, `klio certs client`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use super::ServerEndpoint;

/// Which of the client's TLS files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsFile {
    /// The CA certificate (`--tls-ca`).
    Ca,
    /// This cluster's client certificate (`--tls-cert`).
    ClientCert,
    /// Its private key (`--tls-key`).
    ClientKey,
}

impl TlsFile {
    /// What the file must hold.
    fn pem_item(self) -> &'static str {
        match self {
            Self::Ca | Self::ClientCert => "certificate",
            Self::ClientKey => "private key",
        }
    }
}

impl fmt::Display for TlsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ca => "CA certificate",
            Self::ClientCert => "client certificate",
            Self::ClientKey => "client key",
        })
    }
}

/// A TLS file cannot be used; found before connecting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The file cannot be read.
    #[error("cannot read the {file} {}", path.display())]
    Unreadable {
        /// Which file.
        file: TlsFile,
        /// Its path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not PEM, or its PEM is damaged.
    #[error("the {file} {} is not a valid PEM file", path.display())]
    NotPem {
        /// Which file.
        file: TlsFile,
        /// Its path.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The file holds no item of the expected kind.
    #[error(
        "the {file} {} holds no PEM {}; is it the right file?",
        path.display(),
        file.pem_item()
    )]
    Empty {
        /// Which file.
        file: TlsFile,
        /// Its path.
        path: PathBuf,
    },
    /// A certificate of the CA file cannot be a trust anchor.
    #[error(
        "the CA certificate {} holds a certificate that is not a usable CA certificate; give the ca.pem written by `klio certs init`",
        path.display()
    )]
    NotACa {
        /// The CA file.
        path: PathBuf,
    },
    /// The key is not the one of the certificate.
    #[error(
        "the client key {} does not belong to the client certificate {}; give the .key file issued with this certificate (`klio certs client` writes both)",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        /// The certificate.
        cert: PathBuf,
        /// The key.
        key: PathBuf,
    },
    /// The key cannot be used for signing.
    #[error("the client key {} cannot be used", path.display())]
    UnusableKey {
        /// The key file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// The CA did not sign the client certificate.
    #[error(
        "the client certificate {} was not issued by the CA {}, so the server will refuse it; give the certificate `klio certs client` issued with this CA",
        cert.display(),
        ca.display()
    )]
    NotSignedByCa {
        /// The client certificate.
        cert: PathBuf,
        /// The CA file.
        ca: PathBuf,
        /// The verifier's finding.
        #[source]
        source: rustls::Error,
    },
    /// The client certificate's validity has ended: the server refuses it.
    #[error(
        "the client certificate {} expired {expired}, so the server will refuse it; renew it with `klio certs renew -D <certificates directory> --cluster <cluster>` and put the new files in place of the old",
        cert.display()
    )]
    Expired {
        /// The client certificate.
        cert: PathBuf,
        /// When it expired (`at <RFC 3339>`), if the verifier said.
        expired: String,
    },
    /// The client certificate is signed by the CA but not acceptable (not yet valid, not for
    /// client authentication).
    #[error(
        "the client certificate {} would be refused by the server; issue a new one from the same CA with `klio certs renew -D <certificates directory> --cluster <cluster>`",
        cert.display()
    )]
    CertificateRefused {
        /// The client certificate.
        cert: PathBuf,
        /// The verifier's finding.
        #[source]
        source: rustls::Error,
    },
    /// No verifier could be built from the CA file.
    #[error("the CA certificate {} cannot verify certificates", path.display())]
    UnusableCa {
        /// The CA file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
}

/// The loaded and checked TLS files of a [`ServerEndpoint`].
#[derive(Debug)]
pub struct ClientIdentity {
    /// The CA certificates that verify the server.
    pub(super) roots: rustls::RootCertStore,
    /// This cluster's certificate chain, leaf first.
    pub(super) chain: Vec<CertificateDer<'static>>,
    /// Its private key.
    pub(super) key: PrivateKeyDer<'static>,
}

impl ClientIdentity {
    /// Reads the CA, certificate and key files of `endpoint` and checks them (see the module
    /// documentation).
    pub fn load(endpoint: &ServerEndpoint) -> Result<Self, IdentityError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ca = read_certificates(TlsFile::Ca, &endpoint.ca)?;
        let mut roots = rustls::RootCertStore::empty();
        // One by one rather than `add_parsable_certificates`, which logs a line of its own
        // before send-wal's cluster span exists.
        for cert in ca {
            roots.add(cert).map_err(|_| IdentityError::NotACa {
                path: endpoint.ca.clone(),
            })?;
        }
        let chain = read_certificates(TlsFile::ClientCert, &endpoint.cert)?;
        let key = read_key(&endpoint.key)?;
        match rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider) {
            Ok(_) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                return Err(IdentityError::KeyMismatch {
                    cert: endpoint.cert.clone(),
                    key: endpoint.key.clone(),
                });
            }
            Err(source) => {
                return Err(IdentityError::UnusableKey {
                    path: endpoint.key.clone(),
                    source,
                });
            }
        }
        // The server's own verifier, so that what passes here passes the handshake.
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots.clone()),
            provider,
        )
        .build()
        .map_err(|source| IdentityError::UnusableCa {
            path: endpoint.ca.clone(),
            source,
        })?;
        if let Some((leaf, intermediates)) = chain.split_first() {
            verifier
                .verify_client_cert(leaf, intermediates, UnixTime::now())
                .map_err(|source| match source {
                    rustls::Error::InvalidCertificate(
                        rustls::CertificateError::Expired
                        | rustls::CertificateError::ExpiredContext { .. },
                    ) => IdentityError::Expired {
                        cert: endpoint.cert.clone(),
                        expired: expiry_of(&source)
                            .map_or_else(String::new, |at| format!("at {at}")),
                    },
                    rustls::Error::InvalidCertificate(
                        rustls::CertificateError::UnknownIssuer
                        | rustls::CertificateError::BadSignature,
                    ) => IdentityError::NotSignedByCa {
                        cert: endpoint.cert.clone(),
                        ca: endpoint.ca.clone(),
                        source,
                    },
                    source => IdentityError::CertificateRefused {
                        cert: endpoint.cert.clone(),
                        source,
                    },
                })?;
            // Checked again as of a month from now: what fails then expires before.
            let soon = UnixTime::since_unix_epoch(
                std::time::Duration::from_secs(UnixTime::now().as_secs()) + EXPIRY_WARNING,
            );
            if let Err(e) = verifier.verify_client_cert(leaf, intermediates, soon)
                && let Some(at) = expiry_of(&e)
            {
                tracing::warn!(
                    "the client certificate {} expires at {at}: renew it with `klio certs renew -D <certificates directory> --cluster <cluster>` and put the new files in place; the next connection presents them",
                    endpoint.cert.display()
                );
            }
        }
        Ok(Self { roots, chain, key })
    }
}

/// A certificate expiring within this time is warned about when it is loaded.
const EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

/// When the certificate `error` is about expired (RFC 3339), if it says.
fn expiry_of(error: &rustls::Error) -> Option<String> {
    match error {
        rustls::Error::InvalidCertificate(rustls::CertificateError::ExpiredContext {
            not_after,
            ..
        }) => Some(
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(not_after.as_secs()),
            )
            .to_string(),
        ),
        _ => None,
    }
}

/// Reads the file whole first, so that a missing file is an I/O error and not a PEM one.
fn read_file(file: TlsFile, path: &Path) -> Result<Vec<u8>, IdentityError> {
    std::fs::read(path).map_err(|source| IdentityError::Unreadable {
        file,
        path: path.to_owned(),
        source,
    })
}

fn read_certificates(
    file: TlsFile,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let pem = read_file(file, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| IdentityError::NotPem {
            file,
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(IdentityError::Empty {
            file,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, IdentityError> {
    let pem = read_file(TlsFile::ClientKey, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|source| match source {
        rustls::pki_types::pem::Error::NoItemsFound => IdentityError::Empty {
            file: TlsFile::ClientKey,
            path: path.to_owned(),
        },
        source => IdentityError::NotPem {
            file: TlsFile::ClientKey,
            path: path.to_owned(),
            source,
        },
    })
}
