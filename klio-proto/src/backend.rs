//! Backend (server → client) messages and their incremental decoder.

use bytes::{Buf, Bytes, BytesMut};

use crate::error::{ProtocolError, ServerError};

/// The default [`BackendDecoder`] limit on a message's declared length: 64 MiB.
pub const DEFAULT_MAX_MESSAGE_LEN: usize = 64 * 1024 * 1024;

/// A column of a `RowDescription`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDescription {
    /// Column name.
    pub name: String,
    /// OID of the table the column belongs to, or 0.
    pub table_oid: u32,
    /// Attribute number of the column in its table, or 0.
    pub column_id: i16,
    /// OID of the column's data type.
    pub type_oid: u32,
    /// Data type size (`pg_type.typlen`); negative for variable width.
    pub type_size: i16,
    /// Type modifier (`pg_attribute.atttypmod`).
    pub type_modifier: i32,
    /// Format code: 0 text, 1 binary.
    pub format: i16,
}

/// A message sent by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendMessage {
    /// `R` code 0: authentication succeeded.
    AuthenticationOk,
    /// `R` code 2.
    AuthenticationKerberosV5,
    /// `R` code 3: send the password in clear text.
    AuthenticationCleartextPassword,
    /// `R` code 5: send an MD5-hashed password with this salt.
    AuthenticationMd5Password {
        /// The salt.
        salt: [u8; 4],
    },
    /// `R` code 7.
    AuthenticationGss,
    /// `R` code 8.
    AuthenticationGssContinue(Bytes),
    /// `R` code 9.
    AuthenticationSspi,
    /// `R` code 10: SASL, with the mechanisms the server accepts in its order of preference.
    AuthenticationSasl {
        /// Mechanism names, e.g. `SCRAM-SHA-256`.
        mechanisms: Vec<String>,
    },
    /// `R` code 11: SASL challenge data.
    AuthenticationSaslContinue(Bytes),
    /// `R` code 12: SASL outcome data.
    AuthenticationSaslFinal(Bytes),
    /// `S`: a run-time parameter's current value.
    ParameterStatus {
        /// Parameter name.
        name: String,
        /// Its value.
        value: String,
    },
    /// `K`: cancellation key data.
    BackendKeyData {
        /// Backend process id.
        process_id: i32,
        /// Secret key.
        secret_key: i32,
    },
    /// `Z`: the server is ready for a new query; status `I` idle, `T` in a transaction, `E` failed
    /// transaction.
    ReadyForQuery {
        /// Transaction status byte.
        status: u8,
    },
    /// `T`: the columns of the rows that follow.
    RowDescription(Vec<FieldDescription>),
    /// `D`: one row; `None` is SQL NULL.
    DataRow(Vec<Option<Bytes>>),
    /// `C`: a command finished; the tag is e.g. `SELECT 1` or `IDENTIFY_SYSTEM`.
    CommandComplete {
        /// Command tag.
        tag: String,
    },
    /// `I`: the query string was empty.
    EmptyQueryResponse,
    /// `E`.
    ErrorResponse(ServerError),
    /// `N`.
    NoticeResponse(ServerError),
    /// `G`: the server is ready to receive COPY data.
    CopyInResponse {
        /// Overall format: 0 text, 1 binary.
        format: u8,
        /// Per-column format codes.
        column_formats: Vec<i16>,
    },
    /// `H`: the server starts sending COPY data.
    CopyOutResponse {
        /// Overall format: 0 text, 1 binary.
        format: u8,
        /// Per-column format codes.
        column_formats: Vec<i16>,
    },
    /// `W`: both directions carry COPY data (streaming replication).
    CopyBothResponse {
        /// Overall format: 0 text, 1 binary.
        format: u8,
        /// Per-column format codes.
        column_formats: Vec<i16>,
    },
    /// `d`: COPY data (for replication: an XLogData or keepalive, see
    /// [`crate::replication::ReplicationMessage`]).
    CopyData(Bytes),
    /// `c`: the end of COPY data from the server.
    CopyDone,
    /// `v`: the server does not support the requested minor version or some `_pq_.` options.
    NegotiateProtocolVersion {
        /// Newest minor protocol version the server supports.
        newest_minor: i32,
        /// Protocol options the server did not recognise.
        unrecognized: Vec<String>,
    },
    /// `A`: an asynchronous notification.
    NotificationResponse {
        /// Notifying backend's process id.
        process_id: i32,
        /// Channel name.
        channel: String,
        /// Payload.
        payload: String,
    },
}

