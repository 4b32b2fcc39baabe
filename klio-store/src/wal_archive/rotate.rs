//! Key rotation: re-wrapping the data keys of sealed segments, sealed history files and
//! encrypted journals in place.
//!
//! Every encrypted file of the archive starts with a klio-crypto object header whose key slot
//! (bytes 48..124) holds the file's data key (a sealed segment's, or the key of an encrypted
//! journal's frame key block) wrapped by a KEK. Rotation rewrites only those 76 bytes and
//! fdatasyncs the file; the data, the frames and the rest of the header stay as they are.
//!
//! Why in place and not through a copy: the slot lies inside the file's first 512-byte
//! sector, and an overwrite of part of one sector (within an existing, allocated block, with no
//! change of size) is written by the device as a whole sector, so after a crash the file holds
//! either the old slot (still opened by the old key, which must stay in the keyring until
//! [`WalArchiveReader::key_ids_in_use`] no longer names it) or the new one. Even a device that tore
//! the sector could not make a reader accept wrong bytes: the slot is authenticated (AES-GCM
//! with the immutable header as associated data), so a mixed slot fails as `WrongKey` and the
//! file reports an error naming it; its copy in Tier 2 (sealed with the same data key) remains.
//! A copy-and-rename would instead rewrite every segment (16 MiB each) and could not be used for
//! the journal the writer has open, whose file handle must stay valid.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use klio_crypto::{CryptoError, HEADER_LEN, KeyId, Keyring, key_slot_range};
use klio_wal::{FsAction, WalFileName};

use super::journal::JOURNAL_SUFFIX;
use super::sealed::SEALED_SUFFIX;
use super::{RNG, WalArchive, WalArchiveError, WalArchiveReader, dir_listing};

/// What [`WalArchive::rewrap_all`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RewrapSummary {
    /// Encrypted files whose key slot now names the new key.
    pub rewrapped: usize,
    /// Encrypted files that already named it.
    pub already_current: usize,
    /// Plain segments and journals (written without a keyring): they name no key.
    pub plain: usize,
}

/// The encrypted files of the archive, and how many plain segments and journals it holds.
fn encrypted_files(archive: &WalArchiveReader) -> Result<(Vec<PathBuf>, usize), WalArchiveError> {
    let dir = &archive.dir;
    let size = archive.identity.segment_size;
    let mut files = Vec::new();
    let mut plain = 0;
    for (name, path) in dir_listing::named_entries(dir)? {
        let name = name.as_str();
        let is_segment = |base: &str| {
            matches!(
                WalFileName::parse(base, size),
                Ok(WalFileName::Segment { .. })
            )
        };
        if let Some(base) = name.strip_suffix(SEALED_SUFFIX) {
            if matches!(
                WalFileName::parse(base, size),
                Ok(WalFileName::Segment { .. } | WalFileName::History { .. })
            ) {
                files.push(path);
            }
        } else if let Some(base) = name.strip_suffix(JOURNAL_SUFFIX) {
            if is_segment(base) {
                match starts_with_magic(&path)? {
                    Some(true) => files.push(path),
                    Some(false) => plain += 1,
                    None => {}
                }
            }
        } else if is_segment(name) {
            plain += 1;
        }
    }
    files.sort();
    Ok((files, plain))
}

/// Whether the file starts with the sealed-object magic; `None` if it vanished (a journal
/// finished concurrently).
fn starts_with_magic(path: &Path) -> Result<Option<bool>, WalArchiveError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(WalArchiveError::io(FsAction::Open, path, e)),
    };
    let mut magic = [0u8; 8];
    match file.read_exact_at(&mut magic, 0) {
        Ok(()) => Ok(Some(magic == klio_crypto::MAGIC)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(Some(false)),
        Err(e) => Err(WalArchiveError::io(FsAction::Read, path, e)),
    }
}

