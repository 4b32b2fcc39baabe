//! Helpers for the backup tests: `klio backup` and `klio restore` against a [`Stack`].

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use klio_proto::klio::{BackupInfo, BlockCompression};
use klio_store::backup::{read_pack_block, scan_pack};
use klio_testkit::{Output, PgServer, Stack, as_postgres, pg_bin, run, run_ok};

/// `klio backup run` of the stack's primary, as the postgres user, with `--output json`.
pub fn backup_command(stack: &Stack, extra: &[&str]) -> Command {
    backup_command_of(stack, &stack.pg, extra)
}

/// `klio backup run` of `pg` (the stack's primary or its standby), as the postgres user, with
/// `--output json`.
pub fn backup_command_of(stack: &Stack, pg: &PgServer, extra: &[&str]) -> Command {
    let mut cmd = as_postgres(&stack.exe);
    cmd.args(["backup", "run", "--output", "json", "-d"])
        .arg(pg.socket_connstr())
        .args(stack.client_args())
        .args(extra);
    cmd
}

/// A backup of the stack's primary that must succeed: its catalog entry.
pub fn backup(stack: &Stack, extra: &[&str]) -> BackupInfo {
    backup_of(stack, &stack.pg, extra)
}

/// A backup of `pg` (the stack's primary or its standby) that must succeed: its catalog entry.
pub fn backup_of(stack: &Stack, pg: &PgServer, extra: &[&str]) -> BackupInfo {
    let out = run(&mut backup_command_of(stack, pg, extra));
    assert!(out.success(), "klio backup run failed:\n{}", out.stderr);
    BackupInfo::from_json(out.stdout.as_bytes())
        .unwrap_or_else(|e| panic!("backup run printed no catalog entry ({e}):\n{}", out.stdout))
}

/// `klio backup <verb> <args> --output json` with the stack's client settings.
pub fn backup_cli(stack: &Stack, verb: &str, args: &[&str]) -> Output {
    run(Command::new(&stack.exe)
        .args(["backup", verb])
        .args(args)
        .args(["--output", "json"])
        .args(stack.client_args()))
}

/// The complete backups the server lists for the stack's cluster.
pub fn list_backups(stack: &Stack) -> Vec<BackupInfo> {
    list_backups_with(&stack.exe, &stack.client_args())
}

/// The complete backups the server lists for these client settings.
pub fn list_backups_with(exe: &Path, client_args: &[OsString]) -> Vec<BackupInfo> {
    let out = run(Command::new(exe)
        .args(["backup", "list", "--output", "json"])
        .args(client_args));
    assert!(out.success(), "klio backup list failed:\n{}", out.stderr);
    let values: Vec<serde_json::Value> = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("backup list printed no JSON array ({e}):\n{}", out.stdout));
    values
        .iter()
        .map(|v| BackupInfo::from_json(v.to_string().as_bytes()).expect("a catalog entry"))
        .collect()
}

/// `klio restore` into `pgdata`, as the postgres user.
pub fn restore_command(stack: &Stack, pgdata: &Path, args: &[&str]) -> Command {
    let mut cmd = as_postgres(&stack.exe);
    cmd.arg("restore")
        .arg("-D")
        .arg(pgdata)
        .args(args)
        .args(stack.client_args());
    cmd
}

/// A restore that must succeed.
pub fn restore(stack: &Stack, pgdata: &Path, args: &[&str]) -> Output {
    run_ok(&mut restore_command(stack, pgdata, args))
}

/// The WAL file names from `start` to `end` (inclusive) on `timeline`, for segments of
/// `segment_size` bytes.
pub fn wal_files_between(timeline: u32, start: u64, end: u64, segment_size: u64) -> Vec<String> {
    let per_id = 0x1_0000_0000 / segment_size;
    (start / segment_size..=end / segment_size)
        .map(|segno| format!("{timeline:08X}{:08X}{:08X}", segno / per_id, segno % per_id))
        .collect()
}

/// Fetches the WAL of `backup` through `klio get-wal` into a fresh directory owned by postgres,
/// for `pg_verifybackup -w`.
pub fn fetch_backup_wal(stack: &Stack, backup: &BackupInfo, segment_size: u64) -> PathBuf {
    let dir = stack.work.subdir(&format!("wal-of-{}", backup.id));
    for name in wal_files_between(
        backup.start.timeline,
        backup.start.lsn.0,
        backup.end.lsn.0,
        segment_size,
    ) {
        run_ok(
            Command::new(&stack.exe)
                .args(["get-wal", &name])
                .arg(dir.join(&name))
                .args(stack.client_args())
                .args(["--prefetch", "0"]),
        );
    }
    run_ok(
        Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir),
    );
    dir
}

/// `pg_verifybackup` of a restored directory, with its WAL from `wal_dir`.
pub fn verifybackup(pgdata: &Path, wal_dir: &Path) -> Output {
    run(as_postgres(pg_bin("pg_verifybackup"))
        .arg("-w")
        .arg(wal_dir)
        .arg(pgdata))
}

