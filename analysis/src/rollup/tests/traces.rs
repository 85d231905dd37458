//! Roll-ups of real traces (the crate's span type, parents found through
//! the trace tree) on two collectors, against the exact counts from the
//! raw spans and against [`crate::dependency_graph`].

use std::collections::BTreeMap;

use clew_proto::v1::{Span, SpanKind, Trace};

use super::{Rng, within};
use crate::fixtures::{MS, T0, err, span, tid};
use crate::rollup::{
    Bucket, CallRecord, GroupBy, Latency, Limits, Resolution, SpanRecord, edge_summary,
    red_summary, resolution,
};
use crate::{Percentiles, Tree, dependency_graph, duration, is_error};

const SECOND: u64 = 1_000_000_000;
const WIDTH: u64 = 10 * SECOND;
const SERVICES: [&str; 5] = ["frontend", "users", "orders", "db", "cache"];
const KINDS: [SpanKind; 3] = [SpanKind::Internal, SpanKind::Server, SpanKind::Client];

/// `n` traces starting within `window_ms` of T0: a frontend root and up to
/// six more spans of random services under random earlier spans (some of
/// the same service, so not calls; some orphans, whose parent is missing),
/// lognormal durations around 1 ms, 5 % errors.
fn traces(seed: u64, n: u32, window_ms: u64) -> Vec<Trace> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| {
            let t0 = T0 + rng.below(window_ms * MS);
            let root = format!("GET /{}", rng.below(4));
            let mut spans = vec![timed(span(1, None, "frontend", &root, 0, 0), t0, &mut rng)];
            spans[0].kind = SpanKind::Server as i32;
            for id in 2..2 + rng.below(7) as u16 {
                let parent = match rng.below(50) {
                    0 => 99,
                    _ => 1 + rng.below(u64::from(id) - 1) as u16,
                };
                let service = SERVICES[rng.below(5) as usize];
                let name = ["get", "put", "select"][rng.below(3) as usize];
                let mut s = timed(span(id, Some(parent), service, name, 0, 0), t0, &mut rng);
                s.kind = KINDS[rng.below(3) as usize] as i32;
                spans.push(s);
            }
            for s in &mut spans {
                s.trace_id = tid(i);
            }
            Trace {
                trace_id: tid(i),
                spans,
            }
        })
        .collect()
}

fn timed(mut s: Span, t0: u64, rng: &mut Rng) -> Span {
    s.start_time_unix_nano = t0 + rng.below(5 * MS);
    s.end_time_unix_nano = s.start_time_unix_nano + (1e6 * rng.normal().exp()) as u64;
    if rng.below(20) == 0 { err(s) } else { s }
}

/// A span as a collector rolls it up: its start, its record, and its call
/// when its parent span is of another service.
struct Rec<'a> {
    start: u64,
    span: SpanRecord<'a>,
    call: Option<CallRecord<'a>>,
}

fn records(t: &Trace) -> Vec<Rec<'_>> {
    let tree = Tree::new(&t.spans);
    (0..t.spans.len()).map(|i| record(t, &tree, i)).collect()
}

fn record<'a>(t: &'a Trace, tree: &Tree, i: usize) -> Rec<'a> {
    let s = &t.spans[i];
    let span = SpanRecord {
        service: &s.service,
        operation: &s.name,
        kind: s.kind,
        is_error: is_error(s),
        duration_nanos: duration(s),
    };
    let parent = tree.parent[i].map(|p| &t.spans[p]);
    let call = parent
        .filter(|p| p.service != s.service)
        .map(|p| CallRecord {
            parent: &p.service,
            child: &s.service,
            is_error: span.is_error,
            duration_nanos: span.duration_nanos,
        });
    Rec {
        start: s.start_time_unix_nano,
        span,
        call,
    }
}

/// One collector: its records added into 10 s buckets, sorted by start.
fn collect<'a>(recs: impl Iterator<Item = &'a Rec<'a>>) -> Vec<Bucket> {
    let limits = Limits::default();
    let mut out: BTreeMap<u64, Bucket> = BTreeMap::new();
    for r in recs {
        let start = r.start - r.start % WIDTH;
        let b = out
            .entry(start)
            .or_insert_with(|| Bucket::new(start, WIDTH).unwrap());
        b.add_span(&r.span, &limits);
        if let Some(call) = &r.call {
            b.add_call(call, &limits);
        }
    }
    out.into_values().collect()
}

fn encoded(b: &Bucket) -> Vec<u8> {
    let mut out = Vec::new();
    b.encode(&mut out);
    out
}

/// The two collectors' buckets merged per start, each shipped encoded.
fn merged(a: &[Bucket], b: &[Bucket]) -> Vec<Bucket> {
    let mut out: BTreeMap<u64, Bucket> = BTreeMap::new();
    for bucket in a.iter().chain(b) {
        let shipped = Bucket::decode(&encoded(bucket)).unwrap();
        match out.get_mut(&shipped.start_unix_nanos()) {
            Some(m) => m.merge(&shipped).unwrap(),
            None => {
                out.insert(shipped.start_unix_nanos(), shipped);
            }
        }
    }
    out.into_values().collect()
}

