//! The Tier 1 WAL archive of one PostgreSQL cluster.
//!
//! # On-disk layout
//!
//! One directory per cluster:
//!
//! - `klio-archive.identity`: the cluster's system id and segment size (see
//!   [`ClusterIdentity`]), written atomically and durably on first use and checked on every open.
//! - `000000010000000000000003`: a completed segment, byte-identical to what pg_receivewal
//!   writes. Assembled from its journal into `<name>.klio-tmp`, fsynced, renamed, and the
//!   directory fsynced: a final name always holds a complete segment. One of the process's
//!   finishing threads does this after the journal holding the whole segment was fdatasynced,
//!   while the next batches go on (the `finisher` module).
//! - `000000010000000000000004.klio-journal`: the segment in progress, as CRC-protected frames
//!   in a zero-padded file (format in the `journal` module). After a crash, the end of its last
//!   valid frame is the exact durable end. A journal whose final segment exists is stale and
//!   removed when the writer opens the archive; one holding the whole segment is finished then
//!   (a reader already serves it as complete, and leaves it as it is).
//! - `00000002.history`: timeline history files, stored atomically and durably.
//! - `*.klio-tmp`: files being written; removed when the writer opens the archive.
//!
//! Only the writer ([`WalArchive`]) creates, finishes or repairs any of these files, and only
//! it removes journals and temporary files; the pruner ([`WalPruner`]) removes completed
//! segments and history files that retention no longer needs (never a journal, a partial
//! segment or the identity); a reader ([`WalArchiveReader`]) only reads them. A reader or
//! [`WalArchiveReader::verify`] after a prune starts at the oldest segment still stored.
//!
//! # Encryption at rest
//!
//! Written through a writer opened with a keyring ([`WalArchive::open_with`],
//! [`StorageOptions`]), the archive keeps no
//! WAL in plaintext: completed segments are stored sealed (compressed, then encrypted with
//! klio-crypto, bound to their name) as `<segment>.klio` instead of `<segment>` (format in the
//! `sealed` module), history files likewise as `<tli>.history.klio`, and new journals are
//! encrypted: a sealed per-journal frame key at the
//! start, then AES-256-GCM frames (format in the `journal` module), still one frame and one
//! fdatasync per [`WalArchive::sync`], with the same exact durable end after a crash. Reads
//! decrypt and decompress transparently and return the original bytes or an error naming the
//! file. Plain files written before a keyring was configured stay readable (and a plain journal
//! is continued plain until its segment completes, which is then sealed). An archive holding
//! encrypted files refuses to open without a keyring ([`WalArchiveError::Encrypted`]), for a
//! writer and for a reader ([`WalArchiveReader::open_with`] takes the keyring).
//! [`WalArchive::rewrap_all`] and [`WalArchiveReader::key_ids_in_use`] support key rotation.
//!
//! # Durability
//!
//! [`WalArchive::append`] only buffers small appends, and writes large ones out as frames
//! without fsync (a stream holds at most 256 KiB between batches). [`WalArchive::sync`]
//! writes what is buffered as one frame per segment touched and
//! issues one fdatasync (one more per segment completed); the LSN it returns is the only one
//! that may be acknowledged. Completed segments are finished on another thread
//! ([`WalArchive::finish_completed`] waits for them); nothing acknowledged depends on that. An I/O error poisons the writer: the archive on disk stays
//! consistent, every later write is refused ([`WalArchiveError::Poisoned`]), and reopening it
//! recovers the exact durable end. A reader writes nothing, so it has nothing to make durable
//! and nothing to poison.
//!
//! # The writer and readers
//!
//! Only one writer ([`WalArchive::open`]) may use a directory at a time: it runs crash
//! recovery when opened and holds the stream. Readers ([`WalArchiveReader::open`]) may run
//! alongside it: a reader never repairs, truncates or removes anything (a journal the writer is
//! appending to is rescanned once before a frame in it is reported damaged), and its durable
//! positions are those found when it was opened. A pruner ([`WalPruner::open`]) may run
//! alongside both, one at a time per archive (the server serializes them): the writer never
//! reopens a completed segment or rewrites a history file, which are all a pruner removes.
//!
//! The split is in the types, not checked at run time: [`WalArchiveReader`] has no write
//! methods, so a handle opened for reading cannot write (it does not compile; see the example
//! on [`WalArchiveReader`]). The writer owns a reader and dereferences to it
//! (`Deref<Target = WalArchiveReader>`), keeping that reader's durable ends current as it
//! syncs. Deref rather than a private core behind two sets of delegating methods: every read
//! method is written and documented once, on [`WalArchiveReader`], so the two types cannot
//! drift apart, and a `&WalArchive` passes wherever a `&WalArchiveReader` is expected. The
//! writer has no method named like one of the reader's, so nothing is shadowed.
//!
//! # The index
//!
//! A reader opened with [`WalArchiveReader::open`] lists the directory: fine for a command,
//! too slow per request for a server whose archives hold a million segments. A server keeps
//! an [`ArchiveIndex`] per archive instead (see the `index` module: built once on first use,
//! kept true by a writer opened with [`StorageOptions::indexes`] and by a pruner given it,
//! never persisted). Reads through it open the file it names, and every other name the file
//! may have before answering that it is not there.
//!
//! Every file is put on disk through [`klio_wal::durable`], whose module doc states the policy
//! (when files and directories are fsynced, the one temporary suffix, what a crash leaves).

