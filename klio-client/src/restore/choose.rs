//! Choosing the backup to restore for a recovery target.
//!
//! Recovery from a backup can stop only after the backup's end (its consistency point), so:
//!
//! - `latest` ([`BackupRef::Latest`]) is the greatest [`BackupInfo::order_key`]; with a target LSN or time, it is the
//!   newest backup that ends before the target;
//! - an explicit backup that ends after a target LSN or time is refused, naming the newest
//!   backup that can reach the target (or saying that none can);
//! - a target transaction id or restore point name cannot be placed before reading the WAL,
//!   so it never steers or refuses the choice.
//!
//! A backup ends before a target LSN when its end LSN is at most the target; before a target
//! time when its `ended_at` (to the second) is earlier than the target.

use std::time::{Duration, SystemTime};

use klio_proto::klio::BackupInfo;

pub use crate::backup::catalog::BackupRef;
use crate::recovery_config::RecoveryTarget;

use super::RestoreError;

/// A recovery target as a point backups can be compared with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TargetPoint {
    Lsn(klio_wal::Lsn),
    Time(SystemTime),
}

impl TargetPoint {
    /// The point of `target`, or `None` when backups cannot be compared with it.
    fn of(target: &RecoveryTarget) -> Result<Option<Self>, RestoreError> {
        Ok(match target {
            RecoveryTarget::Lsn(lsn) => Some(Self::Lsn(*lsn)),
            RecoveryTarget::Time(text) => {
                Some(Self::Time(parse_target_time(text).ok_or_else(|| {
                    RestoreError::UnreadableTargetTime(text.clone())
                })?))
            }
            _ => None,
        })
    }

    /// Whether `backup` ends before this point (so recovery from it can stop here).
    fn is_reachable_from(self, backup: &BackupInfo) -> bool {
        match self {
            Self::Lsn(lsn) => backup.end.lsn <= lsn,
            Self::Time(time) => {
                humantime::parse_rfc3339(&backup.ended_at).is_ok_and(|ended| ended < time)
            }
        }
    }
}

/// Picks the backup to restore from the catalog's `backups` (any order).
pub fn choose_backup<'a>(
    backups: &'a [BackupInfo],
    selector: &BackupRef,
    target: &RecoveryTarget,
) -> Result<&'a BackupInfo, RestoreError> {
    let point = TargetPoint::of(target)?;
    let reachable = |b: &&BackupInfo| point.is_none_or(|p| p.is_reachable_from(b));
    let newest_reachable = backups
        .iter()
        .filter(reachable)
        .max_by(|a, b| a.order_key().cmp(&b.order_key()));
    match selector {
        BackupRef::Latest => newest_reachable.ok_or_else(|| {
            if backups.is_empty() {
                RestoreError::NoBackups
            } else {
                RestoreError::NoBackupReachesTarget {
                    target: describe(target),
                }
            }
        }),
        BackupRef::Id(id) => {
            let backup = backups
                .iter()
                .find(|b| &b.id == id)
                .ok_or_else(|| RestoreError::NoSuchBackup { id: id.clone() })?;
            if reachable(&backup) {
                return Ok(backup);
            }
            Err(RestoreError::BackupEndsAfterTarget {
                backup: backup.id.clone(),
                end: backup.end.lsn,
                ended_at: backup.ended_at.clone(),
                target: describe(target),
                instead: newest_reachable.map(|b| b.id.clone()),
            })
        }
    }
}

/// The target as the user gave it, for messages.
fn describe(target: &RecoveryTarget) -> String {
    match target {
        RecoveryTarget::Lsn(lsn) => format!("LSN {lsn}"),
        RecoveryTarget::Time(t) => format!("time {t}"),
        other => format!("{other:?}"),
    }
}

/// Reads a recovery target time in the forms PostgreSQL accepts that name their offset:
/// `YYYY-MM-DD HH:MM:SS[.frac]` (or with `T`) followed by `Z`, ` UTC`, `+HH`, `+HHMM` or
/// `+HH:MM` (or `-`). A time without an offset is PostgreSQL's server time zone, unknown
/// here: `None`.
pub(super) fn parse_target_time(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    let (local, offset_s) = if let Some(t) = text
        .strip_suffix('Z')
        .or_else(|| text.strip_suffix('z'))
        .or_else(|| text.strip_suffix(" UTC"))
    {
        (t, 0i64)
    } else {
        // The offset's sign comes after the time of day (the date has `-` too).
        let at = text.rfind(['+', '-']).filter(|&i| i > 10)?;
        let (local, offset) = text.split_at(at);
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        let digits: String = offset[1..].chars().filter(|c| *c != ':').collect();
        if !digits.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let (hours, minutes) = match digits.len() {
            2 => (digits.parse::<i64>().ok()?, 0),
            4 => (
                digits[..2].parse::<i64>().ok()?,
                digits[2..].parse::<i64>().ok()?,
            ),
            _ => return None,
        };
        (local, sign * (hours * 3600 + minutes * 60))
    };
    let as_utc = humantime::parse_rfc3339_weak(local.trim()).ok()?;
    let shift = Duration::from_secs(offset_s.unsigned_abs());
    // 10:00+02 is 08:00 UTC.
    if offset_s >= 0 {
        as_utc.checked_sub(shift)
    } else {
        as_utc.checked_add(shift)
    }
}

#[cfg(test)]
mod tests {
    use klio_proto::klio::{BackupStatus, CatalogPosition};
    use klio_wal::Lsn;

    use super::*;

