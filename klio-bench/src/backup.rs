//! Base backups side by side on one pgbench database: `klio backup run` (zstd blocks,
//! AES-256-GCM at rest), reading the data directory (`--mode local --jobs 2`) and through
//! `BASE_BACKUP` (`--mode stream`), against `pg_basebackup -Ft -X none` to local disk and
//! pgBackRest (`--type=full`, process-max 2, lz4, block incremental with bundling); per round,
//! after `pgbench -N`, the time and the bytes of the next backup against pgBackRest's
//! `--type=incr` (the change checkpointed first, the order alternating); restore time of `klio restore --jobs 2` against extracting the
//! pg_basebackup tar and `pgbackrest restore`; and a delta restore of the full backup over
//! the changed data directory, `klio restore --delta` against `pgbackrest restore --delta`.
//!
//! Every Klio full backup starts from an empty block store (the server is stopped and the
//! cluster's `backups/` directory removed between rounds), so rounds measure a real full
//! backup, not a deduplicated one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use klio_testkit::{PgServer, SEND_WAL_SLOT, TestDir, as_postgres, pg_bin, run_ok};

use crate::machine::returns_freed_memory;
use crate::setup::KlioStreaming;

/// What to run.
#[derive(Clone, Debug)]
pub struct BackupOptions {
    /// Rounds of full backups, of incrementals (each after its own change) and of restores
    /// (each contender once per round).
    pub rounds: u32,
    /// pgbench scale of the database (100 ≈ 1.5 GiB).
    pub scale: u32,
    /// Seconds of `pgbench -N` before each round of incremental backups.
    pub change_seconds: u32,
    /// Klio's block compression (`klio backup run --compress`): `lz4`, as pgBackRest's here.
    pub compress: String,
}

/// One timed run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BackupSample {
    /// What ran.
    pub contender: &'static str,
    /// `full`, `incremental`, `restore`, `delta`.
    pub kind: &'static str,
    /// Round number.
    pub round: u32,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Bytes the run left on disk (backup size; 0 for restores).
    pub stored_bytes: u64,
}

/// Every run, and the incremental figures.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BackupReport {
    /// Size of the database: the pg_basebackup tar of the first round, bytes.
    pub database_bytes: u64,
    /// Every timed run.
    pub samples: Vec<BackupSample>,
    /// Bytes a Klio incremental stored (new blocks, compressed), the mean of the rounds.
    pub klio_incremental_stored: u64,
    /// Logical size of the last Klio incremental (the sum of its file sizes).
    pub klio_incremental_logical: u64,
    /// Bytes a pgBackRest `--type=incr` added to its repository, the mean of the rounds.
    pub pgbackrest_incremental_stored: u64,
    /// Seconds of a Klio incremental, the mean of the rounds.
    pub klio_incremental_seconds: f64,
    /// Seconds of a pgBackRest `--type=incr`, the mean of the rounds.
    pub pgbackrest_incremental_seconds: f64,
}

/// The kind of the backups after each round's change.
pub const INCREMENTAL: &str = "incremental";

/// `klio backup run --mode local --jobs 2`.
pub const KLIO: &str = "klio backup run --mode local";
/// `klio backup run --mode stream`.
pub const KLIO_STREAM: &str = "klio backup run --mode stream";
/// `pg_basebackup -Ft -X none`.
pub const PG_BASEBACKUP: &str = "pg_basebackup -Ft -X none";
/// `pgbackrest backup`.
pub const PGBACKREST: &str = "pgbackrest";
/// `klio restore`.
pub const KLIO_RESTORE: &str = "klio restore";
/// `tar -x` of the pg_basebackup output.
pub const TAR_EXTRACT: &str = "tar -x";
/// `pgbackrest restore`.
pub const PGBACKREST_RESTORE: &str = "pgbackrest restore";
/// `klio restore --delta`.
pub const KLIO_DELTA: &str = "klio restore --delta";
/// `pgbackrest restore --delta`.
pub const PGBACKREST_DELTA: &str = "pgbackrest restore --delta";

