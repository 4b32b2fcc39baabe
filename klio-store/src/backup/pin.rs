//! Pins: a pinned backup is never removed, by a retention policy or by `delete`.
//!
//! # On-disk layout
//!
//! `catalog/<backup-id>/pinned`, present while the backup is pinned: a protected object (the
//! `object` module's format, [`ObjectKind::Pin`], bound to the backup id, so a marker copied
//! into another backup's directory is refused) holding the RFC 3339 UTC time it was pinned.
//! The backup's `entry.json` never changes: [`BackupStore::entry`] and [`BackupStore::list`]
//! fill [`BackupInfo::pinned`] from the marker. A marker that fails its checks is an error
//! ([`BackupStoreError::DamagedPin`], its cause naming the file), never read as "unpinned": a
//! backup someone pinned must not become removable because a file was damaged. Pinning again
//! writes a new marker over it; unpinning removes it.
//!
//! # Durability
//!
//! Pinning writes the marker atomically and durably ([`klio_wal::durable::replace`]: temporary
//! file, fsync, rename, directory fsync); unpinning removes it and fsyncs the backup's
//! directory. Either is durable before [`BackupStore::set_pinned`] returns.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use klio_proto::klio::BackupInfo;
use klio_wal::{FsAction, durable};

use super::error::{BackupStoreError, ObjectDamage};
use super::id::BackupId;
use super::object::{self, ObjectKind, ObjectReader, damaged};
use super::{BackupStore, RNG};

/// The marker's file name in the backup's catalog directory.
pub(crate) const PIN: &str = "pinned";

impl BackupStore {
    /// Pins (`true`) or unpins backup `id`; its entry afterwards. Pinning a pinned backup keeps
    /// its marker (and the time it was first pinned); pinning again replaces a damaged one.
    /// [`BackupStoreError::NoSuchBackup`] if it is not in the catalog.
    pub fn set_pinned(&self, id: &BackupId, pinned: bool) -> Result<BackupInfo, BackupStoreError> {
        // The backup must exist: a marker never goes into a directory of its own.
        self.stored_entry(id)?;
        let path = self.pin_path(id);
        if pinned {
            let already = match self.pinned_at(id) {
                Ok(at) => at.is_some(),
                // Pinning again is how an operator repairs a marker that fails its checks.
                Err(BackupStoreError::DamagedPin { .. }) => false,
                Err(e) => return Err(e),
            };
            if !already {
                let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
                let bytes = object::encode(
                    self.keyring(),
                    ObjectKind::Pin,
                    id.as_str(),
                    now.as_bytes(),
                    &*RNG,
                    &path,
                )?;
                // Atomic and durable: a crash leaves the backup pinned or not, never a torn
                // marker, and the pin holds once this returns.
                durable::replace(&path, &bytes)?;
            }
        } else {
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    // The unpin must survive a crash before it is reported.
                    durable::sync_dir(&self.backup_dir(id))?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(BackupStoreError::io(FsAction::Remove, &path, e)),
            }
        }
        self.entry(id)
    }

    /// When backup `id` was pinned (RFC 3339), `None` if it is not pinned. A marker that fails
    /// its checks is [`BackupStoreError::DamagedPin`], its cause naming the file.
    pub(crate) fn pinned_at(&self, id: &BackupId) -> Result<Option<String>, BackupStoreError> {
        let path = self.pin_path(id);
        let read = || -> Result<Option<String>, BackupStoreError> {
            let Some(mut reader) =
                ObjectReader::open(&path, self.keyring(), ObjectKind::Pin, id.as_str())?
            else {
                return Ok(None);
            };
            let bytes = reader.read_to_end()?;
            parse_pin_time(&bytes, &path).map(Some)
        };
        read().map_err(|e| match e {
            BackupStoreError::DamagedFile { .. } | BackupStoreError::Crypto { .. } => {
                BackupStoreError::DamagedPin {
                    id: id.to_string(),
                    source: Box::new(e),
                }
            }
            other => other,
        })
    }

    fn pin_path(&self, id: &BackupId) -> PathBuf {
        self.backup_dir(id).join(PIN)
    }
}

/// The pin time a marker holds, checked to be an RFC 3339 time.
fn parse_pin_time(bytes: &[u8], path: &Path) -> Result<String, BackupStoreError> {
    let not_a_time = || damaged(path, ObjectDamage::Malformed("not an RFC 3339 pin time"));
    let text = std::str::from_utf8(bytes).map_err(|_| not_a_time())?;
    humantime::parse_rfc3339(text).map_err(|_| not_a_time())?;
    Ok(text.to_owned())
}
