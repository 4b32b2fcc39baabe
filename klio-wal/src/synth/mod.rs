//! Synthetic WAL: segments that PostgreSQL's own tools accept, without running PostgreSQL.
//!
//! Benchmarks (`klio wal-player generate`) and tests need lots of WAL whose size and
//! compressibility they control. The generator writes what PostgreSQL 15 would: long and short
//! page headers, a chain of CRC-protected `XLOG_NOOP` records linked by `xl_prev`, placed the way
//! `ReserveXLogInsertLocation` places them — MAXALIGNed, back to back, split across pages and
//! segments with `XLP_FIRST_IS_CONTRECORD`/`xlp_rem_len` on the continuation pages. pg_waldump
//! decodes the result without complaint.

mod prng;
mod record;

use std::fs;
use std::path::{Path, PathBuf};

use crate::page::{
    DEFAULT_BLOCK_SIZE, LongPageHeader, PageHeader, WalMagic, XLP_BKP_REMOVABLE,
    XLP_FIRST_IS_CONTRECORD,
};
use crate::{FsAction, FsError, Lsn, SegmentNo, SegmentSize, TimelineId, WalFileName};

use prng::SplitMix64;
use record::{MAXALIGN, encode_noop};

/// The WAL block size of synthetic WAL (`XLOG_BLCKSZ`).
const BLOCK: usize = DEFAULT_BLOCK_SIZE as usize;

/// The repeated text that makes payloads compressible: plain words, like most table data.
const TEXT: &[u8] = b"Klio keeps the write-ahead log of PostgreSQL clusters safe: every segment \
is compressed, encrypted, acknowledged only once durable, relayed to object storage and served \
back for point-in-time recovery. ";

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthConfig {
    /// `xlp_sysid` of every segment's long header.
    pub system_id: u64,
    /// Timeline of the pages and of the file names.
    pub timeline: TimelineId,
    /// Segment size (`wal_segment_size`).
    pub segment_size: SegmentSize,
    /// LSN of the first segment; must be segment-aligned.
    pub start: Lsn,
    /// How many segments the generator yields.
    pub segments: u64,
    /// Smallest main-data payload of a record, in bytes (0 gives a bare 24-byte record).
    pub payload_min: u32,
    /// Largest payload; payloads are uniform in `payload_min..=payload_max`.
    pub payload_max: u32,
    /// Share of each payload that is random bytes, from 0.0 (all repeated text, compresses
    /// very well) to 1.0 (all random, incompressible).
    pub random_fraction: f64,
    /// PRNG seed: the same configuration always yields the same bytes.
    pub seed: u64,
}

impl SynthConfig {
    /// The largest payload accepted: the record must stay below PostgreSQL 16+'s
    /// `XLogRecordMaxSize` (1020 MiB) so that every supported version could have written it.
    pub const MAX_PAYLOAD: u32 = 1020 * 1024 * 1024 - record::LONG_RECORD_OVERHEAD as u32;

    /// A configuration for `segment_size` segments that starts at segment 1, where `initdb`
    /// starts, with small mixed records: 8–2048 bytes, 30% random.
    pub fn new(segment_size: SegmentSize) -> Self {
        Self {
            system_id: 7_400_000_000_000_000_001,
            timeline: TimelineId::FIRST,
            segment_size,
            start: Lsn(segment_size.bytes_u64()),
            segments: 1,
            payload_min: 8,
            payload_max: 2048,
            random_fraction: 0.3,
            seed: 1,
        }
    }
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self::new(SegmentSize::DEFAULT)
    }
}

/// A [`SynthConfig`] the generator refuses.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SynthConfigError {
    /// `start` is not the first byte of a segment.
    #[error(
        "synthetic WAL must start at a segment boundary: {start} is not a multiple of the {segment_size} segment size"
    )]
    UnalignedStart {
        /// The start given.
        start: Lsn,
        /// The segment size given.
        segment_size: SegmentSize,
    },
    /// The segments would run past the end of the 64-bit LSN space.
    #[error("{segments} segments of {segment_size} from {start} run past the largest LSN")]
    TooManySegments {
        /// The start given.
        start: Lsn,
        /// The segment count given.
        segments: u64,
        /// The segment size given.
        segment_size: SegmentSize,
    },
    /// `payload_min > payload_max`.
    #[error("payload range is empty: minimum {min} bytes is above maximum {max} bytes")]
    EmptyPayloadRange {
        /// `payload_min`.
        min: u32,
        /// `payload_max`.
        max: u32,
    },
    /// `payload_max` above [`SynthConfig::MAX_PAYLOAD`].
    #[error("payload maximum {max} bytes is above the {limit} bytes a WAL record can carry")]
    PayloadTooLarge {
        /// `payload_max`.
        max: u32,
        /// [`SynthConfig::MAX_PAYLOAD`].
        limit: u32,
    },
    /// `random_fraction` outside 0.0–1.0, or NaN.
    #[error("random fraction {0} is not between 0.0 and 1.0")]
    RandomFraction(f64),
}

