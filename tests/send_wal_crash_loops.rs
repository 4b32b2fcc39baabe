//! Crash loops: the server and the client are each killed with -9 ten times during pgbench;
//! the archive has no gap and its completed segments are byte-identical to pg_receivewal's.

mod common;

use std::time::Duration;

use common::*;
use klio_testkit::{Stack, digests, pg_bin, pgbench_in_background, run, start_pg_receivewal};

#[test]
fn no_gap_and_identical_segments_after_twenty_kills() {
    let mut stack = stack("crashloop")
        .segment_size_mb(1)
        .without_send_wal()
        .start();
    let Stack {
        pg,
        server,
        client,
        work,
        ..
    } = &mut stack;
    pg.create_slot("pgrw");
    let pgrw_dir = work.subdir("pg_receivewal");
    let mut pgrw = start_pg_receivewal(pg, &pgrw_dir, "pgrw", &work.path().join("pgrw.log"));
    client.start();

    pg.pgbench(&["-i", "-s", "2", "-q"]);
    let mut load = pgbench_in_background(
        pg,
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
            client.start();
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

    let exported = export_archive(server, "pg1", work);
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
