//! Certificates for tests: a CA and client certificates, as `klio certs` writes them.

use std::path::PathBuf;

use super::ClientSettings;

/// A CA with client certificates, written as `klio certs` writes them.
pub(crate) struct Pki {
    dir: tempfile::TempDir,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    pub(crate) fn new(name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} CA"));
        let ca = params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Self {
            dir,
            issuer: rcgen::Issuer::new(params, ca_key),
        }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `client-<cluster>.pem` and `.key`.
    pub(crate) fn client(&self, cluster: &str) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("klio@{cluster}"));
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(self.path(&format!("client-{cluster}.pem")), cert.pem()).unwrap();
        std::fs::write(
            self.path(&format!("client-{cluster}.key")),
            key.serialize_pem(),
        )
        .unwrap();
    }

    /// A server certificate for `localhost`, as DER (certificate, PKCS#8 key), for a test
    /// server the client verifies against this CA (also written as `server.pem`/`.key`).
    pub(crate) fn localhost_server(&self) -> (Vec<u8>, Vec<u8>) {
        let (cert, key) = self.server();
        (cert.to_vec(), key.secret_der().to_vec())
    }

    /// Writes `server.pem` and `server.key`, a server certificate for `localhost`; returns
    /// them as DER for a test server.
    pub(crate) fn server(
        &self,
    ) -> (
        rustls::pki_types::CertificateDer<'static>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(self.path("server.pem"), cert.pem()).unwrap();
        std::fs::write(self.path("server.key"), key.serialize_pem()).unwrap();
        let der = rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der());
        (cert.der().clone(), der.into())
    }

    /// Flags for `cluster`'s certificate and this CA.
    pub(crate) fn flags(&self, cluster: &str) -> ClientSettings {
        ClientSettings {
            address: Some("localhost:7470".into()),
            server_name: None,
            ca: Some(self.path("ca.pem")),
            cert: Some(self.path(&format!("client-{cluster}.pem"))),
            key: Some(self.path(&format!("client-{cluster}.key"))),
            cluster: Some(cluster.into()),
        }
    }
}