impl SynthConfig {
    /// Checks the configuration; [`SyntheticWal::new`] calls it.
    pub fn validate(&self) -> Result<(), SynthConfigError> {
        if self.segment_size.offset_of(self.start) != 0 {
            return Err(SynthConfigError::UnalignedStart {
                start: self.start,
                segment_size: self.segment_size,
            });
        }
        let fits = self
            .segments
            .checked_mul(self.segment_size.bytes_u64())
            .and_then(|len| self.start.0.checked_add(len))
            .is_some();
        if !fits {
            return Err(SynthConfigError::TooManySegments {
                start: self.start,
                segments: self.segments,
                segment_size: self.segment_size,
            });
        }
        if self.payload_min > self.payload_max {
            return Err(SynthConfigError::EmptyPayloadRange {
                min: self.payload_min,
                max: self.payload_max,
            });
        }
        if self.payload_max > Self::MAX_PAYLOAD {
            return Err(SynthConfigError::PayloadTooLarge {
                max: self.payload_max,
                limit: Self::MAX_PAYLOAD,
            });
        }
        if !(0.0..=1.0).contains(&self.random_fraction) {
            return Err(SynthConfigError::RandomFraction(self.random_fraction));
        }
        Ok(())
    }
}

/// One generated segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntheticSegment {
    /// Its WAL file name.
    pub name: WalFileName,
    /// The file name as text, e.g. `000000010000000000000001`.
    pub file_name: String,
    /// LSN of its first byte.
    pub start: Lsn,
    /// Its bytes, exactly one segment long.
    pub data: Vec<u8>,
}

/// What the generator has written so far, for comparing with what a reader finds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynthStats {
    /// Segments yielded.
    pub segments: u64,
    /// Records whose first byte has been written.
    pub records_started: u64,
    /// Records written completely; a reader of the segments yielded so far finds exactly these.
    pub records_completed: u64,
    /// LSN of the first record.
    pub first_record: Option<Lsn>,
    /// LSN of the last complete record.
    pub last_complete_record: Option<Lsn>,
    /// End (exclusive, unaligned) of the last complete record.
    pub complete_end: Option<Lsn>,
    /// Records whose header is split across two pages.
    pub split_headers: u64,
    /// Total main-data payload bytes of started records.
    pub payload_bytes: u64,
}

/// The generator: yields [`SyntheticSegment`]s in LSN order, `config.segments` of them.
#[derive(Debug)]
pub struct SyntheticWal {
    config: SynthConfig,
    rng: SplitMix64,
    next_segno: SegmentNo,
    /// The record being placed (header and data); empty or fully placed means none pending.
    record: Vec<u8>,
    /// Bytes of `record` already written to segments.
    placed: usize,
    /// Start of the last record begun, the next record's `xl_prev`.
    prev: Lsn,
    /// Start of the record being placed.
    current: Lsn,
    payload: Vec<u8>,
    stats: SynthStats,
}

