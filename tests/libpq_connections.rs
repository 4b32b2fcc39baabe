//! Connecting to PostgreSQL as libpq does, with pg_receivewal 15 as the judge: both are run
//! with the same settings (klio under the name `pg_receivewal`) and must reach the same server
//! or fail for the same reason. Host lists with `target_session_attrs`, client certificates with
//! `cert` authentication and revocation lists, the password file and its permissions, and the
//! password prompt when the server wants a password nothing gives.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use klio_testkit::{
    Auth, PASSWORD, PgCertificates, PgOptions, PgServer, SEND_WAL_SLOT, SendWal, TestDir,
    as_postgres, free_tcp_port, pg_bin, run, wait_until,
};

/// klio, linked under the name `pg_receivewal` in a directory of its own.
fn klio_as_pg_receivewal(work: &TestDir) -> PathBuf {
    let exe = klio_exe(work);
    let link = work.subdir("bin").join("pg_receivewal");
    std::os::unix::fs::symlink(&exe, &link).expect("link klio as pg_receivewal");
    link
}

/// `program --create-slot -S slot -w -d conninfo`, as `postgres`, with `env` set: exit code
/// and standard error. Never a prompt: without `-w`, pg_receivewal would ask for a missing
/// password on standard input.
fn create_slot(
    program: &Path,
    conninfo: &str,
    slot: &str,
    env: &[(&str, &str)],
) -> (Option<i32>, String) {
    let mut cmd = as_postgres(program);
    cmd.args(["--create-slot", "-S", slot, "-w", "-d", conninfo])
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run(&mut cmd);
    (out.code, out.stderr)
}

/// Which of `servers` holds the slot `slot`, if one does.
fn holder(servers: &[&PgServer], slot: &str) -> Option<usize> {
    let held: Vec<usize> = servers
        .iter()
        .enumerate()
        .filter(|(_, pg)| {
            pg.psql(&format!(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'"
            )) == "1"
        })
        .map(|(i, _)| i)
        .collect();
    assert!(held.len() <= 1, "{slot} on several servers: {held:?}");
    held.first().copied()
}

fn both(work: &TestDir) -> [(PathBuf, &'static str); 2] {
    [
        (klio_as_pg_receivewal(work), "ours"),
        (pg_bin("pg_receivewal"), "theirs"),
    ]
}

#[test]
fn several_hosts_are_tried_in_order_until_one_is_what_target_session_attrs_asks_for() {
    let primary = PgServer::start(PgOptions::default());
    let standby = PgServer::standby_of(&primary);
    let work = TestDir::new("libpq-hosts");
    let programs = both(&work);
    let (p, s, dead) = (primary.port(), standby.port(), free_tcp_port());
    const PRIMARY: Option<usize> = Some(0);
    const STANDBY: Option<usize> = Some(1);
    // The ports tried in order, the attribute, and the server reached or the reason given.
    type Case<'a> = (&'a [u16], &'a str, Result<Option<usize>, &'a str>);
    let cases: [Case<'_>; 10] = [
        (&[dead, s, p], "read-write", Ok(PRIMARY)),
        (&[p, s], "read-only", Ok(STANDBY)),
        (&[s, p], "primary", Ok(PRIMARY)),
        (&[p, s], "standby", Ok(STANDBY)),
        (&[dead, p], "any", Ok(PRIMARY)),
        (&[s, p], "any", Ok(STANDBY)),
        (&[p, s], "prefer-standby", Ok(STANDBY)),
        (&[dead, p], "prefer-standby", Ok(PRIMARY)),
        (&[p], "standby", Err("server is not in hot standby mode")),
        (&[s], "read-write", Err("session is read-only")),
    ];
    for (i, (ports, attrs, expected)) in cases.iter().enumerate() {
        let hosts = vec!["127.0.0.1"; ports.len()].join(",");
        let ports = ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let conninfo =
            format!("host={hosts} port={ports} target_session_attrs={attrs} user=postgres");
        for (program, tag) in &programs {
            let slot = format!("{tag}_{i}");
            let (code, stderr) = create_slot(program, &conninfo, &slot, &[]);
            let found = holder(&[&primary, &standby], &slot);
            match expected {
                Ok(server) => {
                    assert_eq!(code, Some(0), "{tag}, {conninfo}: {stderr}");
                    assert_eq!(found, *server, "{tag}, {conninfo}: {stderr}");
                }
                Err(reason) => {
                    assert_eq!(code, Some(1), "{tag}, {conninfo}: {stderr}");
                    assert_eq!(found, None, "{tag}, {conninfo}");
                    assert!(stderr.contains(reason), "{tag}, {conninfo}: {stderr}");
                }
            }
        }
    }
}

