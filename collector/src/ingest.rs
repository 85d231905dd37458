//! Span ingest: OTLP/gRPC `TraceService/Export`, clew's native
//! `Collector` service, and OTLP/HTTP `POST /v1/traces` (protobuf and JSON).
//!
//! Every path ends in [`Ingest::accept`]: limits, backpressure, then the WAL.
//! A request is answered only after its spans are durable in the WAL.
//! Invalid spans are refused one by one (partial success) and never reach
//! the WAL; a whole request is refused only when it is malformed, too
//! large, or the collector is over its memory limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use clew_proto::v1 as pb;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse, trace_service_server::TraceService,
};

use crate::assembly::Assembler;
use crate::otlp::{self, Encoding, Limits, OtlpError, otlp_http};

/// Ingest settings.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Per-span and per-request limits.
    pub limits: Limits,
    /// Largest request body accepted, in bytes (gRPC message and HTTP body).
    pub max_request_bytes: usize,
    /// Above this many bytes of spans waiting for storage, requests are
    /// refused (RESOURCE_EXHAUSTED / 429) instead of growing memory.
    pub memory_limit_bytes: u64,
    /// `Retry-After` sent with 429.
    pub retry_after: Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            limits: Limits::default(),
            max_request_bytes: 16 << 20,
            memory_limit_bytes: 512 << 20,
            retry_after: Duration::from_secs(1),
        }
    }
}

/// Ingest counters (exported as Prometheus metrics by the server).
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Spans received (before validation).
    pub received: AtomicU64,
    /// Spans made durable and accepted.
    pub accepted: AtomicU64,
    /// Spans refused individually as invalid.
    pub rejected: AtomicU64,
    /// Spans in requests refused whole (limits, backpressure, WAL errors).
    pub refused: AtomicU64,
}

/// Why a whole request was refused.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The request could not be decoded or violates a request limit.
    #[error(transparent)]
    Otlp(#[from] OtlpError),
    /// Too much is waiting for storage.
    #[error("collector over its memory limit; retry later")]
    Overloaded,
    /// The WAL could not take the batch.
    #[error("collector cannot accept spans right now")]
    Unavailable,
}

impl IngestError {
    /// The gRPC code clients get for this refusal.
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            IngestError::Otlp(_) => tonic::Code::InvalidArgument,
            IngestError::Overloaded => tonic::Code::ResourceExhausted,
            IngestError::Unavailable => tonic::Code::Unavailable,
        }
    }
}

impl From<IngestError> for tonic::Status {
    fn from(e: IngestError) -> Self {
        tonic::Status::new(e.grpc_code(), e.to_string())
    }
}

/// The shared ingest path.
#[derive(Clone, Debug)]
pub struct Ingest {
    assembler: Arc<Assembler>,
    config: Arc<IngestConfig>,
    stats: Arc<IngestStats>,
}

