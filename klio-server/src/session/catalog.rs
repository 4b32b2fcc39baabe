//! Catalog requests, in order, until the client finishes the stream: `ListBackups`,
//! `GetBackup` (entry, hash key, files, manifest), `GetBlocks`, `DeleteBackup`,
//! `VerifyBackup`, `PinBackup` and `RunRetention` (the report of a retention run, which runs
//! on a thread of its own). Everything read goes through the store's checks; a damaged block or file is
//! a `DamagedFile` error naming it, never wrong bytes.
//!
//! File lists and manifests are streamed from a blocking thread through a small channel, and
//! blocks read a few at a time, so a request's memory stays bounded whatever the backup's
//! size.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use klio_proto::klio::{
    BackupInfo, BackupTiers, Block, BlockHash, ErrorCode, ListedBackup, MAX_HASHES_PER_MESSAGE,
    Message,
};
use std::collections::BTreeSet;

use klio_store::backup::{
    BackupId, BackupStore, BackupStoreError, FileListItem, VerifyOutcome, VerifyProgress,
    WalCoverage,
};
use klio_wal::ErrorChain;
use tokio::sync::mpsc;

use super::backup_env::{BackupEnv, coverage_text, hash_key_message, wal_range_text};
use super::error_code::{backup_refusal, read_only_refusal};
use super::framing::FrameIo;
use super::inbox::Inbox;
use super::{End, blocking, off_runtime, storage_task_failed};
use crate::backup_registry::SharedIndex;
use crate::tier2::ServerMode;

/// Manifest bytes per `ManifestData` frame.
const MANIFEST_CHUNK: usize = 1 << 20;
/// Blocks read per blocking call of a `GetBlocks` (4 MiB of 64 KiB blocks).
const BLOCKS_PER_READ: usize = 64;
/// Messages buffered between the thread reading a backup and the stream.
const STREAM_DEPTH: usize = 32;
/// How often a verification reports progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Answers catalog requests, in order, until the client finishes the stream.
pub(super) async fn run<T: FrameIo>(
    env: &BackupEnv,
    io: &mut T,
    first: Message,
) -> Result<(), End> {
    let mut inbox = Inbox::new(io);
    let mut next = Some(first);
    while let Some(msg) = next {
        match msg {
            Message::DeleteBackup { .. }
            | Message::PinBackup { .. }
            | Message::RunRetention { .. }
                if env.mode == ServerMode::ReadOnly =>
            {
                return Err(read_only_refusal());
            }
            Message::ListBackups => list(env, &mut inbox).await?,
            Message::GetBackup { id } => get_backup(env, &mut inbox, &id).await?,
            Message::GetBlocks { hashes } => get_blocks(env, &mut inbox, hashes).await?,
            Message::DeleteBackup { id } => delete(env, &mut inbox, &id).await?,
            Message::VerifyBackup { id } => verify(env, &mut inbox, &id).await?,
            Message::PinBackup { id, pinned } => pin(env, &mut inbox, &id, pinned).await?,
            Message::RunRetention { dry_run } => retention(env, &mut inbox, dry_run).await?,
            other => {
                return Err(End::Refused(
                    ErrorCode::BadRequest,
                    format!(
                        "only catalog requests may follow a catalog request, not {:#04x}",
                        other.tag()
                    ),
                ));
            }
        }
        next = inbox.next().await?;
    }
    Ok(())
}

fn parse_id(id: &str) -> Result<BackupId, End> {
    BackupId::parse(id).map_err(|e| backup_refusal(&e))
}

fn entry_message(info: &BackupInfo) -> Message {
    Message::BackupEntry {
        json: info.to_json().into(),
    }
}

