//! The archive's scenarios, each run on both formats: plain (segment files as PostgreSQL writes
//! them) and encrypted (sealed `.klio` files, encrypted journals). A scenario is a function
//! taking a [`Format`]; [`for_both_formats!`] makes a `plain` and an `encrypted` test of it.
//! Tests of one format's own files (plain frames written by hand, keys, sealing, rotation)
//! follow the scenarios here and in `tests_encrypted.rs`.

use std::path::{Path, PathBuf};

use klio_crypto::{Compression, Kek, Keyring, SealOptions};
use klio_wal::{Lsn, SegmentNo, SegmentSize, TimelineId, WalFileName};
use proptest::prelude::*;

use super::journal::{
    ENC_FRAMES_START, ENC_HEADER_LEN, HEADER_LEN, JOURNAL_SUFFIX, TAG_LEN, encode_frame,
    journal_name,
};
use super::sealed::sealed_name;
use super::*;

pub(super) const SEG: u64 = 1 << 20;

pub(super) fn size() -> SegmentSize {
    SegmentSize::new(SEG).unwrap()
}

pub(super) fn ident() -> ClusterIdentity {
    ClusterIdentity {
        system_id: 7_400_000_000_000_000_001,
        segment_size: size(),
    }
}

pub(super) fn tl(n: u32) -> TimelineId {
    TimelineId::new(n).unwrap()
}

pub(super) fn kek(seed: u8) -> Kek {
    Kek::from_bytes(&[seed; 32]).unwrap()
}

pub(super) fn ring(seed: u8) -> Keyring {
    Keyring::new(kek(seed))
}

pub(super) fn opts(keyring: Keyring, compression: Compression) -> StorageOptions {
    StorageOptions {
        keyring: Some(keyring),
        seal: SealOptions {
            compression,
            chunk_size: 64 << 10,
        },
        indexes: None,
    }
}

/// Opens (or creates) an archive encrypted with key `seed`, compressed with lz4.
pub(super) fn open_enc(dir: &Path, seed: u8) -> Result<WalArchive, WalArchiveError> {
    WalArchive::open_with(dir, ident(), opts(ring(seed), Compression::Lz4))
}

/// How an archive stores WAL at rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Format {
    /// Segment files as PostgreSQL writes them, journals of plain frames.
    Plain,
    /// Sealed `.klio` files and encrypted journals, under key [`ring`]`(1)`.
    Encrypted,
}

impl Format {
    /// Opens (or creates) a writable archive of cluster [`ident`] in this format.
    pub(super) fn open(self, dir: &Path) -> Result<WalArchive, WalArchiveError> {
        self.open_as(dir, ident())
    }

    /// Opens (or creates) a writable archive of the cluster `identity` in this format.
    pub(super) fn open_as(
        self,
        dir: &Path,
        identity: ClusterIdentity,
    ) -> Result<WalArchive, WalArchiveError> {
        match self {
            Self::Plain => WalArchive::open(dir, identity),
            Self::Encrypted => {
                WalArchive::open_with(dir, identity, opts(ring(1), Compression::Lz4))
            }
        }
    }

    /// Opens an existing archive for reading (with the key, when encrypted).
    pub(super) fn open_reader(self, dir: &Path) -> Result<WalArchiveReader, WalArchiveError> {
        match self {
            Self::Plain => WalArchiveReader::open(dir),
            Self::Encrypted => WalArchiveReader::open_with(dir, Some(ring(1))),
        }
    }

    /// What a scan of the journal at `jp` finds.
    pub(super) fn inspect(self, jp: &Path) -> JournalReport {
        let base = jp
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .strip_suffix(JOURNAL_SUFFIX)
            .unwrap()
            .to_owned();
        let name = WalFileName::parse(&base, size()).unwrap();
        let bytes = std::fs::read(jp).unwrap();
        match self {
            Self::Plain => inspect_journal(&bytes, &name, size(), jp),
            Self::Encrypted => inspect_journal_with(&bytes, &name, ident(), Some(&ring(1)), jp),
        }
        .unwrap()
    }

    /// Where a journal's first frame starts (after the key header, when encrypted).
    pub(super) fn frames_start(self) -> u64 {
        match self {
            Self::Plain => 0,
            Self::Encrypted => ENC_FRAMES_START,
        }
    }

    /// The length of a frame's header.
    pub(super) fn frame_header_len(self) -> u64 {
        match self {
            Self::Plain => HEADER_LEN,
            Self::Encrypted => ENC_HEADER_LEN,
        }
    }

    /// The length of a frame's authentication tag (none in plain frames).
    pub(super) fn frame_tag_len(self) -> u64 {
        match self {
            Self::Plain => 0,
            Self::Encrypted => TAG_LEN,
        }
    }

    /// The length of a frame carrying `n` bytes of WAL.
    pub(super) fn frame_len(self, n: u64) -> u64 {
        self.frame_header_len() + n + self.frame_tag_len()
    }

    /// The file name of a completed segment.
    pub(super) fn segment_file(self, t: TimelineId, segno: u64) -> String {
        match self {
            Self::Plain => seg_name(t, segno),
            Self::Encrypted => sealed_name(t, SegmentNo(segno), size()),
        }
    }
}

/// A `plain` and an `encrypted` test of each scenario, in a module named after it.
macro_rules! for_both_formats {
    ($($scenario:ident),* $(,)?) => {
        $(
            mod $scenario {
                #[test]
                fn plain() {
                    super::$scenario(super::Format::Plain);
                }

                #[test]
                fn encrypted() {
                    super::$scenario(super::Format::Encrypted);
                }
            }
        )*
    };
}

/// Deterministic "WAL" bytes, the byte at each position mixed in, compressible like real WAL:
/// text-like records in every third run of 64 bytes.
pub(super) fn wal(t: TimelineId, start: u64, len: usize) -> Vec<u8> {
    (start..start + len as u64)
        .map(|x| {
            if (x / 64) % 3 == 0 {
                b"INSERT INTO t VALUES (42, 'some row text');"[(x % 43) as usize]
            } else {
                let h = (x ^ u64::from(t.get()) << 40).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                (h >> 60) as u8
            }
        })
        .collect()
}

