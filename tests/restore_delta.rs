//! `klio restore --delta` against real PostgreSQL 15 and pg_verifybackup: a restored data
//! directory damaged every way a disk or an operator can (a flipped byte, a truncated, a
//! deleted and an added file, a directory turned into a file, old WAL) ends with exactly the
//! backup's content; and a primary rewound to its own backup fetches only what changed and
//! recovers every commit.

mod common;

use std::path::Path;

use common::backups::*;
use common::*;
use klio_testkit::{Output, run};

const SEGMENT: u64 = 16 << 20;

/// "<n.n> <unit>" as `klio` prints sizes, in bytes.
fn parse_size(text: &str) -> f64 {
    let (number, unit) = text.trim().split_once(' ').expect("a size and its unit");
    let n: f64 = number.parse().expect("a number");
    let scale = match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        other => panic!("unit {other}"),
    };
    n * scale
}

/// (kept, fetched, removed) from a delta restore's summary.
fn delta_summary(out: &Output) -> (f64, f64, u64) {
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("delta: "))
        .unwrap_or_else(|| panic!("no delta summary in:\n{}", out.stdout));
    let rest = line.strip_prefix("delta: ").expect("prefix");
    let (kept, rest) = rest
        .split_once(" already as in the backup and kept, ")
        .expect("kept");
    let (fetched, rest) = rest.split_once(" fetched, ").expect("fetched");
    let removed = rest
        .split_whitespace()
        .next()
        .expect("removed")
        .parse()
        .expect("a count");
    (parse_size(kept), parse_size(fetched), removed)
}

fn relation_path(stack: &klio_testkit::Stack, pgdata: &Path, table: &str) -> std::path::PathBuf {
    pgdata.join(
        stack
            .pg
            .psql(&format!("SELECT pg_relation_filepath('{table}')")),
    )
}

#[test]
fn a_delta_restore_turns_a_damaged_directory_back_into_exactly_the_backup() {
    let stack = stack("restore-delta-damage").start();
    stack.pg.pgbench(&["-i", "-s", "4", "-q"]);
    let info = backup(&stack, &[]);
    let target = postgres_dir(&stack, "restored");
    restore(&stack, &target, &["--backup", &info.id]);
    let wal = fetch_backup_wal(&stack, &info, SEGMENT);
    assert!(
        verifybackup(&target, &wal).success(),
        "the plain restore verifies"
    );

    // A flipped byte, a truncated file, a deleted one, an added one, an added directory, a
    // directory replaced by a file, old WAL and a stale pid file.
    let accounts = relation_path(&stack, &target, "pgbench_accounts");
    let mut bytes = std::fs::read(&accounts).expect("read accounts");
    bytes[300_000] ^= 0x40;
    std::fs::write(&accounts, &bytes).expect("flip a byte");
    let branches = relation_path(&stack, &target, "pgbench_branches");
    std::fs::File::options()
        .write(true)
        .open(&branches)
        .and_then(|f| f.set_len(100))
        .expect("truncate");
    let tellers = relation_path(&stack, &target, "pgbench_tellers");
    std::fs::remove_file(&tellers).expect("delete a relation");
    let stray = accounts.with_file_name("424242");
    std::fs::write(&stray, vec![7u8; 20_000]).expect("add a relation file");
    std::fs::create_dir_all(target.join("stray/inner")).expect("add a directory");
    std::fs::write(target.join("stray/inner/file"), "x").expect("a file in it");
    std::fs::remove_dir_all(target.join("pg_stat")).expect("remove pg_stat");
    std::fs::write(target.join("pg_stat"), "not a directory").expect("a file instead");
    std::fs::write(
        target.join("pg_wal/000000010000000000000009"),
        vec![0u8; 4096],
    )
    .expect("old WAL");
    std::fs::write(target.join("postmaster.pid"), "4194305\n").expect("a stale pid file");
    // Damage done as the owner of the directory would do it.
    klio_testkit::run_ok(
        std::process::Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&target),
    );
    assert!(!verifybackup(&target, &wal).success(), "the damage is seen");

    let out = run(&mut restore_command(
        &stack,
        &target,
        &["--backup", &info.id, "--delta"],
    ));
    assert!(
        out.success(),
        "klio restore --delta failed:\n{}",
        out.stderr
    );
    let verified = verifybackup(&target, &wal);
    assert!(
        verified.success(),
        "pg_verifybackup after --delta: {}",
        verified.stderr
    );
    for gone in [
        stray.clone(),
        target.join("stray"),
        target.join("pg_wal/000000010000000000000009"),
        target.join("postmaster.pid"),
    ] {
        assert!(!gone.exists(), "{} is not in the backup", gone.display());
    }
    assert!(target.join("pg_stat").is_dir());
    assert_eq!(std::fs::read(&accounts).expect("read"), {
        let mut good = bytes.clone();
        good[300_000] ^= 0x40;
        good
    });
    // Only the damaged blocks crossed the network (and the three files written last).
    let (kept, fetched, removed) = delta_summary(&out);
    assert!(
        fetched < 0.05 * info.logical_bytes as f64,
        "fetched {fetched} of {} bytes",
        info.logical_bytes
    );
    assert!(kept > 0.9 * info.logical_bytes as f64, "kept {kept}");
    // The four added entries, and recovery.signal, which the plain restore wrote.
    assert!(removed >= 4, "{}", out.stdout);

    // Run again on the intact directory: nothing but the final files is fetched.
    let again = run(&mut restore_command(
        &stack,
        &target,
        &["--backup", &info.id, "--delta"],
    ));
    assert!(again.success(), "{}", again.stderr);
    let (_, fetched, removed) = delta_summary(&again);
    assert!(
        fetched < 64.0 * 1024.0,
        "fetched {fetched} bytes from an intact directory"
    );
    // Only what the last restore's recovery settings added (recovery.signal).
    assert!(removed <= 1, "{}", again.stdout);
    assert!(verifybackup(&target, &wal).success());
}

#[test]
fn a_primary_rewound_to_its_own_backup_by_delta_fetches_only_what_changed_and_recovers() {
    let mut stack = stack("restore-delta-rewind").sync_standby().start();
    stack.pg.pgbench(&["-i", "-s", "5", "-q"]);
    let info = backup(&stack, &[]);
    // Changes after the backup: 200 updates touch about a fifth of the accounts blocks.
    stack.pg.pgbench(&["-t", "100", "-c", "2", "-N"]);
    stack
        .pg
        .psql("CREATE TABLE last_words AS SELECT 'committed last' AS note");
    let before = stack.pg.dumpall();
    stack.pg.stop();
    stack.client.stop();
    let pgdata = stack.pg.data_dir();

    let out = run(&mut restore_command(
        &stack,
        &pgdata,
        &["--backup", &info.id, "--delta"],
    ));
    assert!(
        out.success(),
        "klio restore --delta failed:\n{}",
        out.stderr
    );
    let (kept, fetched, _) = delta_summary(&out);
    assert!(
        fetched < 0.6 * info.logical_bytes as f64 && kept > 0.3 * info.logical_bytes as f64,
        "kept {kept}, fetched {fetched} of {}",
        info.logical_bytes
    );
    let wal = fetch_backup_wal(&stack, &info, SEGMENT);
    let verified = verifybackup(&pgdata, &wal);
    assert!(verified.success(), "pg_verifybackup: {}", verified.stderr);
    // Recovery through get-wal replays everything committed after the backup too.
    recover_to_the_dump(&mut stack, &pgdata, &before);
}
