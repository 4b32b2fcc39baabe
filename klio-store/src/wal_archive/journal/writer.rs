//! Writing a journal: creating it pre-padded (with its key header when encrypted), appending
//! frames, syncing them, and turning a complete journal into the final segment file.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use klio_crypto::journal_frame::{self, FrameKey};
use klio_crypto::{Compression, ObjectHeader, SealOptions, SecureRandom};
use klio_wal::{FsAction, Lsn, SegmentNo, SegmentSize, TimelineId, durable};

use super::format::{
    Frame, FrameFormat, FrameSeal, KEY_BLOCK_LEN, KEY_OBJECT_LEN, KeyBinding,
    encode_encrypted_frame, encode_frame, journal_name, stored_crc,
};
use super::scan::{JournalScan, copy_frames, scan_with};
use super::source::FileSource;
use crate::wal_archive::sealed::SegmentWriter;
use crate::wal_archive::{Ctx, WalArchiveError, optional_file};

/// Size a new journal's frame area is pre-padded to, and the step it grows by.
fn padded_len(size: SegmentSize) -> (u64, u64) {
    let step = size.bytes_u64() / 8;
    (size.bytes_u64() + step, step)
}

/// A journal open for appending frames.
#[derive(Debug)]
pub(crate) struct JournalWriter {
    file: File,
    pub(crate) path: PathBuf,
    pub(crate) timeline: TimelineId,
    pub(crate) segno: SegmentNo,
    format: FrameFormat,
    /// Valid frames so far (the ones to assemble the segment from).
    frames: Vec<Frame>,
    write_offset: u64,
    file_len: u64,
    grow_step: u64,
    /// Frames written since the last fdatasync.
    dirty: bool,
}

impl JournalWriter {
    /// Creates a new, empty journal: pre-padded with zeros (after its sealed key header when the
    /// archive has a keyring) and durable before any WAL goes in.
    pub(crate) fn create(
        dir: &Path,
        timeline: TimelineId,
        segno: SegmentNo,
        ctx: &Ctx<'_>,
    ) -> Result<Self, WalArchiveError> {
        let size = ctx.size;
        let path = dir.join(journal_name(timeline, segno, size));
        let (header, format) = match ctx.keyring {
            None => (Vec::new(), FrameFormat::Plain),
            Some(keyring) => {
                let crypto = |source| WalArchiveError::Crypto {
                    action: "create the key header of journal",
                    path: path.clone(),
                    source,
                };
                let frame_error = |source| WalArchiveError::JournalFrame {
                    action: "create the frame key of journal",
                    path: path.clone(),
                    source,
                };
                let key = journal_frame::random_key(ctx.rng).map_err(frame_error)?;
                let binding = KeyBinding {
                    system_id: ctx.system_id,
                    timeline,
                    segno,
                    size,
                };
                let block = binding.key_block(&key);
                let opts = SealOptions {
                    compression: Compression::None,
                    chunk_size: KEY_BLOCK_LEN,
                };
                let object = klio_crypto::seal(keyring, &opts, &block, ctx.rng).map_err(crypto)?;
                if object.len() != KEY_OBJECT_LEN {
                    return Err(WalArchiveError::Inconsistent {
                        path,
                        reason: format!(
                            "sealed journal key header is {} bytes, expected {KEY_OBJECT_LEN}",
                            object.len()
                        ),
                    });
                }
                let journal_id = ObjectHeader::parse(&object).map_err(crypto)?.object_id();
                let key = FrameKey::new(&key, journal_id).map_err(frame_error)?;
                (object, FrameFormat::Encrypted(Arc::new(key)))
            }
        };
        let first = format.first_frame();
        let (pad, grow_step) = padded_len(size);
        let len = first + pad;
        // The padding (and the file size), and the key header of an encrypted journal, must be
        // on disk before frames go in, so that the fdatasync after each frame needs no metadata
        // update, a crash never shortens the file, and no frame exists whose key could be lost.
        // The new directory entry must be durable too: a crash must not lose the file that is
        // about to hold acknowledged WAL. create_prepadded fsyncs both before it returns.
        let file = durable::create_prepadded(&path, &header, len)?;
        Ok(Self {
            file,
            path,
            timeline,
            segno,
            format,
            frames: Vec::new(),
            write_offset: first,
            file_len: len,
            grow_step,
            dirty: false,
        })
    }

