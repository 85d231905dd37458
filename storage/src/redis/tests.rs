//! Tests against a real `redis-server`, started per test on a free loopback
//! port in a temporary directory and killed on drop.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use ::redis::AsyncCommands as _;

use super::keys::bucket;
use super::search::SHORT_CANDIDATES;
use super::*;
use crate::conformance::{Fixture, span, trace_id};

use crate::testing::RedisServer;

fn config(server: &RedisServer, prefix: &str) -> RedisConfig {
    RedisConfig {
        url: server.url(),
        key_prefix: prefix.into(),
        connect_timeout: Duration::from_millis(500),
        response_timeout: Duration::from_secs(2),
        retries: 1,
        retry_backoff: Duration::from_millis(10),
        ..RedisConfig::default()
    }
}

/// A fresh `redis-server` (no persistence) and a store on it, prefix `clew:`.
async fn started() -> (RedisServer, RedisStorage) {
    let server = RedisServer::start(false).await;
    let store = RedisStorage::connect(config(&server, "clew:"))
        .await
        .unwrap();
    (server, store)
}

async fn fixture() -> Fixture {
    let (server, store) = started().await;
    Fixture::with_guard(Arc::new(store), server)
}

conformance_tests!(fixture);

fn frag(t: TraceId, spans: Vec<Span>) -> Trace {
    Trace {
        trace_id: t.0.to_vec(),
        spans,
    }
}

#[tokio::test]
async fn key_prefix_isolates_deployments() {
    let server = RedisServer::start(false).await;
    let a = RedisStorage::connect(config(&server, "a:")).await.unwrap();
    let b = RedisStorage::connect(config(&server, "b:")).await.unwrap();
    let t = trace_id(1);
    a.store_trace(frag(t, vec![span(t, 1, None, "svc", "op", 0, 1)]))
        .await
        .unwrap();
    assert!(a.get_trace(t).await.unwrap().is_some());
    assert!(b.get_trace(t).await.unwrap().is_none());
    assert!(b.services().await.unwrap().is_empty());
    assert!(
        b.list_traces(&FilterCriteria::default())
            .await
            .unwrap()
            .is_empty()
    );
    let mut conn = server.raw().await;
    let keys: Vec<Vec<u8>> = conn.keys("*").await.unwrap();
    assert!(!keys.is_empty());
    assert!(keys.iter().all(|k| k.starts_with(b"a:")));
}

#[tokio::test]
async fn every_key_expires() {
    let server = RedisServer::start(false).await;
    let mut cfg = config(&server, "clew:");
    cfg.retention = Duration::from_secs(600);
    cfg.max_trace_span = Duration::from_secs(60);
    let store = RedisStorage::connect(cfg).await.unwrap();
    let t = trace_id(1);
    let mut child = span(t, 2, Some(1), "db", "SELECT", 1, 1);
    child.attributes = vec![clew_proto::v1::KeyValue {
        key: "db.system".into(),
        value: Some(clew_proto::v1::AnyValue {
            value: Some(clew_proto::v1::any_value::Value::StringValue("pg".into())),
        }),
    }];
    store.store_trace(frag(t, vec![child])).await.unwrap();
    store
        .store_trace(frag(t, vec![span(t, 1, None, "api", "GET", 0, 5)]))
        .await
        .unwrap();
    let mut conn = server.raw().await;
    let keys: Vec<Vec<u8>> = conn.keys("clew:*").await.unwrap();
    assert!(keys.len() > 10, "{} keys", keys.len());
    for key in keys {
        let ttl: i64 = conn.pttl(&key).await.unwrap();
        assert!(
            ttl > 0 && ttl <= 660_000,
            "{} has ttl {ttl}",
            String::from_utf8_lossy(&key)
        );
    }
}

#[tokio::test]
async fn prune_sweeps_index_entries_of_traces_expired_by_ttl() {
    let (server, store) = started().await;
    let t = trace_id(1);
    store
        .store_trace(frag(
            t,
            vec![
                span(t, 1, None, "api", "GET", 0, 5),
                span(t, 2, Some(1), "db", "SELECT", 1, 1),
            ],
        ))
        .await
        .unwrap();
    // The TTL of the trace's keys ran out before any prune.
    let mut conn = server.raw().await;
    let _: () = conn
        .del(store.keys.of_trace(&t.0).trace(&t.0))
        .await
        .unwrap();
    let stats = store.prune_traces(u64::MAX).await.unwrap();
    assert_eq!(
        stats,
        PruneStats {
            traces: 1,
            spans: 0
        }
    );
    let keys: Vec<String> = conn.keys("clew:*").await.unwrap();
    let left: Vec<&String> = keys.iter().filter(|k| *k != "clew:keys").collect();
    // Every index is scored by time, so the sweep empties them all.
    assert!(left.is_empty(), "{left:?}");
    assert!(
        store
            .list_traces(&FilterCriteria::default())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.dependencies(0, 0).await.unwrap().is_empty());
}

