//! The one mapping from storage errors to the protocol's error codes: what a client is told
//! when the cluster's archive or backup store fails.

use klio_proto::klio::ErrorCode;
use klio_store::backup::BackupStoreError;
use klio_store::wal_archive::WalArchiveError;
use klio_wal::ErrorChain;

use super::End;
use crate::tier2::fetch::FetchError;

/// The request an archive error interrupted: the same failure means different things to the
/// client depending on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Request {
    /// Opening the archive for writing, or storing WAL and history files.
    Ingest,
    /// Answering `GetPosition`.
    Position,
    /// Reading a file for `GetFile`: damage found there is not worth retrying, so it is
    /// reported as such.
    File,
}

/// The protocol error code for `e`, met while serving `request`.
pub(super) fn error_code(e: &WalArchiveError, request: Request) -> ErrorCode {
    use WalArchiveError as E;
    match e {
        E::SystemIdMismatch { .. } => ErrorCode::SystemIdMismatch,
        E::SegmentSizeMismatch { .. } => ErrorCode::SegmentSizeMismatch,
        E::Overlap { .. }
        | E::NotSegmentAligned { .. }
        | E::Discontinuity { .. }
        | E::NotStreaming => ErrorCode::InvalidPosition,
        E::HistoryConflict { .. } => ErrorCode::BadRequest,
        E::DamagedSegment { .. }
        | E::DamagedJournal { .. }
        | E::Crypto { .. }
        | E::Encrypted { .. }
            if request == Request::File =>
        {
            ErrorCode::DamagedFile
        }
        _ => ErrorCode::Storage,
    }
}

/// Ends the session over `e`, telling the client the code for it and the whole error.
pub(super) fn refusal(e: &WalArchiveError, request: Request) -> End {
    End::Refused(error_code(e, request), ErrorChain(e).to_string())
}

/// The protocol error code for a backup store error: a bad request, an unknown backup,
/// damage found in stored data (not worth retrying), or a storage failure.
pub(super) fn backup_error_code(e: &BackupStoreError) -> ErrorCode {
    use BackupStoreError as E;
    match e {
        E::RefusedBlock { .. } | E::InvalidFileList { .. } | E::InvalidBackupId { .. } => {
            ErrorCode::BadRequest
        }
        E::NoSuchBackup { .. } => ErrorCode::NoSuchBackup,
        E::Pinned { .. } => ErrorCode::BackupPinned,
        E::BackupExists { .. } => ErrorCode::Internal,
        _ if e.is_damage() => ErrorCode::DamagedFile,
        _ => ErrorCode::Storage,
    }
}

/// Ends the session over a backup store error, telling the client its code and the whole
/// error.
pub(super) fn backup_refusal(e: &BackupStoreError) -> End {
    End::Refused(backup_error_code(e), ErrorChain(e).to_string())
}

/// Ends the session over a file that could not be brought from Tier 2: a damaged object is
/// a `DamagedFile` (its key is in the message), anything else a storage failure.
pub(super) fn fetch_refusal(e: &FetchError) -> End {
    let code = if e.is_damage() {
        ErrorCode::DamagedFile
    } else {
        ErrorCode::Storage
    };
    End::Refused(code, ErrorChain(e).to_string())
}

/// Ends a session that would write on a read-only server.
pub(super) fn read_only_refusal() -> End {
    End::Refused(ErrorCode::ReadOnly, READ_ONLY_MESSAGE.to_owned())
}

/// What a client that tries to write to a read-only server is told.
pub(crate) const READ_ONLY_MESSAGE: &str = "this server is read-only (mode: read-only) and \
     serves restores from Tier 2; stream WAL and take backups with the primary server";

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use klio_wal::{FsAction, FsError};

    use super::*;

    fn damaged() -> WalArchiveError {
        WalArchiveError::DamagedSegment {
            path: PathBuf::from("000000010000000000000003"),
            reason: "it is 3 bytes long".to_owned(),
        }
    }

    #[test]
    fn damage_is_a_damaged_file_only_when_reading_a_file() {
        assert_eq!(
            error_code(&damaged(), Request::File),
            ErrorCode::DamagedFile
        );
        assert_eq!(error_code(&damaged(), Request::Ingest), ErrorCode::Storage);
        assert_eq!(
            error_code(&damaged(), Request::Position),
            ErrorCode::Storage
        );
    }

    #[test]
    fn a_position_the_archive_cannot_continue_is_an_invalid_position_for_every_request() {
        for request in [Request::Ingest, Request::Position, Request::File] {
            assert_eq!(
                error_code(&WalArchiveError::NotStreaming, request),
                ErrorCode::InvalidPosition
            );
        }
    }

    #[test]
    fn backup_store_errors_map_to_what_the_client_can_do_about_them() {
        use klio_proto::klio::BlockHash;
        use klio_store::backup::{BlockDamage, BlockProblem};
        let hash = BlockHash([7; 32]);
        let refused = BackupStoreError::RefusedBlock {
            hash,
            problem: BlockProblem::HashMismatch,
        };
        assert_eq!(backup_error_code(&refused), ErrorCode::BadRequest);
        let unknown = BackupStoreError::NoSuchBackup { id: "x".to_owned() };
        assert_eq!(backup_error_code(&unknown), ErrorCode::NoSuchBackup);
        let damaged = BackupStoreError::DamagedBlock {
            pack: PathBuf::from("packs/00.pack"),
            hash,
            reason: BlockDamage::CrcMismatch,
        };
        assert_eq!(backup_error_code(&damaged), ErrorCode::DamagedFile);
        let missing = BackupStoreError::MissingBlock {
            packs: PathBuf::from("packs"),
            hash,
        };
        assert_eq!(backup_error_code(&missing), ErrorCode::DamagedFile);
        let full = BackupStoreError::Fs(FsError::new(
            FsAction::Write,
            Path::new("packs/00.pack"),
            std::io::Error::other("no space left on device"),
        ));
        assert_eq!(backup_error_code(&full), ErrorCode::Storage);
    }

    #[test]
    fn a_refusal_carries_the_cause_of_an_io_error() {
        let e = WalArchiveError::Fs(FsError::new(
            FsAction::Fdatasync,
            Path::new("wal"),
            std::io::Error::other("no space left on device"),
        ));
        let End::Refused(code, message) = refusal(&e, Request::Ingest) else {
            panic!("an archive error must refuse the session");
        };
        assert_eq!(code, ErrorCode::Storage);
        assert!(message.contains("no space left on device"), "{message}");
    }
}
