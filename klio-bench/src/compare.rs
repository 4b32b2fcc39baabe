//! The whole comparison in one run: machine, ingest, streaming, synchronous commit, recovery,
//! archive scale, many streams, base backups and restores;
//! written as `results.md` and `results.json`.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::archive_scale::{self, ArchiveScaleOptions, ArchiveScaleReport};
use crate::backup::{self, BackupOptions, BackupReport};
use crate::ingest::{self, IngestOptions, IngestReport};
use crate::layout::Layout;
use crate::machine::Machine;
use crate::recovery::{self, RecoveryOptions, RecoveryReport};
use crate::streaming::{self, StreamingOptions, StreamingReport};
use crate::streams::{self, StreamsOptions, StreamsReport};
use crate::sync_commit::{self, SyncCommitOptions, SyncCommitReport};

/// What to run.
#[derive(Clone, Debug)]
pub struct CompareOptions {
    /// Ingest settings.
    pub ingest: IngestOptions,
    /// Streaming settings.
    pub streaming: StreamingOptions,
    /// Synchronous commit settings.
    pub sync_commit: SyncCommitOptions,
    /// Recovery settings.
    pub recovery: RecoveryOptions,
    /// Archive scale settings.
    pub archive_scale: ArchiveScaleOptions,
    /// Many-streams settings.
    pub streams: StreamsOptions,
    /// Base backup settings.
    pub backup: BackupOptions,
}

impl CompareOptions {
    /// The full run (about 30 minutes on 2 cores).
    pub fn full() -> Self {
        Self {
            ingest: IngestOptions::default(),
            streaming: StreamingOptions::default(),
            sync_commit: SyncCommitOptions {
                rounds: 3,
                seconds: 20,
                clients: 8,
                scale: 10,
                layout: Layout::Shared,
            },
            recovery: RecoveryOptions {
                rounds: 2,
                wal_mib: 1024,
            },
            archive_scale: ArchiveScaleOptions::default(),
            streams: StreamsOptions::default(),
            // 1.5 GiB: the 5 GiB figures come from `klio-bench backup --scale 350`.
            backup: BackupOptions {
                rounds: 1,
                scale: 100,
                change_seconds: 60,
                compress: "lz4".to_owned(),
            },
        }
    }

    /// A short run that checks the harness works (a few minutes; numbers are noisy).
    pub fn quick() -> Self {
        Self {
            ingest: IngestOptions {
                rounds: 1,
                files: 8,
                jobs: vec![1, 2],
            },
            streaming: StreamingOptions {
                rounds: 1,
                seconds: 5,
                clients: 4,
                scale: 2,
                layout: Layout::Shared,
            },
            sync_commit: SyncCommitOptions {
                rounds: 1,
                seconds: 5,
                clients: 4,
                scale: 2,
                layout: Layout::Shared,
            },
            recovery: RecoveryOptions {
                rounds: 1,
                wal_mib: 64,
            },
            archive_scale: ArchiveScaleOptions::quick(),
            streams: StreamsOptions {
                jobs: vec![1, 32],
                files: 64,
                ..StreamsOptions::default()
            },
            backup: BackupOptions {
                rounds: 1,
                scale: 5,
                change_seconds: 5,
                compress: "lz4".to_owned(),
            },
        }
    }
}

/// Everything measured.
#[derive(Clone, Debug, Serialize)]
pub struct CompareReport {
    /// When (RFC 3339) and with which klio version.
    pub started: String,
    /// `klio --version`.
    pub klio_version: String,
    /// `pgbackrest version`.
    pub pgbackrest_version: String,
    /// The machine.
    pub machine: Machine,
    /// 1. Ingest.
    pub ingest: IngestReport,
    /// 2. Streaming, in each layout.
    pub streaming: Vec<StreamingReport>,
    /// 3. Synchronous commit, in each layout.
    pub sync_commit: Vec<SyncCommitReport>,
    /// 4. Recovery.
    pub recovery: RecoveryReport,
    /// 5. Archive scale (or why it could not be measured).
    pub archive_scale: Result<ArchiveScaleReport, String>,
    /// 6. Many streams.
    pub streams: StreamsReport,
    /// 7. Base backups and restores.
    pub backup: BackupReport,
}

fn version(cmd: &mut std::process::Command) -> String {
    cmd.output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "not found".to_owned())
}

/// Runs everything with the `klio` binary at `klio`, measuring the disk under `scratch`.
pub fn run(klio: &Path, scratch: &Path, opts: &CompareOptions) -> CompareReport {
    let started = humantime_now();
    let machine = Machine::describe(scratch);
    eprintln!("{}", machine.markdown());
    let ingest = ingest::run(klio, &opts.ingest);
    // Both layouts: every process on every core, and the receivers on a core of their own.
    let layouts = [Layout::Shared, Layout::Pinned];
    let streaming = layouts
        .map(|layout| {
            let o = StreamingOptions {
                layout,
                ..opts.streaming.clone()
            };
            streaming::run(klio, &o)
        })
        .to_vec();
    let sync_commit = layouts
        .map(|layout| {
            let o = SyncCommitOptions {
                layout,
                ..opts.sync_commit.clone()
            };
            sync_commit::run(klio, &o)
        })
        .to_vec();
    let recovery = recovery::run(klio, &opts.recovery);
    let archive_scale = archive_scale::run(klio, &opts.archive_scale)
        .map_err(|e| klio_wal::ErrorChain(&e).to_string());
    let streams = streams::run(klio, &opts.streams);
    let backup = backup::run(klio, &opts.backup);
    CompareReport {
        started,
        klio_version: version(std::process::Command::new(klio).arg("--version")),
        pgbackrest_version: version(std::process::Command::new("pgbackrest").arg("version")),
        machine,
        ingest,
        streaming,
        sync_commit,
        recovery,
        archive_scale,
        streams,
        backup,
    }
}

