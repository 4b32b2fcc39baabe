//! Frontend (client → server) messages. Each function appends one complete message to `out`.

use bytes::{BufMut, BytesMut};

use crate::error::ProtocolError;

/// Protocol version 3.0 as sent in the startup message.
pub const PROTOCOL_VERSION_3_0: i32 = 196_608;
/// The `SSLRequest` code.
pub const SSL_REQUEST_CODE: i32 = 80_877_103;

/// Writes `tag`, a length placeholder, calls `body`, then patches the length.
fn message(tag: Option<u8>, out: &mut BytesMut, body: impl FnOnce(&mut BytesMut)) {
    if let Some(tag) = tag {
        out.put_u8(tag);
    }
    let start = out.len();
    out.put_i32(0);
    body(out);
    let len = out.len() - start;
    // Lengths beyond i32::MAX cannot be represented; callers never build such messages
    // (CopyData payloads are WAL chunks), and the server would reject them anyway.
    let len = i32::try_from(len).unwrap_or(i32::MAX);
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

fn check_nul(s: &[u8], what: &'static str) -> Result<(), ProtocolError> {
    if s.contains(&0) {
        Err(ProtocolError::InteriorNul { what })
    } else {
        Ok(())
    }
}

/// `SSLRequest`: ask the server to switch to TLS. The answer is one byte, see
/// [`crate::BackendDecoder::decode_ssl_response`].
pub fn ssl_request(out: &mut BytesMut) {
    message(None, out, |b| b.put_i32(SSL_REQUEST_CODE));
}

/// `StartupMessage` for protocol 3.0 with the given parameters (`user`, `database`,
/// `replication` = `true`, `application_name`, ...).
///
/// Names or values containing NUL bytes are rejected (they would smuggle extra parameters).
pub fn startup(params: &[(&str, &str)], out: &mut BytesMut) -> Result<(), ProtocolError> {
    for (k, v) in params {
        check_nul(k.as_bytes(), "a startup parameter name")?;
        check_nul(v.as_bytes(), "a startup parameter value")?;
        if k.is_empty() {
            return Err(ProtocolError::InteriorNul {
                what: "an empty startup parameter name (it would end the list)",
            });
        }
    }
    message(None, out, |b| {
        b.put_i32(PROTOCOL_VERSION_3_0);
        for (k, v) in params {
            b.put_slice(k.as_bytes());
            b.put_u8(0);
            b.put_slice(v.as_bytes());
            b.put_u8(0);
        }
        b.put_u8(0);
    });
    Ok(())
}

/// `PasswordMessage`: a cleartext or md5-hashed password (a terminating NUL is added).
pub fn password(pw: &[u8], out: &mut BytesMut) {
    message(Some(b'p'), out, |b| {
        b.put_slice(pw);
        b.put_u8(0);
    });
}

/// `SASLInitialResponse`: the chosen mechanism and the client-first message.
pub fn sasl_initial_response(mechanism: &str, data: &[u8], out: &mut BytesMut) {
    message(Some(b'p'), out, |b| {
        b.put_slice(mechanism.as_bytes());
        b.put_u8(0);
        b.put_i32(i32::try_from(data.len()).unwrap_or(i32::MAX));
        b.put_slice(data);
    });
}

/// `SASLResponse`: a later SASL message (the client-final message for SCRAM).
pub fn sasl_response(data: &[u8], out: &mut BytesMut) {
    message(Some(b'p'), out, |b| b.put_slice(data));
}

/// `Query`: a simple query (or replication command). Interior NUL bytes are rejected.
pub fn query(sql: &str, out: &mut BytesMut) -> Result<(), ProtocolError> {
    check_nul(sql.as_bytes(), "the query string")?;
    message(Some(b'Q'), out, |b| {
        b.put_slice(sql.as_bytes());
        b.put_u8(0);
    });
    Ok(())
}

/// `CopyData` with the given payload (e.g. an encoded standby status update).
pub fn copy_data(data: &[u8], out: &mut BytesMut) {
    message(Some(b'd'), out, |b| b.put_slice(data));
}

/// `CopyDone`.
pub fn copy_done(out: &mut BytesMut) {
    message(Some(b'c'), out, |_| {});
}

/// `CopyFail` with an error message (interior NULs are replaced by spaces).
pub fn copy_fail(reason: &str, out: &mut BytesMut) {
    message(Some(b'f'), out, |b| {
        b.extend(reason.bytes().map(|c| if c == 0 { b' ' } else { c }));
        b.put_u8(0);
    });
}

/// `Terminate`.
pub fn terminate(out: &mut BytesMut) {
    message(Some(b'X'), out, |_| {});
}
