use clew_proto::v1::{Span, Trace};

use super::*;
use crate::fixtures::*;

// ---- bottlenecks -------------------------------------------------------

fn path(b: &Bottlenecks) -> Vec<(String, f64, f64)> {
    b.critical_path
        .iter()
        .map(|s| (s.span_id.clone(), s.start_us / 1_000.0, s.end_us / 1_000.0))
        .collect()
}

#[test]
fn critical_path_follows_the_last_finishing_child() {
    let b = detect_bottlenecks(&fan_out());
    // users (10..40) overlaps orders (20..90) and is not on the path:
    // after returning to the root at 20 nothing finishes before 20.
    assert_eq!(
        path(&b),
        vec![
            (h(1), 0.0, 20.0),
            (h(3), 20.0, 30.0),
            (h(4), 30.0, 50.0),
            (h(3), 50.0, 60.0),
            (h(5), 60.0, 80.0),
            (h(3), 80.0, 90.0),
            (h(1), 90.0, 100.0),
        ]
    );
    let total: f64 = b.critical_path.iter().map(|s| s.end_us - s.start_us).sum();
    assert_eq!(total, b.duration_us);
    assert_eq!(b.duration_us, 100_000.0);
    assert_eq!(b.root_span_id, Some(h(1)));
}

#[test]
fn self_time_subtracts_the_union_of_children() {
    let b = detect_bottlenecks(&fan_out());
    let self_of = |id: u16| b.spans.iter().find(|s| s.span_id == h(id)).unwrap().self_us / 1_000.0;
    // root: 100 minus union(10..40, 20..90) = 100 - 80
    assert_eq!(self_of(1), 20.0);
    assert_eq!(self_of(2), 30.0);
    assert_eq!(self_of(3), 70.0 - 40.0);
    assert_eq!(self_of(4), 20.0);
    // Ranked: users' 30 ms first (tied with orders' 30 ms, broken by critical time).
    assert_eq!(b.spans[0].span_id, h(3));
    assert_eq!(b.spans[1].span_id, h(2));
    let db = b.services.iter().find(|s| s.service == "db").unwrap();
    assert_eq!(
        (db.spans, db.self_us, db.critical_us),
        (2, 40_000.0, 40_000.0)
    );
    assert!((db.share - 0.4).abs() < 1e-9 && (db.critical_share - 0.4).abs() < 1e-9);
    let users = b.services.iter().find(|s| s.service == "users").unwrap();
    assert_eq!(users.critical_us, 0.0);
    let ops = &b.operations;
    assert_eq!(ops[0].service, "db");
    assert_eq!(ops[0].operation.as_deref(), Some("select"));
    // Critical shares add up to 1.
    let sum: f64 = b.services.iter().map(|s| s.critical_share).sum();
    assert!((sum - 1.0).abs() < 1e-9);
}

#[test]
fn children_outliving_their_parent_are_clipped() {
    // An async child runs past its parent; another starts after it ended.
    let t = trace(vec![
        span(1, None, "api", "enqueue", 0, 10),
        span(2, Some(1), "worker", "send", 5, 50),
        span(3, Some(1), "worker", "late", 20, 30),
    ]);
    let b = detect_bottlenecks(&t);
    assert_eq!(path(&b), vec![(h(1), 0.0, 5.0), (h(2), 5.0, 10.0)]);
    let self_of = |id: u16| b.spans.iter().find(|s| s.span_id == h(id)).unwrap().self_us / 1_000.0;
    assert_eq!(self_of(1), 5.0);
    // The trace's duration is still wall-clock: 0..50.
    assert_eq!(b.duration_us, 50_000.0);
}

#[test]
fn sequential_children_touching_end_to_start_are_all_on_the_path() {
    let t = trace(vec![
        span(1, None, "api", "GET", 0, 30),
        span(2, Some(1), "api", "a", 0, 10),
        span(3, Some(1), "api", "b", 10, 20),
        span(4, Some(1), "api", "c", 20, 30),
    ]);
    let b = detect_bottlenecks(&t);
    assert_eq!(
        path(&b),
        vec![(h(2), 0.0, 10.0), (h(3), 10.0, 20.0), (h(4), 20.0, 30.0)]
    );
}

#[test]
fn empty_and_cyclic_traces_do_not_hang_or_panic() {
    let b = detect_bottlenecks(&trace(vec![]));
    assert!(b.critical_path.is_empty() && b.root_span_id.is_none());
    // 1 → 2 → 1: corrupt parent ids.
    let t = trace(vec![
        span(1, Some(2), "a", "x", 0, 10),
        span(2, Some(1), "a", "y", 1, 5),
    ]);
    let b = detect_bottlenecks(&t);
    assert!(b.root_span_id.is_some());
    let c = causal_order(&t);
    assert_eq!(c.spans_with_clocks, 0);
}

