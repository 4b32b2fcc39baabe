//! Sealing: compress, then encrypt, chunk by chunk.

use std::fmt;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, UnboundKey};
use ring::rand::SecureRandom;

use crate::error::CryptoError;
use crate::format::{
    CHUNK_LEN_FIELD, COMPRESSED_PREFIX, CompressionKind, DEFAULT_CHUNK_SIZE, HEADER_LEN,
    IMMUTABLE_HEADER_LEN, MARKER_COMPRESSED, MARKER_STORED, MAX_CHUNK_SIZE, ObjectHeader, TAG_LEN,
    chunk_aad, chunk_nonce, encode_len_field,
};
use crate::keys::{KEY_LEN, KeyId, Keyring};

/// How chunks are compressed before encryption.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    /// No compression.
    None,
    /// lz4 block compression: fast, the default.
    #[default]
    Lz4,
    /// zstd at `level` (0 = zstd's default, 3; negative levels are faster; up to 22).
    Zstd {
        /// Compression level, `-7..=22` (0 = zstd's default).
        level: i32,
    },
}

/// How [`seal`] and [`Sealer`] write objects. Readers need none of this: it is in the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealOptions {
    /// Compression applied to each chunk.
    pub compression: Compression,
    /// Plaintext bytes per chunk, `1..=MAX_CHUNK_SIZE` (64 MiB). A streaming reader buffers
    /// up to one chunk.
    pub chunk_size: usize,
}

impl Default for SealOptions {
    /// lz4, [`DEFAULT_CHUNK_SIZE`] (32 KiB) chunks.
    fn default() -> Self {
        Self {
            compression: Compression::Lz4,
            chunk_size: DEFAULT_CHUNK_SIZE,
        }
    }
}

/// Smallest zstd level accepted (zstd's fast levels go lower, with little gain).
const ZSTD_MIN_LEVEL: i32 = -7;
/// Largest zstd level.
const ZSTD_MAX_LEVEL: i32 = 22;

impl SealOptions {
    /// Checks the options; [`Sealer::new`] does this too.
    pub fn validate(&self) -> Result<(), CryptoError> {
        if self.chunk_size == 0 || self.chunk_size > MAX_CHUNK_SIZE {
            return Err(CryptoError::InvalidOptions {
                reason: format!(
                    "chunk size {} is outside 1..={MAX_CHUNK_SIZE} bytes; the default is \
                     {DEFAULT_CHUNK_SIZE}",
                    self.chunk_size
                ),
            });
        }
        if let Compression::Zstd { level } = self.compression
            && !(ZSTD_MIN_LEVEL..=ZSTD_MAX_LEVEL).contains(&level)
        {
            return Err(CryptoError::InvalidOptions {
                reason: format!(
                    "zstd level {level} is outside {ZSTD_MIN_LEVEL}..={ZSTD_MAX_LEVEL}; \
                         3 is a good default"
                ),
            });
        }
        Ok(())
    }
}

/// Seals `plaintext` into one object under the keyring's primary key.
pub fn seal(
    keyring: &Keyring,
    opts: &SealOptions,
    plaintext: &[u8],
    rng: &dyn SecureRandom,
) -> Result<Vec<u8>, CryptoError> {
    let (sealer, mut out) = Sealer::new(keyring, opts, rng)?;
    sealer.seal_all(plaintext, &mut out)?;
    Ok(out)
}

/// The per-chunk compressor, with its reusable state and output buffer.
enum Compressor {
    None,
    Lz4 {
        table: lz4_flex::block::CompressTable,
        scratch: Vec<u8>,
    },
    Zstd {
        ctx: Box<zstd::bulk::Compressor<'static>>,
        scratch: Vec<u8>,
    },
}

