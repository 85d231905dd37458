//! Prometheus metrics of the operator (bounded label sets only).

use clew_runtime::metrics::Registry;
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};

#[cfg(test)]
mod tests;

/// The operator's metrics, registered in their own registry.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// Connections of the webhook and ops listeners.
    pub conns: clew_runtime::net::ConnMetrics,
    /// Reconciliations started.
    pub reconciliations: IntCounter,
    /// Failed reconciliations by error kind.
    pub reconcile_errors: IntCounterVec,
    /// Reconciliation duration.
    pub reconcile_duration: Histogram,
    /// Workloads whose pod template was patched to pick up new sidecar settings.
    pub workload_rollouts: IntCounter,
    /// 1 while this replica holds the leader lease.
    pub leader: IntGauge,
    /// Admission requests by result (`injected`, `skipped`, `not_requested`, `already_injected`, `invalid`).
    pub admissions: IntCounterVec,
    /// Unix time at which the webhook serving certificate expires.
    pub cert_not_after: IntGauge,
    /// Webhook certificates (re)generated.
    pub cert_rotations: IntCounter,
    /// Pipeline certificates issued, by `kind` and `reason`.
    pub certificates_issued: IntCounterVec,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let r = Registry::new();
        Self {
            conns: clew_runtime::net::ConnMetrics::new(),
            reconciliations: r.counter(
                "clew_operator_reconciliations_total",
                "TraceCollector reconciliations started",
            ),
            reconcile_errors: r.counter_vec(
                "clew_operator_reconcile_errors_total",
                "Failed TraceCollector reconciliations by error kind",
                &["error"],
            ),
            reconcile_duration: r.histogram(
                "clew_operator_reconcile_duration_seconds",
                "Duration of one TraceCollector reconciliation",
                &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
            ),
            workload_rollouts: r.counter(
                "clew_operator_workload_rollouts_total",
                "Workloads rolled because their sidecar settings changed",
            ),
            leader: r.gauge(
                "clew_operator_leader",
                "1 while this replica holds the leader lease",
            ),
            admissions: r.counter_vec(
                "clew_operator_admissions_total",
                "Pod admission requests by result",
                &["result"],
            ),
            cert_not_after: r.gauge(
                "clew_operator_webhook_cert_not_after_seconds",
                "Unix time at which the webhook serving certificate expires",
            ),
            cert_rotations: r.counter(
                "clew_operator_webhook_cert_rotations_total",
                "Webhook certificates generated",
            ),
            certificates_issued: r.counter_vec(
                "clew_operator_certificates_issued_total",
                "Pipeline certificates issued by the operator's CA, by kind and reason",
                &["kind", "reason"],
            ),
            registry: r,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.registry.render() + &self.conns.render()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
