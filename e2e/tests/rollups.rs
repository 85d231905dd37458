#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Roll-ups across two collector processes on one real `redis-server`:
//! 10,000 three-service traces (frontend → checkout → db), half sent over
//! OTLP/gRPC to each collector, children exported before their parents.
//! Both collectors' query APIs then answer the RED and dependency figures
//! of all 10,000, as computed from the spans sent: every collector's parts
//! are merged, nothing is capped.

use std::time::Duration;

use clew_e2e::http::HttpClient;
use clew_e2e::proc::{Proc, free_port, wait_for};
use clew_storage::testing::RedisServer;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, trace_service_client::TraceServiceClient,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, status};
use serde_json::Value as Json;

const TRACES: u32 = 10_000;
/// Traces per export request.
const PER_REQUEST: u32 = 50;
/// Every 20th checkout fails (and its db call with it every 40th).
const CHECKOUT_ERRORS: u32 = TRACES / 20;
const DB_ERRORS: u32 = TRACES / 40;

struct Collector {
    _proc: Proc,
    grpc: u16,
    query: String,
}

fn collector(dir: &std::path::Path, name: &str, redis: &str) -> Collector {
    let (grpc, query, ops) = (free_port(), free_port(), free_port());
    let env = [
        ("CLEW_GRPC_ADDR", format!("127.0.0.1:{grpc}")),
        ("CLEW_HTTP_ADDR", format!("127.0.0.1:{}", free_port())),
        ("CLEW_QUERY_ADDR", format!("127.0.0.1:{query}")),
        ("CLEW_OPS_ADDR", format!("127.0.0.1:{ops}")),
        ("CLEW_STORAGE", "redis".to_string()),
        ("CLEW_REDIS_URL", redis.to_string()),
        ("CLEW_DATA_DIR", dir.join(name).display().to_string()),
        ("CLEW_IDLE_WINDOW", "300ms".to_string()),
        ("CLEW_ROLLUP_FLUSH_INTERVAL", "1s".to_string()),
    ];
    let env: Vec<(String, String)> = env.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    let log = dir.join(format!("{name}.log"));
    Collector {
        _proc: Proc::spawn(name, "clew-collector", &[], &env, Some(&log)).unwrap(),
        grpc,
        query: format!("http://127.0.0.1:{query}"),
    }
}

