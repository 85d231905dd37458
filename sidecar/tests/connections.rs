//! Idle connections and slow clients against the real `clew-sidecar`
//! binary: its ops port and OTLP/HTTP ingest keep answering; the server
//! closes idle and slow connections.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clew_runtime::net::testing::{
    HttpClient, Prober, fd_budget, get_status, metric, open_idle, otlp_json_span, slowloris,
    wait_all_closed, wait_ready,
};

const FLOOD: usize = 3_000;
const MAX: usize = 1_000;
const TIMEOUT: Duration = Duration::from_secs(5);

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Sidecar {
    child: Child,
    http: SocketAddr,
    ops: SocketAddr,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(spill: &std::path::Path) -> Sidecar {
    let (grpc, http, ops, nobody) = (free_addr(), free_addr(), free_addr(), free_addr());
    let child = Command::new(env!("CARGO_BIN_EXE_clew-sidecar"))
        .arg(format!("--grpc-addr={grpc}"))
        .arg(format!("--http-addr={http}"))
        .arg(format!("--ops-addr={ops}"))
        // No collector listens there: spans wait in memory, which is fine.
        .arg(format!("--collectors=http://{nobody}"))
        .arg(format!("--spill-dir={}", spill.display()))
        .arg(format!("--max-connections={MAX}"))
        .args(["--conn-idle-timeout=3s", "--header-read-timeout=2s"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let s = Sidecar { child, http, ops };
    wait_ready(s.ops, "sidecar");
    s
}

#[test]
fn idle_floods_and_slowloris_do_not_stop_the_sidecar() {
    fd_budget((FLOOD + 1_000) as u64);
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path());
    let every = Duration::from_millis(100);
    let ops = s.ops;
    let health = Prober::start(every, TIMEOUT, move || {
        match get_status(ops, "/healthz", TIMEOUT)? {
            200 => Ok(()),
            code => Err(format!("healthz {code}")),
        }
    });
    let mut exporter = HttpClient::new(s.http, TIMEOUT);
    let mut n = 0;
    let export = Prober::start(every, TIMEOUT, move || {
        n += 1;
        match exporter.request(
            "POST",
            "/v1/traces",
            "application/json",
            &otlp_json_span(n, "probe"),
        ) {
            Ok((200, _)) => Ok(()),
            Ok((code, b)) => Err(format!("{code}: {}", String::from_utf8_lossy(&b))),
            Err(e) => Err(e.to_string()),
        }
    });
    let http = s.http;
    let slow = std::thread::spawn(move || slowloris(http, Duration::from_secs(1), 30));
    let (mut conns, err) = open_idle(s.http, FLOOD);
    let opened = conns.len();
    eprintln!("{opened} idle connections opened ({err:?})");

    let cut = slow.join().unwrap();
    eprintln!("slowloris cut after {cut:?}");
    assert!(cut.is_some_and(|c| c < Duration::from_secs(5)), "{cut:?}");
    assert_eq!(wait_all_closed(&mut conns, Duration::from_secs(15)), 0);

    let metrics = String::from_utf8(
        HttpClient::new(s.ops, TIMEOUT)
            .request("GET", "/metrics", "text/plain", b"")
            .unwrap()
            .1,
    )
    .unwrap();
    let [refused, evicted, idle] = [
        "clew_connections_refused_total",
        "clew_connections_evicted_total",
        "clew_connections_idle_closed_total",
    ]
    .map(|m| metric(&metrics, m, "http"));
    eprintln!("http: refused {refused}, evicted {evicted}, closed idle {idle}");
    assert!(idle > 0 && refused + evicted > 0, "{metrics}");
    assert!(refused + evicted + idle >= opened as u64, "{metrics}");
    assert!(
        metric(&metrics, "clew_connections_open", "http") <= 1,
        "{metrics}"
    );
    for (name, p) in [("healthz", health), ("export", export)] {
        let r = p.finish();
        eprintln!("{name}: {} answered, worst {:?}", r.ok, r.worst);
        assert!(r.failures.is_empty(), "{name}: {:?}", r.failures);
        assert!(r.ok >= 10, "{name}: {}", r.ok);
    }
}
