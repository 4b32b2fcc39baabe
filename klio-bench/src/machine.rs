//! What the machine is, recorded beside every result, and the disk's own limits measured in the
//! same run: fsync'd sequential write bandwidth and the latency of one small fsync'd write.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

/// The machine a run happened on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// `model name` from /proc/cpuinfo.
    pub cpu: String,
    /// Logical CPUs available to this process.
    pub cores: usize,
    /// Total memory, GiB.
    pub memory_gib: f64,
    /// `uname -r`.
    pub kernel: String,
    /// Writing 1 GiB as 16 MiB files with an fsync each, one writer, MB/s (10^6 bytes).
    pub disk_fsync_write_mb_s: f64,
    /// Median time of an 8 KiB write + fdatasync, milliseconds.
    pub fsync_8k_p50_ms: f64,
}

impl Machine {
    /// Describes this machine, measuring the disk under `scratch`.
    pub fn describe(scratch: &Path) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        let memory_gib = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1048576.0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned();
        let data = vec![0x5au8; 16 << 20];
        // 1 GiB: enough to get past the write caches between us and the disk.
        let disk_fsync_write_mb_s = fsync_write_mb_s(scratch, &data, 64, 1);
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib,
            kernel,
            disk_fsync_write_mb_s,
            fsync_8k_p50_ms: fsync_latency_ms(scratch),
        }
    }

    /// A markdown paragraph.
    pub fn markdown(&self) -> String {
        format!(
            "Machine: {} ({} cores), {:.1} GiB RAM, Linux {}; disk: {:.0} MB/s fsync'd \
             sequential writes (16 MiB files), 8 KiB write+fdatasync p50 {:.2} ms.\n",
            self.cpu,
            self.cores,
            self.memory_gib,
            self.kernel,
            self.disk_fsync_write_mb_s,
            self.fsync_8k_p50_ms
        )
    }
}

/// Writes `files` copies of `data` under `dir` with `jobs` threads, each file fsynced before
/// the next (as an archive stores segments), then the directory; MB/s. Removes what it wrote.
pub fn fsync_write_mb_s(dir: &Path, data: &[u8], files: usize, jobs: usize) -> f64 {
    let dir = dir.join(format!("fsync-write-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the scratch directory");
    let jobs = jobs.max(1);
    let t = Instant::now();
    std::thread::scope(|s| {
        for j in 0..jobs {
            let dir = &dir;
            s.spawn(move || {
                for i in (j..files).step_by(jobs) {
                    let mut f = std::fs::File::create(dir.join(format!("{i:08}")))
                        .expect("create a scratch file");
                    f.write_all(data).expect("write a scratch file");
                    f.sync_all().expect("fsync a scratch file");
                }
            });
        }
    });
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .expect("fsync the scratch directory");
    let secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    (files * data.len()) as f64 / 1e6 / secs
}

/// Median of 200 8 KiB overwrites each followed by fdatasync, in milliseconds.
fn fsync_latency_ms(dir: &Path) -> f64 {
    let path = dir.join(format!("fsync-latency-{}", std::process::id()));
    let mut f = std::fs::File::create(&path).expect("create the scratch file");
    let block = [0x33u8; 8192];
    let mut times: Vec<Duration> = (0..200)
        .map(|_| {
            let t = Instant::now();
            f.write_all(&block).expect("write");
            f.sync_data().expect("fdatasync");
            t.elapsed()
        })
        .collect();
    let _ = std::fs::remove_file(&path);
    times.sort();
    times[times.len() / 2].as_secs_f64() * 1e3
}
