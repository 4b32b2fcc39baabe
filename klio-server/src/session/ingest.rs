//! A WAL session: frames stored in the cluster's archive in batches, durable positions
//! acknowledged.
//!
//! The session is a state machine over [`Ingest`]: **idle**, holding the archive, it takes
//! every complete frame the stream has buffered as one batch; **storing**, a blocking thread
//! holds the archive while it applies the batch and fsyncs, and the stream goes on reading
//! (at most [`READ_AHEAD`] bytes) meanwhile. The batch hands the archive back with its outcome.
//!
//! # Memory
//!
//! Every byte read from the stream and not yet stored (read ahead, and the batch being
//! stored) is covered by the session's share of the server-wide budget
//! ([`crate::ingest_budget`]); a session without cover stops reading (QUIC flow control then
//! holds its client back), and gives its cover back after each stored batch. It waits for
//! cover only when idle, holding no batch: see the budget's *Deadlock freedom*.
//!
//! # Isolation
//!
//! A small batch (a commit's WAL) is stored inline when that delays no other cluster: alone on
//! the server, or on a multi-threaded runtime (where `blocking` blocks in place and the other
//! sessions move on to other workers). With company on a current-thread runtime it is stored
//! on a blocking thread instead, so that one cluster's slow fsync does not stall the others'
//! acknowledgements.
//!
//! # Durability
//!
//! - A batch ends with one `sync`; its `Ack` is sent only after that sync returned, and never
//!   for a batch whose storing failed (the session then ends with the error instead).
//! - One batch at a time, so batches are stored in stream order and acks only move forward.
//! - However a session ends (the client finished, an error, a newer session preempting it),
//!   a batch being stored is waited for before the writer lease is released: the archive is
//!   closed before the next writer opens it.
//!
//! The state machine is generic over the archive ([`IngestArchive`]), the stream
//! ([`CoveredRead`]) and the lease ([`Lease`]), so that its unit tests need no socket and no disk.

use std::sync::Arc;
use std::time::{Duration, Instant};

use klio_proto::klio::{ClusterName, ErrorCode, Message, PROTOCOL_VERSION};
use klio_store::wal_archive::{
    BeginOutcome, ClusterIdentity, StorageOptions, WalArchive, WalArchiveError, WalArchiveReader,
};
use klio_wal::{ErrorChain, Lsn, SegmentSize, TimelineId, WalPosition};
use tokio::task::JoinHandle;

use super::error_code::{Request, refusal};
use super::framing::{Cover, CoveredRead, Filled, Framed};
use super::{Client, End, blocking, storage_task_failed};
use crate::ingest_budget::SessionBudget;
use crate::registry::WriterLease;
use crate::server::Shared;
use crate::telemetry::ClusterTelemetry;

/// Batches carrying at least this much WAL are stored on a blocking thread while the stream
/// goes on reading: a bulk stream then gets receiving (QUIC, TLS) and storing (sealing, writes,
/// fsync) on two cores instead of taking turns on one. Smaller batches (a commit's WAL) are
/// stored inline when that delays no one (see *Isolation*): a thread hand-off would cost a
/// commit more than it saves.
pub(super) const OFFLOAD_BYTES: usize = 1 << 20;

/// How far the stream reads ahead of a batch being stored, at most, when the budget has room;
/// beyond it QUIC flow control holds the client back.
pub(super) const READ_AHEAD: usize = 16 << 20;

/// What the client's `Hello` said.
pub(super) struct Hello {
    pub(super) version: u16,
    /// The cluster the client is configured for.
    pub(super) claimed: ClusterName,
    pub(super) system_id: u64,
    pub(super) segment_size: u32,
}

