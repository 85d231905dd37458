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
    DependencyLink, FilterCriteria, Movable, Moved, PruneStats, Result, Returned, RollupPart, Span,
    SpanKind, Storage, StoreOutcome, Trace, TraceId, validate,
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
    leases: crate::LocalLeases,
    rollups: crate::rollup::LocalRollups,
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
            leases: crate::LocalLeases::default(),
            rollups: crate::rollup::LocalRollups::default(),
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
        let old = (!was_new).then_some((old_end, old_start));
        self.reindex(tid, old, (new_end, new_start));
        self.evict(bounds, evicted);
    }

    /// Files a trace under its (newest end, newest start), moving it from
    /// `old` (`None` for a new trace) when they changed.
    fn reindex(
        &mut self,
        tid: [u8; 16],
        old: Option<(u64, u64)>,
        (new_end, new_start): (u64, u64),
    ) {
        let Some((old_end, old_start)) = old else {
            self.by_end.insert((new_end, tid));
            self.by_start.insert((new_start, tid));
            return;
        };
        if new_end != old_end {
            self.by_end.remove(&(old_end, tid));
            self.by_end.insert((new_end, tid));
        }
        if new_start != old_start {
            self.by_start.remove(&(old_start, tid));
            self.by_start.insert((new_start, tid));
        }
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

    async fn movable(&self, ended_before_unix_nanos: u64, limit: usize) -> Result<Vec<Movable>> {
        let mut found: Vec<(u64, Movable)> = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for &(end, tid) in shard
                .by_end
                .range(..(ended_before_unix_nanos, [0; 16]))
                .take(limit)
            {
                if let Some(entry) = shard.traces.get(&tid) {
                    let trace = to_trace(tid, entry);
                    let version = entry.spans.len() as u64;
                    found.push((end, Movable { trace, version }));
                }
            }
        }
        found.sort_by_key(|(end, m)| (*end, m.trace.trace_id.clone()));
        Ok(found.into_iter().take(limit).map(|(_, m)| m).collect())
    }

    async fn remove_moved(&self, moved: &[Moved]) -> Result<PruneStats> {
        let mut stats = PruneStats::default();
        for m in moved {
            let tid = m.trace_id.0;
            let mut shard = self.shard(&tid).lock();
            let current = shard.traces.get(&tid).map(|e| e.spans.len() as u64);
            if current == Some(m.version)
                && let Some(entry) = shard.remove_trace(&tid)
            {
                stats.traces += 1;
                stats.spans += entry.spans.len() as u64;
            }
        }
        Ok(stats)
    }

    async fn stored_bytes(&self) -> Result<Option<u64>> {
        Ok(Some(self.stats().bytes))
    }

    async fn lease(&self, name: &str, holder: &str, ttl: std::time::Duration) -> Result<bool> {
        Ok(self.leases.lease(name, holder, ttl))
    }

    async fn put_rollups(&self, parts: &[RollupPart]) -> Result<()> {
        self.rollups.put(parts)
    }

    async fn rollups(&self, width: u64, from: u64, to: u64) -> Result<Vec<RollupPart>> {
        Ok(self.rollups.range(width, from, to))
    }

    async fn prune_rollups(&self, ended_by_unix_nanos: u64) -> Result<u64> {
        Ok(self.rollups.prune(ended_by_unix_nanos))
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
mod tests;
