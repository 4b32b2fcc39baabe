//! Keyed block hashes: the names of backup blocks in a cluster's block store.
//!
//! A block is named by a keyed hash of its plaintext under the cluster's *block-hash key*, a
//! random 32-byte key per cluster. The server creates it, keeps it (sealed with the keyring
//! when the server encrypts) and gives it only to clients of that cluster. So:
//!
//! - equal blocks of one cluster get equal names (deduplication);
//! - the same block in two clusters gets unrelated names: asking for a name reveals nothing
//!   about another cluster's data;
//! - someone with only the server's disk cannot confirm a guessed plaintext by hashing it,
//!   since the key is not there in the clear (on an encrypted server).
//!
//! # Algorithms
//!
//! The key says which keyed hash it is for ([`BlockHashAlgorithm`]); a cluster keeps its
//! algorithm for good, since every stored block is named with it.
//!
//! - [`BlockHashAlgorithm::Blake3`], keyed BLAKE3 (the `blake3` crate's `keyed_hash`), for
//!   every key created now: about 7 GB/s on one core here for 64 KiB blocks, against
//!   1.7 GB/s for HMAC-SHA-256 with SHA extensions. Every byte of a backup is hashed by the
//!   client, again by the server that checks it, and again by the restore, so this is a large
//!   part of a backup's CPU.
//! - [`BlockHashAlgorithm::HmacSha256`], HMAC-SHA-256 (`ring`), for the keys of clusters
//!   created before.

use std::fmt;

use ring::hmac;
use ring::rand::SecureRandom;

use crate::CryptoError;

/// Length of a block-hash key and of a hash.
pub const BLOCK_HASH_KEY_LEN: usize = 32;

/// Which keyed hash a [`BlockHashKey`] computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockHashAlgorithm {
    /// HMAC-SHA-256: the keys of clusters whose block stores predate BLAKE3.
    HmacSha256,
    /// Keyed BLAKE3: every new key.
    Blake3,
}

impl BlockHashAlgorithm {
    /// Its byte in the stored key and in the `HashKey` message.
    pub fn to_u8(self) -> u8 {
        match self {
            Self::HmacSha256 => 0,
            Self::Blake3 => 1,
        }
    }

    /// The algorithm of a byte (`None`: one this version does not know).
    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::HmacSha256),
            1 => Some(Self::Blake3),
            _ => None,
        }
    }
}

impl fmt::Display for BlockHashAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::HmacSha256 => "HMAC-SHA-256",
            Self::Blake3 => "keyed BLAKE3",
        })
    }
}

/// The hashing state of a key, per algorithm.
#[derive(Clone)]
enum Keyed {
    HmacSha256(hmac::Key),
    Blake3,
}

/// A cluster's block-hash key.
#[derive(Clone)]
pub struct BlockHashKey {
    bytes: [u8; BLOCK_HASH_KEY_LEN],
    keyed: Keyed,
}

impl fmt::Debug for BlockHashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockHashKey({}, ..)", self.algorithm())
    }
}

