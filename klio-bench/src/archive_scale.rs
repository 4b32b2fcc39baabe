//! Scale of one archive: server start, `GetPosition` and `GetFile` latency with a small and a
//! large archive of synthetic segments, side by side; the figure is the ratio large / small
//! (the goal is about 1: these costs must not grow with the archive).
//!
//! For each size a `klio server start` receives a few bytes of WAL of the segment after the
//! last one (so the archive has its identity and a journal in progress), is stopped, and the
//! segments before it are added as hard links to a few sparse 1 MiB files ([`add_segments`]:
//! plain segments of the right size, with neither data blocks nor an inode each, so that a
//! million take seconds). Then, with the server started again:
//!
//! - start: from spawning `klio server start` to its "listening" line;
//! - first position: the first `GetPosition` of the cluster (it builds the cluster's index,
//!   one listing of the archive), then later ones (from the index);
//! - GetFile p50/p99/max: `gets` requests of pseudo-random segments on one stream, each
//!   timed to its `FileEnd`;
//! - a reader per request: what every `GetFile` and `GetPosition` cost before the index (a
//!   `WalArchiveReader::open`, which lists the archive and stats each plain segment, then the
//!   read), a few times, in-process.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use klio_client::server_link::{
    FramedRecv, FramedSend, ServerConnection, ServerEndpoint, ServerLinkError,
};
use klio_proto::klio::{ClusterName, Message, PROTOCOL_VERSION};
use klio_testkit::{KlioServer, TestCerts, TestDir};
use klio_wal::{Lsn, SegmentNo, SegmentSize, TimelineId, WalFileName, WalPosition};
use serde::Serialize;

/// The segment size of the synthetic archives: the smallest PostgreSQL allows.
pub const SEGMENT_BYTES: u64 = 1 << 20;

/// The cluster the measurement streams as.
pub const CLUSTER: &str = "scale";

/// The system identifier of that cluster.
pub const SYSTEM_ID: u64 = 7_500_000_000_000_000_017;

/// Links per source file: ext4 allows 65,000 names per inode.
const LINKS_PER_SOURCE: u64 = 60_000;

/// What to run.
#[derive(Clone, Debug)]
pub struct ArchiveScaleOptions {
    /// Archive sizes in segments, smallest first.
    pub sizes: Vec<u64>,
    /// `GetFile` requests per size.
    pub gets: usize,
    /// Readers opened per request the old way, per size.
    pub reader_opens: usize,
}

impl Default for ArchiveScaleOptions {
    fn default() -> Self {
        Self {
            sizes: vec![10_000, 1_000_000],
            gets: 200,
            reader_opens: 3,
        }
    }
}

impl ArchiveScaleOptions {
    /// Small sizes, to check the harness.
    pub fn quick() -> Self {
        Self {
            sizes: vec![1_000, 20_000],
            gets: 50,
            reader_opens: 2,
        }
    }
}

/// The figures of one archive size.
#[derive(Clone, Debug, Serialize)]
pub struct ArchiveScaleSample {
    /// Segments in the archive.
    pub segments: u64,
    /// Making the segments (hard links), seconds.
    pub build_seconds: f64,
    /// Spawning `klio server start` until it listens, seconds.
    pub start_seconds: f64,
    /// The first `GetPosition` (building the cluster's index), ms.
    pub first_position_ms: f64,
    /// The median of the following `GetPosition`s, ms.
    pub position_ms: f64,
    /// `GetFile` latency, median, ms.
    pub get_file_p50_ms: f64,
    /// `GetFile` latency, 99th percentile, ms.
    pub get_file_p99_ms: f64,
    /// `GetFile` latency, slowest, ms.
    pub get_file_max_ms: f64,
    /// Opening a reader (a listing) and reading one segment, as each request did before the
    /// index, mean, ms.
    pub reader_per_request_ms: f64,
}

/// One figure of a sample.
type Figure = fn(&ArchiveScaleSample) -> f64;

/// Every size measured.
#[derive(Clone, Debug, Serialize)]
pub struct ArchiveScaleReport {
    /// One per size, smallest first.
    pub samples: Vec<ArchiveScaleSample>,
}

impl ArchiveScaleReport {
    /// `f` of the largest archive over `f` of the smallest.
    pub fn ratio(&self, f: impl Fn(&ArchiveScaleSample) -> f64) -> f64 {
        match (self.samples.first(), self.samples.last()) {
            (Some(small), Some(large)) => f(large) / f(small),
            _ => f64::NAN,
        }
    }

