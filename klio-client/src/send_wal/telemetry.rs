//! What `send-wal` tells operators: Prometheus metrics and `/healthz`, served by a
//! [`klio_metrics::MetricsEndpoint`] when a metrics address is set.
//!
//! The series share names and the `cluster` label with the server's, so a dashboard can put
//! the client's view (what PostgreSQL sent) next to the server's (what is durable).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use klio_metrics::prometheus_client::metrics::counter::Counter;
use klio_metrics::prometheus_client::metrics::family::Family;
use klio_metrics::prometheus_client::metrics::gauge::Gauge;
use klio_metrics::prometheus_client::metrics::histogram::Histogram;
use klio_metrics::prometheus_client::registry::Registry;
use klio_metrics::{Health, KindLabel, Pages, gauge_value};
use klio_wal::{Lsn, TimelineId};

/// Flushes waiting for their acknowledgement that are timed; beyond this many the oldest
/// are no longer timed (the stream itself is not affected).
const MAX_TIMED: usize = 4096;

/// The client's metrics and health.
#[derive(Debug)]
pub(crate) struct SendWalTelemetry {
    registry: Registry,
    received: Counter,
    acknowledged: Counter,
    durable_lsn: Gauge,
    durable_timeline: Gauge,
    upstream_lsn: Gauge,
    lag_bytes: Gauge,
    ack_latency: Histogram,
    postgres_connected: Gauge,
    server_connected: Gauge,
    reconnects: Counter,
    errors: Family<KindLabel, Counter>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    streaming: bool,
    durable: Option<Lsn>,
    upstream: Option<Lsn>,
    last_error: Option<String>,
    /// Ends of the WAL handed to the server, with when, oldest first.
    in_flight: VecDeque<(Lsn, Instant)>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SendWalTelemetry {
    pub(crate) fn new(cluster: &str) -> Self {
        let labels = [(Cow::Borrowed("cluster"), Cow::Owned(cluster.to_owned()))];
        let mut r = Registry::with_prefix_and_labels("klio", labels.into_iter());
        let t = Self {
            registry: Registry::default(),
            received: Counter::default(),
            acknowledged: Counter::default(),
            durable_lsn: Gauge::default(),
            durable_timeline: Gauge::default(),
            upstream_lsn: Gauge::default(),
            lag_bytes: Gauge::default(),
            ack_latency: klio_metrics::latency_histogram(),
            postgres_connected: Gauge::default(),
            server_connected: Gauge::default(),
            reconnects: Counter::default(),
            errors: Family::default(),
            state: Mutex::default(),
        };
        r.register(
            "wal_received_bytes",
            "WAL bytes received from PostgreSQL and handed to the server",
            t.received.clone(),
        );
        r.register(
            "wal_acknowledged_bytes",
            "WAL bytes the server acknowledged as durable",
            t.acknowledged.clone(),
        );
        r.register(
            "wal_durable_lsn",
            "End of the WAL the server acknowledged as durable (reported to PostgreSQL as flush)",
            t.durable_lsn.clone(),
        );
        r.register(
            "wal_durable_timeline",
            "The timeline being streamed",
            t.durable_timeline.clone(),
        );
        r.register(
            "wal_upstream_lsn",
            "End of PostgreSQL's WAL, as its walsender last said",
            t.upstream_lsn.clone(),
        );
        r.register(
            "wal_replication_lag_bytes",
            "WAL bytes PostgreSQL has that the server has not yet made durable",
            t.lag_bytes.clone(),
        );
        r.register(
            "wal_ack_latency_seconds",
            "From WAL handed to the server to its durable acknowledgement",
            t.ack_latency.clone(),
        );
        r.register(
            "postgres_connected",
            "1 while the replication connection to PostgreSQL is up",
            t.postgres_connected.clone(),
        );
        r.register(
            "server_connected",
            "1 while the connection to the Klio server is up",
            t.server_connected.clone(),
        );
        r.register(
            "reconnects",
            "Sessions started again after a failure",
            t.reconnects.clone(),
        );
        r.register(
            "errors",
            "Sessions ended by an error, by kind (postgres, server, stream)",
            t.errors.clone(),
        );
        Self { registry: r, ..t }
    }

    /// The replication connection is up (or down).
    pub(crate) fn postgres_connected(&self, up: bool) {
        self.postgres_connected.set(i64::from(up));
        if !up {
            lock(&self.state).streaming = false;
        }
    }

    /// The server connection is up (or down).
    pub(crate) fn server_connected(&self, up: bool) {
        self.server_connected.set(i64::from(up));
        if !up {
            lock(&self.state).streaming = false;
        }
    }

    /// Streaming of `timeline` from `start` began; everything before `start` is durable.
    pub(crate) fn streaming(&self, timeline: TimelineId, start: Lsn) {
        let mut s = lock(&self.state);
        s.streaming = true;
        s.last_error = None;
        s.in_flight.clear();
        if s.durable.is_none_or(|d| d < start) {
            s.durable = Some(start);
        }
        self.durable_lsn
            .set(gauge_value(start.0.max(s.durable.map_or(0, |d| d.0))));
        self.durable_timeline.set(i64::from(timeline.get()));
        self.set_lag(&s);
    }

    /// WAL bytes arrived from PostgreSQL, whose WAL ends at `upstream`.
    pub(crate) fn received(&self, bytes: u64, upstream: Lsn) {
        self.received.inc_by(bytes);
        self.upstream(upstream);
    }

    /// PostgreSQL's WAL ends at `upstream`.
    pub(crate) fn upstream(&self, upstream: Lsn) {
        let mut s = lock(&self.state);
        if s.upstream.is_none_or(|u| u < upstream) {
            s.upstream = Some(upstream);
            self.upstream_lsn.set(gauge_value(upstream.0));
            self.set_lag(&s);
        }
    }

    /// WAL up to `end` was handed to the server.
    pub(crate) fn flushed(&self, end: Lsn) {
        let mut s = lock(&self.state);
        if s.in_flight.back().is_none_or(|(e, _)| *e < end) {
            if s.in_flight.len() == MAX_TIMED {
                s.in_flight.pop_front();
            }
            s.in_flight.push_back((end, Instant::now()));
        }
    }

    /// The server acknowledged everything up to `durable`.
    pub(crate) fn acknowledged(&self, durable: Lsn) {
        let mut s = lock(&self.state);
        if let Some(before) = s.durable {
            self.acknowledged.inc_by(durable.0.saturating_sub(before.0));
        }
        if s.durable.is_none_or(|d| d < durable) {
            s.durable = Some(durable);
            self.durable_lsn.set(gauge_value(durable.0));
        }
        while let Some(&(end, at)) = s.in_flight.front() {
            if end > durable {
                break;
            }
            self.ack_latency.observe(at.elapsed().as_secs_f64());
            s.in_flight.pop_front();
        }
        self.set_lag(&s);
    }

    fn set_lag(&self, s: &State) {
        if let (Some(u), Some(d)) = (s.upstream, s.durable) {
            self.lag_bytes.set(gauge_value(u.0.saturating_sub(d.0)));
        }
    }

    /// A session failed with an error of `kind`; the client will retry.
    pub(crate) fn failed(&self, kind: &str, message: String) {
        self.errors
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc();
        self.reconnects.inc();
        let mut s = lock(&self.state);
        s.streaming = false;
        s.last_error = Some(message);
    }
}

impl Pages for SendWalTelemetry {
    fn metrics(&self) -> String {
        klio_metrics::encode(&self.registry)
    }

    fn health(&self) -> Health {
        let s = lock(&self.state);
        if s.streaming {
            Health::Healthy
        } else {
            Health::Unhealthy(match &s.last_error {
                Some(e) => format!("not streaming: {e}"),
                None => "not streaming yet: connecting".to_owned(),
            })
        }
    }
}
