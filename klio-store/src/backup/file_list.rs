//! A backup's file list (`files`): its entries and their block hashes in order, written and
//! read as a stream, so that no backup's list is ever held whole in memory.
//!
//! # Format
//!
//! The plaintext of a protected object (see the `object` module) of kind file list, bound
//! to the backup id: a sequence of records, each starting with a tag byte.
//!
//! Entry (tag 1):
//!
//! | bytes | field |
//! |---|---|
//! | 1 | tag, 1 |
//! | 1 | kind: 0 file, 1 directory, 2 symlink |
//! | 4 | mode, u32 LE |
//! | 8 | size, u64 LE |
//! | 8 | mtime, i64 LE (seconds since the epoch) |
//! | 4 | path length `p`, u32 LE |
//! | p | path, UTF-8 |
//! | 4 | symlink target length `t`, u32 LE (0 unless a symlink) |
//! | t | target, UTF-8 |
//!
//! Blocks of the last entry (tag 2), at most [`MAX_HASHES_PER_MESSAGE`] per record:
//!
//! | bytes | field |
//! |---|---|
//! | 1 | tag, 2 |
//! | 4 | count `n`, u32 LE |
//! | 32·n | block hashes |
//!
//! End (tag 3), exactly once, last: entries (u64 LE), block references (u64 LE), logical
//! bytes (u64 LE), which the reader checks against what it read.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use klio_crypto::{Keyring, SecureRandom};
use klio_proto::klio::{BlockHash, FileEntry, FileKind, MAX_HASHES_PER_MESSAGE};

use super::error::{BackupStoreError, FileListProblem, ObjectDamage};
use super::object::{ObjectFile, ObjectKind, ObjectReader, damaged};

const TAG_ENTRY: u8 = 1;
const TAG_BLOCKS: u8 = 2;
const TAG_END: u8 = 3;
/// The longest path or link target accepted (PostgreSQL's MAXPGPATH is 1024).
const MAX_NAME_LEN: u32 = 4096;

/// What a file list counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileListTotals {
    /// Entries (files, directories, symlinks).
    pub files: u64,
    /// Block references.
    pub blocks: u64,
    /// Sum of the regular files' sizes.
    pub logical_bytes: u64,
}

/// Whether `path` is relative, `/`-separated, without `..`, `.` or empty components.
pub fn is_safe_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= MAX_NAME_LEN as usize
        && !path.contains('\0')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// A file list being written.
#[derive(Debug)]
pub(crate) struct FileListWriter {
    object: ObjectFile,
    backup: String,
    totals: FileListTotals,
    /// The last entry is a regular file (blocks may follow).
    in_file: bool,
    buf: Vec<u8>,
}

impl FileListWriter {
    pub(crate) fn create(
        path: &Path,
        keyring: Option<&Keyring>,
        backup: &str,
        rng: &dyn SecureRandom,
    ) -> Result<Self, BackupStoreError> {
        Ok(Self {
            object: ObjectFile::create(path, keyring, ObjectKind::FileList, backup, rng)?,
            backup: backup.to_owned(),
            totals: FileListTotals::default(),
            in_file: false,
            buf: Vec::new(),
        })
    }

    fn refuse(&self, problem: FileListProblem) -> BackupStoreError {
        BackupStoreError::InvalidFileList {
            backup: self.backup.clone(),
            problem,
        }
    }

