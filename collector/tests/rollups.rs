#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Roll-ups across two collectors, on every backend: 50,000 traces over 40
//! minutes, each trace counted by one of two collectors (each with its own
//! WAL and owner, all spans of a trace at one, as the sidecars route them),
//! in records that split traces and put children before their parents; both
//! flush into one storage. What every tier holds, merged over the owners,
//! equals the counts computed straight from the raw spans (requests and
//! errors per (service, operation, kind), calls and errors per edge), the
//! percentiles are within the sketch's 1 % of the exact ones, and the query
//! API answers the same totals.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use clew_analysis::rollup::{Bucket, TIER_WIDTHS_NANOS, align_down};
use clew_collector::rollup::{RollupConfig, Rollups};
use clew_collector::storage::embedded::EmbeddedStorage;
use clew_collector::storage::memory::MemoryStorage;
use clew_collector::storage::redis::{RedisConfig, RedisStorage};
use clew_collector::storage::{Storage, filter};
use clew_collector::testing::RedisServer;
use clew_collector::wal::{Wal, WalConfig};
use clew_proto::v1::{Span, Status, status};
use serde_json::Value;
use tower::ServiceExt as _;

const SEC: u64 = 1_000_000_000;
const TRACES: u64 = 50_000;
/// The traces start over this long before the end.
const SPREAD: u64 = 2_400 * SEC;

/// xorshift64: the fixture is the same on every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, m: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % m
    }
}

/// A trace of three to six spans over six services: a server root, each
/// other span the child of an earlier one, of any kind; every ninth an
/// error; durations from 1 ms to 2 s.
fn trace(n: u64, end: u64, rng: &mut Rng) -> Vec<Span> {
    let mut trace_id = vec![0u8; 16];
    trace_id[..8].copy_from_slice(&(n + 1).to_be_bytes());
    let t0 = end - SPREAD + n * (SPREAD / TRACES);
    let mut spans: Vec<Span> = Vec::new();
    for i in 0..3 + rng.below(4) {
        let parent = match i {
            0 => Vec::new(),
            _ => spans[rng.below(i) as usize].span_id.clone(),
        };
        let start = t0 + rng.below(5_000_000) * 1_000;
        let dur = 1_000_000 * (1 + rng.below(2_000));
        spans.push(Span {
            trace_id: trace_id.clone(),
            span_id: (n * 8 + i + 1).to_be_bytes().to_vec(),
            parent_span_id: parent,
            name: format!("op-{}", rng.below(3)),
            service: format!("svc-{}", rng.below(6)),
            kind: if i == 0 { 2 } else { rng.below(6) as i32 },
            start_time_unix_nano: start,
            end_time_unix_nano: start + dur,
            status: rng.below(9).eq(&0).then(|| Status {
                code: status::Code::Error as i32,
                message: String::new(),
            }),
            ..Span::default()
        });
    }
    spans
}

type Red = BTreeMap<(u64, u64, String, String, i32), (u64, u64)>;
type Edges = BTreeMap<(u64, u64, String, String), (u64, u64)>;

/// Per tier and bucket, straight from the spans.
fn expected(spans: &[Span]) -> (Red, Edges) {
    let by_id: BTreeMap<(&[u8], &[u8]), &Span> = spans
        .iter()
        .map(|s| ((&s.trace_id[..], &s.span_id[..]), s))
        .collect();
    let (mut red, mut edges) = (Red::new(), Edges::new());
    for s in spans {
        let err = u64::from(filter::is_error(s));
        let parent = by_id.get(&(&s.trace_id[..], &s.parent_span_id[..]));
        for w in TIER_WIDTHS_NANOS {
            let b = align_down(s.start_time_unix_nano, w);
            let key = (w, b, s.service.clone(), s.name.clone(), s.kind);
            let e = red.entry(key).or_default();
            e.0 += 1;
            e.1 += err;
            if let Some(p) = parent.filter(|p| p.service != s.service) {
                let key = (w, b, p.service.clone(), s.service.clone());
                let e = edges.entry(key).or_default();
                e.0 += 1;
                e.1 += err;
            }
        }
    }
    (red, edges)
}

