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

/// Writes one segment and a half through a directory compressing with `method`, closing it
/// with the half still open.
fn write_compressed(method: Compression) -> (tempfile::TempDir, Vec<u8>) {
    let tmp = tempfile::tempdir().unwrap();
    let size = SegmentSize::new(MB).unwrap();
    let mut dir = SegmentDir::open(tmp.path(), size)
        .unwrap()
        .with_compression(method);
    // Compressible but not constant, like WAL.
    let data: Vec<u8> = (0..MB + MB / 2)
        .map(|i| (i % 251) as u8 ^ (i / 4096) as u8)
        .collect();
    let (first, rest) = data.split_at(100_000);
    assert!(dir.write(tli(1), Lsn(MB), first).unwrap().is_empty());
    assert_eq!(dir.flush().unwrap(), Some(Lsn(MB + 100_000)));
    let done = dir.write(tli(1), Lsn(MB + 100_000), rest).unwrap();
    assert_eq!(done.len(), 1, "the first segment completed");
    dir.close().unwrap();
    dir.write_history(tli(2), b"1\t0/2000000\tno recovery target specified\n")
        .unwrap();
    (tmp, data)
}

#[test]
fn compressed_segments_are_named_and_framed_as_pg_receivewal_writes_them() {
    let half = (MB / 2) as usize;
    for (method, suffix) in [
        (Compression::Gzip { level: 6 }, ".gz"),
        (Compression::Lz4, ".lz4"),
    ] {
        let (tmp, data) = write_compressed(method);
        let complete = format!("000000010000000000000001{suffix}");
        let partial = format!("000000010000000000000002{suffix}.partial");
        let history = format!("00000002.history{suffix}");
        assert_eq!(
            names(tmp.path()),
            [complete.clone(), partial.clone(), history.clone()],
            "{method:?}"
        );
        let read = |name: &str| decompress_file(&tmp.path().join(name), method).unwrap();
        assert_eq!(read(&complete), data[..MB as usize], "{method:?}");
        // The closed .partial is a whole stream of what was received, not padded.
        assert_eq!(read(&partial), data[MB as usize..], "{method:?}");
        assert_eq!(read(&partial).len(), half);
        assert!(read(&history).starts_with(b"1\t0/2000000"));
        let on_disk = std::fs::metadata(tmp.path().join(&complete)).unwrap().len();
        assert!(on_disk < MB / 2, "{method:?} compressed to {on_disk} bytes");

        // A later run resumes at the start of the partial segment. Until its stream holds as
        // much as the old .partial, the old one stays, whole; then the new one replaces it.
        let size = SegmentSize::new(MB).unwrap();
        let (start, warnings) = find_streaming_start(tmp.path(), size).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(start.unwrap().lsn, Lsn(2 * MB));
        let old = read(&partial);
        let new: Vec<u8> = (0..half + 5).map(|i| (i % 7) as u8).collect();
        let reopen = || {
            SegmentDir::open(tmp.path(), size)
                .unwrap()
                .with_compression(method)
        };
        let mut again = reopen();
        again.write(tli(1), Lsn(2 * MB), &new[..10]).unwrap();
        again.flush().unwrap();
        assert!(
            read(&partial) == old,
            "{method:?}: the old .partial stays whole"
        );
        again.close().unwrap();
        assert!(read(&partial) == old, "{method:?}: closed while behind");
        assert_eq!(names(tmp.path()).len(), 3, "no temporary file left");

        let mut again = reopen();
        again.write(tli(1), Lsn(2 * MB), &new[..half - 1]).unwrap();
        again.flush().unwrap();
        assert!(read(&partial) == old, "{method:?}: one byte short");
        let at = Lsn(2 * MB + half as u64 - 1);
        again.write(tli(1), at, &new[half - 1..half + 5]).unwrap();
        again.flush().unwrap();
        let (open, _) = decompress_prefix(&tmp.path().join(&partial), method).unwrap();
        assert!(open == new[..half + 5], "{method:?}: caught up, replaced");
        again.close().unwrap();
        assert!(read(&partial) == new[..half + 5], "{method:?}: closed");
        assert_eq!(names(tmp.path()).len(), 3, "no temporary file left");
        assert!(again.has_history(tli(2)));
    }
}

#[test]
fn a_compressed_segment_of_the_wrong_size_is_skipped_with_pg_receivewals_warning() {
    let size = SegmentSize::new(MB).unwrap();
    for (method, suffix) in [
        (Compression::Gzip { level: 1 }, ".gz"),
        (Compression::Lz4, ".lz4"),
    ] {
        let (tmp, _) = write_compressed(method);
        // A complete-looking file holding half a segment, named as the newest one.
        let short = tmp.path().join(format!("000000010000000000000003{suffix}"));
        std::fs::rename(
            tmp.path()
                .join(format!("000000010000000000000002{suffix}.partial")),
            &short,
        )
        .unwrap();
        let (start, warnings) = find_streaming_start(tmp.path(), size).unwrap();
        assert_eq!(
            warnings,
            [format!(
                "compressed segment file \"000000010000000000000003{suffix}\" has incorrect uncompressed size {}, skipping",
                MB / 2
            )]
        );
        assert_eq!(
            start.unwrap().lsn,
            Lsn(2 * MB),
            "{method:?}: after the complete one"
        );
    }
}

#[test]
fn without_fsync_a_compressed_flush_still_puts_the_bytes_in_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dir = SegmentDir::open(tmp.path(), SegmentSize::new(MB).unwrap())
        .unwrap()
        .with_fsync(Fsync::Never)
        .with_compression(Compression::Gzip { level: 6 });
    dir.write(tli(1), Lsn(MB), &[5u8; 5000]).unwrap();
    assert_eq!(dir.flush().unwrap(), Some(Lsn(MB + 5000)));
    // Without closing: a reader of the file (after a crash of this process) gets every byte
    // reported flushed from the stream so far.
    let path = tmp.path().join("000000010000000000000001.gz.partial");
    let (out, cut) = decompress_prefix(&path, Compression::Gzip { level: 6 }).unwrap();
    assert!(out == [5u8; 5000]);
    assert!(cut.is_some(), "the stream has no end yet");
}