#[test]
fn a_deep_trace_does_not_overflow() {
    let spans: Vec<Span> = (1..=10_000u16)
        .map(|i| {
            span(
                i,
                (i > 1).then(|| i - 1),
                "svc",
                "op",
                u64::from(i),
                30_000 - u64::from(i),
            )
        })
        .collect();
    let b = detect_bottlenecks(&trace(spans));
    // Each span is critical before and after its child: 2 sections each,
    // one for the innermost.
    assert_eq!(b.critical_path.len(), 2 * 9_999 + 1);
}

// ---- causal order and skew -------------------------------------------

#[test]
fn consistent_clocks_need_no_correction() {
    let c = causal_order(&rpc(0));
    assert!(c.consistent);
    assert_eq!(c.spans_with_clocks, 2);
    // client start → server start, client start → server end (the server
    // end's own lookup), server end → client end
    assert_eq!(c.constraints, 3);
    assert_eq!(c.violation_count, 0);
    assert!(c.offsets.iter().all(|o| o.offset_us == 0.0));
    assert_eq!(c.offsets[0].service, "frontend");
    assert!(c.offsets[0].reference);
    let order: Vec<(String, ClockEvent)> = c
        .order
        .iter()
        .map(|e| (e.span_id.clone(), e.event))
        .collect();
    assert_eq!(
        order,
        vec![
            (h(1), ClockEvent::Start),
            (h(2), ClockEvent::Start),
            (h(2), ClockEvent::End),
            (h(1), ClockEvent::End)
        ]
    );
}

#[test]
fn a_clock_behind_is_detected_and_the_smallest_offset_proposed() {
    // backend's clock runs 25 ms behind: its span "starts" at -15 ms, before
    // the call that caused it.
    let c = causal_order(&rpc(-25));
    assert!(!c.consistent);
    assert_eq!(c.violation_count, 1);
    let v = &c.violations[0];
    assert_eq!(v.before.span_id, h(1));
    assert_eq!(v.before.event, ClockEvent::Start);
    assert_eq!(v.after.span_id, h(2));
    assert_eq!(v.after.event, ClockEvent::Start);
    assert_eq!(v.by_us, 15_000.0);
    // Raw timestamps are kept, exact.
    assert_eq!(v.after.wall_ns, (T0 - 15 * MS).to_string());
    // The smallest shift making it consistent: +15 ms (not the true 25 ms:
    // nothing in the trace proves more).
    let backend = c.offsets.iter().find(|o| o.service == "backend").unwrap();
    assert_eq!(backend.offset_us, 15_000.0);
    assert!(!backend.conflict && !backend.reference);
    assert!(
        backend.explanation.contains("behind"),
        "{}",
        backend.explanation
    );
    assert_eq!(c.residual_violations, 0);
    assert!(
        c.explanation.contains("backend by +15.000 ms"),
        "{}",
        c.explanation
    );
    // Causal order ignores the wall clock.
    assert_eq!(c.order[0].span_id, h(1));
}

#[test]
fn a_clock_ahead_gets_a_negative_offset() {
    // backend 30 ms ahead: its span ends at 120, after the client's end at 100.
    let c = causal_order(&rpc(30));
    assert_eq!(c.violation_count, 1);
    assert_eq!(c.violations[0].before.event, ClockEvent::End);
    assert_eq!(c.violations[0].before.span_id, h(2));
    let backend = c.offsets.iter().find(|o| o.service == "backend").unwrap();
    assert_eq!(backend.offset_us, -20_000.0);
    assert!(backend.explanation.contains("ahead"));
    assert_eq!(c.residual_violations, 0);
}

#[test]
fn a_server_longer_than_its_client_is_a_conflict() {
    // backend's span (10..90 shifted) stretched to 0..120: no single offset
    // puts it inside the client's 0..100.
    let mut t = rpc(0);
    t.spans[1].start_time_unix_nano = T0;
    t.spans[1].end_time_unix_nano = T0 + 120 * MS;
    t.spans[1].start_time_unix_nano -= MS;
    let c = causal_order(&t);
    let backend = c.offsets.iter().find(|o| o.service == "backend").unwrap();
    assert!(backend.conflict);
    assert!(c.residual_violations > 0);
}

