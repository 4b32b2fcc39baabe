//! File-system calls for which a missing file is an answer, not an error.

use std::io;
use std::path::Path;

use klio_wal::FsAction;

use super::WalArchiveError;

/// Reads a whole file, or `None` if it does not exist.
pub(super) fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, WalArchiveError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(WalArchiveError::io(FsAction::Read, path, e)),
    }
}

/// Removes a file; a file that is already gone is fine.
pub(super) fn remove_if_present(path: &Path) -> Result<(), WalArchiveError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(WalArchiveError::io(FsAction::Remove, path, e)),
    }
}