impl PartialEq for BlockHashKey {
    fn eq(&self, other: &Self) -> bool {
        // Without an early exit, so a comparison's time says nothing about where keys differ.
        self.algorithm() == other.algorithm()
            && self
                .bytes
                .iter()
                .zip(&other.bytes)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

impl Eq for BlockHashKey {}

impl BlockHashKey {
    /// A fresh random key for a cluster that has none yet, for keyed BLAKE3.
    pub fn generate(rng: &dyn SecureRandom) -> Result<Self, CryptoError> {
        let mut bytes = [0u8; BLOCK_HASH_KEY_LEN];
        rng.fill(&mut bytes).map_err(|_| CryptoError::Random)?;
        Ok(Self::new(BlockHashAlgorithm::Blake3, bytes))
    }

    /// The key with these bytes for `algorithm` (as stored, or as the server sent it).
    pub fn new(algorithm: BlockHashAlgorithm, bytes: [u8; BLOCK_HASH_KEY_LEN]) -> Self {
        let keyed = match algorithm {
            BlockHashAlgorithm::HmacSha256 => {
                Keyed::HmacSha256(hmac::Key::new(hmac::HMAC_SHA256, &bytes))
            }
            BlockHashAlgorithm::Blake3 => Keyed::Blake3,
        };
        Self { bytes, keyed }
    }

    /// Which keyed hash this key computes.
    pub fn algorithm(&self) -> BlockHashAlgorithm {
        match self.keyed {
            Keyed::HmacSha256(_) => BlockHashAlgorithm::HmacSha256,
            Keyed::Blake3 => BlockHashAlgorithm::Blake3,
        }
    }

    /// The key's bytes, to store (sealed) or to send to a client of its cluster.
    pub fn to_bytes(&self) -> [u8; BLOCK_HASH_KEY_LEN] {
        self.bytes
    }

    /// The hash of a block's plaintext.
    pub fn hash(&self, block: &[u8]) -> [u8; BLOCK_HASH_KEY_LEN] {
        match &self.keyed {
            Keyed::HmacSha256(key) => {
                let tag = hmac::sign(key, block);
                let mut out = [0u8; BLOCK_HASH_KEY_LEN];
                out.copy_from_slice(tag.as_ref());
                out
            }
            Keyed::Blake3 => *blake3::keyed_hash(&self.bytes, block).as_bytes(),
        }
    }

    /// Whether `block` has the hash `expected` (in constant time).
    pub fn matches(&self, block: &[u8], expected: &[u8; BLOCK_HASH_KEY_LEN]) -> bool {
        match &self.keyed {
            Keyed::HmacSha256(key) => hmac::verify(key, block, expected).is_ok(),
            // `blake3::Hash`'s equality is constant-time.
            Keyed::Blake3 => {
                blake3::keyed_hash(&self.bytes, block) == blake3::Hash::from_bytes(*expected)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_blocks_hash_equal_under_one_key_and_unrelated_under_another() {
        for algorithm in [BlockHashAlgorithm::Blake3, BlockHashAlgorithm::HmacSha256] {
            equal_blocks_hash_equal_with(algorithm);
        }
    }

    fn equal_blocks_hash_equal_with(algorithm: BlockHashAlgorithm) {
        let a = BlockHashKey::new(algorithm, [1; 32]);
        let b = BlockHashKey::new(algorithm, [2; 32]);
        let page = vec![7u8; 8192];
        assert_eq!(a.hash(&page), a.hash(&page.clone()));
        assert_ne!(a.hash(&page), b.hash(&page));
        let mut other = page.clone();
        other[4000] ^= 1;
        assert_ne!(a.hash(&page), a.hash(&other));
        assert!(a.matches(&page, &a.hash(&page)));
        assert!(!a.matches(&other, &a.hash(&page)));
        assert!(!b.matches(&page, &a.hash(&page)));
    }

    #[test]
    fn the_hash_is_hmac_sha256_of_rfc_4231_case_2() {
        // RFC 4231 test case 2 uses a 4-byte key; HMAC pads keys to the block size, so the
        // same key zero-padded to 32 bytes gives the same MAC.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        let mac = BlockHashKey::new(BlockHashAlgorithm::HmacSha256, key)
            .hash(b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn the_blake3_hash_is_the_reference_keyed_hash() {
        // The official test vectors (BLAKE3 repository, test_vectors.json): key
        // "whats the Elvish word for friend", input bytes i % 251, first 32 bytes of output.
        let key: [u8; 32] = *b"whats the Elvish word for friend";
        let k = BlockHashKey::new(BlockHashAlgorithm::Blake3, key);
        for (len, expected) in [
            (
                0usize,
                "92b2b75604ed3c761f9d6f62392c8a9227ad0ea3f09573e783f1498a4ed60d26",
            ),
            (
                1024,
                "75c46f6f3d9eb4f55ecaaee480db732e6c2105546f1e675003687c31719c7ba4",
            ),
        ] {
            let input: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let hex: String = k.hash(&input).iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(hex, expected, "input of {len} bytes");
        }
    }

    #[test]
    fn keys_of_different_algorithms_are_not_equal() {
        let a = BlockHashKey::new(BlockHashAlgorithm::Blake3, [3; 32]);
        let b = BlockHashKey::new(BlockHashAlgorithm::HmacSha256, [3; 32]);
        assert_ne!(a, b);
        assert_ne!(a.hash(b"page"), b.hash(b"page"));
        for algorithm in [BlockHashAlgorithm::Blake3, BlockHashAlgorithm::HmacSha256] {
            assert_eq!(
                BlockHashAlgorithm::from_u8(algorithm.to_u8()),
                Some(algorithm)
            );
        }
        assert_eq!(BlockHashAlgorithm::from_u8(2), None);
    }

    #[test]
    fn generated_keys_differ() {
        let rng = ring::rand::SystemRandom::new();
        let a = BlockHashKey::generate(&rng).unwrap();
        let b = BlockHashKey::generate(&rng).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.algorithm(), BlockHashAlgorithm::Blake3);
        assert_eq!(BlockHashKey::new(a.algorithm(), a.to_bytes()), a);
    }
}
