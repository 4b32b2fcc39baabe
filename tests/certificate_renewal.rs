//! Certificates renewed while WAL streams: `klio certs renew` reissues the server's and the
//! cluster's certificates from the same CA, SIGHUP makes the server serve new connections with
//! the new one (its expiry in `/metrics` and `klio status`) and send-wal check its new files,
//! and the established stream never drops: synchronous commits go on being acknowledged on
//! the same connection, and a send-wal started afterwards connects with the renewed files.

mod common;

use std::process::Command;
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
