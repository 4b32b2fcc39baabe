//! Durable file-system steps: directory fsync, zero padding, atomic publication of a file.
//!
//! The same rules as `klio_wal::segment_dir` (whose helpers are private to that crate): a file
//! gets its final name only after its contents are on disk, and every create, rename or removal
//! that must survive a crash is followed by an fsync of the directory.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use super::WalArchiveError;

/// Suffix of files being written before their atomic rename; leftovers are removed on open.
pub(super) const TMP_SUFFIX: &str = ".klio-tmp";

/// fsyncs a directory so that entries created, renamed or removed in it survive a crash.
pub(super) fn fsync_dir(dir: &Path) -> Result<(), WalArchiveError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| WalArchiveError::io("fsync directory", dir, e))
}

/// Writes real zeros into `[from, to)` of `file` (never holes: a later write must not need to
/// allocate blocks or change the size, so that `fdatasync` alone makes it durable).
pub(super) fn write_zeros(file: &File, from: u64, to: u64) -> io::Result<()> {
    const CHUNK: u64 = 1 << 20;
    let zeros = vec![0u8; CHUNK.min(to.saturating_sub(from)) as usize];
    let mut off = from;
    while off < to {
        let n = (to - off).min(CHUNK) as usize;
        file.write_all_at(&zeros[..n], off)?;
        off += n as u64;
    }
    Ok(())
}

/// Creates (or truncates) the temporary file for `dir/name`.
pub(super) fn create_tmp(
    dir: &Path,
    name: &str,
) -> Result<(File, std::path::PathBuf), WalArchiveError> {
    let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| WalArchiveError::io("create", &tmp, e))?;
    Ok((file, tmp))
}

/// Publishes a fully written temporary file under `dir/name`: fsync, rename, and (if
/// `sync_dir`) fsync of the directory. After a crash either the old state or the complete new
/// file exists under `name`, never a partly written one.
pub(super) fn publish(
    file: File,
    tmp: &Path,
    dir: &Path,
    name: &str,
    sync_dir: bool,
) -> Result<(), WalArchiveError> {
    // The contents must be on disk before the final name can point at them; otherwise a crash
    // right after the rename could leave a complete-looking file full of zeros or garbage.
    file.sync_all()
        .map_err(|e| WalArchiveError::io("fsync", tmp, e))?;
    drop(file);
    let dest = dir.join(name);
    std::fs::rename(tmp, &dest).map_err(|e| WalArchiveError::io("rename into place", &dest, e))?;
    if sync_dir {
        // The rename lives in the directory: without this fsync a crash could undo it, and a
        // segment acknowledged as complete would be missing.
        fsync_dir(dir)?;
    }
    Ok(())
}

/// Writes `contents` as `dir/name` atomically and durably.
pub(super) fn write_file_durably(
    dir: &Path,
    name: &str,
    contents: &[u8],
) -> Result<(), WalArchiveError> {
    let (file, tmp) = create_tmp(dir, name)?;
    file.write_all_at(contents, 0)
        .map_err(|e| WalArchiveError::io("write", &tmp, e))?;
    publish(file, &tmp, dir, name, true)
}

/// Reads a whole file, or `None` if it does not exist.
pub(super) fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, WalArchiveError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(WalArchiveError::io("read", path, e)),
    }
}

/// Removes a file; a file that is already gone is fine.
pub(super) fn remove_if_present(path: &Path) -> Result<(), WalArchiveError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(WalArchiveError::io("remove", path, e)),
    }
}
