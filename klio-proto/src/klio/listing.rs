//! The entries of a `ListBackups` answer: a backup's catalog entry plus the tiers that hold
//! it.
//!
//! # Format
//!
//! Each `BackupEntry` of the answer is the entry's JSON ([`BackupInfo::to_json`]) with one
//! more field, `"tiers": [1, 2]`: the storage tiers holding the backup (Tier 1, the server's
//! disk; Tier 2, object storage), ascending. The field belongs to the answer only: stored
//! catalog entries never have it. Older servers send no `tiers` (read as unknown), and older
//! clients ignore it, as they ignore every field they do not know.

use serde::{Deserialize, Serialize};

use super::{BackupInfo, CatalogEntryError};

/// Which storage tiers hold a backup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackupTiers {
    /// The server's own disk holds it.
    pub tier1: bool,
    /// Object storage holds it (its catalog entry is there).
    pub tier2: bool,
}

impl BackupTiers {
    /// The tier numbers, ascending: `[1]`, `[2]`, `[1, 2]`.
    pub fn numbers(self) -> Vec<u8> {
        [(self.tier1, 1), (self.tier2, 2)]
            .into_iter()
            .filter_map(|(held, n)| held.then_some(n))
            .collect()
    }

    /// The tiers named by `numbers` (others are ignored: a later tier this version does not
    /// know).
    pub fn from_numbers(numbers: &[u8]) -> Self {
        Self {
            tier1: numbers.contains(&1),
            tier2: numbers.contains(&2),
        }
    }
}

impl std::fmt::Display for BackupTiers {
    /// `1`, `2` or `1+2`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.numbers().iter().map(u8::to_string).collect();
        f.write_str(&names.join("+"))
    }
}

/// One backup of a `ListBackups` answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedBackup {
    /// Its catalog entry.
    pub info: BackupInfo,
    /// The tiers holding it; `None` from a server that does not tell.
    pub tiers: Option<BackupTiers>,
}

#[derive(Serialize)]
struct Encoded<'a> {
    #[serde(flatten)]
    info: &'a BackupInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    tiers: Option<Vec<u8>>,
}

#[derive(Deserialize)]
struct TiersField {
    #[serde(default)]
    tiers: Option<Vec<u8>>,
}

impl Serialize for ListedBackup {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Encoded {
            info: &self.info,
            tiers: self.tiers.map(BackupTiers::numbers),
        }
        .serialize(s)
    }
}

impl ListedBackup {
    /// The `BackupEntry` JSON (see the [module documentation](self)).
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain structs of strings and numbers cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Reads a `BackupEntry` of a `ListBackups` answer, with or without `tiers`.
    pub fn from_json(json: &[u8]) -> Result<Self, CatalogEntryError> {
        let info = BackupInfo::from_json(json)?;
        let tiers = serde_json::from_slice::<TiersField>(json)
            .map_err(CatalogEntryError)?
            .tiers
            .map(|n: Vec<u8>| BackupTiers::from_numbers(&n));
        Ok(Self { info, tiers })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::klio::tests::sample_backup_info;

    #[test]
    fn tiers_travel_beside_the_entry_and_old_answers_have_none() {
        let info = sample_backup_info();
        for tiers in [
            BackupTiers {
                tier1: true,
                tier2: false,
            },
            BackupTiers {
                tier1: false,
                tier2: true,
            },
            BackupTiers {
                tier1: true,
                tier2: true,
            },
        ] {
            let listed = ListedBackup {
                info: info.clone(),
                tiers: Some(tiers),
            };
            let json = listed.to_json();
            assert_eq!(ListedBackup::from_json(&json).unwrap(), listed);
            // An older client reads the same entry.
            assert_eq!(BackupInfo::from_json(&json).unwrap(), info);
        }
        let old = ListedBackup::from_json(&info.to_json()).unwrap();
        assert_eq!(old.tiers, None);
        assert_eq!(old.info, info);
    }

    #[test]
    fn tiers_read_as_one_two_or_both() {
        let both = BackupTiers::from_numbers(&[1, 2, 3]);
        assert_eq!(both.to_string(), "1+2");
        assert_eq!(both.numbers(), [1, 2]);
        assert_eq!(BackupTiers::from_numbers(&[2]).to_string(), "2");
    }
}
