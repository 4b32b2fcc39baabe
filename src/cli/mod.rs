//! Argument definitions and dispatch to the library functions.

mod certs;
mod get_wal;
mod keys;
pub(crate) mod logging;
mod pg_args;
mod prepare_recovery;
mod progress;
mod receive_wal;
mod restore_wal;
mod send_wal;
mod server;
mod server_args;
mod signals;
mod verify;
mod wal_player;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Klio keeps the WAL archive of PostgreSQL clusters: it streams WAL in real time, stores it
/// durably, and serves it back for recovery.
#[derive(Debug, Parser)]
#[command(name = "klio", version, propagate_version = true, max_term_width = 100)]
pub(crate) struct Cli {
    /// More log output (-v: debug, -vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub(crate) quiet: bool,
    /// Log line format on standard error: text, or json (one object per line, with the
    /// cluster's name on every line about a cluster).
    #[arg(
        long,
        global = true,
        value_enum,
        value_name = "FORMAT",
        env = "KLIO_LOG_FORMAT",
        default_value_t
    )]
    pub(crate) log_format: logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Stream WAL from PostgreSQL into a local directory, as pg_receivewal does.
    ReceiveWal(receive_wal::Args),
    /// restore_command for a directory written by receive-wal: copy %f to %p.
    RestoreWal(restore_wal::Args),
    /// Stream WAL from PostgreSQL to a Klio server (zero data loss as synchronous standby).
    SendWal(send_wal::Args),
    /// restore_command served by the Klio server: fetch %f into %p, prefetching ahead.
    GetWal(get_wal::Args),
    /// Prepare a restored data directory to recover from the Klio server (target, signal).
    PrepareRecovery(prepare_recovery::Args),
    /// The Klio server.
    Server(server::Args),
    /// Create a private CA, the server certificate and per-cluster client certificates.
    Certs(certs::Args),
    /// Key files for encryption at rest.
    Keys(keys::Args),
    /// Check a cluster's archive: continuous, intact, and what it can recover.
    Verify(verify::Args),
    /// Benchmark a Klio server: generate synthetic WAL and stream it with many clients.
    WalPlayer(wal_player::Args),
}

pub(crate) fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::ReceiveWal(a) => receive_wal::run(a),
        Command::RestoreWal(a) => restore_wal::run(a),
        Command::SendWal(a) => send_wal::run(a),
        Command::GetWal(a) => get_wal::run(a),
        Command::PrepareRecovery(a) => prepare_recovery::run(a),
        Command::Server(a) => server::run(a),
        Command::Certs(a) => certs::run(a),
        Command::Keys(a) => keys::run(a),
        Command::Verify(a) => verify::run(a),
        Command::WalPlayer(a) => wal_player::run(a),
    }
}