    /// Reopens an existing journal (already recovered: zeros after its last valid frame) to
    /// append after `scan`'s end, in the journal's own format.
    pub(crate) fn reopen(
        path: PathBuf,
        timeline: TimelineId,
        segno: SegmentNo,
        ctx: &Ctx<'_>,
    ) -> Result<(Self, JournalScan), WalArchiveError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| WalArchiveError::io(FsAction::Open, &path, e))?;
        let src =
            FileSource::new(&file).map_err(|e| WalArchiveError::io(FsAction::Stat, &path, e))?;
        let scan =
            scan_with(&src, timeline, segno, ctx).map_err(|e| e.into_archive_error(&path))?;
        let file_len = src.len;
        let (_, grow_step) = padded_len(ctx.size);
        let writer = Self {
            file,
            path,
            timeline,
            segno,
            format: scan.format.clone(),
            frames: scan.frames.clone(),
            write_offset: scan.write_offset,
            file_len,
            grow_step,
            dirty: false,
        };
        Ok((writer, scan))
    }

    /// Appends one frame (not durable until [`JournalWriter::sync`]).
    pub(crate) fn write_frame(
        &mut self,
        start: Lsn,
        data: &[u8],
        continued: bool,
        rng: &dyn SecureRandom,
    ) -> Result<(), WalArchiveError> {
        let (frame, seal) = match &self.format {
            FrameFormat::Plain => {
                let frame = encode_frame(self.timeline, start, data, continued);
                let crc = stored_crc(&frame);
                (frame, FrameSeal::Crc(crc))
            }
            FrameFormat::Encrypted(key) => {
                let seq = self.frames.len() as u64;
                encode_encrypted_frame(key, self.timeline, start, data, continued, seq, rng)
                    .map_err(|source| WalArchiveError::JournalFrame {
                        action: "encrypt a frame of journal",
                        path: self.path.clone(),
                        source,
                    })?
            }
        };
        let end = self.write_offset + frame.len() as u64;
        if end > self.file_len {
            let mut new_len = self.file_len;
            while new_len < end {
                new_len += self.grow_step;
            }
            durable::write_zeros(&self.file, &self.path, self.file_len, new_len)?;
            // Make the new size durable now, so that the fdatasync after the frame again needs no
            // metadata update (and the padding beyond the frame reads as zeros after a crash).
            self.file
                .sync_all()
                .map_err(|e| WalArchiveError::io(FsAction::Fsync, &self.path, e))?;
            self.file_len = new_len;
        }
        self.file
            .write_all_at(&frame, self.write_offset)
            .map_err(|e| WalArchiveError::io(FsAction::Write, &self.path, e))?;
        self.frames.push(Frame {
            offset: self.write_offset,
            start,
            len: data.len() as u32,
            continued,
            seal,
        });
        self.write_offset = end;
        self.dirty = true;
        Ok(())
    }

    /// Makes every written frame durable.
    pub(crate) fn sync(&mut self) -> Result<(), WalArchiveError> {
        if self.dirty {
            // fdatasync suffices: the file was pre-padded (or extended and fsynced), so no metadata
            // needed to read the frames back changes. Only after this may their end be acknowledged.
            self.file
                .sync_data()
                .map_err(|e| WalArchiveError::io(FsAction::Fdatasync, &self.path, e))?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Turns a journal holding the whole segment (and already synced) into the final segment
    /// file (sealed when the archive has a keyring), durably, then removes the journal.
    pub(crate) fn finish(self, dir: &Path, ctx: &Ctx<'_>) -> Result<(), WalArchiveError> {
        finish_segment(
            dir,
            &self.file,
            &self.path,
            self.timeline,
            self.segno,
            &self.format,
            &self.frames,
            ctx,
        )
    }
}

/// Assembles the final segment file from a complete journal's frames (read back from `file`),
/// makes it final atomically and durably, then removes the journal. With a keyring the segment
/// is sealed (see the `sealed` module), otherwise stored as it is.
#[allow(clippy::too_many_arguments)]
pub(crate) fn finish_segment(
    dir: &Path,
    file: &File,
    journal_path: &Path,
    timeline: TimelineId,
    segno: SegmentNo,
    format: &FrameFormat,
    frames: &[Frame],
    ctx: &Ctx<'_>,
) -> Result<(), WalArchiveError> {
    let size = ctx.size;
    let total: u64 = frames.iter().map(|f| u64::from(f.len)).sum();
    if total != size.bytes_u64() {
        return Err(WalArchiveError::Inconsistent {
            path: journal_path.to_owned(),
            reason: format!(
                "asked to finish a journal holding {total} of {} bytes",
                size.bytes()
            ),
        });
    }
    let src =
        FileSource::new(file).map_err(|e| WalArchiveError::io(FsAction::Stat, journal_path, e))?;
    let mut out = SegmentWriter::create(dir, timeline, segno, ctx)?;
    let mut failed = None;
    let copied = copy_frames(&src, timeline, format, frames, |chunk| {
        out.write(chunk).map_err(|e| {
            let msg = e.to_string();
            failed = Some(e);
            io::Error::other(msg)
        })
    });
    if let Some(e) = failed {
        return Err(e);
    }
    copied.map_err(|e| e.into_archive_error(journal_path))?;
    out.publish()?;
    // No fsync of the directory after this removal: if a crash brings the journal back, it is
    // stale (its final segment exists) and recovery removes it again.
    optional_file::remove_if_present(journal_path)
}
