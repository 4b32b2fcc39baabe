//! Real PostgreSQL servers for tests.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::command::{Output, as_postgres, run, run_ok, wait_until};
use crate::test_dir::{TestDir, give_to_postgres};

/// The directory with the PostgreSQL 15 binaries (`KLIO_PG_BIN` overrides it).
pub fn pg_bin(tool: &str) -> PathBuf {
    let dir = std::env::var_os("KLIO_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
    let p = dir.join(tool);
    assert!(
        p.exists(),
        "{} not found: install PostgreSQL 15 (Debian package postgresql-15) or set KLIO_PG_BIN",
        p.display()
    );
    p
}

/// How clients authenticate over TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Auth {
    /// No password.
    Trust,
    /// `password` (cleartext) method.
    Cleartext,
    /// `md5` method with an md5-hashed password.
    Md5,
    /// `scram-sha-256`.
    Scram,
}

/// Options for a new server.
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// WAL segment size in MiB (`initdb --wal-segsize`).
    pub wal_segsize_mb: u32,
    /// Authentication method for TCP connections (replication included).
    pub auth: Auth,
    /// Extra `postgresql.conf` lines.
    pub conf: Vec<String>,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            wal_segsize_mb: 16,
            auth: Auth::Trust,
            conf: Vec::new(),
        }
    }
}

/// The password of the `postgres` role when [`PgOptions::auth`] asks for one.
pub const PASSWORD: &str = "klio-test-secret";

/// A running PostgreSQL server in a temporary directory, stopped and removed on drop.
#[derive(Debug)]
pub struct PgServer {
    dir: TestDir,
    port: u16,
    stopped: bool,
}

impl PgServer {
    /// initdb and start a primary with `wal_level=replica`.
    pub fn start(opts: PgOptions) -> Self {
        let dir = TestDir::new("pg");
        let data = dir.path().join("data");
        let mut initdb = as_postgres(pg_bin("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C"])
            .arg(format!("--wal-segsize={}", opts.wal_segsize_mb));
        if opts.auth != Auth::Trust {
            let pwfile = dir.path().join("pwfile");
            std::fs::write(&pwfile, PASSWORD).expect("write password file");
            give_to_postgres(&pwfile);
            initdb.arg(format!("--pwfile={}", pwfile.display()));
        }
        run_ok(&mut initdb);
        let method = match opts.auth {
            Auth::Trust => "trust",
            Auth::Cleartext => "password",
            Auth::Md5 => "md5",
            Auth::Scram => "scram-sha-256",
        };
        let hba = format!(
            "local all all trust\nlocal replication all trust\n\
             host all all 127.0.0.1/32 {method}\nhost replication all 127.0.0.1/32 {method}\n"
        );
        std::fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        let mut conf = String::new();
        let enc = if opts.auth == Auth::Md5 {
            "md5"
        } else {
            "scram-sha-256"
        };
        for line in [
            "wal_level = replica",
            "max_wal_senders = 10",
            "max_replication_slots = 10",
            "fsync = on",
            "wal_keep_size = 0",
            "shared_buffers = 64MB",
            "max_connections = 40",
            "log_line_prefix = '%m [%p] %a '",
            "log_replication_commands = on",
        ] {
            let _ = writeln!(conf, "{line}");
        }
        let _ = writeln!(conf, "password_encryption = '{enc}'");
        for line in &opts.conf {
            let _ = writeln!(conf, "{line}");
        }
        append_conf(&data, &conf);
        let mut s = Self {
            dir,
            port: 0,
            stopped: true,
        };
        s.start_existing();
        if opts.auth == Auth::Md5 {
            // initdb stored the password with the default (scram) method; md5 needs an md5 hash.
            s.psql(&format!("ALTER ROLE postgres PASSWORD '{PASSWORD}'"));
        }
        s
    }

    /// A streaming standby of `primary`, from `pg_basebackup -R`.
    pub fn standby_of(primary: &Self) -> Self {
        let dir = TestDir::new("standby");
        let data = dir.path().join("data");
        run_ok(
            as_postgres(pg_bin("pg_basebackup"))
                .arg("-D")
                .arg(&data)
                .args(["-X", "stream", "-R", "--no-sync", "-c", "fast"])
                .args(["-h", &primary.socket_dir(), "-p", &primary.port.to_string()])
                .args(["-U", "postgres"]),
        );
        let mut s = Self {
            dir,
            port: 0,
            stopped: true,
        };
        s.start_existing();
        s
    }

    /// Starts a server on the data directory `data` that a test prepared (for example a
    /// restored base backup), owning `dir`.
    pub fn start_in(dir: TestDir) -> Self {
        let mut s = Self {
            dir,
            port: 0,
            stopped: true,
        };
        s.start_existing();
        s
    }

