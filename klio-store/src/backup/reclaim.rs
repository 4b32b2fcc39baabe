//! Block reclaim: mark-and-sweep of the blocks and packs no retained backup refers to.
//!
//! # Contract
//!
//! The server keeps one [`BlockIndex`] per cluster (from [`BackupStore::open_index`]) behind a
//! `RwLock` for the life of the process; slot numbers are stable for that life. A run is five
//! phases, each a function so that the server runs it under the lock it needs:
//!
//! 1. [`BackupStore::mark`] (read lock, a batch at a time): the slots the file lists of the
//!    retained backups refer to.
//! 2. [`survey_packs`] (no lock but to copy the pack ids): each pack's sizes and layout, and
//!    whether its index is older than the grace period (one `stat` and header read per pack).
//! 3. [`condemn`] (write lock, in memory only): every slot that is not marked, not claimed by
//!    a running session and whose pack the survey found old enough is forgotten, so no
//!    session is told it is held any more. What is left of each pack decides its fate: a
//!    pack with no live block is removed; one whose dead records are at least half its record
//!    bytes is rewritten; any other keeps its dead records on disk.
//! 4. [`sweep`] (no lock, except the write lock [`BlockIndex::relocate`] takes for a
//!    rewrite): the physical work, crash-safe at every step; removals first, as they free
//!    the space rewrites need.
//! 5. [`measure`] instead of 3 and 4 for a dry run: the same numbers, nothing forgotten.
//!
//! A slot is reclaimed only if it is dead at the time of `condemn`: marked by no retained
//! backup (a backup completing after `mark` claims its slots through the server) and claimed
//! by no session. A block is only ever reached through the index, so once `condemn` has
//! forgotten it, nothing reads or re-offers its copy; a session that stores it again writes a
//! new copy.
//!
//! # Removing a pack
//!
//! 1. `<id>.idx` is renamed to `<id>.dead` and `packs/` fsynced: the pack's blocks are gone
//!    from every index loaded later before its file is ([`SweepStep::PackRetired`]).
//! 2. `<id>.pack`, then `<id>.dead` are removed and `packs/` fsynced
//!    ([`SweepStep::PackRemoved`]).
//!
//! [`BackupStore::open_index`] (and the next sweep) finish step 2 for every `.dead` left by a
//! crash, and pack recovery never indexes a pack that has a `.dead`.
//!
//! # Rewriting a pack
//!
//! Its live records are read back through every check (CRC-32C or AES-GCM, and the keyed hash
//! of the decompressed block) and appended to a new pack written like any other (header and
//! frame key fsynced first, blocks fsynced before its index). Then the index relocates the
//! live slots to it under its write lock ([`SweepStep::PackRewritten`]) and the old pack is
//! removed as above. A crash before the new index leaves a pack without index, which
//! `open_index` recovers; a crash after it leaves both packs indexed: either way the live
//! blocks are held twice, which is harmless, and the next run reclaims the copy that no slot
//! resolves to. Readers resolve blocks with the index read lock held and the old pack is
//! removed only after the relocation, so no reader resolves a removed pack.
//!
//! # Numbers
//!
//! [`ReclaimSummary`] counts what leaves the disk: `blocks` are records removed (a dead block
//! left in a kept pack is forgotten but not counted), `bytes` are file bytes freed (packs and
//! indexes, net of a rewrite's new pack).

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::{RwLock, RwLockReadGuard};
use std::time::{Duration, SystemTime};

use klio_proto::klio::BlockHash;
use klio_wal::{FsAction, durable};

use super::error::{BackupStoreError, BlockDamage};
use super::file_list::FileListItem;
use super::id::BackupId;
use super::index::{BlockIndex, idx_entries, idx_len};
use super::pack::{self, ClosedPack, PackId, PackLayout, PackReader, PackWriter};
use super::slot_set::SlotSet;
use super::{BackupStore, BlockCoding, RNG, check_block, named_entries};

