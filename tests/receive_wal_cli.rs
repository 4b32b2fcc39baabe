//! klio run as `pg_receivewal` against the real pg_receivewal 15, which judges: the same
//! command lines are refused with the same words and exit codes, every option it has is
//! taken, its slots are made and dropped the same way, and `--endpos` through a timeline
//! switch leaves byte-identical directories.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use klio_testkit::{
    BackgroundProcess, PgOptions, PgServer, TestDir, as_postgres, digests, pg_bin, run, wait_until,
};

/// klio, linked under the name `pg_receivewal` in a directory of its own.
fn klio_as_pg_receivewal(work: &TestDir) -> PathBuf {
    let exe = klio_exe(work);
    let bin = work.subdir("bin");
    let link = bin.join("pg_receivewal");
    std::os::unix::fs::symlink(&exe, &link).expect("link klio as pg_receivewal");
    link
}

/// What a run printed and how it exited, with the program's own path written as `ARGV0`.
fn outcome(program: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = run(std::process::Command::new(program).args(args));
    let argv0 = program.to_str().expect("a UTF-8 path");
    (
        out.code,
        out.stdout.replace(argv0, "ARGV0"),
        out.stderr.replace(argv0, "ARGV0"),
    )
}

#[test]
fn every_command_line_pg_receivewal_refuses_is_refused_with_its_words() {
    let work = TestDir::new("recv-cli-refusals");
    let ours = klio_as_pg_receivewal(&work);
    let theirs = pg_bin("pg_receivewal");
    let cases: &[&[&str]] = &[
        &[],
        &["--create-slot", "--drop-slot", "-S", "s"],
        &["--create-slot"],
        &["--drop-slot"],
        &["--drop-slot", "--create-slot"],
        &["-D", "/tmp", "--synchronous", "--no-sync"],
        &["-D", "/tmp", "extra"],
        &["-E", "bad"],
        &["-s", "abc"],
        &["-s", "-1"],
        &["-s", "2147484"],
        &["--bogus"],
        &["-x"],
        &["-D"],
        &["--directory"],
        &["-v"],
        &["--no-loop", "--slot", "s", "--if-not-exists"],
        &["-D", "/tmp", "-Z", "foo"],
        &["-D", "/tmp", "-Z", "none:5"],
        &["-D", "/tmp", "-Z", "10"],
        &["-D", "/tmp", "--compress=gzip:"],
        &["-D", "/tmp", "-Z", "gzip:level=x"],
        &["-D", "/tmp", "-Z", "lz4:13"],
        &["-D", "/tmp", "-Z", "zstd"],
        &["-D", "/nonexistent", "-Z", "zstd:50"],
        // Given twice, an option takes its last value.
        &[
            "-D", "/a", "-D", "/b", "-w", "-W", "-w", "-s", "1", "-s", "x",
        ],
        &["-Z", "gzip", "-Z", "foo", "-D", "/tmp"],
    ];
    for args in cases {
        let expected = outcome(&theirs, args);
        assert_eq!(
            expected.0,
            Some(1),
            "pg_receivewal {args:?} fails: {expected:?}"
        );
        assert_eq!(outcome(&ours, args), expected, "pg_receivewal {args:?}");
    }
}