#[tokio::test]
async fn errors_hide_internals_and_are_retryable() {
    let mut server = RedisServer::start(false).await;
    let store = RedisStorage::connect(config(&server, "clew:"))
        .await
        .unwrap();
    server.kill();
    let err = store.get_trace(trace_id(1)).await.unwrap_err();
    assert_eq!(err.to_string(), "storage unavailable");
    assert!(err.is_retryable());
    assert!(
        err.detail().starts_with("redis backend unavailable: "),
        "{}",
        err.detail()
    );
    let t = trace_id(1);
    let err = store
        .store_trace(frag(t, vec![span(t, 1, None, "a", "b", 0, 1)]))
        .await
        .unwrap_err();
    assert!(err.is_retryable());
}

#[tokio::test]
async fn connect_fails_cleanly_without_a_server() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = RedisConfig {
        url: format!("redis://127.0.0.1:{port}"),
        retries: 0,
        connect_timeout: Duration::from_millis(200),
        ..RedisConfig::default()
    };
    let err = RedisStorage::connect(cfg).await.unwrap_err();
    assert_eq!(err.to_string(), "storage unavailable");
}

#[tokio::test]
async fn max_duration_search_walks_by_time_when_many_spans_are_short() {
    let server = RedisServer::start(false).await;
    let store = Arc::new(
        RedisStorage::connect(config(&server, "clew:"))
            .await
            .unwrap(),
    );
    // More traces in the duration buckets up to the maximum's (35 ms: 1 ms
    // and 40 ms spans alike) than a max-duration search fetches by bucket:
    // it must fall back to walking the time index (and agree).
    let n = SHORT_CANDIDATES as u64 + 100;
    let mut tasks = Vec::new();
    for i in 0..n {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let t = TraceId::from_u128(0x1000 + u128::from(i));
            let dur = if i % 2 == 0 { 1 } else { 40 };
            store
                .store_trace(frag(t, vec![span(t, 1, None, "api", "GET", i, dur)]))
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().stored, 1);
    }
    let f = FilterCriteria {
        max_duration_nanos: 35_000_000,
        limit: 5,
        ..Default::default()
    };
    let got: Vec<TraceId> = store
        .list_traces(&f)
        .await
        .unwrap()
        .iter()
        .map(|t| TraceId::from_slice(&t.trace_id).unwrap())
        .collect();
    // The newest traces with a 1 ms span: even i, from the top.
    let want: Vec<TraceId> = (0..5)
        .map(|k| TraceId::from_u128(0x1000 + u128::from(n - 2 - 2 * k)))
        .collect();
    assert_eq!(got, want);
}

