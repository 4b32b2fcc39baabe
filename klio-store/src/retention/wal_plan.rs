//! Which WAL a cluster's retained backups still need: a plan per timeline, by LSN and
//! timeline through the timeline histories, never by file-name order.
//!
//! # The rules
//!
//! Completed segments only: journals (segments in progress) and partial segments are never
//! removed. With no retained backup (or no policy; the caller passes `None`), nothing is
//! removed. Otherwise segment `S` of timeline `T` is kept when:
//!
//! - some retained backup `b`, starting at `(Tb, Lb)`, **reaches** `T` and
//!   `S >= segment_of(max(Lb, begin(T)))` ([`WalKeptBecause::Backup`]). `b` reaches `T` when
//!   `T == Tb`, or when `T`'s history has an entry with parent `Tb` and a switch point at or
//!   after `Lb`: `T` descends from `Tb` through a fork at or after the backup's start, so a
//!   recovery from `b` may follow it. `begin(T)` is the switch point of the last entry of `T`'s
//!   history (0 for timeline 1). A timeline's history lists its whole ancestry, so this also
//!   covers forks of forks.
//! - `T` is the newest timeline (the highest with WAL, or the highest with a history file) and
//!   `S >= segment_of(min Lb)` over the retained backups ([`WalKeptBecause::NewestTimeline`]):
//!   the live timeline is never cut above the oldest retained start, whatever the histories
//!   say.
//! - `T > 1` has no readable history file ([`WalKeptBecause::UnknownHistory`]): its ancestry is
//!   unknown, so nothing of it is removed.
//!
//! Every other completed segment is removed. Since each rule keeps everything from some
//! segment up, what is kept on a timeline is everything from [`TimelinePlan::keep_from`] up.
//!
//! `T`'s history file is removed only when no retained backup reaches `T`, `T` is not the
//! newest timeline, no segment or partial of `T` remains after the plan, and the file can be
//! read (a damaged one is left for the operator to look at).

use std::collections::BTreeSet;

use klio_proto::klio::WalKeptBecause;
use klio_wal::{Lsn, SegmentNo, SegmentSize, TimelineId, WalPosition, parse_history};

use crate::wal_archive::{ArchiveListing, SegmentRange, WalArchiveError, WalArchiveReader};

/// What retention does with one cluster's WAL archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalPlan {
    /// One per timeline with WAL or a history file, ascending.
    pub timelines: Vec<TimelinePlan>,
}

/// What retention does with one timeline's WAL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelinePlan {
    /// The timeline.
    pub timeline: TimelineId,
    /// Completed segments to remove, as runs (ascending).
    pub remove: Vec<SegmentRange>,
    /// The first segment kept on this timeline (None: none kept / no completed segments).
    pub keep_from: Option<SegmentNo>,
    /// Why the kept part is kept: the rules that keep at least one of its completed segments
    /// (empty when none is kept, and when no backup is retained, so that nothing is removed).
    pub kept_because: Vec<WalKeptBecause>,
    /// Whether its history file is removed.
    pub remove_history: bool,
}

/// What is known of a timeline's ancestry.
enum Ancestry {
    /// Timeline 1: no ancestors, begins at 0.
    First,
    /// The entries of its history file: (parent, switch point), oldest first.
    Known(Vec<(TimelineId, Lsn)>),
    /// A timeline > 1 whose history file is missing or cannot be read.
    Unknown,
}

impl Ancestry {
    /// `history` gives a timeline's history file, or `None` when it is missing or cannot be
    /// read.
    fn of(history: &dyn Fn(TimelineId) -> Option<Vec<u8>>, timeline: TimelineId) -> Self {
        if timeline == TimelineId::FIRST {
            return Self::First;
        }
        // A history that cannot be read or parsed is as good as missing: nothing of the
        // timeline is removed, which is what a missing one means too.
        match history(timeline) {
            Some(content) => match parse_history(&content) {
                Ok(entries) => Self::Known(
                    entries
                        .into_iter()
                        .map(|e| (e.parent, e.switchpoint))
                        .collect(),
                ),
                Err(_) => Self::Unknown,
            },
            None => Self::Unknown,
        }
    }

    /// The first LSN of the timeline: the switch point of its last history entry.
    fn begin(&self) -> Lsn {
        match self {
            Self::Known(entries) => entries.last().map_or(Lsn(0), |&(_, at)| at),
            Self::First | Self::Unknown => Lsn(0),
        }
    }

    /// Whether a recovery from a backup starting at `start` can follow `timeline` (whose
    /// ancestry this is): it is the backup's timeline, or it forked from it at or after the
    /// start.
    fn reached_from(&self, timeline: TimelineId, start: WalPosition) -> bool {
        timeline == start.timeline
            || matches!(self, Self::Known(entries)
                if entries.iter().any(|&(parent, at)| parent == start.timeline && at >= start.lsn))
    }
}

