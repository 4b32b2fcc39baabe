//! How a client reaches the Klio server: address and certificates (send-wal, get-wal).

use std::path::PathBuf;

use klio_client::server_link::ServerEndpoint;

/// Klio server address and this cluster's certificates.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ServerArgs {
    /// The Klio server, host:port.
    #[arg(long, value_name = "HOST:PORT", env = "KLIO_SERVER")]
    pub(crate) server: String,
    /// Name to verify in the server's certificate (default: the host of --server).
    #[arg(long, value_name = "NAME", env = "KLIO_SERVER_NAME")]
    pub(crate) server_name: Option<String>,
    /// CA certificate that signed the server's certificate.
    #[arg(long, value_name = "FILE", env = "KLIO_TLS_CA")]
    pub(crate) tls_ca: PathBuf,
    /// This cluster's client certificate (it names the cluster).
    #[arg(long, value_name = "FILE", env = "KLIO_TLS_CERT")]
    pub(crate) tls_cert: PathBuf,
    /// The client certificate's private key.
    #[arg(long, value_name = "FILE", env = "KLIO_TLS_KEY")]
    pub(crate) tls_key: PathBuf,
}

impl ServerArgs {
    pub(crate) fn endpoint(&self) -> ServerEndpoint {
        ServerEndpoint {
            address: self.server.clone(),
            server_name: self.server_name.clone(),
            ca: self.tls_ca.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
        }
    }

    /// The same options as command-line arguments (for commands Klio writes or spawns).
    pub(crate) fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut out: Vec<std::ffi::OsString> = vec!["--server".into(), self.server.clone().into()];
        if let Some(n) = &self.server_name {
            out.extend(["--server-name".into(), n.clone().into()]);
        }
        for (flag, path) in [
            ("--tls-ca", &self.tls_ca),
            ("--tls-cert", &self.tls_cert),
            ("--tls-key", &self.tls_key),
        ] {
            out.push(flag.into());
            out.push(path.clone().into_os_string());
        }
        out
    }
}
