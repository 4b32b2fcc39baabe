//! [`S3Server`]: a real S3-compatible server on 127.0.0.1 for Tier 2's tests, no mocks.
//!
//! It is s3s-fs (objects as plain files under a root directory) behind s3s's SigV4 checks,
//! served by hyper on its own tokio runtime, so it works under any test runtime or none: over
//! plain HTTP ([`S3Server::start`]) or over TLS with a certificate from a fresh test CA
//! ([`S3Server::start_tls`], rustls on ring). The bucket [`S3Server::BUCKET`] exists from the
//! start; objects live at `<root>/<bucket>/<key>`, where a test can damage them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// Serves S3 requests on one connection until the client closes it.
async fn serve<Io>(io: Io, service: S3Service)
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
