//! Many clusters on one server: `klio wal-player play` of the same 1 MiB segments with 1, 16,
//! 64 and 256 concurrent streams (one cluster each, a consecutive run of the segments each)
//! into one Klio server (lz4 + AES-256-GCM at
//! rest), with the server's resident memory sampled every 100 ms (`VmRSS`) and its peak
//! (`VmHWM`), the throughput, and each cluster's acknowledgement latency from the server's
//! `klio_wal_ack_latency_seconds` histogram.
//!
//! Each stream count gets a server of its own, so that its peak is its own. The figure to
//! hold is the peak at 256 streams against the goal of [`RSS_GOAL_MIB`]; the throughput is
//! shown against the single stream's (the ratio), and the ack latency as the spread of the
//! per-cluster p99 (median and worst cluster): how evenly the server serves its clusters.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use klio_testkit::{KlioServer, TestCerts, TestDir, run_ok};
use serde::Serialize;

/// The resident memory the server is given for 256 streams.
pub const RSS_GOAL_MIB: f64 = 256.0;

/// What to run.
#[derive(Clone, Debug)]
pub struct StreamsOptions {
    /// Concurrent streams (wal-player `--jobs`), one run each.
    pub jobs: Vec<usize>,
    /// 1 MiB segments played in each run, shared out among its streams.
    pub files: usize,
    /// wal-player `--block-size`, KiB.
    pub block_kib: usize,
    /// Extra `klio server start` flags (for example `--ingest-memory 64MiB`).
    pub server_args: Vec<String>,
}

impl Default for StreamsOptions {
    fn default() -> Self {
        Self {
            jobs: vec![1, 16, 64, 256],
            files: 1024,
            block_kib: crate::setup::PLAYER_BLOCK_KIB,
            server_args: Vec::new(),
        }
    }
}

/// One run.
#[derive(Clone, Debug, Serialize)]
pub struct StreamsSample {
    /// Concurrent streams.
    pub jobs: usize,
    /// Files that failed (the server did not keep up: handshakes or idle timeouts).
    pub errors: u64,
    /// MB/s of WAL acknowledged (10^6 bytes).
    pub mb_per_s: f64,
    /// The server's peak resident memory (VmHWM), MiB.
    pub peak_rss_mib: f64,
    /// The median of the 100 ms samples of VmRSS while playing, MiB.
    pub rss_p50_mib: f64,
    /// Per-file latency (first byte sent to durable), p50 and p99, ms.
    pub file_p50_ms: f64,
    /// See `file_p50_ms`.
    pub file_p99_ms: f64,
    /// The median over clusters of each cluster's ack latency p99 (histogram bucket bound), ms.
    pub ack_p99_median_ms: f64,
    /// The worst cluster's ack latency p99, ms.
    pub ack_p99_max_ms: f64,
}

/// Every run.
#[derive(Clone, Debug, Serialize)]
pub struct StreamsReport {
    /// 1 MiB segments per run.
    pub files: usize,
    /// Extra server flags used.
    pub server_args: Vec<String>,
    /// One per stream count.
    pub samples: Vec<StreamsSample>,
}

impl StreamsReport {
    /// The sample of the largest stream count.
    pub fn widest(&self) -> Option<&StreamsSample> {
        self.samples.iter().max_by_key(|s| s.jobs)
    }

    /// Throughput of `s` against the single stream's (or the narrowest run's).
    pub fn scaling(&self, s: &StreamsSample) -> f64 {
        let base = self.samples.iter().min_by_key(|s| s.jobs);
        base.map_or(0.0, |b| s.mb_per_s / b.mb_per_s)
    }

    /// A markdown table.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "{} segments of 1 MiB per run, shared out among its streams, one cluster per \
             stream{}; goal: peak RSS ≤ {RSS_GOAL_MIB:.0} MiB at 256 streams\n\n\
             | streams | failed files | MB/s | vs fewest | peak RSS MiB | RSS p50 MiB | file p50 ms \
             | file p99 ms | ack p99, median cluster ms | ack p99, worst cluster ms |\n\
             |---|---|---|---|---|---|---|---|---|---|\n",
            self.files,
            if self.server_args.is_empty() {
                String::new()
            } else {
                format!(", server {}", self.server_args.join(" "))
            }
        );
        for s in &self.samples {
            out += &format!(
                "| {} | {} | {:.0} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} |\n",
                s.jobs,
                s.errors,
                s.mb_per_s,
                self.scaling(s),
                s.peak_rss_mib,
                s.rss_p50_mib,
                s.file_p50_ms,
                s.file_p99_ms,
                s.ack_p99_median_ms,
                s.ack_p99_max_ms
            );
        }
        out
    }
}

