//! The local file-system steps of a restore: files written at their offsets, their mode and
//! modification time set and fsynced; directories; tablespace links; and the final steps in
//! their crash-safe order ([`finish`]).

use std::fs::{File, OpenOptions, Permissions};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use klio_wal::{FsAction, FsError, durable};

use crate::recovery_config::RecoveryConfig;

use super::RestoreError;
use super::target_dir;

/// Permission bits a file is created with until its own mode is set (after its last write:
/// a read-only mode must not stop the writes).
const WHILE_WRITING: u32 = 0o600;

/// A time in seconds since the Unix epoch (before it, for a negative `mtime`).
fn time_of(mtime: i64) -> SystemTime {
    let offset = Duration::from_secs(mtime.unsigned_abs());
    let time = if mtime >= 0 {
        UNIX_EPOCH.checked_add(offset)
    } else {
        UNIX_EPOCH.checked_sub(offset)
    };
    time.unwrap_or(UNIX_EPOCH)
}

/// A regular file being restored, and whether it is written with direct I/O.
#[derive(Debug)]
pub(super) struct RestoredFile {
    file: File,
    /// Writes bypass the page cache (`O_DIRECT`): they must start at addresses and offsets
    /// aligned to [`DIRECT_IO_ALIGN`] and have aligned lengths. Cleared for good when the
    /// file system refuses a direct write.
    direct: AtomicBool,
}

impl RestoredFile {
    /// A file written through the page cache.
    pub(super) fn buffered(file: File) -> Self {
        Self {
            file,
            direct: AtomicBool::new(false),
        }
    }

    /// The open file.
    pub(super) fn file(&self) -> &File {
        &self.file
    }

    /// Whether its writes bypass the page cache, and so must be aligned.
    pub(super) fn is_direct(&self) -> bool {
        self.direct.load(Ordering::Relaxed)
    }
}

/// The alignment direct writes need, of their buffer's address, their offset and their
/// length: the largest logical block size of common disks (ext4 and XFS on 512-byte and
/// 4 KiB sector devices).
pub(super) const DIRECT_IO_ALIGN: usize = 4096;

/// Whether a file of `size` bytes is written with direct I/O: when it is large (its blocks
/// go out in long runs, which is where direct writes are fast) and every run of its blocks
/// has an aligned length.
pub(super) fn writes_direct(size: u64) -> bool {
    size >= DIRECT_IO_MIN_SIZE && size.is_multiple_of(DIRECT_IO_ALIGN as u64)
}

/// Smaller files are written through the page cache: a direct write waits for the disk, which
/// costs more than the copy for short runs.
const DIRECT_IO_MIN_SIZE: u64 = 1 << 20;

/// Creates (or truncates) the regular file `path`, to be written with [`write_at`]; with
/// direct I/O when `direct` and the file system has it.
///
/// A restore writes gigabytes that nothing reads before PostgreSQL starts: through the page
/// cache they cost a copy and a page allocation per page, and evict what the host had cached.
pub(super) fn create_file(path: &Path, direct: bool) -> Result<RestoredFile, FsError> {
    if direct {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::CLOEXEC;
        match rustix::fs::open(
            path,
            flags | OFlags::DIRECT,
            Mode::from_raw_mode(WHILE_WRITING),
        ) {
            Ok(fd) => {
                return Ok(RestoredFile {
                    file: File::from(fd),
                    direct: AtomicBool::new(true),
                });
            }
            // A file system without direct I/O (tmpfs before Linux 6.6, some FUSE ones):
            // written through the page cache like a small file.
            Err(Errno::INVAL) => {}
            Err(e) => return Err(FsError::new(FsAction::Create, path, e.into())),
        }
    }
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(WHILE_WRITING)
        .open(path)
        .map(RestoredFile::buffered)
        .map_err(|e| FsError::new(FsAction::Create, path, e))
}

/// Writes `bytes` at `offset` of `target` (at `path`). A direct write the file system
/// refuses (`EINVAL`: it needs an alignment larger than [`DIRECT_IO_ALIGN`]) is made again
/// through the page cache, as every later write to the file.
pub(super) fn write_at(
    target: &RestoredFile,
    path: &Path,
    bytes: &[u8],
    offset: u64,
) -> Result<(), FsError> {
    let write_error = |e| FsError::new(FsAction::Write, path, e);
    match target.file.write_all_at(bytes, offset) {
        Err(e)
            if Errno::from_io_error(&e) == Some(Errno::INVAL)
                && target.direct.swap(false, Ordering::Relaxed) =>
        {
            let flags = rustix::fs::fcntl_getfl(&target.file).map_err(|e| write_error(e.into()))?;
            rustix::fs::fcntl_setfl(&target.file, flags - OFlags::DIRECT)
                .map_err(|e| write_error(e.into()))?;
            target.file.write_all_at(bytes, offset).map_err(write_error)
        }
        written => written.map_err(write_error),
    }
}