impl Compressor {
    fn new(opts: &SealOptions) -> Result<Self, CryptoError> {
        Ok(match opts.compression {
            Compression::None => Self::None,
            Compression::Lz4 => Self::Lz4 {
                table: lz4_flex::block::CompressTable::large(),
                scratch: vec![0; lz4_flex::block::get_maximum_output_size(opts.chunk_size)],
            },
            Compression::Zstd { level } => Self::Zstd {
                ctx: Box::new(zstd::bulk::Compressor::new(level).map_err(|e| {
                    CryptoError::Compression {
                        chunk: 0,
                        reason: format!("cannot create a zstd context: {e}"),
                    }
                })?),
                scratch: Vec::with_capacity(zstd::zstd_safe::compress_bound(opts.chunk_size)),
            },
        })
    }

    /// The compressed form of `data`, if it is worth storing instead of `data`.
    fn compress(&mut self, data: &[u8], chunk: u64) -> Result<Option<&[u8]>, CryptoError> {
        let compressed: &[u8] = match self {
            Self::None => return Ok(None),
            Self::Lz4 { table, scratch } => {
                let n = lz4_flex::block::compress_into_with_table(data, scratch, table).map_err(
                    |e| CryptoError::Compression {
                        chunk,
                        reason: e.to_string(),
                    },
                )?;
                &scratch[..n]
            }
            Self::Zstd { ctx, scratch } => {
                ctx.compress_to_buffer(data, scratch)
                    .map_err(|e| CryptoError::Compression {
                        chunk,
                        reason: e.to_string(),
                    })?;
                scratch
            }
        };
        Ok((compressed.len() + COMPRESSED_PREFIX < 1 + data.len()).then_some(compressed))
    }
}

/// Streaming sealer: [`Sealer::new`] gives the header, [`update`](Sealer::update) the chunks
/// completed so far, [`finish`](Sealer::finish) the final chunk. Their outputs concatenated
/// are the object, identical in format to [`seal`]'s.
///
/// The sealer holds back up to one chunk of plaintext, so that the last chunk can be marked
/// final.
pub struct Sealer {
    immutable: [u8; IMMUTABLE_HEADER_LEN],
    key: LessSafeKey,
    key_id: KeyId,
    chunk_size: usize,
    next_index: u64,
    pending: Vec<u8>,
    compressor: Compressor,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("key_id", &self.key_id)
            .field("chunk_size", &self.chunk_size)
            .field("next_index", &self.next_index)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// A sealer for one new object under the keyring's primary key, and the object's header
    /// ([`HEADER_LEN`] bytes), which comes first in the object.
    pub fn new(
        keyring: &Keyring,
        opts: &SealOptions,
        rng: &dyn SecureRandom,
    ) -> Result<(Self, Vec<u8>), CryptoError> {
        opts.validate()?;
        let (kind, level) = match opts.compression {
            Compression::None => (CompressionKind::None, 0),
            Compression::Lz4 => (CompressionKind::Lz4, 0),
            // validate() keeps the level in -7..=22.
            Compression::Zstd { level } => (CompressionKind::Zstd, level as i8),
        };
        let mut object_id = [0u8; 16];
        rng.fill(&mut object_id).map_err(|_| CryptoError::Random)?;
        let mut data_key = [0u8; KEY_LEN];
        rng.fill(&mut data_key).map_err(|_| CryptoError::Random)?;
        // validate() keeps the chunk size <= 64 MiB.
        let immutable =
            ObjectHeader::encode_immutable(kind, level, opts.chunk_size as u32, &object_id);
        let kek = keyring.primary();
        let slot = kek.wrap_data_key(&immutable, &data_key, rng)?;
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(&immutable);
        header.extend_from_slice(&slot);
        let sealer = Self::from_parts(immutable, &data_key, kek.id(), opts)?;
        Ok((sealer, header))
    }

    /// A sealer for the object with `immutable` header and `data_key`.
    pub(crate) fn from_parts(
        immutable: [u8; IMMUTABLE_HEADER_LEN],
        data_key: &[u8; KEY_LEN],
        key_id: KeyId,
        opts: &SealOptions,
    ) -> Result<Self, CryptoError> {
        let key = UnboundKey::new(&AES_256_GCM, data_key).map_err(|_| CryptoError::Encryption {
            reason: "creating the data key",
        })?;
        Ok(Self {
            immutable,
            key: LessSafeKey::new(key),
            key_id,
            chunk_size: opts.chunk_size,
            next_index: 0,
            pending: Vec::new(),
            compressor: Compressor::new(opts)?,
        })
    }

