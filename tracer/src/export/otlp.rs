//! Export over OTLP/gRPC (`opentelemetry.proto.collector.trace.v1.TraceService/Export`).

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, trace_service_client::TraceServiceClient,
};
use tonic::transport::Channel;

use super::convert::to_otlp_resource_spans;
use super::{BoxFuture, ExportBatch, ExportError, SpanExporter, endpoint_uri};

/// Sends batches to any OTLP/gRPC receiver: a clew sidecar or collector, an
/// OpenTelemetry Collector, Jaeger, Tempo. Vector clocks travel as the span
/// attributes `clew.clock.start` / `clew.clock.end`.
#[derive(Debug)]
pub struct OtlpGrpcExporter {
    endpoint: String,
    target: tonic::transport::Endpoint,
    client: Option<TraceServiceClient<Channel>>,
}

impl OtlpGrpcExporter {
    /// An exporter for `endpoint` (`host:port` or `http://host:port`). The
    /// connection is made on first export and re-made after failures.
    pub fn new(endpoint: &str) -> Result<Self, ExportError> {
        Ok(OtlpGrpcExporter {
            endpoint: endpoint.to_string(),
            target: endpoint_uri(endpoint)?,
            client: None,
        })
    }
}

impl SpanExporter for OtlpGrpcExporter {
    fn export<'a>(&'a mut self, batch: &'a ExportBatch) -> BoxFuture<'a, Result<(), ExportError>> {
        Box::pin(async move {
            let client = self
                .client
                .get_or_insert_with(|| TraceServiceClient::new(self.target.connect_lazy()));
            let req = ExportTraceServiceRequest {
                resource_spans: vec![to_otlp_resource_spans(
                    batch.spans.iter().map(|s| &**s),
                    &batch.resource,
                )],
            };
            match client.export(req).await {
                Ok(r) => match r.into_inner().partial_success {
                    Some(p) if p.rejected_spans > 0 => Err(ExportError::Rejected {
                        code: "PartialSuccess".into(),
                        message: format!(
                            "{} spans rejected: {}",
                            p.rejected_spans, p.error_message
                        ),
                    }),
                    _ => Ok(()),
                },
                Err(s) => Err(ExportError::from_status(&self.endpoint, s)),
            }
        })
    }
}
