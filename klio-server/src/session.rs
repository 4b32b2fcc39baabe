//! One client stream: a WAL ingest session (after `Hello`) or position queries.
//!
//! Durability: frames are applied to the cluster's [`WalArchive`] in batches, one batch per
//! wake-up of the stream; each batch ends with one `sync` (one fsync for everything received
//! so far) and only then is the durable position acknowledged with [`Message::Ack`].

use std::sync::Arc;

use bytes::BytesMut;
use klio_proto::klio::{ClusterName, ErrorCode, FrameDecoder, Message, PROTOCOL_VERSION};
use klio_store::wal_archive::{BeginOutcome, ClusterIdentity, WalArchive, WalArchiveError};
use klio_wal::{Lsn, SegmentSize, TimelineId};

use crate::registry::WriterLease;
use crate::server::Shared;
use crate::telemetry::ClusterTelemetry;

/// Why a session ended early.
enum End {
    /// The peer went away or finished; nothing to send.
    Closed(String),
    /// We refuse to go on: tell the client why.
    Refused(ErrorCode, String),
}

impl From<WalArchiveError> for End {
    fn from(e: WalArchiveError) -> Self {
        End::Refused(error_code(&e), e.to_string())
    }
}

fn error_code(e: &WalArchiveError) -> ErrorCode {
    use WalArchiveError as E;
    match e {
        E::SystemIdMismatch { .. } => ErrorCode::SystemIdMismatch,
        E::SegmentSizeMismatch { .. } => ErrorCode::SegmentSizeMismatch,
        E::Overlap { .. }
        | E::NotSegmentAligned { .. }
        | E::Discontinuity { .. }
        | E::NotStreaming => ErrorCode::InvalidPosition,
        E::HistoryConflict { .. } => ErrorCode::BadRequest,
        _ => ErrorCode::Storage,
    }
}

/// Framed I/O over one QUIC stream.
struct Framed {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    decoder: FrameDecoder,
    /// When the oldest bytes not yet taken by [`Framed::drain`] arrived: a batch's
    /// acknowledgement latency runs from here.
    pending_since: Option<std::time::Instant>,
}

