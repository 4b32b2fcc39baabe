use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

/// A header as PostgreSQL's `tarCreateHeader` writes it: octal numbers of full width ended
/// by a space, `ustar\0` `00`, owner names `postgres`, a trailing `/` on directory and link
/// names, and the checksum last.
fn pg_header(name: &str, typeflag: u8, size: u64, link: &str) -> [u8; 512] {
    let mut h = [0u8; 512];
    let mut name = name.as_bytes().to_vec();
    if typeflag != b'0' {
        name.push(b'/');
    }
    h[..name.len()].copy_from_slice(&name);
    octal(&mut h[100..108], 0o700);
    octal(&mut h[108..116], 26);
    octal(&mut h[116..124], 27);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 1_700_000_000);
    h[156] = typeflag;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..265].copy_from_slice(b"ustar\x0000");
    h[265..273].copy_from_slice(b"postgres");
    h[297..305].copy_from_slice(b"postgres");
    octal(&mut h[329..337], 0);
    octal(&mut h[337..345], 0);
    seal(&mut h);
    h
}

fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o} ");
    field.copy_from_slice(text.as_bytes());
}

/// Recomputes the checksum after a test changed the header.
fn seal(h: &mut [u8; 512]) {
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    octal(&mut h[148..156], sum);
}

fn file(name: &str, contents: &[u8]) -> Vec<u8> {
    let mut out = pg_header(name, b'0', contents.len() as u64, "").to_vec();
    out.extend_from_slice(contents);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn end() -> Vec<u8> {
    vec![0; 1024]
}

/// All events of `archive` fed in one piece, `finish` included.
fn events(archive: &[u8]) -> Result<Vec<TarEvent>, TarError> {
    events_in_pieces(archive, &[archive.len()])
}

/// Events of `archive` fed in pieces of the given lengths (the rest in a last piece), with
/// consecutive `Data` slices merged so that events compare whatever the pieces.
fn events_in_pieces(archive: &[u8], cuts: &[usize]) -> Result<Vec<TarEvent>, TarError> {
    let mut reader = TarReader::new();
    let mut buf = BytesMut::new();
    let mut out: Vec<TarEvent> = Vec::new();
    let mut rest = archive;
    let mut pieces: Vec<&[u8]> = Vec::new();
    for &cut in cuts {
        let (piece, tail) = rest.split_at(cut.min(rest.len()));
        pieces.push(piece);
        rest = tail;
    }
    pieces.push(rest);
    for piece in pieces {
        buf.extend_from_slice(piece);
        while let Some(event) = reader.decode(&mut buf)? {
            match (out.last_mut(), event) {
                (Some(TarEvent::Data(prev)), TarEvent::Data(more)) => {
                    let mut joined = BytesMut::from(&prev[..]);
                    joined.extend_from_slice(&more);
                    *prev = joined.freeze();
                }
                (_, event) => out.push(event),
            }
        }
    }
    reader.finish()?;
    Ok(out)
}

fn entry(path: &str, kind: EntryKind) -> TarEvent {
    TarEvent::Entry(TarEntry {
        path: EntryPath::parse(path.as_bytes()).expect("test path is safe"),
        kind,
        mode: 0o700,
        uid: 26,
        gid: 27,
        mtime: 1_700_000_000,
    })
}

#[test]
fn reads_files_directories_and_tablespace_links_as_postgresql_writes_them() {
    let mut archive = pg_header("base", b'5', 0, "").to_vec();
    archive.extend(file("backup_label", b"START WAL LOCATION: 0/2000028\n"));
    archive.extend(file("base/1/1259", &[7u8; 8192]));
    archive.extend(file("empty", b""));
    archive.extend(pg_header("pg_tblspc/16385", b'2', 0, "/srv/tblspc"));
    archive.extend(pg_header("./pg_wal/archive_status", b'5', 0, ""));
    archive.extend(end());
    assert_eq!(
        events(&archive).expect("valid archive"),
        vec![
            entry("base", EntryKind::Directory),
            TarEvent::EntryEnd,
            entry("backup_label", EntryKind::File { size: 30 }),
            TarEvent::Data(Bytes::from_static(b"START WAL LOCATION: 0/2000028\n")),
            TarEvent::EntryEnd,
            entry("base/1/1259", EntryKind::File { size: 8192 }),
            TarEvent::Data(Bytes::from(vec![7u8; 8192])),
            TarEvent::EntryEnd,
            entry("empty", EntryKind::File { size: 0 }),
            TarEvent::EntryEnd,
            entry(
                "pg_tblspc/16385",
                EntryKind::Symlink {
                    target: b"/srv/tblspc".to_vec()
                }
            ),
            TarEvent::EntryEnd,
            entry("pg_wal/archive_status", EntryKind::Directory),
            TarEvent::EntryEnd,
            TarEvent::End,
        ]
    );
}

#[test]
fn nul_terminated_numbers_as_gnu_tar_writes_them_are_read() {
    let mut h = pg_header("f", b'0', 0, "");
    h[100..108].copy_from_slice(b"0000644\0");
    h[124..136].copy_from_slice(b"00000000003\0");
    h[108..116].copy_from_slice(b"     12\0");
    seal(&mut h);
    let mut archive = h.to_vec();
    archive.extend(b"abc".iter().copied().chain([0u8; 509]));
    archive.extend(end());
    let got = events(&archive).expect("valid archive");
    let TarEvent::Entry(e) = &got[0] else {
        panic!("first event is not an entry: {got:?}");
    };
    assert_eq!(
        (e.mode, e.uid, e.kind.clone()),
        (0o644, 0o12, EntryKind::File { size: 3 })
    );
}

#[test]
fn a_size_in_base_256_is_read() {
    let mut h = pg_header("big", b'0', 0, "");
    let size: u64 = 9 << 30;
    h[124] = 0x80;
    h[125..136].fill(0);
    h[128..136].copy_from_slice(&size.to_be_bytes());
    seal(&mut h);
    let mut reader = TarReader::new();
    let mut buf = BytesMut::from(&h[..]);
    let Ok(Some(TarEvent::Entry(e))) = reader.decode(&mut buf) else {
        panic!("no entry");
    };
    assert_eq!(e.kind, EntryKind::File { size });
    assert_eq!(
        reader.finish(),
        Err(TarError::Truncated {
            at: 512,
            within: TruncatedIn::FileData { missing: size }
        })
    );
}

#[test]
fn the_prefix_field_is_joined_to_the_name() {
    let mut h = pg_header("file", b'0', 0, "");
    h[345..345 + 9].copy_from_slice(b"some/long");
    seal(&mut h);
    let mut archive = h.to_vec();
    archive.extend(end());
    assert_eq!(
        events(&archive).expect("valid archive")[0],
        entry("some/long/file", EntryKind::File { size: 0 })
    );
}

#[test]
fn a_wrong_checksum_is_refused_at_its_header() {
    let mut archive = file("a", b"x");
    let mut bad = pg_header("b", b'0', 0, "");
    bad[0] = b'c';
    archive.extend(bad);
    let err = events(&archive).expect_err("corrupt header");
    assert!(
        matches!(err, TarError::ChecksumMismatch { header_at: 1024, recorded, computed } if computed == recorded + 1),
        "{err:?}"
    );
}

#[test]
fn a_number_that_is_not_octal_is_refused_naming_its_field() {
    let mut h = pg_header("f", b'0', 0, "");
    h[136..148].copy_from_slice(b"0000000008 \0");
    seal(&mut h);
    assert_eq!(
        events(&h),
        Err(TarError::InvalidNumber {
            header_at: 0,
            field: HeaderField::Mtime,
            problem: NumberProblem::NotANumber
        })
    );
    let mut h = pg_header("f", b'0', 0, "");
    h[124..136].fill(b' ');
    seal(&mut h);
    assert!(matches!(
        events(&h),
        Err(TarError::InvalidNumber {
            field: HeaderField::Size,
            ..
        })
    ));
}

#[test]
fn mode_bits_beyond_permissions_are_refused() {
    let mut h = pg_header("f", b'0', 0, "");
    octal(&mut h[100..108], 0o100644);
    seal(&mut h);
    assert_eq!(
        events(&h),
        Err(TarError::InvalidNumber {
            header_at: 0,
            field: HeaderField::Mode,
            problem: NumberProblem::OutOfRange
        })
    );
}

#[test]
fn a_header_that_is_not_ustar_is_refused() {
    let mut h = pg_header("f", b'0', 0, "");
    h[257..265].copy_from_slice(b"ustar  \0");
    seal(&mut h);
    assert_eq!(
        events(&h),
        Err(TarError::NotUstar {
            header_at: 0,
            magic: *b"ustar  \0"
        })
    );
}

#[test]
fn types_postgresql_never_writes_are_refused() {
    for typeflag in [b'1', b'3', b'4', b'6', b'x', b'g', b'L', b'K'] {
        let h = pg_header("f", typeflag, 0, "");
        assert_eq!(
            events(&h),
            Err(TarError::UnsupportedType {
                header_at: 0,
                typeflag
            })
        );
    }
}

#[test]
fn paths_that_could_leave_the_data_directory_are_refused() {
    for (name, problem) in [
        ("/etc/passwd", PathProblem::Absolute),
        ("../outside", PathProblem::ParentComponent),
        ("base/../../outside", PathProblem::ParentComponent),
        (".", PathProblem::Empty),
        ("dir/", PathProblem::TrailingSlashOnFile),
    ] {
        let mut archive = file(name, b"");
        archive.extend(end());
        assert_eq!(
            events(&archive),
            Err(TarError::UnsafePath {
                header_at: 0,
                path: name.to_owned(),
                problem
            }),
            "{name}"
        );
    }
}

#[test]
fn paths_are_normalized() {
    let mut archive = pg_header(".", b'5', 0, "").to_vec();
    archive.extend(file("./a//b/./c", b""));
    archive.extend(end());
    let got = events(&archive).expect("valid archive");
    let paths: Vec<_> = got
        .iter()
        .filter_map(|e| match e {
            TarEvent::Entry(e) => Some((e.path.to_string(), e.path.is_root())),
            _ => None,
        })
        .collect();
    assert_eq!(paths, [(".".into(), true), ("a/b/c".into(), false)]);
}

#[test]
fn a_directory_or_link_with_contents_is_refused() {
    let h = pg_header("d", b'5', 1, "");
    assert_eq!(
        events(&h),
        Err(TarError::SizeOnNonFile {
            header_at: 0,
            size: 1
        })
    );
    let h = pg_header("l", b'2', 0, "");
    assert_eq!(events(&h), Err(TarError::EmptyLinkTarget { header_at: 0 }));
}

#[test]
fn non_zero_padding_is_refused_at_its_byte() {
    let mut archive = file("a", b"xyz");
    archive[512 + 100] = 1;
    archive.extend(end());
    assert_eq!(events(&archive), Err(TarError::NonZeroPadding { at: 612 }));
}

#[test]
fn a_header_after_a_single_zero_block_is_refused() {
    let mut archive = vec![0; 512];
    archive.extend(file("a", b""));
    assert_eq!(events(&archive), Err(TarError::LoneZeroBlock { at: 512 }));
}

#[test]
fn zero_record_padding_after_the_end_is_accepted_and_data_is_not() {
    let mut archive = file("a", b"x");
    archive.extend(end());
    archive.extend(vec![0; 8192]);
    assert!(events(&archive).is_ok());
    archive.push(b'!');
    assert_eq!(
        events(&archive),
        Err(TarError::DataAfterEnd {
            at: 1024 + 1024 + 8192
        })
    );
}

#[test]
fn a_cut_archive_is_reported_by_finish_with_where_it_stopped() {
    let mut archive = file("a", &[1; 600]);
    archive.extend(end());
    for (len, at, within) in [
        (0, 0, TruncatedIn::Header),
        (100, 0, TruncatedIn::Header),
        (600, 600, TruncatedIn::FileData { missing: 512 }),
        (1112, 1112, TruncatedIn::Padding),
        (1536, 1536, TruncatedIn::Header),
        (2048, 2048, TruncatedIn::EndMarker),
    ] {
        assert_eq!(
            events(&archive[..len]),
            Err(TarError::Truncated { at, within }),
            "cut at {len}"
        );
    }
}

#[test]
fn after_an_error_every_call_fails_again() {
    let mut h = pg_header("f", b'0', 0, "");
    h[0] = b'g';
    let mut reader = TarReader::new();
    let mut buf = BytesMut::from(&h[..]);
    let first = reader.decode(&mut buf).expect_err("corrupt");
    buf.extend_from_slice(&file("ok", b"")[..]);
    assert_eq!(reader.decode(&mut buf), Err(first.clone()));
    assert_eq!(reader.finish(), Err(first));
}

#[test]
fn every_error_message_says_where() {
    let mut h = pg_header("f", b'0', 0, "");
    h[0] = b'g';
    let msg = events(&h).expect_err("corrupt").to_string();
    assert!(msg.contains("at byte 0"), "{msg}");
}

/// A random archive of files (of sizes around block boundaries), directories and links.
fn archive_strategy() -> impl Strategy<Value = Vec<u8>> {
    let member = prop_oneof![
        (0usize..1500, any::<u8>()).prop_map(|(len, fill)| file(
            "base/1/16384",
            &(0..len)
                .map(|i| fill.wrapping_add(i as u8))
                .collect::<Vec<_>>()
        )),
        Just(pg_header("base/1", b'5', 0, "").to_vec()),
        Just(pg_header("pg_tblspc/16400", b'2', 0, "/srv/ts").to_vec()),
    ];
    proptest::collection::vec(member, 0..6).prop_map(|members| {
        let mut archive = members.concat();
        archive.extend(end());
        archive
    })
}

proptest! {
    #[test]
    fn any_split_of_an_archive_gives_the_same_events(
        archive in archive_strategy(),
        cuts in proptest::collection::vec(0usize..700, 0..20),
    ) {
        let whole = events(&archive).expect("valid archive");
        prop_assert_eq!(whole.last(), Some(&TarEvent::End));
        prop_assert_eq!(events_in_pieces(&archive, &cuts), Ok(whole));
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = events(&data);
    }

    #[test]
    fn a_flipped_byte_never_yields_other_contents(
        archive in archive_strategy(),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        // Either the flip is detected or it hit contents and only those change: a header or
        // padding byte never changes silently.
        let good = events(&archive).expect("valid archive");
        let mut bad = archive.clone();
        let i = at.index(bad.len());
        bad[i] ^= flip;
        if let Ok(got) = events(&bad) {
            prop_assert_eq!(got.len(), good.len());
            for (g, b) in good.iter().zip(&got) {
                match (g, b) {
                    (TarEvent::Data(x), TarEvent::Data(y)) => prop_assert_eq!(x.len(), y.len()),
                    _ => prop_assert_eq!(g, b),
                }
            }
        }
    }
}
