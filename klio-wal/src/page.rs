//! WAL page headers: PostgreSQL's `XLogPageHeaderData` and `XLogLongPageHeaderData`.
//!
//! Every 8 KiB WAL page starts with one; the first page of each segment carries the long form,
//! which names the cluster, the segment size and the block size. Klio checks them on everything
//! it receives and serves, so that a recycled, truncated or foreign segment is refused before it
//! reaches an archive or a restore. Layout and rules follow PostgreSQL 15–17
//! (`access/xlog_internal.h`, `XLogReaderValidatePageHeader` in `xlogreader.c`).

use std::fmt;

use crate::{Lsn, SegmentSize, TimelineId};

/// The record that ends at the start of this page began on an earlier page.
pub const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
/// The header is the long form (first page of a segment).
pub const XLP_LONG_HEADER: u16 = 0x0002;
/// Full-page images starting on this page may be dropped (no base backup was running).
pub const XLP_BKP_REMOVABLE: u16 = 0x0004;
/// The page replaces a continuation record lost in a crash (`CreateOverwriteContrecordRecord`).
pub const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
/// Every flag PostgreSQL 15–17 define; any other bit makes a header invalid.
pub const XLP_ALL_FLAGS: u16 = 0x000F;

/// `SizeOfXLogShortPHD`: 20 bytes of fields, MAXALIGNed to 24.
pub const SHORT_HEADER_LEN: usize = 24;
/// `SizeOfXLogLongPHD`: the short header plus system id, segment size and block size.
pub const LONG_HEADER_LEN: usize = 40;
/// PostgreSQL's default and near-universal `XLOG_BLCKSZ`.
pub const DEFAULT_BLOCK_SIZE: u32 = 8192;
/// The largest `xlp_rem_len` accepted: PostgreSQL cannot allocate, so never reads back,
/// a record of `MaxAllocSize` (1 GiB − 1) or more.
pub const MAX_REM_LEN: u32 = 0x3FFF_FFFF;

/// The WAL format version, read from `xlp_magic`; each PostgreSQL major version has its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum WalMagic {
    /// PostgreSQL 15, `0xD110`.
    Pg15,
    /// PostgreSQL 16, `0xD113`.
    Pg16,
    /// PostgreSQL 17, `0xD116`.
    Pg17,
}

impl WalMagic {
    /// Every version this crate knows, oldest first.
    pub const ALL: [Self; 3] = [Self::Pg15, Self::Pg16, Self::Pg17];

    /// The version whose `XLOG_PAGE_MAGIC` is `magic`, if known.
    pub const fn from_u16(magic: u16) -> Option<Self> {
        match magic {
            0xD110 => Some(Self::Pg15),
            0xD113 => Some(Self::Pg16),
            0xD116 => Some(Self::Pg17),
            _ => None,
        }
    }

    /// The `xlp_magic` value.
    pub const fn to_u16(self) -> u16 {
        match self {
            Self::Pg15 => 0xD110,
            Self::Pg16 => 0xD113,
            Self::Pg17 => 0xD116,
        }
    }

    /// The PostgreSQL major version (15, 16, 17).
    pub const fn major_version(self) -> u32 {
        match self {
            Self::Pg15 => 15,
            Self::Pg16 => 16,
            Self::Pg17 => 17,
        }
    }
}

impl fmt::Display for WalMagic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PostgreSQL {} (0x{:04X})",
            self.major_version(),
            self.to_u16()
        )
    }
}

/// The fields only the long header has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LongPageHeader {
    /// `xlp_sysid`: the cluster's system identifier from `pg_control`.
    pub system_id: u64,
    /// `xlp_seg_size`: the segment size, as written (checked by [`PageHeader::validate`]).
    pub seg_size: u32,
    /// `xlp_xlog_blcksz`: the WAL block size, as written.
    pub block_size: u32,
}

