#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::*;

const DEADLINE: Duration = Duration::from_secs(5);

fn limits(max: usize, idle: Duration, evict_after: Duration) -> ConnLimits {
    ConnLimits {
        max_connections: max,
        idle_timeout: idle,
        evict_after,
        ..ConnLimits::default()
    }
}

/// A tracked echo server; returns its address and tracker.
async fn echo_server(
    limits: ConnLimits,
    metrics: &ConnMetrics,
) -> (std::net::SocketAddr, ConnTracker) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let l = TrackedListener::new(l, "test", limits, metrics);
    let addr = l.local_addr().unwrap();
    let tracker = l.tracker().clone();
    tokio::spawn(async move {
        loop {
            let mut s = l.accept().await;
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    if s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, tracker)
}

async fn echo(c: &mut TcpStream) -> bool {
    if c.write_all(b"ping").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 4];
    matches!(
        tokio::time::timeout(DEADLINE, c.read_exact(&mut buf)).await,
        Ok(Ok(4))
    )
}

/// Whether the server closed `c` (EOF or reset) within the deadline.
async fn closed_by_server(c: &mut TcpStream) -> bool {
    let mut buf = [0u8; 16];
    match tokio::time::timeout(DEADLINE, c.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

fn metric(m: &ConnMetrics, name: &str) -> u64 {
    let prefix = format!("{name}{{listener=\"test\"}} ");
    m.render()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0)
}

async fn wait_open(t: &ConnTracker, n: usize) {
    let deadline = Instant::now() + DEADLINE;
    while t.open() != n {
        assert!(Instant::now() < deadline, "open {} != {n}", t.open());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let m = ConnMetrics::new();
    let idle = Duration::from_millis(300);
    let (addr, tracker) = echo_server(limits(10, idle, idle), &m).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    // The server's last activity is after this instant.
    let before = Instant::now();
    assert!(echo(&mut c).await);
    assert!(closed_by_server(&mut c).await, "idle connection not closed");
    assert!(before.elapsed() >= idle, "closed before the idle timeout");
    wait_open(&tracker, 0).await;
    assert_eq!(metric(&m, "clew_connections_idle_closed_total"), 1);
    assert_eq!(metric(&m, "clew_connections_open"), 0);
}

#[tokio::test]
async fn at_the_limit_a_new_connection_evicts_the_longest_idle_one() {
    let m = ConnMetrics::new();
    let evict_after = Duration::from_millis(100);
    let (addr, tracker) = echo_server(limits(2, Duration::from_secs(60), evict_after), &m).await;
    let mut a = TcpStream::connect(addr).await.unwrap();
    assert!(echo(&mut a).await);
    let mut b = TcpStream::connect(addr).await.unwrap();
    assert!(echo(&mut b).await);
    wait_open(&tracker, 2).await;
    // Both must have been idle long enough to be evictable; `a` longest.
    tokio::time::sleep(evict_after * 2).await;
    assert!(echo(&mut b).await);
    tokio::time::sleep(evict_after * 2).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    assert!(
        closed_by_server(&mut a).await,
        "the longest-idle was not evicted"
    );
    assert!(echo(&mut c).await, "the new connection is served");
    assert!(echo(&mut b).await, "the other connection is untouched");
    wait_open(&tracker, 2).await;
    assert_eq!(metric(&m, "clew_connections_evicted_total"), 1);
    assert_eq!(metric(&m, "clew_connections_refused_total"), 0);
}

#[tokio::test]
async fn when_all_are_busy_the_excess_is_closed_at_once_and_counted() {
    let m = ConnMetrics::new();
    let (addr, tracker) = echo_server(
        limits(2, Duration::from_secs(60), Duration::from_secs(60)),
        &m,
    )
    .await;
    let mut a = TcpStream::connect(addr).await.unwrap();
    let mut b = TcpStream::connect(addr).await.unwrap();
    assert!(echo(&mut a).await && echo(&mut b).await);
    for _ in 0..3 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        let start = Instant::now();
        assert!(
            closed_by_server(&mut c).await,
            "excess connection left open"
        );
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "not closed at once"
        );
    }
    assert_eq!(metric(&m, "clew_connections_refused_total"), 3);
    assert!(echo(&mut a).await && echo(&mut b).await);
    assert_eq!(tracker.open(), 2);
}

#[tokio::test]
async fn a_slow_header_sender_is_cut_off_and_a_normal_request_served() {
    let m = ConnMetrics::new();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lim = ConnLimits {
        header_read_timeout: Duration::from_millis(400),
        ..ConnLimits::default()
    };
    let l = TrackedListener::new(l, "test", lim, &m);
    let addr = l.local_addr().unwrap();
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_http(l, app, async {
        let _ = stop_rx.await;
    }));

    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let start = Instant::now();
    let mut cut = false;
    // One header line every 100 ms: never completes, never idle.
    for i in 0..50 {
        if slow
            .write_all(format!("X-{i}: y\r\n").as_bytes())
            .await
            .is_err()
        {
            cut = true;
            break;
        }
        let mut buf = [0u8; 256];
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(100), slow.read(&mut buf)).await {
            // EOF, a reset, or hyper's 408 before closing.
            cut = matches!(r, Ok(0) | Err(_)) || buf.starts_with(b"HTTP/1.1 408");
            if cut {
                break;
            }
        }
    }
    assert!(
        cut,
        "slow header sender still connected after {:?}",
        start.elapsed()
    );
    assert!(start.elapsed() < Duration::from_secs(3));

    let mut ok = TcpStream::connect(addr).await.unwrap();
    ok.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(DEADLINE, ok.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let _ = stop_tx.send(());
    tokio::time::timeout(DEADLINE, server)
        .await
        .unwrap()
        .unwrap();
}

#[test]
fn only_a_lone_http2_ping_is_not_activity() {
    let mut ping = vec![0, 0, 8, 6, 0, 0, 0, 0, 0];
    ping.extend([1u8; 8]);
    assert!(tracked::is_h2_ping(&ping));
    ping.push(0);
    assert!(!tracked::is_h2_ping(&ping));
    assert!(!tracked::is_h2_ping(b"GET / HTTP/1.1\r\nHost:\r\n"));
}

#[test]
fn the_soft_open_file_limit_is_raised_to_the_hard_one() {
    let l = raise_nofile_limit().unwrap();
    assert_eq!(l.soft, l.hard);
    assert!(l.soft >= l.soft_before);
}

#[tokio::test]
async fn http2_keepalive_pings_do_not_keep_an_idle_connection_open() {
    use http_body_util::{BodyExt as _, Empty};
    let m = ConnMetrics::new();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let idle = Duration::from_millis(600);
    let lim = ConnLimits {
        idle_timeout: idle,
        // Pings (and their acks) several times per idle timeout.
        http2_keepalive_interval: Duration::from_millis(100),
        http2_keepalive_timeout: Duration::from_secs(5),
        ..ConnLimits::default()
    };
    let l = TrackedListener::new(l, "test", lim, &m);
    let addr = l.local_addr().unwrap();
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    tokio::spawn(serve_http(l, app, std::future::pending()));

    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = axum::http::Request::get("http://x/")
        .body(Empty::<axum::body::Bytes>::new())
        .unwrap();
    // The server's last activity is after this instant.
    let sent = Instant::now();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
    // The connection ends (the server closed it) although pings kept
    // flowing on it.
    let _ = tokio::time::timeout(DEADLINE, conn)
        .await
        .expect("connection still open");
    assert!(sent.elapsed() >= idle, "closed before the idle timeout");
    assert_eq!(metric(&m, "clew_connections_idle_closed_total"), 1);
}