impl Framed {
    /// Waits for more bytes; `false` when the peer finished the stream.
    ///
    /// Takes every chunk QUIC has already reassembled, not just one: whatever arrived while the
    /// last fsync ran then joins the next batch and shares its fsync (group commit).
    async fn fill(&mut self) -> Result<bool, End> {
        let mut chunks: [bytes::Bytes; 32] = Default::default();
        match self.recv.read_chunks(&mut chunks).await {
            Ok(Some(n)) => {
                for c in &chunks[..n] {
                    self.rbuf.extend_from_slice(c);
                }
                self.pending_since
                    .get_or_insert_with(std::time::Instant::now);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => Err(End::Closed(e.to_string())),
        }
    }

    /// Every complete frame already buffered.
    fn drain(&mut self) -> Result<Vec<Message>, End> {
        let mut out = Vec::new();
        loop {
            match self.decoder.decode(&mut self.rbuf) {
                Ok(Some(m)) => out.push(m),
                Ok(None) => {
                    if self.rbuf.is_empty() {
                        self.pending_since = None;
                    }
                    return Ok(out);
                }
                Err(e) => return Err(End::Refused(ErrorCode::BadRequest, e.to_string())),
            }
        }
    }

    /// The next frame, waiting as needed; `None` at the end of the stream.
    async fn next(&mut self) -> Result<Option<Message>, End> {
        loop {
            match self.decoder.decode(&mut self.rbuf) {
                Ok(Some(m)) => return Ok(Some(m)),
                Ok(None) => {}
                Err(e) => return Err(End::Refused(ErrorCode::BadRequest, e.to_string())),
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    async fn send(&mut self, msgs: &[Message]) -> Result<(), End> {
        self.wbuf.clear();
        for m in msgs {
            m.encode(&mut self.wbuf);
        }
        self.send
            .write_all(&self.wbuf)
            .await
            .map_err(|e| End::Closed(e.to_string()))
    }
}

/// Runs one stream to its end and logs how it ended.
pub(crate) async fn run(
    shared: Arc<Shared>,
    cluster: ClusterName,
    telemetry: ClusterTelemetry,
    remote: std::net::SocketAddr,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    let mut io = Framed {
        send,
        recv,
        rbuf: BytesMut::with_capacity(256 * 1024),
        wbuf: BytesMut::new(),
        decoder: FrameDecoder::new(),
        pending_since: None,
    };
    let client = Client {
        cluster: &cluster,
        telemetry: &telemetry,
        remote,
    };
    match serve(&shared, client, &mut io).await {
        Ok(()) => tracing::debug!("stream finished"),
        Err(End::Closed(why)) => tracing::info!("stream ended: {why}"),
        Err(End::Refused(code, message)) => {
            tracing::warn!(?code, "refused: {message}");
            telemetry.error(code, &message);
            let _ = io.send(&[Message::Error { code, message }]).await;
            let _ = io.send.finish();
            // Give the error a moment to reach the client before the stream is dropped.
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(2), io.send.stopped()).await;
        }
    }
}

/// Who is on the other end of a stream.
#[derive(Clone, Copy)]
struct Client<'a> {
    cluster: &'a ClusterName,
    telemetry: &'a ClusterTelemetry,
    remote: std::net::SocketAddr,
}

async fn serve(shared: &Arc<Shared>, client: Client<'_>, io: &mut Framed) -> Result<(), End> {
    let cluster = client.cluster;
    match io.next().await? {
        None => Ok(()),
        Some(Message::Hello {
            version,
            cluster: claimed,
            system_id,
            segment_size,
        }) => {
            if &claimed != cluster {
                return Err(End::Refused(
                    ErrorCode::Unauthorized,
                    format!(
                        "this certificate is for cluster {cluster}, not {claimed}: use the client certificate of {claimed}"
                    ),
                ));
            }
            if version != PROTOCOL_VERSION {
                return Err(End::Refused(
                    ErrorCode::UnsupportedVersion,
                    format!(
                        "protocol version {version} is not supported (server speaks {PROTOCOL_VERSION})"
                    ),
                ));
            }
            let segment_size = SegmentSize::new(u64::from(segment_size))
                .map_err(|e| End::Refused(ErrorCode::BadRequest, e.to_string()))?;
            let lease = shared.registry.acquire_writer(cluster).await;
            let identity = ClusterIdentity {
                system_id,
                segment_size,
            };
            let dir = shared.wal_dir(cluster);
            let storage = shared.storage.clone();
            let archive = blocking(move || open_and_rotate(&dir, identity, storage)).await??;
            let _streaming = client
                .telemetry
                .writer_started(client.remote, archive.durable());
            wal_session(archive, lease, io, client.telemetry).await
        }
        Some(first @ (Message::GetPosition { .. } | Message::GetFile { .. })) => {
            read_session(shared, client, io, first).await
        }
        Some(other) => Err(End::Refused(
            ErrorCode::BadRequest,
            format!(
                "the first message must be Hello, GetPosition or GetFile, not {:#04x}",
                other.tag()
            ),
        )),
    }
}

/// Answers position queries and file requests, in order, until the client finishes the stream.
async fn read_session(
    shared: &Arc<Shared>,
    client: Client<'_>,
    io: &mut Framed,
    first: Message,
) -> Result<(), End> {
    let cluster = client.cluster;
    let mut next = Some(first);
    while let Some(msg) = next {
        match msg {
            Message::GetPosition { timeline } => {
                let dir = shared.wal_dir(cluster);
                let keyring = shared.storage.keyring.clone();
                let answer = blocking(move || position_of(&dir, keyring, timeline)).await??;
                io.send(&[answer]).await?;
            }
            Message::GetFile { name } => send_file(shared, client, io, name).await?,
            other => {
                return Err(End::Refused(
                    ErrorCode::BadRequest,
                    format!(
                        "only GetPosition and GetFile may follow a read request, not {:#04x}",
                        other.tag()
                    ),
                ));
            }
        }
        next = io.next().await?;
    }
    Ok(())
}

/// Plaintext bytes per `FileData` frame.
const FILE_CHUNK: usize = 1 << 20;

/// Sends one archived file (decrypted, checked) as `FileData` frames and `FileEnd`, or
/// `NoSuchFile`.
async fn send_file(
    shared: &Arc<Shared>,
    client: Client<'_>,
    io: &mut Framed,
    name: String,
) -> Result<(), End> {
    let cluster = client.cluster;
    let _permit = shared
        .file_reads
        .acquire()
        .await
        .map_err(|_| End::Refused(ErrorCode::Internal, "server shutting down".to_owned()))?;
    let dir = shared.wal_dir(cluster);
    let keyring = shared.storage.keyring.clone();
    let wanted = name.clone();
    let file = blocking(move || read_archived(&dir, keyring, &wanted)).await??;
    let Some(file) = file else {
        tracing::debug!("restore: {name} not in the archive");
        client.telemetry.restore_missing();
        return io.send(&[Message::NoSuchFile { name }]).await;
    };
    let crc = crc32c::crc32c(&file.content);
    let content = bytes::Bytes::from(file.content);
    for chunk in content.chunks(FILE_CHUNK) {
        io.send(&[Message::FileData {
            data: content.slice_ref(chunk),
        }])
        .await?;
    }
    io.send(&[Message::FileEnd {
        size: content.len() as u64,
        crc32c: crc,
        partial: file.partial,
    }])
    .await?;
    let kind = match file.name {
        klio_wal::WalFileName::History { .. } => "history",
        _ if file.partial => "partial",
        _ => "segment",
    };
    client.telemetry.restore_served(kind, content.len() as u64);
    tracing::info!(
        "restore: sent {name} ({} bytes{})",
        content.len(),
        if file.partial {
            format!(
                ", in progress: {} bytes of WAL, zero-padded",
                file.valid_len
            )
        } else {
            String::new()
        }
    );
    Ok(())
}

/// A segment or history file of the archive at `dir`, by PostgreSQL name.
fn read_archived(
    dir: &std::path::Path,
    keyring: Option<klio_crypto::Keyring>,
    name: &str,
) -> Result<Option<klio_store::wal_archive::ArchivedFile>, End> {
    if !dir.exists() {
        return Ok(None);
    }
    let archive = WalArchive::open_existing_with(dir, keyring).map_err(read_error)?;
    let parsed = klio_wal::WalFileName::parse(name, archive.identity().segment_size)
        .ok()
        .filter(|n| {
            matches!(
                n,
                klio_wal::WalFileName::Segment { .. } | klio_wal::WalFileName::History { .. }
            )
        })
        .ok_or_else(|| {
            End::Refused(
                ErrorCode::BadRequest,
                format!(
                    "{name:?} is not the name of a WAL segment or timeline history file of this \
                     cluster"
                ),
            )
        })?;
    archive.read_file(&parsed).map_err(read_error)
}

/// Damage found while reading for a restore is not worth retrying: say so.
fn read_error(e: WalArchiveError) -> End {
    use WalArchiveError as E;
    match e {
        E::DamagedSegment { .. }
        | E::DamagedJournal { .. }
        | E::Crypto { .. }
        | E::Encrypted { .. } => End::Refused(ErrorCode::DamagedFile, e.to_string()),
        other => other.into(),
    }
}

/// Opens the cluster's archive for writing. When the configured primary key is new (keys were
/// rotated by restarting with it), the data keys of all existing encrypted files are re-wrapped
/// under it, so that the old key can be retired once `klio keys in-use` no longer lists it.
/// Only the writer may do this: it is the one handle that may touch the journal in progress.
fn open_and_rotate(
    dir: &std::path::Path,
    identity: ClusterIdentity,
    storage: klio_store::wal_archive::StorageOptions,
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

fn position_of(
    dir: &std::path::Path,
    keyring: Option<klio_crypto::Keyring>,
    timeline: Option<TimelineId>,
) -> Result<Message, End> {
    if !dir.exists() {
        return Ok(Message::Position {
            timeline,
            durable: None,
        });
    }
    let archive = WalArchive::open_existing_with(dir, keyring)?;
    Ok(match timeline {
        Some(t) => Message::Position {
            timeline: Some(t),
            durable: archive.durable_on(t),
        },
        None => Message::Position {
            timeline: archive.durable().map(|d| d.0),
            durable: archive.durable().map(|d| d.1),
        },
    })
}

/// Runs blocking storage work (file writes, fsync).
///
/// On a current-thread runtime (what `klio server start` uses) the work runs inline: every
/// thread hand-off on a commit's path costs more CPU and latency than the fsync itself on fast
/// disks, measured with `klio-bench sync-commit`. The price is that one cluster's fsync delays
/// the others on the same thread. On a multi-threaded runtime the current worker blocks in
/// place, so that fsyncs of different clusters overlap.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, End> {
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => Ok(f()),
        tokio::runtime::RuntimeFlavor::MultiThread => Ok(tokio::task::block_in_place(f)),
        _ => tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| End::Refused(ErrorCode::Internal, format!("storage task failed: {e}"))),
    }
}

