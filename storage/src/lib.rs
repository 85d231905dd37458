//! Trace storage: the [`Storage`] trait and its backends.
//!
//! - [`embedded::EmbeddedStorage`]: on disk, in process ([redb]), the default for
//!   local runs.
//! - [`redis::RedisStorage`]: a Redis server, for clusters.
//! - [`memory::MemoryStorage`]: bounded, in memory, for tests and throwaway runs.
//!
//! Every backend passes the same conformance suite (`conformance.rs`), so the
//! collector and the query API can treat them alike through `Arc<dyn Storage>`.
//!
//! Writes take a *fragment* of a trace (some of its spans) and merge it into what
//! is stored. A span is identified by (trace id, span id): storing it again is a
//! no-op counted in [`StoreOutcome::duplicates`], so a caller may always retry a
//! failed or ambiguous `store_trace`.

use std::collections::HashSet;
use std::fmt;

use async_trait::async_trait;

pub use clew_model::TraceId;
pub use clew_proto::v1::{DependencyLink, FilterCriteria, Span, SpanKind, Trace};

// First, so that its macro is in scope in the backends' test modules.
#[cfg(any(test, feature = "testing"))]
#[macro_use]
pub mod conformance;

pub mod embedded;
pub mod filter;
pub mod memory;
pub mod redis;
mod rollup;
pub use rollup::{MAX_ROLLUP_OWNER_LEN, RollupPart};
#[cfg(any(test, feature = "testing"))]
pub mod testing;

/// Boxed error source kept for logs.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result of a storage operation.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Default number of traces `list_traces` returns when the filter's limit is 0.
pub const DEFAULT_LIMIT: usize = 20;

/// Largest number of traces one `list_traces` call returns, whatever the limit.
pub const MAX_LIMIT: usize = 1_000;

/// What went wrong in a storage operation.
///
/// `Display` never shows backend internals (addresses, server messages, file
/// paths): it is safe to hand to a client. The detail is in `Debug` and in
/// [`std::error::Error::source`], for logs; [`StorageError::detail`] renders it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The fragment cannot be stored (bad ids). The message names only the
    /// caller's own input, so it is safe to show.
    #[error("invalid trace: {0}")]
    InvalidTrace(String),
    /// A roll-up part cannot be stored; the message names the field.
    #[error("invalid roll-up: {0}")]
    InvalidRollup(String),
    /// The backend failed or could not be reached. Retrying may succeed.
    #[error("storage unavailable")]
    Unavailable {
        /// Which backend failed.
        backend: &'static str,
        /// The underlying error, for logs.
        #[source]
        source: BoxError,
    },
    /// Stored data could not be decoded.
    #[error("storage unavailable")]
    Corrupt {
        /// Which backend holds the data.
        backend: &'static str,
        /// What could not be decoded, for logs.
        detail: String,
    },
}

impl StorageError {
    /// An `Unavailable` error from a backend error.
    pub fn unavailable(backend: &'static str, source: impl Into<BoxError>) -> Self {
        StorageError::Unavailable {
            backend,
            source: source.into(),
        }
    }

    /// True when the same call may succeed if retried (the backend was down or
    /// timed out). `store_trace` is idempotent, so retrying it is always safe.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StorageError::Unavailable { .. })
    }

    /// The full error chain, for logs (may contain addresses or paths).
    pub fn detail(&self) -> String {
        match self {
            StorageError::InvalidTrace(m) => format!("invalid trace: {m}"),
            StorageError::InvalidRollup(m) => format!("invalid roll-up: {m}"),
            StorageError::Unavailable { backend, source } => {
                let mut s = format!("{backend} backend unavailable: {source}");
                let mut next = source.source();
                while let Some(e) = next {
                    s.push_str(": ");
                    s.push_str(&e.to_string());
                    next = e.source();
                }
                s
            }
            StorageError::Corrupt { backend, detail } => {
                format!("{backend} backend holds undecodable data: {detail}")
            }
        }
    }
}

/// What a `store_trace` call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreOutcome {
    /// Spans newly stored.
    pub stored: u64,
    /// Spans dropped because a span with the same id was already stored for the
    /// trace (or appeared earlier in the same fragment).
    pub duplicates: u64,
}

/// A failed [`Storage::store_trace_returning`].
#[derive(Debug)]
pub struct Returned {
    /// What went wrong.
    pub error: StorageError,
    /// The fragment, for a retry; `None` only when `error` is
    /// [`StorageError::InvalidTrace`] (retrying cannot help).
    pub trace: Option<Trace>,
}

/// What a `prune_traces` call removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneStats {
    /// Traces removed.
    pub traces: u64,
    /// Spans removed with them.
    pub spans: u64,
}

