//! Key rotation without rewriting data: inspect and replace an object's key slot.

use ring::rand::SecureRandom;

use crate::error::CryptoError;
use crate::format::{KEY_SLOT_LEN, ObjectHeader};
use crate::keys::{KeyId, Keyring};

/// The id of the KEK an object's data key is wrapped with, from the object's first
/// [`HEADER_LEN`](crate::HEADER_LEN) bytes (or more).
pub fn object_key_id(object_prefix: &[u8]) -> Result<KeyId, CryptoError> {
    Ok(ObjectHeader::parse(object_prefix)?.key_id())
}

/// A new key slot for the object whose header starts `header_prefix`, wrapping the same data
/// key with the KEK `new_key` (both the current and the new key must be in `keyring`).
///
/// The result is [`KEY_SLOT_LEN`] bytes to write over
/// [`key_slot_range()`](crate::key_slot_range) of the object, in place; nothing else changes.
/// Rewriting a slot is atomic enough at this size on usual filesystems, but callers that need
/// certainty should write the whole object anew or keep the old slot until the write is durable.
pub fn rewrap(
    keyring: &Keyring,
    header_prefix: &[u8],
    new_key: &KeyId,
    rng: &dyn SecureRandom,
) -> Result<[u8; KEY_SLOT_LEN], CryptoError> {
    let header = ObjectHeader::parse(header_prefix)?;
    let key_id = header.key_id();
    let old = keyring
        .get(&key_id)
        .ok_or(CryptoError::UnknownKey { key_id })?;
    let new = keyring
        .get(new_key)
        .ok_or(CryptoError::UnknownKey { key_id: *new_key })?;
    let data_key = old.unwrap_data_key(header.immutable_bytes(), header.key_slot_bytes())?;
    new.wrap_data_key(header.immutable_bytes(), &data_key, rng)
}
