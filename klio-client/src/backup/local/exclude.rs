//! What a backup read from the data directory leaves out: the rules PostgreSQL 15's own
//! `BASE_BACKUP` applies (`basebackup.c`), so that both capture methods catalog the same
//! files.
//!
//! | what | rule |
//! |---|---|
//! | `pg_stat_tmp`, `pg_replslot`, `pg_dynshmem`, `pg_notify`, `pg_serial`, `pg_snapshots`, `pg_subtrans` | the directory is kept, empty (its contents are recreated or not needed at start) |
//! | `pg_wal` | kept as an empty directory, with an empty `pg_wal/archive_status` (the WAL comes from Klio's archive) |
//! | `pg_tblspc` | kept as an empty directory: tablespaces are read from their locations and listed in `tablespace_map` |
//! | `postgresql.auto.conf.tmp`, `current_logfiles.tmp`, `backup_label`, `tablespace_map`, `backup_manifest`, `postmaster.pid`, `postmaster.opts`, `pg_internal.init*` | skipped, in any directory (the backup writes its own `backup_label`, `tablespace_map` and manifest) |
//! | names starting `pgsql_tmp` | skipped, files and directories |
//! | in a database directory: temporary relations (`t<backend>_<relfilenode>...`) | skipped |
//! | in a database directory: forks of an unlogged relation (one with an `<relfilenode>_init` fork) other than `_init` | skipped (recovery recreates them from the init fork) |
//! | sockets, devices, pipes | skipped |
//!
//! The rules take names and decide; they do no I/O, so every one is tested on its own.

/// The directories whose contents a backup leaves out, keeping the directory itself.
const EMPTIED_DIRECTORIES: [&str; 7] = [
    "pg_stat_tmp",
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_subtrans",
];

/// Files left out wherever they are.
const SKIPPED_FILES: [&str; 7] = [
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
    "backup_label",
    "tablespace_map",
    "backup_manifest",
    "postmaster.pid",
    "postmaster.opts",
];

/// Files left out wherever they are, by prefix: the relation cache's init files.
const SKIPPED_FILE_PREFIX: &str = "pg_internal.init";

/// PostgreSQL's temporary files and directories.
const TEMP_PREFIX: &str = "pgsql_tmp";

/// What becomes of an entry of a directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Recorded; a directory is read too.
    Keep,
    /// A directory recorded without its contents (a link to one is recorded as a directory).
    KeepEmpty,
    /// Not recorded.
    Skip,
}

/// Where in the tree a directory is, as far as the rules care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DirectoryRole {
    /// The data directory itself.
    DataDirectoryRoot,
    /// A database's directory (`base/<oid>`, or `<oid>` in a tablespace's version directory),
    /// which holds relation files.
    Database,
    /// Any other directory.
    Other,
}

impl DirectoryRole {
    /// The role of the directory `name`, whose parent holds databases or not (the data
    /// directory's `base`, a tablespace's `PG_<major>_<catversion>` directory).
    pub(crate) fn of_child(name: &str, parent_is_database_parent: bool) -> Self {
        if parent_is_database_parent && is_all_digits(name) {
            Self::Database
        } else {
            Self::Other
        }
    }
}

/// The verdict on the directory `name`, an entry of a directory of role `parent`.
pub(crate) fn directory(name: &str, parent: DirectoryRole) -> Verdict {
    if name.starts_with(TEMP_PREFIX) {
        return Verdict::Skip;
    }
    if EMPTIED_DIRECTORIES.contains(&name) {
        return Verdict::KeepEmpty;
    }
    if parent == DirectoryRole::DataDirectoryRoot && (name == "pg_wal" || name == "pg_tblspc") {
        return Verdict::KeepEmpty;
    }
    Verdict::Keep
}

