//! Where the processes of a run are placed on the machine's cores.
//!
//! `shared`: every process may run on every core (the kernel schedules them), which on a small
//! machine makes PostgreSQL, pgbench and both receivers compete for the same cores.
//! `pinned`: a real deployment's split. The receivers (the Klio server and pg_receivewal, which
//! run on a backup host) get the last core to themselves; PostgreSQL, pgbench and `klio
//! send-wal` (which runs next to PostgreSQL) the others. Pinning is done with `taskset`: the
//! bench pins itself to the database cores before it starts anything, so that every process it
//! starts inherits them, then moves the receivers (every thread) to the receiver core.

use std::process::Command;

use serde::Serialize;

/// How processes are placed on cores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// No pinning.
    #[default]
    Shared,
    /// The receivers on the last core, everything else on the others.
    Pinned,
}

impl Layout {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Shared => "shared",
            Self::Pinned => "pinned",
        }
    }
}

/// The cores of a pinned run, or `None` when the machine has a single core.
fn cores() -> Option<(String, String)> {
    let n = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    (n >= 2).then(|| {
        let db = if n == 2 {
            "0".to_owned()
        } else {
            format!("0-{}", n - 2)
        };
        (db, (n - 1).to_string())
    })
}

/// Places processes for one run; restores the bench's own placement when dropped.
#[derive(Debug)]
pub struct Placement {
    layout: Layout,
    receiver_core: Option<String>,
}

impl Placement {
    /// Pins the bench itself (and so everything it starts from now on) to the database cores
    /// when `layout` is pinned.
    pub fn begin(layout: Layout) -> Self {
        let (db, receiver) = match (layout, cores()) {
            (Layout::Pinned, Some(c)) => c,
            (Layout::Pinned, None) => {
                eprintln!("layout pinned: the machine has one core; running unpinned");
                return Self {
                    layout: Layout::Shared,
                    receiver_core: None,
                };
            }
            (Layout::Shared, _) => {
                return Self {
                    layout,
                    receiver_core: None,
                };
            }
        };
        taskset(&db, std::process::id());
        Self {
            layout,
            receiver_core: Some(receiver),
        }
    }

    /// The layout in effect.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Moves a receiver process (every thread of it) to the receiver core.
    pub fn receiver(&self, pid: u32) {
        if let Some(core) = &self.receiver_core {
            taskset(core, pid);
        }
    }
}

impl Drop for Placement {
    fn drop(&mut self) {
        if self.receiver_core.is_some() {
            let n = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
            taskset(&format!("0-{}", n - 1), std::process::id());
        }
    }
}

/// `taskset -a -p -c <cores> <pid>`; a failure is reported and the run goes on unpinned.
fn taskset(cores: &str, pid: u32) {
    let out = Command::new("taskset")
        .args(["-a", "-p", "-c", cores, &pid.to_string()])
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!(
            "taskset -c {cores} for pid {pid} failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => eprintln!("taskset not available ({e}); the run is not pinned"),
    }
}
