//! Jaeger's query-service JSON model (the "UI model") and the conversion from
//! clew's spans, following OpenTelemetry's Jaeger translation where clew's
//! model is richer (span kind, status, trace state, links, resource).

use std::collections::HashMap;

use clew_model::VectorClock;
use clew_proto::v1::{AnyValue, Span, SpanKind, Trace, any_value, status};
use serde::Serialize;

/// Tag carrying the vector clock at the span's start (`clew-vclock` form).
pub const TAG_CLOCK_START: &str = "clew.clock.start";
/// Tag carrying the vector clock at the span's end (`clew-vclock` form).
pub const TAG_CLOCK_END: &str = "clew.clock.end";
/// Process tag carrying the vector-clock node that emitted the span.
pub const TAG_NODE: &str = "clew.node";

/// Jaeger's response envelope: `{"data", "total", "limit", "offset", "errors"}`.
#[derive(Debug, Serialize)]
pub struct Envelope<T> {
    /// The payload (`null` on errors).
    pub data: T,
    /// Number of items in `data` (0 when it is not a list).
    pub total: usize,
    /// Always 0, as in Jaeger.
    pub limit: usize,
    /// Always 0, as in Jaeger.
    pub offset: usize,
    /// `null` on success, one entry on failure.
    pub errors: Option<Vec<ErrorEntry>>,
}

impl<T> Envelope<T> {
    /// A successful envelope counting `total` items.
    pub fn ok(data: T, total: usize) -> Self {
        Envelope {
            data,
            total,
            limit: 0,
            offset: 0,
            errors: None,
        }
    }
}

/// One error of an envelope.
#[derive(Debug, Serialize)]
pub struct ErrorEntry {
    /// The HTTP status code.
    pub code: u16,
    /// A message safe to show a client.
    pub msg: String,
}

/// A Jaeger operation (`/api/operations`).
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Operation {
    /// The operation (span) name.
    pub name: String,
    /// `server`, `client`, `producer`, `consumer`, `internal`, or `""`.
    #[serde(rename = "spanKind")]
    pub span_kind: &'static str,
}

/// A Jaeger dependency link (`/api/dependencies`).
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Dependency {
    /// The calling service.
    pub parent: String,
    /// The called service.
    pub child: String,
    /// Number of calls.
    #[serde(rename = "callCount")]
    pub call_count: u64,
}

/// A trace in Jaeger's UI model.
#[derive(Debug, Serialize)]
pub struct JaegerTrace {
    /// 32 lowercase hex characters.
    #[serde(rename = "traceID")]
    pub trace_id: String,
    /// The spans, in stored order (by start time).
    pub spans: Vec<JaegerSpan>,
    /// Processes by id (`p1`, `p2`, ...), referenced by the spans.
    pub processes: HashMap<String, Process>,
    /// Always `null`.
    pub warnings: Option<Vec<String>>,
}

/// A span in Jaeger's UI model.
#[derive(Debug, Serialize)]
pub struct JaegerSpan {
    /// 32 lowercase hex characters.
    #[serde(rename = "traceID")]
    pub trace_id: String,
    /// 16 lowercase hex characters.
    #[serde(rename = "spanID")]
    pub span_id: String,
    /// The span name.
    #[serde(rename = "operationName")]
    pub operation_name: String,
    /// The parent (`CHILD_OF`) first, then links (`FOLLOWS_FROM`).
    pub references: Vec<Reference>,
    /// Microseconds since the Unix epoch.
    #[serde(rename = "startTime")]
    pub start_time: u64,
    /// Microseconds.
    pub duration: u64,
    /// Span attributes, then the tags derived from kind, status, clocks.
    pub tags: Vec<Tag>,
    /// Span events.
    pub logs: Vec<Log>,
    /// Key into the trace's `processes`.
    #[serde(rename = "processID")]
    pub process_id: String,
    /// Always `null`.
    pub warnings: Option<Vec<String>>,
}

/// A span reference.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Reference {
    /// `CHILD_OF` or `FOLLOWS_FROM`.
    #[serde(rename = "refType")]
    pub ref_type: &'static str,
    /// 32 lowercase hex characters.
    #[serde(rename = "traceID")]
    pub trace_id: String,
    /// 16 lowercase hex characters.
    #[serde(rename = "spanID")]
    pub span_id: String,
}

/// A typed tag.
#[derive(Debug, Serialize, PartialEq)]
pub struct Tag {
    /// The key.
    pub key: String,
    /// `string`, `bool`, `int64`, `float64` or `binary`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The value (base64 for `binary`, as Go encodes `[]byte`).
    pub value: serde_json::Value,
}

