//! A bounded in-memory store, for tests and throwaway runs. Nothing survives
//! a restart.
//!
//! Traces are spread over shards by trace id, each behind its own lock, so
//! that stores from several runtime threads rarely wait on each other. A
//! shard keeps its traces, an index of them by newest span end (eviction,
//! pruning) and by newest span start (search), and the service/operation
//! catalogue of the spans it holds. Per span the store keeps the span itself
//! and a small [`Brief`] that a search can rule it out with.
//!
//! The store is bounded twice: in traces and in bytes, the bytes being an
//! estimate of the heap its spans take ([`span_bytes`]). Each shard keeps
//! its share of both bounds and its own byte count under its own lock, and
//! evicts its oldest traces when storing passes either.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashSet as StdHashSet};

use async_trait::async_trait;
use clew_proto::v1 as pb;
use foldhash::HashMap;
use parking_lot::Mutex;

use super::{
    DependencyLink, FilterCriteria, PruneStats, Result, Returned, Span, SpanKind, Storage,
    StoreOutcome, Trace, TraceId, validate,
};
use crate::filter::{self, DependencyCounter, SpanIds};

/// Default bound on the number of traces kept.
pub const DEFAULT_MAX_TRACES: usize = 10_000;

/// Default bound on the bytes of spans kept (256 MiB, by [`span_bytes`]).
pub const DEFAULT_MAX_BYTES: u64 = 256 << 20;

/// Shards of a store large enough to have them (see [`MemoryStorage::new`]).
const SHARDS: usize = 16;
/// A store bounded below `SHARDS * MIN_TRACES_PER_SHARD` traces has one
/// shard, so that its bound and eviction order are exact.
const MIN_TRACES_PER_SHARD: usize = 64;
/// Likewise for a store bounded below `SHARDS * MIN_BYTES_PER_SHARD` bytes
/// (a shard's share must hold a large trace).
const MIN_BYTES_PER_SHARD: u64 = 4 << 20;

/// What a stored span is accounted for beyond the bytes of its strings and
/// ids: the structs holding it (`Span` and its `Brief`) and the allocator's
/// rounding of its ids, name and service.
const SPAN_OVERHEAD: u64 =
    (std::mem::size_of::<Span>() + std::mem::size_of::<Brief>() + 5 * SLACK) as u64;
/// Likewise per attribute, event, link and clock entry: its struct, and the
/// allocator's rounding of its strings.
const KEY_VALUE_OVERHEAD: u64 = (std::mem::size_of::<pb::KeyValue>() + 2 * SLACK) as u64;
const EVENT_OVERHEAD: u64 = (std::mem::size_of::<pb::Event>() + SLACK) as u64;
const LINK_OVERHEAD: u64 = (std::mem::size_of::<pb::Link>() + 2 * SLACK) as u64;
const CLOCK_ENTRY_OVERHEAD: u64 = (std::mem::size_of::<pb::ClockEntry>() + SLACK) as u64;
/// The allocator's average rounding up of one allocation.
const SLACK: usize = 8;

/// The bytes a stored span is accounted for: the lengths of its strings,
/// ids and byte values plus a fixed overhead per span, attribute, event,
/// link and clock entry for the structs that hold them in memory. An
/// estimate of the heap the span takes in the store, within tens of percent
/// of it for small and large spans alike (it leaves out allocator metadata
/// and the per-trace maps); a few times cheaper to compute than the span's
/// encoded length, which it is close to plus the overheads.
pub fn span_bytes(span: &Span) -> u64 {
    let lens = [
        span.trace_id.len(),
        span.span_id.len(),
        span.parent_span_id.len(),
        span.name.len(),
        span.service.len(),
        span.trace_state.len(),
        span.node.len(),
        span.status.as_ref().map_or(0, |s| s.message.len()),
    ];
    let mut bytes = SPAN_OVERHEAD + lens.iter().sum::<usize>() as u64;
    bytes += attributes_bytes(&span.attributes) + attributes_bytes(&span.resource);
    for e in &span.events {
        bytes += EVENT_OVERHEAD + e.name.len() as u64 + attributes_bytes(&e.attributes);
    }
    for l in &span.links {
        let ids = l.trace_id.len() + l.span_id.len() + l.trace_state.len();
        bytes += LINK_OVERHEAD + ids as u64 + attributes_bytes(&l.attributes);
    }
    for clock in [&span.clock_start, &span.clock_end].into_iter().flatten() {
        for e in &clock.entries {
            bytes += CLOCK_ENTRY_OVERHEAD + e.node.len() as u64;
        }
    }
    bytes
}

fn attributes_bytes(attributes: &[pb::KeyValue]) -> u64 {
    attributes
        .iter()
        .map(|kv| {
            KEY_VALUE_OVERHEAD + kv.key.len() as u64 + kv.value.as_ref().map_or(0, value_bytes)
        })
        .sum()
}

