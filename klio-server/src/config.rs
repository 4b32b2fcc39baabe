//! Server settings: a YAML file, overridden by environment variables and flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::retention::config::{RetentionConfig, RetentionSection};
use crate::tier2::config::{ServerMode, Tier2Section, Tier2Settings};
use crate::tls::TlsFiles;

/// The default QUIC port.
pub const DEFAULT_PORT: u16 = 7470;

/// Where the metrics listener binds unless configured: loopback only, as it is plain HTTP.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:7471";

/// Resolved server settings.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// UDP address the QUIC listener binds.
    pub listen: SocketAddr,
    /// Tier 1 data directory (one subdirectory per cluster).
    pub data_dir: PathBuf,
    /// Certificates.
    pub tls: TlsFiles,
    /// Encryption at rest; `None` stores WAL in plain form.
    pub encryption: Option<EncryptionConfig>,
    /// TCP address of the HTTP listener for `/metrics`, `/healthz` and `/status`; `None`
    /// disables it.
    pub metrics_listen: Option<SocketAddr>,
    /// Retention policies and when retention runs.
    pub retention: RetentionConfig,
    /// Read-write (Tier 1 on `data_dir`) or read-only (Tier 2 alone, `data_dir` a cache).
    pub mode: ServerMode,
    /// Object storage the server relays to and reads from; `None`: Tier 1 only.
    pub tier2: Option<Tier2Settings>,
    /// Bytes of WAL that ingest sessions may hold read and not yet stored, across all
    /// clusters (see [`crate::ingest_budget`]).
    pub ingest_memory: u64,
}

/// Encryption at rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncryptionConfig {
    /// The key new objects are encrypted with.
    pub key: PathBuf,
    /// Retired keys still needed to read older objects.
    pub old_keys: Vec<PathBuf>,
    /// Compression applied before encryption.
    pub compression: klio_crypto::Compression,
}

/// The YAML file's shape. Unknown keys are errors, so typos do not go unnoticed.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfigFile {
    /// `listen: 0.0.0.0:7470`
    pub listen: Option<String>,
    /// `data_dir: /var/lib/klio`
    pub data_dir: Option<PathBuf>,
    /// `tls: {ca: ..., cert: ..., key: ...}`
    pub tls: Option<TlsSection>,
    /// `encryption: {key: ..., old_keys: [...], compression: lz4, zstd_level: 3}`
    pub encryption: Option<EncryptionSection>,
    /// `metrics: {listen: 127.0.0.1:7471}`
    pub metrics: Option<MetricsSection>,
    /// `retention: {keep_backups: 7, recovery_window: 14d, clusters: {...}}`
    pub retention: Option<RetentionSection>,
    /// `mode: read-write` (default) or `read-only`.
    pub mode: Option<String>,
    /// `tier2: {endpoint: ..., bucket: ..., ...}`
    pub tier2: Option<Tier2Section>,
    /// `ingest_memory: 64MiB`
    pub ingest_memory: Option<String>,
}

/// The `metrics` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// `IP:PORT` of the HTTP listener, or `off`.
    pub listen: Option<String>,
}

/// The `encryption` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionSection {
    /// Key file (from `klio keys generate`) for new objects.
    pub key: Option<PathBuf>,
    /// Older key files still needed for reading.
    #[serde(default)]
    pub old_keys: Vec<PathBuf>,
    /// `lz4` (default), `zstd` or `none`.
    pub compression: Option<String>,
    /// zstd level, 1 to 22 (default 3).
    pub zstd_level: Option<i32>,
}

/// The `tls` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// CA certificate that signs client certificates.
    pub ca: Option<PathBuf>,
    /// Server certificate.
    pub cert: Option<PathBuf>,
    /// Server private key.
    pub key: Option<PathBuf>,
}

