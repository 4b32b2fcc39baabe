//! Pack files: blocks appended as self-describing records, CRC-32C-protected (plain server)
//! or AES-256-GCM-sealed under a per-pack frame key (encrypted server).
//!
//! # Format of `<pack-id>.pack`
//!
//! Header (32 bytes):
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 4 | magic `KLBP` |
//! | 4 | 1 | version, 1 |
//! | 5 | 1 | protection: 0 CRC-32C, 1 AES-256-GCM |
//! | 6 | 2 | zero |
//! | 8 | 16 | pack id (the file's name, in hex) |
//! | 24 | 4 | length of the sealed key object that follows (0 for CRC-32C), u32 LE |
//! | 28 | 4 | CRC-32C of bytes 0..28 |
//!
//! In an encrypted pack the header is followed by a klio-crypto object sealed with the
//! keyring, holding `KLBPKEY1`, the pack id and the pack's 32-byte frame key, exactly as a WAL
//! journal keeps its frame key. Then records, each:
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 4 | magic `KLBR` |
//! | 4 | 1 | compression: 0 none, 1 LZ4, 2 zstd, 3 LZ4 against the cluster's dictionary (as the client sent it) |
//! | 5 | 3 | zero |
//! | 8 | 4 | plaintext length, u32 LE |
//! | 12 | 4 | stored length `n` (the compressed bytes), u32 LE |
//! | 16 | 32 | block hash |
//! | 48 | 12 | AES-GCM nonce (zeros in a CRC-32C pack) |
//! | 60 | n | the compressed bytes (encrypted in an AES-256-GCM pack) |
//! | 60+n | 4 or 16 | CRC-32C of bytes 0..60+n, or the GCM tag |
//!
//! The GCM additional data is the pack id followed by the 60-byte record header
//! (`klio_crypto::journal_frame::FrameKey` with the pack id as its id), so a record cannot be
//! moved to another pack or have its header changed undetected.
//!
//! # Reading
//!
//! [`PackReader`] reads a pack from any [`PackBytes`]: its file in the store, or bytes in
//! memory for [`scan_pack`] and [`read_pack_block`], the byte-level entry points that the fuzz
//! targets drive (the same header, record and scan code the store runs on its files).

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use klio_crypto::journal_frame::{self, FrameKey};
use klio_crypto::{Compression, Keyring, ObjectHeader, SealOptions, SecureRandom};
use klio_proto::klio::{Block, BlockCompression, BlockHash};
use klio_wal::{FsAction, durable};

use super::error::{BackupStoreError, BlockDamage, ObjectDamage};
use super::index::IndexEntry;

/// A pack is closed (and a new one started) once it reaches this size: one file per ~32 MiB
/// of blocks, never a file per block.
pub const PACK_TARGET_BYTES: u64 = 32 << 20;

const MAGIC: [u8; 4] = *b"KLBP";
const VERSION: u8 = 1;
const HEADER_LEN: u64 = 32;
const RECORD_MAGIC: [u8; 4] = *b"KLBR";
const RECORD_HEADER_LEN: usize = 60;
const KEY_BLOCK_MAGIC: [u8; 8] = *b"KLBPKEY1";
const KEY_BLOCK_LEN: usize = 8 + 16 + journal_frame::KEY_LEN;
/// The largest stored length a record may claim (a block is at most 1 MiB of plaintext, and
/// compression never grows it by more than a little).
const MAX_STORED_LEN: u32 = 2 << 20;

/// A pack's id: 16 random bytes, its file name in hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PackId(pub [u8; 16]);

impl fmt::Display for PackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for PackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PackId({self})")
    }
}

