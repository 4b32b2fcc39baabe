//! The catalog: backups being written (`staging/`), complete ones (`catalog/`), listing,
//! reading and deleting them. Pins are in the `pin` module.

use std::path::{Path, PathBuf};

use klio_crypto::Keyring;
use klio_proto::klio::{BackupInfo, BlockHash, FileEntry};
use klio_wal::{FsAction, durable};

use super::error::{BackupStoreError, ObjectDamage};
use super::file_list::{FileListItem, FileListReader, FileListTotals, FileListWriter};
use super::id::BackupId;
use super::index::BlockIndex;
use super::object::{self, ObjectFile, ObjectKind, ObjectReader, damaged};
use super::{BackupStore, RNG, ensure_dir, named_entries, remove_tree};

pub(crate) const ENTRY: &str = "entry.json";
pub(crate) const FILES: &str = "files";
pub(crate) const MANIFEST: &str = "backup_manifest";

/// A backup being written in `staging/<id>/`: its file list and manifest, streamed.
/// Dropped without [`StagedBackup::seal`], it removes its directory.
#[derive(Debug)]
pub struct StagedBackup {
    id: BackupId,
    dir: StagingDir,
    catalog: PathBuf,
    keyring: Option<Keyring>,
    files: FileListWriter,
    manifest: ObjectFile,
}

/// A staging directory, removed when dropped unless it was published.
#[derive(Debug)]
struct StagingDir {
    path: PathBuf,
    armed: bool,
}

impl StagingDir {
    /// Removes it now, reporting failures.
    fn remove(mut self) -> Result<(), BackupStoreError> {
        self.armed = false;
        remove_staging(&self.path)
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if self.armed {
            // Best effort: a leftover is removed by the next backup session anyway.
            let _ = remove_staging(&self.path);
        }
    }
}

