//! Reads: a trace, the search (see the module docs' "Search"), the
//! catalogue and the dependencies.

use std::collections::HashSet;

use super::blob::decode_spans;
use super::keys::{FACT_MAX, FACT_MIN, bucket, fact, parse_dep_member};
use super::{DependencyLink, FilterCriteria, Inner, Result, Span, SpanKind, Trace, TraceId};
use crate::filter::{self, DependencyCounter};

/// Most index entries one search walks before it returns what it found.
pub const MAX_SCANNED: usize = 100_000;

/// A max-duration search fetches every trace whose shortest span is in a
/// bucket up to the maximum's when there are at most this many (else it walks
/// an index by time).
pub(super) const SHORT_CANDIDATES: usize = 2_000;

/// Index entries one call of the scan script walks (bounds how long it holds
/// Redis).
const SCAN_BATCH: usize = 5_000;

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

/// A check the scan script makes: (kind, index or fact, lowest score,
/// highest score); kind `z`, a member of the index; `h`, a fact of the
/// trace.
type Check = (&'static str, Vec<u8>, String, String);

/// The walk of one search: the primary index, its score range (`max`,
/// `min`) and the checks on each trace met.
struct Walk {
    primary: Vec<u8>,
    max: String,
    min: String,
    checks: Vec<Check>,
}

/// The checks a trace met in the primary index must pass: membership of
/// the other candidate indexes, and the duration facts.
fn checks(f: &FilterCriteria, others: Vec<Vec<u8>>) -> Vec<Check> {
    let mut checks: Vec<Check> = others
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
    checks
}

impl Inner {
    /// All stored spans of a trace, sorted by start.
    pub(super) async fn read_trace(&self, trace_id: TraceId) -> Result<Option<Trace>> {
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

    /// Walks the primary index in batches of the scan script until `limit`
    /// traces match, the index ends or [`MAX_SCANNED`] entries were walked.
    async fn walk(&self, walk: &Walk, f: &FilterCriteria, limit: usize) -> Result<Vec<Trace>> {
        let mut found: Vec<(u64, Trace)> = Vec::new();
        // Concurrent writes can shift offsets and show a trace twice.
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        let mut offset = 0u64;
        let mut scanned = 0usize;
        loop {
            let want = limit - found.len();
            let (next, exhausted, tids) = self.scan(walk, offset, want).await?;
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

    /// One call of the scan script from `offset`: (next offset, exhausted,
    /// trace ids).
    async fn scan(&self, walk: &Walk, offset: u64, want: usize) -> Result<(u64, u8, Vec<Vec<u8>>)> {
        let mut inv = self.scan_script.prepare_invoke();
        inv.key(&walk.primary)
            .arg(&walk.max)
            .arg(&walk.min)
            .arg(offset)
            .arg(SCAN_BATCH)
            .arg(want)
            .arg(walk.checks.len())
            .arg(self.keys.trace(b""));
        for (kind, name, min_score, max_score) in &walk.checks {
            inv.arg(*kind).arg(name).arg(min_score).arg(max_score);
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
        let keys: Vec<Vec<u8>> = services
            .iter()
            .flat_map(|svc| (0..=top).map(|b| self.keys.short(svc, b)))
            .collect();
        let sizes = self.sizes(&keys).await?;
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

    /// The size (`ZCARD`) of each sorted set, in one round trip.
    async fn sizes(&self, keys: &[Vec<u8>]) -> Result<Vec<u64>> {
        let mut pipe = ::redis::pipe();
        for key in keys {
            pipe.cmd("ZCARD").arg(key);
        }
        self.with_retry("list_traces", |mut conn| {
            let pipe = &pipe;
            async move { pipe.query_async(&mut conn).await }
        })
        .await
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
            let sizes = self.sizes(&cands).await?;
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
