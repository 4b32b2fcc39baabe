//! Tier 2 against Tier 1, in one run: the relay's upload rate to a local S3 server (s3s-fs on
//! 127.0.0.1) against the disk's fsync'd write rate, and the same restores (PostgreSQL
//! recovering `wal_mib` of WAL through `klio get-wal`, and `klio restore` of a backup) served
//! by the primary from Tier 1 and by a read-only server from Tier 2 alone, taking turns, the
//! read-only server's cache emptied before each of its turns.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use klio_testkit::{KlioServer, S3Server, TestDir, as_postgres, run_ok, wait_until};

use crate::setup::KlioStreaming;

/// What to run.
#[derive(Clone, Debug)]
pub struct Tier2Options {
    /// Rounds; each restores once from each tier.
    pub rounds: u32,
    /// WAL to generate, relay and recover, in MiB.
    pub wal_mib: u64,
    /// pgbench scale of the database backed up.
    pub scale: u32,
}

/// One timed run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Tier2Sample {
    /// `wal recovery` or `backup restore`.
    pub what: &'static str,
    /// [`TIER1`] or [`TIER2`].
    pub source: &'static str,
    /// Round number.
    pub round: u32,
    /// Seconds.
    pub seconds: f64,
}

/// The relay's rate, the disk's, and every restore.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Tier2Report {
    /// The disk's fsync'd write rate (16 MiB files), MB/s.
    pub disk_write_mb_s: f64,
    /// Bytes the relay uploaded (WAL, packs, catalog), sealed.
    pub relayed_bytes: u64,
    /// Seconds from the server's start to the frontier covering them.
    pub relay_seconds: f64,
    /// WAL recovered, in bytes.
    pub wal_bytes: u64,
    /// Every restore, in order.
    pub samples: Vec<Tier2Sample>,
}

/// Served by the primary server from Tier 1.
pub const TIER1: &str = "Tier 1 (primary)";
/// Served by a read-only server from Tier 2 alone.
pub const TIER2: &str = "Tier 2 (read-only server)";
const WAL_RECOVERY: &str = "wal recovery";
const BACKUP_RESTORE: &str = "backup restore";

impl Tier2Report {
    /// The relay's rate, MB/s.
    pub fn relay_mb_s(&self) -> f64 {
        self.relayed_bytes as f64 / 1e6 / self.relay_seconds
    }

    /// Mean seconds of `what` from `source`.
    pub fn mean(&self, what: &str, source: &str) -> f64 {
        let v: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.what == what && s.source == source)
            .map(|s| s.seconds)
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    }

    /// A markdown report.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "relay: {:.0} MiB sealed in {:.1} s = {:.0} MB/s; disk fsync'd writes {:.0} MB/s; \
             relay/disk = {:.3}\n\nWAL recovered: {:.0} MiB\n\n\
             | round | what | source | seconds |\n|---|---|---|---|\n",
            self.relayed_bytes as f64 / 1048576.0,
            self.relay_seconds,
            self.relay_mb_s(),
            self.disk_write_mb_s,
            self.relay_mb_s() / self.disk_write_mb_s,
            self.wal_bytes as f64 / 1048576.0,
        );
        for x in &self.samples {
            s += &format!(
                "| {} | {} | {} | {:.2} |\n",
                x.round, x.what, x.source, x.seconds
            );
        }
        for what in [WAL_RECOVERY, BACKUP_RESTORE] {
            let (t1, t2) = (self.mean(what, TIER1), self.mean(what, TIER2));
            s += &format!(
                "\n{what}: Tier 1 {t1:.2} s, Tier 2 {t2:.2} s; Tier 2/Tier 1 = {:.3}",
                t2 / t1
            );
        }
        s.push('\n');
        s
    }
}

/// The `tier2` section for `s3` (and `mode: read-only` when `read_only`).
fn tier2_yaml(s3: &S3Server, read_only: bool) -> String {
    format!(
        "{}retention:\n  interval: off\ntier2:\n  endpoint: {}\n  region: {}\n  bucket: {}\n  \
         access_key_id: {}\n  secret_access_key: {}\n",
        if read_only { "mode: read-only\n" } else { "" },
        s3.endpoint(),
        S3Server::REGION,
        S3Server::BUCKET,
        S3Server::ACCESS_KEY_ID,
        S3Server::SECRET_ACCESS_KEY,
    )
}

/// Bytes of the regular files under `dir`, recursively, but journals and temporary files.
fn sealed_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                todo.push(p);
            } else if !name.ends_with(".klio-journal")
                && !name.ends_with(".klio-tmp")
                && name != "tier2-frontier.json"
            {
                total += e.metadata().map_or(0, |m| m.len());
            }
        }
    }
    total
}