/// Hashes looked up under one read lock of the index while marking: a running backup waits
/// for one batch at most, never for the whole mark.
const MARK_BATCH: usize = 4096;

/// A live block a rewrite moves to its new pack: its hash and its (unchanged) slot.
pub type MovedBlock = (BlockHash, u32);

/// A step of [`sweep`] that is durable when it is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SweepStep {
    /// The live blocks of `old` are in the new pack `new` (closed, indexed) and the index
    /// resolves them there; `old` is removed next.
    PackRewritten {
        /// The pack rewritten (removed next).
        old: PackId,
        /// The pack holding its live blocks now.
        new: PackId,
    },
    /// The pack's index is renamed to `.dead`: no index loaded later holds its blocks.
    PackRetired {
        /// The pack.
        id: PackId,
    },
    /// The pack and its `.dead` are removed.
    PackRemoved {
        /// The pack.
        id: PackId,
    },
}

/// What a reclaim removed from the disk (or would, for [`measure`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReclaimSummary {
    /// Block records removed.
    pub blocks: u64,
    /// File bytes freed (packs and their indexes, net of the packs written by rewrites).
    pub bytes: u64,
    /// Packs removed because no live block was left in them.
    pub packs_removed: u64,
    /// Packs rewritten with their live blocks only (the old pack removed).
    pub packs_rewritten: u64,
}

impl std::ops::AddAssign for ReclaimSummary {
    fn add_assign(&mut self, other: Self) {
        self.blocks += other.blocks;
        self.bytes += other.bytes;
        self.packs_removed += other.packs_removed;
        self.packs_rewritten += other.packs_rewritten;
    }
}

/// What [`condemn`] chose: the packs [`sweep`] removes or rewrites.
#[derive(Debug, Default)]
pub struct Condemned {
    packs: Vec<CondemnedPack>,
    forgotten: u64,
    planned: ReclaimSummary,
}

impl Condemned {
    /// Blocks forgotten by the index (those of kept packs included).
    pub fn forgotten(&self) -> u64 {
        self.forgotten
    }

    /// What the sweep will reclaim if nothing changes the packs in between.
    pub fn planned(&self) -> ReclaimSummary {
        self.planned
    }

    /// Whether there is nothing for a sweep to do.
    pub fn is_empty(&self) -> bool {
        self.packs.is_empty()
    }
}

#[derive(Debug)]
struct CondemnedPack {
    id: PackId,
    fate: Fate,
}

/// What happens to a pack with dead blocks.
#[derive(Debug)]
enum Fate {
    /// No live block is left: removed.
    Remove,
    /// Mostly dead: its live blocks (in pack order) are copied into a new pack.
    Rewrite { live: Vec<LiveBlock> },
}

/// A live block of a pack being rewritten.
#[derive(Clone, Copy, Debug)]
struct LiveBlock {
    hash: BlockHash,
    slot: u32,
    offset: u64,
    stored_len: u32,
}

