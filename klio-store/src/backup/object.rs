//! The protected objects of the backup store (catalog files, pin markers and the block-hash
//! key): sealed with the keyring on an encrypted server, CRC-32C chunks on a plain one, and
//! bound to what they are, so a file moved to another backup's directory (or renamed) is refused.
//!
//! # Format
//!
//! The plaintext always starts with a *binding*: `kind` (1 byte, [`ObjectKind`]), the length
//! of the backup id (1 byte), the id (empty for the block-hash key). Then the object's bytes.
//!
//! - **Sealed**: a klio-crypto object (starts with `KLIO-ENC`) of that plaintext.
//! - **Plain**: `KLBO` and version 1 (5 bytes), then chunks of at most [`CHUNK`] bytes:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | data length, u32 LE |
//! | 1 | 1 for the final chunk, else 0 |
//! | 4 | CRC-32C of the length, the flag and the data |
//! | n | data |
//!
//! Nothing may follow the final chunk.
//!
//! [`ObjectReader`] reads from any [`Read`]: an object's file in the store, or bytes in memory
//! for [`read_object`], the byte-level entry point that the fuzz targets drive.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use klio_crypto::{Keyring, Opener, SealOptions, Sealer, SecureRandom};
use klio_wal::FsAction;

use super::error::{BackupStoreError, ObjectDamage};

const PLAIN_MAGIC: [u8; 4] = *b"KLBO";
const PLAIN_VERSION: u8 = 1;
/// Plaintext bytes per chunk (plain) or per sealed chunk.
const CHUNK: usize = 1 << 20;
const CHUNK_HEADER: usize = 9;

/// What an object is: part of its binding.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    /// The cluster's block-hash key.
    HashKey = 1,
    /// A backup's catalog entry.
    Entry = 2,
    /// A backup's file list.
    FileList = 3,
    /// A backup's `backup_manifest`.
    Manifest = 4,
    /// A backup's pin marker (`pinned`): the time it was pinned.
    Pin = 5,
    /// The cluster's block dictionary.
    Dictionary = 6,
}

fn binding(kind: ObjectKind, id: &str) -> Vec<u8> {
    let mut b = vec![kind as u8, id.len() as u8];
    b.extend_from_slice(id.as_bytes());
    b
}

/// Encodes one object, bytes in, bytes out.
pub(crate) enum ObjectEncoder {
    Sealed(Box<Sealer>),
    Plain { pending: Vec<u8> },
}

impl std::fmt::Debug for ObjectEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sealed(_) => f.write_str("ObjectEncoder::Sealed"),
            Self::Plain { .. } => f.write_str("ObjectEncoder::Plain"),
        }
    }
}

impl ObjectEncoder {
    /// An encoder and the object's first bytes (header and binding).
    pub(crate) fn new(
        keyring: Option<&Keyring>,
        kind: ObjectKind,
        id: &str,
        rng: &dyn SecureRandom,
        path: &Path,
    ) -> Result<(Self, Vec<u8>), BackupStoreError> {
        let bind = binding(kind, id);
        match keyring {
            Some(ring) => {
                let opts = SealOptions {
                    chunk_size: CHUNK,
                    ..SealOptions::default()
                };
                let (mut sealer, mut head) =
                    Sealer::new(ring, &opts, rng).map_err(|source| BackupStoreError::Crypto {
                        action: "seal",
                        path: path.to_owned(),
                        source,
                    })?;
                let more = sealer
                    .update(&bind)
                    .map_err(|source| BackupStoreError::Crypto {
                        action: "seal",
                        path: path.to_owned(),
                        source,
                    })?;
                head.extend_from_slice(&more);
                Ok((Self::Sealed(Box::new(sealer)), head))
            }
            None => {
                let mut head = PLAIN_MAGIC.to_vec();
                head.push(PLAIN_VERSION);
                Ok((Self::Plain { pending: bind }, head))
            }
        }
    }

    /// Encodes more plaintext; returns the bytes that are ready.
    pub(crate) fn update(&mut self, data: &[u8], path: &Path) -> Result<Vec<u8>, BackupStoreError> {
        match self {
            Self::Sealed(s) => s.update(data).map_err(|source| BackupStoreError::Crypto {
                action: "seal",
                path: path.to_owned(),
                source,
            }),
            Self::Plain { pending } => {
                pending.extend_from_slice(data);
                let mut out = Vec::new();
                while pending.len() > CHUNK {
                    let rest = pending.split_off(CHUNK);
                    plain_chunk(&mut out, pending, false);
                    *pending = rest;
                }
                Ok(out)
            }
        }
    }

