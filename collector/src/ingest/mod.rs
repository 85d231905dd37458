//! Span ingest: OTLP/gRPC `TraceService/Export`, clew's native
//! `Collector` service, and OTLP/HTTP `POST /v1/traces` (protobuf and JSON).
//!
//! Every path ends in [`Ingest::accept`]: limits, backpressure, then the WAL.
//! A request is answered only after its spans are durable in the WAL.
//! Invalid spans are refused one by one (partial success) and never reach
//! the WAL; a whole request is refused only when it is malformed, too
//! large, or the collector is over its memory limit. What the limits cut
//! from accepted spans is counted by reason and told to the client in the
//! same `partial_success`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{self, HeaderMap, StatusCode};
use axum::response::Response;
use clew_proto::v1 as pb;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

use crate::assembly::Assembler;
use crate::replication::Replicator;
pub mod otlp;

use otlp::{Encoding, Limits, OtlpError, otlp_http};

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
    /// What the limits cut from accepted spans, by reason.
    pub truncated: TruncationStats,
}

/// [`otlp::Truncation`] counters, summed over every accepted request.
#[derive(Debug, Default)]
pub struct TruncationStats {
    spans: AtomicU64,
    attributes: AtomicU64,
    values: AtomicU64,
    events: AtomicU64,
    links: AtomicU64,
    invalid_links: AtomicU64,
    event_names: AtomicU64,
}

impl TruncationStats {
    fn add(&self, t: &otlp::Truncation) {
        let add = |a: &AtomicU64, n: u64| {
            if n > 0 {
                a.fetch_add(n, Ordering::Relaxed);
            }
        };
        add(&self.spans, t.spans);
        add(&self.attributes, t.attributes);
        add(&self.values, t.values);
        add(&self.events, t.events);
        add(&self.links, t.links);
        add(&self.invalid_links, t.invalid_links);
        add(&self.event_names, t.event_names);
    }

    /// The totals so far.
    pub fn snapshot(&self) -> otlp::Truncation {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        otlp::Truncation {
            spans: load(&self.spans),
            attributes: load(&self.attributes),
            values: load(&self.values),
            events: load(&self.events),
            links: load(&self.links),
            invalid_links: load(&self.invalid_links),
            event_names: load(&self.event_names),
        }
    }
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
    /// Too few peers answer to keep the copies the batch needs.
    #[error("collector cannot replicate spans right now; retry later")]
    NoCopies,
}

impl IngestError {
    /// The gRPC code clients get for this refusal.
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            IngestError::Otlp(_) => tonic::Code::InvalidArgument,
            IngestError::Overloaded => tonic::Code::ResourceExhausted,
            IngestError::Unavailable | IngestError::NoCopies => tonic::Code::Unavailable,
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
    replicator: Option<Replicator>,
}

impl Ingest {
    /// Ingest feeding `assembler`.
    pub fn new(assembler: Arc<Assembler>, config: IngestConfig) -> Self {
        Ingest {
            assembler,
            config: Arc::new(config),
            stats: Arc::default(),
            replicator: None,
        }
    }

    /// Ingest that acknowledges a batch only once `replicator` made its
    /// copies on peers (see [`crate::replication`]).
    pub fn with_replication(mut self, replicator: Replicator) -> Self {
        self.replicator = Some(replicator);
        self
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
        self.accept_from(spans, None).await
    }

