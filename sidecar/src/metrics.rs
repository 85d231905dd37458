//! Prometheus metrics of the sidecar. Label sets are bounded: `protocol`
//! has three values and `endpoint` one per collector endpoint.

use clew_runtime::metrics::Registry;
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec};

#[cfg(test)]
mod tests;

/// The sidecar's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Spans received from applications, by protocol.
    pub received: IntCounterVec,
    /// Spans the collectors acknowledged.
    pub forwarded: IntCounter,
    /// Spans kept only on disk until sent (a collector unreachable or the
    /// memory buffer full); with disk durability every span is logged, and
    /// only those not also cached in memory count here.
    pub spilled: IntCounter,
    /// Spans sent from the spill log and acknowledged.
    pub replayed: IntCounter,
    /// Spans refused to applications because memory and disk were full.
    pub refused: IntCounter,
    /// Spans a collector rejected as invalid (not retried).
    pub rejected: IntCounter,
    /// Acknowledged spans dropped, by reason: `refused` (a collector
    /// refused a single span for good), `disk_error` (they could not be
    /// parked for re-routing), `spill_full_at_shutdown` (memory durability).
    pub dropped: IntCounterVec,
    /// Spill records unreadable after a crash or corruption.
    pub spill_corrupt: IntCounter,
    /// Failed sends, by endpoint.
    pub send_failures: IntCounterVec,
    /// Bytes of encoded spans held in memory.
    pub buffer_bytes: IntGauge,
    /// Unsent bytes in the spill logs.
    pub spill_bytes: IntGauge,
    /// Number of collector endpoints routed to.
    pub endpoints: IntGauge,
    /// Periodic lookups of the collector DNS name that answered with
    /// addresses (and set the endpoints).
    pub dns_refreshes: IntCounter,
    /// 1 while an endpoint's circuit breaker is open or half-open.
    pub breaker_open: IntGaugeVec,
    /// Latency of sends to collectors.
    pub send_seconds: Histogram,
}

/// The values of `clew_sidecar_spans_dropped_total`'s `reason` label.
pub const DROP_REASONS: [&str; 3] = ["refused", "disk_error", "spill_full_at_shutdown"];

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let r = Registry::new();
        let c = |name: &str, help: &str| r.counter(name, help);
        let cv = |name: &str, help: &str, label: &str| r.counter_vec(name, help, &[label]);
        let g = |name: &str, help: &str| r.gauge(name, help);
        let breaker_open = r.gauge_vec(
            "clew_sidecar_breaker_open",
            "1 while the circuit breaker of a collector endpoint is open or half-open",
            &["endpoint"],
        );
        let send_seconds = r.histogram(
            "clew_sidecar_send_duration_seconds",
            "Latency of export requests to collectors",
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ],
        );
        let dropped = cv(
            "clew_sidecar_spans_dropped_total",
            "Acknowledged spans dropped, by reason",
            "reason",
        );
        // Every reason is exported from the start, at 0.
        for reason in DROP_REASONS {
            dropped.with_label_values(&[reason]);
        }
        Metrics {
            received: cv(
                "clew_sidecar_spans_received_total",
                "Spans received from applications",
                "protocol",
            ),
            forwarded: c(
                "clew_sidecar_spans_forwarded_total",
                "Spans acknowledged by collectors (spill replays included)",
            ),
            spilled: c(
                "clew_sidecar_spans_spilled_total",
                "Spans kept only on disk until sent (collector unreachable or memory buffer full)",
            ),
            replayed: c(
                "clew_sidecar_spans_replayed_total",
                "Spans sent from the spill log and acknowledged",
            ),
            refused: c(
                "clew_sidecar_spans_refused_total",
                "Spans refused to applications with a retryable answer (buffer, spill log or disk full, or not durable in time)",
            ),
            rejected: c(
                "clew_sidecar_spans_rejected_total",
                "Spans collectors rejected as invalid",
            ),
            dropped,
            spill_corrupt: c(
                "clew_sidecar_spill_corrupt_records_total",
                "Spill records that could not be read back",
            ),
            send_failures: cv(
                "clew_sidecar_send_failures_total",
                "Failed export requests",
                "endpoint",
            ),
            buffer_bytes: g(
                "clew_sidecar_buffer_bytes",
                "Bytes of spans held in the memory buffer",
            ),
            spill_bytes: g(
                "clew_sidecar_spill_bytes",
                "Bytes of unsent spans in the spill logs",
            ),
            endpoints: g(
                "clew_sidecar_endpoints",
                "Collector endpoints currently routed to",
            ),
            dns_refreshes: c(
                "clew_sidecar_dns_refreshes_total",
                "Periodic lookups of the collector DNS name that answered with addresses",
            ),
            breaker_open,
            send_seconds,
            registry: r,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        self.registry.render()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
