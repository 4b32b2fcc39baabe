//! Client configuration: which cluster this client is and how it reaches the Klio server,
//! resolved the same way for every command that talks to the server (`send-wal`, `get-wal`,
//! `prepare-recovery`, `wal-player play`; `backup` and `restore` next).
//!
//! # Sources
//!
//! Each setting comes from its flag, else its environment variable, else its key in the
//! configuration file (`--config`, see [`ClientConfigFile`]); an empty variable counts as unset:
//!
//! | setting              | YAML key                       | variable           | flag            |
//! |----------------------|--------------------------------|--------------------|-----------------|
//! | server address       | `client.wal.address`           | `KLIO_SERVER`      | `--server`      |
//! | server name          | `client.wal.server_name`       | `KLIO_SERVER_NAME` | `--server-name` |
//! | CA certificate       | `client.wal.server_cert_path`  | `KLIO_TLS_CA`      | `--tls-ca`      |
//! | client certificate   | `client.wal.client_cert_path`  | `KLIO_TLS_CERT`    | `--tls-cert`    |
//! | client key           | `client.wal.client_key_path`   | `KLIO_TLS_KEY`     | `--tls-key`     |
//! | cluster name         | `client.cluster_name`          | `KLIO_CLUSTER`     | `--cluster`     |
//!
//! The server name is optional (default: the host of the address); so is the cluster for
//! commands whose certificate alone says who they are (`get-wal`). A missing setting is an
//! error naming its key, variable and flag.
//!
//! # Checks
//!
//! [`ClientConfig::resolve`] checks everything that can be checked without the network, so a
//! mistake fails at start with its cause named, instead of at the first connection (which, for
//! `send-wal`, comes only once PostgreSQL is reachable): the address has the form `HOST:PORT`,
//! the cluster name is valid, the CA, certificate and key files are readable PEM, the key
//! belongs to the certificate, and the CA signed the certificate (see [`ClientIdentity`]).

mod file;

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use klio_proto::klio::{ClusterName, InvalidClusterName};

use crate::server_link::{ClientIdentity, IdentityError, ServerEndpoint};

pub use file::{ClientConfigFile, ClientSection, WalEndpointSection};

/// One client setting and the three places it can be given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setting {
    /// What it is, for messages ("the server address").
    pub what: &'static str,
    /// Its key in the configuration file.
    pub yaml: &'static str,
    /// Its environment variable.
    pub env: &'static str,
    /// Its flag.
    pub flag: &'static str,
}

impl Setting {
    /// `host:port` of the Klio server.
    pub const ADDRESS: Self = Self {
        what: "the Klio server address",
        yaml: "client.wal.address",
        env: "KLIO_SERVER",
        flag: "--server",
    };
    /// The name to verify in the server's certificate.
    pub const SERVER_NAME: Self = Self {
        what: "the server name",
        yaml: "client.wal.server_name",
        env: "KLIO_SERVER_NAME",
        flag: "--server-name",
    };
    /// The CA certificate that signed the server's certificate.
    pub const CA: Self = Self {
        what: "the CA certificate",
        yaml: "client.wal.server_cert_path",
        env: "KLIO_TLS_CA",
        flag: "--tls-ca",
    };
    /// This cluster's client certificate.
    pub const CERT: Self = Self {
        what: "the client certificate",
        yaml: "client.wal.client_cert_path",
        env: "KLIO_TLS_CERT",
        flag: "--tls-cert",
    };
    /// Its private key.
    pub const KEY: Self = Self {
        what: "the client key",
        yaml: "client.wal.client_key_path",
        env: "KLIO_TLS_KEY",
        flag: "--tls-key",
    };
    /// The cluster this client is.
    pub const CLUSTER: Self = Self {
        what: "the cluster name",
        yaml: "client.cluster_name",
        env: "KLIO_CLUSTER",
        flag: "--cluster",
    };
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.what)
    }
}

/// The client configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientConfigError {
    /// The configuration file cannot be read.
    #[error("cannot read the client configuration {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is not valid YAML of this shape.
    #[error("client configuration {} is invalid: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its line.
        reason: String,
    },
    /// A required setting is given nowhere.
    #[error(
        "{0} is not set: set it in the config file ({yaml}), with {env} or with {flag}",
        yaml = .0.yaml,
        env = .0.env,
        flag = .0.flag
    )]
    Missing(Setting),
    /// The server address is not `HOST:PORT`.
    #[error("the Klio server address {0:?} is not HOST:PORT (for example klio.example.net:7470)")]
    Address(String),
    /// The cluster name is not valid.
    #[error(transparent)]
    ClusterName(#[from] InvalidClusterName),
    /// A CA, certificate or key file cannot be used (boxed: it is large).
    #[error(transparent)]
    Identity(Box<IdentityError>),
}

impl From<IdentityError> for ClientConfigError {
    fn from(e: IdentityError) -> Self {
        Self::Identity(Box::new(e))
    }
}

/// One source of settings (the file, the environment or the flags); anything may be unset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientSettings {
    /// [`Setting::ADDRESS`].
    pub address: Option<String>,
    /// [`Setting::SERVER_NAME`].
    pub server_name: Option<String>,
    /// [`Setting::CA`].
    pub ca: Option<PathBuf>,
    /// [`Setting::CERT`].
    pub cert: Option<PathBuf>,
    /// [`Setting::KEY`].
    pub key: Option<PathBuf>,
    /// [`Setting::CLUSTER`].
    pub cluster: Option<String>,
}

