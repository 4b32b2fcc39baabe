//! The replication connection against real PostgreSQL 15 servers: every authentication
//! method, TLS modes, Unix sockets, and the errors an operator would hit.

use klio_client::{ConnParams, ConnectionError, ReplicationConnection};
use klio_proto::replication::SlotReservation;
use klio_testkit::{Auth, PASSWORD, PgOptions, PgServer};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn connect(connstr: &str) -> Result<ReplicationConnection, ConnectionError> {
    let cfg = ConnParams::parse(connstr)
        .expect("connection string")
        .resolve(|_| None)
        .expect("settings");
    ReplicationConnection::connect(&cfg).await
}

/// A server that asks for the `postgres` role's password ([`PASSWORD`]).
fn scram_server() -> PgServer {
    PgServer::start(PgOptions {
        auth: Auth::Scram,
        ..PgOptions::default()
    })
}

/// Asserts that `c` reached `pg`.
async fn assert_connected_to(c: &mut ReplicationConnection, pg: &PgServer) {
    let system = c.identify_system().await.expect("IDENTIFY_SYSTEM");
    assert_eq!(system.system_id, system_id(pg));
}

fn system_id(pg: &PgServer) -> u64 {
    pg.psql("SELECT system_identifier FROM pg_control_system()")
        .parse()
        .expect("system identifier")
}

#[test]
fn every_password_method_authenticates_and_wrong_passwords_are_refused() {
    let rt = runtime();
    for auth in [Auth::Trust, Auth::Cleartext, Auth::Md5, Auth::Scram] {
        let pg = PgServer::start(PgOptions {
            auth,
            ..PgOptions::default()
        });
        let base = format!("{} sslmode=disable", pg.tcp_connstr());
        rt.block_on(async {
            let mut c = connect(&format!("{base} password={PASSWORD}"))
                .await
                .unwrap_or_else(|e| panic!("{auth:?}: {e}"));
            let sys = c.identify_system().await.expect("IDENTIFY_SYSTEM");
            assert_eq!(sys.system_id, system_id(&pg), "{auth:?}");
            assert_eq!(sys.timeline.get(), 1);
            assert_eq!(c.server_major_version(), Some(15));
            if auth == Auth::Trust {
                return;
            }
            let e = connect(&format!("{base} password=wrong"))
                .await
                .unwrap_err();
            let server = e.server_error().unwrap_or_else(|| panic!("{auth:?}: {e}"));
            assert_eq!(server.code, "28P01", "{auth:?}: {e}");
            let e = connect(&base).await.unwrap_err().to_string();
            assert!(e.contains("PGPASSWORD"), "{auth:?}: {e}");
        });
    }
}

#[test]
fn unix_socket_slots_and_settings() {
    let pg = PgServer::start(PgOptions {
        wal_segsize_mb: 4,
        ..PgOptions::default()
    });
    runtime().block_on(async {
        let mut c = connect(&pg.socket_connstr())
            .await
            .expect("connect over the socket");
        assert_eq!(c.wal_segment_size().await.expect("SHOW").bytes(), 4 << 20);
        let missing = c
            .read_replication_slot("nope")
            .await
            .expect("READ_REPLICATION_SLOT");
        assert!(!missing.exists());
        let created = c
            .create_physical_slot("klio_slot", SlotReservation::Immediately)
            .await
            .expect("create slot");
        assert_eq!(created.slot_name, "klio_slot");
        let slot = c
            .read_replication_slot("klio_slot")
            .await
            .expect("read slot");
        assert_eq!(slot.slot_type.as_deref(), Some("physical"));
        assert!(slot.restart_lsn.is_some(), "RESERVE_WAL sets restart_lsn");
        let dup = c
            .create_physical_slot("klio_slot", SlotReservation::Immediately)
            .await
            .unwrap_err();
        assert_eq!(dup.server_error().map(|s| s.code.as_str()), Some("42710"));
        // The connection stays usable after a server error.
        c.identify_system()
            .await
            .expect("IDENTIFY_SYSTEM after an error");
    });
    assert_eq!(
        pg.psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'klio_slot'"),
        "1"
    );
}

#[test]
fn a_private_password_file_gives_the_password_and_one_others_can_read_is_ignored() {
    use std::os::unix::fs::PermissionsExt;
    let pg = scram_server();
    let dir = tempfile::tempdir().expect("temporary directory");
    let passfile = dir.path().join("pgpass");
    let connstr = format!(
        "{} sslmode=disable passfile={}",
        pg.tcp_connstr(),
        passfile.display()
    );
    let write = |contents: &str, mode: u32| {
        std::fs::write(&passfile, contents).expect("write the password file");
        std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(mode))
            .expect("chmod the password file");
    };
    let port = pg.port();
    runtime().block_on(async {
        // A replication connection's database, in the password file, is `replication`.
        write(
            &format!("# klio test\n127.0.0.1:{port}:replication:postgres:{PASSWORD}\n"),
            0o600,
        );
        let mut c = connect(&connstr).await.expect("password from the file");
        assert_connected_to(&mut c, &pg).await;

        write(
            &format!("127.0.0.1:{port}:postgres:postgres:{PASSWORD}\n"),
            0o600,
        );
        let e = connect(&connstr).await.unwrap_err().to_string();
        assert!(e.contains("no password is configured"), "{e}");

        write(&format!("*:*:*:*:{PASSWORD}\n"), 0o644);
        let e = connect(&connstr).await.unwrap_err().to_string();
        assert!(e.contains("no password is configured"), "ignored: {e}");
        write(&format!("*:*:*:*:{PASSWORD}\n"), 0o600);
        connect(&connstr).await.expect("the same file, private");
    });
}

