//! The client settings every command that talks to the Klio server takes (send-wal, get-wal,
//! prepare-recovery, wal-player play): parsed here, resolved by
//! [`klio_client::client_config`], which also reads the `KLIO_*` variables.

use std::path::PathBuf;

use klio_client::client_config::{ClientConfig, ClientConfigError, ClientSettings};

/// Klio server address, this cluster's certificates and its name. Each flag overrides its
/// environment variable, which overrides its key in the --config file.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Klio server")]
pub(crate) struct ClientArgs {
    /// Client configuration file (YAML: client.cluster_name, client.wal.address,
    /// client.wal.server_name, client.wal.server_cert_path, client.wal.client_cert_path,
    /// client.wal.client_key_path).
    #[arg(long, value_name = "FILE", env = "KLIO_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// The Klio server, host:port [env: KLIO_SERVER] [config: client.wal.address].
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) server: Option<String>,
    /// Name to verify in the server's certificate (default: the host of --server)
    /// [env: KLIO_SERVER_NAME] [config: client.wal.server_name].
    #[arg(long, value_name = "NAME")]
    pub(crate) server_name: Option<String>,
    /// CA certificate that signed the server's certificate (and this cluster's)
    /// [env: KLIO_TLS_CA] [config: client.wal.server_cert_path].
    #[arg(long, value_name = "FILE")]
    pub(crate) tls_ca: Option<PathBuf>,
    /// This cluster's client certificate (it names the cluster)
    /// [env: KLIO_TLS_CERT] [config: client.wal.client_cert_path].
    #[arg(long, value_name = "FILE")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The client certificate's private key
    /// [env: KLIO_TLS_KEY] [config: client.wal.client_key_path].
    #[arg(long, value_name = "FILE")]
    pub(crate) tls_key: Option<PathBuf>,
    /// The cluster this client is (its certificate must be for klio@CLUSTER)
    /// [env: KLIO_CLUSTER] [config: client.cluster_name].
    #[arg(long, value_name = "CLUSTER")]
    pub(crate) cluster: Option<String>,
}

impl ClientArgs {
    /// The flags as one source of settings.
    fn flags(&self) -> ClientSettings {
        ClientSettings {
            address: self.server.clone(),
            server_name: self.server_name.clone(),
            ca: self.tls_ca.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            cluster: self.cluster.clone(),
        }
    }

    /// Flags over `KLIO_*` variables over the --config file, unchecked (for templates).
    pub(crate) fn merge(&self) -> Result<ClientSettings, ClientConfigError> {
        ClientSettings::merge(
            self.config.as_deref(),
            ClientSettings::from_env(std::env::var_os),
            self.flags(),
        )
    }

    /// Flags over `KLIO_*` variables over the --config file, checked.
    pub(crate) fn resolve(&self) -> Result<ClientConfig, ClientConfigError> {
        ClientConfig::resolve(
            self.config.as_deref(),
            ClientSettings::from_env(std::env::var_os),
            self.flags(),
        )
    }
}
