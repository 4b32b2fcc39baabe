//! One process per data directory: the server (and offline maintenance such as
//! `klio keys rotate`) hold an exclusive lock on `DATA_DIR/klio.lock` while they work.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;

use klio_wal::{FsAction, FsError};

use crate::server::ServerError;

/// Takes the lock, or fails at once if another process holds it. Released when the returned
/// file is dropped (also when the process dies).
pub(crate) fn lock(data_dir: &Path) -> Result<File, ServerError> {
    let path = data_dir.join("klio.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| FsError::new(FsAction::Open, &path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(ServerError::DataDirInUse(data_dir.to_owned())),
        Err(TryLockError::Error(e)) => Err(FsError::new(FsAction::Lock, &path, e).into()),
    }
}