mod dir_listing;
mod error;
mod finisher;
mod identity;
mod index;
mod journal;
mod optional_file;
mod prune;
mod read;
mod recover;
mod recovery_plan;
mod rotate;
mod sealed;
mod summary;
mod verify;

use std::collections::BTreeMap;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use finisher::{FinishContext, Finisher};
use klio_crypto::{Keyring, SealOptions, SecureRandom, SystemRandom};
use klio_wal::{
    FsAction, Lsn, SegmentNo, SegmentSize, TimelineId, WalFileName, WalPosition, durable,
};

pub use error::WalArchiveError;
pub use identity::ClusterIdentity;
pub use index::{ArchiveIndex, ArchiveIndexes};
pub use journal::{FrameCheck, FrameDefect, JournalDamage, ScanStop};
pub use prune::{PrunedTimeline, PrunedWal, WalPruner};
pub use read::{
    ArchiveListing, ArchivedFile, ExportSummary, JournalReport, JournalSnapshot, PartialSegment,
    SegmentRange, TimelineListing, inspect_journal, inspect_journal_with,
};
pub use rotate::RewrapSummary;
pub use summary::ArchiveSummary;
pub use verify::{VerifyProblem, VerifyReport};

/// The file in an archive directory that records its cluster's identity.
pub const IDENTITY_FILE: &str = identity::IDENTITY_FILE;

/// One of the files an archive may hold a segment or history file in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoredFile {
    /// A finished file (sealed, or plain): it never changes once written.
    Final(String),
    /// The journal of a segment in progress: it grows until the segment is finished.
    Journal(String),
}

/// The files under which an archive may hold `name` (a segment or history file), in the order
/// [`WalArchiveReader::read_file`] prefers them: sealed, plain, and for a segment its journal.
/// Empty for other names.
pub fn stored_files(name: &WalFileName, size: SegmentSize) -> Vec<StoredFile> {
    match *name {
        WalFileName::Segment { timeline, segno } => vec![
            StoredFile::Final(sealed::sealed_name(timeline, segno, size)),
            StoredFile::Final(name.to_string_with(size)),
            StoredFile::Journal(journal::journal_name(timeline, segno, size)),
        ],
        WalFileName::History { timeline } => vec![
            StoredFile::Final(sealed::sealed_history_name(timeline, size)),
            StoredFile::Final(name.to_string_with(size)),
        ],
        _ => Vec::new(),
    }
}

/// The segment or history file that the archive file `file_name` holds (the inverse of
/// [`stored_files`]); `None` for other files.
pub fn file_of_stored(file_name: &str, size: SegmentSize) -> Option<WalFileName> {
    let base = file_name
        .strip_suffix(journal::JOURNAL_SUFFIX)
        .or_else(|| file_name.strip_suffix(sealed::SEALED_SUFFIX))
        .unwrap_or(file_name);
    WalFileName::parse(base, size)
        .ok()
        .filter(|n| matches!(n, WalFileName::Segment { .. } | WalFileName::History { .. }))
}

