//! [`S3Server`]: a real S3-compatible server on 127.0.0.1 for Tier 2's tests, no mocks.
//!
//! It is s3s-fs (objects as plain files under a root directory) behind s3s's SigV4 checks,
//! served over plain HTTP by hyper on its own tokio runtime, so it works under any test
//! runtime or none. The bucket [`S3Server::BUCKET`] exists from the start; objects live at
//! `<root>/<bucket>/<key>`, where a test can damage them.

use std::path::{Path, PathBuf};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnectionBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use s3s_fs::FileSystem;

use crate::TestDir;

/// An S3-compatible server on a free port of 127.0.0.1 with static credentials; stopped and
/// its files removed when dropped.
#[derive(Debug)]
pub struct S3Server {
    endpoint: String,
    root: PathBuf,
    /// Serves the connections; shut down on drop.
    runtime: Option<tokio::runtime::Runtime>,
    _dir: TestDir,
}

impl S3Server {
    /// The bucket created at start.
    pub const BUCKET: &'static str = "klio-test";
    /// The access key id the server accepts.
    pub const ACCESS_KEY_ID: &'static str = "klio-test-access-key";
    /// The secret access key the server accepts.
    pub const SECRET_ACCESS_KEY: &'static str = "klio-test-secret-key";
    /// The region to sign for (s3s accepts any).
    pub const REGION: &'static str = "us-east-1";

    /// Starts a server with a fresh root directory and the bucket [`Self::BUCKET`].
    pub fn start() -> Self {
        let dir = TestDir::new("s3");
        let root = dir.subdir("root");
        std::fs::create_dir_all(root.join(Self::BUCKET))
            .expect("create the test bucket's directory");

        let file_system = FileSystem::new(&root).expect("open the s3s-fs root");
        let mut builder = S3ServiceBuilder::new(file_system);
        builder.set_auth(SimpleAuth::from_single(
            Self::ACCESS_KEY_ID,
            Self::SECRET_ACCESS_KEY,
        ));
        let service = builder.build();

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("s3-server")
            .enable_all()
            .build()
            .expect("start the S3 server's runtime");
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind the S3 server's port");
        listener
            .set_nonblocking(true)
            .expect("make the S3 server's socket non-blocking");
        let address = listener.local_addr().expect("read the S3 server's address");
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener)
                .expect("register the S3 server's socket");
            let connections = ConnectionBuilder::new(TokioExecutor::new());
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    // Out of file descriptors, say: wait rather than spin.
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                };
                let connection = connections
                    .serve_connection(TokioIo::new(socket), service.clone())
                    .into_owned();
                tokio::spawn(async move {
                    // A client that hangs up mid-request ends only its own connection.
                    let _ = connection.await;
                });
            }
        });

        Self {
            endpoint: format!("http://{address}"),
            root,
            runtime: Some(runtime),
            _dir: dir,
        }
    }

    /// The endpoint URL, `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The directory s3s-fs keeps its buckets in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file that holds the object under `full_key` (prefix included) in [`Self::BUCKET`].
    pub fn object_file(&self, full_key: &str) -> PathBuf {
        self.root.join(Self::BUCKET).join(full_key)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        // Without waiting for connections in flight, and allowed inside a test's own runtime.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
