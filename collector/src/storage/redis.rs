//! Redis storage.
//!
//! # Layout
//!
//! Every key starts with the configured prefix `P` (default `clew:`). Trace and
//! span ids are stored as raw bytes, scores are unix nanoseconds (as Redis
//! doubles: ~256 ns resolution, which only affects ordering; matching is exact).
//!
//! | key | type | content |
//! |---|---|---|
//! | `P t:<tid>` | hash | span id → call-graph header (error flag, parent id, start, service) + protobuf `Span` |
//! | `P w:<tid>` | hash | spans whose parent has not arrived yet → their header |
//! | `P i:all` | zset | trace id, score = earliest span start |
//! | `P i:s:<svc>` | zset | trace id, score = earliest start of a span of `svc` |
//! | `P i:o:<svc>\0<op>` | zset | same, for spans of `svc` named `op` |
//! | `P i:t:<key>\0<value>` | zset | same, for spans carrying the tag (attributes and resource; short values only) |
//! | `P i:e:<svc>`, `P i:e` | zset | same, for ERROR spans (of `svc`; of any service) |
//! | `P i:d:<svc>` | zset | trace id, score = longest duration of a span of `svc` |
//! | `P i:d:\0<svc>`, `P i:d:\0` | zset | trace id, score = shortest duration of a span (of `svc`; of any service): what max-duration searches check |
//! | `P i:end` | zset | trace id, score = newest span end (what `prune_traces` walks) |
//! | `P deps` | zset | one member per call (parent svc, child svc, error, tid, child span id), score = child start |
//! | `P services` | zset | service, score = newest span end (written at most once per second of span time per process) |
//! | `P ops:<svc>` | zset | `<kind>:<operation>`, score = newest span end (likewise) |
//! | `P keys` | zset | index keys written recently, score = unix ms of the last write (for `prune_traces`) |
//!
//! # Writes
//!
//! `store_trace` hands its fragment to a batching task, which stores every
//! fragment waiting in one pipelined round trip (at most 4 batches in flight):
//! an `EVALSHA` of a small Lua
//! script, where `HSETNX` per span decides whether it is new and only new spans
//! are stored and resolve calls against the headers of the trace's other spans
//! (so a call is counted once however often its span is stored); then the index
//! writes as plain `ZADD LT` (start scores) / `ZADD GT` (durations, ends),
//! which are idempotent. A failure half-way is completed by the caller's retry,
//! and a retried fragment finds its spans present and changes nothing. (A
//! duplicate span id with *different* content is not stored, but its index
//! entries are written: searches stay exact, as they check the stored spans.)
//! Trace keys (and `deps`) get a TTL of `retention + max_trace_span` on every
//! write that adds to them; index keys get it at most once a minute per key and
//! process. So everything expires on its own if nothing prunes; `prune_traces`
//! removes expired traces' entries from the long-lived (hot) index keys.
//!
//! # Search
//!
//! The filter picks candidate indexes (operation or service, errors, each short
//! tag); the smallest one (by `ZCARD`) is walked from the window's end
//! backwards (to `max_trace_span` before its start, as scores are a trace's
//! *earliest* matching start) by a read-only Lua script that checks membership
//! in the others (and the duration index) inside Redis and returns trace ids in
//! batches. The collector then fetches those traces (`HVALS`, pipelined) and
//! checks the filter exactly, on one span, and orders them by their most recent
//! matching span. Cost: `O(log n + scanned)` per search, with `scanned` bounded
//! by [`MAX_SCANNED`]; a selective tag is usually the primary index, so
//! `scanned` stays near the limit. Candidates are walked in earliest-start
//! order, so when more traces match than the limit, a long trace may lose its
//! place to one that started later.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, ErrorKind, RedisError, RedisResult, RetryMethod, Script, ServerErrorKind};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use prost::Message as _;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::query::{self, DependencyCounter};
use super::{
    DependencyLink, FilterCriteria, PruneStats, Result, Span, SpanKind, Storage, StorageError,
    StoreOutcome, Trace, TraceId, validate,
};

const BACKEND: &str = "redis";

/// Most index entries one search walks before it returns what it found.
pub const MAX_SCANNED: usize = 100_000;

/// A max-duration search fetches every trace with a short enough span when
/// there are at most this many (else it walks an index by time).
const SHORT_CANDIDATES: usize = 2_000;

/// Index entries one call of the scan script walks (bounds how long it holds
/// Redis).
const SCAN_BATCH: usize = 5_000;

/// Traces per pruning round trip.
const PRUNE_CHUNK: usize = 256;

/// How often the TTL of a hot index key is refreshed.
const TTL_REFRESH: Duration = Duration::from_secs(60);

/// Bound on the per-process caches of refreshed index keys and catalogue entries.
const CACHE_MAX: usize = 200_000;

/// A catalogue entry (service, operation) is rewritten when its newest end
/// moved by this much span time.
const CATALOGUE_STEP_NS: u64 = 1_000_000_000;

