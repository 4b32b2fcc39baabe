//! `klio certs`: a private CA, the server certificate and per-cluster client certificates, so
//! that a first secure setup takes one command.

use std::path::{Path, PathBuf};

use klio_proto::klio::ClusterName;
use klio_wal::{FsAction, FsError, durable};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;

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
    /// There is no certificate to renew, or no CA to renew it with.
    #[error("{0} does not exist: make it with `klio certs init` or `klio certs client` first")]
    NothingToRenew(PathBuf),
    /// The CA's key is not in the directory (it is kept offline once certificates are issued).
    #[error(
        "{0} is missing: put the CA's key back in the directory while certificates are issued or renewed, then take it offline again"
    )]
    CaKeyMissing(PathBuf),
    /// The certificate to renew cannot be read as one.
    #[error("{0} is not a PEM certificate with the names to renew it for")]
    Unparsable(PathBuf),
}

/// How long a new CA is valid unless the operator chooses (`klio certs init --ca-days`).
pub const DEFAULT_CA_DAYS: u32 = 3650;
/// How long a new server or client certificate is valid unless the operator chooses
/// (`--days`).
pub const DEFAULT_DAYS: u32 = 365;

/// Makes `params` valid from a little before now (clocks of hosts differ) for `days` days.
fn valid_for(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

/// Ends `params`' validity no later than the CA's: a certificate cannot be trusted longer than
/// its issuer.
fn end_with_ca(params: &mut CertificateParams, ca: &IssuedCert) {
    let ca_end = rustls::pki_types::CertificateDer::from_pem_slice(ca.cert_pem.as_bytes())
        .ok()
        .and_then(|der| crate::certificates::not_after(&der))
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok());
    if let Some(end) = ca_end {
        params.not_after = params.not_after.min(end);
    }
}

/// A new self-signed CA, valid for `days` days.
pub fn new_ca(common_name: &str, days: u32) -> Result<IssuedCert, CertsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    valid_for(&mut params, days);
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

/// A server certificate for `names` (DNS names or IP addresses), signed by `ca`, valid for
/// `days` days.
pub fn issue_server(
    ca: &IssuedCert,
    names: &[String],
    days: u32,
) -> Result<IssuedCert, CertsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    valid_for(&mut params, days);
    end_with_ca(&mut params, ca);
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

/// A client certificate for `cluster` (`CN=klio@<cluster>`), signed by `ca`, valid for `days`
/// days.
pub fn issue_client(
    ca: &IssuedCert,
    cluster: &ClusterName,
    days: u32,
) -> Result<IssuedCert, CertsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    valid_for(&mut params, days);
    end_with_ca(&mut params, ca);
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

    /// Creates the CA (valid for `ca_days`) and the server certificate for `server_names`
    /// (valid for `days`).
    pub fn init(&self, server_names: &[String], ca_days: u32, days: u32) -> Result<(), CertsError> {
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
        let ca = new_ca("Klio private CA", ca_days)?;
        let server = issue_server(&ca, server_names, days)?;
        write_new(&self.ca_cert(), &ca.cert_pem, 0o644)?;
        write_new(&self.ca_key(), &ca.key_pem, 0o600)?;
        write_new(&self.server_cert(), &server.cert_pem, 0o644)?;
        write_new(&self.server_key(), &server.key_pem, 0o600)?;
        Ok(())
    }

    /// Issues the client certificate of `cluster`, valid for `days`, with the CA made by
    /// [`CertsDir::init`].
    pub fn issue_client(&self, cluster: &ClusterName, days: u32) -> Result<(), CertsError> {
        let ca = self.read_ca()?;
        for p in [self.client_cert(cluster), self.client_key(cluster)] {
            if p.exists() {
                return Err(CertsError::Exists(p));
            }
        }
        let client = issue_client(&ca, cluster, days)?;
        write_new(&self.client_cert(cluster), &client.cert_pem, 0o644)?;
        write_new(&self.client_key(cluster), &client.key_pem, 0o600)?;
        Ok(())
    }

    /// Reissues the server certificate, for the names the current one carries, valid for
    /// `days`, from the same CA; returns the names. Clients need nothing new: they trust the CA.
    pub fn renew_server(&self, days: u32) -> Result<Vec<String>, CertsError> {
        let ca = self.read_ca()?;
        let current = self.server_cert();
        let names = names_of(&read_text(&current)?).ok_or(CertsError::Unparsable(current))?;
        let server = issue_server(&ca, &names, days)?;
        replace(&self.server_key(), &self.server_cert(), &server)?;
        Ok(names)
    }

    /// Reissues the client certificate of `cluster`, valid for `days`, from the same CA.
    pub fn renew_client(&self, cluster: &ClusterName, days: u32) -> Result<(), CertsError> {
        let ca = self.read_ca()?;
        let current = self.client_cert(cluster);
        if !current.exists() {
            return Err(CertsError::NothingToRenew(current));
        }
        let client = issue_client(&ca, cluster, days)?;
        replace(&self.client_key(cluster), &current, &client)
    }

    fn read_ca(&self) -> Result<IssuedCert, CertsError> {
        let key = self.ca_key();
        let key_pem = match std::fs::read_to_string(&key) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CertsError::CaKeyMissing(key));
            }
            other => other.map_err(|e| FsError::new(FsAction::Read, &key, e))?,
        };
        Ok(IssuedCert {
            cert_pem: read_text(&self.ca_cert())?,
            key_pem,
        })
    }
}

