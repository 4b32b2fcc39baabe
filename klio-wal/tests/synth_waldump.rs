//! Synthetic WAL against two readers: an independent one written here (page headers through
//! `klio_wal::page`, record CRCs with a bitwise CRC-32C of its own) and PostgreSQL's pg_waldump,
//! the reference. Whatever pg_waldump decodes without complaint is WAL PostgreSQL can read.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use klio_wal::page::{DEFAULT_BLOCK_SIZE, PageHeader, WalMagic};
use klio_wal::{
    Lsn, SegmentSize, SynthConfig, SynthStats, SyntheticSegment, SyntheticWal, TimelineId,
};

const MIB: u64 = 1024 * 1024;
const BLOCK: usize = DEFAULT_BLOCK_SIZE as usize;

/// pg_waldump of PostgreSQL 15; `KLIO_PG_BIN` overrides the directory, as in klio-testkit.
fn pg_waldump() -> PathBuf {
    let dir = std::env::var_os("KLIO_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
    let path = dir.join("pg_waldump");
    assert!(
        path.is_file(),
        "{} not found: these tests need PostgreSQL 15's pg_waldump (Debian package postgresql-15) \
         or KLIO_PG_BIN pointing at its bin directory",
        path.display()
    );
    path
}

/// CRC-32C (Castagnoli), bit by bit: deliberately not the `crc32c` crate the generator uses.
struct BitwiseCrc32c(u32);

impl BitwiseCrc32c {
    fn new() -> Self {
        Self(0xFFFF_FFFF)
    }
    fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 ^= u32::from(b);
            for _ in 0..8 {
                let mask = (self.0 & 1).wrapping_neg();
                self.0 = (self.0 >> 1) ^ (0x82F6_3B78 & mask);
            }
        }
    }
    fn finish(self) -> u32 {
        !self.0
    }
}

#[test]
fn bitwise_crc_matches_the_standard_check_value() {
    let mut c = BitwiseCrc32c::new();
    c.update(b"123456789");
    assert_eq!(c.finish(), 0xE306_9283);
}

/// A record as the independent reader found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Found {
    lsn: Lsn,
    prev: Lsn,
    tot_len: u32,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Checks one reassembled record: CRC as `ValidXLogRecord` computes it, the prev link, the
/// resource manager and the main-data framing.
fn check_record(lsn: Lsn, rec: &[u8], prev: Lsn) -> Found {
    let tot_len = le32(rec, 0);
    assert_eq!(tot_len as usize, rec.len(), "record at {lsn}");
    assert_eq!(le32(rec, 4), 0, "xl_xid of record at {lsn}");
    let xl_prev = Lsn(le64(rec, 8));
    assert_eq!(xl_prev, prev, "xl_prev of record at {lsn}");
    assert_eq!(rec[16], 0x20, "xl_info of record at {lsn} (XLOG_NOOP)");
    assert_eq!(rec[17], 0, "xl_rmid of record at {lsn} (RM_XLOG_ID)");
    assert_eq!(&rec[18..20], &[0, 0], "padding of record at {lsn}");
    let mut crc = BitwiseCrc32c::new();
    crc.update(&rec[24..]);
    crc.update(&rec[..20]);
    assert_eq!(crc.finish(), le32(rec, 20), "CRC of record at {lsn}");
    match rec.len() {
        24 => {}
        _ if rec[24] == 255 => assert_eq!(rec.len(), 26 + usize::from(rec[25]), "at {lsn}"),
        _ if rec[24] == 254 => {
            let len = le32(rec, 25) as usize;
            assert!(len > 255, "long data header for {len} bytes at {lsn}");
            assert_eq!(rec.len(), 29 + len, "at {lsn}");
        }
        _ => panic!(
            "record at {lsn} has block id {} instead of main data",
            rec[24]
        ),
    }
    Found {
        lsn,
        prev: xl_prev,
        tot_len,
    }
}

