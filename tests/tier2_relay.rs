//! The Tier 2 relay end to end, against real PostgreSQL 15, a real Klio server and a real
//! S3-compatible server (s3s-fs on 127.0.0.1): sealed files go up byte-identical, the segment
//! in progress goes up as its cut journal, kill -9 mid-upload resumes from the frontier,
//! Tier 1 retention keeps what Tier 2 lacks, and a failing Tier 2 never delays a commit.

mod common;

use std::time::{Duration, Instant};

use common::backups::*;
use common::retention::*;
use common::tier2::*;
use common::*;
use klio_proto::klio::{RetainedBecause, WalKeptBecause};
use klio_testkit::{S3Server, SEND_WAL_SLOT, Stack, wait_until};

/// 1 MiB segments: a little WAL fills several.
const SEGMENT: u64 = 1 << 20;

/// Retention on request only, blocks reclaimed at once, plus `policy`.
fn retention_yaml(policy: &str) -> String {
    format!("retention:\n  interval: off\n  after_backup: false\n  block_grace: 0s\n{policy}")
}

/// A stack of 1 MiB segments whose server relays to `s3`, the partial every second.
fn relayed_stack(label: &str, s3: &S3Server) -> klio_testkit::StackBuilder {
    stack(label)
        .segment_size_mb(1)
        .server_config(&tier2_yaml(s3.endpoint(), "1s"))
}

