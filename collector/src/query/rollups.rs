//! Answers from the roll-ups: RED series and the dependency graph of any
//! window, from every collector's parts merged (see
//! [`crate::rollup`] for how they are counted, and
//! [`clew_analysis::rollup`] for the buckets and the sketch).
//!
//! Figures cover whole buckets of the tier the window is read from (10 s,
//! 1 min, 10 min or 1 h, the finest that fits): `fromUs`/`toUs` in the
//! answers say which. They lag ingest by at most the collectors' flush
//! interval (`--rollup-flush-interval`, 10 s).

use clew_analysis::ServiceNode;
use clew_analysis::rollup::{
    Bucket, EdgeSummary, GroupBy, Latency, RedKey, RedSummary, Resolution, SeriesPoint,
    edge_summary, red_series, red_summary, resolution,
};
use clew_proto::v1::SpanKind;
use serde::Serialize;

use crate::storage::{Storage, StorageError};

/// Most buckets a summary (dependencies) reads: 10 s buckets up to 5.5 h,
/// then coarser.
pub const SUMMARY_BUCKETS: usize = 2_000;

/// The buckets of `res`'s tier over its range, every owner's.
pub async fn buckets(st: &dyn Storage, res: &Resolution) -> Result<Vec<Bucket>, StorageError> {
    let parts = st
        .rollups(res.tier_nanos, res.from_unix_nanos, res.to_unix_nanos)
        .await?;
    parts
        .iter()
        .map(|p| {
            Bucket::decode(&p.bytes).map_err(|e| StorageError::Corrupt {
                backend: "rollups",
                detail: format!("part {} of {}: {e}", p.start_unix_nanos, p.owner),
            })
        })
        .collect()
}

/// The call edges of `[start, end)` (`end` 0: until now).
pub async fn edges(
    st: &dyn Storage,
    start: u64,
    end: u64,
) -> Result<Vec<EdgeSummary>, StorageError> {
    let end = if end == 0 {
        clew_model::now_unix_nanos()
    } else {
        end
    };
    let res = summary_resolution(start, end);
    let buckets = buckets(st, &res).await?;
    Ok(edge_summary(&buckets, &res))
}

/// Server and consumer spans: a service's requests.
fn is_entry_kind(kind: i32) -> bool {
    kind == SpanKind::Server as i32 || kind == SpanKind::Consumer as i32
}

/// Which keys are a service's requests: its server and consumer spans, or
/// every span of a service that has neither in the window (a batch job, a
/// client-only service).
pub fn request_keys(buckets: &[Bucket]) -> impl Fn(&RedKey<'_>) -> bool + use<> {
    let mut with_entries = std::collections::HashSet::new();
    for b in buckets {
        for (k, _) in b.red().filter(|(k, _)| is_entry_kind(k.kind)) {
            with_entries.insert(k.service.to_owned());
        }
    }
    move |k| is_entry_kind(k.kind) || !with_entries.contains(k.service)
}

/// One RED series: figures over the window and a point per step.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RedRow {
    /// The service.
    pub service: String,
    /// The operation; `None` for the whole service.
    pub operation: Option<String>,
    /// Requests in the window.
    pub requests: u64,
    /// Of which with status ERROR.
    pub errors: u64,
    /// Requests per second over the window.
    pub rate: f64,
    /// `errors / requests`.
    pub error_rate: f64,
    /// Durations over the window.
    pub latency: Latency,
    /// A point per step, oldest first, covering the window.
    pub buckets: Vec<SeriesPoint>,
}

/// RED of `service` (every service when `None`): one series per service,
/// then one per operation of it.
pub fn red_rows(buckets: &[Bucket], res: &Resolution, service: Option<&str>) -> Vec<RedRow> {
    let requests = request_keys(buckets);
    let select = |k: &RedKey<'_>| service.is_none_or(|s| s == k.service) && requests(k);
    let mut rows = Vec::new();
    for by in [GroupBy::Service, GroupBy::ServiceOperation] {
        let totals = red_summary(buckets, res, by, select);
        let series = red_series(buckets, res, by, select);
        rows.extend(
            totals
                .into_iter()
                .zip(series)
                .map(|(t, s)| row(t, s.points)),
        );
    }
    rows.sort_by(|a, b| (&a.service, &a.operation).cmp(&(&b.service, &b.operation)));
    rows
}

fn row(t: RedSummary, buckets: Vec<SeriesPoint>) -> RedRow {
    RedRow {
        service: t.service,
        operation: t.operation,
        requests: t.requests,
        errors: t.errors,
        rate: t.rate,
        error_rate: t.error_rate,
        latency: t.latency,
        buckets,
    }
}

/// Calls from one service to another over the window.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Edge {
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
    /// Callee span durations (from the sketch: within its relative error).
    pub latency: Latency,
}

impl From<EdgeSummary> for Edge {
    fn from(e: EdgeSummary) -> Edge {
        Edge {
            parent: e.parent,
            child: e.child,
            call_count: e.calls,
            error_count: e.errors,
            error_rate: e.error_rate,
            latency: e.latency,
        }
    }
}

/// The services (every span) and call edges of the window, sorted by name
/// and by (parent, child); every service of an edge is a node.
pub fn graph(buckets: &[Bucket], res: &Resolution) -> (Vec<ServiceNode>, Vec<Edge>) {
    let mut services: Vec<ServiceNode> = red_summary(buckets, res, GroupBy::Service, |_| true)
        .into_iter()
        .map(|s| ServiceNode {
            service: s.service,
            spans: s.requests,
            errors: s.errors,
        })
        .collect();
    let edges: Vec<Edge> = edge_summary(buckets, res)
        .into_iter()
        .map(Edge::from)
        .collect();
    for e in &edges {
        for svc in [&e.parent, &e.child] {
            if !services.iter().any(|n| &n.service == svc) {
                services.push(ServiceNode {
                    service: svc.clone(),
                    spans: 0,
                    errors: 0,
                });
            }
        }
    }
    services.sort_by(|a, b| a.service.cmp(&b.service));
    (services, edges)
}

/// The resolution a summary of `[start, end)` is read at.
pub fn summary_resolution(start: u64, end: u64) -> Resolution {
    resolution(start, end, SUMMARY_BUCKETS)
}