    /// The rows of the comparison's summary table: the largest archive against the smallest.
    pub fn summary_rows(&self) -> String {
        let (Some(small), Some(large)) = (self.samples.first(), self.samples.last()) else {
            return String::new();
        };
        let rows: [(&str, Figure); 3] = [
            ("server start, s", |x| x.start_seconds),
            ("GetFile p50, ms", |x| x.get_file_p50_ms),
            ("GetFile p99, ms", |x| x.get_file_p99_ms),
        ];
        rows.iter()
            .map(|(what, f)| {
                format!(
                    "| archive of {} segments, {what} | {:.2} | {} segments {:.2} | {:.2} |\n",
                    large.segments,
                    f(large),
                    small.segments,
                    f(small),
                    f(large) / f(small)
                )
            })
            .collect()
    }

    /// A markdown table, the ratios last.
    pub fn markdown(&self) -> String {
        let mut s = "| segments | build s | start s | first GetPosition ms | GetPosition ms | \
                     GetFile p50 ms | p99 ms | max ms | reader per request (before) ms |\n\
                     |---|---|---|---|---|---|---|---|---|\n"
            .to_owned();
        for x in &self.samples {
            s += &format!(
                "| {} | {:.1} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} |\n",
                x.segments,
                x.build_seconds,
                x.start_seconds,
                x.first_position_ms,
                x.position_ms,
                x.get_file_p50_ms,
                x.get_file_p99_ms,
                x.get_file_max_ms,
                x.reader_per_request_ms
            );
        }
        if let (Some(small), Some(large)) = (self.samples.first(), self.samples.last()) {
            s += &format!(
                "\nRatios {} / {} segments (goal ~1): start {:.2}, GetFile p50 {:.2}, p99 {:.2}, \
                 GetPosition {:.2}; first GetPosition (index build) {:.1}; a reader per request \
                 (before) {:.1}\n",
                large.segments,
                small.segments,
                self.ratio(|x| x.start_seconds),
                self.ratio(|x| x.get_file_p50_ms),
                self.ratio(|x| x.get_file_p99_ms),
                self.ratio(|x| x.position_ms),
                self.ratio(|x| x.first_position_ms),
                self.ratio(|x| x.reader_per_request_ms),
            );
        }
        s
    }
}

