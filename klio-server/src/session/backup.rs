//! A backup session (after `BackupHello`): the client offers block hashes, puts the blocks the
//! cluster does not hold, sends the file entries and PostgreSQL's manifest, then
//! `FinishBackup`; the server makes it all durable, waits for the backup's WAL to be archived
//! and only then makes the backup appear in the catalog.
//!
//! One backup per cluster runs at a time (the backup lease); a second is refused with
//! `BackupInProgress`. Every block is checked against its hash before it is stored, and every
//! file entry may only name blocks the cluster holds.
//!
//! # Answering ahead of storing
//!
//! The session reads its stream on the runtime and answers each `HaveBlocks` as it arrives;
//! everything else goes, in order, to a storing thread, which checks and stores blocks and
//! stages the file list and manifest, at most [`STORE_QUEUE_BYTES`] behind. So the client
//! learns which blocks of its next batch are new (and compresses them) while the blocks of
//! the last one are still being stored; answered only after them, both sides waited in turn.
//! A block the client sent is held from the moment it is read: until the index holds it
//! (queued, or in the open pack), the session's [`SentBlocks`] does. A file entry is checked
//! by the storing thread, after every block sent before it is stored.
//!
//! # Durability
//!
//! - Blocks go into the session's open pack; "held" covers the blocks of that pack too, and
//!   those read but not yet stored (a failure to store them ends the session). When
//!   the session finishes, the pack is closed (fsync, then its index) before the file list and
//!   manifest are fsynced, and those before the WAL wait; the catalog entry is written and
//!   the backup renamed into the catalog last (see `klio_store::backup`).
//! - However the session ends before that (a client `Error`, a dropped stream, a refused
//!   message, the WAL timeout), nothing appears in the catalog: the staging directory is
//!   removed, and the open pack is closed so that a rerun reuses the blocks already sent.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use klio_crypto::{SecureRandom, SystemRandom};
use klio_proto::klio::{
    BackupFinish, BackupInfo, BackupStatus, BlockHash, CATALOG_SCHEMA, CatalogTablespace,
    ClusterName, ErrorCode, MAX_HASHES_PER_MESSAGE, Message, PROTOCOL_VERSION,
};
use klio_store::backup::{
    BackupId, BackupStoreError, BlockCoding, BlockWriter, MAX_BLOCK_LEN, Put, SealedBackup,
    StagedBackup, WalCoverage,
};
use klio_wal::ErrorChain;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::backup_env::{BackupEnv, coverage_text, hash_key_message, wal_range_text};
use super::error_code::backup_refusal;
use super::framing::FrameIo;
use super::inbox::Inbox;
use super::{End, off_runtime, storage_task_failed};
use crate::backup_registry::{Claims, SharedIndex};

/// What the client's `BackupHello` said.
pub(super) struct BackupHello {
    pub(super) version: u16,
    /// The cluster the client is configured for.
    pub(super) claimed: ClusterName,
    pub(super) system_id: u64,
}

