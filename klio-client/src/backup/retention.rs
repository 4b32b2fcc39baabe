//! `klio retention run`'s report as text: the same lines for a dry run ("would remove") and a
//! real one ("removed"), from the report the server sends
//! ([`klio_proto::klio::RetentionReport`]).

use std::fmt::Write;

use klio_proto::klio::{
    BackupVerdict, ReportPolicy, RetainedBecause, RetentionReport, WalKeptBecause,
    WalTimelineReport,
};
use klio_wal::ByteSize;

/// Why a backup stays, in words.
fn reason_text(r: &RetainedBecause) -> String {
    match r {
        RetainedBecause::Pinned => "pinned".to_owned(),
        RetainedBecause::Newest { rank, keep } => format!("newest {rank} of keep_backups {keep}"),
        RetainedBecause::InWindow => "ended inside the recovery window".to_owned(),
        RetainedBecause::WindowBase => {
            "recovery to the start of the recovery window begins from it".to_owned()
        }
        RetainedBecause::Floor { min_backups } => format!("min_backups {min_backups}"),
        RetainedBecause::NoPolicy => "no retention policy is configured".to_owned(),
        RetainedBecause::UnknownEndTime => "its end time cannot be read".to_owned(),
        RetainedBecause::ObjectLock => "S3 Object Lock still holds it".to_owned(),
        RetainedBecause::NotYetInTier2 => "not yet relayed to Tier 2".to_owned(),
    }
}

fn wal_reason_text(r: &WalKeptBecause) -> String {
    match r {
        WalKeptBecause::Backup { id } => format!("backup {id} needs it"),
        WalKeptBecause::NewestTimeline => {
            "the newest timeline keeps all WAL from the oldest retained backup's start".to_owned()
        }
        WalKeptBecause::UnknownHistory => {
            "no history file, so its ancestry is unknown and nothing goes".to_owned()
        }
        WalKeptBecause::NotYetInTier2 => "not yet relayed to Tier 2".to_owned(),
    }
}

/// The report as lines for a terminal.
pub fn render_report(r: &RetentionReport) -> String {
    let mut out = String::new();
    let (go, gone) = if r.dry_run {
        ("would remove", "would be removed")
    } else {
        ("removed", "removed")
    };
    let _ = writeln!(
        out,
        "Retention of cluster {} at {}{}",
        r.cluster,
        r.ran_at,
        if r.dry_run {
            " (dry run: nothing was removed)"
        } else {
            ""
        }
    );
    match &r.policy {
        None => {
            let _ = writeln!(
                out,
                "policy: none (set retention.keep_backups or retention.recovery_window in the \
                 server's config): no backup and no WAL is removed"
            );
        }
        Some(p) => {
            let _ = writeln!(out, "policy: {}", policy_text(p));
        }
    }
    render_backups(&mut out, &r.backups, go, gone);
    render_wal(&mut out, &r.wal, go, gone);
    let b = &r.blocks;
    let _ = writeln!(
        out,
        "blocks: {go} {} blocks ({}); pack files: {} {gone}, {} rewritten",
        b.blocks,
        ByteSize(b.bytes),
        b.packs_removed,
        b.packs_rewritten
    );
    match &r.oldest_recoverable {
        Some(p) => {
            let _ = writeln!(
                out,
                "oldest recoverable point: {} (end of backup {}, {} on timeline {})",
                p.time, p.backup, p.end.lsn, p.end.timeline
            );
        }
        None => {
            let _ = writeln!(
                out,
                "oldest recoverable point: none (no backup; take one with `klio backup run`)"
            );
        }
    }
    if let Some(d) = &r.disk {
        let _ = writeln!(
            out,
            "disk: {} free of {}{}",
            ByteSize(d.free_bytes),
            ByteSize(d.total_bytes),
            if d.nearly_full { " (nearly full)" } else { "" }
        );
    }
    for note in &r.notes {
        let _ = writeln!(out, "note: {note}");
    }
    if let Some(t) = &r.tier2 {
        let _ = writeln!(out, "Tier 2 (policy: {}):", policy_text(&t.policy));
        render_backups(&mut out, &t.backups, go, gone);
        render_wal(&mut out, &t.wal, go, gone);
        let _ = writeln!(
            out,
            "pack files: {} {gone} ({})",
            t.packs_removed,
            ByteSize(t.pack_bytes_removed)
        );
        if t.locked_objects > 0 {
            let _ = writeln!(
                out,
                "objects under Object Lock: {} (they stay until their retention ends)",
                t.locked_objects
            );
        }
        for note in &t.notes {
            let _ = writeln!(out, "note: {note}");
        }
    }
    out
}

