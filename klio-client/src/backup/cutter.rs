//! From tar events to file entries and blocks, without I/O: the part of a capture that
//! decides what the server is asked and told.
//!
//! [`Cutter`] takes the [`TarEvent`]s of each archive in turn, cuts every regular file into
//! [`BLOCK_SIZE`] blocks at offsets 0, 64 KiB, 128 KiB, ... (the last one shorter, none for an
//! empty file), hashes each block with the cluster's [`BlockHashKey`] and collects the blocks
//! into a [`Batch`]. A file's entry joins the batch when its last block has been cut: it is
//! announced only after the batch it ends in has been exchanged, so never before all of its
//! blocks are held by the server. The caller exchanges a batch whenever
//! [`Cutter::batch_is_full`] says so, and the last one from [`Cutter::finish`].

use bytes::BytesMut;
use klio_crypto::BlockHashKey;
use klio_proto::klio::{BlockHash, FileEntry, FileKind};
use klio_proto::tar::{EntryKind, EntryPath, TarEntry, TarEvent};

use super::BLOCK_SIZE;
use super::batch::{Batch, BatchLimits};

/// Where an archive's entries go in the backup's file list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ArchiveRoot {
    /// `base.tar`: the data directory; its paths are kept as they are.
    DataDirectory,
    /// `<oid>.tar`: a tablespace, whose entries go under `pg_tblspc/<oid>/` (as
    /// `backup_manifest` names them).
    Tablespace {
        /// The tablespace's OID.
        oid: u32,
    },
}

/// What the archive reader yielded that a capture cannot record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CaptureFault {
    /// A file name that is not UTF-8 (the catalog stores names as text).
    #[error(
        "PostgreSQL sent the file name {path:?}, which is not UTF-8; Klio records names as UTF-8: rename that file in the data directory"
    )]
    PathNotUtf8 {
        /// The name, with the bytes that are not UTF-8 replaced.
        path: String,
    },
    /// A symbolic link whose target is not UTF-8.
    #[error(
        "PostgreSQL sent the symbolic link {path} with a target that is not UTF-8; Klio records targets as UTF-8: recreate the link with a UTF-8 target"
    )]
    LinkTargetNotUtf8 {
        /// The link's path in the backup.
        path: String,
    },
    /// The events came in an order the tar reader never yields (a bug in Klio).
    #[error("the tar reader yielded {event} {context}; this is a bug in Klio, please report it")]
    OutOfOrder {
        /// The event.
        event: &'static str,
        /// Where it came.
        context: &'static str,
    },
}

/// The entry whose contents are being read.
#[derive(Debug)]
enum OpenEntry {
    /// Nothing: between entries.
    None,
    /// A regular file: its entry with the hashes cut so far, the bytes of its next block, and
    /// how many of its bytes have not arrived yet.
    File {
        entry: FileEntry,
        partial: BytesMut,
        unread: u64,
    },
    /// A directory or symbolic link, complete at its `EntryEnd`.
    Other(FileEntry),
    /// An entry not recorded (the data directory's own root).
    Skipped,
}

/// Totals over everything cut.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CutTotals {
    /// File entries (files, directories, symbolic links).
    pub(crate) files: u64,
    /// Block references of all files.
    pub(crate) blocks: u64,
    /// Sum of the files' sizes.
    pub(crate) logical_bytes: u64,
}

/// Cuts the files of a backup's archives into blocks and batches them (see the module
/// documentation).
#[derive(Debug)]
pub(crate) struct Cutter {
    key: BlockHashKey,
    limits: BatchLimits,
    root: ArchiveRoot,
    open: OpenEntry,
    batch: Batch,
    totals: CutTotals,
}

impl Cutter {
    /// A cutter hashing with `key` and ending batches at `limits`.
    pub(crate) fn new(key: BlockHashKey, limits: BatchLimits) -> Self {
        Self {
            key,
            limits,
            root: ArchiveRoot::DataDirectory,
            open: OpenEntry::None,
            batch: Batch::default(),
            totals: CutTotals::default(),
        }
    }

    /// The events that follow belong to a new archive, placed at `root`.
    pub(crate) fn start_archive(&mut self, root: ArchiveRoot) -> Result<(), CaptureFault> {
        if !matches!(self.open, OpenEntry::None) {
            return Err(CaptureFault::OutOfOrder {
                event: "a new archive",
                context: "inside an entry",
            });
        }
        self.root = root;
        Ok(())
    }

