//! Ingest over real gRPC on loopback (fed by clew-tracer's own OTLP and
//! native exporters) and OTLP/HTTP through the axum router.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use clew_proto::v1 as pb;
use clew_tracer::export::{NativeExporter, OtlpGrpcExporter, SpanExporter};
use clew_tracer::{Sampler, TraceId, Tracer};
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, trace_service_client::TraceServiceClient,
};
use prost::Message;
use tower::ServiceExt;

use super::*;

/// `google.rpc.Status`, decoded here independently of the code under test.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}
use crate::assembly::{Assembler, AssemblerConfig};
use crate::sink::StorageSink;
use crate::storage::Storage;
use crate::storage::memory::MemoryStorage;
use crate::wal::{
    Wal,
    tests::{fast_config, records_on_disk, snapshot},
};

struct Setup {
    ingest: Ingest,
    assembler: Arc<Assembler>,
    storage: Arc<dyn Storage>,
    wal: Wal,
    _dir: tempfile::TempDir,
}

fn setup(config: IngestConfig) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new(10_000));
    let (wal, _) = Wal::open(dir.path(), fast_config()).unwrap();
    let assembler = Arc::new(
        Assembler::new(
            AssemblerConfig {
                // Nothing flushes on its own: tests flush explicitly.
                idle_window: Duration::from_secs(3600),
                max_trace_age: Duration::from_secs(3600),
                ..AssemblerConfig::default()
            },
            Arc::new(StorageSink::new(Arc::clone(&storage))),
            wal.clone(),
        )
        .unwrap(),
    );
    Setup {
        ingest: Ingest::new(Arc::clone(&assembler), config),
        assembler,
        storage,
        wal,
        _dir: dir,
    }
}

async fn serve(ingest: Ingest) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(async move {
        // Gzip and the request size limit, as `server::run` configures both
        // services.
        let gzip = tonic::codec::CompressionEncoding::Gzip;
        let max = ingest.config().max_request_bytes;
        tonic::transport::Server::builder()
            .add_service(
                OtlpGrpcServer::new(ingest.clone())
                    .accept_compressed(gzip)
                    .max_decoding_message_size(max),
            )
            .add_service(
                pb::collector_server::CollectorServer::new(NativeGrpc(ingest))
                    .accept_compressed(gzip)
                    .max_decoding_message_size(max),
            )
            .serve_with_incoming(incoming)
            .await
    });
    addr
}

fn tracer(name: &str, exporter: impl SpanExporter) -> Tracer {
    Tracer::builder(name)
        .node_id(name)
        .sampler(Sampler::AlwaysOn)
        .exporter(exporter)
        .build()
}

