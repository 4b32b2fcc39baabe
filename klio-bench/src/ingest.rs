//! Ingest: the same 16 MiB segments pushed by `klio wal-player play` into a Klio server (lz4 +
//! AES-256-GCM at rest), by pgBackRest `archive-push` (async, posix repository, lz4), and
//! written by the disk alone (fsync per file), at the same parallelism, taking turns.
//!
//! pgBackRest is driven the way PostgreSQL's archiver drives it: segments sit in a (stopped)
//! cluster's `pg_wal` with `.ready` files, and `archive-push` is called once per segment, in
//! order; in async mode the first call starts `process-max` workers that push ahead. The last
//! call returns once every segment is in the repository.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use klio_testkit::{PgOptions, PgServer, TestCerts, TestDir, as_postgres, run_ok};
use klio_wal::synth::{SynthConfig, SyntheticWal};
use klio_wal::{Lsn, SegmentSize};
use serde::Serialize;

use crate::machine::fsync_write_mb_s;

/// What to run.
#[derive(Clone, Debug)]
pub struct IngestOptions {
    /// Rounds; each runs every contender at every parallelism once.
    pub rounds: u32,
    /// 16 MiB segments per run.
    pub files: usize,
    /// Parallelism settings (wal-player `--jobs`, pgBackRest `process-max`, writer threads).
    pub jobs: Vec<usize>,
}

impl Default for IngestOptions {
    fn default() -> Self {
        Self {
            rounds: 2,
            files: 64,
            jobs: vec![1, 2, 4],
        }
    }
}

/// The contenders.
pub const DISK: &str = "disk (fsync per file)";
/// Klio.
pub const KLIO: &str = "klio wal-player play";
/// pgBackRest.
pub const PGBACKREST: &str = "pgBackRest archive-push";

/// One run.
#[derive(Clone, Debug, Serialize)]
pub struct IngestSample {
    /// Which contender.
    pub contender: &'static str,
    /// Parallelism.
    pub jobs: usize,
    /// Round number.
    pub round: u32,
    /// MB/s of WAL (10^6 bytes, uncompressed).
    pub mb_per_s: f64,
    /// Per-file latency p50 (Klio only), milliseconds.
    pub p50_ms: Option<f64>,
    /// Per-file latency p99 (Klio only), milliseconds.
    pub p99_ms: Option<f64>,
}

/// Every run.
#[derive(Clone, Debug, Serialize)]
pub struct IngestReport {
    /// Bytes of WAL per run.
    pub wal_bytes: u64,
    /// Every run, in order.
    pub samples: Vec<IngestSample>,
}

impl IngestReport {
    /// Mean MB/s of `contender` at `jobs`.
    pub fn mean(&self, contender: &str, jobs: usize) -> f64 {
        let v: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.contender == contender && s.jobs == jobs)
            .map(|s| s.mb_per_s)
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    }

    /// The parallelism settings run.
    pub fn jobs(&self) -> Vec<usize> {
        let mut j: Vec<usize> = self.samples.iter().map(|s| s.jobs).collect();
        j.sort();
        j.dedup();
        j
    }

    /// A markdown table of means and ratios.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "{:.0} MiB of WAL per run (16 MiB segments); MB/s, mean of rounds\n\n\
             | jobs | klio | disk | pgBackRest | klio/disk | klio/pgBackRest |\n|---|---|---|---|---|---|\n",
            self.wal_bytes as f64 / 1048576.0
        );
        for j in self.jobs() {
            let (k, d, p) = (
                self.mean(KLIO, j),
                self.mean(DISK, j),
                self.mean(PGBACKREST, j),
            );
            s += &format!(
                "| {j} | {k:.0} | {d:.0} | {p:.0} | {:.2} | {:.2} |\n",
                k / d,
                k / p
            );
        }
        s
    }
}

