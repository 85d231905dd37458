//! Shared by the visualizer's tests: known traces in a real collector query
//! API (in process, memory storage) and the visualizer in front of it.

#![allow(dead_code)]

pub mod ui;
pub mod webdriver;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clew_collector::storage::Storage;
use clew_collector::storage::memory::MemoryStorage;
use clew_proto::v1::{self as pb, AnyValue, KeyValue, Span, SpanKind, Trace, any_value, status};
use tokio::net::TcpListener;

pub const MS: u64 = 1_000_000;

/// The checkout trace's critical spans (ids 1..=6) and the concurrent ones
/// that are not on it (7, 8); see [`checkout`].
pub const CRITICAL: [u16; 6] = [1, 2, 3, 4, 5, 6];
pub const NOT_CRITICAL: [u16; 2] = [7, 8];

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

pub fn trace_id(kind: u8, n: u32) -> [u8; 16] {
    let mut id = [kind; 16];
    id[12..].copy_from_slice(&n.to_be_bytes());
    id
}

pub fn span_id(n: u16) -> Vec<u8> {
    let mut v = vec![0xa0, 0, 0, 0, 0, 0, 0, 0];
    v[6..].copy_from_slice(&n.to_be_bytes());
    v
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn s(v: &str) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::StringValue(v.into())),
    })
}

fn clock(entries: &[(&str, u64)]) -> Option<pb::VectorClock> {
    let mut c = clew_tracer::VectorClock::new();
    entries.iter().for_each(|(n, v)| c.set(*n, *v));
    Some(c.to_proto())
}

#[allow(clippy::too_many_arguments)]
fn span(
    t: [u8; 16],
    id: u16,
    parent: Option<u16>,
    service: &str,
    name: &str,
    kind: SpanKind,
    base: u64,
    from_ms: u64,
    to_ms: u64,
) -> Span {
    Span {
        trace_id: t.to_vec(),
        span_id: span_id(id),
        parent_span_id: parent.map(span_id).unwrap_or_default(),
        name: name.into(),
        service: service.into(),
        kind: kind as i32,
        start_time_unix_nano: base + from_ms * MS,
        end_time_unix_nano: base + to_ms * MS,
        ..Default::default()
    }
}

/// The checkouts whose cache lookup takes 30 ms instead of 10-12: a
/// recurring latency spike, one anomaly group of five.
pub const SLOW_LOOKUPS: [u32; 5] = [2, 6, 13, 16, 19];

/// frontend "GET /checkout" 0..100 ms, whose critical path is known:
/// reserve stock (5..30) → inventory reserve (8..28); charge card (35..95)
/// → payments charge (40..90) → db INSERT (50..80). Not critical: an
/// audit log (36..60) concurrent with the charge, and a cache lookup
/// (45..55-57, or 45..75 in [`SLOW_LOOKUPS`]) overlapping the INSERT.
/// `slow` stretches the INSERT by `slow` ms.
pub fn checkout(n: u32, base: u64, slow: u64) -> Trace {
    let t = trace_id(0xc0, n);
    use SpanKind::*;
    let mut spans = vec![
        span(
            t,
            1,
            None,
            "frontend",
            "GET /checkout",
            Server,
            base,
            0,
            100 + slow,
        ),
        span(
            t,
            2,
            Some(1),
            "frontend",
            "reserve stock",
            Client,
            base,
            5,
            30,
        ),
        span(t, 3, Some(2), "inventory", "reserve", Server, base, 8, 28),
        span(
            t,
            4,
            Some(1),
            "frontend",
            "charge card",
            Client,
            base,
            35,
            95 + slow,
        ),
        span(
            t,
            5,
            Some(4),
            "payments",
            "charge",
            Server,
            base,
            40,
            90 + slow,
        ),
        span(
            t,
            6,
            Some(5),
            "db",
            "INSERT payments",
            Client,
            base,
            50,
            80 + slow,
        ),
        span(
            t,
            7,
            Some(1),
            "frontend",
            "audit log",
            Internal,
            base,
            36,
            60,
        ),
        span(
            t,
            8,
            Some(5),
            "db",
            "cache lookup",
            Client,
            base,
            45,
            if SLOW_LOOKUPS.contains(&n) {
                75
            } else {
                55 + u64::from(n % 3)
            },
        ),
    ];
    spans[0].attributes = vec![KeyValue {
        key: "http.method".into(),
        value: s("GET"),
    }];
    spans[4].attributes = vec![KeyValue {
        key: "payment.amount".into(),
        value: s("42.00 EUR"),
    }];
    spans[4].events = vec![pb::Event {
        time_unix_nano: base + 60 * MS,
        name: "card authorized".into(),
        attributes: vec![],
    }];
    spans[4].node = "payments-7".into();
    spans[4].clock_start = clock(&[("frontend-1", 4), ("payments-7", 1)]);
    spans[4].clock_end = clock(&[("frontend-1", 4), ("payments-7", 2)]);
    spans[0].node = "frontend-1".into();
    spans[0].clock_start = clock(&[("frontend-1", 1)]);
    spans[0].clock_end = clock(&[("frontend-1", 9), ("payments-7", 2)]);
    if n % 7 == 3 {
        spans[5].status = Some(pb::Status {
            code: status::Code::Error as i32,
            message: "deadlock".into(),
        });
    }
    Trace {
        trace_id: t.to_vec(),
        spans,
    }
}

