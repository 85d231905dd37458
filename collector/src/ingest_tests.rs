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
            wal,
        )
        .unwrap(),
    );
    Setup {
        ingest: Ingest::new(Arc::clone(&assembler), config),
        assembler,
        storage,
        _dir: dir,
    }
}

async fn serve(ingest: Ingest) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(async move {
        // Gzip accepted, as `server::run` configures both services.
        let gzip = tonic::codec::CompressionEncoding::Gzip;
        tonic::transport::Server::builder()
            .add_service(OtlpGrpcServer::new(ingest.clone()).accept_compressed(gzip))
            .add_service(
                pb::collector_server::CollectorServer::new(NativeGrpc(ingest))
                    .accept_compressed(gzip),
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