impl BackupReport {
    /// The summary rows of `klio-bench compare`: speeds as reference seconds over Klio's
    /// (above 1: Klio is faster), stored bytes as Klio's over the reference's.
    pub fn summary_rows(&self) -> String {
        let mut out = String::new();
        let full = self.mean(KLIO, "full");
        for (reference, name) in [
            (PGBACKREST, "pgBackRest --type=full, process-max 2"),
            (PG_BASEBACKUP, "pg_basebackup -Ft -X none"),
            (KLIO_STREAM, "klio --mode stream"),
        ] {
            let theirs = self.mean(reference, "full");
            out += &format!(
                "| full backup, --mode local --jobs 2, s (speed) | {full:.2} | {name} {theirs:.2} | {:.2} |\n",
                theirs / full
            );
        }
        out += &format!(
            "| backup after pgbench -N, s (speed) | {:.2} | pgBackRest --type=incr {:.2} | {:.2} |\n",
            self.klio_incremental_seconds,
            self.pgbackrest_incremental_seconds,
            self.pgbackrest_incremental_seconds / self.klio_incremental_seconds
        );
        out += &format!(
            "| backup after pgbench -N, stored MiB | {:.1} | pgBackRest --type=incr {:.1} | {:.2} |\n",
            self.klio_incremental_stored as f64 / 1048576.0,
            self.pgbackrest_incremental_stored as f64 / 1048576.0,
            self.klio_incremental_stored as f64 / self.pgbackrest_incremental_stored.max(1) as f64
        );
        for (ours, theirs, what) in [
            (KLIO_RESTORE, PGBACKREST_RESTORE, "restore --jobs 2"),
            (KLIO_DELTA, PGBACKREST_DELTA, "restore --delta"),
        ] {
            let kind = if ours == KLIO_DELTA {
                "delta"
            } else {
                "restore"
            };
            let (k, p) = (self.mean(ours, kind), self.mean(theirs, kind));
            out += &format!(
                "| {what}, s (speed) | {k:.2} | {theirs} {p:.2} | {:.2} |\n",
                p / k
            );
        }
        out
    }

    /// Mean seconds of `contender` in runs of `kind`.
    pub fn mean(&self, contender: &str, kind: &str) -> f64 {
        let v: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.contender == contender && s.kind == kind)
            .map(|s| s.seconds)
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    }

    /// A markdown table with the ratios.
    pub fn markdown(&self) -> String {
        let mib = |b: u64| b as f64 / 1048576.0;
        let mut s = format!("Database: {:.0} MiB\n\n", mib(self.database_bytes));
        if returns_freed_memory() {
            s += &format!(
                "This virtual machine returns freed memory to its host: every run started {} s \
                 after the last one's cleanup, with the memory it freed returned.\n\n",
                MEMORY_RETURN.as_secs()
            );
        }
        s += "| round | kind | contender | seconds | stored MiB |\n|---|---|---|---|---|\n";
        for x in &self.samples {
            s += &format!(
                "| {} | {} | {} | {:.2} | {:.1} |\n",
                x.round,
                x.kind,
                x.contender,
                x.seconds,
                mib(x.stored_bytes)
            );
        }
        let full = self.mean(KLIO, "full");
        let restore = self.mean(KLIO_RESTORE, "restore");
        let speed = |theirs: f64, ours: f64| theirs / ours;
        s += &format!(
            "\nfull backup: klio local {full:.2} s, klio stream {:.2} s, pg_basebackup {:.2} s, \
             pgbackrest {:.2} s; speed of klio local against pg_basebackup {:.2}×, against \
             pgbackrest {:.2}× (goal ≥ 1.2×), against klio stream {:.2}×\n",
            self.mean(KLIO_STREAM, "full"),
            self.mean(PG_BASEBACKUP, "full"),
            self.mean(PGBACKREST, "full"),
            speed(self.mean(PG_BASEBACKUP, "full"), full),
            speed(self.mean(PGBACKREST, "full"), full),
            speed(self.mean(KLIO_STREAM, "full"), full),
        );
        s += &format!(
            "incremental after pgbench -N: klio {:.2} s, pgbackrest incr {:.2} s, speed {:.2}× \
             (goal ≥ 1.2×)\n",
            self.klio_incremental_seconds,
            self.pgbackrest_incremental_seconds,
            speed(
                self.pgbackrest_incremental_seconds,
                self.klio_incremental_seconds
            ),
        );
        s += &format!(
            "incremental after pgbench -N: klio stored {:.1} MiB, pgbackrest incr ({}) {:.1} MiB; \
             klio/pgbackrest = {:.3} (goal ≤ 1.0)\n",
            mib(self.klio_incremental_stored),
            if has_block_incremental() {
                "block incremental"
            } else {
                "whole changed files: this pgBackRest predates repo-block"
            },
            mib(self.pgbackrest_incremental_stored),
            self.klio_incremental_stored as f64 / self.pgbackrest_incremental_stored.max(1) as f64
        );
        s += &format!(
            "restore: klio {restore:.2} s, tar -x {:.2} s, pgbackrest {:.2} s; speed of klio \
             against tar {:.2}×, against pgbackrest {:.2}× (goal ≥ 1.0×)\n",
            self.mean(TAR_EXTRACT, "restore"),
            self.mean(PGBACKREST_RESTORE, "restore"),
            speed(self.mean(TAR_EXTRACT, "restore"), restore),
            speed(self.mean(PGBACKREST_RESTORE, "restore"), restore),
        );
        let delta = self.mean(KLIO_DELTA, "delta");
        s += &format!(
            "delta restore of the full backup over the changed directory: klio {delta:.2} s, \
             pgbackrest {:.2} s; speed {:.2}× (goal ≥ 1.0×)\n",
            self.mean(PGBACKREST_DELTA, "delta"),
            speed(self.mean(PGBACKREST_DELTA, "delta"), delta),
        );
        s
    }
}