pub(super) fn seg(t: TimelineId, segno: u64) -> WalFileName {
    WalFileName::Segment {
        timeline: t,
        segno: SegmentNo(segno),
    }
}

fn seg_name(t: TimelineId, segno: u64) -> String {
    seg(t, segno).to_string_with(size())
}

pub(super) fn journal_path(dir: &Path, t: TimelineId, segno: u64) -> PathBuf {
    dir.join(journal_name(t, SegmentNo(segno), size()))
}

/// Appends `wal(t, start, len)` in pieces of `piece` bytes.
pub(super) fn append_wal(a: &mut WalArchive, t: TimelineId, start: u64, len: usize, piece: usize) {
    let data = wal(t, start, len);
    for (i, chunk) in data.chunks(piece.max(1)).enumerate() {
        a.append(Lsn(start + (i * piece.max(1)) as u64), chunk)
            .unwrap();
    }
}

/// The sorted file names in `dir`.
pub(super) fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// Every file in `dir` with its contents, sorted by name: what "nothing changed on disk" compares.
fn files_with_contents(dir: &Path) -> Vec<(String, Vec<u8>)> {
    names(dir)
        .into_iter()
        .map(|name| {
            let content = std::fs::read(dir.join(&name)).unwrap();
            (name, content)
        })
        .collect()
}

pub(super) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

pub(super) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Checks that the archive holds exactly `wal(t, from, end - from)` for `[from, end)`, with
/// segments before `end`'s complete and `end`'s segment partial (zero-padded).
pub(super) fn check_content(a: &WalArchiveReader, t: TimelineId, from: u64, end: u64) {
    let mut segno = from / SEG;
    while segno * SEG < end {
        let f = a
            .read_file(&seg(t, segno))
            .unwrap()
            .unwrap_or_else(|| panic!("segment {segno} missing"));
        let seg_start = segno * SEG;
        let valid_end = end.min(seg_start + SEG);
        let lo = from.max(seg_start);
        assert_eq!(f.content.len() as u64, SEG);
        assert_eq!(
            &f.content[(lo - seg_start) as usize..(valid_end - seg_start) as usize],
            wal(t, lo, (valid_end - lo) as usize).as_slice(),
            "segment {segno} content"
        );
        if valid_end < seg_start + SEG {
            assert!(f.partial);
            assert_eq!(f.valid_len, valid_end - seg_start);
            assert!(
                f.content[(valid_end - seg_start) as usize..]
                    .iter()
                    .all(|&b| b == 0)
            );
        } else {
            assert!(!f.partial, "segment {segno} should be complete");
        }
        segno += 1;
    }
}

for_both_formats!(
    round_trip_with_reopen_and_segment_completion,
    large_appends_are_written_out_and_survive_without_extra_syncs,
    many_small_syncs_grow_the_journal,
    timelines_switch_and_keep_their_own_durable_ends,
    begin_and_append_rules,
    identity_is_recorded_and_enforced,
    crash_at_many_points_of_the_journal_tail,
    damage_before_the_tail_is_an_error_naming_the_journal,
    export_matches_pg_receivewal_layout,
    history_files_are_idempotent_and_conflicts_refused,
    summary_follows_gaps_and_timelines,
    a_cut_journal_reads_back_as_the_zero_padded_partial,
    a_segment_that_cannot_be_finished_poisons_the_writer_and_recovery_finishes_it,
    many_writers_share_the_finishing_threads_and_a_failure_stops_only_its_own,
);
// random_appends_syncs_and_crashes runs on both formats too, as property tests (below).

/// The journal snapshot the relay uploads, alone in another archive directory of the same
/// cluster (with its identity), reads back as the partial segment: the same WAL, zero-padded,
/// with the right valid length, although the file ends at the last frame (no padding).
fn a_cut_journal_reads_back_as_the_zero_padded_partial(format: Format) {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("cluster");
    let t = tl(1);
    let end = SEG + 7_777;
    let mut a = format.open(&dir).unwrap();
    a.begin(t, Lsn(0)).unwrap();
    append_wal(&mut a, t, 0, 5000, 1000);
    a.sync().unwrap();
    append_wal(&mut a, t, 5000, (end - 5000) as usize, 3333);
    assert_eq!(a.sync().unwrap(), Some(Lsn(end)));
    // A completed segment has no snapshot (its final file is what goes up).
    assert_eq!(a.journal_snapshot(t, SegmentNo(0)).unwrap(), None);
    let snap = a.journal_snapshot(t, SegmentNo(1)).unwrap().unwrap();
    assert_eq!(snap.end, Lsn(end));
    assert_eq!(snap.file_name, journal_name(t, SegmentNo(1), size()));
    let on_disk = std::fs::metadata(dir.join(&snap.file_name)).unwrap().len();
    assert!((snap.bytes.len() as u64) < on_disk, "the padding is cut");
    assert_ne!(snap.bytes.last(), Some(&0), "ends in a frame");

    let copy = d.path().join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    std::fs::copy(
        dir.join(identity::IDENTITY_FILE),
        copy.join(identity::IDENTITY_FILE),
    )
    .unwrap();
    std::fs::write(copy.join(&snap.file_name), &snap.bytes).unwrap();
    let r = format.open_reader(&copy).unwrap();
    assert_eq!(r.durable(), Some(WalPosition::new(t, Lsn(end))));
    let f = r
        .read_file(&WalFileName::Partial {
            timeline: t,
            segno: SegmentNo(1),
        })
        .unwrap()
        .unwrap();
    assert!(f.partial);
    assert_eq!(f.valid_len, end - SEG);
    check_content(&r, t, SEG, end);
}

