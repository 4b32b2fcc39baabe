//! Whole restores against an in-process catalog server that speaks the catalog session from
//! memory: the file list streamed with continuations, blocks on parallel streams, damage.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use klio_crypto::{BlockHashAlgorithm, BlockHashKey};
use klio_proto::klio::{
    BackupInfo, BackupStatus, Block, BlockCompression, BlockHash, CatalogPosition,
    CatalogTablespace, ErrorCode, FileEntry, FileKind, FrameDecoder, Message,
};
use klio_wal::Lsn;

use super::*;
use crate::client_config::test_pki::Pki;
use crate::recovery_config::{RecoveryTarget, TargetAction};

const BLOCK_SIZE: u32 = 65_536;
const BACKUP_ID: &str = "20261201T120000Z-3f9a";
/// A relation file of the backup's tablespace.
const TS_FILE: &str = "pg_tblspc/16385/PG_15_202209061/5/16390";

/// A backup held in memory, as the server would serve it.
struct FakeBackup {
    info: BackupInfo,
    key: BlockHashKey,
    entries: Vec<FileEntry>,
    blocks: BTreeMap<BlockHash, Block>,
    manifest: Vec<Bytes>,
    /// Contents of each regular file, by path, to compare with.
    contents: BTreeMap<String, Vec<u8>>,
}

/// What the fake server does wrong.
#[derive(Clone, Default)]
struct Faults {
    /// Blocks it reports damaged.
    damaged: BTreeSet<BlockHash>,
    /// Blocks whose bytes it flips in transit.
    flipped: BTreeSet<BlockHash>,
}

impl FakeBackup {
    fn new(ts_location: &str) -> Self {
        let key = BlockHashKey::new(BlockHashAlgorithm::Blake3, [9; 32]);
        let mut b = Self {
            info: BackupInfo {
                schema: 1,
                id: BACKUP_ID.to_owned(),
                cluster: "pg-main".to_owned(),
                label: "test".to_owned(),
                status: BackupStatus::Complete,
                start: CatalogPosition {
                    timeline: 1,
                    lsn: Lsn(0x200_0028),
                },
                end: CatalogPosition {
                    timeline: 1,
                    lsn: Lsn(0x200_0138),
                },
                started_at: "2026-12-01T12:00:00Z".to_owned(),
                ended_at: "2026-12-01T12:00:05Z".to_owned(),
                completed_at: "2026-12-01T12:00:05Z".to_owned(),
                postgres_version: 150_010,
                system_identifier: "7312345678901234567".to_owned(),
                block_size: BLOCK_SIZE,
                tablespaces: vec![CatalogTablespace {
                    oid: 16385,
                    location: ts_location.to_owned(),
                }],
                files: 0,
                blocks: 0,
                logical_bytes: 0,
                referenced_stored_bytes: 0,
                new_stored_bytes: 0,
                pinned: false,
                capture: klio_proto::klio::CaptureMethod::Stream,
            },
            key,
            entries: Vec::new(),
            blocks: BTreeMap::new(),
            manifest: vec![
                Bytes::from_static(b"{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n"),
                Bytes::from_static(b"\"Files\": [] }\n"),
            ],
            contents: BTreeMap::new(),
        };
        b.file(
            "backup_label",
            b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n",
        );
        b.file(
            "tablespace_map",
            format!("16385 {ts_location}\n").as_bytes(),
        );
        b.dir("global");
        b.file("global/pg_control", &[3; 8192]);
        b.file("PG_VERSION", b"15\n");
        b.dir("base");
        b.dir("base/1");
        // 300 blocks: two GetBlocks batches, a FileBlocks continuation, a short last block,
        // and repeated blocks (dedup) alongside unique and incompressible ones.
        let mut big = Vec::new();
        for i in 0..300u32 {
            let mut block = vec![(i % 7) as u8; BLOCK_SIZE as usize];
            if i % 3 == 0 {
                for (j, byte) in block.iter_mut().enumerate() {
                    *byte = (j as u32)
                        .wrapping_mul(2_654_435_761)
                        .wrapping_add(i)
                        .to_le_bytes()[1];
                }
            }
            big.extend_from_slice(&block);
        }
        big.truncate(big.len() - 1000);
        // A relation of whole pages and over 1 MiB, written with direct I/O where the file
        // system has it.
        let relation: Vec<u8> = (0..40 * BLOCK_SIZE)
            .map(|j| j.wrapping_mul(2_246_822_519).to_le_bytes()[2])
            .collect();
        b.file("base/1/1259", &big);
        b.file("base/1/16384", &relation);
        b.file("base/1/empty", b"");
        // Its directories are not listed: they are made all the same.
        b.file("pg_logical/snapshots/unlisted", b"x");
        b.dir("pg_wal");
        b.dir("pg_wal/archive_status");
        b.dir("pg_tblspc");
        b.entries.push(FileEntry {
            path: "pg_tblspc/16385".to_owned(),
            kind: FileKind::Symlink {
                target: "/nowhere/trusted".to_owned(),
            },
            mode: 0o777,
            size: 0,
            mtime: 1_700_000_000,
            blocks: Vec::new(),
        });
        b.dir("pg_tblspc/16385/PG_15_202209061");
        b.dir("pg_tblspc/16385/PG_15_202209061/5");
        b.file(TS_FILE, &[42; 20_000]);
        b
    }

