//! Tier 2 for the read tests, filled by hand: what the relay would upload, uploaded at once.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use klio_testkit::S3Server;
use klio_tier2::{Credentials, ObjectStore, PutOptions, Tier2Config};

/// The object key prefix the tests' servers use.
pub const PREFIX: &str = "site-a";

/// The client configuration for `s3`'s bucket under [`PREFIX`].
pub fn tier2_config(s3: &S3Server) -> Tier2Config {
    let mut config = Tier2Config::new(S3Server::REGION, S3Server::BUCKET);
    config.endpoint = Some(s3.endpoint().to_owned());
    config.key_prefix = PREFIX.to_owned();
    config.credentials = Credentials::Static {
        access_key_id: S3Server::ACCESS_KEY_ID.to_owned(),
        secret_access_key: S3Server::SECRET_ACCESS_KEY.to_owned(),
    };
    config
}

/// The server's YAML `tier2` section for `s3` (plus `mode: read-only` when `read_only`).
pub fn tier2_yaml(s3: &S3Server, read_only: bool) -> String {
    format!(
        "{}tier2:\n  endpoint: {}\n  region: {}\n  bucket: {}\n  prefix: {PREFIX}\n  \
         access_key_id: {}\n  secret_access_key: {}\n",
        if read_only { "mode: read-only\n" } else { "" },
        s3.endpoint(),
        S3Server::REGION,
        S3Server::BUCKET,
        S3Server::ACCESS_KEY_ID,
        S3Server::SECRET_ACCESS_KEY,
    )
}

/// A runtime for the object store's calls from a synchronous test.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime")
}

/// The files under `dir`, recursively, as paths relative to it.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(dir.join(&rel)) else {
            continue;
        };
        for entry in entries {
            let entry = entry.expect("directory entry");
            let path = rel.join(entry.file_name());
            if entry.file_type().expect("file type").is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Uploads every file under `<data_dir>/clusters/<c>/{wal,backups}` as the object of the same
/// relative path (`clusters/<c>/...`, the layout Tier 2 mirrors Tier 1 in); journals go up
/// whole (a zero-padded journal is a valid journal too). A file a running server removes
/// meanwhile (a journal it finished) is skipped. Returns the keys uploaded.
pub fn mirror_to_tier2(data_dir: &Path, s3: &S3Server) -> Vec<String> {
    let rt = runtime();
    let store = rt
        .block_on(ObjectStore::connect(&tier2_config(s3)))
        .expect("connect to the test S3 server");
    let mut keys = Vec::new();
    for rel in files_under(&data_dir.join("clusters")) {
        let mut parts = rel.iter();
        let (Some(_cluster), Some(area)) = (parts.next(), parts.next()) else {
            continue;
        };
        if area != "wal" && area != "backups" {
            continue;
        }
        // Backups being written or deleted are not in the catalog: the relay skips them too.
        let in_flight = matches!(
            parts.next().and_then(|p| p.to_str()),
            Some("staging" | "deleted")
        );
        if in_flight || rel.to_string_lossy().ends_with(".klio-tmp") {
            continue;
        }
        let key = format!("clusters/{}", rel.to_str().expect("UTF-8 path"));
        let bytes = match std::fs::read(data_dir.join("clusters").join(&rel)) {
            Ok(bytes) => bytes,
            // A running server finished a journal (or a temporary file) since the listing.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("read {}: {e}", rel.display()),
        };
        let _stored = rt
            .block_on(store.put(&key, Bytes::from(bytes), PutOptions::default()))
            .unwrap_or_else(|e| panic!("upload {key}: {e}"));
        keys.push(key);
    }
    keys
}

/// The keys in the bucket under [`PREFIX`].
pub fn tier2_keys(s3: &S3Server) -> Vec<String> {
    let rt = runtime();
    let store = rt
        .block_on(ObjectStore::connect(&tier2_config(s3)))
        .expect("connect to the test S3 server");
    rt.block_on(store.list(""))
        .expect("list the bucket")
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

/// The file s3s-fs keeps the object `key` (under [`PREFIX`]) in.
pub fn object_file(s3: &S3Server, key: &str) -> PathBuf {
    s3.object_file(&format!("{PREFIX}/{key}"))
}

/// Deletes the object `key` from the bucket.
pub fn delete_object(s3: &S3Server, key: &str) {
    let rt = runtime();
    let store = rt
        .block_on(ObjectStore::connect(&tier2_config(s3)))
        .expect("connect to the test S3 server");
    rt.block_on(store.delete(key)).expect("delete an object");
}