/// Runs the comparison with the `klio` binary at `klio`. Needs `pgbackrest` on the PATH.
pub fn run(klio: &Path, opts: &IngestOptions) -> IngestReport {
    let work = TestDir::new("bench-ingest");
    let exe = work.install_exe(klio);

    // A real (stopped) cluster: pgBackRest reads its pg_control, and checks that the segments
    // carry its system identifier.
    let mut pg = PgServer::start(PgOptions::default());
    let system_id: u64 = pg
        .psql("SELECT system_identifier FROM pg_control_system()")
        .parse()
        .expect("system identifier");
    pg.stop();

    let size = SegmentSize::new(16 << 20).expect("16 MiB");
    let wal = work.subdir("wal");
    // Far after initdb's own segments in pg_wal.
    let start = Lsn(0x100 * size.bytes_u64());
    SyntheticWal::new(SynthConfig {
        system_id,
        start,
        segments: opts.files as u64,
        ..SynthConfig::new(size)
    })
    .expect("synthetic WAL")
    .write_to_dir(&wal)
    .expect("write synthetic WAL");
    chown_postgres(&wal);
    let wal_bytes = opts.files as u64 * size.bytes_u64();
    let sample_data = std::fs::read(
        std::fs::read_dir(&wal)
            .expect("read WAL dir")
            .next()
            .expect("a segment")
            .expect("entry")
            .path(),
    )
    .expect("read a segment");

    let mut clusters = Vec::new();
    for round in 0..opts.rounds {
        for &jobs in &opts.jobs {
            for job in 1..=jobs {
                clusters.push(format!("r{round}j{jobs}-{job}"));
            }
        }
    }
    let names: Vec<&str> = clusters.iter().map(String::as_str).collect();
    let certs = TestCerts::create(&exe, &work.subdir("certs"), &names);
    let server = crate::setup::start_encrypted_server(&exe, &work, &certs);

    let mut samples = Vec::new();
    for round in 0..opts.rounds {
        for &jobs in &opts.jobs {
            let mut order = [DISK, KLIO, PGBACKREST];
            if round % 2 == 1 {
                order.reverse();
            }
            for contender in order {
                let sample = match contender {
                    DISK => IngestSample {
                        contender,
                        jobs,
                        round,
                        mb_per_s: fsync_write_mb_s(work.path(), &sample_data, opts.files, jobs),
                        p50_ms: None,
                        p99_ms: None,
                    },
                    KLIO => {
                        let cluster = format!("r{round}j{jobs}-{{job}}");
                        let played = crate::setup::play(
                            &exe,
                            &server,
                            &certs,
                            &wal,
                            &cluster,
                            jobs,
                            crate::setup::PLAYER_BLOCK_KIB,
                        );
                        assert_eq!(played.errors, 0, "wal-player reported errors");
                        IngestSample {
                            contender,
                            jobs,
                            round,
                            mb_per_s: played.mb_per_s,
                            p50_ms: Some(played.p50_ms),
                            p99_ms: Some(played.p99_ms),
                        }
                    }
                    _ => IngestSample {
                        contender,
                        jobs,
                        round,
                        mb_per_s: pgbackrest(&work, &pg.data_dir(), &wal, jobs, round, wal_bytes),
                        p50_ms: None,
                        p99_ms: None,
                    },
                };
                eprintln!(
                    "ingest round {round}, {jobs} job(s): {contender} {:.0} MB/s",
                    sample.mb_per_s
                );
                samples.push(sample);
            }
        }
    }
    IngestReport { wal_bytes, samples }
}

fn chown_postgres(path: &Path) {
    run_ok(
        Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(path),
    );
}

/// One archive-push run into a new repository; MB/s.
fn pgbackrest(
    work: &TestDir,
    pgdata: &Path,
    wal: &Path,
    jobs: usize,
    round: u32,
    wal_bytes: u64,
) -> f64 {
    let base = work.subdir(&format!("pgbackrest-r{round}j{jobs}"));
    let conf = base.join("pgbackrest.conf");
    std::fs::write(
        &conf,
        format!(
            "[global]\nrepo1-path={b}/repo\nspool-path={b}/spool\nlock-path={b}/lock\n\
             log-path={b}/log\nlog-level-console=warn\nlog-level-file=off\narchive-async=y\n\
             process-max={jobs}\ncompress-type=lz4\n\n[bench]\npg1-path={pg}\n",
            b = base.display(),
            pg = pgdata.display()
        ),
    )
    .expect("write pgbackrest.conf");
    // Only this run's segments in pg_wal, each marked ready, as the archiver would see them.
    let pg_wal = pgdata.join("pg_wal");
    let status = pg_wal.join("archive_status");
    for e in std::fs::read_dir(&status).expect("archive_status") {
        let _ = std::fs::remove_file(e.expect("entry").path());
    }
    let mut segments: Vec<PathBuf> = std::fs::read_dir(wal)
        .expect("read WAL dir")
        .map(|e| e.expect("entry").path())
        .collect();
    segments.sort();
    for s in &segments {
        let name = s.file_name().expect("name");
        let link = pg_wal.join(name);
        let _ = std::fs::remove_file(&link);
        std::fs::hard_link(s, &link).expect("link a segment into pg_wal");
        std::fs::write(
            status.join(format!("{}.ready", name.to_string_lossy())),
            b"",
        )
        .expect("mark ready");
    }
    chown_postgres(&base);
    chown_postgres(&pg_wal);
    let pgbr = |args: &[&str]| {
        let mut c = as_postgres("pgbackrest");
        c.arg(format!("--config={}", conf.display()))
            .arg("--stanza=bench")
            .args(args);
        c
    };
    run_ok(&mut pgbr(&["--no-online", "stanza-create"]));
    let t = Instant::now();
    for s in &segments {
        let path = pg_wal.join(s.file_name().expect("name"));
        run_ok(&mut pgbr(&["archive-push", &path.to_string_lossy()]));
    }
    let secs = t.elapsed().as_secs_f64();
    for s in &segments {
        let _ = std::fs::remove_file(pg_wal.join(s.file_name().expect("name")));
    }
    let _ = std::fs::remove_dir_all(&base);
    wal_bytes as f64 / 1e6 / secs
}
