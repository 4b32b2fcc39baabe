use std::sync::OnceLock;

use proptest::prelude::*;

use super::*;
use crate::page::{
    LONG_HEADER_LEN, LongPageHeader, SHORT_HEADER_LEN, XLP_BKP_REMOVABLE, XLP_FIRST_IS_CONTRECORD,
};
use crate::{SynthConfig, SynthStats, SyntheticWal};

const MIB: u64 = 1024 * 1024;
const SYSID: u64 = 7_400_000_000_000_000_001;

fn one_mib() -> SegmentSize {
    SegmentSize::new(MIB).unwrap()
}

fn tli(n: u32) -> TimelineId {
    TimelineId::new(n).unwrap()
}

fn synth(segments: u64, payload_min: u32, payload_max: u32) -> SynthConfig {
    SynthConfig {
        segments,
        payload_min,
        payload_max,
        seed: 42,
        ..SynthConfig::new(one_mib())
    }
}

/// Segments of `config` and the generator's counters after each one.
fn generate(config: &SynthConfig) -> (Vec<Vec<u8>>, Vec<SynthStats>) {
    let mut wal = SyntheticWal::new(config.clone()).unwrap();
    let mut segs = Vec::new();
    let mut stats = Vec::new();
    while let Some(s) = wal.next_segment() {
        segs.push(s.data);
        stats.push(wal.stats());
    }
    (segs, stats)
}

fn walker_at(config: &SynthConfig, index: u64) -> RecordWalker {
    let first = config.segment_size.segment_of(config.start);
    RecordWalker::new(
        config.segment_size,
        config.timeline,
        SegmentNo(first.0 + index),
        WalMagic::Pg15,
        config.system_id,
    )
}

fn walk_all(
    walker: &mut RecordWalker,
    segs: &[Vec<u8>],
) -> Result<Vec<SegmentSummary>, WalCorruption> {
    segs.iter().map(|s| walker.feed_segment(s)).collect()
}

#[test]
fn synthetic_wal_walks_clean_with_the_generators_counts() {
    // Records of up to 20 KB span pages, headers split across pages, records span segments.
    let config = synth(4, 0, 20_000);
    let (segs, stats) = generate(&config);
    let last = stats[3];
    let mut walker = walker_at(&config, 0);
    let sums = walk_all(&mut walker, &segs).unwrap();
    assert_eq!(
        sums.iter().map(|s| s.records).sum::<u64>(),
        last.records_completed
    );
    for (i, (sum, st)) in sums.iter().zip(&stats).enumerate() {
        assert_eq!(sum.segno, SegmentNo(1 + i as u64));
        assert_eq!(sum.last_record, st.last_complete_record);
        assert_eq!(sum.last_record_end, st.complete_end);
        assert_eq!(sum.switch_record, None);
        assert_eq!(sum.aborted_records, 0);
        // A record continues into the next segment unless one ended exactly at its end.
        assert_eq!(
            sum.unfinished_record.is_some(),
            st.records_started > st.records_completed
        );
    }
    assert_eq!(sums[0].first_record, last.first_record);
    assert_eq!(walker.last_record(), last.last_complete_record);
    assert_eq!(walker.next_segment(), SegmentNo(5));
}

#[test]
fn records_larger_than_a_segment() {
    let config = synth(5, 1_500_000, 2_500_000);
    let (segs, stats) = generate(&config);
    let sums = walk_all(&mut walker_at(&config, 0), &segs).unwrap();
    assert_eq!(
        sums.iter().map(|s| s.records).sum::<u64>(),
        stats[4].records_completed
    );
    assert!(sums.iter().any(|s| s.records == 0), "{sums:?}");
    // Starting inside such a record skips it across whole segments.
    for start in 1..4 {
        let sums = walk_all(&mut walker_at(&config, start), &segs[start as usize..]).unwrap();
        let before = stats[start as usize - 1];
        let skipped = u64::from(before.records_started > before.records_completed);
        assert_eq!(
            sums.iter().map(|s| s.records).sum::<u64>(),
            stats[4].records_completed - before.records_completed - skipped
        );
    }
}

#[test]
fn starts_in_the_middle_of_a_record() {
    let config = synth(4, 0, 20_000);
    let (segs, stats) = generate(&config);
    assert!(stats[0].records_started > stats[0].records_completed);
    let mut walker = walker_at(&config, 1);
    let sums = walk_all(&mut walker, &segs[1..]).unwrap();
    // The record spanning into the second segment is skipped, every later one checked.
    let checked: u64 = sums.iter().map(|s| s.records).sum();
    assert_eq!(
        checked,
        stats[3].records_completed - stats[0].records_completed - 1
    );
    assert_eq!(walker.last_record(), stats[3].last_complete_record);
}

/// Clean synthetic WAL and the walker's state before each segment, shared by the properties.
struct Fixture {
    config: SynthConfig,
    segs: Vec<Vec<u8>>,
    before: Vec<RecordWalker>,
}

