//! The base backups of one PostgreSQL cluster: its block store (pack files of deduplicated
//! blocks) and its catalog of complete backups. Blocking std I/O, no network; the server's
//! backup and catalog sessions drive it.
//!
//! # On-disk layout
//!
//! Under `<data_dir>/clusters/<cluster>/backups/`:
//!
//! - `block-hash-key`: the cluster's [`BlockHashKey`], created atomically on first use and
//!   never regenerated (a new key would orphan every block). Sealed with the keyring on an
//!   encrypted server, else a magic/version header and CRC-32C chunks (the `object` module's
//!   format). An existing key that cannot be read is an error, never replaced.
//! - `block-dictionary`: the cluster's [`BlockDictionary`], a few KiB of samples of its blocks
//!   that later backups compress LZ4 blocks against; created once, when the first backup
//!   with enough full-size blocks is sealed, and never replaced (format in the `dictionary`
//!   module). A protected object like the key.
//! - `packs/<pack-id>.pack`: blocks, as the client compressed them (zstd, LZ4, LZ4 against the
//!   dictionary, or stored), appended as
//!   self-describing records, each CRC-32C-protected (plain server) or AES-256-GCM-sealed under
//!   the pack's frame key, itself sealed at the pack's start (encrypted server). A pack is
//!   closed at about [`PACK_TARGET_BYTES`] or when its session ends (format in the `pack`
//!   module).
//! - `packs/<pack-id>.idx`: the pack's index (hash → offset, length), written when the pack is
//!   closed (format in the `index` module). A pack without one was cut short by a crash (of a
//!   backup session or of a rewrite): [`BackupStore::open_index`] scans its valid records,
//!   truncates a torn tail and writes the index.
//! - `packs/<pack-id>.dead`: the index of a pack being removed by reclaim, renamed so that no
//!   index loaded afterwards holds its blocks; the pack and the `.dead` are removed next, and
//!   [`BackupStore::open_index`] (or the next sweep) finishes a removal a crash interrupted.
//!   A pack with a `.dead` is never recovered.
//! - `catalog/<backup-id>/`: one complete backup: `entry.json` (its
//!   [`klio_proto::klio::BackupInfo`] JSON), `files` (its file list, streamed; format in the
//!   `file_list` module) and `backup_manifest` (PostgreSQL's bytes). Each is a protected
//!   object (sealed with the keyring on an encrypted server, so that nothing of a backup is
//!   plaintext on its disk; CRC-32C-checked chunks on a plain one), bound to its kind and
//!   backup id. `pinned`, present while the backup is pinned: a protected object holding the
//!   time it was pinned (format in the `pin` module); no retention policy removes a pinned
//!   backup and `delete` refuses it.
//! - `staging/<backup-id>/`: a backup being written; `deleted/<backup-id>/`: one being deleted.
//!   Leftovers of both (a crash) are removed by the next backup session of the cluster.
//!
//! # Durability
//!
//! - A pack's header and sealed frame key are fsynced (with the directory) before any block
//!   goes in; its blocks are fsynced before its index is written, and the index is written
//!   atomically and durably ([`klio_wal::durable::replace`]): an index never points at blocks a
//!   crash could lose. Blocks of a pack not yet closed are "held" only by the session writing
//!   it, and are made durable before any file list that refers to them is.
//! - A backup is written in `staging/<id>/`; once its file list, manifest and entry are fsynced
//!   and the staging directory too, the directory is renamed into `catalog/` and `catalog/`
//!   fsynced: a backup appears complete atomically, or not at all.
//! - Deleting renames the directory into `deleted/` (both directories fsynced: the backup is
//!   gone from the catalog for good), then removes it. Blocks stay (retention reclaims them).
//! - Reclaim (the `reclaim` module) forgets a block only if no retained backup refers to it,
//!   no running session claims it and its pack's index is older than the grace period (a pack
//!   a session just closed is never a candidate). Removing a pack renames its index to `.dead`
//!   and fsyncs `packs/` before the pack file is removed: its blocks leave every future index
//!   first. A rewrite's new pack is made durable and indexed like any pack before the index
//!   resolves the live blocks to it, and the old pack is removed only after that: at every
//!   crash point each live block is held by at least one indexed pack (twice at worst,
//!   which the next run reclaims).
//! - Every file is put on disk through [`klio_wal::durable`] or fsynced here, each fsync with
//!   the reason it is needed.

mod block_check;
mod catalog;
mod dictionary;
mod error;
mod file_list;
mod hash_key;
mod id;
mod index;
mod object;
mod pack;
mod pin;
mod reclaim;
mod slot_set;
mod verify;
mod wal_range;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_reclaim;

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use klio_crypto::{BlockHashKey, Keyring, SystemRandom};
use klio_proto::klio::{Block, BlockDictionary, BlockHash, DictionarySampler};
use klio_wal::{FsAction, durable};