fn value_bytes(v: &pb::AnyValue) -> u64 {
    match &v.value {
        Some(pb::any_value::Value::StringValue(s)) => s.len() as u64,
        Some(pb::any_value::Value::BytesValue(b)) => b.len() as u64,
        Some(pb::any_value::Value::ArrayValue(a)) => a
            .values
            .iter()
            .map(|v| std::mem::size_of::<pb::AnyValue>() as u64 + value_bytes(v))
            .sum(),
        _ => 0,
    }
}

/// In-memory storage holding at most about `max_traces` traces and
/// `max_bytes` bytes of spans (by [`span_bytes`]): storing beyond either
/// evicts old traces (those whose newest span ended first in the shard).
#[derive(Debug)]
pub struct MemoryStorage {
    shards: Box<[Mutex<Shard>]>,
    /// Bounds per shard.
    per_shard: Bounds,
}

/// A shard's share of the store's bounds.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    traces: usize,
    bytes: u64,
}

/// What a memory store holds and has evicted (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Traces held.
    pub traces: u64,
    /// Bytes of spans held, by [`span_bytes`].
    pub bytes: u64,
    /// Traces evicted because the store held too many traces.
    pub evicted_for_traces: u64,
    /// Traces evicted because the store held too many bytes.
    pub evicted_for_bytes: u64,
}

/// operation -> kind -> number of stored spans (keyed by name first, so
/// that a span is counted and uncounted without allocating).
type Operations = HashMap<String, HashMap<i32, u64>>;

#[derive(Debug, Default)]
struct Shard {
    traces: HashMap<[u8; 16], Entry>,
    /// (newest span end, trace): eviction and pruning order.
    by_end: BTreeSet<(u64, [u8; 16])>,
    /// (newest span start, trace): search order.
    by_start: BTreeSet<(u64, [u8; 16])>,
    /// service -> operation -> kind -> number of stored spans (hashed:
    /// looked up for every span stored; sorted when queried).
    operations: HashMap<String, Operations>,
    /// Sum of the traces' `bytes`.
    bytes: u64,
    /// Traces evicted over the trace bound, and over the byte bound.
    evicted: (u64, u64),
}

/// A span's id, start, service (hashed), duration and error flag, kept
/// beside it so that de-duplication and search skip most spans without
/// touching them.
#[derive(Debug, Clone, Copy)]
struct Brief {
    id: [u8; 8],
    start: u64,
    service: u64,
    duration: u64,
    error: bool,
}

impl Brief {
    fn of(span: &Span) -> Self {
        Brief {
            id: filter::span_id(span),
            start: span.start_time_unix_nano,
            service: service_hash(&span.service),
            duration: filter::duration(span),
            error: filter::is_error(span),
        }
    }

    /// False when the span certainly does not match (`service` is the
    /// filter's hashed service, if it has one; `lo..=hi` its start range).
    fn may_match(&self, f: &FilterCriteria, service: Option<u64>, lo: u64, hi: u64) -> bool {
        self.start >= lo
            && self.start <= hi
            && service.is_none_or(|h| h == self.service)
            && (f.min_duration_nanos == 0 || self.duration >= f.min_duration_nanos)
            && (f.max_duration_nanos == 0 || self.duration <= f.max_duration_nanos)
            && (!f.errors_only || self.error)
    }
}

/// A deterministic hash of a service name (equal names, equal hashes).
fn service_hash(service: &str) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::default().hash_one(service)
}

/// One trace: its spans in arrival order and their briefs at the same
/// index.
#[derive(Debug)]
struct Entry {
    spans: Vec<Span>,
    briefs: Vec<Brief>,
    ids: SpanIds,
    newest_end: u64,
    newest_start: u64,
    oldest_start: u64,
    /// Sum of the spans' [`span_bytes`].
    bytes: u64,
}

impl Default for Entry {
    fn default() -> Self {
        Entry {
            spans: Vec::new(),
            briefs: Vec::new(),
            ids: SpanIds::default(),
            newest_end: 0,
            newest_start: 0,
            oldest_start: u64::MAX,
            bytes: 0,
        }
    }
}

impl Entry {
    /// Widens the trace's time bounds by a span stored into it.
    fn widen(&mut self, brief: &Brief, end: u64) {
        self.newest_end = self.newest_end.max(end);
        self.newest_start = self.newest_start.max(brief.start);
        self.oldest_start = self.oldest_start.min(brief.start);
    }

    /// The start of the most recent span matching the filter.
    fn best_match(
        &self,
        f: &FilterCriteria,
        service: Option<u64>,
        lo: u64,
        hi: u64,
    ) -> Option<u64> {
        let mut best: Option<u64> = None;
        for (brief, span) in self.briefs.iter().zip(&self.spans) {
            if best.is_some_and(|b| brief.start <= b) || !brief.may_match(f, service, lo, hi) {
                continue;
            }
            if filter::span_matches(span, f) {
                best = Some(brief.start);
            }
        }
        best
    }
}

impl MemoryStorage {
    /// A store keeping at most `max_traces` traces (at least 1) and
    /// [`DEFAULT_MAX_BYTES`] bytes: [`MemoryStorage::bounded`].
    pub fn new(max_traces: usize) -> Self {
        MemoryStorage::bounded(max_traces, DEFAULT_MAX_BYTES)
    }

