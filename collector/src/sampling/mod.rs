//! Tail sampling in the collector: the [`clew_analysis::sampling`] engine
//! run on assembled traces, with upstream's decision cache and limits.
//!
//! The [`Assembler`](crate::assembly::Assembler) asks a [`Sampler`] what to
//! do with each trace fragment it flushes:
//!
//! - the first fragment of a trace is *decided*: the engine's verdict is
//!   counted per policy and remembered in the decision cache; a sampled
//!   fragment is stored, any other is dropped and its WAL records released
//!   as if stored;
//! - a fragment of a trace already decided (spans that arrived after the
//!   decision) *follows* the cached decision; the assembler drops the late
//!   spans of a trace not sampled as soon as they arrive;
//! - a fragment evicted by the pending-trace limit before its decision is
//!   dropped and counted (upstream's "dropped too early").
//!
//! The cache holds the last [`SamplerConfig::cache_size`] decisions of each
//! kind (sampled, not sampled); a late span of a trace that has left it is
//! decided again as a new trace. The cache is not persisted: after a restart
//! the WAL's replayed records are decided again (see `docs/SAMPLING.md`).

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clew_analysis::sampling::{Decision, Engine};
use clew_proto::v1::Span;
use foldhash::HashMap;
use parking_lot::Mutex;

/// A trace ID as the assembler keys it (16 bytes).
pub type TraceKey = [u8; 16];

/// Settings of a [`Sampler`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SamplerConfig {
    /// How long a trace not yet decided waits for more spans after its last
    /// one before it is decided (the assembler's idle window for it).
    pub decision_wait: Duration,
    /// Decisions remembered for late spans, for each kind (sampled, not
    /// sampled); 0 remembers none.
    pub cache_size: usize,
    /// Most traces held by assembly at once; above it the trace that arrived
    /// first is dropped before its decision (counted).
    pub max_pending_traces: usize,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            decision_wait: Duration::from_secs(5),
            cache_size: 100_000,
            max_pending_traces: 50_000,
        }
    }
}

/// Why spans or traces were dropped without a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// `--max-pending-traces` was exceeded: the oldest pending trace went.
    PendingLimit,
    /// The trace already held `--max-spans-per-trace` spans.
    SpanCap,
}

impl DropReason {
    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::PendingLimit => "pending_limit",
            DropReason::SpanCap => "span_cap",
        }
    }
}

/// Counters of a [`Sampler`], read by the metrics at scrape time.
#[derive(Debug)]
pub struct SamplingStats {
    /// Traces decided, by the policy credited (index of
    /// [`Sampler::policy_names`]; the last slot: none) and decision
    /// (`sampled`, `not_sampled`, `dropped`).
    decisions: Vec<[AtomicU64; 3]>,
    /// Late spans that followed a cached "sampled" decision.
    pub late_sampled_spans: AtomicU64,
    /// Late spans that followed a cached "not sampled" decision (dropped).
    pub late_not_sampled_spans: AtomicU64,
    /// Traces dropped by the pending-trace limit before their decision.
    pub pending_limit_traces: AtomicU64,
    /// Spans in those traces.
    pub pending_limit_spans: AtomicU64,
    /// Spans dropped because their trace held the span cap already.
    pub span_cap_spans: AtomicU64,
}

const DECISIONS: [Decision; 3] = [Decision::Sampled, Decision::NotSampled, Decision::Dropped];

impl SamplingStats {
    fn new(policies: usize) -> Self {
        SamplingStats {
            decisions: (0..=policies).map(|_| Default::default()).collect(),
            late_sampled_spans: AtomicU64::new(0),
            late_not_sampled_spans: AtomicU64::new(0),
            pending_limit_traces: AtomicU64::new(0),
            pending_limit_spans: AtomicU64::new(0),
            span_cap_spans: AtomicU64::new(0),
        }
    }

