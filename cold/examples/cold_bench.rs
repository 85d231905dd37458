//! The cold tier's benchmark (docs/PERFORMANCE.md): `spans` spans of
//! 10-span traces over 24 hours, 90 % of them written to cold blocks in a
//! local directory the way the mover writes them (blocks of 20,000 traces,
//! then compacted) and 10 % stored hot in a real redis-server; then, through
//! the tiered store the query API uses, trace-by-id from cold (p50/p99) and
//! searches over the 24 hours (p50/p99), and bytes per span cold against
//! bytes per span in Redis (`used_memory`).
//!
//! ```sh
//! cargo run --release -p clew-cold --example cold_bench -- 10000000
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use clew_cold::block::{self, BlockOptions};
use clew_cold::maintain::MaintainOptions;
use clew_cold::read::ColdStore;
use clew_cold::tiered::Tiered;
use clew_proto::v1::{AnyValue, FilterCriteria, KeyValue, Span, Status, Trace, any_value};
use clew_storage::redis::{RedisConfig, RedisStorage};
use clew_storage::testing::RedisServer;
use clew_storage::{Storage, TraceId};
use object_store::local::LocalFileSystem;
use object_store::path::Path;

const SPANS_PER_TRACE: u64 = 10;
const DAY: u64 = 86_400 * 1_000_000_000;
const SERVICES: [&str; 8] = [
    "frontend", "checkout", "cart", "payment", "users", "search", "ads", "db",
];

fn kv(k: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
    }
}

