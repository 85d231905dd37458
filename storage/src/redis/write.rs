//! Writes: the batching task and the pipeline that stores a batch (see the
//! module docs' "Writes").

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::redis::{Cmd, ErrorKind, Pipeline, ServerErrorKind, Value};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::blob::trace_blob;
use super::keys::{KeyMember, Keys, Mode, ScoredMember, dep_member, op_member};
use super::summary::Summary;
use super::{BACKEND, Inner, Result, Span, StorageError, StoreOutcome, corrupt, now_ms};
use crate::filter;

/// Stores a batch of fragments. See the module docs.
///
/// KEYS: deps zset, then per fragment its trace key and orphans hash.
/// ARGV: ttl ms, number of fragments m, then per fragment: trace id, n spans,
/// nc calls, no orphans, the fragment as stored (see [`trace_blob`]),
/// nc × (score, deps member), no × position of an orphan span (1-based).
/// Calls and orphans are the fragment's own, used when it starts a new
/// trace; otherwise the script resolves the new spans.
/// Returns {stored, duplicates} per fragment, flattened.
pub(super) const STORE_LUA: &str = concat!(include_str!("facts.lua"), include_str!("store.lua"));

/// How often the TTL of a hot index key is refreshed.
const TTL_REFRESH: Duration = Duration::from_secs(60);

/// Bound on the per-process caches of refreshed index keys and catalogue entries.
const CACHE_MAX: usize = 200_000;

/// A catalogue entry (service, operation) is rewritten when its newest end
/// moved by this much span time.
const CATALOGUE_STEP_NS: u64 = 1_000_000_000;

/// Most fragments stored by one pipeline.
const BATCH_FRAGMENTS: usize = 256;

/// Most spans stored by one pipeline (a single fragment may exceed it).
const BATCH_SPANS: usize = 4_096;

/// Batches written at once (each is one pipeline on the shared connection).
const BATCHES_IN_FLIGHT: usize = 4;

/// A fragment waiting to be stored, and who waits for the result.
pub(super) struct Job {
    pub(super) fragment: crate::Fragment,
    pub(super) reply: oneshot::Sender<Result<StoreOutcome>>,
}

/// The index writes of a batch: per key and mode, every trace of the batch.
type IndexWrites<'a> = HashMap<(Vec<u8>, Mode), Vec<ScoredMember<'a>>>;

/// A catalogue entry (key, member) with its newest end.
type CatalogueEntry = (Vec<u8>, Vec<u8>, u64);

/// Takes the fragments waiting, stores them as one batch, repeats; at most
/// [`BATCHES_IN_FLIGHT`] batches at once. Ends when the storage is dropped.
pub(super) async fn run_batches(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Job>) {
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
            store_jobs(&inner, jobs).await;
            drop(permit);
        });
    }
}

/// Stores the jobs' fragments as one batch and answers each job.
async fn store_jobs(inner: &Inner, jobs: Vec<Job>) {
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
}

