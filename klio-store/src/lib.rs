//! Storage for Klio servers.
//!
//! Today this crate holds the Tier 1 WAL archive of a cluster ([`wal_archive`]): completed
//! segments stored byte-identical to pg_receivewal's, the segment in progress as a CRC-protected
//! journal whose last valid frame is the exact durable end after a crash, timeline history files,
//! reads for restores, listings and pg_receivewal-style exports. One writer
//! ([`WalArchive`]) streams into an archive; any number of readers ([`WalArchiveReader`]),
//! which have no write methods at all, may read it meanwhile. It also holds a cluster's base
//! backups ([`backup`]): the block store (deduplicated blocks in pack files with indexes), the
//! catalog of complete backups, their verification and the check that their WAL is archived.
//! It will also own Tier 2 (S3-compatible object storage) behind one trait with Tier 1, the
//! relay queue, retention, and read-only mode. The segment-level
//! conventions it follows are those of [`klio_wal::segment_dir`].
#![warn(missing_docs)]

pub mod backup;
pub mod retention;
pub mod wal_archive;

pub use klio_wal::SegmentSize;
pub use wal_archive::{
    ArchiveListing, ArchivedFile, BeginOutcome, ClusterIdentity, ExportSummary, RewrapSummary,
    StorageOptions, WalArchive, WalArchiveError, WalArchiveReader,
};
