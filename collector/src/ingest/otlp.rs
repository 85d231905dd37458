//! OTLP trace ingest: decoding OTLP/HTTP bodies (protobuf and JSON) and
//! converting an `ExportTraceServiceRequest` into clew native spans.
//!
//! The conversion is the inverse of the tracer's
//! `clew-tracer`'s OTLP exporter:
//! a span exported by `clew-tracer` over OTLP is stored exactly as if it had
//! been exported natively (vector clocks included, carried in OTLP as the
//! `clew.clock.start` / `clew.clock.end` span attributes).
//!
//! Invalid spans are rejected one by one and reported back through the OTLP
//! `partial_success` field; only a request over
//! [`Limits::max_spans_per_batch`], or one that does not decode, is refused
//! as a whole. The body size is the transport's to bound (axum's body limit,
//! tonic's `max_decoding_message_size`) before anything here runs. Oversized attribute lists, values,
//! event and link lists are truncated, as OpenTelemetry collectors do,
//! counted by reason in [`Converted::truncated`] and reported back in
//! `partial_success` too (with `rejected_spans` 0 when nothing was
//! rejected: the OTLP warning form).
//!
//! What clew's model has no place for is dropped: the instrumentation scope,
//! span `flags`, `schema_url`s and the client's `dropped_*_count` fields (the
//! native export path drops them too, so both paths store the same span).
//!
//! OTLP/JSON is parsed by `opentelemetry-proto`'s `with-serde` derives: hex
//! trace and span ids (either case), lowerCamelCase names, integer enums,
//! int64/fixed64 as decimal strings or numbers, base64 `bytesValue`, unknown
//! fields ignored — the OTLP/JSON encoding. It is stricter than the general
//! protobuf JSON mapping in ways OTLP/JSON does not need: enum names
//! (`"SPAN_KIND_SERVER"`), `null` for scalar fields, quoted 32-bit integers
//! and quoted doubles (`"NaN"`) are refused as malformed, and snake_case
//! field names are ignored as unknown. Responses are written by hand
//! ([`encode_http_response`]) because its serializer writes `null` for absent
//! messages and int64 as JSON numbers.

use std::fmt::Write as _;

use clew_model::VectorClock;
use clew_model::attrs::{
    CLOCK_END as ATTR_CLOCK_END, CLOCK_START as ATTR_CLOCK_START, NODE as ATTR_NODE,
};
use clew_proto::v1 as pb;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1 as otlp_common;
use opentelemetry_proto::tonic::trace::v1 as otlp;
use prost::Message as _;

/// Resource attribute naming the service.
pub const ATTR_SERVICE_NAME: &str = "service.name";

/// The service of a resource without `service.name`, as OpenTelemetry SDKs
/// name it.
pub const UNKNOWN_SERVICE: &str = "unknown_service";

pub use clew_runtime::otlp_http::{self, CONTENT_TYPE_JSON, CONTENT_TYPE_PROTOBUF, Encoding};

/// An unsupported media type is echoed in the error up to this many bytes.
pub const MAX_MEDIA_TYPE_ECHO: usize = 64;

/// At most this many distinct rejection reasons are kept for the
/// `partial_success` message.
pub const MAX_REJECTION_REASONS: usize = 5;

/// Result of this module's fallible functions.
pub type Result<T, E = OtlpError> = std::result::Result<T, E>;

/// Why a whole OTLP request was refused.
///
/// Every message is safe to return to the client as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OtlpError {
    /// The request holds more spans than [`Limits::max_spans_per_batch`].
    /// gRPC: `InvalidArgument`; HTTP: 413.
    #[error("request has {count} spans, more than the limit of {max}")]
    TooManySpans {
        /// Spans in the request.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The body could not be decoded ("invalid protobuf", "invalid JSON at
    /// line L column C"). gRPC: `InvalidArgument`; HTTP: 400.
    #[error("{0}")]
    Malformed(String),
    /// The `Content-Type` is neither protobuf nor JSON (the media type
    /// given, cut to [`MAX_MEDIA_TYPE_ECHO`] bytes). HTTP: 415.
    #[error("unsupported content type {0:?}: use application/x-protobuf or application/json")]
    UnsupportedMediaType(String),
}

impl OtlpError {
    /// The HTTP status code OTLP/HTTP answers this error with.
    pub fn http_status(&self) -> u16 {
        match self {
            OtlpError::TooManySpans { .. } => 413,
            OtlpError::Malformed(_) => 400,
            OtlpError::UnsupportedMediaType(_) => 415,
        }
    }
}

/// Size limits applied to incoming OTLP data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// A request with more spans than this is refused as a whole
    /// ([`OtlpError::TooManySpans`]).
    pub max_spans_per_batch: usize,
    /// A span whose name is longer than this many bytes is rejected. Event
    /// names are truncated to it instead.
    pub max_name_len: usize,
    /// Attributes kept per span, event, link and resource; the rest are
    /// dropped and counted. The clock attributes are not counted.
    pub max_attributes: usize,
    /// String and bytes values (and `trace_state`, status messages) are
    /// truncated to this many bytes, at a UTF-8 character boundary.
    pub max_value_len: usize,
    /// Events kept per span; later events are dropped and counted.
    pub max_events_per_span: usize,
    /// Links kept per span; later links are dropped and counted.
    pub max_links_per_span: usize,
}

impl Limits {
    /// No limits: converts every valid span whole. The WAL replays an OTLP
    /// request logged as it came with these; it logs one so only when
    /// nothing was rejected, dropped or shortened under the limits in force,
    /// which makes the two conversions agree.
    pub fn unbounded() -> Self {
        Limits {
            max_spans_per_batch: usize::MAX,
            max_name_len: usize::MAX,
            max_attributes: usize::MAX,
            max_value_len: usize::MAX,
            max_events_per_span: usize::MAX,
            max_links_per_span: usize::MAX,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_spans_per_batch: 10_000,
            max_name_len: 1024,
            max_attributes: 128,
            max_value_len: 16 * 1024,
            max_events_per_span: 128,
            max_links_per_span: 128,
        }
    }
}

/// The result of converting one OTLP request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Converted {
    /// The spans accepted, in request order.
    pub spans: Vec<pb::Span>,
    /// Spans rejected as invalid.
    pub rejected: u64,
    /// The first few distinct rejection reasons (at most
    /// [`MAX_REJECTION_REASONS`]), for the `partial_success` message.
    pub rejection_reasons: Vec<String>,
    /// What was cut to fit the [`Limits`] (span-level cuts for accepted
    /// spans only; resource-level ones once per `ResourceSpans`).
    pub truncated: Truncation,
}

/// What the [`Limits`] cut from a request, by reason. Truncation does not
/// reject a span: it is stored with what fits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Truncation {
    /// Accepted spans stored with something cut (from the span or from its
    /// resource).
    pub spans: u64,
    /// Attributes (of spans, events, links and resources) dropped over
    /// [`Limits::max_attributes`].
    pub attributes: u64,
    /// String and bytes values (and trace states, status messages, service
    /// and node names) shortened to [`Limits::max_value_len`].
    pub values: u64,
    /// Events dropped over [`Limits::max_events_per_span`].
    pub events: u64,
    /// Links dropped over [`Limits::max_links_per_span`].
    pub links: u64,
    /// Links dropped because their trace or span id is invalid.
    pub invalid_links: u64,
    /// Event names shortened to [`Limits::max_name_len`].
    pub event_names: u64,
}