/// Microseconds back to whole nanoseconds.
fn ns(us: f64) -> u64 {
    (us * 1_000.0).round() as u64
}

/// The sketch's percentiles against the exact ones of `durations`.
fn check_latency(what: &str, got: &Latency, mut durations: Vec<u64>) {
    durations.sort_unstable();
    for (q, p) in [
        (0.5, got.p50_us),
        (0.9, got.p90_us),
        (0.95, got.p95_us),
        (0.99, got.p99_us),
    ] {
        let v = crate::quantile(&durations, q);
        assert!(within(ns(p), v), "{what} q={q}: {} vs {v}", ns(p));
    }
    assert_eq!(ns(got.max_us), durations.last().copied().unwrap_or(0));
}

/// RED per service and calls per edge over `res` equal the raw spans of
/// that window (counts exactly, percentiles within the accuracy), and the
/// edges equal the exact dependency graph of the window.
fn check_window(buckets: &[Bucket], res: &Resolution, traces: &[Trace], recs: &[Rec<'_>]) {
    let inside = |t: u64| (res.from_unix_nanos..res.to_unix_nanos).contains(&t);
    let mut raw: BTreeMap<&str, (Vec<u64>, u64)> = BTreeMap::new();
    for r in recs.iter().filter(|r| inside(r.start)) {
        let e = raw.entry(r.span.service).or_default();
        e.0.push(r.span.duration_nanos);
        e.1 += u64::from(r.span.is_error);
    }
    let red = red_summary(buckets, res, GroupBy::Service, |_| true);
    assert_eq!(red.len(), raw.len());
    for (row, (service, (durations, errors))) in red.iter().zip(raw) {
        let n = durations.len() as u64;
        assert_eq!((row.service.as_str(), row.requests), (service, n));
        assert_eq!(row.errors, errors, "{service}");
        assert!((row.rate - n as f64 / res.seconds()).abs() < 1e-9);
        check_latency(service, &row.latency, durations);
    }
    let graph = dependency_graph(traces, res.from_unix_nanos, res.to_unix_nanos - 1);
    let edges = edge_summary(buckets, res);
    assert_eq!(edges.len(), graph.edges.len());
    for (got, want) in edges.iter().zip(&graph.edges) {
        let what = format!("{} → {}", want.parent, want.child);
        assert_eq!((&got.parent, &got.child), (&want.parent, &want.child));
        assert_eq!((got.calls, got.errors), (want.call_count, want.error_count));
        let Percentiles {
            p50_us,
            p95_us,
            p99_us,
        } = want.latency;
        for (p, exact) in [
            (got.latency.p50_us, p50_us),
            (got.latency.p95_us, p95_us),
            (got.latency.p99_us, p99_us),
        ] {
            assert!(within(ns(p), ns(exact)), "{what}: {p} vs {exact}");
        }
    }
}

#[test]
fn fifty_thousand_traces_on_two_collectors() {
    let traces = traces(21, 50_000, 2 * 60_000);
    let recs: Vec<Rec<'_>> = traces.iter().flat_map(records).collect();
    assert!(
        recs.iter()
            .any(|r| r.call.is_none() && r.span.service != "frontend")
    );
    // Each span goes to one of two collectors, whatever its trace.
    let mut rng = Rng::new(22);
    let (a, b): (Vec<&Rec<'_>>, Vec<&Rec<'_>>) = recs.iter().partition(|_| rng.below(2) == 0);
    let (a, b) = (collect(a.into_iter()), collect(b.into_iter()));
    let one = collect(recs.iter());
    assert!(one.len() >= 12, "several buckets: {}", one.len());
    let merged = merged(&a, &b);
    let bytes = |bs: &[Bucket]| bs.iter().map(encoded).collect::<Vec<_>>();
    assert_eq!(bytes(&merged), bytes(&one), "merge equals one collector");

    let first = recs.iter().map(|r| r.start).min().unwrap();
    let last = recs.iter().map(|r| r.start).max().unwrap();
    let whole = resolution(first, last + 1, 1_000);
    let middle = resolution(T0 + 20 * SECOND, T0 + 50 * SECOND, 1_000);
    assert_eq!((whole.tier_nanos, middle.points()), (WIDTH, 3));
    for res in [whole, middle] {
        check_window(&merged, &res, &traces, &recs);
        // The unmerged buckets of both collectors give the same answers.
        let both: Vec<Bucket> = a.iter().chain(&b).cloned().collect();
        let by_op = |bs: &[Bucket]| red_summary(bs, &res, GroupBy::Operation, |_| true);
        assert_eq!(by_op(&both), by_op(&merged));
        assert_eq!(edge_summary(&both, &res), edge_summary(&merged, &res));
    }
    // Every span counted: dependency_graph counts every span per service.
    let graph = dependency_graph(&traces, 0, 0);
    let red = red_summary(&merged, &whole, GroupBy::Service, |_| true);
    let spans: Vec<(&str, u64, u64)> = (graph.services.iter())
        .map(|s| (s.service.as_str(), s.spans, s.errors))
        .collect();
    let rolled: Vec<(&str, u64, u64)> = (red.iter())
        .map(|r| (r.service.as_str(), r.requests, r.errors))
        .collect();
    assert_eq!(rolled, spans);
}
