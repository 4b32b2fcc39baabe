//! Backups read from the data directory (`--mode local`), against real PostgreSQL 15: the
//! same files as a `BASE_BACKUP` of the same cluster, a restore that pg_verifybackup accepts
//! and that recovers, a file rewritten in place with the same size and time backed up as it
//! now is, and `--max-rate` holding the readers back without holding commits back.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::backups::*;
use common::*;
use klio_proto::klio::CaptureMethod;
use klio_testkit::{Stack, TickLoop, as_postgres, pg_bin, run_ok};

const SEGMENT: u64 = 16 << 20;

/// Every entry under `dir`: path → size for files, `None` for directories.
fn tree(dir: &Path) -> BTreeMap<String, Option<u64>> {
    fn visit(root: &Path, dir: &Path, out: &mut BTreeMap<String, Option<u64>>) {
        for entry in std::fs::read_dir(dir).expect("read a restored directory") {
            let entry = entry.expect("entry");
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .expect("under the root")
                .to_string_lossy()
                .into_owned();
            let meta = std::fs::symlink_metadata(&path).expect("stat");
            if meta.is_dir() {
                out.insert(rel, None);
                visit(root, &path, out);
            } else {
                out.insert(rel, Some(meta.len()));
            }
        }
    }
    let mut out = BTreeMap::new();
    visit(dir, dir, &mut out);
    out
}

/// A primary with pgbench data, a tablespace, an unlogged table and what PostgreSQL leaves
/// out of backups lying around: a temporary file, a stray file in pg_replslot.
fn primary_with_everything(label: &str) -> (Stack, std::path::PathBuf) {
    let stack = stack(label).sync_standby().start();
    // Nothing may rewrite a relation between the two backups compared below.
    stack.pg.psql("ALTER SYSTEM SET autovacuum = off");
    stack.pg.psql("SELECT pg_reload_conf()");
    stack.pg.pgbench(&["-i", "-s", "2", "-q"]);
    let ts = tablespace_with_table(&stack, 20_000);
    stack
        .pg
        .psql("CREATE UNLOGGED TABLE scratch AS SELECT g FROM generate_series(1, 50000) g");
    let pgdata = stack.pg.data_dir();
    let tmp = pgdata.join("base/pgsql_tmp");
    std::fs::create_dir_all(&tmp).expect("create pgsql_tmp");
    std::fs::write(tmp.join("pgsql_tmp4242.0"), vec![1u8; 100_000]).expect("a temporary file");
    std::fs::write(pgdata.join("pg_replslot/stray"), b"left out").expect("a file in pg_replslot");
    run_ok(
        Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&pgdata),
    );
    // Nothing changes the relations from here on: the two backups below read the same files.
    stack.pg.psql("CHECKPOINT");
    (stack, ts)
}

