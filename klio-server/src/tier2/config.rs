//! The `tier2` section of the server's YAML file, and the server's `mode`.
//!
//! ```yaml
//! mode: read-write                # or read-only: serve restores from Tier 2 alone
//! tier2:
//!   endpoint: https://s3.example.net   # omit for AWS's endpoint of `region`
//!   region: us-east-1
//!   bucket: klio-archive               # must exist
//!   prefix: prod                       # keys go under prod/ (default: the bucket's root)
//!   path_style: true                   # default: true exactly when an endpoint is set
//!   ca_file: /etc/klio/s3-ca.pem       # trust these roots instead of the system's
//!   access_key_id: AKIA...             # both or neither; without them the standard
//!   secret_access_key: ...             # AWS_* variables, AWS_PROFILE, web identity, IMDS
//!   profile: backup                    # or a named profile of ~/.aws/{config,credentials}
//!   partial_interval: 10s              # the segment in progress goes up at most this often
//!   upload_concurrency: 4              # objects uploaded at once
//!   object_lock: {mode: compliance, retain: 30d}   # S3 Object Lock on every upload
//!   cache_size: 4GiB                   # objects kept on local disk for reads from Tier 2
//!   retention: {keep_backups: 30, recovery_window: 90d, min_backups: 1}
//! ```
//!
//! The secret key is never logged: [`klio_tier2::Credentials`]'s `Debug` hides it.

use std::path::PathBuf;
use std::time::Duration;

use klio_tier2::{Credentials, ObjectLockMode, Tier2Config};
use serde::Deserialize;

use crate::config::ConfigError;
use crate::retention::config::{ClusterPolicy, PolicySection};

/// How often the segment in progress goes up unless configured.
pub const DEFAULT_PARTIAL_INTERVAL: Duration = Duration::from_secs(10);
/// Uploads at once unless configured.
pub const DEFAULT_UPLOAD_CONCURRENCY: usize = 4;
/// Local cache for reads from Tier 2 unless configured.
pub const DEFAULT_CACHE_BYTES: u64 = 4 << 30;

/// What a server may do with its storage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServerMode {
    /// Tier 1 on local disk: ingest WAL and backups, relay them to Tier 2 if configured.
    #[default]
    ReadWrite,
    /// No Tier 1: serve WAL and backups of every cluster in the bucket from Tier 2, refuse
    /// every write.
    ReadOnly,
}

impl ServerMode {
    /// Parses the YAML `mode` value.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        match text.trim() {
            "read-write" => Ok(Self::ReadWrite),
            "read-only" => Ok(Self::ReadOnly),
            other => Err(ConfigError::Invalid {
                key: "mode",
                value: other.to_owned(),
                reason: "expected read-write (the default) or read-only",
            }),
        }
    }
}

/// The YAML `tier2` section. Unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier2Section {
    /// `https://host[:port]`; omitted: AWS.
    pub endpoint: Option<String>,
    /// Signing region (default `us-east-1`).
    pub region: Option<String>,
    /// The bucket.
    pub bucket: Option<String>,
    /// Key prefix.
    pub prefix: Option<String>,
    /// Path-style addressing.
    pub path_style: Option<bool>,
    /// PEM roots for the endpoint's certificate.
    pub ca_file: Option<PathBuf>,
    /// Static credentials: the key id.
    pub access_key_id: Option<String>,
    /// Static credentials: the secret.
    pub secret_access_key: Option<String>,
    /// A named profile of the shared AWS files.
    pub profile: Option<String>,
    /// `10s`.
    pub partial_interval: Option<String>,
    /// Uploads at once.
    pub upload_concurrency: Option<usize>,
    /// `{mode: governance|compliance, retain: 30d}`.
    pub object_lock: Option<ObjectLockSection>,
    /// `4GiB`.
    pub cache_size: Option<String>,
    /// Tier 2's own retention policy.
    pub retention: Option<PolicySection>,
}

/// The YAML `tier2.object_lock` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectLockSection {
    /// `governance` or `compliance`.
    pub mode: Option<String>,
    /// How long each object stays locked after its upload.
    pub retain: Option<String>,
}

/// Object Lock on every upload: `mode` until the upload's time plus `retain`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectLockSettings {
    /// Who may lift it early.
    pub mode: ObjectLockMode,
    /// How long after its upload an object stays locked.
    pub retain: Duration,
}

