//! The policy's decisions: examples, then properties over random backups and policies.

use std::time::{Duration, SystemTime};

use klio_proto::klio::{BackupInfo, BackupStatus, CATALOG_SCHEMA};
use klio_wal::{Lsn, TimelineId, WalPosition};
use proptest::prelude::*;

use klio_proto::klio::RetainedBecause;

use super::policy::{RetentionPolicy, Verdict, decide};

const DAY: u64 = 86_400;

/// "Now" in these tests: 2026-12-01T12:00:00Z.
fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_126_400)
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Backup `id` ending at LSN `end`, `age` before [`now`].
fn backup(id: &str, end: u64, age: Duration) -> BackupInfo {
    let ended = rfc3339(now() - age);
    BackupInfo {
        schema: CATALOG_SCHEMA,
        id: id.to_owned(),
        cluster: "pg-main".to_owned(),
        label: "test".to_owned(),
        status: BackupStatus::Complete,
        start: WalPosition::new(TimelineId::FIRST, Lsn(end - 0x100)).into(),
        end: WalPosition::new(TimelineId::FIRST, Lsn(end)).into(),
        started_at: ended.clone(),
        ended_at: ended.clone(),
        completed_at: ended,
        postgres_version: 150010,
        system_identifier: "7400000000000000001".to_owned(),
        block_size: 65536,
        tablespaces: Vec::new(),
        files: 0,
        blocks: 0,
        logical_bytes: 0,
        referenced_stored_bytes: 0,
        new_stored_bytes: 0,
        pinned: false,
        capture: klio_proto::klio::CaptureMethod::Stream,
    }
}

/// Backups `b0` (oldest) to `b{n-1}`, one a day, the newest ending an hour ago.
fn daily(n: usize) -> Vec<BackupInfo> {
    (0..n)
        .map(|i| {
            let age = Duration::from_secs(3600 + (n - 1 - i) as u64 * DAY);
            backup(&format!("b{i}"), 0x100_0000 * (i as u64 + 1), age)
        })
        .collect()
}

fn kept(verdicts: &[Verdict]) -> Vec<usize> {
    (0..verdicts.len())
        .filter(|&i| verdicts[i].is_keep())
        .collect()
}

fn reasons(v: &Verdict) -> &[RetainedBecause] {
    match v {
        Verdict::Keep(r) => r,
        Verdict::Remove => &[],
    }
}

fn keep(n: u32) -> RetentionPolicy {
    RetentionPolicy {
        keep_backups: Some(n),
        recovery_window: None,
        min_backups: 1,
    }
}

fn window(days: u64) -> RetentionPolicy {
    RetentionPolicy {
        keep_backups: None,
        recovery_window: Some(Duration::from_secs(days * DAY)),
        min_backups: 1,
    }
}

#[test]
fn without_a_policy_nothing_is_removed() {
    let backups = daily(4);
    let policy = RetentionPolicy {
        min_backups: 1,
        ..RetentionPolicy::default()
    };
    assert!(!policy.is_set());
    let v = decide(&backups, &policy, now());
    assert_eq!(v, vec![Verdict::Keep(vec![RetainedBecause::NoPolicy]); 4]);
}

#[test]
fn keep_backups_keeps_the_newest_by_position_not_by_id() {
    // Ids that sort the other way round from their positions.
    let mut backups = daily(4);
    for (b, id) in backups.iter_mut().zip(["z", "y", "x", "w"]) {
        b.id = id.to_owned();
    }
    let v = decide(&backups, &keep(2), now());
    assert_eq!(
        v,
        [
            Verdict::Remove,
            Verdict::Remove,
            Verdict::Keep(vec![RetainedBecause::Newest { rank: 2, keep: 2 }]),
            Verdict::Keep(vec![RetainedBecause::Newest { rank: 1, keep: 2 }]),
        ]
    );
}

