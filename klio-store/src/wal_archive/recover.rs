//! Directory scans: what the archive holds, durable ends per timeline, and crash recovery.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use klio_wal::{FsAction, Lsn, SegmentNo, SegmentSize, TimelineId, WalFileName, durable};

use super::journal::{self, FileSource, JOURNAL_SUFFIX, JournalScan, ScanError};
use super::sealed::{self, SEALED_SUFFIX};
use super::{Ctx, WalArchiveError, dir_listing, file_of_stored, identity, optional_file};

/// A journal found by a survey (not stale: its final segment does not exist).
#[derive(Debug)]
pub(super) struct JournalState {
    pub(super) path: PathBuf,
    pub(super) scan: JournalScan,
}

/// What a directory holds.
#[derive(Debug, Default)]
pub(super) struct Survey {
    /// Final segment files, plain (size checked) or sealed.
    pub(super) segments: BTreeSet<(TimelineId, SegmentNo)>,
    /// The sealed ones among `segments` (`<name>.klio`).
    pub(super) sealed: BTreeSet<(TimelineId, SegmentNo)>,
    /// Journals in the encrypted format.
    pub(super) encrypted_journals: usize,
    /// Journals whose final segment does not exist, scanned.
    pub(super) journals: BTreeMap<(TimelineId, SegmentNo), JournalState>,
    /// Journals whose final segment exists (left by a crash between rename and removal).
    pub(super) stale_journals: Vec<PathBuf>,
    /// Stored history files.
    pub(super) histories: BTreeSet<TimelineId>,
    /// Leftover temporary files.
    pub(super) temps: Vec<PathBuf>,
    /// Whether any archive file (other than the identity) exists.
    pub(super) has_archive_files: bool,
}

/// The stored sizes a measuring survey ([`survey_measured`]) found, for the archive's index.
#[derive(Debug, Default)]
pub(super) struct Measured {
    /// Bytes of the final segment files of each timeline.
    pub(super) finals: BTreeMap<TimelineId, u64>,
    /// Bytes of each stored history file.
    pub(super) histories: BTreeMap<TimelineId, u64>,
    /// Bytes of every other regular file except journals (the identity, temporary files).
    pub(super) other: u64,
}

impl Survey {
    /// Durable end of each timeline that has WAL.
    pub(super) fn durable_ends(&self, size: SegmentSize) -> BTreeMap<TimelineId, Lsn> {
        let mut ends = BTreeMap::new();
        let mut note = |tl: TimelineId, end: Lsn| {
            let e = ends.entry(tl).or_insert(end);
            if *e < end {
                *e = end;
            }
        };
        for &(tl, segno) in &self.segments {
            if let Some(end) = segment_end(size, segno) {
                note(tl, end);
            }
        }
        for (&(tl, _), j) in &self.journals {
            if !j.scan.frames.is_empty() {
                note(tl, j.scan.end);
            }
        }
        ends
    }
}

/// The LSN just past segment `segno`.
pub(super) fn segment_end(size: SegmentSize, segno: SegmentNo) -> Option<Lsn> {
    size.segment_start(SegmentNo(segno.0.checked_add(1)?))
}

/// Opens a journal read-only; `None` if it vanished (finished concurrently).
pub(super) fn open_journal_read(path: &Path) -> Result<Option<File>, WalArchiveError> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(WalArchiveError::io(FsAction::Open, path, e)),
    }
}

/// Scans an open journal. A frame that looks damaged is scanned once more before it is
/// reported: a concurrent writer may have been writing it during the first scan.
pub(super) fn scan_journal(
    file: &File,
    path: &Path,
    timeline: TimelineId,
    segno: SegmentNo,
    ctx: &Ctx<'_>,
) -> Result<JournalScan, WalArchiveError> {
    let mut attempt = 0;
    loop {
        let src =
            FileSource::new(file).map_err(|e| WalArchiveError::io(FsAction::Stat, path, e))?;
        match journal::scan_with(&src, timeline, segno, ctx) {
            Ok(s) => return Ok(s),
            Err(ScanError::Damaged { .. }) if attempt == 0 => attempt += 1,
            Err(e) => return Err(e.into_archive_error(path)),
        }
    }
}

/// Lists and classifies the directory, scanning every live journal (read-only). Encrypted
/// files are an error without a keyring in `ctx`.
pub(super) fn survey(dir: &Path, ctx: &Ctx<'_>) -> Result<Survey, WalArchiveError> {
    survey_inner(dir, ctx, None)
}

