//! The query API in process: HTTP handlers through `Router::oneshot`, the gRPC
//! service over loopback, both against `MemoryStorage` holding hand-built
//! traces (and a failing store for the error paths).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use clew_proto::v1 as pb;
use http_body_util::BodyExt as _;
use pb::{AnyValue, KeyValue, Span, SpanKind, Trace, any_value, status};
use serde_json::{Value, json};
use tower::ServiceExt as _;

use super::*;
use crate::storage::memory::MemoryStorage;
use crate::storage::{DependencyLink, PruneStats, StoreOutcome};

/// 2023-11-14T22:13:20Z, in nanoseconds.
const T0: u64 = 1_700_000_000_000_000_000;
const MS: u64 = 1_000_000;
const US: u64 = 1_000;

const CHECKOUT: [u8; 16] = [
    0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80, 0x31, 0x9c,
];
const CHECKOUT_HEX: &str = "0af7651916cd43dd8448eb211c80319c";
/// A trace id with leading zeros, to look up by a short id.
const HOME: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0b, 0x42];
const NIGHTLY: [u8; 16] = [0x33; 16];
const RECENT: [u8; 16] = [0x44; 16];

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn s(v: &str) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::StringValue(v.into())),
    })
}

fn kv(key: &str, value: Option<AnyValue>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value,
    }
}

fn val(v: any_value::Value) -> Option<AnyValue> {
    Some(AnyValue { value: Some(v) })
}

fn clock(entries: &[(&str, u64)]) -> Option<pb::VectorClock> {
    Some(pb::VectorClock {
        entries: entries
            .iter()
            .map(|(n, c)| pb::ClockEntry {
                node: (*n).into(),
                counter: *c,
            })
            .collect(),
    })
}

// A fixture reads best with every field in place.
#[allow(clippy::too_many_arguments)]
fn span(
    trace: [u8; 16],
    id: u8,
    parent: Option<u8>,
    service: &str,
    name: &str,
    kind: SpanKind,
    start: u64,
    duration: u64,
) -> Span {
    Span {
        trace_id: trace.to_vec(),
        span_id: vec![0, 0, 0, 0, 0, 0, 0, id],
        parent_span_id: parent
            .map(|p| vec![0, 0, 0, 0, 0, 0, 0, p])
            .unwrap_or_default(),
        name: name.into(),
        service: service.into(),
        kind: kind as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start + duration,
        ..Default::default()
    }
}

/// frontend "GET /checkout" (server, 1.5 ms) → payments "charge" (client,
/// 800.5 µs, error, linked to another trace) → bank "authorize" (server).
fn checkout() -> Trace {
    let mut root = span(
        CHECKOUT,
        1,
        None,
        "frontend",
        "GET /checkout",
        SpanKind::Server,
        T0,
        1_500 * US,
    );
    root.attributes = vec![
        kv("http.method", s("GET")),
        kv("http.status_code", val(any_value::Value::IntValue(200))),
        kv("retry", val(any_value::Value::BoolValue(true))),
        kv("ratio", val(any_value::Value::DoubleValue(0.5))),
        kv("blob", val(any_value::Value::BytesValue(vec![1, 2, 3]))),
    ];
    root.status = Some(pb::Status {
        code: status::Code::Ok as i32,
        message: String::new(),
    });
    root.resource = vec![kv("host.name", s("h1"))];
    root.node = "frontend-0".into();
    root.clock_start = clock(&[("frontend-0", 1)]);
    root.clock_end = clock(&[("frontend-0", 3), ("payments-0", 2)]);
    root.events = vec![pb::Event {
        time_unix_nano: T0 + 100 * US,
        name: "cache miss".into(),
        attributes: vec![kv("key", s("cart:7"))],
    }];

    let mut charge = span(
        CHECKOUT,
        2,
        Some(1),
        "payments",
        "charge",
        SpanKind::Client,
        T0 + 200 * US,
        800 * US + 500,
    );
    charge.status = Some(pb::Status {
        code: status::Code::Error as i32,
        message: "declined".into(),
    });
    charge.links = vec![pb::Link {
        trace_id: vec![0x77; 16],
        span_id: vec![0x88; 8],
        trace_state: String::new(),
        attributes: vec![],
    }];
    charge.resource = vec![kv("host.name", s("h2"))];
    charge.node = "payments-0".into();

    let mut authorize = span(
        CHECKOUT,
        3,
        Some(2),
        "bank",
        "authorize",
        SpanKind::Server,
        T0 + 300 * US,
        500 * US,
    );
    authorize.attributes = vec![kv("user", s("bob"))];

    Trace {
        trace_id: CHECKOUT.to_vec(),
        spans: vec![root, charge, authorize],
    }
}

