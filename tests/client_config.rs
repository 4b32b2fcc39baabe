//! Client settings are checked before anything connects: tried as a new user would, a mistyped
//! certificate path, a key of another certificate or a certificate from another CA makes
//! `klio send-wal` exit at once naming the file, with no PostgreSQL running (not retry
//! "could not connect to PostgreSQL"), and makes `klio get-wal` exit with 255 so that
//! PostgreSQL stops recovery.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use klio_testkit::{TestCerts, TestDir, free_tcp_port};

use common::klio_exe;

/// How long a command that fails at start may take: far less than send-wal's first retries.
const AT_ONCE: Duration = Duration::from_secs(10);

struct Exit {
    code: Option<i32>,
    stderr: String,
    took: Duration,
}

/// Runs `cmd` and waits at most [`AT_ONCE`]; a command still running then (retrying) is
/// killed and fails the test.
fn run_briefly(cmd: &mut Command) -> Exit {
    let started = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start klio");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(AT_ONCE) {
        Ok(out) => {
            let out = out.expect("wait for klio");
            Exit {
                code: out.status.code(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                took: started.elapsed(),
            }
        }
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            let stderr = rx
                .recv_timeout(Duration::from_secs(5))
                .ok()
                .and_then(Result::ok)
                .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                .unwrap_or_default();
            panic!("still running after {AT_ONCE:?} (retrying instead of failing?):\n{stderr}");
        }
    }
}

/// A directory with certificates for `pg1` and `pg2`, and one of another CA for `pg1`.
struct Setup {
    work: TestDir,
    exe: PathBuf,
    certs: TestCerts,
    other_ca: TestCerts,
}

fn setup(label: &str) -> Setup {
    let work = TestDir::new(label);
    let exe = klio_exe(&work);
    let certs = TestCerts::create(&exe, &work.subdir("certs"), &["pg1", "pg2"]);
    let other_ca = TestCerts::create(&exe, &work.subdir("other-ca"), &["pg1"]);
    Setup {
        work,
        exe,
        certs,
        other_ca,
    }
}

/// `klio send-wal` for `pg1` towards a PostgreSQL port where nothing listens.
fn send_wal(s: &Setup, ca: &Path, cert: &Path, key: &Path) -> Command {
    let mut cmd = Command::new(&s.exe);
    cmd.args(["send-wal", "-h", "127.0.0.1", "-p"])
        .arg(free_tcp_port().to_string())
        .args(["--cluster", "pg1", "--server", "127.0.0.1:1", "--tls-ca"])
        .arg(ca)
        .arg("--tls-cert")
        .arg(cert)
        .arg("--tls-key")
        .arg(key)
        .args(["--max-reconnect-delay", "1"])
        .current_dir(s.work.path());
    cmd
}

fn assert_failed_at_start(exit: &Exit, names: &str) {
    assert_ne!(exit.code, Some(0), "{}", exit.stderr);
    assert!(exit.took < AT_ONCE, "took {:?}", exit.took);
    assert!(exit.stderr.contains(names), "{}", exit.stderr);
    assert!(
        !exit.stderr.contains("could not connect"),
        "connected before checking the settings:\n{}",
        exit.stderr
    );
}

