//! A sans-IO walker that checks every record of a continuous WAL stream, segment by segment.
//!
//! Page headers alone (see [`crate::page`]) cannot tell whether the bytes between them are what
//! PostgreSQL wrote. The walker reads the stream the way recovery does (PostgreSQL 15–17,
//! `xlogreader.c`): it reassembles each record across pages and segments and checks its header,
//! its `xl_prev` link to the record before it, its CRC-32C and the layout of its block
//! references. It also checks the bytes PostgreSQL leaves zeroed (page header padding, record
//! alignment, the rest of a segment after `XLOG_SWITCH`), so that a damaged byte anywhere in an
//! archived segment is found, with the LSN where the damage is, before a restore needs it.
//!
//! The caller reads files; the walker only sees bytes, one segment per call and in order.

mod error;
mod record;
#[cfg(test)]
mod tests;

pub use error::{Padding, RecordRef, TimelineSwitchError, WalCorruption};

use crate::page::{
    DEFAULT_BLOCK_SIZE, PageHeader, PageHeaderError, WalMagic, XLP_FIRST_IS_OVERWRITE_CONTRECORD,
};
use crate::{Lsn, SegmentNo, SegmentSize, TimelineId};

use record::{HEADER_LEN, MAX_RECORD_LEN, MAXALIGN, RecordHeader, XLOG_OVERWRITE_CONTRECORD};

/// The WAL block size walked (`XLOG_BLCKSZ`); the long header of every segment is checked
/// against it.
const BLOCK: usize = DEFAULT_BLOCK_SIZE as usize;
/// Where the 4 zero bytes of padding sit in every page header.
const HEADER_PADDING: std::ops::Range<usize> = 20..24;
/// Reassembly buffers grow as pages arrive: a corrupt `xl_tot_len` must not allocate a gigabyte.
const INITIAL_RECORD_BUFFER: usize = 64 * 1024;

/// What the walker checked in one segment.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SegmentSummary {
    /// The segment walked.
    pub segno: SegmentNo,
    /// Records that end in this segment, every one checked: header, `xl_prev`, CRC, layout.
    pub records: u64,
    /// Start of the first of them.
    pub first_record: Option<Lsn>,
    /// Start of the last of them.
    pub last_record: Option<Lsn>,
    /// End (exclusive, not aligned) of the last of them.
    pub last_record_end: Option<Lsn>,
    /// The `XLOG_SWITCH` record that ended the segment early, if one did.
    pub switch_record: Option<Lsn>,
    /// Records cut short by a crash and overwritten (`XLP_FIRST_IS_OVERWRITE_CONTRECORD`);
    /// recovery skips them, so they have no CRC to check.
    pub aborted_records: u64,
    /// A record begun but not finished in the bytes walked: it continues in the next segment,
    /// or the partial segment ends inside it. It is checked once its last byte arrives.
    pub unfinished_record: Option<Lsn>,
}

/// Checks a WAL stream record by record; see the [module documentation](self).
///
/// Feed every segment of the stream in order with [`feed_segment`](Self::feed_segment), the
/// last one, if the stream ends inside it, with [`feed_partial`](Self::feed_partial). Where a
/// timeline's history file says a new timeline begins, call
/// [`switch_timeline`](Self::switch_timeline) and feed the new timeline's segments from there
/// on: PostgreSQL copies the beginning of the switch segment into the new timeline's file.
///
/// The first segment may begin in the middle of a record; its rest is skipped, and the first
/// record after it cannot have its `xl_prev` checked exactly. After an error every later call
/// returns the same error: the walker does not guess where the stream resumes.
///
/// ```
/// use klio_wal::page::WalMagic;
/// use klio_wal::record_walk::RecordWalker;
/// use klio_wal::{SegmentSize, SynthConfig, SyntheticWal};
///
/// let config = SynthConfig { segments: 2, ..SynthConfig::new(SegmentSize::new(1 << 20)?) };
/// let mut walker = RecordWalker::new(
///     config.segment_size,
///     config.timeline,
///     config.segment_size.segment_of(config.start),
///     WalMagic::Pg15,
///     config.system_id,
/// );
/// let mut segments = SyntheticWal::new(config)?;
/// let first = segments.next().unwrap();
/// assert!(walker.feed_segment(&first.data)?.records > 0);
/// let mut second = segments.next().unwrap();
/// second.data[100_000] ^= 1;
/// let err = walker.feed_segment(&second.data).unwrap_err();
/// assert!(err.lsn().0 <= second.start.0 + 100_000);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct RecordWalker {
    config: Config,
    cursor: Cursor,
    failed: Option<WalCorruption>,
}

