//! WAL file names: segments, `.partial` segments, timeline `.history` files and `.backup` labels.

use std::fmt;

use crate::{SegmentNo, SegmentSize, TimelineId};

/// The name of a file in a WAL archive, as PostgreSQL and pg_receivewal spell them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum WalFileName {
    /// A complete segment: `000000010000000000000003`.
    Segment {
        /// The timeline in the name.
        timeline: TimelineId,
        /// The segment number.
        segno: SegmentNo,
    },
    /// A segment still being written: `000000010000000000000003.partial`.
    Partial {
        /// The timeline in the name.
        timeline: TimelineId,
        /// The segment number.
        segno: SegmentNo,
    },
    /// A timeline history file: `00000002.history`.
    History {
        /// The timeline whose history the file holds.
        timeline: TimelineId,
    },
    /// A backup label file: `000000010000000000000003.00000028.backup`.
    Backup {
        /// The timeline in the name.
        timeline: TimelineId,
        /// The segment the backup started in.
        segno: SegmentNo,
        /// The backup's start offset in that segment.
        offset: u32,
    },
}

/// Why a string is not a WAL file name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseWalFileNameError {
    /// Not one of the known shapes.
    #[error(
        "{0:?} is not a WAL file name (expected 24 hex digits, optionally .partial, or 8 hex digits .history, or a .backup label)"
    )]
    Shape(String),
    /// Timeline 0 in the name.
    #[error("{0:?} names timeline 0, which does not exist")]
    TimelineZero(String),
    /// The low segment part does not fit the segment size.
    #[error("{name:?} has a segment part too large for {size} segments")]
    SegmentOutOfRange {
        /// The name.
        name: String,
        /// The segment size it was read with.
        size: SegmentSize,
    },
}

fn hex8(s: &str) -> Option<u32> {
    // PostgreSQL writes and recognises upper-case hex only (IsXLogFileName).
    if s.len() == 8
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
    {
        u32::from_str_radix(s, 16).ok()
    } else {
        None
    }
}

impl WalFileName {
    /// Parses a file name; the segment size is needed to turn the name into a segment number.
    pub fn parse(name: &str, size: SegmentSize) -> Result<Self, ParseWalFileNameError> {
        let shape = || ParseWalFileNameError::Shape(name.to_owned());
        let tli = |v: u32| {
            TimelineId::new(v).map_err(|_| ParseWalFileNameError::TimelineZero(name.to_owned()))
        };
        let segment = |base: &str| -> Result<(TimelineId, SegmentNo), ParseWalFileNameError> {
            if base.len() != 24 {
                return Err(shape());
            }
            let t = hex8(&base[0..8]).ok_or_else(shape)?;
            let log = hex8(&base[8..16]).ok_or_else(shape)?;
            let seg = hex8(&base[16..24]).ok_or_else(shape)?;
            let per = size.segments_per_xlog_id();
            if u64::from(seg) >= per {
                return Err(ParseWalFileNameError::SegmentOutOfRange {
                    name: name.to_owned(),
                    size,
                });
            }
            Ok((tli(t)?, SegmentNo(u64::from(log) * per + u64::from(seg))))
        };
        if let Some(base) = name.strip_suffix(".partial") {
            let (timeline, segno) = segment(base)?;
            return Ok(Self::Partial { timeline, segno });
        }
        if let Some(base) = name.strip_suffix(".history") {
            let t = hex8(base).ok_or_else(shape)?;
            return Ok(Self::History { timeline: tli(t)? });
        }
        if let Some(base) = name.strip_suffix(".backup") {
            let (seg, off) = base.split_once('.').ok_or_else(shape)?;
            let (timeline, segno) = segment(seg)?;
            let offset = hex8(off).ok_or_else(shape)?;
            return Ok(Self::Backup {
                timeline,
                segno,
                offset,
            });
        }
        let (timeline, segno) = segment(name)?;
        Ok(Self::Segment { timeline, segno })
    }

    /// The timeline the file belongs to.
    pub fn timeline(&self) -> TimelineId {
        match *self {
            Self::Segment { timeline, .. }
            | Self::Partial { timeline, .. }
            | Self::History { timeline }
            | Self::Backup { timeline, .. } => timeline,
        }
    }

