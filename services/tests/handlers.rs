#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Service A's handlers in-process (`Router` + `oneshot`), with B and C as
//! real gRPC servers on loopback, all traced into an in-memory exporter.

use std::time::Duration;

use axum::body::Body;
use clew_services::Faults;
use clew_services::business::{BusinessService, data_client};
use clew_services::data::DataService;
use clew_services::frontend::{AppState, app, business_client};
use clew_services::ops::Metrics;
use clew_tracer::export::InMemoryExporter;
use clew_tracer::{Sampler, Tracer};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

fn tracer(name: &str, mem: &InMemoryExporter) -> Tracer {
    Tracer::builder(name)
        .node_id(name)
        .sampler(Sampler::AlwaysOn)
        .exporter(mem.clone())
        .build()
}

/// Starts C and B (B with `b_faults`) and returns B's URL.
async fn start_backends(mem: &InMemoryExporter, b_faults: Faults) -> String {
    let c_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c_addr = c_listener.local_addr().unwrap();
    let c_tracer = tracer("service-c", mem);
    let c = DataService::new(
        c_tracer.clone(),
        Faults::default(),
        Metrics::new("service-c"),
    );
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(clew_tracer::instrument::TraceLayer::grpc_server(c_tracer))
            .add_service(c.into_server())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(c_listener)),
    );
    let b_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b_addr = b_listener.local_addr().unwrap();
    let b_tracer = tracer("service-b", mem);
    let data = data_client(
        &format!("http://{c_addr}"),
        &b_tracer,
        Duration::from_secs(10),
    )
    .unwrap();
    let b = BusinessService::new(b_tracer.clone(), data, b_faults, Metrics::new("service-b"));
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(clew_tracer::instrument::TraceLayer::grpc_server(b_tracer))
            .add_service(b.into_server())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(b_listener)),
    );
    format!("http://{b_addr}")
}

fn frontend(b_url: &str, mem: &InMemoryExporter) -> axum::Router {
    frontend_with_timeout(b_url, mem, Duration::from_secs(10))
}

fn frontend_with_timeout(b_url: &str, mem: &InMemoryExporter, timeout: Duration) -> axum::Router {
    let t = tracer("service-a", mem);
    let business = business_client(b_url, &t, timeout).unwrap();
    app(
        AppState {
            business,
            faults: Faults::default(),
            metrics: Metrics::new("service-a"),
        },
        t,
    )
}

async fn get(app: &axum::Router, uri: &str) -> (u16, Option<String>, serde_json::Value) {
    let resp = app
        .clone()
        .oneshot(http::Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let trace = resp
        .headers()
        .get("x-trace-id")
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, trace, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn search_and_process_answer_with_results_and_the_trace_id() {
    let mem = InMemoryExporter::new();
    let b = start_backends(&mem, Faults::default()).await;
    let a = frontend(&b, &mem);
    let (status, trace, body) = get(&a, "/api/v1/search?q=example&limit=2").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"].as_array().unwrap().len(), 2);
    assert_eq!(body["shards"], 3);
    assert_eq!(body["trace_id"].as_str(), trace.as_deref());
    let (status, _, body) = get(&a, "/api/v1/process?data=three+small+words").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["words"], 3);
    assert!(body["digest"].as_str().unwrap().starts_with("fnv1a:"));
}

#[tokio::test]
async fn bad_input_is_a_400_naming_the_parameter() {
    let mem = InMemoryExporter::new();
    // B is never reached for bad input: point A at a closed port.
    let a = frontend("http://127.0.0.1:9", &mem);
    for (uri, needle) in [
        ("/api/v1/search", "parameter q is required"),
        ("/api/v1/search?q=", "parameter q is required"),
        ("/api/v1/search?q=x&limit=0", "parameter limit"),
        ("/api/v1/search?q=x&limit=abc", "parameter limit"),
        ("/api/v1/process", "parameter data is required"),
    ] {
        let (status, trace, body) = get(&a, uri).await;
        assert_eq!(status, 400, "{uri}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(needle),
            "{uri}: {body}"
        );
        assert!(trace.is_some(), "{uri}: errors carry the trace id too");
    }
    let long = format!("/api/v1/search?q={}", "a".repeat(201));
    let (status, _, body) = get(&a, &long).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("longer than 200"));
    let (status, _, body) = get(&a, "/nope").await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("/api/v1/search"));
}

#[tokio::test]
async fn downstream_failures_are_502_or_503_without_internals() {
    let mem = InMemoryExporter::new();
    // B unreachable: 503.
    let a = frontend("http://127.0.0.1:9", &mem);
    let (status, _, body) = get(&a, "/api/v1/search?q=example").await;
    assert_eq!(status, 503, "{body}");
    let msg = body["error"].as_str().unwrap();
    assert!(!msg.contains("127.0.0.1") && !msg.contains("tcp"), "{msg}");

    // B failing (injected): 502, and B's message stays inside.
    let b = start_backends(
        &mem,
        Faults {
            error_rate: 1.0,
            ..Faults::default()
        },
    )
    .await;
    let a = frontend(&b, &mem);
    let (status, _, body) = get(&a, "/api/v1/search?q=example").await;
    assert_eq!(status, 502, "{body}");
    assert!(
        !body["error"].as_str().unwrap().contains("injected"),
        "{body}"
    );
}

#[tokio::test]
async fn a_backend_that_never_answers_is_a_503_after_the_timeout() {
    let mem = InMemoryExporter::new();
    // B accepts connections and never says a word.
    let stalled = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = stalled.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = stalled.accept().await {
            conns.push(c);
        }
    });
    let a = frontend_with_timeout(&format!("http://{addr}"), &mem, Duration::from_millis(300));
    let started = std::time::Instant::now();
    let (status, trace, body) = get(&a, "/api/v1/search?q=example").await;
    assert_eq!(status, 503, "{body}");
    assert!(trace.is_some());
    assert_eq!(
        body["error"],
        "a backend service did not answer in time; retry later"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    held.abort();
}
