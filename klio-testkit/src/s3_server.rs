//! [`S3Server`]: a real S3-compatible server on 127.0.0.1 for Tier 2's tests, no mocks.
//!
//! It is s3s-fs (objects as plain files under a root directory) behind s3s's SigV4 checks,
//! served by hyper on its own tokio runtime, so it works under any test runtime or none: over
//! plain HTTP ([`S3Server::start`]) or over TLS with a certificate from a fresh test CA
//! ([`S3Server::start_tls`], rustls on ring). The bucket [`S3Server::BUCKET`] exists from the
//! start; objects live at `<root>/<bucket>/<key>`, where a test can damage them.
//!
//! Faults are injected in the server itself ([`S3Server::faults`]): `503 SlowDown` answers,
//! connections dropped in the middle of a request's body (a reset mid-upload), and a stall that
//! holds every request until lifted. It also counts the requests it served, by kind, so a test
//! can check what a client asked (no `ListObjectsV2` on a hot path, say).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use http_body_util::BodyExt;
use hyper::body::Incoming;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnectionBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};
use s3s_fs::FileSystem;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;

use crate::TestDir;

/// An S3-compatible server on a free port of 127.0.0.1 with static credentials; stopped and
/// its files removed when dropped.
#[derive(Debug)]
pub struct S3Server {
    endpoint: String,
    root: PathBuf,
    /// The PEM file of the CA that signed the TLS server's certificate.
    ca_file: Option<PathBuf>,
    /// What the server is told to do wrong, and what it served.
    faults: Arc<S3Faults>,
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

    /// Starts a plain-HTTP server with a fresh root directory and the bucket [`Self::BUCKET`].
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Starts a server like [`Self::start`], but over TLS: its certificate names `127.0.0.1`
    /// and `localhost` and is signed by a fresh CA, written to [`Self::ca_file`].
    pub fn start_tls() -> Self {
        Self::start_with(Some(TestCa::new()))
    }

