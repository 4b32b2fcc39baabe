//! Recovery through the Klio server only: `klio prepare-recovery` + `klio get-wal` as
//! restore_command, against real PostgreSQL 15.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use klio_testkit::{
    KlioServer, PgServer, Stack, TestCerts, TickLoop, as_postgres, assert_same_dump,
    pgbench_in_background, run_ok,
};

/// `klio prepare-recovery` on `pg`'s data directory (as the postgres user, who owns it).
fn prepare_recovery(
    exe: &Path,
    pg: &PgServer,
    server: &KlioServer,
    certs: &TestCerts,
    extra: &[&str],
) {
    run_ok(
        as_postgres(exe)
            .arg("prepare-recovery")
            .arg("-D")
            .arg(pg.data_dir())
            .args(server.client_args(certs, "pg1"))
            .args(extra),
    );
}

/// A primary (1 MiB segments) streaming to a fresh Klio server as its synchronous standby.
fn streamed_primary(name: &str) -> Stack {
    stack(name)
        .segment_size_mb(1)
        .sync_standby()
        // No WAL written behind the tests' back (it is not waited for, so a crash may cut it
        // anywhere, making the end of the archive unpredictable).
        .conf("autovacuum = off")
        .start()
}

#[test]
fn golden_recovery_through_get_wal_only() {
    let mut stack = streamed_primary("get-wal-golden");
    let Stack {
        pg,
        work,
        exe,
        certs,
        server,
        client,
        ..
    } = &mut stack;
    let backup = work.path().join("backup");
    pg.base_backup_without_wal(&backup);

    let ticks = TickLoop::start(pg, work, 500);
    pg.pgbench(&["-i", "-s", "5", "-q"]);
    let mut bench = pgbench_in_background(
        pg,
        &["-T", "8", "-c", "2"],
        &work.path().join("pgbench.log"),
    );
    pg.psql(
        "CREATE TABLE big AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 200000) g",
    );
    assert_eq!(
        bench.wait(std::time::Duration::from_secs(60)),
        Some(0),
        "pgbench"
    );
    ticks.wait_for_more(5);
    let last_id = ticks.stop();
    // The last commit goes into a fresh segment, which is still in progress at the crash.
    pg.switch_wal();
    pg.psql("CREATE TABLE last_words AS SELECT 'committed last' AS note");
    let before = pg.dumpall();
    pg.kill9();
    client.stop();
    let in_progress = klio_store::wal_archive::WalArchiveReader::open(&server.wal_dir("pg1"))
        .and_then(|a| a.list())
        .expect("list the archive")
        .timelines
        .iter()
        .any(|t| !t.partials.is_empty());

    pg.replace_data_with_backup(&backup);
    prepare_recovery(exe, pg, server, certs, &[]);
    let conf = std::fs::read_to_string(pg.data_dir().join("postgresql.auto.conf")).unwrap();
    assert!(conf.contains("get-wal %f %p"), "{conf}");
    pg.start_and_finish_recovery();

    let after = pg.dumpall();
    assert_same_dump(work.path(), &before, &after);
    assert_every_commit_recovered(pg, last_id);
    // The segment in progress on the server (unless WAL nobody waited for happened to end
    // exactly at a segment boundary) was served zero-padded and replayed to its end.
    assert_eq!(
        server.log().contains("in progress"),
        in_progress,
        "the partial segment was served"
    );
    assert!(
        pg.log().contains("restored log file"),
        "PostgreSQL restored files through get-wal"
    );
}

