//! Redis storage.
//!
//! # Layout
//!
//! Every key starts with the configured prefix `P` (default `clew:`). On a
//! Redis Cluster the prefix is followed by a hash tag: a shard's tag
//! (`{k.j}`, see `keys.rs`) for a trace's keys and its shard's indexes, and
//! `{clew}` for the catalogue (`services`, `ops:`, `keys`, `lease:`,
//! `layout`, the roll-ups' `ru`); on one server there is one shard and no tag. Trace and
//! span ids are stored as raw bytes, scores are unix nanoseconds (as Redis
//! doubles: ~256 ns resolution, which only affects ordering; matching is exact).
//!
//! | key | type | content |
//! |---|---|---|
//! | `P tr:<tid>` | string | the trace: its facts (length-prefixed; per service the longest and shortest span duration, and the shortest of any service: what duration searches check), then its spans, a record each: span id, header (error flag, parent id, start, service: what resolves calls), protobuf `Span`; see `trace_blob`. Fragments are appended |
//! | `P w:<tid>` | hash | spans whose parent has not arrived yet → their header |
//! | `P i:all` | zset | trace id, score = earliest span start (also what `prune_traces` walks) |
//! | `P i:s:<svc>` | zset | trace id, score = earliest start of a span of `svc` |
//! | `P i:o:<svc>\0<op>` | zset | same, for spans of `svc` named `op` |
//! | `P i:t:<key>\0<value>` | zset | same, for spans carrying the tag (attributes and resource; short values only) |
//! | `P i:e:<svc>`, `P i:e` | zset | same, for ERROR spans (of `svc`; of any service) |
//! | `P i:m:<b>:<svc>` | zset | trace id, score = earliest start of a span of `svc`, for traces whose shortest span of `svc` is in duration bucket `b` (three digits: a quarter octave, see `bucket`): what max-duration searches fetch when few spans are that short |
//! | `P deps` | zset | one member per call (parent svc, child svc, error, tid, child span id), score = child start |
//! | `P services` | zset | service, score = newest span end (written at most once per second of span time per process) |
//! | `P ops:<svc>` | zset | `<kind>:<operation>`, score = newest span end (likewise) |
//! | `P keys` | zset | index keys written recently, score = unix ms of the last write (for `prune_traces`) |
//! | `P lease:<name>` | string | the holder of a lease (the cold tier's one mover), with a TTL |
//! | `P ru:<width>:<start>` | hash | a roll-up bucket: owner (a collector) → through (8 bytes) ‖ its encoded part (`rollup.rs`) |
//! | `P ru:<width>` | zset | the starts of the stored roll-up buckets of a width (8 bytes big-endian, score 0: ranged `BYLEX`) |
//! | `P ru-widths` | set | the widths that have roll-up buckets |
//! | `P layout` | string | cluster only: `shards=<S>`, the shard count every collector of the deployment uses (written once, `SET NX`) |
//!
//! Every index is scored by time (so all are walked by time and swept by
//! score, and inserts land near the end of the sorted sets); durations live
//! in the per-trace facts, which searches check, and in the coarse `i:m:`
//! buckets. A trace is one key (plus `w:` while calls wait for a parent).
//!
//! # Writes
//!
//! `store_trace` hands its fragment to a batching task, which stores every
//! fragment waiting in one pipelined round trip per shard, the catalogue's
//! writes in one more (on one server, in the same; at most 4 batches in
//! flight; with `wait_replicas`, each shard's pipeline ends with `WAIT`):
//! an `EVALSHA` of a small Lua script, then the index writes as one `ZADD
//! LT` (start scores; `ZADD GT` for the catalogue's ends) per index key with
//! every trace of the batch, which are idempotent. The collector reduces each
//! fragment to one row per index it belongs to (not one per span), and
//! prepares it as stored (facts, then span records with their headers), the
//! calls inside it and the spans whose parent is not in it. The script
//! stores a fragment that starts a trace (the usual case: assembly hands over
//! whole traces) with one `SET NX` whatever its size (which also decides that
//! the trace is new), and the calls of the whole batch with one `ZADD`. A
//! fragment of a known trace takes the general path: the stored trace's span
//! ids decide which spans are new; only those are appended and resolve calls
//! against the headers of the trace's other spans (so a call is counted once
//! however often its span is stored); facts are merged (max / min; a change
//! rewrites the trace key). A failure half-way is completed by the caller's retry,
//! and a retried fragment finds its spans present and changes nothing. (A
//! duplicate span id with *different* content is not stored, but its index
//! entries and facts are written: searches stay exact, as they check the
//! stored spans.) Trace keys (and `deps`) get a TTL of `retention +
//! max_trace_span` on every write that adds to them; index keys get it at
//! most once a minute per key and process. So everything expires on its own
//! if nothing prunes; `prune_traces` removes expired traces' entries from the
//! long-lived (hot) index keys.
//!
//! # Search
//!
//! The filter picks candidate indexes (operation or service, errors, each short
//! tag); the smallest one (by `ZCARD`) is walked from the window's end
//! backwards (to `max_trace_span` before its start, as scores are a trace's
//! *earliest* matching start) by a read-only Lua script that checks membership
//! in the others and the duration facts inside Redis and returns trace ids in
//! batches. The collector then fetches those traces (`HVALS`, pipelined) and
//! checks the filter exactly, on one span, and orders them by their most recent
//! matching span. Cost: `O(log n + scanned)` per search, with `scanned` bounded
//! by [`MAX_SCANNED`]; a selective tag is usually the primary index, so
//! `scanned` stays near the limit. Candidates are walked in earliest-start
//! order, so when more traces match than the limit, a long trace may lose its
//! place to one that started later.
//!
//! # Files
//!
//! `keys.rs` the key layout above (shards and hash tags); `conn.rs` the
//! connection (one server or a cluster) and the shard count's agreement;
//! `cluster.rs` the metrics and the watch over a cluster; `summary.rs` what a fragment adds to the
//! indexes; `blob.rs` the trace key's format; `write.rs` the batching task
//! and the store pipeline, with `store.lua`; `search.rs` the reads, with
//! `scan.lua`; `prune.rs` pruning; `tiering.rs` what the cold tier needs
//! (traces it may take, their guarded removal with `remove.lua`, the lease
//! with `lease.lua`). `facts.lua` is the part both scripts
//! share (each script is it followed by its own file).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::sync::atomic::{AtomicBool, Ordering};

