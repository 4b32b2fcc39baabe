//! The prefetch spool: segments fetched ahead of PostgreSQL's requests, kept until asked for.
//!
//! Layout of the spool directory (one per cluster being recovered):
//! - `<segment>.<crc32c>`: a complete segment as the server sent it, named with the CRC-32C the
//!   server computed over its copy. A file is only served if its bytes still have that CRC, so
//!   a torn, truncated or damaged spool file is never handed to PostgreSQL; it is fetched again.
//!   Written through a temporary file and renamed, not fsynced: after a crash a spooled copy
//!   may be empty or torn, which its CRC catches (it is fetched again). Partial segments
//!   (still being streamed) are never spooled.
//! - `last-requested`: the last segment PostgreSQL asked for; the prefetcher fetches the ones
//!   after it.
//! - `prefetch.lock`: held by the one prefetcher running.
//! - `*.klio-tmp`: files being written.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use klio_wal::{FsAction, FsError, SegmentNo, SegmentSize, TimelineId, WalFileName, durable};

/// A segment name with what is needed to compute the names after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SpoolKey {
    pub(crate) timeline: TimelineId,
    pub(crate) segno: SegmentNo,
    pub(crate) size: SegmentSize,
}

impl SpoolKey {
    pub(crate) fn name(&self) -> String {
        WalFileName::Segment {
            timeline: self.timeline,
            segno: self.segno,
        }
        .to_string_with(self.size)
    }

    /// The `n`-th segment after this one on the same timeline.
    pub(crate) fn after(&self, n: u64) -> Option<Self> {
        Some(Self {
            segno: SegmentNo(self.segno.0.checked_add(n)?),
            ..*self
        })
    }

    fn encode(&self) -> String {
        format!("{} {}\n", self.name(), self.size.bytes_u64())
    }

    fn decode(text: &str) -> Option<Self> {
        let (name, size) = text.trim().split_once(' ')?;
        let size = SegmentSize::new(size.parse().ok()?).ok()?;
        match WalFileName::parse(name, size).ok()? {
            WalFileName::Segment { timeline, segno } => Some(Self {
                timeline,
                segno,
                size,
            }),
            _ => None,
        }
    }
}

/// The spool directory.
#[derive(Clone, Debug)]
pub(crate) struct Spool {
    dir: PathBuf,
}

/// A spool operation failed (the caller falls back to the server).
pub(crate) type SpoolResult<T> = Result<T, FsError>;

const LAST_REQUESTED: &str = "last-requested";
const LOCK: &str = "prefetch.lock";

