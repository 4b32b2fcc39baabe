//! One archive of a million segments behind a real `klio server start`: starting the server,
//! `GetPosition` and `GetFile` stay within fixed bounds, and the server's index of the
//! archive stays true while WAL streams into it.
//!
//! The segments are plain 1 MiB segment files made as hard links to a few sparse files
//! (`klio_bench::archive_scale::add_segments`): valid-looking entries for every reader (the
//! right name and size), with neither data blocks nor an inode each, made once here in
//! seconds.
//!
//! The bounds, generous for a debug build on a busy 2-core machine (the figures themselves
//! come from `klio-bench archive-scale`, which puts 10,000 and 1,000,000 segments side by
//! side):
//! - server start, from spawning the process until it listens: < 10 s;
//! - the first `GetPosition` of the cluster, which builds its index (one listing): < 30 s;
//! - every later `GetPosition`: < 50 ms;
//! - every `GetFile` of a 1 MiB segment, to its `FileEnd`: < 100 ms at the median, < 500 ms
//!   each (a debug build's QUIC and TLS on a shared machine: 11-32 ms at the median here; a
//!   release build serves them in 5-8 ms; a listing per request, as before the index, took
//!   7 s each with a million segments).

mod common;

use std::time::{Duration, Instant};

use common::klio_exe;
use klio_bench::archive_scale::{
    CLUSTER, Picks, RestoreStream, SEGMENT_BYTES, add_segments, endpoint, segment_name,
    segment_start, stream_wal,
};
use klio_testkit::{KlioServer, TestCerts, TestDir};
use klio_wal::{Lsn, TimelineId, WalPosition};

const SEGMENTS: u64 = 1_000_000;
const GETS: usize = 200;

const START_BOUND: Duration = Duration::from_secs(10);
const INDEX_BUILD_BOUND: Duration = Duration::from_secs(30);
const POSITION_BOUND: Duration = Duration::from_millis(50);
const GET_FILE_MEDIAN_BOUND: Duration = Duration::from_millis(100);
const GET_FILE_BOUND: Duration = Duration::from_millis(500);

#[test]
fn get_file_and_server_start_do_not_grow_with_a_million_segments() {
    let work = TestDir::new("archive-scale");
    let exe = klio_exe(&work);
    let certs = TestCerts::create(&exe, &work.subdir("certs"), &[CLUSTER]);
    let mut server = KlioServer::start(&exe, &work, &certs);
    let ep = endpoint(&server, &certs, CLUSTER);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // The archive: its identity and the segment in progress from the server, then a million
    // segments before it.
    let live = SEGMENTS + 1;
    let journal_end = rt
        .block_on(stream_wal(&ep, CLUSTER, segment_start(live), 4096))
        .unwrap();
    server.stop();
    let wal = server.wal_dir(CLUSTER);
    let built = Instant::now();
    add_segments(&wal, &work.path().join("sources"), 1..live).unwrap();
    eprintln!("{SEGMENTS} segments made in {:?}", built.elapsed());

    let started = Instant::now();
    server.restart();
    let start = started.elapsed();
    eprintln!("server start: {start:?}");
    assert!(start < START_BOUND, "server start took {start:?}");

    rt.block_on(async {
        let mut s = RestoreStream::open(&ep).await.unwrap();
        let asked = Instant::now();
        let position = s.position().await.unwrap();
        let first = asked.elapsed();
        eprintln!("first GetPosition (index build): {first:?}");
        assert_eq!(
            position,
            Some(WalPosition::new(TimelineId::FIRST, journal_end))
        );
        assert!(
            first < INDEX_BUILD_BOUND,
            "first GetPosition took {first:?}"
        );
        for _ in 0..20 {
            let asked = Instant::now();
            assert_eq!(
                s.position().await.unwrap().map(|p| p.lsn),
                Some(journal_end)
            );
            let took = asked.elapsed();
            assert!(took < POSITION_BOUND, "GetPosition took {took:?}");
        }

        let mut picks = Picks::new(17);
        let mut took = Vec::new();
        for _ in 0..GETS {
            let segno = picks.next_in(SEGMENTS);
            let asked = Instant::now();
            let file = s.get_file(&segment_name(segno)).await.unwrap();
            took.push(asked.elapsed());
            let file = file.unwrap_or_else(|| panic!("segment {segno} not found"));
            assert!(!file.partial);
            assert_eq!(file.content.len() as u64, SEGMENT_BYTES);
            assert!(file.content.iter().all(|&b| b == 0), "sparse: zeros");
        }
        took.sort();
        let (median, slowest) = (took[GETS / 2], took[GETS - 1]);
        eprintln!(
            "GetFile of {GETS} random segments: median {median:?}, p99 {:?}, max {slowest:?}",
            took[GETS * 99 / 100]
        );
        assert!(median < GET_FILE_MEDIAN_BOUND, "GetFile median {median:?}");
        assert!(slowest < GET_FILE_BOUND, "slowest GetFile {slowest:?}");

        // The segment in progress, zero-padded; the one after it is not in the archive.
        let partial = s.get_file(&segment_name(live)).await.unwrap().unwrap();
        assert!(partial.partial);
        assert!(partial.content[..4096].iter().all(|&b| b == 0x5a));
        assert!(partial.content[4096..].iter().all(|&b| b == 0));
        assert!(s.get_file(&segment_name(live + 1)).await.unwrap().is_none());
        s.close().await;
    });

    // The writer keeps the index true: segment `live` completes, the next one starts, and
    // both answers follow without a new listing.
    let end = rt
        .block_on(stream_wal(
            &ep,
            CLUSTER,
            journal_end,
            (SEGMENT_BYTES - 4096 + 100) as usize,
        ))
        .unwrap();
    assert_eq!(end, Lsn(segment_start(live + 1).0 + 100));
    rt.block_on(async {
        let mut s = RestoreStream::open(&ep).await.unwrap();
        let asked = Instant::now();
        let position = s.position().await.unwrap();
        let took = asked.elapsed();
        assert_eq!(position, Some(WalPosition::new(TimelineId::FIRST, end)));
        assert!(
            took < POSITION_BOUND,
            "GetPosition after streaming took {took:?}"
        );
        let complete = s.get_file(&segment_name(live)).await.unwrap().unwrap();
        assert!(!complete.partial);
        assert!(complete.content[..4096].iter().all(|&b| b == 0x5a));
        let next = s.get_file(&segment_name(live + 1)).await.unwrap().unwrap();
        assert!(next.partial);
        assert!(next.content[..100].iter().all(|&b| b == 0x5a));
        s.close().await;
    });
    server.stop();
    let removing = Instant::now();
    drop(work);
    eprintln!("{SEGMENTS} segments removed in {:?}", removing.elapsed());
}
