//! The messages of Klio's protocol and their encodings.

use bytes::{BufMut, Bytes, BytesMut};
use klio_wal::{Lsn, TimelineId, WalPosition};

use super::backup::{BackupFinish, Block, BlockHash, FileEntry, FileKind};
use super::{BlockDictionary, ClusterName};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// Why the server refused or ended a session; sent in [`Message::Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The certificate does not allow this (another cluster, or no identity).
    Unauthorized,
    /// The cluster's recorded system identifier differs from the client's.
    SystemIdMismatch,
    /// The segment size differs from the one recorded for the cluster.
    SegmentSizeMismatch,
    /// A malformed or out-of-order request.
    BadRequest,
    /// WAL does not continue the archive (a gap or an overlap).
    InvalidPosition,
    /// The server could not store the data (disk full, I/O error).
    Storage,
    /// Another session of the same cluster took over.
    Preempted,
    /// The server is read-only.
    ReadOnly,
    /// The client speaks a protocol version the server does not.
    UnsupportedVersion,
    /// An unexpected server-side failure.
    Internal,
    /// A stored file failed its integrity checks (damaged, truncated, swapped, or sealed with
    /// a key the server does not have); the server will not send wrong bytes.
    DamagedFile,
    /// The catalog has no backup of that id for this cluster.
    NoSuchBackup,
    /// Another backup of the same cluster is running; one runs at a time.
    BackupInProgress,
    /// The WAL a backup needs did not reach the archive in time (is send-wal running?).
    WalNotArchived,
    /// The backup is pinned: unpin it (`klio backup unpin`) before deleting it.
    BackupPinned,
    /// A code this version does not know.
    Unknown(u16),
}

impl ErrorCode {
    fn to_u16(self) -> u16 {
        match self {
            Self::Unauthorized => 1,
            Self::SystemIdMismatch => 2,
            Self::SegmentSizeMismatch => 3,
            Self::BadRequest => 4,
            Self::InvalidPosition => 5,
            Self::Storage => 6,
            Self::Preempted => 7,
            Self::ReadOnly => 8,
            Self::UnsupportedVersion => 9,
            Self::Internal => 10,
            Self::DamagedFile => 11,
            Self::NoSuchBackup => 12,
            Self::BackupInProgress => 13,
            Self::WalNotArchived => 14,
            Self::BackupPinned => 15,
            Self::Unknown(c) => c,
        }
    }

    fn from_u16(c: u16) -> Self {
        match c {
            1 => Self::Unauthorized,
            2 => Self::SystemIdMismatch,
            3 => Self::SegmentSizeMismatch,
            4 => Self::BadRequest,
            5 => Self::InvalidPosition,
            6 => Self::Storage,
            7 => Self::Preempted,
            8 => Self::ReadOnly,
            9 => Self::UnsupportedVersion,
            10 => Self::Internal,
            11 => Self::DamagedFile,
            12 => Self::NoSuchBackup,
            13 => Self::BackupInProgress,
            14 => Self::WalNotArchived,
            15 => Self::BackupPinned,
            c => Self::Unknown(c),
        }
    }

    /// A stable snake_case name, for metric labels and status documents.
    pub fn name(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::SystemIdMismatch => "system_id_mismatch",
            Self::SegmentSizeMismatch => "segment_size_mismatch",
            Self::BadRequest => "bad_request",
            Self::InvalidPosition => "invalid_position",
            Self::Storage => "storage",
            Self::Preempted => "preempted",
            Self::ReadOnly => "read_only",
            Self::UnsupportedVersion => "unsupported_version",
            Self::Internal => "internal",
            Self::DamagedFile => "damaged_file",
            Self::NoSuchBackup => "no_such_backup",
            Self::BackupInProgress => "backup_in_progress",
            Self::WalNotArchived => "wal_not_archived",
            Self::BackupPinned => "backup_pinned",
            Self::Unknown(_) => "unknown",
        }
    }

    /// Whether retrying the same request later can succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::Storage
                | Self::Preempted
                | Self::Internal
                | Self::BackupInProgress
                | Self::WalNotArchived
        )
    }
}

