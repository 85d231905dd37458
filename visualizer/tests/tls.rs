#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The visualizer over HTTPS: a client trusting its CA gets the UI and the
//! ops routes; plain HTTP to the port gets no answer. Certificates are
//! made here (rcgen).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser as _;
use clew_runtime::tls::testing::Pki;
use clew_runtime::tls::{ClientTls, ClientTlsFiles};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

async fn https_get(addr: SocketAddr, tls: &ClientTls, path: &str) -> std::io::Result<String> {
    let mut connector = tls.connector();
    let uri: http::Uri = format!("http://{addr}").parse().unwrap();
    let io = tower::Service::call(&mut connector, uri)
        .await
        .map_err(std::io::Error::other)?;
    let mut s = io.into_inner();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_is_served_over_https_only() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ui");
    let (cert, key) = pki.server("visualizer", &["localhost", "127.0.0.1"]);
    let config = clew_visualizer::Config::try_parse_from([
        "clew-visualizer",
        "--addr",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ])
    .unwrap();
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        clew_visualizer::run(
            config,
            async {
                let _ = stopped.await;
            },
            move |a| {
                let _ = bound_tx.send(a);
            },
        )
        .await
        .unwrap();
    });
    let addr = bound_rx.await.unwrap();
    let tls = ClientTls::load(ClientTlsFiles {
        ca: pki.ca.clone(),
        identity: None,
        server_name: Some("localhost".into()),
    })
    .unwrap();
    let page = https_get(addr, &tls, "/").await.unwrap();
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    let health = https_get(addr, &tls, "/healthz").await.unwrap();
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    // Plain HTTP to the HTTPS port gets no HTTP answer.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
    let _ = stop.send(());
    let _ = server.await;
}

/// A collector whose listeners (the query API included) serve TLS with
/// `flags`; stopped when the sender is dropped.
async fn tls_collector(dir: &std::path::Path, flags: &[&str]) -> (SocketAddr, Stop) {
    let data = dir.join("data");
    let mut args = vec![
        "clew-collector",
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
        "--query-addr",
        "127.0.0.1:0",
        "--ops-addr",
        "127.0.0.1:0",
        "--storage",
        "memory",
        "--data-dir",
        data.to_str().unwrap(),
    ];
    args.extend_from_slice(flags);
    let config = clew_collector::server::Config::try_parse_from(args).unwrap();
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(clew_collector::server::run(
        config,
        async {
            let _ = stopped.await;
        },
        move |b| {
            let _ = bound_tx.send(b);
        },
    ));
    let bound: clew_collector::server::Bound = bound_rx.await.unwrap();
    (bound.query, Stop(Some(stop)))
}

/// Stops the collector when dropped.
struct Stop(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = self.0.take().map(|s| s.send(()));
    }
}

/// `GET /api/services` through a visualizer configured with `flags`.
async fn services_through(query: SocketAddr, flags: &[String]) -> axum::http::StatusCode {
    use tower::ServiceExt as _;
    let url = format!("https://127.0.0.1:{}", query.port());
    let mut args = vec!["clew-visualizer", "--query-url", &url];
    args.extend(flags.iter().map(String::as_str));
    let config = clew_visualizer::Config::try_parse_from(args).unwrap();
    let tls = config.query_tls.load().unwrap();
    let upstream =
        clew_visualizer::Upstream::new(&config.query_url, Duration::from_secs(10), tls).unwrap();
    let router = clew_visualizer::app(clew_visualizer::AppState::proxying(upstream));
    let req = axum::http::Request::get("/api/services")
        .body(axum::body::Body::empty())
        .unwrap();
    router.oneshot(req).await.unwrap().status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_reaches_an_mtls_query_api_with_the_ca_and_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "q");
    let other = Pki::new(dir.path(), "other");
    let (cert, key) = pki.server("collector", &["collector.clew.svc"]);
    let (ccert, ckey) = pki.client("visualizer", "clew-visualizer");
    let (ocert, okey) = other.client("stranger", "clew-visualizer");
    let s = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let (cert, key, ca) = (s(&cert), s(&key), s(&pki.ca));
    let (query, _stop) = tls_collector(
        dir.path(),
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca,
        ],
    )
    .await;
    let (ccert, ckey, ocert, okey) = (s(&ccert), s(&ckey), s(&ocert), s(&okey));
    let other_ca = s(&other.ca);
    let name = "collector.clew.svc";
    let flags = |ca: &str, client: Option<(&str, &str)>| {
        let mut f = vec!["--query-ca", ca, "--query-server-name", name];
        if let Some((cert, key)) = client {
            f.extend(["--query-cert", cert, "--query-key", key]);
        }
        f.iter().map(|a| a.to_string()).collect::<Vec<_>>()
    };
    let ok = flags(&ca, Some((&ccert, &ckey)));
    assert_eq!(services_through(query, &ok).await, 200);
    // Without a client certificate, or with one from another CA: refused
    // by the collector, a plain 502 to the browser.
    let no_cert = flags(&ca, None);
    assert_eq!(services_through(query, &no_cert).await, 502);
    let stranger = flags(&ca, Some((&ocert, &okey)));
    assert_eq!(services_through(query, &stranger).await, 502);
    // A CA the collector's certificate does not chain to: not trusted.
    let wrong_ca = flags(&other_ca, Some((&ccert, &ckey)));
    assert_eq!(services_through(query, &wrong_ca).await, 502);
}
