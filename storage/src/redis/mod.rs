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
//!
//! Every index is scored by time (so all are walked by time and swept by
//! score, and inserts land near the end of the sorted sets); durations live
//! in the per-trace facts, which searches check, and in the coarse `i:m:`
//! buckets. A trace is one key (plus `w:` while calls wait for a parent).
//!
//! # Writes
//!
//! `store_trace` hands its fragment to a batching task, which stores every
//! fragment waiting in one pipelined round trip (at most 4 batches in flight):
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

use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, ErrorKind, RedisError, RedisResult, RetryMethod, Script, ServerErrorKind};
use std::sync::Arc;

use async_trait::async_trait;
use clew_proto::v1::{AnyValue, any_value};
use parking_lot::Mutex;
use prost::Message as _;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{
    DependencyLink, FilterCriteria, PruneStats, Result, Span, SpanKind, Storage, StorageError,
    StoreOutcome, Trace, TraceId, validate,
};
use crate::filter::{self, DependencyCounter};

const BACKEND: &str = "redis";

/// Most index entries one search walks before it returns what it found.
pub const MAX_SCANNED: usize = 100_000;

/// A max-duration search fetches every trace whose shortest span is in a
/// bucket up to the maximum's when there are at most this many (else it walks
/// an index by time).
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
        let k = &self.keys;
        // Index writes, one `ZADD` per key and mode with every trace of the batch.
        let mut by_key: HashMap<(Vec<u8>, Mode), Vec<ScoredMember<'_>>> = HashMap::new();
        let mut catalogue: HashMap<KeyMember, u64> = HashMap::new();
        let mut eval = ::redis::cmd("EVALSHA");
        eval.arg(self.store_script.get_hash())
            .arg(1 + 2 * fragments.len())
            .arg(k.deps());
        for (tid, _) in fragments {
            eval.arg(k.trace(&tid[..])).arg(k.orphans(&tid[..]));
        }
        eval.arg(self.ttl_ms()).arg(fragments.len());
        for &(tid, spans) in fragments {
            let tid: &[u8] = &tid[..];
            let summary = Summary::of(spans);
            for (key, mode, score) in summary.index_entries(k) {
                by_key.entry((key, mode)).or_default().push((score, tid));
            }
            for (svc, end) in summary.services.iter().map(|s| (s.name, s.end)) {
                let e = catalogue
                    .entry((k.services(), svc.as_bytes().to_vec()))
                    .or_insert(end);
                *e = (*e).max(end);
            }
            for ((svc, name), op) in &summary.ops {
                for &(kind, end) in &op.kinds {
                    let e = catalogue
                        .entry((k.operations(svc), op_member(kind, name)))
                        .or_insert(end);
                    *e = (*e).max(end);
                }
            }
            let (calls, orphans) = calls(tid, spans);
            eval.arg(tid)
                .arg(spans.len())
                .arg(calls.len())
                .arg(orphans.len())
                .arg(trace_blob(&summary, spans));
            for (score, member) in &calls {
                eval.arg(*score).arg(member);
            }
            for i in &orphans {
                eval.arg(*i);
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
                    written.push((key, member, end));
                }
            }
        }
        for (key, member, end) in &written {
            by_key
                .entry((key.clone(), Mode::Gt))
                .or_default()
                .push((*end, member.as_slice()));
        }
        // One round trip: the script stores the spans and records calls; the
        // index writes follow in the same pipeline. They are idempotent (`ZADD
        // LT/GT` of the same member), so a retry after a failure half-way
        // completes them and a retry of a stored fragment changes nothing.
        let mut pipe = ::redis::pipe();
        pipe.add_command(eval);
        for ((key, mode), members) in &by_key {
            let c = pipe.cmd("ZADD").arg(key).arg(match mode {
                Mode::Lt => "LT",
                Mode::Gt => "GT",
            });
            for (score, member) in members {
                c.arg(*score).arg(*member);
            }
            c.ignore();
        }
        let due = self.due_for_ttl(by_key.keys().map(|(key, _)| key.as_slice()));
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
            pipe.cmd("GET").arg(self.keys.trace(tid));
        }
        let blobs: Vec<Option<Vec<u8>>> = self
            .with_retry("fetch_traces", |mut conn| {
                let pipe = &pipe;
                async move { pipe.query_async(&mut conn).await }
            })
            .await?;
        let mut out = Vec::with_capacity(tids.len());
        for (tid, blob) in tids.iter().zip(blobs) {
            out.push((
                tid.clone(),
                decode_spans(blob.as_deref().unwrap_or_default())?,
            ));
        }
        Ok(out)
    }

    /// A search with a maximum duration that few traces meet: every trace
    /// whose shortest span (of the service) is in a duration bucket up to
    /// the maximum's is a candidate, checked exactly. `None` when there are
    /// more than [`SHORT_CANDIDATES`]: walking by time is cheaper then.
    async fn by_short_spans(&self, f: &FilterCriteria, limit: usize) -> Result<Option<Vec<Trace>>> {
        let services = if f.service.is_empty() {
            self.members("list_traces", self.keys.services()).await?
        } else {
            vec![f.service.clone()]
        };
        // Every span at most `max` long is in a bucket up to max's.
        let top = bucket(f.max_duration_nanos);
        let keys: Vec<Vec<u8>> = services
            .iter()
            .flat_map(|svc| (0..=top).map(|b| self.keys.short(svc, b)))
            .collect();
        let mut pipe = ::redis::pipe();
        for key in &keys {
            pipe.cmd("ZCARD").arg(key);
        }
        let sizes: Vec<u64> = self
            .with_retry("list_traces", |mut conn| {
                let pipe = &pipe;
                async move { pipe.query_async(&mut conn).await }
            })
            .await?;
        match sizes.iter().sum::<u64>() {
            0 => return Ok(Some(Vec::new())),
            n if n > SHORT_CANDIDATES as u64 => return Ok(None),
            _ => {}
        }
        let mut pipe = ::redis::pipe();
        for (key, _) in keys.iter().zip(&sizes).filter(|(_, n)| **n > 0) {
            pipe.cmd("ZRANGE").arg(key).arg(0).arg(-1);
        }
        let lists: Vec<Vec<Vec<u8>>> = self
            .with_retry("list_traces", |mut conn| {
                let pipe = &pipe;
                async move { pipe.query_async(&mut conn).await }
            })
            .await?;
        let mut seen = HashSet::new();
        let tids: Vec<Vec<u8>> = lists
            .into_iter()
            .flatten()
            .filter(|t| seen.insert(t.clone()))
            .collect();
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
            if filter::indexable_tag(key, value) {
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
        let blob: Option<Vec<u8>> = self
            .with_retry("get_trace", |mut conn| {
                let key = &key;
                async move { ::redis::cmd("GET").arg(key).query_async(&mut conn).await }
            })
            .await?;
        let Some(blob) = blob else {
            return Ok(None);
        };
        let mut spans = decode_spans(&blob)?;
        if spans.is_empty() {
            return Ok(None);
        }
        filter::sort_spans(&mut spans);
        Ok(Some(Trace {
            trace_id: trace_id.0.to_vec(),
            spans,
        }))
    }

    async fn list_traces(&self, f: &FilterCriteria) -> Result<Vec<Trace>> {
        let limit = filter::effective_limit(f);
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
        // (kind, index or fact, lowest score, highest score) the trace must meet:
        // `z`, a member of the index; `h`, a fact of the trace.
        let mut checks: Vec<(&str, Vec<u8>, String, String)> = others
            .into_iter()
            .map(|k| ("z", k, String::new(), String::new()))
            .collect();
        if !f.service.is_empty() && f.min_duration_nanos > 0 {
            // The trace's longest span of the service must be long enough.
            checks.push((
                "h",
                fact(FACT_MAX, &f.service),
                f.min_duration_nanos.to_string(),
                String::new(),
            ));
        }
        if f.max_duration_nanos > 0 {
            // The trace's shortest span (of the service) must be short enough.
            checks.push((
                "h",
                fact(FACT_MIN, &f.service),
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
                .arg(checks.len())
                .arg(self.keys.trace(b""));
            for (kind, name, min_score, max_score) in &checks {
                inv.arg(*kind).arg(name).arg(min_score).arg(max_score);
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
        // Traces that started before the cut but end after it stay, first in
        // `i:all`: the walk skips them.
        let mut kept = 0usize;
        loop {
            let all = k.all();
            let tids: Vec<Vec<u8>> = self
                .with_retry("prune_traces", |mut conn| {
                    let (all, cut) = (&all, &cut);
                    async move {
                        ::redis::cmd("ZRANGEBYSCORE")
                            .arg(all)
                            .arg("-inf")
                            .arg(cut)
                            .arg("LIMIT")
                            .arg(kept)
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
            let mut removed = 0;
            for (tid, spans) in &traces {
                if spans
                    .iter()
                    .any(|s| s.end_time_unix_nano >= older_than_unix_nanos)
                {
                    kept += 1;
                    continue;
                }
                // Each index the trace is in (`i:all` even when its spans
                // expired).
                for (key, _, _) in Summary::of(spans).index_entries(k) {
                    pipe.cmd("ZREM").arg(key).arg(tid).ignore();
                }
                let edges = filter::edges(spans.iter());
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
                stats.traces += 1;
                stats.spans += spans.len() as u64;
                removed += 1;
            }
            if removed > 0 {
                self.with_retry("prune_traces", |mut conn| {
                    let pipe = &pipe;
                    async move { pipe.query_async::<()>(&mut conn).await }
                })
                .await?;
            }
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
            zrem_range(key, &stale);
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
        if let Some(at) = filter::best_match(&spans, f) {
            filter::sort_spans(&mut spans);
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

/// The spans of a stored trace (see [`trace_blob`]).
fn decode_spans(blob: &[u8]) -> Result<Vec<Span>> {
    if blob.is_empty() {
        return Ok(Vec::new());
    }
    let mut blob = blob
        .split_first_chunk::<4>()
        .and_then(|(len, rest)| rest.get(u32::from_be_bytes(*len) as usize..))
        .ok_or_else(|| corrupt("trace facts"))?;
    let mut spans = Vec::new();
    while !blob.is_empty() {
        let body = blob
            .get(8..10)
            .map(|h| 10 + (usize::from(h[0]) << 8 | usize::from(h[1])))
            .and_then(|at| blob.get(at..))
            .and_then(|rest| rest.split_first_chunk::<4>())
            .ok_or_else(|| corrupt("span record too short"))?;
        let (len, rest) = body;
        let len = u32::from_be_bytes(*len) as usize;
        let body = rest
            .get(..len)
            .ok_or_else(|| corrupt("span record length"))?;
        spans.push(Span::decode(body).map_err(|e| corrupt(format!("span: {e}")))?);
        blob = &rest[len..];
    }
    Ok(spans)
}

/// A fragment as stored: its facts, length-prefixed (4 bytes, big-endian),
/// then its spans, a record each: span id (8 bytes), header length (2
/// bytes, big-endian), header (see [`write_header`]), protobuf length (4
/// bytes, big-endian), protobuf `Span`. A fact is its kind ([`FACT_MAX`] or
/// [`FACT_MIN`]), service name length (2 bytes, big-endian), service name
/// and the duration in 20 decimal digits.
fn trace_blob(summary: &Summary<'_>, spans: &[Span]) -> Vec<u8> {
    use std::io::Write as _;
    let lens: Vec<usize> = spans.iter().map(|s| s.encoded_len()).collect();
    let size = spans
        .iter()
        .zip(&lens)
        .map(|(s, n)| 8 + 2 + 29 + s.service.len() + 4 + n)
        .sum::<usize>()
        + 4
        + 23 * (1 + 2 * summary.services.len());
    let mut blob = Vec::with_capacity(size);
    blob.extend_from_slice(&[0; 4]);
    for (kind, svc, duration) in summary.facts() {
        // Service names are cut to what the 16-bit length carries.
        let svc = &svc.as_bytes()[..svc.len().min(u16::MAX as usize)];
        blob.push(kind);
        blob.extend_from_slice(&(svc.len() as u16).to_be_bytes());
        blob.extend_from_slice(svc);
        let _ = write!(blob, "{duration:020}");
    }
    let facts = (blob.len() - 4) as u32;
    blob[..4].copy_from_slice(&facts.to_be_bytes());
    for (span, len) in spans.iter().zip(lens) {
        blob.extend_from_slice(&filter::span_id(span));
        let at = blob.len();
        blob.extend_from_slice(&[0, 0]);
        write_header(&mut blob, span);
        let header = (blob.len() - at - 2) as u16;
        blob[at..at + 2].copy_from_slice(&header.to_be_bytes());
        blob.extend_from_slice(&(len as u32).to_be_bytes());
        span.encode_raw(&mut blob);
    }
    blob
}

/// Appends a span's header: what the store script reads to find calls.
/// Error flag (`0`/`1`), parent id (8 bytes, zero for a root), start (20
/// decimal digits), service (cut to what a 16-bit header length carries).
fn write_header(out: &mut Vec<u8>, span: &Span) {
    use std::io::Write as _;
    out.push(if filter::is_error(span) { b'1' } else { b'0' });
    out.extend_from_slice(&filter::parent_id(span).unwrap_or([0; 8]));
    let _ = write!(out, "{:020}", span.start_time_unix_nano);
    let svc = span.service.as_bytes();
    out.extend_from_slice(&svc[..svc.len().min(u16::MAX as usize - 29)]);
}

/// The calls inside a fragment (score: child start; `deps` member) and the
/// 1-based positions of its spans whose parent is elsewhere: what the store
/// script records when the fragment starts a trace.
fn calls(tid: &[u8], spans: &[Span]) -> (Vec<(u64, Vec<u8>)>, Vec<usize>) {
    let by_id: HashMap<[u8; 8], &Span> = spans.iter().map(|s| (filter::span_id(s), s)).collect();
    let mut calls = Vec::new();
    let mut orphans = Vec::new();
    for (i, child) in spans.iter().enumerate() {
        let Some(parent) = filter::parent_id(child) else {
            continue;
        };
        match by_id.get(&parent) {
            Some(parent) if parent.service != child.service => calls.push((
                child.start_time_unix_nano,
                dep_member(
                    &parent.service,
                    &child.service,
                    filter::is_error(child),
                    tid,
                    &child.span_id,
                ),
            )),
            Some(_) => {}
            None => orphans.push(i + 1),
        }
    }
    (calls, orphans)
}

/// Fact kind: the longest span duration of a service.
const FACT_MAX: u8 = b'D';
/// Fact kind: the shortest span duration of a service (of any service when
/// the name is empty).
const FACT_MIN: u8 = b'm';

/// A fact's name as the scripts look it up: kind, then the service name.
fn fact(kind: u8, svc: &str) -> Vec<u8> {
    let mut f = Vec::with_capacity(1 + svc.len());
    f.push(kind);
    f.extend_from_slice(svc.as_bytes());
    f
}

/// The shortest-duration bucket of a duration: a quarter of an octave
/// (bit length, then the next two bits), so that a span at most `d` long is
/// in a bucket up to `bucket(d)`, and one in that bucket is at most 25 %
/// longer.
fn bucket(d: u64) -> u32 {
    let bits = 64 - d.leading_zeros();
    if bits <= 2 {
        return d as u32;
    }
    (bits << 2) | ((d >> (bits - 3)) & 3) as u32
}

/// A tag's value as filters compare it, borrowed when it is a string.
fn tag_value(v: Option<&AnyValue>) -> Cow<'_, str> {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => Cow::Borrowed(s),
        _ => Cow::Owned(v.map(filter::render_value).unwrap_or_default()),
    }
}

/// What a fragment (or a stored trace) contributes to the indexes.
#[derive(Debug)]
struct Summary<'a> {
    /// Earliest start.
    start: u64,
    /// Newest end.
    end: u64,
    /// Earliest start of an ERROR span.
    error: Option<u64>,
    /// Shortest span duration.
    min_dur: u64,
    services: Vec<ServiceSummary<'a>>,
    /// (service, operation) → earliest start, and newest end per span kind.
    ops: HashMap<(&'a str, &'a str), OpSummary>,
    /// Indexed tag pairs → earliest start.
    tags: HashMap<(&'a str, Cow<'a, str>), u64>,
}

/// The spans of one service in a [`Summary`].
#[derive(Debug)]
struct ServiceSummary<'a> {
    name: &'a str,
    start: u64,
    end: u64,
    error: Option<u64>,
    min_dur: u64,
    max_dur: u64,
}

/// The spans of one operation in a [`Summary`].
#[derive(Debug)]
struct OpSummary {
    start: u64,
    /// (kind, newest end).
    kinds: Vec<(i32, u64)>,
}

fn earliest(at: &mut Option<u64>, t: u64) {
    *at = Some(at.map_or(t, |a| a.min(t)));
}

impl<'a> Summary<'a> {
    fn of(spans: &'a [Span]) -> Self {
        let mut s = Summary {
            start: u64::MAX,
            end: 0,
            error: None,
            min_dur: u64::MAX,
            services: Vec::new(),
            ops: HashMap::new(),
            tags: HashMap::new(),
        };
        for span in spans {
            let (start, end) = (span.start_time_unix_nano, span.end_time_unix_nano);
            let dur = filter::duration(span);
            let error = filter::is_error(span);
            s.start = s.start.min(start);
            s.end = s.end.max(end);
            s.min_dur = s.min_dur.min(dur);
            if error {
                earliest(&mut s.error, start);
            }
            let name = span.service.as_str();
            let i = match s.services.iter().position(|x| x.name == name) {
                Some(i) => i,
                None => {
                    s.services.push(ServiceSummary {
                        name,
                        start,
                        end,
                        error: None,
                        min_dur: dur,
                        max_dur: dur,
                    });
                    s.services.len() - 1
                }
            };
            let svc = &mut s.services[i];
            svc.start = svc.start.min(start);
            svc.end = svc.end.max(end);
            svc.min_dur = svc.min_dur.min(dur);
            svc.max_dur = svc.max_dur.max(dur);
            if error {
                earliest(&mut svc.error, start);
            }
            let op = s
                .ops
                .entry((name, span.name.as_str()))
                .or_insert(OpSummary {
                    start,
                    kinds: Vec::new(),
                });
            op.start = op.start.min(start);
            match op.kinds.iter_mut().find(|(k, _)| *k == span.kind) {
                Some((_, e)) => *e = (*e).max(end),
                None => op.kinds.push((span.kind, end)),
            }
            for kv in span.attributes.iter().chain(span.resource.iter()) {
                let value = tag_value(kv.value.as_ref());
                if filter::indexable_tag(&kv.key, &value) {
                    let e = s.tags.entry((kv.key.as_str(), value)).or_insert(start);
                    *e = (*e).min(start);
                }
            }
        }
        s
    }

    /// (index key, mode, score) of the trace in each index it belongs to.
    fn index_entries(&self, k: &Keys) -> Vec<(Vec<u8>, Mode, u64)> {
        let mut out = vec![(k.all(), Mode::Lt, self.start)];
        if self.services.is_empty() {
            return out;
        }
        out.reserve(1 + 3 * self.services.len() + self.ops.len() + self.tags.len());
        if let Some(at) = self.error {
            out.push((k.errors(None), Mode::Lt, at));
        }
        for svc in &self.services {
            out.push((k.service(svc.name), Mode::Lt, svc.start));
            out.push((k.short(svc.name, bucket(svc.min_dur)), Mode::Lt, svc.start));
            if let Some(at) = svc.error {
                out.push((k.errors(Some(svc.name)), Mode::Lt, at));
            }
        }
        for ((svc, name), op) in &self.ops {
            out.push((k.operation(svc, name), Mode::Lt, op.start));
        }
        for ((key, value), start) in &self.tags {
            out.push((k.tag(key, value), Mode::Lt, *start));
        }
        out
    }

    /// Facts (kind, service, duration): longest and shortest span per
    /// service, shortest overall (service ""). The store script keeps the
    /// maximum ([`FACT_MAX`]) or minimum of what it finds and what it is
    /// given.
    fn facts(&self) -> Vec<(u8, &'a str, u64)> {
        let mut out = Vec::with_capacity(1 + 2 * self.services.len());
        out.push((FACT_MIN, "", self.min_dur));
        for svc in &self.services {
            out.push((FACT_MAX, svc.name, svc.max_dur));
            out.push((FACT_MIN, svc.name, svc.min_dur));
        }
        out
    }
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

fn op_member(kind: i32, name: &str) -> Vec<u8> {
    format!("{kind}:{name}").into_bytes()
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
    /// `tr:`, not the earlier layout's `t:` (a hash): a server holding data
    /// of that layout is read as if those traces had expired.
    fn trace(&self, tid: &[u8]) -> Vec<u8> {
        self.key(&[b"tr:", tid])
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
    /// Traces by the bucket of their shortest span of `svc`, scored by start.
    fn short(&self, svc: &str, bucket: u32) -> Vec<u8> {
        self.key(&[format!("i:m:{bucket:03}:").as_bytes(), svc.as_bytes()])
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

/// Lua shared by the scripts: the facts of a stored trace (see
/// [`trace_blob`]), as a table name (kind and service) → duration, and the
/// position of its first span record.
macro_rules! facts_lua {
    () => {
        r#"
local function parse_facts(blob)
  local b1, b2, b3, b4 = string.byte(blob, 1, 4)
  local stop = 5 + ((b1 * 256 + b2) * 256 + b3) * 256 + b4
  local out, off = {}, 5
  while off < stop do
    local slen = string.byte(blob, off + 1) * 256 + string.byte(blob, off + 2)
    out[string.sub(blob, off, off) .. string.sub(blob, off + 3, off + 2 + slen)] =
      tonumber(string.sub(blob, off + 3 + slen, off + 22 + slen))
    off = off + 23 + slen
  end
  return out, stop
end
"#
    };
}

/// Stores a batch of fragments. See the module docs.
///
/// KEYS: deps zset, then per fragment its trace key and orphans hash.
/// ARGV: ttl ms, number of fragments m, then per fragment: trace id, n spans,
/// nc calls, no orphans, the fragment as stored (see [`trace_blob`]),
/// nc × (score, deps member), no × position of an orphan span (1-based).
/// Calls and orphans are the fragment's own, used when it starts a new
/// trace; otherwise the script resolves the new spans.
/// Returns {stored, duplicates} per fragment, flattened.
const STORE_LUA: &str = concat!(
    facts_lua!(),
    r#"
local dkey = KEYS[1]
local ttl = ARGV[1]
local m = tonumber(ARGV[2])
local p = 3
local root = string.rep('\0', 8)
local result, deps = {}, {}
-- Commands with many arguments go in chunks (Lua's stack is bounded).
local function chunked(cmd, key, list, from, to)
  for i = from, to, 1000 do
    redis.call(cmd, key, unpack(list, i, math.min(i + 999, to)))
  end
end
-- The span records from `off` on: {span id, header, first byte, last byte} each.
local function records(blob, off)
  local out = {}
  while off <= #blob do
    local h1, h2 = string.byte(blob, off + 8, off + 9)
    local hend = off + 9 + h1 * 256 + h2
    local b1, b2, b3, b4 = string.byte(blob, hend + 1, hend + 4)
    local last = hend + 4 + ((b1 * 256 + b2) * 256 + b3) * 256 + b4
    out[#out + 1] = {string.sub(blob, off, off + 7), string.sub(blob, off + 10, hend), off, last}
    off = last + 1
  end
  return out
end
local function call(pinfo, csid, cinfo, tid)
  local psvc, csvc = string.sub(pinfo, 30), string.sub(cinfo, 30)
  if psvc ~= csvc then
    deps[#deps + 1] = string.sub(cinfo, 10, 29)
    deps[#deps + 1] = psvc .. '\0' .. csvc .. '\0' .. string.sub(cinfo, 1, 1) .. tid .. csid
  end
end
local function u32(n)
  return string.char(math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
    math.floor(n / 256) % 256, n % 256)
end
for f = 1, m do
  local tkey, wkey = KEYS[2 * f], KEYS[2 * f + 1]
  local tid, n, nc, no = ARGV[p], tonumber(ARGV[p + 1]), tonumber(ARGV[p + 2]), tonumber(ARGV[p + 3])
  local blob = ARGV[p + 4]
  local c = p + 5
  local o = c + 2 * nc
  p = o + no
  local stored = n
  if redis.call('SET', tkey, blob, 'NX', 'PX', ttl) then
    -- A new trace: every span is new (fragments hold no duplicates).
    for i = c, o - 1 do
      deps[#deps + 1] = ARGV[i]
    end
    if no > 0 then
      local _, first = parse_facts(blob)
      local spans, w = records(blob, first), {}
      for i = o, p - 1 do
        local r = spans[tonumber(ARGV[i])]
        w[#w + 1] = r[1]
        w[#w + 1] = r[2]
      end
      chunked('HSET', wkey, w, 1, #w)
      redis.call('PEXPIRE', wkey, ttl)
    end
  else
    local old = redis.call('GET', tkey)
    local facts, ofirst = parse_facts(old)
    local known = {}
    for _, r in ipairs(records(old, ofirst)) do
      known[r[1]] = r[2]
    end
    local given, first = parse_facts(blob)
    stored = 0
    local infos, new = {}, {}
    for _, r in ipairs(records(blob, first)) do
      if not known[r[1]] then
        stored = stored + 1
        infos[r[1]] = r[2]
        new[#new + 1] = string.sub(blob, r[3], r[4])
      end
    end
    local changed = false
    for name, value in pairs(given) do
      local was = facts[name]
      local longest = string.byte(name, 1) == 68
      if not was or (longest and value > was) or (not longest and value < was) then
        facts[name] = value
        changed = true
      end
    end
    if changed then
      local parts = {}
      for name, value in pairs(facts) do
        local svc = string.sub(name, 2)
        parts[#parts + 1] = string.sub(name, 1, 1) .. string.char(math.floor(#svc / 256), #svc % 256)
          .. svc .. string.format('%020.0f', value)
      end
      local fb = table.concat(parts)
      redis.call('SET', tkey, u32(#fb) .. fb .. string.sub(old, ofirst) .. table.concat(new), 'PX', ttl)
    elseif stored > 0 then
      redis.call('APPEND', tkey, table.concat(new))
      redis.call('PEXPIRE', tkey, ttl)
    end
    if stored > 0 then
      for sid, info in pairs(infos) do
        local parent = string.sub(info, 2, 9)
        if parent ~= root then
          local pinfo = infos[parent] or known[parent]
          if pinfo then
            call(pinfo, sid, info, tid)
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
          call(pinfo, csid, cinfo, tid)
          redis.call('HDEL', wkey, csid)
        end
      end
      if #waiting > 0 then
        redis.call('PEXPIRE', wkey, ttl)
      end
    end
  end
  result[2 * f - 1] = stored
  result[2 * f] = n - stored
end
if #deps > 0 then
  chunked('ZADD', dkey, deps, 1, #deps)
  redis.call('PEXPIRE', dkey, ttl)
end
return result
"#
);

/// Walks an index newest first, keeping the trace ids that meet every check:
/// membership of another index (`z`) or a fact of the trace (`h`, read from
/// the head of its trace key), with a score within the given bounds, when
/// they are given.
///
/// KEYS: the primary index.
/// ARGV: max score, min score, offset, budget, wanted, c, trace key prefix, c × (kind, index or fact field, lowest score or "", highest score
/// or "").
/// Returns {next offset, exhausted (0/1), trace ids}.
const SCAN_LUA: &str = concat!(
    facts_lua!(),
    r#"
local max, min = ARGV[1], ARGV[2]
local off, budget, want = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local c = tonumber(ARGV[6])
local hp = ARGV[7]
local checks = {}
for j = 1, c do
  local b = 4 + 4 * j
  checks[j] = {ARGV[b] == 'h', ARGV[b + 1], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])}
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
      local score
      if check[1] then
        -- The facts usually fit in the first 512 bytes.
        local key = hp .. tid
        local head = redis.call('GETRANGE', key, 0, 511)
        if #head >= 4 then
          local b1, b2, b3, b4 = string.byte(head, 1, 4)
          local len = ((b1 * 256 + b2) * 256 + b3) * 256 + b4
          if 4 + len > #head then
            head = redis.call('GETRANGE', key, 0, 3 + len)
          end
          score = parse_facts(head)[check[2]]
        end
      else
        score = redis.call('ZSCORE', check[2], tid)
      end
      if not score or (check[3] and tonumber(score) < check[3])
          or (check[4] and tonumber(score) > check[4]) then
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
"#
);

#[cfg(test)]
mod tests;
