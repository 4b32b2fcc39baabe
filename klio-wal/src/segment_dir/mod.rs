//! A directory of WAL segments written with pg_receivewal's exact rules.
//!
//! - A new segment is created as `<name>.partial`, pre-padded with real zeros to the full segment
//!   size, and the file and its directory are fsynced before any WAL is written into it. Because
//!   the size never changes afterwards, `fdatasync` is enough to make written WAL durable.
//! - A full-size `.partial` left by an earlier run is reopened without truncation.
//! - Only a complete segment is renamed to its final name, durably (fsync, rename, fsync dir).
//! - Streaming resumes from what a directory scan finds ([`find_streaming_start`]).
//! - Compressed, as pg_receivewal `-Z` writes them ([`Compression`]): `<name>.gz.partial` or
//!   `<name>.lz4.partial`, not padded, written from the segment's start, a complete stream
//!   once closed, renamed to `<name>.gz` or `<name>.lz4` when complete. When an earlier run
//!   left a compressed `.partial` of the segment (streaming resumes at its start), the new
//!   stream is written to `<name>.gz.partial.klio-tmp` and replaces it only once it holds as
//!   much, fsynced: at no moment is WAL the old file held missing from the directory.
//!
//! The caller decides when to [`SegmentDir::flush`]; [`SegmentDir::flushed`] is the only
//! position that may be reported to PostgreSQL as flushed.
//!
//! # Durability
//!
//! With [`Fsync::Always`] (the default) every step above is fsynced as described, and
//! [`SegmentDir::flushed`] survives a crash of the machine. [`Fsync::Never`] is
//! pg_receivewal's `--no-sync`: nothing is fsynced, renames are plain renames, and
//! [`SegmentDir::flushed`] reports what was written, which a crash of the machine (not of the
//! process) can lose.

mod compression;
mod scan;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::{FsAction, FsError, Lsn, SegmentNo, SegmentSize, TimelineId, WalFileName, durable};

pub use compression::{Compression, decompress_file, decompress_prefix};
pub use scan::{StreamingStart, find_streaming_start};

use compression::Compressor;

/// Why a segment directory operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SegmentDirError {
    /// A file-system call failed.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// The target directory does not exist or is not a directory.
    #[error("{0:?} is not a directory: create it first (mkdir -p) or pass another --directory")]
    NotADirectory(PathBuf),
    /// WAL arrived for another position than the next expected byte.
    #[error("got WAL data at {got} on timeline {timeline}, expected {expected}")]
    OutOfOrder {
        /// The next byte the directory expects.
        expected: Lsn,
        /// Where the data started.
        got: Lsn,
        /// The timeline being written.
        timeline: TimelineId,
    },
    /// WAL arrived for the middle of a segment that is not open.
    #[error("received WAL at {0} (not a segment start) with no segment file open")]
    NoFileOpen(Lsn),
    /// A position past the end of the 64-bit WAL space.
    #[error("WAL position overflows 64 bits")]
    PositionOverflow,
}

impl SegmentDirError {
    fn io(action: FsAction, path: &Path, source: io::Error) -> Self {
        Self::Fs(FsError::new(action, path, source))
    }
}

/// The file of the segment being written.
#[derive(Debug)]
enum SegmentFile {
    /// Pre-padded to the segment's size, written in place.
    Padded(File),
    /// Written from the segment's start through a compressor, growing.
    Compressed {
        compressor: Compressor,
        /// Set while an earlier run's `.partial` of this segment holds more than this one.
        catching_up: Option<CatchingUp>,
    },
}

/// A compressed segment written again from its start while an earlier run's `.partial` of it
/// still holds more: the stream goes to `<partial>.klio-tmp`, and replaces the `.partial` only
/// once it holds as much (fsynced), so that the WAL of the old one is never lost meanwhile.
#[derive(Debug)]
struct CatchingUp {
    temp: PathBuf,
    /// The old `.partial`'s bytes, uncompressed.
    old_len: u64,
}

/// The segment currently open for writing.
#[derive(Debug)]
struct OpenSegment {
    file: SegmentFile,
    timeline: TimelineId,
    segno: SegmentNo,
    partial_path: PathBuf,
    final_path: PathBuf,
    /// Offset just past the last byte written.
    end: u32,
    /// Bytes written since the last fsync.
    dirty: bool,
}

impl OpenSegment {
    /// Where the segment's bytes are being written.
    fn writing_path(&self) -> &Path {
        match &self.file {
            SegmentFile::Compressed {
                catching_up: Some(c),
                ..
            } => &c.temp,
            _ => &self.partial_path,
        }
    }
}

/// Whether a [`SegmentDir`] makes what it writes durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fsync {
    /// Every file, rename and flush is fsynced.
    #[default]
    Always,
    /// Nothing is fsynced (`--no-sync`).
    Never,
}