    /// The object's last bytes.
    pub(crate) fn finish(self, path: &Path) -> Result<Vec<u8>, BackupStoreError> {
        match self {
            Self::Sealed(s) => s.finish().map_err(|source| BackupStoreError::Crypto {
                action: "seal",
                path: path.to_owned(),
                source,
            }),
            Self::Plain { pending } => {
                let mut out = Vec::new();
                plain_chunk(&mut out, &pending, true);
                Ok(out)
            }
        }
    }
}

fn plain_chunk(out: &mut Vec<u8>, data: &[u8], last: bool) {
    let start = out.len();
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.push(u8::from(last));
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[start..start + 5]), data);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(data);
}

/// The whole encoded object of `data` (`path` names it in errors).
#[doc(hidden)]
pub fn encode(
    keyring: Option<&Keyring>,
    kind: ObjectKind,
    id: &str,
    data: &[u8],
    rng: &dyn SecureRandom,
    path: &Path,
) -> Result<Vec<u8>, BackupStoreError> {
    let (mut enc, mut out) = ObjectEncoder::new(keyring, kind, id, rng, path)?;
    out.extend(enc.update(data, path)?);
    out.extend(enc.finish(path)?);
    Ok(out)
}

/// An object being written into a file (in a staging directory), streamed.
#[derive(Debug)]
pub(crate) struct ObjectFile {
    file: File,
    path: PathBuf,
    encoder: ObjectEncoder,
}

impl ObjectFile {
    pub(crate) fn create(
        path: &Path,
        keyring: Option<&Keyring>,
        kind: ObjectKind,
        id: &str,
        rng: &dyn SecureRandom,
    ) -> Result<Self, BackupStoreError> {
        let (encoder, head) = ObjectEncoder::new(keyring, kind, id, rng, path)?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| BackupStoreError::io(FsAction::Create, path, e))?;
        file.write_all(&head)
            .map_err(|e| BackupStoreError::io(FsAction::Write, path, e))?;
        Ok(Self {
            file,
            path: path.to_owned(),
            encoder,
        })
    }

    pub(crate) fn write(&mut self, data: &[u8]) -> Result<(), BackupStoreError> {
        let out = self.encoder.update(data, &self.path)?;
        if !out.is_empty() {
            self.file
                .write_all(&out)
                .map_err(|e| BackupStoreError::io(FsAction::Write, &self.path, e))?;
        }
        Ok(())
    }

    /// Writes the end of the object and fsyncs it.
    pub(crate) fn finish(self) -> Result<(), BackupStoreError> {
        let Self {
            mut file,
            path,
            encoder,
        } = self;
        let out = encoder.finish(&path)?;
        file.write_all(&out)
            .map_err(|e| BackupStoreError::io(FsAction::Write, &path, e))?;
        // The object must be on disk before its directory is renamed into the catalog.
        file.sync_all()
            .map_err(|e| BackupStoreError::io(FsAction::Fsync, &path, e))
    }
}

enum Decoder<'k> {
    Sealed(Box<Opener<'k>>),
    Plain { done: bool },
}

/// Reads an object back, streamed, through its checks.
pub(crate) struct ObjectReader<'k, R = File> {
    file: R,
    path: PathBuf,
    decoder: Decoder<'k>,
    /// Plaintext decoded and not yet taken.
    out: Vec<u8>,
    taken: usize,
    /// The file is read to its end and the object checked whole.
    ended: bool,
}

impl<R> std::fmt::Debug for ObjectReader<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectReader")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl<'k> ObjectReader<'k> {
    /// Opens the object at `path`, checking that it is `kind` of backup `id`; `None` if
    /// there is no such file.
    pub(crate) fn open(
        path: &Path,
        keyring: Option<&'k Keyring>,
        kind: ObjectKind,
        id: &str,
    ) -> Result<Option<Self>, BackupStoreError> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(BackupStoreError::io(FsAction::Open, path, e)),
        };
        ObjectReader::from_reader(file, path, keyring, kind, id).map(Some)
    }
}