fn wait_for_tier2(stack: &Stack, s3: &S3Server) {
    let mut missing = Vec::new();
    wait_until("every sealed file to be in Tier 2", RELAY_DEADLINE, || {
        missing = not_in_tier2(stack, s3);
        missing.is_empty().then_some(())
    });
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every file under `dir`, recursively.
fn all_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn every_sealed_file_reaches_tier2_byte_identical() {
    let s3 = S3Server::start();
    let stack = relayed_stack("tier2-identical", &s3).encryption().start();
    let marker = "tier2-plaintext-marker-5f3a";
    stack.pg.psql("CREATE TABLE notes (id int, body text)");
    stack.pg.psql(&format!(
        "INSERT INTO notes SELECT g, '{marker}' FROM generate_series(1, 2000) g"
    ));
    stack.pg.psql("SELECT pg_switch_wal()");
    let info = backup(&stack, &[]);
    stack.pg.psql("SELECT pg_switch_wal()");
    wait_for_tier2(&stack, &s3);
    wait_until("the backup in the frontier", RELAY_DEADLINE, || {
        frontier(&stack)?.get("backups")?.get(&info.id).map(|_| ())
    });

    let files = sealed_files(&stack);
    for want in [
        "wal/klio-archive.identity",
        "backups/block-hash-key",
        &format!("backups/catalog/{}/entry.json", info.id),
        &format!("backups/catalog/{}/files", info.id),
        &format!("backups/catalog/{}/backup_manifest", info.id),
    ] {
        assert!(files.iter().any(|f| f == want), "{want} not on Tier 1");
    }
    assert!(files.iter().any(|f| f.ends_with(".pack")), "no pack");
    assert!(
        files.iter().filter(|f| f.ends_with(".klio")).count() >= 2,
        "sealed segments: {files:?}"
    );
    for rel in &files {
        let local = std::fs::read(cluster_dir(&stack).join(rel)).unwrap();
        let remote = std::fs::read(object_of(&s3, &stack, rel))
            .unwrap_or_else(|e| panic!("{rel} not in Tier 2: {e}"));
        assert!(local == remote, "{rel} differs in Tier 2");
    }
    for object in all_files(s3.root()) {
        let bytes = std::fs::read(&object).unwrap();
        assert!(
            !contains(&bytes, marker.as_bytes()),
            "{} holds plaintext",
            object.display()
        );
    }
}

#[test]
fn a_standby_backup_and_the_history_of_a_promotion_reach_tier2() {
    let s3 = S3Server::start();
    let mut stack = relayed_stack("tier2-standby", &s3).standby().start();
    let standby = stack.standby.take().expect("built with a standby");
    stack.pg.psql("CREATE TABLE t (id int)");
    stack.pg.psql("CHECKPOINT");
    stack.pg.switch_wal();
    let replayed = stack.pg.current_lsn();
    standby.wait_for_replay(&replayed);
    standby.wait_for_flush(SEND_WAL_SLOT, &replayed);
    let info = backup_of(&stack, &standby, &[]);
    standby.promote();
    wait_until(
        "the promoted standby to accept writes",
        Duration::from_secs(60),
        || {
            standby
                .try_psql("INSERT INTO t VALUES (2)")
                .success()
                .then_some(())
        },
    );
    standby.switch_wal();
    let end_lsn = standby.current_lsn();
    standby.wait_for_flush(SEND_WAL_SLOT, &end_lsn);
    wait_until("the history file on Tier 1", RELAY_DEADLINE, || {
        has_history(&stack, 2).then_some(())
    });
    wait_for_tier2(&stack, &s3);
    assert!(
        object_of(&s3, &stack, "wal/00000002.history").is_file(),
        "the history file is not in Tier 2"
    );
    assert!(
        object_of(
            &s3,
            &stack,
            &format!("backups/catalog/{}/entry.json", info.id)
        )
        .is_file(),
        "the standby's backup is not in Tier 2"
    );
    wait_until("Tier 2's WAL end on timeline 2", RELAY_DEADLINE, || {
        let end = frontier(&stack)?.get("wal_end")?.clone();
        (end["timeline"] == 2 && end["lsn"].as_u64()? >= lsn(&end_lsn)).then_some(())
    });
}

#[test]
fn pins_set_and_lifted_after_the_upload_are_mirrored_in_tier2() {
    let s3 = S3Server::start();
    let stack = relayed_stack("tier2-pins", &s3).start();
    stack.pg.psql("CREATE TABLE t (id int)");
    let info = backup(&stack, &[]);
    let entry = format!("backups/catalog/{}/entry.json", info.id);
    let pinned = format!("backups/catalog/{}/pinned", info.id);
    wait_until("the backup in Tier 2", RELAY_DEADLINE, || {
        object_of(&s3, &stack, &entry).is_file().then_some(())
    });
    assert!(!object_of(&s3, &stack, &pinned).exists());

    let out = backup_cli(&stack, "pin", &[&info.id]);
    assert!(out.success(), "{}", out.stderr);
    wait_until("the pin in Tier 2", RELAY_DEADLINE, || {
        let local = std::fs::read(cluster_dir(&stack).join(&pinned)).ok()?;
        (std::fs::read(object_of(&s3, &stack, &pinned)).ok()? == local).then_some(())
    });
    let out = backup_cli(&stack, "unpin", &[&info.id]);
    assert!(out.success(), "{}", out.stderr);
    wait_until("the pin gone from Tier 2", RELAY_DEADLINE, || {
        (!object_of(&s3, &stack, &pinned).exists()).then_some(())
    });
    wait_until("the frontier to record it unpinned", RELAY_DEADLINE, || {
        (frontier(&stack)?["backups"][&info.id]["pinned"] == false).then_some(())
    });
}

#[test]
fn the_segment_in_progress_reaches_tier2_within_partial_interval() {
    let s3 = S3Server::start();
    let stack = relayed_stack("tier2-partial", &s3).start();
    stack.pg.psql("CREATE TABLE t (id int)");
    stack.pg.psql("SELECT pg_switch_wal()");
    stack.pg.psql("INSERT INTO t VALUES (1)");
    let commit = lsn(&stack.pg.psql("SELECT pg_current_wal_flush_lsn()"));
    let segno = commit / SEGMENT;
    let journal = format!("wal/{}.klio-journal", segment_name(1, segno, SEGMENT));
    wait_until(
        "Tier 2's WAL end to reach the commit",
        Duration::from_secs(60),
        || (frontier_wal_end(&stack)? >= commit).then_some(()),
    );
    assert!(
        object_of(&s3, &stack, &journal).is_file(),
        "the journal object {journal} is missing"
    );
    let f = frontier(&stack).unwrap();
    assert_eq!(f["partial"]["segno"].as_u64(), Some(segno), "{f}");

    stack.pg.psql("SELECT pg_switch_wal()");
    let segment = format!("wal/{}", segment_name(1, segno, SEGMENT));
    wait_until(
        "the completed segment to replace the journal",
        RELAY_DEADLINE,
        || {
            (object_of(&s3, &stack, &segment).is_file()
                && !object_of(&s3, &stack, &journal).exists())
            .then_some(())
        },
    );
    // The frontier is written after the uploads it records.
    wait_until(
        "Tier 2's WAL end to pass the completed segment",
        RELAY_DEADLINE,
        || (frontier_wal_end(&stack)? >= (segno + 1) * SEGMENT).then_some(()),
    );
}

#[test]
fn a_relay_killed_mid_upload_resumes_from_its_frontier_and_misses_nothing() {
    let s3 = S3Server::start();
    let mut stack = relayed_stack("tier2-kill", &s3).start();
    stack.pg.pgbench(&["-i", "-s", "4", "-q"]);
    stack.pg.psql("SELECT pg_switch_wal()");
    // Kill while the relay is busy: some segments up, not all.
    wait_until("the relay to be under way", RELAY_DEADLINE, || {
        (!frontier_segments(&stack, SEGMENT).is_empty()).then_some(())
    });
    stack.server.kill9();
    let before = frontier_segments(&stack, SEGMENT);
    stack.server.restart();
    stack.pg.psql("SELECT pg_switch_wal()");
    wait_for_tier2(&stack, &s3);
    let on_tier1 = archived_segments(&stack);
    assert!(on_tier1.len() > 20, "only {} segments", on_tier1.len());
    let mut last = (Vec::new(), Vec::new());
    wait_until(
        "the frontier to equal what the bucket holds",
        RELAY_DEADLINE,
        || {
            last = (
                frontier_segments(&stack, SEGMENT),
                segment_objects(&s3, &stack),
            );
            (last.0 == last.1 && on_tier1.iter().all(|s| last.0.contains(s))).then_some(())
        },
    );
    assert!(
        before.iter().all(|s| last.0.contains(s)),
        "the frontier lost segments across the restart"
    );
}

#[test]
fn a_damaged_frontier_stops_the_relay_and_retention_of_its_cluster_and_says_so() {
    let s3 = S3Server::start();
    let mut stack = stack("tier2-damaged")
        .segment_size_mb(1)
        .server_config(&format!(
            "{}{}",
            retention_yaml("  keep_backups: 1\n"),
            tier2_yaml(s3.endpoint(), "1s")
        ))
        .start();
    stack.pg.psql("CREATE TABLE t (id int)");
    stack.pg.psql("SELECT pg_switch_wal()");
    wait_until("a frontier", RELAY_DEADLINE, || frontier(&stack));
    stack.server.kill9();
    let path = cluster_dir(&stack).join("tier2-frontier.json");
    std::fs::write(&path, b"{\"schema\": 1, \"identity\": tr").unwrap();
    stack.server.restart();
    let stopped = wait_until("status to show the relay stopped", RELAY_DEADLINE, || {
        tier2_status(&stack)?["stopped"].as_str().map(str::to_owned)
    });
    assert!(stopped.contains("tier2-frontier.json"), "{stopped}");
    assert!(stopped.contains("remove it"), "{stopped}");
    // The file is left as it was: nothing re-decided what is in Tier 2.
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"{\"schema\": 1, \"identity\": tr"
    );
    let out = klio_testkit::run(
        std::process::Command::new(&stack.exe)
            .args(["retention", "run"])
            .args(stack.client_args()),
    );
    assert!(!out.success(), "retention ran on a damaged frontier");
    assert!(out.stderr.contains("Tier 2"), "{}", out.stderr);
}