fn round_trip_with_reopen_and_segment_completion(format: Format) {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("cluster");
    let t = tl(1);
    {
        let mut a = format.open(&dir).unwrap();
        assert_eq!(a.durable(), None);
        assert_eq!(a.sync().unwrap(), None);
        assert_eq!(a.begin(t, Lsn(0)).unwrap(), BeginOutcome::Started);
        assert_eq!(a.sync().unwrap(), None);
        append_wal(&mut a, t, 0, 1000, 100);
        assert_eq!(a.durable(), None, "nothing is durable before sync");
        assert_eq!(a.sync().unwrap(), Some(Lsn(1000)));
        assert_eq!(a.durable(), Some(WalPosition::new(t, Lsn(1000))));
        // Ten appends, one sync: one frame.
        let jp = journal_path(&dir, t, 0);
        let r = format.inspect(&jp);
        assert_eq!(
            (r.frames, r.end, r.valid_bytes),
            (1, Lsn(1000), format.frames_start() + format.frame_len(1000))
        );
        // The journal is preallocated: a segment and an eighth, after any key header.
        assert_eq!(
            std::fs::metadata(&jp).unwrap().len(),
            format.frames_start() + SEG + SEG / 8
        );
    }
    let mut a = format.open(&dir).unwrap();
    assert_eq!(a.durable(), Some(WalPosition::new(t, Lsn(1000))));
    assert_eq!(a.begin(t, Lsn(1000)).unwrap(), BeginOutcome::Resumed);
    // Crosses into segment 1 within one append, then into segment 2 across appends.
    append_wal(&mut a, t, 1000, SEG as usize, 300_000);
    assert_eq!(a.sync().unwrap(), Some(Lsn(SEG + 1000)));
    // Segment 0 is finished on the writer's finisher thread.
    a.finish_completed().unwrap();
    assert!(dir.join(format.segment_file(t, 0)).is_file());
    assert!(!journal_path(&dir, t, 0).exists());
    assert!(journal_path(&dir, t, 1).is_file());
    append_wal(&mut a, t, SEG + 1000, SEG as usize - 1000, 77_777);
    // Appended, not yet written or durable.
    assert_eq!(a.durable_on(t), Some(Lsn(SEG + 1000)));
    assert_eq!(a.sync().unwrap(), Some(Lsn(2 * SEG)));
    a.finish_completed().unwrap();
    assert!(dir.join(format.segment_file(t, 1)).is_file());
    assert!(!journal_path(&dir, t, 1).exists());
    assert!(!journal_path(&dir, t, 2).exists());
    append_wal(&mut a, t, 2 * SEG, 5, 5);
    assert_eq!(a.sync().unwrap(), Some(Lsn(2 * SEG + 5)));
    check_content(&a, t, 0, 2 * SEG + 5);
    // Plain segment files are exactly the WAL (sealed ones hold none of it in the clear:
    // tests_encrypted).
    if format == Format::Plain {
        assert_eq!(
            std::fs::read(dir.join(seg_name(t, 0))).unwrap(),
            wal(t, 0, SEG as usize)
        );
    }
    drop(a);
    // A leftover temporary file, which the writer's recovery would remove.
    std::fs::write(dir.join("000000010000000000000003.klio-tmp"), b"half").unwrap();
    let on_disk = files_with_contents(&dir);
    // A reader cannot write (its type has no write methods: see the compile_fail examples on
    // WalArchiveReader); what it sees:
    let a = format.open_reader(&dir).unwrap();
    assert_eq!(a.identity(), ident());
    assert_eq!(a.durable(), Some(WalPosition::new(t, Lsn(2 * SEG + 5))));
    check_content(&a, t, 0, 2 * SEG + 5);
    let listing = a.list().unwrap();
    assert_eq!(
        listing.timelines,
        vec![TimelineListing {
            timeline: t,
            segments: vec![SegmentRange {
                first: SegmentNo(0),
                last: SegmentNo(1)
            }],
            partials: vec![PartialSegment {
                segno: SegmentNo(2),
                end: Lsn(2 * SEG + 5)
            }],
            durable_end: Lsn(2 * SEG + 5),
        }]
    );
    // And it changed nothing on disk: the temporary file and the journal in progress are
    // exactly as they were.
    drop(a);
    assert_eq!(files_with_contents(&dir), on_disk);
}

fn large_appends_are_written_out_and_survive_without_extra_syncs(format: Format) {
    let d = tempfile::tempdir().unwrap();
    let t = tl(1);
    let mut a = format.open(d.path()).unwrap();
    a.begin(t, Lsn(3 * SEG)).unwrap();
    // One 5.5 MiB append is written out at once: the five segments it completes are durable
    // (each was fdatasynced), the half segment after them only once synced.
    let data = wal(t, 3 * SEG, 5 * SEG as usize + SEG as usize / 2);
    a.append(Lsn(3 * SEG), &data).unwrap();
    assert_eq!(a.durable_on(t), Some(Lsn(8 * SEG)));
    a.finish_completed().unwrap();
    assert!(d.path().join(format.segment_file(t, 7)).is_file());
    assert_eq!(a.sync().unwrap(), Some(Lsn(8 * SEG + SEG / 2)));
    drop(a);
    let a = format.open(d.path()).unwrap();
    assert_eq!(
        a.durable(),
        Some(WalPosition::new(t, Lsn(8 * SEG + SEG / 2)))
    );
    check_content(&a, t, 3 * SEG, 8 * SEG + SEG / 2);
}

fn many_small_syncs_grow_the_journal(format: Format) {
    let d = tempfile::tempdir().unwrap();
    let t = tl(1);
    let mut a = format.open(d.path()).unwrap();
    a.begin(t, Lsn(0)).unwrap();
    // First frames fill most of the padding, then small frames overflow it.
    append_wal(&mut a, t, 0, 1_040_000, 1_040_000);
    a.sync().unwrap();
    let mut pos = 1_040_000u64;
    for _ in 0..4500 {
        append_wal(&mut a, t, pos, 1, 1);
        pos += 1;
        assert_eq!(a.sync().unwrap(), Some(Lsn(pos)));
    }
    let jlen = std::fs::metadata(journal_path(d.path(), t, 0))
        .unwrap()
        .len();
    // It grows by eighths of a segment, after any key header.
    let frames_area = jlen - format.frames_start();
    assert!(frames_area > SEG + SEG / 8, "journal grew to {jlen}");
    assert_eq!(frames_area % (SEG / 8), 0);
    // Complete the segment: its file is assembled from ~4500 frames.
    append_wal(&mut a, t, pos, (SEG - pos) as usize + 10, 4096);
    assert_eq!(a.sync().unwrap(), Some(Lsn(SEG + 10)));
    drop(a);
    let a = format.open(d.path()).unwrap();
    check_content(&a, t, 0, SEG + 10);
}

