#![no_main]
//! History files come from PostgreSQL through clients and from disk: parsing must give
//! ordered entries or an error, never panic.

use klio_wal::parse_history;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(entries) = parse_history(data) {
        for pair in entries.windows(2) {
            assert!(pair[0].parent < pair[1].parent);
            assert!(pair[0].switchpoint <= pair[1].switchpoint);
        }
    }
});