/// `key` copied to `name` in the certificates' directory with permissions `mode`.
fn key_copy(certs: &PgCertificates, key: &Path, name: &str, mode: u32) -> PathBuf {
    let copy = certs.file(name);
    std::fs::copy(key, &copy).expect("copy the client key");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(mode)).expect("chmod");
    run(std::process::Command::new("chown")
        .args(["postgres:postgres"])
        .arg(&copy));
    copy
}

#[test]
fn client_certificates_pass_cert_authentication_and_revoked_or_exposed_ones_are_refused() {
    let mut pg = PgServer::start(PgOptions::default());
    let work = TestDir::new("libpq-certs");
    let certs = PgCertificates::new(&work.subdir("certs"));
    pg.require_client_certificates(&certs);
    let (cert, key) = certs.client("postgres");
    let exposed_key = key_copy(&certs, &key, "exposed.key", 0o644);
    let crl = certs.crl_revoking_server();
    let server = format!(
        "host=127.0.0.1 port={} user=postgres sslmode=verify-full sslrootcert={}",
        pg.port(),
        certs.ca_cert().display()
    );
    let with_cert = format!(
        "{server} sslcert={} sslkey={}",
        cert.display(),
        key.display()
    );
    let cases = [
        (with_cert.clone(), Ok(())),
        (
            server.clone(),
            Err("connection requires a valid client certificate"),
        ),
        (
            format!(
                "{server} sslcert={} sslkey={}",
                cert.display(),
                exposed_key.display()
            ),
            Err("has group or world access"),
        ),
        // pg_receivewal says "certificate verify failed"; klio says it was revoked (below).
        (
            format!("{with_cert} sslcrl={}", crl.display()),
            Err("certificate"),
        ),
    ];
    let programs = both(&work);
    for (i, (conninfo, expected)) in cases.iter().enumerate() {
        for (program, tag) in &programs {
            let slot = format!("{tag}_{i}");
            let (code, stderr) = create_slot(program, conninfo, &slot, &[]);
            let found = holder(&[&pg], &slot);
            match expected {
                Ok(()) => {
                    assert_eq!(code, Some(0), "{tag}, {conninfo}: {stderr}");
                    assert_eq!(found, Some(0), "{tag}, {conninfo}");
                }
                Err(reason) => {
                    assert_eq!(code, Some(1), "{tag}, {conninfo}: {stderr}");
                    assert_eq!(found, None, "{tag}, {conninfo}");
                    assert!(
                        stderr.to_lowercase().contains(reason),
                        "{tag}, {conninfo}: {stderr}"
                    );
                }
            }
            if *tag == "ours" && i == 3 {
                assert!(stderr.to_lowercase().contains("revoked"), "{stderr}");
            }
        }
    }
    // pg_receivewal decrypts keys with sslpassword; klio refuses it and says what to do.
    let (ours, _) = &programs[0];
    let (code, stderr) = create_slot(ours, &format!("{with_cert} sslpassword=x"), "pw", &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("sslpassword is not supported") && stderr.contains("openssl pkey"),
        "{stderr}"
    );
}

