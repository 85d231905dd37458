//! Conversions between [`SpanData`] and the wire formats: clew native
//! protobuf (`clew.v1.Span`) and OTLP.

use std::borrow::Cow;

use clew_proto::v1 as pb;
use opentelemetry_proto::tonic::common::v1 as otlp_common;
use opentelemetry_proto::tonic::resource::v1 as otlp_resource;
use opentelemetry_proto::tonic::trace::v1 as otlp;

use super::Resource;
use crate::clock::VectorClock;
use crate::ids::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use crate::span::{Event, KeyValue, Link, SpanData, SpanKind, Status, Value};

/// Span attribute carrying the vector clock at start, in OTLP.
pub const ATTR_CLOCK_START: &str = "clew.clock.start";
/// Span attribute carrying the vector clock at end, in OTLP.
pub const ATTR_CLOCK_END: &str = "clew.clock.end";
/// Resource attribute naming the vector-clock node, in OTLP.
pub const ATTR_NODE: &str = "clew.node";
/// The instrumentation scope name clew reports in OTLP.
pub const SCOPE_NAME: &str = "clew-tracer";

fn value_to_native(v: &Value) -> pb::AnyValue {
    use pb::any_value::Value as V;
    let value = match v {
        Value::String(s) => V::StringValue(s.to_string()),
        Value::Bool(b) => V::BoolValue(*b),
        Value::I64(i) => V::IntValue(*i),
        Value::F64(f) => V::DoubleValue(*f),
        Value::Array(a) => V::ArrayValue(pb::ArrayValue {
            values: a.iter().map(value_to_native).collect(),
        }),
    };
    pb::AnyValue { value: Some(value) }
}

fn value_from_native(v: &pb::AnyValue) -> Value {
    use pb::any_value::Value as V;
    match &v.value {
        Some(V::StringValue(s)) => Value::String(Cow::Owned(s.clone())),
        Some(V::BoolValue(b)) => Value::Bool(*b),
        Some(V::IntValue(i)) => Value::I64(*i),
        Some(V::DoubleValue(d)) => Value::F64(*d),
        Some(V::BytesValue(b)) => Value::String(Cow::Owned(hex_string(b))),
        Some(V::ArrayValue(a)) => Value::Array(a.values.iter().map(value_from_native).collect()),
        None => Value::String(Cow::Borrowed("")),
    }
}

