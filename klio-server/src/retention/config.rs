//! The `retention` section of the server's YAML file: a server-wide policy, per-cluster
//! overrides, and when retention runs.
//!
//! ```yaml
//! retention:
//!   keep_backups: 7          # the newest 7 complete backups
//!   recovery_window: 14d     # and every backup needed to recover to any point of 14 days
//!   min_backups: 1           # never fewer than this (default 1)
//!   interval: 1h             # how often it runs on its own (`off`: only after backups and
//!                            # with `klio retention run`)
//!   after_backup: true       # also run as soon as a backup completes
//!   block_grace: 1h          # blocks are reclaimed only from packs older than this
//!   disk_warning: 90%        # warn (logs, metrics, `klio status`) above this much used space
//!   clusters:
//!     pg-main: {keep_backups: 2}   # per cluster; unset keys come from the server-wide ones
//! ```
//!
//! Without `keep_backups` and `recovery_window` a cluster has no policy: no backup and no WAL
//! is removed (blocks of backups deleted by hand are still reclaimed).

use std::collections::BTreeMap;
use std::time::Duration;

use klio_proto::klio::ClusterName;
use serde::Deserialize;

use crate::config::ConfigError;

/// How often retention runs unless configured.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(3600);
/// The grace period of blocks unless configured.
pub const DEFAULT_BLOCK_GRACE: Duration = Duration::from_secs(3600);
/// Used space (percent) above which the server warns unless configured.
pub const DEFAULT_DISK_WARNING_PERCENT: u8 = 90;

/// The YAML `retention` section. Unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSection {
    /// Server-wide `keep_backups`.
    pub keep_backups: Option<u32>,
    /// Server-wide `recovery_window` (`7d`, `36h`).
    pub recovery_window: Option<String>,
    /// Server-wide `min_backups`.
    pub min_backups: Option<u32>,
    /// `1h`, or `off`.
    pub interval: Option<String>,
    /// Run after each completed backup (default true).
    pub after_backup: Option<bool>,
    /// `1h`, `0s`.
    pub block_grace: Option<String>,
    /// `90%`.
    pub disk_warning: Option<String>,
    /// Per-cluster policies.
    #[serde(default)]
    pub clusters: BTreeMap<String, PolicySection>,
}

/// A policy in YAML (server-wide keys of [`RetentionSection`], or one cluster's).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// `keep_backups`.
    pub keep_backups: Option<u32>,
    /// `recovery_window`.
    pub recovery_window: Option<String>,
    /// `min_backups`.
    pub min_backups: Option<u32>,
}

/// A cluster's policy, resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterPolicy {
    /// Keep the newest N complete backups.
    pub keep_backups: Option<u32>,
    /// Keep what recovery to any point of this window needs.
    pub recovery_window: Option<Duration>,
    /// The floor.
    pub min_backups: u32,
}

/// Resolved retention settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionConfig {
    /// How often retention runs on its own; `None`: never on a schedule.
    pub interval: Option<Duration>,
    /// Whether a completed backup starts a run of its cluster.
    pub after_backup: bool,
    /// Blocks are reclaimed only from packs older than this.
    pub block_grace: Duration,
    /// Used space, in percent, above which the server warns.
    pub disk_warning_percent: u8,
    /// The server-wide policy.
    pub default: ClusterPolicy,
    /// Per-cluster policies (every key set, the server-wide values filled in).
    pub clusters: BTreeMap<ClusterName, ClusterPolicy>,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            interval: Some(DEFAULT_INTERVAL),
            after_backup: true,
            block_grace: DEFAULT_BLOCK_GRACE,
            disk_warning_percent: DEFAULT_DISK_WARNING_PERCENT,
            default: ClusterPolicy {
                keep_backups: None,
                recovery_window: None,
                min_backups: 1,
            },
            clusters: BTreeMap::new(),
        }
    }
}

impl RetentionConfig {
    /// The policy of `cluster`.
    pub fn policy(&self, cluster: &ClusterName) -> ClusterPolicy {
        self.clusters.get(cluster).copied().unwrap_or(self.default)
    }

