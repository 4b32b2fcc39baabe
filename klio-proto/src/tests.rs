//! Unit and property tests with byte vectors.

use bytes::{BufMut, Bytes, BytesMut};
use klio_wal::{Lsn, TimelineId};
use proptest::prelude::*;

use crate::replication::*;
use crate::*;

/// One backend message: tag, length, body.
fn msg(tag: u8, body: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u8(tag);
    b.put_i32(i32::try_from(body.len() + 4).unwrap());
    b.put_slice(body);
    b
}

fn auth(code: i32, extra: &[u8]) -> BytesMut {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(extra);
    msg(b'R', &body)
}

fn decode_one(bytes: &[u8]) -> Result<BackendMessage, ProtocolError> {
    let mut buf = BytesMut::from(bytes);
    let m = BackendDecoder::new()
        .decode(&mut buf)?
        .expect("complete message");
    assert!(buf.is_empty(), "decoder left {} bytes", buf.len());
    Ok(m)
}

fn row_description(names: &[&str]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_i16(i16::try_from(names.len()).unwrap());
    for n in names {
        b.put_slice(n.as_bytes());
        b.put_u8(0);
        b.put_u32(0); // table oid
        b.put_i16(0); // column
        b.put_u32(25); // text
        b.put_i16(-1);
        b.put_i32(-1);
        b.put_i16(0);
    }
    msg(b'T', &b)
}

