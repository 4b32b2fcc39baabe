//! Crash-safe file writes: every way Klio puts a file on disk that must survive a crash.
//!
//! | function | what it does |
//! |---|---|
//! | [`write_new`] | creates a file that must not exist yet, fsyncs it and its directory |
//! | [`replace`] | writes a file (new or replacing one) atomically through a [`TempFile`] |
//! | [`TempFile`] | a file written piece by piece, then published under its final name |
//! | [`rename`] | moves a complete file to its final name durably |
//! | [`create_prepadded`] | creates a file pre-padded with real zeros, like pg_receivewal |
//! | [`create_prepadded_without_sync`] | the same without fsync, for `--no-sync` |
//! | [`write_zeros`] | writes real zeros into part of a file (padding, extending, clearing) |
//! | [`sync_dir`] | fsyncs a directory |
//! | [`replace_without_sync`] | atomic but not durable, for files whose loss costs only work |
//!
//! # Policy
//!
//! - **A final name only ever points at complete contents.** A file is written under its
//!   temporary name, fsynced, and only then renamed to its final name; a file that is renamed
//!   ([`rename`]) is fsynced first. Without the fsync, a crash right after the rename could leave
//!   a complete-looking file full of zeros or holes under the final name.
//! - **The directory is fsynced before a function returns**, after every create or rename in
//!   it (both directories when a rename crosses two): a directory entry lives in its directory,
//!   and without that fsync a crash could bring back the old name or lose the new file, although
//!   its caller already reported it durable. The one exception is
//!   [`TempFile::publish_deferring_dir_sync`], for a batch of files in one directory: its caller
//!   calls [`sync_dir`] once after the batch, before reporting any of it durable.
//! - **One temporary name: `<final name>.klio-tmp`** ([`TEMP_SUFFIX`]), in the final file's
//!   directory, because a rename is atomic only within one file system. The name is
//!   deterministic, not unique: a retry after a crash truncates and reuses the leftover, and
//!   cleaners recognise leftovers by the suffix. This needs one writer per final name at a time,
//!   which every caller has (the WAL archive's single writer, PostgreSQL's one
//!   `restore_command` at a time, the prefetch spool's lock, operator commands).
//! - **What a crash leaves behind**: at most a `*.klio-tmp` file, never a partly written file
//!   under a final name, so a leftover is never mistaken for the real file. The WAL archive
//!   removes leftovers when it is opened; elsewhere the next write of the same name reuses it. A
//!   [`TempFile`] dropped unpublished (an error on the way) removes its temporary file at once.
//!   Two functions create their final name directly and may leave it incomplete: [`write_new`]
//!   (for files that are never replaced, so there is nothing to rename over; a rerun of the
//!   command that makes them reports the leftover as existing) and [`create_prepadded`]
//!   (whose callers treat a file of the wrong size as holding nothing, and recreate it).
//! - **A failed fsync is not retried here.** The kernel may already have dropped the dirty
//!   pages, so a second fsync could succeed without the data being on disk; callers treat the
//!   error as fatal for what they were writing (the WAL archive poisons its handle).
//! - Files are created with mode 0600 (WAL, keys and configuration are private), except by
//!   [`write_new`], which takes the mode.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::{FsAction, FsError};

/// Suffix of every temporary file: `<final name>.klio-tmp`, in the final file's directory.
pub const TEMP_SUFFIX: &str = ".klio-tmp";

/// The mode of the files this module creates (except [`write_new`]'s).
const PRIVATE: u32 = 0o600;

/// The temporary name of `dest`: `dest` with [`TEMP_SUFFIX`] appended.
pub fn temp_path(dest: &Path) -> PathBuf {
    let mut name = OsString::from(dest.as_os_str());
    name.push(TEMP_SUFFIX);
    PathBuf::from(name)
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// fsyncs a directory, so that the entries created, renamed or removed in it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<(), FsError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| FsError::new(FsAction::FsyncDirectory, dir, e))
}