pub use block_check::{BlockCoding, MAX_BLOCK_LEN, check_block};

/// The cluster's block hash key, in the store's directory.
pub const HASH_KEY_FILE: &str = "block-hash-key";
/// The cluster's block dictionary, in the store's directory.
pub const DICTIONARY_FILE: &str = "block-dictionary";
pub use catalog::{ManifestReader, SealedBackup, StagedBackup};
#[doc(hidden)]
pub use dictionary::parse_dictionary;
pub use error::{BackupStoreError, BlockDamage, BlockProblem, FileListProblem, ObjectDamage};
pub use file_list::{FileListItem, FileListReader, FileListTotals, is_safe_path};
#[doc(hidden)]
pub use hash_key::parse_hash_key;
pub use id::{BackupId, MAX_BACKUP_ID_LEN};
pub use index::{BlockIndex, BlockLocation};
#[doc(hidden)]
pub use index::{IndexEntry, encode_idx, parse_idx, read_idx};
#[doc(hidden)]
pub use object::{ObjectKind, encode as encode_object, read_object};
pub use pack::{ClosedPack, PACK_TARGET_BYTES, PackId};
#[doc(hidden)]
pub use pack::{PackScan, read_pack_block, scan_pack};
pub use reclaim::{
    Condemned, MovedBlock, PackSurvey, ReclaimSummary, SweepStep, condemn, measure, survey_packs,
    sweep,
};
pub use slot_set::SlotSet;
pub use verify::{VerifyOutcome, VerifyProgress};
pub use wal_range::{WalCoverage, wal_coverage, wal_coverage_in};

use pack::{PackReader, PackWriter};

static RNG: LazyLock<SystemRandom> = LazyLock::new(SystemRandom::new);

/// The backups of one cluster, in `<data_dir>/clusters/<cluster>/backups/` (see the
/// [module documentation](self)). Creating a handle touches nothing on disk.
#[derive(Clone, Debug)]
pub struct BackupStore {
    dir: PathBuf,
    keyring: Option<Keyring>,
}