fn data_row(values: &[Option<&[u8]>]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_i16(i16::try_from(values.len()).unwrap());
    for v in values {
        match v {
            None => b.put_i32(-1),
            Some(v) => {
                b.put_i32(i32::try_from(v.len()).unwrap());
                b.put_slice(v);
            }
        }
    }
    msg(b'D', &b)
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn command_complete(tag: &str) -> BytesMut {
    msg(b'C', &cstr(tag))
}

fn ready() -> BytesMut {
    msg(b'Z', b"I")
}

fn error_fields(fields: &[(u8, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (f, v) in fields {
        b.push(*f);
        b.extend_from_slice(v.as_bytes());
        b.push(0);
    }
    b.push(0);
    b
}

/// Runs a whole stream of messages through a SimpleQuery.
fn run_query(stream: &[BytesMut]) -> Result<QueryResult, ProtocolError> {
    let mut buf = BytesMut::new();
    for m in stream {
        buf.extend_from_slice(m);
    }
    let mut dec = BackendDecoder::new();
    let mut q = SimpleQuery::new();
    while let Some(m) = dec.decode(&mut buf)? {
        if let Some(r) = q.handle(m)? {
            assert!(buf.is_empty());
            return Ok(r);
        }
    }
    panic!("no ReadyForQuery");
}

/// Splits frontend bytes into (tag, body) frames.
fn frames(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let tag = b[0];
        let len = u32::from_be_bytes(b[1..5].try_into().unwrap()) as usize;
        out.push((tag, b[5..1 + len].to_vec()));
        b = &b[1 + len..];
    }
    out
}

// ---------------------------------------------------------------- backend decoding

#[test]
fn decodes_authentication_requests() {
    assert_eq!(
        decode_one(&auth(0, &[])).unwrap(),
        BackendMessage::AuthenticationOk
    );
    assert_eq!(
        decode_one(&auth(3, &[])).unwrap(),
        BackendMessage::AuthenticationCleartextPassword
    );
    assert_eq!(
        decode_one(&auth(5, &[1, 2, 3, 4])).unwrap(),
        BackendMessage::AuthenticationMd5Password { salt: [1, 2, 3, 4] }
    );
    assert_eq!(
        decode_one(&auth(10, b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0")).unwrap(),
        BackendMessage::AuthenticationSasl {
            mechanisms: vec!["SCRAM-SHA-256-PLUS".into(), "SCRAM-SHA-256".into()]
        }
    );
    assert_eq!(
        decode_one(&auth(11, b"r=abc,s=c2FsdA==,i=4096")).unwrap(),
        BackendMessage::AuthenticationSaslContinue(Bytes::from_static(b"r=abc,s=c2FsdA==,i=4096"))
    );
    assert_eq!(
        decode_one(&auth(12, b"v=xyz")).unwrap(),
        BackendMessage::AuthenticationSaslFinal(Bytes::from_static(b"v=xyz"))
    );
    assert_eq!(
        decode_one(&auth(7, &[])).unwrap(),
        BackendMessage::AuthenticationGss
    );
    assert!(matches!(
        decode_one(&auth(5, &[1, 2, 3])),
        Err(ProtocolError::Malformed { tag: b'R', .. })
    ));
    assert!(matches!(
        decode_one(&auth(99, &[])),
        Err(ProtocolError::Malformed { tag: b'R', .. })
    ));
    // SASL list without its terminating empty string.
    assert!(decode_one(&auth(10, b"SCRAM-SHA-256\0")).is_err());
    // Trailing garbage after AuthenticationOk.
    assert!(decode_one(&auth(0, &[0])).is_err());
}

#[test]
fn decodes_startup_messages() {
    assert_eq!(
        decode_one(&msg(b'S', b"server_version\x0015.4\0")).unwrap(),
        BackendMessage::ParameterStatus {
            name: "server_version".into(),
            value: "15.4".into()
        }
    );
    assert_eq!(
        decode_one(&msg(b'K', &[0, 0, 0x30, 0x39, 0xff, 0xff, 0xff, 0xfe])).unwrap(),
        BackendMessage::BackendKeyData {
            process_id: 12345,
            secret_key: -2
        }
    );
    assert_eq!(
        decode_one(&msg(b'Z', b"I")).unwrap(),
        BackendMessage::ReadyForQuery { status: b'I' }
    );
    assert!(decode_one(&msg(b'Z', b"X")).is_err());
    assert!(decode_one(&msg(b'Z', b"")).is_err());
    let mut v = Vec::new();
    v.extend_from_slice(&0i32.to_be_bytes());
    v.extend_from_slice(&1i32.to_be_bytes());
    v.extend_from_slice(b"_pq_.foo\0");
    assert_eq!(
        decode_one(&msg(b'v', &v)).unwrap(),
        BackendMessage::NegotiateProtocolVersion {
            newest_minor: 0,
            unrecognized: vec!["_pq_.foo".into()]
        }
    );
    assert!(matches!(
        decode_one(&msg(b'S', b"a\0\xff\xfe\0")),
        Err(ProtocolError::Utf8 { tag: b'S' })
    ));
}

#[test]
fn decodes_query_messages() {
    let m = decode_one(&row_description(&["systemid", "timeline"])).unwrap();
    let BackendMessage::RowDescription(cols) = m else {
        panic!("{m:?}")
    };
    assert_eq!(cols.len(), 2);
    assert_eq!(cols[1].name, "timeline");
    assert_eq!(cols[1].type_oid, 25);
    assert_eq!(cols[1].type_size, -1);

    assert_eq!(
        decode_one(&data_row(&[Some(b"abc"), None, Some(b"")])).unwrap(),
        BackendMessage::DataRow(vec![
            Some(Bytes::from_static(b"abc")),
            None,
            Some(Bytes::new())
        ])
    );
    assert_eq!(
        decode_one(&command_complete("IDENTIFY_SYSTEM")).unwrap(),
        BackendMessage::CommandComplete {
            tag: "IDENTIFY_SYSTEM".into()
        }
    );
    assert_eq!(
        decode_one(&msg(b'I', b"")).unwrap(),
        BackendMessage::EmptyQueryResponse
    );
    // A value length of -2, and a value running past the end.
    let mut b = vec![0, 1];
    b.extend_from_slice(&(-2i32).to_be_bytes());
    assert!(decode_one(&msg(b'D', &b)).is_err());
    let mut b = vec![0, 1];
    b.extend_from_slice(&10i32.to_be_bytes());
    b.extend_from_slice(b"abc");
    assert!(decode_one(&msg(b'D', &b)).is_err());
}

#[test]
fn decodes_copy_messages() {
    assert_eq!(
        decode_one(&msg(b'W', &[0, 0, 0])).unwrap(),
        BackendMessage::CopyBothResponse {
            format: 0,
            column_formats: vec![]
        }
    );
    assert_eq!(
        decode_one(&msg(b'H', &[0, 0, 1, 0, 0])).unwrap(),
        BackendMessage::CopyOutResponse {
            format: 0,
            column_formats: vec![0]
        }
    );
    assert_eq!(
        decode_one(&msg(b'G', &[1, 0, 0])).unwrap(),
        BackendMessage::CopyInResponse {
            format: 1,
            column_formats: vec![]
        }
    );
    assert_eq!(
        decode_one(&msg(b'd', b"payload")).unwrap(),
        BackendMessage::CopyData(Bytes::from_static(b"payload"))
    );
    assert_eq!(
        decode_one(&msg(b'c', b"")).unwrap(),
        BackendMessage::CopyDone
    );
}

#[test]
fn decodes_real_world_error_response() {
    let body = error_fields(&[
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "28P01"),
        (b'M', "password authentication failed for user \"klio\""),
        (
            b'D',
            "Connection matched pg_hba.conf line 99: \"host replication all 127.0.0.1/32 scram-sha-256\"",
        ),
        (b'H', "Check the password."),
        (b'F', "auth.c"),
        (b'L', "326"),
        (b'R', "auth_failed"),
    ]);
    let m = decode_one(&msg(b'E', &body)).unwrap();
    let BackendMessage::ErrorResponse(e) = m else {
        panic!("{m:?}")
    };
    assert_eq!(e.severity, "FATAL");
    assert_eq!(e.code, "28P01");
    assert_eq!(
        e.message,
        "password authentication failed for user \"klio\""
    );
    assert!(e.detail.as_deref().unwrap().contains("pg_hba.conf line 99"));
    assert_eq!(e.hint.as_deref(), Some("Check the password."));
    assert_eq!(e.field(b'R'), Some("auth_failed"));
    assert_eq!(e.field(b'L'), Some("326"));
    assert!(e.is_fatal());
    let plain = ServerError {
        hint: None,
        detail: None,
        ..e.clone()
    };
    assert_eq!(
        plain.to_string(),
        "FATAL:  password authentication failed for user \"klio\""
    );
    assert!(e.to_string().ends_with("\nHINT:  Check the password."));
    assert_eq!(
        ProtocolError::from(plain.clone()).to_string(),
        plain.to_string()
    );

    // Localized severity only, and text in a non-UTF-8 server encoding: still decoded.
    let body = error_fields(&[(b'S', "FEHLER"), (b'C', "42704"), (b'M', "x")]);
    let mut body = body;
    body.splice(body.len() - 3..body.len() - 3, [0xe4]); // Latin-1 'ä' into the message
    let BackendMessage::ErrorResponse(e) = decode_one(&msg(b'E', &body)).unwrap() else {
        panic!()
    };
    assert_eq!(e.severity, "FEHLER");
    assert!(e.message.contains('\u{fffd}'));

    let n = decode_one(&msg(
        b'N',
        &error_fields(&[(b'S', "WARNING"), (b'C', "01000"), (b'M', "w")]),
    ))
    .unwrap();
    assert!(matches!(n, BackendMessage::NoticeResponse(ref e) if e.severity == "WARNING"));
    // Unterminated field list.
    assert!(decode_one(&msg(b'E', b"SFATAL\0")).is_err());
}

#[test]
fn decoder_waits_for_complete_messages() {
    let mut all = BytesMut::new();
    all.extend_from_slice(&msg(b'S', b"a\0b\0"));
    all.extend_from_slice(&ready());
    let mut dec = BackendDecoder::new();
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for &b in all.iter() {
        buf.put_u8(b);
        while let Some(m) = dec.decode(&mut buf).unwrap() {
            got.push(m);
        }
    }
    assert_eq!(
        got,
        vec![
            BackendMessage::ParameterStatus {
                name: "a".into(),
                value: "b".into()
            },
            BackendMessage::ReadyForQuery { status: b'I' }
        ]
    );
    assert!(buf.is_empty());
}

#[test]
fn decoder_rejects_bad_lengths_before_allocating() {
    let mut dec = BackendDecoder::with_max_message_len(1024);
    // Declared 2 GiB: rejected with only the header present, without reserving anything.
    let mut buf = BytesMut::from(&[b'd', 0x7f, 0xff, 0xff, 0xff][..]);
    let cap = buf.capacity();
    let e = dec.decode(&mut buf).unwrap_err();
    assert!(matches!(
        e,
        ProtocolError::MessageTooLarge {
            tag: b'd',
            len: 0x7fff_ffff,
            max: 1024
        }
    ));
    assert_eq!(buf.capacity(), cap);
    assert!(e.to_string().contains("max_message_len"));
    for len in 0..4u32 {
        let mut buf = BytesMut::new();
        buf.put_u8(b'Z');
        buf.put_u32(len);
        assert!(matches!(
            dec.decode(&mut buf),
            Err(ProtocolError::MessageTooLarge { .. })
        ));
    }
    let mut ok = msg(b'd', &[0; 1020]);
    assert!(dec.decode(&mut ok).unwrap().is_some());
    let mut big = msg(b'd', &[0; 1021]);
    assert!(dec.decode(&mut big).is_err());
}

#[test]
fn hostile_counts_are_rejected() {
    // 32767 columns announced, no bytes to back them.
    assert!(matches!(
        decode_one(&msg(b'D', &[0x7f, 0xff])),
        Err(ProtocolError::Malformed { tag: b'D', .. })
    ));
    assert!(decode_one(&msg(b'T', &[0x7f, 0xff, 0, 0])).is_err());
    assert!(decode_one(&msg(b'D', &[0xff, 0xff])).is_err());
    assert!(decode_one(&msg(b'W', &[0, 0x7f, 0xff])).is_err());
    let mut v = 0i32.to_be_bytes().to_vec();
    v.extend_from_slice(&i32::MAX.to_be_bytes());
    assert!(decode_one(&msg(b'v', &v)).is_err());
}

#[test]
fn unknown_tags_and_ssl_response() {
    assert!(matches!(
        decode_one(&msg(b'?', b"")),
        Err(ProtocolError::UnknownMessage { tag: b'?' })
    ));
    let mut dec = BackendDecoder::new();
    let mut buf = BytesMut::new();
    assert_eq!(dec.decode_ssl_response(&mut buf).unwrap(), None);
    buf.put_slice(b"SZ");
    assert_eq!(
        dec.decode_ssl_response(&mut buf).unwrap(),
        Some(SslResponse::Accepted)
    );
    assert_eq!(&buf[..], b"Z");
    let mut buf = BytesMut::from(&b"N"[..]);
    assert_eq!(
        dec.decode_ssl_response(&mut buf).unwrap(),
        Some(SslResponse::Rejected)
    );
    let mut buf = BytesMut::from(&b"E"[..]);
    assert!(dec.decode_ssl_response(&mut buf).is_err());
}

// ---------------------------------------------------------------- frontend encoding

#[test]
fn frontend_messages_have_the_documented_bytes() {
    let mut out = BytesMut::new();
    frontend::ssl_request(&mut out);
    assert_eq!(&out[..], &[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);

    let mut out = BytesMut::new();
    frontend::startup(&[("user", "u"), ("replication", "true")], &mut out).unwrap();
    let mut want = vec![0, 0, 0, 0, 0, 3, 0, 0];
    want.extend_from_slice(b"user\0u\0replication\0true\0\0");
    let len = want.len() as u8;
    want[3] = len;
    assert_eq!(&out[..], &want[..]);
    assert!(frontend::startup(&[("user", "u\0database")], &mut out).is_err());

    let mut out = BytesMut::new();
    frontend::query("IDENTIFY_SYSTEM", &mut out).unwrap();
    assert_eq!(&out[..], b"Q\0\0\0\x14IDENTIFY_SYSTEM\0");
    assert!(matches!(
        frontend::query("a\0b", &mut out),
        Err(ProtocolError::InteriorNul { .. })
    ));

    let mut out = BytesMut::new();
    frontend::password(b"pw", &mut out);
    frontend::sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=x", &mut out);
    frontend::sasl_response(b"c=biws", &mut out);
    frontend::copy_data(b"xyz", &mut out);
    frontend::copy_done(&mut out);
    frontend::copy_fail("boom", &mut out);
    frontend::terminate(&mut out);
    let f = frames(&out);
    assert_eq!(f[0], (b'p', b"pw\0".to_vec()));
    assert_eq!(f[1], (b'p', b"SCRAM-SHA-256\0\0\0\0\x09n,,n=,r=x".to_vec()));
    assert_eq!(f[2], (b'p', b"c=biws".to_vec()));
    assert_eq!(f[3], (b'd', b"xyz".to_vec()));
    assert_eq!(f[4], (b'c', vec![]));
    assert_eq!(f[5], (b'f', b"boom\0".to_vec()));
    assert_eq!(f[6], (b'X', vec![]));
}

// ---------------------------------------------------------------- startup

fn feed(s: &mut Startup, m: &[u8]) -> (Result<StartupStatus, ProtocolError>, BytesMut) {
    let mut out = BytesMut::new();
    let r = s.handle(decode_one(m).unwrap(), &mut out);
    (r, out)
}

fn finish_startup(s: &mut Startup) -> StartupStatus {
    let (r, out) = feed(s, &msg(b'S', b"server_version\x0015.4\0"));
    assert_eq!(r.unwrap(), StartupStatus::Continue);
    assert!(out.is_empty());
    feed(s, &msg(b'K', &[0, 0, 0, 42, 0, 0, 0, 7])).0.unwrap();
    feed(
        s,
        &msg(
            b'N',
            &error_fields(&[(b'S', "NOTICE"), (b'C', "00000"), (b'M', "hi")]),
        ),
    )
    .0
    .unwrap();
    feed(s, &ready()).0.unwrap()
}

#[test]
fn startup_trust() {
    let mut s = Startup::new("klio", None);
    let (r, out) = feed(&mut s, &auth(0, &[]));
    assert_eq!(r.unwrap(), StartupStatus::Continue);
    assert!(out.is_empty());
    assert_eq!(
        finish_startup(&mut s),
        StartupStatus::Ready {
            parameters: vec![("server_version".into(), "15.4".into())],
            process_id: Some(42)
        }
    );
    assert_eq!(s.auth_method(), Some(AuthMethod::Trust));
    assert_eq!(s.backend_key(), Some((42, 7)));
    assert_eq!(s.take_notices().len(), 1);
    // Nothing more is expected.
    assert!(feed(&mut s, &ready()).0.is_err());
}

#[test]
fn startup_cleartext_and_md5() {
    let mut s = Startup::new("klio", Some(b"secret".to_vec()));
    let (r, out) = feed(&mut s, &auth(3, &[]));
    r.unwrap();
    assert_eq!(frames(&out), vec![(b'p', b"secret\0".to_vec())]);
    feed(&mut s, &auth(0, &[])).0.unwrap();
    assert!(matches!(
        finish_startup(&mut s),
        StartupStatus::Ready { .. }
    ));

    // Vector from postgres-protocol's own md5 test.
    let mut s = Startup::new("md5_user", Some(b"password".to_vec()));
    let (r, out) = feed(&mut s, &auth(5, &[0x2a, 0x3d, 0x8f, 0xe0]));
    r.unwrap();
    assert_eq!(
        frames(&out),
        vec![(b'p', b"md562af4dd09bbb41884907a838a3233294\0".to_vec())]
    );
    feed(&mut s, &auth(0, &[])).0.unwrap();
    assert!(matches!(
        finish_startup(&mut s),
        StartupStatus::Ready { .. }
    ));
    assert_eq!(s.auth_method(), Some(AuthMethod::Md5));
}

#[test]
fn startup_errors() {
    // Password requested, none configured.
    for req in [
        auth(3, &[]),
        auth(5, &[1, 2, 3, 4]),
        auth(10, b"SCRAM-SHA-256\0\0"),
    ] {
        let mut s = Startup::new("klio", None);
        let e = feed(&mut s, &req).0.unwrap_err();
        assert!(matches!(e, ProtocolError::MissingPassword { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("PGPASSWORD") && text.contains("password="),
            "{text}"
        );
    }
    // ErrorResponse.
    let mut s = Startup::new("klio", Some(b"x".to_vec()));
    feed(&mut s, &auth(3, &[])).0.unwrap();
    let e = feed(
        &mut s,
        &msg(
            b'E',
            &error_fields(&[
                (b'S', "FATAL"),
                (b'V', "FATAL"),
                (b'C', "28P01"),
                (b'M', "password authentication failed for user \"x\""),
            ]),
        ),
    )
    .0
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "FATAL:  password authentication failed for user \"x\""
    );
    assert!(matches!(e, ProtocolError::Server(ref se) if se.code == "28P01"));
    // Unsupported methods.
    let mut s = Startup::new("klio", Some(b"x".to_vec()));
    let e = feed(&mut s, &auth(7, &[])).0.unwrap_err();
    assert!(matches!(e, ProtocolError::AuthUnsupported(_)));
    assert!(e.to_string().contains("pg_hba.conf"));
    let mut s = Startup::new("klio", Some(b"x".to_vec()));
    let e = feed(&mut s, &auth(10, b"SCRAM-SHA-256-PLUS\0\0"))
        .0
        .unwrap_err();
    assert!(matches!(e, ProtocolError::AuthUnsupported(ref m) if m.contains("SCRAM-SHA-256-PLUS")));
    // Out-of-order messages.
    let mut s = Startup::new("klio", None);
    assert!(matches!(
        feed(&mut s, &ready()).0,
        Err(ProtocolError::UnexpectedMessage { got: b'Z', .. })
    ));
    let mut s = Startup::new("klio", Some(b"x".to_vec()));
    assert!(feed(&mut s, &auth(11, b"r=x")).0.is_err());
    // A NUL in a cleartext password.
    let mut s = Startup::new("klio", Some(b"a\0b".to_vec()));
    assert!(matches!(
        feed(&mut s, &auth(3, &[])).0,
        Err(ProtocolError::InteriorNul { .. })
    ));
}

/// A SCRAM-SHA-256 server side, driven by a verifier as PostgreSQL stores it in `pg_authid`
/// (computed by postgres-protocol), per RFC 5802/7677.
mod fake_scram {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use hmac::{Hmac, KeyInit, Mac};
    use sha2_11::{Digest, Sha256};

    fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
        let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
        m.update(data);
        m.finalize().into_bytes().to_vec()
    }

    pub(super) struct Server {
        iterations: String,
        salt: String,
        stored_key: Vec<u8>,
        server_key: Vec<u8>,
        client_first_bare: String,
        server_first: String,
        nonce: String,
    }

    impl Server {
        pub(super) fn new(password: &[u8]) -> Self {
            let verifier = postgres_protocol::password::scram_sha_256(password);
            // SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>
            let rest = verifier.strip_prefix("SCRAM-SHA-256$").unwrap();
            let (params, keys) = rest.split_once('$').unwrap();
            let (iterations, salt) = params.split_once(':').unwrap();
            let (stored, server) = keys.split_once(':').unwrap();
            Self {
                iterations: iterations.into(),
                salt: salt.into(),
                stored_key: STANDARD.decode(stored).unwrap(),
                server_key: STANDARD.decode(server).unwrap(),
                client_first_bare: String::new(),
                server_first: String::new(),
                nonce: String::new(),
            }
        }

        /// Takes the SASLInitialResponse body; returns server-first-message.
        pub(super) fn first(&mut self, body: &[u8], expect_gs2: &str) -> Vec<u8> {
            let nul = body.iter().position(|&b| b == 0).unwrap();
            assert_eq!(&body[..nul], b"SCRAM-SHA-256");
            let len = i32::from_be_bytes(body[nul + 1..nul + 5].try_into().unwrap());
            let data = std::str::from_utf8(&body[nul + 5..]).unwrap();
            assert_eq!(len as usize, data.len());
            let bare = data.strip_prefix(expect_gs2).expect("gs2 header");
            let client_nonce = bare.strip_prefix("n=,r=").unwrap();
            self.client_first_bare = bare.into();
            self.nonce = format!("{client_nonce}fakeServerNonce");
            self.server_first = format!("r={},s={},i={}", self.nonce, self.salt, self.iterations);
            self.server_first.clone().into_bytes()
        }

        /// Takes client-final-message; checks the proof, returns server-final-message.
        /// `Err` when the client's proof is wrong (wrong password).
        pub(super) fn last(&self, body: &[u8], expect_cbind: &str) -> Result<Vec<u8>, ()> {
            let msg = std::str::from_utf8(body).unwrap();
            let (without_proof, proof) = msg.rsplit_once(",p=").unwrap();
            assert_eq!(without_proof, format!("c={expect_cbind},r={}", self.nonce));
            let auth_message = format!(
                "{},{},{}",
                self.client_first_bare, self.server_first, without_proof
            );
            let sig = hmac(&self.stored_key, auth_message.as_bytes());
            let client_key: Vec<u8> = STANDARD
                .decode(proof)
                .unwrap()
                .iter()
                .zip(&sig)
                .map(|(a, b)| a ^ b)
                .collect();
            if Sha256::digest(&client_key).as_slice() != self.stored_key.as_slice() {
                return Err(());
            }
            let server_sig = hmac(&self.server_key, auth_message.as_bytes());
            Ok(format!("v={}", STANDARD.encode(server_sig)).into_bytes())
        }
    }
}

/// Drives `Startup` through SASL until the server-final message; returns the state machine and
/// the server's final message (or `None` if the server rejected the proof).
fn scram_until_final(
    client_pw: &[u8],
    server_pw: &[u8],
    mechanisms: &[u8],
) -> (Startup, Option<Vec<u8>>) {
    let mut server = fake_scram::Server::new(server_pw);
    let mut s = Startup::new("klio", Some(client_pw.to_vec()));
    let (r, out) = feed(&mut s, &auth(10, mechanisms));
    assert_eq!(r.unwrap(), StartupStatus::Continue);
    let f = frames(&out);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].0, b'p');
    let server_first = server.first(&f[0].1, "n,,");
    let (r, out) = feed(&mut s, &auth(11, &server_first));
    r.unwrap();
    let f = frames(&out);
    assert_eq!(f[0].0, b'p');
    // base64("n,,") = "biws"
    (s, server.last(&f[0].1, "biws").ok())
}

#[test]
fn startup_scram_sha_256_against_fake_server() {
    // Also offered -PLUS: the client must pick plain SCRAM-SHA-256 with gs2 header "n,,".
    let (mut s, fin) = scram_until_final(
        b"correct horse",
        b"correct horse",
        b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0",
    );
    let fin = fin.expect("server accepted the client proof");
    let (r, out) = feed(&mut s, &auth(12, &fin));
    assert_eq!(r.unwrap(), StartupStatus::Continue);
    assert!(out.is_empty());
    feed(&mut s, &auth(0, &[])).0.unwrap();
    assert!(matches!(
        finish_startup(&mut s),
        StartupStatus::Ready {
            process_id: Some(42),
            ..
        }
    ));
    assert_eq!(s.auth_method(), Some(AuthMethod::ScramSha256));
}

#[test]
fn startup_scram_rejects_forged_server_signature() {
    let (mut s, fin) = scram_until_final(b"pw", b"pw", b"SCRAM-SHA-256\0\0");
    let mut fin = fin.unwrap();
    // Flip a base64 character of the server signature.
    let i = fin.len() - 5;
    fin[i] = if fin[i] == b'A' { b'B' } else { b'A' };
    let e = feed(&mut s, &auth(12, &fin)).0.unwrap_err();
    assert!(matches!(e, ProtocolError::Auth(_)), "{e}");
    assert!(e.to_string().contains("could not prove"));

    // A server that skips SASLFinal and says Ok is not trusted either.
    let (mut s, _) = scram_until_final(b"pw", b"pw", b"SCRAM-SHA-256\0\0");
    assert!(matches!(
        feed(&mut s, &auth(0, &[])).0,
        Err(ProtocolError::Auth(_))
    ));

    // Wrong password: the fake server rejects the proof (as PostgreSQL would, with an error).
    let (_, fin) = scram_until_final(b"wrong", b"pw", b"SCRAM-SHA-256\0\0");
    assert!(fin.is_none());
}

// ---------------------------------------------------------------- simple query + replication

#[test]
fn identify_system_from_real_shaped_stream() {
    let r = run_query(&[
        row_description(&["systemid", "timeline", "xlogpos", "dbname"]),
        data_row(&[
            Some(b"7263549871234567890"),
            Some(b"1"),
            Some(b"0/1A2B3C8"),
            None,
        ]),
        command_complete("IDENTIFY_SYSTEM"),
        ready(),
    ])
    .unwrap();
    assert_eq!(r.status, b'I');
    let set = r.single("IDENTIFY_SYSTEM").unwrap();
    assert_eq!(set.tag, "IDENTIFY_SYSTEM");
    let id = IdentifySystem::from_result(set).unwrap();
    assert_eq!(
        id,
        IdentifySystem {
            system_id: 7_263_549_871_234_567_890,
            timeline: TimelineId::new(1).unwrap(),
            xlog_pos: Lsn(0x1A2B3C8),
            db_name: None
        }
    );
    // Wrong values are reported, naming the command.
    let mut bad = set.clone();
    bad.rows[0][1] = Some(Bytes::from_static(b"0"));
    let e = IdentifySystem::from_result(&bad).unwrap_err();
    assert!(e.to_string().contains("IDENTIFY_SYSTEM"), "{e}");
    bad.rows.clear();
    assert!(IdentifySystem::from_result(&bad).is_err());
}

#[test]
fn query_errors_wait_for_ready_and_notices_are_kept() {
    let e = run_query(&[
        msg(
            b'N',
            &error_fields(&[(b'S', "WARNING"), (b'C', "01000"), (b'M', "careful")]),
        ),
        msg(
            b'E',
            &error_fields(&[
                (b'S', "ERROR"),
                (b'C', "42704"),
                (b'M', "replication slot \"x\" does not exist"),
            ]),
        ),
        ready(),
    ])
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "ERROR:  replication slot \"x\" does not exist"
    );

    let r = run_query(&[
        msg(
            b'N',
            &error_fields(&[(b'S', "NOTICE"), (b'C', "00000"), (b'M', "n")]),
        ),
        msg(b'S', b"application_name\0klio\0"),
        command_complete("SET"),
        ready(),
    ])
    .unwrap();
    assert_eq!(r.notices.len(), 1);
    assert_eq!(
        r.parameters,
        vec![("application_name".into(), "klio".into())]
    );
    assert_eq!(r.sets.len(), 1);
    assert!(r.sets[0].columns.is_empty());

    // A CopyBothResponse is not a query result.
    assert!(matches!(
        run_query(&[msg(b'W', &[0, 0, 0])]),
        Err(ProtocolError::UnexpectedMessage { got: b'W', .. })
    ));
    // Row with the wrong number of values.
    assert!(run_query(&[row_description(&["a"]), data_row(&[None, None])]).is_err());
    // SimpleQuery is reusable.
    let mut q = SimpleQuery::new();
    for _ in 0..2 {
        assert!(
            q.handle(decode_one(&command_complete("X")).unwrap())
                .unwrap()
                .is_none()
        );
        let r = q.handle(decode_one(&ready()).unwrap()).unwrap().unwrap();
        assert_eq!(r.sets.len(), 1);
    }
}

fn set_of(names: &[&str], row: &[Option<&[u8]>]) -> ResultSet {
    run_query(&[
        row_description(names),
        data_row(row),
        command_complete("X"),
        ready(),
    ])
    .unwrap()
    .into_single("test")
    .unwrap()
}

#[test]
fn read_replication_slot() {
    let cols = ["slot_type", "restart_lsn", "restart_tli"];
    let s = ReadReplicationSlot::from_result(&set_of(
        &cols,
        &[Some(b"physical"), Some(b"0/3000148"), Some(b"2")],
    ))
    .unwrap();
    assert!(s.exists());
    assert_eq!(s.restart_lsn, Some(Lsn(0x3000148)));
    assert_eq!(s.restart_tli, Some(TimelineId::new(2).unwrap()));
    let none = ReadReplicationSlot::from_result(&set_of(&cols, &[None, None, None])).unwrap();
    assert_eq!(none, ReadReplicationSlot::default());
    assert!(!none.exists());
    assert!(
        ReadReplicationSlot::from_result(&set_of(&cols, &[Some(b"physical"), Some(b"zz"), None]))
            .is_err()
    );
}

#[test]
fn timeline_history_create_slot_end_of_timeline() {
    let content: &[u8] = b"1\t0/3000148\tno recovery target specified\n";
    let h = TimelineHistory::from_result(&set_of(
        &["filename", "content"],
        &[Some(b"00000002.history"), Some(content)],
    ))
    .unwrap();
    assert_eq!(h.file_name, "00000002.history");
    assert_eq!(&h.content[..], content);
    assert!(
        TimelineHistory::from_result(&set_of(
            &["filename", "content"],
            &[Some(b"../../etc/passwd"), Some(b"")],
        ))
        .is_err()
    );

    let cols = [
        "slot_name",
        "consistent_point",
        "snapshot_name",
        "output_plugin",
    ];
    let c = CreateSlotResult::from_result(&set_of(
        &cols,
        &[Some(b"klio"), Some(b"0/1000028"), None, None],
    ))
    .unwrap();
    assert_eq!(c.slot_name, "klio");
    assert_eq!(c.consistent_point, Some(Lsn(0x1000028)));
    let c =
        CreateSlotResult::from_result(&set_of(&cols, &[Some(b"klio"), Some(b"0/0"), None, None]))
            .unwrap();
    assert_eq!(c.consistent_point, None);

    let e = EndOfTimeline::from_result(&set_of(
        &["next_tli", "next_tli_startpos"],
        &[Some(b"3"), Some(b"0/5000000")],
    ))
    .unwrap();
    assert_eq!(e.next_timeline, TimelineId::new(3).unwrap());
    assert_eq!(e.next_start, Lsn(0x5000000));
    assert!(
        EndOfTimeline::from_result(&set_of(
            &["next_tli", "next_tli_startpos"],
            &[Some(b"-1"), Some(b"0/5000000")],
        ))
        .is_err()
    );
}

#[test]
fn show_and_sizes() {
    let set = set_of(&["wal_segment_size"], &[Some(b"16MB")]);
    let v = show_value(&set).unwrap();
    assert_eq!(v, "16MB");
    assert_eq!(parse_size_setting(&v).unwrap(), 16 << 20);
    assert_eq!(parse_size_setting("1GB").unwrap(), 1 << 30);
    assert_eq!(parse_size_setting("1024kB").unwrap(), 1 << 20);
    assert_eq!(parse_size_setting("8192B").unwrap(), 8192);
    assert_eq!(parse_size_setting("8192").unwrap(), 8192);
    assert_eq!(parse_size_setting("2TB").unwrap(), 2 << 40);
    for bad in [
        "",
        "MB",
        "16mb",
        "16 XB",
        "-1MB",
        "99999999999999999999TB",
        "16777216TB",
    ] {
        assert!(parse_size_setting(bad).is_err(), "{bad:?}");
    }
    assert!(show_value(&set_of(&["a"], &[None])).is_err());
}

#[test]
fn commands() {
    let tli = TimelineId::new(1).unwrap();
    assert_eq!(
        start_replication_command(Some("s"), Lsn(0x1000000), tli),
        "START_REPLICATION SLOT \"s\" PHYSICAL 0/1000000 TIMELINE 1"
    );
    assert_eq!(
        start_replication_command(None, Lsn(0x1_0000_0000), TimelineId::new(12).unwrap()),
        "START_REPLICATION PHYSICAL 1/0 TIMELINE 12"
    );
    assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    assert_eq!(
        read_replication_slot_command("klio"),
        "READ_REPLICATION_SLOT \"klio\""
    );
    assert_eq!(
        create_physical_slot_command("klio", SlotReservation::Immediately),
        "CREATE_REPLICATION_SLOT \"klio\" PHYSICAL (RESERVE_WAL)"
    );
    assert_eq!(
        create_physical_slot_command("a\"b", SlotReservation::OnFirstStream),
        "CREATE_REPLICATION_SLOT \"a\"\"b\" PHYSICAL"
    );
    assert_eq!(drop_slot_command("klio"), "DROP_REPLICATION_SLOT \"klio\"");
    assert_eq!(
        timeline_history_command(TimelineId::new(2).unwrap()),
        "TIMELINE_HISTORY 2"
    );
}

#[test]
fn replication_messages() {
    // XLogData as PostgreSQL sends it: 'w', start, end, time, WAL bytes.
    let mut p = vec![b'w'];
    p.extend_from_slice(&0x0000_0000_0100_0000u64.to_be_bytes());
    p.extend_from_slice(&0x0000_0000_0100_2000u64.to_be_bytes());
    p.extend_from_slice(&776_000_000_123_456i64.to_be_bytes());
    p.extend_from_slice(&[0x13, 0xd1, 0x05, 0x00]); // the start of a page header
    let payload = Bytes::from(p);
    let m = ReplicationMessage::decode(payload.clone()).unwrap();
    let ReplicationMessage::XLogData(x) = &m else {
        panic!("{m:?}")
    };
    assert_eq!(x.wal_start, Lsn(0x100_0000));
    assert_eq!(x.wal_end, Lsn(0x100_2000));
    assert_eq!(x.send_time, 776_000_000_123_456);
    assert_eq!(&x.data[..], &[0x13, 0xd1, 0x05, 0x00]);
    // Zero-copy: the data points into the payload.
    assert_eq!(x.data.as_ptr(), payload[25..].as_ptr());
    let mut again = BytesMut::new();
    m.encode(&mut again);
    assert_eq!(&again[..], &payload[..]);

    let mut k = vec![b'k'];
    k.extend_from_slice(&0x0000_0001_0000_0010u64.to_be_bytes());
    k.extend_from_slice(&5i64.to_be_bytes());
    k.push(1);
    assert_eq!(
        ReplicationMessage::decode(Bytes::from(k.clone())).unwrap(),
        ReplicationMessage::PrimaryKeepalive {
            wal_end: Lsn(0x1_0000_0010),
            send_time: 5,
            reply_requested: true
        }
    );
    assert!(ReplicationMessage::decode(Bytes::from(k[..17].to_vec())).is_err());
    k.push(0);
    assert!(ReplicationMessage::decode(Bytes::from(k)).is_err());
    assert!(ReplicationMessage::decode(Bytes::new()).is_err());
    assert!(ReplicationMessage::decode(Bytes::from_static(b"w\0\0")).is_err());
    assert!(ReplicationMessage::decode(Bytes::from_static(b"s1234")).is_err());
}

#[test]
fn standby_status_update_bytes() {
    let u = StandbyStatusUpdate {
        write: Lsn(0x100_2000),
        flush: Lsn(0x100_1000),
        apply: Lsn::INVALID,
        client_time: pg_epoch_micros(1_700_000_000_000_000),
        reply_requested: false,
    };
    let mut out = BytesMut::new();
    u.encode_copy_data(&mut out);
    assert_eq!(out.len(), 39);
    assert_eq!(&out[..6], &[b'd', 0, 0, 0, 38, b'r']);
    assert_eq!(&out[6..14], &0x100_2000u64.to_be_bytes());
    assert_eq!(&out[14..22], &0x100_1000u64.to_be_bytes());
    assert_eq!(&out[22..30], &[0; 8]);
    assert_eq!(&out[30..38], &753_315_200_000_000i64.to_be_bytes());
    assert_eq!(out[38], 0);
    // The server side decodes it through the backend decoder too (same framing).
    let BackendMessage::CopyData(p) = decode_one(&out).unwrap() else {
        panic!()
    };
    assert_eq!(StandbyStatusUpdate::decode(p).unwrap(), u);
    assert_eq!(pg_epoch_micros(946_684_800_000_000), 0);
    assert_eq!(unix_micros(0), 946_684_800_000_000);
    assert_eq!(pg_epoch_micros(i64::MIN), i64::MIN);
}

// ---------------------------------------------------------------- properties

proptest! {
    #[test]
    fn decoder_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512), max in 4usize..600) {
        let mut buf = BytesMut::from(&data[..]);
        let mut dec = BackendDecoder::with_max_message_len(max);
        let mut q = SimpleQuery::new();
        let mut s = Startup::new("u", Some(b"p".to_vec()));
        let mut out = BytesMut::new();
        while let Ok(Some(m)) = dec.decode(&mut buf) {
            let _ = q.handle(m.clone());
            let _ = s.handle(m, &mut out);
        }
        let _ = ReplicationMessage::decode(Bytes::from(data));
    }

    #[test]
    fn chunked_decoding_equals_whole(vals in proptest::collection::vec(proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)), 0..8), split in 0usize..400) {
        let refs: Vec<Option<&[u8]>> = vals.iter().map(|v| v.as_deref()).collect();
        let mut whole = data_row(&refs);
        whole.extend_from_slice(&ready());
        let expect = {
            let mut b = whole.clone();
            let mut d = BackendDecoder::new();
            (d.decode(&mut b).unwrap().unwrap(), d.decode(&mut b).unwrap().unwrap())
        };
        let split = split.min(whole.len());
        let mut d = BackendDecoder::new();
        let mut buf = BytesMut::from(&whole[..split]);
        let mut got = Vec::new();
        while let Some(m) = d.decode(&mut buf).unwrap() { got.push(m); }
        buf.extend_from_slice(&whole[split..]);
        while let Some(m) = d.decode(&mut buf).unwrap() { got.push(m); }
        prop_assert_eq!(got, vec![expect.0, expect.1]);
    }

    #[test]
    fn frontend_round_trips(
        sql in "[^\u{0}]{0,64}",
        data in proptest::collection::vec(any::<u8>(), 0..256),
        params in proptest::collection::vec(("[a-z_]{1,12}", "[^\u{0}]{0,20}"), 0..5),
    ) {
        let mut out = BytesMut::new();
        frontend::query(&sql, &mut out).unwrap();
        frontend::copy_data(&data, &mut out);
        frontend::sasl_response(&data, &mut out);
        let f = frames(&out);
        let mut q = sql.as_bytes().to_vec();
        q.push(0);
        prop_assert_eq!(&f[0], &(b'Q', q));
        prop_assert_eq!(&f[1], &(b'd', data.clone()));
        prop_assert_eq!(&f[2], &(b'p', data.clone()));
        // CopyData encodes identically in both directions: the backend decoder reads it back.
        let mut cd = BytesMut::new();
        frontend::copy_data(&data, &mut cd);
        prop_assert_eq!(decode_one(&cd).unwrap(), BackendMessage::CopyData(Bytes::from(data)));

        let p: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut out = BytesMut::new();
        frontend::startup(&p, &mut out).unwrap();
        let len = u32::from_be_bytes(out[..4].try_into().unwrap()) as usize;
        prop_assert_eq!(len, out.len());
        prop_assert_eq!(&out[4..8], &[0, 3, 0, 0]);
        let body = &out[8..out.len() - 1];
        let parts: Vec<&[u8]> = body.split(|&b| b == 0).collect();
        let mut decoded = Vec::new();
        for kv in parts.chunks(2) {
            if kv.len() == 2 {
                decoded.push((String::from_utf8(kv[0].to_vec()).unwrap(), String::from_utf8(kv[1].to_vec()).unwrap()));
            }
        }
        prop_assert_eq!(decoded, params);
    }

    #[test]
    fn status_update_round_trips(w: u64, f: u64, a: u64, t: i64, r: bool) {
        let u = StandbyStatusUpdate { write: Lsn(w), flush: Lsn(f), apply: Lsn(a), client_time: t, reply_requested: r };
        let mut out = BytesMut::new();
        u.encode_copy_data(&mut out);
        let BackendMessage::CopyData(p) = decode_one(&out).unwrap() else { panic!() };
        prop_assert_eq!(StandbyStatusUpdate::decode(p).unwrap(), u);
    }

    #[test]
    fn replication_messages_round_trip(s: u64, e: u64, t: i64, data in proptest::collection::vec(any::<u8>(), 0..300), reply: bool, keepalive: bool) {
        let m = if keepalive {
            ReplicationMessage::PrimaryKeepalive { wal_end: Lsn(e), send_time: t, reply_requested: reply }
        } else {
            ReplicationMessage::XLogData(XLogData { wal_start: Lsn(s), wal_end: Lsn(e), send_time: t, data: Bytes::from(data) })
        };
        let mut out = BytesMut::new();
        m.encode(&mut out);
        prop_assert_eq!(ReplicationMessage::decode(out.freeze()).unwrap(), m);
    }
}