/// Reads the segments as PostgreSQL would: validates every page header, follows continuation
/// records across pages and segments, and returns the complete records.
fn read_independently(config: &SynthConfig, segments: &[SyntheticSegment]) -> Vec<Found> {
    let mut found = Vec::new();
    let mut prev = Lsn::INVALID;
    // The record being reassembled: its LSN and bytes so far.
    let mut partial: Option<(Lsn, Vec<u8>)> = None;
    let mut expect_addr = config.start;
    for seg in segments {
        assert_eq!(seg.start, expect_addr);
        assert_eq!(seg.data.len() as u64, config.segment_size.bytes_u64());
        for (i, page) in seg.data.chunks(BLOCK).enumerate() {
            let addr = Lsn(seg.start.0 + (i * BLOCK) as u64);
            let h = PageHeader::parse(page).unwrap_or_else(|e| panic!("page {addr}: {e}"));
            h.validate(addr, config.segment_size, DEFAULT_BLOCK_SIZE)
                .unwrap_or_else(|e| panic!("page {addr}: {e}"));
            h.check_identity(WalMagic::Pg15, config.system_id)
                .unwrap_or_else(|e| panic!("page {addr}: {e}"));
            assert_eq!(h.timeline, config.timeline, "page {addr}");
            assert_eq!(h.long.is_some(), i == 0, "page {addr}");
            let mut pos = h.encoded_len();

            if let Some((lsn, mut rec)) = partial.take() {
                let total = le32(&rec, 0) as usize;
                let rem = total - rec.len();
                assert!(h.is_contrecord(), "page {addr} should continue {lsn}");
                assert_eq!(h.rem_len as usize, rem, "xlp_rem_len of page {addr}");
                let n = rem.min(BLOCK - pos);
                rec.extend_from_slice(&page[pos..pos + n]);
                pos += n;
                if rec.len() < total {
                    partial = Some((lsn, rec));
                    continue;
                }
                found.push(check_record(lsn, &rec, prev));
                prev = lsn;
                let aligned = pos.next_multiple_of(8);
                assert!(page[pos..aligned.min(BLOCK)].iter().all(|&b| b == 0));
                pos = aligned;
            } else {
                assert!(!h.is_contrecord(), "page {addr} continues nothing");
            }

            while pos < BLOCK {
                let lsn = Lsn(addr.0 + pos as u64);
                // MAXALIGN leaves at least 8 bytes, so xl_tot_len is always on this page.
                let total = le32(page, pos) as usize;
                assert!(total >= 24, "record at {lsn} has xl_tot_len {total}");
                let n = total.min(BLOCK - pos);
                let rec = page[pos..pos + n].to_vec();
                pos += n;
                if n < total {
                    partial = Some((lsn, rec));
                    break;
                }
                found.push(check_record(lsn, &rec, prev));
                prev = lsn;
                let aligned = pos.next_multiple_of(8);
                assert!(page[pos..aligned.min(BLOCK)].iter().all(|&b| b == 0));
                pos = aligned;
            }
        }
        expect_addr = Lsn(seg.start.0 + seg.data.len() as u64);
    }
    found
}

fn generate(config: &SynthConfig) -> (Vec<SyntheticSegment>, SynthStats) {
    let mut wal = SyntheticWal::new(config.clone()).unwrap();
    let segs: Vec<_> = wal.by_ref().collect();
    (segs, wal.stats())
}

fn configs() -> Vec<(&'static str, SynthConfig)> {
    let one = SegmentSize::new(MIB).unwrap();
    vec![
        (
            "mixed records, 3 x 1 MiB",
            SynthConfig {
                segments: 3,
                payload_min: 0,
                payload_max: 20_000,
                random_fraction: 0.5,
                ..SynthConfig::new(one)
            },
        ),
        (
            "tiny records with split headers",
            SynthConfig {
                segments: 2,
                payload_min: 0,
                payload_max: 64,
                random_fraction: 1.0,
                seed: 99,
                ..SynthConfig::new(one)
            },
        ),
        (
            "records larger than a segment",
            SynthConfig {
                segments: 5,
                payload_min: 1_500_000,
                payload_max: 2_500_000,
                random_fraction: 0.0,
                seed: 5,
                ..SynthConfig::new(one)
            },
        ),
        (
            "timeline 2 across the 4 GiB xlogid boundary",
            SynthConfig {
                segments: 3,
                timeline: TimelineId::new(2).unwrap(),
                start: Lsn(0x1_0000_0000 - MIB),
                system_id: 7_300_000_000_000_000_777,
                ..SynthConfig::new(one)
            },
        ),
    ]
}

#[test]
fn every_page_header_validates_and_every_record_checks_out() {
    for (what, config) in configs() {
        let (segs, stats) = generate(&config);
        let found = read_independently(&config, &segs);
        assert_eq!(found.len() as u64, stats.records_completed, "{what}");
        assert_eq!(found.first().map(|r| r.lsn), stats.first_record, "{what}");
        assert_eq!(
            found.last().map(|r| r.lsn),
            stats.last_complete_record,
            "{what}"
        );
        let last = found.last().unwrap();
        assert_eq!(
            stats.complete_end,
            Some(end_of(last, config.segment_size)),
            "{what}"
        );
    }
}

/// The end of a record: its start plus its length plus the page headers it crosses.
fn end_of(r: &Found, size: SegmentSize) -> Lsn {
    let mut pos = r.lsn.0;
    let mut left = u64::from(r.tot_len);
    loop {
        let page_end = (pos / BLOCK as u64 + 1) * BLOCK as u64;
        let n = left.min(page_end - pos);
        pos += n;
        left -= n;
        if left == 0 {
            return Lsn(pos);
        }
        let hdr = if size.offset_of(Lsn(pos)) == 0 {
            40
        } else {
            24
        };
        pos += hdr;
    }
}

