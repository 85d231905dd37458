//! Request metrics and the ops endpoint (`/metrics`, `/healthz`) every demo
//! service serves.

use std::net::SocketAddr;
use std::time::Instant;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

/// Per-operation request counters and latency.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    seconds: HistogramVec,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    match r {
        Ok(v) => v,
        // Constant names and labels, known to be valid.
        Err(e) => panic!("invalid metric definition: {e}"),
    }
}

impl Metrics {
    /// Metrics of `service` (a constant label).
    pub fn new(service: &str) -> Self {
        let registry = Registry::new();
        let requests = must(IntCounterVec::new(
            Opts::new("clew_demo_requests_total", "Requests handled")
                .const_label("service", service),
            &["operation", "outcome"],
        ));
        let seconds = must(HistogramVec::new(
            HistogramOpts::new("clew_demo_request_duration_seconds", "Request latency")
                .const_label("service", service),
            &["operation"],
        ));
        must(registry.register(Box::new(requests.clone())));
        must(registry.register(Box::new(seconds.clone())));
        Metrics {
            registry,
            requests,
            seconds,
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
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
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
