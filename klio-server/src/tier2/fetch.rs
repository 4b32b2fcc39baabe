//! The local cache of Tier 2 objects that reads are served from.
//!
//! # Cache
//!
//! A [`Tier2Cache`] fetches objects into a root laid out like a data directory: the object
//! `clusters/<cluster>/<path>` becomes `<root>/clusters/<cluster>/<path>` (see
//! [`layout::cluster_dir`]), so that the Tier 1 readers (`WalArchiveReader`, `BackupStore`)
//! read it exactly as they read a data directory, with every check of the file formats.
//!
//! - A file already cached is returned as it is, and marked recently used.
//! - Otherwise the object is fetched whole (its CRC32C is checked by the `ObjectStore`: a
//!   damaged object is an error naming its key, and nothing is written) and written as a
//!   temporary file renamed into place, so a reader never sees half a file. One fetch of a
//!   file runs at a time (sessions run on several threads: two would write the same temporary
//!   file); a fetch that waited for another finds the file cached.
//! - Above `tier2.cache_size` bytes the least recently used files are removed; the archive
//!   identity and the block hash key (tiny, and needed by every read of their cluster) are
//!   never evicted.
//!
//! The root is `<data_dir>/tier2-cache` on a read-write server, and `<data_dir>` itself on a
//! read-only server (it has no Tier 1 there, only the cache, the data directory lock and the
//! QUIC endpoint keys).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use klio_proto::klio::ClusterName;
use klio_tier2::Tier2Error;
use klio_wal::{FsAction, FsError, durable};

use super::{Tier2, layout};
use crate::backup_registry::SharedIndex;

/// The cache's directory under a read-write server's data directory.
pub(crate) const CACHE_DIR: &str = "tier2-cache";

/// Files that stay cached whatever their age: every read of their cluster needs them.
const PINNED_FILES: [&str; 3] = [
    klio_store::wal_archive::IDENTITY_FILE,
    klio_store::backup::HASH_KEY_FILE,
    klio_store::backup::DICTIONARY_FILE,
];

/// A file could not be brought from Tier 2 into the cache.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    /// The path has no object key (a bug in the caller: paths come from Klio's own names).
    #[error("{0} is not a path of a cluster's files in Tier 2")]
    NoKey(PathBuf),
    /// The object could not be read, or failed its checksum.
    #[error("cannot read {key} from Tier 2")]
    Get {
        /// The object's key (under the configured prefix).
        key: String,
        /// What the object store reported.
        #[source]
        source: Tier2Error,
    },
    /// The cache directory could not be written.
    #[error(
        "cannot write Tier 2's {key} into the local cache: check the disk under the data directory"
    )]
    Write {
        /// The object's key.
        key: String,
        /// The filesystem error.
        #[source]
        source: FsError,
    },
}

impl FetchError {
    /// Whether the object itself is damaged (a retry fetches the same bytes).
    pub(crate) fn is_damage(&self) -> bool {
        matches!(
            self,
            Self::Get {
                source: Tier2Error::Integrity { .. },
                ..
            }
        )
    }
}

/// What the cache knows of one file.
#[derive(Debug, Clone, Copy)]
struct Entry {
    size: u64,
    /// When it was last used, in ticks of [`Usage::clock`].
    used: u64,
}

/// The cached files and their use, for eviction.
#[derive(Debug, Default)]
struct Usage {
    files: HashMap<PathBuf, Entry>,
    total: u64,
    clock: u64,
}

impl Usage {
    fn touch(&mut self, path: &Path, size: u64) {
        self.clock += 1;
        let used = self.clock;
        if let Some(old) = self.files.insert(path.to_owned(), Entry { size, used }) {
            self.total -= old.size;
        }
        self.total += size;
    }

    /// The least recently used files to remove to fit `limit`, never `keep` or a pinned file.
    fn evict(&mut self, limit: u64, keep: &Path) -> Vec<PathBuf> {
        let mut candidates: Vec<(u64, PathBuf)> = self
            .files
            .iter()
            .filter(|(path, _)| *path != keep && !is_pinned(path))
            .map(|(path, e)| (e.used, path.clone()))
            .collect();
        candidates.sort();
        let mut evicted = Vec::new();
        for (_, path) in candidates {
            if self.total <= limit {
                break;
            }
            if let Some(e) = self.files.remove(&path) {
                self.total -= e.size;
                evicted.push(path);
            }
        }
        evicted
    }
}

fn is_pinned(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| PINNED_FILES.contains(&n))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain maps, updated in one step: a panicking holder leaves nothing half-changed.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether a cached copy is served as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fill {
    /// Fetched only when not cached.
    IfMissing,
    /// Fetched again (an object Tier 2 replaces).
    Always,
}

/// Tier 2 objects fetched into a local directory (see the [module documentation](self)).
#[derive(Debug)]
pub(crate) struct Tier2Cache {
    tier2: Arc<Tier2>,
    root: PathBuf,
    usage: Mutex<Usage>,
    /// Per cluster, the block index of the packs in Tier 2 last looked at (rebuilt when a
    /// block is not in it: the relay may have uploaded packs since).
    indexes: Mutex<HashMap<ClusterName, SharedIndex>>,
    /// Fetches in progress, by cached path: one at a time per file, because two would write
    /// the same temporary file (and the second of two fetches of a missing file finds it
    /// cached). Entries go when their last fetch ends.
    fetching: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
}

