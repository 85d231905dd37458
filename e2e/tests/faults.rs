#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The whole pipeline as separate processes on loopback — redis-server, two
//! collectors sharing it, services A → B → C each with its own sidecar —
//! under load while it suffers, in turn: `kill -9` of a collector, Redis
//! stopped for 10 s, and the collectors unreachable from every sidecar for
//! 30 s. Afterwards every span of every request that was answered is stored
//! exactly once: each trace has exactly the spans its request makes, no
//! duplicates, parent links whole and vector clocks in causal order.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clew_e2e::http::HttpClient;
use clew_e2e::jaeger::{check_causal, wait_for_spans};
use clew_e2e::proc::{Proc, free_port, wait_for};
use clew_e2e::proxy::Proxy;
use std::sync::Mutex;

/// Spans one request makes: a search is A's server span, A → B client and
/// B's server span, three shard lookups (client, server, scan) and the
/// ranking; a process call is A server, A → B, B server, the digest, then
/// store and get in C (client, server, and C's own span each).
const SEARCH_SPANS: usize = 13;
const PROCESS_SPANS: usize = 10;

fn s(v: &str) -> String {
    v.to_string()
}

struct Collector {
    proc: Proc,
    grpc: SocketAddr,
    query: String,
    ops: String,
}

fn start_collector(i: usize, dir: &Path, redis: u16) -> Collector {
    let (grpc, http, query, ops) = (free_port(), free_port(), free_port(), free_port());
    let data = dir.join(format!("collector-{i}"));
    let proc = Proc::spawn(
        &format!("collector-{i}"),
        "clew-collector",
        &[],
        &[
            (s("CLEW_GRPC_ADDR"), format!("127.0.0.1:{grpc}")),
            (s("CLEW_HTTP_ADDR"), format!("127.0.0.1:{http}")),
            (s("CLEW_QUERY_ADDR"), format!("127.0.0.1:{query}")),
            (s("CLEW_OPS_ADDR"), format!("127.0.0.1:{ops}")),
            (s("CLEW_STORAGE"), s("redis")),
            (s("CLEW_REDIS_URL"), format!("redis://127.0.0.1:{redis}")),
            (s("CLEW_DATA_DIR"), data.display().to_string()),
            (s("CLEW_IDLE_WINDOW"), s("1s")),
        ],
        Some(&dir.join(format!("collector-{i}.log"))),
    )
    .unwrap();
    Collector {
        proc,
        grpc: format!("127.0.0.1:{grpc}").parse().unwrap(),
        query: format!("http://127.0.0.1:{query}"),
        ops: format!("http://127.0.0.1:{ops}"),
    }
}

fn redis(dir: &Path, port: u16) -> Proc {
    Proc::spawn_program(
        "redis",
        "redis-server",
        &[
            s("--port"),
            port.to_string(),
            s("--bind"),
            s("127.0.0.1"),
            s("--save"),
            s(""),
            s("--appendonly"),
            s("yes"),
            s("--dir"),
            dir.display().to_string(),
        ],
        &[],
        Some(&dir.join("redis.log")),
    )
    .unwrap()
}