/// frontend "GET /home", 50 ms, 10 s after the checkout.
fn home() -> Trace {
    let mut root = span(
        HOME,
        1,
        None,
        "frontend",
        "GET /home",
        SpanKind::Server,
        T0 + 10_000 * MS,
        50 * MS,
    );
    root.attributes = vec![kv("http.method", s("GET")), kv("user", s("alice"))];
    Trace {
        trace_id: HOME.to_vec(),
        spans: vec![root],
    }
}

/// batch "nightly", 2 s, an hour before the checkout.
fn nightly() -> Trace {
    Trace {
        trace_id: NIGHTLY.to_vec(),
        spans: vec![span(
            NIGHTLY,
            1,
            None,
            "batch",
            "nightly",
            SpanKind::Internal,
            T0 - 3_600_000 * MS,
            2_000 * MS,
        )],
    }
}

/// cron "tick", 30 minutes ago (for `lookback`).
fn recent() -> Trace {
    Trace {
        trace_id: RECENT.to_vec(),
        spans: vec![span(
            RECENT,
            1,
            None,
            "cron",
            "tick",
            SpanKind::Internal,
            now_ns() - 30 * 60_000 * MS,
            MS,
        )],
    }
}

async fn storage() -> Arc<MemoryStorage> {
    let st = Arc::new(MemoryStorage::default());
    let traces = [checkout(), home(), nightly(), recent()];
    crate::testing::store_rollups(st.as_ref(), &traces).await;
    for t in traces {
        st.store_trace(t).await.unwrap();
    }
    st
}

async fn app() -> Router {
    router(storage().await)
}

pub(crate) async fn get(app: &Router, uri: &str) -> (StatusCode, Value) {
    let resp = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{uri}: not JSON ({e}): {bytes:?}"));
    (status, body)
}

/// The trace ids of a search answer, in order.
fn ids(body: &Value) -> Vec<String> {
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["traceID"].as_str().unwrap().to_owned())
        .collect()
}

async fn search(app: &Router, query: &str) -> Vec<String> {
    let (status, body) = get(app, &format!("/api/traces?{query}")).await;
    assert_eq!(status, StatusCode::OK, "{query}: {body}");
    let ids = ids(&body);
    assert_eq!(body["total"], ids.len(), "{query}");
    ids
}

fn hex16(id: [u8; 16]) -> String {
    jaeger::hex(&id)
}

