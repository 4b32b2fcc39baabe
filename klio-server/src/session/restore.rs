//! Restore requests: `GetPosition` answers and `GetFile` serving, from a read-only handle that
//! may run alongside the cluster's writer.
//!
//! A file is sent decrypted and checked, as `FileData` frames of [`FILE_CHUNK`] bytes and a
//! `FileEnd` carrying its size, CRC-32C and whether it is the segment in progress
//! (zero-padded); a file the archive does not have is answered with `NoSuchFile`.

use std::sync::Arc;

use klio_proto::klio::{ErrorCode, Message};
use klio_store::wal_archive::{ArchivedFile, WalArchiveReader};
use klio_wal::{TimelineId, WalFileName};

use super::error_code::{Request, refusal};
use super::framing::{FrameIo, Framed};
use super::{Client, End, blocking};
use crate::server::Shared;

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

/// A segment or history file of the archive at `dir`, by PostgreSQL name.
fn read_archived(
    dir: &std::path::Path,
    keyring: Option<klio_crypto::Keyring>,
    name: &str,
) -> Result<Option<ArchivedFile>, End> {
    if !dir.exists() {
        return Ok(None);
    }
    let archive =
        WalArchiveReader::open_with(dir, keyring).map_err(|e| refusal(&e, Request::File))?;
    let parsed = WalFileName::parse(name, archive.identity().segment_size)
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
        })?;
    archive
        .read_file(&parsed)
        .map_err(|e| refusal(&e, Request::File))
}

/// The durable end on `timeline`, or the newest timeline and its durable end.
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
    let archive =
        WalArchiveReader::open_with(dir, keyring).map_err(|e| refusal(&e, Request::Position))?;
    Ok(match timeline {
        Some(t) => Message::Position {
            timeline: Some(t),
            durable: archive.durable_on(t),
        },
        None => Message::Position {
            timeline: archive.durable().map(|d| d.timeline),
            durable: archive.durable().map(|d| d.lsn),
        },
    })
}