    /// A store keeping at most `max_traces` traces (at least 1) and
    /// `max_bytes` bytes of spans by [`span_bytes`]. Bounds of 1,024 traces
    /// and 64 MiB or more are split evenly over 16 shards: the store then
    /// holds at most `max_traces` rounded up to a multiple of 16 and
    /// `max_bytes`, and evicts the oldest traces of the shard it stores
    /// into (trace ids are random, so shards fill evenly). A trace larger
    /// than its shard's share of `max_bytes` is evicted as it is stored.
    pub fn bounded(max_traces: usize, max_bytes: u64) -> Self {
        let max_traces = max_traces.max(1);
        let shards = if max_traces >= SHARDS * MIN_TRACES_PER_SHARD
            && max_bytes >= SHARDS as u64 * MIN_BYTES_PER_SHARD
        {
            SHARDS
        } else {
            1
        };
        MemoryStorage {
            shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: Bounds {
                traces: max_traces.div_ceil(shards),
                bytes: max_bytes / shards as u64,
            },
        }
    }

    /// What the store holds and has evicted (locks each shard in turn).
    pub fn stats(&self) -> MemoryStats {
        let mut stats = MemoryStats::default();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            stats.traces += shard.traces.len() as u64;
            stats.bytes += shard.bytes;
            stats.evicted_for_traces += shard.evicted.0;
            stats.evicted_for_bytes += shard.evicted.1;
        }
        stats
    }

    /// Number of traces held.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().traces.len()).sum()
    }

    /// True when no trace is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, tid: &[u8; 16]) -> &Mutex<Shard> {
        use std::hash::BuildHasher;
        // Hashed, not taken from the id's bytes: ids that differ in one
        // byte (or 64-bit ids padded with zeros) still spread evenly.
        let h = foldhash::fast::FixedState::default().hash_one(tid);
        &self.shards[(h % self.shards.len() as u64) as usize]
    }
}

impl Default for MemoryStorage {
    fn default() -> Self {
        MemoryStorage::new(DEFAULT_MAX_TRACES)
    }
}

/// Counts stored spans in the service/operation catalogue: one service
/// lookup per run of spans of one service (a trace's spans usually share
/// it), and no allocation when the service and operation are known.
fn count_operations(operations: &mut HashMap<String, Operations>, spans: &[Span]) {
    for run in spans.chunk_by(|a, b| a.service == b.service) {
        let service = &run[0].service;
        let ops = match operations.get_mut(service) {
            Some(ops) => ops,
            None => operations.entry(service.clone()).or_default(),
        };
        for span in run {
            let kinds = match ops.get_mut(&span.name) {
                Some(kinds) => kinds,
                None => ops.entry(span.name.clone()).or_default(),
            };
            *kinds.entry(span.kind).or_insert(0) += 1;
        }
    }
}

/// Takes removed spans out of the catalogue, dropping what no longer has a
/// span.
fn uncount_operations(operations: &mut HashMap<String, Operations>, spans: &[Span]) {
    for run in spans.chunk_by(|a, b| a.service == b.service) {
        let service = &run[0].service;
        let Some(ops) = operations.get_mut(service) else {
            continue;
        };
        for span in run {
            if let Some(kinds) = ops.get_mut(&span.name) {
                if let Some(n) = kinds.get_mut(&span.kind) {
                    *n -= 1;
                    if *n == 0 {
                        kinds.remove(&span.kind);
                    }
                }
                if kinds.is_empty() {
                    ops.remove(&span.name);
                }
            }
        }
        if ops.is_empty() {
            operations.remove(service);
        }
    }
}