async fn bad_request(app: &Router, uri: &str) -> String {
    let (status, body) = get(app, uri).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
    assert_eq!(body["data"], Value::Null);
    assert_eq!(body["total"], 0);
    assert_eq!(body["errors"][0]["code"], 400);
    body["errors"][0]["msg"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn trace_json_matches_jaeger_model() {
    let app = app().await;
    let (status, body) = get(&app, &format!("/api/traces/{CHECKOUT_HEX}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["total"], 1);
    assert_eq!(body["limit"], 0);
    assert_eq!(body["offset"], 0);
    assert_eq!(body["errors"], Value::Null);
    let t0_us = T0 / 1_000;
    let want = json!({
        "traceID": CHECKOUT_HEX,
        "spans": [
            {
                "traceID": CHECKOUT_HEX,
                "spanID": "0000000000000001",
                "operationName": "GET /checkout",
                "references": [],
                "startTime": t0_us,
                "duration": 1_500,
                "tags": [
                    {"key": "http.method", "type": "string", "value": "GET"},
                    {"key": "http.status_code", "type": "int64", "value": 200},
                    {"key": "retry", "type": "bool", "value": true},
                    {"key": "ratio", "type": "float64", "value": 0.5},
                    {"key": "blob", "type": "binary", "value": "AQID"},
                    {"key": "span.kind", "type": "string", "value": "server"},
                    {"key": "otel.status_code", "type": "string", "value": "OK"},
                    {"key": "clew.clock.start", "type": "string", "value": "frontend-0=1"},
                    {"key": "clew.clock.end", "type": "string", "value": "frontend-0=3,payments-0=2"},
                ],
                "logs": [{
                    "timestamp": t0_us + 100,
                    "fields": [
                        {"key": "event", "type": "string", "value": "cache miss"},
                        {"key": "key", "type": "string", "value": "cart:7"},
                    ],
                }],
                "processID": "p1",
                "warnings": null,
            },
            {
                "traceID": CHECKOUT_HEX,
                "spanID": "0000000000000002",
                "operationName": "charge",
                "references": [
                    {"refType": "CHILD_OF", "traceID": CHECKOUT_HEX, "spanID": "0000000000000001"},
                    {"refType": "FOLLOWS_FROM", "traceID": "77777777777777777777777777777777", "spanID": "8888888888888888"},
                ],
                "startTime": t0_us + 200,
                // 800.5 µs, truncated like Jaeger.
                "duration": 800,
                "tags": [
                    {"key": "span.kind", "type": "string", "value": "client"},
                    {"key": "otel.status_code", "type": "string", "value": "ERROR"},
                    {"key": "error", "type": "bool", "value": true},
                    {"key": "otel.status_description", "type": "string", "value": "declined"},
                ],
                "logs": [],
                "processID": "p2",
                "warnings": null,
            },
            {
                "traceID": CHECKOUT_HEX,
                "spanID": "0000000000000003",
                "operationName": "authorize",
                "references": [
                    {"refType": "CHILD_OF", "traceID": CHECKOUT_HEX, "spanID": "0000000000000002"},
                ],
                "startTime": t0_us + 300,
                "duration": 500,
                "tags": [
                    {"key": "user", "type": "string", "value": "bob"},
                    {"key": "span.kind", "type": "string", "value": "server"},
                ],
                "logs": [],
                "processID": "p3",
                "warnings": null,
            },
        ],
        "processes": {
            "p1": {"serviceName": "frontend", "tags": [
                {"key": "host.name", "type": "string", "value": "h1"},
                {"key": "clew.node", "type": "string", "value": "frontend-0"},
            ]},
            "p2": {"serviceName": "payments", "tags": [
                {"key": "host.name", "type": "string", "value": "h2"},
                {"key": "clew.node", "type": "string", "value": "payments-0"},
            ]},
            "p3": {"serviceName": "bank", "tags": []},
        },
        "warnings": null,
    });
    assert_eq!(body["data"], json!([want]));
}

#[tokio::test]
async fn spans_of_one_process_share_it() {
    let st = Arc::new(MemoryStorage::default());
    let id = [0x55; 16];
    let mut a = span(id, 1, None, "svc", "a", SpanKind::Server, T0, MS);
    let mut b = span(id, 2, Some(1), "svc", "b", SpanKind::Internal, T0 + 1, MS);
    a.node = "svc-0".into();
    b.node = "svc-0".into();
    st.store_trace(Trace {
        trace_id: id.to_vec(),
        spans: vec![a, b],
    })
    .await
    .unwrap();
    let (_, body) = get(&router(st), &format!("/api/traces/{}", hex16(id))).await;
    let t = &body["data"][0];
    assert_eq!(t["spans"][0]["processID"], "p1");
    assert_eq!(t["spans"][1]["processID"], "p1");
    assert_eq!(t["processes"].as_object().unwrap().len(), 1);
    assert_eq!(t["spans"][1]["tags"][0]["value"], "internal");
}

#[tokio::test]
async fn short_and_uppercase_trace_ids_are_left_padded() {
    let app = app().await;
    for id in ["b42", "B42", "0b42", "00000000000000000000000000000b42"] {
        let (status, body) = get(&app, &format!("/api/traces/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{id}");
        assert_eq!(body["data"][0]["traceID"], hex16(HOME), "{id}");
    }
}

#[tokio::test]
async fn unknown_trace_is_404_with_jaeger_error_shape() {
    let app = app().await;
    let (status, body) = get(&app, "/api/traces/deadbeef").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body,
        json!({"data": null, "total": 0, "limit": 0, "offset": 0,
               "errors": [{"code": 404, "msg": "trace not found"}]})
    );
}

#[tokio::test]
async fn bad_trace_ids_are_400() {
    let app = app().await;
    for id in ["xyz", "+ab", &"a".repeat(33)] {
        let msg = bad_request(&app, &format!("/api/traces/{id}")).await;
        assert!(
            msg.starts_with("unable to parse param 'traceID': "),
            "{msg}"
        );
    }
}

#[tokio::test]
async fn services_and_operations() {
    let app = app().await;
    let (status, body) = get(&app, "/api/services").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"data": ["bank", "batch", "cron", "frontend", "payments"],
               "total": 5, "limit": 0, "offset": 0, "errors": null})
    );

    let (_, body) = get(&app, "/api/services/frontend/operations").await;
    assert_eq!(body["data"], json!(["GET /checkout", "GET /home"]));
    assert_eq!(body["total"], 2);
    let (_, body) = get(&app, "/api/services/nobody/operations").await;
    assert_eq!(body["data"], json!([]));

    let (_, body) = get(&app, "/api/operations?service=payments").await;
    assert_eq!(
        body["data"],
        json!([{"name": "charge", "spanKind": "client"}])
    );
    let (_, body) = get(&app, "/api/operations?service=frontend&spanKind=server").await;
    assert_eq!(body["total"], 2);
    let (_, body) = get(&app, "/api/operations?service=frontend&spanKind=client").await;
    assert_eq!(body["data"], json!([]));
    let (_, body) = get(&app, "/api/operations?service=frontend&spanKind=").await;
    assert_eq!(body["total"], 2);

    let msg = bad_request(&app, "/api/operations?service=frontend&spanKind=sideways").await;
    assert!(
        msg.starts_with("unable to parse param 'spanKind': "),
        "{msg}"
    );
    let msg = bad_request(&app, "/api/operations").await;
    assert!(msg.contains("'service'"), "{msg}");
}

#[tokio::test]
async fn search_by_service_operation_and_tags() {
    let app = app().await;
    let ids = [hex16(CHECKOUT), hex16(HOME), hex16(NIGHTLY), hex16(RECENT)];
    let [c, h, n, r] = ids.each_ref().map(String::as_str);

    // Most recent first.
    assert_eq!(search(&app, "service=frontend").await, [h, c]);
    // A trace matches through any of its spans.
    assert_eq!(search(&app, "service=bank").await, [c]);
    assert_eq!(
        search(&app, "service=frontend&operation=GET%20%2Fhome").await,
        [h]
    );
    assert_eq!(
        search(&app, "service=frontend&operation=nope").await,
        Vec::<String>::new()
    );
    // Service omitted: every service.
    assert_eq!(search(&app, "").await, [r, h, c, n]);
    assert_eq!(search(&app, "operation=charge").await, [c]);
    assert_eq!(search(&app, "limit=2").await, [r, h]);

    // Tags: one span must carry all of them.
    assert_eq!(search(&app, "tag=user:alice").await, [h]);
    assert_eq!(search(&app, "tag=http.method:GET").await, [h, c]);
    assert_eq!(
        search(&app, "tag=http.method:GET&tag=user:alice").await,
        [h]
    );
    assert_eq!(
        search(&app, "tag=http.method:GET&tag=user:bob").await,
        Vec::<String>::new()
    );
    assert_eq!(search(&app, "tag=http.status_code:200").await, [c]);
    let tags = "tags=%7B%22user%22%3A%22bob%22%7D"; // {"user":"bob"}
    assert_eq!(search(&app, tags).await, [c]);
    // tags= and tag= combine.
    let both = "tags=%7B%22http.method%22%3A%22GET%22%7D&tag=user:alice";
    assert_eq!(search(&app, both).await, [h]);
    // A value may contain ':'.
    assert_eq!(search(&app, "tag=key:cart:7").await, Vec::<String>::new());

    // error=true means an ERROR status.
    assert_eq!(search(&app, "tag=error:true").await, [c]);
    let tags = "tags=%7B%22error%22%3A%22true%22%7D"; // {"error":"true"}
    assert_eq!(search(&app, tags).await, [c]);
    assert_eq!(
        search(&app, "service=frontend&tag=error:true").await,
        Vec::<String>::new()
    );
    assert_eq!(search(&app, "service=payments&tag=error:true").await, [c]);

    // traceID= fetches those traces.
    let q = format!("traceID={}&traceID=b42&traceID=123", &c);
    assert_eq!(search(&app, &q).await, [c, h]);
}

#[tokio::test]
async fn search_by_duration_and_time() {
    let app = app().await;
    let ids = [hex16(CHECKOUT), hex16(HOME), hex16(NIGHTLY), hex16(RECENT)];
    let [c, h, n, r] = ids.each_ref().map(String::as_str);

    assert_eq!(search(&app, "minDuration=1s").await, [n]);
    assert_eq!(search(&app, "minDuration=1.2s").await, [n]);
    assert_eq!(
        search(&app, "minDuration=10ms&maxDuration=100ms").await,
        [h]
    );
    assert_eq!(
        search(&app, "service=payments&minDuration=800us").await,
        [c]
    );
    assert_eq!(
        search(&app, "service=payments&minDuration=801us").await,
        Vec::<String>::new()
    );
    assert_eq!(search(&app, "maxDuration=500us").await, [c]);
    assert_eq!(search(&app, "maxDuration=1ms").await, [r, c]);

    let t0_us = T0 / 1_000;
    // start/end are microseconds, inclusive.
    let q = format!("start={t0_us}&end={}", t0_us + 10_000_000);
    assert_eq!(search(&app, &q).await, [h, c]);
    let q = format!("start={}&end={}", t0_us + 1, t0_us + 10_000_000);
    // The checkout still matches through its later spans.
    assert_eq!(search(&app, &q).await, [h, c]);
    let q = format!("start={}", t0_us + 1_000);
    assert_eq!(search(&app, &q).await, [r, h]);
    let q = format!("end={}", t0_us - 1);
    assert_eq!(search(&app, &q).await, [n]);

    // lookback applies when start is missing.
    assert_eq!(search(&app, "lookback=1h").await, [r]);
    assert_eq!(search(&app, "lookback=10m").await, Vec::<String>::new());
    // Jaeger's UI sends lookback=custom with start and end.
    let q = format!("lookback=custom&start={t0_us}&end={}", t0_us + 1);
    assert_eq!(search(&app, &q).await, [c]);
    let q = format!("lookback=1h&end={}", t0_us + 1);
    assert_eq!(search(&app, &q).await, [c]);
}

#[tokio::test]
async fn bad_search_params_are_400_naming_the_param() {
    let app = app().await;
    for (query, param) in [
        ("minDuration=abc", "minDuration"),
        ("minDuration=5", "minDuration"),
        ("maxDuration=1parsec", "maxDuration"),
        ("maxDuration=-1s", "maxDuration"),
        ("start=-1", "start"),
        ("start=soon", "start"),
        ("end=1.5", "end"),
        ("end=99999999999999999999", "end"),
        ("start=18446744073709552", "start"),
        ("limit=ten", "limit"),
        ("limit=-1", "limit"),
        ("lookback=forever", "lookback"),
        ("tags=%7Bnope", "tags"),
        ("tags=%5B%5D", "tags"),
        ("tags=%7B%22a%22%3A%5B%5D%7D", "tags"),
        ("tag=nocolon", "tag"),
        ("traceID=zz", "traceID"),
    ] {
        let msg = bad_request(&app, &format!("/api/traces?{query}")).await;
        assert!(
            msg.starts_with(&format!("unable to parse param '{param}': ")),
            "{query}: {msg}"
        );
    }
    let msg = bad_request(&app, "/api/traces?minDuration=2s&maxDuration=1s").await;
    assert!(msg.contains("'maxDuration'"), "{msg}");
    let msg = bad_request(&app, "/api/traces?start=20&end=10").await;
    assert!(msg.contains("'start'"), "{msg}");
    let msg = bad_request(&app, "/api/dependencies?endTs=yesterday").await;
    assert!(msg.starts_with("unable to parse param 'endTs': "), "{msg}");
    let msg = bad_request(&app, "/api/dependencies?lookback=1h").await;
    assert!(
        msg.starts_with("unable to parse param 'lookback': "),
        "{msg}"
    );
}

#[tokio::test]
async fn dependencies_in_window() {
    let app = app().await;
    let t0_ms = T0 / MS;
    let (status, body) = get(
        &app,
        &format!("/api/dependencies?endTs={}&lookback=60000", t0_ms + 1),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"data": [
                  {"parent": "frontend", "child": "payments", "callCount": 1},
                  {"parent": "payments", "child": "bank", "callCount": 1},
              ], "total": 2, "limit": 0, "offset": 0, "errors": null})
    );
    // The window ends before the checkout's children start.
    let (_, body) = get(
        &app,
        &format!("/api/dependencies?endTs={}&lookback=60000", t0_ms - 1),
    )
    .await;
    assert_eq!(body["data"], json!([]));
    // Defaults: the last 24 hours, which holds only the recent trace.
    let (_, body) = get(&app, "/api/dependencies").await;
    assert_eq!(body["data"], json!([]));
}