/// Checks the `Hello`, takes the cluster's writer lease, opens the archive and ingests.
pub(super) async fn serve(
    shared: &Arc<Shared>,
    client: Client<'_>,
    io: &mut Framed,
    hello: Hello,
) -> Result<(), End> {
    let cluster = client.cluster;
    let claimed = hello.claimed;
    if &claimed != cluster {
        return Err(End::Refused(
            ErrorCode::Unauthorized,
            format!(
                "this certificate is for cluster {cluster}, not {claimed}: use the client certificate of {claimed}"
            ),
        ));
    }
    let version = hello.version;
    if version != PROTOCOL_VERSION {
        return Err(End::Refused(
            ErrorCode::UnsupportedVersion,
            format!(
                "protocol version {version} is not supported (server speaks {PROTOCOL_VERSION})"
            ),
        ));
    }
    let segment_size = SegmentSize::new(u64::from(hello.segment_size))
        .map_err(|e| End::Refused(ErrorCode::BadRequest, ErrorChain(&e).to_string()))?;
    let lease = shared.registry.acquire_writer(cluster).await;
    let identity = ClusterIdentity {
        system_id: hello.system_id,
        segment_size,
    };
    let dir = shared.wal_dir(cluster);
    let storage = shared.storage.clone();
    let archive = blocking(move || open_and_rotate(&dir, identity, storage))
        .await?
        .map_err(|e| refusal(&e, Request::Ingest))?;
    let _streaming = client
        .telemetry
        .writer_started(client.remote, archive.durable());
    ingest(
        archive,
        lease,
        io,
        client.telemetry,
        shared.ingest_budget.session(),
    )
    .await
}

/// Opens the cluster's archive for writing. When the configured primary key is new (keys were
/// rotated by restarting with it), the data keys of all existing encrypted files are re-wrapped
/// under it, so that the old key can be retired once `klio keys in-use` no longer lists it.
/// Only the writer may do this: it is the one handle that may touch the journal in progress.
fn open_and_rotate(
    dir: &std::path::Path,
    identity: ClusterIdentity,
    storage: StorageOptions,
) -> Result<WalArchive, WalArchiveError> {
    let keyring = storage.keyring.clone();
    let mut archive = WalArchive::open_with(dir, identity, storage)?;
    if let Some(ring) = keyring {
        let primary = ring.primary_id();
        if archive.key_ids_in_use()?.iter().any(|id| *id != primary) {
            let summary = archive.rewrap_all(&ring, &primary)?;
            tracing::info!(
                "re-wrapped the data keys of {} encrypted files under key {primary}",
                summary.rewrapped
            );
        }
    }
    Ok(archive)
}

/// What ingest needs of a cluster's archive: [`WalArchive`] in production, a fake in the unit
/// tests. The methods are [`WalArchive`]'s, with its contract: only what `sync` returns is
/// durable.
pub(super) trait IngestArchive: Send + 'static {
    /// The cluster's WAL segment size.
    fn segment_size(&self) -> SegmentSize;
    /// The newest timeline that has WAL, and the durable end on it.
    fn durable(&self) -> Option<WalPosition>;
    /// The durable end on `timeline`.
    fn durable_on(&self, timeline: TimelineId) -> Option<Lsn>;
    /// WAL of `timeline` from `start` follows.
    fn begin(&mut self, timeline: TimelineId, start: Lsn) -> Result<BeginOutcome, WalArchiveError>;
    /// Buffers WAL continuing the stream.
    fn append(&mut self, start: Lsn, data: &[u8]) -> Result<(), WalArchiveError>;
    /// Stores a timeline history file durably.
    fn store_history(
        &mut self,
        timeline: TimelineId,
        content: &[u8],
    ) -> Result<(), WalArchiveError>;
    /// Makes everything appended durable; the durable end on the current timeline.
    fn sync(&mut self) -> Result<Option<Lsn>, WalArchiveError>;
}

impl IngestArchive for WalArchive {
    fn segment_size(&self) -> SegmentSize {
        self.identity().segment_size
    }

    fn durable(&self) -> Option<WalPosition> {
        WalArchiveReader::durable(self)
    }

    fn durable_on(&self, timeline: TimelineId) -> Option<Lsn> {
        WalArchiveReader::durable_on(self, timeline)
    }

    fn begin(&mut self, timeline: TimelineId, start: Lsn) -> Result<BeginOutcome, WalArchiveError> {
        Self::begin(self, timeline, start)
    }

    fn append(&mut self, start: Lsn, data: &[u8]) -> Result<(), WalArchiveError> {
        Self::append(self, start, data)
    }

    fn store_history(
        &mut self,
        timeline: TimelineId,
        content: &[u8],
    ) -> Result<(), WalArchiveError> {
        Self::store_history(self, timeline, content)
    }

