//! What the reader tells its caller: entries, their contents, and the end of the archive.

use bytes::Bytes;

use super::path::EntryPath;

/// One member of the archive, as its header describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarEntry {
    /// Where the entry goes, relative to the archive's root.
    pub path: EntryPath,
    /// What the entry is.
    pub kind: EntryKind,
    /// Permission bits (`mode & 0o7777`, what PostgreSQL records; never the file type bits).
    pub mode: u32,
    /// Owner's user id on the server.
    pub uid: u32,
    /// Owner's group id on the server.
    pub gid: u32,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: u64,
}

/// The type of an entry: the three that PostgreSQL writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file of `size` bytes, which follow as [`TarEvent::Data`] events.
    File {
        /// The file's length in bytes.
        size: u64,
    },
    /// A directory.
    Directory,
    /// A symbolic link. PostgreSQL writes these only for tablespaces (`pg_tblspc/<oid>`),
    /// with the tablespace's absolute location as the target: a restore maps the target
    /// (tablespace map, `--tablespace-mapping`) rather than trusting it.
    Symlink {
        /// The link's target as recorded, not normalized and possibly absolute.
        target: Vec<u8>,
    },
}

/// What [`TarReader::decode`](super::TarReader::decode) found next in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TarEvent {
    /// A new entry begins; for a file, its contents follow as [`TarEvent::Data`].
    Entry(TarEntry),
    /// The next slice of the current file's contents (never empty; the slices of a file add
    /// up to its size exactly).
    Data(Bytes),
    /// The current entry is complete (for a file: all contents and their padding read).
    /// Every [`TarEvent::Entry`] is followed by exactly one.
    EntryEnd,
    /// The two zero blocks that end the archive.
    End,
}