    /// [`accept`](Self::accept); with `otlp`, the spans are the whole
    /// conversion of that OTLP/protobuf request (nothing rejected, dropped
    /// or shortened), which the WAL then keeps as it came.
    async fn accept_from(
        &self,
        spans: Vec<pb::Span>,
        otlp: Option<OtlpBody>,
    ) -> Result<(), IngestError> {
        let n = spans.len() as u64;
        if spans.is_empty() {
            return Ok(());
        }
        if self.assembler.pending_bytes() > self.config.memory_limit_bytes {
            self.stats.refused.fetch_add(n, Ordering::Relaxed);
            return Err(IngestError::Overloaded);
        }
        let whole = otlp
            .as_ref()
            .filter(|o| o.sizes.len() == spans.len())
            .map(|o| &o.body);
        let outgoing = match self
            .replicator
            .as_ref()
            .map(|r| (r, r.begin(&spans, whole)))
        {
            None | Some((_, Ok(None))) => None,
            Some((_, Ok(Some(out)))) => Some(out),
            Some((r, Err(e))) => {
                tracing::warn!(error = %e, spans = n, "too few peers for the copies; refusing batch");
                r.count_refused(n as usize);
                self.stats.refused.fetch_add(n, Ordering::Relaxed);
                return Err(IngestError::NoCopies);
            }
        };
        let ingested = async {
            match otlp {
                Some(OtlpBody { body, sizes }) if sizes.len() == spans.len() => {
                    self.assembler.ingest_otlp(spans, &body, sizes).await
                }
                _ => self.assembler.ingest(pb::ExportRequest { spans }).await,
            }
        };
        let (ingested, copies) = match outgoing {
            None => (ingested.await, Ok(())),
            Some(mut out) => {
                let (ingested, copies) = tokio::join!(ingested, out.send());
                out.wal_done(ingested.as_ref().ok().copied());
                (ingested, copies)
            }
        };
        if let Err(e) = copies {
            tracing::warn!(error = %e, spans = n, "batch did not get its copies; refusing it");
            if let Some(r) = &self.replicator {
                r.count_refused(n as usize);
            }
            self.stats.refused.fetch_add(n, Ordering::Relaxed);
            return Err(IngestError::NoCopies);
        }
        match ingested {
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
        let converted = otlp::from_otlp(req, &self.config.limits);
        self.export_converted(count, converted, None).await
    }

    /// [`export_otlp`](Self::export_otlp) for a request whose spans are
    /// still encoded (the protobuf paths): each is decoded and converted in
    /// turn.
    pub async fn export_otlp_raw(
        &self,
        req: otlp::RawExport,
    ) -> Result<ExportTraceServiceResponse, IngestError> {
        let body = OtlpBody {
            body: req.body().clone(),
            sizes: req.span_sizes(),
        };
        let count = body.sizes.len();
        let converted = otlp::from_raw(req, &self.config.limits);
        self.export_converted(count, converted, Some(body)).await
    }

    /// Counts and accepts what a conversion kept; `body` is the request it
    /// came from, logged as it came when nothing was rejected or changed.
    async fn export_converted(
        &self,
        count: usize,
        converted: Result<otlp::Converted, OtlpError>,
        body: Option<OtlpBody>,
    ) -> Result<ExportTraceServiceResponse, IngestError> {
        self.stats
            .received
            .fetch_add(count as u64, Ordering::Relaxed);
        let converted = converted.inspect_err(|_| {
            self.stats
                .refused
                .fetch_add(count as u64, Ordering::Relaxed);
        })?;
        self.stats
            .rejected
            .fetch_add(converted.rejected, Ordering::Relaxed);
        let response = otlp::partial_success(&converted, &self.config.limits);
        let truncated = converted.truncated;
        let whole = converted.rejected == 0 && truncated.is_empty();
        self.accept_from(converted.spans, body.filter(|_| whole))
            .await?;
        self.count_truncated(&truncated);
        Ok(response)
    }

    /// Native spans in: each is validated like an OTLP span and truncated
    /// to the same limits; `error_message` says what was cut, as OTLP's
    /// partial success does.
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
        let limits = &self.config.limits;
        let mut ok = Vec::with_capacity(count);
        let mut first_error = String::new();
        let mut rejected = 0u64;
        let mut truncated = otlp::Truncation::default();
        for mut span in req.spans {
            match validate_native(&span) {
                Ok(()) => {
                    truncated.add(&otlp::truncate_native(&mut span, limits));
                    ok.push(span);
                }
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
        self.count_truncated(&truncated);
        // As OTLP's partial success: the rejection reason, then what was cut.
        let error_message = [
            Some(first_error).filter(|e| !e.is_empty()),
            truncated.message(limits),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("; ");
        Ok(pb::ExportResponse {
            accepted,
            rejected,
            error_message,
        })
    }

    /// Counts what the limits cut from spans just accepted (a refused
    /// request stores nothing, so nothing of it was truncated).
    fn count_truncated(&self, truncated: &otlp::Truncation) {
        if truncated.is_empty() {
            return;
        }
        self.stats.truncated.add(truncated);
        tracing::debug!(
            spans = truncated.spans,
            attributes = truncated.attributes,
            values = truncated.values,
            events = truncated.events,
            links = truncated.links,
            invalid_links = truncated.invalid_links,
            event_names = truncated.event_names,
            "spans truncated to fit the limits"
        );
    }
}

/// An OTLP/protobuf request body and the encoded length of each of its
/// spans (for the assembler's memory accounting).
struct OtlpBody {
    body: Bytes,
    sizes: Vec<u64>,
}

fn validate_native(span: &pb::Span) -> Result<(), String> {
    clew_model::otlp::check(span).map_err(|e| e.to_string())?;
    if span.end_time_unix_nano < span.start_time_unix_nano {
        return Err("end_time_unix_nano is before start_time_unix_nano".into());
    }
    Ok(())
}

/// The OTLP/gRPC `TraceService` server, as the generated
/// `TraceServiceServer` but decoding requests into [`otlp::RawExport`]
/// (spans left encoded, slices of tonic's receive buffer) instead of whole
/// `ExportTraceServiceRequest`s: see [`otlp::from_raw`].
#[derive(Clone, Debug)]
pub struct OtlpGrpcServer {
    ingest: Ingest,
    max_decoding_message_size: Option<usize>,
    accept: tonic::codec::EnabledCompressionEncodings,
}

impl OtlpGrpcServer {
    /// A server feeding `ingest`, taking messages up to tonic's default
    /// limit (4 MiB) and no compression.
    pub fn new(ingest: Ingest) -> Self {
        OtlpGrpcServer {
            ingest,
            max_decoding_message_size: None,
            accept: Default::default(),
        }
    }

    /// Refuses messages larger than `limit` bytes (RESOURCE_EXHAUSTED).
    pub fn max_decoding_message_size(mut self, limit: usize) -> Self {
        self.max_decoding_message_size = Some(limit);
        self
    }

    /// Accepts requests compressed with `encoding`.
    pub fn accept_compressed(mut self, encoding: tonic::codec::CompressionEncoding) -> Self {
        self.accept.enable(encoding);
        self
    }
}

impl tonic::server::NamedService for OtlpGrpcServer {
    const NAME: &'static str =
        opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::SERVICE_NAME;
}

/// The method path of `TraceService/Export`.
const OTLP_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

impl<B> tonic::codegen::Service<http::Request<B>> for OtlpGrpcServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != OTLP_EXPORT_PATH {
            return Box::pin(async { Ok(tonic::Status::unimplemented("").into_http()) });
        }
        let server = self.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(RawExportCodec)
                .apply_compression_config(server.accept, Default::default())
                .apply_max_message_size_config(server.max_decoding_message_size, None);
            Ok(grpc.unary(ExportMethod(server.ingest), req).await)
        })
    }
}