impl Shard {
    /// Stores the spans of one validated fragment (`sizes`: their
    /// [`span_bytes`]); evicted traces go to `evicted`, to be dropped after
    /// the lock is released.
    fn store(
        &mut self,
        tid: [u8; 16],
        (spans, sizes): (Vec<Span>, Vec<u64>),
        bounds: Bounds,
        outcome: &mut StoreOutcome,
        evicted: &mut Vec<Entry>,
    ) {
        let entry = self.traces.entry(tid).or_default();
        let was_new = entry.spans.is_empty();
        let (old_end, old_start) = (entry.newest_end, entry.newest_start);
        entry.briefs.reserve(spans.len());
        let rest = if was_new {
            // A new trace takes the fragment's spans as they are (validation
            // removed in-fragment duplicates): no span is moved.
            for span in &spans {
                let brief = Brief::of(span);
                entry.widen(&brief, span.end_time_unix_nano);
                entry.briefs.push(brief);
            }
            count_operations(&mut self.operations, &spans);
            outcome.stored += spans.len() as u64;
            entry.bytes = sizes.iter().sum();
            self.bytes += entry.bytes;
            entry.ids =
                SpanIds::of_unique(entry.briefs.len(), || entry.briefs.iter().map(|b| b.id));
            entry.spans = spans;
            Vec::new()
        } else {
            spans
        };
        entry.spans.reserve(rest.len());
        for (span, size) in rest.into_iter().zip(sizes) {
            let brief = Brief::of(&span);
            let briefs = &entry.briefs;
            let known = || briefs.iter().map(|b| b.id);
            if !entry.ids.insert(brief.id, briefs.len(), known) {
                outcome.duplicates += 1;
                continue;
            }
            outcome.stored += 1;
            entry.bytes += size;
            self.bytes += size;
            entry.widen(&brief, span.end_time_unix_nano);
            count_operations(&mut self.operations, std::slice::from_ref(&span));
            entry.briefs.push(brief);
            entry.spans.push(span);
        }
        let (new_end, new_start) = (entry.newest_end, entry.newest_start);
        if entry.spans.is_empty() {
            // An empty fragment for an unknown trace leaves nothing behind.
            self.traces.remove(&tid);
            return;
        }
        if was_new {
            self.by_end.insert((new_end, tid));
            self.by_start.insert((new_start, tid));
        } else {
            if new_end != old_end {
                self.by_end.remove(&(old_end, tid));
                self.by_end.insert((new_end, tid));
            }
            if new_start != old_start {
                self.by_start.remove(&(old_start, tid));
                self.by_start.insert((new_start, tid));
            }
        }
        self.evict(bounds, evicted);
    }

    /// Evicts the traces whose newest span ended first until the shard is
    /// within `bounds`.
    fn evict(&mut self, bounds: Bounds, evicted: &mut Vec<Entry>) {
        loop {
            let over_traces = self.traces.len() > bounds.traces;
            if !over_traces && self.bytes <= bounds.bytes {
                break;
            }
            let Some(&(_, oldest)) = self.by_end.first() else {
                break;
            };
            match self.remove_trace(&oldest) {
                Some(entry) => {
                    if over_traces {
                        self.evicted.0 += 1;
                    } else {
                        self.evicted.1 += 1;
                    }
                    evicted.push(entry);
                }
                // Not expected: an index entry without its trace.
                None => {
                    self.by_end.pop_first();
                }
            }
        }
    }

    /// Takes a trace out of the shard and its indexes.
    fn remove_trace(&mut self, tid: &[u8; 16]) -> Option<Entry> {
        let entry = self.traces.remove(tid)?;
        self.bytes -= entry.bytes;
        self.by_end.remove(&(entry.newest_end, *tid));
        self.by_start.remove(&(entry.newest_start, *tid));
        uncount_operations(&mut self.operations, &entry.spans);
        Some(entry)
    }

    /// Adds the shard's matches to `top`, the `limit` best so far over the
    /// shards searched (most recent matching span start, trace); the top of
    /// the heap is the worst of them.
    fn search(
        &self,
        f: &FilterCriteria,
        limit: usize,
        lo: u64,
        hi: u64,
        top: &mut BinaryHeap<Reverse<(u64, [u8; 16])>>,
    ) {
        let service = (!f.service.is_empty()).then(|| service_hash(&f.service));
        // Newest start first: a trace can match no later than its newest
        // span start (nor than `hi`), so once that bound falls below the
        // worst kept match — from this shard or an earlier one — no later
        // trace can enter.
        for &(newest_start, tid) in self.by_start.range((lo, [0; 16])..).rev() {
            let bound = newest_start.min(hi);
            if top.len() >= limit && top.peek().is_some_and(|Reverse((w, _))| bound < *w) {
                break;
            }
            let Some(entry) = self.traces.get(&tid) else {
                continue;
            };
            if entry.oldest_start > hi {
                continue;
            }
            if let Some(best) = entry.best_match(f, service, lo, hi) {
                top.push(Reverse((best, tid)));
                if top.len() > limit {
                    top.pop();
                }
            }
        }
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    async fn store_trace(&self, trace: Trace) -> Result<StoreOutcome> {
        let fragment = validate(trace)?;
        let tid = fragment.trace_id;
        let mut outcome = StoreOutcome {
            stored: 0,
            duplicates: fragment.duplicates,
        };
        let mut evicted = Vec::new();
        // Sized before taking the lock.
        let sizes = fragment.spans.iter().map(span_bytes).collect();
        self.shard(&tid).lock().store(
            tid,
            (fragment.spans, sizes),
            self.per_shard,
            &mut outcome,
            &mut evicted,
        );
        // Freeing evicted spans is the costly part of an eviction: done
        // after the lock is released.
        drop(evicted);
        Ok(outcome)
    }

    async fn get_trace(&self, trace_id: TraceId) -> Result<Option<Trace>> {
        let shard = self.shard(&trace_id.0).lock();
        Ok(shard
            .traces
            .get(&trace_id.0)
            .map(|e| to_trace(trace_id.0, e)))
    }

    async fn list_traces(&self, filter: &FilterCriteria) -> Result<Vec<Trace>> {
        let limit = filter::effective_limit(filter);
        let Some((lo, hi)) = filter::start_window(filter) else {
            return Ok(Vec::new());
        };
        // One top-k over all shards: each shard's walk stops at the worst
        // match kept so far, so later shards walk only what could enter.
        let mut top = BinaryHeap::with_capacity(limit + 1);
        for shard in self.shards.iter() {
            shard.lock().search(filter, limit, lo, hi, &mut top);
        }
        let mut found: Vec<(u64, [u8; 16])> = top.into_iter().map(|Reverse(k)| k).collect();
        // Most recent matching span first; ties by trace id, highest first.
        found.sort_unstable_by(|a, b| b.cmp(a));
        // A trace evicted since it was found is left out.
        Ok(found
            .iter()
            .filter_map(|(_, tid)| {
                let shard = self.shard(tid).lock();
                shard.traces.get(tid).map(|e| to_trace(*tid, e))
            })
            .collect())
    }

    async fn services(&self) -> Result<Vec<String>> {
        let mut services: StdHashSet<String> = StdHashSet::new();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for name in shard.operations.keys() {
                if !services.contains(name) {
                    services.insert(name.clone());
                }
            }
        }
        let mut services: Vec<String> = services.into_iter().collect();
        services.sort();
        Ok(services)
    }

