#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The sidecar against real collectors (in-process, over loopback gRPC).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use clap::Parser as _;
use clew_e2e::proxy::Proxy;
use clew_proto::v1 as pb;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, trace_service_client::TraceServiceClient,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message as _;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

type Shutdown = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
type OnBound<B> = Box<dyn FnOnce(B) + Send>;

/// A server running in this process (on the test's runtime) until `stop`.
struct Running<B> {
    bound: B,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl<B: Send + 'static> Running<B> {
    /// Starts `run(shutdown, on_bound)` and waits until it has bound.
    async fn spawn<F, E>(run: impl FnOnce(Shutdown, OnBound<B>) -> F) -> Self
    where
        F: std::future::Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Debug,
    {
        let (stop, stop_rx) = oneshot::channel::<()>();
        let (bound_tx, bound_rx) = oneshot::channel();
        let server = run(
            Box::pin(async {
                let _ = stop_rx.await;
            }),
            Box::new(move |b| {
                let _ = bound_tx.send(b);
            }),
        );
        let task = tokio::spawn(async move {
            server.await.unwrap();
        });
        Running {
            bound: bound_rx.await.unwrap(),
            stop: Some(stop),
            task,
        }
    }

    /// Stops the server and waits until it has (it must exit cleanly).
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap();
    }
}

struct Collector {
    grpc: SocketAddr,
    server: Running<clew_collector::server::Bound>,
}

impl Collector {
    async fn start(grpc: &str, data: &Path) -> Self {
        Self::start_with(grpc, data, &[]).await
    }

    async fn start_with(grpc: &str, data: &Path, extra: &[&str]) -> Self {
        let mut args = vec![
            "clew-collector",
            "--grpc-addr",
            grpc,
            "--http-addr",
            "127.0.0.1:0",
            "--query-addr",
            "127.0.0.1:0",
            "--ops-addr",
            "127.0.0.1:0",
            "--storage",
            // Embedded: it survives the restarts these tests make.
            "embedded",
            "--data-dir",
            data.to_str().unwrap(),
            "--idle-window",
            "50ms",
        ];
        args.extend_from_slice(extra);
        let cfg = clew_collector::server::Config::parse_from(args);
        let server =
            Running::spawn(|stop, bound| clew_collector::server::run(cfg, stop, bound)).await;
        Collector {
            grpc: server.bound.grpc,
            server,
        }
    }

    async fn stop(self) {
        self.server.stop().await;
    }

    /// Spans stored for `trace_id` (0 when unknown).
    async fn spans_of(&self, trace_id: &[u8]) -> usize {
        let mut q = pb::query_client::QueryClient::connect(format!("http://{}", self.grpc))
            .await
            .unwrap();
        match q
            .get_trace(pb::GetTraceRequest {
                trace_id: trace_id.to_vec(),
            })
            .await
        {
            Ok(t) => t.into_inner().spans.len(),
            Err(s) if s.code() == tonic::Code::NotFound => 0,
            Err(s) => panic!("query failed: {s}"),
        }
    }
}

struct Sidecar {
    server: Running<clew_sidecar::server::Bound>,
}