/// `TraceService/Export` on a [`otlp::RawExport`].
struct ExportMethod(Ingest);

impl tonic::server::UnaryService<otlp::RawExport> for ExportMethod {
    type Response = ExportTraceServiceResponse;
    type Future =
        tonic::codegen::BoxFuture<tonic::Response<ExportTraceServiceResponse>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<otlp::RawExport>) -> Self::Future {
        let ingest = self.0.clone();
        Box::pin(async move {
            Ok(tonic::Response::new(
                ingest.export_otlp_raw(request.into_inner()).await?,
            ))
        })
    }
}

/// Decodes requests into [`otlp::RawExport`], encodes responses with prost.
struct RawExportCodec;

impl tonic::codec::Codec for RawExportCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = otlp::RawExport;
    type Encoder = RawExportCodec;
    type Decoder = RawExportCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawExportCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawExportCodec
    }
}

impl tonic::codec::Encoder for RawExportCodec {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Self::Item,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Self::Error> {
        use prost::Message as _;
        item.encode(dst)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl tonic::codec::Decoder for RawExportCodec {
    type Item = otlp::RawExport;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Self::Item>, Self::Error> {
        use prost::bytes::Buf as _;
        // A split of tonic's buffer, not a copy.
        let body = src.copy_to_bytes(src.remaining());
        otlp::RawExport::decode_body(body)
            .map(Some)
            .map_err(|e| IngestError::Otlp(e).into())
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
        // `Content-Encoding: gzip` bodies are inflated on the way in (the
        // limit above applies to the inflated size); another encoding gets
        // 415.
        .layer(tower_http::decompression::RequestDecompressionLayer::new())
        .with_state(ingest)
}

async fn post_traces(State(ingest): State<Ingest>, headers: HeaderMap, body: Bytes) -> Response {
    let content_type = otlp_http::content_type(&headers);
    // Errors about the media type itself are answered in protobuf.
    let enc = Encoding::from_content_type(content_type).unwrap_or(Encoding::Protobuf);
    let exported = match Encoding::from_content_type(content_type) {
        // Protobuf takes the fast path: spans decoded one by one from the body.
        Some(Encoding::Protobuf) => match otlp::RawExport::decode_body(body) {
            Ok(req) => ingest.export_otlp_raw(req).await,
            Err(e) => Err(IngestError::Otlp(e)),
        },
        _ => match otlp::decode_http(&body, content_type, &ingest.config.limits) {
            Ok(req) => ingest.export_otlp(req).await,
            Err(e) => Err(IngestError::Otlp(e)),
        },
    };
    match exported {
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
        IngestError::Unavailable | IngestError::NoCopies => StatusCode::SERVICE_UNAVAILABLE,
    };
    let retry_after = matches!(
        e,
        IngestError::Overloaded | IngestError::Unavailable | IngestError::NoCopies
    )
    .then_some(ingest.config.retry_after);
    enc.error(status, e.grpc_code() as i32, &e.to_string(), retry_after)
}

#[cfg(test)]
mod tests;
