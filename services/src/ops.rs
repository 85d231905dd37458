//! Request metrics and the ops endpoint (`/metrics`, `/healthz`) every demo
//! service serves.

use std::net::SocketAddr;
use std::time::Instant;

use clew_runtime::metrics::Registry;
use prometheus::{HistogramVec, IntCounterVec};

/// Per-operation request counters and latency.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    seconds: HistogramVec,
}

impl Metrics {
    /// Metrics of `service` (a constant label).
    pub fn new(service: &str) -> Self {
        let registry = Registry::with_const_label("service", service);
        Metrics {
            requests: registry.counter_vec(
                "clew_demo_requests_total",
                "Requests handled",
                &["operation", "outcome"],
            ),
            seconds: registry.histogram_vec(
                "clew_demo_request_duration_seconds",
                "Request latency",
                prometheus::DEFAULT_BUCKETS,
                &["operation"],
            ),
            registry,
        }
    }

    /// Records one request.
    pub fn observe(&self, operation: &str, ok: bool, started: Instant) {
        self.requests
            .with_label_values(&[operation, if ok { "ok" } else { "error" }])
            .inc();
        self.seconds
            .with_label_values(&[operation])
            .observe(started.elapsed().as_secs_f64());
    }

    /// Text exposition.
    pub fn render(&self) -> String {
        self.registry.render()
    }
}

/// The ops router (`/metrics`, `/healthz`, `/readyz`).
pub fn router(metrics: Metrics) -> axum::Router {
    clew_runtime::ops::router(
        std::sync::Arc::new(move || metrics.render()),
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
    )
}

/// Serves the ops router on `addr` until `stop` resolves.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let l = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(l, router(metrics))
        .with_graceful_shutdown(stop)
        .await?;
    Ok(())
}