/// What the stream must look like: fixed for a walk except for timeline switches.
#[derive(Clone, Debug)]
struct Config {
    segment_size: SegmentSize,
    magic: WalMagic,
    system_id: u64,
    /// `(first LSN, timeline)` in ascending order: which timeline wrote which stretch.
    history: Vec<(Lsn, TimelineId)>,
}

impl Config {
    /// The timeline whose pages PostgreSQL writes at `page` (`xlp_tli`).
    fn timeline_at(&self, page: Lsn) -> TimelineId {
        self.history
            .iter()
            .rev()
            .find(|(from, _)| *from <= page)
            .map_or(self.history[0].1, |&(_, tli)| tli)
    }
}

/// Where the walk is between two segments.
#[derive(Clone, Debug)]
struct Cursor {
    /// The next segment to feed.
    segno: SegmentNo,
    /// Whether a page has been walked yet: only the very first may start inside a record.
    started: bool,
    /// Start of the last record checked, which the next record's `xl_prev` must name.
    prev: Option<Lsn>,
    pending: Pending,
}

/// What the next page must continue.
#[derive(Clone, Debug)]
enum Pending {
    /// Nothing: the next page starts with a new record.
    Nothing,
    /// The rest of a record begun before the first segment walked, which cannot be checked.
    Skip { remaining: u32 },
    /// A record being reassembled.
    Record(Assembly),
}

#[derive(Clone, Debug)]
struct Assembly {
    start: Lsn,
    total: u32,
    bytes: Vec<u8>,
    header_checked: bool,
    /// Set when this record must be the `XLOG_OVERWRITE_CONTRECORD` for an aborted record.
    overwrites: Option<RecordRef>,
}

impl RecordWalker {
    /// A walker whose first segment is `segno`, written on `timeline` by the cluster with
    /// `system_id`, in the WAL format of `magic`.
    ///
    /// `timeline` is the timeline of the first page: to start in a segment where a new timeline
    /// begins, pass the parent timeline and call [`switch_timeline`](Self::switch_timeline)
    /// before the first feed.
    pub fn new(
        segment_size: SegmentSize,
        timeline: TimelineId,
        segno: SegmentNo,
        magic: WalMagic,
        system_id: u64,
    ) -> Self {
        Self {
            config: Config {
                segment_size,
                magic,
                system_id,
                history: vec![(Lsn::INVALID, timeline)],
            },
            cursor: Cursor {
                segno,
                started: false,
                prev: None,
                pending: Pending::Nothing,
            },
            failed: None,
        }
    }

    /// The segment the next [`feed_segment`](Self::feed_segment) or
    /// [`feed_partial`](Self::feed_partial) must be given.
    pub fn next_segment(&self) -> SegmentNo {
        self.cursor.segno
    }

    /// The timeline of the last switch (or the one given to [`new`](Self::new)).
    pub fn timeline(&self) -> TimelineId {
        self.config.history[self.config.history.len() - 1].1
    }

    /// Start of the last record checked.
    pub fn last_record(&self) -> Option<Lsn> {
        self.cursor.prev
    }

    /// The error that stopped the walk, if one did.
    pub fn failure(&self) -> Option<&WalCorruption> {
        self.failed.as_ref()
    }