/// Stores with the caller's retry loop, as the collector does.
async fn store_until_ok(store: &RedisStorage, trace: Trace) -> (StoreOutcome, usize) {
    for attempt in 0..200 {
        match store.store_trace(trace.clone()).await {
            Ok(out) => return (out, attempt),
            Err(e) => {
                assert!(e.is_retryable(), "{e:?}");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    }
    panic!("store_trace never succeeded");
}

#[tokio::test]
async fn acknowledged_writes_survive_a_redis_restart() {
    let mut server = RedisServer::start(true).await;
    let store = RedisStorage::connect(config(&server, "clew:"))
        .await
        .unwrap();
    let t = trace_id(7);
    let spans: Vec<Span> = (1..=30u8)
        .map(|i| {
            span(
                t,
                i,
                (i > 1).then_some(1),
                if i % 2 == 0 { "api" } else { "db" },
                "op",
                u64::from(i),
                1,
            )
        })
        .collect();
    // Acknowledged before the crash.
    let before = frag(t, spans[..10].to_vec());
    assert_eq!(store.store_trace(before.clone()).await.unwrap().stored, 10);

    // The server dies hard (no chance to save anything beyond the AOF).
    server.kill();
    let during = frag(t, spans[10..20].to_vec());
    let err = store.store_trace(during.clone()).await.unwrap_err();
    assert!(err.is_retryable());

    server.restart().await;
    // The failed call, retried, goes through once the manager reconnects.
    let (out, _) = store_until_ok(&store, during).await;
    assert_eq!(
        out,
        StoreOutcome {
            stored: 10,
            duplicates: 0
        }
    );
    // A retry of an already acknowledged fragment (say, its ack was lost):
    // nothing is stored twice.
    let (out, _) = store_until_ok(&store, before).await;
    assert_eq!(
        out,
        StoreOutcome {
            stored: 0,
            duplicates: 10
        }
    );
    let (out, _) = store_until_ok(&store, frag(t, spans[15..].to_vec())).await;
    assert_eq!(
        out,
        StoreOutcome {
            stored: 10,
            duplicates: 5
        }
    );

    let got = store.get_trace(t).await.unwrap().unwrap();
    assert_eq!(got.spans, spans, "every span exactly once, in start order");

    // And again across a second restart: the AOF holds everything acknowledged.
    server.restart().await;
    let mut got = None;
    for _ in 0..200 {
        match store.get_trace(t).await {
            Ok(g) => {
                got = g;
                break;
            }
            Err(e) => assert!(e.is_retryable(), "{e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let got = got.expect("trace readable after the restart");
    assert_eq!(got.spans, spans);
    let deps = store.dependencies(0, 0).await.unwrap();
    assert_eq!(deps.len(), 1);
    assert_eq!(
        (deps[0].parent.as_str(), deps[0].child.as_str()),
        ("db", "api")
    );
    assert_eq!(deps[0].call_count, 15);
    let found = store
        .list_traces(&FilterCriteria {
            service: "api".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
}

#[test]
fn duration_buckets_are_ordered_quarter_octaves() {
    let mut durations: Vec<u64> = (0..2_000).collect();
    for shift in 2..64 {
        let p = 1u64 << shift;
        durations.extend([
            p - 1,
            p,
            p + p / 4 - 1,
            p + p / 4,
            p + p / 2,
            p + 3 * (p / 4),
        ]);
    }
    durations.push(u64::MAX);
    durations.sort_unstable();
    for pair in durations.windows(2) {
        assert!(bucket(pair[0]) <= bucket(pair[1]), "{pair:?}");
    }
    assert_eq!(bucket(0), 0);
    assert_eq!(bucket(3), 3);
    assert_eq!(bucket(4), 12);
    assert_eq!(bucket(5), 13);
    // 200 µs: bit length 18, then 0b10 → [196,608 ns, 229,376 ns).
    assert_eq!(bucket(196_607), 73);
    assert_eq!(bucket(196_608), 74);
    assert_eq!(bucket(229_375), 74);
    assert_eq!(bucket(229_376), 75);
    assert_eq!(bucket(u64::MAX), 259);
}

#[tokio::test]
async fn duration_facts_of_many_services_are_read_whole() {
    let (_server, store) = started().await;
    let t = trace_id(1);
    // 30 services: the last one's facts lie beyond the first 512 bytes.
    let spans: Vec<Span> = (1..=30u8)
        .map(|i| {
            let parent = (i > 1).then_some(1);
            span(
                t,
                i,
                parent,
                &format!("service-{i:02}"),
                "op",
                0,
                u64::from(i),
            )
        })
        .collect();
    store.store_trace(frag(t, spans)).await.unwrap();
    assert_eq!(count_by_duration(&store, "service-30", 30, 0).await, 1);
    assert_eq!(count_by_duration(&store, "service-30", 31, 0).await, 0);
    assert_eq!(count_by_duration(&store, "service-29", 29, 0).await, 1);
}

#[tokio::test]
async fn traces_of_the_earlier_layout_read_as_expired() {
    let (server, store) = started().await;
    // The earlier layout: a trace hash `t:<tid>` indexed in `i:all`.
    let old = trace_id(1);
    let mut conn = server.raw().await;
    let _: () = conn
        .hset(
            b"clew:t:"
                .iter()
                .chain(&old.0)
                .copied()
                .collect::<Vec<u8>>(),
            &[1u8; 8],
            "x",
        )
        .await
        .unwrap();
    let _: () = conn.zadd("clew:i:all", &old.0[..], 1).await.unwrap();
    let t = trace_id(2);
    store
        .store_trace(frag(t, vec![span(t, 1, None, "api", "GET", 0, 5)]))
        .await
        .unwrap();
    assert!(store.get_trace(old).await.unwrap().is_none());
    let found = store.list_traces(&FilterCriteria::default()).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].trace_id, t.0.to_vec());
    let stats = store.prune_traces(u64::MAX).await.unwrap();
    assert_eq!(stats.traces, 2);
}

/// Traces of `service` (any when empty) with a span within the duration
/// bounds (ms; 0 for none).
async fn count_by_duration(store: &RedisStorage, service: &str, min_ms: u64, max_ms: u64) -> usize {
    let f = FilterCriteria {
        service: service.into(),
        min_duration_nanos: min_ms * 1_000_000,
        max_duration_nanos: max_ms * 1_000_000,
        ..Default::default()
    };
    store.list_traces(&f).await.unwrap().len()
}

#[tokio::test]
async fn duration_facts_merge_across_fragments() {
    let (_server, store) = started().await;
    let t = trace_id(1);
    // A long api span first; a short api span and a long db span later.
    let first = frag(t, vec![span(t, 1, None, "api", "GET", 0, 500)]);
    store.store_trace(first.clone()).await.unwrap();
    let later = frag(
        t,
        vec![
            span(t, 2, Some(1), "api", "GET", 1, 2),
            span(t, 3, Some(1), "db", "SELECT", 2, 900),
        ],
    );
    assert_eq!(store.store_trace(later).await.unwrap().stored, 2);
    assert_eq!(count_by_duration(&store, "api", 0, 3).await, 1);
    assert_eq!(count_by_duration(&store, "api", 400, 0).await, 1);
    assert_eq!(count_by_duration(&store, "api", 600, 0).await, 0);
    assert_eq!(count_by_duration(&store, "api", 3, 400).await, 0);
    assert_eq!(count_by_duration(&store, "db", 0, 3).await, 0);
    assert_eq!(count_by_duration(&store, "db", 800, 0).await, 1);
    assert_eq!(count_by_duration(&store, "", 0, 3).await, 1);
    // A retried fragment changes nothing.
    let out = store.store_trace(first).await.unwrap();
    assert_eq!((out.stored, out.duplicates), (0, 1));
    assert_eq!(count_by_duration(&store, "api", 0, 3).await, 1);
    assert_eq!(store.get_trace(t).await.unwrap().unwrap().spans.len(), 3);
}

/// Throughput and latency on this machine. Not run by default:
/// `CLEW_BENCH_SPANS=1000000 cargo test --release --lib redis_load -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load test; run by hand"]
async fn redis_load() {
    use clew_proto::v1::{AnyValue, KeyValue, any_value::Value as V};
    use std::time::Instant;

    let total: usize = std::env::var("CLEW_BENCH_SPANS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let per_trace = 20usize;
    let server = RedisServer::start(false).await;
    let store = Arc::new(
        RedisStorage::connect(config(&server, "clew:"))
            .await
            .unwrap(),
    );
    let services = ["frontend", "cart", "checkout", "payment"];
    let kv = |k: &str, v: V| KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
    };
    let traces = total / per_trace;
    let make = move |n: usize| {
        let t = TraceId::from_u128(0xabc0_0000_0000_0000_0000_0000_0000_0000 + n as u128);
        let base = T0_BENCH + n as u64 * 1_000_000;
        let spans: Vec<Span> = (0..per_trace)
            .map(|i| {
                let svc = services[i % services.len()];
                let mut s = Span {
                    trace_id: t.0.to_vec(),
                    span_id: ((n * per_trace + i + 1) as u64).to_be_bytes().to_vec(),
                    parent_span_id: if i == 0 {
                        vec![]
                    } else {
                        ((n * per_trace + i) as u64).to_be_bytes().to_vec()
                    },
                    name: format!("{svc}/op{}", i % 5),
                    service: svc.into(),
                    kind: 2,
                    start_time_unix_nano: base + i as u64 * 1_000,
                    end_time_unix_nano: base + i as u64 * 1_000 + 50_000 + (n % 97) as u64 * 1_000,
                    ..Default::default()
                };
                s.attributes = vec![
                    kv("http.method", V::StringValue("GET".into())),
                    kv(
                        "http.status_code",
                        V::IntValue(if n.is_multiple_of(50) { 500 } else { 200 }),
                    ),
                    kv("http.route", V::StringValue(format!("/api/v1/{}", i % 5))),
                    kv("request.id", V::StringValue(format!("req-{n}"))),
                ];
                s.resource = vec![
                    kv("host.name", V::StringValue(format!("node-{}", n % 3))),
                    kv("service.version", V::StringValue("1.2.3".into())),
                ];
                s
            })
            .collect();
        (t, spans)
    };

    let started = Instant::now();
    let workers = 8;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = w;
            while n < traces {
                let (t, spans) = make(n);
                // Two fragments per trace, as a sidecar batch boundary would cut it.
                let (a, b) = spans.split_at(per_trace / 2);
                store
                    .store_trace(Trace {
                        trace_id: t.0.to_vec(),
                        spans: b.to_vec(),
                    })
                    .await
                    .unwrap();
                store
                    .store_trace(Trace {
                        trace_id: t.0.to_vec(),
                        spans: a.to_vec(),
                    })
                    .await
                    .unwrap();
                n += workers;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "stored {total} spans in {secs:.2}s: {:.0} spans/s",
        total as f64 / secs
    );

    let mut conn = server.raw().await;
    let info: String = ::redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await
        .unwrap();
    if let Some(line) = info.lines().find(|l| l.starts_with("used_memory_human")) {
        println!("redis {line}");
    }
    let stats: String = ::redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    for line in stats.lines().filter(|l| l.starts_with("cmdstat_")) {
        println!("redis {line}");
    }
    let pid = server.pid().unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat.split_whitespace().collect();
    println!("redis-server cpu: user {} sys {} (ticks)", f[13], f[14]);
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let f: Vec<&str> = stat.split_whitespace().collect();
    println!("test process cpu: user {} sys {} (ticks)", f[13], f[14]);

    let p99 = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (v[v.len() / 2], v[v.len() * 99 / 100])
    };
    let mut lat = Vec::new();
    for i in 0..500 {
        let n = (i * 7919) % traces;
        let t = TraceId::from_u128(0xabc0_0000_0000_0000_0000_0000_0000_0000 + n as u128);
        let s = Instant::now();
        let got = store.get_trace(t).await.unwrap().unwrap();
        lat.push(s.elapsed().as_secs_f64() * 1e3);
        assert_eq!(got.spans.len(), per_trace);
    }
    let (p50, p99v) = p99(lat);
    println!("get_trace: p50 {p50:.2} ms, p99 {p99v:.2} ms");

    let mid = T0_BENCH + (traces as u64 / 2) * 1_000_000;
    let filters: Vec<(&str, FilterCriteria)> = vec![
        (
            "service",
            FilterCriteria {
                service: "cart".into(),
                ..Default::default()
            },
        ),
        (
            "service+op",
            FilterCriteria {
                service: "cart".into(),
                operation: "cart/op1".into(),
                ..Default::default()
            },
        ),
        (
            "service+window",
            FilterCriteria {
                service: "payment".into(),
                start_time_min_unix_nano: mid - 1_000_000_000,
                start_time_max_unix_nano: mid,
                ..Default::default()
            },
        ),
        (
            "service+tag(rare)",
            FilterCriteria {
                service: "checkout".into(),
                tags: [("http.status_code".to_string(), "500".to_string())].into(),
                ..Default::default()
            },
        ),
        (
            "service+tag(unique)",
            FilterCriteria {
                service: "checkout".into(),
                tags: [("request.id".to_string(), format!("req-{}", traces / 3))].into(),
                ..Default::default()
            },
        ),
        (
            "service+min duration",
            FilterCriteria {
                service: "frontend".into(),
                min_duration_nanos: 140_000,
                ..Default::default()
            },
        ),
        (
            "errors only",
            FilterCriteria {
                service: "checkout".into(),
                errors_only: true,
                limit: 20,
                ..Default::default()
            },
        ),
        (
            "service+max duration (unindexed)",
            FilterCriteria {
                service: "frontend".into(),
                max_duration_nanos: 52_000,
                ..Default::default()
            },
        ),
    ];
    for (name, f) in filters {
        let mut lat = Vec::new();
        let mut n = 0;
        for _ in 0..50 {
            let s = Instant::now();
            n = store.list_traces(&f).await.unwrap().len();
            lat.push(s.elapsed().as_secs_f64() * 1e3);
        }
        let (p50, p99v) = p99(lat);
        println!("search {name}: {n} traces, p50 {p50:.2} ms, p99 {p99v:.2} ms");
    }
    let s = Instant::now();
    let deps = store.dependencies(mid - 60_000_000_000, mid).await.unwrap();
    println!(
        "dependencies (1 min window): {} links in {:.1} ms",
        deps.len(),
        s.elapsed().as_secs_f64() * 1e3
    );
}

const T0_BENCH: u64 = 1_700_000_000_000_000_000;