/// Runs a backup session to its end; the backup's catalog entry once it is complete.
pub(super) async fn run<T: FrameIo>(
    env: &BackupEnv,
    io: &mut T,
    hello: BackupHello,
) -> Result<BackupInfo, End> {
    let cluster = &env.cluster;
    let claimed = &hello.claimed;
    if claimed != cluster {
        return Err(End::Refused(
            ErrorCode::Unauthorized,
            format!(
                "this certificate is for cluster {cluster}, not {claimed}: use the client certificate of {claimed}"
            ),
        ));
    }
    if hello.version != PROTOCOL_VERSION {
        return Err(End::Refused(
            ErrorCode::UnsupportedVersion,
            format!(
                "protocol version {} is not supported (server speaks {PROTOCOL_VERSION})",
                hello.version
            ),
        ));
    }
    // Held until the backup is published or abandoned, however the session ends.
    let lease = env.backups.try_lease(cluster).ok_or_else(|| {
        End::Refused(
            ErrorCode::BackupInProgress,
            format!(
                "another backup of cluster {cluster} is running (one runs at a time): wait for \
                 it to finish, then run this one again"
            ),
        )
    })?;
    if let Some(recorded) = env.archived_system_id().await?
        && recorded != hello.system_id
    {
        return Err(End::Refused(
            ErrorCode::SystemIdMismatch,
            format!(
                "cluster {cluster}'s WAL archive belongs to the PostgreSQL system {recorded}, but \
                 this is system {}: a backup of another PostgreSQL cluster needs its own Klio \
                 cluster name and certificate",
                hello.system_id
            ),
        ));
    }
    let index = env.index().await?;
    let sent = Arc::new(SentBlocks::default());
    let writing = {
        let (store, index, sent) = (env.store.clone(), index.clone(), sent.clone());
        let (backups, cluster) = (env.backups.clone(), cluster.clone());
        off_runtime(move || {
            let claims = backups.claims(&cluster);
            backups.with_catalog_lock(&cluster, || Writing::start(store, index, claims, sent))
        })
        .await??
    };
    let id = writing.staged.id().clone();
    tracing::info!("backup {id} started");
    let mut inbox = Inbox::new(io);
    let welcome = [
        Message::BackupWelcome {
            version: PROTOCOL_VERSION,
            backup_id: id.to_string(),
        },
        hash_key_message(&writing.coding),
    ];
    if let Err(end) = inbox.send(&welcome).await {
        return Err(abandon(writing, end).await);
    }
    let answering = Answering {
        index,
        sent,
        claims: writing.claims.clone(),
        telemetry: env.telemetry.clone(),
    };
    let (writing, finish) = receive(&mut inbox, writing, answering).await?;
    let info = complete(env, writing, finish, &mut inbox, hello.system_id).await?;
    drop(lease);
    env.retention.after_backup(cluster);
    inbox
        .send(&[Message::BackupEntry {
            json: info.to_json().into(),
        }])
        .await?;
    // The client normally finishes its side now; give it a moment, so that the answer is not
    // cut short by closing the stream under it. Whatever it sends now changes nothing.
    let _ = tokio::time::timeout(FINISH_LINGER, async {
        while let Ok(Some(_)) = inbox.next().await {}
    })
    .await;
    Ok(info)
}

/// Messages read but not yet applied by the storing thread, in bytes of blocks, hashes and
/// manifest: about two client batches (16 MiB of block data each), so that the `HaveBlocks`
/// of the next batch is read, past the blocks of the last one, while those are stored.
const STORE_QUEUE_BYTES: usize = 32 << 20;

/// Messages for the storing thread, with the room they take in its queue.
struct Queued {
    messages: Vec<Message>,
    _room: OwnedSemaphorePermit,
}

/// How the reading side of a session stopped without an error of its own.
enum ReadOutcome {
    /// `FinishBackup` went to the storing thread, last.
    Finished,
    /// The storing thread stopped taking messages: its result says why.
    StoringStopped,
}

/// Reads the session's messages up to `FinishBackup`, answering `HaveBlocks` at once and
/// having the rest applied in order by a storing thread (see the
/// [module documentation](self)); `writing` and the finish once everything before it is
/// applied. However the session ends before that, the backup is abandoned.
async fn receive<T: FrameIo>(
    inbox: &mut Inbox<'_, T>,
    writing: Writing,
    answering: Answering,
) -> Result<(Writing, BackupFinish), End> {
    let id = writing.staged.id().clone();
    let (queue, queued) = mpsc::unbounded_channel();
    let storing = tokio::task::spawn_blocking(move || writing.store_queued(queued));
    let received = read_messages(inbox, &answering, &queue, &id).await;
    // No more messages: the storing thread applies what is queued and returns.
    drop(queue);
    drop(answering);
    let (writing, stored) = storing.await.map_err(storage_task_failed)?;
    let end = match (received, stored) {
        (Ok(ReadOutcome::Finished), Ok(Some(finish))) => return Ok((writing, finish)),
        // The storing thread's failure comes first: it is why reading stopped, if it did.
        (_, Err(end)) | (Err(end), Ok(_)) => end,
        (Ok(_), Ok(_)) => End::Refused(
            ErrorCode::Internal,
            format!("backup {id}: the storing thread stopped before FinishBackup"),
        ),
    };
    Err(abandon(writing, end).await)
}