impl Truncation {
    /// The metric label of each reason, with its count (spans excluded).
    pub fn by_reason(&self) -> [(&'static str, u64); 6] {
        [
            ("attributes", self.attributes),
            ("values", self.values),
            ("events", self.events),
            ("links", self.links),
            ("invalid_links", self.invalid_links),
            ("event_names", self.event_names),
        ]
    }

    /// True when nothing was cut.
    pub fn is_empty(&self) -> bool {
        self.by_reason().iter().all(|&(_, n)| n == 0)
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Truncation) {
        self.spans = self.spans.saturating_add(other.spans);
        self.attributes = self.attributes.saturating_add(other.attributes);
        self.values = self.values.saturating_add(other.values);
        self.events = self.events.saturating_add(other.events);
        self.links = self.links.saturating_add(other.links);
        self.invalid_links = self.invalid_links.saturating_add(other.invalid_links);
        self.event_names = self.event_names.saturating_add(other.event_names);
    }

    /// What was cut, for the client ("2 spans truncated: 99872 attributes
    /// over the limit of 128 dropped, 1 value shortened to 16384 bytes"),
    /// or `None` when nothing was.
    pub fn message(&self, limits: &Limits) -> Option<String> {
        if self.is_empty() {
            return None;
        }
        let parts: Vec<String> = [
            (self.attributes, "attribute", over(limits.max_attributes)),
            (self.values, "value", shortened(limits.max_value_len)),
            (self.events, "event", over(limits.max_events_per_span)),
            (self.links, "link", over(limits.max_links_per_span)),
            (
                self.invalid_links,
                "link",
                "with an invalid id dropped".into(),
            ),
            (
                self.event_names,
                "event name",
                shortened(limits.max_name_len),
            ),
        ]
        .into_iter()
        .filter(|(n, _, _)| *n > 0)
        .map(|(n, what, how)| format!("{} {how}", count(n, what)))
        .collect();
        let parts = parts.join(", ");
        Some(match self.spans {
            0 => format!("truncated: {parts}"),
            n => format!("{} truncated: {parts}", count(n, "span")),
        })
    }
}

/// "1 value", "2 values".
fn count(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn over(max: usize) -> String {
    format!("over the limit of {max} dropped")
}

fn shortened(max: usize) -> String {
    format!("shortened to {max} bytes")
}

impl Converted {
    /// Room for a request of `count` spans, or the request refused whole.
    fn for_request(count: usize, limits: &Limits) -> Result<Self> {
        if count > limits.max_spans_per_batch {
            return Err(OtlpError::TooManySpans {
                count,
                max: limits.max_spans_per_batch,
            });
        }
        Ok(Converted {
            spans: Vec::with_capacity(count),
            ..Converted::default()
        })
    }

    /// What the spans of a resource with these attributes share.
    fn resource(
        &mut self,
        attrs: Option<Vec<otlp_common::KeyValue>>,
        limits: &Limits,
    ) -> ResourceInfo {
        let mut cut = Truncation::default();
        let resource = ResourceInfo::new(attrs.unwrap_or_default(), limits, &mut cut);
        self.truncated.add(&cut);
        resource
    }

    /// Converts `span` and adds it, or counts it as rejected.
    fn push(&mut self, span: otlp::Span, resource: &ResourceInfo, limits: &Limits) {
        let mut cut = Truncation::default();
        match convert_span(span, resource, limits, &mut cut) {
            Ok(s) => {
                if resource.truncated || !cut.is_empty() {
                    cut.spans = 1;
                }
                self.truncated.add(&cut);
                self.spans.push(s);
            }
            Err(reason) => self.reject(reason),
        }
    }

    fn reject(&mut self, reason: String) {
        self.rejected += 1;
        if self.rejection_reasons.len() < MAX_REJECTION_REASONS
            && !self.rejection_reasons.contains(&reason)
        {
            self.rejection_reasons.push(reason);
        }
    }
}

/// Converts an OTLP export request into clew native spans.
///
/// Each span gets its resource's `service.name` (else
/// [`UNKNOWN_SERVICE`]) as `service`, its `clew.node` (else empty) as `node`
/// and the other resource attributes as `resource`. The span attributes
/// `clew.clock.start` / `clew.clock.end` become `clock_start` / `clock_end`;
/// one that does not decode as a vector clock stays a plain attribute.
///
/// Invalid spans are rejected individually (see [`Converted`]).
///
/// # Errors
///
/// [`OtlpError::TooManySpans`] when the request holds more than
/// [`Limits::max_spans_per_batch`] spans; nothing is converted then.
pub fn from_otlp(req: ExportTraceServiceRequest, limits: &Limits) -> Result<Converted> {
    let count = req
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .fold(0usize, |n, ss| n.saturating_add(ss.spans.len()));
    let mut out = Converted::for_request(count, limits)?;
    for rs in req.resource_spans {
        let resource = out.resource(rs.resource.map(|r| r.attributes), limits);
        for span in rs.scope_spans.into_iter().flat_map(|ss| ss.spans) {
            out.push(span, &resource, limits);
        }
    }
    Ok(out)
}

/// An OTLP/protobuf `ExportTraceServiceRequest` decoded down to its spans,
/// which stay encoded: slices of the request body (not copies) until
/// [`from_raw`] decodes and converts them one at a time. This skips the
/// request-wide `Vec` of OTLP spans that decoding it whole builds (grown by
/// doubling, then moved from) on the ingest fast path.
///
/// Everything around the spans (resources, scopes, schema URLs) is decoded
/// and checked here as the generated OTLP types would; each span is checked
/// by [`from_raw`].
#[derive(Clone, Debug, PartialEq)]
pub struct RawExport {
    /// The whole request body (the spans are slices of it).
    body: prost::bytes::Bytes,
    message: RawExportMessage,
}

/// `ExportTraceServiceRequest`, its spans left encoded.
#[derive(Clone, PartialEq, prost::Message)]
struct RawExportMessage {
    #[prost(message, repeated, tag = "1")]
    resource_spans: Vec<RawResourceSpans>,
}

/// `ResourceSpans`, its spans left encoded.
#[derive(Clone, PartialEq, prost::Message)]
struct RawResourceSpans {
    #[prost(message, optional, tag = "1")]
    resource: Option<opentelemetry_proto::tonic::resource::v1::Resource>,
    #[prost(message, repeated, tag = "2")]
    scope_spans: Vec<RawScopeSpans>,
    #[prost(string, tag = "3")]
    schema_url: String,
}

/// `ScopeSpans`, its spans left encoded (a message and a `bytes` field look
/// alike on the wire).
#[derive(Clone, PartialEq, prost::Message)]
struct RawScopeSpans {
    #[prost(message, optional, tag = "1")]
    scope: Option<otlp_common::InstrumentationScope>,
    #[prost(bytes = "bytes", repeated, tag = "2")]
    spans: Vec<prost::bytes::Bytes>,
    #[prost(string, tag = "3")]
    schema_url: String,
}

/// The ids of an OTLP `Span`, decoded alone.
#[derive(Clone, PartialEq, prost::Message)]
struct OtlpSpanIds {
    #[prost(bytes = "vec", tag = "1")]
    trace_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    span_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    parent_span_id: Vec<u8>,
}

impl RawExport {
    /// Decodes a protobuf body. The spans are slices of `body`.
    ///
    /// # Errors
    ///
    /// [`OtlpError::Malformed`] when the body does not decode.
    pub fn decode_body(body: prost::bytes::Bytes) -> Result<Self> {
        let message = RawExportMessage::decode(body.clone()).map_err(|_| malformed_protobuf())?;
        Ok(RawExport { body, message })
    }

    /// The request body as it came.
    pub fn body(&self) -> &prost::bytes::Bytes {
        &self.body
    }

    /// Spans in the request.
    pub fn span_count(&self) -> usize {
        self.spans().count()
    }

    /// The encoded length of each span, in request order.
    pub fn span_sizes(&self) -> Vec<u64> {
        self.spans().map(|s| s.len() as u64).collect()
    }

    /// The request with only the spans whose position (in request order)
    /// `keep` marks, encoded: their resources and scopes are kept, the spans
    /// copied as they came.
    pub fn subset(&self, keep: &[bool]) -> Vec<u8> {
        let mut at = 0;
        let mut resource_spans = Vec::new();
        for rs in &self.message.resource_spans {
            let mut scope_spans = Vec::new();
            for ss in &rs.scope_spans {
                let mut spans = Vec::new();
                for span in &ss.spans {
                    if keep.get(at).copied().unwrap_or(false) {
                        spans.push(span.clone());
                    }
                    at += 1;
                }
                if !spans.is_empty() {
                    scope_spans.push(RawScopeSpans {
                        scope: ss.scope.clone(),
                        spans,
                        schema_url: ss.schema_url.clone(),
                    });
                }
            }
            if !scope_spans.is_empty() {
                resource_spans.push(RawResourceSpans {
                    resource: rs.resource.clone(),
                    scope_spans,
                    schema_url: rs.schema_url.clone(),
                });
            }
        }
        RawExportMessage { resource_spans }.encode_to_vec()
    }

    /// Checks each span's ids as OTLP requires them (a 16-byte trace id, an
    /// 8-byte span id, none all zero; a parent id empty or 8 bytes),
    /// decoding only the ids. The error names the span's position.
    pub fn check_ids(&self) -> std::result::Result<(), String> {
        for (i, encoded) in self.spans().enumerate() {
            let ids = OtlpSpanIds::decode(encoded.as_ref())
                .map_err(|_| format!("span {i}: not an OTLP span"))?;
            let id_ok = |b: &[u8], n: usize| b.len() == n && b.iter().any(|x| *x != 0);
            if !id_ok(&ids.trace_id, 16) {
                return Err(format!(
                    "span {i}: trace_id must be 16 bytes and not all zero"
                ));
            }
            if !id_ok(&ids.span_id, 8) {
                return Err(format!(
                    "span {i}: span_id must be 8 bytes and not all zero"
                ));
            }
            if !ids.parent_span_id.is_empty() && ids.parent_span_id.len() != 8 {
                return Err(format!("span {i}: parent_span_id must be empty or 8 bytes"));
            }
        }
        Ok(())
    }

    fn spans(&self) -> impl Iterator<Item = &prost::bytes::Bytes> {
        self.message
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
    }
}

/// [`from_otlp`] for a [`RawExport`]: decodes each span and converts it at
/// once. The result is the same as decoding the whole request and calling
/// [`from_otlp`].
///
/// # Errors
///
/// [`OtlpError::TooManySpans`] as [`from_otlp`]; [`OtlpError::Malformed`]
/// when a span does not decode (the whole request is refused then, as when
/// decoding it whole).
pub fn from_raw(req: RawExport, limits: &Limits) -> Result<Converted> {
    let mut out = Converted::for_request(req.span_count(), limits)?;
    for rs in req.message.resource_spans {
        let resource = out.resource(rs.resource.map(|r| r.attributes), limits);
        for encoded in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
            let span = otlp::Span::decode(encoded.as_ref()).map_err(|_| malformed_protobuf())?;
            out.push(span, &resource, limits);
        }
    }
    Ok(out)
}

fn malformed_protobuf() -> OtlpError {
    OtlpError::Malformed("invalid protobuf".into())
}

/// The response to an export: `partial_success` is set only when spans were
/// rejected or something was truncated under `limits` (the limits the
/// conversion used). `rejected_spans` counts rejected spans only (a
/// truncated span is accepted); `error_message` gives the rejection reasons,
/// then what was truncated ([`Truncation::message`]). With nothing rejected,
/// that is the OTLP specification's warning form: `rejected_spans` 0 and a
/// message.
pub fn partial_success(converted: &Converted, limits: &Limits) -> ExportTraceServiceResponse {
    let truncation = converted.truncated.message(limits);
    if converted.rejected == 0 && truncation.is_none() {
        return ExportTraceServiceResponse::default();
    }
    let error_message = converted
        .rejection_reasons
        .iter()
        .cloned()
        .chain(truncation)
        .collect::<Vec<_>>()
        .join("; ");
    ExportTraceServiceResponse {
        partial_success: Some(ExportTracePartialSuccess {
            rejected_spans: i64::try_from(converted.rejected).unwrap_or(i64::MAX),
            error_message,
        }),
    }
}

/// The encoding named by a `Content-Type` header value (see
/// [`Encoding::from_content_type`]).
///
/// # Errors
///
/// [`OtlpError::UnsupportedMediaType`] for any media type but protobuf and
/// JSON, echoing at most [`MAX_MEDIA_TYPE_ECHO`] bytes of it.
pub fn encoding(content_type: &str) -> Result<Encoding> {
    Encoding::from_content_type(content_type).ok_or_else(|| {
        let mut echo = otlp_http::media_type(content_type).to_string();
        truncate_str(&mut echo, MAX_MEDIA_TYPE_ECHO);
        OtlpError::UnsupportedMediaType(echo)
    })
}

/// Decodes an OTLP/HTTP `/v1/traces` body.
///
/// # Errors
///
/// [`OtlpError::UnsupportedMediaType`] for a content type other than
/// protobuf or JSON, [`OtlpError::Malformed`] when the body does not decode.
/// The limits are not consulted yet (the span count is checked by
/// [`from_otlp`]); it is here so that decode-time limits need no API change.
pub fn decode_http(
    body: &[u8],
    content_type: &str,
    _limits: &Limits,
) -> Result<ExportTraceServiceRequest> {
    encoding(content_type)?
        .decode_request(body)
        .map_err(OtlpError::Malformed)
}

/// Encodes an export response for OTLP/HTTP, in the request's encoding
/// (JSON for a JSON `content_type`, protobuf otherwise).
pub fn encode_http_response(resp: &ExportTraceServiceResponse, content_type: &str) -> Vec<u8> {
    Encoding::from_content_type(content_type)
        .unwrap_or(Encoding::Protobuf)
        .encode_response(resp)
}

/// Applies the truncation [`Limits`] to a native span in place, as
/// [`from_otlp`] does to an OTLP span (attributes, values, events, links,
/// event names), so that a span stores alike whichever way it came; returns
/// what was cut (`spans` 1 if anything was).
pub fn truncate_native(span: &mut pb::Span, limits: &Limits) -> Truncation {
    let mut cut = Truncation::default();
    for s in [&mut span.service, &mut span.node, &mut span.trace_state] {
        cut.values += u64::from(truncate_str(s, limits.max_value_len));
    }
    if let Some(status) = &mut span.status {
        cut.values += u64::from(truncate_str(&mut status.message, limits.max_value_len));
    }
    truncate_native_attributes(&mut span.attributes, limits, &mut cut);
    truncate_native_attributes(&mut span.resource, limits, &mut cut);
    cut.events += truncate_vec(&mut span.events, limits.max_events_per_span);
    for e in &mut span.events {
        cut.event_names += u64::from(truncate_str(&mut e.name, limits.max_name_len));
        truncate_native_attributes(&mut e.attributes, limits, &mut cut);
    }
    cut.links += truncate_vec(&mut span.links, limits.max_links_per_span);
    for l in &mut span.links {
        cut.values += u64::from(truncate_str(&mut l.trace_state, limits.max_value_len));
        truncate_native_attributes(&mut l.attributes, limits, &mut cut);
    }
    if !cut.is_empty() {
        cut.spans = 1;
    }
    cut
}

fn truncate_native_attributes(
    attrs: &mut Vec<pb::KeyValue>,
    limits: &Limits,
    cut: &mut Truncation,
) {
    cut.attributes += truncate_vec(attrs, limits.max_attributes);
    for v in attrs.iter_mut().filter_map(|kv| kv.value.as_mut()) {
        truncate_native_value(v, limits, cut);
    }
}

fn truncate_native_value(v: &mut pb::AnyValue, limits: &Limits, cut: &mut Truncation) {
    use pb::any_value::Value as N;
    match &mut v.value {
        Some(N::StringValue(s)) => cut.values += u64::from(truncate_str(s, limits.max_value_len)),
        Some(N::BytesValue(b)) => cut.values += truncate_vec(b, limits.max_value_len).min(1),
        Some(N::ArrayValue(a)) => {
            for v in &mut a.values {
                truncate_native_value(v, limits, cut);
            }
        }
        _ => {}
    }
}

/// What every span of one `ResourceSpans` shares.
struct ResourceInfo {
    service: String,
    node: String,
    attributes: Vec<pb::KeyValue>,
    /// Something of the resource was cut: each of its spans is truncated.
    truncated: bool,
}

impl ResourceInfo {
    fn new(attrs: Vec<otlp_common::KeyValue>, limits: &Limits, cut: &mut Truncation) -> Self {
        let mut service = None;
        let mut node = None;
        let mut rest = Vec::with_capacity(attrs.len());
        for kv in attrs {
            if kv.key == ATTR_SERVICE_NAME {
                if service.is_none() {
                    service = string_value(kv.value);
                }
            } else if kv.key == ATTR_NODE {
                if node.is_none() {
                    node = string_value(kv.value);
                }
            } else {
                rest.push(kv);
            }
        }
        let mut service = service
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| UNKNOWN_SERVICE.to_string());
        let mut node = node.unwrap_or_default();
        cut.values += u64::from(truncate_str(&mut service, limits.max_value_len));
        cut.values += u64::from(truncate_str(&mut node, limits.max_value_len));
        let attributes = convert_attributes(rest, limits, cut);
        Self {
            service,
            node,
            attributes,
            truncated: !cut.is_empty(),
        }
    }
}

