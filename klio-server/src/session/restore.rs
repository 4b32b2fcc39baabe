//! Restore requests: `GetPosition` answers and `GetFile` serving, from a read-only handle that
//! may run alongside the cluster's writer.
//!
//! # Cost
//!
//! Neither request lists the archive: a `GetFile` opens the file the cluster's in-memory
//! index (`klio_store`'s `ArchiveIndex`, see its module documentation) names, and on a miss
//! the few names the archive may hold it under, before answering `NoSuchFile`; a
//! `GetPosition` reads the index, built by the cluster's first position question (one
//! listing, on a blocking thread) and kept true by the writer and the pruner since.
//!
//! A file is sent decrypted and checked, as `FileData` frames of [`FILE_CHUNK`] bytes and a
//! `FileEnd` carrying its size, CRC-32C and whether it is the segment in progress
//! (zero-padded); a file the archive does not have is answered with `NoSuchFile`.
//!
//! # Reads
//!
//! Tier 1 first, then Tier 2 (when configured): a file Tier 1 lacks, or holds damaged (the
//! damage is logged), is looked for in Tier 2 under the names Tier 1 would hold it by
//! ([`stored_files`]): the sealed or plain file, and for a segment its journal (the segment in
//! progress, fetched again on every request since Tier 2 refreshes it). Each is fetched into the
//! [`Tier2Cache`] next to the archive's identity file (fetched once) and read there by a
//! [`WalArchiveReader`] opened without listing the cache, so every check of the formats applies
//! (AEAD tags, CRC-32C frames, the binding of a sealed file to its name). A damaged object is an
//! error naming its key, never wrong bytes; a file neither tier holds is `NoSuchFile`.
//!
//! A read-only server has no Tier 1 and reads Tier 2 alone. Its `GetPosition` answers from the
//! newest segment or journal Tier 2 holds for the timeline, found with one LIST of the
//! cluster's `wal/` (a read-write server lists Tier 2 only when its Tier 1 has no WAL there).

use std::sync::Arc;

use std::path::{Path, PathBuf};

use klio_proto::klio::{ClusterName, ErrorCode, Message};
use klio_store::wal_archive::{
    ArchiveIndex, ArchivedFile, IDENTITY_FILE, StoredFile, WalArchiveError, WalArchiveReader,
    file_of_stored, stored_files,
};
use klio_wal::{ErrorChain, TimelineId, WalFileName};

use super::error_code::{Request, fetch_refusal, refusal};
use super::framing::{FrameIo, Framed};
use super::{Client, End, blocking, storage_task_failed};
use crate::server::Shared;
use crate::tier2::fetch::Tier2Cache;
use crate::tier2::{ServerMode, Tier2};

/// Plaintext bytes per `FileData` frame.
const FILE_CHUNK: usize = 1 << 20;