/// One record line of pg_waldump: `rmgr: XLOG len (rec/tot): 50/ 50, tx: 0, lsn: 0/01000028,
/// prev 0/00000000, desc: NOOP`.
fn parse_line(line: &str) -> (Lsn, Lsn) {
    let field = |key: &str| -> Lsn {
        let rest = &line[line
            .find(key)
            .unwrap_or_else(|| panic!("no {key:?} in {line:?}"))
            + key.len()..];
        let end = rest.find(',').unwrap_or(rest.len());
        rest[..end]
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{line:?}: {e}"))
    };
    assert!(line.contains("desc: NOOP"), "{line:?}");
    (field("lsn: "), field("prev "))
}

fn run_pg_waldump(dir: &Path, config: &SynthConfig) -> (Vec<(Lsn, Lsn)>, String) {
    let end = Lsn(config.start.0 + config.segments * config.segment_size.bytes_u64());
    let out = Command::new(pg_waldump())
        .arg("--path")
        .arg(dir)
        .arg("--timeline")
        .arg(config.timeline.to_string())
        .arg("--start")
        .arg(config.start.to_string())
        .arg("--end")
        .arg(end.to_string())
        .output()
        .expect("run pg_waldump");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "pg_waldump failed ({}): {stderr}",
        out.status
    );
    assert!(
        !stderr.to_lowercase().contains("error"),
        "pg_waldump complained: {stderr}"
    );
    let records = stdout
        .lines()
        .filter(|l| l.starts_with("rmgr:"))
        .map(parse_line)
        .collect();
    (records, stdout)
}

fn check_with_pg_waldump(what: &str, config: &SynthConfig) {
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let mut wal = SyntheticWal::new(config.clone()).unwrap();
    let paths = wal.write_to_dir(dir.path()).unwrap();
    let stats = wal.stats();
    let generated = t.elapsed();
    assert_eq!(paths.len() as u64, config.segments);

    let segs: Vec<_> = SyntheticWal::new(config.clone()).unwrap().collect();
    let expected: Vec<(Lsn, Lsn)> = read_independently(config, &segs)
        .iter()
        .map(|r| (r.lsn, r.prev))
        .collect();

    let t = Instant::now();
    let (records, stdout) = run_pg_waldump(dir.path(), config);
    eprintln!(
        "{what}: {} records ({} started, {} split headers), generated in {generated:?}, \
         pg_waldump {:?}; first lines:\n{}",
        stats.records_completed,
        stats.records_started,
        stats.split_headers,
        t.elapsed(),
        stdout.lines().take(3).collect::<Vec<_>>().join("\n")
    );
    assert_eq!(records.len() as u64, stats.records_completed, "{what}");
    assert_eq!(
        records, expected,
        "{what}: pg_waldump and the independent reader differ"
    );
}

#[test]
fn pg_waldump_decodes_every_record() {
    for (what, config) in configs() {
        check_with_pg_waldump(what, &config);
    }
}

#[test]
fn pg_waldump_decodes_16_mib_segments() {
    let config = SynthConfig {
        segments: 2,
        ..SynthConfig::default()
    };
    check_with_pg_waldump("default config, 2 x 16 MiB", &config);
}

/// The harness must be able to fail: one flipped byte in a record or a page header makes
/// pg_waldump stop with an error.
#[test]
fn pg_waldump_notices_corruption() {
    let config = SynthConfig {
        segments: 2,
        ..SynthConfig::new(SegmentSize::new(MIB).unwrap())
    };
    let segs: Vec<_> = SyntheticWal::new(config.clone()).unwrap().collect();
    let end = Lsn(config.start.0 + 2 * MIB);
    // A payload byte in the middle of segment 2, then the page address of its 5th page.
    for (offset, what) in [
        (MIB as usize / 2 + 100, "record"),
        (4 * BLOCK + 9, "page header"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        for (i, s) in segs.iter().enumerate() {
            let mut data = s.data.clone();
            if i == 1 {
                data[offset] ^= 0x40;
            }
            std::fs::write(dir.path().join(&s.file_name), data).unwrap();
        }
        let out = Command::new(pg_waldump())
            .arg("--path")
            .arg(dir.path())
            .arg("--start")
            .arg(config.start.to_string())
            .arg("--end")
            .arg(end.to_string())
            .output()
            .expect("run pg_waldump");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("error"),
            "pg_waldump accepted a corrupted {what}: {stderr}"
        );
        eprintln!("corrupted {what}: {}", stderr.trim());
    }
}