#[test]
fn every_option_pg_receivewal_lists_is_taken_and_help_and_version_keep_its_form() {
    let work = TestDir::new("recv-cli-options");
    let ours = klio_as_pg_receivewal(&work);
    let theirs = pg_bin("pg_receivewal");

    let (code, their_help, _) = outcome(&theirs, &["--help"]);
    assert_eq!(code, Some(0));
    let (code, our_help, _) = outcome(&ours, &["--help"]);
    assert_eq!(code, Some(0));
    assert!(our_help.starts_with("pg_receivewal "), "{our_help}");
    assert!(
        our_help.contains("\nUsage:\n  pg_receivewal [OPTION]...\n"),
        "{our_help}"
    );
    let (_, our_short_help, _) = outcome(&ours, &["-?"]);
    assert_eq!(our_short_help, our_help);

    // Every option of the reference's --help, in the same section, in both forms.
    let options = listed_options(&their_help);
    assert!(options.len() >= 20, "options found: {options:?}");
    for (section, option) in &options {
        let ours_listed = listed_options(&our_help);
        assert!(
            ours_listed.contains(&(section.clone(), option.clone())),
            "{option} under {section:?} in:\n{our_help}"
        );
    }

    // Each is taken: with --create-slot and no --slot, an option klio did not know would be
    // refused before the missing slot is.
    for (_, option) in &options {
        let long = option.split(", ").last().expect("a long form");
        let short = option.split(", ").next().filter(|s| !s.starts_with("--"));
        let value = match long {
            "--directory" => Some("/tmp"),
            "--endpos" => Some("0/1"),
            "--status-interval" => Some("5"),
            "--slot" | "--help" | "--version" | "--create-slot" | "--drop-slot" => continue,
            "--compress" => Some("lz4:1"),
            "--dbname" => Some("host=/nowhere"),
            "--host" => Some("/nowhere"),
            "--port" => Some("5432"),
            "--username" => Some("someone"),
            _ => None,
        };
        for form in [Some(long), short].into_iter().flatten() {
            let mut args = vec![form];
            args.extend(value);
            args.push("--create-slot");
            let expected = outcome(&theirs, &args);
            assert!(
                expected.2.contains("--create-slot needs a slot"),
                "{args:?}: {expected:?}"
            );
            assert_eq!(outcome(&ours, &args), expected, "{args:?}");
        }
    }

    let (code, version, _) = outcome(&ours, &["--version"]);
    assert_eq!(code, Some(0));
    assert!(
        version.starts_with("pg_receivewal (PostgreSQL) 15"),
        "{version}"
    );
    assert_eq!(outcome(&ours, &["-V"]).1, version);
}

/// The `(section, "-X, --long")` pairs a PostgreSQL tool's --help lists.
fn listed_options(help: &str) -> Vec<(String, String)> {
    let mut section = String::new();
    let mut found = Vec::new();
    for line in help.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            section = line.to_owned();
            continue;
        }
        let entry = line.trim_start();
        if !entry.starts_with('-') {
            continue;
        }
        let names: Vec<&str> = entry
            .split_whitespace()
            .take(2)
            .map(|w| w.trim_end_matches(',').split('=').next().unwrap_or(w))
            .filter(|w| w.starts_with('-'))
            .collect();
        found.push((section.clone(), names.join(", ")));
    }
    found
}

/// `restart_lsn` of a slot, `NULL` printed as an empty string.
fn restart_lsn(pg: &PgServer, slot: &str) -> String {
    pg.psql(&format!(
        "SELECT coalesce(restart_lsn::text, '') FROM pg_replication_slots WHERE slot_name = '{slot}'"
    ))
}