impl PackId {
    /// The id named by a file stem of 32 hex digits.
    pub fn parse(stem: &str) -> Option<Self> {
        if stem.len() != 32 {
            return None;
        }
        let mut id = [0u8; 16];
        for (i, b) in id.iter_mut().enumerate() {
            *b = u8::from_str_radix(stem.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(id))
    }

    /// `<id>.pack` in `dir`.
    pub fn pack_path(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{self}.pack"))
    }

    /// `<id>.idx` in `dir`.
    pub fn idx_path(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{self}.idx"))
    }

    /// `<id>.dead` in `dir`: the index of a pack being removed, renamed so that no index
    /// loaded later holds its blocks.
    pub fn dead_path(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{self}.dead"))
    }
}

/// How a pack's records are protected.
enum Protection {
    Crc,
    Aead(Box<FrameKey>),
}

impl Protection {
    fn trailer_len(&self) -> usize {
        match self {
            Self::Crc => 4,
            Self::Aead(_) => journal_frame::TAG_LEN,
        }
    }
}

fn encode_header(id: PackId, aead: bool, key_len: u32) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..4].copy_from_slice(&MAGIC);
    h[4] = VERSION;
    h[5] = u8::from(aead);
    h[8..24].copy_from_slice(&id.0);
    h[24..28].copy_from_slice(&key_len.to_le_bytes());
    let crc = crc32c::crc32c(&h[..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A pack open for appending blocks.
pub(crate) struct PackWriter {
    file: File,
    path: PathBuf,
    id: PackId,
    protection: Protection,
    len: u64,
    /// The blocks in it, by hash: offset and stored length.
    blocks: HashMap<BlockHash, (u64, u32)>,
}

impl fmt::Debug for PackWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PackWriter")
            .field("path", &self.path)
            .field("len", &self.len)
            .field("blocks", &self.blocks.len())
            .finish_non_exhaustive()
    }
}

/// A closed pack: durable, with its index written; [`super::BlockIndex::insert`] adds it.
#[derive(Debug)]
pub struct ClosedPack {
    pub(crate) id: PackId,
    pub(crate) entries: Vec<IndexEntry>,
}

impl ClosedPack {
    /// The hashes of the blocks it holds.
    pub fn hashes(&self) -> impl Iterator<Item = &BlockHash> {
        self.entries.iter().map(|e| &e.hash)
    }
}

