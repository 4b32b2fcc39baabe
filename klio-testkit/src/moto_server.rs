//! [`MotoServer`]: moto's S3 server on 127.0.0.1, for the tests that need S3 Object Lock
//! enforced (s3s-fs does not enforce it). `scripts/install-deps` installs it from PyPI into
//! `.test-tools/moto`; `KLIO_MOTO_SERVER` names another `moto_server` executable.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::{BackgroundProcess, TestDir, free_tcp_port, wait_until};

/// A moto S3 server on a free port with the bucket [`Self::BUCKET`], created with Object Lock
/// enabled; killed when dropped. moto accepts any credentials.
#[derive(Debug)]
pub struct MotoServer {
    endpoint: String,
    _process: BackgroundProcess,
    _dir: TestDir,
}

impl MotoServer {
    /// The bucket created at start, with Object Lock (and so versioning) on.
    pub const BUCKET: &'static str = "klio-locked";
    /// The region to sign for.
    pub const REGION: &'static str = "us-east-1";

    /// Starts the server and creates the bucket; panics with what to run when moto is missing.
    pub fn start() -> Self {
        let exe = moto_executable();
        assert!(
            exe.is_file(),
            "moto's S3 server is not installed at {}: run scripts/install-deps (it installs \
             moto[server] from PyPI into .test-tools/moto), or set KLIO_MOTO_SERVER",
            exe.display()
        );
        let dir = TestDir::new("moto");
        let port = free_tcp_port();
        let process = BackgroundProcess::spawn(
            "moto_server",
            Command::new(&exe)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .current_dir(dir.path()),
            &dir.path().join("moto.log"),
        );
        let address = format!("127.0.0.1:{port}");
        let create_bucket = format!(
            "PUT /{} HTTP/1.1\r\nHost: {address}\r\nx-amz-bucket-object-lock-enabled: true\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n",
            Self::BUCKET
        );
        // moto needs a few seconds to import before it answers.
        let answer = wait_until(
            "moto's S3 server to create the test bucket",
            Duration::from_secs(120),
            || http_exchange(&address, &create_bucket),
        );
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "moto refused to create the bucket: {answer}"
        );
        Self {
            endpoint: format!("http://{address}"),
            _process: process,
            _dir: dir,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

/// `.test-tools/moto/bin/moto_server` of this workspace, or `KLIO_MOTO_SERVER`.
fn moto_executable() -> PathBuf {
    if let Some(path) = std::env::var_os("KLIO_MOTO_SERVER") {
        return PathBuf::from(path);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.test-tools/moto/bin/moto_server")
}

/// Sends `request` and returns the whole answer, or `None` while nothing listens.
fn http_exchange(address: &str, request: &str) -> Option<String> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    (!answer.is_empty()).then_some(answer)
}