/// frontend → backend where backend's clock runs 25 ms behind: its span
/// starts 15 ms before the call that caused it.
pub fn skewed(base: u64) -> Trace {
    let t = trace_id(0x5e, 1);
    let mut root = span(
        t,
        1,
        None,
        "frontend",
        "GET /report",
        SpanKind::Server,
        base,
        30,
        130,
    );
    root.node = "f".into();
    root.clock_start = clock(&[("f", 1)]);
    root.clock_end = clock(&[("b", 2), ("f", 3)]);
    let mut server = span(
        t,
        2,
        Some(1),
        "backend",
        "build report",
        SpanKind::Server,
        base,
        15,
        95,
    );
    server.node = "b".into();
    server.clock_start = clock(&[("b", 1), ("f", 2)]);
    server.clock_end = clock(&[("b", 2), ("f", 2)]);
    Trace {
        trace_id: t.to_vec(),
        spans: vec![root, server],
    }
}

/// A 10,000-span trace: a root, 99 children, 100 grandchildren each.
pub fn big(base: u64) -> Trace {
    let t = trace_id(0xb1, 1);
    let mut spans = Vec::with_capacity(10_000);
    spans.push(span(
        t,
        1,
        None,
        "gateway",
        "GET /bulk",
        SpanKind::Server,
        base,
        0,
        2_000,
    ));
    let mut id = 2u16;
    for c in 0..99u64 {
        let cid = id;
        id += 1;
        let svc = format!("worker-{}", c % 5);
        spans.push(span(
            t,
            cid,
            Some(1),
            &svc,
            &format!("batch {c}"),
            SpanKind::Internal,
            base,
            10 + c * 19,
            10 + c * 19 + 18,
        ));
        for g in 0..100u64 {
            let from = (10 + c * 19) * 1_000 + g * 170;
            let mut sp = span(
                t,
                id,
                Some(cid),
                "store",
                "get",
                SpanKind::Client,
                base,
                0,
                0,
            );
            sp.start_time_unix_nano = base + from * 1_000;
            sp.end_time_unix_nano = base + (from + 160) * 1_000;
            spans.push(sp);
            id += 1;
        }
    }
    Trace {
        trace_id: t.to_vec(),
        spans,
    }
}

/// Number of checkout traces loaded by [`known_storage`].
pub const CHECKOUTS: u32 = 20;

/// Memory storage holding 20 checkout traces over the last 20 minutes (the
/// 10th one 400 ms slower), the skewed trace and the 10,000-span trace,
/// with their roll-ups.
pub async fn known_storage() -> Arc<MemoryStorage> {
    let now = now_ns();
    let mut traces: Vec<Trace> = (0..CHECKOUTS)
        .map(|n| {
            let base = now - u64::from(CHECKOUTS - n) * 60_000 * MS;
            checkout(n, base, if n == 10 { 400 } else { 0 })
        })
        .collect();
    traces.push(skewed(now - 90_000 * MS));
    traces.push(big(now - 120_000 * MS));
    storage_of(traces).await
}

/// Number of checkout traces in [`busy_storage`].
pub const BUSY_CHECKOUTS: u32 = 1_500;

/// Memory storage holding [`BUSY_CHECKOUTS`] checkouts two seconds apart
/// over the last 50 minutes (every 100th one's INSERT 400 ms slower), with
/// their roll-ups: more traces than any query reads at once.
pub async fn busy_storage() -> Arc<MemoryStorage> {
    let now = now_ns();
    let traces = (0..BUSY_CHECKOUTS)
        .map(|n| {
            let base = now - u64::from(BUSY_CHECKOUTS - n) * 2_000 * MS;
            checkout(n, base, if n % 100 == 50 { 400 } else { 0 })
        })
        .collect();
    storage_of(traces).await
}

/// Memory storage holding `traces`, and their roll-ups as a collector
/// counts them at ingest.
pub async fn storage_of(traces: Vec<Trace>) -> Arc<MemoryStorage> {
    let storage = Arc::new(MemoryStorage::new(10_000));
    clew_collector::testing::store_rollups(storage.as_ref(), &traces).await;
    for t in traces {
        storage.store_trace(t).await.unwrap();
    }
    storage
}

/// Serves `router` on a loopback port until the test ends.
pub async fn serve(router: axum::Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    addr
}

/// The collector's query API over `storage`, on loopback.
pub async fn collector(storage: Arc<MemoryStorage>) -> SocketAddr {
    serve(clew_collector::query::router(storage)).await
}

/// The visualizer's state proxying to `collector`.
pub fn state(collector: SocketAddr) -> clew_visualizer::AppState {
    clew_visualizer::AppState::new(&format!("http://{collector}"), Duration::from_secs(10)).unwrap()
}
