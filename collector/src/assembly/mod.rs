//! Trace assembly: spans from durable WAL records are grouped by trace ID and
//! handed to storage as whole-trace fragments.
//!
//! # When a trace is flushed
//!
//! A pending trace becomes a fragment and goes to the [`TraceSink`] when
//!
//! - no span has arrived for it for [`AssemblerConfig::idle_window`]
//!   (*idle*), or it has been pending for [`AssemblerConfig::max_trace_age`]
//!   (*age*, so a trace that never goes quiet is still stored);
//! - it holds [`AssemblerConfig::max_spans_per_trace`] spans (*span cap*);
//! - the spans still being assembled total more than
//!   [`AssemblerConfig::max_pending_bytes`]: the least recently updated
//!   traces go first (*bytes cap*);
//! - [`Assembler::flush_all`] is called (*shutdown*).
//!
//! Spans that arrive after their trace was flushed start a new pending
//! fragment of the same trace: storage merges fragments and drops spans it
//! already has (by span ID), so a late span or a replayed record is
//! harmless. Within one pending fragment a span ID is kept once.
//!
//! # Tail sampling
//!
//! Made [`with_sampler`](Assembler::with_sampler), the assembler stores a
//! flushed fragment only if the [`Sampler`] keeps its trace: a trace's first
//! fragment is decided, later ones follow the cached decision (see
//! [`crate::sampling`]). A trace not decided yet is flushed once idle for
//! the sampler's `decision_wait` (instead of `idle_window`); spans beyond
//! `max_spans_per_trace` of it are dropped (counted) instead of cut into a
//! new fragment; above the sampler's `max_pending_traces` the trace that
//! arrived first is dropped. A dropped fragment's records are released as
//! if it had been stored; late spans of a trace not sampled are dropped as
//! they arrive.
//!
//! # Durability
//!
//! Each WAL record is tracked until every fragment holding one of its spans
//! is stored; then it is [released](Wal::release), which lets the WAL's
//! checkpoint move past it. A failed store is retried with backoff
//! ([`retry()`](clew_reliability::retry())) until it succeeds: nothing is
//! dropped, and the checkpoint does not pass a record whose spans are not
//! stored. (The one exception is a fragment the sink
//! [rejects](SinkError::rejected) as invalid, which can never be stored.) If the assembler is dropped without [`Assembler::flush_all`] (or
//! the process dies), whatever was not stored is replayed from the WAL at the
//! next start.
//!
//! # Backpressure
//!
//! [`Assembler::pending_bytes`] counts the encoded size of every span held in
//! memory, whether still being assembled or being stored (retries included).
//! Ingest should refuse new batches (RESOURCE_EXHAUSTED / 429) above its
//! memory limit; the WAL then stops growing too.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use clew_proto::v1::{ExportRequest, Span, Trace};
use clew_reliability::{Jitter, RetryPolicy, retry_with_rng};
use foldhash::HashMap;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use prost::Message;
use tokio::runtime::Handle;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::sampling::{DropReason, Sampler};
use crate::storage::filter::SpanIds;
use crate::wal::{self, Appended, Wal, WalRecord};

/// Errors of the assembler.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Appending the batch to the WAL failed; it was not accepted.
    #[error(transparent)]
    Wal(#[from] wal::Error),
    /// [`Assembler::new`] was called outside a Tokio runtime.
    #[error("assembler: must be started inside a Tokio runtime")]
    NoRuntime,
    /// The configuration is unusable.
    #[error("assembler: invalid configuration: {0}")]
    InvalidConfig(&'static str),
}

/// Result type of the assembler.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A storage failure reported by a [`TraceSink`].
///
/// A failure made with [`SinkError::new`] hands the fragment back and is
/// retried with it until the store succeeds (so the assembler keeps no copy
/// of a fragment while it is being stored). One made with
/// [`SinkError::rejected`] says the fragment itself
/// can never be stored (storage's `InvalidTrace`): retrying it would hold the
/// WAL checkpoint back forever and replay the same poison at every restart,
/// so the assembler counts it, logs it and lets it go. Ingest should
/// validate spans before they reach the WAL so that this does not happen.
#[derive(thiserror::Error)]
#[error("trace sink: {source}")]
pub struct SinkError {
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
    rejected: bool,
    /// The fragment, handed back for the retry (taken by the assembler).
    trace: Option<Trace>,
}

impl SinkError {
    /// A failure that may pass (storage unavailable...): retried with
    /// `trace`, the fragment the sink was given. Takes an error or a message
    /// (`SinkError::new("redis unavailable", trace)`).
    pub fn new(source: impl Into<Box<dyn std::error::Error + Send + Sync>>, trace: Trace) -> Self {
        Self {
            source: source.into(),
            rejected: false,
            trace: Some(trace),
        }
    }

    /// A permanent refusal of this fragment (invalid data): not retried.
    pub fn rejected(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self {
            source: source.into(),
            rejected: true,
            trace: None,
        }
    }

    /// Whether this is a permanent refusal ([`SinkError::rejected`]).
    pub fn is_rejected(&self) -> bool {
        self.rejected
    }
}

impl fmt::Debug for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The fragment is left out: it can be large.
        f.debug_struct("SinkError")
            .field("source", &self.source)
            .field("rejected", &self.rejected)
            .finish_non_exhaustive()
    }
}

