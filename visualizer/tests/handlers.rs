#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The visualizer's handlers in process (`Router::oneshot`), proxying to a
//! real collector query API on loopback.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use clew_visualizer::{AppState, app};
use http_body_util::BodyExt as _;
use serde_json::Value;
use tower::ServiceExt as _;

async fn call(
    router: &axum::Router,
    method: &str,
    uri: &str,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let resp = router
        .clone()
        .oneshot(
            Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

#[tokio::test]
async fn pages_and_assets_are_served_from_the_binary() {
    // No collector needed for the static parts.
    let router = app(AppState::new("http://127.0.0.1:9", Duration::from_secs(1)).unwrap());
    for path in [
        "/",
        "/search?service=x",
        "/trace/0af7651916cd43dd8448eb211c80319c?span=00f067aa0ba902b7",
        "/dependencies",
        "/services/frontend",
        "/insights",
    ] {
        let (status, headers, body) = call(&router, "GET", path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
        let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe"),
            "{csp}"
        );
        let html = String::from_utf8(body).unwrap();
        assert!(html.contains(r#"<script type="module" src="/assets/app.js"></script>"#));
        // Nothing from a CDN.
        assert!(!html.contains("http://") && !html.contains("https://"));
    }
    for (asset, ct, needle) in [
        ("app.js", "text/javascript; charset=utf-8", "createRouter("),
        (
            "trace/waterfall.js",
            "text/javascript; charset=utf-8",
            "export function createWaterfall",
        ),
        ("app.css", "text/css; charset=utf-8", ".waterfall"),
        ("favicon.svg", "image/svg+xml", "<svg"),
    ] {
        let (status, headers, body) = call(&router, "GET", &format!("/assets/{asset}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], ct);
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(String::from_utf8(body).unwrap().contains(needle));
    }
    for missing in [
        "/assets/nope.js",
        "/assets/trace/nope.js",
        "/assets/../Cargo.toml",
    ] {
        let (status, _, body) = call(&router, "GET", missing).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
        assert_eq!(json(&body)["errors"][0]["msg"], "not found");
    }
    let (status, _, _) = call(&router, "POST", "/search").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

/// Every file under `assets/` (the `node --test` suite aside), as a path
/// relative to it.
fn asset_files(dir: &std::path::Path, rel: &str, out: &mut Vec<(String, std::path::PathBuf)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let rel = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        if path.is_dir() {
            if name != "tests" {
                asset_files(&path, &rel, out);
            }
        } else {
            out.push((rel, path));
        }
    }
}

#[tokio::test]
async fn every_module_is_embedded_and_served_as_javascript() {
    let router = app(AppState::new("http://127.0.0.1:9", Duration::from_secs(1)).unwrap());
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
    let mut files = Vec::new();
    asset_files(&dir, "", &mut files);
    let modules: Vec<_> = files
        .iter()
        .filter(|(rel, _)| rel.ends_with(".js"))
        .collect();
    assert!(modules.len() > 10, "{files:?}");
    for (rel, path) in modules {
        let (status, headers, body) = call(&router, "GET", &format!("/assets/{rel}")).await;
        assert_eq!(status, StatusCode::OK, "{rel} is not embedded in assets.rs");
        assert_eq!(
            headers[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8",
            "{rel}"
        );
        assert_eq!(headers[header::CACHE_CONTROL], "no-cache", "{rel}");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{rel}");
        // The binary serves what is on disk (a stale build would not).
        assert_eq!(body, std::fs::read(path).unwrap(), "{rel}");
    }
}

#[tokio::test]
async fn api_is_proxied_to_the_collector() {
    let collector = common::collector(common::known_storage().await).await;
    let router = app(common::state(collector));

    let (status, headers, body) = call(&router, "GET", "/api/services").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let services = json(&body)["data"].clone();
    assert_eq!(
        services,
        serde_json::json!([
            "backend",
            "db",
            "frontend",
            "gateway",
            "inventory",
            "payments",
            "store",
            "worker-0",
            "worker-1",
            "worker-2",
            "worker-3",
            "worker-4"
        ])
    );

    // Query strings pass through unchanged.
    let (status, _, body) = call(
        &router,
        "GET",
        "/api/traces?service=payments&lookback=1h&limit=50",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        json(&body)["data"].as_array().unwrap().len(),
        common::CHECKOUTS as usize
    );

    // clew's analysis routes too.
    let id = common::hex(&common::trace_id(0xc0, 3));
    let (status, _, body) = call(&router, "GET", &format!("/api/clew/traces/{id}/analysis")).await;
    assert_eq!(status, StatusCode::OK);
    let critical: Vec<String> = json(&body)["data"]["bottlenecks"]["criticalPath"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["spanID"].as_str().unwrap().to_owned())
        .collect();
    for n in common::CRITICAL {
        assert!(
            critical.contains(&common::hex(&common::span_id(n))),
            "span {n} not critical: {critical:?}"
        );
    }
    for n in common::NOT_CRITICAL {
        assert!(
            !critical.contains(&common::hex(&common::span_id(n))),
            "span {n} critical"
        );
    }

    // The collector's errors come through with their status and message.
    let (status, _, body) = call(
        &router,
        "GET",
        "/api/traces/ffffffffffffffffffffffffffffffff",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(json(&body)["errors"][0]["msg"], "trace not found");
    let (status, _, body) = call(&router, "GET", "/api/traces?minDuration=fast").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        json(&body)["errors"][0]["msg"]
            .as_str()
            .unwrap()
            .starts_with("unable to parse param 'minDuration'")
    );
    let (status, _, _) = call(&router, "GET", "/api/clew/red?step=1ns").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Metrics count what was served.
    let (status, _, body) = call(&router, "GET", "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains(r#"clew_visualizer_requests_total{code="2xx",kind="api"} 3"#),
        "{text}"
    );
    assert!(
        text.contains(r#"clew_visualizer_requests_total{code="4xx",kind="api"} 3"#),
        "{text}"
    );
    assert!(
        text.contains("clew_visualizer_upstream_seconds_bucket"),
        "{text}"
    );
}

#[tokio::test]
async fn an_unreachable_collector_is_a_clear_502_without_internals() {
    // A port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let router =
        app(AppState::new(&format!("http://127.0.0.1:{port}"), Duration::from_secs(2)).unwrap());
    let (status, _, body) = call(&router, "GET", "/api/services").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let v = json(&body);
    assert_eq!(
        v["errors"][0]["msg"],
        "the collector's query API cannot be reached"
    );
    assert_eq!(v["errors"][0]["code"], 502);
    assert!(!String::from_utf8_lossy(&body).contains(&port.to_string()));
    // Still alive and ready: the UI must be able to say the collector is down.
    assert_eq!(call(&router, "GET", "/healthz").await.0, StatusCode::OK);
    assert_eq!(call(&router, "GET", "/readyz").await.0, StatusCode::OK);
    let (_, _, body) = call(&router, "GET", "/metrics").await;
    assert!(
        String::from_utf8(body)
            .unwrap()
            .contains(r#"clew_visualizer_upstream_errors_total{reason="unreachable"} 1"#)
    );
}

#[tokio::test]
async fn a_hung_collector_times_out_with_504() {
    // Accepts connections, never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (sock, _) = listener.accept().await.unwrap();
            held.push(sock);
        }
    });
    let router = app(AppState::new(&format!("http://{addr}"), Duration::from_millis(300)).unwrap());
    let (status, _, body) = call(&router, "GET", "/api/services").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        json(&body)["errors"][0]["msg"],
        "the collector's query API did not answer in time"
    );
    hold.abort();
}

#[test]
fn bad_query_urls_stop_start_up_with_a_clear_message() {
    for (url, why) in [
        ("https://collector:16686", "https:// needs --query-ca"),
        ("collector:16686", "must start with http:// or https://"),
        ("http://", "not a URL"),
        ("http://collector:16686/?x=1", "must not have a query"),
    ] {
        let err = AppState::new(url, Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert_eq!(err, format!("invalid --query-url {url:?}: {why}"));
    }
    // A trailing slash or a path prefix is fine.
    AppState::new("http://collector:16686/", Duration::from_secs(1)).unwrap();
    AppState::new("http://gateway/clew", Duration::from_secs(1)).unwrap();
}

#[tokio::test]
async fn run_serves_until_shutdown_and_then_returns() {
    let collector = common::collector(common::known_storage().await).await;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let config = <clew_visualizer::Config as clap::Parser>::parse_from([
        "clew-visualizer".to_string(),
        "--addr=127.0.0.1:0".into(),
        format!("--query-url=http://{collector}"),
        "--query-timeout=5s".into(),
    ]);
    let server = tokio::spawn(clew_visualizer::run(
        config,
        async move {
            let _ = rx.await;
        },
        move |a| {
            let _ = addr_tx.send(a);
        },
    ));
    let addr = addr_rx.await.unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = String::new();
    stream.read_to_string(&mut buf).await.unwrap();
    assert!(buf.starts_with("HTTP/1.1 200"), "{buf}");
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_are_closed_and_metrics_still_served() {
    use clew_runtime::net::testing::{HttpClient, metric, open_idle, slowloris, wait_all_closed};
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let config = <clew_visualizer::Config as clap::Parser>::parse_from([
        "clew-visualizer",
        "--addr=127.0.0.1:0",
        "--max-connections=20",
        "--conn-idle-timeout=1s",
        "--header-read-timeout=500ms",
    ]);
    let server = tokio::spawn(clew_visualizer::run(
        config,
        async move {
            let _ = rx.await;
        },
        move |a| {
            let _ = addr_tx.send(a);
        },
    ));
    let addr = addr_rx.await.unwrap();
    let (cut, left, metrics) = tokio::task::spawn_blocking(move || {
        let slow = std::thread::spawn(move || slowloris(addr, Duration::from_millis(200), 50));
        // More idle connections than the limit: the excess is refused or
        // evicts, the rest are closed when idle.
        let (mut idle, err) = open_idle(addr, 40);
        assert!(err.is_none(), "{err:?}");
        let cut = slow.join().unwrap();
        let left = wait_all_closed(&mut idle, Duration::from_secs(10));
        let (status, body) = HttpClient::new(addr, Duration::from_secs(5))
            .request("GET", "/metrics", "text/plain", b"")
            .unwrap();
        assert_eq!(status, 200);
        (cut, left, String::from_utf8(body).unwrap())
    })
    .await
    .unwrap();
    assert!(cut.is_some_and(|c| c < Duration::from_secs(3)), "{cut:?}");
    assert_eq!(left, 0, "idle connections left open");
    let closed = ["refused", "evicted", "idle_closed"]
        .map(|m| metric(&metrics, &format!("clew_connections_{m}_total"), "ui"));
    assert!(closed[0] + closed[1] > 0 && closed[2] > 0, "{metrics}");
    tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}
