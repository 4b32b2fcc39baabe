//! `klio certs`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use klio_proto::klio::ClusterName;
use klio_server::certs::{CertsDir, DEFAULT_CA_DAYS, DEFAULT_DAYS};

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
        /// Days the server certificate is valid, at most as long as the CA (renew it before
        /// with `klio certs renew`).
        #[arg(long, value_name = "DAYS", default_value_t = DEFAULT_DAYS, value_parser = clap::value_parser!(u32).range(1..))]
        days: u32,
        /// Days the CA is valid; every certificate must be reissued by a new CA after that.
        #[arg(long, value_name = "DAYS", default_value_t = DEFAULT_CA_DAYS, value_parser = clap::value_parser!(u32).range(1..))]
        ca_days: u32,
    },
    /// Issue the client certificate of one cluster (client-CLUSTER.pem, client-CLUSTER.key).
    Client {
        /// Directory holding the CA made by `klio certs init`.
        #[arg(short = 'D', long, value_name = "DIR")]
        dir: PathBuf,
        /// The cluster the certificate is for; it can read and write only this cluster.
        #[arg(long, value_name = "CLUSTER")]
        cluster: String,
        /// Days the certificate is valid.
        #[arg(long, value_name = "DAYS", default_value_t = DEFAULT_DAYS, value_parser = clap::value_parser!(u32).range(1..))]
        days: u32,
    },
    /// Reissue the server certificate (--server) or a cluster's (--cluster) from the same CA,
    /// with a new key, in place of the old files. Then send SIGHUP to the klio server (for
    /// --server) or to send-wal (for --cluster): they load the new files without dropping
    /// the streams they have.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["server", "cluster"])))]
    Renew {
        /// Directory holding the CA and the certificate.
        #[arg(short = 'D', long, value_name = "DIR")]
        dir: PathBuf,
        /// Renew server.pem and server.key, for the names the current certificate has.
        #[arg(long)]
        server: bool,
        /// Renew client-CLUSTER.pem and client-CLUSTER.key.
        #[arg(long, value_name = "CLUSTER")]
        cluster: Option<String>,
        /// Days the new certificate is valid.
        #[arg(long, value_name = "DAYS", default_value_t = DEFAULT_DAYS, value_parser = clap::value_parser!(u32).range(1..))]
        days: u32,
    },
}

pub(crate) fn run(a: Args) -> anyhow::Result<ExitCode> {
    match a.command {
        Command::Init {
            dir,
            server_names,
            days,
            ca_days,
        } => {
            let certs = CertsDir::new(&dir);
            certs.init(&server_names, ca_days, days)?;
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
        Command::Client { dir, cluster, days } => {
            let cluster = ClusterName::new(&cluster).context("in --cluster")?;
            let certs = CertsDir::new(&dir);
            certs.issue_client(&cluster, days)?;
            println!(
                "created {} and {} (CN=klio@{cluster}, valid until {})",
                certs.client_cert(&cluster).display(),
                certs.client_key(&cluster).display(),
                valid_until(&certs.client_cert(&cluster))
            );
        }
        Command::Renew {
            dir,
            server: true,
            days,
            ..
        } => {
            let certs = CertsDir::new(&dir);
            let names = certs.renew_server(days)?;
            println!(
                "renewed {} and {} for {} (valid until {}); send SIGHUP to the klio server: its new connections use them",
                certs.server_cert().display(),
                certs.server_key().display(),
                names.join(", "),
                valid_until(&certs.server_cert())
            );
        }
        Command::Renew {
            dir,
            cluster: Some(cluster),
            days,
            ..
        } => {
            let cluster = ClusterName::new(&cluster).context("in --cluster")?;
            let certs = CertsDir::new(&dir);
            certs.renew_client(&cluster, days)?;
            println!(
                "renewed {} and {} (valid until {}); copy them over the files send-wal uses on the PostgreSQL host: its next connection presents them (SIGHUP checks them at once)",
                certs.client_cert(&cluster).display(),
                certs.client_key(&cluster).display(),
                valid_until(&certs.client_cert(&cluster))
            );
        }
        Command::Renew { .. } => anyhow::bail!("say which certificate: --server or --cluster"),
    }
    Ok(ExitCode::SUCCESS)
}

/// When the certificate just written ends its validity (which the CA's end may cut short).
fn valid_until(cert: &std::path::Path) -> String {
    klio_server::certificates::expiry_of("issued", cert)
        .map_or_else(|e| format!("unknown: {e}"), |e| e.valid_until())
}
