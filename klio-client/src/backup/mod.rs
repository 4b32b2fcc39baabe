//! `klio backup`: physical base backups captured with `BASE_BACKUP`, deduplicated by block
//! against the cluster's store on the Klio server, and the catalog of them.
//!
//! # Capture ([`run`])
//!
//! 1. A replication connection to PostgreSQL (15 or newer): `IDENTIFY_SYSTEM` (system id),
//!    `server_version_num`.
//! 2. A stream to the Klio server: `BackupHello`, answered by `BackupWelcome` (the backup id;
//!    the server now holds the cluster's backup lease) and `HashKey` (the cluster's block-hash
//!    key).
//! 3. `BASE_BACKUP (LABEL, TARGET 'client', CHECKPOINT, PROGRESS, WAIT false, MANIFEST 'yes',
//!    TABLESPACE_MAP)`. Each archive is read with the tar reader; entries of `base.tar` keep
//!    their paths, those of `<oid>.tar` go under `pg_tblspc/<oid>/`. Directories and symbolic
//!    links are entries too, so a restore recreates empty directories such as `pg_wal`.
//! 4. Regular files are cut into [`BLOCK_SIZE`] blocks at fixed offsets (0, 64 KiB, ...; the
//!    last block may be shorter; an empty file has none), each named by
//!    `BlockHashKey::hash(plaintext)`. Blocks are batched across files (up to 4096 distinct
//!    hashes, 16 MiB of block data or 4096 waiting entries, whichever comes first; equal
//!    hashes inside a batch are asked for once). Per batch: `HaveBlocks` → `BlocksHeld`, a
//!    `PutBlock` (zstd level 1, or as is when that is not smaller) for each block not held, then the
//!    `FileEntry` (+ `FileBlocks` continuations) of every file that ended in the batch: a file
//!    is announced only once all of its blocks are held or sent.
//! 5. The manifest as `ManifestData`, then the end of `BASE_BACKUP`: only if PostgreSQL ends
//!    it without error (page checksum failures, SQLSTATE XX001, are reported only after all
//!    data) does `FinishBackup` follow, with the start and end positions, times, version,
//!    tablespaces, block size and WAL timeout. The server answers with `BackupEntry` once the
//!    backup and its WAL range are durable: the backup is then complete and listed.
//!
//! Any failure before that answer sends `Error` to the server (or drops the stream), so
//! nothing is cataloged; blocks already stored stay, and a rerun does not send them again.
//!
//! # Memory
//!
//! Bounded whatever the number or size of files: the pending batch (at most about 16 MiB of
//! block data, each block allocated at exactly its length, plus 4096 hashes and 4096 waiting
//! entries with their hash lists), the hash list of the one file being cut (32 bytes per
//! 64 KiB: 512 KiB for a 1 GiB relation segment, the largest file PostgreSQL writes by
//! default), the batch's compressed blocks (compressed while the server answers `HaveBlocks`
//! as long as most blocks are new), and the connection buffers; a local capture adds its
//! readers' queue (16 MiB, `local/readers.rs`). Measured over real
//! PostgreSQL with an in-memory stand-in server in the same process (peak RSS of both): 41 MB
//! for 100 MB and for 650 MB of pgbench data, 34 MB with 1,003 files and 57 MB with 81,003
//! (the stand-in's own index of blocks grows with them).
//!
//! # Catalog ([`catalog`])
//!
//! List, show, verify and delete backups: small requests on their own streams, which the
//! restore reuses to find the backup it rebuilds.

mod archives;
mod batch;
mod capture;
mod capture_local;
pub mod catalog;
mod cutter;
mod local;
mod progress;
mod retention;

#[cfg(test)]
mod postgres_tests;
#[cfg(test)]
mod session_tests;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub use batch::HeldCountMismatch;
pub use capture::{BackupError, BackupOptions, BackupOutcome, CaptureStats, default_jobs, run};
pub use catalog::{BackupRef, CatalogClient, CatalogError};
pub use cutter::CaptureFault;
pub use local::{CaptureMode, LocalCaptureError, NotLocal};
pub use progress::{CaptureProgress, VerifyProgress};
pub use retention::render_report;

/// The size files are cut at: 64 KiB, eight PostgreSQL pages. A changed page costs one block
/// (64 KiB before compression); a backup's list of references takes 32 bytes per block, 0.05%
/// of its logical size; one dedup round trip covers up to 4096 blocks (256 MiB of files).
pub const BLOCK_SIZE: usize = 64 * 1024;

/// The default time the server waits for send-wal to deliver a backup's WAL.
pub const DEFAULT_WAL_TIMEOUT: Duration = Duration::from_secs(60);

/// A `--wal-timeout` that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalTimeoutError {
    /// Not a duration.
    #[error("{text:?} is not a duration; give one like 60s, 5m or 1h")]
    NotADuration {
        /// What was given.
        text: String,
        /// Why it does not parse.
        #[source]
        source: humantime::DurationError,
    },
    /// Shorter than a second or longer than the protocol carries.
    #[error("a WAL timeout of {text} is out of range; give 1 s to 136 years")]
    OutOfRange {
        /// What was given.
        text: String,
    },
}

/// Parses a WAL timeout such as `60s`, `5m` or `1h 30m` (whole seconds, at least one).
pub fn parse_wal_timeout(text: &str) -> Result<Duration, WalTimeoutError> {
    let timeout =
        humantime::parse_duration(text).map_err(|source| WalTimeoutError::NotADuration {
            text: text.to_owned(),
            source,
        })?;
    if timeout < Duration::from_secs(1) || u32::try_from(timeout.as_secs()).is_err() {
        return Err(WalTimeoutError::OutOfRange {
            text: text.to_owned(),
        });
    }
    Ok(timeout)
}
