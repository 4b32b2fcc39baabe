//! Where each entry of a backup goes on this host: the data directory, tablespace locations
//! (mapped with `--tablespace-mapping OLD=NEW`), and the paths a backup may never name.
//!
//! A backup's paths are never trusted as local paths. An entry path must be relative,
//! `/`-separated, without `.`, `..` or empty components; `pg_tblspc/<oid>` may only be the
//! link of a tablespace the backup lists (recreated pointing to the tablespace's mapped
//! location, whatever target the backup recorded), and `pg_tblspc/<oid>/...` files are
//! written under that location directly, never through a link. Any other symlink is refused.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use klio_proto::klio::{BackupInfo, FileKind};

use super::RestoreError;

/// `--tablespace-mapping OLD=NEW`: restore the tablespace that was at `OLD` into `NEW`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TablespaceMapping {
    /// The tablespace's location on the backed-up host.
    pub old: PathBuf,
    /// Where to restore it here.
    pub new: PathBuf,
}

impl std::str::FromStr for TablespaceMapping {
    type Err = RestoreError;

    /// `OLD=NEW`, both absolute.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || RestoreError::BadTablespaceMapping(s.to_owned());
        let (old, new) = s.split_once('=').ok_or_else(bad)?;
        let (old, new) = (PathBuf::from(old), PathBuf::from(new));
        if !old.is_absolute() || !new.is_absolute() {
            return Err(bad());
        }
        Ok(Self { old, new })
    }
}

/// Why an entry path of a backup is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnsafePathReason {
    /// The path is absolute.
    Absolute,
    /// It has a `..`, `.` or empty component, or a NUL byte.
    NotNormal,
    /// A symlink other than `pg_tblspc/<oid>`.
    SymlinkOutsidePgTblspc,
    /// `pg_tblspc/<name>` names no tablespace of the backup.
    UnknownTablespace(String),
    /// `pg_tblspc/<oid>` is a regular file instead of a link.
    FileAsTablespaceLink,
}

impl fmt::Display for UnsafePathReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Absolute => f.write_str("it is absolute"),
            Self::NotNormal => f.write_str("it has a '..', '.' or empty component or a NUL byte"),
            Self::SymlinkOutsidePgTblspc => {
                f.write_str("it is a symbolic link, and only pg_tblspc/<oid> links are restored")
            }
            Self::UnknownTablespace(name) => {
                write!(f, "{name} is not a tablespace the backup lists")
            }
            Self::FileAsTablespaceLink => {
                f.write_str("a tablespace's pg_tblspc entry must be a link, not a file")
            }
        }
    }
}

/// Where one entry goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// A file or directory at this local path.
    Local(PathBuf),
    /// The link `pg_tblspc/<oid>` in the data directory, to point to `location`.
    TablespaceLink {
        /// The tablespace.
        oid: u32,
        /// The link's path.
        link: PathBuf,
        /// The tablespace's (mapped) location.
        location: PathBuf,
    },
    /// The root directory of a tablespace: its (mapped) location, prepared before any file.
    TablespaceRoot,
}

/// One tablespace of the backup being restored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoredTablespace {
    /// Its OID.
    pub oid: u32,
    /// Its location on the backed-up host.
    pub original: String,
    /// Where it is restored.
    pub location: PathBuf,
}

/// The data directory and tablespace locations of one restore.
#[derive(Clone, Debug)]
pub struct Layout {
    pgdata: PathBuf,
    tablespaces: BTreeMap<u32, RestoredTablespace>,
}

impl Layout {
    /// The layout for `backup` restored into `pgdata`, its tablespaces mapped by `mappings`
    /// (each must match one of the backup's tablespace locations).
    pub fn new(
        pgdata: &Path,
        backup: &BackupInfo,
        mappings: &[TablespaceMapping],
    ) -> Result<Self, RestoreError> {
        let mut tablespaces = BTreeMap::new();
        for ts in &backup.tablespaces {
            let original = Path::new(&ts.location);
            if !original.is_absolute() {
                return Err(RestoreError::RelativeTablespace {
                    oid: ts.oid,
                    location: ts.location.clone(),
                });
            }
            let location = mappings
                .iter()
                .find(|m| same_path(&m.old, original))
                .map_or_else(|| original.to_owned(), |m| m.new.clone());
            tablespaces.insert(
                ts.oid,
                RestoredTablespace {
                    oid: ts.oid,
                    original: ts.location.clone(),
                    location,
                },
            );
        }
        for m in mappings {
            if !backup
                .tablespaces
                .iter()
                .any(|ts| same_path(&m.old, Path::new(&ts.location)))
            {
                return Err(RestoreError::MappingMatchesNoTablespace {
                    old: m.old.clone(),
                    locations: backup
                        .tablespaces
                        .iter()
                        .map(|ts| ts.location.clone())
                        .collect(),
                });
            }
        }
        Ok(Self {
            pgdata: pgdata.to_owned(),
            tablespaces,
        })
    }

