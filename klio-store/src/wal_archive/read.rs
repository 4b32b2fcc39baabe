//! Read-only access: single files for restores, listings, pg_receivewal-style exports, and
//! journal inspection. Nothing here returns bytes that failed a check.

use std::fs::File;
use std::io;
use std::path::Path;

use klio_crypto::Keyring;
use klio_wal::durable::{self, TempFile};
use klio_wal::{FsAction, Lsn, SegmentNo, SegmentSize, TimelineId, WalFileName};

use super::index::{self, Holder};
use super::journal::{self, FileSource, JournalScan, ScanError, ScanStop};
use super::recover::{self, Survey};
use super::{
    ClusterIdentity, Ctx, WalArchiveError, WalArchiveReader, optional_file, sealed, segment_of_name,
};

/// One archived file, read for a restore.
#[derive(Clone, PartialEq, Eq)]
pub struct ArchivedFile {
    /// The file's name.
    pub name: WalFileName,
    /// The contents: a whole segment (zero-padded when partial) or a history file.
    pub content: Vec<u8>,
    /// The segment is still in progress: only `valid_len` bytes are WAL, the rest zeros.
    pub partial: bool,
    /// Bytes of real content (the whole length unless `partial`).
    pub valid_len: u64,
}

impl std::fmt::Debug for ArchivedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchivedFile")
            .field("name", &self.name)
            .field("content_len", &self.content.len())
            .field("partial", &self.partial)
            .field("valid_len", &self.valid_len)
            .finish()
    }
}

/// A run of consecutive completed segments, `first..=last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentRange {
    /// The first segment of the run.
    pub first: SegmentNo,
    /// The last segment of the run (inclusive).
    pub last: SegmentNo,
}

/// A segment in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartialSegment {
    /// The segment.
    pub segno: SegmentNo,
    /// End of the durable WAL in it.
    pub end: Lsn,
}

/// What the archive holds for one timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineListing {
    /// The timeline.
    pub timeline: TimelineId,
    /// Completed segments, as runs of consecutive segment numbers, ascending.
    pub segments: Vec<SegmentRange>,
    /// Segments in progress (normally at most one; earlier ones after gaps), ascending.
    pub partials: Vec<PartialSegment>,
    /// The durable end on this timeline.
    pub durable_end: Lsn,
}

/// What the archive holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveListing {
    /// Timelines with WAL, ascending.
    pub timelines: Vec<TimelineListing>,
    /// Timelines with a stored history file, ascending.
    pub histories: Vec<TimelineId>,
}

/// The journal of a segment in progress as it can be copied elsewhere: its bytes cut right
/// after the last valid frame (a journal file is pre-padded with zeros; the padding is not
/// part of it). The cut bytes are a valid journal: placed as `<segment>.klio-journal` in an
/// archive directory of the same cluster, a reader serves them as the zero-padded partial
/// segment ending at `end`.
#[derive(Clone, PartialEq, Eq)]
pub struct JournalSnapshot {
    /// The segment's timeline.
    pub timeline: TimelineId,
    /// The segment.
    pub segno: SegmentNo,
    /// The journal's file name, `<segment>.klio-journal`.
    pub file_name: String,
    /// The journal up to the end of its last valid frame (key header included when encrypted).
    pub bytes: Vec<u8>,
    /// The LSN just past the last valid frame's WAL.
    pub end: Lsn,
}

impl std::fmt::Debug for JournalSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalSnapshot")
            .field("file_name", &self.file_name)
            .field("len", &self.bytes.len())
            .field("end", &self.end)
            .finish()
    }
}

/// What [`WalArchiveReader::export_to_directory`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportSummary {
    /// Complete segments written.
    pub segments: usize,
    /// In-progress segments written as zero-padded `.partial` files.
    pub partials: usize,
    /// History files written.
    pub histories: usize,
    /// Total bytes written.
    pub bytes: u64,
}

