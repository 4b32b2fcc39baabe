//! Klio frames over one QUIC stream: a thin layer that reads chunks, decodes frames and writes
//! them. [`FrameIo`] is what ingest needs of it, so that ingest runs without sockets in tests.
//!
//! # Reading within a budget
//!
//! [`CoveredRead::fill_covered`] reads only bytes its caller covers ([`Cover`]), and reserves each frame
//! whole: it reads up to the end of a frame's 5-byte header, asks cover for the whole frame,
//! and only then reads its body. A reader that must wait for cover therefore never holds half
//! a frame's body it could not finish (see `crate::ingest_budget`, *Deadlock freedom*). A
//! frame's memory is its declared length from the moment it is covered: the fill reserves it
//! then (the decoder, which would reserve it on seeing the header, gets complete frames only).
//!
//! # Memory after a frame is taken
//!
//! A frame's payload is taken from the buffer without a copy: it shares the buffer's
//! allocation, which is freed once the payload and the buffer both let go of it. So once every
//! frame read has been taken and the buffer is empty, it lets go (a new, empty buffer takes
//! its place): the allocation then lives exactly as long as the batch that holds the frames,
//! and a session between batches keeps no memory of the last one, which the budget does not
//! count. The next read allocates at least [`READ_BUF`] bytes, so that small frames (a
//! commit's WAL) still share one allocation per batch.

use klio_wal::ErrorChain;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use klio_proto::klio::{
    DEFAULT_MAX_FRAME_LEN, ErrorCode, FrameDecoder, KlioProtocolError, Message,
};

use super::End;

/// How long a refused stream waits for its error frame to reach the client before it is
/// dropped.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);

/// Frame header: a tag byte and a big-endian `u32` payload length.
const HEADER: usize = 5;

/// The smallest allocation a read starts in an empty buffer.
const READ_BUF: usize = 64 << 10;

/// Chunks taken at most per [`FrameIo::fill`].
const CHUNKS_PER_FILL: usize = 64;

/// Complete frames taken from a stream at once.
#[derive(Debug)]
pub(super) struct Received {
    pub(super) messages: Vec<Message>,
    /// When their first bytes arrived: a batch's acknowledgement latency runs from here.
    pub(super) since: Instant,
}

/// What [`CoveredRead::fill_covered`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Filled {
    /// Read more bytes.
    Read,
    /// The peer finished the stream.
    Finished,
    /// Read nothing: the buffer would have to grow to `needs` bytes, which are not covered.
    Blocked { needs: usize },
}

/// What the caller of [`CoveredRead::fill_covered`] lets it hold.
pub(super) trait Cover {
    /// Whether the buffer may grow to `buffered` bytes (taking cover now if it can).
    fn try_cover(&mut self, buffered: usize) -> bool;
}

/// What sessions need of a stream: [`Framed`] in production, scripts in the unit tests.
pub(super) trait FrameIo {
    /// Waits for more bytes; `false` when the peer finished the stream.
    async fn fill(&mut self) -> Result<bool, End>;
    /// Every complete frame already buffered.
    fn drain(&mut self) -> Result<Received, End>;
    /// Bytes read but not yet taken by [`FrameIo::drain`].
    fn buffered(&self) -> usize;
    /// Sends `msgs`, in order.
    async fn send(&mut self, msgs: &[Message]) -> Result<(), End>;
}

/// What ingest needs besides: reading within its budget.
pub(super) trait CoveredRead: FrameIo {
    /// Waits for more bytes and reads what `cover` covers, frame by frame; also takes, without
    /// waiting, what has already arrived beyond (group commit). Cancel-safe.
    async fn fill_covered(&mut self, cover: &mut impl Cover) -> Result<Filled, End>;
    /// The buffer's size once the frame being read is complete (its whole declared length,
    /// reserved from its header on), or its header if that is not complete: what must stay
    /// covered.
    fn frame_end(&self) -> usize;
}

/// Framed I/O over one QUIC stream.
pub(super) struct Framed {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    decoder: FrameDecoder,
    /// When the oldest bytes not yet taken by [`FrameIo::drain`] arrived.
    pending_since: Option<Instant>,
    /// When bytes were last read.
    last_read: Instant,
    /// Where in `rbuf` the first frame not known to be complete starts.
    scan: usize,
}

impl Framed {
    pub(super) fn new(send: quinn::SendStream, recv: quinn::RecvStream) -> Self {
        Self {
            send,
            recv,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            decoder: FrameDecoder::new(),
            pending_since: None,
            last_read: Instant::now(),
            scan: 0,
        }
    }

