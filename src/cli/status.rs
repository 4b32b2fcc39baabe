//! `klio status`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use klio_server::config::{DEFAULT_METRICS_LISTEN, ServerConfigFile};
use klio_server::status::{ServerStatus, fetch, render_text};
use klio_wal::ErrorChain;

/// Show what the running server knows of each cluster: durable position, lag behind
/// PostgreSQL, recoverable range, streaming client and last error.
///
/// Asks the server's metrics listener (metrics.listen in its config file; default
/// 127.0.0.1:7471) for /status. Exits with 1 if a cluster named with --cluster is unknown,
/// and with 2 if the server cannot be reached.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The server's metrics listener, HOST:PORT [default: from --config, else 127.0.0.1:7471].
    #[arg(long, value_name = "HOST:PORT", env = "KLIO_METRICS_ADDRESS")]
    address: Option<String>,
    /// The server's YAML configuration file, to find its metrics listener.
    #[arg(short, long, value_name = "FILE", env = "KLIO_CONFIG")]
    config: Option<PathBuf>,
    /// Only this cluster.
    #[arg(long, value_name = "CLUSTER")]
    cluster: Option<String>,
    /// text for a terminal, json for scripts.
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Output {
    Text,
    Json,
}

pub(crate) fn run(a: Args) -> anyhow::Result<ExitCode> {
    let address = match (a.address, a.config) {
        (Some(addr), _) => addr,
        (None, Some(path)) => match ServerConfigFile::read(&path)?.metrics_address()? {
            Some(addr) => addr.to_string(),
            None => anyhow::bail!(
                "{} turns the metrics listener off (metrics.listen: off); `klio status` needs it",
                path.display()
            ),
        },
        (None, None) => DEFAULT_METRICS_LISTEN.to_owned(),
    };
    let rt = super::pg_args::runtime()?;
    let mut status: ServerStatus = match rt.block_on(fetch(&address, Duration::from_secs(10))) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{}", ErrorChain(&e));
            return Ok(ExitCode::from(2));
        }
    };
    if let Some(name) = &a.cluster {
        status.clusters.retain(|c| &c.cluster == name);
        if status.clusters.is_empty() {
            tracing::error!("the server at {address} knows no cluster named {name:?}");
            return Ok(ExitCode::from(1));
        }
    }
    match a.output {
        Output::Text => print!("{}", render_text(&status)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&status)?),
    }
    Ok(ExitCode::SUCCESS)
}
