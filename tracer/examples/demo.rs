//! A two-hop gRPC call traced with clew-tracer, printed as a tree with its
//! vector clocks: `cargo run -p clew-tracer --example demo`.
//!
//! Service "frontend" calls "backend" over real gRPC on loopback; both are
//! instrumented only through `TraceLayer`. Pass `--otlp http://host:4317`
//! to also send the spans to any OTLP receiver.

use std::time::Duration;

use anyhow::Context as _;
use clew_proto::v1::collector_client::CollectorClient;
use clew_proto::v1::collector_server::{Collector, CollectorServer};
use clew_proto::v1::{ExportRequest, ExportResponse};
use clew_tracer::export::{InMemoryExporter, OtlpGrpcExporter, SpanExporter};
use clew_tracer::instrument::TraceLayer;
use clew_tracer::{FutureExt, Sampler, SpanData, SpanId, Tracer};

struct Backend {
    tracer: Tracer,
}

#[tonic::async_trait]
impl Collector for Backend {
    async fn export(
        &self,
        req: tonic::Request<ExportRequest>,
    ) -> Result<tonic::Response<ExportResponse>, tonic::Status> {
        let mut work = self.tracer.start("backend.lookup");
        work.set_attribute("items", req.get_ref().spans.len());
        tokio::time::sleep(Duration::from_millis(3)).await;
        work.end();
        Ok(tonic::Response::new(ExportResponse {
            accepted: 1,
            ..Default::default()
        }))
    }

    async fn export_stream(
        &self,
        _req: tonic::Request<tonic::Streaming<ExportRequest>>,
    ) -> Result<tonic::Response<ExportResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("demo"))
    }
}

/// Sends to both the in-memory store (for printing) and, optionally, OTLP.
struct Tee {
    memory: InMemoryExporter,
    otlp: Option<OtlpGrpcExporter>,
}

impl SpanExporter for Tee {
    fn export<'a>(
        &'a mut self,
        batch: &'a clew_tracer::export::ExportBatch,
    ) -> clew_tracer::export::BoxFuture<'a, Result<(), clew_tracer::export::ExportError>> {
        Box::pin(async move {
            self.memory.export(batch).await?;
            if let Some(o) = &mut self.otlp {
                o.export(batch).await?;
            }
            Ok(())
        })
    }
}

fn tracer(name: &str, memory: &InMemoryExporter, otlp: Option<&str>) -> anyhow::Result<Tracer> {
    let otlp = otlp.map(OtlpGrpcExporter::new).transpose()?;
    Ok(Tracer::builder(name)
        .node_id(name)
        .sampler(Sampler::AlwaysOn)
        .exporter(Tee {
            memory: memory.clone(),
            otlp,
        })
        .build())
}

fn print_tree(spans: &[SpanData], parent: SpanId, depth: usize) {
    let mut children: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.parent_span_id == parent)
        .collect();
    children.sort_by_key(|s| s.start_time_unix_nano);
    for s in children {
        println!(
            "{:indent$}{} [{:?}] {:.2} ms  clock {} → {}",
            "",
            s.name,
            s.kind,
            s.duration_nanos() as f64 / 1e6,
            s.clock_start,
            s.clock_end,
            indent = depth * 2
        );
        print_tree(spans, s.context.span_id, depth + 1);
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let otlp = args
        .iter()
        .position(|a| a == "--otlp")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str);
    let memory = InMemoryExporter::new();
    let frontend = tracer("frontend", &memory, otlp)?;
    let backend = tracer("backend", &memory, otlp)?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server_tracer = backend.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(TraceLayer::grpc_server(server_tracer.clone()))
            .add_service(CollectorServer::new(Backend {
                tracer: server_tracer,
            }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await
        .context("connecting to the backend")?;
    let mut client = CollectorClient::new(
        tower::ServiceBuilder::new()
            .layer(TraceLayer::grpc_client(frontend.clone()))
            .service(channel),
    );

    let root = frontend.start("GET /api/v1/search");
    let trace_id = root.trace_id();
    async {
        for _ in 0..2 {
            client
                .export(ExportRequest { spans: vec![] })
                .await
                .context("calling the backend")?;
        }
        anyhow::Ok(())
    }
    .in_span(root)
    .await?;

    frontend.force_flush(Duration::from_secs(5));
    backend.force_flush(Duration::from_secs(5));
    let spans: Vec<SpanData> = memory
        .finished_spans()
        .into_iter()
        .filter(|s| s.context.trace_id == trace_id)
        .collect();
    println!("trace {trace_id}: {} spans", spans.len());
    print_tree(&spans, SpanId::INVALID, 1);
    frontend.shutdown(Duration::from_secs(5));
    backend.shutdown(Duration::from_secs(5));
    Ok(())
}
