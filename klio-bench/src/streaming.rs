//! Streaming cost and lag: `klio send-wal` (+ `klio server`) and `pg_receivewal --synchronous`
//! attached to the same PostgreSQL at the same time, receiving the same pgbench WAL (each round
//! a `pgbench -i` of `scale`, bulk WAL, then `seconds` of OLTP commits). Measures
//! each one's CPU seconds per GB of WAL (client and server processes together) and the flush
//! lag PostgreSQL reports for it in `pg_stat_replication`.
//!
//! Both flush what they receive right away (pg_receivewal with `--synchronous`, Klio always),
//! so that "flushed" means durable for both. Neither is a synchronous standby here: that is
//! [`crate::sync_commit`].

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::setup::BothReceivers;

/// What to run.
#[derive(Clone, Debug)]
pub struct StreamingOptions {
    /// pgbench runs.
    pub rounds: u32,
    /// Seconds per pgbench run.
    pub seconds: u32,
    /// pgbench clients.
    pub clients: u32,
    /// pgbench scale of each round's `pgbench -i` (about 16 MB of WAL per unit).
    pub scale: u32,
}

impl Default for StreamingOptions {
    fn default() -> Self {
        Self {
            rounds: 3,
            seconds: 30,
            clients: 8,
            scale: 20,
        }
    }
}

/// One contender in one pgbench run.
#[derive(Clone, Debug, Serialize)]
pub struct StreamingSample {
    /// `klio` or `pg_receivewal`.
    pub contender: &'static str,
    /// Round number.
    pub round: u32,
    /// WAL streamed, bytes.
    pub wal_bytes: u64,
    /// CPU seconds (user + system) of its processes during the run.
    pub cpu_seconds: f64,
    /// `cpu_seconds` per 10^9 bytes of WAL.
    pub cpu_s_per_gb: f64,
    /// Median `flush_lag` sampled every 100 ms, milliseconds.
    pub flush_lag_p50_ms: f64,
    /// 99th percentile `flush_lag`, milliseconds.
    pub flush_lag_p99_ms: f64,
}

/// Every sample.
#[derive(Clone, Debug, Serialize)]
pub struct StreamingReport {
    /// In order.
    pub samples: Vec<StreamingSample>,
}

const KLIO: &str = "klio";
const PGRW: &str = "pg_receivewal";

impl StreamingReport {
    /// Mean of `f` over `contender`'s samples.
    pub fn mean(&self, contender: &str, f: impl Fn(&StreamingSample) -> f64) -> f64 {
        let v: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.contender == contender)
            .map(f)
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    }

    /// A markdown table.
    pub fn markdown(&self) -> String {
        let mut s = String::from(
            "| round | receiver | WAL MB | CPU s | CPU s/GB | flush lag p50 ms | p99 ms |\n\
             |---|---|---|---|---|---|---|\n",
        );
        for x in &self.samples {
            s += &format!(
                "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
                x.round,
                x.contender,
                x.wal_bytes as f64 / 1e6,
                x.cpu_seconds,
                x.cpu_s_per_gb,
                x.flush_lag_p50_ms,
                x.flush_lag_p99_ms
            );
        }
        s
    }

    /// Ratio of means, klio / pg_receivewal, of `f`.
    pub fn ratio(&self, f: impl Fn(&StreamingSample) -> f64 + Copy) -> f64 {
        self.mean(KLIO, f) / self.mean(PGRW, f)
    }
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat (11 and 12 after the name); Linux reports
    // them in USER_HZ, 100 per second.
    (ticks(11) + ticks(12)) / 100.0
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Runs the comparison with the `klio` binary at `klio`.
pub fn run(klio: &Path, opts: &StreamingOptions) -> StreamingReport {
    let both = BothReceivers::start(klio, "bench-streaming", true);
    let (pg, server, client, pgrw) = (&both.pg, &both.server, &both.klio, &both.pg_receivewal);
    let lsn = pg.current_lsn();
    pg.wait_for_flush(KLIO, &lsn);
    pg.wait_for_flush(PGRW, &lsn);

    let pids = |c: &str| -> Vec<u32> {
        if c == KLIO {
            vec![
                client.pid().expect("send-wal running"),
                server.pid().expect("server running"),
            ]
        } else {
            vec![pgrw.pid()]
        }
    };
    let cpu = |c: &str| pids(c).into_iter().map(cpu_seconds).sum::<f64>();

    let secs = opts.seconds.to_string();
    let clients = opts.clients.to_string();
    let scale = opts.scale.to_string();
    let mut samples = Vec::new();
    for round in 0..opts.rounds {
        let start = pg.current_lsn();
        let cpu0 = [cpu(KLIO), cpu(PGRW)];
        let mut lags: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        std::thread::scope(|s| {
            // Bulk WAL (a fresh pgbench database), then OLTP commits.
            let bench = s.spawn(|| {
                pg.pgbench(&["-i", "-q", "-s", &scale]);
                pg.pgbench(&["-N", "-T", &secs, "-c", &clients, "-j", "2"]);
            });
            while !bench.is_finished() {
                let rows = pg.psql(
                    "SELECT application_name, extract(epoch FROM flush_lag) * 1000 \
                     FROM pg_stat_replication WHERE flush_lag IS NOT NULL",
                );
                for row in rows.lines() {
                    let Some((app, ms)) = row.split_once('|') else {
                        continue;
                    };
                    let Ok(ms) = ms.trim().parse::<f64>() else {
                        continue;
                    };
                    match app {
                        KLIO => lags[0].push(ms),
                        PGRW => lags[1].push(ms),
                        _ => {}
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            bench.join().expect("pgbench thread");
        });
        let end = pg.current_lsn();
        pg.wait_for_flush(KLIO, &end);
        pg.wait_for_flush(PGRW, &end);
        let wal_bytes: u64 = pg
            .psql(&format!(
                "SELECT pg_wal_lsn_diff('{end}', '{start}')::bigint"
            ))
            .parse()
            .unwrap_or(0);
        for (i, contender) in [KLIO, PGRW].into_iter().enumerate() {
            let cpu_seconds = cpu(contender) - cpu0[i];
            let sample = StreamingSample {
                contender,
                round,
                wal_bytes,
                cpu_seconds,
                cpu_s_per_gb: cpu_seconds / (wal_bytes as f64 / 1e9),
                flush_lag_p50_ms: percentile(&mut lags[i], 50.0),
                flush_lag_p99_ms: percentile(&mut lags[i], 99.0),
            };
            eprintln!(
                "streaming round {round}: {contender} {:.0} MB WAL, {:.2} CPU s/GB, flush lag p50 {:.2} ms p99 {:.2} ms ({} samples)",
                wal_bytes as f64 / 1e6,
                sample.cpu_s_per_gb,
                sample.flush_lag_p50_ms,
                sample.flush_lag_p99_ms,
                lags[i].len()
            );
            samples.push(sample);
        }
    }
    StreamingReport { samples }
}
