//! The record walker on real PostgreSQL 15 WAL: everything PostgreSQL wrote passes (segments
//! ending in `XLOG_SWITCH`, crash recovery, a timeline switch after promotion), pg_waldump
//! counts the same records, and any damaged byte is reported at or before its position.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use klio_testkit::{PgOptions, PgServer, pg_bin, run_ok, wait_until};
use klio_wal::page::{PageHeader, WalMagic, XLP_BKP_REMOVABLE, XLP_FIRST_IS_OVERWRITE_CONTRECORD};
use klio_wal::record_walk::{RecordWalker, SegmentSummary, WalCorruption};
use klio_wal::{Lsn, SegmentNo, SegmentSize, TimelineId, WalFileName};

const MIB: u64 = 1 << 20;
const BLOCK: usize = 8192;

fn one_mib() -> SegmentSize {
    SegmentSize::new(MIB).unwrap()
}

/// The WAL version and system identifier from a segment's long header.
fn identity(segment: &[u8]) -> (WalMagic, u64) {
    let h = PageHeader::parse(segment).expect("long page header");
    (h.magic, h.long.expect("long header").system_id)
}

/// xorshift64*: deterministic positions without a `rand` dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// Whether a changed byte can be detected at all: `XLP_BKP_REMOVABLE` may be set or not on any
/// page, and the overwrite flag on the first page walked may concern a record before the walk.
fn is_checkable(first_segment: bool, offset: usize, xor: u8) -> bool {
    let flags = offset % BLOCK == 2;
    let removable = flags && xor == XLP_BKP_REMOVABLE as u8;
    let mask = (XLP_FIRST_IS_OVERWRITE_CONTRECORD | XLP_BKP_REMOVABLE) as u8;
    let first = first_segment && offset == 2 && xor & !mask == 0;
    !removable && !first
}

/// A walk of `segments` (in order) from `walker`, keeping the walker's state before each one.
fn walk(
    walker: &mut RecordWalker,
    segments: &[(SegmentNo, Vec<u8>)],
) -> (Vec<SegmentSummary>, Vec<RecordWalker>) {
    let mut sums = Vec::new();
    let mut before = Vec::new();
    for (segno, data) in segments {
        assert_eq!(walker.next_segment(), *segno);
        before.push(walker.clone());
        let sum = walker
            .feed_segment(data)
            .unwrap_or_else(|e| panic!("segment {:X}: {e}", segno.0));
        sums.push(sum);
    }
    (sums, before)
}

/// Changes one byte at `offset` of segment `index` and walks on from there: the error found.
fn walk_damaged(
    segments: &[(SegmentNo, Vec<u8>)],
    before: &[RecordWalker],
    index: usize,
    offset: usize,
    xor: u8,
) -> Option<WalCorruption> {
    let mut walker = before[index].clone();
    let mut bad = segments[index].1.clone();
    bad[offset] ^= xor;
    if let Err(e) = walker.feed_segment(&bad) {
        return Some(e);
    }
    segments[index + 1..]
        .iter()
        .find_map(|(_, data)| walker.feed_segment(data).err())
}

/// Flips `count` random bytes, one at a time, and checks each is found at or before itself.
fn damage_is_found(
    segments: &[(SegmentNo, Vec<u8>)],
    before: &[RecordWalker],
    range: impl Fn(usize) -> std::ops::Range<usize>,
    count: usize,
    seed: u64,
) {
    let mut rng = Rng(seed);
    let mut tried = 0;
    while tried < count {
        let index = rng.below(segments.len() as u64) as usize;
        let r = range(index);
        let offset = r.start + rng.below((r.end - r.start) as u64) as usize;
        let xor = 1 + rng.below(255) as u8;
        if !is_checkable(index == 0, offset, xor) {
            continue;
        }
        tried += 1;
        let at = one_mib().segment_start(segments[index].0).unwrap().0 + offset as u64;
        let err = walk_damaged(segments, before, index, offset, xor)
            .unwrap_or_else(|| panic!("byte {} changed with ^{xor:#04x}: not found", Lsn(at)));
        assert!(
            err.lsn().0 <= at && at - err.lsn().0 < MIB,
            "byte {} changed with ^{xor:#04x}, reported: {err}",
            Lsn(at)
        );
    }
}