    /// The data directory.
    pub fn pgdata(&self) -> &Path {
        &self.pgdata
    }

    /// The tablespaces, by OID.
    pub fn tablespaces(&self) -> impl Iterator<Item = &RestoredTablespace> {
        self.tablespaces.values()
    }

    /// Where the entry `path` of kind `kind` goes, or why it is refused.
    pub fn place(&self, path: &str, kind: &FileKind) -> Result<Placement, UnsafePathReason> {
        let path = path.strip_suffix('/').unwrap_or(path);
        if path.starts_with('/') {
            return Err(UnsafePathReason::Absolute);
        }
        let normal = !path.is_empty()
            && !path.contains('\0')
            && path
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..")
            && Path::new(path)
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
        if !normal {
            return Err(UnsafePathReason::NotNormal);
        }
        let mut parts = path.splitn(3, '/');
        let (first, second, rest) = (parts.next(), parts.next(), parts.next());
        if let (Some("pg_tblspc"), Some(name)) = (first, second) {
            let ts = name
                .parse::<u32>()
                .ok()
                .and_then(|oid| self.tablespaces.get(&oid))
                .ok_or_else(|| UnsafePathReason::UnknownTablespace(name.to_owned()))?;
            return match (rest, kind) {
                (None, FileKind::Symlink { .. }) => Ok(Placement::TablespaceLink {
                    oid: ts.oid,
                    link: self.pgdata.join(path),
                    location: ts.location.clone(),
                }),
                (None, FileKind::Directory) => Ok(Placement::TablespaceRoot),
                (None, _) => Err(UnsafePathReason::FileAsTablespaceLink),
                (Some(_), FileKind::Symlink { .. }) => {
                    Err(UnsafePathReason::SymlinkOutsidePgTblspc)
                }
                (Some(rest), _) => Ok(Placement::Local(ts.location.join(rest))),
            };
        }
        if matches!(kind, FileKind::Symlink { .. }) {
            return Err(UnsafePathReason::SymlinkOutsidePgTblspc);
        }
        Ok(Placement::Local(self.pgdata.join(path)))
    }

    /// The backup's `tablespace_map` rewritten with the mapped locations, or `None` when no
    /// line changes (the file is then restored byte-exactly).
    ///
    /// Each line is `<oid> <path>`, the path with `\`, line feed and carriage return escaped
    /// by a backslash, as PostgreSQL writes and reads it.
    pub fn rewrite_tablespace_map(&self, content: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(content.len());
        let mut changed = false;
        for line in map_lines(content) {
            let mapped = std::str::from_utf8(line.oid)
                .ok()
                .and_then(|oid| oid.parse::<u32>().ok())
                .and_then(|oid| self.tablespaces.get(&oid))
                .filter(|ts| Path::new(&ts.original) != ts.location);
            match mapped {
                Some(ts) => {
                    changed = true;
                    out.extend_from_slice(line.oid);
                    out.push(b' ');
                    for &b in ts.location.as_os_str().as_encoded_bytes() {
                        if matches!(b, b'\\' | b'\n' | b'\r') {
                            out.push(b'\\');
                        }
                        out.push(b);
                    }
                    out.push(b'\n');
                }
                None => out.extend_from_slice(line.raw),
            }
        }
        changed.then_some(out)
    }
}

/// Whether two absolute paths name the same place, ignoring a trailing `/`.
fn same_path(a: &Path, b: &Path) -> bool {
    a.components().eq(b.components())
}

/// One line of a `tablespace_map`: its bytes as they were (with the line feed) and its OID.
struct MapLine<'a> {
    raw: &'a [u8],
    oid: &'a [u8],
}

/// The lines of a `tablespace_map`; an escaped line feed does not end a line.
fn map_lines(content: &[u8]) -> Vec<MapLine<'_>> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < content.len() {
        match content[i] {
            b'\\' => i += 2,
            b'\n' => {
                lines.push(map_line(&content[start..=i]));
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    if start < content.len() {
        lines.push(map_line(&content[start..]));
    }
    lines
}

fn map_line(raw: &[u8]) -> MapLine<'_> {
    let oid_end = raw.iter().position(|&b| b == b' ').unwrap_or(raw.len());
    MapLine {
        raw,
        oid: &raw[..oid_end],
    }
}

#[cfg(test)]
mod tests {
    use klio_proto::klio::{BackupStatus, CatalogPosition, CatalogTablespace};
    use klio_wal::Lsn;