/// Answers position queries and file requests, in order, until the client finishes the stream.
pub(super) async fn serve(
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
                let answer = position(shared, cluster, timeline).await?;
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
    let file = find_file(shared, cluster, &name).await?;
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
        WalFileName::History { .. } => "history",
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

/// The file `name` from Tier 1, else from Tier 2; `None` when neither holds it.
async fn find_file(
    shared: &Shared,
    cluster: &ClusterName,
    name: &str,
) -> Result<Option<ArchivedFile>, End> {
    let keyring = shared.storage.keyring.clone();
    let mut tier1_damage = None;
    if shared.mode == ServerMode::ReadWrite {
        let (index, wanted) = (shared.wal_index(cluster), name.to_owned());
        match blocking(move || read_archived(&index, &wanted)).await? {
            Ok(Some(file)) => return Ok(Some(file)),
            Ok(None) => {}
            Err(End::Refused(ErrorCode::DamagedFile, message)) if shared.tier2_cache.is_some() => {
                tracing::error!("restore: {name} is damaged in Tier 1, trying Tier 2: {message}");
                tier1_damage = Some(End::Refused(ErrorCode::DamagedFile, message));
            }
            Err(e) => return Err(e),
        }
    }
    let Some(cache) = &shared.tier2_cache else {
        return Ok(None);
    };
    match from_tier2(cache, keyring, cluster, name).await? {
        Some(file) => {
            tracing::debug!("restore: {name} read from Tier 2");
            Ok(Some(file))
        }
        None => tier1_damage.map_or(Ok(None), Err),
    }
}

/// The cache's copy of `cluster`'s WAL archive directory, with its identity file fetched;
/// `None` when Tier 2 holds no WAL of the cluster.
pub(super) async fn tier2_wal_dir(
    cache: &Tier2Cache,
    cluster: &ClusterName,
) -> Result<Option<PathBuf>, End> {
    let identity = Path::new("wal").join(IDENTITY_FILE);
    Ok(cache
        .fetch(cluster, &identity)
        .await
        .map_err(|e| fetch_refusal(&e))?
        .map(|_| cache.cluster_dir(cluster).join("wal")))
}

/// The file `name` from Tier 2, through the cache (see the module documentation).
pub(super) async fn from_tier2(
    cache: &Tier2Cache,
    keyring: Option<klio_crypto::Keyring>,
    cluster: &ClusterName,
    name: &str,
) -> Result<Option<ArchivedFile>, End> {
    let Some(dir) = tier2_wal_dir(cache, cluster).await? else {
        return Ok(None);
    };
    let reader = {
        let dir = dir.clone();
        blocking(move || WalArchiveReader::open_for_file_reads(&dir, keyring)).await?
    }
    .map_err(|e| refusal(&e, Request::File))?;
    let parsed = parse_name(&reader, name)?;
    let reader = Arc::new(reader);
    for stored in stored_files(&parsed, reader.identity().segment_size) {
        let fetched = match &stored {
            StoredFile::Final(file) => cache.fetch(cluster, &Path::new("wal").join(file)).await,
            StoredFile::Journal(file) => cache.refresh(cluster, &Path::new("wal").join(file)).await,
        }
        .map_err(|e| fetch_refusal(&e))?;
        let Some(path) = fetched else { continue };
        let r = reader.clone();
        match blocking(move || r.read_file(&parsed)).await? {
            Ok(Some(file)) => return Ok(Some(file)),
            // A journal holding no WAL yet.
            Ok(None) => {}
            Err(e) => {
                // The object passed its checksum, so it was stored damaged: fetch it again
                // next time rather than keep a copy that can never be served.
                cache.forget(&path);
                return Err(refusal(&e, Request::File));
            }
        }
    }
    Ok(None)
}

/// `name` parsed for the archive: a segment or history file.
fn parse_name(archive: &WalArchiveReader, name: &str) -> Result<WalFileName, End> {
    WalFileName::parse(name, archive.identity().segment_size)
        .ok()
        .filter(|n| matches!(n, WalFileName::Segment { .. } | WalFileName::History { .. }))
        .ok_or_else(|| {
            End::Refused(
                ErrorCode::BadRequest,
                format!(
                    "{name:?} is not the name of a WAL segment or timeline history file of this \
                     cluster"
                ),
            )
        })
}

/// A segment or history file of the archive `index` indexes, by PostgreSQL name: the file
/// the index names, else every name the archive may hold it under (no listing).
fn read_archived(index: &ArchiveIndex, name: &str) -> Result<Option<ArchivedFile>, End> {
    if !index.path().exists() {
        return Ok(None);
    }
    let archive = index.reader().map_err(|e| refusal(&e, Request::File))?;
    let parsed = parse_name(archive, name)?;
    index
        .read_file(&parsed)
        .map_err(|e| refusal(&e, Request::File))
}

/// The answer to `GetPosition`: Tier 1's, else (no WAL there, or a read-only server) Tier 2's.
async fn position(
    shared: &Shared,
    cluster: &ClusterName,
    timeline: Option<TimelineId>,
) -> Result<Message, End> {
    if shared.mode == ServerMode::ReadWrite {
        let index = shared.wal_index(cluster);
        // The first question of a cluster builds its index (one listing of the archive): on
        // a blocking thread, so that the other sessions go on meanwhile.
        let answer = tokio::task::spawn_blocking(move || position_of(&index, timeline))
            .await
            .map_err(storage_task_failed)??;
        let known = matches!(
            answer,
            Message::Position {
                durable: Some(_),
                ..
            }
        );
        if known || shared.tier2_cache.is_none() {
            return Ok(answer);
        }
    }
    let (Some(tier2), Some(cache)) = (&shared.tier2, &shared.tier2_cache) else {
        return Ok(Message::Position {
            timeline,
            durable: None,
        });
    };
    let keyring = shared.storage.keyring.clone();
    tier2_position(tier2, cache, keyring, cluster, timeline).await
}

/// The durable end Tier 2 holds on `timeline` (or its newest timeline): the end of its newest
/// segment or journal there, fetched into the cache and read.
async fn tier2_position(
    tier2: &Tier2,
    cache: &Tier2Cache,
    keyring: Option<klio_crypto::Keyring>,
    cluster: &ClusterName,
    timeline: Option<TimelineId>,
) -> Result<Message, End> {
    let unknown = Message::Position {
        timeline,
        durable: None,
    };
    let Some(dir) = tier2_wal_dir(cache, cluster).await? else {
        return Ok(unknown);
    };
    let reader = {
        let (dir, keyring) = (dir.clone(), keyring.clone());
        blocking(move || WalArchiveReader::open_for_file_reads(&dir, keyring)).await?
    }
    .map_err(|e| refusal(&e, Request::Position))?;
    let size = reader.identity().segment_size;
    let prefix = crate::tier2::layout::wal_key(cluster, "");
    let keys = tier2
        .store
        .list(&prefix)
        .await
        .map_err(|e| tier2_list_refusal(&e))?;
    // The newest segment on the timeline, by segment number; its journal and its finished
    // file sort next to each other, and either ends the durable WAL of the timeline.
    let newest = keys
        .iter()
        .filter_map(
            |(key, _)| match file_of_stored(key.strip_prefix(&prefix)?, size)? {
                name @ WalFileName::Segment { timeline: t, segno }
                    if timeline.is_none_or(|wanted| wanted == t) =>
                {
                    Some((t, segno, name.to_string_with(size)))
                }
                _ => None,
            },
        )
        .max();
    let Some((t, _, base)) = newest else {
        return Ok(unknown);
    };
    let Some(file) = from_tier2(cache, keyring, cluster, &base).await? else {
        return Ok(unknown);
    };
    let segment_start = match file.name {
        WalFileName::Segment { segno, .. } => size.segment_start(segno),
        _ => None,
    };
    Ok(Message::Position {
        timeline: Some(t),
        durable: segment_start.map(|s| klio_wal::Lsn(s.0 + file.valid_len)),
    })
}

/// Ends the session over a failed LIST of Tier 2.
fn tier2_list_refusal(e: &klio_tier2::Tier2Error) -> End {
    End::Refused(
        ErrorCode::Storage,
        format!("cannot list the WAL in Tier 2: {}", ErrorChain(e)),
    )
}

/// The durable end on `timeline`, or the newest timeline and its durable end, from the
/// archive's index (no listing, no journal scan once it is built).
fn position_of(index: &ArchiveIndex, timeline: Option<TimelineId>) -> Result<Message, End> {
    if !index.path().exists() {
        return Ok(Message::Position {
            timeline,
            durable: None,
        });
    }
    let refused = |e: WalArchiveError| refusal(&e, Request::Position);
    Ok(match timeline {
        Some(t) => Message::Position {
            timeline: Some(t),
            durable: index.durable_on(t).map_err(refused)?,
        },
        None => {
            let durable = index.durable().map_err(refused)?;
            Message::Position {
                timeline: durable.map(|d| d.timeline),
                durable: durable.map(|d| d.lsn),
            }
        }
    })
}
