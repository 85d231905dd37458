//! The export pipeline: ending a span pushes it into a bounded queue; a
//! worker thread batches spans and hands them to a [`SpanExporter`].
//!
//! The application never waits: when the queue is full the span is dropped
//! and counted ([`PipelineStats::dropped`]), as in OpenTelemetry's batch
//! processor.

pub(crate) mod batch;
pub mod convert;
mod memory;
mod native;
mod otlp;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use batch::{BatchConfig, BatchProcessor, PipelineStats};
pub use memory::InMemoryExporter;
pub use native::NativeExporter;
pub use otlp::OtlpGrpcExporter;

use crate::span::{KeyValue, SpanData};

/// A boxed future, for object-safe async exporters.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Who emitted the spans: service, vector-clock node and resource attributes.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    /// `service.name`.
    pub service_name: String,
    /// The vector-clock node id of this process.
    pub node_id: String,
    /// Other resource attributes (`service.version`, `k8s.pod.name`, ...).
    pub attributes: Vec<KeyValue>,
}

/// One batch of finished spans from one resource.
///
/// Exporters borrow the batch: afterwards the pipeline recycles each span's
/// allocation for a new span, so a busy application allocates almost
/// nothing per span and never frees memory across threads.
#[derive(Clone, Debug)]
pub struct ExportBatch {
    /// The emitting resource.
    pub resource: Arc<Resource>,
    /// Finished spans.
    pub spans: Vec<Box<SpanData>>,
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The endpoint could not be reached or the call failed.
    #[error("export to {endpoint} failed: {message}")]
    Transport {
        /// The endpoint.
        endpoint: String,
        /// What went wrong.
        message: String,
    },
    /// The endpoint refused the batch.
    #[error("export rejected ({code}): {message}")]
    Rejected {
        /// gRPC status code name.
        code: String,
        /// The server's message.
        message: String,
    },
    /// The export did not finish in time.
    #[error("export timed out after {0:?}")]
    Timeout(Duration),
    /// The endpoint URL is invalid.
    #[error("invalid endpoint {0:?}")]
    InvalidEndpoint(String),
}

impl ExportError {
    pub(crate) fn from_status(endpoint: &str, s: tonic::Status) -> Self {
        match s.code() {
            tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded => ExportError::Transport {
                endpoint: endpoint.to_string(),
                message: s.message().to_string(),
            },
            code => ExportError::Rejected {
                code: format!("{code:?}"),
                message: s.message().to_string(),
            },
        }
    }
}

/// Sends batches somewhere. Called from the pipeline's worker thread, inside
/// a single-threaded Tokio runtime, one batch at a time.
pub trait SpanExporter: Send + 'static {
    /// Exports one batch.
    fn export<'a>(&'a mut self, batch: &'a ExportBatch) -> BoxFuture<'a, Result<(), ExportError>>;

    /// Flushes and releases resources. Called once, at shutdown.
    fn shutdown(&mut self) -> BoxFuture<'_, Result<(), ExportError>> {
        Box::pin(async { Ok(()) })
    }
}

impl<E: SpanExporter + ?Sized> SpanExporter for Box<E> {
    fn export<'a>(&'a mut self, batch: &'a ExportBatch) -> BoxFuture<'a, Result<(), ExportError>> {
        (**self).export(batch)
    }

    fn shutdown(&mut self) -> BoxFuture<'_, Result<(), ExportError>> {
        (**self).shutdown()
    }
}

/// Normalizes an endpoint: adds `http://` when no scheme is given.
pub(crate) fn endpoint_uri(endpoint: &str) -> Result<tonic::transport::Endpoint, ExportError> {
    let e = endpoint.trim();
    let full = if e.contains("://") {
        e.to_string()
    } else {
        format!("http://{e}")
    };
    tonic::transport::Endpoint::from_shared(full)
        .map_err(|_| ExportError::InvalidEndpoint(endpoint.to_string()))
}