/// Fixture 0 has records of up to 20 KB (most bytes are record data, many records span pages
/// and segments); fixture 1 small records (many headers and alignment gaps).
fn fixture(which: usize) -> &'static Fixture {
    static F: [OnceLock<Fixture>; 2] = [OnceLock::new(), OnceLock::new()];
    F[which].get_or_init(|| {
        let config = if which == 0 {
            synth(4, 0, 20_000)
        } else {
            synth(4, 0, 60)
        };
        let (segs, _) = generate(&config);
        let mut walker = walker_at(&config, 0);
        let mut before = Vec::new();
        for s in &segs {
            before.push(walker.clone());
            walker.feed_segment(s).unwrap();
        }
        Fixture {
            config,
            segs,
            before,
        }
    })
}

/// Walks the fixture with one byte changed, from the segment holding it; the error, if any.
fn walk_flipped(which: usize, seg: usize, offset: usize, xor: u8) -> Option<WalCorruption> {
    let f = fixture(which);
    let mut walker = f.before[seg].clone();
    let mut bad = f.segs[seg].clone();
    bad[offset] ^= xor;
    if let Err(e) = walker.feed_segment(&bad) {
        return Some(e);
    }
    // A damaged record that continues into the next segment is found there.
    f.segs[seg + 1..]
        .iter()
        .find_map(|s| walker.feed_segment(s).err())
}

fn flipped_lsn(seg: usize, offset: usize) -> u64 {
    let f = fixture(0);
    f.config.start.0 + seg as u64 * f.config.segment_size.bytes_u64() + offset as u64
}

/// Whether flipping `xor` into the byte at `offset` of fixture segment `seg` can be detected.
fn is_checkable(seg: usize, offset: usize, xor: u8) -> bool {
    let flags = offset % BLOCK == 2;
    // XLP_BKP_REMOVABLE may legitimately be set or not, on any page.
    let removable = flags && xor == XLP_BKP_REMOVABLE as u8;
    // On the first page walked, an overwrite flag may concern a record before the walk.
    let overwrite = u8::try_from(XLP_FIRST_IS_OVERWRITE_CONTRECORD | XLP_BKP_REMOVABLE).unwrap();
    let first = seg == 0 && offset == 2 && xor & !overwrite == 0;
    !removable && !first
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Any byte of the first three segments (the fourth only completes the last record) is
    /// covered by a CRC, a page header check or a zero-padding check.
    #[test]
    fn any_flipped_byte_is_found(which in 0usize..2, seg in 0usize..3, offset in 0usize..(MIB as usize), xor in 1u8..) {
        prop_assume!(is_checkable(seg, offset, xor));
        let err = walk_flipped(which, seg, offset, xor);
        let at = flipped_lsn(seg, offset);
        let err = err.unwrap_or_else(|| panic!("flip of byte {} not found", Lsn(at)));
        // The error names the damaged byte, its page or the record that holds it.
        prop_assert!(err.lsn().0 <= at, "{err} is after {}", Lsn(at));
        prop_assert!(at - err.lsn().0 < 64 * 1024, "{err} is far before {}", Lsn(at));
    }

    #[test]
    fn flipped_page_header_bytes_are_found(seg in 0usize..3, page in 0usize..128, byte in 0usize..LONG_HEADER_LEN, xor in 1u8..) {
        let len = if page == 0 { LONG_HEADER_LEN } else { SHORT_HEADER_LEN };
        let offset = page * BLOCK + byte % len;
        prop_assume!(is_checkable(seg, offset, xor));
        let err = walk_flipped(0, seg, offset, xor).expect("damaged page header found");
        let page_lsn = flipped_lsn(seg, page * BLOCK);
        prop_assert!(err.lsn().0 <= page_lsn + (byte % len) as u64, "{err}");
    }
}

#[test]
fn segment_length_and_partial_end_are_checked() {
    let config = synth(1, 0, 100);
    let (segs, _) = generate(&config);
    let mut walker = walker_at(&config, 0);
    let err = walker.feed_segment(&segs[0][..1000]).unwrap_err();
    assert!(matches!(
        err,
        WalCorruption::SegmentLength { len: 1000, .. }
    ));
    assert!(err.to_string().contains("0/100000"), "{err}");
    // Errors are sticky: the walker does not guess where the stream resumes.
    assert_eq!(walker.feed_segment(&segs[0]), Err(err.clone()));
    assert_eq!(walker.failure(), Some(&err));

    let mut walker = walker_at(&config, 0);
    for end in [Lsn(0xF_FFFF), Lsn(0x20_0001)] {
        let err = walker.clone().feed_partial(&segs[0], end).unwrap_err();
        assert!(
            matches!(err, WalCorruption::EndOutsideSegment { .. }),
            "{err}"
        );
    }
    let err = walker
        .feed_partial(&segs[0][..100], Lsn(0x10_0200))
        .unwrap_err();
    assert!(
        matches!(err, WalCorruption::EndOutsideSegment { .. }),
        "{err}"
    );
}