/// Creates `path` with `contents` and permission bits `mode`, fsyncs it and its directory.
/// Fails with [`std::io::ErrorKind::AlreadyExists`] (see [`FsError::kind`]) if `path` exists:
/// nothing is ever overwritten.
pub fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), FsError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| FsError::new(FsAction::Create, path, e))?;
    file.write_all(contents)
        .map_err(|e| FsError::new(FsAction::Write, path, e))?;
    file.sync_all()
        .map_err(|e| FsError::new(FsAction::Fsync, path, e))?;
    sync_dir(parent_dir(path))
}

/// Writes `contents` as `path` atomically and durably (temporary file, fsync, rename,
/// directory fsync): after a crash `path` holds either its old contents (or is absent) or the
/// new ones, never a mix.
pub fn replace(path: &Path, contents: &[u8]) -> Result<(), FsError> {
    let temp = TempFile::create(path)?;
    temp.write_all_at(contents, 0)?;
    temp.publish()
}

/// Writes `contents` as `path` atomically, without any fsync: after a crash `path` holds its
/// old contents, the new ones, or (the data not yet on disk) an empty or short file. Only for
/// files whose loss or damage costs repeated work, never wrong results.
pub fn replace_without_sync(path: &Path, contents: &[u8]) -> Result<(), FsError> {
    let temp = TempFile::create(path)?;
    temp.write_all_at(contents, 0)?;
    temp.publish_without_sync()
}

/// Renames the complete file `from` to `to` durably: fsyncs `from`, renames it, and fsyncs the
/// directory of `to` (and of `from`, if it is another one). After a crash either `from` or `to`
/// exists, with complete contents.
pub fn rename(from: &Path, to: &Path) -> Result<(), FsError> {
    OpenOptions::new()
        .write(true)
        .open(from)
        .map_err(|e| FsError::new(FsAction::Open, from, e))?
        .sync_all()
        .map_err(|e| FsError::new(FsAction::Fsync, from, e))?;
    std::fs::rename(from, to).map_err(|e| FsError::new(FsAction::Rename, to, e))?;
    let (from_dir, to_dir) = (parent_dir(from), parent_dir(to));
    sync_dir(to_dir)?;
    if from_dir != to_dir {
        sync_dir(from_dir)?;
    }
    Ok(())
}

/// Creates `path` (which must not exist), holding `head` followed by real zeros up to `len`
/// bytes, and fsyncs it and its directory before returning it open for reading and writing.
///
/// Because the size never changes afterwards, writes inside the file need no metadata update,
/// and `fdatasync` alone makes them durable. A crash before this returns can leave the file
/// shorter than `len` or without `head`: callers treat such a file as holding nothing.
pub fn create_prepadded(path: &Path, head: &[u8], len: u64) -> Result<File, FsError> {
    let file = create_padded(path, head, len)?;
    file.sync_all()
        .map_err(|e| FsError::new(FsAction::Fsync, path, e))?;
    sync_dir(parent_dir(path))?;
    Ok(file)
}

/// Like [`create_prepadded`], without any fsync: a crash can leave the file absent, short or
/// holding zeros where its writes were. Only for writers told not to sync (pg_receivewal's
/// `--no-sync`).
pub fn create_prepadded_without_sync(path: &Path, len: u64) -> Result<File, FsError> {
    create_padded(path, &[], len)
}

fn create_padded(path: &Path, head: &[u8], len: u64) -> Result<File, FsError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(PRIVATE)
        .open(path)
        .map_err(|e| FsError::new(FsAction::Create, path, e))?;
    file.write_all_at(head, 0)
        .map_err(|e| FsError::new(FsAction::Write, path, e))?;
    write_zeros(&file, path, head.len() as u64, len)?;
    Ok(file)
}