    use super::*;

    fn backup_with(tablespaces: &[(u32, &str)]) -> BackupInfo {
        let at = CatalogPosition {
            timeline: 1,
            lsn: Lsn(0x200_0028),
        };
        BackupInfo {
            schema: 1,
            id: "20261201T120000Z-3f9a".to_owned(),
            cluster: "pg-main".to_owned(),
            label: String::new(),
            status: BackupStatus::Complete,
            start: at,
            end: at,
            started_at: "2026-12-01T12:00:00Z".to_owned(),
            ended_at: "2026-12-01T12:00:00Z".to_owned(),
            completed_at: "2026-12-01T12:00:00Z".to_owned(),
            postgres_version: 150_010,
            system_identifier: "1".to_owned(),
            block_size: 65_536,
            tablespaces: tablespaces
                .iter()
                .map(|&(oid, location)| CatalogTablespace {
                    oid,
                    location: location.to_owned(),
                })
                .collect(),
            files: 0,
            blocks: 0,
            logical_bytes: 0,
            referenced_stored_bytes: 0,
            new_stored_bytes: 0,
            pinned: false,
            capture: klio_proto::klio::CaptureMethod::Stream,
        }
    }

    fn mapping(s: &str) -> TablespaceMapping {
        s.parse().unwrap()
    }

    #[test]
    fn tablespace_files_go_to_the_mapped_location_and_the_rest_to_pgdata() {
        let backup = backup_with(&[(16385, "/srv/ts1"), (16386, "/srv/ts2")]);
        let layout = Layout::new(
            Path::new("/restore/pg"),
            &backup,
            &[mapping("/srv/ts1/=/restore/ts1")],
        )
        .unwrap();
        let file = FileKind::File;
        assert_eq!(
            layout.place("base/1/1259", &file),
            Ok(Placement::Local("/restore/pg/base/1/1259".into()))
        );
        assert_eq!(
            layout.place("pg_tblspc/16385/PG_15_202209061/5/16390", &file),
            Ok(Placement::Local(
                "/restore/ts1/PG_15_202209061/5/16390".into()
            ))
        );
        assert_eq!(
            layout.place("pg_tblspc/16386/PG_15_202209061", &FileKind::Directory),
            Ok(Placement::Local("/srv/ts2/PG_15_202209061".into()))
        );
        let link = FileKind::Symlink {
            target: "/anywhere/the/backup/says".into(),
        };
        assert_eq!(
            layout.place("pg_tblspc/16385", &link),
            Ok(Placement::TablespaceLink {
                oid: 16385,
                link: "/restore/pg/pg_tblspc/16385".into(),
                location: "/restore/ts1".into(),
            })
        );
        assert_eq!(
            layout.place("pg_tblspc/16386/", &FileKind::Directory),
            Ok(Placement::TablespaceRoot)
        );
    }

    #[test]
    fn parent_components_absolute_paths_and_stray_symlinks_are_refused() {
        let backup = backup_with(&[(16385, "/srv/ts1")]);
        let layout = Layout::new(Path::new("/restore/pg"), &backup, &[]).unwrap();
        let file = FileKind::File;
        let link = FileKind::Symlink {
            target: "/etc".into(),
        };
        for (path, kind, reason) in [
            ("../etc/passwd", &file, UnsafePathReason::NotNormal),
            ("base/../../etc", &file, UnsafePathReason::NotNormal),
            ("base/./1", &file, UnsafePathReason::NotNormal),
            ("base//1", &file, UnsafePathReason::NotNormal),
            ("", &file, UnsafePathReason::NotNormal),
            ("/etc/passwd", &file, UnsafePathReason::Absolute),
            ("pg_wal", &link, UnsafePathReason::SymlinkOutsidePgTblspc),
            (
                "pg_tblspc/16385/PG_15/evil",
                &link,
                UnsafePathReason::SymlinkOutsidePgTblspc,
            ),
            (
                "pg_tblspc/99999",
                &link,
                UnsafePathReason::UnknownTablespace("99999".into()),
            ),
            (
                "pg_tblspc/x/y",
                &file,
                UnsafePathReason::UnknownTablespace("x".into()),
            ),
            (
                "pg_tblspc/16385",
                &file,
                UnsafePathReason::FileAsTablespaceLink,
            ),
            (
                "pg_tblspc/16385/../../../etc",
                &file,
                UnsafePathReason::NotNormal,
            ),
        ] {
            assert_eq!(layout.place(path, kind), Err(reason), "{path}");
        }
    }