#[test]
fn partial_segments_stop_at_their_end_and_can_be_fed_again() {
    let config = synth(2, 0, 20_000);
    let (segs, stats) = generate(&config);
    let mut walker = walker_at(&config, 0);
    let full = walker.clone().feed_segment(&segs[0]).unwrap();
    let complete_end = stats[0].complete_end.unwrap();

    // Ending exactly after a record; inside a record; inside a page header; at the start.
    let at_record_end = walker.feed_partial(&segs[0], complete_end).unwrap();
    assert_eq!(at_record_end.records, full.records);
    assert_eq!(at_record_end.unfinished_record, None);
    let inside = walker
        .feed_partial(&segs[0], Lsn(complete_end.0 - 10))
        .unwrap();
    assert_eq!(inside.records, full.records - 1);
    assert_eq!(inside.unfinished_record, full.last_record);
    let in_header = walker.feed_partial(&segs[0], Lsn(0x10_2000 + 10)).unwrap();
    assert!(in_header.records < full.records);
    let nothing = walker.feed_partial(&segs[0], Lsn(0x10_0000)).unwrap();
    assert_eq!(nothing.records, 0);
    // The bytes after the end are not looked at, and need not be there.
    let mut cut = segs[0][..0x2000].to_vec();
    cut.resize(0x2100, 0xEE);
    walker.feed_partial(&cut, Lsn(0x10_2000)).unwrap();
    let end = Lsn(0x10_0000 + (0x2000 + 3 * 8));
    walker
        .feed_partial(&segs[0][..end.0 as usize - 0x10_0000], end)
        .unwrap();

    // Partial feeds do not advance: the complete segment comes next, then the following one.
    assert_eq!(walker.next_segment(), SegmentNo(1));
    assert_eq!(walker.feed_segment(&segs[0]).unwrap(), full);
    walker.feed_segment(&segs[1]).unwrap();
}

