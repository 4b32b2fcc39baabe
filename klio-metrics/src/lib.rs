//! Klio's observability over HTTP, shared by the server and `send-wal`.
//!
//! - [`endpoint`]: a small HTTP/1.1 listener serving `/metrics` (Prometheus/OpenMetrics text),
//!   `/healthz` and, where a [`Pages`] implementation offers one, `/status` (JSON).
//! - [`get`]: the matching client, for `klio status` and tests.
//! - [`ClusterLabel`] and [`latency_histogram`]: what every Klio process labels and buckets
//!   the same way, so dashboards can join server and client series.
//!
//! The metrics themselves live next to the code they measure (the server's sessions, the
//! client's stream); this crate only carries them out.
#![warn(missing_docs)]

pub mod endpoint;
pub mod get;

pub use endpoint::{Health, MetricsEndpoint, MetricsError, Pages};
pub use get::{HttpGetError, Page, http_get};
pub use prometheus_client;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// The label every per-cluster series carries.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabel {
    /// The cluster's name (as in its client certificate).
    pub cluster: String,
}

/// A per-cluster series that also says what kind of event it counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterKindLabels {
    /// The cluster's name.
    pub cluster: String,
    /// What kind (an error code, a file kind).
    pub kind: String,
}

/// A series that says what kind of event it counts, in a registry whose constant labels
/// already name the cluster (a client serves one cluster).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// What kind.
    pub kind: String,
}

/// A series about a certificate: the process's own (`server`, `ca`; `cluster` empty) or a
/// cluster's client certificate (`client`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabel {
    /// Which certificate.
    pub certificate: String,
    /// The cluster of a client certificate; empty for the others.
    pub cluster: String,
}

/// A process-wide series that says why something happened (a refused connection, say).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why.
    pub reason: String,
}

/// Buckets for latencies of acknowledgements and fsyncs: 100 µs to about 13 s, doubling.
/// A healthy local fsync lands in the first few; a stalled disk shows in the last.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// An LSN or byte count as a gauge value. Gauges are signed 64-bit; positions beyond
/// `i64::MAX` (8 EiB of WAL) are shown as `i64::MAX` rather than wrapping negative.
pub fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Renders a registry in the OpenMetrics text format (what `/metrics` serves).
pub fn encode(registry: &prometheus_client::registry::Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}
