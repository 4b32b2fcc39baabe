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
        Message::BackupHello {
            version: PROTOCOL_VERSION,
            cluster: ClusterName::new("pg-main").unwrap(),
            system_id: 7,
        },
        Message::BackupWelcome {
            version: PROTOCOL_VERSION,
            backup_id: "20261201T120000Z-3f9a".to_owned(),
        },
        Message::HashKey {
            key: [9; 32],
            algorithm: 1,
            dictionary: None,
        },
        Message::HashKey {
            key: [9; 32],
            algorithm: 1,
            dictionary: Some(BlockDictionary::new(Bytes::from_static(b"samples")).unwrap()),
        },
        Message::HaveBlocks {
            hashes: vec![BlockHash([1; 32]), BlockHash([2; 32])],
        },
        Message::HaveBlocks { hashes: vec![] },
        Message::BlocksHeld {
            held: vec![true, false, false, true, true, false, true, false, true],
        },
        Message::BlocksHeld { held: vec![] },
        Message::PutBlock {
            block: Block {
                hash: BlockHash([3; 32]),
                plain_len: 65536,
                compression: BlockCompression::Lz4,
                data: Bytes::from_static(b"compressed"),
            },
        },
        Message::BlockData {
            block: Block {
                hash: BlockHash([4; 32]),
                plain_len: 3,
                compression: BlockCompression::None,
                data: Bytes::from_static(b"abc"),
            },
        },
        Message::FileEntry {
            entry: FileEntry {
                path: "base/5/16384".to_owned(),
                kind: FileKind::File,
                mode: 0o600,
                size: 131072,
                mtime: 1_764_590_400,
                blocks: vec![BlockHash([5; 32]), BlockHash([6; 32])],
            },
        },
        Message::FileEntry {
            entry: FileEntry {
                path: "pg_tblspc/16385".to_owned(),
                kind: FileKind::Symlink {
                    target: "/srv/ts1".to_owned(),
                },
                mode: 0o777,
                size: 0,
                mtime: -1,
                blocks: vec![],
            },
        },
        Message::FileEntry {
            entry: FileEntry {
                path: "pg_wal".to_owned(),
                kind: FileKind::Directory,
                mode: 0o700,
                size: 0,
                mtime: 0,
                blocks: vec![],
            },
        },
        Message::FileBlocks {
            blocks: vec![BlockHash([7; 32])],
        },
        Message::ManifestData {
            data: Bytes::from_static(b"{\"PostgreSQL-Backup-Manifest-Version\": 1"),
        },
        Message::FinishBackup {
            finish: BackupFinish {
                label: "nightly".to_owned(),
                start: klio_wal::WalPosition::new(tli(1), Lsn(0x200_0028)),
                end: klio_wal::WalPosition::new(tli(2), Lsn(0x300_0138)),
                started_at_ms: 1_764_590_400_000,
                ended_at_ms: 1_764_590_405_000,
                pg_version: 150_010,
                tablespaces: vec![TablespaceInfo {
                    oid: 16385,
                    location: "/srv/ts1".to_owned(),
                }],
                block_size: 65536,
                wal_timeout_s: 60,
                capture: CaptureMethod::Local,
            },
        },
        Message::BackupEntry {
            json: Bytes::from_static(b"{}"),
        },
        Message::ListBackups,
        Message::GetBackup {
            id: "20261201T120000Z-3f9a".to_owned(),
        },
        Message::GetBlocks {
            hashes: vec![BlockHash([8; 32])],
        },
        Message::DeleteBackup { id: "x".to_owned() },
        Message::VerifyBackup { id: "y".to_owned() },
        Message::PinBackup {
            id: "z".to_owned(),
            pinned: true,
        },
        Message::PinBackup {
            id: "z".to_owned(),
            pinned: false,
        },
        Message::RunRetention { dry_run: true },
        Message::RetentionReport {
            json: Bytes::from_static(b"{\"cluster\":\"a\"}"),
        },
        Message::Progress { done: 5, total: 10 },
        Message::CatalogEnd,
        Message::Error {
            code: ErrorCode::WalNotArchived,
            message: "no WAL".to_owned(),
        },
    ]
}

