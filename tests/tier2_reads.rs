//! Reads from Tier 2, end to end: `klio get-wal` falling back from Tier 1 to Tier 2 through a
//! read-write server, damaged objects, and read-only servers that serve restores from Tier 2
//! alone and refuse every write. Real PostgreSQL 15, real Klio servers and a real
//! S3-compatible server (s3s-fs) on 127.0.0.1; the bucket is filled by the primary server's
//! relay (under a key prefix), and a test goes on once it has caught up.

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::backups::*;
use common::retention::*;
use common::tier2::listed_tiers;
use common::tier2_bucket::*;
use common::*;
use klio_proto::klio::BlockCompression;
use klio_testkit::{S3Server, Stack, TestDir, run, wait_until};

/// Segments of 1 MiB: a few statements fill several.
const SEGMENT: u64 = 1 << 20;

/// What a read-only server answers every write with.
const READ_ONLY: &str = "this server is read-only (mode: read-only)";

/// An encrypted stack (1 MiB segments, synchronous) whose server has `s3` as its Tier 2.
fn tier2_stack(label: &str, s3: &S3Server) -> Stack {
    stack(label)
        .segment_size_mb(1)
        .sync_standby()
        .encryption()
        .conf("autovacuum = off")
        .server_config(&tier2_yaml(s3, false))
        .start()
}

/// Writes WAL until the archive holds at least `n` completed segments; returns their names.
fn fill_segments(stack: &Stack, n: usize) -> Vec<String> {
    stack
        .pg
        .psql("CREATE TABLE IF NOT EXISTS fill (id int, pad text)");
    wait_until("completed segments", Duration::from_secs(120), || {
        stack.pg.psql(
            "INSERT INTO fill SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 3000) g",
        );
        stack.pg.switch_wal();
        let segments = archived_segments(stack);
        (segments.len() >= n).then_some(segments)
    })
}

/// `klio get-wal <name> <dest>` with these client settings.
fn get_wal(exe: &Path, client_args: &[OsString], name: &str, dest: &Path) -> klio_testkit::Output {
    run(Command::new(exe)
        .args(["get-wal", name])
        .arg(dest)
        .args(client_args)
        .args(["--prefetch", "0"]))
}

/// The archive file (sealed or plain) of segment `name` on the stack's server.
fn tier1_segment_file(stack: &Stack, name: &str) -> PathBuf {
    let dir = stack.server.wal_dir(&stack.cluster);
    let sealed = dir.join(format!("{name}.klio"));
    if sealed.exists() {
        sealed
    } else {
        dir.join(name)
    }
}

#[test]
fn get_wal_falls_back_to_tier2_for_a_segment_tier1_no_longer_has() {
    let s3 = S3Server::start();
    let stack = tier2_stack("tier2-get-wal-fallback", &s3);
    let segments = fill_segments(&stack, 3);
    let name = &segments[1];
    let original = stack.work.path().join("original");
    let out = get_wal(&stack.exe, &stack.client_args(), name, &original);
    assert!(out.success(), "get-wal from Tier 1:\n{}", out.stderr);
    let damaged_name = &segments[2];
    let damaged_original = stack.work.path().join("damaged-original");
    let out = get_wal(
        &stack.exe,
        &stack.client_args(),
        damaged_name,
        &damaged_original,
    );
    assert!(out.success(), "get-wal from Tier 1:\n{}", out.stderr);

    relayed(&stack, &s3);
    std::fs::remove_file(tier1_segment_file(&stack, name)).expect("delete from Tier 1");
    let damaged = tier1_segment_file(&stack, damaged_name);
    let mut bytes = std::fs::read(&damaged).expect("Tier 1's file");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&damaged, &bytes).expect("damage Tier 1's copy");
    let fetched = stack.work.path().join("from-tier2");
    let out = get_wal(&stack.exe, &stack.client_args(), name, &fetched);
    assert!(out.success(), "get-wal from Tier 2:\n{}", out.stderr);
    assert_eq!(
        std::fs::read(&fetched).expect("the fetched segment"),
        std::fs::read(&original).expect("the original segment"),
        "Tier 2's copy is the segment, byte for byte"
    );
    assert_eq!(
        std::fs::metadata(&fetched).unwrap().len(),
        SEGMENT,
        "a whole segment"
    );

    // Damaged in Tier 1, the segment is served from Tier 2, and the damage is logged.
    let fetched = stack.work.path().join("damaged-from-tier2");
    let out = get_wal(&stack.exe, &stack.client_args(), damaged_name, &fetched);
    assert!(
        out.success(),
        "get-wal around Tier 1's damage:\n{}",
        out.stderr
    );
    assert_eq!(
        std::fs::read(&fetched).expect("the fetched segment"),
        std::fs::read(&damaged_original).expect("the original segment"),
    );
    assert!(
        stack
            .server
            .log()
            .contains(&format!("{damaged_name} is damaged in Tier 1")),
        "the server logs Tier 1's damage:\n{}",
        stack.server.log()
    );

    // A segment neither tier holds is still missing, not an error.
    let absent = segment_name(1, 0x7000, SEGMENT);
    let out = get_wal(
        &stack.exe,
        &stack.client_args(),
        &absent,
        &stack.work.path().join("absent"),
    );
    assert!(!out.success(), "a segment nobody has");
    assert!(!stack.work.path().join("absent").exists());
}

