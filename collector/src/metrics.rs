//! Prometheus metrics of the collector.
//!
//! The hot paths count into plain atomics (`IngestStats`, `WalStats`,
//! `AssemblerStats`); a scrape copies them into Prometheus counters and
//! gauges, so ingest never touches the registry.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use clew_runtime::metrics::Registry;
use parking_lot::Mutex;
use prometheus::{IntCounter, IntCounterVec, IntGauge};

use crate::assembly::Assembler;
use crate::ingest::Ingest;
use crate::rollup::{RollupStats, Rollups};
use crate::sampling::Sampler;
use crate::spanmetrics::SpanMetrics;
use crate::storage::Storage;
use crate::wal::Wal;

#[cfg(test)]
mod tests;

/// The collector's registry and the sources it reads at scrape time.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    ingest: Ingest,
    assembler: Arc<Assembler>,
    wal: Wal,
    spans: IntCounterVec,
    truncated_spans: IntCounter,
    truncated: IntCounterVec,
    wal_bytes: IntCounter,
    wal_records: IntCounter,
    wal_fsyncs: IntCounter,
    wal_fsync_seconds: prometheus::Counter,
    wal_disk_bytes: IntGauge,
    stored: IntCounter,
    duplicates: IntCounter,
    store_failures: IntCounter,
    flushes: IntCounterVec,
    pending_bytes: IntGauge,
    pending_traces: IntGauge,
    pruned_traces: IntCounter,
    pruned_spans: IntCounter,
    pruned: (AtomicU64, AtomicU64),
    memory: Option<MemoryStoreMetrics>,
    rollups: Option<RollupMetrics>,
    /// Rendered after the registry (`traces_span_metrics_*`).
    span_metrics: Option<Arc<SpanMetrics>>,
    sampling: Option<SamplingMetrics>,
    // Serialises scrapes so counter deltas are computed once.
    scrape: Mutex<()>,
}

/// The memory store's gauges and eviction counter, read from
/// [`Storage::memory_stats`] at scrape time.
#[derive(Debug)]
struct MemoryStoreMetrics {
    storage: Arc<dyn Storage>,
    bytes: IntGauge,
    traces: IntGauge,
    evicted: IntCounterVec,
}

impl MemoryStoreMetrics {
    fn render(&self) {
        let Some(m) = self.storage.memory_stats() else {
            return;
        };
        self.bytes.set(i64::try_from(m.bytes).unwrap_or(i64::MAX));
        self.traces.set(i64::try_from(m.traces).unwrap_or(i64::MAX));
        sync(
            &self.evicted.with_label_values(&["traces"]),
            m.evicted_for_traces,
        );
        sync(
            &self.evicted.with_label_values(&["bytes"]),
            m.evicted_for_bytes,
        );
    }
}

/// The roll-ups' counters, read from [`RollupStats`] at scrape time.
#[derive(Debug)]
struct RollupMetrics {
    rollups: Arc<Rollups>,
    spans: IntCounter,
    replay_skipped: IntCounter,
    parts: IntCounter,
    failures: IntCounter,
    reloaded: IntCounter,
    calls: IntCounter,
    unpaired: IntCounter,
}

impl RollupMetrics {
    fn new(r: &Registry, rollups: Arc<Rollups>) -> Self {
        RollupMetrics {
            spans: r.counter(
                "clew_rollup_spans_total",
                "Spans counted into the RED roll-ups (every span, before sampling).",
            ),
            replay_skipped: r.counter(
                "clew_rollup_replay_skipped_spans_total",
                "Spans of replayed WAL records an earlier run had counted already.",
            ),
            parts: r.counter(
                "clew_rollup_parts_written_total",
                "Roll-up bucket parts written to storage.",
            ),
            failures: r.counter(
                "clew_rollup_flush_failures_total",
                "Roll-up flushes that failed (retried at the next interval).",
            ),
            reloaded: r.counter(
                "clew_rollup_reloaded_buckets_total",
                "Roll-up buckets read back from storage for a late span.",
            ),
            calls: r.counter(
                "clew_rollup_calls_total",
                "Calls (parent service to child service) counted into the roll-ups.",
            ),
            unpaired: r.counter(
                "clew_rollup_unpaired_spans_total",
                "Spans whose parent span was not seen within the call window.",
            ),
            rollups,
        }
    }