    fn sync(&mut self) -> Result<Option<Lsn>, WalArchiveError> {
        Self::sync(self)
    }
}

/// The right to write the cluster's archive: [`WriterLease`] in production. Dropping it
/// releases the writer role.
pub(super) trait Lease {
    /// Resolves when a newer session of the cluster wants the archive.
    async fn preempted(&mut self);
}

impl Lease for WriterLease {
    async fn preempted(&mut self) {
        Self::preempted(self).await;
    }
}

/// Where the archive is while a session ingests.
enum Ingest<A> {
    /// Between batches: the session holds the archive.
    Idle { writer: Writer<A> },
    /// A batch is being stored on a blocking thread, which holds the archive until it
    /// finishes and hands it back.
    Storing { batch: JoinHandle<Stored<A>> },
}

/// The archive and the timeline it is streaming: what a batch takes and hands back.
struct Writer<A> {
    archive: A,
    timeline: Option<TimelineId>,
}

/// Frames taken from the stream at once, stored with one fsync.
struct Batch<A> {
    writer: Writer<A>,
    frames: Vec<Message>,
    /// When its first bytes arrived.
    received_at: Instant,
}

/// A batch back from storing: the writer in every case, and what storing did.
struct Stored<A> {
    writer: Writer<A>,
    received_at: Instant,
    outcome: Result<StoredBatch, End>,
}

/// What a stored batch produced: replies, the new durable position, and what to report.
struct StoredBatch {
    replies: Vec<Message>,
    /// The durable position its sync returned, if it wrote WAL.
    durable: Option<WalPosition>,
    /// How long the fsync that made it durable took.
    fsync: Option<Duration>,
    /// WAL bytes in it.
    bytes: u64,
    /// Segments it completed.
    segments: u64,
}

impl<A: IngestArchive> Batch<A> {
    /// Applies the frames to the archive and syncs; runs on a blocking thread or inline.
    fn store(self) -> Stored<A> {
        let mut writer = self.writer;
        let outcome = apply(&mut writer, self.frames);
        Stored {
            writer,
            received_at: self.received_at,
            outcome,
        }
    }
}

/// WAL bytes in `frames`.
fn wal_bytes(frames: &[Message]) -> usize {
    frames
        .iter()
        .map(|m| match m {
            Message::WalData { data, .. } => data.len(),
            _ => 0,
        })
        .sum()
}

fn apply<A: IngestArchive>(
    writer: &mut Writer<A>,
    frames: Vec<Message>,
) -> Result<StoredBatch, End> {
    let archive = &mut writer.archive;
    let size = archive.segment_size();
    let failed = |e: WalArchiveError| refusal(&e, Request::Ingest);
    let mut replies = Vec::new();
    let mut wrote = false;
    let mut bytes = 0;
    let mut segments = 0;
    for msg in frames {
        match msg {
            Message::StartWal { timeline: t, start } => {
                if let BeginOutcome::Gap { from, to } = archive.begin(t, start).map_err(failed)? {
                    tracing::error!(
                        "archive gap on timeline {t}: WAL from {from} to {to} was never received; \
                         recovery cannot pass this range (was the replication slot dropped?)"
                    );
                }
                writer.timeline = Some(t);
            }
            Message::WalData { start, data } => {
                archive.append(start, &data).map_err(failed)?;
                wrote = true;
                let len = data.len() as u64;
                bytes += len;
                // Appends are contiguous, so each boundary crossed completes one segment.
                segments += size
                    .segment_of(Lsn(start.0 + len))
                    .0
                    .saturating_sub(size.segment_of(start).0);
            }
            Message::History {
                timeline: t,
                content,
            } => {
                archive.store_history(t, &content).map_err(failed)?;
            }
            Message::GetPosition { timeline: t } => {
                let t = t.or_else(|| archive.durable().map(|d| d.timeline));
                replies.push(Message::Position {
                    timeline: t,
                    durable: t.and_then(|t| archive.durable_on(t)),
                });
            }
            other => {
                return Err(End::Refused(
                    ErrorCode::BadRequest,
                    format!("unexpected message {:#04x} in a WAL session", other.tag()),
                ));
            }
        }
    }
    let (durable, fsync) = if wrote {
        let began = Instant::now();
        // One fsync covers every byte received in this batch; only now may it be acknowledged.
        let synced = archive.sync().map_err(failed)?;
        (
            synced
                .zip(writer.timeline)
                .map(|(lsn, t)| WalPosition::new(t, lsn)),
            Some(began.elapsed()),
        )
    } else {
        (None, None)
    };
    Ok(StoredBatch {
        replies,
        durable,
        fsync,
        bytes,
        segments,
    })
}

