//! Writing a file PostgreSQL will read: complete under its final name, or absent.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// `dest` with a suffix, in the same directory (so that the rename is atomic).
pub(crate) fn tmp_path(dest: &Path, suffix: &str) -> PathBuf {
    let mut name = dest.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Writes `bytes` to `dest` through a temporary file: write, fsync, rename. On error the
/// temporary file is removed and `dest` is untouched. Returns the failing step and path.
pub(crate) fn write_atomically(
    dest: &Path,
    bytes: &[u8],
) -> Result<(), (&'static str, PathBuf, io::Error)> {
    let tmp = tmp_path(dest, ".klio-tmp");
    let r = (|| {
        let mut out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| ("create", tmp.clone(), e))?;
        out.write_all(bytes)
            .map_err(|e| ("write", tmp.clone(), e))?;
        // PostgreSQL may read the file right after the rename; make the bytes durable first so a
        // crash never leaves a complete-looking but empty file under its final name.
        out.sync_all().map_err(|e| ("fsync", tmp.clone(), e))?;
        std::fs::rename(&tmp, dest).map_err(|e| ("rename to", dest.to_owned(), e))
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}
