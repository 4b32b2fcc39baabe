//! The capture's archives-to-blocks path over a real `BASE_BACKUP` of PostgreSQL 15, without a
//! Klio server: every file PostgreSQL's `backup_manifest` lists is in the file list, with its
//! size, and its blocks put together again have the manifest's CRC-32C.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use klio_crypto::{BlockHashAlgorithm, BlockHashKey};
use klio_proto::base_backup::{BaseBackupOptions, CopyStreamEvent};
use klio_proto::klio::{BlockHash, FileEntry, FileKind};
use klio_testkit::{PgOptions, PgServer, TestDir};

use super::BLOCK_SIZE;
use super::archives::ArchiveStream;
use super::batch::{Batch, BatchLimits};
use crate::{ConnParams, ReplicationConnection};

/// What the server would have received: every distinct block, and the file list in order.
#[derive(Default)]
struct Received {
    blocks: HashMap<BlockHash, Bytes>,
    files: Vec<FileEntry>,
    batches: usize,
}

impl Received {
    fn take(&mut self, batch: Batch) {
        for b in batch.blocks() {
            self.blocks.insert(b.hash, b.plain.clone());
        }
        self.files.extend(batch.files().iter().cloned());
        self.batches += 1;
    }

    fn contents(&self, file: &FileEntry) -> Vec<u8> {
        let mut out = Vec::with_capacity(file.size as usize);
        for h in &file.blocks {
            out.extend_from_slice(&self.blocks[h]);
        }
        out
    }
}

/// A PostgreSQL with a 50,000-row table `t` and a table `in_ts` in tablespace `ts`, whose
/// directory lives in the returned [`TestDir`].
pub(super) fn primary_with_tablespace(label: &str) -> (PgServer, TestDir) {
    let pg = PgServer::start(PgOptions::default());
    let work = TestDir::new(label);
    let tablespace_dir = work.subdir("tablespace");
    pg.psql(&format!(
        "CREATE TABLESPACE ts LOCATION '{}'",
        tablespace_dir.display()
    ));
    pg.psql("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 50000) g");
    pg.psql("CREATE TABLE in_ts TABLESPACE ts AS SELECT g FROM generate_series(1, 1000) g");
    (pg, work)
}

#[test]
fn every_file_of_a_real_base_backup_is_rebuilt_from_its_blocks_as_the_manifest_says() {
    let (pg, _work) = primary_with_tablespace("backup-blocks");
    let relation = pg.psql("SELECT pg_relation_filepath('t')");
    let ts_oid = pg.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts'");

    let mut got = Received::default();
    let mut manifest = Vec::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let cfg = ConnParams::parse(&pg.socket_connstr())
            .expect("connection string")
            .resolve(|_| None)
            .expect("settings");
        let mut conn = ReplicationConnection::connect(&cfg).await.expect("connect");
        let mut stream = conn
            .base_backup(&BaseBackupOptions::default())
            .await
            .expect("BASE_BACKUP");
        // Small batches, so that files span batches as they do in a large database.
        let limits = BatchLimits {
            max_hashes: 16,
            ..BatchLimits::default()
        };
        let mut archives = ArchiveStream::new(
            BlockHashKey::new(BlockHashAlgorithm::Blake3, [1; 32]),
            limits,
        );
        while let Some(event) = stream.next_event().await.expect("event") {
            match event {
                CopyStreamEvent::NewArchive { name, tablespace } => archives
                    .new_archive(name, tablespace.as_deref())
                    .expect("archive"),
                CopyStreamEvent::ArchiveData(data) => {
                    for batch in archives.data(&data).expect("archive data") {
                        got.take(batch);
                    }
                }
                CopyStreamEvent::ManifestStart => got.take(archives.finish().expect("ended")),
                CopyStreamEvent::ManifestData(data) => manifest.extend_from_slice(&data),
                CopyStreamEvent::Progress(_) => {}
            }
        }
        stream.finish().await.expect("the backup completes");
        conn.close().await;
    });
    assert!(got.batches > 2, "only {} batches", got.batches);

    let manifest: serde_json::Value = serde_json::from_slice(&manifest).expect("manifest JSON");
    let listed: BTreeMap<&str, &serde_json::Value> = manifest["Files"]
        .as_array()
        .expect("Files")
        .iter()
        .map(|f| (f["Path"].as_str().expect("Path"), f))
        .collect();
    let files: BTreeMap<&str, &FileEntry> = got
        .files
        .iter()
        .filter(|f| f.kind == FileKind::File)
        .map(|f| (f.path.as_str(), f))
        .collect();
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        listed.keys().collect::<Vec<_>>(),
        "the regular files are exactly those of the manifest"
    );
    for (path, m) in &listed {
        let file = files[path];
        let size = m["Size"].as_u64().expect("Size");
        assert_eq!(file.size, size, "{path}");
        assert_eq!(
            file.blocks.len() as u64,
            size.div_ceil(BLOCK_SIZE as u64),
            "{path}"
        );
        let contents = got.contents(file);
        assert_eq!(contents.len() as u64, size, "{path}");
        assert_eq!(m["Checksum-Algorithm"], "CRC32C", "{path}");
        // PostgreSQL writes the CRC's bytes in memory order (little-endian here), as hex.
        let crc: String = crc32c::crc32c(&contents)
            .to_le_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(m["Checksum"].as_str(), Some(crc.as_str()), "{path}");
    }

    // A relation of several blocks, tablespace files under pg_tblspc/<oid>/, and the empty
    // directories a restore must recreate.
    assert!(files[relation.as_str()].blocks.len() > 1);
    let in_tablespace = format!("pg_tblspc/{ts_oid}/");
    assert!(files.keys().any(|p| p.starts_with(&in_tablespace)));
    for dir in ["pg_wal", "pg_wal/archive_status", "pg_replslot"] {
        assert!(
            got.files
                .iter()
                .any(|f| f.path == dir && f.kind == FileKind::Directory),
            "{dir} is missing"
        );
    }
    assert!(files.contains_key("backup_label") && files.contains_key("tablespace_map"));
}
