//! The index against the directory it indexes: after every change the writer and the pruner
//! make, what the index answers equals what a fresh listing of the directory answers.

use klio_crypto::Compression;
use klio_wal::{Lsn, SegmentNo, TimelineId};

use super::tests::{Format, SEG, append_wal, ident, opts, ring, seg, size, tl};
use super::*;
use crate::retention::{TimelinePlan, WalPlan};

const FORMATS: [Format; 2] = [Format::Plain, Format::Encrypted];

/// A writer of `format` that tells `indexes`.
fn indexed_writer(format: Format, dir: &Path, indexes: &ArchiveIndexes) -> WalArchive {
    let options = match format {
        Format::Plain => StorageOptions {
            indexes: Some(indexes.clone()),
            ..StorageOptions::default()
        },
        Format::Encrypted => StorageOptions {
            indexes: Some(indexes.clone()),
            ..opts(ring(1), Compression::Lz4)
        },
    };
    WalArchive::open_with(dir, ident(), options).unwrap()
}

fn indexes_for(format: Format) -> ArchiveIndexes {
    match format {
        Format::Plain => ArchiveIndexes::new(None),
        Format::Encrypted => ArchiveIndexes::new(Some(ring(1))),
    }
}

/// The index answers what a reader that lists the directory now answers.
fn assert_index_matches_disk(format: Format, index: &ArchiveIndex, when: &str) {
    let fresh = format.open_reader(index.path()).unwrap();
    assert_eq!(index.listing().unwrap(), fresh.list().unwrap(), "{when}");
    assert_eq!(index.durable().unwrap(), fresh.durable(), "{when}");
    assert_eq!(index.summary().unwrap(), fresh.summary().unwrap(), "{when}");
    for t in 1..=3 {
        assert_eq!(
            index.durable_on(tl(t)).unwrap(),
            fresh.durable_on(tl(t)),
            "{when}: timeline {t}"
        );
    }
}

#[test]
fn the_index_follows_the_writer_segment_by_segment_and_across_timelines() {
    for format in FORMATS {
        let d = tempfile::tempdir().unwrap();
        let indexes = indexes_for(format);
        let mut a = indexed_writer(format, d.path(), &indexes);
        let index = indexes.of(d.path());
        a.begin(tl(1), Lsn(SEG)).unwrap();
        append_wal(&mut a, tl(1), SEG, (SEG / 2) as usize, 100_000);
        a.sync().unwrap();
        a.finish_completed().unwrap();
        // Built now, from a listing: a journal in progress.
        assert_index_matches_disk(format, &index, "one journal");
        // Segments complete and a new journal starts, told by the writer only.
        append_wal(&mut a, tl(1), SEG + SEG / 2, (3 * SEG) as usize, 300_000);
        a.sync().unwrap();
        a.finish_completed().unwrap();
        assert_index_matches_disk(format, &index, "three segments and a journal");
        // A gap: streaming resumes two segments further on.
        let resume = 6 * SEG;
        a.begin(tl(1), Lsn(resume)).unwrap();
        append_wal(&mut a, tl(1), resume, (SEG + 10) as usize, 500_000);
        a.sync().unwrap();
        a.finish_completed().unwrap();
        assert_index_matches_disk(format, &index, "after a gap");
        // A timeline switch with its history file.
        a.store_history(tl(2), b"1\t0/6100000\tno recovery target specified\n")
            .unwrap();
        a.begin(tl(2), Lsn(8 * SEG)).unwrap();
        append_wal(&mut a, tl(2), 8 * SEG, (SEG + 7) as usize, 200_000);
        a.sync().unwrap();
        a.finish_completed().unwrap();
        assert_index_matches_disk(format, &index, "on timeline 2");
    }
}