impl ClientSettings {
    /// The settings of a configuration file.
    pub fn from_file(file: ClientConfigFile) -> Self {
        let wal = file.client.wal;
        Self {
            address: wal.address,
            server_name: wal.server_name,
            ca: wal.server_cert_path,
            cert: wal.client_cert_path,
            key: wal.client_key_path,
            cluster: file.client.cluster_name,
        }
    }

    /// The settings given by environment variables, read with `lookup` (`std::env::var_os`);
    /// empty variables count as unset.
    pub fn from_env(lookup: impl Fn(&'static str) -> Option<OsString>) -> Self {
        let var = |s: Setting| lookup(s.env).filter(|v| !v.is_empty());
        let text = |s: Setting| var(s).map(|v| v.to_string_lossy().into_owned());
        let path = |s: Setting| var(s).map(PathBuf::from);
        Self {
            address: text(Setting::ADDRESS),
            server_name: text(Setting::SERVER_NAME),
            ca: path(Setting::CA),
            cert: path(Setting::CERT),
            key: path(Setting::KEY),
            cluster: text(Setting::CLUSTER),
        }
    }

    /// Each setting from `self`, else from `lower`.
    pub fn or(self, lower: Self) -> Self {
        Self {
            address: self.address.or(lower.address),
            server_name: self.server_name.or(lower.server_name),
            ca: self.ca.or(lower.ca),
            cert: self.cert.or(lower.cert),
            key: self.key.or(lower.key),
            cluster: self.cluster.or(lower.cluster),
        }
    }

    /// `flags` over `env` over the configuration file `file` (if any), unchecked: for
    /// templates such as wal-player's `{job}` paths; [`ClientConfig::resolve`] checks.
    pub fn merge(file: Option<&Path>, env: Self, flags: Self) -> Result<Self, ClientConfigError> {
        let from_file = match file {
            Some(path) => Self::from_file(ClientConfigFile::load(path)?),
            None => Self::default(),
        };
        Ok(flags.or(env).or(from_file))
    }

    /// The server endpoint these settings describe; an error names the first missing setting.
    pub fn endpoint(&self) -> Result<ServerEndpoint, ClientConfigError> {
        fn required<T: Clone>(value: &Option<T>, setting: Setting) -> Result<T, ClientConfigError> {
            value.clone().ok_or(ClientConfigError::Missing(setting))
        }
        Ok(ServerEndpoint {
            address: required(&self.address, Setting::ADDRESS)?,
            server_name: self.server_name.clone(),
            ca: required(&self.ca, Setting::CA)?,
            cert: required(&self.cert, Setting::CERT)?,
            key: required(&self.key, Setting::KEY)?,
        })
    }

    /// The cluster name as given (it may be a template), or the error naming its key,
    /// variable and flag.
    pub fn cluster(&self) -> Result<&str, ClientConfigError> {
        self.cluster
            .as_deref()
            .ok_or(ClientConfigError::Missing(Setting::CLUSTER))
    }
}

/// Resolved and checked client settings.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The Klio server and this cluster's certificates (all files checked).
    pub server: ServerEndpoint,
    /// The cluster, if given (a command that needs it asks [`ClientConfig::cluster`]).
    pub cluster: Option<ClusterName>,
}

impl ClientConfig {
    /// `flags` over `env` over the configuration file `file` (if any), checked as described
    /// in the module documentation.
    pub fn resolve(
        file: Option<&Path>,
        env: ClientSettings,
        flags: ClientSettings,
    ) -> Result<Self, ClientConfigError> {
        Self::from_settings(&ClientSettings::merge(file, env, flags)?)
    }

    /// Checks merged settings.
    pub fn from_settings(settings: &ClientSettings) -> Result<Self, ClientConfigError> {
        let server = settings.endpoint()?;
        let cluster = settings
            .cluster
            .as_deref()
            .map(ClusterName::new)
            .transpose()?;
        check_endpoint(&server)?;
        Ok(Self { server, cluster })
    }

    /// The cluster, for commands that must be told which one they are.
    pub fn cluster(&self) -> Result<&ClusterName, ClientConfigError> {
        self.cluster
            .as_ref()
            .ok_or(ClientConfigError::Missing(Setting::CLUSTER))
    }

    /// The settings as flags, for the klio commands Klio writes (restore_command) or spawns:
    /// they then need no file and no environment.
    pub fn to_args(&self) -> Vec<OsString> {
        let s = &self.server;
        let mut args: Vec<OsString> = vec![Setting::ADDRESS.flag.into(), s.address.clone().into()];
        if let Some(name) = &s.server_name {
            args.extend([Setting::SERVER_NAME.flag.into(), name.into()]);
        }
        for (setting, path) in [
            (Setting::CA, &s.ca),
            (Setting::CERT, &s.cert),
            (Setting::KEY, &s.key),
        ] {
            args.extend([setting.flag.into(), path.clone().into_os_string()]);
        }
        if let Some(cluster) = &self.cluster {
            args.extend([Setting::CLUSTER.flag.into(), cluster.as_str().into()]);
        }
        args
    }
}

/// The checks of [`ClientConfig::resolve`] on an endpoint: the address has the form
/// `HOST:PORT` and its files are a usable identity.
pub fn check_endpoint(server: &ServerEndpoint) -> Result<(), ClientConfigError> {
    let well_formed = server
        .address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !well_formed {
        return Err(ClientConfigError::Address(server.address.clone()));
    }
    ClientIdentity::load(server)?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod test_pki;
#[cfg(test)]
mod tests;
