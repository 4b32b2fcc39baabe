//! Key-encryption keys (KEKs), their ids, and keyrings.
//!
//! A KEK is an AES-256-GCM key provided by the user, either as a key file or derived from a
//! passphrase. It never encrypts data itself: it wraps the fresh data key of every object (see
//! [`crate::format`]). Each KEK has a [`KeyId`] derived from the key itself, so the same key
//! always has the same id wherever it is loaded, and an object names the key it needs.
//!
//! # Key files
//!
//! The canonical key file, written by [`Kek::generate`] (and so by `klio keys generate`), is
//! **64 lowercase hex digits followed by one `\n`** (65 bytes): printable, safe to paste into a
//! secret manager and unharmed by editors. [`Kek::from_key_file_contents`] also accepts upper
//! case hex, a `\r\n` ending or none, and exactly 32 raw bytes (for keys made with
//! `head -c 32 /dev/urandom`). Anything else is refused with [`CryptoError::BadKeyFile`].

use std::fmt;
use std::str::FromStr;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::SecureRandom;

use crate::error::CryptoError;
use crate::format::{IMMUTABLE_HEADER_LEN, KEY_SLOT_LEN, TAG_LEN};

/// Bytes in a key-encryption key and in a data key (AES-256).
pub const KEY_LEN: usize = 32;

/// Bytes of the salt [`Kek::from_passphrase`] takes.
pub const SALT_LEN: usize = 16;

/// The label whose HMAC under a key is that key's id.
const KEY_ID_LABEL: &[u8] = b"klio key id";

/// Nonce length of AES-256-GCM.
pub(crate) const NONCE_LEN: usize = 12;

/// The id of a key-encryption key: the first 16 bytes of `HMAC-SHA256(key, "klio key id")`.
///
/// Displayed (and parsed) as 32 lowercase hex digits. Ids are not secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; Self::LEN]);

impl KeyId {
    /// Bytes in a key id.
    pub const LEN: usize = 16;

    /// A key id from its bytes.
    pub const fn from_bytes(bytes: [u8; Self::LEN]) -> Self {
        Self(bytes)
    }

    /// The id's bytes.
    pub const fn as_bytes(&self) -> &[u8; Self::LEN] {
        &self.0
    }

    fn of_key(key: &[u8; KEY_LEN]) -> Self {
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), KEY_ID_LABEL);
        let mut id = [0u8; Self::LEN];
        id.copy_from_slice(&tag.as_ref()[..Self::LEN]);
        Self(id)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl FromStr for KeyId {
    type Err = CryptoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut id = [0u8; Self::LEN];
        decode_hex(s.as_bytes(), &mut id).map_err(|_| CryptoError::InvalidKeyId {
            input: s.chars().take(80).collect(),
        })?;
        Ok(Self(id))
    }
}

/// Argon2id cost parameters for [`Kek::from_passphrase`].
///
/// The salt and these parameters must be stored next to the configuration: the same
/// passphrase with another salt or other parameters gives another key (and another id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl KdfParams {
    /// RFC 9106's second recommended option: 64 MiB, 3 passes, 4 lanes (about a tenth of a
    /// second to a few tenths on current hardware).
    pub const RECOMMENDED: Self = Self {
        memory_kib: 64 * 1024,
        iterations: 3,
        parallelism: 4,
    };

    /// Cheap parameters for tests only: they give passphrase-derived keys no protection
    /// against guessing.
    pub const INSECURE_FAST_FOR_TESTS: Self = Self {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };
}

impl Default for KdfParams {
    fn default() -> Self {
        Self::RECOMMENDED
    }
}

/// A key-encryption key: AES-256-GCM, used only to wrap per-object data keys.
///
/// Its `Debug` output shows the id, never the key.
#[derive(Clone)]
pub struct Kek {
    id: KeyId,
    key: LessSafeKey,
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kek")
            .field("id", &self.id)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Kek {
    /// A KEK from exactly [`KEY_LEN`] bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let key: &[u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| CryptoError::InvalidKeyLength { len: bytes.len() })?;
        Ok(Self::from_array(key))
    }