#[test]
fn a_private_password_file_is_used_and_one_others_can_read_is_ignored_with_libpqs_warning() {
    let pg = PgServer::start(PgOptions {
        auth: Auth::Scram,
        ..PgOptions::default()
    });
    let work = TestDir::new("libpq-passfile");
    let passfile = work.path().join("pgpass");
    std::fs::write(
        &passfile,
        format!(
            "# a comment\n127.0.0.1:{}:postgres:postgres:not-this-one\n*:{}:replication:postgres:{PASSWORD}\n",
            pg.port(),
            pg.port()
        ),
    )
    .expect("write the password file");
    run(std::process::Command::new("chown")
        .args(["postgres:postgres"])
        .arg(&passfile));
    let passfile = passfile.to_str().expect("UTF-8").to_owned();
    let conninfo = format!("host=127.0.0.1 port={} user=postgres", pg.port());
    let programs = both(&work);
    for (mode, works) in [(0o600, true), (0o644, false)] {
        std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(mode)).expect("chmod");
        for (program, tag) in &programs {
            for (how, conninfo, env) in [
                (
                    "passfile",
                    format!("{conninfo} passfile={passfile}"),
                    vec![],
                ),
                (
                    "PGPASSFILE",
                    conninfo.clone(),
                    vec![("PGPASSFILE", passfile.as_str())],
                ),
            ] {
                let slot = format!("{tag}_{how}_{mode:o}").to_lowercase();
                let (code, stderr) = create_slot(program, &conninfo, &slot, &env);
                assert_eq!(
                    (code == Some(0), holder(&[&pg], &slot).is_some()),
                    (works, works),
                    "{tag}, {how}, mode {mode:o}: {stderr}"
                );
                if !works {
                    assert!(
                        stderr.contains(
                            "has group or world access; permissions should be u=rw (0600) or less"
                        ),
                        "{tag}: {stderr}"
                    );
                }
            }
        }
    }
}

/// Runs `program args` on a terminal of its own (`script`), as `postgres`, answers its
/// password prompt with `answer` once it appears, and returns its exit code and what the
/// terminal showed.
fn run_on_a_terminal(program: &Path, args: &[&str], answer: Option<&str>) -> (Option<i32>, String) {
    let command_line = std::iter::once(program.to_str().expect("UTF-8 path"))
        .chain(args.iter().copied())
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = as_postgres("script")
        .args(["-qec", &command_line, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run script");
    let shown = Arc::new(Mutex::new(String::new()));
    let reader = {
        let shown = Arc::clone(&shown);
        let mut stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                shown.lock().expect("terminal output").push_str(&text);
            }
        })
    };
    let mut stdin = child.stdin.take().expect("piped stdin");
    if let Some(answer) = answer {
        wait_until("the password prompt", Duration::from_secs(60), || {
            shown
                .lock()
                .expect("terminal output")
                .contains("Password: ")
                .then_some(())
        });
        stdin
            .write_all(format!("{answer}\n").as_bytes())
            .expect("type the password");
    }
    let code = wait_until("the command to exit", Duration::from_secs(120), || {
        child.try_wait().expect("wait for script")
    });
    drop(stdin);
    reader.join().expect("terminal reader");
    let shown = shown.lock().expect("terminal output").clone();
    (code.code(), shown)
}

#[test]
fn a_password_the_server_asks_for_and_nothing_gives_is_asked_for_on_the_terminal() {
    let pg = PgServer::start(PgOptions {
        auth: Auth::Scram,
        ..PgOptions::default()
    });
    let work = TestDir::new("libpq-prompt");
    let conninfo = format!("host=127.0.0.1 port={} user=postgres", pg.port());
    for (program, tag) in both(&work) {
        let slot = format!("{tag}_prompted");
        let (code, shown) = run_on_a_terminal(
            &program,
            &["--create-slot", "-S", &slot, "-d", &conninfo],
            Some(PASSWORD),
        );
        assert_eq!(code, Some(0), "{tag}: {shown}");
        assert_eq!(holder(&[&pg], &slot), Some(0), "{tag}: {shown}");
        assert!(
            !shown.contains(PASSWORD),
            "{tag} echoed the password: {shown}"
        );

        let slot = format!("{tag}_never");
        let (code, shown) = run_on_a_terminal(
            &program,
            &["--create-slot", "-S", &slot, "-w", "-d", &conninfo],
            None,
        );
        assert_eq!(code, Some(1), "{tag}: {shown}");
        assert!(
            !shown.contains("Password: "),
            "{tag}: -w never asks: {shown}"
        );
        assert_eq!(holder(&[&pg], &slot), None);
    }
}