/// One frame's content.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message {
    /// Client → server, first message: who the client thinks it is and what it streams.
    Hello {
        /// Protocol version.
        version: u16,
        /// The cluster the client is configured for (must match its certificate).
        cluster: ClusterName,
        /// PostgreSQL's system identifier (IDENTIFY_SYSTEM).
        system_id: u64,
        /// `wal_segment_size` in bytes.
        segment_size: u32,
    },
    /// Server → client, answer to `Hello`: the newest durable position of the cluster.
    Welcome {
        /// Protocol version.
        version: u16,
        /// Newest timeline and durable LSN on it, if the archive has any WAL.
        durable: Option<WalPosition>,
    },
    /// Client → server: WAL of `timeline` follows, starting at `start`.
    StartWal {
        /// The timeline of the WAL that follows.
        timeline: TimelineId,
        /// Its first byte.
        start: Lsn,
    },
    /// Client → server: WAL bytes continuing the stream.
    WalData {
        /// LSN of the first byte.
        start: Lsn,
        /// The bytes.
        data: Bytes,
    },
    /// Client → server: a timeline history file.
    History {
        /// The timeline whose history this is.
        timeline: TimelineId,
        /// The file's contents.
        content: Bytes,
    },
    /// Server → client: everything of `timeline` up to `durable` is on stable storage.
    Ack {
        /// Timeline.
        timeline: TimelineId,
        /// Durable position.
        durable: Lsn,
    },
    /// Client → server: where PostgreSQL's WAL ends, as its walsender last said. Changes
    /// nothing stored; the server shows the distance to its durable position as lag.
    Upstream {
        /// The timeline being streamed.
        timeline: TimelineId,
        /// PostgreSQL's end of WAL on it.
        wal_end: Lsn,
    },
    /// Client → server: ask for the durable position (of a timeline, or the newest).
    GetPosition {
        /// `None` for the newest timeline.
        timeline: Option<TimelineId>,
    },
    /// Server → client: answer to `GetPosition`.
    Position {
        /// The timeline answered for (`None` if the archive is empty).
        timeline: Option<TimelineId>,
        /// Durable LSN on it, if any.
        durable: Option<Lsn>,
    },
    /// Client → server: send the file of this cluster's archive named `name` (a segment or
    /// a `.history` file, PostgreSQL's name as restore_command gets it).
    GetFile {
        /// The file's name.
        name: String,
    },
    /// Server → client: the next bytes of the file asked for (plaintext, in order).
    FileData {
        /// The bytes.
        data: Bytes,
    },
    /// Server → client: the file asked for is complete.
    FileEnd {
        /// Bytes sent in `FileData` frames.
        size: u64,
        /// CRC-32C of those bytes, so that the client (and its spool) can check its copy.
        crc32c: u32,
        /// The segment is still being streamed: these are its durable bytes so far,
        /// zero-padded to the segment size. It will change; do not cache it.
        partial: bool,
    },
    /// Server → client: the archive has no file of that name.
    NoSuchFile {
        /// The file's name.
        name: String,
    },
    /// Client → server, first message of a backup: which cluster and PostgreSQL it backs up.
    BackupHello {
        /// Protocol version.
        version: u16,
        /// The cluster the client is configured for (must match its certificate).
        cluster: ClusterName,
        /// PostgreSQL's system identifier (IDENTIFY_SYSTEM).
        system_id: u64,
    },
    /// Server → client, answer to `BackupHello`: the id the backup will have, followed by
    /// [`Message::HashKey`].
    BackupWelcome {
        /// Protocol version.
        version: u16,
        /// The new backup's id.
        backup_id: String,
    },
    /// Server → client: the cluster's block-hash key, to compute [`BlockHash`]es with, and
    /// its block dictionary, to compress and decompress blocks with.
    HashKey {
        /// The key.
        key: [u8; 32],
        /// Which keyed hash it is for, as `klio_crypto::BlockHashAlgorithm` numbers them
        /// (0: HMAC-SHA-256, 1: keyed BLAKE3). A trailing byte: servers that predate the
        /// choice send none, and their keys are all HMAC-SHA-256.
        algorithm: u8,
        /// The cluster's dictionary, once it has one (the rest of the message: servers that
        /// predate dictionaries send none).
        dictionary: Option<BlockDictionary>,
    },
    /// Client → server: which of these blocks does the cluster hold?
    HaveBlocks {
        /// Block hashes (at most [`super::MAX_HASHES_PER_MESSAGE`]).
        hashes: Vec<BlockHash>,
    },
    /// Server → client, answer to `HaveBlocks`: one flag per hash asked for, in order.
    BlocksHeld {
        /// `true` where the block is held (need not be sent).
        held: Vec<bool>,
    },
    /// Client → server: a block the server does not hold yet.
    PutBlock {
        /// The block.
        block: Block,
    },
    /// Client → server (during a backup) or server → client (in answer to `GetBackup`): one
    /// file of the backup.
    FileEntry {
        /// The entry.
        entry: FileEntry,
    },
    /// Either direction: more block hashes of the file of the last `FileEntry`.
    FileBlocks {
        /// The hashes, continuing the file's list.
        blocks: Vec<BlockHash>,
    },
    /// Either direction: the next bytes of PostgreSQL's `backup_manifest`.
    ManifestData {
        /// The bytes.
        data: Bytes,
    },
    /// Client → server: every file and the whole manifest are sent; make the backup complete
    /// once its WAL is archived. Answered with `BackupEntry`.
    FinishBackup {
        /// What PostgreSQL reported.
        finish: BackupFinish,
    },
    /// Server → client: a backup's catalog entry ([`super::BackupInfo`] as JSON).
    BackupEntry {
        /// The JSON document.
        json: Bytes,
    },
    /// Client → server: send the catalog entry of every complete backup of the cluster.
    ListBackups,
    /// Client → server: send a backup's entry, `HashKey`, its files (`FileEntry`,
    /// `FileBlocks`), its manifest (`ManifestData`), then `CatalogEnd`.
    GetBackup {
        /// The backup id.
        id: String,
    },
    /// Client → server: send these blocks, as `BlockData`, in order.
    GetBlocks {
        /// Block hashes (at most [`super::MAX_HASHES_PER_MESSAGE`]).
        hashes: Vec<BlockHash>,
    },
    /// Server → client: a block asked for with `GetBlocks`.
    BlockData {
        /// The block.
        block: Block,
    },
    /// Client → server: remove a backup's catalog entry (its blocks stay until retention
    /// reclaims them); answered with its `BackupEntry` then `CatalogEnd`.
    DeleteBackup {
        /// The backup id.
        id: String,
    },
    /// Client → server: read every block of a backup through the store's checks and check that
    /// its WAL range is archived; answered with `Progress` messages, then its `BackupEntry`
    /// and `CatalogEnd`, or an `Error` naming the damaged file.
    VerifyBackup {
        /// The backup id.
        id: String,
    },
    /// Client → server: pin (`pinned: true`) or unpin a backup; a pinned backup is never
    /// removed by a retention policy. Answered with its `BackupEntry` then `CatalogEnd`.
    PinBackup {
        /// The backup id.
        id: String,
        /// Pin or unpin.
        pinned: bool,
    },
    /// Client → server: enforce the cluster's retention policy now (`dry_run`: only report
    /// what would go). Answered with `RetentionReport` then `CatalogEnd`.
    RunRetention {
        /// Report only; remove nothing.
        dry_run: bool,
    },
    /// Server → client: what a retention run removed or would remove (the JSON of
    /// [`super::RetentionReport`]).
    RetentionReport {
        /// The JSON document.
        json: Bytes,
    },
    /// Server → client: how far a long request has come.
    Progress {
        /// Bytes done.
        done: u64,
        /// Bytes in all.
        total: u64,
    },
    /// Server → client: the end of a listing or of a backup's contents.
    CatalogEnd,
    /// Either direction: the session ends because of this error.
    Error {
        /// What kind of error.
        code: ErrorCode,
        /// A human-readable explanation.
        message: String,
    },
}