impl BackupStore {
    /// The store in `dir`, sealing with `keyring` (`None`: a plain server).
    pub fn new(dir: &Path, keyring: Option<Keyring>) -> Self {
        Self {
            dir: dir.to_owned(),
            keyring,
        }
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory of pack files.
    pub fn packs_dir(&self) -> PathBuf {
        self.dir.join("packs")
    }

    fn catalog_dir(&self) -> PathBuf {
        self.dir.join("catalog")
    }

    fn staging_dir(&self) -> PathBuf {
        self.dir.join("staging")
    }

    fn deleted_dir(&self) -> PathBuf {
        self.dir.join("deleted")
    }

    /// The files, relative to the store's directory (with `/` separators), that serving
    /// backup `id` reads besides its blocks: the hash key, then the backup's entry, file list
    /// and manifest. The pin marker ([`Self::pin_file`]) is optional.
    pub fn backup_files(id: &BackupId) -> [String; 4] {
        let dir = format!("catalog/{id}");
        [
            HASH_KEY_FILE.to_owned(),
            format!("{dir}/{}", catalog::ENTRY),
            format!("{dir}/{}", catalog::FILES),
            format!("{dir}/{}", catalog::MANIFEST),
        ]
    }

    /// The backup a store file (relative, `/` separators) is the catalog entry of:
    /// `catalog/<id>/entry.json` names `id`.
    pub fn entry_file_of(relative: &str) -> Option<BackupId> {
        let id = relative
            .strip_prefix("catalog/")?
            .strip_suffix(catalog::ENTRY)?
            .strip_suffix('/')?;
        BackupId::parse(id).ok()
    }

    /// The pin marker of backup `id`, relative to the store's directory.
    pub fn pin_file(id: &BackupId) -> String {
        format!("catalog/{id}/{}", pin::PIN)
    }

    fn hash_key_path(&self) -> PathBuf {
        self.dir.join(HASH_KEY_FILE)
    }

    fn dictionary_path(&self) -> PathBuf {
        self.dir.join(DICTIONARY_FILE)
    }

    pub(crate) fn keyring(&self) -> Option<&Keyring> {
        self.keyring.as_ref()
    }

    /// Gets the store ready for a backup session (the one writer of the cluster's store, under
    /// the server's backup lease): creates its directories, removes leftover staging and
    /// deleted directories, and reads (or creates) the block-hash key; returns it with the
    /// cluster's dictionary, if it has one.
    ///
    /// It does not touch `packs/`: packs a crash left without index are recovered by
    /// [`BackupStore::open_index`] when the index is loaded, never while a sweep may be
    /// writing a rewritten pack that has no index yet.
    pub fn prepare_for_backup(&self) -> Result<BlockCoding, BackupStoreError> {
        ensure_dir(&self.dir)?;
        for dir in [
            self.packs_dir(),
            self.catalog_dir(),
            self.staging_dir(),
            self.deleted_dir(),
        ] {
            ensure_dir(&dir)?;
        }
        for dir in [self.staging_dir(), self.deleted_dir()] {
            clear_dir(&dir)?;
        }
        let hash_key =
            hash_key::read_or_create(&self.hash_key_path(), self.keyring.as_ref(), &*RNG)?;
        Ok(BlockCoding {
            hash_key,
            dictionary: self.read_dictionary()?,
        })
    }

    /// The cluster's block-hash key, if it has one (read-only).
    pub fn read_hash_key(&self) -> Result<Option<BlockHashKey>, BackupStoreError> {
        hash_key::read(&self.hash_key_path(), self.keyring.as_ref())
    }

    /// The cluster's block-hash key, for reading its backups: an error if it has none.
    pub fn hash_key(&self) -> Result<BlockHashKey, BackupStoreError> {
        self.read_hash_key()?
            .ok_or_else(|| BackupStoreError::MissingHashKey {
                path: self.hash_key_path(),
            })
    }

    /// The cluster's block dictionary, if it has one (read-only).
    pub fn read_dictionary(&self) -> Result<Option<BlockDictionary>, BackupStoreError> {
        dictionary::read(&self.dictionary_path(), self.keyring.as_ref())
    }

    /// What checking and decompressing the cluster's blocks needs: its block-hash key (an
    /// error if it has none) and its dictionary.
    pub fn block_coding(&self) -> Result<BlockCoding, BackupStoreError> {
        Ok(BlockCoding {
            hash_key: self.hash_key()?,
            dictionary: self.read_dictionary()?,
        })
    }

    /// Makes `dictionary` the cluster's, unless it has one already (it is never replaced);
    /// the cluster's dictionary either way. Only the backup session calls this, under the
    /// cluster's lease.
    pub fn keep_dictionary(
        &self,
        dictionary: BlockDictionary,
    ) -> Result<BlockDictionary, BackupStoreError> {
        dictionary::create_once(
            &self.dictionary_path(),
            self.keyring.as_ref(),
            &*RNG,
            dictionary,
        )
    }

    /// The index of every durable block (read-only).
    pub fn load_index(&self) -> Result<BlockIndex, BackupStoreError> {
        BlockIndex::load(&self.packs_dir())
    }

    /// A writer of new blocks, checking each against its hash (and decompressing it) with
    /// `coding`. While the cluster has no dictionary, the writer samples the blocks it
    /// checks for one ([`BlockWriter::sampled_dictionary`]).
    pub fn block_writer(&self, coding: BlockCoding) -> BlockWriter {
        let sampler = coding.dictionary.is_none().then(DictionarySampler::new);
        BlockWriter {
            packs: self.packs_dir(),
            keyring: self.keyring.clone(),
            coding,
            sampler,
            pack: None,
            new_stored: 0,
        }
    }

    /// A reader of stored blocks (it keeps packs open across reads).
    pub fn block_reader(&self) -> BlockReader<'_> {
        BlockReader {
            store: self,
            open: Vec::new(),
        }
    }
}

/// What [`BlockWriter::put`] did.
#[derive(Debug)]
#[must_use]
pub enum Put {
    /// The block was held already: nothing stored.
    Held,
    /// Stored in the open pack.
    Stored,
    /// Stored, and the pack reached its size and was closed: add it to the block index.
    StoredAndClosed(ClosedPack),
}

/// Stores a backup session's new blocks into packs.
#[derive(Debug)]
pub struct BlockWriter {
    packs: PathBuf,
    keyring: Option<Keyring>,
    coding: BlockCoding,
    /// Samples of the blocks stored, while the cluster has no dictionary.
    sampler: Option<DictionarySampler>,
    pack: Option<PackWriter>,
    new_stored: u64,
}

impl BlockWriter {
    /// Whether the block is held: durable in `index` or in the pack this writer is filling.
    pub fn holds(&self, index: &BlockIndex, hash: &BlockHash) -> bool {
        index.contains(hash) || self.pack.as_ref().is_some_and(|p| p.contains(hash))
    }

