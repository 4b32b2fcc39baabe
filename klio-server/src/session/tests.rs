//! The ingest state machine without PostgreSQL, sockets or disk: a scripted stream, a fake
//! archive that records when its syncs return, and a lease that records when it is released.
//! The real archive behind it is exercised by the end-to-end tests.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use klio_proto::klio::{ClusterName, ErrorCode, Message};
use klio_store::wal_archive::{ArchiveIndexes, BeginOutcome, WalArchiveError};
use klio_wal::{FsAction, FsError, Lsn, SegmentSize, TimelineId, WalPosition};
use proptest::prelude::*;
use tokio::sync::{mpsc, watch};

use super::End;
use super::framing::{Cover, CoveredRead, Filled, FrameIo, Received};
use super::ingest::{IngestArchive, Lease, OFFLOAD_BYTES, ingest};
use crate::ingest_budget::{FLOOR, IngestBudget};
use crate::telemetry::{ClusterTelemetry, Telemetry};

/// What happened, in order, across the fakes.
#[derive(Clone, Debug, PartialEq)]
enum Event {
    /// The archive's sync returned this durable end.
    Synced(TimelineId, Lsn),
    /// The session sent this message.
    Sent(Message),
    /// The archive was dropped (closed).
    ArchiveClosed,
    /// The lease was dropped: another session may now open the archive.
    WriterReleased,
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Event>>>);

impl Log {
    fn push(&self, e: Event) {
        self.0.lock().unwrap().push(e);
    }

    fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }

    fn acks(&self) -> Vec<(TimelineId, Lsn)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Sent(Message::Ack { timeline, durable }) => Some((timeline, durable)),
                _ => None,
            })
            .collect()
    }

    fn position(&self, wanted: &Event) -> usize {
        let events = self.events();
        events
            .iter()
            .position(|e| e == wanted)
            .unwrap_or_else(|| panic!("{wanted:?} did not happen: {events:?}"))
    }
}

const TLI: TimelineId = TimelineId::FIRST;

/// An archive in memory that keeps the durable ends the way `WalArchive` does: appends become
/// durable only in `sync`.
struct FakeArchive {
    log: Log,
    durable: BTreeMap<TimelineId, Lsn>,
    /// The timeline being streamed, and the end of what was appended to it.
    stream: Option<(TimelineId, Lsn)>,
    /// Syncs from this one (counting from 0) fail like a full disk.
    fail_from_sync: Option<usize>,
    syncs: usize,
    /// Each sync waits for a permit here before it returns.
    hold: Option<std::sync::mpsc::Receiver<()>>,
    /// Told when a sync started waiting for its permit.
    holding: Option<mpsc::UnboundedSender<()>>,
}

impl FakeArchive {
    fn new(log: &Log) -> Self {
        Self {
            log: log.clone(),
            durable: BTreeMap::new(),
            stream: None,
            fail_from_sync: None,
            syncs: 0,
            hold: None,
            holding: None,
        }
    }

    /// Each sync blocks until the returned sender gives it a permit; the receiver hears when
    /// one started waiting.
    fn held(
        mut self,
    ) -> (
        Self,
        std::sync::mpsc::Sender<()>,
        mpsc::UnboundedReceiver<()>,
    ) {
        let (permit, hold) = std::sync::mpsc::channel();
        let (holding, started) = mpsc::unbounded_channel();
        self.hold = Some(hold);
        self.holding = Some(holding);
        (self, permit, started)
    }
}

impl Drop for FakeArchive {
    fn drop(&mut self) {
        self.log.push(Event::ArchiveClosed);
    }
}

impl IngestArchive for FakeArchive {
    fn segment_size(&self) -> SegmentSize {
        SegmentSize::DEFAULT
    }

    fn durable(&self) -> Option<WalPosition> {
        self.durable
            .last_key_value()
            .map(|(t, l)| WalPosition::new(*t, *l))
    }

