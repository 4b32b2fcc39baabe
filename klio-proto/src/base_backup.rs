//! `BASE_BACKUP` (PostgreSQL 15+): the command, its result sets, the archive "copystream" and
//! the classification of its final error. Sans-IO: bytes and result sets in, typed values out.
//!
//! # Exchange
//!
//! The client sends [`BaseBackupOptions::command`] with the simple query protocol. The server
//! answers, in order:
//!
//! 1. a result set `(recptr text, tli int8)`: the start LSN and timeline, sent once the start
//!    checkpoint is done ([`BackupPosition::from_result`]);
//! 2. a result set `(spcoid oid, spclocation text, size int8)`: one row per tablespace, the main
//!    data directory last with a NULL oid and location; `size` is in kB, NULL without
//!    `PROGRESS` ([`Tablespace::list_from_result`]);
//! 3. one `CopyOutResponse`, then `CopyData` messages decoded by [`CopyStreamDecoder`], then
//!    `CopyDone`;
//! 4. a result set `(recptr, tli)`: the end LSN and timeline;
//! 5. `CommandComplete` and `ReadyForQuery`, **or** an `ErrorResponse` then `ReadyForQuery`. A
//!    page checksum failure (SQLSTATE `XX001`) is reported only here, after every byte of data,
//!    the manifest and the end position were sent: the backup is unusable even though it looked
//!    complete ([`BaseBackupFailure::classify`]).
//!
//! # Copystream format
//!
//! Every `CopyData` payload starts with a type byte:
//!
//! | Type | Payload | Meaning |
//! |------|---------|---------|
//! | `n`  | archive name `\0` tablespace path `\0` | a new archive starts (`base.tar` with an empty path, or `<oid>.tar`) |
//! | `d`  | bytes | data of the current archive, or of the manifest once `m` was seen |
//! | `p`  | int64, network order | bytes of archive data sent so far, all archives together |
//! | `m`  | none | the manifest follows; no archive may come after it |
//!
//! An archive has no end marker: it ends at the next `n`, at `m` or at `CopyDone`.
//! Sources: PostgreSQL `src/backend/backup/basebackup_copy.c` (server) and
//! `ReceiveArchiveStreamChunk` in `src/bin/pg_basebackup/pg_basebackup.c` (client).

use std::fmt;

use bytes::Bytes;
use klio_wal::{Lsn, TimelineId};

use crate::error::{ProtocolError, ServerError};
use crate::query::ResultSet;
use crate::replication::{bad, one_row};

/// The SQLSTATE of `ERRCODE_DATA_CORRUPTED`, which `BASE_BACKUP` raises after sending
/// everything when page checksums did not verify.
pub const CHECKSUM_FAILURE_SQLSTATE: &str = "XX001";

/// How the server performs the start checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Checkpoint {
    /// As fast as possible (more I/O at once, the backup starts sooner).
    #[default]
    Fast,
    /// Spread over `checkpoint_completion_target` (gentle on the server, may take minutes).
    Spread,
}

/// The checksum algorithm of the files listed in the backup manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ManifestChecksums {
    /// CRC-32C, PostgreSQL's default: fast, detects accidents only.
    #[default]
    Crc32c,
    /// SHA-224.
    Sha224,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
    /// No file checksums (sizes only).
    None,
}

impl ManifestChecksums {
    fn keyword(self) -> &'static str {
        match self {
            Self::Crc32c => "CRC32C",
            Self::Sha224 => "SHA224",
            Self::Sha256 => "SHA256",
            Self::Sha384 => "SHA384",
            Self::Sha512 => "SHA512",
            Self::None => "NONE",
        }
    }
}

/// Whether the server sends a `backup_manifest`, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manifest {
    /// No manifest (`MANIFEST 'no'`).
    Omit,
    /// A manifest after the archives.
    Include {
        /// The checksum of each file entry.
        checksums: ManifestChecksums,
        /// Hex-encode every path (`MANIFEST 'force-encode'`), not only those that are not UTF-8.
        force_encode: bool,
    },
}

impl Default for Manifest {
    fn default() -> Self {
        Self::Include {
            checksums: ManifestChecksums::default(),
            force_encode: false,
        }
    }
}

/// A `MAX_RATE` in kB/s, within the 32..=1048576 PostgreSQL accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxRate(u32);

