//! Criterion bench of the whole ingest path on loopback: a client streams WAL over QUIC with
//! mutual TLS to an in-process Klio server (on its own current-thread runtime, as
//! `klio server start` runs it), which appends, fsyncs and acknowledges; one iteration is one
//! 16 MiB segment from the first byte sent to its durable acknowledgement.
//!
//! `cargo bench --bench quic_ingest`
//!
//! Variants: plain archive and lz4 + AES-256-GCM sealing; 128 KiB frames (what send-wal gets
//! from PostgreSQL's walsender) and 2 MiB frames (wal-player's default block).

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use klio_client::server_link::{FramedRecv, FramedSend, ServerConnection, ServerEndpoint};
use klio_proto::klio::{ClusterName, Message, PROTOCOL_VERSION};
use klio_server::certs::{CertsDir, DEFAULT_CA_DAYS, DEFAULT_DAYS};
use klio_server::config::{EncryptionConfig, ServerConfig};
use klio_server::server::Server;
use klio_server::tls::TlsFiles;
use klio_wal::synth::{SynthConfig, SyntheticWal};
use klio_wal::{Lsn, SegmentSize, TimelineId};

const SEGMENT: u64 = 16 << 20;

/// A server on loopback and one client stream into it.
struct Loopback {
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<std::thread::JoinHandle<()>>,
    rt: tokio::runtime::Runtime,
    conn: Option<ServerConnection>,
    send: FramedSend,
    recv: FramedRecv,
    /// The same segment's bytes are sent at every position: the server does not read page
    /// headers on the ingest path, so this measures transport and storage only.
    segment: Bytes,
    next: Lsn,
}

impl Loopback {
    fn start(encrypted: bool) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let certs = CertsDir::new(dir.path().join("certs"));
        certs
            .init(
                &["localhost".to_owned(), "127.0.0.1".to_owned()],
                DEFAULT_CA_DAYS,
                DEFAULT_DAYS,
            )
            .expect("certificates");
        let cluster = ClusterName::new("bench").expect("name");
        certs
            .issue_client(&cluster, DEFAULT_DAYS)
            .expect("client certificate");
        let encryption = encrypted.then(|| {
            let key = dir.path().join("bench.key");
            klio_server::keys::generate_key_file(&key).expect("key file");
            EncryptionConfig {
                key,
                old_keys: Vec::new(),
                compression: klio_crypto::Compression::Lz4,
            }
        });
        let config = ServerConfig {
            listen: "127.0.0.1:0".parse().expect("address"),
            data_dir: dir.path().join("data"),
            tls: TlsFiles {
                ca: certs.ca_cert(),
                cert: certs.server_cert(),
                key: certs.server_key(),
            },
            encryption,
            metrics_listen: None,
            retention: Default::default(),
            mode: Default::default(),
            tier2: None,
            ingest_memory: klio_server::ingest_budget::DEFAULT_INGEST_MEMORY,
        };
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("server runtime");
            rt.block_on(async move {
                let server = Server::bind(&config).await.expect("bind");
                addr_tx
                    .send(server.local_addr().expect("address"))
                    .expect("send address");
                server
                    .run(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        let addr = addr_rx.recv().expect("server address");
        let endpoint = ServerEndpoint {
            address: addr.to_string(),
            server_name: Some("localhost".to_owned()),
            ca: certs.ca_cert(),
            cert: certs.client_cert(&cluster),
            key: certs.client_key(&cluster),
        };
        let size = SegmentSize::new(SEGMENT).expect("16 MiB");
        let synth = SyntheticWal::new(SynthConfig::new(size))
            .expect("synthetic WAL")
            .next_segment()
            .expect("one segment");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("client runtime");
        let (conn, send, recv) = rt.block_on(async {
            let conn = ServerConnection::connect(&endpoint).await.expect("connect");
            let (mut send, mut recv) = conn.open_stream().await.expect("stream");
            send.send(&Message::Hello {
                version: PROTOCOL_VERSION,
                cluster,
                system_id: SynthConfig::new(size).system_id,
                segment_size: size.bytes(),
            })
            .await
            .expect("hello");
            let welcome = recv.recv().await.expect("welcome");
            assert!(matches!(welcome, Some(Message::Welcome { .. })));
            send.send(&Message::StartWal {
                timeline: TimelineId::FIRST,
                start: Lsn(SEGMENT),
            })
            .await
            .expect("start");
            (conn, send, recv)
        });
        Self {
            _dir: dir,
            stop: Some(stop),
            server: Some(server),
            rt,
            conn: Some(conn),
            send,
            recv,
            segment: Bytes::from(synth.data),
            next: Lsn(SEGMENT),
        }
    }

    /// Streams one segment in `block`-byte frames; the time until it is acknowledged durable.
    fn ingest_segment(&mut self, block: usize) -> Duration {
        let start = self.next;
        let end = Lsn(start.0 + SEGMENT);
        let (send, recv, segment) = (&mut self.send, &mut self.recv, &self.segment);
        let took = self.rt.block_on(async move {
            let t0 = Instant::now();
            let sender = async {
                for (i, chunk) in segment.chunks(block).enumerate() {
                    send.send(&Message::WalData {
                        start: Lsn(start.0 + (i * block) as u64),
                        data: segment.slice_ref(chunk),
                    })
                    .await
                    .expect("send WAL");
                }
            };
            let acks = async {
                loop {
                    match recv.recv().await.expect("ack") {
                        Some(Message::Ack { durable, .. }) if durable >= end => break,
                        Some(Message::Ack { .. }) => {}
                        other => panic!("unexpected {other:?}"),
                    }
                }
            };
            tokio::join!(sender, acks);
            t0.elapsed()
        });
        self.next = end;
        took
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.send.finish();
            self.rt.block_on(conn.close());
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.server.take() {
            let _ = t.join();
        }
    }
}

fn quic_loopback_ingest(c: &mut Criterion) {
    let mut g = c.benchmark_group("quic_loopback_ingest");
    g.throughput(Throughput::Bytes(SEGMENT));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    for (storage, encrypted) in [("plain", false), ("lz4_aes", true)] {
        let mut lo = Loopback::start(encrypted);
        for block in [128 << 10, 2 << 20] {
            let id = BenchmarkId::new(storage, format!("{}KiB_frames", block >> 10));
            g.bench_function(id, |b| {
                b.iter_custom(|iters| (0..iters).map(|_| lo.ingest_segment(block)).sum())
            });
        }
    }
    g.finish();
}

criterion_group!(benches, quic_loopback_ingest);
criterion_main!(benches);
