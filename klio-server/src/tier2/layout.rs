//! Where Tier 1's files live in Tier 2: under the same relative paths.
//!
//! A file at `<data_dir>/clusters/<cluster>/<path>` on Tier 1 is the object
//! `clusters/<cluster>/<path>` (under the configured key prefix), and a Tier 2 object read
//! back for serving is written to `<cache_root>/clusters/<cluster>/<path>`, so that the Tier 1
//! readers (`WalArchiveReader`, `BackupStore`) read a cache directory exactly as they read a
//! data directory. The one object without a Tier 1 file of the same bytes is the segment in
//! progress: its journal is uploaded cut after its last valid frame (see the module
//! documentation of [`super`]).

use std::path::{Component, Path, PathBuf};

use klio_proto::klio::ClusterName;

/// The directory of a cluster's files under a data or cache root.
pub(crate) fn cluster_dir(root: &Path, cluster: &ClusterName) -> PathBuf {
    root.join("clusters").join(cluster.as_str())
}

/// The key prefix of every object of `cluster`, with its trailing `/`.
pub(crate) fn cluster_prefix(cluster: &ClusterName) -> String {
    format!("clusters/{}/", cluster.as_str())
}

/// The object key of the file `relative` (to the cluster's directory: `wal/<name>`,
/// `backups/packs/<id>.pack`, ...).
///
/// `relative` comes from Klio's own listings, never from a client; a path that is not plain
/// relative components is a bug, and is refused with `None` rather than mapped.
pub(crate) fn object_key(cluster: &ClusterName, relative: &Path) -> Option<String> {
    let mut key = cluster_prefix(cluster);
    let mut first = true;
    for component in relative.components() {
        let Component::Normal(part) = component else {
            return None;
        };
        let part = part.to_str()?;
        if !first {
            key.push('/');
        }
        key.push_str(part);
        first = false;
    }
    (!first).then_some(key)
}

/// The object key of a WAL archive file (`wal/<name>`).
pub(crate) fn wal_key(cluster: &ClusterName, file_name: &str) -> String {
    format!("{}wal/{file_name}", cluster_prefix(cluster))
}

/// The object key of a backup store file (`backups/<path>`, `path` with `/` separators).
pub(crate) fn backup_key(cluster: &ClusterName, path: &str) -> String {
    format!("{}backups/{path}", cluster_prefix(cluster))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> ClusterName {
        ClusterName::new("pg-main").unwrap()
    }

    #[test]
    fn a_tier_1_path_and_its_object_key_name_the_same_file() {
        let c = cluster();
        assert_eq!(
            object_key(&c, Path::new("wal/000000010000000000000003.klio")).unwrap(),
            wal_key(&c, "000000010000000000000003.klio")
        );
        assert_eq!(
            object_key(&c, Path::new("backups/packs/abc.pack")).unwrap(),
            backup_key(&c, "packs/abc.pack")
        );
        assert_eq!(
            cluster_dir(Path::new("/cache"), &c).join("wal/x"),
            PathBuf::from("/cache/clusters/pg-main/wal/x")
        );
    }

    #[test]
    fn paths_that_are_not_plain_relative_ones_have_no_key() {
        let c = cluster();
        for bad in ["/etc/passwd", "../other/wal/x", "wal/../../x", ""] {
            assert_eq!(object_key(&c, Path::new(bad)), None, "{bad}");
        }
    }
}
