//! A bounded in-memory store, for tests and throwaway runs. Nothing survives
//! a restart.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use foldhash::HashMap;
use parking_lot::Mutex;

use super::query::{self, DependencyCounter};
use super::{
    DependencyLink, FilterCriteria, PruneStats, Result, Returned, Span, SpanKind, Storage,
    StoreOutcome, Trace, TraceId, validate,
};

/// Default bound on the number of traces kept.
pub const DEFAULT_MAX_TRACES: usize = 10_000;

/// In-memory storage holding at most `max_traces` traces: storing a new trace
/// beyond that evicts the oldest (the one whose newest span ended first).
#[derive(Debug)]
pub struct MemoryStorage {
    max_traces: usize,
    inner: Mutex<Inner>,
}

/// operation -> kind -> number of stored spans (keyed by name first, so
/// that a span is counted and uncounted without allocating).
type Operations = HashMap<String, HashMap<i32, u64>>;

#[derive(Debug, Default)]
struct Inner {
    traces: HashMap<[u8; 16], Entry>,
    /// (newest span end, trace): eviction and pruning order.
    by_end: BTreeSet<(u64, [u8; 16])>,
    /// (span start, trace, span) -> what a search can rule out without
    /// looking the span up: search order.
    by_start: BTreeMap<(u64, [u8; 16], [u8; 8]), Brief>,
    /// service -> operation -> kind -> number of stored spans (hashed:
    /// looked up for every span stored; sorted when queried).
    operations: HashMap<String, Operations>,
}

/// A span's service (hashed), duration and error flag, kept in the search
/// index so that a search skips most spans without two hash lookups each.
#[derive(Debug, Clone, Copy)]
struct Brief {
    service: u64,
    duration: u64,
    error: bool,
}

impl Brief {
    fn of(span: &Span) -> Self {
        Brief {
            service: service_hash(&span.service),
            duration: query::duration(span),
            error: query::is_error(span),
        }
    }

