//! Trace analysis: what the raw spans do not say directly.
//!
//! | function | answers |
//! |---|---|
//! | [`detect_bottlenecks`] | the critical path (Jaeger's definition) and self-time per span, service and operation, ranked by share of the trace |
//! | [`causal_order`] | events ordered by happened-before from the vector clocks; wall clocks that contradict causality; the per-service offsets that would make the trace consistent (reported, never applied) |
//! | [`detect_anomalies`] | latency outliers against robust per-operation baselines, error-rate spikes, new call edges, missing expected children — each explained in one sentence |
//! | [`window_anomalies`], [`detect_structural`] | latency outliers and error-rate spikes over every span of a window from roll-up buckets (median, MAD and outlier counts from the merged sketch); new and missing calls from the traces read |
//! | [`group_anomalies`] | those anomalies folded per (kind, service, operation, span kind): count, baseline, worst value and ratio, first and last seen, the worst examples |
//! | [`dependency_graph`] | service-to-service edges with calls, error rate and latency percentiles |
//! | [`red_metrics`] | rate, errors and duration percentiles per service and operation over time |
//! | [`rollup`] | RED and dependency roll-ups per time bucket: a mergeable latency sketch (DDSketch, 1 %), buckets with a cardinality guard, tiers, and summaries over any window |
//! | [`sampling`] | the tail-sampling policy engine: which assembled traces to keep, by the OpenTelemetry `tail_sampling` processor's policies |
//!
//! Everything here is a pure function of spans (no I/O, no HTTP), so it is
//! tested with hand-built traces whose answers are known ([`fixtures`],
//! feature `testing`). The collector's query API serves these under
//! `/api/clew/`.
//!
//! Units in the JSON answers: absolute times are Unix **microseconds**
//! (integers, as Jaeger's `startTime`, exact in a JavaScript number);
//! durations and times relative to a trace's start are microseconds as
//! floating-point numbers, so nanosecond detail is kept.

use std::collections::HashMap;

use clew_proto::v1::{Span, SpanKind, status};

mod anomalies;
mod bottlenecks;
mod causal;
#[cfg(any(test, feature = "testing"))]
pub mod fixtures;
mod red;
pub mod rollup;
pub mod sampling;
#[cfg(test)]
mod tests;

pub use anomalies::{
    Anomaly, AnomalyConfig, AnomalyGroup, AnomalyKind, Baseline, LatencyGroup, WindowAnomalies,
    detect_anomalies, detect_structural, group_anomalies, kind_name, sort_anomalies, sort_groups,
    window_anomalies,
};
pub use bottlenecks::{Bottlenecks, CriticalSection, GroupTime, SpanTime, detect_bottlenecks};
pub use causal::{
    CausalAnalysis, CausalEvent, ClockEvent, EventRef, ServiceOffset, Violation, causal_order,
};
pub use red::{
    DependencyEdge, DependencyGraph, Percentiles, RedBucket, RedSeries, ServiceNode,
    dependency_graph, red_metrics,
};

/// Nanoseconds as microseconds, keeping the fraction.
pub(crate) fn us(ns: u64) -> f64 {
    ns as f64 / 1_000.0
}

/// Signed nanoseconds as microseconds.
pub(crate) fn us_signed(ns: i128) -> f64 {
    ns as f64 / 1_000.0
}

/// Lowercase hex of an id.
pub fn hex(bytes: &[u8]) -> String {
    clew_model::ids::hex(bytes)
}

/// A span id as an integer key (0 for a malformed id).
pub(crate) fn span_key(id: &[u8]) -> u64 {
    <[u8; 8]>::try_from(id).map(u64::from_be_bytes).unwrap_or(0)
}

/// True when the span's status is ERROR.
pub(crate) fn is_error(span: &Span) -> bool {
    span.status
        .as_ref()
        .is_some_and(|s| s.code == status::Code::Error as i32)
}

/// The span's duration in nanoseconds (0 when it ends before it starts).
pub(crate) fn duration(span: &Span) -> u64 {
    span.end_time_unix_nano
        .saturating_sub(span.start_time_unix_nano)
}

/// Parent/child links of one trace, by position in its span list.
#[derive(Debug)]
pub(crate) struct Tree {
    /// The parent of each span, when it is in the trace.
    pub parent: Vec<Option<usize>>,
    /// The children of each span, in span order.
    pub children: Vec<Vec<usize>>,
}

impl Tree {
    pub fn new(spans: &[Span]) -> Self {
        let mut by_id: HashMap<u64, usize> = HashMap::with_capacity(spans.len());
        for (i, s) in spans.iter().enumerate() {
            by_id.entry(span_key(&s.span_id)).or_insert(i);
        }
        let mut parent = vec![None; spans.len()];
        let mut children = vec![Vec::new(); spans.len()];
        for (i, s) in spans.iter().enumerate() {
            if s.parent_span_id.is_empty() {
                continue;
            }
            if let Some(&p) = by_id.get(&span_key(&s.parent_span_id))
                && p != i
            {
                parent[i] = Some(p);
                children[p].push(i);
            }
        }
        // A cycle of parent ids (corrupt input) would loop the walks below:
        // cut every span that cannot reach a root.
        let mut state = vec![0u8; spans.len()]; // 0 unknown, 1 on path, 2 reaches a root
        for start in 0..spans.len() {
            let mut path = Vec::new();
            let mut cur = start;
            loop {
                match state[cur] {
                    2 => break,
                    1 => {
                        // A cycle through `cur`: cut its parent link.
                        if let Some(p) = parent[cur].take() {
                            children[p].retain(|&c| c != cur);
                        }
                        break;
                    }
                    _ => {}
                }
                state[cur] = 1;
                path.push(cur);
                match parent[cur] {
                    Some(p) => cur = p,
                    None => break,
                }
            }
            for i in path {
                state[i] = 2;
            }
        }
        Tree { parent, children }
    }

    /// The root: the span without a parent in the trace that starts first
    /// (the longest, on a tie). `None` for an empty trace.
    pub fn root(&self, spans: &[Span]) -> Option<usize> {
        (0..spans.len())
            .filter(|&i| self.parent[i].is_none())
            .min_by_key(|&i| {
                (
                    spans[i].start_time_unix_nano,
                    std::cmp::Reverse(spans[i].end_time_unix_nano),
                )
            })
    }
}

/// Whether a span is where a request enters its service: a server or
/// consumer span, or a span whose parent is missing or in another service.
pub(crate) fn is_entry(spans: &[Span], tree: &Tree, i: usize) -> bool {
    let kind = spans[i].kind;
    if kind == SpanKind::Server as i32 || kind == SpanKind::Consumer as i32 {
        return true;
    }
    match tree.parent[i] {
        None => true,
        Some(p) => spans[p].service != spans[i].service,
    }
}

/// The `q` quantile (0..=1) of sorted values, nearest rank.
pub(crate) fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