#[test]
fn durations_parse_like_go() {
    assert_eq!(parse_duration("0"), Ok(0));
    assert_eq!(parse_duration("1.2s"), Ok(1_200_000_000));
    assert_eq!(parse_duration("100ms"), Ok(100_000_000));
    assert_eq!(parse_duration("500us"), Ok(500_000));
    assert_eq!(parse_duration("500µs"), Ok(500_000));
    assert_eq!(parse_duration("7ns"), Ok(7));
    assert_eq!(parse_duration("1h30m"), Ok(5_400_000_000_000));
    assert_eq!(parse_duration(".5m"), Ok(30_000_000_000));
    for bad in [
        "",
        "5",
        "s",
        "1.2.3s",
        "-1s",
        "1d",
        "1 s",
        ".s",
        "9999999999h",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad:?}");
    }
}

/// A store that always fails, with internals in the error it hides.
#[derive(Debug)]
struct Down {
    corrupt: bool,
}

impl Down {
    fn err(&self) -> StorageError {
        if self.corrupt {
            StorageError::Corrupt {
                backend: "redis",
                detail: "key clew:secret:t holds garbage".into(),
            }
        } else {
            StorageError::unavailable("redis", "connect to redis://secret-host:6379 refused")
        }
    }
}

#[async_trait]
impl Storage for Down {
    async fn store_trace(&self, _: Trace) -> crate::storage::Result<StoreOutcome> {
        Err(self.err())
    }
    async fn get_trace(&self, _: TraceId) -> crate::storage::Result<Option<Trace>> {
        Err(self.err())
    }
    async fn list_traces(&self, _: &FilterCriteria) -> crate::storage::Result<Vec<Trace>> {
        Err(self.err())
    }
    async fn services(&self) -> crate::storage::Result<Vec<String>> {
        Err(self.err())
    }
    async fn operations(
        &self,
        _: &str,
        _: Option<SpanKind>,
    ) -> crate::storage::Result<Vec<(String, SpanKind)>> {
        Err(self.err())
    }
    async fn dependencies(&self, _: u64, _: u64) -> crate::storage::Result<Vec<DependencyLink>> {
        Err(self.err())
    }
    async fn prune_traces(&self, _: u64) -> crate::storage::Result<PruneStats> {
        Err(self.err())
    }
    async fn movable(
        &self,
        _: u64,
        _: usize,
    ) -> crate::storage::Result<Vec<crate::storage::Movable>> {
        Err(self.err())
    }
    async fn remove_moved(
        &self,
        _: &[crate::storage::Moved],
    ) -> crate::storage::Result<PruneStats> {
        Err(self.err())
    }
    async fn lease(
        &self,
        _: &str,
        _: &str,
        _: std::time::Duration,
    ) -> crate::storage::Result<bool> {
        Err(self.err())
    }
    async fn put_rollups(&self, _: &[crate::storage::RollupPart]) -> crate::storage::Result<()> {
        Err(self.err())
    }
    async fn rollups(
        &self,
        _: u64,
        _: u64,
        _: u64,
    ) -> crate::storage::Result<Vec<crate::storage::RollupPart>> {
        Err(self.err())
    }
    async fn prune_rollups(&self, _: u64) -> crate::storage::Result<u64> {
        Err(self.err())
    }
    fn backend(&self) -> &'static str {
        "down"
    }
}