    fn from_array(key: &[u8; KEY_LEN]) -> Self {
        let Ok(unbound) = UnboundKey::new(&AES_256_GCM, key) else {
            // AES_256_GCM accepts every 32-byte key; ring only refuses a wrong length.
            unreachable!("AES-256-GCM takes any 32-byte key");
        };
        Self {
            id: KeyId::of_key(key),
            key: LessSafeKey::new(unbound),
        }
    }

    /// A KEK from the contents of a key file (see the [module docs](self) for the formats).
    pub fn from_key_file_contents(contents: &[u8]) -> Result<Self, CryptoError> {
        if contents.len() == KEY_LEN {
            return Self::from_bytes(contents);
        }
        let text = contents
            .strip_suffix(b"\r\n")
            .or_else(|| contents.strip_suffix(b"\n"))
            .unwrap_or(contents);
        if text.len() != 2 * KEY_LEN {
            return Err(CryptoError::BadKeyFile {
                reason: format!(
                    "it has {} bytes{}",
                    contents.len(),
                    if text.len() != contents.len() {
                        format!(" ({} before the line ending)", text.len())
                    } else {
                        String::new()
                    }
                ),
            });
        }
        let mut key = [0u8; KEY_LEN];
        decode_hex(text, &mut key).map_err(|pos| CryptoError::BadKeyFile {
            reason: format!("byte {pos} of 64 hex digits is not a hex digit"),
        })?;
        Ok(Self::from_array(&key))
    }

    /// A KEK derived from a passphrase with Argon2id.
    ///
    /// `salt` should be random (generate it once, store it with the configuration); `params`
    /// is normally [`KdfParams::default()`].
    pub fn from_passphrase(
        passphrase: &[u8],
        salt: &[u8; SALT_LEN],
        params: &KdfParams,
    ) -> Result<Self, CryptoError> {
        if passphrase.is_empty() {
            return Err(CryptoError::Kdf {
                reason: "the passphrase is empty; choose a non-empty passphrase".into(),
            });
        }
        let argon_params = argon2::Params::new(
            params.memory_kib,
            params.iterations,
            params.parallelism,
            Some(KEY_LEN),
        )
        .map_err(|e| CryptoError::Kdf {
            reason: format!(
                "Argon2id parameters {params:?} are out of range ({e}); use KdfParams::default()"
            ),
        })?;
        let argon = argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            argon_params,
        );
        let mut key = [0u8; KEY_LEN];
        argon
            .hash_password_into(passphrase, salt, &mut key)
            .map_err(|e| CryptoError::Kdf {
                reason: format!("Argon2id failed: {e}"),
            })?;
        Ok(Self::from_array(&key))
    }

    /// A fresh random KEK and the contents of its key file in the canonical format (64 hex
    /// digits and a newline). Write the file with mode 0600.
    pub fn generate(rng: &dyn SecureRandom) -> Result<(Self, Vec<u8>), CryptoError> {
        let mut key = [0u8; KEY_LEN];
        rng.fill(&mut key).map_err(|_| CryptoError::Random)?;
        let mut file = Vec::with_capacity(2 * KEY_LEN + 1);
        for b in key {
            file.push(HEX[usize::from(b >> 4)]);
            file.push(HEX[usize::from(b & 0x0f)]);
        }
        file.push(b'\n');
        Ok((Self::from_array(&key), file))
    }

    /// This key's id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The key slot (`key id || nonce || wrapped data key || tag`) for `data_key`, bound to
    /// the object's immutable header.
    pub(crate) fn wrap_data_key(
        &self,
        immutable: &[u8; IMMUTABLE_HEADER_LEN],
        data_key: &[u8; KEY_LEN],
        rng: &dyn SecureRandom,
    ) -> Result<[u8; KEY_SLOT_LEN], CryptoError> {
        let mut slot = [0u8; KEY_SLOT_LEN];
        let (id, rest) = slot.split_at_mut(KeyId::LEN);
        let (nonce, rest) = rest.split_at_mut(NONCE_LEN);
        let (wrapped, tag) = rest.split_at_mut(KEY_LEN);
        id.copy_from_slice(self.id.as_bytes());
        rng.fill(nonce).map_err(|_| CryptoError::Random)?;
        wrapped.copy_from_slice(data_key);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Random)?;
        let t = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(wrap_aad(immutable, &self.id)), wrapped)
            .map_err(|_| CryptoError::Encryption {
                reason: "wrapping the data key",
            })?;
        tag.copy_from_slice(t.as_ref());
        Ok(slot)
    }

    /// The data key inside `slot` (whose key id must be this key's).
    pub(crate) fn unwrap_data_key(
        &self,
        immutable: &[u8; IMMUTABLE_HEADER_LEN],
        slot: &[u8; KEY_SLOT_LEN],
    ) -> Result<[u8; KEY_LEN], CryptoError> {
        let wrong = || CryptoError::WrongKey { key_id: self.id };
        let nonce_bytes = &slot[KeyId::LEN..KeyId::LEN + NONCE_LEN];
        let mut sealed = [0u8; KEY_LEN + TAG_LEN];
        sealed.copy_from_slice(&slot[KeyId::LEN + NONCE_LEN..]);
        let nonce = Nonce::try_assume_unique_for_key(nonce_bytes).map_err(|_| wrong())?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(wrap_aad(immutable, &self.id)), &mut sealed)
            .map_err(|_| wrong())?;
        let mut key = [0u8; KEY_LEN];
        key.copy_from_slice(plain);
        Ok(key)
    }
}

