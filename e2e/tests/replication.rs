#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Replication tests (issue #15): three collectors on one Redis with a
//! replication factor of 2, a sidecar in front of them, and a load of
//! 1,000 spans/s. Every span a collector acknowledged must be stored
//! exactly once when one collector is killed with `kill -9` and its data
//! directory deleted, when one is cut off by a network blackhole for 45 s,
//! and through a rolling restart of all three.
//!
//! Each collector runs in a network namespace of its own, joined to the
//! host by a veth pair and routed through it, so the collectors reach each
//! other and the host's Redis across the host; the blackhole is an iptables
//! DROP rule in one namespace. The sidecar (disk durability: it keeps a
//! span until a collector acknowledged it) and the load driver run on the
//! host; the driver records which requests were acknowledged and every
//! span of them is read back from the query API. A collector that loses a
//! span it acknowledged shows as missing: the sidecar does not send it
//! again. Each test prints a `REPLICATION <test>:` summary.
//!
//! The tests need root, `ip`, `iptables` and `redis-server`; without them
//! each prints `SKIPPED: <why>` and passes (`CLEW_CHAOS_REQUIRE=1` fails
//! instead). `CLEW_E2E_REPLICATION_FACTOR=1` runs them without
//! replication, to see what they catch.

use std::cell::Cell;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clew_e2e::chaos::{WorkDir, assert_exactly_once, sidecar_drained, skip};
use clew_e2e::http::HttpClient;
use clew_e2e::jaeger::{Tally, metric, tally};
use clew_e2e::netns::NetNs;
use clew_e2e::proc::{Proc, free_port, wait_for};
use clew_e2e::spanload::{Load, LoadReport, LoadShape};

const RATE: u32 = 1_000;
const GRPC: u16 = 4317;
const QUERY: u16 = 16686;
const OPS: u16 = 9464;
const COLLECTORS: usize = 3;

fn s(v: &str) -> String {
    v.to_string()
}

/// A collector and its namespace (the process drops first).
struct Member {
    proc: Proc,
    ns: NetNs,
    data: PathBuf,
}

impl Member {
    fn ops(&self) -> String {
        format!("http://{}:{OPS}", self.ns.addr)
    }
}

/// Three collectors, Redis, and a sidecar in front.
struct Cluster {
    name: &'static str,
    _sidecar: Proc,
    members: Vec<Member>,
    _redis: Proc,
    _dir: WorkDir,
    http: HttpClient,
    sidecar_grpc: SocketAddr,
    sidecar_ops: String,
}

fn factor() -> String {
    std::env::var("CLEW_E2E_REPLICATION_FACTOR").unwrap_or_else(|_| s("2"))
}

impl Cluster {
    async fn start(name: &'static str) -> Option<Cluster> {
        let mut spaces = Vec::new();
        for _ in 0..COLLECTORS {
            match NetNs::create().and_then(|ns| ns.route_via_host().map(|()| ns)) {
                Ok(ns) => spaces.push(ns),
                Err(e) => return skip(name, &e),
            }
        }
        let dir = WorkDir::new("clew-e2e-replication-", name).unwrap();
        let redis_port = free_port();
        let redis = match start_redis(&dir.0, redis_port) {
            Ok(r) => r,
            Err(e) => return skip(name, &e),
        };
        let peers: Vec<String> = spaces
            .iter()
            .map(|ns| format!("{}:{GRPC}", ns.addr))
            .collect();
        let members: Vec<Member> = spaces
            .into_iter()
            .enumerate()
            .map(|(i, ns)| start_collector(ns, &dir.0, i, &peers, redis_port))
            .collect();
        let http = HttpClient::new(Duration::from_secs(5));
        for m in &members {
            wait_ready(&http, m).await;
        }
        let (sidecar, sidecar_grpc, sidecar_ops) = start_sidecar(&dir.0, &peers);
        let cluster = Cluster {
            name,
            _sidecar: sidecar,
            members,
            _redis: redis,
            _dir: dir,
            http,
            sidecar_grpc,
            sidecar_ops,
        };
        let url = format!("{}/healthz", cluster.sidecar_ops);
        wait_for("the sidecar", Duration::from_secs(30), || {
            cluster.http.ok(&url)
        })
        .await
        .unwrap();
        Some(cluster)
    }

    async fn sidecar_metric(&self, name: &str) -> Option<f64> {
        metric(&self.http, &self.sidecar_ops, name).await
    }