fn policy_text(p: &ReportPolicy) -> String {
    let mut parts = Vec::new();
    if let Some(n) = p.keep_backups {
        parts.push(format!("keep_backups {n}"));
    }
    if let Some(w) = &p.recovery_window {
        parts.push(format!("recovery_window {w}"));
    }
    parts.push(format!("min_backups {}", p.min_backups));
    parts.join(", ")
}

fn render_backups(out: &mut String, backups: &[BackupVerdict], go: &str, gone: &str) {
    let removed = backups.iter().filter(|b| b.removed).count();
    let _ = writeln!(
        out,
        "backups: {} kept, {removed} {gone}",
        backups.len() - removed
    );
    for b in backups {
        let fate = if b.removed {
            go.to_owned()
        } else {
            let reasons: Vec<String> = b.kept_because.iter().map(reason_text).collect();
            format!("kept: {}", reasons.join("; "))
        };
        let _ = writeln!(
            out,
            "  {}  ended {} at {} (timeline {})  {fate}",
            b.id, b.ended_at, b.end.lsn, b.end.timeline
        );
    }
}

fn render_wal(out: &mut String, wal: &[WalTimelineReport], go: &str, gone: &str) {
    let _ = writeln!(out, "WAL:");
    if wal.is_empty() {
        let _ = writeln!(out, "  (no archive)");
    }
    for t in wal {
        let mut line = format!("  timeline {}: ", t.timeline);
        match (&t.first_removed, &t.last_removed) {
            (Some(first), Some(last)) => {
                let _ = write!(
                    line,
                    "{go} {} segments ({}), {first} to {last}",
                    t.segments_removed,
                    ByteSize(t.bytes_removed)
                );
            }
            _ => line.push_str("nothing to remove"),
        }
        if let Some(from) = &t.kept_from {
            let reasons: Vec<String> = t.kept_because.iter().map(wal_reason_text).collect();
            let _ = write!(line, "; kept from {from}");
            if !reasons.is_empty() {
                let _ = write!(line, " ({})", reasons.join("; "));
            }
        }
        if t.history_removed {
            let _ = write!(line, "; history file {gone}");
        }
        let _ = writeln!(out, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use klio_proto::klio::{
        BackupVerdict, BlockReport, CatalogPosition, RETENTION_REPORT_SCHEMA, WalTimelineReport,
    };
    use klio_wal::Lsn;

    use super::*;

    fn report(dry_run: bool) -> RetentionReport {
        RetentionReport {
            schema: RETENTION_REPORT_SCHEMA,
            cluster: "pg-main".to_owned(),
            dry_run,
            ran_at: "2026-12-01T12:00:00Z".to_owned(),
            policy: None,
            backups: vec![
                BackupVerdict {
                    id: "old".to_owned(),
                    ended_at: "2026-11-30T12:00:00Z".to_owned(),
                    end: CatalogPosition {
                        timeline: 1,
                        lsn: Lsn(0x2000138),
                    },
                    removed: true,
                    kept_because: vec![],
                },
                BackupVerdict {
                    id: "new".to_owned(),
                    ended_at: "2026-12-01T12:00:00Z".to_owned(),
                    end: CatalogPosition {
                        timeline: 2,
                        lsn: Lsn(0x5000100),
                    },
                    removed: false,
                    kept_because: vec![RetainedBecause::Pinned],
                },
            ],
            wal: vec![WalTimelineReport {
                timeline: 1,
                segments_removed: 2,
                bytes_removed: 32 << 20,
                first_removed: Some("000000010000000000000001".to_owned()),
                last_removed: Some("000000010000000000000002".to_owned()),
                kept_from: Some("000000010000000000000003".to_owned()),
                kept_because: vec![WalKeptBecause::Backup {
                    id: "new".to_owned(),
                }],
                history_removed: false,
            }],
            blocks: BlockReport::default(),
            oldest_recoverable: None,
            disk: None,
            notes: vec!["the disk is nearly full".to_owned()],
            tier2: None,
        }
    }

    #[test]
    fn a_dry_run_says_would_and_a_real_run_says_removed() {
        let dry = render_report(&report(true));
        assert!(dry.contains("dry run"), "{dry}");
        assert!(
            dry.contains("old  ended 2026-11-30T12:00:00Z at 0/2000138 (timeline 1)  would remove"),
            "{dry}"
        );
        assert!(dry.contains("would remove 2 segments (32.0 MiB), 000000010000000000000001 to 000000010000000000000002; kept from 000000010000000000000003 (backup new needs it)"), "{dry}");
        let real = render_report(&report(false));
        assert!(!real.contains("would"), "{real}");
        assert!(
            real.contains(
                "new  ended 2026-12-01T12:00:00Z at 0/5000100 (timeline 2)  kept: pinned"
            ),
            "{real}"
        );
        assert!(real.contains("policy: none"), "{real}");
        assert!(real.contains("note: the disk is nearly full"), "{real}");
    }
}
