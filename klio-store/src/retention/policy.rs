//! Which backups a cluster's retention policy keeps: pure decisions, no I/O.
//!
//! # The rules
//!
//! A backup is kept when any of these keeps it, and every reason that keeps it is reported:
//!
//! - **Pinned** ([`RetainedBecause::Pinned`]): always, whatever the policy.
//! - **No policy** ([`RetainedBecause::NoPolicy`]): neither `keep_backups` nor `recovery_window`
//!   set: nothing is removed.
//! - **`keep_backups: n`** ([`RetainedBecause::Newest`]): the newest `n` backups that are not
//!   pinned. Pins do not use up the count: pinning an old backup (a legal hold, a release)
//!   never shortens the rolling retention of the others.
//! - **`recovery_window: w`** ([`RetainedBecause::InWindow`], [`RetainedBecause::WindowBase`]): every
//!   backup that ended at or after `now - w`, and the newest one that ended before it (recovery
//!   to the window's oldest points starts from that one). A backup whose end time cannot be
//!   read is kept ([`RetainedBecause::UnknownEndTime`]): a time rule never removes what it cannot
//!   judge.
//! - **The floor** ([`RetainedBecause::Floor`]): the newest `max(min_backups, 1)` backups, pinned
//!   or not, are never removed. Reported only for a backup that nothing else keeps, since that
//!   is where the floor is what keeps it.
//!
//! "Newest" is position in the order the caller gives, [`BackupInfo::order_key`] (end position
//! on the timeline, then completion time), never the id or the name. Times are the backups'
//! `ended_at` (RFC 3339) against the `now` given.
//!
//! Deciding again over the backups kept removes nothing more: every kept backup keeps at least
//! one of its reasons among the kept ones.

use std::time::{Duration, SystemTime};

use klio_proto::klio::{BackupInfo, RetainedBecause};

/// A cluster's retention policy. `keep_backups` and `recovery_window` combine as a union: a
/// backup is kept when either keeps it. Neither set: no policy, nothing is removed.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RetentionPolicy {
    /// Keep the newest this many backups that are not pinned (`>= 1` when set).
    pub keep_backups: Option<u32>,
    /// Keep every backup needed to recover to any point this far back from now.
    pub recovery_window: Option<Duration>,
    /// A floor: the newest this many backups (at least 1) are never removed. The caller's
    /// default is 1.
    pub min_backups: u32,
}

impl RetentionPolicy {
    /// Whether a policy is configured (`keep_backups` or `recovery_window`); without one
    /// nothing is removed.
    pub fn is_set(&self) -> bool {
        self.keep_backups.is_some() || self.recovery_window.is_some()
    }
}

/// What retention does with one backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Kept, for these reasons (never empty; the report's type, so what is decided is what
    /// is reported).
    Keep(Vec<RetainedBecause>),
    /// Removed: no rule keeps it.
    Remove,
}

impl Verdict {
    /// Whether the backup is kept.
    pub fn is_keep(&self) -> bool {
        matches!(self, Self::Keep(_))
    }
}

/// One decision per backup, in the order of `backups` (which the caller gives in
/// [`BackupInfo::order_key`] order, oldest first: by end position, never by id or name).
/// "Newest" means last in that order. Time is [`BackupInfo::ended_at`] (RFC 3339) against
/// `now`. The rules are in the `policy` module's documentation.
pub fn decide(backups: &[BackupInfo], policy: &RetentionPolicy, now: SystemTime) -> Vec<Verdict> {
    let mut reasons: Vec<Vec<RetainedBecause>> = backups
        .iter()
        .map(|b| {
            if b.pinned {
                vec![RetainedBecause::Pinned]
            } else {
                Vec::new()
            }
        })
        .collect();
    if !policy.is_set() {
        for r in &mut reasons {
            r.push(RetainedBecause::NoPolicy);
        }
        return into_verdicts(reasons);
    }

    if let Some(keep) = policy.keep_backups {
        let newest_unpinned = backups
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, b)| !b.pinned)
            .take(keep as usize);
        for (rank, (i, _)) in (1u32..).zip(newest_unpinned) {
            reasons[i].push(RetainedBecause::Newest { rank, keep });
        }
    }

    if let Some(window) = policy.recovery_window {
        // A window reaching back before the epoch covers every time there is.
        let window_start = now.checked_sub(window);
        let mut base: Option<usize> = None;
        for (i, b) in backups.iter().enumerate() {
            match ended_at(b) {
                None => reasons[i].push(RetainedBecause::UnknownEndTime),
                Some(end) if window_start.is_none_or(|start| end >= start) => {
                    reasons[i].push(RetainedBecause::InWindow);
                }
                // Later in the order is newer: the last one seen before the window is its base.
                Some(_) => base = Some(i),
            }
        }
        if let Some(i) = base {
            reasons[i].push(RetainedBecause::WindowBase);
        }
    }

    let floor = policy.min_backups.max(1) as usize;
    for r in reasons.iter_mut().rev().take(floor) {
        if r.is_empty() {
            r.push(RetainedBecause::Floor {
                min_backups: policy.min_backups,
            });
        }
    }
    into_verdicts(reasons)
}

/// When the backup ended, if its `ended_at` is an RFC 3339 time.
fn ended_at(b: &BackupInfo) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(&b.ended_at).ok()
}

fn into_verdicts(reasons: Vec<Vec<RetainedBecause>>) -> Vec<Verdict> {
    reasons
        .into_iter()
        .map(|r| {
            if r.is_empty() {
                Verdict::Remove
            } else {
                Verdict::Keep(r)
            }
        })
        .collect()
}
