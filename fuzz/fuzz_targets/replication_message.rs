//! ReplicationMessage::decode over arbitrary CopyData payloads; whatever decodes re-encodes to
//! the same bytes (XLogData exactly, keepalives up to the normalised reply flag).
#![no_main]

use bytes::{Bytes, BytesMut};
use klio_proto::replication::{ReplicationMessage, StandbyStatusUpdate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let payload = Bytes::copy_from_slice(data);
    if let Ok(msg) = ReplicationMessage::decode(payload.clone()) {
        let mut out = BytesMut::new();
        msg.encode(&mut out);
        match &msg {
            ReplicationMessage::XLogData(x) => {
                assert_eq!(&out[..], data);
                assert_eq!(x.data.len() + 25, data.len());
            }
            ReplicationMessage::PrimaryKeepalive {
                reply_requested, ..
            } => {
                assert_eq!(out.len(), 18);
                assert_eq!(&out[..17], &data[..17]);
                assert_eq!(out[17] != 0, *reply_requested);
                assert_eq!(data[17] != 0, *reply_requested);
            }
            _ => {}
        }
        assert_eq!(ReplicationMessage::decode(out.freeze()).unwrap(), msg);
    }
    if let Ok(update) = StandbyStatusUpdate::decode(payload) {
        let mut out = BytesMut::new();
        update.encode_copy_data(&mut out);
        assert_eq!(&out[5..38], &data[..33]);
    }
});