/// Prefetched segments are served from the spool (here with the server stopped), and a
/// spooled copy that no longer matches the server's checksum is never served.
#[test]
fn prefetched_segments_come_from_the_spool_and_only_when_intact() {
    let mut stack = streamed_primary("get-wal-spool");
    let Stack {
        pg,
        work,
        exe,
        certs,
        server,
        client,
        ..
    } = &mut stack;
    pg.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 10) g");
    let first = pg.switch_wal();
    for _ in 0..8 {
        pg.psql("INSERT INTO t SELECT generate_series(1, 20000)");
        pg.switch_wal();
    }
    pg.psql("INSERT INTO t VALUES (1)");
    client.stop();
    let first = pg.psql(&format!("SELECT pg_walfile_name('{first}')"));
    let seg = |n: u64| {
        let base = u64::from_str_radix(&first[16..], 16).unwrap();
        format!("{}{:08X}", &first[..16], base + n)
    };

    let spool = work.path().join("spool");
    let out = work.subdir("restored");
    let client_args = server.client_args(certs, "pg1");
    let get = |name: &str| {
        klio_testkit::run(
            Command::new(&exe)
                .args(["get-wal", name])
                .arg(out.join(name))
                .args(&client_args)
                .arg("--spool-dir")
                .arg(&spool)
                .args(["--prefetch", "4", "--timeout", "2"]),
        )
    };
    // The first call fetches from the server and starts the prefetcher for the next four.
    let r = get(&seg(1));
    assert!(r.success(), "{}", r.stderr);
    klio_testkit::wait_until(
        "the prefetcher to fill the spool",
        std::time::Duration::from_secs(30),
        || {
            let n = std::fs::read_dir(&spool)
                .unwrap()
                .filter(|e| e.as_ref().unwrap().file_name().len() == 33)
                .count();
            (n == 4).then_some(())
        },
    );
    let original = std::fs::read(server.wal_dir("pg1").join(seg(3))).unwrap();

    server.kill9();
    for n in 2..=3 {
        let r = get(&seg(n));
        assert!(r.success(), "segment {n} from the spool: {}", r.stderr);
    }
    // The spool's copies are exactly the server's.
    assert_eq!(std::fs::read(out.join(seg(3))).unwrap(), original);
    // Damage the spooled copy of segment 4: it is not served; the server is down, so the
    // call fails with 255 (PostgreSQL stops recovery) instead of serving wrong bytes.
    let spooled4 = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(&seg(4))
        })
        .expect("segment 4 spooled");
    let mut bytes = std::fs::read(&spooled4).unwrap();
    bytes[5000] ^= 0x40;
    std::fs::write(&spooled4, &bytes).unwrap();
    let r = get(&seg(4));
    assert_eq!(r.code, Some(255), "{}", r.stderr);
    assert!(r.stderr.contains("did not answer"), "{}", r.stderr);
    assert!(!out.join(seg(4)).exists(), "no file written");

    // With the server back, the segment comes from the server, intact.
    server.restart();
    let r = get(&seg(4));
    assert!(r.success(), "{}", r.stderr);
    assert_eq!(
        std::fs::read(out.join(seg(4))).unwrap(),
        std::fs::read(server.wal_dir("pg1").join(seg(4))).unwrap()
    );
    // A name outside the archive: exit 1 (end of recovery); a bad name: 255.
    let r = get("000000010000000A00000000");
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    let r = get("../../etc/passwd");
    assert_eq!(r.code, Some(255), "{}", r.stderr);
}

/// Recovery to a timestamp, to an LSN and to a named restore point stops exactly there: the
/// rows committed before the target are present, none committed after it.
#[test]
fn point_in_time_recovery_stops_exactly_at_the_target() {
    let mut stack = streamed_primary("get-wal-pitr");
    let Stack {
        pg,
        work,
        exe,
        certs,
        server,
        client,
        ..
    } = &mut stack;
    let backup = work.path().join("backup");
    pg.base_backup_without_wal(&backup);

    pg.psql("CREATE TABLE events (phase int, n int)");
    pg.psql("INSERT INTO events SELECT 1, g FROM generate_series(1, 1000) g");
    pg.psql("SELECT pg_create_restore_point('after-phase-1')");
    let lsn = pg.psql("SELECT pg_current_wal_insert_lsn()");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let time = pg.psql("SELECT clock_timestamp()");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    pg.psql("INSERT INTO events SELECT 2, g FROM generate_series(1, 1000) g");
    pg.switch_wal();
    pg.psql("INSERT INTO events VALUES (3, 0)");
    pg.kill9();
    client.stop();

    for (target, value) in [
        ("--target-time", time.as_str()),
        ("--target-lsn", lsn.as_str()),
        ("--target-name", "after-phase-1"),
    ] {
        pg.replace_data_with_backup(&backup);
        prepare_recovery(
            exe,
            pg,
            server,
            certs,
            &[target, value, "--target-action", "promote"],
        );
        pg.start_and_finish_recovery();
        assert_eq!(
            pg.psql("SELECT phase, count(*) FROM events GROUP BY phase ORDER BY phase"),
            "1|1000",
            "recovery with {target} {value}: phase 1 complete, nothing after"
        );
        pg.stop();
    }
}