impl PackWriter {
    /// Creates a new pack in `dir`, durable (with its sealed frame key) before any block goes in.
    pub(crate) fn create(
        dir: &Path,
        keyring: Option<&Keyring>,
        rng: &dyn SecureRandom,
    ) -> Result<Self, BackupStoreError> {
        let mut raw = [0u8; 16];
        rng.fill(&mut raw).map_err(|_| BackupStoreError::Crypto {
            action: "pick an id for a pack in",
            path: dir.to_owned(),
            source: klio_crypto::CryptoError::Random,
        })?;
        let id = PackId(raw);
        let path = id.pack_path(dir);
        let (key_object, protection) = match keyring {
            None => (Vec::new(), Protection::Crc),
            Some(ring) => {
                let frame_err = |source| BackupStoreError::Frame {
                    action: "create the frame key of pack",
                    path: path.clone(),
                    source,
                };
                let key = journal_frame::random_key(rng).map_err(frame_err)?;
                let mut block = Vec::with_capacity(KEY_BLOCK_LEN);
                block.extend_from_slice(&KEY_BLOCK_MAGIC);
                block.extend_from_slice(&id.0);
                block.extend_from_slice(&key);
                let opts = SealOptions {
                    compression: Compression::None,
                    chunk_size: KEY_BLOCK_LEN,
                };
                let object = klio_crypto::seal(ring, &opts, &block, rng).map_err(|source| {
                    BackupStoreError::Crypto {
                        action: "seal the frame key of pack",
                        path: path.clone(),
                        source,
                    }
                })?;
                (
                    object,
                    Protection::Aead(Box::new(FrameKey::new(&key, id.0).map_err(frame_err)?)),
                )
            }
        };
        let header = encode_header(id, keyring.is_some(), key_object.len() as u32);
        let mut head = header.to_vec();
        head.extend_from_slice(&key_object);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| BackupStoreError::io(FsAction::Create, &path, e))?;
        file.write_all_at(&head, 0)
            .map_err(|e| BackupStoreError::io(FsAction::Write, &path, e))?;
        // The frame key must be on disk before any block sealed with it, and the new name in
        // its directory, so that a crash never leaves records nobody can open.
        file.sync_all()
            .map_err(|e| BackupStoreError::io(FsAction::Fsync, &path, e))?;
        durable::sync_dir(dir)?;
        Ok(Self {
            file,
            path,
            id,
            protection,
            len: head.len() as u64,
            blocks: HashMap::new(),
        })
    }

    /// Whether the pack holds `hash`.
    pub(crate) fn contains(&self, hash: &BlockHash) -> bool {
        self.blocks.contains_key(hash)
    }

    /// The pack's size so far.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Appends a block (already checked against its hash); not durable until
    /// [`PackWriter::close`].
    pub(crate) fn append(
        &mut self,
        block: &Block,
        rng: &dyn SecureRandom,
    ) -> Result<(), BackupStoreError> {
        if self.blocks.contains_key(&block.hash) {
            return Ok(());
        }
        let stored_len = block.data.len() as u32;
        let mut record = Vec::with_capacity(RECORD_HEADER_LEN + block.data.len() + 16);
        record.extend_from_slice(&RECORD_MAGIC);
        // The pack codes are the wire codes: a record keeps the block as the client sent it.
        record.push(block.compression.to_u8());
        record.extend_from_slice(&[0; 3]);
        record.extend_from_slice(&block.plain_len.to_le_bytes());
        record.extend_from_slice(&stored_len.to_le_bytes());
        record.extend_from_slice(&block.hash.0);
        match &self.protection {
            Protection::Crc => {
                record.extend_from_slice(&[0; journal_frame::NONCE_LEN]);
                record.extend_from_slice(&block.data);
                let crc = crc32c::crc32c(&record);
                record.extend_from_slice(&crc.to_le_bytes());
            }
            Protection::Aead(key) => {
                let frame_err = |source| BackupStoreError::Frame {
                    action: "seal a block into pack",
                    path: self.path.clone(),
                    source,
                };
                let nonce = journal_frame::random_nonce(rng).map_err(frame_err)?;
                record.extend_from_slice(&nonce);
                record.extend_from_slice(&block.data);
                let (header, data) = record.split_at_mut(RECORD_HEADER_LEN);
                let tag = key.seal(&nonce, header, data).map_err(frame_err)?;
                record.extend_from_slice(&tag);
            }
        }
        self.file
            .write_all_at(&record, self.len)
            .map_err(|e| BackupStoreError::io(FsAction::Write, &self.path, e))?;
        self.blocks.insert(block.hash, (self.len, stored_len));
        self.len += record.len() as u64;
        Ok(())
    }

    /// Removes the pack unfinished (nothing refers to its blocks: it has no index).
    pub(crate) fn abandon(self) -> Result<(), BackupStoreError> {
        drop(self.file);
        std::fs::remove_file(&self.path)
            .map_err(|e| BackupStoreError::io(FsAction::Remove, &self.path, e))?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        // The removal must be durable, or a crash brings the pack back for recovery to index.
        durable::sync_dir(dir)?;
        Ok(())
    }

    /// Makes the pack durable and writes its index.
    pub(crate) fn close(self) -> Result<ClosedPack, BackupStoreError> {
        // The blocks must be on disk before the index can point at them.
        self.file
            .sync_all()
            .map_err(|e| BackupStoreError::io(FsAction::Fsync, &self.path, e))?;
        let mut entries: Vec<IndexEntry> = self
            .blocks
            .iter()
            .map(|(hash, (offset, stored_len))| IndexEntry {
                hash: *hash,
                offset: *offset,
                stored_len: *stored_len,
            })
            .collect();
        entries.sort_by_key(|e| e.offset);
        let dir = self.path.parent().unwrap_or(Path::new("."));
        super::index::write_idx(&self.id.idx_path(dir), self.id, &entries)?;
        Ok(ClosedPack {
            id: self.id,
            entries,
        })
    }
}

/// How much room a pack's header and records take: what reclaim needs to foresee the size of
/// a rewritten pack without opening its frame key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PackLayout {
    /// Bytes before the first record (the header and the sealed frame key).
    pub(crate) records_start: u64,
    /// Bytes after a record's data (its CRC-32C or GCM tag).
    trailer_len: u64,
}

impl PackLayout {
    /// Reads the layout from the header of the pack at `path` (its magic and CRC checked).
    pub(crate) fn read(path: &Path) -> Result<Self, BackupStoreError> {
        let file = File::open(path).map_err(|e| BackupStoreError::io(FsAction::Open, path, e))?;
        let mut h = [0u8; HEADER_LEN as usize];
        FileExt::read_exact_at(&file, &mut h, 0)
            .map_err(|e| BackupStoreError::io(FsAction::Read, path, e))?;
        let damaged = |reason| BackupStoreError::DamagedPack {
            path: path.to_owned(),
            reason,
        };
        if h[0..4] != MAGIC || h[4] != VERSION {
            return Err(damaged(ObjectDamage::BadMagic));
        }
        if crc32c::crc32c(&h[..28]) != u32::from_le_bytes([h[28], h[29], h[30], h[31]]) {
            return Err(damaged(ObjectDamage::CrcMismatch));
        }
        let trailer_len = match h[5] {
            0 => 4,
            1 => journal_frame::TAG_LEN as u64,
            _ => return Err(damaged(ObjectDamage::Malformed("unknown protection code"))),
        };
        let key_len = u64::from(u32::from_le_bytes([h[24], h[25], h[26], h[27]]));
        Ok(Self {
            records_start: HEADER_LEN + key_len,
            trailer_len,
        })
    }

