//! Encryption at rest end to end: with a key configured, a marker written in PostgreSQL
//! appears nowhere in the server's data directory, yet the WAL read back for recovery has it;
//! without the key nothing can be read.

mod common;

use std::path::Path;

use common::*;
use klio_testkit::Stack;

const MARKER: &str = "klio-marker-7f3a9c51e2";

fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read directory") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p)
                .expect("read file")
                .windows(needle.len())
                .any(|w| w == needle)
            {
                hits.push(p.display().to_string());
            }
        }
    }
    hits
}

#[test]
fn marker_is_nowhere_on_disk_but_comes_back_for_recovery() {
    let mut stack = stack("encryption")
        .segment_size_mb(1)
        .sync_standby()
        .encryption()
        .start();
    let Stack {
        pg,
        server,
        client,
        key: Some(key),
        work,
        ..
    } = &mut stack
    else {
        unreachable!("built with encryption")
    };

    // The marker lands in completed segments (several switches) and in the segment in progress.
    pg.psql("CREATE TABLE secrets (note text)");
    for _ in 0..3 {
        pg.psql(&format!(
            "INSERT INTO secrets SELECT '{MARKER}' || g FROM generate_series(1, 2000) g"
        ));
        pg.switch_wal();
    }
    pg.psql(&format!("INSERT INTO secrets VALUES ('{MARKER} last')"));
    client.stop();

    let on_disk = files_containing(server.data_dir(), MARKER.as_bytes());
    assert!(
        on_disk.is_empty(),
        "plaintext marker on the server's disk: {on_disk:?}"
    );
    assert!(
        server.log().contains("WAL encrypted with key"),
        "server says it encrypts"
    );

    // Without the key the archive cannot be read at all.
    let plain = klio_store::wal_archive::WalArchiveReader::open(&server.wal_dir("pg1"));
    let err = plain.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        err.contains("encrypted"),
        "opening without the key: {err:?}"
    );

    // With it, the WAL read back holds the marker, in complete segments and the partial one.
    let exported = export_archive_with(server, "pg1", work, Some(keyring(&[&key.path])));
    let found = files_containing(&exported, MARKER.as_bytes());
    assert!(
        found.iter().any(|f| f.ends_with(".partial")),
        "marker in the partial segment: {found:?}"
    );
    assert!(found.len() >= 3, "marker in several segments: {found:?}");
}

/// A key derived from a passphrase: the server reads the passphrase from the variable the key
/// file names, encrypts with it, and refuses to start with a wrong or missing passphrase.
#[test]
fn passphrase_key_encrypts_and_a_wrong_passphrase_is_refused() {
    const VAR: &str = "KLIO_TEST_WAL_PASSPHRASE";
    const PASSPHRASE: &str = "correct horse battery staple";
    let mut stack = stack("encryption-passphrase")
        .segment_size_mb(1)
        .sync_standby()
        .passphrase_encryption(VAR, PASSPHRASE)
        .start();
    let Stack {
        pg,
        server,
        client,
        key: Some(key),
        work,
        ..
    } = &mut stack
    else {
        unreachable!("built with encryption")
    };
    let (key, generated) = (&key.path, &key.generated);
    let file = klio_crypto::PassphraseKeyFile::parse(&std::fs::read(key).expect("read key file"))
        .expect("a passphrase key file");
    assert!(
        generated.contains(&file.key_id.to_string()),
        "generate prints the key id: {}",
        generated
    );
    assert!(
        !String::from_utf8_lossy(&std::fs::read(key).expect("read")).contains(PASSPHRASE),
        "the passphrase is not stored"
    );

    assert!(
        server
            .log()
            .contains(&format!("WAL encrypted with key {}", file.key_id)),
        "server encrypts with the passphrase key: {}",
        server.log()
    );
    pg.psql("CREATE TABLE secrets (note text)");
    pg.psql(&format!(
        "INSERT INTO secrets SELECT '{MARKER}' || g FROM generate_series(1, 2000) g"
    ));
    pg.switch_wal();
    pg.psql(&format!("INSERT INTO secrets VALUES ('{MARKER} last')"));
    client.stop();
    server.stop();

    assert_eq!(
        files_containing(server.data_dir(), MARKER.as_bytes()),
        Vec::<String>::new(),
        "plaintext marker on the server's disk"
    );
    // The passphrase and the file together give the key that reads the archive back.
    let kek = file.derive(PASSPHRASE.as_bytes()).expect("derive");
    let exported = export_archive_with(server, "pg1", work, Some(klio_crypto::Keyring::new(kek)));
    assert!(
        !files_containing(&exported, MARKER.as_bytes()).is_empty(),
        "the marker comes back with the passphrase key"
    );

    // A wrong passphrase, or none, stops the server before it listens, saying why.
    for (env, expect) in [(Some("wrong horse"), "wrong passphrase"), (None, VAR)] {
        let mut cmd = server.command();
        cmd.env_remove(VAR);
        if let Some(p) = env {
            cmd.env(VAR, p);
        }
        let out = output_within(&mut cmd, std::time::Duration::from_secs(60));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "server started with passphrase {env:?}"
        );
        assert!(stderr.contains(expect), "{expect:?} not in: {stderr}");
        assert!(
            !stderr.contains("wrong horse"),
            "passphrase logged: {stderr}"
        );
    }
}

/// Runs `cmd` to completion; panics (after killing it) if it is still running after `limit`.
fn output_within(
    cmd: &mut std::process::Command,
    limit: std::time::Duration,
) -> std::process::Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().ok();
            panic!("still running after {limit:?}: {cmd:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.wait_with_output().expect("collect output")
}