#[test]
fn a_pruned_segment_and_history_leave_the_index() {
    for format in FORMATS {
        let d = tempfile::tempdir().unwrap();
        let indexes = indexes_for(format);
        let mut a = indexed_writer(format, d.path(), &indexes);
        let index = indexes.of(d.path());
        a.store_history(tl(2), b"1\t0/100000\tno recovery target specified\n")
            .unwrap();
        a.begin(tl(1), Lsn(SEG)).unwrap();
        append_wal(&mut a, tl(1), SEG, (5 * SEG + 100) as usize, 400_000);
        a.sync().unwrap();
        a.finish_completed().unwrap();
        assert_index_matches_disk(format, &index, "before the prune");
        let plan = WalPlan {
            timelines: vec![
                TimelinePlan {
                    timeline: tl(1),
                    remove: vec![SegmentRange {
                        first: SegmentNo(1),
                        last: SegmentNo(2),
                    }],
                    keep_from: Some(SegmentNo(3)),
                    kept_because: Vec::new(),
                    remove_history: false,
                },
                TimelinePlan {
                    timeline: tl(2),
                    remove: Vec::new(),
                    keep_from: None,
                    kept_because: Vec::new(),
                    remove_history: true,
                },
            ],
        };
        let pruner = WalPruner::open(d.path()).unwrap().with_index(index.clone());
        let pruned = pruner.apply(&plan, size()).unwrap();
        assert_eq!(pruned.segments(), 2);
        assert_index_matches_disk(format, &index, "after the prune");
        assert_eq!(
            index.read_file(&seg(tl(1), 1)).unwrap(),
            None,
            "a pruned segment is gone"
        );
    }
}

#[test]
fn a_file_the_index_does_not_know_is_still_found_before_not_found_is_answered() {
    for format in FORMATS {
        let d = tempfile::tempdir().unwrap();
        let indexes = indexes_for(format);
        {
            let mut a = format.open(d.path()).unwrap();
            a.begin(tl(1), Lsn(SEG)).unwrap();
            append_wal(&mut a, tl(1), SEG, SEG as usize, 500_000);
            a.sync().unwrap();
            a.finish_completed().unwrap();
        }
        let index = indexes.of(d.path());
        assert_eq!(
            index.durable().unwrap(),
            Some(WalPosition::new(tl(1), Lsn(2 * SEG)))
        );
        // Written by a writer that does not tell this index: it is behind.
        let mut a = format.open(d.path()).unwrap();
        a.begin(tl(1), Lsn(2 * SEG)).unwrap();
        append_wal(&mut a, tl(1), 2 * SEG, (SEG + 5) as usize, 500_000);
        a.sync().unwrap();
        a.finish_completed().unwrap();
        let complete = index.read_file(&seg(tl(1), 2)).unwrap().unwrap();
        assert!(!complete.partial);
        assert_eq!(
            complete.content,
            a.read_file(&seg(tl(1), 2)).unwrap().unwrap().content
        );
        let partial = index.read_file(&seg(tl(1), 3)).unwrap().unwrap();
        assert!(partial.partial);
        assert_eq!(partial.valid_len, 5);
        assert_eq!(index.read_file(&seg(tl(1), 4)).unwrap(), None);
    }
}

#[test]
fn a_directory_that_is_not_an_archive_yet_is_said_so_and_indexed_once_it_is() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("wal");
    let indexes = ArchiveIndexes::new(None);
    let index = indexes.of(&dir);
    assert!(matches!(
        index.durable(),
        Err(WalArchiveError::NotAnArchive { .. })
    ));
    let mut a = indexed_writer(Format::Plain, &dir, &indexes);
    a.begin(TimelineId::FIRST, Lsn(SEG)).unwrap();
    append_wal(&mut a, tl(1), SEG, 1000, 1000);
    a.sync().unwrap();
    a.finish_completed().unwrap();
    assert_index_matches_disk(Format::Plain, &index, "once created");
}

#[test]
fn runs_merge_split_and_answer_membership() {
    let mut r = index::Runs::default();
    for s in [5, 7, 6, 1, 2, 10] {
        assert!(r.insert(s));
    }
    assert!(!r.insert(6));
    assert_eq!(
        r.0.iter().map(|(&f, &l)| (f, l)).collect::<Vec<_>>(),
        [(1, 2), (5, 7), (10, 10)]
    );
    assert!(r.remove(6));
    assert!(!r.remove(6));
    assert!(!r.contains(6) && r.contains(5) && r.contains(7) && !r.contains(8));
    assert_eq!(r.last(), Some(10));
    assert!(r.remove(10) && r.remove(1) && r.remove(2) && r.remove(5) && r.remove(7));
    assert!(r.is_empty());
}
