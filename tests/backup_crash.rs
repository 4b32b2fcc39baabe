//! Backups interrupted by kill -9, of the client and of the server: an interrupted backup is
//! never listed as complete, and a rerun completes, reuses what was stored, and restores.

mod common;

use std::time::Duration;

use common::backups::*;
use common::*;
use klio_testkit::{BackgroundProcess, Stack, wait_until};

/// A synchronous stack with about 150 MiB of pgbench data.
fn loaded_stack(label: &str) -> Stack {
    let stack = stack(label).sync_standby().start();
    stack.pg.pgbench(&["-i", "-s", "10", "-q"]);
    stack
}

/// Starts a throttled backup in the background and waits until the server has stored some of
/// its blocks.
fn backup_under_way(stack: &Stack) -> BackgroundProcess {
    let log = stack.work.path().join("interrupted-backup.log");
    let process = BackgroundProcess::spawn(
        "klio backup run",
        &mut backup_command(stack, &["--max-rate", "16M"]),
        &log,
    );
    wait_until(
        "the server to store blocks of the backup",
        Duration::from_secs(120),
        || (pack_bytes(stack) >= 8 << 20).then_some(()),
    );
    process
}

#[test]
fn a_client_killed_mid_backup_leaves_nothing_listed_and_a_rerun_reuses_and_restores() {
    let mut stack = loaded_stack("backup-kill-client");
    let mut interrupted = backup_under_way(&stack);
    interrupted.kill9();
    assert!(
        list_backups(&stack).is_empty(),
        "an interrupted backup is not listed"
    );
    let kept = pack_bytes(&stack);

    let info = backup(&stack, &[]);
    assert!(
        info.new_stored_bytes + kept / 2 <= info.referenced_stored_bytes,
        "the rerun reused the {kept} bytes stored before: {info:?}"
    );
    assert_eq!(list_backups(&stack).len(), 1);
    stack.pg.pgbench(&["-T", "3", "-N"]);
    crash_then_restore_latest_recovers_everything(&mut stack);
}

#[test]
fn a_server_killed_mid_backup_fails_it_and_a_rerun_completes_and_restores() {
    let mut stack = loaded_stack("backup-kill-server");
    let mut interrupted = backup_under_way(&stack);
    stack.server.kill9();
    let code = interrupted.wait(Duration::from_secs(120));
    assert!(
        matches!(code, Some(c) if c != 0),
        "the backup fails when the server goes: {code:?}\n{}",
        interrupted.log()
    );
    stack.server.restart();
    assert!(
        list_backups(&stack).is_empty(),
        "an interrupted backup is not listed"
    );

    let info = backup(&stack, &[]);
    assert_eq!(list_backups(&stack).len(), 1, "{info:?}");
    stack.pg.pgbench(&["-T", "3", "-N"]);
    crash_then_restore_latest_recovers_everything(&mut stack);
}