impl Spool {
    /// The spool at `dir`, created if missing.
    pub(crate) fn open(dir: &Path) -> SpoolResult<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| FsError::new(FsAction::CreateDirectory, dir, e))?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// Spooled segments: (segment name, crc, path).
    fn entries(&self) -> SpoolResult<Vec<(String, u32, PathBuf)>> {
        let mut out = Vec::new();
        let read_dir = |e| FsError::new(FsAction::ReadDirectory, &self.dir, e);
        for entry in std::fs::read_dir(&self.dir).map_err(read_dir)? {
            let entry = entry.map_err(read_dir)?;
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str() else {
                continue;
            };
            if let Some((seg, crc)) = name.split_once('.')
                && seg.len() == 24
                && crc.len() == 8
                && let Ok(crc) = u32::from_str_radix(crc, 16)
            {
                out.push((seg.to_owned(), crc, entry.path()));
            }
        }
        Ok(out)
    }

    /// The names of the spooled segments (their bytes not checked), from one listing.
    pub(crate) fn names(&self) -> SpoolResult<std::collections::BTreeSet<String>> {
        Ok(self.entries()?.into_iter().map(|(n, _, _)| n).collect())
    }

    /// Whether `name` is spooled (without checking its bytes).
    #[cfg(test)]
    fn contains(&self, name: &str) -> SpoolResult<bool> {
        Ok(self.names()?.contains(name))
    }

    /// Moves the spooled copy of `name` to `dest` if its bytes match the server's CRC; `false`
    /// if there is none (or it was damaged, and is now removed).
    pub(crate) fn take(&self, name: &str, dest: &Path) -> SpoolResult<bool> {
        for (seg, crc, path) in self.entries()? {
            if seg != name {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(|e| FsError::new(FsAction::Read, &path, e))?;
            if crc32c::crc32c(&bytes) != crc {
                tracing::warn!(
                    "spooled copy {} does not match the server's checksum: removed, fetching \
                     {name} again",
                    path.display()
                );
                let _ = std::fs::remove_file(&path);
                return Ok(false);
            }
            // Same file system: a rename, no copy. Elsewhere: an atomic copy. Either way
            // PostgreSQL never finds a torn file under its final name; neither is fsynced, as
            // for a file fetched from the server (see `# Durability of %p` in get_wal).
            match std::fs::rename(&path, dest) {
                Ok(()) => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
                    durable::replace_without_sync(dest, &bytes)?;
                    let _ = std::fs::remove_file(&path);
                    return Ok(true);
                }
                Err(e) => return Err(FsError::new(FsAction::Rename, dest, e)),
            }
        }
        Ok(false)
    }

    /// Stores a complete segment fetched ahead, atomically, named with the server's CRC.
    pub(crate) fn put(&self, name: &str, bytes: &[u8], crc: u32) -> SpoolResult<()> {
        // Not fsynced: a copy left empty or torn by a crash fails the CRC in its name and is
        // fetched again, while an fsync per segment would compete with PostgreSQL's replay
        // for the disk.
        durable::replace_without_sync(&self.dir.join(format!("{name}.{crc:08x}")), bytes)
    }

    /// Removes spooled segments not in `keep` and leftover temporary files.
    pub(crate) fn retain(&self, keep: &[String]) -> SpoolResult<()> {
        for (seg, _, path) in self.entries()? {
            if !keep.contains(&seg) {
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(())
    }

    /// Removes every spooled segment (recovery reached the end of the archive).
    pub(crate) fn clear(&self) -> SpoolResult<()> {
        self.retain(&[])
    }

    pub(crate) fn set_last_requested(&self, key: &SpoolKey) -> SpoolResult<()> {
        // A small bookkeeping file: no fsync (losing it costs a re-fetch, never wrong data).
        durable::replace_without_sync(&self.dir.join(LAST_REQUESTED), key.encode().as_bytes())
    }

    pub(crate) fn last_requested(&self) -> Option<SpoolKey> {
        std::fs::read_to_string(self.dir.join(LAST_REQUESTED))
            .ok()
            .and_then(|t| SpoolKey::decode(&t))
    }

    /// The prefetcher lock, if nobody holds it.
    pub(crate) fn try_lock(&self) -> SpoolResult<Option<File>> {
        let path = self.dir.join(LOCK);
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| FsError::new(FsAction::Open, &path, e))?;
        match f.try_lock() {
            Ok(()) => Ok(Some(f)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(FsError::new(FsAction::Lock, &path, e)),
        }
    }

    /// Whether a prefetcher is running now.
    pub(crate) fn prefetcher_running(&self) -> bool {
        matches!(self.try_lock(), Ok(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(segno: u64) -> SpoolKey {
        SpoolKey {
            timeline: TimelineId::new(1).unwrap(),
            segno: SegmentNo(segno),
            size: SegmentSize::new(1 << 20).unwrap(),
        }
    }

    #[test]
    fn serves_only_intact_copies() {
        let d = tempfile::tempdir().unwrap();
        let spool = Spool::open(&d.path().join("spool")).unwrap();
        let dest = d.path().join("RECOVERYXLOG");
        let a = vec![7u8; 1 << 20];
        spool.put(&key(5).name(), &a, crc32c::crc32c(&a)).unwrap();
        assert!(spool.contains(&key(5).name()).unwrap());
        assert!(spool.take(&key(5).name(), &dest).unwrap());
        assert_eq!(std::fs::read(&dest).unwrap(), a);
        assert!(!spool.contains(&key(5).name()).unwrap(), "taken once");

        // A damaged copy is removed, not served.
        spool.put(&key(6).name(), &a, crc32c::crc32c(&a)).unwrap();
        let (_, _, path) = spool.entries().unwrap().pop().unwrap();
        let mut bad = a.clone();
        bad[1000] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        std::fs::remove_file(&dest).unwrap();
        assert!(!spool.take(&key(6).name(), &dest).unwrap());
        assert!(!dest.exists());
        assert!(!spool.contains(&key(6).name()).unwrap());

        // Truncated: likewise.
        spool.put(&key(7).name(), &a, crc32c::crc32c(&a)).unwrap();
        let (_, _, path) = spool.entries().unwrap().pop().unwrap();
        std::fs::write(&path, &a[..4096]).unwrap();
        assert!(!spool.take(&key(7).name(), &dest).unwrap());

        spool.put(&key(8).name(), &a, crc32c::crc32c(&a)).unwrap();
        spool.put(&key(9).name(), &a, crc32c::crc32c(&a)).unwrap();
        spool.retain(&[key(9).name()]).unwrap();
        assert!(!spool.contains(&key(8).name()).unwrap());
        assert!(spool.contains(&key(9).name()).unwrap());
        spool.clear().unwrap();
        assert!(spool.entries().unwrap().is_empty());
    }

    #[test]
    fn last_requested_and_lock() {
        let d = tempfile::tempdir().unwrap();
        let spool = Spool::open(d.path()).unwrap();
        assert_eq!(spool.last_requested(), None);
        spool.set_last_requested(&key(0x1FF)).unwrap();
        assert_eq!(spool.last_requested(), Some(key(0x1FF)));
        assert_eq!(
            key(0xFFF).after(1).unwrap().name(),
            "000000010000000100000000"
        );
        let held = spool.try_lock().unwrap().expect("free");
        assert!(spool.prefetcher_running());
        drop(held);
        assert!(!spool.prefetcher_running());
    }
}
