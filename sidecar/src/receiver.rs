//! What applications talk to: OTLP/gRPC `TraceService/Export`, clew's
//! native `Collector` service (unary and client-streaming), and OTLP/HTTP
//! `POST /v1/traces` (protobuf and JSON).
//!
//! Requests are answered once their spans, written to the disk log, are
//! acknowledged by a collector or fsynced (disk durability), or once they
//! are in the memory buffer or the spill log (memory
//! durability). When there is no room (buffer, spill cap or disk full) the
//! answer is `RESOURCE_EXHAUSTED` (gRPC) or 429 with `Retry-After` (HTTP);
//! when the disk is too slow to confirm in time, `UNAVAILABLE` / 503 with
//! `Retry-After`. OpenTelemetry SDKs retry both.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use clew_proto::v1 as pb;
use clew_runtime::otlp_http::Encoding;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse, trace_service_server::TraceService,
};

use crate::pipeline::{Error, Pipeline};

/// Largest span count in one request.
pub const MAX_SPANS_PER_REQUEST: usize = 100_000;

fn status(e: Error) -> tonic::Status {
    match e {
        Error::Full | Error::DiskFull => {
            tonic::Status::resource_exhausted("sidecar buffer is full; retry later")
        }
        Error::NotDurable => {
            tonic::Status::unavailable("sidecar is slow to store spans; retry later")
        }
        other => {
            tracing::error!(error = %other, "cannot buffer spans");
            tonic::Status::unavailable("sidecar cannot buffer spans right now")
        }
    }
}

/// The OTLP/gRPC service.
#[derive(Debug, Clone)]
pub struct OtlpGrpc(pub Pipeline);

#[tonic::async_trait]
impl TraceService for OtlpGrpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let req = request.into_inner();
        check_count(crate::routing::span_count(&req))?;
        self.0.accept(req, "otlp_grpc").await.map_err(status)?;
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn check_count(n: usize) -> Result<(), tonic::Status> {
    if n > MAX_SPANS_PER_REQUEST {
        return Err(tonic::Status::invalid_argument(format!(
            "request has {n} spans, more than the limit of {MAX_SPANS_PER_REQUEST}"
        )));
    }
    Ok(())
}

/// clew's native `Collector` service.
#[derive(Debug, Clone)]
pub struct NativeGrpc(pub Pipeline);

impl NativeGrpc {
    async fn take(&self, req: pb::ExportRequest) -> Result<pb::ExportResponse, tonic::Status> {
        check_count(req.spans.len())?;
        let c = clew_model::otlp::from_native(&req.spans);
        let accepted = req.spans.len() as u64 - c.rejected;
        self.0.accept(c.request, "native").await.map_err(status)?;
        Ok(pb::ExportResponse {
            accepted,
            rejected: c.rejected,
            error_message: c.first_error,
        })
    }
}

#[tonic::async_trait]
impl pb::collector_server::Collector for NativeGrpc {
    async fn export(
        &self,
        request: tonic::Request<pb::ExportRequest>,
    ) -> Result<tonic::Response<pb::ExportResponse>, tonic::Status> {
        Ok(tonic::Response::new(self.take(request.into_inner()).await?))
    }

    async fn export_stream(
        &self,
        request: tonic::Request<tonic::Streaming<pb::ExportRequest>>,
    ) -> Result<tonic::Response<pb::ExportResponse>, tonic::Status> {
        let mut stream = request.into_inner();
        let mut total = pb::ExportResponse::default();
        while let Some(msg) = stream.message().await? {
            total.absorb(self.take(msg).await?);
        }
        Ok(tonic::Response::new(total))
    }
}

/// The OTLP/HTTP router: `POST /v1/traces`.
pub fn http_router(pipeline: Pipeline, max_body: usize) -> axum::Router {
    axum::Router::new()
        .route("/v1/traces", axum::routing::post(post_traces))
        .layer(DefaultBodyLimit::max(max_body))
        // `Content-Encoding: gzip` bodies are inflated on the way in (the
        // limit above applies to the inflated size); another encoding gets
        // 415.
        .layer(tower_http::decompression::RequestDecompressionLayer::new())
        .with_state(pipeline)
}

/// How long an HTTP client is asked to wait when the buffers are full.
const RETRY_AFTER: Duration = Duration::from_secs(1);

async fn post_traces(State(p): State<Pipeline>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(enc) = Encoding::from_headers(&headers) else {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content-type must be application/x-protobuf or application/json",
        )
            .into_response();
    };
    let req = match enc.decode_request(&body) {
        Ok(r) => r,
        Err(msg) => {
            return enc.error(
                StatusCode::BAD_REQUEST,
                tonic::Code::InvalidArgument as i32,
                &msg,
                None,
            );
        }
    };
    if let Err(s) = check_count(crate::routing::span_count(&req)) {
        return enc.error(
            StatusCode::PAYLOAD_TOO_LARGE,
            s.code() as i32,
            s.message(),
            None,
        );
    }
    match p.accept(req, "otlp_http").await {
        Ok(()) => enc.ok(&ExportTraceServiceResponse::default()),
        Err(Error::Full | Error::DiskFull) => enc.error(
            StatusCode::TOO_MANY_REQUESTS,
            tonic::Code::ResourceExhausted as i32,
            "sidecar buffer is full; retry later",
            Some(RETRY_AFTER),
        ),
        Err(Error::NotDurable) => enc.error(
            StatusCode::SERVICE_UNAVAILABLE,
            tonic::Code::Unavailable as i32,
            "sidecar is slow to store spans; retry later",
            Some(RETRY_AFTER),
        ),
        Err(e) => {
            tracing::error!(error = %e, "cannot buffer spans");
            enc.error(
                StatusCode::SERVICE_UNAVAILABLE,
                tonic::Code::Unavailable as i32,
                "sidecar cannot buffer spans right now",
                Some(RETRY_AFTER),
            )
        }
    }
}