/// Where assembled traces go: storage, through a small adapter.
///
/// `store_trace` must be idempotent and merging: storing a fragment adds its
/// spans to whatever is stored for the trace, and a span whose ID is already
/// stored is not stored again. It returns `Ok` only once the spans are
/// durable; then the WAL may forget them. A failure that may pass gives the
/// fragment back with the error ([`SinkError::new`]) for the retry.
pub trait TraceSink: Send + Sync + 'static {
    /// Stores (merges) one trace fragment.
    fn store_trace(&self, trace: Trace) -> BoxFuture<'_, Result<(), SinkError>>;
}

/// Settings for an [`Assembler`].
#[derive(Debug, Clone, PartialEq)]
pub struct AssemblerConfig {
    /// A trace is flushed once no span has arrived for it for this long.
    pub idle_window: Duration,
    /// A trace is flushed once it has been pending this long, even if spans
    /// keep arriving.
    pub max_trace_age: Duration,
    /// A trace is flushed as soon as it holds this many pending spans.
    pub max_spans_per_trace: usize,
    /// When the spans being assembled total more than this many (encoded)
    /// bytes, the least recently updated traces are flushed early.
    pub max_pending_bytes: u64,
    /// Most stores running at once; further flushes wait for a slot.
    pub max_concurrent_stores: usize,
    /// Backoff between attempts of a failing store. When `max_attempts` is
    /// used up the store starts a new round: a trace is never dropped.
    pub retry: RetryPolicy,
}

impl Default for AssemblerConfig {
    fn default() -> Self {
        Self {
            idle_window: Duration::from_secs(5),
            max_trace_age: Duration::from_secs(60),
            max_spans_per_trace: 10_000,
            max_pending_bytes: 256 * 1024 * 1024,
            max_concurrent_stores: 1024,
            retry: RetryPolicy {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(10),
                multiplier: 2.0,
                max_attempts: u32::MAX,
                jitter: Jitter::Full,
            },
        }
    }
}

impl AssemblerConfig {
    fn validate(&self) -> Result<()> {
        if self.max_spans_per_trace == 0 {
            return Err(Error::InvalidConfig("max_spans_per_trace must be non-zero"));
        }
        if self.max_concurrent_stores == 0 {
            return Err(Error::InvalidConfig(
                "max_concurrent_stores must be non-zero",
            ));
        }
        Ok(())
    }
}

/// Why a fragment was flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlushReason {
    Idle,
    Age,
    SpanCap,
    BytesCap,
    Shutdown,
    /// Evicted by the sampler's pending-trace limit (counted there).
    PendingCap,
}

/// Counters and gauges for metrics.
#[derive(Debug, Default)]
pub struct AssemblerStats {
    /// Spans accepted into a pending trace.
    pub spans_added: AtomicU64,
    /// Spans dropped because their ID was already pending in their trace.
    pub duplicate_spans: AtomicU64,
    /// WAL records whose spans have all been stored.
    pub records_released: AtomicU64,
    /// Fragments flushed because their trace went idle.
    pub flushed_idle: AtomicU64,
    /// Fragments flushed because their trace reached `max_trace_age`.
    pub flushed_age: AtomicU64,
    /// Fragments flushed because their trace reached `max_spans_per_trace`.
    pub flushed_span_cap: AtomicU64,
    /// Fragments flushed early because of `max_pending_bytes`.
    pub flushed_bytes_cap: AtomicU64,
    /// Fragments flushed by [`Assembler::flush_all`].
    pub flushed_shutdown: AtomicU64,
    /// Fragments stored.
    pub stores: AtomicU64,
    /// Spans in those fragments.
    pub spans_stored: AtomicU64,
    /// Failed store attempts (each was retried).
    pub store_failures: AtomicU64,
    /// Fragments the sink rejected as invalid ([`SinkError::rejected`]) and
    /// that were therefore dropped.
    pub rejected_fragments: AtomicU64,
    /// Spans in those fragments.
    pub rejected_spans: AtomicU64,
    /// Total time from a fragment's flush to its successful store (retries
    /// included), in nanoseconds; divide by `stores` for the mean. For a
    /// histogram, time the calls in the sink adapter.
    pub store_nanos: AtomicU64,
    /// Gauge: bytes of spans held in memory (pending or being stored).
    pub pending_bytes: AtomicU64,
    /// Gauge: traces being assembled.
    pub pending_traces: AtomicU64,
    /// Gauge: fragments flushed and not yet stored.
    pub in_flight: AtomicU64,
}

