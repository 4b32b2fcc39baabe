//! The entries of a data directory and its tablespaces, as a backup records them.
//!
//! [`Walk`] visits the data directory and then each tablespace's version directory
//! (`<location>/PG_<major>_<catversion>`, recorded under `pg_tblspc/<oid>/`), depth first,
//! each directory's names sorted, and yields what the [`exclude`](super::exclude) rules keep.
//! It holds the names of one directory at a time (and the directories still to visit), so a
//! data directory of a million files costs what its largest directory costs.
//!
//! As in PostgreSQL's own backups, an entry that vanishes between the listing and its `lstat`
//! is not an error (a relation dropped meanwhile); any other failure to read is.

use std::collections::VecDeque;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::LocalCaptureError;
use super::exclude::{self, DirectoryRole, UnloggedRelations, Verdict};

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum WalkKind {
    /// A regular file of this size when it was listed.
    File { size: u64 },
    /// A directory.
    Directory,
}

/// One entry to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WalkEntry {
    /// Its path in the backup.
    pub(crate) path: String,
    /// Where it is read.
    pub(crate) source: PathBuf,
    pub(crate) kind: WalkKind,
    /// Permission bits.
    pub(crate) mode: u32,
    /// Modification time, seconds since the epoch.
    pub(crate) mtime: i64,
}

/// A tree to walk: its directory and its path in the backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WalkRoot {
    source: PathBuf,
    path: String,
    kind: RootKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RootKind {
    DataDirectory,
    TablespaceVersion,
}

impl WalkRoot {
    /// The data directory (its own entry is not recorded: a restore creates it).
    pub(crate) fn data_directory(dir: &Path) -> Self {
        Self {
            source: dir.to_owned(),
            path: String::new(),
            kind: RootKind::DataDirectory,
        }
    }

    /// A tablespace's version directory `version` (`PG_15_202209061`) at `location`,
    /// recorded as `pg_tblspc/<oid>/<version>`.
    pub(crate) fn tablespace(oid: u32, location: &Path, version: &str) -> Self {
        Self {
            source: location.join(version),
            path: format!("pg_tblspc/{oid}/{version}"),
            kind: RootKind::TablespaceVersion,
        }
    }
}

/// A directory still to read.
#[derive(Debug)]
struct Pending {
    source: PathBuf,
    path: String,
    role: DirectoryRole,
    /// Its numbered subdirectories are databases.
    holds_databases: bool,
}

/// Yields the entries of its roots (see the module documentation).
#[derive(Debug)]
pub(crate) struct Walk {
    roots: VecDeque<WalkRoot>,
    pending: Vec<Pending>,
    ready: VecDeque<WalkEntry>,
    /// Directories inside the data directory that are tablespaces, walked as such.
    skip: Vec<PathBuf>,
}

impl Walk {
    /// A walk of `roots` in order; directories in `skip` (tablespaces located inside the data
    /// directory) are left out of the trees that contain them.
    pub(crate) fn new(roots: Vec<WalkRoot>, skip: Vec<PathBuf>) -> Self {
        Self {
            roots: roots.into(),
            pending: Vec::new(),
            ready: VecDeque::new(),
            skip,
        }
    }

