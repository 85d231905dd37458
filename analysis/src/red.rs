//! The service dependency graph and RED metrics (rate, errors, duration)
//! of a set of traces. The collector's routes answer from the roll-ups
//! ([`crate::rollup`]), counted from every span at ingest; these count the
//! traces passed in, exactly, and are the reference the roll-up tests
//! compare against.
//!
//! Both count from traces: a **call** is a span whose parent is a span of
//! another service (counted once, as an error when its status is ERROR, its
//! duration being the callee's); a **request** of a service is an entry span
//! (server or consumer kind, or whose parent is missing or in another
//! service), so a service's internal spans are not counted as traffic.
//! Percentiles are exact (nearest rank) over the spans seen.

use std::collections::BTreeMap;

use clew_proto::v1::Trace;
use serde::Serialize;

use super::{Tree, duration, is_entry, is_error, quantile, us};

/// Duration percentiles, microseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Percentiles {
    /// Median.
    pub p50_us: f64,
    /// 95th percentile.
    pub p95_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
}

impl Percentiles {
    fn of(mut ns: Vec<u64>) -> Self {
        ns.sort_unstable();
        Percentiles {
            p50_us: us(quantile(&ns, 0.50)),
            p95_us: us(quantile(&ns, 0.95)),
            p99_us: us(quantile(&ns, 0.99)),
        }
    }
}

/// A service in the graph.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceNode {
    /// The service.
    pub service: String,
    /// Its spans seen.
    pub spans: u64,
    /// Those with status ERROR.
    pub errors: u64,
}

/// Calls from one service to another.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DependencyEdge {
    /// The calling service.
    pub parent: String,
    /// The called service.
    pub child: String,
    /// Calls.
    pub call_count: u64,
    /// Calls whose callee span has status ERROR.
    pub error_count: u64,
    /// `error_count / call_count`.
    pub error_rate: f64,
    /// Callee span durations.
    pub latency: Percentiles,
    /// Calls the percentiles are computed from (fewer than `call_count` when
    /// the counts come from the full index and the percentiles from a
    /// sample of traces).
    pub latency_samples: u64,
}

/// Services and the calls between them.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DependencyGraph {
    /// Services, sorted by name.
    pub services: Vec<ServiceNode>,
    /// Edges, sorted by (parent, child).
    pub edges: Vec<DependencyEdge>,
    /// Traces the figures were computed from.
    pub traces: usize,
}

/// The dependency graph of calls whose callee started in `[start_ns,
/// end_ns]` (an `end_ns` of 0 is unbounded).
pub fn dependency_graph(traces: &[Trace], start_ns: u64, end_ns: u64) -> DependencyGraph {
    let end_ns = if end_ns == 0 { u64::MAX } else { end_ns };
    let mut nodes: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut edges: BTreeMap<(String, String), (u64, Vec<u64>)> = BTreeMap::new();
    for t in traces {
        let tree = Tree::new(&t.spans);
        for (i, s) in t.spans.iter().enumerate() {
            if s.start_time_unix_nano < start_ns || s.start_time_unix_nano > end_ns {
                continue;
            }
            let n = nodes.entry(s.service.clone()).or_default();
            n.0 += 1;
            n.1 += u64::from(is_error(s));
            if let Some(p) = tree.parent[i]
                && t.spans[p].service != s.service
            {
                let e = edges
                    .entry((t.spans[p].service.clone(), s.service.clone()))
                    .or_default();
                e.0 += u64::from(is_error(s));
                e.1.push(duration(s));
            }
        }
    }
    DependencyGraph {
        services: nodes
            .into_iter()
            .map(|(service, (spans, errors))| ServiceNode {
                service,
                spans,
                errors,
            })
            .collect(),
        edges: edges
            .into_iter()
            .map(|((parent, child), (errors, durs))| {
                let calls = durs.len() as u64;
                DependencyEdge {
                    parent,
                    child,
                    call_count: calls,
                    error_count: errors,
                    error_rate: if calls == 0 {
                        0.0
                    } else {
                        errors as f64 / calls as f64
                    },
                    latency: Percentiles::of(durs),
                    latency_samples: calls,
                }
            })
            .collect(),
        traces: traces.len(),
    }
}

