//! Connection metrics, labelled by listener (a small fixed set of names).

use prometheus::{Encoder as _, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

/// The connection metrics of one process, in a registry of their own:
/// append [`ConnMetrics::render`] to the process's `/metrics`.
#[derive(Debug, Clone)]
pub struct ConnMetrics {
    registry: Registry,
    pub(super) open: IntGaugeVec,
    pub(super) refused: IntCounterVec,
    pub(super) idle_closed: IntCounterVec,
    pub(super) evicted: IntCounterVec,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    match r {
        Ok(v) => v,
        // Names and help strings are constants known to be valid.
        Err(e) => panic!("invalid metric definition: {e}"),
    }
}

impl ConnMetrics {
    /// A fresh registry with every connection metric registered.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = must(IntCounterVec::new(Opts::new(name, help), &["listener"]));
            must(registry.register(Box::new(c.clone())));
            c
        };
        let open = must(IntGaugeVec::new(
            Opts::new("clew_connections_open", "Connections open, by listener."),
            &["listener"],
        ));
        must(registry.register(Box::new(open.clone())));
        Self {
            open,
            refused: counter(
                "clew_connections_refused_total",
                "Connections closed at once because the listener was at its limit and none was idle enough to evict.",
            ),
            idle_closed: counter(
                "clew_connections_idle_closed_total",
                "Connections closed after moving no bytes for the idle timeout.",
            ),
            evicted: counter(
                "clew_connections_evicted_total",
                "Idle connections closed to make room for a new one at the limit.",
            ),
            registry,
        }
    }

    /// The Prometheus text exposition of these metrics.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for ConnMetrics {
    fn default() -> Self {
        Self::new()
    }
}