impl<'k, R: Read> ObjectReader<'k, R> {
    /// Starts reading the object in `file` (named `path` in errors), checking that it is
    /// `kind` of backup `id`.
    pub(crate) fn from_reader(
        mut file: R,
        path: &Path,
        keyring: Option<&'k Keyring>,
        kind: ObjectKind,
        id: &str,
    ) -> Result<Self, BackupStoreError> {
        let mut magic = [0u8; 8];
        let n = read_full(&mut file, &mut magic, path)?;
        let decoder = if n == 8 && magic == klio_crypto::MAGIC {
            let Some(ring) = keyring else {
                return Err(BackupStoreError::Encrypted {
                    path: path.to_owned(),
                });
            };
            Decoder::Sealed(Box::new(Opener::new(ring)))
        } else if n >= 5 && magic[..4] == PLAIN_MAGIC && magic[4] == PLAIN_VERSION {
            Decoder::Plain { done: false }
        } else {
            return Err(damaged(path, ObjectDamage::BadMagic));
        };
        let mut reader = Self {
            file,
            path: path.to_owned(),
            decoder,
            out: Vec::new(),
            taken: 0,
            ended: false,
        };
        match &mut reader.decoder {
            Decoder::Sealed(opener) => {
                let plain = opener
                    .feed(&magic[..n])
                    .map_err(|e| crypto_error(path, e))?;
                reader.out.extend(plain);
            }
            Decoder::Plain { .. } => {
                // Three bytes after the 5-byte header were read already: the first chunk's.
                reader.out.clear();
                reader.pending_plain_prefix(&magic[5..n])?;
            }
        }
        let want = binding(kind, id);
        let got = reader.read_exact(want.len())?;
        if got.as_deref() != Some(&want[..]) {
            return Err(damaged(path, ObjectDamage::OtherObject));
        }
        Ok(reader)
    }

    /// The path of the object's file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Handles the bytes of a plain object's first chunk already read with the magic.
    fn pending_plain_prefix(&mut self, prefix: &[u8]) -> Result<(), BackupStoreError> {
        let mut header = [0u8; CHUNK_HEADER];
        header[..prefix.len()].copy_from_slice(prefix);
        let n = read_full(&mut self.file, &mut header[prefix.len()..], &self.path)?;
        if prefix.len() + n < CHUNK_HEADER {
            return Err(damaged(&self.path, ObjectDamage::Truncated));
        }
        self.plain_chunk_body(header)
    }

    fn plain_chunk_body(&mut self, header: [u8; CHUNK_HEADER]) -> Result<(), BackupStoreError> {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let last = match header[4] {
            0 => false,
            1 => true,
            _ => {
                return Err(damaged(
                    &self.path,
                    ObjectDamage::Malformed("bad chunk flag"),
                ));
            }
        };
        if len > CHUNK {
            return Err(damaged(
                &self.path,
                ObjectDamage::Malformed("chunk too long"),
            ));
        }
        let stored = u32::from_le_bytes([header[5], header[6], header[7], header[8]]);
        let mut data = vec![0u8; len];
        if read_full(&mut self.file, &mut data, &self.path)? < len {
            return Err(damaged(&self.path, ObjectDamage::Truncated));
        }
        if crc32c::crc32c_append(crc32c::crc32c(&header[..5]), &data) != stored {
            return Err(damaged(&self.path, ObjectDamage::CrcMismatch));
        }
        self.out.extend_from_slice(&data);
        if last {
            let mut extra = [0u8; 1];
            if read_full(&mut self.file, &mut extra, &self.path)? != 0 {
                return Err(damaged(&self.path, ObjectDamage::TrailingData));
            }
            self.decoder = Decoder::Plain { done: true };
            self.ended = true;
        }
        Ok(())
    }