/// Values that override the file: from flags, or from `KLIO_*` environment variables.
#[derive(Debug, Default, Clone)]
pub struct ServerOverrides {
    /// `--listen` / `KLIO_LISTEN`.
    pub listen: Option<String>,
    /// `--data-dir` / `KLIO_DATA_DIR`.
    pub data_dir: Option<PathBuf>,
    /// `--tls-ca` / `KLIO_TLS_CA`.
    pub tls_ca: Option<PathBuf>,
    /// `--tls-cert` / `KLIO_TLS_CERT`.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key` / `KLIO_TLS_KEY`.
    pub tls_key: Option<PathBuf>,
    /// `--encryption-key` / `KLIO_ENCRYPTION_KEY`.
    pub encryption_key: Option<PathBuf>,
    /// `--encryption-old-key` (repeatable), added to `encryption.old_keys`.
    pub encryption_old_keys: Vec<PathBuf>,
    /// `--metrics-listen` / `KLIO_METRICS_LISTEN`.
    pub metrics_listen: Option<String>,
    /// `--ingest-memory` / `KLIO_INGEST_MEMORY`.
    pub ingest_memory: Option<String>,
}

/// An invalid or incomplete configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML for this schema.
    #[error("invalid config file {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong (with line and column).
        #[source]
        source: serde_yaml_ng::Error,
    },
    /// A value is not valid.
    #[error("invalid {key} {value:?}: {reason}")]
    Invalid {
        /// The setting.
        key: &'static str,
        /// Its value.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// A required setting is missing.
    #[error(
        "{key} is not set: set it in the config file ({yaml}), with {env} or with {flag}{hint}"
    )]
    Missing {
        /// The setting.
        key: &'static str,
        /// Its YAML path.
        yaml: &'static str,
        /// Its environment variable.
        env: &'static str,
        /// Its flag.
        flag: &'static str,
        /// Extra advice.
        hint: &'static str,
    },
}

impl ServerConfigFile {
    /// Reads and parses `path`.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Ok(serde_yaml_ng::from_str::<Option<Self>>(&text)
            .map_err(|source| ConfigError::Parse {
                path: path.to_owned(),
                source,
            })?
            .unwrap_or_default())
    }

    /// Where a client on this host reaches the metrics listener this file configures
    /// (`None` if it is off): an unspecified address (0.0.0.0, ::) means loopback.
    pub fn metrics_address(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let text = self
            .metrics
            .as_ref()
            .and_then(|m| m.listen.as_deref())
            .unwrap_or(DEFAULT_METRICS_LISTEN);
        Ok(parse_metrics_listen(text)?.map(|mut a| {
            if a.ip().is_unspecified() {
                a.set_ip(match a {
                    SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            a
        }))
    }
}

impl ServerConfig {
    /// Reads `file` (if given) and applies `overrides` on top.
    pub fn resolve(file: Option<&Path>, overrides: ServerOverrides) -> Result<Self, ConfigError> {
        let parsed = match file {
            None => ServerConfigFile::default(),
            Some(path) => ServerConfigFile::read(path)?,
        };
        let listen_text = overrides
            .listen
            .or(parsed.listen)
            .unwrap_or_else(|| format!("0.0.0.0:{DEFAULT_PORT}"));
        let listen = listen_text
            .parse::<SocketAddr>()
            .map_err(|_| ConfigError::Invalid {
                key: "listen",
                value: listen_text.clone(),
                reason: "expected IP:PORT, for example 0.0.0.0:7470 or [::]:7470",
            })?;
        let data_dir = overrides
            .data_dir
            .or(parsed.data_dir)
            .unwrap_or_else(|| PathBuf::from("/var/lib/klio"));
        if data_dir.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                key: "data_dir",
                value: String::new(),
                reason: "must not be empty",
            });
        }
        let tls = parsed.tls.unwrap_or_default();
        const HINT: &str = "; `klio certs init` creates a CA and server certificate";
        let ca = overrides.tls_ca.or(tls.ca).ok_or(ConfigError::Missing {
            key: "the CA certificate",
            yaml: "tls.ca",
            env: "KLIO_TLS_CA",
            flag: "--tls-ca",
            hint: HINT,
        })?;
        let cert = overrides
            .tls_cert
            .or(tls.cert)
            .ok_or(ConfigError::Missing {
                key: "the server certificate",
                yaml: "tls.cert",
                env: "KLIO_TLS_CERT",
                flag: "--tls-cert",
                hint: HINT,
            })?;
        let key = overrides.tls_key.or(tls.key).ok_or(ConfigError::Missing {
            key: "the server key",
            yaml: "tls.key",
            env: "KLIO_TLS_KEY",
            flag: "--tls-key",
            hint: HINT,
        })?;
        let mut section = parsed.encryption.unwrap_or_default();
        section.old_keys.extend(overrides.encryption_old_keys);
        let encryption = match overrides.encryption_key.or(section.key) {
            None if section.old_keys.is_empty() => None,
            None => {
                return Err(ConfigError::Missing {
                    key: "the encryption key",
                    yaml: "encryption.key",
                    env: "KLIO_ENCRYPTION_KEY",
                    flag: "--encryption-key",
                    hint: " (old_keys are only for reading; `klio keys generate` makes a key)",
                });
            }
            Some(key) => Some(EncryptionConfig {
                key,
                old_keys: section.old_keys,
                compression: compression(section.compression.as_deref(), section.zstd_level)?,
            }),
        };
        let metrics_text = overrides
            .metrics_listen
            .or(parsed.metrics.and_then(|m| m.listen))
            .unwrap_or_else(|| DEFAULT_METRICS_LISTEN.to_owned());
        let metrics_listen = parse_metrics_listen(&metrics_text)?;
        let retention = RetentionConfig::resolve(parsed.retention)?;
        let mode = parsed
            .mode
            .as_deref()
            .map(ServerMode::parse)
            .transpose()?
            .unwrap_or_default();
        let tier2 = Tier2Settings::resolve(parsed.tier2)?;
        let ingest_memory = match overrides.ingest_memory.or(parsed.ingest_memory) {
            None => crate::ingest_budget::DEFAULT_INGEST_MEMORY,
            Some(text) => ingest_memory(&text)?,
        };
        if mode == ServerMode::ReadOnly && tier2.is_none() {
            return Err(ConfigError::Invalid {
                key: "mode",
                value: "read-only".to_owned(),
                reason: "a read-only server serves restores from Tier 2: add a tier2 section \
                         naming the bucket (data_dir then holds only a cache)",
            });
        }
        Ok(Self {
            listen,
            data_dir,
            tls: TlsFiles { ca, cert, key },
            encryption,
            metrics_listen,
            retention,
            mode,
            tier2,
            ingest_memory,
        })
    }
}

