use super::*;

fn tli(n: u32) -> TimelineId {
    TimelineId::new(n).unwrap()
}

const MB: u64 = 1 << 20;

fn setup() -> (tempfile::TempDir, SegmentDir) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = SegmentDir::open(tmp.path(), SegmentSize::new(MB).unwrap()).unwrap();
    (tmp, dir)
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn new_segment_is_padded_partial_and_completes_with_rename() {
    let (tmp, mut dir) = setup();
    let data = vec![7u8; 1000];
    assert!(dir.write(tli(1), Lsn(MB), &data).unwrap().is_empty());
    assert_eq!(names(tmp.path()), ["000000010000000000000001.partial"]);
    let p = tmp.path().join("000000010000000000000001.partial");
    let bytes = std::fs::read(&p).unwrap();
    assert_eq!(bytes.len() as u64, MB);
    assert!(bytes[..1000].iter().all(|&b| b == 7));
    assert!(bytes[1000..].iter().all(|&b| b == 0));
    assert_eq!(dir.written(), Some(Lsn(MB + 1000)));
    assert_eq!(dir.flushed(), None, "nothing is durable before flush");
    assert_eq!(dir.flush().unwrap(), Some(Lsn(MB + 1000)));

    // The rest of the segment plus a bit of the next one.
    let rest = vec![9u8; (MB - 1000 + 10) as usize];
    let done = dir.write(tli(1), Lsn(MB + 1000), &rest).unwrap();
    assert_eq!(
        done,
        [WalFileName::Segment {
            timeline: tli(1),
            segno: SegmentNo(1)
        }]
    );
    assert_eq!(dir.flushed(), Some(Lsn(2 * MB)), "completion is durable");
    assert_eq!(
        names(tmp.path()),
        [
            "000000010000000000000001",
            "000000010000000000000002.partial"
        ]
    );
}

#[test]
fn rejects_gaps_and_mid_segment_starts() {
    let (_tmp, mut dir) = setup();
    assert!(matches!(
        dir.write(tli(1), Lsn(10), b"x"),
        Err(SegmentDirError::NoFileOpen(_))
    ));
    dir.write(tli(1), Lsn(0), b"abc").unwrap();
    assert!(matches!(
        dir.write(tli(1), Lsn(4), b"x"),
        Err(SegmentDirError::OutOfOrder { .. })
    ));
    assert!(matches!(
        dir.write(tli(2), Lsn(3), b"x"),
        Err(SegmentDirError::OutOfOrder { .. })
    ));
    // The stream stays usable at the right position.
    dir.write(tli(1), Lsn(3), b"d").unwrap();
    assert_eq!(dir.written(), Some(Lsn(4)));
}

#[test]
fn full_size_partial_is_reopened_without_truncation() {
    let (tmp, mut dir) = setup();
    dir.write(tli(1), Lsn(0), &[5u8; 4096]).unwrap();
    dir.close().unwrap();
    let mut dir = SegmentDir::open(tmp.path(), SegmentSize::new(MB).unwrap()).unwrap();
    let (start, warnings) = dir.find_streaming_start().unwrap();
    assert!(warnings.is_empty());
    assert_eq!(
        start,
        Some(StreamingStart {
            lsn: Lsn(0),
            timeline: tli(1)
        })
    );
    // Rewrite only the first 100 bytes: the rest of what was there must survive.
    dir.write(tli(1), Lsn(0), &[5u8; 100]).unwrap();
    dir.flush().unwrap();
    let bytes = std::fs::read(tmp.path().join("000000010000000000000000.partial")).unwrap();
    assert!(bytes[..4096].iter().all(|&b| b == 5));
}

#[test]
fn short_partial_from_a_crash_during_padding_is_padded_again() {
    let (tmp, mut dir) = setup();
    std::fs::write(
        tmp.path().join("000000010000000000000003.partial"),
        [1u8; 123],
    )
    .unwrap();
    let (start, warnings) = dir.find_streaming_start().unwrap();
    assert_eq!(start, None);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    dir.write(tli(1), Lsn(3 * MB), b"wal").unwrap();
    let bytes = std::fs::read(tmp.path().join("000000010000000000000003.partial")).unwrap();
    assert_eq!(bytes.len() as u64, MB);
    assert_eq!(&bytes[..3], b"wal");
    assert!(bytes[3..].iter().all(|&b| b == 0));
}

#[test]
fn streaming_start_prefers_newest_segment_and_timeline() {
    let (tmp, dir) = setup();
    let full = vec![0u8; MB as usize];
    for name in [
        "000000010000000000000004",
        "000000010000000000000005.partial",
        "000000020000000000000005.partial",
        "00000002.history",
        "garbage",
    ] {
        std::fs::write(tmp.path().join(name), &full).unwrap();
    }
    let (start, _) = dir.find_streaming_start().unwrap();
    assert_eq!(
        start,
        Some(StreamingStart {
            lsn: Lsn(5 * MB),
            timeline: tli(2)
        })
    );
    std::fs::write(tmp.path().join("000000020000000000000005"), &full).unwrap();
    let (start, _) = dir.find_streaming_start().unwrap();
    assert_eq!(
        start,
        Some(StreamingStart {
            lsn: Lsn(6 * MB),
            timeline: tli(2)
        })
    );
}

#[test]
fn history_files_are_written_atomically() {
    let (tmp, dir) = setup();
    assert!(!dir.has_history(tli(2)));
    dir.write_history(tli(2), b"1\t0/3000000\tno recovery target specified\n")
        .unwrap();
    assert!(dir.has_history(tli(2)));
    assert_eq!(names(tmp.path()), ["00000002.history"]);
}
