//! What only an encrypted archive has: compression choices, no plaintext on disk, keys,
//! damage to sealed files and encrypted frames, rotation, sealing a plain archive from then
//! on. The scenarios both formats share (crashes among them) are in `tests.rs`.

use klio_crypto::{Compression, KeyId};
use klio_wal::{ErrorChain, Lsn, SegmentNo};

use super::journal::{ENC_FRAMES_START, ENC_HEADER_LEN, TAG_LEN, journal_name};
use super::sealed::sealed_name;
use super::tests::{
    Format, SEG, append_wal, build_crash_base, check_content, contains, ident, kek, names,
    open_enc, opts, ring, seg, size, tl, wal,
};
use super::*;

#[test]
fn round_trip_lz4_and_zstd() {
    for compression in [
        Compression::Lz4,
        Compression::Zstd { level: 3 },
        Compression::None,
    ] {
        let d = tempfile::tempdir().unwrap();
        let t = tl(1);
        let end = 2 * SEG + 12_345;
        {
            let mut a =
                WalArchive::open_with(d.path(), ident(), opts(ring(1), compression)).unwrap();
            assert!(a.is_encrypted());
            a.begin(t, Lsn(0)).unwrap();
            append_wal(&mut a, t, 0, 1000, 100);
            assert_eq!(a.sync().unwrap(), Some(Lsn(1000)));
            append_wal(&mut a, t, 1000, (end - 1000) as usize, 70_001);
            assert_eq!(a.sync().unwrap(), Some(Lsn(end)));
            check_content(&a, t, 0, end);
        }
        assert_eq!(
            names(d.path()),
            vec![
                "000000010000000000000000.klio".to_owned(),
                "000000010000000000000001.klio".to_owned(),
                "000000010000000000000002.klio-journal".to_owned(),
                "klio-archive.identity".to_owned(),
            ]
        );
        // Compression works: the sealed segments are smaller than the segments (but for none).
        let sealed_len = std::fs::metadata(d.path().join(sealed_name(t, SegmentNo(0), size())))
            .unwrap()
            .len();
        if compression != Compression::None {
            assert!(sealed_len < SEG / 2, "{compression:?}: {sealed_len}");
        }
        // One sync, one frame: the journal's valid bytes are the key header area plus one frame.
        let jp = d.path().join(journal_name(t, SegmentNo(2), size()));
        let r = inspect_journal_with(
            &std::fs::read(&jp).unwrap(),
            &seg(t, 2),
            ident(),
            Some(&ring(1)),
            &jp,
        )
        .unwrap();
        assert_eq!(r.end, Lsn(end));
        assert_eq!(
            r.valid_bytes,
            ENC_FRAMES_START + ENC_HEADER_LEN + 12_345 + TAG_LEN
        );
        // The plain inspector refuses an encrypted journal.
        assert!(matches!(
            inspect_journal(&std::fs::read(&jp).unwrap(), &seg(t, 2), size(), &jp),
            Err(WalArchiveError::Encrypted { .. })
        ));
        let mut a = WalArchive::open_with(d.path(), ident(), opts(ring(1), compression)).unwrap();
        assert_eq!(a.durable(), Some(WalPosition::new(t, Lsn(end))));
        check_content(&a, t, 0, end);
        assert_eq!(a.begin(t, Lsn(end)).unwrap(), BeginOutcome::Resumed);
        append_wal(&mut a, t, end, 5000, 999);
        assert_eq!(a.sync().unwrap(), Some(Lsn(end + 5000)));
        drop(a);
        let r = WalArchiveReader::open_with(d.path(), Some(ring(1))).unwrap();
        assert_eq!(r.durable(), Some(WalPosition::new(t, Lsn(end + 5000))));
        check_content(&r, t, 0, end + 5000);
    }
}