pub(super) mod tag {
    pub(crate) const HELLO: u8 = b'H';
    pub(crate) const WELCOME: u8 = b'h';
    pub(crate) const START_WAL: u8 = b'S';
    pub(crate) const WAL_DATA: u8 = b'W';
    pub(crate) const HISTORY: u8 = b'T';
    pub(crate) const ACK: u8 = b'a';
    pub(crate) const GET_POSITION: u8 = b'P';
    pub(crate) const POSITION: u8 = b'p';
    pub(crate) const ERROR: u8 = b'E';
    pub(crate) const GET_FILE: u8 = b'F';
    pub(crate) const FILE_DATA: u8 = b'd';
    pub(crate) const FILE_END: u8 = b'e';
    pub(crate) const NO_SUCH_FILE: u8 = b'n';
    pub(crate) const UPSTREAM: u8 = b'U';
    pub(crate) const BACKUP_HELLO: u8 = b'B';
    pub(crate) const BACKUP_WELCOME: u8 = b'b';
    pub(crate) const HASH_KEY: u8 = b'y';
    pub(crate) const HAVE_BLOCKS: u8 = b'Q';
    pub(crate) const BLOCKS_HELD: u8 = b'q';
    pub(crate) const PUT_BLOCK: u8 = b'K';
    pub(crate) const FILE_ENTRY: u8 = b'f';
    pub(crate) const FILE_BLOCKS: u8 = b'g';
    pub(crate) const MANIFEST_DATA: u8 = b'M';
    pub(crate) const FINISH_BACKUP: u8 = b'Z';
    pub(crate) const BACKUP_ENTRY: u8 = b'z';
    pub(crate) const LIST_BACKUPS: u8 = b'L';
    pub(crate) const GET_BACKUP: u8 = b'G';
    pub(crate) const GET_BLOCKS: u8 = b'R';
    pub(crate) const BLOCK_DATA: u8 = b'k';
    pub(crate) const DELETE_BACKUP: u8 = b'D';
    pub(crate) const VERIFY_BACKUP: u8 = b'V';
    pub(crate) const PROGRESS: u8 = b'r';
    pub(crate) const CATALOG_END: u8 = b'x';
    pub(crate) const PIN_BACKUP: u8 = b'I';
    pub(crate) const RUN_RETENTION: u8 = b'O';
    pub(crate) const RETENTION_REPORT: u8 = b'o';
}

