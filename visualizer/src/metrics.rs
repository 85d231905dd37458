//! Prometheus metrics of the visualizer.

use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use clew_runtime::metrics::Registry;
use prometheus::{HistogramVec, IntCounterVec};

use crate::AppState;

#[cfg(test)]
mod tests;

/// The visualizer's metrics, in their own registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    upstream_errors: IntCounterVec,
    upstream_seconds: HistogramVec,
    /// Connections of the listener (`listener="ui"`).
    pub conns: clew_runtime::net::ConnMetrics,
    /// Refused credentials (`surface="query"`).
    pub auth: clew_runtime::auth::AuthMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let r = Registry::new();
        Metrics {
            requests: r.counter_vec(
                "clew_visualizer_requests_total",
                "HTTP requests served, by kind (page, asset, api, ops) and status class",
                &["kind", "code"],
            ),
            upstream_errors: r.counter_vec(
                "clew_visualizer_upstream_errors_total",
                "Proxied requests the collector did not answer, by reason (unreachable, timeout)",
                &["reason"],
            ),
            upstream_seconds: r.histogram_vec(
                "clew_visualizer_upstream_seconds",
                "Time to the collector's response headers",
                &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0],
                &["code"],
            ),
            registry: r,
            conns: clew_runtime::net::ConnMetrics::new(),
            auth: clew_runtime::auth::AuthMetrics::new(),
        }
    }

    pub(crate) fn request(&self, kind: &str, status: StatusCode) {
        let class = match status.as_u16() {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.requests.with_label_values(&[kind, class]).inc();
    }

    pub(crate) fn upstream(&self, status: StatusCode, took: Duration) {
        self.upstream_seconds
            .with_label_values(&[status.as_str()])
            .observe(took.as_secs_f64());
    }

    pub(crate) fn upstream_error(&self, reason: &str) {
        self.upstream_errors.with_label_values(&[reason]).inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        self.registry.render() + &self.conns.render() + &self.auth.render()
    }
}

pub(crate) async fn render(State(st): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
}