/// Runs a WAL session on `archive` until the client finishes the stream, an error ends it or
/// a newer session preempts it; `lease` is released only after any batch being stored
/// finished, and `budget` (dropped, all given back) only then too.
pub(super) async fn ingest<A, T, L>(
    archive: A,
    mut lease: L,
    io: &mut T,
    telemetry: &ClusterTelemetry,
    budget: SessionBudget,
) -> Result<(), End>
where
    A: IngestArchive,
    T: CoveredRead,
    L: Lease,
{
    let durable = archive.durable();
    io.send(&[Message::Welcome {
        version: PROTOCOL_VERSION,
        durable,
    }])
    .await?;
    tracing::info!(
        "WAL session started; durable position {}",
        durable.map_or_else(|| "none".to_owned(), |p| p.to_string())
    );
    let mut session = Session {
        io,
        telemetry,
        last_ack: None,
        finished: false,
        budget,
        storing: 0,
        read_blocked: false,
    };
    let mut state = Ingest::Idle {
        writer: Writer {
            archive,
            timeline: None,
        },
    };
    let result = loop {
        let step = match state {
            Ingest::Idle { writer } => session.idle(writer, &mut lease).await,
            Ingest::Storing { batch } => session.storing(batch, &mut lease).await.map(Some),
        };
        match step {
            Ok(Some(next)) => state = next,
            Ok(None) => break Ok(()),
            Err(end) => break Err(end),
        }
    };
    // Only now: no batch holds the archive any more.
    drop(lease);
    result
}

/// What the session keeps besides the archive.
struct Session<'a, T> {
    io: &'a mut T,
    telemetry: &'a ClusterTelemetry,
    /// The newest position acknowledged: acks are sent only when it moves.
    last_ack: Option<WalPosition>,
    /// The client finished the stream.
    finished: bool,
    /// Covers what was read and is not stored.
    budget: SessionBudget,
    /// Stream bytes of the batch being stored.
    storing: usize,
    /// The budget refused more read ahead while the batch is stored: wait for the batch.
    read_blocked: bool,
}

/// The cover a fill may take: the session's budget, over the batch being stored.
struct Room<'a> {
    budget: &'a mut SessionBudget,
    storing: usize,
}

impl Cover for Room<'_> {
    fn try_cover(&mut self, buffered: usize) -> bool {
        // Reading ahead of a batch stops at READ_AHEAD; an idle session may always complete
        // its frame (at most a frame's length), budget permitting.
        if self.storing == 0 {
            return self.budget.try_cover(buffered);
        }
        buffered <= READ_AHEAD && self.budget.try_cover_ahead(self.storing + buffered)
    }
}

