//! The cluster's block-hash key in `block-hash-key`: created once, atomically, never
//! regenerated (a new key would orphan every stored block: no hash would match any more).
//!
//! # Format
//!
//! An object of kind `HashKey` (sealed with the keyring when the server encrypts) whose
//! plaintext is:
//!
//! | bytes | what |
//! |---|---|
//! | 32 | the key |
//! | 1 | its algorithm, [`BlockHashAlgorithm::to_u8`] (absent: HMAC-SHA-256, as every key written before there was a choice) |

use std::path::Path;

use klio_crypto::{BLOCK_HASH_KEY_LEN, BlockHashAlgorithm, BlockHashKey, Keyring, SecureRandom};
use klio_wal::durable;

use super::error::{BackupStoreError, ObjectDamage};
use super::object::{self, ObjectKind, damaged, read_cluster_object};

/// Reads the key at `path`; `None` if the cluster has none yet.
pub(crate) fn read(
    path: &Path,
    keyring: Option<&Keyring>,
) -> Result<Option<BlockHashKey>, BackupStoreError> {
    read_cluster_object(path, keyring, ObjectKind::HashKey)?
        .map(|bytes| key_of(&bytes, path))
        .transpose()
}

/// The key in the hash-key object `bytes` (named `path` in errors): what [`read`] does with
/// the file's bytes, for the fuzz targets.
#[doc(hidden)]
pub fn parse_hash_key(
    bytes: &[u8],
    path: &Path,
    keyring: Option<&Keyring>,
) -> Result<BlockHashKey, BackupStoreError> {
    let plain = object::read_object(bytes, path, keyring, ObjectKind::HashKey, "")?;
    key_of(&plain, path)
}

/// The key in a hash-key object's plaintext `bytes`.
fn key_of(bytes: &[u8], path: &Path) -> Result<BlockHashKey, BackupStoreError> {
    let (key, algorithm) = match bytes.len() {
        BLOCK_HASH_KEY_LEN => (bytes, BlockHashAlgorithm::HmacSha256),
        n if n == BLOCK_HASH_KEY_LEN + 1 => (
            &bytes[..BLOCK_HASH_KEY_LEN],
            BlockHashAlgorithm::from_u8(bytes[BLOCK_HASH_KEY_LEN]).ok_or_else(|| {
                damaged(
                    path,
                    ObjectDamage::Malformed(
                        "the key names a hash algorithm this version does not know",
                    ),
                )
            })?,
        ),
        _ => {
            return Err(damaged(
                path,
                ObjectDamage::Malformed("the key is not 32 bytes and an algorithm"),
            ));
        }
    };
    // `key` is exactly BLOCK_HASH_KEY_LEN bytes in both arms above.
    let mut key_bytes = [0u8; BLOCK_HASH_KEY_LEN];
    key_bytes.copy_from_slice(key);
    Ok(BlockHashKey::new(algorithm, key_bytes))
}

/// The plaintext of the hash-key object for `key` (see the module documentation).
fn encode_key(key: &BlockHashKey) -> Vec<u8> {
    let mut out = key.to_bytes().to_vec();
    out.push(key.algorithm().to_u8());
    out
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
    let bytes = object::encode(
        keyring,
        ObjectKind::HashKey,
        "",
        &encode_key(&key),
        rng,
        path,
    )?;
    // Atomic and durable: a crash leaves no key or the whole key, and the key is on disk
    // before any block is named with it. Only the backup session (one per cluster, under its
    // lease) creates it, so no other writer races this rename.
    durable::replace(path, &bytes)?;
    Ok(key)
}