/// A parsed WAL page header.
///
/// `long` decides whether this is the long form: [`PageHeader::encode`] sets or clears the
/// [`XLP_LONG_HEADER`] bit of `info` to match it, and [`PageHeader::parse`] always returns the
/// two in agreement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PageHeader {
    /// `xlp_magic`.
    pub magic: WalMagic,
    /// `xlp_info`: the `XLP_*` flag bits, kept raw so that undefined bits can be reported.
    pub info: u16,
    /// `xlp_tli`: the timeline of the first record on the page.
    pub timeline: TimelineId,
    /// `xlp_pageaddr`: the LSN of the page's first byte.
    pub page_addr: Lsn,
    /// `xlp_rem_len`: bytes of a record begun on an earlier page that continue here.
    pub rem_len: u32,
    /// The long-header fields, present on the first page of a segment.
    pub long: Option<LongPageHeader>,
}

/// Why bytes are not a valid WAL page header, or not the one expected at a position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PageHeaderError {
    /// Fewer bytes than the header needs.
    #[error("truncated WAL page header: {needed} bytes needed, only {found} available")]
    Truncated {
        /// Bytes the header needs (24, or 40 for a long header).
        needed: usize,
        /// Bytes that were given.
        found: usize,
    },
    /// `xlp_magic` is not a WAL version this crate knows (zeros mean a page never written).
    #[error(
        "invalid WAL page magic 0x{found:04X}: expected 0xD110 (PostgreSQL 15), 0xD113 (16) or 0xD116 (17)"
    )]
    UnknownMagic {
        /// The magic found.
        found: u16,
    },
    /// `xlp_tli` is 0.
    #[error("WAL page header names timeline 0, which does not exist: timelines start at 1")]
    TimelineZero,
    /// `xlp_info` has bits outside [`XLP_ALL_FLAGS`].
    #[error(
        "invalid info bits 0x{info:04X} in WAL page header: undefined bits 0x{:04X} set (only 0x{:04X} are defined)",
        .info & !XLP_ALL_FLAGS,
        XLP_ALL_FLAGS
    )]
    UnknownInfoBits {
        /// The whole `xlp_info` found.
        info: u16,
    },
    /// The first page of a segment has a short header.
    #[error(
        "WAL page at {page_addr} starts a segment but has no long header (info bits 0x{info:04X})"
    )]
    MissingLongHeader {
        /// The page's expected address.
        page_addr: Lsn,
        /// The `xlp_info` found.
        info: u16,
    },
    /// A long header on a page that does not start a segment; PostgreSQL never writes one.
    #[error(
        "WAL page at {page_addr} is at offset {offset} of its segment but has a long header: only the first page of a segment has one"
    )]
    UnexpectedLongHeader {
        /// The page's expected address.
        page_addr: Lsn,
        /// Its offset inside the segment.
        offset: u32,
    },
    /// The long header names another segment size.
    #[error(
        "WAL segment size mismatch: page header says {found} bytes, expected {expected} bytes (WAL from a different cluster?)"
    )]
    SegmentSizeMismatch {
        /// `xlp_seg_size` found.
        found: u32,
        /// The segment size expected.
        expected: u32,
    },
    /// The long header names another WAL block size.
    #[error(
        "WAL block size mismatch: page header says {found} bytes, expected {expected} bytes (WAL from a different build?)"
    )]
    BlockSizeMismatch {
        /// `xlp_xlog_blcksz` found.
        found: u32,
        /// The block size expected.
        expected: u32,
    },
    /// `xlp_pageaddr` is not where the page was read from, typically a recycled segment.
    #[error(
        "unexpected WAL page address {found}, expected {expected} (recycled or misplaced segment?)"
    )]
    PageAddrMismatch {
        /// `xlp_pageaddr` found.
        found: Lsn,
        /// The position the page was read from.
        expected: Lsn,
    },
    /// `xlp_rem_len` is set but the page does not say it continues a record.
    #[error(
        "WAL page header has xlp_rem_len {rem_len} without XLP_FIRST_IS_CONTRECORD: expected 0"
    )]
    RemLenWithoutContrecord {
        /// `xlp_rem_len` found.
        rem_len: u32,
    },
    /// The page says it continues a record but `xlp_rem_len` is 0.
    #[error(
        "WAL page header has XLP_FIRST_IS_CONTRECORD but xlp_rem_len 0: expected the remaining record length"
    )]
    ContrecordWithoutRemLen,
    /// `xlp_rem_len` is larger than any record PostgreSQL can read.
    #[error("WAL page header has xlp_rem_len {rem_len}, more than the maximum record length {max}")]
    RemLenTooLarge {
        /// `xlp_rem_len` found.
        rem_len: u32,
        /// [`MAX_REM_LEN`].
        max: u32,
    },
    /// The block size given to [`PageHeader::validate`] is not one PostgreSQL can be built with.
    #[error("invalid WAL block size {block_size}: must be a power of two from 1024 to 65536 bytes")]
    InvalidBlockSize {
        /// The block size given.
        block_size: u32,
    },
    /// The address given to [`PageHeader::validate`] is not at a page boundary.
    #[error("{expected} is not the start of a WAL page of {block_size} bytes")]
    UnalignedPageAddr {
        /// The address given.
        expected: Lsn,
        /// The block size given.
        block_size: u32,
    },
    /// The page is from another PostgreSQL major version than the cluster's.
    #[error("WAL page is from {found}, expected {expected}")]
    MagicMismatch {
        /// The version found.
        found: WalMagic,
        /// The version expected.
        expected: WalMagic,
    },
    /// The long header names another cluster.
    #[error(
        "WAL segment is from a different database system: its system identifier is {found}, expected {expected}"
    )]
    SystemIdMismatch {
        /// `xlp_sysid` found.
        found: u64,
        /// The system identifier expected.
        expected: u64,
    },
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl PageHeader {
    /// Parses the header at the start of `bytes` (a page, or at least its first 24/40 bytes).
    ///
    /// Only the layout is checked here — length, a known magic, a non-zero timeline; whether the
    /// header fits where it was found is [`PageHeader::validate`]'s job. WAL is little-endian on
    /// every platform Klio supports, so fields are read as such.
    pub fn parse(bytes: &[u8]) -> Result<Self, PageHeaderError> {
        if bytes.len() < SHORT_HEADER_LEN {
            return Err(PageHeaderError::Truncated {
                needed: SHORT_HEADER_LEN,
                found: bytes.len(),
            });
        }
        let raw_magic = u16_at(bytes, 0);
        let magic = WalMagic::from_u16(raw_magic)
            .ok_or(PageHeaderError::UnknownMagic { found: raw_magic })?;
        let info = u16_at(bytes, 2);
        let timeline =
            TimelineId::new(u32_at(bytes, 4)).map_err(|_| PageHeaderError::TimelineZero)?;
        let page_addr = Lsn(u64_at(bytes, 8));
        let rem_len = u32_at(bytes, 16);
        let long = if info & XLP_LONG_HEADER != 0 {
            if bytes.len() < LONG_HEADER_LEN {
                return Err(PageHeaderError::Truncated {
                    needed: LONG_HEADER_LEN,
                    found: bytes.len(),
                });
            }
            Some(LongPageHeader {
                system_id: u64_at(bytes, 24),
                seg_size: u32_at(bytes, 32),
                block_size: u32_at(bytes, 36),
            })
        } else {
            None
        };
        Ok(Self {
            magic,
            info,
            timeline,
            page_addr,
            rem_len,
            long,
        })
    }

    /// Bytes the header occupies on the page (24 or 40); page data starts right after.
    pub const fn encoded_len(&self) -> usize {
        if self.long.is_some() {
            LONG_HEADER_LEN
        } else {
            SHORT_HEADER_LEN
        }
    }

    /// `xlp_info` as [`PageHeader::encode`] writes it: the long-header bit follows `long`.
    pub const fn flags(&self) -> u16 {
        if self.long.is_some() {
            self.info | XLP_LONG_HEADER
        } else {
            self.info & !XLP_LONG_HEADER
        }
    }

    /// Whether the page starts with the rest of a record begun on an earlier page.
    pub const fn is_contrecord(&self) -> bool {
        self.info & XLP_FIRST_IS_CONTRECORD != 0
    }

    /// Checks the header against the place it was read from, as PostgreSQL's
    /// `XLogReaderValidatePageHeader` does: defined info bits only, a long header exactly on the
    /// first page of a segment with matching segment and block sizes, the expected page address.
    /// It also checks `xlp_rem_len` against the contrecord flag and the record size limit,
    /// which PostgreSQL checks while reassembling a record.
    ///
    /// Stricter than PostgreSQL in one point: a long header in the middle of a segment is refused
    /// (PostgreSQL never writes one). The timeline-never-goes-back check needs the previous page
    /// and is left to the caller; so are the version and the cluster, see
    /// [`PageHeader::check_identity`].
    pub fn validate(
        &self,
        expected_addr: Lsn,
        segment_size: SegmentSize,
        block_size: u32,
    ) -> Result<(), PageHeaderError> {
        if !block_size.is_power_of_two() || !(1024..=65536).contains(&block_size) {
            return Err(PageHeaderError::InvalidBlockSize { block_size });
        }
        if !expected_addr.0.is_multiple_of(u64::from(block_size)) {
            return Err(PageHeaderError::UnalignedPageAddr {
                expected: expected_addr,
                block_size,
            });
        }
        if self.info & !XLP_ALL_FLAGS != 0 {
            return Err(PageHeaderError::UnknownInfoBits { info: self.info });
        }
        let offset = segment_size.offset_of(expected_addr);
        match (&self.long, offset) {
            (Some(long), 0) => {
                if long.seg_size != segment_size.bytes() {
                    return Err(PageHeaderError::SegmentSizeMismatch {
                        found: long.seg_size,
                        expected: segment_size.bytes(),
                    });
                }
                if long.block_size != block_size {
                    return Err(PageHeaderError::BlockSizeMismatch {
                        found: long.block_size,
                        expected: block_size,
                    });
                }
            }
            (Some(_), offset) => {
                return Err(PageHeaderError::UnexpectedLongHeader {
                    page_addr: expected_addr,
                    offset,
                });
            }
            (None, 0) => {
                return Err(PageHeaderError::MissingLongHeader {
                    page_addr: expected_addr,
                    info: self.info,
                });
            }
            (None, _) => {}
        }
        if self.page_addr != expected_addr {
            return Err(PageHeaderError::PageAddrMismatch {
                found: self.page_addr,
                expected: expected_addr,
            });
        }
        match (self.is_contrecord(), self.rem_len) {
            (false, 0) => {}
            (false, rem_len) => return Err(PageHeaderError::RemLenWithoutContrecord { rem_len }),
            (true, 0) => return Err(PageHeaderError::ContrecordWithoutRemLen),
            (true, rem_len) if rem_len > MAX_REM_LEN => {
                return Err(PageHeaderError::RemLenTooLarge {
                    rem_len,
                    max: MAX_REM_LEN,
                });
            }
            (true, _) => {}
        }
        Ok(())
    }

    /// Checks that the page belongs to the expected cluster: its WAL version, and for a long
    /// header its system identifier (PostgreSQL's check against `pg_control`).
    pub fn check_identity(&self, magic: WalMagic, system_id: u64) -> Result<(), PageHeaderError> {
        if self.magic != magic {
            return Err(PageHeaderError::MagicMismatch {
                found: self.magic,
                expected: magic,
            });
        }
        match self.long {
            Some(long) if long.system_id != system_id => Err(PageHeaderError::SystemIdMismatch {
                found: long.system_id,
                expected: system_id,
            }),
            _ => Ok(()),
        }
    }

    /// Appends the header's on-disk bytes (24 or 40, padding zeroed) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        out.extend_from_slice(&self.magic.to_u16().to_le_bytes());
        out.extend_from_slice(&self.flags().to_le_bytes());
        out.extend_from_slice(&self.timeline.get().to_le_bytes());
        out.extend_from_slice(&self.page_addr.0.to_le_bytes());
        out.extend_from_slice(&self.rem_len.to_le_bytes());
        out.extend_from_slice(&[0u8; 4]);
        if let Some(long) = &self.long {
            out.extend_from_slice(&long.system_id.to_le_bytes());
            out.extend_from_slice(&long.seg_size.to_le_bytes());
            out.extend_from_slice(&long.block_size.to_le_bytes());
        }
    }

    /// The header's on-disk bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1024 * 1024;

    fn seg16() -> SegmentSize {
        SegmentSize::new(16 * MIB).unwrap()
    }

    /// The first page header of 000000010000000000000006 from a PostgreSQL 15 initdb with
    /// `--wal-segsize=1`: long header, a continued record, backup blocks removable.
    const PG15_FIRST_PAGE: [u8; 40] = [
        0x10, 0xd1, 0x07, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x60, 0x00, 0x00, 0x00, 0x00,
        0x00, 0xd9, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x4b, 0xa9, 0xb6, 0xee, 0xad, 0x5e,
        0x01, 0x6b, 0x00, 0x00, 0x10, 0x00, 0x00, 0x20, 0x00, 0x00,
    ];

    /// The header of the second page of the same segment.
    const PG15_SECOND_PAGE: [u8; 24] = [
        0x10, 0xd1, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x20, 0x60, 0x00, 0x00, 0x00, 0x00,
        0x00, 0xe4, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];

    #[test]
    fn parses_real_postgres_15_headers() {
        let one_mib = SegmentSize::new(MIB).unwrap();
        let first = PageHeader::parse(&PG15_FIRST_PAGE).unwrap();
        assert_eq!(first.magic, WalMagic::Pg15);
        assert_eq!(
            first.info,
            XLP_FIRST_IS_CONTRECORD | XLP_LONG_HEADER | XLP_BKP_REMOVABLE
        );
        assert_eq!(first.timeline.get(), 1);
        assert_eq!(first.page_addr, Lsn(0x60_0000));
        assert_eq!(first.rem_len, 0xd9);
        assert_eq!(
            first.long,
            Some(LongPageHeader {
                system_id: 0x6b01_5ead_eeb6_a94b,
                seg_size: 1 << 20,
                block_size: 8192,
            })
        );
        assert_eq!(first.encoded_len(), LONG_HEADER_LEN);
        first.validate(Lsn(0x60_0000), one_mib, 8192).unwrap();
        first
            .check_identity(WalMagic::Pg15, 0x6b01_5ead_eeb6_a94b)
            .unwrap();
        assert_eq!(first.to_bytes(), PG15_FIRST_PAGE);

        let second = PageHeader::parse(&PG15_SECOND_PAGE).unwrap();
        assert_eq!(second.long, None);
        assert_eq!(second.rem_len, 0x3e4);
        second.validate(Lsn(0x60_2000), one_mib, 8192).unwrap();
        assert_eq!(second.to_bytes(), PG15_SECOND_PAGE);
    }

    #[test]
    fn short_input_is_an_error_not_a_panic() {
        for n in 0..SHORT_HEADER_LEN {
            assert_eq!(
                PageHeader::parse(&PG15_FIRST_PAGE[..n]),
                Err(PageHeaderError::Truncated {
                    needed: SHORT_HEADER_LEN,
                    found: n
                })
            );
        }
        for n in SHORT_HEADER_LEN..LONG_HEADER_LEN {
            assert_eq!(
                PageHeader::parse(&PG15_FIRST_PAGE[..n]),
                Err(PageHeaderError::Truncated {
                    needed: LONG_HEADER_LEN,
                    found: n
                })
            );
        }
        // A short header needs no more than 24 bytes.
        assert!(PageHeader::parse(&PG15_SECOND_PAGE).is_ok());
    }

    #[test]
    fn rejects_unknown_magic_and_timeline_zero() {
        let mut b = PG15_SECOND_PAGE;
        b[0] = 0;
        b[1] = 0;
        assert_eq!(
            PageHeader::parse(&b),
            Err(PageHeaderError::UnknownMagic { found: 0 })
        );
        let mut b = PG15_SECOND_PAGE;
        b[0..2].copy_from_slice(&0xD10Du16.to_le_bytes()); // PostgreSQL 14
        assert_eq!(
            PageHeader::parse(&b),
            Err(PageHeaderError::UnknownMagic { found: 0xD10D })
        );
        for m in WalMagic::ALL {
            b[0..2].copy_from_slice(&m.to_u16().to_le_bytes());
            assert_eq!(PageHeader::parse(&b).unwrap().magic, m);
        }
        let mut b = PG15_SECOND_PAGE;
        b[4..8].fill(0);
        assert_eq!(PageHeader::parse(&b), Err(PageHeaderError::TimelineZero));
    }

    fn short_at(addr: u64) -> PageHeader {
        PageHeader {
            magic: WalMagic::Pg15,
            info: XLP_BKP_REMOVABLE,
            timeline: TimelineId::FIRST,
            page_addr: Lsn(addr),
            rem_len: 0,
            long: None,
        }
    }

    fn long_at(addr: u64) -> PageHeader {
        PageHeader {
            info: XLP_LONG_HEADER | XLP_BKP_REMOVABLE,
            long: Some(LongPageHeader {
                system_id: 42,
                seg_size: 16 << 20,
                block_size: 8192,
            }),
            ..short_at(addr)
        }
    }

    #[test]
    fn validate_accepts_good_headers() {
        long_at(0x100_0000)
            .validate(Lsn(0x100_0000), seg16(), 8192)
            .unwrap();
        short_at(0x100_2000)
            .validate(Lsn(0x100_2000), seg16(), 8192)
            .unwrap();
        let cont = PageHeader {
            info: XLP_FIRST_IS_CONTRECORD,
            rem_len: 100,
            ..short_at(0x100_4000)
        };
        cont.validate(Lsn(0x100_4000), seg16(), 8192).unwrap();
    }

    #[test]
    fn validate_reports_each_field() {
        let e = |h: PageHeader, at: u64| h.validate(Lsn(at), seg16(), 8192).unwrap_err();
        assert_eq!(
            e(
                PageHeader {
                    info: 0x0010 | XLP_BKP_REMOVABLE,
                    ..short_at(0x2000)
                },
                0x2000
            ),
            PageHeaderError::UnknownInfoBits { info: 0x0014 }
        );
        assert_eq!(
            e(short_at(0x100_0000), 0x100_0000),
            PageHeaderError::MissingLongHeader {
                page_addr: Lsn(0x100_0000),
                info: XLP_BKP_REMOVABLE
            }
        );
        assert_eq!(
            e(long_at(0x100_2000), 0x100_2000),
            PageHeaderError::UnexpectedLongHeader {
                page_addr: Lsn(0x100_2000),
                offset: 0x2000
            }
        );
        let mut wrong_seg = long_at(0x100_0000);
        wrong_seg.long = Some(LongPageHeader {
            seg_size: 1 << 20,
            ..wrong_seg.long.unwrap()
        });
        assert_eq!(
            e(wrong_seg, 0x100_0000),
            PageHeaderError::SegmentSizeMismatch {
                found: 1 << 20,
                expected: 16 << 20
            }
        );
        let mut wrong_blk = long_at(0x100_0000);
        wrong_blk.long = Some(LongPageHeader {
            block_size: 16384,
            ..wrong_blk.long.unwrap()
        });
        assert_eq!(
            e(wrong_blk, 0x100_0000),
            PageHeaderError::BlockSizeMismatch {
                found: 16384,
                expected: 8192
            }
        );
        assert_eq!(
            e(short_at(0x2000), 0x4000),
            PageHeaderError::PageAddrMismatch {
                found: Lsn(0x2000),
                expected: Lsn(0x4000)
            }
        );
        assert_eq!(
            e(
                PageHeader {
                    rem_len: 5,
                    ..short_at(0x2000)
                },
                0x2000
            ),
            PageHeaderError::RemLenWithoutContrecord { rem_len: 5 }
        );
        assert_eq!(
            e(
                PageHeader {
                    info: XLP_FIRST_IS_CONTRECORD,
                    ..short_at(0x2000)
                },
                0x2000
            ),
            PageHeaderError::ContrecordWithoutRemLen
        );
        assert_eq!(
            e(
                PageHeader {
                    info: XLP_FIRST_IS_CONTRECORD,
                    rem_len: u32::MAX,
                    ..short_at(0x2000)
                },
                0x2000
            ),
            PageHeaderError::RemLenTooLarge {
                rem_len: u32::MAX,
                max: MAX_REM_LEN
            }
        );
        assert_eq!(
            short_at(0x2000).validate(Lsn(0x2000), seg16(), 0),
            Err(PageHeaderError::InvalidBlockSize { block_size: 0 })
        );
        assert_eq!(
            short_at(0x2000).validate(Lsn(0x2000), seg16(), 3000),
            Err(PageHeaderError::InvalidBlockSize { block_size: 3000 })
        );
        assert_eq!(
            short_at(0x2008).validate(Lsn(0x2008), seg16(), 8192),
            Err(PageHeaderError::UnalignedPageAddr {
                expected: Lsn(0x2008),
                block_size: 8192
            })
        );
    }

    #[test]
    fn identity_checks() {
        let h = long_at(0x100_0000);
        h.check_identity(WalMagic::Pg15, 42).unwrap();
        assert_eq!(
            h.check_identity(WalMagic::Pg16, 42),
            Err(PageHeaderError::MagicMismatch {
                found: WalMagic::Pg15,
                expected: WalMagic::Pg16
            })
        );
        assert_eq!(
            h.check_identity(WalMagic::Pg15, 7),
            Err(PageHeaderError::SystemIdMismatch {
                found: 42,
                expected: 7
            })
        );
        // Short headers carry no system identifier.
        short_at(0x2000).check_identity(WalMagic::Pg15, 7).unwrap();
    }

    #[test]
    fn encode_follows_long_not_the_info_bit() {
        let mut h = short_at(0x2000);
        h.info |= XLP_LONG_HEADER;
        assert_eq!(h.flags(), XLP_BKP_REMOVABLE);
        let back = PageHeader::parse(&h.to_bytes()).unwrap();
        assert_eq!(back.info, XLP_BKP_REMOVABLE);
        let mut l = long_at(0);
        l.info = 0;
        assert_eq!(
            PageHeader::parse(&l.to_bytes()).unwrap().info,
            XLP_LONG_HEADER
        );
    }

    #[test]
    fn errors_say_what_and_what_was_expected() {
        let msg = PageHeaderError::PageAddrMismatch {
            found: Lsn(0x2000),
            expected: Lsn(0x1_0000_4000),
        }
        .to_string();
        assert!(msg.contains("0/2000") && msg.contains("1/4000"), "{msg}");
        let msg = PageHeaderError::UnknownInfoBits { info: 0x0014 }.to_string();
        assert!(msg.contains("0x0010") && msg.contains("0x000F"), "{msg}");
    }

    fn any_header() -> impl Strategy<Value = PageHeader> {
        (
            prop::sample::select(WalMagic::ALL.to_vec()),
            any::<u16>(),
            1u32..,
            any::<u64>(),
            any::<u32>(),
            prop::option::of((any::<u64>(), any::<u32>(), any::<u32>())),
        )
            .prop_map(|(magic, info, tli, addr, rem_len, long)| {
                let long = long.map(|(system_id, seg_size, block_size)| LongPageHeader {
                    system_id,
                    seg_size,
                    block_size,
                });
                let info = if long.is_some() {
                    info | XLP_LONG_HEADER
                } else {
                    info & !XLP_LONG_HEADER
                };
                PageHeader {
                    magic,
                    info,
                    timeline: TimelineId::new(tli).unwrap(),
                    page_addr: Lsn(addr),
                    rem_len,
                    long,
                }
            })
    }

    proptest! {
        #[test]
        fn encode_parse_round_trip(h in any_header()) {
            let bytes = h.to_bytes();
            prop_assert_eq!(bytes.len(), h.encoded_len());
            prop_assert_eq!(PageHeader::parse(&bytes), Ok(h));
        }

        #[test]
        fn parse_never_panics_and_reencodes(bytes in prop::collection::vec(any::<u8>(), 0..64),
                                            magic in prop::sample::select(WalMagic::ALL.to_vec()),
                                            addr: u64, shift in 20u32..=30) {
            let mut bytes = bytes;
            // Give about half the inputs a valid magic so that parsing gets past it.
            if bytes.len() >= 2 && addr % 2 == 0 {
                bytes[0..2].copy_from_slice(&magic.to_u16().to_le_bytes());
            }
            if let Ok(h) = PageHeader::parse(&bytes) {
                let size = SegmentSize::new(1 << shift).unwrap();
                let _ = h.validate(Lsn(addr), size, 8192);
                let _ = h.validate(Lsn(addr & !8191), size, 8192);
                let enc = h.to_bytes();
                let mut expect = bytes[..enc.len()].to_vec();
                expect[20..24].fill(0);
                prop_assert_eq!(enc, expect);
            }
        }
    }
}