/// The verdict on the regular file `name`, an entry of a directory of role `parent` whose
/// relations with an init fork (unlogged relations) are `unlogged`.
pub(crate) fn file(name: &str, parent: DirectoryRole, unlogged: &UnloggedRelations) -> Verdict {
    if SKIPPED_FILES.contains(&name)
        || name.starts_with(SKIPPED_FILE_PREFIX)
        || name.starts_with(TEMP_PREFIX)
    {
        return Verdict::Skip;
    }
    if parent == DirectoryRole::Database {
        if is_temp_relation(name) {
            return Verdict::Skip;
        }
        if let Some(rel) = RelationFile::parse(name)
            && rel.fork != Some("init")
            && unlogged.contains(rel.relfilenode)
        {
            return Verdict::Skip;
        }
    }
    Verdict::Keep
}

/// The relations of one database directory that have an init fork.
#[derive(Debug, Default)]
pub(crate) struct UnloggedRelations(std::collections::HashSet<String>);

impl UnloggedRelations {
    /// From every name in the directory.
    pub(crate) fn of<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        Self(
            names
                .into_iter()
                .filter_map(RelationFile::parse)
                .filter(|r| r.fork == Some("init") && r.segment.is_none())
                .map(|r| r.relfilenode.to_owned())
                .collect(),
        )
    }

    fn contains(&self, relfilenode: &str) -> bool {
        self.0.contains(relfilenode)
    }
}

/// A relation file's name: `<relfilenode>[_<fork>][.<segment>]`.
#[derive(Debug, PartialEq, Eq)]
struct RelationFile<'a> {
    relfilenode: &'a str,
    fork: Option<&'a str>,
    segment: Option<&'a str>,
}

/// The forks other than the main one, as PostgreSQL names them.
const FORKS: [&str; 3] = ["fsm", "vm", "init"];

impl<'a> RelationFile<'a> {
    fn parse(name: &'a str) -> Option<Self> {
        let (base, segment) = match name.split_once('.') {
            Some((b, s)) if is_all_digits(s) => (b, Some(s)),
            Some(_) => return None,
            None => (name, None),
        };
        let (relfilenode, fork) = match base.split_once('_') {
            Some((r, f)) if FORKS.contains(&f) => (r, Some(f)),
            Some(_) => return None,
            None => (base, None),
        };
        is_all_digits(relfilenode).then_some(Self {
            relfilenode,
            fork,
            segment,
        })
    }
}

/// The segment number of a relation file (`<relfilenode>[_<fork>][.<segment>]`, 0 without a
/// suffix); `None` for any other name.
pub(crate) fn relation_segment(name: &str) -> Option<u32> {
    let rel = RelationFile::parse(name)?;
    match rel.segment {
        None => Some(0),
        Some(s) => s.parse().ok(),
    }
}

/// A temporary relation's file: `t<backend>_<relfilenode>[_<fork>][.<segment>]`.
fn is_temp_relation(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('t') else {
        return false;
    };
    let Some((backend, relation)) = rest.split_once('_') else {
        return false;
    };
    is_all_digits(backend) && RelationFile::parse(relation).is_some()
}