    /// The segment number, for segment-like names.
    pub fn segno(&self) -> Option<SegmentNo> {
        match *self {
            Self::Segment { segno, .. }
            | Self::Partial { segno, .. }
            | Self::Backup { segno, .. } => Some(segno),
            Self::History { .. } => None,
        }
    }

    /// Formats the name for the given segment size.
    pub fn display(&self, size: SegmentSize) -> WalFileNameDisplay {
        WalFileNameDisplay { name: *self, size }
    }

    /// The name as a `String`.
    pub fn to_string_with(&self, size: SegmentSize) -> String {
        self.display(size).to_string()
    }
}

/// Display adapter that knows the segment size (see [`WalFileName::display`]).
#[derive(Debug, Clone, Copy)]
pub struct WalFileNameDisplay {
    name: WalFileName,
    size: SegmentSize,
}

impl fmt::Display for WalFileNameDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per = self.size.segments_per_xlog_id();
        let seg = |f: &mut fmt::Formatter<'_>, t: TimelineId, s: SegmentNo| {
            write!(f, "{:08X}{:08X}{:08X}", t.get(), s.0 / per, s.0 % per)
        };
        match self.name {
            WalFileName::Segment { timeline, segno } => seg(f, timeline, segno),
            WalFileName::Partial { timeline, segno } => {
                seg(f, timeline, segno)?;
                f.write_str(".partial")
            }
            WalFileName::History { timeline } => write!(f, "{:08X}.history", timeline.get()),
            WalFileName::Backup {
                timeline,
                segno,
                offset,
            } => {
                seg(f, timeline, segno)?;
                write!(f, ".{offset:08X}.backup")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(n: u32) -> TimelineId {
        TimelineId::new(n).unwrap()
    }

    #[test]
    fn known_names() {
        let s = SegmentSize::DEFAULT;
        let n = WalFileName::Segment {
            timeline: t(1),
            segno: SegmentNo(0x103),
        };
        assert_eq!(n.to_string_with(s), "000000010000000100000003");
        assert_eq!(
            WalFileName::parse("000000010000000100000003", s).unwrap(),
            n
        );
        assert_eq!(
            WalFileName::parse("00000002.history", s).unwrap(),
            WalFileName::History { timeline: t(2) }
        );
        assert_eq!(
            WalFileName::parse("000000010000000000000002.00000028.backup", s).unwrap(),
            WalFileName::Backup {
                timeline: t(1),
                segno: SegmentNo(2),
                offset: 0x28
            }
        );
    }

    #[test]
    fn rejects_bad_names() {
        let s = SegmentSize::DEFAULT;
        for bad in [
            "",
            "00000001000000000000000",
            "0000000100000000000000001",
            "00000000000000000000000A",
            "000000010000000000000100",
            "00000001.histor",
            "0000000G.history",
            "000000010000000000000002.partial.partial",
            "000000010000000000000002.28.backup",
            "00000001000000000000000a",
        ] {
            assert!(WalFileName::parse(bad, s).is_err(), "{bad:?} parsed");
        }
    }

    fn any_name() -> impl Strategy<Value = (WalFileName, SegmentSize)> {
        (20u32..=30, 1u32.., any::<u32>(), any::<u64>(), 0usize..4).prop_map(
            |(shift, tl, off, seg, kind)| {
                let size = SegmentSize::new(1 << shift).unwrap();
                let timeline = t(tl);
                // Every segment number of the 64-bit LSN space has a name.
                let segno = SegmentNo(seg >> shift);
                let name = match kind {
                    0 => WalFileName::Segment { timeline, segno },
                    1 => WalFileName::Partial { timeline, segno },
                    2 => WalFileName::History { timeline },
                    _ => WalFileName::Backup {
                        timeline,
                        segno,
                        offset: off,
                    },
                };
                (name, size)
            },
        )
    }

    proptest! {
        #[test]
        fn round_trip((name, size) in any_name()) {
            let text = name.to_string_with(size);
            prop_assert_eq!(WalFileName::parse(&text, size).unwrap(), name);
        }
    }
}
