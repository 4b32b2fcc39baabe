//! Recoveries that only Tier 2 makes possible, end to end against real PostgreSQL 15, real
//! Klio servers and a real S3-compatible server (s3s-fs) on 127.0.0.1: a disaster-recovery
//! drill under load through a read-only server, a point-in-time recovery to a point only
//! Tier 2 still holds through the primary, and Tier 2's own retention (with Object Lock,
//! against moto, which enforces it).

mod common;

use std::process::Command;

use common::backups::*;
use common::retention::*;
use common::tier2::{RELAY_DEADLINE, frontier, frontier_wal_end, listed_tiers, lsn};
use common::tier2_bucket::*;
use common::*;
use klio_proto::klio::{BackupInfo, RetainedBecause};
use klio_testkit::{MotoServer, S3Server, TestDir, TickLoop, as_postgres, run, run_ok, wait_until};

/// Retention on request only (the tests decide when), blocks reclaimed at once, Tier 1's
/// `policy` and Tier 2's `tier2_policy` (YAML flow mappings), relaying to `s3`.
fn config(s3: &S3Server, policy: &str, tier2_policy: &str) -> String {
    format!(
        "retention:\n  interval: off\n  after_backup: false\n  block_grace: 0s\n  {policy}\n{}  \
         retention: {tier2_policy}\n",
        tier2_yaml(s3, false)
    )
}

/// WAL between backups, so that old segments exist for retention to remove, and a switch
/// so that they are complete.
fn more_wal(stack: &klio_testkit::Stack) {
    stack.pg.pgbench(&["-i", "-s", "1", "-q"]);
    stack.pg.switch_wal();
}

#[test]
fn a_disaster_recovery_from_tier2_keeps_every_commit_the_frontier_passed() {
    let s3 = S3Server::start();
    let mut stack = stack("tier2-dr-drill")
        .segment_size_mb(1)
        .sync_standby()
        .encryption()
        .server_config(&tier2_yaml(&s3, false))
        .start();
    stack.pg.pgbench(&["-i", "-s", "1", "-q"]);
    backup(&stack, &[]);
    let ticks = TickLoop::start(&stack.pg, &stack.work, 200);
    ticks.wait_for_more(300);

    // Site A keeps committing while the relay catches up with a known commit.
    let known = ticks.committed();
    let known_lsn = lsn(&stack.pg.current_lsn());
    wait_until(
        "Tier 2's WAL end to pass the known commit",
        RELAY_DEADLINE,
        || {
            frontier_wal_end(&stack)
                .is_some_and(|end| end >= known_lsn)
                .then_some(())
        },
    );
    ticks.wait_for_more(50);

    // The disaster: site A's server killed, its data directory gone, PostgreSQL gone.
    stack.server.kill9();
    let pgdata = lose_primary(&mut stack);
    drop(ticks);
    std::fs::remove_dir_all(stack.server.data_dir()).expect("delete site A's data directory");

    // Site B: a read-only server on its own data directory, Tier 2 its only source.
    let work = TestDir::new("tier2-dr-drill-site-b");
    let site_b = read_only_server(&stack, &s3, &work);
    let args = client_args_for(&stack, &site_b);
    run_ok(
        as_postgres(&stack.exe)
            .arg("restore")
            .arg("-D")
            .arg(&pgdata)
            .args(["--backup", "latest"])
            .args(&args),
    );
    append_auto_conf(&pgdata, "synchronous_standby_names = ''");
    stack.pg.start_and_finish_recovery();

    let present: u64 = stack
        .pg
        .psql(&format!("SELECT count(*) FROM ticks WHERE id <= {known}"))
        .parse()
        .expect("a count");
    assert_eq!(
        present, known,
        "a commit the frontier had passed is missing"
    );
    // What came after the known commit is a prefix of what was committed: no holes.
    let (count, max): (u64, u64) = {
        let row = stack
            .pg
            .psql("SELECT count(*) || ' ' || coalesce(max(id), 0) FROM ticks");
        let mut parts = row.split(' ').map(|p| p.parse::<u64>().expect("a number"));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
    };
    assert_eq!(count, max, "the recovered commits have a hole");
    assert!(max >= known);
}

#[test]
fn a_pitr_to_a_point_only_tier2_still_holds_succeeds_through_the_primary() {
    let s3 = S3Server::start();
    let mut stack = stack("tier2-pitr-fallback")
        .segment_size_mb(1)
        .encryption()
        .server_config(&config(&s3, "keep_backups: 1", "{keep_backups: 5}"))
        .start();
    stack.pg.psql("CREATE TABLE events (id int, note text)");
    stack
        .pg
        .psql("INSERT INTO events VALUES (1, 'before the first backup')");
    let first = backup(&stack, &[]);
    stack.pg.psql("INSERT INTO events VALUES (2, 'the target')");
    let target = stack.pg.current_lsn();
    stack
        .pg
        .psql("INSERT INTO events VALUES (3, 'after the target')");
    more_wal(&stack);
    let second = backup(&stack, &[]);
    more_wal(&stack);
    relayed(&stack, &s3);

    // Tier 1 keeps one backup: the first one and the WAL after it leave Tier 1.
    let report = retention_run(&stack, false);
    assert!(
        report.backups.iter().any(|b| b.id == first.id && b.removed),
        "{report:?}"
    );
    let tier2 = report
        .tier2
        .clone()
        .unwrap_or_else(|| panic!("Tier 2's retention did not run: {:?}", report.notes));
    assert!(tier2.backups.iter().all(|b| !b.removed), "{tier2:?}");
    let segments = archived_segments(&stack);
    let first_needed = segment_name(1, segno_of(first.start.lsn, 1 << 20), 1 << 20);
    assert!(
        !segments.contains(&first_needed),
        "Tier 1 should have pruned {first_needed}: {segments:?}"
    );

    // Back to the target, from the backup only Tier 2 holds, through the primary server.
    let pgdata = lose_primary(&mut stack);
    restore(
        &stack,
        &pgdata,
        &[
            "--backup",
            &first.id,
            "--target-lsn",
            &target,
            "--target-action",
            "promote",
        ],
    );
    stack.pg.start_and_finish_recovery();
    assert_eq!(
        stack
            .pg
            .psql("SELECT string_agg(note, ',' ORDER BY id) FROM events"),
        "before the first backup,the target"
    );
    assert_ne!(first.id, second.id);
}

