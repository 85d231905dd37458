//! The real `clew-collector` binary: graceful shutdown stores everything it
//! accepted, and after `kill -9` a restart replays the WAL so every
//! acknowledged span is stored.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clew_collector::storage::Storage;
use clew_collector::storage::embedded::EmbeddedStorage;
use clew_tracer::export::OtlpGrpcExporter;
use clew_tracer::{Sampler, TraceId, Tracer};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Collector {
    child: Child,
    grpc: SocketAddr,
    query: SocketAddr,
    ops: SocketAddr,
}

fn start(data_dir: &Path) -> Collector {
    start_with(data_dir, &["--storage", "embedded", "--idle-window", "1h"])
}

fn start_with(data_dir: &Path, extra: &[&str]) -> Collector {
    let (grpc, http, query, ops) = (free_port(), free_port(), free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_clew-collector"))
        .args(["--grpc-addr", &format!("127.0.0.1:{grpc}")])
        .args(["--http-addr", &format!("127.0.0.1:{http}")])
        .args(["--query-addr", &format!("127.0.0.1:{query}")])
        .args(["--ops-addr", &format!("127.0.0.1:{ops}")])
        .args(extra)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let c = Collector {
        child,
        grpc: format!("127.0.0.1:{grpc}").parse().unwrap(),
        query: format!("127.0.0.1:{query}").parse().unwrap(),
        ops: format!("127.0.0.1:{ops}").parse().unwrap(),
    };
    // Readiness: poll /readyz (bounded), as a kubelet would.
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(c.ops, "/readyz").map(|(s, _)| s) != Some(200) {
        assert!(Instant::now() < deadline, "collector never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    c
}

/// A minimal HTTP/1.1 GET, to keep the test free of an HTTP client crate.
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((status, body))
}

fn terminate(mut c: Collector) {
    let pid = c.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = c.child.wait().unwrap();
    assert!(status.success(), "graceful exit, got {status}");
}

/// Sends `traces` traces of `spans` spans; returns their ids once every
/// export was acknowledged (durable in the collector's WAL).
fn send(grpc: SocketAddr, traces: usize, spans: usize) -> Vec<TraceId> {
    let tracer = Tracer::builder("load")
        .node_id("load")
        .sampler(Sampler::AlwaysOn)
        .exporter(OtlpGrpcExporter::new(&grpc.to_string()).unwrap())
        .build();
    let mut ids = Vec::new();
    for _ in 0..traces {
        let root = tracer.start("root");
        for _ in 1..spans {
            tracer.span("child").parent(&root.context()).start().end();
        }
        ids.push(root.trace_id());
    }
    assert!(tracer.force_flush(Duration::from_secs(30)));
    let stats = tracer.stats();
    assert_eq!(stats.export_failed, 0);
    assert_eq!(stats.dropped, 0);
    assert_eq!(stats.exported, (traces * spans) as u64);
    ids
}

async fn stored(data_dir: &Path, ids: &[TraceId], spans: usize) {
    let db = EmbeddedStorage::open(data_dir.join("traces.redb")).unwrap();
    for id in ids {
        let t = db.get_trace(*id).await.unwrap().expect("trace stored");
        assert_eq!(t.spans.len(), spans, "trace {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_stores_everything_and_metrics_count_it() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path());
    let grpc = c.grpc;
    let ids = tokio::task::spawn_blocking(move || send(grpc, 5, 4))
        .await
        .unwrap();
    let (status, metrics) = http_get(c.ops, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains("clew_spans_total{outcome=\"accepted\"} 20"),
        "{metrics}"
    );
    assert!(metrics.contains("clew_wal_fsyncs_total"));
    assert!(metrics.contains("clew_storage_store_seconds_bucket"));
    assert_eq!(http_get(c.ops, "/healthz").unwrap().0, 200);
    // Nothing is idle yet (1 h window): shutdown must store it all.
    terminate(c);
    stored(dir.path(), &ids, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_then_restart_stores_every_acknowledged_span() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = start(dir.path());
    let grpc = c.grpc;
    let ids = tokio::task::spawn_blocking(move || send(grpc, 40, 10))
        .await
        .unwrap();
    // Acknowledged, still waiting in assembly: now the process dies.
    c.child.kill().unwrap();
    c.child.wait().unwrap();
    let c = start(dir.path());
    // The restart replays the WAL; its graceful stop stores the replayed
    // spans.
    terminate(c);
    stored(dir.path(), &ids, 10).await;
    // And the query API of a running collector serves them.
    let c = start(dir.path());
    let (status, body) = http_get(c.query, &format!("/api/traces/{}", ids[0])).unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"][0]["traceID"], ids[0].to_string());
    assert_eq!(v["data"][0]["spans"].as_array().unwrap().len(), 10);
    let (status, body) = http_get(c.query, "/api/services").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("\"load\""), "{body}");
    assert_eq!(
        http_get(c.query, "/api/traces/00000000000000000000000000000abc")
            .unwrap()
            .0,
        404
    );
    terminate(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_loses_no_acknowledged_span() {
    let mut redis = clew_collector::testing::RedisServer::start(true).await;
    let url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    // Short idle window: traces are stored while Redis comes and goes.
    let c = start_with(
        dir.path(),
        &[
            "--storage",
            "redis",
            "--redis-url",
            &url,
            "--idle-window",
            "50ms",
        ],
    );
    let grpc = c.grpc;
    let mut ids = tokio::task::spawn_blocking(move || send(grpc, 10, 5))
        .await
        .unwrap();
    redis.kill();
    // Ingest keeps acknowledging: spans are durable in the WAL and their
    // stores are retried.
    ids.extend(
        tokio::task::spawn_blocking(move || send(grpc, 10, 5))
            .await
            .unwrap(),
    );
    // Make sure stores really failed during the outage before Redis returns.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, m) = http_get(c.ops, "/metrics").unwrap();
        let failures = m
            .lines()
            .find_map(|l| l.strip_prefix("clew_storage_failures_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if failures > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no store failed while Redis was down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    redis.restart().await;
    ids.extend(
        tokio::task::spawn_blocking(move || send(grpc, 10, 5))
            .await
            .unwrap(),
    );
    terminate(c);

    let db = clew_collector::storage::redis::RedisStorage::connect(
        clew_collector::storage::redis::RedisConfig {
            url,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    for id in &ids {
        let t = db.get_trace(*id).await.unwrap().expect("trace stored");
        assert_eq!(t.spans.len(), 5, "trace {id} stored exactly once");
    }
}

#[test]
fn a_config_file_sets_what_flags_leave_unset_and_a_bad_one_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("collector.yaml");
    // The file picks the memory backend; the flags pick the ports.
    std::fs::write(&file, "storage: memory\nretention: 1h\n").unwrap();
    let c = start_with(dir.path(), &["--config", file.to_str().unwrap()]);
    let (status, metrics) = http_get(c.ops, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("clew_"), "{metrics}");
    terminate(c);
    assert!(
        !dir.path().join("traces.redb").exists(),
        "the memory backend writes no store"
    );

    std::fs::write(&file, "storag: memory\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_clew-collector"))
        .args(["--config", file.to_str().unwrap()])
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown setting \"storag\""), "{err}");
}

/// Polls `/metrics` until it holds every one of `lines` (bounded).
fn wait_for_metrics(ops: SocketAddr, lines: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, metrics) = http_get(ops, "/metrics").unwrap();
        if lines.iter().all(|l| metrics.contains(l)) {
            return metrics;
        }
        assert!(Instant::now() < deadline, "never got {lines:?}:\n{metrics}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_sampling_stores_what_the_policies_keep_and_counts_it_per_policy() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "policies:\n  - {name: big, type: span_count, span_count: {min_spans: 3}}\n",
    )
    .unwrap();
    let c = start_with(
        dir.path(),
        &[
            "--storage",
            "embedded",
            "--idle-window",
            "1h",
            "--sampling-policy",
            policy.to_str().unwrap(),
            "--decision-wait",
            "200ms",
        ],
    );
    let grpc = c.grpc;
    let (big, small) = tokio::task::spawn_blocking(move || (send(grpc, 4, 3), send(grpc, 3, 1)))
        .await
        .unwrap();
    // Decided after the decision wait, long before the 1 h idle window.
    wait_for_metrics(
        c.ops,
        &[
            "clew_sampling_traces_total{decision=\"sampled\",policy=\"big\"} 4",
            "clew_sampling_traces_total{decision=\"not_sampled\",policy=\"(none)\"} 3",
        ],
    );
    terminate(c);
    stored(dir.path(), &big, 3).await;
    let db = EmbeddedStorage::open(dir.path().join("traces.redb")).unwrap();
    for id in &small {
        assert!(db.get_trace(*id).await.unwrap().is_none(), "trace {id}");
    }
}

#[test]
fn a_bad_sampling_policy_file_stops_start_up_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "policies:\n  - name: slow\n    type: latency\n    latency: {threshold_ms: fast}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_clew-collector"))
        .args(["--storage", "memory", "--sampling-policy"])
        .arg(&policy)
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--sampling-policy"), "{err}");
    assert!(err.contains("line 4"), "{err}");
    assert!(err.contains("threshold_ms"), "{err}");
}
