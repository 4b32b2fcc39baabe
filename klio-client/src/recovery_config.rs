//! Preparing a data directory for recovery: `restore_command`, the target, `recovery.signal`.
//!
//! Settings go to `postgresql.auto.conf`, where the last line for a setting wins; recovery
//! settings left there by an earlier preparation are removed first, because PostgreSQL refuses
//! to start with two kinds of recovery target.

use std::path::{Path, PathBuf};

use klio_wal::{FsAction, FsError, durable};

/// Where recovery stops.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecoveryTarget {
    /// Replay everything in the archive.
    Latest,
    /// Stop at this timestamp (PostgreSQL's `timestamptz` syntax).
    Time(String),
    /// Stop at this LSN.
    Lsn(klio_wal::Lsn),
    /// Stop at this transaction id.
    Xid(u64),
    /// Stop at this named restore point (`pg_create_restore_point`).
    Name(String),
    /// Stop as soon as a consistent state is reached.
    Immediate,
}

/// What PostgreSQL does when it reaches the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TargetAction {
    /// Pause and wait for `pg_wal_replay_resume()` (PostgreSQL's default): lets an operator
    /// check the data before opening for writes.
    #[default]
    Pause,
    /// End recovery and open for writes (a new timeline).
    Promote,
    /// Stop the server.
    Shutdown,
}

impl TargetAction {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Promote => "promote",
            Self::Shutdown => "shutdown",
        }
    }
}

/// Everything written for one recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryConfig {
    /// The `restore_command` (usually `klio get-wal %f %p ...`).
    pub restore_command: String,
    /// Where to stop.
    pub target: RecoveryTarget,
    /// Whether the target itself is included (`recovery_target_inclusive`; default true).
    pub inclusive: bool,
    /// What to do at the target (ignored for [`RecoveryTarget::Latest`]).
    pub action: TargetAction,
    /// `recovery_target_timeline` (default `latest`).
    pub timeline: String,
    /// Write `standby.signal` instead of `recovery.signal` (keep following the archive).
    pub standby: bool,
}

/// Why a data directory could not be prepared.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecoveryConfigError {
    /// Not a PostgreSQL data directory.
    #[error("{0:?} is not a PostgreSQL data directory (no PG_VERSION file)")]
    NotADataDir(PathBuf),
    /// PostgreSQL seems to run on it.
    #[error(
        "{0:?} exists: PostgreSQL seems to be running on this data directory; stop it first \
         (or remove the file if the server is certainly not running)"
    )]
    Running(PathBuf),
    /// A value cannot be written as a setting.
    #[error("invalid {setting}: {reason}")]
    Invalid {
        /// The setting.
        setting: &'static str,
        /// Why.
        reason: String,
    },
    /// Reading or writing failed.
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// Settings this module owns in `postgresql.auto.conf`.
const MANAGED: &[&str] = &[
    "restore_command",
    "recovery_target",
    "recovery_target_time",
    "recovery_target_lsn",
    "recovery_target_xid",
    "recovery_target_name",
    "recovery_target_inclusive",
    "recovery_target_action",
    "recovery_target_timeline",
];

/// The comment above the settings written.
const HEADER: &str = "# Recovery settings written by klio prepare-recovery";

/// A single-quoted configuration value (quotes doubled).
fn quote(setting: &'static str, v: &str) -> Result<String, RecoveryConfigError> {
    if v.contains('\n') || v.contains('\0') {
        return Err(RecoveryConfigError::Invalid {
            setting,
            reason: "it contains a line break or NUL".to_owned(),
        });
    }
    Ok(format!("'{}'", v.replace('\'', "''")))
}

impl RecoveryConfig {
    /// The lines to add to `postgresql.auto.conf`.
    pub fn settings(&self) -> Result<Vec<String>, RecoveryConfigError> {
        let mut out = vec![format!(
            "restore_command = {}",
            quote("restore_command", &self.restore_command)?
        )];
        let target = match &self.target {
            RecoveryTarget::Latest => None,
            RecoveryTarget::Immediate => Some(("recovery_target", "immediate".to_owned())),
            RecoveryTarget::Time(t) => Some(("recovery_target_time", t.clone())),
            RecoveryTarget::Lsn(l) => Some(("recovery_target_lsn", l.to_string())),
            RecoveryTarget::Xid(x) => Some(("recovery_target_xid", x.to_string())),
            RecoveryTarget::Name(n) => Some(("recovery_target_name", n.clone())),
        };
        if let Some((setting, value)) = target {
            out.push(format!("{setting} = {}", quote(setting, &value)?));
            if !matches!(self.target, RecoveryTarget::Immediate) {
                out.push(format!(
                    "recovery_target_inclusive = {}",
                    if self.inclusive { "on" } else { "off" }
                ));
            }
            out.push(format!(
                "recovery_target_action = '{}'",
                self.action.as_str()
            ));
        }
        out.push(format!(
            "recovery_target_timeline = {}",
            quote("recovery_target_timeline", &self.timeline)?
        ));
        Ok(out)
    }

