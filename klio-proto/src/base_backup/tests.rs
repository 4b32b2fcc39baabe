//! The command builder, the result set parsers, the copystream decoder and the error
//! classification, on hand-built values and byte vectors.

use bytes::Bytes;
use klio_wal::{Lsn, TimelineId};

use super::*;
use crate::backend::FieldDescription;

fn set(columns: &[&str], rows: &[&[Option<&str>]]) -> ResultSet {
    ResultSet {
        columns: columns
            .iter()
            .map(|name| FieldDescription {
                name: (*name).to_owned(),
                table_oid: 0,
                column_id: 0,
                type_oid: 25,
                type_size: -1,
                type_modifier: -1,
                format: 0,
            })
            .collect(),
        rows: rows
            .iter()
            .map(|row| {
                row.iter()
                    .map(|v| v.map(|s| Bytes::copy_from_slice(s.as_bytes())))
                    .collect()
            })
            .collect(),
        tag: "SELECT".to_owned(),
    }
}

fn decode_all(payloads: &[&[u8]]) -> Result<Vec<CopyStreamEvent>, CopyStreamError> {
    let mut decoder = CopyStreamDecoder::new();
    payloads
        .iter()
        .map(|p| decoder.decode(Bytes::copy_from_slice(p)))
        .collect()
}

fn progress(n: u64) -> Vec<u8> {
    let mut p = vec![b'p'];
    p.extend_from_slice(&n.to_be_bytes());
    p
}

#[test]
fn the_default_command_asks_for_everything_klio_needs() {
    assert_eq!(
        BaseBackupOptions::default().command(),
        "BASE_BACKUP (LABEL 'klio base backup', TARGET 'client', CHECKPOINT 'fast', PROGRESS, \
         WAIT false, MANIFEST 'yes', MANIFEST_CHECKSUMS 'CRC32C', TABLESPACE_MAP)"
    );
}

#[test]
fn every_option_reaches_the_command() {
    let options = BaseBackupOptions {
        label: "it's".to_owned(),
        checkpoint: Checkpoint::Spread,
        progress: false,
        manifest: Manifest::Include {
            checksums: ManifestChecksums::Sha256,
            force_encode: true,
        },
        tablespace_map: false,
        wait_for_wal_archive: true,
        verify_checksums: false,
        max_rate: Some(MaxRate::kb_per_second(1024).unwrap()),
    };
    assert_eq!(
        options.command(),
        "BASE_BACKUP (LABEL 'it''s', TARGET 'client', CHECKPOINT 'spread', \
         MANIFEST 'force-encode', MANIFEST_CHECKSUMS 'SHA256', VERIFY_CHECKSUMS false, MAX_RATE 1024)"
    );
}

#[test]
fn no_manifest_means_no_manifest_checksums_option() {
    let options = BaseBackupOptions {
        manifest: Manifest::Omit,
        ..BaseBackupOptions::default()
    };
    let command = options.command();
    assert!(command.contains("MANIFEST 'no'"), "{command}");
    assert!(!command.contains("MANIFEST_CHECKSUMS"), "{command}");
}

#[test]
fn a_label_cannot_close_its_quotes() {
    assert_eq!(quote_literal("a'), WAL, ('"), "'a''), WAL, ('''");
    assert_eq!(quote_literal(""), "''");
}

#[test]
fn max_rate_outside_what_postgresql_accepts_is_rejected() {
    assert!(MaxRate::kb_per_second(31).is_err());
    assert!(MaxRate::kb_per_second(1_048_577).is_err());
    assert_eq!(MaxRate::kb_per_second(32).map(MaxRate::get), Ok(32));
    assert_eq!(
        MaxRate::kb_per_second(1_048_576).map(MaxRate::get),
        Ok(1_048_576)
    );
}

#[test]
fn the_start_position_parses_lsn_and_timeline() {
    let start =
        BackupPosition::from_result(&set(&["recptr", "tli"], &[&[Some("0/2000028"), Some("1")]]));
    assert_eq!(
        start,
        Ok(BackupPosition {
            lsn: Lsn(0x0200_0028),
            timeline: TimelineId::new(1).unwrap(),
        })
    );
}

#[test]
fn a_position_needs_one_row_a_valid_lsn_and_a_nonzero_timeline() {
    let cols = &["recptr", "tli"];
    assert!(BackupPosition::from_result(&set(cols, &[])).is_err());
    assert!(BackupPosition::from_result(&set(cols, &[&[Some("zz"), Some("1")]])).is_err());
    assert!(BackupPosition::from_result(&set(cols, &[&[Some("0/1"), Some("0")]])).is_err());
    assert!(BackupPosition::from_result(&set(cols, &[&[None, Some("1")]])).is_err());
    assert!(BackupPosition::from_result(&set(&["recptr"], &[&[Some("0/1")]])).is_err());
}

