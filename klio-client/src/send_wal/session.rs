//! One attempt: connect to PostgreSQL and the server, agree on the start, stream.

use std::time::Duration;

use klio_proto::klio::{Message, PROTOCOL_VERSION};
use klio_proto::replication::{ReplicationMessage, SlotReservation};
use klio_wal::{Lsn, SegmentSize, TimelineId, WalPosition};
use tokio::time::Instant;

use super::telemetry::SendWalTelemetry;
use super::{SendWalError, SendWalOptions};
use crate::connection::{CopyEvent, ReplicationConnection};
use crate::server_link::{FramedRecv, FramedSend, ServerConnection, ServerLinkError};
use crate::shutdown::Shutdown;

/// Positions reported to PostgreSQL.
#[derive(Clone, Copy, Debug)]
struct Progress {
    /// Received from PostgreSQL and handed to the server.
    written: Lsn,
    /// Acknowledged by the server as durable: the only value reported as flush (and apply).
    durable: Lsn,
}

async fn report(pg: &mut ReplicationConnection, p: Progress) -> Result<(), SendWalError> {
    pg.report_progress(p.written, p.durable).await?;
    Ok(())
}

/// The durable position in an acknowledgement; anything else from the server ends the session.
fn ack_lsn(msg: Option<Message>) -> Result<Lsn, ServerLinkError> {
    match msg {
        Some(Message::Ack { durable, .. }) => Ok(durable),
        Some(other) => Err(ServerLinkError::Protocol(
            klio_proto::klio::KlioProtocolError::Malformed {
                tag: other.tag(),
                reason: "unexpected message while streaming".to_owned(),
            },
        )),
        None => Err(ServerLinkError::Closed),
    }
}

/// Shows the connections as down when the session ends, however it ends.
struct Connected<'a>(&'a SendWalTelemetry);

impl Drop for Connected<'_> {
    fn drop(&mut self) {
        self.0.postgres_connected(false);
        self.0.server_connected(false);
    }
}

pub(super) async fn run(
    opts: &SendWalOptions,
    shutdown: &mut Shutdown,
    telemetry: &SendWalTelemetry,
) -> Result<(), SendWalError> {
    let _connected = Connected(telemetry);
    let mut pg = tokio::select! {
        c = ReplicationConnection::connect(&opts.pg) => c?,
        _ = shutdown.wait() => return Ok(()),
    };
    telemetry.postgres_connected(true);
    let version = pg
        .parameter("server_version")
        .unwrap_or("unknown")
        .to_owned();
    if pg.server_major_version().is_none_or(|v| v < 15) {
        return Err(SendWalError::ServerTooOld(version));
    }
    let system = pg.identify_system().await?;
    let size = pg.wal_segment_size().await?;
    let mut slot = pg.read_replication_slot(&opts.slot).await?;
    if !slot.exists() {
        pg.create_physical_slot(&opts.slot, SlotReservation::Immediately)
            .await?;
        tracing::info!(slot = %opts.slot, "created physical replication slot");
        slot = pg.read_replication_slot(&opts.slot).await?;
    }
    if slot.slot_type.as_deref().is_some_and(|t| t != "physical") {
        return Err(SendWalError::SlotNotPhysical(opts.slot.clone()));
    }

    let server = ServerConnection::connect(&opts.server).await?;
    let (mut send, mut recv) = server.open_stream().await?;
    telemetry.server_connected(true);
    send.send(&Message::Hello {
        version: PROTOCOL_VERSION,
        cluster: opts.cluster.clone(),
        system_id: system.system_id,
        segment_size: size.bytes(),
    })
    .await?;
    let welcome = match recv.recv().await? {
        Some(Message::Welcome { durable, .. }) => durable,
        Some(other) => {
            return Err(SendWalError::Stream(format!(
                "expected Welcome from the server, got {:#04x}",
                other.tag()
            )));
        }
        None => return Err(ServerLinkError::Closed.into()),
    };

    let WalPosition {
        mut timeline,
        lsn: mut start,
    } = start_position(welcome, &slot, &system, size, &opts.slot);
    tracing::info!(
        system_id = system.system_id,
        "streaming from {start} on timeline {timeline} (server durable: {})",
        welcome.map_or_else(|| "nothing yet".to_owned(), |p| p.to_string())
    );
    // Everything before `start` is either durable on the server or was never available.
    let mut progress = Progress {
        written: start,
        durable: start,
    };
    let result = async {
        loop {
            if timeline != TimelineId::FIRST {
                let history = pg.timeline_history(timeline).await?;
                send.push(&Message::History {
                    timeline,
                    content: history.content,
                });
            }
            send.send(&Message::StartWal { timeline, start }).await?;
            pg.start_replication(Some(&opts.slot), start, timeline)
                .await?;
            telemetry.streaming(timeline, progress.durable);
            let link = Link {
                send: &mut send,
                acks: &mut recv,
                timeline,
                telemetry,
            };
            match stream(opts, &mut pg, link, &mut progress, shutdown).await? {
                Streamed::Shutdown => return Ok(()),
                Streamed::EndOfTimeline => match pg.finish_copy().await? {
                    Some(end) if end.next_timeline > timeline => {
                        tracing::info!(
                            "timeline {timeline} ended; following timeline {} from {}",
                            end.next_timeline,
                            end.next_start
                        );
                        timeline = end.next_timeline;
                        start = size.round_down(end.next_start);
                        progress.written = start;
                    }
                    Some(end) => {
                        return Err(SendWalError::Stream(format!(
                            "server reported next timeline {} after timeline {timeline}",
                            end.next_timeline
                        )));
                    }
                    None => {
                        return Err(SendWalError::Stream(
                            "PostgreSQL ended the replication stream".to_owned(),
                        ));
                    }
                },
            }
        }
    }
    .await;
    // On the way out, give the server a moment to acknowledge what it has, and tell
    // PostgreSQL; then close both sides.
    send.finish();
    let deadline = Instant::now() + Duration::from_secs(2);
    while let Ok(Ok(msg)) = tokio::time::timeout_at(deadline, recv.recv()).await {
        match ack_lsn(msg) {
            Ok(lsn) => {
                progress.durable = progress.durable.max(lsn);
                telemetry.acknowledged(lsn);
            }
            Err(_) => break,
        }
    }
    let _ = report(&mut pg, progress).await;
    pg.close().await;
    server.close().await;
    if result.is_ok() {
        tracing::info!("stopped; server durable position {}", progress.durable);
    }
    result
}

