use std::collections::BTreeMap;

use proptest::prelude::*;

use super::bucket::{SECOND, T0, buckets_of, spans};
use crate::quantile as exact_quantile;
use crate::rollup::{
    GroupBy, Limits, RELATIVE_ACCURACY, TIER_WIDTHS_NANOS, coarsen, edge_summary, red_series,
    red_summary, resolution,
};

const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;

#[test]
fn resolution_picks_the_finest_tier_that_fits() {
    let pick = |window, points| {
        let r = resolution(T0, T0 + window, points);
        (r.tier_nanos, r.step_nanos, r.points())
    };
    assert_eq!(pick(5 * MINUTE, 100), (10 * SECOND, 10 * SECOND, 30));
    assert_eq!(pick(HOUR, 100), (MINUTE, MINUTE, 60));
    assert_eq!(pick(6 * HOUR, 100), (10 * MINUTE, 10 * MINUTE, 36));
    assert_eq!(pick(24 * HOUR, 100), (HOUR, HOUR, 24));
    let (tier, step, n) = pick(30 * 24 * HOUR, 100);
    assert_eq!((tier, step), (HOUR, 8 * HOUR));
    assert!(n <= 100);
    let r = resolution(T0 + 5 * SECOND, T0 + 25 * SECOND, 10);
    assert_eq!((r.from_unix_nanos, r.to_unix_nanos), (T0, T0 + 30 * SECOND));
    assert_eq!(
        r.bucket_starts().collect::<Vec<_>>(),
        [T0, T0 + 10 * SECOND, T0 + 20 * SECOND]
    );
    assert_eq!(resolution(T0, T0, 10).points(), 0);
    assert_eq!(resolution(T0, T0 - 1, 10).points(), 0);
}

proptest! {
    #[test]
    fn resolution_covers_the_window_within_the_points(
        start in 0u64..(u64::MAX / 2),
        len in 0u64..(1u64 << 62),
        max_points in 0usize..2_000,
    ) {
        let end = start + len;
        let r = resolution(start, end, max_points);
        prop_assert!(r.points() <= max_points.max(1));
        prop_assert!(r.from_unix_nanos <= start && r.to_unix_nanos >= end);
        prop_assert_eq!(r.from_unix_nanos % r.step_nanos, 0);
        prop_assert_eq!(r.step_nanos % r.tier_nanos, 0);
        prop_assert!(TIER_WIDTHS_NANOS.contains(&r.tier_nanos));
        prop_assert_eq!(r.point_starts().count(), r.points());
    }
}

#[test]
fn summaries_match_the_raw_spans() {
    let spans = spans(11, 50_000, 5 * MINUTE, 5, 4);
    let buckets = buckets_of(&spans, 10 * SECOND, &Limits::default());
    let res = resolution(T0, T0 + 5 * MINUTE, 1_000);
    let red = red_summary(&buckets, &res, GroupBy::Operation, |_| true);
    // Raw: durations per (service, operation, kind), and errors.
    let mut raw: BTreeMap<(&str, &str, i32), (Vec<u64>, u64)> = BTreeMap::new();
    for g in &spans {
        let e = raw.entry((&g.service, &g.operation, g.kind)).or_default();
        e.0.push(g.duration);
        e.1 += u64::from(g.is_error);
    }
    assert_eq!(red.len(), raw.len());
    for (row, ((service, operation, kind), (mut durs, errors))) in red.iter().zip(raw) {
        assert_eq!(
            (row.service.as_str(), row.operation.as_deref(), row.kind),
            (service, Some(operation), Some(kind))
        );
        assert_eq!((row.requests, row.errors), (durs.len() as u64, errors));
        assert!((row.rate - durs.len() as f64 / 300.0).abs() < 1e-9);
        durs.sort_unstable();
        for (q, got) in [
            (0.5, row.latency.p50_us),
            (0.9, row.latency.p90_us),
            (0.95, row.latency.p95_us),
            (0.99, row.latency.p99_us),
        ] {
            let v = exact_quantile(&durs, q) as f64;
            assert!(
                (got * 1_000.0 - v).abs() <= RELATIVE_ACCURACY * v + 0.5,
                "{service}/{operation} q={q}"
            );
        }
        assert_eq!(row.latency.max_us, crate::us(*durs.last().unwrap()));
    }
    // By service, only server spans (kind 2) of svc-1.
    let svc = red_summary(&buckets, &res, GroupBy::Service, |k| {
        k.kind == 2 && k.service == "svc-1"
    });
    let n = spans
        .iter()
        .filter(|g| g.kind == 2 && g.service == "svc-1")
        .count() as u64;
    assert_eq!(
        (
            svc.len(),
            svc[0].requests,
            svc[0].operation.as_deref(),
            svc[0].kind
        ),
        (1, n, None, None)
    );
}

