//! Crash loops: the server and the client are each killed with -9 ten times during pgbench;
//! the archive has no gap and its completed segments are byte-identical to pg_receivewal's.

mod common;

use std::time::Duration;

use common::*;
use klio_testkit::{
    KlioServer, PgOptions, PgServer, TestCerts, TestDir, digests, pg_bin, pgbench_in_background,
    run, start_klio_send_wal, start_pg_receivewal,
};

#[test]
fn no_gap_and_identical_segments_after_twenty_kills() {
    let pg = PgServer::start(PgOptions {
        wal_segsize_mb: 1,
        ..PgOptions::default()
    });
    let work = TestDir::new("crashloop");
    let exe = klio_exe(&work);
    let certs = TestCerts::create(&exe, &work.subdir("certs"), &["pg1"]);
    let mut server = KlioServer::start(&exe, &work, &certs);
    pg.create_slot("pgrw");
    let pgrw_dir = work.subdir("pg_receivewal");
    let mut pgrw = start_pg_receivewal(&pg, &pgrw_dir, "pgrw", &work.path().join("pgrw.log"));
    let client_log = work.path().join("send-wal.log");
    let mut client = start_klio_send_wal(&exe, &pg, &server, &certs, "pg1", "klio", &client_log);

    pg.pgbench(&["-i", "-s", "2", "-q"]);
    let mut load = pgbench_in_background(
        &pg,
        &["-T", "600", "-c", "2"],
        &work.path().join("pgbench.log"),
    );

    for round in 0..20u64 {
        std::thread::sleep(Duration::from_millis(300 + (round * 211) % 700));
        if round % 2 == 0 {
            server.kill9();
            std::thread::sleep(Duration::from_millis(100));
            server.restart();
        } else {
            client.kill9();
            client = start_klio_send_wal(&exe, &pg, &server, &certs, "pg1", "klio", &client_log);
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    load.terminate();
    pg.switch_wal();
    pg.psql("CREATE TABLE after_load AS SELECT 1 AS x");
    let target = pg.current_lsn();
    pg.wait_for_flush("klio", &target);
    pg.wait_for_flush("pg_receivewal", &target);
    client.stop();
    pgrw.stop();

    let exported = export_archive(&server, "pg1", &work);
    let ours = digests(&exported);
    let theirs = digests(&pgrw_dir);
    let complete: Vec<&String> = ours.keys().filter(|n| n.len() == 24).collect();
    assert!(complete.len() >= 10, "too few segments archived: {ours:?}");
    // No gap: every segment from the first to the last archived one is there ...
    let first = u64::from_str_radix(&complete[0][16..], 16).expect("hex");
    for (i, name) in complete.iter().enumerate() {
        assert_eq!(
            u64::from_str_radix(&name[16..], 16).expect("hex"),
            first + i as u64,
            "gap before {name}"
        );
    }
    // ... pg_waldump reads them all as one valid stream ...
    let out = run(std::process::Command::new(pg_bin("pg_waldump"))
        .arg("--path")
        .arg(&exported)
        .arg("--quiet")
        .arg(complete[0])
        .arg(complete[complete.len() - 1]));
    assert!(out.success(), "pg_waldump: {}{}", out.stdout, out.stderr);
    // ... and each is byte-identical to pg_receivewal's copy of the same range.
    let mut compared = 0;
    for name in &complete {
        if let Some(d) = theirs.get(*name) {
            assert_eq!(
                Some(d),
                ours.get(*name),
                "{name} differs from pg_receivewal's"
            );
            compared += 1;
        }
    }
    assert!(
        compared >= 10,
        "only {compared} segments in common with pg_receivewal"
    );
    // Kills that land while the client is still reconnecting merge two sessions into one.
    let session_starts = server.log().matches("WAL session started").count();
    assert!(session_starts >= 10, "only {session_starts} sessions");
}
