//! Export over clew's native gRPC protocol (`clew.v1.Collector/Export`).

use clew_proto::v1::{ExportRequest, collector_client::CollectorClient};
use tonic::transport::Channel;

use super::convert::to_native_span;
use super::{BoxFuture, ExportBatch, ExportError, SpanExporter, endpoint_uri};

/// Sends batches to a clew sidecar or collector with the native protocol,
/// which keeps vector clocks as typed fields.
#[derive(Debug)]
pub struct NativeExporter {
    endpoint: String,
    target: tonic::transport::Endpoint,
    client: Option<CollectorClient<Channel>>,
}

impl NativeExporter {
    /// An exporter for `endpoint` (`host:port` or `http://host:port`). The
    /// connection is made on first export and re-made after failures.
    pub fn new(endpoint: &str) -> Result<Self, ExportError> {
        Ok(NativeExporter {
            endpoint: endpoint.to_string(),
            target: endpoint_uri(endpoint)?,
            client: None,
        })
    }
}

impl SpanExporter for NativeExporter {
    fn export<'a>(&'a mut self, batch: &'a ExportBatch) -> BoxFuture<'a, Result<(), ExportError>> {
        Box::pin(async move {
            let client = self
                .client
                .get_or_insert_with(|| CollectorClient::new(self.target.connect_lazy()));
            let spans = batch
                .spans
                .iter()
                .map(|s| to_native_span(s, &batch.resource))
                .collect();
            let res = client.export(ExportRequest { spans }).await;
            match res {
                Ok(r) => {
                    let r = r.into_inner();
                    if r.rejected > 0 {
                        Err(ExportError::Rejected {
                            code: "PartialSuccess".into(),
                            message: format!("{} spans rejected: {}", r.rejected, r.error_message),
                        })
                    } else {
                        Ok(())
                    }
                }
                Err(s) => Err(ExportError::from_status(&self.endpoint, s)),
            }
        })
    }
}
