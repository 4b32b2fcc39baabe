//! The WAL Player (`klio wal-player`): synthetic WAL, and a load generator that streams WAL
//! files to a Klio server and measures how long each takes to become durable there.
//!
//! `play` splits the files into `jobs` consecutive runs. Each job is one client: it connects,
//! says `Hello` as its own cluster (a Klio cluster has one writer at a time, so concurrent
//! streams are concurrent clusters), and streams its run as one continuous WAL stream in blocks
//! of `block_size`, without waiting between files. A file counts as done when the server
//! acknowledges its last byte as durable; its latency is from its first byte handed to the
//! connection to that acknowledgement. Files are read block by block (a job holds a few blocks
//! in memory, not whole files).

mod files;
mod job;
mod report;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use klio_proto::klio::{ClusterName, InvalidClusterName};
use klio_wal::synth::{SynthConfig, SyntheticWal};
use klio_wal::{
    FsAction, FsError, InvalidSegmentSize, PageHeaderError, SegmentSize, SynthConfigError,
};

use crate::client_config::{ClientConfigError, ClientSettings, check_endpoint};
use crate::server_link::{ServerEndpoint, ServerLinkError};

pub use files::{PlayList, WalInput};
pub use report::{FileReport, PlaySummary, percentile};

/// Default `--block-size`: 2 MiB per request.
pub const DEFAULT_BLOCK_SIZE: usize = 2048 << 10;
/// Largest `--block-size`: 8 MiB.
pub const MAX_BLOCK_SIZE: usize = 8192 << 10;
/// What stands for the job number in cluster names and certificate paths.
pub const JOB_PLACEHOLDER: &str = "{job}";

