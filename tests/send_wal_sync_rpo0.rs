//! Zero RPO: with `synchronous_standby_names = 'klio'`, every row whose commit returned is in
//! the Klio server's archive, even though the server is killed with -9 again and again.

mod common;

use std::time::Duration;

use common::*;
use klio_testkit::{
    BackgroundProcess, KlioServer, PgOptions, PgServer, TestCerts, TestDir, start_klio_send_wal,
    wait_until,
};

#[test]
fn every_committed_row_survives_ten_server_crashes() {
    let mut pg = PgServer::start(PgOptions {
        wal_segsize_mb: 1,
        conf: vec!["synchronous_standby_names = 'klio'".to_owned()],
        ..PgOptions::default()
    });
    let work = TestDir::new("rpo0");
    let exe = klio_exe(&work);
    let certs = TestCerts::create(&exe, &work.subdir("certs"), &["pg1"]);
    let mut server = KlioServer::start(&exe, &work, &certs);
    let _client = start_klio_send_wal(
        &exe,
        &pg,
        &server,
        &certs,
        "pg1",
        "klio",
        &work.path().join("send-wal.log"),
    );
    pg.wait_for_sync_standby("klio");
    let backup = work.path().join("backup");
    pg.base_backup_without_wal(&backup);

    pg.psql("CREATE TABLE ticks (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp(), pad text)");
    let ids = work.path().join("committed-ids");
    let stop = work.path().join("stop");
    let script = format!(
        "i=0; while [ ! -e {stop} ]; do i=$((i+1)); \
           psql -XAtq -h {host} -p {port} -U postgres -d postgres \
                -c \"INSERT INTO ticks (id, pad) VALUES ($i, repeat('x', 2000))\" || exit 1; \
           echo \"$i\" >> {ids}; \
         done",
        stop = stop.display(),
        host = pg.socket_dir(),
        port = pg.port(),
        ids = ids.display(),
    );
    let mut ticker = BackgroundProcess::spawn(
        "tick loop",
        &mut shell_as_postgres(&script),
        &work.path().join("ticker.log"),
    );

    // Kill the server at varying moments; each time the stream must resume with nothing lost.
    let committed = || {
        std::fs::read_to_string(&ids)
            .unwrap_or_default()
            .lines()
            .count()
    };
    for round in 0..10u64 {
        let before = committed();
        wait_until("commits to go through", Duration::from_secs(60), || {
            (committed() > before + 3).then_some(())
        });
        std::thread::sleep(Duration::from_millis(100 + (round * 137) % 400));
        server.kill9();
        std::thread::sleep(Duration::from_millis(200));
        server.restart();
    }
    let before = committed();
    wait_until(
        "commits after the last restart",
        Duration::from_secs(60),
        || (committed() > before + 3).then_some(()),
    );
    std::fs::write(&stop, b"").expect("stop file");
    assert_eq!(
        ticker.wait(Duration::from_secs(60)),
        Some(0),
        "tick loop failed"
    );
    let last_id = committed();
    assert!(last_id > 40, "only {last_id} commits");

    // Crash PostgreSQL too, and recover only from what the server archived.
    pg.kill9();
    let exported = export_archive(&server, "pg1", &work);
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
