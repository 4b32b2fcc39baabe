//! `klio prepare-recovery`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use klio_client::recovery_config::{RecoveryConfig, RecoveryTarget, TargetAction};

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
#[command(group(clap::ArgGroup::new("target").multiple(false)))]
pub(crate) struct Args {
    /// The data directory to prepare (PostgreSQL stopped).
    #[arg(short = 'D', long, value_name = "DIR", env = "PGDATA")]
    pgdata: PathBuf,
    /// Stop at this time (e.g. '2026-11-21 09:59:00+00').
    #[arg(long, value_name = "TIMESTAMP", group = "target")]
    target_time: Option<String>,
    /// Stop at this LSN (e.g. 0/3000060).
    #[arg(long, value_name = "LSN", group = "target")]
    target_lsn: Option<String>,
    /// Stop at this transaction id.
    #[arg(long, value_name = "XID", group = "target")]
    target_xid: Option<u64>,
    /// Stop at this restore point (pg_create_restore_point).
    #[arg(long, value_name = "NAME", group = "target")]
    target_name: Option<String>,
    /// Stop as soon as the data is consistent.
    #[arg(long, group = "target")]
    target_immediate: bool,
    /// Stop just before the target instead of just after it.
    #[arg(long)]
    target_exclusive: bool,
    /// What to do at the target.
    #[arg(long, value_enum, default_value = "pause")]
    target_action: Action,
    /// recovery_target_timeline: latest, current, or a timeline id.
    #[arg(long, value_name = "TLI", default_value = "latest")]
    target_timeline: String,
    /// Keep following the archive as a standby (standby.signal) instead of recovering once.
    #[arg(long, conflicts_with = "target")]
    standby: bool,
    /// get-wal: segments to prefetch (0: none).
    #[arg(long, value_name = "N", default_value_t = 8)]
    prefetch: u64,
    /// get-wal: segments fetched at once.
    #[arg(long, value_name = "N", default_value_t = 4)]
    jobs: usize,
    #[command(flatten)]
    client: super::client_args::ClientArgs,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Action {
    Pause,
    Promote,
    Shutdown,
}

/// Quotes a word for the shell that runs restore_command.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:=@%+,".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

pub(crate) fn run(a: Args) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find the klio executable")?;
    // Checked now, so that recovery does not start with a restore_command that cannot work.
    let mut client = a.client.resolve()?;
    // restore_command runs in the data directory: the paths must not depend on where this runs.
    let server = &mut client.server;
    for p in [&mut server.ca, &mut server.cert, &mut server.key] {
        *p = std::path::absolute(&*p).with_context(|| format!("resolving {}", p.display()))?;
    }
    let mut words = vec![
        exe.to_string_lossy().into_owned(),
        "get-wal".to_owned(),
        "%f".to_owned(),
        "%p".to_owned(),
    ];
    words.extend(
        client
            .to_args()
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned()),
    );
    words.extend([
        "--prefetch".to_owned(),
        a.prefetch.to_string(),
        "--jobs".to_owned(),
        a.jobs.to_string(),
    ]);
    let restore_command = words
        .iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ");
    let target = if let Some(t) = a.target_time {
        RecoveryTarget::Time(t)
    } else if let Some(l) = a.target_lsn {
        RecoveryTarget::Lsn(l.parse().with_context(|| format!("--target-lsn {l}"))?)
    } else if let Some(x) = a.target_xid {
        RecoveryTarget::Xid(x)
    } else if let Some(n) = a.target_name {
        RecoveryTarget::Name(n)
    } else if a.target_immediate {
        RecoveryTarget::Immediate
    } else {
        RecoveryTarget::Latest
    };
    let config = RecoveryConfig {
        restore_command,
        target,
        inclusive: !a.target_exclusive,
        action: match a.target_action {
            Action::Pause => TargetAction::Pause,
            Action::Promote => TargetAction::Promote,
            Action::Shutdown => TargetAction::Shutdown,
        },
        timeline: a.target_timeline,
        standby: a.standby,
    };
    config.apply(&a.pgdata)?;
    println!(
        "{} prepared for recovery from {}; start PostgreSQL to begin",
        a.pgdata.display(),
        client.server.address
    );
    Ok(ExitCode::SUCCESS)
}