    /// The next frame, waiting as needed; `None` at the end of the stream. Reads without a
    /// budget: outside ingest, sessions bound their own memory.
    pub(super) async fn next(&mut self) -> Result<Option<Message>, End> {
        loop {
            if let Some(m) = self.decode()? {
                return Ok(Some(m));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    fn decode(&mut self) -> Result<Option<Message>, End> {
        // Only a complete frame: given a frame begun, the decoder would reserve its whole
        // length, memory a session waiting for cover has not been given. (The fill that
        // takes the cover reserves it.)
        if let Some(header) = self.rbuf.get(..HEADER) {
            let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            if len <= DEFAULT_MAX_FRAME_LEN && self.rbuf.len() < HEADER + len {
                return Ok(None);
            }
        }
        let m = self.decoder.decode(&mut self.rbuf).map_err(refused)?;
        if m.is_some() {
            // Frames are taken from the front: the scan starts again there.
            self.scan = 0;
            if self.rbuf.is_empty() {
                // The taken frames alone keep their allocation (see "Memory after a frame is
                // taken").
                self.rbuf = BytesMut::new();
            }
        }
        Ok(m)
    }

    /// Moves the scan past the complete frames; where the frame after them ends, or its
    /// header.
    fn advance_scan(&mut self) -> Result<usize, End> {
        let (scan, end) = next_frame_end(&self.rbuf, self.scan).map_err(refused)?;
        self.scan = scan;
        Ok(end)
    }

    /// Sends the error that ends the stream, finishes it and gives the error a moment to reach
    /// the client. Failures are ignored: the stream is being dropped anyway.
    pub(super) async fn refuse(&mut self, code: ErrorCode, message: String) {
        let _ = self.send(&[Message::Error { code, message }]).await;
        let _ = self.send.finish();
        let _ = tokio::time::timeout(REFUSAL_LINGER, self.send.stopped()).await;
    }
}

fn refused(e: KlioProtocolError) -> End {
    End::Refused(ErrorCode::BadRequest, ErrorChain(&e).to_string())
}

/// From `scan`, a frame boundary in `buf`: the start of the first incomplete frame, and where
/// it ends (or its header, if that is incomplete). A declared length over the limit is the
/// decoder's error, found here before the frame's body is covered.
fn next_frame_end(buf: &[u8], mut scan: usize) -> Result<(usize, usize), KlioProtocolError> {
    loop {
        let Some(header) = buf.get(scan..scan + HEADER) else {
            return Ok((scan, scan + HEADER));
        };
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if len > DEFAULT_MAX_FRAME_LEN {
            return Err(KlioProtocolError::FrameTooLarge {
                tag: header[0],
                len: len as u64,
                max: DEFAULT_MAX_FRAME_LEN as u64,
            });
        }
        let end = scan + HEADER + len;
        if end > buf.len() {
            return Ok((scan, end));
        }
        scan = end;
    }
}

/// Covers everything: for streams that are not WAL sessions.
struct Unbounded;

impl Cover for Unbounded {
    fn try_cover(&mut self, _: usize) -> bool {
        true
    }
}

impl FrameIo for Framed {
    /// Without a budget: outside ingest, sessions bound their own memory.
    async fn fill(&mut self) -> Result<bool, End> {
        Ok(self.fill_covered(&mut Unbounded).await? != Filled::Finished)
    }

    fn drain(&mut self) -> Result<Received, End> {
        let since = self.pending_since.unwrap_or_else(Instant::now);
        let mut messages = Vec::new();
        while let Some(m) = self.decode()? {
            messages.push(m);
        }
        if self.rbuf.is_empty() {
            self.pending_since = None;
        } else if !messages.is_empty() {
            // The rest is the next frame begun, read with (or after) the end of the frames
            // taken: its clock starts at the last read, not at the taken frames' first bytes
            // (else a stream that never runs dry would count from its very start).
            self.pending_since = Some(self.last_read);
        }
        Ok(Received { messages, since })
    }

    fn buffered(&self) -> usize {
        self.rbuf.len()
    }

    async fn send(&mut self, msgs: &[Message]) -> Result<(), End> {
        self.wbuf.clear();
        for m in msgs {
            m.encode(&mut self.wbuf);
        }
        self.send
            .write_all(&self.wbuf)
            .await
            .map_err(|e| End::Closed(ErrorChain(&e).to_string()))
    }
}

impl CoveredRead for Framed {
    /// Takes every chunk QUIC has already reassembled that the cover allows, not just one:
    /// whatever arrived while the last fsync ran then joins the next batch and shares its
    /// fsync (group commit). Only the first chunk is waited for.
    async fn fill_covered(&mut self, cover: &mut impl Cover) -> Result<Filled, End> {
        let mut read = false;
        for _ in 0..CHUNKS_PER_FILL {
            // Up to the end of the frame being read, or of its header, and no further: the
            // next frame is covered whole once its header is known.
            let end = self.advance_scan()?;
            if !cover.try_cover(end) {
                break;
            }
            let limit = end - self.rbuf.len();
            // The frame's memory, now that it is covered: its body lands in one allocation.
            let floor = if self.rbuf.capacity() == 0 {
                READ_BUF
            } else {
                0
            };
            self.rbuf.reserve(limit.max(floor));
            let chunk = if read {
                let mut more = std::pin::pin!(self.recv.read_chunk(limit, true));
                let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                // What has not arrived yet is left for the next fill, which waits for it.
                match more.as_mut().poll(&mut cx) {
                    std::task::Poll::Ready(r) => r,
                    std::task::Poll::Pending => break,
                }
            } else {
                self.recv.read_chunk(limit, true).await
            };
            match chunk {
                Ok(Some(c)) => {
                    self.rbuf.extend_from_slice(&c.bytes);
                    self.last_read = Instant::now();
                    self.pending_since.get_or_insert(self.last_read);
                    read = true;
                }
                Ok(None) if read => break,
                Ok(None) => return Ok(Filled::Finished),
                Err(e) => return Err(End::Closed(ErrorChain(&e).to_string())),
            }
        }
        if read {
            Ok(Filled::Read)
        } else {
            Ok(Filled::Blocked {
                needs: self.advance_scan()?,
            })
        }
    }

    fn frame_end(&self) -> usize {
        // A frame over the limit is refused by the next drain or fill; it needs no cover.
        next_frame_end(&self.rbuf, self.scan).map_or(self.rbuf.len(), |(_, end)| end)
    }
}