fn timelines_switch_and_keep_their_own_durable_ends(format: Format) {
    let d = tempfile::tempdir().unwrap();
    let (t1, t2) = (tl(1), tl(2));
    let mut a = format.open(d.path()).unwrap();
    a.begin(t1, Lsn(0)).unwrap();
    append_wal(&mut a, t1, 0, (SEG + SEG / 2) as usize, 65536);
    // Not synced: switching timelines makes it durable and leaves segment 1 partial.
    assert_eq!(a.begin(t2, Lsn(SEG)).unwrap(), BeginOutcome::Started);
    assert_eq!(a.durable_on(t1), Some(Lsn(SEG + SEG / 2)));
    append_wal(&mut a, t2, SEG, 2000, 2000);
    assert_eq!(a.sync().unwrap(), Some(Lsn(SEG + 2000)));
    assert_eq!(a.durable(), Some(WalPosition::new(t2, Lsn(SEG + 2000))));
    a.store_history(t2, b"1\t0/180000\tno recovery target specified\n")
        .unwrap();
    drop(a);

    let mut a = format.open(d.path()).unwrap();
    assert_eq!(a.durable_on(t1), Some(Lsn(SEG + SEG / 2)));
    assert_eq!(a.durable_on(t2), Some(Lsn(SEG + 2000)));
    assert_eq!(a.durable_on(tl(3)), None);
    assert_eq!(a.durable(), Some(WalPosition::new(t2, Lsn(SEG + 2000))));
    check_content(&a, t1, 0, SEG + SEG / 2);
    check_content(&a, t2, SEG, SEG + 2000);
    // The old timeline can still be resumed.
    assert_eq!(
        a.begin(t1, Lsn(SEG + SEG / 2)).unwrap(),
        BeginOutcome::Resumed
    );
    append_wal(&mut a, t1, SEG + SEG / 2, 10, 10);
    assert_eq!(a.sync().unwrap(), Some(Lsn(SEG + SEG / 2 + 10)));
    let listing = a.list().unwrap();
    assert_eq!(listing.timelines.len(), 2);
    assert_eq!(listing.histories, vec![t2]);
    assert_eq!(listing.timelines[1].partials[0].end, Lsn(SEG + 2000));
}

fn begin_and_append_rules(format: Format) {
    let d = tempfile::tempdir().unwrap();
    let t = tl(1);
    let mut a = format.open(d.path()).unwrap();
    assert!(matches!(
        a.append(Lsn(0), b"x"),
        Err(WalArchiveError::NotStreaming)
    ));
    let e = a.begin(t, Lsn(100)).unwrap_err();
    assert!(matches!(
        e,
        WalArchiveError::NotSegmentAligned {
            durable_end: None,
            ..
        }
    ));
    assert!(e.to_string().contains("segment boundary"), "{e}");
    a.begin(t, Lsn(SEG)).unwrap();
    append_wal(&mut a, t, SEG, 500, 500);
    let e = a.append(Lsn(SEG + 501), b"x").unwrap_err();
    assert!(matches!(
        e,
        WalArchiveError::Discontinuity {
            expected: Lsn(0x100_1F4),
            ..
        }
    ));
    assert!(e.to_string().contains("0/1001F4"), "{e}");
    a.sync().unwrap();
    // Overlap: before the durable end.
    let e = a.begin(t, Lsn(SEG)).unwrap_err();
    assert!(matches!(
        e,
        WalArchiveError::Overlap {
            durable_end: Lsn(0x100_1F4),
            ..
        }
    ));
    assert!(
        e.to_string().contains("resume streaming from 0/1001F4"),
        "{e}"
    );
    // After the durable end but not aligned.
    assert!(matches!(
        a.begin(t, Lsn(SEG + 600)),
        Err(WalArchiveError::NotSegmentAligned {
            durable_end: Some(_),
            ..
        })
    ));
    // A gap to a later segment boundary is allowed and reported.
    assert_eq!(
        a.begin(t, Lsn(4 * SEG)).unwrap(),
        BeginOutcome::Gap {
            from: Lsn(SEG + 500),
            to: Lsn(4 * SEG)
        }
    );
    append_wal(&mut a, t, 4 * SEG, 10, 10);
    a.sync().unwrap();
    drop(a);
    let a = format.open(d.path()).unwrap();
    assert_eq!(a.durable_on(t), Some(Lsn(4 * SEG + 10)));
    let listing = a.list().unwrap();
    assert_eq!(listing.timelines[0].partials.len(), 2);
    assert!(listing.timelines[0].segments.is_empty());
    check_content(&a, t, SEG, SEG + 500);
    check_content(&a, t, 4 * SEG, 4 * SEG + 10);
    assert_eq!(
        a.read_file(&WalFileName::Segment {
            timeline: t,
            segno: SegmentNo(2)
        })
        .unwrap(),
        None
    );
}