impl Sidecar {
    async fn start(collectors: &[SocketAddr], spill: &Path, extra: &[&str]) -> Self {
        let list = collectors
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut args = vec![
            "clew-sidecar".to_string(),
            "--grpc-addr=127.0.0.1:0".into(),
            "--http-addr=127.0.0.1:0".into(),
            "--ops-addr=127.0.0.1:0".into(),
            format!("--collectors={list}"),
            format!("--spill-dir={}", spill.display()),
            "--request-timeout=1s".into(),
            "--breaker-cool-down=200ms".into(),
            "--shutdown-timeout=2s".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let cfg = clew_sidecar::Config::parse_from(args);
        Sidecar {
            server: Running::spawn(|stop, bound| clew_sidecar::run(cfg, stop, bound)).await,
        }
    }

    async fn stop(self) {
        self.server.stop().await;
    }

    async fn client(&self) -> TraceServiceClient<tonic::transport::Channel> {
        TraceServiceClient::connect(format!("http://{}", self.server.bound.grpc))
            .await
            .unwrap()
    }

    async fn metric(&self, name: &str) -> f64 {
        let body = http_get(self.server.bound.ops, "/metrics").await.1;
        body.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// A minimal HTTP/1.1 client over a raw socket (keeps the test honest about
/// what is on the wire).
async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text[9..12].parse().unwrap();
    let (headers, body) = text.split_once("\r\n\r\n").unwrap();
    (status, headers.to_lowercase(), body.to_string())
}

async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (s, _, b) = http_request(addr, "GET", path, "text/plain", b"").await;
    (s, b)
}

fn trace_id(i: u64) -> Vec<u8> {
    let mut v = (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
        .to_be_bytes()
        .to_vec();
    v.extend_from_slice(&(i + 1).to_be_bytes());
    v
}

/// Recent timestamps: the collector prunes traces past its retention.
fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn span(trace: &[u8], n: u64) -> Span {
    let start = now_nanos() - 60_000_000_000;
    Span {
        trace_id: trace.to_vec(),
        span_id: (n + 1).to_be_bytes().to_vec(),
        name: format!("op-{n}"),
        kind: 2,
        start_time_unix_nano: start + n * 1000,
        end_time_unix_nano: start + n * 1000 + 500,
        ..Default::default()
    }
}

/// One request with `per_trace` spans of each of `traces`, span ids
/// starting at `first_span`.
fn request(traces: &[Vec<u8>], per_trace: u64, first_span: u64) -> ExportTraceServiceRequest {
    let spans = traces
        .iter()
        .flat_map(|t| (0..per_trace).map(move |n| span(t, first_span + n)))
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue("checkout".into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            schema_url: String::new(),
        }],
    }
}