/// A directory owned by postgres, for a tablespace.
pub fn postgres_dir(stack: &Stack, name: &str) -> PathBuf {
    let dir = stack.work.subdir(name);
    run_ok(Command::new("chown").args(["postgres:postgres"]).arg(&dir));
    dir
}

/// Creates tablespace `ts` in a new directory of the stack's work directory and a table
/// `in_ts` of `rows` rows in it; the tablespace's location.
pub fn tablespace_with_table(stack: &Stack, rows: u32) -> PathBuf {
    let ts = postgres_dir(stack, "ts");
    stack
        .pg
        .psql(&format!("CREATE TABLESPACE ts LOCATION '{}'", ts.display()));
    stack.pg.psql(&format!(
        "CREATE TABLE in_ts TABLESPACE ts AS \
         SELECT g AS id, md5(g::text) AS h FROM generate_series(1, {rows}) g"
    ));
    ts
}

/// Appends a line to the data directory's postgresql.auto.conf (as root; the file keeps its
/// owner).
pub fn append_auto_conf(pgdata: &Path, line: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(pgdata.join("postgresql.auto.conf"))
        .expect("open postgresql.auto.conf");
    writeln!(f, "{line}").expect("append to postgresql.auto.conf");
}

/// Removes a directory's contents, keeping the directory (and its owner).
pub fn empty_dir(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("read directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path).expect("remove directory");
        } else {
            std::fs::remove_file(&path).expect("remove file");
        }
    }
}

/// Loses the primary as a disaster would: kill -9 of PostgreSQL, send-wal stopped, its data
/// directory deleted. Returns that directory's path, to restore into.
pub fn lose_primary(stack: &mut Stack) -> PathBuf {
    stack.pg.kill9();
    stack.client.stop();
    let pgdata = stack.pg.data_dir();
    std::fs::remove_dir_all(&pgdata).expect("delete PGDATA");
    pgdata
}

/// The golden check: one more commit, kill -9 of PostgreSQL, PGDATA deleted, `klio restore
/// --backup latest`, recovery through get-wal; the dump equals the one taken before the
/// crash and the last commit is there. The stack must be synchronous (every commit on the
/// server before it returns).
pub fn crash_then_restore_latest_recovers_everything(stack: &mut Stack) {
    stack
        .pg
        .psql("CREATE TABLE last_words AS SELECT 'committed last' AS note");
    let before = stack.pg.dumpall();
    let pgdata = lose_primary(stack);
    restore(stack, &pgdata, &["--backup", "latest"]);
    recover_to_the_dump(stack, &pgdata, &before);
}

/// Starts the stack's PostgreSQL on the restored `pgdata` (no synchronous standby: nobody
/// streams yet) and checks that recovery reproduces `before`, the dump taken before the loss,
/// and the `last_words` table committed last.
pub fn recover_to_the_dump(stack: &mut Stack, pgdata: &Path, before: &str) {
    append_auto_conf(pgdata, "synchronous_standby_names = ''");
    stack.pg.start_and_finish_recovery();
    let after = stack.pg.dumpall();
    klio_testkit::assert_same_dump(stack.work.path(), before, &after);
    assert_eq!(
        stack.pg.psql("SELECT note FROM last_words"),
        "committed last"
    );
}

/// Restores `info` into a new directory `name` of the stack's work directory and checks it
/// with pg_verifybackup (its WAL fetched from Klio); returns the directory and the WAL's.
pub fn restore_verified(
    stack: &Stack,
    info: &BackupInfo,
    name: &str,
    segment_size: u64,
) -> (PathBuf, PathBuf) {
    let target = stack.work.subdir(name);
    run_ok(
        Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&target),
    );
    restore(stack, &target, &["--backup", &info.id]);
    let wal = fetch_backup_wal(stack, info, segment_size);
    let ok = verifybackup(&target, &wal);
    assert!(ok.success(), "pg_verifybackup: {}", ok.stderr);
    (target, wal)
}

/// The cluster's pack directory on the server.
fn packs_dir(stack: &Stack) -> PathBuf {
    stack
        .server
        .data_dir()
        .join("clusters")
        .join(&stack.cluster)
        .join("backups")
        .join("packs")
}

/// Bytes in the cluster's pack files on the server.
pub fn pack_bytes(stack: &Stack) -> u64 {
    std::fs::read_dir(packs_dir(stack))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// How many blocks in the cluster's packs on the server are stored with `compression`.
pub fn blocks_stored_as(stack: &Stack, compression: BlockCompression) -> usize {
    let keyring = stack.key.as_ref().map(|key| super::keyring(&[&key.path]));
    let mut count = 0;
    for entry in std::fs::read_dir(packs_dir(stack)).expect("list the packs") {
        let path = entry.expect("a pack").path();
        if path.extension().is_none_or(|x| x != "pack") {
            continue;
        }
        let bytes = std::fs::read(&path).expect("read a pack");
        let scan = scan_pack(&bytes, &path, keyring.as_ref()).expect("a readable pack");
        for record in &scan.entries {
            let block =
                read_pack_block(&bytes, &path, keyring.as_ref(), record).expect("a readable block");
            count += usize::from(block.compression == compression);
        }
    }
    count
}
