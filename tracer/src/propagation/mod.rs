//! Carrying context across process boundaries: W3C `traceparent`,
//! `tracestate` and `baggage`, plus clew's vector clock (`clew-vclock`).
//!
//! Extraction is strict: an invalid `traceparent` means "start a new trace";
//! an invalid `tracestate`, `baggage` or `clew-vclock` is dropped while the
//! rest is kept. Each rejection is counted ([`invalid_headers_total`]) and
//! never panics.

pub mod baggage;
pub mod w3c;

use crate::clock::{self, VectorClock};
use crate::context::Context;
use crate::ids::SpanContext;
use crate::tracer::Tracer;

pub use baggage::Baggage;
pub use w3c::invalid_headers_total;

/// Header name of the W3C trace parent.
pub const TRACEPARENT: &str = "traceparent";
/// Header name of the W3C trace state.
pub const TRACESTATE: &str = "tracestate";
/// Header name of W3C baggage.
pub const BAGGAGE: &str = "baggage";
/// Header name of clew's vector clock.
pub const VCLOCK: &str = clock::HEADER;

/// Writes headers into a carrier (HTTP headers, gRPC metadata...).
pub trait Injector {
    /// Sets `key` (lowercase) to `value`, replacing any earlier value.
    fn set(&mut self, key: &'static str, value: String);
}

/// Reads headers from a carrier.
pub trait Extractor {
    /// Every value of `key` (lowercase), in order.
    fn get_all(&self, key: &str) -> Vec<&str>;
}

impl Injector for http::HeaderMap {
    fn set(&mut self, key: &'static str, value: String) {
        // Values we produce are always visible ASCII; skip one that is not.
        if let Ok(v) = http::HeaderValue::try_from(value) {
            self.insert(http::HeaderName::from_static(key), v);
        }
    }
}

impl Extractor for http::HeaderMap {
    fn get_all(&self, key: &str) -> Vec<&str> {
        self.get_all(key)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    }
}

impl Injector for tonic::metadata::MetadataMap {
    fn set(&mut self, key: &'static str, value: String) {
        if let Ok(v) = tonic::metadata::MetadataValue::try_from(value) {
            self.insert(tonic::metadata::MetadataKey::from_static(key), v);
        }
    }
}

impl Extractor for tonic::metadata::MetadataMap {
    fn get_all(&self, key: &str) -> Vec<&str> {
        self.get_all(key)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    }
}

impl Injector for std::collections::HashMap<String, String> {
    fn set(&mut self, key: &'static str, value: String) {
        self.insert(key.to_string(), value);
    }
}

impl Extractor for std::collections::HashMap<String, String> {
    fn get_all(&self, key: &str) -> Vec<&str> {
        self.get(key).map(|v| vec![v.as_str()]).unwrap_or_default()
    }
}

/// Injects `cx` for an outgoing request. This is a *send*: the trace's
/// vector clock is incremented on `tracer`'s node before it is attached.
/// A context without a valid span injects nothing.
pub fn inject(tracer: &Tracer, cx: &Context, carrier: &mut dyn Injector) {
    let Some(sc) = cx.span_context().filter(|s| s.is_valid()) else {
        return;
    };
    carrier.set(
        TRACEPARENT,
        w3c::format_traceparent(sc.trace_id, sc.span_id, sc.flags),
    );
    if !sc.trace_state.is_empty() {
        carrier.set(TRACESTATE, sc.trace_state.as_str().to_string());
    }
    if let Some(h) = cx.baggage().and_then(Baggage::to_header) {
        carrier.set(BAGGAGE, h);
    }
    if let Some(cell) = cx.clock() {
        carrier.set(VCLOCK, cell.tick(tracer.node()).encode());
    }
}

/// Extracts the remote parent of an incoming request. Without a valid
/// `traceparent` the result is the empty context (a new trace starts).
pub fn extract(carrier: &dyn Extractor) -> Context {
    let parents = carrier.get_all(TRACEPARENT);
    let parsed = match parents.as_slice() {
        [] => return Context::new(),
        [one] => w3c::parse_traceparent(one).ok(),
        // More than one traceparent is invalid per spec.
        _ => None,
    };
    let Some((trace_id, span_id, flags)) = parsed else {
        w3c::count_invalid();
        return Context::new();
    };
    let states = carrier.get_all(TRACESTATE);
    let trace_state = if states.is_empty() {
        Default::default()
    } else {
        w3c::parse_tracestate(&states).unwrap_or_else(|_| {
            w3c::count_invalid();
            Default::default()
        })
    };
    let span = SpanContext {
        trace_id,
        span_id,
        flags,
        trace_state,
        is_remote: true,
    };
    let clock = extract_clock(carrier);
    let mut cx = Context::with_remote_parent(span, clock);
    let bags = carrier.get_all(BAGGAGE);
    if !bags.is_empty() {
        match Baggage::parse(&bags) {
            Ok(b) => cx = cx.with_baggage(b),
            Err(_) => w3c::count_invalid(),
        }
    }
    cx
}

/// The `clew-vclock` of a carrier, if present and valid (invalid: counted).
pub fn extract_clock(carrier: &dyn Extractor) -> Option<VectorClock> {
    let values = carrier.get_all(VCLOCK);
    if values.is_empty() {
        return None;
    }
    match VectorClock::decode(&values.join(",")) {
        Ok(c) => Some(c),
        Err(_) => {
            w3c::count_invalid();
            None
        }
    }
}

/// Attaches the trace's current clock to a response (a send back to the
/// caller), ticking `tracer`'s node.
pub fn inject_response_clock(tracer: &Tracer, cx: &Context, carrier: &mut dyn Injector) {
    if let Some(cell) = cx.clock() {
        carrier.set(VCLOCK, cell.tick(tracer.node()).encode());
    }
}

/// Merges a response's clock into the trace's clock (a receive).
pub fn receive_response_clock(tracer: &Tracer, cx: &Context, carrier: &dyn Extractor) {
    if let (Some(cell), Some(remote)) = (cx.clock(), extract_clock(carrier)) {
        cell.receive(&remote, tracer.node());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::InMemoryExporter;
    use crate::sampling::Sampler;
    use std::time::Duration;

    fn tracer(name: &str, exp: &InMemoryExporter) -> Tracer {
        Tracer::builder(name)
            .node_id(name)
            .sampler(Sampler::AlwaysOn)
            .exporter(exp.clone())
            .build()
    }

    #[test]
    fn inject_extract_round_trip_keeps_ids_state_baggage_and_clock() {
        let exp = InMemoryExporter::new();
        let a = tracer("a", &exp);
        let mut span = a.start("call");
        let mut bag = Baggage::default();
        bag.insert("user", "42").unwrap();
        let cx = span.context().with_baggage(bag);
        let mut headers = http::HeaderMap::new();
        inject(&a, &cx, &mut headers);
        let got = extract(&headers);
        let sc = got.span_context().unwrap();
        assert_eq!(sc.trace_id, span.trace_id());
        assert_eq!(sc.span_id, span.span_id());
        assert!(sc.is_remote && sc.is_sampled());
        assert_eq!(got.baggage().unwrap().get("user"), Some("42"));
        let clock = got.clock().unwrap().snapshot();
        // span start ticked a=1, the send ticked a=2
        assert_eq!(clock.get("a"), 2);
        span.end();
    }

    #[test]
    fn invalid_traceparent_starts_a_new_trace_and_is_counted() {
        let before = invalid_headers_total();
        let mut h = http::HeaderMap::new();
        h.insert(TRACEPARENT, http::HeaderValue::from_static("00-zz-bad-01"));
        h.insert(VCLOCK, http::HeaderValue::from_static("a=1"));
        let cx = extract(&h);
        assert!(cx.span_context().is_none());
        assert!(cx.clock().is_none());
        assert!(invalid_headers_total() > before);
    }

    #[test]
    fn invalid_clock_is_dropped_but_parent_kept() {
        let mut h = http::HeaderMap::new();
        h.insert(
            TRACEPARENT,
            http::HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        );
        h.insert(VCLOCK, http::HeaderValue::from_static("a=x"));
        let before = invalid_headers_total();
        let cx = extract(&h);
        assert!(cx.span_context().is_some());
        assert!(cx.clock().is_none());
        assert!(invalid_headers_total() > before);
    }

    #[test]
    fn server_span_after_receive_is_causally_after_the_send() {
        let exp = InMemoryExporter::new();
        let a = tracer("a", &exp);
        let b = tracer("b", &exp);
        let mut client = a.span("call").kind(crate::SpanKind::Client).start();
        let mut md = tonic::metadata::MetadataMap::new();
        inject(&a, &client.context(), &mut md);
        let remote = extract(&md);
        let mut server = b
            .span("handle")
            .kind(crate::SpanKind::Server)
            .parent(&remote)
            .start();
        server.end();
        client.end();
        assert!(a.force_flush(Duration::from_secs(5)));
        assert!(b.force_flush(Duration::from_secs(5)));
        let spans = exp.finished_spans();
        let c = spans.iter().find(|s| s.name == "call").unwrap();
        let s = spans.iter().find(|s| s.name == "handle").unwrap();
        assert_eq!(s.parent_span_id, c.context.span_id);
        assert!(c.clock_start.happened_before(&s.clock_start));
        assert!(s.clock_end.get("b") > 0);
    }
}
