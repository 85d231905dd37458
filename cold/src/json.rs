//! The JSON of the block's nested columns (attributes, resource, events,
//! links, vector clocks): OpenTelemetry's OTLP/JSON mapping (protobuf's
//! JSON mapping: 64-bit integers as strings, bytes as base64, camelCase
//! names), so any JSON reader gets every value back with its type, and
//! decoding returns exactly what was encoded.

use clew_proto::v1::{AnyValue, ArrayValue, ClockEntry, Event, KeyValue, Link, any_value};
use serde_json::{Map, Value, json};

/// Why a JSON column could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JsonError(pub String);

fn bad(what: impl Into<String>) -> JsonError {
    JsonError(what.into())
}

/// `[{"key": ..., "value": {...}}, ...]`
pub fn key_values(kvs: &[KeyValue]) -> Value {
    Value::Array(kvs.iter().map(key_value).collect())
}

fn key_value(kv: &KeyValue) -> Value {
    let mut m = Map::new();
    m.insert("key".into(), Value::String(kv.key.clone()));
    if let Some(v) = &kv.value {
        m.insert("value".into(), any_value(v));
    }
    Value::Object(m)
}

fn any_value(v: &AnyValue) -> Value {
    use any_value::Value as V;
    match &v.value {
        None => json!({}),
        Some(V::StringValue(s)) => json!({ "stringValue": s }),
        Some(V::BoolValue(b)) => json!({ "boolValue": b }),
        Some(V::IntValue(i)) => json!({ "intValue": i.to_string() }),
        Some(V::DoubleValue(d)) => json!({ "doubleValue": double(*d) }),
        Some(V::BytesValue(b)) => json!({ "bytesValue": base64(b) }),
        Some(V::ArrayValue(a)) => {
            let values: Vec<Value> = a.values.iter().map(any_value).collect();
            json!({ "arrayValue": { "values": values } })
        }
    }
}

/// Finite numbers as numbers; NaN and the infinities as protobuf's JSON
/// strings.
fn double(d: f64) -> Value {
    match serde_json::Number::from_f64(d) {
        Some(n) => Value::Number(n),
        None if d.is_nan() => Value::String("NaN".into()),
        None if d > 0.0 => Value::String("Infinity".into()),
        None => Value::String("-Infinity".into()),
    }
}

/// Events: `[{"timeUnixNano": "...", "name": ..., "attributes": [...]}]`.
pub fn events(events: &[Event]) -> Value {
    Value::Array(
        events
            .iter()
            .map(|e| {
                json!({
                    "timeUnixNano": e.time_unix_nano.to_string(),
                    "name": e.name,
                    "attributes": key_values(&e.attributes),
                })
            })
            .collect(),
    )
}

/// Links: `[{"traceId": hex, "spanId": hex, "traceState": ..., "attributes": [...]}]`.
pub fn links(links: &[Link]) -> Value {
    Value::Array(
        links
            .iter()
            .map(|l| {
                json!({
                    "traceId": hex(&l.trace_id),
                    "spanId": hex(&l.span_id),
                    "traceState": l.trace_state,
                    "attributes": key_values(&l.attributes),
                })
            })
            .collect(),
    )
}

/// A vector clock: `[{"node": ..., "counter": "..."}]`, or `null` when the
/// span has none (absent and empty stay distinct).
pub fn clock(clock: Option<&clew_proto::v1::VectorClock>) -> Value {
    match clock {
        None => Value::Null,
        Some(c) => Value::Array(
            c.entries
                .iter()
                .map(|e| json!({ "node": e.node, "counter": e.counter.to_string() }))
                .collect(),
        ),
    }
}

fn array(v: &Value, what: &str) -> Result<Vec<Value>, JsonError> {
    match v {
        Value::Array(a) => Ok(a.clone()),
        _ => Err(bad(format!("{what}: not a JSON array"))),
    }
}

fn string(v: &Value, key: &str) -> Result<String, JsonError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(bad(format!("{key}: not a string"))),
    }
}

