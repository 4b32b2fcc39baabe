//! A promoted standby keeps streaming to the archive on its new timeline, without help.

mod common;

use common::*;
use klio_testkit::{
    KlioServer, PgOptions, PgServer, TestCerts, TestDir, pg_bin, run, start_klio_send_wal,
};

#[test]
fn promotion_continues_on_the_new_timeline() {
    let primary = PgServer::start(PgOptions {
        wal_segsize_mb: 1,
        ..PgOptions::default()
    });
    primary.pgbench(&["-i", "-s", "1", "-q"]);
    let standby = PgServer::standby_of(&primary);
    let work = TestDir::new("promote");
    let exe = klio_exe(&work);
    let certs = TestCerts::create(&exe, &work.subdir("certs"), &["pg1"]);
    let server = KlioServer::start(&exe, &work, &certs);
    let mut client = start_klio_send_wal(
        &exe,
        &standby,
        &server,
        &certs,
        "pg1",
        "klio",
        &work.path().join("send-wal.log"),
    );

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

    let exported = export_archive(&server, "pg1", &work);
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
