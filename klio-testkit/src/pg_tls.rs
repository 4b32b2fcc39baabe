//! TLS for test PostgreSQL servers: a private CA, a server certificate for `127.0.0.1` and
//! `localhost`, client certificates for roles, and a revocation list, all owned by the
//! `postgres` user so that PostgreSQL and the clients the tests run as `postgres` can read them.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber,
};

use crate::PgServer;
use crate::test_dir::give_to_postgres;

/// The serial number of the server certificate, which [`PgCertificates::crl_revoking_server`]
/// revokes.
const SERVER_SERIAL: u64 = 2;

/// A CA and the certificates it issued, as files in one directory.
pub struct PgCertificates {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    next_serial: std::cell::Cell<u64>,
}

impl std::fmt::Debug for PgCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgCertificates")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl PgCertificates {
    /// A new CA (`ca.crt`) and server certificate (`server.crt`, `server.key`) in `dir`.
    pub fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("create the certificates' directory");
        give_to_postgres(dir);
        let key = KeyPair::generate().expect("generate the test CA's key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Klio test PostgreSQL CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(SerialNumber::from(1u64));
        let ca = params.self_signed(&key).expect("self-sign the test CA");
        let certs = Self {
            dir: dir.to_owned(),
            issuer: Issuer::new(params, key),
            next_serial: std::cell::Cell::new(SERVER_SERIAL),
        };
        certs.write("ca.crt", &ca.pem());
        let mut server =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server certificate parameters");
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        certs.issue("server", server);
        certs
    }

    /// Issues `<role>.crt` and `<role>.key` with `CN=<role>`, which PostgreSQL's `cert`
    /// authentication maps to the role; returns their paths.
    pub fn client(&self, role: &str) -> (PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(Vec::<String>::new()).expect("client certificate parameters");
        params.distinguished_name.push(DnType::CommonName, role);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(role, params);
        (
            self.file(&format!("{role}.crt")),
            self.file(&format!("{role}.key")),
        )
    }

    /// `server.crl`: a revocation list, signed by the CA, that revokes the server certificate.
    pub fn crl_revoking_server(&self) -> PathBuf {
        let params = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2020, 1, 1),
            next_update: rcgen::date_time_ymd(2100, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![RevokedCertParams {
                serial_number: SerialNumber::from(SERVER_SERIAL),
                revocation_time: rcgen::date_time_ymd(2021, 1, 1),
                reason_code: None,
                invalidity_date: None,
            }],
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params
            .signed_by(&self.issuer)
            .expect("sign the revocation list");
        self.write(
            "server.crl",
            &crl.pem().expect("PEM of the revocation list"),
        );
        self.file("server.crl")
    }

    /// The CA certificate, for `sslrootcert`.
    pub fn ca_cert(&self) -> PathBuf {
        self.file("ca.crt")
    }

    /// A file of the directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn issue(&self, name: &str, mut params: CertificateParams) {
        let serial = self.next_serial.get();
        self.next_serial.set(serial + 1);
        params.serial_number = Some(SerialNumber::from(serial));
        let key = KeyPair::generate().expect("generate a test key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign a test certificate");
        self.write(&format!("{name}.crt"), &cert.pem());
        self.write(&format!("{name}.key"), &key.serialize_pem());
    }

    /// Writes `name` readable by its owner only (PostgreSQL and libpq refuse keys others may
    /// read), owned by `postgres`.
    fn write(&self, name: &str, contents: &str) {
        let path = self.file(name);
        std::fs::write(&path, contents).expect("write a test certificate file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .expect("make a test certificate file private");
        give_to_postgres(&path);
    }
}

impl PgServer {
    /// Turns TLS on with `certs`' server certificate and requires a client certificate
    /// (`cert` authentication) for every TCP connection, replication included; restarts.
    pub fn require_client_certificates(&mut self, certs: &PgCertificates) {
        let mut conf = String::new();
        let _ = writeln!(conf, "ssl = on");
        for (setting, file) in [
            ("ssl_cert_file", "server.crt"),
            ("ssl_key_file", "server.key"),
            ("ssl_ca_file", "ca.crt"),
        ] {
            let _ = writeln!(conf, "{setting} = '{}'", certs.file(file).display());
        }
        crate::pg::append_conf(&self.data_dir(), &conf);
        let hba = "local all all trust\nlocal replication all trust\n\
                   hostssl all all 127.0.0.1/32 cert\nhostssl replication all 127.0.0.1/32 cert\n";
        std::fs::write(self.data_dir().join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        self.restart();
    }
}
