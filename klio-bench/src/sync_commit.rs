//! Synchronous commit throughput: `klio send-wal` + `klio server` against
//! `pg_receivewal --synchronous`, as the synchronous standby of the same PostgreSQL, taking
//! turns (A B B A ...) so that drift of a shared, noisy machine affects both alike.

use std::path::Path;
use std::time::Duration;

use klio_testkit::{PgServer, wait_until};

use crate::setup::BothReceivers;

/// What to run.
#[derive(Clone, Debug)]
pub struct SyncCommitOptions {
    /// Rounds; each runs both contenders once.
    pub rounds: u32,
    /// Seconds per pgbench run.
    pub seconds: u32,
    /// pgbench clients.
    pub clients: u32,
    /// pgbench scale.
    pub scale: u32,
    /// Where the processes run.
    pub layout: crate::layout::Layout,
}

/// One pgbench run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Sample {
    /// `klio` or `pg_receivewal`.
    pub contender: &'static str,
    /// Round number.
    pub round: u32,
    /// Transactions per second.
    pub tps: f64,
}

/// All samples and the ratio of means (klio / pg_receivewal).
#[derive(Clone, Debug, serde::Serialize)]
pub struct SyncCommitReport {
    /// Where the processes ran.
    pub layout: crate::layout::Layout,
    /// Every run, in order.
    pub samples: Vec<Sample>,
    /// Mean TPS with Klio.
    pub klio_mean: f64,
    /// Mean TPS with pg_receivewal.
    pub pg_receivewal_mean: f64,
}

impl SyncCommitReport {
    /// klio / pg_receivewal.
    pub fn ratio(&self) -> f64 {
        self.klio_mean / self.pg_receivewal_mean
    }

    /// A markdown table.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "layout: {}\n\n| round | contender | TPS |\n|---|---|---|\n",
            self.layout.name()
        );
        for x in &self.samples {
            s += &format!("| {} | {} | {:.1} |\n", x.round, x.contender, x.tps);
        }
        s += &format!(
            "\nmean TPS: klio {:.1}, pg_receivewal {:.1}; ratio klio/pg_receivewal = {:.3}\n",
            self.klio_mean,
            self.pg_receivewal_mean,
            self.ratio()
        );
        s
    }
}

fn pgbench_tps(pg: &PgServer, args: &[&str]) -> f64 {
    let out = pg.pgbench(args);
    out.stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("tps = ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or_else(|| panic!("no tps in pgbench output:\n{}", out.stdout))
}

fn make_synchronous(pg: &PgServer, app: &str) {
    pg.set_conf(&format!("synchronous_standby_names = '{app}'"));
    wait_until(
        &format!("{app} to be synchronous"),
        Duration::from_secs(60),
        || {
            let s = pg.psql(&format!(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = '{app}'"
            ));
            (s == "sync").then_some(())
        },
    );
}

/// Runs the comparison with the `klio` binary at `klio`.
pub fn run(klio: &Path, opts: &SyncCommitOptions) -> SyncCommitReport {
    // The server stores plain WAL here: this measures the commit path itself.
    let placement = crate::layout::Placement::begin(opts.layout);
    let both = BothReceivers::start(klio, "bench-sync", false, &placement);
    let pg = &both.pg;
    pg.pgbench(&["-i", "-q", "-s", &opts.scale.to_string()]);

    let secs = opts.seconds.to_string();
    let clients = opts.clients.to_string();
    let args = ["-N", "-T", secs.as_str(), "-c", clients.as_str(), "-j", "2"];
    let mut samples = Vec::new();
    for round in 0..opts.rounds {
        let order: [&'static str; 2] = if round % 2 == 0 {
            ["klio", "pg_receivewal"]
        } else {
            ["pg_receivewal", "klio"]
        };
        for contender in order {
            make_synchronous(pg, contender);
            let tps = pgbench_tps(pg, &args);
            eprintln!("round {round}: {contender} {tps:.1} TPS");
            samples.push(Sample {
                contender,
                round,
                tps,
            });
        }
    }
    let mean = |c: &str| {
        let v: Vec<f64> = samples
            .iter()
            .filter(|s| s.contender == c)
            .map(|s| s.tps)
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    SyncCommitReport {
        layout: placement.layout(),
        klio_mean: mean("klio"),
        pg_receivewal_mean: mean("pg_receivewal"),
        samples,
    }
}
