//! WAL plans over real archives written with [`WalArchive`] in temporary directories.

use std::path::Path;

use klio_wal::{Lsn, SegmentNo, SegmentSize, TimelineId, WalPosition};

use klio_proto::klio::WalKeptBecause;

use super::wal_plan::{TimelinePlan, WalPlan, plan_wal};
use crate::wal_archive::{ClusterIdentity, SegmentRange, WalArchive};

const SEG: u64 = 1 << 20;

fn ident() -> ClusterIdentity {
    ClusterIdentity {
        system_id: 7_400_000_000_000_000_001,
        segment_size: SegmentSize::new(SEG).unwrap(),
    }
}

fn tl(n: u32) -> TimelineId {
    TimelineId::new(n).unwrap()
}

fn at(timeline: u32, lsn: u64) -> WalPosition {
    WalPosition::new(tl(timeline), Lsn(lsn))
}

fn run(first: u64, last: u64) -> SegmentRange {
    SegmentRange {
        first: SegmentNo(first),
        last: SegmentNo(last),
    }
}

/// Streams WAL (its bytes do not matter to a plan) on `timeline` over `[from, to)`, synced.
fn stream(a: &mut WalArchive, timeline: u32, from: u64, to: u64) {
    a.begin(tl(timeline), Lsn(from)).unwrap();
    let chunk = vec![0x5a; 256 << 10];
    let mut at = from;
    while at < to {
        let n = (to - at).min(chunk.len() as u64);
        a.append(Lsn(at), &chunk[..n as usize]).unwrap();
        at += n;
    }
    a.sync().unwrap();
}

/// A history file: one line per (parent, switch point).
fn history(entries: &[(u32, u64)]) -> Vec<u8> {
    entries
        .iter()
        .map(|&(parent, at)| format!("{parent}\t{}\tno recovery target specified\n", Lsn(at)))
        .collect::<String>()
        .into_bytes()
}

/// Timeline 1 over segments 1..=4 and half of 5; timeline 2 forks at 0/500100 and runs over
/// segments 5..=7 and into 8.
fn promoted(dir: &Path) -> WalArchive {
    let mut a = WalArchive::open(dir, ident()).unwrap();
    stream(&mut a, 1, SEG, 5 * SEG + SEG / 2);
    stream(&mut a, 2, 5 * SEG, 8 * SEG + 100);
    a.store_history(tl(2), &history(&[(1, 0x50_0100)])).unwrap();
    a
}

fn plan_of(plan: &WalPlan, timeline: u32) -> &TimelinePlan {
    plan.timelines
        .iter()
        .find(|p| p.timeline == tl(timeline))
        .unwrap_or_else(|| panic!("no plan for timeline {timeline}: {plan:?}"))
}

fn backup(id: &str) -> WalKeptBecause {
    WalKeptBecause::Backup { id: id.to_owned() }
}

#[test]
fn a_backup_before_the_fork_keeps_its_timeline_from_its_start_and_the_new_one_whole() {
    let d = tempfile::tempdir().unwrap();
    let a = promoted(d.path());
    let retained = [
        ("old".to_owned(), at(1, 2 * SEG + 0x28)),
        ("new".to_owned(), at(2, 6 * SEG + 0x28)),
    ];
    let plan = plan_wal(&a, Some(&retained)).unwrap();
    assert_eq!(
        plan,
        WalPlan {
            timelines: vec![
                TimelinePlan {
                    timeline: tl(1),
                    remove: vec![run(1, 1)],
                    keep_from: Some(SegmentNo(2)),
                    kept_because: vec![backup("old")],
                    remove_history: false,
                },
                TimelinePlan {
                    timeline: tl(2),
                    remove: vec![],
                    keep_from: Some(SegmentNo(5)),
                    kept_because: vec![
                        backup("old"),
                        backup("new"),
                        WalKeptBecause::NewestTimeline
                    ],
                    remove_history: false,
                },
            ]
        }
    );
}

