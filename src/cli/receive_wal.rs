//! `klio receive-wal`: flags as pg_receivewal's.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use klio_client::receive::{ReceiveOptions, create_slot, receive_wal};

/// Stream WAL from a PostgreSQL server into a directory, byte for byte as pg_receivewal.
///
/// Segments are written as <name>.partial, pre-padded with zeros, and renamed when complete.
/// Streaming resumes from the newest file in the directory, else from the slot's restart
/// position, else from the server's current position. Connection settings follow libpq:
/// -d takes a connection string or URI, and PGHOST, PGPORT, PGUSER, PGPASSWORD, PGSSLMODE and
/// friends are honoured.
#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true)]
pub(crate) struct Args {
    /// Print help (-h is --host, as in pg_receivewal).
    #[arg(short = '?', long, action = clap::ArgAction::Help)]
    help: Option<bool>,
    /// Receive WAL files into this directory.
    #[arg(
        short = 'D',
        long,
        value_name = "DIR",
        required_unless_present = "create_slot"
    )]
    directory: Option<PathBuf>,
    /// Replication slot to use (physical).
    #[arg(short = 'S', long, value_name = "SLOTNAME")]
    slot: Option<String>,
    #[command(flatten)]
    pg: super::pg_args::PgArgs,
    /// fsync WAL as soon as it is received and report it flushed, so the receiver can be a
    /// synchronous standby (synchronous_standby_names = 'klio').
    #[arg(long)]
    synchronous: bool,
    /// Exit on the first connection loss instead of reconnecting.
    #[arg(short = 'n', long)]
    no_loop: bool,
    /// Create the replication slot named by --slot, then exit.
    #[arg(long, requires = "slot")]
    create_slot: bool,
    /// With --create-slot: succeed if the slot already exists.
    #[arg(long, requires = "create_slot")]
    if_not_exists: bool,
    /// Seconds between status updates sent to the server (0 disables periodic updates).
    #[arg(short = 's', long, value_name = "SECS", default_value_t = 10)]
    status_interval: u64,
    /// Seconds to wait before reconnecting after a connection loss.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    reconnect_delay: u64,
}

pub(crate) fn run(a: Args) -> anyhow::Result<ExitCode> {
    let conn = a.pg.resolve()?;
    let runtime = super::pg_args::runtime()?;
    runtime.block_on(async move {
        if a.create_slot {
            let slot = a.slot.as_deref().unwrap_or_default();
            if create_slot(&conn, slot, a.if_not_exists).await? {
                tracing::info!(slot, "created replication slot");
            }
            return Ok(ExitCode::SUCCESS);
        }
        let directory = a.directory.context("--directory is required")?;
        let opts = ReceiveOptions {
            conn,
            directory,
            slot: a.slot,
            synchronous: a.synchronous,
            no_loop: a.no_loop,
            status_interval: Duration::from_secs(a.status_interval),
            reconnect_delay: Duration::from_secs(a.reconnect_delay.max(1)),
        };
        let shutdown = super::signals::shutdown_on_stop_signal();
        receive_wal(&opts, shutdown).await?;
        Ok(ExitCode::SUCCESS)
    })
}
