//! What can go wrong in a cluster's backup store, with the file, the block or the backup.

use std::fmt;
use std::path::PathBuf;

use klio_crypto::CryptoError;
use klio_crypto::journal_frame::FrameAeadError;
use klio_proto::klio::{BlockHash, CatalogEntryError};
use klio_wal::FsError;

/// Why a backup store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupStoreError {
    /// A file-system call failed.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// Sealing or opening an encrypted object failed (a missing key is reported here, with
    /// the key id, by the source).
    #[error("could not {action} {path:?}")]
    Crypto {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cryptographic failure.
        #[source]
        source: CryptoError,
    },
    /// Sealing a block record failed.
    #[error("could not {action} {path:?}")]
    Frame {
        /// What was being done.
        action: &'static str,
        /// The pack file.
        path: PathBuf,
        /// The AEAD failure.
        #[source]
        source: FrameAeadError,
    },
    /// A file is encrypted but the server has no keyring.
    #[error(
        "{path:?} is encrypted, but this server runs without encryption keys: start it with the \
         keys the backups were written with"
    )]
    Encrypted {
        /// The file.
        path: PathBuf,
    },
    /// A stored block failed its checks: it is never returned.
    #[error(
        "block {hash} in pack file {pack:?} is damaged ({reason}): restore the pack from another \
         copy of the server's data, or take a new backup"
    )]
    DamagedBlock {
        /// The pack file.
        pack: PathBuf,
        /// The block asked for.
        hash: BlockHash,
        /// What is wrong.
        reason: BlockDamage,
    },
    /// A block sent for storing is not what its hash names: refused, never stored.
    #[error("block {hash} is refused: {problem} (a bug in the client, or a hostile one)")]
    RefusedBlock {
        /// The hash it was sent under.
        hash: BlockHash,
        /// What is wrong with it.
        problem: BlockProblem,
    },
    /// The cluster's block store does not hold a block.
    #[error(
        "block {hash} is in no pack file of {packs:?} (its pack file or index is missing): \
         restore them from another copy of the server's data, or take a new backup"
    )]
    MissingBlock {
        /// The packs directory.
        packs: PathBuf,
        /// The block.
        hash: BlockHash,
    },
    /// A pack file's header is damaged, so none of its blocks can be read.
    #[error(
        "pack file {path:?} is damaged ({reason}): restore it from another copy of the server's \
         data, or move it away and take a new backup"
    )]
    DamagedPack {
        /// The pack file.
        path: PathBuf,
        /// What is wrong.
        reason: ObjectDamage,
    },
    /// A catalog file, an index or the block-hash key failed its checks.
    #[error("{path:?} is damaged ({reason}): restore it from another copy of the server's data")]
    DamagedFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: ObjectDamage,
    },
    /// The cluster has backups but no block-hash key.
    #[error(
        "the block-hash key {path:?} is missing, so no block can be checked: restore it from \
         another copy of the server's data (a new key would match no stored block)"
    )]
    MissingHashKey {
        /// Where it should be.
        path: PathBuf,
    },
    /// A catalog entry holds bytes that are not a valid entry.
    #[error("catalog entry {path:?} cannot be read: restore it from another copy")]
    BadEntry {
        /// The `entry.json` file.
        path: PathBuf,
        /// Why it is not an entry.
        #[source]
        source: CatalogEntryError,
    },
    /// No backup of that id in the catalog.
    #[error("the catalog has no backup {id:?}: `klio backup list` shows the backups there are")]
    NoSuchBackup {
        /// The id asked for.
        id: String,
    },
    /// A backup id that the server would never give.
    #[error(
        "{id:?} is not a backup id: ids are 1 to 64 letters, digits and '-', as `klio backup \
         list` prints them"
    )]
    InvalidBackupId {
        /// What was given.
        id: String,
    },
    /// The backup is pinned: it is never deleted, by retention or by hand, while it is.
    #[error(
        "backup {id} is pinned and is not deleted: run `klio backup unpin {id}` first if it \
         really is no longer needed"
    )]
    Pinned {
        /// The backup.
        id: String,
    },
    /// A backup's pin marker fails its checks: whether it is pinned is unknown, so it is
    /// treated as neither (not listed, not deleted).
    #[error(
        "the pin marker of backup {id} cannot be read: run `klio backup pin {id}` to write it \
         again, or `klio backup unpin {id}` to remove it"
    )]
    DamagedPin {
        /// The backup.
        id: String,
        /// What is wrong with the marker (names the file).
        #[source]
        source: Box<Self>,
    },
    /// A backup of that id is already staged or in the catalog.
    #[error("backup {id} already exists: every backup session gets a new id")]
    BackupExists {
        /// The id.
        id: String,
    },
    /// What a client sent cannot go into a file list.
    #[error("the file list of backup {backup} refuses this: {problem}")]
    InvalidFileList {
        /// The backup being written.
        backup: String,
        /// What is wrong.
        problem: FileListProblem,
    },
    /// A file of a backup cannot be restored (verification).
    #[error("backup {backup}: file {path:?} cannot be restored")]
    DamagedBackupFile {
        /// The backup.
        backup: String,
        /// The file's path in the backup.
        path: String,
        /// Why (names the block and the pack).
        #[source]
        source: Box<Self>,
    },
}

