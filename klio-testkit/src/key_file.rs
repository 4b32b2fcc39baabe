//! Encryption key files made with `klio keys generate`, for `klio server --encryption-key`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::command::run_ok;

/// A key file, readable by the postgres user that runs the server.
#[derive(Debug, Clone)]
pub struct KeyFile {
    /// The file.
    pub path: PathBuf,
    /// The key id `klio keys id` prints; archived objects name the key they need by it.
    pub id: String,
    /// What `klio keys generate` printed.
    pub generated: String,
}

impl KeyFile {
    /// `klio keys generate -o path`: a random key.
    pub fn generate(exe: &Path, path: &Path) -> Self {
        let generated = run_ok(Command::new(exe).args(["keys", "generate", "-o"]).arg(path));
        Self::finish(exe, path, generated.stdout, None)
    }

    /// `klio keys generate --passphrase` into `path`, the passphrase read from variable `var`.
    pub fn generate_with_passphrase(exe: &Path, path: &Path, var: &str, passphrase: &str) -> Self {
        let generated = run_ok(
            Command::new(exe)
                .args(["keys", "generate", "--passphrase", "--passphrase-env", var])
                .arg("-o")
                .arg(path)
                .env(var, passphrase),
        );
        Self::finish(exe, path, generated.stdout, Some((var, passphrase)))
    }

    fn finish(
        exe: &Path,
        path: &Path,
        generated: String,
        passphrase: Option<(&str, &str)>,
    ) -> Self {
        // The server runs as postgres and must read the file.
        run_ok(Command::new("chown").arg("postgres:postgres").arg(path));
        let mut id = Command::new(exe);
        id.args(["keys", "id"]).arg(path);
        // A passphrase key's id is read only with its passphrase.
        if let Some((var, value)) = passphrase {
            id.env(var, value);
        }
        Self {
            path: path.to_owned(),
            id: run_ok(&mut id).stdout.trim().to_owned(),
            generated,
        }
    }
}
