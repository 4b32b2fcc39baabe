//! `klio restore --delta`: a backup restored over an existing, stopped data directory,
//! rewriting only what differs, so that afterwards the directory holds exactly the backup.
//!
//! # What is compared, and what it relies on
//!
//! - A regular file of the backup that exists as a regular file is read block by block; each
//!   local block is hashed with the cluster's block-hash key and compared with the hash the
//!   backup records for that block. Only blocks whose hash differs (or that the local file
//!   lacks) are fetched and written; the file is then cut or extended to the backup's size,
//!   and gets the backup's mode and time. Nothing is skipped for its size or modification
//!   time: a block is kept only when its keyed hash (BLAKE3, or HMAC-SHA-256 for older
//!   keys) equals the backup's, which (the key being secret, the hash collision-resistant)
//!   means its bytes are the backup's.
//! - Anything the backup names with another kind (a directory where it has a file, a file or
//!   link where it has a directory) is removed first.
//! - Everything in the data directory the backup does not name is removed: stray files,
//!   WAL in `pg_wal`, a stale `postmaster.pid`. In a tablespace location only the backup's
//!   own version directory (`PG_<major>_<catversion>`) is reconciled; other entries there
//!   (another cluster's version directory) are left alone.
//!
//! # Crash safety
//!
//! The marker is written first, and `global/pg_control` and `backup_label` are removed right
//! after it (durably): until the final steps write the backup's own, PostgreSQL cannot start
//! on the directory, however the delta restore ends. Running `--delta` again finishes an
//! interrupted one.
//!
//! # Memory
//!
//! The paths the backup names are kept until the extras are removed: about 100 bytes per
//! entry (100 MB for a million files), besides what a restore holds anyway.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use klio_crypto::BlockHashKey;
use klio_proto::klio::FileEntry;
use klio_wal::{FsAction, FsError, durable};

use super::blocks::block_len;
use super::target_dir::RESTORE_MARKER;

/// Permission bits a file is created with until its own mode is set.
const WHILE_WRITING: u32 = 0o600;

/// The paths a delta restore keeps.
#[derive(Debug, Default)]
pub(super) struct Wanted {
    paths: HashSet<PathBuf>,
}

impl Wanted {
    /// Records that the backup names `path`.
    pub(super) fn keep(&mut self, path: &Path) {
        self.paths.insert(path.to_owned());
    }

    fn contains(&self, path: &Path) -> bool {
        self.paths.contains(path)
    }
}

/// What is at `path` now, without following a link.
fn kind_of(path: &Path) -> Result<Option<std::fs::FileType>, FsError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m.file_type())),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(FsError::new(FsAction::Stat, path, e)),
    }
}

/// Removes whatever is at `path` (a directory with its contents; a link itself, never what it
/// points to).
fn remove(path: &Path, kind: std::fs::FileType) -> Result<(), FsError> {
    let removed = if kind.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    removed.map_err(|e| FsError::new(FsAction::Remove, path, e))
}

/// Makes room for a regular file at `path`: removes a directory or link there.
pub(super) fn make_room_for_file(path: &Path) -> Result<(), FsError> {
    match kind_of(path)? {
        Some(k) if !k.is_file() => remove(path, k),
        _ => Ok(()),
    }
}

/// Makes room for a directory at `path`: removes a file or link there.
pub(super) fn make_room_for_directory(path: &Path) -> Result<(), FsError> {
    match kind_of(path)? {
        Some(k) if !k.is_dir() => remove(path, k),
        _ => Ok(()),
    }
}

/// Makes room for a tablespace link at `link`: removes whatever is there (the link is made
/// again, pointing where this restore puts the tablespace).
pub(super) fn make_room_for_link(link: &Path) -> Result<(), FsError> {
    match kind_of(link)? {
        Some(k) => remove(link, k),
        None => Ok(()),
    }
}

/// Removes the files a restore must not find from an earlier life of the directory: the
/// control file and the backup label (see "Crash safety").
pub(super) fn disarm(pgdata: &Path) -> Result<(), FsError> {
    for name in ["global/pg_control", "backup_label"] {
        let path = pgdata.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                if let Some(dir) = path.parent() {
                    // The removal must be on disk before any file is rewritten: a crash must
                    // not leave a control file beside half-restored relations.
                    durable::sync_dir(dir)?;
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(FsError::new(FsAction::Remove, &path, e)),
        }
    }
    Ok(())
}

/// Opens the regular file `path` for a delta restore: as it is, or created empty.
pub(super) fn open_file(path: &Path) -> Result<File, FsError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(WHILE_WRITING)
        .open(path)
        .map_err(|e| FsError::new(FsAction::Create, path, e))
}

/// Local blocks are read this many bytes at a time (whole blocks, at least one).
const COMPARE_READ: u64 = 1 << 20;

