//! The refusal counter.

use prometheus::IntCounterVec;

use super::Reason;
use crate::metrics::Registry;

/// Authentication metrics in a registry of their own: append
/// [`AuthMetrics::render`] to the process's `/metrics`.
#[derive(Debug, Clone)]
pub struct AuthMetrics {
    pub(crate) registry: Registry,
    refusals: IntCounterVec,
}

impl AuthMetrics {
    /// A fresh registry with the counter registered.
    pub fn new() -> Self {
        let r = Registry::new();
        AuthMetrics {
            refusals: r.counter_vec(
                "clew_auth_refusals_total",
                "Requests refused for missing or invalid credentials, by surface and reason.",
                &["surface", "reason"],
            ),
            registry: r,
        }
    }

    pub(super) fn refused(&self, surface: &str, reason: Reason) {
        self.refusals
            .with_label_values(&[surface, reason.as_str()])
            .inc();
    }

    /// How many requests of `surface` were refused for `reason`.
    pub fn refusals(&self, surface: &str, reason: Reason) -> u64 {
        self.refusals
            .with_label_values(&[surface, reason.as_str()])
            .get()
    }

    /// The Prometheus text exposition of these metrics.
    pub fn render(&self) -> String {
        self.registry.render()
    }
}

impl Default for AuthMetrics {
    fn default() -> Self {
        Self::new()
    }
}