async fn list<T: FrameIo>(env: &BackupEnv, inbox: &mut Inbox<'_, T>) -> Result<(), End> {
    let mut entries = if env.has_tier1() {
        let store = env.store.clone();
        blocking(move || store.list())
            .await?
            .map_err(|e| backup_refusal(&e))?
    } else {
        Vec::new()
    };
    let in_tier1: BTreeSet<String> = entries.iter().map(|e| e.id.clone()).collect();
    let mut in_tier2 = BTreeSet::new();
    // Whether the answer can say which tiers hold each backup.
    let mut tiers_known = true;
    if let Some(tier2) = &env.tier2 {
        match tier2.listed().await {
            Ok(listed) => {
                for (id, listed) in listed {
                    if !in_tier1.contains(id.as_str()) {
                        entries.push(tier2.entry(&id, listed).await?);
                    }
                    in_tier2.insert(id.as_str().to_owned());
                }
                entries.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
            }
            // With Tier 1 at hand, an unreachable Tier 2 costs the listing its tiers, not
            // the listing: the backups a restore needs most are on this server's disk.
            Err(End::Refused(_, reason)) if env.has_tier1() => {
                tracing::warn!("backup list: Tier 1 only, Tier 2 could not be listed: {reason}");
                tiers_known = false;
            }
            Err(e) => return Err(e),
        }
    }
    let mut out: Vec<Message> = entries
        .into_iter()
        .map(|info| {
            let tiers = tiers_known.then(|| BackupTiers {
                tier1: in_tier1.contains(&info.id),
                tier2: in_tier2.contains(&info.id),
            });
            let listed = ListedBackup { info, tiers };
            Message::BackupEntry {
                json: listed.to_json().into(),
            }
        })
        .collect();
    out.push(Message::CatalogEnd);
    inbox.send(&out).await
}

async fn get_backup<T: FrameIo>(
    env: &BackupEnv,
    inbox: &mut Inbox<'_, T>,
    id: &str,
) -> Result<(), End> {
    let id = parse_id(id)?;
    let store = backup_source(env, &id).await?;
    let (reading, wanted) = (store.clone(), id.clone());
    let (info, coding) = blocking(move || {
        Ok::<_, BackupStoreError>((reading.entry(&wanted)?, reading.block_coding()?))
    })
    .await?
    .map_err(|e| backup_refusal(&e))?;
    inbox
        .send(&[entry_message(&info), hash_key_message(&coding)])
        .await?;
    let (tx, rx) = mpsc::channel(STREAM_DEPTH);
    let producer = tokio::task::spawn_blocking(move || -> Result<(), BackupStoreError> {
        let mut files = store.file_list(&id)?;
        while let Some(item) = files.next_item()? {
            let msg = match item {
                FileListItem::Entry(entry) => Message::FileEntry { entry },
                FileListItem::Blocks(blocks) => Message::FileBlocks { blocks },
            };
            if tx.blocking_send(msg).is_err() {
                // The stream ended: nobody to send the rest to.
                return Ok(());
            }
        }
        let mut manifest = store.manifest(&id)?;
        while let Some(chunk) = manifest.next_chunk(MANIFEST_CHUNK)? {
            if tx
                .blocking_send(Message::ManifestData { data: chunk.into() })
                .is_err()
            {
                return Ok(());
            }
        }
        Ok(())
    });
    forward(inbox, rx).await?;
    producer
        .await
        .map_err(storage_task_failed)?
        .map_err(|e| backup_refusal(&e))?;
    inbox.send(&[Message::CatalogEnd]).await
}

/// Sends what the channel delivers until it closes, a few messages per write.
async fn forward<T: FrameIo>(
    inbox: &mut Inbox<'_, T>,
    mut rx: mpsc::Receiver<Message>,
) -> Result<(), End> {
    let mut out = Vec::new();
    while let Some(first) = rx.recv().await {
        out.clear();
        out.push(first);
        while out.len() < STREAM_DEPTH {
            match rx.try_recv() {
                Ok(m) => out.push(m),
                Err(_) => break,
            }
        }
        inbox.send(&out).await?;
    }
    Ok(())
}

