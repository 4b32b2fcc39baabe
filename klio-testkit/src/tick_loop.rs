//! A client committing numbered rows one by one, recording each id only after its commit
//! returned: the witness for "no committed transaction lost".

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::command::as_postgres;
use crate::pg::PgServer;
use crate::process::BackgroundProcess;
use crate::test_dir::TestDir;

/// A running commit loop on table `ticks (id bigint primary key, at timestamptz, pad text)`.
#[derive(Debug)]
pub struct TickLoop {
    process: BackgroundProcess,
    ids: PathBuf,
    stop: PathBuf,
}

impl TickLoop {
    /// Creates the table and starts committing rows carrying `pad_bytes` of padding. Ids come
    /// from the loop, not a sequence: a crash legitimately moves a sequence ahead.
    pub fn start(pg: &PgServer, work: &TestDir, pad_bytes: usize) -> Self {
        pg.psql(
            "CREATE TABLE ticks (id bigint PRIMARY KEY, \
             at timestamptz NOT NULL DEFAULT clock_timestamp(), pad text)",
        );
        let ids = work.path().join("committed-ids");
        let stop = work.path().join("stop-ticks");
        let script = format!(
            "i=0; while [ ! -e {stop} ]; do i=$((i+1)); \
               psql -XAtq -h {host} -p {port} -U postgres -d postgres \
                    -c \"INSERT INTO ticks (id, pad) VALUES ($i, repeat('x', {pad_bytes}))\" || exit 1; \
               echo \"$i\" >> {ids}; \
             done",
            stop = stop.display(),
            host = pg.socket_dir(),
            port = pg.port(),
            ids = ids.display(),
        );
        let mut cmd = as_postgres("bash");
        cmd.args(["-c", &script]);
        let process =
            BackgroundProcess::spawn("tick loop", &mut cmd, &work.path().join("ticks.log"));
        Self { process, ids, stop }
    }

    /// How many commits have returned so far (the ids are 1..=n).
    pub fn committed(&self) -> u64 {
        std::fs::read_to_string(&self.ids)
            .unwrap_or_default()
            .lines()
            .count() as u64
    }

    /// Waits until `n` more commits have returned.
    pub fn wait_for_more(&self, n: u64) {
        let before = self.committed();
        crate::wait_until("commits to go through", Duration::from_secs(120), || {
            (self.committed() >= before + n).then_some(())
        });
    }

    /// Stops the loop after its current commit and returns the last committed id.
    pub fn stop(mut self) -> u64 {
        std::fs::write(&self.stop, b"").expect("create the stop file");
        assert_eq!(
            self.process.wait(Duration::from_secs(120)),
            Some(0),
            "the tick loop failed: {}",
            self.process.log()
        );
        self.committed()
    }
}

/// pgbench running in the background against `pg` until its run ends or it is stopped with
/// [`BackgroundProcess::terminate`] (SIGINT only cancels pgbench's query in flight).
pub fn pgbench_in_background(
    pg: &PgServer,
    args: &[&str],
    log: &std::path::Path,
) -> BackgroundProcess {
    let mut cmd: Command = as_postgres(crate::pg_bin("pgbench"));
    cmd.args([
        "-h",
        &pg.socket_dir(),
        "-p",
        &pg.port().to_string(),
        "-U",
        "postgres",
    ])
    .args(args)
    .arg("postgres");
    BackgroundProcess::spawn("pgbench", &mut cmd, log)
}