fn read_text(path: &Path) -> Result<String, CertsError> {
    std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => CertsError::NothingToRenew(path.to_owned()),
        _ => FsError::new(FsAction::Read, path, e).into(),
    })
}

/// The DNS names and IP addresses of a PEM certificate's subject alternative names.
fn names_of(pem: &str) -> Option<Vec<String>> {
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let names: Vec<String> = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(n) => Some((*n).to_owned()),
            x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                4 => <[u8; 4]>::try_from(*b)
                    .ok()
                    .map(|a| std::net::Ipv4Addr::from(a).to_string()),
                16 => <[u8; 16]>::try_from(*b)
                    .ok()
                    .map(|a| std::net::Ipv6Addr::from(a).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    (!names.is_empty()).then_some(names)
}

/// Puts a renewed certificate and key in place of `cert` and `key`, with the owners and
/// permission bits of the files they replace. Both new files are complete, owned and on disk
/// before either is renamed, so that a failure (a `chown` refused, a full disk) leaves the old
/// pair whole. The key is renamed first: a crash between the renames leaves the new key with
/// the old certificate, which the server and clients refuse at start with a clear error, and
/// running the renewal again repairs it.
fn replace(key: &Path, cert: &Path, renewed: &IssuedCert) -> Result<(), CertsError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut ready = Vec::new();
    for (path, contents, mode) in [
        (key, &renewed.key_pem, 0o600),
        (cert, &renewed.cert_pem, 0o644),
    ] {
        // Created 0600: the key is never readable by others, even for a moment.
        let temp = durable::TempFile::create(path)?;
        temp.write_all_at(contents.as_bytes(), 0)?;
        let (uid, gid, mode) = match std::fs::metadata(path) {
            Ok(old) => (Some(old.uid()), Some(old.gid()), old.mode() & 0o777),
            Err(_) => (None, None, mode),
        };
        std::os::unix::fs::fchown(temp.file(), uid, gid)
            .and_then(|()| {
                temp.file()
                    .set_permissions(std::fs::Permissions::from_mode(mode))
            })
            .map_err(|e| FsError::new(FsAction::Write, temp.path(), e))?;
        ready.push(temp);
    }
    // Each is fsynced before its rename: the final name must never point at missing contents.
    for temp in ready {
        temp.publish()?;
    }
    Ok(())
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
            .init(
                &["localhost".to_owned(), "127.0.0.1".to_owned()],
                DEFAULT_CA_DAYS,
                DEFAULT_DAYS,
            )
            .unwrap();
        let pg1 = ClusterName::new("pg1").unwrap();
        certs.issue_client(&pg1, DEFAULT_DAYS).unwrap();
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
            certs.init(&["x".to_owned()], 1, 1),
            Err(CertsError::Exists(_))
        ));
        assert!(matches!(
            certs.issue_client(&pg1, 1),
            Err(CertsError::Exists(_))
        ));
    }

    /// The validity of a PEM certificate, as Unix seconds.
    fn validity(path: &Path) -> (i64, i64) {
        let der = CertificateDer::from_pem_slice(&std::fs::read(path).unwrap()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let v = cert.validity();
        (v.not_before.timestamp(), v.not_after.timestamp())
    }

    #[test]
    fn renewal_reissues_from_the_same_ca_for_the_same_names_and_keeps_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let certs = CertsDir::new(dir.path());
        let names = [
            "db.example".to_owned(),
            "10.0.0.7".to_owned(),
            "::1".to_owned(),
        ];
        certs.init(&names, 30, 2).unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let day = 86_400;
        let (from, until) = validity(&certs.server_cert());
        assert!(
            from <= now && (until - now - 2 * day).abs() < 60,
            "{from} {until}"
        );
        assert!((validity(&certs.ca_cert()).1 - now - 30 * day).abs() < 60);

        let old_cert = std::fs::read(certs.server_cert()).unwrap();
        let old_key = std::fs::read(certs.server_key()).unwrap();
        assert_eq!(certs.renew_server(10).unwrap(), names);
        assert_ne!(std::fs::read(certs.server_key()).unwrap(), old_key);
        assert_ne!(std::fs::read(certs.server_cert()).unwrap(), old_cert);
        assert!((validity(&certs.server_cert()).1 - now - 10 * day).abs() < 60);
        // Never beyond the CA's own end (30 days here).
        certs.renew_server(400).unwrap();
        assert_eq!(
            validity(&certs.server_cert()).1,
            validity(&certs.ca_cert()).1
        );
        let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(certs.server_key()), 0o600);
        assert_eq!(mode(certs.server_cert()), 0o644);

        let pg1 = ClusterName::new("pg1").unwrap();
        assert!(matches!(
            certs.renew_client(&pg1, 10),
            Err(CertsError::NothingToRenew(_))
        ));
        certs.issue_client(&pg1, 1).unwrap();
        certs.renew_client(&pg1, 10).unwrap();
        assert!((validity(&certs.client_cert(&pg1)).1 - now - 10 * day).abs() < 60);

        // The renewed certificates chain to the CA that was there before.
        let ca = CertificateDer::from_pem_slice(&std::fs::read(certs.ca_cert()).unwrap()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            provider,
        )
        .build()
        .unwrap();
        let client =
            CertificateDer::from_pem_slice(&std::fs::read(certs.client_cert(&pg1)).unwrap())
                .unwrap();
        verifier
            .verify_client_cert(&client, &[], rustls::pki_types::UnixTime::now())
            .unwrap();
    }
}