#[test]
fn a_local_backup_records_the_files_a_streamed_one_does_and_restores_to_a_verified_cluster() {
    let (mut stack, ts) = primary_with_everything("backup-local-same");
    // A session holding a temporary table while both backups run.
    let mut temp_holder = as_postgres(pg_bin("psql"))
        .args(["-X", "-q", "-d"])
        .arg(stack.pg.socket_connstr())
        .args([
            "-c",
            "CREATE TEMP TABLE held AS SELECT g FROM generate_series(1, 10000) g",
            "-c",
            "SELECT pg_sleep(600)",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start psql");
    klio_testkit::wait_until(
        "the temporary table exists",
        Duration::from_secs(60),
        || {
            (stack.pg.psql(
                "SELECT count(*) FROM pg_class WHERE relpersistence = 't' AND relname = 'held'",
            ) == "1")
                .then_some(())
        },
    );

    let streamed = backup(&stack, &["--mode", "stream", "--label", "streamed"]);
    assert_eq!(streamed.capture, CaptureMethod::Stream);
    let local = backup(&stack, &["--label", "local", "--jobs", "2"]);
    assert_eq!(
        local.capture,
        CaptureMethod::Local,
        "auto reads the primary's files here"
    );
    assert_eq!(local.tablespaces, streamed.tablespaces);
    assert_eq!(local.files, streamed.files, "{local:?}\n{streamed:?}");
    let _ = temp_holder.kill();
    let _ = temp_holder.wait();

    let restored = |info: &klio_proto::klio::BackupInfo, name: &str| {
        let dir = postgres_dir(&stack, name);
        let ts_dir = postgres_dir(&stack, &format!("{name}-ts"));
        restore(
            &stack,
            &dir,
            &[
                "--backup",
                &info.id,
                "--tablespace-mapping",
                &format!("{}={}", ts.display(), ts_dir.display()),
            ],
        );
        let mut files = tree(&dir);
        for (path, size) in tree(&ts_dir) {
            files.insert(format!("ts/{path}"), size);
        }
        (dir, files)
    };
    let (_, streamed_files) = restored(&streamed, "from-stream");
    let (_, local_files) = restored(&local, "from-local");
    // The same paths; the same sizes but for what each backup writes itself.
    let differ: Vec<_> = streamed_files
        .iter()
        .filter(|(path, size)| {
            let own = [
                "backup_label",
                "backup_manifest",
                "tablespace_map",
                "pg_tblspc",
            ];
            local_files.get(*path) != Some(size) && !own.iter().any(|o| path.starts_with(o))
        })
        .collect();
    assert!(
        differ.is_empty(),
        "streamed entries the local backup differs on: {differ:?}"
    );
    let extra: Vec<_> = local_files
        .keys()
        .filter(|p| !streamed_files.contains_key(*p))
        .collect();
    assert!(
        extra.is_empty(),
        "local entries a streamed backup does not have: {extra:?}"
    );
    for left_out in [
        "base/pgsql_tmp/pgsql_tmp4242.0",
        "pg_replslot/stray",
        "postmaster.pid",
    ] {
        assert!(
            !local_files.contains_key(left_out),
            "{left_out} was backed up"
        );
    }
    assert_eq!(local_files.get("pg_wal"), Some(&None));
    assert_eq!(local_files.get("pg_wal/archive_status"), Some(&None));
    let scratch = stack.pg.psql("SELECT pg_relation_filepath('scratch')");
    assert!(local_files.contains_key(&format!("{scratch}_init")));
    assert!(
        !local_files.contains_key(&scratch),
        "an unlogged relation's main fork"
    );

    // And the restore recovers to the primary's state (an unlogged table's rows never
    // survive a recovery, so they leave the comparison).
    stack.pg.psql("TRUNCATE scratch");
    stack
        .pg
        .psql("CREATE TABLE last_words AS SELECT 'committed last' AS note");
    let before = stack.pg.dumpall();
    let pgdata = lose_primary(&mut stack);
    empty_dir(&ts);
    restore(&stack, &pgdata, &["--backup", &local.id]);
    // The manifest the client wrote is one pg_verifybackup accepts, WAL range included (a
    // restore with --tablespace-mapping rewrites tablespace_map, so this one has none).
    let wal = fetch_backup_wal(&stack, &local, SEGMENT);
    let verified = verifybackup(&pgdata, &wal);
    assert!(verified.success(), "pg_verifybackup: {}", verified.stderr);
    recover_to_the_dump(&mut stack, &pgdata, &before);
    assert_eq!(stack.pg.psql("SELECT count(*) FROM in_ts"), "20000");
}

#[test]
fn a_file_rewritten_in_place_with_the_same_size_and_time_is_backed_up_as_it_now_is() {
    let stack = stack("backup-local-same-mtime").start();
    let note = stack.pg.data_dir().join("klio-note.txt");
    let before = vec![b'a'; 200_000];
    std::fs::write(&note, &before).expect("write the note");
    let first = backup(&stack, &["--mode", "local"]);

    // Same size, same modification time, other bytes: only reading them can tell.
    let mtime = std::fs::metadata(&note)
        .and_then(|m| m.modified())
        .expect("mtime");
    let mut after = before.clone();
    after[150_000] = b'b';
    std::fs::write(&note, &after).expect("rewrite the note");
    std::fs::File::options()
        .write(true)
        .open(&note)
        .and_then(|f| f.set_modified(mtime))
        .expect("put the old modification time back");
    assert_eq!(
        std::fs::metadata(&note).and_then(|m| m.modified()).ok(),
        Some(mtime)
    );
    let second = backup(&stack, &["--mode", "local"]);

    for (info, expected) in [(&second, &after), (&first, &before)] {
        let dir = postgres_dir(&stack, &format!("restored-{}", info.id));
        restore(&stack, &dir, &["--backup", &info.id]);
        let restored = std::fs::read(dir.join("klio-note.txt")).expect("restored note");
        assert!(
            restored == *expected,
            "backup {} restored the wrong bytes",
            info.id
        );
    }
}

#[test]
fn max_rate_holds_the_readers_back_and_commits_go_on_meanwhile() {
    let stack = stack("backup-local-rate").sync_standby().start();
    stack.pg.pgbench(&["-i", "-s", "1", "-q"]);
    let ticks = TickLoop::start(&stack.pg, &stack.work, 100);
    ticks.wait_for_more(3);
    let commits_during = |what: &str, args: &[&str]| {
        let (before, started) = (ticks.committed(), Instant::now());
        let info = backup(&stack, args);
        let (during, took) = (ticks.committed() - before, started.elapsed());
        eprintln!("{during} synchronous commits during a {took:?} {what} backup");
        (info, during, took)
    };

    // Paced: every byte read went through the pace (each reader's first block at once), and
    // commits go on at their own rate meanwhile.
    let mib = 8u32;
    let (info, during, took) = commits_during(
        "paced",
        &["--mode", "local", "--max-rate", &format!("{mib}M")],
    );
    let least = Duration::from_secs_f64(info.logical_bytes as f64 / f64::from(mib << 20));
    assert!(
        took + Duration::from_millis(500) >= least,
        "{} bytes in {took:?} at {mib} MiB/s",
        info.logical_bytes
    );
    assert!(
        during >= 1 && (during as f64) >= took.as_secs_f64(),
        "{during} synchronous commits during a {took:?} backup at {mib} MiB/s: {info:?}"
    );

    // At full speed, over 128 MiB that does not compress, so that reading, hashing and storing
    // last long enough to starve the WAL if they could. pg_backup_start and pg_backup_stop
    // each switch WAL segments, and a commit after a switch waits until the rest of the
    // switched segment is durable too: allow a second for the two.
    let filler = stack.pg.data_dir().join("klio-filler");
    run_ok(as_postgres("sh").args([
        "-c",
        &format!("head -c 134217728 /dev/urandom > {}", filler.display()),
    ]));
    let (info, during, took) = commits_during("full-speed", &["--mode", "local"]);
    assert!(
        info.logical_bytes > 128 << 20,
        "the filler was not backed up: {info:?}"
    );
    assert!(
        during >= 1 && (during as f64) >= took.as_secs_f64() - 1.0,
        "{during} synchronous commits during a {took:?} full-speed backup: {info:?}"
    );
    ticks.stop();
}
