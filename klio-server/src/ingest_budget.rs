//! The server-wide memory budget of WAL ingest: bytes that sessions have read from their
//! streams and not yet stored, and the QUIC receive windows of the connections.
//!
//! # Contract
//!
//! - Every WAL session takes a [`SessionBudget`] for its life. Before it reads bytes from its
//!   stream it must have them covered ([`SessionBudget::try_cover`], or
//!   [`SessionBudget::cover`] which waits); it gives the cover back once the batch holding
//!   them is stored ([`SessionBudget::shrink_to`]), and all of it when the session ends
//!   (drop), however it ends.
//! - The first [`FLOOR`] bytes of each session need nothing from the pool: every cluster can
//!   always read a commit's WAL and make progress, whatever the others hold.
//! - Beyond the floor, cover comes from one pool of `ingest_memory` bytes (a FIFO-fair
//!   semaphore of byte permits). While other sessions wait for the pool, a session takes no
//!   more than its share (the pool divided by the sessions) without waiting in line behind
//!   them.
//! - A session that cannot get cover stops reading its stream; QUIC flow control then holds
//!   its client back. The bytes it stops reading wait in quinn's buffers, which count against
//!   the connection's receive window: so the windows are sized from the same budget
//!   ([`ConnectionWindow`]), the budget divided by the connections, clamped to
//!   [[`MIN_WINDOW`], [`MAX_WINDOW`]].
//!
//! So the WAL held in memory by ingest is at most `ingest_memory + sessions × FLOOR` read by
//! sessions, plus the connections' windows in quinn (at most `ingest_memory`, or
//! `connections × MIN_WINDOW` when there are more connections than that allows).
//!
//! # Default
//!
//! [`DEFAULT_INGEST_MEMORY`] is 64 MiB: at 256 streams that is at most 64 MiB + 64 MiB of
//! floors read by sessions and 64 MiB of windows (256 KiB each), which keeps the whole server
//! within the 256 MiB resident that 256 clusters on one server are given (measured with
//! `klio-bench streams`: the process itself, its runtime, TLS and the archives' own buffers
//! take the rest). A single stream still gets a 16 MiB window and 16 MiB of read ahead, what
//! every stream had before there was a budget, so one bulk stream loses nothing.
//!
//! # Deadlock freedom
//!
//! A session only ever waits for cover when it holds no batch being stored and no frame it
//! has begun to read beyond the header (framing reserves a frame whole before reading its
//! body): so every byte of the pool is held by a session that will give it back without
//! waiting for more, and the session at the head of the line gets its cover. A request larger
//! than the whole pool (a frame bigger than a tiny budget) is clamped to the pool.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Semaphore, watch};

/// What `ingest_memory` is unless configured.
pub const DEFAULT_INGEST_MEMORY: u64 = 64 << 20;

/// Bytes of each session covered without the pool.
pub(crate) const FLOOR: usize = 256 << 10;

/// The smallest receive window a connection is given, however many there are: the floor of
/// its session, enough for a commit's WAL and for bulk WAL to flow at hundreds of MB/s over a
/// millisecond of round trip.
pub(crate) const MIN_WINDOW: u64 = 256 << 10;

/// The largest: a single connection's window when it has the server to itself.
pub(crate) const MAX_WINDOW: u64 = 16 << 20;

/// The pool, the sessions drawing on it and the connections sized from it.
#[derive(Debug)]
pub(crate) struct IngestBudget {
    total: usize,
    pool: Semaphore,
    /// Live [`SessionBudget`]s.
    sessions: AtomicUsize,
    /// Sessions waiting in [`SessionBudget::cover`].
    waiting: AtomicUsize,
    /// Live connections; every [`ConnectionWindow`] watches it.
    connections: watch::Sender<usize>,
}

impl IngestBudget {
    /// A budget of `total` bytes (clamped to what a semaphore can count).
    pub(crate) fn new(total: u64) -> Arc<Self> {
        let total = usize::try_from(total)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Arc::new(Self {
            total,
            pool: Semaphore::new(total),
            sessions: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            connections: watch::Sender::new(0),
        })
    }

    /// A new session's budget.
    pub(crate) fn session(self: &Arc<Self>) -> SessionBudget {
        self.sessions.fetch_add(1, Ordering::SeqCst);
        SessionBudget {
            budget: self.clone(),
            held: 0,
        }
    }

    /// Sessions drawing on the budget now.
    pub(crate) fn sessions(&self) -> usize {
        self.sessions.load(Ordering::SeqCst)
    }

    /// Pool bytes no session holds.
    #[cfg(test)]
    pub(crate) fn available(&self) -> usize {
        self.pool.available_permits()
    }

    /// The pool's size.
    #[cfg(test)]
    pub(crate) fn total(&self) -> usize {
        self.total
    }

