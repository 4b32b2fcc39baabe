//! What can go wrong in a WAL archive, with the file and the reason.

use std::io;
use std::path::{Path, PathBuf};

use klio_crypto::journal_frame::FrameAeadError;
use klio_crypto::{CryptoError, KeyId};
use klio_wal::{FsAction, FsError, Lsn, SegmentSize, TimelineId};

use super::journal::JournalDamage;

/// Why a WAL archive operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalArchiveError {
    /// A file-system call failed. The archive on disk stays consistent; after a failed write the
    /// handle refuses further writes and the archive must be reopened (which runs recovery).
    #[error(transparent)]
    Fs(#[from] FsError),
    /// The archive belongs to another PostgreSQL cluster.
    #[error(
        "WAL archive {dir:?} belongs to the PostgreSQL cluster with system id {recorded}, but WAL from \
         system id {offered} was offered: each cluster needs its own archive directory (a cluster \
         re-created with initdb is a new cluster; archive it into a new directory)"
    )]
    SystemIdMismatch {
        /// The archive directory.
        dir: PathBuf,
        /// The system id recorded when the archive was created.
        recorded: u64,
        /// The system id the client offered.
        offered: u64,
    },
    /// The archive was created for another WAL segment size.
    #[error(
        "WAL archive {dir:?} holds {recorded} WAL segments, but the cluster uses {offered} segments: \
         a cluster's segment size cannot change, so this is another cluster; use a new archive directory"
    )]
    SegmentSizeMismatch {
        /// The archive directory.
        dir: PathBuf,
        /// The segment size recorded when the archive was created.
        recorded: SegmentSize,
        /// The segment size the client offered.
        offered: SegmentSize,
    },
    /// The identity file exists but cannot be understood.
    #[error(
        "archive identity file {path:?} is damaged: {reason}; restore it from a backup of the server \
         or recreate the archive"
    )]
    BadIdentity {
        /// The identity file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// [`WalArchiveReader::open`](super::WalArchiveReader::open) found no archive.
    #[error(
        "{dir:?} is not a Klio WAL archive (no identity file {file:?}): check the path, or let the \
         server create the archive when the cluster first sends WAL"
    )]
    NotAnArchive {
        /// The directory.
        dir: PathBuf,
        /// The identity file name that is missing.
        file: &'static str,
    },
    /// The directory holds WAL files but no identity file, so it cannot be trusted.
    #[error(
        "{dir:?} holds WAL archive files but no identity file: refusing to guess which cluster they \
         belong to; restore the identity file or move the files away"
    )]
    MissingIdentity {
        /// The directory.
        dir: PathBuf,
    },
    /// A journal holds damaged data before its end: acknowledged WAL was lost or altered.
    #[error(
        "WAL journal {path:?} is damaged at byte {offset}: {damage}; the WAL in it cannot be trusted, \
         fetch this segment from Tier 2 or from another copy and investigate the disk"
    )]
    DamagedJournal {
        /// The journal file.
        path: PathBuf,
        /// Byte offset of the damaged frame in the file.
        offset: u64,
        /// What is wrong.
        damage: JournalDamage,
    },
    /// A completed segment file is damaged (for example, the wrong size).
    #[error(
        "WAL file {path:?} is damaged: {reason}; fetch it from Tier 2 or another copy and \
         investigate the disk"
    )]
    DamagedSegment {
        /// The segment file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Finishing a completed segment stopped without a failure to report (it panicked, or no
    /// finishing thread could be started).
    #[error(
        "finishing the completed WAL segment journal {path:?} stopped unexpectedly; reopen the \
         archive (restart the server): recovery finishes the complete journals left"
    )]
    FinisherStopped {
        /// The journal being finished or handed off.
        path: PathBuf,
    },
    /// Files on disk contradict each other or the handle's state.
    #[error("WAL archive file {path:?} is inconsistent: {reason}")]
    Inconsistent {
        /// The file involved.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The archive holds encrypted files, but was opened without a keyring.
    #[error(
        "WAL archive file {path:?} is encrypted{}, but the archive was opened without a keyring: \
         this archive is encrypted: configure the key it was sealed with (and any keys of older \
         files) and open it with a keyring",
        match key_id {
            Some(id) => format!(" with key {id}"),
            None => String::new(),
        }
    )]
    Encrypted {
        /// The encrypted file found.
        path: PathBuf,
        /// The key its header names, if readable.
        key_id: Option<KeyId>,
    },
    /// Encrypting, decrypting or re-wrapping a file failed (an unknown key, a wrong key, a
    /// damaged, truncated or swapped file).
    #[error("could not {action} {path:?}")]
    Crypto {
        /// What was being done.
        action: &'static str,
        /// The file involved.
        path: PathBuf,
        /// Why.
        #[source]
        source: CryptoError,
    },
    /// Sealing a frame of an encrypted journal, or making its frame key, failed.
    #[error("could not {action} {path:?}")]
    JournalFrame {
        /// What was being done.
        action: &'static str,
        /// The journal.
        path: PathBuf,
        /// Why.
        #[source]
        source: FrameAeadError,
    },
    /// `begin` asked for a position before the durable end: that WAL is already archived.
    #[error(
        "WAL on timeline {timeline} from {start} overlaps the archive, which already holds WAL up to \
         {durable_end} on that timeline: resume streaming from {durable_end}"
    )]
    Overlap {
        /// The timeline.
        timeline: TimelineId,
        /// The requested start.
        start: Lsn,
        /// The durable end already archived.
        durable_end: Lsn,
    },
    /// `begin` asked for a position that is neither the durable end nor a segment boundary.
    #[error(
        "WAL on timeline {timeline} cannot start at {start}: {}",
        match durable_end {
            Some(end) => format!(
                "the archive holds WAL up to {end}; resume exactly there or at a later segment boundary"
            ),
            None => "the first WAL of a timeline must start at a segment boundary".to_owned(),
        }
    )]
    NotSegmentAligned {
        /// The timeline.
        timeline: TimelineId,
        /// The requested start.
        start: Lsn,
        /// The durable end on that timeline, if any.
        durable_end: Option<Lsn>,
    },
    /// `append` was called before `begin`.
    #[error("WAL appended before the stream was begun: call begin(timeline, start) first")]
    NotStreaming,
    /// `append` did not continue the stream exactly.
    #[error(
        "WAL on timeline {timeline} must continue at {expected}, but data for {got} arrived: the \
         stream is discontinuous; begin again from the durable end"
    )]
    Discontinuity {
        /// The timeline.
        timeline: TimelineId,
        /// The next expected position.
        expected: Lsn,
        /// The position offered.
        got: Lsn,
    },
    /// A position past the end of the 64-bit WAL space.
    #[error("WAL position overflows 64 bits")]
    PositionOverflow,
    /// A history file with other contents is already stored for this timeline.
    #[error(
        "a different history file for timeline {timeline} is already stored as {path:?}: two \
         clusters seem to share this archive, or the history was rewritten; investigate before \
         archiving more"
    )]
    HistoryConflict {
        /// The timeline.
        timeline: TimelineId,
        /// The stored history file.
        path: PathBuf,
    },
    /// An earlier write or fsync failed, so the handle no longer knows what is on disk.
    #[error(
        "an earlier write to WAL archive {dir:?} failed: reopen the archive (recovery finds the exact \
         durable end) and resume streaming from there"
    )]
    Poisoned {
        /// The archive directory.
        dir: PathBuf,
    },
}

impl WalArchiveError {
    pub(super) fn io(action: FsAction, path: &Path, source: io::Error) -> Self {
        Self::Fs(FsError::new(action, path, source))
    }

    /// Whether this error means the handle's view of the disk may be wrong (write path failures).
    pub(super) fn poisons(&self) -> bool {
        matches!(
            self,
            Self::Fs(_)
                | Self::DamagedJournal { .. }
                | Self::DamagedSegment { .. }
                | Self::Inconsistent { .. }
                | Self::FinisherStopped { .. }
                | Self::Crypto { .. }
                | Self::JournalFrame { .. }
                | Self::PositionOverflow
        )
    }
}