#[test]
fn marker_appears_in_no_file_yet_reads_and_exports_return_it() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("cluster");
    let t = tl(1);
    let marker = b"KLIO-MARKER-5f3a9c the secret row";
    // WAL with the marker in every segment, including the partial one.
    let total = 2 * SEG as usize + 300_000;
    let mut data = wal(t, 0, total);
    let mut at = 1000;
    while at + marker.len() < total {
        data[at..at + marker.len()].copy_from_slice(marker);
        at += 150_001;
    }
    let mut a = open_enc(&dir, 1).unwrap();
    a.begin(t, Lsn(0)).unwrap();
    for (i, chunk) in data.chunks(40_000).enumerate() {
        a.append(Lsn((i * 40_000) as u64), chunk).unwrap();
        if i % 5 == 0 {
            a.sync().unwrap();
            a.finish_completed().unwrap();
        }
    }
    a.sync().unwrap();
    a.finish_completed().unwrap();
    a.store_history(tl(2), b"1\t0/3000000\tno recovery target specified\n")
        .unwrap();
    for name in names(&dir) {
        let bytes = std::fs::read(dir.join(&name)).unwrap();
        assert!(!contains(&bytes, marker), "{name} holds the marker");
        assert!(!contains(&bytes, &marker[..12]), "{name} holds part of it");
        assert!(
            !contains(&bytes, b"no recovery target"),
            "{name} holds the history's text"
        );
    }
    assert!(names(&dir).contains(&"00000002.history.klio".to_owned()));
    for segno in 0..3 {
        let f = a.read_file(&seg(t, segno)).unwrap().unwrap();
        let lo = (segno * SEG) as usize;
        let hi = (lo + SEG as usize).min(total);
        assert_eq!(&f.content[..hi - lo], &data[lo..hi]);
        assert!(contains(&f.content, marker));
    }
    let out = d.path().join("export");
    let s = a.export_to_directory(&out).unwrap();
    assert_eq!((s.segments, s.partials, s.histories), (2, 1, 1));
    let mut exported = Vec::new();
    for name in names(&out) {
        exported.extend(std::fs::read(out.join(name)).unwrap());
    }
    let mut expected = data.clone();
    expected.resize(3 * SEG as usize, 0);
    expected.extend_from_slice(b"1\t0/3000000\tno recovery target specified\n");
    assert!(exported == expected, "export differs");
}

#[test]
fn a_journal_cut_short_while_being_created_is_removed() {
    let d = tempfile::tempdir().unwrap();
    let t = tl(1);
    let mut a = open_enc(d.path(), 1).unwrap();
    a.begin(t, Lsn(0)).unwrap();
    append_wal(&mut a, t, 0, SEG as usize, 100_000);
    a.sync().unwrap();
    append_wal(&mut a, t, SEG, 10, 10);
    a.sync().unwrap();
    drop(a);
    // The journal of segment 1 as a crash during its creation could leave it: a torn key
    // header (cut inside) and nothing after.
    let jp = d.path().join(journal_name(t, SegmentNo(1), size()));
    let mut bytes = std::fs::read(&jp).unwrap();
    bytes[100..].iter_mut().for_each(|b| *b = 0);
    std::fs::write(&jp, &bytes).unwrap();
    let a = open_enc(d.path(), 1).unwrap();
    assert_eq!(a.durable(), Some(WalPosition::new(t, Lsn(SEG))));
    assert!(!jp.exists());
}

