//! Shared setup of the comparisons.

use std::path::Path;
use std::process::Command;

use klio_testkit::{
    BackgroundProcess, KlioServer, PgOptions, PgServer, SendWal, TestCerts, TestDir, run_ok,
    start_pg_receivewal,
};

/// A Klio server as production runs it: every cluster's WAL compressed (lz4) and encrypted
/// (AES-256-GCM) at rest, with a new key file in `work`.
pub(crate) fn start_encrypted_server(exe: &Path, work: &TestDir, certs: &TestCerts) -> KlioServer {
    start_encrypted_server_with(exe, work, certs, &[])
}

/// [`start_encrypted_server`] with more `server start` flags.
pub(crate) fn start_encrypted_server_with(
    exe: &Path,
    work: &TestDir,
    certs: &TestCerts,
    extra: &[&std::ffi::OsStr],
) -> KlioServer {
    let key = encryption_key(work);
    run_ok(Command::new(exe).args(["keys", "generate", "-o"]).arg(&key));
    // The server runs as the postgres user.
    run_ok(Command::new("chown").arg("postgres:postgres").arg(&key));
    let mut args = vec!["--encryption-key".as_ref(), key.as_os_str()];
    args.extend_from_slice(extra);
    KlioServer::start_with_args(exe, work, certs, &args)
}

/// wal-player's default `--block-size`, KiB.
pub(crate) const PLAYER_BLOCK_KIB: usize = 2048;

/// What `klio wal-player play` reported of a run.
pub(crate) struct Played {
    /// Files that failed.
    pub(crate) errors: u64,
    /// MB/s of WAL acknowledged.
    pub(crate) mb_per_s: f64,
    /// Per-file latency p50, ms.
    pub(crate) p50_ms: f64,
    /// Per-file latency p99, ms.
    pub(crate) p99_ms: f64,
}

/// `klio wal-player play` of `wal` with `jobs` jobs into `server` as `cluster` (with `{job}`
/// when `jobs` > 1, certificates from `certs`), `block_kib` KiB per request. Files that
/// failed are counted, not fatal: wal-player still reports the run.
pub(crate) fn play(
    exe: &Path,
    server: &KlioServer,
    certs: &TestCerts,
    wal: &Path,
    cluster: &str,
    jobs: usize,
    block_kib: usize,
) -> Played {
    let cert = |ext: &str| format!("{}/client-{cluster}.{ext}", certs.dir.display());
    let out = klio_testkit::run(
        Command::new(exe)
            .args(["-q", "wal-player", "play"])
            .arg(wal)
            .args(["--jobs", &jobs.to_string(), "--cluster", cluster])
            .args(["--block-size", &block_kib.to_string()])
            .args(["--server", &server.address(), "--tls-ca"])
            .arg(certs.file("ca.pem"))
            .args(["--tls-cert", &cert("pem"), "--tls-key", &cert("key")]),
    );
    let last = out.stdout.lines().last().unwrap_or_default();
    let summary: serde_json::Value = serde_json::from_str(last)
        .unwrap_or_else(|_| panic!("no summary from wal-player:\n{}", out.stderr));
    let s = &summary["summary"];
    let f = |key: &str| s[key].as_f64().unwrap_or(0.0);
    Played {
        errors: s["errors"].as_u64().unwrap_or(0),
        mb_per_s: f("mb_per_s"),
        p50_ms: f("latency_p50_ms"),
        p99_ms: f("latency_p99_ms"),
    }
}

/// The body of `GET path` from the HTTP listener at `address` (empty if it cannot be had).
pub(crate) fn http_get(address: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(address) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(30)));
    let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    let mut answer = String::new();
    if stream.write_all(request.as_bytes()).is_err() || stream.read_to_string(&mut answer).is_err()
    {
        return String::new();
    }
    answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// `--server`, the `--tls-*` options and `--cluster` of a client of cluster `bench` of
/// `server`.
pub(crate) fn bench_client_args(server: &KlioServer, certs: &TestCerts) -> Vec<std::ffi::OsString> {
    let mut args = server.client_args(certs, "bench");
    args.extend(["--cluster".into(), "bench".into()]);
    args
}

/// The key file [`start_encrypted_server`] makes in `work`.
pub(crate) fn encryption_key(work: &TestDir) -> std::path::PathBuf {
    work.path().join("bench.key")
}

/// A PostgreSQL (with `conf` lines) streaming with `klio send-wal` (cluster `bench`) to a
/// Klio server, encrypted at rest when `encrypted`, all in one [`TestDir`] labelled `label`.
pub(crate) struct KlioStreaming {
    /// `klio send-wal`, started.
    pub(crate) client: SendWal,
    /// The Klio server.
    pub(crate) server: KlioServer,
    /// The certificates (client certificate of `bench`).
    pub(crate) certs: TestCerts,
    /// The klio executable, where the postgres user can run it.
    pub(crate) exe: std::path::PathBuf,
    /// PostgreSQL.
    pub(crate) pg: PgServer,
    /// Everything else.
    pub(crate) work: TestDir,
}