    /// False when the span certainly does not match (`service` is the
    /// filter's hashed service, if it has one).
    fn may_match(&self, f: &FilterCriteria, service: Option<u64>) -> bool {
        service.is_none_or(|h| h == self.service)
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

#[derive(Debug, Default)]
struct Entry {
    spans: HashMap<[u8; 8], Span>,
    newest_end: u64,
}

impl MemoryStorage {
    /// A store keeping at most `max_traces` traces (at least 1).
    pub fn new(max_traces: usize) -> Self {
        MemoryStorage {
            max_traces: max_traces.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Number of traces held.
    pub fn len(&self) -> usize {
        self.inner.lock().traces.len()
    }

    /// True when no trace is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for MemoryStorage {
    fn default() -> Self {
        MemoryStorage::new(DEFAULT_MAX_TRACES)
    }
}

impl Inner {
    fn remove_trace(&mut self, tid: &[u8; 16]) -> u64 {
        let Some(entry) = self.traces.remove(tid) else {
            return 0;
        };
        self.by_end.remove(&(entry.newest_end, *tid));
        for (sid, span) in &entry.spans {
            self.by_start
                .remove(&(span.start_time_unix_nano, *tid, *sid));
            if let Some(ops) = self.operations.get_mut(&span.service) {
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
                if ops.is_empty() {
                    self.operations.remove(&span.service);
                }
            }
        }
        entry.spans.len() as u64
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
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        let entry = inner.traces.entry(tid).or_default();
        entry.spans.reserve(fragment.spans.len());
        let old_end = entry.newest_end;
        let was_new = entry.spans.is_empty();
        for span in fragment.spans {
            let sid = query::span_id(&span);
            if entry.spans.contains_key(&sid) {
                outcome.duplicates += 1;
                continue;
            }
            outcome.stored += 1;
            entry.newest_end = entry.newest_end.max(span.end_time_unix_nano);
            inner
                .by_start
                .insert((span.start_time_unix_nano, tid, sid), Brief::of(&span));
            // Counted without allocating when the service and operation are
            // known (nearly always).
            let ops = match inner.operations.get_mut(&span.service) {
                Some(ops) => ops,
                None => inner.operations.entry(span.service.clone()).or_default(),
            };
            let kinds = match ops.get_mut(&span.name) {
                Some(kinds) => kinds,
                None => ops.entry(span.name.clone()).or_default(),
            };
            *kinds.entry(span.kind).or_insert(0) += 1;
            entry.spans.insert(sid, span);
        }
        let new_end = entry.newest_end;
        let empty = entry.spans.is_empty();
        if empty {
            // An empty fragment for an unknown trace leaves nothing behind.
            inner.traces.remove(&tid);
            return Ok(outcome);
        }
        if !was_new {
            inner.by_end.remove(&(old_end, tid));
        }
        inner.by_end.insert((new_end, tid));
        while inner.traces.len() > self.max_traces {
            let Some(&(_, oldest)) = inner.by_end.first() else {
                break;
            };
            inner.remove_trace(&oldest);
        }
        Ok(outcome)
    }

    async fn get_trace(&self, trace_id: TraceId) -> Result<Option<Trace>> {
        let inner = self.inner.lock();
        Ok(inner
            .traces
            .get(&trace_id.0)
            .map(|e| to_trace(trace_id.0, e)))
    }

    async fn list_traces(&self, filter: &FilterCriteria) -> Result<Vec<Trace>> {
        let limit = query::effective_limit(filter);
        let inner = self.inner.lock();
        let lo = filter.start_time_min_unix_nano;
        let hi = match filter.start_time_max_unix_nano {
            0 => u64::MAX,
            t => t,
        };
        if lo > hi {
            return Ok(Vec::new());
        }
        let service = (!filter.service.is_empty()).then(|| service_hash(&filter.service));
        let mut found: Vec<[u8; 16]> = Vec::new();
        for (&(_, tid, sid), brief) in inner
            .by_start
            .range((lo, [0; 16], [0; 8])..=(hi, [0xff; 16], [0xff; 8]))
            .rev()
        {
            if found.len() >= limit {
                break;
            }
            if !brief.may_match(filter, service) || found.contains(&tid) {
                continue;
            }
            let matched = inner
                .traces
                .get(&tid)
                .and_then(|e| e.spans.get(&sid))
                .is_some_and(|s| query::span_matches(s, filter));
            if matched {
                found.push(tid);
            }
        }
        Ok(found
            .iter()
            .filter_map(|tid| inner.traces.get(tid).map(|e| to_trace(*tid, e)))
            .collect())
    }

    async fn services(&self) -> Result<Vec<String>> {
        let mut services: Vec<String> = self.inner.lock().operations.keys().cloned().collect();
        services.sort();
        Ok(services)
    }

    async fn operations(
        &self,
        service: &str,
        kind: Option<SpanKind>,
    ) -> Result<Vec<(String, SpanKind)>> {
        let inner = self.inner.lock();
        let Some(ops) = inner.operations.get(service) else {
            return Ok(Vec::new());
        };
        let mut out: Vec<(String, SpanKind)> = ops
            .iter()
            .flat_map(|(name, kinds)| kinds.keys().map(move |k| (name, *k)))
            .map(|(name, k)| {
                (
                    name.clone(),
                    SpanKind::try_from(k).unwrap_or(SpanKind::Unspecified),
                )
            })
            .filter(|(_, k)| kind.is_none_or(|want| want == *k))
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    async fn dependencies(
        &self,
        start_unix_nanos: u64,
        end_unix_nanos: u64,
    ) -> Result<Vec<DependencyLink>> {
        let inner = self.inner.lock();
        let mut counter = DependencyCounter::default();
        for entry in inner.traces.values() {
            for edge in query::edges(entry.spans.values()) {
                if query::in_window(edge.child_start, start_unix_nanos, end_unix_nanos) {
                    counter.add(&edge.parent, &edge.child, edge.error);
                }
            }
        }
        Ok(counter.finish())
    }

    async fn prune_traces(&self, older_than_unix_nanos: u64) -> Result<PruneStats> {
        let mut inner = self.inner.lock();
        let old: Vec<[u8; 16]> = inner
            .by_end
            .range(..(older_than_unix_nanos, [0; 16]))
            .map(|&(_, tid)| tid)
            .collect();
        let mut stats = PruneStats::default();
        for tid in old {
            stats.spans += inner.remove_trace(&tid);
            stats.traces += 1;
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
}

fn to_trace(tid: [u8; 16], entry: &Entry) -> Trace {
    let mut spans: Vec<Span> = entry.spans.values().cloned().collect();
    query::sort_spans(&mut spans);
    Trace {
        trace_id: tid.to_vec(),
        spans,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::storage::conformance::{Fixture, span, trace_id};

    async fn fixture() -> Fixture {
        Fixture::new(Arc::new(MemoryStorage::new(1_000)))
    }

    conformance_tests!(fixture);

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