/// Reads an encrypted file's object header.
fn read_header(file: &File, path: &Path) -> Result<[u8; HEADER_LEN], WalArchiveError> {
    let mut header = [0u8; HEADER_LEN];
    file.read_exact_at(&mut header, 0)
        .map_err(|e| WalArchiveError::io(FsAction::Read, path, e))?;
    Ok(header)
}

fn crypto(action: &'static str, path: &Path) -> impl FnOnce(CryptoError) -> WalArchiveError {
    let path = path.to_owned();
    move |source| WalArchiveError::Crypto {
        action,
        path,
        source,
    }
}

impl WalArchiveReader {
    /// The ids of the keys that encrypted files of the archive (sealed segments, encrypted
    /// journals) are wrapped with. A key may be removed from the keyring once it is not listed
    /// here (and no other copy, such as Tier 2, still needs it).
    pub fn key_ids_in_use(&self) -> Result<BTreeSet<KeyId>, WalArchiveError> {
        let (files, _) = encrypted_files(self)?;
        let mut ids = BTreeSet::new();
        for path in files {
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(WalArchiveError::io(FsAction::Open, &path, e)),
            };
            let header = read_header(&file, &path)?;
            let id =
                klio_crypto::object_key_id(&header).map_err(crypto("read the key id of", &path))?;
            ids.insert(id);
        }
        Ok(ids)
    }
}

impl WalArchive {
    /// Rotates keys: makes `new_primary` the key this handle seals with from now on (the handle
    /// keeps `keyring`, which must hold `new_primary` and every key files are wrapped with now),
    /// then re-wraps the data key of every sealed segment and encrypted journal under it,
    /// rewriting only each file's key slot in place, with an fdatasync per file. In place is
    /// safe: the 76-byte slot lies in the file's first sector, so a crash leaves the old slot
    /// (still opened by the old key) or the new one, and a torn slot could only fail
    /// authentication (an error naming the file), never yield wrong bytes. Idempotent: run it
    /// again after an interruption. Keep the old key until [`WalArchiveReader::key_ids_in_use`] no
    /// longer lists it.
    pub fn rewrap_all(
        &mut self,
        keyring: &Keyring,
        new_primary: &KeyId,
    ) -> Result<RewrapSummary, WalArchiveError> {
        // Segments being finished are sealed under the old key: let them land first, so that
        // the rewrap below sees every file.
        self.finish_completed()?;
        let mut ring = keyring.clone();
        ring.set_primary(new_primary)
            .map_err(crypto("make the new key primary for", &self.reader.dir))?;
        self.reader.keyring = Some(ring);
        let r = self.rewrap_files(keyring, new_primary);
        self.poison_on(r)
    }

    fn rewrap_files(
        &self,
        keyring: &Keyring,
        new_primary: &KeyId,
    ) -> Result<RewrapSummary, WalArchiveError> {
        let (files, plain) = encrypted_files(self)?;
        let mut summary = RewrapSummary {
            plain,
            ..RewrapSummary::default()
        };
        for path in files {
            let file = match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(f) => f,
                // A journal finished (its segment sealed under the new key) meanwhile.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(WalArchiveError::io(FsAction::Open, &path, e)),
            };
            let header = read_header(&file, &path)?;
            let current =
                klio_crypto::object_key_id(&header).map_err(crypto("read the key id of", &path))?;
            if current == *new_primary {
                summary.already_current += 1;
                continue;
            }
            let slot = klio_crypto::rewrap(keyring, &header, new_primary, &*RNG)
                .map_err(crypto("re-wrap the data key of", &path))?;
            file.write_all_at(&slot, key_slot_range().start as u64)
                .map_err(|e| WalArchiveError::io(FsAction::Write, &path, e))?;
            // The old key may be removed once nothing names it: the new slot must be on disk
            // before key_ids_in_use stops reporting the old key. fdatasync suffices (same
            // size, data only).
            file.sync_data()
                .map_err(|e| WalArchiveError::io(FsAction::Fdatasync, &path, e))?;
            summary.rewrapped += 1;
        }
        Ok(summary)
    }
}