#[test]
fn tier2_retention_removes_by_its_own_policy_and_keeps_what_its_backups_need() {
    let s3 = S3Server::start();
    let stack = stack("tier2-retention-own-policy")
        .segment_size_mb(1)
        .server_config(&config(&s3, "keep_backups: 1", "{keep_backups: 2}"))
        .start();
    let mut backups: Vec<BackupInfo> = Vec::new();
    for _ in 0..3 {
        more_wal(&stack);
        backups.push(backup(&stack, &[]));
    }
    more_wal(&stack);
    relayed(&stack, &s3);
    let keys_before = tier2_keys(&s3);

    let dry = retention_run(&stack, true);
    let dry_tier2 = dry
        .tier2
        .clone()
        .unwrap_or_else(|| panic!("Tier 2's retention did not run: {:?}", dry.notes));
    assert_eq!(tier2_keys(&s3), keys_before, "a dry run removes nothing");

    let report = retention_run(&stack, false);
    let tier2 = report
        .tier2
        .clone()
        .unwrap_or_else(|| panic!("Tier 2's retention did not run: {:?}", report.notes));
    assert_eq!(
        tier2.backups, dry_tier2.backups,
        "the dry run said what would go"
    );
    let removed: Vec<&str> = tier2
        .backups
        .iter()
        .filter(|b| b.removed)
        .map(|b| b.id.as_str())
        .collect();
    assert_eq!(removed, [backups[0].id.as_str()], "{tier2:?}");
    assert!(
        tier2.wal.iter().map(|t| t.segments_removed).sum::<u64>() > 0,
        "the WAL only the oldest backup needed goes: {tier2:?}"
    );
    let keys = tier2_keys(&s3);
    let oldest_entry = format!(
        "clusters/{}/backups/catalog/{}/entry.json",
        stack.cluster, backups[0].id
    );
    assert!(!keys.contains(&oldest_entry), "{keys:?}");

    // Tier 1 kept only the newest; the middle one lives in Tier 2 alone, and everything a
    // restore of it needs is still there: verify reads every block and its WAL range.
    assert_eq!(
        listed_tiers(&stack.exe, &stack.client_args()),
        vec![
            (backups[1].id.clone(), serde_json::json!([2])),
            (backups[2].id.clone(), serde_json::json!([1, 2])),
        ]
    );
    let out = run(Command::new(&stack.exe)
        .args(["backup", "verify", &backups[1].id])
        .args(stack.client_args()));
    assert!(out.success(), "verify from Tier 2:\n{}", out.stderr);
}

#[test]
fn tier2_retention_keeps_what_object_lock_still_holds_and_says_so() {
    let moto = MotoServer::start();
    let yaml = format!(
        "retention:\n  interval: off\n  after_backup: false\n  block_grace: 0s\n  \
         keep_backups: 1\ntier2:\n  endpoint: {}\n  region: {}\n  bucket: {}\n  \
         access_key_id: moto\n  secret_access_key: moto-secret\n  partial_interval: 1s\n  \
         object_lock: {{mode: governance, retain: 1h}}\n  retention: {{keep_backups: 1}}\n",
        moto.endpoint(),
        MotoServer::REGION,
        MotoServer::BUCKET
    );
    let stack = stack("tier2-retention-object-lock")
        .segment_size_mb(1)
        .server_config(&yaml)
        .start();
    more_wal(&stack);
    let old = backup(&stack, &[]);
    more_wal(&stack);
    let new = backup(&stack, &[]);
    more_wal(&stack);
    let wal_end = lsn(&stack.pg.current_lsn());
    wait_until("both backups and the WAL in Tier 2", RELAY_DEADLINE, || {
        let f = frontier(&stack)?;
        let backups = f.get("backups")?;
        (backups.get(&old.id).is_some()
            && backups.get(&new.id).is_some()
            && frontier_wal_end(&stack).is_some_and(|end| end >= wal_end))
        .then_some(())
    });

    let report = retention_run(&stack, false);
    let tier2 = report
        .tier2
        .clone()
        .unwrap_or_else(|| panic!("Tier 2's retention did not run: {:?}", report.notes));
    let fate = tier2.backups.iter().find(|b| b.id == old.id).unwrap();
    assert!(!fate.removed, "{tier2:?}");
    assert_eq!(fate.kept_because, vec![RetainedBecause::ObjectLock]);
    assert!(tier2.locked_objects > 0, "{tier2:?}");
    assert!(
        tier2.notes.iter().any(|n| n.contains("Object Lock")),
        "{tier2:?}"
    );
    // Tier 1 let it go; Tier 2 still has it, whole.
    assert_eq!(
        listed_tiers(&stack.exe, &stack.client_args()),
        vec![
            (old.id.clone(), serde_json::json!([2])),
            (new.id.clone(), serde_json::json!([1, 2])),
        ]
    );
}
