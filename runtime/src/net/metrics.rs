//! Connection metrics, labelled by listener (a small fixed set of names).

use prometheus::{IntCounterVec, IntGaugeVec};

use crate::metrics::Registry;

/// The connection metrics of one process, in a registry of their own:
/// append [`ConnMetrics::render`] to the process's `/metrics`.
#[derive(Debug, Clone)]
pub struct ConnMetrics {
    pub(crate) registry: Registry,
    pub(super) open: IntGaugeVec,
    pub(super) refused: IntCounterVec,
    pub(super) idle_closed: IntCounterVec,
    pub(super) evicted: IntCounterVec,
}

impl ConnMetrics {
    /// A fresh registry with every connection metric registered.
    pub fn new() -> Self {
        let r = Registry::new();
        let by_listener = &["listener"];
        Self {
            open: r.gauge_vec(
                "clew_connections_open",
                "Connections open, by listener.",
                by_listener,
            ),
            refused: r.counter_vec(
                "clew_connections_refused_total",
                "Connections closed at once because the listener was at its limit and none was idle enough to evict.",
                by_listener,
            ),
            idle_closed: r.counter_vec(
                "clew_connections_idle_closed_total",
                "Connections closed after moving no bytes for the idle timeout.",
                by_listener,
            ),
            evicted: r.counter_vec(
                "clew_connections_evicted_total",
                "Idle connections closed to make room for a new one at the limit.",
                by_listener,
            ),
            registry: r,
        }
    }

    /// The Prometheus text exposition of these metrics.
    pub fn render(&self) -> String {
        self.registry.render()
    }
}

impl Default for ConnMetrics {
    fn default() -> Self {
        Self::new()
    }
}