fn string_value(v: Option<otlp_common::AnyValue>) -> Option<String> {
    match v?.value? {
        otlp_common::any_value::Value::StringValue(s) => Some(s),
        _ => None,
    }
}

fn valid_id(id: &[u8], len: usize) -> bool {
    id.len() == len && id.iter().any(|&b| b != 0)
}

/// Checks a span's ids, times and name; returns its parent id (empty for a
/// root, including SDKs' all-zero parent).
fn check_span(span: &mut otlp::Span, limits: &Limits) -> Result<Vec<u8>, String> {
    if !valid_id(&span.trace_id, 16) {
        return Err("trace_id must be 16 bytes and not all zero".into());
    }
    if !valid_id(&span.span_id, 8) {
        return Err("span_id must be 8 bytes and not all zero".into());
    }
    let parent_span_id = match span.parent_span_id.len() {
        // Some SDKs write an all-zero parent for a root span.
        8 if span.parent_span_id.iter().all(|&b| b == 0) => Vec::new(),
        0 | 8 => std::mem::take(&mut span.parent_span_id),
        _ => return Err("parent_span_id must be empty or 8 bytes".into()),
    };
    if span.end_time_unix_nano < span.start_time_unix_nano {
        return Err("end_time_unix_nano is before start_time_unix_nano".into());
    }
    if span.name.len() > limits.max_name_len {
        return Err(format!(
            "span name longer than {} bytes",
            limits.max_name_len
        ));
    }
    Ok(parent_span_id)
}