#[test]
fn a_service_names_the_server_and_the_connection_string_still_wins() {
    let pg = scram_server();
    let dir = tempfile::tempdir().expect("temporary directory");
    let services = dir.path().join("services.conf");
    std::fs::write(
        &services,
        format!(
            "[elsewhere]\nhost=192.0.2.1\n\n[klio-test]\n# the test server\nhost = 127.0.0.1\nport={}\nuser=postgres\npassword={PASSWORD}\nsslmode=disable\n",
            pg.port()
        ),
    )
    .expect("write the service file");
    let services = services.display().to_string();
    let env = |k: &str| (k == "PGSERVICEFILE").then(|| services.clone());
    let resolve = |connstr: &str| {
        ConnParams::parse(connstr)
            .expect("connection string")
            .resolve(env)
    };
    runtime().block_on(async {
        let cfg = resolve("service=klio-test").expect("settings from the service");
        let mut c = ReplicationConnection::connect(&cfg).await.expect("connect");
        assert_connected_to(&mut c, &pg).await;
        // What the connection string sets wins over the service.
        let cfg = resolve("service=klio-test password=wrong").expect("settings");
        let e = ReplicationConnection::connect(&cfg).await.unwrap_err();
        assert_eq!(
            e.server_error().map(|s| s.code.as_str()),
            Some("28P01"),
            "{e}"
        );
    });
    let e = resolve("service=absent").unwrap_err().to_string();
    assert!(
        e.contains("definition of service \"absent\" not found"),
        "{e}"
    );
}

#[test]
fn unreachable_server_is_a_clear_error() {
    runtime().block_on(async {
        let e = connect("host=127.0.0.1 port=1 sslmode=disable")
            .await
            .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("127.0.0.1:1") && text.contains("is PostgreSQL running"),
            "{text}"
        );
    });
}

struct Pki {
    ca_pem: String,
    server_cert_pem: String,
    server_key_pem: String,
}

fn pki(server_name: &str) -> Pki {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "klio test CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA cert");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("server key");
    let params =
        rcgen::CertificateParams::new(vec![server_name.to_owned()]).expect("server params");
    let cert = params.signed_by(&key, &issuer).expect("server cert");
    Pki {
        ca_pem: ca.pem(),
        server_cert_pem: cert.pem(),
        server_key_pem: key.serialize_pem(),
    }
}

#[test]
fn tls_modes_follow_libpq() {
    let pg = PgServer::start(PgOptions::default());
    let rt = runtime();
    // Without ssl, require is refused and prefer falls back.
    rt.block_on(async {
        let e = connect(&format!("{} sslmode=require", pg.tcp_connstr()))
            .await
            .unwrap_err();
        assert!(matches!(e, ConnectionError::TlsNotOffered { .. }), "{e}");
        connect(&format!("{} sslmode=prefer", pg.tcp_connstr()))
            .await
            .expect("prefer falls back");
    });

    let good = pki("localhost");
    let other = pki("localhost");
    let data = pg.data_dir();
    std::fs::write(data.join("server.crt"), &good.server_cert_pem).unwrap();
    std::fs::write(data.join("server.key"), &good.server_key_pem).unwrap();
    for f in ["server.crt", "server.key"] {
        klio_testkit::run_ok(
            std::process::Command::new("chown")
                .arg("postgres:postgres")
                .arg(data.join(f)),
        );
        klio_testkit::run_ok(
            std::process::Command::new("chmod")
                .arg("600")
                .arg(data.join(f)),
        );
    }
    pg.set_conf("ssl = on");
    let ca = pg.dir().path().join("ca.pem");
    let wrong_ca = pg.dir().path().join("other-ca.pem");
    std::fs::write(&ca, &good.ca_pem).unwrap();
    std::fs::write(&wrong_ca, &other.ca_pem).unwrap();
    let port = pg.port();
    rt.block_on(async {
        connect(&format!(
            "host=127.0.0.1 port={port} user=postgres sslmode=require"
        ))
        .await
        .expect("require");
        connect(&format!(
            "host=localhost port={port} user=postgres sslmode=verify-full sslrootcert={}",
            ca.display()
        ))
        .await
        .expect("verify-full with the right CA and name");
        connect(&format!(
            "host=127.0.0.1 port={port} user=postgres sslmode=verify-ca sslrootcert={}",
            ca.display()
        ))
        .await
        .expect("verify-ca ignores the host name");
        let e = connect(&format!(
            "host=127.0.0.1 port={port} user=postgres sslmode=verify-full sslrootcert={}",
            ca.display()
        ))
        .await
        .unwrap_err();
        assert!(matches!(e, ConnectionError::Tls(_)), "name mismatch: {e}");
        let e = connect(&format!(
            "host=localhost port={port} user=postgres sslmode=verify-full sslrootcert={}",
            wrong_ca.display()
        ))
        .await
        .unwrap_err();
        assert!(matches!(e, ConnectionError::Tls(_)), "wrong CA: {e}");
    });
}
