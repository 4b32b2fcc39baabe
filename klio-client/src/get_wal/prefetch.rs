//! The prefetcher: keeps the segments after the last one PostgreSQL asked for in the spool.
//!
//! One runs at a time (a lock in the spool). It fetches the missing segments of the window
//! `last requested + 1 ..= last requested + depth`, several at once over one QUIC connection
//! (one stream per file), drops spooled segments that fell out of the window, and goes on
//! while PostgreSQL's requests move the window. It stops at the end of the archive (a segment
//! that does not exist yet or is still being streamed) and when the window is full.

use std::sync::Arc;

use tokio::task::JoinSet;

use super::spool::{Spool, SpoolKey};
use super::{GetWalError, GetWalOptions, connect_with_retry, fetch_file};

/// What one [`prefetch`] run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PrefetchSummary {
    /// Segments fetched into the spool.
    pub fetched: u64,
    /// Bytes fetched.
    pub bytes: u64,
    /// Whether it stopped at the end of the archive.
    pub reached_end: bool,
}

/// Fills the spool ahead of PostgreSQL's requests; returns at once if another prefetcher runs.
pub async fn prefetch(opts: &GetWalOptions) -> Result<PrefetchSummary, GetWalError> {
    let mut summary = PrefetchSummary::default();
    let Some(dir) = &opts.spool_dir else {
        return Ok(summary);
    };
    let spool = Spool::open(dir)?;
    let mut conn = None;
    loop {
        let Some(_lock) = spool.try_lock()? else {
            return Ok(summary);
        };
        let mut served = None;
        while let Some(last) = spool.last_requested() {
            if served == Some(last) {
                break;
            }
            let window: Vec<SpoolKey> = (1..=opts.prefetch_depth)
                .filter_map(|n| last.after(n))
                .collect();
            let names: Vec<String> = window.iter().map(SpoolKey::name).collect();
            spool.retain(&names)?;
            let spooled = spool.names()?;
            let missing: Vec<String> = names.into_iter().filter(|n| !spooled.contains(n)).collect();
            if !missing.is_empty() {
                let c = match &conn {
                    Some(c) => Arc::clone(c),
                    None => {
                        let c = Arc::new(connect_with_retry(opts, &missing[0]).await?);
                        conn = Some(Arc::clone(&c));
                        c
                    }
                };
                if fetch_window(&c, &spool, missing, opts.prefetch_jobs, &mut summary).await? {
                    summary.reached_end = true;
                    served = Some(last);
                    // Nothing more exists yet; the next request starts a new prefetcher.
                    break;
                }
            }
            served = Some(last);
        }
        drop(_lock);
        // A request may have moved the window after our last look but before the lock was
        // released, and its prefetcher found the lock taken: look once more.
        if spool.last_requested() == served || summary.reached_end {
            break;
        }
    }
    if let Some(c) = conn.and_then(|c| Arc::try_unwrap(c).ok()) {
        c.close().await;
    }
    Ok(summary)
}

/// Fetches `names` (in order, `jobs` at a time) into the spool; `true` if the archive ended
/// before the last of them (a segment missing or still being streamed).
async fn fetch_window(
    conn: &Arc<crate::server_link::ServerConnection>,
    spool: &Spool,
    names: Vec<String>,
    jobs: usize,
    summary: &mut PrefetchSummary,
) -> Result<bool, GetWalError> {
    let mut pending = names.into_iter();
    let mut running = JoinSet::new();
    let mut ended = false;
    loop {
        while !ended && running.len() < jobs.max(1) {
            let Some(name) = pending.next() else { break };
            let c = Arc::clone(conn);
            running.spawn(async move {
                let r = fetch_file(&c, &name).await;
                (name, r)
            });
        }
        let Some(done) = running.join_next().await else {
            return Ok(ended);
        };
        let (name, r) = done.map_err(GetWalError::PrefetchTask)?;
        match r {
            Ok(Some(f)) if !f.partial => {
                spool.put(&name, &f.content, f.crc32c)?;
                summary.fetched += 1;
                summary.bytes += f.content.len() as u64;
                tracing::debug!("prefetched {name}");
            }
            Ok(_) => {
                // Missing or still streaming: later segments cannot exist yet.
                tracing::debug!("prefetch: {name} is not complete in the archive yet");
                ended = true;
            }
            Err(e) => {
                return Err(GetWalError::Server { name, source: e });
            }
        }
    }
}