/// Every tier's parts in storage, merged per bucket over the owners.
async fn stored(st: &dyn Storage) -> (BTreeMap<(u64, u64), Bucket>, usize) {
    let mut merged: BTreeMap<(u64, u64), Bucket> = BTreeMap::new();
    let mut owners = std::collections::HashSet::new();
    for w in TIER_WIDTHS_NANOS {
        for p in st.rollups(w, 0, u64::MAX).await.unwrap() {
            owners.insert(p.owner.clone());
            let b = Bucket::decode(&p.bytes).unwrap();
            match merged.get_mut(&(w, p.start_unix_nanos)) {
                Some(m) => m.merge(&b).unwrap(),
                None => {
                    merged.insert((w, p.start_unix_nanos), b);
                }
            }
        }
    }
    (merged, owners.len())
}

fn counted(merged: &BTreeMap<(u64, u64), Bucket>) -> (Red, Edges) {
    let (mut red, mut edges) = (Red::new(), Edges::new());
    for (&(w, b), bucket) in merged {
        for (k, s) in bucket.red() {
            let key = (w, b, k.service.into(), k.operation.into(), k.kind);
            red.insert(key, (s.requests(), s.errors()));
        }
        for (k, s) in bucket.edges() {
            let key = (w, b, k.parent.into(), k.child.into());
            edges.insert(key, (s.requests(), s.errors()));
        }
    }
    (red, edges)
}

/// Two collectors count the traces (trace `n` at collector `n % 2`), in
/// records of 40 spans taken from several traces, the spans of each trace
/// reversed (children first); each flushes every 200 records.
async fn count_at_two_collectors(st: &dyn Storage, traces: &[Vec<Span>]) {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let collectors: Vec<Rollups> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let (wal, _) = Wal::open(d.path(), WalConfig::default()).unwrap();
            Rollups::new(wal, i as u64 + 1, RollupConfig::default())
        })
        .collect();
    for (c, r) in collectors.iter().enumerate() {
        let mine: Vec<Span> = traces
            .iter()
            .skip(c)
            .step_by(2)
            .flat_map(|t| t.iter().rev().cloned())
            .collect();
        for (seq, record) in mine.chunks(40).enumerate() {
            r.record(seq as u64, record);
            if seq % 200 == 199 {
                r.flush(st).await.unwrap();
            }
        }
        r.flush(st).await.unwrap();
    }
}

/// The p50 and p99 of every (service, operation, kind) over the whole
/// spread, from the merged 10 s sketches, against the exact ones.
fn percentiles_within_one_percent(spans: &[Span], merged: &BTreeMap<(u64, u64), Bucket>) {
    let w = TIER_WIDTHS_NANOS[0];
    let mut exact: BTreeMap<(String, String, i32), Vec<u64>> = BTreeMap::new();
    for s in spans {
        let key = (s.service.clone(), s.name.clone(), s.kind);
        exact.entry(key).or_default().push(filter::duration(s));
    }
    let mut sketches = BTreeMap::new();
    for ((_, _), b) in merged.range((w, 0)..(w + 1, 0)) {
        for (k, s) in b.red() {
            let key = (k.service.to_owned(), k.operation.to_owned(), k.kind);
            sketches
                .entry(key)
                .or_insert_with(clew_analysis::rollup::Sketch::new)
                .merge(s.latency());
        }
    }
    assert_eq!(sketches.len(), exact.len());
    for (key, mut durs) in exact {
        durs.sort_unstable();
        for q in [0.5, 0.99] {
            let rank = ((q * durs.len() as f64).ceil() as usize).clamp(1, durs.len());
            let want = durs[rank - 1] as f64;
            let got = sketches[&key].quantile(q).unwrap() as f64;
            assert!(
                (got - want).abs() <= want * 0.01 + 1.0,
                "{key:?} q{q}: {got} against {want}"
            );
        }
    }
}

