//! One client stream: a WAL ingest session (after `Hello`), restore requests (position
//! queries and file reads), a backup session (after `BackupHello`) or catalog requests.
//!
//! - [`framing`]: frames over the QUIC stream, and the small interface ingest needs of it.
//! - [`ingest`]: the WAL session, an explicit state machine (idle with the archive, or storing
//!   a batch that holds it).
//! - [`restore`]: `GetPosition` and `GetFile`, served from a read-only handle.
//! - [`backup`]: a base backup, its blocks, files and manifest, published once its WAL is
//!   archived; [`catalog`]: listing, reading, verifying and deleting backups; both on the
//!   cluster's [`backup_env::BackupEnv`], reading messages through [`inbox::Inbox`].
//! - [`error_code`]: the one mapping from storage errors to protocol error codes.
//!
//! # Durability
//!
//! Frames are applied to the cluster's `WalArchive` in batches, one batch per wake-up of the
//! stream; each batch ends with one `sync` (one fsync for everything received so far) and only
//! then is the durable position acknowledged with `Message::Ack`. An error while storing a
//! batch acknowledges nothing of it. One batch is stored at a time, and a session that ends
//! for any reason waits for its batch before it releases the cluster's writer lease, so the
//! next writer never opens an archive still being written.

mod backup;
mod backup_env;
pub(crate) use backup_env::BackupEnv;
#[cfg(test)]
mod backup_tests;
mod catalog;
mod error_code;
mod framing;
mod inbox;
mod ingest;
mod restore;
#[cfg(test)]
mod tests;
mod tier2_backups;

use klio_wal::ErrorChain;
use std::sync::Arc;

use klio_proto::klio::{ClusterName, ErrorCode, Message};

use crate::server::Shared;
use crate::telemetry::ClusterTelemetry;
use crate::tier2::ServerMode;
use framing::Framed;

/// Why a session ended early.
#[derive(Debug)]
pub(crate) enum End {
    /// The peer went away or finished; nothing to send.
    Closed(String),
    /// We refuse to go on: tell the client why.
    Refused(ErrorCode, String),
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
    let mut io = Framed::new(send, recv);
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
            io.refuse(code, message).await;
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

/// Dispatches on the first message: `Hello` starts ingest, a read request starts restore,
/// `BackupHello` a backup, a catalog request the catalog session.
async fn serve(shared: &Arc<Shared>, client: Client<'_>, io: &mut Framed) -> Result<(), End> {
    let read_only = shared.mode == ServerMode::ReadOnly;
    match io.next().await? {
        None => Ok(()),
        Some(Message::Hello { .. } | Message::BackupHello { .. }) if read_only => {
            Err(error_code::read_only_refusal())
        }
        Some(Message::Hello {
            version,
            cluster: claimed,
            system_id,
            segment_size,
        }) => {
            let hello = ingest::Hello {
                version,
                claimed,
                system_id,
                segment_size,
            };
            ingest::serve(shared, client, io, hello).await
        }
        Some(first @ (Message::GetPosition { .. } | Message::GetFile { .. })) => {
            restore::serve(shared, client, io, first).await
        }
        Some(Message::BackupHello {
            version,
            cluster: claimed,
            system_id,
        }) => {
            let env = BackupEnv::of(shared, client.cluster);
            let hello = backup::BackupHello {
                version,
                claimed,
                system_id,
            };
            backup::run(&env, io, hello).await.map(|_| ())
        }
        Some(
            first @ (Message::ListBackups
            | Message::GetBackup { .. }
            | Message::GetBlocks { .. }
            | Message::DeleteBackup { .. }
            | Message::VerifyBackup { .. }
            | Message::PinBackup { .. }
            | Message::RunRetention { .. }),
        ) => {
            let env = BackupEnv::of(shared, client.cluster);
            catalog::run(&env, io, first).await
        }
        Some(other) => Err(End::Refused(
            ErrorCode::BadRequest,
            format!(
                "the first message must be Hello, GetPosition, GetFile, BackupHello or a catalog \
                 request, not {:#04x}",
                other.tag()
            ),
        )),
    }
}

/// Runs blocking storage work (file writes, fsync).
///
/// The work runs inline on the current thread, on either runtime: every thread hand-off on a
/// commit's path costs more CPU and latency than the fsync itself on fast disks (measured with
/// `klio-bench sync-commit`: on the multi-threaded server, `block_in_place` gave a TPS ratio to
/// pg_receivewal of 0.80-0.85, inline 0.87-0.94). On the multi-threaded runtime `klio server
/// start` uses, a worker blocked in one cluster's fsync leaves the others to the other workers,
/// which take over its queued tasks.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, End> {
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread
        | tokio::runtime::RuntimeFlavor::MultiThread => Ok(f()),
        _ => tokio::task::spawn_blocking(f)
            .await
            .map_err(storage_task_failed),
    }
}

/// Runs long storage work (a backup batch's decompression, hash checks and pack writes; the
/// blocks of a restore) on tokio's blocking pool, never on a worker: a worker busy for many
/// milliseconds would hold back the tasks queued behind it, a commit's acknowledgement among
/// them. A hand-off per batch costs nothing beside the batch.
async fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, End> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(storage_task_failed)
}

/// A storage task panicked or was cancelled.
fn storage_task_failed(e: tokio::task::JoinError) -> End {
    End::Refused(
        ErrorCode::Internal,
        format!("storage task failed: {}", ErrorChain(&e)),
    )
}
