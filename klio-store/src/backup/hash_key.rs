//! The cluster's block-hash key in `block-hash-key`: created once, atomically, never
//! regenerated (a new key would orphan every stored block: no hash would match any more).

use std::io::Read;
use std::path::Path;

use klio_crypto::{BLOCK_HASH_KEY_LEN, BlockHashKey, Keyring, SecureRandom};
use klio_wal::durable;

use super::error::{BackupStoreError, ObjectDamage};
use super::object::{self, ObjectKind, ObjectReader, damaged};

/// Reads the key at `path`; `None` if the cluster has none yet.
pub(crate) fn read(
    path: &Path,
    keyring: Option<&Keyring>,
) -> Result<Option<BlockHashKey>, BackupStoreError> {
    let Some(reader) = ObjectReader::open(path, keyring, ObjectKind::HashKey, "")? else {
        return Ok(None);
    };
    key_of(reader, path).map(Some)
}

/// The key in the hash-key object `bytes` (named `path` in errors): what [`read`] does with
/// the file's bytes, for the fuzz targets.
#[doc(hidden)]
pub fn parse_hash_key(
    bytes: &[u8],
    path: &Path,
    keyring: Option<&Keyring>,
) -> Result<BlockHashKey, BackupStoreError> {
    let reader = ObjectReader::from_reader(bytes, path, keyring, ObjectKind::HashKey, "")?;
    key_of(reader, path)
}

fn key_of(
    mut reader: ObjectReader<'_, impl Read>,
    path: &Path,
) -> Result<BlockHashKey, BackupStoreError> {
    let bytes = reader.read_to_end()?;
    let key: [u8; BLOCK_HASH_KEY_LEN] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| damaged(path, ObjectDamage::Malformed("the key is not 32 bytes")))?;
    Ok(BlockHashKey::from_bytes(key))
}

/// The key at `path`, created if the cluster has none. An existing key that cannot be read is
/// an error, never replaced.
pub(crate) fn read_or_create(
    path: &Path,
    keyring: Option<&Keyring>,
    rng: &dyn SecureRandom,
) -> Result<BlockHashKey, BackupStoreError> {
    if let Some(key) = read(path, keyring)? {
        return Ok(key);
    }
    let key = BlockHashKey::generate(rng).map_err(|source| BackupStoreError::Crypto {
        action: "generate the block-hash key",
        path: path.to_owned(),
        source,
    })?;
    let bytes = object::encode(keyring, ObjectKind::HashKey, "", &key.to_bytes(), rng, path)?;
    // Atomic and durable: a crash leaves no key or the whole key, and the key is on disk
    // before any block is named with it. Only the backup session (one per cluster, under its
    // lease) creates it, so no other writer races this rename.
    durable::replace(path, &bytes)?;
    Ok(key)
}
