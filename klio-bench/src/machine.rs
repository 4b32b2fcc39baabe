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
    /// Whether this is a virtual machine that hands freed memory back to its host
    /// ([`returns_freed_memory`]).
    pub returns_freed_memory: bool,
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
            returns_freed_memory: returns_freed_memory(),
        }
    }

    /// A markdown paragraph.
    pub fn markdown(&self) -> String {
        format!(
            "Machine: {} ({} cores), {:.1} GiB RAM, Linux {}; disk: {:.0} MB/s fsync'd \
             sequential writes (16 MiB files), 8 KiB write+fdatasync p50 {:.2} ms{}.\n",
            self.cpu,
            self.cores,
            self.memory_gib,
            self.kernel,
            self.disk_fsync_write_mb_s,
            self.fsync_8k_p50_ms,
            if self.returns_freed_memory {
                "; a virtual machine that returns freed memory to its host"
            } else {
                ""
            }
        )
    }
}

/// Whether the machine is a virtual machine whose memory balloon reports free pages to the
/// host (virtio-balloon's `VIRTIO_BALLOON_F_REPORTING`, feature bit 5): the host takes back
/// memory the guest freed a few seconds ago, and the guest's next use of such a page waits
/// for the host to fault it in again. Writing 3 GB into the page cache took 0.9 s right after
/// deleting 3 GB of files and 10 s once their pages had been returned (`dd`, this machine),
/// so a timed run that follows a deletion gets cheap pages, and one that follows a pause
/// pays for every page it writes.
pub fn returns_freed_memory() -> bool {
    const BALLOON_DEVICE: &str = "0x0005";
    const REPORTING_BIT: usize = 5;
    let Ok(devices) = std::fs::read_dir("/sys/bus/virtio/devices") else {
        return false;
    };
    devices.flatten().any(|d| {
        let read = |name: &str| std::fs::read_to_string(d.path().join(name)).unwrap_or_default();
        read("device").trim() == BALLOON_DEVICE
            && read("features").as_bytes().get(REPORTING_BIT) == Some(&b'1')
    })
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
