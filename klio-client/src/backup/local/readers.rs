//! Reading the data directory in parallel: one thread walks it, `jobs` threads read the files
//! it finds, and what they cut arrives on one channel for the capture to exchange with the
//! server.
//!
//! # What a reader does with a file
//!
//! It opens the file and reads it from the start in [`BLOCK_SIZE`] blocks, up to the size the
//! walk listed (bytes appended since are in the WAL the backup needs, as for PostgreSQL's own
//! backups), hashing each block with the cluster's key and computing the file's CRC-32C for
//! the manifest. It sends the blocks as it goes, at most [`BLOCKS_PER_MESSAGE`] at a time,
//! and then the file's entry: on the channel a file's entry always follows all of its blocks,
//! so a batch that announces a file holds (or has held) every block it names.
//!
//! Every byte is read and hashed: nothing is skipped because of its size or modification
//! time, so a file rewritten in place with the same size and time is backed up as it now is.
//! Only the server's answer to the hashes decides what is sent.
//!
//! # Page checksums
//!
//! On a cluster with data checksums, every page of a relation file (under `base/`,
//! `global/` and the tablespaces) that was written before the backup started is checked as
//! `BASE_BACKUP` checks it ([`klio_proto::page`]); a page that fails is read again once (a
//! write may have been in progress) and, if it still fails, named in the backup's failure:
//! a backup of damaged pages is never cataloged.
//!
//! A file that vanishes before it is opened is left out; one that shrinks is recorded with
//! what it held when read. Either is repaired by WAL replay, as in PostgreSQL's own backups
//! (a relation dropped or truncated during the backup is dropped or truncated again by the
//! WAL from the backup's start).
//!
//! # Memory
//!
//! The channel holds at most [`CUTS_AHEAD`] messages of at most [`BLOCKS_PER_MESSAGE`] blocks
//! (16 MiB), and each reader one message being filled (1 MiB), besides the capture's batch.

use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use bytes::Bytes;
use klio_crypto::BlockHashKey;
use klio_proto::klio::{BlockHash, FileEntry, FileKind};
use klio_proto::page::{self, PAGE_SIZE, PageCheck};
use klio_wal::Lsn;
use tokio::sync::mpsc;

use super::LocalCaptureError;
use super::exclude::relation_segment;
use super::throttle::Throttle;
use super::walk::{Walk, WalkEntry, WalkKind};
use crate::backup::BLOCK_SIZE;
use crate::backup::batch::PendingBlock;

/// Blocks sent in one message (1 MiB).
pub(crate) const BLOCKS_PER_MESSAGE: usize = 16;

/// Messages the channel holds: 16 MiB of blocks, a whole batch
/// ([`BatchLimits`](crate::backup::batch::BatchLimits)), so that the readers go on reading
/// while the capture compresses and sends the batch before.
const CUTS_AHEAD: usize = 16;

/// What the readers produce.
#[derive(Debug)]
pub(crate) enum Cut {
    /// Blocks of a file, in file order.
    Blocks(Vec<PendingBlock>),
    /// A file, all of whose blocks came before; with its CRC-32C and what its pages' checks
    /// found wrong (PostgreSQL's wording, at most 5 pages and a last line).
    File {
        entry: FileEntry,
        crc32c: u32,
        damaged: Vec<String>,
    },
    /// A directory.
    Directory(FileEntry),
}

/// How pages are checked, on a cluster with data checksums.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PageChecks {
    /// The backup's start: pages written since are not checked.
    pub(crate) start: Lsn,
    /// Pages in one segment file of a relation (131072 for PostgreSQL's 1 GiB).
    pub(crate) segment_pages: u32,
}

/// Damaged pages reported per file; the rest are counted.
const REPORTED_PER_FILE: usize = 5;

/// A file the capture reads itself, after everything else: `global/pg_control`.
pub(crate) const READ_LAST: &str = "global/pg_control";

