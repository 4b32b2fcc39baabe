//! `klio receive-wal`: a pg_receivewal-compatible receiver into a local directory.
//!
//! It follows pg_receivewal's behaviour (src/bin/pg_basebackup/pg_receivewal.c, receivelog.c):
//! the start position comes from the directory, else the slot, else the server's current
//! position, rounded down to a segment start; timelines are followed with their `.history`
//! files; a lost connection is retried every few seconds unless `no_loop`. Flush is reported to
//! PostgreSQL only for bytes that are fsynced ([`klio_wal::segment_dir::SegmentDir::flushed`]),
//! unless the operator turned fsync off ([`Fsync::Never`], `--no-sync`).
//!
//! With an end position (`--endpos`), streaming stops as pg_receivewal's does: once a message
//! ends past it, or a segment boundary past it is reached, whichever comes first; the segment
//! holding it stays `.partial` unless that boundary completed it. Timeline switches before it
//! are followed.
//!
//! Messages that pg_receivewal prints whatever its verbosity are logged with the target
//! [`NOTICE`], so that a caller logging only warnings can still let them through.

mod stream;

use std::path::PathBuf;
use std::time::Duration;

use klio_proto::replication::SlotReservation;
use klio_wal::segment_dir::{Compression, Fsync, SegmentDir, SegmentDirError};
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
    /// Stop once WAL past this position has been received (`--endpos`).
    pub endpos: Option<Lsn>,
    /// Whether received WAL is fsynced (`--no-sync` turns it off).
    pub fsync: Fsync,
    /// How segments are compressed (`-Z`).
    pub compression: Compression,
}

/// The `tracing` target of the messages pg_receivewal prints at any verbosity: a segment left
/// incomplete, a reconnection.
pub const NOTICE: &str = "klio::notice";

/// Why the receiver stopped without error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// A shutdown was requested (SIGINT/SIGTERM); everything received is fsynced.
    Shutdown,
    /// WAL past the end position was received and fsynced.
    EndposReached,
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
    /// The slot named with `--slot` does not exist (pg_receivewal's words: scripts look for
    /// them). [`ReceiveError::hint`] says what to do.
    #[error("replication slot {0:?} does not exist")]
    SlotMissing(String),
    /// The slot exists but is not physical.
    #[error("expected a physical replication slot, got type {kind:?} instead")]
    SlotNotPhysical {
        /// Slot name.
        slot: String,
        /// Its type.
        kind: String,
    },
    /// The server is older than PostgreSQL 15 (which brought `READ_REPLICATION_SLOT`).
    #[error(
        "incompatible server version {0}; client does not support streaming from server versions older than 15"
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
    /// The server ended the stream (it is shutting down) before any end position.
    #[error("replication stream was terminated before stop point")]
    StreamEnded,
}

impl ReceiveError {
    /// What the operator can do about it, when the message alone does not say.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Self::SlotMissing(_) => Some("Create it with --create-slot, or leave out --slot."),
            Self::ServerTooOld(_) => Some("Klio streams from PostgreSQL 15 or newer."),
            _ => None,
        }
    }

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

/// Creates a physical replication slot (`--create-slot`) as pg_receivewal does: it holds no
/// WAL back until a receiver first streams from it. Returns `false` when it already existed
/// and `if_not_exists` is set.
pub async fn create_slot(
    conn: &ConnConfig,
    slot: &str,
    if_not_exists: bool,
) -> Result<bool, ReceiveError> {
    let mut c = ReplicationConnection::connect(conn).await?;
    let result = c
        .create_physical_slot(slot, SlotReservation::OnFirstStream)
        .await;
    c.close().await;
    match result {
        Ok(_) => Ok(true),
        Err(e) if if_not_exists && e.server_error().is_some_and(|s| s.code == "42710") => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Drops a replication slot (`--drop-slot`).
pub async fn drop_slot(conn: &ConnConfig, slot: &str) -> Result<(), ReceiveError> {
    let mut c = ReplicationConnection::connect(conn).await?;
    let result = c.drop_slot(slot).await;
    c.close().await;
    Ok(result?)
}

/// Runs the receiver until `shutdown` fires, the end position is reached, or (with `no_loop`)
/// the first disconnection. A first connection that fails is returned at once.
pub async fn receive_wal(
    opts: &ReceiveOptions,
    mut shutdown: Shutdown,
) -> Result<StopReason, ReceiveError> {
    let mut dir: Option<SegmentDir> = None;
    // As in pg_receivewal, only a server that was reached once is waited for: a first
    // connection that fails is a mistake in the settings or a server that is not there.
    let mut connected = false;
    loop {
        let result = stream::stream_once(opts, &mut dir, &mut connected, &mut shutdown).await;
        // Whatever happened, make what was received durable before deciding what to do.
        if let Some(d) = dir.as_mut()
            && let Err(e) = close_dir(d)
        {
            tracing::error!("could not flush {}: {}", d.path().display(), ErrorChain(&e));
        }
        let err = match result {
            Ok(stream::Outcome::Shutdown) => return Ok(StopReason::Shutdown),
            Ok(stream::Outcome::EndposReached) => return Ok(StopReason::EndposReached),
            Ok(stream::Outcome::ServerStopped) => ReceiveError::StreamEnded,
            Err(e) => e,
        };
        if shutdown.is_triggered() {
            return Ok(StopReason::Shutdown);
        }
        if opts.no_loop || !connected || !err.is_retryable() {
            return Err(err);
        }
        tracing::error!("{}", ErrorChain(&err));
        tracing::info!(
            target: NOTICE,
            "disconnected; waiting {} seconds to try again",
            opts.reconnect_delay.as_secs()
        );
        tokio::select! {
            _ = shutdown.wait() => return Ok(StopReason::Shutdown),
            _ = tokio::time::sleep(opts.reconnect_delay) => {}
        }
    }
}

/// Flushes and closes the open segment, saying so when it stays `.partial`, as pg_receivewal
/// does.
fn close_dir(dir: &mut SegmentDir) -> Result<(), SegmentDirError> {
    if let Some(name) = dir.open_partial() {
        tracing::info!(
            target: NOTICE,
            "not renaming {:?}, segment is not complete",
            name.to_string_lossy()
        );
    }
    dir.close()?;
    Ok(())
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
