//! A promoted standby keeps streaming to the archive on its new timeline, without help.

mod common;

use common::*;
use klio_testkit::{Stack, pg_bin, run};

#[test]
fn promotion_continues_on_the_new_timeline() {
    let mut stack = stack("promote").segment_size_mb(1).standby().start();
    let Stack {
        pg: primary,
        standby: Some(standby),
        server,
        client,
        work,
        ..
    } = &mut stack
    else {
        unreachable!("built with a standby")
    };
    primary.pgbench(&["-i", "-s", "1", "-q"]);

    primary.pgbench(&["-T", "4", "-c", "2"]);
    primary.switch_wal();
    let target = primary.current_lsn();
    standby.wait_for_flush("klio", &target);

    standby.promote();
    standby.pgbench(&["-T", "4", "-c", "2"]);
    standby.switch_wal();
    standby.psql("CREATE TABLE after_promotion AS SELECT 1 AS x");
    let target = standby.current_lsn();
    standby.wait_for_flush("klio", &target);
    client.stop();

    let exported = export_archive(server, "pg1", work);
    assert!(
        exported.join("00000002.history").is_file(),
        "history file archived"
    );
    let mut tl2: Vec<String> = std::fs::read_dir(&exported)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.len() == 24 && n.starts_with("00000002"))
        .collect();
    tl2.sort();
    assert!(tl2.len() >= 2, "segments on timeline 2: {tl2:?}");
    let out = run(std::process::Command::new(pg_bin("pg_waldump"))
        .arg("--path")
        .arg(&exported)
        .arg("--quiet")
        .arg(&tl2[0])
        .arg(tl2.last().unwrap()));
    assert!(
        out.success(),
        "pg_waldump over timeline 2: {}{}",
        out.stdout,
        out.stderr
    );
    assert!(server.log().contains("WAL session started"));
}