    /// Checks the next segment, which must be complete: exactly one segment of bytes.
    ///
    /// After a [`feed_partial`](Self::feed_partial) of the same segment this re-checks it from
    /// its start (a partial feed never advances the walker).
    pub fn feed_segment(&mut self, bytes: &[u8]) -> Result<SegmentSummary, WalCorruption> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.segment_start().and_then(|start| {
            let size = self.config.segment_size.bytes() as usize;
            if bytes.len() != size {
                return Err(WalCorruption::SegmentLength {
                    segno: self.cursor.segno,
                    start,
                    len: bytes.len(),
                    expected: self.config.segment_size.bytes(),
                });
            }
            walk_segment(&self.config, &mut self.cursor, start, bytes, size)
        });
        match result {
            Ok(summary) => {
                self.cursor.segno = SegmentNo(self.cursor.segno.0 + 1);
                Ok(summary)
            }
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Checks the next segment up to `end`, where the stream stops (the segment still being
    /// written, a `.partial` file); bytes from `end` on are not looked at and may be missing.
    ///
    /// Zeros before `end` where a record should start are an error: `end` must be where the
    /// WAL really ends, such as the flush position acknowledged for a `.partial`. The walker
    /// does not advance, so the same segment can be fed again once it is longer or complete,
    /// also after a [`switch_timeline`](Self::switch_timeline) to the timeline that continues
    /// from inside it.
    pub fn feed_partial(
        &mut self,
        bytes: &[u8],
        end: Lsn,
    ) -> Result<SegmentSummary, WalCorruption> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.segment_start().and_then(|start| {
            let size = self.config.segment_size.bytes_u64();
            let limit = end
                .distance_from(start)
                .filter(|&off| {
                    off <= size && off <= bytes.len() as u64 && bytes.len() as u64 <= size
                })
                .ok_or(WalCorruption::EndOutsideSegment {
                    end,
                    start,
                    len: bytes.len(),
                })?;
            let mut cursor = self.cursor.clone();
            walk_segment(&self.config, &mut cursor, start, bytes, limit as usize)
        });
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    /// From `at` on, the stream continues on `timeline`: pages from there carry its id.
    ///
    /// `at` is the switch point of `timeline`'s history file. It must not be in a segment that
    /// was already fed completely; the switch segment itself is fed once, from the new
    /// timeline's file, whose beginning PostgreSQL copied from the parent timeline.
    pub fn switch_timeline(
        &mut self,
        timeline: TimelineId,
        at: Lsn,
    ) -> Result<(), TimelineSwitchError> {
        let (previous, current) = self.config.history[self.config.history.len() - 1];
        if timeline <= current {
            return Err(TimelineSwitchError::NotNewer {
                current,
                requested: timeline,
            });
        }
        if at < previous {
            return Err(TimelineSwitchError::BeforePrevious { at, previous });
        }
        if let Ok(next_segment) = self.segment_start()
            && at < next_segment
        {
            return Err(TimelineSwitchError::AlreadyPassed { at, next_segment });
        }
        self.config.history.push((at, timeline));
        Ok(())
    }

    fn segment_start(&self) -> Result<Lsn, WalCorruption> {
        let segno = self.cursor.segno;
        self.config
            .segment_size
            .segment_start(segno)
            .filter(|start| {
                start
                    .checked_add(self.config.segment_size.bytes_u64())
                    .is_some()
            })
            .ok_or(WalCorruption::SegmentOutOfRange { segno })
    }
}

/// Walks the segment starting at `start` up to `limit` bytes of `data` (its length when the
/// segment is complete).
fn walk_segment(
    config: &Config,
    cursor: &mut Cursor,
    start: Lsn,
    data: &[u8],
    limit: usize,
) -> Result<SegmentSummary, WalCorruption> {
    let mut pass = Pass {
        config,
        summary: SegmentSummary {
            segno: cursor.segno,
            records: 0,
            first_record: None,
            last_record: None,
            last_record_end: None,
            switch_record: None,
            aborted_records: 0,
            unfinished_record: None,
        },
        cur: cursor,
        start,
        data,
        limit,
    };
    let seg_len = config.segment_size.bytes() as usize;
    for page_off in (0..seg_len).step_by(BLOCK) {
        if pass.page(page_off)? == Flow::Stop {
            break;
        }
    }
    if let Pending::Record(a) = &pass.cur.pending {
        pass.summary.unfinished_record = Some(a.start);
    }
    Ok(pass.summary)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    /// Go on with the next page.
    Next,
    /// Nothing more to check in this segment: the partial end was reached, or `XLOG_SWITCH`.
    Stop,
}

/// One segment being walked.
struct Pass<'a> {
    config: &'a Config,
    cur: &'a mut Cursor,
    start: Lsn,
    data: &'a [u8],
    limit: usize,
    summary: SegmentSummary,
}

impl Pass<'_> {
    fn lsn(&self, offset: usize) -> Lsn {
        // The segment lies inside the LSN space (checked by segment_start).
        Lsn(self.start.0 + offset as u64)
    }

