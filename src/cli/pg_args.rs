//! PostgreSQL connection flags shared by the commands that connect to PostgreSQL.

use std::io::IsTerminal;

use anyhow::Context;
use klio_client::{ConnConfig, ConnParams, PasswordPrompt};

/// Connection flags in pg_receivewal's spelling; PGHOST, PGPORT, PGUSER, PGPASSWORD, PGSSLMODE
/// and the other libpq variables fill in what is not given.
#[derive(Debug, clap::Args)]
pub(crate) struct PgArgs {
    /// Connection string or URI (libpq syntax).
    #[arg(short = 'd', long, value_name = "CONNSTR")]
    dbname: Option<String>,
    /// Database server host or socket directory.
    #[arg(short = 'h', long, value_name = "HOSTNAME")]
    host: Option<String>,
    /// Database server port.
    #[arg(short = 'p', long, value_name = "PORT")]
    port: Option<String>,
    /// Connect as this role.
    #[arg(short = 'U', long, value_name = "NAME")]
    username: Option<String>,
    /// Never prompt for a password (otherwise, from a terminal, Klio asks when the server wants
    /// one that no setting, variable or password file gives).
    #[arg(short = 'w', long, overrides_with = "password")]
    no_password: bool,
    /// Prompt for the password on the terminal before connecting.
    #[arg(short = 'W', long, overrides_with = "no_password")]
    password: bool,
}

impl PgArgs {
    /// Resolves the flags, the connection string and the environment into settings.
    pub(crate) fn resolve(&self) -> anyhow::Result<ConnConfig> {
        self.resolve_as("klio")
    }

    /// Like [`PgArgs::resolve`], with the `application_name` used when none is set
    /// (libpq's `fallback_application_name`).
    pub(crate) fn resolve_as(&self, fallback_application_name: &str) -> anyhow::Result<ConnConfig> {
        let mut params = match &self.dbname {
            Some(s) => ConnParams::parse(s).context("in --dbname")?,
            None => ConnParams::default(),
        };
        if let Some(h) = &self.host {
            params.set("host", h.clone())?;
        }
        if let Some(p) = &self.port {
            params.set("port", p.clone())?;
        }
        if let Some(u) = &self.username {
            params.set("user", u.clone())?;
        }
        if params.get("fallback_application_name").is_none() {
            params.set("fallback_application_name", fallback_application_name)?;
        }
        let mut config = params.resolve(|k| std::env::var(k).ok())?;
        if self.password {
            config.password = Some(super::password_prompt::read("Password: ")?);
        } else if !self.no_password && std::io::stdin().is_terminal() {
            config.password_prompt = Some(PasswordPrompt::new(|| {
                super::password_prompt::read("Password: ")
                    .map_err(|e| tracing::warn!("{e:#}"))
                    .ok()
            }));
        }
        Ok(config)
    }
}

/// The single-threaded runtime every command uses: their work is latency-bound streams whose
/// steps hand data to each other; on one thread those hand-offs are cheapest.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")
}

/// The server's runtime: one worker thread per core. Unlike the commands (one stream each, on
/// one thread), a server serves many clusters at once; on one thread their QUIC work, frame
/// decoding and inline stores would take turns on a single core however many the machine has.
pub(crate) fn server_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let workers = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("klio-server")
        .enable_all()
        .build()
        .context("could not start the async runtime")
}