use journal::JournalWriter;

/// Small appends are gathered, up to this, into one journal frame (one write, one seal) per
/// batch; an append that would take the gathered bytes to this or beyond is written out as
/// frames of its own, without fsync and without a copy. So a stream holds at most this much
/// between batches, whatever its batches' size.
const COALESCE_LIMIT: usize = 256 << 10;

/// How an archive stores what it is given: encrypted (and compressed) with a keyring, or plain.
#[derive(Clone, Debug, Default)]
pub struct StorageOptions {
    /// Seal completed segments and encrypt journals with this keyring's primary key, and open
    /// existing encrypted files with any of its keys. `None`: store plain (and refuse archives
    /// that hold encrypted files).
    pub keyring: Option<Keyring>,
    /// Compression and chunk size of sealed segments (ignored without a keyring).
    pub seal: SealOptions,
    /// The in-memory indexes of this process's archives: a writer opened with them keeps the
    /// index of its archive true (see the `index` module). `None`: no index is told.
    pub indexes: Option<ArchiveIndexes>,
}

static RNG: LazyLock<SystemRandom> = LazyLock::new(SystemRandom::new);

/// What the file formats need besides the directory: segment size, cluster, keys, randomness.
#[derive(Clone, Copy)]
pub(crate) struct Ctx<'a> {
    pub(crate) size: SegmentSize,
    pub(crate) system_id: u64,
    pub(crate) keyring: Option<&'a Keyring>,
    pub(crate) seal: SealOptions,
    pub(crate) rng: &'a dyn SecureRandom,
}

impl Ctx<'static> {
    /// No keyring: plain files only.
    pub(crate) fn plain(size: SegmentSize) -> Self {
        Ctx {
            size,
            system_id: 0,
            keyring: None,
            seal: SealOptions::default(),
            rng: &*RNG,
        }
    }
}

fn make_ctx<'a>(
    identity: &ClusterIdentity,
    keyring: Option<&'a Keyring>,
    seal: SealOptions,
) -> Ctx<'a> {
    Ctx {
        size: identity.segment_size,
        system_id: identity.system_id,
        keyring,
        seal,
        rng: &*RNG,
    }
}

/// How a [`WalArchive::begin`] relates to what the archive already holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BeginOutcome {
    /// The timeline has no WAL yet; streaming starts at a segment boundary.
    Started,
    /// Streaming continues exactly at the durable end.
    Resumed,
    /// Streaming continues at a segment boundary after the durable end: the WAL in `from..to`
    /// is missing from the archive. Callers should log this loudly.
    Gap {
        /// The durable end on the timeline.
        from: Lsn,
        /// Where streaming resumes.
        to: Lsn,
    },
}

/// The stream currently being appended to.
#[derive(Debug)]
struct Stream {
    timeline: TimelineId,
    /// Where `begin` started.
    origin: Lsn,
    /// Just past the last appended byte.
    next: Lsn,
    /// LSN of `buf[0]`.
    buf_start: Lsn,
    /// Appended bytes not yet written to a journal.
    buf: Vec<u8>,
    /// The journal of the segment being written, if open.
    journal: Option<JournalWriter>,
}

