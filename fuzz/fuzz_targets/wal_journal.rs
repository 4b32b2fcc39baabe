#![no_main]
//! Journal files are read back from disk after crashes: the recovery scan must accept any bytes
//! without panicking and report a consistent valid prefix.

use std::path::Path;

use klio_store::wal_archive::inspect_journal;
use klio_wal::{Lsn, SegmentNo, SegmentSize, TimelineId, WalFileName};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let size = SegmentSize::new(1 << 20).expect("valid size");
    let name = WalFileName::Segment {
        timeline: TimelineId::FIRST,
        segno: SegmentNo(0),
    };
    if let Ok(r) = inspect_journal(data, &name, size, Path::new("fuzz.klio-journal")) {
        // Every valid frame is a 32-byte header plus its data, back to back from offset 0.
        assert!(r.end <= Lsn(size.bytes_u64()));
        assert_eq!(r.valid_bytes, 32 * r.frames as u64 + r.end.0);
        assert!(r.valid_bytes <= data.len() as u64);
        assert_eq!(r.complete, r.end == Lsn(size.bytes_u64()));
        assert_eq!(r.stop_reason.is_none(), r.complete);
    }
});