async fn get_blocks<T: FrameIo>(
    env: &BackupEnv,
    inbox: &mut Inbox<'_, T>,
    hashes: Vec<BlockHash>,
) -> Result<(), End> {
    if hashes.len() > MAX_HASHES_PER_MESSAGE {
        return Err(End::Refused(
            ErrorCode::BadRequest,
            format!(
                "{} block hashes in one GetBlocks, more than {MAX_HASHES_PER_MESSAGE}",
                hashes.len()
            ),
        ));
    }
    let tier1 = match env.has_tier1() {
        true => Some((env.store.clone(), env.index().await?)),
        false => None,
    };
    let missing: Vec<BlockHash> = match &tier1 {
        Some((_, index)) => {
            let idx = index.read().unwrap_or_else(|p| p.into_inner());
            hashes
                .iter()
                .filter(|h| !idx.contains(h))
                .copied()
                .collect()
        }
        None => hashes.clone(),
    };
    let tier2 = match &env.tier2 {
        Some(tier2) if !missing.is_empty() => {
            let index = tier2.index_with(&missing).await?;
            tier2.fetch_packs(&index, &missing).await?;
            Some((tier2.store().clone(), index))
        }
        _ => None,
    };
    for group in hashes.chunks(BLOCKS_PER_READ) {
        let (tier1, tier2, group) = (tier1.clone(), tier2.clone(), group.to_vec());
        let packs = env.store.packs_dir();
        let blocks = off_runtime(move || -> Result<Vec<Block>, BackupStoreError> {
            let sources: Vec<_> = [tier1, tier2].into_iter().flatten().collect();
            let indexes: Vec<_> = sources
                .iter()
                .map(|(_, index)| index.read().unwrap_or_else(|p| p.into_inner()))
                .collect();
            let mut readers: Vec<_> = sources.iter().map(|(s, _)| s.block_reader()).collect();
            group
                .iter()
                .map(|h| {
                    // The first tier that holds the block serves it; if none does, the
                    // first tier's reader reports it missing.
                    let i = indexes.iter().position(|idx| idx.contains(h)).unwrap_or(0);
                    match (readers.get_mut(i), indexes.get(i)) {
                        (Some(reader), Some(idx)) => reader.read(idx, h),
                        _ => Err(BackupStoreError::MissingBlock {
                            packs: packs.clone(),
                            hash: *h,
                        }),
                    }
                })
                .collect()
        })
        .await?
        .map_err(|e| backup_refusal(&e))?;
        let out: Vec<Message> = blocks
            .into_iter()
            .map(|block| Message::BlockData { block })
            .collect();
        inbox.send(&out).await?;
    }
    Ok(())
}

async fn delete<T: FrameIo>(
    env: &BackupEnv,
    inbox: &mut Inbox<'_, T>,
    id: &str,
) -> Result<(), End> {
    let id = parse_id(id)?;
    let (store, backups, cluster) = (env.store.clone(), env.backups.clone(), env.cluster.clone());
    let info = blocking(move || backups.with_catalog_lock(&cluster, || store.delete(&id)))
        .await?
        .map_err(|e| backup_refusal(&e))?;
    tracing::info!("backup {} deleted from the catalog", info.id);
    inbox
        .send(&[entry_message(&info), Message::CatalogEnd])
        .await
}

async fn pin<T: FrameIo>(
    env: &BackupEnv,
    inbox: &mut Inbox<'_, T>,
    id: &str,
    pinned: bool,
) -> Result<(), End> {
    let id = parse_id(id)?;
    let (store, backups, cluster) = (env.store.clone(), env.backups.clone(), env.cluster.clone());
    let info =
        blocking(move || backups.with_catalog_lock(&cluster, || store.set_pinned(&id, pinned)))
            .await?
            .map_err(|e| backup_refusal(&e))?;
    tracing::info!(
        "backup {} {}",
        info.id,
        if pinned { "pinned" } else { "unpinned" }
    );
    inbox
        .send(&[entry_message(&info), Message::CatalogEnd])
        .await
}

/// Runs retention on a thread of its own (it may read every file list and rewrite packs);
/// the session waits for its report.
async fn retention<T: FrameIo>(
    env: &BackupEnv,
    inbox: &mut Inbox<'_, T>,
    dry_run: bool,
) -> Result<(), End> {
    let run_env = env.clone();
    let settings = env.retention.config().clone();
    let outcome =
        tokio::task::spawn_blocking(move || crate::retention::run(&run_env, &settings, dry_run))
            .await
            .map_err(storage_task_failed)?;
    let mut report = match outcome {
        Ok(r) => r,
        Err(e) => {
            if !dry_run {
                env.telemetry.retention_failed(&ErrorChain(&e).to_string());
            }
            let code = e
                .backup_store_error()
                .map_or(ErrorCode::Storage, super::error_code::backup_error_code);
            return Err(End::Refused(code, ErrorChain(&e).to_string()));
        }
    };
    crate::tier2::retention::add_to(env, &mut report, dry_run).await;
    if !dry_run {
        env.telemetry.retention_ran(&report);
    }
    inbox
        .send(&[
            Message::RetentionReport {
                json: report.to_json().into(),
            },
            Message::CatalogEnd,
        ])
        .await
}

