//! Pack indexes (`<pack-id>.idx`) and the in-memory [`BlockIndex`] built from all of them.
//!
//! # Format of `<pack-id>.idx`
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 8 | magic `KLBIDX01` |
//! | 8 | 16 | pack id |
//! | 24 | 8 | entry count `n`, u64 LE |
//! | 32 | 44·n | entries: block hash (32), record offset (u64 LE), stored length (u32 LE) |
//! | 32+44·n | 4 | CRC-32C of everything before |
//!
//! It holds keyed hashes and offsets only, nothing of the blocks' contents. It is written
//! (atomically, durably) only after its pack is fsynced, so an index never points at blocks
//! that a crash could lose.
//!
//! [`encode_idx`] and [`parse_idx`] are the byte-level halves of writing and reading one, which
//! the fuzz targets drive.

use std::collections::HashMap;
use std::path::Path;

use klio_proto::klio::BlockHash;
use klio_wal::{FsAction, durable};

use super::error::{BackupStoreError, ObjectDamage};
use super::object::damaged;
use super::pack::{ClosedPack, PackId};

const MAGIC: [u8; 8] = *b"KLBIDX01";
const ENTRY_LEN: usize = 44;

/// One block of a pack, as its index lists it.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// The block's hash.
    pub hash: BlockHash,
    /// Its record's offset in the pack.
    pub offset: u64,
    /// Its stored (compressed) length.
    pub stored_len: u32,
}

/// Writes the index of pack `id` at `path`, atomically and durably.
pub(crate) fn write_idx(
    path: &Path,
    id: PackId,
    entries: &[IndexEntry],
) -> Result<(), BackupStoreError> {
    let out = encode_idx(id, entries);
    // Atomic: a reader sees no index or the whole one; durable before the blocks are reported
    // held.
    durable::replace(path, &out)?;
    Ok(())
}

/// The bytes of the index of pack `id` listing `entries`.
#[doc(hidden)]
pub fn encode_idx(id: PackId, entries: &[IndexEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(36 + ENTRY_LEN * entries.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&id.0);
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.hash.0);
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.stored_len.to_le_bytes());
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Reads the index at `path` of pack `id`.
pub(crate) fn read_idx(path: &Path, id: PackId) -> Result<Vec<IndexEntry>, BackupStoreError> {
    let bytes = std::fs::read(path).map_err(|e| BackupStoreError::io(FsAction::Read, path, e))?;
    parse_idx(&bytes, id, path)
}

/// The entries of the index `bytes` of pack `id` (`path` names it in errors).
#[doc(hidden)]
pub fn parse_idx(
    bytes: &[u8],
    id: PackId,
    path: &Path,
) -> Result<Vec<IndexEntry>, BackupStoreError> {
    if bytes.len() < 36 || bytes[..8] != MAGIC {
        return Err(damaged(path, ObjectDamage::BadMagic));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
        return Err(damaged(path, ObjectDamage::CrcMismatch));
    }
    if body[8..24] != id.0 {
        return Err(damaged(path, ObjectDamage::OtherObject));
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&body[24..32]);
    let n = u64::from_le_bytes(n);
    if (body.len() as u64 - 32) != n.saturating_mul(ENTRY_LEN as u64) {
        return Err(damaged(
            path,
            ObjectDamage::Malformed("the entry count does not match the length"),
        ));
    }
    Ok(body[32..]
        .chunks_exact(ENTRY_LEN)
        .map(|e| {
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&e[..32]);
            let mut offset = [0u8; 8];
            offset.copy_from_slice(&e[32..40]);
            IndexEntry {
                hash: BlockHash(hash),
                offset: u64::from_le_bytes(offset),
                stored_len: u32::from_le_bytes([e[40], e[41], e[42], e[43]]),
            }
        })
        .collect())
}

/// Where a block is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockLocation {
    /// The pack, as a number into [`BlockIndex`]'s packs.
    pub(crate) pack: u32,
    /// The record's offset in it.
    pub(crate) offset: u64,
    /// The block's stored (compressed) length.
    pub stored_len: u32,
}

/// Every durable block of a cluster: hash → pack, offset, length. Built from all `.idx`
/// files once and kept current by the backup session (one per cluster) as it closes packs.
///
/// Memory: about 60 bytes per block (a 36-byte hash map slot and its control byte at a load
/// of 7/8, plus a 16-byte location), so about 1 MB per 1 GiB of distinct 64 KiB blocks.
#[derive(Debug, Default)]
pub struct BlockIndex {
    packs: Vec<PackId>,
    locations: Vec<BlockLocation>,
    by_hash: HashMap<BlockHash, u32>,
}

impl BlockIndex {
    /// The index of the packs in `dir` (empty if there is no such directory). Packs without an
    /// index (a crash) are left out: the next backup session recovers them.
    pub fn load(dir: &Path) -> Result<Self, BackupStoreError> {
        let mut index = Self::default();
        let read = |e| BackupStoreError::io(FsAction::ReadDirectory, dir, e);
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(index),
            Err(e) => return Err(read(e)),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(read)?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if let Some(id) = name.strip_suffix(".idx").and_then(PackId::parse) {
                ids.push(id);
            }
        }
        // A stable order: the same hash in two packs resolves the same way every time.
        ids.sort_by_key(|id| id.0);
        for id in ids {
            let entries = read_idx(&id.idx_path(dir), id)?;
            index.insert(ClosedPack { id, entries });
        }
        Ok(index)
    }

    /// Adds a closed (durable, indexed) pack.
    pub fn insert(&mut self, pack: ClosedPack) {
        if self.packs.contains(&pack.id) {
            return;
        }
        let number = self.packs.len() as u32;
        self.packs.push(pack.id);
        for e in pack.entries {
            if self.by_hash.contains_key(&e.hash) {
                continue;
            }
            self.by_hash.insert(e.hash, self.locations.len() as u32);
            self.locations.push(BlockLocation {
                pack: number,
                offset: e.offset,
                stored_len: e.stored_len,
            });
        }
    }

    /// Whether the index holds `hash`.
    pub fn contains(&self, hash: &BlockHash) -> bool {
        self.by_hash.contains_key(hash)
    }

    /// Where `hash` is stored.
    pub fn get(&self, hash: &BlockHash) -> Option<BlockLocation> {
        self.slot(hash).map(|(_, l)| l)
    }

    /// The block's dense number (0..len) and location.
    pub(crate) fn slot(&self, hash: &BlockHash) -> Option<(usize, BlockLocation)> {
        let n = *self.by_hash.get(hash)? as usize;
        self.locations.get(n).map(|l| (n, *l))
    }

    /// The pack of a location.
    pub(crate) fn pack_of(&self, location: &BlockLocation) -> Option<PackId> {
        self.packs.get(location.pack as usize).copied()
    }

    /// Blocks in the index.
    pub fn len(&self) -> usize {
        self.locations.len()
    }

    /// Whether the index holds no block.
    pub fn is_empty(&self) -> bool {
        self.locations.is_empty()
    }
}
