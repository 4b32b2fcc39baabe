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

use crate::layout::{Layout, Placement};
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
    /// Where the processes run.
    pub layout: Layout,
}

impl Default for StreamingOptions {
    fn default() -> Self {
        Self {
            rounds: 3,
            seconds: 30,
            clients: 8,
            scale: 20,
            layout: Layout::Shared,
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
    /// The same for the bulk phase alone (`pgbench -i`, until both flushed it).
    pub bulk_cpu_s_per_gb: f64,
    /// The same for the commit phase alone (`pgbench -N`: small WAL, a flush per commit).
    pub commit_cpu_s_per_gb: f64,
    /// Median `flush_lag` sampled every 100 ms, milliseconds.
    pub flush_lag_p50_ms: f64,
    /// 99th percentile `flush_lag`, milliseconds.
    pub flush_lag_p99_ms: f64,
    /// Largest queue seen: WAL PostgreSQL had sent but not yet seen flushed, bytes.
    pub queue_max_bytes: u64,
    /// 99th percentile of that queue, bytes.
    pub queue_p99_bytes: u64,
}

/// One sample of a receiver's queue, every 100 ms: what the record of queue depth over time is
/// made of (`queue` in the JSON report).
#[derive(Clone, Debug, Serialize)]
pub struct QueueSample {
    /// `klio` or `pg_receivewal`.
    pub contender: &'static str,
    /// Round number.
    pub round: u32,
    /// Milliseconds since the round began.
    pub at_ms: u64,
    /// `sent_lsn - flush_lsn` in `pg_stat_replication`: sent by the walsender, not yet reported
    /// flushed (TCP buffers, the receiver's buffers, QUIC, the server's read-ahead and batch).
    pub queue_bytes: u64,
    /// `write_lsn - flush_lsn`: received by the receiver, not yet flushed.
    pub received_unflushed_bytes: u64,
    /// `pg_current_wal_lsn() - sent_lsn`: WAL PostgreSQL has written that its walsender has not
    /// sent yet (held back by the receiver's flow control, or the walsender's own pace).
    pub unsent_bytes: u64,
    /// `flush_lag`, milliseconds, when PostgreSQL reports one.
    pub flush_lag_ms: Option<f64>,
}

/// Every sample.
#[derive(Clone, Debug, Serialize)]
pub struct StreamingReport {
    /// Where the processes ran.
    pub layout: Layout,
    /// In order.
    pub samples: Vec<StreamingSample>,
    /// The queue of each receiver over time, every 100 ms of every round.
    pub queue: Vec<QueueSample>,
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
        let mut s = format!("layout: {}\n\n", self.layout.name());
        s.push_str(
            "| round | receiver | WAL MB | CPU s | CPU s/GB | bulk | commits | flush lag p50 ms | \
             p99 ms | queue p99 MB | queue max MB |\n\
             |---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for x in &self.samples {
            s += &format!(
                "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} |\n",
                x.round,
                x.contender,
                x.wal_bytes as f64 / 1e6,
                x.cpu_seconds,
                x.cpu_s_per_gb,
                x.bulk_cpu_s_per_gb,
                x.commit_cpu_s_per_gb,
                x.flush_lag_p50_ms,
                x.flush_lag_p99_ms,
                x.queue_p99_bytes as f64 / 1e6,
                x.queue_max_bytes as f64 / 1e6,
            );
        }
        s
    }

    /// The queue record as CSV: one line per receiver and sample.
    pub fn queue_csv(&self) -> String {
        let mut s = String::from(
            "round,receiver,at_ms,queue_bytes,received_unflushed_bytes,unsent_bytes,flush_lag_ms\n",
        );
        for q in &self.queue {
            s += &format!(
                "{},{},{},{},{},{},{}\n",
                q.round,
                q.contender,
                q.at_ms,
                q.queue_bytes,
                q.received_unflushed_bytes,
                q.unsent_bytes,
                q.flush_lag_ms
                    .map_or_else(String::new, |ms| format!("{ms:.3}"))
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
    let placement = Placement::begin(opts.layout);
    let both = BothReceivers::start(klio, "bench-streaming", true, &placement);
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
    let mut queue = Vec::new();
    for round in 0..opts.rounds {
        let start = pg.current_lsn();
        let cpu0 = [cpu(KLIO), cpu(PGRW)];
        let mut lags: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        let mut queues: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        let began = std::time::Instant::now();
        let (mid, cpu_mid) = std::thread::scope(|s| {
            // Bulk WAL (a fresh pgbench database), then OLTP commits.
            let bench = s.spawn(|| {
                pg.pgbench(&["-i", "-q", "-s", &scale]);
                // The bulk phase ends once both have flushed it: its CPU, apart from the
                // commits'.
                let mid = pg.current_lsn();
                pg.wait_for_flush(KLIO, &mid);
                pg.wait_for_flush(PGRW, &mid);
                let cpu_mid = [cpu(KLIO), cpu(PGRW)];
                pg.pgbench(&["-N", "-T", &secs, "-c", &clients, "-j", "2"]);
                (mid, cpu_mid)
            });
            while !bench.is_finished() {
                let rows = pg.psql(
                    "SELECT application_name, extract(epoch FROM flush_lag) * 1000, \
                     pg_wal_lsn_diff(sent_lsn, flush_lsn)::bigint, \
                     pg_wal_lsn_diff(write_lsn, flush_lsn)::bigint, \
                     pg_wal_lsn_diff(pg_current_wal_lsn(), sent_lsn)::bigint \
                     FROM pg_stat_replication",
                );
                let at_ms = began.elapsed().as_millis() as u64;
                for row in rows.lines() {
                    let cols: Vec<&str> = row.split('|').map(str::trim).collect();
                    let [app, lag, sent, written, unsent] = cols[..] else {
                        continue;
                    };
                    let i = match app {
                        KLIO => 0,
                        PGRW => 1,
                        _ => continue,
                    };
                    let flush_lag_ms = lag.parse::<f64>().ok();
                    if let Some(ms) = flush_lag_ms {
                        lags[i].push(ms);
                    }
                    let bytes = |v: &str| v.parse::<i64>().unwrap_or(0).max(0) as u64;
                    let queue_bytes = bytes(sent);
                    queues[i].push(queue_bytes as f64);
                    queue.push(QueueSample {
                        contender: [KLIO, PGRW][i],
                        round,
                        at_ms,
                        queue_bytes,
                        received_unflushed_bytes: bytes(written),
                        unsent_bytes: bytes(unsent),
                        flush_lag_ms,
                    });
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            bench.join().expect("pgbench thread")
        });
        let end = pg.current_lsn();
        pg.wait_for_flush(KLIO, &end);
        pg.wait_for_flush(PGRW, &end);
        let diff = |to: &str, from: &str| -> u64 {
            pg.psql(&format!("SELECT pg_wal_lsn_diff('{to}', '{from}')::bigint"))
                .parse()
                .unwrap_or(0)
        };
        let wal_bytes = diff(&end, &start);
        let bulk_bytes = diff(&mid, &start);
        for (i, contender) in [KLIO, PGRW].into_iter().enumerate() {
            let cpu_seconds = cpu(contender) - cpu0[i];
            let bulk_cpu = cpu_mid[i] - cpu0[i];
            let commit_cpu = cpu_seconds - bulk_cpu;
            let per_gb = |cpu: f64, bytes: u64| cpu / (bytes.max(1) as f64 / 1e9);
            let sample = StreamingSample {
                contender,
                round,
                wal_bytes,
                cpu_seconds,
                cpu_s_per_gb: per_gb(cpu_seconds, wal_bytes),
                bulk_cpu_s_per_gb: per_gb(bulk_cpu, bulk_bytes),
                commit_cpu_s_per_gb: per_gb(commit_cpu, wal_bytes - bulk_bytes),
                flush_lag_p50_ms: percentile(&mut lags[i], 50.0),
                flush_lag_p99_ms: percentile(&mut lags[i], 99.0),
                queue_max_bytes: percentile(&mut queues[i], 100.0) as u64,
                queue_p99_bytes: percentile(&mut queues[i], 99.0) as u64,
            };
            eprintln!(
                "streaming round {round}: {contender} {:.0} MB WAL, {:.2} CPU s/GB, flush lag p50 {:.2} ms p99 {:.2} ms ({} samples), queue p99 {:.1} MB max {:.1} MB",
                wal_bytes as f64 / 1e6,
                sample.cpu_s_per_gb,
                sample.flush_lag_p50_ms,
                sample.flush_lag_p99_ms,
                lags[i].len(),
                sample.queue_p99_bytes as f64 / 1e6,
                sample.queue_max_bytes as f64 / 1e6,
            );
            samples.push(sample);
        }
    }
    StreamingReport {
        layout: placement.layout(),
        samples,
        queue,
    }
}
