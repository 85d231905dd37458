//! Real tonic services over loopback, instrumented with clew's layers:
//! parent/child links, one trace, and vector clocks that order every send
//! before its receive.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use clew_proto::v1::collector_client::CollectorClient;
use clew_proto::v1::collector_server::{Collector, CollectorServer};
use clew_proto::v1::{ExportRequest, ExportResponse};
use clew_tracer::export::InMemoryExporter;
use clew_tracer::instrument::{TraceLayer, TraceService};
use clew_tracer::{ClockOrdering, SpanData, SpanKind, Status, Tracer};
use tokio::sync::oneshot;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response};

type TracedClient = CollectorClient<TraceService<Channel>>;

fn tracer(name: &str, exp: &InMemoryExporter) -> Tracer {
    Tracer::builder(name)
        .node_id(name)
        .sampler(clew_tracer::Sampler::AlwaysOn)
        .exporter(exp.clone())
        .batch_config(clew_tracer::export::BatchConfig {
            scheduled_delay: Duration::from_millis(10),
            ..Default::default()
        })
        .build()
}

async fn client(addr: SocketAddr, tracer: &Tracer) -> TracedClient {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let svc = tower::ServiceBuilder::new()
        .layer(TraceLayer::grpc_client(tracer.clone()))
        .service(channel);
    CollectorClient::new(svc)
}

async fn serve<S: Collector>(svc: S, tracer: Tracer) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(async move {
        Server::builder()
            .layer(TraceLayer::grpc_server(tracer))
            .add_service(CollectorServer::new(svc))
            .serve_with_incoming(incoming)
            .await
    });
    addr
}

/// C: the leaf. Fails when asked to, hangs when asked to.
struct Leaf {
    tracer: Tracer,
    hang_started: tokio::sync::Mutex<Option<oneshot::Sender<()>>>,
}

#[tonic::async_trait]
impl Collector for Leaf {
    async fn export(
        &self,
        req: Request<ExportRequest>,
    ) -> Result<Response<ExportResponse>, tonic::Status> {
        // A span made by handler code nests under the server span.
        let _work = self.tracer.start("c.work");
        match req.get_ref().spans.len() {
            1 => Err(tonic::Status::not_found("no such thing")),
            2 => {
                if let Some(tx) = self.hang_started.lock().await.take() {
                    let _ = tx.send(());
                }
                std::future::pending::<()>().await;
                unreachable!()
            }
            _ => Ok(Response::new(ExportResponse {
                accepted: 7,
                ..Default::default()
            })),
        }
    }

    async fn export_stream(
        &self,
        req: Request<tonic::Streaming<ExportRequest>>,
    ) -> Result<Response<ExportResponse>, tonic::Status> {
        let mut stream = req.into_inner();
        let mut n = 0;
        while let Some(msg) = stream.message().await? {
            n += msg.spans.len() as u64 + 1;
        }
        Ok(Response::new(ExportResponse {
            accepted: n,
            ..Default::default()
        }))
    }
}

/// B: calls C through a traced client.
struct Middle {
    c: TracedClient,
}

#[tonic::async_trait]
impl Collector for Middle {
    async fn export(
        &self,
        req: Request<ExportRequest>,
    ) -> Result<Response<ExportResponse>, tonic::Status> {
        let mut c = self.c.clone();
        let r = c.export(req.into_inner()).await?;
        Ok(Response::new(r.into_inner()))
    }

    async fn export_stream(
        &self,
        _req: Request<tonic::Streaming<ExportRequest>>,
    ) -> Result<Response<ExportResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not here"))
    }
}

struct Setup {
    a: Tracer,
    b: Tracer,
    c: Tracer,
    exp: InMemoryExporter,
    a_to_b: TracedClient,
    a_to_c: TracedClient,
    hang_started: oneshot::Receiver<()>,
}

async fn setup() -> Setup {
    let exp = InMemoryExporter::new();
    let (a, b, c) = (tracer("a", &exp), tracer("b", &exp), tracer("c", &exp));
    let (tx, rx) = oneshot::channel();
    let c_addr = serve(
        Leaf {
            tracer: c.clone(),
            hang_started: tokio::sync::Mutex::new(Some(tx)),
        },
        c.clone(),
    )
    .await;
    let b_to_c = client(c_addr, &b).await;
    let b_addr = serve(Middle { c: b_to_c }, b.clone()).await;
    Setup {
        a_to_b: client(b_addr, &a).await,
        a_to_c: client(c_addr, &a).await,
        a,
        b,
        c,
        exp,
        hang_started: rx,
    }
}

fn flush(s: &Setup) -> Vec<SpanData> {
    for t in [&s.a, &s.b, &s.c] {
        assert!(t.force_flush(Duration::from_secs(5)));
    }
    s.exp.finished_spans()
}

fn find<'a>(spans: &'a [SpanData], name: &str, kind: SpanKind, node: &str) -> &'a SpanData {
    spans
        .iter()
        .find(|s| {
            s.name == name && s.kind == kind && s.clock_start.get(node) > 0 && {
                // The node that emitted the span ticked its own entry last.
                s.clock_start.iter().any(|(n, _)| n == node)
            }
        })
        .unwrap_or_else(|| panic!("no {kind:?} span {name} on {node} in {spans:#?}"))
}