/// Runs every stream count with the `klio` binary at `klio`.
pub fn run(klio: &Path, opts: &StreamsOptions) -> StreamsReport {
    let work = TestDir::new("bench-streams");
    let exe = work.install_exe(klio);
    let all = work.subdir("wal");
    run_ok(
        Command::new(&exe)
            .args(["-q", "wal-player", "generate"])
            .arg(&all)
            .args(["--wal-size", "1", "--length"])
            .arg(opts.files.to_string()),
    );
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&all)
        .expect("read WAL dir")
        .map(|e| e.expect("entry").path())
        .collect();
    segments.sort();
    let mut samples = Vec::new();
    for &jobs in &opts.jobs {
        let sample = run_one(&exe, &segments, jobs, opts);
        eprintln!(
            "streams, {jobs} stream(s): {:.0} MB/s, peak RSS {:.0} MiB",
            sample.mb_per_s, sample.peak_rss_mib
        );
        samples.push(sample);
    }
    StreamsReport {
        files: opts.files,
        server_args: opts.server_args.clone(),
        samples,
    }
}

/// One stream count on a server of its own.
fn run_one(exe: &Path, segments: &[PathBuf], jobs: usize, opts: &StreamsOptions) -> StreamsSample {
    let work = TestDir::new(&format!("bench-streams-{jobs}"));
    // Every segment, linked: each job plays a consecutive run of them.
    let wal = work.subdir("wal");
    for s in segments {
        std::fs::hard_link(s, wal.join(s.file_name().expect("name"))).expect("link a segment");
    }
    let clusters: Vec<String> = (1..=jobs).map(|j| format!("s{jobs}-{j}")).collect();
    let names: Vec<&str> = clusters.iter().map(String::as_str).collect();
    let certs = TestCerts::create(exe, &work.subdir("certs"), &names);
    let args: Vec<&std::ffi::OsStr> = opts.server_args.iter().map(|a| a.as_ref()).collect();
    let server = crate::setup::start_encrypted_server_with(exe, &work, &certs, &args);
    let pid = server.pid().expect("server running");

    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut rss = Vec::new();
            while sampling.load(Ordering::SeqCst) {
                if let Some(kib) = status_kib(pid, "VmRSS:") {
                    rss.push(kib);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            rss
        })
    };
    let summary = crate::setup::play(
        exe,
        &server,
        &certs,
        &wal,
        &format!("s{jobs}-{{job}}"),
        jobs,
        opts.block_kib,
    );
    sampling.store(false, Ordering::SeqCst);
    let mut rss = sampler.join().unwrap_or_default();
    rss.sort();
    let peak = status_kib(pid, "VmHWM:").unwrap_or(0);
    let acks = ack_p99_by_cluster(&server);
    let mut p99: Vec<f64> = acks.values().copied().collect();
    p99.sort_by(f64::total_cmp);
    let mib = |kib: u64| kib as f64 / 1024.0;
    StreamsSample {
        jobs,
        errors: summary.errors,
        mb_per_s: summary.mb_per_s,
        peak_rss_mib: mib(peak),
        rss_p50_mib: mib(rss.get(rss.len() / 2).copied().unwrap_or(0)),
        file_p50_ms: summary.p50_ms,
        file_p99_ms: summary.p99_ms,
        ack_p99_median_ms: p99.get(p99.len() / 2).copied().unwrap_or(0.0) * 1e3,
        ack_p99_max_ms: p99.last().copied().unwrap_or(0.0) * 1e3,
    }
}

/// A `/proc/<pid>/status` figure in KiB.
fn status_kib(pid: u32, key: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Each cluster's ack latency p99, in seconds: the bound of the histogram bucket that holds
/// it, from the server's `/metrics`.
fn ack_p99_by_cluster(server: &KlioServer) -> BTreeMap<String, f64> {
    let text = crate::setup::http_get(&server.metrics_address(), "/metrics");
    let mut buckets: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("klio_wal_ack_latency_seconds_bucket{") else {
            continue;
        };
        let Some((labels, count)) = rest.split_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels.split(',').find_map(|kv| {
                kv.strip_prefix(name)
                    .and_then(|v| v.strip_prefix("=\""))
                    .and_then(|v| v.strip_suffix('"'))
            })
        };
        let (Some(cluster), Some(le), Ok(count)) = (label("cluster"), label("le"), count.parse())
        else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap_or(f64::INFINITY)
        };
        buckets
            .entry(cluster.to_owned())
            .or_default()
            .push((le, count));
    }
    buckets
        .into_iter()
        .filter_map(|(cluster, mut b)| {
            b.sort_by(|x, y| x.0.total_cmp(&y.0));
            let total = b.last()?.1;
            let p99 = b.iter().find(|(_, c)| *c >= 0.99 * total)?.0;
            Some((cluster, p99))
        })
        .collect()
}
