//! Opening: authenticate and decrypt, then decompress, chunk by chunk.

use std::fmt;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, UnboundKey};

use crate::error::CryptoError;
use crate::format::{
    CHUNK_LEN_FIELD, COMPRESSED_PREFIX, CompressionKind, HEADER_LEN, MARKER_COMPRESSED,
    MARKER_STORED, ObjectHeader, check_prefix, chunk_aad, chunk_nonce, decode_len_field,
};
use crate::keys::Keyring;

/// Opens a whole object: its plaintext, or why it cannot be trusted.
pub fn open(keyring: &Keyring, object: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let header = ObjectHeader::parse(object)?;
    let mut reader = ChunkReader::new(keyring, header)?;
    let cs = reader.chunk_size;
    let mut out = Vec::new();
    // Reserve what the chunks present will decode to, without trusting a damaged object to
    // make us reserve much more than its own size.
    let present = count_chunks(&object[HEADER_LEN..], cs);
    let _ = out.try_reserve(
        present
            .saturating_mul(cs)
            .min(object.len().saturating_mul(64)),
    );
    let mut pos = HEADER_LEN;
    loop {
        let index = reader.next_index;
        let Some(field) = object.get(pos..pos + CHUNK_LEN_FIELD) else {
            return Err(truncated(object.len()));
        };
        let field = [field[0], field[1], field[2], field[3]];
        let (len, is_final) = decode_len_field(field, index, cs)?;
        pos += CHUNK_LEN_FIELD;
        let Some(body) = object.get(pos..pos + len) else {
            return Err(truncated(object.len()));
        };
        reader.open_chunk_copy(body, is_final, &mut out)?;
        pos += len;
        if is_final {
            if pos != object.len() {
                return Err(CryptoError::TrailingData { offset: pos as u64 });
            }
            return Ok(out);
        }
    }
}

fn truncated(len: usize) -> CryptoError {
    CryptoError::Truncated { len: len as u64 }
}

/// How many well-formed chunk frames `chunks` starts with.
fn count_chunks(chunks: &[u8], chunk_size: usize) -> usize {
    let mut n = 0;
    let mut pos = 0;
    while let Some(field) = chunks.get(pos..pos + CHUNK_LEN_FIELD) {
        let field = [field[0], field[1], field[2], field[3]];
        let Ok((len, is_final)) = decode_len_field(field, 0, chunk_size) else {
            break;
        };
        n += 1;
        pos += CHUNK_LEN_FIELD + len;
        if is_final {
            break;
        }
    }
    n
}

/// The per-chunk decompressor.
enum Decompressor {
    None,
    Lz4,
    Zstd(Box<zstd::bulk::Decompressor<'static>>),
}

/// Decrypts and decompresses the chunks of one object, given its unwrapped data key.
struct ChunkReader {
    header: ObjectHeader,
    key: LessSafeKey,
    chunk_size: usize,
    next_index: u64,
    scratch: Vec<u8>,
    decompressor: Decompressor,
}

impl ChunkReader {
    fn new(keyring: &Keyring, header: ObjectHeader) -> Result<Self, CryptoError> {
        let key_id = header.key_id();
        let kek = keyring
            .get(&key_id)
            .ok_or(CryptoError::UnknownKey { key_id })?;
        let data_key = kek.unwrap_data_key(header.immutable_bytes(), header.key_slot_bytes())?;
        let key = UnboundKey::new(&AES_256_GCM, &data_key)
            .map_err(|_| CryptoError::WrongKey { key_id })?;
        let decompressor = match header.compression() {
            CompressionKind::None => Decompressor::None,
            CompressionKind::Lz4 => Decompressor::Lz4,
            CompressionKind::Zstd => {
                Decompressor::Zstd(Box::new(zstd::bulk::Decompressor::new().map_err(|e| {
                    CryptoError::Corrupted {
                        chunk: 0,
                        reason: format!("cannot create a zstd context: {e}"),
                    }
                })?))
            }
        };
        Ok(Self {
            chunk_size: header.chunk_size() as usize,
            header,
            key: LessSafeKey::new(key),
            next_index: 0,
            scratch: Vec::new(),
            decompressor,
        })
    }

    /// Opens the next chunk from a read-only `body` (ciphertext and tag).
    fn open_chunk_copy(
        &mut self,
        body: &[u8],
        is_final: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        scratch.extend_from_slice(body);
        let r = self.open_chunk(&mut scratch, is_final, out);
        self.scratch = scratch;
        r
    }

