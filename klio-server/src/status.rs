//! `klio status`: what the running server knows of each cluster, as one JSON document served
//! on the metrics listener's `/status`, and its rendering for a terminal.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The whole answer of `/status`. Fields added later default when absent, so a newer
/// `klio status` reads an older server.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerStatus {
    /// The server's version.
    pub version: String,
    /// When the server started (RFC 3339).
    pub started: String,
    /// Every cluster with an archive or a connection, by name.
    pub clusters: Vec<ClusterStatus>,
    /// Space on the data directory's file system.
    pub disk: Option<DiskStatus>,
    /// The server's certificate and its CA.
    pub certificates: Vec<CertificateStatus>,
}

/// When one of the server's certificates expires.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CertificateStatus {
    /// Which: `server` or `ca`.
    pub certificate: String,
    /// Its file.
    pub path: String,
    /// The end of its validity (RFC 3339).
    pub not_after: String,
    /// It has expired or expires within 30 days.
    pub expires_soon: bool,
}

/// Space on the data directory's file system.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskStatus {
    /// Bytes available.
    pub free_bytes: u64,
    /// The file system's size.
    pub total_bytes: u64,
    /// Percent used.
    pub used_percent: u8,
    /// `retention.disk_warning`.
    pub warning_percent: u8,
    /// `used_percent >= warning_percent`: retention still removes only what the policies
    /// allow; add space or tighten them.
    pub nearly_full: bool,
}

/// One cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterStatus {
    /// The cluster's name.
    pub cluster: String,
    /// The newest timeline with durable WAL.
    pub timeline: Option<u32>,
    /// End of the durable WAL on it, in PostgreSQL's notation (`0/3000148`).
    pub durable_lsn: Option<String>,
    /// When the server last acknowledged WAL as durable (RFC 3339), since it started.
    pub last_ack: Option<String>,
    /// End of PostgreSQL's WAL, as the client last reported it.
    pub upstream_lsn: Option<String>,
    /// `upstream_lsn - durable_lsn` in bytes: WAL PostgreSQL has that is not yet safe here.
    pub lag_bytes: Option<u64>,
    /// The oldest point a recovery can replay from, without a gap, to `recoverable_to`.
    pub recoverable_from: Option<StatusPoint>,
    /// The newest recoverable point.
    pub recoverable_to: Option<StatusPoint>,
    /// Runs of missing segments on the path to the newest WAL.
    pub gaps: Option<u64>,
    /// Completed segments stored.
    pub segments: Option<u64>,
    /// Bytes stored in the archive.
    pub archive_bytes: Option<u64>,
    /// Why the archive could not be summarized, if it could not.
    pub archive_error: Option<String>,
    /// QUIC connections of this cluster's clients (send-wal, get-wal).
    pub connections: u32,
    /// The client streaming WAL now, if any.
    pub streaming_client: Option<StreamingClient>,
    /// The last session that ended with an error.
    pub last_error: Option<LastError>,
    /// Complete backups in the catalog (what retention keeps).
    pub backups: Option<u64>,
    /// Why the catalog could not be read, if it could not.
    pub backups_error: Option<String>,
    /// The oldest point a restore can reach: the end of the oldest backup.
    pub oldest_recoverable: Option<OldestRecoverable>,
    /// The last retention run since the server started.
    pub last_retention: Option<RetentionRun>,
    /// The relay to Tier 2, when the server has a `tier2` section.
    pub tier2: Option<Tier2RelayStatus>,
    /// When the client certificate last seen for this cluster expires (RFC 3339).
    pub client_certificate_expires: Option<String>,
    /// It has expired or expires within 30 days: renew it with `klio certs renew --cluster`.
    pub client_certificate_expires_soon: bool,
}

/// Where a cluster's relay to Tier 2 stands.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Tier2RelayStatus {
    /// The end of the WAL in Tier 2 (all WAL before it on its timeline is up), if any.
    pub wal_end: Option<StatusPoint>,
    /// Tier 1's durable end minus `wal_end` on the same timeline, in bytes.
    pub lag_bytes: Option<u64>,
    /// 0 when caught up, else seconds since Tier 2's WAL end last equalled Tier 1's.
    pub lag_seconds: Option<u64>,
    /// Files waiting to go up.
    pub pending: u64,
    /// When an upload last succeeded (RFC 3339).
    pub last_success: Option<String>,
    /// The last upload that failed.
    pub last_error: Option<RelayFailure>,
    /// Why the relay of this cluster stopped, if it did (a damaged frontier).
    pub stopped: Option<String>,
}