/// The dead blocks chosen under the index's write lock: every slot not in `live`, not in
/// `claimed`, whose pack `survey` found older than the grace period (by its index's mtime) is
/// forgotten (tombstoned: no longer `contains`, so no session is told it is held again).
/// Returns per pack what died.
///
/// A pack the survey could not examine (its index missing, as after a removal, or a `stat`
/// failing) or did not see (added since) is left alone: reclaim never removes what it cannot
/// account for.
pub fn condemn(
    index: &mut BlockIndex,
    live: &SlotSet,
    claimed: &SlotSet,
    survey: &PackSurvey,
) -> Condemned {
    let plans = plan(index, live, claimed, survey);
    let mut planned = ReclaimSummary::default();
    let mut rewrites: HashMap<u32, Vec<LiveBlock>> = HashMap::new();
    for (number, p) in plans.iter().enumerate() {
        match p {
            PackPlan::Remove { reclaims, .. } => planned += *reclaims,
            PackPlan::Rewrite { reclaims, .. } => {
                planned += *reclaims;
                rewrites.insert(number as u32, Vec::new());
            }
            PackPlan::LeftAlone | PackPlan::Kept => {}
        }
    }
    let mut forgotten = 0u64;
    index.forget(
        &mut |slot, location| {
            let reclaimable = plans
                .get(location.pack as usize)
                .is_some_and(|p| !matches!(p, PackPlan::LeftAlone));
            let dead = reclaimable && !live.contains(slot) && !claimed.contains(slot);
            forgotten += u64::from(dead);
            dead
        },
        &mut |hash, slot, location| {
            if let Some(blocks) = rewrites.get_mut(&location.pack) {
                blocks.push(LiveBlock {
                    hash: *hash,
                    slot,
                    offset: location.offset,
                    stored_len: location.stored_len,
                });
            }
        },
    );
    let mut packs = Vec::new();
    for (number, p) in plans.iter().enumerate() {
        match p {
            PackPlan::Remove { id, .. } => packs.push(CondemnedPack {
                id: *id,
                fate: Fate::Remove,
            }),
            PackPlan::Rewrite { id, .. } => {
                let mut live = rewrites.remove(&(number as u32)).unwrap_or_default();
                live.sort_by_key(|b| b.offset);
                packs.push(CondemnedPack {
                    id: *id,
                    fate: Fate::Rewrite { live },
                });
            }
            PackPlan::LeftAlone | PackPlan::Kept => {}
        }
    }
    // Removals first: they free the space that rewrites need (on a nearly full disk too).
    packs.sort_by_key(|p| matches!(p.fate, Fate::Rewrite { .. }));
    Condemned {
        packs,
        forgotten,
        planned,
    }
}

/// The plan without forgetting anything (for `--dry-run`): the same numbers as [`condemn`]
/// and [`sweep`] would reclaim.
pub fn measure(
    index: &BlockIndex,
    live: &SlotSet,
    claimed: &SlotSet,
    survey: &PackSurvey,
) -> ReclaimSummary {
    let mut total = ReclaimSummary::default();
    for p in plan(index, live, claimed, survey) {
        match p {
            PackPlan::Remove { reclaims, .. } | PackPlan::Rewrite { reclaims, .. } => {
                total += reclaims;
            }
            PackPlan::LeftAlone | PackPlan::Kept => {}
        }
    }
    total
}

/// What reclaim does with one pack of the index.
enum PackPlan {
    /// Nothing: inside the grace period, gone (its index removed) or unreadable. Its blocks
    /// are not forgotten.
    LeftAlone,
    /// Its dead blocks are forgotten; its records stay (most of them are live).
    Kept,
    /// No live block is left: removed.
    Remove {
        id: PackId,
        reclaims: ReclaimSummary,
    },
    /// Its dead records are at least half of its record bytes: rewritten.
    Rewrite {
        id: PackId,
        reclaims: ReclaimSummary,
    },
}

/// What the live slots of a pack add up to.
#[derive(Default, Clone, Copy)]
struct LiveTotals {
    blocks: u64,
    stored: u64,
}

/// The packs of an index as reclaim sees their files (sizes, layout, age), by pack number:
/// examined before [`condemn`] takes the index's write lock, so that the lock is held for
/// in-memory work only. A pack's files do not change once it is indexed (only a sweep of the
/// same run removes or rewrites one), and packs added after the survey are left alone.
#[derive(Debug, Default)]
pub struct PackSurvey {
    files: Vec<Option<PackFiles>>,
}

impl PackSurvey {
    /// Leaves alone every pack for which `keep` is true (neither removed nor rewritten by the
    /// sweep of this survey), as if it were within the grace period.
    pub fn leave_alone(&mut self, keep: impl Fn(&PackId) -> bool) {
        for slot in &mut self.files {
            if slot.as_ref().is_some_and(|f| keep(&f.id)) {
                *slot = None;
            }
        }
    }
}