use ::redis::{RedisError, RedisResult, RetryMethod, Script};
use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use super::{
    DependencyLink, FilterCriteria, Movable, Moved, PruneStats, Result, RollupPart, Span, SpanKind,
    Storage, StorageError, StoreOutcome, Trace, TraceId, validate,
};
use cluster::RedisMetrics;
use conn::Conn;
use keys::{KeyMember, Keys};
use write::Job;

mod blob;
mod cluster;
mod conn;
mod keys;
mod prune;
mod rollup;
mod search;
mod summary;
mod tiering;
mod write;

pub use search::MAX_SCANNED;

const BACKEND: &str = "redis";

/// Shards of a new deployment on a Redis Cluster: enough to spread over a
/// few dozen masters, few enough that a search's fan-out stays cheap.
pub const DEFAULT_SHARDS: usize = 16;

/// Connection and retention settings of the Redis backend.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Server URL, `redis://[user:password@]host:port[/db]`; with
    /// `cluster`, a comma-separated list of seed nodes.
    pub url: String,
    /// The URL names a Redis Cluster's seed nodes.
    pub cluster: bool,
    /// With a cluster: how many shards the keys are split into, when this
    /// deployment (key prefix) is new; an existing one keeps the count
    /// recorded in its `layout` key.
    pub shards: usize,
    /// After each write, `WAIT` for this many replicas to acknowledge it
    /// before it counts as stored (0: do not wait).
    pub wait_replicas: u32,
    /// Prefix of every key, so that several deployments can share a server.
    pub key_prefix: String,
    /// How long traces are kept: every key expires this long (plus
    /// `max_trace_span`) after its last write, even if `prune_traces` never runs.
    pub retention: Duration,
    /// The longest a trace is expected to last from first to last span. Searches
    /// look this far past the end of their time window (index scores are the
    /// newest start), and pruning sweeps index entries older than the cut by
    /// this much.
    pub max_trace_span: Duration,
    /// Time allowed to (re)connect.
    pub connect_timeout: Duration,
    /// Time allowed for one reply.
    pub response_timeout: Duration,
    /// How many times a failed call is retried (after reconnecting) before the
    /// error is returned.
    pub retries: u32,
    /// Delay before the first retry; doubled for each further one.
    pub retry_backoff: Duration,
    /// TLS (with a `rediss://` URL): the CA to verify the server by, and a
    /// client certificate for servers that require one.
    pub tls: Option<RedisTls>,
    /// ACL user (Redis 6+), instead of one in the URL.
    pub username: Option<String>,
    /// Its password (or the `requirepass` password without a user),
    /// instead of one in the URL.
    pub password: Option<String>,
}