    fn page(&mut self, page_off: usize) -> Result<Flow, WalCorruption> {
        let page_end = page_off + BLOCK;
        if page_off >= self.limit {
            return Ok(self.stop_unfinished());
        }
        let page = self.lsn(page_off);
        let visible = &self.data[page_off..page_end.min(self.limit)];
        let header = match PageHeader::parse(visible) {
            // A partial segment may end inside a page header.
            Err(PageHeaderError::Truncated { .. }) if page_end > self.limit => {
                return Ok(self.stop_unfinished());
            }
            Err(source) => return Err(WalCorruption::PageHeader { page, source }),
            Ok(h) => h,
        };
        self.check_page_header(page, &header, visible)?;
        let overwrites = self.continue_from_previous_page(page, &header)?;
        self.walk_page_data(page_off + header.encoded_len(), page_end, overwrites)
    }

    fn check_page_header(
        &self,
        page: Lsn,
        header: &PageHeader,
        bytes: &[u8],
    ) -> Result<(), WalCorruption> {
        let config = self.config;
        header
            .validate(page, config.segment_size, DEFAULT_BLOCK_SIZE)
            .and_then(|()| header.check_identity(config.magic, config.system_id))
            .map_err(|source| WalCorruption::PageHeader { page, source })?;
        let expected = config.timeline_at(page);
        if header.timeline != expected {
            return Err(WalCorruption::PageTimeline {
                page,
                found: header.timeline,
                expected,
            });
        }
        for at in HEADER_PADDING {
            if bytes[at] != 0 {
                return Err(WalCorruption::NonZeroPadding {
                    lsn: Lsn(page.0 + at as u64),
                    value: bytes[at],
                    area: Padding::PageHeader,
                });
            }
        }
        Ok(())
    }

    /// Matches the page's continuation flags with what the previous page left unfinished.
    /// Returns the aborted record when the page overwrites one, so the first record on the page
    /// must be the `XLOG_OVERWRITE_CONTRECORD` naming it.
    fn continue_from_previous_page(
        &mut self,
        page: Lsn,
        header: &PageHeader,
    ) -> Result<Option<RecordRef>, WalCorruption> {
        let contrecord = header.is_contrecord();
        let overwrite = header.info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0;
        if contrecord && overwrite {
            return Err(WalCorruption::ContrecordAndOverwrite { page });
        }
        let first_page = !self.cur.started;
        self.cur.started = true;
        let (record, left) = match std::mem::replace(&mut self.cur.pending, Pending::Nothing) {
            Pending::Nothing => {
                if first_page {
                    // The walk may begin inside a record; an overwrite flag then concerns a
                    // record before the walk.
                    if contrecord {
                        self.cur.pending = Pending::Skip {
                            remaining: header.rem_len,
                        };
                    }
                } else if contrecord {
                    return Err(WalCorruption::UnexpectedContrecord {
                        page,
                        rem_len: header.rem_len,
                    });
                } else if overwrite {
                    return Err(WalCorruption::UnexpectedOverwrite { page });
                }
                return Ok(None);
            }
            Pending::Skip { remaining } => {
                self.cur.pending = Pending::Skip { remaining };
                (RecordRef(None), remaining)
            }
            Pending::Record(a) => {
                let left = a.total - a.bytes.len() as u32;
                let start = a.start;
                self.cur.pending = Pending::Record(a);
                (RecordRef(Some(start)), left)
            }
        };
        if overwrite {
            // A crash lost the rest of the record; recovery skips it and PostgreSQL wrote an
            // XLOG_OVERWRITE_CONTRECORD record at the start of this page instead.
            self.cur.pending = Pending::Nothing;
            self.summary.aborted_records += 1;
            return Ok(Some(record));
        }
        if !contrecord {
            return Err(WalCorruption::MissingContrecord { page, record });
        }
        if header.rem_len != left {
            return Err(WalCorruption::RemLenMismatch {
                page,
                record,
                found: header.rem_len,
                expected: left,
            });
        }
        Ok(None)
    }

