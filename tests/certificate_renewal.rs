//! Certificates renewed while WAL streams: `klio certs renew` reissues the server's and the
//! cluster's certificates from the same CA, SIGHUP makes the server serve new connections with
//! the new one (its expiry in `/metrics` and `klio status`) and send-wal check its new files,
//! and the established stream never drops: synchronous commits go on being acknowledged on
//! the same connection, and a send-wal started afterwards connects with the renewed files.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::retention::{metrics_page, status_json};
use common::*;
use klio_testkit::{SEND_WAL_SLOT, run, run_ok, wait_until};

/// `klio_certificate_expiry_timestamp_seconds{certificate="<which>",cluster="<cluster>"}` on
/// `page` (the cluster is empty for the server's own certificates).
fn expiry_of(page: &str, which: &str, cluster: &str) -> Option<u64> {
    let series = format!(
        "klio_certificate_expiry_timestamp_seconds{{certificate=\"{which}\",cluster=\"{cluster}\"}} "
    );
    page.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
}

fn expiry(page: &str, which: &str) -> Option<u64> {
    expiry_of(page, which, "")
}

fn days_from_now(seconds: u64) -> f64 {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    (seconds as f64 - now as f64) / 86_400.0
}

/// The end of validity of the certificate the server at `address` presents to a new
/// connection (which then fails: it offers no client certificate).
fn served_certificate_expiry(address: &str, ca: &Path) -> u64 {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    /// Keeps the server's certificate, then verifies as Klio's client does.
    #[derive(Debug)]
    struct Capture {
        inner: Arc<rustls::client::WebPkiServerVerifier>,
        seen: Mutex<Option<Vec<u8>>>,
    }
    impl ServerCertVerifier for Capture {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            *self.seen.lock().expect("capture") = Some(end_entity.to_vec());
            self.inner
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
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

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("the CA file") {
        roots
            .add(c.expect("a CA certificate"))
            .expect("a usable CA");
    }
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("a verifier");
    let capture = Arc::new(Capture {
        inner,
        seen: Mutex::new(None),
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(capture.clone())
        .with_no_client_auth();
    tls.alpn_protocols = vec![klio_proto::klio::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC TLS");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let mut endpoint =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("address")).expect("endpoint");
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        let connecting = endpoint
            .connect(address.parse().expect("server address"), "localhost")
            .expect("connect");
        // Refused for want of a client certificate once the server's has been seen.
        if let Ok(conn) = tokio::time::timeout(Duration::from_secs(30), connecting)
            .await
            .expect("the handshake ends")
        {
            let _ = tokio::time::timeout(Duration::from_secs(30), conn.closed()).await;
        }
    });
    let der = capture
        .seen
        .lock()
        .expect("capture")
        .clone()
        .expect("the server presented a certificate");
    let end = klio_server::certificates::not_after(&der).expect("a parsable certificate");
    end.duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// The stream's client address and since when it streams, from `klio status`.
fn streaming_client(stack: &klio_testkit::Stack) -> (String, String) {
    let status = status_json(stack);
    let c = &status["clusters"][0]["streaming_client"];
    (c["address"].to_string(), c["since"].to_string())
}

#[test]
fn certificates_renewed_while_streaming_serve_new_connections_after_sighup_and_no_stream_drops() {
    let mut stack = stack("cert-renew").sync_standby().start();
    stack.pg.psql("CREATE TABLE t (n int)");
    let page = metrics_page(&stack);
    let before = expiry(&page, "server").expect("the server certificate's expiry is exported");
    assert!((days_from_now(before) - 365.0).abs() < 1.0, "{page}");
    assert!(expiry(&page, "ca").is_some(), "{page}");
    let client_before = expiry_of(&page, "client", &stack.cluster).expect("the client's, too");
    assert!((days_from_now(client_before) - 365.0).abs() < 1.0, "{page}");
    let streaming = streaming_client(&stack);
    let ca = stack.certs.file("ca.pem");
    assert_eq!(
        served_certificate_expiry(&stack.server.address(), &ca),
        before
    );

    let dir = stack.certs.dir.clone();
    for which in [&["--server"][..], &["--cluster", &stack.cluster]] {
        run_ok(
            Command::new(&stack.exe)
                .args(["certs", "renew", "-D"])
                .arg(&dir)
                .args(which)
                .args(["--days", "2"]),
        );
    }
    stack.server.signal("HUP");
    stack.client.signal("HUP");
    let after = wait_until(
        "the server to load its renewed certificate",
        Duration::from_secs(60),
        || expiry(&metrics_page(&stack), "server").filter(|e| *e != before),
    );
    assert!((days_from_now(after) - 2.0).abs() < 0.1, "{after}");
    let served = served_certificate_expiry(&stack.server.address(), &ca);
    assert_eq!(
        served, after,
        "new connections are served with the renewed certificate"
    );

    // The stream never dropped: synchronous commits are acknowledged on the same connection.
    for n in 0..20 {
        stack.pg.psql(&format!("INSERT INTO t VALUES ({n})"));
    }
    assert_eq!(
        streaming_client(&stack),
        streaming,
        "the stream reconnected"
    );
    wait_until(
        "send-wal to check its renewed files",
        Duration::from_secs(60),
        || {
            stack
                .client
                .log()
                .contains("SIGHUP: the certificate")
                .then_some(())
        },
    );
    let log = stack.server.log();
    assert!(
        log.contains("SIGHUP: loaded the server certificate"),
        "{log}"
    );
    assert!(
        log.contains("expires at"),
        "a 2-day certificate is warned about:\n{log}"
    );
    let text = run(Command::new(&stack.exe).args([
        "status",
        "--address",
        &stack.server.metrics_address(),
    ]));
    assert!(
        text.stdout.contains("certificate server: valid until")
            && text.stdout.contains("EXPIRES SOON"),
        "{}",
        text.stdout
    );

    // A new connection presents the renewed client certificate and is served with the
    // renewed server certificate.
    stack.client.stop();
    stack.client.start();
    stack.pg.wait_for_sync_standby(SEND_WAL_SLOT);
    stack.pg.psql("INSERT INTO t VALUES (100)");
    assert_ne!(streaming_client(&stack), streaming);
    assert_eq!(stack.pg.psql("SELECT count(*) FROM t"), "21");
    let client_after = expiry_of(&metrics_page(&stack), "client", &stack.cluster);
    assert!(
        client_after.is_some_and(|e| (days_from_now(e) - 2.0).abs() < 0.1),
        "{client_after:?}"
    );
    let status = status_json(&stack);
    assert_eq!(
        status["clusters"][0]["client_certificate_expires_soon"], true,
        "{status:#}"
    );
}

#[test]
fn send_wal_waits_out_certificate_files_being_replaced_instead_of_exiting() {
    let mut stack = stack("cert-swap").sync_standby().start();
    stack.pg.psql("CREATE TABLE t (n int)");
    // Half-way through copying a renewal: the key no longer belongs to the certificate.
    let key = stack.certs.file(&format!("client-{}.key", stack.cluster));
    let good = std::fs::read(&key).expect("the client key");
    let other = std::fs::read(stack.certs.file("server.key")).expect("another key");
    std::fs::write(&key, other).expect("replace the key");
    // The server going away makes send-wal reconnect, reading the files again.
    stack.server.restart();
    wait_until(
        "send-wal to report the unusable files",
        Duration::from_secs(120),
        || {
            stack
                .client
                .log()
                .contains("the certificate files changed since send-wal connected")
                .then_some(())
        },
    );
    assert!(
        stack.client.is_running(),
        "send-wal exited:\n{}",
        stack.client.log()
    );

    std::fs::write(&key, good).expect("put the key back");
    stack.pg.wait_for_sync_standby(SEND_WAL_SLOT);
    stack.pg.psql("INSERT INTO t VALUES (1)");
    assert!(stack.client.is_running(), "{}", stack.client.log());
}