/// The reading side of [`receive`].
async fn read_messages<T: FrameIo>(
    inbox: &mut Inbox<'_, T>,
    answering: &Answering,
    queue: &mpsc::UnboundedSender<Queued>,
    id: &BackupId,
) -> Result<ReadOutcome, End> {
    let room = Arc::new(Semaphore::new(STORE_QUEUE_BYTES));
    loop {
        let first = tokio::select! {
            next = inbox.next() => next?,
            () = queue.closed() => return Ok(ReadOutcome::StoringStopped),
        };
        let Some(first) = first else {
            return Err(End::Closed(format!(
                "the client finished the stream before FinishBackup: backup {id} abandoned"
            )));
        };
        let mut batch = vec![first];
        batch.extend(inbox.take_buffered()?);
        let mut answers = Vec::new();
        let mut to_store = Vec::new();
        let mut bytes = 0;
        // Set by the message that ends the reading; what came before it is still answered
        // and stored (a rerun then finds the blocks sent before a client's `Error`).
        let mut stop = None;
        let mut messages = batch.into_iter();
        for msg in messages.by_ref() {
            let step = match msg {
                Message::HaveBlocks { hashes } => match check_count(hashes.len()) {
                    Ok(()) => {
                        let answering = answering.clone();
                        let held = off_runtime(move || answering.held(&hashes)).await?;
                        answers.push(Message::BlocksHeld { held });
                        None
                    }
                    Err(end) => Some(Err(end)),
                },
                Message::Error { message, .. } => Some(Err(End::Closed(format!(
                    "the client gave up on backup {id}: {message}"
                )))),
                Message::PutBlock { .. }
                | Message::FileEntry { .. }
                | Message::FileBlocks { .. }
                | Message::ManifestData { .. } => {
                    if let Message::PutBlock { block } = &msg {
                        answering.sent.insert(block.hash);
                    }
                    bytes += queued_bytes(&msg);
                    to_store.push(msg);
                    None
                }
                Message::FinishBackup { .. } => {
                    to_store.push(msg);
                    Some(Ok(ReadOutcome::Finished))
                }
                other => Some(Err(End::Refused(
                    ErrorCode::BadRequest,
                    format!(
                        "unexpected message {:#04x} in a backup session",
                        other.tag()
                    ),
                ))),
            };
            if let Some(step) = step {
                stop = Some(step);
                break;
            }
        }
        // Anything after the message that stopped the reading.
        if let Some(Ok(ReadOutcome::Finished)) = stop
            && let Some(late) = messages.next()
        {
            stop = Some(Err(after_finish(&late)));
        }
        if !answers.is_empty() {
            inbox.send(&answers).await?;
        }
        if !to_store.is_empty() {
            // A batch larger than the whole queue waits for it to be empty.
            let want = u32::try_from(bytes.min(STORE_QUEUE_BYTES)).unwrap_or(u32::MAX);
            let room = room.clone().acquire_many_owned(want).await.map_err(|_| {
                End::Refused(
                    ErrorCode::Internal,
                    format!("backup {id}: the storing queue was closed"),
                )
            })?;
            let queued = Queued {
                messages: to_store,
                _room: room,
            };
            if queue.send(queued).is_err() {
                return Ok(ReadOutcome::StoringStopped);
            }
        }
        if let Some(stop) = stop {
            return stop;
        }
    }
}

/// What a message for the storing thread holds in memory, roughly: its blocks' bytes, hashes
/// or manifest data.
fn queued_bytes(msg: &Message) -> usize {
    match msg {
        Message::PutBlock { block } => block.data.len(),
        Message::FileEntry { entry } => entry.blocks.len() * size_of::<BlockHash>(),
        Message::FileBlocks { blocks } => blocks.len() * size_of::<BlockHash>(),
        Message::ManifestData { data } => data.len(),
        _ => 0,
    }
}

