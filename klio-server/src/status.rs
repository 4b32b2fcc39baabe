//! `klio status`: what the running server knows of each cluster, as one JSON document served
//! on the metrics listener's `/status`, and its rendering for a terminal.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The whole answer of `/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    /// The server's version.
    pub version: String,
    /// When the server started (RFC 3339).
    pub started: String,
    /// Every cluster with an archive or a connection, by name.
    pub clusters: Vec<ClusterStatus>,
}

/// One cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn point(p: &StatusPoint) -> String {
    format!("{} (timeline {})", p.lsn, p.timeline)
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
                ..Default::default()
            }],
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
        ] {
            assert!(t.contains(want), "{want:?} missing in:\n{t}");
        }
        let back: ServerStatus = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
