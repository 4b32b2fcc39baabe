//! The listener against the crate's own client, over real TCP.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use klio_metrics::prometheus_client::metrics::counter::Counter;
use klio_metrics::prometheus_client::registry::Registry;
use klio_metrics::{Health, MetricsEndpoint, Pages, http_get};

struct TestPages {
    registry: Registry,
    served: Counter,
    healthy: AtomicBool,
}

impl Pages for TestPages {
    fn metrics(&self) -> String {
        self.served.inc();
        klio_metrics::encode(&self.registry)
    }
    fn health(&self) -> Health {
        if self.healthy.load(Ordering::SeqCst) {
            Health::Healthy
        } else {
            Health::Unhealthy("not connected to the server".to_owned())
        }
    }
}

#[tokio::test]
async fn serves_metrics_health_and_nothing_else() {
    let mut registry = Registry::with_prefix("klio");
    let served = Counter::<u64>::default();
    registry.register("scrapes", "Scrapes served", served.clone());
    let pages = Arc::new(TestPages {
        registry,
        served,
        healthy: AtomicBool::new(true),
    });
    let endpoint = MetricsEndpoint::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(endpoint.serve(pages.clone(), async {
        let _ = stopped.await;
    }));
    let t = Duration::from_secs(5);

    let first = http_get(&addr, "/metrics", t).await.unwrap();
    assert_eq!(first.status, 200);
    assert!(
        first.body.contains("klio_scrapes_total 1\n"),
        "{}",
        first.body
    );
    assert!(first.body.ends_with("# EOF\n"), "{}", first.body);
    let second = http_get(&addr, "/metrics", t).await.unwrap();
    assert!(
        second.body.contains("klio_scrapes_total 2\n"),
        "{}",
        second.body
    );

    assert_eq!(http_get(&addr, "/healthz", t).await.unwrap().status, 200);
    pages.healthy.store(false, Ordering::SeqCst);
    let sick = http_get(&addr, "/healthz", t).await.unwrap();
    assert_eq!(sick.status, 503);
    assert!(sick.body.contains("not connected"), "{}", sick.body);

    // No status page offered, and unknown paths are 404s that say what exists.
    assert_eq!(http_get(&addr, "/status", t).await.unwrap().status, 404);
    let other = http_get(&addr, "/admin", t).await.unwrap();
    assert_eq!(other.status, 404);
    assert!(other.body.contains("/metrics"), "{}", other.body);

    stop.send(()).unwrap();
    server.await.unwrap();
    let gone = http_get(&addr, "/metrics", t).await.unwrap_err();
    assert!(gone.to_string().contains("cannot connect"), "{gone}");
}

#[tokio::test]
async fn a_taken_port_is_a_clear_error() {
    let first = MetricsEndpoint::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = first.local_addr().unwrap();
    let e = MetricsEndpoint::bind(addr).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains(&addr.to_string()) && text.contains("--metrics-listen"),
        "{text}"
    );
}
