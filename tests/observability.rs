//! Metrics, health and `klio status` against a real stream: PostgreSQL 15 → send-wal → server.
//! The values must move as WAL flows, agree with what PostgreSQL itself reports in
//! `pg_stat_replication`, and show failures (a server gone, a foreign cluster, restores).

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::*;
use klio_testkit::{Stack, free_tcp_port, run, run_ok, wait_until};

/// One HTTP GET: status code and body.
fn get(addr: &str, path: &str) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let page = rt
        .block_on(klio_metrics::http_get(addr, path, Duration::from_secs(10)))
        .unwrap_or_else(|e| panic!("GET {addr}{path}: {e}"));
    (page.status, page.body)
}

/// The samples of a `/metrics` page, by series (`name{labels}`).
fn scrape(addr: &str) -> BTreeMap<String, f64> {
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(body.ends_with("# EOF\n"), "not OpenMetrics text: {body}");
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {l}"));
            (series.to_owned(), value.parse::<f64>().unwrap())
        })
        .collect()
}

fn value(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    *m.get(series)
        .unwrap_or_else(|| panic!("no series {series} in {:#?}", m.keys().collect::<Vec<_>>()))
}

fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.trim().split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

const C: &str = "{cluster=\"pg1\"}";

fn s(name: &str) -> String {
    format!("{name}{C}")
}