impl AssemblerStats {
    fn count_flush(&self, reason: FlushReason) {
        let counter = match reason {
            FlushReason::Idle => &self.flushed_idle,
            FlushReason::Age => &self.flushed_age,
            FlushReason::SpanCap => &self.flushed_span_cap,
            FlushReason::BytesCap => &self.flushed_bytes_cap,
            FlushReason::Shutdown => &self.flushed_shutdown,
            FlushReason::PendingCap => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A trace ID as the assembler keys it. Ingest only lets through 16-byte
/// IDs; any other length is zero-padded or cut to 16 bytes here (storage
/// then refuses the fragment as invalid, as it would have anyway).
type TraceKey = [u8; 16];

/// A trace ID (`N` = 16) or span ID (`N` = 8) as the assembler keys it:
/// padded or cut likewise.
fn key<const N: usize>(id: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = id.len().min(N);
    out[..n].copy_from_slice(&id[..n]);
    out
}

/// A trace being assembled.
#[derive(Debug)]
struct PendingTrace {
    spans: Vec<Span>,
    span_ids: SpanIds,
    /// WAL records with spans in this fragment.
    seqs: Vec<u64>,
    bytes: u64,
    first_at: Instant,
    deadline: Instant,
}

/// A flushed trace on its way to the sink.
#[derive(Debug)]
struct Fragment {
    trace_id: TraceKey,
    spans: Vec<Span>,
    seqs: Vec<u64>,
    bytes: u64,
    /// Taken out by the sampler's pending-trace limit, not by a flush.
    evicted: bool,
}

/// How the spans of one run of a trace are added.
struct RunRules<'a> {
    sampler: Option<&'a Sampler>,
    /// Idle window of the trace: `--decision-wait` for a trace to be
    /// decided, the assembler's idle window otherwise.
    window: Duration,
    max_age: Duration,
    max_spans: usize,
    /// Spans beyond `max_spans` are dropped (a trace not decided yet, with
    /// a sampler) rather than cut into a new fragment.
    drop_at_cap: bool,
    /// Deadline of a trace this run starts.
    first_deadline: Instant,
    now: Instant,
}

impl<'a> RunRules<'a> {
    fn new(
        config: &AssemblerConfig,
        sampler: Option<&'a Sampler>,
        decided: bool,
        now: Instant,
    ) -> Self {
        let to_decide = sampler.filter(|_| !decided);
        let window = to_decide.map_or(config.idle_window, |s| s.config().decision_wait);
        RunRules {
            sampler,
            window,
            max_age: config.max_trace_age,
            max_spans: config.max_spans_per_trace,
            drop_at_cap: to_decide.is_some(),
            first_deadline: now + window.min(config.max_trace_age),
            now,
        }
    }
}

/// The spans of one batch, in order, with their encoded sizes and the runs
/// of consecutive spans of one trace (trace ID, length). Spans of a trace
/// usually come together; a trace split over several runs is simply added
/// run by run.
struct Batch {
    spans: Vec<Span>,
    sizes: Vec<u64>,
    runs: Vec<(TraceKey, usize)>,
}

#[derive(Debug, Default)]
struct State {
    traces: HashMap<TraceKey, PendingTrace>,
    /// `(deadline, trace id)` of every pending trace.
    deadlines: BTreeSet<(Instant, TraceKey)>,
    /// `(first span's arrival, trace id)` of every pending trace, kept only
    /// with a sampler (for its pending-trace limit).
    arrivals: BTreeSet<(Instant, TraceKey)>,
    /// Fragments flushed by size or shutdown, waiting for the flush task.
    ready: VecDeque<Fragment>,
    /// WAL record → number of fragments (pending or in flight) holding it.
    records: HashMap<u64, usize>,
    /// Bytes of the spans in `traces`.
    assembling_bytes: u64,
    /// Bytes of all spans held: `traces`, `ready` and in flight.
    held_bytes: u64,
    /// Fragments taken out of `traces` and not yet stored.
    fragments: usize,
    /// When the flush task will next wake on its own (`None`: only when
    /// notified).
    wake_at: Option<Instant>,
}

impl State {
    /// Adds the spans of record `seq`; returns how many fragments now hold
    /// the record and whether the flush task must look at the state now.
    /// With a `sampler`, the late spans of a trace not sampled are dropped
    /// here, and its limits apply.
    fn add(
        &mut self,
        config: &AssemblerConfig,
        sampler: Option<&Sampler>,
        stats: &AssemblerStats,
        seq: u64,
        batch: Batch,
        now: Instant,
    ) -> (usize, bool) {
        let mut wake = false;
        let mut refs = 0;
        let mut spans = batch.spans.into_iter().zip(batch.sizes);
        for (trace_id, run) in batch.runs {
            let run_spans = spans.by_ref().take(run);
            let decided = sampler.and_then(|s| s.cached(&trace_id));
            if let (Some(s), Some(false)) = (sampler, decided) {
                // A late span of a trace not sampled: dropped (counted).
                s.count_late_dropped(run_spans.count());
                continue;
            }
            let rules = RunRules::new(config, sampler, decided.is_some(), now);
            let (r, w) = self.add_run(&rules, stats, seq, trace_id, run, run_spans);
            refs += r;
            wake |= w;
        }
        if refs > 0 {
            *self.records.entry(seq).or_insert(0) += refs;
        }
        while self.assembling_bytes > config.max_pending_bytes {
            let Some(&(_, trace_id)) = self.deadlines.first() else {
                break;
            };
            self.flush(&trace_id, FlushReason::BytesCap, stats);
            wake = true;
        }
        if let Some(s) = sampler {
            wake |= self.evict_over_limit(s.config().max_pending_traces, stats);
        }
        self.publish(stats);
        (refs, wake)
    }

    /// Adds one run of consecutive spans of `trace_id`; returns how many
    /// fragments newly hold record `seq` and whether to wake the flusher.
    fn add_run(
        &mut self,
        rules: &RunRules<'_>,
        stats: &AssemblerStats,
        seq: u64,
        trace_id: TraceKey,
        run: usize,
        spans: impl Iterator<Item = (Span, u64)>,
    ) -> (usize, bool) {
        let (first_deadline, now) = (rules.first_deadline, rules.now);
        let (mut wake, mut refs) = (false, 0);
        // Spans added to the trace's current pending fragment.
        let mut added = 0u64;
        let mut left = run;
        if let Some(entry) = self.traces.get_mut(&trace_id) {
            entry.spans.reserve(left);
        }
        for (span, bytes) in spans {
            left -= 1;
            let entry = match self.traces.get_mut(&trace_id) {
                Some(entry) => entry,
                None => {
                    wake |= self.wake_at.is_none_or(|at| first_deadline < at);
                    self.deadlines.insert((first_deadline, trace_id));
                    if rules.sampler.is_some() {
                        self.arrivals.insert((now, trace_id));
                    }
                    added = 0;
                    self.traces.entry(trace_id).or_insert(PendingTrace {
                        // Room for the rest of the batch's spans of it.
                        spans: Vec::with_capacity(left + 1),
                        span_ids: SpanIds::default(),
                        seqs: Vec::new(),
                        bytes: 0,
                        first_at: now,
                        deadline: first_deadline,
                    })
                }
            };
            if rules.drop_at_cap && entry.spans.len() >= rules.max_spans {
                if let Some(s) = rules.sampler {
                    s.count_dropped_spans(DropReason::SpanCap, 1);
                }
                continue;
            }
            let spans = &entry.spans;
            let known = || spans.iter().map(|s| key::<8>(&s.span_id));
            if !entry
                .span_ids
                .insert(key(&span.span_id), spans.len(), known)
            {
                stats.duplicate_spans.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            entry.bytes += bytes;
            entry.spans.push(span);
            added += 1;
            stats.spans_added.fetch_add(1, Ordering::Relaxed);
            self.assembling_bytes += bytes;
            self.held_bytes += bytes;
            if !entry.seqs.contains(&seq) {
                entry.seqs.push(seq);
                refs += 1;
            }
            if !rules.drop_at_cap && entry.spans.len() >= rules.max_spans {
                // Cut here; the rest of the batch starts a new fragment.
                self.flush(&trace_id, FlushReason::SpanCap, stats);
                wake = true;
            }
        }
        if added > 0
            && let Some(entry) = self.traces.get_mut(&trace_id)
        {
            let deadline = (now + rules.window).min(entry.first_at + rules.max_age);
            if deadline != entry.deadline {
                self.deadlines.remove(&(entry.deadline, trace_id));
                self.deadlines.insert((deadline, trace_id));
                entry.deadline = deadline;
            }
        }
        (refs, wake)
    }

    /// Takes the traces that arrived first out while more than `limit` are
    /// pending (the sampler drops them unless they were decided already).
    fn evict_over_limit(&mut self, limit: usize, stats: &AssemblerStats) -> bool {
        let mut wake = false;
        while self.traces.len() > limit {
            let Some(&(_, trace_id)) = self.arrivals.first() else {
                break;
            };
            match self.take(&trace_id, FlushReason::PendingCap, stats) {
                Some(mut fragment) => {
                    fragment.evicted = true;
                    self.ready.push_back(fragment);
                    wake = true;
                }
                None => {
                    self.arrivals.pop_first();
                }
            }
        }
        wake
    }

    /// Moves a pending trace to `ready`.
    fn flush(&mut self, trace_id: &TraceKey, reason: FlushReason, stats: &AssemblerStats) {
        if let Some(fragment) = self.take(trace_id, reason, stats) {
            self.ready.push_back(fragment);
        }
    }

    fn take(
        &mut self,
        trace_id: &TraceKey,
        reason: FlushReason,
        stats: &AssemblerStats,
    ) -> Option<Fragment> {
        let (trace_id, pending) = self.traces.remove_entry(trace_id)?;
        self.deadlines.remove(&(pending.deadline, trace_id));
        self.arrivals.remove(&(pending.first_at, trace_id));
        self.assembling_bytes -= pending.bytes;
        self.fragments += 1;
        stats.count_flush(reason);
        Some(Fragment {
            trace_id,
            spans: pending.spans,
            seqs: pending.seqs,
            bytes: pending.bytes,
            evicted: false,
        })
    }

    /// Takes every fragment due at `now`; returns them and the next
    /// deadline.
    fn due(
        &mut self,
        now: Instant,
        config: &AssemblerConfig,
        stats: &AssemblerStats,
    ) -> Vec<Fragment> {
        let mut out: Vec<Fragment> = self.ready.drain(..).collect();
        while let Some(&(deadline, trace_id)) = self.deadlines.first()
            && deadline <= now
        {
            let reason = match self.traces.get(&trace_id) {
                Some(t) if t.first_at + config.max_trace_age <= now => FlushReason::Age,
                _ => FlushReason::Idle,
            };
            match self.take(&trace_id, reason, stats) {
                Some(fragment) => out.push(fragment),
                // Not expected: an index entry without its trace.
                None => {
                    self.deadlines.remove(&(deadline, trace_id));
                }
            }
        }
        self.wake_at = self.deadlines.first().map(|(d, _)| *d);
        self.publish(stats);
        out
    }

    /// A fragment was stored: returns the records it was the last holder of.
    fn complete(&mut self, fragment_bytes: u64, seqs: &[u64], stats: &AssemblerStats) -> Vec<u64> {
        self.held_bytes -= fragment_bytes;
        self.fragments -= 1;
        let mut released = Vec::new();
        for &seq in seqs {
            if let Some(refs) = self.records.get_mut(&seq) {
                *refs -= 1;
                if *refs == 0 {
                    self.records.remove(&seq);
                    released.push(seq);
                }
            }
        }
        self.publish(stats);
        released
    }

    fn publish(&self, stats: &AssemblerStats) {
        stats
            .pending_bytes
            .store(self.held_bytes, Ordering::Relaxed);
        stats
            .pending_traces
            .store(self.traces.len() as u64, Ordering::Relaxed);
        stats
            .in_flight
            .store(self.fragments as u64, Ordering::Relaxed);
    }
}

struct Inner {
    config: AssemblerConfig,
    sink: Arc<dyn TraceSink>,
    wal: Wal,
    state: Mutex<State>,
    stats: AssemblerStats,
    /// Wakes the flush task.
    wake: Notify,
    /// Signalled whenever a fragment is stored.
    stored: Notify,
    stores: Arc<Semaphore>,
    closed: AtomicBool,
    runtime: Handle,
    /// Counts every span of every record before it is assembled.
    rollups: std::sync::OnceLock<Arc<crate::rollup::Rollups>>,
    /// Counts every span of every record added in this process (not
    /// replayed ones: the run that accepted them counted them).
    span_metrics: std::sync::OnceLock<Arc<crate::spanmetrics::SpanMetrics>>,
    /// Tail sampling of flushed traces, when configured.
    sampler: Option<Arc<Sampler>>,
}

impl Inner {
    /// Takes over the record's hold on the WAL, counting its spans in the
    /// span metrics and the roll-ups first when there are.
    fn hand_on(&self, appended: Appended, spans: &[Span]) -> u64 {
        if let Some(m) = self.span_metrics.get() {
            m.record(spans);
        }
        match self.rollups.get() {
            Some(r) => r.record_appended(appended, spans),
            None => appended.into_held_seq(),
        }
    }

    /// Adds the spans of record `seq`; `sizes` are their encoded lengths
    /// (from the WAL's encoding) when known, else they are computed here.
    fn add(&self, seq: u64, spans: Vec<Span>, sizes: Option<Vec<u64>>) {
        // Sizing and finding the runs happen before taking the lock; the
        // spans themselves move once, into their pending traces.
        let sizes = match sizes {
            Some(sizes) if sizes.len() == spans.len() => sizes,
            _ => spans.iter().map(|s| s.encoded_len() as u64).collect(),
        };
        let mut runs: Vec<(TraceKey, usize)> = Vec::new();
        for span in &spans {
            let trace_id: TraceKey = key(&span.trace_id);
            match runs.last_mut() {
                Some((id, n)) if *id == trace_id => *n += 1,
                _ => runs.push((trace_id, 1)),
            }
        }
        let batch = Batch { spans, sizes, runs };
        let now = Instant::now();
        let sampler = self.sampler.as_deref();
        let (refs, wake) =
            self.state
                .lock()
                .add(&self.config, sampler, &self.stats, seq, batch, now);
        if refs == 0 {
            // Nothing new in it (empty, or only duplicates of pending spans).
            self.release(seq);
        }
        if wake {
            self.wake.notify_one();
        }
    }

    /// The fragment to store, or `None` when the sampler drops it: then its
    /// records are released as if it had been stored.
    fn sample(&self, fragment: Fragment) -> Option<Fragment> {
        let Some(sampler) = &self.sampler else {
            return Some(fragment);
        };
        let now = clew_model::now_unix_nanos();
        let (trace_id, spans) = (&fragment.trace_id, &fragment.spans);
        if sampler.judge(trace_id, spans, fragment.evicted, now) {
            return Some(fragment);
        }
        let released = (self.state.lock()).complete(fragment.bytes, &fragment.seqs, &self.stats);
        for seq in released {
            self.release(seq);
        }
        self.stored.notify_waiters();
        None
    }

    fn release(&self, seq: u64) {
        self.wal.release(seq);
        self.stats.records_released.fetch_add(1, Ordering::Relaxed);
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// Groups spans into traces and stores them. See the [module docs](self).
///
/// Dropping it stops the flush task and abandons what is not stored yet (the
/// WAL replays it at the next start); call [`flush_all`](Self::flush_all)
/// first for a graceful shutdown.
pub struct Assembler {
    inner: Arc<Inner>,
}

impl fmt::Debug for Assembler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Assembler")
            .field("config", &self.inner.config)
            .field("stats", &self.inner.stats)
            .finish_non_exhaustive()
    }
}

impl Assembler {
    /// Creates the assembler and starts its flush task on the current Tokio
    /// runtime. Fragments go to `sink`; records are released on `wal`.
    pub fn new(config: AssemblerConfig, sink: Arc<dyn TraceSink>, wal: Wal) -> Result<Self> {
        Self::start(config, sink, wal, None)
    }

    /// [`Assembler::new`] with tail sampling: each flushed fragment is
    /// stored only if `sampler` keeps its trace (see [`crate::sampling`]);
    /// `config.max_spans_per_trace` then drops the spans beyond it of a
    /// trace not decided yet instead of cutting the trace.
    pub fn with_sampler(
        config: AssemblerConfig,
        sink: Arc<dyn TraceSink>,
        wal: Wal,
        sampler: Arc<Sampler>,
    ) -> Result<Self> {
        if sampler.config().max_pending_traces == 0 {
            return Err(Error::InvalidConfig("max_pending_traces must be non-zero"));
        }
        Self::start(config, sink, wal, Some(sampler))
    }

    fn start(
        config: AssemblerConfig,
        sink: Arc<dyn TraceSink>,
        wal: Wal,
        sampler: Option<Arc<Sampler>>,
    ) -> Result<Self> {
        config.validate()?;
        let runtime = Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let inner = Arc::new(Inner {
            stores: Arc::new(Semaphore::new(config.max_concurrent_stores)),
            config,
            sink,
            wal,
            state: Mutex::new(State::default()),
            stats: AssemblerStats::default(),
            wake: Notify::new(),
            stored: Notify::new(),
            closed: AtomicBool::new(false),
            runtime,
            rollups: std::sync::OnceLock::new(),
            span_metrics: std::sync::OnceLock::new(),
            sampler,
        });
        inner.runtime.spawn(run_flusher(Arc::clone(&inner)));
        Ok(Self { inner })
    }

    /// Appends `batch` to the WAL and, once it is durable, adds its spans.
    /// Returns the record's sequence number. When this returns `Ok` the
    /// batch may be acknowledged to the client.
    pub async fn ingest(&self, batch: ExportRequest) -> Result<u64> {
        let (sizes, appended) = self.inner.wal.append_sized(&batch);
        let appended = appended.await?;
        let seq = appended.seq();
        let held = self.inner.hand_on(appended, &batch.spans);
        self.inner.add(held, batch.spans, Some(sizes));
        Ok(seq)
    }

    /// [`ingest`](Self::ingest) for `spans` converted whole (nothing
    /// rejected or changed) from the OTLP/protobuf request `body`: the WAL
    /// keeps the body instead of re-encoding the spans
    /// ([`Wal::append_otlp`]); `sizes` are the spans' encoded lengths in it,
    /// in order, for memory accounting.
    pub async fn ingest_otlp(&self, spans: Vec<Span>, body: &[u8], sizes: Vec<u64>) -> Result<u64> {
        let appended = self.inner.wal.append_otlp(body).await?;
        let seq = appended.seq();
        let held = self.inner.hand_on(appended, &spans);
        self.inner.add(held, spans, Some(sizes));
        Ok(seq)
    }

    /// Adds the spans of a durable record (`spans` is the batch that was
    /// appended). The assembler releases the record once they are stored.
    pub fn add(&self, appended: Appended, spans: Vec<Span>) {
        let held = self.inner.hand_on(appended, &spans);
        self.inner.add(held, spans, None);
    }

    /// Adds the records [`Wal::open`] returned for replay.
    pub fn replay(&self, records: impl IntoIterator<Item = WalRecord>) {
        for record in records {
            if let Some(r) = self.inner.rollups.get() {
                r.record(record.seq, &record.batch.spans);
            }
            self.inner.add(record.seq, record.batch.spans, None);
        }
    }

    /// Counts every span added from now on in `rollups` (before it is
    /// assembled, so before any sampling). Set once, before replay.
    pub fn set_rollups(&self, rollups: Arc<crate::rollup::Rollups>) {
        if self.inner.rollups.set(rollups).is_err() {
            tracing::warn!("assembler: roll-ups already set");
        }
    }

    /// Counts every span added from now on in `span_metrics` (before it is
    /// assembled, so before any sampling); replayed records are not
    /// counted. Set once.
    pub fn set_span_metrics(&self, span_metrics: Arc<crate::spanmetrics::SpanMetrics>) {
        if self.inner.span_metrics.set(span_metrics).is_err() {
            tracing::warn!("assembler: span metrics already set");
        }
    }

    /// Flushes every pending trace and waits until everything added so far
    /// (and anything added meanwhile) is stored. With a sink that keeps
    /// failing this waits (retrying) until it recovers; wrap it in a timeout
    /// to bound a shutdown.
    pub async fn flush_all(&self) {
        loop {
            let stored = self.inner.stored.notified();
            tokio::pin!(stored);
            stored.as_mut().enable();
            {
                let mut state = self.inner.state.lock();
                let trace_ids: Vec<TraceKey> = state.traces.keys().copied().collect();
                for trace_id in trace_ids {
                    state.flush(&trace_id, FlushReason::Shutdown, &self.inner.stats);
                }
                state.publish(&self.inner.stats);
                if state.traces.is_empty() && state.fragments == 0 {
                    return;
                }
            }
            self.inner.wake.notify_one();
            stored.await;
        }
    }

    /// Bytes of spans held in memory: being assembled, waiting to be stored
    /// or being stored. Ingest refuses new batches above its memory limit.
    pub fn pending_bytes(&self) -> u64 {
        self.inner.stats.pending_bytes.load(Ordering::Relaxed)
    }

    /// Traces being assembled (not counting fragments already flushed).
    pub fn pending_traces(&self) -> usize {
        self.inner.state.lock().traces.len()
    }

    /// Fragments flushed and not yet stored.
    pub fn in_flight(&self) -> usize {
        self.inner.state.lock().fragments
    }

    /// Counters and gauges.
    pub fn stats(&self) -> &AssemblerStats {
        &self.inner.stats
    }

    /// The sampler, when tail sampling is on.
    pub fn sampler(&self) -> Option<&Arc<Sampler>> {
        self.inner.sampler.as_ref()
    }

    /// The WAL this assembler releases records on.
    pub fn wal(&self) -> &Wal {
        &self.inner.wal
    }
}

impl Drop for Assembler {
    fn drop(&mut self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.wake.notify_one();
    }
}

/// The flush task: takes due fragments and starts their stores.
async fn run_flusher(inner: Arc<Inner>) {
    loop {
        if inner.is_closed() {
            return;
        }
        let due = inner
            .state
            .lock()
            .due(Instant::now(), &inner.config, &inner.stats);
        for fragment in due {
            let Some(fragment) = inner.sample(fragment) else {
                continue;
            };
            let Ok(permit) = Arc::clone(&inner.stores).acquire_owned().await else {
                return;
            };
            if inner.is_closed() {
                return;
            }
            inner
                .runtime
                .spawn(store_fragment(Arc::clone(&inner), fragment, permit));
        }
        let wake_at = inner.state.lock().wake_at;
        match wake_at {
            Some(at) => {
                tokio::select! {
                    () = inner.wake.notified() => {}
                    () = tokio::time::sleep_until(at) => {}
                }
            }
            None => inner.wake.notified().await,
        }
    }
}

/// Stores one fragment, retrying until it succeeds (or the assembler is
/// dropped), then releases the records it was the last holder of.
async fn store_fragment(inner: Arc<Inner>, fragment: Fragment, _permit: OwnedSemaphorePermit) {
    let Fragment {
        trace_id,
        spans,
        seqs,
        bytes,
        evicted: _,
    } = fragment;
    let span_count = spans.len() as u64;
    // The fragment moves into each attempt and comes back with a failure
    // that will be retried: no copy is kept while it is being stored.
    let slot = Mutex::new(Some(Trace {
        trace_id: trace_id.to_vec(),
        spans,
    }));
    let started = Instant::now();
    let sink = &inner.sink;
    let stats = &inner.stats;
    let attempt = || {
        let trace = slot.lock().take();
        let slot = &slot;
        async move {
            let Some(trace) = trace else {
                // Not expected: every retried failure hands the fragment back.
                return Err(SinkError::rejected(
                    "the fragment was not handed back for a retry",
                ));
            };
            let mut result = sink.store_trace(trace).await;
            if let Err(error) = &mut result {
                if let Some(trace) = error.trace.take() {
                    *slot.lock() = Some(trace);
                }
                if !error.is_rejected() {
                    stats.store_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, spans = span_count, "assembler: storing a trace failed; retrying");
                }
            }
            result
        }
    };
    let retryable = |e: &SinkError| !e.is_rejected() && !inner.is_closed();
    // Jitter only has to differ between fragments: seeded from the (random)
    // trace id rather than from the OS, which would cost a system call per
    // store.
    let mut rng = {
        use rand::SeedableRng as _;
        let mut seed = [0u8; 8];
        seed.copy_from_slice(&trace_id[..8]);
        rand::rngs::SmallRng::seed_from_u64(u64::from_le_bytes(seed))
    };
    loop {
        match retry_with_rng(&inner.config.retry, &mut rng, attempt, retryable).await {
            Ok(()) => {
                let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                stats.stores.fetch_add(1, Ordering::Relaxed);
                stats.spans_stored.fetch_add(span_count, Ordering::Relaxed);
                stats.store_nanos.fetch_add(nanos, Ordering::Relaxed);
                break;
            }
            Err(error) if error.is_rejected() => {
                stats.rejected_fragments.fetch_add(1, Ordering::Relaxed);
                stats
                    .rejected_spans
                    .fetch_add(span_count, Ordering::Relaxed);
                tracing::error!(%error, spans = span_count, "assembler: storage rejected a trace fragment as invalid; dropping it");
                break;
            }
            Err(_) if inner.is_closed() => return,
            Err(error) => {
                tracing::error!(%error, "assembler: store retries used up; starting another round");
            }
        }
    }
    let released = inner.state.lock().complete(bytes, &seqs, stats);
    for seq in released {
        inner.release(seq);
    }
    inner.stored.notify_waiters();
}

#[cfg(test)]
mod sampling_tests;
#[cfg(test)]
mod tests;
