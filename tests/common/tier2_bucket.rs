//! The read tests' bucket: the servers' `tier2` section (under a key prefix), and the objects
//! as a test looks at, damages or deletes them.

use std::ffi::OsString;
use std::path::PathBuf;

use klio_testkit::{KlioServer, S3Server, Stack, TestDir};
use klio_tier2::{Credentials, ObjectStore, Tier2Config};

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

/// The server's YAML `tier2` section for `s3` under [`PREFIX`], the partial every second
/// (plus `mode: read-only` when `read_only`).
pub fn tier2_yaml(s3: &S3Server, read_only: bool) -> String {
    format!(
        "{}{}  prefix: {PREFIX}\n",
        if read_only { "mode: read-only\n" } else { "" },
        super::tier2::tier2_yaml(s3.endpoint(), "1s"),
    )
}

/// A runtime for the object store's calls from a synchronous test.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime")
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

/// A read-only server on its own data directory with the stack's certificates and key,
/// serving `s3`.
pub fn read_only_server(stack: &Stack, s3: &S3Server, work: &TestDir) -> KlioServer {
    let config = work.path().join("read-only.yaml");
    std::fs::write(&config, tier2_yaml(s3, true)).expect("write the read-only config");
    let mut args: Vec<OsString> = vec!["--config".into(), config.into()];
    if let Some(key) = &stack.key {
        args.extend(["--encryption-key".into(), key.path.clone().into()]);
    }
    let args: Vec<&std::ffi::OsStr> = args.iter().map(OsString::as_os_str).collect();
    KlioServer::start_with_args(&stack.exe, work, &stack.certs, &args)
}

/// Client settings of the stack's cluster against `server`.
pub fn client_args_for(stack: &Stack, server: &KlioServer) -> Vec<OsString> {
    let mut args = server.client_args(&stack.certs, &stack.cluster);
    args.extend(["--cluster".into(), stack.cluster.clone().into()]);
    args
}

/// Waits until the primary's relay has everything of the stack's cluster in Tier 2, up to
/// PostgreSQL's current WAL position.
pub fn relayed(stack: &Stack, s3: &S3Server) {
    super::tier2::wait_until_relayed(
        stack,
        s3,
        PREFIX,
        super::tier2::lsn(&stack.pg.current_lsn()),
    );
}