/// AAD of the key wrap: the immutable header, then the key id.
fn wrap_aad(
    immutable: &[u8; IMMUTABLE_HEADER_LEN],
    id: &KeyId,
) -> [u8; IMMUTABLE_HEADER_LEN + KeyId::LEN] {
    let mut aad = [0u8; IMMUTABLE_HEADER_LEN + KeyId::LEN];
    aad[..IMMUTABLE_HEADER_LEN].copy_from_slice(immutable);
    aad[IMMUTABLE_HEADER_LEN..].copy_from_slice(id.as_bytes());
    aad
}

pub(crate) const HEX: &[u8; 16] = b"0123456789abcdef";

/// Decodes exactly `2 * out.len()` hex digits; on error, the offset of the first bad byte.
pub(crate) fn decode_hex(text: &[u8], out: &mut [u8]) -> Result<(), usize> {
    if text.len() != 2 * out.len() {
        return Err(text.len().min(2 * out.len()));
    }
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    for (i, (pair, o)) in text.chunks_exact(2).zip(out.iter_mut()).enumerate() {
        let hi = nibble(pair[0]).ok_or(2 * i)?;
        let lo = nibble(pair[1]).ok_or(2 * i + 1)?;
        *o = (hi << 4) | lo;
    }
    Ok(())
}

/// The set of KEKs a process can open objects with, and the primary one new objects are
/// sealed with.
///
/// Rotation: [`add`](Keyring::add) the new key, [`set_primary`](Keyring::set_primary) it,
/// [`rewrap`](crate::rewrap) existing objects, and [`remove`](Keyring::remove) the old key once
/// no object names it any more.
#[derive(Clone)]
pub struct Keyring {
    primary: KeyId,
    keys: Vec<Kek>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("primary", &self.primary)
            .field("keys", &self.keys.iter().map(Kek::id).collect::<Vec<_>>())
            .finish()
    }
}

impl Keyring {
    /// A keyring holding `primary`, which seals new objects.
    pub fn new(primary: Kek) -> Self {
        Self {
            primary: primary.id(),
            keys: vec![primary],
        }
    }