    /// Opens the next chunk, decrypting `body` (ciphertext and tag) in place; appends its
    /// plaintext to `out`.
    fn open_chunk(
        &mut self,
        body: &mut [u8],
        is_final: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        let chunk = self.next_index;
        let corrupted = |reason: String| CryptoError::Corrupted { chunk, reason };
        let aad = chunk_aad(self.header.immutable_bytes(), chunk, is_final);
        let plain = self
            .key
            .open_in_place(chunk_nonce(chunk), Aad::from(aad), body)
            .map_err(|_| {
                corrupted(
                    "its authentication tag does not match (changed bytes, a chunk out of order \
                     or from another object, or a wrong final flag)"
                        .into(),
                )
            })?;
        let start = out.len();
        match plain.split_first() {
            Some((&MARKER_STORED, data)) => {
                if data.len() > self.chunk_size {
                    return Err(corrupted(format!(
                        "it holds {} bytes, more than the chunk size {}",
                        data.len(),
                        self.chunk_size
                    )));
                }
                out.extend_from_slice(data);
            }
            Some((&MARKER_COMPRESSED, rest)) if rest.len() >= COMPRESSED_PREFIX - 1 => {
                let (len, compressed) = rest.split_at(COMPRESSED_PREFIX - 1);
                let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
                if len > self.chunk_size {
                    return Err(corrupted(format!(
                        "it decompresses to {len} bytes, more than the chunk size {}",
                        self.chunk_size
                    )));
                }
                out.resize(start + len, 0);
                let dst = &mut out[start..];
                let n = match &mut self.decompressor {
                    Decompressor::None => {
                        out.truncate(start);
                        return Err(corrupted(
                            "it is marked compressed, but the object has no compression".into(),
                        ));
                    }
                    Decompressor::Lz4 => {
                        lz4_flex::block::decompress_into(compressed, dst).map_err(|e| e.to_string())
                    }
                    Decompressor::Zstd(ctx) => ctx
                        .decompress_to_buffer(compressed, dst)
                        .map_err(|e| e.to_string()),
                };
                match n {
                    Ok(n) if n == len => {}
                    Ok(n) => {
                        out.truncate(start);
                        return Err(corrupted(format!(
                            "it decompresses to {n} bytes instead of the {len} recorded"
                        )));
                    }
                    Err(e) => {
                        out.truncate(start);
                        return Err(corrupted(format!("decompression failed: {e}")));
                    }
                }
            }
            _ => return Err(corrupted("its body has an unknown layout".into())),
        }
        let len = out.len() - start;
        if !is_final && len != self.chunk_size {
            out.truncate(start);
            return Err(corrupted(format!(
                "it is not the final chunk but holds {len} bytes instead of the chunk size {}",
                self.chunk_size
            )));
        }
        self.next_index += 1;
        Ok(())
    }
}

enum State {
    /// Waiting for the header.
    Header,
    /// Reading chunks.
    Chunks(Box<ChunkReader>),
    /// The final chunk was opened.
    Done,
    /// An error was returned; it is returned again.
    Failed(CryptoError),
}

/// Streaming opener: [`feed`](Opener::feed) it the object in pieces of any size; it returns
/// plaintext as chunks complete and authenticate.
///
/// Plaintext from `feed` is authentic but may be incomplete: only when
/// [`finish`](Opener::finish) returns `Ok` is it known that the object was whole (its final
/// chunk seen, nothing after it). After an error every further call returns that error.
pub struct Opener<'k> {
    keyring: &'k Keyring,
    state: State,
    /// Bytes of the unit (header or chunk) being assembled, when it spans `feed` calls.
    pending: Vec<u8>,
    /// Bytes consumed by completed units.
    offset: u64,
}