/// Starts a parent and a child span and returns the trace id.
fn emit(t: &Tracer) -> TraceId {
    let mut root = t.start("root");
    root.set_attribute("http.route", "/x");
    let child = t.span("child").parent(&root.context()).start();
    drop(child);
    let id = root.trace_id();
    root.end();
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_and_native_grpc_from_clew_tracer_are_stored_with_clocks() {
    let s = setup(IngestConfig::default());
    let addr = serve(s.ingest.clone()).await;
    let otlp = tracer(
        "via-otlp",
        OtlpGrpcExporter::new(&addr.to_string()).unwrap(),
    );
    let native = tracer(
        "via-native",
        NativeExporter::new(&addr.to_string()).unwrap(),
    );
    let (a, b) = (emit(&otlp), emit(&native));
    for t in [&otlp, &native] {
        assert!(t.force_flush(Duration::from_secs(10)));
        assert_eq!(t.stats().export_failed, 0);
    }
    s.assembler.flush_all().await;
    for (id, service) in [(a, "via-otlp"), (b, "via-native")] {
        let trace = s.storage.get_trace(id).await.unwrap().expect("stored");
        assert_eq!(trace.spans.len(), 2);
        let root = trace.spans.iter().find(|x| x.name == "root").unwrap();
        let child = trace.spans.iter().find(|x| x.name == "child").unwrap();
        assert_eq!(root.service, service);
        assert_eq!(child.parent_span_id, root.span_id);
        let start = clew_tracer::VectorClock::from_proto(child.clock_start.as_ref().unwrap());
        let end = clew_tracer::VectorClock::from_proto(root.clock_end.as_ref().unwrap());
        assert!(start.get(service) > 0, "clock carried through {service}");
        assert!(start.happened_before(&end));
    }
    assert_eq!(s.ingest.stats().accepted.load(Ordering::Relaxed), 4);
}

fn otlp_request(spans: usize, zero_trace_id_at: Option<usize>) -> ExportTraceServiceRequest {
    let exp = clew_tracer::export::InMemoryExporter::new();
    let t = tracer("svc", exp.clone());
    for _ in 0..spans {
        t.start("op").end();
    }
    assert!(t.force_flush(Duration::from_secs(5)));
    let data = exp.finished_spans();
    let resource = exp.resource().unwrap();
    let mut rs = clew_tracer::export::convert::to_otlp_resource_spans(data.iter(), &resource);
    if let Some(i) = zero_trace_id_at {
        rs.scope_spans[0].spans[i].trace_id = vec![0; 16];
    }
    ExportTraceServiceRequest {
        resource_spans: vec![rs],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_spans_are_refused_one_by_one_and_oversized_batches_whole() {
    let s = setup(IngestConfig {
        limits: otlp::Limits {
            max_spans_per_batch: 10,
            ..Default::default()
        },
        ..Default::default()
    });
    let addr = serve(s.ingest.clone()).await;
    let mut client = TraceServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let resp = client
        .export(otlp_request(3, Some(1)))
        .await
        .unwrap()
        .into_inner();
    let partial = resp.partial_success.expect("partial success");
    assert_eq!(partial.rejected_spans, 1);
    assert!(!partial.error_message.is_empty());
    assert_eq!(s.ingest.stats().accepted.load(Ordering::Relaxed), 2);

    let err = client.export(otlp_request(11, None)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("11"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_memory_limit_ingest_pushes_back() {
    let s = setup(IngestConfig {
        memory_limit_bytes: 0,
        ..Default::default()
    });
    let addr = serve(s.ingest.clone()).await;
    let mut client = TraceServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    // The first batch is accepted and waits in assembly ...
    client.export(otlp_request(2, None)).await.unwrap();
    assert!(s.assembler.pending_bytes() > 0);
    // ... so the next one is refused rather than grow memory.
    let err = client.export(otlp_request(2, None)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    // Nothing accepted is lost: it reaches storage.
    s.assembler.flush_all().await;
    assert_eq!(s.storage.services().await.unwrap(), vec!["svc".to_string()]);

    let app = http_router(s.ingest.clone());
    let body = otlp_request(1, None).encode_to_vec();
    let resp = app
        .oneshot(
            http::Request::post("/v1/traces")
                .header("content-type", "application/x-protobuf")
                .body(Body::from(body))
                .unwrap(),
        )
        .await
        .unwrap();
    // Assembly is empty again after the flush, so this one is accepted.
    assert_eq!(resp.status(), 200);
}

async fn post(app: axum::Router, content_type: &str, body: Vec<u8>) -> (u16, HeaderMap, Vec<u8>) {
    let resp = app
        .oneshot(
            http::Request::post("/v1/traces")
                .header("content-type", content_type)
                .body(Body::from(body))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status().as_u16();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_http_protobuf_and_json() {
    let s = setup(IngestConfig {
        max_request_bytes: 64 * 1024,
        ..Default::default()
    });
    let app = http_router(s.ingest.clone());

    let (status, headers, body) = post(
        app.clone(),
        "application/x-protobuf",
        otlp_request(2, None).encode_to_vec(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/x-protobuf");
    ExportTraceServiceResponse::decode(body.as_slice()).unwrap();

    let json = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"json-svc"}}]},
      "scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
      "name":"GET /","kind":2,"startTimeUnixNano":"1544712660000000000","endTimeUnixNano":"1544712661000000000"}]}]}]}"#;
    let (status, headers, _) = post(app.clone(), "application/json", json.into()).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    s.assembler.flush_all().await;
    let id = TraceId::from_hex("5b8efff798038103d269b633813fc60c").unwrap();
    let trace = s
        .storage
        .get_trace(id)
        .await
        .unwrap()
        .expect("json span stored");
    assert_eq!(trace.spans[0].service, "json-svc");

    // Malformed: 400 with a google.rpc.Status body, nothing stored.
    let (status, _, body) = post(
        app.clone(),
        "application/x-protobuf",
        vec![0xff, 0xff, 0xff],
    )
    .await;
    assert_eq!(status, 400);
    let rpc = RpcStatus::decode(body.as_slice()).unwrap();
    assert_eq!(rpc.code, tonic::Code::InvalidArgument as i32);
    let (status, _, body) = post(app.clone(), "application/json", b"{not json".to_vec()).await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("\"code\""));
    let (status, _, _) = post(app.clone(), "text/plain", b"hi".to_vec()).await;
    assert_eq!(status, 415);
    let (status, _, _) = post(app.clone(), "application/x-protobuf", vec![0; 128 * 1024]).await;
    assert_eq!(status, 413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_overload_is_429_with_retry_after() {
    let s = setup(IngestConfig {
        memory_limit_bytes: 0,
        retry_after: Duration::from_secs(3),
        ..Default::default()
    });
    let app = http_router(s.ingest.clone());
    let (status, _, _) = post(
        app.clone(),
        "application/x-protobuf",
        otlp_request(1, None).encode_to_vec(),
    )
    .await;
    assert_eq!(status, 200);
    let (status, headers, _) = post(
        app,
        "application/x-protobuf",
        otlp_request(1, None).encode_to_vec(),
    )
    .await;
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_opentelemetry_python_sdk_exports_over_grpc_and_http_plain_and_gzip() {
    let s = setup(IngestConfig::default());
    let grpc = serve(s.ingest.clone()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_addr = listener.local_addr().unwrap();
    let app = http_router(s.ingest.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let ids = crate::testing::otel_sdk_send(grpc, &format!("http://{http_addr}/v1/traces")).await;
    s.assembler.flush_all().await;
    for (proto, service) in [
        ("grpc", "py-grpc"),
        ("http", "py-http"),
        ("grpc-gzip", "py-grpc-gzip"),
        ("http-gzip", "py-http-gzip"),
    ] {
        let id = TraceId::from_hex(ids[proto].as_str().unwrap()).unwrap();
        let trace = s.storage.get_trace(id).await.unwrap().expect("stored");
        assert_eq!(trace.spans.len(), 2, "{proto}");
        let parent = trace
            .spans
            .iter()
            .find(|x| x.name == "GET /checkout")
            .unwrap();
        let child = trace
            .spans
            .iter()
            .find(|x| x.name == "SELECT orders")
            .unwrap();
        assert_eq!(parent.service, service);
        assert_eq!(child.parent_span_id, parent.span_id);
        assert_eq!(parent.kind, pb::SpanKind::Server as i32);
        assert_eq!(
            child.status.as_ref().unwrap().code,
            pb::status::Code::Error as i32
        );
        assert_eq!(child.events.len(), 1);
        assert!(
            parent
                .attributes
                .iter()
                .any(|kv| kv.key == "http.response.status_code")
        );
        assert!(
            parent
                .resource
                .iter()
                .any(|kv| kv.key == "deployment.environment")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_otlp_grpc_server_takes_gzip_and_bounds_the_message_size() {
    use tonic::codec::CompressionEncoding::Gzip;
    let s = setup(IngestConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = OtlpGrpcServer::new(s.ingest.clone())
        .accept_compressed(Gzip)
        .max_decoding_message_size(64 << 10);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let plain = TraceServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let mut gzip = plain.clone().send_compressed(Gzip);
    gzip.export(otlp_request(5, None)).await.unwrap();
    assert_eq!(s.ingest.stats().accepted.load(Ordering::Relaxed), 5);

    let big = otlp_request(2000, None);
    assert!(big.encoded_len() > 64 << 10);
    let err = plain.clone().export(big).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    assert_eq!(s.ingest.stats().accepted.load(Ordering::Relaxed), 5);
    s.assembler.flush_all().await;
    let stored: usize = s
        .storage
        .list_traces(&pb::FilterCriteria {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .iter()
        .map(|t| t.spans.len())
        .sum();
    assert_eq!(stored, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_keeps_an_otlp_request_that_converts_whole_as_it_came() {
    let limits = otlp::Limits::default();
    let s = setup(IngestConfig {
        limits: limits.clone(),
        ..Default::default()
    });
    let addr = serve(s.ingest.clone()).await;
    let mut client = TraceServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let whole = otlp_request(3, None);
    let mut shortened = otlp_request(2, None);
    shortened.resource_spans[0].scope_spans[0].spans[1]
        .attributes
        .push(opentelemetry_proto::tonic::common::v1::KeyValue {
            key: "payload".into(),
            value: Some(opentelemetry_proto::tonic::common::v1::AnyValue {
                value: Some(
                    opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                        "x".repeat(limits.max_value_len + 1),
                    ),
                ),
            }),
            ..Default::default()
        });
    let one_rejected = otlp_request(3, Some(1));
    let sent = [whole, shortened, one_rejected];
    for req in &sent {
        client.export(req.clone()).await.unwrap();
    }

    // What kill -9 would leave now.
    let crashed = tempfile::tempdir().unwrap();
    snapshot(s._dir.path(), crashed.path());
    let on_disk: Vec<Vec<u8>> = records_on_disk(crashed.path()).into_values().collect();
    assert_eq!(on_disk.len(), 3);
    // Converted whole: the request body itself (field 2). Shortened or
    // partly rejected: the converted spans, encoded (field 1).
    assert_eq!(on_disk[0][0], 0x12);
    assert!(on_disk[0].ends_with(&sent[0].encode_to_vec()));
    assert_eq!((on_disk[1][0], on_disk[2][0]), (0x0a, 0x0a));

    let (_wal, replay) = Wal::open(crashed.path(), fast_config()).unwrap();
    let replayed: Vec<Vec<pb::Span>> = replay.into_iter().map(|r| r.batch.spans).collect();
    let accepted: Vec<Vec<pb::Span>> = sent
        .iter()
        .map(|r| otlp::from_otlp(r.clone(), &limits).unwrap().spans)
        .collect();
    assert_eq!(accepted.iter().map(Vec::len).collect::<Vec<_>>(), [3, 2, 2]);
    assert_eq!(replayed, accepted);
    // And the assembler got the same spans.
    s.assembler.flush_all().await;
    for span in accepted.iter().flatten() {
        let id = TraceId::from_slice(&span.trace_id).unwrap();
        let stored = s.storage.get_trace(id).await.unwrap().expect("stored");
        assert!(stored.spans.contains(span), "{span:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_http_content_encodings_other_than_gzip_or_broken_gzip_are_refused() {
    let s = setup(IngestConfig::default());
    let app = http_router(s.ingest.clone());
    let send = |encoding: &'static str, body: Vec<u8>| {
        let app = app.clone();
        async move {
            app.oneshot(
                http::Request::post("/v1/traces")
                    .header("content-type", "application/x-protobuf")
                    .header("content-encoding", encoding)
                    .body(Body::from(body))
                    .unwrap(),
            )
            .await
            .unwrap()
            .status()
            .as_u16()
        }
    };
    let plain = otlp_request(1, None).encode_to_vec();
    assert_eq!(send("br", plain.clone()).await, 415);
    let status = send("gzip", plain).await;
    assert!((400..500).contains(&status), "not gzip: {status}");
    assert_eq!(s.ingest.stats().accepted.load(Ordering::Relaxed), 0);
}

/// One span of trace `n` with `attributes` integer attributes and, when
/// `value_len` > 0, a string attribute that long.
fn oversized_request(n: u8, attributes: usize, value_len: usize) -> ExportTraceServiceRequest {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
    use opentelemetry_proto::tonic::trace::v1 as otlp_trace;
    let kv = |key: String, value: Value| KeyValue {
        key,
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    };
    let mut attrs: Vec<KeyValue> = (0..attributes)
        .map(|i| kv(format!("attr.{i}"), Value::IntValue(i as i64)))
        .collect();
    if value_len > 0 {
        attrs.push(kv(
            "payload".into(),
            Value::StringValue("x".repeat(value_len)),
        ));
    }
    let span = otlp_trace::Span {
        trace_id: vec![n; 16],
        span_id: vec![n; 8],
        name: "huge".into(),
        start_time_unix_nano: 1_000,
        end_time_unix_nano: 2_000,
        attributes: attrs,
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![otlp_trace::ResourceSpans {
            scope_spans: vec![otlp_trace::ScopeSpans {
                spans: vec![span],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// POSTs `body` to `/v1/traces` over a plain TCP connection (HTTP/1.1,
/// `Connection: close`): the status, the content type and the body.
async fn http_post(addr: SocketAddr, content_type: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nhost: {addr}\r\ncontent-type: {content_type}\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(body).await.unwrap();
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await.unwrap();
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(answer[..split].to_vec()).unwrap();
    let status = head[9..12].parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_string)
        })
        .unwrap_or_default();
    (status, content_type, answer[split + 4..].to_vec())
}

/// The collector's `/metrics` text for this setup.
fn render_metrics(s: &Setup) -> String {
    crate::metrics::Metrics::new(
        s.ingest.clone(),
        Arc::clone(&s.assembler),
        s.wal.clone(),
        crate::metrics::Metrics::store_latency_histogram(),
    )
    .with_storage(Arc::clone(&s.storage))
    .render()
}

/// The value of one sample line of the Prometheus text.
fn sample(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{series} missing from\n{metrics}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_spans_are_truncated_reported_counted_and_stored_at_the_limits() {
    // The collector's defaults: 16 MiB requests, 128 attributes, 16 KiB values.
    let s = setup(IngestConfig::default());
    let limits = s.ingest.config().limits.clone();
    let grpc = serve(s.ingest.clone()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap();
    let app = http_router(s.ingest.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mut client = TraceServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();

    let attrs_cut = format!(
        "1 span truncated: {} attributes over the limit of 128 dropped",
        100_000 - limits.max_attributes
    );
    let value_cut = "1 span truncated: 1 value shortened to 16384 bytes";
    let many = |n| oversized_request(n, 100_000, 0);
    let huge = |n| oversized_request(n, 0, 15_000_000);
    let mut answers = Vec::new();
    // OTLP/HTTP, protobuf.
    for (req, want) in [(many(1), &attrs_cut[..]), (huge(2), value_cut)] {
        let (status, ct, body) =
            http_post(http, "application/x-protobuf", &req.encode_to_vec()).await;
        assert_eq!((status, ct.as_str()), (200, "application/x-protobuf"));
        answers.push((
            ExportTraceServiceResponse::decode(body.as_slice()).unwrap(),
            want,
        ));
    }
    // OTLP/gRPC.
    for (req, want) in [(many(3), &attrs_cut[..]), (huge(4), value_cut)] {
        answers.push((client.export(req).await.unwrap().into_inner(), want));
    }
    for (answer, want) in answers {
        let ps = answer.partial_success.expect("truncation is reported");
        assert_eq!(ps.rejected_spans, 0, "a truncated span is not rejected");
        assert_eq!(ps.error_message, want);
    }
    // OTLP/HTTP, JSON: the warning in JSON.
    let json = serde_json::to_vec(&many(5)).unwrap();
    let (status, ct, body) = http_post(http, "application/json", &json).await;
    assert_eq!((status, ct.as_str()), (200, "application/json"));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["partialSuccess"]["rejectedSpans"], "0");
    assert_eq!(v["partialSuccess"]["errorMessage"], attrs_cut.as_str());

    // Counted per reason.
    let metrics = render_metrics(&s);
    let dropped = (100_000 - limits.max_attributes) as u64;
    assert_eq!(
        sample(&metrics, r#"clew_truncated_total{reason="attributes"}"#),
        3 * dropped
    );
    assert_eq!(
        sample(&metrics, r#"clew_truncated_total{reason="values"}"#),
        2
    );
    assert_eq!(
        sample(&metrics, r#"clew_truncated_total{reason="events"}"#),
        0
    );
    assert_eq!(sample(&metrics, "clew_spans_truncated_total"), 5);
    assert_eq!(
        sample(&metrics, r#"clew_spans_total{outcome="accepted"}"#),
        5
    );
    assert_eq!(
        sample(&metrics, r#"clew_spans_total{outcome="rejected"}"#),
        0
    );

    // Stored at the limits.
    s.assembler.flush_all().await;
    for n in [1, 3, 5] {
        let trace = s
            .storage
            .get_trace(TraceId::from_slice(&[n; 16]).unwrap())
            .await
            .unwrap();
        let span = &trace.expect("stored").spans[0];
        assert_eq!(span.attributes.len(), limits.max_attributes);
        assert_eq!(span.attributes[127].key, "attr.127");
    }
    for n in [2, 4] {
        let trace = s
            .storage
            .get_trace(TraceId::from_slice(&[n; 16]).unwrap())
            .await
            .unwrap();
        let span = &trace.expect("stored").spans[0];
        assert_eq!(span.attributes.len(), 1);
        let value = span.attributes[0]
            .value
            .as_ref()
            .and_then(|v| v.value.as_ref());
        let Some(pb::any_value::Value::StringValue(v)) = value else {
            panic!("{value:?}");
        };
        assert_eq!(v.len(), limits.max_value_len);
    }
    // The memory store reports what it holds.
    let mut want = 0;
    for n in 1..=5 {
        let trace = s
            .storage
            .get_trace(TraceId::from_slice(&[n; 16]).unwrap())
            .await;
        want += crate::storage::memory::span_bytes(&trace.unwrap().unwrap().spans[0]);
    }
    let metrics = render_metrics(&s);
    assert_eq!(sample(&metrics, "clew_storage_memory_traces"), 5);
    assert_eq!(sample(&metrics, "clew_storage_memory_bytes"), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_spans_from_the_opentelemetry_python_sdk_are_stored_truncated_and_counted() {
    let s = setup(IngestConfig::default());
    let limits = s.ingest.config().limits.clone();
    let grpc = serve(s.ingest.clone()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap();
    let app = http_router(s.ingest.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let ids =
        crate::testing::otel_sdk_send_oversized(grpc, &format!("http://{http}/v1/traces")).await;
    s.assembler.flush_all().await;
    let stored = |key: &str| {
        let id = TraceId::from_hex(ids[key].as_str().unwrap()).unwrap();
        let storage = Arc::clone(&s.storage);
        async move { storage.get_trace(id).await.unwrap().expect("stored").spans }
    };
    for proto in ["grpc", "http"] {
        let spans = stored(&format!("{proto}-attributes")).await;
        assert_eq!(spans[0].attributes.len(), limits.max_attributes, "{proto}");
        let spans = stored(&format!("{proto}-value")).await;
        let payload = spans[0].attributes.iter().find(|kv| kv.key == "payload");
        let value = payload.and_then(|kv| kv.value.as_ref()?.value.as_ref());
        let Some(pb::any_value::Value::StringValue(v)) = value else {
            panic!("{proto}: {value:?}");
        };
        assert_eq!(v.len(), limits.max_value_len, "{proto}");
    }
    let metrics = render_metrics(&s);
    let dropped = (100_000 - limits.max_attributes) as u64;
    assert_eq!(
        sample(&metrics, r#"clew_truncated_total{reason="attributes"}"#),
        2 * dropped
    );
    assert_eq!(
        sample(&metrics, r#"clew_truncated_total{reason="values"}"#),
        2
    );
    assert_eq!(sample(&metrics, "clew_spans_truncated_total"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_spans_are_truncated_to_the_same_limits_and_told() {
    let s = setup(IngestConfig::default());
    let limits = s.ingest.config().limits.clone();
    let addr = serve(s.ingest.clone()).await;
    let mut client = pb::collector_client::CollectorClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let kv = |key: String, value: pb::any_value::Value| pb::KeyValue {
        key,
        value: Some(pb::AnyValue { value: Some(value) }),
    };
    let span = |n: u8, attributes: Vec<pb::KeyValue>| pb::Span {
        trace_id: vec![n; 16],
        span_id: vec![n; 8],
        name: "huge".into(),
        service: "native".into(),
        start_time_unix_nano: 1_000,
        end_time_unix_nano: 2_000,
        attributes,
        ..Default::default()
    };
    let many = (0..100_000)
        .map(|i| kv(format!("attr.{i}"), pb::any_value::Value::IntValue(i)))
        .collect();
    let huge = vec![kv(
        "payload".into(),
        pb::any_value::Value::StringValue("x".repeat(15_000_000)),
    )];
    let mut bad = span(3, Vec::new());
    bad.span_id = vec![0; 8];
    let dropped = 100_000 - limits.max_attributes;
    for (spans, rejected, want) in [
        (
            vec![span(1, many)],
            0,
            format!("1 span truncated: {dropped} attributes over the limit of 128 dropped"),
        ),
        (
            vec![span(2, huge), bad],
            1,
            "span_id must be 8 bytes and not all zero; 1 span truncated: 1 value shortened to 16384 bytes".to_string(),
        ),
    ] {
        let resp = client
            .export(pb::ExportRequest { spans })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((resp.accepted, resp.rejected), (1, rejected));
        assert_eq!(resp.error_message, want);
    }
    s.assembler.flush_all().await;
    let stored = |n: u8| {
        let storage = Arc::clone(&s.storage);
        async move {
            let id = TraceId::from_slice(&[n; 16]).unwrap();
            storage.get_trace(id).await.unwrap().expect("stored").spans
        }
    };
    assert_eq!(stored(1).await[0].attributes.len(), limits.max_attributes);
    let value = stored(2).await[0].attributes[0].value.clone();
    let Some(pb::any_value::Value::StringValue(v)) = value.and_then(|v| v.value) else {
        panic!("not a string");
    };
    assert_eq!(v.len(), limits.max_value_len);
    let metrics = render_metrics(&s);
    assert_eq!(
        sample(&metrics, r#"clew_truncated_total{reason="attributes"}"#),
        dropped as u64
    );
    assert_eq!(
        sample(&metrics, r#"clew_truncated_total{reason="values"}"#),
        1
    );
    assert_eq!(sample(&metrics, "clew_spans_truncated_total"), 2);
}
