//! Base backups end to end, against real PostgreSQL 15, a real Klio server and the reference
//! tools: `klio backup run` while PostgreSQL writes, `klio restore`, recovery through
//! `klio get-wal` only, `pg_dumpall` and `pg_verifybackup` as judges. No pg_basebackup.

mod common;

use std::process::Command;
use std::time::Duration;

use common::backups::*;
use common::*;
use klio_proto::klio::BlockCompression;
use klio_testkit::{
    Stack, TickLoop, as_postgres, assert_same_dump, pg_bin, pgbench_in_background, run, run_ok,
};

const SEGMENT: u64 = 16 << 20;

/// A primary with a tablespace `ts` (a table in it) and pgbench data, streaming to Klio as its
/// synchronous standby, so every commit is on the server before it returns.
fn primary_with_tablespace(label: &str) -> (Stack, std::path::PathBuf) {
    let stack = stack(label).sync_standby().start();
    stack.pg.pgbench(&["-i", "-s", "5", "-q"]);
    let ts = tablespace_with_table(&stack, 50_000);
    (stack, ts)
}

#[test]
fn golden_backup_then_crash_then_restore_latest_recovers_every_commit() {
    let (mut stack, ts) = primary_with_tablespace("backup-golden");
    let ticks = TickLoop::start(&stack.pg, &stack.work, 200);
    let mut bench = pgbench_in_background(
        &stack.pg,
        &["-T", "10", "-c", "2", "-N"],
        &stack.work.path().join("pgbench.log"),
    );
    let info = backup(&stack, &["--label", "golden"]);
    assert_eq!(info.label, "golden");
    assert_eq!(info.tablespaces.len(), 1, "{info:?}");
    assert!(info.end.lsn > info.start.lsn, "{info:?}");
    assert_eq!(bench.wait(Duration::from_secs(120)), Some(0), "pgbench");
    ticks.wait_for_more(5);
    let last_tick = ticks.stop();
    stack
        .pg
        .psql("INSERT INTO in_ts VALUES (-1, 'after the backup, in the tablespace')");
    stack
        .pg
        .psql("CREATE TABLE last_words AS SELECT 'committed last' AS note");
    let before = stack.pg.dumpall();

    let pgdata = lose_primary(&mut stack);
    empty_dir(&ts);

    let listed = list_backups(&stack);
    assert_eq!(listed.len(), 1, "{listed:?}");
    restore(&stack, &pgdata, &["--backup", "latest"]);
    assert!(
        !pgdata.join("klio-restore-in-progress").exists(),
        "a finished restore leaves no marker"
    );
    assert!(pgdata.join("backup_label").exists());
    // The restored directory is what PostgreSQL's manifest says, WAL range included, with
    // the WAL fetched from Klio.
    let wal = fetch_backup_wal(&stack, &info, SEGMENT);
    let verified = verifybackup(&pgdata, &wal);
    assert!(verified.success(), "pg_verifybackup: {}", verified.stderr);

    // Nothing acknowledges commits after the restore: no synchronous standby.
    append_auto_conf(&pgdata, "synchronous_standby_names = ''");
    stack.pg.start_and_finish_recovery();
    let after = stack.pg.dumpall();
    assert_same_dump(stack.work.path(), &before, &after);
    assert_every_commit_recovered(&stack.pg, last_tick);
    assert_eq!(
        stack.pg.psql("SELECT h FROM in_ts WHERE id = -1"),
        "after the backup, in the tablespace"
    );
    assert!(
        stack.pg.log().contains("restored log file"),
        "PostgreSQL recovered through get-wal"
    );
}

#[test]
fn pg_verifybackup_accepts_a_restore_and_rejects_one_changed_byte() {
    let stack = stack("backup-verify").start();
    stack.pg.pgbench(&["-i", "-s", "2", "-q"]);
    let info = backup(&stack, &[]);
    let (target, wal) = restore_verified(&stack, &info, "restored", SEGMENT);

    let relation = target.join(
        stack
            .pg
            .psql("SELECT pg_relation_filepath('pgbench_accounts')"),
    );
    let mut bytes = std::fs::read(&relation).expect("read a restored relation");
    bytes[100_000] ^= 0x01;
    std::fs::write(&relation, bytes).expect("change one byte");
    let bad = verifybackup(&target, &wal);
    assert!(
        !bad.success(),
        "pg_verifybackup must notice the changed byte"
    );
    assert!(
        bad.stderr.contains("checksum mismatch"),
        "pg_verifybackup names the file: {}",
        bad.stderr
    );
}

