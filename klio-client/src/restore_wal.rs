//! A `restore_command` serving a pg_receivewal-style directory (`klio restore-wal %f %p`).
//!
//! A segment that is still `.partial` (the newest one, cut short by a crash) is served in place
//! of the complete segment: it is pre-padded with zeros, so recovery replays up to the last
//! streamed byte and then ends cleanly, with no manual renaming.

use std::path::{Path, PathBuf};

use klio_wal::{FsAction, FsError, SegmentSize, WalFileName, durable};

/// What was served.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Restored {
    /// The file itself.
    File(PathBuf),
    /// The `.partial` segment, in place of the missing complete one.
    Partial(PathBuf),
}

/// Why a file could not be restored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreWalError {
    /// The archive has no such file: PostgreSQL takes this as the end of the archive.
    #[error("{0} not found in the archive")]
    NotFound(String),
    /// The requested name is not a WAL file name.
    #[error("{0:?} is not a WAL file name; use restore_command = 'klio restore-wal %f %p ...'")]
    BadName(String),
    /// Reading the archive or writing the destination failed.
    #[error(transparent)]
    Fs(#[from] FsError),
}

impl RestoreWalError {
    /// Whether PostgreSQL should see "no such file" (exit 1) rather than a failure that must
    /// stop recovery: serving nothing for a file that exists could end recovery early.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound(_))
    }
}

/// Copies `file_name` from `archive` to `dest` atomically (temporary file, fsync, rename).
pub fn restore_from_directory(
    archive: &Path,
    file_name: &str,
    dest: &Path,
) -> Result<Restored, RestoreWalError> {
    // Any segment size accepts a valid name's shape; 1 MiB accepts the most segment numbers.
    let size = SegmentSize::new(u64::from(SegmentSize::MIN_BYTES)).unwrap_or_default();
    let parsed = WalFileName::parse(file_name, size)
        .map_err(|_| RestoreWalError::BadName(file_name.to_owned()))?;
    let exact = archive.join(file_name);
    let (source, restored) = if exact.is_file() {
        (exact.clone(), Restored::File(exact))
    } else if matches!(parsed, WalFileName::Segment { .. }) {
        let partial = archive.join(format!("{file_name}.partial"));
        if partial.is_file() {
            (partial.clone(), Restored::Partial(partial))
        } else {
            return Err(RestoreWalError::NotFound(file_name.to_owned()));
        }
    } else {
        return Err(RestoreWalError::NotFound(file_name.to_owned()));
    };
    copy_atomically(&source, dest)?;
    Ok(restored)
}

fn copy_atomically(source: &Path, dest: &Path) -> Result<(), RestoreWalError> {
    let bytes = std::fs::read(source).map_err(|e| FsError::new(FsAction::Read, source, e))?;
    // PostgreSQL may read the file right after the rename: it must never find a
    // complete-looking but empty or torn file under its final name, even after a crash.
    Ok(durable::replace(dest, &bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_file_then_partial_then_not_found() {
        let archive = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        std::fs::write(archive.path().join("000000010000000000000001"), b"one").unwrap();
        std::fs::write(
            archive.path().join("000000010000000000000002.partial"),
            b"two",
        )
        .unwrap();
        std::fs::write(archive.path().join("00000002.history"), b"hist").unwrap();
        let dest = out.path().join("RECOVERYXLOG");

        let r = restore_from_directory(archive.path(), "000000010000000000000001", &dest).unwrap();
        assert!(matches!(r, Restored::File(_)));
        assert_eq!(std::fs::read(&dest).unwrap(), b"one");

        let r = restore_from_directory(archive.path(), "000000010000000000000002", &dest).unwrap();
        assert!(matches!(r, Restored::Partial(_)));
        assert_eq!(std::fs::read(&dest).unwrap(), b"two");

        restore_from_directory(archive.path(), "00000002.history", &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"hist");

        let e =
            restore_from_directory(archive.path(), "000000010000000000000003", &dest).unwrap_err();
        assert!(e.is_not_found());
        let e = restore_from_directory(archive.path(), "00000003.history", &dest).unwrap_err();
        assert!(e.is_not_found());
        let e = restore_from_directory(archive.path(), "../etc/passwd", &dest).unwrap_err();
        assert!(matches!(e, RestoreWalError::BadName(_)));
        assert!(!out.path().join("RECOVERYXLOG.klio-tmp").exists());
    }
}
