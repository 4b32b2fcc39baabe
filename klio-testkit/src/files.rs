//! Comparing directories and dumps.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::command::run;

/// sha256 (hex) of every file in `dir`, by file name.
pub fn digests(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .expect("read directory")
        .map(|e| {
            let e = e.expect("directory entry");
            let name = e.file_name().into_string().expect("UTF-8 file name");
            let bytes = std::fs::read(e.path()).expect("read file");
            let hex = Sha256::digest(&bytes)
                .iter()
                .map(|x| format!("{x:02x}"))
                .collect();
            (name, hex)
        })
        .collect()
}

/// Asserts two `pg_dumpall` outputs are identical; otherwise panics with a unified diff, the
/// dumps kept in `work` for inspection.
pub fn assert_same_dump(work: &Path, before: &str, after: &str) {
    if before == after {
        return;
    }
    let a = work.join("dump-before.sql");
    let b = work.join("dump-after.sql");
    std::fs::write(&a, before).expect("write dump");
    std::fs::write(&b, after).expect("write dump");
    let diff = run(Command::new("diff").arg("-u").arg(&a).arg(&b));
    let head: String = diff.stdout.lines().take(60).collect::<Vec<_>>().join("\n");
    panic!("pg_dumpall differs after recovery:\n{head}");
}