/// Connection and retention settings of the Redis backend.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Server URL, `redis://[user:password@]host:port[/db]`.
    pub url: String,
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
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            key_prefix: "clew:".into(),
            retention: Duration::from_secs(72 * 3600),
            max_trace_span: Duration::from_secs(3600),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(5),
            retries: 2,
            retry_backoff: Duration::from_millis(50),
        }
    }
}

/// A sorted-set key and one of its members.
type KeyMember = (Vec<u8>, Vec<u8>);

/// A score and member of one `ZADD`.
type ScoredMember<'a> = (u64, &'a [u8]);

/// How a `ZADD` treats an existing member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Mode {
    /// Keep the lowest score (earliest start).
    Lt,
    /// Keep the highest score (newest end, longest duration).
    Gt,
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

/// A fragment waiting to be stored, and who waits for the result.
struct Job {
    fragment: super::Fragment,
    reply: oneshot::Sender<Result<StoreOutcome>>,
}

/// Most fragments stored by one pipeline.
const BATCH_FRAGMENTS: usize = 256;

/// Most spans stored by one pipeline (a single fragment may exceed it).
const BATCH_SPANS: usize = 4_096;

/// Batches written at once (each is one pipeline on the shared connection).
const BATCHES_IN_FLIGHT: usize = 4;

impl std::ops::Deref for RedisStorage {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

/// The connection and state shared by the storage handle and its batching
/// task.
pub struct Inner {
    conn: ConnectionManager,
    cfg: RedisConfig,
    keys: Keys,
    store_script: Script,
    scan_script: Script,
    /// Index keys whose TTL this process refreshed, and when.
    refreshed: Mutex<HashMap<Vec<u8>, Instant>>,
    /// Catalogue entries (services, operations) this process wrote, with the
    /// score written.
    catalogue: Mutex<HashMap<KeyMember, u64>>,
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
        let client = Client::open(cfg.url.as_str()).map_err(unavailable)?;
        let manager_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.connect_timeout))
            .set_response_timeout(Some(cfg.response_timeout))
            .set_number_of_retries(cfg.retries as usize)
            .set_min_delay(cfg.retry_backoff)
            .set_max_delay(cfg.retry_backoff * 16);
        let conn = ConnectionManager::new_with_config(client, manager_cfg)
            .await
            .map_err(unavailable)?;
        tracing::info!(prefix = %cfg.key_prefix, "connected to redis");
        let inner = Arc::new(Inner {
            conn,
            keys: Keys(cfg.key_prefix.as_bytes().to_vec()),
            cfg,
            store_script: Script::new(STORE_LUA),
            scan_script: Script::new(SCAN_LUA),
            refreshed: Mutex::new(HashMap::new()),
            catalogue: Mutex::new(HashMap::new()),
        });
        let (batches, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_batches(Arc::clone(&inner), rx));
        Ok(RedisStorage { inner, batches })
    }
}

