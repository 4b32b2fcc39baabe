//! The client configuration file (`klio-config.yaml`): which cluster this client is and how it
//! reaches the Klio server. Every key is optional; [`super::ClientConfig::resolve`] lays
//! environment variables and flags over it.
//!
//! ```yaml
//! client:
//!   cluster_name: walplayer
//!   wal:
//!     address: localhost:52000
//!     server_cert_path: /certs/server/ca.crt
//!     client_cert_path: /certs/client/tls.crt
//!     client_key_path: /certs/client/tls.key
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ClientConfigError;

/// The parsed file; every key is optional here, the command decides what it needs.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClientConfigFile {
    /// The `client:` section.
    #[serde(default)]
    pub client: ClientSection,
}

/// `client:`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClientSection {
    /// The cluster this client streams (its certificate is for `klio@<cluster_name>`).
    pub cluster_name: Option<String>,
    /// `client.wal:`: the Klio server's WAL endpoint.
    #[serde(default)]
    pub wal: WalEndpointSection,
}

/// `client.wal:`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WalEndpointSection {
    /// `host:port` of the Klio server.
    pub address: Option<String>,
    /// Name to verify in the server's certificate (default: the host of `address`).
    pub server_name: Option<String>,
    /// The CA certificate that signed the server's certificate.
    pub server_cert_path: Option<PathBuf>,
    /// This cluster's client certificate.
    pub client_cert_path: Option<PathBuf>,
    /// Its private key.
    pub client_key_path: Option<PathBuf>,
}

impl ClientConfigFile {
    /// Reads and parses `path`; unknown keys are refused, so that a misspelt key is not
    /// silently ignored.
    pub fn load(path: &Path) -> Result<Self, ClientConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ClientConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|reason| ClientConfigError::Invalid {
            path: path.to_owned(),
            reason,
        })
    }

    /// Parses YAML text.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_yaml_ng::from_str(text).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_documented_layout() {
        let c = ClientConfigFile::parse(
            "client:\n  cluster_name: walplayer\n  wal:\n    address: localhost:52000\n    \
             server_cert_path: /s/ca.crt\n    client_cert_path: /c/tls.crt\n    \
             client_key_path: /c/tls.key\n",
        )
        .unwrap();
        assert_eq!(c.client.cluster_name.as_deref(), Some("walplayer"));
        assert_eq!(c.client.wal.address.as_deref(), Some("localhost:52000"));
        assert_eq!(
            c.client.wal.client_key_path.as_deref(),
            Some(Path::new("/c/tls.key"))
        );
        assert_eq!(c.client.wal.server_name, None);
    }

    #[test]
    fn a_misspelt_key_is_refused_with_its_name() {
        let e = ClientConfigFile::parse("client:\n  wal:\n    adress: x:1\n").unwrap_err();
        assert!(e.contains("adress"), "{e}");
    }

    #[test]
    fn an_empty_file_is_an_empty_configuration() {
        assert_eq!(
            ClientConfigFile::parse("\n").unwrap(),
            ClientConfigFile::default()
        );
    }
}
