//! Answers from buckets: RED and edge summaries over a window, and time
//! series for charts. Pure: the caller reads the buckets the
//! [`Resolution`] names and passes them in.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Bucket, RedKey, Resolution, Sketch, Stats};
use crate::us;

/// Latency figures from a merged sketch, microseconds (0 without
/// requests). Percentiles carry the sketch's relative error; mean and max
/// are exact.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Latency {
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 95th percentile.
    pub p95_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Mean (exact).
    pub mean_us: f64,
    /// Maximum (exact).
    pub max_us: f64,
}

impl Latency {
    /// The figures of a sketch.
    pub fn of(s: &Sketch) -> Latency {
        let q = |q| us(s.quantile(q).unwrap_or(0));
        Latency {
            p50_us: q(0.50),
            p90_us: q(0.90),
            p95_us: q(0.95),
            p99_us: q(0.99),
            mean_us: s.mean().unwrap_or(0.0) / 1_000.0,
            max_us: us(s.max().unwrap_or(0)),
        }
    }
}

/// How RED keys are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// One row per (service, operation, kind).
    Operation,
    /// One row per (service, operation), its selected kinds merged.
    ServiceOperation,
    /// One row per service, its selected keys merged.
    Service,
}

/// RED figures of one group over the window.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RedSummary {
    /// The service.
    pub service: String,
    /// The operation; `None` when grouped by service.
    pub operation: Option<String>,
    /// The span kind; `None` unless grouped by operation and kind.
    pub kind: Option<i32>,
    /// Spans counted.
    pub requests: u64,
    /// Of which with status ERROR.
    pub errors: u64,
    /// Requests per second over the window.
    pub rate: f64,
    /// `errors / requests`.
    pub error_rate: f64,
    /// Durations.
    pub latency: Latency,
}

/// Figures of one call edge over the window.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeSummary {
    /// The calling service.
    pub parent: String,
    /// The called service.
    pub child: String,
    /// Calls.
    pub calls: u64,
    /// Of which the callee span has status ERROR.
    pub errors: u64,
    /// Calls per second over the window.
    pub rate: f64,
    /// `errors / calls`.
    pub error_rate: f64,
    /// Callee span durations.
    pub latency: Latency,
}

/// One point of a series.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SeriesPoint {
    /// Point start, Unix microseconds.
    pub start_us: u64,
    /// Spans that started in the point.
    pub requests: u64,
    /// Of which with status ERROR.
    pub errors: u64,
    /// Requests per second.
    pub rate: f64,
    /// `errors / requests` (0 without requests).
    pub error_rate: f64,
    /// Durations (0 without requests).
    #[serde(flatten)]
    pub latency: Latency,
}

/// A time series of one group: a point per step of the resolution, oldest
/// first, covering the whole window (points without spans are zero).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RedSeries {
    /// The service.
    pub service: String,
    /// The operation; `None` when grouped by service.
    pub operation: Option<String>,
    /// The span kind; `None` unless grouped by operation and kind.
    pub kind: Option<i32>,
    /// The points.
    pub points: Vec<SeriesPoint>,
}

/// A group's key, borrowed from the buckets.
type Group<'a> = (&'a str, Option<&'a str>, Option<i32>);

fn group<'a>(k: &RedKey<'a>, by: GroupBy) -> Group<'a> {
    match by {
        GroupBy::Operation => (k.service, Some(k.operation), Some(k.kind)),
        GroupBy::ServiceOperation => (k.service, Some(k.operation), None),
        GroupBy::Service => (k.service, None, None),
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// The buckets inside the resolution's range, with the point of each.
fn inside<'a>(
    buckets: &'a [Bucket],
    res: &'a Resolution,
) -> impl Iterator<Item = (usize, &'a Bucket)> + 'a {
    buckets
        .iter()
        .filter_map(|b| res.point_of(b.start_unix_nanos()).map(|p| (p, b)))
}

/// RED per group over the resolution's range, from every bucket starting
/// inside it, for the keys `select` accepts. Buckets of several collectors
/// for the same range are all merged; pass one tier's buckets for any
/// stretch of time (the same spans in two tiers are counted twice). Sorted
/// by (service, operation, kind).
pub fn red_summary(
    buckets: &[Bucket],
    res: &Resolution,
    by: GroupBy,
    select: impl Fn(&RedKey<'_>) -> bool,
) -> Vec<RedSummary> {
    let mut groups: BTreeMap<Group<'_>, Stats> = BTreeMap::new();
    for (_, b) in inside(buckets, res) {
        for (k, stats) in b.red().filter(|(k, _)| select(k)) {
            groups.entry(group(&k, by)).or_default().merge(stats);
        }
    }
    let secs = res.seconds();
    groups
        .into_iter()
        .map(|((service, operation, kind), s)| RedSummary {
            service: service.to_owned(),
            operation: operation.map(str::to_owned),
            kind,
            requests: s.requests(),
            errors: s.errors(),
            rate: rate(s.requests(), secs),
            error_rate: ratio(s.errors(), s.requests()),
            latency: Latency::of(s.latency()),
        })
        .collect()
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

/// Calls per edge over the resolution's range, from every bucket starting
/// inside it (all collectors' buckets merged, as in [`red_summary`]).
/// Sorted by (parent, child).
pub fn edge_summary(buckets: &[Bucket], res: &Resolution) -> Vec<EdgeSummary> {
    let mut edges: BTreeMap<(&str, &str), Stats> = BTreeMap::new();
    for (_, b) in inside(buckets, res) {
        for (k, stats) in b.edges() {
            edges.entry((k.parent, k.child)).or_default().merge(stats);
        }
    }
    let secs = res.seconds();
    edges
        .into_iter()
        .map(|((parent, child), s)| EdgeSummary {
            parent: parent.to_owned(),
            child: child.to_owned(),
            calls: s.requests(),
            errors: s.errors(),
            rate: rate(s.requests(), secs),
            error_rate: ratio(s.errors(), s.requests()),
            latency: Latency::of(s.latency()),
        })
        .collect()
}

/// A series per group: each bucket starting inside the range lands in the
/// point containing its start (so pass buckets no wider than the step).
/// Sorted by (service, operation, kind).
pub fn red_series(
    buckets: &[Bucket],
    res: &Resolution,
    by: GroupBy,
    select: impl Fn(&RedKey<'_>) -> bool,
) -> Vec<RedSeries> {
    let n = res.points();
    let mut groups: BTreeMap<Group<'_>, Vec<Stats>> = BTreeMap::new();
    for (p, b) in inside(buckets, res) {
        for (k, stats) in b.red().filter(|(k, _)| select(k)) {
            let points = groups
                .entry(group(&k, by))
                .or_insert_with(|| vec![Stats::default(); n]);
            if let Some(point) = points.get_mut(p) {
                point.merge(stats);
            }
        }
    }
    let secs = res.step_nanos as f64 / 1e9;
    groups
        .into_iter()
        .map(|((service, operation, kind), stats)| RedSeries {
            service: service.to_owned(),
            operation: operation.map(str::to_owned),
            kind,
            points: res
                .point_starts()
                .zip(stats)
                .map(|(start, s)| SeriesPoint {
                    start_us: start / 1_000,
                    requests: s.requests(),
                    errors: s.errors(),
                    rate: rate(s.requests(), secs),
                    error_rate: ratio(s.errors(), s.requests()),
                    latency: Latency::of(s.latency()),
                })
                .collect(),
        })
        .collect()
}
