//! The one error type of this crate.

use crate::keys::KeyId;

/// Everything that can go wrong while handling keys or sealing and opening objects.
///
/// Every message says what is wrong and what to do about it. Opening never hands out wrong
/// bytes: any damage, truncation, reordering or substitution ends in one of these errors.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// The bytes do not start with the object magic.
    #[error(
        "not a Klio encrypted object: it does not start with the magic bytes `KLIO-ENC`; \
         check that this is a sealed Klio object and not plaintext, another format or another file"
    )]
    NotAnObject,

    /// The object was written in a format version this build cannot read.
    #[error(
        "Klio object format version {version} is not supported (this build reads version \
         {supported}); upgrade Klio to read this object"
    )]
    UnsupportedVersion {
        /// The version found in the header.
        version: u8,
        /// The version this build reads.
        supported: u8,
    },

    /// The header names a cipher or compression this build does not know.
    #[error(
        "the object header names {what} code {value}, which this build does not support; \
         upgrade Klio, or restore the object from another copy if its header is damaged"
    )]
    UnsupportedAlgorithm {
        /// `"cipher"` or `"compression"`.
        what: &'static str,
        /// The code found in the header.
        value: u8,
    },

    /// A header field has a value no writer produces.
    #[error("the object header is damaged: {reason}; restore the object from another copy")]
    HeaderCorrupted {
        /// Which field is wrong and how.
        reason: String,
    },

    /// The object names a key that is not in the keyring.
    #[error(
        "the object was sealed with key {key_id}, which is not in the keyring: add the key file \
         with id {key_id} to the keyring (if keys come from a passphrase, the passphrase or its \
         salt is wrong)"
    )]
    UnknownKey {
        /// The key the object names.
        key_id: KeyId,
    },

    /// The key slot does not open with the key it names.
    ///
    /// Key ids are derived from the keys, so a matching id means the key is right: the key slot
    /// or the immutable header before it was damaged, altered or moved from another object.
    #[error(
        "the key slot does not open with key {key_id}: the key id matches, so the object's \
         header or key slot is damaged, was tampered with or comes from another object; \
         restore the object from another copy"
    )]
    WrongKey {
        /// The key the object names.
        key_id: KeyId,
    },

    /// A chunk failed authentication or is malformed.
    #[error(
        "chunk {chunk} of the object is corrupted: {reason}; the object was damaged, reordered \
         or tampered with; restore it from another copy"
    )]
    Corrupted {
        /// Index of the chunk (0-based) where the damage was found.
        chunk: u64,
        /// What is wrong with it.
        reason: String,
    },

    /// The object ends before its final chunk.
    #[error(
        "the object is truncated: it ends after {len} bytes without its final chunk (cut short \
         by an interrupted write, upload or copy); restore it from another copy"
    )]
    Truncated {
        /// How many bytes were there.
        len: u64,
    },

    /// Bytes follow the final chunk.
    #[error(
        "unexpected bytes after the object's final chunk, at byte {offset}: something was \
         appended or two objects were joined; restore the object from another copy"
    )]
    TrailingData {
        /// Offset of the first byte after the final chunk.
        offset: u64,
    },

    /// A key file has the wrong size or content.
    #[error(
        "invalid key file: {reason}; a key file holds 64 hex digits and a newline (as written \
         by `klio keys generate`) or exactly 32 raw bytes"
    )]
    BadKeyFile {
        /// What is wrong with the contents (never the contents themselves).
        reason: String,
    },

    /// Raw key bytes of the wrong length.
    #[error(
        "a key-encryption key is exactly 32 bytes, got {len}; generate one with \
         `klio keys generate`"
    )]
    InvalidKeyLength {
        /// The length given.
        len: usize,
    },

    /// A textual key id that is not 32 hex digits.
    #[error("invalid key id {input:?}: a key id is 32 hex digits, as printed for every key")]
    InvalidKeyId {
        /// The text given (key ids are not secret).
        input: String,
    },

    /// A passphrase key file is malformed.
    #[error(
        "invalid passphrase key file: {reason}; write a new one with \
         `klio keys generate --passphrase`"
    )]
    BadPassphraseKeyFile {
        /// What is wrong (the file holds no secret).
        reason: String,
    },

    /// The passphrase does not give the key its passphrase key file names.
    #[error(
        "wrong passphrase: it gives key {derived}, but the key file is for key {expected}; \
         supply the passphrase this key file was generated with"
    )]
    WrongPassphrase {
        /// The id the file records.
        expected: KeyId,
        /// The id the given passphrase gives.
        derived: KeyId,
    },

    /// The passphrase KDF rejected its input or parameters.
    #[error("cannot derive a key from the passphrase: {reason}")]
    Kdf {
        /// What is wrong.
        reason: String,
    },

    /// The primary key cannot be removed from a keyring.
    #[error(
        "key {key_id} is the keyring's primary key and cannot be removed: make another key \
         primary first"
    )]
    KeyIsPrimary {
        /// The primary key.
        key_id: KeyId,
    },

    /// Seal options out of range.
    #[error("invalid seal options: {reason}")]
    InvalidOptions {
        /// Which option and its valid range.
        reason: String,
    },

    /// The compressor failed while sealing.
    #[error("compressing chunk {chunk} failed: {reason}; this is a bug in Klio, please report it")]
    Compression {
        /// Index of the chunk being sealed.
        chunk: u64,
        /// The compressor's message.
        reason: String,
    },

    /// The system random number generator failed.
    #[error(
        "the system random number generator failed; check that the operating system provides \
         getrandom(2) or /dev/urandom"
    )]
    Random,

    /// The AEAD refused to seal (only possible for absurd sizes).
    #[error("encryption failed: {reason}; this is a bug in Klio, please report it")]
    Encryption {
        /// What was refused.
        reason: &'static str,
    },
}