/// The result of [`inspect_journal`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalReport {
    /// Valid frames.
    pub frames: usize,
    /// End of the last valid frame (the segment start if none).
    pub end: Lsn,
    /// The frames cover the whole segment.
    pub complete: bool,
    /// Byte offset where the valid frames end (a torn tail or zeros follow).
    pub valid_bytes: u64,
    /// Why the scan stopped before the end of the segment (`None` when complete).
    pub stop_reason: Option<ScanStop>,
}

/// Checks the bytes of a plain journal file (for example, a copy for inspection) of segment
/// `name` (a [`WalFileName::Segment`] or [`WalFileName::Partial`]): how much valid WAL it holds,
/// or why it is damaged. `path` only names the file in errors. An encrypted journal is an
/// error here: use [`inspect_journal_with`].
pub fn inspect_journal(
    bytes: &[u8],
    name: &WalFileName,
    size: SegmentSize,
    path: &Path,
) -> Result<JournalReport, WalArchiveError> {
    inspect(bytes, name, &Ctx::plain(size), path)
}

/// Like [`inspect_journal`], for plain or encrypted journals of the cluster `identity`
/// (an encrypted journal needs `keyring`).
pub fn inspect_journal_with(
    bytes: &[u8],
    name: &WalFileName,
    identity: ClusterIdentity,
    keyring: Option<&Keyring>,
    path: &Path,
) -> Result<JournalReport, WalArchiveError> {
    let mut ctx = Ctx::plain(identity.segment_size);
    ctx.system_id = identity.system_id;
    ctx.keyring = keyring;
    inspect(bytes, name, &ctx, path)
}

fn inspect(
    bytes: &[u8],
    name: &WalFileName,
    ctx: &Ctx<'_>,
    path: &Path,
) -> Result<JournalReport, WalArchiveError> {
    let (timeline, segno) = segment_of_name(name).ok_or_else(|| WalArchiveError::Inconsistent {
        path: path.to_owned(),
        reason: "a journal belongs to a segment, not to a history or backup file".to_owned(),
    })?;
    let scan =
        journal::scan_with(bytes, timeline, segno, ctx).map_err(|e| e.into_archive_error(path))?;
    Ok(JournalReport {
        frames: scan.frames.len(),
        end: scan.end,
        complete: scan.complete,
        valid_bytes: scan.write_offset,
        stop_reason: scan.stop_reason,
    })
}

/// Assembles a journal's WAL zero-padded to a whole segment, re-checking CRCs while reading.
fn assemble(
    file: &File,
    path: &Path,
    timeline: TimelineId,
    scan: &JournalScan,
    size: SegmentSize,
) -> Result<Vec<u8>, WalArchiveError> {
    let src = FileSource::new(file).map_err(|e| WalArchiveError::io(FsAction::Stat, path, e))?;
    let mut out = Vec::with_capacity(size.bytes() as usize);
    journal::copy_frames(&src, timeline, &scan.format, &scan.frames, |c| {
        out.extend_from_slice(c);
        Ok(())
    })
    .map_err(|e| match e {
        ScanError::Io(e) => WalArchiveError::io(FsAction::Read, path, e),
        other => other.into_archive_error(path),
    })?;
    out.resize(size.bytes() as usize, 0);
    Ok(out)
}

/// Reads a completed segment, plain or sealed (opened and checked); `None` if neither exists.
fn read_final_segment(
    dir: &Path,
    timeline: TimelineId,
    segno: SegmentNo,
    ctx: &Ctx<'_>,
) -> Result<Option<Vec<u8>>, WalArchiveError> {
    read_final_segment_from(dir, timeline, segno, ctx, false)
}

