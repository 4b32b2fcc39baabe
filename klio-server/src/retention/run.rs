//! One retention run of one cluster (see the [module documentation](super)): blocking work,
//! run on a thread of its own.

use std::time::SystemTime;

use klio_proto::klio::{
    BackupInfo, BackupVerdict, BlockReport, DiskReport, RETENTION_REPORT_SCHEMA, RecoverablePoint,
    ReportPolicy, RetainedBecause, RetentionReport, WalKeptBecause, WalTimelineReport,
};
use klio_store::backup::{self, BackupId, BackupStoreError, ReclaimSummary, SweepStep};
use klio_store::retention::{self, RetentionPolicy, Verdict, WalPlan};
use klio_store::wal_archive::{
    ArchiveListing, SegmentRange, WalArchiveError, WalArchiveReader, WalPruner,
};
use klio_wal::{ByteSize, SegmentNo, WalFileName};

use super::config::{ClusterPolicy, RetentionConfig};
use super::disk::DiskSpace;
use super::pause::pause_point;
use crate::session::BackupEnv;
use crate::tier2::frontier::{Frontier, FrontierError, frontier_path};

/// A retention run failed; what it removed before the failure stays removed (every step is
/// durable on its own), and the next run goes on from there.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum RetentionError {
    /// The backup store could not be read or changed.
    #[error("retention of cluster {cluster} could not read or change its backups")]
    Backups {
        /// The cluster.
        cluster: String,
        /// What failed.
        #[source]
        source: BackupStoreError,
    },
    /// Tier 2 is configured and the relay's frontier cannot be read: nothing is removed on a
    /// guess of what Tier 2 holds.
    #[error("retention of cluster {cluster} cannot tell what Tier 2 holds, so it removes nothing")]
    Tier2Frontier {
        /// The cluster.
        cluster: String,
        /// What failed.
        #[source]
        source: FrontierError,
    },
    /// The WAL archive could not be read or pruned.
    #[error("retention of cluster {cluster} could not read or prune its WAL archive")]
    Wal {
        /// The cluster.
        cluster: String,
        /// What failed.
        #[source]
        source: WalArchiveError,
    },
}

impl RetentionError {
    /// The store's error, for the error code sent to a client.
    pub(crate) fn backup_store_error(&self) -> Option<&BackupStoreError> {
        match self {
            Self::Backups { source, .. } => Some(source),
            Self::Wal { .. } | Self::Tier2Frontier { .. } => None,
        }
    }
}

/// Runs retention for the cluster of `env` (waiting for a run of it in progress to end first);
/// `dry_run`: reports what would go and removes nothing.
pub(crate) fn run(
    env: &BackupEnv,
    settings: &RetentionConfig,
    dry_run: bool,
) -> Result<RetentionReport, RetentionError> {
    env.backups.with_retention_lock(&env.cluster, || {
        let tier2 = if env.retention.clamped_to_tier2() {
            // Read under the retention lock, after which the relay only adds to it: what it
            // records as up stays up.
            let cluster_dir = env.wal_dir.parent().unwrap_or(&env.wal_dir);
            Some(
                Frontier::load(&frontier_path(cluster_dir)).map_err(|source| {
                    RetentionError::Tier2Frontier {
                        cluster: env.cluster.to_string(),
                        source,
                    }
                })?,
            )
        } else {
            None
        };
        Run {
            env,
            settings,
            dry_run,
            tier2,
        }
        .go()
    })
}

struct Run<'a> {
    env: &'a BackupEnv,
    settings: &'a RetentionConfig,
    dry_run: bool,
    /// With Tier 2: what the relay has uploaded; nothing else leaves Tier 1.
    tier2: Option<Frontier>,
}