#[test]
fn a_damaged_object_is_an_error_naming_it_never_wrong_bytes() {
    let s3 = S3Server::start();
    let stack = tier2_stack("tier2-damaged-object", &s3);
    let segments = fill_segments(&stack, 2);
    let name = &segments[0];
    relayed(&stack, &s3);
    let key = format!("clusters/{}/wal/{name}.klio", stack.cluster);
    let object = object_file(&s3, &key);
    let mut bytes = std::fs::read(&object).expect("the object's file");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&object, &bytes).expect("damage the object");
    std::fs::remove_file(tier1_segment_file(&stack, name)).expect("delete from Tier 1");

    let dest = stack.work.path().join("damaged");
    let out = get_wal(&stack.exe, &stack.client_args(), name, &dest);
    assert!(!out.success(), "a damaged object must not be served");
    assert!(
        out.stderr.contains(&key),
        "the error names the object {key}:\n{}",
        out.stderr
    );
    assert!(!dest.exists(), "no file is written");
}

#[test]
fn a_read_only_server_refuses_every_write() {
    let s3 = S3Server::start();
    let mut stack = tier2_stack("tier2-read-only-writes", &s3);
    let backup_info = backup(&stack, &[]);
    relayed(&stack, &s3);
    stack.client.stop();
    // Only the read-only server may be talking to the bucket from here on.
    stack.server.stop();
    let before = tier2_keys(&s3);
    let work = TestDir::new("tier2-read-only-writes-ro");
    let ro = read_only_server(&stack, &s3, &work);
    let args = client_args_for(&stack, &ro);
    let refused = |what: &str, out: &klio_testkit::Output| {
        assert!(!out.success(), "{what} must be refused");
        assert!(
            out.stderr.contains(READ_ONLY),
            "{what}: the read-only message:\n{}",
            out.stderr
        );
    };

    let mut backup_cmd = klio_testkit::as_postgres(&stack.exe);
    backup_cmd
        .args(["backup", "run", "-d"])
        .arg(stack.pg.socket_connstr())
        .args(&args);
    refused("klio backup run", &run(&mut backup_cmd));
    for (what, verb, extra) in [
        (
            "klio backup delete",
            "delete",
            vec![backup_info.id.as_str()],
        ),
        ("klio backup pin", "pin", vec![backup_info.id.as_str()]),
    ] {
        let out = run(Command::new(&stack.exe)
            .args(["backup", verb])
            .args(extra)
            .args(&args));
        refused(what, &out);
    }
    let out = run(Command::new(&stack.exe)
        .args(["retention", "run"])
        .args(&args));
    refused("klio retention run", &out);

    let log = work.path().join("send-wal.log");
    let mut send_wal = klio_testkit::SendWal::new(
        &stack.exe,
        &stack.pg,
        &ro,
        &stack.certs,
        &stack.cluster,
        &[],
        &log,
    );
    send_wal.start();
    wait_until("send-wal to be refused", Duration::from_secs(60), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(READ_ONLY)
            .then_some(())
    });
    send_wal.stop();
    assert!(
        ro.log().contains("ReadOnly"),
        "the server logs the refusals with their code:\n{}",
        ro.log()
    );
    assert_eq!(tier2_keys(&s3), before, "nothing is written to the bucket");

    // Offline key rotation leaves a read-only server's data directory alone.
    let mut ro = ro;
    ro.stop();
    let key = stack.key.as_ref().expect("an encrypted stack");
    let out = run(Command::new(&stack.exe)
        .args(["keys", "rotate", "--data-dir"])
        .arg(ro.data_dir())
        .arg("--key")
        .arg(&key.path));
    assert!(!out.success(), "klio keys rotate must be refused");
    assert!(
        out.stderr.contains("read-only server (mode: read-only)"),
        "klio keys rotate: {}",
        out.stderr
    );
}