fn is_all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> UnloggedRelations {
        UnloggedRelations::default()
    }

    #[test]
    fn runtime_directories_are_kept_empty_and_temporary_ones_skipped() {
        for name in EMPTIED_DIRECTORIES {
            assert_eq!(
                directory(name, DirectoryRole::DataDirectoryRoot),
                Verdict::KeepEmpty,
                "{name}"
            );
        }
        assert_eq!(
            directory("pg_wal", DirectoryRole::DataDirectoryRoot),
            Verdict::KeepEmpty
        );
        assert_eq!(
            directory("pg_tblspc", DirectoryRole::DataDirectoryRoot),
            Verdict::KeepEmpty
        );
        // Only the data directory's own pg_wal is WAL.
        assert_eq!(directory("pg_wal", DirectoryRole::Other), Verdict::Keep);
        assert_eq!(directory("pgsql_tmp", DirectoryRole::Other), Verdict::Skip);
        assert_eq!(
            directory("pgsql_tmp12.3.fileset", DirectoryRole::Other),
            Verdict::Skip
        );
        for kept in [
            "base",
            "global",
            "pg_xact",
            "pg_multixact",
            "pg_stat",
            "pg_logical",
        ] {
            assert_eq!(
                directory(kept, DirectoryRole::DataDirectoryRoot),
                Verdict::Keep,
                "{kept}"
            );
        }
    }

    #[test]
    fn files_postgresql_never_backs_up_are_skipped_wherever_they_are() {
        for role in [
            DirectoryRole::DataDirectoryRoot,
            DirectoryRole::Database,
            DirectoryRole::Other,
        ] {
            for name in SKIPPED_FILES.iter().copied().chain([
                "pg_internal.init",
                "pg_internal.init.12345",
                "pgsql_tmp4711.0",
            ]) {
                assert_eq!(
                    file(name, role, &none()),
                    Verdict::Skip,
                    "{name} in {role:?}"
                );
            }
        }
        for kept in [
            "PG_VERSION",
            "postgresql.conf",
            "postgresql.auto.conf",
            "pg_control",
        ] {
            assert_eq!(
                file(kept, DirectoryRole::DataDirectoryRoot, &none()),
                Verdict::Keep,
                "{kept}"
            );
        }
    }

    #[test]
    fn temporary_relations_are_skipped_in_database_directories_only() {
        for name in ["t3_16384", "t3_16384_fsm", "t12_16390.1", "t3_16384_vm.2"] {
            assert_eq!(
                file(name, DirectoryRole::Database, &none()),
                Verdict::Skip,
                "{name}"
            );
            assert_eq!(
                file(name, DirectoryRole::Other, &none()),
                Verdict::Keep,
                "{name}"
            );
        }
        for kept in [
            "16384",
            "16384_fsm",
            "16384.1",
            "t3",
            "t_16384",
            "tx_16384",
            "t3_abc",
        ] {
            assert_eq!(
                file(kept, DirectoryRole::Database, &none()),
                Verdict::Keep,
                "{kept}"
            );
        }
    }

    #[test]
    fn only_the_init_fork_of_an_unlogged_relation_is_kept() {
        let names = [
            "16384",
            "16384_init",
            "16384_fsm",
            "16384.1",
            "16390",
            "16390_vm",
        ];
        let unlogged = UnloggedRelations::of(names);
        let kept: Vec<&str> = names
            .into_iter()
            .filter(|n| file(n, DirectoryRole::Database, &unlogged) == Verdict::Keep)
            .collect();
        assert_eq!(kept, ["16384_init", "16390", "16390_vm"]);
        // Outside a database directory nothing is a relation.
        assert_eq!(
            file("16384", DirectoryRole::Other, &unlogged),
            Verdict::Keep
        );
    }

    #[test]
    fn relation_file_names_parse_as_postgresql_forms_them() {
        assert_eq!(
            RelationFile::parse("16384_vm.3"),
            Some(RelationFile {
                relfilenode: "16384",
                fork: Some("vm"),
                segment: Some("3"),
            })
        );
        for not in [
            "",
            "_vm",
            "16384_",
            "16384_xyz",
            "16384.",
            "16384.a",
            "a16384",
            "PG_VERSION",
        ] {
            assert_eq!(RelationFile::parse(not), None, "{not}");
        }
    }

    #[test]
    fn relation_files_name_their_segment() {
        assert_eq!(relation_segment("16384"), Some(0));
        assert_eq!(relation_segment("16384_vm"), Some(0));
        assert_eq!(relation_segment("16384.12"), Some(12));
        assert_eq!(relation_segment("pg_filenode.map"), None);
        assert_eq!(relation_segment("PG_VERSION"), None);
    }

    #[test]
    fn databases_are_the_numbered_directories_of_a_database_parent() {
        assert_eq!(
            DirectoryRole::of_child("16384", true),
            DirectoryRole::Database
        );
        assert_eq!(
            DirectoryRole::of_child("16384", false),
            DirectoryRole::Other
        );
        assert_eq!(
            DirectoryRole::of_child("pgsql_tmp", true),
            DirectoryRole::Other
        );
    }
}
