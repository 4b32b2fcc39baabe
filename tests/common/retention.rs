//! Helpers for the retention tests: `klio retention run`, the server's WAL files and packs,
//! `klio status`.

use std::path::PathBuf;
use std::process::Command;

use klio_proto::klio::RetentionReport;
use klio_testkit::{Stack, run};

/// `klio retention run --output json` (with `--dry-run` if asked) that must succeed: its report.
pub fn retention_run(stack: &Stack, dry_run: bool) -> RetentionReport {
    let mut cmd = Command::new(&stack.exe);
    cmd.args(["retention", "run", "--output", "json"])
        .args(stack.client_args());
    if dry_run {
        cmd.arg("--dry-run");
    }
    let out = run(&mut cmd);
    assert!(out.success(), "klio retention run failed:\n{}", out.stderr);
    RetentionReport::from_json(out.stdout.as_bytes())
        .unwrap_or_else(|e| panic!("no retention report ({e}):\n{}", out.stdout))
}

/// The names of the completed segments (24 hex digits, plain or sealed) in the server's WAL
/// archive of the stack's cluster, sorted.
pub fn archived_segments(stack: &Stack) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(stack.server.wal_dir(&stack.cluster))
        .expect("read the WAL archive")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .map(|n| n.trim_end_matches(".klio").to_owned())
        .filter(|n| n.len() == 24 && n.chars().all(|c| c.is_ascii_hexdigit()))
        .collect();
    names.sort();
    names
}

/// The segments of `before` that the archive no longer holds. New ones may have come since:
/// send-wal goes on streaming the background WAL of an idle server.
pub fn segments_gone(stack: &Stack, before: &[String]) -> Vec<String> {
    let now = archived_segments(stack);
    before
        .iter()
        .filter(|s| !now.contains(s))
        .cloned()
        .collect()
}

/// Whether the archive holds `<timeline>.history`.
pub fn has_history(stack: &Stack, timeline: u32) -> bool {
    let dir = stack.server.wal_dir(&stack.cluster);
    let name = format!("{timeline:08X}.history");
    dir.join(&name).exists() || dir.join(format!("{name}.klio")).exists()
}

/// The segment number of an LSN (`X/Y`) for segments of `segment_size` bytes.
pub fn segno_of(lsn: klio_wal::Lsn, segment_size: u64) -> u64 {
    lsn.0 / segment_size
}

/// The file name of segment `segno` of `timeline`.
pub fn segment_name(timeline: u32, segno: u64, segment_size: u64) -> String {
    let per_id = 0x1_0000_0000 / segment_size;
    format!("{timeline:08X}{:08X}{:08X}", segno / per_id, segno % per_id)
}

/// The cluster's pack directory on the server.
pub fn packs_dir(stack: &Stack) -> PathBuf {
    stack
        .server
        .data_dir()
        .join("clusters")
        .join(&stack.cluster)
        .join("backups")
        .join("packs")
}

/// Files in the pack directory with this extension.
pub fn pack_files(stack: &Stack, extension: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(packs_dir(stack))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.ends_with(&format!(".{extension}")))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// `klio status --output json` for the stack's server.
pub fn status_json(stack: &Stack) -> serde_json::Value {
    let out = run(Command::new(&stack.exe).args([
        "status",
        "--address",
        &stack.server.metrics_address(),
        "--output",
        "json",
    ]));
    assert!(out.success(), "klio status failed:\n{}", out.stderr);
    serde_json::from_str(&out.stdout).expect("status JSON")
}

/// The `/metrics` page of the stack's server.
pub fn metrics_page(stack: &Stack) -> String {
    let addr = stack.server.metrics_address();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let page = rt
        .block_on(klio_metrics::http_get(
            &addr,
            "/metrics",
            std::time::Duration::from_secs(10),
        ))
        .expect("GET /metrics");
    page.body
}