    fn backup(id: &str, end: u64, ended_at: &str) -> BackupInfo {
        BackupInfo {
            schema: 1,
            id: id.to_owned(),
            cluster: "pg-main".to_owned(),
            label: String::new(),
            status: BackupStatus::Complete,
            start: CatalogPosition {
                timeline: 1,
                lsn: Lsn(end - 0x100),
            },
            end: CatalogPosition {
                timeline: 1,
                lsn: Lsn(end),
            },
            started_at: ended_at.to_owned(),
            ended_at: ended_at.to_owned(),
            completed_at: ended_at.to_owned(),
            postgres_version: 150_010,
            system_identifier: "1".to_owned(),
            block_size: 65_536,
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

    fn catalog() -> Vec<BackupInfo> {
        // Listed out of order on purpose: the choice orders by end, never by position or id.
        vec![
            backup("b-second", 0x500_0000, "2026-12-01T11:00:00Z"),
            backup("a-third", 0x900_0000, "2026-12-01T12:00:00Z"),
            backup("c-first", 0x200_0000, "2026-12-01T10:00:00Z"),
        ]
    }

    #[test]
    fn latest_is_the_backup_that_ends_last_not_the_greatest_id() {
        let backups = catalog();
        let chosen = choose_backup(&backups, &BackupRef::Latest, &RecoveryTarget::Latest);
        assert_eq!(chosen.unwrap().id, "a-third");
    }

    #[test]
    fn latest_with_a_target_is_the_newest_backup_ending_before_it() {
        let backups = catalog();
        let by_lsn = RecoveryTarget::Lsn(Lsn(0x600_0000));
        let chosen = choose_backup(&backups, &BackupRef::Latest, &by_lsn).unwrap();
        assert_eq!(chosen.id, "b-second");
        let by_time = RecoveryTarget::Time("2026-12-01 12:30:00+01".to_owned());
        let chosen = choose_backup(&backups, &BackupRef::Latest, &by_time).unwrap();
        assert_eq!(chosen.id, "b-second");
        let at_end = RecoveryTarget::Lsn(Lsn(0x500_0000));
        let chosen = choose_backup(&backups, &BackupRef::Latest, &at_end).unwrap();
        assert_eq!(chosen.id, "b-second");
    }

    #[test]
    fn an_explicit_backup_ending_after_the_target_is_refused_naming_the_one_to_use() {
        let backups = catalog();
        let target = RecoveryTarget::Lsn(Lsn(0x600_0000));
        let err = choose_backup(&backups, &BackupRef::Id("a-third".into()), &target).unwrap_err();
        match &err {
            RestoreError::BackupEndsAfterTarget {
                backup, instead, ..
            } => {
                assert_eq!(backup, "a-third");
                assert_eq!(instead.as_deref(), Some("b-second"));
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("--backup b-second"), "{err}");
    }

    #[test]
    fn a_target_before_every_backup_is_refused_saying_none_can_reach_it() {
        let backups = catalog();
        let target = RecoveryTarget::Time("2026-12-01 09:00:00Z".to_owned());
        let err = choose_backup(&backups, &BackupRef::Id("c-first".into()), &target).unwrap_err();
        assert!(
            matches!(
                &err,
                RestoreError::BackupEndsAfterTarget { instead: None, .. }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("no backup"), "{err}");
        let err = choose_backup(&backups, &BackupRef::Latest, &target).unwrap_err();
        assert!(
            matches!(err, RestoreError::NoBackupReachesTarget { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn targets_that_cannot_be_placed_leave_the_choice_alone() {
        let backups = catalog();
        for target in [
            RecoveryTarget::Xid(7),
            RecoveryTarget::Name("before upgrade".into()),
            RecoveryTarget::Immediate,
        ] {
            let chosen = choose_backup(&backups, &BackupRef::Latest, &target).unwrap();
            assert_eq!(chosen.id, "a-third");
            let chosen =
                choose_backup(&backups, &BackupRef::Id("c-first".into()), &target).unwrap();
            assert_eq!(chosen.id, "c-first");
        }
    }

    #[test]
    fn an_unknown_id_and_an_empty_catalog_are_told_apart() {
        let backups = catalog();
        let err = choose_backup(
            &backups,
            &BackupRef::Id("nope".into()),
            &RecoveryTarget::Latest,
        )
        .unwrap_err();
        assert!(matches!(err, RestoreError::NoSuchBackup { .. }), "{err:?}");
        let err = choose_backup(&[], &BackupRef::Latest, &RecoveryTarget::Latest).unwrap_err();
        assert!(matches!(err, RestoreError::NoBackups), "{err:?}");
    }

    #[test]
    fn a_target_time_without_an_offset_is_refused_rather_than_guessed() {
        let backups = catalog();
        let target = RecoveryTarget::Time("2026-12-01 12:30:00".to_owned());
        let err = choose_backup(&backups, &BackupRef::Latest, &target).unwrap_err();
        assert!(
            matches!(err, RestoreError::UnreadableTargetTime(_)),
            "{err:?}"
        );
    }

    #[test]
    fn target_times_with_offsets_are_read_as_utc() {
        let utc = humantime::parse_rfc3339("2026-11-21T08:59:00Z").unwrap();
        for text in [
            "2026-11-21 08:59:00Z",
            "2026-11-21T08:59:00Z",
            "2026-11-21 08:59:00 UTC",
            "2026-11-21 09:59:00+01",
            "2026-11-21 09:59:00+01:00",
            "2026-11-21 09:59:00+0100",
            "2026-11-21 07:59:00-01",
        ] {
            assert_eq!(parse_target_time(text), Some(utc), "{text}");
        }
        assert!(parse_target_time("2026-11-21 09:59:00.5+00").is_some());
        for text in [
            "yesterday",
            "2026-11-21 09:59:00+1",
            "2026-11-21 09:59:00 CET",
        ] {
            assert_eq!(parse_target_time(text), None, "{text}");
        }
    }
}
