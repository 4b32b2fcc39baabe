//! One WAL record (`XLogRecord` and what follows it): header sanity, CRC and layout.
//!
//! The checks are those PostgreSQL 15–17 apply before replaying a record
//! (`ValidXLogRecordHeader`, `ValidXLogRecord` and `DecodeXLogRecord` in `xlogreader.c`), so that a
//! record accepted here is one recovery would accept too.

use crate::Lsn;

/// `SizeOfXLogRecord`: the fixed header, `xl_crc` included.
pub(crate) const HEADER_LEN: usize = 24;
/// Offset of `xl_crc`; the CRC covers the header bytes before it.
const CRC_OFFSET: usize = 20;
/// The largest `xl_tot_len` accepted: PostgreSQL cannot allocate, so never reads back, a record of
/// `MaxAllocSize` or more (the same bound as [`crate::page::MAX_REM_LEN`]).
pub(crate) const MAX_RECORD_LEN: u32 = crate::page::MAX_REM_LEN;
/// Records start on 8-byte boundaries (`MAXALIGN`).
pub(crate) const MAXALIGN: usize = 8;

/// `RM_XLOG_ID`.
pub(crate) const RM_XLOG_ID: u8 = 0;
/// The highest built-in resource manager id of PostgreSQL 15–17 (`RM_LOGICALMSG_ID`).
const RM_MAX_BUILTIN_ID: u8 = 21;
/// Custom resource managers (PostgreSQL 15+) use ids from here to 255.
const RM_MIN_CUSTOM_ID: u8 = 128;
/// `XLR_RMGR_INFO_MASK`: the record type bits of `xl_info`.
const RMGR_INFO_MASK: u8 = 0xF0;
/// `XLOG_SWITCH`: the rest of the segment after this record is unused.
pub(crate) const XLOG_SWITCH: u8 = 0x40;
/// `XLOG_OVERWRITE_CONTRECORD`: written where a record lost in a crash should have continued.
pub(crate) const XLOG_OVERWRITE_CONTRECORD: u8 = 0xD0;

/// `BLCKSZ`, the data page size full-page images are cut from (PostgreSQL's default build).
const BLCKSZ: u16 = 8192;
const XLR_MAX_BLOCK_ID: u8 = 32;
const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
const XLR_BLOCK_ID_DATA_LONG: u8 = 254;
const XLR_BLOCK_ID_ORIGIN: u8 = 253;
const XLR_BLOCK_ID_TOPLEVEL_XID: u8 = 252;
const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
const BKPBLOCK_HAS_DATA: u8 = 0x20;
const BKPBLOCK_SAME_REL: u8 = 0x80;
const BKPIMAGE_HAS_HOLE: u8 = 0x01;
/// `BKPIMAGE_COMPRESS_PGLZ | _LZ4 | _ZSTD` (PostgreSQL 15+ layout of `bimg_info`).
const BKPIMAGE_COMPRESSED: u8 = 0x04 | 0x08 | 0x10;
/// `sizeof(RelFileLocator)`: tablespace, database and relation oids.
const REL_LOCATOR_LEN: usize = 12;

pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The fields of a record header the walker needs; `bytes` must hold at least [`HEADER_LEN`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecordHeader {
    pub(crate) prev: Lsn,
    pub(crate) info: u8,
    pub(crate) rmid: u8,
}

impl RecordHeader {
    pub(crate) fn parse(bytes: &[u8]) -> Self {
        Self {
            prev: Lsn(le64(bytes, 8)),
            info: bytes[16],
            rmid: bytes[17],
        }
    }

    /// Whether PostgreSQL 15–17 know the resource manager (`RmgrIdIsValid`).
    pub(crate) fn rmid_is_valid(&self) -> bool {
        self.rmid <= RM_MAX_BUILTIN_ID || self.rmid >= RM_MIN_CUSTOM_ID
    }

    /// Whether this is an XLOG record of `kind` (`XLOG_SWITCH`, ...).
    pub(crate) fn is_xlog(&self, kind: u8) -> bool {
        self.rmid == RM_XLOG_ID && self.info & RMGR_INFO_MASK == kind
    }
}

/// `(stored, computed)` CRC-32C of a whole record: the data after the header first, then the
/// header up to `xl_crc`, as `ValidXLogRecord` recomputes it.
pub(crate) fn crc(record: &[u8]) -> (u32, u32) {
    let body = crc32c::crc32c(&record[HEADER_LEN..]);
    let computed = crc32c::crc32c_append(body, &record[..CRC_OFFSET]);
    (le32(record, CRC_OFFSET), computed)
}

/// Walks the block references and data headers after the record header, as `DecodeXLogRecord`
/// does, and returns the main data. A CRC-valid record that fails here was written wrong, and
/// PostgreSQL would refuse to replay it.
pub(crate) fn main_data(record: &[u8]) -> Result<&[u8], &'static str> {
    let mut r = Reader {
        bytes: record,
        pos: HEADER_LEN,
    };
    // Bytes of block data, images and main data the headers announce.
    let mut data_total: u64 = 0;
    let mut main_len: u64 = 0;
    let mut last_block: Option<u8> = None;
    let mut have_rel = false;
    while r.remaining() > data_total {
        let id = r.u8()?;
        match id {
            XLR_BLOCK_ID_DATA_SHORT => {
                main_len = u64::from(r.u8()?);
                data_total += main_len;
                // By convention the main data header comes last.
                break;
            }
            XLR_BLOCK_ID_DATA_LONG => {
                main_len = u64::from(r.u32()?);
                data_total += main_len;
                break;
            }
            XLR_BLOCK_ID_ORIGIN => r.skip(2)?,
            XLR_BLOCK_ID_TOPLEVEL_XID => r.skip(4)?,
            0..=XLR_MAX_BLOCK_ID => {
                if last_block.is_some_and(|last| id <= last) {
                    return Err("block references out of order");
                }
                last_block = Some(id);
                let fork_flags = r.u8()?;
                let data_len = r.u16()?;
                let has_data = fork_flags & BKPBLOCK_HAS_DATA != 0;
                if has_data && data_len == 0 {
                    return Err("BKPBLOCK_HAS_DATA set, but no data included");
                }
                if !has_data && data_len != 0 {
                    return Err("BKPBLOCK_HAS_DATA not set, but data length is not zero");
                }
                data_total += u64::from(data_len);
                if fork_flags & BKPBLOCK_HAS_IMAGE != 0 {
                    data_total += u64::from(block_image(&mut r)?);
                }
                if fork_flags & BKPBLOCK_SAME_REL == 0 {
                    r.skip(REL_LOCATOR_LEN)?;
                    have_rel = true;
                } else if !have_rel {
                    return Err("BKPBLOCK_SAME_REL set but no previous relation");
                }
                r.skip(4)?; // block number
            }
            _ => return Err("invalid block id"),
        }
    }
    if r.remaining() != data_total {
        return Err("data lengths in the headers do not add up to xl_tot_len");
    }
    // Block data and images come first, the main data last.
    let main_len = main_len as usize; // <= remaining, a usize
    Ok(&record[record.len() - main_len..])
}

