//! WAL segment size and segment arithmetic.

use std::fmt;

use crate::Lsn;

/// The size of a WAL segment file (`wal_segment_size`): a power of two from 1 MiB to 1 GiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SegmentSize(u32);

/// A segment size PostgreSQL would refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid WAL segment size {0} bytes: must be a power of two between 1 MiB and 1 GiB")]
pub struct InvalidSegmentSize(pub u64);

/// The number of a WAL segment since the start of the WAL (`XLogSegNo`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentNo(pub u64);

impl SegmentSize {
    /// PostgreSQL's default, 16 MiB.
    pub const DEFAULT: Self = Self(16 * 1024 * 1024);
    /// The smallest size PostgreSQL accepts.
    pub const MIN_BYTES: u32 = 1024 * 1024;
    /// The largest size PostgreSQL accepts.
    pub const MAX_BYTES: u32 = 1024 * 1024 * 1024;

    /// Validates a size in bytes.
    pub fn new(bytes: u64) -> Result<Self, InvalidSegmentSize> {
        if bytes.is_power_of_two()
            && bytes >= u64::from(Self::MIN_BYTES)
            && bytes <= u64::from(Self::MAX_BYTES)
        {
            Ok(Self(bytes as u32))
        } else {
            Err(InvalidSegmentSize(bytes))
        }
    }

    /// The size in bytes.
    pub const fn bytes(self) -> u32 {
        self.0
    }

    /// The size in bytes as `u64`, for LSN arithmetic.
    pub const fn bytes_u64(self) -> u64 {
        self.0 as u64
    }

    /// Segments per 4 GiB "xlogid", the middle part of a WAL file name.
    pub const fn segments_per_xlog_id(self) -> u64 {
        0x1_0000_0000 / self.0 as u64
    }

    /// The segment holding `lsn` (`XLByteToSeg`).
    pub const fn segment_of(self, lsn: Lsn) -> SegmentNo {
        SegmentNo(lsn.0 / self.0 as u64)
    }

    /// The offset of `lsn` inside its segment (`XLogSegmentOffset`).
    pub const fn offset_of(self, lsn: Lsn) -> u32 {
        (lsn.0 & (self.0 as u64 - 1)) as u32
    }

    /// The first LSN of `segno`, or `None` if it lies past the end of the 64-bit space.
    pub fn segment_start(self, segno: SegmentNo) -> Option<Lsn> {
        segno.0.checked_mul(self.bytes_u64()).map(Lsn)
    }

    /// `lsn` rounded down to the start of its segment.
    pub const fn round_down(self, lsn: Lsn) -> Lsn {
        Lsn(lsn.0 & !(self.0 as u64 - 1))
    }

    /// Splits the WAL bytes `[start, start + len)` at segment boundaries.
    pub fn split(self, start: Lsn, len: u64) -> SegmentSplit {
        SegmentSplit {
            size: self,
            pos: start.0,
            done: 0,
            remaining: len.min(u64::MAX - start.0),
        }
    }
}

impl fmt::Display for SegmentSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b >= 1024 * 1024 * 1024 {
            write!(f, "{}GB", b / (1024 * 1024 * 1024))
        } else {
            write!(f, "{}MB", b / (1024 * 1024))
        }
    }
}

impl Default for SegmentSize {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One piece of a byte range that lies in a single segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentPiece {
    /// The segment this piece belongs to.
    pub segno: SegmentNo,
    /// Offset of the piece within the segment.
    pub offset: u32,
    /// Offset of the piece within the original range.
    pub range_offset: u64,
    /// Length of the piece in bytes.
    pub len: u32,
}

impl SegmentPiece {
    /// Whether this piece ends exactly at the end of its segment.
    pub fn completes_segment(&self, size: SegmentSize) -> bool {
        u64::from(self.offset) + u64::from(self.len) == size.bytes_u64()
    }
}

/// Iterator over the pieces of a byte range, one per segment touched.
#[derive(Clone, Debug)]
pub struct SegmentSplit {
    size: SegmentSize,
    pos: u64,
    done: u64,
    remaining: u64,
}

impl Iterator for SegmentSplit {
    type Item = SegmentPiece;

    fn next(&mut self) -> Option<SegmentPiece> {
        if self.remaining == 0 {
            return None;
        }
        let lsn = Lsn(self.pos);
        let offset = self.size.offset_of(lsn);
        let room = self.size.bytes_u64() - u64::from(offset);
        let len = room.min(self.remaining);
        let piece = SegmentPiece {
            segno: self.size.segment_of(lsn),
            offset,
            range_offset: self.done,
            len: len as u32,
        };
        self.pos += len;
        self.done += len;
        self.remaining -= len;
        Some(piece)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sizes() {
        assert!(SegmentSize::new(16 << 20).is_ok());
        assert!(SegmentSize::new(1 << 20).is_ok());
        assert!(SegmentSize::new(1 << 30).is_ok());
        assert!(SegmentSize::new(1 << 19).is_err());
        assert!(SegmentSize::new(2 << 30).is_err());
        assert!(SegmentSize::new(3 << 20).is_err());
        assert_eq!(SegmentSize::DEFAULT.segments_per_xlog_id(), 256);
        assert_eq!(SegmentSize::DEFAULT.to_string(), "16MB");
    }

    #[test]
    fn split_crosses_boundary() {
        let s = SegmentSize::new(1 << 20).unwrap();
        let pieces: Vec<_> = s.split(Lsn((1 << 20) - 10), 30).collect();
        assert_eq!(pieces.len(), 2);
        assert_eq!(pieces[0].segno, SegmentNo(0));
        assert_eq!(pieces[0].offset, (1 << 20) - 10);
        assert_eq!(pieces[0].len, 10);
        assert!(pieces[0].completes_segment(s));
        assert_eq!(pieces[1].segno, SegmentNo(1));
        assert_eq!(pieces[1].offset, 0);
        assert_eq!(pieces[1].len, 20);
        assert!(!pieces[1].completes_segment(s));
    }

    proptest! {
        #[test]
        fn split_covers_range_exactly(shift in 20u32..=30, start in 0u64..(1u64 << 40), len in 0u64..(1u64 << 32)) {
            let s = SegmentSize::new(1u64 << shift).unwrap();
            let mut pos = start;
            let mut total = 0u64;
            for p in s.split(Lsn(start), len) {
                prop_assert_eq!(s.segment_start(p.segno).unwrap().0 + u64::from(p.offset), pos);
                prop_assert!(p.len > 0);
                prop_assert_eq!(p.range_offset, total);
                prop_assert!(u64::from(p.offset) + u64::from(p.len) <= s.bytes_u64());
                pos += u64::from(p.len);
                total += u64::from(p.len);
            }
            prop_assert_eq!(total, len);
        }

        #[test]
        fn segment_offset_recompose(shift in 20u32..=30, v: u64) {
            let s = SegmentSize::new(1u64 << shift).unwrap();
            let lsn = Lsn(v);
            let seg = s.segment_of(lsn);
            prop_assert_eq!(seg.0 * s.bytes_u64() + u64::from(s.offset_of(lsn)), v);
            prop_assert_eq!(s.round_down(lsn).0, seg.0 * s.bytes_u64());
        }
    }
}