/// Read access to the WAL archive of one PostgreSQL cluster (see the
/// [module documentation](self)): listings, reads for restores, history files, verification,
/// summaries, exports and the keys in use.
///
/// Opened with [`WalArchiveReader::open`], it changes nothing on disk and may run alongside the
/// writer. It has no write methods, so a handle opened for reading cannot write: none of these
/// compiles.
///
/// ```compile_fail,E0599
/// # fn write(reader: &mut klio_store::WalArchiveReader) {
/// reader.begin(klio_wal::TimelineId::FIRST, klio_wal::Lsn(0));
/// # }
/// ```
/// ```compile_fail,E0599
/// # fn write(reader: &mut klio_store::WalArchiveReader) {
/// reader.append(klio_wal::Lsn(0), b"WAL");
/// # }
/// ```
/// ```compile_fail,E0599
/// # fn write(reader: &mut klio_store::WalArchiveReader) {
/// reader.sync();
/// # }
/// ```
/// ```compile_fail,E0599
/// # fn write(reader: &mut klio_store::WalArchiveReader) {
/// reader.store_history(klio_wal::TimelineId::FIRST, b"");
/// # }
/// ```
/// ```compile_fail,E0599
/// # fn write(reader: &mut klio_store::WalArchiveReader, ring: &klio_crypto::Keyring) {
/// reader.rewrap_all(ring, &ring.primary_id());
/// # }
/// ```
///
/// The same calls on the writer, [`WalArchive`], compile (which keeps the examples above from
/// failing for another reason):
///
/// ```no_run
/// # fn write(writer: &mut klio_store::WalArchive, ring: &klio_crypto::Keyring) {
/// let _ = writer.begin(klio_wal::TimelineId::FIRST, klio_wal::Lsn(0));
/// let _ = writer.append(klio_wal::Lsn(0), b"WAL");
/// let _ = writer.sync();
/// let _ = writer.store_history(klio_wal::TimelineId::FIRST, b"");
/// let _ = writer.rewrap_all(ring, &ring.primary_id());
/// # }
/// ```
#[derive(Debug)]
pub struct WalArchiveReader {
    dir: PathBuf,
    identity: ClusterIdentity,
    keyring: Option<Keyring>,
    /// The durable end of each timeline with WAL: as found when a reader was opened; kept
    /// current by the writer that owns this reader.
    durable: BTreeMap<TimelineId, Lsn>,
}

/// The writer of the WAL archive of one PostgreSQL cluster (see the
/// [module documentation](self)): it runs crash recovery on open, streams WAL in, stores
/// history files and rotates keys. It offers every read of [`WalArchiveReader`] too, through
/// `Deref`, with the durable ends kept current as it syncs.
#[derive(Debug)]
pub struct WalArchive {
    reader: WalArchiveReader,
    seal: SealOptions,
    poisoned: bool,
    stream: Option<Stream>,
    /// Told of every journal, durable end, finished segment and history file written.
    index: Option<Arc<ArchiveIndex>>,
    /// Has completed segments finished off the ingest path (see the `finisher` module).
    finisher: Finisher,
}

impl Deref for WalArchive {
    type Target = WalArchiveReader;

    fn deref(&self) -> &WalArchiveReader {
        &self.reader
    }
}

impl WalArchive {
    /// Opens the archive in `dir` (created if missing) for writing, storing plain files. First
    /// use records `identity` durably; later uses refuse a different system id or segment size
    /// with a clear error. Runs crash recovery. An archive holding encrypted files is refused:
    /// use [`WalArchive::open_with`].
    pub fn open(dir: &Path, identity: ClusterIdentity) -> Result<Self, WalArchiveError> {
        Self::open_with(dir, identity, StorageOptions::default())
    }

    /// Like [`WalArchive::open`], with `options`: with a keyring, everything written from now
    /// on is encrypted and completed segments are sealed (see the
    /// [module documentation](self)).
    pub fn open_with(
        dir: &Path,
        identity: ClusterIdentity,
        options: StorageOptions,
    ) -> Result<Self, WalArchiveError> {
        if options.keyring.is_some() {
            options
                .seal
                .validate()
                .map_err(|source| WalArchiveError::Crypto {
                    action: "use the seal options for",
                    path: dir.to_owned(),
                    source,
                })?;
        }
        let ctx = make_ctx(&identity, options.keyring.as_ref(), options.seal);
        if !dir.is_dir() {
            std::fs::create_dir_all(dir)
                .map_err(|e| WalArchiveError::io(FsAction::CreateDirectory, dir, e))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                // The new directory's entry lives in its parent: without this fsync a crash
                // could lose the whole archive directory after WAL in it was acknowledged.
                durable::sync_dir(parent)?;
            }
        }
        match identity::read(dir)? {
            Some(recorded) => identity::check(dir, &recorded, &identity)?,
            None => {
                let s = recover::survey(dir, &ctx)?;
                if s.has_archive_files {
                    return Err(WalArchiveError::MissingIdentity {
                        dir: dir.to_owned(),
                    });
                }
                identity::write(dir, &identity)?;
            }
        }
        let recovered = recover::recover(dir, &ctx)?;
        let index = options.indexes.as_ref().map(|i| i.of(dir));
        if let Some(index) = &index
            && recovered.journals_changed
        {
            index.note(index::Change::Rebuild);
        }
        Ok(Self {
            reader: WalArchiveReader {
                dir: dir.to_owned(),
                identity,
                keyring: options.keyring,
                durable: recovered.durable,
            },
            seal: options.seal,
            poisoned: false,
            stream: None,
            index,
            finisher: Finisher::new(),
        })
    }
}

