//! A stalled server slows the client down instead of making it buffer without limit.

mod common;

use std::time::{Duration, Instant};

use common::*;
use klio_testkit::{BackgroundProcess, Stack, as_postgres, pg_bin};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn memory_stays_bounded_while_the_server_is_stalled() {
    let stack = stack("backpressure").conf("max_wal_size = 2GB").start();
    let Stack {
        pg,
        server,
        client,
        work,
        ..
    } = &stack;
    pg.psql("CREATE TABLE warmup AS SELECT 1 AS x");
    let lsn = pg.current_lsn();
    pg.wait_for_flush("klio", &lsn);
    let before: f64 = pg
        .psql("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
        .parse()
        .expect("bytes");

    server.signal("STOP");
    let mut load = BackgroundProcess::spawn(
        "bulk load",
        as_postgres(pg_bin("psql"))
            .args(["-XAtq", "-h", &pg.socket_dir(), "-p", &pg.port().to_string(), "-U", "postgres"])
            .args(["-c", "CREATE TABLE big AS SELECT g, md5(g::text) AS h FROM generate_series(1, 3000000) g"]),
        &work.path().join("load.log"),
    );
    let mut peak = 0;
    let stall = Instant::now();
    while stall.elapsed() < Duration::from_secs(10) {
        peak = peak.max(rss_kib(client.pid().expect("send-wal runs")));
        std::thread::sleep(Duration::from_millis(100));
    }
    let during: f64 = pg
        .psql("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
        .parse()
        .expect("bytes");
    server.signal("CONT");
    assert_eq!(
        load.wait(Duration::from_secs(300)),
        Some(0),
        "bulk load failed"
    );
    let target = pg.current_lsn();
    pg.wait_for_flush("klio", &target);

    let generated_mib = (during - before) / (1024.0 * 1024.0);
    assert!(
        generated_mib > 100.0,
        "only {generated_mib:.0} MiB of WAL during the stall: the test proves nothing"
    );
    assert!(
        peak < 100 * 1024,
        "send-wal grew to {} MiB while the server was stalled",
        peak / 1024
    );
    eprintln!(
        "WAL generated during the stall: {generated_mib:.0} MiB; send-wal peak RSS {} MiB",
        peak / 1024
    );
}
