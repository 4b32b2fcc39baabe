//! Identity and isolation: a client reaches only the cluster its certificate names; no
//! certificate, another CA, or another cluster's certificate gets nothing, for reads and
//! writes; a different system identifier is refused.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use klio_client::server_link::{ServerConnection, ServerEndpoint, ServerLinkError};
use klio_proto::klio::{ClusterName, ErrorCode, Message, PROTOCOL_VERSION};
use klio_server::certs::{CertsDir, DEFAULT_CA_DAYS, DEFAULT_DAYS};
use klio_server::tls::TlsFiles;
use klio_server::{Server, ServerConfig};
use klio_wal::{Lsn, TimelineId};

struct Setup {
    _dir: tempfile::TempDir,
    certs: CertsDir,
    other_ca: CertsDir,
    address: String,
    metrics: String,
    data: PathBuf,
}

fn setup(rt: &tokio::runtime::Runtime) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let certs = CertsDir::new(dir.path().join("certs"));
    certs
        .init(
            &["localhost".to_owned(), "127.0.0.1".to_owned()],
            DEFAULT_CA_DAYS,
            DEFAULT_DAYS,
        )
        .unwrap();
    for c in ["pg1", "pg2"] {
        certs
            .issue_client(&ClusterName::new(c).unwrap(), DEFAULT_DAYS)
            .unwrap();
    }
    let other_ca = CertsDir::new(dir.path().join("other"));
    other_ca
        .init(&["localhost".to_owned()], DEFAULT_CA_DAYS, DEFAULT_DAYS)
        .unwrap();
    other_ca
        .issue_client(&ClusterName::new("pg1").unwrap(), DEFAULT_DAYS)
        .unwrap();
    let data = dir.path().join("data");
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.clone(),
        tls: TlsFiles {
            ca: certs.ca_cert(),
            cert: certs.server_cert(),
            key: certs.server_key(),
        },
        encryption: None,
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        retention: Default::default(),
        mode: Default::default(),
        tier2: None,
        ingest_memory: klio_server::ingest_budget::DEFAULT_INGEST_MEMORY,
    };
    let server = rt.block_on(Server::bind(&config)).unwrap();
    let address = server.local_addr().unwrap().to_string();
    let metrics = server.metrics_addr().unwrap().to_string();
    rt.spawn(server.run(std::future::pending()));
    Setup {
        _dir: dir,
        certs,
        other_ca,
        address,
        metrics,
        data,
    }
}

fn endpoint(s: &Setup, ca: &Path, dir: &CertsDir, cluster: &str) -> ServerEndpoint {
    let c = ClusterName::new(cluster).unwrap();
    ServerEndpoint {
        address: s.address.clone(),
        server_name: Some("localhost".to_owned()),
        ca: ca.to_owned(),
        cert: dir.client_cert(&c),
        key: dir.client_key(&c),
    }
}

fn hello(cluster: &str, system_id: u64) -> Message {
    Message::Hello {
        version: PROTOCOL_VERSION,
        cluster: ClusterName::new(cluster).unwrap(),
        system_id,
        segment_size: 1 << 20,
    }
}

/// Opens a stream, sends `msgs`, returns the first answer.
async fn ask(ep: &ServerEndpoint, msgs: &[Message]) -> Result<Option<Message>, ServerLinkError> {
    let conn = ServerConnection::connect(ep).await?;
    let (mut send, mut recv) = conn.open_stream().await?;
    for m in msgs {
        send.push(m);
    }
    send.flush().await?;
    let answer = recv.recv().await;
    conn.close().await;
    answer
}

fn tli1() -> TimelineId {
    TimelineId::FIRST
}