#[test]
fn concurrent_branches_impose_no_order() {
    // frontend calls a and b in parallel; b's clock is 50 ms behind but b's
    // events are concurrent with a's, so only b's own call pair can tell.
    let t = trace(vec![
        clocked(
            span(1, None, "frontend", "GET /", 0, 100),
            "f",
            &[("f", 1)],
            &[("a", 2), ("b", 2), ("f", 5)],
        ),
        clocked(
            span(2, Some(1), "a", "x", 10, 60),
            "a",
            &[("a", 1), ("f", 2)],
            &[("a", 2), ("f", 2)],
        ),
        clocked(
            span(3, Some(1), "b", "y", 20 - 5, 80 - 5),
            "b",
            &[("b", 1), ("f", 3)],
            &[("b", 2), ("f", 3)],
        ),
    ]);
    let c = causal_order(&t);
    assert!(c.consistent, "{:?}", c.violations);
    // 3 pairs per call; none between a and b.
    assert_eq!(c.constraints, 6);
    let a_end = c
        .order
        .iter()
        .position(|e| e.span_id == h(2) && e.event == ClockEvent::End)
        .unwrap();
    let b_start = c
        .order
        .iter()
        .position(|e| e.span_id == h(3) && e.event == ClockEvent::Start)
        .unwrap();
    // Both orders are valid; the linear extension just has to respect f.
    let f_end = c
        .order
        .iter()
        .position(|e| e.span_id == h(1) && e.event == ClockEvent::End)
        .unwrap();
    assert!(a_end < f_end && b_start < f_end);
    // Now b's clock is 50 ms behind: b starts at -30, before frontend's start.
    let mut t2 = t.clone();
    t2.spans[2].start_time_unix_nano = T0 - 30 * MS;
    t2.spans[2].end_time_unix_nano = T0 + 30 * MS;
    let c = causal_order(&t2);
    assert_eq!(c.violation_count, 1);
    assert_eq!(
        c.offsets
            .iter()
            .find(|o| o.service == "a")
            .unwrap()
            .offset_us,
        0.0
    );
    assert_eq!(
        c.offsets
            .iter()
            .find(|o| o.service == "b")
            .unwrap()
            .offset_us,
        30_000.0
    );
}

#[test]
fn offsets_chain_through_services() {
    // f → b → c; b is 10 ms behind, c shares b's clock (same host).
    let t = trace(vec![
        clocked(
            span(1, None, "f", "GET", 100, 200),
            "f",
            &[("f", 1)],
            &[("b", 4), ("c", 2), ("f", 3)],
        ),
        clocked(
            span(2, Some(1), "b", "q", 95, 185),
            "b",
            &[("b", 1), ("f", 2)],
            &[("b", 4), ("c", 2), ("f", 2)],
        ),
        clocked(
            span(3, Some(2), "c", "r", 98, 180),
            "c",
            &[("b", 2), ("c", 1), ("f", 2)],
            &[("b", 2), ("c", 2), ("f", 2)],
        ),
    ]);
    let c = causal_order(&t);
    let off = |s: &str| c.offsets.iter().find(|o| o.service == s).unwrap().offset_us;
    assert_eq!(off("f"), 0.0);
    assert_eq!(off("b"), 5_000.0);
    // c starts at 98, before b's corrected start (100): c needs +2 ms.
    assert_eq!(off("c"), 2_000.0);
    assert_eq!(c.residual_violations, 0);
}

#[test]
fn spans_without_clocks_are_explained() {
    let c = causal_order(&fan_out());
    assert!(c.consistent);
    assert_eq!(c.spans_with_clocks, 0);
    assert!(c.explanation.contains("No span carries a vector clock"));
}

// ---- anomalies --------------------------------------------------------

#[test]
fn latency_outliers_are_scored_against_median_and_mad() {
    // db select takes 10, 11 or 12 ms, except trace 50: 200 ms.
    let traces = window(
        100,
        |i| if i == 50 { 200 } else { 10 + u64::from(i % 3) },
        |_| false,
        |_| false,
    );
    let found = detect_anomalies(&traces, &AnomalyConfig::default());
    let outliers: Vec<&Anomaly> = found
        .iter()
        .filter(|a| a.kind == AnomalyKind::LatencyOutlier)
        .collect();
    // db select and api GET (which waits on it) in trace 50, nothing else.
    assert_eq!(outliers.len(), 2, "{outliers:#?}");
    let db = outliers.iter().find(|a| a.service == "db").unwrap();
    assert_eq!(db.trace_id.as_deref(), Some(hex(&tid(50)).as_str()));
    assert_eq!(db.value, 200_000.0);
    assert_eq!(db.baseline.median_us, Some(11_000.0));
    assert_eq!(db.baseline.mad_us, Some(1_000.0));
    assert!((db.score - (200.0 - 11.0) / 1.4826).abs() < 1e-6);
    assert!(
        db.message
            .contains("took 200.00 ms where it usually takes 11.00 ms"),
        "{}",
        db.message
    );
}

#[test]
fn no_outliers_in_a_steady_window() {
    let traces = window(100, |i| 10 + u64::from(i % 3), |_| false, |_| false);
    assert!(detect_anomalies(&traces, &AnomalyConfig::default()).is_empty());
}

#[test]
fn error_spikes_are_found_in_their_bucket() {
    // 1 error in 100 calls as background; traces 70..80 fail 8 of 10.
    let traces = window(100, |_| 10, |i| i == 5 || (70..78).contains(&i), |_| false);
    let found = detect_anomalies(&traces, &AnomalyConfig::default());
    let spikes: Vec<&Anomaly> = found
        .iter()
        .filter(|a| a.kind == AnomalyKind::ErrorSpike)
        .collect();
    assert_eq!(spikes.len(), 1, "{spikes:#?}");
    let s = spikes[0];
    assert_eq!((s.service.as_str(), s.operation.as_str()), ("db", "select"));
    assert_eq!(s.value, 0.8);
    assert_eq!(s.baseline.samples, 90);
    assert!((s.baseline.rate.unwrap() - 1.0 / 90.0).abs() < 1e-9);
    assert!(
        s.message.contains("failed 8 of 10 calls (80%)"),
        "{}",
        s.message
    );
    // Errors are the first kind listed.
    assert_eq!(found[0].kind, AnomalyKind::ErrorSpike);
}

