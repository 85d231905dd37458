//! Hot storage and the cold tier as one [`Storage`]: writes go hot; every
//! read covers both, merging a trace split across them (by span id) and
//! ordering searches across them, so the query API and the UI see no
//! difference but speed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use clew_storage::filter::{self, DependencyCounter};
use clew_storage::{
    DependencyLink, FilterCriteria, Movable, Moved, PruneStats, Result, RollupPart, Span, SpanKind,
    Storage, StorageError, StoreOutcome, Trace, TraceId,
};

use crate::ColdError;
use crate::read::ColdStore;

/// Hot storage in front of a cold tier.
#[derive(Debug, Clone)]
pub struct Tiered {
    hot: Arc<dyn Storage>,
    cold: Arc<ColdStore>,
    /// Spans that ended longer ago than this may belong to a trace already
    /// moved cold: a store of them is checked against the cold tier.
    hot_retention: Duration,
    /// Held (shared) by a store of late spans from its check of the cold
    /// tier to its hot write, and (exclusive) by the mover from listing a
    /// block to removing its traces from hot storage: a late duplicate is
    /// seen in one tier or the other, never missed in both.
    moving: Arc<tokio::sync::RwLock<()>>,
}

pub(crate) fn cold_error(e: ColdError) -> StorageError {
    StorageError::unavailable("cold", e)
}

/// Now, in nanoseconds since the Unix epoch.
pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl Tiered {
    /// `hot` in front of `cold`; traces move after `hot_retention`.
    pub fn new(hot: Arc<dyn Storage>, cold: Arc<ColdStore>, hot_retention: Duration) -> Self {
        Tiered {
            hot,
            cold,
            hot_retention,
            moving: Arc::default(),
        }
    }

    /// Excludes stores of late spans while the mover lists a block and
    /// removes its traces from hot storage.
    pub(crate) async fn exclusive(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.moving.write().await
    }

    /// The hot store.
    pub fn hot(&self) -> &Arc<dyn Storage> {
        &self.hot
    }

    /// The cold tier.
    pub fn cold(&self) -> &Arc<ColdStore> {
        &self.cold
    }

    /// Whether `trace` has a span old enough for its trace to have moved.
    fn is_late(&self, trace: &Trace) -> bool {
        let cut = now_nanos()
            .saturating_sub(u64::try_from(self.hot_retention.as_nanos()).unwrap_or(u64::MAX));
        trace.spans.iter().any(|s| s.end_time_unix_nano < cut)
    }

    /// Drops the spans of a late fragment that the cold tier already holds
    /// (counted as duplicates, as hot storage counts its own).
    async fn without_cold_spans(&self, mut trace: Trace) -> Result<(Trace, u64)> {
        let Ok(id) = <[u8; 16]>::try_from(trace.trace_id.as_slice()) else {
            return Ok((trace, 0));
        };
        if self.cold.blocks().is_empty() {
            return Ok((trace, 0));
        }
        let cold = self.cold.trace_spans(&id).await.map_err(cold_error)?;
        if cold.is_empty() {
            return Ok((trace, 0));
        }
        let held: HashSet<&Vec<u8>> = cold.iter().map(|c| &c.span_id).collect();
        let before = trace.spans.len();
        trace.spans.retain(|s| !held.contains(&s.span_id));
        let dropped = (before - trace.spans.len()) as u64;
        Ok((trace, dropped))
    }

    /// Stores a late fragment: its spans the cold tier holds are
    /// duplicates, the rest go hot.
    async fn store_late(&self, trace: Trace) -> Result<StoreOutcome> {
        let _shared = self.moving.read().await;
        let (trace, cold_dups) = self.without_cold_spans(trace).await?;
        let mut out = if trace.spans.is_empty() && cold_dups > 0 {
            StoreOutcome::default()
        } else {
            self.hot.store_trace(trace).await?
        };
        out.duplicates += cold_dups;
        Ok(out)
    }
}

/// Most traces whose split calls one dependencies query resolves.
const MAX_DANGLING_TRACES: usize = 10_000;

impl Tiered {
    /// Counts the calls of cold children whose parent is in another block
    /// or in hot storage (a trace split across blocks or tiers).
    async fn resolve_dangling(
        &self,
        dangling: Vec<Span>,
        counter: &mut DependencyCounter,
    ) -> Result<()> {
        let mut by_trace: HashMap<Vec<u8>, Vec<Span>> = HashMap::new();
        for s in dangling {
            by_trace.entry(s.trace_id.clone()).or_default().push(s);
        }
        if by_trace.len() > MAX_DANGLING_TRACES {
            tracing::warn!(
                traces = by_trace.len(),
                "dependencies: too many traces split across cold blocks; counting the first {MAX_DANGLING_TRACES}"
            );
        }
        for (tid, children) in by_trace.into_iter().take(MAX_DANGLING_TRACES) {
            let Some(id) = TraceId::from_slice(&tid) else {
                continue;
            };
            let Some(whole) = self.get_trace(id).await? else {
                continue;
            };
            for child in children {
                let parent = whole
                    .spans
                    .iter()
                    .find(|p| p.span_id == child.parent_span_id);
                if let Some(p) = parent.filter(|p| p.service != child.service) {
                    counter.add(&p.service, &child.service, filter::is_error(&child));
                }
            }
        }
        Ok(())
    }
}

/// `a` and `b`'s spans, each span id once, sorted by start.
fn merge(mut a: Vec<Span>, b: Vec<Span>) -> Vec<Span> {
    let known: HashSet<Vec<u8>> = a.iter().map(|s| s.span_id.clone()).collect();
    a.extend(b.into_iter().filter(|s| !known.contains(&s.span_id)));
    filter::sort_spans(&mut a);
    a
}