#[test]
fn damage_before_the_partial_end_is_found_after_it_is_not() {
    let config = synth(1, 0, 2000);
    let (segs, _) = generate(&config);
    let walker = walker_at(&config, 0);
    let end = Lsn(0x10_0000 + 0x8000);
    let mut bad = segs[0].clone();
    bad[0x8000 + 100] ^= 0x40;
    bad[0x7000] ^= 0x01;
    let err = walker.clone().feed_partial(&bad, end).unwrap_err();
    assert!(err.lsn() <= Lsn(0x10_7000), "{err}");
    let mut bad = segs[0].clone();
    bad[0x8000 + 100] ^= 0x40;
    walker.clone().feed_partial(&bad, end).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Hand-built WAL for what the generator never writes: XLOG_SWITCH, timeline switches,
// overwritten continuation records, full-page images, zeros where records should be.

/// Writes WAL the way PostgreSQL places it: page headers every block, continuation flags,
/// MAXALIGNed records linked by `xl_prev`, each with its CRC.
struct Builder {
    size: SegmentSize,
    start: u64,
    out: Vec<u8>,
    tli: TimelineId,
    prev: Lsn,
    /// Extra `xlp_info` bits for the next page header.
    next_page_flags: u16,
    rng: u64,
}

impl Builder {
    fn new(segno: u64) -> Self {
        Self {
            size: one_mib(),
            start: segno * MIB,
            out: Vec::new(),
            tli: TimelineId::FIRST,
            prev: Lsn::INVALID,
            next_page_flags: 0,
            rng: 0x9E37_79B9_7F4A_7C15,
        }
    }

    fn lsn(&self) -> Lsn {
        Lsn(self.start + self.out.len() as u64)
    }

    fn walker(&self) -> RecordWalker {
        RecordWalker::new(
            self.size,
            TimelineId::FIRST,
            self.size.segment_of(Lsn(self.start)),
            WalMagic::Pg15,
            SYSID,
        )
    }

    fn random(&mut self, below: usize) -> usize {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % below as u64) as usize
    }

    /// A page header if the next byte starts a page; `rem_len` of a record continuing here.
    fn page_header_if_due(&mut self, rem_len: usize) {
        let lsn = self.lsn();
        if !lsn.0.is_multiple_of(BLOCK as u64) {
            return;
        }
        let mut info = XLP_BKP_REMOVABLE | std::mem::take(&mut self.next_page_flags);
        if rem_len > 0 {
            info |= XLP_FIRST_IS_CONTRECORD;
        }
        let long = (self.size.offset_of(lsn) == 0).then_some(LongPageHeader {
            system_id: SYSID,
            seg_size: self.size.bytes(),
            block_size: DEFAULT_BLOCK_SIZE,
        });
        PageHeader {
            magic: WalMagic::Pg15,
            info,
            timeline: self.tli,
            page_addr: lsn,
            rem_len: rem_len as u32,
            long,
        }
        .encode(&mut self.out);
    }

    /// Starts a record: alignment, then a page header if it starts a page; returns its LSN.
    fn begin(&mut self) -> Lsn {
        let aligned = self.out.len().next_multiple_of(MAXALIGN);
        self.out.resize(aligned, 0);
        self.page_header_if_due(0);
        self.lsn()
    }

    /// A record of `rmid`/`info` with `body` after the header, linked to the previous one.
    fn make(&self, rmid: u8, info: u8, body: &[u8]) -> Vec<u8> {
        let mut r = Vec::with_capacity(HEADER_LEN + body.len());
        r.extend_from_slice(&((HEADER_LEN + body.len()) as u32).to_le_bytes());
        r.extend_from_slice(&0u32.to_le_bytes());
        r.extend_from_slice(&self.prev.0.to_le_bytes());
        r.extend_from_slice(&[info, rmid, 0, 0, 0, 0, 0, 0]);
        r.extend_from_slice(body);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&r[HEADER_LEN..]), &r[..20]);
        r[20..24].copy_from_slice(&crc.to_le_bytes());
        r
    }

    /// Places `rec` from the current position across as many pages as it needs.
    fn put(&mut self, rec: &[u8]) {
        let mut done = 0;
        while done < rec.len() {
            self.page_header_if_due(rec.len() - done);
            let room = BLOCK - self.out.len() % BLOCK;
            let n = room.min(rec.len() - done);
            self.out.extend_from_slice(&rec[done..done + n]);
            done += n;
        }
    }

    fn record(&mut self, rmid: u8, info: u8, body: &[u8]) -> Lsn {
        let lsn = self.begin();
        self.place(lsn, rmid, info, body)
    }

    /// The record begun at `lsn` by [`Builder::begin`].
    fn place(&mut self, lsn: Lsn, rmid: u8, info: u8, body: &[u8]) -> Lsn {
        let rec = self.make(rmid, info, body);
        self.put(&rec);
        self.prev = lsn;
        lsn
    }

    fn main_data(data: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        match data.len() {
            0 => {}
            n @ 1..=255 => body.extend_from_slice(&[255, n as u8]),
            n => {
                body.push(254);
                body.extend_from_slice(&(n as u32).to_le_bytes());
            }
        }
        body.extend_from_slice(data);
        body
    }

    fn noop(&mut self, len: usize) -> Lsn {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        self.record(RM_XLOG, 0x20, &Self::main_data(&data))
    }

    fn noops(&mut self, count: usize) {
        for _ in 0..count {
            let len = self.random(3000);
            self.noop(len);
        }
    }

    /// Noops until the stream reaches `lsn`, passing it by less than a record header and a
    /// page header.
    fn noops_until(&mut self, lsn: u64) {
        while self.lsn().0 < lsn {
            let left = (lsn - self.lsn().0) as usize;
            let len = self.random(3000).min(left);
            self.noop(len);
        }
    }

    /// A noop after which the next record starts `room` bytes before the end of a page.
    fn noop_leaving(&mut self, room: usize) {
        loop {
            let lsn = self.begin();
            let left = BLOCK - self.out.len() % BLOCK;
            if left >= room + 300 {
                let body = Self::main_data(&vec![2; left - room - HEADER_LEN - 5]);
                self.place(lsn, RM_XLOG, 0x20, &body);
                return;
            }
            self.noop_to_page_end();
        }
    }

    /// Noops up to the exact end of the current page, so that the next page starts fresh.
    fn noop_to_page_end(&mut self) {
        loop {
            let lsn = self.begin();
            let room = BLOCK - self.out.len() % BLOCK;
            let body = match room - HEADER_LEN.min(room) {
                // Exactly a header, or too little room for one: then an empty record across
                // the page, and again on the next.
                0 => Vec::new(),
                n if n - 2 <= 255 => Self::main_data(&vec![1; n - 2]),
                n => Self::main_data(&vec![1; n - 5]),
            };
            let rec = self.make(RM_XLOG, 0x20, &body);
            self.put(&rec);
            self.prev = lsn;
            if room >= HEADER_LEN {
                assert_eq!(self.out.len() % BLOCK, 0);
                return;
            }
        }
    }

    /// `XLOG_SWITCH`, then zeros to the end of the segment, as PostgreSQL 15–17 leave it.
    fn switch(&mut self) -> Lsn {
        let lsn = self.record(RM_XLOG, 0x40, &[]);
        let end = self.out.len().next_multiple_of(self.size.bytes() as usize);
        self.out.resize(end, 0);
        lsn
    }

    /// A record cut off at the end of its page by a crash; the next page header says so.
    fn aborted(&mut self) -> Lsn {
        let lsn = self.begin();
        let room = BLOCK - self.out.len() % BLOCK;
        let rec = self.make(RM_XLOG, 0x20, &Self::main_data(&vec![0xAB; room + 100]));
        self.out.extend_from_slice(&rec[..room]);
        self.next_page_flags |= XLP_FIRST_IS_OVERWRITE_CONTRECORD;
        lsn
    }

    fn overwrite_contrecord(&mut self, aborted: Lsn) -> Lsn {
        let mut data = aborted.0.to_le_bytes().to_vec();
        data.extend_from_slice(&123_456_789u64.to_le_bytes()); // overwrite_time
        self.record(RM_XLOG, 0xD0, &Self::main_data(&data))
    }

    /// Complete segments from the bytes written, the last one zero-padded.
    fn segments(&self) -> Vec<Vec<u8>> {
        let size = self.size.bytes() as usize;
        self.out
            .chunks(size)
            .map(|c| {
                let mut s = c.to_vec();
                s.resize(size, 0);
                s
            })
            .collect()
    }
}

