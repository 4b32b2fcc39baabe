//! The whole setup of an end-to-end test in one builder: a PostgreSQL 15 primary (and a
//! standby if asked), certificates from `klio certs`, a `klio server` and a `klio send-wal`
//! streaming to it.
//!
//! ```no_run
//! # let klio = std::path::Path::new("target/debug/klio");
//! let stack = klio_testkit::Stack::builder("rpo0", klio)
//!     .segment_size_mb(1)
//!     .sync_standby()
//!     .encryption()
//!     .start();
//! stack.pg.psql("CREATE TABLE t AS SELECT 1 AS x");
//! ```
//!
//! Everything lives in one [`TestDir`] (the klio executable, certificates, the server's data
//! and every log) except each PostgreSQL server's own directory; all of it is stopped and
//! removed when the [`Stack`] is dropped.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::key_file::KeyFile;
use crate::klio_server::{KlioServer, TestCerts};
use crate::pg::{PgOptions, PgServer};
use crate::send_wal::{SEND_WAL_SLOT, SendWal};
use crate::test_dir::TestDir;

/// How the Klio server stores WAL at rest.
#[derive(Debug, Clone)]
enum Encryption {
    /// Compressed, not encrypted.
    Off,
    /// Encrypted with a random key in `wal.key`.
    RandomKey,
    /// Encrypted with a key derived from `passphrase`, which the server reads from `var`.
    PassphraseKey { var: String, passphrase: String },
}

/// Whether `start` starts send-wal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SendWalAtStart {
    Started,
    NotYet,
}

/// Where send-wal streams from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Primary,
    Standby,
}

/// Builds a [`Stack`]; [`Stack::builder`] makes one.
#[derive(Debug, Clone)]
#[must_use = "call start() to start the stack"]
pub struct StackBuilder {
    label: String,
    klio: PathBuf,
    pg: PgOptions,
    cluster: String,
    source: Source,
    encryption: Encryption,
    synchronous: bool,
    server_args: Vec<OsString>,
    server_config: Option<String>,
    send_wal: SendWalAtStart,
    send_wal_args: Vec<OsString>,
}

/// A running stack. Fields drop in order: send-wal first, PostgreSQL and the files last.
#[derive(Debug)]
pub struct Stack {
    /// `klio send-wal` from the source server (the standby if there is one) to `server`.
    pub client: SendWal,
    /// The Klio server.
    pub server: KlioServer,
    /// The streaming standby of `pg`, when built with [`StackBuilder::standby`].
    pub standby: Option<PgServer>,
    /// The PostgreSQL primary.
    pub pg: PgServer,
    /// The server key, when built with encryption.
    pub key: Option<KeyFile>,
    /// The CA, the server's certificate and the client certificate of `cluster`.
    pub certs: TestCerts,
    /// The cluster name send-wal streams as.
    pub cluster: String,
    /// The klio executable, copied where the postgres user can run it.
    pub exe: PathBuf,
    /// The directory holding everything else.
    pub work: TestDir,
}

impl Stack {
    /// A stack labelled `label` (it shows up in the temporary directories' names) running the
    /// klio executable `klio`: by default PostgreSQL with 16 MiB segments and no synchronous
    /// standby, cluster `pg1`, a server without encryption and a started send-wal.
    pub fn builder(label: &str, klio: &Path) -> StackBuilder {
        StackBuilder {
            label: label.to_owned(),
            klio: klio.to_owned(),
            pg: PgOptions::default(),
            cluster: "pg1".to_owned(),
            source: Source::Primary,
            encryption: Encryption::Off,
            synchronous: false,
            server_args: Vec::new(),
            server_config: None,
            send_wal: SendWalAtStart::Started,
            send_wal_args: Vec::new(),
        }
    }

    /// Where [`StackBuilder::server_config`] writes the server's YAML file (rewrite it and
    /// restart the server to change its settings).
    pub fn server_config_path(work: &TestDir) -> PathBuf {
        work.path().join("server.yaml")
    }

    /// `--server`, the `--tls-*` options and `--cluster` of a client of the stack's cluster.
    pub fn client_args(&self) -> Vec<OsString> {
        let mut args = self.server.client_args(&self.certs, &self.cluster);
        args.extend(["--cluster".into(), self.cluster.clone().into()]);
        args
    }
}

impl StackBuilder {
    /// Starts the server with this YAML as its `--config` file (the flags the stack sets
    /// still win over it), for settings that have no flag, like `retention`.
    pub fn server_config(mut self, yaml: &str) -> Self {
        self.server_config = Some(yaml.to_owned());
        self
    }

