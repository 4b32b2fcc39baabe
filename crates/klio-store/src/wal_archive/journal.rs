//! The journal of an in-progress segment: CRC-protected frames in a zero-padded file.
//!
//! A journal `<segment name>.klio-journal` holds the WAL of one segment received so far as a
//! sequence of frames, written back to back from file offset 0. The first frame starts at the
//! segment's first byte and every frame continues the previous one exactly. A frame is a 32-byte
//! header followed by its data (all integers little-endian):
//!
//! | bytes  | field                                                        |
//! |--------|--------------------------------------------------------------|
//! | 0..4   | magic `KLWJ`                                                 |
//! | 4      | format version, 1                                            |
//! | 5      | flags: bit 0 `CONTINUED` (no fdatasync followed this frame   |
//! |        | before the next one was written); other bits zero            |
//! | 6..8   | reserved, zero                                               |
//! | 8..12  | timeline                                                     |
//! | 12..16 | data length in bytes (> 0)                                   |
//! | 16..24 | start LSN of the data                                        |
//! | 24..28 | reserved, zero                                               |
//! | 28..32 | CRC-32C over bytes 0..28 of the header and then the data     |
//!
//! The file is pre-padded with real zeros (segment size + 1/8), so appending a frame never
//! changes the file size and `fdatasync` makes it durable; a journal that outgrows the padding is
//! extended by another eighth of a segment, with an fsync. A scan stops at the first frame that is
//! not valid (zeros, a torn write, a bad CRC, a discontinuity): the end of the last valid frame is
//! the exact durable end after a crash.
//!
//! Only a torn tail is expected. A frame with a bad CRC is proven to have been damaged *after*
//! it was made durable when a valid frame written after a later fdatasync follows it (the
//! `CONTINUED` flag tells which frames were followed by an fdatasync); such a journal is reported
//! as damaged instead of being cut short silently.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use klio_wal::{Lsn, SegmentNo, SegmentSize, TimelineId, WalFileName};

use super::{WalArchiveError, durable};

/// Suffix appended to a segment's name for its journal.
pub(super) const JOURNAL_SUFFIX: &str = ".klio-journal";

/// Length of a frame header.
pub(super) const HEADER_LEN: u64 = 32;
const MAGIC: [u8; 4] = *b"KLWJ";
const VERSION: u8 = 1;
const FLAG_CONTINUED: u8 = 0x01;
/// Bytes read per I/O when scanning or copying.
const IO_CHUNK: u64 = 1 << 20;

/// One valid frame of a journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Frame {
    /// File offset of the frame header.
    pub(super) offset: u64,
    /// LSN of the first data byte.
    pub(super) start: Lsn,
    /// Data length.
    pub(super) len: u32,
    /// No fdatasync followed this frame before the next one was written.
    pub(super) continued: bool,
    /// The stored CRC.
    crc: u32,
}

impl Frame {
    fn data_offset(&self) -> u64 {
        self.offset + HEADER_LEN
    }

    /// File offset just past the frame.
    pub(super) fn end_offset(&self) -> u64 {
        self.data_offset() + u64::from(self.len)
    }

    /// LSN just past the frame's data.
    pub(super) fn end_lsn(&self) -> Lsn {
        Lsn(self.start.0 + u64::from(self.len))
    }
}

fn header_fields(timeline: TimelineId, start: Lsn, len: u32, continued: bool) -> [u8; 28] {
    let mut h = [0u8; 28];
    h[0..4].copy_from_slice(&MAGIC);
    h[4] = VERSION;
    h[5] = if continued { FLAG_CONTINUED } else { 0 };
    h[8..12].copy_from_slice(&timeline.get().to_le_bytes());
    h[12..16].copy_from_slice(&len.to_le_bytes());
    h[16..24].copy_from_slice(&start.0.to_le_bytes());
    h
}

/// Encodes a complete frame (header and data) ready to be written.
pub(super) fn encode_frame(
    timeline: TimelineId,
    start: Lsn,
    data: &[u8],
    continued: bool,
) -> Vec<u8> {
    // Frames never exceed a segment (at most 1 GiB), so the length fits in 32 bits.
    let len = data.len() as u32;
    let fields = header_fields(timeline, start, len, continued);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&fields), data);
    let mut out = Vec::with_capacity(HEADER_LEN as usize + data.len());
    out.extend_from_slice(&fields);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// Random-access bytes a journal can be scanned from: a file, or memory (tests, fuzzing).
pub(super) trait Source {
    /// Length in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; the range lies within `size()`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl Source for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|o| self.get(o..)?.get(..buf.len()))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// A journal file opened for reading, with its length taken once.
#[derive(Debug)]
pub(super) struct FileSource<'a> {
    pub(super) file: &'a File,
    pub(super) len: u64,
}