    fn dir(&mut self, path: &str) {
        self.entries.push(FileEntry {
            path: path.to_owned(),
            kind: FileKind::Directory,
            mode: 0o700,
            size: 0,
            mtime: 1_700_000_000,
            blocks: Vec::new(),
        });
    }

    fn file(&mut self, path: &str, content: &[u8]) {
        let mut hashes = Vec::new();
        for chunk in content.chunks(BLOCK_SIZE as usize) {
            let hash = BlockHash(self.key.hash(chunk));
            let compressed = lz4_flex::block::compress(chunk);
            let (compression, data) = if compressed.len() < chunk.len() {
                (BlockCompression::Lz4, Bytes::from(compressed))
            } else {
                (BlockCompression::None, Bytes::copy_from_slice(chunk))
            };
            self.blocks.insert(
                hash,
                Block {
                    hash,
                    plain_len: chunk.len() as u32,
                    compression,
                    data,
                },
            );
            hashes.push(hash);
        }
        self.info.logical_bytes += content.len() as u64;
        self.entries.push(FileEntry {
            path: path.to_owned(),
            kind: FileKind::File,
            mode: if path == "PG_VERSION" { 0o640 } else { 0o600 },
            size: content.len() as u64,
            mtime: 1_700_000_123,
            blocks: hashes,
        });
        self.contents.insert(path.to_owned(), content.to_vec());
    }
}

