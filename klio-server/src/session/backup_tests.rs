//! The backup and catalog sessions in process, on real files: a scripted client stream, a
//! real backup store and a real WAL archive in a temporary directory.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use klio_crypto::{BlockHashAlgorithm, BlockHashKey, Kek, Keyring};
use klio_proto::klio::{
    BackupFinish, BackupInfo, Block, BlockCompression, BlockHash, CaptureMethod, ClusterName,
    ErrorCode, FileEntry, FileKind, Message, PROTOCOL_VERSION, TablespaceInfo,
};
use klio_store::backup::{BackupStore, PACK_TARGET_BYTES};
use klio_store::wal_archive::{ArchiveIndexes, ClusterIdentity, StorageOptions, WalArchive};
use klio_wal::{Lsn, SegmentSize, TimelineId, WalPosition};
use tokio::sync::mpsc;

use super::End;
use super::backup::{BackupHello, run as run_backup};
use super::backup_env::BackupEnv;
use super::catalog::run as run_catalog;
use super::framing::{FrameIo, Received};
use crate::backup_registry::BackupRegistry;
use crate::retention::{Retention, RetentionConfig};
use crate::telemetry::Telemetry;

const SYSTEM_ID: u64 = 7_400_000_000_000_000_001;
const SEG: u64 = 1 << 20;

/// A client stream: what the test sends arrives; what the session sends reaches the test.
struct Pipe {
    arrivals: mpsc::UnboundedReceiver<Vec<Message>>,
    buffered: Vec<Message>,
    sent: mpsc::UnboundedSender<Message>,
}