/// An upload to Tier 2 that failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayFailure {
    /// When (RFC 3339).
    pub at: String,
    /// The file, relative to the cluster's directory (`wal/...`, `backups/...`).
    pub file: String,
    /// Its kind (`transport`, `throttled`, `integrity`, ...).
    pub kind: String,
    /// The error chain.
    pub message: String,
}

/// The oldest point a restore can reach.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OldestRecoverable {
    /// The backup a restore to it starts from.
    pub backup: String,
    /// When that backup ended (RFC 3339).
    pub time: String,
    /// Where it ends.
    pub point: StatusPoint,
}

/// A retention run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionRun {
    /// When it ended (RFC 3339).
    pub at: String,
    /// Whether it did all it had to.
    pub ok: bool,
    /// What it did, or why it failed.
    pub message: String,
}

/// A point in a cluster's WAL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusPoint {
    /// Timeline.
    pub timeline: u32,
    /// LSN, in PostgreSQL's notation.
    pub lsn: String,
}

/// The client streaming a cluster's WAL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamingClient {
    /// Its address.
    pub address: String,
    /// When its session started (RFC 3339).
    pub since: String,
}

/// An error that ended a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    /// When (RFC 3339).
    pub at: String,
    /// Its kind (the protocol's error code, snake_case).
    pub kind: String,
    /// What the client was told.
    pub message: String,
}

/// `klio status` could not get an answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StatusError {
    /// Nothing answered.
    #[error(
        "no Klio server answers on {addr} (is it running? `klio status` reads the \
         server's metrics listener, set by metrics.listen / --metrics-listen, default {default})",
        default = crate::config::DEFAULT_METRICS_LISTEN
    )]
    Unreachable {
        /// The address tried.
        addr: String,
        /// Why.
        #[source]
        source: klio_metrics::HttpGetError,
    },
    /// Something answered /status with an HTTP error.
    #[error("{addr} did not answer like a Klio server: HTTP {status} for /status")]
    NotKlio {
        /// The address.
        addr: String,
        /// The HTTP status code.
        status: u16,
    },
    /// Something answered /status, but not with a status document.
    #[error("{addr} did not answer like a Klio server: /status is not a Klio status document")]
    NotJson {
        /// The address.
        addr: String,
        /// Why the body does not parse.
        #[source]
        source: serde_json::Error,
    },
}

/// Asks the server whose metrics listener is at `addr` (`host:port`).
pub async fn fetch(addr: &str, timeout: Duration) -> Result<ServerStatus, StatusError> {
    let page = klio_metrics::http_get(addr, "/status", timeout)
        .await
        .map_err(|source| StatusError::Unreachable {
            addr: addr.to_owned(),
            source,
        })?;
    if page.status != 200 {
        return Err(StatusError::NotKlio {
            addr: addr.to_owned(),
            status: page.status,
        });
    }
    serde_json::from_str(&page.body).map_err(|source| StatusError::NotJson {
        addr: addr.to_owned(),
        source,
    })
}

fn bytes(n: u64) -> String {
    klio_wal::ByteSize(n).to_string()
}

fn point(p: &StatusPoint) -> String {
    format!("{} (timeline {})", p.lsn, p.timeline)
}

/// The Tier 2 lines of a cluster's block.
fn render_tier2(out: &mut String, t: &Tier2RelayStatus) {
    use std::fmt::Write;
    let end = match &t.wal_end {
        Some(p) => point(p),
        None => "no WAL yet".to_owned(),
    };
    let lag = match (t.lag_bytes, t.lag_seconds) {
        (Some(b), Some(s)) => format!(", {} and {s} s behind Tier 1", bytes(b)),
        (Some(b), None) => format!(", {} behind Tier 1", bytes(b)),
        _ => String::new(),
    };
    let _ = writeln!(out, "  tier 2       WAL to {end}{lag}");
    let _ = writeln!(
        out,
        "  tier 2 relay {} file(s) pending, last upload {}",
        t.pending,
        t.last_success.as_deref().unwrap_or("never")
    );
    if let Some(e) = &t.last_error {
        let _ = writeln!(
            out,
            "  tier 2 error {} at {}: {} ({})",
            e.file, e.at, e.message, e.kind
        );
    }
    if let Some(s) = &t.stopped {
        let _ = writeln!(out, "  tier 2 STOPPED: {s}");
    }
}

