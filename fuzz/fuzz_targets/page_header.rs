#![no_main]
//! WAL page headers come from the network and from files on disk: parsing and validating any
//! bytes must return an error, never panic, and what parses must encode back to itself.

use klio_wal::page::{DEFAULT_BLOCK_SIZE, PageHeader, WalMagic};
use klio_wal::{Lsn, SegmentSize};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = PageHeader::parse(data) else {
        return;
    };

    // Validation against its own address, a page-aligned address taken from the input, and
    // odd block sizes: any answer is fine, a panic is not.
    let other = data
        .get(data.len().saturating_sub(8)..)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_le_bytes);
    for shift in [20u32, 24, 30] {
        let size = SegmentSize::new(1 << shift).expect("valid segment size");
        for block_size in [DEFAULT_BLOCK_SIZE, 0, 1000, 1 << 16, u32::MAX] {
            let _ = header.validate(header.page_addr, size, block_size);
            let _ = header.validate(Lsn(other), size, block_size);
            let _ = header.validate(Lsn(other & !8191), size, block_size);
        }
    }
    for magic in WalMagic::ALL {
        let _ = header.check_identity(magic, other);
    }

    // Round trip: the encoding parses back to the same header and equals the input bytes,
    // except the 4 padding bytes after xlp_rem_len, which are written as zeros.
    let bytes = header.to_bytes();
    assert_eq!(bytes.len(), header.encoded_len());
    let again = PageHeader::parse(&bytes).expect("encoded header parses");
    assert_eq!(again, header);
    let mut expected = data[..bytes.len()].to_vec();
    expected[20..24].fill(0);
    assert_eq!(bytes, expected);
});