/// The catalog session of one stream.
async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    backup: Arc<FakeBackup>,
    faults: Faults,
) {
    let mut decoder = FrameDecoder::new();
    let mut buf = BytesMut::new();
    loop {
        let msg = loop {
            if let Some(m) = decoder.decode(&mut buf).unwrap() {
                break m;
            }
            match recv.read_chunk(1 << 20, true).await {
                Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
                _ => return,
            }
        };
        let mut out = BytesMut::new();
        let entry = Message::BackupEntry {
            json: Bytes::from(backup.info.to_json()),
        };
        match msg {
            Message::ListBackups => {
                entry.encode(&mut out);
                Message::CatalogEnd.encode(&mut out);
            }
            Message::GetBackup { id } if id == backup.info.id => {
                entry.encode(&mut out);
                Message::HashKey {
                    key: backup.key.to_bytes(),
                    algorithm: backup.key.algorithm().to_u8(),
                    dictionary: None,
                }
                .encode(&mut out);
                for file in &backup.entries {
                    // Long lists go in continuations, as they would past 65 536 hashes.
                    let mut first = file.clone();
                    let rest = first.blocks.split_off(first.blocks.len().min(100));
                    Message::FileEntry { entry: first }.encode(&mut out);
                    for chunk in rest.chunks(100) {
                        Message::FileBlocks {
                            blocks: chunk.to_vec(),
                        }
                        .encode(&mut out);
                    }
                }
                for data in &backup.manifest {
                    Message::ManifestData { data: data.clone() }.encode(&mut out);
                }
                Message::CatalogEnd.encode(&mut out);
            }
            Message::GetBackup { id } => Message::Error {
                code: ErrorCode::NoSuchBackup,
                message: format!("no backup {id}"),
            }
            .encode(&mut out),
            Message::GetBlocks { hashes } => {
                assert!(hashes.len() <= 4096);
                for hash in hashes {
                    if faults.damaged.contains(&hash) {
                        Message::Error {
                            code: ErrorCode::DamagedFile,
                            message: format!("block {hash} in pack 0001.pack is damaged"),
                        }
                        .encode(&mut out);
                        break;
                    }
                    let mut block = backup.blocks[&hash].clone();
                    if faults.flipped.contains(&hash) {
                        let mut data = block.data.to_vec();
                        data[0] ^= 1;
                        block.data = Bytes::from(data);
                    }
                    Message::BlockData { block }.encode(&mut out);
                }
            }
            other => panic!("unexpected {other:?}"),
        }
        if send.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// A catalog server for `backup` on a local port; returns its client settings.
fn start_server(
    pki: &Pki,
    backup: Arc<FakeBackup>,
    faults: Faults,
) -> (ClientConfig, tokio::task::JoinHandle<()>) {
    let (cert, key) = pki.server();
    pki.client("pg-main");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    tls.alpn_protocols = vec![klio_proto::klio::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
    let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let port = endpoint.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let Ok(conn) = incoming.await else { continue };
            let (backup, faults) = (Arc::clone(&backup), faults.clone());
            tokio::spawn(async move {
                while let Ok((send, recv)) = conn.accept_bi().await {
                    tokio::spawn(serve_stream(
                        send,
                        recv,
                        Arc::clone(&backup),
                        faults.clone(),
                    ));
                }
            });
        }
    });
    let mut flags = pki.flags("pg-main");
    flags.address = Some(format!("127.0.0.1:{port}"));
    flags.server_name = Some("localhost".to_owned());
    (ClientConfig::from_settings(&flags).unwrap(), server)
}

fn settings(
    client: ClientConfig,
    pgdata: &Path,
    mappings: Vec<TablespaceMapping>,
) -> RestoreSettings {
    RestoreSettings {
        client,
        backup: BackupRef::Latest,
        pgdata: pgdata.to_owned(),
        tablespace_mappings: mappings,
        jobs: 3,
        force: false,
        delta: false,
        recovery: RecoveryConfig {
            restore_command: "klio get-wal %f %p".to_owned(),
            target: RecoveryTarget::Latest,
            inclusive: true,
            action: TargetAction::Pause,
            timeline: "latest".to_owned(),
            standby: false,
        },
    }
}

fn no_progress() -> ProgressCallback {
    Arc::new(|_| {})
}

