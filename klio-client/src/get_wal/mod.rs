//! `klio get-wal %f %p`: PostgreSQL's `restore_command` served by the Klio server.
//!
//! PostgreSQL asks for one file per call and replays it before asking for the next, so a
//! fetch that waits for the network on every call makes recovery as slow as the round trips.
//! With a spool, each call also makes sure a background prefetcher ([`prefetch`]) is fetching
//! the next segments in parallel; most calls then find their segment in the spool and only
//! move it into place. The spool never serves a copy whose bytes differ from what the server
//! sent (see [`spool`](self) for the checks), and never keeps a segment still being streamed:
//! that one is served zero-padded, straight from the server, so recovery reaches the last
//! streamed byte and ends cleanly.
//!
//! # Connections
//!
//! A call that misses the spool (every call with `--prefetch 0`) opens its own QUIC + mutual
//! TLS connection and closes it without waiting out QUIC's closing period
//! ([`ServerConnection::close`]). Measured on loopback, a call for a missing file costs 4.3 ms
//! of CPU: 2.8 of them process start, the rest the certificates, the full handshake (ECDSA
//! P-256 both ways) and the request; a call for a 16 MiB segment costs 30 ms on the client and
//! about 45 on the server. The cost of a call is moving the file, not connecting. TLS session
//! resumption across calls is not available: rustls can neither serialize a client session
//! nor resume it with another process's certificate verifier and client key (a session is
//! bound to them by pointer), so a ticket cannot be kept in a file for the next call.
//!
//! # Durability of %p
//!
//! The file is written under a temporary name and renamed to `%p`, so PostgreSQL never finds a
//! half-written file under that name; it is not fsynced, exactly like `cp`, the
//! `restore_command` PostgreSQL's documentation shows. A restored file is not durable state:
//! PostgreSQL removes any `%p` left over before it runs `restore_command` again (so after a
//! crash it asks for the file anew), and before it keeps a restored file under its own name in
//! `pg_wal` it fsyncs it itself (`durable_rename` in `KeepFileRestoredFromArchive`). An fsync
//! here would only move that write-back onto the path PostgreSQL waits on, while its replay
//! writes compete for the disk.

mod fetch;
mod prefetch;
mod spool;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use klio_wal::durable::TempFile;
use klio_wal::{ErrorChain, FsError, SegmentSize, WalFileName};

use fetch::{FetchError, TempFileSink, fetch_into};
pub use fetch::{FetchedFile, fetch_file};
pub use prefetch::{PrefetchSummary, prefetch};

use crate::server_link::{ServerConnection, ServerEndpoint, ServerLinkError};
use spool::{Spool, SpoolKey};

/// How `get-wal` reaches the server and prefetches.
#[derive(Clone, Debug)]
pub struct GetWalOptions {
    /// The Klio server and this cluster's certificates.
    pub server: ServerEndpoint,
    /// Spool directory for prefetched segments; `None` disables prefetching.
    pub spool_dir: Option<PathBuf>,
    /// Segments to keep fetched ahead of the last one PostgreSQL asked for.
    pub prefetch_depth: u64,
    /// Segments fetched at the same time by the prefetcher.
    pub prefetch_jobs: usize,
    /// How long to keep trying an unreachable server before failing.
    pub timeout: Duration,
}

/// What [`get_wal`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GetWalOutcome {
    /// The file was written to the destination.
    Restored {
        /// It came from the spool (fetched ahead).
        from_spool: bool,
        /// It is the segment still being streamed, zero-padded.
        partial: bool,
    },
    /// The archive has no such file: PostgreSQL takes this as the end of the archive.
    NotFound,
}