#[test]
fn a_missing_expected_child_is_reported() {
    let traces = window(50, |_| 10, |_| false, |i| i == 20);
    let found = detect_anomalies(&traces, &AnomalyConfig::default());
    let missing: Vec<&Anomaly> = found
        .iter()
        .filter(|a| a.kind == AnomalyKind::MissingChild)
        .collect();
    assert_eq!(missing.len(), 1, "{found:#?}");
    assert_eq!(missing[0].trace_id.as_deref(), Some(hex(&tid(20)).as_str()));
    assert_eq!(
        missing[0].message,
        "api \"GET\" did not call cache \"get\", which it called in 49 of its 50 runs (98%)."
    );
}

#[test]
fn a_new_call_edge_is_reported() {
    let mut traces = window(50, |_| 10, |_| false, |_| false);
    // The last trace's db select calls a new "audit" service.
    let last = traces.last_mut().unwrap();
    let t0 = last.spans[0].start_time_unix_nano;
    let mut audit = span(9, Some(2), "audit", "write", 0, 1);
    audit.trace_id = last.trace_id.clone();
    audit.start_time_unix_nano = t0 + 2 * MS;
    audit.end_time_unix_nano = t0 + 3 * MS;
    last.spans.push(audit);
    let found = detect_anomalies(&traces, &AnomalyConfig::default());
    let new: Vec<&Anomaly> = found
        .iter()
        .filter(|a| a.kind == AnomalyKind::NewEdge)
        .collect();
    assert_eq!(new.len(), 1, "{found:#?}");
    assert_eq!(new[0].service, "db");
    assert!(
        new[0].message.starts_with(
            "db \"select\" called audit \"write\", a call not seen in its 40 earlier runs"
        ),
        "{}",
        new[0].message
    );
}

// ---- anomaly groups ---------------------------------------------------

#[test]
fn a_recurring_latency_spike_is_one_group() {
    let found = detect_anomalies(&recurring_spike(), &AnomalyConfig::default());
    let groups = group_anomalies(&found, 5);
    // One group per operation the spike slows (db select, and api GET,
    // which waits on it), instead of 20 rows each.
    assert_eq!(found.len(), 40, "{found:#?}");
    assert_eq!(groups.len(), 2, "{groups:#?}");
    let db = groups.iter().find(|g| g.service == "db").unwrap();
    assert_eq!(db.kind, AnomalyKind::LatencyOutlier);
    assert_eq!(
        (db.operation.as_str(), db.span_kind),
        ("select", "internal")
    );
    assert_eq!(db.count, 20);
    // The baseline is the one every member broke: the operation's median
    // and MAD over the 200 spans of the window.
    let members: Vec<&Anomaly> = found.iter().filter(|a| a.service == "db").collect();
    assert!(members.iter().all(|a| a.baseline == db.baseline));
    assert_eq!(db.baseline.samples, 200);
    let median = db.baseline.median_us.unwrap();
    assert_eq!(median, 11_000.0);
    assert_eq!(db.worst_value, 200_000.0);
    assert_eq!(db.ratio, Some(200_000.0 / median));
    // First and last seen: the spans of traces 0 and 190.
    assert_eq!(db.first_us, (T0 + MS) / 1_000);
    assert_eq!(db.last_us, (T0 + 190_001 * MS) / 1_000);
    // Five examples, the worst first; equally bad, so the most recent first.
    let ex: Vec<&str> = db
        .examples
        .iter()
        .map(|a| a.trace_id.as_deref().unwrap())
        .collect();
    let want: Vec<String> = [190, 180, 170, 160, 150].map(|i| hex(&tid(i))).to_vec();
    assert_eq!(ex, want);
    assert!(db.examples.iter().all(|a| a.span_id.is_some()));
    assert_eq!(
        db.message,
        "db \"select\" (internal) was slow in 20 spans: up to 200.00 ms where it usually takes 11.00 ms, 18.2× (median of 200 spans)."
    );
}