/// Sets the mode and modification time of the written `file` and fsyncs it: its contents
/// must be on disk before the restore can be declared complete.
pub(super) fn finish_file(file: &File, path: &Path, mode: u32, mtime: i64) -> Result<(), FsError> {
    file.set_permissions(Permissions::from_mode(mode & 0o7777))
        .map_err(|e| FsError::new(FsAction::SetPermissions, path, e))?;
    file.set_modified(time_of(mtime))
        .map_err(|e| FsError::new(FsAction::SetModified, path, e))?;
    file.sync_all()
        .map_err(|e| FsError::new(FsAction::Fsync, path, e))
}

/// Creates the directory `path` (mode 0700 until [`set_directory_metadata`]); one that
/// already exists (made as a parent earlier) is fine.
pub(super) fn create_directory(path: &Path) -> Result<(), FsError> {
    let mut builder = std::fs::DirBuilder::new();
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    match builder.recursive(true).create(path) {
        Ok(()) => Ok(()),
        Err(e) => Err(FsError::new(FsAction::CreateDirectory, path, e)),
    }
}

/// Sets a restored directory's mode and modification time, once nothing more is written
/// into it.
pub(super) fn set_directory_metadata(path: &Path, mode: u32, mtime: i64) -> Result<(), FsError> {
    let dir = File::open(path).map_err(|e| FsError::new(FsAction::Open, path, e))?;
    dir.set_modified(time_of(mtime))
        .map_err(|e| FsError::new(FsAction::SetModified, path, e))?;
    std::fs::set_permissions(path, Permissions::from_mode(mode & 0o7777))
        .map_err(|e| FsError::new(FsAction::SetPermissions, path, e))
}

/// Creates the symbolic link `link` pointing to `target`.
pub(super) fn create_symlink(target: &Path, link: &Path) -> Result<(), FsError> {
    std::os::unix::fs::symlink(target, link)
        .map_err(|e| FsError::new(FsAction::CreateSymlink, link, e))
}

/// A small file restored from memory in the final steps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SmallFile {
    /// Where it goes.
    pub(super) path: PathBuf,
    /// Its permission bits.
    pub(super) mode: u32,
    /// Its modification time.
    pub(super) mtime: i64,
    /// Its bytes.
    pub(super) content: Vec<u8>,
}

impl SmallFile {
    /// Writes it under its temporary name and renames it into place, durably.
    fn publish(&self) -> Result<(), FsError> {
        let temp = durable::TempFile::create(&self.path)?;
        temp.write_all_at(&self.content, 0)?;
        finish_file(temp.file(), temp.path(), self.mode, self.mtime)?;
        temp.publish()
    }
}

/// What the final steps write.
#[derive(Debug)]
pub(super) struct FinalFiles {
    /// `backup_manifest`, written while the file list streamed, not yet under its name.
    pub(super) manifest: Option<durable::TempFile>,
    /// `tablespace_map` (rewritten for mapped tablespaces).
    pub(super) tablespace_map: Option<SmallFile>,
    /// `global/pg_control`.
    pub(super) pg_control: SmallFile,
    /// `backup_label`.
    pub(super) backup_label: SmallFile,
}

