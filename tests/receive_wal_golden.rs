//! Golden test: `klio receive-wal` and `pg_receivewal` stream side by side from one server,
//! under pgbench load and through a timeline switch; their directories must be byte-identical.

mod common;

use std::time::Duration;

use common::*;
use klio_testkit::{
    PgOptions, PgServer, TestDir, digests, start_klio_receive_wal, start_pg_receivewal, wait_until,
};

#[test]
fn byte_identical_to_pg_receivewal_through_a_timeline_switch() {
    let opts = PgOptions {
        wal_segsize_mb: 1,
        ..PgOptions::default()
    };
    let primary = PgServer::start(opts);
    primary.pgbench(&["-i", "-s", "2", "-q"]);
    // The receivers stream from a standby that is later promoted: that is where a timeline
    // switch happens under a streaming client.
    let standby = PgServer::standby_of(&primary);
    standby.set_conf("synchronous_standby_names = 'klio'");
    standby.create_slot("klio");
    standby.create_slot("pgrw");

    let work = TestDir::new("golden");
    let exe = klio_exe(&work);
    let klio_dir = work.subdir("klio-archive");
    let pgrw_dir = work.subdir("pg_receivewal");
    let mut klio = start_klio_receive_wal(
        &exe,
        &standby,
        &klio_dir,
        "klio",
        &[],
        &work.path().join("klio.log"),
    );
    let mut pgrw = start_pg_receivewal(&standby, &pgrw_dir, "pgrw", &work.path().join("pgrw.log"));

    // Timeline 1: load on the primary, replayed by the standby, streamed by both receivers.
    primary.pgbench(&["-T", "8", "-c", "4", "-j", "2"]);
    primary.switch_wal();
    primary.psql("CREATE TABLE t1 AS SELECT g FROM generate_series(1, 10000) g");
    let target = primary.current_lsn();
    wait_until("standby to replay", Duration::from_secs(120), || {
        let ok = standby.psql(&format!("SELECT pg_last_wal_replay_lsn() >= '{target}'"));
        (ok == "t").then_some(())
    });
    standby.wait_for_flush("klio", &target);
    standby.wait_for_flush("pg_receivewal", &target);

    // Timeline 2: promote the standby; both receivers must follow without help.
    standby.promote();
    standby.pgbench(&["-T", "8", "-c", "4", "-j", "2"]);
    standby.psql("CREATE TABLE t2 AS SELECT g FROM generate_series(1, 10000) g");
    standby.switch_wal();
    standby.psql("INSERT INTO t2 VALUES (0)");
    let target = standby.current_lsn();
    standby.wait_for_flush("klio", &target);
    standby.wait_for_flush("pg_receivewal", &target);

    // pg_stat_replication shows klio with meaningful positions.
    let row = standby.psql(
        "SELECT state, write_lsn IS NOT NULL, flush_lsn = replay_lsn \
         FROM pg_stat_replication WHERE application_name = 'klio'",
    );
    assert_eq!(row, "streaming|t|t");

    assert_eq!(klio.stop(), Some(0), "klio receive-wal exits 0 on SIGINT");
    pgrw.stop();

    let ours = digests(&klio_dir);
    let theirs = digests(&pgrw_dir);
    assert!(
        ours.contains_key("00000002.history"),
        "history file: {ours:?}"
    );
    let complete = |m: &std::collections::BTreeMap<String, String>, tli: &str| {
        m.keys()
            .filter(|k| k.len() == 24 && k.starts_with(tli))
            .count()
    };
    assert!(
        complete(&ours, "00000001") >= 3,
        "segments on timeline 1: {ours:?}"
    );
    assert!(
        complete(&ours, "00000002") >= 2,
        "segments on timeline 2: {ours:?}"
    );
    // Same file names, and every completed segment and history file byte-identical.
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>(),
        "file sets differ"
    );
    for (name, digest) in &ours {
        if !name.ends_with(".partial") {
            assert_eq!(
                Some(digest),
                theirs.get(name),
                "{name} differs from pg_receivewal's"
            );
        }
    }
    // The .partial files agree up to the flushed position: both were stopped only after
    // flushing `target`, so compare everything up to it.
    let size = 1u64 << 20;
    let target: klio_wal::Lsn = target.parse().expect("LSN");
    for name in ours.keys().filter(|n| n.ends_with(".partial")) {
        let a = std::fs::read(klio_dir.join(name)).expect("read klio partial");
        let b = std::fs::read(pgrw_dir.join(name)).expect("read pg_receivewal partial");
        assert_eq!(a.len(), b.len(), "{name}: sizes differ");
        let seg =
            klio_wal::WalFileName::parse(name, klio_wal::SegmentSize::new(size).expect("size"))
                .expect("partial name")
                .segno()
                .expect("segment");
        let upto = if seg.0 == target.0 / size {
            (target.0 % size) as usize
        } else {
            a.len()
        };
        assert_eq!(a[..upto], b[..upto], "{name} differs before {upto}");
    }
}
