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
    let storage = Arc::new(MemoryStorage::new(10_000));
    crate::testing::store_rollups(storage.as_ref(), &traces).await;
    for t in traces {
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
    assert_eq!(v["data"]["traces"], 100);
    let anomalies = v["data"]["anomalies"].as_array().unwrap();
    assert_eq!(anomalies.len(), 1, "{v}");
    assert_eq!(anomalies[0]["kind"], "latencyOutlier");
    assert_eq!(anomalies[0]["service"], "db");

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
    assert_eq!(g["baseline"]["medianUs"], 11_000.0);
    assert_eq!(g["baseline"]["samples"], 200);
    assert_eq!(g["worstValue"], 200_000.0);
    assert_eq!(g["ratio"], 200.0 / 11.0);
    assert_eq!(g["firstUs"], (T0 + MS) / 1_000);
    assert_eq!(g["lastUs"], (T0 + 190_001 * MS) / 1_000);
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