#[test]
fn groups_are_per_span_kind_with_their_own_baseline() {
    // db select as a server span takes 10-12 ms, as a client span 100-102
    // ms; one server span takes 60 ms. Against one baseline for both kinds
    // it would look ordinary; against the server spans' own, it is slow.
    let mut traces = window(100, |i| 10 + u64::from(i % 3), |_| false, |_| false);
    for (i, t) in traces.iter_mut().enumerate() {
        let db = &mut t.spans[1];
        if i % 2 == 1 {
            db.kind = clew_proto::v1::SpanKind::Client as i32;
            db.end_time_unix_nano += 90 * MS;
        } else {
            db.kind = clew_proto::v1::SpanKind::Server as i32;
            if i == 40 {
                db.end_time_unix_nano += 50 * MS;
            }
        }
    }
    let found = detect_anomalies(&traces, &AnomalyConfig::default());
    let groups = group_anomalies(&found, 5);
    let db: Vec<&AnomalyGroup> = groups.iter().filter(|g| g.service == "db").collect();
    assert_eq!(db.len(), 1, "{groups:#?}");
    assert_eq!(db[0].span_kind, "server");
    assert_eq!(db[0].count, 1);
    assert_eq!(db[0].baseline.samples, 50);
    assert_eq!(db[0].examples[0].trace_id, Some(hex(&tid(40))));
    let median = db[0].baseline.median_us.unwrap();
    assert!((10_000.0..=12_000.0).contains(&median), "{median}");
}

#[test]
fn groups_are_sorted_by_severity_and_keep_every_member_counted() {
    // A recurring spike, and an error spike of db select.
    let mut traces = recurring_spike();
    for i in (150..160).chain([5]) {
        let db = &mut traces[i].spans[1];
        *db = err(db.clone());
    }
    let found = detect_anomalies(&traces, &AnomalyConfig::default());
    let groups = group_anomalies(&found, 0);
    let kinds: Vec<(AnomalyKind, &str)> = groups
        .iter()
        .map(|g| (g.kind, g.service.as_str()))
        .collect();
    // Errors first; then the latency groups, the worst score first (the
    // db spans are slower against a tighter baseline than api's).
    assert_eq!(kinds[0], (AnomalyKind::ErrorSpike, "db"));
    let latency: Vec<&AnomalyGroup> = groups
        .iter()
        .filter(|g| g.kind == AnomalyKind::LatencyOutlier)
        .collect();
    assert!(
        latency
            .windows(2)
            .all(|w| w[0].worst_score >= w[1].worst_score)
    );
    // Every anomaly is in exactly one group; no examples were asked for.
    assert_eq!(groups.iter().map(|g| g.count).sum::<usize>(), found.len());
    assert!(groups.iter().all(|g| g.examples.is_empty()));
    let spike = &groups[0];
    assert_eq!(
        spike.ratio,
        spike.baseline.rate.map(|r| spike.worst_value / r)
    );
    assert_eq!(
        spike.message,
        "db \"select\" (internal) failed far more often than usual in 1 stretch of the window: up to 50% of calls, against 0.6% of 180 calls."
    );
    assert!(group_anomalies(&[], 5).is_empty());
}

// ---- anomalies from roll-ups ------------------------------------------

/// The traces' spans counted into 10 s roll-up buckets, as a collector
/// does at ingest, and the resolution of at most 60 points over them.
fn rolled_up(traces: &[Trace]) -> (Vec<rollup::Bucket>, rollup::Resolution) {
    use rollup::{Bucket, Limits, SpanRecord, align_down};
    const WIDTH: u64 = 10_000_000_000;
    let mut buckets: std::collections::BTreeMap<u64, Bucket> = Default::default();
    let spans = || traces.iter().flat_map(|t| &t.spans);
    for s in spans() {
        let start = align_down(s.start_time_unix_nano, WIDTH);
        let b = buckets
            .entry(start)
            .or_insert_with(|| Bucket::new(start, WIDTH).unwrap());
        let record = SpanRecord {
            service: &s.service,
            operation: &s.name,
            kind: s.kind,
            is_error: is_error(s),
            duration_nanos: duration(s),
        };
        b.add_span(&record, &Limits::default());
    }
    let lo = spans().map(|s| s.start_time_unix_nano).min().unwrap();
    let hi = spans().map(|s| s.start_time_unix_nano).max().unwrap();
    let res = rollup::resolution(lo, hi + 1, 60);
    (buckets.into_values().collect(), res)
}