#[test]
fn pinned_backups_are_kept_and_do_not_use_up_keep_backups() {
    let mut backups = daily(5);
    backups[0].pinned = true;
    backups[4].pinned = true;
    let v = decide(&backups, &keep(2), now());
    assert_eq!(kept(&v), [0, 2, 3, 4]);
    assert_eq!(reasons(&v[0]), [RetainedBecause::Pinned]);
    assert_eq!(reasons(&v[4]), [RetainedBecause::Pinned]);
    assert_eq!(
        reasons(&v[3]),
        [RetainedBecause::Newest { rank: 1, keep: 2 }]
    );
    // Listed with its other reasons: a pinned backup among the kept ones says both.
    let v = decide(&backups, &window(30), now());
    assert_eq!(
        reasons(&v[4]),
        [RetainedBecause::Pinned, RetainedBecause::InWindow]
    );
}

#[test]
fn the_window_keeps_what_ended_inside_it_and_the_newest_before_it() {
    // Ages 4d+1h, 3d+1h, 2d+1h, 1d+1h, 1h; a window of 2 days.
    let backups = daily(5);
    let v = decide(&backups, &window(2), now());
    assert_eq!(
        v,
        [
            Verdict::Remove,
            Verdict::Remove,
            Verdict::Keep(vec![RetainedBecause::WindowBase]),
            Verdict::Keep(vec![RetainedBecause::InWindow]),
            Verdict::Keep(vec![RetainedBecause::InWindow]),
        ]
    );
}

#[test]
fn keep_backups_and_the_window_combine_as_a_union() {
    let backups = daily(6);
    let policy = RetentionPolicy {
        keep_backups: Some(4),
        recovery_window: Some(Duration::from_secs(DAY)),
        min_backups: 1,
    };
    let v = decide(&backups, &policy, now());
    assert_eq!(kept(&v), [2, 3, 4, 5]);
    assert_eq!(
        reasons(&v[4]),
        [
            RetainedBecause::Newest { rank: 2, keep: 4 },
            RetainedBecause::WindowBase
        ]
    );
    let policy = RetentionPolicy {
        keep_backups: Some(1),
        recovery_window: Some(Duration::from_secs(3 * DAY)),
        min_backups: 1,
    };
    assert_eq!(kept(&decide(&backups, &policy, now())), [2, 3, 4, 5]);
}

#[test]
fn min_backups_holds_when_every_backup_is_older_than_the_window() {
    let backups: Vec<BackupInfo> = (0..4)
        .map(|i| {
            backup(
                &format!("b{i}"),
                0x100_0000 * (i + 1),
                Duration::from_secs((40 - i) * DAY),
            )
        })
        .collect();
    let policy = RetentionPolicy {
        min_backups: 3,
        ..window(7)
    };
    let v = decide(&backups, &policy, now());
    assert_eq!(
        v,
        [
            Verdict::Remove,
            Verdict::Keep(vec![RetainedBecause::Floor { min_backups: 3 }]),
            Verdict::Keep(vec![RetainedBecause::Floor { min_backups: 3 }]),
            Verdict::Keep(vec![RetainedBecause::WindowBase]),
        ]
    );
    // A floor of 0 still keeps the newest backup.
    let policy = RetentionPolicy {
        keep_backups: Some(0),
        recovery_window: None,
        min_backups: 0,
    };
    assert_eq!(kept(&decide(&backups, &policy, now())), [3]);
}

#[test]
fn an_unreadable_end_time_is_never_removed_by_the_window() {
    let mut backups = daily(4);
    backups[0].ended_at = "yesterday-ish".to_owned();
    let v = decide(&backups, &window(1), now());
    assert_eq!(reasons(&v[0]), [RetainedBecause::UnknownEndTime]);
    assert_eq!(kept(&v), [0, 2, 3]);
    // keep_backups does not look at times.
    assert_eq!(kept(&decide(&backups, &keep(1), now())), [3]);
}

#[test]
fn a_window_reaching_before_the_epoch_keeps_everything() {
    let backups = daily(3);
    let v = decide(&backups, &window(u64::MAX / DAY), now());
    assert!(v.iter().all(|v| reasons(v) == [RetainedBecause::InWindow]));
}

#[test]
fn no_backups_no_verdicts() {
    assert!(decide(&[], &keep(2), now()).is_empty());
}