/// Resolved Tier 2 settings.
#[derive(Clone, Debug)]
pub struct Tier2Settings {
    /// Where the objects go and how to reach them.
    pub s3: Tier2Config,
    /// The segment in progress is uploaded at most this often.
    pub partial_interval: Duration,
    /// Objects uploaded at once.
    pub upload_concurrency: usize,
    /// Object Lock for every upload, if any.
    pub object_lock: Option<ObjectLockSettings>,
    /// Bytes of Tier 2 objects kept on local disk for reads.
    pub cache_bytes: u64,
    /// Tier 2's policy; `None` keeps everything in Tier 2.
    pub retention: Option<ClusterPolicy>,
}

impl Tier2Settings {
    /// Resolves the section; `None` when there is none.
    pub fn resolve(section: Option<Tier2Section>) -> Result<Option<Self>, ConfigError> {
        let Some(section) = section else {
            return Ok(None);
        };
        let bucket =
            section
                .bucket
                .filter(|b| !b.trim().is_empty())
                .ok_or(ConfigError::Invalid {
                    key: "tier2.bucket",
                    value: String::new(),
                    reason: "a tier2 section needs the bucket its objects go to (the bucket must \
                         exist)",
                })?;
        let mut s3 = Tier2Config::new(
            section.region.unwrap_or_else(|| "us-east-1".to_owned()),
            bucket,
        );
        s3.endpoint = section.endpoint;
        s3.key_prefix = section.prefix.unwrap_or_default();
        s3.path_style = section.path_style;
        s3.ca_file = section.ca_file;
        s3.credentials = match (
            section.access_key_id,
            section.secret_access_key,
            section.profile,
        ) {
            (Some(access_key_id), Some(secret_access_key), None) => Credentials::Static {
                access_key_id,
                secret_access_key,
            },
            (None, None, Some(profile)) => Credentials::Profile(profile),
            (None, None, None) => Credentials::StandardChain,
            (Some(_), Some(_), Some(profile)) => {
                return Err(ConfigError::Invalid {
                    key: "tier2.profile",
                    value: profile,
                    reason: "set either access_key_id and secret_access_key or a profile, not \
                             both",
                });
            }
            _ => {
                return Err(ConfigError::Invalid {
                    key: "tier2.access_key_id",
                    value: "(one of access_key_id and secret_access_key)".to_owned(),
                    reason: "set both access_key_id and secret_access_key, or neither to use \
                             the AWS_* variables or a profile",
                });
            }
        };
        let partial_interval = match section.partial_interval {
            None => DEFAULT_PARTIAL_INTERVAL,
            Some(t) => crate::retention::config::duration("tier2.partial_interval", &t)?,
        };
        if partial_interval.is_zero() {
            return Err(ConfigError::Invalid {
                key: "tier2.partial_interval",
                value: "0".to_owned(),
                reason: "must be longer than zero (for example 10s)",
            });
        }
        let upload_concurrency = section
            .upload_concurrency
            .unwrap_or(DEFAULT_UPLOAD_CONCURRENCY);
        if !(1..=64).contains(&upload_concurrency) {
            return Err(ConfigError::Invalid {
                key: "tier2.upload_concurrency",
                value: upload_concurrency.to_string(),
                reason: "must be from 1 to 64",
            });
        }
        let object_lock = section.object_lock.map(object_lock).transpose()?;
        let cache_bytes = match section.cache_size {
            None => DEFAULT_CACHE_BYTES,
            Some(t) => byte_size("tier2.cache_size", &t)?,
        };
        let retention = section
            .retention
            .map(|p| {
                crate::retention::config::policy(
                    "tier2.retention",
                    &p,
                    &ClusterPolicy {
                        keep_backups: None,
                        recovery_window: None,
                        min_backups: 1,
                    },
                )
            })
            .transpose()?;
        Ok(Some(Self {
            s3,
            partial_interval,
            upload_concurrency,
            object_lock,
            cache_bytes,
            retention,
        }))
    }
}

fn object_lock(section: ObjectLockSection) -> Result<ObjectLockSettings, ConfigError> {
    let mode = match section.mode.as_deref().map(str::trim) {
        Some("governance") => ObjectLockMode::Governance,
        Some("compliance") => ObjectLockMode::Compliance,
        other => {
            return Err(ConfigError::Invalid {
                key: "tier2.object_lock.mode",
                value: other.unwrap_or_default().to_owned(),
                reason: "expected governance or compliance (the bucket must have Object Lock \
                         enabled)",
            });
        }
    };
    let retain = section.retain.ok_or(ConfigError::Invalid {
        key: "tier2.object_lock.retain",
        value: String::new(),
        reason: "say how long each object stays locked, for example 30d",
    })?;
    let retain = crate::retention::config::duration("tier2.object_lock.retain", &retain)?;
    if retain.is_zero() {
        return Err(ConfigError::Invalid {
            key: "tier2.object_lock.retain",
            value: "0".to_owned(),
            reason: "must be longer than zero (for example 30d)",
        });
    }
    Ok(ObjectLockSettings { mode, retain })
}