#[test]
fn with_only_a_backup_after_the_fork_the_old_timeline_goes_and_the_new_history_stays() {
    let d = tempfile::tempdir().unwrap();
    let a = promoted(d.path());
    let retained = [("new".to_owned(), at(2, 6 * SEG + 0x28))];
    let plan = plan_wal(&a, Some(&retained)).unwrap();
    let t1 = plan_of(&plan, 1);
    assert_eq!(t1.remove, [run(1, 4)]);
    assert_eq!((t1.keep_from, t1.kept_because.as_slice()), (None, &[][..]));
    let t2 = plan_of(&plan, 2);
    assert_eq!(t2.remove, [run(5, 5)]);
    assert_eq!(t2.keep_from, Some(SegmentNo(6)));
    assert_eq!(
        t2.kept_because,
        [backup("new"), WalKeptBecause::NewestTimeline]
    );
    assert!(!t2.remove_history, "the newest timeline's history stays");
}

#[test]
fn an_old_timeline_that_no_backup_reaches_loses_its_segments_and_its_history() {
    // 1 -> 2 at 0/300000 -> 3 at 0/600000, each timeline ending exactly where the next begins.
    let d = tempfile::tempdir().unwrap();
    let mut a = WalArchive::open(d.path(), ident()).unwrap();
    stream(&mut a, 1, SEG, 3 * SEG);
    stream(&mut a, 2, 3 * SEG, 6 * SEG);
    stream(&mut a, 3, 6 * SEG, 9 * SEG + 10);
    a.store_history(tl(2), &history(&[(1, 3 * SEG)])).unwrap();
    a.store_history(tl(3), &history(&[(1, 3 * SEG), (2, 6 * SEG)]))
        .unwrap();
    let retained = [("b".to_owned(), at(3, 7 * SEG + 0x28))];
    let plan = plan_wal(&a, Some(&retained)).unwrap();
    let t1 = plan_of(&plan, 1);
    assert_eq!(
        (t1.remove.as_slice(), t1.keep_from),
        (&[run(1, 2)][..], None)
    );
    let t2 = plan_of(&plan, 2);
    assert_eq!(
        (t2.remove.as_slice(), t2.keep_from),
        (&[run(3, 5)][..], None)
    );
    assert!(t2.remove_history);
    let t3 = plan_of(&plan, 3);
    assert_eq!(t3.remove, [run(6, 6)]);
    assert!(!t3.remove_history);

    // A backup on timeline 1 before the first fork reaches all three through the histories.
    let retained = [("b1".to_owned(), at(1, 2 * SEG + 0x28))];
    let plan = plan_wal(&a, Some(&retained)).unwrap();
    for (t, first) in [(1, 2), (2, 3), (3, 6)] {
        let p = plan_of(&plan, t);
        assert_eq!(p.keep_from, Some(SegmentNo(first)), "timeline {t}");
        assert!(p.kept_because.contains(&backup("b1")), "timeline {t}");
        assert!(!p.remove_history, "timeline {t}");
    }
    assert_eq!(plan_of(&plan, 1).remove, [run(1, 1)]);
}

#[test]
fn a_fork_before_the_backup_start_is_not_on_its_path_but_the_newest_timeline_stays() {
    // Timeline 2 forked at 0/300000; the backup was taken on timeline 1 after that (the old
    // primary kept running).
    let d = tempfile::tempdir().unwrap();
    let mut a = WalArchive::open(d.path(), ident()).unwrap();
    stream(&mut a, 1, SEG, 7 * SEG);
    stream(&mut a, 2, 3 * SEG, 8 * SEG + 10);
    a.store_history(tl(2), &history(&[(1, 3 * SEG + 0x100)]))
        .unwrap();
    let retained = [("late".to_owned(), at(1, 5 * SEG + 0x28))];
    let plan = plan_wal(&a, Some(&retained)).unwrap();
    let t1 = plan_of(&plan, 1);
    assert_eq!(
        (t1.remove.as_slice(), t1.keep_from),
        (&[run(1, 4)][..], Some(SegmentNo(5)))
    );
    assert_eq!(t1.kept_because, [backup("late")]);
    let t2 = plan_of(&plan, 2);
    assert_eq!(t2.remove, [run(3, 4)]);
    assert_eq!(t2.keep_from, Some(SegmentNo(5)));
    assert_eq!(t2.kept_because, [WalKeptBecause::NewestTimeline]);
}

