//! `klio certs`: a private CA, the server certificate and per-cluster client certificates, so
//! that a first secure setup takes one command.

use std::path::{Path, PathBuf};

use klio_proto::klio::ClusterName;
use klio_wal::{FsAction, FsError, durable};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate and its private key, PEM-encoded.
#[derive(Clone)]
pub struct IssuedCert {
    /// The certificate.
    pub cert_pem: String,
    /// The private key.
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print private keys.
        f.debug_struct("IssuedCert").finish_non_exhaustive()
    }
}

/// Certificates could not be made or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertsError {
    /// Generating or signing failed.
    #[error("certificate generation failed")]
    Generate(#[from] rcgen::Error),
    /// A file exists already; nothing is overwritten.
    #[error("{0} already exists: remove it first, or use another directory")]
    Exists(PathBuf),
    /// Reading or writing a file failed.
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// A new self-signed CA.
pub fn new_ca(common_name: &str) -> Result<IssuedCert, CertsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key)?;
    Ok(IssuedCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn issuer(ca: &IssuedCert) -> Result<Issuer<'static, KeyPair>, CertsError> {
    let key = KeyPair::from_pem(&ca.key_pem)?;
    Ok(Issuer::from_ca_cert_pem(&ca.cert_pem, key)?)
}

/// A server certificate for `names` (DNS names or IP addresses), signed by `ca`.
pub fn issue_server(ca: &IssuedCert, names: &[String]) -> Result<IssuedCert, CertsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().map_or("klio server", String::as_str),
    );
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer(ca)?)?;
    Ok(IssuedCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A client certificate for `cluster` (`CN=klio@<cluster>`), signed by `ca`.
pub fn issue_client(ca: &IssuedCert, cluster: &ClusterName) -> Result<IssuedCert, CertsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, cluster.common_name());
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer(ca)?)?;
    Ok(IssuedCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The files `klio certs` manages in one directory.
#[derive(Clone, Debug)]
pub struct CertsDir {
    dir: PathBuf,
}

impl CertsDir {
    /// A certificate directory (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// `ca.pem`.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    /// `ca.key`.
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    /// `server.pem`.
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }
    /// `server.key`.
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
    /// `client-<cluster>.pem`.
    pub fn client_cert(&self, cluster: &ClusterName) -> PathBuf {
        self.dir.join(format!("client-{cluster}.pem"))
    }
    /// `client-<cluster>.key`.
    pub fn client_key(&self, cluster: &ClusterName) -> PathBuf {
        self.dir.join(format!("client-{cluster}.key"))
    }

    /// Creates the CA and the server certificate for `server_names`.
    pub fn init(&self, server_names: &[String]) -> Result<(), CertsError> {
        for p in [
            self.ca_cert(),
            self.ca_key(),
            self.server_cert(),
            self.server_key(),
        ] {
            if p.exists() {
                return Err(CertsError::Exists(p));
            }
        }
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| FsError::new(FsAction::CreateDirectory, &self.dir, e))?;
        let ca = new_ca("Klio private CA")?;
        let server = issue_server(&ca, server_names)?;
        write_new(&self.ca_cert(), &ca.cert_pem, 0o644)?;
        write_new(&self.ca_key(), &ca.key_pem, 0o600)?;
        write_new(&self.server_cert(), &server.cert_pem, 0o644)?;
        write_new(&self.server_key(), &server.key_pem, 0o600)?;
        Ok(())
    }

    /// Issues the client certificate of `cluster` with the CA made by [`CertsDir::init`].
    pub fn issue_client(&self, cluster: &ClusterName) -> Result<(), CertsError> {
        let read = |p: PathBuf| {
            std::fs::read_to_string(&p).map_err(|e| FsError::new(FsAction::Read, &p, e))
        };
        let ca = IssuedCert {
            cert_pem: read(self.ca_cert())?,
            key_pem: read(self.ca_key())?,
        };
        for p in [self.client_cert(cluster), self.client_key(cluster)] {
            if p.exists() {
                return Err(CertsError::Exists(p));
            }
        }
        let client = issue_client(&ca, cluster)?;
        write_new(&self.client_cert(cluster), &client.cert_pem, 0o644)?;
        write_new(&self.client_key(cluster), &client.key_pem, 0o600)?;
        Ok(())
    }
}

fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), CertsError> {
    // Losing a freshly issued key after a crash would only mean issuing it again, but a
    // truncated key file would be a confusing failure later: write_new fsyncs the file and its
    // directory.
    Ok(durable::write_new(path, contents.as_bytes(), mode)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::cluster_of_certificate;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn client_certificates_carry_their_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let certs = CertsDir::new(dir.path());
        certs
            .init(&["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
        let pg1 = ClusterName::new("pg1").unwrap();
        certs.issue_client(&pg1).unwrap();
        let pem = std::fs::read(certs.client_cert(&pg1)).unwrap();
        let der = CertificateDer::from_pem_slice(&pem).unwrap();
        assert_eq!(cluster_of_certificate(&der).unwrap(), pg1);
        let server =
            CertificateDer::from_pem_slice(&std::fs::read(certs.server_cert()).unwrap()).unwrap();
        assert!(cluster_of_certificate(&server).is_err());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(certs.client_key(&pg1))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            certs.init(&["x".to_owned()]),
            Err(CertsError::Exists(_))
        ));
        assert!(matches!(
            certs.issue_client(&pg1),
            Err(CertsError::Exists(_))
        ));
    }
}