/// Examines the files of every pack `index` holds (the read lock is held only to copy their
/// ids): which are older than `grace` at `now`, and their sizes.
pub fn survey_packs(
    index: &RwLock<BlockIndex>,
    grace: Duration,
    now: SystemTime,
    packs_dir: &Path,
) -> PackSurvey {
    let ids: Vec<PackId> = index
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .packs()
        .to_vec();
    PackSurvey {
        files: ids
            .into_iter()
            .map(|id| PackFiles::examine(id, packs_dir, grace, now))
            .collect(),
    }
}

/// The plan of every pack, by pack number.
fn plan(
    index: &BlockIndex,
    live: &SlotSet,
    claimed: &SlotSet,
    survey: &PackSurvey,
) -> Vec<PackPlan> {
    let packs = index.packs().len();
    let mut totals = vec![LiveTotals::default(); packs];
    for (slot, location) in index.locations().iter().enumerate() {
        let Some(location) = location else { continue };
        let slot = slot as u32;
        if (live.contains(slot) || claimed.contains(slot))
            && let Some(t) = totals.get_mut(location.pack as usize)
        {
            t.blocks += 1;
            t.stored += u64::from(location.stored_len);
        }
    }
    totals
        .into_iter()
        .enumerate()
        .map(|(n, live)| match survey.files.get(n) {
            Some(Some(files)) => files.plan(live),
            // Not older than the grace period, unreadable, or added since the survey.
            _ => PackPlan::LeftAlone,
        })
        .collect()
}

/// A pack's files, as reclaim sees them.
#[derive(Debug)]
struct PackFiles {
    id: PackId,
    pack_len: u64,
    idx_len: u64,
    layout: PackLayout,
}

impl PackFiles {
    /// The pack's sizes and layout if it is older than `grace` and all of it can be read.
    fn examine(id: PackId, dir: &Path, grace: Duration, now: SystemTime) -> Option<Self> {
        let idx = std::fs::metadata(id.idx_path(dir)).ok()?;
        // A modification time in the future (a clock set back) counts as fresh.
        let age = now.duration_since(idx.modified().ok()?).ok()?;
        if age < grace {
            return None;
        }
        let pack_path = id.pack_path(dir);
        let pack_len = std::fs::metadata(&pack_path).ok()?.len();
        let layout = PackLayout::read(&pack_path).ok()?;
        Some(Self {
            id,
            pack_len,
            idx_len: idx.len(),
            layout,
        })
    }

    /// What happens to the pack with `live` blocks left.
    fn plan(&self, live: LiveTotals) -> PackPlan {
        let records = idx_entries(self.idx_len);
        let on_disk = self.pack_len + self.idx_len;
        if live.blocks == 0 {
            return PackPlan::Remove {
                id: self.id,
                reclaims: ReclaimSummary {
                    blocks: records,
                    bytes: on_disk,
                    packs_removed: 1,
                    packs_rewritten: 0,
                },
            };
        }
        let record_bytes = self.pack_len.saturating_sub(self.layout.records_start);
        let live_bytes = live.blocks * self.layout.record_len(0) + live.stored;
        let dead_bytes = record_bytes.saturating_sub(live_bytes);
        if dead_bytes.saturating_mul(2) < record_bytes || dead_bytes == 0 {
            return PackPlan::Kept;
        }
        let rewritten = self.layout.records_start + live_bytes + idx_len(live.blocks);
        PackPlan::Rewrite {
            id: self.id,
            reclaims: ReclaimSummary {
                blocks: records.saturating_sub(live.blocks),
                bytes: on_disk.saturating_sub(rewritten),
                packs_removed: 0,
                packs_rewritten: 1,
            },
        }
    }
}