#[test]
fn create_slot_reserves_no_wal_until_streaming_and_drop_slot_drops_it_as_pg_receivewal() {
    let pg = PgServer::start(PgOptions::default());
    let work = TestDir::new("recv-cli-slots");
    let ours = klio_as_pg_receivewal(&work);
    let theirs = pg_bin("pg_receivewal");
    let connect = pg.socket_connstr();
    let with = |slot: &str, action: &[&str]| -> Vec<String> {
        ["-d", connect.as_str(), "-S", slot]
            .iter()
            .chain(action)
            .map(|a| (*a).to_owned())
            .collect()
    };
    let outcome_of = |program: &Path, args: &[String]| {
        let out = run(as_postgres(program).args(args));
        (out.code, out.stderr)
    };

    for (program, slot) in [(&ours, "ours"), (&theirs, "theirs")] {
        let (code, stderr) = outcome_of(program, &with(slot, &["--create-slot"]));
        assert_eq!(code, Some(0), "{stderr}");
        assert_eq!(stderr, "", "quiet without -v");
        assert_eq!(restart_lsn(&pg, slot), "", "{slot}: no WAL reserved");
    }
    // Both run `action` on their own slot and must say the same, slot names aside.
    let side_by_side = |action: &[&str]| {
        let (code, ours_err) = outcome_of(&ours, &with("ours", action));
        let (their_code, theirs_err) = outcome_of(&theirs, &with("theirs", action));
        assert_eq!(
            (code, ours_err.replace("ours", "SLOT")),
            (their_code, theirs_err.replace("theirs", "SLOT")),
            "{action:?}"
        );
        (code, ours_err)
    };
    assert_eq!(
        side_by_side(&["--create-slot"]).0,
        Some(1),
        "the slot exists"
    );
    assert_eq!(
        side_by_side(&["--create-slot", "--if-not-exists"]),
        (Some(0), String::new())
    );
    assert_eq!(side_by_side(&["--drop-slot", "-v"]).0, Some(0));
    assert_eq!(
        pg.psql("SELECT count(*) FROM pg_replication_slots"),
        "0",
        "both slots dropped"
    );
    let (code, ours_err) = side_by_side(&["--drop-slot"]);
    assert_eq!(code, Some(1));
    assert!(ours_err.contains("does not exist"), "{ours_err}");
}

/// Runs a receiver that must stop by itself (`--endpos`), and returns its exit code.
fn run_to_endpos(name: &str, program: &Path, args: &[&str], log: &Path) -> Option<i32> {
    let mut receiver = BackgroundProcess::spawn(name, as_postgres(program).args(args), log);
    let code = receiver.wait(Duration::from_secs(180));
    assert!(
        code.is_some(),
        "{name} did not stop at --endpos:\n{}",
        receiver.log()
    );
    code
}

