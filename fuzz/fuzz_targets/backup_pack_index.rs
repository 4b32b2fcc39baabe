#![no_main]
//! Pack indexes (`.idx`) are read back from disk when the store loads its block index: any
//! bytes must give entries or a clear error, never a panic. An index that parses is exactly
//! what the writer writes for its entries. Its entries, however wild, are then used to read
//! a small valid pack: that must give the block or a clear error, never a panic. Inputs whose
//! first byte is odd get the right pack id and trailing CRC, so the fuzzer reaches the entries.

use std::path::Path;

use klio_store::backup::{PackId, encode_idx, parse_idx, read_pack_block};
use libfuzzer_sys::fuzz_target;

const ID: PackId = PackId([7; 16]);

/// A plain pack of pack id [`ID`] holding one stored block of `data` named by hash `[1; 32]`.
fn small_pack(data: &[u8]) -> Vec<u8> {
    let mut pack = b"KLBP\x01\x00\x00\x00".to_vec();
    pack.extend_from_slice(&ID.0);
    pack.extend_from_slice(&0u32.to_le_bytes());
    let crc = crc32c::crc32c(&pack);
    pack.extend_from_slice(&crc.to_le_bytes());
    let start = pack.len();
    pack.extend_from_slice(b"KLBR\x00\x00\x00\x00");
    pack.extend_from_slice(&(data.len() as u32).to_le_bytes());
    pack.extend_from_slice(&(data.len() as u32).to_le_bytes());
    pack.extend_from_slice(&[1; 32]);
    pack.extend_from_slice(&[0; 12]);
    pack.extend_from_slice(data);
    let crc = crc32c::crc32c(&pack[start..]);
    pack.extend_from_slice(&crc.to_le_bytes());
    pack
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut idx = rest.to_vec();
    if mode & 1 == 1 && idx.len() >= 36 {
        idx[8..24].copy_from_slice(&ID.0);
        let body = idx.len() - 4;
        let crc = crc32c::crc32c(&idx[..body]);
        idx[body..].copy_from_slice(&crc.to_le_bytes());
    }
    let path = Path::new("fuzz.idx");
    let Ok(entries) = parse_idx(&idx, ID, path) else {
        return;
    };
    assert_eq!(encode_idx(ID, &entries), idx);
    let pack = small_pack(b"a block");
    for entry in entries.iter().take(64) {
        if let Ok(block) = read_pack_block(&pack, Path::new("fuzz.pack"), None, entry) {
            assert_eq!(block.hash, entry.hash);
            assert_eq!(&block.data[..], b"a block");
        }
    }
});