    /// Writes the settings and the signal file into `pgdata`.
    pub fn apply(&self, pgdata: &Path) -> Result<(), RecoveryConfigError> {
        if !pgdata.join("PG_VERSION").is_file() {
            return Err(RecoveryConfigError::NotADataDir(pgdata.to_owned()));
        }
        let pid = pgdata.join("postmaster.pid");
        if pid.exists() {
            return Err(RecoveryConfigError::Running(pid));
        }
        let lines = self.settings()?;
        let auto = pgdata.join("postgresql.auto.conf");
        let existing = match std::fs::read_to_string(&auto) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(FsError::new(FsAction::Read, &auto, e).into()),
        };
        let mut text: String = existing
            .lines()
            .filter(|l| {
                let key = l.split('=').next().unwrap_or("").trim();
                !MANAGED.contains(&key) && *l != HEADER
            })
            .map(|l| format!("{l}\n"))
            .collect();
        text.push_str(HEADER);
        text.push('\n');
        for l in lines {
            text.push_str(&l);
            text.push('\n');
        }
        // PostgreSQL reads the settings at its next start, which may follow a crash: they are
        // there whole (old or new), never torn.
        durable::replace(&auto, text.as_bytes())?;
        let (signal, other) = if self.standby {
            ("standby.signal", "recovery.signal")
        } else {
            ("recovery.signal", "standby.signal")
        };
        let _ = std::fs::remove_file(pgdata.join(other));
        let signal = pgdata.join(signal);
        // The signal file must survive a crash with the settings, or PostgreSQL would start
        // without recovering.
        durable::replace(&signal, b"")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(target: RecoveryTarget) -> RecoveryConfig {
        RecoveryConfig {
            restore_command: "klio get-wal %f %p --tls-ca '/etc/ca.pem'".to_owned(),
            target,
            inclusive: true,
            action: TargetAction::Promote,
            timeline: "latest".to_owned(),
            standby: false,
        }
    }

    #[test]
    fn settings_for_each_target() {
        let s = cfg(RecoveryTarget::Latest).settings().unwrap();
        assert_eq!(
            s,
            [
                "restore_command = 'klio get-wal %f %p --tls-ca ''/etc/ca.pem'''",
                "recovery_target_timeline = 'latest'"
            ]
        );
        let s = cfg(RecoveryTarget::Lsn(klio_wal::Lsn(0x1_0000_0028)))
            .settings()
            .unwrap();
        assert!(
            s.contains(&"recovery_target_lsn = '1/28'".to_owned()),
            "{s:?}"
        );
        assert!(s.contains(&"recovery_target_action = 'promote'".to_owned()));
        let s = cfg(RecoveryTarget::Name("before 'upgrade'".into()))
            .settings()
            .unwrap();
        assert!(s.contains(&"recovery_target_name = 'before ''upgrade'''".to_owned()));
        let s = cfg(RecoveryTarget::Immediate).settings().unwrap();
        assert!(s.contains(&"recovery_target = 'immediate'".to_owned()));
        assert!(!s.iter().any(|l| l.starts_with("recovery_target_inclusive")));
        assert!(
            cfg(RecoveryTarget::Time("2026-11-21\n12:00".into()))
                .settings()
                .is_err()
        );
    }

    #[test]
    fn apply_replaces_earlier_recovery_settings() {
        let d = tempfile::tempdir().unwrap();
        let pg = d.path();
        assert!(matches!(
            cfg(RecoveryTarget::Latest).apply(pg),
            Err(RecoveryConfigError::NotADataDir(_))
        ));
        std::fs::write(pg.join("PG_VERSION"), "15\n").unwrap();
        std::fs::write(
            pg.join("postgresql.auto.conf"),
            "primary_conninfo = 'host=x'\nrecovery_target_xid = '77'\n",
        )
        .unwrap();
        cfg(RecoveryTarget::Time("2026-11-21 12:00:00+00".into()))
            .apply(pg)
            .unwrap();
        let text = std::fs::read_to_string(pg.join("postgresql.auto.conf")).unwrap();
        assert!(text.contains("primary_conninfo = 'host=x'"), "{text}");
        assert!(!text.contains("recovery_target_xid"), "{text}");
        assert!(text.contains("recovery_target_time = '2026-11-21 12:00:00+00'"));
        assert!(pg.join("recovery.signal").is_file());

        let mut standby = cfg(RecoveryTarget::Latest);
        standby.standby = true;
        standby.apply(pg).unwrap();
        assert!(pg.join("standby.signal").is_file());
        assert!(!pg.join("recovery.signal").exists());
        let text = std::fs::read_to_string(pg.join("postgresql.auto.conf")).unwrap();
        assert!(!text.contains("recovery_target_time "), "{text}");
        assert_eq!(text.matches("restore_command").count(), 1, "{text}");

        std::fs::write(pg.join("postmaster.pid"), "123\n").unwrap();
        assert!(matches!(
            standby.apply(pg),
            Err(RecoveryConfigError::Running(_))
        ));
    }
}