const RM_XLOG: u8 = 0;

#[test]
fn the_builder_writes_what_the_walker_accepts() {
    let mut b = Builder::new(3);
    b.noops_until(3 * MIB + MIB + 5000);
    let segs = b.segments();
    let mut walker = b.walker();
    walker.feed_segment(&segs[0]).unwrap();
    let last = walker.feed_partial(&segs[1], b.lsn()).unwrap();
    assert_eq!(last.last_record, Some(b.prev));
    assert_eq!(last.unfinished_record, None);
}

#[test]
fn xlog_switch_ends_the_segment_early() {
    let mut b = Builder::new(1);
    b.noops(30);
    let switch = b.switch();
    b.noops_until(3 * MIB);
    let segs = b.segments();
    let sums = walk_all(&mut b.walker(), &segs[..2]).unwrap();
    assert_eq!(sums[0].switch_record, Some(switch));
    assert_eq!(sums[0].last_record, Some(switch));
    assert_eq!(sums[0].records, 31);
    assert_eq!(sums[1].switch_record, None);

    // The rest after the switch is not WAL (PostgreSQL never reads it; a standby's walsender
    // sends whatever its recycled file held there): other bytes there are not damage.
    let after = (switch.0 - MIB) as usize + 24;
    let next_page = after.next_multiple_of(BLOCK);
    for offset in [after, next_page, next_page + 2, MIB as usize - 1] {
        let mut old = segs[0].clone();
        old[offset] = 0x10;
        let sum = b.walker().feed_segment(&old).unwrap();
        assert_eq!(sum.switch_record, Some(switch));
    }
}

#[test]
fn xlog_switch_at_the_end_of_a_segment() {
    // The switch record ends exactly at the segment end, or its header crosses into the next
    // segment: the rest of the segment where it ends is unused.
    for room in [24usize, 8, 16] {
        let mut b = Builder::new(1);
        b.noops_until(2 * MIB - 4000);
        b.noop_leaving(room);
        let switch = b.switch();
        assert_eq!(switch.0, 2 * MIB - room as u64);
        b.noops_until(4 * MIB);
        let segs = b.segments();
        let sums = walk_all(&mut b.walker(), &segs[..3]).unwrap();
        let ended_in = if room >= 24 { 0 } else { 1 };
        assert_eq!(sums[ended_in].switch_record, Some(switch), "room {room}");
    }
}

#[test]
fn record_headers_split_across_pages() {
    for room in [8usize, 16] {
        let mut b = Builder::new(1);
        b.noops_until(MIB + 3 * BLOCK as u64);
        b.noop_leaving(room);
        let split = b.noop(500);
        assert_eq!(split.0 % BLOCK as u64, (BLOCK - room) as u64);
        b.noops_until(2 * MIB + 100);
        let segs = b.segments();
        b.walker().feed_segment(&segs[0]).unwrap();

        // Byte `k` of the record, on whichever page it is.
        let at = (split.0 - MIB) as usize;
        let byte = |k: usize| {
            if k < room {
                at + k
            } else {
                at + room + SHORT_HEADER_LEN + k - room
            }
        };
        let mut bad = segs[0].clone();
        bad[byte(9)] ^= 0x20; // xl_prev, on the second page
        let err = b.walker().feed_segment(&bad).unwrap_err();
        assert!(
            matches!(err, WalCorruption::PrevLink { lsn, .. } if lsn == split),
            "{err}"
        );
        let mut bad = segs[0].clone();
        bad[byte(1)] ^= 0x01; // xl_tot_len, on the first page
        let err = b.walker().feed_segment(&bad).unwrap_err();
        assert!(matches!(err, WalCorruption::RemLenMismatch { .. }), "{err}");
        assert_eq!(err.lsn(), split);
        let mut bad = segs[0].clone();
        bad[byte(20)] ^= 0x01; // xl_crc
        let err = b.walker().feed_segment(&bad).unwrap_err();
        assert!(
            matches!(err, WalCorruption::Crc { lsn, .. } if lsn == split),
            "{err}"
        );
    }
}