#[test]
fn clients_reach_only_their_own_cluster() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let s = setup(&rt);
    let ca = s.certs.ca_cert();
    let pg1 = endpoint(&s, &ca, &s.certs, "pg1");
    let pg2 = endpoint(&s, &ca, &s.certs, "pg2");
    rt.block_on(async {
        // pg1 writes some WAL.
        let conn = ServerConnection::connect(&pg1).await.unwrap();
        let (mut send, mut recv) = conn.open_stream().await.unwrap();
        send.send(&hello("pg1", 42)).await.unwrap();
        assert!(matches!(
            recv.recv().await.unwrap(),
            Some(Message::Welcome { durable: None, .. })
        ));
        send.push(&Message::StartWal {
            timeline: tli1(),
            start: Lsn(1 << 20),
        });
        send.push(&Message::WalData {
            start: Lsn(1 << 20),
            data: Bytes::from(vec![7u8; 5000]),
        });
        send.flush().await.unwrap();
        let ack = recv.recv().await.unwrap();
        assert_eq!(
            ack,
            Some(Message::Ack {
                timeline: tli1(),
                durable: Lsn((1 << 20) + 5000)
            })
        );
        send.finish();
        conn.close().await;

        // pg1 reads its position.
        let pos = ask(&pg1, &[Message::GetPosition { timeline: None }])
            .await
            .unwrap();
        assert_eq!(
            pos,
            Some(Message::Position {
                timeline: Some(tli1()),
                durable: Some(Lsn((1 << 20) + 5000))
            })
        );

        // pg2's certificate sees nothing of pg1 ...
        let pos = ask(
            &pg2,
            &[Message::GetPosition {
                timeline: Some(tli1()),
            }],
        )
        .await
        .unwrap();
        assert_eq!(
            pos,
            Some(Message::Position {
                timeline: Some(tli1()),
                durable: None
            })
        );
        // ... and cannot write as pg1.
        let e = ask(&pg2, &[hello("pg1", 42)]).await.unwrap_err();
        assert!(
            matches!(
                e,
                ServerLinkError::Refused {
                    code: ErrorCode::Unauthorized,
                    ..
                }
            ),
            "{e}"
        );

        // A different system identifier for pg1 is refused.
        let e = ask(&pg1, &[hello("pg1", 43)]).await.unwrap_err();
        assert!(
            matches!(
                e,
                ServerLinkError::Refused {
                    code: ErrorCode::SystemIdMismatch,
                    ..
                }
            ),
            "{e}"
        );

        // A certificate from another CA: Klio's own client refuses to present it (its CA did
        // not sign it) ...
        let foreign = endpoint(&s, &ca, &s.other_ca, "pg1");
        let e = ask(&foreign, &[hello("pg1", 42)]).await.unwrap_err();
        assert!(matches!(e, ServerLinkError::Identity(_)), "{e}");
        // ... and a client that presents it anyway gets no connection, for reads or writes.
        let pg1 = ClusterName::new("pg1").unwrap();
        let foreign_identity = (s.other_ca.client_cert(&pg1), s.other_ca.client_key(&pg1));
        for msg in [Message::GetPosition { timeline: None }, hello("pg1", 42)] {
            let e = connect_raw(&s.address, &ca, Some(&foreign_identity), msg).await;
            assert!(
                e.is_err(),
                "a certificate from another CA was accepted: {e:?}"
            );
        }

        // No certificate at all: the handshake fails.
        let e = connect_raw(
            &s.address,
            &ca,
            None,
            Message::GetPosition { timeline: None },
        )
        .await;
        assert!(
            e.is_err(),
            "a connection without a client certificate was accepted"
        );

        // The metrics count the refusals, under the cluster that misbehaved; the two foreign
        // certificates and the missing one fail in the handshake.
        let counted = |body: &str, series: &str| -> f64 {
            body.lines()
                .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
                .unwrap_or(0.0)
        };
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        let body = loop {
            let page =
                klio_metrics::http_get(&s.metrics, "/metrics", std::time::Duration::from_secs(5))
                    .await
                    .unwrap();
            let settled = counted(
                &page.body,
                "klio_connections_refused_total{reason=\"handshake\"}",
            ) >= 3.0
                && counted(&page.body, "klio_connected_clients{cluster=\"pg1\"}") == 0.0;
            if settled || tokio::time::Instant::now() > deadline {
                break page.body;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        for (series, want) in [
            ("klio_connections_refused_total{reason=\"handshake\"}", 3.0),
            (
                "klio_errors_total{cluster=\"pg2\",kind=\"unauthorized\"}",
                1.0,
            ),
            (
                "klio_errors_total{cluster=\"pg1\",kind=\"system_id_mismatch\"}",
                1.0,
            ),
            ("klio_connected_clients{cluster=\"pg1\"}", 0.0),
            ("klio_wal_acknowledged_bytes_total{cluster=\"pg1\"}", 5000.0),
        ] {
            assert_eq!(counted(&body, series), want, "{series} in\n{body}");
        }
        assert!(
            !body.contains("klio_wal_received_bytes_total{cluster=\"pg2\"}"),
            "{body}"
        );
    });
    // Nothing was written for pg2, and pg1's archive holds only pg1's data.
    assert!(
        !s.data
            .join("clusters/pg2/wal")
            .join("000000010000000000000001.klio-journal")
            .exists()
    );
    assert!(s.data.join("clusters/pg1/wal").exists());
}

/// A QUIC client that trusts the server and presents `identity` (certificate and key files),
/// or no certificate, without checking it first as Klio's client does; sends `msg`.
async fn connect_raw(
    address: &str,
    ca: &Path,
    identity: Option<&(PathBuf, PathBuf)>,
    msg: Message,
) -> Result<Option<Message>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut tls = match identity {
        Some((cert, key)) => tls
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => tls.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![klio_proto::klio::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("0.0.0.0:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let conn = endpoint
        .connect(address.parse().unwrap(), "localhost")
        .map_err(|e| klio_wal::ErrorChain(&e).to_string())?
        .await
        .map_err(|e| klio_wal::ErrorChain(&e).to_string())?;
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| klio_wal::ErrorChain(&e).to_string())?;
    let mut buf = bytes::BytesMut::new();
    msg.encode(&mut buf);
    send.write_all(&buf)
        .await
        .map_err(|e| klio_wal::ErrorChain(&e).to_string())?;
    let mut out = vec![0u8; 64];
    match recv.read(&mut out).await {
        Ok(Some(n)) if n > 0 => Ok(None),
        Ok(_) => Err("closed".to_owned()),
        Err(e) => Err(klio_wal::ErrorChain(&e).to_string()),
    }
}

#[test]
fn a_client_certificate_past_its_validity_is_refused_in_the_handshake_saying_it_expired() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let s = setup(&rt);
    let ca = s.certs.ca_cert();
    let certs = klio_testkit::TestCerts {
        dir: ca.parent().unwrap().to_owned(),
    };
    let expired = certs.issue_expired_client("pg1");
    let e = rt
        .block_on(connect_raw(
            &s.address,
            &ca,
            Some(&expired),
            Message::GetPosition { timeline: None },
        ))
        .unwrap_err();
    assert!(e.to_lowercase().contains("expired"), "{e}");
}
