//! Framing: turning a byte stream into [`Message`]s with bounded memory.

use bytes::{Buf, BytesMut};

use super::Message;
use super::message::decode_payload;

/// The default limit for one frame's payload: a block of WAL of up to 8 MiB (the largest
/// `wal-player --block-size`) plus its header, without letting a peer make us allocate without
/// bound.
pub const DEFAULT_MAX_FRAME_LEN: usize = (8 << 20) + 4096;

/// A Klio frame could not be decoded; the stream can no longer be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KlioProtocolError {
    /// A frame declared more bytes than allowed.
    #[error(
        "frame {tag:#04x} declares {len} bytes, more than the limit of {max}; the peer is not a Klio peer of a compatible version, or the stream is corrupt"
    )]
    FrameTooLarge {
        /// Frame tag.
        tag: u8,
        /// Declared length.
        len: u64,
        /// Limit.
        max: u64,
    },
    /// A tag this version does not know.
    #[error("unknown frame type {0:#04x}; is the peer a Klio peer of a compatible version?")]
    UnknownTag(u8),
    /// A frame's payload does not match its type.
    #[error("malformed frame {tag:#04x}: {reason}")]
    Malformed {
        /// Frame tag.
        tag: u8,
        /// What is wrong.
        reason: String,
    },
}

/// Decodes frames from a buffer that the caller fills from the network.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_len: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self {
            max_len: DEFAULT_MAX_FRAME_LEN,
        }
    }
}

impl FrameDecoder {
    /// A decoder with the default frame limit.
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder that refuses frames with payloads above `max_len` bytes.
    pub fn with_max_frame_len(max_len: usize) -> Self {
        Self { max_len }
    }

    /// Takes one complete frame out of `buf`; `Ok(None)` means more bytes are needed.
    ///
    /// Reserves room for the rest of a large frame once its header is known, so the caller's
    /// reads land in one allocation; the declared length is checked first.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, KlioProtocolError> {
        if buf.len() < 5 {
            return Ok(None);
        }
        let tag = buf[0];
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if len > self.max_len {
            return Err(KlioProtocolError::FrameTooLarge {
                tag,
                len: len as u64,
                max: self.max_len as u64,
            });
        }
        if buf.len() < 5 + len {
            buf.reserve(5 + len - buf.len());
            return Ok(None);
        }
        buf.advance(5);
        let payload = buf.split_to(len).freeze();
        decode_payload(tag, payload).map(Some)
    }
}
