//! clew native spans (`clew.v1.Span`) as an OTLP export request: what the
//! sidecar forwards when an application sends it native spans.
//!
//! Spans are grouped into one `ResourceSpans` per (service, node, resource
//! attributes), with
//! `service.name` and [`attrs::NODE`] as resource attributes followed by the
//! span's own resource attributes; the vector clocks become the
//! [`attrs::CLOCK_START`] / [`attrs::CLOCK_END`] span attributes (their
//! `clew-vclock` encoding), exactly as `clew-tracer`'s OTLP exporter sends
//! them, so the collector stores the same span whichever path it took.

use clew_proto::v1 as pb;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1 as common;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1 as otlp;

use crate::attrs;
use crate::clock::VectorClock;

/// The instrumentation scope the converted spans are reported under.
pub const SCOPE_NAME: &str = "clew-native";

/// Native spans converted to OTLP.
#[derive(Debug, Default)]
pub struct Converted {
    /// The valid spans, one resource per (service, node).
    pub request: ExportTraceServiceRequest,
    /// Spans left out as invalid.
    pub rejected: u64,
    /// Why the first of them was invalid (empty when none was).
    pub first_error: String,
}

/// Converts native spans; invalid ones (bad ids) are counted out.
pub fn from_native(spans: &[pb::Span]) -> Converted {
    let mut out = Converted::default();
    let mut groups: Vec<(&pb::Span, otlp::ResourceSpans)> = Vec::new();
    for s in spans {
        if let Err(e) = check(s) {
            out.rejected += 1;
            if out.first_error.is_empty() {
                out.first_error = e.to_string();
            }
            continue;
        }
        let at = groups.iter().position(|(first, _)| {
            first.service == s.service && first.node == s.node && first.resource == s.resource
        });
        let i = at.unwrap_or_else(|| {
            groups.push((s, resource_spans(s)));
            groups.len() - 1
        });
        if let Some(scope) = groups[i].1.scope_spans.first_mut() {
            scope.spans.push(span(s));
        }
    }
    out.request.resource_spans = groups.into_iter().map(|g| g.1).collect();
    out
}

/// Why a native span is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// The trace id is not 16 bytes or is all zero.
    TraceId,
    /// The span id is not 8 bytes or is all zero.
    SpanId,
    /// The parent span id is neither empty nor 8 bytes.
    ParentSpanId,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Invalid::TraceId => "trace_id must be 16 bytes and not all zero",
            Invalid::SpanId => "span_id must be 8 bytes and not all zero",
            Invalid::ParentSpanId => "parent_span_id must be empty or 8 bytes",
        })
    }
}

fn valid_id(b: &[u8], len: usize) -> bool {
    b.len() == len && b.iter().any(|&x| x != 0)
}

/// Checks the ids of a native span.
pub fn check(s: &pb::Span) -> Result<(), Invalid> {
    if !valid_id(&s.trace_id, 16) {
        return Err(Invalid::TraceId);
    }
    if !valid_id(&s.span_id, 8) {
        return Err(Invalid::SpanId);
    }
    if !s.parent_span_id.is_empty() && s.parent_span_id.len() != 8 {
        return Err(Invalid::ParentSpanId);
    }
    Ok(())
}

fn resource_spans(s: &pb::Span) -> otlp::ResourceSpans {
    let mut attributes = vec![
        string_kv(attrs::SERVICE_NAME, s.service.clone()),
        string_kv(attrs::NODE, s.node.clone()),
    ];
    attributes.extend(s.resource.iter().map(kv));
    otlp::ResourceSpans {
        resource: Some(Resource {
            attributes,
            ..Default::default()
        }),
        scope_spans: vec![otlp::ScopeSpans {
            scope: Some(common::InstrumentationScope {
                name: SCOPE_NAME.into(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn span(s: &pb::Span) -> otlp::Span {
    let mut attributes: Vec<common::KeyValue> = s.attributes.iter().map(kv).collect();
    for (key, clock) in [
        (attrs::CLOCK_START, &s.clock_start),
        (attrs::CLOCK_END, &s.clock_end),
    ] {
        let clock = clock
            .as_ref()
            .map(VectorClock::from_proto)
            .unwrap_or_default();
        if !clock.is_empty() {
            attributes.push(string_kv(key, clock.encode()));
        }
    }
    otlp::Span {
        trace_id: s.trace_id.clone(),
        span_id: s.span_id.clone(),
        trace_state: s.trace_state.clone(),
        parent_span_id: s.parent_span_id.clone(),
        // Sampled; the parent is local (W3C flags plus OTLP's "has is
        // remote" bit), as the tracer's OTLP exporter reports its spans.
        flags: 0x101,
        name: s.name.clone(),
        kind: s.kind,
        start_time_unix_nano: s.start_time_unix_nano,
        end_time_unix_nano: s.end_time_unix_nano,
        attributes,
        events: s.events.iter().map(event).collect(),
        links: s.links.iter().filter_map(link).collect(),
        status: Some(status(s.status.as_ref())),
        ..Default::default()
    }
}

fn event(e: &pb::Event) -> otlp::span::Event {
    otlp::span::Event {
        time_unix_nano: e.time_unix_nano,
        name: e.name.clone(),
        attributes: e.attributes.iter().map(kv).collect(),
        dropped_attributes_count: 0,
    }
}

fn link(l: &pb::Link) -> Option<otlp::span::Link> {
    (l.trace_id.len() == 16 && l.span_id.len() == 8).then(|| otlp::span::Link {
        trace_id: l.trace_id.clone(),
        span_id: l.span_id.clone(),
        trace_state: l.trace_state.clone(),
        attributes: l.attributes.iter().map(kv).collect(),
        ..Default::default()
    })
}

fn status(s: Option<&pb::Status>) -> otlp::Status {
    use otlp::status::StatusCode;
    match s {
        Some(st) if st.code == pb::status::Code::Ok as i32 => otlp::Status {
            code: StatusCode::Ok as i32,
            message: String::new(),
        },
        Some(st) if st.code == pb::status::Code::Error as i32 => otlp::Status {
            code: StatusCode::Error as i32,
            message: st.message.clone(),
        },
        _ => otlp::Status::default(),
    }
}

fn string_kv(key: &str, v: String) -> common::KeyValue {
    common::KeyValue {
        key: key.to_string(),
        value: Some(common::AnyValue {
            value: Some(common::any_value::Value::StringValue(v)),
        }),
        ..Default::default()
    }
}

fn kv(kv: &pb::KeyValue) -> common::KeyValue {
    common::KeyValue {
        key: kv.key.clone(),
        value: Some(kv.value.as_ref().map_or_else(empty_string, value)),
        ..Default::default()
    }
}

fn empty_string() -> common::AnyValue {
    common::AnyValue {
        value: Some(common::any_value::Value::StringValue(String::new())),
    }
}

fn value(v: &pb::AnyValue) -> common::AnyValue {
    use common::any_value::Value as O;
    use pb::any_value::Value as N;
    let value = match &v.value {
        Some(N::StringValue(s)) => O::StringValue(s.clone()),
        Some(N::BoolValue(b)) => O::BoolValue(*b),
        Some(N::IntValue(i)) => O::IntValue(*i),
        Some(N::DoubleValue(d)) => O::DoubleValue(*d),
        Some(N::BytesValue(b)) => O::BytesValue(b.clone()),
        Some(N::ArrayValue(a)) => O::ArrayValue(common::ArrayValue {
            values: a.values.iter().map(value).collect(),
        }),
        None => O::StringValue(String::new()),
    };
    common::AnyValue { value: Some(value) }
}

#[cfg(test)]
mod tests;