impl KlioStreaming {
    /// Starts PostgreSQL, the server and send-wal with the `klio` binary at `klio`.
    pub(crate) fn start(klio: &Path, label: &str, conf: &[&str], encrypted: bool) -> Self {
        let pg = PgServer::start(PgOptions {
            conf: conf.iter().map(|c| (*c).to_owned()).collect(),
            ..PgOptions::default()
        });
        let work = TestDir::new(label);
        let exe = work.install_exe(klio);
        let certs = TestCerts::create(&exe, &work.subdir("certs"), &["bench"]);
        let server = if encrypted {
            start_encrypted_server(&exe, &work, &certs)
        } else {
            KlioServer::start(&exe, &work, &certs)
        };
        let mut client = SendWal::new(
            &exe,
            &pg,
            &server,
            &certs,
            "bench",
            &[],
            &work.path().join("send-wal.log"),
        );
        client.start();
        Self {
            client,
            server,
            certs,
            exe,
            pg,
            work,
        }
    }
}

/// One PostgreSQL streaming to both receivers at once: `klio send-wal` (application name
/// `klio`, slot `klio`) into a Klio server, and `pg_receivewal --synchronous` (application
/// name `pg_receivewal`, slot `pgrw`) into a directory.
pub(crate) struct BothReceivers {
    // Fields drop in order: the receivers stop before the servers they talk to.
    /// `klio send-wal`.
    pub(crate) klio: SendWal,
    /// `pg_receivewal`.
    pub(crate) pg_receivewal: BackgroundProcess,
    /// The Klio server.
    pub(crate) server: KlioServer,
    /// PostgreSQL (`max_wal_size = 4GB`, `shared_buffers = 256MB`).
    pub(crate) pg: PgServer,
    _work: TestDir,
}

impl BothReceivers {
    /// Starts everything with the `klio` binary at `klio`; `encrypted`: the Klio server
    /// encrypts at rest.
    /// With `placement` pinned, the Klio server and pg_receivewal go to the receiver core.
    pub(crate) fn start(
        klio: &Path,
        label: &str,
        encrypted: bool,
        placement: &crate::layout::Placement,
    ) -> Self {
        let pg = PgServer::start(PgOptions {
            conf: vec![
                "max_wal_size = 4GB".to_owned(),
                "shared_buffers = 256MB".to_owned(),
            ],
            ..PgOptions::default()
        });
        let work = TestDir::new(label);
        let exe = work.install_exe(klio);
        let certs = TestCerts::create(&exe, &work.subdir("certs"), &["bench"]);
        let server = if encrypted {
            start_encrypted_server(&exe, &work, &certs)
        } else {
            KlioServer::start(&exe, &work, &certs)
        };
        if let Some(pid) = server.pid() {
            placement.receiver(pid);
        }
        let mut klio = SendWal::new(
            &exe,
            &pg,
            &server,
            &certs,
            "bench",
            &[],
            &work.path().join("send-wal.log"),
        );
        klio.start();
        pg.create_slot("pgrw");
        let pg_receivewal = start_pg_receivewal(
            &pg,
            &work.subdir("pg_receivewal"),
            "pgrw",
            &work.path().join("pgrw.log"),
        );
        placement.receiver(pg_receivewal.pid());
        Self {
            klio,
            pg_receivewal,
            server,
            pg,
            _work: work,
        }
    }
}

/// Runs pgbench on `pg` until at least `wal_mib` MiB of WAL have been written since `start`
/// (an LSN as PostgreSQL prints it): `pgbench -i` at `scale`, then `-N` in 10 s runs.
pub(crate) fn generate_wal(pg: &PgServer, start: &str, wal_mib: u64, scale: u32) {
    pg.pgbench(&["-i", "-q", "-s", &scale.to_string()]);
    loop {
        let done = wal_bytes(pg, start, &pg.current_lsn());
        eprintln!("generated {} MiB of WAL", done >> 20);
        if done >= wal_mib << 20 {
            break;
        }
        pg.pgbench(&["-N", "-T", "10", "-c", "4", "-j", "2"]);
    }
}

/// Bytes of WAL from `start` to `end` (LSNs as PostgreSQL prints them).
pub(crate) fn wal_bytes(pg: &PgServer, start: &str, end: &str) -> u64 {
    pg.psql(&format!(
        "SELECT pg_wal_lsn_diff('{end}', '{start}')::bigint"
    ))
    .parse()
    .unwrap_or(0)
}