    /// WAL segments of `mb` MiB (`initdb --wal-segsize`).
    pub fn segment_size_mb(mut self, mb: u32) -> Self {
        self.pg.wal_segsize_mb = mb;
        self
    }

    /// `synchronous_standby_names = 'klio'`: every commit waits for send-wal; `start` returns
    /// once send-wal is the synchronous standby.
    pub fn sync_standby(mut self) -> Self {
        self.synchronous = true;
        self.conf(&format!("synchronous_standby_names = '{SEND_WAL_SLOT}'"))
    }

    /// A `postgresql.conf` line for the primary.
    pub fn conf(mut self, line: &str) -> Self {
        self.pg.conf.push(line.to_owned());
        self
    }

    /// The cluster name (and client certificate) send-wal uses, instead of `pg1`.
    pub fn cluster(mut self, name: &str) -> Self {
        name.clone_into(&mut self.cluster);
        self
    }

    /// A streaming standby of the primary (`pg_basebackup -R`); send-wal streams from it.
    pub fn standby(mut self) -> Self {
        self.source = Source::Standby;
        self
    }

    /// The server encrypts with a random key, generated into `wal.key` ([`Stack::key`]).
    pub fn encryption(mut self) -> Self {
        self.encryption = Encryption::RandomKey;
        self
    }

    /// The server encrypts with a passphrase key in `wal.kek` ([`Stack::key`]), the passphrase
    /// in its environment as `var`.
    pub fn passphrase_encryption(mut self, var: &str, passphrase: &str) -> Self {
        self.encryption = Encryption::PassphraseKey {
            var: var.to_owned(),
            passphrase: passphrase.to_owned(),
        };
        self
    }

    /// Extra `klio server start` flags (kept across restarts).
    pub fn server_args<S: Into<OsString>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.server_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Extra `klio send-wal` flags.
    pub fn send_wal_args<S: Into<OsString>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.send_wal_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// `start` leaves send-wal unstarted; the test starts it with `stack.client.start()`.
    pub fn without_send_wal(mut self) -> Self {
        self.send_wal = SendWalAtStart::NotYet;
        self
    }

    /// Starts everything, in the order a deployment would: PostgreSQL (and its standby),
    /// certificates, the key, the server, then send-wal; with a synchronous standby
    /// configured, waits until send-wal is it.
    pub fn start(self) -> Stack {
        let pg = PgServer::start(self.pg);
        let standby = (self.source == Source::Standby).then(|| PgServer::standby_of(&pg));
        let work = TestDir::new(&self.label);
        let exe = work.install_exe(&self.klio);
        let certs = TestCerts::create(&exe, &work.subdir("certs"), &[&self.cluster]);
        let mut server_args = self.server_args;
        if let Some(yaml) = &self.server_config {
            let path = Stack::server_config_path(&work);
            std::fs::write(&path, yaml).expect("write the server's config file");
            server_args.extend(["--config".into(), path.into()]);
        }
        let mut server_env: Vec<(String, String)> = Vec::new();
        let key = match self.encryption {
            Encryption::Off => None,
            Encryption::RandomKey => Some(KeyFile::generate(&exe, &work.path().join("wal.key"))),
            Encryption::PassphraseKey { var, passphrase } => {
                let key = KeyFile::generate_with_passphrase(
                    &exe,
                    &work.path().join("wal.kek"),
                    &var,
                    &passphrase,
                );
                server_env.push((var, passphrase));
                Some(key)
            }
        };
        if let Some(k) = &key {
            server_args.extend(["--encryption-key".into(), k.path.clone().into()]);
        }
        let server_args: Vec<&std::ffi::OsStr> =
            server_args.iter().map(OsString::as_os_str).collect();
        let server_env: Vec<(&str, &str)> = server_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let server = KlioServer::start_with_env(&exe, &work, &certs, &server_args, &server_env);
        let source = standby.as_ref().unwrap_or(&pg);
        let mut client = SendWal::new(
            &exe,
            source,
            &server,
            &certs,
            &self.cluster,
            &self.send_wal_args,
            &work.path().join("send-wal.log"),
        );
        if self.send_wal == SendWalAtStart::Started {
            client.start();
            if self.synchronous {
                source.wait_for_sync_standby(SEND_WAL_SLOT);
            }
        }
        Stack {
            client,
            server,
            standby,
            pg,
            key,
            certs,
            cluster: self.cluster,
            exe,
            work,
        }
    }
}