/// Events within the limits, their names and attributes cut to them.
fn convert_events(
    mut events: Vec<otlp::span::Event>,
    limits: &Limits,
    cut: &mut Truncation,
) -> Vec<pb::Event> {
    cut.events += truncate_vec(&mut events, limits.max_events_per_span);
    events
        .into_iter()
        .map(|e| {
            let mut name = e.name;
            cut.event_names += u64::from(truncate_str(&mut name, limits.max_name_len));
            pb::Event {
                time_unix_nano: e.time_unix_nano,
                name,
                attributes: convert_attributes(e.attributes, limits, cut),
            }
        })
        .collect()
}

/// Links with valid ids, within the limits.
fn convert_links(
    mut links: Vec<otlp::span::Link>,
    limits: &Limits,
    cut: &mut Truncation,
) -> Vec<pb::Link> {
    let before = links.len();
    links.retain(|l| valid_id(&l.trace_id, 16) && valid_id(&l.span_id, 8));
    cut.invalid_links += (before - links.len()) as u64;
    cut.links += truncate_vec(&mut links, limits.max_links_per_span);
    links
        .into_iter()
        .map(|l| {
            let mut trace_state = l.trace_state;
            cut.values += u64::from(truncate_str(&mut trace_state, limits.max_value_len));
            pb::Link {
                trace_id: l.trace_id,
                span_id: l.span_id,
                trace_state,
                attributes: convert_attributes(l.attributes, limits, cut),
            }
        })
        .collect()
}

/// The status, its message cut to the value limit.
fn convert_status(
    status: Option<otlp::Status>,
    limits: &Limits,
    cut: &mut Truncation,
) -> pb::Status {
    status
        .map(|s| {
            let code = match otlp::status::StatusCode::try_from(s.code) {
                Ok(otlp::status::StatusCode::Ok) => pb::status::Code::Ok,
                Ok(otlp::status::StatusCode::Error) => pb::status::Code::Error,
                _ => pb::status::Code::Unset,
            };
            let mut message = s.message;
            cut.values += u64::from(truncate_str(&mut message, limits.max_value_len));
            pb::Status {
                code: code as i32,
                message,
            }
        })
        .unwrap_or_default()
}

fn convert_span(
    mut span: otlp::Span,
    resource: &ResourceInfo,
    limits: &Limits,
    cut: &mut Truncation,
) -> Result<pb::Span, String> {
    let parent_span_id = check_span(&mut span, limits)?;
    let (attributes, clock_start, clock_end) = take_clocks(span.attributes);
    let mut trace_state = span.trace_state;
    cut.values += u64::from(truncate_str(&mut trace_state, limits.max_value_len));
    let events = convert_events(span.events, limits, cut);
    let links = convert_links(span.links, limits, cut);
    let status = convert_status(span.status, limits, cut);
    // OTLP and clew number span kinds alike; an unknown kind is unspecified.
    let kind = pb::SpanKind::try_from(span.kind).unwrap_or(pb::SpanKind::Unspecified);
    Ok(pb::Span {
        trace_id: span.trace_id,
        span_id: span.span_id,
        parent_span_id,
        name: span.name,
        service: resource.service.clone(),
        kind: kind as i32,
        start_time_unix_nano: span.start_time_unix_nano,
        end_time_unix_nano: span.end_time_unix_nano,
        attributes: convert_attributes(attributes, limits, cut),
        events,
        links,
        status: Some(status),
        // Always present, empty when absent, as the native export writes it.
        clock_start: Some(clock_start.unwrap_or_default().to_proto()),
        clock_end: Some(clock_end.unwrap_or_default().to_proto()),
        trace_state,
        resource: resource.attributes.clone(),
        node: resource.node.clone(),
    })
}

/// Splits the clock attributes off. The first occurrence of each that
/// decodes wins; anything else stays a plain attribute.
fn take_clocks(
    attrs: Vec<otlp_common::KeyValue>,
) -> (
    Vec<otlp_common::KeyValue>,
    Option<VectorClock>,
    Option<VectorClock>,
) {
    let (mut start, mut end) = (None, None);
    if !attrs
        .iter()
        .any(|kv| kv.key == ATTR_CLOCK_START || kv.key == ATTR_CLOCK_END)
    {
        // Nearly always (only clew's own tracer sends clocks over OTLP).
        return (attrs, start, end);
    }
    let mut rest = Vec::with_capacity(attrs.len());
    for kv in attrs {
        let slot = match kv.key.as_str() {
            ATTR_CLOCK_START => &mut start,
            ATTR_CLOCK_END => &mut end,
            _ => {
                rest.push(kv);
                continue;
            }
        };
        let decoded = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(otlp_common::any_value::Value::StringValue(s)) if slot.is_none() => {
                VectorClock::decode(s).ok()
            }
            _ => None,
        };
        match decoded {
            Some(c) => *slot = Some(c),
            None => rest.push(kv),
        }
    }
    (rest, start, end)
}

fn truncate_vec<T>(v: &mut Vec<T>, max: usize) -> u64 {
    let over = v.len().saturating_sub(max);
    v.truncate(max);
    over as u64
}

/// Shortens `s` to at most `max` bytes at a character boundary; true if it
/// did.
fn truncate_str(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    true
}

fn convert_attributes(
    mut attrs: Vec<otlp_common::KeyValue>,
    limits: &Limits,
    cut: &mut Truncation,
) -> Vec<pb::KeyValue> {
    cut.attributes += truncate_vec(&mut attrs, limits.max_attributes);
    attrs
        .into_iter()
        .map(|kv| pb::KeyValue {
            key: kv.key,
            value: Some(
                kv.value
                    .map(|v| convert_value(v, limits, cut))
                    .unwrap_or_default(),
            ),
        })
        .collect()
}