    fn durable_on(&self, timeline: TimelineId) -> Option<Lsn> {
        self.durable.get(&timeline).copied()
    }

    fn begin(&mut self, timeline: TimelineId, start: Lsn) -> Result<BeginOutcome, WalArchiveError> {
        if let Some(durable_end) = self.durable_on(timeline).filter(|d| start < *d) {
            return Err(WalArchiveError::Overlap {
                timeline,
                start,
                durable_end,
            });
        }
        // Like the real archive, a stream in progress is made durable first.
        if let Some((t, next)) = self.stream.take() {
            self.durable.insert(t, next);
        }
        self.stream = Some((timeline, start));
        Ok(BeginOutcome::Started)
    }

    fn append(&mut self, start: Lsn, data: &[u8]) -> Result<(), WalArchiveError> {
        let (timeline, next) = self.stream.as_mut().ok_or(WalArchiveError::NotStreaming)?;
        if start != *next {
            return Err(WalArchiveError::Discontinuity {
                timeline: *timeline,
                expected: *next,
                got: start,
            });
        }
        *next = Lsn(next.0 + data.len() as u64);
        Ok(())
    }

    fn store_history(&mut self, _: TimelineId, _: &[u8]) -> Result<(), WalArchiveError> {
        Ok(())
    }

    fn sync(&mut self) -> Result<Option<Lsn>, WalArchiveError> {
        let n = self.syncs;
        self.syncs += 1;
        if let (Some(hold), Some(holding)) = (&self.hold, &self.holding) {
            let _ = holding.send(());
            let _ = hold.recv();
        }
        if self.fail_from_sync.is_some_and(|first| n >= first) {
            return Err(WalArchiveError::Fs(FsError::new(
                FsAction::Fdatasync,
                Path::new("000000010000000000000001.klio-journal"),
                std::io::Error::other("no space left on device"),
            )));
        }
        let Some((timeline, next)) = self.stream else {
            return Ok(None);
        };
        self.durable.insert(timeline, next);
        self.log.push(Event::Synced(timeline, next));
        Ok(Some(next))
    }
}

/// A stream whose arrivals the test sends; closing the sender finishes the stream. An arrival
/// the cover refuses waits (as in QUIC's buffers) until the next fill.
struct ScriptedStream {
    arrivals: mpsc::UnboundedReceiver<Vec<Message>>,
    waiting: Option<Vec<Message>>,
    buffered: Vec<Message>,
    since: Option<Instant>,
    log: Log,
    /// Told of every message sent.
    sent: mpsc::UnboundedSender<Message>,
}

/// Bytes of `messages` on the stream (near enough: WAL, and 16 for anything else).
fn stream_bytes(messages: &[Message]) -> usize {
    messages
        .iter()
        .map(|m| match m {
            Message::WalData { data, .. } => data.len(),
            _ => 16,
        })
        .sum()
}

impl FrameIo for ScriptedStream {
    async fn fill(&mut self) -> Result<bool, End> {
        Ok(self.fill_covered(&mut Everything).await? != Filled::Finished)
    }

    fn drain(&mut self) -> Result<Received, End> {
        Ok(Received {
            messages: std::mem::take(&mut self.buffered),
            since: self.since.take().unwrap_or_else(Instant::now),
        })
    }

    fn buffered(&self) -> usize {
        stream_bytes(&self.buffered)
    }

    async fn send(&mut self, msgs: &[Message]) -> Result<(), End> {
        for m in msgs {
            self.log.push(Event::Sent(m.clone()));
            let _ = self.sent.send(m.clone());
        }
        Ok(())
    }
}

/// Covers any read.
struct Everything;

impl Cover for Everything {
    fn try_cover(&mut self, _: usize) -> bool {
        true
    }
}

