//! The recovery options `klio prepare-recovery` and `klio restore` share: where recovery
//! stops, what PostgreSQL does there, and the `klio get-wal` restore_command.

use anyhow::Context;
use klio_client::client_config::ClientConfig;
use klio_client::recovery_config::{RecoveryConfig, RecoveryTarget, TargetAction};

/// Where recovery stops. Without a target, recovery replays everything the server has, up
/// to the last streamed byte.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Recovery target")]
#[command(group(clap::ArgGroup::new("target").multiple(false)))]
pub(crate) struct RecoveryTargetArgs {
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
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Action {
    Pause,
    Promote,
    Shutdown,
}

impl RecoveryTargetArgs {
    /// The target given (`Latest` without one).
    fn target(&self) -> anyhow::Result<RecoveryTarget> {
        Ok(if let Some(t) = &self.target_time {
            RecoveryTarget::Time(t.clone())
        } else if let Some(l) = &self.target_lsn {
            RecoveryTarget::Lsn(l.parse().with_context(|| format!("--target-lsn {l}"))?)
        } else if let Some(x) = self.target_xid {
            RecoveryTarget::Xid(x)
        } else if let Some(n) = &self.target_name {
            RecoveryTarget::Name(n.clone())
        } else if self.target_immediate {
            RecoveryTarget::Immediate
        } else {
            RecoveryTarget::Latest
        })
    }

    /// The recovery settings with `restore_command`.
    pub(crate) fn config(&self, restore_command: String) -> anyhow::Result<RecoveryConfig> {
        Ok(RecoveryConfig {
            restore_command,
            target: self.target()?,
            inclusive: !self.target_exclusive,
            action: match self.target_action {
                Action::Pause => TargetAction::Pause,
                Action::Promote => TargetAction::Promote,
                Action::Shutdown => TargetAction::Shutdown,
            },
            timeline: self.target_timeline.clone(),
            standby: self.standby,
        })
    }
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

/// The restore_command `klio get-wal %f %p` with `client`'s settings as flags, so that it needs
/// no file and no environment; the certificate paths of `client` are made absolute, since
/// restore_command runs in the data directory.
pub(crate) fn get_wal_restore_command(
    client: &mut ClientConfig,
    prefetch: u64,
    jobs: usize,
) -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("cannot find the klio executable")?;
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
        prefetch.to_string(),
        "--jobs".to_owned(),
        jobs.to_string(),
    ]);
    Ok(words
        .iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" "))
}