    async fn operations(
        &self,
        service: &str,
        kind: Option<SpanKind>,
    ) -> Result<Vec<(String, SpanKind)>> {
        let mut out: Vec<(String, SpanKind)> = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            let Some(ops) = shard.operations.get(service) else {
                continue;
            };
            out.extend(
                ops.iter()
                    .flat_map(|(name, kinds)| kinds.keys().map(move |k| (name, *k)))
                    .map(|(name, k)| {
                        (
                            name.clone(),
                            SpanKind::try_from(k).unwrap_or(SpanKind::Unspecified),
                        )
                    })
                    .filter(|(_, k)| kind.is_none_or(|want| want == *k)),
            );
        }
        Ok(filter::sorted_operations(out))
    }

    async fn dependencies(
        &self,
        start_unix_nanos: u64,
        end_unix_nanos: u64,
    ) -> Result<Vec<DependencyLink>> {
        let mut counter = DependencyCounter::default();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for entry in shard.traces.values() {
                for edge in filter::edges(entry.spans.iter()) {
                    if filter::in_window(edge.child_start, start_unix_nanos, end_unix_nanos) {
                        counter.add(&edge.parent, &edge.child, edge.error);
                    }
                }
            }
        }
        Ok(counter.finish())
    }

    async fn prune_traces(&self, older_than_unix_nanos: u64) -> Result<PruneStats> {
        let mut stats = PruneStats::default();
        for shard in self.shards.iter() {
            let mut removed = Vec::new();
            {
                let mut shard = shard.lock();
                let old: Vec<[u8; 16]> = shard
                    .by_end
                    .range(..(older_than_unix_nanos, [0; 16]))
                    .map(|&(_, tid)| tid)
                    .collect();
                for tid in old {
                    if let Some(entry) = shard.remove_trace(&tid) {
                        stats.spans += entry.spans.len() as u64;
                        stats.traces += 1;
                        removed.push(entry);
                    }
                }
            }
            drop(removed);
        }
        Ok(stats)
    }

    /// The memory store fails only on invalid input: nothing to hand back.
    async fn store_trace_returning(
        &self,
        trace: Trace,
    ) -> std::result::Result<StoreOutcome, Returned> {
        self.store_trace(trace)
            .await
            .map_err(|error| Returned { error, trace: None })
    }

    fn backend(&self) -> &'static str {
        "memory"
    }

    fn memory_stats(&self) -> Option<MemoryStats> {
        Some(self.stats())
    }
}