    /// Adds an entry and its first blocks.
    pub(crate) fn add_entry(&mut self, entry: &FileEntry) -> Result<(), BackupStoreError> {
        if !is_safe_path(&entry.path) {
            return Err(self.refuse(FileListProblem::BadPath {
                path: entry.path.clone(),
            }));
        }
        let (kind, target) = match &entry.kind {
            FileKind::File => (0u8, ""),
            FileKind::Directory => (1, ""),
            FileKind::Symlink { target } => (2, target.as_str()),
        };
        if entry.mode > 0o7777 {
            return Err(self.refuse(FileListProblem::BadMode {
                path: entry.path.clone(),
                mode: entry.mode,
            }));
        }
        if kind != 0 && !entry.blocks.is_empty() {
            return Err(self.refuse(FileListProblem::BlocksOfNonFile {
                path: entry.path.clone(),
            }));
        }
        if target.len() > MAX_NAME_LEN as usize {
            return Err(self.refuse(FileListProblem::BadPath {
                path: entry.path.clone(),
            }));
        }
        let logical_bytes = match kind {
            0 => self.totals.logical_bytes.checked_add(entry.size),
            _ => Some(self.totals.logical_bytes),
        }
        .ok_or_else(|| {
            self.refuse(FileListProblem::SizesOverflow {
                path: entry.path.clone(),
            })
        })?;
        self.buf.clear();
        self.buf.push(TAG_ENTRY);
        self.buf.push(kind);
        self.buf.extend_from_slice(&entry.mode.to_le_bytes());
        self.buf.extend_from_slice(&entry.size.to_le_bytes());
        self.buf.extend_from_slice(&entry.mtime.to_le_bytes());
        self.buf
            .extend_from_slice(&(entry.path.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(entry.path.as_bytes());
        self.buf
            .extend_from_slice(&(target.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(target.as_bytes());
        let buf = std::mem::take(&mut self.buf);
        let written = self.object.write(&buf);
        self.buf = buf;
        written?;
        self.totals.files += 1;
        self.in_file = kind == 0;
        self.totals.logical_bytes = logical_bytes;
        self.add_blocks(&entry.blocks)
    }

    /// Adds more blocks of the last entry (a regular file).
    pub(crate) fn add_blocks(&mut self, blocks: &[BlockHash]) -> Result<(), BackupStoreError> {
        if blocks.is_empty() {
            return Ok(());
        }
        if !self.in_file {
            return Err(self.refuse(FileListProblem::BlocksWithoutFile));
        }
        for run in blocks.chunks(MAX_HASHES_PER_MESSAGE) {
            self.buf.clear();
            self.buf.push(TAG_BLOCKS);
            self.buf
                .extend_from_slice(&(run.len() as u32).to_le_bytes());
            for h in run {
                self.buf.extend_from_slice(&h.0);
            }
            let buf = std::mem::take(&mut self.buf);
            let written = self.object.write(&buf);
            self.buf = buf;
            written?;
        }
        self.totals.blocks += blocks.len() as u64;
        Ok(())
    }

    /// Writes the end record and makes the list durable.
    pub(crate) fn finish(mut self) -> Result<FileListTotals, BackupStoreError> {
        let t = self.totals;
        let mut end = vec![TAG_END];
        end.extend_from_slice(&t.files.to_le_bytes());
        end.extend_from_slice(&t.blocks.to_le_bytes());
        end.extend_from_slice(&t.logical_bytes.to_le_bytes());
        self.object.write(&end)?;
        self.object.finish()?;
        Ok(t)
    }
}

/// What a file list yields, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileListItem {
    /// An entry, with its first blocks (at most [`MAX_HASHES_PER_MESSAGE`]).
    Entry(FileEntry),
    /// More blocks of the last entry.
    Blocks(Vec<BlockHash>),
}

/// Reads a file list, streamed and checked: from its file in the store, or (for the fuzz
/// targets) from bytes in memory with [`FileListReader::from_bytes`].
#[derive(Debug)]
pub struct FileListReader<'k, R = File> {
    object: ObjectReader<'k, R>,
    /// The tag of the next record, read ahead while looking for an entry's first blocks.
    peeked_tag: Option<u8>,
    counted: FileListTotals,
    done: bool,
}

impl<'k> FileListReader<'k> {
    /// Opens the file list at `path` of backup `backup`.
    pub(crate) fn open(
        path: &Path,
        keyring: Option<&'k Keyring>,
        backup: &str,
    ) -> Result<Self, BackupStoreError> {
        let object = ObjectReader::open(path, keyring, ObjectKind::FileList, backup)?
            .ok_or_else(|| damaged(path, ObjectDamage::Truncated))?;
        Ok(Self::of_object(object))
    }
}

impl<'k, 'b> FileListReader<'k, &'b [u8]> {
    /// Reads the file list object `bytes` of backup `backup` (named `path` in errors).
    #[doc(hidden)]
    pub fn from_bytes(
        bytes: &'b [u8],
        path: &Path,
        keyring: Option<&'k Keyring>,
        backup: &str,
    ) -> Result<Self, BackupStoreError> {
        let object = ObjectReader::from_reader(bytes, path, keyring, ObjectKind::FileList, backup)?;
        Ok(Self::of_object(object))
    }
}

impl<'k, R: Read> FileListReader<'k, R> {
    fn of_object(object: ObjectReader<'k, R>) -> Self {
        Self {
            object,
            peeked_tag: None,
            counted: FileListTotals::default(),
            done: false,
        }
    }

    fn bytes(&mut self, n: usize) -> Result<Vec<u8>, BackupStoreError> {
        self.object
            .read_exact(n)?
            .ok_or_else(|| damaged(self.object.path(), ObjectDamage::Truncated))
    }

    fn u32(&mut self) -> Result<u32, BackupStoreError> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, BackupStoreError> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(&b);
        Ok(u64::from_le_bytes(a))
    }

    fn malformed(&self, what: &'static str) -> BackupStoreError {
        damaged(self.object.path(), ObjectDamage::Malformed(what))
    }

    fn tag(&mut self) -> Result<u8, BackupStoreError> {
        match self.peeked_tag.take() {
            Some(t) => Ok(t),
            None => Ok(self.bytes(1)?[0]),
        }
    }

    fn string(&mut self) -> Result<String, BackupStoreError> {
        let len = self.u32()?;
        if len > MAX_NAME_LEN {
            return Err(self.malformed("a path longer than any path"));
        }
        let b = self.bytes(len as usize)?;
        String::from_utf8(b).map_err(|_| self.malformed("a path that is not UTF-8"))
    }

    fn hashes(&mut self) -> Result<Vec<BlockHash>, BackupStoreError> {
        let n = self.u32()? as usize;
        if n == 0 || n > MAX_HASHES_PER_MESSAGE {
            return Err(self.malformed("a block record of a wrong length"));
        }
        let b = self.bytes(32 * n)?;
        self.counted.blocks += n as u64;
        Ok(b.chunks_exact(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                BlockHash(h)
            })
            .collect())
    }