fn identity_is_recorded_and_enforced(format: Format) {
    let d = tempfile::tempdir().unwrap();
    assert!(matches!(
        format.open_reader(d.path()),
        Err(WalArchiveError::NotAnArchive { .. })
    ));
    drop(format.open(d.path()).unwrap());
    let other = ClusterIdentity {
        system_id: 42,
        ..ident()
    };
    let e = format.open_as(d.path(), other).unwrap_err();
    assert!(matches!(
        e,
        WalArchiveError::SystemIdMismatch {
            recorded: 7_400_000_000_000_000_001,
            offered: 42,
            ..
        }
    ));
    assert!(e.to_string().contains("own archive directory"), "{e}");
    let bigger = ClusterIdentity {
        segment_size: SegmentSize::DEFAULT,
        ..ident()
    };
    let e = format.open_as(d.path(), bigger).unwrap_err();
    assert!(matches!(e, WalArchiveError::SegmentSizeMismatch { .. }));
    assert!(e.to_string().contains("1MB"), "{e}");
    assert_eq!(format.open_reader(d.path()).unwrap().identity(), ident());
    // A damaged identity file is reported, not replaced.
    let id_path = d.path().join(identity::IDENTITY_FILE);
    let mut text = std::fs::read_to_string(&id_path).unwrap();
    text = text.replace("system_id 7", "system_id 8");
    std::fs::write(&id_path, text).unwrap();
    assert!(matches!(
        format.open(d.path()),
        Err(WalArchiveError::BadIdentity { .. })
    ));
    // WAL files without an identity file are not adopted.
    std::fs::remove_file(&id_path).unwrap();
    std::fs::write(d.path().join(seg_name(tl(1), 0)), vec![0u8; SEG as usize]).unwrap();
    assert!(matches!(
        format.open(d.path()),
        Err(WalArchiveError::MissingIdentity { .. })
    ));
}

/// Builds an archive with synced WAL up to `synced`, plus more WAL in the same journal synced
/// later up to `later`, in frames of at most 1, 700, 4000 and 123 bytes (each sync one
/// frame). Returns the journal's valid length at `synced`.
pub(super) fn build_crash_base(format: Format, dir: &Path, synced: u64, later: u64) -> u64 {
    let t = tl(1);
    let mut a = format.open(dir).unwrap();
    a.begin(t, Lsn(0)).unwrap();
    append_wal(&mut a, t, 0, synced as usize, 10_000);
    assert_eq!(a.sync().unwrap(), Some(Lsn(synced)));
    let at_sync = format
        .inspect(&journal_path(dir, t, synced / SEG))
        .valid_bytes;
    let mut pos = synced;
    for step in [1usize, 700, 4000, 123] {
        let n = step.min((later - pos) as usize);
        append_wal(&mut a, t, pos, n, n);
        pos += n as u64;
        a.sync().unwrap();
    }
    assert_eq!(pos, later);
    at_sync
}

fn crash_at_many_points_of_the_journal_tail(format: Format) {
    let base = tempfile::tempdir().unwrap();
    let (synced, later) = (SEG + 5000, SEG + 9824);
    let at_sync = build_crash_base(format, base.path(), synced, later);
    let t = tl(1);
    let jname = journal_name(t, SegmentNo(1), size());
    let full = std::fs::read(base.path().join(&jname)).unwrap();
    let valid_end = at_sync + 4 * format.frame_len(0) + (later - synced);
    assert_eq!(
        format.inspect(&base.path().join(&jname)).valid_bytes,
        valid_end
    );
    let header = format.frame_header_len();
    let mut points: Vec<u64> = (at_sync..valid_end).step_by(89).collect();
    points.extend([
        at_sync,
        at_sync + 1,
        at_sync + header - 1,
        at_sync + header,
        at_sync + header + 1,
        valid_end - format.frame_tag_len(),
        valid_end - 1,
        valid_end,
    ]);
    for (i, &p) in points.iter().enumerate() {
        let work = tempfile::tempdir().unwrap();
        copy_dir(base.path(), work.path());
        let jp = work.path().join(&jname);
        let mut bytes = full.clone();
        match i % 3 {
            // Torn: everything after p lost (as zeros: the padding).
            0 => bytes[p as usize..].iter_mut().for_each(|b| *b = 0),
            // Truncated file (a crash during an extension, or a foreign tool).
            1 => bytes.truncate(p as usize),
            // Garbage from p on.
            _ => {
                for (k, b) in bytes[p as usize..].iter_mut().take(5000).enumerate() {
                    *b = (k as u8).wrapping_mul(31).wrapping_add(7) | 1;
                }
            }
        }
        std::fs::write(&jp, &bytes).unwrap();
        // The "crashed" copy reopens at a durable end between the two syncs, with the content
        // up to it, and streaming resumes from there.
        let mut a = format.open(work.path()).unwrap();
        let d = a.durable().unwrap().lsn;
        assert!(
            d.0 >= synced && d.0 <= later,
            "cut at {p}: durable {d} not in {synced}..={later}"
        );
        if p == valid_end {
            assert_eq!(d.0, later, "nothing cut");
        }
        check_content(&a, t, 0, d.0);
        assert_eq!(a.begin(t, d).unwrap(), BeginOutcome::Resumed);
        append_wal(&mut a, t, d.0, (later + 3000 - d.0) as usize, 1000);
        assert_eq!(a.sync().unwrap(), Some(Lsn(later + 3000)));
        drop(a);
        let a = format.open(work.path()).unwrap();
        assert_eq!(a.durable(), Some(WalPosition::new(t, Lsn(later + 3000))));
        check_content(&a, t, 0, later + 3000);
    }
}

fn damage_before_the_tail_is_an_error_naming_the_journal(format: Format) {
    let base = tempfile::tempdir().unwrap();
    let t = tl(1);
    let at_sync = build_crash_base(format, base.path(), 5000, 9824);
    let jp = journal_path(base.path(), t, 0);
    let mut bytes = std::fs::read(&jp).unwrap();
    // Flip a bit in the data of the first frame; synced frames follow it.
    let first_frame = format.frames_start();
    let at = first_frame + format.frame_header_len() + 10;
    bytes[at as usize] ^= 0x10;
    assert!(at_sync > at);
    std::fs::write(&jp, &bytes).unwrap();
    for e in [
        format.open(base.path()).unwrap_err(),
        format.open_reader(base.path()).unwrap_err(),
    ] {
        assert!(
            matches!(&e, WalArchiveError::DamagedJournal { path, offset, .. }
                if *path == jp && *offset == first_frame),
            "{e}"
        );
        assert!(e.to_string().contains(".klio-journal"), "{e}");
    }
    // The file is untouched by the failed open.
    assert_eq!(std::fs::read(&jp).unwrap(), bytes);
}

