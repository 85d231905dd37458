//! Reads: a trace, the search (see the module docs' "Search"), the
//! catalogue and the dependencies.

use std::collections::HashSet;

use futures_util::future::join_all;

use super::blob::decode_spans;
use super::keys::{FACT_MAX, FACT_MIN, ShardKeys, bucket, fact, parse_dep_member};
use super::{DependencyLink, FilterCriteria, Inner, Result, Span, SpanKind, Trace, TraceId};
use crate::filter::{self, DependencyCounter};

/// Most index entries one search walks before it returns what it found.
pub const MAX_SCANNED: usize = 100_000;

/// A max-duration search fetches every trace whose shortest span is in a
/// bucket up to the maximum's when there are at most this many (else it walks
/// an index by time).
pub(super) const SHORT_CANDIDATES: usize = 2_000;

/// Index entries one call of the scan script walks (bounds how long it holds
/// Redis); a round over several shards splits it between them, at least
/// [`MIN_SHARD_BATCH`] each, so the shards walk back in time together
/// instead of each walking a whole batch past what the others reach.
const SCAN_BATCH: usize = 5_000;
const MIN_SHARD_BATCH: usize = 250;

/// Walks an index newest first, keeping the trace ids that meet every check:
/// membership of another index (`z`) or a fact of the trace (`h`, read from
/// the head of its trace key), with a score within the given bounds, when
/// they are given.
///
/// KEYS: the primary index.
/// ARGV: max score, min score, offset, budget, wanted, c, trace key prefix, c × (kind, index or fact field, lowest score or "", highest score
/// or "").
/// Returns {next offset, exhausted (0/1), trace ids}.
pub(super) const SCAN_LUA: &str = concat!(include_str!("facts.lua"), include_str!("scan.lua"));

/// An index a search walks or checks, named independently of the shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Index {
    All,
    Service(String),
    Operation(String, String),
    Errors(Option<String>),
    Tag(String, String),
}

impl Index {
    /// Its key in shard `k`.
    pub(super) fn key(&self, k: &ShardKeys<'_>) -> Vec<u8> {
        match self {
            Index::All => k.all(),
            Index::Service(svc) => k.service(svc),
            Index::Operation(svc, op) => k.operation(svc, op),
            Index::Errors(svc) => k.errors(svc.as_deref()),
            Index::Tag(key, value) => k.tag(key, value),
        }
    }
}

/// A check the scan script makes: membership of another index, or a fact
/// of the trace with a score within bounds ("" for none).
#[derive(Debug, Clone)]
enum Check {
    Member(Index),
    Fact(Vec<u8>, String, String),
}

/// The walk of one search: the primary index, its score range (`max`,
/// `min`) and the checks on each trace met.
struct Walk {
    primary: Index,
    max: String,
    min: String,
    checks: Vec<Check>,
}

/// Where the walk of one shard is: the offset from the newest entry, the
/// lowest score walked (entries not yet walked score no higher), and
/// whether the shard's index ended.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    shard: usize,
    offset: u64,
    low: f64,
    exhausted: bool,
}

/// What one call of the scan script returned: next offset, exhausted,
/// trace ids, their scores, the lowest score walked.
type Scanned = (u64, u8, Vec<Vec<u8>>, Vec<f64>, String);

/// The highest score a shard whose index has not ended may still hold
/// unwalked (minus infinity when every index ended).
fn frontier(cursors: &[Cursor]) -> f64 {
    cursors
        .iter()
        .filter(|c| !c.exhausted)
        .map(|c| c.low)
        .fold(f64::NEG_INFINITY, f64::max)
}

/// The checks a trace met in the primary index must pass: membership of
/// the other candidate indexes, and the duration facts.
fn checks(f: &FilterCriteria, others: Vec<Index>) -> Vec<Check> {
    let mut checks: Vec<Check> = others.into_iter().map(Check::Member).collect();
    if !f.service.is_empty() && f.min_duration_nanos > 0 {
        // The trace's longest span of the service must be long enough.
        checks.push(Check::Fact(
            fact(FACT_MAX, &f.service),
            f.min_duration_nanos.to_string(),
            String::new(),
        ));
    }
    if f.max_duration_nanos > 0 {
        // The trace's shortest span (of the service) must be short enough.
        checks.push(Check::Fact(
            fact(FACT_MIN, &f.service),
            String::new(),
            f.max_duration_nanos.to_string(),
        ));
    }
    checks
}

