//! Errors of the protocol codecs and state machines.

use std::fmt;

/// Something went wrong while speaking the PostgreSQL protocol.
///
/// Decoding errors mean the byte stream can no longer be trusted: the caller should drop the
/// connection. [`ProtocolError::Server`] is the exception: the server reported an error in an
/// orderly way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A well-formed message arrived at a point where the protocol does not allow it.
    #[error(
        "unexpected message {} from the server while waiting for {expected}; the connection is out of sync and must be closed",
        tag_display(*.got)
    )]
    UnexpectedMessage {
        /// What the state machine was waiting for.
        expected: &'static str,
        /// The tag byte of the message that arrived.
        got: u8,
    },
    /// A message declared a length above the configured maximum (or below the minimum of 4).
    #[error(
        "message {} declares a length of {len} bytes, outside the allowed 4..={max}; the peer is not a PostgreSQL server speaking protocol 3.0, or the stream is corrupt (raise the decoder's max_message_len if this is legitimate)",
        tag_display(*.tag)
    )]
    MessageTooLarge {
        /// The tag byte of the message.
        tag: u8,
        /// The declared length (including the length field itself).
        len: u64,
        /// The configured maximum.
        max: u64,
    },
    /// The message's body does not match its format.
    #[error("malformed message {}: {reason}", tag_display(*.tag))]
    Malformed {
        /// The tag byte of the message.
        tag: u8,
        /// What was wrong.
        reason: String,
    },
    /// A message tag this decoder does not know.
    #[error(
        "unknown message type {} from the server; is the peer really a PostgreSQL server?",
        tag_display(*.tag)
    )]
    UnknownMessage {
        /// The tag byte.
        tag: u8,
    },
    /// A string field was not valid UTF-8.
    #[error(
        "message {} contains a string that is not valid UTF-8; set client_encoding=UTF8 in the startup parameters",
        tag_display(*.tag)
    )]
    Utf8 {
        /// The tag byte of the message.
        tag: u8,
    },
    /// A string we were asked to send contains a NUL byte, which the protocol cannot carry.
    #[error("{what} contains a NUL byte, which the PostgreSQL protocol cannot carry")]
    InteriorNul {
        /// Which value was rejected.
        what: &'static str,
    },
    /// The server reported an error (boxed to keep `Result`s small; field access auto-derefs:
    /// `ProtocolError::Server(e) => e.code`).
    #[error("{0}")]
    Server(Box<ServerError>),
    /// The server asked for an authentication method Klio does not implement.
    #[error(
        "unsupported authentication: {0}; configure pg_hba.conf to use scram-sha-256, md5, password or trust for this replication connection"
    )]
    AuthUnsupported(String),
    /// Authentication failed on the client side (for example the server's SCRAM proof was wrong).
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The server asked for a password but none was configured.
    #[error(
        "the server requested {method} password authentication but no password is configured; set PGPASSWORD or add password=... to the connection string (or a .pgpass entry)"
    )]
    MissingPassword {
        /// The method the server asked for.
        method: &'static str,
    },
    /// A result column does not hold an LSN.
    #[error("unexpected result for {command}: column {column:?} is not an LSN")]
    BadLsn {
        /// The command.
        command: &'static str,
        /// The column.
        column: String,
        /// Why the text does not parse.
        #[source]
        source: klio_wal::ParseLsnError,
    },
    /// A result column holds timeline 0.
    #[error("unexpected result for {command}: column {column:?} is not a timeline")]
    BadTimeline {
        /// The command.
        command: &'static str,
        /// The column.
        column: String,
        /// Why the number is not a timeline.
        #[source]
        source: klio_wal::InvalidTimeline,
    },
    /// A replication command's result set did not have the expected shape or values.
    #[error("unexpected result for {command}: {reason}")]
    BadResult {
        /// The command whose result was parsed.
        command: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// A size setting (as printed by `SHOW`) could not be parsed.
    #[error(
        "cannot parse size setting {input:?}: expected a number with an optional unit B, kB, MB, GB or TB"
    )]
    BadSize {
        /// The rejected input.
        input: String,
    },
}

/// Formats a tag byte as `'Z'` when printable, else `0x5a`.
pub(crate) fn tag_display(tag: u8) -> String {
    if tag.is_ascii_graphic() {
        format!("'{}'", tag as char)
    } else {
        format!("0x{tag:02x}")
    }
}

/// An `ErrorResponse` or `NoticeResponse` from the server.
///
/// Parsed from the message's fields; see "Error and Notice Message Fields" in the PostgreSQL
/// protocol documentation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerError {
    /// Non-localized severity (`V`) when present (PostgreSQL 9.6+), else the localized one (`S`):
    /// `ERROR`, `FATAL`, `PANIC`, `WARNING`, `NOTICE`, `DEBUG`, `INFO` or `LOG`.
    pub severity: String,
    /// The SQLSTATE code (`C`), like `28P01`.
    pub code: String,
    /// The primary message (`M`).
    pub message: String,
    /// Detail (`D`).
    pub detail: Option<String>,
    /// Hint (`H`).
    pub hint: Option<String>,
    /// Context (`W`).
    pub context: Option<String>,
    /// Every other field, as (field type byte, value), in arrival order.
    pub other: Vec<(u8, String)>,
}

impl ServerError {
    /// Whether the severity is `FATAL` or `PANIC` (the server closes the connection).
    pub fn is_fatal(&self) -> bool {
        self.severity == "FATAL" || self.severity == "PANIC"
    }

    /// The value of another field (for example `b'R'` for the routine), if present.
    pub fn field(&self, field: u8) -> Option<&str> {
        self.other
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, v)| v.as_str())
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // As libpq shows a server's error, which is what PostgreSQL's users (and the scripts
        // around pg_receivewal) know: the severity, two spaces, the message, and a line for
        // each of the detail and the hint.
        write!(f, "{}:  {}", self.severity, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, "\nDETAIL:  {d}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "\nHINT:  {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ServerError {}

impl From<ServerError> for ProtocolError {
    fn from(e: ServerError) -> Self {
        Self::Server(Box::new(e))
    }
}