    /// Decodes more plaintext into the buffer; `false` at the end of the object.
    fn decode_more(&mut self) -> Result<bool, BackupStoreError> {
        if self.ended {
            return Ok(false);
        }
        if self.taken > 0 {
            self.out.drain(..self.taken);
            self.taken = 0;
        }
        match &mut self.decoder {
            Decoder::Plain { done: true } => Ok(false),
            Decoder::Plain { done: false } => {
                let mut header = [0u8; CHUNK_HEADER];
                if read_full(&mut self.file, &mut header, &self.path)? < CHUNK_HEADER {
                    return Err(damaged(&self.path, ObjectDamage::Truncated));
                }
                self.plain_chunk_body(header)?;
                Ok(true)
            }
            Decoder::Sealed(opener) => {
                let mut buf = vec![0u8; 256 << 10];
                let n = read_full(&mut self.file, &mut buf, &self.path)?;
                if n == 0 {
                    let Decoder::Sealed(opener) =
                        std::mem::replace(&mut self.decoder, Decoder::Plain { done: true })
                    else {
                        return Ok(false);
                    };
                    opener.finish().map_err(|e| crypto_error(&self.path, e))?;
                    self.ended = true;
                    return Ok(false);
                }
                opener
                    .feed_into(&buf[..n], &mut self.out)
                    .map_err(|e| crypto_error(&self.path, e))?;
                Ok(true)
            }
        }
    }

    /// Exactly `n` more bytes; `None` at a clean end of the object (no byte left); a partial
    /// read is damage.
    pub(crate) fn read_exact(&mut self, n: usize) -> Result<Option<Vec<u8>>, BackupStoreError> {
        while self.out.len() - self.taken < n {
            if !self.decode_more()? {
                if self.out.len() == self.taken {
                    return Ok(None);
                }
                return Err(damaged(&self.path, ObjectDamage::Truncated));
            }
        }
        let piece = self.out[self.taken..self.taken + n].to_vec();
        self.taken += n;
        Ok(Some(piece))
    }

    /// The next plaintext bytes (at most `max`), `None` at the end; the end is only reported
    /// once the object was checked whole.
    pub(crate) fn read_some(&mut self, max: usize) -> Result<Option<Vec<u8>>, BackupStoreError> {
        while self.out.len() == self.taken {
            if !self.decode_more()? {
                return Ok(None);
            }
        }
        let n = max.min(self.out.len() - self.taken);
        let piece = self.out[self.taken..self.taken + n].to_vec();
        self.taken += n;
        Ok(Some(piece))
    }

    /// Checks that nothing is left: the object ends here and is whole.
    pub(crate) fn expect_end(&mut self) -> Result<(), BackupStoreError> {
        match self.read_some(1)? {
            None => Ok(()),
            Some(_) => Err(damaged(&self.path, ObjectDamage::TrailingData)),
        }
    }

    /// The rest of the object, checked whole.
    pub(crate) fn read_to_end(&mut self) -> Result<Vec<u8>, BackupStoreError> {
        let mut all = Vec::new();
        while let Some(piece) = self.read_some(CHUNK)? {
            all.extend(piece);
        }
        Ok(all)
    }
}

fn read_full(file: &mut impl Read, buf: &mut [u8], path: &Path) -> Result<usize, BackupStoreError> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(BackupStoreError::io(FsAction::Read, path, e)),
        }
    }
    Ok(n)
}

pub(crate) fn damaged(path: &Path, reason: ObjectDamage) -> BackupStoreError {
    BackupStoreError::DamagedFile {
        path: path.to_owned(),
        reason,
    }
}

/// The plaintext of the object `bytes` (named `path` in errors), checked whole as `kind` of
/// backup `id`: [`ObjectReader`] on bytes in memory.
/// The plaintext of the cluster-wide object of `kind` at `path` (bound to no backup, like
/// the block-hash key and the dictionary); `None` if there is no such file.
pub(crate) fn read_cluster_object(
    path: &Path,
    keyring: Option<&Keyring>,
    kind: ObjectKind,
) -> Result<Option<Vec<u8>>, BackupStoreError> {
    match ObjectReader::open(path, keyring, kind, "")? {
        Some(mut reader) => reader.read_to_end().map(Some),
        None => Ok(None),
    }
}

#[doc(hidden)]
pub fn read_object(
    bytes: &[u8],
    path: &Path,
    keyring: Option<&Keyring>,
    kind: ObjectKind,
    id: &str,
) -> Result<Vec<u8>, BackupStoreError> {
    ObjectReader::from_reader(bytes, path, keyring, kind, id)?.read_to_end()
}

fn crypto_error(path: &Path, source: klio_crypto::CryptoError) -> BackupStoreError {
    BackupStoreError::Crypto {
        action: "open",
        path: path.to_owned(),
        source,
    }
}
