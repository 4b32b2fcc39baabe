//! The relay frontier: what of one cluster is safely in Tier 2.
//!
//! # Frontier
//!
//! `<data_dir>/clusters/<cluster>/tier2-frontier.json`, written by the relay with
//! [`klio_wal::durable::replace`] only after every upload it records was confirmed by the
//! S3 server (a 200, or an existing object proven identical). It is the relay's whole memory:
//! the relay never lists the bucket to learn what is up, and Tier 1 retention removes only
//! what the frontier records. A missing file means nothing was relayed yet; a file that cannot
//! be read or parsed is an error naming it, and the relay stops for that cluster rather than
//! guess (see [`FrontierError`]).
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `schema` | integer | `1`; another value is refused |
//! | `identity` | bool | `wal/klio-archive.identity` is up |
//! | `histories` | array of integers | timelines whose history file is up |
//! | `segments` | object: timeline (decimal string) → array of `[first, last]` | completed segments up, as inclusive runs of segment numbers |
//! | `partial` | object or null | the segment in progress as last uploaded: `timeline`, `segno`, `end` (LSN, integer), `uploaded_at` (Unix seconds) |
//! | `wal_end` | object or null | the end of Tier 2's WAL: `timeline`, `lsn` (integer): the end of the newest segment or partial such that all WAL before it on that timeline is up (from the first segment relayed); `since` (Unix seconds): when it last equalled Tier 1's durable end |
//! | `hash_key` | bool | `backups/block-hash-key` is up |
//! | `dictionary` | bool | `backups/block-dictionary` is up (added later: absent reads as `false`) |
//! | `packs` | array of strings | pack ids whose `.pack` and `.idx` are both up |
//! | `backups` | object: backup id → `{"pinned": bool}` | backups whose catalog files are all up (`entry.json` last), and whether `pinned` is up |
//!
//! Unknown fields are refused too: a frontier written by a newer Klio is not silently
//! narrowed by an older one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use klio_wal::{FsAction, FsError, SegmentNo, TimelineId};
use serde::{Deserialize, Serialize};

/// The file name of the frontier, in the cluster's directory.
pub(crate) const FRONTIER_FILE: &str = "tier2-frontier.json";

/// The schema this Klio writes and reads.
pub(crate) const FRONTIER_SCHEMA: u32 = 1;

/// The frontier could not be read or written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrontierError {
    /// The file could not be read or written.
    #[error("cannot use the Tier 2 frontier {path}")]
    Fs {
        /// The frontier file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: FsError,
    },
    /// The file is not a frontier this Klio understands.
    #[error(
        "the Tier 2 frontier {path} is damaged or of another schema: the relay of this cluster \
         stops; restore the file from a backup, or remove it to upload everything again \
         (uploads of files already in Tier 2 are checked and skipped), then restart the server"
    )]
    Damaged {
        /// The frontier file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The frontier could not be encoded (plain data always encodes: a bug).
    #[error("cannot encode the Tier 2 frontier for {path}: this is a bug in Klio, report it")]
    Encode {
        /// The frontier file.
        path: PathBuf,
        /// The encoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// The file holds a schema number this Klio does not know.
    #[error(
        "the Tier 2 frontier {path} has schema {found}, this Klio knows {FRONTIER_SCHEMA}: \
         run the Klio version that wrote it"
    )]
    Schema {
        /// The frontier file.
        path: PathBuf,
        /// The schema found.
        found: u32,
    },
}

/// The segment in progress as last uploaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PartialUp {
    pub(crate) timeline: u32,
    pub(crate) segno: u64,
    pub(crate) end: u64,
    pub(crate) uploaded_at: u64,
}

/// Where Tier 2's WAL ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WalEnd {
    pub(crate) timeline: u32,
    pub(crate) lsn: u64,
    /// When it last equalled Tier 1's durable end (Unix seconds).
    pub(crate) since: u64,
}

/// A backup whose catalog files are all up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RelayedBackup {
    pub(crate) pinned: bool,
}

/// What of one cluster is in Tier 2 (see the [module documentation](self)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Frontier {
    pub(crate) schema: u32,
    pub(crate) identity: bool,
    pub(crate) histories: BTreeSet<u32>,
    pub(crate) segments: BTreeMap<u32, Vec<[u64; 2]>>,
    pub(crate) partial: Option<PartialUp>,
    pub(crate) wal_end: Option<WalEnd>,
    pub(crate) hash_key: bool,
    #[serde(default)]
    pub(crate) dictionary: bool,
    pub(crate) packs: BTreeSet<String>,
    pub(crate) backups: BTreeMap<String, RelayedBackup>,
}

impl Default for Frontier {
    fn default() -> Self {
        Self {
            schema: FRONTIER_SCHEMA,
            identity: false,
            histories: BTreeSet::new(),
            segments: BTreeMap::new(),
            partial: None,
            wal_end: None,
            hash_key: false,
            dictionary: false,
            packs: BTreeSet::new(),
            backups: BTreeMap::new(),
        }
    }
}

/// The frontier file of the cluster directory `cluster_dir`.
pub(crate) fn frontier_path(cluster_dir: &Path) -> PathBuf {
    cluster_dir.join(FRONTIER_FILE)
}