impl SyntheticWal {
    /// A generator for `config`, or why the configuration is unusable.
    pub fn new(config: SynthConfig) -> Result<Self, SynthConfigError> {
        config.validate()?;
        Ok(Self {
            rng: SplitMix64::new(config.seed),
            next_segno: config.segment_size.segment_of(config.start),
            record: Vec::new(),
            placed: 0,
            prev: Lsn::INVALID,
            current: Lsn::INVALID,
            payload: Vec::new(),
            stats: SynthStats::default(),
            config,
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &SynthConfig {
        &self.config
    }

    /// Counters over everything yielded so far.
    pub fn stats(&self) -> SynthStats {
        self.stats
    }

    /// Segments still to come.
    pub fn remaining(&self) -> u64 {
        self.config.segments - self.stats.segments
    }

    /// The next segment, or `None` once `config.segments` have been yielded.
    pub fn next_segment(&mut self) -> Option<SyntheticSegment> {
        if self.remaining() == 0 {
            return None;
        }
        let size = self.config.segment_size;
        let segno = self.next_segno;
        // validate() guarantees every configured segment lies inside the LSN space.
        let start = size.segment_start(segno)?;
        let data = self.fill_segment(start);
        self.next_segno = SegmentNo(segno.0 + 1);
        self.stats.segments += 1;
        let name = WalFileName::Segment {
            timeline: self.config.timeline,
            segno,
        };
        Some(SyntheticSegment {
            name,
            file_name: name.to_string_with(size),
            start,
            data,
        })
    }

    /// Writes every remaining segment into `dir` (which must exist) under its WAL file name and
    /// returns the paths. Plain writes without fsync: this is test and benchmark input.
    pub fn write_to_dir(&mut self, dir: &Path) -> Result<Vec<PathBuf>, FsError> {
        let mut paths = Vec::new();
        while let Some(seg) = self.next_segment() {
            let path = dir.join(&seg.file_name);
            fs::write(&path, &seg.data).map_err(|e| FsError::new(FsAction::Write, &path, e))?;
            paths.push(path);
        }
        Ok(paths)
    }

    fn fill_segment(&mut self, start: Lsn) -> Vec<u8> {
        let seg_len = self.config.segment_size.bytes() as usize;
        let mut data = vec![0u8; seg_len];
        let mut header = Vec::with_capacity(crate::page::LONG_HEADER_LEN);
        for page_off in (0..seg_len).step_by(BLOCK) {
            let page_addr = Lsn(start.0 + page_off as u64);
            let pending = self.record.len() - self.placed;
            let mut info = XLP_BKP_REMOVABLE;
            if pending > 0 {
                info |= XLP_FIRST_IS_CONTRECORD;
            }
            let long = (page_off == 0).then_some(LongPageHeader {
                system_id: self.config.system_id,
                seg_size: self.config.segment_size.bytes(),
                block_size: DEFAULT_BLOCK_SIZE,
            });
            header.clear();
            PageHeader {
                magic: WalMagic::Pg15,
                info,
                timeline: self.config.timeline,
                page_addr,
                // Records are bounded by MAX_PAYLOAD, so this fits.
                rem_len: pending as u32,
                long,
            }
            .encode(&mut header);
            data[page_off..page_off + header.len()].copy_from_slice(&header);

            let page_end = page_off + BLOCK;
            let mut pos = page_off + header.len();
            while pos < page_end {
                if self.placed == self.record.len() {
                    self.begin_record(Lsn(start.0 + pos as u64), page_end - pos);
                }
                let n = (self.record.len() - self.placed).min(page_end - pos);
                data[pos..pos + n].copy_from_slice(&self.record[self.placed..self.placed + n]);
                pos += n;
                self.placed += n;
                if self.placed == self.record.len() {
                    let end = Lsn(start.0 + pos as u64);
                    self.stats.records_completed += 1;
                    self.stats.last_complete_record = Some(self.current);
                    self.stats.complete_end = Some(end);
                    // The next record starts MAXALIGNed; the gap stays zero, as in PostgreSQL.
                    pos = pos.next_multiple_of(MAXALIGN);
                }
            }
        }
        data
    }

    fn begin_record(&mut self, at: Lsn, room_on_page: usize) {
        let len = self
            .rng
            .range_u32(self.config.payload_min, self.config.payload_max) as usize;
        self.payload.resize(len, 0);
        // Rounding keeps 0.0 and 1.0 exact; the random part goes first, then the text.
        let random = ((len as f64) * self.config.random_fraction).round() as usize;
        let random = random.min(len);
        let (rand_part, text_part) = self.payload.split_at_mut(random);
        self.rng.fill(rand_part);
        let mut from = (self.rng.next_u64() % TEXT.len() as u64) as usize;
        for chunk in text_part.chunks_mut(TEXT.len()) {
            let take = chunk.len().min(TEXT.len() - from);
            let (head, tail) = chunk.split_at_mut(take);
            head.copy_from_slice(&TEXT[from..from + take]);
            tail.copy_from_slice(&TEXT[..tail.len()]);
            from = (from + chunk.len()) % TEXT.len();
        }
        encode_noop(self.prev, &self.payload, &mut self.record);
        self.placed = 0;
        self.prev = at;
        self.current = at;
        self.stats.records_started += 1;
        self.stats.payload_bytes += len as u64;
        if self.stats.first_record.is_none() {
            self.stats.first_record = Some(at);
        }
        if room_on_page < record::RECORD_HEADER_LEN {
            self.stats.split_headers += 1;
        }
    }
}

impl Iterator for SyntheticWal {
    type Item = SyntheticSegment;

    fn next(&mut self) -> Option<SyntheticSegment> {
        self.next_segment()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = usize::try_from(self.remaining()).unwrap_or(usize::MAX);
        (n, usize::try_from(self.remaining()).ok())
    }
}

#[cfg(test)]
mod tests;