/// The walk and readers of one capture; dropping it stops them.
#[derive(Debug)]
pub(crate) struct Readers {
    /// What they cut, in the order each thread cut it.
    pub(crate) cuts: mpsc::Receiver<Result<Cut, LocalCaptureError>>,
    /// Bytes of files read so far.
    pub(crate) read: Arc<AtomicU64>,
    /// The entry of [`READ_LAST`], once the walk met it.
    pub(crate) last: Arc<Mutex<Option<WalkEntry>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Readers {
    /// Starts walking `walk` and reading with `jobs` threads, hashing with `key`, at most as
    /// fast as `throttle` allows, checking pages as `checks` says.
    pub(crate) fn start(
        walk: Walk,
        jobs: usize,
        key: BlockHashKey,
        throttle: Throttle,
        checks: Option<PageChecks>,
    ) -> Result<Self, LocalCaptureError> {
        let jobs = jobs.max(1);
        let (cut_tx, cuts) = mpsc::channel(CUTS_AHEAD);
        let (work_tx, work_rx) = sync_channel::<WalkEntry>(4 * jobs);
        let work_rx = Arc::new(Mutex::new(work_rx));
        let read = Arc::new(AtomicU64::new(0));
        let last = Arc::new(Mutex::new(None));
        let mut threads = Vec::with_capacity(jobs + 1);
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(f)
                .map_err(LocalCaptureError::Threads)
        };
        {
            let (cut_tx, last) = (cut_tx.clone(), last.clone());
            threads.push(spawn(
                "klio-walk",
                Box::new(move || feed(walk, &work_tx, &cut_tx, &last)),
            )?);
        }
        for _ in 0..jobs {
            let reader = Reader {
                key: key.clone(),
                checks,
                throttle: throttle.clone(),
                read: read.clone(),
                out: cut_tx.clone(),
            };
            let work = work_rx.clone();
            threads.push(spawn("klio-read", Box::new(move || reader.run(&work)))?);
        }
        Ok(Self {
            cuts,
            read,
            last,
            threads,
        })
    }

    /// Waits for the threads (they have ended once the channel is closed and empty).
    pub(crate) fn join(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Runs the walk: directories go straight to the channel, files to the readers.
fn feed(
    mut walk: Walk,
    work: &SyncSender<WalkEntry>,
    out: &mpsc::Sender<Result<Cut, LocalCaptureError>>,
    last: &Mutex<Option<WalkEntry>>,
) {
    loop {
        let entry = match walk.next_entry() {
            Ok(Some(e)) => e,
            Ok(None) => return,
            Err(e) => {
                let _ = out.blocking_send(Err(e));
                return;
            }
        };
        let sent = match entry.kind {
            WalkKind::Directory => out
                .blocking_send(Ok(Cut::Directory(FileEntry {
                    path: entry.path,
                    kind: FileKind::Directory,
                    mode: entry.mode,
                    size: 0,
                    mtime: entry.mtime,
                    blocks: Vec::new(),
                })))
                .is_ok(),
            WalkKind::File { .. } if entry.path == READ_LAST => {
                *last.lock().unwrap_or_else(PoisonError::into_inner) = Some(entry);
                true
            }
            WalkKind::File { .. } => work.send(entry).is_ok(),
        };
        if !sent {
            // The capture stopped.
            return;
        }
    }
}

/// One reading thread.
struct Reader {
    key: BlockHashKey,
    checks: Option<PageChecks>,
    throttle: Throttle,
    read: Arc<AtomicU64>,
    out: mpsc::Sender<Result<Cut, LocalCaptureError>>,
}

impl Reader {
    fn run(self, work: &Mutex<Receiver<WalkEntry>>) {
        loop {
            let next = work.lock().unwrap_or_else(PoisonError::into_inner).recv();
            let Ok(entry) = next else {
                // The walk is over.
                return;
            };
            let reading = Reading {
                key: &self.key,
                checks: self.checks,
                throttle: &self.throttle,
                read: &self.read,
            };
            let done = match cut_file(&entry, &reading, &mut |blocks| {
                self.out.blocking_send(Ok(Cut::Blocks(blocks))).is_ok()
            }) {
                Ok(Some(cut)) => self.out.blocking_send(Ok(cut)).is_ok(),
                Ok(None) => true,
                Err(e) => {
                    let _ = self.out.blocking_send(Err(e));
                    false
                }
            };
            if !done {
                return;
            }
        }
    }
}

/// What reading a file needs.
pub(crate) struct Reading<'a> {
    pub(crate) key: &'a BlockHashKey,
    pub(crate) checks: Option<PageChecks>,
    pub(crate) throttle: &'a Throttle,
    /// Bytes read, for progress.
    pub(crate) read: &'a AtomicU64,
}

/// Reads `entry` (see the module documentation), handing its blocks to `send` (which says
/// whether to go on) and returning its entry; `None` if it vanished or the capture stopped.
pub(crate) fn cut_file(
    entry: &WalkEntry,
    reading: &Reading<'_>,
    send: &mut dyn FnMut(Vec<PendingBlock>) -> bool,
) -> Result<Option<Cut>, LocalCaptureError> {
    let WalkKind::File { size: listed } = entry.kind else {
        return Ok(None);
    };
    let (key, throttle, read) = (reading.key, reading.throttle, reading.read);
    // Relation files of a cluster with checksums: the first page number of this file.
    let checked = reading.checks.and_then(|checks| {
        let in_relation_dir = ["base/", "global/", "pg_tblspc/"]
            .iter()
            .any(|d| entry.path.starts_with(d));
        let name = entry.path.rsplit('/').next().unwrap_or_default();
        let segment = relation_segment(name).filter(|_| in_relation_dir)?;
        Some((checks, segment.saturating_mul(checks.segment_pages)))
    });
    let mut damaged = Vec::new();
    let mut failures = 0usize;
    let file = match std::fs::File::open(&entry.source) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(read_error(&entry.source, source)),
    };
    let mut hashes: Vec<BlockHash> = Vec::new();
    let mut blocks = Vec::with_capacity(BLOCKS_PER_MESSAGE);
    let mut crc = 0u32;
    let mut size = 0u64;
    while size < listed {
        let want = usize::try_from(listed - size).map_or(BLOCK_SIZE, |n| n.min(BLOCK_SIZE));
        throttle.take(want);
        let mut plain = read_block(&file, want).map_err(|e| read_error(&entry.source, e))?;
        if let Some((checks, first_page)) = checked {
            let pages = PageRange {
                file: &file,
                offset: size,
                first_page,
                checks,
            };
            for failure in pages
                .verify(&mut plain)
                .map_err(|e| read_error(&entry.source, e))?
            {
                failures += 1;
                if failures <= REPORTED_PER_FILE {
                    damaged.push(format!(
                        "checksum verification failed in file \"{}\", block {}: calculated \
                         {:X} but expected {:X}",
                        entry.path, failure.blkno, failure.computed, failure.stored
                    ));
                }
            }
        }
        let plain = Bytes::from(plain);
        if plain.is_empty() {
            // Shorter than when it was listed.
            break;
        }
        let got = plain.len();
        size += got as u64;
        read.fetch_add(got as u64, Ordering::Relaxed);
        crc = crc32c::crc32c_append(crc, &plain);
        let hash = BlockHash(key.hash(&plain));
        hashes.push(hash);
        blocks.push(PendingBlock { hash, plain });
        if blocks.len() == BLOCKS_PER_MESSAGE
            && !send(std::mem::replace(
                &mut blocks,
                Vec::with_capacity(BLOCKS_PER_MESSAGE),
            ))
        {
            return Ok(None);
        }
        if got < want {
            // Shorter than when it was listed: it ends here.
            break;
        }
    }
    if !blocks.is_empty() && !send(blocks) {
        return Ok(None);
    }
    if failures > REPORTED_PER_FILE {
        damaged.push(format!(
            "file \"{}\" has a total of {failures} checksum verification failures",
            entry.path
        ));
    }
    Ok(Some(Cut::File {
        entry: FileEntry {
            path: entry.path.clone(),
            kind: FileKind::File,
            mode: entry.mode,
            size,
            mtime: entry.mtime,
            blocks: hashes,
        },
        crc32c: crc,
        damaged,
    }))
}

