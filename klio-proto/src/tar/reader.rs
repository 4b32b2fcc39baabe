//! The incremental reader: a state machine over the caller's buffer.

use bytes::{Buf, BytesMut};

use super::entry::{EntryKind, TarEvent};
use super::error::{TarError, TruncatedIn};
use super::header::{BLOCK_LEN, Block, parse_header};

/// Reads one tar archive from a buffer that the caller fills with whatever pieces arrive.
///
/// Call [`TarReader::decode`] after each append until it returns `Ok(None)` (more bytes
/// needed), and [`TarReader::finish`] when the input ends. File contents are handed out as
/// they arrive, split off the caller's buffer without copying: the reader holds no data of
/// its own, so memory stays what the caller buffers, whatever the size of the files.
#[derive(Debug, Clone, Default)]
pub struct TarReader {
    state: State,
    /// Bytes of the archive consumed so far: the offset of whatever comes next.
    offset: u64,
}

#[derive(Debug, Clone, Default)]
enum State {
    /// Between entries: a header block or the first end-of-archive block is next.
    #[default]
    Header,
    /// A file's contents, then its padding to the next block boundary.
    Data { remaining: u64, padding: usize },
    /// The zero bytes after a file's contents.
    Padding { remaining: usize },
    /// The entry is complete; [`TarEvent::EntryEnd`] is due.
    EntryDone,
    /// One zero block seen: the second must follow.
    SecondZeroBlock,
    /// Both zero blocks seen; only zero record padding may follow.
    Ended,
    /// The archive was refused; every further call repeats why.
    Failed(TarError),
}

impl TarReader {
    /// A reader at the start of an archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next event out of `buf`; `Ok(None)` means more bytes are needed.
    ///
    /// Consumes only what it reports: a header once its whole block is there, contents as far
    /// as they go. After an error the archive cannot be trusted and every call fails again.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<TarEvent>, TarError> {
        let event = self.step(buf);
        if let Err(e) = &event {
            self.state = State::Failed(e.clone());
        }
        event
    }

    /// Checks, once the input has ended, that the archive was complete.
    pub fn finish(&self) -> Result<(), TarError> {
        let within = match &self.state {
            State::Ended => return Ok(()),
            State::Failed(e) => return Err(e.clone()),
            State::Header | State::EntryDone => TruncatedIn::Header,
            State::Data { remaining, .. } => TruncatedIn::FileData {
                missing: *remaining,
            },
            State::Padding { .. } => TruncatedIn::Padding,
            State::SecondZeroBlock => TruncatedIn::EndMarker,
        };
        Err(TarError::Truncated {
            at: self.offset,
            within,
        })
    }

    /// Whether the end-of-archive marker has been read.
    pub fn is_ended(&self) -> bool {
        matches!(self.state, State::Ended)
    }

    /// How many bytes of the archive have been consumed.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn step(&mut self, buf: &mut BytesMut) -> Result<Option<TarEvent>, TarError> {
        loop {
            match &mut self.state {
                State::Failed(e) => return Err(e.clone()),
                State::Header => {
                    let Some(block) = first_block(buf) else {
                        return Ok(None);
                    };
                    let header = parse_header(&block, self.offset)?;
                    self.consume(buf, BLOCK_LEN);
                    match header {
                        Block::Zero => self.state = State::SecondZeroBlock,
                        Block::Entry(entry) => {
                            self.state = match entry.kind {
                                EntryKind::File { size } if size > 0 => State::Data {
                                    remaining: size,
                                    padding: padding_after(size),
                                },
                                _ => State::EntryDone,
                            };
                            return Ok(Some(TarEvent::Entry(entry)));
                        }
                    }
                }
                State::Data { remaining, padding } => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = usize::try_from(*remaining).map_or(buf.len(), |r| r.min(buf.len()));
                    *remaining -= n as u64;
                    let next = match (*remaining, *padding) {
                        (0, 0) => State::EntryDone,
                        (0, padding) => State::Padding { remaining: padding },
                        _ => State::Data {
                            remaining: *remaining,
                            padding: *padding,
                        },
                    };
                    self.state = next;
                    self.offset += n as u64;
                    return Ok(Some(TarEvent::Data(buf.split_to(n).freeze())));
                }
                State::Padding { remaining } => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = (*remaining).min(buf.len());
                    if let Some(i) = buf[..n].iter().position(|&b| b != 0) {
                        return Err(TarError::NonZeroPadding {
                            at: self.offset + i as u64,
                        });
                    }
                    *remaining -= n;
                    if *remaining == 0 {
                        self.state = State::EntryDone;
                    }
                    self.consume(buf, n);
                }
                State::EntryDone => {
                    self.state = State::Header;
                    return Ok(Some(TarEvent::EntryEnd));
                }
                State::SecondZeroBlock => {
                    let Some(block) = first_block(buf) else {
                        return Ok(None);
                    };
                    if block.iter().any(|&b| b != 0) {
                        return Err(TarError::LoneZeroBlock { at: self.offset });
                    }
                    self.consume(buf, BLOCK_LEN);
                    self.state = State::Ended;
                    return Ok(Some(TarEvent::End));
                }
                State::Ended => {
                    // GNU tar pads archives with zeros to a whole record (10 KiB by default).
                    if let Some(i) = buf.iter().position(|&b| b != 0) {
                        return Err(TarError::DataAfterEnd {
                            at: self.offset + i as u64,
                        });
                    }
                    let n = buf.len();
                    self.consume(buf, n);
                    return Ok(None);
                }
            }
        }
    }

    fn consume(&mut self, buf: &mut BytesMut, n: usize) {
        buf.advance(n);
        self.offset += n as u64;
    }
}

/// A copy of the first block of `buf`, once it is all there.
fn first_block(buf: &BytesMut) -> Option<[u8; BLOCK_LEN]> {
    let mut block = [0; BLOCK_LEN];
    block.copy_from_slice(buf.get(..BLOCK_LEN)?);
    Some(block)
}

/// The zero bytes that round a file of `size` bytes up to whole blocks.
fn padding_after(size: u64) -> usize {
    let partial = (size % BLOCK_LEN as u64) as usize;
    if partial == 0 { 0 } else { BLOCK_LEN - partial }
}