fn hex_string(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn kvs_to_native(kvs: &[KeyValue]) -> Vec<pb::KeyValue> {
    kvs.iter()
        .map(|kv| pb::KeyValue {
            key: kv.key.to_string(),
            value: Some(value_to_native(&kv.value)),
        })
        .collect()
}

fn kvs_from_native(kvs: &[pb::KeyValue]) -> Vec<KeyValue> {
    kvs.iter()
        .map(|kv| KeyValue {
            key: Cow::Owned(kv.key.clone()),
            value: kv
                .value
                .as_ref()
                .map(value_from_native)
                .unwrap_or(Value::String(Cow::Borrowed(""))),
        })
        .collect()
}

/// The native kind enum.
pub fn kind_to_native(k: SpanKind) -> pb::SpanKind {
    match k {
        SpanKind::Internal => pb::SpanKind::Internal,
        SpanKind::Server => pb::SpanKind::Server,
        SpanKind::Client => pb::SpanKind::Client,
        SpanKind::Producer => pb::SpanKind::Producer,
        SpanKind::Consumer => pb::SpanKind::Consumer,
    }
}

fn kind_from_i32(k: i32) -> SpanKind {
    // Native and OTLP share the numbering (0 unspecified .. 5 consumer).
    match k {
        2 => SpanKind::Server,
        3 => SpanKind::Client,
        4 => SpanKind::Producer,
        5 => SpanKind::Consumer,
        _ => SpanKind::Internal,
    }
}

/// A clew native span from finished span data and its resource.
pub fn to_native_span(s: &SpanData, resource: &Resource) -> pb::Span {
    pb::Span {
        trace_id: s.context.trace_id.0.to_vec(),
        span_id: s.context.span_id.0.to_vec(),
        parent_span_id: if s.parent_span_id.is_valid() {
            s.parent_span_id.0.to_vec()
        } else {
            Vec::new()
        },
        name: s.name.to_string(),
        service: resource.service_name.clone(),
        kind: kind_to_native(s.kind) as i32,
        start_time_unix_nano: s.start_time_unix_nano,
        end_time_unix_nano: s.end_time_unix_nano,
        attributes: kvs_to_native(&s.attributes),
        events: s
            .events
            .iter()
            .map(|e| pb::Event {
                time_unix_nano: e.time_unix_nano,
                name: e.name.to_string(),
                attributes: kvs_to_native(&e.attributes),
            })
            .collect(),
        links: s
            .links
            .iter()
            .map(|l| pb::Link {
                trace_id: l.context.trace_id.0.to_vec(),
                span_id: l.context.span_id.0.to_vec(),
                trace_state: l.context.trace_state.as_str().to_string(),
                attributes: kvs_to_native(&l.attributes),
            })
            .collect(),
        status: Some(match &s.status {
            Status::Unset => pb::Status::default(),
            Status::Ok => pb::Status {
                code: pb::status::Code::Ok as i32,
                message: String::new(),
            },
            Status::Error(m) => pb::Status {
                code: pb::status::Code::Error as i32,
                message: m.to_string(),
            },
        }),
        clock_start: Some(s.clock_start.to_proto()),
        clock_end: Some(s.clock_end.to_proto()),
        trace_state: s.context.trace_state.as_str().to_string(),
        resource: kvs_to_native(&resource.attributes),
        node: resource.node_id.clone(),
    }
}

/// Why a wire span could not become [`SpanData`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConvertError {
    /// The trace id is not 16 bytes or is all zero.
    #[error("trace_id must be 16 bytes and not all zero")]
    BadTraceId,
    /// The span id is not 8 bytes or is all zero.
    #[error("span_id must be 8 bytes and not all zero")]
    BadSpanId,
    /// The parent span id is neither empty nor 8 bytes.
    #[error("parent_span_id must be empty or 8 bytes")]
    BadParentSpanId,
}

/// Span data from a native span (the service and node are in the message).
pub fn from_native_span(p: &pb::Span) -> Result<SpanData, ConvertError> {
    let trace_id = TraceId::from_slice(&p.trace_id)
        .filter(TraceId::is_valid)
        .ok_or(ConvertError::BadTraceId)?;
    let span_id = SpanId::from_slice(&p.span_id)
        .filter(SpanId::is_valid)
        .ok_or(ConvertError::BadSpanId)?;
    let parent_span_id = if p.parent_span_id.is_empty() {
        SpanId::INVALID
    } else {
        SpanId::from_slice(&p.parent_span_id).ok_or(ConvertError::BadParentSpanId)?
    };
    let status = match &p.status {
        Some(st) if st.code == pb::status::Code::Ok as i32 => Status::Ok,
        Some(st) if st.code == pb::status::Code::Error as i32 => {
            Status::Error(Cow::Owned(st.message.clone()))
        }
        _ => Status::Unset,
    };
    Ok(SpanData {
        context: SpanContext {
            trace_id,
            span_id,
            flags: TraceFlags::SAMPLED,
            trace_state: trace_state(&p.trace_state),
            is_remote: false,
        },
        parent_span_id,
        name: Cow::Owned(p.name.clone()),
        kind: kind_from_i32(p.kind),
        start_time_unix_nano: p.start_time_unix_nano,
        end_time_unix_nano: p.end_time_unix_nano,
        attributes: kvs_from_native(&p.attributes),
        events: p
            .events
            .iter()
            .map(|e| Event {
                time_unix_nano: e.time_unix_nano,
                name: Cow::Owned(e.name.clone()),
                attributes: kvs_from_native(&e.attributes),
            })
            .collect(),
        links: p
            .links
            .iter()
            .filter_map(|l| {
                Some(Link {
                    context: SpanContext {
                        trace_id: TraceId::from_slice(&l.trace_id)?,
                        span_id: SpanId::from_slice(&l.span_id)?,
                        flags: TraceFlags::SAMPLED,
                        trace_state: trace_state(&l.trace_state),
                        is_remote: true,
                    },
                    attributes: kvs_from_native(&l.attributes),
                })
            })
            .collect(),
        status,
        clock_start: p
            .clock_start
            .as_ref()
            .map(VectorClock::from_proto)
            .unwrap_or_default(),
        clock_end: p
            .clock_end
            .as_ref()
            .map(VectorClock::from_proto)
            .unwrap_or_default(),
        dropped: 0,
        ..Default::default()
    })
}