impl CoveredRead for ScriptedStream {
    async fn fill_covered(&mut self, cover: &mut impl Cover) -> Result<Filled, End> {
        let arrival = match self.waiting.take() {
            Some(a) => a,
            None => match self.arrivals.recv().await {
                Some(a) => a,
                None => return Ok(Filled::Finished),
            },
        };
        let needs = self.buffered() + stream_bytes(&arrival);
        if !cover.try_cover(needs) {
            self.waiting = Some(arrival);
            return Ok(Filled::Blocked { needs });
        }
        self.buffered.extend(arrival);
        self.since.get_or_insert_with(Instant::now);
        Ok(Filled::Read)
    }

    fn frame_end(&self) -> usize {
        // Arrivals are whole frames: nothing is begun.
        self.buffered()
    }
}

/// A lease the test preempts by sending `true`; records its release.
struct FakeLease {
    log: Log,
    preempt: watch::Receiver<bool>,
}

impl Lease for FakeLease {
    async fn preempted(&mut self) {
        if self.preempt.wait_for(|p| *p).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for FakeLease {
    fn drop(&mut self) {
        self.log.push(Event::WriterReleased);
    }
}

/// A running session and the test's ends of its fakes.
struct Harness {
    log: Log,
    arrivals: Option<mpsc::UnboundedSender<Vec<Message>>>,
    sent: mpsc::UnboundedReceiver<Message>,
    preempt: watch::Sender<bool>,
    session: tokio::task::JoinHandle<Result<(), End>>,
}

fn telemetry() -> ClusterTelemetry {
    let cluster = ClusterName::new("test").unwrap();
    Arc::new(Telemetry::new(
        Path::new("/nonexistent"),
        None,
        ArchiveIndexes::new(None),
        90,
    ))
    .cluster(&cluster)
}

impl Harness {
    fn start(archive: FakeArchive, log: Log) -> Self {
        Self::start_with(archive, log, &IngestBudget::new(1 << 30))
    }

    /// A session drawing on `budget`.
    fn start_with(archive: FakeArchive, log: Log, budget: &Arc<IngestBudget>) -> Self {
        let (arrivals_tx, arrivals) = mpsc::unbounded_channel();
        let (sent_tx, sent) = mpsc::unbounded_channel();
        let (preempt, preempt_rx) = watch::channel(false);
        let mut io = ScriptedStream {
            arrivals,
            waiting: None,
            buffered: Vec::new(),
            since: None,
            log: log.clone(),
            sent: sent_tx,
        };
        let lease = FakeLease {
            log: log.clone(),
            preempt: preempt_rx,
        };
        let budget = budget.session();
        let session = tokio::spawn(async move {
            let telemetry = telemetry();
            ingest(archive, lease, &mut io, &telemetry, budget).await
        });
        Self {
            log,
            arrivals: Some(arrivals_tx),
            sent,
            preempt,
            session,
        }
    }

    fn arrive(&self, messages: Vec<Message>) {
        // A session that already ended reads no more: what it was sent then is lost, as on
        // a real stream.
        if let Some(arrivals) = &self.arrivals {
            let _ = arrivals.send(messages);
        }
    }

    /// The client finishes the stream.
    fn finish(&mut self) {
        self.arrivals = None;
    }

    /// Waits for the next acknowledgement sent.
    async fn next_ack(&mut self) -> (TimelineId, Lsn) {
        loop {
            match self.sent.recv().await.expect("the session sends an ack") {
                Message::Ack { timeline, durable } => return (timeline, durable),
                _ => continue,
            }
        }
    }

    async fn end(self) -> Result<(), End> {
        self.session.await.unwrap()
    }
}

fn wal(start: u64, len: usize) -> Message {
    Message::WalData {
        start: Lsn(start),
        data: Bytes::from(vec![0x5a; len]),
    }
}

fn start_wal(start: u64) -> Message {
    Message::StartWal {
        timeline: TLI,
        start: Lsn(start),
    }
}

/// Every ack follows a sync that returned at least its position, on its timeline.
fn assert_every_ack_follows_its_sync(events: &[Event]) {
    for (i, e) in events.iter().enumerate() {
        if let Event::Sent(Message::Ack { timeline, durable }) = e {
            let synced = events[..i]
                .iter()
                .any(|e| matches!(e, Event::Synced(t, l) if t == timeline && l >= durable));
            assert!(
                synced,
                "ack of {durable} before its sync returned: {events:?}"
            );
        }
    }
}

/// Lets the session run as far as it can without the test doing anything.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

// Syncs held by the test block the thread storing the batch: inline batches need a second
// worker for the test itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_acknowledged_only_after_its_fsync_returned() {
    let log = Log::default();
    let (archive, permit, mut holding) = FakeArchive::new(&log).held();
    let mut h = Harness::start(archive, log);
    let seg = SegmentSize::DEFAULT.bytes_u64();

    // A commit's WAL, stored inline.
    h.arrive(vec![start_wal(seg), wal(seg, 100)]);
    holding.recv().await.unwrap();
    settle().await;
    assert_eq!(
        h.log.acks(),
        [],
        "acknowledged while its sync had not returned"
    );
    permit.send(()).unwrap();
    assert_eq!(h.next_ack().await, (TLI, Lsn(seg + 100)));

    // A bulk batch, stored on a blocking thread while the stream goes on reading.
    h.arrive(vec![wal(seg + 100, OFFLOAD_BYTES)]);
    holding.recv().await.unwrap();
    h.arrive(vec![wal(seg + 100 + OFFLOAD_BYTES as u64, 10)]);
    settle().await;
    assert_eq!(
        h.log.acks().len(),
        1,
        "acknowledged while its sync had not returned"
    );
    permit.send(()).unwrap();
    let bulk_end = seg + 100 + OFFLOAD_BYTES as u64;
    assert_eq!(h.next_ack().await, (TLI, Lsn(bulk_end)));
    holding.recv().await.unwrap();
    permit.send(()).unwrap();
    assert_eq!(h.next_ack().await, (TLI, Lsn(bulk_end + 10)));

    h.finish();
    let log = h.log.clone();
    h.end().await.unwrap();
    assert_every_ack_follows_its_sync(&log.events());
}

#[tokio::test]
async fn an_error_while_storing_acknowledges_nothing() {
    let log = Log::default();
    let mut archive = FakeArchive::new(&log);
    archive.fail_from_sync = Some(1);
    let mut h = Harness::start(archive, log);
    let seg = SegmentSize::DEFAULT.bytes_u64();

    h.arrive(vec![start_wal(seg), wal(seg, 100)]);
    assert_eq!(h.next_ack().await, (TLI, Lsn(seg + 100)));
    // Its sync fails: neither this batch nor anything after it is acknowledged.
    h.arrive(vec![wal(seg + 100, 100)]);
    h.arrive(vec![wal(seg + 200, 100)]);

    let log = h.log.clone();
    let Err(End::Refused(code, message)) = h.end().await else {
        panic!("a failed sync must end the session with an error");
    };
    assert_eq!(code, ErrorCode::Storage);
    assert!(message.contains("no space left on device"), "{message}");
    assert_eq!(log.acks(), [(TLI, Lsn(seg + 100))]);
}

#[tokio::test]
async fn an_error_while_storing_a_bulk_batch_acknowledges_nothing() {
    let log = Log::default();
    let mut archive = FakeArchive::new(&log);
    archive.fail_from_sync = Some(0);
    let mut h = Harness::start(archive, log);
    let seg = SegmentSize::DEFAULT.bytes_u64();

    h.arrive(vec![start_wal(seg), wal(seg, OFFLOAD_BYTES)]);
    h.finish();
    let log = h.log.clone();
    let Err(End::Refused(code, _)) = h.end().await else {
        panic!("a failed sync must end the session with an error");
    };
    assert_eq!(code, ErrorCode::Storage);
    assert_eq!(log.acks(), []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preempted_session_releases_the_writer_only_after_its_batch_finished() {
    let log = Log::default();
    let (archive, permit, mut holding) = FakeArchive::new(&log).held();
    let h = Harness::start(archive, log);
    let seg = SegmentSize::DEFAULT.bytes_u64();

    h.arrive(vec![start_wal(seg), wal(seg, OFFLOAD_BYTES)]);
    holding.recv().await.unwrap();
    // A newer session wants the archive while the batch is being stored.
    h.preempt.send(true).unwrap();
    settle().await;
    assert!(
        !h.session.is_finished(),
        "the session ended while its batch was being stored"
    );
    assert!(!h.log.events().contains(&Event::WriterReleased));

    permit.send(()).unwrap();
    let log = h.log.clone();
    let Err(End::Refused(code, _)) = h.end().await else {
        panic!("a preempted session must end with an error");
    };
    assert_eq!(code, ErrorCode::Preempted);
    let synced = log.position(&Event::Synced(TLI, Lsn(seg + OFFLOAD_BYTES as u64)));
    let closed = log.position(&Event::ArchiveClosed);
    let released = log.position(&Event::WriterReleased);
    assert!(synced < closed && closed < released, "{:?}", log.events());
}

#[tokio::test]
async fn an_idle_preempted_session_closes_the_archive_before_releasing_the_writer() {
    let log = Log::default();
    let mut h = Harness::start(FakeArchive::new(&log), log);
    let seg = SegmentSize::DEFAULT.bytes_u64();

    h.arrive(vec![start_wal(seg), wal(seg, 100)]);
    h.next_ack().await;
    h.preempt.send(true).unwrap();
    let log = h.log.clone();
    let Err(End::Refused(code, _)) = h.end().await else {
        panic!("a preempted session must end with an error");
    };
    assert_eq!(code, ErrorCode::Preempted);
    assert!(log.position(&Event::ArchiveClosed) < log.position(&Event::WriterReleased));
}

#[tokio::test]
async fn a_finished_stream_is_stored_and_acknowledged_before_the_session_ends() {
    let log = Log::default();
    let mut h = Harness::start(FakeArchive::new(&log), log);
    let seg = SegmentSize::DEFAULT.bytes_u64();

    h.arrive(vec![start_wal(seg), wal(seg, OFFLOAD_BYTES)]);
    h.arrive(vec![wal(seg + OFFLOAD_BYTES as u64, 7)]);
    h.finish();
    let log = h.log.clone();
    h.end().await.unwrap();
    assert_eq!(
        log.acks().last(),
        Some(&(TLI, Lsn(seg + OFFLOAD_BYTES as u64 + 7)))
    );
    assert!(log.position(&Event::ArchiveClosed) < log.position(&Event::WriterReleased));
}

/// What a client sends, in the order it sends it.
#[derive(Clone, Debug)]
enum Step {
    Wal(usize),
    /// A new timeline, continuing where the last one ended.
    Promote,
    Position,
    Upstream,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (1usize..8192).prop_map(Step::Wal),
        1 => Just(Step::Wal(OFFLOAD_BYTES)),
        1 => Just(Step::Promote),
        1 => Just(Step::Position),
        1 => Just(Step::Upstream),
    ]
}

/// The messages of `steps`, cut into arrivals after the steps marked in `cuts`.
fn script(steps: &[Step], cuts: &[bool]) -> Vec<Vec<Message>> {
    let seg = SegmentSize::DEFAULT.bytes_u64();
    let mut timeline = TLI;
    let mut next = seg;
    let mut arrivals = vec![vec![start_wal(next)]];
    for (i, s) in steps.iter().enumerate() {
        let m = match s {
            Step::Wal(len) => {
                let m = wal(next, *len);
                next += *len as u64;
                m
            }
            Step::Promote => {
                timeline = TimelineId::new(timeline.get() + 1).unwrap();
                Message::StartWal {
                    timeline,
                    start: Lsn(next),
                }
            }
            Step::Position => Message::GetPosition { timeline: None },
            Step::Upstream => Message::Upstream {
                timeline,
                wal_end: Lsn(next),
            },
        };
        arrivals.last_mut().unwrap().push(m);
        if cuts.get(i).copied().unwrap_or(false) {
            arrivals.push(Vec::new());
        }
    }
    arrivals
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn acks_are_monotonic(
        steps in prop::collection::vec(step(), 1..40),
        cuts in prop::collection::vec(any::<bool>(), 40),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let log = Log::default();
        let arrivals = script(&steps, &cuts);
        runtime.block_on(async {
            let mut h = Harness::start(FakeArchive::new(&log), log.clone());
            for a in arrivals {
                h.arrive(a);
                tokio::task::yield_now().await;
            }
            h.finish();
            h.end().await.unwrap();
        });
        let acks = log.acks();
        prop_assert!(
            acks.windows(2).all(|w| w[0] < w[1]),
            "acks went backwards or repeated: {:?}", acks
        );
        assert_every_ack_follows_its_sync(&log.events());
        let synced = log.events().into_iter().rev().find_map(|e| match e {
            Event::Synced(t, l) => Some((t, l)),
            _ => None,
        });
        prop_assert_eq!(acks.last().copied(), synced, "the last sync was not acknowledged");
    }
}

const MIB: usize = 1 << 20;

/// Waits until the pool is whole again (a session gives its cover back just before its ack).
async fn pool_is_whole(budget: &IngestBudget) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while budget.available() != budget.total() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{} of {} bytes of the pool never came back",
            budget.total() - budget.available(),
            budget.total()
        )
    });
}

