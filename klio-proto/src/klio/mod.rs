//! Klio's own protocol between `send-wal` (and later `get-wal`, backups) and a Klio server.
//!
//! One QUIC bidirectional stream carries length-prefixed frames: `tag: u8`, `len: u32` (big
//! endian), `len` bytes of payload. The client's identity (its cluster) comes from its TLS
//! certificate, never from a frame; [`Message::Hello`] repeats it only so that a misconfigured
//! client gets a clear error. The server acknowledges WAL with [`Message::Ack`] only once the
//! bytes are on stable storage.

mod backup;
mod catalog;
mod cluster_name;
mod codec;
mod dictionary;
mod listing;
mod message;
mod retention;

pub use backup::{
    BLOCK_HASH_LEN, BLOCK_ZSTD_LEVEL, BackupFinish, Block, BlockCompression, BlockDecodeError,
    BlockHash, CaptureMethod, FileEntry, FileKind, MAX_BLOCK_LEN, MAX_HASHES_PER_MESSAGE,
    TablespaceInfo,
};
pub use catalog::{
    BackupInfo, BackupStatus, CATALOG_SCHEMA, CatalogEntryError, CatalogPosition, CatalogTablespace,
};
pub use cluster_name::{ClusterName, InvalidClusterName};
pub use codec::{DEFAULT_MAX_FRAME_LEN, FrameDecoder, KlioProtocolError};
pub use dictionary::{
    BlockDictionary, DICTIONARY_SAMPLE_LEN, DICTIONARY_SAMPLES, DictionarySampler,
    InvalidBlockDictionary, MAX_DICTIONARY_LEN,
};
pub use listing::{BackupTiers, ListedBackup};
pub use message::{ErrorCode, Message, PROTOCOL_VERSION};
pub use retention::{
    BackupVerdict, BlockReport, DiskReport, RETENTION_REPORT_SCHEMA, RecoverablePoint,
    ReportPolicy, RetainedBecause, RetentionReport, RetentionReportError, Tier2RetentionReport,
    WalKeptBecause, WalTimelineReport,
};

/// The ALPN protocol id Klio speaks over QUIC.
pub const ALPN: &[u8] = b"klio/1";

#[cfg(test)]
mod tests;