fn convert_value(v: otlp_common::AnyValue, limits: &Limits, cut: &mut Truncation) -> pb::AnyValue {
    use otlp_common::any_value::Value as O;
    use pb::any_value::Value as N;
    let value = v.value.and_then(|v| match v {
        O::StringValue(mut s) => {
            cut.values += u64::from(truncate_str(&mut s, limits.max_value_len));
            Some(N::StringValue(s))
        }
        O::BoolValue(b) => Some(N::BoolValue(b)),
        O::IntValue(i) => Some(N::IntValue(i)),
        O::DoubleValue(d) => Some(N::DoubleValue(d)),
        O::BytesValue(mut b) => {
            cut.values += truncate_vec(&mut b, limits.max_value_len).min(1);
            Some(N::BytesValue(b))
        }
        O::ArrayValue(a) => Some(N::ArrayValue(pb::ArrayValue {
            values: a
                .values
                .into_iter()
                .map(|v| convert_value(v, limits, cut))
                .collect(),
        })),
        O::KvlistValue(kvs) => {
            let mut json = String::new();
            write_kvlist_json(&mut json, &kvs);
            cut.values += u64::from(truncate_str(&mut json, limits.max_value_len));
            Some(N::StringValue(json))
        }
        // An index into a profiles string table: meaningless in a trace.
        O::StringValueStrindex(_) => None,
    });
    pb::AnyValue { value }
}

/// Renders a key-value list as a JSON object (keys in order, duplicates
/// kept; bytes as a hex string; non-finite doubles as strings).
fn write_kvlist_json(out: &mut String, kvs: &otlp_common::KeyValueList) {
    out.push('{');
    for (i, kv) in kvs.values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_json_str(out, &kv.key);
        out.push(':');
        write_value_json(out, kv.value.as_ref());
    }
    out.push('}');
}

fn write_value_json(out: &mut String, v: Option<&otlp_common::AnyValue>) {
    use otlp_common::any_value::Value as O;
    match v.and_then(|v| v.value.as_ref()) {
        None | Some(O::StringValueStrindex(_)) => out.push_str("null"),
        Some(O::StringValue(s)) => write_json_str(out, s),
        Some(O::BoolValue(b)) => out.push_str(if *b { "true" } else { "false" }),
        Some(O::IntValue(i)) => {
            let _ = write!(out, "{i}");
        }
        Some(O::DoubleValue(d)) if d.is_finite() => {
            let _ = write!(out, "{d:?}");
        }
        Some(O::DoubleValue(d)) => write_json_str(out, &d.to_string()),
        Some(O::BytesValue(b)) => {
            out.push('"');
            for x in b {
                let _ = write!(out, "{x:02x}");
            }
            out.push('"');
        }
        Some(O::ArrayValue(a)) => {
            out.push('[');
            for (i, v) in a.values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value_json(out, Some(v));
            }
            out.push(']');
        }
        Some(O::KvlistValue(kvs)) => write_kvlist_json(out, kvs),
    }
}

