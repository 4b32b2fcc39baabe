//! Base backups taken from a streaming standby, end to end: `klio backup run` against the
//! standby while `klio send-wal` streams from it, a restore of that backup recovering every
//! commit of the primary through `klio get-wal`, and a promotion during the backup failing it.

mod common;

use std::time::Duration;

use klio_proto::klio::CaptureMethod;

use common::backups::*;
use common::*;
use klio_testkit::{
    BackgroundProcess, PgServer, SEND_WAL_SLOT, Stack, assert_same_dump, pgbench_in_background,
    wait_until,
};

const SEGMENT: u64 = 16 << 20;

/// A primary with a streaming standby that send-wal streams from, `pgbench -i -s <scale>` on
/// the primary, replayed by the standby and on the Klio server.
fn loaded_standby_stack(label: &str, scale: &str) -> (Stack, PgServer) {
    let mut stack = stack(label).standby().start();
    let standby = stack.standby.take().expect("built with a standby");
    stack.pg.pgbench(&["-i", "-s", scale, "-q"]);
    let loaded = stack.pg.current_lsn();
    standby.wait_for_replay(&loaded);
    standby.wait_for_flush(SEND_WAL_SLOT, &loaded);
    (stack, standby)
}

#[test]
fn a_backup_taken_from_a_standby_restores_and_recovers_every_commit() {
    let (mut stack, mut standby) = loaded_standby_stack("backup-standby", "5");
    stack
        .pg
        .psql("CREATE TABLE before_backup AS SELECT 'loaded before the backup' AS note");

    // The primary writes while the standby is backed up: the standby replays those writes
    // into the files being read, and the backup's end moves with its replay.
    let mut bench = pgbench_in_background(
        &stack.pg,
        &["-T", "5", "-c", "2", "-N"],
        &stack.work.path().join("pgbench.log"),
    );
    let info = backup_of(&stack, &standby, &["--label", "from the standby"]);
    assert_eq!(info.label, "from the standby");
    // A standby's backup may end on a later timeline, which only BASE_BACKUP reports.
    assert_eq!(info.capture, CaptureMethod::Stream, "{info:?}");
    let local = klio_testkit::run(&mut backup_command_of(
        &stack,
        &standby,
        &["--mode", "local"],
    ));
    assert!(
        !local.success(),
        "a local backup of a standby must be refused"
    );
    assert!(
        local.stderr.contains("--mode local cannot be used")
            && local.stderr.contains("standby")
            && local.stderr.contains("--mode stream"),
        "{}",
        local.stderr
    );
    assert!(info.end.lsn >= info.start.lsn, "{info:?}");
    assert_eq!(bench.wait(Duration::from_secs(120)), Some(0), "pgbench");

    stack.pg.pgbench(&["-T", "2", "-N"]);
    stack
        .pg
        .psql("CREATE TABLE last_words AS SELECT 'committed last' AS note");
    let before = stack.pg.dumpall();
    // Every commit went primary → standby → send-wal → the Klio server.
    let last = stack.pg.current_lsn();
    standby.wait_for_flush(SEND_WAL_SLOT, &last);

    standby.kill9();
    let pgdata = lose_primary(&mut stack);

    assert_eq!(list_backups(&stack).len(), 1);
    restore(&stack, &pgdata, &["--backup", "latest"]);
    let label = std::fs::read_to_string(pgdata.join("backup_label")).expect("backup_label");
    assert!(
        label.contains("BACKUP FROM: standby"),
        "PostgreSQL took it from the standby: {label}"
    );
    assert!(
        !pgdata.join("standby.signal").exists(),
        "the restore recovers once, it does not follow the primary as the standby did"
    );
    // PostgreSQL's own judge agrees, WAL range included (standby.signal, listed in the
    // manifest, is one of the files pg_verifybackup ignores).
    let wal = fetch_backup_wal(&stack, &info, SEGMENT);
    let verified = verifybackup(&pgdata, &wal);
    assert!(verified.success(), "pg_verifybackup: {}", verified.stderr);
    stack.pg.start_and_finish_recovery();
    let after = stack.pg.dumpall();
    assert_same_dump(stack.work.path(), &before, &after);
    assert_eq!(
        stack.pg.psql("SELECT note FROM last_words"),
        "committed last"
    );
    assert!(
        stack.pg.log().contains("restored log file"),
        "PostgreSQL recovered through get-wal"
    );
}

#[test]
fn a_standby_promoted_during_a_backup_fails_it_cleanly() {
    // About 150 MiB: several seconds at 16 MiB/s.
    let (stack, standby) = loaded_standby_stack("backup-standby-promoted", "10");
    let log = stack.work.path().join("promoted-backup.log");
    let mut backup = BackgroundProcess::spawn(
        "klio backup run",
        &mut backup_command_of(&stack, &standby, &["--max-rate", "16M"]),
        &log,
    );
    wait_until(
        "the server to store blocks of the backup",
        Duration::from_secs(120),
        || (pack_bytes(&stack) >= 1 << 20).then_some(()),
    );
    standby.promote();
    assert!(
        backup.is_running(),
        "the backup must still run when the standby is promoted, or this test proves nothing:\n{}",
        backup.log()
    );

    let code = backup.wait(Duration::from_secs(180));
    let out = backup.log();
    assert!(
        matches!(code, Some(c) if c != 0),
        "a backup across a promotion fails: {code:?}\n{out}"
    );
    assert!(
        out.contains("the standby was promoted during online backup"),
        "says what happened: {out}"
    );
    assert!(
        list_backups(&stack).is_empty(),
        "a backup across a promotion is not listed"
    );
}

#[test]
fn a_backup_of_an_idle_standby_completes_without_new_wal_on_the_primary() {
    // Nothing is written on the primary after the standby was made: the backup starts at the
    // standby's last restartpoint and ends at its minimum recovery point, both WAL that
    // send-wal already streamed, so nothing has to be forced with pg_switch_wal().
    let (stack, standby) = loaded_standby_stack("backup-standby-idle", "1");
    let idle = stack.pg.current_lsn();
    let started = std::time::Instant::now();
    let info = backup_of(&stack, &standby, &["--wal-timeout", "20s"]);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "no wait for WAL that nothing writes: {:?}",
        started.elapsed()
    );
    assert_eq!(
        stack.pg.current_lsn(),
        idle,
        "the primary wrote nothing meanwhile"
    );
    assert_eq!(list_backups(&stack).len(), 1, "{info:?}");
}
