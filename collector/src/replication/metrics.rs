//! Prometheus metrics of replication, both as origin and as replica.

use clew_runtime::metrics::Registry;
use prometheus::{GaugeVec, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec};

/// Replication's registry and metrics; rendered with the collector's.
#[derive(Debug)]
pub struct ReplicationMetrics {
    registry: Registry,
    /// Batches sent to a peer, by `peer` and `result` (`ok`, `failed`).
    pub batches: IntCounterVec,
    /// Spans sent to a peer and acknowledged, by `peer`.
    pub spans: IntCounterVec,
    /// Bytes of requests sent to a peer, by `peer`.
    pub bytes: IntCounterVec,
    /// Time from sending a batch to a peer to its answer, by `peer`.
    pub ack_seconds: HistogramVec,
    /// Time since a peer last answered a request, by `peer`.
    pub lag_seconds: GaugeVec,
    /// 1 while a peer answers, 0 after a failed call until a heartbeat
    /// succeeds, by `peer`.
    pub peer_up: IntGaugeVec,
    /// Batches refused to clients because they could not get their copies.
    pub refused_batches: IntCounter,
    /// Spans in those batches.
    pub refused_spans: IntCounter,
    /// Members of the collector set (this collector counted).
    pub members: IntGauge,
    /// The replication factor in force.
    pub factor: IntGauge,
    /// Copies that must be durable before a batch is acknowledged.
    pub required_copies: IntGauge,
    /// 1 while the set is smaller than the configured factor.
    pub degraded: IntGauge,
    /// Batches kept for origins, by `origin`.
    pub replica_batches: IntCounterVec,
    /// Spans kept for origins, by `origin`.
    pub replica_spans: IntCounterVec,
    /// Batches held for an origin and not yet released, by `origin`.
    pub replica_held: IntGaugeVec,
    /// Size of the replica logs' segment files.
    pub replica_disk_bytes: IntGauge,
    /// Replication requests refused, by `reason`.
    pub replica_refused: IntCounterVec,
    /// Takeovers of an origin's unreleased batches, by `reason` (`left`,
    /// `unreachable`, `incarnation`).
    pub takeovers: IntCounterVec,
    /// Spans stored through takeovers.
    pub takeover_spans: IntCounter,
}

impl Default for ReplicationMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplicationMetrics {
    /// A fresh registry with every replication metric.
    pub fn new() -> Self {
        let r = Registry::new();
        let peer = &["peer"];
        let origin = &["origin"];
        let buckets = &[
            0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        let refused = r.counter_vec(
            "clew_replica_refused_total",
            "Replication requests refused, by reason (not_member, invalid, unavailable)",
            &["reason"],
        );
        for reason in ["not_member", "invalid", "unavailable"] {
            refused.with_label_values(&[reason]);
        }
        let takeovers = r.counter_vec(
            "clew_replication_takeovers_total",
            "Takeovers of an origin's unreleased batches, by reason (left, unreachable, incarnation)",
            &["reason"],
        );
        for reason in ["left", "unreachable", "incarnation"] {
            takeovers.with_label_values(&[reason]);
        }
        ReplicationMetrics {
            batches: r.counter_vec(
                "clew_replication_batches_total",
                "Batches sent to a peer for a copy, by peer and result (ok, failed)",
                &["peer", "result"],
            ),
            spans: r.counter_vec(
                "clew_replication_spans_total",
                "Spans a peer acknowledged a copy of, by peer",
                peer,
            ),
            bytes: r.counter_vec(
                "clew_replication_bytes_total",
                "Bytes of replication requests sent, by peer",
                peer,
            ),
            ack_seconds: r.histogram_vec(
                "clew_replication_ack_seconds",
                "Time from sending a batch to a peer to its answer, by peer",
                buckets,
                peer,
            ),
            lag_seconds: r.float_gauge_vec(
                "clew_replication_lag_seconds",
                "Seconds since a peer last answered a replication request or heartbeat, by peer",
                peer,
            ),
            peer_up: r.gauge_vec(
                "clew_replication_peer_up",
                "1 while a peer answers; 0 after a failed call until a heartbeat succeeds",
                peer,
            ),
            refused_batches: r.counter(
                "clew_replication_refused_batches_total",
                "Batches refused to clients because they could not get their copies",
            ),
            refused_spans: r.counter(
                "clew_replication_refused_spans_total",
                "Spans in batches refused because they could not get their copies",
            ),
            members: r.gauge(
                "clew_replication_members",
                "Members of the collector set, this collector counted",
            ),
            factor: r.gauge(
                "clew_replication_factor",
                "The replication factor in force (the configured one, shrunk to the set)",
            ),
            required_copies: r.gauge(
                "clew_replication_required_copies",
                "Durable copies a batch needs before it is acknowledged",
            ),
            degraded: r.gauge(
                "clew_replication_degraded",
                "1 while the collector set is smaller than the configured replication factor",
            ),
            replica_batches: r.counter_vec(
                "clew_replica_batches_total",
                "Batches kept as copies for an origin, by origin",
                origin,
            ),
            replica_spans: r.counter_vec(
                "clew_replica_spans_total",
                "Spans kept as copies for an origin, by origin",
                origin,
            ),
            replica_held: r.gauge_vec(
                "clew_replica_held_batches",
                "Batches kept for an origin and not yet released by it, by origin",
                origin,
            ),
            replica_disk_bytes: r.gauge(
                "clew_replica_disk_bytes",
                "Size of the replica logs' segment files",
            ),
            replica_refused: refused,
            takeovers,
            takeover_spans: r.counter(
                "clew_replication_takeover_spans_total",
                "Spans of departed or unreachable origins stored by this collector",
            ),
            registry: r,
        }
    }

    /// The registry (for the metrics catalogue check).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.registry.render()
    }
}
