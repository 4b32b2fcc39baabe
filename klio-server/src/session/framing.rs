//! Klio frames over one QUIC stream: a thin layer that reads chunks, decodes frames and writes
//! them. [`FrameIo`] is what ingest needs of it, so that ingest runs without sockets in tests.

use klio_wal::ErrorChain;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use klio_proto::klio::{ErrorCode, FrameDecoder, Message};

use super::End;

/// How long a refused stream waits for its error frame to reach the client before it is
/// dropped.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);

/// Complete frames taken from a stream at once.
#[derive(Debug)]
pub(super) struct Received {
    pub(super) messages: Vec<Message>,
    /// When their first bytes arrived: a batch's acknowledgement latency runs from here.
    pub(super) since: Instant,
}

/// What ingest needs of a stream: [`Framed`] in production, a script in the unit tests.
pub(super) trait FrameIo {
    /// Waits for more bytes; `false` when the peer finished the stream.
    async fn fill(&mut self) -> Result<bool, End>;
    /// Every complete frame already buffered.
    fn drain(&mut self) -> Result<Received, End>;
    /// Bytes read but not yet taken by [`FrameIo::drain`]: bounds the read-ahead.
    fn buffered(&self) -> usize;
    /// Sends `msgs`, in order.
    async fn send(&mut self, msgs: &[Message]) -> Result<(), End>;
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
}

impl Framed {
    pub(super) fn new(send: quinn::SendStream, recv: quinn::RecvStream) -> Self {
        Self {
            send,
            recv,
            rbuf: BytesMut::with_capacity(256 * 1024),
            wbuf: BytesMut::new(),
            decoder: FrameDecoder::new(),
            pending_since: None,
        }
    }

    /// The next frame, waiting as needed; `None` at the end of the stream.
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
        self.decoder
            .decode(&mut self.rbuf)
            .map_err(|e| End::Refused(ErrorCode::BadRequest, ErrorChain(&e).to_string()))
    }

    /// Sends the error that ends the stream, finishes it and gives the error a moment to reach
    /// the client. Failures are ignored: the stream is being dropped anyway.
    pub(super) async fn refuse(&mut self, code: ErrorCode, message: String) {
        let _ = self.send(&[Message::Error { code, message }]).await;
        let _ = self.send.finish();
        let _ = tokio::time::timeout(REFUSAL_LINGER, self.send.stopped()).await;
    }
}

impl FrameIo for Framed {
    /// Takes every chunk QUIC has already reassembled, not just one: whatever arrived while the
    /// last fsync ran then joins the next batch and shares its fsync (group commit).
    async fn fill(&mut self) -> Result<bool, End> {
        let mut chunks: [bytes::Bytes; 32] = Default::default();
        match self.recv.read_chunks(&mut chunks).await {
            Ok(Some(n)) => {
                for c in &chunks[..n] {
                    self.rbuf.extend_from_slice(c);
                }
                self.pending_since.get_or_insert_with(Instant::now);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => Err(End::Closed(ErrorChain(&e).to_string())),
        }
    }

    fn drain(&mut self) -> Result<Received, End> {
        let since = self.pending_since.unwrap_or_else(Instant::now);
        let mut messages = Vec::new();
        while let Some(m) = self.decode()? {
            messages.push(m);
        }
        if self.rbuf.is_empty() {
            self.pending_since = None;
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