/// Calls `differs` with the index of each block of `entry` that `file` (at `path`) does not
/// hold as the backup has it, in order: read, hashed with `key`, compared (see "What is
/// compared"). Stops early, without error, when `differs` returns `false`. Returns the bytes
/// found equal.
pub(super) fn differing_blocks(
    file: &File,
    path: &Path,
    entry: &FileEntry,
    key: &BlockHashKey,
    block_size: u32,
    mut differs: impl FnMut(usize) -> bool,
) -> Result<u64, FsError> {
    let local_len = file
        .metadata()
        .map_err(|e| FsError::new(FsAction::Stat, path, e))?
        .len();
    let block = u64::from(block_size);
    let per_read = (COMPARE_READ / block).max(1);
    let mut buf = vec![0u8; (per_read * block) as usize];
    let mut kept = 0;
    // The blocks the local file holds whole, a read of several at a time.
    let whole = (entry.size.min(local_len) / block) as usize;
    let tail_held = entry.size <= local_len && !entry.size.is_multiple_of(block);
    let compared = whole + usize::from(tail_held);
    for first in (0..compared).step_by(per_read as usize) {
        let last = (first + per_read as usize).min(compared);
        let start = first as u64 * block;
        let end = (last as u64 * block).min(entry.size);
        let bytes = &mut buf[..(end - start) as usize];
        file.read_exact_at(bytes, start)
            .map_err(|e| FsError::new(FsAction::Read, path, e))?;
        for index in first..last {
            let at = ((index - first) as u64 * block) as usize;
            let len = block_len(index, entry.size, block_size) as usize;
            if key.matches(&bytes[at..at + len], &entry.blocks[index].0) {
                kept += len as u64;
            } else if !differs(index) {
                return Ok(kept);
            }
        }
    }
    // Blocks the local file is too short to hold.
    for index in compared..entry.blocks.len() {
        if !differs(index) {
            break;
        }
    }
    Ok(kept)
}

/// Cuts or extends the restored `file` to the backup's `size`.
pub(super) fn set_size(file: &File, path: &Path, size: u64) -> Result<(), FsError> {
    file.set_len(size)
        .map_err(|e| FsError::new(FsAction::Write, path, e))
}

/// Removes what `wanted` does not name: everything under `pgdata` (but the restore's own
/// marker and manifest, written meanwhile), and inside each of the backup's directories in a
/// tablespace location. Directories that lost entries are fsynced.
pub(super) fn remove_extras(
    pgdata: &Path,
    tablespace_locations: &[PathBuf],
    wanted: &Wanted,
) -> Result<u64, FsError> {
    let mut removed = 0;
    let own = [pgdata.join(RESTORE_MARKER), pgdata.join("backup_manifest")];
    sweep(pgdata, wanted, &own, &mut removed)?;
    for location in tablespace_locations {
        let entries = std::fs::read_dir(location)
            .map_err(|e| FsError::new(FsAction::ReadDirectory, location, e))?;
        for entry in entries {
            let path = entry
                .map_err(|e| FsError::new(FsAction::ReadDirectory, location, e))?
                .path();
            if wanted.contains(&path) && path.is_dir() && !path.is_symlink() {
                sweep(&path, wanted, &[], &mut removed)?;
            }
        }
    }
    Ok(removed)
}