#[test]
fn endpos_through_a_timeline_switch_leaves_what_pg_receivewal_leaves() {
    let opts = PgOptions {
        wal_segsize_mb: 1,
        ..PgOptions::default()
    };
    let primary = PgServer::start(opts);
    let standby = PgServer::standby_of(&primary);
    standby.create_slot("ours");
    standby.create_slot("theirs");
    let work = TestDir::new("recv-cli-endpos");
    let ours = klio_as_pg_receivewal(&work);
    let theirs = pg_bin("pg_receivewal");

    // WAL on timeline 1, replayed by the standby, then the standby promoted to timeline 2,
    // and an end position in the middle of a segment of timeline 2 with WAL after it.
    primary.psql("CREATE TABLE t1 AS SELECT g FROM generate_series(1, 30000) g");
    primary.switch_wal();
    primary.psql("INSERT INTO t1 VALUES (0)");
    let target = primary.current_lsn();
    standby.wait_for_replay(&target);
    standby.promote();
    standby.psql("CREATE TABLE t2 AS SELECT g FROM generate_series(1, 30000) g");
    standby.switch_wal();
    standby.psql("CREATE TABLE t3 AS SELECT g FROM generate_series(1, 2000) g");
    let endpos = standby.current_lsn();
    standby.psql("CREATE TABLE t4 AS SELECT g FROM generate_series(1, 2000) g");
    standby.switch_wal();
    standby.psql("CREATE TABLE t5 (x int)");

    let connect = standby.socket_connstr();
    let mut dirs = Vec::new();
    for (name, program, slot, extra) in [
        ("ours", &ours, "ours", &["--no-sync"][..]),
        ("theirs", &theirs, "theirs", &[][..]),
    ] {
        let dir = work.subdir(name);
        let dir_arg = dir.to_str().expect("UTF-8").to_owned();
        let mut args = vec![
            "-D", &dir_arg, "-S", slot, "-E", &endpos, "-d", &connect, "-v",
        ];
        args.extend(extra);
        let log = work.path().join(format!("{name}.log"));
        let code = run_to_endpos(name, program, &args, &log);
        assert_eq!(
            code,
            Some(0),
            "{name}:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        dirs.push(dir);
    }
    let (ours_files, theirs_files) = (digests(&dirs[0]), digests(&dirs[1]));
    assert_eq!(
        ours_files, theirs_files,
        "the same files with the same bytes"
    );
    assert!(
        ours_files.contains_key("00000002.history"),
        "{ours_files:?}"
    );
    let partial_on = |tli: &str| {
        ours_files
            .keys()
            .filter(|n| n.starts_with(tli) && n.ends_with(".partial"))
            .count()
    };
    assert_eq!(
        partial_on("00000001"),
        1,
        "timeline 1 ends in a partial: {ours_files:?}"
    );
    assert_eq!(
        partial_on("00000002"),
        1,
        "the endpos segment is partial: {ours_files:?}"
    );
    wait_until("the slots to be released", Duration::from_secs(60), || {
        (standby.psql("SELECT count(*) FROM pg_replication_slots WHERE active") == "0")
            .then_some(())
    });
}

/// Starts a receiver in the background, named `name` to the server.
fn start_receiver(
    program: &Path,
    pg: &PgServer,
    dir: &Path,
    name: &str,
    extra: &[&str],
    work: &TestDir,
) -> BackgroundProcess {
    let connect = format!("{} application_name={name}", pg.socket_connstr());
    let mut cmd = as_postgres(program);
    cmd.arg("-D")
        .arg(dir)
        .args(["-S", name, "-d", &connect, "--synchronous", "-v"])
        .args(extra);
    BackgroundProcess::spawn(name, &mut cmd, &work.path().join(format!("{name}.log")))
}

/// The decompressed contents of a directory's complete segments and history files, by their
/// uncompressed names.
fn decompressed(dir: &Path, suffix: &str) -> std::collections::BTreeMap<String, Vec<u8>> {
    let method = match suffix {
        ".gz" => klio_wal::segment_dir::Compression::Gzip { level: 6 },
        _ => klio_wal::segment_dir::Compression::Lz4,
    };
    std::fs::read_dir(dir)
        .expect("read the directory")
        .map(|e| e.expect("entry").file_name().into_string().expect("UTF-8"))
        .filter_map(|name| Some((name.strip_suffix(suffix)?.to_owned(), name)))
        .map(|(plain, name)| {
            let bytes = klio_wal::segment_dir::decompress_file(&dir.join(&name), method)
                .unwrap_or_else(|e| panic!("decompress {name}: {e}"));
            (plain, bytes)
        })
        .collect()
}

/// Runs `judge` (`gzip --test`, `lz4 -t`) on the files of `dir` that `which` names.
fn assert_every_file_passes(dir: &Path, judge: &str, which: impl Fn(&str) -> bool) {
    let (tool, flag) = judge.split_once(' ').expect("tool and flag");
    for entry in std::fs::read_dir(dir).expect("read the directory") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if !which(name) {
            continue;
        }
        let out = run(std::process::Command::new(tool).arg(flag).arg(&path));
        assert!(out.success(), "{judge} {}: {out:?}", path.display());
    }
}