/// Like [`read_final_segment`], opening the sealed name first when `sealed_first`.
fn read_final_segment_from(
    dir: &Path,
    timeline: TimelineId,
    segno: SegmentNo,
    ctx: &Ctx<'_>,
    sealed_first: bool,
) -> Result<Option<Vec<u8>>, WalArchiveError> {
    let size = ctx.size;
    let plain = dir.join(WalFileName::Segment { timeline, segno }.to_string_with(size));
    let sealed_path = dir.join(sealed::sealed_name(timeline, segno, size));
    if sealed_first && let Some(bytes) = sealed::read_sealed(&sealed_path, timeline, segno, ctx)? {
        return Ok(Some(bytes));
    }
    if let Some(bytes) = read_segment(&plain, size)? {
        return Ok(Some(bytes));
    }
    if sealed_first {
        return Ok(None);
    }
    sealed::read_sealed(&sealed_path, timeline, segno, ctx)
}

/// Reads a final segment file, checking its size; `None` if it does not exist.
fn read_segment(path: &Path, size: SegmentSize) -> Result<Option<Vec<u8>>, WalArchiveError> {
    let Some(bytes) = optional_file::read_optional(path)? else {
        return Ok(None);
    };
    if bytes.len() as u64 != size.bytes_u64() {
        return Err(WalArchiveError::DamagedSegment {
            path: path.to_owned(),
            reason: format!("{} bytes, expected {}", bytes.len(), size.bytes()),
        });
    }
    Ok(Some(bytes))
}

/// A segment's journal contents: `(bytes zero-padded, complete, valid_len)`, or `None` when
/// there is no journal or it holds no WAL.
fn read_journal_segment(
    dir: &Path,
    timeline: TimelineId,
    segno: SegmentNo,
    ctx: &Ctx<'_>,
) -> Result<Option<(Vec<u8>, bool, u64)>, WalArchiveError> {
    let size = ctx.size;
    let path = dir.join(journal::journal_name(timeline, segno, size));
    let Some(file) = recover::open_journal_read(&path)? else {
        return Ok(None);
    };
    let scan = recover::scan_journal(&file, &path, timeline, segno, ctx)?;
    if scan.frames.is_empty() {
        return Ok(None);
    }
    let bytes = assemble(&file, &path, timeline, &scan, size)?;
    let valid = scan.end.0 - scan.segment_start.0;
    Ok(Some((bytes, scan.complete, valid)))
}

/// A segment read from its journal: zero-padded, partial unless the journal is complete;
/// `None` when there is no journal or it holds no WAL.
fn journal_file(
    dir: &Path,
    name: &WalFileName,
    timeline: TimelineId,
    segno: SegmentNo,
    ctx: &Ctx<'_>,
) -> Result<Option<ArchivedFile>, WalArchiveError> {
    Ok(
        read_journal_segment(dir, timeline, segno, ctx)?.map(|(content, complete, valid_len)| {
            ArchivedFile {
                name: *name,
                content,
                partial: !complete,
                valid_len,
            }
        }),
    )
}

impl WalArchiveReader {
    /// Reads one archived file by PostgreSQL name for restores: a complete segment, a
    /// `.history` file, or, when the segment is still in progress, its bytes zero-padded to full
    /// size (flagged partial). A `.partial` name returns the in-progress segment only.
    pub fn read_file(&self, name: &WalFileName) -> Result<Option<ArchivedFile>, WalArchiveError> {
        self.read_file_preferring(name, None)
    }