    fn render(&self) {
        let s: &RollupStats = self.rollups.stats();
        sync(&self.spans, load(&s.spans));
        sync(&self.replay_skipped, load(&s.replay_skipped));
        sync(&self.parts, load(&s.parts_written));
        sync(&self.failures, load(&s.flush_failures));
        sync(&self.reloaded, load(&s.reloaded));
        sync(&self.calls, load(&s.calls));
        sync(&self.unpaired, load(&s.unpaired));
    }
}

/// The tail sampler's counters, read from its stats at scrape time.
#[derive(Debug)]
struct SamplingMetrics {
    sampler: Arc<Sampler>,
    traces: IntCounterVec,
    late_spans: IntCounterVec,
    dropped_traces: IntCounterVec,
    dropped_spans: IntCounterVec,
}

/// The `policy` label of decisions no policy is credited with.
pub const NO_POLICY: &str = "(none)";

impl SamplingMetrics {
    fn new(r: &Registry, sampler: Arc<Sampler>) -> Self {
        let m = SamplingMetrics {
            traces: r.counter_vec(
                "clew_sampling_traces_total",
                "Traces decided by tail sampling, by the policy credited and the decision.",
                &["policy", "decision"],
            ),
            late_spans: r.counter_vec(
                "clew_sampling_late_spans_total",
                "Spans arriving after their trace was decided, by the cached decision they followed.",
                &["decision"],
            ),
            dropped_traces: r.counter_vec(
                "clew_sampling_dropped_traces_total",
                "Traces dropped before their sampling decision, by reason.",
                &["reason"],
            ),
            dropped_spans: r.counter_vec(
                "clew_sampling_dropped_spans_total",
                "Spans dropped before their trace's sampling decision, by reason.",
                &["reason"],
            ),
            sampler,
        };
        // Start at 0: what a policy samples, what goes late, what is dropped.
        for name in m.sampler.policy_names() {
            m.traces.with_label_values(&[name.as_str(), "sampled"]);
        }
        m.traces.with_label_values(&[NO_POLICY, "not_sampled"]);
        for decision in ["sampled", "not_sampled"] {
            m.late_spans.with_label_values(&[decision]);
        }
        m.dropped_traces.with_label_values(&["pending_limit"]);
        for reason in ["pending_limit", "span_cap"] {
            m.dropped_spans.with_label_values(&[reason]);
        }
        m
    }

    fn render(&self) {
        let s = self.sampler.stats();
        let names = self.sampler.policy_names();
        let policies = names.iter().enumerate().map(|(i, n)| (Some(i), n.as_str()));
        for (policy, name) in policies.chain([(None, NO_POLICY)]) {
            for &decision in crate::sampling::SamplingStats::decisions() {
                let n = s.decided(policy, decision);
                if n > 0 {
                    sync(&self.traces.with_label_values(&[name, decision.label()]), n);
                }
            }
        }
        let late = &self.late_spans;
        sync(
            &late.with_label_values(&["sampled"]),
            load(&s.late_sampled_spans),
        );
        sync(
            &late.with_label_values(&["not_sampled"]),
            load(&s.late_not_sampled_spans),
        );
        let pending_traces = self.dropped_traces.with_label_values(&["pending_limit"]);
        sync(&pending_traces, load(&s.pending_limit_traces));
        let spans = &self.dropped_spans;
        sync(
            &spans.with_label_values(&["pending_limit"]),
            load(&s.pending_limit_spans),
        );
        sync(
            &spans.with_label_values(&["span_cap"]),
            load(&s.span_cap_spans),
        );
    }
}