/// The plan for the archive's listing, given the retained backups (id, start position). No
/// retained backup (or no policy; the caller passes `None`): nothing is removed. See the
/// `wal_plan` module's documentation for the rules.
pub fn plan_wal(
    archive: &WalArchiveReader,
    retained: Option<&[(String, WalPosition)]>,
) -> Result<WalPlan, WalArchiveError> {
    let listing = archive.list()?;
    let size = archive.identity().segment_size;
    Ok(plan_listing(
        &listing,
        size,
        &|timeline| archive.history(timeline).ok().flatten(),
        retained,
    ))
}

/// [`plan_wal`] for any store of WAL files (Tier 2's objects, say): its listing, its segment
/// size, and `history`, which gives a timeline's history file or `None` when it is missing or
/// cannot be read.
pub fn plan_listing(
    listing: &ArchiveListing,
    size: SegmentSize,
    history: &dyn Fn(TimelineId) -> Option<Vec<u8>>,
    retained: Option<&[(String, WalPosition)]>,
) -> WalPlan {
    let timelines: BTreeSet<TimelineId> = listing
        .timelines
        .iter()
        .map(|t| t.timeline)
        .chain(listing.histories.iter().copied())
        .collect();
    let retained = retained.filter(|r| !r.is_empty());
    let Some(retained) = retained else {
        return WalPlan {
            timelines: timelines
                .iter()
                .map(|&timeline| TimelinePlan {
                    timeline,
                    remove: Vec::new(),
                    keep_from: completed(listing, timeline).first().map(|r| r.first),
                    kept_because: Vec::new(),
                    remove_history: false,
                })
                .collect(),
        };
    };
    let newest: BTreeSet<TimelineId> = [
        listing.timelines.last().map(|t| t.timeline),
        listing.histories.last().copied(),
    ]
    .into_iter()
    .flatten()
    .collect();
    let oldest_start = retained.iter().map(|(_, p)| p.lsn).min().unwrap_or(Lsn(0));

    let mut plans = Vec::new();
    for &timeline in &timelines {
        let ancestry = Ancestry::of(history, timeline);
        // Each rule that applies, with the first segment it keeps.
        let mut rules: Vec<(WalKeptBecause, SegmentNo)> = Vec::new();
        let mut reached = false;
        for (id, start) in retained {
            if ancestry.reached_from(timeline, *start) {
                reached = true;
                let from = size.segment_of(start.lsn.max(ancestry.begin()));
                rules.push((WalKeptBecause::Backup { id: id.clone() }, from));
            }
        }
        let is_newest = newest.contains(&timeline);
        if is_newest {
            rules.push((
                WalKeptBecause::NewestTimeline,
                size.segment_of(oldest_start),
            ));
        }
        if matches!(ancestry, Ancestry::Unknown) {
            rules.push((WalKeptBecause::UnknownHistory, SegmentNo(0)));
        }

        let segments = completed(listing, timeline);
        let threshold = rules.iter().map(|&(_, from)| from).min();
        let (remove, kept) = split_at(segments, threshold);
        let last_kept = kept.last().map(|r| r.last);
        let kept_because = rules
            .into_iter()
            .filter(|&(_, from)| last_kept.is_some_and(|last| from <= last))
            .map(|(reason, _)| reason)
            .collect();
        let has_partials = listing
            .timelines
            .iter()
            .any(|t| t.timeline == timeline && !t.partials.is_empty());
        plans.push(TimelinePlan {
            timeline,
            remove,
            keep_from: kept.first().map(|r| r.first),
            kept_because,
            // A history file that cannot be read is left for the operator to look at.
            remove_history: listing.histories.contains(&timeline)
                && !matches!(ancestry, Ancestry::Unknown)
                && !reached
                && !is_newest
                && kept.is_empty()
                && !has_partials,
        });
    }
    WalPlan { timelines: plans }
}

/// The completed segments of `timeline` in the listing, as runs, ascending.
fn completed(listing: &ArchiveListing, timeline: TimelineId) -> &[SegmentRange] {
    listing
        .timelines
        .iter()
        .find(|t| t.timeline == timeline)
        .map_or(&[], |t| t.segments.as_slice())
}

/// The runs split into those below `keep_from` (removed) and the rest (kept); `None`: all
/// removed.
fn split_at(
    runs: &[SegmentRange],
    keep_from: Option<SegmentNo>,
) -> (Vec<SegmentRange>, Vec<SegmentRange>) {
    let mut remove = Vec::new();
    let mut keep = Vec::new();
    for &r in runs {
        match keep_from {
            Some(k) if r.first >= k => keep.push(r),
            Some(k) if r.last >= k => {
                remove.push(SegmentRange {
                    first: r.first,
                    last: SegmentNo(k.0 - 1),
                });
                keep.push(SegmentRange {
                    first: k,
                    last: r.last,
                });
            }
            _ => remove.push(r),
        }
    }
    (remove, keep)
}