/// What a batch of frames produced: replies, the new durable position, and what to report.
struct BatchResult {
    replies: Vec<Message>,
    ack: Option<(TimelineId, Lsn)>,
    /// When the batch's first bytes arrived.
    received_at: std::time::Instant,
    /// How long the fsync that made it durable took.
    fsync: Option<std::time::Duration>,
    /// WAL bytes in it.
    bytes: u64,
    /// Segments it completed.
    segments: u64,
}

fn apply_batch(
    archive: &mut WalArchive,
    timeline: &mut Option<TimelineId>,
    frames: Vec<Message>,
    received_at: std::time::Instant,
) -> Result<BatchResult, End> {
    let size = archive.identity().segment_size;
    let mut replies = Vec::new();
    let mut wrote = false;
    let mut bytes = 0;
    let mut segments = 0;
    for msg in frames {
        match msg {
            Message::StartWal { timeline: t, start } => {
                if let BeginOutcome::Gap { from, to } = archive.begin(t, start)? {
                    tracing::error!(
                        "archive gap on timeline {t}: WAL from {from} to {to} was never received; \
                         recovery cannot pass this range (was the replication slot dropped?)"
                    );
                }
                *timeline = Some(t);
            }
            Message::WalData { start, data } => {
                archive.append(start, &data)?;
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
                archive.store_history(t, &content)?;
            }
            Message::GetPosition { timeline: t } => {
                let t = t.or_else(|| archive.durable().map(|d| d.0));
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
    let (ack, fsync) = if wrote {
        let began = std::time::Instant::now();
        // One fsync covers every byte received in this batch; only now may it be acknowledged.
        let synced = archive.sync()?;
        (
            synced.zip(*timeline).map(|(lsn, t)| (t, lsn)),
            Some(began.elapsed()),
        )
    } else {
        (None, None)
    };
    Ok(BatchResult {
        replies,
        ack,
        received_at,
        fsync,
        bytes,
        segments,
    })
}

/// Batches carrying at least this much WAL are stored on a blocking thread while the stream
/// goes on reading: a bulk stream then gets receiving (QUIC, TLS) and storing (sealing, writes,
/// fsync) on two cores instead of taking turns on one. Smaller batches (a commit's WAL) are
/// stored inline: a thread hand-off would cost a commit more than it saves.
const OFFLOAD_BYTES: usize = 1 << 20;

/// How far the stream reads ahead of a batch being stored; beyond it QUIC flow control holds
/// the client back, which bounds the memory of every stream.
const READ_AHEAD: usize = 16 << 20;

/// An archive back from storing a batch, with the batch's outcome.
type Stored = (WalArchive, Result<(BatchResult, Option<TimelineId>), End>);

fn store_batch(
    mut archive: WalArchive,
    mut timeline: Option<TimelineId>,
    frames: Vec<Message>,
    received_at: std::time::Instant,
) -> Stored {
    let r = apply_batch(&mut archive, &mut timeline, frames, received_at);
    (archive, r.map(|r| (r, timeline)))
}

fn wal_bytes(frames: &[Message]) -> usize {
    frames
        .iter()
        .map(|m| match m {
            Message::WalData { data, .. } => data.len(),
            _ => 0,
        })
        .sum()
}

async fn wal_session(
    archive: WalArchive,
    mut lease: WriterLease,
    io: &mut Framed,
    telemetry: &ClusterTelemetry,
) -> Result<(), End> {
    let durable = archive.durable();
    io.send(&[Message::Welcome {
        version: PROTOCOL_VERSION,
        durable,
    }])
    .await?;
    tracing::info!(
        "WAL session started; durable position {}",
        durable.map_or_else(
            || "none".to_owned(),
            |(t, l)| format!("{l} on timeline {t}")
        )
    );
    // A batch being stored on a blocking thread; only one at a time, so batches stay in order.
    let mut storing: Option<tokio::task::JoinHandle<Stored>> = None;
    let result = stream_batches(archive, &mut lease, io, &mut storing, telemetry).await;
    if let Some(batch) = storing.take() {
        // Whatever ended the session, the batch still holds the archive: wait for it, so that
        // the archive is closed before the lease is released and a new session opens it.
        let _ = batch.await;
    }
    result
}

/// Reads frames and stores them in batches until the client finishes the stream.
async fn stream_batches(
    archive: WalArchive,
    lease: &mut WriterLease,
    io: &mut Framed,
    storing: &mut Option<tokio::task::JoinHandle<Stored>>,
    telemetry: &ClusterTelemetry,
) -> Result<(), End> {
    let mut archive = Some(archive);
    let mut timeline: Option<TimelineId> = None;
    let mut last_ack: Option<(TimelineId, Lsn)> = None;
    let mut finished = false;
    loop {
        if storing.is_none() {
            let received_at = io.pending_since.unwrap_or_else(std::time::Instant::now);
            let frames = take_upstream(io.drain()?, telemetry);
            telemetry.received(wal_bytes(&frames) as u64);
            if frames.is_empty() && finished {
                return Ok(());
            }
            if !frames.is_empty() {
                let a = archive
                    .take()
                    .ok_or_else(|| End::Refused(ErrorCode::Internal, "archive lost".to_owned()))?;
                let t = timeline;
                if wal_bytes(&frames) >= OFFLOAD_BYTES {
                    *storing = Some(tokio::task::spawn_blocking(move || {
                        store_batch(a, t, frames, received_at)
                    }));
                } else {
                    let stored = blocking(move || store_batch(a, t, frames, received_at)).await?;
                    let state = (&mut archive, &mut timeline, &mut last_ack);
                    acknowledge(stored, state, io, telemetry).await?;
                    continue;
                }
            }
        }
        tokio::select! {
            _ = lease.preempted() => {
                return Err(End::Refused(
                    ErrorCode::Preempted,
                    "a newer session of this cluster took over".to_owned(),
                ));
            }
            stored = async { storing.as_mut().expect("checked by the guard").await }, if storing.is_some() => {
                *storing = None;
                let stored = stored.map_err(|e| {
                    End::Refused(ErrorCode::Internal, format!("storage task failed: {e}"))
                })?;
                let state = (&mut archive, &mut timeline, &mut last_ack);
                acknowledge(stored, state, io, telemetry).await?;
            }
            more = io.fill(), if !finished && io.rbuf.len() < READ_AHEAD => {
                finished = !more?;
            }
        }
    }
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

/// The session's state that a stored batch hands back or moves on.
type SessionState<'a> = (
    &'a mut Option<WalArchive>,
    &'a mut Option<TimelineId>,
    &'a mut Option<(TimelineId, Lsn)>,
);

/// Takes the archive back from a stored batch and sends the replies and the new durable
/// position (only now, after the batch's fsync).
async fn acknowledge(
    (a, result): Stored,
    (archive, timeline, last_ack): SessionState<'_>,
    io: &mut Framed,
    telemetry: &ClusterTelemetry,
) -> Result<(), End> {
    *archive = Some(a);
    let (batch, t) = result?;
    *timeline = t;
    // Before the acknowledgement leaves: whoever sees PostgreSQL's flush position move can
    // already see it in the status.
    telemetry.stored(batch.fsync, batch.bytes, batch.segments, batch.ack);
    let mut out = batch.replies;
    let mut acked = false;
    if let Some(ack) = batch.ack.filter(|a| Some(*a) != *last_ack) {
        out.push(Message::Ack {
            timeline: ack.0,
            durable: ack.1,
        });
        *last_ack = Some(ack);
        acked = true;
    }
    if !out.is_empty() {
        io.send(&out).await?;
    }
    if acked {
        telemetry.acknowledged(batch.received_at.elapsed());
    }
    Ok(())
}