/// Brings a counter up to `total` (counters only go up).
fn sync(c: &IntCounter, total: u64) {
    let cur = c.get();
    if total > cur {
        c.inc_by(total - cur);
    }
}

impl Metrics {
    /// The histogram of storage write latency, to hand to the
    /// [`StorageSink`](crate::sink::StorageSink) before [`Metrics::new`].
    pub fn store_latency_histogram() -> prometheus::Histogram {
        clew_runtime::metrics::histogram(
            "clew_storage_store_seconds",
            "Latency of one storage write of a trace fragment (each retry observed).",
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ],
        )
    }

    /// Registers every metric; `store_latency` comes from
    /// [`Metrics::store_latency_histogram`].
    pub fn new(
        ingest: Ingest,
        assembler: Arc<Assembler>,
        wal: Wal,
        store_latency: prometheus::Histogram,
    ) -> Self {
        let r = Registry::new();
        r.add_histogram(store_latency);
        Metrics {
            spans: r.counter_vec(
                "clew_spans_total",
                "Spans by outcome: received, accepted (durable), rejected (invalid span), refused (whole request refused).",
                &["outcome"],
            ),
            truncated_spans: r.counter(
                "clew_spans_truncated_total",
                "Accepted spans stored with something cut to fit the ingest limits.",
            ),
            truncated: r.counter_vec(
                "clew_truncated_total",
                "What the ingest limits cut from accepted spans, by reason: attributes, values, events, links (over their limits), invalid_links (dropped), event_names (shortened).",
                &["reason"],
            ),
            wal_bytes: r.counter("clew_wal_bytes_total", "Bytes appended to the WAL."),
            wal_records: r.counter("clew_wal_records_total", "Batches appended to the WAL."),
            wal_fsyncs: r.counter(
                "clew_wal_fsyncs_total",
                "WAL fsyncs (one per commit group).",
            ),
            wal_fsync_seconds: r
                .float_counter("clew_wal_fsync_seconds_total", "Time spent in WAL fsync."),
            wal_disk_bytes: r.gauge("clew_wal_disk_bytes", "Bytes of WAL segments on disk."),
            stored: r.counter("clew_spans_stored_total", "Spans written to storage."),
            duplicates: r.counter(
                "clew_spans_duplicate_total",
                "Duplicate spans dropped by assembly.",
            ),
            store_failures: r.counter(
                "clew_storage_failures_total",
                "Failed storage writes (retried).",
            ),
            flushes: r.counter_vec(
                "clew_flushes_total",
                "Trace fragments flushed to storage, by reason.",
                &["reason"],
            ),
            pending_bytes: r.gauge(
                "clew_pending_bytes",
                "Bytes of spans waiting for storage.",
            ),
            pending_traces: r.gauge("clew_pending_traces", "Traces waiting for storage."),
            pruned_traces: r.counter(
                "clew_pruned_traces_total",
                "Traces removed by retention.",
            ),
            pruned_spans: r.counter("clew_pruned_spans_total", "Spans removed by retention."),
            pruned: (AtomicU64::new(0), AtomicU64::new(0)),
            memory: None,
            rollups: None,
            span_metrics: None,
            sampling: None,
            registry: r,
            ingest,
            assembler,
            wal,
            scrape: Mutex::new(()),
        }
    }

    /// Also reports what `storage` holds when it is the memory store
    /// (`clew_storage_memory_*`); other backends add nothing.
    pub fn with_storage(mut self, storage: Arc<dyn Storage>) -> Self {
        if storage.memory_stats().is_none() {
            return self;
        }
        let r = &self.registry;
        self.memory = Some(MemoryStoreMetrics {
            bytes: r.gauge(
                "clew_storage_memory_bytes",
                "Bytes of spans the memory store holds (estimated heap; bounded by --memory-max-bytes).",
            ),
            traces: r.gauge(
                "clew_storage_memory_traces",
                "Traces the memory store holds (bounded by --memory-max-traces).",
            ),
            evicted: r.counter_vec(
                "clew_storage_memory_evicted_traces_total",
                "Traces the memory store evicted, by the bound that was passed: traces or bytes.",
                &["bound"],
            ),
            storage,
        });
        self
    }

    /// Also reports the roll-ups (`clew_rollup_*`).
    pub fn with_rollups(mut self, rollups: Arc<Rollups>) -> Self {
        self.rollups = Some(RollupMetrics::new(&self.registry, rollups));
        self
    }

    /// Also renders the span metrics (`traces_span_metrics_*`, the
    /// OpenTelemetry spanmetrics connector's families) after the registry.
    pub fn with_span_metrics(mut self, span_metrics: Arc<SpanMetrics>) -> Self {
        self.span_metrics = Some(span_metrics);
        self
    }

    /// Also reports tail sampling (`clew_sampling_*`).
    pub fn with_sampling(mut self, sampler: Arc<Sampler>) -> Self {
        self.sampling = Some(SamplingMetrics::new(&self.registry, sampler));
        self
    }

    /// Counts what a retention pass removed.
    pub fn record_prune(&self, traces: u64, spans: u64) {
        self.pruned.0.fetch_add(traces, Ordering::Relaxed);
        self.pruned.1.fetch_add(spans, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let _g = self.scrape.lock();
        self.copy_ingest();
        self.copy_wal();
        self.copy_assembly();
        sync(&self.pruned_traces, load(&self.pruned.0));
        sync(&self.pruned_spans, load(&self.pruned.1));
        if let Some(memory) = &self.memory {
            memory.render();
        }
        if let Some(rollups) = &self.rollups {
            rollups.render();
        }
        if let Some(sampling) = &self.sampling {
            sampling.render();
        }
        let mut text = self.registry.render();
        if let Some(s) = &self.span_metrics {
            s.render_into(&mut text);
        }
        text
    }

    fn copy_ingest(&self) {
        let i = self.ingest.stats();
        for (outcome, v) in [
            ("received", &i.received),
            ("accepted", &i.accepted),
            ("rejected", &i.rejected),
            ("refused", &i.refused),
        ] {
            sync(&self.spans.with_label_values(&[outcome]), load(v));
        }
        let t = i.truncated.snapshot();
        sync(&self.truncated_spans, t.spans);
        for (reason, n) in t.by_reason() {
            sync(&self.truncated.with_label_values(&[reason]), n);
        }
    }

    fn copy_wal(&self) {
        let w = self.wal.stats();
        sync(&self.wal_bytes, load(&w.bytes));
        sync(&self.wal_records, load(&w.records));
        sync(&self.wal_fsyncs, load(&w.fsyncs));
        let secs = load(&w.fsync_nanos) as f64 / 1e9;
        let cur = self.wal_fsync_seconds.get();
        if secs > cur {
            self.wal_fsync_seconds.inc_by(secs - cur);
        }
        self.wal_disk_bytes
            .set(i64::try_from(load(&w.disk_bytes)).unwrap_or(i64::MAX));
    }

    fn copy_assembly(&self) {
        let a = self.assembler.stats();
        sync(&self.stored, load(&a.spans_stored));
        sync(&self.duplicates, load(&a.duplicate_spans));
        sync(&self.store_failures, load(&a.store_failures));
        for (reason, v) in [
            ("idle", &a.flushed_idle),
            ("age", &a.flushed_age),
            ("span_cap", &a.flushed_span_cap),
            ("bytes_cap", &a.flushed_bytes_cap),
            ("shutdown", &a.flushed_shutdown),
        ] {
            sync(&self.flushes.with_label_values(&[reason]), load(v));
        }
        self.pending_bytes
            .set(i64::try_from(self.assembler.pending_bytes()).unwrap_or(i64::MAX));
        self.pending_traces
            .set(i64::try_from(self.assembler.pending_traces()).unwrap_or(i64::MAX));
    }
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}
