//! One connection's worth of streaming: start position, timelines, the CopyBoth loop.
//!
//! Segment writes and fsyncs are blocking calls made from the async task on purpose: a
//! receiver is one stream, like pg_receivewal, and while an fsync runs there is nothing else
//! useful to do — WAL not yet fsynced must not be acknowledged anyway.

use std::time::Duration;

use klio_proto::replication::ReplicationMessage;
use klio_wal::segment_dir::SegmentDir;
use klio_wal::{Lsn, TimelineId};
use tokio::time::Instant;

use super::{ReceiveError, ReceiveOptions, streaming_start};
use crate::connection::{CopyEvent, ReplicationConnection};
use crate::shutdown::Shutdown;

/// How one connection ended without error.
pub(super) enum Outcome {
    Shutdown,
    ServerStopped,
}

enum CopyOutcome {
    Shutdown,
    EndOfStream,
}

pub(super) async fn stream_once(
    opts: &ReceiveOptions,
    dir_slot: &mut Option<SegmentDir>,
    shutdown: &mut Shutdown,
) -> Result<Outcome, ReceiveError> {
    let mut conn = tokio::select! {
        c = ReplicationConnection::connect(&opts.conn) => c?,
        _ = shutdown.wait() => return Ok(Outcome::Shutdown),
    };
    let version = conn
        .parameter("server_version")
        .unwrap_or("unknown")
        .to_owned();
    if conn.server_major_version().is_none_or(|v| v < 15) {
        return Err(ReceiveError::ServerTooOld(version));
    }
    let system = conn.identify_system().await?;
    let size = conn.wal_segment_size().await?;
    let dir = match dir_slot {
        Some(d) if d.segment_size() == size => d,
        _ => dir_slot.insert(SegmentDir::open(&opts.directory, size)?),
    };
    let (mut start, mut timeline) = streaming_start(
        &mut conn,
        dir,
        opts.slot.as_deref(),
        system.xlog_pos,
        system.timeline,
    )
    .await?;
    if timeline > system.timeline {
        return Err(ReceiveError::TimelineAhead {
            ours: timeline,
            server: system.timeline,
        });
    }
    tracing::info!(
        server = conn.target(),
        system_id = system.system_id,
        "starting log streaming at {start} (timeline {timeline})"
    );
    loop {
        if timeline != TimelineId::FIRST && !dir.has_history(timeline) {
            let history = conn.timeline_history(timeline).await?;
            dir.write_history(timeline, &history.content)?;
            tracing::info!("wrote history file {}", history.file_name);
        }
        dir.reset_position()?;
        conn.start_replication(opts.slot.as_deref(), start, timeline)
            .await?;
        match copy_loop(opts, &mut conn, dir, start, timeline, shutdown).await? {
            CopyOutcome::Shutdown => {
                dir.close()?;
                let flushed = dir.flushed().unwrap_or(start);
                let _ = send_status(&mut conn, dir.written().unwrap_or(start), flushed).await;
                conn.close().await;
                tracing::info!("stopped streaming at {flushed} (fsynced)");
                return Ok(Outcome::Shutdown);
            }
            CopyOutcome::EndOfStream => {
                dir.close()?;
                match conn.finish_copy().await? {
                    Some(end) => {
                        if end.next_timeline <= timeline {
                            return Err(ReceiveError::Stream(format!(
                                "server reported next timeline {} after timeline {timeline}",
                                end.next_timeline
                            )));
                        }
                        tracing::info!(
                            "switched to timeline {} at {}",
                            end.next_timeline,
                            end.next_start
                        );
                        timeline = end.next_timeline;
                        // Like pg_receivewal, restart the new timeline at its segment start so
                        // its first file is complete.
                        start = dir.segment_size().round_down(end.next_start);
                    }
                    None => {
                        conn.close().await;
                        return Ok(Outcome::ServerStopped);
                    }
                }
            }
        }
    }
}

async fn send_status(
    conn: &mut ReplicationConnection,
    write: Lsn,
    flush: Lsn,
) -> Result<(), ReceiveError> {
    conn.report_progress(write, flush).await?;
    Ok(())
}

async fn copy_loop(
    opts: &ReceiveOptions,
    conn: &mut ReplicationConnection,
    dir: &mut SegmentDir,
    start: Lsn,
    timeline: TimelineId,
    shutdown: &mut Shutdown,
) -> Result<CopyOutcome, ReceiveError> {
    let interval = opts.status_interval;
    // Report at once, as pg_receivewal does, so the server sees us immediately.
    let mut next_status = Instant::now();
    loop {
        if !interval.is_zero() && Instant::now() >= next_status {
            let written = dir.written().unwrap_or(start);
            send_status(conn, written, dir.flushed().unwrap_or(start)).await?;
            next_status = Instant::now() + interval;
        }
        let far = Instant::now() + Duration::from_secs(3600);
        let wake = if interval.is_zero() { far } else { next_status };
        let event = tokio::select! {
            _ = shutdown.wait() => return Ok(CopyOutcome::Shutdown),
            e = conn.recv_copy() => e?,
            _ = tokio::time::sleep_until(wake) => continue,
        };
        let mut reply_now = false;
        let mut next = Some(Ok(event));
        while let Some(event) = next {
            match event? {
                CopyEvent::End => return Ok(CopyOutcome::EndOfStream),
                CopyEvent::Message(ReplicationMessage::XLogData(x)) => {
                    let expected = dir.written().unwrap_or(start);
                    if x.wal_start != expected {
                        return Err(ReceiveError::Stream(format!(
                            "got WAL data at {}, expected {expected}",
                            x.wal_start
                        )));
                    }
                    for name in dir.write(timeline, x.wal_start, &x.data)? {
                        tracing::debug!(
                            "completed segment {}",
                            name.to_string_with(dir.segment_size())
                        );
                    }
                }
                CopyEvent::Message(ReplicationMessage::PrimaryKeepalive {
                    reply_requested,
                    ..
                }) => reply_now |= reply_requested,
                CopyEvent::Message(other) => {
                    return Err(ReceiveError::Stream(format!(
                        "unexpected message {other:?}"
                    )));
                }
            }
            // Take every message already buffered before fsyncing: one fsync covers them all.
            next = conn.try_recv_buffered();
        }
        let flush_now = (opts.synchronous || reply_now) && dir.has_unflushed();
        if flush_now {
            dir.flush()?;
        }
        if flush_now || reply_now {
            let written = dir.written().unwrap_or(start);
            send_status(conn, written, dir.flushed().unwrap_or(start)).await?;
            if !interval.is_zero() {
                next_status = Instant::now() + interval;
            }
        }
    }
}