/// The refusal of a message that followed `FinishBackup`.
fn after_finish(msg: &Message) -> End {
    End::Refused(
        ErrorCode::BadRequest,
        format!(
            "nothing but Error may follow FinishBackup, not {:#04x}",
            msg.tag()
        ),
    )
}

/// Blocks the client sent in this session that the block index does not hold yet: queued for
/// the storing thread, or in the open pack. Each leaves once the index holds it, so they are
/// at most a pack's and a queue's worth.
#[derive(Debug, Default)]
struct SentBlocks(Mutex<HashSet<BlockHash>>);

impl SentBlocks {
    fn set(&self) -> MutexGuard<'_, HashSet<BlockHash>> {
        // A set of hashes: a panic elsewhere leaves nothing half-updated.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn insert(&self, hash: BlockHash) {
        self.set().insert(hash);
    }

    /// Forgets `hashes`, once the index holds them.
    fn indexed<'h>(&self, hashes: impl IntoIterator<Item = &'h BlockHash>) {
        let mut set = self.set();
        for h in hashes {
            set.remove(h);
        }
    }
}

/// Answers `HaveBlocks` on the reading side, while the storing thread may be behind.
#[derive(Clone)]
struct Answering {
    index: SharedIndex,
    sent: Arc<SentBlocks>,
    claims: Arc<Claims>,
    telemetry: crate::telemetry::ClusterTelemetry,
}

impl Answering {
    /// Which of `hashes` the cluster holds, claiming those in the index.
    fn held(&self, hashes: &[BlockHash]) -> Vec<bool> {
        // The sent blocks first: one leaves them only once the index holds it, so a block
        // that is in neither when looked for in this order was never sent.
        let mut held: Vec<bool> = {
            let sent = self.sent.set();
            hashes.iter().map(|h| sent.contains(h)).collect()
        };
        let idx = self.index.read().unwrap_or_else(PoisonError::into_inner);
        for (h, held) in hashes.iter().zip(held.iter_mut()) {
            *held = *held || idx.contains(h);
        }
        // Under the same read lock: no sweep can forget them in between.
        self.claims
            .claim(hashes.iter().filter_map(|h| idx.slot_of(h)));
        drop(idx);
        let n_held = held.iter().filter(|h| **h).count() as u64;
        self.telemetry.blocks_offered(hashes.len() as u64, n_held);
        held
    }
}

/// How long a completed session waits for the client to finish its side of the stream.
const FINISH_LINGER: Duration = Duration::from_secs(2);

/// Makes the backup durable, waits for its WAL and publishes it.
async fn complete<T: FrameIo>(
    env: &BackupEnv,
    writing: Writing,
    finish: BackupFinish,
    inbox: &mut Inbox<'_, T>,
    system_id: u64,
) -> Result<BackupInfo, End> {
    if let Err(end) = check_finish(&finish) {
        return Err(abandon(writing, end).await);
    }
    let id = writing.staged.id().clone();
    // The claims stay until the backup is published (or given up): until then no catalog
    // entry refers to its blocks.
    let (sealed, referenced, new_stored, claims) = off_runtime(move || writing.seal()).await??;
    let (start, end) = (finish.start, finish.end);
    if let Err(end) = wait_for_wal(env, &id, &finish, inbox).await {
        let _ = off_runtime(move || sealed.abandon()).await;
        tracing::info!("backup {id} abandoned");
        return Err(end);
    }
    let totals = sealed.totals();
    let info = BackupInfo {
        schema: CATALOG_SCHEMA,
        id: id.to_string(),
        cluster: env.cluster.to_string(),
        label: finish.label,
        status: BackupStatus::Complete,
        start: start.into(),
        end: end.into(),
        started_at: rfc3339_of_ms(finish.started_at_ms),
        ended_at: rfc3339_of_ms(finish.ended_at_ms),
        completed_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        postgres_version: finish.pg_version,
        system_identifier: system_id.to_string(),
        block_size: finish.block_size,
        tablespaces: finish
            .tablespaces
            .into_iter()
            .map(|t| CatalogTablespace {
                oid: t.oid,
                location: t.location,
            })
            .collect(),
        files: totals.files,
        blocks: totals.blocks,
        logical_bytes: totals.logical_bytes,
        referenced_stored_bytes: referenced,
        new_stored_bytes: new_stored,
        pinned: false,
        capture: finish.capture,
    };
    let entry = info.clone();
    off_runtime(move || sealed.publish(&entry))
        .await?
        .map_err(|e| backup_refusal(&e))?;
    drop(claims);
    tracing::info!(
        "backup {id} complete: {} files, {} bytes, {} new bytes stored",
        info.files,
        info.logical_bytes,
        info.new_stored_bytes
    );
    Ok(info)
}

