//! Which kind of server a data directory belongs to, so that a read-only server's cache is
//! never taken for a Tier 1 archive, nor a Tier 1 archive for a cache.
//!
//! A read-only server keeps its cache of Tier 2 objects where a read-write server keeps Tier 1
//! (`<data_dir>/clusters/`), and evicts from it. It marks its data directory with the empty
//! file [`READ_ONLY_MARKER`] before it serves anything:
//!
//! - a read-write server refuses a marked directory (its files are an incomplete cache, not an
//!   archive: acknowledging WAL on top of them would build on holes);
//! - a read-only server refuses an unmarked directory that already has `clusters/` (a Tier 1
//!   archive, which eviction would delete);
//! - `klio keys rotate` refuses a marked directory (nothing there is the archive: rotate on
//!   the primary, whose relay uploads the re-wrapped files).

use std::path::Path;

use klio_wal::durable;

use crate::server::ServerError;
use crate::tier2::ServerMode;

/// The file that marks a read-only server's data directory.
pub(crate) const READ_ONLY_MARKER: &str = "klio-read-only";

/// Whether `data_dir` is a read-only server's.
pub(crate) fn is_read_only(data_dir: &Path) -> bool {
    data_dir.join(READ_ONLY_MARKER).exists()
}

/// Checks that `data_dir` may be used by a server in `mode`, and marks it for a read-only
/// one. Call it holding the data directory lock.
pub(crate) fn claim(data_dir: &Path, mode: ServerMode) -> Result<(), ServerError> {
    let marked = is_read_only(data_dir);
    match mode {
        ServerMode::ReadWrite if marked => Err(ServerError::ReadOnlyDataDir(data_dir.to_owned())),
        ServerMode::ReadWrite => Ok(()),
        ServerMode::ReadOnly if marked => Ok(()),
        ServerMode::ReadOnly if data_dir.join("clusters").exists() => {
            Err(ServerError::Tier1DataDir(data_dir.to_owned()))
        }
        ServerMode::ReadOnly => {
            // Durable before the first cached file: after a crash the directory must still
            // say it holds a cache, or a read-write server could take it for an archive.
            durable::replace(&data_dir.join(READ_ONLY_MARKER), b"")?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_is_never_an_archive_and_an_archive_never_a_cache() {
        let cache = tempfile::tempdir().unwrap();
        claim(cache.path(), ServerMode::ReadOnly).unwrap();
        std::fs::create_dir(cache.path().join("clusters")).unwrap();
        claim(cache.path(), ServerMode::ReadOnly).unwrap();
        assert!(matches!(
            claim(cache.path(), ServerMode::ReadWrite),
            Err(ServerError::ReadOnlyDataDir(_))
        ));

        let archive = tempfile::tempdir().unwrap();
        claim(archive.path(), ServerMode::ReadWrite).unwrap();
        std::fs::create_dir(archive.path().join("clusters")).unwrap();
        assert!(matches!(
            claim(archive.path(), ServerMode::ReadOnly),
            Err(ServerError::Tier1DataDir(_))
        ));
        assert!(!is_read_only(archive.path()));
    }
}