#[test]
fn a_certificate_for_another_cluster_reads_nothing_through_a_read_only_server() {
    let s3 = S3Server::start();
    let mut stack = tier2_stack("tier2-read-only-other-cluster", &s3);
    let segments = fill_segments(&stack, 2);
    backup(&stack, &[]);
    relayed(&stack, &s3);
    stack.client.stop();
    klio_testkit::run_ok(
        Command::new(&stack.exe)
            .args(["certs", "client", "--cluster", "intruder", "-D"])
            .arg(&stack.certs.dir),
    );
    klio_testkit::run_ok(
        Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&stack.certs.dir),
    );
    let work = TestDir::new("tier2-read-only-other-cluster-ro");
    let ro = read_only_server(&stack, &s3, &work);

    // The owner reads its segment through the read-only server.
    let own = work.path().join("own");
    let out = get_wal(
        &stack.exe,
        &client_args_for(&stack, &ro),
        &segments[0],
        &own,
    );
    assert!(
        out.success(),
        "the cluster's own certificate:\n{}",
        out.stderr
    );
    assert!(own.exists());

    // The intruder's certificate names another cluster: claiming pg1 is refused, and as
    // itself it finds nothing of pg1's.
    let mut intruder = ro.client_args(&stack.certs, "intruder");
    intruder.extend(["--cluster".into(), stack.cluster.clone().into()]);
    let dest = work.path().join("stolen");
    let out = get_wal(&stack.exe, &intruder, &segments[0], &dest);
    assert!(
        !out.success(),
        "another cluster's certificate reads nothing"
    );
    assert!(!dest.exists());
    let mut as_itself = ro.client_args(&stack.certs, "intruder");
    as_itself.extend(["--cluster".into(), "intruder".into()]);
    let out = get_wal(&stack.exe, &as_itself, &segments[0], &dest);
    assert!(
        !out.success(),
        "the intruder's own cluster has no such segment"
    );
    assert!(!dest.exists());
    let out = run(Command::new(&stack.exe)
        .args(["backup", "list", "--output", "json"])
        .args(&as_itself));
    assert!(out.success(), "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "[]", "no backups of another cluster");
}