/// How long freed memory takes to go back to the host on a machine that
/// [returns it](returns_freed_memory): after 4 s, 3 GB written into the page cache took most
/// of the time they take once returned (8.3 s of 10 s; `dd` on this machine), after 10 s all.
const MEMORY_RETURN: Duration = Duration::from_secs(15);

/// Writes back everything dirty (`sync`), so that a timed run starts from a quiet disk; on a
/// machine that returns freed memory to its host, then waits until what the last run freed
/// has gone back, so that no contender writes into pages another one's cleanup just freed
/// (up to ten times cheaper to write than returned ones): every run pays the same for the
/// memory it writes. There is nothing to watch for the end of it, hence a fixed wait.
fn settle() {
    run_ok(&mut Command::new("sync"));
    if returns_freed_memory() {
        std::thread::sleep(MEMORY_RETURN);
    }
}

/// Reads every file under `dir` (a data directory) but its WAL, so that every backup starts
/// with the database in the page cache: a change, its WAL and the other contenders' output
/// may have pushed some of it out, and whoever ran first would pay for bringing it back.
fn warm(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() && entry.file_name() != "pg_wal" => warm(&path),
            Ok(t) if t.is_file() => {
                if let Ok(mut f) = std::fs::File::open(&path) {
                    let _ = std::io::copy(&mut f, &mut std::io::sink());
                }
            }
            _ => {}
        }
    }
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let out = run_ok(Command::new("du").args(["-sb"]).arg(dir));
    out.stdout
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn chown_postgres(path: &Path) {
    run_ok(
        Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(path),
    );
}

/// A fresh empty directory owned by postgres.
fn fresh_dir(work: &TestDir, name: &str) -> PathBuf {
    let dir = work.path().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    chown_postgres(&dir);
    dir
}

/// Whether the installed pgBackRest has block incremental backups (`repo-block`, 2.46 and
/// later); older ones back up changed files whole.
pub fn has_block_incremental() -> bool {
    pgbackrest_version().is_some_and(|(major, minor)| (major, minor) >= (2, 46))
}

