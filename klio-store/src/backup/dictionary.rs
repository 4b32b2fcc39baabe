//! The cluster's block dictionary in `block-dictionary`: created once, from samples of the
//! first backup big enough to have them, and never replaced (blocks compressed against it
//! decompress only with it, so a new one would orphan them). Neither reclaim nor retention
//! has to know which blocks use it: it lives as long as the cluster's store.
//!
//! # Format
//!
//! An object of kind `Dictionary` (sealed with the keyring when the server encrypts: its
//! bytes are samples of the cluster's data) whose plaintext is the dictionary's bytes, 1 to
//! [`klio_proto::klio::MAX_DICTIONARY_LEN`].

use std::path::Path;

use bytes::Bytes;
use klio_crypto::{Keyring, SecureRandom};
use klio_proto::klio::BlockDictionary;
use klio_wal::durable;

use super::error::{BackupStoreError, ObjectDamage};
use super::object::{self, ObjectKind, damaged, read_cluster_object};

/// Reads the dictionary at `path`; `None` if the cluster has none yet.
pub(crate) fn read(
    path: &Path,
    keyring: Option<&Keyring>,
) -> Result<Option<BlockDictionary>, BackupStoreError> {
    read_cluster_object(path, keyring, ObjectKind::Dictionary)?
        .map(|bytes| dictionary_of(bytes, path))
        .transpose()
}

/// The dictionary in the dictionary object `bytes` (named `path` in errors): what [`read`]
/// does with the file's bytes, for the fuzz targets.
#[doc(hidden)]
pub fn parse_dictionary(
    bytes: &[u8],
    path: &Path,
    keyring: Option<&Keyring>,
) -> Result<BlockDictionary, BackupStoreError> {
    let plain = object::read_object(bytes, path, keyring, ObjectKind::Dictionary, "")?;
    dictionary_of(plain, path)
}

/// The dictionary in a dictionary object's plaintext `bytes`.
fn dictionary_of(bytes: Vec<u8>, path: &Path) -> Result<BlockDictionary, BackupStoreError> {
    BlockDictionary::new(Bytes::from(bytes)).map_err(|_| {
        damaged(
            path,
            ObjectDamage::Malformed("the dictionary is empty or longer than 64 KiB"),
        )
    })
}

/// Writes `dictionary` at `path` unless the cluster has one already; the cluster's
/// dictionary either way. An existing dictionary that cannot be read is an error, never
/// replaced.
pub(crate) fn create_once(
    path: &Path,
    keyring: Option<&Keyring>,
    rng: &dyn SecureRandom,
    dictionary: BlockDictionary,
) -> Result<BlockDictionary, BackupStoreError> {
    if let Some(existing) = read(path, keyring)? {
        return Ok(existing);
    }
    let bytes = object::encode(
        keyring,
        ObjectKind::Dictionary,
        "",
        dictionary.as_bytes(),
        rng,
        path,
    )?;
    // Atomic and durable: a crash leaves no dictionary or the whole one, and it is on disk
    // before any client is handed it to compress with. Only the backup session (one per
    // cluster, under its lease) creates it, so no other writer races this rename.
    durable::replace(path, &bytes)?;
    Ok(dictionary)
}