/// A page whose checksum failed twice.
struct PageFailure {
    blkno: u32,
    stored: u16,
    computed: u16,
}

/// The pages of one block just read from `file` at `offset`.
struct PageRange<'a> {
    file: &'a std::fs::File,
    offset: u64,
    /// The relation's page number of the file's first page.
    first_page: u32,
    checks: PageChecks,
}

impl PageRange<'_> {
    /// Checks every whole page of `block`; a page that fails is read again from the file
    /// (into `block`: the backup keeps what the second read found) and checked once more.
    fn verify(&self, block: &mut [u8]) -> io::Result<Vec<PageFailure>> {
        let mut failures = Vec::new();
        for (i, page) in block.chunks_exact_mut(PAGE_SIZE).enumerate() {
            let at = self.offset + (i * PAGE_SIZE) as u64;
            let index = u32::try_from(at / PAGE_SIZE as u64).unwrap_or(u32::MAX);
            let blkno = self.first_page.saturating_add(index);
            let page: &mut [u8; PAGE_SIZE] = page.try_into().map_err(io::Error::other)?;
            if !matches!(
                page::check(page, blkno, self.checks.start),
                PageCheck::Damaged { .. }
            ) {
                continue;
            }
            // A write in progress may have torn the first read.
            if self.file.read_exact_at(page, at).is_err() {
                continue;
            }
            if let PageCheck::Damaged { stored, computed } =
                page::check(page, blkno, self.checks.start)
            {
                failures.push(PageFailure {
                    blkno,
                    stored,
                    computed,
                });
            }
        }
        Ok(failures)
    }
}

/// Up to `want` bytes from `file`: fewer only at its end.
///
/// Reads into the vector's spare capacity, so a block costs no zeroing of memory the read
/// overwrites anyway (zeroing was 6% of the client's CPU time in a profiled incremental).
fn read_block(file: &std::fs::File, want: usize) -> io::Result<Vec<u8>> {
    // Exactly `want` (`Vec`'s guarantees), so no read goes past the block.
    let mut buf = Vec::with_capacity(want);
    while buf.len() < want {
        match rustix::io::read(file, rustix::buffer::spare_capacity(&mut buf)) {
            Ok(0) => break,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(buf)
}

fn read_error(path: &Path, source: io::Error) -> LocalCaptureError {
    LocalCaptureError::Read {
        path: path.to_owned(),
        source,
    }
}