/// Like [`survey`], also measuring the stored size of every file but the journals (one stat
/// per entry, for the archive's index).
pub(super) fn survey_measured(
    dir: &Path,
    ctx: &Ctx<'_>,
) -> Result<(Survey, Measured), WalArchiveError> {
    let mut measured = Measured::default();
    let s = survey_inner(dir, ctx, Some(&mut measured))?;
    Ok((s, measured))
}

/// The stored size of `path`; 0 for a file removed since the listing (a journal finishing,
/// a prune): it is no longer part of the archive.
pub(super) fn stored_len(path: &Path) -> Result<u64, WalArchiveError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => Ok(m.len()),
        Ok(_) => Ok(0),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(WalArchiveError::io(FsAction::Stat, path, e)),
    }
}

fn survey_inner(
    dir: &Path,
    ctx: &Ctx<'_>,
    mut measured: Option<&mut Measured>,
) -> Result<Survey, WalArchiveError> {
    let size = ctx.size;
    let mut s = Survey::default();
    let mut journal_paths = Vec::new();
    for (name, path) in dir_listing::named_entries(dir)? {
        let name = name.as_str();
        let is_journal = name.ends_with(JOURNAL_SUFFIX);
        let is_plain_segment = matches!(
            WalFileName::parse(name, size),
            Ok(WalFileName::Segment { .. })
        );
        // Plain segments are measured below, where their size is checked.
        if let Some(m) = measured.as_deref_mut()
            && !is_journal
            && !is_plain_segment
        {
            let len = stored_len(&path)?;
            match file_of_stored(name, size) {
                Some(WalFileName::Segment { timeline, .. }) => {
                    *m.finals.entry(timeline).or_default() += len;
                }
                Some(WalFileName::History { timeline }) => {
                    *m.histories.entry(timeline).or_default() += len;
                }
                _ => m.other += len,
            }
        }
        if name == identity::IDENTITY_FILE {
            continue;
        }
        if name.ends_with(durable::TEMP_SUFFIX) {
            s.temps.push(path.clone());
            s.has_archive_files = true;
            continue;
        }
        if let Some(base) = name.strip_suffix(JOURNAL_SUFFIX) {
            if let Ok(WalFileName::Segment { timeline, segno }) = WalFileName::parse(base, size) {
                journal_paths.push((timeline, segno, path.clone()));
                s.has_archive_files = true;
            }
            continue;
        }
        if let Some(base) = name.strip_suffix(SEALED_SUFFIX) {
            let parsed = WalFileName::parse(base, size);
            if matches!(
                parsed,
                Ok(WalFileName::Segment { .. } | WalFileName::History { .. })
            ) && ctx.keyring.is_none()
            {
                return Err(WalArchiveError::Encrypted {
                    key_id: sealed::key_id_of(&path),
                    path,
                });
            }
            match parsed {
                Ok(WalFileName::Segment { timeline, segno }) => {
                    note_segment(&mut s, dir, timeline, segno, true, size)?;
                }
                Ok(WalFileName::History { timeline }) => {
                    s.histories.insert(timeline);
                    s.has_archive_files = true;
                }
                _ => {}
            }
            continue;
        }
        match WalFileName::parse(name, size) {
            Ok(WalFileName::Segment { timeline, segno }) => {
                // Not following links, like the directory entry's own metadata.
                let len = std::fs::symlink_metadata(&path)
                    .map_err(|e| WalArchiveError::io(FsAction::Stat, &path, e))?
                    .len();
                if len != size.bytes_u64() {
                    return Err(WalArchiveError::DamagedSegment {
                        path,
                        reason: format!("{len} bytes, expected {}", size.bytes()),
                    });
                }
                if let Some(m) = measured.as_deref_mut() {
                    *m.finals.entry(timeline).or_default() += len;
                }
                note_segment(&mut s, dir, timeline, segno, false, size)?;
            }
            Ok(WalFileName::History { timeline }) => {
                s.histories.insert(timeline);
                s.has_archive_files = true;
            }
            _ => {}
        }
    }
    for (timeline, segno, path) in journal_paths {
        if s.segments.contains(&(timeline, segno)) {
            s.stale_journals.push(path);
            continue;
        }
        let Some(file) = open_journal_read(&path)? else {
            // Finished by a concurrent writer between the listing and now.
            if dir
                .join(WalFileName::Segment { timeline, segno }.to_string_with(size))
                .is_file()
            {
                s.segments.insert((timeline, segno));
            } else if dir
                .join(sealed::sealed_name(timeline, segno, size))
                .is_file()
            {
                s.segments.insert((timeline, segno));
                s.sealed.insert((timeline, segno));
            }
            continue;
        };
        let scan = scan_journal(&file, &path, timeline, segno, ctx)?;
        if matches!(scan.format, journal::FrameFormat::Encrypted(_)) {
            s.encrypted_journals += 1;
        }
        s.journals
            .insert((timeline, segno), JournalState { path, scan });
    }
    Ok(s)
}