#[test]
fn every_error_code_round_trips_through_its_number() {
    for code in [
        ErrorCode::NoSuchBackup,
        ErrorCode::BackupInProgress,
        ErrorCode::WalNotArchived,
        ErrorCode::BackupPinned,
        ErrorCode::DamagedFile,
    ] {
        let mut buf = BytesMut::new();
        Message::Error {
            code,
            message: String::new(),
        }
        .encode(&mut buf);
        let Some(Message::Error { code: back, .. }) = FrameDecoder::new().decode(&mut buf).unwrap()
        else {
            panic!("not an error");
        };
        assert_eq!(back, code);
    }
}

#[test]
fn a_hash_count_beyond_the_payload_or_the_limit_is_malformed() {
    let mut lying = BytesMut::new();
    lying.extend_from_slice(&[b'Q', 0, 0, 0, 4, 0, 0, 0, 2]);
    assert!(matches!(
        FrameDecoder::new().decode(&mut lying),
        Err(KlioProtocolError::Malformed { .. })
    ));
    let mut too_many = BytesMut::new();
    too_many.extend_from_slice(&[b'R', 0, 0, 0, 4]);
    too_many.extend_from_slice(&(MAX_HASHES_PER_MESSAGE as u32 + 1).to_be_bytes());
    assert!(matches!(
        FrameDecoder::new().decode(&mut too_many),
        Err(KlioProtocolError::Malformed { .. })
    ));
    let mut bad_compression = BytesMut::new();
    bad_compression.extend_from_slice(&[b'K', 0, 0, 0, 37]);
    bad_compression.extend_from_slice(&[0; 36]);
    bad_compression.extend_from_slice(&[9]);
    assert!(matches!(
        FrameDecoder::new().decode(&mut bad_compression),
        Err(KlioProtocolError::Malformed { .. })
    ));
}

/// A complete catalog entry with every field set.
pub(super) fn sample_backup_info() -> BackupInfo {
    BackupInfo {
        schema: CATALOG_SCHEMA,
        id: "20261201T120000Z-3f9a".to_owned(),
        cluster: "pg-main".to_owned(),
        label: "nightly".to_owned(),
        status: BackupStatus::Complete,
        start: klio_wal::WalPosition::new(tli(1), Lsn(0x200_0028)).into(),
        end: klio_wal::WalPosition::new(tli(1), Lsn(0x1_0000_0138)).into(),
        started_at: "2026-12-01T12:00:00Z".to_owned(),
        ended_at: "2026-12-01T12:00:05Z".to_owned(),
        completed_at: "2026-12-01T12:00:06Z".to_owned(),
        postgres_version: 150_010,
        system_identifier: "7312345678901234567".to_owned(),
        block_size: 65536,
        tablespaces: vec![CatalogTablespace {
            oid: 16385,
            location: "/srv/ts1".to_owned(),
        }],
        files: 3,
        blocks: 2,
        logical_bytes: 131_072,
        referenced_stored_bytes: 1000,
        new_stored_bytes: 10,
        pinned: false,
        capture: CaptureMethod::Stream,
    }
}