impl BackendMessage {
    /// The message's tag byte.
    pub fn tag(&self) -> u8 {
        match self {
            Self::AuthenticationOk
            | Self::AuthenticationKerberosV5
            | Self::AuthenticationCleartextPassword
            | Self::AuthenticationMd5Password { .. }
            | Self::AuthenticationGss
            | Self::AuthenticationGssContinue(_)
            | Self::AuthenticationSspi
            | Self::AuthenticationSasl { .. }
            | Self::AuthenticationSaslContinue(_)
            | Self::AuthenticationSaslFinal(_) => b'R',
            Self::ParameterStatus { .. } => b'S',
            Self::BackendKeyData { .. } => b'K',
            Self::ReadyForQuery { .. } => b'Z',
            Self::RowDescription(_) => b'T',
            Self::DataRow(_) => b'D',
            Self::CommandComplete { .. } => b'C',
            Self::EmptyQueryResponse => b'I',
            Self::ErrorResponse(_) => b'E',
            Self::NoticeResponse(_) => b'N',
            Self::CopyInResponse { .. } => b'G',
            Self::CopyOutResponse { .. } => b'H',
            Self::CopyBothResponse { .. } => b'W',
            Self::CopyData(_) => b'd',
            Self::CopyDone => b'c',
            Self::NegotiateProtocolVersion { .. } => b'v',
            Self::NotificationResponse { .. } => b'A',
        }
    }
}

/// The server's one-byte answer to an `SSLRequest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslResponse {
    /// `S`: start the TLS handshake now.
    Accepted,
    /// `N`: the server does not do TLS; continue in plain text (or give up).
    Rejected,
}

/// Incremental decoder of backend messages.
///
/// Feed it the bytes read from the socket in a `BytesMut`; each [`decode`](Self::decode) call
/// takes one complete message off the front, or returns `Ok(None)` when more bytes are needed.
#[derive(Debug, Clone)]
pub struct BackendDecoder {
    max_message_len: usize,
}

impl Default for BackendDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl BackendDecoder {
    /// A decoder accepting messages up to [`DEFAULT_MAX_MESSAGE_LEN`].
    pub fn new() -> Self {
        Self::with_max_message_len(DEFAULT_MAX_MESSAGE_LEN)
    }

    /// A decoder accepting messages whose declared length (which counts the 4-byte length field
    /// itself but not the tag) is at most `max_message_len`.
    pub fn with_max_message_len(max_message_len: usize) -> Self {
        Self {
            max_message_len: max_message_len.max(4),
        }
    }

    /// The configured maximum declared length.
    pub fn max_message_len(&self) -> usize {
        self.max_message_len
    }

    /// Decodes one message from the front of `buf`.
    ///
    /// Returns `Ok(None)` (leaving `buf` untouched, apart from reserving room for the rest of the
    /// message) when `buf` does not yet hold a complete message. A declared length outside
    /// `4..=max_message_len` is rejected as soon as the 5-byte header is present, before anything
    /// is allocated. After an error the stream is unusable.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<BackendMessage>, ProtocolError> {
        if buf.len() < 5 {
            return Ok(None);
        }
        let tag = buf[0];
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
        if len < 4 || u64::from(len) > self.max_message_len as u64 {
            return Err(ProtocolError::MessageTooLarge {
                tag,
                len: u64::from(len),
                max: self.max_message_len as u64,
            });
        }
        // `len` fits in usize: it is at most max_message_len.
        let total = 1 + len as usize;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        let mut frame = buf.split_to(total);
        frame.advance(5);
        parse_message(tag, frame.freeze()).map(Some)
    }

    /// Decodes the single-byte answer to an `SSLRequest` (which is not a regular message).
    ///
    /// Any byte other than `S` or `N` is an error: a server that sends an `ErrorResponse` here
    /// predates protocol 3.0 or is not PostgreSQL.
    pub fn decode_ssl_response(
        &mut self,
        buf: &mut BytesMut,
    ) -> Result<Option<SslResponse>, ProtocolError> {
        let Some(&b) = buf.first() else {
            return Ok(None);
        };
        let r = match b {
            b'S' => SslResponse::Accepted,
            b'N' => SslResponse::Rejected,
            other => {
                return Err(ProtocolError::UnexpectedMessage {
                    expected: "the answer to SSLRequest ('S' or 'N')",
                    got: other,
                });
            }
        };
        buf.advance(1);
        Ok(Some(r))
    }
}

/// A bounds-checked reader over a message body.
#[derive(Debug)]
pub(crate) struct Reader {
    tag: u8,
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(tag: u8, buf: Bytes) -> Self {
        Self { tag, buf }
    }

