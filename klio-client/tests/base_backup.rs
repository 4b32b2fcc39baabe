//! `BASE_BACKUP` over the replication connection against real PostgreSQL 15: the archives and
//! manifest it yields make a directory that pg_verifybackup accepts, and rejects once one byte
//! of a relation file changed.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use klio_client::{ConnParams, ConnectionError, ReplicationConnection};
use klio_proto::base_backup::{
    BaseBackupFailure, BaseBackupOptions, CopyStreamEvent, TablespaceKind,
};
use klio_testkit::{PgOptions, PgServer, TestDir, as_postgres, pg_bin, run, run_ok};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// What one base backup produced: each archive in `archives/<name>`, the manifest in
/// `backup_manifest`, and what the stream said along the way.
struct Received {
    archives: Vec<(String, Option<String>, PathBuf)>,
    manifest: PathBuf,
    archive_bytes: u64,
    last_progress: Option<u64>,
    estimated_kb: u64,
    start: klio_proto::base_backup::BackupPosition,
    end: klio_proto::base_backup::BackupPosition,
    user_tablespaces: usize,
}

async fn connect(pg: &PgServer) -> ReplicationConnection {
    let cfg = ConnParams::parse(&pg.socket_connstr())
        .expect("connection string")
        .resolve(|_| None)
        .expect("settings");
    ReplicationConnection::connect(&cfg).await.expect("connect")
}

async fn receive(pg: &PgServer, out: &Path) -> Received {
    let mut conn = connect(pg).await;
    let options = BaseBackupOptions {
        label: "klio's test".to_owned(),
        ..BaseBackupOptions::default()
    };
    let mut stream = conn.base_backup(&options).await.expect("BASE_BACKUP");
    let start = stream.start();
    let estimated_kb = stream
        .tablespaces()
        .iter()
        .map(|t| t.size_kb.expect("PROGRESS gives sizes"))
        .sum();
    let user_tablespaces = stream
        .tablespaces()
        .iter()
        .filter(|t| matches!(t.kind, TablespaceKind::User { .. }))
        .count();
    let archive_dir = out.join("archives");
    std::fs::create_dir_all(&archive_dir).expect("archives directory");
    let manifest = out.join("backup_manifest");
    let mut archives = Vec::new();
    let mut current: Option<File> = None;
    let mut manifest_file: Option<File> = None;
    let mut archive_bytes = 0u64;
    let mut last_progress = None;
    while let Some(event) = stream.next_event().await.expect("stream event") {
        match event {
            CopyStreamEvent::NewArchive { name, tablespace } => {
                let path = archive_dir.join(&name);
                current = Some(File::create(&path).expect("create archive file"));
                archives.push((name, tablespace, path));
            }
            CopyStreamEvent::ArchiveData(data) => {
                archive_bytes += data.len() as u64;
                current
                    .as_mut()
                    .expect("an archive")
                    .write_all(&data)
                    .expect("write archive");
            }
            CopyStreamEvent::Progress(done) => {
                assert!(
                    last_progress.is_none_or(|p| p <= done),
                    "progress went back"
                );
                last_progress = Some(done);
            }
            CopyStreamEvent::ManifestStart => {
                current = None;
                manifest_file = Some(File::create(&manifest).expect("create manifest"));
            }
            CopyStreamEvent::ManifestData(data) => {
                manifest_file
                    .as_mut()
                    .expect("a manifest")
                    .write_all(&data)
                    .expect("write manifest");
            }
        }
    }
    let end = stream.finish().await.expect("the backup completes");
    conn.close().await;
    Received {
        archives,
        manifest,
        archive_bytes,
        last_progress,
        estimated_kb,
        start,
        end,
        user_tablespaces,
    }
}

fn untar(archive: &Path, into: &Path) {
    std::fs::create_dir_all(into).expect("extraction directory");
    run_ok(
        std::process::Command::new("tar")
            .arg("-xf")
            .arg(archive)
            .arg("-C")
            .arg(into),
    );
}