#[test]
fn alignment_padding_must_be_zero() {
    let mut b = Builder::new(1);
    let first = b.noop(3); // 29 bytes: 3 bytes of padding follow
    b.noops_until(2 * MIB + 100);
    let segs = b.segments();
    for gap in 29..32 {
        let mut bad = segs[0].clone();
        bad[(first.0 - MIB) as usize + gap] = 0xFF;
        let err = b.walker().feed_segment(&bad).unwrap_err();
        assert_eq!(
            err,
            WalCorruption::NonZeroPadding {
                lsn: Lsn(first.0 + gap as u64),
                value: 0xFF,
                area: Padding::RecordAlignment
            }
        );
    }
}

#[test]
fn zeros_where_a_record_should_start_are_missing_wal() {
    let mut b = Builder::new(1);
    b.noops(40);
    let end = b.lsn();
    let next = Lsn(end.0.next_multiple_of(8));
    let segs = b.segments();
    let err = b.walker().feed_segment(&segs[0]).unwrap_err();
    assert_eq!(err, WalCorruption::MissingRecord { lsn: next });
    assert!(err.to_string().contains("XLOG_SWITCH"), "{err}");
    // The same bytes as a partial segment ending where the WAL ends are fine.
    let sum = b.walker().feed_partial(&segs[0], end).unwrap();
    assert_eq!(sum.records, 40);
    // ... but not if the end claims WAL that is not there.
    let err = b
        .walker()
        .feed_partial(&segs[0], Lsn(next.0 + 8))
        .unwrap_err();
    assert_eq!(err, WalCorruption::MissingRecord { lsn: next });
}

#[test]
fn timeline_switch_inside_a_segment() {
    let mut b = Builder::new(1);
    b.noops_until(MIB + 300_000);
    // The history file's switch point: the end of the last record of timeline 1.
    let at = Lsn(b.lsn().0.next_multiple_of(8));
    b.tli = tli(2);
    b.noops_until(3 * MIB + 100);
    let segs = b.segments();

    // Without the switch, the first page of timeline 2 is refused.
    let err = walk_all(&mut b.walker(), &segs[..2]).unwrap_err();
    let first_tl2_page = Lsn(at.0.next_multiple_of(BLOCK as u64));
    assert_eq!(
        err,
        WalCorruption::PageTimeline {
            page: first_tl2_page,
            found: tli(2),
            expected: tli(1)
        }
    );

    let mut walker = b.walker();
    walker.switch_timeline(tli(2), at).unwrap();
    assert_eq!(walker.timeline(), tli(2));
    walk_all(&mut walker, &segs[..2]).unwrap();
    walker.feed_partial(&segs[2], b.lsn()).unwrap();

    // The old timeline's partial segment up to the switch point first, then the new one's file.
    let mut walker = b.walker();
    let old = walker.feed_partial(&segs[0], at).unwrap();
    assert_eq!(old.unfinished_record, None);
    walker.switch_timeline(tli(2), at).unwrap();
    walk_all(&mut walker, &segs[..2]).unwrap();

    // Pages of the old timeline after the switch point are refused too.
    let mut walker = b.walker();
    walker
        .switch_timeline(tli(2), Lsn(at.0 - 3 * BLOCK as u64))
        .unwrap();
    let err = walker.feed_segment(&segs[0]).unwrap_err();
    assert!(
        matches!(err, WalCorruption::PageTimeline { found, expected, .. } if found == tli(1) && expected == tli(2)),
        "{err}"
    );
}

#[test]
fn timeline_switch_is_checked() {
    let b = Builder::new(4);
    let mut walker = b.walker();
    assert_eq!(
        walker.switch_timeline(TimelineId::FIRST, Lsn(4 * MIB)),
        Err(TimelineSwitchError::NotNewer {
            current: TimelineId::FIRST,
            requested: TimelineId::FIRST
        })
    );
    assert!(matches!(
        walker.switch_timeline(tli(2), Lsn(4 * MIB - 1)),
        Err(TimelineSwitchError::AlreadyPassed { .. })
    ));
    walker.switch_timeline(tli(3), Lsn(5 * MIB)).unwrap();
    assert!(matches!(
        walker.switch_timeline(tli(4), Lsn(5 * MIB - 8)),
        Err(TimelineSwitchError::BeforePrevious { .. })
    ));
    walker.switch_timeline(tli(4), Lsn(5 * MIB)).unwrap();
    assert_eq!(walker.timeline(), tli(4));
}

