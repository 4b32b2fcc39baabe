//! One connection's worth of streaming: start position, timelines, the CopyBoth loop.
//!
//! Segment writes and fsyncs are blocking calls made from the async task on purpose: a
//! receiver is one stream, like pg_receivewal, and while an fsync runs there is nothing else
//! useful to do — WAL not yet fsynced must not be acknowledged anyway.

use std::time::Duration;

use klio_proto::replication::ReplicationMessage;
use klio_wal::segment_dir::SegmentDir;
use klio_wal::{Lsn, SegmentNo, SegmentSize, TimelineId, WalFileName};
use tokio::time::Instant;

use super::{ReceiveError, ReceiveOptions, close_dir, streaming_start};
use crate::connection::{CopyEvent, ReplicationConnection};
use crate::shutdown::Shutdown;

/// How one connection ended without error.
pub(super) enum Outcome {
    Shutdown,
    ServerStopped,
    EndposReached,
}

enum CopyOutcome {
    Shutdown,
    EndOfStream,
    /// WAL up to this position was written, past the end position.
    EndposReached(Lsn),
}

pub(super) async fn stream_once(
    opts: &ReceiveOptions,
    dir_slot: &mut Option<SegmentDir>,
    connected: &mut bool,
    shutdown: &mut Shutdown,
) -> Result<Outcome, ReceiveError> {
    let mut conn = tokio::select! {
        c = ReplicationConnection::connect(&opts.conn) => c?,
        _ = shutdown.wait() => return Ok(Outcome::Shutdown),
    };
    *connected = true;
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
        _ => dir_slot.insert(
            SegmentDir::open(&opts.directory, size)?
                .with_fsync(opts.fsync)
                .with_compression(opts.compression),
        ),
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
        if let Some(end) = opts.endpos
            && end < start
        {
            tracing::info!("stopped log streaming at {start} (timeline {timeline})");
            conn.close().await;
            return Ok(Outcome::EndposReached);
        }
        if timeline != TimelineId::FIRST && !dir.has_history(timeline) {
            let history = conn.timeline_history(timeline).await?;
            dir.write_history(timeline, &history.content)?;
            tracing::info!("wrote history file {}", history.file_name);
        }
        dir.reset_position()?;
        conn.start_replication(opts.slot.as_deref(), start, timeline)
            .await?;
        match copy_loop(opts, &mut conn, dir, start, timeline, shutdown).await? {
            stop @ (CopyOutcome::Shutdown | CopyOutcome::EndposReached(_)) => {
                // Everything written is made durable and reported before the connection goes.
                close_dir(dir)?;
                let flushed = dir.flushed().unwrap_or(start);
                let _ = send_status(&mut conn, dir.written().unwrap_or(start), flushed).await;
                conn.close().await;
                return Ok(match stop {
                    CopyOutcome::EndposReached(at) => {
                        tracing::info!("stopped log streaming at {at} (timeline {timeline})");
                        Outcome::EndposReached
                    }
                    _ => {
                        tracing::info!("stopped streaming at {flushed} (fsynced)");
                        Outcome::Shutdown
                    }
                });
            }
            CopyOutcome::EndOfStream => {
                close_dir(dir)?;
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
                    let size = dir.segment_size();
                    let (data, stop) = match opts.endpos {
                        Some(end) => cut_at_endpos(size, x.wal_start, &x.data, end),
                        None => (&x.data[..], false),
                    };
                    for name in dir.write(timeline, x.wal_start, data)? {
                        if let WalFileName::Segment { segno, .. } = name
                            && let Some(end) = size.segment_start(SegmentNo(segno.0 + 1))
                        {
                            tracing::info!("finished segment at {end} (timeline {timeline})");
                        }
                    }
                    if stop {
                        // The caller closes the directory, which fsyncs what was written.
                        let at = dir.written().unwrap_or(start);
                        return Ok(CopyOutcome::EndposReached(at));
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

/// The part of a message of WAL starting at `start` that pg_receivewal writes when it must stop
/// once past `endpos`, and whether it stops: it checks at every segment boundary inside the
/// message, then at the message's end, and stops at the first position past `endpos`.
fn cut_at_endpos(size: SegmentSize, start: Lsn, data: &[u8], endpos: Lsn) -> (&[u8], bool) {
    let mut kept = 0u64;
    for piece in size.split(start, data.len() as u64) {
        kept += u64::from(piece.len);
        if piece.completes_segment(size) && endpos.0 < start.0 + kept {
            return (&data[..kept as usize], true);
        }
    }
    (data, endpos.0 < start.0 + data.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    fn cut(start: u64, len: usize, endpos: u64) -> (usize, bool) {
        let size = SegmentSize::new(MB).unwrap();
        let data = vec![0u8; len];
        let (kept, stop) = cut_at_endpos(size, Lsn(start), &data, Lsn(endpos));
        (kept.len(), stop)
    }

    #[test]
    fn a_message_is_written_whole_unless_a_boundary_past_endpos_comes_first() {
        // Inside one segment: the whole message, stopping only once it ends past endpos.
        assert_eq!(cut(MB, 100, MB + 50), (100, true));
        assert_eq!(
            cut(MB, 100, MB + 100),
            (100, false),
            "strictly past, as pg_receivewal"
        );
        assert_eq!(cut(MB, 100, MB + 200), (100, false));
        // Across a boundary past endpos: cut at the boundary, the segment completed.
        assert_eq!(cut(2 * MB - 10, 100, 2 * MB - 5), (10, true));
        // Across a boundary not past endpos: go on to the message's end.
        assert_eq!(cut(2 * MB - 10, 100, 2 * MB), (100, true));
        assert_eq!(cut(2 * MB - 10, 100, 2 * MB + 200), (100, false));
        // Across two boundaries, endpos between them: cut at the second.
        assert_eq!(
            cut(2 * MB - 10, (MB + 20) as usize, 2 * MB + 5),
            (MB as usize + 10, true)
        );
    }
}