    /// Traces decided so far as `decision`, credited to policy `policy`
    /// (`None`: no policy, a trace nothing sampled).
    pub fn decided(&self, policy: Option<usize>, decision: Decision) -> u64 {
        let slot = policy.unwrap_or(self.decisions.len() - 1);
        let column = DECISIONS.iter().position(|d| *d == decision).unwrap_or(0);
        self.decisions
            .get(slot)
            .and_then(|row| row.get(column))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    fn count(&self, policy: Option<usize>, decision: Decision) {
        let slot = policy.unwrap_or(self.decisions.len() - 1);
        let column = DECISIONS.iter().position(|d| *d == decision).unwrap_or(0);
        if let Some(c) = self.decisions.get(slot).and_then(|row| row.get(column)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every decision kind, for the metrics.
    pub fn decisions() -> &'static [Decision] {
        &DECISIONS
    }
}

/// The last decisions, per kind, oldest first out.
#[derive(Debug, Default)]
struct DecisionCache {
    decisions: HashMap<TraceKey, bool>,
    /// Insertion order of the `false` (index 0) and `true` (1) decisions.
    order: [VecDeque<TraceKey>; 2],
    capacity: usize,
}

impl DecisionCache {
    fn get(&self, trace_id: &TraceKey) -> Option<bool> {
        self.decisions.get(trace_id).copied()
    }

    fn insert(&mut self, trace_id: TraceKey, keep: bool) {
        if self.capacity == 0 {
            return;
        }
        if self.decisions.insert(trace_id, keep).is_some() {
            return;
        }
        let order = &mut self.order[usize::from(keep)];
        order.push_back(trace_id);
        if order.len() > self.capacity
            && let Some(old) = order.pop_front()
            && self.decisions.get(&old) == Some(&keep)
        {
            self.decisions.remove(&old);
        }
    }
}

/// Runs the sampling policies on assembled traces. See the
/// [module docs](self).
#[derive(Debug)]
pub struct Sampler {
    config: SamplerConfig,
    names: Vec<String>,
    engine: Mutex<Engine>,
    cache: Mutex<DecisionCache>,
    stats: SamplingStats,
}

impl Sampler {
    /// A sampler running `engine`'s policies.
    pub fn new(engine: Engine, config: SamplerConfig) -> Self {
        let names = engine.policy_names().to_vec();
        Sampler {
            stats: SamplingStats::new(names.len()),
            cache: Mutex::new(DecisionCache {
                capacity: config.cache_size,
                ..DecisionCache::default()
            }),
            names,
            engine: Mutex::new(engine),
            config,
        }
    }

    /// The settings.
    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// The top-level policies' names, in file order.
    pub fn policy_names(&self) -> &[String] {
        &self.names
    }

    /// The counters.
    pub fn stats(&self) -> &SamplingStats {
        &self.stats
    }

    /// The cached decision for a trace: `Some(true)` sampled, `Some(false)`
    /// not sampled, `None` not decided (or forgotten).
    pub fn cached(&self, trace_id: &TraceKey) -> Option<bool> {
        self.cache.lock().get(trace_id)
    }

    /// Counts `spans` late spans dropped at arrival because their trace was
    /// not sampled.
    pub fn count_late_dropped(&self, spans: usize) {
        self.stats
            .late_not_sampled_spans
            .fetch_add(spans as u64, Ordering::Relaxed);
    }

    /// Counts `spans` spans dropped before a decision for `reason`.
    pub fn count_dropped_spans(&self, reason: DropReason, spans: usize) {
        let counter = match reason {
            DropReason::PendingLimit => &self.stats.pending_limit_spans,
            DropReason::SpanCap => &self.stats.span_cap_spans,
        };
        counter.fetch_add(spans as u64, Ordering::Relaxed);
    }

    /// Whether to store a flushed fragment of trace `trace_id` holding
    /// `spans`: the cached decision when there is one, else (unless the
    /// fragment was `evicted` by the pending-trace limit, which drops it)
    /// the engine's, taken at `now_unix_nanos`, counted and cached.
    pub fn judge(
        &self,
        trace_id: &TraceKey,
        spans: &[Span],
        evicted: bool,
        now_unix_nanos: u64,
    ) -> bool {
        if let Some(keep) = self.cached(trace_id) {
            if keep {
                self.stats
                    .late_sampled_spans
                    .fetch_add(spans.len() as u64, Ordering::Relaxed);
            } else {
                self.count_late_dropped(spans.len());
            }
            return keep;
        }
        if evicted {
            self.stats
                .pending_limit_traces
                .fetch_add(1, Ordering::Relaxed);
            self.count_dropped_spans(DropReason::PendingLimit, spans.len());
            return false;
        }
        let verdict = self.engine.lock().decide(spans, now_unix_nanos);
        self.stats.count(verdict.decided_by, verdict.decision);
        let keep = verdict.decision.is_sampled();
        self.cache.lock().insert(*trace_id, keep);
        tracing::trace!(
            trace_id = %hex(trace_id),
            decision = verdict.decision.label(),
            policy = verdict.decided_by.and_then(|i| self.names.get(i)).map(String::as_str),
            "sampling: decided"
        );
        keep
    }
}

fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}
