//! Finishing completed segments off the ingest path.
//!
//! When a frame completes a segment, the writer fdatasyncs the journal (the whole segment is
//! then durable, and acknowledged as such) and hands the journal to its [`Finisher`], which
//! has it finished by the process's finishing threads: they assemble the final file from the
//! journal (sealed when the archive has a keyring: compressed, encrypted), publish it durably
//! and remove the journal (`JournalWriter::finish`). Finishing reads the whole segment back
//! and, on an encrypted archive, decrypts, compresses and encrypts it and makes two more
//! fsyncs; done inline it stalled the acknowledgement of the batch that completed the segment
//! by all of that, once per segment. Off the ingest path it overlaps the next batches.
//!
//! # What a reader and a crash see
//!
//! Until the final file is published, the complete journal is what the archive holds of the
//! segment: readers serve it as the complete segment (the `read` module), and a crash leaves a
//! complete journal, which recovery finishes when the archive is next opened for writing.
//! Nothing acknowledged depends on the finisher.
//!
//! # Bounds
//!
//! - Per writer: at most one journal waits while one is being finished, and a writer's
//!   segments are finished one at a time, in the order they completed. A writer completing
//!   segments faster than they are finished waits in [`Finisher::hand_off`], so complete
//!   journals on disk stay bounded.
//! - Per process: [`threads`] finishing threads serve every writer, in turn (a writer with
//!   another journal waiting goes to the back of the line after each segment). So the memory
//!   and threads that finishing takes do not grow with the number of clusters a server
//!   streams: a server of 256 clusters once ran a thread per writer, each keeping its own
//!   allocator arena.
//!
//! # Failures
//!
//! The first failure of a writer's segment is returned by the writer's next call (which
//! poisons the writer, as an inline failure did); the journal it failed on, and any handed
//! after it, stay on disk for recovery. A panic while finishing is caught and reported as
//! [`WalArchiveError::FinisherStopped`] for that writer; the thread goes on serving the
//! others. Dropping a finisher waits until its journals are finished or left, so a writer is
//! gone only once nothing of it is being finished: the next writer's recovery never races it.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};

use klio_crypto::{Keyring, SealOptions};

use super::index::{self, ArchiveIndex};
use super::journal::JournalWriter;
use super::{ClusterIdentity, WalArchiveError, make_ctx};

/// What finishing a segment needs, taken from the writer at each hand-off (its keyring may
/// have changed since the last one: `rewrap_all`).
#[derive(Debug)]
pub(super) struct FinishContext {
    pub(super) dir: PathBuf,
    pub(super) identity: ClusterIdentity,
    pub(super) keyring: Option<Keyring>,
    pub(super) seal: SealOptions,
    /// Told of each final file published.
    pub(super) index: Option<Arc<ArchiveIndex>>,
}

/// Journals a writer may have handed off and not yet seen finished: one being finished, one
/// waiting.
const OUTSTANDING: u64 = 2;

/// The finishing threads of the process: one per core, at least 2 and at most 8.
pub(super) fn threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8))
}

/// One writer's side of finishing.
#[derive(Debug, Default)]
struct Work {
    /// Handed off, not yet taken by a thread.
    waiting: VecDeque<(JournalWriter, FinishContext)>,
    /// In the pool's line or being finished by one of its threads.
    scheduled: bool,
    handed: u64,
    /// Finished, or left on disk after a failure.
    settled: u64,
    /// The first failure, until the writer takes it.
    failure: Option<WalArchiveError>,
    /// A segment failed: the writer's later journals are left for recovery.
    stopped: bool,
}

