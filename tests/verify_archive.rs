//! `klio verify` on a real archive spanning a timeline switch: clean, then with a deleted
//! segment, then with one flipped byte.

mod common;

use std::process::Command;

use common::*;
use klio_testkit::{Stack, run};

#[test]
fn verify_reports_the_range_a_missing_segment_and_a_corrupted_one() {
    let mut stack = stack("verify").segment_size_mb(1).standby().start();
    let Stack {
        pg: primary,
        standby: Some(standby),
        server,
        client,
        exe,
        ..
    } = &mut stack
    else {
        unreachable!("built with a standby")
    };
    primary.pgbench(&["-i", "-s", "2", "-q"]);
    primary.pgbench(&["-T", "3"]);
    primary.switch_wal();
    standby.wait_for_flush("klio", &primary.current_lsn());
    standby.promote();
    standby.pgbench(&["-T", "3"]);
    standby.switch_wal();
    standby.psql("CREATE TABLE last AS SELECT 1");
    let end = standby.current_lsn();
    standby.wait_for_flush("klio", &end);
    client.stop();

    let verify = || {
        run(Command::new(&*exe)
            .args(["verify", "--cluster", "pg1", "--data-dir"])
            .arg(server.data_dir()))
    };
    let ok = verify();
    assert_eq!(ok.code, Some(0), "{}{}", ok.stdout, ok.stderr);
    assert!(
        ok.stdout.contains("timelines followed: 1 -> 2"),
        "{}",
        ok.stdout
    );
    assert!(
        ok.stdout.contains("OK: continuous and intact"),
        "{}",
        ok.stdout
    );
    let records: u64 = ok
        .stdout
        .split("records checked: ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .expect("records checked");
    assert!(records > 10_000, "{}", ok.stdout);
    assert!(
        ok.stdout.contains("(timeline 2)\n"),
        "recoverable up to timeline 2: {}",
        ok.stdout
    );

    // The segments of both timelines, complete ones only.
    let wal = server.wal_dir("pg1");
    let mut segs: Vec<String> = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.len() == 24)
        .collect();
    segs.sort();
    assert!(segs.len() >= 6, "{segs:?}");

    // A deleted segment: a gap, named.
    let missing = segs[segs.len() / 2].clone();
    let kept = std::fs::read(wal.join(&missing)).unwrap();
    std::fs::remove_file(wal.join(&missing)).unwrap();
    let gap = verify();
    assert_eq!(gap.code, Some(1), "{}", gap.stdout);
    assert!(
        gap.stdout.contains(&format!("missing segment {missing}")),
        "{}",
        gap.stdout
    );
    std::fs::write(wal.join(&missing), &kept).unwrap();
    assert_eq!(verify().code, Some(0));

    // One flipped byte in the middle of another segment: damage, named, with the LSN.
    let damaged = segs[1].clone();
    let mut bytes = std::fs::read(wal.join(&damaged)).unwrap();
    bytes[300_000] ^= 0x01;
    std::fs::write(wal.join(&damaged), &bytes).unwrap();
    let bad = verify();
    assert_eq!(bad.code, Some(1), "{}", bad.stdout);
    assert!(
        bad.stdout.contains(&format!("{damaged} is damaged")),
        "{}",
        bad.stdout
    );
    // The recoverable range ends before the damage.
    assert!(!bad.stdout.contains("(timeline 2)\n"), "{}", bad.stdout);
}