fn to_trace(tid: [u8; 16], entry: &Entry) -> Trace {
    let mut spans: Vec<Span> = entry.spans.clone();
    filter::sort_spans(&mut spans);
    Trace {
        trace_id: tid.to_vec(),
        spans,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::conformance::{Fixture, error, span, trace_id};

    async fn fixture() -> Fixture {
        Fixture::new(Arc::new(MemoryStorage::new(1_000)))
    }

    conformance_tests!(fixture);

    /// The same suite against a store split into shards.
    mod sharded {
        use super::*;

        async fn fixture() -> Fixture {
            let store = MemoryStorage::new(4_096);
            assert_eq!(store.shards.len(), SHARDS);
            Fixture::new(Arc::new(store))
        }

        conformance_tests!(fixture);
    }

    fn random_trace(rng: &mut impl rand::Rng, start_ms: u64, services: &[&str]) -> Trace {
        let mut t = [0u8; 16];
        rng.fill(&mut t[..]);
        let t = TraceId(t);
        let spans = (0..rng.random_range(1..5u8))
            .map(|n| {
                let svc = services[rng.random_range(0..services.len())];
                let start = start_ms + u64::from(n);
                let s = span(
                    t,
                    n + 1,
                    n.checked_sub(1).map(|p| p + 1),
                    svc,
                    "op",
                    start,
                    rng.random_range(1..50),
                );
                if rng.random_bool(0.1) { error(s) } else { s }
            })
            .collect();
        Trace {
            trace_id: t.0.to_vec(),
            spans,
        }
    }

    #[tokio::test]
    async fn the_catalogue_counts_runs_of_services_and_forgets_evicted_spans() {
        let store = MemoryStorage::new(1);
        let t = trace_id(1);
        // Services alternate within the trace: a, a, b, a.
        let spans = vec![
            span(t, 1, None, "a", "x", 1, 10),
            span(t, 2, Some(1), "a", "y", 2, 1),
            span(t, 3, Some(1), "b", "z", 3, 1),
            span(t, 4, Some(1), "a", "x", 4, 1),
        ];
        store
            .store_trace(Trace {
                trace_id: t.0.to_vec(),
                spans,
            })
            .await
            .unwrap();
        assert_eq!(store.services().await.unwrap(), ["a", "b"]);
        let ops: Vec<String> = store
            .operations("a", None)
            .await
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(ops, ["x", "y"]);
        // A second trace evicts the first: only its own catalogue is left.
        let t2 = trace_id(2);
        store
            .store_trace(Trace {
                trace_id: t2.0.to_vec(),
                spans: vec![span(t2, 1, None, "c", "w", 100, 1)],
            })
            .await
            .unwrap();
        assert_eq!(store.services().await.unwrap(), ["c"]);
        assert!(store.operations("a", None).await.unwrap().is_empty());
    }

    #[test]
    fn ids_that_differ_in_few_bytes_spread_over_the_shards() {
        let store = MemoryStorage::new(DEFAULT_MAX_TRACES);
        let mut counts = [0usize; SHARDS];
        for n in 0..16_000u32 {
            for at in [0usize, 12] {
                let mut tid = [0u8; 16];
                tid[at..at + 4].copy_from_slice(&n.to_be_bytes());
                let shard: *const Mutex<Shard> = store.shard(&tid);
                let i = store
                    .shards
                    .iter()
                    .position(|s| std::ptr::eq(s, shard))
                    .unwrap();
                counts[i] += 1;
            }
        }
        let even = 32_000 / SHARDS;
        for c in counts {
            assert!(c > even * 8 / 10 && c < even * 12 / 10, "{counts:?}");
        }
    }

    #[tokio::test]
    async fn a_sharded_store_keeps_its_bound_and_searches_like_a_scan() {
        use rand::SeedableRng as _;
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let store = MemoryStorage::new(2_000);
        assert_eq!(store.shards.len(), SHARDS);
        let services = ["api", "db", "cache"];
        let mut all = Vec::new();
        for i in 0..6_000u64 {
            let trace = random_trace(&mut rng, i, &services);
            all.push(trace.clone());
            store.store_trace(trace).await.unwrap();
        }
        let held = store.len();
        assert!((1_900..=2_000).contains(&held), "held {held}");
        // Evicted traces are old ones: every held trace is among the
        // newest 2,600 stored.
        let mut held_ids = Vec::new();
        for (i, t) in all.iter().enumerate() {
            let id = TraceId(t.trace_id.as_slice().try_into().unwrap());
            if store.get_trace(id).await.unwrap().is_some() {
                assert!(i >= 6_000 - 2_600, "trace {i} outlived newer ones");
                held_ids.push(id);
            }
        }
        assert_eq!(held_ids.len(), held);
        // Searches agree with a scan of every held trace.
        let mut held_traces = Vec::new();
        for id in &held_ids {
            held_traces.push(store.get_trace(*id).await.unwrap().unwrap());
        }
        for (service, errors_only, min_ms, window) in [
            ("", false, 0, None),
            ("db", false, 0, None),
            ("cache", false, 30, None),
            ("api", false, 0, Some((5_000u64, 5_500u64))),
            ("nope", false, 0, None),
            ("api", true, 0, None),
        ] {
            for limit in [1u32, 20, 300] {
                let mut f = FilterCriteria {
                    service: service.into(),
                    errors_only,
                    min_duration_nanos: min_ms * 1_000_000,
                    limit,
                    ..Default::default()
                };
                if let Some((a, b)) = window {
                    f.start_time_min_unix_nano = crate::conformance::T0 + a * 1_000_000;
                    f.start_time_max_unix_nano = crate::conformance::T0 + b * 1_000_000;
                }
                let mut want: Vec<(u64, Vec<u8>)> = held_traces
                    .iter()
                    .filter_map(|t| {
                        filter::best_match(&t.spans, &f).map(|b| (b, t.trace_id.clone()))
                    })
                    .collect();
                want.sort_by(|a, b| b.cmp(a));
                want.truncate(limit as usize);
                let got: Vec<(u64, Vec<u8>)> = store
                    .list_traces(&f)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|t| (filter::best_match(&t.spans, &f).unwrap(), t.trace_id))
                    .collect();
                assert_eq!(
                    got, want,
                    "{service} errors={errors_only} min={min_ms} {window:?} limit {limit}"
                );
            }
        }
        // Pruning empties every shard's part.
        let stats = store.prune_traces(u64::MAX).await.unwrap();
        assert_eq!(stats.traces as usize, held);
        assert!(store.is_empty());
        assert!(store.services().await.unwrap().is_empty());
    }

    /// Trace `i` (distinct for every `u32`): one span starting `i` ms after
    /// T0, with `attrs` small attributes and, when `value_len` > 0, one of
    /// `value_len` bytes.
    fn sized_trace(i: u32, attrs: usize, value_len: usize) -> Trace {
        let mut t = [0xa1; 16];
        t[12..].copy_from_slice(&i.to_be_bytes());
        let t = TraceId(t);
        let mut s = span(t, 1, None, "svc", "op", u64::from(i), 1);
        s.attributes = (0..attrs)
            .map(|n| kv(&format!("key.{n}"), "value"))
            .collect();
        if value_len > 0 {
            s.attributes.push(kv("payload", &"x".repeat(value_len)));
        }
        Trace {
            trace_id: t.0.to_vec(),
            spans: vec![s],
        }
    }

    fn kv(key: &str, value: &str) -> clew_proto::v1::KeyValue {
        clew_proto::v1::KeyValue {
            key: key.into(),
            value: Some(clew_proto::v1::AnyValue {
                value: Some(clew_proto::v1::any_value::Value::StringValue(value.into())),
            }),
        }
    }

    fn id_of(trace: &Trace) -> TraceId {
        TraceId(trace.trace_id.as_slice().try_into().unwrap())
    }

    #[tokio::test]
    async fn a_byte_bound_holds_the_accounted_bytes_under_it_evicting_the_oldest_first() {
        let bound = 256 << 10;
        let store = MemoryStorage::bounded(1_000_000, bound);
        assert_eq!(store.shards.len(), 1);
        let n = 2_000u32; // about 1.6 KiB each: 12 times the bound
        for i in 0..n {
            store.store_trace(sized_trace(i, 4, 1024)).await.unwrap();
            assert!(store.stats().bytes <= bound, "over the bound after {i}");
        }
        let stats = store.stats();
        let held = u32::try_from(stats.traces).unwrap();
        assert!(held > 100 && held < n / 4, "held {held}");
        // Exactly the newest `held` traces are left.
        for i in 0..n {
            let stored = store.get_trace(id_of(&sized_trace(i, 0, 0))).await.unwrap();
            assert_eq!(stored.is_some(), i >= n - held, "trace {i}");
        }
        assert_eq!(stats.evicted_for_bytes, u64::from(n - held));
        assert_eq!(stats.evicted_for_traces, 0);
        // The count is the sum of the held spans' estimates, and near the
        // bound (the next trace would not have fitted).
        let want: u64 = (n - held..n)
            .map(|i| span_bytes(&sized_trace(i, 4, 1024).spans[0]))
            .sum();
        assert_eq!(stats.bytes, want);
        assert!(stats.bytes > bound - want / u64::from(held));
        // Whatever leaves the store leaves the count.
        store.prune_traces(u64::MAX).await.unwrap();
        assert_eq!(store.stats().bytes, 0);
    }

    #[tokio::test]
    async fn a_sharded_store_keeps_its_byte_bound_and_the_newest_traces() {
        let bound = 64 << 20;
        let store = MemoryStorage::bounded(1_000_000, bound);
        assert_eq!(store.shards.len(), SHARDS);
        let n = 8_000u32; // 16 KiB each: twice the bound
        for i in 0..n {
            store
                .store_trace(sized_trace(i, 0, 16 << 10))
                .await
                .unwrap();
        }
        let stats = store.stats();
        let one = span_bytes(&sized_trace(0, 0, 16 << 10).spans[0]);
        assert!(stats.bytes <= bound);
        // Every shard is full to within one trace.
        assert!(stats.bytes > bound - SHARDS as u64 * one, "{stats:?}");
        assert_eq!(stats.evicted_for_bytes, u64::from(n) - stats.traces);
        // Evicted traces are old ones: every held trace is among the newest
        // 130 % of what is held.
        let held = u32::try_from(stats.traces).unwrap();
        for i in 0..n - held * 13 / 10 {
            let stored = store.get_trace(id_of(&sized_trace(i, 0, 0))).await.unwrap();
            assert!(stored.is_none(), "trace {i} outlived newer ones");
        }
    }

    #[tokio::test]
    async fn the_trace_bound_still_applies_under_the_byte_bound() {
        let store = MemoryStorage::bounded(3, 1 << 30);
        for i in 0..10 {
            store.store_trace(sized_trace(i, 1, 0)).await.unwrap();
        }
        let stats = store.stats();
        assert_eq!((stats.traces, stats.evicted_for_traces), (3, 7));
        assert_eq!(stats.evicted_for_bytes, 0);
    }

    fn alloc(bytes: usize) -> usize {
        bytes.next_multiple_of(16)
    }

    fn vec_heap<T>(v: &[T]) -> usize {
        alloc(std::mem::size_of_val(v))
    }

    fn kvs_heap(kvs: &[clew_proto::v1::KeyValue]) -> usize {
        use clew_proto::v1::any_value::Value;
        let value = |v: &Option<clew_proto::v1::AnyValue>| match v
            .as_ref()
            .and_then(|v| v.value.as_ref())
        {
            Some(Value::StringValue(s)) => alloc(s.len()),
            Some(Value::BytesValue(b)) => alloc(b.len()),
            _ => 0,
        };
        vec_heap(kvs)
            + kvs
                .iter()
                .map(|kv| alloc(kv.key.len()) + value(&kv.value))
                .sum::<usize>()
    }

    /// What a stored span takes on the heap, counted field by field (its
    /// strings and vectors at their lengths, rounded up to 16 bytes as
    /// allocators do), with its slot in the trace's spans and its brief.
    fn heap(span: &Span) -> usize {
        let strings = [&span.name, &span.service, &span.trace_state, &span.node];
        let clock = |c: &Option<clew_proto::v1::VectorClock>| {
            c.as_ref().map_or(0, |c| {
                vec_heap(&c.entries) + c.entries.iter().map(|e| alloc(e.node.len())).sum::<usize>()
            })
        };
        std::mem::size_of::<Span>()
            + std::mem::size_of::<Brief>()
            + [&span.trace_id, &span.span_id, &span.parent_span_id]
                .iter()
                .map(|v| vec_heap(v))
                .sum::<usize>()
            + strings.iter().map(|s| alloc(s.len())).sum::<usize>()
            + kvs_heap(&span.attributes)
            + kvs_heap(&span.resource)
            + vec_heap(&span.events)
            + span
                .events
                .iter()
                .map(|e| alloc(e.name.len()) + kvs_heap(&e.attributes))
                .sum::<usize>()
            + vec_heap(&span.links)
            + span
                .links
                .iter()
                .map(|l| {
                    vec_heap(&l.trace_id)
                        + vec_heap(&l.span_id)
                        + alloc(l.trace_state.len())
                        + kvs_heap(&l.attributes)
                })
                .sum::<usize>()
            + span.status.as_ref().map_or(0, |s| alloc(s.message.len()))
            + clock(&span.clock_start)
            + clock(&span.clock_end)
    }

    #[tokio::test]
    async fn the_byte_estimate_tracks_the_heap_spans_take() {
        use prost::Message as _;
        let typical = {
            let mut s = sized_trace(1, 8, 0).spans.remove(0);
            s.resource = vec![
                kv("host.name", "node-12"),
                kv("k8s.pod.name", "checkout-7d9f"),
            ];
            s.events.push(clew_proto::v1::Event {
                time_unix_nano: 5,
                name: "retry".into(),
                attributes: vec![kv("attempt", "2")],
            });
            error(s)
        };
        let spans = [
            ("a bare span", sized_trace(2, 0, 0).spans.remove(0)),
            ("a typical span", typical),
            ("128 attributes", sized_trace(3, 128, 0).spans.remove(0)),
            (
                "a 16 KiB value",
                sized_trace(4, 2, 16 << 10).spans.remove(0),
            ),
        ];
        let store = MemoryStorage::new(100);
        let mut encoded = 0;
        for (what, span) in &spans {
            let (estimate, real) = (span_bytes(span) as f64, heap(span) as f64);
            assert!(
                (0.75..1.33).contains(&(estimate / real)),
                "{what}: estimated {estimate} bytes, takes {real}"
            );
            encoded += span.encoded_len() as u64;
            store
                .store_trace(Trace {
                    trace_id: span.trace_id.clone(),
                    spans: vec![span.clone()],
                })
                .await
                .unwrap();
        }
        // The store counts the estimates: more than the encoded lengths, by
        // the fixed overheads only.
        let held = store.stats().bytes;
        let want: u64 = spans.iter().map(|(_, s)| span_bytes(s)).sum();
        assert_eq!(held, want);
        assert!(
            held > encoded && held < encoded + 200 * SPAN_OVERHEAD,
            "{held} vs {encoded}"
        );
    }

    #[tokio::test]
    async fn evicts_the_oldest_trace_beyond_the_bound() {
        let store = MemoryStorage::new(2);
        for i in 1..=3u8 {
            let t = trace_id(i);
            let s = span(t, i, None, "svc", "op", u64::from(i) * 1_000, 10);
            store
                .store_trace(Trace {
                    trace_id: t.0.to_vec(),
                    spans: vec![s],
                })
                .await
                .unwrap();
        }
        assert_eq!(store.len(), 2);
        assert!(store.get_trace(trace_id(1)).await.unwrap().is_none());
        assert!(store.get_trace(trace_id(2)).await.unwrap().is_some());
        assert!(store.get_trace(trace_id(3)).await.unwrap().is_some());
        // The evicted trace's spans left the search index and the catalogue.
        let all = store.list_traces(&FilterCriteria::default()).await.unwrap();
        assert_eq!(all.len(), 2);
    }
}