fn u64_string(v: &Value, key: &str) -> Result<u64, JsonError> {
    let s = string(v, key)?;
    s.parse()
        .map_err(|_| bad(format!("{key}: {s:?} is not an unsigned integer")))
}

/// Decodes [`key_values`].
pub fn parse_key_values(v: &Value) -> Result<Vec<KeyValue>, JsonError> {
    array(v, "attributes")?
        .iter()
        .map(|kv| {
            Ok(KeyValue {
                key: string(kv, "key")?,
                value: kv.get("value").map(parse_any_value).transpose()?,
            })
        })
        .collect()
}

fn parse_any_value(v: &Value) -> Result<AnyValue, JsonError> {
    use any_value::Value as V;
    let obj = v.as_object().ok_or_else(|| bad("value: not an object"))?;
    let Some((kind, inner)) = obj.iter().next() else {
        return Ok(AnyValue { value: None });
    };
    let value = match (kind.as_str(), inner) {
        ("stringValue", Value::String(s)) => V::StringValue(s.clone()),
        ("boolValue", Value::Bool(b)) => V::BoolValue(*b),
        ("intValue", Value::String(s)) => V::IntValue(
            s.parse()
                .map_err(|_| bad(format!("intValue {s:?} is not an integer")))?,
        ),
        ("doubleValue", d) => V::DoubleValue(parse_double(d)?),
        ("bytesValue", Value::String(s)) => V::BytesValue(unbase64(s)?),
        ("arrayValue", a) => {
            let values = array(a.get("values").unwrap_or(&Value::Null), "arrayValue")?;
            V::ArrayValue(ArrayValue {
                values: values
                    .iter()
                    .map(parse_any_value)
                    .collect::<Result<_, _>>()?,
            })
        }
        (k, _) => return Err(bad(format!("value: unknown or mistyped {k:?}"))),
    };
    Ok(AnyValue { value: Some(value) })
}

fn parse_double(v: &Value) -> Result<f64, JsonError> {
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| bad("doubleValue: not a number")),
        Value::String(s) if s == "NaN" => Ok(f64::NAN),
        Value::String(s) if s == "Infinity" => Ok(f64::INFINITY),
        Value::String(s) if s == "-Infinity" => Ok(f64::NEG_INFINITY),
        _ => Err(bad("doubleValue: not a number")),
    }
}

/// Decodes [`events`].
pub fn parse_events(v: &Value) -> Result<Vec<Event>, JsonError> {
    array(v, "events")?
        .iter()
        .map(|e| {
            Ok(Event {
                time_unix_nano: u64_string(e, "timeUnixNano")?,
                name: string(e, "name")?,
                attributes: parse_key_values(e.get("attributes").unwrap_or(&Value::Null))?,
            })
        })
        .collect()
}

/// Decodes [`links`].
pub fn parse_links(v: &Value) -> Result<Vec<Link>, JsonError> {
    array(v, "links")?
        .iter()
        .map(|l| {
            Ok(Link {
                trace_id: unhex(&string(l, "traceId")?)?,
                span_id: unhex(&string(l, "spanId")?)?,
                trace_state: string(l, "traceState")?,
                attributes: parse_key_values(l.get("attributes").unwrap_or(&Value::Null))?,
            })
        })
        .collect()
}

/// Decodes [`clock`].
pub fn parse_clock(v: &Value) -> Result<Option<clew_proto::v1::VectorClock>, JsonError> {
    if v.is_null() {
        return Ok(None);
    }
    let entries = array(v, "clock")?
        .iter()
        .map(|e| {
            Ok(ClockEntry {
                node: string(e, "node")?,
                counter: u64_string(e, "counter")?,
            })
        })
        .collect::<Result<_, JsonError>>()?;
    Ok(Some(clew_proto::v1::VectorClock { entries }))
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(s: &str) -> Result<Vec<u8>, JsonError> {
    if !s.len().is_multiple_of(2) {
        return Err(bad(format!("{s:?} is not hex")));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| bad(format!("{s:?} is not hex")))
        })
        .collect()
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unbase64(s: &str) -> Result<Vec<u8>, JsonError> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|_| bad(format!("bytesValue {s:?} is not base64")))
}
