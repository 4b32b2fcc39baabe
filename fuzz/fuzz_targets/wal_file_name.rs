#![no_main]
//! WAL file names come from directory listings and from `restore_command` arguments.

use klio_wal::{SegmentSize, WalFileName};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for shift in [20u32, 24, 30] {
        let size = SegmentSize::new(1 << shift).expect("valid size");
        if let Ok(name) = WalFileName::parse(text, size) {
            // Whatever parses must format back to the same text.
            assert_eq!(name.to_string_with(size), text);
        }
    }
});
