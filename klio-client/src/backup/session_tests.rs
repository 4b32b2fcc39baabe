//! `backup::run` and the catalog client against real PostgreSQL 15 and a stand-in Klio server
//! that keeps blocks in memory and checks the client's side of the protocol: blocks match
//! their hashes, no file is announced before its blocks, an abandoned backup sends `Error`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use klio_crypto::{BlockHashAlgorithm, BlockHashKey};
use klio_proto::klio::{
    ALPN, BackupFinish, BackupInfo, BackupStatus, BlockHash, CATALOG_SCHEMA, CatalogTablespace,
    ErrorCode, FileEntry, FrameDecoder, Message, PROTOCOL_VERSION,
};
use klio_testkit::{PgOptions, PgServer, as_postgres, pg_bin, run_ok};

use super::{BackupError, BackupOptions, BackupRef, CatalogError, catalog};
use crate::ConnParams;
use crate::client_config::test_pki::Pki;
use crate::client_config::{ClientConfig, ClientSettings};

const KEY: [u8; 32] = [9; 32];
const CLUSTER: &str = "pg-main";

/// What the stand-in server saw of one backup session.
#[derive(Debug, Default)]
struct SessionLog {
    system_id: Option<u64>,
    files: Vec<FileEntry>,
    manifest: Vec<u8>,
    puts: usize,
    put_bytes: u64,
    finish: Option<BackupFinish>,
    error: Option<(ErrorCode, String)>,
    /// Broken protocol rules, as text: must stay empty.
    violations: Vec<String>,
}

#[derive(Debug, Default)]
struct Store {
    blocks: HashMap<BlockHash, Vec<u8>>,
    catalog: Vec<BackupInfo>,
    sessions: Vec<Arc<Mutex<SessionLog>>>,
}

/// A QUIC server on 127.0.0.1 speaking the backup and catalog sessions, in memory.
struct StandIn {
    port: u16,
    store: Arc<Mutex<Store>>,
}

