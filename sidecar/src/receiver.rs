//! What applications talk to: OTLP/gRPC `TraceService/Export`, clew's
//! native `Collector` service (unary and client-streaming), and OTLP/HTTP
//! `POST /v1/traces` (protobuf and JSON).
//!
//! Requests are answered once their spans are in the memory buffer or the
//! spill log. When both are full the answer is `RESOURCE_EXHAUSTED` (gRPC)
//! or 429 with `Retry-After` (HTTP), which OpenTelemetry SDKs retry.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use clew_proto::v1 as pb;
use clew_tracer::export::Resource;
use clew_tracer::export::convert::{from_native_span, to_otlp_resource_spans};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse, trace_service_server::TraceService,
};
use prost::Message as _;

use crate::pipeline::{Error, Pipeline};

/// Largest span count in one request.
pub const MAX_SPANS_PER_REQUEST: usize = 100_000;

fn status(e: Error) -> tonic::Status {
    match e {
        Error::Full => tonic::Status::resource_exhausted("sidecar buffer is full; retry later"),
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
        self.0.accept(req, "otlp_grpc").map_err(status)?;
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

/// Native spans as one OTLP request, one resource per (service, node).
/// Invalid spans are counted out and described by the first reason.
pub fn native_to_otlp(spans: &[pb::Span]) -> (ExportTraceServiceRequest, u64, String) {
    let mut groups: Vec<(Resource, Vec<clew_tracer::span::SpanData>)> = Vec::new();
    let mut rejected = 0;
    let mut first_error = String::new();
    for s in spans {
        match from_native_span(s) {
            Ok(data) => {
                let at = groups
                    .iter()
                    .position(|(r, _)| r.service_name == s.service && r.node_id == s.node);
                match at {
                    Some(i) => groups[i].1.push(data),
                    None => groups.push((
                        Resource {
                            service_name: s.service.clone(),
                            node_id: s.node.clone(),
                            attributes: Vec::new(),
                        },
                        vec![data],
                    )),
                }
            }
            Err(e) => {
                rejected += 1;
                if first_error.is_empty() {
                    first_error = e.to_string();
                }
            }
        }
    }
    let resource_spans = groups
        .iter()
        .map(|(r, spans)| to_otlp_resource_spans(spans.iter(), r))
        .collect();
    (
        ExportTraceServiceRequest { resource_spans },
        rejected,
        first_error,
    )
}

/// clew's native `Collector` service.
#[derive(Debug, Clone)]
pub struct NativeGrpc(pub Pipeline);

impl NativeGrpc {
    fn take(&self, req: pb::ExportRequest) -> Result<pb::ExportResponse, tonic::Status> {
        check_count(req.spans.len())?;
        let (otlp, rejected, error_message) = native_to_otlp(&req.spans);
        let accepted = req.spans.len() as u64 - rejected;
        self.0.accept(otlp, "native").map_err(status)?;
        Ok(pb::ExportResponse {
            accepted,
            rejected,
            error_message,
        })
    }
}

#[tonic::async_trait]
impl pb::collector_server::Collector for NativeGrpc {
    async fn export(
        &self,
        request: tonic::Request<pb::ExportRequest>,
    ) -> Result<tonic::Response<pb::ExportResponse>, tonic::Status> {
        Ok(tonic::Response::new(self.take(request.into_inner())?))
    }

    async fn export_stream(
        &self,
        request: tonic::Request<tonic::Streaming<pb::ExportRequest>>,
    ) -> Result<tonic::Response<pb::ExportResponse>, tonic::Status> {
        let mut stream = request.into_inner();
        let mut total = pb::ExportResponse::default();
        while let Some(msg) = stream.message().await? {
            let r = self.take(msg)?;
            total.accepted += r.accepted;
            total.rejected += r.rejected;
            if total.error_message.is_empty() {
                total.error_message = r.error_message;
            }
        }
        Ok(tonic::Response::new(total))
    }
}

/// The OTLP/HTTP router: `POST /v1/traces`.
pub fn http_router(pipeline: Pipeline, max_body: usize) -> axum::Router {
    axum::Router::new()
        .route("/v1/traces", axum::routing::post(post_traces))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(pipeline)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

fn encoding(headers: &HeaderMap) -> Option<Encoding> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/x-protobuf")
        || essence.eq_ignore_ascii_case("application/protobuf")
    {
        Some(Encoding::Protobuf)
    } else if essence.eq_ignore_ascii_case("application/json") {
        Some(Encoding::Json)
    } else {
        None
    }
}

/// `google.rpc.Status`, the body OTLP/HTTP requires on errors.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

fn http_error(status: StatusCode, code: tonic::Code, message: &str, enc: Encoding) -> Response {
    let mut resp = match enc {
        Encoding::Json => (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({ "code": code as i32, "message": message }).to_string(),
        )
            .into_response(),
        Encoding::Protobuf => (
            status,
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            RpcStatus {
                code: code as i32,
                message: message.to_string(),
            }
            .encode_to_vec(),
        )
            .into_response(),
    };
    if status == StatusCode::TOO_MANY_REQUESTS
        && let Ok(v) = header::HeaderValue::from_str("1")
    {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

async fn post_traces(State(p): State<Pipeline>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(enc) = encoding(&headers) else {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content-type must be application/x-protobuf or application/json",
        )
            .into_response();
    };
    let req = match enc {
        Encoding::Protobuf => {
            ExportTraceServiceRequest::decode(body).map_err(|_| "invalid protobuf".to_string())
        }
        Encoding::Json => serde_json::from_slice::<ExportTraceServiceRequest>(&body)
            .map_err(|e| format!("invalid JSON at line {} column {}", e.line(), e.column())),
    };
    let req = match req {
        Ok(r) => r,
        Err(msg) => {
            return http_error(
                StatusCode::BAD_REQUEST,
                tonic::Code::InvalidArgument,
                &msg,
                enc,
            );
        }
    };
    if let Err(s) = check_count(crate::routing::span_count(&req)) {
        return http_error(StatusCode::PAYLOAD_TOO_LARGE, s.code(), s.message(), enc);
    }
    match p.accept(req, "otlp_http") {
        Ok(()) => match enc {
            Encoding::Json => (
                [(header::CONTENT_TYPE, "application/json")],
                "{}".to_string(),
            )
                .into_response(),
            Encoding::Protobuf => (
                [(header::CONTENT_TYPE, "application/x-protobuf")],
                ExportTraceServiceResponse::default().encode_to_vec(),
            )
                .into_response(),
        },
        Err(Error::Full) => http_error(
            StatusCode::TOO_MANY_REQUESTS,
            tonic::Code::ResourceExhausted,
            "sidecar buffer is full; retry later",
            enc,
        ),
        Err(e) => {
            tracing::error!(error = %e, "cannot buffer spans");
            http_error(
                StatusCode::SERVICE_UNAVAILABLE,
                tonic::Code::Unavailable,
                "sidecar cannot buffer spans right now",
                enc,
            )
        }
    }
}