impl FrameIo for Pipe {
    async fn fill(&mut self) -> Result<bool, End> {
        match self.arrivals.recv().await {
            Some(m) => {
                self.buffered.extend(m);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn drain(&mut self) -> Result<Received, End> {
        Ok(Received {
            messages: std::mem::take(&mut self.buffered),
            since: Instant::now(),
        })
    }

    fn buffered(&self) -> usize {
        self.buffered.len()
    }

    async fn send(&mut self, msgs: &[Message]) -> Result<(), End> {
        for m in msgs {
            let _ = self.sent.send(m.clone());
        }
        Ok(())
    }
}

/// The test's end of a session.
struct Client<R> {
    to_server: Option<mpsc::UnboundedSender<Vec<Message>>>,
    from_server: mpsc::UnboundedReceiver<Message>,
    session: tokio::task::JoinHandle<Result<R, End>>,
}

impl<R> Client<R> {
    fn send(&self, msgs: Vec<Message>) {
        if let Some(tx) = &self.to_server {
            let _ = tx.send(msgs);
        }
    }

    /// The client finishes its side of the stream.
    fn finish(&mut self) {
        self.to_server = None;
    }

    async fn recv(&mut self) -> Message {
        tokio::time::timeout(Duration::from_secs(20), self.from_server.recv())
            .await
            .expect("the server answers in time")
            .expect("the session sends more")
    }

    async fn end(self) -> Result<R, End> {
        self.session.await.unwrap()
    }
}

fn pipe() -> (
    Pipe,
    mpsc::UnboundedSender<Vec<Message>>,
    mpsc::UnboundedReceiver<Message>,
) {
    let (to_server, arrivals) = mpsc::unbounded_channel();
    let (sent, from_server) = mpsc::unbounded_channel();
    (
        Pipe {
            arrivals,
            buffered: Vec::new(),
            sent,
        },
        to_server,
        from_server,
    )
}

fn cluster_name() -> ClusterName {
    ClusterName::new("pg-main").unwrap()
}

fn env(dir: &Path, keyring: Option<Keyring>) -> BackupEnv {
    BackupEnv {
        cluster: cluster_name(),
        backups: Arc::new(BackupRegistry::default()),
        store: BackupStore::new(&dir.join("backups"), keyring.clone()),
        wal_dir: dir.join("wal"),
        wal_index: None,
        keyring,
        wal_poll: Duration::from_millis(20),
        retention: Arc::new(Retention::new(RetentionConfig::default(), dir)),
        telemetry: Arc::new(Telemetry::new(dir, None, ArchiveIndexes::new(None), 90))
            .cluster(&cluster_name()),
        mode: crate::tier2::ServerMode::ReadWrite,
        tier2: None,
    }
}

fn start_backup(env: &BackupEnv) -> Client<BackupInfo> {
    let (mut io, to_server, from_server) = pipe();
    let env = env.clone();
    let session = tokio::spawn(async move {
        let hello = BackupHello {
            version: PROTOCOL_VERSION,
            claimed: cluster_name(),
            system_id: SYSTEM_ID,
        };
        run_backup(&env, &mut io, hello).await
    });
    Client {
        to_server: Some(to_server),
        from_server,
        session,
    }
}

fn start_catalog(env: &BackupEnv, first: Message) -> Client<()> {
    let (mut io, to_server, from_server) = pipe();
    let env = env.clone();
    let session = tokio::spawn(async move { run_catalog(&env, &mut io, first).await });
    Client {
        to_server: Some(to_server),
        from_server,
        session,
    }
}

/// Archives WAL of timeline 1 from `from` to `to`.
fn archive_wal(env: &BackupEnv, from: u64, to: u64) {
    let identity = ClusterIdentity {
        system_id: SYSTEM_ID,
        segment_size: SegmentSize::new(SEG).unwrap(),
    };
    let options = StorageOptions {
        keyring: env.keyring.clone(),
        ..StorageOptions::default()
    };
    let mut a = WalArchive::open_with(&env.wal_dir, identity, options).unwrap();
    if a.durable().is_none() {
        a.begin(TimelineId::FIRST, Lsn(from)).unwrap();
    } else {
        a.begin(TimelineId::FIRST, a.durable().unwrap().lsn)
            .unwrap();
    }
    let at = a.durable().map_or(from, |d| d.lsn.0);
    a.append(Lsn(at), &vec![0x5a; (to - at) as usize]).unwrap();
    a.sync().unwrap();
}

fn block(key: &BlockHashKey, plain: &[u8]) -> Block {
    Block {
        hash: BlockHash(key.hash(plain)),
        plain_len: plain.len() as u32,
        compression: BlockCompression::Lz4,
        data: Bytes::from(lz4_flex::block::compress(plain)),
    }
}

fn page(seed: u32) -> Vec<u8> {
    format!("relation page {seed} ")
        .repeat(5000)
        .into_bytes()
        .into_iter()
        .take(65536)
        .collect()
}

fn finish(wal_timeout_s: u32) -> BackupFinish {
    BackupFinish {
        label: "nightly".to_owned(),
        start: WalPosition::new(TimelineId::FIRST, Lsn(SEG + 0x28)),
        end: WalPosition::new(TimelineId::FIRST, Lsn(2 * SEG + 0x138)),
        started_at_ms: 1_764_590_400_000,
        ended_at_ms: 1_764_590_405_000,
        pg_version: 150010,
        tablespaces: vec![TablespaceInfo {
            oid: 16385,
            location: "/srv/ts1".to_owned(),
        }],
        block_size: 65536,
        wal_timeout_s,
        capture: CaptureMethod::Local,
    }
}

fn file(path: &str, blocks: &[&Block]) -> FileEntry {
    FileEntry {
        path: path.to_owned(),
        kind: FileKind::File,
        mode: 0o600,
        size: blocks.iter().map(|b| u64::from(b.plain_len)).sum(),
        mtime: 1_764_590_400,
        blocks: blocks.iter().map(|b| b.hash).collect(),
    }
}

fn directory(path: &str) -> FileEntry {
    FileEntry {
        path: path.to_owned(),
        kind: FileKind::Directory,
        mode: 0o700,
        size: 0,
        mtime: 1_764_590_400,
        blocks: Vec::new(),
    }
}

/// Receives `BackupWelcome` and `HashKey`: the backup id and the cluster's key.
async fn welcome<R>(client: &mut Client<R>) -> (String, BlockHashKey) {
    let Message::BackupWelcome { backup_id, .. } = client.recv().await else {
        panic!("BackupWelcome first");
    };
    let Message::HashKey { key, algorithm, .. } = client.recv().await else {
        panic!("HashKey second");
    };
    let algorithm = BlockHashAlgorithm::from_u8(algorithm).expect("a known hash algorithm");
    assert_eq!(
        algorithm,
        BlockHashAlgorithm::Blake3,
        "new clusters use BLAKE3"
    );
    (backup_id, BlockHashKey::new(algorithm, key))
}

/// Offers the blocks, puts those not held, sends the files, the manifest and the finish;
/// returns which blocks were held.
async fn send_backup(
    client: &mut Client<BackupInfo>,
    blocks: &[&Block],
    files: Vec<FileEntry>,
    finish: BackupFinish,
) -> Vec<bool> {
    client.send(vec![Message::HaveBlocks {
        hashes: blocks.iter().map(|b| b.hash).collect(),
    }]);
    let Message::BlocksHeld { held } = client.recv().await else {
        panic!("BlocksHeld answers HaveBlocks");
    };
    let mut msgs: Vec<Message> = blocks
        .iter()
        .zip(&held)
        .filter(|(_, h)| !**h)
        .map(|(b, _)| Message::PutBlock {
            block: (*b).clone(),
        })
        .collect();
    msgs.extend(files.into_iter().map(|entry| Message::FileEntry { entry }));
    msgs.push(Message::ManifestData {
        data: Bytes::from_static(b"{\"PostgreSQL-Backup-Manifest-Version\": 1}"),
    });
    msgs.push(Message::FinishBackup { finish });
    client.send(msgs);
    held
}

/// A backup of one file (`PG_VERSION`, one block), sent whole up to its `FinishBackup` with
/// `wal_timeout_s`.
async fn one_file_backup(env: &BackupEnv, wal_timeout_s: u32) -> Client<BackupInfo> {
    let mut client = start_backup(env);
    let (_, key) = welcome(&mut client).await;
    let a = block(&key, &page(1));
    send_backup(
        &mut client,
        &[&a],
        vec![file("PG_VERSION", &[&a])],
        finish(wal_timeout_s),
    )
    .await;
    client
}

/// Runs one catalog request (then finishes the stream) and collects the answers (without the
/// final `CatalogEnd`); an error
/// that ends the session comes last, as the `Error` frame the client would get.
/// Asserts that `GetBlocks` for the hashes of `blocks` serves exactly those blocks, in order.
async fn assert_serves(env: &BackupEnv, blocks: &[&Block]) {
    let got = catalog(
        env,
        Message::GetBlocks {
            hashes: blocks.iter().map(|b| b.hash).collect(),
        },
    )
    .await;
    let expected: Vec<Message> = blocks
        .iter()
        .map(|&b| Message::BlockData { block: b.clone() })
        .collect();
    assert_eq!(got, expected);
}

async fn catalog(env: &BackupEnv, request: Message) -> Vec<Message> {
    let mut client = start_catalog(env, request);
    client.finish();
    let mut out = Vec::new();
    while let Some(m) = client.from_server.recv().await {
        out.push(m);
    }
    match client.end().await {
        // Every request but GetBlocks ends with CatalogEnd.
        Ok(()) => {
            if matches!(out.last(), Some(Message::CatalogEnd)) {
                out.pop();
            }
        }
        Err(End::Refused(code, message)) => out.push(Message::Error { code, message }),
        Err(End::Closed(why)) => panic!("the catalog session closed: {why}"),
    }
    out
}

fn entries(msgs: &[Message]) -> Vec<BackupInfo> {
    msgs.iter()
        .filter_map(|m| match m {
            Message::BackupEntry { json } => Some(BackupInfo::from_json(json).unwrap()),
            _ => None,
        })
        .collect()
}

fn staging_is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir.join("backups/staging"))
        .unwrap()
        .next()
        .is_none()
}

#[tokio::test]
async fn a_backup_session_end_to_end_then_the_catalog_serves_it() {
    for keyring in [None, Some(Keyring::new(Kek::from_bytes(&[3; 32]).unwrap()))] {
        let d = tempfile::tempdir().unwrap();
        let env = env(d.path(), keyring);
        archive_wal(&env, SEG, 3 * SEG);

        let mut client = start_backup(&env);
        let (id, key) = welcome(&mut client).await;
        assert!(
            id.len() == 21 && id.as_bytes()[8] == b'T' && id.as_bytes()[15] == b'Z',
            "{id}"
        );
        let (a, b) = (block(&key, &page(1)), block(&key, &page(2)));
        let files = vec![directory("pg_wal"), file("base/1/1259", &[&a, &b])];
        let held = send_backup(&mut client, &[&a, &b], files, finish(30)).await;
        assert_eq!(held, [false, false]);
        let Message::BackupEntry { json } = client.recv().await else {
            panic!("BackupEntry answers FinishBackup");
        };
        let info = BackupInfo::from_json(&json).unwrap();
        client.finish();
        assert_eq!(client.end().await.unwrap(), info);
        assert_eq!(info.id, id);
        assert_eq!((info.files, info.blocks), (2, 2));
        assert_eq!(info.logical_bytes, 2 * 65536);
        let stored = (a.data.len() + b.data.len()) as u64;
        assert_eq!(info.new_stored_bytes, stored);
        assert_eq!(info.referenced_stored_bytes, stored);
        assert_eq!(info.system_identifier, SYSTEM_ID.to_string());
        assert_eq!(info.started_at, "2025-12-01T12:00:00Z");
        assert_eq!(info.tablespaces[0].oid, 16385);

        // The catalog lists it, serves it whole, its blocks and its verification.
        assert_eq!(
            entries(&catalog(&env, Message::ListBackups).await),
            std::slice::from_ref(&info)
        );
        let got = catalog(&env, Message::GetBackup { id: id.clone() }).await;
        assert!(matches!(&got[1], Message::HashKey { key: k, .. } if *k == key.to_bytes()));
        let served: Vec<&FileEntry> = got
            .iter()
            .filter_map(|m| match m {
                Message::FileEntry { entry } => Some(entry),
                _ => None,
            })
            .collect();
        assert_eq!(served.len(), 2);
        assert_eq!(served[1].blocks, [a.hash, b.hash]);
        assert!(
            got.iter()
                .any(|m| matches!(m, Message::ManifestData { data } if data.starts_with(b"{")))
        );
        assert_serves(&env, &[&b, &a]).await;
        let verified = catalog(&env, Message::VerifyBackup { id: id.clone() }).await;
        assert_eq!(entries(&verified), std::slice::from_ref(&info));

        // A second backup of the same data sends and stores no block.
        let mut client = start_backup(&env);
        let (second, _) = welcome(&mut client).await;
        let files = vec![file("base/1/1259", &[&a, &b])];
        let held = send_backup(&mut client, &[&a, &b], files, finish(30)).await;
        assert_eq!(held, [true, true]);
        let Message::BackupEntry { json } = client.recv().await else {
            panic!("BackupEntry answers FinishBackup");
        };
        let again = BackupInfo::from_json(&json).unwrap();
        assert_eq!(again.new_stored_bytes, 0);
        assert_eq!(again.referenced_stored_bytes, stored);

        // Deleting one leaves the other, and its blocks.
        let deleted = catalog(&env, Message::DeleteBackup { id: id.clone() }).await;
        assert_eq!(entries(&deleted)[0].id, id);
        let listed = entries(&catalog(&env, Message::ListBackups).await);
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, second);
        let gone = catalog(&env, Message::GetBackup { id }).await;
        assert!(matches!(
            &gone[0],
            Message::Error {
                code: ErrorCode::NoSuchBackup,
                ..
            }
        ));
        let verified = catalog(&env, Message::VerifyBackup { id: second }).await;
        assert_eq!(entries(&verified).len(), 1);
    }
}

