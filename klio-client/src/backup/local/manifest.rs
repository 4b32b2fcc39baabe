//! The `backup_manifest` of a backup read from the data directory, written as PostgreSQL
//! writes its own (`backup_manifest.c`) so that `pg_verifybackup` checks a restore of it.
//!
//! # Format
//!
//! ```text
//! { "PostgreSQL-Backup-Manifest-Version": 1,            (2 from PostgreSQL 17 on, with
//! "Files": [                                              "System-Identifier": <u64>,)
//! { "Path": "backup_label", "Size": 227, "Last-Modified": "2026-12-01 22:00:00 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "9a3e21c4" },
//! ...
//! ],
//! "WAL-Ranges": [
//! { "Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000138" }
//! ],
//! "Manifest-Checksum": "<SHA-256 of every byte before this line, hex>"}
//! ```
//!
//! A file's checksum is its CRC-32C, hex-encoded from the value's bytes in the host's order,
//! as PostgreSQL encodes it (the manifest is written on the PostgreSQL host). Paths are the
//! backup's paths, JSON strings.
//!
//! # Memory
//!
//! [`ManifestWriter`] keeps only what was written since the last [`ManifestWriter::take`] and
//! the running SHA-256: the capture sends the manifest to the server as it grows, so a backup
//! of a million files never holds its whole manifest.

use std::time::{Duration, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use klio_wal::WalPosition;

/// The first PostgreSQL version whose manifests are version 2 (with the system identifier).
const VERSION_2_FROM: u32 = 170_000;

/// Writes a manifest line by line (see the module documentation).
pub(crate) struct ManifestWriter {
    digest: ring::digest::Context,
    written: BytesMut,
    files: u64,
}

impl std::fmt::Debug for ManifestWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManifestWriter")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ManifestWriter {
    /// A manifest for a backup of PostgreSQL `pg_version` (`server_version_num`) of the
    /// system `system_id`.
    pub(crate) fn new(pg_version: u32, system_id: u64) -> Self {
        let mut m = Self {
            digest: ring::digest::Context::new(&ring::digest::SHA256),
            written: BytesMut::new(),
            files: 0,
        };
        if pg_version >= VERSION_2_FROM {
            m.append(&format!(
                "{{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\"System-Identifier\": \
                 {system_id},\n\"Files\": ["
            ));
        } else {
            m.append("{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [");
        }
        m
    }

    fn append(&mut self, text: &str) {
        self.digest.update(text.as_bytes());
        self.written.extend_from_slice(text.as_bytes());
    }

    /// Adds a regular file: its path in the backup, its size, modification time (seconds
    /// since the epoch) and CRC-32C.
    pub(crate) fn add_file(&mut self, path: &str, size: u64, mtime: i64, crc32c: u32) {
        let separator = if self.files == 0 { "\n" } else { ",\n" };
        self.files += 1;
        // A String's JSON form cannot fail to serialize.
        let path = serde_json::to_string(path).unwrap_or_default();
        let checksum: String = crc32c
            .to_ne_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        self.append(&format!(
            "{separator}{{ \"Path\": {path}, \"Size\": {size}, \"Last-Modified\": \"{}\", \
             \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"{checksum}\" }}",
            gmt(mtime)
        ));
    }

    /// Files added so far.
    #[cfg(test)]
    pub(crate) fn files(&self) -> u64 {
        self.files
    }

    /// Bytes written since the last take.
    pub(crate) fn pending(&self) -> usize {
        self.written.len()
    }

    /// What was written since the last take.
    pub(crate) fn take(&mut self) -> Bytes {
        self.written.split().freeze()
    }

    /// Ends the manifest with the WAL the backup needs, from `start` to `end` on one timeline
    /// (a backup from a primary never changes timeline), and its checksum; the rest of the
    /// manifest.
    pub(crate) fn finish(mut self, start: WalPosition, end: WalPosition) -> Bytes {
        self.append("\n],\n\"WAL-Ranges\": [\n");
        self.append(&format!(
            "{{ \"Timeline\": {}, \"Start-LSN\": \"{}\", \"End-LSN\": \"{}\" }}",
            start.timeline.get(),
            start.lsn,
            end.lsn
        ));
        self.append("\n],\n");
        let sum: String = self
            .digest
            .clone()
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        // The checksum line is not part of what it sums.
        self.written
            .extend_from_slice(format!("\"Manifest-Checksum\": \"{sum}\"}}\n").as_bytes());
        self.written.freeze()
    }
}