/// `get-wal` could not serve the file; PostgreSQL must stop recovery rather than end it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GetWalError {
    /// The requested name is not a segment or history file name.
    #[error(
        "{0:?} is not a WAL segment or timeline history file name; use \
         restore_command = 'klio get-wal %f %p ...'"
    )]
    BadName(String),
    /// The server could not be reached or refused.
    #[error("cannot fetch {name} from the Klio server")]
    Server {
        /// The file.
        name: String,
        /// Why.
        #[source]
        source: ServerLinkError,
    },
    /// The server kept failing for the whole timeout.
    #[error("cannot fetch {name}: the Klio server did not answer for {waited:?}")]
    Unreachable {
        /// The file.
        name: String,
        /// How long we tried.
        waited: Duration,
        /// The last failure.
        #[source]
        source: ServerLinkError,
    },
    /// Writing the destination or the spool failed.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// A prefetch task panicked or was cancelled.
    #[error("a prefetch task stopped before it finished")]
    PrefetchTask(#[source] tokio::task::JoinError),
}

/// The file's name, checked; the segment size is not known yet (any valid one parses).
fn parse_name(name: &str) -> Result<WalFileName, GetWalError> {
    let size = SegmentSize::new(u64::from(SegmentSize::MIN_BYTES)).unwrap_or_default();
    match WalFileName::parse(name, size) {
        Ok(n @ (WalFileName::Segment { .. } | WalFileName::History { .. })) => Ok(n),
        _ => Err(GetWalError::BadName(name.to_owned())),
    }
}

/// Whether a one-shot fetch should try again: a refused TLS handshake is reported at once,
/// since PostgreSQL waits for this command and the certificates will not change meanwhile.
fn is_retryable_for_one_shot(e: &ServerLinkError) -> bool {
    !matches!(e, ServerLinkError::Handshake { .. }) && e.is_retryable()
}