#[test]
fn a_second_backup_after_a_small_change_stores_a_small_fraction_of_the_first() {
    let stack = stack("backup-dedup").start();
    stack.pg.pgbench(&["-i", "-s", "5", "-q"]);
    let first = backup(&stack, &[]);
    stack
        .pg
        .psql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= 100");
    let second = backup(&stack, &[]);
    assert!(first.new_stored_bytes > 1 << 20, "{first:?}");
    assert!(
        second.new_stored_bytes * 20 < first.new_stored_bytes,
        "the second backup stored {} bytes, the first {}",
        second.new_stored_bytes,
        first.new_stored_bytes
    );
    // Each is still a whole backup on its own.
    assert!(second.referenced_stored_bytes * 10 > first.referenced_stored_bytes * 9);
    // References stay under 0.1 % of the logical size (32-byte hashes of 64 KiB blocks).
    assert!(
        second.blocks * 32 * 1000 < second.logical_bytes,
        "{second:?}"
    );
    let listed = list_backups(&stack);
    assert_eq!(
        listed.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(),
        [first.id.as_str(), second.id.as_str()],
        "listed in the order they ended"
    );
}

#[test]
fn later_backups_compress_against_the_first_ones_dictionary_and_restore_verified() {
    let stack = stack("backup-dictionary").start();
    stack.pg.pgbench(&["-i", "-s", "5", "-q"]);
    let dictionary_file = stack
        .server
        .data_dir()
        .join("clusters")
        .join(&stack.cluster)
        .join("backups")
        .join("block-dictionary");
    backup(&stack, &["--compress", "lz4"]);
    let dictionary =
        std::fs::read(&dictionary_file).expect("the first backup leaves the cluster a dictionary");
    assert_eq!(
        blocks_stored_as(&stack, BlockCompression::Lz4Dictionary),
        0,
        "the first backup had no dictionary to compress against"
    );

    // Every page of the accounts table changes, and the table doubles.
    stack
        .pg
        .psql("UPDATE pgbench_accounts SET abalance = abalance + 1");
    let second = backup(&stack, &["--compress", "lz4"]);
    let against = blocks_stored_as(&stack, BlockCompression::Lz4Dictionary);
    assert!(
        against > 500,
        "the second backup's new blocks use the dictionary: {against} do"
    );
    assert_eq!(
        std::fs::read(&dictionary_file).expect("the dictionary stays"),
        dictionary,
        "a cluster's dictionary is never replaced"
    );

    let verified = backup_cli(&stack, "verify", &[&second.id]);
    assert!(
        verified.success(),
        "klio backup verify: {}",
        verified.stderr
    );
    restore_verified(&stack, &second, "restored", SEGMENT);
}

#[test]
fn a_block_flipped_on_the_servers_disk_fails_verify_and_restore_naming_the_backup() {
    let stack = stack("backup-flip").encryption().start();
    stack.pg.pgbench(&["-i", "-s", "2", "-q"]);
    let info = backup(&stack, &[]);
    let verified = backup_cli(&stack, "verify", &[&info.id]);
    assert!(
        verified.success(),
        "verify of an intact backup: {}",
        verified.stderr
    );

    let packs = stack
        .server
        .data_dir()
        .join("clusters")
        .join(&stack.cluster)
        .join("backups")
        .join("packs");
    let pack = std::fs::read_dir(&packs)
        .expect("the packs directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "pack"))
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a pack file");
    let mut bytes = std::fs::read(&pack).expect("read the pack");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&pack, bytes).expect("flip a byte");

    let bad = backup_cli(&stack, "verify", &[&info.id]);
    assert!(!bad.success(), "verify must fail on a flipped block");
    assert!(
        bad.stderr.contains(&info.id),
        "names the backup: {}",
        bad.stderr
    );
    let target = stack.work.subdir("restored");
    run_ok(
        Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&target),
    );
    let restored = run(&mut restore_command(
        &stack,
        &target,
        &["--backup", &info.id],
    ));
    assert!(!restored.success(), "restore must fail on a flipped block");
    assert!(
        restored.stderr.contains(&info.id),
        "names the backup: {}",
        restored.stderr
    );
    assert!(
        !target.join("backup_label").exists(),
        "a failed restore never looks complete"
    );
}

#[test]
fn a_server_with_another_key_refuses_the_backups_clearly() {
    let mut stack = stack("backup-wrong-key").encryption().start();
    stack
        .pg
        .psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    let info = backup(&stack, &[]);
    stack.client.stop();
    let key = stack.key.as_ref().expect("a key").path.clone();
    std::fs::remove_file(&key).expect("remove the key");
    klio_testkit::KeyFile::generate(&stack.exe, &key);
    stack.server.restart();
    let out = backup_cli(&stack, "verify", &[&info.id]);
    assert!(!out.success(), "another key must not open the backup");
    assert!(
        out.stderr.contains("key"),
        "says it is about keys: {}",
        out.stderr
    );
}