#[test]
fn missing_or_unknown_keys_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let t = tl(1);
    let id1 = kek(1).id();
    {
        let mut a = open_enc(d.path(), 1).unwrap();
        a.begin(t, Lsn(0)).unwrap();
        append_wal(&mut a, t, 0, 2 * SEG as usize, 100_000);
        a.sync().unwrap();
    }
    // Only sealed segments, no journal yet.
    let check_no_key = |e: WalArchiveError| {
        let msg = e.to_string();
        assert!(matches!(e, WalArchiveError::Encrypted { .. }), "{msg}");
        assert!(
            msg.contains("this archive is encrypted: configure the key"),
            "{msg}"
        );
        assert!(msg.contains(&id1.to_string()), "{msg}");
        assert!(msg.contains(".klio"), "{msg}");
    };
    check_no_key(WalArchive::open(d.path(), ident()).unwrap_err());
    check_no_key(WalArchiveReader::open(d.path()).unwrap_err());
    // Another key: the sealed segment names key 1.
    let other = WalArchiveReader::open_with(d.path(), Some(ring(2))).unwrap();
    let e = other.read_file(&seg(t, 1)).unwrap_err();
    let msg = ErrorChain(&e).to_string();
    assert!(
        matches!(
            &e,
            WalArchiveError::Crypto { source: klio_crypto::CryptoError::UnknownKey { key_id }, .. }
                if *key_id == id1
        ),
        "{msg}"
    );
    assert!(msg.contains(&id1.to_string()), "{msg}");
    assert!(msg.contains("000000010000000000000001.klio"), "{msg}");
    assert!(
        other
            .export_to_directory(&d.path().join("x"))
            .map_err(|e| ErrorChain(&e).to_string())
            .unwrap_err()
            .contains(&id1.to_string())
    );
    // With a journal: refusing to open without a key, and with an unknown key naming it.
    {
        let mut a = open_enc(d.path(), 1).unwrap();
        a.begin(t, Lsn(2 * SEG)).unwrap();
        append_wal(&mut a, t, 2 * SEG, 100, 100);
        a.sync().unwrap();
    }
    std::fs::remove_file(d.path().join(sealed_name(t, SegmentNo(0), size()))).unwrap();
    std::fs::remove_file(d.path().join(sealed_name(t, SegmentNo(1), size()))).unwrap();
    check_no_key(WalArchive::open(d.path(), ident()).unwrap_err());
    check_no_key(WalArchiveReader::open(d.path()).unwrap_err());
    for e in [
        open_enc(d.path(), 2).unwrap_err(),
        WalArchiveReader::open_with(d.path(), Some(ring(2))).unwrap_err(),
    ] {
        let msg = ErrorChain(&e).to_string();
        assert!(msg.contains(&id1.to_string()), "{msg}");
        assert!(msg.contains(".klio-journal"), "{msg}");
    }
    // The right key still opens it, untouched.
    let a = open_enc(d.path(), 1).unwrap();
    assert_eq!(a.durable(), Some(WalPosition::new(t, Lsn(2 * SEG + 100))));
}