impl WalArchiveReader {
    /// Opens an existing archive for reading, taking the identity from disk (for status,
    /// verification, exports and restores). Changes nothing on disk, so it may run alongside
    /// the writer. An archive holding encrypted files is refused: use
    /// [`WalArchiveReader::open_with`].
    pub fn open(dir: &Path) -> Result<Self, WalArchiveError> {
        Self::open_with(dir, None)
    }

    /// Like [`WalArchiveReader::open`], opening encrypted files with `keyring`.
    pub fn open_with(dir: &Path, keyring: Option<Keyring>) -> Result<Self, WalArchiveError> {
        let identity = identity::read_required(dir)?;
        let ctx = make_ctx(&identity, keyring.as_ref(), SealOptions::default());
        let durable = recover::survey(dir, &ctx)?.durable_ends(identity.segment_size);
        Ok(Self {
            dir: dir.to_owned(),
            identity,
            keyring,
            durable,
        })
    }

    /// Like [`WalArchiveReader::open_with`], without listing the directory: for reading
    /// single files by name ([`read_file`](Self::read_file)) from a directory of many files,
    /// such as a cache of Tier 2 objects, at the cost of one file read. Every format check of
    /// `read_file` applies; the durable positions are not known ([`durable`](Self::durable)
    /// is `None`).
    pub fn open_for_file_reads(
        dir: &Path,
        keyring: Option<Keyring>,
    ) -> Result<Self, WalArchiveError> {
        let identity = identity::read_required(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
            identity,
            keyring,
            durable: BTreeMap::new(),
        })
    }

    /// The archive directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The cluster this archive belongs to.
    pub fn identity(&self) -> ClusterIdentity {
        self.identity
    }

    /// Whether this handle was opened with a keyring (a writer then encrypts what it writes).
    pub fn is_encrypted(&self) -> bool {
        self.keyring.is_some()
    }

    /// What reading needs of the file formats (reads seal nothing: default seal options).
    fn ctx(&self) -> Ctx<'_> {
        make_ctx(
            &self.identity,
            self.keyring.as_ref(),
            SealOptions::default(),
        )
    }

    /// The newest timeline that has WAL, and the exact durable end on it.
    ///
    /// For a reader this is the state when it was opened; through the writer, the current one.
    pub fn durable(&self) -> Option<WalPosition> {
        self.durable
            .last_key_value()
            .map(|(t, l)| WalPosition::new(*t, *l))
    }

    /// The durable end on `timeline`, if it has WAL.
    pub fn durable_on(&self, timeline: TimelineId) -> Option<Lsn> {
        self.durable.get(&timeline).copied()
    }

    /// The stored history file of `timeline`, if any (opened when sealed).
    pub fn history(&self, timeline: TimelineId) -> Result<Option<Vec<u8>>, WalArchiveError> {
        let size = self.identity.segment_size;
        let sealed_path = self.dir.join(sealed::sealed_history_name(timeline, size));
        if let Some(content) = sealed::read_sealed_history(&sealed_path, timeline, &self.ctx())? {
            return Ok(Some(content));
        }
        // Written before encryption was configured: plain.
        optional_file::read_optional(
            &self
                .dir
                .join(WalFileName::History { timeline }.to_string_with(size)),
        )
    }
}

