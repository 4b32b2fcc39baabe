//! Envelope encryption for everything Klio stores.
//!
//! - **Keys** ([`keys`]): key-encryption keys ([`Kek`]) come from a key file or a passphrase
//!   (Argon2id, with salt and costs kept in a [`PassphraseKeyFile`]); each has a [`KeyId`]
//!   derived from the key. A [`Keyring`] holds the keys a
//!   process can open objects with and the primary one it seals new objects with.
//! - **Objects** ([`mod@format`]): each object gets a fresh random data key, wrapped by a KEK
//!   (AES-256-GCM) in a fixed-size key slot of the header. The data is cut into chunks,
//!   compressed (lz4 or zstd, recorded in the header) and sealed with AES-256-GCM; chunk index
//!   and a final flag are authenticated, so truncation, reordering, splicing between objects and
//!   any bit flip are detected, and opening never returns wrong bytes.
//! - **API**: [`seal`]/[`open`] for whole objects, [`Sealer`]/[`Opener`] for streams, and
//!   [`object_key_id`]/[`rewrap`] to rotate keys by rewriting only the key slot
//!   ([`key_slot_range`]).
//! - **Block hashes** ([`block_hash`]): [`BlockHashKey`], the per-cluster key that names backup
//!   blocks by HMAC-SHA-256, so that dedup stays within a cluster and the server's disk alone
//!   confirms no guessed plaintext.
//! - **Journal frames** ([`journal_frame`]): the AES-256-GCM sealing and opening of the frames of
//!   an encrypted WAL journal under its own frame key (which is itself kept in a sealed object).
//!
//! Like `klio-proto`, this crate does no I/O and reads no clock: bytes in, bytes out. Randomness
//! comes from the caller as a [`ring::rand::SecureRandom`] (normally
//! `ring::rand::SystemRandom`).
//!
//! ```
//! use klio_crypto::{Kek, Keyring, SealOptions, open, seal};
//! use ring::rand::SystemRandom;
//!
//! let rng = SystemRandom::new();
//! let (kek, _key_file) = Kek::generate(&rng)?;
//! let keyring = Keyring::new(kek);
//! let object = seal(&keyring, &SealOptions::default(), b"some WAL", &rng)?;
//! assert_eq!(open(&keyring, &object)?, b"some WAL");
//! # Ok::<(), klio_crypto::CryptoError>(())
//! ```
#![warn(missing_docs)]

pub mod block_hash;
mod error;
pub mod format;
pub mod journal_frame;
pub mod keys;
mod open;
pub mod passphrase;
mod rotate;
mod seal;
#[cfg(test)]
mod tests;

pub use block_hash::{BLOCK_HASH_KEY_LEN, BlockHashAlgorithm, BlockHashKey};
pub use error::CryptoError;
pub use format::{
    CompressionKind, DEFAULT_CHUNK_SIZE, FORMAT_VERSION, HEADER_LEN, IMMUTABLE_HEADER_LEN,
    KEY_SLOT_LEN, MAGIC, MAX_CHUNK_SIZE, ObjectHeader, key_slot_range, max_chunk_ciphertext,
};
pub use keys::{KdfParams, Kek, KeyId, Keyring};
pub use open::{Opener, open};
pub use passphrase::PassphraseKeyFile;
pub use ring::rand::{SecureRandom, SystemRandom};
pub use rotate::{object_key_id, rewrap};
pub use seal::{Compression, SealOptions, Sealer, seal};

/// The examples of the crate's README, compiled and run as doctests so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