async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn stored(collectors: &[&Collector], trace: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    for c in collectors {
        out.push(c.spans_of(trace).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_trace_lands_whole_on_one_collector() {
    let dir = tempfile::tempdir().unwrap();
    let c1 = Collector::start("127.0.0.1:0", &dir.path().join("c1")).await;
    let c2 = Collector::start("127.0.0.1:0", &dir.path().join("c2")).await;
    let sc = Sidecar::start(&[c1.grpc, c2.grpc], &dir.path().join("spill"), &[]).await;
    let mut client = sc.client().await;
    let traces: Vec<Vec<u8>> = (0..40).map(trace_id).collect();
    // Each trace's spans arrive in three requests mixing all traces.
    for round in 0..3 {
        client.export(request(&traces, 4, round * 4)).await.unwrap();
    }
    for t in &traces {
        let t2 = t.clone();
        let (a, b) = (&c1, &c2);
        wait_until("trace stored", Duration::from_secs(10), || {
            let t = t2.clone();
            async move { stored(&[a, b], &t).await.iter().sum::<usize>() == 12 }
        })
        .await;
    }
    let mut on_c1 = 0;
    for t in &traces {
        let counts = stored(&[&c1, &c2], t).await;
        assert!(
            counts == [12, 0] || counts == [0, 12],
            "trace split across collectors: {counts:?}"
        );
        on_c1 += usize::from(counts[0] == 12);
    }
    assert!(
        (5..35).contains(&on_c1),
        "routing should use both collectors, c1 got {on_c1}/40"
    );
    assert_eq!(sc.metric("clew_sidecar_spans_forwarded_total").await, 480.0);
    assert_eq!(sc.metric("clew_sidecar_spans_received_total").await, 480.0);
    sc.stop().await;
    c1.stop().await;
    c2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_outage_spills_and_replays_everything() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start("127.0.0.1:0", &dir.path().join("c")).await;
    // The sidecar reaches the collector through a proxy that can cut the
    // network; the proxy keeps its port, so no other process can take it
    // while the collector is "down".
    let net = Proxy::start(any_port(), c.grpc).await.unwrap();
    let sc = Sidecar::start(&[net.addr], &dir.path().join("spill"), &[]).await;
    let mut client = sc.client().await;
    let traces: Vec<Vec<u8>> = (100..120).map(trace_id).collect();
    client.export(request(&traces, 2, 0)).await.unwrap();
    wait_until("first batch delivered", Duration::from_secs(10), || async {
        sc.metric("clew_sidecar_spans_forwarded_total").await == 40.0
    })
    .await;
    net.set_blocked(true);

    // The collector is unreachable: every request is still accepted.
    for round in 1..6 {
        client.export(request(&traces, 2, round * 2)).await.unwrap();
    }
    wait_until("spans spilled", Duration::from_secs(30), || async {
        sc.metric("clew_sidecar_spans_spilled_total").await >= 200.0
            && sc.metric("clew_sidecar_breaker_open").await == 1.0
    })
    .await;

    net.set_blocked(false);
    for t in &traces {
        let tt = t.clone();
        let cc = &c;
        wait_until("replayed trace stored", Duration::from_secs(15), || {
            let t = tt.clone();
            async move { cc.spans_of(&t).await == 12 }
        })
        .await;
    }
    assert!(sc.metric("clew_sidecar_spans_replayed_total").await >= 200.0);
    assert_eq!(sc.metric("clew_sidecar_spans_refused_total").await, 0.0);
    sc.stop().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_restart_replays_its_spill_log() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start("127.0.0.1:0", &dir.path().join("c")).await;
    let net = Proxy::start(any_port(), c.grpc).await.unwrap();
    net.set_blocked(true);
    let addr = net.addr;
    let spill = dir.path().join("spill");
    let sc = Sidecar::start(&[addr], &spill, &["--shutdown-timeout=200ms"]).await;
    let mut client = sc.client().await;
    let traces: Vec<Vec<u8>> = (200..210).map(trace_id).collect();
    for round in 0..3 {
        client.export(request(&traces, 3, round * 3)).await.unwrap();
    }
    // Graceful shutdown cannot deliver, so everything goes to disk.
    sc.stop().await;
    assert_eq!(c.spans_of(&traces[0]).await, 0);

    net.set_blocked(false);
    let sc = Sidecar::start(&[addr], &spill, &[]).await;
    for t in &traces {
        let tt = t.clone();
        let cc = &c;
        wait_until(
            "trace replayed after restart",
            Duration::from_secs(15),
            || {
                let t = tt.clone();
                async move { cc.spans_of(&t).await == 9 }
            },
        )
        .await;
    }
    sc.stop().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_endpoint_hands_its_spans_to_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = clew_sidecar::metrics::Metrics::new();
    let live = Collector::start("127.0.0.1:0", &dir.path().join("c")).await;
    // An endpoint nobody answers on (a proxy that refuses everything).
    let dead_net = Proxy::start(any_port(), live.grpc).await.unwrap();
    dead_net.set_blocked(true);
    let dead = dead_net.addr;
    let mut cfg = clew_sidecar::PipelineConfig::new(dir.path().join("spill"));
    cfg.request_timeout = Duration::from_millis(500);
    cfg.breaker.cool_down = Duration::from_secs(60);
    let p = clew_sidecar::Pipeline::open(cfg, metrics.clone()).unwrap();
    p.set_endpoints(&[live.grpc.to_string(), dead.to_string()])
        .unwrap();
    let traces: Vec<Vec<u8>> = (300..340).map(trace_id).collect();
    p.accept(request(&traces, 2, 0), "test").await.unwrap();
    // Part of the traces are stuck for the dead endpoint.
    let dead_url = format!("http://{dead}");
    wait_until(
        "dead endpoint's share stuck",
        Duration::from_secs(10),
        || async { metrics.send_failures.with_label_values(&[&dead_url]).get() > 0 },
    )
    .await;
    p.set_endpoints(&[live.grpc.to_string()]).unwrap();
    for t in &traces {
        let tt = t.clone();
        let cc = &live;
        wait_until("re-routed trace stored", Duration::from_secs(15), || {
            let t = tt.clone();
            async move { cc.spans_of(&t).await == 2 }
        })
        .await;
    }
    p.shutdown().await;
    // The dead endpoint's log was drained and removed.
    let dirs: Vec<_> = std::fs::read_dir(dir.path().join("spill"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    assert!(
        !dirs.iter().any(|d| d.ends_with(&dead.port().to_string())),
        "{dirs:?}"
    );
    live.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_stay_within_the_collector_limit_and_refusals_are_halved_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start_with(
        "127.0.0.1:0",
        &dir.path().join("c"),
        &["--max-spans-per-batch", "100"],
    )
    .await;
    let net = Proxy::start(any_port(), c.grpc).await.unwrap();
    // The sidecar's span limit (8192) is above the collector's (100): the
    // first request of 1,000 spans is refused and sent again in halves.
    let sc = Sidecar::start(&[net.addr], &dir.path().join("spill"), &[]).await;
    let mut client = sc.client().await;
    let traces: Vec<Vec<u8>> = (500..600).map(trace_id).collect();
    client.export(request(&traces, 10, 0)).await.unwrap();
    // An outage builds a backlog far larger than one request may be; the
    // replay must send it in requests the collector takes.
    net.set_blocked(true);
    for round in 1..=20 {
        client
            .export(request(&traces, 1, 10 + round))
            .await
            .unwrap();
    }
    net.set_blocked(false);
    for t in &traces {
        let tt = t.clone();
        let cc = &c;
        wait_until("every span stored", Duration::from_secs(20), || {
            let t = tt.clone();
            async move { cc.spans_of(&t).await == 30 }
        })
        .await;
    }
    assert_eq!(sc.metric("clew_sidecar_spans_dropped_total").await, 0.0);
    assert_eq!(
        sc.metric("clew_sidecar_spans_forwarded_total").await,
        3000.0
    );
    sc.stop().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_buffer_and_spill_log_refuse_instead_of_losing() {
    let dir = tempfile::tempdir().unwrap();
    let net = Proxy::start(any_port(), any_port()).await.unwrap();
    net.set_blocked(true);
    let addr = net.addr;
    let sc = Sidecar::start(
        &[addr],
        &dir.path().join("spill"),
        &["--buffer-bytes=4096", "--spill-max-bytes=65536"],
    )
    .await;
    let mut client = sc.client().await;
    let traces: Vec<Vec<u8>> = (0..50).map(trace_id).collect();
    let mut refused = None;
    for round in 0..200 {
        match client.export(request(&traces, 1, round)).await {
            Ok(_) => {}
            Err(s) => {
                refused = Some(s);
                break;
            }
        }
    }
    let s = refused.expect("a full sidecar must refuse");
    assert_eq!(s.code(), tonic::Code::ResourceExhausted);
    assert!(s.message().contains("retry"), "{}", s.message());
    assert!(sc.metric("clew_sidecar_spans_refused_total").await > 0.0);
    sc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_http_protobuf_and_json_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start("127.0.0.1:0", &dir.path().join("c")).await;
    let sc = Sidecar::start(&[c.grpc], &dir.path().join("spill"), &[]).await;
    let http = sc.server.bound.http;

    let t1 = trace_id(900);
    let body = request(std::slice::from_ref(&t1), 2, 0).encode_to_vec();
    let (status, _, _) =
        http_request(http, "POST", "/v1/traces", "application/x-protobuf", &body).await;
    assert_eq!(status, 200);

    let t2 = trace_id(901);
    let hex: String = t2.iter().map(|b| format!("{b:02x}")).collect();
    let json = format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"web"}}}}]}},"scopeSpans":[{{"spans":[{{"traceId":"{hex}","spanId":"0000000000000001","name":"GET /","kind":2,"startTimeUnixNano":"{}","endTimeUnixNano":"{}"}}]}}]}}]}}"#,
        now_nanos() - 1000,
        now_nanos()
    );
    let (status, _, resp) = http_request(
        http,
        "POST",
        "/v1/traces",
        "application/json",
        json.as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp, "{}");

    let (status, _, resp) = http_request(
        http,
        "POST",
        "/v1/traces",
        "application/json",
        b"{\"resourceSpans\":[",
    )
    .await;
    assert_eq!(status, 400);
    assert!(resp.contains("invalid JSON at line 1"), "{resp}");
    let (status, _, _) = http_request(
        http,
        "POST",
        "/v1/traces",
        "application/x-protobuf",
        b"\xff\xff\xff",
    )
    .await;
    assert_eq!(status, 400);
    let (status, _, _) = http_request(http, "POST", "/v1/traces", "text/plain", b"hi").await;
    assert_eq!(status, 415);

    wait_until("HTTP spans stored", Duration::from_secs(10), || async {
        c.spans_of(&t1).await == 2 && c.spans_of(&t2).await == 1
    })
    .await;
    let (status, body) = http_get(sc.server.bound.ops, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    sc.stop().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_spans_are_forwarded_as_otlp_with_their_clocks() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start("127.0.0.1:0", &dir.path().join("c")).await;
    let sc = Sidecar::start(&[c.grpc], &dir.path().join("spill"), &[]).await;
    let mut native =
        pb::collector_client::CollectorClient::connect(format!("http://{}", sc.server.bound.grpc))
            .await
            .unwrap();
    let t = trace_id(777);
    let good = pb::Span {
        trace_id: t.clone(),
        span_id: 5u64.to_be_bytes().to_vec(),
        name: "lookup".into(),
        service: "inventory".into(),
        node: "inventory-1".into(),
        start_time_unix_nano: now_nanos() - 1_000_000,
        end_time_unix_nano: now_nanos(),
        clock_start: Some(pb::VectorClock {
            entries: vec![pb::ClockEntry {
                node: "inventory-1".into(),
                counter: 3,
            }],
        }),
        ..Default::default()
    };
    let bad = pb::Span {
        trace_id: vec![1, 2, 3],
        ..good.clone()
    };
    let resp = native
        .export(pb::ExportRequest {
            spans: vec![good, bad],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((resp.accepted, resp.rejected), (1, 1));
    assert!(
        resp.error_message.contains("trace_id"),
        "{}",
        resp.error_message
    );
    let mut q = pb::query_client::QueryClient::connect(format!("http://{}", c.grpc))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let stored = loop {
        match q
            .get_trace(pb::GetTraceRequest {
                trace_id: t.clone(),
            })
            .await
        {
            Ok(tr) => break tr.into_inner(),
            Err(_) => assert!(Instant::now() < deadline, "native span never stored"),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let span = &stored.spans[0];
    assert_eq!(span.service, "inventory");
    assert_eq!(span.node, "inventory-1");
    assert_eq!(span.clock_start.as_ref().unwrap().entries[0].counter, 3);
    sc.stop().await;
    c.stop().await;
}

#[tokio::test]
async fn endpoints_resolve_from_dns() {
    let list = clew_sidecar::server::resolve("localhost:4317")
        .await
        .unwrap();
    assert!(
        list.contains(&"http://127.0.0.1:4317".to_string()),
        "{list:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_refresh_keeps_the_collectors_given_by_flag() {
    let dir = tempfile::tempdir().unwrap();
    let fixed: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let sc = Sidecar::start(
        &[fixed],
        dir.path(),
        &["--collector-dns=localhost:4317", "--dns-refresh=100ms"],
    )
    .await;
    let from_dns = clew_sidecar::server::resolve("localhost:4317")
        .await
        .unwrap()
        .len() as f64;
    assert!(from_dns >= 1.0);
    // Wait for two refreshes (the first fires at once), then the set is
    // still the flag's endpoint plus the DNS answer.
    let deadline = Instant::now() + Duration::from_secs(30);
    while sc.metric("clew_sidecar_dns_refreshes_total").await < 2.0 {
        assert!(Instant::now() < deadline, "no DNS refresh");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sc.metric("clew_sidecar_endpoints").await, 1.0 + from_dns);
    sc.stop().await;
}

#[tokio::test]
async fn no_collectors_is_a_clear_start_up_error() {
    let cfg = clew_sidecar::Config::parse_from(["clew-sidecar", "--spill-dir", "/tmp/x"]);
    let err = clew_sidecar::run(cfg, async {}, |_| {}).await.unwrap_err();
    assert!(err.to_string().contains("CLEW_SIDECAR_COLLECTORS"), "{err}");
}

/// The OpenTelemetry Python SDK's OTLP exporters, plain and gzip, over
/// gRPC and HTTP into the sidecar, and on to the collector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_opentelemetry_python_sdk_exports_through_the_sidecar_plain_and_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start("127.0.0.1:0", &dir.path().join("c")).await;
    let sc = Sidecar::start(&[c.grpc], &dir.path().join("spill"), &[]).await;
    let ids = clew_collector::testing::otel_sdk_send(
        sc.server.bound.grpc,
        &format!("http://{}/v1/traces", sc.server.bound.http),
    )
    .await;
    for key in ["grpc", "http", "grpc-gzip", "http-gzip"] {
        let hex = ids[key].as_str().unwrap();
        let id: Vec<u8> = (0..16)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        wait_until(key, Duration::from_secs(30), || async {
            c.spans_of(&id).await >= 2
        })
        .await;
        assert_eq!(c.spans_of(&id).await, 2, "{key}");
    }
    sc.stop().await;
    c.stop().await;
}