/// Why a measurement could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveScaleError {
    /// Making the synthetic segments failed.
    #[error("cannot make the synthetic segments in {dir}: check the free space and inodes")]
    Build {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Talking to the server failed.
    #[error("the Klio server did not answer as expected")]
    Link(#[from] ServerLinkError),
    /// The server answered something else than the protocol says.
    #[error("unexpected answer from the Klio server: {0}")]
    Unexpected(String),
    /// Reading the archive in-process failed.
    #[error("cannot read the archive")]
    Archive(#[from] klio_store::wal_archive::WalArchiveError),
}

/// The segment size as a type.
pub fn segment_size() -> SegmentSize {
    // 1 MiB is a power of two within PostgreSQL's range: always valid.
    SegmentSize::new(SEGMENT_BYTES).unwrap_or(SegmentSize::DEFAULT)
}

/// The name of segment `segno` of timeline 1.
pub fn segment_name(segno: u64) -> String {
    WalFileName::Segment {
        timeline: TimelineId::FIRST,
        segno: SegmentNo(segno),
    }
    .to_string_with(segment_size())
}

/// The first LSN of segment `segno`.
pub fn segment_start(segno: u64) -> Lsn {
    Lsn(segno * SEGMENT_BYTES)
}

/// Adds plain segments `segnos` of timeline 1 to the archive in `wal_dir`: hard links to
/// sparse 1 MiB files made in `sources` (same file system), readable by everyone.
pub fn add_segments(
    wal_dir: &Path,
    sources: &Path,
    segnos: std::ops::Range<u64>,
) -> Result<(), ArchiveScaleError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |dir: &Path| {
        let dir = dir.to_owned();
        move |source| ArchiveScaleError::Build { dir, source }
    };
    std::fs::create_dir_all(sources).map_err(err(sources))?;
    let mut source = PathBuf::new();
    for (i, segno) in segnos.enumerate() {
        if (i as u64).is_multiple_of(LINKS_PER_SOURCE) {
            source = sources.join(format!("sparse-{segno}"));
            let file = std::fs::File::create(&source).map_err(err(sources))?;
            file.set_len(SEGMENT_BYTES).map_err(err(sources))?;
            file.set_permissions(std::fs::Permissions::from_mode(0o644))
                .map_err(err(sources))?;
        }
        std::fs::hard_link(&source, wal_dir.join(segment_name(segno))).map_err(err(wal_dir))?;
    }
    Ok(())
}

/// How to reach `server` as cluster `cluster`, with the client certificate in `certs`.
pub fn endpoint(server: &KlioServer, certs: &TestCerts, cluster: &str) -> ServerEndpoint {
    ServerEndpoint {
        address: server.address(),
        server_name: Some("localhost".to_owned()),
        ca: certs.file("ca.pem"),
        cert: certs.file(&format!("client-{cluster}.pem")),
        key: certs.file(&format!("client-{cluster}.key")),
    }
}

/// Streams `len` bytes of WAL from `start` on timeline 1 as cluster `cluster` and waits for
/// their acknowledgement; the durable end acknowledged.
pub async fn stream_wal(
    endpoint: &ServerEndpoint,
    cluster: &str,
    start: Lsn,
    len: usize,
) -> Result<Lsn, ArchiveScaleError> {
    let name = ClusterName::new(cluster)
        .map_err(|e| ArchiveScaleError::Unexpected(format!("cluster name {cluster:?}: {e}")))?;
    let conn = ServerConnection::connect(endpoint).await?;
    let (mut send, mut recv) = conn.open_stream().await?;
    send.send(&Message::Hello {
        version: PROTOCOL_VERSION,
        cluster: name,
        system_id: SYSTEM_ID,
        segment_size: SEGMENT_BYTES as u32,
    })
    .await?;
    match recv.recv().await? {
        Some(Message::Welcome { .. }) => {}
        other => return Err(ArchiveScaleError::Unexpected(format!("{other:?}"))),
    }
    send.push(&Message::StartWal {
        timeline: TimelineId::FIRST,
        start,
    });
    send.push(&Message::WalData {
        start,
        data: Bytes::from(vec![0x5a; len]),
    });
    send.flush().await?;
    let end = Lsn(start.0 + len as u64);
    loop {
        match recv.recv().await? {
            Some(Message::Ack { durable, .. }) if durable >= end => break,
            Some(Message::Ack { .. }) => {}
            other => return Err(ArchiveScaleError::Unexpected(format!("{other:?}"))),
        }
    }
    send.finish();
    conn.close().await;
    Ok(end)
}

/// A file as the server sent it.
#[derive(Clone, Debug)]
pub struct Fetched {
    /// Its bytes.
    pub content: Vec<u8>,
    /// The segment in progress, zero-padded.
    pub partial: bool,
}

/// One restore stream: `GetPosition` and `GetFile` requests in turn.
pub struct RestoreStream {
    conn: ServerConnection,
    send: FramedSend,
    recv: FramedRecv,
}

impl std::fmt::Debug for RestoreStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreStream").finish_non_exhaustive()
    }
}

impl RestoreStream {
    /// Connects to `endpoint` and opens the stream.
    pub async fn open(endpoint: &ServerEndpoint) -> Result<Self, ArchiveScaleError> {
        let conn = ServerConnection::connect(endpoint).await?;
        let (send, recv) = conn.open_stream().await?;
        Ok(Self { conn, send, recv })
    }