/// RED figures of one time bucket.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RedBucket {
    /// Bucket start, Unix microseconds.
    pub start_us: u64,
    /// Requests that started in the bucket.
    pub requests: u64,
    /// Of which failed (status ERROR).
    pub errors: u64,
    /// Requests per second.
    pub rate: f64,
    /// `errors / requests` (0 without requests).
    pub error_rate: f64,
    /// Duration percentiles (0 without requests).
    #[serde(flatten)]
    pub latency: Percentiles,
}

/// A time series of RED figures for a service, or one of its operations.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RedSeries {
    /// The service.
    pub service: String,
    /// The operation; `None` for the whole service.
    pub operation: Option<String>,
    /// Requests in the window.
    pub requests: u64,
    /// Failed requests in the window.
    pub errors: u64,
    /// Duration percentiles over the window.
    pub latency: Percentiles,
    /// Consecutive buckets of `step`, oldest first, covering the window.
    pub buckets: Vec<RedBucket>,
}

/// RED metrics of entry spans that started in `[start_ns, end_ns)`, in
/// buckets of `step_ns`: one series per service (`service`, or every
/// service) and one per operation of it; services first, then their
/// operations by name.
pub fn red_metrics(
    traces: &[Trace],
    service: Option<&str>,
    start_ns: u64,
    end_ns: u64,
    step_ns: u64,
) -> Vec<RedSeries> {
    let step_ns = step_ns.max(1);
    let n_buckets = usize::try_from(end_ns.saturating_sub(start_ns).div_ceil(step_ns)).unwrap_or(0);
    // Per bucket: (errors, durations).
    type Buckets = Vec<(u64, Vec<u64>)>;
    let mut series: BTreeMap<(String, Option<String>), Buckets> = BTreeMap::new();
    for t in traces {
        let tree = Tree::new(&t.spans);
        for (i, s) in t.spans.iter().enumerate() {
            let st = s.start_time_unix_nano;
            if st < start_ns || st >= end_ns || service.is_some_and(|x| x != s.service) {
                continue;
            }
            if !is_entry(&t.spans, &tree, i) {
                continue;
            }
            let b = usize::try_from((st - start_ns) / step_ns).unwrap_or(0);
            for key in [
                (s.service.clone(), None),
                (s.service.clone(), Some(s.name.clone())),
            ] {
                let v = series
                    .entry(key)
                    .or_insert_with(|| vec![(0, Vec::new()); n_buckets]);
                if let Some(bucket) = v.get_mut(b) {
                    bucket.0 += u64::from(is_error(s));
                    bucket.1.push(duration(s));
                }
            }
        }
    }
    let secs = step_ns as f64 / 1e9;
    series
        .into_iter()
        .map(|((service, operation), buckets)| {
            let all: Vec<u64> = buckets.iter().flat_map(|b| b.1.iter().copied()).collect();
            let errors = buckets.iter().map(|b| b.0).sum();
            RedSeries {
                service,
                operation,
                requests: all.len() as u64,
                errors,
                latency: Percentiles::of(all),
                buckets: buckets
                    .into_iter()
                    .enumerate()
                    .map(|(k, (errors, durs))| {
                        let requests = durs.len() as u64;
                        RedBucket {
                            start_us: (start_ns + k as u64 * step_ns) / 1_000,
                            requests,
                            errors,
                            rate: requests as f64 / secs,
                            error_rate: if requests == 0 {
                                0.0
                            } else {
                                errors as f64 / requests as f64
                            },
                            latency: Percentiles::of(durs),
                        }
                    })
                    .collect(),
            }
        })
        .collect()
}