impl StandIn {
    fn start(pki: &Pki) -> Self {
        let (cert, key) = pki.localhost_server();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![rustls::pki_types::CertificateDer::from(cert)],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.into()),
            )
            .unwrap();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
        let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
        let port = endpoint.local_addr().unwrap().port();
        let store = Arc::new(Mutex::new(Store::default()));
        let shared = store.clone();
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let store = shared.clone();
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    while let Ok((send, recv)) = conn.accept_bi().await {
                        tokio::spawn(serve(send, recv, store.clone()));
                    }
                });
            }
        });
        Self { port, store }
    }

    fn config(&self, pki: &Pki) -> ClientConfig {
        let settings = ClientSettings {
            address: Some(format!("127.0.0.1:{}", self.port)),
            server_name: Some("localhost".to_owned()),
            ..pki.flags(CLUSTER)
        };
        ClientConfig::from_settings(&settings).unwrap()
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap()
    }

    /// The log of the `n`th backup session, once it has an outcome (finish or error).
    async fn session(&self, n: usize) -> Arc<Mutex<SessionLog>> {
        for _ in 0..500 {
            let log = self.store().sessions.get(n).cloned();
            if let Some(log) = log {
                let done = {
                    let l = log.lock().unwrap();
                    l.finish.is_some() || l.error.is_some()
                };
                if done {
                    return log;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("backup session {n} has no outcome");
    }
}

async fn serve(mut send: quinn::SendStream, mut recv: quinn::RecvStream, store: Arc<Mutex<Store>>) {
    let key = BlockHashKey::new(BlockHashAlgorithm::Blake3, KEY);
    let mut decoder = FrameDecoder::new();
    let mut buf = BytesMut::new();
    let mut log: Option<Arc<Mutex<SessionLog>>> = None;
    loop {
        let message = loop {
            match decoder.decode(&mut buf) {
                Ok(Some(m)) => break Some(m),
                Ok(None) => {}
                Err(e) => panic!("the client sent a malformed frame: {e}"),
            }
            match recv.read_chunk(1 << 20, true).await {
                Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
                _ => break None,
            }
        };
        let Some(message) = message else { return };
        let replies = {
            let mut store = store.lock().unwrap();
            answer(message, &key, &mut store, &mut log)
        };
        let mut out = BytesMut::new();
        for r in &replies {
            r.encode(&mut out);
        }
        if !out.is_empty() && send.write_all(&out).await.is_err() {
            return;
        }
    }
}

fn entry_message(info: &BackupInfo) -> Message {
    Message::BackupEntry {
        json: Bytes::from(info.to_json()),
    }
}

fn refuse(code: ErrorCode, message: &str) -> Vec<Message> {
    vec![Message::Error {
        code,
        message: message.to_owned(),
    }]
}

fn answer(
    message: Message,
    key: &BlockHashKey,
    store: &mut Store,
    log: &mut Option<Arc<Mutex<SessionLog>>>,
) -> Vec<Message> {
    if let Message::BackupHello { system_id, .. } = message {
        let session = Arc::new(Mutex::new(SessionLog {
            system_id: Some(system_id),
            ..SessionLog::default()
        }));
        store.sessions.push(session.clone());
        *log = Some(session);
        return vec![
            Message::BackupWelcome {
                version: PROTOCOL_VERSION,
                backup_id: format!("20261201T1200{:02}Z-ab12", store.sessions.len()),
            },
            Message::HashKey {
                key: KEY,
                algorithm: BlockHashAlgorithm::Blake3.to_u8(),
                dictionary: None,
            },
        ];
    }
    match message {
        Message::ListBackups => {
            let mut out: Vec<Message> = store.catalog.iter().map(entry_message).collect();
            out.push(Message::CatalogEnd);
            return out;
        }
        Message::VerifyBackup { id } => {
            let Some(info) = store.catalog.iter().find(|b| b.id == id) else {
                return refuse(ErrorCode::NoSuchBackup, "no such backup");
            };
            return vec![
                Message::Progress { done: 0, total: 2 },
                Message::Progress { done: 2, total: 2 },
                entry_message(info),
                Message::CatalogEnd,
            ];
        }
        Message::DeleteBackup { id } => {
            let Some(at) = store.catalog.iter().position(|b| b.id == id) else {
                return refuse(ErrorCode::NoSuchBackup, "no such backup");
            };
            let info = store.catalog.remove(at);
            return vec![entry_message(&info), Message::CatalogEnd];
        }
        _ => {}
    }
    let Some(session) = log.clone() else {
        panic!("a backup message outside a backup session: {message:?}");
    };
    let mut log = session.lock().unwrap();
    match message {
        Message::HaveBlocks { hashes } => {
            if hashes.len() > 4096 {
                log.violations
                    .push(format!("HaveBlocks of {}", hashes.len()));
            }
            let held = hashes
                .iter()
                .map(|h| store.blocks.contains_key(h))
                .collect();
            vec![Message::BlocksHeld { held }]
        }
        Message::PutBlock { block } => {
            if store.blocks.contains_key(&block.hash) {
                log.violations
                    .push(format!("block {} sent though it is held", block.hash));
            }
            let plain = block.decompress().unwrap_or_default();
            if plain.len() != block.plain_len as usize || !key.matches(&plain, &block.hash.0) {
                log.violations
                    .push(format!("block {} does not match", block.hash));
            }
            log.puts += 1;
            log.put_bytes += block.data.len() as u64;
            store.blocks.insert(block.hash, plain);
            Vec::new()
        }
        Message::FileEntry { entry } => {
            if let Some(missing) = entry.blocks.iter().find(|h| !store.blocks.contains_key(h)) {
                log.violations.push(format!(
                    "{} announced before its block {missing}",
                    entry.path
                ));
            }
            log.files.push(entry);
            Vec::new()
        }
        Message::ManifestData { data } => {
            log.manifest.extend_from_slice(&data);
            Vec::new()
        }
        Message::FinishBackup { finish } => {
            let files = &log.files;
            let info = BackupInfo {
                schema: CATALOG_SCHEMA,
                id: format!("20261201T1200{:02}Z-ab12", store.sessions.len()),
                cluster: CLUSTER.to_owned(),
                label: finish.label.clone(),
                status: BackupStatus::Complete,
                start: finish.start.into(),
                end: finish.end.into(),
                started_at: "2026-12-01T12:00:00Z".to_owned(),
                ended_at: "2026-12-01T12:00:01Z".to_owned(),
                completed_at: format!("2026-12-01T12:00:{:02}Z", store.sessions.len()),
                postgres_version: finish.pg_version,
                system_identifier: log.system_id.unwrap_or_default().to_string(),
                block_size: finish.block_size,
                tablespaces: finish
                    .tablespaces
                    .iter()
                    .map(|t| CatalogTablespace {
                        oid: t.oid,
                        location: t.location.clone(),
                    })
                    .collect(),
                files: files.len() as u64,
                blocks: files.iter().map(|f| f.blocks.len() as u64).sum(),
                logical_bytes: files.iter().map(|f| f.size).sum(),
                referenced_stored_bytes: 0,
                new_stored_bytes: log.put_bytes,
                pinned: false,
                capture: klio_proto::klio::CaptureMethod::Stream,
            };
            log.finish = Some(finish);
            store.catalog.push(info.clone());
            vec![entry_message(&info)]
        }
        Message::Error { code, message } => {
            log.error = Some((code, message));
            Vec::new()
        }
        other => {
            log.violations.push(format!("unexpected {other:?}"));
            Vec::new()
        }
    }
}

/// Options for a streamed backup: these tests drive BASE_BACKUP's stream (a local capture of
/// the same PostgreSQL is tested end to end in `tests/backup_local.rs`).
fn options(pg: &PgServer, client: ClientConfig) -> BackupOptions {
    let pg = ConnParams::parse(&pg.socket_connstr())
        .unwrap()
        .resolve(|_| None)
        .unwrap();
    BackupOptions {
        mode: crate::backup::CaptureMode::Stream,
        ..BackupOptions::new(pg, client)
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_second_backup_sends_only_changed_blocks_and_the_catalog_lists_both() {
    let (pg, _work) = super::postgres_tests::primary_with_tablespace("backup-session");
    // Hint bits and the visibility map are set now, not by the change between the backups.
    pg.psql("VACUUM FREEZE");
    pg.psql("CHECKPOINT");
    let pki = Pki::new("backup");
    pki.client(CLUSTER);

    runtime().block_on(async {
        let server = StandIn::start(&pki);
        let client = server.config(&pki);
        let opts = options(&pg, client.clone());
        let mut reports = 0;
        let first = super::run(&opts, &mut |_| reports += 1)
            .await
            .expect("the first backup completes");
        assert!(reports > 1, "progress was reported {reports} times");
        let log = server.session(0).await;
        {
            let log = log.lock().unwrap();
            assert!(log.violations.is_empty(), "{:?}", log.violations);
            assert!(log.error.is_none(), "{:?}", log.error);
            assert!(!log.manifest.is_empty());
            let finish = log.finish.as_ref().expect("finished");
            assert!(finish.label.starts_with("klio 20"), "{}", finish.label);
            assert_eq!(finish.block_size, 65536);
            assert_eq!(finish.wal_timeout_s, 60);
            assert!(finish.pg_version >= 150_000);
            assert!(finish.start <= finish.end);
            assert_eq!(finish.tablespaces.len(), 1);
            assert_eq!(log.puts as u64, first.stats.blocks_new);
            assert_eq!(log.put_bytes, first.stats.bytes_sent);
            assert_eq!(log.files.len() as u64, first.stats.files);
        }
        assert!(
            first.stats.bytes_sent < first.stats.new_bytes,
            "{:?}",
            first.stats
        );
        assert!(first.stats.blocks_new <= first.stats.blocks_total);
        assert_eq!(first.info.id, "20261201T120001Z-ab12");

        pg.psql("UPDATE t SET v = 'changed' WHERE id = 1; CHECKPOINT");
        let second = super::run(&opts, &mut |_| {})
            .await
            .expect("the second backup completes");
        assert!(
            second.stats.blocks_new * 10 < first.stats.blocks_new,
            "second {:?}, first {:?}",
            second.stats,
            first.stats
        );
        assert!(second.stats.blocks_total >= first.stats.blocks_total);
        {
            // Every backup compresses its first batch before the server's answer: still only
            // the blocks not held went out.
            let log = server.session(1).await;
            let log = log.lock().unwrap();
            assert!(log.violations.is_empty(), "{:?}", log.violations);
            assert_eq!(log.puts as u64, second.stats.blocks_new);
            assert_eq!(log.put_bytes, second.stats.bytes_sent);
        }

        let listed = catalog::list(&client).await.expect("list");
        let ids: Vec<&str> = listed.iter().map(|b| b.id.as_str()).collect();
        assert_eq!(ids, [first.info.id.as_str(), second.info.id.as_str()]);
        let latest = catalog::get_entry(&client, &BackupRef::Latest)
            .await
            .expect("latest");
        assert_eq!(latest, second.info);

        let mut seen = Vec::new();
        let verified = catalog::verify(&client, &BackupRef::Latest, &mut |p| seen.push(p.done))
            .await
            .expect("verify");
        assert_eq!(verified.id, second.info.id);
        assert_eq!(seen, [0, 2]);

        let deleted = catalog::delete(&client, &first.info.id)
            .await
            .expect("delete");
        assert_eq!(deleted.id, first.info.id);
        let gone = catalog::get_entry(&client, &BackupRef::Id(first.info.id.clone())).await;
        assert!(
            matches!(gone, Err(CatalogError::NoSuchBackup { .. })),
            "{gone:?}"
        );
        let again = catalog::delete(&client, &first.info.id).await;
        assert!(
            matches!(again, Err(CatalogError::NoSuchBackup { .. })),
            "{again:?}"
        );
    });
}

#[test]
fn a_page_checksum_failure_abandons_the_backup_on_the_server_and_names_the_file() {
    let mut pg = PgServer::start(PgOptions::default());
    pg.psql("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g");
    pg.psql("CHECKPOINT");
    let relation = pg.psql("SELECT pg_relation_filepath('t')");
    let path = pg.data_dir().join(&relation);
    pg.stop();
    run_ok(
        as_postgres(pg_bin("pg_checksums"))
            .arg("--enable")
            .arg("-D")
            .arg(pg.data_dir()),
    );
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8192 + 4000] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    pg.restart();
    let pki = Pki::new("backup");
    pki.client(CLUSTER);

    runtime().block_on(async {
        let server = StandIn::start(&pki);
        let client = server.config(&pki);
        let failed = super::run(&options(&pg, client.clone()), &mut |_| {}).await;
        let Err(error @ BackupError::DamagedPages { .. }) = failed else {
            panic!("expected damaged pages, got {failed:?}");
        };
        assert!(error.to_string().contains(&relation), "{error}");
        let log = server.session(0).await;
        {
            let log = log.lock().unwrap();
            assert!(
                log.finish.is_none(),
                "a damaged backup must not be finished"
            );
            let (code, message) = log.error.clone().expect("the server was told");
            assert_eq!(code, ErrorCode::DamagedFile);
            assert!(message.contains(&relation), "{message}");
            assert!(log.violations.is_empty(), "{:?}", log.violations);
        }
        let listed = catalog::list(&client).await.expect("list");
        assert!(listed.is_empty());
    });
}