    fn walk_page_data(
        &mut self,
        mut pos: usize,
        page_end: usize,
        mut overwrites: Option<RecordRef>,
    ) -> Result<Flow, WalCorruption> {
        loop {
            match &mut self.cur.pending {
                Pending::Skip { remaining } => {
                    let room = page_end - pos;
                    if *remaining as usize > room {
                        *remaining -= room as u32;
                        return Ok(Flow::Next);
                    }
                    pos += *remaining as usize;
                    self.cur.pending = Pending::Nothing;
                    pos = self.alignment_padding(pos)?;
                }
                Pending::Record(a) => {
                    let n = (a.total as usize - a.bytes.len()).min(page_end - pos);
                    if pos + n > self.limit {
                        return Ok(self.stop_unfinished());
                    }
                    a.bytes.extend_from_slice(&self.data[pos..pos + n]);
                    pos += n;
                    let header_now = !a.header_checked && a.bytes.len() >= HEADER_LEN;
                    let done = a.bytes.len() == a.total as usize;
                    if header_now {
                        let (start, prev) = (a.start, self.cur.prev);
                        a.header_checked = true;
                        check_record_header(start, &a.bytes, prev)?;
                    }
                    if !done {
                        return Ok(Flow::Next);
                    }
                    let (start, bytes, overwrites) =
                        (a.start, std::mem::take(&mut a.bytes), a.overwrites);
                    self.cur.pending = Pending::Nothing;
                    if self.finish_record(start, &bytes, pos, overwrites)? {
                        return self.after_switch(start, pos);
                    }
                    pos = self.alignment_padding(pos)?;
                }
                Pending::Nothing => {
                    if pos >= page_end {
                        return Ok(Flow::Next);
                    }
                    let lsn = self.lsn(pos);
                    // xl_tot_len is always on this page: records are MAXALIGNed.
                    if pos + 4 > self.limit {
                        if pos < self.limit {
                            self.summary.unfinished_record = Some(lsn);
                        }
                        return Ok(Flow::Stop);
                    }
                    let tot_len = record::le32(self.data, pos);
                    if tot_len == 0 {
                        return Err(WalCorruption::MissingRecord { lsn });
                    }
                    if !(HEADER_LEN as u32..=MAX_RECORD_LEN).contains(&tot_len) {
                        return Err(WalCorruption::RecordLength {
                            lsn,
                            tot_len,
                            max: MAX_RECORD_LEN,
                        });
                    }
                    let len = tot_len as usize;
                    let end = (pos + len).min(page_end);
                    if end > self.limit {
                        self.summary.unfinished_record = Some(lsn);
                        return Ok(Flow::Stop);
                    }
                    let head = &self.data[pos..end];
                    if head.len() >= HEADER_LEN {
                        check_record_header(lsn, head, self.cur.prev)?;
                    }
                    let overwrites = overwrites.take();
                    if pos + len <= page_end {
                        // The whole record is on this page: check it in place.
                        pos += len;
                        if self.finish_record(lsn, head, pos, overwrites)? {
                            return self.after_switch(lsn, pos);
                        }
                        pos = self.alignment_padding(pos)?;
                    } else {
                        let mut bytes = Vec::with_capacity(len.min(INITIAL_RECORD_BUFFER));
                        bytes.extend_from_slice(head);
                        self.cur.pending = Pending::Record(Assembly {
                            start: lsn,
                            total: tot_len,
                            header_checked: head.len() >= HEADER_LEN,
                            bytes,
                            overwrites,
                        });
                        return Ok(Flow::Next);
                    }
                }
            }
        }
    }

