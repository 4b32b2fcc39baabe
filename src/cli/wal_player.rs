//! `klio wal-player generate|play`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use klio_client::wal_player::{
    DEFAULT_BLOCK_SIZE, JobTarget, MAX_BLOCK_SIZE, PlayList, PlayOptions, generate, play,
};
use klio_wal::SegmentSize;

use super::progress::Progress;

/// Benchmark a Klio server: synthetic WAL, and a load generator that streams it.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    Generate(GenerateArgs),
    Play(PlayArgs),
}

/// Create synthetic WAL segment files (valid page headers and records, compressible like busy
/// OLTP WAL), named like PostgreSQL's: 000000010000000000000001, ...
#[derive(Debug, clap::Args)]
struct GenerateArgs {
    /// Directory for the files (created if missing; must not hold WAL already).
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Size of each file in MB (a power of two from 1 to 1024, as wal_segment_size).
    #[arg(long, value_name = "MB", default_value_t = 16)]
    wal_size: u64,
    /// Number of files to create.
    #[arg(long, value_name = "N")]
    length: u64,
}

/// Stream the WAL files of a directory to a Klio server and measure each file's time to
/// durability.
///
/// Prints one JSON object per file on standard output: walFullPath, startTime and endTime
/// (RFC 3339, UTC), elapsedTime (nanoseconds, as a string) and error (empty on success); then a
/// {"summary": ...} line with files, errors, bytes, MB/s and per-file latency p50/p99. On a
/// terminal, standard error shows progress. A file's time runs from its first byte sent to the
/// server's acknowledgement that its last byte is on stable storage. Exit status 1 if any file
/// failed.
///
/// Each job is one client streaming as its own cluster (a cluster has one writer at a time);
/// the files are split into consecutive runs, one per job. With --jobs above 1, put {job} in
/// the cluster name and the client certificate and key paths: cluster_name: walplayer-{job},
/// client_cert_path: certs/client-walplayer-{job}.pem (issue them with
/// `klio certs client --cluster walplayer-1`, ...). Each cluster must hold no WAL yet.
///
/// The client configuration comes from flags, else KLIO_* environment variables, else
/// --config (YAML); {job} is replaced by the job number in the cluster name and the client
/// certificate and key paths:
///
///   client:
///     cluster_name: walplayer
///     wal:
///       address: localhost:52000
///       server_cert_path: /certs/server/ca.crt
///       client_cert_path: /certs/client/tls.crt
///       client_key_path: /certs/client/tls.key
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
struct PlayArgs {
    /// Directory holding WAL segment files (gzip-compressed files with .gz are read too).
    dir: PathBuf,
    /// Parallel jobs: concurrent clients, each streaming its share of the files.
    #[arg(short, long, value_name = "N", default_value_t = 1)]
    jobs: usize,
    /// Bytes per request, in KB (at most 8192).
    #[arg(long, value_name = "KB", default_value_t = DEFAULT_BLOCK_SIZE / 1024)]
    block_size: usize,
    #[command(flatten)]
    client: super::client_args::ClientArgs,
}

pub(crate) fn run(a: Args) -> anyhow::Result<ExitCode> {
    match a.command {
        Command::Generate(g) => run_generate(g),
        Command::Play(p) => run_play(p),
    }
}

fn run_generate(a: GenerateArgs) -> anyhow::Result<ExitCode> {
    let size = a
        .wal_size
        .checked_mul(1 << 20)
        .and_then(|b| SegmentSize::new(b).ok())
        .with_context(|| {
            format!(
                "--wal-size {} MB is not a power of two from 1 to 1024",
                a.wal_size
            )
        })?;
    if a.length == 0 {
        bail!("--length must be at least 1");
    }
    let mut progress = Progress::new("generate", a.length, "files");
    let paths = generate(&a.dir, size, a.length, |n| progress.set(n))?;
    progress.finish();
    super::logging::summary(&format!(
        "generated {} files of {size} in {} ({} to {})",
        paths.len(),
        a.dir.display(),
        paths
            .first()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        paths
            .last()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    ));
    Ok(ExitCode::SUCCESS)
}

fn run_play(a: PlayArgs) -> anyhow::Result<ExitCode> {
    if a.block_size == 0 || a.block_size * 1024 > MAX_BLOCK_SIZE {
        bail!(
            "--block-size {} KB is out of range: 1 to {} KB",
            a.block_size,
            MAX_BLOCK_SIZE / 1024
        );
    }
    let targets = JobTarget::resolve(&a.client.merge()?, a.jobs.max(1))?;
    let list = PlayList::scan(&a.dir)?;
    if a.jobs > list.files.len() {
        tracing::warn!(
            "{} files for {} jobs: only {} jobs will run",
            list.files.len(),
            a.jobs,
            list.files.len()
        );
    }
    tracing::info!(
        "playing {} files of {} ({} MB) with {} job(s), {} KB blocks",
        list.files.len(),
        list.segment_size,
        list.bytes() / 1_000_000,
        a.jobs.clamp(1, list.files.len()),
        a.block_size
    );
    let opts = PlayOptions {
        block_size: a.block_size * 1024,
    };
    let mut progress = Progress::new("play", list.files.len() as u64, "files");
    let mut done = 0;
    let mut stdout = std::io::stdout().lock();
    let summary = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?
        .block_on(play(&list, targets, opts, |r| {
            // A closed pipe (`| head`) must not stop the run; the summary still counts.
            let _ = writeln!(stdout, "{}", r.to_json());
            let _ = stdout.flush();
            done += 1;
            progress.set(done);
        }))?;
    progress.finish();
    let _ = writeln!(stdout, "{}", summary.to_json());
    let _ = stdout.flush();
    super::logging::summary(&summary.to_text());
    Ok(if summary.errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