impl MaxRate {
    /// The smallest rate PostgreSQL accepts, in kB/s.
    pub const MIN_KB_PER_SECOND: u32 = 32;
    /// The largest rate PostgreSQL accepts, in kB/s (1 GB/s).
    pub const MAX_KB_PER_SECOND: u32 = 1_048_576;

    /// A rate of `kb_per_second` kB/s.
    pub fn kb_per_second(kb_per_second: u32) -> Result<Self, MaxRateOutOfRange> {
        if (Self::MIN_KB_PER_SECOND..=Self::MAX_KB_PER_SECOND).contains(&kb_per_second) {
            Ok(Self(kb_per_second))
        } else {
            Err(MaxRateOutOfRange { kb_per_second })
        }
    }

    /// The rate in kB/s.
    pub fn get(self) -> u32 {
        self.0
    }
}

/// A `MAX_RATE` PostgreSQL would reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "a base backup rate limit of {kb_per_second} kB/s is outside what PostgreSQL accepts; give 32 to 1048576 kB/s, or no limit"
)]
pub struct MaxRateOutOfRange {
    /// The rejected rate.
    pub kb_per_second: u32,
}

/// The options of a `BASE_BACKUP` command. The command always has `TARGET 'client'` (the data
/// comes to this connection) and no `WAL`: Klio takes the WAL from its archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseBackupOptions {
    /// The label written into `backup_label`.
    pub label: String,
    /// How the start checkpoint is done.
    pub checkpoint: Checkpoint,
    /// Ask for tablespace sizes and `p` progress messages (costs a first pass over the files).
    pub progress: bool,
    /// Whether and how the server sends a manifest.
    pub manifest: Manifest,
    /// Put a `tablespace_map` file into `base.tar` instead of the `pg_tblspc` symlinks.
    pub tablespace_map: bool,
    /// Wait for the last WAL segment to be archived by `archive_command` (`WAIT true`); false
    /// when the WAL is streamed to an archive anyway.
    pub wait_for_wal_archive: bool,
    /// Verify page checksums while sending (PostgreSQL's default when checksums are enabled).
    pub verify_checksums: bool,
    /// Limit the transfer rate; `None` is unlimited.
    pub max_rate: Option<MaxRate>,
}

impl Default for BaseBackupOptions {
    fn default() -> Self {
        Self {
            label: "klio base backup".to_owned(),
            checkpoint: Checkpoint::Fast,
            progress: true,
            manifest: Manifest::default(),
            tablespace_map: true,
            wait_for_wal_archive: false,
            verify_checksums: true,
            max_rate: None,
        }
    }
}

impl BaseBackupOptions {
    /// The command text, PostgreSQL 15+ parenthesised syntax, e.g.
    /// `BASE_BACKUP (LABEL 'x', TARGET 'client', CHECKPOINT 'fast', PROGRESS, WAIT false, ...)`.
    pub fn command(&self) -> String {
        let mut options = vec![
            format!("LABEL {}", quote_literal(&self.label)),
            "TARGET 'client'".to_owned(),
            match self.checkpoint {
                Checkpoint::Fast => "CHECKPOINT 'fast'".to_owned(),
                Checkpoint::Spread => "CHECKPOINT 'spread'".to_owned(),
            },
        ];
        if self.progress {
            options.push("PROGRESS".to_owned());
        }
        if !self.wait_for_wal_archive {
            options.push("WAIT false".to_owned());
        }
        match self.manifest {
            Manifest::Omit => options.push("MANIFEST 'no'".to_owned()),
            Manifest::Include {
                checksums,
                force_encode,
            } => {
                let mode = if force_encode { "force-encode" } else { "yes" };
                options.push(format!("MANIFEST '{mode}'"));
                options.push(format!("MANIFEST_CHECKSUMS '{}'", checksums.keyword()));
            }
        }
        if self.tablespace_map {
            options.push("TABLESPACE_MAP".to_owned());
        }
        if !self.verify_checksums {
            options.push("VERIFY_CHECKSUMS false".to_owned());
        }
        if let Some(rate) = self.max_rate {
            options.push(format!("MAX_RATE {}", rate.get()));
        }
        format!("BASE_BACKUP ({})", options.join(", "))
    }
}