/// Records a final segment file; a segment stored both plain and sealed is an error.
fn note_segment(
    s: &mut Survey,
    dir: &Path,
    timeline: TimelineId,
    segno: SegmentNo,
    sealed: bool,
    size: SegmentSize,
) -> Result<(), WalArchiveError> {
    if !s.segments.insert((timeline, segno)) {
        return Err(WalArchiveError::Inconsistent {
            path: dir.join(sealed::sealed_name(timeline, segno, size)),
            reason: "the segment is stored both plain and sealed; keep one of the two files \
                     (the sealed one when the archive is to be encrypted)"
                .to_owned(),
        });
    }
    if sealed {
        s.sealed.insert((timeline, segno));
    }
    s.has_archive_files = true;
    Ok(())
}

/// Crash recovery for a writer: removes temporary files and stale journals, finishes journals
/// that hold a whole segment, removes empty journals and zeroes the torn tail of the others, so
/// that new frames can be appended right after the last valid one.
pub(super) fn recover(dir: &Path, ctx: &Ctx<'_>) -> Result<Recovered, WalArchiveError> {
    let size = ctx.size;
    let mut s = survey(dir, ctx)?;
    let mut journals_changed = false;
    // None of these removals needs a directory fsync: a file that comes back after a crash is
    // removed again by the next recovery, and none of them holds WAL that exists nowhere else.
    for p in s.temps.iter().chain(&s.stale_journals) {
        optional_file::remove_if_present(p)?;
    }
    let journals = std::mem::take(&mut s.journals);
    for ((timeline, segno), j) in journals {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&j.path)
            .map_err(|e| WalArchiveError::io(FsAction::Open, &j.path, e))?;
        if j.scan.complete {
            journal::finish_segment(
                dir,
                &file,
                &j.path,
                timeline,
                segno,
                &j.scan.format,
                &j.scan.frames,
                ctx,
            )?;
            journals_changed = true;
            s.segments.insert((timeline, segno));
            if ctx.keyring.is_some() {
                s.sealed.insert((timeline, segno));
            }
            continue;
        }
        if j.scan.frames.is_empty() {
            // Nothing valid was ever made durable in it (a crash during creation or during its
            // first frame). Same argument as above: no directory fsync needed.
            drop(file);
            optional_file::remove_if_present(&j.path)?;
            journals_changed = true;
            continue;
        }
        let src =
            FileSource::new(&file).map_err(|e| WalArchiveError::io(FsAction::Stat, &j.path, e))?;
        let garbage_end = journal::nonzero_tail_end(&src, j.scan.write_offset)
            .map_err(|e| WalArchiveError::io(FsAction::Read, &j.path, e))?;
        if let Some(end) = garbage_end {
            durable::write_zeros(&file, &j.path, j.scan.write_offset, end)?;
        }
        // Two reasons for this fdatasync: after a kill -9 of the server (the machine kept
        // running) valid frames may sit in the page cache without ever having been synced, and
        // they are about to be reported as durable; and a cleared torn tail must be gone from
        // disk before new frames follow the last valid one, or a crash could leave old frames
        // after new ones that a scan would accept.
        file.sync_data()
            .map_err(|e| WalArchiveError::io(FsAction::Fdatasync, &j.path, e))?;
        s.journals.insert((timeline, segno), j);
    }
    // A kill -9 between a rename (segment, history, identity) and its directory fsync leaves
    // the rename in the page cache only; make every entry this recovery relies on durable.
    durable::sync_dir(dir)?;
    Ok(Recovered {
        durable: s.durable_ends(size),
        journals_changed,
    })
}

/// What [`recover`] found and did.
pub(super) struct Recovered {
    /// The durable end of each timeline with WAL.
    pub(super) durable: BTreeMap<TimelineId, Lsn>,
    /// Whether it finished or removed a journal (an index of the archive is then out of date).
    pub(super) journals_changed: bool,
}