#[test]
fn window_latency_outliers_match_the_trace_detector() {
    let traces = recurring_spike();
    let (buckets, res) = rolled_up(&traces);
    let found = window_anomalies(&buckets, &res, &AnomalyConfig::default(), 5, |_| true);
    assert!(found.spikes.is_empty(), "{:#?}", found.spikes);
    // db select and api GET, 20 slow spans each, as from the traces.
    assert_eq!(found.latency.len(), 2, "{:#?}", found.latency);
    let exact = group_anomalies(&detect_anomalies(&traces, &AnomalyConfig::default()), 5);
    for g in &found.latency {
        let e = exact.iter().find(|e| e.service == g.service).unwrap();
        assert_eq!(
            (g.operation.as_str(), g.span_kind),
            (e.operation.as_str(), "internal")
        );
        assert_eq!(g.count, 20);
        assert_eq!(g.baseline.samples, 200);
        // Median within α of the exact one; MAD within α·(2m + MAD).
        let (m, mad) = (e.baseline.median_us.unwrap(), e.baseline.mad_us.unwrap());
        let (m_hat, mad_hat) = (g.baseline.median_us.unwrap(), g.baseline.mad_us.unwrap());
        assert!((m_hat - m).abs() <= 0.01 * m, "{m_hat} vs {m}");
        assert!(
            (mad_hat - mad).abs() <= 0.01 * (2.0 * m + mad) + 0.001,
            "{mad_hat} vs {mad}"
        );
        // The worst is the exact maximum; its score as the detector's.
        assert_eq!(us(g.max_nanos), e.worst_value);
        let group = g.clone().into_group(Vec::new());
        let score = (us(g.max_nanos) - m_hat) / (1.4826 * mad_hat);
        assert!((group.worst_score - score).abs() < 1e-9);
        // ...off the exact score by the MAD's error, at most.
        let off = (0.01 * (2.0 * m + mad) + 0.001) / mad + 0.01;
        assert!(
            (group.worst_score / e.worst_score - 1.0).abs() <= off,
            "{} vs {}",
            group.worst_score,
            e.worst_score
        );
        // First and last seen: the buckets of traces 0 and 190 (10 s).
        assert_eq!(group.first_us, T0 / 1_000);
        assert_eq!(group.last_us, (T0 + 190_000 * MS) / 1_000);
        // The worst five spans (200 ms) are at least the examples' floor,
        // which is above the threshold, which is above every usual span.
        assert!(g.examples_min_nanos <= 200 * MS + 2 * MS);
        assert!(g.examples_min_nanos > g.threshold_nanos);
        assert!(g.threshold_nanos > 14 * MS && g.threshold_nanos < 100 * MS);
    }
    let db = found.latency.iter().find(|g| g.service == "db").unwrap();
    let slow = &traces[190].spans[1];
    let ex = db.example(
        &slow.trace_id,
        &slow.span_id,
        slow.start_time_unix_nano,
        duration(slow),
    );
    assert_eq!(ex.trace_id, Some(hex(&tid(190))));
    assert_eq!(ex.time_us, slow.start_time_unix_nano / 1_000);
    assert_eq!(ex.value, 200_000.0);
    assert!(
        ex.message
            .starts_with("db \"select\" took 200.00 ms where it usually takes"),
        "{}",
        ex.message
    );
    let g = db.clone().into_group(vec![ex]);
    assert!(
        g.message
            .starts_with("db \"select\" (internal) was slow in 20 spans: up to 200.00 ms"),
        "{}",
        g.message
    );
    assert_eq!(g.examples.len(), 1);
    // Only the keys selected.
    let only_api = window_anomalies(&buckets, &res, &AnomalyConfig::default(), 5, |k| {
        k.service == "api"
    });
    assert_eq!(only_api.latency.len(), 1);
    assert_eq!(only_api.latency[0].service, "api");
}

#[test]
fn window_error_spikes_are_found_in_their_point() {
    // 600 traces a second apart (10 s points); db select fails in traces
    // 5 and 300, and 8 of the 10 traces 120..130.
    let traces = window(
        600,
        |_| 10,
        |i| i == 5 || i == 300 || (120..128).contains(&i),
        |_| false,
    );
    let (buckets, res) = rolled_up(&traces);
    assert_eq!((res.step_nanos, res.points()), (10_000 * MS, 60));
    let found = window_anomalies(&buckets, &res, &AnomalyConfig::default(), 5, |_| true);
    assert!(found.latency.is_empty(), "{:#?}", found.latency);
    assert_eq!(found.spikes.len(), 1, "{:#?}", found.spikes);
    let s = &found.spikes[0];
    assert_eq!(
        (s.service.as_str(), s.operation.as_str(), s.span_kind),
        ("db", "select", "internal")
    );
    assert_eq!(s.time_us, (T0 + 120_000 * MS) / 1_000);
    assert_eq!(s.value, 0.8);
    assert_eq!(s.baseline.samples, 590);
    assert!((s.baseline.rate.unwrap() - 2.0 / 590.0).abs() < 1e-12);
    assert_eq!(s.trace_id, None);
    assert!(
        s.message.contains(
            "failed 8 of 10 calls (80%) in this 10.00 s stretch, against 0.3% of 590 calls"
        ),
        "{}",
        s.message
    );
    // The same z-score rule as the trace detector's.
    let p0: f64 = 2.0 / 590.0;
    let z = (0.8 - p0) / (p0 * (1.0 - p0) / 10.0).sqrt();
    assert!((s.score - z).abs() < 1e-9);
}

#[test]
fn structural_anomalies_alone_come_from_the_traces() {
    let mut traces = recurring_spike();
    traces[20].spans.pop();
    let found = detect_structural(&traces, &AnomalyConfig::default());
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].kind, AnomalyKind::MissingChild);
    assert_eq!(found[0].trace_id, Some(hex(&tid(20))));
}

