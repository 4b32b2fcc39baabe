//! The one error for a failed file-system call: what was being done, to which path, and the
//! operating system's error.
//!
//! Its message describes this layer only (`could not fsync directory "/srv/wal"`); the
//! [`io::Error`] travels through [`std::error::Error::source`], so that a renderer printing the
//! chain of causes shows it once. Error enums of other layers wrap it whole, for example
//! `#[error(transparent)] Fs(#[from] FsError)`.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// What was being done when a file-system call failed.
///
/// An enum rather than free text: the vocabulary of messages stays small and uniform, and
/// callers and tests can match on the step that failed (the path says which file it was).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FsAction {
    /// Creating a file.
    Create,
    /// Creating a directory (and its missing parents).
    CreateDirectory,
    /// Opening an existing file.
    Open,
    /// Reading a file.
    Read,
    /// Listing a directory.
    ReadDirectory,
    /// Reading a file's metadata.
    Stat,
    /// Writing into a file.
    Write,
    /// Writing real zeros into a file (pre-padding, extending, clearing).
    WriteZeros,
    /// Copying a file's contents.
    Copy,
    /// fsync of a file.
    Fsync,
    /// fdatasync of a file.
    Fdatasync,
    /// fsync of a directory.
    FsyncDirectory,
    /// Renaming a file to its final name (the path is the final name).
    Rename,
    /// Removing a file.
    Remove,
    /// Taking a lock on a file.
    Lock,
    /// Making a relative path absolute (reading the current directory).
    ResolvePath,
    /// Setting a file's permission bits.
    SetPermissions,
    /// Setting a file's modification time.
    SetModified,
    /// Creating a symbolic link (the path is the link).
    CreateSymlink,
}

impl FsAction {
    /// The verb phrase, as in "could not {phrase} {path}".
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::CreateDirectory => "create directory",
            Self::Open => "open",
            Self::Read => "read",
            Self::ReadDirectory => "read directory",
            Self::Stat => "stat",
            Self::Write => "write",
            Self::WriteZeros => "write zeros into",
            Self::Copy => "copy",
            Self::Fsync => "fsync",
            Self::Fdatasync => "fdatasync",
            Self::FsyncDirectory => "fsync directory",
            Self::Rename => "rename into place",
            Self::Remove => "remove",
            Self::Lock => "lock",
            Self::ResolvePath => "resolve the absolute path of",
            Self::SetPermissions => "set the permissions of",
            Self::SetModified => "set the modification time of",
            Self::CreateSymlink => "create the symbolic link",
        }
    }
}

impl fmt::Display for FsAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A file-system call failed: `action` on `path`, because of `source`.
#[derive(Debug, thiserror::Error)]
#[error("could not {action} {path:?}")]
#[non_exhaustive]
pub struct FsError {
    /// What was being done.
    pub action: FsAction,
    /// The file or directory involved.
    pub path: PathBuf,
    /// The operating system's error.
    #[source]
    pub source: io::Error,
}

impl FsError {
    /// `action` on `path` failed with `source`.
    pub fn new(action: FsAction, path: &Path, source: io::Error) -> Self {
        Self {
            action,
            path: path.to_owned(),
            source,
        }
    }

    /// The kind of the operating system's error (for example `AlreadyExists`).
    pub fn kind(&self) -> io::ErrorKind {
        self.source.kind()
    }
}
