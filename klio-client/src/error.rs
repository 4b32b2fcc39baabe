//! Errors of the PostgreSQL replication connection.

use std::io;

use klio_proto::ProtocolError;

/// A replication connection failed or misbehaved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// Connection settings are invalid.
    #[error(transparent)]
    Settings(#[from] crate::conn_string::ConnStringError),
    /// The server could not be reached.
    #[error(
        "could not connect to {target} (is PostgreSQL running and accepting connections there?)"
    )]
    Connect {
        /// Host and port, or socket path.
        target: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The connection was not established in time.
    #[error("timed out connecting to {target}")]
    Timeout {
        /// Host and port, or socket path.
        target: String,
    },
    /// TLS could not be set up.
    #[error("TLS")]
    Tls(#[source] TlsFailure),
    /// TLS is required but the server does not offer it.
    #[error(
        "server at {target} does not support TLS, but sslmode requires it: enable ssl in postgresql.conf or use sslmode=prefer"
    )]
    TlsNotOffered {
        /// Host and port.
        target: String,
    },
    /// The server is not of the kind `target_session_attrs` asks for.
    #[error("server at {target} is not what target_session_attrs={wanted} asks for: {found}")]
    WrongSession {
        /// Host and port, or socket path.
        target: String,
        /// What the settings ask for.
        wanted: crate::conn_string::TargetSessionAttrs,
        /// What the server is.
        found: SessionMismatch,
    },
    /// None of several servers could be used; each failure was logged as it happened.
    #[error(
        "none of the {tried} connection attempts to the servers of the connection settings succeeded; the last one failed"
    )]
    NoServerUsable {
        /// Attempts made (servers, twice for `prefer-standby`).
        tried: usize,
        /// The last attempt's error.
        #[source]
        last: Box<Self>,
    },
    /// Reading or writing the established connection failed.
    #[error("connection to the server lost")]
    Io(#[from] io::Error),
    /// The server closed the connection.
    #[error("server closed the connection unexpectedly")]
    Closed,
    /// The server or the byte stream broke the protocol, or the server reported an error.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The server refused a replication command (pg_receivewal's words for it).
    #[error("could not send replication command \"{command}\"")]
    Refused {
        /// The command, as pg_receivewal names it.
        command: String,
        /// The server's error.
        #[source]
        source: Box<klio_proto::ServerError>,
    },
    /// A `BASE_BACKUP` copystream broke its format or order.
    #[error(transparent)]
    BaseBackupStream(#[from] klio_proto::base_backup::CopyStreamError),
    /// The server ended `BASE_BACKUP` with an error (a checksum failure among them).
    #[error(transparent)]
    BaseBackup(#[from] klio_proto::base_backup::BaseBackupFailure),
    /// The server's `wal_segment_size` is not a valid WAL segment size.
    #[error("unexpected result for SHOW wal_segment_size")]
    SegmentSize(#[source] klio_wal::InvalidSegmentSize),
    /// A command returned something other than what it should.
    #[error("unexpected result for {command}: {reason}")]
    UnexpectedResult {
        /// The command sent.
        command: String,
        /// What was wrong with the answer.
        reason: String,
    },
}

/// How a server differs from what `target_session_attrs` asks for, in libpq's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionMismatch {
    /// Writes are refused (hot standby, or `default_transaction_read_only`).
    #[error("session is read-only")]
    ReadOnly,
    /// Writes are accepted.
    #[error("session is not read-only")]
    NotReadOnly,
    /// The server is a hot standby.
    #[error("server is in hot standby mode")]
    HotStandby,
    /// The server is not a hot standby.
    #[error("server is not in hot standby mode")]
    NotHotStandby,
    /// The server does not report the parameter that tells (before PostgreSQL 14).
    #[error("server does not report {0} (PostgreSQL 14 and later do)")]
    Unreported(&'static str),
}

/// What part of TLS to PostgreSQL failed, and the library's reason when there is one.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct TlsFailure {
    /// What could not be done, naming the file or host.
    pub what: String,
    /// Why, when rustls or the OS said so.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ConnectionError {
    /// The error of replication command `command`: a refusal, if the server refused it.
    pub(crate) fn of_command(self, command: &str) -> Self {
        match self {
            Self::Protocol(ProtocolError::Server(source)) => Self::Refused {
                command: command.to_owned(),
                source,
            },
            other => other,
        }
    }

    /// TLS failed at `what` (naming the file or host).
    pub(crate) fn tls(what: impl Into<String>) -> Self {
        Self::Tls(TlsFailure {
            what: what.into(),
            source: None,
        })
    }

    /// TLS failed at `what` because of `source`.
    pub(crate) fn tls_because(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Tls(TlsFailure {
            what: what.into(),
            source: Some(source.into()),
        })
    }

    /// The server's own error, when the server reported one (SQLSTATE and message).
    pub fn server_error(&self) -> Option<&klio_proto::ServerError> {
        match self {
            Self::Protocol(ProtocolError::Server(e)) | Self::Refused { source: e, .. } => Some(e),
            Self::BaseBackup(failure) => Some(failure.server_error()),
            _ => None,
        }
    }
}