#[derive(Debug, Default)]
struct Shared {
    work: Mutex<Work>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Work> {
        // A panic while holding the lock leaves counters that are still meaningful.
        self.work.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, work: MutexGuard<'a, Work>) -> MutexGuard<'a, Work> {
        self.changed
            .wait(work)
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The finisher of one writer (see the module documentation).
#[derive(Debug, Default)]
pub(super) struct Finisher {
    shared: Arc<Shared>,
}

impl Finisher {
    pub(super) fn new() -> Self {
        Self::default()
    }

    /// Returns the failure of an earlier finish, if any (once).
    pub(super) fn check(&self) -> Result<(), WalArchiveError> {
        match self.shared.lock().failure.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Queues a complete, fdatasynced journal to be finished; waits while the writer already
    /// has [`OUTSTANDING`] journals being finished or waiting.
    pub(super) fn hand_off(
        &mut self,
        journal: JournalWriter,
        ctx: impl FnOnce() -> FinishContext,
    ) -> Result<(), WalArchiveError> {
        let pool = pool(&journal.path)?;
        let mut work = self.shared.lock();
        while work.handed - work.settled >= OUTSTANDING && work.failure.is_none() {
            work = self.shared.wait(work);
        }
        if let Some(e) = work.failure.take() {
            return Err(e);
        }
        work.handed += 1;
        work.waiting.push_back((journal, ctx()));
        if !work.scheduled {
            work.scheduled = true;
            drop(work);
            pool.schedule(self.shared.clone());
        }
        Ok(())
    }

    /// Waits until every journal handed off is finished; the first failure, if any.
    pub(super) fn wait_idle(&self) -> Result<(), WalArchiveError> {
        let mut work = self.shared.lock();
        while work.settled < work.handed && work.failure.is_none() {
            work = self.shared.wait(work);
        }
        match work.failure.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for Finisher {
    fn drop(&mut self) {
        let mut work = self.shared.lock();
        while work.settled < work.handed {
            work = self.shared.wait(work);
        }
    }
}

/// The finishing threads and the writers waiting for one.
#[derive(Debug)]
struct Pool {
    line: Mutex<Line>,
    ready: Condvar,
}

#[derive(Debug, Default)]
struct Line {
    writers: VecDeque<Arc<Shared>>,
    threads: usize,
}

/// The process's pool, with a thread started for this hand-off if it has fewer than
/// [`threads`]; an error only if it has none and none can be started.
fn pool(journal: &std::path::Path) -> Result<&'static Pool, WalArchiveError> {
    static POOL: OnceLock<Pool> = OnceLock::new();
    let pool = POOL.get_or_init(|| Pool {
        line: Mutex::new(Line::default()),
        ready: Condvar::new(),
    });
    let mut line = pool.lock();
    if line.threads < threads() {
        let started = std::thread::Builder::new()
            .name("klio-finish".to_owned())
            .spawn(move || pool.serve());
        match started {
            Ok(_) => line.threads += 1,
            Err(_) if line.threads == 0 => {
                return Err(WalArchiveError::FinisherStopped {
                    path: journal.to_owned(),
                });
            }
            // The threads it has serve every writer.
            Err(_) => {}
        }
    }
    Ok(pool)
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, Line> {
        self.line.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn schedule(&self, writer: Arc<Shared>) {
        self.lock().writers.push_back(writer);
        self.ready.notify_one();
    }

    /// A finishing thread: one segment of the writer first in line at a time.
    fn serve(&self) {
        loop {
            let writer = {
                let mut line = self.lock();
                loop {
                    match line.writers.pop_front() {
                        Some(w) => break w,
                        None => {
                            line = self
                                .ready
                                .wait(line)
                                .unwrap_or_else(PoisonError::into_inner);
                        }
                    }
                }
            };
            let taken = {
                let mut work = writer.lock();
                let stopped = work.stopped;
                work.waiting.pop_front().map(|job| (job, stopped))
            };
            let took = taken.is_some();
            let outcome = match taken {
                Some(((journal, ctx), false)) => finish(journal, &ctx),
                // After a failure: left on disk, for recovery to finish.
                Some((_, true)) | None => Ok(()),
            };
            let mut work = writer.lock();
            if took {
                work.settled += 1;
            }
            if let Err(e) = outcome {
                work.stopped = true;
                work.failure.get_or_insert(e);
            }
            let again = !work.waiting.is_empty();
            work.scheduled = again;
            writer.changed.notify_all();
            drop(work);
            if again {
                // To the back of the line: the other writers' segments come first.
                self.schedule(writer);
            }
        }
    }
}

/// Finishes one journal, a panic included as a failure.
fn finish(journal: JournalWriter, ctx: &FinishContext) -> Result<(), WalArchiveError> {
    let path = journal.path.clone();
    let (timeline, segno) = (journal.timeline, journal.segno);
    let finished = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let write_ctx = make_ctx(&ctx.identity, ctx.keyring.as_ref(), ctx.seal);
        journal.finish(&ctx.dir, &write_ctx)
    }));
    let outcome = finished.unwrap_or(Err(WalArchiveError::FinisherStopped { path }));
    if let (Ok(()), Some(index)) = (&outcome, &ctx.index) {
        let size = ctx.identity.segment_size;
        let sealed = ctx.keyring.is_some();
        index.note(index::finished(&ctx.dir, timeline, segno, size, sealed));
    }
    outcome
}