#[tokio::test]
async fn a_restore_rebuilds_every_file_byte_exactly_with_mapped_tablespaces() {
    let d = tempfile::tempdir().unwrap();
    let pki = Pki::new("restore");
    let backup = Arc::new(FakeBackup::new("/srv/ts1"));
    let (client, server) = start_server(&pki, Arc::clone(&backup), Faults::default());
    let pgdata = d.path().join("pg");
    let ts = d.path().join("ts1");
    let mapping = TablespaceMapping {
        old: "/srv/ts1".into(),
        new: ts.clone(),
    };
    let seen = Arc::new(AtomicU64::new(0));
    let progress: ProgressCallback = {
        let seen = Arc::clone(&seen);
        Arc::new(move |p| {
            assert!(p.written <= p.total);
            seen.fetch_max(p.written, Ordering::Relaxed);
        })
    };
    let report = restore(&settings(client, &pgdata, vec![mapping]), progress)
        .await
        .unwrap();
    server.abort();

    assert_eq!(report.backup.id, BACKUP_ID);
    assert_eq!(report.bytes, backup.info.logical_bytes);
    assert_eq!(seen.load(Ordering::Relaxed), backup.info.logical_bytes);
    for (path, content) in &backup.contents {
        let local = match path.strip_prefix("pg_tblspc/16385/") {
            Some(rest) => ts.join(rest),
            None => pgdata.join(path),
        };
        if path == "tablespace_map" {
            continue;
        }
        assert_eq!(&std::fs::read(&local).unwrap(), content, "{path}");
        let meta = std::fs::metadata(&local).unwrap();
        assert_eq!(meta.mtime(), 1_700_000_123, "{path}");
    }
    let meta = std::fs::metadata(pgdata.join("PG_VERSION")).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o640);
    assert_eq!(
        std::fs::read_link(pgdata.join("pg_tblspc/16385")).unwrap(),
        ts,
        "the link points to the mapped location, not the backup's target"
    );
    assert_eq!(
        std::fs::read_to_string(pgdata.join("tablespace_map")).unwrap(),
        format!("16385 {}\n", ts.display())
    );
    assert!(pgdata.join("pg_wal/archive_status").is_dir());
    assert_eq!(
        std::fs::read(pgdata.join("backup_manifest")).unwrap(),
        backup.manifest.concat()
    );
    assert!(pgdata.join("recovery.signal").is_file());
    let auto = std::fs::read_to_string(pgdata.join("postgresql.auto.conf")).unwrap();
    assert!(
        auto.contains("restore_command = 'klio get-wal %f %p'"),
        "{auto}"
    );
    assert!(!pgdata.join(RESTORE_MARKER).exists());
    let mode = std::fs::metadata(&pgdata).unwrap().mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[tokio::test]