/// The checked-in pgbench segment (taken from the middle of a run, so it starts and ends inside
/// records): it walks clean, and damage anywhere in its records is found.
#[test]
fn real_pgbench_segment_fixture() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../klio-crypto/benches/fixtures/pgbench-1mib.wal");
    let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (magic, system_id) = identity(&data);
    let start = PageHeader::parse(&data).unwrap().page_addr;
    let segno = one_mib().segment_of(start);
    let walker = RecordWalker::new(one_mib(), TimelineId::FIRST, segno, magic, system_id);
    let segments = vec![(segno, data)];
    let (sums, before) = walk(&mut walker.clone(), &segments);
    let sum = &sums[0];
    assert!(sum.records > 1000, "{sum:?}");
    let first = (sum.first_record.unwrap().0 - start.0) as usize;
    let end = (sum.last_record_end.unwrap().0 - start.0) as usize;
    assert!(sum.unfinished_record.is_some(), "{sum:?}");
    // Bytes of the records checked; the record cut at the end has no CRC to check yet.
    damage_is_found(&segments, &before, |_| first..end, 300, 7);
}

fn completed_segments(
    pg_wal: &Path,
    timeline: TimelineId,
    below: SegmentNo,
) -> BTreeMap<SegmentNo, Vec<u8>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(pg_wal).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if let Ok(WalFileName::Segment { timeline: t, segno }) =
            WalFileName::parse(&name, one_mib())
            && t == timeline
            && segno < below
        {
            out.insert(segno, std::fs::read(pg_wal.join(&name)).unwrap());
        }
    }
    out
}

fn contiguous(segments: BTreeMap<SegmentNo, Vec<u8>>) -> Vec<(SegmentNo, Vec<u8>)> {
    let v: Vec<_> = segments.into_iter().collect();
    for w in v.windows(2) {
        assert_eq!(w[1].0.0, w[0].0.0 + 1, "gap in pg_wal after {:X}", w[0].0.0);
    }
    v
}

fn current_segment(pg: &PgServer) -> SegmentNo {
    one_mib().segment_of(pg.current_lsn().parse().unwrap())
}

/// pg_waldump's record count over `segments` (copied to a directory of their own).
fn pg_waldump_count(segments: &[(SegmentNo, Vec<u8>)], start: Lsn) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    for (segno, data) in segments {
        let name = WalFileName::Segment {
            timeline: TimelineId::FIRST,
            segno: *segno,
        };
        std::fs::write(dir.path().join(name.to_string_with(one_mib())), data).unwrap();
    }
    let end = one_mib()
        .segment_start(SegmentNo(segments.last().unwrap().0.0 + 1))
        .unwrap();
    let out = run_ok(
        Command::new(pg_bin("pg_waldump"))
            .arg("--path")
            .arg(dir.path())
            .args(["--timeline", "1", "--stats"])
            .args(["--start", &start.to_string(), "--end", &end.to_string()]),
    );
    let total = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("Total"))
        .unwrap_or_else(|| panic!("no Total in pg_waldump --stats:\n{}", out.stdout));
    total.split_whitespace().next().unwrap().parse().unwrap()
}

/// pgbench load, a checkpoint, `pg_switch_wal`, a crash and its recovery, more load: every
/// completed segment in pg_wal walks clean, pg_waldump counts the same records, and damaged
/// bytes anywhere are found.
#[test]
fn real_postgres_wal_walks_clean_and_damage_is_found() {
    let mut pg = PgServer::start(PgOptions {
        wal_segsize_mb: 1,
        // Keep every segment since initdb, so the walk can start at the very first record.
        conf: vec!["wal_keep_size = '1GB'".into()],
        ..PgOptions::default()
    });
    pg.pgbench(&["-i", "-s", "1", "-q"]);
    pg.psql("CHECKPOINT");
    pg.pgbench(&["-T", "3", "-c", "2"]);
    pg.switch_wal();
    pg.pgbench(&["-T", "1"]);
    pg.kill9();
    pg.restart();
    pg.pgbench(&["-T", "1"]);
    pg.switch_wal();

    let pg_wal = pg.data_dir().join("pg_wal");
    let segments = contiguous(completed_segments(
        &pg_wal,
        TimelineId::FIRST,
        current_segment(&pg),
    ));
    assert!(segments.len() >= 10, "only {} segments", segments.len());
    let (magic, system_id) = identity(&segments[0].1);
    assert_eq!(magic, WalMagic::Pg15);
    let mut walker = RecordWalker::new(
        one_mib(),
        TimelineId::FIRST,
        segments[0].0,
        magic,
        system_id,
    );
    let (sums, before) = walk(&mut walker, &segments);
    let records: u64 = sums.iter().map(|s| s.records).sum();
    let switches = sums.iter().filter(|s| s.switch_record.is_some()).count();
    assert!(switches >= 2, "{sums:#?}");
    assert!(sums.last().unwrap().switch_record.is_some());
    assert!(sums.iter().all(|s| s.aborted_records == 0));

    // The reference reader finds exactly the records the walker checked.
    let first = sums[0].first_record.unwrap();
    assert_eq!(pg_waldump_count(&segments, first), records);

    // One byte in the middle of a segment, then random bytes of any segment.
    let mid = segments.len() / 2;
    let err = walk_damaged(&segments, &before, mid, 512 * 1024 + 123, 0x01).unwrap();
    let at = one_mib().segment_start(segments[mid].0).unwrap().0 + 512 * 1024 + 123;
    assert!(err.lsn().0 <= at, "{err}");
    eprintln!("damaged byte {} reported as: {err}", Lsn(at));
    // Up to the end of each segment's XLOG_SWITCH record, if it has one: what follows it is not
    // WAL (PostgreSQL never reads it), so changing it is no damage.
    let ends: Vec<usize> = sums
        .iter()
        .zip(&segments)
        .map(|(sum, (segno, _))| match sum.switch_record {
            Some(switch) => (switch.0 - one_mib().segment_start(*segno).unwrap().0) as usize + 24,
            None => MIB as usize,
        })
        .collect();
    damage_is_found(&segments, &before, |i| 0..ends[i], 200, 11);
}

