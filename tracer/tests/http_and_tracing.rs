//! The HTTP layers (client → server in process, through tower) and the
//! `tracing` layer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use clew_tracer::export::{BatchConfig, InMemoryExporter};
use clew_tracer::instrument::{ClewLayer, TraceLayer};
use clew_tracer::{Sampler, SpanData, SpanKind, Status, Tracer, Value};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt};
use tracing_subscriber::layer::SubscriberExt;

fn tracer(name: &str, exp: &InMemoryExporter) -> Tracer {
    Tracer::builder(name)
        .node_id(name)
        .sampler(Sampler::AlwaysOn)
        .exporter(exp.clone())
        .batch_config(BatchConfig {
            scheduled_delay: Duration::from_millis(10),
            ..Default::default()
        })
        .build()
}

fn flush(ts: &[&Tracer], exp: &InMemoryExporter) -> Vec<SpanData> {
    for t in ts {
        assert!(t.force_flush(Duration::from_secs(5)));
    }
    exp.finished_spans()
}

/// A handler that echoes the headers it saw and fails on /fail.
async fn handler(req: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    let seen = req.headers().contains_key("traceparent");
    let status = if req.uri().path() == "/fail" {
        StatusCode::INTERNAL_SERVER_ERROR
    } else if req.uri().path() == "/missing" {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::OK
    };
    let mut resp = Response::new(Full::new(Bytes::from(format!("traceparent={seen}"))));
    *resp.status_mut() = status;
    Ok(resp)
}

#[tokio::test]
async fn http_client_to_server_links_spans_and_maps_status() {
    let exp = InMemoryExporter::new();
    let (a, b) = (tracer("a", &exp), tracer("b", &exp));
    let server = ServiceBuilder::new()
        .layer(TraceLayer::http_server(b.clone()))
        .service_fn(handler);
    let client = ServiceBuilder::new()
        .layer(TraceLayer::http_client(a.clone()))
        .service(server);

    for (path, code) in [("/ok", 200), ("/missing", 404), ("/fail", 500)] {
        let resp = client
            .clone()
            .oneshot(Request::get(path).body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), code);
        assert!(resp.headers().contains_key("clew-vclock"));
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "traceparent=true");
    }
    let spans = flush(&[&a, &b], &exp);
    assert_eq!(spans.len(), 6);
    for (path, code) in [("/ok", 200i64), ("/missing", 404), ("/fail", 500)] {
        let name = format!("GET {path}");
        let c = spans
            .iter()
            .find(|s| s.name == name && s.kind == SpanKind::Client)
            .unwrap();
        let s = spans
            .iter()
            .find(|s| s.name == name && s.kind == SpanKind::Server)
            .unwrap();
        assert_eq!(s.parent_span_id, c.context.span_id);
        assert_eq!(s.context.trace_id, c.context.trace_id);
        assert_eq!(
            c.attribute("http.response.status_code"),
            Some(&Value::I64(code))
        );
        // Client spans fail on 4xx and 5xx, server spans only on 5xx.
        assert_eq!(c.status.is_error(), code >= 400, "{name}");
        assert_eq!(s.status.is_error(), code >= 500, "{name}");
        assert!(c.clock_start.happened_before(&s.clock_start));
    }
}

#[tokio::test]
async fn malformed_incoming_headers_start_a_new_trace() {
    let exp = InMemoryExporter::new();
    let b = tracer("b", &exp);
    let server = ServiceBuilder::new()
        .layer(TraceLayer::http_server(b.clone()))
        .service_fn(handler);
    let req = Request::get("/ok")
        .header(
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        )
        .header("tracestate", "=bad")
        .header("baggage", "%%%")
        .header("clew-vclock", "x=y")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = server.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    drop(resp);
    let spans = flush(&[&b], &exp);
    assert_eq!(spans.len(), 1);
    assert!(!spans[0].parent_span_id.is_valid(), "a fresh root span");
    assert!(spans[0].context.trace_id.is_valid());
}

#[test]
fn tracing_spans_become_clew_spans() {
    let exp = InMemoryExporter::new();
    let t = tracer("svc", &exp);
    let subscriber = tracing_subscriber::registry().with(ClewLayer::new(t.clone()));
    tracing::subscriber::with_default(subscriber, || {
        let outer = tracing::info_span!(
            "outer",
            otel.kind = "server",
            user = 42u64,
            otel.name = "GET /x"
        );
        let _e = outer.enter();
        let inner = tracing::info_span!("inner", ok = true, later = tracing::field::Empty);
        inner.in_scope(|| {
            tracing::info!(rows = 3, "query done");
            inner.record("later", "set");
            // A clew span started inside a tracing span nests under it.
            let _native = t.start("native");
            tracing::error!("it broke");
        });
    });
    let spans = flush(&[&t], &exp);
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let get = |n: &str| spans.iter().find(|s| s.name == n).unwrap();
    let outer = get("GET /x");
    let inner = get("inner");
    let native = get("native");
    assert_eq!(outer.kind, SpanKind::Server);
    assert_eq!(outer.attribute("user"), Some(&Value::I64(42)));
    assert_eq!(inner.parent_span_id, outer.context.span_id);
    assert_eq!(native.parent_span_id, inner.context.span_id);
    assert_eq!(inner.attribute("ok"), Some(&Value::Bool(true)));
    assert_eq!(inner.attribute("later"), Some(&Value::String("set".into())));
    assert_eq!(inner.events.len(), 2);
    assert_eq!(inner.events[0].name, "query done");
    assert!(inner.events[0].attributes.iter().any(|kv| kv.key == "rows"));
    assert_eq!(inner.status, Status::Error("it broke".into()));
    assert_eq!(outer.status, Status::Unset);
}

#[tokio::test]
async fn axum_router_layer_traces_routes() {
    let exp = InMemoryExporter::new();
    let t = tracer("web", &exp);
    let app = axum::Router::new()
        .route("/items/{id}", axum::routing::get(|| async { "ok" }))
        .layer(TraceLayer::http_server(t.clone()).with_name_fn(|parts| {
            // Name by route template, not raw path, to keep cardinality low.
            let route = parts
                .extensions
                .get::<axum::extract::MatchedPath>()
                .map(|m| m.as_str().to_string())
                .unwrap_or_else(|| parts.uri.path().to_string());
            format!("{} {route}", parts.method).into()
        }));
    let resp = app
        .oneshot(
            Request::get("/items/42")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "ok");
    let spans = flush(&[&t], &exp);
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].name, "GET /items/{id}");
    assert_eq!(spans[0].kind, SpanKind::Server);
    assert_eq!(
        spans[0].attribute("url.path"),
        Some(&Value::String("/items/42".into()))
    );
}