fn put_str(out: &mut BytesMut, s: &str) {
    let b = s.as_bytes();
    let len = b.len().min(u16::MAX as usize);
    out.put_u16(len as u16);
    out.put_slice(&b[..len]);
}

fn put_hashes(out: &mut BytesMut, hashes: &[BlockHash]) {
    out.put_u32(hashes.len() as u32);
    for h in hashes {
        out.put_slice(&h.0);
    }
}

fn put_opt_tli(out: &mut BytesMut, t: Option<TimelineId>) {
    out.put_u32(t.map_or(0, TimelineId::get));
}

impl Message {
    /// The frame tag of this message.
    pub fn tag(&self) -> u8 {
        match self {
            Self::Hello { .. } => tag::HELLO,
            Self::Welcome { .. } => tag::WELCOME,
            Self::StartWal { .. } => tag::START_WAL,
            Self::WalData { .. } => tag::WAL_DATA,
            Self::History { .. } => tag::HISTORY,
            Self::Ack { .. } => tag::ACK,
            Self::GetPosition { .. } => tag::GET_POSITION,
            Self::Position { .. } => tag::POSITION,
            Self::Error { .. } => tag::ERROR,
            Self::GetFile { .. } => tag::GET_FILE,
            Self::FileData { .. } => tag::FILE_DATA,
            Self::FileEnd { .. } => tag::FILE_END,
            Self::NoSuchFile { .. } => tag::NO_SUCH_FILE,
            Self::Upstream { .. } => tag::UPSTREAM,
            Self::BackupHello { .. } => tag::BACKUP_HELLO,
            Self::BackupWelcome { .. } => tag::BACKUP_WELCOME,
            Self::HashKey { .. } => tag::HASH_KEY,
            Self::HaveBlocks { .. } => tag::HAVE_BLOCKS,
            Self::BlocksHeld { .. } => tag::BLOCKS_HELD,
            Self::PutBlock { .. } => tag::PUT_BLOCK,
            Self::FileEntry { .. } => tag::FILE_ENTRY,
            Self::FileBlocks { .. } => tag::FILE_BLOCKS,
            Self::ManifestData { .. } => tag::MANIFEST_DATA,
            Self::FinishBackup { .. } => tag::FINISH_BACKUP,
            Self::BackupEntry { .. } => tag::BACKUP_ENTRY,
            Self::ListBackups => tag::LIST_BACKUPS,
            Self::GetBackup { .. } => tag::GET_BACKUP,
            Self::GetBlocks { .. } => tag::GET_BLOCKS,
            Self::BlockData { .. } => tag::BLOCK_DATA,
            Self::DeleteBackup { .. } => tag::DELETE_BACKUP,
            Self::VerifyBackup { .. } => tag::VERIFY_BACKUP,
            Self::Progress { .. } => tag::PROGRESS,
            Self::CatalogEnd => tag::CATALOG_END,
            Self::PinBackup { .. } => tag::PIN_BACKUP,
            Self::RunRetention { .. } => tag::RUN_RETENTION,
            Self::RetentionReport { .. } => tag::RETENTION_REPORT,
        }
    }