#[test]
fn a_catalog_entry_round_trips_through_json_with_text_lsns() {
    let info = sample_backup_info();
    let json = info.to_json();
    let text = String::from_utf8(json.clone()).unwrap();
    assert!(text.contains(r#""lsn": "1/138""#), "{text}");
    assert!(text.contains(r#""status": "complete""#), "{text}");
    assert_eq!(BackupInfo::from_json(&json).unwrap(), info);
    assert!(BackupInfo::from_json(b"{\"schema\": 1}").is_err());

    // Entries written before `pinned` existed read as unpinned.
    let mut older: serde_json::Value = serde_json::from_slice(&json).unwrap();
    older.as_object_mut().unwrap().remove("pinned");
    let older = serde_json::to_vec(&older).unwrap();
    assert!(!String::from_utf8_lossy(&older).contains("pinned"));
    assert_eq!(BackupInfo::from_json(&older).unwrap(), info);
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
    let mut unknown = BytesMut::from(&[b'~', 0, 0, 0, 0][..]);
    assert_eq!(
        dec.decode(&mut unknown),
        Err(KlioProtocolError::UnknownTag(b'~'))
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
    fn block_flags_round_trip(held in proptest::collection::vec(any::<bool>(), 0..300)) {
        let m = Message::BlocksHeld { held };
        let mut buf = BytesMut::new();
        m.encode(&mut buf);
        prop_assert_eq!(FrameDecoder::new().decode(&mut buf).unwrap(), Some(m));
    }

    #[test]
    fn wal_data_round_trips(start in 0u64..(1 << 62), data in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let m = Message::WalData { start: Lsn(start), data: Bytes::from(data) };
        let mut buf = BytesMut::new();
        m.encode(&mut buf);
        prop_assert_eq!(FrameDecoder::new().decode(&mut buf).unwrap(), Some(m));
    }
}

proptest! {
    #[test]
    fn a_compressed_block_decompresses_to_its_plaintext(
        plain in proptest::collection::vec(any::<u8>(), 0..70_000),
        repeat in 1usize..50,
    ) {
        // Repetitive data compresses, random data is stored as is: both come back whole.
        let plain: Vec<u8> = plain.iter().copied().cycle().take(plain.len() * repeat).take(1 << 16).collect();
        for codec in [BlockCompression::Zstd, BlockCompression::Lz4, BlockCompression::None] {
            let block = Block::compress_with(BlockHash([1; 32]), Bytes::from(plain.clone()), codec);
            prop_assert!(block.data.len() <= plain.len());
            prop_assert!(block.compression == codec || block.compression == BlockCompression::None);
            prop_assert_eq!(block.decompress().unwrap(), plain.clone());
            // Into a buffer a previous block left bytes in: every byte is the block's.
            let mut out = vec![0xaa; plain.len()];
            block.decompress_into(None, &mut out).unwrap();
            prop_assert_eq!(&out, &plain);
            // Into a buffer of another length: refused, not truncated or padded.
            let mut longer = vec![0; plain.len() + 1];
            let refused = matches!(
                block.decompress_into(None, &mut longer),
                Err(BlockDecodeError::WrongLength { .. })
            );
            prop_assert!(refused);
        }
    }
}

proptest! {
    #[test]
    fn a_block_compressed_against_a_dictionary_needs_exactly_that_dictionary(
        plain in proptest::collection::vec(any::<u8>(), 0..70_000),
        repeat in 1usize..50,
        dictionary in proptest::collection::vec(any::<u8>(), 1..MAX_DICTIONARY_LEN),
    ) {
        let plain: Vec<u8> = plain.iter().copied().cycle().take(plain.len() * repeat).take(1 << 16).collect();
        let dictionary = BlockDictionary::new(Bytes::from(dictionary)).unwrap();
        let block = Block::compress_against(BlockHash([1; 32]), Bytes::from(plain.clone()), &dictionary);
        prop_assert!(block.data.len() <= plain.len());
        prop_assert_eq!(block.decompress_with(Some(&dictionary)).unwrap(), plain.clone());
        if block.compression == BlockCompression::Lz4Dictionary {
            prop_assert_eq!(block.decompress(), Err(BlockDecodeError::NeedsDictionary));
        } else {
            prop_assert_eq!(block.compression, BlockCompression::None);
        }
        // A dictionary given to a block that does not use one changes nothing.
        let lz4 = Block::compress_with(BlockHash([1; 32]), Bytes::from(plain.clone()), BlockCompression::Lz4);
        prop_assert_eq!(lz4.decompress_with(Some(&dictionary)).unwrap(), plain);
    }

    #[test]
    fn the_sampler_chooses_the_same_dictionary_however_the_blocks_are_split(
        seeds in proptest::collection::vec(any::<u32>(), 0..60),
        split in any::<usize>(),
    ) {
        let blocks: Vec<(BlockHash, Vec<u8>)> = seeds.iter().map(|&s| {
            let mut hash = [0u8; 32];
            hash[..4].copy_from_slice(&s.to_be_bytes());
            (BlockHash(hash), s.to_le_bytes().repeat(1 << 14))
        }).collect();
        let mut one = DictionarySampler::new();
        for (hash, plain) in &blocks {
            one.offer(hash, plain);
        }
        let cut = if blocks.is_empty() { 0 } else { split % blocks.len() };
        let (mut first, mut second) = (DictionarySampler::new(), DictionarySampler::new());
        for (hash, plain) in blocks[..cut].iter().rev() {
            first.offer(hash, plain);
        }
        for (hash, plain) in &blocks[cut..] {
            second.offer(hash, plain);
        }
        second.merge(first);
        let (one, merged) = (one.finish(), second.finish());
        prop_assert_eq!(&one, &merged);
        let mut distinct = seeds.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() < DICTIONARY_SAMPLES {
            prop_assert!(one.is_none());
        } else {
            // The samples of the smallest hashes, in hash order.
            let expected: Vec<u8> = distinct[..DICTIONARY_SAMPLES]
                .iter()
                .flat_map(|s| s.to_le_bytes().repeat(DICTIONARY_SAMPLE_LEN / 4))
                .collect();
            let dictionary = one.unwrap();
            prop_assert_eq!(dictionary.as_bytes(), &expected[..]);
        }
    }
}

#[test]
fn short_blocks_are_not_sampled_and_a_dictionary_has_a_bounded_length() {
    let mut sampler = DictionarySampler::new();
    for i in 0..100u8 {
        sampler.offer(&BlockHash([i; 32]), &vec![i; 65535]);
    }
    assert!(
        sampler.finish().is_none(),
        "only whole 64 KiB blocks are typical"
    );
    assert_eq!(
        BlockDictionary::new(Bytes::new()),
        Err(InvalidBlockDictionary { len: 0 })
    );
    assert!(BlockDictionary::new(Bytes::from(vec![0u8; MAX_DICTIONARY_LEN])).is_ok());
    assert_eq!(
        BlockDictionary::new(Bytes::from(vec![0u8; MAX_DICTIONARY_LEN + 1])),
        Err(InvalidBlockDictionary {
            len: MAX_DICTIONARY_LEN + 1
        })
    );
}

#[test]
fn a_block_that_lies_about_its_length_or_compression_does_not_decompress() {
    let plain = Bytes::from(vec![7u8; 65536]);
    let block = Block::compress(BlockHash([1; 32]), plain);
    assert_eq!(block.compression, BlockCompression::Zstd);
    let shorter = Block {
        plain_len: 1000,
        ..block.clone()
    };
    assert!(shorter.decompress().is_err());
    let longer = Block {
        plain_len: 70_000,
        ..block.clone()
    };
    assert!(longer.decompress().is_err());
    let as_lz4 = Block {
        compression: BlockCompression::Lz4,
        ..block.clone()
    };
    assert!(as_lz4.decompress().is_err());
    let huge = Block {
        plain_len: MAX_BLOCK_LEN + 1,
        ..block.clone()
    };
    assert_eq!(
        huge.decompress(),
        Err(BlockDecodeError::TooLarge {
            plain_len: MAX_BLOCK_LEN + 1
        })
    );
    let mut damaged = block.data.to_vec();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0xff;
    let damaged = Block {
        data: Bytes::from(damaged),
        ..block
    };
    // A flipped byte either fails to decompress or changes the plaintext; the keyed hash
    // check that follows catches the second case.
    assert!(damaged.decompress().map_or(true, |p| p != vec![7u8; 65536]));
}

#[test]
fn a_flag_other_than_zero_or_one_is_malformed() {
    let mut buf = BytesMut::new();
    Message::RunRetention { dry_run: true }.encode(&mut buf);
    let last = buf.len() - 1;
    buf[last] = 2;
    let e = FrameDecoder::new().decode(&mut buf).unwrap_err();
    assert!(
        matches!(&e, KlioProtocolError::Malformed { reason, .. } if reason.contains("flag 2")),
        "{e:?}"
    );
}

#[test]
fn a_retention_report_round_trips_and_names_its_reasons() {
    let report = RetentionReport {
        schema: RETENTION_REPORT_SCHEMA,
        cluster: "pg-main".to_owned(),
        dry_run: true,
        ran_at: "2026-12-01T12:00:00Z".to_owned(),
        policy: Some(ReportPolicy {
            keep_backups: Some(2),
            recovery_window: Some("7days".to_owned()),
            min_backups: 1,
        }),
        backups: vec![BackupVerdict {
            id: "20261201T120000Z-1b2c".to_owned(),
            ended_at: "2026-12-01T12:00:05Z".to_owned(),
            end: CatalogPosition {
                timeline: 2,
                lsn: Lsn(0x5000100),
            },
            removed: false,
            kept_because: vec![
                RetainedBecause::Newest { rank: 1, keep: 2 },
                RetainedBecause::Pinned,
            ],
        }],
        wal: vec![WalTimelineReport {
            timeline: 1,
            segments_removed: 3,
            bytes_removed: 3 << 24,
            first_removed: Some("000000010000000000000001".to_owned()),
            last_removed: Some("000000010000000000000003".to_owned()),
            kept_from: Some("000000010000000000000004".to_owned()),
            kept_because: vec![WalKeptBecause::Backup {
                id: "20261201T120000Z-1b2c".to_owned(),
            }],
            history_removed: false,
        }],
        blocks: BlockReport {
            blocks: 120,
            bytes: 7 << 20,
            packs_removed: 1,
            packs_rewritten: 0,
        },
        oldest_recoverable: None,
        disk: Some(DiskReport {
            free_bytes: 1,
            total_bytes: 2,
            nearly_full: true,
        }),
        notes: vec![],
        tier2: None,
    };
    let json = report.to_json();
    let text = String::from_utf8(json.clone()).unwrap();
    assert!(text.contains(r#""reason": "newest""#), "{text}");
    assert!(text.contains(r#""lsn": "0/5000100""#), "{text}");
    assert_eq!(RetentionReport::from_json(&json).unwrap(), report);
    assert!(RetentionReport::from_json(b"{}").is_err());
}

/// The frame of `message` with its last payload byte cut off (the frame length adjusted).
fn without_last_byte(message: &Message) -> BytesMut {
    let mut buf = BytesMut::new();
    message.encode(&mut buf);
    buf.truncate(buf.len() - 1);
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) - 1;
    buf[1..5].copy_from_slice(&len.to_be_bytes());
    buf
}

#[test]
fn a_finish_from_an_older_client_without_its_capture_byte_is_a_streamed_backup() {
    let Some(Message::FinishBackup { finish }) = samples()
        .into_iter()
        .find(|m| matches!(m, Message::FinishBackup { .. }))
    else {
        panic!("no FinishBackup among the samples");
    };
    let local = Message::FinishBackup {
        finish: BackupFinish {
            capture: CaptureMethod::Local,
            ..finish.clone()
        },
    };
    let mut older = without_last_byte(&local);
    let Some(Message::FinishBackup { finish: back }) =
        FrameDecoder::new().decode(&mut older).unwrap()
    else {
        panic!("not a FinishBackup");
    };
    assert_eq!(back.capture, CaptureMethod::Stream);
    assert_eq!(back.label, finish.label);
    // A byte that names no method is refused, not taken for one.
    let mut unknown = BytesMut::new();
    local.encode(&mut unknown);
    let last = unknown.len() - 1;
    unknown[last] = 7;
    assert!(FrameDecoder::new().decode(&mut unknown).is_err());
}

#[test]
fn a_hash_key_from_an_older_server_without_its_algorithm_byte_is_hmac_sha256() {
    let key = Message::HashKey {
        key: [5; 32],
        algorithm: 1,
        dictionary: None,
    };
    let mut older = without_last_byte(&key);
    let back = FrameDecoder::new().decode(&mut older).unwrap();
    assert_eq!(
        back,
        Some(Message::HashKey {
            key: [5; 32],
            algorithm: 0,
            dictionary: None,
        })
    );
}

#[test]
fn a_hash_key_message_with_a_dictionary_too_long_is_refused() {
    let mut frame = BytesMut::new();
    Message::HashKey {
        key: [5; 32],
        algorithm: 1,
        dictionary: Some(BlockDictionary::new(Bytes::from(vec![3u8; MAX_DICTIONARY_LEN])).unwrap()),
    }
    .encode(&mut frame);
    // One byte more than a dictionary may have: patch the frame's length and append it.
    let len = u32::from_be_bytes(frame[1..5].try_into().unwrap()) + 1;
    frame[1..5].copy_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&[3]);
    assert!(matches!(
        FrameDecoder::new().decode(&mut frame),
        Err(KlioProtocolError::Malformed { .. })
    ));
}
