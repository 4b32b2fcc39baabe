#![no_main]
//! `klio verify` walks archived WAL read back from disk and object storage: whatever bytes a
//! segment holds, the record walker must answer with a summary or an error, never panic.
//!
//! The first input byte picks a mode: the input itself as the first segment, or patches written
//! over two valid synthetic segments (raw bytes rarely get past the first page header, patched
//! WAL reaches record reassembly, continuation pages and CRCs). Partial ends and a timeline
//! switch come from the input too.

use std::sync::OnceLock;

use klio_wal::page::WalMagic;
use klio_wal::record_walk::RecordWalker;
use klio_wal::{Lsn, SegmentNo, SegmentSize, SynthConfig, SyntheticWal, TimelineId};
use libfuzzer_sys::fuzz_target;

const MIB: usize = 1 << 20;

/// Two 1 MiB segments (1 and 2) of records up to 20 KB, spanning pages and the boundary.
fn clean() -> &'static (SynthConfig, Vec<u8>) {
    static CLEAN: OnceLock<(SynthConfig, Vec<u8>)> = OnceLock::new();
    CLEAN.get_or_init(|| {
        let config = SynthConfig {
            segments: 2,
            payload_min: 0,
            payload_max: 20_000,
            ..SynthConfig::new(SegmentSize::new(MIB as u64).expect("valid size"))
        };
        let wal = SyntheticWal::new(config.clone()).expect("valid config");
        let bytes = wal.flat_map(|s| s.data).collect();
        (config, bytes)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (config, clean) = clean();
    let mut wal = clean.clone();
    if mode & 1 == 0 {
        let n = rest.len().min(wal.len());
        wal[..n].copy_from_slice(&rest[..n]);
    } else {
        // (24-bit offset, value) patches.
        for p in rest.chunks_exact(4) {
            let at = u32::from_le_bytes([p[0], p[1], p[2], 0]) as usize % wal.len();
            wal[at] = p[3];
        }
    }
    // Partial ends and a switch point anywhere in the segments, from the input's last bytes.
    let tail = rest.len().saturating_sub(3);
    let pick = rest[tail..]
        .iter()
        .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
    let end = pick % (MIB + 1);

    let mut walker = RecordWalker::new(
        config.segment_size,
        config.timeline,
        SegmentNo(1),
        WalMagic::Pg15,
        config.system_id,
    );
    if mode & 2 != 0 {
        let tl2 = TimelineId::new(2).expect("valid timeline");
        let _ = walker.switch_timeline(tl2, Lsn((MIB + end) as u64));
    }
    if mode & 4 != 0 {
        // Wrong lengths are refused, not walked.
        let _ = walker.clone().feed_segment(rest);
        let _ = walker.clone().feed_partial(rest, Lsn((MIB + end) as u64));
    }
    let (first, second) = wal.split_at(MIB);
    if let Ok(summary) = walker.clone().feed_partial(first, Lsn((MIB + end) as u64)) {
        assert!(summary.last_record_end <= Some(Lsn((MIB + end) as u64)));
    }
    if let Ok(summary) = walker.feed_segment(first) {
        assert!(summary.records <= (MIB / 24) as u64);
        let _ = walker.feed_partial(second, Lsn((2 * MIB + end) as u64));
        let _ = walker.feed_segment(second);
        // After a complete segment the walker moved on; after an error it stays stopped.
        assert!(walker.failure().is_some() || walker.next_segment() == SegmentNo(3));
    }
});
