//! Finishing completed segments off the ingest path.
//!
//! When a frame completes a segment, the writer fdatasyncs the journal (the whole segment is
//! then durable, and acknowledged as such) and hands the journal to its finisher: one thread
//! per writer that assembles the final file from the journal (sealed when the archive has a
//! keyring: compressed, encrypted), publishes it durably and removes the journal
//! (`JournalWriter::finish`). Finishing reads the whole segment back and, on an encrypted
//! archive, decrypts, compresses and encrypts it and makes two more fsyncs; done inline it
//! stalled the acknowledgement of the batch that completed the segment by all of that, once per
//! segment. On its own thread it overlaps the next batches.
//!
//! # What a reader and a crash see
//!
//! Until the final file is published, the complete journal is what the archive holds of the
//! segment: readers serve it as the complete segment (the `read` module), and a crash leaves a
//! complete journal, which recovery finishes when the archive is next opened for writing.
//! Nothing acknowledged depends on the finisher.
//!
//! # Bounds and failures
//!
//! At most one journal waits while one is being finished: a writer completing segments faster
//! than they are finished waits in [`Finisher::hand_off`], so complete journals on disk stay
//! bounded. The first failure stops the thread and is returned by the writer's next call
//! (which poisons the writer, as an inline failure did); the journal it failed on stays on disk
//! for recovery. Dropping the finisher waits for the thread, so a writer is gone only once its
//! segments are finished or failed: the next writer's recovery never races it.

use std::path::PathBuf;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

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

/// Handed-off journals and how far the thread got.
#[derive(Debug, Default)]
struct Progress {
    handed: u64,
    done: u64,
    /// The first failure, until the writer takes it.
    failure: Option<WalArchiveError>,
}

/// The finisher of one writer (see the module documentation).
#[derive(Debug)]
pub(super) struct Finisher {
    /// Started on the first completed segment.
    running: Option<Running>,
    progress: Arc<(Mutex<Progress>, Condvar)>,
}

#[derive(Debug)]
struct Running {
    queue: SyncSender<(JournalWriter, FinishContext)>,
    thread: JoinHandle<()>,
}

fn lock(progress: &Mutex<Progress>) -> MutexGuard<'_, Progress> {
    // A panic while holding the lock leaves counters that are still meaningful.
    progress.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Finisher {
    pub(super) fn new() -> Self {
        Self {
            running: None,
            progress: Arc::new((Mutex::new(Progress::default()), Condvar::new())),
        }
    }

    /// Returns the failure of an earlier finish, if any (once).
    pub(super) fn check(&self) -> Result<(), WalArchiveError> {
        match lock(&self.progress.0).failure.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Queues a complete, fdatasynced journal to be finished; waits while another one is
    /// already waiting.
    pub(super) fn hand_off(
        &mut self,
        journal: JournalWriter,
        ctx: impl FnOnce() -> FinishContext,
    ) -> Result<(), WalArchiveError> {
        self.check()?;
        let running = match &mut self.running {
            Some(r) => r,
            None => self.running.insert(spawn(self.progress.clone())?),
        };
        let dir = journal.path.clone();
        lock(&self.progress.0).handed += 1;
        if running.queue.send((journal, ctx())).is_err() {
            // The thread is gone: it failed (its failure is returned) or panicked.
            self.check()?;
            return Err(WalArchiveError::FinisherStopped { path: dir });
        }
        Ok(())
    }

    /// Waits until every journal handed off is finished; the first failure, if any.
    pub(super) fn wait_idle(&self) -> Result<(), WalArchiveError> {
        let (progress, changed) = &*self.progress;
        let mut p = lock(progress);
        while p.done < p.handed && p.failure.is_none() && self.is_running() {
            // With a timeout: a thread that panicked notifies no one.
            p = changed
                .wait_timeout(p, std::time::Duration::from_millis(100))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        if p.done < p.handed && p.failure.is_none() {
            return Err(WalArchiveError::FinisherStopped {
                path: PathBuf::new(),
            });
        }
        match p.failure.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn is_running(&self) -> bool {
        self.running
            .as_ref()
            .is_some_and(|r| !r.thread.is_finished())
    }
}

impl Drop for Finisher {
    fn drop(&mut self) {
        if let Some(Running { queue, thread }) = self.running.take() {
            // Closing the queue ends the thread once it has finished what was handed to it.
            drop(queue);
            let _ = thread.join();
        }
    }
}

fn spawn(progress: Arc<(Mutex<Progress>, Condvar)>) -> Result<Running, WalArchiveError> {
    // One journal may wait while one is finished (see the module documentation).
    let (queue, journals) = sync_channel::<(JournalWriter, FinishContext)>(1);
    let thread = std::thread::Builder::new()
        .name("klio-finish".to_owned())
        .spawn(move || {
            for (journal, ctx) in journals {
                let write_ctx = make_ctx(&ctx.identity, ctx.keyring.as_ref(), ctx.seal);
                let (timeline, segno) = (journal.timeline, journal.segno);
                let outcome = journal.finish(&ctx.dir, &write_ctx);
                if let (Ok(()), Some(index)) = (&outcome, &ctx.index) {
                    let size = ctx.identity.segment_size;
                    let sealed = ctx.keyring.is_some();
                    index.note(index::finished(&ctx.dir, timeline, segno, size, sealed));
                }
                let (progress, changed) = &*progress;
                let mut p = lock(progress);
                p.done += 1;
                let failed = outcome.is_err();
                if let Err(e) = outcome {
                    p.failure = Some(e);
                }
                changed.notify_all();
                if failed {
                    return;
                }
            }
        })
        .map_err(|_| WalArchiveError::FinisherStopped {
            path: PathBuf::new(),
        })?;
    Ok(Running { queue, thread })
}
