use super::*;
use crate::page::{LONG_HEADER_LEN, SHORT_HEADER_LEN};

const MIB: u64 = 1024 * 1024;

fn one_mib(segments: u64) -> SynthConfig {
    SynthConfig {
        segments,
        ..SynthConfig::new(SegmentSize::new(MIB).unwrap())
    }
}

#[test]
fn config_validation() {
    assert_eq!(SynthConfig::default().validate(), Ok(()));
    assert_eq!(SynthConfig::default().start, Lsn(0x100_0000));

    let c = SynthConfig {
        start: Lsn(0x100_2000),
        ..SynthConfig::default()
    };
    assert!(matches!(
        SyntheticWal::new(c),
        Err(SynthConfigError::UnalignedStart { .. })
    ));
    let c = SynthConfig {
        segments: u64::MAX,
        ..SynthConfig::default()
    };
    assert!(matches!(
        c.validate(),
        Err(SynthConfigError::TooManySegments { .. })
    ));
    let c = SynthConfig {
        payload_min: 10,
        payload_max: 9,
        ..SynthConfig::default()
    };
    assert_eq!(
        c.validate(),
        Err(SynthConfigError::EmptyPayloadRange { min: 10, max: 9 })
    );
    let c = SynthConfig {
        payload_max: u32::MAX,
        ..SynthConfig::default()
    };
    assert!(matches!(
        c.validate(),
        Err(SynthConfigError::PayloadTooLarge { .. })
    ));
    for bad in [-0.1, 1.5, f64::NAN] {
        let c = SynthConfig {
            random_fraction: bad,
            ..SynthConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(SynthConfigError::RandomFraction(_))
        ));
    }
    let msg = SynthConfigError::UnalignedStart {
        start: Lsn(0x100_2000),
        segment_size: SegmentSize::DEFAULT,
    }
    .to_string();
    assert!(msg.contains("0/1002000") && msg.contains("16MB"), "{msg}");
}

#[test]
fn yields_the_configured_segments_with_names() {
    let mut wal = SyntheticWal::new(SynthConfig {
        timeline: TimelineId::new(3).unwrap(),
        ..one_mib(3)
    })
    .unwrap();
    assert_eq!(wal.size_hint(), (3, Some(3)));
    let segs: Vec<_> = wal.by_ref().collect();
    assert_eq!(segs.len(), 3);
    assert!(wal.next_segment().is_none());
    let names: Vec<_> = segs.iter().map(|s| s.file_name.as_str()).collect();
    assert_eq!(
        names,
        [
            "000000030000000000000001",
            "000000030000000000000002",
            "000000030000000000000003"
        ]
    );
    for (i, s) in segs.iter().enumerate() {
        assert_eq!(s.data.len() as u64, MIB);
        assert_eq!(s.start, Lsn(MIB * (i as u64 + 1)));
    }
    assert_eq!(wal.stats().segments, 3);
}

#[test]
fn same_config_same_bytes_other_seed_other_bytes() {
    let a: Vec<_> = SyntheticWal::new(one_mib(2)).unwrap().collect();
    let b: Vec<_> = SyntheticWal::new(one_mib(2)).unwrap().collect();
    assert_eq!(a, b);
    let c: Vec<_> = SyntheticWal::new(SynthConfig {
        seed: 2,
        ..one_mib(2)
    })
    .unwrap()
    .collect();
    assert_ne!(a[0].data, c[0].data);
}

#[test]
fn first_page_layout() {
    let seg = SyntheticWal::new(one_mib(1))
        .unwrap()
        .next_segment()
        .unwrap();
    let h = PageHeader::parse(&seg.data).unwrap();
    assert_eq!(h.magic, WalMagic::Pg15);
    assert_eq!(h.info, crate::page::XLP_LONG_HEADER | XLP_BKP_REMOVABLE);
    assert_eq!(h.rem_len, 0);
    assert_eq!(
        h.long,
        Some(LongPageHeader {
            system_id: 7_400_000_000_000_000_001,
            seg_size: 1 << 20,
            block_size: 8192
        })
    );
    // The first record follows the long header and links to nothing.
    let rec = &seg.data[LONG_HEADER_LEN..];
    let tot = u32::from_le_bytes([rec[0], rec[1], rec[2], rec[3]]) as usize;
    assert!(tot >= record::RECORD_HEADER_LEN);
    assert_eq!(&rec[8..16], &[0; 8]);
    assert_eq!(rec[16], record::XLOG_NOOP);
    assert_eq!(rec[17], record::RM_XLOG_ID);
    assert_eq!(record::record_crc(&rec[..tot]).to_le_bytes(), rec[20..24]);
}