    /// Adds `kek`; returns false (and changes nothing) if a key with its id is already there.
    pub fn add(&mut self, kek: Kek) -> bool {
        if self.contains(&kek.id()) {
            return false;
        }
        self.keys.push(kek);
        true
    }

    /// Makes the key `id` (already in the keyring) the one new objects are sealed with.
    pub fn set_primary(&mut self, id: &KeyId) -> Result<(), CryptoError> {
        if !self.contains(id) {
            return Err(CryptoError::UnknownKey { key_id: *id });
        }
        self.primary = *id;
        Ok(())
    }

    /// The key with id `id`.
    pub fn get(&self, id: &KeyId) -> Option<&Kek> {
        self.keys.iter().find(|k| k.id == *id)
    }

    /// Whether the key `id` is in the keyring.
    pub fn contains(&self, id: &KeyId) -> bool {
        self.get(id).is_some()
    }

    /// Removes and returns the key `id`; the primary key cannot be removed.
    pub fn remove(&mut self, id: &KeyId) -> Result<Kek, CryptoError> {
        if *id == self.primary {
            return Err(CryptoError::KeyIsPrimary { key_id: *id });
        }
        let pos = self
            .keys
            .iter()
            .position(|k| k.id == *id)
            .ok_or(CryptoError::UnknownKey { key_id: *id })?;
        Ok(self.keys.remove(pos))
    }

    /// The key new objects are sealed with.
    pub fn primary(&self) -> &Kek {
        match self.get(&self.primary) {
            Some(k) => k,
            // new() inserts the primary, set_primary() checks it, remove() refuses it.
            None => unreachable!("the primary key is always in the keyring"),
        }
    }

    /// The primary key's id.
    pub fn primary_id(&self) -> KeyId {
        self.primary
    }

    /// Ids of all keys, in the order they were added.
    pub fn ids(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.keys.iter().map(Kek::id)
    }

    /// Number of keys (at least 1).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: a keyring holds at least its primary key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;

    #[test]
    fn key_id_is_stable_and_distinct() {
        let a = Kek::from_bytes(&[1; 32]).unwrap();
        let a2 = Kek::from_bytes(&[1; 32]).unwrap();
        let b = Kek::from_bytes(&[2; 32]).unwrap();
        assert_eq!(a.id(), a2.id());
        assert_ne!(a.id(), b.id());
        let shown = a.id().to_string();
        assert_eq!(shown.len(), 32);
        assert_eq!(shown.parse::<KeyId>().unwrap(), a.id());
        assert!(matches!(
            "xyz".parse::<KeyId>(),
            Err(CryptoError::InvalidKeyId { .. })
        ));
    }

    #[test]
    fn debug_never_shows_key_material() {
        let key = [0xabu8; 32];
        let kek = Kek::from_bytes(&key).unwrap();
        let ring = Keyring::new(kek.clone());
        for text in [format!("{kek:?}"), format!("{ring:?}")] {
            assert!(!text.to_lowercase().contains("abab"), "{text}");
            assert!(text.contains(&kek.id().to_string()), "{text}");
        }
    }

    #[test]
    fn from_bytes_checks_length() {
        assert_eq!(
            Kek::from_bytes(&[0; 31]).unwrap_err(),
            CryptoError::InvalidKeyLength { len: 31 }
        );
        assert!(Kek::from_bytes(&[0; 33]).is_err());
    }

    #[test]
    fn generated_key_file_round_trips() {
        let rng = SystemRandom::new();
        let (kek, file) = Kek::generate(&rng).unwrap();
        assert_eq!(file.len(), 65);
        assert_eq!(file.last(), Some(&b'\n'));
        assert!(file[..64].iter().all(|c| HEX.contains(c)));
        assert_eq!(Kek::from_key_file_contents(&file).unwrap().id(), kek.id());
        // Without newline, with CRLF, in upper case: the same key.
        assert_eq!(
            Kek::from_key_file_contents(&file[..64]).unwrap().id(),
            kek.id()
        );
        let mut crlf = file[..64].to_vec();
        crlf.extend_from_slice(b"\r\n");
        assert_eq!(Kek::from_key_file_contents(&crlf).unwrap().id(), kek.id());
        let upper = file.to_ascii_uppercase();
        assert_eq!(Kek::from_key_file_contents(&upper).unwrap().id(), kek.id());
    }