/// A promoted standby's timeline: recovery from a backup taken on timeline 1 follows the
/// archived `00000002.history` to timeline 2 and replays what was written there.
#[test]
fn recovery_follows_a_timeline_switch() {
    let mut stack = stack("get-wal-timeline")
        .segment_size_mb(1)
        .standby()
        .start();
    let Stack {
        pg: primary,
        standby: Some(standby),
        server,
        client,
        certs,
        work,
        exe,
        ..
    } = &mut stack
    else {
        unreachable!("built with a standby")
    };
    standby.wait_for_flush("klio", &standby.psql("SELECT pg_last_wal_replay_lsn()"));
    let backup = work.path().join("backup");
    primary.base_backup_without_wal(&backup);

    primary.psql("CREATE TABLE t (phase int, n int)");
    primary.psql("INSERT INTO t SELECT 1, g FROM generate_series(1, 500) g");
    primary.switch_wal();
    standby.wait_for_flush("klio", &primary.current_lsn());
    standby.promote();
    standby.psql("INSERT INTO t SELECT 2, g FROM generate_series(1, 500) g");
    standby.switch_wal();
    standby.psql("INSERT INTO t VALUES (3, 0)");
    standby.wait_for_flush("klio", &standby.current_lsn());
    client.stop();
    standby.kill9();
    primary.kill9();

    primary.replace_data_with_backup(&backup);
    prepare_recovery(exe, primary, server, certs, &[]);
    primary.start_and_finish_recovery();
    assert_eq!(
        primary.psql("SELECT phase, count(*) FROM t GROUP BY phase ORDER BY phase"),
        "1|500\n2|500\n3|1",
        "the rows of both timelines"
    );
    assert!(
        primary
            .log()
            .contains("restored log file \"00000002.history\""),
        "recovery read the history file through get-wal"
    );
}

/// With prefetching off (`--prefetch 0`) every file comes from the call PostgreSQL waits for,
/// each on its own connection: recovery still replays every commit, nothing is spooled, and
/// the server holds none of those connections once recovery is over (each call closes its
/// own instead of leaving it to the server's idle timeout).
#[test]
fn recovery_without_prefetch_replays_every_commit_and_leaves_no_connection() {
    let mut stack = streamed_primary("get-wal-no-prefetch");
    let backup = stack.work.path().join("backup");
    stack.pg.base_backup_without_wal(&backup);

    let ticks = TickLoop::start(&stack.pg, &stack.work, 200);
    stack.pg.pgbench(&["-i", "-s", "3", "-q"]);
    let mut switched = 0;
    for _ in 0..4 {
        stack.pg.psql(
            "INSERT INTO pgbench_history SELECT 1, 1, 1, g, now() FROM generate_series(1, 20000) g",
        );
        stack.pg.switch_wal();
        switched += 1;
    }
    ticks.wait_for_more(3);
    let last_id = ticks.stop();
    stack
        .pg
        .psql("CREATE TABLE last_words AS SELECT 'committed last' AS note");
    let before = stack.pg.dumpall();
    stack.pg.kill9();
    stack.client.stop();

    stack.pg.replace_data_with_backup(&backup);
    prepare_recovery(
        &stack.exe,
        &stack.pg,
        &stack.server,
        &stack.certs,
        &["--prefetch", "0"],
    );
    let conf = std::fs::read_to_string(stack.pg.data_dir().join("postgresql.auto.conf")).unwrap();
    assert!(conf.contains("--prefetch 0"), "{conf}");
    stack.pg.start_and_finish_recovery();

    assert_same_dump(stack.work.path(), &before, &stack.pg.dumpall());
    assert_every_commit_recovered(&stack.pg, last_id);
    let restored = stack.pg.log().matches("restored log file").count();
    assert!(
        restored > switched,
        "each segment came through get-wal ({restored} restored)"
    );
    assert!(
        !stack.pg.data_dir().join("pg_wal/klio-spool").exists(),
        "nothing was spooled"
    );
    // Well within the server's 15 s idle timeout: the calls closed their connections.
    klio_testkit::wait_until(
        "the server to hold no connection of pg1",
        std::time::Duration::from_secs(5),
        || {
            let page = retention::metrics_page(&stack);
            let open = page.lines().find_map(|l| {
                l.strip_prefix("klio_connected_clients{cluster=\"pg1\"}")?
                    .trim()
                    .parse::<f64>()
                    .ok()
            });
            (open.unwrap_or(0.0) == 0.0).then_some(())
        },
    );
}
