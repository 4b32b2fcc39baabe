//! Messages one at a time (or everything already buffered) from any [`FrameIo`]: what the
//! request/answer sessions (backup, catalog) need of a stream.

use std::collections::VecDeque;

use klio_proto::klio::Message;

use super::End;
use super::framing::FrameIo;

/// A stream's messages, in order.
pub(super) struct Inbox<'a, T> {
    io: &'a mut T,
    queue: VecDeque<Message>,
    finished: bool,
}

impl<'a, T: FrameIo> Inbox<'a, T> {
    pub(super) fn new(io: &'a mut T) -> Self {
        Self {
            io,
            queue: VecDeque::new(),
            finished: false,
        }
    }

    /// The next message, waiting for it; `None` once the peer finished the stream.
    pub(super) async fn next(&mut self) -> Result<Option<Message>, End> {
        loop {
            if let Some(m) = self.queue.pop_front() {
                return Ok(Some(m));
            }
            if self.finished {
                return Ok(None);
            }
            self.queue.extend(self.io.drain()?.messages);
            if self.queue.is_empty() && !self.io.fill().await? {
                self.finished = true;
            }
        }
    }

    /// Every message already received, without waiting.
    pub(super) fn take_buffered(&mut self) -> Result<Vec<Message>, End> {
        self.queue.extend(self.io.drain()?.messages);
        Ok(self.queue.drain(..).collect())
    }

    /// Sends `msgs`, in order.
    pub(super) async fn send(&mut self, msgs: &[Message]) -> Result<(), End> {
        self.io.send(msgs).await
    }
}