    /// The next entry, `None` once every root is walked.
    pub(crate) fn next_entry(&mut self) -> Result<Option<WalkEntry>, LocalCaptureError> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Ok(Some(e));
            }
            if let Some(dir) = self.pending.pop() {
                self.read_directory(dir)?;
                continue;
            }
            let Some(root) = self.roots.pop_front() else {
                return Ok(None);
            };
            self.start(root)?;
        }
    }

    fn start(&mut self, root: WalkRoot) -> Result<(), LocalCaptureError> {
        match root.kind {
            RootKind::DataDirectory => self.pending.push(Pending {
                source: root.source,
                path: root.path,
                role: DirectoryRole::DataDirectoryRoot,
                holds_databases: false,
            }),
            RootKind::TablespaceVersion => {
                // A tablespace dropped meanwhile is no error.
                let Some(meta) = stat(&root.source, Links::Follow)? else {
                    return Ok(());
                };
                self.ready
                    .push_back(directory_entry(&root.path, &root.source, &meta));
                self.pending.push(Pending {
                    source: root.source,
                    path: root.path,
                    role: DirectoryRole::Other,
                    holds_databases: true,
                });
            }
        }
        Ok(())
    }

    fn read_directory(&mut self, dir: Pending) -> Result<(), LocalCaptureError> {
        let listing = match std::fs::read_dir(&dir.source) {
            Ok(l) => l,
            // Removed since it was listed (a dropped database).
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(LocalCaptureError::Read {
                    path: dir.source,
                    source,
                });
            }
        };
        let mut names = Vec::new();
        for entry in listing {
            let entry = entry.map_err(|source| LocalCaptureError::Read {
                path: dir.source.clone(),
                source,
            })?;
            let name = entry.file_name();
            let name = name
                .into_string()
                .map_err(|raw| LocalCaptureError::PathNotUtf8 {
                    path: dir.source.join(raw),
                })?;
            names.push(name);
        }
        names.sort_unstable();
        let unlogged = if dir.role == DirectoryRole::Database {
            UnloggedRelations::of(names.iter().map(String::as_str))
        } else {
            UnloggedRelations::default()
        };
        let mut subdirectories = Vec::new();
        for name in &names {
            let source = dir.source.join(name);
            let path = if dir.path.is_empty() {
                name.clone()
            } else {
                format!("{}/{name}", dir.path)
            };
            // A file or directory removed since the listing is no error.
            let Some(meta) = stat(&source, Links::AsThemselves)? else {
                continue;
            };
            let file_type = meta.file_type();
            if file_type.is_file() {
                if exclude::file(name, dir.role, &unlogged) == Verdict::Keep {
                    self.ready.push_back(WalkEntry {
                        path,
                        source,
                        kind: WalkKind::File { size: meta.len() },
                        mode: meta.mode() & 0o7777,
                        mtime: meta.mtime(),
                    });
                }
                continue;
            }
            // A link is followed only where PostgreSQL records it as a directory: pg_wal and
            // the directories kept empty. Any other link is left out, as PostgreSQL does
            // ("skipping special file"); tablespaces are read from their own locations.
            let is_dir = file_type.is_dir();
            let verdict = exclude::directory(name, dir.role);
            if !(is_dir || file_type.is_symlink() && verdict == Verdict::KeepEmpty) {
                if !file_type.is_symlink() {
                    tracing::warn!("skipping special file {}", source.display());
                }
                continue;
            }
            if self.skip.iter().any(|s| s == &source) {
                continue;
            }
            let meta = if is_dir {
                meta
            } else {
                match stat(&source, Links::Follow)? {
                    Some(m) if m.is_dir() => m,
                    _ => continue,
                }
            };
            match verdict {
                Verdict::Skip => {}
                Verdict::KeepEmpty => {
                    self.ready.push_back(directory_entry(&path, &source, &meta));
                    if dir.role == DirectoryRole::DataDirectoryRoot && name == "pg_wal" {
                        // PostgreSQL records pg_wal/archive_status too, with pg_wal's metadata.
                        let status = format!("{path}/archive_status");
                        self.ready.push_back(directory_entry(
                            &status,
                            &source.join("archive_status"),
                            &meta,
                        ));
                    }
                }
                Verdict::Keep => {
                    self.ready.push_back(directory_entry(&path, &source, &meta));
                    let role = DirectoryRole::of_child(name, dir.holds_databases);
                    let holds_databases =
                        dir.role == DirectoryRole::DataDirectoryRoot && name == "base";
                    subdirectories.push(Pending {
                        source,
                        path,
                        role,
                        holds_databases,
                    });
                }
            }
        }
        // Depth first, in name order: the first subdirectory is read next.
        self.pending.extend(subdirectories.into_iter().rev());
        Ok(())
    }
}

fn directory_entry(path: &str, source: &Path, meta: &std::fs::Metadata) -> WalkEntry {
    WalkEntry {
        path: path.to_owned(),
        source: source.to_owned(),
        kind: WalkKind::Directory,
        mode: meta.mode() & 0o7777,
        mtime: meta.mtime(),
    }
}

/// Whether [`stat`] follows a symbolic link.
#[derive(Clone, Copy)]
enum Links {
    Follow,
    AsThemselves,
}