#[test]
fn tablespaces_parse_with_the_main_data_directory_last() {
    let cols = &["spcoid", "spclocation", "size"];
    let list = Tablespace::list_from_result(&set(
        cols,
        &[
            &[Some("16384"), Some("/srv/ts1"), Some("12")],
            &[None, None, Some("30000")],
        ],
    ));
    assert_eq!(
        list,
        Ok(vec![
            Tablespace {
                kind: TablespaceKind::User {
                    oid: 16384,
                    location: "/srv/ts1".to_owned(),
                },
                size_kb: Some(12),
            },
            Tablespace {
                kind: TablespaceKind::MainDataDirectory,
                size_kb: Some(30000),
            },
        ])
    );
}

#[test]
fn tablespace_sizes_are_absent_without_progress() {
    let list = Tablespace::list_from_result(&set(
        &["spcoid", "spclocation", "size"],
        &[&[None, None, None]],
    ))
    .unwrap();
    assert_eq!(list[0].size_kb, None);
}

#[test]
fn a_tablespace_list_without_the_main_directory_last_is_rejected() {
    let cols = &["spcoid", "spclocation", "size"];
    let user: &[Option<&str>] = &[Some("16384"), Some("/srv/ts1"), None];
    let main: &[Option<&str>] = &[None, None, None];
    assert!(Tablespace::list_from_result(&set(cols, &[])).is_err());
    assert!(Tablespace::list_from_result(&set(cols, &[user])).is_err());
    assert!(Tablespace::list_from_result(&set(cols, &[main, user])).is_err());
    assert!(Tablespace::list_from_result(&set(cols, &[main, main])).is_err());
    assert!(
        Tablespace::list_from_result(&set(cols, &[&[Some("x"), Some("/a"), None], main])).is_err()
    );
    assert!(Tablespace::list_from_result(&set(cols, &[&[Some("1"), None, None], main])).is_err());
    assert!(Tablespace::list_from_result(&set(cols, &[&[None, None, Some("-")]])).is_err());
}

#[test]
fn a_whole_stream_decodes_in_order() {
    let events = decode_all(&[
        b"n16384.tar\0/srv/ts1\0",
        b"dTS",
        &progress(2),
        b"nbase.tar\0\0",
        b"dBASE",
        &progress(6),
        b"m",
        b"d{\"PostgreSQL-Backup-Manifest-Version\": 1",
        b"d}",
    ])
    .unwrap();
    assert_eq!(
        events,
        vec![
            CopyStreamEvent::NewArchive {
                name: "16384.tar".to_owned(),
                tablespace: Some("/srv/ts1".to_owned()),
            },
            CopyStreamEvent::ArchiveData(Bytes::from_static(b"TS")),
            CopyStreamEvent::Progress(2),
            CopyStreamEvent::NewArchive {
                name: "base.tar".to_owned(),
                tablespace: None,
            },
            CopyStreamEvent::ArchiveData(Bytes::from_static(b"BASE")),
            CopyStreamEvent::Progress(6),
            CopyStreamEvent::ManifestStart,
            CopyStreamEvent::ManifestData(Bytes::from_static(
                b"{\"PostgreSQL-Backup-Manifest-Version\": 1"
            )),
            CopyStreamEvent::ManifestData(Bytes::from_static(b"}")),
        ]
    );
}

#[test]
fn data_before_any_archive_is_an_error() {
    assert_eq!(
        decode_all(&[b"dx"]),
        Err(CopyStreamError::DataBeforeArchive)
    );
}

#[test]
fn an_archive_after_the_manifest_is_an_error() {
    assert_eq!(
        decode_all(&[b"nbase.tar\0\0", b"m", b"n1.tar\0/t\0"]),
        Err(CopyStreamError::ArchiveAfterManifest)
    );
}

#[test]
fn the_manifest_comes_once_and_after_an_archive() {
    assert_eq!(decode_all(&[b"m"]), Err(CopyStreamError::ManifestFirst));
    assert_eq!(
        decode_all(&[b"nbase.tar\0\0", b"m", b"m"]),
        Err(CopyStreamError::SecondManifest)
    );
    assert_eq!(
        decode_all(&[b"nbase.tar\0\0", b"mx"]),
        Err(CopyStreamError::ManifestStartWithPayload { payload_len: 1 })
    );
}

#[test]
fn unknown_type_bytes_and_empty_messages_are_errors() {
    assert_eq!(
        decode_all(&[b"w\0\0"]),
        Err(CopyStreamError::UnknownType { type_byte: b'w' })
    );
    assert_eq!(decode_all(&[b""]), Err(CopyStreamError::EmptyMessage));
}

