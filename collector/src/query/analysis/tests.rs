use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use serde_json::Value;

use clew_analysis::fixtures::*;
use clew_analysis::hex;
use clew_proto::v1::Trace;

use crate::query::tests::get;
use crate::storage::Storage;
use crate::storage::memory::MemoryStorage;

async fn app_with(traces: Vec<Trace>) -> Router {
    let n = traces.len();
    app_keeping(traces, n).await
}

/// The query API over the roll-ups of every trace, with only the first
/// `kept` traces stored (the others sampled out).
async fn app_keeping(traces: Vec<Trace>, kept: usize) -> Router {
    let storage = Arc::new(MemoryStorage::new(10_000));
    crate::testing::store_rollups(storage.as_ref(), &traces).await;
    for t in traces.into_iter().take(kept) {
        storage.store_trace(t).await.unwrap();
    }
    crate::query::router(storage)
}

fn error_msg(v: &Value) -> &str {
    v["errors"][0]["msg"].as_str().unwrap()
}

#[tokio::test]
async fn trace_analysis_has_critical_path_and_causal_order() {
    let app = app_with(vec![rpc(-25)]).await;
    let (status, v) = get(&app, &format!("/api/clew/traces/{}/analysis", hex(&TRACE))).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let d = &v["data"];
    assert_eq!(d["traceID"], hex(&TRACE));
    assert_eq!(d["spans"], 2);
    // The backend's span starts before the root here (skewed clock), so
    // the trace starts at -15 ms and lasts 115 ms.
    assert_eq!(d["bottlenecks"]["durationUs"], 115_000.0);
    assert_eq!(d["bottlenecks"]["rootSpanID"], h(1));
    let path: Vec<&str> = d["bottlenecks"]["criticalPath"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["spanID"].as_str().unwrap())
        .collect();
    // The child is clipped to its parent (0..65): it starts the path.
    assert_eq!(path, vec![h(2), h(1)]);
    assert_eq!(d["causal"]["consistent"], false);
    assert_eq!(d["causal"]["violationCount"], 1);
    assert_eq!(
        d["causal"]["violations"][0]["after"]["wallNs"],
        (T0 - 15 * MS).to_string()
    );
    assert_eq!(d["causal"]["offsets"][1]["service"], "backend");
    assert_eq!(d["causal"]["offsets"][1]["offsetUs"], 15_000.0);
    assert_eq!(d["causal"]["order"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn errors_follow_the_jaeger_conventions() {
    let app = app_with(vec![fan_out()]).await;
    let (status, v) = get(
        &app,
        "/api/clew/traces/00000000000000000000000000000abc/analysis",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_msg(&v), "trace not found");
    let (status, v) = get(&app, "/api/clew/traces/xyz/analysis").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        error_msg(&v).starts_with("unable to parse param 'traceID'"),
        "{v}"
    );
    for (uri, param) in [
        ("/api/clew/anomalies?lookback=soon", "lookback"),
        ("/api/clew/anomalies?limit=-1", "limit"),
        ("/api/clew/red?step=1ms&lookback=1h", "step"),
        ("/api/clew/red?step=0", "step"),
        ("/api/clew/red?end=x", "end"),
        ("/api/clew/dependencies?endTs=yesterday", "endTs"),
        ("/api/clew/dependencies?lookback=1h", "lookback"),
    ] {
        let (status, v) = get(&app, uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {v}");
        let msg = error_msg(&v);
        assert!(
            msg.starts_with(&format!("unable to parse param '{param}'")),
            "{uri}: {msg}"
        );
        assert_eq!(v["errors"][0]["code"], 400);
    }
}

#[tokio::test]
async fn window_routes_answer_over_stored_traces() {
    let traces = window(
        100,
        |i| if i == 50 { 200 } else { 10 + u64::from(i % 3) },
        |i| i % 10 == 0,
        |_| false,
    );
    let app = app_with(traces).await;
    // The window: T0 .. T0 + 100 s, in µs / ms as each route takes it.
    let end_us = (T0 + 100_000 * MS) / 1_000;
    let (status, v) = get(
        &app,
        &format!("/api/clew/anomalies?service=db&end={end_us}&lookback=5m"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    // New and missing calls from the window's 100 traces, all of them.
    assert_eq!(v["data"]["structuralFromTraces"], 100);
    assert_eq!(v["data"]["structuralTruncated"], false);
    assert!(v["data"].get("truncated").is_none(), "{v}");
    // Latency and errors from the roll-ups: 10 s points over 5 minutes.
    assert_eq!(v["data"]["stepUs"], 10_000_000);
    let anomalies = v["data"]["anomalies"].as_array().unwrap();
    assert_eq!(anomalies.len(), 1, "{v}");
    assert_eq!(anomalies[0]["kind"], "latencyOutlier");
    assert_eq!(anomalies[0]["service"], "db");
    assert_eq!(anomalies[0]["traceID"], hex(&tid(50)));

    let (status, v) = get(
        &app,
        &format!("/api/clew/red?service=db&end={end_us}&lookback=100s&step=10s"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let series = v["data"]["series"].as_array().unwrap();
    assert_eq!(series.len(), 2);
    assert_eq!(series[0]["requests"], 100);
    assert_eq!(series[0]["errors"], 10);
    assert_eq!(series[0]["buckets"].as_array().unwrap().len(), 10);
    assert_eq!(v["data"]["stepUs"], 10_000_000);

    let (status, v) = get(
        &app,
        &format!(
            "/api/clew/dependencies?endTs={}&lookback=200000",
            end_us / 1_000
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let edges = v["data"]["edges"].as_array().unwrap();
    let db = edges.iter().find(|e| e["child"] == "db").unwrap();
    assert_eq!(db["parent"], "api");
    assert_eq!(db["callCount"], 100);
    assert_eq!(db["errorCount"], 10);
    assert_eq!(db["errorRate"], 0.1);
    // From the sketch: within its 1 % relative error of the exact 11 ms.
    let p50 = db["latency"]["p50Us"].as_f64().unwrap();
    assert!((p50 - 11_000.0).abs() <= 110.0, "{p50}");
    assert_eq!(v["data"]["services"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn red_and_dependencies_count_every_trace_of_a_long_window() {
    // 1,200 traces a second apart: every one is counted.
    let app = app_with(window(1_200, |_| 10, |i| i % 4 == 0, |_| false)).await;
    let end_us = (T0 + 1_200_000 * MS) / 1_000;
    let (status, v) = get(
        &app,
        &format!("/api/clew/red?service=db&end={end_us}&lookback=1200s&step=60s"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let all = &v["data"]["series"][0];
    assert_eq!(all["operation"], Value::Null);
    assert_eq!(all["requests"], 1_200);
    assert_eq!(all["errors"], 300);
    // One point a minute; T0 is 20 s past a minute: the window widens to
    // whole minutes, 21 of them.
    let points = all["buckets"].as_array().unwrap();
    assert_eq!(points.len(), 21, "{v}");
    let counts: Vec<u64> = points
        .iter()
        .map(|p| p["requests"].as_u64().unwrap())
        .collect();
    assert_eq!(counts[0], 40);
    assert!(counts[1..20].iter().all(|&n| n == 60), "{counts:?}");
    assert_eq!(counts[20], 20);
    assert_eq!(points[1]["rate"], 1.0);
    assert_eq!(v["data"]["stepUs"], 60_000_000);
    assert_eq!(v["data"]["fromUs"], (T0 - 20_000 * MS) / 1_000);
    assert!(v["data"].get("truncated").is_none(), "{v}");
    let (_, v) = get(
        &app,
        &format!(
            "/api/clew/dependencies?endTs={}&lookback=1200000",
            end_us / 1_000
        ),
    )
    .await;
    let db = &v["data"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["child"] == "db")
        .cloned()
        .unwrap();
    assert_eq!(db["callCount"], 1_200);
    assert_eq!(db["errorCount"], 300);
}

#[tokio::test]
async fn anomalies_come_grouped_with_their_worst_examples() {
    // Every tenth db select takes 200 ms instead of 10-12: 20 slow spans
    // (and 20 slow api GETs waiting on them).
    let traces = recurring_spike();
    let app = app_with(traces).await;
    let end_us = (T0 + 200_000 * MS) / 1_000;
    let (status, v) = get(
        &app,
        &format!("/api/clew/anomalies?service=db&end={end_us}&lookback=5m&limit=3"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let d = &v["data"];
    // The single anomalies as before, cut at `limit`...
    assert_eq!(d["anomalies"].as_array().unwrap().len(), 3, "{v}");
    assert_eq!(d["anomalies"][0]["spanKind"], "internal");
    // ...and every one of them counted in one group.
    let groups = d["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "{v}");
    let g = &groups[0];
    assert_eq!(g["kind"], "latencyOutlier");
    assert_eq!(
        (&g["service"], &g["operation"], &g["spanKind"]),
        (&"db".into(), &"select".into(), &"internal".into())
    );
    assert_eq!(g["count"], 20);
    // From the roll-ups' sketch: the median within 1 % of the exact 11 ms
    // (the worst is the exact maximum).
    let median = g["baseline"]["medianUs"].as_f64().unwrap();
    assert!((median - 11_000.0).abs() <= 110.0, "{median}");
    assert_eq!(g["baseline"]["samples"], 200);
    assert_eq!(g["worstValue"], 200_000.0);
    assert_eq!(g["ratio"], 200_000.0 / median);
    // First and last seen, to the 10 s bucket: traces 0 and 190.
    assert_eq!(g["firstUs"], T0 / 1_000);
    assert_eq!(g["lastUs"], (T0 + 190_000 * MS) / 1_000);
    let examples = g["examples"].as_array().unwrap();
    assert_eq!(examples.len(), crate::query::analysis::GROUP_EXAMPLES);
    assert_eq!(examples[0]["traceID"], hex(&tid(190)));
    assert!(examples.iter().all(|e| e["spanID"].is_string()));
    assert!(
        g["message"]
            .as_str()
            .unwrap()
            .starts_with("db \"select\" (internal) was slow in 20 spans"),
        "{g}"
    );
}

/// 3,000 traces a second apart (50 minutes): db select takes 10-12 ms,
/// every tenth trace 200 ms; it fails in every trace of one early minute
/// (280..340, long before the most recent 1,000) and once in a hundred
/// otherwise.
fn long_window() -> Vec<Trace> {
    window(
        3_000,
        |i| {
            if i % 10 == 0 {
                200
            } else {
                10 + u64::from(i % 3)
            }
        },
        |i| (280..340).contains(&i) || i % 100 == 50,
        |_| false,
    )
}

#[tokio::test]
async fn anomalies_cover_every_span_of_a_long_window() {
    let traces = long_window();
    // The exact figures, from every trace.
    let cfg = clew_analysis::AnomalyConfig {
        limit: usize::MAX,
        ..Default::default()
    };
    let exact = clew_analysis::group_anomalies(&clew_analysis::detect_anomalies(&traces, &cfg), 5);
    let exact_db = exact
        .iter()
        .find(|g| g.kind == clew_analysis::AnomalyKind::LatencyOutlier && g.service == "db")
        .unwrap();
    assert_eq!(exact_db.count, 300);
    let app = app_with(traces).await;
    let end_us = (T0 + 3_000_000 * MS) / 1_000;
    let (status, v) = get(
        &app,
        &format!("/api/clew/anomalies?service=db&end={end_us}&lookback=50m"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let d = &v["data"];
    // Structural kinds from the most recent 1,000 traces, and saying so.
    assert_eq!(d["structuralFromTraces"], 1_000);
    assert_eq!(d["structuralTruncated"], true);
    assert_eq!(d["structuralFromUs"], (T0 + 2_000_000 * MS) / 1_000);
    // Roll-ups: 1 min points; T0 is 20 s past a minute.
    assert_eq!(d["stepUs"], 60_000_000);
    assert_eq!(d["fromUs"], (T0 - 20_000 * MS) / 1_000);
    let groups = d["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{v}");

    // The error burst, 2,000 traces before the most recent 1,000: one
    // spiking minute, 60 of 60 calls failed against 30 of the other 2,940.
    let spike = &groups[0];
    assert_eq!(spike["kind"], "errorSpike");
    assert_eq!(
        (&spike["service"], &spike["operation"]),
        (&"db".into(), &"select".into())
    );
    assert_eq!(spike["count"], 1);
    assert_eq!(spike["worstValue"], 1.0);
    assert_eq!(spike["baseline"]["samples"], 2_940);
    assert_eq!(spike["baseline"]["rate"], 30.0 / 2_940.0);
    assert_eq!(spike["firstUs"], (T0 + 280_000 * MS) / 1_000);
    let ex = &spike["examples"][0];
    assert_eq!(
        ex["traceID"],
        hex(&tid(339)),
        "the most recent error span of the minute"
    );
    assert!(
        spike["message"]
            .as_str()
            .unwrap()
            .contains("up to 100% of calls, against 1.0% of 2940 calls"),
        "{spike}"
    );

    // Latency: every tenth of the 3,000 db selects, not of the last 1,000.
    let slow = &groups[1];
    assert_eq!(slow["kind"], "latencyOutlier");
    // No duration lies within the sketch's 2 % of the threshold: exact.
    assert_eq!(slow["count"], exact_db.count);
    assert_eq!(slow["baseline"]["samples"], 3_000);
    let (m, mad) = (
        exact_db.baseline.median_us.unwrap(),
        exact_db.baseline.mad_us.unwrap(),
    );
    let m_hat = slow["baseline"]["medianUs"].as_f64().unwrap();
    let mad_hat = slow["baseline"]["madUs"].as_f64().unwrap();
    assert!((m_hat - m).abs() <= 0.01 * m, "median {m_hat} vs {m}");
    assert!(
        (mad_hat - mad).abs() <= 0.01 * (2.0 * m + mad) + 0.001,
        "MAD {mad_hat} vs {mad}"
    );
    assert_eq!(slow["worstValue"], 200_000.0);
    // From the first minute (trace 0) to the last (trace 2990).
    assert_eq!(slow["firstUs"], (T0 - 20_000 * MS) / 1_000);
    assert_eq!(slow["lastUs"], (T0 + 2_980_000 * MS) / 1_000);
    // The examples are real slow spans from the index: equally slow, so
    // the most recent first.
    let ids: Vec<&str> = slow["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["traceID"].as_str().unwrap())
        .collect();
    let want: Vec<String> = [2990, 2980, 2970, 2960, 2950]
        .map(|i| hex(&tid(i)))
        .to_vec();
    assert_eq!(ids, want);
    for e in slow["examples"].as_array().unwrap() {
        assert_eq!(e["value"], 200_000.0);
        assert_eq!(e["spanID"], h(2));
    }
    assert!(
        slow["message"]
            .as_str()
            .unwrap()
            .starts_with("db \"select\" (internal) was slow in 300 spans: up to 200.00 ms"),
        "{slow}"
    );
}

#[tokio::test]
async fn every_service_has_its_groups_and_examples_survive_sampling_gaps() {
    // api GET waits on db select: 300 slow spans too. Only the traces
    // before the most recent 1,000 are stored (the others "sampled out"),
    // but their spans are in the roll-ups: the groups count them all and
    // list the examples the index still has.
    let traces = long_window();
    let app = app_keeping(traces, 2_000).await;
    let end_us = (T0 + 3_000_000 * MS) / 1_000;
    let (status, v) = get(
        &app,
        &format!("/api/clew/anomalies?end={end_us}&lookback=50m"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let groups = v["data"]["groups"].as_array().unwrap();
    let keys: Vec<(&str, &str)> = groups
        .iter()
        .map(|g| (g["kind"].as_str().unwrap(), g["service"].as_str().unwrap()))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("errorSpike", "db"),
            ("latencyOutlier", "api"),
            ("latencyOutlier", "db")
        ],
        "{v}"
    );
    for g in &groups[1..] {
        assert_eq!(g["count"], 300, "{g}");
        let ids: Vec<&str> = g["examples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["traceID"].as_str().unwrap())
            .collect();
        let want: Vec<String> = [1990, 1980, 1970, 1960, 1950]
            .map(|i| hex(&tid(i)))
            .to_vec();
        assert_eq!(ids, want, "{g}");
    }
    // The single anomalies: the spike, then each group's examples.
    let singles = v["data"]["anomalies"].as_array().unwrap();
    assert_eq!(singles.len(), 11, "{v}");
    assert_eq!(singles[0]["kind"], "errorSpike");
    assert_eq!(v["data"]["structuralFromTraces"], 1_000);
}

#[tokio::test]
async fn examples_fall_back_to_the_threshold_when_the_worst_were_not_kept() {
    // db select takes 10-12 ms; every tenth trace 200 ms in the first
    // half of the window, 400 ms in the second, whose traces were not
    // kept: the roll-ups count all ten, the index has the 200 ms ones.
    let traces = window(
        100,
        |i| match i {
            i if i % 10 != 0 => 10 + u64::from(i % 3),
            i if i < 50 => 200,
            _ => 400,
        },
        |_| false,
        |_| false,
    );
    let app = app_keeping(traces, 50).await;
    let end_us = (T0 + 100_000 * MS) / 1_000;
    let (status, v) = get(
        &app,
        &format!("/api/clew/anomalies?service=db&end={end_us}&lookback=5m"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let g = &v["data"]["groups"][0];
    assert_eq!(g["count"], 10, "{v}");
    assert_eq!(g["worstValue"], 400_000.0);
    let examples = g["examples"].as_array().unwrap();
    let ids: Vec<&str> = examples
        .iter()
        .map(|e| e["traceID"].as_str().unwrap())
        .collect();
    let want: Vec<String> = [40, 30, 20, 10, 0].map(|i| hex(&tid(i))).to_vec();
    assert_eq!(ids, want);
    assert!(examples.iter().all(|e| e["value"] == 200_000.0));
}