#[test]
fn compressed_streams_hold_pg_receivewals_wal_pass_gzip_and_lz4_tests_and_resume() {
    let pg = PgServer::start(PgOptions {
        wal_segsize_mb: 1,
        ..PgOptions::default()
    });
    let work = TestDir::new("recv-cli-compress");
    let ours = klio_as_pg_receivewal(&work);
    let theirs = pg_bin("pg_receivewal");
    let methods = [("gzip", ".gz", "gzip --test"), ("lz4:1", ".lz4", "lz4 -t")];
    let mut running = Vec::new();
    for (spec, suffix, _) in methods {
        for (who, program) in [("ours", &ours), ("theirs", &theirs)] {
            let name = format!("{who}_{}", &suffix[1..]);
            pg.create_slot(&name);
            let dir = work.subdir(&name);
            let receiver = start_receiver(program, &pg, &dir, &name, &["-Z", spec], &work);
            running.push((name, dir, receiver));
        }
    }
    let flushed_everywhere = |pg: &PgServer, running: &[(String, PathBuf, BackgroundProcess)]| {
        let target = pg.current_lsn();
        for (name, ..) in running {
            pg.wait_for_flush(name, &target);
        }
    };
    pg.pgbench(&["-i", "-s", "2", "-q"]);
    pg.switch_wal();
    flushed_everywhere(&pg, &running);

    // Ours stop mid-segment and start again: they resume from their compressed .partials.
    pg.psql("CREATE TABLE mid AS SELECT g FROM generate_series(1, 20000) g");
    flushed_everywhere(&pg, &running);
    for (name, dir, receiver) in running.iter_mut().filter(|(n, ..)| n.starts_with("ours")) {
        assert_eq!(receiver.stop(), Some(0), "{name}");
        // Stopped cleanly, its .partial is a whole stream too.
        let judge = if name.ends_with("gz") {
            "gzip --test"
        } else {
            "lz4 -t"
        };
        assert_every_file_passes(dir, judge, |_| true);
        let spec = if name.ends_with("gz") {
            "gzip"
        } else {
            "lz4:1"
        };
        *receiver = start_receiver(&ours, &pg, dir, name, &["-Z", spec], &work);
    }
    pg.pgbench(&["-T", "3", "-c", "2"]);
    pg.switch_wal();
    pg.psql("INSERT INTO mid VALUES (0)");
    flushed_everywhere(&pg, &running);
    // Ours are killed (no end written to their open .partial); theirs stop.
    let mut torn = Vec::new();
    for (name, dir, receiver) in &mut running {
        if name.starts_with("ours") {
            receiver.kill9();
            torn.push(dir.clone());
        } else {
            assert_eq!(receiver.stop(), Some(0), "{name}");
        }
    }
    // restore-wal serves the WAL flushed into a .partial whose stream was never ended.
    for dir in &torn {
        let partial = std::fs::read_dir(dir)
            .expect("read ours")
            .map(|e| e.expect("entry").file_name().into_string().expect("UTF-8"))
            .find(|n| n.ends_with(".partial"))
            .unwrap_or_else(|| panic!("a .partial in {}", dir.display()));
        let segment = &partial[..24];
        let dest = work.path().join(format!("RECOVERYXLOG-{segment}"));
        let out = run(std::process::Command::new(work.path().join("klio"))
            .args(["restore-wal", segment])
            .arg(&dest)
            .arg("-D")
            .arg(dir));
        assert!(out.success(), "restore-wal of {partial}: {out:?}");
        let served = std::fs::read(&dest).expect("served segment");
        assert_eq!(served.len(), 1 << 20, "{partial} padded to a segment");
        assert!(served[..64].iter().any(|&b| b != 0), "{partial} holds WAL");
    }

    for (_, suffix, judge) in methods {
        let dir_of = |who: &str| work.path().join(format!("{who}_{}", &suffix[1..]));
        let (ours_dir, theirs_dir) = (dir_of("ours"), dir_of("theirs"));
        // Every complete file passes the reference tool's test (the .partials were checked
        // when ours stopped cleanly; killed, theirs have no end).
        assert_every_file_passes(&ours_dir, judge, |name| !name.ends_with(".partial"));
        // The complete segments hold the same WAL as pg_receivewal's, byte for byte.
        let (ours_wal, theirs_wal) = (
            decompressed(&ours_dir, suffix),
            decompressed(&theirs_dir, suffix),
        );
        assert!(ours_wal.len() >= 4, "{suffix}: {:?}", ours_wal.keys());
        assert_eq!(
            ours_wal.keys().collect::<Vec<_>>(),
            theirs_wal.keys().collect::<Vec<_>>(),
            "{suffix}: the same complete files"
        );
        for (name, bytes) in &ours_wal {
            assert!(theirs_wal[name] == *bytes, "{name}{suffix} differs");
            assert_eq!(bytes.len(), 1 << 20, "{name}{suffix} is a whole segment");
        }
    }
}