/// A 64 KiB block that does not compress (stored as is), different for each seed.
fn noise(key: &BlockHashKey, seed: u64) -> Block {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let plain: Vec<u8> = (0..65536)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    Block {
        hash: BlockHash(key.hash(&plain)),
        plain_len: plain.len() as u32,
        compression: BlockCompression::None,
        data: Bytes::from(plain),
    }
}

#[tokio::test]
async fn a_block_sent_before_it_is_asked_for_is_held_while_queued_packed_and_indexed() {
    let d = tempfile::tempdir().unwrap();
    let env = env(d.path(), None);
    archive_wal(&env, SEG, 3 * SEG);
    let mut client = start_backup(&env);
    let (_, key) = welcome(&mut client).await;
    let asked = |blocks: &[&Block]| Message::HaveBlocks {
        hashes: blocks.iter().map(|b| b.hash).collect(),
    };
    let put = |b: &Block| Message::PutBlock { block: b.clone() };
    async fn held(client: &mut Client<BackupInfo>) -> Vec<bool> {
        match client.recv().await {
            Message::BlocksHeld { held } => held,
            other => panic!("BlocksHeld answers HaveBlocks, not {other:?}"),
        }
    }

    // Read in one go with the block: the answer comes before anything is stored.
    let (a, b) = (block(&key, &page(1)), block(&key, &page(2)));
    client.send(vec![put(&a), asked(&[&a, &b])]);
    assert_eq!(held(&mut client).await, [true, false]);

    // Enough blocks to close a pack: `a` and the first of them move to the index, the last
    // one stays in the open pack.
    let filler: Vec<Block> = (0..(PACK_TARGET_BYTES / 65536) + 8)
        .map(|seed| noise(&key, seed))
        .collect();
    client.send(filler.iter().map(put).collect());
    let (first, last) = (&filler[0], &filler[filler.len() - 1]);
    // Stored behind the answers: wait until the pack is closed.
    let packs = d.path().join("backups/packs");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_dir(&packs)
        .unwrap()
        .any(|e| e.unwrap().path().extension() == Some("idx".as_ref()))
    {
        assert!(Instant::now() < deadline, "the filler closes a pack");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    client.send(vec![asked(&[&a, first, last, &b])]);
    assert_eq!(held(&mut client).await, [true, true, true, false]);

    // Everything asked for and sent is in the backup.
    let mut files = vec![file("base/1/1259", &[&a, &b])];
    files.extend(
        filler
            .iter()
            .enumerate()
            .map(|(i, f)| file(&format!("base/1/{}", 20000 + i), &[f])),
    );
    let mut msgs = vec![put(&b)];
    msgs.extend(files.into_iter().map(|entry| Message::FileEntry { entry }));
    msgs.push(Message::ManifestData {
        data: Bytes::from_static(b"{\"PostgreSQL-Backup-Manifest-Version\": 1}"),
    });
    msgs.push(Message::FinishBackup { finish: finish(30) });
    client.send(msgs);
    let Message::BackupEntry { json } = client.recv().await else {
        panic!("BackupEntry answers FinishBackup");
    };
    let info = BackupInfo::from_json(&json).unwrap();
    assert_eq!(info.blocks, filler.len() as u64 + 2);
    let stored: usize =
        filler.iter().map(|f| f.data.len()).sum::<usize>() + a.data.len() + b.data.len();
    assert_eq!(
        info.new_stored_bytes, stored as u64,
        "each block stored once"
    );
    assert_serves(&env, &[&a, last]).await;
}

/// Runs a backup session that the server must refuse with `code`; returns the message.
async fn refused(client: Client<BackupInfo>, code: ErrorCode) -> String {
    match client.end().await {
        Err(End::Refused(c, message)) if c == code => message,
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn a_block_whose_data_does_not_match_its_hash_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let env = env(d.path(), None);
    let mut client = start_backup(&env);
    let (_, key) = welcome(&mut client).await;
    let mut bad = block(&key, &page(1));
    bad.hash = BlockHash(key.hash(b"another page"));
    client.send(vec![Message::PutBlock { block: bad.clone() }]);
    let message = refused(client, ErrorCode::BadRequest).await;
    assert!(message.contains(&bad.hash.to_string()), "{message}");
    assert!(env.store.load_index().unwrap().is_empty(), "nothing stored");
    assert!(env.store.list().unwrap().is_empty());
    assert!(staging_is_empty(d.path()));
}

#[tokio::test]
async fn a_file_entry_naming_an_unknown_block_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let env = env(d.path(), None);
    let mut client = start_backup(&env);
    let (_, key) = welcome(&mut client).await;
    let never_sent = block(&key, &page(9));
    client.send(vec![Message::FileEntry {
        entry: file("base/1/2619", &[&never_sent]),
    }]);
    let message = refused(client, ErrorCode::BadRequest).await;
    assert!(message.contains("base/1/2619"), "{message}");
    assert!(message.contains(&never_sent.hash.to_string()), "{message}");
    assert!(staging_is_empty(d.path()));
}

#[tokio::test]
async fn a_second_concurrent_backup_of_the_same_cluster_gets_backup_in_progress() {
    let d = tempfile::tempdir().unwrap();
    let env = env(d.path(), None);
    let mut first = start_backup(&env);
    welcome(&mut first).await;
    let second = start_backup(&env);
    let message = refused(second, ErrorCode::BackupInProgress).await;
    assert!(message.contains("pg-main"), "{message}");
    // However the first ends, the next may run.
    first.finish();
    assert!(matches!(first.end().await, Err(End::Closed(_))));
    let mut third = start_backup(&env);
    welcome(&mut third).await;
}

#[tokio::test]
async fn an_aborted_session_leaves_nothing_in_the_catalog_and_its_blocks_for_a_rerun() {
    let d = tempfile::tempdir().unwrap();
    let env = env(
        d.path(),
        Some(Keyring::new(Kek::from_bytes(&[5; 32]).unwrap())),
    );
    archive_wal(&env, SEG, 3 * SEG);
    let mut client = start_backup(&env);
    let (_, key) = welcome(&mut client).await;
    let a = block(&key, &page(1));
    client.send(vec![
        Message::PutBlock { block: a.clone() },
        Message::FileEntry {
            entry: file("base/1/1259", &[&a]),
        },
        Message::Error {
            code: ErrorCode::Internal,
            message: "PostgreSQL reported a checksum failure in base/1/1259".to_owned(),
        },
    ]);
    assert!(matches!(client.end().await, Err(End::Closed(_))));
    assert!(env.store.list().unwrap().is_empty());
    assert!(staging_is_empty(d.path()));
    // The block was made durable and indexed: a rerun does not send it again.
    let mut rerun = start_backup(&env);
    welcome(&mut rerun).await;
    let held = send_backup(
        &mut rerun,
        &[&a],
        vec![file("base/1/1259", &[&a])],
        finish(30),
    )
    .await;
    assert_eq!(held, [true]);
    assert!(matches!(rerun.recv().await, Message::BackupEntry { .. }));

    // A stream that just ends before FinishBackup is abandoned too.
    let mut cut = start_backup(&env);
    welcome(&mut cut).await;
    cut.send(vec![Message::FileEntry {
        entry: directory("pg_wal"),
    }]);
    cut.finish();
    assert!(matches!(cut.end().await, Err(End::Closed(_))));
    assert_eq!(env.store.list().unwrap().len(), 1);
    assert!(staging_is_empty(d.path()));
}

#[tokio::test]
async fn a_backup_whose_wal_does_not_arrive_in_time_is_not_listed() {
    let d = tempfile::tempdir().unwrap();
    let env = env(d.path(), None);
    // The archive ends before the backup's end LSN.
    archive_wal(&env, SEG, 2 * SEG + 0x100);
    let client = one_file_backup(&env, 1).await;
    let message = refused(client, ErrorCode::WalNotArchived).await;
    assert!(
        message.contains(
            "the WAL from 0/100028 to 0/200138 on timeline 1 did not reach the archive within 1 s"
        ),
        "{message}"
    );
    assert!(
        message.contains("klio send-wal") && message.contains("pg-main"),
        "{message}"
    );
    assert!(env.store.list().unwrap().is_empty());
    assert!(staging_is_empty(d.path()));
}

#[tokio::test]
async fn a_finishing_backup_completes_when_its_wal_is_stored_not_at_the_next_poll() {
    let d = tempfile::tempdir().unwrap();
    let mut env = env(d.path(), None);
    // Only the wake from ingest can finish this backup within the test's deadline.
    env.wal_poll = Duration::from_secs(3600);
    archive_wal(&env, SEG, 2 * SEG);
    let mut client = one_file_backup(&env, 600).await;
    // Give the session time to look once and find the WAL short (if it has not yet, the
    // WAL is simply there at its first look).
    tokio::time::sleep(Duration::from_millis(300)).await;
    archive_wal(&env, SEG, 2 * SEG + 0x200);
    // What ingest reports after each stored batch.
    let end = WalPosition::new(TimelineId::FIRST, Lsn(2 * SEG + 0x200));
    env.telemetry.stored(None, 0x200, 0, Some(end));
    // Within `recv`'s deadline, far short of the poll.
    let answer = client.recv().await;
    assert!(matches!(answer, Message::BackupEntry { .. }), "{answer:?}");
}

#[tokio::test]
async fn another_cluster_or_another_postgresql_is_refused_before_anything_is_stored() {
    let d = tempfile::tempdir().unwrap();
    let env = env(d.path(), None);
    archive_wal(&env, SEG, 2 * SEG);
    for (claimed, system_id, code) in [
        ("other", SYSTEM_ID, ErrorCode::Unauthorized),
        ("pg-main", SYSTEM_ID + 1, ErrorCode::SystemIdMismatch),
    ] {
        let (mut io, _to_server, _from_server) = pipe();
        let hello = BackupHello {
            version: PROTOCOL_VERSION,
            claimed: ClusterName::new(claimed).unwrap(),
            system_id,
        };
        match run_backup(&env, &mut io, hello).await {
            Err(End::Refused(c, _)) => assert_eq!(c, code),
            other => panic!("{other:?}"),
        }
    }
    assert!(!d.path().join("backups").exists());
}

#[tokio::test]
async fn catalog_requests_check_ids_and_name_damaged_blocks() {
    let d = tempfile::tempdir().unwrap();
    let env = env(d.path(), None);
    let bad_id = catalog(
        &env,
        Message::GetBackup {
            id: "../../etc".to_owned(),
        },
    )
    .await;
    assert!(matches!(
        &bad_id[0],
        Message::Error {
            code: ErrorCode::BadRequest,
            ..
        }
    ));
    let none = catalog(&env, Message::ListBackups).await;
    assert!(none.is_empty());
    let missing = BlockHash([9; 32]);
    let got = catalog(
        &env,
        Message::GetBlocks {
            hashes: vec![missing],
        },
    )
    .await;
    let Message::Error { code, message } = &got[0] else {
        panic!("{got:?}");
    };
    assert_eq!(*code, ErrorCode::DamagedFile);
    assert!(message.contains(&missing.to_string()), "{message}");
}

/// A backup environment whose retention reclaims blocks at once and runs only when asked.
fn env_reclaiming_at_once(dir: &Path, keyring: Option<Keyring>) -> BackupEnv {
    let mut env = env(dir, keyring);
    let config = RetentionConfig {
        interval: None,
        after_backup: false,
        block_grace: Duration::ZERO,
        ..RetentionConfig::default()
    };
    env.retention = Arc::new(Retention::new(config, dir));
    env
}

/// Runs retention as the server does, on a thread of its own.
async fn run_retention(env: &BackupEnv) -> klio_proto::klio::RetentionReport {
    let (run_env, settings) = (env.clone(), env.retention.config().clone());
    tokio::task::spawn_blocking(move || crate::retention::run(&run_env, &settings, false))
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn a_block_a_running_backup_was_told_is_held_survives_retention_and_restores() {
    for keyring in [None, Some(Keyring::new(Kek::from_bytes(&[5; 32]).unwrap()))] {
        let d = tempfile::tempdir().unwrap();
        let env = env_reclaiming_at_once(d.path(), keyring);
        archive_wal(&env, SEG, 3 * SEG);

        // The first backup: one block the second will share, five only it has.
        let mut first = start_backup(&env);
        let (first_id, key) = welcome(&mut first).await;
        let shared = block(&key, &page(1));
        let own: Vec<Block> = (10..15).map(|i| block(&key, &page(i))).collect();
        let all: Vec<&Block> = std::iter::once(&shared).chain(&own).collect();
        send_backup(&mut first, &all, vec![file("base/1/1", &all)], finish(30)).await;
        assert!(matches!(first.recv().await, Message::BackupEntry { .. }));
        first.finish();
        first.end().await.unwrap();

        // The second backup is told the shared block is held...
        let mut second = start_backup(&env);
        welcome(&mut second).await;
        second.send(vec![Message::HaveBlocks {
            hashes: vec![shared.hash],
        }]);
        assert!(matches!(second.recv().await, Message::BlocksHeld { held } if held == [true]));

        // ... then the first backup goes and retention runs before the second one ends: the
        // first backup's pack dies but for the claimed block, so it is rewritten around it.
        let deleted = catalog(&env, Message::DeleteBackup { id: first_id }).await;
        assert!(
            matches!(&deleted[0], Message::BackupEntry { .. }),
            "{deleted:?}"
        );
        let report = run_retention(&env).await;
        assert_eq!(report.blocks.blocks, 5, "{report:?}");
        assert_eq!(report.blocks.packs_rewritten, 1, "{report:?}");

        // The second backup names the block and completes; it reads back whole.
        second.send(vec![
            Message::FileEntry {
                entry: file("base/1/1", &[&shared]),
            },
            Message::ManifestData {
                data: Bytes::from_static(b"{}"),
            },
            Message::FinishBackup { finish: finish(30) },
        ]);
        let Message::BackupEntry { json } = second.recv().await else {
            panic!("the second backup completes");
        };
        let info = BackupInfo::from_json(&json).unwrap();
        second.finish();
        second.end().await.unwrap();
        let verified = catalog(
            &env,
            Message::VerifyBackup {
                id: info.id.clone(),
            },
        )
        .await;
        assert!(
            verified
                .iter()
                .any(|m| matches!(m, Message::BackupEntry { .. })),
            "{verified:?}"
        );
        let got = catalog(
            &env,
            Message::GetBlocks {
                hashes: vec![shared.hash],
            },
        )
        .await;
        assert!(
            matches!(&got[..], [Message::BlockData { block }] if block.hash == shared.hash),
            "{got:?}"
        );
        // Nothing is left to reclaim: the shared block is referenced now.
        assert_eq!(run_retention(&env).await.blocks.blocks, 0);
    }
}
