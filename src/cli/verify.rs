//! `klio verify`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use klio_proto::klio::ClusterName;
use klio_server::keys::load_keyring;
use klio_server::verify::{render_report, verify_cluster};

/// Check a cluster's archive: continuous, intact, and what it can recover.
///
/// Checks from --from (or its oldest WAL) to the newest, across timelines: every record's
/// checksum and link, every stored file intact.
///
/// Run it on the server host (read-only, safe while the server runs). Prints the recoverable
/// range and every gap or damaged file; exits with 1 if there is any.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The server's data directory.
    #[arg(long, value_name = "DIR", env = "KLIO_DATA_DIR")]
    data_dir: PathBuf,
    /// The cluster to check.
    #[arg(long, value_name = "CLUSTER")]
    cluster: String,
    /// Check from this LSN (default: the oldest WAL stored).
    #[arg(long, value_name = "LSN")]
    from: Option<String>,
    /// Key files, for an encrypted archive (the server's key first; repeatable).
    #[arg(long = "key", value_name = "FILE")]
    keys: Vec<PathBuf>,
}

pub(crate) fn run(a: Args) -> anyhow::Result<ExitCode> {
    let cluster = ClusterName::new(&a.cluster).context("in --cluster")?;
    let from = a
        .from
        .as_deref()
        .map(|f| f.parse().with_context(|| format!("--from {f}")))
        .transpose()?;
    let keyring = match a.keys.split_first() {
        Some((first, rest)) => Some(load_keyring(first, rest)?),
        None => None,
    };
    let report = verify_cluster(&a.data_dir, &cluster, keyring, from)?;
    print!("{}", render_report(&cluster, &report));
    Ok(if report.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