// ---- dependencies and RED ---------------------------------------------

#[test]
fn dependency_edges_count_calls_errors_and_percentiles() {
    // 100 traces; api → db latency 1..=100 ms (i+1), every 10th fails.
    let traces = window(100, |i| u64::from(i) + 1, |i| i % 10 == 0, |_| false);
    let g = dependency_graph(&traces, 0, 0);
    assert_eq!(g.traces, 100);
    let db = g.edges.iter().find(|e| e.child == "db").unwrap();
    assert_eq!(
        (db.parent.as_str(), db.call_count, db.error_count),
        ("api", 100, 10)
    );
    assert!((db.error_rate - 0.1).abs() < 1e-12);
    assert_eq!(db.latency.p50_us, 50_000.0);
    assert_eq!(db.latency.p95_us, 95_000.0);
    assert_eq!(db.latency.p99_us, 99_000.0);
    assert_eq!(g.edges.len(), 2);
    assert_eq!(
        g.services
            .iter()
            .map(|s| s.service.as_str())
            .collect::<Vec<_>>(),
        vec!["api", "cache", "db"]
    );
    // A window keeps only calls that started in it: traces 10..20.
    let g = dependency_graph(&traces, T0 + 10_000 * MS, T0 + 19_999 * MS);
    assert_eq!(
        g.edges.iter().find(|e| e.child == "db").unwrap().call_count,
        10
    );
}

#[test]
fn red_metrics_bucket_requests_errors_and_durations() {
    // 100 traces one second apart; errors on every 4th db call.
    let traces = window(100, |i| u64::from(i % 10) + 1, |i| i % 4 == 0, |_| false);
    let series = red_metrics(
        &traces,
        Some("db"),
        T0,
        T0 + 100 * 1_000 * MS,
        10 * 1_000 * MS,
    );
    // db as a whole, then db "select".
    assert_eq!(series.len(), 2);
    assert_eq!(series[0].operation, None);
    assert_eq!(series[1].operation.as_deref(), Some("select"));
    let s = &series[0];
    assert_eq!((s.requests, s.errors), (100, 25));
    assert_eq!(s.buckets.len(), 10);
    let b = &s.buckets[0];
    assert_eq!(b.start_us, T0 / 1_000);
    assert_eq!((b.requests, b.errors), (10, 3));
    assert!((b.rate - 1.0).abs() < 1e-12);
    assert_eq!(b.latency.p50_us, 5_000.0);
    assert_eq!(b.latency.p99_us, 10_000.0);
    // Internal spans of a service are not requests; api's entry span is.
    let all = red_metrics(&traces, None, T0, T0 + 100 * 1_000 * MS, 100 * 1_000 * MS);
    let names: Vec<(&str, Option<&str>)> = all
        .iter()
        .map(|s| (s.service.as_str(), s.operation.as_deref()))
        .collect();
    assert_eq!(
        names,
        vec![
            ("api", None),
            ("api", Some("GET")),
            ("cache", None),
            ("cache", Some("get")),
            ("db", None),
            ("db", Some("select"))
        ]
    );
    assert_eq!(all[0].requests, 100);
}

// ---- cost ---------------------------------------------------------------

/// A 10,000-span trace with vector clocks: a root on node r, 99 calls to
/// worker nodes w0..w4, each making 100 calls to store nodes s0..s9.
fn big_clocked() -> Trace {
    let mut spans = Vec::with_capacity(10_000);
    let mut root = span(1, None, "gateway", "GET /bulk", 0, 2_000);
    root.node = "r".into();
    root.clock_start = clock(&[("r", 1)]);
    let mut r_counter = 1;
    let mut counters = std::collections::HashMap::<String, u64>::new();
    let mut id = 2u16;
    let mut root_end: Vec<(String, u64)> = Vec::new();
    for c in 0..99u64 {
        r_counter += 1; // send
        let w = format!("w{}", c % 5);
        let wc = counters.entry(w.clone()).or_default();
        *wc += 1;
        let w_start = *wc;
        let mut child = span(
            id,
            Some(1),
            &format!("worker-{}", c % 5),
            "batch",
            10 + c * 19,
            10 + c * 19 + 18,
        );
        child.node = w.clone();
        child.clock_start = clock(&[("r", r_counter), (&w, w_start)]);
        let cid = id;
        id += 1;
        let mut last_store: Vec<(String, u64)> = Vec::new();
        for g in 0..100u64 {
            let sn = format!("s{}", g % 10);
            let wc = counters.entry(w.clone()).or_default();
            *wc += 1;
            let w_send = *wc;
            let sc = counters.entry(sn.clone()).or_default();
            *sc += 2;
            let mut sp = span(id, Some(cid), "store", "get", 0, 0);
            let from = (10 + c * 19) * 1_000 + g * 170;
            sp.start_time_unix_nano = T0 + from * 1_000;
            sp.end_time_unix_nano = T0 + (from + 160) * 1_000;
            sp.node = sn.clone();
            sp.clock_start = clock(&[("r", r_counter), (&w, w_send), (&sn, *sc - 1)]);
            sp.clock_end = clock(&[("r", r_counter), (&w, w_send), (&sn, *sc)]);
            last_store.push((sn, *sc));
            spans.push(sp);
            id += 1;
        }
        let wc = counters.entry(w.clone()).or_default();
        *wc += 1;
        let mut end: Vec<(String, u64)> = vec![("r".into(), r_counter), (w.clone(), *wc)];
        last_store.sort();
        last_store.dedup_by(|a, b| a.0 == b.0);
        end.extend(last_store.iter().cloned());
        let end_ref: Vec<(&str, u64)> = end.iter().map(|(n, c)| (n.as_str(), *c)).collect();
        child.clock_end = clock(&end_ref);
        root_end.extend(end.into_iter().filter(|(n, _)| n != "r"));
        spans.push(child);
    }
    r_counter += 1;
    root_end.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    root_end.dedup_by(|a, b| a.0 == b.0);
    root_end.push(("r".into(), r_counter));
    let end_ref: Vec<(&str, u64)> = root_end.iter().map(|(n, c)| (n.as_str(), *c)).collect();
    root.clock_end = clock(&end_ref);
    spans.insert(0, root);
    trace(spans)
}