/// Random backups, oldest first by position, with random end times (not necessarily in
/// order: client clocks), some pinned, some with unreadable times.
fn backups_strategy() -> impl Strategy<Value = Vec<BackupInfo>> {
    prop::collection::vec(
        (any::<bool>(), 0u64..20 * DAY, prop::bool::weighted(0.05)),
        0..12,
    )
    .prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(i, (pinned, age, unreadable))| {
                let mut b = backup(
                    &format!("b{i}"),
                    0x100_0000 * (i as u64 + 1),
                    Duration::from_secs(age),
                );
                b.pinned = pinned;
                if unreadable {
                    b.ended_at = "not a time".to_owned();
                }
                b
            })
            .collect()
    })
}

fn policy_strategy() -> impl Strategy<Value = RetentionPolicy> {
    (
        prop::option::of(1u32..6),
        prop::option::of(0u64..15 * DAY),
        0u32..4,
    )
        .prop_map(|(keep_backups, window, min_backups)| RetentionPolicy {
            keep_backups,
            recovery_window: window.map(Duration::from_secs),
            min_backups,
        })
}

fn ended(b: &BackupInfo) -> Option<SystemTime> {
    humantime::parse_rfc3339(&b.ended_at).ok()
}

proptest! {
    #[test]
    fn pinned_backups_are_never_removed(
        backups in backups_strategy(),
        policy in policy_strategy(),
    ) {
        let v = decide(&backups, &policy, now());
        prop_assert_eq!(v.len(), backups.len());
        for (b, v) in backups.iter().zip(&v) {
            if b.pinned {
                prop_assert!(reasons(v).contains(&RetainedBecause::Pinned));
            }
        }
    }

    #[test]
    fn the_newest_min_backups_are_never_removed(
        backups in backups_strategy(),
        policy in policy_strategy(),
    ) {
        let v = decide(&backups, &policy, now());
        let floor = policy.min_backups.max(1) as usize;
        for v in v.iter().rev().take(floor) {
            prop_assert!(v.is_keep());
        }
    }

    #[test]
    fn keep_backups_alone_keeps_exactly_the_newest_unpinned(
        backups in backups_strategy(),
        n in 1u32..6,
    ) {
        let policy = RetentionPolicy { keep_backups: Some(n), recovery_window: None, min_backups: 1 };
        let v = decide(&backups, &policy, now());
        let unpinned: Vec<usize> = (0..backups.len()).filter(|&i| !backups[i].pinned).collect();
        let newest: Vec<usize> =
            unpinned.iter().rev().take(n as usize).rev().copied().collect();
        let kept_unpinned: Vec<usize> =
            unpinned.iter().copied().filter(|&i| v[i].is_keep()).collect();
        prop_assert_eq!(kept_unpinned, newest);
    }

    #[test]
    fn every_point_in_the_window_keeps_a_backup_to_recover_from(
        backups in backups_strategy(),
        policy in policy_strategy(),
        into_window in 0.0f64..=1.0,
    ) {
        let Some(window) = policy.recovery_window else { return Ok(()) };
        let v = decide(&backups, &policy, now());
        let point = now() - window.mul_f64(into_window);
        let ended_before = |i: usize| ended(&backups[i]).is_some_and(|e| e <= point);
        if (0..backups.len()).any(ended_before) {
            prop_assert!(
                (0..backups.len()).any(|i| ended_before(i) && v[i].is_keep()),
                "no kept backup ended at or before {:?}", point
            );
        }
    }

    #[test]
    fn deciding_again_over_the_kept_removes_nothing_more(
        backups in backups_strategy(),
        policy in policy_strategy(),
    ) {
        let v = decide(&backups, &policy, now());
        let kept: Vec<BackupInfo> = backups
            .iter()
            .zip(&v)
            .filter(|(_, v)| v.is_keep())
            .map(|(b, _)| b.clone())
            .collect();
        let again = decide(&kept, &policy, now());
        prop_assert!(again.iter().all(Verdict::is_keep), "{:?}", again);
    }
}
