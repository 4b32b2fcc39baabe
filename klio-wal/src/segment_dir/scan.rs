//! Finding where streaming must resume from the files already in a directory.

use std::path::Path;

use crate::{FsAction, Lsn, SegmentSize, TimelineId, WalFileName};

use super::SegmentDirError;

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
/// same segment (its bytes are received again and overwrite identical ones). Files of the wrong
/// size are ignored with a warning in the returned list, as pg_receivewal skips them.
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
        let (timeline, segno, partial) = match WalFileName::parse(name, size) {
            Ok(WalFileName::Segment { timeline, segno }) => (timeline, segno, false),
            Ok(WalFileName::Partial { timeline, segno }) => (timeline, segno, true),
            _ => continue,
        };
        let len = entry
            .metadata()
            .map_err(|e| SegmentDirError::io(FsAction::Stat, &entry.path(), e))?
            .len();
        if len != size.bytes_u64() {
            warnings.push(format!(
                "segment file {name:?} has incorrect size {len} (expected {}), skipping",
                size.bytes()
            ));
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