#[test]
fn a_timeline_without_a_history_file_keeps_everything() {
    let d = tempfile::tempdir().unwrap();
    let mut a = WalArchive::open(d.path(), ident()).unwrap();
    stream(&mut a, 1, SEG, 5 * SEG + SEG / 2);
    stream(&mut a, 2, 5 * SEG, 8 * SEG + 100);
    // Timeline 3's history cannot be parsed: as good as missing.
    stream(&mut a, 3, 8 * SEG, 10 * SEG + 100);
    a.store_history(tl(3), b"this is not a history file\n")
        .unwrap();
    let retained = [("b".to_owned(), at(3, 9 * SEG + 0x28))];
    let plan = plan_wal(&a, Some(&retained)).unwrap();
    for t in [2, 3] {
        let p = plan_of(&plan, t);
        assert!(p.remove.is_empty(), "timeline {t}: {p:?}");
        assert!(
            p.kept_because.contains(&WalKeptBecause::UnknownHistory),
            "{p:?}"
        );
        assert!(!p.remove_history);
    }
    assert_eq!(plan_of(&plan, 2).keep_from, Some(SegmentNo(5)));
    // Timeline 1 is no retained backup's timeline and reaches nothing it does not know.
    assert_eq!(plan_of(&plan, 1).remove, [run(1, 4)]);
}

#[test]
fn no_retained_backup_removes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let a = promoted(d.path());
    for retained in [None, Some(&[][..])] {
        let plan = plan_wal(&a, retained).unwrap();
        assert_eq!(plan.timelines.len(), 2);
        for p in &plan.timelines {
            assert!(p.remove.is_empty() && !p.remove_history, "{p:?}");
        }
        assert_eq!(plan_of(&plan, 1).keep_from, Some(SegmentNo(1)));
        assert_eq!(plan_of(&plan, 2).keep_from, Some(SegmentNo(5)));
    }
}

#[test]
fn timelines_are_ordered_by_number_not_by_file_name() {
    // Timeline 10 (file names 0000000A...) is newer than timeline 9.
    let d = tempfile::tempdir().unwrap();
    let mut a = WalArchive::open(d.path(), ident()).unwrap();
    stream(&mut a, 9, SEG, 4 * SEG);
    stream(&mut a, 10, 4 * SEG, 6 * SEG + 10);
    a.store_history(tl(9), &history(&[(8, SEG)])).unwrap();
    a.store_history(tl(10), &history(&[(8, SEG), (9, 4 * SEG)]))
        .unwrap();
    let retained = [("b".to_owned(), at(10, 5 * SEG + 0x28))];
    let plan = plan_wal(&a, Some(&retained)).unwrap();
    assert_eq!(
        plan.timelines
            .iter()
            .map(|p| p.timeline)
            .collect::<Vec<_>>(),
        [tl(9), tl(10)]
    );
    let t10 = plan_of(&plan, 10);
    assert_eq!(
        t10.kept_because,
        [backup("b"), WalKeptBecause::NewestTimeline]
    );
    assert_eq!(t10.remove, [run(4, 4)]);
    let t9 = plan_of(&plan, 9);
    assert_eq!(t9.remove, [run(1, 3)]);
    assert!(t9.remove_history);
}

#[test]
fn a_history_file_that_cannot_be_read_is_never_removed() {
    // Timeline 2 has a damaged history and no WAL left to keep; timeline 3 is newest.
    let d = tempfile::tempdir().unwrap();
    let mut a = WalArchive::open(d.path(), ident()).unwrap();
    stream(&mut a, 1, SEG, 3 * SEG);
    stream(&mut a, 3, 3 * SEG, 5 * SEG + 10);
    a.store_history(tl(2), b"garbage\n").unwrap();
    a.store_history(tl(3), &history(&[(1, 3 * SEG)])).unwrap();
    let retained = [("b".to_owned(), at(3, 4 * SEG + 0x28))];
    let plan = plan_wal(&a, Some(&retained)).unwrap();
    let t2 = plan_of(&plan, 2);
    assert_eq!(t2.kept_because, []);
    assert!(!t2.remove_history, "{t2:?}");
    assert_eq!(plan_of(&plan, 1).remove, [run(1, 2)]);
}
