//! Klio frames over the two halves of a QUIC stream.

use bytes::BytesMut;
use klio_proto::klio::{FrameDecoder, Message};

use super::ServerLinkError;

/// The sending half: encodes messages and writes them (waiting for flow control, which is how
/// a slow server slows the client down instead of letting memory grow).
#[derive(Debug)]
pub struct FramedSend {
    send: quinn::SendStream,
    buf: BytesMut,
}

impl FramedSend {
    pub(super) fn new(send: quinn::SendStream) -> Self {
        Self {
            send,
            buf: BytesMut::with_capacity(256 * 1024),
        }
    }

    /// Queues a message; nothing is sent until [`FramedSend::flush`].
    pub fn push(&mut self, msg: &Message) {
        msg.encode(&mut self.buf);
    }

    /// Bytes queued by [`FramedSend::push`] and not flushed yet.
    pub fn queued(&self) -> usize {
        self.buf.len()
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<(), ServerLinkError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = self.buf.split().freeze();
        self.send
            .write_chunk(data)
            .await
            .map_err(|e| super::closed_err(e, "Klio server"))
    }

    /// Sends one message at once.
    pub async fn send(&mut self, msg: &Message) -> Result<(), ServerLinkError> {
        self.push(msg);
        self.flush().await
    }

    /// Ends the stream cleanly.
    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }

    /// Ends the stream and waits, at most `within`, until the server has received everything
    /// sent: closing the connection at once would discard what is still in flight (such as a
    /// last `Error` message). Returns whether the server got it all.
    pub async fn finish_delivered(&mut self, within: std::time::Duration) -> bool {
        let _ = self.send.finish();
        matches!(
            tokio::time::timeout(within, self.send.stopped()).await,
            Ok(Ok(None))
        )
    }
}

/// The receiving half: decodes frames with a bounded buffer.
#[derive(Debug)]
pub struct FramedRecv {
    recv: quinn::RecvStream,
    buf: BytesMut,
    decoder: FrameDecoder,
}

impl FramedRecv {
    pub(super) fn new(recv: quinn::RecvStream) -> Self {
        Self {
            recv,
            buf: BytesMut::new(),
            decoder: FrameDecoder::new(),
        }
    }

    /// A message already buffered, without waiting.
    pub fn try_recv_buffered(&mut self) -> Result<Option<Message>, ServerLinkError> {
        match self.decoder.decode(&mut self.buf)? {
            Some(Message::Error { code, message }) => {
                Err(ServerLinkError::Refused { code, message })
            }
            other => Ok(other),
        }
    }

    /// The next message; `Ok(None)` when the server finished the stream. A server `Error`
    /// message becomes [`ServerLinkError::Refused`]. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Option<Message>, ServerLinkError> {
        loop {
            if let Some(m) = self.decoder.decode(&mut self.buf)? {
                if let Message::Error { code, message } = m {
                    return Err(ServerLinkError::Refused { code, message });
                }
                return Ok(Some(m));
            }
            match self.recv.read_chunk(1 << 20, true).await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk.bytes),
                Ok(None) => return Ok(None),
                Err(e) => return Err(super::closed_err(e, "Klio server")),
            }
        }
    }
}
