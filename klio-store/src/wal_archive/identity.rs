//! The archive's identity: which PostgreSQL cluster (system id) and segment size it holds.
//!
//! Stored as a small text file, `klio-archive.identity`, written atomically and durably:
//!
//! ```text
//! klio-wal-archive-identity 1
//! system_id 7312345678901234567
//! segment_size 16777216
//! crc32c 1a2b3c4d
//! ```
//!
//! The CRC-32C (lower-case hex) covers every byte before the `crc32c` line.

use std::path::Path;

use klio_wal::{SegmentSize, durable};

use super::{WalArchiveError, optional_file};

/// Name of the identity file inside the archive directory.
pub(super) const IDENTITY_FILE: &str = "klio-archive.identity";

const HEADER: &str = "klio-wal-archive-identity 1";

/// The PostgreSQL cluster whose WAL an archive holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClusterIdentity {
    /// The database system identifier (`IDENTIFY_SYSTEM`'s `systemid`).
    pub system_id: u64,
    /// The cluster's WAL segment size.
    pub segment_size: SegmentSize,
}

impl ClusterIdentity {
    fn encode(&self) -> String {
        let body = format!(
            "{HEADER}\nsystem_id {}\nsegment_size {}\n",
            self.system_id,
            self.segment_size.bytes()
        );
        let crc = crc32c::crc32c(body.as_bytes());
        format!("{body}crc32c {crc:08x}\n")
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_owned())?;
        let crc_at = text
            .find("crc32c ")
            .ok_or_else(|| "no crc32c line".to_owned())?;
        let (body, crc_line) = text.split_at(crc_at);
        let stored = crc_line
            .trim_end_matches('\n')
            .strip_prefix("crc32c ")
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or_else(|| "malformed crc32c line".to_owned())?;
        let actual = crc32c::crc32c(body.as_bytes());
        if stored != actual {
            return Err(format!(
                "checksum mismatch (stored {stored:08x}, computed {actual:08x})"
            ));
        }
        let mut lines = body.lines();
        if lines.next() != Some(HEADER) {
            return Err(format!("first line is not {HEADER:?}"));
        }
        let mut field = |key: &str| -> Result<u64, String> {
            lines
                .next()
                .and_then(|l| l.strip_prefix(key))
                .and_then(|v| v.strip_prefix(' '))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| format!("missing or malformed {key} line"))
        };
        let system_id = field("system_id")?;
        let segment_size = SegmentSize::new(field("segment_size")?).map_err(|e| e.to_string())?;
        Ok(Self {
            system_id,
            segment_size,
        })
    }
}

/// Reads the recorded identity, or `None` if the archive has none yet.
pub(super) fn read(dir: &Path) -> Result<Option<ClusterIdentity>, WalArchiveError> {
    let path = dir.join(IDENTITY_FILE);
    match optional_file::read_optional(&path)? {
        None => Ok(None),
        Some(bytes) => ClusterIdentity::decode(&bytes)
            .map(Some)
            .map_err(|reason| WalArchiveError::BadIdentity { path, reason }),
    }
}

/// Reads the recorded identity of a directory that must be an archive.
pub(super) fn read_required(dir: &Path) -> Result<ClusterIdentity, WalArchiveError> {
    read(dir)?.ok_or_else(|| WalArchiveError::NotAnArchive {
        dir: dir.to_owned(),
        file: IDENTITY_FILE,
    })
}

/// Records the identity atomically and durably (temporary file, fsync, rename, directory fsync).
pub(super) fn write(dir: &Path, identity: &ClusterIdentity) -> Result<(), WalArchiveError> {
    Ok(durable::replace(
        &dir.join(IDENTITY_FILE),
        identity.encode().as_bytes(),
    )?)
}

/// Checks an offered identity against the recorded one.
pub(super) fn check(
    dir: &Path,
    recorded: &ClusterIdentity,
    offered: &ClusterIdentity,
) -> Result<(), WalArchiveError> {
    if recorded.system_id != offered.system_id {
        return Err(WalArchiveError::SystemIdMismatch {
            dir: dir.to_owned(),
            recorded: recorded.system_id,
            offered: offered.system_id,
        });
    }
    if recorded.segment_size != offered.segment_size {
        return Err(WalArchiveError::SegmentSizeMismatch {
            dir: dir.to_owned(),
            recorded: recorded.segment_size,
            offered: offered.segment_size,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let id = ClusterIdentity {
            system_id: 7_312_345_678_901_234_567,
            segment_size: SegmentSize::DEFAULT,
        };
        let text = id.encode();
        assert_eq!(ClusterIdentity::decode(text.as_bytes()), Ok(id));
        let damaged = text.replace("7312345", "7312346");
        assert!(
            ClusterIdentity::decode(damaged.as_bytes())
                .unwrap_err()
                .contains("checksum")
        );
        assert!(ClusterIdentity::decode(b"").is_err());
        assert!(ClusterIdentity::decode(&text.as_bytes()[..20]).is_err());
    }
}