    /// Appends the whole frame (tag, length, payload) to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u8(self.tag());
        let len_at = out.len();
        out.put_u32(0);
        match self {
            Self::Hello {
                version,
                cluster,
                system_id,
                segment_size,
            } => {
                out.put_u16(*version);
                out.put_u64(*system_id);
                out.put_u32(*segment_size);
                put_str(out, cluster.as_str());
            }
            Self::Welcome { version, durable } => {
                out.put_u16(*version);
                put_opt_tli(out, durable.map(|d| d.timeline));
                out.put_u64(durable.map_or(0, |d| d.lsn.0));
            }
            Self::StartWal { timeline, start } => {
                out.put_u32(timeline.get());
                out.put_u64(start.0);
            }
            Self::WalData { start, data } => {
                out.put_u64(start.0);
                out.put_slice(data);
            }
            Self::History { timeline, content } => {
                out.put_u32(timeline.get());
                out.put_slice(content);
            }
            Self::Ack {
                timeline,
                durable: lsn,
            }
            | Self::Upstream {
                timeline,
                wal_end: lsn,
            } => {
                out.put_u32(timeline.get());
                out.put_u64(lsn.0);
            }
            Self::GetPosition { timeline } => put_opt_tli(out, *timeline),
            Self::Position { timeline, durable } => {
                put_opt_tli(out, *timeline);
                out.put_u8(u8::from(durable.is_some()));
                out.put_u64(durable.map_or(0, |d| d.0));
            }
            Self::Error { code, message } => {
                out.put_u16(code.to_u16());
                put_str(out, message);
            }
            Self::GetFile { name } | Self::NoSuchFile { name } => put_str(out, name),
            Self::FileData { data } => out.put_slice(data),
            Self::FileEnd {
                size,
                crc32c,
                partial,
            } => {
                out.put_u64(*size);
                out.put_u32(*crc32c);
                out.put_u8(u8::from(*partial));
            }
            Self::BackupHello {
                version,
                cluster,
                system_id,
            } => {
                out.put_u16(*version);
                out.put_u64(*system_id);
                put_str(out, cluster.as_str());
            }
            Self::BackupWelcome { version, backup_id } => {
                out.put_u16(*version);
                put_str(out, backup_id);
            }
            Self::HashKey {
                key,
                algorithm,
                dictionary,
            } => {
                out.put_slice(key);
                out.put_u8(*algorithm);
                if let Some(dictionary) = dictionary {
                    out.put_slice(dictionary.as_bytes());
                }
            }
            Self::HaveBlocks { hashes }
            | Self::GetBlocks { hashes }
            | Self::FileBlocks { blocks: hashes } => put_hashes(out, hashes),
            Self::BlocksHeld { held } => {
                out.put_u32(held.len() as u32);
                for chunk in held.chunks(8) {
                    let mut byte = 0u8;
                    for (i, h) in chunk.iter().enumerate() {
                        byte |= u8::from(*h) << i;
                    }
                    out.put_u8(byte);
                }
            }
            Self::PutBlock { block } | Self::BlockData { block } => {
                out.put_slice(&block.hash.0);
                out.put_u32(block.plain_len);
                out.put_u8(block.compression.to_u8());
                out.put_slice(&block.data);
            }
            Self::FileEntry { entry } => {
                put_str(out, &entry.path);
                match &entry.kind {
                    FileKind::File => out.put_u8(0),
                    FileKind::Directory => out.put_u8(1),
                    FileKind::Symlink { target } => {
                        out.put_u8(2);
                        put_str(out, target);
                    }
                }
                out.put_u32(entry.mode);
                out.put_u64(entry.size);
                out.put_i64(entry.mtime);
                put_hashes(out, &entry.blocks);
            }
            Self::ManifestData { data } => out.put_slice(data),
            Self::FinishBackup { finish } => {
                put_str(out, &finish.label);
                out.put_u32(finish.start.timeline.get());
                out.put_u64(finish.start.lsn.0);
                out.put_u32(finish.end.timeline.get());
                out.put_u64(finish.end.lsn.0);
                out.put_i64(finish.started_at_ms);
                out.put_i64(finish.ended_at_ms);
                out.put_u32(finish.pg_version);
                out.put_u32(finish.block_size);
                out.put_u32(finish.wal_timeout_s);
                out.put_u32(finish.tablespaces.len() as u32);
                for t in &finish.tablespaces {
                    out.put_u32(t.oid);
                    put_str(out, &t.location);
                }
                out.put_u8(finish.capture.to_u8());
            }
            Self::BackupEntry { json } | Self::RetentionReport { json } => out.put_slice(json),
            Self::PinBackup { id, pinned } => {
                put_str(out, id);
                out.put_u8(u8::from(*pinned));
            }
            Self::RunRetention { dry_run } => out.put_u8(u8::from(*dry_run)),
            Self::ListBackups | Self::CatalogEnd => {}
            Self::GetBackup { id } | Self::DeleteBackup { id } | Self::VerifyBackup { id } => {
                put_str(out, id);
            }
            Self::Progress { done, total } => {
                out.put_u64(*done);
                out.put_u64(*total);
            }
        }
        let len = (out.len() - len_at - 4) as u32;
        out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
    }
}