/// Runs `attempt` until it succeeds, fails permanently (a local write never is retried), or
/// `opts.timeout` has passed, waiting longer between tries (0.1 s doubling to 5 s).
async fn with_retry<T, Fut>(
    opts: &GetWalOptions,
    name: &str,
    mut attempt: impl FnMut() -> Fut,
) -> Result<T, GetWalError>
where
    Fut: Future<Output = Result<T, FetchError<FsError>>>,
{
    let start = Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        let e = match attempt().await {
            Ok(v) => return Ok(v),
            Err(FetchError::Sink(e)) => return Err(GetWalError::Fs(e)),
            Err(FetchError::Server(e)) => e,
        };
        match e {
            e if !is_retryable_for_one_shot(&e) => {
                return Err(GetWalError::Server {
                    name: name.to_owned(),
                    source: e,
                });
            }
            e if start.elapsed() + delay > opts.timeout => {
                return Err(GetWalError::Unreachable {
                    name: name.to_owned(),
                    waited: start.elapsed(),
                    source: e,
                });
            }
            e => {
                tracing::warn!("{}; retrying in {delay:?}", ErrorChain(&e));
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Connects, retrying transient failures until the timeout.
pub(crate) async fn connect_with_retry(
    opts: &GetWalOptions,
    name: &str,
) -> Result<ServerConnection, GetWalError> {
    with_retry(opts, name, || async {
        Ok(ServerConnection::connect(&opts.server).await?)
    })
    .await
}

/// Fetches `name` on a fresh connection straight into `dest`, retrying transient failures
/// until the timeout; `dest` is only replaced by a complete, checked file.
async fn fetch_to_with_retry(
    opts: &GetWalOptions,
    name: &str,
    dest: &Path,
) -> Result<Option<fetch::FileEnd>, GetWalError> {
    with_retry(opts, name, || async {
        let conn = ServerConnection::connect(&opts.server).await?;
        // Truncated on every try; dropped on a failure, which removes it.
        let mut sink = TempFileSink::new(TempFile::create(dest).map_err(FetchError::Sink)?);
        let r = fetch_into(&conn, name, &mut sink).await;
        conn.close().await;
        let Some(end) = r? else {
            return Ok(None);
        };
        // Atomic, so PostgreSQL never reads a half-written file; not fsynced (see the module
        // docs, `# Durability of %p`).
        sink.file.publish_without_sync().map_err(FetchError::Sink)?;
        Ok(Some(end))
    })
    .await
}

/// How long a call waits for a segment the running prefetcher is about to deliver before
/// fetching it itself.
const WAIT_FOR_PREFETCH: Duration = Duration::from_secs(5);

/// Serves `name` to `dest` (from the spool, else from the server) and records it as the last
/// segment requested. Call [`prefetch`] (normally in a background process) afterwards when
/// [`should_prefetch`] says so.
pub async fn get_wal(
    opts: &GetWalOptions,
    name: &str,
    dest: &Path,
) -> Result<GetWalOutcome, GetWalError> {
    let parsed = parse_name(name)?;
    let spool = match (&opts.spool_dir, parsed) {
        (Some(dir), WalFileName::Segment { .. }) if opts.prefetch_depth > 0 => {
            Some(Spool::open(dir)?)
        }
        _ => None,
    };
    if let Some(spool) = &spool {
        if take_from_spool(spool, &parsed, name, dest)? {
            return Ok(SPOOLED);
        }
        // The prefetcher may be fetching this very segment: give it a moment.
        if spool.prefetcher_running() && is_in_window(spool, &parsed, opts.prefetch_depth) {
            let until = Instant::now() + WAIT_FOR_PREFETCH;
            while Instant::now() < until && spool.prefetcher_running() {
                tokio::time::sleep(Duration::from_millis(5)).await;
                if take_from_spool(spool, &parsed, name, dest)? {
                    return Ok(SPOOLED);
                }
            }
            if take_from_spool(spool, &parsed, name, dest)? {
                return Ok(SPOOLED);
            }
        }
    }
    let Some(file) = fetch_to_with_retry(opts, name, dest).await? else {
        if let Some(spool) = &spool {
            // The end of the archive on this timeline: nothing spooled after it is needed.
            spool.clear()?;
        }
        return Ok(GetWalOutcome::NotFound);
    };
    if let (Some(spool), WalFileName::Segment { timeline, segno }) = (&spool, parsed)
        && !file.partial
        && let Ok(size) = SegmentSize::new(file.len)
    {
        spool.set_last_requested(&SpoolKey {
            timeline,
            segno,
            size,
        })?;
    }
    Ok(GetWalOutcome::Restored {
        from_spool: false,
        partial: file.partial,
    })
}

/// Whether `name` is among the segments the prefetcher is working on.
fn is_in_window(spool: &Spool, name: &WalFileName, depth: u64) -> bool {
    let (Some(last), WalFileName::Segment { timeline, segno }) = (spool.last_requested(), name)
    else {
        return false;
    };
    last.timeline == *timeline && segno.0 > last.segno.0 && segno.0 - last.segno.0 <= depth
}

const SPOOLED: GetWalOutcome = GetWalOutcome::Restored {
    from_spool: true,
    partial: false,
};

/// Moves the spooled copy of `name` to `dest`, if there is an intact one, and records it as
/// the last segment requested.
fn take_from_spool(
    spool: &Spool,
    parsed: &WalFileName,
    name: &str,
    dest: &Path,
) -> Result<bool, GetWalError> {
    if !spool.take(name, dest)? {
        return Ok(false);
    }
    // Spooled segments were fetched after a request that recorded the segment size.
    if let (Some(last), WalFileName::Segment { timeline, segno }) = (spool.last_requested(), parsed)
    {
        spool.set_last_requested(&SpoolKey {
            timeline: *timeline,
            segno: *segno,
            size: last.size,
        })?;
    }
    Ok(true)
}

/// Whether a prefetcher should be started: the spool is missing some of the next segments
/// and no prefetcher runs.
pub fn should_prefetch(opts: &GetWalOptions) -> bool {
    let Some(dir) = &opts.spool_dir else {
        return false;
    };
    if opts.prefetch_depth == 0 {
        return false;
    }
    let Ok(spool) = Spool::open(dir) else {
        return false;
    };
    let Some(last) = spool.last_requested() else {
        return false;
    };
    if spool.prefetcher_running() {
        return false;
    }
    let Ok(spooled) = spool.names() else {
        return false;
    };
    (1..=opts.prefetch_depth).any(|n| last.after(n).is_some_and(|k| !spooled.contains(&k.name())))
}
