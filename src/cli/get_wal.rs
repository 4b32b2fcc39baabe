//! `klio get-wal %f %p`.

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use klio_client::client_config::ClientConfig;
use klio_client::get_wal::{GetWalOptions, GetWalOutcome, get_wal, prefetch, should_prefetch};
use klio_wal::ErrorChain;

/// restore_command served by the Klio server: fetch WAL file %f of this cluster into %p.
///
/// Writes %p atomically (temporary file, rename), without fsync, like cp: PostgreSQL fsyncs
/// the restored files it keeps. While PostgreSQL replays a segment, a background prefetcher
/// fetches the next ones in parallel into a spool, so most calls are served locally (--prefetch
/// 0: every call fetches its file over a new connection); a spooled copy is used only if it still matches the server's checksum. The
/// segment still being streamed is served zero-padded, so recovery reaches the last streamed
/// byte. Exit status 1 means "not in the archive" (the normal end of recovery); any failure
/// (server unreachable for --timeout, certificate refused, damaged file) exits with 255 so that
/// PostgreSQL stops recovery instead of ending it early.
///
/// Example (postgresql.conf or `klio prepare-recovery`):
///   restore_command = 'klio get-wal %f %p --server klio.example:7470 --tls-ca ca.pem
///                      --tls-cert client-pg-main.pem --tls-key client-pg-main.key'
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub(crate) struct Args {
    /// WAL file name requested by PostgreSQL (%f).
    #[arg(required_unless_present = "prefetch_worker")]
    file: Option<String>,
    /// Destination path (%p).
    #[arg(required_unless_present = "prefetch_worker")]
    path: Option<PathBuf>,
    /// Spool directory for prefetched segments (relative paths are relative to the data
    /// directory, where PostgreSQL runs restore_command).
    #[arg(long, value_name = "DIR", default_value = "pg_wal/klio-spool")]
    spool_dir: PathBuf,
    /// Segments to fetch ahead of PostgreSQL's requests (0: no prefetching).
    #[arg(long, value_name = "N", default_value_t = 8)]
    prefetch: u64,
    /// Segments fetched at the same time by the prefetcher.
    #[arg(long, value_name = "N", default_value_t = 4)]
    jobs: usize,
    /// Seconds to keep retrying an unreachable server before failing.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    timeout: u64,
    /// Internal: run the prefetcher (started in the background by get-wal itself).
    #[arg(long, hide = true)]
    prefetch_worker: bool,
    #[command(flatten)]
    client: super::client_args::ClientArgs,
}

/// Exit status above 125: PostgreSQL aborts recovery rather than treating the file as absent.
const EXIT_ABORT_RECOVERY: u8 = 255;

pub(crate) fn run(a: Args) -> anyhow::Result<ExitCode> {
    let client = match a.client.resolve() {
        Ok(client) => client,
        // Unusable settings are a failure, not "not in the archive": recovery must stop.
        Err(e) if a.prefetch_worker => {
            tracing::warn!("prefetching stopped: {:#}", anyhow::Error::from(e));
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => {
            super::logging::error(&format!("{:#}", anyhow::Error::from(e)));
            return Ok(ExitCode::from(EXIT_ABORT_RECOVERY));
        }
    };
    let opts = GetWalOptions {
        server: client.server.clone(),
        spool_dir: (a.prefetch > 0).then(|| a.spool_dir.clone()),
        prefetch_depth: a.prefetch,
        prefetch_jobs: a.jobs.max(1),
        timeout: Duration::from_secs(a.timeout),
    };
    let rt = super::pg_args::runtime()?;
    if a.prefetch_worker {
        return match rt.block_on(prefetch(&opts)) {
            Ok(s) => {
                tracing::debug!("prefetcher done: {s:?}");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                // Not fatal: the foreground fetches what the spool lacks.
                tracing::warn!("prefetching stopped: {}", ErrorChain(&e));
                Ok(ExitCode::FAILURE)
            }
        };
    }
    let (Some(file), Some(path)) = (a.file.as_deref(), a.path.as_deref()) else {
        anyhow::bail!("get-wal needs the file name (%f) and the destination (%p)");
    };
    match rt.block_on(get_wal(&opts, file, path)) {
        Ok(GetWalOutcome::NotFound) => {
            tracing::debug!("{file} is not in the archive");
            Ok(ExitCode::from(1))
        }
        Ok(outcome) => {
            if let GetWalOutcome::Restored { partial: true, .. } = outcome {
                tracing::info!("served {file}: the segment still being streamed, zero-padded");
            }
            if should_prefetch(&opts)
                && let Err(e) = spawn_prefetcher(&a, &client)
            {
                tracing::warn!("could not start the prefetcher: {e}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            super::logging::error(&ErrorChain(&e).to_string());
            Ok(ExitCode::from(EXIT_ABORT_RECOVERY))
        }
    }
}

/// Starts `klio get-wal --prefetch-worker` in the background, with the resolved settings as
/// flags; it outlives this process.
fn spawn_prefetcher(a: &Args, client: &ClientConfig) -> std::io::Result<()> {
    let exe = std::env::current_exe()?;
    let spool = std::path::absolute(&a.spool_dir)?;
    std::process::Command::new(exe)
        .arg("get-wal")
        .arg("--prefetch-worker")
        .args(client.to_args())
        .arg("--spool-dir")
        .arg(spool)
        .args(["--prefetch", &a.prefetch.to_string()])
        .args(["--jobs", &a.jobs.to_string()])
        .args(["--timeout", &a.timeout.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // Warnings go where get-wal's go: PostgreSQL's log.
        .stderr(Stdio::inherit())
        .spawn()
        .map(drop)
}
