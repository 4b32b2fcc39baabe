use bytes::{Bytes, BytesMut};
use klio_wal::{Lsn, TimelineId};
use proptest::prelude::*;

use super::*;

fn tli(n: u32) -> TimelineId {
    TimelineId::new(n).unwrap()
}

fn samples() -> Vec<Message> {
    vec![
        Message::Hello {
            version: PROTOCOL_VERSION,
            cluster: ClusterName::new("pg-main").unwrap(),
            system_id: 7_312_345_678_901_234_567,
            segment_size: 16 << 20,
        },
        Message::Welcome {
            version: 1,
            durable: None,
        },
        Message::Welcome {
            version: 1,
            durable: Some(klio_wal::WalPosition::new(tli(3), Lsn(0x1_0000_0028))),
        },
        Message::StartWal {
            timeline: tli(2),
            start: Lsn(0x300_0000),
        },
        Message::WalData {
            start: Lsn(42),
            data: Bytes::from_static(b"wal bytes"),
        },
        Message::WalData {
            start: Lsn(0),
            data: Bytes::new(),
        },
        Message::History {
            timeline: tli(2),
            content: Bytes::from_static(b"1\t0/3000000\tno recovery target specified\n"),
        },
        Message::Ack {
            timeline: tli(1),
            durable: Lsn(99),
        },
        Message::GetPosition { timeline: None },
        Message::GetPosition {
            timeline: Some(tli(7)),
        },
        Message::Position {
            timeline: Some(tli(1)),
            durable: Some(Lsn(0)),
        },
        Message::Position {
            timeline: None,
            durable: None,
        },
        Message::Error {
            code: ErrorCode::SystemIdMismatch,
            message: "cluster pg-main belongs to system 1".to_owned(),
        },
        Message::Error {
            code: ErrorCode::Unknown(999),
            message: String::new(),
        },
        Message::GetFile {
            name: "000000010000000000000003".to_owned(),
        },
        Message::FileData {
            data: Bytes::from_static(b"segment bytes"),
        },
        Message::FileEnd {
            size: 16 << 20,
            crc32c: 0xdead_beef,
            partial: true,
        },
        Message::FileEnd {
            size: 0,
            crc32c: 0,
            partial: false,
        },
        Message::Upstream {
            timeline: TimelineId::new(3).unwrap(),
            wal_end: Lsn(0x1_2345_6789),
        },
        Message::NoSuchFile {
            name: "00000002.history".to_owned(),
        },
    ]
}

#[test]
fn every_message_round_trips_even_byte_by_byte() {
    let mut all = BytesMut::new();
    for m in samples() {
        m.encode(&mut all);
    }
    let mut dec = FrameDecoder::new();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for b in all.iter() {
        buf.extend_from_slice(&[*b]);
        while let Some(m) = dec.decode(&mut buf).unwrap() {
            out.push(m);
        }
    }
    assert_eq!(out, samples());
    assert!(buf.is_empty());
}

#[test]
fn hostile_frames_are_errors() {
    let mut dec = FrameDecoder::with_max_frame_len(1024);
    let mut huge = BytesMut::from(&[b'W', 0xFF, 0xFF, 0xFF, 0xFF][..]);
    assert!(matches!(
        dec.decode(&mut huge),
        Err(KlioProtocolError::FrameTooLarge { .. })
    ));
    let mut unknown = BytesMut::from(&[b'Z', 0, 0, 0, 0][..]);
    assert_eq!(
        dec.decode(&mut unknown),
        Err(KlioProtocolError::UnknownTag(b'Z'))
    );
    let mut short = BytesMut::from(&[b'a', 0, 0, 0, 3, 0, 0, 1][..]);
    assert!(matches!(
        dec.decode(&mut short),
        Err(KlioProtocolError::Malformed { .. })
    ));
    let mut tli0 = BytesMut::new();
    tli0.extend_from_slice(&[b'S', 0, 0, 0, 12]);
    tli0.extend_from_slice(&[0u8; 12]);
    assert!(matches!(
        dec.decode(&mut tli0),
        Err(KlioProtocolError::Malformed { .. })
    ));
    let mut trailing = BytesMut::new();
    Message::Ack {
        timeline: tli(1),
        durable: Lsn(1),
    }
    .encode(&mut trailing);
    trailing[4] += 1;
    trailing.extend_from_slice(&[0]);
    assert!(matches!(
        dec.decode(&mut trailing),
        Err(KlioProtocolError::Malformed { .. })
    ));
    let mut bad_flag = BytesMut::new();
    bad_flag.extend_from_slice(&[b'e', 0, 0, 0, 13]);
    bad_flag.extend_from_slice(&[0u8; 12]);
    bad_flag.extend_from_slice(&[2]);
    assert!(matches!(
        dec.decode(&mut bad_flag),
        Err(KlioProtocolError::Malformed { .. })
    ));
    let mut bad_name = BytesMut::new();
    bad_name.extend_from_slice(&[b'H', 0, 0, 0, 19, 0, 1]);
    bad_name.extend_from_slice(&[0u8; 12]);
    bad_name.extend_from_slice(&[0, 3]);
    bad_name.extend_from_slice(b"../");
    assert!(matches!(
        dec.decode(&mut bad_name),
        Err(KlioProtocolError::Malformed { .. })
    ));
}

proptest! {
    #[test]
    fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut dec = FrameDecoder::with_max_frame_len(256);
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = dec.decode(&mut buf) {}
    }

    #[test]
    fn wal_data_round_trips(start in 0u64..(1 << 62), data in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let m = Message::WalData { start: Lsn(start), data: Bytes::from(data) };
        let mut buf = BytesMut::new();
        m.encode(&mut buf);
        prop_assert_eq!(FrameDecoder::new().decode(&mut buf).unwrap(), Some(m));
    }
}