fn export_matches_pg_receivewal_layout(format: Format) {
    let d = tempfile::tempdir().unwrap();
    let (t1, t2) = (tl(1), tl(2));
    let mut a = format.open(&d.path().join("a")).unwrap();
    a.begin(t1, Lsn(0)).unwrap();
    append_wal(&mut a, t1, 0, 2 * SEG as usize + 300, 250_000);
    a.begin(t2, Lsn(2 * SEG)).unwrap();
    append_wal(&mut a, t2, 2 * SEG, 1234, 1234);
    a.sync().unwrap();
    let history = b"1\t0/200000\tbefore 2000-01-01 00:00:00+00\n";
    a.store_history(t2, history).unwrap();
    let out = d.path().join("export");
    let summary = a.export_to_directory(&out).unwrap();
    assert_eq!(
        summary,
        ExportSummary {
            segments: 2,
            partials: 2,
            histories: 1,
            bytes: 4 * SEG + history.len() as u64,
        }
    );
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            "000000010000000000000000",
            "000000010000000000000001",
            "000000010000000000000002.partial",
            "00000002.history",
            "000000020000000000000002.partial",
        ]
    );
    for s in 0..2 {
        assert_eq!(
            std::fs::read(out.join(seg_name(t1, s))).unwrap(),
            wal(t1, s * SEG, SEG as usize)
        );
    }
    let p = std::fs::read(out.join("000000020000000000000002.partial")).unwrap();
    assert_eq!(p.len() as u64, SEG);
    assert_eq!(&p[..1234], wal(t2, 2 * SEG, 1234).as_slice());
    assert!(p[1234..].iter().all(|&b| b == 0));
    assert_eq!(
        std::fs::read(out.join("00000002.history")).unwrap(),
        history
    );
    // Reading the .partial by name gives the same bytes.
    let f = a
        .read_file(&WalFileName::Partial {
            timeline: t2,
            segno: SegmentNo(2),
        })
        .unwrap()
        .unwrap();
    assert_eq!(f.content, p);
    assert!(
        a.read_file(&WalFileName::Partial {
            timeline: t1,
            segno: SegmentNo(0)
        })
        .unwrap()
        .is_none()
    );
}

fn history_files_are_idempotent_and_conflicts_refused(format: Format) {
    let d = tempfile::tempdir().unwrap();
    let mut a = format.open(d.path()).unwrap();
    let t = tl(2);
    assert_eq!(a.history(t).unwrap(), None);
    a.store_history(t, b"1\t0/3000000\treason\n").unwrap();
    a.store_history(t, b"1\t0/3000000\treason\n").unwrap();
    let e = a.store_history(t, b"1\t0/4000000\tother\n").unwrap_err();
    assert!(matches!(e, WalArchiveError::HistoryConflict { .. }));
    assert_eq!(
        a.history(t).unwrap().as_deref(),
        Some(&b"1\t0/3000000\treason\n"[..])
    );
    let f = a
        .read_file(&WalFileName::History { timeline: t })
        .unwrap()
        .unwrap();
    assert_eq!(f.content, b"1\t0/3000000\treason\n");
}

fn summary_follows_gaps_and_timelines(format: Format) {
    let d = tempfile::tempdir().unwrap();
    let (t1, t2) = (tl(1), tl(2));
    let empty = format.open(d.path()).unwrap().summary().unwrap();
    assert_eq!(
        (empty.segments, empty.gaps, empty.recoverable),
        (0, 0, None)
    );

    let mut a = format.open(d.path()).unwrap();
    a.begin(t1, Lsn(SEG)).unwrap();
    append_wal(&mut a, t1, SEG, (2 * SEG + 100) as usize, 65536);
    a.sync().unwrap();
    // The directory is compared with the summary below: no segment may be finishing
    // between the two listings.
    a.finish_completed().unwrap();
    let s = a.summary().unwrap();
    let p = |timeline, lsn| WalPosition {
        timeline,
        lsn: Lsn(lsn),
    };
    assert_eq!(s.segments, 2);
    assert_eq!(s.gaps, 0);
    assert_eq!(s.oldest, Some(p(t1, SEG)));
    assert_eq!(s.recoverable, Some((p(t1, SEG), p(t1, 3 * SEG + 100))));
    let on_disk: u64 = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(s.bytes, on_disk);
    // Sealed segments are compressed.
    if format == Format::Plain {
        assert!(s.bytes > 2 * SEG, "{}", s.bytes);
    }

    // A gap: WAL before it cannot be replayed to the newest point.
    a.begin(t1, Lsn(6 * SEG)).unwrap();
    append_wal(&mut a, t1, 6 * SEG, (SEG + 10) as usize, 65536);
    a.sync().unwrap();
    let s = a.summary().unwrap();
    assert_eq!((s.segments, s.gaps), (3, 1));
    assert_eq!(s.oldest, Some(p(t1, SEG)));
    assert_eq!(s.recoverable, Some((p(t1, 6 * SEG), p(t1, 7 * SEG + 10))));

    // A new timeline branching in segment 7: the recoverable range follows it back.
    a.begin(t2, Lsn(7 * SEG)).unwrap();
    append_wal(&mut a, t2, 7 * SEG, 2000, 2000);
    a.sync().unwrap();
    a.store_history(t2, b"1\t0/700008\tno recovery target specified\n")
        .unwrap();
    let s = a.summary().unwrap();
    assert_eq!(s.gaps, 1);
    assert_eq!(s.recoverable, Some((p(t1, 6 * SEG), p(t2, 7 * SEG + 2000))));
}

#[derive(Clone, Debug)]
enum Op {
    Append(usize),
    Sync,
    /// Drop the archive, then damage unsynced journal bytes: `cut` picks the point, `garbage`
    /// whether to write garbage instead of losing the bytes.
    Crash {
        cut: u64,
        garbage: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1usize..200_000).prop_map(Op::Append),
        1 => (SEG as usize / 2..3 * SEG as usize).prop_map(Op::Append),
        3 => Just(Op::Sync),
        2 => (any::<u64>(), any::<bool>()).prop_map(|(cut, garbage)| Op::Crash { cut, garbage }),
    ]
}