#[test]
fn overwritten_continuation_records_are_skipped() {
    let mut b = Builder::new(1);
    b.noops_until(MIB + 20_000);
    let before = b.prev;
    let aborted = b.aborted();
    let over = b.overwrite_contrecord(aborted);
    b.noops_until(2 * MIB + 100);
    let segs = b.segments();
    let sum = b.walker().feed_segment(&segs[0]).unwrap();
    assert_eq!(sum.aborted_records, 1);
    assert_eq!(over.0 % BLOCK as u64, 24);

    // The overwrite record must name the aborted record ...
    let mut b2 = Builder::new(1);
    b2.noops_until(MIB + 20_000);
    assert_eq!(b2.prev, before);
    let aborted = b2.aborted();
    b2.overwrite_contrecord(Lsn(aborted.0 + 8));
    b2.noops_until(2 * MIB + 100);
    let err = b2.walker().feed_segment(&b2.segments()[0]).unwrap_err();
    assert_eq!(
        err,
        WalCorruption::OverwriteRecord {
            lsn: over,
            aborted: RecordRef(Some(aborted))
        }
    );
    // ... and be there.
    let mut b3 = Builder::new(1);
    b3.noops_until(MIB + 20_000);
    b3.aborted();
    b3.noop(10);
    b3.noops_until(2 * MIB + 100);
    let err = b3.walker().feed_segment(&b3.segments()[0]).unwrap_err();
    assert!(
        matches!(err, WalCorruption::OverwriteRecord { .. }),
        "{err}"
    );

    // A walk that starts inside the aborted record cannot name it, but still checks the rest.
    let mut b4 = Builder::new(1);
    b4.noops_until(2 * MIB - 3000);
    let aborted = b4.aborted();
    assert!(aborted.0 < 2 * MIB);
    b4.overwrite_contrecord(aborted);
    b4.noops_until(3 * MIB + 100);
    let segs = b4.segments();
    let mut walker = b4.walker();
    let sum = walker.feed_segment(&segs[0]).unwrap();
    assert_eq!(sum.unfinished_record, Some(aborted));
    let sum = walker.feed_segment(&segs[1]).unwrap();
    assert_eq!(sum.aborted_records, 1);
    let mut walker = RecordWalker::new(
        b4.size,
        TimelineId::FIRST,
        SegmentNo(2),
        WalMagic::Pg15,
        SYSID,
    );
    let sum = walker.feed_segment(&segs[1]).unwrap();
    assert_eq!(sum.aborted_records, 0);
    assert!(sum.records > 0);
}

#[test]
fn continuation_flags_must_match() {
    let mut b = Builder::new(1);
    b.noops_until(MIB + 5 * BLOCK as u64 + 100);
    b.noop_to_page_end();
    let fresh = b.out.len() / BLOCK;
    b.noops_until(2 * MIB + 100);
    let segs = b.segments();
    let data = &segs[0];
    let cont = (1..128)
        .find(|p| {
            PageHeader::parse(&data[p * BLOCK..])
                .unwrap()
                .is_contrecord()
        })
        .unwrap();
    assert!(
        !PageHeader::parse(&data[fresh * BLOCK..])
            .unwrap()
            .is_contrecord()
    );

    let mut bad = data.clone();
    bad[cont * BLOCK + 2] &= !(XLP_FIRST_IS_CONTRECORD as u8);
    bad[cont * BLOCK + 16..cont * BLOCK + 20].fill(0);
    let err = b.walker().feed_segment(&bad).unwrap_err();
    assert!(
        matches!(err, WalCorruption::MissingContrecord { page, .. } if page.0 == MIB + (cont * BLOCK) as u64),
        "{err}"
    );
    assert!(err.lsn().0 < MIB + (cont * BLOCK) as u64);

    let mut bad = data.clone();
    bad[cont * BLOCK + 17] ^= 1;
    let err = b.walker().feed_segment(&bad).unwrap_err();
    assert!(matches!(err, WalCorruption::RemLenMismatch { .. }), "{err}");

    let mut bad = data.clone();
    bad[fresh * BLOCK + 2] |= XLP_FIRST_IS_CONTRECORD as u8;
    bad[fresh * BLOCK + 16] = 8;
    let err = b.walker().feed_segment(&bad).unwrap_err();
    assert!(
        matches!(err, WalCorruption::UnexpectedContrecord { rem_len: 8, .. }),
        "{err}"
    );

    let mut bad = data.clone();
    bad[fresh * BLOCK + 2] |= XLP_FIRST_IS_OVERWRITE_CONTRECORD as u8;
    let err = b.walker().feed_segment(&bad).unwrap_err();
    assert!(
        matches!(err, WalCorruption::UnexpectedOverwrite { .. }),
        "{err}"
    );

    let mut bad = data.clone();
    bad[cont * BLOCK + 2] |= XLP_FIRST_IS_OVERWRITE_CONTRECORD as u8;
    let err = b.walker().feed_segment(&bad).unwrap_err();
    assert!(
        matches!(err, WalCorruption::ContrecordAndOverwrite { .. }),
        "{err}"
    );
}