/// `mtime` as PostgreSQL writes it: `YYYY-MM-DD HH:MM:SS GMT` (before 1970: 1970).
fn gmt(mtime: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(u64::try_from(mtime).unwrap_or(0));
    let rfc = humantime::format_rfc3339_seconds(t).to_string();
    // 2026-12-01T22:00:00Z
    format!("{} {} GMT", &rfc[..10], &rfc[11..19])
}

#[cfg(test)]
mod tests {
    use super::*;
    use klio_wal::{Lsn, TimelineId};

    fn whole(mut m: ManifestWriter, start: WalPosition, end: WalPosition) -> Vec<u8> {
        let mut out = m.take().to_vec();
        out.extend_from_slice(&m.finish(start, end));
        out
    }

    #[test]
    fn a_manifest_is_json_that_checksums_itself_as_postgresql_does() {
        let mut m = ManifestWriter::new(150_010, 7);
        m.add_file("backup_label", 227, 1_764_626_400, 0x1234_5678);
        let early = m.take();
        m.add_file("base/1/\"odd\" name", 0, -5, 0);
        assert_eq!(m.files(), 2);
        let tl = TimelineId::FIRST;
        let start = WalPosition::new(tl, Lsn(0x200_0028));
        let end = WalPosition::new(tl, Lsn(0x200_0138));
        let mut bytes = early.to_vec();
        bytes.extend_from_slice(&whole(m, start, end));
        let text = String::from_utf8(bytes.clone()).unwrap();

        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["PostgreSQL-Backup-Manifest-Version"], 1);
        assert!(json.get("System-Identifier").is_none());
        let files = json["Files"].as_array().unwrap();
        assert_eq!(files[0]["Path"], "backup_label");
        assert_eq!(files[0]["Size"], 227);
        assert_eq!(files[0]["Last-Modified"], "2025-12-01 22:00:00 GMT");
        assert_eq!(files[0]["Checksum-Algorithm"], "CRC32C");
        // The CRC's bytes in the host's order, as PostgreSQL's pg_checksum_final gives them.
        let expected: String = 0x1234_5678u32
            .to_ne_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(files[0]["Checksum"], expected.as_str());
        assert_eq!(files[1]["Path"], "base/1/\"odd\" name");
        assert_eq!(files[1]["Last-Modified"], "1970-01-01 00:00:00 GMT");
        let ranges = json["WAL-Ranges"].as_array().unwrap();
        assert_eq!(ranges.len(), 1);
        assert_eq!(ranges[0]["Timeline"], 1);
        assert_eq!(ranges[0]["Start-LSN"], "0/2000028");
        assert_eq!(ranges[0]["End-LSN"], "0/2000138");

        // The checksum covers every byte before its own line.
        let line = text.rfind("\"Manifest-Checksum\"").unwrap();
        let sum = ring::digest::digest(&ring::digest::SHA256, &bytes[..line]);
        let hex: String = sum.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(json["Manifest-Checksum"], hex.as_str());
        assert!(text.ends_with("\"}\n"));
    }

    #[test]
    fn postgresql_17_manifests_are_version_2_with_the_system_identifier() {
        let tl = TimelineId::FIRST;
        let p = WalPosition::new(tl, Lsn(0x100_0000));
        let m = ManifestWriter::new(170_002, 7_300_000_000_000_000_123);
        let text = String::from_utf8(whole(m, p, p)).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["PostgreSQL-Backup-Manifest-Version"], 2);
        assert_eq!(
            json["System-Identifier"].as_u64(),
            Some(7_300_000_000_000_000_123)
        );
        assert_eq!(json["Files"].as_array().unwrap().len(), 0);
    }
}