/// Trace `t` of `traces`, spread over the day before `end`.
fn trace(t: u64, traces: u64, end: u64) -> Trace {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&t.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
    id[8..].copy_from_slice(&t.to_be_bytes());
    let start = end - DAY + t * (DAY / traces);
    let spans = (0..SPANS_PER_TRACE)
        .map(|n| {
            let svc = SERVICES[((t + n) % SERVICES.len() as u64) as usize];
            let dur = 1_000_000 + (t / 3 + n * 13) % 50 * 1_000_000;
            Span {
                trace_id: id.to_vec(),
                span_id: (n + 1 + (t << 8)).to_be_bytes().to_vec(),
                parent_span_id: if n == 0 {
                    Vec::new()
                } else {
                    (n + (t << 8)).to_be_bytes().to_vec()
                },
                name: format!("{svc} op-{}", (t + n) % 5),
                service: svc.into(),
                kind: if n % 2 == 0 { 2 } else { 3 },
                start_time_unix_nano: start + n * 1_000,
                end_time_unix_nano: start + n * 1_000 + dur,
                attributes: vec![
                    kv("http.method", any_value::Value::StringValue("GET".into())),
                    kv(
                        "http.status_code",
                        any_value::Value::IntValue(if t.is_multiple_of(50) { 500 } else { 200 }),
                    ),
                    kv(
                        "customer",
                        any_value::Value::StringValue(format!("c{}", t % 1000)),
                    ),
                ],
                resource: vec![kv(
                    "host.name",
                    any_value::Value::StringValue(format!("{svc}-{}", t % 4)),
                )],
                status: (t.is_multiple_of(50) && n == (t / 50) % SPANS_PER_TRACE).then(|| Status {
                    code: 2,
                    message: "boom".into(),
                }),
                ..Span::default()
            }
        })
        .collect();
    Trace {
        trace_id: id.to_vec(),
        spans,
    }
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

async fn write_cold(
    store: &Arc<dyn object_store::ObjectStore>,
    traces: u64,
    cold: u64,
    end: u64,
) -> Duration {
    let started = Instant::now();
    let per_block = 20_000u64;
    let mut t = 0;
    while t < cold {
        let n = per_block.min(cold - t);
        let spans: Vec<Span> = (t..t + n)
            .flat_map(|i| trace(i, traces, end).spans)
            .collect();
        block::write(
            store,
            &Path::default(),
            spans,
            vec![],
            &BlockOptions::default(),
        )
        .await
        .unwrap();
        t += n;
    }
    started.elapsed()
}

async fn used_memory(server: &RedisServer) -> u64 {
    let mut conn = server.raw().await;
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::main]
async fn main() {
    let spans: u64 = std::env::args()
        .nth(1)
        .map_or(10_000_000, |a| a.parse().unwrap());
    let traces = spans / SPANS_PER_TRACE;
    let cold_traces = traces * 9 / 10;
    let end = clew_cold::tiered::now_nanos() - 2 * 3_600_000_000_000;
    let dir =
        std::env::var("CLEW_COLD_BENCH_DIR").unwrap_or_else(|_| "/var/tmp/clew-cold-bench".into());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store: Arc<dyn object_store::ObjectStore> = Arc::new(
        LocalFileSystem::new_with_prefix(&dir)
            .unwrap()
            .with_automatic_cleanup(true),
    );

    let wrote = write_cold(&store, traces, cold_traces, end).await;
    let cold = Arc::new(ColdStore::new(Arc::clone(&store), Path::default()));
    let before = cold.refresh().await.unwrap().len();
    let started = Instant::now();
    let options = MaintainOptions {
        grace: Duration::ZERO,
        ..MaintainOptions::default()
    };
    while cold.compact(&options).await.unwrap().is_some() {}
    cold.sweep(u64::MAX, Duration::ZERO).await.unwrap();
    let compacted = started.elapsed();
    let blocks = cold.refresh().await.unwrap();
    let cold_bytes: u64 = blocks.values().map(|b| b.meta.bytes).sum();
    let cold_spans: u64 = blocks.values().map(|b| b.meta.spans).sum();
    println!(
        "cold: {cold_spans} spans, {before} blocks written in {wrote:.1?}, compacted to {} in {compacted:.1?}; {cold_bytes} bytes, {:.1} bytes/span",
        blocks.len(),
        cold_bytes as f64 / cold_spans as f64
    );

    let server = RedisServer::start(false).await;
    let hot = RedisStorage::connect(RedisConfig {
        url: server.url(),
        ..RedisConfig::default()
    })
    .await
    .unwrap();
    let base = used_memory(&server).await;
    let hot_spans = (traces - cold_traces) * SPANS_PER_TRACE;
    for t in cold_traces..traces {
        hot.store_trace(trace(t, traces, end)).await.unwrap();
    }
    let hot_bytes = used_memory(&server).await - base;
    println!(
        "hot redis: {hot_spans} spans, used_memory +{hot_bytes} bytes, {:.1} bytes/span; cold/hot = {:.3}",
        hot_bytes as f64 / hot_spans as f64,
        (cold_bytes as f64 / cold_spans as f64) / (hot_bytes as f64 / hot_spans as f64)
    );

    let tiered = Tiered::new(Arc::new(hot), Arc::clone(&cold), Duration::from_secs(3600));
    lookups(&tiered, traces, cold_traces, end).await;
    searches(&tiered, end).await;
}

async fn lookups(tiered: &Tiered, traces: u64, cold_traces: u64, end: u64) {
    let mut first = Vec::new();
    let mut warm = Vec::new();
    for i in 0..1_000u64 {
        let t = (i * 7_919 * 104_729) % cold_traces;
        let id = TraceId::from_slice(&trace(t, traces, end).trace_id).unwrap();
        let started = Instant::now();
        let got = tiered.get_trace(id).await.unwrap().unwrap();
        let took = started.elapsed();
        assert_eq!(got.spans.len() as u64, SPANS_PER_TRACE);
        if i < 50 {
            first.push(took)
        } else {
            warm.push(took)
        }
    }
    println!(
        "trace by id from cold: first 50 (caches filling) p50 {:.1?} p99 {:.1?}; next 950 p50 {:.1?} p99 {:.1?}",
        pct(&mut first, 0.5),
        pct(&mut first, 0.99),
        pct(&mut warm, 0.5),
        pct(&mut warm, 0.99)
    );
}

async fn searches(tiered: &Tiered, end: u64) {
    let mut took = Vec::new();
    let day = |f: FilterCriteria| FilterCriteria {
        start_time_min_unix_nano: end - DAY,
        start_time_max_unix_nano: end,
        limit: 20,
        ..f
    };
    for i in 0..60u64 {
        let svc = SERVICES[(i % SERVICES.len() as u64) as usize].to_owned();
        let f = match i % 3 {
            0 => day(FilterCriteria {
                service: svc,
                ..Default::default()
            }),
            1 => day(FilterCriteria {
                service: svc,
                tags: [("customer".to_owned(), format!("c{}", i * 37 % 1000))].into(),
                ..Default::default()
            }),
            _ => day(FilterCriteria {
                service: svc,
                errors_only: true,
                min_duration_nanos: 10_000_000,
                ..Default::default()
            }),
        };
        let started = Instant::now();
        let found = tiered.list_traces(&f).await.unwrap();
        took.push(started.elapsed());
        assert!(!found.is_empty(), "{f:?}");
    }
    println!(
        "search over 24 h (service; service + tag; service + errors + duration; limit 20): p50 {:.1?} p99 {:.1?}",
        pct(&mut took, 0.5),
        pct(&mut took, 0.99)
    );
}
