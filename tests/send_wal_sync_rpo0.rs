//! Zero RPO: with `synchronous_standby_names = 'klio'`, every row whose commit returned is in
//! the Klio server's archive, even though the server is killed with -9 again and again.

mod common;

use std::time::Duration;

use common::*;
use klio_testkit::{Stack, TickLoop};

#[test]
fn every_committed_row_survives_ten_server_crashes() {
    let mut stack = stack("rpo0").segment_size_mb(1).sync_standby().start();
    let Stack {
        pg,
        server,
        work,
        exe,
        ..
    } = &mut stack;
    let backup = work.path().join("backup");
    pg.base_backup_without_wal(&backup);

    let ticks = TickLoop::start(pg, work, 2000);

    // Kill the server at varying moments; each time the stream must resume with nothing lost.
    for round in 0..10u64 {
        ticks.wait_for_more(3);
        std::thread::sleep(Duration::from_millis(100 + (round * 137) % 400));
        server.kill9();
        std::thread::sleep(Duration::from_millis(200));
        server.restart();
    }
    ticks.wait_for_more(3);
    let last_id = ticks.stop();
    assert!(last_id > 40, "only {last_id} commits");

    // Crash PostgreSQL too, and recover only from what the server archived.
    pg.kill9();
    let exported = export_archive(server, "pg1", work);
    pg.recover_from_backup(
        &backup,
        &format!(
            "{} restore-wal %f %p -D {}",
            exe.display(),
            exported.display()
        ),
    );
    assert_eq!(
        pg.psql("SELECT count(*), max(id) FROM ticks"),
        format!("{last_id}|{last_id}")
    );
    let sessions = server.log().matches("WAL session started").count();
    assert!(
        sessions >= 11,
        "client reconnected after every crash: {sessions} sessions"
    );
}