/// Takes the fragments waiting, stores them as one batch, repeats; at most
/// [`BATCHES_IN_FLIGHT`] batches at once. Ends when the storage is dropped.
async fn run_batches(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Job>) {
    let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        // Whatever arrived while waiting for a slot joins the batch.
        let mut spans = first.fragment.spans.len();
        let mut jobs = vec![first];
        while jobs.len() < BATCH_FRAGMENTS && spans < BATCH_SPANS {
            match rx.try_recv() {
                Ok(job) => {
                    spans += job.fragment.spans.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let inner = Arc::clone(&inner);
        tokio::spawn(async move {
            let fragments: Vec<(&[u8; 16], &[Span])> = jobs
                .iter()
                .map(|j| (&j.fragment.trace_id, j.fragment.spans.as_slice()))
                .collect();
            let result = inner.store_batch(&fragments).await;
            drop(fragments);
            match result {
                Ok(outcomes) => {
                    for (job, out) in jobs.into_iter().zip(outcomes) {
                        let _ = job.reply.send(Ok(StoreOutcome {
                            stored: out.stored,
                            duplicates: out.duplicates + job.fragment.duplicates,
                        }));
                    }
                }
                Err(e) => {
                    let detail = e.detail();
                    for job in jobs {
                        let _ = job
                            .reply
                            .send(Err(StorageError::unavailable(BACKEND, detail.clone())));
                    }
                }
            }
            drop(permit);
        });
    }
}

impl Inner {
    fn ttl_ms(&self) -> u64 {
        (self.cfg.retention + self.cfg.max_trace_span).as_millis() as u64
    }

    fn slack_ns(&self) -> u64 {
        self.cfg.max_trace_span.as_nanos() as u64
    }

    /// Runs `op` with a connection, retrying errors that a reconnect may cure.
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

    async fn with_retry<T, F, Fut>(&self, what: &'static str, mut op: F) -> Result<T>
    where
        F: FnMut(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let mut delay = self.cfg.retry_backoff;
        let mut attempt = 0;
        loop {
            match op(self.conn.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let retryable = !matches!(e.retry_method(), RetryMethod::NoRetry);
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

    /// Index keys (of `candidates`) whose TTL is due for a refresh.
    fn due_for_ttl<'a>(&self, candidates: impl Iterator<Item = &'a [u8]>) -> Vec<Vec<u8>> {
        let now = Instant::now();
        let mut cache = self.refreshed.lock();
        if cache.len() > CACHE_MAX {
            cache.clear();
        }
        let mut due = Vec::new();
        for key in candidates {
            match cache.entry(key.to_vec()) {
                Entry::Occupied(mut e) => {
                    if now.duration_since(*e.get()) >= TTL_REFRESH {
                        e.insert(now);
                        due.push(key.to_vec());
                    }
                }
                Entry::Vacant(e) => {
                    e.insert(now);
                    due.push(key.to_vec());
                }
            }
        }
        due
    }

    /// Stores a batch of validated fragments (several may belong to one
    /// trace) in one round trip; one outcome per fragment.
    async fn store_batch(&self, fragments: &[(&[u8; 16], &[Span])]) -> Result<Vec<StoreOutcome>> {
        // Index writes, deduplicated across the batch: (key, member) -> (mode, score).
        let mut ops: HashMap<(Vec<u8>, Vec<u8>), (Mode, u64)> = HashMap::new();
        let mut add = |key: Vec<u8>, member: &[u8], mode: Mode, score: u64| {
            let e = ops.entry((key, member.to_vec())).or_insert((mode, score));
            e.1 = match mode {
                Mode::Lt => e.1.min(score),
                Mode::Gt => e.1.max(score),
            };
        };
        let k = &self.keys;
        let mut catalogue: HashMap<KeyMember, u64> = HashMap::new();
        let mut eval = ::redis::cmd("EVALSHA");
        eval.arg(self.store_script.get_hash())
            .arg(1 + 2 * fragments.len())
            .arg(k.deps());
        for (tid, _) in fragments {
            eval.arg(k.trace(&tid[..])).arg(k.orphans(&tid[..]));
        }
        eval.arg(self.ttl_ms()).arg(fragments.len());
        for (tid, spans) in fragments {
            let tid: &[u8] = &tid[..];
            eval.arg(tid).arg(spans.len());
            for span in spans.iter() {
                let start = span.start_time_unix_nano;
                let end = span.end_time_unix_nano;
                let svc = span.service.as_str();
                eval.arg(&span.span_id[..]).arg(stored_value(span));
                add(k.all(), tid, Mode::Lt, start);
                add(k.service(svc), tid, Mode::Lt, start);
                add(k.operation(svc, &span.name), tid, Mode::Lt, start);
                add(k.duration(svc), tid, Mode::Gt, query::duration(span));
                add(
                    k.min_duration(Some(svc)),
                    tid,
                    Mode::Lt,
                    query::duration(span),
                );
                add(k.min_duration(None), tid, Mode::Lt, query::duration(span));
                add(k.end(), tid, Mode::Gt, end);
                if query::is_error(span) {
                    add(k.errors(Some(svc)), tid, Mode::Lt, start);
                    add(k.errors(None), tid, Mode::Lt, start);
                }
                for (key, value) in query::indexed_tags(span) {
                    add(k.tag(key, &value), tid, Mode::Lt, start);
                }
                for entry in [
                    (k.services(), svc.as_bytes().to_vec()),
                    (k.operations(svc), op_member(span)),
                ] {
                    let e = catalogue.entry(entry).or_insert(end);
                    *e = (*e).max(end);
                }
            }
        }
        // The catalogue changes rarely: skip entries this process already wrote
        // with a score at most a step older.
        let mut written = Vec::new();
        {
            let cache = self.catalogue.lock();
            for ((key, member), end) in catalogue {
                let fresh = cache
                    .get(&(key.clone(), member.clone()))
                    .is_none_or(|done| end > done.saturating_add(CATALOGUE_STEP_NS));
                if fresh {
                    add(key.clone(), &member, Mode::Gt, end);
                    written.push((key, member, end));
                }
            }
        }
        // One round trip: the script stores the spans and records calls; the
        // index writes follow in the same pipeline. They are idempotent (`ZADD
        // LT/GT` of the same member), so a retry after a failure half-way
        // completes them and a retry of a stored fragment changes nothing.
        let mut by_key: HashMap<(&[u8], Mode), Vec<ScoredMember<'_>>> = HashMap::new();
        for ((key, member), (mode, score)) in &ops {
            by_key
                .entry((key.as_slice(), *mode))
                .or_default()
                .push((*score, member.as_slice()));
        }
        let mut pipe = ::redis::pipe();
        pipe.add_command(eval);
        for ((key, mode), members) in &by_key {
            let c = pipe.cmd("ZADD").arg(*key).arg(match mode {
                Mode::Lt => "LT",
                Mode::Gt => "GT",
            });
            for (score, member) in members {
                c.arg(*score).arg(*member);
            }
            c.ignore();
        }
        let due = self.due_for_ttl(by_key.keys().map(|(key, _)| *key));
        if !due.is_empty() {
            let ttl = self.ttl_ms();
            let now = now_ms();
            let reg = pipe.cmd("ZADD").arg(k.registry());
            for key in &due {
                reg.arg(now).arg(key);
            }
            reg.ignore();
            pipe.cmd("PEXPIRE").arg(k.registry()).arg(ttl).ignore();
            for key in &due {
                pipe.cmd("PEXPIRE").arg(key).arg(ttl).ignore();
            }
        }
        let (counts,): (Vec<u64>,) = self
            .with_retry("store_trace", |mut conn| {
                let (pipe, script) = (&pipe, &self.store_script);
                async move {
                    match pipe.query_async(&mut conn).await {
                        // Redis restarted and lost its script cache: load it and
                        // run the (idempotent) pipeline again.
                        Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                            script.load_async(&mut conn).await?;
                            pipe.query_async(&mut conn).await
                        }
                        other => other,
                    }
                }
            })
            .await?;
        if counts.len() != 2 * fragments.len() {
            return Err(corrupt("store script reply"));
        }
        if !written.is_empty() {
            let mut cache = self.catalogue.lock();
            if cache.len() > CACHE_MAX {
                cache.clear();
            }
            for (key, member, end) in written {
                let e = cache.entry((key, member)).or_insert(0);
                *e = (*e).max(end);
            }
        }
        Ok(counts
            .chunks(2)
            .map(|c| StoreOutcome {
                stored: c[0],
                duplicates: c[1],
            })
            .collect())
    }

    async fn fetch_traces(&self, tids: &[Vec<u8>]) -> Result<Vec<(Vec<u8>, Vec<Span>)>> {
        if tids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = ::redis::pipe();
        for tid in tids {
            pipe.cmd("HVALS").arg(self.keys.trace(tid));
        }
        let blobs: Vec<Vec<Vec<u8>>> = self
            .with_retry("fetch_traces", |mut conn| {
                let pipe = &pipe;
                async move { pipe.query_async(&mut conn).await }
            })
            .await?;
        let mut out = Vec::with_capacity(tids.len());
        for (tid, spans) in tids.iter().zip(blobs) {
            out.push((tid.clone(), decode_spans(spans)?));
        }
        Ok(out)
    }

    /// A search with a maximum duration that few traces meet: every trace
    /// with a short enough span (of the service) is a candidate, taken from
    /// the shortest-duration index by score, then checked exactly. `None`
    /// when there are more than [`SHORT_CANDIDATES`]: walking by time is
    /// cheaper then.
    async fn by_short_spans(&self, f: &FilterCriteria, limit: usize) -> Result<Option<Vec<Trace>>> {
        let svc = (!f.service.is_empty()).then_some(f.service.as_str());
        let key = self.keys.min_duration(svc);
        let max = f.max_duration_nanos;
        let tids: Vec<Vec<u8>> = self
            .with_retry("list_traces", |mut conn| {
                let key = &key;
                async move {
                    ::redis::cmd("ZRANGEBYSCORE")
                        .arg(key)
                        .arg("-inf")
                        .arg(max)
                        .arg("LIMIT")
                        .arg(0)
                        .arg(SHORT_CANDIDATES + 1)
                        .query_async(&mut conn)
                        .await
                }
            })
            .await?;
        if tids.len() > SHORT_CANDIDATES {
            return Ok(None);
        }
        let mut found: Vec<(u64, Trace)> = Vec::new();
        for chunk in tids.chunks(256) {
            keep_matches(&mut found, self.fetch_traces(chunk).await?, f);
        }
        Ok(Some(newest_first(found, limit)))
    }

    /// Picks the candidate indexes of a filter: (primary, others).
    async fn plan(&self, f: &FilterCriteria) -> Result<(Vec<u8>, Vec<Vec<u8>>)> {
        let k = &self.keys;
        let mut cands = Vec::new();
        if !f.service.is_empty() {
            if f.operation.is_empty() {
                cands.push(k.service(&f.service));
            } else {
                cands.push(k.operation(&f.service, &f.operation));
            }
            if f.errors_only {
                cands.push(k.errors(Some(&f.service)));
            }
        } else if f.errors_only {
            cands.push(k.errors(None));
        }
        let mut tags: Vec<(&String, &String)> = f.tags.iter().collect();
        tags.sort();
        for (key, value) in tags {
            if query::indexable_tag(key, value) {
                cands.push(k.tag(key, value));
            }
        }
        if cands.is_empty() {
            return Ok((k.all(), Vec::new()));
        }
        if cands.len() > 1 {
            let mut pipe = ::redis::pipe();
            for c in &cands {
                pipe.cmd("ZCARD").arg(c);
            }
            let sizes: Vec<u64> = self
                .with_retry("list_traces", |mut conn| {
                    let pipe = &pipe;
                    async move { pipe.query_async(&mut conn).await }
                })
                .await?;
            let smallest = sizes
                .iter()
                .enumerate()
                .min_by_key(|(_, n)| **n)
                .map_or(0, |(i, _)| i);
            let primary = cands.swap_remove(smallest);
            return Ok((primary, cands));
        }
        let primary = cands.swap_remove(0);
        Ok((primary, cands))
    }
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
        let key = self.keys.trace(&trace_id.0);
        let blobs: Vec<Vec<u8>> = self
            .with_retry("get_trace", |mut conn| {
                let key = &key;
                async move { ::redis::cmd("HVALS").arg(key).query_async(&mut conn).await }
            })
            .await?;
        if blobs.is_empty() {
            return Ok(None);
        }
        let mut spans = decode_spans(blobs)?;
        query::sort_spans(&mut spans);
        Ok(Some(Trace {
            trace_id: trace_id.0.to_vec(),
            spans,
        }))
    }

    async fn list_traces(&self, f: &FilterCriteria) -> Result<Vec<Trace>> {
        let limit = query::effective_limit(f);
        let lo = f.start_time_min_unix_nano;
        let hi = match f.start_time_max_unix_nano {
            0 => u64::MAX,
            t => t,
        };
        if lo > hi {
            return Ok(Vec::new());
        }
        if f.max_duration_nanos > 0
            && let Some(found) = self.by_short_spans(f, limit).await?
        {
            return Ok(found);
        }
        let (primary, others) = self.plan(f).await?;
        // Scores are a trace's earliest matching start: a trace whose matching
        // span is in the window may have started up to `max_trace_span` earlier.
        let max = if hi == u64::MAX {
            "+inf".to_string()
        } else {
            hi.to_string()
        };
        let min = if lo == 0 {
            "-inf".to_string()
        } else {
            lo.saturating_sub(self.slack_ns()).to_string()
        };
        // (index, lowest score, highest score) the trace must be in.
        let mut checks: Vec<(Vec<u8>, String, String)> = others
            .into_iter()
            .map(|k| (k, String::new(), String::new()))
            .collect();
        if !f.service.is_empty() && f.min_duration_nanos > 0 {
            checks.push((
                self.keys.duration(&f.service),
                f.min_duration_nanos.to_string(),
                String::new(),
            ));
        }
        if f.max_duration_nanos > 0 {
            // The trace's shortest span (of the service) must be short enough.
            let svc = (!f.service.is_empty()).then_some(f.service.as_str());
            checks.push((
                self.keys.min_duration(svc),
                String::new(),
                f.max_duration_nanos.to_string(),
            ));
        }

        let mut found: Vec<(u64, Trace)> = Vec::new();
        // Concurrent writes can shift offsets and show a trace twice.
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        let mut offset = 0u64;
        let mut scanned = 0usize;
        loop {
            let want = limit - found.len();
            let mut inv = self.scan_script.prepare_invoke();
            inv.key(&primary)
                .arg(&max)
                .arg(&min)
                .arg(offset)
                .arg(SCAN_BATCH)
                .arg(want)
                .arg(checks.len());
            for (key, min_score, max_score) in &checks {
                inv.arg(key).arg(min_score).arg(max_score);
            }
            let (next, exhausted, tids): (u64, u8, Vec<Vec<u8>>) = self
                .with_retry("list_traces", |mut conn| {
                    let inv = &inv;
                    async move { inv.invoke_async(&mut conn).await }
                })
                .await?;
            scanned += (next - offset) as usize;
            offset = next;
            let tids: Vec<Vec<u8>> = tids
                .into_iter()
                .filter(|t| seen.insert(t.clone()))
                .collect();
            keep_matches(&mut found, self.fetch_traces(&tids).await?, f);
            if found.len() >= limit || exhausted == 1 {
                break;
            }
            if scanned >= MAX_SCANNED {
                tracing::debug!(scanned, found = found.len(), "search scan budget spent");
                break;
            }
        }
        Ok(newest_first(found, limit))
    }

    async fn services(&self) -> Result<Vec<String>> {
        let mut names = self.members("services", self.keys.services()).await?;
        names.sort();
        Ok(names)
    }

    async fn operations(
        &self,
        service: &str,
        kind: Option<SpanKind>,
    ) -> Result<Vec<(String, SpanKind)>> {
        let members = self
            .members("operations", self.keys.operations(service))
            .await?;
        let mut out: Vec<(String, SpanKind)> = members
            .iter()
            .filter_map(|m| {
                let (k, name) = m.split_once(':')?;
                let k = SpanKind::try_from(k.parse::<i32>().ok()?).unwrap_or(SpanKind::Unspecified);
                Some((name.to_owned(), k))
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
        const PAGE: usize = 10_000;
        let key = self.keys.deps();
        let max = match end_unix_nanos {
            0 => "+inf".to_string(),
            t => t.to_string(),
        };
        let mut counter = DependencyCounter::default();
        let mut offset = 0;
        loop {
            let page: Vec<Vec<u8>> = self
                .with_retry("dependencies", |mut conn| {
                    let (key, max) = (&key, &max);
                    async move {
                        ::redis::cmd("ZRANGEBYSCORE")
                            .arg(key)
                            .arg(start_unix_nanos)
                            .arg(max)
                            .arg("LIMIT")
                            .arg(offset)
                            .arg(PAGE)
                            .query_async(&mut conn)
                            .await
                    }
                })
                .await?;
            for member in &page {
                match parse_dep_member(member) {
                    Some((parent, child, error)) => counter.add(parent, child, error),
                    None => tracing::warn!("skipping an undecodable dependency entry"),
                }
            }
            if page.len() < PAGE {
                break;
            }
            offset += PAGE;
        }
        Ok(counter.finish())
    }

    async fn prune_traces(&self, older_than_unix_nanos: u64) -> Result<PruneStats> {
        let k = &self.keys;
        let cut = format!("({older_than_unix_nanos}");
        let mut stats = PruneStats::default();
        loop {
            let end_key = k.end();
            let tids: Vec<Vec<u8>> = self
                .with_retry("prune_traces", |mut conn| {
                    let (end_key, cut) = (&end_key, &cut);
                    async move {
                        ::redis::cmd("ZRANGEBYSCORE")
                            .arg(end_key)
                            .arg("-inf")
                            .arg(cut)
                            .arg("LIMIT")
                            .arg(0)
                            .arg(PRUNE_CHUNK)
                            .query_async(&mut conn)
                            .await
                    }
                })
                .await?;
            if tids.is_empty() {
                break;
            }
            let traces = self.fetch_traces(&tids).await?;
            let mut pipe = ::redis::pipe();
            for (tid, spans) in &traces {
                let mut keys: HashSet<Vec<u8>> = HashSet::new();
                keys.insert(k.all());
                keys.insert(k.errors(None));
                keys.insert(k.min_duration(None));
                for span in spans {
                    let svc = span.service.as_str();
                    keys.insert(k.service(svc));
                    keys.insert(k.operation(svc, &span.name));
                    keys.insert(k.duration(svc));
                    keys.insert(k.min_duration(Some(svc)));
                    keys.insert(k.errors(Some(svc)));
                    for (key, value) in query::indexed_tags(span) {
                        keys.insert(k.tag(key, &value));
                    }
                }
                for key in keys {
                    pipe.cmd("ZREM").arg(key).arg(tid).ignore();
                }
                let edges = query::edges(spans.iter());
                if !edges.is_empty() {
                    let mut cmd = ::redis::cmd("ZREM");
                    cmd.arg(k.deps());
                    for e in &edges {
                        cmd.arg(dep_member(&e.parent, &e.child, e.error, tid, &e.child_span));
                    }
                    pipe.add_command(cmd).ignore();
                }
                pipe.cmd("DEL")
                    .arg(k.trace(tid))
                    .arg(k.orphans(tid))
                    .ignore();
                pipe.cmd("ZREM").arg(k.end()).arg(tid).ignore();
                stats.traces += 1;
                stats.spans += spans.len() as u64;
            }
            self.with_retry("prune_traces", |mut conn| {
                let pipe = &pipe;
                async move { pipe.query_async::<()>(&mut conn).await }
            })
            .await?;
        }
        self.sweep(older_than_unix_nanos).await?;
        if stats.traces > 0 {
            tracing::info!(traces = stats.traces, spans = stats.spans, "pruned traces");
        }
        Ok(stats)
    }

    fn backend(&self) -> &'static str {
        BACKEND
    }
}

impl Inner {
    /// Drops catalogue entries older than the cut, and index entries older than
    /// the cut by more than `max_trace_span` (left behind by traces that expired
    /// through their TTL before they could be pruned).
    async fn sweep(&self, cut_ns: u64) -> Result<()> {
        let k = &self.keys;
        let cut = format!("({cut_ns}");
        let stale = format!("({}", cut_ns.saturating_sub(self.slack_ns()));
        let (services, registered): (Vec<String>, Vec<Vec<u8>>) = self
            .with_retry("prune_traces", |mut conn| {
                let (sk, rk) = (k.services(), k.registry());
                async move {
                    ::redis::pipe()
                        .cmd("ZRANGE")
                        .arg(sk)
                        .arg(0)
                        .arg(-1)
                        .cmd("ZRANGE")
                        .arg(rk)
                        .arg(0)
                        .arg(-1)
                        .query_async(&mut conn)
                        .await
                }
            })
            .await?;
        let mut cmds: Vec<::redis::Cmd> = Vec::new();
        let mut zrem_range = |key: Vec<u8>, max: &str| {
            let mut c = ::redis::cmd("ZREMRANGEBYSCORE");
            c.arg(key).arg("-inf").arg(max);
            cmds.push(c);
        };
        zrem_range(k.services(), &cut);
        for svc in &services {
            zrem_range(k.operations(svc), &cut);
        }
        zrem_range(k.deps(), &stale);
        for key in registered {
            // Duration indexes are scored by duration, not time.
            if !k.is_duration(&key) {
                zrem_range(key, &stale);
            }
        }
        let forgotten = now_ms().saturating_sub(self.ttl_ms());
        zrem_range(k.registry(), &format!("({forgotten}"));
        for chunk in cmds.chunks(1_000) {
            let mut pipe = ::redis::pipe();
            for c in chunk {
                pipe.add_command(c.clone()).ignore();
            }
            self.with_retry("prune_traces", |mut conn| {
                let pipe = &pipe;
                async move { pipe.query_async::<()>(&mut conn).await }
            })
            .await?;
        }
        Ok(())
    }
}

/// Adds the fetched traces that match the filter, with the start of their
/// most recent matching span.
fn keep_matches(
    found: &mut Vec<(u64, Trace)>,
    fetched: Vec<(Vec<u8>, Vec<Span>)>,
    f: &FilterCriteria,
) {
    for (tid, mut spans) in fetched {
        if let Some(at) = query::best_match(&spans, f) {
            query::sort_spans(&mut spans);
            found.push((
                at,
                Trace {
                    trace_id: tid,
                    spans,
                },
            ));
        }
    }
}

/// The `limit` traces with the most recent matching spans, newest first.
fn newest_first(mut found: Vec<(u64, Trace)>, limit: usize) -> Vec<Trace> {
    found.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.trace_id.cmp(&a.1.trace_id)));
    found.truncate(limit);
    found.into_iter().map(|(_, t)| t).collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn decode_spans(values: Vec<Vec<u8>>) -> Result<Vec<Span>> {
    values
        .into_iter()
        .map(|v| {
            let header = match v.as_slice() {
                [hi, lo, ..] => 2 + (usize::from(*hi) << 8 | usize::from(*lo)),
                _ => return Err(corrupt("span value too short")),
            };
            let body = v.get(header..).ok_or_else(|| corrupt("span header"))?;
            Span::decode(body).map_err(|e| corrupt(format!("span: {e}")))
        })
        .collect()
}

/// A span as stored in the trace hash: header length (2 bytes, big-endian),
/// header, protobuf. The header is what the store script reads to find calls:
/// error flag (`0`/`1`), parent id (8 bytes, zero for a root), start (20
/// decimal digits), service.
fn stored_value(span: &Span) -> Vec<u8> {
    // Service names are cut to what a 16-bit length can carry.
    let svc = &span.service.as_bytes()[..span.service.len().min(u16::MAX as usize - 29)];
    let header = 29 + svc.len();
    let mut v = Vec::with_capacity(2 + header + span.encoded_len());
    v.extend_from_slice(&(header as u16).to_be_bytes());
    v.push(if query::is_error(span) { b'1' } else { b'0' });
    v.extend_from_slice(&query::parent_id(span).unwrap_or([0; 8]));
    v.extend_from_slice(format!("{:020}", span.start_time_unix_nano).as_bytes());
    v.extend_from_slice(svc);
    span.encode(&mut v).ok();
    v
}

/// A `deps` member: the store script builds the same bytes.
fn dep_member(parent: &str, child: &str, error: bool, tid: &[u8], child_span: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(parent.len() + child.len() + 27);
    m.extend_from_slice(parent.as_bytes());
    m.push(0);
    m.extend_from_slice(child.as_bytes());
    m.push(0);
    m.push(if error { b'1' } else { b'0' });
    m.extend_from_slice(tid);
    m.extend_from_slice(child_span);
    m
}

fn parse_dep_member(m: &[u8]) -> Option<(&str, &str, bool)> {
    let n = m.len().checked_sub(26)?;
    if m[n] != 0 {
        return None;
    }
    let error = m[n + 1] == b'1';
    let names = std::str::from_utf8(&m[..n]).ok()?;
    let (parent, child) = names.split_once('\0')?;
    Some((parent, child, error))
}

fn op_member(span: &Span) -> Vec<u8> {
    format!("{}:{}", span.kind, span.name).into_bytes()
}

/// Key names under the configured prefix.
#[derive(Debug, Clone)]
struct Keys(Vec<u8>);

impl Keys {
    fn key(&self, parts: &[&[u8]]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.0.len() + parts.iter().map(|p| p.len()).sum::<usize>());
        k.extend_from_slice(&self.0);
        for p in parts {
            k.extend_from_slice(p);
        }
        k
    }
    fn trace(&self, tid: &[u8]) -> Vec<u8> {
        self.key(&[b"t:", tid])
    }
    fn orphans(&self, tid: &[u8]) -> Vec<u8> {
        self.key(&[b"w:", tid])
    }
    fn deps(&self) -> Vec<u8> {
        self.key(&[b"deps"])
    }
    fn all(&self) -> Vec<u8> {
        self.key(&[b"i:all"])
    }
    fn end(&self) -> Vec<u8> {
        self.key(&[b"i:end"])
    }
    fn service(&self, svc: &str) -> Vec<u8> {
        self.key(&[b"i:s:", svc.as_bytes()])
    }
    fn operation(&self, svc: &str, op: &str) -> Vec<u8> {
        self.key(&[b"i:o:", svc.as_bytes(), b"\0", op.as_bytes()])
    }
    fn tag(&self, key: &str, value: &str) -> Vec<u8> {
        self.key(&[b"i:t:", key.as_bytes(), b"\0", value.as_bytes()])
    }
    fn errors(&self, svc: Option<&str>) -> Vec<u8> {
        match svc {
            Some(svc) => self.key(&[b"i:e:", svc.as_bytes()]),
            None => self.key(&[b"i:e"]),
        }
    }
    fn duration(&self, svc: &str) -> Vec<u8> {
        self.key(&[b"i:d:", svc.as_bytes()])
    }
    /// Shortest span duration per trace (of `svc`; of any service). Under
    /// `i:d:` with a NUL, so that it sorts with the other duration indexes
    /// and cannot meet a service name.
    fn min_duration(&self, svc: Option<&str>) -> Vec<u8> {
        self.key(&[b"i:d:\0", svc.unwrap_or("").as_bytes()])
    }
    fn is_duration(&self, key: &[u8]) -> bool {
        key.strip_prefix(self.0.as_slice())
            .is_some_and(|rest| rest.starts_with(b"i:d:"))
    }
    fn services(&self) -> Vec<u8> {
        self.key(&[b"services"])
    }
    fn operations(&self, svc: &str) -> Vec<u8> {
        self.key(&[b"ops:", svc.as_bytes()])
    }
    fn registry(&self) -> Vec<u8> {
        self.key(&[b"keys"])
    }
}

/// Stores a batch of fragments. See the module docs.
///
/// KEYS: deps zset, then per fragment its trace hash and orphans hash.
/// ARGV: ttl ms, number of fragments m, then per fragment: trace id, n,
/// n × (span id, stored value).
/// Returns {stored, duplicates} per fragment, flattened.
const STORE_LUA: &str = r#"
local dkey = KEYS[1]
local ttl = ARGV[1]
local m = tonumber(ARGV[2])
local p = 3
local root = string.rep('\0', 8)
local function header(v)
  return string.sub(v, 3, 2 + string.byte(v, 1) * 256 + string.byte(v, 2))
end
local result = {}
local calls = 0
for f = 1, m do
  local tkey, wkey = KEYS[2 * f], KEYS[2 * f + 1]
  local tid = ARGV[p]
  local n = tonumber(ARGV[p + 1])
  p = p + 2
  local infos = {}
  local stored = 0
  for i = 0, n - 1 do
    local sid, value = ARGV[p], ARGV[p + 1]
    p = p + 2
    if redis.call('HSETNX', tkey, sid, value) == 1 then
      stored = stored + 1
      infos[sid] = header(value)
    end
  end
  local function edge(pinfo, csid, cinfo)
    local psvc, csvc = string.sub(pinfo, 30), string.sub(cinfo, 30)
    if psvc ~= csvc then
      calls = calls + 1
      redis.call('ZADD', dkey, string.sub(cinfo, 10, 29),
        psvc .. '\0' .. csvc .. '\0' .. string.sub(cinfo, 1, 1) .. tid .. csid)
    end
  end
  if stored > 0 then
    for sid, info in pairs(infos) do
      local parent = string.sub(info, 2, 9)
      if parent ~= root then
        local pinfo = infos[parent]
        if not pinfo then
          local pvalue = redis.call('HGET', tkey, parent)
          if pvalue then
            pinfo = header(pvalue)
          end
        end
        if pinfo then
          edge(pinfo, sid, info)
        else
          redis.call('HSET', wkey, sid, info)
        end
      end
    end
    local waiting = redis.call('HGETALL', wkey)
    for j = 1, #waiting, 2 do
      local csid, cinfo = waiting[j], waiting[j + 1]
      local pinfo = infos[string.sub(cinfo, 2, 9)]
      if pinfo then
        edge(pinfo, csid, cinfo)
        redis.call('HDEL', wkey, csid)
      end
    end
    if #waiting > 0 then
      redis.call('PEXPIRE', wkey, ttl)
    end
    redis.call('PEXPIRE', tkey, ttl)
  end
  result[2 * f - 1] = stored
  result[2 * f] = n - stored
end
if calls > 0 then
  redis.call('PEXPIRE', dkey, ttl)
end
return result
"#;

/// Walks an index newest first, keeping the trace ids present in every other
/// index (with a score within the given bounds, when they are given).
///
/// KEYS: the primary index.
/// ARGV: max score, min score, offset, budget, wanted, c,
/// c × (index, lowest score or "", highest score or "").
/// Returns {next offset, exhausted (0/1), trace ids}.
const SCAN_LUA: &str = r#"
local max, min = ARGV[1], ARGV[2]
local off, budget, want = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local c = tonumber(ARGV[6])
local checks = {}
for j = 1, c do
  checks[j] = {ARGV[4 + 3 * j], tonumber(ARGV[5 + 3 * j]), tonumber(ARGV[6 + 3 * j])}
end
local out, found, scanned, done = {}, 0, 0, 0
while scanned < budget and found < want do
  local chunk = math.min(256, budget - scanned)
  local page = redis.call('ZREVRANGEBYSCORE', KEYS[1], max, min, 'LIMIT', off, chunk)
  for j = 1, #page do
    local tid = page[j]
    off = off + 1
    scanned = scanned + 1
    local ok = true
    for _, check in ipairs(checks) do
      local score = redis.call('ZSCORE', check[1], tid)
      if not score or (check[2] and tonumber(score) < check[2])
          or (check[3] and tonumber(score) > check[3]) then
        ok = false
        break
      end
    end
    if ok then
      found = found + 1
      out[found] = tid
      if found >= want then
        break
      end
    end
  end
  if found < want and #page < chunk then
    done = 1
    break
  end
end
return {off, done, out}
"#;

#[cfg(test)]
mod tests;
