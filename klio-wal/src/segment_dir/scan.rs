//! Finding where streaming must resume from the files already in a directory.

use std::path::Path;

use crate::{FsAction, Lsn, SegmentSize, TimelineId, WalFileName};

use super::SegmentDirError;
use super::compression::{Compression, uncompressed_size};

/// What a directory scan found: the position to resume streaming from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamingStart {
    /// Segment-aligned position to request from the server.
    pub lsn: Lsn,
    /// The timeline of the newest file found.
    pub timeline: TimelineId,
}

/// Scans `dir` like pg_receivewal's `FindStreamingStart`: the newest segment wins; after a
/// complete segment streaming resumes at the next one, after a `.partial` at the start of that
/// same segment (its bytes are received again and overwrite identical ones). Compressed files
/// (`.gz`, `.lz4`, and their `.partial`s) count whatever this run compresses with. Complete
/// files whose (uncompressed) size is not the segment size, and plain `.partial`s of another
/// size, are ignored with a warning in the returned list, as pg_receivewal skips them.
pub fn find_streaming_start(
    dir: &Path,
    size: SegmentSize,
) -> Result<(Option<StreamingStart>, Vec<String>), SegmentDirError> {
    let mut best: Option<(crate::SegmentNo, TimelineId, bool)> = None;
    let mut warnings = Vec::new();
    let entries =
        std::fs::read_dir(dir).map_err(|e| SegmentDirError::io(FsAction::ReadDirectory, dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| SegmentDirError::io(FsAction::ReadDirectory, dir, e))?;
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str() else {
            continue;
        };
        let (rest, partial) = match name.strip_suffix(".partial") {
            Some(rest) => (rest, true),
            None => (name, false),
        };
        let Some((base, method)) = [".gz", ".lz4", ""].iter().find_map(|suffix| {
            let base = rest.strip_suffix(suffix)?;
            Some((base, Compression::of_suffix(suffix)?))
        }) else {
            continue;
        };
        let Ok(WalFileName::Segment { timeline, segno }) = WalFileName::parse(base, size) else {
            continue;
        };
        let path = entry.path();
        let len = match (method, partial) {
            // A compressed .partial holds what was received, whatever its length.
            (Compression::Gzip { .. } | Compression::Lz4, true) => None,
            (Compression::None, _) => Some(
                entry
                    .metadata()
                    .map_err(|e| SegmentDirError::io(FsAction::Stat, &path, e))?
                    .len(),
            ),
            (_, false) => Some(
                uncompressed_size(&path, method, size.bytes_u64())
                    .map_err(|e| SegmentDirError::io(FsAction::Read, &path, e))?,
            ),
        };
        if let Some(len) = len.filter(|len| *len != size.bytes_u64()) {
            warnings.push(match method {
                Compression::None => {
                    format!("segment file {name:?} has incorrect size {len}, skipping")
                }
                _ => format!(
                    "compressed segment file {name:?} has incorrect uncompressed size {len}, skipping"
                ),
            });
            continue;
        }
        let newer = match best {
            None => true,
            Some((bs, bt, bp)) => {
                segno > bs
                    || (segno == bs && timeline > bt)
                    || (segno == bs && timeline == bt && bp && !partial)
            }
        };
        if newer {
            best = Some((segno, timeline, partial));
        }
    }
    let start = match best {
        None => None,
        Some((segno, timeline, partial)) => {
            let segno = if partial {
                segno
            } else {
                crate::SegmentNo(segno.0 + 1)
            };
            let lsn = size
                .segment_start(segno)
                .ok_or(SegmentDirError::PositionOverflow)?;
            Some(StreamingStart { lsn, timeline })
        }
    };
    Ok((start, warnings))
}