    /// Seals all of `plaintext` as the whole object body (no [`update`](Sealer::update) before).
    pub(crate) fn seal_all(
        mut self,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        debug_assert!(self.next_index == 0 && self.pending.is_empty());
        let cs = self.chunk_size;
        let chunks = plaintext.len().div_ceil(cs).max(1);
        // Room for everything stored: compression only makes it smaller.
        out.reserve(plaintext.len() + chunks * (CHUNK_LEN_FIELD + 1 + TAG_LEN));
        let mut parts = plaintext.chunks(cs).peekable();
        if parts.peek().is_none() {
            self.seal_chunk(&[], true, out)?;
        }
        while let Some(part) = parts.next() {
            self.seal_chunk(part, parts.peek().is_none(), out)?;
        }
        Ok(())
    }

    /// The KEK this object's data key is wrapped with.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// Adds plaintext; returns the chunks it completed (possibly none).
    pub fn update(&mut self, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut out = Vec::new();
        self.update_into(data, &mut out)?;
        Ok(out)
    }

    /// Like [`update`](Sealer::update), appending to `out` (to reuse a buffer).
    pub fn update_into(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> Result<(), CryptoError> {
        let cs = self.chunk_size;
        if !self.pending.is_empty() {
            let take = (cs - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if data.is_empty() {
                // The pending chunk may be the last one: keep it.
                return Ok(());
            }
            let pending = std::mem::take(&mut self.pending);
            let r = self.seal_chunk(&pending, false, out);
            self.pending = pending;
            self.pending.clear();
            r?;
        }
        // Chunks followed by more data are not final: seal them straight from `data`.
        while data.len() > cs {
            let (chunk, rest) = data.split_at(cs);
            self.seal_chunk(chunk, false, out)?;
            data = rest;
        }
        if self.pending.capacity() < cs {
            self.pending.reserve_exact(cs);
        }
        self.pending.extend_from_slice(data);
        Ok(())
    }

    /// Seals the final chunk (of whatever plaintext is held back, possibly none).
    pub fn finish(self) -> Result<Vec<u8>, CryptoError> {
        let mut out = Vec::new();
        self.finish_into(&mut out)?;
        Ok(out)
    }

    /// Like [`finish`](Sealer::finish), appending to `out`.
    pub fn finish_into(mut self, out: &mut Vec<u8>) -> Result<(), CryptoError> {
        let pending = std::mem::take(&mut self.pending);
        self.seal_chunk(&pending, true, out)
    }

    /// Appends chunk `self.next_index` holding `data` to `out`.
    pub(crate) fn seal_chunk(
        &mut self,
        data: &[u8],
        is_final: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        debug_assert!(data.len() <= self.chunk_size);
        debug_assert!(is_final || data.len() == self.chunk_size);
        let index = self.next_index;
        let start = out.len();
        out.extend_from_slice(&[0; CHUNK_LEN_FIELD]);
        let body = out.len();
        match self.compressor.compress(data, index)? {
            Some(compressed) => {
                out.push(MARKER_COMPRESSED);
                // data.len() <= chunk size <= 64 MiB.
                out.extend_from_slice(&(data.len() as u32).to_be_bytes());
                out.extend_from_slice(compressed);
            }
            None => {
                out.push(MARKER_STORED);
                out.extend_from_slice(data);
            }
        }
        let aad = chunk_aad(&self.immutable, index, is_final);
        let tag = self
            .key
            .seal_in_place_separate_tag(chunk_nonce(index), Aad::from(aad), &mut out[body..])
            .map_err(|_| CryptoError::Encryption {
                reason: "sealing a chunk",
            })?;
        out.extend_from_slice(tag.as_ref());
        let field = encode_len_field(out.len() - body, is_final);
        out[start..body].copy_from_slice(&field);
        self.next_index = index.checked_add(1).ok_or(CryptoError::Encryption {
            reason: "more than 2^64 chunks",
        })?;
        Ok(())
    }
}
