//! WAL records of the synthetic stream: `XLOG_NOOP` records carrying main data.
//!
//! `RM_XLOG_ID`/`XLOG_NOOP` is replayed as a no-op by PostgreSQL and decoded by pg_waldump
//! without looking at the data, so any payload is a valid record.

use crate::Lsn;

/// `SizeOfXLogRecord`: the fixed record header, `xl_crc` included.
pub(crate) const RECORD_HEADER_LEN: usize = 24;
/// Offset of `xl_crc` in the header; the CRC covers the header bytes before it.
pub(crate) const CRC_OFFSET: usize = 20;
/// `RM_XLOG_ID`.
pub(crate) const RM_XLOG_ID: u8 = 0;
/// `XLOG_NOOP` (`catalog/pg_control.h`).
pub(crate) const XLOG_NOOP: u8 = 0x20;
/// `XLR_BLOCK_ID_DATA_SHORT`: main data of at most 255 bytes, one length byte.
pub(crate) const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
/// `XLR_BLOCK_ID_DATA_LONG`: longer main data, a 4-byte unaligned length.
pub(crate) const XLR_BLOCK_ID_DATA_LONG: u8 = 254;
/// Header plus long main-data header: what a record adds to a payload over 255 bytes.
pub(crate) const LONG_RECORD_OVERHEAD: usize = RECORD_HEADER_LEN + 5;
/// WAL records start on 8-byte (MAXALIGN) boundaries.
pub(crate) const MAXALIGN: usize = 8;

/// Total record length (`xl_tot_len`) for a main-data payload of `len` bytes.
pub(crate) const fn record_len(len: usize) -> usize {
    RECORD_HEADER_LEN
        + match len {
            0 => 0,
            1..=255 => 2,
            _ => 5,
        }
        + len
}

/// Replaces `out` with a complete `XLOG_NOOP` record whose main data is `payload`.
///
/// The layout follows `XLogRecordAssemble`: header, then the main-data header (omitted for
/// empty data, as PostgreSQL does), then the data. The CRC-32C covers everything after the
/// header first and then the header up to `xl_crc`, as `ValidXLogRecord` recomputes it.
pub(crate) fn encode_noop(prev: Lsn, payload: &[u8], out: &mut Vec<u8>) {
    let total = record_len(payload.len());
    out.clear();
    out.reserve(total);
    // Payload lengths are bounded by SynthConfig validation, far below 4 GiB.
    out.extend_from_slice(&(total as u32).to_le_bytes()); // xl_tot_len
    out.extend_from_slice(&0u32.to_le_bytes()); // xl_xid
    out.extend_from_slice(&prev.0.to_le_bytes()); // xl_prev
    out.push(XLOG_NOOP); // xl_info
    out.push(RM_XLOG_ID); // xl_rmid
    out.extend_from_slice(&[0, 0]); // padding
    out.extend_from_slice(&[0; 4]); // xl_crc, filled below
    match payload.len() {
        0 => {}
        n @ 1..=255 => {
            out.push(XLR_BLOCK_ID_DATA_SHORT);
            out.push(n as u8);
        }
        n => {
            out.push(XLR_BLOCK_ID_DATA_LONG);
            out.extend_from_slice(&(n as u32).to_le_bytes());
        }
    }
    out.extend_from_slice(payload);
    let crc = record_crc(out);
    out[CRC_OFFSET..RECORD_HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
}

/// The CRC PostgreSQL stores in `xl_crc` for a whole record.
pub(crate) fn record_crc(record: &[u8]) -> u32 {
    let body = crc32c::crc32c(&record[RECORD_HEADER_LEN..]);
    crc32c::crc32c_append(body, &record[..CRC_OFFSET])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_and_layout() {
        let mut r = Vec::new();
        encode_noop(Lsn(0x0100_0028), b"", &mut r);
        assert_eq!(r.len(), 24);
        encode_noop(Lsn(0x0100_0028), &[7; 255], &mut r);
        assert_eq!(r.len(), 24 + 2 + 255);
        assert_eq!(&r[24..26], &[255, 255]);
        encode_noop(Lsn(0x0100_0028), &[7; 256], &mut r);
        assert_eq!(r.len(), 24 + 5 + 256);
        assert_eq!(&r[24..29], &[254, 0, 1, 0, 0]);
        assert_eq!(
            u32::from_le_bytes([r[0], r[1], r[2], r[3]]) as usize,
            r.len()
        );
        assert_eq!(&r[8..16], &0x0100_0028u64.to_le_bytes());
        assert_eq!(&r[16..20], &[XLOG_NOOP, RM_XLOG_ID, 0, 0]);
    }

    #[test]
    fn crc_of_a_fixed_record() {
        // A 30-byte NOOP record with prev 0/1000028 and data "klio", checked against a
        // CRC-32C over (data part ++ header before xl_crc) computed in one pass.
        let mut r = Vec::new();
        encode_noop(Lsn(0x0100_0028), b"klio", &mut r);
        let mut joined = r[24..].to_vec();
        joined.extend_from_slice(&r[..20]);
        let stored = u32::from_le_bytes([r[20], r[21], r[22], r[23]]);
        assert_eq!(stored, crc32c::crc32c(&joined));
    }
}