/// Waits until the archive holds the backup's WAL range, polling it, up to the client's
/// timeout; a client `Error` or a dropped stream meanwhile ends the wait.
async fn wait_for_wal<T: FrameIo>(
    env: &BackupEnv,
    id: &BackupId,
    finish: &BackupFinish,
    inbox: &mut Inbox<'_, T>,
) -> Result<(), End> {
    let (start, end) = (finish.start, finish.end);
    let deadline = Instant::now() + Duration::from_secs(u64::from(finish.wal_timeout_s));
    let mut client_finished = false;
    // Subscribed before the first look: WAL stored after it wakes the next one.
    let mut stored = env.telemetry.wal_stored();
    loop {
        let looked = Instant::now();
        let coverage = env.wal_coverage(start, end).await?;
        if coverage == Some(WalCoverage::Archived) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(End::Refused(
                ErrorCode::WalNotArchived,
                format!(
                    "{} did not reach the archive within {} s ({}): is `klio send-wal` running \
                     for cluster {}? Backup {id} is abandoned; its blocks stay for the next run",
                    wal_range_text(start, end),
                    finish.wal_timeout_s,
                    coverage_text(coverage.as_ref()),
                    env.cluster
                ),
            ));
        }
        tokio::select! {
            // WAL became durable: look again, at most every WAL_LOOK_GAP (ingest under load
            // stores hundreds of batches a second). The poll covers a server without ingest.
            Ok(()) = stored.changed() => {
                tokio::time::sleep_until((looked + WAL_LOOK_GAP).into()).await;
            }
            _ = tokio::time::sleep(env.wal_poll) => {}
            next = inbox.next(), if !client_finished => match next? {
                // The client may finish its side of the stream while it waits for the answer.
                None => client_finished = true,
                Some(Message::Error { message, .. }) => {
                    return Err(End::Closed(format!(
                        "the client gave up on backup {id} while its WAL was awaited: {message}"
                    )));
                }
                Some(other) => return Err(after_finish(&other)),
            },
        }
    }
}

/// The shortest time between two looks for a finishing backup's WAL.
const WAL_LOOK_GAP: Duration = Duration::from_millis(5);

/// Refuses a `FinishBackup` whose facts cannot describe a backup.
fn check_finish(finish: &BackupFinish) -> Result<(), End> {
    let bad = |why: String| Err(End::Refused(ErrorCode::BadRequest, why));
    if finish.block_size == 0 || finish.block_size > MAX_BLOCK_LEN {
        return bad(format!(
            "a block size of {} bytes is not one a client cuts files with",
            finish.block_size
        ));
    }
    if finish.end.lsn < finish.start.lsn || finish.end.timeline < finish.start.timeline {
        return bad(format!(
            "the backup cannot end ({}) before it starts ({})",
            finish.end, finish.start
        ));
    }
    Ok(())
}

