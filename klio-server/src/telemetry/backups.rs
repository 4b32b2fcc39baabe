//! Backups and retention in the telemetry: the catalog surveyed with the archives (how many
//! complete backups, the oldest restore point), the outcome of retention runs, and the data
//! directory's free space.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use klio_metrics::{ClusterKindLabels, ClusterLabel, gauge_value};
use klio_proto::klio::{BackupInfo, RetentionReport};
use klio_store::backup::BackupStore;
use klio_wal::{ByteSize, ErrorChain};

use super::{ClusterTelemetry, Telemetry, lock, rfc3339, unix_seconds};
use crate::retention::DiskSpace;
use crate::status::{self, ClusterStatus, DiskStatus, OldestRecoverable, StatusPoint};

/// A cluster's catalog, as surveyed.
#[derive(Clone, Debug)]
pub(super) struct BackupSurvey {
    /// Complete backups.
    pub(super) count: u64,
    /// The oldest one (by end position).
    pub(super) oldest: Option<BackupInfo>,
}

/// The catalog of every cluster with a backup store under `clusters_dir`.
pub(super) fn survey_backups(
    clusters_dir: &Path,
    keyring: Option<&klio_crypto::Keyring>,
) -> BTreeMap<String, Result<BackupSurvey, String>> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(clusters_dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let dir = entry.path().join("backups");
        if !dir.is_dir() {
            continue;
        }
        let listed = BackupStore::new(&dir, keyring.cloned())
            .list()
            .map(|backups| BackupSurvey {
                count: backups.len() as u64,
                oldest: backups.into_iter().next(),
            })
            .map_err(|e| ErrorChain(&e).to_string());
        out.insert(name, listed);
    }
    out
}

/// `ended_at` as a time, if it reads.
fn ended_at(info: &BackupInfo) -> Option<SystemTime> {
    humantime::parse_rfc3339(&info.ended_at).ok()
}

impl Telemetry {
    /// Sets the catalog and disk gauges from a fresh survey.
    pub(super) fn refresh_backup_gauges(
        &self,
        backups: &BTreeMap<String, Result<BackupSurvey, String>>,
        disk: Option<DiskSpace>,
    ) {
        let m = &self.metrics;
        for (name, survey) in backups {
            let Ok(s) = survey else { continue };
            let label = ClusterLabel {
                cluster: name.clone(),
            };
            m.backups.get_or_create(&label).set(gauge_value(s.count));
            match s.oldest.as_ref().and_then(ended_at) {
                Some(t) => {
                    m.oldest_recoverable
                        .get_or_create(&label)
                        .set(unix_seconds(t));
                }
                None => {
                    m.oldest_recoverable.remove(&label);
                }
            }
        }
        if let Some(d) = disk {
            m.disk_free.set(gauge_value(d.free_bytes));
            m.disk_size.set(gauge_value(d.total_bytes));
            m.disk_nearly_full
                .set(i64::from(d.nearly_full(self.disk_warning_percent)));
        }
    }

    /// The disk as `/status` shows it.
    pub(super) fn disk_status(&self, disk: Option<DiskSpace>) -> Option<DiskStatus> {
        disk.map(|d| DiskStatus {
            free_bytes: d.free_bytes,
            total_bytes: d.total_bytes,
            used_percent: d.used_percent(),
            warning_percent: self.disk_warning_percent,
            nearly_full: d.nearly_full(self.disk_warning_percent),
        })
    }
}

/// Fills the catalog fields of a cluster's status.
pub(super) fn fill_backup_status(
    c: &mut ClusterStatus,
    survey: Option<&Result<BackupSurvey, String>>,
) {
    match survey {
        None => {}
        Some(Err(e)) => c.backups_error = Some(e.clone()),
        Some(Ok(s)) => {
            c.backups = Some(s.count);
            c.oldest_recoverable = s.oldest.as_ref().map(|b| OldestRecoverable {
                backup: b.id.clone(),
                time: b.ended_at.clone(),
                point: StatusPoint {
                    timeline: b.end.timeline,
                    lsn: b.end.lsn.to_string(),
                },
            });
        }
    }
}

impl ClusterTelemetry {
    /// A backup offered `offered` block hashes, of which the server held `held`.
    pub(crate) fn blocks_offered(&self, offered: u64, held: u64) {
        let m = self.m();
        m.blocks_offered.get_or_create(self.label()).inc_by(offered);
        m.blocks_held.get_or_create(self.label()).inc_by(held);
    }

    /// A retention run of this cluster ended with `report` (not a dry run).
    pub(crate) fn retention_ran(&self, report: &RetentionReport) {
        let m = self.m();
        let now = SystemTime::now();
        let wal: u64 = report.wal.iter().map(|t| t.bytes_removed).sum();
        let removed = report.backups.iter().filter(|b| b.removed).count() as u64;
        let cluster = self.label().cluster.clone();
        for (kind, bytes) in [("wal", wal), ("blocks", report.blocks.bytes)] {
            m.retention_reclaimed
                .get_or_create(&ClusterKindLabels {
                    cluster: cluster.clone(),
                    kind: kind.to_owned(),
                })
                .inc_by(bytes);
        }
        m.retention_backups_removed
            .get_or_create(self.label())
            .inc_by(removed);
        m.retention_last_run
            .get_or_create(self.label())
            .set(unix_seconds(now));
        m.retention_last_success.get_or_create(self.label()).set(1);
        let message = format!(
            "{removed} backup(s) removed, {} of WAL and {} of blocks reclaimed",
            ByteSize(wal),
            ByteSize(report.blocks.bytes)
        );
        if removed > 0 || wal > 0 || report.blocks.bytes > 0 {
            tracing::info!("retention of cluster {cluster}: {message}");
        }
        lock(&self.state.live).retention = Some(status::RetentionRun {
            at: rfc3339(now),
            ok: true,
            message,
        });
        // The catalog changed: the next page shows it, not a survey from before the run.
        *lock(&self.telemetry.survey) = None;
    }

    /// A retention run of this cluster failed with `message`.
    pub(crate) fn retention_failed(&self, message: &str) {
        let m = self.m();
        let now = SystemTime::now();
        m.retention_last_run
            .get_or_create(self.label())
            .set(unix_seconds(now));
        m.retention_last_success.get_or_create(self.label()).set(0);
        lock(&self.state.live).retention = Some(status::RetentionRun {
            at: rfc3339(now),
            ok: false,
            message: message.to_owned(),
        });
        *lock(&self.telemetry.survey) = None;
    }
}