impl WalArchive {
    /// What writing needs of the file formats: the reader's, with this writer's seal options.
    fn write_ctx(&self) -> Ctx<'_> {
        make_ctx(
            &self.reader.identity,
            self.reader.keyring.as_ref(),
            self.seal,
        )
    }

    /// The client announces that WAL of `timeline` from `start` follows.
    ///
    /// A stream in progress is synced and its journal closed first (it stays partial, like
    /// pg_receivewal's `.partial`). On a timeline with durable end `D`, `start` must be `D`
    /// ([`BeginOutcome::Resumed`]) or a segment boundary after it ([`BeginOutcome::Gap`]); on a
    /// timeline without WAL it must be a segment boundary ([`BeginOutcome::Started`]).
    pub fn begin(
        &mut self,
        timeline: TimelineId,
        start: Lsn,
    ) -> Result<BeginOutcome, WalArchiveError> {
        self.refuse_if_poisoned()?;
        if self.stream.is_some() {
            let r = self.sync();
            self.poison_on(r)?;
            self.stream = None;
        }
        let size = self.reader.identity.segment_size;
        let aligned = size.offset_of(start) == 0;
        let durable = self.durable_on(timeline);
        let outcome = match durable {
            Some(d) if start == d => BeginOutcome::Resumed,
            Some(d) if start < d => {
                return Err(WalArchiveError::Overlap {
                    timeline,
                    start,
                    durable_end: d,
                });
            }
            Some(d) if aligned => BeginOutcome::Gap { from: d, to: start },
            None if aligned => BeginOutcome::Started,
            _ => {
                return Err(WalArchiveError::NotSegmentAligned {
                    timeline,
                    start,
                    durable_end: durable,
                });
            }
        };
        let journal = if aligned {
            None
        } else {
            let r = self.reopen_journal(timeline, start);
            Some(self.poison_on(r)?)
        };
        self.stream = Some(Stream {
            timeline,
            origin: start,
            next: start,
            buf_start: start,
            buf: Vec::new(),
            journal,
        });
        Ok(outcome)
    }

    /// Appends WAL bytes continuing the stream exactly (`start` is the end of what was appended
    /// before). Not durable until [`WalArchive::sync`].
    pub fn append(&mut self, start: Lsn, data: &[u8]) -> Result<(), WalArchiveError> {
        self.refuse_if_poisoned()?;
        let stream = self.stream.as_mut().ok_or(WalArchiveError::NotStreaming)?;
        if start != stream.next {
            return Err(WalArchiveError::Discontinuity {
                timeline: stream.timeline,
                expected: stream.next,
                got: start,
            });
        }
        start
            .checked_add(data.len() as u64)
            .ok_or(WalArchiveError::PositionOverflow)?;
        if stream.buf.len() + data.len() < COALESCE_LIMIT {
            stream.buf.extend_from_slice(data);
            stream.next = Lsn(stream.next.0 + data.len() as u64);
            return Ok(());
        }
        // Too much to gather: what is buffered goes first, then `data` itself, uncopied.
        let r = self.write_out(false);
        self.poison_on(r)?;
        let r = self.write_frames(start, data, false);
        self.poison_on(r)?;
        let stream = self.stream.as_mut().ok_or(WalArchiveError::NotStreaming)?;
        stream.next = Lsn(stream.next.0 + data.len() as u64);
        stream.buf_start = stream.next;
        Ok(())
    }

    /// Makes everything appended so far durable, with one fdatasync unless segments completed,
    /// and returns the durable end on the current timeline. Only this value may be acknowledged.
    pub fn sync(&mut self) -> Result<Option<Lsn>, WalArchiveError> {
        self.refuse_if_poisoned()?;
        let Some(stream) = self.stream.as_ref() else {
            return Ok(None);
        };
        let timeline = stream.timeline;
        let r = self.sync_inner();
        self.poison_on(r)?;
        Ok(self.durable_on(timeline))
    }

    /// Stores a timeline history file durably (sealed when the archive has a keyring);
    /// idempotent for identical content; different content for a timeline that already has one
    /// is an error.
    pub fn store_history(
        &mut self,
        timeline: TimelineId,
        content: &[u8],
    ) -> Result<(), WalArchiveError> {
        self.refuse_if_poisoned()?;
        let size = self.reader.identity.segment_size;
        match self.history(timeline)? {
            Some(existing) if existing == content => Ok(()),
            Some(_) => Err(WalArchiveError::HistoryConflict {
                timeline,
                path: self
                    .dir
                    .join(WalFileName::History { timeline }.to_string_with(size)),
            }),
            None if self.reader.keyring.is_some() => {
                let name = sealed::sealed_history_name(timeline, size);
                let sealed = sealed::seal_history(
                    &self.reader.dir.join(&name),
                    timeline,
                    content,
                    &self.write_ctx(),
                )?;
                durable::replace(&self.reader.dir.join(&name), &sealed)?;
                self.note(index::Change::History {
                    timeline,
                    bytes: sealed.len() as u64,
                });
                Ok(())
            }
            None => {
                durable::replace(
                    &self
                        .dir
                        .join(WalFileName::History { timeline }.to_string_with(size)),
                    content,
                )?;
                self.note(index::Change::History {
                    timeline,
                    bytes: content.len() as u64,
                });
                Ok(())
            }
        }
    }

    /// Refuses writes after a write-path error left the handle's view of the disk uncertain
    /// (see `poison_on`); only reopening, which runs recovery, makes it certain.
    fn refuse_if_poisoned(&self) -> Result<(), WalArchiveError> {
        if self.poisoned {
            return Err(WalArchiveError::Poisoned {
                dir: self.reader.dir.clone(),
            });
        }
        Ok(())
    }

    /// Marks the handle unusable when a write-path error leaves its view of the disk uncertain
    /// (a failed fsync may have dropped dirty pages: retrying it could report success wrongly).
    fn poison_on<T>(&mut self, r: Result<T, WalArchiveError>) -> Result<T, WalArchiveError> {
        if let Err(e) = &r
            && e.poisons()
        {
            self.poisoned = true;
            self.stream = None;
        }
        r
    }

    /// Waits until every completed segment is stored under its final name (sealed when
    /// encrypted) and its journal removed. Not needed for durability: a completed segment is
    /// durable in its journal before it is handed to the finisher, and readers serve it from
    /// there meanwhile. Dropping the writer waits too.
    pub fn finish_completed(&mut self) -> Result<(), WalArchiveError> {
        self.refuse_if_poisoned()?;
        let r = self.finisher.wait_idle();
        self.poison_on(r)
    }

    fn sync_inner(&mut self) -> Result<(), WalArchiveError> {
        self.finisher.check()?;
        self.write_out(true)?;
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        let mut synced = None;
        if let Some(j) = stream.journal.as_mut() {
            j.sync()?;
            synced = Some(j.segno);
        }
        if stream.next > stream.origin {
            self.reader.durable.insert(stream.timeline, stream.next);
            if let Some(segno) = synced {
                let (timeline, end) = (stream.timeline, stream.next);
                self.note(index::Change::Journal {
                    timeline,
                    segno,
                    end: Some(end),
                });
            }
        }
        Ok(())
    }

    /// Tells the archive's index (if any) of a change this writer made.
    fn note(&self, change: index::Change) {
        if let Some(index) = &self.index {
            index.note(change);
        }
    }

    /// Reopens the journal holding the durable end `at` (mid-segment) to continue it.
    fn reopen_journal(
        &self,
        timeline: TimelineId,
        at: Lsn,
    ) -> Result<JournalWriter, WalArchiveError> {
        let size = self.reader.identity.segment_size;
        let segno = size.segment_of(at);
        let path = self
            .reader
            .dir
            .join(journal::journal_name(timeline, segno, size));
        let (writer, scan) =
            JournalWriter::reopen(path.clone(), timeline, segno, &self.write_ctx())?;
        if scan.end != at {
            return Err(WalArchiveError::Inconsistent {
                path,
                reason: format!(
                    "journal ends at {}, expected the durable end {at}",
                    scan.end
                ),
            });
        }
        Ok(writer)
    }

    /// Writes the buffered bytes as frames, one per segment touched. A frame that completes a
    /// segment is fdatasynced and the segment finished. `end_of_batch`: an fdatasync follows
    /// the last frame (otherwise frames are marked `CONTINUED`).
    fn write_out(&mut self, end_of_batch: bool) -> Result<(), WalArchiveError> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        if stream.buf.is_empty() {
            return Ok(());
        }
        let (start, mut buf) = (stream.buf_start, std::mem::take(&mut stream.buf));
        let written = self.write_frames(start, &buf, end_of_batch);
        buf.clear();
        if let Some(stream) = self.stream.as_mut() {
            stream.buf = buf;
            stream.buf_start = stream.next;
        }
        written
    }

    /// Writes `data`, the stream's WAL from `start`, as journal frames (one per segment it
    /// touches), fdatasyncing and handing off every segment it completes; the last frame is
    /// marked continued unless `end_of_batch`.
    fn write_frames(
        &mut self,
        start: Lsn,
        data: &[u8],
        end_of_batch: bool,
    ) -> Result<(), WalArchiveError> {
        let size = self.reader.identity.segment_size;
        let ctx = make_ctx(
            &self.reader.identity,
            self.reader.keyring.as_ref(),
            self.seal,
        );
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        let buf = data;
        for piece in size.split(start, buf.len() as u64) {
            let data = &buf[piece.range_offset as usize..][..piece.len as usize];
            let start = size
                .segment_start(piece.segno)
                .and_then(|s| s.checked_add(u64::from(piece.offset)))
                .ok_or(WalArchiveError::PositionOverflow)?;
            let journal = match stream.journal.take() {
                Some(j) if j.segno == piece.segno => j,
                Some(j) => {
                    return Err(WalArchiveError::Inconsistent {
                        path: j.path.clone(),
                        reason: format!("open journal is not the one for WAL at {start}"),
                    });
                }
                None if piece.offset == 0 => {
                    let j = JournalWriter::create(
                        &self.reader.dir,
                        stream.timeline,
                        piece.segno,
                        &ctx,
                    )?;
                    if let Some(index) = &self.index {
                        index.note(index::Change::Journal {
                            timeline: stream.timeline,
                            segno: piece.segno,
                            end: None,
                        });
                    }
                    j
                }
                None => {
                    return Err(WalArchiveError::Inconsistent {
                        path: self.reader.dir.clone(),
                        reason: format!("no journal open for WAL at {start}"),
                    });
                }
            };
            let journal = stream.journal.insert(journal);
            let completes = piece.completes_segment(size);
            journal.write_frame(start, data, !(completes || end_of_batch), ctx.rng)?;
            if completes {
                journal.sync()?;
                let end = recover::segment_end(size, piece.segno)
                    .ok_or(WalArchiveError::PositionOverflow)?;
                // The whole segment is durable in the journal: acknowledgeable even if
                // publishing the final file fails later (recovery would finish it).
                self.reader.durable.insert(stream.timeline, end);
                if let Some(j) = stream.journal.take() {
                    // Complete: the index counts the journal as the segment until the
                    // finisher reports its final file.
                    if let Some(index) = &self.index {
                        index.note(index::Change::Journal {
                            timeline: stream.timeline,
                            segno: piece.segno,
                            end: Some(end),
                        });
                    }
                    let reader = &self.reader;
                    let seal = self.seal;
                    let index = self.index.clone();
                    self.finisher.hand_off(j, || FinishContext {
                        dir: reader.dir.clone(),
                        identity: reader.identity,
                        keyring: reader.keyring.clone(),
                        seal,
                        index,
                    })?;
                }
            }
        }
        Ok(())
    }
}

/// The segment number of a WAL file name's segment (helper for `read`).
fn segment_of_name(name: &WalFileName) -> Option<(TimelineId, SegmentNo)> {
    match *name {
        WalFileName::Segment { timeline, segno } | WalFileName::Partial { timeline, segno } => {
            Some((timeline, segno))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_encrypted;
#[cfg(test)]
mod tests_index;
#[cfg(test)]
mod tests_prune;