impl Inner {
    /// All stored spans of a trace, sorted by start.
    pub(super) async fn read_trace(&self, trace_id: TraceId) -> Result<Option<Trace>> {
        let key = self.keys.of_trace(&trace_id.0).trace(&trace_id.0);
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

    /// The traces matching a filter, most recent matching span first.
    pub(super) async fn search(&self, f: &FilterCriteria) -> Result<Vec<Trace>> {
        let limit = filter::effective_limit(f);
        let Some((lo, hi)) = filter::start_window(f) else {
            return Ok(Vec::new());
        };
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
        let walk = Walk {
            primary,
            max,
            min,
            checks: checks(f, others),
        };
        self.walk(&walk, f, limit).await
    }

    /// Walks the primary index of every shard, newest first, merging
    /// the shards by score: a candidate is checked once no shard can still
    /// hold a higher-scored entry not yet walked. Ends when `limit` traces
    /// match, every shard's index ended or [`MAX_SCANNED`] entries were
    /// walked (then the candidates found are checked, best first).
    async fn walk(&self, walk: &Walk, f: &FilterCriteria, limit: usize) -> Result<Vec<Trace>> {
        let mut cursors: Vec<Cursor> = (0..self.keys.shards())
            .map(|shard| Cursor {
                shard,
                offset: 0,
                low: f64::INFINITY,
                exhausted: false,
            })
            .collect();
        let mut found: Vec<(u64, Trace)> = Vec::new();
        let mut pending: Vec<(f64, Vec<u8>)> = Vec::new();
        // Concurrent writes can shift offsets and show a trace twice.
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        let mut scanned = 0usize;
        while found.len() < limit {
            let spent = scanned >= MAX_SCANNED;
            let frontier = match spent {
                true => f64::NEG_INFINITY,
                false => frontier(&cursors),
            };
            pending.sort_by(|a, b| b.0.total_cmp(&a.0));
            let safe = pending.iter().take_while(|(s, _)| *s >= frontier).count();
            if safe > 0 {
                let n = safe.min(limit - found.len());
                let tids: Vec<Vec<u8>> = pending.drain(..n).map(|(_, t)| t).collect();
                keep_matches(&mut found, self.fetch_traces(&tids).await?, f);
                continue;
            }
            if spent || frontier == f64::NEG_INFINITY {
                if spent {
                    tracing::debug!(scanned, found = found.len(), "search scan budget spent");
                }
                break;
            }
            let want = limit - found.len();
            scanned += self
                .scan_frontier(walk, &mut cursors, frontier, want, &mut |score, tid| {
                    if seen.insert(tid.clone()) {
                        pending.push((score, tid));
                    }
                })
                .await?;
        }
        Ok(newest_first(found, limit))
    }

    /// Scans once every shard still at the frontier (every shard, the
    /// first time), giving each candidate to `found`; the entries walked.
    async fn scan_frontier(
        &self,
        walk: &Walk,
        cursors: &mut [Cursor],
        frontier: f64,
        want: usize,
        found: &mut impl FnMut(f64, Vec<u8>),
    ) -> Result<usize> {
        let at: Vec<usize> = (0..cursors.len())
            .filter(|&i| !cursors[i].exhausted && cursors[i].low >= frontier)
            .collect();
        let budget = (SCAN_BATCH / at.len().max(1)).max(MIN_SHARD_BATCH);
        let replies = join_all(
            at.iter()
                .map(|&i| self.scan(walk, cursors[i], want, budget)),
        )
        .await;
        let mut scanned = 0;
        for (i, reply) in at.into_iter().zip(replies) {
            let (next, exhausted, tids, scores, low) = reply?;
            let c = &mut cursors[i];
            scanned += next.saturating_sub(c.offset) as usize;
            c.offset = next;
            c.exhausted = exhausted == 1;
            c.low = low.parse().unwrap_or(c.low);
            for (tid, score) in tids.into_iter().zip(scores) {
                found(score, tid);
            }
        }
        Ok(scanned)
    }

    /// One call of the scan script on a shard from its cursor.
    async fn scan(&self, walk: &Walk, at: Cursor, want: usize, budget: usize) -> Result<Scanned> {
        let k = self.keys.shard(at.shard);
        let mut inv = self.scan_script.prepare_invoke();
        inv.key(walk.primary.key(&k))
            .arg(&walk.max)
            .arg(&walk.min)
            .arg(at.offset)
            .arg(budget)
            .arg(want)
            .arg(walk.checks.len())
            .arg(k.trace(b""));
        for check in &walk.checks {
            match check {
                Check::Member(index) => inv.arg("z").arg(index.key(&k)).arg("").arg(""),
                Check::Fact(name, lo, hi) => inv.arg("h").arg(name).arg(lo).arg(hi),
            };
        }
        self.with_retry("list_traces", |mut conn| {
            let inv = &inv;
            async move { inv.invoke_async(&mut conn).await }
        })
        .await
    }

    /// The stored spans of each trace (none for a trace that is gone).
    pub(super) async fn fetch_traces(&self, tids: &[Vec<u8>]) -> Result<Vec<(Vec<u8>, Vec<Span>)>> {
        let blobs = self.fetch_blobs(tids).await?;
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
        let keys = |k: &ShardKeys<'_>| -> Vec<Vec<u8>> {
            services
                .iter()
                .flat_map(|svc| (0..=top).map(|b| k.short(svc, b)))
                .collect()
        };
        let sizes: Vec<Vec<u64>> = self
            .per_shard("list_traces", |k| {
                let mut pipe = ::redis::pipe();
                for key in keys(&k) {
                    pipe.cmd("ZCARD").arg(key);
                }
                pipe
            })
            .await?;
        match sizes.iter().flatten().sum::<u64>() {
            0 => return Ok(Some(Vec::new())),
            n if n > SHORT_CANDIDATES as u64 => return Ok(None),
            _ => {}
        }
        let lists: Vec<Vec<Vec<Vec<u8>>>> = self
            .per_shard("list_traces", |k| {
                let mut pipe = ::redis::pipe();
                let sizes = &sizes[k.index()];
                for (key, _) in keys(&k).iter().zip(sizes).filter(|(_, n)| **n > 0) {
                    pipe.cmd("ZRANGE").arg(key).arg(0).arg(-1);
                }
                pipe
            })
            .await?;
        let mut seen = HashSet::new();
        let tids: Vec<Vec<u8>> = lists
            .into_iter()
            .flatten()
            .flatten()
            .filter(|t| seen.insert(t.clone()))
            .collect();
        let mut found: Vec<(u64, Trace)> = Vec::new();
        for chunk in tids.chunks(256) {
            keep_matches(&mut found, self.fetch_traces(chunk).await?, f);
        }
        Ok(Some(newest_first(found, limit)))
    }