    #[test]
    fn mappings_must_be_absolute_and_match_a_tablespace_of_the_backup() {
        for bad in ["/a", "a=/b", "/a=b", "=/b"] {
            assert!(
                matches!(
                    bad.parse::<TablespaceMapping>(),
                    Err(RestoreError::BadTablespaceMapping(_))
                ),
                "{bad}"
            );
        }
        let backup = backup_with(&[(16385, "/srv/ts1")]);
        let err = Layout::new(Path::new("/pg"), &backup, &[mapping("/srv/tsX=/new")]).unwrap_err();
        assert!(
            matches!(&err, RestoreError::MappingMatchesNoTablespace { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("/srv/ts1"), "{err}");
        let relative = backup_with(&[(16385, "srv/ts1")]);
        assert!(matches!(
            Layout::new(Path::new("/pg"), &relative, &[]),
            Err(RestoreError::RelativeTablespace { oid: 16385, .. })
        ));
    }

    #[test]
    fn tablespace_map_lines_of_mapped_tablespaces_are_rewritten_with_escapes() {
        let backup = backup_with(&[(16385, "/srv/ts1"), (16386, "/srv/ts2")]);
        let map = b"16385 /srv/ts1\n16386 /srv/ts2\n";
        let unmapped = Layout::new(Path::new("/pg"), &backup, &[]).unwrap();
        assert_eq!(unmapped.rewrite_tablespace_map(map), None);
        let same = Layout::new(Path::new("/pg"), &backup, &[mapping("/srv/ts1=/srv/ts1")]).unwrap();
        assert_eq!(same.rewrite_tablespace_map(map), None);
        let mapped = Layout::new(
            Path::new("/pg"),
            &backup,
            &[mapping("/srv/ts2=/new/odd\\dir\nx")],
        )
        .unwrap();
        assert_eq!(
            mapped.rewrite_tablespace_map(map).unwrap(),
            b"16385 /srv/ts1\n16386 /new/odd\\\\dir\\\nx\n"
        );
        // An escaped line feed inside a path does not split its line.
        let escaped = b"16386 /srv/ts2\\\nstill\n16385 /srv/ts1\n";
        let rewritten = mapped.rewrite_tablespace_map(escaped).unwrap();
        assert_eq!(rewritten, b"16386 /new/odd\\\\dir\\\nx\n16385 /srv/ts1\n");
    }

    /// Where a placed path may land: below `root`, by normal components only.
    fn strictly_below(path: &Path, root: &Path) -> bool {
        path.strip_prefix(root).is_ok_and(|rest| {
            rest.components().next().is_some()
                && rest.components().all(|c| matches!(c, Component::Normal(_)))
        })
    }

    proptest::proptest! {
        /// Whatever path the server sends, a restore writes below the data directory or a
        /// tablespace's mapped location, and links only `pg_tblspc/<oid>` of a known one.
        #[test]
        fn no_path_a_server_sends_lands_outside_the_restore(
            parts in proptest::collection::vec(
                proptest::sample::select(vec![
                    "base", "pg_tblspc", "16385", "16386", "..", ".", "", "a", "/", "\0", "x\0y",
                    "..a", "a..", "~", "pg_tblspc/..", "//",
                ]),
                0..7,
            ),
            leading_slash in proptest::bool::ANY,
            trailing_slash in proptest::bool::ANY,
            kind in 0u8..3,
        ) {
            let backup = backup_with(&[(16385, "/srv/ts1"), (16386, "/srv/ts2")]);
            let layout = Layout::new(
                Path::new("/restore/pg"),
                &backup,
                &[mapping("/srv/ts1=/restore/ts1")],
            )
            .unwrap();
            let mut path = parts.join("/");
            if leading_slash {
                path.insert(0, '/');
            }
            if trailing_slash {
                path.push('/');
            }
            let kind = match kind {
                0 => FileKind::File,
                1 => FileKind::Directory,
                _ => FileKind::Symlink {
                    target: "/etc".into(),
                },
            };
            match layout.place(&path, &kind) {
                Err(_) | Ok(Placement::TablespaceRoot) => {}
                Ok(Placement::Local(p)) => proptest::prop_assert!(
                    ["/restore/pg", "/restore/ts1", "/srv/ts2"]
                        .iter()
                        .any(|root| strictly_below(&p, Path::new(root))),
                    "{path:?} placed at {p:?}"
                ),
                Ok(Placement::TablespaceLink { oid, link, location }) => {
                    proptest::prop_assert!(oid == 16385 || oid == 16386, "{path:?}");
                    proptest::prop_assert_eq!(
                        link,
                        PathBuf::from(format!("/restore/pg/pg_tblspc/{oid}"))
                    );
                    let expected = if oid == 16385 { "/restore/ts1" } else { "/srv/ts2" };
                    proptest::prop_assert_eq!(location, PathBuf::from(expected));
                }
            }
        }
    }
}
