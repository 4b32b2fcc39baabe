//! `BASE_BACKUP` over a replication connection: the simple-query flow with result sets before
//! and after one CopyOut, decoded by `klio_proto::base_backup`.
//!
//! [`ReplicationConnection::base_backup`] returns once the start checkpoint is done, with the
//! start position and the tablespaces; [`BaseBackupStream::next_event`] then yields the
//! archives, progress and manifest until `CopyDone`; [`BaseBackupStream::finish`] reads the end
//! position and the command's outcome. Only `finish` returning `Ok` means the backup is good:
//! PostgreSQL reports page checksum failures after everything was sent. The warnings it sends
//! along the way (one per damaged block, naming the file) are kept, up to
//! [`MAX_KEPT_WARNINGS`], so that a failed backup can say which files were damaged.

use klio_proto::base_backup::{
    BackupPosition, BaseBackupFailure, BaseBackupOptions, CopyStreamDecoder, CopyStreamEvent,
    Tablespace,
};
use klio_proto::{BackendMessage, ProtocolError, ServerError, SimpleQuery};

use super::ReplicationConnection;
use crate::error::ConnectionError;

const COMMAND: &str = "BASE_BACKUP";

/// The most `WARNING` notices a [`BaseBackupStream`] keeps: enough to name the damaged files
/// of a failed backup, bounded whatever the number of damaged blocks.
pub const MAX_KEPT_WARNINGS: usize = 100;

/// A running `BASE_BACKUP`: holds the connection until [`finish`](Self::finish).
#[derive(Debug)]
pub struct BaseBackupStream<'c> {
    conn: &'c mut ReplicationConnection,
    start: BackupPosition,
    tablespaces: Vec<Tablespace>,
    decoder: CopyStreamDecoder,
    copy_done: bool,
    warnings: Vec<ServerError>,
}

/// A server error turned into a base backup failure; other protocol errors stay as they are.
fn failure(error: ProtocolError) -> ConnectionError {
    match error {
        ProtocolError::Server(e) => BaseBackupFailure::classify(*e).into(),
        other => other.into(),
    }
}

impl ReplicationConnection {
    /// Sends `BASE_BACKUP` with `options` and waits for the start checkpoint, the start
    /// position and the tablespace list; the copystream follows on the returned stream.
    pub async fn base_backup(
        &mut self,
        options: &BaseBackupOptions,
    ) -> Result<BaseBackupStream<'_>, ConnectionError> {
        let command = options.command();
        klio_proto::frontend::query(&command, &mut self.wbuf)?;
        self.flush_writes().await?;
        let mut q = SimpleQuery::new();
        loop {
            match self.read_message().await? {
                BackendMessage::CopyOutResponse { .. } => break,
                BackendMessage::NoticeResponse(n) => {
                    tracing::info!(server = %self.target, "{n}");
                }
                other => {
                    if let Some(r) = q.handle(other).map_err(failure)? {
                        return Err(ConnectionError::UnexpectedResult {
                            command,
                            reason: format!(
                                "the server answered with {} result sets and no COPY stream",
                                r.sets.len()
                            ),
                        });
                    }
                }
            }
        }
        let sets = q.take_completed_sets();
        let [start, tablespaces] = sets.as_slice() else {
            return Err(ConnectionError::UnexpectedResult {
                command,
                reason: format!(
                    "expected 2 result sets (start position, tablespaces) before the COPY stream, got {}",
                    sets.len()
                ),
            });
        };
        let start = BackupPosition::from_result(start)?;
        let tablespaces = Tablespace::list_from_result(tablespaces)?;
        Ok(BaseBackupStream {
            conn: self,
            start,
            tablespaces,
            decoder: CopyStreamDecoder::new(),
            copy_done: false,
            warnings: Vec::new(),
        })
    }
}

impl BaseBackupStream<'_> {
    /// Where the backup starts: the redo point of its start checkpoint, and its timeline.
    pub fn start(&self) -> BackupPosition {
        self.start
    }

    /// The tablespaces, the main data directory last.
    pub fn tablespaces(&self) -> &[Tablespace] {
        &self.tablespaces
    }

    /// The `WARNING` notices PostgreSQL sent during the stream so far (the first
    /// [`MAX_KEPT_WARNINGS`]), such as "checksum verification failed in file ...".
    pub fn warnings(&self) -> &[ServerError] {
        &self.warnings
    }

    /// The next copystream event, `None` after `CopyDone`. An error the server raises during
    /// the stream is read up to `ReadyForQuery` and returned as
    /// [`ConnectionError::BaseBackup`].
    pub async fn next_event(&mut self) -> Result<Option<CopyStreamEvent>, ConnectionError> {
        if self.copy_done {
            return Ok(None);
        }
        loop {
            match self.conn.read_message().await? {
                BackendMessage::CopyData(payload) => {
                    return Ok(Some(self.decoder.decode(payload)?));
                }
                BackendMessage::CopyDone => {
                    self.decoder.finish()?;
                    self.copy_done = true;
                    return Ok(None);
                }
                BackendMessage::NoticeResponse(n) => {
                    if n.severity == "WARNING" {
                        tracing::warn!(server = %self.conn.target, "{n}");
                        if self.warnings.len() < MAX_KEPT_WARNINGS {
                            self.warnings.push(n);
                        }
                    } else {
                        tracing::info!(server = %self.conn.target, "{n}");
                    }
                }
                BackendMessage::ErrorResponse(e) => {
                    // Read up to ReadyForQuery so that the connection can run another command.
                    let mut q = SimpleQuery::new();
                    q.handle(BackendMessage::ErrorResponse(e))?;
                    loop {
                        let msg = self.conn.read_message().await?;
                        match q.handle(msg) {
                            Ok(None) => {}
                            Ok(Some(_)) => {
                                return Err(ProtocolError::UnexpectedMessage {
                                    expected: "the ErrorResponse to be reported at ReadyForQuery",
                                    got: b'Z',
                                }
                                .into());
                            }
                            Err(e) => return Err(failure(e)),
                        }
                    }
                }
                other => {
                    return Err(ProtocolError::UnexpectedMessage {
                        expected: "CopyData or CopyDone of the base backup",
                        got: other.tag(),
                    }
                    .into());
                }
            }
        }
    }

    /// Reads the end position and the command's outcome. Events not read yet are read and
    /// dropped. `Ok` only if PostgreSQL completed the backup; a page checksum failure is
    /// [`BaseBackupFailure::ChecksumFailure`].
    pub async fn finish(mut self) -> Result<BackupPosition, ConnectionError> {
        while self.next_event().await?.is_some() {}
        let mut q = SimpleQuery::new();
        loop {
            let msg = self.conn.read_message().await?;
            if let Some(r) = q.handle(msg).map_err(failure)? {
                let mut with_rows = r.sets.iter().filter(|s| !s.columns.is_empty());
                let (Some(end), None) = (with_rows.next(), with_rows.next()) else {
                    return Err(ConnectionError::UnexpectedResult {
                        command: COMMAND.to_owned(),
                        reason: "expected one result set (the end position) after the COPY stream"
                            .to_owned(),
                    });
                };
                return Ok(BackupPosition::from_result(end)?);
            }
        }
    }
}
