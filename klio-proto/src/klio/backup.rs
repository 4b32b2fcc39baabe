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

use super::BlockDictionary;

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
    /// One zstd frame. What [`Block::compress`] writes (level 1): on PostgreSQL pages it
    /// stores about half of what LZ4 does, at well over 1 GB/s per core.
    Zstd,
    /// An LZ4 block compressed against the cluster's [`BlockDictionary`]: its matches may
    /// reach into the dictionary, so it decompresses only with that dictionary at hand.
    Lz4Dictionary,
}

impl BlockCompression {
    /// Its code on the wire and in pack records.
    pub fn to_u8(self) -> u8 {
        match self {
            Self::None => 0,
            Self::Lz4 => 1,
            Self::Zstd => 2,
            Self::Lz4Dictionary => 3,
        }
    }

    /// The compression of a code (`None`: one this version does not know).
    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::None),
            1 => Some(Self::Lz4),
            2 => Some(Self::Zstd),
            3 => Some(Self::Lz4Dictionary),
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

/// The zstd level of [`Block::compress`]: level 1 keeps compression faster than
/// `BASE_BACKUP` delivers pages; higher levels gain a few percent for several times the CPU.
pub const BLOCK_ZSTD_LEVEL: i32 = 1;

/// The largest plaintext a block may have: blocks are cut at 64 KiB; anything larger is
/// refused before it is decompressed.
pub const MAX_BLOCK_LEN: u32 = 1 << 20;

/// A block's bytes do not decompress to its plaintext length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlockDecodeError {
    /// The declared plaintext is larger than any block.
    #[error("the block declares {plain_len} bytes, more than the {MAX_BLOCK_LEN} a block may have")]
    TooLarge {
        /// The declared length.
        plain_len: u32,
    },
    /// The compressed bytes are damaged or not of the declared compression.
    #[error("the block's compressed bytes do not decompress")]
    Undecompressible,
    /// The block is compressed against a dictionary, and none was given to decompress it.
    #[error("the block is compressed against the cluster's dictionary, which is not at hand")]
    NeedsDictionary,
    /// The bytes decompress to another length than declared.
    #[error("the block decompresses to {actual} bytes, not the {expected} it declares")]
    WrongLength {
        /// The declared length.
        expected: u32,
        /// What came out.
        actual: usize,
    },
}