    fn start_with(tls: Option<TestCa>) -> Self {
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
        let faults = Arc::new(S3Faults::new());
        let service = FaultyService {
            inner: builder.build(),
            faults: faults.clone(),
        };

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
        let (scheme, acceptor, ca_file) = match tls {
            Some(ca) => {
                let ca_file = dir.path().join("s3-ca.pem");
                std::fs::write(&ca_file, &ca.ca_pem).expect("write the S3 server's CA file");
                ("https", Some(ca.acceptor), Some(ca_file))
            }
            None => ("http", None, None),
        };
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener)
                .expect("register the S3 server's socket");
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    // Out of file descriptors, say: wait rather than spin.
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                };
                let service = service.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A client that fails its handshake or hangs up mid-request ends only its
                    // own connection.
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(socket).await {
                                serve(stream, service).await;
                            }
                        }
                        None => serve(socket, service).await,
                    }
                });
            }
        });

        Self {
            endpoint: format!("{scheme}://{address}"),
            root,
            ca_file,
            faults,
            runtime: Some(runtime),
            _dir: dir,
        }
    }

    /// The endpoint URL, `http://127.0.0.1:<port>` (`https://` for [`Self::start_tls`]).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The PEM file of the CA that a TLS server's certificate chains to; `None` for plain HTTP.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// The server's fault switches and request counters.
    pub fn faults(&self) -> &S3Faults {
        &self.faults
    }

    /// The directory s3s-fs keeps its buckets in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file that holds the object under `full_key` (prefix included) in [`Self::BUCKET`].
    pub fn object_file(&self, full_key: &str) -> PathBuf {
        self.root.join(Self::BUCKET).join(full_key)
    }

    /// Removes the metadata (Klio's CRC32C among it) that s3s-fs keeps in a file beside every
    /// object, as an upload cut short between writing the object and its metadata leaves it;
    /// the number of objects that lost theirs.
    pub fn drop_all_metadata(&self) -> usize {
        let entries = std::fs::read_dir(&self.root).expect("list the S3 server's root");
        let mut dropped = 0;
        for entry in entries {
            let path = entry.expect("an entry of the S3 server's root").path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.starts_with(".bucket-") && name.ends_with(".metadata.json") {
                std::fs::remove_file(&path).expect("remove an object's metadata");
                dropped += 1;
            }
        }
        dropped
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

/// Faults to inject and counts of what was served, shared with the server's connections.
#[derive(Debug)]
pub struct S3Faults {
    /// The next this many requests are answered `503 SlowDown`.
    slow_down: AtomicU32,
    /// The next this many requests have their connection dropped after the first frame of
    /// their body (or at once when they have none).
    resets: AtomicU32,
    /// While true, requests wait before they are served.
    stalled: tokio::sync::watch::Sender<bool>,
    requests: AtomicU64,
    lists: AtomicU64,
    multipart_starts: AtomicU64,
    injected: AtomicU64,
}

impl S3Faults {
    fn new() -> Self {
        Self {
            slow_down: AtomicU32::new(0),
            resets: AtomicU32::new(0),
            stalled: tokio::sync::watch::channel(false).0,
            requests: AtomicU64::new(0),
            lists: AtomicU64::new(0),
            multipart_starts: AtomicU64::new(0),
            injected: AtomicU64::new(0),
        }
    }

    /// Answers the next `n` requests with `503 SlowDown`, as S3 does when throttling.
    pub fn slow_down_next(&self, n: u32) {
        self.slow_down.store(n, Ordering::SeqCst);
    }

    /// Drops the connection of each of the next `n` requests after the first frame of its body:
    /// the client sees a reset in the middle of its upload.
    pub fn reset_next(&self, n: u32) {
        self.resets.store(n, Ordering::SeqCst);
    }

    /// Holds every request (new and waiting) until [`Self::resume`]: a server that stalls.
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Lets held and new requests through.
    pub fn resume(&self) {
        self.stalled.send_replace(false);
    }

    /// Requests received so far, faulted ones included.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// `ListObjects`/`ListObjectsV2` requests received so far.
    pub fn list_requests(&self) -> u64 {
        self.lists.load(Ordering::SeqCst)
    }

    /// `CreateMultipartUpload` requests received so far.
    pub fn multipart_starts(&self) -> u64 {
        self.multipart_starts.load(Ordering::SeqCst)
    }

    /// Requests that were answered with a fault instead of being served.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    /// Takes one from `counter` if it is above zero.
    fn take(counter: &AtomicU32) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// s3s-fs's service behind the fault switches.
#[derive(Clone)]
struct FaultyService {
    inner: S3Service,
    faults: Arc<S3Faults>,
}

type ServiceFuture =
    Pin<Box<dyn Future<Output = Result<s3s::HttpResponse, s3s::HttpError>> + Send>>;

impl hyper::service::Service<hyper::Request<Incoming>> for FaultyService {
    type Response = s3s::HttpResponse;
    type Error = s3s::HttpError;
    type Future = ServiceFuture;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let faults = &this.faults;
            faults.requests.fetch_add(1, Ordering::SeqCst);
            let is_list = request.method() == hyper::Method::GET
                && request.uri().path().trim_matches('/').split('/').count() == 1
                && !request.uri().path().trim_matches('/').is_empty();
            if is_list {
                faults.lists.fetch_add(1, Ordering::SeqCst);
            }
            let starts_multipart = request.method() == hyper::Method::POST
                && request
                    .uri()
                    .query()
                    .is_some_and(|q| q.split('&').any(|p| p == "uploads" || p == "uploads="));
            if starts_multipart {
                faults.multipart_starts.fetch_add(1, Ordering::SeqCst);
            }
            let mut stalled = faults.stalled.subscribe();
            // The sender lives as long as the faults, so waiting cannot fail.
            let _ = stalled.wait_for(|stalled| !stalled).await;
            if S3Faults::take(&faults.slow_down) {
                faults.injected.fetch_add(1, Ordering::SeqCst);
                let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
                            <Message>Please reduce your request rate.</Message></Error>";
                let mut response = hyper::Response::new(s3s::Body::from(body.to_owned()));
                *response.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                return Ok(response);
            }
            if S3Faults::take(&faults.resets) {
                faults.injected.fetch_add(1, Ordering::SeqCst);
                let mut body = request.into_body();
                let _ = body.frame().await;
                return Err(s3s::HttpError::new(
                    "injected fault: connection reset mid-request".into(),
                ));
            }
            hyper::service::Service::call(&this.inner, request).await
        })
    }
}

/// Serves S3 requests on one connection until the client closes it.
async fn serve<Io>(io: Io, service: FaultyService)
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _ = ConnectionBuilder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// A fresh CA and a server certificate it signed for `127.0.0.1` and `localhost`.
struct TestCa {
    ca_pem: String,
    acceptor: TlsAcceptor,
}

impl TestCa {
    fn new() -> Self {
        let ca_key = rcgen::KeyPair::generate().expect("generate the test CA's key");
        let mut ca_params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("test CA parameters");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Klio test S3 CA");
        let ca = ca_params.self_signed(&ca_key).expect("sign the test CA");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);

        let key = rcgen::KeyPair::generate().expect("generate the S3 server's key");
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("S3 server certificate parameters");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let certificate = params
            .signed_by(&key, &issuer)
            .expect("sign the S3 server's certificate");
        let key = rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der());

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("rustls's default protocol versions")
            .with_no_client_auth()
            .with_single_cert(vec![certificate.der().clone()], key.into())
            .expect("the S3 server's certificate and key");
        Self {
            ca_pem: ca.pem(),
            acceptor: TlsAcceptor::from(Arc::new(config)),
        }
    }
}