/// The metadata of `path`, `None` if it no longer exists.
fn stat(path: &Path, links: Links) -> Result<Option<std::fs::Metadata>, LocalCaptureError> {
    let meta = match links {
        Links::Follow => std::fs::metadata(path),
        Links::AsThemselves => std::fs::symlink_metadata(path),
    };
    match meta {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(LocalCaptureError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path, bytes: usize) {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(path, vec![7u8; bytes]).unwrap();
    }

    fn walk_all(walk: &mut Walk) -> Vec<(String, WalkKind)> {
        let mut out = Vec::new();
        while let Some(e) = walk.next_entry().unwrap() {
            out.push((e.path, e.kind));
        }
        out
    }

    fn file(path: &str, size: u64) -> (String, WalkKind) {
        (path.to_owned(), WalkKind::File { size })
    }

    fn dir(path: &str) -> (String, WalkKind) {
        (path.to_owned(), WalkKind::Directory)
    }

    #[test]
    fn a_data_directory_is_walked_as_postgresql_backs_it_up() {
        let d = tempfile::tempdir().unwrap();
        let pgdata = d.path().join("data");
        touch(&pgdata.join("PG_VERSION"), 3);
        touch(&pgdata.join("postmaster.pid"), 10);
        touch(&pgdata.join("global/pg_control"), 8192);
        touch(&pgdata.join("global/pg_internal.init"), 100);
        touch(&pgdata.join("base/5/16384"), 8192);
        touch(&pgdata.join("base/5/16390"), 8192);
        touch(&pgdata.join("base/5/16390_init"), 8192);
        touch(&pgdata.join("base/5/16390_fsm"), 8192);
        touch(&pgdata.join("base/5/t3_16400"), 8192);
        touch(&pgdata.join("base/pgsql_tmp/pgsql_tmp123.0"), 10);
        touch(&pgdata.join("pg_wal/000000010000000000000001"), 100);
        touch(
            &pgdata.join("pg_wal/archive_status/000000010000000000000001.done"),
            0,
        );
        touch(&pgdata.join("pg_replslot/s1/state"), 100);
        touch(&pgdata.join("pg_stat/pgstat.stat"), 10);
        std::fs::create_dir_all(pgdata.join("pg_tblspc")).unwrap();
        std::os::unix::fs::symlink(d.path().join("ts"), pgdata.join("pg_tblspc/16500")).unwrap();
        // A link anywhere else is left out, as PostgreSQL leaves it out.
        std::os::unix::fs::symlink("/etc/hostname", pgdata.join("stray-link")).unwrap();
        touch(&d.path().join("ts/PG_15_202209061/5/16501"), 8192);

        let mut walk = Walk::new(
            vec![
                WalkRoot::data_directory(&pgdata),
                WalkRoot::tablespace(16500, &d.path().join("ts"), "PG_15_202209061"),
            ],
            Vec::new(),
        );
        assert_eq!(
            walk_all(&mut walk),
            [
                file("PG_VERSION", 3),
                dir("base"),
                dir("global"),
                dir("pg_replslot"),
                dir("pg_stat"),
                dir("pg_tblspc"),
                dir("pg_wal"),
                dir("pg_wal/archive_status"),
                dir("base/5"),
                file("base/5/16384", 8192),
                file("base/5/16390_init", 8192),
                file("global/pg_control", 8192),
                file("pg_stat/pgstat.stat", 10),
                dir("pg_tblspc/16500/PG_15_202209061"),
                dir("pg_tblspc/16500/PG_15_202209061/5"),
                file("pg_tblspc/16500/PG_15_202209061/5/16501", 8192),
            ]
        );
    }

    #[test]
    fn what_vanishes_while_walking_is_no_error() {
        let d = tempfile::tempdir().unwrap();
        let mut walk = Walk::new(
            vec![
                WalkRoot::data_directory(&d.path().join("gone")),
                WalkRoot::tablespace(1, &d.path().join("also-gone"), "PG_15_1"),
            ],
            Vec::new(),
        );
        assert_eq!(walk_all(&mut walk), []);
    }

    #[test]
    fn a_tablespace_inside_the_data_directory_is_walked_once_as_a_tablespace() {
        let d = tempfile::tempdir().unwrap();
        let pgdata = d.path().join("data");
        touch(&pgdata.join("PG_VERSION"), 3);
        touch(&pgdata.join("inside/PG_15_1/5/1"), 1);
        let mut walk = Walk::new(
            vec![
                WalkRoot::data_directory(&pgdata),
                WalkRoot::tablespace(7, &pgdata.join("inside"), "PG_15_1"),
            ],
            vec![pgdata.join("inside")],
        );
        assert_eq!(
            walk_all(&mut walk),
            [
                file("PG_VERSION", 3),
                dir("pg_tblspc/7/PG_15_1"),
                dir("pg_tblspc/7/PG_15_1/5"),
                file("pg_tblspc/7/PG_15_1/5/1", 1),
            ]
        );
    }
}
