//! Recovery speed: PostgreSQL replaying the same WAL with `restore_command = 'klio get-wal
//! ...'` from the Klio server, with prefetching and without (`--prefetch 0`: one process and
//! one connection per file, on PostgreSQL's critical path), against `cp` from a local
//! directory (the floor), taking turns in one run.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::setup::KlioStreaming;
use klio_testkit::{as_postgres, run_ok};

/// What to run.
#[derive(Clone, Debug)]
pub struct RecoveryOptions {
    /// Rounds; each recovers once with each contender.
    pub rounds: u32,
    /// WAL to generate and recover, in MiB.
    pub wal_mib: u64,
}

/// One recovery.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RecoverySample {
    /// [`CP`], [`KLIO`] or [`KLIO_NO_PREFETCH`].
    pub contender: &'static str,
    /// Round number.
    pub round: u32,
    /// From starting PostgreSQL to the end of recovery.
    pub seconds: f64,
}

/// Every recovery and the ratios of mean times (klio / cp).
#[derive(Clone, Debug, serde::Serialize)]
pub struct RecoveryReport {
    /// WAL replayed, in bytes.
    pub wal_bytes: u64,
    /// Every run, in order.
    pub samples: Vec<RecoverySample>,
}

impl RecoveryReport {
    /// Mean seconds of contender `c` ([`CP`], [`KLIO`] or [`KLIO_NO_PREFETCH`]).
    pub fn mean(&self, c: &str) -> f64 {
        let v: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.contender == c)
            .map(|s| s.seconds)
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    }

    /// Mean recovery time with get-wal (prefetching) over mean time with cp.
    pub fn ratio(&self) -> f64 {
        self.ratio_of(KLIO)
    }

    /// Mean recovery time of contender `c` over mean time with cp.
    pub fn ratio_of(&self, c: &str) -> f64 {
        self.mean(c) / self.mean(CP)
    }

    /// A markdown table.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "WAL replayed: {:.0} MiB\n\n| round | restore_command | seconds | MiB/s |\n|---|---|---|---|\n",
            self.wal_bytes as f64 / 1048576.0
        );
        for x in &self.samples {
            s += &format!(
                "| {} | {} | {:.2} | {:.0} |\n",
                x.round,
                x.contender,
                x.seconds,
                self.wal_bytes as f64 / 1048576.0 / x.seconds
            );
        }
        s += &format!(
            "\nmean seconds: cp {:.2}, {KLIO} {:.2}, {KLIO_NO_PREFETCH} {:.2}; ratios to cp: \
             prefetch {:.3}, no prefetch {:.3}\n",
            self.mean(CP),
            self.mean(KLIO),
            self.mean(KLIO_NO_PREFETCH),
            self.ratio(),
            self.ratio_of(KLIO_NO_PREFETCH)
        );
        s
    }
}

/// The Klio contender, prefetching (the default).
pub const KLIO: &str = "klio get-wal";
/// Klio without prefetching: every file fetched by the call PostgreSQL waits for.
pub const KLIO_NO_PREFETCH: &str = "klio get-wal --prefetch 0";
/// The floor: `cp` from a local directory.
pub const CP: &str = "cp";

/// Runs the comparison with the `klio` binary at `klio`.
pub fn run(klio: &Path, opts: &RecoveryOptions) -> RecoveryReport {
    // Declared in this order so that they drop as a deployment stops: send-wal, the
    // server, then the files, then PostgreSQL.
    let KlioStreaming {
        mut pg,
        work,
        exe,
        certs,
        server,
        mut client,
    } = KlioStreaming::start(
        klio,
        "bench-recovery",
        &[
            "max_wal_size = 8GB",
            "checkpoint_timeout = 1h",
            "shared_buffers = 256MB",
        ],
        false,
    );
    pg.wait_for_flush("klio", &pg.current_lsn());
    let backup = work.path().join("backup");
    pg.base_backup_without_wal(&backup);
    let start = pg.current_lsn();

    crate::setup::generate_wal(&pg, &start, opts.wal_mib, 20);
    pg.switch_wal();
    let end = pg.current_lsn();
    pg.wait_for_flush("klio", &end);
    let wal_bytes = crate::setup::wal_bytes(&pg, &start, &end);
    client.stop();
    pg.stop();

    // The floor: the same WAL as plain files in a local directory.
    let local = work.subdir("local-wal");
    for e in std::fs::read_dir(server.wal_dir("bench")).expect("read the archive") {
        let p = e.expect("entry").path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.len() == 24 || name.ends_with(".history") {
            std::fs::copy(&p, local.join(name)).expect("copy a segment");
        }
    }
    run_ok(
        std::process::Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&local),
    );

    let mut samples = Vec::new();
    for round in 0..opts.rounds {
        let mut order = [CP, KLIO, KLIO_NO_PREFETCH];
        // Each contender goes first in some round (caches, disk write-back).
        order.rotate_left(round as usize % 3);
        for contender in order {
            pg.replace_data_with_backup(&backup);
            if contender == CP {
                pg.configure_archive_recovery(&format!("cp {}/%f %p", local.display()));
            } else {
                let prefetch = if contender == KLIO { "8" } else { "0" };
                run_ok(
                    as_postgres(&exe)
                        .arg("prepare-recovery")
                        .arg("-D")
                        .arg(pg.data_dir())
                        .args(server.client_args(&certs, "bench"))
                        .args(["--prefetch", prefetch]),
                );
            }
            let t = Instant::now();
            pg.start_and_finish_recovery();
            let seconds = t.elapsed().as_secs_f64();
            eprintln!("round {round}: {contender} {seconds:.2} s");
            samples.push(RecoverySample {
                contender,
                round,
                seconds,
            });
            pg.stop();
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    RecoveryReport { wal_bytes, samples }
}