/// TLS towards Redis.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// PEM CA certificates the server's certificate chains to (else the
    /// system's trust store).
    pub ca: Option<std::path::PathBuf>,
    /// PEM client certificate and key, for `tls-auth-clients yes`.
    pub client: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            cluster: false,
            shards: DEFAULT_SHARDS,
            wait_replicas: 0,
            key_prefix: "clew:".into(),
            retention: Duration::from_secs(72 * 3600),
            max_trace_span: Duration::from_secs(3600),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(5),
            retries: 2,
            retry_backoff: Duration::from_millis(50),
            tls: None,
            username: None,
            password: None,
        }
    }
}

/// Stores traces in Redis. Cheap to share: clone the `Arc` holding it.
///
/// Writes go through one batching task: the fragments waiting when it looks
/// are stored by one pipeline (one script call for all of them, one `ZADD`
/// per index key with every trace in the batch), so Redis runs a few large
/// commands instead of ~20 small ones per fragment.
pub struct RedisStorage {
    inner: Arc<Inner>,
    batches: mpsc::UnboundedSender<Job>,
}

impl std::ops::Deref for RedisStorage {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

/// The connection and state shared by the storage handle and its batching
/// task.
pub struct Inner {
    conn: Conn,
    cfg: RedisConfig,
    keys: Keys,
    store_script: Script,
    scan_script: Script,
    remove_script: Script,
    lease_script: Script,
    /// Index keys whose TTL this process refreshed, and when.
    refreshed: Mutex<HashMap<Vec<u8>, Instant>>,
    /// Catalogue entries (services, operations) this process wrote, with the
    /// score written.
    catalogue: Mutex<HashMap<KeyMember, u64>>,
    metrics: RedisMetrics,
    /// Whether a master answers for every shard (always, on one server).
    ready: AtomicBool,
}

impl fmt::Debug for RedisStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStorage")
            .field("key_prefix", &self.cfg.key_prefix)
            .field("retention", &self.cfg.retention)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: RedisError) -> StorageError {
    StorageError::unavailable(BACKEND, e)
}

fn corrupt(detail: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        backend: BACKEND,
        detail: detail.into(),
    }
}

impl RedisStorage {
    /// Connects to Redis. Fails when the server cannot be reached within the
    /// connect timeout (after the configured retries). Once connected, a lost
    /// connection is re-established in the background.
    pub async fn connect(cfg: RedisConfig) -> Result<Self> {
        let conn = conn::connect(&cfg).await?;
        let shards = match cfg.cluster {
            true => Some(conn::agree_shards(&conn, &cfg.key_prefix, cfg.shards).await?),
            false => None,
        };
        tracing::info!(prefix = %cfg.key_prefix, cluster = cfg.cluster, ?shards, "connected to redis");
        let inner = Arc::new(Inner {
            conn,
            keys: Keys::new(&cfg.key_prefix, shards),
            cfg,
            store_script: Script::new(write::STORE_LUA),
            scan_script: Script::new(search::SCAN_LUA),
            remove_script: Script::new(tiering::REMOVE_LUA),
            lease_script: Script::new(tiering::LEASE_LUA),
            refreshed: Mutex::new(HashMap::new()),
            catalogue: Mutex::new(HashMap::new()),
            metrics: RedisMetrics::new(),
            ready: AtomicBool::new(true),
        });
        if inner.cfg.cluster {
            tokio::spawn(cluster::watch(Arc::downgrade(&inner)));
        }
        let (batches, rx) = mpsc::unbounded_channel();
        tokio::spawn(write::run_batches(Arc::clone(&inner), rx));
        Ok(RedisStorage { inner, batches })
    }
}

impl Inner {
    fn ttl_ms(&self) -> u64 {
        (self.cfg.retention + self.cfg.max_trace_span).as_millis() as u64
    }

