#![no_main]
//! Packs are read back from disk: crash recovery scans a pack without index record by record,
//! and reads check each record against its index. Any bytes must give valid records or a clear
//! error, never a panic. Inputs whose first byte is odd get their header and record CRCs fixed
//! first, so the fuzzer reaches the record parser; every record the scan finds must then read
//! back, through the store's read path, as the block it holds.

use std::path::Path;

use klio_store::backup::{read_pack_block, scan_pack};
use libfuzzer_sys::fuzz_target;

/// Rewrites the CRC-32C fields of a plain pack (header, then each record) over what they cover.
fn fix_crcs(pack: &mut [u8]) {
    if pack.len() < 32 {
        return;
    }
    let crc = crc32c::crc32c(&pack[..28]);
    pack[28..32].copy_from_slice(&crc.to_le_bytes());
    let key_len = u32::from_le_bytes([pack[24], pack[25], pack[26], pack[27]]) as usize;
    let mut offset = 32usize.saturating_add(key_len);
    while let Some(header) = pack.get(offset..offset + 60) {
        let stored_len = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
        let end = offset + 60 + stored_len as usize;
        if end + 4 > pack.len() {
            return;
        }
        let crc = crc32c::crc32c(&pack[offset..end]);
        pack[end..end + 4].copy_from_slice(&crc.to_le_bytes());
        offset = end + 4;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut pack = rest.to_vec();
    if mode & 1 == 1 {
        fix_crcs(&mut pack);
    }
    let path = Path::new("fuzz.pack");
    let Ok(scan) = scan_pack(&pack, path, None) else {
        return;
    };
    assert!(scan.valid_len <= pack.len() as u64);
    let mut last = None;
    for entry in &scan.entries {
        // Records are found in order, each at a distinct offset inside the valid prefix.
        assert!(last.is_none_or(|o| o < entry.offset));
        assert!(entry.offset < scan.valid_len);
        last = Some(entry.offset);
        let block = read_pack_block(&pack, path, None, entry).expect("a scanned record reads");
        assert_eq!(block.hash, entry.hash);
        assert_eq!(block.data.len(), entry.stored_len as usize);
    }
});