impl BackupStoreError {
    pub(crate) fn io(
        action: klio_wal::FsAction,
        path: &std::path::Path,
        e: std::io::Error,
    ) -> Self {
        Self::Fs(FsError::new(action, path, e))
    }

    /// Whether the error is damage found in stored data (not an I/O failure or a bad request):
    /// retrying will not help.
    pub fn is_damage(&self) -> bool {
        match self {
            Self::DamagedBlock { .. }
            | Self::MissingBlock { .. }
            | Self::DamagedPack { .. }
            | Self::DamagedFile { .. }
            | Self::BadEntry { .. }
            | Self::MissingHashKey { .. }
            | Self::Encrypted { .. }
            | Self::DamagedBackupFile { .. } => true,
            Self::Crypto { source, .. } => !matches!(source, CryptoError::Random),
            _ => false,
        }
    }
}

/// What is wrong with a stored block.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlockDamage {
    /// The record's CRC-32C does not match.
    CrcMismatch,
    /// The record does not authenticate (AES-GCM).
    Unauthentic,
    /// The pack ends inside the record.
    Truncated,
    /// The index points at a record of another block, or at no record at all.
    IndexMismatch,
    /// The record's header is malformed.
    BadHeader,
    /// The stored bytes do not decompress to a block of its hash.
    Content(BlockProblem),
}

impl fmt::Display for BlockDamage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CrcMismatch => f.write_str("its CRC-32C does not match"),
            Self::Unauthentic => f.write_str("it does not authenticate with its pack's key"),
            Self::Truncated => f.write_str("the pack file ends inside it"),
            Self::IndexMismatch => {
                f.write_str("the pack index points at another block or at no block")
            }
            Self::BadHeader => f.write_str("its record header is malformed"),
            Self::Content(p) => write!(f, "{p}"),
        }
    }
}

/// Why a block's bytes are not the block its hash names.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlockProblem {
    /// Its plaintext would be larger than any block.
    TooLarge {
        /// The claimed plaintext length.
        plain_len: u32,
    },
    /// The compressed data does not decompress.
    Undecompressible,
    /// It is compressed against the cluster's dictionary, and the cluster has none.
    NeedsDictionary,
    /// It decompresses (or is stored) to another length than its `plain_len`.
    WrongLength {
        /// The claimed length.
        expected: u32,
        /// The actual length.
        actual: usize,
    },
    /// The plaintext does not have the block's hash.
    HashMismatch,
}

impl fmt::Display for BlockProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { plain_len } => write!(
                f,
                "it claims {plain_len} bytes of plaintext, more than any block holds"
            ),
            Self::Undecompressible => f.write_str("its compressed data does not decompress"),
            Self::NeedsDictionary => f.write_str(
                "it is compressed against a block dictionary, and this cluster has none",
            ),
            Self::WrongLength { expected, actual } => write!(
                f,
                "it holds {actual} bytes of plaintext, not the {expected} it claims"
            ),
            Self::HashMismatch => f.write_str("its plaintext does not have its hash"),
        }
    }
}

/// What is wrong with a stored file of the backup store (not a block).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ObjectDamage {
    /// It does not start with the magic bytes of its format.
    BadMagic,
    /// A CRC-32C does not match.
    CrcMismatch,
    /// It ends early.
    Truncated,
    /// Bytes follow its end.
    TrailingData,
    /// It belongs to another object (another backup, or another kind of file).
    OtherObject,
    /// A field holds a value no writer produces.
    Malformed(&'static str),
}

impl fmt::Display for ObjectDamage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMagic => f.write_str("it does not start with the magic bytes of its format"),
            Self::CrcMismatch => f.write_str("a CRC-32C does not match"),
            Self::Truncated => f.write_str("it ends early"),
            Self::TrailingData => f.write_str("bytes follow its end"),
            Self::OtherObject => {
                f.write_str("it belongs to another backup or is another kind of file")
            }
            Self::Malformed(what) => write!(f, "{what}"),
        }
    }
}

/// Why a file entry or block list cannot go into a backup's file list.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileListProblem {
    /// The path is empty, absolute, has `..`, `.` or empty components, or a NUL.
    BadPath {
        /// The path.
        path: String,
    },
    /// The mode has bits beyond permissions, setuid, setgid and sticky.
    BadMode {
        /// The entry's path.
        path: String,
        /// The mode.
        mode: u32,
    },
    /// Block hashes came without a regular file before them.
    BlocksWithoutFile,
    /// A directory or symlink entry carries blocks.
    BlocksOfNonFile {
        /// The entry's path.
        path: String,
    },
    /// The files' sizes add up to more than a u64 counts: no real data directory.
    SizesOverflow {
        /// The entry whose size overflowed the total.
        path: String,
    },
}

impl fmt::Display for FileListProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadPath { path } => write!(
                f,
                "{path:?} is not a relative '/'-separated path inside the data directory"
            ),
            Self::BadMode { path, mode } => {
                write!(
                    f,
                    "{path:?} has mode {mode:#o}, more than permission bits (0o7777)"
                )
            }
            Self::BlocksWithoutFile => {
                f.write_str("block hashes were sent before any regular file entry")
            }
            Self::BlocksOfNonFile { path } => {
                write!(f, "{path:?} is not a regular file but has blocks")
            }
            Self::SizesOverflow { path } => write!(
                f,
                "the file sizes up to {path:?} add up to more than 2^64 bytes: \
                 send each file's real size"
            ),
        }
    }
}