impl BackupStore {
    /// Starts writing backup `id` in `staging/<id>/` (call [`BackupStore::prepare_for_backup`]
    /// first).
    pub fn stage(&self, id: &BackupId) -> Result<StagedBackup, BackupStoreError> {
        let dir = self.staging_dir().join(id.as_str());
        if self.catalog_dir().join(id.as_str()).exists() {
            return Err(BackupStoreError::BackupExists { id: id.to_string() });
        }
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(BackupStoreError::BackupExists { id: id.to_string() });
            }
            Err(e) => return Err(BackupStoreError::io(FsAction::CreateDirectory, &dir, e)),
        }
        let dir = StagingDir {
            path: dir,
            armed: true,
        };
        let ring = self.keyring.as_ref();
        let files = FileListWriter::create(&dir.path.join(FILES), ring, id.as_str(), &*RNG)?;
        let manifest = ObjectFile::create(
            &dir.path.join(MANIFEST),
            ring,
            ObjectKind::Manifest,
            id.as_str(),
            &*RNG,
        )?;
        Ok(StagedBackup {
            id: id.clone(),
            dir,
            catalog: self.catalog_dir(),
            keyring: self.keyring.clone(),
            files,
            manifest,
        })
    }

    /// Every complete backup's entry, in [`BackupInfo::order_key`] order (end position, then
    /// completion time; never by id).
    pub fn list(&self) -> Result<Vec<BackupInfo>, BackupStoreError> {
        let mut out = Vec::new();
        for (name, _) in named_entries(&self.catalog_dir())? {
            let Ok(id) = BackupId::parse(&name) else {
                continue;
            };
            out.push(self.entry(&id)?);
        }
        out.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        Ok(out)
    }

    /// The entry of backup `id`, with [`BackupInfo::pinned`] from its pin marker (the `pin`
    /// module).
    pub fn entry(&self, id: &BackupId) -> Result<BackupInfo, BackupStoreError> {
        let mut info = self.stored_entry(id)?;
        info.pinned = self.pinned_at(id)?.is_some();
        Ok(info)
    }

    /// The directory of backup `id` in the catalog.
    pub(crate) fn backup_dir(&self, id: &BackupId) -> PathBuf {
        self.catalog_dir().join(id.as_str())
    }

    /// The entry of backup `id` as stored in `entry.json` (its `pinned` is not the pin).
    pub(crate) fn stored_entry(&self, id: &BackupId) -> Result<BackupInfo, BackupStoreError> {
        let path = self.backup_dir(id).join(ENTRY);
        let Some(mut reader) =
            ObjectReader::open(&path, self.keyring.as_ref(), ObjectKind::Entry, id.as_str())?
        else {
            return Err(BackupStoreError::NoSuchBackup { id: id.to_string() });
        };
        let json = reader.read_to_end()?;
        let info = BackupInfo::from_json(&json).map_err(|source| BackupStoreError::BadEntry {
            path: path.clone(),
            source,
        })?;
        if info.id != id.as_str() {
            return Err(damaged(&path, ObjectDamage::OtherObject));
        }
        Ok(info)
    }

    /// The file list of backup `id`, streamed.
    pub fn file_list(&self, id: &BackupId) -> Result<FileListReader<'_>, BackupStoreError> {
        let dir = self.catalog_dir().join(id.as_str());
        if !dir.is_dir() {
            return Err(BackupStoreError::NoSuchBackup { id: id.to_string() });
        }
        FileListReader::open(&dir.join(FILES), self.keyring.as_ref(), id.as_str())
    }

    /// PostgreSQL's `backup_manifest` of backup `id`, streamed.
    pub fn manifest(&self, id: &BackupId) -> Result<ManifestReader<'_>, BackupStoreError> {
        let path = self.catalog_dir().join(id.as_str()).join(MANIFEST);
        let object = ObjectReader::open(
            &path,
            self.keyring.as_ref(),
            ObjectKind::Manifest,
            id.as_str(),
        )?
        .ok_or_else(|| BackupStoreError::NoSuchBackup { id: id.to_string() })?;
        Ok(ManifestReader { object })
    }

    /// Removes backup `id` from the catalog (its blocks stay, for retention); returns its
    /// entry. A pinned backup is refused ([`BackupStoreError::Pinned`]), and so is one whose
    /// pin marker is damaged.
    pub fn delete(&self, id: &BackupId) -> Result<BackupInfo, BackupStoreError> {
        let info = self.entry(id)?;
        if info.pinned {
            return Err(BackupStoreError::Pinned { id: id.to_string() });
        }
        let from = self.catalog_dir().join(id.as_str());
        let deleted = self.deleted_dir();
        ensure_dir(&deleted)?;
        let to = deleted.join(id.as_str());
        remove_tree(&to)?;
        // Out of the catalog in one atomic step: listed whole, or not at all.
        match std::fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BackupStoreError::NoSuchBackup { id: id.to_string() });
            }
            Err(e) => return Err(BackupStoreError::io(FsAction::Rename, &to, e)),
        }
        // The backup must be gone from the catalog for good before the deletion is reported.
        durable::sync_dir(&self.catalog_dir())?;
        // Its new name must be durable too, so that a crash leaves it where the next backup
        // session cleans it up, never half removed inside the catalog.
        durable::sync_dir(&deleted)?;
        remove_tree(&to)?;
        // Not needed for correctness (a leftover is removed later), but frees the space for good.
        durable::sync_dir(&deleted)?;
        Ok(info)
    }

    /// The stored bytes of the distinct blocks a file list refers to.
    pub(crate) fn referenced_stored_bytes(
        reader: &mut FileListReader<'_>,
        index: &BlockIndex,
    ) -> Result<u64, BackupStoreError> {
        // One bit per block of the index, not a set of hashes: 2 MiB for 16 million blocks.
        let mut seen = vec![0u64; (index.slot_count() as usize).div_ceil(64)];
        let mut total = 0;
        let mut count = |hashes: &[BlockHash]| {
            for h in hashes {
                if let Some((n, location)) = index.slot(h) {
                    let (word, bit) = (n / 64, 1u64 << (n % 64));
                    if seen[word] & bit == 0 {
                        seen[word] |= bit;
                        total += u64::from(location.stored_len);
                    }
                }
            }
        };
        while let Some(item) = reader.next_item()? {
            match item {
                FileListItem::Entry(e) => count(&e.blocks),
                FileListItem::Blocks(b) => count(&b),
            }
        }
        Ok(total)
    }
}

impl StagedBackup {
    /// The backup's id.
    pub fn id(&self) -> &BackupId {
        &self.id
    }

    /// Adds a file entry (its path checked) and its first blocks.
    pub fn add_entry(&mut self, entry: &FileEntry) -> Result<(), BackupStoreError> {
        self.files.add_entry(entry)
    }