impl fmt::Debug for Opener<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Header => "header",
            State::Chunks(_) => "chunks",
            State::Done => "done",
            State::Failed(_) => "failed",
        };
        f.debug_struct("Opener")
            .field("keyring", self.keyring)
            .field("state", &state)
            .field("offset", &self.offset)
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl<'k> Opener<'k> {
    /// An opener for one object sealed with a key in `keyring`.
    pub fn new(keyring: &'k Keyring) -> Self {
        Opener {
            keyring,
            state: State::Header,
            pending: Vec::new(),
            offset: 0,
        }
    }

    /// The object's header, once it has been read and its key slot opened.
    pub fn header(&self) -> Option<&ObjectHeader> {
        match &self.state {
            State::Chunks(r) => Some(&r.header),
            _ => None,
        }
    }

    /// Feeds the next bytes of the object; returns the plaintext of chunks they completed.
    pub fn feed(&mut self, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut out = Vec::new();
        self.feed_into(data, &mut out)?;
        Ok(out)
    }

    /// Like [`feed`](Opener::feed), appending to `out` (to reuse a buffer).
    pub fn feed_into(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), CryptoError> {
        if let State::Failed(e) = &self.state {
            return Err(e.clone());
        }
        let r = self.feed_inner(data, out);
        if let Err(e) = &r {
            self.state = State::Failed(e.clone());
        }
        r
    }

    /// Checks that the object was complete: its final chunk was read and nothing followed.
    pub fn finish(self) -> Result<(), CryptoError> {
        match self.state {
            State::Done => Ok(()),
            State::Failed(e) => Err(e),
            State::Header | State::Chunks(_) => Err(CryptoError::Truncated {
                len: self.offset + self.pending.len() as u64,
            }),
        }
    }

    /// How long the unit (header or chunk) starting with `prefix` is, if `prefix` tells.
    fn unit_len(&self, prefix: &[u8]) -> Result<Option<usize>, CryptoError> {
        match &self.state {
            State::Header => {
                check_prefix(prefix)?;
                Ok(Some(HEADER_LEN))
            }
            State::Chunks(r) => match prefix.get(..CHUNK_LEN_FIELD) {
                Some(f) => {
                    let field = [f[0], f[1], f[2], f[3]];
                    let (len, _) = decode_len_field(field, r.next_index, r.chunk_size)?;
                    Ok(Some(CHUNK_LEN_FIELD + len))
                }
                None => Ok(None),
            },
            // feed_inner() stops before asking in these states.
            State::Done | State::Failed(_) => Ok(Some(0)),
        }
    }

    fn feed_inner(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> Result<(), CryptoError> {
        loop {
            if let State::Done = self.state {
                if data.is_empty() {
                    return Ok(());
                }
                return Err(CryptoError::TrailingData {
                    offset: self.offset,
                });
            }
            if data.is_empty() {
                return Ok(());
            }
            if self.pending.is_empty() {
                // Whole units straight from `data`, without copying them into `pending`.
                if let Some(n) = self.unit_len(data)?
                    && n <= data.len()
                {
                    let (unit, rest) = data.split_at(n);
                    self.consume(unit, None, out)?;
                    data = rest;
                    continue;
                }
            }
            // Assemble the unit in `pending`: up to its length if known, else up to the
            // length field.
            let target = match self.unit_len(&self.pending)? {
                Some(n) => n,
                None => CHUNK_LEN_FIELD,
            };
            let take = (target - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() < target {
                continue;
            }
            if self.unit_len(&self.pending)? == Some(self.pending.len()) {
                let mut unit = std::mem::take(&mut self.pending);
                let r = self.consume(&[], Some(&mut unit), out);
                unit.clear();
                self.pending = unit;
                r?;
            }
        }
    }

    /// Processes one complete unit, given read-only or (to decrypt in place) mutable.
    fn consume(
        &mut self,
        unit: &[u8],
        unit_mut: Option<&mut Vec<u8>>,
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        let len = unit_mut.as_ref().map_or(unit.len(), |u| u.len());
        match &mut self.state {
            State::Header => {
                let header = ObjectHeader::parse(unit_mut.as_deref().map_or(unit, |u| &u[..]))?;
                self.state = State::Chunks(Box::new(ChunkReader::new(self.keyring, header)?));
            }
            State::Chunks(reader) => {
                let field_of = |u: &[u8]| [u[0], u[1], u[2], u[3]];
                let is_final;
                match unit_mut {
                    Some(u) => {
                        let (_, f) =
                            decode_len_field(field_of(u), reader.next_index, reader.chunk_size)?;
                        is_final = f;
                        reader.open_chunk(&mut u[CHUNK_LEN_FIELD..], is_final, out)?;
                    }
                    None => {
                        let (_, f) =
                            decode_len_field(field_of(unit), reader.next_index, reader.chunk_size)?;
                        is_final = f;
                        reader.open_chunk_copy(&unit[CHUNK_LEN_FIELD..], is_final, out)?;
                    }
                }
                if is_final {
                    self.state = State::Done;
                }
            }
            State::Done | State::Failed(_) => {}
        }
        self.offset += len as u64;
        Ok(())
    }
}
