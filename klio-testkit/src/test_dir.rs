//! Temporary directories that the `postgres` user can read and write.

use std::path::{Path, PathBuf};

/// A temporary directory owned by the `postgres` user when the tests run as root.
///
/// Removed on drop unless `KLIO_KEEP_TEST_DIRS` is set, which helps debugging a failure.
#[derive(Debug)]
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TestDir {
    /// Creates a directory; `label` shows up in its name.
    pub fn new(label: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("klio-{label}-"))
            .tempdir_in(std::env::temp_dir())
            .expect("create temporary directory");
        let path = dir.path().to_owned();
        give_to_postgres(&path);
        Self {
            dir: Some(dir),
            path,
        }
    }

    /// Creates a subdirectory (also owned by `postgres`) and returns its path.
    pub fn subdir(&self, name: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::create_dir_all(&p).expect("create subdirectory");
        give_to_postgres(&p);
        p
    }

    /// Copies an executable here so that the `postgres` user can run it (a build directory
    /// under /root is not reachable for it) and returns the copy's path.
    pub fn install_exe(&self, exe: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let name = exe.file_name().expect("executable file name");
        let dest = self.path.join(name);
        std::fs::copy(exe, &dest).expect("copy executable");
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))
            .expect("chmod executable");
        dest
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var_os("KLIO_KEEP_TEST_DIRS").is_some()
            && let Some(d) = self.dir.take()
        {
            eprintln!("keeping {}", d.keep().display());
        }
    }
}

/// Hands `path` to the `postgres` user when running as root; PostgreSQL requires it.
pub(crate) fn give_to_postgres(path: &Path) {
    if let Some((uid, gid)) = crate::command::postgres_ids() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to postgres");
    }
}