impl Frontier {
    /// Reads the frontier at `path`; a missing file is the empty frontier.
    pub(crate) fn load(path: &Path) -> Result<Self, FrontierError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => {
                return Err(FrontierError::Fs {
                    path: path.to_owned(),
                    source: FsError::new(FsAction::Read, path, e),
                });
            }
        };
        #[derive(Deserialize)]
        struct Schema {
            schema: u32,
        }
        if let Ok(Schema { schema }) = serde_json::from_slice::<Schema>(&bytes)
            && schema != FRONTIER_SCHEMA
        {
            return Err(FrontierError::Schema {
                path: path.to_owned(),
                found: schema,
            });
        }
        serde_json::from_slice(&bytes).map_err(|source| FrontierError::Damaged {
            path: path.to_owned(),
            source,
        })
    }

    /// Writes the frontier atomically and durably: after a crash the file is this one or the
    /// previous one, never a mix.
    pub(crate) fn save(&self, path: &Path) -> Result<(), FrontierError> {
        let mut bytes =
            serde_json::to_vec_pretty(self).map_err(|source| FrontierError::Encode {
                path: path.to_owned(),
                source,
            })?;
        bytes.push(b'\n');
        // replace: temp file, fsync, rename, directory fsync, so the frontier on disk never
        // claims more than what was confirmed before this call.
        klio_wal::durable::replace(path, &bytes).map_err(|source| FrontierError::Fs {
            path: path.to_owned(),
            source,
        })
    }

    /// Whether the completed segment `timeline`/`segno` is up.
    pub(crate) fn has_segment(&self, timeline: TimelineId, segno: SegmentNo) -> bool {
        self.segments.get(&timeline.get()).is_some_and(|runs| {
            runs.iter()
                .any(|[first, last]| (*first..=*last).contains(&segno.0))
        })
    }

    /// Records the completed segment `timeline`/`segno` as up, merging runs.
    pub(crate) fn add_segment(&mut self, timeline: TimelineId, segno: SegmentNo) {
        let runs = self.segments.entry(timeline.get()).or_default();
        runs.push([segno.0, segno.0]);
        runs.sort_unstable();
        let mut merged: Vec<[u64; 2]> = Vec::with_capacity(runs.len());
        for run in runs.drain(..) {
            match merged.last_mut() {
                Some(last) if run[0] <= last[1].saturating_add(1) => last[1] = last[1].max(run[1]),
                _ => merged.push(run),
            }
        }
        *runs = merged;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tl(n: u32) -> TimelineId {
        TimelineId::new(n).unwrap()
    }

    #[test]
    fn segments_merge_into_runs_and_are_found_in_them() {
        let mut f = Frontier::default();
        for s in [3, 5, 4, 9, 1] {
            f.add_segment(tl(1), SegmentNo(s));
        }
        assert_eq!(f.segments[&1], vec![[1, 1], [3, 5], [9, 9]]);
        assert!(f.has_segment(tl(1), SegmentNo(4)));
        assert!(!f.has_segment(tl(1), SegmentNo(2)));
        assert!(!f.has_segment(tl(2), SegmentNo(4)));
        f.add_segment(tl(1), SegmentNo(2));
        assert_eq!(f.segments[&1], vec![[1, 5], [9, 9]]);
    }

    #[test]
    fn a_saved_frontier_loads_back_and_a_missing_one_is_empty() {
        let d = tempfile::tempdir().unwrap();
        let path = frontier_path(d.path());
        assert_eq!(Frontier::load(&path).unwrap(), Frontier::default());
        let mut f = Frontier {
            identity: true,
            hash_key: true,
            dictionary: true,
            ..Frontier::default()
        };
        f.add_segment(tl(1), SegmentNo(7));
        f.histories.insert(2);
        f.packs.insert("ab".into());
        f.backups
            .insert("b1".into(), RelayedBackup { pinned: true });
        f.partial = Some(PartialUp {
            timeline: 1,
            segno: 8,
            end: 8 << 24 | 100,
            uploaded_at: 5,
        });
        f.save(&path).unwrap();
        assert_eq!(Frontier::load(&path).unwrap(), f);
    }

    #[test]
    fn a_frontier_written_before_dictionaries_loads_without_one() {
        let d = tempfile::tempdir().unwrap();
        let path = frontier_path(d.path());
        let mut older = serde_json::to_value(Frontier {
            hash_key: true,
            dictionary: true,
            ..Frontier::default()
        })
        .unwrap();
        older.as_object_mut().unwrap().remove("dictionary");
        std::fs::write(&path, serde_json::to_vec(&older).unwrap()).unwrap();
        let loaded = Frontier::load(&path).unwrap();
        assert!(loaded.hash_key);
        assert!(!loaded.dictionary, "so the relay puts the dictionary up");
    }

    #[test]
    fn a_damaged_frontier_is_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let path = frontier_path(d.path());
        std::fs::write(&path, b"{\"schema\": 1, \"identity\": tru").unwrap();
        let e = Frontier::load(&path).unwrap_err();
        assert!(matches!(e, FrontierError::Damaged { .. }), "{e:?}");
        assert!(e.to_string().contains(FRONTIER_FILE), "{e}");
        std::fs::write(&path, b"{\"schema\": 2}").unwrap();
        assert!(matches!(
            Frontier::load(&path),
            Err(FrontierError::Schema { found: 2, .. })
        ));
    }
}