    pub(crate) fn malformed(&self, reason: impl Into<String>) -> ProtocolError {
        ProtocolError::Malformed {
            tag: self.tag,
            reason: reason.into(),
        }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn need(&self, n: usize, what: &str) -> Result<(), ProtocolError> {
        if self.buf.len() < n {
            Err(self.malformed(format!(
                "truncated: {what} needs {n} bytes, {} left",
                self.buf.len()
            )))
        } else {
            Ok(())
        }
    }

    pub(crate) fn u8(&mut self, what: &str) -> Result<u8, ProtocolError> {
        self.need(1, what)?;
        Ok(self.buf.get_u8())
    }

    pub(crate) fn i16(&mut self, what: &str) -> Result<i16, ProtocolError> {
        self.need(2, what)?;
        Ok(self.buf.get_i16())
    }

    pub(crate) fn i32(&mut self, what: &str) -> Result<i32, ProtocolError> {
        self.need(4, what)?;
        Ok(self.buf.get_i32())
    }

    pub(crate) fn u32(&mut self, what: &str) -> Result<u32, ProtocolError> {
        self.need(4, what)?;
        Ok(self.buf.get_u32())
    }

    pub(crate) fn i64(&mut self, what: &str) -> Result<i64, ProtocolError> {
        self.need(8, what)?;
        Ok(self.buf.get_i64())
    }

    pub(crate) fn u64(&mut self, what: &str) -> Result<u64, ProtocolError> {
        self.need(8, what)?;
        Ok(self.buf.get_u64())
    }

    pub(crate) fn bytes(&mut self, n: usize, what: &str) -> Result<Bytes, ProtocolError> {
        self.need(n, what)?;
        Ok(self.buf.split_to(n))
    }

    /// The rest of the body (zero-copy).
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// A NUL-terminated byte string, without its terminator.
    pub(crate) fn cstr_bytes(&mut self, what: &str) -> Result<Bytes, ProtocolError> {
        let Some(nul) = self.buf.iter().position(|&b| b == 0) else {
            return Err(self.malformed(format!("{what} is not NUL-terminated")));
        };
        let s = self.buf.split_to(nul);
        self.buf.advance(1);
        Ok(s)
    }

    /// A NUL-terminated UTF-8 string.
    pub(crate) fn cstr(&mut self, what: &str) -> Result<String, ProtocolError> {
        let b = self.cstr_bytes(what)?;
        String::from_utf8(b.to_vec()).map_err(|_| ProtocolError::Utf8 { tag: self.tag })
    }

    /// A NUL-terminated string, invalid UTF-8 replaced (for error texts, which may arrive in
    /// the server's encoding before client_encoding takes effect).
    pub(crate) fn cstr_lossy(&mut self, what: &str) -> Result<String, ProtocolError> {
        let b = self.cstr_bytes(what)?;
        Ok(String::from_utf8_lossy(&b).into_owned())
    }

    /// A count field (non-negative int16) whose items each need at least `min_item` bytes:
    /// checked against the remaining bytes so that `Vec::with_capacity(count)` is bounded.
    pub(crate) fn count16(&mut self, min_item: usize, what: &str) -> Result<usize, ProtocolError> {
        let n = self.i16(what)?;
        let n = usize::try_from(n).map_err(|_| self.malformed(format!("negative {what} {n}")))?;
        if n.saturating_mul(min_item) > self.buf.len() {
            return Err(self.malformed(format!(
                "{what} {n} does not fit in the {} remaining bytes",
                self.buf.len()
            )));
        }
        Ok(n)
    }

    pub(crate) fn finish(&self) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.malformed(format!("{} unexpected trailing bytes", self.buf.len())))
        }
    }
}