    /// The next item; `None` after the end record (the list checked whole).
    pub fn next_item(&mut self) -> Result<Option<FileListItem>, BackupStoreError> {
        if self.done {
            return Ok(None);
        }
        match self.tag()? {
            TAG_ENTRY => {
                let kind = self.bytes(1)?[0];
                let mode = self.u32()?;
                let size = self.u64()?;
                let mtime = self.u64()? as i64;
                let path = self.string()?;
                let target = self.string()?;
                let kind = match kind {
                    0 => FileKind::File,
                    1 => FileKind::Directory,
                    2 => FileKind::Symlink { target },
                    _ => return Err(self.malformed("an unknown entry kind")),
                };
                self.counted.files += 1;
                if kind == FileKind::File {
                    // The writer refuses sizes that overflow: such a list was not written here.
                    self.counted.logical_bytes = self
                        .counted
                        .logical_bytes
                        .checked_add(size)
                        .ok_or_else(|| self.malformed("file sizes that add up past 2^64"))?;
                }
                let mut entry = FileEntry {
                    path,
                    kind,
                    mode,
                    size,
                    mtime,
                    blocks: Vec::new(),
                };
                let next = self.bytes(1)?[0];
                if next == TAG_BLOCKS && entry.kind == FileKind::File {
                    entry.blocks = self.hashes()?;
                } else {
                    self.peeked_tag = Some(next);
                }
                Ok(Some(FileListItem::Entry(entry)))
            }
            TAG_BLOCKS => Ok(Some(FileListItem::Blocks(self.hashes()?))),
            TAG_END => {
                let recorded = FileListTotals {
                    files: self.u64()?,
                    blocks: self.u64()?,
                    logical_bytes: self.u64()?,
                };
                if recorded != self.counted {
                    return Err(self.malformed("its totals do not match its records"));
                }
                self.object.expect_end()?;
                self.done = true;
                Ok(None)
            }
            _ => Err(self.malformed("an unknown record tag")),
        }
    }

    /// What was read so far (all of it after `next_item` returned `None`).
    pub fn totals(&self) -> FileListTotals {
        self.counted
    }
}