    /// Like [`read_file`](Self::read_file), opening first the file `holder` names (what an
    /// index says holds the segment); every other name is still looked for before `None`.
    pub(super) fn read_file_preferring(
        &self,
        name: &WalFileName,
        holder: Option<Holder>,
    ) -> Result<Option<ArchivedFile>, WalArchiveError> {
        let ctx = self.ctx();
        let sealed_first = holder == Some(Holder::Sealed);
        match *name {
            WalFileName::History { timeline } => {
                Ok(self.history(timeline)?.map(|content| ArchivedFile {
                    name: *name,
                    valid_len: content.len() as u64,
                    content,
                    partial: false,
                }))
            }
            WalFileName::Segment { timeline, segno } => {
                // The segment in progress: its journal first, saving two failed opens.
                if holder == Some(Holder::Journal)
                    && let Some(file) = journal_file(&self.dir, name, timeline, segno, &ctx)?
                {
                    return Ok(Some(file));
                }
                if let Some(content) =
                    read_final_segment_from(&self.dir, timeline, segno, &ctx, sealed_first)?
                {
                    return Ok(Some(complete_file(*name, content)));
                }
                match journal_file(&self.dir, name, timeline, segno, &ctx)? {
                    Some(file) => Ok(Some(file)),
                    // The journal may have been finished between the two looks.
                    None => Ok(read_final_segment(&self.dir, timeline, segno, &ctx)?
                        .map(|content| complete_file(*name, content))),
                }
            }
            WalFileName::Partial { timeline, segno } => {
                Ok(read_journal_segment(&self.dir, timeline, segno, &ctx)?
                    .filter(|(_, complete, _)| !complete)
                    .map(|(content, _, valid_len)| ArchivedFile {
                        name: *name,
                        content,
                        partial: true,
                        valid_len,
                    }))
            }
            _ => Ok(None),
        }
    }

    /// The journal of the segment `timeline`/`segno` cut after its last valid frame, or `None`
    /// when it has no journal, or one without WAL, or one that holds the whole segment (that
    /// segment is complete: its final file is what gets copied).
    ///
    /// The file is read whole into memory and scanned there, so the bytes returned and the
    /// end found are one consistent cut even while the writer appends; a frame that looks
    /// damaged is read and scanned once more before it is reported (the writer may have been
    /// writing it during the first read).
    pub fn journal_snapshot(
        &self,
        timeline: TimelineId,
        segno: SegmentNo,
    ) -> Result<Option<JournalSnapshot>, WalArchiveError> {
        let ctx = self.ctx();
        let file_name = journal::journal_name(timeline, segno, ctx.size);
        let path = self.dir.join(&file_name);
        let mut attempt = 0;
        loop {
            let Some(mut bytes) = optional_file::read_optional(&path)? else {
                return Ok(None);
            };
            match journal::scan_with(bytes.as_slice(), timeline, segno, &ctx) {
                Ok(scan) => {
                    if scan.frames.is_empty() || scan.complete {
                        return Ok(None);
                    }
                    let cut = usize::try_from(scan.write_offset).unwrap_or(bytes.len());
                    bytes.truncate(cut);
                    return Ok(Some(JournalSnapshot {
                        timeline,
                        segno,
                        file_name,
                        bytes,
                        end: scan.end,
                    }));
                }
                Err(ScanError::Damaged { .. }) if attempt == 0 => attempt += 1,
                Err(e) => return Err(e.into_archive_error(&path)),
            }
        }
    }

    /// Lists what the archive holds: timelines with their completed segment ranges and partial
    /// segments, and history files.
    pub fn list(&self) -> Result<ArchiveListing, WalArchiveError> {
        let survey = recover::survey(&self.dir, &self.ctx())?;
        Ok(index::listing_of(&survey, self.identity.segment_size))
    }