/// `pgbackrest version`, as (major, minor).
fn pgbackrest_version() -> Option<(u32, u32)> {
    let out = Command::new("pgbackrest").arg("version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let number = text.split_whitespace().nth(1)?;
    let mut parts = number.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The pgBackRest configuration of the run.
struct PgBackRest {
    conf: PathBuf,
    repo: PathBuf,
}

impl PgBackRest {
    fn create(work: &TestDir, pg: &PgServer) -> Self {
        let base = fresh_dir(work, "pgbackrest");
        let repo = base.join("repo");
        let conf = base.join("pgbackrest.conf");
        std::fs::write(
            &conf,
            format!(
                "[global]\nrepo1-path={repo}\nlock-path={b}/lock\nlog-path={b}/log\n\
                 log-level-console=warn\nlog-level-file=off\nprocess-max=2\ncompress-type=lz4\n\
                 start-fast=y\narchive-check=n\nrepo1-bundle=y\n{block}\
                 repo1-retention-full=100\n\n[bench]\npg1-path={pg}\npg1-socket-path={sock}\n\
                 pg1-port={port}\n",
                block = if has_block_incremental() {
                    "repo1-block=y\n"
                } else {
                    ""
                },
                b = base.display(),
                repo = repo.display(),
                pg = pg.data_dir().display(),
                sock = pg.socket_dir(),
                port = pg.port()
            ),
        )
        .expect("write pgbackrest.conf");
        chown_postgres(&base);
        let me = Self { conf, repo };
        run_ok(&mut me.command(&["stanza-create"]));
        me
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = as_postgres("pgbackrest");
        c.arg(format!("--config={}", self.conf.display()))
            .arg("--stanza=bench")
            .args(args);
        c
    }
}

/// Runs the comparison with the `klio` binary at `klio`. Needs `pgbackrest` on the PATH.
pub fn run(klio: &Path, opts: &BackupOptions) -> BackupReport {
    // Declared in this order so that they drop as a deployment stops: send-wal, the
    // server, then the files, then PostgreSQL.
    let KlioStreaming {
        mut pg,
        work,
        exe,
        certs,
        mut server,
        mut client,
    } = KlioStreaming::start(
        klio,
        "bench-backup",
        &[
            "max_wal_size = 8GB",
            "shared_buffers = 256MB",
            "checkpoint_timeout = 1h",
        ],
        true,
    );
    eprintln!("pgbench -i -s {}", opts.scale);
    pg.pgbench(&["-i", "-q", "-s", &opts.scale.to_string()]);
    pg.psql("CHECKPOINT");
    let client_args = crate::setup::bench_client_args(&server, &certs);
    let compress = opts.compress.as_str();
    let klio_backup = |label: &str, mode: &str| -> (f64, klio_proto::klio::BackupInfo) {
        let t = Instant::now();
        let out = run_ok(
            as_postgres(&exe)
                .args(["backup", "run", "--output", "json", "--label", label])
                .args(["--mode", mode, "--jobs", "2", "--compress", compress, "-d"])
                .arg(pg.socket_connstr())
                .args(&client_args),
        );
        let seconds = t.elapsed().as_secs_f64();
        let info = klio_proto::klio::BackupInfo::from_json(out.stdout.as_bytes())
            .expect("klio backup run prints its catalog entry");
        (seconds, info)
    };
    let backups_dir = server
        .data_dir()
        .join("clusters")
        .join("bench")
        .join("backups");
    let tar_dir = work.path().join("basebackup-tar");
    let pgbackrest = PgBackRest::create(&work, &pg);

    let mut samples = Vec::new();
    let mut klio_full = None;
    for round in 0..opts.rounds {
        let mut order = [KLIO, KLIO_STREAM, PG_BASEBACKUP, PGBACKREST];
        order.rotate_left(round as usize % 4);
        for contender in order {
            // What the contender's last run left goes first, so that settling returns its
            // memory too.
            match contender {
                KLIO | KLIO_STREAM => {
                    // An empty block store: a real full backup.
                    server.stop();
                    let _ = std::fs::remove_dir_all(&backups_dir);
                    server.restart();
                    // send-wal reconnects with backoff; its catching up is not the
                    // backup's time, so the backup starts once the archive is current.
                    pg.wait_for_flush(SEND_WAL_SLOT, &pg.current_lsn());
                }
                PG_BASEBACKUP => {
                    let _ = std::fs::remove_dir_all(&tar_dir);
                }
                _ => {}
            }
            // Every contender starts with nothing dirty in the page cache and the database in
            // it: the writeback of what came before (pgbench -i, the last contender) is no
            // one's cost.
            settle();
            warm(&pg.data_dir());
            let (seconds, stored_bytes) = match contender {
                KLIO | KLIO_STREAM => {
                    let mode = if contender == KLIO { "local" } else { "stream" };
                    let (seconds, info) = klio_backup(&format!("full-{round}-{mode}"), mode);
                    klio_full = Some(info.id.clone());
                    (seconds, info.new_stored_bytes)
                }
                PG_BASEBACKUP => {
                    let t = Instant::now();
                    run_ok(
                        as_postgres(pg_bin("pg_basebackup"))
                            .arg("-D")
                            .arg(&tar_dir)
                            .args(["-Ft", "-X", "none", "-c", "fast"])
                            .args(["-h", &pg.socket_dir(), "-p", &pg.port().to_string()])
                            .args(["-U", "postgres"]),
                    );
                    (t.elapsed().as_secs_f64(), dir_bytes(&tar_dir))
                }
                _ => {
                    let before = dir_bytes(&pgbackrest.repo);
                    let t = Instant::now();
                    run_ok(&mut pgbackrest.command(&["--type=full", "backup"]));
                    (
                        t.elapsed().as_secs_f64(),
                        dir_bytes(&pgbackrest.repo) - before,
                    )
                }
            };
            eprintln!("round {round}: full {contender} {seconds:.2} s, {stored_bytes} bytes");
            samples.push(BackupSample {
                contender,
                kind: "full",
                round,
                seconds,
                stored_bytes,
            });
        }
    }

    // The incrementals: per round the same change seen by both, each backing up after its
    // own last backup, the order alternating.
    let mut klio_incremental = None;
    for round in 0..opts.rounds {
        eprintln!("pgbench -N -T {}", opts.change_seconds);
        pg.pgbench(&[
            "-N",
            "-c",
            "4",
            "-j",
            "2",
            "-T",
            &opts.change_seconds.to_string(),
        ]);
        // Neither pays for the other's checkpoint: the change is checkpointed first, and
        // send-wal has caught up with it.
        pg.psql("CHECKPOINT");
        pg.wait_for_flush(SEND_WAL_SLOT, &pg.current_lsn());
        let mut order = [KLIO, PGBACKREST];
        order.rotate_left(round as usize % 2);
        for contender in order {
            settle();
            warm(&pg.data_dir());
            let (seconds, stored_bytes) = if contender == KLIO {
                let (seconds, info) = klio_backup(&format!("incremental-{round}"), "local");
                let stored = info.new_stored_bytes;
                klio_incremental = Some(info);
                (seconds, stored)
            } else {
                let before = dir_bytes(&pgbackrest.repo);
                let t = Instant::now();
                run_ok(&mut pgbackrest.command(&["--type=incr", "backup"]));
                (
                    t.elapsed().as_secs_f64(),
                    dir_bytes(&pgbackrest.repo) - before,
                )
            };
            eprintln!(
                "round {round}: incremental {contender} {seconds:.2} s, {stored_bytes} bytes"
            );
            samples.push(BackupSample {
                contender,
                kind: INCREMENTAL,
                round,
                seconds,
                stored_bytes,
            });
        }
    }
    let pgbackrest_full = last_full_label(&pgbackrest);

    // Restores, each into an empty directory.
    client.stop();
    for round in 0..opts.rounds {
        let mut order = [KLIO_RESTORE, TAR_EXTRACT, PGBACKREST_RESTORE];
        order.rotate_left(round as usize % 3);
        for contender in order {
            let target = fresh_dir(&work, "restored");
            settle();
            let t = Instant::now();
            match contender {
                KLIO_RESTORE => {
                    run_ok(
                        as_postgres(&exe)
                            .args(["restore", "--backup", "latest", "--jobs", "2", "-D"])
                            .arg(&target)
                            .args(&client_args),
                    );
                }
                TAR_EXTRACT => {
                    run_ok(
                        as_postgres("tar")
                            .arg("-xf")
                            .arg(tar_dir.join("base.tar"))
                            .arg("-C")
                            .arg(&target),
                    );
                }
                _ => {
                    run_ok(
                        &mut pgbackrest
                            .command(&["restore", &format!("--pg1-path={}", target.display())]),
                    );
                }
            }
            let seconds = t.elapsed().as_secs_f64();
            eprintln!("round {round}: restore {contender} {seconds:.2} s");
            samples.push(BackupSample {
                contender,
                kind: "restore",
                round,
                seconds,
                stored_bytes: 0,
            });
        }
    }
    let _ = std::fs::remove_dir_all(work.path().join("restored"));

    // Delta restores of the full backup (before the change) over a copy of the changed data
    // directory (after it), PostgreSQL stopped.
    let changed = work.path().join("changed");
    pg.stop();
    run_ok(
        Command::new("cp")
            .arg("-a")
            .arg(pg.data_dir())
            .arg(&changed),
    );
    for round in 0..opts.rounds {
        let mut order = [KLIO_DELTA, PGBACKREST_DELTA];
        order.rotate_left(round as usize % 2);
        for contender in order {
            let target = work.path().join("delta-target");
            let _ = std::fs::remove_dir_all(&target);
            run_ok(Command::new("cp").arg("-a").arg(&changed).arg(&target));
            // A clean stop leaves no pid file; the copy must not look like a running server.
            let _ = std::fs::remove_file(target.join("postmaster.pid"));
            settle();
            let t = Instant::now();
            if contender == KLIO_DELTA {
                let id = klio_full.as_deref().unwrap_or("latest");
                run_ok(
                    as_postgres(&exe)
                        .args(["restore", "--backup", id, "--delta", "--jobs", "2", "-D"])
                        .arg(&target)
                        .args(&client_args),
                );
            } else {
                run_ok(&mut pgbackrest.command(&[
                    "restore",
                    "--delta",
                    &format!("--set={pgbackrest_full}"),
                    &format!("--pg1-path={}", target.display()),
                ]));
            }
            let seconds = t.elapsed().as_secs_f64();
            eprintln!("round {round}: delta {contender} {seconds:.2} s");
            samples.push(BackupSample {
                contender,
                kind: "delta",
                round,
                seconds,
                stored_bytes: 0,
            });
        }
    }
    let _ = std::fs::remove_dir_all(work.path().join("delta-target"));
    let _ = std::fs::remove_dir_all(&changed);
    let (klio_incremental_seconds, klio_incremental_stored) = incremental_means(&samples, KLIO);
    let (pgbackrest_incremental_seconds, pgbackrest_incremental_stored) =
        incremental_means(&samples, PGBACKREST);
    BackupReport {
        database_bytes: samples
            .iter()
            .find(|s| s.contender == PG_BASEBACKUP)
            .map_or(0, |s| s.stored_bytes),
        samples,
        klio_incremental_stored,
        klio_incremental_logical: klio_incremental.map_or(0, |i| i.logical_bytes),
        pgbackrest_incremental_stored,
        klio_incremental_seconds,
        pgbackrest_incremental_seconds,
    }
}

/// The mean seconds and stored bytes of `contender`'s incrementals.
fn incremental_means(samples: &[BackupSample], contender: &str) -> (f64, u64) {
    let runs: Vec<&BackupSample> = samples
        .iter()
        .filter(|s| s.contender == contender && s.kind == INCREMENTAL)
        .collect();
    let n = runs.len().max(1);
    (
        runs.iter().map(|s| s.seconds).sum::<f64>() / n as f64,
        runs.iter().map(|s| s.stored_bytes).sum::<u64>() / n as u64,
    )
}

/// The label of pgBackRest's newest full backup (`pgbackrest info --output=json`).
fn last_full_label(pgbackrest: &PgBackRest) -> String {
    let out = run_ok(&mut pgbackrest.command(&["info", "--output=json"]));
    let info: serde_json::Value =
        serde_json::from_str(&out.stdout).expect("pgbackrest info prints JSON");
    info[0]["backup"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["type"] == "full")
        .filter_map(|b| b["label"].as_str())
        .next_back()
        .expect("pgbackrest holds a full backup")
        .to_owned()
}