    async fn wait_forwarding(&self) {
        wait_for("spans forwarded", Duration::from_secs(30), || async move {
            self.sidecar_metric("clew_sidecar_spans_forwarded_total")
                .await
                .unwrap_or(0.0)
                >= 2_000.0
        })
        .await
        .unwrap();
    }

    /// The sum of a metric over the collectors that answer.
    async fn collectors_metric(&self, name: &str) -> f64 {
        let mut sum = 0.0;
        for m in &self.members {
            sum += metric(&self.http, &m.ops(), name).await.unwrap_or(0.0);
        }
        sum
    }

    /// Waits until the sidecar holds nothing and the collectors stored what
    /// they took (nothing pending, the stored count still for 2 s).
    async fn settle(&self) -> bool {
        let drained = sidecar_drained(&self.http, &self.sidecar_ops, Duration::from_secs(90)).await;
        let last = &Cell::new((-1.0, Instant::now()));
        let _ = wait_for(
            "the collectors to settle",
            Duration::from_secs(60),
            || async move {
                let pending = self.collectors_metric("clew_pending_traces").await;
                let stored = self.collectors_metric("clew_spans_stored_total").await
                    + self
                        .collectors_metric("clew_replication_takeover_spans_total")
                        .await;
                if stored != last.get().0 {
                    last.set((stored, Instant::now()));
                }
                pending == 0.0 && last.get().1.elapsed() >= Duration::from_secs(2)
            },
        )
        .await;
        drained
    }

    /// Reads every acknowledged span back and prints the summary.
    async fn outcome(&self, shape: &LoadShape, report: LoadReport) -> (Tally, LoadReport) {
        let drained = self.settle().await;
        let traces = report
            .acked
            .iter()
            .flat_map(|&seq| shape.expected_traces(seq))
            .collect();
        let query = format!("http://{}:{QUERY}", self.members[1].ns.addr);
        let t = tally(&self.http, &query, traces, 8).await;
        let takeovers = self
            .collectors_metric("clew_replication_takeover_spans_total")
            .await;
        let refused = self
            .collectors_metric("clew_replication_refused_batches_total")
            .await;
        let dropped = self
            .sidecar_metric("clew_sidecar_spans_dropped_total")
            .await;
        println!(
            "REPLICATION {} (R={}): acknowledged {} spans ({} of {} requests); stored {}, missing {}, duplicates {}, unexpected {}, query errors {}; sidecar refused {:?}, dropped {dropped:?}, drained {drained}; collectors refused {refused} batches for missing copies, took over {takeovers} spans",
            self.name,
            factor(),
            t.expected,
            report.acked.len(),
            report.sent,
            t.stored,
            t.missing,
            t.duplicates,
            t.unexpected,
            t.errors,
            report.refused,
        );
        assert!(drained, "{}: the sidecar never drained", self.name);
        (t, report)
    }
}

fn start_redis(dir: &Path, port: u16) -> anyhow::Result<Proc> {
    let args = [
        "--port",
        &port.to_string(),
        "--bind",
        "0.0.0.0",
        "--protected-mode",
        "no",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        &dir.display().to_string(),
    ]
    .map(String::from);
    Proc::spawn_program(
        "redis",
        "redis-server",
        &args,
        &[],
        Some(&dir.join("redis.log")),
    )
}

fn start_collector(ns: NetNs, dir: &Path, i: usize, peers: &[String], redis_port: u16) -> Member {
    let any = |port: u16| format!("0.0.0.0:{port}");
    let data = dir.join(format!("collector-{i}"));
    let env = [
        (s("CLEW_GRPC_ADDR"), any(GRPC)),
        (s("CLEW_HTTP_ADDR"), any(4318)),
        (s("CLEW_QUERY_ADDR"), any(QUERY)),
        (s("CLEW_OPS_ADDR"), any(OPS)),
        (s("CLEW_STORAGE"), s("redis")),
        (
            s("CLEW_REDIS_URL"),
            format!("redis://{}:{redis_port}", ns.host_addr),
        ),
        (s("CLEW_DATA_DIR"), data.display().to_string()),
        (s("CLEW_IDLE_WINDOW"), s("1s")),
        (s("CLEW_WAL_FSYNC"), s("false")),
        (s("CLEW_PEERS"), peers.join(",")),
        (s("CLEW_ADVERTISE_ADDR"), format!("{}:{GRPC}", ns.addr)),
        (s("CLEW_REPLICATION_FACTOR"), factor()),
        (s("CLEW_REPLICATION_TAKEOVER_AFTER"), s("10s")),
        (s("RUST_LOG"), s("info")),
    ];
    let proc = Proc::spawn_program(
        &format!("collector-{i}"),
        "ip",
        &ns.command(&clew_e2e::proc::bin("clew-collector").unwrap()),
        &env,
        Some(&dir.join(format!("collector-{i}.log"))),
    )
    .unwrap();
    Member { proc, ns, data }
}

