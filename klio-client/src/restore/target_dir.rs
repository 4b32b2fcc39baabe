//! The directories a restore writes into: empty (or emptied with `--force`), and the marker
//! that says a data directory is being restored.
//!
//! # The marker
//!
//! `klio-restore-in-progress` in the data directory is written (durably) before anything else
//! and removed (durably) after everything else, `backup_label` and `global/pg_control` last of
//! all. A directory holding it is incomplete: a crash or an error left it half restored, and
//! PostgreSQL cannot start on it (no `global/pg_control`). Its second line names the backup.

use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use klio_wal::{FsAction, FsError, durable};

use super::RestoreError;

/// The marker's file name.
pub const RESTORE_MARKER: &str = "klio-restore-in-progress";

/// The mode PostgreSQL wants for its data directory.
const PGDATA_MODE: u32 = 0o700;

/// What a target directory holds before the restore.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Contents {
    /// It does not exist.
    Missing,
    /// It exists and is empty.
    Empty,
    /// An earlier restore of `backup` into it did not finish.
    Interrupted {
        /// The backup id the marker names.
        backup: String,
    },
    /// It holds files.
    Files,
}

fn inspect(dir: &Path) -> Result<Contents, FsError> {
    let mut entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Contents::Missing),
        Err(e) => return Err(FsError::new(FsAction::ReadDirectory, dir, e)),
    };
    if entries.next().is_none() {
        return Ok(Contents::Empty);
    }
    let marker = dir.join(RESTORE_MARKER);
    match std::fs::read_to_string(&marker) {
        Ok(text) => Ok(Contents::Interrupted {
            backup: text
                .lines()
                .find_map(|l| l.strip_prefix("backup="))
                .unwrap_or("(unknown)")
                .to_owned(),
        }),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Contents::Files),
        Err(e) => Err(FsError::new(FsAction::Read, &marker, e)),
    }
}

/// Which directory is being prepared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TargetKind {
    /// The data directory: created with mode 0700.
    DataDirectory,
    /// A tablespace location: created with mode 0700 if missing, its mode kept otherwise.
    Tablespace,
}

/// What a restore does with a target directory that holds files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Existing {
    /// Refuses it (the default).
    Refuse,
    /// Removes its contents first (`--force`).
    Clear,
    /// Keeps them, to be reconciled with the backup (`--delta`).
    Keep,
}

/// Makes `dir` an existing directory to restore into: creates it if missing; one that holds
/// anything is refused, cleared or kept as `existing` says (never while a PostgreSQL runs on
/// it; never `dir` itself removed: it may be a mount point).
pub(super) fn prepare(
    dir: &Path,
    kind: TargetKind,
    existing: Existing,
) -> Result<(), RestoreError> {
    let force = existing != Existing::Refuse;
    match inspect(dir)? {
        Contents::Missing => {
            std::fs::create_dir_all(dir)
                .map_err(|e| FsError::new(FsAction::CreateDirectory, dir, e))?;
            set_mode(dir, PGDATA_MODE)?;
            // The new directory's entry must survive a crash before files go into it.
            if let Some(parent) = dir.parent() {
                durable::sync_dir(parent)?;
            }
            return Ok(());
        }
        Contents::Empty => {}
        Contents::Interrupted { backup } if !force => {
            return Err(RestoreError::InterruptedRestore {
                dir: dir.to_owned(),
                backup,
            });
        }
        Contents::Files if !force => return Err(RestoreError::NotEmpty(dir.to_owned())),
        Contents::Interrupted { .. } | Contents::Files => {
            if let Some(pid) = live_postmaster(dir) {
                return Err(RestoreError::PostgresRunning {
                    dir: dir.to_owned(),
                    pid,
                });
            }
            if existing == Existing::Clear {
                clear(dir)?;
            }
        }
    }
    if kind == TargetKind::DataDirectory {
        set_mode(dir, PGDATA_MODE)?;
    }
    Ok(())
}

/// The pid of a PostgreSQL that runs on `dir`: its `postmaster.pid` names a process that is
/// alive. A pid file left by a crash (kill -9, power loss) names none, and does not count.
fn live_postmaster(dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(dir.join("postmaster.pid")).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok()?;
    Path::new("/proc")
        .join(pid.to_string())
        .exists()
        .then_some(pid)
}

fn set_mode(dir: &Path, mode: u32) -> Result<(), FsError> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(|e| FsError::new(FsAction::SetPermissions, dir, e))
}