#[test]
fn record_header_checks() {
    let mut b = Builder::new(1);
    for _ in 0..3 {
        b.noop(100);
    }
    let third = b.prev;
    b.noops_until(2 * MIB + 100);
    let segs = b.segments();
    let at = (third.0 - MIB) as usize;

    let mut bad = segs[0].clone();
    bad[at + 17] = 99; // xl_rmid
    let err = b.walker().feed_segment(&bad).unwrap_err();
    assert_eq!(
        err,
        WalCorruption::InvalidRmgr {
            lsn: third,
            rmid: 99
        }
    );

    let mut bad = segs[0].clone();
    bad[at + 8] ^= 0x08; // xl_prev
    let err = b.walker().feed_segment(&bad).unwrap_err();
    assert!(
        matches!(err, WalCorruption::PrevLink { lsn, .. } if lsn == third),
        "{err}"
    );

    for tot_len in [1u32, 23, MAX_RECORD_LEN + 1] {
        let mut bad = segs[0].clone();
        bad[at..at + 4].copy_from_slice(&tot_len.to_le_bytes());
        let err = b.walker().feed_segment(&bad).unwrap_err();
        assert!(
            matches!(err, WalCorruption::RecordLength { lsn, .. } if lsn == third),
            "{err}"
        );
    }

    let mut bad = segs[0].clone();
    bad[at + 30] ^= 1; // data
    let err = b.walker().feed_segment(&bad).unwrap_err();
    assert!(
        matches!(err, WalCorruption::Crc { lsn, .. } if lsn == third),
        "{err}"
    );
    assert!(err.to_string().contains(&third.to_string()), "{err}");
}

#[test]
fn record_layout_is_checked_after_the_crc() {
    // A full-page image with a hole: valid. The same with an impossible hole: a valid CRC over
    // a record PostgreSQL would refuse to decode.
    let image = |hole_offset: u16| {
        let mut body = vec![0, 0x10, 0, 0]; // block 0, BKPBLOCK_HAS_IMAGE, no data
        body.extend_from_slice(&4000u16.to_le_bytes());
        body.extend_from_slice(&hole_offset.to_le_bytes());
        body.push(0x01); // BKPIMAGE_HAS_HOLE
        body.extend_from_slice(&[1; 12]);
        body.extend_from_slice(&[0; 4]);
        body.resize(body.len() + 4000, 0x77);
        body
    };
    let mut b = Builder::new(1);
    b.noops(2);
    b.record(9, 0, &image(100));
    let bad_at = b.record(9, 0, &image(0));
    b.noops_until(2 * MIB);
    let segs = b.segments();
    let err = b.walker().feed_segment(&segs[0]).unwrap_err();
    assert!(
        matches!(err, WalCorruption::RecordLayout { lsn, .. } if lsn == bad_at),
        "{err}"
    );
}

#[test]
fn identity_and_timeline_of_pages() {
    let config = synth(1, 0, 2000);
    let (segs, _) = generate(&config);
    let other = |magic, sysid, timeline| {
        RecordWalker::new(config.segment_size, timeline, SegmentNo(1), magic, sysid)
            .feed_segment(&segs[0])
            .unwrap_err()
    };
    assert!(matches!(
        other(WalMagic::Pg16, SYSID, TimelineId::FIRST),
        WalCorruption::PageHeader {
            source: PageHeaderError::MagicMismatch { .. },
            ..
        }
    ));
    assert!(matches!(
        other(WalMagic::Pg15, 5, TimelineId::FIRST),
        WalCorruption::PageHeader {
            source: PageHeaderError::SystemIdMismatch { .. },
            ..
        }
    ));
    assert!(matches!(
        other(WalMagic::Pg15, SYSID, tli(2)),
        WalCorruption::PageTimeline { .. }
    ));
    // The segment fed for another position.
    let err = RecordWalker::new(
        config.segment_size,
        TimelineId::FIRST,
        SegmentNo(2),
        WalMagic::Pg15,
        SYSID,
    )
    .feed_segment(&segs[0])
    .unwrap_err();
    assert!(matches!(
        err,
        WalCorruption::PageHeader {
            source: PageHeaderError::PageAddrMismatch { .. },
            ..
        }
    ));
    let err = RecordWalker::new(
        config.segment_size,
        TimelineId::FIRST,
        SegmentNo(u64::MAX),
        WalMagic::Pg15,
        SYSID,
    )
    .feed_segment(&segs[0])
    .unwrap_err();
    assert!(matches!(err, WalCorruption::SegmentOutOfRange { .. }));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the bytes, the walker answers without panicking.
    #[test]
    fn arbitrary_bytes_never_panic(patches in prop::collection::vec((0usize..(2 * MIB as usize), any::<u8>()), 0..40),
                                   end in 0usize..(MIB as usize)) {
        let f = fixture(1);
        let mut data: Vec<u8> = f.segs[..2].concat();
        for (at, v) in patches {
            data[at] = v;
        }
        let (a, rest) = data.split_at(MIB as usize);
        let mut walker = walker_at(&f.config, 0);
        let _ = walker.clone().feed_partial(a, Lsn(MIB + end as u64));
        if walker.feed_segment(a).is_ok() {
            let _ = walker.feed_segment(rest);
        }
    }
}