impl Inner {
    /// Stores a batch of validated fragments (several may belong to one
    /// trace); one outcome per fragment. Each shard's fragments are one
    /// pipeline (one slot of a cluster), the catalogue another (on one
    /// server, the same); they run at once.
    async fn store_batch(&self, fragments: &[(&[u8; 16], &[Span])]) -> Result<Vec<StoreOutcome>> {
        let mut by_shard: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, (tid, _)) in fragments.iter().enumerate() {
            by_shard
                .entry(self.keys.shard_of(&tid[..]))
                .or_default()
                .push(i);
        }
        let mut catalogue: HashMap<KeyMember, u64> = HashMap::new();
        let mut due = Vec::new();
        let mut groups: Vec<(Pipeline, Vec<usize>)> = Vec::new();
        for (shard, idxs) in by_shard {
            let frags: Vec<(&[u8; 16], &[Span])> = idxs.iter().map(|&i| fragments[i]).collect();
            let mut by_key: IndexWrites<'_> = HashMap::new();
            let eval = self.store_call(shard, &frags, &mut by_key, &mut catalogue);
            groups.push((self.shard_pipeline(eval, &by_key, &mut due), idxs));
        }
        let written = self.catalogue_to_write(catalogue);
        let global = self.global_commands(&written, &due);
        let mut global_pipe = ::redis::pipe();
        let target = match (self.cfg.cluster, groups.first_mut()) {
            (false, Some((first, _))) => first,
            _ => &mut global_pipe,
        };
        for cmd in global {
            target.add_command(cmd).ignore();
        }
        let wait = self.cfg.wait_replicas;
        if wait > 0 {
            let timeout = self.cfg.response_timeout.as_millis() as u64 / 2;
            for (pipe, _) in &mut groups {
                pipe.cmd("WAIT").arg(wait).arg(timeout.max(1));
            }
        }
        let (outcomes, catalogued) = tokio::join!(
            futures_util::future::join_all(groups.iter().map(|(pipe, _)| self.run_store(pipe))),
            self.run_global(&global_pipe),
        );
        catalogued?;
        let mut out = vec![StoreOutcome::default(); fragments.len()];
        for ((_, idxs), counts) in groups.iter().zip(outcomes) {
            let counts = counts?;
            if counts.len() != 2 * idxs.len() {
                return Err(corrupt("store script reply"));
            }
            for (&i, c) in idxs.iter().zip(counts.chunks(2)) {
                out[i] = StoreOutcome {
                    stored: c[0],
                    duplicates: c[1],
                };
            }
        }
        self.remember_catalogue(written);
        Ok(out)
    }

    /// The catalogue entries to write (with the TTL refresh of catalogue
    /// keys due for one) and the registry of the keys whose TTL is
    /// refreshed.
    fn global_commands(&self, written: &[CatalogueEntry], due: &[Vec<u8>]) -> Vec<Cmd> {
        let mut by_key: HashMap<&[u8], Cmd> = HashMap::new();
        for (key, member, end) in written {
            by_key
                .entry(key.as_slice())
                .or_insert_with(|| {
                    let mut c = ::redis::cmd("ZADD");
                    c.arg(key).arg("GT");
                    c
                })
                .arg(*end)
                .arg(member);
        }
        let ttl = self.ttl_ms();
        let fresh = self.due_for_ttl(by_key.keys().copied());
        let mut cmds: Vec<Cmd> = by_key.into_values().collect();
        for key in &fresh {
            let mut c = ::redis::cmd("PEXPIRE");
            c.arg(key).arg(ttl);
            cmds.push(c);
        }
        if due.is_empty() && fresh.is_empty() {
            return cmds;
        }
        let k = &self.keys;
        let mut reg = ::redis::cmd("ZADD");
        reg.arg(k.registry());
        let now = now_ms();
        for key in due.iter().chain(&fresh) {
            reg.arg(now).arg(key);
        }
        cmds.push(reg);
        let mut c = ::redis::cmd("PEXPIRE");
        c.arg(k.registry()).arg(ttl);
        cmds.push(c);
        cmds
    }

    /// Runs the catalogue's pipeline, when it has commands.
    async fn run_global(&self, pipe: &Pipeline) -> Result<()> {
        if pipe.cmd_iter().next().is_none() {
            return Ok(());
        }
        self.with_retry("store_trace", |mut conn| async move {
            pipe.query_async::<()>(&mut conn).await
        })
        .await
    }

    /// The store script's call for the batch; the index entries of its
    /// fragments go to `by_key`, their catalogue entries to `catalogue`.
    fn store_call<'f>(
        &self,
        shard: usize,
        fragments: &[(&'f [u8; 16], &'f [Span])],
        by_key: &mut IndexWrites<'f>,
        catalogue: &mut HashMap<KeyMember, u64>,
    ) -> Cmd {
        let k = self.keys.shard(shard);
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
            for (key, mode, score) in summary.index_entries(&k) {
                by_key.entry((key, mode)).or_default().push((score, tid));
            }
            add_catalogue(&self.keys, &summary, catalogue);
            add_fragment(&mut eval, tid, spans, &summary);
        }
        eval
    }

    /// The catalogue changes rarely: skips entries this process already
    /// wrote with a score at most a step older.
    fn catalogue_to_write(&self, catalogue: HashMap<KeyMember, u64>) -> Vec<CatalogueEntry> {
        let mut written = Vec::new();
        let cache = self.catalogue.lock();
        for ((key, member), end) in catalogue {
            let fresh = cache
                .get(&(key.clone(), member.clone()))
                .is_none_or(|done| end > done.saturating_add(CATALOGUE_STEP_NS));
            if fresh {
                written.push((key, member, end));
            }
        }
        written
    }

    /// Records the catalogue entries a stored batch wrote.
    fn remember_catalogue(&self, written: Vec<CatalogueEntry>) {
        if written.is_empty() {
            return;
        }
        let mut cache = self.catalogue.lock();
        if cache.len() > CACHE_MAX {
            cache.clear();
        }
        for (key, member, end) in written {
            let e = cache.entry((key, member)).or_insert(0);
            *e = (*e).max(end);
        }
    }

    /// A shard's pipeline: the script stores the spans and records calls;
    /// the index writes follow, and the TTL refresh of index keys due for
    /// one (added to `due`, for the registry). The index writes are
    /// idempotent (`ZADD LT/GT` of the same member), so a retry after a
    /// failure half-way completes them and a retry of a stored fragment
    /// changes nothing.
    fn shard_pipeline(
        &self,
        eval: Cmd,
        by_key: &IndexWrites<'_>,
        due: &mut Vec<Vec<u8>>,
    ) -> Pipeline {
        let mut pipe = ::redis::pipe();
        pipe.add_command(eval);
        for ((key, mode), members) in by_key {
            let c = pipe.cmd("ZADD").arg(key).arg(match mode {
                Mode::Lt => "LT",
            });
            for (score, member) in members {
                c.arg(*score).arg(*member);
            }
            c.ignore();
        }
        let ttl = self.ttl_ms();
        for key in self.due_for_ttl(by_key.keys().map(|(key, _)| key.as_slice())) {
            pipe.cmd("PEXPIRE").arg(&key).arg(ttl).ignore();
            due.push(key);
        }
        pipe
    }

    /// Runs a shard's store pipeline; the store script's counts. With
    /// `wait_replicas`, fails unless that many replicas acknowledged the
    /// writes (the caller retries; the writes are idempotent).
    async fn run_store(&self, pipe: &Pipeline) -> Result<Vec<u64>> {
        let reply: Vec<Value> = self
            .with_retry("store_trace", |mut conn| {
                let script = &self.store_script;
                async move {
                    match pipe.query_async(&mut conn).await {
                        // Redis restarted (or failed over) without its script
                        // cache: load it and run the (idempotent) pipeline again.
                        Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                            script.load_async(&mut conn).await?;
                            pipe.query_async(&mut conn).await
                        }
                        other => other,
                    }
                }
            })
            .await?;
        let mut reply = reply.into_iter();
        let counts: Vec<u64> = reply
            .next()
            .and_then(|v| ::redis::from_redis_value(v).ok())
            .ok_or_else(|| corrupt("store script reply"))?;
        let wanted = i64::from(self.cfg.wait_replicas);
        if wanted > 0 {
            let acked: i64 = reply
                .next()
                .and_then(|v| ::redis::from_redis_value(v).ok())
                .unwrap_or(0);
            if acked < wanted {
                self.metrics.unreplicated.inc();
                return Err(StorageError::unavailable(
                    BACKEND,
                    format!("write acknowledged by {acked} of {wanted} replicas"),
                ));
            }
        }
        Ok(counts)
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
}

/// Adds a fragment's catalogue entries (services, operations), keeping the
/// newest end of each.
fn add_catalogue(k: &Keys, summary: &Summary<'_>, catalogue: &mut HashMap<KeyMember, u64>) {
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
}

/// Adds a fragment's arguments to the store script's call.
fn add_fragment(eval: &mut Cmd, tid: &[u8], spans: &[Span], summary: &Summary<'_>) {
    let (calls, orphans) = calls(tid, spans);
    eval.arg(tid)
        .arg(spans.len())
        .arg(calls.len())
        .arg(orphans.len())
        .arg(trace_blob(summary, spans));
    for (score, member) in &calls {
        eval.arg(*score).arg(member);
    }
    for i in &orphans {
        eval.arg(*i);
    }
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