fn humantime_now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

impl CompareReport {
    /// The summary table of ratios, then each section's details.
    pub fn markdown(&self) -> String {
        let i = &self.ingest;
        let mut out = format!(
            "# Klio comparison run\n\n{} ({}), {}\n\n{}\n## Summary (ratios: Klio / reference)\n\n\
             | comparison | Klio | reference | ratio |\n|---|---|---|---|\n",
            self.klio_version,
            self.pgbackrest_version,
            self.started,
            self.machine.markdown()
        );
        for j in i.jobs() {
            let k = i.mean(ingest::KLIO, j);
            out += &format!(
                "| ingest, {j} job(s), MB/s | {k:.0} | disk fsync write {:.0} | {:.2} |\n",
                i.mean(ingest::DISK, j),
                k / i.mean(ingest::DISK, j)
            );
            out += &format!(
                "| ingest, {j} job(s), MB/s | {k:.0} | pgBackRest archive-push {:.0} | {:.2} |\n",
                i.mean(ingest::PGBACKREST, j),
                k / i.mean(ingest::PGBACKREST, j)
            );
        }
        let cpu = |x: &streaming::StreamingSample| x.cpu_s_per_gb;
        let bulk = |x: &streaming::StreamingSample| x.bulk_cpu_s_per_gb;
        let commits = |x: &streaming::StreamingSample| x.commit_cpu_s_per_gb;
        let p50 = |x: &streaming::StreamingSample| x.flush_lag_p50_ms;
        let p99 = |x: &streaming::StreamingSample| x.flush_lag_p99_ms;
        for s in &self.streaming {
            let layout = s.layout.name();
            for (what, f) in [
                ("streaming CPU s per GB of WAL", &cpu as &dyn Fn(&_) -> f64),
                ("  of which bulk load (pgbench -i)", &bulk),
                ("  of which commits (pgbench -N)", &commits),
                ("streaming flush lag p50, ms", &p50),
                ("streaming flush lag p99, ms", &p99),
            ] {
                out += &format!(
                    "| {what} ({layout}) | {:.2} | pg_receivewal --synchronous {:.2} | {:.2} |\n",
                    s.mean("klio", f),
                    s.mean("pg_receivewal", f),
                    s.mean("klio", f) / s.mean("pg_receivewal", f)
                );
            }
        }
        for c in &self.sync_commit {
            out += &format!(
                "| synchronous commit, pgbench TPS ({}) | {:.0} | pg_receivewal --synchronous {:.0} | {:.2} |\n",
                c.layout.name(),
                c.klio_mean,
                c.pg_receivewal_mean,
                c.ratio()
            );
        }
        for (contender, how) in [
            (recovery::KLIO, "prefetching"),
            (recovery::KLIO_NO_PREFETCH, "without prefetch"),
        ] {
            out += &format!(
                "| recovery of {:.0} MiB {how}, seconds | {:.2} | cp from a local directory {:.2} | {:.2} |\n",
                self.recovery.wal_bytes as f64 / 1048576.0,
                self.recovery.mean(contender),
                self.recovery.mean(recovery::CP),
                self.recovery.ratio_of(contender)
            );
        }
        if let Ok(a) = &self.archive_scale {
            out += &a.summary_rows();
        }
        if let Some(w) = self.streams.widest() {
            out += &format!(
                "| {} streams, server peak RSS MiB | {:.0} | goal {:.0} | {:.2} |\n",
                w.jobs,
                w.peak_rss_mib,
                streams::RSS_GOAL_MIB,
                w.peak_rss_mib / streams::RSS_GOAL_MIB
            );
            out += &format!(
                "| {} streams, MB/s | {:.0} | fewest streams | {:.2} |\n",
                w.jobs,
                w.mb_per_s,
                self.streams.scaling(w)
            );
        }
        out += &self.backup.summary_rows();
        out += "\n## 1. Ingest\n\n";
        out += &i.markdown();
        out +=
            "\n| round | jobs | contender | MB/s | p50 ms | p99 ms |\n|---|---|---|---|---|---|\n";
        for x in &i.samples {
            let ms = |v: Option<f64>| v.map_or_else(|| "".to_owned(), |v| format!("{v:.0}"));
            out += &format!(
                "| {} | {} | {} | {:.0} | {} | {} |\n",
                x.round,
                x.jobs,
                x.contender,
                x.mb_per_s,
                ms(x.p50_ms),
                ms(x.p99_ms)
            );
        }
        out += "\n## 2. Streaming (both attached to the same pgbench run)\n\n";
        for s in &self.streaming {
            out += &s.markdown();
            out += "\n";
        }
        out += "\n## 3. Synchronous commit\n\n";
        for c in &self.sync_commit {
            out += &c.markdown();
            out += "\n";
        }
        out += "\n## 4. Recovery\n\n";
        out += &self.recovery.markdown();
        out += "\n## 5. Archive scale\n\n";
        match &self.archive_scale {
            Ok(a) => out += &a.markdown(),
            Err(e) => out += &format!("not measured: {e}\n"),
        }
        out += "\n## 6. Many streams\n\n";
        out += &self.streams.markdown();
        out += "\n## 7. Base backups and restores\n\n";
        out += &self.backup.markdown();
        out
    }

    /// Writes `results.md` and `results.json` into `dir`; their paths.
    pub fn write(&self, dir: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir)?;
        let md = dir.join("results.md");
        let json = dir.join("results.json");
        std::fs::write(&md, self.markdown())?;
        std::fs::write(
            &json,
            serde_json::to_string_pretty(self).map_err(std::io::Error::other)?,
        )?;
        Ok((md, json))
    }
}