async fn a_damaged_or_altered_block_fails_naming_the_backup_and_the_file() {
    let d = tempfile::tempdir().unwrap();
    let pki = Pki::new("restore");
    let ts = d.path().join("ts1");
    let backup = Arc::new(FakeBackup::new(ts.to_str().unwrap()));
    let entry = |path: &str| {
        backup
            .entries
            .iter()
            .find(|e| e.path == path)
            .unwrap()
            .clone()
    };
    let big = entry("base/1/1259");
    let cases = [
        Faults {
            damaged: BTreeSet::from([big.blocks[280]]),
            ..Faults::default()
        },
        Faults {
            flipped: BTreeSet::from([entry("PG_VERSION").blocks[0]]),
            ..Faults::default()
        },
        // A small file fetched in one request with others is still the one named.
        Faults {
            damaged: BTreeSet::from([entry(TS_FILE).blocks[0]]),
            ..Faults::default()
        },
    ];
    for (i, faults) in cases.into_iter().enumerate() {
        let (client, server) = start_server(&pki, Arc::clone(&backup), faults);
        let pgdata = d.path().join(format!("pg{i}"));
        let mut s = settings(client, &pgdata, Vec::new());
        s.force = true;
        let err = restore(&s, no_progress()).await.unwrap_err();
        server.abort();
        let text = err.to_string();
        assert!(text.contains(BACKUP_ID), "{text}");
        match (i, &err) {
            (0, RestoreError::DamagedBlock { path, .. }) => assert_eq!(path, "base/1/1259"),
            (1, RestoreError::BadBlock { path, fault, .. }) => {
                assert_eq!(path, "PG_VERSION");
                assert!(
                    matches!(
                        fault,
                        BlockFault::HashMismatch { .. } | BlockFault::Undecodable { .. }
                    ),
                    "{fault:?}"
                );
            }
            (2, RestoreError::DamagedBlock { path, .. }) => assert_eq!(path, TS_FILE),
            _ => panic!("case {i}: {err:?}"),
        }
        assert!(pgdata.join(RESTORE_MARKER).exists());
        assert!(!pgdata.join("backup_label").exists());
        assert!(!pgdata.join("global/pg_control").exists());
        // The next restore into it says what happened.
        let (client, server) = start_server(&pki, Arc::clone(&backup), Faults::default());
        let err = restore(&settings(client, &pgdata, Vec::new()), no_progress())
            .await
            .unwrap_err();
        server.abort();
        assert!(
            matches!(&err, RestoreError::InterruptedRestore { backup, .. } if backup == BACKUP_ID),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn an_unknown_backup_is_refused_before_anything_is_written() {
    let d = tempfile::tempdir().unwrap();
    let pki = Pki::new("restore");
    let backup = Arc::new(FakeBackup::new(d.path().join("ts").to_str().unwrap()));
    let (client, server) = start_server(&pki, backup, Faults::default());
    let pgdata = d.path().join("pg");
    let mut s = settings(client, &pgdata, Vec::new());
    s.backup = BackupRef::Id("20261201T000000Z-0000".to_owned());
    let err = restore(&s, no_progress()).await.unwrap_err();
    server.abort();
    assert!(matches!(err, RestoreError::NoSuchBackup { .. }), "{err:?}");
    assert!(!pgdata.exists());
}

#[tokio::test]
async fn a_backup_with_an_impossible_block_size_is_refused_before_anything_is_written() {
    let d = tempfile::tempdir().unwrap();
    let pki = Pki::new("restore");
    for block_size in [0, MAX_BLOCK_LEN + 1, u32::MAX] {
        let mut backup = FakeBackup::new(d.path().join("ts").to_str().unwrap());
        backup.info.block_size = block_size;
        let (client, server) = start_server(&pki, Arc::new(backup), Faults::default());
        let pgdata = d.path().join("pg");
        let err = restore(&settings(client, &pgdata, Vec::new()), no_progress())
            .await
            .unwrap_err();
        server.abort();
        assert!(
            err.to_string().contains(BACKUP_ID)
                || std::error::Error::source(&err)
                    .is_some_and(|e| e.to_string().contains(BACKUP_ID)),
            "{err:?}"
        );
        assert!(matches!(err, RestoreError::Catalog(_)), "{err:?}");
        assert!(!pgdata.exists(), "block size {block_size}");
    }
}

/// A backup of a real PostgreSQL 15 taken with `BASE_BACKUP`, cut into blocks as the capture
/// does (tablespace archives under `pg_tblspc/<oid>/`).
async fn capture(pg: &klio_testkit::PgServer) -> FakeBackup {
    use klio_proto::base_backup::{BaseBackupOptions, CopyStreamEvent, TablespaceKind};
    use klio_proto::tar::{EntryKind, TarEvent, TarReader};

    let params = crate::ConnParams::parse(&pg.socket_connstr())
        .unwrap()
        .resolve(|_| None)
        .unwrap();
    let mut conn = crate::ReplicationConnection::connect(&params)
        .await
        .unwrap();
    let mut stream = conn
        .base_backup(&BaseBackupOptions::default())
        .await
        .unwrap();
    let mut backup = FakeBackup::new("/unused");
    backup.entries.clear();
    backup.contents.clear();
    backup.manifest.clear();
    backup.info.logical_bytes = 0;
    backup.info.tablespaces = stream
        .tablespaces()
        .iter()
        .filter_map(|t| match &t.kind {
            TablespaceKind::User { oid, location } => Some(CatalogTablespace {
                oid: *oid,
                location: location.clone(),
            }),
            TablespaceKind::MainDataDirectory => None,
        })
        .collect();
    let mut prefix = String::new();
    let mut tar = TarReader::new();
    let mut buf = BytesMut::new();
    let mut current: Option<(String, EntryKind, u32, i64)> = None;
    let mut data = Vec::new();
    while let Some(event) = stream.next_event().await.unwrap() {
        match event {
            CopyStreamEvent::NewArchive { name, tablespace } => {
                prefix = match tablespace {
                    Some(_) => format!("pg_tblspc/{}/", name.trim_end_matches(".tar")),
                    None => String::new(),
                };
                tar = TarReader::new();
            }
            CopyStreamEvent::ArchiveData(bytes) => {
                buf.extend_from_slice(&bytes);
                while let Some(ev) = tar.decode(&mut buf).unwrap() {
                    match ev {
                        TarEvent::Entry(e) => {
                            let path = e.path.to_str().unwrap().trim_end_matches('/').to_owned();
                            current = (!e.path.is_root()).then(|| {
                                (format!("{prefix}{path}"), e.kind, e.mode, e.mtime as i64)
                            });
                            data.clear();
                        }
                        TarEvent::Data(d) => data.extend_from_slice(&d),
                        TarEvent::EntryEnd => match current.take() {
                            Some((path, EntryKind::File { .. }, mode, mtime)) => {
                                backup.file(&path, &data);
                                let last = backup.entries.last_mut().unwrap();
                                (last.mode, last.mtime) = (mode, mtime);
                            }
                            Some((path, EntryKind::Directory, mode, mtime)) => {
                                backup.dir(&path);
                                let last = backup.entries.last_mut().unwrap();
                                (last.mode, last.mtime) = (mode, mtime);
                            }
                            Some((path, EntryKind::Symlink { target }, mode, mtime)) => {
                                backup.entries.push(FileEntry {
                                    path,
                                    kind: FileKind::Symlink {
                                        target: String::from_utf8(target).unwrap(),
                                    },
                                    mode,
                                    size: 0,
                                    mtime,
                                    blocks: Vec::new(),
                                });
                            }
                            _ => {}
                        },
                        TarEvent::End => {}
                    }
                }
            }
            CopyStreamEvent::ManifestData(bytes) => backup.manifest.push(bytes),
            CopyStreamEvent::ManifestStart | CopyStreamEvent::Progress(_) => {}
        }
    }
    let end = stream.finish().await.unwrap();
    backup.info.end = CatalogPosition::from(klio_wal::WalPosition::new(end.timeline, end.lsn));
    conn.close().await;
    backup
}

/// `chown -R postgres` of `path`, for PostgreSQL to run on what the test (root) restored.
fn give_tree_to_postgres(path: &Path) {
    klio_testkit::run_ok(
        std::process::Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(path),
    );
}

#[test]
fn a_restored_postgresql_backup_passes_pg_verifybackup_and_starts() {
    use klio_testkit::{PgOptions, PgServer, TestDir, pg_bin, run};

    let pg = PgServer::start(PgOptions::default());
    let work = TestDir::new("restore");
    let ts_dir = work.subdir("tablespace");
    pg.psql(&format!(
        "CREATE TABLESPACE ts LOCATION '{}'",
        ts_dir.display()
    ));
    pg.psql("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 50000) g");
    pg.psql("CREATE TABLE in_ts TABLESPACE ts AS SELECT g FROM generate_series(1, 1000) g");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let backup = Arc::new(rt.block_on(capture(&pg)));
    assert_eq!(backup.info.tablespaces.len(), 1);

    let restored = TestDir::new("restored");
    let pgdata = restored.path().join("data");
    let new_ts = restored.path().join("ts");
    let pki = Pki::new("restore");
    let report = rt.block_on(async {
        let (client, server) = start_server(&pki, Arc::clone(&backup), Faults::default());
        let mut s = settings(
            client,
            &pgdata,
            vec![TablespaceMapping {
                old: ts_dir.clone(),
                new: new_ts.clone(),
            }],
        );
        // WAL from the running primary's pg_wal: only the restore is under test here.
        s.recovery.restore_command = format!("cp {}/pg_wal/%f %p", pg.data_dir().display());
        s.recovery.target = RecoveryTarget::Immediate;
        s.recovery.action = TargetAction::Promote;
        let report = restore(&s, no_progress()).await.unwrap();
        server.abort();
        report
    });
    assert_eq!(report.bytes, backup.info.logical_bytes);

    // The rewritten tablespace_map differs from the manifest's by design.
    let verify = run(std::process::Command::new(pg_bin("pg_verifybackup"))
        .args(["--no-parse-wal", "-i", "tablespace_map"])
        .arg(&pgdata));
    assert!(verify.success(), "pg_verifybackup: {verify:?}");

    give_tree_to_postgres(restored.path());
    let copy = PgServer::start_in(restored);
    assert_eq!(copy.psql("SELECT count(*) FROM t"), "50000");
    assert_eq!(copy.psql("SELECT count(*) FROM in_ts"), "1000");
    assert_eq!(
        copy.psql("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'ts'"),
        new_ts.display().to_string()
    );
}
