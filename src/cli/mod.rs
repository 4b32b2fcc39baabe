//! Argument definitions and dispatch to the library functions.

mod backup;
mod certs;
mod client_args;
mod compress_option;
mod get_wal;
mod keys;
pub(crate) mod logging;
mod password_prompt;
mod pg_args;
mod pg_receivewal;
mod prepare_recovery;
mod progress;
mod receive_wal;
mod recovery_args;
mod restore;
mod restore_wal;
mod retention;
mod send_wal;
mod server;
mod signals;
mod status;
mod verify;
mod wal_player;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use klio_wal::ErrorChain;

pub(crate) use pg_receivewal::run_as_pg_receivewal;

/// Klio keeps the WAL archive of PostgreSQL clusters: it streams WAL in real time, stores it
/// durably, and serves it back for recovery.
#[derive(Debug, Parser)]
#[command(
    name = "klio",
    version,
    propagate_version = true,
    max_term_width = 100,
    args_override_self = true
)]
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
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    // Each command's help (summary and details) is the doc comment of its `Args`.
    ReceiveWal(receive_wal::Args),
    RestoreWal(restore_wal::Args),
    SendWal(send_wal::Args),
    GetWal(get_wal::Args),
    PrepareRecovery(prepare_recovery::Args),
    Restore(restore::Args),
    Server(server::Args),
    Backup(backup::Args),
    Retention(retention::Args),
    Certs(certs::Args),
    Keys(keys::Args),
    Status(status::Args),
    Verify(verify::Args),
    WalPlayer(wal_player::Args),
}

/// Which command a program name stands for: klio's own, or a PostgreSQL tool it replaces.
pub(crate) enum Personality {
    Klio,
    PgReceivewal,
}

impl Personality {
    /// The personality of the name klio was run as (`argv[0]`, any directory left out).
    pub(crate) fn of(argv0: Option<&OsString>) -> Self {
        let name = argv0
            .map(std::path::Path::new)
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str());
        match name {
            Some("pg_receivewal") => Self::PgReceivewal,
            _ => Self::Klio,
        }
    }
}

/// Prints a command's final error and, where one applies, the hint that says what to do.
pub(crate) fn report(e: &anyhow::Error) {
    // A log collector gets the final error as a JSON line too; the chain shows each cause
    // once, since a message never repeats its source.
    logging::error(&ErrorChain(e.as_ref()).to_string());
    if let Some(hint) = hint_for(e) {
        logging::hint(&hint);
    }
}

fn hint_for(e: &anyhow::Error) -> Option<String> {
    e.chain().find_map(|cause| {
        if let Some(usage) = cause.downcast_ref::<receive_wal::UsageError>() {
            return usage.wants_help_hint().then(receive_wal::help_hint);
        }
        cause
            .downcast_ref::<klio_client::receive::ReceiveError>()
            .and_then(klio_client::receive::ReceiveError::hint)
            .map(str::to_owned)
    })
}

pub(crate) fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::ReceiveWal(a) => receive_wal::run(a),
        Command::RestoreWal(a) => restore_wal::run(a),
        Command::SendWal(a) => send_wal::run(a),
        Command::GetWal(a) => get_wal::run(a),
        Command::PrepareRecovery(a) => prepare_recovery::run(a),
        Command::Restore(a) => restore::run(a),
        Command::Server(a) => server::run(a),
        Command::Backup(a) => backup::run(a),
        Command::Retention(a) => retention::run(a),
        Command::Certs(a) => certs::run(a),
        Command::Keys(a) => keys::run(a),
        Command::Status(a) => status::run(a),
        Command::Verify(a) => verify::run(a),
        Command::WalPlayer(a) => wal_player::run(a),
    }
}