#[test]
fn a_service_file_gives_the_settings_and_connect_timeout_ends_a_silent_server() {
    let pg = PgServer::start(PgOptions::default());
    let work = TestDir::new("libpq-service");
    let programs = both(&work);
    let services = work.path().join("pg_service.conf");
    // A server that accepts TCP connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a silent port");
    let silent_port = silent.local_addr().expect("its address").port();
    std::fs::write(
        &services,
        format!(
            "# services of the test\n[main]\nhost=127.0.0.1\nport={}\nuser=postgres\n\n\
             [silent]\nhost=127.0.0.1\nport={silent_port}\nconnect_timeout=2\n",
            pg.port()
        ),
    )
    .expect("write the service file");
    run(std::process::Command::new("chown")
        .args(["postgres:postgres"])
        .arg(&services));
    let services = services.to_str().expect("UTF-8");
    for (program, tag) in &programs {
        let env = [("PGSERVICEFILE", services)];
        let slot = format!("{tag}_service");
        let (code, stderr) = create_slot(program, "service=main", &slot, &env);
        assert_eq!(code, Some(0), "{tag}: {stderr}");
        assert_eq!(holder(&[&pg], &slot), Some(0), "{tag}: {stderr}");
        let slot = format!("{tag}_pgservice");
        let env = [("PGSERVICEFILE", services), ("PGSERVICE", "main")];
        let (code, stderr) = create_slot(program, "", &slot, &env);
        assert_eq!(code, Some(0), "{tag}: {stderr}");
        assert_eq!(holder(&[&pg], &slot), Some(0), "{tag}: {stderr}");

        let started = std::time::Instant::now();
        let (code, stderr) = create_slot(program, "service=silent", "never", &env);
        let took = started.elapsed();
        assert_eq!(code, Some(1), "{tag}: {stderr}");
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(30),
            "{tag}: {took:?}: {stderr}"
        );
        assert!(stderr.contains("time"), "{tag} names the timeout: {stderr}");
    }
    drop(silent);
}

#[test]
fn send_wal_and_backup_authenticate_with_client_certificates_too() {
    let mut stack = stack("libpq-cert-stack").without_send_wal().start();
    let certs = PgCertificates::new(&stack.work.subdir("pg-certs"));
    stack.pg.require_client_certificates(&certs);
    let (cert, key) = certs.client("postgres");
    let conninfo = format!(
        "host=127.0.0.1 port={} user=postgres sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
        stack.pg.port(),
        certs.ca_cert().display(),
        cert.display(),
        key.display()
    );
    // The stack's own -d (trust over TCP, now refused) is overridden by the one given last.
    stack.client = SendWal::new(
        &stack.exe,
        &stack.pg,
        &stack.server,
        &stack.certs,
        &stack.cluster,
        &["-d".into(), conninfo.clone().into()],
        &stack.work.path().join("send-wal-cert.log"),
    );
    stack.client.start();
    stack.pg.psql("CREATE TABLE t AS SELECT 1 AS n");
    let lsn = stack.pg.current_lsn();
    stack.pg.wait_for_flush(SEND_WAL_SLOT, &lsn);
    assert_eq!(
        stack.pg.psql(
            "SELECT ssl::text || ' ' || client_dn FROM pg_stat_ssl JOIN pg_stat_replication USING (pid)"
        ),
        "true /CN=postgres",
        "send-wal streams over TLS as the certificate's role"
    );
    let info = backups::backup(&stack, &["-d", &conninfo]);
    assert!(!info.id.is_empty(), "{info:?}");
}