fn write_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use clew_tracer::export::Resource;
    use clew_tracer::export::convert::{to_native_span, to_otlp_resource_spans};
    use clew_tracer::ids::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    use clew_tracer::span::{Event, KeyValue, Link, SpanData, SpanKind, Status, Value};
    use opentelemetry_proto::tonic::resource::v1 as otlp_resource;
    use proptest::prelude::*;

    fn ts(s: &str) -> TraceState {
        clew_tracer::propagation::w3c::parse_tracestate(&[s]).unwrap()
    }

    fn sample() -> (SpanData, Resource) {
        let mut clock = VectorClock::new();
        clock.set("a#1", 3);
        clock.set("b#2", 9);
        let mut end = clock.clone();
        end.set("a#1", 4);
        let data = SpanData {
            context: SpanContext {
                trace_id: TraceId::from_u128(0xabc),
                span_id: SpanId::from_u64(0x12),
                flags: TraceFlags::SAMPLED,
                trace_state: ts("k=v"),
                is_remote: false,
            },
            parent_span_id: SpanId::from_u64(0x11),
            name: "GET /x".into(),
            kind: SpanKind::Server,
            start_time_unix_nano: 10,
            end_time_unix_nano: 20,
            attributes: vec![
                KeyValue::new("s", "v"),
                KeyValue::new("i", 7i64),
                KeyValue::new("b", true),
                KeyValue::new("f", 1.5),
                KeyValue::new("a", Value::Array(vec![Value::I64(1), "x".into()])),
            ],
            events: vec![Event {
                time_unix_nano: 15,
                name: "e".into(),
                attributes: vec![KeyValue::new("k", 1i64)],
            }],
            links: vec![Link {
                context: SpanContext {
                    trace_id: TraceId::from_u128(0xdef),
                    span_id: SpanId::from_u64(0x34),
                    flags: TraceFlags::SAMPLED,
                    trace_state: ts("x=y"),
                    is_remote: true,
                },
                attributes: vec![KeyValue::new("l", "v")],
            }],
            status: Status::Error("boom".into()),
            clock_start: clock,
            clock_end: end,
            dropped: 0,
            ..Default::default()
        };
        let res = Resource {
            service_name: "a".into(),
            node_id: "a#1".into(),
            attributes: vec![KeyValue::new("service.version", "1")],
        };
        (data, res)
    }

    fn request_of(spans: &[&SpanData], res: &Resource) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![to_otlp_resource_spans(spans.iter().copied(), res)],
        }
    }

    fn one_span(span: otlp::Span) -> ExportTraceServiceRequest {
        let (data, res) = sample();
        let mut req = request_of(&[&data], &res);
        req.resource_spans[0].scope_spans[0].spans = vec![span];
        req
    }

    fn valid_otlp_span() -> otlp::Span {
        let (data, res) = sample();
        request_of(&[&data], &res).resource_spans[0].scope_spans[0].spans[0].clone()
    }

    fn str_attr(key: &str, v: &str) -> otlp_common::KeyValue {
        otlp_common::KeyValue {
            key: key.into(),
            value: Some(otlp_common::AnyValue {
                value: Some(otlp_common::any_value::Value::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }

    fn native_str(v: &pb::AnyValue) -> &str {
        match &v.value {
            Some(pb::any_value::Value::StringValue(s)) => s,
            other => panic!("not a string: {other:?}"),
        }
    }

    #[test]
    fn round_trip_agrees_with_native_export() {
        let (data, res) = sample();
        let mut root = data.clone();
        root.parent_span_id = SpanId::INVALID;
        root.context.span_id = SpanId::from_u64(0x99);
        root.status = Status::Ok;
        root.kind = SpanKind::Internal;
        root.clock_start = VectorClock::new();
        root.clock_end = VectorClock::new();
        root.links.clear();
        let mut unset = data.clone();
        unset.status = Status::Unset;
        unset.context.span_id = SpanId::from_u64(0x98);
        unset.kind = SpanKind::Consumer;
        let spans = [&data, &root, &unset];
        let got = from_otlp(request_of(&spans, &res), &Limits::default()).unwrap();
        assert_eq!(got.rejected, 0);
        assert!(got.truncated.is_empty());
        let want: Vec<_> = spans.iter().map(|s| to_native_span(s, &res)).collect();
        assert_eq!(got.spans, want);
        assert_eq!(got.spans[0].clock_start, Some(data.clock_start.to_proto()));
        assert_eq!(
            partial_success(&got, &Limits::default()),
            ExportTraceServiceResponse::default()
        );
    }

    #[test]
    fn round_trip_through_http_encodings() {
        let (data, res) = sample();
        let req = request_of(&[&data], &res);
        let limits = Limits::default();
        let pb_body = req.encode_to_vec();
        let json_body = serde_json::to_vec(&req).unwrap();
        for (body, ct) in [
            (pb_body, "application/x-protobuf"),
            (json_body, "application/json; charset=utf-8"),
        ] {
            let decoded = decode_http(&body, ct, &limits).unwrap();
            assert_eq!(decoded, req, "{ct}");
            let got = from_otlp(decoded, &limits).unwrap();
            assert_eq!(got.spans, vec![to_native_span(&data, &res)], "{ct}");
        }
    }

    #[test]
    fn missing_service_and_node_fall_back() {
        let mut req = one_span(valid_otlp_span());
        req.resource_spans[0].resource = None;
        let got = from_otlp(req, &Limits::default()).unwrap();
        assert_eq!(got.spans[0].service, UNKNOWN_SERVICE);
        assert_eq!(got.spans[0].node, "");
        assert!(got.spans[0].resource.is_empty());
    }

    #[test]
    fn resource_attributes_are_typed_and_kvlist_is_json() {
        use otlp_common::any_value::Value as O;
        let mut req = one_span(valid_otlp_span());
        let kvlist = otlp_common::AnyValue {
            value: Some(O::KvlistValue(otlp_common::KeyValueList {
                values: vec![
                    str_attr("q\"", "x\ny"),
                    otlp_common::KeyValue {
                        key: "n".into(),
                        value: Some(otlp_common::AnyValue {
                            value: Some(O::ArrayValue(otlp_common::ArrayValue {
                                values: vec![
                                    otlp_common::AnyValue {
                                        value: Some(O::IntValue(-3)),
                                    },
                                    otlp_common::AnyValue {
                                        value: Some(O::DoubleValue(0.5)),
                                    },
                                    otlp_common::AnyValue {
                                        value: Some(O::BytesValue(vec![0xab, 1])),
                                    },
                                    otlp_common::AnyValue { value: None },
                                ],
                            })),
                        }),
                        ..Default::default()
                    },
                ],
            })),
        };
        let res = req.resource_spans[0].resource.as_mut().unwrap();
        res.attributes.push(otlp_common::KeyValue {
            key: "kv".into(),
            value: Some(kvlist),
            ..Default::default()
        });
        res.attributes.push(otlp_common::KeyValue {
            key: "raw".into(),
            value: Some(otlp_common::AnyValue {
                value: Some(O::BytesValue(vec![1, 2])),
            }),
            ..Default::default()
        });
        let got = from_otlp(req, &Limits::default()).unwrap();
        let r = &got.spans[0].resource;
        let keys: Vec<_> = r.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["service.version", "kv", "raw"]);
        let json = native_str(r[1].value.as_ref().unwrap());
        assert_eq!(json, r#"{"q\"":"x\ny","n":[-3,0.5,"ab01",null]}"#);
        let parsed: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(parsed["n"][0], -3);
        assert_eq!(
            r[2].value.as_ref().unwrap().value,
            Some(pb::any_value::Value::BytesValue(vec![1, 2]))
        );
    }

    #[test]
    fn invalid_clock_attribute_stays_plain() {
        let mut span = valid_otlp_span();
        for kv in &mut span.attributes {
            if kv.key == ATTR_CLOCK_START {
                *kv = str_attr(ATTR_CLOCK_START, "not a clock");
            }
        }
        let got = from_otlp(one_span(span), &Limits::default()).unwrap();
        assert_eq!(got.rejected, 0);
        let s = &got.spans[0];
        assert_eq!(s.clock_start, Some(pb::VectorClock::default()));
        assert_ne!(s.clock_end, Some(pb::VectorClock::default()));
        let kept = s.attributes.iter().find(|kv| kv.key == ATTR_CLOCK_START);
        assert_eq!(
            native_str(kept.unwrap().value.as_ref().unwrap()),
            "not a clock"
        );
        assert!(!s.attributes.iter().any(|kv| kv.key == ATTR_CLOCK_END));
    }

    fn rejected_reason(span: otlp::Span) -> String {
        let mut good = valid_otlp_span();
        good.span_id = vec![7; 8];
        let mut req = one_span(span);
        req.resource_spans[0].scope_spans[0].spans.push(good);
        let got = from_otlp(req, &Limits::default()).unwrap();
        assert_eq!(got.rejected, 1);
        assert_eq!(got.spans.len(), 1, "the valid span is kept");
        assert_eq!(got.spans[0].span_id, vec![7; 8]);
        let resp = partial_success(&got, &Limits::default());
        let ps = resp.partial_success.unwrap();
        assert_eq!(ps.rejected_spans, 1);
        assert_eq!(got.rejection_reasons.len(), 1);
        assert_eq!(ps.error_message, got.rejection_reasons[0]);
        ps.error_message
    }

    #[test]
    fn each_rejection_reason() {
        type Mutation = fn(&mut otlp::Span);
        let cases: Vec<(Mutation, &str)> = vec![
            (|s| s.trace_id = vec![1; 15], "trace_id"),
            (|s| s.trace_id = vec![0; 16], "trace_id"),
            (|s| s.trace_id.clear(), "trace_id"),
            (|s| s.span_id = vec![1; 9], "span_id"),
            (|s| s.span_id = vec![0; 8], "span_id"),
            (|s| s.parent_span_id = vec![1; 4], "parent_span_id"),
            (
                |s| {
                    s.start_time_unix_nano = 20;
                    s.end_time_unix_nano = 19;
                },
                "before start",
            ),
            (|s| s.name = "n".repeat(1025), "name longer than 1024"),
        ];
        for (mutate, want) in cases {
            let mut span = valid_otlp_span();
            mutate(&mut span);
            let reason = rejected_reason(span);
            assert!(reason.contains(want), "{reason:?} should mention {want:?}");
        }
    }

    #[test]
    fn reasons_are_distinct_and_capped() {
        let mut spans = Vec::new();
        for i in 0..20u8 {
            let mut s = valid_otlp_span();
            s.span_id = vec![0; 8];
            spans.push(s.clone());
            s.span_id = vec![1; 8];
            s.name = "x".repeat(2000 + usize::from(i));
            s.name.truncate(1025 + usize::from(i));
            spans.push(s);
        }
        let mut req = one_span(valid_otlp_span());
        req.resource_spans[0].scope_spans[0].spans = spans;
        let limits = Limits {
            max_name_len: 1024,
            ..Limits::default()
        };
        let got = from_otlp(req, &limits).unwrap();
        assert_eq!(got.rejected, 40);
        assert!(got.spans.is_empty());
        assert_eq!(got.rejection_reasons.len(), 2);
        let resp = partial_success(&got, &limits);
        assert_eq!(resp.partial_success.unwrap().rejected_spans, 40);
    }

    #[test]
    fn truncation_counts_and_keeps_utf8() {
        let mut span = valid_otlp_span();
        // 5 attributes + 2 clocks; limit 3 keeps both clocks and 3 plain.
        span.attributes.push(str_attr("long", "ééééé")); // 10 bytes
        let limits = Limits {
            max_attributes: 3,
            max_value_len: 5,
            max_events_per_span: 0,
            max_links_per_span: 0,
            ..Limits::default()
        };
        let mut req = one_span(span);
        req.resource_spans[0]
            .resource
            .as_mut()
            .unwrap()
            .attributes
            .push(str_attr("big", "0123456789"));
        let got = from_otlp(req, &limits).unwrap();
        assert_eq!(got.rejected, 0);
        let s = &got.spans[0];
        let keys: Vec<_> = s.attributes.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["s", "i", "b"]);
        assert_ne!(s.clock_start, Some(pb::VectorClock::default()));
        assert!(s.events.is_empty());
        assert!(s.links.is_empty());
        assert_eq!(native_str(s.resource[1].value.as_ref().unwrap()), "01234");
        // 3 attributes, 1 event, 1 link, 1 resource value.
        assert_eq!(
            got.truncated,
            Truncation {
                spans: 1,
                attributes: 3,
                values: 1,
                events: 1,
                links: 1,
                ..Truncation::default()
            }
        );
        // Nothing rejected, yet the client is told what was cut.
        let ps = partial_success(&got, &limits).partial_success.unwrap();
        assert_eq!(ps.rejected_spans, 0);
        assert_eq!(
            ps.error_message,
            "1 span truncated: 3 attributes over the limit of 3 dropped, \
             1 value shortened to 5 bytes, 1 event over the limit of 0 dropped, \
             1 link over the limit of 0 dropped"
        );

        let mut span = valid_otlp_span();
        span.attributes = vec![str_attr("long", "ééééé")];
        let got = from_otlp(one_span(span), &limits).unwrap();
        assert_eq!(
            native_str(got.spans[0].attributes[0].value.as_ref().unwrap()),
            "éé"
        );
    }

    #[test]
    fn all_zero_parent_means_root() {
        let mut span = valid_otlp_span();
        span.parent_span_id = vec![0; 8];
        let got = from_otlp(one_span(span), &Limits::default()).unwrap();
        assert_eq!(got.rejected, 0);
        assert!(got.spans[0].parent_span_id.is_empty());
    }

    /// Where `opentelemetry-proto`'s serde is stricter than the protobuf
    /// JSON mapping (OTLP/JSON itself requires integer enums and camelCase
    /// names). If one of these starts passing, update the module docs.
    #[test]
    fn known_json_strictness() {
        let limits = Limits::default();
        let span = |fields: &str| {
            format!(r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{{fields}}}]}}]}}]}}"#)
        };
        for fields in [
            r#""kind":"SPAN_KIND_SERVER""#,
            r#""status":{"code":"STATUS_CODE_ERROR"}"#,
            r#""droppedAttributesCount":"3""#,
            r#""spanId":null"#,
            r#""attributes":[{"key":"a","value":{"doubleValue":"NaN"}}]"#,
        ] {
            let doc = span(fields);
            assert!(
                matches!(
                    decode_http(doc.as_bytes(), "application/json", &limits),
                    Err(OtlpError::Malformed(_))
                ),
                "{doc}"
            );
        }
        // snake_case names are unknown fields, ignored: the span has no ids
        // and is rejected, not the request.
        let doc = span(r#""trace_id":"0102030405060708090a0b0c0d0e0f10""#);
        let req = decode_http(doc.as_bytes(), "application/json", &limits).unwrap();
        assert_eq!(from_otlp(req, &limits).unwrap().rejected, 1);
    }

    #[test]
    fn rejections_and_truncations_share_the_partial_success() {
        let limits = Limits {
            max_attributes: 2,
            max_name_len: 3,
            ..Limits::default()
        };
        let mut cut = valid_otlp_span();
        cut.name = "op".into();
        cut.events[0].name = "long name".into();
        let mut bad = cut.clone();
        bad.span_id = vec![0; 8];
        let mut req = one_span(cut);
        req.resource_spans[0].resource = None;
        req.resource_spans[0].scope_spans[0].spans.push(bad);
        let got = from_otlp(req, &limits).unwrap();
        assert_eq!((got.rejected, got.spans.len()), (1, 1));
        let ps = partial_success(&got, &limits).partial_success.unwrap();
        assert_eq!(ps.rejected_spans, 1);
        assert_eq!(
            ps.error_message,
            "span_id must be 8 bytes and not all zero; 1 span truncated: \
             3 attributes over the limit of 2 dropped, 1 event name shortened to 3 bytes"
        );
    }

    #[test]
    fn invalid_links_are_dropped_not_rejected() {
        let mut span = valid_otlp_span();
        let mut bad = span.links[0].clone();
        bad.span_id = vec![0; 8];
        span.links.push(bad);
        let got = from_otlp(one_span(span), &Limits::default()).unwrap();
        assert_eq!(got.spans[0].links.len(), 1);
        assert_eq!(got.truncated.invalid_links, 1);
        assert_eq!(got.truncated.spans, 1);
    }

    #[test]
    fn too_many_spans_refuses_the_whole_request() {
        let (data, res) = sample();
        let req = request_of(&[&data, &data, &data], &res);
        let limits = Limits {
            max_spans_per_batch: 2,
            ..Limits::default()
        };
        let err = from_otlp(req.clone(), &limits).unwrap_err();
        assert_eq!(err, OtlpError::TooManySpans { count: 3, max: 2 });
        assert_eq!(err.http_status(), 413);
        assert_eq!(
            err.to_string(),
            "request has 3 spans, more than the limit of 2"
        );
        let limits = Limits {
            max_spans_per_batch: 3,
            ..Limits::default()
        };
        assert_eq!(from_otlp(req, &limits).unwrap().spans.len(), 3);
    }

    /// The example of the OTLP specification (examples/trace.json), with an
    /// unknown field, a string-encoded `intValue` and a `bytesValue` added.
    const SPEC_JSON: &str = r#"{
  "resourceSpans": [
    {
      "resource": {
        "attributes": [
          { "key": "service.name", "value": { "stringValue": "my.service" } },
          { "key": "clew.node", "value": { "stringValue": "my.service#1" } },
          { "key": "host.cores", "value": { "intValue": "8" } }
        ]
      },
      "scopeSpans": [
        {
          "scope": {
            "name": "my.library",
            "version": "1.0.0",
            "attributes": [
              { "key": "my.scope.attribute", "value": { "stringValue": "some scope attribute" } }
            ]
          },
          "spans": [
            {
              "traceId": "5B8EFFF798038103D269B633813FC60C",
              "spanId": "EEE19B7EC3C1B174",
              "parentSpanId": "EEE19B7EC3C1B173",
              "name": "I'm a server span",
              "startTimeUnixNano": "1544712660000000000",
              "endTimeUnixNano": "1544712661000000000",
              "kind": 2,
              "someFutureField": { "ignored": true },
              "attributes": [
                { "key": "my.span.attr", "value": { "stringValue": "some value" } },
                { "key": "blob", "value": { "bytesValue": "AQI=" } },
                { "key": "clew.clock.start", "value": { "stringValue": "my.service%231=4" } }
              ],
              "status": { "code": 2, "message": "bad" }
            }
          ]
        }
      ]
    }
  ]
}"#;

    #[test]
    fn decodes_spec_json() {
        let req =
            decode_http(SPEC_JSON.as_bytes(), "application/json", &Limits::default()).unwrap();
        let got = from_otlp(req, &Limits::default()).unwrap();
        assert_eq!(got.rejected, 0);
        let s = &got.spans[0];
        assert_eq!(
            s.trace_id,
            [
                0x5b, 0x8e, 0xff, 0xf7, 0x98, 0x03, 0x81, 0x03, 0xd2, 0x69, 0xb6, 0x33, 0x81, 0x3f,
                0xc6, 0x0c
            ]
        );
        assert_eq!(s.span_id, [0xee, 0xe1, 0x9b, 0x7e, 0xc3, 0xc1, 0xb1, 0x74]);
        assert_eq!(
            s.parent_span_id,
            [0xee, 0xe1, 0x9b, 0x7e, 0xc3, 0xc1, 0xb1, 0x73]
        );
        assert_eq!(s.name, "I'm a server span");
        assert_eq!(s.service, "my.service");
        assert_eq!(s.node, "my.service#1");
        assert_eq!(s.kind, pb::SpanKind::Server as i32);
        assert_eq!(s.start_time_unix_nano, 1_544_712_660_000_000_000);
        assert_eq!(s.end_time_unix_nano, 1_544_712_661_000_000_000);
        assert_eq!(
            s.status,
            Some(pb::Status {
                code: pb::status::Code::Error as i32,
                message: "bad".into()
            })
        );
        let mut clock = VectorClock::new();
        clock.set("my.service#1", 4);
        assert_eq!(s.clock_start, Some(clock.to_proto()));
        assert_eq!(s.resource.len(), 1);
        assert_eq!(
            s.resource[0].value.as_ref().unwrap().value,
            Some(pb::any_value::Value::IntValue(8))
        );
        assert_eq!(
            s.attributes[1].value.as_ref().unwrap().value,
            Some(pb::any_value::Value::BytesValue(vec![1, 2]))
        );
        assert_eq!(s.attributes.len(), 2);
    }

    #[test]
    fn json_numbers_for_int64_are_accepted_too() {
        let doc = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{
            "traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708",
            "name":"n","startTimeUnixNano":5,"endTimeUnixNano":6}]}]}]}"#;
        let req = decode_http(doc.as_bytes(), "application/json", &Limits::default()).unwrap();
        let got = from_otlp(req, &Limits::default()).unwrap();
        assert_eq!(got.spans[0].end_time_unix_nano, 6);
        assert_eq!(got.spans[0].service, UNKNOWN_SERVICE);
    }

    #[test]
    fn malformed_bodies() {
        let limits = Limits::default();
        let err = decode_http(b"\xff\xff\xff", "application/x-protobuf", &limits).unwrap_err();
        assert_eq!(err, OtlpError::Malformed("invalid protobuf".into()));
        assert_eq!(err.http_status(), 400);

        let err =
            decode_http(b"{\n  \"resourceSpans\": [x", "application/json", &limits).unwrap_err();
        assert_eq!(
            err,
            OtlpError::Malformed("invalid JSON at line 2 column 21".into())
        );
        // A well-formed document of the wrong shape (bad hex id) is malformed
        // too, without serde's internal message.
        let doc = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz"}]}]}]}"#;
        match decode_http(doc.as_bytes(), "application/json", &limits) {
            Err(OtlpError::Malformed(m)) => {
                assert!(m.starts_with("invalid JSON at line 1 column "), "{m}");
                assert!(!m.contains("hex"), "{m}");
            }
            other => panic!("{other:?}"),
        }

        let err = decode_http(b"{}", "text/plain; charset=utf-8", &limits).unwrap_err();
        assert_eq!(err, OtlpError::UnsupportedMediaType("text/plain".into()));
        assert_eq!(err.http_status(), 415);
        assert_eq!(
            err.to_string(),
            "unsupported content type \"text/plain\": use application/x-protobuf or application/json"
        );
        let long = "x/".to_string() + &"é".repeat(100);
        match decode_http(b"", &long, &limits) {
            Err(OtlpError::UnsupportedMediaType(echo)) => {
                assert!(echo.len() <= MAX_MEDIA_TYPE_ECHO && long.starts_with(&echo));
            }
            other => panic!("{other:?}"),
        }
    }

    fn nested_array(depth: usize) -> otlp_common::AnyValue {
        let mut v = otlp_common::AnyValue {
            value: Some(otlp_common::any_value::Value::IntValue(1)),
        };
        for _ in 0..depth {
            v = otlp_common::AnyValue {
                value: Some(otlp_common::any_value::Value::ArrayValue(
                    otlp_common::ArrayValue { values: vec![v] },
                )),
            };
        }
        v
    }

    #[test]
    fn deep_nesting_is_bounded_by_the_decoder() {
        let limits = Limits::default();
        for (depth, ok) in [(40, true), (500, false)] {
            let mut span = valid_otlp_span();
            span.attributes.push(otlp_common::KeyValue {
                key: "deep".into(),
                value: Some(nested_array(depth)),
                ..Default::default()
            });
            let body = one_span(span).encode_to_vec();
            match decode_http(&body, CONTENT_TYPE_PROTOBUF, &limits) {
                Ok(req) => {
                    assert!(ok, "depth {depth} should not decode");
                    assert_eq!(from_otlp(req, &limits).unwrap().spans.len(), 1);
                }
                Err(e) => {
                    assert!(!ok, "depth {depth}: {e}");
                    assert_eq!(e, OtlpError::Malformed("invalid protobuf".into()));
                }
            }
        }
        let deep_json = format!(
            "{}{}",
            r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"k","value":"#.to_string()
                + &r#"{"arrayValue":{"values":["#.repeat(200),
            "]}}".repeat(200) + "}]}}]}"
        );
        assert!(matches!(
            decode_http(deep_json.as_bytes(), CONTENT_TYPE_JSON, &limits),
            Err(OtlpError::Malformed(_))
        ));
    }

    #[test]
    fn content_types() {
        for ct in [
            "application/x-protobuf",
            "Application/X-Protobuf",
            "application/protobuf",
        ] {
            assert_eq!(encoding(ct), Ok(Encoding::Protobuf));
        }
        for ct in ["application/json", "application/json; charset=utf-8"] {
            assert_eq!(encoding(ct), Ok(Encoding::Json));
        }
        for ct in ["", "text/json", "application/jsonx", "application/grpc"] {
            assert!(matches!(
                encoding(ct),
                Err(OtlpError::UnsupportedMediaType(_))
            ));
        }
    }

    #[test]
    fn responses_in_the_request_encoding() {
        let empty = ExportTraceServiceResponse::default();
        assert_eq!(encode_http_response(&empty, "application/json"), b"{}");
        assert!(encode_http_response(&empty, "application/x-protobuf").is_empty());

        let converted = Converted {
            rejected: 2,
            rejection_reasons: vec!["a".into(), "b".into()],
            ..Converted::default()
        };
        let resp = partial_success(&converted, &Limits::default());
        let json = encode_http_response(&resp, "application/json");
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["partialSuccess"]["errorMessage"], "a; b");
        // int64 is a decimal string in OTLP/JSON.
        assert_eq!(v["partialSuccess"]["rejectedSpans"], "2");
        let pbuf = encode_http_response(&resp, "application/x-protobuf");
        assert_eq!(ExportTraceServiceResponse::decode(&*pbuf).unwrap(), resp);
    }

    #[test]
    fn empty_request_is_fine() {
        let got = from_otlp(ExportTraceServiceRequest::default(), &Limits::default()).unwrap();
        assert_eq!(got, Converted::default());
        let req = ExportTraceServiceRequest {
            resource_spans: vec![otlp::ResourceSpans {
                resource: Some(otlp_resource::Resource::default()),
                ..Default::default()
            }],
        };
        assert!(from_otlp(req, &Limits::default()).unwrap().spans.is_empty());
    }

    /// A protobuf body converted both ways: decoded whole then
    /// [`from_otlp`], and through [`RawExport`] and [`from_raw`].
    fn both_ways(body: &[u8], limits: &Limits) -> (Result<Converted>, Result<Converted>) {
        let whole =
            decode_http(body, CONTENT_TYPE_PROTOBUF, limits).and_then(|req| from_otlp(req, limits));
        let raw = RawExport::decode_body(prost::bytes::Bytes::copy_from_slice(body))
            .and_then(|req| from_raw(req, limits));
        (whole, raw)
    }

    #[test]
    fn the_raw_path_converts_as_decoding_whole_does() {
        let (data, res) = sample();
        let mut other = data.clone();
        other.context.span_id = SpanId::from_u64(0x77);
        other.name = "x".repeat(2000).into(); // rejected: name too long
        let mut req = request_of(&[&data, &other], &res);
        // A second resource with its own service, and an empty scope.
        let mut second = req.resource_spans[0].clone();
        second.resource = None;
        second.scope_spans.push(otlp::ScopeSpans::default());
        req.resource_spans.push(second);
        for limits in [
            Limits::default(),
            Limits {
                max_attributes: 1,
                max_value_len: 2,
                ..Limits::default()
            },
        ] {
            let (whole, raw) = both_ways(&req.encode_to_vec(), &limits);
            let raw = raw.unwrap();
            assert_eq!(raw.spans.len(), 2);
            assert_eq!(raw.rejected, 2);
            assert_eq!(whole.unwrap(), raw);
        }
        let limits = Limits {
            max_spans_per_batch: 3,
            ..Limits::default()
        };
        let (whole, raw) = both_ways(&req.encode_to_vec(), &limits);
        assert_eq!(raw, Err(OtlpError::TooManySpans { count: 4, max: 3 }));
        assert_eq!(whole, raw);
        // A span that does not decode (its name is not UTF-8) refuses the
        // whole request.
        let bad = RawExportMessage {
            resource_spans: vec![RawResourceSpans {
                scope_spans: vec![RawScopeSpans {
                    spans: vec![
                        prost::bytes::Bytes::from(valid_otlp_span().encode_to_vec()),
                        prost::bytes::Bytes::from_static(&[0x2a, 0x01, 0xff]),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let (whole, raw) = both_ways(&bad.encode_to_vec(), &Limits::default());
        assert_eq!(raw, Err(malformed_protobuf()));
        assert_eq!(whole, raw);
        assert_eq!(
            both_ways(&[], &Limits::default()).1.unwrap(),
            Converted::default()
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let limits = Limits::default();
            if let Ok(req) = decode_http(&body, "application/json", &limits) {
                let _ = from_otlp(req, &limits);
            }
            let (whole, raw) = both_ways(&body, &limits);
            prop_assert_eq!(whole, raw);
        }

        #[test]
        fn arbitrary_json_like_text_never_panics(body in "[\\[\\]{}\",:0-9a-zA-Z ]{0,256}") {
            let limits = Limits::default();
            if let Ok(req) = decode_http(body.as_bytes(), "application/json", &limits) {
                let _ = from_otlp(req, &limits);
            }
        }

        #[test]
        fn mutated_valid_protobuf_never_panics(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let (data, res) = sample();
            let mut body = request_of(&[&data], &res).encode_to_vec();
            for (i, b) in flips {
                let i = i.index(body.len());
                body[i] = b;
            }
            let limits = Limits { max_attributes: 2, max_value_len: 3, ..Limits::default() };
            let (whole, raw) = both_ways(&body, &limits);
            prop_assert_eq!(whole, raw);
        }
    }
}
