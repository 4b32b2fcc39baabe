//! Helpers shared by the klio binary's end-to-end tests; the rest lives in klio-testkit.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Command;

use klio_testkit::{TestDir, as_postgres};

/// The klio binary, copied where the `postgres` user can run it.
pub fn klio_exe(dir: &TestDir) -> PathBuf {
    dir.install_exe(Path::new(env!("CARGO_BIN_EXE_klio")))
}

/// A bash script run as the postgres user.
pub fn shell_as_postgres(script: &str) -> Command {
    let mut c = as_postgres("bash");
    c.args(["-c", script]);
    c
}