#[tokio::test]
async fn storage_errors_hide_internals() {
    for (corrupt, code) in [
        (false, StatusCode::SERVICE_UNAVAILABLE),
        (true, StatusCode::INTERNAL_SERVER_ERROR),
    ] {
        let app = router(Arc::new(Down { corrupt }));
        for uri in [
            "/api/services",
            "/api/services/a/operations",
            "/api/operations?service=a",
            "/api/traces?service=a",
            "/api/traces?traceID=ab",
            "/api/traces/ab",
            "/api/dependencies",
        ] {
            let (status, body) = get(&app, uri).await;
            assert_eq!(status, code, "{uri}");
            assert_eq!(
                body,
                json!({"data": null, "total": 0, "limit": 0, "offset": 0,
                       "errors": [{"code": code.as_u16(), "msg": "storage unavailable"}]}),
                "{uri}"
            );
        }
    }
}

async fn serve_grpc(storage: Arc<dyn Storage>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(QueryGrpc(storage).into_server())
            .serve_with_incoming(incoming)
            .await
    });
    addr
}

#[tokio::test]
async fn grpc_query_service() {
    let addr = serve_grpc(storage().await).await;
    let mut client = pb::query_client::QueryClient::connect(format!("http://{addr}"))
        .await
        .unwrap();

    let trace = client
        .get_trace(pb::GetTraceRequest {
            trace_id: CHECKOUT.to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(trace, checkout());

    let err = client
        .get_trace(pb::GetTraceRequest {
            trace_id: vec![9; 16],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    for bad in [vec![], vec![1; 8], vec![0; 16]] {
        let err = client
            .get_trace(pb::GetTraceRequest { trace_id: bad })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }

    let found = client
        .find_traces(pb::FindTracesRequest {
            filter: Some(FilterCriteria {
                service: "frontend".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<Vec<u8>> = found.traces.iter().map(|t| t.trace_id.clone()).collect();
    assert_eq!(ids, [HOME.to_vec(), CHECKOUT.to_vec()]);
    let all = client
        .find_traces(pb::FindTracesRequest { filter: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.traces.len(), 4);
    let err = client
        .find_traces(pb::FindTracesRequest {
            filter: Some(FilterCriteria {
                min_duration_nanos: 2,
                max_duration_nanos: 1,
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    let services = client
        .get_services(pb::GetServicesRequest {})
        .await
        .unwrap()
        .into_inner()
        .services;
    assert_eq!(services, ["bank", "batch", "cron", "frontend", "payments"]);

    let ops = client
        .get_operations(pb::GetOperationsRequest {
            service: "frontend".into(),
            span_kind: SpanKind::Unspecified as i32,
        })
        .await
        .unwrap()
        .into_inner()
        .operations;
    assert_eq!(
        ops,
        [
            pb::Operation {
                name: "GET /checkout".into(),
                span_kind: SpanKind::Server as i32
            },
            pb::Operation {
                name: "GET /home".into(),
                span_kind: SpanKind::Server as i32
            },
        ]
    );
    let ops = client
        .get_operations(pb::GetOperationsRequest {
            service: "frontend".into(),
            span_kind: SpanKind::Client as i32,
        })
        .await
        .unwrap()
        .into_inner()
        .operations;
    assert!(ops.is_empty());
    let err = client
        .get_operations(pb::GetOperationsRequest {
            service: "frontend".into(),
            span_kind: 99,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    let deps = client
        .get_dependencies(pb::GetDependenciesRequest {
            start_time_unix_nano: T0 - MS,
            end_time_unix_nano: T0 + MS,
        })
        .await
        .unwrap()
        .into_inner()
        .dependencies;
    assert_eq!(
        deps,
        [
            DependencyLink {
                parent: "frontend".into(),
                child: "payments".into(),
                call_count: 1,
                error_count: 1,
            },
            DependencyLink {
                parent: "payments".into(),
                child: "bank".into(),
                call_count: 1,
                error_count: 0,
            },
        ]
    );
}

#[tokio::test]
async fn grpc_storage_errors_hide_internals() {
    for (corrupt, code) in [
        (false, tonic::Code::Unavailable),
        (true, tonic::Code::Internal),
    ] {
        let addr = serve_grpc(Arc::new(Down { corrupt })).await;
        let mut client = pb::query_client::QueryClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let err = client
            .get_services(pb::GetServicesRequest {})
            .await
            .unwrap_err();
        assert_eq!(err.code(), code);
        assert_eq!(err.message(), "storage unavailable");
        let err = client
            .get_trace(pb::GetTraceRequest {
                trace_id: CHECKOUT.to_vec(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), code);
        assert_eq!(err.message(), "storage unavailable");
    }
}