    /// Stores `block` unless held, after checking it against its hash: a block whose bytes are
    /// not what its hash names is refused ([`BackupStoreError::RefusedBlock`]). A held block is
    /// ignored unchecked: nothing of it is stored.
    pub fn put(&mut self, index: &BlockIndex, block: &Block) -> Result<Put, BackupStoreError> {
        if self.holds(index, &block.hash) {
            return Ok(Put::Held);
        }
        let plain =
            check_block(&self.coding, block).map_err(|problem| BackupStoreError::RefusedBlock {
                hash: block.hash,
                problem,
            })?;
        if let Some(sampler) = &mut self.sampler {
            sampler.offer(&block.hash, &plain);
        }
        let pack = match &mut self.pack {
            Some(p) => p,
            None => self.pack.insert(PackWriter::create(
                &self.packs,
                self.keyring.as_ref(),
                &*RNG,
            )?),
        };
        pack.append(block, &*RNG)?;
        self.new_stored += block.data.len() as u64;
        if pack.len() >= PACK_TARGET_BYTES
            && let Some(full) = self.pack.take()
        {
            return Ok(Put::StoredAndClosed(full.close()?));
        }
        Ok(Put::Stored)
    }

    /// Closes the open pack (fsync, index): its blocks become durable; add the result to the
    /// block index. `None` if no pack is open.
    pub fn close(&mut self) -> Result<Option<ClosedPack>, BackupStoreError> {
        self.pack.take().map(PackWriter::close).transpose()
    }

    /// Stored bytes of the blocks this writer stored.
    pub fn new_stored_bytes(&self) -> u64 {
        self.new_stored
    }

    /// A dictionary of samples of the blocks this writer stored, for a cluster that has none
    /// ([`BackupStore::keep_dictionary`]); `None` when the cluster has one, or too few
    /// full-size blocks were stored.
    pub fn sampled_dictionary(&mut self) -> Option<BlockDictionary> {
        self.sampler.take().and_then(DictionarySampler::finish)
    }
}

/// Reads blocks through their checks, keeping the packs it opened.
#[derive(Debug)]
pub struct BlockReader<'s> {
    store: &'s BackupStore,
    /// Packs opened, by their number in the index (a few: blocks of a file are mostly in
    /// the same packs).
    open: Vec<(u32, PackReader)>,
}

/// Packs a [`BlockReader`] keeps open at most.
const OPEN_PACKS: usize = 16;

impl BlockReader<'_> {
    /// The block `hash`, checked (CRC-32C or AES-GCM, and its record header against the index).
    pub fn read(
        &mut self,
        index: &BlockIndex,
        hash: &BlockHash,
    ) -> Result<Block, BackupStoreError> {
        let missing = || BackupStoreError::MissingBlock {
            packs: self.store.packs_dir(),
            hash: *hash,
        };
        let Some(location) = index.get(hash) else {
            return Err(missing());
        };
        let Some(id) = index.pack_of(&location) else {
            return Err(missing());
        };
        let position = match self.open.iter().position(|(n, _)| *n == location.pack) {
            Some(i) => i,
            None => {
                let path = id.pack_path(&self.store.packs_dir());
                if !path.exists() {
                    return Err(missing());
                }
                let reader = PackReader::open(&path, self.store.keyring())?;
                if self.open.len() >= OPEN_PACKS {
                    self.open.remove(0);
                }
                self.open.push((location.pack, reader));
                self.open.len() - 1
            }
        };
        let (_, reader) = &self.open[position];
        reader.read(location.offset, location.stored_len, hash)
    }
}

impl BlockReader<'_> {
    /// The pack file the index names for `hash` (for errors about it).
    pub fn pack_path(&self, index: &BlockIndex, hash: &BlockHash) -> PathBuf {
        let packs = self.store.packs_dir();
        match index.get(hash).and_then(|l| index.pack_of(&l)) {
            Some(id) => id.pack_path(&packs),
            None => packs,
        }
    }
}

/// Creates `dir` if missing, durably.
fn ensure_dir(dir: &Path) -> Result<(), BackupStoreError> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| BackupStoreError::io(FsAction::CreateDirectory, dir, e))?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        // The new directory's entry lives in its parent: without this fsync a crash could lose
        // it after files in it were reported durable.
        durable::sync_dir(parent)?;
    }
    Ok(())
}

/// Removes everything in `dir` (leftovers of a crash), durably.
fn clear_dir(dir: &Path) -> Result<(), BackupStoreError> {
    let entries = named_entries(dir)?;
    if entries.is_empty() {
        return Ok(());
    }
    for (_, path) in entries {
        remove_tree(&path)?;
    }
    // The removals must be durable before a new backup reuses the directory.
    durable::sync_dir(dir)?;
    Ok(())
}

fn remove_tree(path: &Path) -> Result<(), BackupStoreError> {
    let result = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(BackupStoreError::io(FsAction::Remove, path, e)),
    }
}

/// Every entry of `dir` whose name is UTF-8, with its path (empty if `dir` does not exist).
fn named_entries(dir: &Path) -> Result<Vec<(String, PathBuf)>, BackupStoreError> {
    let read = |e| BackupStoreError::io(FsAction::ReadDirectory, dir, e);
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(read(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(read)?;
        if let Ok(name) = entry.file_name().into_string() {
            out.push((name, entry.path()));
        }
    }
    Ok(out)
}
