#![no_main]
//! Klio frames arrive from the network on the server and the client.

use bytes::BytesMut;
use klio_proto::klio::FrameDecoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut dec = FrameDecoder::with_max_frame_len(4096);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(msg)) = dec.decode(&mut buf) {
        // Whatever decodes must encode back to a frame that decodes to the same message.
        let mut again = BytesMut::new();
        msg.encode(&mut again);
        let back = FrameDecoder::new().decode(&mut again).expect("re-encoded frame decodes");
        assert_eq!(back, Some(msg));
    }
});
