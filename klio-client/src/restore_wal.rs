//! A `restore_command` serving a pg_receivewal-style directory (`klio restore-wal %f %p`).
//!
//! A segment that is still `.partial` (the newest one, cut short by a crash) is served in place
//! of the complete segment: it is pre-padded with zeros, so recovery replays up to the last
//! streamed byte and then ends cleanly, with no manual renaming.
//!
//! Files `receive-wal -Z` compressed (`.gz`, `.lz4`, and their `.partial`s) are served
//! decompressed; a compressed `.partial` holds only what was received, so it is padded with
//! zeros to the segment size its first page header records.

use std::path::{Path, PathBuf};

use klio_wal::segment_dir::{Compression, decompress_file, decompress_prefix};
use klio_wal::{FsAction, FsError, SegmentSize, WalFileName, durable};

/// What was served.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Restored {
    /// The file itself.
    File(PathBuf),
    /// The `.partial` segment, in place of the missing complete one.
    Partial(PathBuf),
}

/// Why a file could not be restored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreWalError {
    /// The archive has no such file: PostgreSQL takes this as the end of the archive.
    #[error("{0} not found in the archive")]
    NotFound(String),
    /// The requested name is not a WAL file name.
    #[error("{0:?} is not a WAL file name; use restore_command = 'klio restore-wal %f %p ...'")]
    BadName(String),
    /// Reading the archive or writing the destination failed.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// A compressed `.partial` too short, or too damaged, to tell its segment's size from its
    /// first page header.
    #[error(
        "{0:?} does not start with a WAL page header that gives its segment size; it cannot be padded into a segment"
    )]
    UnknownSegmentSize(PathBuf),
}

impl RestoreWalError {
    /// Whether PostgreSQL should see "no such file" (exit 1) rather than a failure that must
    /// stop recovery: serving nothing for a file that exists could end recovery early.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound(_))
    }
}

/// The names a file of the archive can have, in the order they are looked for: complete
/// before partial, plain before compressed.
const CANDIDATES: [(Compression, bool); 6] = [
    (Compression::None, false),
    (Compression::Gzip { level: 6 }, false),
    (Compression::Lz4, false),
    (Compression::None, true),
    (Compression::Gzip { level: 6 }, true),
    (Compression::Lz4, true),
];

/// Copies `file_name` from `archive` to `dest` atomically (temporary file, fsync, rename),
/// decompressing it if it was stored compressed.
pub fn restore_from_directory(
    archive: &Path,
    file_name: &str,
    dest: &Path,
) -> Result<Restored, RestoreWalError> {
    // Any segment size accepts a valid name's shape; 1 MiB accepts the most segment numbers.
    let size = SegmentSize::new(u64::from(SegmentSize::MIN_BYTES)).unwrap_or_default();
    let parsed = WalFileName::parse(file_name, size)
        .map_err(|_| RestoreWalError::BadName(file_name.to_owned()))?;
    let segment = matches!(parsed, WalFileName::Segment { .. });
    let present = CANDIDATES
        .iter()
        .filter(|(_, partial)| segment || !partial)
        .map(|&(compression, partial)| {
            let suffix = compression.suffix();
            let partial_suffix = if partial { ".partial" } else { "" };
            (
                archive.join(format!("{file_name}{suffix}{partial_suffix}")),
                compression,
                partial,
            )
        })
        .filter(|(path, ..)| path.is_file());
    // A complete file wins. Of several partials (-Z changed in the middle of a segment), the
    // one holding the most WAL is served: the others stopped earlier.
    let mut best: Option<(PathBuf, Vec<u8>, usize)> = None;
    for (source, compression, partial) in present {
        let read_err = |e| FsError::new(FsAction::Read, &source, e);
        if !partial {
            let bytes = decompress_file(&source, compression).map_err(read_err)?;
            // PostgreSQL may read the file right after the rename: it must never find a
            // complete-looking but empty or torn file under its final name, even after a crash.
            durable::replace(dest, &bytes)?;
            return Ok(Restored::File(source));
        }
        let (bytes, extent) = match compression {
            Compression::None => {
                let bytes = decompress_file(&source, compression).map_err(read_err)?;
                // Pre-padded with zeros: the WAL ends at the last byte that is not zero.
                let extent = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
                (bytes, extent)
            }
            _ => {
                let (mut bytes, cut) = decompress_prefix(&source, compression).map_err(read_err)?;
                if let Some(cut) = cut {
                    tracing::warn!(
                        "{} ends in the middle of its stream ({cut}): its writer stopped without closing it; serving the {} bytes before",
                        source.display(),
                        bytes.len()
                    );
                }
                if bytes.len() < LONG_HEADER_LEN {
                    // Not even the segment's first page header: nothing in it was flushed.
                    continue;
                }
                let extent = bytes.len();
                pad_to_segment(&mut bytes, &source)?;
                (bytes, extent)
            }
        };
        if best.as_ref().is_none_or(|(.., most)| extent > *most) {
            best = Some((source, bytes, extent));
        }
    }
    let Some((source, bytes, _)) = best else {
        return Err(RestoreWalError::NotFound(file_name.to_owned()));
    };
    durable::replace(dest, &bytes)?;
    Ok(Restored::Partial(source))
}

