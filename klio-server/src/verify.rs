//! `klio verify`: checks one cluster's archive in a server's data directory (read-only, safe
//! while the server runs).

use std::path::{Path, PathBuf};

use klio_crypto::Keyring;
use klio_proto::klio::ClusterName;
use klio_store::wal_archive::{VerifyReport, WalArchiveError, WalArchiveReader};
use klio_wal::Lsn;

/// The archive could not be verified at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// No archive for this cluster.
    #[error("no archive for cluster {cluster} in {dir:?}; check --data-dir and --cluster")]
    NoArchive {
        /// The cluster.
        cluster: String,
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// The archive could not be opened or listed.
    #[error("cluster {cluster}")]
    Archive {
        /// The cluster.
        cluster: String,
        /// Why.
        #[source]
        source: WalArchiveError,
    },
}

/// Verifies the archive of `cluster` under `data_dir` from `from` (default: its oldest WAL).
pub fn verify_cluster(
    data_dir: &Path,
    cluster: &ClusterName,
    keyring: Option<Keyring>,
    from: Option<Lsn>,
) -> Result<VerifyReport, VerifyError> {
    let dir = data_dir.join("clusters").join(cluster.as_str()).join("wal");
    if !dir.is_dir() {
        return Err(VerifyError::NoArchive {
            cluster: cluster.to_string(),
            dir,
        });
    }
    let err = |source| VerifyError::Archive {
        cluster: cluster.to_string(),
        source,
    };
    WalArchiveReader::open_with(&dir, keyring)
        .map_err(err)?
        .verify(from)
        .map_err(err)
}

/// The report as text for a terminal or a log.
pub fn render_report(cluster: &ClusterName, report: &VerifyReport) -> String {
    let mut s = format!("cluster {cluster}\n");
    let tls: Vec<String> = report.timelines.iter().map(|t| t.to_string()).collect();
    s += &format!("  timelines followed: {}\n", tls.join(" -> "));
    s += &format!(
        "  segments walked: {}, records checked: {}, other files checked: {}\n",
        report.segments_walked, report.records_checked, report.other_files_checked
    );
    match &report.recoverable {
        Some((a, b)) => {
            s += &format!(
                "  recoverable: from {} (timeline {}) to {} (timeline {})\n",
                a.lsn, a.timeline, b.lsn, b.timeline
            );
        }
        None => s += "  recoverable: nothing\n",
    }
    if report.problems.is_empty() {
        s += "  OK: continuous and intact\n";
    } else {
        s += &format!("  {} PROBLEM(S):\n", report.problems.len());
        for p in &report.problems {
            s += &format!("  - {p}\n");
        }
    }
    s
}
