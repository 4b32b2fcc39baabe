//! The pruner on real archives, plain and encrypted: what it removes, what it never touches,
//! and that the archive stays verifiable and writable.

use klio_wal::{Lsn, SegmentNo, SegmentSize, SynthConfig, SyntheticWal, TimelineId, WalPosition};

use super::tests::{Format, SEG, append_wal, ident, names, size, tl};
use super::*;
use crate::retention::{TimelinePlan, WalPlan, plan_wal};

const FORMATS: [Format; 2] = [Format::Plain, Format::Encrypted];

/// `n` segments of synthetic WAL that verifies record by record, from segment 1.
fn synthetic(n: u64) -> Vec<Vec<u8>> {
    let mut config = SynthConfig::new(size());
    config.system_id = ident().system_id;
    config.segments = n;
    let mut wal = SyntheticWal::new(config).unwrap();
    std::iter::from_fn(|| wal.next_segment().map(|s| s.data)).collect()
}

/// Appends synthetic `segments[range]` (segment `i` at LSN `(i + 1) * SEG`), then syncs.
fn append_segments(a: &mut WalArchive, segments: &[Vec<u8>], range: std::ops::Range<usize>) {
    for i in range {
        let start = (i as u64 + 1) * SEG;
        for (k, piece) in segments[i].chunks(200_000).enumerate() {
            a.append(Lsn(start + (k * 200_000) as u64), piece).unwrap();
        }
    }
    a.sync().unwrap();
}

fn at(timeline: u32, lsn: u64) -> WalPosition {
    WalPosition::new(tl(timeline), Lsn(lsn))
}

/// The plan for one retained backup starting at `start`.
fn plan_for(a: &WalArchiveReader, start: WalPosition) -> WalPlan {
    plan_wal(a, Some(&[("b".to_owned(), start)])).unwrap()
}

#[test]
fn after_a_prune_the_archive_verifies_from_its_new_oldest_segment() {
    for format in FORMATS {
        let d = tempfile::tempdir().unwrap();
        let segments = synthetic(6);
        let mut a = format.open(d.path()).unwrap();
        a.begin(tl(1), Lsn(SEG)).unwrap();
        append_segments(&mut a, &segments, 0..6);
        let full = a.verify(None).unwrap();
        assert!(full.is_ok());

        let plan = plan_for(&a, at(1, 4 * SEG + 0x28));
        let pruner = WalPruner::open(d.path()).unwrap();
        let sizes: Vec<u64> = (1..=3)
            .map(|s| {
                pruner
                    .segment_bytes(tl(1), SegmentNo(s), size())
                    .unwrap()
                    .unwrap()
            })
            .collect();
        let measured = pruner.measure(&plan, size()).unwrap();
        let before = names(d.path());
        assert_eq!(names(d.path()), before, "measuring removes nothing");
        let pruned = pruner.apply(&plan, size()).unwrap();
        assert_eq!(
            pruned, measured,
            "{format:?}: measure equals what apply removes"
        );
        assert_eq!(
            pruned.timelines,
            [PrunedTimeline {
                timeline: tl(1),
                first: Some(WalFileName::Segment {
                    timeline: tl(1),
                    segno: SegmentNo(1)
                }),
                last: Some(WalFileName::Segment {
                    timeline: tl(1),
                    segno: SegmentNo(3)
                }),
                segments: 3,
                bytes: sizes.iter().sum(),
                history_removed: false,
            }]
        );
        for s in 1..=3 {
            assert!(!d.path().join(format.segment_file(tl(1), s)).exists());
            assert_eq!(
                pruner.segment_bytes(tl(1), SegmentNo(s), size()).unwrap(),
                None
            );
        }
        drop(a);

        let r = format.open_reader(d.path()).unwrap();
        let report = r.verify(None).unwrap();
        assert!(report.is_ok(), "{format:?}: {:?}", report.problems);
        assert_eq!(report.segments_walked, 3);
        let (start, end) = report.recoverable.unwrap();
        assert_eq!(Some(end), full.recoverable.map(|(_, end)| end));
        assert!((4 * SEG..5 * SEG).contains(&start.lsn.0), "{start:?}");
        let summary = r.summary().unwrap();
        assert_eq!(summary.oldest, Some(at(1, 4 * SEG)));
        assert_eq!(summary.gaps, 0);
        assert_eq!(summary.segments, 3);
        // Pruning the same plan again finds nothing left to remove.
        let again = pruner.apply(&plan, size()).unwrap();
        assert_eq!(again.segments(), 0);
        assert_eq!(again.bytes(), 0);
    }
}

#[test]
fn a_writer_keeps_streaming_and_syncing_while_a_prune_runs() {
    for format in FORMATS {
        let d = tempfile::tempdir().unwrap();
        let segments = synthetic(8);
        let mut a = format.open(d.path()).unwrap();
        a.begin(tl(1), Lsn(SEG)).unwrap();
        append_segments(&mut a, &segments, 0..4);
        // Half of the fifth segment: a journal in progress during the prune.
        let half = &segments[4][..(SEG / 2) as usize];
        a.append(Lsn(5 * SEG), half).unwrap();
        assert_eq!(a.sync().unwrap(), Some(Lsn(5 * SEG + SEG / 2)));

        let plan = plan_for(&a, at(1, 3 * SEG + 0x28));
        let pruned = WalPruner::open(d.path())
            .unwrap()
            .apply(&plan, size())
            .unwrap();
        assert_eq!(pruned.segments(), 2);

        a.append(Lsn(5 * SEG + SEG / 2), &segments[4][(SEG / 2) as usize..])
            .unwrap();
        append_segments(&mut a, &segments, 5..8);
        assert_eq!(a.durable(), Some(at(1, 9 * SEG)));
        drop(a);

        let a = format.open(d.path()).unwrap();
        assert_eq!(a.durable(), Some(at(1, 9 * SEG)));
        let listing = a.list().unwrap();
        assert_eq!(
            listing.timelines[0].segments,
            [SegmentRange {
                first: SegmentNo(3),
                last: SegmentNo(8)
            }]
        );
        let report = a.verify(None).unwrap();
        assert!(report.is_ok(), "{format:?}: {:?}", report.problems);
        assert_eq!(report.segments_walked, 6);
    }
}

