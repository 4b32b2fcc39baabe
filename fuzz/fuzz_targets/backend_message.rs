//! BackendDecoder over arbitrary bytes: never panics, never allocates beyond the limit, and
//! every decoded message is fed through the state machines that consume them.
#![no_main]

use bytes::BytesMut;
use klio_proto::{BackendDecoder, BackendMessage, SimpleQuery, Startup};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut dec = BackendDecoder::with_max_message_len(MAX);
    let mut buf = BytesMut::from(data);
    let mut query = SimpleQuery::new();
    let mut startup = Startup::new("fuzz", Some(b"pw".to_vec()));
    let mut out = BytesMut::new();
    loop {
        let before = buf.len();
        match dec.decode(&mut buf) {
            Ok(Some(msg)) => {
                // A message consumes its whole frame, which is bounded by the limit.
                let used = before - buf.len();
                assert!((5..=MAX + 1).contains(&used));
                if let BackendMessage::CopyData(p) = &msg {
                    let _ = klio_proto::replication::ReplicationMessage::decode(p.clone());
                }
                let _ = query.handle(msg.clone());
                let _ = startup.handle(msg, &mut out);
            }
            Ok(None) => break,
            Err(e) => {
                let _ = e.to_string();
                break;
            }
        }
    }
});
