//! A backup of a data directory with a very large number of files: `klio backup run --mode
//! local` of a cluster whose data directory also holds `--files` small files (each with its
//! own contents, so every one is a new block), with the peak resident memory of the client
//! and of the server sampled every 100 ms, against the goal that memory does not grow with
//! the number of files beyond the server's block index.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use klio_testkit::{as_postgres, run_ok};

use crate::setup::KlioStreaming;

/// What to run.
#[derive(Clone, Debug)]
pub struct BackupFilesOptions {
    /// Small files added to the data directory.
    pub files: usize,
}

/// What was measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BackupFilesReport {
    /// Files added.
    pub files_added: usize,
    /// Files in the backup (directories included).
    pub files_in_backup: u64,
    /// Seconds of `klio backup run`.
    pub seconds: f64,
    /// Peak resident memory of `klio backup run`, MiB.
    pub client_peak_rss_mib: f64,
    /// Peak resident memory of the server during the backup, MiB.
    pub server_peak_rss_mib: f64,
    /// The server's resident memory before the backup, MiB.
    pub server_rss_before_mib: f64,
}

impl BackupFilesReport {
    /// A markdown table.
    pub fn markdown(&self) -> String {
        format!(
            "| files added | files in the backup | seconds | files/s | client peak RSS MiB | \
             server RSS before / peak MiB |\n|---|---|---|---|---|---|\n| {} | {} | {:.1} | {:.0} \
             | {:.0} | {:.0} / {:.0} |\n",
            self.files_added,
            self.files_in_backup,
            self.seconds,
            self.files_in_backup as f64 / self.seconds,
            self.client_peak_rss_mib,
            self.server_rss_before_mib,
            self.server_peak_rss_mib,
        )
    }
}

/// `VmRSS` of `pid`, KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The pids of `klio backup run` processes.
fn backup_pids() -> Vec<u32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                c.windows(11).any(|w| w == b"backup\0run\0") && !c.starts_with(b"runuser")
            })
        })
        .collect()
}

/// Adds `files` small files to `pgdata`, 1000 per directory, owned by postgres.
fn add_files(pgdata: &Path, files: usize) {
    let root = pgdata.join("klio-bench-files");
    for i in 0..files {
        let dir = root.join(format!("{:04}", i / 1000));
        if i % 1000 == 0 {
            std::fs::create_dir_all(&dir).expect("create a directory of small files");
        }
        let body = format!("small file {i} of a data directory with many files\n");
        std::fs::write(dir.join(format!("{:04}", i % 1000)), body).expect("write a small file");
    }
    run_ok(
        Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&root),
    );
}

/// Runs the measurement with the `klio` binary at `klio`.
pub fn run(klio: &Path, opts: &BackupFilesOptions) -> BackupFilesReport {
    let KlioStreaming {
        pg,
        work: _work,
        exe,
        certs,
        server,
        client: _client,
    } = KlioStreaming::start(klio, "bench-backup-files", &[], true);
    eprintln!("adding {} files", opts.files);
    add_files(&pg.data_dir(), opts.files);
    let client_args = crate::setup::bench_client_args(&server, &certs);
    let server_pid = server.pid().expect("server running");
    let server_rss_before_mib = rss_kib(server_pid).unwrap_or(0) as f64 / 1024.0;

    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let (mut client_peak, mut server_peak) = (0, 0);
            while sampling.load(Ordering::SeqCst) {
                for pid in backup_pids() {
                    client_peak = client_peak.max(rss_kib(pid).unwrap_or(0));
                }
                server_peak = server_peak.max(rss_kib(server_pid).unwrap_or(0));
                std::thread::sleep(Duration::from_millis(100));
            }
            (client_peak, server_peak)
        })
    };
    eprintln!("klio backup run --mode local");
    let t = Instant::now();
    let out = run_ok(
        as_postgres(&exe)
            .args(["backup", "run", "--output", "json", "--mode", "local", "-d"])
            .arg(pg.socket_connstr())
            .args(["--wal-timeout", "10m"])
            .args(&client_args),
    );
    let seconds = t.elapsed().as_secs_f64();
    sampling.store(false, Ordering::SeqCst);
    let (client_peak, server_peak) = sampler.join().unwrap_or((0, 0));
    let info = klio_proto::klio::BackupInfo::from_json(out.stdout.as_bytes())
        .expect("klio backup run prints its catalog entry");
    BackupFilesReport {
        files_added: opts.files,
        files_in_backup: info.files,
        seconds,
        client_peak_rss_mib: client_peak as f64 / 1024.0,
        server_peak_rss_mib: server_peak as f64 / 1024.0,
        server_rss_before_mib,
    }
}