/// The relay frontier's WAL end LSN and its relayed backups.
fn frontier(cluster_dir: &Path) -> Option<(u64, Vec<String>)> {
    let bytes = std::fs::read(cluster_dir.join("tier2-frontier.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let lsn = v.get("wal_end")?.get("lsn")?.as_u64()?;
    let backups = v
        .get("backups")?
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    Some((lsn, backups))
}

/// Runs the comparison with the `klio` binary at `klio`.
pub fn run(klio: &Path, opts: &Tier2Options) -> Tier2Report {
    let s3 = S3Server::start();
    // Tier 1 only while the data is made: the relay starts on a backlog.
    let KlioStreaming {
        mut pg,
        work,
        exe,
        certs,
        mut server,
        mut client,
    } = KlioStreaming::start(
        klio,
        "bench-tier2",
        &[
            "max_wal_size = 8GB",
            "checkpoint_timeout = 1h",
            "shared_buffers = 256MB",
        ],
        true,
    );
    let key_args: Vec<OsString> = vec![
        "--encryption-key".into(),
        crate::setup::encryption_key(&work).into(),
    ];
    let client_args = crate::setup::bench_client_args(&server, &certs);
    pg.wait_for_flush("klio", &pg.current_lsn());
    let base = work.path().join("base");
    pg.base_backup_without_wal(&base);
    let start = pg.current_lsn();
    crate::setup::generate_wal(&pg, &start, opts.wal_mib, opts.scale);
    let backup = run_ok(
        as_postgres(&exe)
            .args(["backup", "run", "--output", "json", "-d"])
            .arg(pg.socket_connstr())
            .args(&client_args),
    );
    let backup = klio_proto::klio::BackupInfo::from_json(backup.stdout.as_bytes())
        .expect("klio backup run prints its catalog entry");
    pg.switch_wal();
    let end = pg.current_lsn();
    pg.wait_for_flush("klio", &end);
    let wal_bytes = crate::setup::wal_bytes(&pg, &start, &end);
    client.stop();
    pg.stop();

    // The disk, then the relay of the backlog, back to back.
    let data = vec![0x5au8; 16 << 20];
    let disk_write_mb_s = crate::machine::fsync_write_mb_s(work.path(), &data, 64, 1);
    let cluster_dir = server.data_dir().join("clusters").join("bench");
    let relayed_bytes = sealed_bytes(&cluster_dir);
    let config = work.path().join("server.yaml");
    std::fs::write(&config, tier2_yaml(&s3, false)).expect("write the server's config");
    let mut with_config = key_args.clone();
    with_config.extend(["--config".into(), config.into()]);
    server.set_extra_args(
        &with_config
            .iter()
            .map(OsString::as_os_str)
            .collect::<Vec<_>>(),
    );
    let t = Instant::now();
    server.restart();
    let wanted_end = end.parse::<klio_wal::Lsn>().map_or(u64::MAX, |l| l.0);
    wait_until(
        "the relay to upload the backlog",
        Duration::from_secs(3600),
        || {
            let (lsn, backups) = frontier(&cluster_dir)?;
            (lsn >= wanted_end && backups.contains(&backup.id)).then_some(())
        },
    );
    let relay_seconds = t.elapsed().as_secs_f64();
    eprintln!(
        "relayed {} MiB in {relay_seconds:.1} s",
        relayed_bytes >> 20
    );

    // A read-only server on its own data directory: its cache.
    let ro_work = TestDir::new("bench-tier2-ro");
    let ro_config = ro_work.path().join("read-only.yaml");
    std::fs::write(&ro_config, tier2_yaml(&s3, true)).expect("write the read-only config");
    let mut ro_args = key_args.clone();
    ro_args.extend(["--config".into(), ro_config.into()]);
    let mut read_only = KlioServer::start_with_args(
        &exe,
        &ro_work,
        &certs,
        &ro_args.iter().map(OsString::as_os_str).collect::<Vec<_>>(),
    );

    let restore_dir = work.subdir("restored");
    let mut samples = Vec::new();
    for round in 0..opts.rounds {
        let order = if round % 2 == 0 {
            [TIER1, TIER2]
        } else {
            [TIER2, TIER1]
        };
        for source in order {
            let serving: &mut KlioServer = if source == TIER1 {
                &mut server
            } else {
                empty_cache(&mut read_only);
                &mut read_only
            };
            let args = crate::setup::bench_client_args(serving, &certs);
            pg.replace_data_with_backup(&base);
            run_ok(
                as_postgres(&exe)
                    .arg("prepare-recovery")
                    .arg("-D")
                    .arg(pg.data_dir())
                    .args(&args),
            );
            let t = Instant::now();
            pg.start_and_finish_recovery();
            let seconds = t.elapsed().as_secs_f64();
            eprintln!("round {round}: {WAL_RECOVERY} from {source}: {seconds:.2} s");
            samples.push(Tier2Sample {
                what: WAL_RECOVERY,
                source,
                round,
                seconds,
            });
            pg.stop();

            if source == TIER2 {
                empty_cache(&mut read_only);
            }
            clear(&restore_dir);
            let t = Instant::now();
            run_ok(
                as_postgres(&exe)
                    .args(["restore", "--backup", &backup.id, "-D"])
                    .arg(&restore_dir)
                    .args(&args),
            );
            let seconds = t.elapsed().as_secs_f64();
            eprintln!("round {round}: {BACKUP_RESTORE} from {source}: {seconds:.2} s");
            samples.push(Tier2Sample {
                what: BACKUP_RESTORE,
                source,
                round,
                seconds,
            });
        }
    }
    Tier2Report {
        disk_write_mb_s,
        relayed_bytes,
        relay_seconds,
        wal_bytes,
        samples,
    }
}

/// Restarts the read-only server on an empty data directory: nothing cached.
fn empty_cache(server: &mut KlioServer) {
    server.stop();
    clear(server.data_dir());
    server.restart();
}

/// Empties `dir`, keeping it (and its owner).
fn clear(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p: PathBuf = e.path();
        if p.is_dir() {
            let _ = std::fs::remove_dir_all(&p);
        } else {
            let _ = std::fs::remove_file(&p);
        }
    }
}
