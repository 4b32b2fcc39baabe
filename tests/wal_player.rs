//! `klio wal-player`: 64 clients stream into one real server at once; every file is reported,
//! every cluster's archive holds exactly the files played, and the server's memory stays
//! bounded, also when its ingest budget is far smaller than what the clients push. Playing
//! again into clusters that hold WAL fails per file and changes nothing.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::*;
use klio_store::wal_archive::WalArchiveReader;
use klio_testkit::{KlioServer, TestCerts, TestDir, run, run_ok};
use klio_wal::{SegmentSize, WalFileName};

const JOBS: usize = 64;
const FILES_PER_JOB: usize = 3;

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// 64 clusters with certificates, a server started with `server_args`, and the files to play
/// (`FILES_PER_JOB` 1 MiB segments per job).
struct Players {
    /// Removed last, with everything in it.
    _work: TestDir,
    exe: std::path::PathBuf,
    clusters: Vec<String>,
    _certs: TestCerts,
    server: KlioServer,
    wal: std::path::PathBuf,
    config: std::path::PathBuf,
}

impl Players {
    fn start(label: &str, server_args: &[&str]) -> Self {
        let work = TestDir::new(label);
        let exe = klio_exe(&work);
        let clusters: Vec<String> = (1..=JOBS).map(|j| format!("player-{j}")).collect();
        let names: Vec<&str> = clusters.iter().map(String::as_str).collect();
        let certs = TestCerts::create(&exe, &work.subdir("certs"), &names);
        let args: Vec<&std::ffi::OsStr> = server_args.iter().map(|a| a.as_ref()).collect();
        let server = KlioServer::start_with_args(&exe, &work, &certs, &args);

        let wal = work.path().join("wal");
        let files = JOBS * FILES_PER_JOB;
        let generated = run_ok(
            Command::new(&exe)
                .args(["wal-player", "generate"])
                .arg(&wal)
                .args(["--wal-size", "1", "--length", &files.to_string()]),
        );
        assert!(
            generated
                .stderr
                .contains(&format!("generated {files} files"))
        );

        // The client configuration from a file, with {job} in the cluster and certificate
        // paths.
        let config = work.path().join("klio-config.yaml");
        std::fs::write(
            &config,
            format!(
                "client:\n  cluster_name: player-{{job}}\n  wal:\n    address: {}\n    \
                 server_cert_path: {}\n    client_cert_path: {}\n    client_key_path: {}\n",
                server.address(),
                certs.file("ca.pem").display(),
                certs.file("client-player-{job}.pem").display(),
                certs.file("client-player-{job}.key").display(),
            ),
        )
        .unwrap();
        Self {
            _work: work,
            exe,
            clusters,
            _certs: certs,
            server,
            wal,
            config,
        }
    }

    /// `wal-player play` of every file with `JOBS` jobs, `block_kib` KiB per request.
    fn play(&self, block_kib: usize) -> klio_testkit::Output {
        run(Command::new(&self.exe)
            .args(["wal-player", "play"])
            .arg(&self.wal)
            .arg("--config")
            .arg(&self.config)
            .args(["--jobs", &JOBS.to_string()])
            .args(["--block-size", &block_kib.to_string()]))
    }