/// The bytes of a segment's first page header up to its `xlp_seg_size`.
const LONG_HEADER_LEN: usize = 36;

/// Pads what a compressed `.partial` received with zeros to the segment size recorded in its
/// first page's long header (`xlp_seg_size`, at byte 32), as an uncompressed `.partial` is.
fn pad_to_segment(bytes: &mut Vec<u8>, source: &Path) -> Result<(), RestoreWalError> {
    let unknown = || RestoreWalError::UnknownSegmentSize(source.to_owned());
    let recorded = bytes
        .get(32..LONG_HEADER_LEN)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_le_bytes)
        .ok_or_else(unknown)?;
    let size = SegmentSize::new(u64::from(recorded)).map_err(|_| unknown())?;
    if bytes.len() as u64 > size.bytes_u64() {
        return Err(unknown());
    }
    bytes.resize(size.bytes() as usize, 0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_file_then_partial_then_not_found() {
        let archive = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        std::fs::write(archive.path().join("000000010000000000000001"), b"one").unwrap();
        std::fs::write(
            archive.path().join("000000010000000000000002.partial"),
            b"two",
        )
        .unwrap();
        std::fs::write(archive.path().join("00000002.history"), b"hist").unwrap();
        let dest = out.path().join("RECOVERYXLOG");

        let r = restore_from_directory(archive.path(), "000000010000000000000001", &dest).unwrap();
        assert!(matches!(r, Restored::File(_)));
        assert_eq!(std::fs::read(&dest).unwrap(), b"one");

        let r = restore_from_directory(archive.path(), "000000010000000000000002", &dest).unwrap();
        assert!(matches!(r, Restored::Partial(_)));
        assert_eq!(std::fs::read(&dest).unwrap(), b"two");

        restore_from_directory(archive.path(), "00000002.history", &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"hist");

        let e =
            restore_from_directory(archive.path(), "000000010000000000000003", &dest).unwrap_err();
        assert!(e.is_not_found());
        let e = restore_from_directory(archive.path(), "00000003.history", &dest).unwrap_err();
        assert!(e.is_not_found());
        let e = restore_from_directory(archive.path(), "../etc/passwd", &dest).unwrap_err();
        assert!(matches!(e, RestoreWalError::BadName(_)));
        assert!(!out.path().join("RECOVERYXLOG.klio-tmp").exists());
    }

    #[test]
    fn compressed_files_are_served_decompressed_and_partials_padded() {
        use klio_wal::segment_dir::SegmentDir;
        use klio_wal::{Lsn, TimelineId};
        const MB: u64 = 1 << 20;
        let tli = TimelineId::new(1).unwrap();
        // A segment and a bit, whose first page header records a 1 MiB segment size.
        let mut wal: Vec<u8> = (0..MB + 3000).map(|i| (i % 199) as u8).collect();
        wal[32..36].copy_from_slice(&(MB as u32).to_le_bytes());
        wal[MB as usize + 32..MB as usize + 36].copy_from_slice(&(MB as u32).to_le_bytes());
        for method in [Compression::Gzip { level: 6 }, Compression::Lz4] {
            let archive = tempfile::tempdir().unwrap();
            let out = tempfile::tempdir().unwrap();
            let mut dir = SegmentDir::open(archive.path(), SegmentSize::new(MB).unwrap())
                .unwrap()
                .with_compression(method);
            dir.write(tli, Lsn(MB), &wal).unwrap();
            dir.close().unwrap();
            dir.write_history(TimelineId::new(2).unwrap(), b"1\t0/1000000\tx\n")
                .unwrap();
            let dest = out.path().join("RECOVERYXLOG");

            let r = restore_from_directory(archive.path(), "000000010000000000000001", &dest);
            assert!(matches!(r.unwrap(), Restored::File(_)), "{method:?}");
            assert_eq!(std::fs::read(&dest).unwrap(), wal[..MB as usize]);

            let r = restore_from_directory(archive.path(), "000000010000000000000002", &dest);
            assert!(matches!(r.unwrap(), Restored::Partial(_)), "{method:?}");
            let served = std::fs::read(&dest).unwrap();
            assert_eq!(served.len() as u64, MB, "padded to the segment");
            assert_eq!(served[..3000], wal[MB as usize..]);
            assert!(served[3000..].iter().all(|&b| b == 0));

            restore_from_directory(archive.path(), "00000002.history", &dest).unwrap();
            assert_eq!(std::fs::read(&dest).unwrap(), b"1\t0/1000000\tx\n");
        }
    }

    /// A segment's first `len` bytes, whose first page header records a 1 MiB segment.
    fn wal(len: usize, fill: u8) -> Vec<u8> {
        let mut wal = vec![fill; len];
        wal[32..36].copy_from_slice(&(1u32 << 20).to_le_bytes());
        wal
    }

    #[test]
    fn a_compressed_partial_its_writer_never_closed_serves_what_was_flushed() {
        use klio_wal::segment_dir::SegmentDir;
        use klio_wal::{Lsn, TimelineId};
        let size = SegmentSize::new(1 << 20).unwrap();
        for (method, suffix) in [
            (Compression::Gzip { level: 6 }, ".gz"),
            (Compression::Lz4, ".lz4"),
        ] {
            let writing = tempfile::tempdir().unwrap();
            let mut dir = SegmentDir::open(writing.path(), size)
                .unwrap()
                .with_compression(method);
            let data = wal(5000, 3);
            dir.write(TimelineId::new(1).unwrap(), Lsn(1 << 20), &data)
                .unwrap();
            dir.flush().unwrap();
            // What a kill -9 leaves on disk: the flushed blocks, no end of stream.
            let name = format!("000000010000000000000001{suffix}.partial");
            let on_disk = std::fs::read(writing.path().join(&name)).unwrap();
            let archive = tempfile::tempdir().unwrap();
            std::fs::write(archive.path().join(&name), &on_disk).unwrap();
            let dest = archive.path().join("RECOVERYXLOG");
            let r = restore_from_directory(archive.path(), "000000010000000000000001", &dest);
            assert!(matches!(r, Ok(Restored::Partial(_))), "{method:?}: {r:?}");
            let served = std::fs::read(&dest).unwrap();
            assert_eq!(served.len(), 1 << 20);
            assert_eq!(served[..5000], data[..], "{method:?}");
            // Only the stream's header: nothing was flushed, so nothing to serve.
            std::fs::write(archive.path().join(&name), &on_disk[..4]).unwrap();
            let r = restore_from_directory(archive.path(), "000000010000000000000001", &dest);
            assert!(
                matches!(r, Err(RestoreWalError::NotFound(_))),
                "{method:?}: {r:?}"
            );
        }
    }

    #[test]
    fn of_two_partials_of_a_segment_the_one_holding_more_wal_is_served() {
        let archive = tempfile::tempdir().unwrap();
        let dest = archive.path().join("RECOVERYXLOG");
        let name = "000000010000000000000001";
        let padded = |len: usize| {
            let mut bytes = wal(len, 7);
            bytes.resize(1 << 20, 0);
            bytes
        };
        let gzip = |len: usize| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut e, &wal(len, 9)).unwrap();
            e.finish().unwrap()
        };
        let plain = archive.path().join(format!("{name}.partial"));
        let compressed = archive.path().join(format!("{name}.gz.partial"));
        for (plain_len, gzip_len, served_fill) in [(1000, 3000, 9), (3000, 1000, 7)] {
            std::fs::write(&plain, padded(plain_len)).unwrap();
            std::fs::write(&compressed, gzip(gzip_len)).unwrap();
            let r = restore_from_directory(archive.path(), name, &dest).unwrap();
            assert!(matches!(r, Restored::Partial(_)));
            let served = std::fs::read(&dest).unwrap();
            assert_eq!(
                served[100], served_fill,
                "plain {plain_len}, gzip {gzip_len}"
            );
            assert_eq!(served.len(), 1 << 20);
        }
    }
}