impl Run<'_> {
    fn backups_err(&self) -> impl Fn(BackupStoreError) -> RetentionError + '_ {
        |source| RetentionError::Backups {
            cluster: self.env.cluster.to_string(),
            source,
        }
    }

    fn wal_err(&self) -> impl Fn(WalArchiveError) -> RetentionError + '_ {
        |source| RetentionError::Wal {
            cluster: self.env.cluster.to_string(),
            source,
        }
    }

    fn go(self) -> Result<RetentionReport, RetentionError> {
        let now = SystemTime::now();
        let cluster_policy = self.settings.policy(&self.env.cluster);
        let policy = store_policy(&cluster_policy);
        let store = &self.env.store;

        // 1. Backups.
        let backups = store.list().map_err(self.backups_err())?;
        let verdicts = if policy.is_set() {
            retention::decide(&backups, &policy, now)
        } else {
            vec![Verdict::Keep(vec![RetainedBecause::NoPolicy]); backups.len()]
        };
        let mut report_backups: Vec<BackupVerdict> = backups
            .iter()
            .zip(&verdicts)
            .map(|(info, verdict)| BackupVerdict {
                id: info.id.clone(),
                ended_at: info.ended_at.clone(),
                end: info.end,
                removed: matches!(verdict, Verdict::Remove),
                kept_because: match verdict {
                    Verdict::Remove => Vec::new(),
                    Verdict::Keep(reasons) => reasons.clone(),
                },
            })
            .collect();
        if let Some(frontier) = &self.tier2 {
            for fate in report_backups.iter_mut().filter(|f| f.removed) {
                if !frontier.backups.contains_key(&fate.id) {
                    fate.removed = false;
                    fate.kept_because = vec![RetainedBecause::NotYetInTier2];
                }
            }
        }
        let mut removed_ids = Vec::new();
        for fate in &mut report_backups {
            if !fate.removed {
                continue;
            }
            let Ok(id) = BackupId::parse(&fate.id) else {
                continue;
            };
            if !self.dry_run {
                let deleted = self
                    .env
                    .backups
                    .with_catalog_lock(&self.env.cluster, || store.delete(&id));
                match deleted {
                    Ok(_) => tracing::info!("retention: backup {id} removed"),
                    // Deleted by hand meanwhile: gone either way.
                    Err(BackupStoreError::NoSuchBackup { .. }) => {}
                    // Pinned since the catalog was listed: it stays, and so does its WAL.
                    Err(BackupStoreError::Pinned { .. }) => {
                        fate.removed = false;
                        fate.kept_because = vec![RetainedBecause::Pinned];
                        continue;
                    }
                    Err(e) => return Err(self.backups_err()(e)),
                }
            }
            removed_ids.push(id);
        }
        // In catalog order, oldest first.
        let kept: Vec<&BackupInfo> = backups
            .iter()
            .zip(&report_backups)
            .filter(|(_, v)| !v.removed)
            .map(|(b, _)| b)
            .collect();

        // 2. WAL.
        let wal = self.prune_wal(policy.is_set(), &kept)?;

        // 3. Blocks.
        let blocks = self.reclaim_blocks(&removed_ids)?;

        // What is left, and the disk.
        let oldest_recoverable = kept.first().map(|b| RecoverablePoint {
            backup: b.id.clone(),
            time: b.ended_at.clone(),
            end: b.end,
        });
        let mut notes = Vec::new();
        let disk = DiskSpace::of(self.env.retention.data_dir()).map(|d| {
            let nearly_full = d.nearly_full(self.settings.disk_warning_percent);
            if nearly_full {
                let note = nearly_full_note(&d, self.settings.disk_warning_percent);
                tracing::warn!("cluster {}: {note}", self.env.cluster);
                notes.push(note);
            }
            DiskReport {
                free_bytes: d.free_bytes,
                total_bytes: d.total_bytes,
                nearly_full,
            }
        });
        if !policy.is_set() {
            notes.push(
                "no retention policy: set retention.keep_backups or retention.recovery_window \
                 in the server's config to remove old backups and WAL"
                    .to_owned(),
            );
        }
        Ok(RetentionReport {
            schema: RETENTION_REPORT_SCHEMA,
            cluster: self.env.cluster.to_string(),
            dry_run: self.dry_run,
            ran_at: humantime::format_rfc3339_seconds(now).to_string(),
            policy: policy.is_set().then(|| ReportPolicy {
                keep_backups: cluster_policy.keep_backups,
                recovery_window: cluster_policy
                    .recovery_window
                    .map(|w| humantime::format_duration(w).to_string()),
                min_backups: cluster_policy.min_backups,
            }),
            backups: report_backups,
            wal,
            blocks,
            oldest_recoverable,
            disk,
            notes,
            tier2: None,
        })
    }

    /// Removes (or measures) the WAL the kept backups do not need; without a policy nothing.
    fn prune_wal(
        &self,
        policy_set: bool,
        kept: &[&BackupInfo],
    ) -> Result<Vec<WalTimelineReport>, RetentionError> {
        let reader = match WalArchiveReader::open_with(&self.env.wal_dir, self.env.keyring.clone())
        {
            Ok(r) => r,
            Err(WalArchiveError::NotAnArchive { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(self.wal_err()(e)),
        };
        let size = reader.identity().segment_size;
        let starts: Vec<(String, klio_wal::WalPosition)> = kept
            .iter()
            .map(|b| (b.id.clone(), b.start.position()))
            .collect();
        let mut plan = retention::plan_wal(&reader, policy_set.then_some(starts.as_slice()))
            .map_err(self.wal_err())?;
        if let Some(frontier) = &self.tier2 {
            let listing = reader.list().map_err(self.wal_err())?;
            clamp_wal_plan(&mut plan, &listing, frontier);
        }
        let pruner = WalPruner::open(&self.env.wal_dir).map_err(self.wal_err())?;
        let pruner = match &self.env.wal_index {
            Some(index) => pruner.with_index(index.clone()),
            None => pruner,
        };
        let pruned = if self.dry_run {
            pruner.measure(&plan, size)
        } else {
            pruner.apply(&plan, size)
        }
        .map_err(self.wal_err())?;
        let mut out = Vec::new();
        for t in &plan.timelines {
            let done = pruned.timelines.iter().find(|p| p.timeline == t.timeline);
            let name = |segno| {
                WalFileName::Segment {
                    timeline: t.timeline,
                    segno,
                }
                .to_string_with(size)
            };
            let report = WalTimelineReport {
                timeline: t.timeline.get(),
                segments_removed: done.map_or(0, |d| d.segments),
                bytes_removed: done.map_or(0, |d| d.bytes),
                first_removed: done.and_then(|d| d.first.map(|n| n.to_string_with(size))),
                last_removed: done.and_then(|d| d.last.map(|n| n.to_string_with(size))),
                kept_from: t.keep_from.map(name),
                kept_because: t.kept_because.clone(),
                history_removed: done.is_some_and(|d| d.history_removed),
            };
            if !self.dry_run {
                log_wal_removed("retention", &report);
            }
            out.push(report);
        }
        Ok(out)
    }

    /// Mark and sweep of the cluster's blocks; in a dry run, `would_remove` counts as gone.
    fn reclaim_blocks(&self, would_remove: &[BackupId]) -> Result<BlockReport, RetentionError> {
        let env = self.env;
        let store = &env.store;
        if !store.dir().is_dir() {
            return Ok(BlockReport::default());
        }
        let index = env
            .backups
            .index(&env.cluster, store)
            .map_err(self.backups_err())?;
        // Before the catalog is listed: a backup published after the listing keeps its claims
        // until the choice below.
        let marking = env.backups.begin_marking(&env.cluster);
        let listed = store.list().map_err(self.backups_err())?;
        let keep: Vec<BackupId> = listed
            .iter()
            .filter_map(|b| BackupId::parse(&b.id).ok())
            .filter(|id| !(self.dry_run && would_remove.contains(id)))
            .collect();
        let live = store.mark(&keep, &index).map_err(self.backups_err())?;
        let grace = self.settings.block_grace;
        let now = SystemTime::now();
        let packs = store.packs_dir();
        // The pack files are examined before the write lock: under it, only memory is touched,
        // so a backup session waiting for the index waits for no disk.
        let mut survey = backup::survey_packs(&index, grace, now, &packs);
        if let Some(frontier) = &self.tier2 {
            // A pack not yet relayed is neither removed nor rewritten: Tier 2 needs its bytes
            // as they are (its index names their offsets).
            survey.leave_alone(|id| !frontier.packs.contains(&id.to_string()));
        }
        if self.dry_run {
            let idx = index.read().unwrap_or_else(|p| p.into_inner());
            let claimed = marking.claimed();
            return Ok(block_report(backup::measure(
                &idx, &live, &claimed, &survey,
            )));
        }
        let condemned = {
            let mut idx = index.write().unwrap_or_else(|p| p.into_inner());
            let claimed = marking.claimed();
            backup::condemn(&mut idx, &live, &claimed, &survey)
        };
        // From here on no session can be told a condemned block is held.
        drop(marking);
        let mut relocate = |pack, moved: &[backup::MovedBlock]| {
            index
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .relocate(pack, moved);
        };
        let summary = backup::sweep(store, condemned, &mut relocate, &mut |step| {
            match step {
                SweepStep::PackRewritten { .. } => pause_point("retention-pack-rewritten"),
                SweepStep::PackRetired { .. } => pause_point("retention-pack-retired"),
                _ => {}
            }
            std::ops::ControlFlow::Continue(())
        })
        .map_err(self.backups_err())?;
        if summary.blocks > 0 {
            tracing::info!(
                "retention: {} blocks reclaimed ({}), {} pack files removed, {} rewritten",
                summary.blocks,
                ByteSize(summary.bytes),
                summary.packs_removed,
                summary.packs_rewritten
            );
        }
        Ok(block_report(summary))
    }
}

/// Keeps in `plan` every completed segment (present on Tier 1) and history file the Tier 2
/// frontier does not record: a timeline's removal stops at its first such segment.
fn clamp_wal_plan(plan: &mut WalPlan, listing: &ArchiveListing, frontier: &Frontier) {
    for t in &mut plan.timelines {
        let on_tier1: Vec<SegmentRange> = listing
            .timelines
            .iter()
            .find(|l| l.timeline == t.timeline)
            .map(|l| l.segments.clone())
            .unwrap_or_default();
        let present = |s: u64| on_tier1.iter().any(|r| (r.first.0..=r.last.0).contains(&s));
        let mut clamped = false;
        let mut kept = Vec::new();
        'runs: for run in &t.remove {
            for s in run.first.0..=run.last.0 {
                if present(s) && !frontier.has_segment(t.timeline, SegmentNo(s)) {
                    if s > run.first.0 {
                        kept.push(SegmentRange {
                            first: run.first,
                            last: SegmentNo(s - 1),
                        });
                    }
                    t.keep_from = Some(t.keep_from.map_or(SegmentNo(s), |k| k.min(SegmentNo(s))));
                    clamped = true;
                    break 'runs;
                }
            }
            kept.push(*run);
        }
        t.remove = kept;
        if t.remove_history && !frontier.histories.contains(&t.timeline.get()) {
            t.remove_history = false;
            clamped = true;
        }
        if clamped && !t.kept_because.contains(&WalKeptBecause::NotYetInTier2) {
            t.kept_because.push(WalKeptBecause::NotYetInTier2);
        }
    }
}

