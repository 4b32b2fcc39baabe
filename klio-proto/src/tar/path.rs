//! Entry paths: relative, normalized, and unable to leave the directory they are restored into.

use std::fmt;

use super::error::PathProblem;

/// The path of an archive entry, relative to the directory the archive describes.
///
/// Normalized: no leading `./`, no `.` components, no empty components, no trailing `/`
/// (PostgreSQL ends directory and symbolic-link names with one). Never absolute and never
/// with a `..` component, so joining it to a data directory stays inside it. The bytes are
/// kept as recorded: PostgreSQL writes file names as the file system returns them, which need
/// not be UTF-8. The empty path is the archive's root directory (`./` in `tar -C dir .`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryPath(Vec<u8>);

impl EntryPath {
    /// Normalizes `raw` (a ustar prefix and name already joined, or a path stored elsewhere)
    /// or says why it is unsafe.
    pub fn parse(raw: &[u8]) -> Result<Self, PathProblem> {
        if raw.first() == Some(&b'/') {
            return Err(PathProblem::Absolute);
        }
        let mut out = Vec::with_capacity(raw.len());
        for component in raw.split(|&b| b == b'/') {
            match component {
                b"" | b"." => {}
                b".." => return Err(PathProblem::ParentComponent),
                c => {
                    if !out.is_empty() {
                        out.push(b'/');
                    }
                    out.extend_from_slice(c);
                }
            }
        }
        Ok(Self(out))
    }

    /// The normalized path's bytes, components separated by `/`.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The path as text, when it is UTF-8 (PostgreSQL's own files always are).
    pub fn to_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// Whether this is the archive's root directory (the empty path).
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The path's components, in order.
    pub fn components(&self) -> impl Iterator<Item = &[u8]> {
        self.0.split(|&b| b == b'/').filter(|c| !c.is_empty())
    }

    /// The path as a relative [`std::path::Path`], to join to a target directory.
    #[cfg(unix)]
    pub fn as_path(&self) -> &std::path::Path {
        use std::os::unix::ffi::OsStrExt;
        std::path::Path::new(std::ffi::OsStr::from_bytes(&self.0))
    }
}

impl fmt::Display for EntryPath {
    /// The path, with bytes that are not UTF-8 shown as U+FFFD; the root shows as `.`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_root() {
            f.write_str(".")
        } else {
            f.write_str(&String::from_utf8_lossy(&self.0))
        }
    }
}