impl<'a> FileSource<'a> {
    pub(super) fn new(file: &'a File) -> io::Result<Self> {
        Ok(FileSource {
            file,
            len: file.metadata()?.len(),
        })
    }
}

impl Source for FileSource<'_> {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self.file, buf, offset)
    }
}

/// Reads `[offset, offset + len)` in chunks and hands each to `f`.
fn for_each_chunk<S: Source + ?Sized>(
    src: &S,
    offset: u64,
    len: u64,
    mut f: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut buf = vec![0u8; len.min(IO_CHUNK) as usize];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(IO_CHUNK) as usize;
        src.read_exact_at(&mut buf[..n], offset + done)?;
        f(&buf[..n])?;
        done += n as u64;
    }
    Ok(())
}

/// The result of checking the bytes at one position.
enum Check {
    Valid(Frame),
    /// Not a valid frame. `header` is set when the header itself was well formed (only the CRC
    /// failed), which makes the frame's extent known.
    Invalid {
        reason: &'static str,
        header: Option<Frame>,
    },
}

fn check_frame<S: Source + ?Sized>(
    src: &S,
    offset: u64,
    timeline: TimelineId,
    expected: Lsn,
    segment_end: Lsn,
) -> io::Result<Check> {
    let invalid = |reason| {
        Ok(Check::Invalid {
            reason,
            header: None,
        })
    };
    if src.size().saturating_sub(offset) < HEADER_LEN {
        return invalid("end of file inside a frame header");
    }
    let mut h = [0u8; HEADER_LEN as usize];
    src.read_exact_at(&mut h, offset)?;
    if h.iter().all(|&b| b == 0) {
        return invalid("zeros (no frame written here)");
    }
    if h[0..4] != MAGIC {
        return invalid("bad frame magic");
    }
    if h[4] != VERSION {
        return invalid("unknown frame format version");
    }
    if h[5] & !FLAG_CONTINUED != 0 || h[6..8] != [0, 0] || h[24..28] != [0; 4] {
        return invalid("unknown flags or non-zero reserved bytes");
    }
    let le32 = |r: std::ops::Range<usize>| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&h[r]);
        u32::from_le_bytes(b)
    };
    let mut start = [0u8; 8];
    start.copy_from_slice(&h[16..24]);
    let start = Lsn(u64::from_le_bytes(start));
    let len = le32(12..16);
    if le32(8..12) != timeline.get() {
        return invalid("frame of another timeline");
    }
    if start != expected {
        return invalid("frame does not continue the previous one");
    }
    if len == 0 || segment_end.0 - start.0 < u64::from(len) {
        return invalid("frame length out of range");
    }
    let frame = Frame {
        offset,
        start,
        len,
        continued: h[5] & FLAG_CONTINUED != 0,
        crc: le32(28..32),
    };
    if src.size() < frame.end_offset() {
        return invalid("end of file inside frame data");
    }
    let mut crc = crc32c::crc32c(&h[..28]);
    for_each_chunk(src, frame.data_offset(), u64::from(len), |c| {
        crc = crc32c::crc32c_append(crc, c);
        Ok(())
    })?;
    if crc != frame.crc {
        return Ok(Check::Invalid {
            reason: "CRC mismatch",
            header: Some(frame),
        });
    }
    Ok(Check::Valid(frame))
}

/// What a scan found in a journal.
#[derive(Clone, Debug)]
pub(super) struct JournalScan {
    /// The valid frames, in order.
    pub(super) frames: Vec<Frame>,
    /// The segment's first LSN.
    pub(super) segment_start: Lsn,
    /// End of the last valid frame: the durable end (the segment start if there is none).
    pub(super) end: Lsn,
    /// File offset just past the last valid frame.
    pub(super) write_offset: u64,
    /// The frames cover the whole segment.
    pub(super) complete: bool,
    /// Why the scan stopped before the end of the segment.
    pub(super) stop_reason: Option<&'static str>,
}

/// Why a scan failed.
#[derive(Debug)]
pub(super) enum ScanError {
    Io(io::Error),
    Damaged { offset: u64, reason: String },
}

impl ScanError {
    pub(super) fn into_archive_error(self, path: &Path) -> WalArchiveError {
        match self {
            ScanError::Io(e) => WalArchiveError::io("read journal", path, e),
            ScanError::Damaged { offset, reason } => WalArchiveError::DamagedJournal {
                path: path.to_owned(),
                offset,
                reason,
            },
        }
    }
}