/// Physical reclaim of what [`condemn`] chose: a pack with no live block left is removed; one
/// whose dead records are at least half its record bytes is rewritten (live records copied,
/// still checked, into a new pack, which is closed (fsync, index) before the index relocates
/// the live slots to it through `relocate`, a closure that takes the write lock, then the old
/// pack is removed). `step` is called after each durable step; `ControlFlow::Break` stops at
/// once, as a crash would (tests; the server's kill -9 test hook), and what was reclaimed so
/// far is returned.
///
/// It first finishes removals an earlier sweep left half done (`.dead` files).
pub fn sweep(
    store: &BackupStore,
    condemned: Condemned,
    relocate: &mut dyn FnMut(ClosedPack, &[MovedBlock]),
    step: &mut dyn FnMut(SweepStep) -> ControlFlow<()>,
) -> Result<ReclaimSummary, BackupStoreError> {
    let dir = store.packs_dir();
    finish_removals(&dir)?;
    let mut done = ReclaimSummary::default();
    if condemned.packs.is_empty() {
        return Ok(done);
    }
    let coding = if condemned
        .packs
        .iter()
        .any(|p| matches!(p.fate, Fate::Rewrite { .. }))
    {
        Some(store.block_coding()?)
    } else {
        None
    };
    for CondemnedPack { id, fate } in condemned.packs {
        let pack_len = file_len(&id.pack_path(&dir))?;
        let idx_len = file_len(&id.idx_path(&dir))?;
        let records = idx_entries(idx_len);
        let freed = match (fate, &coding) {
            (Fate::Remove, _) => ReclaimSummary {
                blocks: records,
                bytes: pack_len + idx_len,
                packs_removed: 1,
                packs_rewritten: 0,
            },
            (Fate::Rewrite { live }, Some(coding)) => {
                let new = rewrite(store, coding, id, &live)?;
                let new_id = new.id;
                let new_len = file_len(&new_id.pack_path(&dir))? + idx_len_of(&new);
                let moved: Vec<MovedBlock> = live.iter().map(|b| (b.hash, b.slot)).collect();
                relocate(new, &moved);
                if step(SweepStep::PackRewritten {
                    old: id,
                    new: new_id,
                })
                .is_break()
                {
                    return Ok(done);
                }
                ReclaimSummary {
                    blocks: records.saturating_sub(live.len() as u64),
                    bytes: (pack_len + idx_len).saturating_sub(new_len),
                    packs_removed: 0,
                    packs_rewritten: 1,
                }
            }
            (Fate::Rewrite { .. }, None) => {
                return Err(BackupStoreError::MissingHashKey {
                    path: store.hash_key_path(),
                });
            }
        };
        retire(&dir, id)?;
        if step(SweepStep::PackRetired { id }).is_break() {
            return Ok(done);
        }
        remove_retired(&dir, id)?;
        // The removals must be durable before the sweep reports the space reclaimed.
        durable::sync_dir(&dir)?;
        done += freed;
        if step(SweepStep::PackRemoved { id }).is_break() {
            return Ok(done);
        }
    }
    Ok(done)
}

/// The bytes of a closed pack's index.
fn idx_len_of(pack: &ClosedPack) -> u64 {
    idx_len(pack.entries.len() as u64)
}

fn file_len(path: &Path) -> Result<u64, BackupStoreError> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| BackupStoreError::io(FsAction::Stat, path, e))
}

/// Copies the live blocks of pack `old` into a new pack, every one checked on the way.
fn rewrite(
    store: &BackupStore,
    coding: &BlockCoding,
    old: PackId,
    live: &[LiveBlock],
) -> Result<ClosedPack, BackupStoreError> {
    let dir = store.packs_dir();
    let path = old.pack_path(&dir);
    let reader = PackReader::open(&path, store.keyring())?;
    let mut writer = PackWriter::create(&dir, store.keyring(), &*RNG)?;
    let copied = live.iter().try_for_each(|b| {
        let block = reader.read(b.offset, b.stored_len, &b.hash)?;
        check_block(coding, &block).map_err(|problem| BackupStoreError::DamagedBlock {
            pack: path.clone(),
            hash: b.hash,
            reason: BlockDamage::Content(problem),
        })?;
        writer.append(&block, &*RNG)
    });
    match copied {
        Ok(()) => writer.close(),
        Err(e) => {
            // Nothing refers to the new pack yet: it goes, and the old one stays as it is.
            writer.abandon()?;
            Err(e)
        }
    }
}

