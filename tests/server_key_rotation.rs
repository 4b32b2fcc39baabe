//! Key rotation while streaming: restart the server with a new key (the old one kept for
//! reading); the files are re-wrapped under the new key, the old key is then no longer in use
//! and can be retired, and everything stays readable.

mod common;

use std::path::Path;

use common::*;
use klio_testkit::{KeyFile, PgServer, Stack, run_ok};

fn write_and_wait(pg: &PgServer, tag: &str) {
    pg.psql(&format!(
        "INSERT INTO notes SELECT '{tag}-' || g FROM generate_series(1, 3000) g"
    ));
    pg.switch_wal();
    pg.psql(&format!("INSERT INTO notes VALUES ('{tag}-last')"));
    let lsn = pg.current_lsn();
    pg.wait_for_flush("klio", &lsn);
}

#[test]
fn rotate_during_streaming_then_retire_the_old_key() {
    let mut stack = stack("rotation").segment_size_mb(1).encryption().start();
    let Stack {
        pg,
        server,
        client,
        key: Some(first_key),
        work,
        exe,
        ..
    } = &mut stack
    else {
        unreachable!("built with encryption")
    };
    let (k1, id1) = (first_key.path.clone(), first_key.id.clone());
    let KeyFile {
        path: k2, id: id2, ..
    } = KeyFile::generate(exe, &work.path().join("k2.key"));
    pg.psql("CREATE TABLE notes (t text)");
    write_and_wait(pg, "before-rotation");

    let data_dir = server.data_dir().to_owned();
    let in_use = |keys: &[&Path]| {
        let mut cmd = std::process::Command::new(&*exe);
        cmd.args(["keys", "in-use", "--data-dir"]).arg(&data_dir);
        for k in keys {
            cmd.arg("--key").arg(k);
        }
        run_ok(&mut cmd).stdout
    };
    assert_eq!(in_use(&[&k1]).trim(), format!("pg1: {id1}"));

    // Rotate: restart with k2 as the key, k1 kept for reading. The client reconnects by itself.
    server.set_extra_args(&[
        "--encryption-key".as_ref(),
        k2.as_os_str(),
        "--encryption-old-key".as_ref(),
        k1.as_os_str(),
    ]);
    server.restart();
    write_and_wait(pg, "after-rotation");
    assert!(
        server.log().contains("re-wrapped the data keys"),
        "server rotated"
    );
    assert_eq!(
        in_use(&[&k2, &k1]).trim(),
        format!("pg1: {id2}"),
        "k1 no longer in use"
    );

    // Retire k1: the server runs with k2 alone and streaming goes on.
    server.set_extra_args(&["--encryption-key".as_ref(), k2.as_os_str()]);
    server.restart();
    write_and_wait(pg, "after-retirement");
    client.stop();

    let exported = export_archive_with(server, "pg1", work, Some(keyring(&[&k2])));
    let all: Vec<u8> = std::fs::read_dir(&exported)
        .unwrap()
        .flat_map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    for tag in [
        "before-rotation-last",
        "after-rotation-last",
        "after-retirement-last",
    ] {
        assert!(
            all.windows(tag.len()).any(|w| w == tag.as_bytes()),
            "{tag} readable with k2 alone"
        );
    }
    let old_only = klio_store::wal_archive::WalArchiveReader::open_with(
        &server.wal_dir("pg1"),
        Some(keyring(&[&k1])),
    );
    let err = old_only
        .err()
        .map(|e| klio_wal::ErrorChain(&e).to_string())
        .unwrap_or_default();
    assert!(
        err.contains(&id2),
        "the retired key alone cannot read: {err}"
    );
}
