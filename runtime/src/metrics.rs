//! The one Prometheus registry helper every clew binary uses.
//!
//! A [`Registry`] registers and returns counters, gauges and histograms by
//! name and help string (and label names), and renders the text
//! exposition. Names, help strings, labels and buckets are constants of
//! the calling crate: a definition Prometheus refuses is a programming
//! error, caught here, in one place, by the first test that builds the
//! registry. The registry also remembers what it holds (name, type,
//! labels), which the catalogue check (feature `testing`) compares with
//! `docs/METRICS.md`.

#[cfg(any(test, feature = "testing"))]
mod catalogue;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus::core::Collector;
use prometheus::{
    Counter, Encoder as _, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, TextEncoder,
};

#[cfg(any(test, feature = "testing"))]
pub use catalogue::{catalogue_check, check_catalogue};

/// The Prometheus type of a registered metric, as `docs/METRICS.md` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Only goes up (integer or float).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations counted into buckets.
    Histogram,
}

impl Kind {
    /// The name the catalogue uses: `counter`, `gauge` or `histogram`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// What the registry knows of one registered metric.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Described {
    /// The metric's name, as exposed.
    pub name: String,
    /// Its type.
    pub kind: Kind,
    /// Its label names, in declaration order.
    pub labels: Vec<String>,
}

/// A Prometheus registry that registers metrics by (name, help[, labels]).
/// Clones share the same metrics.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    inner: prometheus::Registry,
    described: Arc<Mutex<Vec<Described>>>,
    /// Names of the labels every metric carries (added at gathering).
    const_labels: Vec<String>,
}

// Names, help strings, labels and buckets are constants known to be valid
// and unique in their registry: a failure is a bug in the caller.
fn must<T>(r: prometheus::Result<T>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("invalid metric definition: {e}"),
    }
}

/// A histogram not yet in any registry, for a metric that must exist before
/// its registry does; add it with [`Registry::add_histogram`].
pub fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    must(Histogram::with_opts(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
    ))
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty registry whose every metric carries the label
    /// `name="value"` (a demo service's name, for instance).
    pub fn with_const_label(name: &str, value: &str) -> Self {
        let labels = HashMap::from([(name.to_string(), value.to_string())]);
        Self {
            inner: must(prometheus::Registry::new_custom(None, Some(labels))),
            described: Arc::default(),
            const_labels: vec![name.to_string()],
        }
    }

    /// Registers `metric`, remembering it as a `kind`, and returns it.
    fn register<M: Collector + Clone + 'static>(&self, kind: Kind, metric: M) -> M {
        let mut described = self.described.lock();
        for desc in metric.desc() {
            described.push(Described {
                name: desc.fq_name.clone(),
                kind,
                labels: desc.variable_labels.clone(),
            });
        }
        must(self.inner.register(Box::new(metric.clone())));
        metric
    }

    /// An integer counter.
    pub fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.register(Kind::Counter, must(IntCounter::new(name, help)))
    }

    /// An integer counter with a child per value of `labels`.
    pub fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        let c = must(IntCounterVec::new(Opts::new(name, help), labels));
        self.register(Kind::Counter, c)
    }

    /// A float counter (seconds, for instance).
    pub fn float_counter(&self, name: &str, help: &str) -> Counter {
        self.register(Kind::Counter, must(Counter::new(name, help)))
    }

    /// An integer gauge.
    pub fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.register(Kind::Gauge, must(IntGauge::new(name, help)))
    }

    /// An integer gauge with a child per value of `labels`.
    pub fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        let g = must(IntGaugeVec::new(Opts::new(name, help), labels));
        self.register(Kind::Gauge, g)
    }

    /// A float gauge (seconds, for instance) with a child per value of
    /// `labels`.
    pub fn float_gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        let g = must(GaugeVec::new(Opts::new(name, help), labels));
        self.register(Kind::Gauge, g)
    }

    /// A histogram with these bucket upper bounds.
    pub fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        self.add_histogram(histogram(name, help, buckets))
    }

    /// A histogram with these bucket upper bounds and a child per value of
    /// `labels`.
    pub fn histogram_vec(
        &self,
        name: &str,
        help: &str,
        buckets: &[f64],
        labels: &[&str],
    ) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.register(Kind::Histogram, must(HistogramVec::new(opts, labels)))
    }

    /// Registers a histogram made by [`histogram`] and returns it.
    pub fn add_histogram(&self, histogram: Histogram) -> Histogram {
        self.register(Kind::Histogram, histogram)
    }

    /// The names of the labels every metric carries
    /// ([`Registry::with_const_label`]); not in [`Registry::described`].
    pub fn const_labels(&self) -> &[String] {
        &self.const_labels
    }

    /// Every registered metric, sorted by name.
    pub fn described(&self) -> Vec<Described> {
        let mut all = self.described.lock().clone();
        all.sort();
        all
    }

    /// The metric families that have samples (a vec with no child yet has
    /// none), as Prometheus gathers them.
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.inner.gather()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec fails only on invalid metric data.
        if let Err(e) = TextEncoder::new().encode(&self.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