impl Tag {
    fn string(key: &str, value: impl Into<String>) -> Self {
        Tag {
            key: key.to_owned(),
            kind: "string",
            value: serde_json::Value::String(value.into()),
        }
    }
}

/// A span event.
#[derive(Debug, Serialize)]
pub struct Log {
    /// Microseconds since the Unix epoch.
    pub timestamp: u64,
    /// `event` (the event name) first, then the event's attributes.
    pub fields: Vec<Tag>,
}

/// The emitting process: service name and resource attributes.
#[derive(Debug, Serialize, PartialEq)]
pub struct Process {
    /// The service.
    #[serde(rename = "serviceName")]
    pub service_name: String,
    /// Resource attributes, then `clew.node`.
    pub tags: Vec<Tag>,
}

/// Jaeger's name of a span kind (`""` for unspecified).
pub fn span_kind_name(kind: SpanKind) -> &'static str {
    match kind {
        SpanKind::Unspecified => "",
        SpanKind::Internal => "internal",
        SpanKind::Server => "server",
        SpanKind::Client => "client",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
    }
}

/// Parses Jaeger's span kind names; `None` for an unknown name. The empty
/// string means any kind (`Some(None)`).
pub fn parse_span_kind(s: &str) -> Option<Option<SpanKind>> {
    Some(Some(match s {
        "" => return Some(None),
        "internal" => SpanKind::Internal,
        "server" => SpanKind::Server,
        "client" => SpanKind::Client,
        "producer" => SpanKind::Producer,
        "consumer" => SpanKind::Consumer,
        "unspecified" => SpanKind::Unspecified,
        _ => return None,
    }))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    clew_model::ids::hex(bytes)
}

/// Parses a Jaeger trace id: 1 to 32 hex digits (either case), left-padded
/// with zeros to 16 bytes.
pub fn parse_trace_id(s: &str) -> Result<[u8; 16], String> {
    if s.is_empty() || s.len() > 32 {
        return Err(format!(
            "trace id must be 1 to 32 hex characters, got {}",
            s.len()
        ));
    }
    let v = u128::from_str_radix(s, 16).map_err(|_| format!("not a hex trace id: {s:?}"))?;
    // from_str_radix accepts a leading '+'.
    if s.starts_with('+') {
        return Err(format!("not a hex trace id: {s:?}"));
    }
    Ok(v.to_be_bytes())
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn array_json(v: &AnyValue) -> serde_json::Value {
    match &v.value {
        None => serde_json::Value::Null,
        Some(any_value::Value::StringValue(s)) => s.clone().into(),
        Some(any_value::Value::BoolValue(b)) => (*b).into(),
        Some(any_value::Value::IntValue(i)) => (*i).into(),
        Some(any_value::Value::DoubleValue(d)) => serde_json::Number::from_f64(*d)
            .map(serde_json::Value::Number)
            .unwrap_or_else(|| d.to_string().into()),
        Some(any_value::Value::BytesValue(b)) => base64(b).into(),
        Some(any_value::Value::ArrayValue(a)) => a.values.iter().map(array_json).collect(),
    }
}

/// A typed Jaeger tag from a clew attribute. Arrays become a JSON string (as
/// OpenTelemetry's Jaeger translation does); non-finite doubles a string.
pub fn tag(key: &str, value: Option<&AnyValue>) -> Tag {
    let Some(v) = value.and_then(|v| v.value.as_ref()) else {
        return Tag::string(key, "");
    };
    let (kind, value) = match v {
        any_value::Value::StringValue(s) => ("string", s.clone().into()),
        any_value::Value::BoolValue(b) => ("bool", (*b).into()),
        any_value::Value::IntValue(i) => ("int64", (*i).into()),
        any_value::Value::DoubleValue(d) => match serde_json::Number::from_f64(*d) {
            Some(n) => ("float64", serde_json::Value::Number(n)),
            None => ("string", d.to_string().into()),
        },
        any_value::Value::BytesValue(b) => ("binary", base64(b).into()),
        any_value::Value::ArrayValue(a) => {
            let items: serde_json::Value = a.values.iter().map(array_json).collect();
            ("string", items.to_string().into())
        }
    };
    Tag {
        key: key.to_owned(),
        kind,
        value,
    }
}

fn span_tags(span: &Span) -> Vec<Tag> {
    let mut tags: Vec<Tag> = span
        .attributes
        .iter()
        .map(|kv| tag(&kv.key, kv.value.as_ref()))
        .collect();
    let kind = SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified);
    if kind != SpanKind::Unspecified {
        tags.push(Tag::string("span.kind", span_kind_name(kind)));
    }
    if let Some(st) = &span.status {
        let code = status::Code::try_from(st.code).unwrap_or(status::Code::Unset);
        match code {
            status::Code::Unset => {}
            status::Code::Ok => tags.push(Tag::string("otel.status_code", "OK")),
            status::Code::Error => {
                tags.push(Tag::string("otel.status_code", "ERROR"));
                tags.push(Tag {
                    key: "error".to_owned(),
                    kind: "bool",
                    value: true.into(),
                });
            }
        }
        if !st.message.is_empty() {
            tags.push(Tag::string("otel.status_description", st.message.clone()));
        }
    }
    if !span.trace_state.is_empty() {
        tags.push(Tag::string("w3c.tracestate", span.trace_state.clone()));
    }
    for (key, clock) in [
        (TAG_CLOCK_START, &span.clock_start),
        (TAG_CLOCK_END, &span.clock_end),
    ] {
        if let Some(c) = clock
            && !c.entries.is_empty()
        {
            tags.push(Tag::string(key, VectorClock::from_proto(c).encode()));
        }
    }
    tags
}

