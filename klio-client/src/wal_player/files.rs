//! The WAL files to play: found in a directory, checked to form one continuous stream, read in
//! blocks (gzip-compressed files decompressed on the way).

use std::io::Read;
use std::path::{Path, PathBuf};

use klio_wal::page::PageHeader;
use klio_wal::{FsAction, FsError, Lsn, SegmentNo, SegmentSize, TimelineId, WalFileName};

use super::{NotWalReason, WalPlayerError};

/// One segment file to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalInput {
    /// Where it is (absolute).
    pub path: PathBuf,
    /// Its segment.
    pub segno: SegmentNo,
    /// Compressed with gzip (`.gz`).
    pub gzip: bool,
}

/// The segments of a directory, in order: one timeline, consecutive, one cluster.
#[derive(Clone, Debug)]
pub struct PlayList {
    /// The files, in LSN order.
    pub files: Vec<WalInput>,
    /// `wal_segment_size`, from the first file's long page header.
    pub segment_size: SegmentSize,
    /// `xlp_sysid`, from the first file's long page header.
    pub system_id: u64,
    /// The timeline of every file.
    pub timeline: TimelineId,
    /// Entries of the directory that are not segment files and were left out.
    pub ignored: usize,
}

impl PlayList {
    /// LSN of the first byte of `file`.
    pub fn start_of(&self, file: &WalInput) -> Lsn {
        Lsn(file.segno.0 * self.segment_size.bytes_u64())
    }

    /// Total bytes of WAL (uncompressed).
    pub fn bytes(&self) -> u64 {
        self.files.len() as u64 * self.segment_size.bytes_u64()
    }

    /// Reads `dir`: every file named like a WAL segment (`000000010000000000000001`, or the
    /// same with `.gz`). The first file's page header gives the segment size and system
    /// identifier. The files must be of one timeline and consecutive, since each job streams its
    /// share as one continuous WAL stream.
    pub fn scan(dir: &Path) -> Result<Self, WalPlayerError> {
        let dir =
            std::path::absolute(dir).map_err(|e| FsError::new(FsAction::ResolvePath, dir, e))?;
        let (mut named, ignored) =
            segment_entries(&dir).map_err(|e| FsError::new(FsAction::ReadDirectory, &dir, e))?;
        named.sort();
        let Some((_, first, first_gz)) = named.first() else {
            return Err(WalPlayerError::NoFiles(dir));
        };
        let (segment_size, system_id) = identity_of(first, *first_gz)?;
        let mut files = Vec::with_capacity(named.len());
        let mut timeline = None;
        for (stem, path, gzip) in named {
            let Ok(WalFileName::Segment {
                timeline: tli,
                segno,
            }) = WalFileName::parse(&stem, segment_size)
            else {
                return Err(WalPlayerError::BadName { path, segment_size });
            };
            if *timeline.get_or_insert(tli) != tli {
                return Err(WalPlayerError::NotOneStream(format!(
                    "{} is on timeline {tli}, the files before it on timeline {}",
                    path.display(),
                    timeline.unwrap_or(tli)
                )));
            }
            if let Some(prev) = files.last().map(|f: &WalInput| f.segno) {
                if segno.0 == prev.0 {
                    return Err(WalPlayerError::NotOneStream(format!(
                        "{} is there both plain and gzip-compressed",
                        stem
                    )));
                }
                if segno.0 != prev.0 + 1 {
                    return Err(WalPlayerError::NotOneStream(format!(
                        "{} does not follow the file before it (segments are missing in between)",
                        path.display()
                    )));
                }
            }
            if !gzip {
                let len = std::fs::metadata(&path)
                    .map_err(|e| FsError::new(FsAction::Stat, &path, e))?
                    .len();
                if len != segment_size.bytes_u64() {
                    return Err(WalPlayerError::WrongLength {
                        path,
                        len,
                        segment_size,
                    });
                }
            }
            files.push(WalInput { path, segno, gzip });
        }
        Ok(Self {
            files,
            segment_size,
            system_id,
            timeline: timeline.unwrap_or(TimelineId::FIRST),
            ignored,
        })
    }
}

/// A directory entry named like a segment: upper-case name, path, gzip-compressed.
type SegmentEntry = (String, PathBuf, bool);

/// The entries of `dir` named like segments, and how many other entries there are.
pub(super) fn segment_entries(dir: &Path) -> std::io::Result<(Vec<SegmentEntry>, usize)> {
    let mut named = Vec::new();
    let mut ignored = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            ignored += 1;
            continue;
        };
        let (stem, gzip) = match name.strip_suffix(".gz") {
            Some(stem) => (stem, true),
            None => (name, false),
        };
        if stem.len() == 24 && stem.bytes().all(|b| b.is_ascii_hexdigit()) {
            named.push((stem.to_ascii_uppercase(), entry.path(), gzip));
        } else {
            ignored += 1;
        }
    }
    Ok((named, ignored))
}

/// The segment size and system identifier in a segment's long page header.
fn identity_of(path: &Path, gzip: bool) -> Result<(SegmentSize, u64), WalPlayerError> {
    let mut head = [0u8; 64];
    let mut reader = open(path, gzip)?;
    let got =
        read_block(&mut *reader, &mut head).map_err(|e| FsError::new(FsAction::Read, path, e))?;
    let not_wal = |reason: NotWalReason| WalPlayerError::NotWal {
        path: path.to_owned(),
        source: reason,
    };
    let header = PageHeader::parse(&head[..got]).map_err(|e| not_wal(e.into()))?;
    let long = header
        .long
        .ok_or_else(|| not_wal(NotWalReason::NoLongHeader))?;
    let size = SegmentSize::new(u64::from(long.seg_size)).map_err(|e| not_wal(e.into()))?;
    Ok((size, long.system_id))
}

/// A reader of the file's WAL bytes (decompressing `.gz`).
pub(super) fn open(path: &Path, gzip: bool) -> Result<Box<dyn Read + Send>, WalPlayerError> {
    let file = std::fs::File::open(path).map_err(|e| FsError::new(FsAction::Open, path, e))?;
    Ok(if gzip {
        Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(
            file,
        )))
    } else {
        Box::new(file)
    })
}

/// Fills `buf` from `reader` as far as it goes; the byte count (short only at the end).
pub(super) fn read_block(reader: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}
