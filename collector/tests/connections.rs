//! Idle connections and slow clients against the real `clew-collector`
//! binary: 20,000 idle connections to OTLP/HTTP and a slowloris client must
//! not stop ingest, the query API or `/healthz`; the server closes them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clew_runtime::net::testing::{
    HttpClient, ProbeReport, Prober, fd_budget, get_status, metric, open_idle, otlp_json_span,
    slowloris, wait_all_closed, wait_ready,
};

/// Idle connections opened to OTLP/HTTP (the open-file limit of the chaos
/// test that found the problem).
const FLOOD: usize = 20_000;
/// Idle connections opened to the query listener.
const QUERY_FLOOD: usize = 3_000;
/// `--max-connections` of the collector under test: both floods exceed it.
const MAX: usize = 2_000;
const HEADER_READ: Duration = Duration::from_secs(2);
const IDLE: Duration = Duration::from_secs(3);
const TIMEOUT: Duration = Duration::from_secs(5);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Collector {
    child: Child,
    http: SocketAddr,
    query: SocketAddr,
    ops: SocketAddr,
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn start(data_dir: &std::path::Path) -> Collector {
    let (grpc, http, query, ops) = (free_port(), free_port(), free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_clew-collector"))
        .args(["--grpc-addr", &addr(grpc).to_string()])
        .args(["--http-addr", &addr(http).to_string()])
        .args(["--query-addr", &addr(query).to_string()])
        .args(["--ops-addr", &addr(ops).to_string()])
        .args(["--storage", "memory", "--wal-fsync", "false"])
        .args(["--max-connections", &MAX.to_string()])
        .args(["--conn-idle-timeout", &format!("{}s", IDLE.as_secs())])
        .args([
            "--header-read-timeout",
            &format!("{}s", HEADER_READ.as_secs()),
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let c = Collector {
        child,
        http: addr(http),
        query: addr(query),
        ops: addr(ops),
    };
    wait_ready(c.ops, "collector");
    c
}

fn expect_ok(r: std::io::Result<(u16, Vec<u8>)>) -> Result<(), String> {
    match r {
        Ok((200, _)) => Ok(()),
        Ok((s, b)) => Err(format!("{s}: {}", String::from_utf8_lossy(&b))),
        Err(e) => Err(e.to_string()),
    }
}

/// Probes, every 100 ms, `/healthz` (a new connection each time), an
/// OTLP/HTTP export and a query (keep-alive clients, as real ones are).
fn probers(c: &Collector) -> Vec<(&'static str, Prober)> {
    let every = Duration::from_millis(100);
    let ops = c.ops;
    let health = Prober::start(every, TIMEOUT, move || {
        match get_status(ops, "/healthz", TIMEOUT)? {
            200 => Ok(()),
            s => Err(format!("healthz {s}")),
        }
    });
    let mut exporter = HttpClient::new(c.http, TIMEOUT);
    let mut n = 0;
    let export = Prober::start(every, TIMEOUT, move || {
        n += 1;
        expect_ok(exporter.request(
            "POST",
            "/v1/traces",
            "application/json",
            &otlp_json_span(n, "probe"),
        ))
    });
    let mut querier = HttpClient::new(c.query, TIMEOUT);
    let query = Prober::start(every, TIMEOUT, move || {
        expect_ok(querier.request("GET", "/api/services", "text/plain", b""))
    });
    vec![("healthz", health), ("export", export), ("query", query)]
}

fn assert_answered(name: &str, r: &ProbeReport) {
    eprintln!(
        "{name}: {} probes answered, worst {:?}, {} failed",
        r.ok,
        r.worst,
        r.failures.len()
    );
    assert!(r.failures.is_empty(), "{name} failed: {:?}", r.failures);
    assert!(r.ok >= 10, "{name}: only {} probes", r.ok);
}

/// Floods `addr` with `n` idle connections while a slowloris client
/// sends one header line a second; asserts the slow client is cut by the
/// header-read timeout (or evicted) long before its 30 lines, and that the
/// server closes every idle connection: refused or evicted at the limit,
/// or after the idle timeout. Returns how many were opened.
fn flood(addr: SocketAddr, n: usize) -> usize {
    let slow = std::thread::spawn(move || slowloris(addr, Duration::from_secs(1), 30));
    let start = Instant::now();
    let (mut conns, err) = open_idle(addr, n);
    let opened = conns.len();
    eprintln!(
        "{addr}: {opened} idle connections opened in {:?}{}",
        start.elapsed(),
        err.map(|e| format!(" (stopped: {e})")).unwrap_or_default()
    );
    let cut = slow.join().unwrap();
    eprintln!("{addr}: slowloris cut after {cut:?}");
    let cut = cut.unwrap_or_else(|| panic!("{addr}: slowloris never cut"));
    assert!(
        cut < HEADER_READ + Duration::from_secs(3),
        "{addr}: {cut:?}"
    );
    let left = wait_all_closed(&mut conns, IDLE * 5);
    assert_eq!(left, 0, "{addr}: idle connections the server never closed");
    eprintln!(
        "{addr}: all closed {:?} after the flood began",
        start.elapsed()
    );
    opened
}

#[test]
fn idle_floods_and_slowloris_do_not_stop_the_collector() {
    let budget = fd_budget((FLOOD + 1_000) as u64);
    // Besides the flood this process holds a few hundred descriptors at
    // most (probes, slow clients, the harness).
    let n = FLOOD.min(usize::try_from(budget).unwrap().saturating_sub(300));
    if n < FLOOD {
        eprintln!(
            "open-file limit {budget} (the hard limit cannot be raised here): \
             flooding OTLP/HTTP with {n} connections, not {FLOOD}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path());
    let probes = probers(&c);
    let opened = [flood(c.http, n), flood(c.query, QUERY_FLOOD)];

    let metrics = HttpClient::new(c.ops, TIMEOUT)
        .request("GET", "/metrics", "text/plain", b"")
        .unwrap()
        .1;
    let metrics = String::from_utf8(metrics).unwrap();
    for (l, opened) in ["http", "query"].into_iter().zip(opened) {
        let [refused, evicted, idle] = [
            "clew_connections_refused_total",
            "clew_connections_evicted_total",
            "clew_connections_idle_closed_total",
        ]
        .map(|m| metric(&metrics, m, l));
        eprintln!("{l}: refused {refused}, evicted {evicted}, closed idle {idle}");
        assert!(idle > 0 && refused + evicted > 0, "{l}: {metrics}");
        assert!(refused + evicted + idle >= opened as u64, "{l}: {metrics}");
        // What is left open is the probe's keep-alive connection.
        assert!(
            metric(&metrics, "clew_connections_open", l) <= 1,
            "{metrics}"
        );
    }
    for (name, p) in probes {
        assert_answered(name, &p.finish());
    }
}