/// The player could not run (a file's own failure is a [`FileReport`] instead).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalPlayerError {
    /// A file or directory could not be read or written.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// No segment files to play.
    #[error(
        "{0} holds no WAL segment files (named like 000000010000000000000001, optionally .gz); create some with `klio wal-player generate`"
    )]
    NoFiles(PathBuf),
    /// A file does not start with a WAL page header.
    #[error("{path} is not a WAL segment")]
    NotWal {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: NotWalReason,
    },
    /// A segment-like name that is not valid for the segment size.
    #[error("{path} is not a valid segment name for {segment_size} segments")]
    BadName {
        /// The file.
        path: PathBuf,
        /// The segment size of the first file.
        segment_size: SegmentSize,
    },
    /// A plain file whose length is not the segment size.
    #[error("{path} has {len} bytes, but a segment has {segment_size}")]
    WrongLength {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// The segment size of the first file.
        segment_size: SegmentSize,
    },
    /// The files do not form one continuous stream.
    #[error("the files cannot be played as one WAL stream: {0}")]
    NotOneStream(String),
    /// `--block-size` out of range.
    #[error("block size {0} bytes is not between 1 KiB and 8 MiB")]
    BlockSize(usize),
    /// Several jobs need several clusters.
    #[error(
        "with {jobs} jobs, each job streams as its own cluster (a cluster has one writer at a time): put {JOB_PLACEHOLDER} in the cluster name ({cluster:?}) and in the client certificate and key paths, e.g. cluster_name: walplayer-{JOB_PLACEHOLDER}"
    )]
    NeedsJobPlaceholder {
        /// Jobs asked for.
        jobs: usize,
        /// The cluster name given.
        cluster: String,
    },
    /// A job's cluster name is not valid.
    #[error("job {job}: the cluster name is invalid")]
    ClusterName {
        /// The job.
        job: usize,
        /// The name after substitution (the source names it too).
        name: String,
        /// Why.
        #[source]
        source: InvalidClusterName,
    },
    /// `generate` into a directory that already holds WAL.
    #[error("{0} already holds WAL segment files; generate into an empty or new directory")]
    NotEmpty(PathBuf),
    /// Bad generator settings.
    #[error("cannot generate WAL")]
    Generate(#[source] SynthConfigError),
    /// The client settings cannot be used (for one job, its paths name the job).
    #[error(transparent)]
    Config(#[from] ClientConfigError),
    /// A job could not talk to the server (reported per file as well).
    #[error("job {job} ({cluster})")]
    Link {
        /// The job.
        job: usize,
        /// Its cluster.
        cluster: ClusterName,
        /// What failed.
        #[source]
        source: ServerLinkError,
    },
}

/// Why a file is not a WAL segment.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotWalReason {
    /// Its first page header is invalid.
    #[error(transparent)]
    PageHeader(#[from] PageHeaderError),
    /// Its first page has a short header, so it does not start a segment.
    #[error("its first page has no long header")]
    NoLongHeader,
    /// Its long header names an invalid segment size.
    #[error(transparent)]
    SegmentSize(#[from] InvalidSegmentSize),
}

/// Who one job is: its cluster and how it reaches the server.
#[derive(Clone, Debug)]
pub struct JobTarget {
    /// The cluster this job streams as.
    pub cluster: ClusterName,
    /// Server address and this cluster's certificates.
    pub server: ServerEndpoint,
}

impl JobTarget {
    /// The targets of jobs `1..=jobs` from merged client settings, checked as
    /// [`crate::client_config::ClientConfig::resolve`] checks, once per job after
    /// [`JobTarget::from_template`] has put the job's number in.
    pub fn resolve(settings: &ClientSettings, jobs: usize) -> Result<Vec<Self>, WalPlayerError> {
        let cluster = settings.cluster()?;
        let targets = Self::from_template(cluster, &settings.endpoint()?, jobs)?;
        for target in &targets {
            check_endpoint(&target.server)?;
        }
        Ok(targets)
    }

    /// The targets of jobs `1..=jobs`: [`JOB_PLACEHOLDER`] in the cluster name and the client
    /// certificate and key paths is replaced by the job's number. More than one job needs the
    /// placeholder in the cluster name.
    pub fn from_template(
        cluster: &str,
        server: &ServerEndpoint,
        jobs: usize,
    ) -> Result<Vec<Self>, WalPlayerError> {
        if jobs > 1 && !cluster.contains(JOB_PLACEHOLDER) {
            return Err(WalPlayerError::NeedsJobPlaceholder {
                jobs,
                cluster: cluster.to_owned(),
            });
        }
        let subst_path =
            |p: &Path, job: &str| PathBuf::from(p.to_string_lossy().replace(JOB_PLACEHOLDER, job));
        (1..=jobs.max(1))
            .map(|job| {
                let n = job.to_string();
                let name = cluster.replace(JOB_PLACEHOLDER, &n);
                let cluster =
                    ClusterName::new(&name).map_err(|source| WalPlayerError::ClusterName {
                        job,
                        name: name.clone(),
                        source,
                    })?;
                Ok(Self {
                    cluster,
                    server: ServerEndpoint {
                        cert: subst_path(&server.cert, &n),
                        key: subst_path(&server.key, &n),
                        ..server.clone()
                    },
                })
            })
            .collect()
    }
}

/// How to play.
#[derive(Clone, Copy, Debug)]
pub struct PlayOptions {
    /// Bytes per request (one WAL data frame), 1 KiB to [`MAX_BLOCK_SIZE`].
    pub block_size: usize,
}

impl Default for PlayOptions {
    fn default() -> Self {
        Self {
            block_size: DEFAULT_BLOCK_SIZE,
        }
    }
}

/// Plays `list` with one job per target (fewer when there are fewer files), calling
/// `on_report` as each file completes or fails, and returns the summary. Every file gets
/// exactly one report.
pub async fn play(
    list: &PlayList,
    targets: Vec<JobTarget>,
    opts: PlayOptions,
    mut on_report: impl FnMut(&FileReport),
) -> Result<PlaySummary, WalPlayerError> {
    if !(1024..=MAX_BLOCK_SIZE).contains(&opts.block_size) {
        return Err(WalPlayerError::BlockSize(opts.block_size));
    }
    let jobs = targets.len().clamp(1, list.files.len().max(1));
    let list = Arc::new(list.clone());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let started = Instant::now();
    let per_job = list.files.len().div_ceil(jobs);
    let mut tasks = Vec::new();
    for (i, target) in targets.into_iter().take(jobs).enumerate() {
        let range = (i * per_job).min(list.files.len())..((i + 1) * per_job).min(list.files.len());
        if range.is_empty() {
            continue;
        }
        tasks.push(tokio::spawn(job::run(
            i + 1,
            target,
            list.clone(),
            range,
            opts.block_size,
            tx.clone(),
        )));
    }
    drop(tx);
    let mut reports = Vec::with_capacity(list.files.len());
    while let Some(r) = rx.recv().await {
        on_report(&r);
        reports.push(r);
    }
    for t in tasks {
        // A job reports its own failures per file; a panic is a bug worth surfacing.
        if let Err(e) = t.await {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    Ok(PlaySummary::new(&reports, started.elapsed(), jobs))
}

/// Writes `length` synthetic segments of `segment_size` into `dir` (created if missing; it
/// must not hold WAL already), calling `on_segment(done)` after each. The segments are what
/// PostgreSQL would write: valid page headers and CRC-checked records, 30% random bytes in
/// the record payloads (about 2:1 for lz4, like busy OLTP WAL).
pub fn generate(
    dir: &Path,
    segment_size: SegmentSize,
    length: u64,
    mut on_segment: impl FnMut(u64),
) -> Result<Vec<PathBuf>, WalPlayerError> {
    std::fs::create_dir_all(dir).map_err(|e| FsError::new(FsAction::CreateDirectory, dir, e))?;
    let existing =
        files::segment_entries(dir).map_err(|e| FsError::new(FsAction::ReadDirectory, dir, e))?;
    if !existing.0.is_empty() {
        return Err(WalPlayerError::NotEmpty(dir.to_owned()));
    }
    let mut wal = SyntheticWal::new(SynthConfig {
        segments: length,
        ..SynthConfig::new(segment_size)
    })
    .map_err(WalPlayerError::Generate)?;
    let mut paths = Vec::with_capacity(length as usize);
    while let Some(seg) = wal.next_segment() {
        let path = dir.join(&seg.file_name);
        std::fs::write(&path, &seg.data).map_err(|e| FsError::new(FsAction::Write, &path, e))?;
        paths.push(path);
        on_segment(paths.len() as u64);
    }
    Ok(paths)
}

#[cfg(test)]
mod tests;
