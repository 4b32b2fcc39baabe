//! Durable file-system steps: fsync of files and directories, durable rename.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

/// fsyncs a directory so that entries created, renamed or removed in it survive a crash.
pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Renames `from` to `to` (in the same directory) so that after a crash either the old or the
/// new name exists with complete contents, never a half-written file under the new name.
pub(crate) fn durable_rename(from: &Path, to: &Path, dir: &Path) -> io::Result<()> {
    // The contents must be on disk before the new name can point at them; otherwise a crash
    // right after the rename could leave a complete-looking file full of holes.
    OpenOptions::new().write(true).open(from)?.sync_all()?;
    std::fs::rename(from, to)?;
    // The rename itself lives in the directory; without this fsync a crash could bring the
    // old name back, and the file would be considered incomplete again.
    fsync_dir(dir)
}

/// Writes `contents` to `dir/name` atomically and durably: temporary file, fsync, rename,
/// directory fsync.
pub(crate) fn write_file_durably(dir: &Path, name: &str, contents: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(contents)?;
    // Flush the data before the rename publishes the file under its final name.
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(name))?;
    // Make the new directory entry itself durable.
    fsync_dir(dir)
}