#[test]
fn a_streamed_base_backup_passes_pg_verifybackup_until_a_relation_byte_changes() {
    let pg = PgServer::start(PgOptions::default());
    let work = TestDir::new("base-backup");
    let tablespace_dir = work.subdir("tablespace");
    pg.psql(&format!(
        "CREATE TABLESPACE ts LOCATION '{}'",
        tablespace_dir.display()
    ));
    pg.psql("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g");
    pg.psql("CREATE TABLE in_ts TABLESPACE ts AS SELECT g FROM generate_series(1, 1000) g");
    let relation = pg.psql("SELECT pg_relation_filepath('t')");
    let out = work.subdir("out");

    let got = runtime().block_on(receive(&pg, &out));

    // Tablespace archives first, base.tar last, the manifest after them.
    let names: Vec<&str> = got.archives.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(got.user_tablespaces, 1);
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(names.last(), Some(&"base.tar"));
    assert!(got.archives[0].1.is_some() && got.archives[1].1.is_none());
    assert!(got.manifest.is_file());

    assert_eq!(got.start.timeline.get(), 1);
    assert_eq!(got.end.timeline.get(), 1);
    assert!(
        got.end.lsn >= got.start.lsn,
        "end {} before start {}",
        got.end.lsn,
        got.start.lsn
    );

    // Progress counts archive bytes; it ends at what was sent, which is at least the estimate.
    assert_eq!(got.last_progress, Some(got.archive_bytes));
    assert!(got.estimated_kb > 0);
    assert!(
        got.archive_bytes >= got.estimated_kb * 1024,
        "sent {} bytes, estimated {} kB",
        got.archive_bytes,
        got.estimated_kb
    );

    // base.tar is the data directory; each tablespace archive goes to pg_tblspc/<oid>.
    let backup = out.join("backup");
    for (name, tablespace, path) in &got.archives {
        match tablespace {
            None => untar(path, &backup),
            Some(_) => {
                let oid = name.trim_end_matches(".tar");
                untar(path, &backup.join("pg_tblspc").join(oid));
            }
        }
    }
    std::fs::copy(&got.manifest, backup.join("backup_manifest")).expect("copy manifest");
    assert!(
        backup.join("tablespace_map").is_file(),
        "TABLESPACE_MAP was asked for"
    );

    let verify = |dir: &Path| {
        run(std::process::Command::new(pg_bin("pg_verifybackup"))
            .arg("--no-parse-wal")
            .arg(dir))
    };
    let accepted = verify(&backup);
    assert!(
        accepted.success(),
        "pg_verifybackup rejected the backup: {accepted:?}"
    );

    let damaged = backup.join(&relation);
    let mut bytes = std::fs::read(&damaged).expect("read relation file");
    bytes[8192 + 100] ^= 0xff;
    std::fs::write(&damaged, bytes).expect("write relation file");
    let rejected = verify(&backup);
    assert!(
        !rejected.success(),
        "pg_verifybackup accepted a changed relation file"
    );
    assert!(rejected.stderr.contains(&relation), "{rejected:?}");
}

#[test]
fn a_page_checksum_failure_fails_the_backup_after_all_data_arrived() {
    let mut pg = PgServer::start(PgOptions::default());
    pg.psql("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g");
    pg.psql("CHECKPOINT");
    let relation = pg
        .data_dir()
        .join(pg.psql("SELECT pg_relation_filepath('t')"));
    pg.stop();
    run_ok(
        as_postgres(pg_bin("pg_checksums"))
            .arg("--enable")
            .arg("-D")
            .arg(pg.data_dir()),
    );
    // One byte in the body of the second page: its checksum no longer matches, its LSN (which
    // decides whether PostgreSQL checks it) is untouched.
    let mut bytes = std::fs::read(&relation).expect("read relation file");
    bytes[8192 + 4000] ^= 0xff;
    std::fs::write(&relation, bytes).expect("write relation file");
    pg.restart();

    runtime().block_on(async {
        let mut conn = connect(&pg).await;
        let mut stream = conn
            .base_backup(&BaseBackupOptions::default())
            .await
            .expect("BASE_BACKUP starts");
        let mut manifest_seen = false;
        while let Some(event) = stream.next_event().await.expect("stream event") {
            manifest_seen |= event == CopyStreamEvent::ManifestStart;
        }
        assert!(
            manifest_seen,
            "the whole stream, manifest included, arrives first"
        );
        let error = stream.finish().await.expect_err("the backup must fail");
        match &error {
            ConnectionError::BaseBackup(BaseBackupFailure::ChecksumFailure(server)) => {
                assert_eq!(server.code, "XX001");
            }
            other => panic!("expected a checksum failure, got {other:?}"),
        }
        let said = error
            .server_error()
            .map(|e| e.message.clone())
            .unwrap_or_default();
        assert!(said.contains("checksum"), "{said}");
        // The error was read up to ReadyForQuery: the connection still runs commands.
        conn.identify_system()
            .await
            .expect("IDENTIFY_SYSTEM after the failure");
        conn.close().await;
    });
}