    /// Checks a complete record's CRC and layout and makes it the previous record; its last
    /// byte is before `end` in the segment. Returns whether it is an `XLOG_SWITCH`.
    fn finish_record(
        &mut self,
        lsn: Lsn,
        rec: &[u8],
        end: usize,
        overwrites: Option<RecordRef>,
    ) -> Result<bool, WalCorruption> {
        let (stored, computed) = record::crc(rec);
        if stored != computed {
            return Err(WalCorruption::Crc {
                lsn,
                stored,
                computed,
            });
        }
        let main =
            record::main_data(rec).map_err(|detail| WalCorruption::RecordLayout { lsn, detail })?;
        let header = RecordHeader::parse(rec);
        if let Some(aborted) = overwrites {
            // xl_overwrite_contrecord starts with the LSN of the record it replaces.
            let names = main.get(..8).map(|b| Lsn(record::le64(b, 0)));
            let ok = header.is_xlog(XLOG_OVERWRITE_CONTRECORD)
                && match (names, aborted.0) {
                    (Some(found), Some(expected)) => found == expected,
                    (Some(found), None) => found < lsn,
                    (None, _) => false,
                };
            if !ok {
                return Err(WalCorruption::OverwriteRecord { lsn, aborted });
            }
        }
        self.cur.prev = Some(lsn);
        let end = self.lsn(end);
        let s = &mut self.summary;
        s.records += 1;
        s.first_record.get_or_insert(lsn);
        s.last_record = Some(lsn);
        s.last_record_end = Some(end);
        Ok(header.is_xlog(record::XLOG_SWITCH))
    }

    /// Checks the zeros up to the next MAXALIGNed position and returns it.
    fn alignment_padding(&self, pos: usize) -> Result<usize, WalCorruption> {
        let aligned = pos.next_multiple_of(MAXALIGN);
        self.zeros(pos, aligned.min(self.limit), Padding::RecordAlignment)?;
        Ok(aligned)
    }

    /// The rest of the segment after `XLOG_SWITCH` is not part of the WAL: PostgreSQL's reader
    /// goes on with the next segment and never reads it. A primary zeroes it (since
    /// PostgreSQL 11), but a standby's walreceiver writes into a recycled file and leaves
    /// what that file held there, and a walsender on the standby (which `send-wal` may stream
    /// from) sends those bytes as they are. So they are not judged.
    fn after_switch(&mut self, switch: Lsn, _pos: usize) -> Result<Flow, WalCorruption> {
        self.summary.switch_record = Some(switch);
        Ok(Flow::Stop)
    }

    fn zeros(&self, from: usize, to: usize, area: Padding) -> Result<(), WalCorruption> {
        if from >= to {
            return Ok(());
        }
        match self.data[from..to].iter().position(|&b| b != 0) {
            None => Ok(()),
            Some(i) => Err(WalCorruption::NonZeroPadding {
                lsn: self.lsn(from + i),
                value: self.data[from + i],
                area,
            }),
        }
    }

    /// The partial segment ends here: note the record it cuts off.
    fn stop_unfinished(&mut self) -> Flow {
        if let Pending::Record(a) = &self.cur.pending {
            self.summary.unfinished_record = Some(a.start);
        }
        Flow::Stop
    }
}

/// The checks PostgreSQL makes as soon as a record's 24-byte header is there.
fn check_record_header(lsn: Lsn, bytes: &[u8], prev: Option<Lsn>) -> Result<(), WalCorruption> {
    let header = RecordHeader::parse(bytes);
    if !header.rmid_is_valid() {
        return Err(WalCorruption::InvalidRmgr {
            lsn,
            rmid: header.rmid,
        });
    }
    match prev {
        Some(expected) if header.prev != expected => Err(WalCorruption::PrevLink {
            lsn,
            found: header.prev,
            expected,
        }),
        // The walk began inside the stream: the previous record is unknown, but earlier.
        None if header.prev >= lsn => Err(WalCorruption::PrevLinkNotBefore {
            lsn,
            found: header.prev,
        }),
        _ => Ok(()),
    }
}