#[tokio::test]
async fn unary_chain_is_one_trace_with_causal_clocks() {
    let mut s = setup().await;
    let root = s.a.start("a.request");
    let root_id = root.span_id();
    let cx = root.context();
    let resp = {
        let fut = s.a_to_b.export(ExportRequest { spans: vec![] });
        clew_tracer::FutureExt::with_context(fut, cx).await.unwrap()
    };
    assert_eq!(resp.get_ref().accepted, 7);
    drop(root);
    let spans = flush(&s);
    assert_eq!(spans.len(), 6, "{spans:#?}");
    let trace = spans[0].context.trace_id;
    assert!(
        spans.iter().all(|x| x.context.trace_id == trace),
        "one trace"
    );

    let name = "clew.v1.Collector/Export";
    let a_client = find(&spans, name, SpanKind::Client, "a");
    let b_server = spans
        .iter()
        .find(|x| x.kind == SpanKind::Server && x.parent_span_id == a_client.context.span_id)
        .expect("b's server span is the child of a's client span");
    let b_client = spans
        .iter()
        .find(|x| x.kind == SpanKind::Client && x.parent_span_id == b_server.context.span_id)
        .expect("b's client span is the child of b's server span");
    let c_server = spans
        .iter()
        .find(|x| x.kind == SpanKind::Server && x.parent_span_id == b_client.context.span_id)
        .expect("c's server span is the child of b's client span");
    let c_work = spans.iter().find(|x| x.name == "c.work").unwrap();
    assert_eq!(a_client.parent_span_id, root_id);
    assert_eq!(c_work.parent_span_id, c_server.context.span_id);
    assert_eq!(
        a_client.attribute("rpc.service"),
        Some(&"clew.v1.Collector".into())
    );
    assert_eq!(
        a_client.attribute("rpc.grpc.status_code"),
        Some(&0i64.into())
    );

    // Sends happen before their receives, and responses flow back causally.
    let before = |x: &SpanData, y: &SpanData| x.clock_start.compare(&y.clock_start);
    assert_eq!(before(a_client, b_server), ClockOrdering::Before);
    assert_eq!(before(b_server, b_client), ClockOrdering::Before);
    assert_eq!(before(b_client, c_server), ClockOrdering::Before);
    assert!(c_server.clock_end.happened_before(&b_client.clock_end));
    assert!(b_client.clock_end.happened_before(&b_server.clock_end));
    assert!(b_server.clock_end.happened_before(&a_client.clock_end));
    // Each server span's clock knows the caller's entry.
    assert!(c_server.clock_start.get("a") > 0 && c_server.clock_start.get("b") > 0);
}

#[tokio::test]
async fn grpc_error_status_marks_both_sides() {
    let mut s = setup().await;
    let err = s
        .a_to_c
        .export(ExportRequest {
            spans: vec![Default::default()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let spans = flush(&s);
    let client = spans.iter().find(|x| x.kind == SpanKind::Client).unwrap();
    let server = spans.iter().find(|x| x.kind == SpanKind::Server).unwrap();
    for sp in [client, server] {
        assert_eq!(sp.status, Status::Error("NotFound".into()), "{sp:?}");
        assert_eq!(sp.attribute("rpc.grpc.status_code"), Some(&5i64.into()));
    }
    assert_eq!(server.parent_span_id, client.context.span_id);
}

#[tokio::test]
async fn client_streaming_call_is_traced_to_its_end() {
    let mut s = setup().await;
    let msgs = (0..3).map(|_| ExportRequest { spans: vec![] });
    let resp = s
        .a_to_c
        .export_stream(tokio_stream::iter(msgs))
        .await
        .unwrap();
    assert_eq!(resp.get_ref().accepted, 3);
    let spans = flush(&s);
    let client = spans.iter().find(|x| x.kind == SpanKind::Client).unwrap();
    let server = spans.iter().find(|x| x.kind == SpanKind::Server).unwrap();
    assert_eq!(client.name, "clew.v1.Collector/ExportStream");
    assert_eq!(server.parent_span_id, client.context.span_id);
    assert_eq!(server.status, Status::Unset);
    assert!(client.clock_start.happened_before(&server.clock_start));
}

// Multi-threaded: the test thread blocks in `wait_for` while the server runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_reaches_the_server_and_both_spans_say_so() {
    let mut s = setup().await;
    let mut req = Request::new(ExportRequest {
        spans: vec![Default::default(), Default::default()],
    });
    req.set_timeout(Duration::from_secs(30));
    let call = tokio::spawn(async move { s.a_to_c.export(req).await });
    // Wait until the server is inside the handler, then cancel the caller.
    s.hang_started.await.unwrap();
    call.abort();
    let _ = call.await;
    // The server notices the reset stream and drops the handler, which
    // ends its span; wait for that export.
    let is_server = |x: &SpanData| x.kind == SpanKind::Server;
    assert!(
        s.exp
            .wait_for(Duration::from_secs(10), |spans| spans.iter().any(is_server)),
        "server span ended after the client cancelled: {:#?}",
        s.exp.finished_spans()
    );
    let server = s.exp.finished_spans().into_iter().find(is_server).unwrap();
    assert_eq!(server.status, Status::Error("cancelled".into()));
    assert_eq!(server.attribute("rpc.cancelled"), Some(&true.into()));
    assert!(s.a.force_flush(Duration::from_secs(5)));
    let client = s
        .exp
        .finished_spans()
        .into_iter()
        .find(|x| x.kind == SpanKind::Client)
        .unwrap();
    assert_eq!(client.status, Status::Error("cancelled".into()));
}