/// Step 1 of a removal: the pack's blocks leave every future index.
fn retire(dir: &Path, id: PackId) -> Result<(), BackupStoreError> {
    let (idx, dead) = (id.idx_path(dir), id.dead_path(dir));
    std::fs::rename(&idx, &dead).map_err(|e| BackupStoreError::io(FsAction::Rename, &idx, e))?;
    // The pack's blocks must be gone from every future index before its file is.
    durable::sync_dir(dir)?;
    Ok(())
}

/// Step 2 of a removal, without the directory fsync (the caller does it once).
fn remove_retired(dir: &Path, id: PackId) -> Result<(), BackupStoreError> {
    for path in [id.pack_path(dir), id.dead_path(dir)] {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(BackupStoreError::io(FsAction::Remove, &path, e)),
        }
    }
    Ok(())
}

/// Finishes every removal a crash (or a failed sweep) left after step 1.
fn finish_removals(dir: &Path) -> Result<(), BackupStoreError> {
    let mut any = false;
    for (name, _) in named_entries(dir)? {
        if let Some(id) = name.strip_suffix(".dead").and_then(PackId::parse) {
            remove_retired(dir, id)?;
            any = true;
        }
    }
    if any {
        // The removals must be durable before the space is reported free or the ids reused.
        durable::sync_dir(dir)?;
    }
    Ok(())
}

impl BackupStore {
    /// The index for the server's long-lived use: finishes interrupted pack removals
    /// (`<id>.dead`), recovers packs a crash left without index (their valid records indexed,
    /// a torn tail truncated), then loads every index. Call it before any writer of the store
    /// runs in this process (the server calls it once, when it first loads the cluster's
    /// index): a pack being written has no index yet either. [`BackupStore::load_index`] stays
    /// read-only.
    pub fn open_index(&self) -> Result<BlockIndex, BackupStoreError> {
        let dir = self.packs_dir();
        finish_removals(&dir)?;
        for (name, _) in named_entries(&dir)? {
            let Some(id) = name.strip_suffix(".pack").and_then(PackId::parse) else {
                continue;
            };
            if id.idx_path(&dir).exists() || id.dead_path(&dir).exists() {
                continue;
            }
            pack::recover(&dir, id, self.keyring())?;
        }
        BlockIndex::load(&dir)
    }

    /// Mark: the slots the file lists of `keep` refer to. `index` is locked for reading one
    /// batch of lookups at a time, so that a running backup is never stalled for the whole
    /// mark. A hash the index does not hold marks nothing (verification reports such a
    /// backup); a backup deleted meanwhile marks nothing; a file list that cannot be read is
    /// an error, and nothing may be reclaimed.
    pub fn mark(
        &self,
        keep: &[BackupId],
        index: &RwLock<BlockIndex>,
    ) -> Result<SlotSet, BackupStoreError> {
        let read = || -> RwLockReadGuard<'_, BlockIndex> {
            index.read().unwrap_or_else(|p| p.into_inner())
        };
        let mut live = SlotSet::with_capacity(read().slot_count());
        for id in keep {
            let mut files = match self.file_list(id) {
                Ok(f) => f,
                // Deleted since the caller listed it: nothing of it needs to stay.
                Err(BackupStoreError::NoSuchBackup { .. }) => continue,
                Err(e) => return Err(e),
            };
            while let Some(item) = files.next_item()? {
                let hashes = match item {
                    FileListItem::Entry(entry) => entry.blocks,
                    FileListItem::Blocks(hashes) => hashes,
                };
                for batch in hashes.chunks(MARK_BATCH) {
                    let idx = read();
                    for hash in batch {
                        if let Some(slot) = idx.slot_of(hash) {
                            live.insert(slot);
                        }
                    }
                }
            }
        }
        Ok(live)
    }
}
