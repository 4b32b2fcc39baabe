//! `klio prepare-recovery`.

use std::path::PathBuf;
use std::process::ExitCode;

use super::recovery_args::{RecoveryTargetArgs, get_wal_restore_command};

/// Prepare a restored data directory to recover from the Klio server.
///
/// Writes restore_command (klio get-wal with these server options), the recovery target and
/// recovery.signal (or standby.signal with --standby) into PGDATA; earlier recovery settings in
/// postgresql.auto.conf are replaced. Start PostgreSQL afterwards. Without a target, recovery
/// replays everything the server has, up to the last streamed byte.
///
/// Examples:
///   klio prepare-recovery -D /var/lib/postgresql/15/main --server klio:7470 \
///       --tls-ca ca.pem --tls-cert client.pem --tls-key client.key
///   klio prepare-recovery -D ... --target-time '2026-11-21 09:59:00+00' --target-action promote
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub(crate) struct Args {
    /// The data directory to prepare (PostgreSQL stopped).
    #[arg(short = 'D', long, value_name = "DIR", env = "PGDATA")]
    pgdata: PathBuf,
    /// get-wal: segments to prefetch (0: none).
    #[arg(long, value_name = "N", default_value_t = 8)]
    prefetch: u64,
    /// get-wal: segments fetched at once.
    #[arg(long, value_name = "N", default_value_t = 4)]
    jobs: usize,
    #[command(flatten)]
    recovery: RecoveryTargetArgs,
    #[command(flatten)]
    client: super::client_args::ClientArgs,
}

pub(crate) fn run(a: Args) -> anyhow::Result<ExitCode> {
    // Checked now, so that recovery does not start with a restore_command that cannot work.
    let mut client = a.client.resolve()?;
    let restore_command = get_wal_restore_command(&mut client, a.prefetch, a.jobs)?;
    let config = a.recovery.config(restore_command)?;
    config.apply(&a.pgdata)?;
    println!(
        "{} prepared for recovery from {}; start PostgreSQL to begin",
        a.pgdata.display(),
        client.server.address
    );
    Ok(ExitCode::SUCCESS)
}
