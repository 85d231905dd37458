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
