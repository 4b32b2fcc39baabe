//! `klio retention run`.

use std::io::Write;
use std::process::ExitCode;

use klio_client::backup::{catalog, render_report};

/// Retention: remove the backups, WAL and blocks a cluster's policy no longer needs.
///
/// Policies live in the server's config (`retention:` with keep_backups, recovery_window,
/// min_backups, per cluster under `clusters:`). The server enforces them on its own every
/// retention.interval and after each completed backup; `klio retention run` asks it to now.
/// WAL follows the backups: a segment goes only when no retained backup's recovery path, by
/// LSN and timeline, needs it. Blocks go only when no retained or running backup refers to
/// them. Pinned backups (`klio backup pin`) are never removed.
///
/// Examples:
///   klio retention run --dry-run
///   klio retention run --output json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    Run(RunArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    /// For a person.
    Text,
    /// The report (schema 1), for scripts.
    Json,
}

/// Enforce the cluster's retention policy now, through the server (so it never races the WAL
/// writer or a running backup), and print what went and why the rest stays.
///
/// The report lists every backup (removed, or kept and why), the WAL removed per timeline with
/// the first segment kept and why, the blocks and pack files reclaimed, the oldest point a
/// restore can still reach, and the server's free disk space. --dry-run prints the same
/// report of what would go, and removes nothing.
///
/// Examples:
///   klio retention run --cluster pg-main --dry-run
///   klio retention run --output json | jq '.blocks.bytes'
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
struct RunArgs {
    /// Only report what would be removed.
    #[arg(long)]
    dry_run: bool,
    /// text for a terminal, json for scripts.
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(flatten)]
    client: super::client_args::ClientArgs,
}

pub(crate) fn run(a: Args) -> anyhow::Result<ExitCode> {
    let Command::Run(a) = a.command;
    let client = a.client.resolve()?;
    client.cluster()?;
    let report = super::pg_args::runtime()?.block_on(catalog::run_retention(&client, a.dry_run))?;
    let mut out = std::io::stdout().lock();
    match a.output {
        Output::Text => write!(out, "{}", render_report(&report))?,
        Output::Json => {
            out.write_all(&report.to_json())?;
            writeln!(out)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
