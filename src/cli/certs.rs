//! `klio certs`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use klio_proto::klio::ClusterName;
use klio_server::certs::CertsDir;

/// Create a private CA and certificates for a first secure setup.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Create a CA (ca.pem, ca.key) and the server certificate (server.pem, server.key).
    Init {
        /// Directory for the files (created if missing; existing files are never overwritten).
        #[arg(short = 'D', long, value_name = "DIR")]
        dir: PathBuf,
        /// Host names or IP addresses clients use to reach the server (repeatable).
        #[arg(long = "server-name", value_name = "NAME", default_values_t = ["localhost".to_owned(), "127.0.0.1".to_owned()])]
        server_names: Vec<String>,
    },
    /// Issue the client certificate of one cluster (client-CLUSTER.pem, client-CLUSTER.key).
    Client {
        /// Directory holding the CA made by `klio certs init`.
        #[arg(short = 'D', long, value_name = "DIR")]
        dir: PathBuf,
        /// The cluster the certificate is for; it can read and write only this cluster.
        #[arg(long, value_name = "CLUSTER")]
        cluster: String,
    },
}

pub(crate) fn run(a: Args) -> anyhow::Result<ExitCode> {
    match a.command {
        Command::Init { dir, server_names } => {
            let certs = CertsDir::new(&dir);
            certs.init(&server_names)?;
            println!(
                "created {}, {}, {} and {} for {}",
                certs.ca_cert().display(),
                certs.ca_key().display(),
                certs.server_cert().display(),
                certs.server_key().display(),
                server_names.join(", ")
            );
            println!("keep ca.key offline once the client certificates are issued");
        }
        Command::Client { dir, cluster } => {
            let cluster = ClusterName::new(&cluster).context("in --cluster")?;
            let certs = CertsDir::new(&dir);
            certs.issue_client(&cluster)?;
            println!(
                "created {} and {} (CN=klio@{cluster})",
                certs.client_cert(&cluster).display(),
                certs.client_key(&cluster).display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
