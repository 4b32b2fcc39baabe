//! Long-running child processes (WAL receivers, load generators) owned by a test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::command::{run, wait_until};

/// A background process whose output goes to a log file; killed on drop, and its log printed
/// if the test panicked.
#[derive(Debug)]
pub struct BackgroundProcess {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl BackgroundProcess {
    /// Spawns `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Self {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open process log");
        let err = out.try_clone().expect("clone log handle");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = crate::command::retry_text_file_busy(|| cmd.spawn())
            .unwrap_or_else(|e| panic!("could not start {name} ({cmd:?}): {e}"));
        Self {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_owned(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends `signal` (a `kill -s` name such as "INT", "TERM", "KILL").
    pub fn signal(&self, signal: &str) {
        let _ = run(Command::new("kill").args(["-s", signal, &self.pid().to_string()]));
    }

    /// Sends SIGINT and waits for a clean exit; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        self.signal("INT");
        self.wait(Duration::from_secs(60))
    }

    /// Ends the process whatever it is doing: SIGTERM, then SIGKILL if it is still running
    /// after 30 s; reaps it. For load generators: pgbench 15 answers SIGINT by cancelling the
    /// query in flight, which need not end its run.
    pub fn terminate(&mut self) {
        if self.child.is_none() {
            return;
        }
        self.signal("TERM");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if !self.is_running() {
                self.child = None;
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the process to exit by itself and returns its exit code.
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let name = self.name.clone();
        let child = self.child.as_mut()?;
        let status = wait_until(&format!("{name} to exit"), timeout, || {
            child.try_wait().ok().flatten()
        });
        self.child = None;
        status.code()
    }
}

impl Drop for BackgroundProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<_> = log.lines().collect();
            eprintln!(
                "---- {} log ({}) ----\n{}\n---- end of log ----",
                self.name,
                self.log.display(),
                lines[lines.len().saturating_sub(100)..].join("\n")
            );
        }
        self.kill9();
    }
}