#[test]
fn metrics_move_with_the_stream_and_status_agrees_with_postgres() {
    let client_metrics = format!("127.0.0.1:{}", free_tcp_port());
    let mut stack = stack("observability")
        .segment_size_mb(1)
        .send_wal_args(["--metrics-listen", &client_metrics])
        .start();
    let Stack {
        pg,
        server,
        client,
        certs,
        work,
        exe,
        ..
    } = &mut stack;
    let server_metrics = server.metrics_address();

    // Both report healthy once streaming.
    assert_eq!(get(&server_metrics, "/healthz").0, 200);
    wait_until("send-wal to be healthy", Duration::from_secs(30), || {
        std::net::TcpStream::connect(&client_metrics).ok()?;
        (get(&client_metrics, "/healthz").0 == 200).then_some(())
    });
    let start = pg.current_lsn();
    pg.wait_for_flush("klio", &start);
    let before = scrape(&server_metrics);
    let client_before = scrape(&client_metrics);

    // About 10 MiB of WAL.
    pg.psql("CREATE TABLE t AS SELECT g, repeat('x', 100) AS pad FROM generate_series(1, 60000) g");
    pg.switch_wal();
    let end = pg.current_lsn();
    assert!(lsn(&end) - lsn(&start) > 8 << 20, "{start} .. {end}");
    pg.wait_for_flush("klio", &end);

    // Everything received becomes durable and acknowledged.
    let after = wait_until(
        "all WAL received to be acknowledged",
        Duration::from_secs(20),
        || {
            let m = scrape(&server_metrics);
            (m[&s("klio_wal_acknowledged_bytes_total")] == m[&s("klio_wal_received_bytes_total")])
                .then_some(m)
        },
    );
    let grew = |name: &str| value(&after, &s(name)) - before.get(&s(name)).copied().unwrap_or(0.0);
    assert!(grew("klio_wal_received_bytes_total") >= (8 << 20) as f64);
    assert!(grew("klio_wal_acknowledged_bytes_total") >= (8 << 20) as f64);
    assert!(grew("klio_wal_segments_completed_total") >= 8.0);
    assert!(grew("klio_wal_ack_latency_seconds_count") >= 1.0);
    assert!(grew("klio_wal_fsync_duration_seconds_count") >= 1.0);
    assert!(value(&after, &s("klio_wal_durable_lsn")) >= lsn(&end) as f64);
    assert_eq!(value(&after, &s("klio_wal_durable_timeline")), 1.0);
    assert!(value(&after, &s("klio_wal_upstream_lsn")) >= lsn(&end) as f64);
    assert_eq!(value(&after, &s("klio_connected_clients")), 1.0);
    // The archive is surveyed at most every few seconds.
    let after = wait_until(
        "the archive survey to see the new WAL",
        Duration::from_secs(20),
        || {
            let m = scrape(&server_metrics);
            (value(&m, &s("klio_archive_size_bytes")) >= (8 << 20) as f64).then_some(m)
        },
    );
    assert_eq!(value(&after, &s("klio_archive_gaps")), 0.0);
    assert!(value(&after, &s("klio_archive_recoverable_to_lsn")) >= lsn(&end) as f64);
    assert!(
        value(&after, &s("klio_archive_recoverable_from_lsn")) <= lsn(&start) as f64,
        "the WAL since the stream began is recoverable"
    );
    // The last bucket is +Inf and holds every observation.
    assert_eq!(
        value(
            &after,
            "klio_wal_fsync_duration_seconds_bucket{le=\"+Inf\",cluster=\"pg1\"}"
        ),
        value(&after, &s("klio_wal_fsync_duration_seconds_count"))
    );

    // send-wal's own view of the same stream.
    let client_after = scrape(&client_metrics);
    let client_grew = |name: &str| {
        value(&client_after, &s(name)) - client_before.get(&s(name)).copied().unwrap_or(0.0)
    };
    assert!(client_grew("klio_wal_received_bytes_total") >= (8 << 20) as f64);
    assert!(client_grew("klio_wal_acknowledged_bytes_total") >= (8 << 20) as f64);
    assert!(client_grew("klio_wal_ack_latency_seconds_count") >= 1.0);
    assert!(value(&client_after, &s("klio_wal_durable_lsn")) >= lsn(&end) as f64);
    assert_eq!(value(&client_after, &s("klio_postgres_connected")), 1.0);
    assert_eq!(value(&client_after, &s("klio_server_connected")), 1.0);

    // `klio status` agrees with pg_stat_replication: read PostgreSQL's view before and after,
    // and compare when it did not move in between.
    let pg_view = || {
        pg.psql(
            "SELECT r.flush_lsn, pg_current_wal_flush_lsn(), \
             (SELECT timeline_id FROM pg_control_checkpoint()) \
             FROM pg_stat_replication r WHERE application_name = 'klio'",
        )
    };
    let status_json = |extra: &[&str]| -> serde_json::Value {
        let out = run_ok(
            Command::new(&exe)
                .args(["status", "--address", &server_metrics, "--output", "json"])
                .args(extra),
        );
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
    };
    let (status, view) = wait_until("a quiet moment to compare", Duration::from_secs(60), || {
        let first = pg_view();
        let status = status_json(&["--cluster", "pg1"]);
        (pg_view() == first).then_some((status, first))
    });
    let fields: Vec<&str> = view.split('|').collect();
    let (flush, pg_end, timeline) = (fields[0], fields[1], fields[2]);
    let c = &status["clusters"][0];
    assert_eq!(c["cluster"], "pg1");
    assert_eq!(c["durable_lsn"], flush, "{c:#}");
    assert_eq!(c["timeline"].to_string(), timeline, "{c:#}");
    assert_eq!(
        c["lag_bytes"].as_u64(),
        Some(lsn(pg_end) - lsn(flush)),
        "{c:#}"
    );
    assert_eq!(c["upstream_lsn"], pg_end, "{c:#}");
    assert_eq!(c["recoverable_to"]["lsn"], flush, "{c:#}");
    assert!(lsn(c["recoverable_from"]["lsn"].as_str().unwrap()) <= lsn(&start));
    assert_eq!(c["gaps"], 0);
    assert!(
        c["streaming_client"]["address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert_eq!(c["connections"], 1);
    assert!(c["last_error"].is_null(), "{c:#}");
    let text = run_ok(Command::new(&exe).args(["status", "--address", &server_metrics])).stdout;
    for want in [
        "cluster pg1",
        &format!("{flush} on timeline {timeline}"),
        "streaming since",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }

    // Restores are counted, and so are misses.
    let seg_name = {
        let segno = (lsn(&end) >> 20) - 2;
        format!("00000001{:08X}{:08X}", segno >> 12, segno & 0xFFF)
    };
    let restored = work.path().join("restored");
    let get_wal = |name: &str| {
        run(Command::new(&exe)
            .args(["get-wal", name])
            .arg(&restored)
            .args(["--prefetch", "0"])
            .args(server.client_args(certs, "pg1")))
    };
    assert_eq!(get_wal(&seg_name).code, Some(0), "{seg_name}");
    assert_eq!(get_wal("0000000100000099000000FF").code, Some(1));
    let m = scrape(&server_metrics);
    assert_eq!(
        value(
            &m,
            "klio_restore_files_served_total{cluster=\"pg1\",kind=\"segment\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&m, &s("klio_restore_served_bytes_total")),
        (1 << 20) as f64
    );
    assert_eq!(value(&m, &s("klio_restore_files_missing_total")), 1.0);

    // The server goes away: send-wal says so on /healthz and counts the failure.
    server.kill9();
    let sick = wait_until(
        "send-wal to report unhealthy",
        Duration::from_secs(30),
        || {
            let (code, body) = get(&client_metrics, "/healthz");
            (code == 503).then_some(body)
        },
    );
    assert!(sick.contains("not streaming"), "{sick}");
    server.restart();
    wait_until(
        "send-wal to be healthy again",
        Duration::from_secs(30),
        || (get(&client_metrics, "/healthz").0 == 200).then_some(()),
    );
    let m = scrape(&client_metrics);
    assert!(value(&m, &s("klio_reconnects_total")) >= 1.0);
    assert!(value(&m, "klio_errors_total{cluster=\"pg1\",kind=\"server\"}") >= 1.0);
    client.stop();

    // WAL of another system under the same cluster name is refused, counted by kind, and
    // shown as the cluster's last error; the archive is untouched.
    let foreign = work.subdir("foreign");
    run_ok(
        Command::new(&exe)
            .args(["wal-player", "generate", "--wal-size", "1", "--length", "1"])
            .arg(&foreign),
    );
    let played = run(Command::new(&exe)
        .args(["wal-player", "play"])
        .arg(&foreign)
        .args(["--cluster", "pg1"])
        .args(server.client_args(certs, "pg1")));
    assert_eq!(played.code, Some(1), "{}", played.stderr);
    let m = scrape(&server_metrics);
    assert_eq!(
        value(
            &m,
            "klio_errors_total{cluster=\"pg1\",kind=\"system_id_mismatch\"}"
        ),
        1.0
    );
    let status = status_json(&[]);
    let c = &status["clusters"][0];
    assert_eq!(c["last_error"]["kind"], "system_id_mismatch", "{c:#}");
    assert!(c["streaming_client"].is_null(), "{c:#}");
    assert!(
        lsn(c["durable_lsn"].as_str().unwrap()) >= lsn(flush),
        "{c:#}"
    );
    server.stop();

    // Nothing listening: a clear error and exit status 2.
    let down = run(Command::new(&exe).args(["status", "--address", &server_metrics]));
    assert_eq!(down.code, Some(2));
    assert!(
        down.stderr.contains("no Klio server answers"),
        "{}",
        down.stderr
    );
}