/// A trace the cold tier may take: its spans, and the version of what is
/// stored that [`Storage::remove_moved`] checks.
#[derive(Debug, Clone)]
pub struct Movable {
    /// The trace as stored.
    pub trace: Trace,
    /// Changes whenever a span is added to the stored trace (opaque).
    pub version: u64,
}

/// A trace the cold tier has taken: removed from hot storage only if it
/// is still at `version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    /// The trace.
    pub trace_id: TraceId,
    /// [`Movable::version`] as it was read.
    pub version: u64,
}

/// A trace store. Object safe: the collector holds an `Arc<dyn Storage>`.
#[async_trait]
pub trait Storage: Send + Sync + fmt::Debug {
    /// Merges a fragment of a trace (some of its spans) into the store.
    ///
    /// `trace.trace_id` must be 16 bytes, not all zero; each span's `trace_id`
    /// must be empty (it is filled in) or equal to it, and its `span_id` 8 bytes,
    /// not all zero. A span whose id is already stored for the trace is dropped
    /// and counted as a duplicate. Idempotent: retrying after an error never
    /// stores a span twice.
    async fn store_trace(&self, trace: Trace) -> Result<StoreOutcome>;

    /// [`store_trace`](Self::store_trace) for a caller that retries: a
    /// failure other than [`StorageError::InvalidTrace`] hands the fragment
    /// back, so the caller need not keep a copy of every fragment it stores.
    /// The default keeps one (a clone); a backend that can do better
    /// overrides it (the memory store, which fails only on invalid input).
    async fn store_trace_returning(&self, trace: Trace) -> Result<StoreOutcome, Returned> {
        let copy = trace.clone();
        self.store_trace(trace).await.map_err(|error| {
            let trace = (!matches!(error, StorageError::InvalidTrace(_))).then_some(copy);
            Returned { error, trace }
        })
    }

    /// All stored spans of a trace, sorted by start time; `None` when none are.
    async fn get_trace(&self, trace_id: TraceId) -> Result<Option<Trace>>;

    /// Whole traces with at least one span matching every set field of the
    /// filter (Jaeger semantics), most recent matching span first, at most
    /// `filter.limit` (0: [`DEFAULT_LIMIT`]; capped at [`MAX_LIMIT`]).
    async fn list_traces(&self, filter: &FilterCriteria) -> Result<Vec<Trace>>;

    /// Names of the services that emitted stored spans, sorted.
    async fn services(&self) -> Result<Vec<String>>;

    /// Operation names (span names) of a service with their span kinds, sorted;
    /// only those of `kind` when it is `Some`.
    async fn operations(
        &self,
        service: &str,
        kind: Option<SpanKind>,
    ) -> Result<Vec<(String, SpanKind)>>;

    /// Service-to-service calls whose child span started in
    /// `[start_unix_nanos, end_unix_nanos]` (an `end` of 0 is unbounded): one link
    /// per (parent service, child service), sorted, counting each child span
    /// once and as an error when its status is ERROR.
    async fn dependencies(
        &self,
        start_unix_nanos: u64,
        end_unix_nanos: u64,
    ) -> Result<Vec<DependencyLink>>;

    /// Removes the traces whose newest span ended before `older_than_unix_nanos`,
    /// with their index entries.
    async fn prune_traces(&self, older_than_unix_nanos: u64) -> Result<PruneStats>;

    /// Up to `limit` traces whose newest span ended before
    /// `ended_before_unix_nanos`, those ended longest ago first: what the
    /// cold tier takes next.
    async fn movable(&self, ended_before_unix_nanos: u64, limit: usize) -> Result<Vec<Movable>>;

    /// Removes the traces the cold tier has durably taken, each with its
    /// index entries, but only while it is still at the version read: a
    /// trace that received a span since stays (in both tiers; reads merge
    /// them) and is taken again later. Atomic per trace against
    /// concurrent stores.
    async fn remove_moved(&self, moved: &[Moved]) -> Result<PruneStats>;

    /// Stores roll-up parts, each replacing the stored part of the same
    /// bucket and owner (atomically per part). An owner's writes must not
    /// run concurrently with each other.
    async fn put_rollups(&self, parts: &[RollupPart]) -> Result<()>;

    /// Every owner's parts of the buckets of `width_nanos` that start in
    /// `[from_unix_nanos, to_unix_nanos)`, sorted by start, then owner.
    async fn rollups(
        &self,
        width_nanos: u64,
        from_unix_nanos: u64,
        to_unix_nanos: u64,
    ) -> Result<Vec<RollupPart>>;

    /// Removes the roll-up parts of every bucket that ended at or before
    /// `ended_by_unix_nanos`; returns how many.
    async fn prune_rollups(&self, ended_by_unix_nanos: u64) -> Result<u64>;