    /// The newest timeline and its durable end.
    pub async fn position(&mut self) -> Result<Option<WalPosition>, ArchiveScaleError> {
        self.send
            .send(&Message::GetPosition { timeline: None })
            .await?;
        match self.recv.recv().await? {
            Some(Message::Position {
                timeline: Some(t),
                durable: Some(l),
            }) => Ok(Some(WalPosition::new(t, l))),
            Some(Message::Position { .. }) => Ok(None),
            other => Err(ArchiveScaleError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The file `name`, or `None` when the server has no such file.
    pub async fn get_file(&mut self, name: &str) -> Result<Option<Fetched>, ArchiveScaleError> {
        self.send
            .send(&Message::GetFile {
                name: name.to_owned(),
            })
            .await?;
        let mut content = Vec::new();
        loop {
            match self.recv.recv().await? {
                Some(Message::FileData { data }) => content.extend_from_slice(&data),
                Some(Message::FileEnd { size, partial, .. }) if size == content.len() as u64 => {
                    return Ok(Some(Fetched { content, partial }));
                }
                Some(Message::NoSuchFile { .. }) => return Ok(None),
                other => return Err(ArchiveScaleError::Unexpected(format!("{other:?}"))),
            }
        }
    }

    /// Ends the stream and the connection.
    pub async fn close(mut self) {
        self.send.finish();
        self.conn.close().await;
    }
}

/// A deterministic pseudo-random sequence (xorshift64*), for picking segments.
#[derive(Clone, Debug)]
pub struct Picks(u64);

impl Picks {
    /// Seeded with `seed` (not 0).
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// The next pick in `1..=n`.
    pub fn next_in(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        1 + self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

/// The `q` quantile (0..=1) of `v` (sorted here), in the unit of `v`.
fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i.min(v.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Measures every size of `opts` with the `klio` binary at `klio`.
pub fn run(
    klio: &Path,
    opts: &ArchiveScaleOptions,
) -> Result<ArchiveScaleReport, ArchiveScaleError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ArchiveScaleError::Unexpected(format!("no Tokio runtime: {e}")))?;
    let mut samples = Vec::new();
    for &segments in &opts.sizes {
        eprintln!("archive-scale: {segments} segments");
        samples.push(measure(&rt, klio, segments, opts)?);
    }
    Ok(ArchiveScaleReport { samples })
}

fn measure(
    rt: &tokio::runtime::Runtime,
    klio: &Path,
    segments: u64,
    opts: &ArchiveScaleOptions,
) -> Result<ArchiveScaleSample, ArchiveScaleError> {
    let work = TestDir::new("archive-scale");
    let exe = work.install_exe(klio);
    let certs = TestCerts::create(&exe, &work.subdir("certs"), &[CLUSTER]);
    let mut server = KlioServer::start(&exe, &work, &certs);
    let ep = endpoint(&server, &certs, CLUSTER);
    let live = segments + 1;
    rt.block_on(stream_wal(&ep, CLUSTER, segment_start(live), 4096))?;
    server.stop();
    let wal = server.wal_dir(CLUSTER);
    let built = Instant::now();
    add_segments(&wal, &work.path().join("sources"), 1..live)?;
    let build_seconds = built.elapsed().as_secs_f64();

    let started = Instant::now();
    server.restart();
    let start_seconds = started.elapsed().as_secs_f64();
    let (first_position_ms, position_ms, mut gets) = rt.block_on(async {
        let mut stream = RestoreStream::open(&ep).await?;
        let asked = Instant::now();
        stream.position().await?;
        let first = ms(asked.elapsed());
        let mut positions = Vec::new();
        for _ in 0..20 {
            let asked = Instant::now();
            stream.position().await?;
            positions.push(ms(asked.elapsed()));
        }
        let mut picks = Picks::new(segments);
        let mut gets = Vec::new();
        for _ in 0..opts.gets {
            let name = segment_name(picks.next_in(segments));
            let asked = Instant::now();
            let got = stream.get_file(&name).await?;
            gets.push(ms(asked.elapsed()));
            if got.is_none() {
                return Err(ArchiveScaleError::Unexpected(format!("{name} not found")));
            }
        }
        stream.close().await;
        Ok::<_, ArchiveScaleError>((first, quantile(&mut positions, 0.5), gets))
    })?;
    server.stop();

    let mut picks = Picks::new(segments ^ 0xabcdef);
    let mut before = Vec::new();
    for _ in 0..opts.reader_opens {
        let name = WalFileName::Segment {
            timeline: TimelineId::FIRST,
            segno: SegmentNo(picks.next_in(segments)),
        };
        let asked = Instant::now();
        let reader = klio_store::wal_archive::WalArchiveReader::open(&wal)?;
        reader.read_file(&name)?;
        before.push(ms(asked.elapsed()));
    }
    let sample = ArchiveScaleSample {
        segments,
        build_seconds,
        start_seconds,
        first_position_ms,
        position_ms,
        get_file_p50_ms: quantile(&mut gets, 0.5),
        get_file_p99_ms: quantile(&mut gets, 0.99),
        get_file_max_ms: quantile(&mut gets, 1.0),
        reader_per_request_ms: before.iter().sum::<f64>() / before.len().max(1) as f64,
    };
    let removing = Instant::now();
    drop(work);
    eprintln!(
        "archive-scale: {segments} segments removed in {:.1} s",
        removing.elapsed().as_secs_f64()
    );
    Ok(sample)
}