impl From<io::Error> for ScanError {
    fn from(e: io::Error) -> Self {
        ScanError::Io(e)
    }
}

/// Scans the journal of `timeline`/`segno`.
pub(super) fn scan<S: Source + ?Sized>(
    src: &S,
    timeline: TimelineId,
    segno: SegmentNo,
    size: SegmentSize,
) -> Result<JournalScan, ScanError> {
    let overflow = || ScanError::Damaged {
        offset: 0,
        reason: "segment number past the end of the WAL space".to_owned(),
    };
    let segment_start = size.segment_start(segno).ok_or_else(overflow)?;
    let segment_end = segment_start
        .checked_add(size.bytes_u64())
        .ok_or_else(overflow)?;
    let mut frames = Vec::new();
    let mut offset = 0u64;
    let mut expected = segment_start;
    let mut stop_reason = None;
    while expected < segment_end {
        match check_frame(src, offset, timeline, expected, segment_end)? {
            Check::Valid(f) => {
                frames.push(f);
                offset = f.end_offset();
                expected = f.end_lsn();
            }
            Check::Invalid { reason, header } => {
                if let Some(bad) = header {
                    if damage_proven(src, bad, timeline, segment_end)? {
                        return Err(ScanError::Damaged {
                            offset,
                            reason: format!(
                                "the frame for {}+{} bytes has a bad CRC, but frames written after a \
                                 later fdatasync follow it, so it was damaged after it was made durable",
                                bad.start, bad.len
                            ),
                        });
                    }
                }
                stop_reason = Some(reason);
                break;
            }
        }
    }
    Ok(JournalScan {
        frames,
        segment_start,
        end: expected,
        write_offset: offset,
        complete: expected == segment_end,
        stop_reason,
    })
}

/// Whether the frames after `bad` (whose header is intact, CRC not) prove that `bad` had been
/// made durable: a valid frame written after an fdatasync that came after `bad`.
fn damage_proven<S: Source + ?Sized>(
    src: &S,
    bad: Frame,
    timeline: TimelineId,
    segment_end: Lsn,
) -> io::Result<bool> {
    let mut synced_before = !bad.continued;
    let mut offset = bad.end_offset();
    let mut expected = bad.end_lsn();
    while expected < segment_end {
        match check_frame(src, offset, timeline, expected, segment_end)? {
            Check::Valid(f) => {
                if synced_before {
                    return Ok(true);
                }
                synced_before = !f.continued;
                offset = f.end_offset();
                expected = f.end_lsn();
            }
            Check::Invalid { .. } => return Ok(false),
        }
    }
    Ok(false)
}

/// Copies the data of `frames` to `out` in order, checking every CRC again while reading, so
/// that bytes damaged since the scan are never returned.
pub(super) fn copy_frames<S: Source + ?Sized>(
    src: &S,
    timeline: TimelineId,
    frames: &[Frame],
    mut out: impl FnMut(&[u8]) -> io::Result<()>,
) -> Result<(), ScanError> {
    for f in frames {
        let fields = header_fields(timeline, f.start, f.len, f.continued);
        let mut crc = crc32c::crc32c(&fields);
        for_each_chunk(src, f.data_offset(), u64::from(f.len), |c| {
            crc = crc32c::crc32c_append(crc, c);
            out(c)
        })?;
        if crc != f.crc {
            return Err(ScanError::Damaged {
                offset: f.offset,
                reason: "frame CRC no longer matches when read again".to_owned(),
            });
        }
    }
    Ok(())
}

/// Offset just past the last non-zero byte at or after `from`, if any.
pub(super) fn nonzero_tail_end<S: Source + ?Sized>(src: &S, from: u64) -> io::Result<Option<u64>> {
    let mut end = None;
    let mut pos = from;
    for_each_chunk(src, from, src.size().saturating_sub(from), |c| {
        if let Some(i) = c.iter().rposition(|&b| b != 0) {
            end = Some(pos + i as u64 + 1);
        }
        pos += c.len() as u64;
        Ok(())
    })?;
    Ok(end)
}

/// The journal's file name for a segment.
pub(super) fn journal_name(timeline: TimelineId, segno: SegmentNo, size: SegmentSize) -> String {
    let base = WalFileName::Segment { timeline, segno }.to_string_with(size);
    format!("{base}{JOURNAL_SUFFIX}")
}

/// Size a new journal is pre-padded to, and the step it grows by.
fn padded_len(size: SegmentSize) -> (u64, u64) {
    let step = size.bytes_u64() / 8;
    (size.bytes_u64() + step, step)
}

