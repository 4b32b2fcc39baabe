//! The files of an archive directory, by name.

use std::path::{Path, PathBuf};

use klio_wal::FsAction;

use super::WalArchiveError;

/// Every entry of `dir` whose name is UTF-8, with its path. Every name the archive writes is
/// ASCII, so an entry with another name is not the archive's and is left out.
pub(super) fn named_entries(dir: &Path) -> Result<Vec<(String, PathBuf)>, WalArchiveError> {
    let read = |e| WalArchiveError::io(FsAction::ReadDirectory, dir, e);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read)? {
        let entry = entry.map_err(read)?;
        if let Ok(name) = entry.file_name().into_string() {
            out.push((name, entry.path()));
        }
    }
    Ok(out)
}
