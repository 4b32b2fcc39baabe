//! `klio receive-wal`: a pg_receivewal-compatible receiver into a local directory.
//!
//! It follows pg_receivewal's behaviour (src/bin/pg_basebackup/pg_receivewal.c, receivelog.c):
//! the start position comes from the directory, else the slot, else the server's current
//! position, rounded down to a segment start; timelines are followed with their `.history`
//! files; a lost connection is retried every few seconds unless `no_loop`. Flush is reported to
//! PostgreSQL only for bytes that are fsynced ([`klio_wal::segment_dir::SegmentDir::flushed`]).

mod stream;

use std::path::PathBuf;
use std::time::Duration;

use klio_wal::segment_dir::{SegmentDir, SegmentDirError};
use klio_wal::{ErrorChain, Lsn, SegmentSize, TimelineId};

use crate::conn_string::ConnConfig;
use crate::connection::ReplicationConnection;
use crate::error::ConnectionError;
use crate::shutdown::Shutdown;

/// Settings of a receiver.
#[derive(Clone, Debug)]
pub struct ReceiveOptions {
    /// Where and how to connect.
    pub conn: ConnConfig,
    /// The directory segments are written to.
    pub directory: PathBuf,
    /// A physical replication slot to stream from.
    pub slot: Option<String>,
    /// fsync after every batch of WAL and report it flushed at once (needed to act as a
    /// synchronous standby).
    pub synchronous: bool,
    /// Exit on the first connection loss instead of retrying.
    pub no_loop: bool,
    /// How often to send status updates; zero disables periodic ones.
    pub status_interval: Duration,
    /// Wait between reconnection attempts.
    pub reconnect_delay: Duration,
}

/// Why the receiver stopped without error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// A shutdown was requested (SIGINT/SIGTERM); everything received is fsynced.
    Shutdown,
}

/// Why the receiver failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiveError {
    /// The connection failed or the server reported an error.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// Writing the segment directory failed.
    #[error(transparent)]
    Directory(#[from] SegmentDirError),
    /// The slot named with `--slot` does not exist.
    #[error("replication slot {0:?} does not exist: create it with --create-slot")]
    SlotMissing(String),
    /// The slot exists but is not physical.
    #[error("replication slot {slot:?} is a {kind} slot; a physical slot is needed")]
    SlotNotPhysical {
        /// Slot name.
        slot: String,
        /// Its type.
        kind: String,
    },
    /// The server is older than PostgreSQL 15.
    #[error(
        "server version {0} is not supported: Klio needs PostgreSQL 15 or newer (READ_REPLICATION_SLOT)"
    )]
    ServerTooOld(String),
    /// The directory's newest timeline is unknown to the server.
    #[error("starting timeline {ours} is not present in the server (its timeline is {server})")]
    TimelineAhead {
        /// Timeline found in the directory.
        ours: TimelineId,
        /// The server's timeline.
        server: TimelineId,
    },
    /// The server sent something the stream rules forbid.
    #[error("invalid replication stream: {0}")]
    Stream(String),
    /// The connection was lost and `no_loop` was set.
    #[error("disconnected from the server: {0}")]
    Disconnected(String),
}

impl ReceiveError {
    /// Whether reconnecting can help: not for settings, TLS, a missing directory, an old
    /// server or a logical slot, which stay wrong until someone changes them.
    fn is_retryable(&self) -> bool {
        !matches!(
            self,
            Self::Connection(ConnectionError::Settings(_))
                | Self::Connection(ConnectionError::Tls(_))
                | Self::Directory(SegmentDirError::NotADirectory(_))
                | Self::ServerTooOld(_)
                | Self::SlotNotPhysical { .. }
        )
    }
}

/// Creates a physical replication slot (`--create-slot`). Returns `false` when it already
/// existed and `if_not_exists` is set.
pub async fn create_slot(
    conn: &ConnConfig,
    slot: &str,
    if_not_exists: bool,
) -> Result<bool, ReceiveError> {
    let mut c = ReplicationConnection::connect(conn).await?;
    let result = c.create_physical_slot(slot).await;
    c.close().await;
    match result {
        Ok(_) => Ok(true),
        Err(e) if if_not_exists && e.server_error().is_some_and(|s| s.code == "42710") => {
            tracing::info!(slot, "replication slot already exists");
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// Runs the receiver until `shutdown` fires (or, with `no_loop`, the first disconnection).
pub async fn receive_wal(
    opts: &ReceiveOptions,
    mut shutdown: Shutdown,
) -> Result<StopReason, ReceiveError> {
    let mut dir: Option<SegmentDir> = None;
    loop {
        let result = stream::stream_once(opts, &mut dir, &mut shutdown).await;
        // Whatever happened, make what was received durable before deciding what to do.
        if let Some(d) = dir.as_mut()
            && let Err(e) = d.close()
        {
            tracing::error!("could not flush {}: {}", d.path().display(), ErrorChain(&e));
        }
        let err = match result {
            Ok(stream::Outcome::Shutdown) => return Ok(StopReason::Shutdown),
            Ok(stream::Outcome::ServerStopped) => {
                ReceiveError::Disconnected("the server ended the replication stream".to_owned())
            }
            Err(e) => e,
        };
        if shutdown.is_triggered() {
            return Ok(StopReason::Shutdown);
        }
        if opts.no_loop || !err.is_retryable() {
            return Err(err);
        }
        tracing::warn!(
            "{}; reconnecting in {} s",
            ErrorChain(&err),
            opts.reconnect_delay.as_secs_f32()
        );
        tokio::select! {
            _ = shutdown.wait() => return Ok(StopReason::Shutdown),
            _ = tokio::time::sleep(opts.reconnect_delay) => {}
        }
    }
}

/// The segment-aligned position and timeline to start streaming from.
async fn streaming_start(
    conn: &mut ReplicationConnection,
    dir: &SegmentDir,
    slot: Option<&str>,
    server_pos: Lsn,
    server_tli: TimelineId,
) -> Result<(Lsn, TimelineId), ReceiveError> {
    let (found, warnings) = dir.find_streaming_start()?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    let size: SegmentSize = dir.segment_size();
    if let Some(s) = found {
        return Ok((s.lsn, s.timeline));
    }
    if let Some(slot) = slot {
        let info = conn.read_replication_slot(slot).await?;
        if !info.exists() {
            return Err(ReceiveError::SlotMissing(slot.to_owned()));
        }
        if let Some(kind) = info.slot_type.as_deref().filter(|k| *k != "physical") {
            return Err(ReceiveError::SlotNotPhysical {
                slot: slot.to_owned(),
                kind: kind.to_owned(),
            });
        }
        if let (Some(lsn), Some(tli)) = (info.restart_lsn, info.restart_tli) {
            return Ok((size.round_down(lsn), tli));
        }
    }
    Ok((size.round_down(server_pos), server_tli))
}