    /// The bytes of a record of `stored_len` data bytes.
    pub(crate) fn record_len(&self, stored_len: u32) -> u64 {
        RECORD_HEADER_LEN as u64 + u64::from(stored_len) + self.trailer_len
    }
}

/// Where a pack's bytes are read from: its file, or bytes in memory.
pub(crate) trait PackBytes {
    /// Fills `buf` from `offset`; an error if the bytes end before.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

impl PackBytes for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

impl PackBytes for &[u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let piece = usize::try_from(offset)
            .ok()
            .and_then(|start| self.get(start..start.checked_add(buf.len())?))
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(piece);
        Ok(())
    }
}

/// A pack open for reading blocks.
pub(crate) struct PackReader<S = File> {
    file: S,
    path: PathBuf,
    protection: Protection,
    /// Offset of the first record.
    records_start: u64,
    len: u64,
}

impl<S> fmt::Debug for PackReader<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PackReader")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Why opening a pack's header failed: damage, or the pack was never finished being created.
enum HeaderError {
    /// The header is incomplete and nothing follows it: a crash while the pack was created.
    Unfinished,
    Failed(BackupStoreError),
}

/// An opened pack, or the error of opening it: an unfinished header is damage to a reader
/// (only recovery removes such a pack).
fn opened<S>(
    result: Result<PackReader<S>, HeaderError>,
    path: &Path,
) -> Result<PackReader<S>, BackupStoreError> {
    match result {
        Ok(r) => Ok(r),
        Err(HeaderError::Failed(e)) => Err(e),
        Err(HeaderError::Unfinished) => Err(BackupStoreError::DamagedPack {
            path: path.to_owned(),
            reason: ObjectDamage::Truncated,
        }),
    }
}

impl PackReader {
    /// Opens the pack at `path` (its header and frame key).
    pub(crate) fn open(path: &Path, keyring: Option<&Keyring>) -> Result<Self, BackupStoreError> {
        opened(Self::open_inner(path, keyring), path)
    }

    fn open_inner(path: &Path, keyring: Option<&Keyring>) -> Result<Self, HeaderError> {
        let fail = |e| HeaderError::Failed(e);
        let file =
            File::open(path).map_err(|e| fail(BackupStoreError::io(FsAction::Open, path, e)))?;
        let len = file
            .metadata()
            .map_err(|e| fail(BackupStoreError::io(FsAction::Stat, path, e)))?
            .len();
        Self::from_bytes(file, len, path, keyring)
    }
}