#[test]
fn slow_down_bursts_resets_and_a_stall_lose_nothing_delay_no_commit_and_never_list() {
    let bound = Duration::from_secs(2);
    let s3 = S3Server::start();
    let stack = relayed_stack("tier2-faults", &s3).sync_standby().start();
    stack.pg.psql("CREATE TABLE t (id int, pad text)");
    let faults = s3.faults();
    faults.slow_down_next(20);
    faults.reset_next(6);
    let mut slowest = Duration::ZERO;
    let mut commit = |i: u32| {
        let started = Instant::now();
        stack.pg.psql(&format!(
            "INSERT INTO t SELECT g, repeat('x', 500) FROM generate_series({i} * 1000, {i} * 1000 + 999) g"
        ));
        slowest = slowest.max(started.elapsed());
    };
    for i in 0..10 {
        commit(i);
        stack.pg.switch_wal();
    }
    // A server that stalls: requests hang, commits go on.
    faults.stall();
    for i in 10..30 {
        commit(i);
    }
    stack.pg.switch_wal();
    faults.resume();
    assert!(
        slowest < bound,
        "a synchronous commit took {slowest:?} under Tier 2 faults (bound {bound:?})"
    );
    wait_for_tier2(&stack, &s3);
    wait_until(
        "the frontier to equal what the bucket holds",
        RELAY_DEADLINE,
        || {
            let f = frontier_segments(&stack, SEGMENT);
            (f == segment_objects(&s3, &stack)
                && archived_segments(&stack).iter().all(|s| f.contains(s)))
            .then_some(())
        },
    );
    assert!(faults.injected() > 0, "no fault was injected");
    assert_eq!(faults.list_requests(), 0, "the relay listed the bucket");
}

#[test]
fn a_server_killed_during_a_multipart_upload_relays_everything_after_its_restart() {
    let s3 = S3Server::start();
    let mut stack = relayed_stack("tier2-kill-multipart", &s3)
        .encryption()
        .start();
    let faults = s3.faults();
    // Packs close at 32 MiB and go up in parts above 24 MiB: a backup of this database (hex
    // digits of random numbers, which compress to about half) fills at least one.
    stack.pg.psql(
        "CREATE TABLE noise AS SELECT g, (SELECT string_agg(md5(random()::text || g || h), '') \
         FROM generate_series(1, 30) h) AS pad FROM generate_series(1, 80000) g",
    );
    backup(&stack, &[]);
    wait_until("a multipart upload to start", RELAY_DEADLINE, || {
        (faults.multipart_starts() > 0).then_some(())
    });
    // Its parts are on their way: hold them there, and kill the server under them.
    faults.stall();
    stack.server.kill9();
    faults.resume();
    stack.server.restart();
    wait_for_tier2(&stack, &s3);
    assert!(
        faults.multipart_starts() > 1,
        "the pack went up in parts again after the restart"
    );
    let out = backup_cli(&stack, "verify", &[&list_backups(&stack)[0].id]);
    assert!(out.success(), "{}", out.stderr);
}

