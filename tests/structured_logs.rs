//! `--log-format json`: with a real stream from PostgreSQL, every line the server and send-wal
//! write is a JSON object, the lines about the cluster carry its name, and neither log holds
//! the key passphrase.

mod common;

use std::process::Command;

use common::*;
use klio_testkit::Stack;

const VAR: &str = "KLIO_TEST_LOG_PASSPHRASE";
const PASSPHRASE: &str = "purple-elephant-4711-never-logged";

/// Every log line as JSON (the test kit's `---- start N ----` markers skipped).
fn json_lines(log: &str, who: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter(|l| !l.starts_with("---- ") && !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{who} wrote a line that is not JSON ({e}): {l}"))
        })
        .collect()
}

/// The `cluster` field of the spans a JSON log line was written in, if any.
fn cluster_of(line: &serde_json::Value) -> Option<&str> {
    line["spans"]
        .as_array()?
        .iter()
        .find_map(|s| s["cluster"].as_str())
}

#[test]
fn json_logs_parse_name_the_cluster_and_hold_no_secret() {
    let mut stack = stack("json-logs")
        .segment_size_mb(1)
        .passphrase_encryption(VAR, PASSPHRASE)
        .server_args(["--log-format", "json"])
        .send_wal_args(["--log-format", "json"])
        .start();
    let Stack {
        pg,
        server,
        client,
        work,
        exe,
        ..
    } = &mut stack;
    pg.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 20000) g");
    pg.switch_wal();
    pg.wait_for_flush("klio", &pg.current_lsn());
    client.stop();
    server.stop();

    let server_lines = json_lines(&server.log(), "the server");
    let client_lines = json_lines(&client.log(), "send-wal");
    for l in server_lines.iter().chain(&client_lines) {
        assert!(l["timestamp"].is_string() && l["level"].is_string(), "{l}");
    }

    let started = server_lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("WAL session started"))
        })
        .expect("the server logs the session start");
    assert_eq!(cluster_of(started), Some("pg1"), "{started}");
    let streaming = client_lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("streaming from"))
        })
        .expect("send-wal logs where it streams from");
    assert_eq!(cluster_of(streaming), Some("pg1"), "{streaming}");
    // Every send-wal line is about its one cluster, except the process's own stop notice.
    for l in client_lines
        .iter()
        .filter(|l| l["message"] != "received stop signal, finishing")
    {
        assert_eq!(cluster_of(l), Some("pg1"), "{l}");
    }

    // A failing command's final error is a JSON line too.
    let failed = klio_testkit::run(
        Command::new(&*exe)
            .args(["--log-format", "json", "keys", "id"])
            .arg(work.path().join("missing.key")),
    );
    assert_eq!(failed.code, Some(1));
    let lines = json_lines(&failed.stderr, "a failing command");
    assert_eq!(lines.len(), 1, "{}", failed.stderr);
    assert_eq!(lines[0]["level"], "ERROR");
    assert!(
        lines[0]["message"]
            .as_str()
            .unwrap()
            .contains("missing.key")
    );

    let both = format!("{}{}", server.log(), client.log());
    assert!(!both.contains(PASSPHRASE), "a log holds the passphrase");
}
