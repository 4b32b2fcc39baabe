//! Running external programs (PostgreSQL tools, klio) from tests.

use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Output of a finished command, with everything needed to explain a failure.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// The command line, for messages.
    pub cmdline: String,
}

impl Output {
    /// Whether the command exited with status 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs `start` again while it fails with ETXTBSY. Tests copy the klio executable into their
/// own directory while other test threads fork: a child forked while the copy is still open
/// for writing holds that descriptor until it execs, and executing the copy meanwhile fails
/// with "Text file busy". It clears within milliseconds.
pub(crate) fn retry_text_file_busy<T>(
    mut start: impl FnMut() -> std::io::Result<T>,
) -> std::io::Result<T> {
    const ETXTBSY: i32 = 26;
    let mut tries = 0;
    loop {
        match start() {
            Err(e) if e.raw_os_error() == Some(ETXTBSY) && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// Runs `cmd` to completion and returns its output, whatever the exit status.
pub fn run(cmd: &mut Command) -> Output {
    let cmdline = format!("{cmd:?}");
    let out = retry_text_file_busy(|| cmd.output())
        .unwrap_or_else(|e| panic!("could not run {cmdline}: {e}"));
    Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        cmdline,
    }
}

/// Runs `cmd` and panics with its output unless it exits with status 0.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.success(),
        "{} failed with {:?}\nstdout:\n{}\nstderr:\n{}",
        out.cmdline,
        out.code,
        out.stdout,
        out.stderr
    );
    out
}

/// The uid and gid of `postgres` when this process is root (and so must drop privileges to
/// run PostgreSQL), otherwise `None`.
pub(crate) fn postgres_ids() -> Option<(u32, u32)> {
    static IDS: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    *IDS.get_or_init(|| {
        let uid = run(Command::new("id").arg("-u")).stdout.trim().to_owned();
        if uid != "0" {
            return None;
        }
        let id = |flag: &str| -> u32 {
            let o = run_ok(Command::new("id").args([flag, "postgres"]));
            o.stdout
                .trim()
                .parse()
                .expect("numeric id of the postgres user")
        };
        Some((id("-u"), id("-g")))
    })
}

/// A command that runs `program` as the `postgres` user when the tests run as root.
pub fn as_postgres(program: impl AsRef<std::ffi::OsStr>) -> Command {
    if postgres_ids().is_some() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ]);
        c.arg(program);
        // The environment is inherited (tests pass PG* variables through it); HOME must be
        // one the postgres user may read.
        c.env("HOME", std::env::temp_dir());
        c
    } else {
        Command::new(program)
    }
}

/// Polls `check` every 100 ms until it returns `Some` or `timeout` passes.
pub fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