    /// Bytes the store holds, when it can tell (for `--hot-max-bytes`).
    async fn stored_bytes(&self) -> Result<Option<u64>> {
        Ok(None)
    }

    /// Holds the lease `name` for `ttl` as `holder` (taking it when free
    /// or expired, extending it when `holder` has it); false when another
    /// holder has it. Kept in the store, so collectors sharing a store
    /// agree on one holder.
    async fn lease(&self, name: &str, holder: &str, ttl: std::time::Duration) -> Result<bool>;

    /// Short backend name for logs and metrics ("memory", "embedded", "redis").
    fn backend(&self) -> &'static str;

    /// What a store held in memory holds and has evicted, for metrics;
    /// `None` for the other backends.
    fn memory_stats(&self) -> Option<memory::MemoryStats> {
        None
    }

    /// Whether the store can take writes now, for `/readyz`: false while
    /// no master of a Redis Cluster answers for a shard; true otherwise
    /// (a store that fails a write says so on the write).
    fn ready(&self) -> bool {
        true
    }

    /// The backend's own metrics in the Prometheus text format (Redis:
    /// reconnects and, on a cluster, redirects, failovers and per-node
    /// latency); empty for the others.
    fn render_metrics(&self) -> String {
        String::new()
    }
}

/// Leases for a store only one process opens (memory, embedded).
#[derive(Debug, Default)]
pub(crate) struct LocalLeases(
    parking_lot::Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>,
);

impl LocalLeases {
    pub(crate) fn lease(&self, name: &str, holder: &str, ttl: std::time::Duration) -> bool {
        let now = std::time::Instant::now();
        let mut held = self.0.lock();
        match held.get(name) {
            Some((h, until)) if h != holder && *until > now => false,
            _ => {
                held.insert(name.to_owned(), (holder.to_owned(), now + ttl));
                true
            }
        }
    }
}

/// A validated fragment: ids checked, in-fragment duplicates removed.
#[derive(Debug)]
pub(crate) struct Fragment {
    pub trace_id: [u8; 16],
    pub spans: Vec<Span>,
    /// Spans dropped because their id appeared earlier in the same fragment.
    pub duplicates: u64,
}

/// Checks ids, fills empty span trace ids and drops in-fragment duplicates.
pub(crate) fn validate(trace: Trace) -> Result<Fragment> {
    let trace_id: [u8; 16] = trace.trace_id.as_slice().try_into().map_err(|_| {
        StorageError::InvalidTrace(format!(
            "trace id must be 16 bytes, got {}",
            trace.trace_id.len()
        ))
    })?;
    if trace_id == [0; 16] {
        return Err(StorageError::InvalidTrace("trace id is all zero".into()));
    }
    let mut spans = trace.spans;
    let mut sids = Vec::with_capacity(spans.len());
    for span in &mut spans {
        if span.trace_id.is_empty() {
            span.trace_id = trace_id.to_vec();
        } else if span.trace_id != trace_id {
            return Err(StorageError::InvalidTrace(
                "a span belongs to another trace".into(),
            ));
        }
        let sid: [u8; 8] = span.span_id.as_slice().try_into().map_err(|_| {
            StorageError::InvalidTrace(format!(
                "span id must be 8 bytes, got {}",
                span.span_id.len()
            ))
        })?;
        if sid == [0; 8] {
            return Err(StorageError::InvalidTrace("span id is all zero".into()));
        }
        if !span.parent_span_id.is_empty() && span.parent_span_id.len() != 8 {
            return Err(StorageError::InvalidTrace(format!(
                "parent span id must be empty or 8 bytes, got {}",
                span.parent_span_id.len()
            )));
        }
        sids.push(sid);
    }
    // In place: spans move only when a duplicate is removed before them.
    let keep = first_occurrences(&sids);
    let mut keep = keep.iter();
    spans.retain(|_| keep.next().copied().unwrap_or(true));
    let duplicates = (sids.len() - spans.len()) as u64;
    Ok(Fragment {
        trace_id,
        spans,
        duplicates,
    })
}

/// For each id, whether it is the first with its value.
fn first_occurrences(ids: &[[u8; 8]]) -> Vec<bool> {
    // Fragments are mostly a few spans: compare pairwise below this.
    const SMALL: usize = 32;
    if ids.len() <= SMALL {
        return ids
            .iter()
            .enumerate()
            .map(|(i, id)| !ids[..i].contains(id))
            .collect();
    }
    let mut seen =
        HashSet::with_capacity_and_hasher(ids.len(), foldhash::fast::RandomState::default());
    ids.iter().map(|id| seen.insert(*id)).collect()
}