async fn tcp_up(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

/// A sidecar in front of one service: its OTLP gRPC port.
fn start_sidecar(name: &str, dir: &Path, collectors: &[SocketAddr]) -> (Proc, u16, String) {
    let (grpc, http, ops) = (free_port(), free_port(), free_port());
    let list = collectors
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let p = Proc::spawn(
        &format!("sidecar-{name}"),
        "clew-sidecar",
        &[],
        &[
            (s("CLEW_SIDECAR_GRPC_ADDR"), format!("127.0.0.1:{grpc}")),
            (s("CLEW_SIDECAR_HTTP_ADDR"), format!("127.0.0.1:{http}")),
            (s("CLEW_SIDECAR_OPS_ADDR"), format!("127.0.0.1:{ops}")),
            (s("CLEW_SIDECAR_COLLECTORS"), list),
            (
                s("CLEW_SIDECAR_SPILL_DIR"),
                dir.join(format!("spill-{name}")).display().to_string(),
            ),
            (s("CLEW_SIDECAR_REQUEST_TIMEOUT"), s("2s")),
            (s("CLEW_SIDECAR_BREAKER_COOL_DOWN"), s("1s")),
        ],
        Some(&dir.join(format!("sidecar-{name}.log"))),
    )
    .unwrap();
    (p, grpc, format!("http://127.0.0.1:{ops}"))
}

#[derive(Default)]
struct Load {
    answered: Mutex<Vec<(String, usize)>>,
    failed: AtomicU64,
    stop: AtomicBool,
}

async fn drive(load: Arc<Load>, a: String) {
    let http = HttpClient::new(Duration::from_secs(10));
    let mut n = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(40));
    while !load.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        n += 1;
        let (url, spans) = if n.is_multiple_of(3) {
            (format!("{a}/api/v1/process?data=order+{n}"), PROCESS_SPANS)
        } else {
            (format!("{a}/api/v1/search?q=example"), SEARCH_SPANS)
        };
        let http = http.clone();
        let load = load.clone();
        tokio::spawn(async move {
            match http.get(&url).await {
                Ok(r) if r.status == 200 => {
                    let id = r.trace_id.expect("answered requests carry their trace id");
                    load.answered.lock().unwrap().push((id, spans));
                }
                _ => {
                    load.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
}

async fn metric(http: &HttpClient, ops: &str, name: &str) -> f64 {
    let Ok(a) = http.get(&format!("{ops}/metrics")).await else {
        return 0.0;
    };
    a.body
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn workdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("clew-e2e-faults-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_answered_is_lost_or_duplicated_through_collector_redis_and_network_faults() {
    let dir = workdir();
    let http = HttpClient::new(Duration::from_secs(5));

    let redis_port = free_port();
    let mut redis = redis(&dir, redis_port);
    wait_for("redis", Duration::from_secs(20), || tcp_up(redis_port))
        .await
        .unwrap();
    let mut collectors = vec![
        start_collector(1, &dir, redis_port),
        start_collector(2, &dir, redis_port),
    ];
    for c in &collectors {
        let url = format!("{}/readyz", c.ops);
        wait_for("a collector", Duration::from_secs(60), || http.ok(&url))
            .await
            .unwrap();
    }
    // Sidecars reach the collectors through proxies that can cut the network.
    let mut proxies = Vec::new();
    for c in &collectors {
        proxies.push(
            Proxy::start("127.0.0.1:0".parse().unwrap(), c.grpc)
                .await
                .unwrap(),
        );
    }
    let targets: Vec<SocketAddr> = proxies.iter().map(|p| p.addr).collect();

    let (b_port, c_port) = (free_port(), free_port());
    let a_port = free_port();
    let mut sidecars = Vec::new();
    let mut services = Vec::new();
    for (name, extra) in [
        (
            "service-c",
            vec![(s("CLEW_SERVICE_C_ADDR"), format!("127.0.0.1:{c_port}"))],
        ),
        (
            "service-b",
            vec![
                (s("CLEW_SERVICE_B_ADDR"), format!("127.0.0.1:{b_port}")),
                (
                    s("CLEW_SERVICE_C_URL"),
                    format!("http://127.0.0.1:{c_port}"),
                ),
            ],
        ),
        (
            "service-a",
            vec![
                (s("CLEW_SERVICE_A_ADDR"), format!("127.0.0.1:{a_port}")),
                (
                    s("CLEW_SERVICE_B_URL"),
                    format!("http://127.0.0.1:{b_port}"),
                ),
            ],
        ),
    ] {
        let (sc, sc_grpc, sc_ops) = start_sidecar(name, &dir, &targets);
        let url = format!("{sc_ops}/healthz");
        wait_for("a sidecar", Duration::from_secs(30), || http.ok(&url))
            .await
            .unwrap();
        sidecars.push((sc, sc_ops));
        let ops = free_port();
        let mut env = vec![
            (
                s("OTEL_EXPORTER_OTLP_ENDPOINT"),
                format!("http://127.0.0.1:{sc_grpc}"),
            ),
            (s("OTEL_SERVICE_NAME"), name.to_string()),
            (s("CLEW_DEMO_LATENCY"), s("1ms")),
            (s("CLEW_DEMO_JITTER"), s("2ms")),
        ];
        let ops_var = format!("CLEW_SERVICE_{}_OPS_ADDR", &name[8..].to_uppercase());
        env.push((ops_var, format!("127.0.0.1:{ops}")));
        env.extend(extra);
        services.push(
            Proc::spawn(
                name,
                name,
                &[],
                &env,
                Some(&dir.join(format!("{name}.log"))),
            )
            .unwrap(),
        );
        let url = format!("http://127.0.0.1:{ops}/healthz");
        wait_for(name, Duration::from_secs(30), || http.ok(&url))
            .await
            .unwrap();
    }

    let load = Arc::new(Load::default());
    let driver = tokio::spawn(drive(load.clone(), format!("http://127.0.0.1:{a_port}")));
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 1. kill -9 one collector under load; it comes back 3 s later.
    collectors[0].proc.kill9().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    collectors[0].proc.restart().unwrap();
    let url = format!("{}/readyz", collectors[0].ops);
    wait_for("the restarted collector", Duration::from_secs(60), || {
        http.ok(&url)
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 2. Redis stopped for 10 s.
    assert!(redis.stop(Duration::from_secs(20)).await.unwrap());
    tokio::time::sleep(Duration::from_secs(10)).await;
    redis.restart().unwrap();
    wait_for("redis back", Duration::from_secs(20), || tcp_up(redis_port))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 3. The collectors unreachable from every sidecar for 30 s.
    for p in &proxies {
        p.set_blocked(true);
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    let mut spilled = 0.0;
    for (_, ops) in &sidecars {
        spilled += metric(&http, ops, "clew_sidecar_spans_spilled_total").await;
    }
    assert!(
        spilled > 0.0,
        "the outage must have made the sidecars spill"
    );
    for p in &proxies {
        p.set_blocked(false);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    load.stop.store(true, Ordering::Relaxed);
    driver.await.unwrap();
    // Let requests in flight finish.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let answered = load.answered.lock().unwrap().clone();
    let failed = load.failed.load(Ordering::Relaxed);
    eprintln!(
        "{} requests answered, {failed} not, over {:?}; sidecars spilled {spilled} spans",
        answered.len(),
        t0.elapsed()
    );
    assert!(answered.len() > 500, "too little load: {}", answered.len());
    assert_eq!(failed, 0, "tracing faults must never fail the application");

    // Every answered request's trace, complete and exactly once.
    let query = collectors[1].query.clone();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut problems = Vec::new();
    for (id, want) in &answered {
        let left = deadline.saturating_duration_since(Instant::now());
        let spans =
            wait_for_spans(&http, &query, id, *want, left.max(Duration::from_secs(1))).await;
        match spans {
            None => problems.push(format!("{id}: not stored")),
            Some(s) if s.len() != *want => {
                problems.push(format!("{id}: {} spans, want {want}", s.len()))
            }
            Some(s) => {
                if let Err(e) = check_causal(&s) {
                    problems.push(format!("{id}: {e}"));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} traces wrong, first: {:?}",
        problems.len(),
        answered.len(),
        &problems[..problems.len().min(10)]
    );

    for p in services.iter_mut().rev() {
        p.stop(Duration::from_secs(20)).await.unwrap();
    }
    for (p, _) in sidecars.iter_mut() {
        assert!(p.stop(Duration::from_secs(20)).await.unwrap());
    }
    for c in collectors.iter_mut() {
        assert!(c.proc.stop(Duration::from_secs(30)).await.unwrap());
    }
    redis.stop(Duration::from_secs(20)).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