    /// Resolves the YAML section (`None`: all defaults, no policy).
    pub fn resolve(section: Option<RetentionSection>) -> Result<Self, ConfigError> {
        let Some(s) = section else {
            return Ok(Self::default());
        };
        let defaults = Self::default();
        let interval = match s.interval.as_deref() {
            None => defaults.interval,
            Some(t) if t.eq_ignore_ascii_case("off") => None,
            Some(t) => Some(duration("retention.interval", t)?).filter(|d| !d.is_zero()),
        };
        let block_grace = match s.block_grace.as_deref() {
            None => defaults.block_grace,
            Some(t) => duration("retention.block_grace", t)?,
        };
        let disk_warning_percent = match s.disk_warning.as_deref() {
            None => defaults.disk_warning_percent,
            Some(t) => percent("retention.disk_warning", t)?,
        };
        let default = policy(
            "retention",
            &PolicySection {
                keep_backups: s.keep_backups,
                recovery_window: s.recovery_window,
                min_backups: s.min_backups,
            },
            &defaults.default,
        )?;
        let mut clusters = BTreeMap::new();
        for (name, section) in &s.clusters {
            let cluster = ClusterName::new(name).map_err(|_| ConfigError::Invalid {
                key: "retention.clusters",
                value: name.clone(),
                reason: "not a cluster name (letters, digits, '-', '_', '.'; as in the client \
                         certificate)",
            })?;
            clusters.insert(cluster, policy("retention.clusters", section, &default)?);
        }
        Ok(Self {
            interval,
            after_backup: s.after_backup.unwrap_or(defaults.after_backup),
            block_grace,
            disk_warning_percent,
            default,
            clusters,
        })
    }
}

/// `section` over `base`.
pub(crate) fn policy(
    key: &'static str,
    section: &PolicySection,
    base: &ClusterPolicy,
) -> Result<ClusterPolicy, ConfigError> {
    let keep_backups = section.keep_backups.or(base.keep_backups);
    if keep_backups == Some(0) {
        return Err(ConfigError::Invalid {
            key,
            value: "keep_backups: 0".to_owned(),
            reason: "keep_backups must be at least 1 (remove it to keep every backup; delete \
                     backups by hand with `klio backup delete`)",
        });
    }
    let recovery_window = match &section.recovery_window {
        None => base.recovery_window,
        Some(t) => Some(duration("recovery_window", t)?),
    };
    if recovery_window.is_some_and(|w| w.is_zero()) {
        return Err(ConfigError::Invalid {
            key,
            value: "recovery_window: 0".to_owned(),
            reason: "a recovery window must be longer than zero (for example 7d)",
        });
    }
    Ok(ClusterPolicy {
        keep_backups,
        recovery_window,
        min_backups: section.min_backups.unwrap_or(base.min_backups),
    })
}

pub(crate) fn duration(key: &'static str, text: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(text.trim()).map_err(|_| ConfigError::Invalid {
        key,
        value: text.to_owned(),
        reason: "expected a duration like 30s, 15m, 1h or 7d",
    })
}

fn percent(key: &'static str, text: &str) -> Result<u8, ConfigError> {
    text.trim()
        .trim_end_matches('%')
        .trim()
        .parse::<u8>()
        .ok()
        .filter(|p| (1..=100).contains(p))
        .ok_or_else(|| ConfigError::Invalid {
            key,
            value: text.to_owned(),
            reason: "expected a percentage of used space from 1% to 100%, for example 90%",
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<RetentionConfig, ConfigError> {
        RetentionConfig::resolve(Some(serde_yaml_ng::from_str(yaml).unwrap()))
    }

    #[test]
    fn clusters_override_the_server_wide_policy_key_by_key() {
        let c = parse(
            "keep_backups: 7\nrecovery_window: 14d\nmin_backups: 2\ninterval: off\nblock_grace: 0s\n\
             disk_warning: 80%\nafter_backup: false\nclusters:\n  pg-main: {keep_backups: 2}\n",
        )
        .unwrap();
        assert_eq!(c.interval, None);
        assert!(!c.after_backup);
        assert_eq!(c.block_grace, Duration::ZERO);
        assert_eq!(c.disk_warning_percent, 80);
        let main = c.policy(&ClusterName::new("pg-main").unwrap());
        assert_eq!(main.keep_backups, Some(2));
        assert_eq!(main.recovery_window, Some(Duration::from_secs(14 * 86400)));
        assert_eq!(main.min_backups, 2);
        let other = c.policy(&ClusterName::new("other").unwrap());
        assert_eq!(other.keep_backups, Some(7));
    }

    #[test]
    fn no_section_means_no_policy_and_hourly_runs() {
        let c = RetentionConfig::resolve(None).unwrap();
        let p = c.policy(&ClusterName::new("a").unwrap());
        assert_eq!(
            (p.keep_backups, p.recovery_window, p.min_backups),
            (None, None, 1)
        );
        assert_eq!(c.interval, Some(DEFAULT_INTERVAL));
    }

    #[test]
    fn bad_values_name_their_key_and_say_what_is_expected() {
        for (yaml, key) in [
            ("keep_backups: 0\n", "retention"),
            ("recovery_window: soon\n", "recovery_window"),
            ("interval: hourly\n", "retention.interval"),
            ("disk_warning: 120%\n", "retention.disk_warning"),
            (
                "clusters:\n  'bad name': {keep_backups: 1}\n",
                "retention.clusters",
            ),
        ] {
            match parse(yaml) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{yaml}"),
                other => panic!("{yaml}: {other:?}"),
            }
        }
        let typo: Result<RetentionSection, _> = serde_yaml_ng::from_str("keep_backup: 2\n");
        assert!(typo.is_err());
    }
}