#[tokio::test]
async fn cover_is_given_back_after_every_batch() {
    let budget = IngestBudget::new(4 * MIB as u64);
    let log = Log::default();
    let mut h = Harness::start_with(FakeArchive::new(&log), log, &budget);
    let seg = SegmentSize::DEFAULT.bytes_u64();
    h.arrive(vec![start_wal(seg)]);
    let mut next = seg;
    for len in [100, OFFLOAD_BYTES, FLOOR + 10, 3 * MIB, 7] {
        h.arrive(vec![wal(next, len)]);
        next += len as u64;
        assert_eq!(h.next_ack().await, (TLI, Lsn(next)));
        pool_is_whole(&budget).await;
    }
    h.finish();
    h.end().await.unwrap();
    pool_is_whole(&budget).await;
    assert_eq!(budget.sessions(), 0);
}

#[tokio::test]
async fn cover_is_given_back_when_storing_fails() {
    let budget = IngestBudget::new(4 * MIB as u64);
    let log = Log::default();
    let mut archive = FakeArchive::new(&log);
    archive.fail_from_sync = Some(0);
    let h = Harness::start_with(archive, log, &budget);
    let seg = SegmentSize::DEFAULT.bytes_u64();
    h.arrive(vec![start_wal(seg), wal(seg, 2 * MIB)]);
    h.arrive(vec![wal(seg + 2 * MIB as u64, MIB)]);
    assert!(matches!(
        h.end().await,
        Err(End::Refused(ErrorCode::Storage, _))
    ));
    pool_is_whole(&budget).await;
    assert_eq!(budget.sessions(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cover_is_given_back_when_the_session_is_preempted_mid_batch() {
    let budget = IngestBudget::new(4 * MIB as u64);
    let log = Log::default();
    let (archive, permit, mut holding) = FakeArchive::new(&log).held();
    let h = Harness::start_with(archive, log, &budget);
    let seg = SegmentSize::DEFAULT.bytes_u64();
    h.arrive(vec![start_wal(seg), wal(seg, 2 * MIB)]);
    holding.recv().await.unwrap();
    // Read ahead while the batch is stored.
    h.arrive(vec![wal(seg + 2 * MIB as u64, MIB)]);
    settle().await;
    assert!(
        budget.available() < budget.total(),
        "the batch holds no cover"
    );
    h.preempt.send(true).unwrap();
    settle().await;
    permit.send(()).unwrap();
    assert!(matches!(
        h.end().await,
        Err(End::Refused(ErrorCode::Preempted, _))
    ));
    pool_is_whole(&budget).await;
}

#[tokio::test]
async fn a_budget_smaller_than_the_stream_slows_it_but_stores_every_byte_in_order() {
    // Room for the floor and 256 KiB more: each 384 KiB arrival waits for the last batch.
    let budget = IngestBudget::new(256 << 10);
    let log = Log::default();
    let mut h = Harness::start_with(FakeArchive::new(&log), log, &budget);
    let seg = SegmentSize::DEFAULT.bytes_u64();
    let len = 384 << 10;
    h.arrive(vec![start_wal(seg)]);
    for i in 0..40 {
        h.arrive(vec![wal(seg + i * len as u64, len)]);
    }
    let end = seg + 40 * len as u64;
    h.finish();
    let log = h.log.clone();
    h.end().await.unwrap();
    let acks = log.acks();
    assert_eq!(acks.last(), Some(&(TLI, Lsn(end))));
    assert!(acks.windows(2).all(|w| w[0] < w[1]), "{acks:?}");
    assert_every_ack_follows_its_sync(&log.events());
    pool_is_whole(&budget).await;
}

/// One cluster's fsync hangs (until a thread lets it go after `HANG`); another cluster's
/// commits are acknowledged within `BOUND` meanwhile.
async fn a_slow_fsync_of_one_cluster_leaves_the_others_acks_alone() {
    const HANG: Duration = Duration::from_secs(5);
    const BOUND: Duration = Duration::from_secs(1);
    let budget = IngestBudget::new(64 * MIB as u64);
    let seg = SegmentSize::DEFAULT.bytes_u64();

    let slow_log = Log::default();
    let (archive, permit, mut holding) = FakeArchive::new(&slow_log).held();
    let mut slow = Harness::start_with(archive, slow_log, &budget);
    let fast_log = Log::default();
    let mut fast = Harness::start_with(FakeArchive::new(&fast_log), fast_log, &budget);

    // A commit of the slow cluster: its fsync hangs. (Released from another thread, so that a
    // stalled runtime ends the hang too, and the test fails on the bound rather than hangs.)
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(HANG);
        // Every later sync goes through at once, until the archive is closed.
        while permit.send(()).is_ok() {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    slow.arrive(vec![start_wal(seg), wal(seg, 100)]);

    // Meanwhile, the other cluster commits: the slow one's store starts at the first wait.
    fast.arrive(vec![start_wal(seg)]);
    let mut next = seg;
    for _ in 0..20 {
        let began = Instant::now();
        fast.arrive(vec![wal(next, 200)]);
        next += 200;
        assert_eq!(fast.next_ack().await, (TLI, Lsn(next)));
        let took = began.elapsed();
        assert!(
            took < BOUND,
            "a commit of another cluster waited {took:?} for the slow fsync"
        );
    }
    // All of that while the slow fsync hung.
    assert!(holding.try_recv().is_ok(), "the slow fsync never started");
    assert_eq!(slow.log.acks(), [], "the slow fsync did not hang");
    assert_eq!(slow.next_ack().await, (TLI, Lsn(seg + 100)));
    fast.finish();
    slow.finish();
    fast.end().await.unwrap();
    slow.end().await.unwrap();
    releaser.join().unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn a_slow_fsync_stalls_no_other_cluster_on_a_current_thread_runtime() {
    a_slow_fsync_of_one_cluster_leaves_the_others_acks_alone().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_fsync_stalls_no_other_cluster_on_a_multi_threaded_runtime() {
    a_slow_fsync_of_one_cluster_leaves_the_others_acks_alone().await;
}