    /// Takes the next event of the current archive.
    pub(crate) fn push(&mut self, event: TarEvent) -> Result<(), CaptureFault> {
        match event {
            TarEvent::Entry(entry) => self.entry(entry),
            TarEvent::Data(data) => {
                let OpenEntry::File {
                    entry,
                    partial,
                    unread,
                } = &mut self.open
                else {
                    return Err(CaptureFault::OutOfOrder {
                        event: "file data",
                        context: "outside a regular file",
                    });
                };
                let mut data = &data[..];
                while !data.is_empty() {
                    if partial.is_empty() {
                        // Exactly the block's length: a block holds no more memory than its
                        // bytes, however small the file (batches count bytes, not blocks).
                        partial.reserve(block_len(*unread));
                    }
                    let take = (BLOCK_SIZE - partial.len()).min(data.len());
                    partial.extend_from_slice(&data[..take]);
                    *unread = unread.saturating_sub(take as u64);
                    data = &data[take..];
                    if partial.len() == BLOCK_SIZE {
                        cut_block(&self.key, &mut self.batch, &mut entry.blocks, partial);
                    }
                }
                Ok(())
            }
            TarEvent::EntryEnd => {
                match std::mem::replace(&mut self.open, OpenEntry::None) {
                    OpenEntry::None => {
                        return Err(CaptureFault::OutOfOrder {
                            event: "the end of an entry",
                            context: "outside an entry",
                        });
                    }
                    OpenEntry::File {
                        mut entry,
                        mut partial,
                        ..
                    } => {
                        if !partial.is_empty() {
                            cut_block(&self.key, &mut self.batch, &mut entry.blocks, &mut partial);
                        }
                        self.totals.blocks += entry.blocks.len() as u64;
                        self.totals.logical_bytes += entry.size;
                        self.totals.files += 1;
                        self.batch.add_file(entry);
                    }
                    OpenEntry::Other(entry) => {
                        self.totals.files += 1;
                        self.batch.add_file(entry);
                    }
                    OpenEntry::Skipped => {}
                }
                Ok(())
            }
            TarEvent::End => {
                if matches!(self.open, OpenEntry::None) {
                    Ok(())
                } else {
                    Err(CaptureFault::OutOfOrder {
                        event: "the end of the archive",
                        context: "inside an entry",
                    })
                }
            }
        }
    }

    fn entry(&mut self, entry: TarEntry) -> Result<(), CaptureFault> {
        if !matches!(self.open, OpenEntry::None) {
            return Err(CaptureFault::OutOfOrder {
                event: "an entry",
                context: "inside another entry",
            });
        }
        let Some(path) = self.backup_path(&entry.path)? else {
            self.open = OpenEntry::Skipped;
            return Ok(());
        };
        let mtime = i64::try_from(entry.mtime).unwrap_or(i64::MAX);
        let (kind, size) = match entry.kind {
            EntryKind::File { size } => (FileKind::File, size),
            EntryKind::Directory => (FileKind::Directory, 0),
            EntryKind::Symlink { target } => {
                let target = String::from_utf8(target)
                    .map_err(|_| CaptureFault::LinkTargetNotUtf8 { path: path.clone() })?;
                (FileKind::Symlink { target }, 0)
            }
        };
        let is_file = kind == FileKind::File;
        let file = FileEntry {
            path,
            kind,
            mode: entry.mode,
            size,
            mtime,
            blocks: Vec::new(),
        };
        self.open = if is_file {
            OpenEntry::File {
                entry: file,
                partial: BytesMut::new(),
                unread: size,
            }
        } else {
            OpenEntry::Other(file)
        };
        Ok(())
    }

    /// The entry's path in the backup; `None` for the data directory's root, which a restore
    /// creates itself.
    fn backup_path(&self, path: &EntryPath) -> Result<Option<String>, CaptureFault> {
        let text = path.to_str().ok_or_else(|| CaptureFault::PathNotUtf8 {
            path: path.to_string(),
        })?;
        Ok(match (&self.root, path.is_root()) {
            (ArchiveRoot::DataDirectory, true) => None,
            (ArchiveRoot::DataDirectory, false) => Some(text.to_owned()),
            (ArchiveRoot::Tablespace { oid }, true) => Some(format!("pg_tblspc/{oid}")),
            (ArchiveRoot::Tablespace { oid }, false) => Some(format!("pg_tblspc/{oid}/{text}")),
        })
    }

    /// Whether the batch must be exchanged before more events are pushed.
    pub(crate) fn batch_is_full(&self) -> bool {
        self.batch.is_full(&self.limits)
    }

    /// The batch so far, leaving an empty one; the file being read (if any) stays open and
    /// keeps the hashes of its blocks in the batch taken.
    pub(crate) fn take_batch(&mut self) -> Batch {
        std::mem::take(&mut self.batch)
    }

    /// The last batch, once every archive has ended.
    pub(crate) fn finish(&mut self) -> Result<Batch, CaptureFault> {
        if !matches!(self.open, OpenEntry::None) {
            return Err(CaptureFault::OutOfOrder {
                event: "the end of the backup",
                context: "inside an entry",
            });
        }
        Ok(self.take_batch())
    }

    /// What was cut so far (files count once their entry ended).
    pub(crate) fn totals(&self) -> CutTotals {
        self.totals
    }
}

/// The length of the next block of a file with `unread` bytes still to come.
fn block_len(unread: u64) -> usize {
    usize::try_from(unread).map_or(BLOCK_SIZE, |n| n.min(BLOCK_SIZE))
}

/// Hashes the block in `partial` (leaving it empty), records the hash in the file's list and
/// offers the block to the batch.
fn cut_block(
    key: &BlockHashKey,
    batch: &mut Batch,
    hashes: &mut Vec<BlockHash>,
    partial: &mut BytesMut,
) {
    // The next block gets its own allocation (reserved when its first bytes arrive): the
    // batch holds this one.
    let plain = partial.split().freeze();
    let hash = BlockHash(key.hash(&plain));
    hashes.push(hash);
    batch.add_block(hash, plain);
}