thread_local! {
    // One context per thread for each direction: creating one per block costs more than
    // compressing a page.
    static ZSTD_COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
    static ZSTD_DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

impl Block {
    /// The block of `plain` named `hash`, as sent and stored: a zstd frame when that is
    /// smaller, else the plaintext as is. `plain` must be at most [`MAX_BLOCK_LEN`] bytes.
    pub fn compress(hash: BlockHash, plain: Bytes) -> Self {
        Self::compress_with(hash, plain, BlockCompression::Zstd)
    }

    /// Like [`Block::compress`], with `codec`: zstd (level [`BLOCK_ZSTD_LEVEL`]) or LZ4
    /// (about twice as fast, about 1.7 times the bytes on PostgreSQL pages); `None` stores
    /// the plaintext.
    ///
    /// [`BlockCompression::Lz4Dictionary`] needs a dictionary: use
    /// [`Block::compress_against`]; given here, it compresses as plain LZ4.
    pub fn compress_with(hash: BlockHash, plain: Bytes, codec: BlockCompression) -> Self {
        Self::pack(hash, plain, codec, None)
    }

    /// The block of `plain` named `hash` as an LZ4 block compressed against `dictionary`
    /// ([`BlockCompression::Lz4Dictionary`]), or the plaintext as is when that is not
    /// smaller. The dictionary's earlier bytes give every block the context that compressing
    /// 64 KiB on its own lacks: on pgbench data, 16 KiB of samples store about 5% less.
    pub fn compress_against(hash: BlockHash, plain: Bytes, dictionary: &BlockDictionary) -> Self {
        Self::pack(
            hash,
            plain,
            BlockCompression::Lz4Dictionary,
            Some(dictionary),
        )
    }

    fn pack(
        hash: BlockHash,
        plain: Bytes,
        codec: BlockCompression,
        dictionary: Option<&BlockDictionary>,
    ) -> Self {
        // Blocks are cut at 64 KiB: their length fits a u32.
        let plain_len = plain.len() as u32;
        let (codec, packed) = match (codec, dictionary) {
            (BlockCompression::None, _) => (codec, None),
            (BlockCompression::Lz4Dictionary, Some(dictionary)) => (
                codec,
                Some(lz4_flex::block::compress_with_dict(
                    &plain,
                    dictionary.as_bytes(),
                )),
            ),
            (BlockCompression::Lz4 | BlockCompression::Lz4Dictionary, _) => (
                BlockCompression::Lz4,
                Some(lz4_flex::block::compress(&plain)),
            ),
            (BlockCompression::Zstd, _) => (
                codec,
                ZSTD_COMPRESSOR.with(|cell| {
                    let mut slot = cell.borrow_mut();
                    if slot.is_none() {
                        *slot = zstd::bulk::Compressor::new(BLOCK_ZSTD_LEVEL).ok();
                    }
                    slot.as_mut().and_then(|c| c.compress(&plain).ok())
                }),
            ),
        };
        match packed {
            Some(packed) if packed.len() < plain.len() => Self {
                hash,
                plain_len,
                compression: codec,
                data: Bytes::from(packed),
            },
            _ => Self {
                hash,
                plain_len,
                compression: BlockCompression::None,
                data: plain,
            },
        }
    }

    /// The block's plaintext, of exactly [`Block::plain_len`] bytes. Its hash is not checked
    /// here (that needs the cluster's key). A block compressed against a dictionary is
    /// refused ([`BlockDecodeError::NeedsDictionary`]): see [`Block::decompress_with`].
    pub fn decompress(&self) -> Result<Vec<u8>, BlockDecodeError> {
        self.decompress_with(None)
    }

    /// Like [`Block::decompress`], with the cluster's dictionary for blocks compressed
    /// against it. A wrong dictionary gives an error or a wrong plaintext, which the keyed
    /// hash check that must follow catches.
    pub fn decompress_with(
        &self,
        dictionary: Option<&BlockDictionary>,
    ) -> Result<Vec<u8>, BlockDecodeError> {
        if self.plain_len > MAX_BLOCK_LEN {
            return Err(BlockDecodeError::TooLarge {
                plain_len: self.plain_len,
            });
        }
        let mut plain = vec![0; self.plain_len as usize];
        self.decompress_into(dictionary, &mut plain)?;
        Ok(plain)
    }

    /// Like [`Block::decompress_with`], into `out`, which must be exactly
    /// [`Block::plain_len`] bytes long (else [`BlockDecodeError::WrongLength`]): a restore
    /// decompresses each block straight to its place in the buffer it writes from.
    pub fn decompress_into(
        &self,
        dictionary: Option<&BlockDictionary>,
        out: &mut [u8],
    ) -> Result<(), BlockDecodeError> {
        if self.plain_len > MAX_BLOCK_LEN {
            return Err(BlockDecodeError::TooLarge {
                plain_len: self.plain_len,
            });
        }
        let wrong_length = |actual: usize| BlockDecodeError::WrongLength {
            expected: self.plain_len,
            actual,
        };
        if out.len() != self.plain_len as usize {
            return Err(wrong_length(out.len()));
        }
        let written = match self.compression {
            BlockCompression::None => {
                if self.data.len() != out.len() {
                    return Err(wrong_length(self.data.len()));
                }
                out.copy_from_slice(&self.data);
                out.len()
            }
            BlockCompression::Lz4 => lz4_flex::block::decompress_into(&self.data, out)
                .map_err(|_| BlockDecodeError::Undecompressible)?,
            BlockCompression::Lz4Dictionary => {
                let dictionary = dictionary.ok_or(BlockDecodeError::NeedsDictionary)?;
                lz4_flex::block::decompress_into_with_dict(&self.data, out, dictionary.as_bytes())
                    .map_err(|_| BlockDecodeError::Undecompressible)?
            }
            BlockCompression::Zstd => ZSTD_DECOMPRESSOR.with(|cell| {
                let mut slot = cell.borrow_mut();
                if slot.is_none() {
                    *slot = zstd::bulk::Decompressor::new().ok();
                }
                slot.as_mut()
                    .ok_or(BlockDecodeError::Undecompressible)?
                    .decompress_to_buffer(&self.data, out)
                    .map_err(|_| BlockDecodeError::Undecompressible)
            })?,
        };
        if written != out.len() {
            return Err(wrong_length(written));
        }
        Ok(())
    }
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

/// How a backup's files were read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptureMethod {
    /// `BASE_BACKUP` over a replication connection: PostgreSQL read the files and sent them
    /// as one stream (the only method of backups taken before there was a choice).
    #[default]
    Stream,
    /// Read from the data directory by the client on the PostgreSQL host, between
    /// `pg_backup_start` and `pg_backup_stop`, by parallel readers.
    Local,
}

impl CaptureMethod {
    /// Its name in the catalog and in messages: `stream`, `local`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stream => "stream",
            Self::Local => "local",
        }
    }

    /// Its wire byte.
    pub(crate) fn to_u8(self) -> u8 {
        match self {
            Self::Stream => 0,
            Self::Local => 1,
        }
    }

    /// The method of a wire byte (`None`: unknown).
    pub(crate) fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::Stream),
            1 => Some(Self::Local),
            _ => None,
        }
    }
}

impl fmt::Display for CaptureMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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
    /// How the files were read (a trailing byte; absent from older clients: `Stream`).
    pub capture: CaptureMethod,
}