#[test]
fn damage_in_sealed_segments_and_journals_is_an_error_naming_the_file() {
    let d = tempfile::tempdir().unwrap();
    let t = tl(1);
    build_crash_base(Format::Encrypted, d.path(), 2 * SEG + 5000, 2 * SEG + 9824);
    let s0 = d.path().join(sealed_name(t, SegmentNo(0), size()));
    let s1 = d.path().join(sealed_name(t, SegmentNo(1), size()));
    let original = std::fs::read(&s1).unwrap();
    let a = WalArchiveReader::open_with(d.path(), Some(ring(1))).unwrap();
    // Bit flips anywhere (header, key slot, chunk data, tag), and truncations.
    for at in [
        0usize,
        20,
        60,
        130,
        5000,
        original.len() / 2,
        original.len() - 1,
    ] {
        let mut b = original.clone();
        b[at] ^= 0x04;
        std::fs::write(&s1, &b).unwrap();
        let e = a.read_file(&seg(t, 1)).unwrap_err();
        assert!(
            e.to_string().contains("000000010000000000000001.klio"),
            "{e}"
        );
    }
    for len in [0usize, 10, 124, 200, original.len() - 1] {
        std::fs::write(&s1, &original[..len]).unwrap();
        let e = a.read_file(&seg(t, 1)).unwrap_err();
        assert!(
            e.to_string().contains("000000010000000000000001.klio"),
            "{e}"
        );
    }
    // Swapped with another segment's sealed file (same key): refused by the binding.
    let zero = std::fs::read(&s0).unwrap();
    std::fs::write(&s1, &zero).unwrap();
    std::fs::write(&s0, &original).unwrap();
    for n in [0, 1] {
        let e = a.read_file(&seg(t, n)).unwrap_err();
        assert!(
            matches!(&e, WalArchiveError::DamagedSegment { reason, .. } if reason.contains("swapped")),
            "{e}"
        );
    }
    std::fs::write(&s0, &zero).unwrap();
    std::fs::write(&s1, &original).unwrap();
    check_content(&a, t, 0, 2 * SEG + 9824);
    drop(a);
    // A flipped bit in the first frame of the journal, with synced frames after it.
    let jp = d.path().join(journal_name(t, SegmentNo(2), size()));
    let journal = std::fs::read(&jp).unwrap();
    let mut b = journal.clone();
    b[(ENC_FRAMES_START + ENC_HEADER_LEN + 10) as usize] ^= 0x10;
    std::fs::write(&jp, &b).unwrap();
    for e in [
        open_enc(d.path(), 1).unwrap_err(),
        WalArchiveReader::open_with(d.path(), Some(ring(1))).unwrap_err(),
    ] {
        assert!(
            matches!(&e, WalArchiveError::DamagedJournal { path, .. } if *path == jp),
            "{e}"
        );
    }
    assert_eq!(
        std::fs::read(&jp).unwrap(),
        b,
        "a failed open changes nothing"
    );
    // A flipped bit in the journal's key header.
    for at in [20usize, 70, 150, 200] {
        let mut b = journal.clone();
        b[at] ^= 0x01;
        std::fs::write(&jp, &b).unwrap();
        let e = open_enc(d.path(), 1).unwrap_err();
        assert!(e.to_string().contains(".klio-journal"), "{at}: {e}");
    }
    // The magic of the key header overwritten: not mistaken for an empty plain journal.
    let mut b = journal.clone();
    b[..8].iter_mut().for_each(|x| *x = 0);
    std::fs::write(&jp, &b).unwrap();
    assert!(matches!(
        open_enc(d.path(), 1).unwrap_err(),
        WalArchiveError::DamagedJournal { .. }
    ));
    // The journal moved to another segment's name.
    std::fs::write(&jp, &journal).unwrap();
    let moved = d.path().join(journal_name(t, SegmentNo(3), size()));
    std::fs::rename(&jp, &moved).unwrap();
    let e = open_enc(d.path(), 1).unwrap_err();
    assert!(
        matches!(&e, WalArchiveError::DamagedJournal {
            path,
            damage: JournalDamage::OtherSegment { segno: 2, .. },
            ..
        } if *path == moved),
        "{e}"
    );
    assert!(e.to_string().contains("swapped"), "{e}");
    std::fs::rename(&moved, &jp).unwrap();
    let a = open_enc(d.path(), 1).unwrap();
    check_content(&a, t, 0, 2 * SEG + 9824);
}