/// Logs what a run removed of one timeline's WAL, if anything; `who` starts the line.
pub(crate) fn log_wal_removed(who: &str, report: &WalTimelineReport) {
    if report.segments_removed > 0 {
        tracing::info!(
            "{who}: timeline {} WAL {}..{} removed ({} segments, {})",
            report.timeline,
            report.first_removed.as_deref().unwrap_or("?"),
            report.last_removed.as_deref().unwrap_or("?"),
            report.segments_removed,
            ByteSize(report.bytes_removed)
        );
    }
}

fn store_policy(p: &ClusterPolicy) -> RetentionPolicy {
    RetentionPolicy {
        keep_backups: p.keep_backups,
        recovery_window: p.recovery_window,
        min_backups: p.min_backups,
    }
}

fn block_report(s: ReclaimSummary) -> BlockReport {
    BlockReport {
        blocks: s.blocks,
        bytes: s.bytes,
        packs_removed: s.packs_removed,
        packs_rewritten: s.packs_rewritten,
    }
}

/// The sentence logged and reported for a nearly full disk.
pub(crate) fn nearly_full_note(d: &DiskSpace, warning_percent: u8) -> String {
    format!(
        "the data directory's disk is {}% full ({} free of {}; warning at {warning_percent}%): \
         retention removes only what the policy allows, so add space or shorten \
         retention.keep_backups / recovery_window",
        d.used_percent(),
        ByteSize(d.free_bytes),
        ByteSize(d.total_bytes)
    )
}