/// `512MiB`, `4GiB`, `1TB`, or a number of bytes.
pub(crate) fn byte_size(key: &'static str, text: &str) -> Result<u64, ConfigError> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => u64::MAX,
    };
    number
        .parse::<u64>()
        .ok()
        .filter(|_| multiplier != u64::MAX)
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| ConfigError::Invalid {
            key,
            value: text.to_owned(),
            reason: "expected a size like 512MiB, 4GiB or 1TB",
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Option<Tier2Settings>, ConfigError> {
        Tier2Settings::resolve(serde_yaml_ng::from_str::<Option<Tier2Section>>(yaml).unwrap())
    }

    #[test]
    fn a_minimal_section_takes_the_defaults() {
        let s = parse("bucket: b\nendpoint: http://127.0.0.1:9000\n")
            .unwrap()
            .unwrap();
        assert_eq!(s.s3.bucket, "b");
        assert_eq!(s.s3.region, "us-east-1");
        assert!(s.s3.uses_path_style());
        assert!(matches!(s.s3.credentials, Credentials::StandardChain));
        assert_eq!(s.partial_interval, DEFAULT_PARTIAL_INTERVAL);
        assert_eq!(s.upload_concurrency, DEFAULT_UPLOAD_CONCURRENCY);
        assert_eq!(s.cache_bytes, DEFAULT_CACHE_BYTES);
        assert_eq!(s.object_lock, None);
        assert_eq!(s.retention, None);
        assert!(parse("").unwrap().is_none());
    }

    #[test]
    fn every_key_is_read() {
        let s = parse(
            "bucket: b\nprefix: prod\npath_style: false\naccess_key_id: AK\n\
             secret_access_key: SK\npartial_interval: 2s\nupload_concurrency: 8\n\
             object_lock: {mode: governance, retain: 1d}\ncache_size: 512MiB\n\
             retention: {keep_backups: 9}\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.s3.key_prefix, "prod");
        assert!(!s.s3.uses_path_style());
        assert!(matches!(
            &s.s3.credentials,
            Credentials::Static { access_key_id, secret_access_key }
                if access_key_id == "AK" && secret_access_key == "SK"
        ));
        assert_eq!(s.partial_interval, Duration::from_secs(2));
        assert_eq!(s.upload_concurrency, 8);
        assert_eq!(
            s.object_lock,
            Some(ObjectLockSettings {
                mode: ObjectLockMode::Governance,
                retain: Duration::from_secs(86_400),
            })
        );
        assert_eq!(s.cache_bytes, 512 << 20);
        assert_eq!(s.retention.and_then(|p| p.keep_backups), Some(9));
        let s = parse("bucket: b\nprofile: backup\n").unwrap().unwrap();
        assert!(matches!(&s.s3.credentials, Credentials::Profile(p) if p == "backup"));
    }

    #[test]
    fn bad_values_name_their_key() {
        for (yaml, key) in [
            ("region: x\n", "tier2.bucket"),
            ("bucket: b\naccess_key_id: AK\n", "tier2.access_key_id"),
            (
                "bucket: b\naccess_key_id: A\nsecret_access_key: S\nprofile: p\n",
                "tier2.profile",
            ),
            (
                "bucket: b\npartial_interval: soon\n",
                "tier2.partial_interval",
            ),
            (
                "bucket: b\npartial_interval: 0s\n",
                "tier2.partial_interval",
            ),
            (
                "bucket: b\nupload_concurrency: 0\n",
                "tier2.upload_concurrency",
            ),
            (
                "bucket: b\nobject_lock: {mode: forever}\n",
                "tier2.object_lock.mode",
            ),
            (
                "bucket: b\nobject_lock: {mode: compliance}\n",
                "tier2.object_lock.retain",
            ),
            ("bucket: b\ncache_size: lots\n", "tier2.cache_size"),
            (
                "bucket: b\nretention: {keep_backups: 0}\n",
                "tier2.retention",
            ),
        ] {
            match parse(yaml) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{yaml}"),
                other => panic!("{yaml}: expected an error about {key}, got {other:?}"),
            }
        }
        assert!(matches!(
            ServerMode::parse("readonly"),
            Err(ConfigError::Invalid { key: "mode", .. })
        ));
        assert_eq!(
            ServerMode::parse("read-only").unwrap(),
            ServerMode::ReadOnly
        );
    }
}
