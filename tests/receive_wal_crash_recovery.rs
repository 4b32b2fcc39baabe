//! Golden crash test: with `synchronous_standby_names = 'klio'`, a base backup plus klio's
//! directory alone brings a crashed cluster back to its last committed transaction.

mod common;

use std::time::Duration;

use common::*;
use klio_testkit::{
    BackgroundProcess, PgOptions, PgServer, TestDir, assert_same_dump, start_klio_receive_wal,
};

#[test]
fn recovers_every_committed_row_after_kill_9() {
    let mut primary = PgServer::start(PgOptions {
        conf: vec!["synchronous_standby_names = 'klio'".to_owned()],
        ..PgOptions::default()
    });
    let work = TestDir::new("crash");
    let exe = klio_exe(&work);
    let archive = work.subdir("archive");
    primary.create_slot("klio");
    let mut klio = start_klio_receive_wal(
        &exe,
        &primary,
        &archive,
        "klio",
        &[],
        &work.path().join("klio.log"),
    );
    primary.wait_for_sync_standby("klio");

    let backup = work.path().join("backup");
    primary.base_backup_without_wal(&backup);

    // A loop committing timestamps; an id is logged only after its commit returned. Ids come
    // from the loop, not a sequence: a crash legitimately moves a sequence ahead.
    primary.psql("CREATE TABLE ticks (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())");
    let ids = work.path().join("committed-ids");
    let stop = work.path().join("stop");
    let script = format!(
        "i=0; while [ ! -e {stop} ]; do i=$((i+1)); \
           psql -XAtq -h {host} -p {port} -U postgres -d postgres \
                -c \"INSERT INTO ticks (id) VALUES ($i)\" || exit 1; \
           echo \"$i\" >> {ids}; \
         done",
        stop = stop.display(),
        host = primary.socket_dir(),
        port = primary.port(),
        ids = ids.display(),
    );
    let mut ticker = BackgroundProcess::spawn(
        "tick loop",
        &mut shell_as_postgres(&script),
        &work.path().join("ticker.log"),
    );

    primary.pgbench(&["-i", "-s", "5", "-q"]);
    primary.pgbench(&["-T", "10", "-c", "4", "-j", "2"]);
    primary.psql("CREATE TABLE bulk AS SELECT g, md5(g::text) FROM generate_series(1, 200000) g");

    std::fs::write(&stop, b"").expect("create stop file");
    assert_eq!(
        ticker.wait(Duration::from_secs(60)),
        Some(0),
        "tick loop failed"
    );
    let committed = std::fs::read_to_string(&ids).expect("read committed ids");
    let last_id: i64 = committed
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .expect("the tick loop committed rows");
    assert!(last_id > 10, "only {last_id} ticks committed");
    let before = primary.dumpall();

    // Crash: no shutdown checkpoint, no chance to send anything more.
    primary.kill9();
    klio.stop();
    primary.recover_from_backup(
        &backup,
        &format!(
            "{} restore-wal %f %p -D {}",
            exe.display(),
            archive.display()
        ),
    );
    let after = primary.dumpall();
    assert_same_dump(work.path(), &before, &after);
    assert_eq!(
        primary.psql("SELECT max(id) FROM ticks"),
        last_id.to_string()
    );
    assert!(
        primary.log().contains("restored log file"),
        "recovery used the archive"
    );
}