#[test]
fn tier1_retention_keeps_what_tier2_lacks() {
    let s3 = S3Server::start();
    let policy = retention_yaml("  keep_backups: 1\n");
    let mut stack = stack("tier2-retention")
        .segment_size_mb(1)
        .server_config(&format!("{policy}{}", tier2_yaml(&closed_endpoint(), "1s")))
        .start();
    stack.pg.pgbench(&["-i", "-s", "1", "-q"]);
    let old = backup(&stack, &[]);
    stack.pg.pgbench(&["-i", "-s", "1", "-q"]);
    stack.pg.psql("SELECT pg_switch_wal()");
    let new = backup(&stack, &[]);
    stack.pg.psql("SELECT pg_switch_wal()");
    let segments_before = archived_segments(&stack);

    for dry_run in [true, false] {
        let report = retention_run(&stack, dry_run);
        assert!(report.backups.iter().all(|b| !b.removed), "{report:?}");
        let kept = report.backups.iter().find(|b| b.id == old.id).unwrap();
        assert_eq!(kept.kept_because, vec![RetainedBecause::NotYetInTier2]);
        assert!(
            report.wal.iter().all(|t| t.segments_removed == 0),
            "{report:?}"
        );
        assert!(
            report
                .wal
                .iter()
                .any(|t| t.kept_because.contains(&WalKeptBecause::NotYetInTier2)),
            "{report:?}"
        );
    }
    assert_eq!(
        segments_gone(&stack, &segments_before),
        Vec::<String>::new()
    );
    assert_eq!(list_backups(&stack).len(), 2);

    // Tier 2 reachable: the relay catches up, and the next run removes the old backup and
    // the WAL only it needed.
    std::fs::write(
        Stack::server_config_path(&stack.work),
        format!("{policy}{}", tier2_yaml(s3.endpoint(), "1s")),
    )
    .unwrap();
    stack.server.restart();
    wait_until("both backups in Tier 2", RELAY_DEADLINE, || {
        let f = frontier(&stack)?;
        let b = f.get("backups")?;
        (b.get(&old.id).is_some() && b.get(&new.id).is_some()).then_some(())
    });
    wait_for_tier2(&stack, &s3);
    let report = retention_run(&stack, false);
    let fate = report.backups.iter().find(|b| b.id == old.id).unwrap();
    assert!(fate.removed, "{report:?}");
    assert!(
        report.wal.iter().map(|t| t.segments_removed).sum::<u64>() > 0,
        "{report:?}"
    );
    // Tier 1 holds only the new backup now; the old one lives on in Tier 2 alone.
    assert_eq!(
        listed_tiers(&stack.exe, &stack.client_args()),
        vec![
            (old.id.clone(), serde_json::json!([2])),
            (new.id.clone(), serde_json::json!([1, 2])),
        ]
    );
}

#[test]
fn a_failing_tier2_never_delays_acknowledgements() {
    let bound = Duration::from_secs(2);
    let stack = stack("tier2-sync")
        .sync_standby()
        .server_config(&tier2_yaml(&closed_endpoint(), "1s"))
        .start();
    stack.pg.psql("CREATE TABLE t (id int)");
    let mut slowest = Duration::ZERO;
    for i in 0..50 {
        let started = Instant::now();
        stack.pg.psql(&format!("INSERT INTO t VALUES ({i})"));
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < bound,
        "a synchronous commit took {slowest:?} with Tier 2 down (bound {bound:?})"
    );
    let status = wait_until("status to show the relay failing", RELAY_DEADLINE, || {
        let t = tier2_status(&stack)?;
        (t["last_error"]["kind"] == "transport" && t["pending"].as_u64()? > 0).then_some(t)
    });
    assert!(
        status["last_error"]["file"]
            .as_str()
            .is_some_and(|f| f.starts_with("wal/")),
        "{status}"
    );
    let page = metrics_page(&stack);
    assert!(
        page.lines()
            .any(|l| l.starts_with("klio_tier2_upload_errors_total{")
                && l.contains("kind=\"transport\"")),
        "no error counter in:\n{page}"
    );
    assert!(
        page.lines()
            .any(|l| l.starts_with("klio_tier2_queue_depth{") && !l.ends_with(" 0")),
        "no queue depth in:\n{page}"
    );
}