impl<S: PackBytes> PackReader<S> {
    /// Reads the header and frame key of the pack of `len` bytes in `file`, named `path` in
    /// errors.
    fn from_bytes(
        file: S,
        len: u64,
        path: &Path,
        keyring: Option<&Keyring>,
    ) -> Result<Self, HeaderError> {
        let fail = |e| HeaderError::Failed(e);
        let damaged = |reason| {
            HeaderError::Failed(BackupStoreError::DamagedPack {
                path: path.to_owned(),
                reason,
            })
        };
        let mut h = [0u8; HEADER_LEN as usize];
        if len < HEADER_LEN {
            return Err(HeaderError::Unfinished);
        }
        file.read_exact_at(&mut h, 0)
            .map_err(|e| fail(BackupStoreError::io(FsAction::Read, path, e)))?;
        if h[0..4] != MAGIC || h[4] != VERSION {
            return Err(damaged(ObjectDamage::BadMagic));
        }
        if crc32c::crc32c(&h[..28]) != u32::from_le_bytes([h[28], h[29], h[30], h[31]]) {
            return Err(damaged(ObjectDamage::CrcMismatch));
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&h[8..24]);
        let key_len = u64::from(u32::from_le_bytes([h[24], h[25], h[26], h[27]]));
        let records_start = HEADER_LEN + key_len;
        if len < records_start {
            return Err(HeaderError::Unfinished);
        }
        let protection = match h[5] {
            0 => Protection::Crc,
            1 => {
                let mut object = vec![0u8; key_len as usize];
                file.read_exact_at(&mut object, HEADER_LEN)
                    .map_err(|e| fail(BackupStoreError::io(FsAction::Read, path, e)))?;
                let Some(ring) = keyring else {
                    return Err(fail(BackupStoreError::Encrypted {
                        path: path.to_owned(),
                    }));
                };
                let crypto = |source| {
                    HeaderError::Failed(BackupStoreError::Crypto {
                        action: "open the frame key of pack",
                        path: path.to_owned(),
                        source,
                    })
                };
                let block = klio_crypto::open(ring, &object).map_err(crypto)?;
                ObjectHeader::parse(&object).map_err(crypto)?;
                if block.len() != KEY_BLOCK_LEN
                    || block[..8] != KEY_BLOCK_MAGIC
                    || block[8..24] != id
                {
                    return Err(damaged(ObjectDamage::OtherObject));
                }
                let mut key = [0u8; journal_frame::KEY_LEN];
                key.copy_from_slice(&block[24..]);
                let key = FrameKey::new(&key, id).map_err(|source| {
                    HeaderError::Failed(BackupStoreError::Frame {
                        action: "use the frame key of pack",
                        path: path.to_owned(),
                        source,
                    })
                })?;
                Protection::Aead(Box::new(key))
            }
            _ => return Err(damaged(ObjectDamage::Malformed("unknown protection code"))),
        };
        Ok(Self {
            file,
            path: path.to_owned(),
            protection,
            records_start,
            len,
        })
    }

    /// Reads and checks the record at `offset`, which the index says is `hash` with
    /// `stored_len` bytes.
    pub(crate) fn read(
        &self,
        offset: u64,
        stored_len: u32,
        hash: &BlockHash,
    ) -> Result<Block, BackupStoreError> {
        let damaged = |reason| BackupStoreError::DamagedBlock {
            pack: self.path.clone(),
            hash: *hash,
            reason,
        };
        if offset < self.records_start || stored_len > MAX_STORED_LEN {
            return Err(damaged(BlockDamage::IndexMismatch));
        }
        match self.read_record(offset, Some(stored_len))? {
            Ok(record) if record.block.hash == *hash => Ok(record.block),
            Ok(_) => Err(damaged(BlockDamage::IndexMismatch)),
            Err(damage) => Err(damaged(damage)),
        }
    }

    /// The valid records from the first one on, each block once (its first record), and the
    /// offset where they end: the pack's length, or where a torn or damaged record starts.
    fn scan(&self) -> Result<(Vec<IndexEntry>, u64), BackupStoreError> {
        let mut entries = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut offset = self.records_start;
        while offset < self.len {
            match self.read_record(offset, None)? {
                Ok(record) => {
                    if seen.insert(record.block.hash) {
                        entries.push(IndexEntry {
                            hash: record.block.hash,
                            offset,
                            stored_len: record.block.data.len() as u32,
                        });
                    }
                    offset = record.end;
                }
                Err(_) => break,
            }
        }
        Ok((entries, offset))
    }