#[test]
fn a_read_only_server_recovers_a_cluster_from_tier2_alone() {
    let s3 = S3Server::start();
    let mut stack = tier2_stack("tier2-read-only-recovery", &s3);
    stack.pg.pgbench(&["-i", "-s", "2", "-q"]);
    backup(&stack, &["--compress", "lz4"]);
    // The second backup compresses its new blocks against the dictionary the first left:
    // restoring it from Tier 2 needs the dictionary from there too.
    stack
        .pg
        .psql("UPDATE pgbench_accounts SET abalance = abalance + 1");
    backup(&stack, &["--compress", "lz4"]);
    assert!(blocks_stored_as(&stack, BlockCompression::Lz4Dictionary) > 0);
    stack
        .pg
        .psql("CREATE TABLE after_backup AS SELECT g AS id FROM generate_series(1, 5000) g");
    stack.pg.switch_wal();
    // The last commit stays in the segment in progress: Tier 2 holds it as a journal.
    stack
        .pg
        .psql("CREATE TABLE last_words AS SELECT 'committed last' AS note");
    let before = stack.pg.dumpall();
    relayed(&stack, &s3);
    let pgdata = lose_primary(&mut stack);
    stack.server.kill9();
    std::fs::remove_dir_all(stack.server.data_dir()).expect("delete site A's data directory");

    let work = TestDir::new("tier2-read-only-recovery-ro");
    let ro = read_only_server(&stack, &s3, &work);
    let args = client_args_for(&stack, &ro);
    let listed = list_backups_with(&stack.exe, &args);
    assert_eq!(listed.len(), 2, "the backups are listed from Tier 2");
    // Its blocks and its WAL are all in Tier 2.
    let out = run(Command::new(&stack.exe)
        .args(["backup", "verify", &listed[1].id])
        .args(&args));
    assert!(
        out.success(),
        "verify through the read-only server:
{}",
        out.stderr
    );
    let mut restore = klio_testkit::as_postgres(&stack.exe);
    restore
        .arg("restore")
        .arg("-D")
        .arg(&pgdata)
        .args(["--backup", "latest"])
        .args(&args);
    klio_testkit::run_ok(&mut restore);
    recover_to_the_dump(&mut stack, &pgdata, &before);
}

#[test]
fn backup_list_shows_which_tiers_hold_each_backup() {
    let s3 = S3Server::start();
    let stack = tier2_stack("tier2-backup-list-tiers", &s3);
    stack.pg.pgbench(&["-i", "-s", "1", "-q"]);
    let both = backup(&stack, &[]);
    stack
        .pg
        .psql("CREATE TABLE between_backups AS SELECT 1 AS x");
    let only_tier2 = backup(&stack, &[]);
    relayed(&stack, &s3);
    let out = backup_cli(&stack, "delete", &[&only_tier2.id]);
    assert!(out.success(), "delete from Tier 1:\n{}", out.stderr);
    stack.pg.psql("CREATE TABLE after_relay AS SELECT 2 AS x");
    let only_tier1 = backup(&stack, &[]);
    // Tier 2 loses the newest backup after the relay put it there (its entry is what makes it
    // a backup of Tier 2); the frontier has it, so the relay leaves it lost.
    relayed(&stack, &s3);
    delete_object(
        &s3,
        &format!(
            "clusters/{}/backups/catalog/{}/entry.json",
            stack.cluster, only_tier1.id
        ),
    );

    let tiers = listed_tiers(&stack.exe, &stack.client_args());
    assert_eq!(
        tiers,
        vec![
            (both.id.clone(), serde_json::json!([1, 2])),
            (only_tier2.id.clone(), serde_json::json!([2])),
            (only_tier1.id.clone(), serde_json::json!([1])),
        ]
    );
    let out = run(Command::new(&stack.exe)
        .args(["backup", "list"])
        .args(stack.client_args()));
    assert!(out.success(), "{}", out.stderr);
    let column = |id: &str| {
        out.stdout
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{id} listed:\n{}", out.stdout))
            .split_whitespace()
            .any(|cell| cell == "1+2" || cell == "1" || cell == "2")
    };
    assert!(
        out.stdout.lines().next().unwrap().contains("TIERS"),
        "{}",
        out.stdout
    );
    assert!(column(&both.id) && column(&only_tier2.id) && column(&only_tier1.id));

    // The backup only Tier 2 holds is read from there: it verifies through the server.
    let out = backup_cli(&stack, "verify", &[&only_tier2.id]);
    assert!(out.success(), "verify from Tier 2:\n{}", out.stderr);
}