impl Ingest {
    /// Ingest feeding `assembler`.
    pub fn new(assembler: Arc<Assembler>, config: IngestConfig) -> Self {
        Ingest {
            assembler,
            config: Arc::new(config),
            stats: Arc::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> &IngestStats {
        &self.stats
    }

    /// The settings.
    pub fn config(&self) -> &IngestConfig {
        &self.config
    }

    /// Checks backpressure, appends `spans` to the WAL and hands them to
    /// assembly. Returns when they are durable.
    pub async fn accept(&self, spans: Vec<pb::Span>) -> Result<(), IngestError> {
        let n = spans.len() as u64;
        if spans.is_empty() {
            return Ok(());
        }
        if self.assembler.pending_bytes() > self.config.memory_limit_bytes {
            self.stats.refused.fetch_add(n, Ordering::Relaxed);
            return Err(IngestError::Overloaded);
        }
        match self.assembler.ingest(pb::ExportRequest { spans }).await {
            Ok(_) => {
                self.stats.accepted.fetch_add(n, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, spans = n, "WAL append failed; refusing batch");
                self.stats.refused.fetch_add(n, Ordering::Relaxed);
                Err(IngestError::Unavailable)
            }
        }
    }

    /// OTLP in, partial-success response out.
    pub async fn export_otlp(
        &self,
        req: ExportTraceServiceRequest,
    ) -> Result<ExportTraceServiceResponse, IngestError> {
        let count: usize = req
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.stats
            .received
            .fetch_add(count as u64, Ordering::Relaxed);
        let converted = otlp::from_otlp(req, &self.config.limits).inspect_err(|_| {
            self.stats
                .refused
                .fetch_add(count as u64, Ordering::Relaxed);
        })?;
        self.stats
            .rejected
            .fetch_add(converted.rejected, Ordering::Relaxed);
        let response = otlp::partial_success(&converted);
        self.accept(converted.spans).await?;
        Ok(response)
    }

    /// Native spans in: each is validated like an OTLP span.
    pub async fn export_native(
        &self,
        req: pb::ExportRequest,
    ) -> Result<pb::ExportResponse, IngestError> {
        let count = req.spans.len();
        self.stats
            .received
            .fetch_add(count as u64, Ordering::Relaxed);
        if count > self.config.limits.max_spans_per_batch {
            self.stats
                .refused
                .fetch_add(count as u64, Ordering::Relaxed);
            return Err(OtlpError::TooManySpans {
                count,
                max: self.config.limits.max_spans_per_batch,
            }
            .into());
        }
        let mut ok = Vec::with_capacity(count);
        let mut first_error = String::new();
        let mut rejected = 0u64;
        for span in req.spans {
            match validate_native(&span) {
                Ok(()) => ok.push(span),
                Err(reason) => {
                    rejected += 1;
                    if first_error.is_empty() {
                        first_error = reason;
                    }
                }
            }
        }
        self.stats.rejected.fetch_add(rejected, Ordering::Relaxed);
        let accepted = ok.len() as u64;
        self.accept(ok).await?;
        Ok(pb::ExportResponse {
            accepted,
            rejected,
            error_message: first_error,
        })
    }
}

fn validate_native(span: &pb::Span) -> Result<(), String> {
    clew_tracer::export::convert::from_native_span(span).map_err(|e| e.to_string())?;
    if span.end_time_unix_nano < span.start_time_unix_nano {
        return Err("end_time_unix_nano is before start_time_unix_nano".into());
    }
    Ok(())
}

/// The OTLP/gRPC `TraceService`.
#[derive(Clone, Debug)]
pub struct OtlpGrpc(pub Ingest);

#[tonic::async_trait]
impl TraceService for OtlpGrpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        Ok(tonic::Response::new(
            self.0.export_otlp(request.into_inner()).await?,
        ))
    }
}

/// clew's native `Collector` service.
#[derive(Clone, Debug)]
pub struct NativeGrpc(pub Ingest);

#[tonic::async_trait]
impl pb::collector_server::Collector for NativeGrpc {
    async fn export(
        &self,
        request: tonic::Request<pb::ExportRequest>,
    ) -> Result<tonic::Response<pb::ExportResponse>, tonic::Status> {
        Ok(tonic::Response::new(
            self.0.export_native(request.into_inner()).await?,
        ))
    }

    async fn export_stream(
        &self,
        request: tonic::Request<tonic::Streaming<pb::ExportRequest>>,
    ) -> Result<tonic::Response<pb::ExportResponse>, tonic::Status> {
        let mut stream = request.into_inner();
        let mut total = pb::ExportResponse::default();
        while let Some(msg) = stream.message().await? {
            total.absorb(self.0.export_native(msg).await?);
        }
        Ok(tonic::Response::new(total))
    }
}

/// The OTLP/HTTP router: `POST /v1/traces`.
pub fn http_router(ingest: Ingest) -> axum::Router {
    let limit = ingest.config.max_request_bytes;
    axum::Router::new()
        .route("/v1/traces", axum::routing::post(post_traces))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(ingest)
}

async fn post_traces(State(ingest): State<Ingest>, headers: HeaderMap, body: Bytes) -> Response {
    let content_type = otlp_http::content_type(&headers);
    // Errors about the media type itself are answered in protobuf.
    let enc = Encoding::from_content_type(content_type).unwrap_or(Encoding::Protobuf);
    let req = match otlp::decode_http(&body, content_type, &ingest.config.limits) {
        Ok(r) => r,
        Err(e) => return http_error(&ingest, IngestError::Otlp(e), enc),
    };
    match ingest.export_otlp(req).await {
        Ok(resp) => enc.ok(&resp),
        Err(e) => http_error(&ingest, e, enc),
    }
}

fn http_error(ingest: &Ingest, e: IngestError, enc: Encoding) -> Response {
    let status = match &e {
        IngestError::Otlp(OtlpError::UnsupportedMediaType(_)) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        IngestError::Otlp(OtlpError::TooManySpans { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
        IngestError::Otlp(OtlpError::Malformed(_)) => StatusCode::BAD_REQUEST,
        IngestError::Overloaded => StatusCode::TOO_MANY_REQUESTS,
        IngestError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    };
    let retry_after = matches!(e, IngestError::Overloaded | IngestError::Unavailable)
        .then_some(ingest.config.retry_after);
    enc.error(status, e.grpc_code() as i32, &e.to_string(), retry_after)
}

#[cfg(test)]
#[path = "ingest_tests.rs"]
mod tests;