/// The status as text for a terminal: one block per cluster.
pub fn render_text(s: &ServerStatus) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "klio server {} (started {})", s.version, s.started);
    if s.clusters.is_empty() {
        out.push_str("no clusters yet: start `klio send-wal` for one\n");
    }
    for c in &s.clusters {
        let _ = writeln!(out, "\ncluster {}", c.cluster);
        let durable = match (&c.durable_lsn, c.timeline) {
            (Some(l), Some(t)) => format!(
                "{l} on timeline {t}{}",
                c.last_ack
                    .as_ref()
                    .map(|a| format!(", last acknowledged {a}"))
                    .unwrap_or_default()
            ),
            _ => "no WAL yet".to_owned(),
        };
        let _ = writeln!(out, "  durable      {durable}");
        let lag = match (c.lag_bytes, &c.upstream_lsn) {
            (Some(lag), Some(up)) => format!("{} behind PostgreSQL (at {up})", bytes(lag)),
            _ => "unknown (no client has reported PostgreSQL's position)".to_owned(),
        };
        let _ = writeln!(out, "  lag          {lag}");
        let range = match (&c.recoverable_from, &c.recoverable_to) {
            (Some(f), Some(t)) => format!("{} to {}", point(f), point(t)),
            _ => "none".to_owned(),
        };
        let _ = writeln!(out, "  recoverable  {range}");
        if let Some(e) = &c.archive_error {
            let _ = writeln!(out, "  archive      cannot be read: {e}");
        } else {
            let _ = writeln!(
                out,
                "  archive      {} segments, {}{}",
                c.segments.unwrap_or(0),
                bytes(c.archive_bytes.unwrap_or(0)),
                match c.gaps {
                    Some(0) | None => String::new(),
                    Some(g) => format!(
                        ", {g} gap(s): WAL before the last gap cannot reach the newest point"
                    ),
                }
            );
        }
        let client = match &c.streaming_client {
            Some(sc) => format!("{} streaming since {}", sc.address, sc.since),
            None if c.connections > 0 => {
                format!("{} connection(s), none streaming", c.connections)
            }
            None => "none connected".to_owned(),
        };
        let _ = writeln!(out, "  client       {client}");
        let error = match &c.last_error {
            Some(e) => format!("{} at {}: {}", e.kind, e.at, e.message),
            None => "none".to_owned(),
        };
        let _ = writeln!(out, "  last error   {error}");
        let backups = match (&c.backups_error, c.backups) {
            (Some(e), _) => format!("catalog cannot be read: {e}"),
            (None, Some(n)) => format!("{n} complete"),
            (None, None) => "none".to_owned(),
        };
        let _ = writeln!(out, "  backups      {backups}");
        let oldest = match &c.oldest_recoverable {
            Some(o) => format!(
                "{} (end of backup {}, {} on timeline {})",
                o.time, o.backup, o.point.lsn, o.point.timeline
            ),
            None => "none (no backup; take one with `klio backup run`)".to_owned(),
        };
        let _ = writeln!(out, "  oldest restore point  {oldest}");
        let retention = match &c.last_retention {
            Some(r) if r.ok => format!("{}: {}", r.at, r.message),
            Some(r) => format!("{}: FAILED: {}", r.at, r.message),
            None => "not run since the server started".to_owned(),
        };
        let _ = writeln!(out, "  retention    {retention}");
        if let Some(t) = &c.tier2 {
            render_tier2(&mut out, t);
        }
        if let Some(until) = &c.client_certificate_expires {
            let _ = writeln!(
                out,
                "  client cert  valid until {until}{}",
                if c.client_certificate_expires_soon {
                    format!(
                        "; EXPIRES SOON: `klio certs renew -D DIR --cluster {}`, files to the PostgreSQL host",
                        c.cluster
                    )
                } else {
                    String::new()
                }
            );
        }
    }
    if let Some(d) = &s.disk {
        let _ = writeln!(
            out,
            "
disk: {} free of {} ({}% used){}",
            bytes(d.free_bytes),
            bytes(d.total_bytes),
            d.used_percent,
            if d.nearly_full {
                format!(
                    "; NEARLY FULL (warning at {}%): retention removes only what the policies \
                     allow, so add space or shorten retention.keep_backups / recovery_window",
                    d.warning_percent
                )
            } else {
                String::new()
            }
        );
    }
    for c in &s.certificates {
        let _ = writeln!(
            out,
            "certificate {}: valid until {}{} ({})",
            c.certificate,
            c.not_after,
            if c.expires_soon {
                "; EXPIRES SOON: renew it (`klio certs renew -D DIR --server`) and send SIGHUP to the server"
            } else {
                ""
            },
            c.path
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_names_everything_an_operator_looks_for() {
        let s = ServerStatus {
            version: "0.1.0".into(),
            started: "2026-11-21T10:00:00Z".into(),
            clusters: vec![ClusterStatus {
                cluster: "pg-main".into(),
                timeline: Some(2),
                durable_lsn: Some("0/3000148".into()),
                upstream_lsn: Some("0/3100148".into()),
                lag_bytes: Some(1 << 20),
                recoverable_from: Some(StatusPoint {
                    timeline: 1,
                    lsn: "0/1000000".into(),
                }),
                recoverable_to: Some(StatusPoint {
                    timeline: 2,
                    lsn: "0/3000148".into(),
                }),
                gaps: Some(1),
                segments: Some(3),
                archive_bytes: Some(3 << 20),
                last_error: Some(LastError {
                    at: "2026-11-21T10:01:00Z".into(),
                    kind: "storage".into(),
                    message: "disk full".into(),
                }),
                backups: Some(2),
                oldest_recoverable: Some(OldestRecoverable {
                    backup: "20261121T090000Z-0a0b".into(),
                    time: "2026-11-21T09:00:05Z".into(),
                    point: StatusPoint {
                        timeline: 1,
                        lsn: "0/1000100".into(),
                    },
                }),
                last_retention: Some(RetentionRun {
                    at: "2026-11-21T10:02:00Z".into(),
                    ok: true,
                    message: "1 backup removed".into(),
                }),
                tier2: Some(Tier2RelayStatus {
                    wal_end: Some(StatusPoint {
                        timeline: 2,
                        lsn: "0/3000000".into(),
                    }),
                    lag_bytes: Some(0x148),
                    lag_seconds: Some(3),
                    pending: 2,
                    last_success: Some("2026-11-21T10:02:30Z".into()),
                    last_error: Some(RelayFailure {
                        at: "2026-11-21T10:02:31Z".into(),
                        file: "wal/000000020000000000000003".into(),
                        kind: "transport".into(),
                        message: "connection refused".into(),
                    }),
                    stopped: None,
                }),
                client_certificate_expires: Some("2026-11-30T00:00:00Z".into()),
                client_certificate_expires_soon: true,
                ..Default::default()
            }],
            disk: Some(DiskStatus {
                free_bytes: 5 << 30,
                total_bytes: 100 << 30,
                used_percent: 95,
                warning_percent: 90,
                nearly_full: true,
            }),
            certificates: vec![
                CertificateStatus {
                    certificate: "server".into(),
                    path: "/etc/klio/server.pem".into(),
                    not_after: "2026-12-01T00:00:00Z".into(),
                    expires_soon: true,
                },
                CertificateStatus {
                    certificate: "ca".into(),
                    path: "/etc/klio/ca.pem".into(),
                    not_after: "2036-11-01T00:00:00Z".into(),
                    expires_soon: false,
                },
            ],
        };
        let t = render_text(&s);
        for want in [
            "cluster pg-main",
            "0/3000148 on timeline 2",
            "1.0 MiB behind PostgreSQL (at 0/3100148)",
            "0/1000000 (timeline 1) to 0/3000148 (timeline 2)",
            "3 segments, 3.0 MiB, 1 gap(s)",
            "none connected",
            "storage at 2026-11-21T10:01:00Z: disk full",
            "backups      2 complete",
            "oldest restore point  2026-11-21T09:00:05Z (end of backup 20261121T090000Z-0a0b, 0/1000100 on timeline 1)",
            "retention    2026-11-21T10:02:00Z: 1 backup removed",
            "5.0 GiB free of 100.0 GiB (95% used); NEARLY FULL (warning at 90%)",
            "tier 2       WAL to 0/3000000 (timeline 2), 328 B and 3 s behind Tier 1",
            "2 file(s) pending, last upload 2026-11-21T10:02:30Z",
            "wal/000000020000000000000003 at 2026-11-21T10:02:31Z: connection refused (transport)",
            "certificate server: valid until 2026-12-01T00:00:00Z; EXPIRES SOON: renew it",
            "certificate ca: valid until 2036-11-01T00:00:00Z (/etc/klio/ca.pem)",
            "client cert  valid until 2026-11-30T00:00:00Z; EXPIRES SOON: `klio certs renew -D DIR --cluster pg-main`",
        ] {
            assert!(t.contains(want), "{want:?} missing in:\n{t}");
        }
        let back: ServerStatus = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}

#[cfg(test)]
mod compatibility {
    use super::*;

    #[test]
    fn a_document_without_the_newer_fields_still_reads() {
        let old = r#"{"version":"0.1.0","started":"2026-11-21T10:00:00Z","clusters":[{"cluster":"a","connections":0}]}"#;
        let s: ServerStatus = serde_json::from_str(old).unwrap();
        assert_eq!(s.clusters[0].backups, None);
        assert_eq!(s.disk, None);
    }
}
