//! The values of the backup messages: block hashes, blocks, file entries and the facts a
//! client reports when a backup's data is all sent.
//!
//! A backup is a list of files; a regular file's contents are a list of blocks, cut at fixed
//! offsets, each named by a keyed hash ([`BlockHash`]) that the client computes with the
//! cluster's block-hash key (given by the server in [`super::Message::HashKey`]). The server
//! holds every block once per cluster; a file entry only refers to blocks by hash.

use std::fmt;

use bytes::Bytes;
use klio_wal::WalPosition;

/// Length of a [`BlockHash`].
pub const BLOCK_HASH_LEN: usize = 32;

/// The keyed hash (HMAC-SHA-256 under the cluster's block-hash key) of a block's plaintext:
/// its name in the cluster's block store.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockHash(pub [u8; BLOCK_HASH_LEN]);

impl fmt::Display for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockHash({self})")
    }
}

/// How a block's bytes are compressed on the wire (and in the pack files).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlockCompression {
    /// Stored as is (it did not compress).
    None,
    /// An LZ4 block (`lz4_flex::block`), without a size prefix: the plaintext length is
    /// [`Block::plain_len`].
    Lz4,
}

impl BlockCompression {
    pub(crate) fn to_u8(self) -> u8 {
        match self {
            Self::None => 0,
            Self::Lz4 => 1,
        }
    }

    pub(crate) fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::None),
            1 => Some(Self::Lz4),
            _ => None,
        }
    }
}

/// One block of file data, compressed, with the hash of its plaintext.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// The keyed hash of the plaintext.
    pub hash: BlockHash,
    /// The plaintext's length.
    pub plain_len: u32,
    /// How `data` is compressed.
    pub compression: BlockCompression,
    /// The (compressed) bytes.
    pub data: Bytes,
}

/// What a file entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file, whose contents are its blocks.
    File,
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink {
        /// Where it points, as PostgreSQL sent it (never trusted as a local path at restore).
        target: String,
    },
}

/// One file of a backup: its path relative to the data directory (tablespace files under
/// `pg_tblspc/<oid>/`), its metadata and the hashes of its blocks in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// The path, `/`-separated, relative, without `..` (checked by the tar reader).
    pub path: String,
    /// File, directory or symlink.
    pub kind: FileKind,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    /// The file's length in bytes (0 for directories and symlinks).
    pub size: u64,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
    /// Hashes of its blocks, in file order. More may follow in
    /// [`super::Message::FileBlocks`] messages when a file has more than
    /// [`MAX_HASHES_PER_MESSAGE`] blocks.
    pub blocks: Vec<BlockHash>,
}

/// The most block hashes one message carries (2 MiB of hashes): longer lists are split into
/// [`super::Message::FileBlocks`] continuations, so frames stay far below the frame limit.
pub const MAX_HASHES_PER_MESSAGE: usize = 65_536;

/// A tablespace of a backup, as `BASE_BACKUP` listed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TablespaceInfo {
    /// Its OID (the name of its `pg_tblspc` link).
    pub oid: u32,
    /// Its location on the backed-up host.
    pub location: String,
}

/// What the client reports once all files and the manifest are sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupFinish {
    /// The label given to `BASE_BACKUP`.
    pub label: String,
    /// Where the backup starts (its checkpoint's redo point).
    pub start: WalPosition,
    /// Where it ends: recovery must reach this LSN to be consistent.
    pub end: WalPosition,
    /// When the backup started, milliseconds since the Unix epoch (client clock).
    pub started_at_ms: i64,
    /// When PostgreSQL finished sending it, milliseconds since the Unix epoch (client clock).
    pub ended_at_ms: i64,
    /// PostgreSQL's `server_version_num`.
    pub pg_version: u32,
    /// The tablespaces other than the data directory.
    pub tablespaces: Vec<TablespaceInfo>,
    /// The block size the client cut files with.
    pub block_size: u32,
    /// How long the server may wait for send-wal to deliver the WAL up to `end`, in seconds.
    pub wal_timeout_s: u32,
}
