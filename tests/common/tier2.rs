//! Helpers for the Tier 2 relay tests: the `tier2` section, the relay frontier, and Tier 1's
//! files compared with the S3 test server's objects.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use klio_testkit::{S3Server, Stack, run};

/// The `tier2` section pointing at `endpoint` with the S3 test server's bucket and keys.
pub fn tier2_yaml(endpoint: &str, partial_interval: &str) -> String {
    format!(
        "tier2:\n  endpoint: {endpoint}\n  region: {region}\n  bucket: {bucket}\n  \
         access_key_id: {id}\n  secret_access_key: {secret}\n  \
         partial_interval: {partial_interval}\n",
        region = S3Server::REGION,
        bucket = S3Server::BUCKET,
        id = S3Server::ACCESS_KEY_ID,
        secret = S3Server::SECRET_ACCESS_KEY,
    )
}

/// An endpoint nothing listens on: a port bound and released at once.
pub fn closed_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let port = listener.local_addr().expect("its address").port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

/// The cluster's directory on the server.
pub fn cluster_dir(stack: &Stack) -> PathBuf {
    stack
        .server
        .data_dir()
        .join("clusters")
        .join(&stack.cluster)
}

/// The relay frontier of the stack's cluster, if written yet.
pub fn frontier(stack: &Stack) -> Option<serde_json::Value> {
    let bytes = std::fs::read(cluster_dir(stack).join("tier2-frontier.json")).ok()?;
    Some(serde_json::from_slice(&bytes).expect("the frontier is JSON"))
}

/// The `tier2` block of the stack's cluster in `klio status --output json`.
pub fn tier2_status(stack: &Stack) -> Option<serde_json::Value> {
    let status = super::retention::status_json(stack);
    status["clusters"]
        .as_array()?
        .iter()
        .find(|c| c["cluster"] == stack.cluster.as_str())
        .map(|c| c["tier2"].clone())
}

/// The frontier's WAL end LSN, if any.
pub fn frontier_wal_end(stack: &Stack) -> Option<u64> {
    frontier(stack)?.get("wal_end")?.get("lsn")?.as_u64()
}

/// The object file holding the Tier 1 file `relative` (to the cluster directory).
pub fn object_of(s3: &S3Server, stack: &Stack, relative: &str) -> PathBuf {
    object_under(s3, "", stack, relative)
}

/// [`object_of`] on a server whose `tier2.prefix` is `prefix` (empty: none).
pub fn object_under(s3: &S3Server, prefix: &str, stack: &Stack, relative: &str) -> PathBuf {
    let key = format!("clusters/{}/{relative}", stack.cluster);
    if prefix.is_empty() {
        s3.object_file(&key)
    } else {
        s3.object_file(&format!("{prefix}/{key}"))
    }
}

/// How long the relay may take to catch up in a test, on a busy machine.
pub const RELAY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(180);

/// Waits until the relay of a server whose `tier2.prefix` is `prefix` has every sealed file
/// of the stack's cluster in Tier 2, byte-identical, and Tier 2's WAL end (the frontier's)
/// is at `wal_end` or beyond.
pub fn wait_until_relayed(stack: &Stack, s3: &S3Server, prefix: &str, wal_end: u64) {
    klio_testkit::wait_until("the relay to catch up", RELAY_DEADLINE, || {
        let missing = not_in_tier2_under(stack, s3, prefix);
        let reached = frontier_wal_end(stack).is_some_and(|end| end >= wal_end);
        (missing.is_empty() && reached).then_some(())
    });
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Every Tier 1 file the relay uploads as it is, relative to the cluster directory: the WAL
/// archive's files but journals and temporary files, the hash key and dictionary, indexed
/// packs and their indexes, and the catalog's files.
pub fn sealed_files(stack: &Stack) -> Vec<String> {
    let dir = cluster_dir(stack);
    let mut out = Vec::new();
    for n in names(&dir.join("wal")) {
        if !n.ends_with(".klio-journal") && !n.ends_with(".klio-tmp") {
            out.push(format!("wal/{n}"));
        }
    }
    let backups = dir.join("backups");
    if backups.join("block-hash-key").is_file() {
        out.push("backups/block-hash-key".to_owned());
    }
    if backups.join("block-dictionary").is_file() {
        out.push("backups/block-dictionary".to_owned());
    }
    let packs = names(&backups.join("packs"));
    for n in &packs {
        if let Some(id) = n.strip_suffix(".idx") {
            out.push(format!("backups/packs/{id}.pack"));
            out.push(format!("backups/packs/{n}"));
        }
    }
    for id in names(&backups.join("catalog")) {
        for f in names(&backups.join("catalog").join(&id)) {
            out.push(format!("backups/catalog/{id}/{f}"));
        }
    }
    out
}

/// The sealed files whose object is missing or holds other bytes.
pub fn not_in_tier2(stack: &Stack, s3: &S3Server) -> Vec<String> {
    not_in_tier2_under(stack, s3, "")
}

/// [`not_in_tier2`] on a server whose `tier2.prefix` is `prefix`.
pub fn not_in_tier2_under(stack: &Stack, s3: &S3Server, prefix: &str) -> Vec<String> {
    sealed_files(stack)
        .into_iter()
        .filter(|rel| {
            let local = std::fs::read(cluster_dir(stack).join(rel)).ok();
            let remote = std::fs::read(object_under(s3, prefix, stack, rel)).ok();
            local.is_none() || local != remote
        })
        .collect()
}

/// The names of the segment objects (24 hex digits, `.klio` or not) in the bucket.
pub fn segment_objects(s3: &S3Server, stack: &Stack) -> Vec<String> {
    names(&object_of(s3, stack, "wal"))
        .into_iter()
        .map(|n| n.trim_end_matches(".klio").to_owned())
        .filter(|n| n.len() == 24 && n.chars().all(|c| c.is_ascii_hexdigit()))
        .collect()
}

/// The segment names the frontier records, for segments of `segment_size` bytes.
pub fn frontier_segments(stack: &Stack, segment_size: u64) -> Vec<String> {
    let Some(f) = frontier(stack) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(timelines) = f.get("segments").and_then(|s| s.as_object()) {
        for (tl, runs) in timelines {
            let tl: u32 = tl.parse().expect("a timeline number");
            for run in runs.as_array().into_iter().flatten() {
                let first = run[0].as_u64().expect("a segment number");
                let last = run[1].as_u64().expect("a segment number");
                for s in first..=last {
                    out.push(super::retention::segment_name(tl, s, segment_size));
                }
            }
        }
    }
    out.sort();
    out
}

/// An LSN in PostgreSQL's notation as a number.
pub fn lsn(text: &str) -> u64 {
    text.trim()
        .parse::<klio_wal::Lsn>()
        .unwrap_or_else(|e| panic!("not an LSN {text:?}: {e}"))
        .0
}

/// The `tiers` of each backup `klio backup list --output json` prints, by id.
pub fn listed_tiers(exe: &Path, client_args: &[OsString]) -> Vec<(String, serde_json::Value)> {
    let out = run(Command::new(exe)
        .args(["backup", "list", "--output", "json"])
        .args(client_args));
    assert!(out.success(), "klio backup list:\n{}", out.stderr);
    let values: Vec<serde_json::Value> =
        serde_json::from_str(&out.stdout).expect("a JSON array of backups");
    values
        .into_iter()
        .map(|v| {
            let id = v["id"].as_str().expect("an id").to_owned();
            (id, v["tiers"].clone())
        })
        .collect()
}