impl<T: CoveredRead> Session<'_, T> {
    /// Idle: stores what the stream has buffered, or waits for more (and for cover to read
    /// it). `None` once the client finished the stream and everything it sent is stored.
    async fn idle<A: IngestArchive, L: Lease>(
        &mut self,
        writer: Writer<A>,
        lease: &mut L,
    ) -> Result<Option<Ingest<A>>, End> {
        let before = self.io.buffered();
        let received = self.io.drain()?;
        let taken = before - self.io.buffered();
        let frames = take_upstream(received.messages, self.telemetry);
        let bytes = wal_bytes(&frames);
        self.telemetry.received(bytes as u64);
        if frames.is_empty() {
            if self.finished {
                return Ok(None);
            }
            let mut room = Room {
                budget: &mut self.budget,
                storing: 0,
            };
            let filled = tokio::select! {
                _ = lease.preempted() => return Err(preempted()),
                filled = self.io.fill_covered(&mut room) => filled?,
            };
            match filled {
                Filled::Read => {}
                Filled::Finished => self.finished = true,
                Filled::Blocked { needs } => {
                    // Holding no batch and no frame begun: waiting cannot deadlock.
                    tokio::select! {
                        _ = lease.preempted() => return Err(preempted()),
                        () = self.budget.cover(needs) => {}
                    }
                }
            }
            return Ok(Some(Ingest::Idle { writer }));
        }
        let batch = Batch {
            writer,
            frames,
            received_at: received.since,
        };
        self.storing = taken;
        if bytes >= OFFLOAD_BYTES || !self.may_store_inline() {
            let batch = tokio::task::spawn_blocking(move || batch.store());
            return Ok(Some(Ingest::Storing { batch }));
        }
        let stored = blocking(move || batch.store()).await?;
        let writer = self.acknowledge(stored).await?;
        Ok(Some(Ingest::Idle { writer }))
    }

    /// Whether a small batch stored inline delays no other cluster (see *Isolation*).
    fn may_store_inline(&self) -> bool {
        let flavor = tokio::runtime::Handle::current().runtime_flavor();
        flavor != tokio::runtime::RuntimeFlavor::CurrentThread || !self.budget.has_company()
    }

    /// Storing: waits for the batch while reading ahead (as far as the budget covers). If the
    /// session ends meanwhile, the batch is still waited for before the error is returned.
    async fn storing<A: IngestArchive, L: Lease>(
        &mut self,
        mut batch: JoinHandle<Stored<A>>,
        lease: &mut L,
    ) -> Result<Ingest<A>, End> {
        let reading = !self.finished && !self.read_blocked;
        let mut room = Room {
            budget: &mut self.budget,
            storing: self.storing,
        };
        let end = tokio::select! {
            _ = lease.preempted() => preempted(),
            stored = &mut batch => {
                let writer = self.acknowledge(stored.map_err(storage_task_failed)?).await?;
                return Ok(Ingest::Idle { writer });
            }
            filled = self.io.fill_covered(&mut room), if reading => {
                match filled {
                    Ok(Filled::Read) => return Ok(Ingest::Storing { batch }),
                    Ok(Filled::Finished) => {
                        self.finished = true;
                        return Ok(Ingest::Storing { batch });
                    }
                    Ok(Filled::Blocked { .. }) => {
                        // No waiting in line while holding a batch: it is stored first.
                        self.read_blocked = true;
                        return Ok(Ingest::Storing { batch });
                    }
                    Err(end) => end,
                }
            }
        };
        // Whatever ended the session, the batch still holds the archive: wait for it, so that
        // the archive is closed before the lease is released and a new session opens it.
        let _ = batch.await;
        Err(end)
    }

    /// Takes the writer back from a stored batch and sends the replies and the new durable
    /// position (only now, after the batch's fsync). A failed batch sends nothing: its error
    /// ends the session.
    async fn acknowledge<A>(&mut self, stored: Stored<A>) -> Result<Writer<A>, End> {
        // The batch's bytes are stored (or lost with the session): only what was read ahead
        // stays covered.
        self.storing = 0;
        self.read_blocked = false;
        self.budget.shrink_to(self.io.frame_end());
        let batch = stored.outcome?;
        // Before the acknowledgement leaves: whoever sees PostgreSQL's flush position move can
        // already see it in the status.
        self.telemetry
            .stored(batch.fsync, batch.bytes, batch.segments, batch.durable);
        let mut out = batch.replies;
        let ack = batch.durable.filter(|d| Some(*d) != self.last_ack);
        if let Some(WalPosition { timeline, lsn }) = ack {
            out.push(Message::Ack {
                timeline,
                durable: lsn,
            });
            self.last_ack = ack;
        }
        if !out.is_empty() {
            self.io.send(&out).await?;
        }
        if ack.is_some() {
            self.telemetry.acknowledged(stored.received_at.elapsed());
        }
        Ok(stored.writer)
    }
}

fn preempted() -> End {
    End::Refused(
        ErrorCode::Preempted,
        "a newer session of this cluster took over".to_owned(),
    )
}

/// Reports and removes the client's `Upstream` notes: they change nothing stored.
fn take_upstream(mut frames: Vec<Message>, telemetry: &ClusterTelemetry) -> Vec<Message> {
    frames.retain(|m| match m {
        Message::Upstream { timeline, wal_end } => {
            telemetry.upstream(*timeline, *wal_end);
            false
        }
        _ => true,
    });
    frames
}
