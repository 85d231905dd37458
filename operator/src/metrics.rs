//! Prometheus metrics of the operator (bounded label sets only).

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::Result;

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
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self> {
        let registry = Registry::new();
        let reconciliations = IntCounter::new(
            "clew_operator_reconciliations_total",
            "TraceCollector reconciliations started",
        )?;
        let reconcile_errors = IntCounterVec::new(
            Opts::new(
                "clew_operator_reconcile_errors_total",
                "Failed TraceCollector reconciliations by error kind",
            ),
            &["error"],
        )?;
        let reconcile_duration = Histogram::with_opts(
            HistogramOpts::new(
                "clew_operator_reconcile_duration_seconds",
                "Duration of one TraceCollector reconciliation",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        )?;
        let workload_rollouts = IntCounter::new(
            "clew_operator_workload_rollouts_total",
            "Workloads rolled because their sidecar settings changed",
        )?;
        let leader = IntGauge::new(
            "clew_operator_leader",
            "1 while this replica holds the leader lease",
        )?;
        let admissions = IntCounterVec::new(
            Opts::new(
                "clew_operator_admissions_total",
                "Pod admission requests by result",
            ),
            &["result"],
        )?;
        let cert_not_after = IntGauge::new(
            "clew_operator_webhook_cert_not_after_seconds",
            "Unix time at which the webhook serving certificate expires",
        )?;
        let cert_rotations = IntCounter::new(
            "clew_operator_webhook_cert_rotations_total",
            "Webhook certificates generated",
        )?;
        registry.register(Box::new(reconciliations.clone()))?;
        registry.register(Box::new(reconcile_errors.clone()))?;
        registry.register(Box::new(reconcile_duration.clone()))?;
        registry.register(Box::new(workload_rollouts.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(admissions.clone()))?;
        registry.register(Box::new(cert_not_after.clone()))?;
        registry.register(Box::new(cert_rotations.clone()))?;
        Ok(Self {
            registry,
            conns: clew_runtime::net::ConnMetrics::new(),
            reconciliations,
            reconcile_errors,
            reconcile_duration,
            workload_rollouts,
            leader,
            admissions,
            cert_not_after,
            cert_rotations,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default() + &self.conns.render()
    }
}