#[test]
fn records_cross_pages_and_segments() {
    let mut wal = SyntheticWal::new(SynthConfig {
        payload_min: 0,
        payload_max: 20_000,
        ..one_mib(3)
    })
    .unwrap();
    let segs: Vec<_> = wal.by_ref().collect();
    let stats = wal.stats();
    assert!(stats.records_completed + 1 >= stats.records_started);
    // Some segment after the first starts inside a record.
    assert!(segs[1..].iter().any(|s| {
        let h = PageHeader::parse(&s.data).unwrap();
        h.is_contrecord() && h.rem_len > 0
    }));
    // Some short page does too.
    let short_cont = segs[0].data.chunks(BLOCK).skip(1).any(|p| {
        let h = PageHeader::parse(&p[..SHORT_HEADER_LEN]).unwrap();
        h.is_contrecord()
    });
    assert!(short_cont);
}

#[test]
fn record_headers_split_across_pages() {
    // PostgreSQL lets a record start in the last bytes of a page, its header continuing on the
    // next one (only xl_tot_len must be on the first page, which MAXALIGN guarantees).
    let mut wal = SyntheticWal::new(SynthConfig {
        payload_min: 0,
        payload_max: 64,
        ..one_mib(1)
    })
    .unwrap();
    wal.next_segment().unwrap();
    assert!(wal.stats().split_headers > 10, "{:?}", wal.stats());
}

#[test]
fn records_larger_than_a_segment() {
    let mut wal = SyntheticWal::new(SynthConfig {
        payload_min: 1_500_000,
        payload_max: 2_500_000,
        ..one_mib(4)
    })
    .unwrap();
    let segs: Vec<_> = wal.by_ref().collect();
    // Segment 2 is continuation data from its first byte to its last page.
    let h = PageHeader::parse(&segs[1].data).unwrap();
    assert!(h.is_contrecord());
    assert!(u64::from(h.rem_len) > MIB);
    assert!(wal.stats().records_completed >= 1);
}

#[test]
fn random_fraction_controls_the_payload() {
    let text_bytes = |frac: f64| {
        let mut wal = SyntheticWal::new(SynthConfig {
            random_fraction: frac,
            payload_min: 1000,
            payload_max: 1000,
            ..one_mib(1)
        })
        .unwrap();
        let seg = wal.next_segment().unwrap();
        // Count 16-byte windows of the page area that appear verbatim in the text.
        let mut hits = 0usize;
        let mut windows = 0usize;
        for w in seg.data.chunks(16).filter(|w| w.len() == 16) {
            windows += 1;
            let doubled = [TEXT, TEXT].concat();
            if doubled.windows(16).any(|t| t == w) {
                hits += 1;
            }
        }
        hits as f64 / windows as f64
    };
    let all_text = text_bytes(0.0);
    let half = text_bytes(0.5);
    let all_random = text_bytes(1.0);
    assert!(all_text > 0.9, "{all_text}");
    assert!(half > 0.3 && half < 0.6, "{half}");
    assert!(all_random < 0.01, "{all_random}");
}

#[test]
fn empty_payloads_make_bare_records() {
    let mut wal = SyntheticWal::new(SynthConfig {
        payload_min: 0,
        payload_max: 0,
        ..one_mib(1)
    })
    .unwrap();
    let seg = wal.next_segment().unwrap();
    let stats = wal.stats();
    assert_eq!(stats.payload_bytes, 0);
    // 24-byte records fill each page exactly: 1016 on the first, 1021 on the others.
    let first = (BLOCK - LONG_HEADER_LEN) / 24;
    let rest = (BLOCK - SHORT_HEADER_LEN) / 24;
    assert!(stats.records_completed >= (first + 127 * rest) as u64);
    assert_eq!(PageHeader::parse(&seg.data).unwrap().rem_len, 0);
}

#[test]
fn write_to_dir_writes_named_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = SyntheticWal::new(one_mib(2)).unwrap();
    let paths = wal.write_to_dir(dir.path()).unwrap();
    assert_eq!(paths.len(), 2);
    assert_eq!(
        paths[1].file_name().unwrap().to_str().unwrap(),
        "000000010000000000000002"
    );
    assert_eq!(fs::metadata(&paths[0]).unwrap().len(), MIB);
    let err = SyntheticWal::new(one_mib(1))
        .unwrap()
        .write_to_dir(&dir.path().join("missing"))
        .unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}