    fn slack_ns(&self) -> u64 {
        self.cfg.max_trace_span.as_nanos() as u64
    }

    /// Every member of the sorted set `key`.
    async fn members(&self, what: &'static str, key: Vec<u8>) -> Result<Vec<String>> {
        self.with_retry(what, |mut conn| {
            let key = &key;
            async move {
                ::redis::cmd("ZRANGE")
                    .arg(key)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut conn)
                    .await
            }
        })
        .await
    }

    /// Runs `op` with a connection, retrying errors that a reconnect may cure.
    async fn with_retry<T, F, Fut>(&self, what: &'static str, mut op: F) -> Result<T>
    where
        F: FnMut(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let mut delay = self.cfg.retry_backoff;
        let mut attempt = 0;
        loop {
            match op(self.conn.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let retryable = !matches!(e.retry_method(), RetryMethod::NoRetry);
                    if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                        self.metrics.reconnects.inc();
                    }
                    if !retryable || attempt >= self.cfg.retries {
                        tracing::warn!(op = what, error = %e, attempt, "redis call failed");
                        return Err(unavailable(e));
                    }
                    tracing::debug!(op = what, error = %e, attempt, "redis call failed, retrying");
                    attempt += 1;
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[async_trait]
impl Storage for RedisStorage {
    async fn store_trace(&self, trace: Trace) -> Result<StoreOutcome> {
        let fragment = validate(trace)?;
        if fragment.spans.is_empty() {
            return Ok(StoreOutcome {
                stored: 0,
                duplicates: fragment.duplicates,
            });
        }
        let (reply, rx) = oneshot::channel();
        self.batches
            .send(Job { fragment, reply })
            .map_err(|_| StorageError::unavailable(BACKEND, "batch writer stopped"))?;
        rx.await
            .map_err(|_| StorageError::unavailable(BACKEND, "batch writer stopped"))?
    }

    async fn get_trace(&self, trace_id: TraceId) -> Result<Option<Trace>> {
        self.inner.read_trace(trace_id).await
    }

    async fn list_traces(&self, f: &FilterCriteria) -> Result<Vec<Trace>> {
        self.inner.search(f).await
    }

    async fn services(&self) -> Result<Vec<String>> {
        self.inner.list_services().await
    }

    async fn operations(
        &self,
        service: &str,
        kind: Option<SpanKind>,
    ) -> Result<Vec<(String, SpanKind)>> {
        self.inner.list_operations(service, kind).await
    }

    async fn dependencies(
        &self,
        start_unix_nanos: u64,
        end_unix_nanos: u64,
    ) -> Result<Vec<DependencyLink>> {
        self.inner
            .dependency_links(start_unix_nanos, end_unix_nanos)
            .await
    }

    async fn prune_traces(&self, older_than_unix_nanos: u64) -> Result<PruneStats> {
        self.inner.prune(older_than_unix_nanos).await
    }

    async fn movable(&self, ended_before_unix_nanos: u64, limit: usize) -> Result<Vec<Movable>> {
        self.inner.movable(ended_before_unix_nanos, limit).await
    }

    async fn remove_moved(&self, moved: &[Moved]) -> Result<PruneStats> {
        self.inner.remove_moved(moved).await
    }

    async fn stored_bytes(&self) -> Result<Option<u64>> {
        self.inner.used_memory().await.map(Some)
    }

    async fn lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        self.inner.lease(name, holder, ttl).await
    }

    async fn put_rollups(&self, parts: &[RollupPart]) -> Result<()> {
        crate::rollup::validate_all(parts)?;
        self.inner.put_rollup_parts(parts).await
    }

    async fn rollups(&self, width: u64, from: u64, to: u64) -> Result<Vec<RollupPart>> {
        self.inner.rollup_parts(width, from, to).await
    }

    async fn prune_rollups(&self, ended_by_unix_nanos: u64) -> Result<u64> {
        self.inner.prune_rollup_parts(ended_by_unix_nanos).await
    }

    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn ready(&self) -> bool {
        self.inner.ready.load(Ordering::Relaxed)
    }

    fn render_metrics(&self) -> String {
        self.inner.metrics.render()
    }
}

#[cfg(test)]
mod cluster_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tls_tests;