fn parse_message(tag: u8, body: Bytes) -> Result<BackendMessage, ProtocolError> {
    let mut r = Reader::new(tag, body);
    let msg = match tag {
        b'R' => parse_auth(&mut r)?,
        b'S' => {
            let name = r.cstr("parameter name")?;
            let value = r.cstr("parameter value")?;
            BackendMessage::ParameterStatus { name, value }
        }
        b'K' => {
            let process_id = r.i32("process id")?;
            let secret_key = r.i32("secret key")?;
            BackendMessage::BackendKeyData {
                process_id,
                secret_key,
            }
        }
        b'Z' => {
            let status = r.u8("transaction status")?;
            if !matches!(status, b'I' | b'T' | b'E') {
                return Err(r.malformed(format!(
                    "transaction status {status:#04x} is not 'I', 'T' or 'E'"
                )));
            }
            BackendMessage::ReadyForQuery { status }
        }
        b'T' => {
            // name (>= 1 byte NUL) + 18 bytes of fixed fields.
            let n = r.count16(19, "field count")?;
            let mut fields = Vec::with_capacity(n);
            for _ in 0..n {
                fields.push(FieldDescription {
                    name: r.cstr("field name")?,
                    table_oid: r.u32("table oid")?,
                    column_id: r.i16("column number")?,
                    type_oid: r.u32("type oid")?,
                    type_size: r.i16("type size")?,
                    type_modifier: r.i32("type modifier")?,
                    format: r.i16("format code")?,
                });
            }
            BackendMessage::RowDescription(fields)
        }
        b'D' => {
            let n = r.count16(4, "column count")?;
            let mut cols = Vec::with_capacity(n);
            for _ in 0..n {
                let len = r.i32("value length")?;
                if len == -1 {
                    cols.push(None);
                } else {
                    let len = usize::try_from(len)
                        .map_err(|_| r.malformed(format!("negative value length {len}")))?;
                    cols.push(Some(r.bytes(len, "column value")?));
                }
            }
            BackendMessage::DataRow(cols)
        }
        b'C' => BackendMessage::CommandComplete {
            tag: r.cstr("command tag")?,
        },
        b'I' => BackendMessage::EmptyQueryResponse,
        b'E' => BackendMessage::ErrorResponse(parse_error_fields(&mut r)?),
        b'N' => BackendMessage::NoticeResponse(parse_error_fields(&mut r)?),
        b'G' | b'H' | b'W' => {
            let format = r.u8("copy format")?;
            let n = r.count16(2, "column count")?;
            let mut column_formats = Vec::with_capacity(n);
            for _ in 0..n {
                column_formats.push(r.i16("column format")?);
            }
            match tag {
                b'G' => BackendMessage::CopyInResponse {
                    format,
                    column_formats,
                },
                b'H' => BackendMessage::CopyOutResponse {
                    format,
                    column_formats,
                },
                _ => BackendMessage::CopyBothResponse {
                    format,
                    column_formats,
                },
            }
        }
        b'd' => BackendMessage::CopyData(r.rest()),
        b'c' => BackendMessage::CopyDone,
        b'v' => {
            let newest_minor = r.i32("newest minor version")?;
            let n = r.i32("option count")?;
            let n = usize::try_from(n)
                .ok()
                .filter(|&n| n <= r.remaining())
                .ok_or_else(|| r.malformed(format!("option count {n} out of range")))?;
            let mut unrecognized = Vec::with_capacity(n);
            for _ in 0..n {
                unrecognized.push(r.cstr("option name")?);
            }
            BackendMessage::NegotiateProtocolVersion {
                newest_minor,
                unrecognized,
            }
        }
        b'A' => BackendMessage::NotificationResponse {
            process_id: r.i32("process id")?,
            channel: r.cstr("channel")?,
            payload: r.cstr("payload")?,
        },
        other => return Err(ProtocolError::UnknownMessage { tag: other }),
    };
    r.finish()?;
    Ok(msg)
}

fn parse_auth(r: &mut Reader) -> Result<BackendMessage, ProtocolError> {
    let code = r.i32("authentication code")?;
    Ok(match code {
        0 => BackendMessage::AuthenticationOk,
        2 => BackendMessage::AuthenticationKerberosV5,
        3 => BackendMessage::AuthenticationCleartextPassword,
        5 => {
            let s = r.bytes(4, "md5 salt")?;
            BackendMessage::AuthenticationMd5Password {
                salt: [s[0], s[1], s[2], s[3]],
            }
        }
        7 => BackendMessage::AuthenticationGss,
        8 => BackendMessage::AuthenticationGssContinue(r.rest()),
        9 => BackendMessage::AuthenticationSspi,
        10 => {
            let mut mechanisms = Vec::new();
            loop {
                let m = r.cstr("SASL mechanism")?;
                if m.is_empty() {
                    break;
                }
                mechanisms.push(m);
            }
            BackendMessage::AuthenticationSasl { mechanisms }
        }
        11 => BackendMessage::AuthenticationSaslContinue(r.rest()),
        12 => BackendMessage::AuthenticationSaslFinal(r.rest()),
        other => return Err(r.malformed(format!("unknown authentication request code {other}"))),
    })
}

fn parse_error_fields(r: &mut Reader) -> Result<ServerError, ProtocolError> {
    let mut e = ServerError::default();
    let mut localized_severity = None;
    let mut have_v = false;
    loop {
        let field = r.u8("field type")?;
        if field == 0 {
            break;
        }
        let value = r.cstr_lossy("field value")?;
        match field {
            b'S' => localized_severity = Some(value),
            b'V' => {
                e.severity = value;
                have_v = true;
            }
            b'C' => e.code = value,
            b'M' => e.message = value,
            b'D' => e.detail = Some(value),
            b'H' => e.hint = Some(value),
            b'W' => e.context = Some(value),
            other => e.other.push((other, value)),
        }
    }
    match localized_severity {
        Some(s) if have_v => e.other.push((b'S', s)),
        Some(s) => e.severity = s,
        None => {}
    }
    Ok(e)
}