    /// Writes a pg_receivewal-style copy of the archive into `dest` (created if missing):
    /// complete segments under their names, history files, and in-progress segments as
    /// zero-padded `<name>.partial`. Every file is written atomically and fsynced.
    pub fn export_to_directory(&self, dest: &Path) -> Result<ExportSummary, WalArchiveError> {
        let ctx = self.ctx();
        let size = ctx.size;
        std::fs::create_dir_all(dest)
            .map_err(|e| WalArchiveError::io(FsAction::CreateDirectory, dest, e))?;
        let survey: Survey = recover::survey(&self.dir, &ctx)?;
        let mut summary = ExportSummary::default();
        for &(timeline, segno) in &survey.segments {
            let name = WalFileName::Segment { timeline, segno }.to_string_with(size);
            summary.bytes += if survey.sealed.contains(&(timeline, segno)) {
                self.export_sealed(dest, timeline, segno, &name)?
            } else {
                copy_file(&self.dir.join(&name), dest, &name, Some(size))?
            };
            summary.segments += 1;
        }
        for (&(timeline, segno), j) in &survey.journals {
            if j.scan.frames.is_empty() {
                continue;
            }
            let Some((content, complete, _)) =
                read_journal_segment(&self.dir, timeline, segno, &ctx)?
            else {
                // Finished concurrently: export the final segment instead.
                let name = WalFileName::Segment { timeline, segno }.to_string_with(size);
                summary.bytes += self.export_sealed(dest, timeline, segno, &name)?;
                summary.segments += 1;
                continue;
            };
            let name = if complete {
                summary.segments += 1;
                WalFileName::Segment { timeline, segno }
            } else {
                summary.partials += 1;
                WalFileName::Partial { timeline, segno }
            }
            .to_string_with(size);
            write_export_file(dest, &name, &content)?;
            summary.bytes += content.len() as u64;
        }
        for &timeline in &survey.histories {
            let name = WalFileName::History { timeline }.to_string_with(size);
            let content = self
                .history(timeline)?
                .ok_or_else(|| WalArchiveError::Inconsistent {
                    path: self.dir.join(&name),
                    reason: "the history file disappeared during the export".to_owned(),
                })?;
            write_export_file(dest, &name, &content)?;
            summary.bytes += content.len() as u64;
            summary.histories += 1;
        }
        // One directory fsync for all the renames above (each file was fsynced before its
        // rename), so that the exported files survive a crash once this returns.
        durable::sync_dir(dest)?;
        Ok(summary)
    }

    /// Exports a completed segment (plain or sealed) by reading it whole, opened and checked.
    fn export_sealed(
        &self,
        dest: &Path,
        timeline: TimelineId,
        segno: SegmentNo,
        name: &str,
    ) -> Result<u64, WalArchiveError> {
        let content =
            read_final_segment(&self.dir, timeline, segno, &self.ctx())?.ok_or_else(|| {
                WalArchiveError::Inconsistent {
                    path: self.dir.join(name),
                    reason: "the segment vanished while it was being exported".to_owned(),
                }
            })?;
        write_export_file(dest, name, &content)?;
        Ok(content.len() as u64)
    }
}

fn complete_file(name: WalFileName, content: Vec<u8>) -> ArchivedFile {
    ArchivedFile {
        name,
        valid_len: content.len() as u64,
        content,
        partial: false,
    }
}

fn write_export_file(dest: &Path, name: &str, content: &[u8]) -> Result<(), WalArchiveError> {
    let temp = TempFile::create(&dest.join(name))?;
    temp.write_all_at(content, 0)?;
    // The directory is fsynced once at the end of the export.
    Ok(temp.publish_deferring_dir_sync()?)
}

/// Copies `src` into `dest/name` (streaming), checking the size of segments. Returns the bytes.
fn copy_file(
    src: &Path,
    dest: &Path,
    name: &str,
    segment: Option<SegmentSize>,
) -> Result<u64, WalArchiveError> {
    let mut input = File::open(src).map_err(|e| WalArchiveError::io(FsAction::Open, src, e))?;
    let temp = TempFile::create(&dest.join(name))?;
    let copied = io::copy(&mut input, &mut temp.file())
        .map_err(|e| WalArchiveError::io(FsAction::Copy, src, e))?;
    if let Some(size) = segment
        && copied != size.bytes_u64()
    {
        temp.discard()?;
        return Err(WalArchiveError::DamagedSegment {
            path: src.to_owned(),
            reason: format!("{copied} bytes, expected {}", size.bytes()),
        });
    }
    // The directory is fsynced once at the end of the export.
    temp.publish_deferring_dir_sync()?;
    Ok(copied)
}