#[test]
fn frames_spliced_reordered_or_dropped_are_errors() {
    let d = tempfile::tempdir().unwrap();
    let t = tl(1);
    build_crash_base(Format::Encrypted, d.path(), 5000, 9824);
    let jp = d.path().join(journal_name(t, SegmentNo(0), size()));
    let bytes = std::fs::read(&jp).unwrap();
    // Frames of 5000, 1, 700, 4000 and 123 bytes, each followed by an fdatasync.
    let f = ENC_FRAMES_START as usize;
    let frame_len = |n: usize| (ENC_HEADER_LEN + TAG_LEN) as usize + n;
    let bounds: Vec<usize> = [5000usize, 1, 700, 4000, 123]
        .iter()
        .scan(f, |at, &n| {
            let b = *at;
            *at += frame_len(n);
            Some(b)
        })
        .collect();
    let frame = |b: &[u8], i: usize, n: usize| b[bounds[i]..bounds[i] + frame_len(n)].to_vec();
    // Another archive with the same key and the same WAL, hence frames of the same lengths
    // and fields: its frame 1 spliced into this journal is refused (journal id in the AAD).
    let d2 = tempfile::tempdir().unwrap();
    build_crash_base(Format::Encrypted, d2.path(), 5000, 9824);
    let other = std::fs::read(d2.path().join(journal_name(t, SegmentNo(0), size()))).unwrap();
    let mut spliced = bytes.clone();
    spliced[bounds[1]..bounds[2]].copy_from_slice(&frame(&other, 1, 1));
    // Frames 2 and 3 swapped.
    let mut reordered = bytes.clone();
    let (f2, f3) = (frame(&bytes, 2, 700), frame(&bytes, 3, 4000));
    reordered[bounds[2]..bounds[2] + f3.len()].copy_from_slice(&f3);
    reordered[bounds[2] + f3.len()..bounds[4]].copy_from_slice(&f2);
    // Frame 2 dropped (the rest moved up).
    let mut dropped = bytes.clone();
    dropped.drain(bounds[2]..bounds[3]);
    for (what, b) in [
        ("spliced", spliced),
        ("reordered", reordered),
        ("dropped", dropped),
    ] {
        std::fs::write(&jp, &b).unwrap();
        let e = open_enc(d.path(), 1).unwrap_err();
        assert!(
            matches!(&e, WalArchiveError::DamagedJournal { path, .. } if *path == jp),
            "{what}: {e}"
        );
        let e = WalArchiveReader::open_with(d.path(), Some(ring(1))).unwrap_err();
        assert!(
            matches!(e, WalArchiveError::DamagedJournal { .. }),
            "{what}: {e}"
        );
    }
    std::fs::write(&jp, &bytes).unwrap();
    let a = open_enc(d.path(), 1).unwrap();
    check_content(&a, t, 0, 9824);
}

#[test]
fn rewrap_all_moves_every_file_to_the_new_key() {
    let d = tempfile::tempdir().unwrap();
    let t = tl(1);
    let end = 3 * SEG + 7777;
    {
        let mut a = open_enc(d.path(), 1).unwrap();
        a.begin(t, Lsn(0)).unwrap();
        append_wal(&mut a, t, 0, end as usize, 200_000);
        a.sync().unwrap();
        a.finish_completed().unwrap();
        a.store_history(tl(2), b"1\t0/100\tno recovery target specified\n")
            .unwrap();
        assert_eq!(
            a.key_ids_in_use().unwrap().into_iter().collect::<Vec<_>>(),
            vec![kek(1).id()]
        );
        let mut both = ring(1);
        both.add(kek(2));
        let new = kek(2).id();
        let s = a.rewrap_all(&both, &new).unwrap();
        // Three sealed segments, the journal, the history file.
        assert_eq!((s.rewrapped, s.already_current, s.plain), (5, 0, 0));
        assert_eq!(
            a.key_ids_in_use().unwrap().into_iter().collect::<Vec<_>>(),
            vec![new]
        );
        // Idempotent.
        let s = a.rewrap_all(&both, &new).unwrap();
        assert_eq!((s.rewrapped, s.already_current), (0, 5));
        // Streaming goes on (the open journal's frame key is unchanged) and new files use the
        // new key.
        append_wal(&mut a, t, end, SEG as usize, 100_000);
        assert_eq!(a.sync().unwrap(), Some(Lsn(end + SEG)));
        a.finish_completed().unwrap();
        let ids: Vec<KeyId> = a.key_ids_in_use().unwrap().into_iter().collect();
        assert_eq!(ids, vec![new]);
    }
    // Only the new key is needed now.
    let a = open_enc(d.path(), 2).unwrap();
    check_content(&a, t, 0, end + SEG);
    assert_eq!(
        a.history(tl(2)).unwrap().unwrap(),
        b"1\t0/100\tno recovery target specified\n"
    );
    assert!(
        open_enc(d.path(), 1).is_err(),
        "the old key alone opens nothing"
    );
    // Rotating to a key that is not in the keyring is refused, naming it.
    let mut a = a;
    let e = a.rewrap_all(&ring(2), &kek(3).id()).unwrap_err();
    let msg = ErrorChain(&e).to_string();
    assert!(msg.contains(&kek(3).id().to_string()), "{msg}");
}