    /// What one session may hold of the pool while others wait.
    fn share(&self) -> usize {
        self.total / self.sessions().max(1)
    }

    /// The pool bytes that cover `bytes` read by a session.
    fn pool_need(&self, bytes: usize) -> usize {
        bytes.saturating_sub(FLOOR).min(self.total)
    }

    /// A new connection's receive window, kept up to date while it lives.
    pub(crate) fn connection(self: &Arc<Self>) -> ConnectionWindow {
        self.connections.send_modify(|n| *n += 1);
        ConnectionWindow {
            budget: self.clone(),
            count: self.connections.subscribe(),
        }
    }

    /// The receive window of each of `connections`.
    fn window(&self, connections: usize) -> u64 {
        let each = self.total as u64 / connections.max(1) as u64;
        each.clamp(MIN_WINDOW, MAX_WINDOW)
    }
}

/// One session's cover: pool bytes it holds. Dropping it gives them all back.
#[derive(Debug)]
pub(crate) struct SessionBudget {
    budget: Arc<IngestBudget>,
    /// Pool permits held (taken out of the semaphore, given back with `add_permits`).
    held: usize,
}

impl SessionBudget {
    /// Whether `bytes` read and not stored are covered, taking what is missing from the pool
    /// if it is there now, and if the share allows while others wait. A need larger than the
    /// whole pool (a frame bigger than a tiny budget, for a session holding nothing else) is
    /// clamped to the pool.
    pub(crate) fn try_cover(&mut self, bytes: usize) -> bool {
        self.try_take(self.budget.pool_need(bytes))
    }

    /// Like [`SessionBudget::try_cover`], for reading ahead of a batch being stored: never
    /// clamped, a read ahead beyond the whole pool is refused.
    pub(crate) fn try_cover_ahead(&mut self, bytes: usize) -> bool {
        let need = bytes.saturating_sub(FLOOR);
        need <= self.budget.total && self.try_take(need)
    }

    /// Holds `need` pool bytes, if it can now.
    fn try_take(&mut self, need: usize) -> bool {
        if need <= self.held {
            return true;
        }
        if self.budget.waiting.load(Ordering::SeqCst) > 0 && need > self.budget.share() {
            return false;
        }
        let Ok(missing) = u32::try_from(need - self.held) else {
            return false;
        };
        match self.budget.pool.try_acquire_many(missing) {
            Ok(permits) => {
                permits.forget();
                self.held = need;
                true
            }
            Err(_) => false,
        }
    }

    /// Waits in line until `bytes` read and not stored are covered. Cancel-safe: a wait given
    /// up takes nothing.
    pub(crate) async fn cover(&mut self, bytes: usize) {
        let need = self.budget.pool_need(bytes);
        if need <= self.held {
            return;
        }
        let Ok(missing) = u32::try_from(need - self.held) else {
            return;
        };
        let _waiting = Waiting::new(&self.budget.waiting);
        // The pool is never closed: an error cannot happen, and would leave the bytes
        // uncovered rather than stop ingest.
        if let Ok(permits) = self.budget.pool.acquire_many(missing).await {
            permits.forget();
            self.held = need;
        }
    }

    /// Gives back the cover beyond what `bytes` need (a batch was stored).
    pub(crate) fn shrink_to(&mut self, bytes: usize) {
        let keep = self.budget.pool_need(bytes);
        if self.held > keep {
            self.budget.pool.add_permits(self.held - keep);
            self.held = keep;
        }
    }

    /// Other sessions are drawing on the budget too.
    pub(crate) fn has_company(&self) -> bool {
        self.budget.sessions() > 1
    }

    /// Pool bytes held.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.held
    }
}

impl Drop for SessionBudget {
    fn drop(&mut self) {
        self.budget.pool.add_permits(self.held);
        self.budget.sessions.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts a waiting session for as long as it waits (also when the wait is given up).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A connection's share of the budget as its QUIC receive window; the count of connections
/// drops when it is dropped.
#[derive(Debug)]
pub(crate) struct ConnectionWindow {
    budget: Arc<IngestBudget>,
    count: watch::Receiver<usize>,
}

impl ConnectionWindow {
    /// The window now.
    pub(crate) fn current(&mut self) -> u64 {
        let n = *self.count.borrow_and_update();
        self.budget.window(n)
    }

    /// Waits until connections came or went; the window then.
    pub(crate) async fn changed(&mut self) -> u64 {
        // The sender lives in the budget, which this window holds: it cannot be dropped.
        if self.count.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        self.current()
    }
}

impl Drop for ConnectionWindow {
    fn drop(&mut self) {
        self.budget.connections.send_modify(|n| *n -= 1);
    }
}

#[cfg(test)]
mod tests;
