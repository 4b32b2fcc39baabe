//! WAL receivers under test: `klio receive-wal` and the reference `pg_receivewal`.

use std::path::Path;

use crate::command::as_postgres;
use crate::pg::{PgServer, pg_bin};
use crate::process::BackgroundProcess;

/// Starts `klio receive-wal --synchronous` (binary `exe`) as the postgres user, streaming from
/// `server` over TCP with `slot` into `wal_dir`; `extra` adds flags.
pub fn start_klio_receive_wal(
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

/// Starts `pg_receivewal --synchronous` as the postgres user, with
/// `application_name=pg_receivewal`.
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
