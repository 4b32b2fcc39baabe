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
use std::ops::Range;
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

/// The length of an index of `entries` entries.
pub(crate) fn idx_len(entries: u64) -> u64 {
    36 + ENTRY_LEN as u64 * entries
}

/// The entries of an index of `len` bytes.
pub(crate) fn idx_entries(len: u64) -> u64 {
    len.saturating_sub(36) / ENTRY_LEN as u64
}

/// Reads the index at `path` of pack `id`.
pub fn read_idx(path: &Path, id: PackId) -> Result<Vec<IndexEntry>, BackupStoreError> {
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
/// files once and kept current by the backup session (one per cluster) as it closes packs, and
/// by reclaim as it forgets dead blocks and relocates live ones.
///
/// Each block has a **slot**, a number that stays the block's for the life of the index: the
/// server's claims and reclaim's marks are sets of slots ([`super::SlotSet`]). Forgetting a
/// block leaves a tombstone in its slot (never reused); a pack rewrite moves a slot's location
/// to the new pack in place.
///
/// Memory: about 66 bytes per slot (a 36-byte hash map slot and its control byte at a load
/// of 7/8, plus a 24-byte optional location), so about 1.1 MB per 1 GiB of distinct 64 KiB
/// blocks; a tombstone keeps its 24 bytes until the index is loaded again.
#[derive(Debug, Default)]
pub struct BlockIndex {
    packs: Vec<PackId>,
    /// By slot: where the block is, or `None` once forgotten (a tombstone).
    locations: Vec<Option<BlockLocation>>,
    by_hash: HashMap<BlockHash, u32>,
}

impl BlockIndex {
    /// The index of the packs in `dir` (empty if there is no such directory). Packs without an
    /// index (a crash) are left out: [`super::BackupStore::open_index`] recovers them.
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

    /// Adds a closed (durable, indexed) pack; the slots it added (its blocks not held before),
    /// contiguous. A pack already in the index adds nothing.
    pub fn insert(&mut self, pack: ClosedPack) -> Range<u32> {
        let first = self.slot_count();
        if self.packs.contains(&pack.id) {
            return first..first;
        }
        let number = self.packs.len() as u32;
        self.packs.push(pack.id);
        for e in pack.entries {
            if self.by_hash.contains_key(&e.hash) {
                continue;
            }
            self.by_hash.insert(e.hash, self.slot_count());
            self.locations.push(Some(BlockLocation {
                pack: number,
                offset: e.offset,
                stored_len: e.stored_len,
            }));
        }
        first..self.slot_count()
    }

    /// Whether the index holds `hash`.
    pub fn contains(&self, hash: &BlockHash) -> bool {
        self.by_hash.contains_key(hash)
    }

    /// Where `hash` is stored.
    pub fn get(&self, hash: &BlockHash) -> Option<BlockLocation> {
        self.slot(hash).map(|(_, l)| l)
    }

    /// The slot of `hash` (stable for this index's life), if held.
    pub fn slot_of(&self, hash: &BlockHash) -> Option<u32> {
        self.by_hash.get(hash).copied()
    }

    /// The block's slot and location.
    pub(crate) fn slot(&self, hash: &BlockHash) -> Option<(usize, BlockLocation)> {
        let n = *self.by_hash.get(hash)? as usize;
        self.locations.get(n).copied().flatten().map(|l| (n, l))
    }

    /// The pack of a location.
    pub(crate) fn pack_of(&self, location: &BlockLocation) -> Option<PackId> {
        self.packs.get(location.pack as usize).copied()
    }

    /// Packs in the index, by number (a removed pack keeps its number, without blocks).
    pub(crate) fn packs(&self) -> &[PackId] {
        &self.packs
    }

    /// Every slot's location, by slot (`None`: forgotten).
    pub(crate) fn locations(&self) -> &[Option<BlockLocation>] {
        &self.locations
    }

    /// Forgets every block for which `dead(slot, location)` says so: its slot becomes a
    /// tombstone and the index no longer holds its hash. `kept(hash, slot, location)` hears of
    /// every block that stays.
    pub(crate) fn forget(
        &mut self,
        dead: &mut dyn FnMut(u32, &BlockLocation) -> bool,
        kept: &mut dyn FnMut(&BlockHash, u32, &BlockLocation),
    ) {
        let locations = &mut self.locations;
        self.by_hash.retain(|hash, slot| {
            let Some(location) = locations.get(*slot as usize).copied().flatten() else {
                return false;
            };
            if dead(*slot, &location) {
                locations[*slot as usize] = None;
                false
            } else {
                kept(hash, *slot, &location);
                true
            }
        });
    }

    /// Moves the blocks `moved` (hash, slot) into the rewritten pack `pack`, each keeping its
    /// slot. A pair whose slot no longer holds that hash, or whose hash `pack` lacks, is left
    /// as it is.
    pub fn relocate(&mut self, pack: ClosedPack, moved: &[(BlockHash, u32)]) {
        let number = match self.packs.iter().position(|id| *id == pack.id) {
            Some(n) => n as u32,
            None => {
                self.packs.push(pack.id);
                (self.packs.len() - 1) as u32
            }
        };
        let entries: HashMap<BlockHash, &IndexEntry> =
            pack.entries.iter().map(|e| (e.hash, e)).collect();
        for (hash, slot) in moved {
            if self.by_hash.get(hash) != Some(slot) {
                continue;
            }
            let (Some(entry), Some(location)) =
                (entries.get(hash), self.locations.get_mut(*slot as usize))
            else {
                continue;
            };
            *location = Some(BlockLocation {
                pack: number,
                offset: entry.offset,
                stored_len: entry.stored_len,
            });
        }
    }

    /// Blocks the index holds (tombstones left out).
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether the index holds no block.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// Slots handed out so far, tombstones included: every slot is below it.
    pub fn slot_count(&self) -> u32 {
        self.locations.len() as u32
    }
}