#[async_trait]
impl Storage for Tiered {
    async fn store_trace(&self, trace: Trace) -> Result<StoreOutcome> {
        if self.is_late(&trace) {
            return self.store_late(trace).await;
        }
        self.hot.store_trace(trace).await
    }

    async fn get_trace(&self, trace_id: TraceId) -> Result<Option<Trace>> {
        let hot = self.hot.get_trace(trace_id).await?;
        let cold = self
            .cold
            .trace_spans(&trace_id.0)
            .await
            .map_err(cold_error)?;
        if cold.is_empty() {
            return Ok(hot);
        }
        let hot_spans = hot.map(|t| t.spans).unwrap_or_default();
        Ok(Some(Trace {
            trace_id: trace_id.0.to_vec(),
            spans: merge(hot_spans, cold),
        }))
    }

    async fn list_traces(&self, f: &FilterCriteria) -> Result<Vec<Trace>> {
        let limit = filter::effective_limit(f);
        let mut best: HashMap<[u8; 16], u64> =
            self.cold.search_top(f, limit).await.map_err(cold_error)?;
        let hot = self.hot.list_traces(f).await?;
        for t in &hot {
            if let (Ok(id), Some(b)) = (
                <[u8; 16]>::try_from(t.trace_id.as_slice()),
                filter::best_match(&t.spans, f),
            ) {
                let e = best.entry(id).or_insert(b);
                *e = (*e).max(b);
            }
        }
        let mut ranked: Vec<([u8; 16], u64)> = best.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
        ranked.truncate(limit);
        let mut hot_by_id: HashMap<Vec<u8>, Trace> =
            hot.into_iter().map(|t| (t.trace_id.clone(), t)).collect();
        let mut out = Vec::with_capacity(ranked.len());
        for (id, _) in ranked {
            let cold = self.cold.trace_spans(&id).await.map_err(cold_error)?;
            let hot = match hot_by_id.remove(id.as_slice()) {
                Some(t) => t.spans,
                None => self
                    .hot
                    .get_trace(TraceId(id))
                    .await?
                    .map(|t| t.spans)
                    .unwrap_or_default(),
            };
            out.push(Trace {
                trace_id: id.to_vec(),
                spans: merge(hot, cold),
            });
        }
        Ok(out)
    }

    async fn services(&self) -> Result<Vec<String>> {
        let mut all = self.hot.services().await?;
        all.extend(self.cold.services());
        all.sort();
        all.dedup();
        Ok(all)
    }

    async fn operations(
        &self,
        service: &str,
        kind: Option<SpanKind>,
    ) -> Result<Vec<(String, SpanKind)>> {
        let mut all = self.hot.operations(service, kind).await?;
        all.extend(self.cold.operations(service, kind));
        Ok(filter::sorted_operations(all))
    }

    async fn dependencies(&self, start: u64, end: u64) -> Result<Vec<DependencyLink>> {
        let hot = self.hot.dependencies(start, end).await?;
        let cold = self
            .cold
            .dependencies(start, end)
            .await
            .map_err(cold_error)?;
        let mut counter = cold.calls;
        for link in hot {
            counter.add_many(&link.parent, &link.child, link.call_count, link.error_count);
        }
        self.resolve_dangling(cold.dangling, &mut counter).await?;
        Ok(counter.finish())
    }

    /// Prunes hot storage and deletes the cold blocks that ended before
    /// the cut.
    async fn prune_traces(&self, older_than_unix_nanos: u64) -> Result<PruneStats> {
        let expired: Vec<_> = self
            .cold
            .blocks()
            .values()
            .filter(|b| b.meta.max_end_unix_nano < older_than_unix_nanos)
            .map(|b| (b.meta.traces, b.meta.spans))
            .collect();
        let mut stats = self.hot.prune_traces(older_than_unix_nanos).await?;
        self.cold
            .expire(older_than_unix_nanos)
            .await
            .map_err(cold_error)?;
        for (traces, spans) in expired {
            stats.traces += traces;
            stats.spans += spans;
        }
        Ok(stats)
    }

    async fn movable(&self, ended_before_unix_nanos: u64, limit: usize) -> Result<Vec<Movable>> {
        self.hot.movable(ended_before_unix_nanos, limit).await
    }

    async fn remove_moved(&self, moved: &[Moved]) -> Result<PruneStats> {
        self.hot.remove_moved(moved).await
    }

    async fn stored_bytes(&self) -> Result<Option<u64>> {
        self.hot.stored_bytes().await
    }

    async fn lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        self.hot.lease(name, holder, ttl).await
    }

    /// Roll-ups stay in hot storage: they are small, and pruned by retention.
    async fn put_rollups(&self, parts: &[RollupPart]) -> Result<()> {
        self.hot.put_rollups(parts).await
    }

    async fn rollups(&self, width: u64, from: u64, to: u64) -> Result<Vec<RollupPart>> {
        self.hot.rollups(width, from, to).await
    }

    async fn prune_rollups(&self, ended_by_unix_nanos: u64) -> Result<u64> {
        self.hot.prune_rollups(ended_by_unix_nanos).await
    }

    fn backend(&self) -> &'static str {
        self.hot.backend()
    }

    fn memory_stats(&self) -> Option<clew_storage::memory::MemoryStats> {
        self.hot.memory_stats()
    }

    fn ready(&self) -> bool {
        self.hot.ready()
    }

    fn render_metrics(&self) -> String {
        self.hot.render_metrics()
    }
}