fn sweep(dir: &Path, wanted: &Wanted, own: &[PathBuf], removed: &mut u64) -> Result<(), FsError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| FsError::new(FsAction::ReadDirectory, dir, e))?;
    let mut lost = false;
    for entry in entries {
        let entry = entry.map_err(|e| FsError::new(FsAction::ReadDirectory, dir, e))?;
        let path = entry.path();
        let kind = entry
            .file_type()
            .map_err(|e| FsError::new(FsAction::Stat, &path, e))?;
        if own.contains(&path) {
            continue;
        }
        if !wanted.contains(&path) {
            remove(&path, kind)?;
            *removed += 1;
            lost = true;
        } else if kind.is_dir() {
            sweep(&path, wanted, own, removed)?;
        }
    }
    if lost {
        // The removals must be on disk before the restore is declared complete.
        durable::sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use klio_crypto::BlockHashAlgorithm;
    use klio_proto::klio::{BlockHash, FileKind};

    fn key() -> BlockHashKey {
        BlockHashKey::new(BlockHashAlgorithm::Blake3, [9; 32])
    }

    fn entry_of(content: &[u8], block: u32) -> FileEntry {
        FileEntry {
            path: "f".to_owned(),
            kind: FileKind::File,
            mode: 0o600,
            size: content.len() as u64,
            mtime: 0,
            blocks: content
                .chunks(block as usize)
                .map(|c| BlockHash(key().hash(c)))
                .collect(),
        }
    }

    fn differing(file: &File, path: &Path, entry: &FileEntry) -> (Vec<usize>, u64) {
        let mut differ = Vec::new();
        let kept = differing_blocks(file, path, entry, &key(), 8192, |i| {
            differ.push(i);
            true
        })
        .unwrap();
        (differ, kept)
    }

    #[test]
    fn blocks_are_compared_across_reads_and_a_short_file_lacks_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("f");
        // 300 blocks of 8 KiB: three reads of 128 blocks, the last one partial, and a
        // short last block.
        let backup: Vec<u8> = (0..300 * 8192 - 100).map(|i| (i % 253) as u8).collect();
        let entry = entry_of(&backup, 8192);
        let mut local = backup.clone();
        for block in [0, 127, 128, 255, 256] {
            local[block * 8192 + 5] ^= 0xff;
        }
        // Cut inside block 298: blocks 298 and 299 are missing.
        local.truncate(298 * 8192 + 10);
        std::fs::write(&path, &local).unwrap();
        let file = open_file(&path).unwrap();
        let (differ, kept) = differing(&file, &path, &entry);
        assert_eq!(differ, [0, 127, 128, 255, 256, 298, 299]);
        assert_eq!(kept, 293 * 8192);
        // Asked to stop at the second, the comparison goes no further.
        let mut seen = Vec::new();
        differing_blocks(&file, &path, &entry, &key(), 8192, |i| {
            seen.push(i);
            seen.len() < 2
        })
        .unwrap();
        assert_eq!(seen, [0, 127]);
    }

    #[test]
    fn only_blocks_whose_bytes_differ_are_rewritten_whatever_the_size_and_time_say() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("f");
        let backup: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let entry = entry_of(&backup, 8192);
        // Same size, one byte flipped in block 2, and a last block cut short.
        let mut local = backup.clone();
        local[2 * 8192 + 17] ^= 1;
        local.truncate(38_000);
        std::fs::write(&path, &local).unwrap();
        let file = open_file(&path).unwrap();
        let (differ, kept) = differing(&file, &path, &entry);
        assert_eq!(differ, [2, 4]);
        assert_eq!(kept, 3 * 8192);
        // A file that is longer than the backup's keeps its equal blocks; the size is cut.
        let mut longer = backup.clone();
        longer.extend_from_slice(&[0; 10_000]);
        std::fs::write(&path, &longer).unwrap();
        let file = open_file(&path).unwrap();
        assert_eq!(differing(&file, &path, &entry), (vec![], entry.size));
        set_size(&file, &path, entry.size).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), backup);
    }

    #[test]
    fn what_the_backup_does_not_name_is_removed_but_never_beyond_a_link() {
        let d = tempfile::tempdir().unwrap();
        let pg = d.path().join("pg");
        let outside = d.path().join("outside");
        std::fs::create_dir_all(pg.join("base/1")).unwrap();
        std::fs::create_dir_all(pg.join("pg_wal")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("precious"), "x").unwrap();
        std::fs::write(pg.join("base/1/1259"), "kept").unwrap();
        std::fs::write(pg.join("base/1/99999"), "stray").unwrap();
        std::fs::write(pg.join("pg_wal/000000010000000000000001"), "old wal").unwrap();
        std::fs::write(pg.join(RESTORE_MARKER), "m").unwrap();
        std::os::unix::fs::symlink(&outside, pg.join("stray-link")).unwrap();
        let ts = d.path().join("ts");
        std::fs::create_dir_all(ts.join("PG_15_1/5")).unwrap();
        std::fs::create_dir_all(ts.join("PG_14_1/5")).unwrap();
        std::fs::write(ts.join("PG_15_1/5/777"), "stray").unwrap();
        std::fs::write(ts.join("PG_14_1/5/777"), "another cluster's").unwrap();

        let mut wanted = Wanted::default();
        for p in ["base", "base/1", "base/1/1259", "pg_wal"] {
            wanted.keep(&pg.join(p));
        }
        wanted.keep(&ts.join("PG_15_1"));
        wanted.keep(&ts.join("PG_15_1/5"));
        let removed = remove_extras(&pg, std::slice::from_ref(&ts), &wanted).unwrap();
        assert_eq!(removed, 4);
        assert!(pg.join("base/1/1259").exists());
        assert!(!pg.join("base/1/99999").exists());
        assert!(!pg.join("pg_wal/000000010000000000000001").exists());
        assert!(
            pg.join(RESTORE_MARKER).exists(),
            "the restore's own marker stays"
        );
        assert!(!pg.join("stray-link").exists());
        assert!(outside.join("precious").exists(), "never through a link");
        assert!(!ts.join("PG_15_1/5/777").exists());
        assert!(
            ts.join("PG_14_1/5/777").exists(),
            "another version's directory is left"
        );
    }

    #[test]
    fn entries_of_the_wrong_kind_make_room() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        std::fs::create_dir_all(a.join("inner")).unwrap();
        make_room_for_file(&a).unwrap();
        assert!(!a.exists());
        std::fs::write(&a, "file").unwrap();
        make_room_for_directory(&a).unwrap();
        assert!(!a.exists());
        std::fs::write(&a, "file").unwrap();
        make_room_for_file(&a).unwrap();
        assert!(a.exists(), "a file where a file goes stays, to be compared");
        make_room_for_link(&a).unwrap();
        assert!(!a.exists());
    }
}
