//! `klio send-wal`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use klio_client::send_wal::{SendWalOptions, send_wal};
use klio_client::server_link::ClientIdentity;

/// Stream WAL from PostgreSQL to a Klio server, in real time.
///
/// Runs next to PostgreSQL as a replication client (application_name "klio"), creates its
/// physical slot if missing, and reports WAL to PostgreSQL as flushed only once the Klio server
/// has it on stable storage: with synchronous_standby_names = 'klio' no committed transaction
/// can be lost. Reconnects to both sides by itself; resumes exactly where the server's archive
/// ends.
#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true)]
pub(crate) struct Args {
    /// Print help (-h is --host, as in pg_receivewal).
    #[arg(short = '?', long, action = clap::ArgAction::Help)]
    help: Option<bool>,
    #[command(flatten)]
    pg: super::pg_args::PgArgs,
    /// Physical replication slot to stream from (created if missing).
    #[arg(
        short = 'S',
        long,
        value_name = "SLOTNAME",
        default_value = "klio",
        env = "KLIO_SLOT"
    )]
    slot: String,
    /// Seconds between status updates sent to PostgreSQL when nothing else happens.
    #[arg(short = 's', long, value_name = "SECS", default_value_t = 10)]
    status_interval: u64,
    /// Longest wait between reconnection attempts, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    max_reconnect_delay: u64,
    /// Serve Prometheus metrics (/metrics) and a health probe (/healthz: 200 while streaming)
    /// over HTTP on this TCP address [default: none].
    #[arg(long, value_name = "IP:PORT|off", env = "KLIO_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    #[command(flatten)]
    client: super::client_args::ClientArgs,
}

pub(crate) fn run(a: Args) -> anyhow::Result<ExitCode> {
    // Before PostgreSQL is reached: a wrong path or certificate fails here, at once, and is
    // not hidden behind retries of an unreachable database.
    let client = a.client.resolve()?;
    let cluster = client.cluster()?.clone();
    let pg = a.pg.resolve()?;
    let opts = SendWalOptions {
        pg,
        server: client.server,
        cluster,
        slot: a.slot,
        status_interval: Duration::from_secs(a.status_interval.max(1)),
        reconnect_min: Duration::from_millis(500),
        reconnect_max: Duration::from_secs(a.max_reconnect_delay.max(1)),
        metrics_listen: match a.metrics_listen.as_deref() {
            Some(text) => {
                klio_server::config::parse_metrics_listen(text).context("in --metrics-listen")?
            }
            None => None,
        },
    };
    super::pg_args::runtime()?.block_on(async move {
        let shutdown = super::signals::shutdown_on_stop_signal();
        let server = opts.server.clone();
        // Every connection to the server reads the files anew; SIGHUP checks them at once.
        super::signals::reload_on_hangup(move || match ClientIdentity::load(&server) {
            Ok(_) => tracing::info!(
                "SIGHUP: the certificate {} and key {} check out; the next connection to the server presents them, the established one keeps its session",
                server.cert.display(),
                server.key.display()
            ),
            Err(e) => tracing::error!(
                "SIGHUP: {}; the established connection keeps its session, but a new one cannot be made (send-wal retries) until this is fixed",
                klio_wal::ErrorChain(&e)
            ),
        });
        send_wal(&opts, shutdown).await?;
        Ok(ExitCode::SUCCESS)
    })
}