async fn verify<T: FrameIo>(
    env: &BackupEnv,
    inbox: &mut Inbox<'_, T>,
    id: &str,
) -> Result<(), End> {
    let id = parse_id(id)?;
    let (store, index) = verify_source(env, &id).await?;
    let (tx, mut rx) = mpsc::channel::<VerifyProgress>(4);
    let checked = id.clone();
    let task = tokio::task::spawn_blocking(move || {
        let mut last = Instant::now();
        store.verify(&index, &checked, &mut |p| {
            if tx.is_closed() {
                // The stream ended: nobody waits for the answer.
                return ControlFlow::Break(());
            }
            if last.elapsed() >= PROGRESS_EVERY {
                last = Instant::now();
                // A full channel skips a report: the next one is a second away.
                let _ = tx.try_send(p);
            }
            ControlFlow::Continue(())
        })
    });
    while let Some(p) = rx.recv().await {
        inbox
            .send(&[Message::Progress {
                done: p.done,
                total: p.total,
            }])
            .await?;
    }
    let outcome = task
        .await
        .map_err(storage_task_failed)?
        .map_err(|e| backup_refusal(&e))?;
    let VerifyOutcome::Verified(info) = outcome else {
        return Err(End::Closed(format!(
            "the verification of backup {id} stopped: the client went away"
        )));
    };
    let (start, end) = (info.start.position(), info.end.position());
    let coverage = env.wal_coverage_in_any_tier(start, end).await?;
    if coverage != Some(WalCoverage::Archived) {
        return Err(End::Refused(
            ErrorCode::WalNotArchived,
            format!(
                "the blocks of backup {id} are intact, but {} is not in the archive ({}): the \
                 backup cannot be restored to a consistent state without it",
                wal_range_text(start, end),
                coverage_text(coverage.as_ref())
            ),
        ));
    }
    tracing::info!("backup {id} verified");
    inbox
        .send(&[
            Message::Progress {
                done: info.logical_bytes,
                total: info.logical_bytes,
            },
            entry_message(&info),
            Message::CatalogEnd,
        ])
        .await
}

/// The store that serves backup `id`: Tier 1's, or else the Tier 2 cache's with everything
/// but the blocks fetched.
async fn backup_source(env: &BackupEnv, id: &BackupId) -> Result<BackupStore, End> {
    if env.has_tier1() {
        let (store, wanted) = (env.store.clone(), id.clone());
        match blocking(move || store.entry(&wanted)).await? {
            Ok(_) => return Ok(env.store.clone()),
            Err(BackupStoreError::NoSuchBackup { .. }) => {}
            Err(e) => return Err(backup_refusal(&e)),
        }
    }
    match &env.tier2 {
        Some(tier2) if tier2.fetch_backup(id).await? => Ok(tier2.store().clone()),
        _ => Err(backup_refusal(&BackupStoreError::NoSuchBackup {
            id: id.to_string(),
        })),
    }
}

/// The store and block index that verify backup `id`: Tier 1's, or else the Tier 2 cache's
/// with every pack the backup refers to fetched.
async fn verify_source(env: &BackupEnv, id: &BackupId) -> Result<(BackupStore, SharedIndex), End> {
    let store = backup_source(env, id).await?;
    if env.has_tier1() && store.dir() == env.store.dir() {
        return Ok((store, env.index().await?));
    }
    let Some(tier2) = &env.tier2 else {
        return Err(backup_refusal(&BackupStoreError::NoSuchBackup {
            id: id.to_string(),
        }));
    };
    let (reading, wanted) = (store.clone(), id.clone());
    let hashes = blocking(move || -> Result<Vec<BlockHash>, BackupStoreError> {
        let mut files = reading.file_list(&wanted)?;
        let mut hashes = BTreeSet::new();
        while let Some(item) = files.next_item()? {
            match item {
                FileListItem::Entry(entry) => hashes.extend(entry.blocks),
                FileListItem::Blocks(blocks) => hashes.extend(blocks),
            }
        }
        Ok(hashes.into_iter().collect())
    })
    .await?
    .map_err(|e| backup_refusal(&e))?;
    let index = tier2.index_with(&hashes).await?;
    tier2.fetch_packs(&index, &hashes).await?;
    Ok((store, index))
}