fn service(name: &str, spans: Vec<Span>) -> ResourceSpans {
    let attr = KeyValue {
        key: "service.name".into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(name.into())),
        }),
        ..Default::default()
    };
    ResourceSpans {
        resource: Some(Resource {
            attributes: vec![attr],
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            spans,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn error_status(fails: bool) -> Option<Status> {
    fails.then(|| Status {
        code: status::StatusCode::Error as i32,
        ..Default::default()
    })
}

/// Trace `n`: frontend GET /buy (server) → checkout place (server,
/// 10 + n % 50 ms) → db INSERT (client, 2 + n % 5 ms). Spans of the three
/// services, children first.
fn trace(n: u32, base: u64) -> [(&'static str, Span); 3] {
    let mut trace_id = vec![0u8; 16];
    trace_id[12..].copy_from_slice(&(n + 1).to_be_bytes());
    let id = |k: u32| ((u64::from(n) << 8) | u64::from(k)).to_be_bytes().to_vec();
    let t0 = base + u64::from(n) * 1_000_000;
    let ms = 1_000_000u64;
    let span = |k: u32, parent: Option<u32>, name: &str, kind: i32, dur_ms: u64| Span {
        trace_id: trace_id.clone(),
        span_id: id(k),
        parent_span_id: parent.map(id).unwrap_or_default(),
        name: name.into(),
        kind,
        start_time_unix_nano: t0 + u64::from(k) * ms,
        end_time_unix_nano: t0 + u64::from(k) * ms + dur_ms * ms,
        ..Default::default()
    };
    let mut db = span(3, Some(2), "INSERT", 3, 2 + u64::from(n % 5));
    db.status = error_status(n.is_multiple_of(40));
    let mut checkout = span(2, Some(1), "place", 2, 10 + u64::from(n % 50));
    checkout.status = error_status(n.is_multiple_of(20));
    let front = span(1, None, "GET /buy", 2, 70);
    [("db", db), ("checkout", checkout), ("frontend", front)]
}

/// Requests of [`PER_REQUEST`] traces, each split by service.
fn requests(traces: &[u32], base: u64) -> Vec<ExportTraceServiceRequest> {
    traces
        .chunks(PER_REQUEST as usize)
        .map(|chunk| {
            let mut by: [(&str, Vec<Span>); 3] =
                [("db", vec![]), ("checkout", vec![]), ("frontend", vec![])];
            for &n in chunk {
                for (i, (_, s)) in trace(n, base).into_iter().enumerate() {
                    by[i].1.push(s);
                }
            }
            ExportTraceServiceRequest {
                resource_spans: by.into_iter().map(|(n, s)| service(n, s)).collect(),
            }
        })
        .collect()
}

async fn send(grpc: u16, reqs: Vec<ExportTraceServiceRequest>) {
    let mut client = TraceServiceClient::connect(format!("http://127.0.0.1:{grpc}"))
        .await
        .unwrap();
    for r in reqs {
        client.export(r).await.unwrap();
    }
}

fn edge(v: &Json, parent: &str, child: &str) -> (u64, u64) {
    let edges = v["data"]["edges"].as_array().cloned().unwrap_or_default();
    edges
        .iter()
        .find(|e| e["parent"] == parent && e["child"] == child)
        .map_or((0, 0), |e| {
            (
                e["callCount"].as_u64().unwrap(),
                e["errorCount"].as_u64().unwrap(),
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_collectors_answer_for_every_trace_either_counted() {
    let dir = clew_e2e::chaos::WorkDir::new("clew-e2e-rollups-", "two").unwrap();
    let redis = RedisServer::start(false).await;
    let a = collector(&dir.0, "a", &redis.url());
    let b = collector(&dir.0, "b", &redis.url());
    let http = HttpClient::new(Duration::from_secs(10));
    for c in [&a, &b] {
        let url = format!("{}/api/services", c.query);
        wait_for("a collector", Duration::from_secs(60), || http.ok(&url))
            .await
            .unwrap();
    }
    // Ten seconds of traces ending a minute ago.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let base = now - 70_000_000_000;
    let even: Vec<u32> = (0..TRACES).step_by(2).collect();
    let odd: Vec<u32> = (1..TRACES).step_by(2).collect();
    tokio::join!(
        send(a.grpc, requests(&even, base)),
        send(b.grpc, requests(&odd, base))
    );

    let deps = |c: &Collector| format!("{}/api/clew/dependencies?lookback=600000", c.query);
    let all_counted = || async {
        match http.get(&deps(&a)).await.and_then(|r| r.json()) {
            Ok(v) => edge(&v, "checkout", "db").0 == u64::from(TRACES),
            Err(_) => false,
        }
    };
    wait_for(
        "both collectors' roll-ups",
        Duration::from_secs(60),
        all_counted,
    )
    .await
    .unwrap();
    for c in [&a, &b] {
        let v = http.get(&deps(c)).await.unwrap().json().unwrap();
        let calls = u64::from(TRACES);
        assert_eq!(
            edge(&v, "frontend", "checkout"),
            (calls, u64::from(CHECKOUT_ERRORS))
        );
        assert_eq!(edge(&v, "checkout", "db"), (calls, u64::from(DB_ERRORS)));
        let url = format!("{}/api/clew/red?service=checkout&lookback=10m", c.query);
        let red = http.get(&url).await.unwrap().json().unwrap();
        let all = &red["data"]["series"][0];
        assert_eq!(all["requests"], calls, "{red}");
        assert_eq!(all["errors"], u64::from(CHECKOUT_ERRORS));
        // Durations 10..59 ms, 200 of each: the exact median is 34 ms.
        let p50 = all["latency"]["p50Us"].as_f64().unwrap();
        assert!((p50 - 34_000.0).abs() <= 340.0, "p50 {p50}");
        let jaeger = format!("{}/api/dependencies?lookback=600000", c.query);
        let j = http.get(&jaeger).await.unwrap().json().unwrap();
        assert_eq!(j["total"], 2, "{j}");
    }
}