async fn get(app: &axum::Router, uri: &str) -> Value {
    let resp = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    serde_json::from_slice(&body).unwrap()
}

/// The query API's dependencies over the whole spread equal the raw calls.
async fn api_answers_the_same(st: Arc<dyn Storage>, end: u64, edges: &Edges) {
    let hour = TIER_WIDTHS_NANOS[3];
    let mut totals: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for ((w, _, p, c), (n, e)) in edges {
        if *w == hour {
            let t = totals.entry((p.clone(), c.clone())).or_default();
            t.0 += n;
            t.1 += e;
        }
    }
    let app = clew_collector::query::router(st);
    // The last spans start up to 5 s after `end`.
    let uri = format!(
        "/api/clew/dependencies?endTs={}&lookback={}",
        (end + 10 * SEC) / 1_000_000,
        (SPREAD + 20 * SEC) / 1_000_000
    );
    let v = get(&app, &uri).await;
    let mut got = BTreeMap::new();
    for e in v["data"]["edges"].as_array().unwrap() {
        let key = (
            e["parent"].as_str().unwrap().to_owned(),
            e["child"].as_str().unwrap().to_owned(),
        );
        got.insert(
            key,
            (
                e["callCount"].as_u64().unwrap(),
                e["errorCount"].as_u64().unwrap(),
            ),
        );
    }
    assert_eq!(got, totals);
    let jaeger = get(
        &app,
        &uri.replace("/api/clew/dependencies", "/api/dependencies"),
    )
    .await;
    assert_eq!(jaeger["total"].as_u64().unwrap() as usize, totals.len());
}

async fn check(st: Arc<dyn Storage>) {
    let end = clew_model::now_unix_nanos();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let traces: Vec<Vec<Span>> = (0..TRACES).map(|n| trace(n, end, &mut rng)).collect();
    count_at_two_collectors(st.as_ref(), &traces).await;
    let spans: Vec<Span> = traces.into_iter().flatten().collect();
    let (red, edges) = expected(&spans);
    let (merged, owners) = stored(st.as_ref()).await;
    assert_eq!(owners, 2, "both collectors wrote parts");
    let (got_red, got_edges) = counted(&merged);
    let sizes = (red.len(), edges.len());
    assert!(
        sizes.0 > 10_000 && sizes.1 > 5_000,
        "several buckets: {sizes:?}"
    );
    assert!(got_red == red, "RED differs from the raw spans");
    assert!(got_edges == edges, "edges differ from the raw spans");
    percentiles_within_one_percent(&spans, &merged);
    api_answers_the_same(st, end, &edges).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory() {
    check(Arc::new(MemoryStorage::new(10))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded() {
    let dir = tempfile::tempdir().unwrap();
    check(Arc::new(
        EmbeddedStorage::open(dir.path().join("clew.redb")).unwrap(),
    ))
    .await;
}

fn redis_config(url: String, cluster: bool) -> RedisConfig {
    RedisConfig {
        url,
        cluster,
        key_prefix: "rollups:".into(),
        connect_timeout: Duration::from_millis(500),
        response_timeout: Duration::from_secs(5),
        retries: 2,
        retry_backoff: Duration::from_millis(20),
        ..RedisConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis() {
    let server = RedisServer::start(false).await;
    let st = RedisStorage::connect(redis_config(server.url(), false))
        .await
        .unwrap();
    check(Arc::new(st)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster() {
    let cluster = clew_collector::storage::testing::RedisCluster::shared(3).await;
    let st = RedisStorage::connect(redis_config(cluster.urls().join(","), true))
        .await
        .unwrap();
    check(Arc::new(st)).await;
}