/// Where to start: exactly where the server's archive ends, unless PostgreSQL no longer has
/// that WAL (a new slot); then from the slot, leaving a gap that the server reports.
fn start_position(
    server: Option<WalPosition>,
    slot: &klio_proto::replication::ReadReplicationSlot,
    system: &klio_proto::replication::IdentifySystem,
    size: SegmentSize,
    slot_name: &str,
) -> WalPosition {
    let from_slot = match (slot.restart_lsn, slot.restart_tli) {
        (Some(lsn), Some(tli)) => WalPosition::new(tli, size.round_down(lsn)),
        _ => WalPosition::new(system.timeline, size.round_down(system.xlog_pos)),
    };
    match server {
        Some(WalPosition {
            timeline: tli,
            lsn: durable,
        }) => {
            if let Some(restart) = slot.restart_lsn.filter(|r| size.round_down(*r) > durable) {
                tracing::error!(
                    "the server's archive ends at {durable} but slot {slot_name:?} only keeps WAL from {restart}: \
                     the WAL in between is lost to the archive (was the slot dropped and recreated?)"
                );
                return from_slot;
            }
            WalPosition::new(tli, durable)
        }
        None => from_slot,
    }
}

enum Streamed {
    Shutdown,
    EndOfTimeline,
}

/// The server side of a stream, and where to report.
struct Link<'a> {
    send: &'a mut FramedSend,
    acks: &'a mut FramedRecv,
    timeline: TimelineId,
    telemetry: &'a SendWalTelemetry,
}

async fn stream(
    opts: &SendWalOptions,
    pg: &mut ReplicationConnection,
    link: Link<'_>,
    progress: &mut Progress,
    shutdown: &mut Shutdown,
) -> Result<Streamed, SendWalError> {
    let Link {
        send,
        acks,
        timeline,
        telemetry,
    } = link;
    let interval = opts.status_interval.max(Duration::from_millis(100));
    let mut next_status = Instant::now();
    // PostgreSQL's end of WAL: the newest seen, and the newest told to the server.
    let mut upstream = progress.written;
    let mut upstream_told = Lsn(0);
    loop {
        if Instant::now() >= next_status {
            report(pg, *progress).await?;
            next_status = Instant::now() + interval;
        }
        tokio::select! {
            _ = shutdown.wait() => return Ok(Streamed::Shutdown),
            _ = tokio::time::sleep_until(next_status) => {}
            msg = acks.recv() => {
                let mut durable = ack_lsn(msg?)?;
                // Coalesce acknowledgements that are already waiting.
                while let Some(m) = acks.try_recv_buffered()? {
                    durable = durable.max(ack_lsn(Some(m))?);
                }
                telemetry.acknowledged(durable);
                if durable > progress.durable {
                    progress.durable = durable;
                    report(pg, *progress).await?;
                    next_status = Instant::now() + interval;
                }
            }
            event = pg.recv_copy() => {
                let mut reply = false;
                let mut next = Some(event);
                while let Some(ev) = next {
                    match ev? {
                        CopyEvent::End => {
                            send.flush().await?;
                            return Ok(Streamed::EndOfTimeline);
                        }
                        CopyEvent::Message(ReplicationMessage::XLogData(x)) => {
                            if x.wal_start != progress.written {
                                return Err(SendWalError::Stream(format!(
                                    "got WAL at {}, expected {}",
                                    x.wal_start, progress.written
                                )));
                            }
                            progress.written = Lsn(x.wal_start.0 + x.data.len() as u64);
                            upstream = upstream.max(x.wal_end).max(progress.written);
                            telemetry.received(x.data.len() as u64, upstream);
                            send.push(&Message::WalData { start: x.wal_start, data: x.data });
                        }
                        CopyEvent::Message(ReplicationMessage::PrimaryKeepalive { reply_requested, wal_end, .. }) => {
                            reply |= reply_requested;
                            upstream = upstream.max(wal_end);
                            telemetry.upstream(upstream);
                        }
                        CopyEvent::Message(other) => {
                            return Err(SendWalError::Stream(format!("unexpected message {other:?}")));
                        }
                    }
                    // Batch what is already buffered into one write; flow control on the
                    // QUIC stream bounds how much can be in flight.
                    next = if send.queued() < (1 << 20) { pg.try_recv_buffered() } else { None };
                }
                if upstream > upstream_told {
                    // For the server's lag figures; 13 bytes per batch at most.
                    send.push(&Message::Upstream { timeline, wal_end: upstream });
                    upstream_told = upstream;
                }
                send.flush().await?;
                telemetry.flushed(progress.written);
                if reply {
                    report(pg, *progress).await?;
                    next_status = Instant::now() + interval;
                }
            }
        }
    }
}