/// Reads an `XLogRecordBlockImageHeader` (and compression header) and returns the image length.
fn block_image(r: &mut Reader<'_>) -> Result<u16, &'static str> {
    let bimg_len = r.u16()?;
    let hole_offset = r.u16()?;
    let bimg_info = r.u8()?;
    let has_hole = bimg_info & BKPIMAGE_HAS_HOLE != 0;
    let compressed = bimg_info & BKPIMAGE_COMPRESSED != 0;
    let hole_length = if compressed {
        if has_hole { r.u16()? } else { 0 }
    } else {
        // Uncompressed images are the page minus the hole; PostgreSQL computes this in 16 bits.
        BLCKSZ.wrapping_sub(bimg_len)
    };
    if has_hole && (hole_offset == 0 || hole_length == 0 || bimg_len == BLCKSZ) {
        return Err("BKPIMAGE_HAS_HOLE set, but the hole or image length is impossible");
    }
    if !has_hole && (hole_offset != 0 || hole_length != 0) {
        return Err("BKPIMAGE_HAS_HOLE not set, but the image has a hole");
    }
    if compressed && bimg_len == BLCKSZ {
        return Err("compressed block image as long as the whole page");
    }
    if !has_hole && !compressed && bimg_len != BLCKSZ {
        return Err("block image without hole or compression shorter than a page");
    }
    Ok(bimg_len)
}

/// A bounds-checked cursor over the record bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: usize) -> Result<&[u8], &'static str> {
        let out = self
            .bytes
            .get(self.pos..self.pos + n)
            .ok_or("headers run past the end of the record")?;
        self.pos += n;
        Ok(out)
    }

    fn skip(&mut self, n: usize) -> Result<(), &'static str> {
        self.take(n).map(|_| ())
    }

    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, &'static str> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        Ok(le32(self.take(4)?, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record: header with length and zeroed CRC, then `body` (block headers and data).
    fn rec(body: &[u8]) -> Vec<u8> {
        let mut r = vec![0u8; HEADER_LEN];
        r.extend_from_slice(body);
        let len = r.len() as u32;
        r[..4].copy_from_slice(&len.to_le_bytes());
        r
    }

    /// A block reference header: id, fork/flags, data length, then `rest`.
    fn block(id: u8, flags: u8, data_len: u16, rest: &[u8]) -> Vec<u8> {
        let mut b = vec![id, flags];
        b.extend_from_slice(&data_len.to_le_bytes());
        b.extend_from_slice(rest);
        b
    }

    const REL: [u8; 12] = [1; 12];
    const BLKNO: [u8; 4] = [7, 0, 0, 0];

    #[test]
    fn empty_and_main_data_only() {
        assert_eq!(main_data(&rec(&[])), Ok(&[][..]));
        assert_eq!(main_data(&rec(&[255, 3, 1, 2, 3])), Ok(&[1, 2, 3][..]));
        let mut long = vec![254];
        long.extend_from_slice(&300u32.to_le_bytes());
        long.extend_from_slice(&[9; 300]);
        assert_eq!(main_data(&rec(&long)).unwrap().len(), 300);
        // Announced data missing or left over.
        assert!(main_data(&rec(&[255, 4, 1, 2, 3])).is_err());
        assert!(main_data(&rec(&[255, 2, 1, 2, 3])).is_err());
        assert!(main_data(&rec(&[255])).is_err());
        assert!(main_data(&rec(&[100])).is_err());
    }

    #[test]
    fn block_references() {
        // Block 0 with 2 data bytes, block 1 of the same relation, origin and xid, main data.
        let mut body = block(0, BKPBLOCK_HAS_DATA, 2, &REL);
        body.extend_from_slice(&BLKNO);
        body.extend(block(1, BKPBLOCK_SAME_REL, 0, &BLKNO));
        body.extend_from_slice(&[XLR_BLOCK_ID_ORIGIN, 1, 0]);
        body.extend_from_slice(&[XLR_BLOCK_ID_TOPLEVEL_XID, 1, 0, 0, 0]);
        body.extend_from_slice(&[255, 1, 0xAA, 0xBB, 0xCC]);
        assert_eq!(main_data(&rec(&body)), Ok(&[0xCC][..]));

        let mut same_rel_first = block(0, BKPBLOCK_SAME_REL, 0, &BLKNO);
        same_rel_first.extend_from_slice(&[255, 0]);
        assert!(main_data(&rec(&same_rel_first)).is_err());

        let mut out_of_order = block(1, 0, 0, &REL);
        out_of_order.extend_from_slice(&BLKNO);
        out_of_order.extend(block(1, BKPBLOCK_SAME_REL, 0, &BLKNO));
        assert_eq!(
            main_data(&rec(&out_of_order)),
            Err("block references out of order")
        );

        let mut flag_without_data = block(0, BKPBLOCK_HAS_DATA, 0, &REL);
        flag_without_data.extend_from_slice(&BLKNO);
        assert!(main_data(&rec(&flag_without_data)).is_err());
        let mut data_without_flag = block(0, 0, 1, &REL);
        data_without_flag.extend_from_slice(&BLKNO);
        data_without_flag.push(0);
        assert!(main_data(&rec(&data_without_flag)).is_err());
    }

    fn image_block(bimg_len: u16, hole_offset: u16, info: u8, extra: &[u8]) -> Vec<u8> {
        let mut b = block(0, BKPBLOCK_HAS_IMAGE, 0, &[]);
        b.extend_from_slice(&bimg_len.to_le_bytes());
        b.extend_from_slice(&hole_offset.to_le_bytes());
        b.push(info);
        b.extend_from_slice(extra);
        b.extend_from_slice(&REL);
        b.extend_from_slice(&BLKNO);
        b.resize(b.len() + usize::from(bimg_len), 0x55);
        b
    }

    #[test]
    fn full_page_images() {
        // A whole page, a page with a hole, a compressed page with a hole.
        assert!(main_data(&rec(&image_block(8192, 0, 0, &[]))).is_ok());
        assert!(main_data(&rec(&image_block(8000, 100, BKPIMAGE_HAS_HOLE, &[]))).is_ok());
        let hole = 192u16.to_le_bytes();
        assert!(
            main_data(&rec(&image_block(
                500,
                100,
                BKPIMAGE_HAS_HOLE | 0x04,
                &hole
            )))
            .is_ok()
        );
        // A hole at offset 0, a short image without a hole, a compressed full page.
        assert!(main_data(&rec(&image_block(8000, 0, BKPIMAGE_HAS_HOLE, &[]))).is_err());
        assert!(main_data(&rec(&image_block(8000, 0, 0, &[]))).is_err());
        assert!(main_data(&rec(&image_block(8192, 0, 0x08, &[]))).is_err());
        assert!(main_data(&rec(&image_block(8192, 5, 0, &[]))).is_err());
    }

    #[test]
    fn crc_and_header_fields() {
        let mut r = rec(&[255, 1, 42]);
        r[8..16].copy_from_slice(&0x1234_5678u64.to_le_bytes());
        r[16] = XLOG_SWITCH | 0x01;
        r[17] = RM_XLOG_ID;
        let (_, computed) = crc(&r);
        r[20..24].copy_from_slice(&computed.to_le_bytes());
        let (stored, again) = crc(&r);
        assert_eq!(stored, again);
        let h = RecordHeader::parse(&r);
        assert_eq!(h.prev, Lsn(0x1234_5678));
        assert!(h.is_xlog(XLOG_SWITCH) && !h.is_xlog(XLOG_OVERWRITE_CONTRECORD));
        assert!(h.rmid_is_valid());
        for (rmid, ok) in [
            (21, true),
            (22, false),
            (127, false),
            (128, true),
            (255, true),
        ] {
            assert_eq!(
                RecordHeader { rmid, ..h }.rmid_is_valid(),
                ok,
                "rmid {rmid}"
            );
        }
    }
}
