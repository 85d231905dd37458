#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The cold tier under a crash: a collector (embedded hot storage, cold
//! blocks in a directory) is `kill -9`ed as soon as its mover has written
//! the first of many blocks, then started again on the same directories.
//! Afterwards every trace is stored exactly once — found by id with all
//! its spans and no duplicates, listed once by search — and nothing is left
//! due in hot storage.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use clew_e2e::chaos::WorkDir;
use clew_e2e::http::HttpClient;
use clew_e2e::jaeger::metric;
use clew_e2e::proc::{Proc, free_port, wait_for};
use clew_proto::v1 as pb;

const TRACES: u32 = 1_500;
const SPANS: u8 = 3;
const SEC: u64 = 1_000_000_000;

fn s(v: &str) -> String {
    v.to_string()
}

struct Ports {
    grpc: u16,
    query: u16,
    ops: u16,
}

fn collector(dir: &Path, p: &Ports, log: &str) -> Proc {
    let env = [
        ("CLEW_GRPC_ADDR", format!("127.0.0.1:{}", p.grpc)),
        ("CLEW_HTTP_ADDR", format!("127.0.0.1:{}", free_port())),
        ("CLEW_QUERY_ADDR", format!("127.0.0.1:{}", p.query)),
        ("CLEW_OPS_ADDR", format!("127.0.0.1:{}", p.ops)),
        ("CLEW_STORAGE", s("embedded")),
        ("CLEW_DATA_DIR", dir.join("data").display().to_string()),
        ("CLEW_IDLE_WINDOW", s("200ms")),
        (
            "CLEW_COLD_URL",
            format!("file://{}", dir.join("cold").display()),
        ),
        ("CLEW_HOT_RETENTION", s("1s")),
        ("CLEW_COLD_INTERVAL", s("200ms")),
        ("CLEW_COLD_BLOCK_TRACES", s("25")),
        ("CLEW_COLD_COMPACT_BELOW_BYTES", s("0")),
    ];
    let env: Vec<(String, String)> = env.into_iter().map(|(k, v)| (s(k), v)).collect();
    Proc::spawn(
        "collector",
        "clew-collector",
        &[],
        &env,
        Some(&dir.join(log)),
    )
    .unwrap()
}

fn trace_id(t: u32) -> Vec<u8> {
    let mut id = vec![0xc0; 16];
    id[12..].copy_from_slice(&t.to_be_bytes());
    id
}

/// Trace `t`: three spans a minute ago, trace `t` one millisecond after
/// trace `t - 1`.
fn trace_spans(t: u32, base: u64) -> Vec<pb::Span> {
    let start = base + u64::from(t) * 1_000_000;
    (0..SPANS)
        .map(|n| pb::Span {
            trace_id: trace_id(t),
            span_id: vec![n + 1; 8],
            parent_span_id: if n == 0 { Vec::new() } else { vec![n; 8] },
            name: format!("op-{n}"),
            service: format!("cold-svc-{n}"),
            kind: 2,
            start_time_unix_nano: start + u64::from(n),
            end_time_unix_nano: start + 500_000,
            ..pb::Span::default()
        })
        .collect()
}

async fn send_all(grpc: u16, base: u64) {
    let mut client =
        pb::collector_client::CollectorClient::connect(format!("http://127.0.0.1:{grpc}"))
            .await
            .unwrap();
    for chunk in (0..TRACES).collect::<Vec<_>>().chunks(100) {
        let spans = chunk.iter().flat_map(|t| trace_spans(*t, base)).collect();
        let out = client
            .export(pb::ExportRequest { spans })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(out.accepted, chunk.len() as u64 * u64::from(SPANS));
    }
}

fn blocks_listed(cold: &Path) -> usize {
    std::fs::read_dir(cold.join("blocks"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("meta.json").exists())
        .count()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Every trace by id: all its spans, each once.
async fn check_by_id(http: &HttpClient, query: u16) {
    for t in 0..TRACES {
        let url = format!("http://127.0.0.1:{query}/api/traces/{}", hex(&trace_id(t)));
        let body = http.get(&url).await.unwrap().json().unwrap();
        let spans = body["data"][0]["spans"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut ids: Vec<&str> = spans.iter().filter_map(|s| s["spanID"].as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(
            (spans.len(), ids.len()),
            (usize::from(SPANS), usize::from(SPANS)),
            "trace {t}"
        );
    }
}

/// Search, window by window: every trace listed exactly once.
async fn check_search(http: &HttpClient, query: u16, base: u64) {
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    let per_window = 500u64;
    for w in 0..u64::from(TRACES).div_ceil(per_window) {
        let start = (base + w * per_window * 1_000_000) / 1_000;
        let end = (base + (w + 1) * per_window * 1_000_000) / 1_000 - 1;
        let url = format!(
            "http://127.0.0.1:{query}/api/traces?service=cold-svc-0&start={start}&end={end}&limit=1000"
        );
        let body = http.get(&url).await.unwrap().json().unwrap();
        for t in body["data"].as_array().cloned().unwrap_or_default() {
            *seen
                .entry(t["traceID"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    assert_eq!(seen.len(), TRACES as usize, "traces listed");
    assert!(seen.values().all(|n| *n == 1), "a trace listed twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_the_middle_of_a_move_loses_nothing_and_shows_nothing_twice() {
    let dir = WorkDir::new("clew-cold-", "kill9").unwrap();
    let http = HttpClient::new(Duration::from_secs(10));
    let p = Ports {
        grpc: free_port(),
        query: free_port(),
        ops: free_port(),
    };
    let ops = format!("http://127.0.0.1:{}", p.ops);
    let ready = format!("{ops}/readyz");
    let mut c = collector(&dir.0, &p, "collector-1.log");
    wait_for("collector ready", Duration::from_secs(30), || {
        http.ok(&ready)
    })
    .await
    .unwrap();
    let base = clew_model_now() - 60 * SEC;
    send_all(p.grpc, base).await;
    // The mover writes blocks of 25 traces, 60 in all: kill it at the first.
    let cold = dir.0.join("cold");
    wait_for("the first cold block", Duration::from_secs(60), || async {
        blocks_listed(&cold) > 0
    })
    .await
    .unwrap();
    c.kill9().await.unwrap();
    let at_kill = blocks_listed(&cold);
    assert!(
        at_kill < 60,
        "the mover finished before the kill ({at_kill} blocks)"
    );

    let mut c = collector(&dir.0, &p, "collector-2.log");
    wait_for("collector ready again", Duration::from_secs(30), || {
        http.ok(&ready)
    })
    .await
    .unwrap();
    // The restarted mover writes the rest, then finds nothing due.
    wait_for("the move to finish", Duration::from_secs(120), || async {
        let written = metric(&http, &ops, "clew_cold_blocks_written_total")
            .await
            .unwrap_or(0.0);
        let lag = metric(&http, &ops, "clew_cold_mover_lag_seconds")
            .await
            .unwrap_or(1.0);
        written >= 1.0 && lag == 0.0
    })
    .await
    .unwrap();
    check_by_id(&http, p.query).await;
    check_search(&http, p.query, base).await;
    assert!(blocks_listed(&cold) > at_kill);
    c.stop(Duration::from_secs(10)).await.unwrap();
}

fn clew_model_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}