/// A pg_receivewal-compatible segment directory.
#[derive(Debug)]
pub struct SegmentDir {
    dir: PathBuf,
    size: SegmentSize,
    fsync: Fsync,
    compression: Compression,
    open: Option<OpenSegment>,
    written: Option<Lsn>,
    flushed: Option<Lsn>,
}

impl SegmentDir {
    /// Opens an existing directory.
    pub fn open(dir: impl Into<PathBuf>, size: SegmentSize) -> Result<Self, SegmentDirError> {
        let dir = dir.into();
        if !dir.is_dir() {
            return Err(SegmentDirError::NotADirectory(dir));
        }
        Ok(Self {
            dir,
            size,
            fsync: Fsync::Always,
            compression: Compression::None,
            open: None,
            written: None,
            flushed: None,
        })
    }

    /// The same directory, fsynced as `fsync` says from now on.
    pub fn with_fsync(mut self, fsync: Fsync) -> Self {
        self.fsync = fsync;
        self
    }

    /// The same directory, writing new segments and history files compressed with
    /// `compression` from now on.
    pub fn with_compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// The file name of the segment being written, still `.partial`, if one is open.
    pub fn open_partial(&self) -> Option<&std::ffi::OsStr> {
        self.open.as_ref().and_then(|o| o.partial_path.file_name())
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The segment size files are padded to.
    pub fn segment_size(&self) -> SegmentSize {
        self.size
    }

    /// Where streaming should resume, from the files present (see [`find_streaming_start`]).
    pub fn find_streaming_start(
        &self,
    ) -> Result<(Option<StreamingStart>, Vec<String>), SegmentDirError> {
        find_streaming_start(&self.dir, self.size)
    }

    /// Position just past the last byte written (not necessarily durable), if any.
    pub fn written(&self) -> Option<Lsn> {
        self.written
    }

    /// Position up to which every written byte is on stable storage, if any.
    pub fn flushed(&self) -> Option<Lsn> {
        self.flushed
    }

    /// Whether an fsync would make more bytes durable.
    pub fn has_unflushed(&self) -> bool {
        self.open.as_ref().is_some_and(|o| o.dirty)
    }

    /// Writes WAL bytes starting at `start` on `timeline`, splitting at segment boundaries.
    ///
    /// Returns the names of the segments this write completed; they are durable under their
    /// final names when this returns.
    pub fn write(
        &mut self,
        timeline: TimelineId,
        start: Lsn,
        data: &[u8],
    ) -> Result<Vec<WalFileName>, SegmentDirError> {
        let mut completed = Vec::new();
        for piece in self.size.split(start, data.len() as u64) {
            let at = self
                .size
                .segment_start(piece.segno)
                .and_then(|s| s.checked_add(u64::from(piece.offset)))
                .ok_or(SegmentDirError::PositionOverflow)?;
            let mut o = match self.open.take() {
                Some(o) => {
                    let expected = self
                        .size
                        .segment_start(o.segno)
                        .and_then(|l| l.checked_add(u64::from(o.end)))
                        .ok_or(SegmentDirError::PositionOverflow)?;
                    if o.timeline != timeline || at != expected {
                        self.open = Some(o);
                        return Err(SegmentDirError::OutOfOrder {
                            expected,
                            got: at,
                            timeline,
                        });
                    }
                    o
                }
                None if piece.offset != 0 => return Err(SegmentDirError::NoFileOpen(at)),
                None => self.open_segment(timeline, piece.segno)?,
            };
            let bytes = &data[piece.range_offset as usize..][..piece.len as usize];
            match &mut o.file {
                SegmentFile::Padded(file) => file.write_all_at(bytes, u64::from(piece.offset)),
                SegmentFile::Compressed { compressor, .. } => compressor.write_all(bytes),
            }
            .map_err(|e| SegmentDirError::io(FsAction::Write, o.writing_path(), e))?;
            o.end = piece.offset + piece.len;
            o.dirty = true;
            let end_lsn = Lsn(at.0 + u64::from(piece.len));
            self.written = Some(end_lsn);
            if piece.completes_segment(self.size) {
                let from = o.writing_path().to_owned();
                let catching_up = from != o.partial_path;
                // A compressed stream is ended before its file is complete.
                finish_compression(o.file, &from)?;
                match self.fsync {
                    // durable::rename fsyncs the data, renames, and fsyncs the directory: only
                    // a segment whose every byte is on disk may carry its final name.
                    Fsync::Always => durable::rename(&from, &o.final_path)?,
                    Fsync::Never => std::fs::rename(&from, &o.final_path)
                        .map_err(|e| SegmentDirError::io(FsAction::Rename, &o.final_path, e))?,
                }
                if catching_up {
                    // The complete segment holds all the old .partial held. If this removal
                    // does not survive a crash, the scan prefers the complete file anyway.
                    remove_if_present(&o.partial_path)?;
                }
                self.flushed = Some(end_lsn);
                completed.push(WalFileName::Segment {
                    timeline: o.timeline,
                    segno: o.segno,
                });
            } else {
                self.open = Some(o);
            }
        }
        Ok(completed)
    }

    /// Makes every written byte durable and returns the durable position.
    pub fn flush(&mut self) -> Result<Option<Lsn>, SegmentDirError> {
        if let Some(o) = self.open.as_mut().filter(|o| o.dirty) {
            let path = o.writing_path().to_owned();
            let write_err = |e| SegmentDirError::io(FsAction::Write, &path, e);
            let end = u64::from(o.end);
            match (&mut o.file, self.fsync) {
                (SegmentFile::Padded(_), Fsync::Never) => {}
                // fdatasync suffices: the file was pre-padded to its full size, so no metadata
                // needed to read the data back changes. Flush may be reported only after this.
                (SegmentFile::Padded(file), Fsync::Always) => file
                    .sync_data()
                    .map_err(|e| SegmentDirError::io(FsAction::Fdatasync, &path, e))?,
                (
                    SegmentFile::Compressed {
                        compressor,
                        catching_up,
                    },
                    fsync,
                ) => {
                    // What was written must be in the file, not in the compressor, so that a
                    // crash of this process loses nothing, fsynced or not.
                    compressor.flush().map_err(write_err)?;
                    if fsync == Fsync::Always {
                        // The file grows, so its size must reach the disk too: a full fsync.
                        compressor
                            .file()
                            .sync_all()
                            .map_err(|e| SegmentDirError::io(FsAction::Fsync, &path, e))?;
                    }
                    if let Some(c) = catching_up.take_if(|c| end >= c.old_len) {
                        // Caught up: the new stream holds what the old .partial held.
                        match fsync {
                            Fsync::Always => durable::rename(&c.temp, &o.partial_path)?,
                            Fsync::Never => {
                                std::fs::rename(&c.temp, &o.partial_path).map_err(|e| {
                                    SegmentDirError::io(FsAction::Rename, &o.partial_path, e)
                                })?
                            }
                        }
                    }
                }
            }
            o.dirty = false;
            self.flushed = self.written;
        }
        Ok(self.flushed)
    }

    /// Flushes and closes the open segment, leaving it as `.partial` (streaming stopped or the
    /// timeline ended before the segment was complete). A compressed one is ended as a whole
    /// gzip member or LZ4 frame, as pg_receivewal leaves it.
    pub fn close(&mut self) -> Result<Option<Lsn>, SegmentDirError> {
        let flushed = self.flush()?;
        let Some(o) = self.open.take() else {
            return Ok(flushed);
        };
        let path = o.writing_path().to_owned();
        let catching_up = path != o.partial_path;
        if let Some(file) = finish_compression(o.file, &path)? {
            if catching_up {
                // Still behind the earlier run's .partial, which holds all of it: keep that.
                remove_if_present(&path)?;
            } else if self.fsync == Fsync::Always {
                // The stream's end must be on disk before the file is left for good.
                file.sync_all()
                    .map_err(|e| SegmentDirError::io(FsAction::Fsync, &path, e))?;
            }
        }
        Ok(flushed)
    }

    /// Forgets the stream position, so the next write may start a fresh segment (a new
    /// connection or timeline). The open segment is flushed and closed first.
    pub fn reset_position(&mut self) -> Result<(), SegmentDirError> {
        self.close()?;
        self.written = None;
        self.flushed = None;
        Ok(())
    }

    /// Whether the `.history` file of `timeline` is present (compressed as this directory
    /// compresses, or not at all).
    pub fn has_history(&self, timeline: TimelineId) -> bool {
        let name = WalFileName::History { timeline }.to_string_with(self.size);
        self.dir.join(&name).is_file()
            || self
                .dir
                .join(format!("{name}{}", self.compression.suffix()))
                .is_file()
    }

    /// Stores a timeline history file atomically and durably, compressed as this directory
    /// compresses.
    pub fn write_history(
        &self,
        timeline: TimelineId,
        contents: &[u8],
    ) -> Result<(), SegmentDirError> {
        let name = WalFileName::History { timeline }.to_string_with(self.size);
        let path = self
            .dir
            .join(format!("{name}{}", self.compression.suffix()));
        let bytes = compression::compress_bytes(self.compression, contents)
            .map_err(|e| SegmentDirError::io(FsAction::Write, &path, e))?;
        match self.fsync {
            // Atomic and durable: PostgreSQL reads a history file whole, so a torn one must
            // never carry its name, and once stored it must survive a crash.
            Fsync::Always => durable::replace(&path, &bytes)?,
            Fsync::Never => durable::replace_without_sync(&path, &bytes)?,
        }
        Ok(())
    }

    fn open_segment(
        &self,
        timeline: TimelineId,
        segno: SegmentNo,
    ) -> Result<OpenSegment, SegmentDirError> {
        let final_name = format!(
            "{}{}",
            WalFileName::Segment { timeline, segno }.to_string_with(self.size),
            self.compression.suffix()
        );
        let partial_path = self.dir.join(format!("{final_name}.partial"));
        let final_path = self.dir.join(&final_name);
        let file = match self.compression {
            Compression::None => SegmentFile::Padded(self.open_padded(&partial_path)?),
            Compression::Gzip { level } => {
                self.create_compressed(&partial_path, Compressor::gzip(level))?
            }
            Compression::Lz4 => self.create_compressed(&partial_path, Compressor::lz4())?,
        };
        Ok(OpenSegment {
            file,
            timeline,
            segno,
            partial_path,
            final_path,
            end: 0,
            dirty: false,
        })
    }

    /// Opens the pre-padded `.partial` of a segment, reopening a full-size one.
    fn open_padded(&self, partial_path: &Path) -> Result<File, SegmentDirError> {
        let seg_bytes = self.size.bytes_u64();
        let existing = match std::fs::metadata(partial_path) {
            Ok(m) => Some(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(SegmentDirError::io(FsAction::Stat, partial_path, e)),
        };
        let file = if existing == Some(seg_bytes) {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(partial_path)
                .map_err(|e| SegmentDirError::io(FsAction::Open, partial_path, e))?
        } else {
            if existing.is_some() {
                // A file a crash left mid-padding (no WAL is written before padding is complete
                // and fsynced, so it holds none): start it again. The directory fsync of its
                // re-creation below covers this removal.
                std::fs::remove_file(partial_path)
                    .map_err(|e| SegmentDirError::io(FsAction::Remove, partial_path, e))?;
            }
            // Pad it with real zeros so later writes never change the file size and a reader
            // never sees a short segment. The padding must be on disk before WAL goes in, so
            // that fdatasync alone makes later writes durable, and the new directory entry must
            // be durable too: a crash must not lose the file that later holds acknowledged WAL.
            match self.fsync {
                Fsync::Always => durable::create_prepadded(partial_path, &[], seg_bytes)?,
                Fsync::Never => durable::create_prepadded_without_sync(partial_path, seg_bytes)?,
            }
        };
        Ok(file)
    }

    /// Creates the compressed `.partial` of a segment, or, if an earlier run left one holding
    /// WAL (streaming resumes at its start), a temporary file that replaces it once it holds as
    /// much ([`CatchingUp`]).
    fn create_compressed(
        &self,
        partial_path: &Path,
        compressor: impl FnOnce(File) -> Compressor,
    ) -> Result<SegmentFile, SegmentDirError> {
        let old_len = match decompress_prefix(partial_path, self.compression) {
            Ok((bytes, _)) => bytes.len() as u64,
            // Nothing to keep (no old file), or nothing readable in it.
            Err(_) => 0,
        };
        let catching_up = (old_len > 0).then(|| CatchingUp {
            temp: durable::temp_path(partial_path),
            old_len,
        });
        let path = catching_up
            .as_ref()
            .map_or(partial_path, |c| c.temp.as_path());
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| SegmentDirError::io(FsAction::Create, path, e))?;
        if self.fsync == Fsync::Always {
            // The new directory entry must be durable before WAL in it is reported flushed:
            // later flushes fsync the file, not its directory.
            file.sync_all()
                .map_err(|e| SegmentDirError::io(FsAction::Fsync, path, e))?;
            durable::sync_dir(&self.dir)?;
        }
        Ok(SegmentFile::Compressed {
            compressor: compressor(file),
            catching_up,
        })
    }
}

/// Removes `path`; it being gone already is no error.
fn remove_if_present(path: &Path) -> Result<(), SegmentDirError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(SegmentDirError::io(FsAction::Remove, path, e))
        }
        _ => Ok(()),
    }
}

/// Ends a compressed segment's stream, returning its file; nothing for a padded one.
fn finish_compression(file: SegmentFile, path: &Path) -> Result<Option<File>, SegmentDirError> {
    match file {
        SegmentFile::Padded(_) => Ok(None),
        SegmentFile::Compressed { compressor, .. } => compressor
            .finish()
            .map(Some)
            .map_err(|e| SegmentDirError::io(FsAction::Write, path, e)),
    }
}

#[cfg(test)]
mod tests;