/// Milliseconds since the epoch as RFC 3339 UTC, to the second (before 1970 becomes 1970).
fn rfc3339_of_ms(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Ends the backup without a catalog entry and returns `end`: closes the open pack (so a rerun
/// reuses its blocks) and removes the staging directory.
async fn abandon(writing: Writing, end: End) -> End {
    let id = writing.staged.id().clone();
    match off_runtime(move || writing.abandon()).await {
        Ok(Ok(())) => tracing::info!("backup {id} abandoned"),
        Ok(Err(e)) => tracing::warn!("backup {id} abandoned, but: {}", ErrorChain(&e)),
        Err(_) => tracing::warn!("backup {id} abandoned, but its cleanup did not run"),
    }
    end
}

/// A backup being written: its blocks, its file list and manifest.
struct Writing {
    staged: StagedBackup,
    writer: BlockWriter,
    index: SharedIndex,
    /// The blocks this backup was told are held, stored, or named: retention keeps them.
    claims: Arc<Claims>,
    /// Shared with the reading side, which adds each block sent; forgotten here once indexed.
    sent: Arc<SentBlocks>,
    coding: BlockCoding,
    /// The cluster's store: the backup session writes its dictionary.
    store: klio_store::backup::BackupStore,
    /// The path of the last file entry (for errors about its blocks).
    current_path: Option<String>,
}

impl Writing {
    /// Prepares the store (leftovers, the block-hash key, the dictionary) and stages a new
    /// backup.
    fn start(
        store: klio_store::backup::BackupStore,
        index: SharedIndex,
        claims: Claims,
        sent: Arc<SentBlocks>,
    ) -> Result<Self, End> {
        let refuse = |e: BackupStoreError| backup_refusal(&e);
        let coding = store.prepare_for_backup().map_err(refuse)?;
        let mut attempt = 0;
        let staged = loop {
            let id = new_backup_id()?;
            match store.stage(&id) {
                Ok(s) => break s,
                // Two backups in the same second drew the same suffix: draw again.
                Err(BackupStoreError::BackupExists { .. }) if attempt < 3 => attempt += 1,
                Err(e) => return Err(refuse(e)),
            }
        };
        Ok(Self {
            staged,
            writer: store.block_writer(coding.clone()),
            coding,
            store,
            index,
            claims: Arc::new(claims),
            sent,
            current_path: None,
        })
    }

    /// Refuses blocks the cluster does not hold; claims those it does.
    fn check_held(&self, path: &str, blocks: &[BlockHash]) -> Result<(), End> {
        let idx = self.index.read().unwrap_or_else(|p| p.into_inner());
        match blocks.iter().find(|h| !self.writer.holds(&idx, h)) {
            None => {
                self.claims
                    .claim(blocks.iter().filter_map(|h| idx.slot_of(h)));
                Ok(())
            }
            Some(h) => Err(End::Refused(
                ErrorCode::BadRequest,
                format!(
                    "file {path:?} refers to block {h}, which the server does not hold: send a \
                     file's blocks with PutBlock before its entry"
                ),
            )),
        }
    }

    /// Applies the queued messages in order until `FinishBackup` or the end of the queue
    /// (the reading side stopped); then returns, with the finish if it came, or the error
    /// that stopped it.
    fn store_queued(
        mut self,
        mut queue: mpsc::UnboundedReceiver<Queued>,
    ) -> (Self, Result<Option<BackupFinish>, End>) {
        while let Some(queued) = queue.blocking_recv() {
            match self.apply(queued.messages) {
                Ok(None) => {}
                done => return (self, done),
            }
        }
        (self, Ok(None))
    }

    /// Applies messages the reading side passed on, in order; the finish, if they end with it.
    fn apply(&mut self, batch: Vec<Message>) -> Result<Option<BackupFinish>, End> {
        let refuse = |e: BackupStoreError| backup_refusal(&e);
        for msg in batch {
            match msg {
                Message::PutBlock { block } => {
                    let put = {
                        let idx = self.index.read().unwrap_or_else(|p| p.into_inner());
                        let put = self.writer.put(&idx, &block).map_err(refuse)?;
                        if matches!(put, Put::Held) && idx.contains(&block.hash) {
                            self.sent.indexed([&block.hash]);
                        }
                        put
                    };
                    if let Put::StoredAndClosed(pack) = put {
                        self.add_pack(pack);
                    }
                }
                Message::FileEntry { entry } => {
                    check_count(entry.blocks.len())?;
                    self.check_held(&entry.path, &entry.blocks)?;
                    self.staged.add_entry(&entry).map_err(refuse)?;
                    self.current_path = Some(entry.path);
                }
                Message::FileBlocks { blocks } => {
                    check_count(blocks.len())?;
                    let path = self.current_path.as_deref().unwrap_or("(no file yet)");
                    self.check_held(path, &blocks)?;
                    self.staged.add_blocks(&blocks).map_err(refuse)?;
                }
                Message::ManifestData { data } => {
                    self.staged.add_manifest(&data).map_err(refuse)?;
                }
                // The reading side passes it on last.
                Message::FinishBackup { finish } => return Ok(Some(finish)),
                other => {
                    return Err(End::Refused(
                        ErrorCode::Internal,
                        format!(
                            "message {:#04x} was passed on to be stored, which only blocks, \
                             file entries and the manifest are",
                            other.tag()
                        ),
                    ));
                }
            }
        }
        Ok(None)
    }

    /// Adds a pack this session closed to the index, claiming its blocks.
    fn add_pack(&self, pack: klio_store::backup::ClosedPack) {
        let hashes: Vec<BlockHash> = pack.hashes().copied().collect();
        {
            let mut idx = self.index.write().unwrap_or_else(|p| p.into_inner());
            let added = idx.insert(pack);
            self.claims.claim(added);
        }
        // Only now that the index holds them (see `Answering::held`).
        self.sent.indexed(&hashes);
    }

    /// Makes the blocks, the file list and the manifest durable; the sealed backup, its
    /// referenced stored bytes, the bytes this session stored, and its claims.
    fn seal(mut self) -> Result<(SealedBackup, u64, u64, Arc<Claims>), End> {
        let refuse = |e: BackupStoreError| backup_refusal(&e);
        // The blocks first: the file list refers to them.
        if let Some(pack) = self.writer.close().map_err(refuse)? {
            self.add_pack(pack);
        }
        self.keep_dictionary();
        let sealed = self.staged.seal().map_err(refuse)?;
        let referenced = {
            let idx = self.index.read().unwrap_or_else(|p| p.into_inner());
            sealed.referenced_stored_bytes(&idx).map_err(refuse)?
        };
        Ok((
            sealed,
            referenced,
            self.writer.new_stored_bytes(),
            self.claims,
        ))
    }

    /// Keeps the dictionary sampled from this backup's blocks, for a cluster that has none
    /// (its first backup, or the first with enough full-size blocks): later backups compress
    /// against it. Failing to write it costs only that, so it is a warning: the next backup
    /// samples again.
    fn keep_dictionary(&mut self) {
        let Some(dictionary) = self.writer.sampled_dictionary() else {
            return;
        };
        match self.store.keep_dictionary(dictionary) {
            Ok(kept) => tracing::info!(
                "cluster's block dictionary created ({} bytes of samples of this backup's \
                 blocks): later backups compress against it",
                kept.as_bytes().len()
            ),
            Err(e) => tracing::warn!(
                "the block dictionary sampled from this backup was not kept, so the next backup \
                 samples again: {}",
                ErrorChain(&e)
            ),
        }
    }

    /// Closes the open pack (its blocks stay, for a rerun) and removes the staging directory.
    fn abandon(mut self) -> Result<(), BackupStoreError> {
        let closed = match self.writer.close() {
            Ok(Some(pack)) => {
                self.add_pack(pack);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        let removed = self.staged.abandon();
        closed?;
        removed
    }
}

fn check_count(n: usize) -> Result<(), End> {
    if n > MAX_HASHES_PER_MESSAGE {
        return Err(End::Refused(
            ErrorCode::BadRequest,
            format!("{n} block hashes in one message, more than {MAX_HASHES_PER_MESSAGE}"),
        ));
    }
    Ok(())
}

/// A new backup id: the server's UTC time and 4 random hex digits.
fn new_backup_id() -> Result<BackupId, End> {
    let stamp: String = humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    let mut suffix = [0u8; 2];
    SystemRandom::new().fill(&mut suffix).map_err(|_| {
        End::Refused(
            ErrorCode::Internal,
            "the system's random number generator failed while picking a backup id".to_owned(),
        )
    })?;
    BackupId::parse(&format!("{stamp}-{:02x}{:02x}", suffix[0], suffix[1]))
        .map_err(|e| End::Refused(ErrorCode::Internal, ErrorChain(&e).to_string()))
}