/// Quotes a string literal for a replication command: `'text'` with embedded single quotes
/// doubled (the replication grammar knows no backslash escapes).
pub fn quote_literal(text: &str) -> String {
    let mut s = String::with_capacity(text.len() + 2);
    s.push('\'');
    for c in text.chars() {
        if c == '\'' {
            s.push('\'');
        }
        s.push(c);
    }
    s.push('\'');
    s
}

/// A WAL position with its timeline: where the backup starts (redo point of the start
/// checkpoint) or ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupPosition {
    /// The LSN.
    pub lsn: Lsn,
    /// The timeline of `lsn`.
    pub timeline: TimelineId,
}

impl BackupPosition {
    /// Parses the start or end result set (columns `recptr` text, `tli` int8; one row).
    pub fn from_result(set: &ResultSet) -> Result<Self, ProtocolError> {
        let row = one_row(set, "BASE_BACKUP")?;
        let lsn = row.lsn("recptr", row.req("recptr")?)?;
        let timeline = row.timeline("tli", row.req("tli")?)?;
        Ok(Self { lsn, timeline })
    }
}

/// Which directory a tablespace row describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TablespaceKind {
    /// The main data directory (NULL oid and location), archived as `base.tar`.
    MainDataDirectory,
    /// A user tablespace, archived as `<oid>.tar`.
    User {
        /// The tablespace's OID.
        oid: u32,
        /// Its directory on the server.
        location: String,
    },
}

/// One row of the tablespace result set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tablespace {
    /// The main data directory or a user tablespace.
    pub kind: TablespaceKind,
    /// The server's size estimate in kB; `None` unless the backup was asked for `PROGRESS`.
    pub size_kb: Option<u64>,
}

impl Tablespace {
    /// Parses the tablespace result set (columns `spcoid`, `spclocation`, `size`). Requires
    /// exactly one main data directory row, and it must be the last.
    pub fn list_from_result(set: &ResultSet) -> Result<Vec<Self>, ProtocolError> {
        const C: &str = "BASE_BACKUP (tablespaces)";
        let column = |name: &str| {
            set.column_index(name)
                .ok_or_else(|| bad(C, format!("missing column {name:?}")))
        };
        let (oid_col, location_col, size_col) =
            (column("spcoid")?, column("spclocation")?, column("size")?);
        let text = |row: usize, col: usize| {
            set.text(row, col)
                .map_err(|_| bad(C, format!("row {row} is not valid UTF-8")))
        };
        let mut list = Vec::with_capacity(set.rows.len());
        for row in 0..set.rows.len() {
            let kind = match (text(row, oid_col)?, text(row, location_col)?) {
                (None, _) => TablespaceKind::MainDataDirectory,
                (Some(oid), Some(location)) => TablespaceKind::User {
                    oid: oid
                        .parse()
                        .map_err(|_| bad(C, format!("spcoid {oid:?} is not an OID")))?,
                    location: location.to_owned(),
                },
                (Some(oid), None) => {
                    return Err(bad(C, format!("tablespace {oid} has a NULL location")));
                }
            };
            let size_kb = text(row, size_col)?
                .map(|s| {
                    s.parse()
                        .map_err(|_| bad(C, format!("size {s:?} is not a number of kB")))
                })
                .transpose()?;
            list.push(Self { kind, size_kb });
        }
        let mains = list
            .iter()
            .filter(|t| t.kind == TablespaceKind::MainDataDirectory)
            .count();
        let main_is_last = list
            .last()
            .is_some_and(|t| t.kind == TablespaceKind::MainDataDirectory);
        if mains != 1 || !main_is_last {
            return Err(bad(
                C,
                "expected exactly one main data directory row (NULL spcoid), as the last row",
            ));
        }
        Ok(list)
    }
}

/// One decoded `CopyData` payload of the copystream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyStreamEvent {
    /// `n`: a new archive starts; the previous one, if any, is complete.
    NewArchive {
        /// The archive's file name, `base.tar` or `<oid>.tar` (checked to be a plain file
        /// name).
        name: String,
        /// The tablespace's directory on the server; `None` for the main data directory.
        tablespace: Option<String>,
    },
    /// `d` before the manifest: bytes of the current archive (zero-copy slice of the message).
    ArchiveData(Bytes),
    /// `p`: bytes of archive data sent so far, all archives together.
    Progress(u64),
    /// `m`: the last archive is complete and the manifest follows.
    ManifestStart,
    /// `d` after `m`: bytes of the manifest.
    ManifestData(Bytes),
}