    /// Every file was reported once, without error, and each cluster holds its run of
    /// consecutive files, byte for byte, and verifies clean.
    fn assert_everything_stored(&self, out: &klio_testkit::Output) {
        assert_eq!(out.code, Some(0), "{}\n{}", out.stderr, self.server.log());
        let files = JOBS * FILES_PER_JOB;
        let lines: Vec<serde_json::Value> = out
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        let (summary, per_file) = lines.split_last().expect("output");
        assert_eq!(per_file.len(), files);
        let mut paths = BTreeSet::new();
        for f in per_file {
            assert_eq!(f["error"], "", "{f}");
            let elapsed: u64 = f["elapsedTime"].as_str().unwrap().parse().unwrap();
            assert!(elapsed > 0, "{f}");
            let start = humantime::parse_rfc3339(f["startTime"].as_str().unwrap()).unwrap();
            let end = humantime::parse_rfc3339(f["endTime"].as_str().unwrap()).unwrap();
            assert!(start <= end, "{f}");
            paths.insert(f["walFullPath"].as_str().unwrap().to_owned());
        }
        assert_eq!(paths.len(), files, "every file reported once");
        let s = &summary["summary"];
        assert_eq!(s["files"], files);
        assert_eq!(s["errors"], 0);
        assert_eq!(s["jobs"], JOBS);
        assert_eq!(s["bytes"], (files as u64) << 20);

        let size = SegmentSize::new(1 << 20).unwrap();
        let mut sources: Vec<_> = std::fs::read_dir(&self.wal)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        sources.sort();
        for (j, run) in sources.chunks(FILES_PER_JOB).enumerate() {
            let cluster = &self.clusters[j];
            let archive = WalArchiveReader::open(&self.server.wal_dir(cluster)).expect(cluster);
            let report = archive.verify(None).expect("verify");
            assert!(
                report.problems.is_empty(),
                "{cluster}: {:?}",
                report.problems
            );
            assert_eq!(report.segments_walked, FILES_PER_JOB as u64, "{cluster}");
            for path in run {
                let name = path.file_name().unwrap().to_str().unwrap();
                let file = archive
                    .read_file(&WalFileName::parse(name, size).unwrap())
                    .expect("read")
                    .unwrap_or_else(|| panic!("{cluster} lacks {name}"));
                assert!(!file.partial, "{cluster}/{name} is complete");
                assert!(
                    file.content == std::fs::read(path).unwrap(),
                    "{cluster}/{name} differs from the file played"
                );
            }
        }
    }
}

#[test]
fn sixty_four_clients_play_into_one_server_completely() {
    let p = Players::start("wal-player", &[]);
    let out = p.play(256);
    p.assert_everything_stored(&out);
    let server = &p.server;
    let play = || p.play(256);
    let files = JOBS * FILES_PER_JOB;

    // 64 clients pushed 192 MiB at once through flow-controlled streams; the server must not
    // have buffered it all.
    let peak = peak_rss_kib(server.pid().expect("server running"));
    eprintln!("server peak RSS with {JOBS} streams: {} MiB", peak / 1024);
    assert!(
        peak < 160 * 1024,
        "server peak RSS {} MiB with {JOBS} streams",
        peak / 1024
    );

    // Again: each cluster already holds this WAL. Every file fails with the reason, nothing
    // changes.
    let before = WalArchiveReader::open(&server.wal_dir("player-1"))
        .unwrap()
        .durable();
    let again = play();
    assert_eq!(again.code, Some(1), "{}", again.stderr);
    let failed = again
        .stdout
        .lines()
        .filter(|l| l.contains("already holds WAL"))
        .count();
    assert_eq!(failed, files, "{}", again.stdout);
    let after = WalArchiveReader::open(&server.wal_dir("player-1"))
        .unwrap()
        .durable();
    assert_eq!(before, after);
}

#[test]
fn sixty_four_clients_within_an_8_mib_ingest_budget_are_slowed_but_lose_nothing() {
    // 64 clients push 1 MiB frames (the default 2 MiB requests, cut at segment ends) into 8 MiB
    // of budget: at most a few frames can be read at once, the rest wait in line.
    let p = Players::start("wal-player-budget", &["--ingest-memory", "8MiB"]);
    let out = p.play(2048);
    p.assert_everything_stored(&out);
    let peak = peak_rss_kib(p.server.pid().expect("server running"));
    eprintln!(
        "server peak RSS with {JOBS} streams and an 8 MiB budget: {} MiB",
        peak / 1024
    );
}

#[test]
fn several_jobs_without_a_job_placeholder_are_refused_with_advice() {
    let work = TestDir::new("wal-player-args");
    let exe = klio_exe(&work);
    let wal = work.path().join("wal");
    run_ok(
        Command::new(&exe)
            .args(["wal-player", "generate"])
            .arg(&wal)
            .args(["--wal-size", "1", "--length", "2"]),
    );
    let out = run(Command::new(&exe)
        .args(["wal-player", "play"])
        .arg(&wal)
        .args([
            "--jobs",
            "2",
            "--cluster",
            "one",
            "--server",
            "127.0.0.1:1",
            "--tls-ca",
            "ca.pem",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "c.key",
        ]));
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("{job}"), "{}", out.stderr);
    assert!(out.stdout.is_empty());

    let out = run(Command::new(&exe)
        .args(["wal-player", "play"])
        .arg(&wal)
        .args(["--cluster", "one"]));
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("client.wal.address") && out.stderr.contains("--server"),
        "{}",
        out.stderr
    );
}