/// `ingest_memory`: a size of at least [`MIN_INGEST_MEMORY`].
fn ingest_memory(text: &str) -> Result<u64, ConfigError> {
    let bytes = crate::tier2::config::byte_size("ingest_memory", text)?;
    if bytes < MIN_INGEST_MEMORY {
        return Err(ConfigError::Invalid {
            key: "ingest_memory",
            value: text.to_owned(),
            reason: "must be at least 1MiB: every WAL session needs room for a frame",
        });
    }
    Ok(bytes)
}

/// The smallest `ingest_memory` accepted.
pub const MIN_INGEST_MEMORY: u64 = 1 << 20;

/// `IP:PORT`, or `off` for no metrics listener.
pub fn parse_metrics_listen(text: &str) -> Result<Option<SocketAddr>, ConfigError> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    text.parse::<SocketAddr>()
        .map(Some)
        .map_err(|_| ConfigError::Invalid {
            key: "metrics.listen",
            value: text.to_owned(),
            reason: "expected IP:PORT (for example 127.0.0.1:7471) or off",
        })
}

fn compression(
    name: Option<&str>,
    level: Option<i32>,
) -> Result<klio_crypto::Compression, ConfigError> {
    use klio_crypto::Compression;
    match name.unwrap_or("lz4") {
        "lz4" => Ok(Compression::Lz4),
        "none" => Ok(Compression::None),
        "zstd" => {
            let level = level.unwrap_or(3);
            if !(1..=22).contains(&level) {
                return Err(ConfigError::Invalid {
                    key: "encryption.zstd_level",
                    value: level.to_string(),
                    reason: "must be from 1 to 22",
                });
            }
            Ok(Compression::Zstd { level })
        }
        other => Err(ConfigError::Invalid {
            key: "encryption.compression",
            value: other.to_owned(),
            reason: "expected lz4, zstd or none",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn file_then_overrides() {
        let f = write(
            "listen: 127.0.0.1:9000\ndata_dir: /srv/klio\ntls:\n  ca: /c/ca.pem\n  cert: /c/s.pem\n  key: /c/s.key\n",
        );
        let c = ServerConfig::resolve(Some(f.path()), ServerOverrides::default()).unwrap();
        assert_eq!(c.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("/srv/klio"));
        assert_eq!(c.tls.key, PathBuf::from("/c/s.key"));
        assert_eq!(
            c.metrics_listen,
            Some(DEFAULT_METRICS_LISTEN.parse().unwrap())
        );
        let c = ServerConfig::resolve(
            Some(f.path()),
            ServerOverrides {
                listen: Some("[::1]:1".into()),
                tls_key: Some("/other.key".into()),
                metrics_listen: Some("off".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.metrics_listen, None);
        assert_eq!(c.listen, "[::1]:1".parse().unwrap());
        assert_eq!(c.tls.key, PathBuf::from("/other.key"));
    }

    #[test]
    fn ingest_memory_comes_from_the_file_or_the_flag_and_has_a_floor() {
        let tls = "tls: {ca: a, cert: b, key: c}\n";
        let plain = write(tls);
        let c = ServerConfig::resolve(Some(plain.path()), ServerOverrides::default()).unwrap();
        assert_eq!(c.ingest_memory, crate::ingest_budget::DEFAULT_INGEST_MEMORY);
        let f = write(&format!("{tls}ingest_memory: 64MiB\n"));
        let c = ServerConfig::resolve(Some(f.path()), ServerOverrides::default()).unwrap();
        assert_eq!(c.ingest_memory, 64 << 20);
        let c = ServerConfig::resolve(
            Some(f.path()),
            ServerOverrides {
                ingest_memory: Some("1GiB".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.ingest_memory, 1 << 30);
        for bad in ["lots", "512KiB"] {
            let e = ServerConfig::resolve(
                Some(plain.path()),
                ServerOverrides {
                    ingest_memory: Some(bad.into()),
                    ..Default::default()
                },
            )
            .unwrap_err();
            assert!(
                matches!(
                    e,
                    ConfigError::Invalid {
                        key: "ingest_memory",
                        ..
                    }
                ),
                "{e}"
            );
        }
    }

    #[test]
    fn clear_errors() {
        let typo = write("listne: 1.2.3.4:5\n");
        let e = ServerConfig::resolve(Some(typo.path()), ServerOverrides::default()).unwrap_err();
        let text = klio_wal::ErrorChain(&e).to_string();
        assert!(text.contains("listne"), "{text}");
        let bad = write("listen: nowhere\ntls: {ca: a, cert: b, key: c}\n");
        let e = ServerConfig::resolve(Some(bad.path()), ServerOverrides::default()).unwrap_err();
        assert!(
            matches!(e, ConfigError::Invalid { key: "listen", .. }),
            "{e}"
        );
        let any = write("metrics: {listen: '0.0.0.0:9100'}\n");
        let file = ServerConfigFile::read(any.path()).unwrap();
        assert_eq!(
            file.metrics_address().unwrap(),
            Some("127.0.0.1:9100".parse().unwrap())
        );
        let bad = write("metrics: {listen: localhost}\ntls: {ca: a, cert: b, key: c}\n");
        let e = ServerConfig::resolve(Some(bad.path()), ServerOverrides::default()).unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::Invalid {
                    key: "metrics.listen",
                    ..
                }
            ),
            "{e}"
        );
        let e = ServerConfig::resolve(None, ServerOverrides::default()).unwrap_err();
        assert!(
            e.to_string().contains("KLIO_TLS_CA") && e.to_string().contains("klio certs init"),
            "{e}"
        );
        let e = ServerConfig::resolve(
            Some(Path::new("/nonexistent/klio.yaml")),
            ServerOverrides::default(),
        )
        .unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e}");
    }
}