#[test]
fn a_plain_archive_opened_with_a_key_seals_from_then_on() {
    let d = tempfile::tempdir().unwrap();
    let t = tl(1);
    {
        let mut a = WalArchive::open(d.path(), ident()).unwrap();
        a.begin(t, Lsn(0)).unwrap();
        append_wal(&mut a, t, 0, SEG as usize + 100, 100_000);
        a.sync().unwrap();
        a.finish_completed().unwrap();
        a.store_history(tl(2), b"plain history\n").unwrap();
    }
    let mut a = open_enc(d.path(), 1).unwrap();
    // The plain history stays plain and readable; storing it again changes nothing.
    a.store_history(tl(2), b"plain history\n").unwrap();
    assert_eq!(a.history(tl(2)).unwrap().unwrap(), b"plain history\n");
    a.store_history(tl(3), b"sealed history\n").unwrap();
    a.begin(t, Lsn(SEG + 100)).unwrap();
    append_wal(&mut a, t, SEG + 100, 2 * SEG as usize, 100_000);
    a.sync().unwrap();
    a.finish_completed().unwrap();
    let n = names(d.path());
    assert!(n.contains(&"000000010000000000000000".to_owned()), "{n:?}");
    assert!(
        n.contains(&"000000010000000000000001.klio".to_owned()),
        "{n:?}"
    );
    assert!(
        n.contains(&"000000010000000000000002.klio".to_owned()),
        "{n:?}"
    );
    let jp = d.path().join("000000010000000000000003.klio-journal");
    assert!(std::fs::read(jp).unwrap().starts_with(&klio_crypto::MAGIC));
    assert!(n.contains(&"00000002.history".to_owned()), "{n:?}");
    assert!(n.contains(&"00000003.history.klio".to_owned()), "{n:?}");
    check_content(&a, t, 0, 3 * SEG + 100);
    let s = a.rewrap_all(&ring(1), &kek(1).id()).unwrap();
    assert_eq!((s.already_current, s.plain), (4, 1));
}

#[test]
fn sealed_history_files_are_bound_to_their_timeline_and_checked() {
    let d = tempfile::tempdir().unwrap();
    let h2 = b"1\t0/3000000\tno recovery target specified\n".to_vec();
    let h3 = b"1\t0/3000000\tno recovery target specified\n2\t0/5000000\tafter point\n".to_vec();
    let mut a = open_enc(d.path(), 1).unwrap();
    a.store_history(tl(2), &h2).unwrap();
    a.store_history(tl(3), &h3).unwrap();
    // Idempotent for the same content, a conflict for other content.
    a.store_history(tl(2), &h2).unwrap();
    assert!(matches!(
        a.store_history(tl(2), &h3),
        Err(WalArchiveError::HistoryConflict { .. })
    ));
    assert_eq!(a.history(tl(3)).unwrap().unwrap(), h3);
    let f = a
        .read_file(&WalFileName::History { timeline: tl(2) })
        .unwrap()
        .unwrap();
    assert_eq!(f.content, h2);
    drop(a);

    let p2 = d.path().join("00000002.history.klio");
    let p3 = d.path().join("00000003.history.klio");
    // Without the key: refused, naming the file.
    let e = WalArchiveReader::open(d.path()).unwrap_err();
    assert!(matches!(e, WalArchiveError::Encrypted { .. }), "{e}");

    // One history swapped for the other: refused, saying so.
    let orig2 = std::fs::read(&p2).unwrap();
    std::fs::copy(&p3, &p2).unwrap();
    let a = open_enc(d.path(), 1).unwrap();
    let e = a.history(tl(2)).unwrap_err().to_string();
    assert!(e.contains("history file of timeline 3"), "{e}");
    // A flipped byte: refused.
    let mut flipped = orig2.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    std::fs::write(&p2, &flipped).unwrap();
    let e = a.history(tl(2)).unwrap_err();
    assert!(matches!(e, WalArchiveError::Crypto { .. }), "{e}");
    std::fs::write(&p2, &orig2).unwrap();
    assert_eq!(a.history(tl(2)).unwrap().unwrap(), h2);
}