/// A promoted standby: timeline 1 up to the switch point of `00000002.history`, the old
/// timeline's partial last segment, then timeline 2 from the copy of that segment on.
#[test]
fn real_timeline_switch_after_promotion() {
    let primary = PgServer::start(PgOptions {
        wal_segsize_mb: 1,
        conf: vec!["wal_keep_size = '1GB'".into()],
        ..PgOptions::default()
    });
    primary.pgbench(&["-i", "-s", "1", "-q"]);
    let standby = PgServer::standby_of(&primary);
    primary.pgbench(&["-T", "2"]);
    let target = primary.current_lsn();
    wait_until("the standby to replay", Duration::from_secs(120), || {
        let done = standby.psql(&format!(
            "SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn"
        ));
        (done == "t").then_some(())
    });
    standby.promote();
    standby.pgbench(&["-T", "2"]);
    standby.switch_wal();

    let pg_wal = standby.data_dir().join("pg_wal");
    let history = std::fs::read_to_string(pg_wal.join("00000002.history")).unwrap();
    let mut fields = history.lines().next().unwrap().split_whitespace();
    assert_eq!(fields.next(), Some("1"), "{history}");
    let switch_point: Lsn = fields.next().unwrap().parse().unwrap();
    let switch_segno = one_mib().segment_of(switch_point);
    let tl2 = TimelineId::new(2).unwrap();

    let old = contiguous(completed_segments(&pg_wal, TimelineId::FIRST, switch_segno));
    let new = contiguous(completed_segments(&pg_wal, tl2, current_segment(&standby)));
    assert_eq!(new[0].0, switch_segno, "{history}");
    assert_eq!(old.last().unwrap().0.0 + 1, switch_segno.0);
    let (magic, system_id) = identity(&old[0].1);
    let mut walker = RecordWalker::new(one_mib(), TimelineId::FIRST, old[0].0, magic, system_id);
    walk(&mut walker, &old);

    // The old timeline's last segment, as far as the new timeline took it over.
    let partial_name = WalFileName::Segment {
        timeline: TimelineId::FIRST,
        segno: switch_segno,
    }
    .to_string_with(one_mib());
    let partial = std::fs::read(pg_wal.join(format!("{partial_name}.partial")))
        .or_else(|_| std::fs::read(pg_wal.join(&partial_name)))
        .unwrap();
    let sum = walker.feed_partial(&partial, switch_point).unwrap();
    assert_eq!(sum.unfinished_record, None, "{sum:?}");

    // Without the switch the new timeline's pages are refused; with it everything walks.
    let err = walker.clone().feed_segment(&new[0].1).unwrap_err();
    assert!(matches!(err, WalCorruption::PageTimeline { .. }), "{err}");
    walker.switch_timeline(tl2, switch_point).unwrap();
    let (sums, _) = walk(&mut walker, &new);
    assert!(sums.iter().map(|s| s.records).sum::<u64>() > 1000);
    assert!(sums.last().unwrap().switch_record.is_some());
}
