//! The receiver library against real PostgreSQL: resuming, reconnecting, slot errors, and an
//! archive that pg_waldump reads without a gap.

use std::path::Path;
use std::time::Duration;

use klio_client::receive::{ReceiveError, ReceiveOptions, receive_wal};
use klio_client::{ConnParams, shutdown_channel};
use klio_testkit::{PgOptions, PgServer, TestDir, pg_bin, run, wait_until};
use klio_wal::segment_dir::{Compression, Fsync};

fn options(pg: &PgServer, dir: &Path, slot: Option<&str>) -> ReceiveOptions {
    ReceiveOptions {
        conn: ConnParams::parse(&pg.socket_connstr())
            .expect("connstr")
            .resolve(|_| None)
            .expect("settings"),
        directory: dir.to_owned(),
        slot: slot.map(str::to_owned),
        synchronous: true,
        no_loop: false,
        status_interval: Duration::from_secs(1),
        reconnect_delay: Duration::from_millis(200),
        endpos: None,
        fsync: Fsync::Always,
        compression: Compression::None,
    }
}

fn flushed_lsn(pg: &PgServer) -> String {
    pg.psql("SELECT coalesce(max(flush_lsn)::text, '') FROM pg_stat_replication WHERE application_name = 'klio'")
}

fn wait_flushed(pg: &PgServer, target: &str) {
    wait_until("klio to flush", Duration::from_secs(120), || {
        let ok = pg.psql(&format!(
            "SELECT coalesce(bool_or(flush_lsn >= '{target}'), false) FROM pg_stat_replication WHERE application_name = 'klio'"
        ));
        (ok == "t").then_some(())
    });
}

/// Completed segment names in `dir`, sorted.
fn completed(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.len() == 24)
        .collect();
    v.sort();
    v
}

/// pg_waldump decodes every record from the first to the last completed segment: no gap, no
/// damage.
fn assert_waldump_clean(dir: &Path) {
    let segs = completed(dir);
    assert!(segs.len() >= 2, "too few segments: {segs:?}");
    let out = run(std::process::Command::new(pg_bin("pg_waldump"))
        .arg("--path")
        .arg(dir)
        .arg("--quiet")
        .arg(&segs[0])
        .arg(segs.last().unwrap()));
    assert!(
        out.success(),
        "pg_waldump failed: {}{}",
        out.stdout,
        out.stderr
    );
}

#[test]
fn resumes_after_stop_and_reconnects_after_server_restart() {
    let mut pg = PgServer::start(PgOptions {
        wal_segsize_mb: 1,
        ..PgOptions::default()
    });
    pg.psql("SELECT pg_create_physical_replication_slot('klio', true)");
    let dir = TestDir::new("recv");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let opts = options(&pg, dir.path(), Some("klio"));

    // First run.
    let (stop, shutdown) = shutdown_channel();
    let task = rt.spawn({
        let opts = opts.clone();
        async move { receive_wal(&opts, shutdown).await }
    });
    pg.psql("CREATE TABLE a AS SELECT g FROM generate_series(1, 50000) g");
    let target = pg.current_lsn();
    wait_flushed(&pg, &target);
    stop.trigger();
    rt.block_on(task).unwrap().expect("clean stop");

    // While nothing streams, the slot keeps the WAL.
    pg.psql("CREATE TABLE b AS SELECT g FROM generate_series(1, 50000) g");

    // Second run resumes from the directory, then survives a server restart.
    let (stop, shutdown) = shutdown_channel();
    let task = rt.spawn({
        let opts = opts.clone();
        async move { receive_wal(&opts, shutdown).await }
    });
    let target = pg.current_lsn();
    wait_flushed(&pg, &target);
    // The receiver keeps running through a restart and reconnects by itself.
    pg.restart();
    pg.psql("CREATE TABLE c AS SELECT g FROM generate_series(1, 50000) g");
    pg.switch_wal();
    pg.psql("CREATE TABLE d (x int)");
    let target = pg.current_lsn();
    wait_flushed(&pg, &target);
    stop.trigger();
    rt.block_on(task).unwrap().expect("clean stop");
    assert_waldump_clean(dir.path());
}

#[test]
fn missing_slot_is_reported_with_what_to_do() {
    let pg = PgServer::start(PgOptions::default());
    let dir = TestDir::new("recv-noslot");
    let mut opts = options(&pg, dir.path(), Some("does_not_exist"));
    opts.no_loop = true;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (_stop, shutdown) = shutdown_channel();
    let e = rt.block_on(receive_wal(&opts, shutdown)).unwrap_err();
    assert!(matches!(e, ReceiveError::SlotMissing(_)), "{e}");
    assert!(e.hint().is_some_and(|h| h.contains("--create-slot")), "{e}");
}

#[test]
fn no_loop_exits_when_the_server_goes_away() {
    let mut pg = PgServer::start(PgOptions::default());
    let dir = TestDir::new("recv-noloop");
    let mut opts = options(&pg, dir.path(), None);
    opts.no_loop = true;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (_stop, shutdown) = shutdown_channel();
    let task = rt.spawn(async move { receive_wal(&opts, shutdown).await });
    wait_until("klio to connect", Duration::from_secs(30), || {
        (!flushed_lsn(&pg).is_empty()).then_some(())
    });
    pg.stop();
    let e = rt.block_on(task).unwrap().unwrap_err();
    assert!(
        matches!(e, ReceiveError::StreamEnded | ReceiveError::Connection(_)),
        "{e}"
    );
}