#[test]
fn restore_to_a_time_between_two_backups_stops_exactly_there() {
    // Synchronous: both commits are on the server before the primary goes.
    let stack = stack("backup-pitr").sync_standby().start();
    stack.pg.psql("CREATE TABLE events (id int, note text)");
    let first = backup(&stack, &["--label", "before"]);
    stack
        .pg
        .psql("INSERT INTO events VALUES (1, 'before the target')");
    // The target is strictly between the two commits.
    std::thread::sleep(Duration::from_millis(1100));
    let target = stack.pg.psql("SELECT now()::text");
    std::thread::sleep(Duration::from_millis(1100));
    stack
        .pg
        .psql("INSERT INTO events VALUES (2, 'after the target')");
    let second = backup(&stack, &["--label", "after"]);
    let mut stack = stack;
    let pgdata = lose_primary(&mut stack);

    // A backup that ends after the target cannot reach it: refused, naming the one to use.
    let refused = run(&mut restore_command(
        &stack,
        &pgdata,
        &["--backup", &second.id, "--target-time", &target],
    ));
    assert!(!refused.success(), "a backup after the target is refused");
    assert!(
        refused.stderr.contains(&first.id),
        "suggests the earlier backup: {}",
        refused.stderr
    );
    assert!(!pgdata.join("backup_label").exists(), "nothing restored");

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
        label.contains("LABEL: before"),
        "latest before the target: {label}"
    );
    append_auto_conf(&pgdata, "synchronous_standby_names = ''");
    stack.pg.start_and_finish_recovery();
    assert_eq!(
        stack.pg.psql("SELECT string_agg(note, ',') FROM events"),
        "before the target"
    );
}

#[test]
fn a_corrupted_page_fails_the_backup_naming_the_file() {
    let mut stack = stack("backup-checksum").start();
    stack.pg.psql(
        "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g",
    );
    stack.pg.psql("CHECKPOINT");
    let path = stack.pg.psql("SELECT pg_relation_filepath('t')");
    let relation = stack.pg.data_dir().join(&path);
    stack.client.stop();
    stack.pg.stop();
    run_ok(
        as_postgres(pg_bin("pg_checksums"))
            .arg("--enable")
            .arg("-D")
            .arg(stack.pg.data_dir()),
    );
    stack.pg.restart();
    stack.client.start();
    // With checksums on, every page of a healthy cluster passes both methods' checks.
    for mode in ["local", "stream"] {
        backup(&stack, &["--mode", mode]);
    }

    stack.client.stop();
    stack.pg.stop();
    let mut bytes = std::fs::read(&relation).expect("read relation file");
    bytes[8192 + 4000] ^= 0xff;
    std::fs::write(&relation, bytes).expect("write relation file");
    stack.pg.restart();
    stack.client.start();

    let before = list_backups(&stack).len();
    for mode in ["local", "stream"] {
        let out = run(&mut backup_command(&stack, &["--mode", mode]));
        assert!(!out.success(), "a {mode} backup with a bad page must fail");
        assert!(
            out.stderr.contains(&path) && out.stderr.contains("block 1"),
            "{mode}: names the file {path} and its block: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("block 0:"), "{mode}: {}", out.stderr);
    }
    assert_eq!(list_backups(&stack).len(), before, "nothing more listed");
}

#[test]
fn another_clusters_certificate_can_neither_list_read_nor_delete_these_backups() {
    let stack = stack("backup-security").start();
    stack.pg.psql("CREATE TABLE t AS SELECT 1 AS x");
    let info = backup(&stack, &[]);
    run_ok(
        Command::new(&stack.exe)
            .args(["certs", "client", "--cluster", "intruder", "-D"])
            .arg(&stack.certs.dir),
    );
    run_ok(
        Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&stack.certs.dir),
    );
    let intruder = stack.server.client_args(&stack.certs, "intruder");
    let mut as_intruder = intruder.clone();
    as_intruder.extend(["--cluster".into(), "intruder".into()]);
    assert!(
        list_backups_with(&stack.exe, &as_intruder).is_empty(),
        "sees no backup"
    );
    for verb in ["show", "verify", "delete"] {
        let out = run(Command::new(&stack.exe)
            .args(["backup", verb, &info.id])
            .args(&as_intruder));
        assert!(!out.success(), "{verb} by another cluster must fail");
    }
    // Writing a backup as this cluster with another cluster's certificate is refused.
    let out = run(as_postgres(&stack.exe)
        .args(["backup", "run", "--cluster", &stack.cluster, "-d"])
        .arg(stack.pg.socket_connstr())
        .args(&intruder));
    assert!(
        !out.success(),
        "a claimed cluster is refused: {}",
        out.stdout
    );
    assert_eq!(list_backups(&stack).len(), 1, "the backup is untouched");
}
