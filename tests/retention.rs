//! Retention end to end, against real PostgreSQL 15 and a real Klio server: policies by count
//! and by recovery window, WAL that follows the retained backups across a promotion, pins and
//! the `min_backups` floor, a backup that runs while blocks are reclaimed, and kill -9 of the
//! server in the middle of a sweep and of a pack rewrite.

mod common;

use std::time::{Duration, SystemTime};

use common::backups::*;
use common::retention::*;
use common::*;
use klio_proto::klio::{BackupInfo, RetainedBecause};
use klio_testkit::{BackgroundProcess, SEND_WAL_SLOT, Stack, run, wait_until};

/// Segments of 1 MiB: a few seconds of writes fill several.
const SEGMENT: u64 = 1 << 20;

/// Retention on request only (no schedule, not after backups: the tests decide when it
/// runs), blocks reclaimed at once (no grace), plus `policy`.
fn config(policy: &str) -> String {
    format!("retention:\n  interval: off\n  after_backup: false\n  block_grace: 0s\n{policy}")
}

/// A metric's value on the `/metrics` page (0 when absent).
fn metric(stack: &Stack, series: &str) -> f64 {
    metrics_page(stack)
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn ids(backups: &[BackupInfo]) -> Vec<String> {
    backups.iter().map(|b| b.id.clone()).collect()
}

/// `klio backup verify` of every listed backup must pass.
fn verify_every_backup(stack: &Stack) {
    for b in list_backups(stack) {
        let out = backup_cli(stack, "verify", &[&b.id]);
        assert!(
            out.success(),
            "backup {} fails verification:\n{}",
            b.id,
            out.stderr
        );
    }
}

/// `klio verify` of the cluster's archive must pass.
fn verify_archive(stack: &Stack) {
    let out = run(std::process::Command::new(&stack.exe)
        .args(["verify", "--cluster", &stack.cluster, "--data-dir"])
        .arg(stack.server.data_dir()));
    assert!(
        out.success(),
        "klio verify after retention:\n{}{}",
        out.stdout,
        out.stderr
    );
}

#[test]
fn keep_two_of_four_backups_across_a_promotion_keeps_exactly_what_they_need() {
    let mut stack = stack("retention-promote")
        .segment_size_mb(1)
        .standby()
        .server_config(&config("  keep_backups: 2\n"))
        .start();
    let mut standby = stack.standby.take().expect("built with a standby");
    stack.pg.psql("CREATE TABLE events (id int, note text)");
    let mut backups = Vec::new();
    for i in 1..=3 {
        stack.pg.psql(&format!(
            "INSERT INTO events VALUES ({i}, 'before backup {i}')"
        ));
        // Some WAL between the backups, so that old segments exist to remove, and a
        // checkpoint: a standby's backup starts from its last restartpoint, which needs a
        // newer checkpoint of the primary to move.
        stack.pg.pgbench(&["-i", "-s", "1", "-q"]);
        stack.pg.psql("CHECKPOINT");
        stack.pg.switch_wal();
        let lsn = stack.pg.current_lsn();
        standby.wait_for_replay(&lsn);
        standby.wait_for_flush(SEND_WAL_SLOT, &lsn);
        backups.push(backup_of(&stack, &standby, &["--label", &format!("b{i}")]));
    }
    // The standby becomes the primary of timeline 2; send-wal follows it.
    standby.promote();
    wait_until(
        "the promoted standby to accept writes",
        Duration::from_secs(60),
        || {
            standby
                .try_psql("INSERT INTO events VALUES (10, 'after the promotion')")
                .success()
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_millis(1100));
    let target = standby.psql("SELECT now()::text");
    std::thread::sleep(Duration::from_millis(1100));
    standby.psql("INSERT INTO events VALUES (11, 'after the target')");
    standby.pgbench(&["-i", "-s", "1", "-q"]);
    standby.switch_wal();
    let fourth = backup_of(&stack, &standby, &["--label", "b4"]);
    assert_eq!(fourth.start.timeline, 2, "{fourth:?}");
    standby.psql("INSERT INTO events VALUES (12, 'after backup 4')");
    standby.switch_wal();
    let last = standby.current_lsn();
    standby.wait_for_flush(SEND_WAL_SLOT, &last);
    backups.push(fourth);

    let before = archived_segments(&stack);
    // A dry run reports what the real run then does, and removes nothing.
    let dry = retention_run(&stack, true);
    assert_eq!(
        segments_gone(&stack, &before),
        Vec::<String>::new(),
        "a dry run removes no WAL"
    );
    assert_eq!(list_backups(&stack).len(), 4, "a dry run removes no backup");
    let report = retention_run(&stack, false);
    assert!(dry.dry_run && !report.dry_run);
    assert_eq!(dry.backups, report.backups);
    assert_eq!(dry.wal, report.wal);
    assert_eq!(dry.blocks, report.blocks);

    // The two oldest went, the two newest stay, each with its reason.
    let third = &backups[2];
    assert_eq!(ids(&list_backups(&stack)), ids(&backups[2..]));
    let fates: Vec<(String, bool, Vec<RetainedBecause>)> = report
        .backups
        .iter()
        .map(|b| (b.id.clone(), b.removed, b.kept_because.clone()))
        .collect();
    assert_eq!(
        fates,
        vec![
            (backups[0].id.clone(), true, vec![]),
            (backups[1].id.clone(), true, vec![]),
            (
                backups[2].id.clone(),
                false,
                vec![RetainedBecause::Newest { rank: 2, keep: 2 }]
            ),
            (
                backups[3].id.clone(),
                false,
                vec![RetainedBecause::Newest { rank: 1, keep: 2 }]
            ),
        ]
    );
    let tl1 = report
        .wal
        .iter()
        .find(|t| t.timeline == 1)
        .expect("timeline 1");
    assert!(
        tl1.segments_removed > 0 && tl1.bytes_removed > 0,
        "{tl1:?}\nbackups: {backups:?}\nbefore: {before:?}"
    );
    assert_eq!(
        tl1.kept_from.as_deref(),
        Some(segment_name(1, segno_of(third.start.lsn, SEGMENT), SEGMENT).as_str()),
        "{tl1:?}"
    );

    // WAL before the oldest retained backup's start went; from there on, timeline 1 up to the
    // promotion and timeline 2 stay, with the history file.
    let after = archived_segments(&stack);
    let third_seg = segno_of(third.start.lsn, SEGMENT);
    let oldest_before = before.first().expect("segments before retention").clone();
    assert!(
        oldest_before < segment_name(1, third_seg, SEGMENT),
        "there was WAL to remove: {before:?}"
    );
    for name in &after {
        assert!(
            name.as_str() >= segment_name(1, third_seg, SEGMENT).as_str(),
            "{name} is older than the oldest retained backup's start ({third:?})"
        );
    }
    let history = std::fs::read_to_string(
        stack
            .server
            .wal_dir(&stack.cluster)
            .join("00000002.history"),
    )
    .expect("the history file of timeline 2");
    let switch: klio_wal::Lsn = history
        .split_whitespace()
        .nth(1)
        .expect("a switch point")
        .parse()
        .expect("an LSN");
    for segno in third_seg..segno_of(switch, SEGMENT) {
        let name = segment_name(1, segno, SEGMENT);
        assert!(
            !before.contains(&name) || after.contains(&name),
            "{name} of timeline 1 is on backup {}'s path to the promotion: {after:?}",
            third.id
        );
    }
    assert!(
        after.iter().any(|n| n.starts_with("00000002")),
        "timeline 2 stays: {after:?}"
    );
    assert!(has_history(&stack, 2), "the history of timeline 2 stays");
    verify_archive(&stack);
    verify_every_backup(&stack);

    // A restore from the oldest retained backup to a point after the promotion crosses the
    // timeline switch.
    standby.kill9();
    let pgdata = lose_primary(&mut stack);
    restore(
        &stack,
        &pgdata,
        &[
            "--backup",
            "latest",
            "--target-time",
            &target,
            "--target-action",
            "promote",
        ],
    );
    let label = std::fs::read_to_string(pgdata.join("backup_label")).expect("backup_label");
    assert!(
        label.contains("LABEL: b3"),
        "the backup before the target: {label}"
    );
    stack.pg.start_and_finish_recovery();
    assert_eq!(
        stack
            .pg
            .psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM events"),
        "1,2,3,10",
        "every row up to the target, across the promotion, and none after it"
    );
}

#[test]
fn a_point_inside_the_recovery_window_stays_recoverable_and_one_outside_does_not() {
    // Synchronous: every commit is on the server before it returns.
    let mut stack = stack("retention-window")
        .sync_standby()
        .server_config(&config("  recovery_window: 20s\n"))
        .start();
    stack.pg.psql("CREATE TABLE events (id int, note text)");
    let first = backup(&stack, &["--label", "first"]);
    stack
        .pg
        .psql("INSERT INTO events VALUES (1, 'between the backups')");
    std::thread::sleep(Duration::from_millis(1100));
    let outside = stack.pg.psql("SELECT now()::text");
    std::thread::sleep(Duration::from_millis(1100));
    let second = backup(&stack, &["--label", "second"]);

    // While the first backup is the window's base, it stays.
    let early = retention_run(&stack, false);
    assert_eq!(ids(&list_backups(&stack)).len(), 2, "{early:?}");

    // Once the second backup ended before the window's start, recovery to any point of the
    // window starts from it: the first goes.
    let second_end = humantime::parse_rfc3339(&second.ended_at).expect("ended_at");
    wait_until(
        "the second backup to leave the window",
        Duration::from_secs(120),
        || (SystemTime::now() > second_end + Duration::from_secs(22)).then_some(()),
    );
    stack
        .pg
        .psql("INSERT INTO events VALUES (2, 'inside the window')");
    std::thread::sleep(Duration::from_millis(1100));
    let inside = stack.pg.psql("SELECT now()::text");
    std::thread::sleep(Duration::from_millis(1100));
    stack
        .pg
        .psql("INSERT INTO events VALUES (3, 'after the target')");
    let report = retention_run(&stack, false);
    assert_eq!(
        ids(&list_backups(&stack)),
        vec![second.id.clone()],
        "{report:?}"
    );
    let first_verdict = report.backups.iter().find(|b| b.id == first.id);
    assert!(
        first_verdict.is_none_or(|v| v.removed),
        "the first backup is removed: {report:?}"
    );
    let kept = report
        .backups
        .iter()
        .find(|b| b.id == second.id)
        .expect("the second backup is reported");
    assert!(
        kept.kept_because.contains(&RetainedBecause::WindowBase),
        "{kept:?}"
    );
    let status = status_json(&stack);
    let cluster = status["clusters"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["cluster"] == stack.cluster.as_str()))
        .expect("the cluster in klio status");
    assert_eq!(
        cluster["oldest_recoverable"]["backup"],
        second.id.as_str(),
        "{cluster}"
    );
    let text = run(std::process::Command::new(&stack.exe).args([
        "status",
        "--address",
        &stack.server.metrics_address(),
    ]));
    assert!(
        text.stdout
            .contains(&format!("end of backup {}", second.id)),
        "{}",
        text.stdout
    );
    let metrics = metrics_page(&stack);
    assert!(
        metrics.contains(&format!("klio_backups{{cluster=\"{}\"}} 1", stack.cluster)),
        "{metrics}"
    );
    assert!(
        metrics.contains("klio_retention_last_run_success"),
        "{metrics}"
    );

    let pgdata = lose_primary(&mut stack);
    // Outside the window: no backup ends before it any more.
    let refused = run(&mut restore_command(
        &stack,
        &pgdata,
        &["--backup", "latest", "--target-time", &outside],
    ));
    assert!(
        !refused.success(),
        "a point before the oldest retained backup cannot be recovered"
    );
    assert!(!pgdata.join("backup_label").exists(), "nothing restored");
    restore(
        &stack,
        &pgdata,
        &[
            "--backup",
            "latest",
            "--target-time",
            &inside,
            "--target-action",
            "promote",
        ],
    );
    append_auto_conf(&pgdata, "synchronous_standby_names = ''");
    stack.pg.start_and_finish_recovery();
    assert_eq!(
        stack
            .pg
            .psql("SELECT string_agg(note, ',' ORDER BY id) FROM events"),
        "between the backups,inside the window"
    );
}

#[test]
fn a_pinned_backup_survives_every_policy_and_min_backups_holds_below_the_window() {
    let mut stack = stack("retention-pins")
        .server_config(&config("  keep_backups: 1\n"))
        .start();
    stack.pg.psql("CREATE TABLE events (id int)");
    let pinned = backup(&stack, &["--label", "pinned", "--pin"]);
    assert!(pinned.pinned, "{pinned:?}");
    let second = backup(&stack, &["--label", "second"]);
    let third = backup(&stack, &["--label", "third"]);
    let report = retention_run(&stack, false);
    assert_eq!(
        ids(&list_backups(&stack)),
        vec![pinned.id.clone(), third.id.clone()],
        "{report:?}"
    );
    assert!(!ids(&list_backups(&stack)).contains(&second.id));
    let refused = backup_cli(&stack, "delete", &[&pinned.id]);
    assert!(!refused.success(), "a pinned backup cannot be deleted");
    assert!(
        refused.stderr.contains("klio backup unpin"),
        "{}",
        refused.stderr
    );
    let unpinned = backup_cli(&stack, "unpin", &[&pinned.id]);
    assert!(unpinned.success(), "{}", unpinned.stderr);
    retention_run(&stack, false);
    assert_eq!(ids(&list_backups(&stack)), vec![third.id.clone()]);

    // Every backup older than the window: the floor keeps two.
    std::fs::write(
        Stack::server_config_path(&stack.work),
        config("  recovery_window: 1s\n  min_backups: 2\n"),
    )
    .expect("rewrite the server's config");
    stack.server.restart();
    let fourth = backup(&stack, &["--label", "fourth"]);
    let fourth_end = humantime::parse_rfc3339(&fourth.ended_at).expect("ended_at");
    wait_until(
        "both backups to leave the window",
        Duration::from_secs(60),
        || (SystemTime::now() > fourth_end + Duration::from_secs(2)).then_some(()),
    );
    let report = retention_run(&stack, false);
    assert_eq!(
        ids(&list_backups(&stack)),
        vec![third.id.clone(), fourth.id.clone()],
        "{report:?}"
    );
    let third_verdict = report
        .backups
        .iter()
        .find(|b| b.id == third.id)
        .expect("reported");
    assert!(
        third_verdict
            .kept_because
            .contains(&RetainedBecause::Floor { min_backups: 2 }),
        "{third_verdict:?}"
    );
    verify_every_backup(&stack);
}

#[test]
fn a_backup_running_while_retention_reclaims_blocks_restores_whole() {
    let mut stack = stack("retention-running")
        .server_config(&config("  keep_backups: 1\n"))
        .start();
    stack.pg.pgbench(&["-i", "-s", "5", "-q"]);
    let first = backup(&stack, &["--label", "first"]);
    let held_series = format!(
        "klio_backup_blocks_held_total{{cluster=\"{}\"}}",
        stack.cluster
    );
    let held_before = metric(&stack, &held_series);
    // The second backup offers the same blocks, slowly: the server tells it they are held.
    let log = stack.work.path().join("second-backup.log");
    let mut second = BackgroundProcess::spawn(
        "klio backup run",
        &mut backup_command(&stack, &["--max-rate", "8M", "--label", "second"]),
        &log,
    );
    wait_until(
        "the server to tell the second backup that blocks are held",
        Duration::from_secs(120),
        || (metric(&stack, &held_series) > held_before).then_some(()),
    );
    assert!(second.is_running(), "{}", second.log());
    // The only complete backup goes: every block it held is unreferenced now, and only the
    // running backup's claims keep the ones it was told are held.
    let deleted = backup_cli(&stack, "delete", &[&first.id]);
    assert!(deleted.success(), "{}", deleted.stderr);
    let report = retention_run(&stack, false);
    assert!(
        second.is_running(),
        "the backup must still run after retention, or this test proves nothing:\n{}",
        second.log()
    );
    assert!(
        report.blocks.blocks > 0,
        "blocks the running backup had not offered yet are reclaimed: {report:?}"
    );
    assert_eq!(
        second.wait(Duration::from_secs(300)),
        Some(0),
        "{}",
        second.log()
    );
    let listed = list_backups(&stack);
    assert_eq!(listed.len(), 1, "{listed:?}");
    verify_every_backup(&stack);

    let before = stack
        .pg
        .psql("SELECT count(*), sum(abalance) FROM pgbench_accounts");
    let pgdata = lose_primary(&mut stack);
    restore(&stack, &pgdata, &["--backup", "latest"]);
    stack.pg.start_and_finish_recovery();
    assert_eq!(
        stack
            .pg
            .psql("SELECT count(*), sum(abalance) FROM pgbench_accounts"),
        before
    );
}

/// A table of `rows` rows of incompressible bytes (about 100 bytes a row on disk), frozen so
/// that its pages change only when its rows do.
fn random_rows(pg: &klio_testkit::PgServer, table: &str, rows: u32) {
    pg.psql(&format!(
        "CREATE TABLE {table} WITH (autovacuum_enabled = false) AS SELECT g AS id, \
         decode(md5(random()::text), 'hex') || decode(md5(random()::text), 'hex') || \
         decode(md5(random()::text), 'hex') || decode(md5(random()::text), 'hex') AS noise \
         FROM generate_series(1, {rows}) g"
    ));
    pg.psql(&format!("VACUUM FREEZE {table}"));
}

/// Waits until the server log says it paused at `point`, then kills it.
fn kill_at(stack: &mut Stack, point: &str) {
    let marker = format!("paused at {point}");
    wait_until(&marker, Duration::from_secs(180), || {
        stack.server.log().contains(&marker).then_some(())
    });
    stack.server.kill9();
}

#[test]
fn kill_9_in_the_middle_of_a_pack_rewrite_and_of_a_sweep_loses_no_retained_block() {
    // Runs after each backup (the hook stops those), keeping one backup.
    let mut stack = stack("retention-crash")
        .server_config("retention:\n  interval: off\n  block_grace: 0s\n  keep_backups: 1\n")
        .start();
    // A table of which three blocks in four will change (its packs then die mostly: they are
    // rewritten), and two packs' worth of a table that will be dropped (packs that die whole).
    random_rows(&stack.pg, "kept", 400_000);
    random_rows(&stack.pg, "doomed", 700_000);
    // Streamed backups store each table's blocks in file order, so that whole packs die or
    // mostly die as planned (parallel local readers interleave the two tables in packs).
    let first = backup(&stack, &["--mode", "stream", "--label", "first"]);

    // Round 1: the run after the second backup stops for good once a pack's live blocks are
    // in a new, durable pack and before the old pack goes; the server is killed there.
    // Pages 8k..8k+5 of every 32 (blocks 1-3 of every 4 blocks of 8 pages) get new versions.
    stack
        .pg
        .psql("UPDATE kept SET id = id WHERE ((ctid::text::point)[0]::bigint / 8) % 4 <> 0");
    stack.pg.psql("CHECKPOINT");
    stack
        .server
        .set_env("KLIO_TEST_PAUSE_AT", "retention-pack-rewritten");
    stack.server.restart();
    let second = backup(&stack, &["--mode", "stream", "--label", "second"]);
    kill_at(&mut stack, "retention-pack-rewritten");
    stack.server.set_env("KLIO_TEST_PAUSE_AT", "none");
    stack.server.restart();
    assert_eq!(ids(&list_backups(&stack)), vec![second.id.clone()]);
    verify_every_backup(&stack);
    // The interrupted sweep finishes with the next run.
    let finished = retention_run(&stack, false);
    let again = retention_run(&stack, false);
    assert_eq!(
        again.blocks.blocks, 0,
        "nothing dead is left: {finished:?} {again:?}"
    );
    verify_every_backup(&stack);

    // Round 2: the dropped table's packs die whole; the run after the third backup stops once
    // a dead pack's index is renamed away, before its file is removed.
    stack.pg.psql("DROP TABLE doomed");
    stack.pg.psql("CHECKPOINT");
    stack
        .server
        .set_env("KLIO_TEST_PAUSE_AT", "retention-pack-retired");
    stack.server.restart();
    let third = backup(&stack, &["--mode", "stream", "--label", "third"]);
    kill_at(&mut stack, "retention-pack-retired");
    assert!(
        !pack_files(&stack, "dead").is_empty(),
        "killed between renaming a dead pack's index and removing it"
    );
    stack.server.set_env("KLIO_TEST_PAUSE_AT", "none");
    stack.server.restart();
    assert_eq!(ids(&list_backups(&stack)), vec![third.id.clone()]);
    assert!(!ids(&list_backups(&stack)).contains(&first.id));
    verify_every_backup(&stack);
    let finished = retention_run(&stack, false);
    let again = retention_run(&stack, false);
    assert_eq!(
        again.blocks.blocks, 0,
        "nothing dead is left: {finished:?} {again:?}"
    );
    assert!(
        pack_files(&stack, "dead").is_empty(),
        "{:?}",
        pack_files(&stack, "dead")
    );
    verify_every_backup(&stack);

    let before = stack.pg.psql("SELECT count(*), sum(id) FROM kept");
    let pgdata = lose_primary(&mut stack);
    restore(&stack, &pgdata, &["--backup", "latest"]);
    stack.pg.start_and_finish_recovery();
    assert_eq!(stack.pg.psql("SELECT count(*), sum(id) FROM kept"), before);
}