pub(super) use decode::decode_payload;

mod decode {
    use bytes::{Buf, Bytes};
    use klio_wal::{Lsn, TimelineId, WalPosition};

    use super::{ErrorCode, Message, tag};
    use crate::klio::backup::{
        BLOCK_HASH_LEN, BackupFinish, Block, BlockCompression, BlockHash, CaptureMethod, FileEntry,
        FileKind, MAX_HASHES_PER_MESSAGE, TablespaceInfo,
    };
    use crate::klio::{BlockDictionary, ClusterName, KlioProtocolError};

    struct Reader {
        tag: u8,
        buf: Bytes,
    }

    impl Reader {
        fn need(&self, n: usize) -> Result<(), KlioProtocolError> {
            if self.buf.remaining() < n {
                Err(KlioProtocolError::Malformed {
                    tag: self.tag,
                    reason: format!(
                        "truncated: needs {n} more bytes, has {}",
                        self.buf.remaining()
                    ),
                })
            } else {
                Ok(())
            }
        }
        fn u8(&mut self) -> Result<u8, KlioProtocolError> {
            self.need(1)?;
            Ok(self.buf.get_u8())
        }
        fn flag(&mut self) -> Result<bool, KlioProtocolError> {
            match self.u8()? {
                0 => Ok(false),
                1 => Ok(true),
                other => Err(self.malformed(format!("flag {other}, expected 0 or 1"))),
            }
        }
        fn u16(&mut self) -> Result<u16, KlioProtocolError> {
            self.need(2)?;
            Ok(self.buf.get_u16())
        }
        fn u32(&mut self) -> Result<u32, KlioProtocolError> {
            self.need(4)?;
            Ok(self.buf.get_u32())
        }
        fn u64(&mut self) -> Result<u64, KlioProtocolError> {
            self.need(8)?;
            Ok(self.buf.get_u64())
        }
        fn i64(&mut self) -> Result<i64, KlioProtocolError> {
            self.need(8)?;
            Ok(self.buf.get_i64())
        }
        fn string(&mut self) -> Result<String, KlioProtocolError> {
            let len = usize::from(self.u16()?);
            self.need(len)?;
            let b = self.buf.split_to(len);
            String::from_utf8(b.to_vec()).map_err(|_| KlioProtocolError::Malformed {
                tag: self.tag,
                reason: "string is not UTF-8".to_owned(),
            })
        }
        fn timeline(&mut self) -> Result<TimelineId, KlioProtocolError> {
            let t = self.u32()?;
            TimelineId::new(t).map_err(|_| KlioProtocolError::Malformed {
                tag: self.tag,
                reason: "timeline 0".to_owned(),
            })
        }
        fn opt_timeline(&mut self) -> Result<Option<TimelineId>, KlioProtocolError> {
            Ok(TimelineId::new(self.u32()?).ok())
        }
        fn malformed(&self, reason: impl Into<String>) -> KlioProtocolError {
            KlioProtocolError::Malformed {
                tag: self.tag,
                reason: reason.into(),
            }
        }
        fn array<const N: usize>(&mut self) -> Result<[u8; N], KlioProtocolError> {
            self.need(N)?;
            let mut out = [0u8; N];
            self.buf.copy_to_slice(&mut out);
            Ok(out)
        }
        fn hashes(&mut self) -> Result<Vec<BlockHash>, KlioProtocolError> {
            let n = self.u32()? as usize;
            if n > MAX_HASHES_PER_MESSAGE {
                return Err(self.malformed(format!(
                    "{n} block hashes, more than the limit of {MAX_HASHES_PER_MESSAGE}"
                )));
            }
            self.need(n * BLOCK_HASH_LEN)?;
            (0..n).map(|_| self.array().map(BlockHash)).collect()
        }
        fn block(&mut self) -> Result<Block, KlioProtocolError> {
            let hash = BlockHash(self.array()?);
            let plain_len = self.u32()?;
            let compression = self.u8()?;
            let compression = BlockCompression::from_u8(compression).ok_or_else(|| {
                self.malformed(format!("unknown block compression {compression}"))
            })?;
            Ok(Block {
                hash,
                plain_len,
                compression,
                data: self.rest(),
            })
        }
        fn position(&mut self) -> Result<WalPosition, KlioProtocolError> {
            let timeline = self.timeline()?;
            Ok(WalPosition::new(timeline, Lsn(self.u64()?)))
        }
        fn rest(&mut self) -> Bytes {
            self.buf.split_off(0)
        }
        fn end(self) -> Result<(), KlioProtocolError> {
            if self.buf.has_remaining() {
                Err(KlioProtocolError::Malformed {
                    tag: self.tag,
                    reason: format!("{} unexpected trailing bytes", self.buf.remaining()),
                })
            } else {
                Ok(())
            }
        }
    }