    /// Runs one pipeline per shard, built by `build` from its keys, all at
    /// once (on a cluster each goes to its shard's master); the replies
    /// per shard, in shard order (the default for an empty pipeline).
    pub(super) async fn per_shard<T, B>(&self, what: &'static str, build: B) -> Result<Vec<T>>
    where
        T: ::redis::FromRedisValue + Default,
        B: Fn(ShardKeys<'_>) -> ::redis::Pipeline,
    {
        let pipes: Vec<::redis::Pipeline> = (0..self.keys.shards())
            .map(|s| build(self.keys.shard(s)))
            .collect();
        join_all(pipes.iter().map(|pipe| async move {
            if pipe.cmd_iter().next().is_none() {
                return Ok(T::default());
            }
            self.with_retry(
                what,
                |mut conn| async move { pipe.query_async(&mut conn).await },
            )
            .await
        }))
        .await
        .into_iter()
        .collect()
    }

    /// The total size (`ZCARD` over the shards) of each index.
    async fn sizes(&self, indexes: &[Index]) -> Result<Vec<u64>> {
        let per: Vec<Vec<u64>> = self
            .per_shard("list_traces", |k| {
                let mut pipe = ::redis::pipe();
                for index in indexes {
                    pipe.cmd("ZCARD").arg(index.key(&k));
                }
                pipe
            })
            .await?;
        Ok((0..indexes.len())
            .map(|i| per.iter().filter_map(|s| s.get(i)).sum())
            .collect())
    }

    /// Picks the candidate indexes of a filter: (primary, others).
    async fn plan(&self, f: &FilterCriteria) -> Result<(Index, Vec<Index>)> {
        let mut cands = Vec::new();
        if !f.service.is_empty() {
            if f.operation.is_empty() {
                cands.push(Index::Service(f.service.clone()));
            } else {
                cands.push(Index::Operation(f.service.clone(), f.operation.clone()));
            }
            if f.errors_only {
                cands.push(Index::Errors(Some(f.service.clone())));
            }
        } else if f.errors_only {
            cands.push(Index::Errors(None));
        }
        let mut tags: Vec<(&String, &String)> = f.tags.iter().collect();
        tags.sort();
        for (key, value) in tags {
            if filter::indexable_tag(key, value) {
                cands.push(Index::Tag(key.clone(), value.clone()));
            }
        }
        if cands.is_empty() {
            return Ok((Index::All, Vec::new()));
        }
        let mut smallest = 0;
        if cands.len() > 1 {
            let sizes = self.sizes(&cands).await?;
            smallest = sizes
                .iter()
                .enumerate()
                .min_by_key(|(_, n)| **n)
                .map_or(0, |(i, _)| i);
        }
        let primary = cands.swap_remove(smallest);
        Ok((primary, cands))
    }

    /// Names of the services in the catalogue, sorted.
    pub(super) async fn list_services(&self) -> Result<Vec<String>> {
        let mut names = self.members("services", self.keys.services()).await?;
        names.sort();
        Ok(names)
    }

    /// A service's operations in the catalogue (of `kind`, if given).
    pub(super) async fn list_operations(
        &self,
        service: &str,
        kind: Option<SpanKind>,
    ) -> Result<Vec<(String, SpanKind)>> {
        let members = self
            .members("operations", self.keys.operations(service))
            .await?;
        let out: Vec<(String, SpanKind)> = members
            .iter()
            .filter_map(|m| {
                let (k, name) = m.split_once(':')?;
                let k = SpanKind::try_from(k.parse::<i32>().ok()?).unwrap_or(SpanKind::Unspecified);
                Some((name.to_owned(), k))
            })
            .filter(|(_, k)| kind.is_none_or(|want| want == *k))
            .collect();
        Ok(filter::sorted_operations(out))
    }

    /// One link per (parent, child) service of the calls in the window.
    pub(super) async fn dependency_links(
        &self,
        start_unix_nanos: u64,
        end_unix_nanos: u64,
    ) -> Result<Vec<DependencyLink>> {
        let max = match end_unix_nanos {
            0 => "+inf".to_string(),
            t => t.to_string(),
        };
        let shards = (0..self.keys.shards()).map(|s| self.shard_calls(s, start_unix_nanos, &max));
        let mut counter = DependencyCounter::default();
        for calls in join_all(shards).await {
            for member in calls? {
                match parse_dep_member(&member) {
                    Some((parent, child, error)) => counter.add(parent, child, error),
                    None => tracing::warn!("skipping an undecodable dependency entry"),
                }
            }
        }
        Ok(counter.finish())
    }

    /// The `deps` members of a shard scored in `[min, max]`.
    async fn shard_calls(&self, shard: usize, min: u64, max: &str) -> Result<Vec<Vec<u8>>> {
        const PAGE: usize = 10_000;
        let key = self.keys.shard(shard).deps();
        let mut out = Vec::new();
        loop {
            let offset = out.len();
            let page: Vec<Vec<u8>> = self
                .with_retry("dependencies", |mut conn| {
                    let key = &key;
                    async move {
                        ::redis::cmd("ZRANGEBYSCORE")
                            .arg(key)
                            .arg(min)
                            .arg(max)
                            .arg("LIMIT")
                            .arg(offset)
                            .arg(PAGE)
                            .query_async(&mut conn)
                            .await
                    }
                })
                .await?;
            let last = page.len() < PAGE;
            out.extend(page);
            if last {
                return Ok(out);
            }
        }
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
