//! Helpers shared by the klio binary's end-to-end tests; the rest lives in klio-testkit.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Command;

use klio_testkit::TestDir;

/// The klio binary, copied where the `postgres` user can run it.
pub fn klio_exe(dir: &TestDir) -> PathBuf {
    dir.install_exe(Path::new(env!("CARGO_BIN_EXE_klio")))
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
        klio_store::wal_archive::WalArchive::open_existing_with(&server.wal_dir(cluster), keyring)
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

/// `klio keys generate` into `path` (readable by the postgres user that runs the server);
/// returns the key id `klio keys id` prints.
pub fn generate_key(exe: &Path, path: &Path) -> String {
    klio_testkit::run_ok(Command::new(exe).args(["keys", "generate", "-o"]).arg(path));
    klio_testkit::run_ok(Command::new("chown").arg("postgres:postgres").arg(path));
    klio_testkit::run_ok(Command::new(exe).args(["keys", "id"]).arg(path))
        .stdout
        .trim()
        .to_owned()
}

/// `klio keys generate --passphrase` into `path` with the passphrase in variable `var`
/// (readable by the postgres user that runs the server); returns the command's stdout.
pub fn generate_passphrase_key(exe: &Path, path: &Path, var: &str, passphrase: &str) -> String {
    let out = klio_testkit::run_ok(
        Command::new(exe)
            .args([
                "keys",
                "generate",
                "--passphrase",
                "--passphrase-env",
                var,
                "-o",
            ])
            .arg(path)
            .env(var, passphrase),
    );
    klio_testkit::run_ok(Command::new("chown").arg("postgres:postgres").arg(path));
    out.stdout
}

/// The keyring the server would load from these key files (the first is the primary).
pub fn keyring(files: &[&Path]) -> klio_crypto::Keyring {
    let (first, rest) = files.split_first().expect("at least one key file");
    let rest: Vec<PathBuf> = rest.iter().map(|p| p.to_path_buf()).collect();
    klio_server::keys::load_keyring(first, &rest).expect("load key files")
}