/// The valid length of every journal in `dir` (a sync point).
fn journal_valid_lengths(format: Format, dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.to_str().unwrap().ends_with(JOURNAL_SUFFIX) {
            out.push((p.clone(), format.inspect(&p).valid_bytes));
        }
    }
    out
}

fn random_appends_syncs_and_crashes(format: Format, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let d = tempfile::tempdir().unwrap();
    let t = tl(1);
    let mut archive = Some(format.open(d.path()).unwrap());
    archive.as_mut().unwrap().begin(t, Lsn(0)).unwrap();
    let mut appended = 0u64;
    let mut synced = 0u64;
    // Valid journal lengths at the last sync: bytes below them must survive a crash.
    let mut synced_lengths: Vec<(PathBuf, u64)> = Vec::new();
    for op in ops {
        match op {
            Op::Append(n) => {
                let a = archive.as_mut().unwrap();
                append_wal(a, t, appended, n, 64 * 1024 + 17);
                appended += n as u64;
                prop_assert!(a.durable_on(t).unwrap_or(Lsn(0)).0 >= synced);
            }
            Op::Sync => {
                let a = archive.as_mut().unwrap();
                let got = a.sync().unwrap();
                prop_assert_eq!(
                    got,
                    if appended > 0 {
                        Some(Lsn(appended))
                    } else {
                        None
                    }
                );
                synced = appended;
                // The finisher removes journals of completed segments meanwhile.
                a.finish_completed().unwrap();
                synced_lengths = journal_valid_lengths(format, d.path());
            }
            Op::Crash { cut, garbage } => {
                drop(archive.take());
                for e in std::fs::read_dir(d.path()).unwrap() {
                    let p = e.unwrap().path();
                    if !p.to_str().unwrap().ends_with(JOURNAL_SUFFIX) {
                        continue;
                    }
                    // An encrypted journal's key header was fsynced when it was created,
                    // before any frame: only bytes after it (and after the last sync) can be
                    // lost.
                    let keep = synced_lengths
                        .iter()
                        .find(|(sp, _)| *sp == p)
                        .map_or(0, |(_, l)| *l)
                        .max(format.frames_start());
                    let mut bytes = std::fs::read(&p).unwrap();
                    let len = bytes.len() as u64;
                    let at = (keep + cut % (len - keep + 1)) as usize;
                    if garbage {
                        for (k, b) in bytes[at..].iter_mut().take(3000).enumerate() {
                            *b = (k as u8) ^ 0xA5;
                        }
                    } else {
                        bytes.truncate(at);
                    }
                    std::fs::write(&p, &bytes).unwrap();
                }
                let mut a = format.open(d.path()).unwrap();
                let durable = a.durable_on(t).unwrap_or(Lsn(0)).0;
                prop_assert!(durable >= synced, "durable {} < synced {}", durable, synced);
                prop_assert!(durable <= appended);
                check_content(&a, t, 0, durable);
                prop_assert_eq!(
                    a.begin(t, Lsn(durable)).unwrap(),
                    if durable == 0 {
                        BeginOutcome::Started
                    } else {
                        BeginOutcome::Resumed
                    }
                );
                appended = durable;
                synced = durable;
                synced_lengths = journal_valid_lengths(format, d.path());
                archive = Some(a);
            }
        }
    }
    let a = archive.as_mut().unwrap();
    a.sync().unwrap();
    check_content(a, t, 0, appended);
    drop(archive);
    if format == Format::Encrypted {
        // Sealed files only: no WAL left in the clear.
        for name in names(d.path()) {
            prop_assert!(
                name == "klio-archive.identity"
                    || name.ends_with(".klio")
                    || name.ends_with(JOURNAL_SUFFIX),
                "unexpected file {}",
                name
            );
        }
    }
    let a = format.open(d.path()).unwrap();
    prop_assert_eq!(a.durable_on(t).unwrap_or(Lsn(0)).0, appended);
    check_content(&a, t, 0, appended);
    Ok(())
}

mod random_appends_syncs_and_crashes {
    use proptest::prelude::*;

    use super::{Format, op, random_appends_syncs_and_crashes};

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        #[test]
        fn plain(ops in proptest::collection::vec(op(), 1..14)) {
            random_appends_syncs_and_crashes(Format::Plain, ops)?;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

        #[test]
        fn encrypted(ops in proptest::collection::vec(op(), 1..14)) {
            random_appends_syncs_and_crashes(Format::Encrypted, ops)?;
        }
    }
}

// Plain journals written frame by frame, as a crash leaves them.

#[test]
fn full_journal_without_final_file_is_finished_on_open() {
    let d = tempfile::tempdir().unwrap();
    let t = tl(3);
    drop(WalArchive::open(d.path(), ident()).unwrap());
    // A journal holding segment 7 in two frames, as a crash after its last fdatasync leaves it.
    let start = 7 * SEG;
    let data = wal(t, start, SEG as usize);
    let mut j = encode_frame(t, Lsn(start), &data[..1000], false);
    j.extend(encode_frame(t, Lsn(start + 1000), &data[1000..], false));
    j.resize((SEG + SEG / 8 + 2 * HEADER_LEN) as usize, 0);
    let jp = journal_path(d.path(), t, 7);
    std::fs::write(&jp, &j).unwrap();
    std::fs::write(d.path().join("000000030000000000000007.klio-tmp"), b"half").unwrap();

    // A reader already serves it as complete, without changing anything.
    let ro = WalArchiveReader::open(d.path()).unwrap();
    assert_eq!(ro.durable(), Some(WalPosition::new(t, Lsn(8 * SEG))));
    let f = ro
        .read_file(&WalFileName::Segment {
            timeline: t,
            segno: SegmentNo(7),
        })
        .unwrap()
        .unwrap();
    assert!(!f.partial);
    assert_eq!(f.content, data);
    assert!(jp.exists());

    let a = WalArchive::open(d.path(), ident()).unwrap();
    assert_eq!(a.durable(), Some(WalPosition::new(t, Lsn(8 * SEG))));
    assert!(!jp.exists());
    assert!(!d.path().join("000000030000000000000007.klio-tmp").exists());
    assert_eq!(std::fs::read(d.path().join(seg_name(t, 7))).unwrap(), data);
}