/// Where the copystream is, which decides what may come next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum StreamPosition {
    /// Nothing yet: only `n` (or `p`) may come.
    #[default]
    BeforeFirstArchive,
    /// Inside an archive.
    InArchive,
    /// After `m`: only manifest data and progress.
    InManifest,
}

/// Decodes the `CopyData` payloads of a `BASE_BACKUP` copystream into [`CopyStreamEvent`]s and
/// enforces their order. Feed every payload to [`decode`](Self::decode); after `CopyDone`,
/// [`finish`](Self::finish) checks that the stream was complete.
#[derive(Debug, Clone, Default)]
pub struct CopyStreamDecoder {
    position: StreamPosition,
}

impl CopyStreamDecoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes one `CopyData` payload (the body, without the `d` message header).
    pub fn decode(&mut self, payload: Bytes) -> Result<CopyStreamEvent, CopyStreamError> {
        let Some(&kind) = payload.first() else {
            return Err(CopyStreamError::EmptyMessage);
        };
        let body = payload.slice(1..);
        match kind {
            b'n' => {
                if self.position == StreamPosition::InManifest {
                    return Err(CopyStreamError::ArchiveAfterManifest);
                }
                let (name, tablespace) = parse_new_archive(&body)?;
                self.position = StreamPosition::InArchive;
                Ok(CopyStreamEvent::NewArchive { name, tablespace })
            }
            b'd' => match self.position {
                StreamPosition::BeforeFirstArchive => Err(CopyStreamError::DataBeforeArchive),
                StreamPosition::InArchive => Ok(CopyStreamEvent::ArchiveData(body)),
                StreamPosition::InManifest => Ok(CopyStreamEvent::ManifestData(body)),
            },
            b'p' => {
                let bytes: [u8; 8] =
                    body.as_ref()
                        .try_into()
                        .map_err(|_| CopyStreamError::ProgressLength {
                            payload_len: body.len(),
                        })?;
                Ok(CopyStreamEvent::Progress(u64::from_be_bytes(bytes)))
            }
            b'm' => {
                if !body.is_empty() {
                    return Err(CopyStreamError::ManifestStartWithPayload {
                        payload_len: body.len(),
                    });
                }
                match self.position {
                    StreamPosition::BeforeFirstArchive => Err(CopyStreamError::ManifestFirst),
                    StreamPosition::InArchive => {
                        self.position = StreamPosition::InManifest;
                        Ok(CopyStreamEvent::ManifestStart)
                    }
                    StreamPosition::InManifest => Err(CopyStreamError::SecondManifest),
                }
            }
            other => Err(CopyStreamError::UnknownType { type_byte: other }),
        }
    }

    /// Whether the manifest has started.
    pub fn in_manifest(&self) -> bool {
        self.position == StreamPosition::InManifest
    }

    /// At `CopyDone`: an error if no archive arrived at all.
    pub fn finish(&self) -> Result<(), CopyStreamError> {
        match self.position {
            StreamPosition::BeforeFirstArchive => Err(CopyStreamError::NoArchive),
            StreamPosition::InArchive | StreamPosition::InManifest => Ok(()),
        }
    }
}

/// `n` payload: name `\0` tablespace path `\0`, nothing after.
fn parse_new_archive(body: &[u8]) -> Result<(String, Option<String>), CopyStreamError> {
    let mut fields = body.splitn(3, |&b| b == 0);
    let (Some(name), Some(path), Some([])) = (fields.next(), fields.next(), fields.next()) else {
        return Err(CopyStreamError::MalformedNewArchive(
            NewArchiveFault::NotTwoTerminatedStrings,
        ));
    };
    let text = |b: &[u8]| {
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| CopyStreamError::MalformedNewArchive(NewArchiveFault::NotUtf8))
    };
    let name = text(name)?;
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\']) {
        return Err(CopyStreamError::MalformedNewArchive(
            NewArchiveFault::UnsafeName(name),
        ));
    }
    let path = text(path)?;
    Ok((name, (!path.is_empty()).then_some(path)))
}