impl Tier2Cache {
    /// A cache at `root`; files left there by an earlier run are counted (as least recently
    /// used) and served.
    pub(crate) fn new(tier2: Arc<Tier2>, root: PathBuf) -> Self {
        let mut usage = Usage::default();
        let mut stack = vec![root.join("clusters")];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                match entry.metadata() {
                    Ok(m) if m.is_dir() => stack.push(path),
                    Ok(m) if !path.to_string_lossy().ends_with(durable::TEMP_SUFFIX) => {
                        usage.touch(&path, m.len());
                    }
                    _ => {}
                }
            }
        }
        Self {
            tier2,
            root,
            usage: Mutex::new(usage),
            indexes: Mutex::default(),
            fetching: Mutex::default(),
        }
    }

    /// The block index of `cluster`'s Tier 2 packs last built, if any.
    pub(crate) fn block_index(&self, cluster: &ClusterName) -> Option<SharedIndex> {
        lock(&self.indexes).get(cluster).cloned()
    }

    /// Keeps `index` as `cluster`'s Tier 2 block index.
    pub(crate) fn set_block_index(&self, cluster: &ClusterName, index: SharedIndex) {
        lock(&self.indexes).insert(cluster.clone(), index);
    }

    /// The cache directory of `cluster`'s files (laid out like its Tier 1 directory).
    pub(crate) fn cluster_dir(&self, cluster: &ClusterName) -> PathBuf {
        layout::cluster_dir(&self.root, cluster)
    }

    fn usage(&self) -> MutexGuard<'_, Usage> {
        lock(&self.usage)
    }

    /// The cached copy of `cluster`'s file `relative` (`wal/<name>`, `backups/<path>`),
    /// fetched from Tier 2 unless cached; `None` when Tier 2 has no such object.
    pub(crate) async fn fetch(
        &self,
        cluster: &ClusterName,
        relative: &Path,
    ) -> Result<Option<PathBuf>, FetchError> {
        self.fill(cluster, relative, Fill::IfMissing).await
    }

    /// Like [`fetch`](Self::fetch), but always fetching the object again (for the segment in
    /// progress, whose object Tier 2 refreshes).
    pub(crate) async fn refresh(
        &self,
        cluster: &ClusterName,
        relative: &Path,
    ) -> Result<Option<PathBuf>, FetchError> {
        self.fill(cluster, relative, Fill::Always).await
    }

    /// [`fetch`](Self::fetch) and [`refresh`](Self::refresh), one fetch of a file at a time.
    async fn fill(
        &self,
        cluster: &ClusterName,
        relative: &Path,
        fill: Fill,
    ) -> Result<Option<PathBuf>, FetchError> {
        let path = self.cluster_dir(cluster).join(relative);
        let cached = || match std::fs::metadata(&path) {
            Ok(m) => {
                self.usage().touch(&path, m.len());
                Some(path.clone())
            }
            Err(_) => None,
        };
        if fill == Fill::IfMissing
            && let Some(p) = cached()
        {
            return Ok(Some(p));
        }
        let slot = lock(&self.fetching)
            .entry(path.clone())
            .or_default()
            .clone();
        let outcome = {
            let _one_at_a_time = slot.lock().await;
            match (fill, cached()) {
                // Fetched by the fetch this one waited for.
                (Fill::IfMissing, Some(p)) => Ok(Some(p)),
                _ => self.get_into(cluster, relative, &path).await,
            }
        };
        let mut fetching = lock(&self.fetching);
        // Only the map and this fetch hold it: no one waits for this file.
        if Arc::strong_count(&slot) == 2 {
            fetching.remove(&path);
        }
        outcome
    }

    /// Gets `relative`'s object into `path`.
    async fn get_into(
        &self,
        cluster: &ClusterName,
        relative: &Path,
        path: &Path,
    ) -> Result<Option<PathBuf>, FetchError> {
        let key = layout::object_key(cluster, relative)
            .ok_or_else(|| FetchError::NoKey(relative.to_owned()))?;
        let path = path.to_owned();
        let Some(bytes) = self
            .tier2
            .store
            .get(&key)
            .await
            .map_err(|source| FetchError::Get {
                key: key.clone(),
                source,
            })?
        else {
            // Gone from Tier 2 (a journal whose segment was finished): so is the copy.
            self.forget(&path);
            return Ok(None);
        };
        let write = |source| FetchError::Write {
            key: key.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| write(FsError::new(FsAction::CreateDirectory, dir, e)))?;
        }
        // No fsync: a cache is refilled from Tier 2 after a crash, and a torn file fails the
        // format's own checks (sealed and journal frames are authenticated or CRC-checked).
        durable::replace_without_sync(&path, &bytes).map_err(write)?;
        let evicted = {
            let mut usage = self.usage();
            usage.touch(&path, bytes.len() as u64);
            usage.evict(self.tier2.settings.cache_bytes, &path)
        };
        for old in evicted {
            if let Err(e) = std::fs::remove_file(&old) {
                tracing::warn!("cannot evict {} from the Tier 2 cache: {e}", old.display());
            }
        }
        Ok(Some(path))
    }

    /// Removes a cached file (a copy found damaged, so that the next read fetches it again).
    pub(crate) fn forget(&self, path: &Path) {
        let mut usage = self.usage();
        if let Some(e) = usage.files.remove(path) {
            usage.total -= e.size;
        }
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_files_go_first_but_never_pinned_ones() {
        let mut u = Usage::default();
        u.touch(Path::new("c/wal/klio-archive.identity"), 10);
        u.touch(Path::new("c/wal/a"), 100);
        u.touch(Path::new("c/wal/b"), 100);
        u.touch(Path::new("c/wal/a"), 100);
        u.touch(Path::new("c/wal/c"), 100);
        assert_eq!(u.total, 310);
        let evicted = u.evict(150, Path::new("c/wal/c"));
        assert_eq!(
            evicted,
            [PathBuf::from("c/wal/b"), PathBuf::from("c/wal/a")]
        );
        assert_eq!(u.total, 110);
        assert!(u.evict(0, Path::new("c/wal/c")).is_empty());
    }
}