fn trace_state(s: &str) -> TraceState {
    if s.is_empty() {
        TraceState::EMPTY
    } else {
        TraceState::from_validated(s.into())
    }
}

fn value_to_otlp(v: &Value) -> otlp_common::AnyValue {
    use otlp_common::any_value::Value as V;
    let value = match v {
        Value::String(s) => V::StringValue(s.to_string()),
        Value::Bool(b) => V::BoolValue(*b),
        Value::I64(i) => V::IntValue(*i),
        Value::F64(f) => V::DoubleValue(*f),
        Value::Array(a) => V::ArrayValue(otlp_common::ArrayValue {
            values: a.iter().map(value_to_otlp).collect(),
        }),
    };
    otlp_common::AnyValue { value: Some(value) }
}

fn kv_otlp(key: &str, v: &Value) -> otlp_common::KeyValue {
    otlp_common::KeyValue {
        key: key.to_string(),
        value: Some(value_to_otlp(v)),
        ..Default::default()
    }
}

fn kvs_to_otlp(kvs: &[KeyValue]) -> Vec<otlp_common::KeyValue> {
    kvs.iter().map(|kv| kv_otlp(&kv.key, &kv.value)).collect()
}

/// One OTLP `ResourceSpans` holding `spans`, with the clocks as attributes.
pub fn to_otlp_resource_spans<'a>(
    spans: impl IntoIterator<Item = &'a SpanData>,
    resource: &Resource,
) -> otlp::ResourceSpans {
    let mut res_attrs = vec![kv_otlp(
        "service.name",
        &Value::String(Cow::Owned(resource.service_name.clone())),
    )];
    res_attrs.push(kv_otlp(
        ATTR_NODE,
        &Value::String(Cow::Owned(resource.node_id.clone())),
    ));
    res_attrs.extend(kvs_to_otlp(&resource.attributes));
    otlp::ResourceSpans {
        resource: Some(otlp_resource::Resource {
            attributes: res_attrs,
            ..Default::default()
        }),
        scope_spans: vec![otlp::ScopeSpans {
            scope: Some(otlp_common::InstrumentationScope {
                name: SCOPE_NAME.into(),
                version: env!("CARGO_PKG_VERSION").into(),
                ..Default::default()
            }),
            spans: spans.into_iter().map(to_otlp_span).collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// One OTLP span.
pub fn to_otlp_span(s: &SpanData) -> otlp::Span {
    let mut attributes = kvs_to_otlp(&s.attributes);
    if !s.clock_start.is_empty() {
        attributes.push(kv_otlp(
            ATTR_CLOCK_START,
            &Value::String(Cow::Owned(s.clock_start.encode())),
        ));
    }
    if !s.clock_end.is_empty() {
        attributes.push(kv_otlp(
            ATTR_CLOCK_END,
            &Value::String(Cow::Owned(s.clock_end.encode())),
        ));
    }
    otlp::Span {
        trace_id: s.context.trace_id.0.to_vec(),
        span_id: s.context.span_id.0.to_vec(),
        trace_state: s.context.trace_state.as_str().to_string(),
        parent_span_id: if s.parent_span_id.is_valid() {
            s.parent_span_id.0.to_vec()
        } else {
            Vec::new()
        },
        flags: u32::from(s.context.flags.0) | if s.context.is_remote { 0x300 } else { 0x100 },
        name: s.name.to_string(),
        kind: kind_to_native(s.kind) as i32,
        start_time_unix_nano: s.start_time_unix_nano,
        end_time_unix_nano: s.end_time_unix_nano,
        attributes,
        dropped_attributes_count: s.dropped,
        events: s
            .events
            .iter()
            .map(|e| otlp::span::Event {
                time_unix_nano: e.time_unix_nano,
                name: e.name.to_string(),
                attributes: kvs_to_otlp(&e.attributes),
                dropped_attributes_count: 0,
            })
            .collect(),
        links: s
            .links
            .iter()
            .map(|l| otlp::span::Link {
                trace_id: l.context.trace_id.0.to_vec(),
                span_id: l.context.span_id.0.to_vec(),
                trace_state: l.context.trace_state.as_str().to_string(),
                attributes: kvs_to_otlp(&l.attributes),
                ..Default::default()
            })
            .collect(),
        status: Some(match &s.status {
            Status::Unset => otlp::Status::default(),
            Status::Ok => otlp::Status {
                code: otlp::status::StatusCode::Ok as i32,
                message: String::new(),
            },
            Status::Error(m) => otlp::Status {
                code: otlp::status::StatusCode::Error as i32,
                message: m.to_string(),
            },
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (SpanData, Resource) {
        let mut clock = VectorClock::new();
        clock.set("a#1", 3);
        let mut end = clock.clone();
        end.set("a#1", 4);
        let data = SpanData {
            context: SpanContext {
                trace_id: TraceId::from_u128(0xabc),
                span_id: SpanId::from_u64(0x12),
                flags: TraceFlags::SAMPLED,
                trace_state: TraceState::from_validated("k=v".into()),
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
            links: vec![],
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

    #[test]
    fn native_round_trip() {
        let (data, res) = sample();
        let p = to_native_span(&data, &res);
        assert_eq!(p.service, "a");
        assert_eq!(p.node, "a#1");
        assert_eq!(from_native_span(&p).unwrap(), data);
    }

    #[test]
    fn native_rejects_bad_ids() {
        let (data, res) = sample();
        let mut p = to_native_span(&data, &res);
        p.trace_id = vec![0; 16];
        assert_eq!(from_native_span(&p), Err(ConvertError::BadTraceId));
        let mut p = to_native_span(&data, &res);
        p.span_id = vec![1; 7];
        assert_eq!(from_native_span(&p), Err(ConvertError::BadSpanId));
        let mut p = to_native_span(&data, &res);
        p.parent_span_id = vec![1; 3];
        assert_eq!(from_native_span(&p), Err(ConvertError::BadParentSpanId));
    }

    #[test]
    fn otlp_carries_clock_and_resource() {
        let (data, res) = sample();
        let rs = to_otlp_resource_spans([&data], &res);
        let attrs = &rs.resource.as_ref().unwrap().attributes;
        assert!(attrs.iter().any(|kv| kv.key == "service.name"));
        assert!(attrs.iter().any(|kv| kv.key == ATTR_NODE));
        let span = &rs.scope_spans[0].spans[0];
        assert_eq!(span.parent_span_id, data.parent_span_id.0.to_vec());
        assert_eq!(span.kind, otlp::span::SpanKind::Server as i32);
        let start = span
            .attributes
            .iter()
            .find(|kv| kv.key == ATTR_CLOCK_START)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| match &v.value {
                Some(otlp_common::any_value::Value::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(VectorClock::decode(&start).unwrap(), data.clock_start);
        assert_eq!(
            span.status.as_ref().unwrap().code,
            otlp::status::StatusCode::Error as i32
        );
    }
}