/// What is wrong with an `n` (new archive) message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewArchiveFault {
    /// The payload is not exactly two NUL-terminated strings.
    NotTwoTerminatedStrings,
    /// The name or the path is not UTF-8.
    NotUtf8,
    /// The name is empty, a dot entry or contains a path separator.
    UnsafeName(String),
}

impl fmt::Display for NewArchiveFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotTwoTerminatedStrings => {
                f.write_str("it is not an archive name and a tablespace path, each NUL-terminated")
            }
            Self::NotUtf8 => f.write_str("the archive name or tablespace path is not UTF-8"),
            Self::UnsafeName(name) => write!(f, "the archive name {name:?} is not a file name"),
        }
    }
}

/// The copystream of `BASE_BACKUP` broke its format or order. The backup is unusable; the
/// connection is out of step with the server and must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CopyStreamError {
    /// A `CopyData` with no type byte.
    #[error(
        "the base backup stream sent an empty message; the server is not PostgreSQL 15+ or the stream is corrupt"
    )]
    EmptyMessage,
    /// A type byte other than `n`, `d`, `p`, `m`.
    #[error(
        "the base backup stream sent a message of unknown type {}; Klio understands the PostgreSQL 15+ copystream ('n', 'd', 'p', 'm'), check the server version",
        crate::error::tag_display(*.type_byte)
    )]
    UnknownType {
        /// The type byte.
        type_byte: u8,
    },
    /// `d` before any `n`.
    #[error(
        "the base backup stream sent archive data before announcing an archive; the stream is corrupt, retry the backup"
    )]
    DataBeforeArchive,
    /// `n` after `m`.
    #[error(
        "the base backup stream announced an archive after the manifest, but archives must precede the manifest; the stream is corrupt, retry the backup"
    )]
    ArchiveAfterManifest,
    /// `m` before any `n`.
    #[error(
        "the base backup stream started the manifest before any archive; the stream is corrupt, retry the backup"
    )]
    ManifestFirst,
    /// A second `m`.
    #[error(
        "the base backup stream started the manifest twice; the stream is corrupt, retry the backup"
    )]
    SecondManifest,
    /// `m` with bytes after the type.
    #[error(
        "the base backup stream's manifest marker carries {payload_len} bytes but must carry none; the stream is corrupt, retry the backup"
    )]
    ManifestStartWithPayload {
        /// Bytes after the type byte.
        payload_len: usize,
    },
    /// `p` whose payload is not exactly one int64.
    #[error(
        "the base backup stream sent a progress message of {payload_len} bytes instead of 8; the stream is corrupt, retry the backup"
    )]
    ProgressLength {
        /// Bytes after the type byte.
        payload_len: usize,
    },
    /// A malformed `n`.
    #[error(
        "the base backup stream announced an archive badly: {0}; the stream is corrupt, retry the backup"
    )]
    MalformedNewArchive(NewArchiveFault),
    /// `CopyDone` before any archive.
    #[error(
        "the base backup stream ended without any archive; retry the backup and check the server log"
    )]
    NoArchive,
}

/// Why the server ended `BASE_BACKUP` with an `ErrorResponse`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BaseBackupFailure {
    /// SQLSTATE `XX001`: page checksums did not verify. The server says so only after sending
    /// everything, so every archive and the manifest may look complete: the backup must still
    /// be discarded.
    #[error(
        "PostgreSQL found data pages whose checksums do not verify, after sending the whole base backup; discard this backup, check the server log for the damaged blocks and the storage under the data directory"
    )]
    ChecksumFailure(#[source] Box<ServerError>),
    /// Any other error (a backup already running in this session, a bad option, a shutdown...).
    #[error(
        "PostgreSQL refused or aborted the base backup, which is unusable; fix what PostgreSQL reports and retry"
    )]
    Server(#[source] Box<ServerError>),
}

impl BaseBackupFailure {
    /// Sorts the server's error by its SQLSTATE.
    pub fn classify(error: ServerError) -> Self {
        if error.code == CHECKSUM_FAILURE_SQLSTATE {
            Self::ChecksumFailure(Box::new(error))
        } else {
            Self::Server(Box::new(error))
        }
    }

    /// What the server said.
    pub fn server_error(&self) -> &ServerError {
        match self {
            Self::ChecksumFailure(e) | Self::Server(e) => e,
        }
    }
}

#[cfg(test)]
mod tests;