#[test]
fn send_wal_with_a_mistyped_certificate_path_exits_at_once_naming_it() {
    let s = setup("client-config-typo");
    let typo = s.certs.file("client-pg1.pen");
    let exit = run_briefly(&mut send_wal(
        &s,
        &s.certs.file("ca.pem"),
        &typo,
        &s.certs.file("client-pg1.key"),
    ));
    assert_failed_at_start(&exit, &typo.display().to_string());
    assert!(exit.stderr.contains("No such file"), "{}", exit.stderr);

    // The same mistake in the configuration file, under correct flags for everything else.
    let config = s.work.path().join("klio-config.yaml");
    std::fs::write(
        &config,
        format!(
            "client:\n  cluster_name: pg1\n  wal:\n    address: 127.0.0.1:1\n    \
             server_cert_path: {}\n    client_cert_path: {}\n    client_key_path: {}\n",
            s.certs.file("ca.pem").display(),
            typo.display(),
            s.certs.file("client-pg1.key").display(),
        ),
    )
    .unwrap();
    let exit = run_briefly(
        Command::new(&s.exe)
            .args(["send-wal", "-h", "127.0.0.1", "-p"])
            .arg(free_tcp_port().to_string())
            .arg("--config")
            .arg(&config),
    );
    assert_failed_at_start(&exit, &typo.display().to_string());

    // A variable overrides the file, and a flag the variable.
    let exit = run_briefly(
        Command::new(&s.exe)
            .args(["send-wal", "-h", "127.0.0.1", "-p"])
            .arg(free_tcp_port().to_string())
            .arg("--config")
            .arg(&config)
            .arg("--tls-cert")
            .arg(s.certs.file("client-pg1.pem"))
            .env("KLIO_TLS_KEY", s.certs.file("client-pg1.kye")),
    );
    assert_failed_at_start(&exit, "client-pg1.kye");
}

#[test]
fn send_wal_with_the_key_of_another_certificate_exits_at_once() {
    let s = setup("client-config-key");
    let exit = run_briefly(&mut send_wal(
        &s,
        &s.certs.file("ca.pem"),
        &s.certs.file("client-pg1.pem"),
        &s.certs.file("client-pg2.key"),
    ));
    assert_failed_at_start(&exit, "does not belong to the client certificate");
    assert!(exit.stderr.contains("client-pg2.key"), "{}", exit.stderr);
}

#[test]
fn send_wal_with_a_certificate_from_another_ca_exits_at_once() {
    let s = setup("client-config-ca");
    let exit = run_briefly(&mut send_wal(
        &s,
        &s.certs.file("ca.pem"),
        &s.other_ca.file("client-pg1.pem"),
        &s.other_ca.file("client-pg1.key"),
    ));
    assert_failed_at_start(&exit, "was not issued by the CA");
    assert!(
        exit.stderr
            .contains(&s.other_ca.file("client-pg1.pem").display().to_string()),
        "{}",
        exit.stderr
    );
}

#[test]
fn send_wal_with_an_expired_certificate_exits_at_once_saying_when_it_expired() {
    let s = setup("client-config-expired");
    let (cert, key) = s.certs.issue_expired_client("pg1");
    let exit = run_briefly(&mut send_wal(&s, &s.certs.file("ca.pem"), &cert, &key));
    assert_failed_at_start(&exit, "expired at 2021-01-01T00:00:00Z");
    assert!(
        exit.stderr.contains(&cert.display().to_string())
            && exit.stderr.contains("klio certs renew -D"),
        "{}",
        exit.stderr
    );
}

#[test]
fn get_wal_with_a_mistyped_certificate_path_stops_recovery() {
    let s = setup("client-config-get-wal");
    let typo = s.certs.file("client-pg1.pen");
    let exit = run_briefly(
        Command::new(&s.exe)
            .args(["get-wal", "000000010000000000000001"])
            .arg(s.work.path().join("restored"))
            .args(["--server", "127.0.0.1:1", "--tls-ca"])
            .arg(s.certs.file("ca.pem"))
            .arg("--tls-cert")
            .arg(&typo)
            .arg("--tls-key")
            .arg(s.certs.file("client-pg1.key"))
            .current_dir(s.work.path()),
    );
    // 255, not 1 ("not in the archive"): PostgreSQL must stop, not end recovery early.
    assert_eq!(exit.code, Some(255), "{}", exit.stderr);
    assert!(
        exit.stderr.contains(&typo.display().to_string()),
        "{}",
        exit.stderr
    );
    assert!(exit.took < AT_ONCE, "took {:?}", exit.took);
}