#[test]
fn history_files_go_with_the_last_wal_of_their_timeline() {
    for format in FORMATS {
        let d = tempfile::tempdir().unwrap();
        let mut a = format.open(d.path()).unwrap();
        // 1 -> 2 at 0/300000 -> 3 at 0/600000, each ending where the next begins.
        for (t, from, to) in [
            (1, SEG, 3 * SEG),
            (2, 3 * SEG, 6 * SEG),
            (3, 6 * SEG, 8 * SEG),
        ] {
            a.begin(tl(t), Lsn(from)).unwrap();
            append_wal(&mut a, tl(t), from, (to - from) as usize, 100_000);
            a.sync().unwrap();
            a.finish_completed().unwrap();
        }
        a.store_history(tl(2), b"1\t0/300000\tno recovery target specified\n")
            .unwrap();
        a.store_history(
            tl(3),
            b"1\t0/300000\tno recovery target specified\n2\t0/600000\tno recovery target specified\n",
        )
        .unwrap();
        let plan = plan_for(&a, at(3, 7 * SEG + 0x28));
        let pruner = WalPruner::open(d.path()).unwrap();
        let t2_bytes: u64 = (3..=5)
            .map(|s| {
                pruner
                    .segment_bytes(tl(2), SegmentNo(s), size())
                    .unwrap()
                    .unwrap()
            })
            .sum();
        let measured = pruner.measure(&plan, size()).unwrap();
        let pruned = pruner.apply(&plan, size()).unwrap();
        assert_eq!(pruned, measured);
        // The bytes are the segments' as stored; the history file is not counted.
        assert_eq!(pruned.timelines[1].bytes, t2_bytes);
        let by_timeline: Vec<(TimelineId, u64, bool)> = pruned
            .timelines
            .iter()
            .map(|t| (t.timeline, t.segments, t.history_removed))
            .collect();
        assert_eq!(
            by_timeline,
            [(tl(1), 2, false), (tl(2), 3, true), (tl(3), 1, false)]
        );
        assert_eq!(a.history(tl(2)).unwrap(), None);
        assert!(a.history(tl(3)).unwrap().is_some());
        assert_eq!(a.list().unwrap().histories, [tl(3)]);
        // What is left is a whole archive the writer still extends.
        a.append(Lsn(8 * SEG), &[7; 100]).unwrap();
        assert_eq!(a.sync().unwrap(), Some(Lsn(8 * SEG + 100)));
        a.finish_completed().unwrap();
        let names = names(d.path());
        assert!(
            names
                .iter()
                .all(|n| !n.starts_with("00000001") && !n.starts_with("00000002")),
            "{format:?}: {names:?}"
        );
    }
}

#[test]
fn journals_partials_and_the_identity_are_never_removed() {
    for format in FORMATS {
        let d = tempfile::tempdir().unwrap();
        let mut a = format.open(d.path()).unwrap();
        a.begin(tl(1), Lsn(SEG)).unwrap();
        append_wal(&mut a, tl(1), SEG, (2 * SEG + 100) as usize, 100_000);
        a.sync().unwrap();
        // The finisher renames completed segments in the background: let it be done, so
        // that the listing below changes only if the pruner removes something.
        a.finish_completed().unwrap();
        let before = names(d.path());
        // A plan (not one plan_wal makes) naming the partial segment 3 and beyond.
        let plan = WalPlan {
            timelines: vec![TimelinePlan {
                timeline: tl(1),
                remove: vec![SegmentRange {
                    first: SegmentNo(3),
                    last: SegmentNo(9),
                }],
                keep_from: None,
                kept_because: Vec::new(),
                remove_history: true,
            }],
        };
        let pruned = WalPruner::open(d.path())
            .unwrap()
            .apply(&plan, size())
            .unwrap();
        assert_eq!(pruned.segments(), 0);
        assert_eq!(names(d.path()), before);
        assert_eq!(a.durable(), Some(at(1, 3 * SEG + 100)));
    }
}

#[test]
fn a_pruner_needs_an_archive_and_its_segment_size() {
    let d = tempfile::tempdir().unwrap();
    assert!(matches!(
        WalPruner::open(d.path()),
        Err(WalArchiveError::NotAnArchive { .. })
    ));
    Format::Plain.open(d.path()).unwrap();
    let pruner = WalPruner::open(d.path()).unwrap();
    let other = SegmentSize::new(SEG * 2).unwrap();
    assert!(matches!(
        pruner.segment_bytes(tl(1), SegmentNo(1), other),
        Err(WalArchiveError::SegmentSizeMismatch { .. })
    ));
}