#[test]
fn stale_and_empty_journals_are_removed_on_open() {
    let d = tempfile::tempdir().unwrap();
    let t = tl(1);
    let mut a = WalArchive::open(d.path(), ident()).unwrap();
    a.begin(t, Lsn(0)).unwrap();
    append_wal(&mut a, t, 0, SEG as usize + 10, 100_000);
    a.sync().unwrap();
    drop(a);
    // A crash between publishing segment 0 and removing its journal leaves a stale journal.
    let stale = journal_path(d.path(), t, 0);
    let mut j = encode_frame(t, Lsn(0), b"stale bytes", false);
    j.resize(4096, 0);
    std::fs::write(&stale, &j).unwrap();
    // A crash while creating a journal leaves one without frames.
    let empty = journal_path(d.path(), t, 9);
    std::fs::write(&empty, vec![0u8; 1000]).unwrap();
    let a = WalArchive::open(d.path(), ident()).unwrap();
    assert!(!stale.exists());
    assert!(!empty.exists());
    assert_eq!(a.durable(), Some(WalPosition::new(t, Lsn(SEG + 10))));
    check_content(&a, t, 0, SEG + 10);
}

#[test]
fn inspect_journal_reports_what_a_scan_finds() {
    let t = tl(1);
    let name = WalFileName::Segment {
        timeline: t,
        segno: SegmentNo(0),
    };
    let mut j = encode_frame(t, Lsn(0), b"hello", false);
    j.extend([0u8; 64]);
    let r = inspect_journal(&j, &name, size(), Path::new("x")).unwrap();
    assert_eq!(r.frames, 1);
    assert_eq!(r.end, Lsn(5));
    assert_eq!(r.valid_bytes, HEADER_LEN + 5);
    assert!(!r.complete);
    assert!(
        inspect_journal(
            &j,
            &WalFileName::History { timeline: t },
            size(),
            Path::new("x")
        )
        .is_err()
    );
}

fn a_segment_that_cannot_be_finished_poisons_the_writer_and_recovery_finishes_it(format: Format) {
    let d = tempfile::tempdir().unwrap();
    let t = tl(1);
    let mut a = format.open(d.path()).unwrap();
    a.begin(t, Lsn(0)).unwrap();
    // A directory holds the final file's temporary name: finishing segment 0 fails.
    let tmp = d
        .path()
        .join(format!("{}.klio-tmp", format.segment_file(t, 0)));
    std::fs::create_dir(&tmp).unwrap();
    append_wal(&mut a, t, 0, SEG as usize + 10, 100_000);
    // The segment is durable in its journal before it is finished: acknowledged as such.
    assert_eq!(a.sync().unwrap(), Some(Lsn(SEG + 10)));
    assert!(a.finish_completed().is_err());
    assert!(matches!(a.sync(), Err(WalArchiveError::Poisoned { .. })));
    // Readers are served from the complete journal meanwhile.
    check_content(&a, t, 0, SEG + 10);
    assert!(journal_path(d.path(), t, 0).is_file());
    drop(a);
    std::fs::remove_dir(&tmp).unwrap();
    let a = format.open(d.path()).unwrap();
    assert_eq!(a.durable_on(t), Some(Lsn(SEG + 10)));
    assert!(d.path().join(format.segment_file(t, 0)).is_file());
    assert!(!journal_path(d.path(), t, 0).exists());
    check_content(&a, t, 0, SEG + 10);
}

/// Writers of many clusters at once have their segments finished by the process's few
/// finishing threads: every segment of every writer is published, and one writer's segment
/// that cannot be finished poisons that writer alone.
fn many_writers_share_the_finishing_threads_and_a_failure_stops_only_its_own(format: Format) {
    let d = tempfile::tempdir().unwrap();
    let t = tl(1);
    let writers = 3 * finisher::threads();
    let end = 4 * SEG + 10;
    let dir = |i: usize| d.path().join(format!("cluster-{i}"));
    // Writer 0 cannot finish its first segment: a directory holds the final file's temporary
    // name.
    let blocker = dir(0).join(format!("{}.klio-tmp", format.segment_file(t, 0)));
    let outcomes: Vec<Result<(), WalArchiveError>> = std::thread::scope(|s| {
        let running: Vec<_> = (0..writers)
            .map(|i| {
                let (dir, blocker) = (dir(i), &blocker);
                s.spawn(move || {
                    let mut a = format.open(&dir).unwrap();
                    if i == 0 {
                        std::fs::create_dir(blocker).unwrap();
                    }
                    a.begin(t, Lsn(0)).unwrap();
                    let data = wal(t, 0, end as usize);
                    for (k, piece) in data.chunks(300_000).enumerate() {
                        a.append(Lsn((k * 300_000) as u64), piece)?;
                        a.sync()?;
                    }
                    a.finish_completed()
                })
            })
            .collect();
        running.into_iter().map(|w| w.join().unwrap()).collect()
    });
    assert!(outcomes[0].is_err(), "the blocked writer failed");
    for (i, outcome) in outcomes.iter().enumerate().skip(1) {
        assert!(outcome.is_ok(), "writer {i}: {outcome:?}");
        for segno in 0..4 {
            assert!(dir(i).join(format.segment_file(t, segno)).is_file());
        }
        check_content(&format.open_reader(&dir(i)).unwrap(), t, 0, end);
    }
    let finishing = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter(|task| {
            let comm = task.as_ref().unwrap().path().join("comm");
            std::fs::read_to_string(comm).is_ok_and(|c| c.trim() == "klio-finish")
        })
        .count();
    assert!(
        (1..=finisher::threads()).contains(&finishing),
        "{finishing} finishing threads for {writers} writers"
    );
    // What the blocked writer made durable waits in its journals, for recovery.
    std::fs::remove_dir(&blocker).unwrap();
    let a = format.open(&dir(0)).unwrap();
    let durable = a.durable_on(t).unwrap();
    assert!(durable >= Lsn(SEG), "{durable}");
    assert!(dir(0).join(format.segment_file(t, 0)).is_file());
    check_content(&a, t, 0, durable.0);
}