#[test]
fn the_same_answer_from_any_tier() {
    let spans = spans(12, 20_000, 2 * HOUR, 4, 3);
    let fine = buckets_of(&spans, 10 * SECOND, &Limits::default());
    let res = resolution(T0, T0 + 3 * HOUR, 10);
    assert_eq!(res.tier_nanos, HOUR);
    let hourly = coarsen(&fine, HOUR).unwrap();
    let by_op = |b| red_summary(b, &res, GroupBy::Operation, |_| true);
    assert_eq!(by_op(&fine), by_op(&hourly));
    assert_eq!(edge_summary(&fine, &res), edge_summary(&hourly, &res));
}

#[test]
fn edges_count_every_call() {
    let spans = spans(13, 30_000, MINUTE, 4, 3);
    let buckets = buckets_of(&spans, 10 * SECOND, &Limits::default());
    let res = resolution(T0, T0 + MINUTE, 100);
    let edges = edge_summary(&buckets, &res);
    let mut raw: BTreeMap<(&str, &str), (u64, u64)> = BTreeMap::new();
    for g in &spans {
        if let Some(caller) = &g.caller {
            let e = raw.entry((caller, &g.service)).or_default();
            (e.0, e.1) = (e.0 + 1, e.1 + u64::from(g.is_error));
        }
    }
    let got: BTreeMap<(&str, &str), (u64, u64)> = edges
        .iter()
        .map(|e| ((e.parent.as_str(), e.child.as_str()), (e.calls, e.errors)))
        .collect();
    assert_eq!(got, raw);
}

#[test]
fn series_have_a_point_per_step() {
    let spans = spans(14, 10_000, 2 * MINUTE, 3, 2);
    let buckets = buckets_of(&spans, 10 * SECOND, &Limits::default());
    // Four minutes, one of them before the spans: zero points there.
    let res = resolution(T0 - MINUTE, T0 + 3 * MINUTE, 10);
    assert_eq!((res.step_nanos, res.points()), (MINUTE, 4));
    let series = red_series(&buckets, &res, GroupBy::Service, |k| k.service == "svc-0");
    assert_eq!(series.len(), 1);
    let points = &series[0].points;
    assert_eq!(points.len(), 4);
    let from = T0 - MINUTE;
    for (i, p) in points.iter().enumerate() {
        let start = from + i as u64 * MINUTE;
        let n = spans
            .iter()
            .filter(|g| g.service == "svc-0" && (start..start + MINUTE).contains(&g.start))
            .count() as u64;
        assert_eq!((p.start_us, p.requests), (start / 1_000, n), "point {i}");
        assert!((p.rate - n as f64 / 60.0).abs() < 1e-9);
    }
    assert_eq!(points[0].requests, 0);
    let json = serde_json::to_value(&series[0]).unwrap();
    let point = &json["points"][1];
    for key in [
        "startUs",
        "requests",
        "errors",
        "rate",
        "errorRate",
        "p50Us",
        "p95Us",
        "p99Us",
    ] {
        assert!(point.get(key).is_some(), "{key} in {point}");
    }
    assert_eq!(json["operation"], serde_json::Value::Null);
}
