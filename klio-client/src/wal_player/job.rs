//! One job: a client that streams its run of files as one cluster's WAL stream and times each
//! file until the server acknowledges it as durable.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use klio_proto::klio::{Message, PROTOCOL_VERSION};
use klio_wal::{ErrorChain, Lsn, WalPosition};
use tokio::sync::mpsc;

use super::files::{self, PlayList};
use super::{FileReport, JobTarget};
use crate::server_link::{ServerConnection, ServerLinkError};

/// A file sent, waiting for its acknowledgement.
struct InFlight {
    index: usize,
    end: Lsn,
    start: SystemTime,
    started: Instant,
}

/// Runs job `job` over `list.files[range]`; every file of the range gets one report on `tx`.
pub(super) async fn run(
    job: usize,
    target: JobTarget,
    list: Arc<PlayList>,
    range: Range<usize>,
    block_size: usize,
    tx: mpsc::UnboundedSender<FileReport>,
) {
    let mut done = range.start;
    let result = stream(
        job,
        &target,
        &list,
        range.clone(),
        block_size,
        &tx,
        &mut done,
    )
    .await;
    if let Err(why) = result {
        tracing::warn!(job, cluster = %target.cluster, "job failed: {why}");
        let now = SystemTime::now();
        for i in done..range.end {
            let _ = tx.send(FileReport {
                path: list.files[i].path.clone(),
                job,
                bytes: list.segment_size.bytes_u64(),
                start: now,
                end: now,
                elapsed: std::time::Duration::ZERO,
                error: Some(why.clone()),
            });
        }
    }
}

/// Streams the files; `done` is the index of the first file not reported yet.
async fn stream(
    job: usize,
    target: &JobTarget,
    list: &PlayList,
    range: Range<usize>,
    block_size: usize,
    tx: &mpsc::UnboundedSender<FileReport>,
    done: &mut usize,
) -> Result<(), String> {
    // The report holds text for a person: the whole chain.
    let link = |e: ServerLinkError| ErrorChain(&e).to_string();
    let server = ServerConnection::connect(&target.server)
        .await
        .map_err(link)?;
    let (mut send, mut recv) = server.open_stream().await.map_err(link)?;
    send.send(&Message::Hello {
        version: PROTOCOL_VERSION,
        cluster: target.cluster.clone(),
        system_id: list.system_id,
        segment_size: list.segment_size.bytes(),
    })
    .await
    .map_err(link)?;
    let first = list.start_of(&list.files[range.start]);
    match recv.recv().await.map_err(link)? {
        Some(Message::Welcome { durable: None, .. }) => {}
        Some(Message::Welcome {
            durable: Some(durable),
            ..
        }) if durable == WalPosition::new(list.timeline, first) => {}
        Some(Message::Welcome {
            durable: Some(durable),
            ..
        }) => {
            return Err(format!(
                "cluster {} already holds WAL up to {durable}, and these files \
                 start at {first} on timeline {}: play into a cluster with no WAL (another \
                 cluster name, or an empty server)",
                target.cluster, list.timeline
            ));
        }
        Some(other) => return Err(format!("expected Welcome, got {:#04x}", other.tag())),
        None => return Err(ServerLinkError::Closed.to_string()),
    }
    send.send(&Message::StartWal {
        timeline: list.timeline,
        start: first,
    })
    .await
    .map_err(link)?;

    let (sent_tx, mut sent_rx) = mpsc::unbounded_channel::<InFlight>();
    let sender = async {
        for index in range.clone() {
            let file = &list.files[index];
            let mut lsn = list.start_of(file);
            let end = Lsn(lsn.0 + list.segment_size.bytes_u64());
            let mut blocks = read_blocks(file.clone(), block_size, list.segment_size.bytes_u64());
            let mut first_block = true;
            while let Some(block) = blocks.recv().await {
                let block = block?;
                if first_block {
                    first_block = false;
                    let _ = sent_tx.send(InFlight {
                        index,
                        end,
                        start: SystemTime::now(),
                        started: Instant::now(),
                    });
                }
                let len = block.len() as u64;
                send.send(&Message::WalData {
                    start: lsn,
                    data: block,
                })
                .await
                .map_err(link)?;
                lsn = Lsn(lsn.0 + len);
            }
            if lsn != end {
                return Err(format!(
                    "{}: reading ended early, at {lsn} of a segment ending at {end}",
                    file.path.display()
                ));
            }
        }
        drop(sent_tx);
        Ok::<(), String>(())
    };
    let acker = async {
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        let mut durable = Lsn(0);
        let mut sending = true;
        while sending || !in_flight.is_empty() {
            tokio::select! {
                f = sent_rx.recv(), if sending => match f {
                    Some(f) => in_flight.push_back(f),
                    None => sending = false,
                },
                m = recv.recv() => match m.map_err(link)? {
                    Some(Message::Ack { durable: d, .. }) => durable = durable.max(d),
                    Some(other) => {
                        return Err(format!("unexpected message {:#04x} while streaming", other.tag()));
                    }
                    None => return Err(ServerLinkError::Closed.to_string()),
                },
            }
            while let Some(f) = in_flight.front().filter(|f| f.end <= durable) {
                let _ = tx.send(FileReport {
                    path: list.files[f.index].path.clone(),
                    job,
                    bytes: list.segment_size.bytes_u64(),
                    start: f.start,
                    end: SystemTime::now(),
                    elapsed: f.started.elapsed(),
                    error: None,
                });
                *done = f.index + 1;
                in_flight.pop_front();
            }
        }
        Ok::<(), String>(())
    };
    tokio::try_join!(sender, acker)?;
    send.finish();
    server.close().await;
    Ok(())
}

/// Reads `file` in blocks on a blocking thread, two blocks ahead of the sender. An error ends
/// the blocks: the file could not be read, or does not hold exactly `segment` bytes.
fn read_blocks(
    file: files::WalInput,
    block_size: usize,
    segment: u64,
) -> mpsc::Receiver<Result<Bytes, String>> {
    let (tx, rx) = mpsc::channel(2);
    tokio::task::spawn_blocking(move || {
        let fail = |why: String| {
            let _ = tx.blocking_send(Err(format!("{}: {why}", file.path.display())));
        };
        let mut reader = match files::open(&file.path, file.gzip) {
            Ok(r) => r,
            Err(e) => return fail(ErrorChain(&e).to_string()),
        };
        let mut total = 0u64;
        loop {
            let want = block_size.min((segment - total) as usize + 1);
            let mut buf = vec![0u8; want];
            let n = match files::read_block(&mut *reader, &mut buf) {
                Ok(n) => n,
                Err(e) => return fail(ErrorChain(&e).to_string()),
            };
            if n == 0 {
                break;
            }
            if total + n as u64 > segment {
                return fail(format!("more than a segment's {segment} bytes"));
            }
            total += n as u64;
            buf.truncate(n);
            if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                return;
            }
            if total == segment {
                // One byte more tells a longer file from an exact one.
                let mut probe = [0u8; 1];
                match files::read_block(&mut *reader, &mut probe) {
                    Ok(0) => break,
                    Ok(_) => return fail(format!("more than a segment's {segment} bytes")),
                    Err(e) => return fail(ErrorChain(&e).to_string()),
                }
            }
        }
        if total != segment {
            fail(format!("{total} bytes, but a segment has {segment}"));
        }
    });
    rx
}
