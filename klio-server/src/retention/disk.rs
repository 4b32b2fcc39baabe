//! Space on the file system of the data directory, for the "nearly full" warning: retention
//! never removes more than its policy allows because a disk fills up; the server says so
//! instead (logs, metrics, `klio status`).

use std::path::Path;

/// Space on a file system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DiskSpace {
    /// Bytes an unprivileged writer may still use.
    pub(crate) free_bytes: u64,
    /// The file system's size.
    pub(crate) total_bytes: u64,
}

impl DiskSpace {
    /// Of the file system holding `path`; `None` if it cannot be asked.
    pub(crate) fn of(path: &Path) -> Option<Self> {
        let s = rustix::fs::statvfs(path).ok()?;
        let unit = s.f_frsize.max(1);
        Some(Self {
            free_bytes: s.f_bavail.saturating_mul(unit),
            total_bytes: s.f_blocks.saturating_mul(unit),
        })
    }

    /// Used space in percent (0 for an empty or unknown size).
    pub(crate) fn used_percent(&self) -> u8 {
        if self.total_bytes == 0 {
            return 0;
        }
        let used = self.total_bytes.saturating_sub(self.free_bytes);
        (u128::from(used) * 100 / u128::from(self.total_bytes)).min(100) as u8
    }

    /// Whether more than `warning_percent` is used.
    pub(crate) fn nearly_full(&self, warning_percent: u8) -> bool {
        self.used_percent() >= warning_percent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearly_full_from_the_warning_level() {
        let d = DiskSpace {
            free_bytes: 5,
            total_bytes: 100,
        };
        assert_eq!(d.used_percent(), 95);
        assert!(d.nearly_full(90));
        assert!(!d.nearly_full(96));
        let here = DiskSpace::of(Path::new(".")).expect("statvfs of the current directory");
        assert!(here.total_bytes >= here.free_bytes && here.total_bytes > 0);
    }
}
