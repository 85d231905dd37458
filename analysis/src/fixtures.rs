//! Hand-built spans and traces whose analyses are known, for this crate's
//! tests and the query API's route tests (feature `testing`).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use clew_proto::v1::{self as pb, Span, SpanKind, Trace, status};

use crate::*;

pub const T0: u64 = 1_700_000_000_000_000_000;
pub const MS: u64 = 1_000_000;
pub const TRACE: [u8; 16] = [7; 16];

pub fn sid(id: u16) -> Vec<u8> {
    let mut v = vec![0u8; 8];
    v[6..].copy_from_slice(&id.to_be_bytes());
    v
}

pub fn span(
    id: u16,
    parent: Option<u16>,
    service: &str,
    name: &str,
    start_ms: u64,
    end_ms: u64,
) -> Span {
    Span {
        trace_id: TRACE.to_vec(),
        span_id: sid(id),
        parent_span_id: parent.map(sid).unwrap_or_default(),
        name: name.into(),
        service: service.into(),
        kind: SpanKind::Internal as i32,
        start_time_unix_nano: T0 + start_ms * MS,
        end_time_unix_nano: T0 + end_ms * MS,
        ..Default::default()
    }
}

pub fn trace(spans: Vec<Span>) -> Trace {
    Trace {
        trace_id: TRACE.to_vec(),
        spans,
    }
}

pub fn h(id: u16) -> String {
    hex(&sid(id))
}

pub fn clock(entries: &[(&str, u64)]) -> Option<pb::VectorClock> {
    let mut c = clew_model::VectorClock::new();
    entries.iter().for_each(|(n, v)| c.set(*n, *v));
    Some(c.to_proto())
}

pub fn clocked(mut s: Span, node: &str, start: &[(&str, u64)], end: &[(&str, u64)]) -> Span {
    s.node = node.into();
    s.clock_start = clock(start);
    s.clock_end = clock(end);
    s
}

pub fn err(mut s: Span) -> Span {
    s.status = Some(pb::Status {
        code: status::Code::Error as i32,
        message: "boom".into(),
    });
    s
}

/// frontend (node f) calls backend (node b) over the network, with clocks
/// as clew's tracer records them: client start f=1; the send ticks f=2;
/// the server merges and starts at {b=1,f=2}, ends at {b=2,f=2}; the client
/// merges the reply and ends at {b=2,f=3}.
pub fn rpc(backend_shift_ms: i64) -> Trace {
    let at = |ms: i64| (T0 as i64 + (ms + backend_shift_ms) * MS as i64) as u64;
    let mut server = span(2, Some(1), "backend", "query", 0, 0);
    server.start_time_unix_nano = at(10);
    server.end_time_unix_nano = at(90);
    trace(vec![
        clocked(
            span(1, None, "frontend", "GET /", 0, 100),
            "f",
            &[("f", 1)],
            &[("b", 2), ("f", 3)],
        ),
        clocked(server, "b", &[("b", 1), ("f", 2)], &[("b", 2), ("f", 2)]),
    ])
}

pub fn tid(n: u32) -> Vec<u8> {
    let mut v = vec![1u8; 16];
    v[12..].copy_from_slice(&n.to_be_bytes());
    v
}

/// `n` traces a second apart: api "GET" → db "select" (+ cache "get"
/// unless `no_cache`) with durations from `dur(i)`.
pub fn window(
    n: u32,
    dur: impl Fn(u32) -> u64,
    error: impl Fn(u32) -> bool,
    no_cache: impl Fn(u32) -> bool,
) -> Vec<Trace> {
    (0..n)
        .map(|i| {
            let t0 = u64::from(i) * 1_000;
            let mut db = span(2, Some(1), "db", "select", t0 + 1, t0 + 1 + dur(i));
            if error(i) {
                db = err(db);
            }
            let mut spans = vec![span(1, None, "api", "GET", t0, t0 + 2 + dur(i)), db];
            if !no_cache(i) {
                spans.push(span(3, Some(1), "cache", "get", t0, t0 + 1));
            }
            for s in &mut spans {
                s.trace_id = tid(i);
            }
            Trace {
                trace_id: tid(i),
                spans,
            }
        })
        .collect()
}

/// 200 traces; db select takes 10-12 ms, except every tenth trace: 200 ms.
pub fn recurring_spike() -> Vec<Trace> {
    window(
        200,
        |i| {
            if i % 10 == 0 {
                200
            } else {
                10 + u64::from(i % 3)
            }
        },
        |_| false,
        |_| false,
    )
}

/// root 0..100 calls a 10..40 and b 20..90 (concurrent); b calls c 30..50
/// and d 60..80 (sequential).
pub fn fan_out() -> Trace {
    trace(vec![
        span(1, None, "frontend", "GET /", 0, 100),
        span(2, Some(1), "users", "lookup", 10, 40),
        span(3, Some(1), "orders", "list", 20, 90),
        span(4, Some(3), "db", "select", 30, 50),
        span(5, Some(3), "db", "select", 60, 80),
    ])
}
