//! Golden crash test: with `synchronous_standby_names = 'klio'`, a base backup plus klio's
//! directory alone brings a crashed cluster back to its last committed transaction.

mod common;

use common::*;
use klio_testkit::{
    PgOptions, PgServer, TestDir, TickLoop, assert_same_dump, start_klio_receive_wal,
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

    // A loop committing timestamped rows; an id counts only once its commit returned.
    let ticks = TickLoop::start(&primary, &work, 0);

    primary.pgbench(&["-i", "-s", "5", "-q"]);
    primary.pgbench(&["-T", "10", "-c", "4", "-j", "2"]);
    primary.psql("CREATE TABLE bulk AS SELECT g, md5(g::text) FROM generate_series(1, 200000) g");

    let last_id = ticks.stop();
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
