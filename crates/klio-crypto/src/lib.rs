//! Envelope encryption for everything Klio stores.
//!
//! This crate will own key-encryption keys derived from user-provided key files or passphrases,
//! a fresh data key per object wrapped by the KEK (AES-256-GCM), and chunked AEAD streams whose
//! chunk index and final flag are authenticated so truncation, reordering and splicing are
//! detected. Like `klio-proto`, it does no I/O: bytes in, bytes out.
#![forbid(unsafe_code)]

/// The on-disk format version objects sealed by this crate will carry.
pub const FORMAT_VERSION: u8 = 1;
