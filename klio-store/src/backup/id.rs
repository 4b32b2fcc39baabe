//! Backup ids: the names of catalog directories, so only a safe alphabet.

use std::fmt;

use super::error::BackupStoreError;

/// The longest backup id.
pub const MAX_BACKUP_ID_LEN: usize = 64;

/// A backup id: 1 to [`MAX_BACKUP_ID_LEN`] ASCII letters, digits and `-` (it becomes a
/// directory name). The server gives `YYYYMMDDTHHMMSSZ-xxxx`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackupId(String);

impl BackupId {
    /// Checks an id received from a client (or found on disk).
    pub fn parse(id: &str) -> Result<Self, BackupStoreError> {
        let ok = !id.is_empty()
            && id.len() <= MAX_BACKUP_ID_LEN
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if ok {
            Ok(Self(id.to_owned()))
        } else {
            Err(BackupStoreError::InvalidBackupId { id: id.to_owned() })
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BackupId({})", self.0)
    }
}