    /// The record at `offset`: `Err(damage)` when it is not a valid record (with
    /// `expected_len`, the length the index gave).
    fn read_record(
        &self,
        offset: u64,
        expected_len: Option<u32>,
    ) -> Result<Result<Record, BlockDamage>, BackupStoreError> {
        let io = |e| BackupStoreError::io(FsAction::Read, &self.path, e);
        // An offset from a damaged index may be anywhere up to u64::MAX.
        if offset
            .checked_add(RECORD_HEADER_LEN as u64)
            .is_none_or(|header_end| header_end > self.len)
        {
            return Ok(Err(BlockDamage::Truncated));
        }
        let mut header = [0u8; RECORD_HEADER_LEN];
        self.file.read_exact_at(&mut header, offset).map_err(io)?;
        if header[0..4] != RECORD_MAGIC {
            return Ok(Err(match expected_len {
                Some(_) => BlockDamage::IndexMismatch,
                None => BlockDamage::BadHeader,
            }));
        }
        let plain_len = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        let stored_len = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
        let Some(compression) = BlockCompression::from_u8(header[4]) else {
            return Ok(Err(BlockDamage::BadHeader));
        };
        if stored_len > MAX_STORED_LEN || expected_len.is_some_and(|e| e != stored_len) {
            return Ok(Err(BlockDamage::BadHeader));
        }
        let body_len = stored_len as usize + self.protection.trailer_len();
        let end = offset + (RECORD_HEADER_LEN + body_len) as u64;
        if end > self.len {
            return Ok(Err(BlockDamage::Truncated));
        }
        let mut body = vec![0u8; body_len];
        self.file
            .read_exact_at(&mut body, offset + RECORD_HEADER_LEN as u64)
            .map_err(io)?;
        let data = match &self.protection {
            Protection::Crc => {
                let (data, crc) = body.split_at(stored_len as usize);
                let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
                if crc32c::crc32c_append(crc32c::crc32c(&header), data) != stored {
                    return Ok(Err(BlockDamage::CrcMismatch));
                }
                body.truncate(stored_len as usize);
                body
            }
            Protection::Aead(key) => {
                let mut nonce = [0u8; journal_frame::NONCE_LEN];
                nonce.copy_from_slice(&header[48..60]);
                if key.open(&nonce, &header, &mut body).is_err() {
                    return Ok(Err(BlockDamage::Unauthentic));
                }
                body.truncate(stored_len as usize);
                body
            }
        };
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&header[16..48]);
        Ok(Ok(Record {
            block: Block {
                hash: BlockHash(hash),
                plain_len,
                compression,
                data: Bytes::from(data),
            },
            end,
        }))
    }
}

struct Record {
    block: Block,
    /// The offset after it.
    end: u64,
}

/// Recovers a pack left without index by a crash: scans its valid records, truncates a torn
/// tail, makes it durable and writes its index. A pack whose creation never finished (no
/// block can be in it) is removed instead.
pub(crate) fn recover(
    dir: &Path,
    id: PackId,
    keyring: Option<&Keyring>,
) -> Result<(), BackupStoreError> {
    let path = id.pack_path(dir);
    let reader = match PackReader::open_inner(&path, keyring) {
        Ok(r) => r,
        Err(HeaderError::Unfinished) => {
            // The header (and key) are fsynced before the first record: an incomplete one
            // means no block was ever written here.
            std::fs::remove_file(&path)
                .map_err(|e| BackupStoreError::io(FsAction::Remove, &path, e))?;
            // The removal must be durable before anything relies on the pack being gone.
            durable::sync_dir(dir)?;
            return Ok(());
        }
        Err(HeaderError::Failed(e)) => return Err(e),
    };
    let (entries, offset) = reader.scan()?;
    let file = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| BackupStoreError::io(FsAction::Open, &path, e))?;
    if offset < reader.len {
        file.set_len(offset)
            .map_err(|e| BackupStoreError::io(FsAction::Write, &path, e))?;
    }
    // The truncated pack must be on disk before its index points into it.
    file.sync_all()
        .map_err(|e| BackupStoreError::io(FsAction::Fsync, &path, e))?;
    super::index::write_idx(&id.idx_path(dir), id, &entries)
}

/// What [`scan_pack`] found in a pack's bytes.
#[doc(hidden)]
#[derive(Debug)]
pub struct PackScan {
    /// The valid records, each block once, as recovery would index them.
    pub entries: Vec<IndexEntry>,
    /// Where the valid records end: recovery truncates the pack to this length.
    pub valid_len: u64,
}

/// Scans the pack `bytes` as crash recovery scans a pack without index (`path` names it in
/// errors). For the fuzz targets: this is [`PackReader`]'s own header and record code.
#[doc(hidden)]
pub fn scan_pack(
    bytes: &[u8],
    path: &Path,
    keyring: Option<&Keyring>,
) -> Result<PackScan, BackupStoreError> {
    let reader = opened(
        PackReader::from_bytes(bytes, bytes.len() as u64, path, keyring),
        path,
    )?;
    let (entries, valid_len) = reader.scan()?;
    Ok(PackScan { entries, valid_len })
}

/// Reads the block that `entry` of an index places in the pack `bytes`, with every check a
/// read from the store makes.
#[doc(hidden)]
pub fn read_pack_block(
    bytes: &[u8],
    path: &Path,
    keyring: Option<&Keyring>,
    entry: &IndexEntry,
) -> Result<Block, BackupStoreError> {
    let reader = opened(
        PackReader::from_bytes(bytes, bytes.len() as u64, path, keyring),
        path,
    )?;
    reader.read(entry.offset, entry.stored_len, &entry.hash)
}