    pub(crate) fn decode_payload(t: u8, payload: Bytes) -> Result<Message, KlioProtocolError> {
        let mut r = Reader {
            tag: t,
            buf: payload,
        };
        let msg = match t {
            tag::HELLO => {
                let version = r.u16()?;
                let system_id = r.u64()?;
                let segment_size = r.u32()?;
                let name = r.string()?;
                let cluster =
                    ClusterName::new(&name).map_err(|e| KlioProtocolError::Malformed {
                        tag: t,
                        reason: e.to_string(),
                    })?;
                Message::Hello {
                    version,
                    cluster,
                    system_id,
                    segment_size,
                }
            }
            tag::WELCOME => {
                let version = r.u16()?;
                let tli = r.opt_timeline()?;
                let lsn = Lsn(r.u64()?);
                Message::Welcome {
                    version,
                    durable: tli.map(|t| WalPosition::new(t, lsn)),
                }
            }
            tag::START_WAL => Message::StartWal {
                timeline: r.timeline()?,
                start: Lsn(r.u64()?),
            },
            tag::WAL_DATA => {
                let start = Lsn(r.u64()?);
                let data = r.rest();
                if start.checked_add(data.len() as u64).is_none() {
                    return Err(KlioProtocolError::Malformed {
                        tag: t,
                        reason: "WAL data past the end of the 64-bit LSN space".to_owned(),
                    });
                }
                Message::WalData { start, data }
            }
            tag::HISTORY => Message::History {
                timeline: r.timeline()?,
                content: r.rest(),
            },
            tag::ACK => Message::Ack {
                timeline: r.timeline()?,
                durable: Lsn(r.u64()?),
            },
            tag::UPSTREAM => Message::Upstream {
                timeline: r.timeline()?,
                wal_end: Lsn(r.u64()?),
            },
            tag::GET_POSITION => Message::GetPosition {
                timeline: r.opt_timeline()?,
            },
            tag::POSITION => {
                let timeline = r.opt_timeline()?;
                let has = r.u8()?;
                let lsn = Lsn(r.u64()?);
                Message::Position {
                    timeline,
                    durable: (has != 0).then_some(lsn),
                }
            }
            tag::ERROR => Message::Error {
                code: ErrorCode::from_u16(r.u16()?),
                message: r.string()?,
            },
            tag::GET_FILE => Message::GetFile { name: r.string()? },
            tag::NO_SUCH_FILE => Message::NoSuchFile { name: r.string()? },
            tag::FILE_DATA => Message::FileData { data: r.rest() },
            tag::FILE_END => {
                let size = r.u64()?;
                let crc32c = r.u32()?;
                let partial = match r.u8()? {
                    0 => false,
                    1 => true,
                    b => {
                        return Err(KlioProtocolError::Malformed {
                            tag: t,
                            reason: format!("partial flag {b}, expected 0 or 1"),
                        });
                    }
                };
                Message::FileEnd {
                    size,
                    crc32c,
                    partial,
                }
            }
            tag::BACKUP_HELLO => {
                let version = r.u16()?;
                let system_id = r.u64()?;
                let name = r.string()?;
                let cluster = ClusterName::new(&name).map_err(|e| r.malformed(e.to_string()))?;
                Message::BackupHello {
                    version,
                    cluster,
                    system_id,
                }
            }
            tag::BACKUP_WELCOME => Message::BackupWelcome {
                version: r.u16()?,
                backup_id: r.string()?,
            },
            tag::HASH_KEY => {
                let key = r.array()?;
                // Older servers end here: their keys were all HMAC-SHA-256 (0).
                let algorithm = if r.buf.has_remaining() { r.u8()? } else { 0 };
                // And servers that predate dictionaries here.
                let rest = r.rest();
                let dictionary = if rest.is_empty() {
                    None
                } else {
                    Some(BlockDictionary::new(rest).map_err(|e| r.malformed(e.to_string()))?)
                };
                Message::HashKey {
                    key,
                    algorithm,
                    dictionary,
                }
            }
            tag::HAVE_BLOCKS => Message::HaveBlocks {
                hashes: r.hashes()?,
            },
            tag::GET_BLOCKS => Message::GetBlocks {
                hashes: r.hashes()?,
            },
            tag::FILE_BLOCKS => Message::FileBlocks {
                blocks: r.hashes()?,
            },
            tag::BLOCKS_HELD => {
                let n = r.u32()? as usize;
                if n > MAX_HASHES_PER_MESSAGE {
                    return Err(r.malformed(format!(
                        "{n} flags, more than the limit of {MAX_HASHES_PER_MESSAGE}"
                    )));
                }
                let bytes = n.div_ceil(8);
                r.need(bytes)?;
                let bits = r.buf.split_to(bytes);
                let held = (0..n).map(|i| bits[i / 8] & (1 << (i % 8)) != 0).collect();
                Message::BlocksHeld { held }
            }
            tag::PUT_BLOCK => Message::PutBlock { block: r.block()? },
            tag::BLOCK_DATA => Message::BlockData { block: r.block()? },
            tag::FILE_ENTRY => {
                let path = r.string()?;
                let kind = match r.u8()? {
                    0 => FileKind::File,
                    1 => FileKind::Directory,
                    2 => FileKind::Symlink {
                        target: r.string()?,
                    },
                    k => return Err(r.malformed(format!("unknown file kind {k}"))),
                };
                let mode = r.u32()?;
                let size = r.u64()?;
                let mtime = r.i64()?;
                let blocks = r.hashes()?;
                Message::FileEntry {
                    entry: FileEntry {
                        path,
                        kind,
                        mode,
                        size,
                        mtime,
                        blocks,
                    },
                }
            }
            tag::MANIFEST_DATA => Message::ManifestData { data: r.rest() },
            tag::FINISH_BACKUP => {
                let label = r.string()?;
                let start = r.position()?;
                let end = r.position()?;
                let started_at_ms = r.i64()?;
                let ended_at_ms = r.i64()?;
                let pg_version = r.u32()?;
                let block_size = r.u32()?;
                let wal_timeout_s = r.u32()?;
                let n = r.u32()?;
                // Each tablespace takes at least 6 bytes: a count beyond the payload is a lie.
                r.need(n as usize * 6)?;
                let tablespaces = (0..n)
                    .map(|_| {
                        Ok(TablespaceInfo {
                            oid: r.u32()?,
                            location: r.string()?,
                        })
                    })
                    .collect::<Result<_, KlioProtocolError>>()?;
                // Older clients end here: their backups were all streamed.
                let capture = if r.buf.has_remaining() {
                    let b = r.u8()?;
                    CaptureMethod::from_u8(b)
                        .ok_or_else(|| r.malformed(format!("unknown capture method {b}")))?
                } else {
                    CaptureMethod::Stream
                };
                Message::FinishBackup {
                    finish: BackupFinish {
                        label,
                        start,
                        end,
                        started_at_ms,
                        ended_at_ms,
                        pg_version,
                        tablespaces,
                        block_size,
                        wal_timeout_s,
                        capture,
                    },
                }
            }
            tag::BACKUP_ENTRY => Message::BackupEntry { json: r.rest() },
            tag::LIST_BACKUPS => Message::ListBackups,
            tag::CATALOG_END => Message::CatalogEnd,
            tag::GET_BACKUP => Message::GetBackup { id: r.string()? },
            tag::DELETE_BACKUP => Message::DeleteBackup { id: r.string()? },
            tag::VERIFY_BACKUP => Message::VerifyBackup { id: r.string()? },
            tag::PIN_BACKUP => Message::PinBackup {
                id: r.string()?,
                pinned: r.flag()?,
            },
            tag::RUN_RETENTION => Message::RunRetention { dry_run: r.flag()? },
            tag::RETENTION_REPORT => Message::RetentionReport { json: r.rest() },
            tag::PROGRESS => Message::Progress {
                done: r.u64()?,
                total: r.u64()?,
            },
            other => return Err(KlioProtocolError::UnknownTag(other)),
        };
        r.end()?;
        Ok(msg)
    }
}
