//! Helpers shared by the klio binary's end-to-end tests; the rest lives in klio-testkit.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Command;

use klio_testkit::{Stack, StackBuilder, TestDir};

/// The klio binary, copied where the `postgres` user can run it.
pub fn klio_exe(dir: &TestDir) -> PathBuf {
    dir.install_exe(Path::new(env!("CARGO_BIN_EXE_klio")))
}

/// A [`Stack`] running the klio binary under test; `label` names its directories.
pub fn stack(label: &str) -> StackBuilder {
    Stack::builder(label, Path::new(env!("CARGO_BIN_EXE_klio")))
}

/// A pg_receivewal-style copy of a cluster's archive on the Klio server, readable by the
/// postgres user (for `klio restore-wal` as restore_command).
pub fn export_archive(server: &klio_testkit::KlioServer, cluster: &str, work: &TestDir) -> PathBuf {
    export_archive_with(server, cluster, work, None)
}

/// [`export_archive`] of an encrypted archive.
pub fn export_archive_with(
    server: &klio_testkit::KlioServer,
    cluster: &str,
    work: &TestDir,
    keyring: Option<klio_crypto::Keyring>,
) -> PathBuf {
    let dest = work.subdir(&format!("export-{cluster}"));
    let archive =
        klio_store::wal_archive::WalArchiveReader::open_with(&server.wal_dir(cluster), keyring)
            .expect("open the server's archive");
    archive
        .export_to_directory(&dest)
        .expect("export the archive");
    klio_testkit::run_ok(
        Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dest),
    );
    dest
}

/// After a recovery: `ticks` holds every tick up to `last_tick` (none lost, none beyond), and
/// the `last_words` table committed just before the crash is there.
pub fn assert_every_commit_recovered(pg: &klio_testkit::PgServer, last_tick: u64) {
    assert_eq!(
        pg.psql("SELECT count(*), max(id) FROM ticks"),
        format!("{last_tick}|{last_tick}"),
        "every committed tick, and the last one"
    );
    assert_eq!(pg.psql("SELECT note FROM last_words"), "committed last");
}

/// The keyring the server would load from these key files (the first is the primary).
pub fn keyring(files: &[&Path]) -> klio_crypto::Keyring {
    let (first, rest) = files.split_first().expect("at least one key file");
    let rest: Vec<PathBuf> = rest.iter().map(|p| p.to_path_buf()).collect();
    klio_server::keys::load_keyring(first, &rest).expect("load key files")
}
pub mod backups;
pub mod retention;
pub mod tier2;
pub mod tier2_bucket;