#[test]
fn a_progress_message_carries_exactly_eight_bytes() {
    assert_eq!(
        decode_all(&[b"p\0\0\0"]),
        Err(CopyStreamError::ProgressLength { payload_len: 3 })
    );
    assert_eq!(
        decode_all(&[b"p\0\0\0\0\0\0\0\0\0"]),
        Err(CopyStreamError::ProgressLength { payload_len: 9 })
    );
    assert_eq!(
        decode_all(&[&progress(7)]),
        Ok(vec![CopyStreamEvent::Progress(7)])
    );
}

#[test]
fn a_new_archive_needs_a_plain_name_and_two_terminated_strings() {
    let fault = |payload: &[u8]| match decode_all(&[payload]) {
        Err(CopyStreamError::MalformedNewArchive(f)) => f,
        other => panic!("expected a malformed new archive, got {other:?}"),
    };
    assert_eq!(
        fault(b"nbase.tar"),
        NewArchiveFault::NotTwoTerminatedStrings
    );
    assert_eq!(
        fault(b"nbase.tar\0"),
        NewArchiveFault::NotTwoTerminatedStrings
    );
    assert_eq!(
        fault(b"nbase.tar\0\0x"),
        NewArchiveFault::NotTwoTerminatedStrings
    );
    assert_eq!(fault(b"n\xff\0\0"), NewArchiveFault::NotUtf8);
    for name in ["", ".", "..", "../x.tar", "a/b.tar", "a\\b.tar"] {
        let mut p = vec![b'n'];
        p.extend_from_slice(name.as_bytes());
        p.extend_from_slice(b"\0\0");
        assert_eq!(fault(&p), NewArchiveFault::UnsafeName(name.to_owned()));
    }
}

#[test]
fn a_stream_without_any_archive_is_incomplete() {
    let mut decoder = CopyStreamDecoder::new();
    assert_eq!(decoder.finish(), Err(CopyStreamError::NoArchive));
    decoder
        .decode(Bytes::from_static(b"nbase.tar\0\0"))
        .unwrap();
    assert_eq!(decoder.finish(), Ok(()));
    assert!(!decoder.in_manifest());
    decoder.decode(Bytes::from_static(b"m")).unwrap();
    assert!(decoder.in_manifest());
    assert_eq!(decoder.finish(), Ok(()));
}

#[test]
fn sqlstate_xx001_is_a_checksum_failure_and_keeps_what_postgresql_said() {
    let error = ServerError {
        severity: "ERROR".to_owned(),
        code: "XX001".to_owned(),
        message: "checksum verification failure during base backup".to_owned(),
        ..ServerError::default()
    };
    let failure = BaseBackupFailure::classify(error.clone());
    assert!(matches!(failure, BaseBackupFailure::ChecksumFailure(_)));
    assert_eq!(failure.server_error(), &error);
    let source = std::error::Error::source(&failure).map(ToString::to_string);
    assert_eq!(source, Some(error.to_string()));
    assert!(
        !failure
            .to_string()
            .contains("checksum verification failure")
    );
}

#[test]
fn other_sqlstates_are_plain_server_failures() {
    let failure = BaseBackupFailure::classify(ServerError {
        code: "55000".to_owned(),
        message: "a backup is already in progress in this session".to_owned(),
        ..ServerError::default()
    });
    assert!(matches!(failure, BaseBackupFailure::Server(_)));
}

fn payload() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..16),
        (
            prop::sample::select(vec![b'n', b'd', b'p', b'm']),
            proptest::collection::vec(prop_oneof![Just(0u8), any::<u8>()], 0..12),
        )
            .prop_map(|(kind, mut body)| {
                body.insert(0, kind);
                body
            }),
    ]
}

proptest::proptest! {
    /// Whatever the bytes, the decoder never panics, and what it accepts keeps the order rules.
    #[test]
    fn accepted_streams_keep_the_order_rules(payloads in proptest::collection::vec(payload(), 0..24)) {
        let mut decoder = CopyStreamDecoder::new();
        let (mut archive_seen, mut manifest_seen) = (false, false);
        for p in payloads {
            match decoder.decode(Bytes::from(p)) {
                Ok(CopyStreamEvent::NewArchive { name, .. }) => {
                    proptest::prop_assert!(!manifest_seen);
                    proptest::prop_assert!(!name.is_empty() && !name.contains('/'));
                    archive_seen = true;
                }
                Ok(CopyStreamEvent::ArchiveData(_)) => {
                    proptest::prop_assert!(archive_seen && !manifest_seen);
                }
                Ok(CopyStreamEvent::ManifestStart) => {
                    proptest::prop_assert!(archive_seen && !manifest_seen);
                    manifest_seen = true;
                }
                Ok(CopyStreamEvent::ManifestData(_)) => proptest::prop_assert!(manifest_seen),
                Ok(CopyStreamEvent::Progress(_)) => {}
                Err(_) => break,
            }
        }
        proptest::prop_assert_eq!(decoder.finish().is_ok(), archive_seen);
    }
}