async fn wait_ready(http: &HttpClient, m: &Member) {
    let ready = format!("{}/readyz", m.ops());
    wait_for("a collector", Duration::from_secs(60), || http.ok(&ready))
        .await
        .unwrap();
}

fn start_sidecar(dir: &Path, peers: &[String]) -> (Proc, SocketAddr, String) {
    let (grpc, http_port, ops) = (free_port(), free_port(), free_port());
    let vars = vec![
        (s("CLEW_SIDECAR_GRPC_ADDR"), format!("127.0.0.1:{grpc}")),
        (
            s("CLEW_SIDECAR_HTTP_ADDR"),
            format!("127.0.0.1:{http_port}"),
        ),
        (s("CLEW_SIDECAR_OPS_ADDR"), format!("127.0.0.1:{ops}")),
        (s("CLEW_SIDECAR_COLLECTORS"), peers.join(",")),
        (
            s("CLEW_SIDECAR_SPILL_DIR"),
            dir.join("spill").display().to_string(),
        ),
        (s("CLEW_SIDECAR_REQUEST_TIMEOUT"), s("3s")),
        (s("CLEW_SIDECAR_BREAKER_COOL_DOWN"), s("1s")),
        (s("CLEW_SIDECAR_DURABILITY"), s("disk")),
        (s("CLEW_SIDECAR_BATCH_MAX_SPANS"), s("1000")),
    ];
    let sidecar = Proc::spawn(
        "sidecar",
        "clew-sidecar",
        &[],
        &vars,
        Some(&dir.join("sidecar.log")),
    )
    .unwrap();
    (
        sidecar,
        format!("127.0.0.1:{grpc}").parse().unwrap(),
        format!("http://127.0.0.1:{ops}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_and_lost_disk() {
    let Some(mut c) = Cluster::start("kill9_and_lost_disk").await else {
        return;
    };
    let shape = LoadShape::new(RATE);
    let load = Load::start(c.sidecar_grpc, shape).unwrap();
    c.wait_forwarding().await;
    tokio::time::sleep(Duration::from_secs(5)).await;

    // The collector dies with its disk; it comes back empty.
    let victim = &mut c.members[0];
    victim.proc.kill9().await.unwrap();
    std::fs::remove_dir_all(&victim.data).unwrap();
    victim.proc.restart().unwrap();
    wait_ready(&c.http, &c.members[0]).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let report = load.stop().await.unwrap();

    let (t, _) = c.outcome(&shape, report).await;
    assert_exactly_once(c.name, &t, u64::from(RATE) * 10);
    if factor() != "1" {
        let taken = c
            .collectors_metric("clew_replication_takeovers_total")
            .await;
        assert!(
            taken >= 1.0,
            "the lost incarnation's copies were never taken over"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_45s() {
    let Some(c) = Cluster::start("blackhole_45s").await else {
        return;
    };
    let shape = LoadShape::new(RATE);
    let load = Load::start(c.sidecar_grpc, shape).unwrap();
    c.wait_forwarding().await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let hole = c.members[0].ns.blackhole().unwrap();
    tokio::time::sleep(Duration::from_secs(45)).await;
    hole.heal().unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let report = load.stop().await.unwrap();

    let (t, _) = c.outcome(&shape, report).await;
    assert_exactly_once(c.name, &t, u64::from(RATE) * 10);
    if factor() != "1" {
        // Copies sent to the collector as it went silent got no answer:
        // their batches were refused (and sent again), not acknowledged.
        let refused = c
            .collectors_metric("clew_replication_refused_batches_total")
            .await;
        assert!(refused > 0.0, "no batch was refused for missing copies");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart() {
    let Some(mut c) = Cluster::start("rolling_restart").await else {
        return;
    };
    let shape = LoadShape::new(RATE);
    let load = Load::start(c.sidecar_grpc, shape).unwrap();
    c.wait_forwarding().await;
    for i in 0..COLLECTORS {
        let m = &mut c.members[i];
        assert!(
            m.proc.stop(Duration::from_secs(30)).await.unwrap(),
            "collector {i} did not stop"
        );
        m.proc.restart().unwrap();
        wait_ready(&c.http, &c.members[i]).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let report = load.stop().await.unwrap();

    let (t, _) = c.outcome(&shape, report).await;
    assert_exactly_once(c.name, &t, u64::from(RATE) * 10);
}