    #[test]
    fn raw_key_file() {
        let raw = [7u8; 32];
        assert_eq!(
            Kek::from_key_file_contents(&raw).unwrap().id(),
            Kek::from_bytes(&raw).unwrap().id()
        );
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            Kek::from_key_file_contents(hex.as_bytes()).unwrap().id(),
            Kek::from_bytes(&raw).unwrap().id()
        );
    }

    #[test]
    fn bad_key_files() {
        for bad in [
            &b""[..],
            b"\n",
            &[0u8; 31],
            &[0u8; 33],
            &[b'a'; 63],
            &[b'a'; 65],
            b"  0000000000000000000000000000000000000000000000000000000000000000",
            b"000000000000000000000000000000000000000000000000000000000000000g\n",
            b"0000000000000000000000000000000000000000000000000000000000000000\n\n",
        ] {
            let err = Kek::from_key_file_contents(bad).unwrap_err();
            assert!(matches!(err, CryptoError::BadKeyFile { .. }), "{err:?}");
            assert!(err.to_string().contains("klio keys generate"), "{err}");
        }
        let err = Kek::from_key_file_contents(
            b"000000000000000000000000000000000000000000000000000000000000000g\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("byte 63"), "{err}");
    }

    #[test]
    fn passphrase_keys() {
        let p = KdfParams::INSECURE_FAST_FOR_TESTS;
        let salt = [9u8; 16];
        let a = Kek::from_passphrase(b"correct horse", &salt, &p).unwrap();
        let a2 = Kek::from_passphrase(b"correct horse", &salt, &p).unwrap();
        let b = Kek::from_passphrase(b"correct horsf", &salt, &p).unwrap();
        let c = Kek::from_passphrase(b"correct horse", &[8u8; 16], &p).unwrap();
        assert_eq!(a.id(), a2.id());
        assert_ne!(a.id(), b.id());
        assert_ne!(a.id(), c.id());
        assert!(matches!(
            Kek::from_passphrase(b"", &salt, &p),
            Err(CryptoError::Kdf { .. })
        ));
        let bad = KdfParams {
            memory_kib: 1,
            iterations: 0,
            parallelism: 0,
        };
        assert!(matches!(
            Kek::from_passphrase(b"x", &salt, &bad),
            Err(CryptoError::Kdf { .. })
        ));
    }

    #[test]
    fn keyring_operations() {
        let a = Kek::from_bytes(&[1; 32]).unwrap();
        let b = Kek::from_bytes(&[2; 32]).unwrap();
        let mut ring = Keyring::new(a.clone());
        assert_eq!(ring.primary_id(), a.id());
        assert!(ring.add(b.clone()));
        assert!(!ring.add(b.clone()));
        assert_eq!(ring.len(), 2);
        assert_eq!(
            ring.remove(&a.id()).unwrap_err(),
            CryptoError::KeyIsPrimary { key_id: a.id() }
        );
        ring.set_primary(&b.id()).unwrap();
        assert_eq!(ring.primary().id(), b.id());
        assert_eq!(ring.remove(&a.id()).unwrap().id(), a.id());
        assert!(ring.get(&a.id()).is_none());
        assert_eq!(
            ring.set_primary(&a.id()).unwrap_err(),
            CryptoError::UnknownKey { key_id: a.id() }
        );
        assert_eq!(
            ring.remove(&a.id()).unwrap_err(),
            CryptoError::UnknownKey { key_id: a.id() }
        );
        assert_eq!(ring.ids().collect::<Vec<_>>(), vec![b.id()]);
        assert!(!ring.is_empty());
    }
}
