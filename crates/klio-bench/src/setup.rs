//! Shared setup of the comparisons.

use std::path::Path;
use std::process::Command;

use klio_testkit::{KlioServer, TestCerts, TestDir, run_ok};

/// A Klio server as production runs it: every cluster's WAL compressed (lz4) and encrypted
/// (AES-256-GCM) at rest, with a new key file in `work`.
pub(crate) fn start_encrypted_server(exe: &Path, work: &TestDir, certs: &TestCerts) -> KlioServer {
    let key = work.path().join("bench.key");
    run_ok(Command::new(exe).args(["keys", "generate", "-o"]).arg(&key));
    // The server runs as the postgres user.
    run_ok(Command::new("chown").arg("postgres:postgres").arg(&key));
    KlioServer::start_with_args(
        exe,
        work,
        certs,
        &["--encryption-key".as_ref(), key.as_os_str()],
    )
}