/// Writes real zeros into `[from, to)` of `file` (the file at `path`), never holes: a later
/// write there must not need to allocate blocks or change the size, so that `fdatasync` alone
/// makes it durable. Not synced: the caller fsyncs when it needs the zeros on disk.
pub fn write_zeros(file: &File, path: &Path, from: u64, to: u64) -> Result<(), FsError> {
    const CHUNK: u64 = 1 << 20;
    let zeros = vec![0u8; CHUNK.min(to.saturating_sub(from)) as usize];
    let mut off = from;
    while off < to {
        let n = (to - off).min(CHUNK) as usize;
        file.write_all_at(&zeros[..n], off)
            .map_err(|e| FsError::new(FsAction::WriteZeros, path, e))?;
        off += n as u64;
    }
    Ok(())
}

/// A file being written under its temporary name (`<dest>.klio-tmp`), to be published under
/// `dest` once complete. Dropped unpublished, it removes its temporary file.
#[derive(Debug)]
pub struct TempFile {
    file: File,
    temp: PathBuf,
    dest: PathBuf,
    /// The temporary file no longer exists under its name (renamed or removed).
    gone: bool,
}

impl TempFile {
    /// Creates the temporary file for `dest`, mode 0600, removing a leftover first: reusing
    /// it would keep its permission bits, or follow it if it were a symbolic link.
    pub fn create(dest: &Path) -> Result<Self, FsError> {
        let temp = temp_path(dest);
        match std::fs::remove_file(&temp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(FsError::new(FsAction::Remove, &temp, e));
            }
            _ => {}
        }
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(PRIVATE)
            .open(&temp)
            .map_err(|e| FsError::new(FsAction::Create, &temp, e))?;
        Ok(Self {
            file,
            temp,
            dest: dest.to_owned(),
            gone: false,
        })
    }

    /// The open temporary file, to write into.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The temporary file's path (for errors about writing it).
    pub fn path(&self) -> &Path {
        &self.temp
    }

    /// Writes `bytes` at `offset` of the temporary file.
    pub fn write_all_at(&self, bytes: &[u8], offset: u64) -> Result<(), FsError> {
        self.file
            .write_all_at(bytes, offset)
            .map_err(|e| FsError::new(FsAction::Write, &self.temp, e))
    }

    /// Publishes the complete file under its final name: fsync, rename, directory fsync.
    pub fn publish(self) -> Result<(), FsError> {
        let dir = parent_dir(&self.dest).to_owned();
        self.publish_deferring_dir_sync()?;
        sync_dir(&dir)
    }

    /// Like [`TempFile::publish`] but without the directory fsync, for one of a batch of files
    /// in one directory: the caller must call [`sync_dir`] after the batch, before it reports
    /// any of these files durable.
    pub fn publish_deferring_dir_sync(mut self) -> Result<(), FsError> {
        self.file
            .sync_all()
            .map_err(|e| FsError::new(FsAction::Fsync, &self.temp, e))?;
        self.rename_into_place()
    }

    /// Renames the complete file to its final name without any fsync: atomic but not durable,
    /// like [`replace_without_sync`], for files whose loss or damage in a crash costs repeated
    /// work, never wrong results.
    pub fn publish_without_sync(mut self) -> Result<(), FsError> {
        self.rename_into_place()
    }

    /// Removes the temporary file (the contents are not wanted after all).
    pub fn discard(mut self) -> Result<(), FsError> {
        self.gone = true;
        std::fs::remove_file(&self.temp).map_err(|e| FsError::new(FsAction::Remove, &self.temp, e))
    }

    fn rename_into_place(&mut self) -> Result<(), FsError> {
        std::fs::rename(&self.temp, &self.dest)
            .map_err(|e| FsError::new(FsAction::Rename, &self.dest, e))?;
        self.gone = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.gone {
            // Best effort: a leftover is harmless (never under a final name) and reused or
            // removed later, and a destructor has nobody to report to.
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests;