    /// Adds more blocks of the last entry.
    pub fn add_blocks(&mut self, blocks: &[BlockHash]) -> Result<(), BackupStoreError> {
        self.files.add_blocks(blocks)
    }

    /// Appends the next bytes of `backup_manifest`.
    pub fn add_manifest(&mut self, data: &[u8]) -> Result<(), BackupStoreError> {
        self.manifest.write(data)
    }

    /// Makes the file list and manifest durable.
    pub fn seal(self) -> Result<SealedBackup, BackupStoreError> {
        let Self {
            id,
            dir,
            catalog,
            keyring,
            files,
            manifest,
        } = self;
        let totals = files.finish()?;
        manifest.finish()?;
        Ok(SealedBackup {
            id,
            dir,
            catalog,
            keyring,
            totals,
        })
    }

    /// Gives the backup up: removes its staging directory.
    pub fn abandon(self) -> Result<(), BackupStoreError> {
        let Self { dir, .. } = self;
        dir.remove()
    }
}

/// A backup whose file list and manifest are durable in `staging/<id>/`, waiting for its WAL
/// before [`SealedBackup::publish`] makes it appear in the catalog. Dropped unpublished, it
/// removes its directory.
#[derive(Debug)]
pub struct SealedBackup {
    id: BackupId,
    dir: StagingDir,
    catalog: PathBuf,
    keyring: Option<Keyring>,
    totals: FileListTotals,
}

impl SealedBackup {
    /// What its file list counts.
    pub fn totals(&self) -> FileListTotals {
        self.totals
    }

    /// The backup's id.
    pub fn id(&self) -> &BackupId {
        &self.id
    }

    /// The stored bytes of the distinct blocks it refers to (reads its file list back).
    pub fn referenced_stored_bytes(&self, index: &BlockIndex) -> Result<u64, BackupStoreError> {
        let mut reader = FileListReader::open(
            &self.dir.path.join(FILES),
            self.keyring.as_ref(),
            self.id.as_str(),
        )?;
        BackupStore::referenced_stored_bytes(&mut reader, index)
    }

    /// Writes its entry and moves it into the catalog, atomically and durably.
    pub fn publish(self, info: &BackupInfo) -> Result<(), BackupStoreError> {
        let Self {
            id,
            mut dir,
            catalog,
            keyring,
            ..
        } = self;
        let path = dir.path.join(ENTRY);
        let bytes = object::encode(
            keyring.as_ref(),
            ObjectKind::Entry,
            id.as_str(),
            &info.to_json(),
            &*RNG,
            &path,
        )?;
        durable::write_new(&path, &bytes, 0o600)?;
        // The names of its files must be durable before the backup can appear complete.
        durable::sync_dir(&dir.path)?;
        let to = catalog.join(id.as_str());
        // The one step that makes the backup appear: a whole directory at once, atomically.
        std::fs::rename(&dir.path, &to)
            .map_err(|e| BackupStoreError::io(FsAction::Rename, &to, e))?;
        dir.armed = false;
        // The backup is complete only once its catalog name is durable.
        durable::sync_dir(&catalog)?;
        if let Some(staging) = dir.path.parent() {
            // Its old name must not come back after a crash as a leftover to clean.
            durable::sync_dir(staging)?;
        }
        Ok(())
    }

    /// Gives the backup up: removes its staging directory.
    pub fn abandon(self) -> Result<(), BackupStoreError> {
        let Self { dir, .. } = self;
        dir.remove()
    }
}

fn remove_staging(dir: &Path) -> Result<(), BackupStoreError> {
    remove_tree(dir)?;
    if let Some(parent) = dir.parent() {
        // Its removal must be durable, or a crash brings back a leftover the next session
        // must clean.
        durable::sync_dir(parent)?;
    }
    Ok(())
}

/// Reads `backup_manifest`, streamed and checked.
#[derive(Debug)]
pub struct ManifestReader<'k> {
    object: ObjectReader<'k>,
}

impl ManifestReader<'_> {
    /// The next bytes (at most `max`); `None` once the manifest was read whole and checked.
    pub fn next_chunk(&mut self, max: usize) -> Result<Option<Vec<u8>>, BackupStoreError> {
        self.object.read_some(max)
    }
}
