//! A `klio server start` process with its own certificates, data directory and UDP port,
//! restartable after kill -9 on the same port and data.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::command::{as_postgres, run_ok, wait_until};
use crate::process::BackgroundProcess;
use crate::test_dir::TestDir;

/// Certificates made with `klio certs`.
#[derive(Debug, Clone)]
pub struct TestCerts {
    /// The directory.
    pub dir: PathBuf,
}

impl TestCerts {
    /// `klio certs init` plus a client certificate for each of `clusters`.
    pub fn create(exe: &Path, dir: &Path, clusters: &[&str]) -> Self {
        run_ok(Command::new(exe).args(["certs", "init", "-D"]).arg(dir));
        for c in clusters {
            run_ok(
                Command::new(exe)
                    .args(["certs", "client", "--cluster", c, "-D"])
                    .arg(dir),
            );
        }
        // The client runs as postgres next to PostgreSQL; let it read its files.
        run_ok(
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir),
        );
        Self {
            dir: dir.to_owned(),
        }
    }

    /// Path of a file in the directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `expired-<cluster>.pem` and `.key`: a client certificate for `cluster` from this CA
    /// whose validity ended in 2021; returns their paths.
    pub fn issue_expired_client(&self, cluster: &str) -> (PathBuf, PathBuf) {
        let read = |name: &str| std::fs::read_to_string(self.file(name)).expect("read the test CA");
        let ca_key = rcgen::KeyPair::from_pem(&read("ca.key")).expect("the test CA's key");
        let issuer = rcgen::Issuer::from_ca_cert_pem(&read("ca.pem"), ca_key).expect("the test CA");
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("certificate parameters");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("klio@{cluster}"));
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let key = rcgen::KeyPair::generate().expect("a key");
        let cert = params.signed_by(&key, &issuer).expect("sign");
        let (cert_path, key_path) = (
            self.file(&format!("expired-{cluster}.pem")),
            self.file(&format!("expired-{cluster}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).expect("write the certificate");
        std::fs::write(&key_path, key.serialize_pem()).expect("write the key");
        (cert_path, key_path)
    }
}

/// A running (or killed) Klio server.
#[derive(Debug)]
pub struct KlioServer {
    exe: PathBuf,
    certs: TestCerts,
    data_dir: PathBuf,
    log: PathBuf,
    port: u16,
    metrics_port: u16,
    process: Option<BackgroundProcess>,
    starts: u32,
    extra_args: Vec<std::ffi::OsString>,
    env: Vec<(String, String)>,
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral UDP port")
}

/// A TCP port that was free a moment ago.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral TCP port")
}

impl KlioServer {
    /// Starts a server with data in `work/server-data`.
    pub fn start(exe: &Path, work: &TestDir, certs: &TestCerts) -> Self {
        Self::start_with_args(exe, work, certs, &[])
    }

    /// Like [`KlioServer::start`], with extra `server start` flags (kept across restarts).
    pub fn start_with_args(
        exe: &Path,
        work: &TestDir,
        certs: &TestCerts,
        extra_args: &[&std::ffi::OsStr],
    ) -> Self {
        Self::start_with_env(exe, work, certs, extra_args, &[])
    }

    /// Like [`KlioServer::start_with_args`], with environment variables for the server (kept
    /// across restarts; see [`KlioServer::set_env`]).
    pub fn start_with_env(
        exe: &Path,
        work: &TestDir,
        certs: &TestCerts,
        extra_args: &[&std::ffi::OsStr],
        env: &[(&str, &str)],
    ) -> Self {
        let mut s = Self {
            exe: exe.to_owned(),
            certs: certs.clone(),
            data_dir: work.subdir("server-data"),
            log: work.path().join("server.log"),
            port: free_udp_port(),
            metrics_port: free_tcp_port(),
            process: None,
            starts: 0,
            extra_args: extra_args.iter().map(|a| a.to_os_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        s.restart();
        s
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:<port>` of the metrics listener (`/metrics`, `/healthz`, `/status`).
    pub fn metrics_address(&self) -> String {
        format!("127.0.0.1:{}", self.metrics_port)
    }

    /// The running server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(BackgroundProcess::pid)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The WAL archive directory of `cluster`.
    pub fn wal_dir(&self, cluster: &str) -> PathBuf {
        self.data_dir.join("clusters").join(cluster).join("wal")
    }

    /// `--server` and the `--tls-*` options of a client of `cluster`.
    pub fn client_args(&self, certs: &TestCerts, cluster: &str) -> Vec<std::ffi::OsString> {
        vec![
            "--server".into(),
            self.address().into(),
            "--tls-ca".into(),
            certs.file("ca.pem").into(),
            "--tls-cert".into(),
            certs.file(&format!("client-{cluster}.pem")).into(),
            "--tls-key".into(),
            certs.file(&format!("client-{cluster}.key")).into(),
        ]
    }

    /// The whole server log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Starts the server (again), on the same port and data, and waits until it listens.
    pub fn restart(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill9();
        }
        self.starts += 1;
        let marker = format!("---- start {} ----\n", self.starts);
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .and_then(|mut f| std::io::Write::write_all(&mut f, marker.as_bytes()))
            .expect("write server log");
        let mut cmd = self.command();
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info");
        self.process = Some(BackgroundProcess::spawn("klio server", &mut cmd, &self.log));
        let log = self.log.clone();
        let marker_len = marker.len();
        wait_until("klio server to listen", Duration::from_secs(30), || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let since = text
                .rfind(&marker)
                .map(|i| &text[i + marker_len..])
                .unwrap_or("");
            since.contains("listening on").then_some(())
        });
    }

    /// Replaces the extra `server start` flags used by the next [`KlioServer::restart`].
    pub fn set_extra_args(&mut self, extra_args: &[&std::ffi::OsStr]) {
        self.extra_args = extra_args.iter().map(|a| a.to_os_string()).collect();
    }

    /// Sets an environment variable for the next [`KlioServer::restart`] (and later ones).
    pub fn set_env(&mut self, name: &str, value: &str) {
        self.env.retain(|(k, _)| k != name);
        self.env.push((name.to_owned(), value.to_owned()));
    }

    /// The `klio server start` command [`KlioServer::restart`] runs, to run by hand (as the
    /// postgres user, without the environment set by [`KlioServer::set_env`]).
    pub fn command(&self) -> Command {
        let mut cmd = as_postgres(&self.exe);
        cmd.args(["server", "start", "--listen", &self.address(), "--data-dir"])
            .arg(&self.data_dir)
            .arg("--tls-ca")
            .arg(self.certs.file("ca.pem"))
            .arg("--tls-cert")
            .arg(self.certs.file("server.pem"))
            .arg("--tls-key")
            .arg(self.certs.file("server.key"))
            .args(["--metrics-listen", &self.metrics_address()])
            .args(&self.extra_args);
        cmd
    }

    /// SIGKILL: no chance to flush or close anything.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill9();
        }
    }

    /// Sends a signal ("STOP", "CONT", ...) to the server process.
    pub fn signal(&self, signal: &str) {
        if let Some(p) = &self.process {
            p.signal(signal);
        }
    }

    /// SIGINT and wait.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop();
        }
    }
}