fn process_of(span: &Span) -> Process {
    let mut tags: Vec<Tag> = span
        .resource
        .iter()
        .map(|kv| tag(&kv.key, kv.value.as_ref()))
        .collect();
    if !span.node.is_empty() {
        tags.push(Tag::string(TAG_NODE, span.node.clone()));
    }
    Process {
        service_name: span.service.clone(),
        tags,
    }
}

fn references(span: &Span, trace_hex: &str) -> Vec<Reference> {
    let mut refs = Vec::with_capacity(1 + span.links.len());
    if span.parent_span_id.len() == 8 && span.parent_span_id.iter().any(|b| *b != 0) {
        refs.push(Reference {
            ref_type: "CHILD_OF",
            trace_id: trace_hex.to_owned(),
            span_id: hex(&span.parent_span_id),
        });
    }
    for link in &span.links {
        refs.push(Reference {
            ref_type: "FOLLOWS_FROM",
            trace_id: if link.trace_id.is_empty() {
                trace_hex.to_owned()
            } else {
                hex(&link.trace_id)
            },
            span_id: hex(&link.span_id),
        });
    }
    refs
}

/// Converts a stored trace to Jaeger's model. Processes are deduplicated:
/// spans with the same service, resource and node share one.
pub fn to_jaeger(trace: &Trace) -> JaegerTrace {
    let trace_hex = hex(&trace.trace_id);
    let mut process_ids: Vec<(Process, String)> = Vec::new();
    let mut spans = Vec::with_capacity(trace.spans.len());
    for span in &trace.spans {
        let process = process_of(span);
        let process_id = match process_ids.iter().find(|(p, _)| *p == process) {
            Some((_, id)) => id.clone(),
            None => {
                let id = format!("p{}", process_ids.len() + 1);
                process_ids.push((process, id.clone()));
                id
            }
        };
        let span_trace = if span.trace_id.is_empty() {
            trace_hex.clone()
        } else {
            hex(&span.trace_id)
        };
        spans.push(JaegerSpan {
            references: references(span, &span_trace),
            trace_id: span_trace,
            span_id: hex(&span.span_id),
            operation_name: span.name.clone(),
            start_time: span.start_time_unix_nano / 1_000,
            duration: span
                .end_time_unix_nano
                .saturating_sub(span.start_time_unix_nano)
                / 1_000,
            tags: span_tags(span),
            logs: span
                .events
                .iter()
                .map(|e| {
                    let mut fields = Vec::with_capacity(1 + e.attributes.len());
                    fields.push(Tag::string("event", e.name.clone()));
                    fields.extend(
                        e.attributes
                            .iter()
                            .map(|kv| tag(&kv.key, kv.value.as_ref())),
                    );
                    Log {
                        timestamp: e.time_unix_nano / 1_000,
                        fields,
                    }
                })
                .collect(),
            process_id,
            warnings: None,
        });
    }
    JaegerTrace {
        trace_id: trace_hex,
        spans,
        processes: process_ids.into_iter().map(|(p, id)| (id, p)).collect(),
        warnings: None,
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn base64_matches_go() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
        assert_eq!(base64(&[0xff, 0xfe]), "//4=");
    }

    #[test]
    fn trace_ids_are_left_padded() {
        let mut want = [0u8; 16];
        want[15] = 0xab;
        assert_eq!(parse_trace_id("ab"), Ok(want));
        assert_eq!(parse_trace_id("AB"), Ok(want));
        assert_eq!(parse_trace_id("000000000000000000000000000000ab"), Ok(want));
        assert!(parse_trace_id("").is_err());
        assert!(parse_trace_id("+ab").is_err());
        assert!(parse_trace_id("xyz").is_err());
        assert!(parse_trace_id(&"a".repeat(33)).is_err());
    }
}