/// A journal open for appending frames.
#[derive(Debug)]
pub(super) struct JournalWriter {
    file: File,
    pub(super) path: PathBuf,
    pub(super) timeline: TimelineId,
    pub(super) segno: SegmentNo,
    /// Valid frames so far (the ones to assemble the segment from).
    frames: Vec<Frame>,
    write_offset: u64,
    file_len: u64,
    grow_step: u64,
    /// Frames written since the last fdatasync.
    dirty: bool,
}

impl JournalWriter {
    /// Creates a new, empty journal: pre-padded with zeros and durable before any WAL goes in.
    pub(super) fn create(
        dir: &Path,
        timeline: TimelineId,
        segno: SegmentNo,
        size: SegmentSize,
    ) -> Result<Self, WalArchiveError> {
        let path = dir.join(journal_name(timeline, segno, size));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| WalArchiveError::io("create journal", &path, e))?;
        let (len, grow_step) = padded_len(size);
        durable::write_zeros(&file, 0, len)
            .map_err(|e| WalArchiveError::io("pre-pad journal", &path, e))?;
        // The padding (and the file size) must be on disk before frames go in, so that the
        // fdatasync after each frame needs no metadata update and a crash never shortens the file.
        file.sync_all()
            .map_err(|e| WalArchiveError::io("fsync", &path, e))?;
        // The new directory entry must be durable too: a crash must not lose the file that is
        // about to hold acknowledged WAL.
        durable::fsync_dir(dir)?;
        Ok(JournalWriter {
            file,
            path,
            timeline,
            segno,
            frames: Vec::new(),
            write_offset: 0,
            file_len: len,
            grow_step,
            dirty: false,
        })
    }

    /// Reopens an existing journal (already recovered: zeros after its last valid frame) to
    /// append after `scan`'s end.
    pub(super) fn reopen(
        path: PathBuf,
        timeline: TimelineId,
        segno: SegmentNo,
        size: SegmentSize,
    ) -> Result<(Self, JournalScan), WalArchiveError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| WalArchiveError::io("open journal", &path, e))?;
        let src = FileSource::new(&file).map_err(|e| WalArchiveError::io("stat", &path, e))?;
        let scan = scan(&src, timeline, segno, size).map_err(|e| e.into_archive_error(&path))?;
        let file_len = src.len;
        let (_, grow_step) = padded_len(size);
        let writer = JournalWriter {
            file,
            path,
            timeline,
            segno,
            frames: scan.frames.clone(),
            write_offset: scan.write_offset,
            file_len,
            grow_step,
            dirty: false,
        };
        Ok((writer, scan))
    }

    /// Appends one frame (not durable until [`JournalWriter::sync`]).
    pub(super) fn write_frame(
        &mut self,
        start: Lsn,
        data: &[u8],
        continued: bool,
    ) -> Result<(), WalArchiveError> {
        let frame = encode_frame(self.timeline, start, data, continued);
        let end = self.write_offset + frame.len() as u64;
        if end > self.file_len {
            let mut new_len = self.file_len;
            while new_len < end {
                new_len += self.grow_step;
            }
            durable::write_zeros(&self.file, self.file_len, new_len)
                .map_err(|e| WalArchiveError::io("extend journal", &self.path, e))?;
            // Make the new size durable now, so that the fdatasync after the frame again needs no
            // metadata update (and the padding beyond the frame reads as zeros after a crash).
            self.file
                .sync_all()
                .map_err(|e| WalArchiveError::io("fsync", &self.path, e))?;
            self.file_len = new_len;
        }
        self.file
            .write_all_at(&frame, self.write_offset)
            .map_err(|e| WalArchiveError::io("write journal", &self.path, e))?;
        let mut crc = [0u8; 4];
        crc.copy_from_slice(&frame[28..32]);
        self.frames.push(Frame {
            offset: self.write_offset,
            start,
            len: data.len() as u32,
            continued,
            crc: u32::from_le_bytes(crc),
        });
        self.write_offset = end;
        self.dirty = true;
        Ok(())
    }

    /// Makes every written frame durable.
    pub(super) fn sync(&mut self) -> Result<(), WalArchiveError> {
        if self.dirty {
            // fdatasync suffices: the file was pre-padded (or extended and fsynced), so no metadata
            // needed to read the frames back changes. Only after this may their end be acknowledged.
            self.file
                .sync_data()
                .map_err(|e| WalArchiveError::io("fdatasync", &self.path, e))?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Turns a journal holding the whole segment (and already synced) into the final segment
    /// file, durably, then removes the journal.
    pub(super) fn finish(self, dir: &Path, size: SegmentSize) -> Result<(), WalArchiveError> {
        finish_segment(
            dir,
            &self.file,
            &self.path,
            self.timeline,
            self.segno,
            &self.frames,
            size,
        )
    }
}

/// Assembles the final segment file from a complete journal's frames (read back from `file`),
/// makes it final atomically and durably, then removes the journal.
pub(super) fn finish_segment(
    dir: &Path,
    file: &File,
    journal_path: &Path,
    timeline: TimelineId,
    segno: SegmentNo,
    frames: &[Frame],
    size: SegmentSize,
) -> Result<(), WalArchiveError> {
    let name = WalFileName::Segment { timeline, segno }.to_string_with(size);
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
    let src = FileSource::new(file).map_err(|e| WalArchiveError::io("stat", journal_path, e))?;
    let (out, tmp) = durable::create_tmp(dir, &name)?;
    let mut at = 0u64;
    copy_frames(&src, timeline, frames, |chunk| {
        out.write_all_at(chunk, at)?;
        at += chunk.len() as u64;
        Ok(())
    })
    .map_err(|e| match e {
        ScanError::Io(e) => WalArchiveError::io("assemble segment", &tmp, e),
        other => other.into_archive_error(journal_path),
    })?;
    durable::publish(out, &tmp, dir, &name, true)?;
    // No fsync of the directory after this removal: if a crash brings the journal back, it is
    // stale (its final segment exists) and recovery removes it again.
    durable::remove_if_present(journal_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tl(n: u32) -> TimelineId {
        TimelineId::new(n).unwrap()
    }

    fn size() -> SegmentSize {
        SegmentSize::new(1 << 20).unwrap()
    }

    fn journal(frames: &[(u64, &[u8], bool)]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(start, data, continued) in frames {
            out.extend(encode_frame(tl(1), Lsn(start), data, continued));
        }
        out.resize(out.len() + 100, 0);
        out
    }

    #[test]
    fn scans_valid_frames_and_stops_at_zeros() {
        let seg = 5u64 << 20;
        let j = journal(&[(seg, b"abc", false), (seg + 3, b"defg", false)]);
        let s = scan(j.as_slice(), tl(1), SegmentNo(5), size()).unwrap();
        assert_eq!(s.frames.len(), 2);
        assert_eq!(s.end, Lsn(seg + 7));
        assert_eq!(s.write_offset, 2 * HEADER_LEN + 7);
        assert!(!s.complete);
        assert_eq!(s.stop_reason, Some("zeros (no frame written here)"));
        // Wrong timeline or segment: nothing valid.
        assert!(
            scan(j.as_slice(), tl(2), SegmentNo(5), size())
                .unwrap()
                .frames
                .is_empty()
        );
        assert!(
            scan(j.as_slice(), tl(1), SegmentNo(4), size())
                .unwrap()
                .frames
                .is_empty()
        );
    }

    #[test]
    fn torn_tail_is_accepted_and_damage_in_the_middle_is_not() {
        let seg = 0u64;
        // Last frame torn: accepted, durable end before it.
        let mut j = journal(&[(seg, b"abc", false), (seg + 3, b"defg", false)]);
        let last_data = (2 * HEADER_LEN + 5) as usize;
        j[last_data] ^= 0xff;
        let s = scan(j.as_slice(), tl(1), SegmentNo(0), size()).unwrap();
        assert_eq!(s.end, Lsn(3));
        // First frame damaged, later synced frames follow: damage.
        let mut j = journal(&[
            (seg, b"abc", false),
            (seg + 3, b"defg", false),
            (seg + 7, b"h", false),
        ]);
        j[HEADER_LEN as usize] ^= 1;
        assert!(matches!(
            scan(j.as_slice(), tl(1), SegmentNo(0), size()),
            Err(ScanError::Damaged { offset: 0, .. })
        ));
        // Damaged frame was continued by frames of the same unsynced batch only: torn.
        let mut j = journal(&[(seg, b"abc", true), (seg + 3, b"defg", false)]);
        j[HEADER_LEN as usize] ^= 1;
        let s = scan(j.as_slice(), tl(1), SegmentNo(0), size()).unwrap();
        assert_eq!(s.end, Lsn(0));
        assert!(s.frames.is_empty());
    }

    #[test]
    fn nonzero_tail() {
        let mut v = vec![0u8; 3 << 20];
        assert_eq!(nonzero_tail_end(v.as_slice(), 0).unwrap(), None);
        v[(2 << 20) + 7] = 1;
        assert_eq!(
            nonzero_tail_end(v.as_slice(), 10).unwrap(),
            Some((2 << 20) + 8)
        );
        assert_eq!(nonzero_tail_end(v.as_slice(), (2 << 20) + 8).unwrap(), None);
    }
}
