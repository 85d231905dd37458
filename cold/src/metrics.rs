//! The cold tier's Prometheus metrics (`docs/METRICS.md`, "collector cold
//! tier"), in a registry of their own that the collector renders beside
//! its others.

use clew_runtime::metrics::Registry;
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge};

/// What the mover, the maintenance and the reads count.
#[derive(Debug, Clone)]
pub struct ColdMetrics {
    registry: Registry,
    pub(crate) blocks_written: IntCounterVec,
    pub(crate) bytes_written: IntCounter,
    pub(crate) blocks_deleted: IntCounterVec,
    pub(crate) moved_traces: IntCounter,
    pub(crate) moved_spans: IntCounter,
    pub(crate) kept_traces: IntCounter,
    pub(crate) mover_lag: IntGauge,
    pub(crate) mover_errors: IntCounter,
    pub(crate) blocks: IntGauge,
    pub(crate) bytes: IntGauge,
    pub(crate) unreadable: IntCounter,
    pub(crate) read_seconds: HistogramVec,
    pub(crate) move_seconds: Histogram,
}

impl Default for ColdMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ColdMetrics {
    /// The metrics, in a registry of their own.
    pub fn new() -> Self {
        let r = Registry::new();
        let written = r.counter_vec(
            "clew_cold_blocks_written_total",
            "Cold blocks written, by reason (move, compact)",
            &["reason"],
        );
        let deleted = r.counter_vec(
            "clew_cold_blocks_deleted_total",
            "Cold blocks deleted, by reason (retention, sweep)",
            &["reason"],
        );
        for (c, reasons) in [
            (&written, ["move", "compact"]),
            (&deleted, ["retention", "sweep"]),
        ] {
            for reason in reasons {
                c.with_label_values(&[reason]);
            }
        }
        let read = r.histogram_vec(
            "clew_cold_read_seconds",
            "Time to read the cold tier, by operation (trace, search, dependencies)",
            &[
                0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ],
            &["op"],
        );
        ColdMetrics {
            blocks_written: written,
            bytes_written: r.counter("clew_cold_bytes_written_total", "Bytes of cold blocks written"),
            blocks_deleted: deleted,
            moved_traces: r.counter("clew_cold_moved_traces_total", "Traces moved from hot storage to the cold tier"),
            moved_spans: r.counter("clew_cold_moved_spans_total", "Spans moved from hot storage to the cold tier"),
            kept_traces: r.counter(
                "clew_cold_kept_traces_total",
                "Traces written cold but kept hot because a span arrived meanwhile (moved again later)",
            ),
            mover_lag: r.gauge(
                "clew_cold_mover_lag_seconds",
                "How long the oldest trace due to move has waited past --hot-retention",
            ),
            mover_errors: r.counter("clew_cold_mover_errors_total", "Mover rounds that failed (retried next round)"),
            blocks: r.gauge("clew_cold_blocks", "Cold blocks listed"),
            bytes: r.gauge("clew_cold_bytes", "Bytes of the cold blocks listed"),
            unreadable: r.counter(
                "clew_cold_unreadable_blocks_total",
                "Cold blocks skipped because they could not be read (corrupt, truncated, another version)",
            ),
            read_seconds: read,
            move_seconds: r.histogram(
                "clew_cold_move_seconds",
                "Time to write one block of moved traces and remove them from hot storage",
                &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
            ),
            registry: r,
        }
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.registry.render()
    }
}