/// The final steps, once every other file is written and fsynced and every directory that
/// got entries is fsynced: `backup_manifest`, `tablespace_map`, the recovery settings, then
/// `global/pg_control` and `backup_label` last, then the marker's removal.
///
/// So a crash at any point before the end leaves no `backup_label` (PostgreSQL cannot take
/// the directory for a complete backup) and the marker; once `backup_label` exists,
/// everything recovery needs is on disk.
pub(super) fn finish(
    pgdata: &Path,
    files: FinalFiles,
    recovery: &RecoveryConfig,
) -> Result<(), RestoreError> {
    if let Some(manifest) = files.manifest {
        manifest.publish()?;
    }
    if let Some(map) = &files.tablespace_map {
        map.publish()?;
    }
    recovery.apply(pgdata)?;
    files.pg_control.publish()?;
    files.backup_label.publish()?;
    target_dir::remove_marker(pgdata)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::recovery_config::{RecoveryTarget, TargetAction};

    fn recovery() -> RecoveryConfig {
        RecoveryConfig {
            restore_command: "klio get-wal %f %p".to_owned(),
            target: RecoveryTarget::Latest,
            inclusive: true,
            action: TargetAction::Pause,
            timeline: "latest".to_owned(),
            standby: false,
        }
    }

    fn small(pg: &Path, path: &str, content: &[u8]) -> SmallFile {
        SmallFile {
            path: pg.join(path),
            mode: 0o600,
            mtime: 1_700_000_000,
            content: content.to_vec(),
        }
    }

    /// A data directory restored up to the final steps: marker, PG_VERSION, global/.
    fn half_restored(pg: &Path) {
        target_dir::write_marker(pg, "b1").unwrap();
        let path = pg.join("PG_VERSION");
        let f = create_file(&path, false).unwrap();
        write_at(&f, &path, b"15\n", 0).unwrap();
        finish_file(f.file(), &path, 0o600, 1_700_000_000).unwrap();
        create_directory(&pg.join("global")).unwrap();
    }

    fn final_files(pg: &Path) -> FinalFiles {
        FinalFiles {
            manifest: None,
            tablespace_map: Some(small(pg, "tablespace_map", b"16385 /srv/ts1\n")),
            pg_control: small(pg, "global/pg_control", &[1; 8192]),
            backup_label: small(pg, "backup_label", b"START WAL LOCATION: 0/2000028\n"),
        }
    }

    #[test]
    fn an_interrupted_restore_leaves_the_marker_and_no_backup_label() {
        let d = tempfile::tempdir().unwrap();
        let pg = d.path();
        half_restored(pg);
        // Interrupted here: the final steps never ran.
        assert!(pg.join(target_dir::RESTORE_MARKER).exists());
        assert!(!pg.join("backup_label").exists());
        assert!(!pg.join("global/pg_control").exists());
        let err = target_dir::prepare(
            pg,
            target_dir::TargetKind::DataDirectory,
            target_dir::Existing::Refuse,
        )
        .unwrap_err();
        assert!(
            matches!(&err, RestoreError::InterruptedRestore { backup, .. } if backup == "b1"),
            "{err:?}"
        );
    }

    #[test]
    fn a_failure_before_the_held_back_files_writes_neither_of_them() {
        let d = tempfile::tempdir().unwrap();
        let pg = d.path();
        half_restored(pg);
        let mut bad = recovery();
        bad.restore_command = "klio get-wal %f %p\nrecovery_target = 'x'".to_owned();
        assert!(finish(pg, final_files(pg), &bad).is_err());
        assert!(!pg.join("backup_label").exists());
        assert!(!pg.join("global/pg_control").exists());
        assert!(pg.join(target_dir::RESTORE_MARKER).exists());
    }

    #[test]
    fn finishing_writes_the_held_back_files_and_removes_the_marker() {
        let d = tempfile::tempdir().unwrap();
        let pg = d.path();
        half_restored(pg);
        finish(pg, final_files(pg), &recovery()).unwrap();
        assert_eq!(
            std::fs::read(pg.join("backup_label")).unwrap(),
            b"START WAL LOCATION: 0/2000028\n"
        );
        assert_eq!(
            std::fs::read(pg.join("global/pg_control")).unwrap(),
            [1; 8192]
        );
        assert!(pg.join("recovery.signal").exists());
        assert!(!pg.join(target_dir::RESTORE_MARKER).exists());
        let meta = std::fs::metadata(pg.join("backup_label")).unwrap();
        assert_eq!(meta.mtime(), 1_700_000_000);
        assert_eq!(meta.mode() & 0o7777, 0o600);
    }

    #[test]
    fn files_get_their_mode_and_mtime_after_their_last_write() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("read-only");
        let f = create_file(&path, false).unwrap();
        write_at(&f, &path, b"world", 5).unwrap();
        write_at(&f, &path, b"hello", 0).unwrap();
        finish_file(f.file(), &path, 0o400, -10).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"helloworld");
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o400);
        assert_eq!(meta.mtime(), -10);
        let dir = d.path().join("a/b");
        create_directory(&dir).unwrap();
        create_directory(&dir).unwrap();
        set_directory_metadata(&dir, 0o750, 1_000).unwrap();
        let meta = std::fs::metadata(&dir).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o750);
        assert_eq!(meta.mtime(), 1_000);
    }

    #[test]
    fn a_direct_write_the_file_system_refuses_is_made_through_the_page_cache() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("16384");
        let f = create_file(&path, true).unwrap();
        // An aligned run, from an aligned buffer: direct where the file system has it.
        let mut buffer = super::super::write_buffer::WriteBuffer::default();
        let run = buffer.aligned(2 * DIRECT_IO_ALIGN);
        run.fill(7);
        write_at(&f, &path, run, 0).unwrap();
        // An unaligned length: refused by direct I/O, written all the same.
        write_at(&f, &path, b"tail", 2 * DIRECT_IO_ALIGN as u64).unwrap();
        write_at(&f, &path, b"more", 2 * DIRECT_IO_ALIGN as u64 + 4).unwrap();
        finish_file(f.file(), &path, 0o600, 1_000).unwrap();
        let mut expected = vec![7; 2 * DIRECT_IO_ALIGN];
        expected.extend_from_slice(b"tailmore");
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    }

    #[test]
    fn only_large_aligned_files_are_written_directly() {
        assert!(writes_direct(1 << 30));
        assert!(writes_direct(DIRECT_IO_MIN_SIZE));
        assert!(!writes_direct(DIRECT_IO_MIN_SIZE - DIRECT_IO_ALIGN as u64));
        assert!(!writes_direct((1 << 30) + 512));
        assert!(!writes_direct(0));
    }
}
