//! A `klio send-wal` process streaming one PostgreSQL server's WAL to a Klio server,
//! restartable after kill -9 with the same arguments and log.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::command::as_postgres;
use crate::klio_server::{KlioServer, TestCerts};
use crate::pg::PgServer;
use crate::process::BackgroundProcess;

/// The replication slot, and so the `application_name` in `pg_stat_replication`, that
/// `klio send-wal` uses in the tests (`synchronous_standby_names = 'klio'` names it).
pub const SEND_WAL_SLOT: &str = "klio";

/// `klio send-wal` for one cluster: started, stopped, killed and started again on the same
/// command line (PostgreSQL and the Klio server keep their ports across restarts).
#[derive(Debug)]
pub struct SendWal {
    exe: PathBuf,
    args: Vec<OsString>,
    log: PathBuf,
    process: Option<BackgroundProcess>,
}

impl SendWal {
    /// A `send-wal` (not started yet) from `pg` to `server` as `cluster`, with the slot
    /// [`SEND_WAL_SLOT`], reconnecting within a second, `extra_args` appended; its output goes
    /// to `log`.
    pub fn new(
        exe: &Path,
        pg: &PgServer,
        server: &KlioServer,
        certs: &TestCerts,
        cluster: &str,
        extra_args: &[OsString],
        log: &Path,
    ) -> Self {
        let mut args: Vec<OsString> = ["send-wal", "-v", "-d"].map(OsString::from).to_vec();
        args.push(pg.tcp_connstr().into());
        args.extend(["-S", SEND_WAL_SLOT, "--cluster", cluster].map(OsString::from));
        args.extend(server.client_args(certs, cluster));
        args.extend(["--max-reconnect-delay", "1", "-s", "1"].map(OsString::from));
        args.extend(extra_args.iter().cloned());
        Self {
            exe: exe.to_owned(),
            args,
            log: log.to_owned(),
            process: None,
        }
    }

    /// Starts the process as the postgres user; one still running is killed with -9 first.
    pub fn start(&mut self) {
        self.kill9();
        self.process = Some(BackgroundProcess::spawn(
            "klio send-wal",
            &mut self.command(),
            &self.log,
        ));
    }

    /// The command [`SendWal::start`] runs.
    pub fn command(&self) -> Command {
        let mut cmd = as_postgres(&self.exe);
        cmd.args(&self.args);
        cmd
    }

    /// SIGINT and wait for a clean exit; returns the exit code (`None` when not running).
    pub fn stop(&mut self) -> Option<i32> {
        self.process.take().and_then(|mut p| p.stop())
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill9();
        }
    }

    /// Sends a signal ("HUP", "STOP", ...) to the running process.
    pub fn signal(&self, signal: &str) {
        if let Some(p) = &self.process {
            p.signal(signal);
        }
    }

    /// Whether the process is still running (not exited).
    pub fn is_running(&mut self) -> bool {
        self.process
            .as_mut()
            .is_some_and(BackgroundProcess::is_running)
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(BackgroundProcess::pid)
    }

    /// The whole log, of every start.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
