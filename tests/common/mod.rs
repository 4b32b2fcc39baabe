//! Helpers shared by the klio binary's end-to-end tests.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use klio_testkit::{BackgroundProcess, PgServer, TestDir, as_postgres, pg_bin, wait_until};
use sha2::{Digest, Sha256};

/// The klio binary, copied where the `postgres` user can run it.
pub fn klio_exe(dir: &TestDir) -> PathBuf {
    dir.install_exe(Path::new(env!("CARGO_BIN_EXE_klio")))
}

/// Starts `klio receive-wal` as the postgres user.
pub fn start_klio(
    exe: &Path,
    server: &PgServer,
    wal_dir: &Path,
    slot: &str,
    extra: &[&str],
    log: &Path,
) -> BackgroundProcess {
    let mut cmd = as_postgres(exe);
    cmd.args(["receive-wal", "-v", "-D"])
        .arg(wal_dir)
        .args(["-S", slot, "-d", &server.tcp_connstr(), "--synchronous"])
        .args(["--reconnect-delay", "1"])
        .args(extra);
    BackgroundProcess::spawn("klio receive-wal", &mut cmd, log)
}

/// Starts `pg_receivewal --synchronous` as the postgres user with application_name pg_receivewal.
pub fn start_pg_receivewal(
    server: &PgServer,
    wal_dir: &Path,
    slot: &str,
    log: &Path,
) -> BackgroundProcess {
    let mut cmd = as_postgres(pg_bin("pg_receivewal"));
    cmd.arg("-D")
        .arg(wal_dir)
        .args(["-S", slot, "--synchronous", "-v"])
        .args([
            "-d",
            &format!("{} application_name=pg_receivewal", server.tcp_connstr()),
        ]);
    BackgroundProcess::spawn("pg_receivewal", &mut cmd, log)
}

/// Creates a physical slot.
pub fn create_slot(server: &PgServer, slot: &str) {
    server.psql(&format!(
        "SELECT pg_create_physical_replication_slot('{slot}', true)"
    ));
}

/// Waits until the receiver with `application_name` reports `flush_lsn >= target`.
pub fn wait_for_flush(server: &PgServer, app: &str, target: &str) {
    wait_until(
        &format!("{app} to flush up to {target}"),
        Duration::from_secs(180),
        || {
            let ok = server.psql(&format!(
                "SELECT coalesce(bool_or(flush_lsn >= '{target}'::pg_lsn), false) \
                 FROM pg_stat_replication WHERE application_name = '{app}'"
            ));
            (ok == "t").then_some(())
        },
    );
}

/// sha256 of every file in `dir`, by name.
pub fn digests(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .expect("read WAL directory")
        .map(|e| {
            let e = e.expect("directory entry");
            let name = e.file_name().into_string().expect("UTF-8 file name");
            let bytes = std::fs::read(e.path()).expect("read WAL file");
            (name, hex(&Sha256::digest(&bytes)))
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs pgbench against `server`.
pub fn pgbench(server: &PgServer, args: &[&str]) {
    klio_testkit::run_ok(
        as_postgres(pg_bin("pgbench"))
            .args(["-h", &server.socket_dir(), "-p", &server.port().to_string()])
            .args(["-U", "postgres"])
            .args(args)
            .arg("postgres"),
    );
}

/// A command for a shell loop running as postgres.
pub fn shell_as_postgres(script: &str) -> Command {
    let mut c = as_postgres("bash");
    c.args(["-c", script]);
    c
}

/// Asserts two pg_dumpall outputs are identical, printing a diff when not.
pub fn assert_same_dump(work: &TestDir, before: &str, after: &str) {
    if before == after {
        return;
    }
    let a = work.path().join("dump-before.sql");
    let b = work.path().join("dump-after.sql");
    std::fs::write(&a, before).expect("write dump");
    std::fs::write(&b, after).expect("write dump");
    let diff = klio_testkit::run(Command::new("diff").arg("-u").arg(&a).arg(&b));
    let head: String = diff.stdout.lines().take(60).collect::<Vec<_>>().join("\n");
    panic!("pg_dumpall differs after recovery:\n{head}");
}