/// Removes everything in `dir` (symlinks themselves, never what they point to).
fn clear(dir: &Path) -> Result<(), FsError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| FsError::new(FsAction::ReadDirectory, dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| FsError::new(FsAction::ReadDirectory, dir, e))?;
        let path = entry.path();
        let is_dir = entry
            .file_type()
            .map_err(|e| FsError::new(FsAction::Stat, &path, e))?
            .is_dir();
        let removed = if is_dir {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|e| FsError::new(FsAction::Remove, &path, e))?;
    }
    // The removals must be on disk before the marker and new files can be trusted to
    // describe what the directory holds.
    durable::sync_dir(dir)
}

/// Writes the marker naming `backup` into `pgdata`, durably: it must be on disk before any
/// restored file can be.
pub(super) fn write_marker(pgdata: &Path, backup: &str) -> Result<(), FsError> {
    let text = format!(
        "klio restore of this data directory has not finished: it is incomplete until this \
         file is gone; run klio restore --force to restore it again\nbackup={backup}\n"
    );
    durable::replace(&pgdata.join(RESTORE_MARKER), text.as_bytes())
}

/// Removes the marker, durably: the last step of a restore.
pub(super) fn remove_marker(pgdata: &Path) -> Result<(), FsError> {
    let marker = pgdata.join(RESTORE_MARKER);
    std::fs::remove_file(&marker).map_err(|e| FsError::new(FsAction::Remove, &marker, e))?;
    // Until the removal is on disk, a crash brings the marker back: harmless, but the
    // restore is only reported complete once the directory says so too.
    durable::sync_dir(pgdata)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn force_never_clears_the_directory_of_a_running_postgresql_but_a_stale_pid_file_is_fine() {
        let d = tempfile::tempdir().unwrap();
        let pg = d.path().join("pg");
        std::fs::create_dir(&pg).unwrap();
        // This test process stands for a live postmaster.
        let me = std::process::id();
        std::fs::write(
            pg.join("postmaster.pid"),
            format!("{me}\n{}\n", pg.display()),
        )
        .unwrap();
        let err = prepare(&pg, TargetKind::DataDirectory, Existing::Clear).unwrap_err();
        assert!(
            matches!(&err, RestoreError::PostgresRunning { pid, .. } if *pid == me),
            "{err:?}"
        );
        assert!(pg.join("postmaster.pid").exists(), "nothing removed");
        // Left by a crash: its process is gone (pid_max is at most 2^22 on Linux).
        std::fs::write(pg.join("postmaster.pid"), "4194305\n").unwrap();
        prepare(&pg, TargetKind::DataDirectory, Existing::Clear).unwrap();
        assert_eq!(std::fs::read_dir(&pg).unwrap().count(), 0);
    }

    #[test]
    fn a_non_empty_directory_is_refused_without_force_and_emptied_with_it() {
        let d = tempfile::tempdir().unwrap();
        let pg = d.path().join("pg");
        std::fs::create_dir(&pg).unwrap();
        std::fs::write(pg.join("PG_VERSION"), "15\n").unwrap();
        std::fs::create_dir_all(pg.join("base/1")).unwrap();
        let outside = d.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, pg.join("link")).unwrap();

        let err = prepare(&pg, TargetKind::DataDirectory, Existing::Refuse).unwrap_err();
        assert!(
            matches!(&err, RestoreError::NotEmpty(p) if *p == pg),
            "{err:?}"
        );
        assert!(err.to_string().contains("--force"), "{err}");
        assert!(pg.join("PG_VERSION").exists());

        prepare(&pg, TargetKind::DataDirectory, Existing::Clear).unwrap();
        assert_eq!(std::fs::read_dir(&pg).unwrap().count(), 0);
        assert!(
            outside.join("keep").exists(),
            "a link's target is never removed"
        );
        let mode = std::fs::metadata(&pg).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_missing_directory_is_created_with_mode_0700() {
        let d = tempfile::tempdir().unwrap();
        let pg = d.path().join("a/b/pg");
        prepare(&pg, TargetKind::DataDirectory, Existing::Refuse).unwrap();
        let mode = std::fs::metadata(&pg).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        prepare(&pg, TargetKind::Tablespace, Existing::Refuse).unwrap();
    }

    #[test]
    fn a_directory_with_the_marker_is_reported_as_an_interrupted_restore() {
        let d = tempfile::tempdir().unwrap();
        let pg = d.path();
        write_marker(pg, "20261201T120000Z-3f9a").unwrap();
        std::fs::write(pg.join("PG_VERSION"), "15\n").unwrap();
        let err = prepare(pg, TargetKind::DataDirectory, Existing::Refuse).unwrap_err();
        match &err {
            RestoreError::InterruptedRestore { backup, .. } => {
                assert_eq!(backup, "20261201T120000Z-3f9a");
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("--force"), "{err}");
        prepare(pg, TargetKind::DataDirectory, Existing::Clear).unwrap();
        assert!(!pg.join(RESTORE_MARKER).exists());
    }
}