    fn start_existing(&mut self) {
        // A restart keeps its port, so that clients reconnect to the same address.
        let mut port = if self.port == 0 {
            free_port()
        } else {
            self.port
        };
        for _ in 0..5 {
            self.port = port;
            port = free_port();
            let log = self.log_path();
            let sock = self.socket_dir();
            let out = run(as_postgres(pg_bin("pg_ctl"))
                .arg("-D")
                .arg(self.data_dir())
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "120", "start", "-o"])
                .arg(format!(
                    "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={sock}",
                    self.port
                )));
            if out.success() {
                self.stopped = false;
                return;
            }
            if !self.log().contains("could not bind") {
                panic!(
                    "pg_ctl start failed: {}\n{}\nserver log:\n{}",
                    out.stdout,
                    out.stderr,
                    self.log()
                );
            }
        }
        panic!("could not find a free port for PostgreSQL");
    }

    /// Starts the server again after [`PgServer::stop`] or [`PgServer::kill9`], on the same
    /// port when it is still free.
    pub fn restart(&mut self) {
        if !self.stopped {
            self.stop();
        }
        self.start_existing();
    }

    /// A clean, fast shutdown.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        run_ok(
            as_postgres(pg_bin("pg_ctl"))
                .arg("-D")
                .arg(self.data_dir())
                .args(["-w", "-t", "60", "-m", "fast", "stop"]),
        );
        self.stopped = true;
    }

    /// Crashes the server: SIGKILL to the postmaster and every backend.
    pub fn kill9(&mut self) {
        if self.stopped {
            return;
        }
        let pid_file = self.data_dir().join("postmaster.pid");
        let pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.lines().next().map(str::to_owned))
            .expect("postmaster.pid");
        // Kill the children first so none survives the postmaster and keeps writing.
        let _ = run(Command::new("pkill").args(["-9", "-P", &pid]));
        let _ = run(Command::new("kill").args(["-9", &pid]));
        let _ = run(Command::new("pkill").args(["-9", "-P", &pid]));
        wait_until("postmaster to die", Duration::from_secs(30), || {
            (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
        });
        self.stopped = true;
    }

    /// `pg_ctl promote`, waiting until the server accepts writes.
    pub fn promote(&self) {
        run_ok(
            as_postgres(pg_bin("pg_ctl"))
                .arg("-D")
                .arg(self.data_dir())
                .args(["-w", "-t", "120", "promote"]),
        );
    }

    /// Appends lines to `postgresql.conf` and reloads.
    pub fn set_conf(&self, lines: &str) {
        append_conf(&self.data_dir(), lines);
        self.psql("SELECT pg_reload_conf()");
    }

    /// Runs SQL through `psql -XAtq` over the Unix socket and returns its trimmed output.
    pub fn psql(&self, sql: &str) -> String {
        let out = self.try_psql(sql);
        assert!(
            out.success(),
            "psql failed for {sql:?}: {}\nserver log:\n{}",
            out.stderr,
            self.log_tail()
        );
        out.stdout.trim().to_owned()
    }

    /// Like [`PgServer::psql`] but returns the output whatever happened.
    pub fn try_psql(&self, sql: &str) -> Output {
        run(as_postgres(pg_bin("psql"))
            .args(["-XAtq", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", &self.socket_dir(), "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-c", sql]))
    }

    /// `pg_dumpall` of the whole cluster, for before/after comparisons.
    pub fn dumpall(&self) -> String {
        run_ok(
            as_postgres(pg_bin("pg_dumpall"))
                .args(["-h", &self.socket_dir(), "-p", &self.port.to_string()])
                // A fixed key: by default every dump carries a random \restrict key.
                .args(["-U", "postgres", "--restrict-key=klio"]),
        )
        .stdout
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The Unix socket directory (usable as a `host`).
    pub fn socket_dir(&self) -> String {
        self.dir.path().display().to_string()
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The temporary directory holding everything of this server.
    pub fn dir(&self) -> &TestDir {
        &self.dir
    }

    /// A libpq connection string over TCP.
    pub fn tcp_connstr(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    /// A libpq connection string over the Unix socket.
    pub fn socket_connstr(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.socket_dir(),
            self.port
        )
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The whole server log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The last 200 lines of the server log.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<_> = log.lines().collect();
        lines[lines.len().saturating_sub(200)..].join("\n")
    }

    /// The current WAL insert position, `pg_current_wal_lsn()`.
    pub fn current_lsn(&self) -> String {
        self.psql("SELECT pg_current_wal_lsn()")
    }

    /// Creates a physical replication slot that reserves WAL at once.
    pub fn create_slot(&self, slot: &str) {
        self.psql(&format!(
            "SELECT pg_create_physical_replication_slot('{slot}', true)"
        ));
    }

    /// Waits until the client with `application_name` reports `flush_lsn >= target`.
    pub fn wait_for_flush(&self, application_name: &str, target: &str) {
        wait_until(
            &format!("{application_name} to flush up to {target}"),
            Duration::from_secs(180),
            || {
                let ok = self.psql(&format!(
                    "SELECT coalesce(bool_or(flush_lsn >= '{target}'::pg_lsn), false) \
                     FROM pg_stat_replication WHERE application_name = '{application_name}'"
                ));
                (ok == "t").then_some(())
            },
        );
    }

    /// Waits until this server (a standby) has replayed WAL up to `target`.
    pub fn wait_for_replay(&self, target: &str) {
        wait_until(
            &format!("replay up to {target}"),
            Duration::from_secs(180),
            || {
                let ok = self.psql(&format!(
                    "SELECT coalesce(pg_last_wal_replay_lsn() >= '{target}'::pg_lsn, false)"
                ));
                (ok == "t").then_some(())
            },
        );
    }

    /// Waits until the client with `application_name` is this server's synchronous standby.
    pub fn wait_for_sync_standby(&self, application_name: &str) {
        wait_until(
            &format!("{application_name} to become the synchronous standby"),
            Duration::from_secs(60),
            || {
                let s = self.psql(&format!(
                    "SELECT sync_state FROM pg_stat_replication \
                     WHERE application_name = '{application_name}'"
                ));
                (s == "sync").then_some(())
            },
        );
    }

    /// `pg_basebackup --wal-method=none` into `dest`: the backup needs an archive to recover.
    pub fn base_backup_without_wal(&self, dest: &Path) {
        run_ok(
            as_postgres(pg_bin("pg_basebackup"))
                .arg("-D")
                .arg(dest)
                .args(["--wal-method=none", "-c", "fast", "--no-sync"])
                .args(["-h", &self.socket_dir(), "-p", &self.port.to_string()])
                .args(["-U", "postgres"]),
        );
    }

    /// After a crash: replaces the data directory with `backup`, configures archive recovery
    /// with `restore_command` (and no synchronous standby), starts the server and waits until
    /// recovery has ended and it accepts writes.
    pub fn recover_from_backup(&mut self, backup: &Path, restore_command: &str) {
        self.replace_data_with_backup(backup);
        self.configure_archive_recovery(restore_command);
        self.start_and_finish_recovery();
    }

    /// With the server stopped: `recovery.signal` and `restore_command` in its data directory.
    pub fn configure_archive_recovery(&self, restore_command: &str) {
        let data = self.data_dir();
        std::fs::write(data.join("recovery.signal"), b"").expect("write recovery.signal");
        give_to_postgres(&data.join("recovery.signal"));
        append_conf(
            &data,
            &format!(
                "restore_command = '{}'",
                restore_command.replace('\'', "''")
            ),
        );
    }

    /// After a crash or stop: replaces the data directory with a copy of `backup`, with no
    /// synchronous standby configured (nothing would acknowledge commits after recovery).
    /// Configure recovery, then call [`PgServer::start_and_finish_recovery`].
    pub fn replace_data_with_backup(&mut self, backup: &Path) {
        assert!(
            self.stopped,
            "stop or kill9 the server before replacing its data"
        );
        let data = self.data_dir();
        std::fs::remove_dir_all(&data).expect("delete PGDATA");
        run_ok(as_postgres("cp").arg("-a").arg(backup).arg(&data));
        append_conf(&data, "synchronous_standby_names = ''");
    }

    /// Starts on the existing data directory and waits until recovery has ended and the
    /// server accepts writes.
    pub fn start_and_finish_recovery(&mut self) {
        self.start_existing();
        wait_until("recovery to finish", Duration::from_secs(300), || {
            let r = self.try_psql("SELECT pg_is_in_recovery()");
            (r.success() && r.stdout.trim() == "f").then_some(())
        });
    }

    /// Runs pgbench against the `postgres` database; panics with its output if it fails.
    pub fn pgbench(&self, args: &[&str]) -> Output {
        run_ok(
            as_postgres(pg_bin("pgbench"))
                .args(["-h", &self.socket_dir(), "-p", &self.port.to_string()])
                .args(["-U", "postgres"])
                .args(args)
                .arg("postgres"),
        )
    }

    /// `pg_switch_wal()`, to complete the current segment.
    pub fn switch_wal(&self) -> String {
        self.psql("SELECT pg_switch_wal()")
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- PostgreSQL log ({}) ----\n{}\n---- end of log ----",
                self.log_path().display(),
                self.log_tail()
            );
        }
        if !self.stopped {
            let _ = run(as_postgres(pg_bin("pg_ctl"))
                .arg("-D")
                .arg(self.data_dir())
                .args(["-w", "-t", "30", "-m", "immediate", "stop"]));
        }
    }
}

pub(crate) fn append_conf(data: &Path, lines: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))
        .expect("open postgresql.conf");
    writeln!(f, "{lines}").expect("write postgresql.conf");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}