/// Cost of analysing a 10,000-span trace and of a window of 1,000 traces
/// (figures in docs/PERFORMANCE.md):
/// `cargo test --release -p clew-collector --lib analysis::tests::analysis_cost -- --ignored --nocapture`
#[test]
#[ignore = "load measurement"]
fn analysis_cost() {
    use std::time::Instant;
    let t = big_clocked();
    assert_eq!(t.spans.len(), 10_000);
    let best = |f: &mut dyn FnMut()| {
        (0..5)
            .map(|_| {
                let s = Instant::now();
                f();
                s.elapsed()
            })
            .min()
            .unwrap()
    };
    let b = detect_bottlenecks(&t);
    let c = causal_order(&t);
    assert!(c.consistent, "{}", c.explanation);
    let json = serde_json::to_vec(&(b, c)).unwrap();
    println!(
        "bottlenecks, 10k spans: {:?}",
        best(&mut || {
            detect_bottlenecks(&t);
        })
    );
    println!(
        "causal order, 10k spans: {:?}",
        best(&mut || {
            causal_order(&t);
        })
    );
    println!(
        "JSON of both: {} bytes, {:?}",
        json.len(),
        best(&mut || {
            serde_json::to_vec(&(detect_bottlenecks(&t), causal_order(&t))).unwrap();
        })
    );
    let traces = window(
        1_000,
        |i| 10 + u64::from(i % 7),
        |i| i % 50 == 0,
        |i| i % 100 == 0,
    );
    println!(
        "anomalies, 1,000 traces × 3 spans: {:?}",
        best(&mut || {
            detect_anomalies(&traces, &AnomalyConfig::default());
        })
    );
    println!(
        "dependency graph, same: {:?}",
        best(&mut || {
            dependency_graph(&traces, 0, 0);
        })
    );
    println!(
        "RED, same, 60 buckets: {:?}",
        best(&mut || {
            red_metrics(
                &traces,
                None,
                T0,
                T0 + 1_000 * 1_000 * MS,
                1_000 * 1_000 * MS / 60,
            );
        })
    );
}

#[test]
fn offsets_take_every_pair_into_account_not_only_placed_neighbours() {
    use std::collections::BTreeMap;
    // r is the reference. Directly from r: a ≥ 3 (and ≤ 43), c ≥ −17 (and
    // ≤ 3). Between them: a − c ≥ 30. Setting a first to the value nearest
    // 0 that r allows (3) would leave c no room (c ≤ −27 < −17); the
    // solution nearest 0 has c = −17 and so a = 13.
    let need: BTreeMap<(&str, &str), i128> = BTreeMap::from([
        (("r", "a"), 3),
        (("a", "r"), -43),
        (("r", "c"), -17),
        (("c", "r"), -3),
        (("c", "a"), 30),
    ]);
    let o = super::causal::solve_offsets("r", &["r", "a", "c"], &need).expect("solvable");
    assert_eq!((o["r"], o["a"], o["c"]), (0, 13, -17));
    for (&(x, y), &g) in &need {
        assert!(o[y] - o[x] >= g, "{x} → {y}");
    }
    // Each already consistent service stays at 0.
    let easy = BTreeMap::from([(("r", "a"), -5), (("a", "r"), -5)]);
    let o = super::causal::solve_offsets("r", &["r", "a"], &easy).unwrap();
    assert_eq!(o["a"], 0);
    // Pairs no offsets satisfy: a − r ≥ 10 and r − a ≥ 0.
    let contradiction = BTreeMap::from([(("r", "a"), 10), (("a", "r"), 0)]);
    assert!(super::causal::solve_offsets("r", &["r", "a"], &contradiction).is_none());
}
