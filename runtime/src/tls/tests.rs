#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::testing::Pki;
use super::*;
use crate::net::{ConnLimits, ConnMetrics, TrackedListener, serve_https};

struct Server {
    addr: SocketAddr,
    tls: ServerTls,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn https(files: ServerTlsFiles) -> Server {
    let tls = ServerTls::load(files, &[b"h2", b"http/1.1"]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listener =
        TrackedListener::new(listener, "test", ConnLimits::default(), &ConnMetrics::new());
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve_https(listener, tls.clone(), app, async {
        let _ = stopped.await;
    }));
    Server {
        addr,
        tls,
        stop: Some(stop),
    }
}

fn files(cert: (PathBuf, PathBuf), client_ca: Option<PathBuf>) -> ServerTlsFiles {
    ServerTlsFiles {
        cert: cert.0,
        key: cert.1,
        client_ca,
        min_version: TlsVersion::V1_2,
    }
}

type Client = tokio_rustls::client::TlsStream<TcpStream>;

async fn connect(addr: SocketAddr, tls: &ClientTls) -> std::io::Result<Client> {
    let tcp = TcpStream::connect(addr).await?;
    let mut config = (*tls.config()).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = tls.server_name("localhost").unwrap();
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    // With TLS 1.3 a refused client certificate shows on the first read.
    get(&mut s).await?;
    Ok(s)
}

async fn get(s: &mut Client) -> std::io::Result<String> {
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut buf = vec![0u8; 1024];
    let n = s.read(&mut buf).await?;
    if n == 0 {
        return Err(std::io::Error::other("closed"));
    }
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn client(ca: &std::path::Path, identity: Option<(PathBuf, PathBuf)>) -> ClientTls {
    ClientTls::load(ClientTlsFiles {
        ca: ca.to_owned(),
        identity,
        server_name: None,
    })
    .unwrap()
}

fn leaf_der(s: &Client) -> Vec<u8> {
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn https_serves_clients_that_trust_its_ca_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "a");
    let other = Pki::new(dir.path(), "b");
    let srv = https(files(pki.server("srv", &["localhost"]), None)).await;
    let mut ok = connect(srv.addr, &client(&pki.ca, None)).await.unwrap();
    assert!(get(&mut ok).await.unwrap().contains("hello"));
    // A client trusting another CA refuses the server.
    assert!(connect(srv.addr, &client(&other.ca, None)).await.is_err());
    // Plain text to the TLS port gets no HTTP answer.
    let mut plain = TcpStream::connect(srv.addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("hello"));
}

#[tokio::test]
async fn mtls_requires_a_client_certificate_from_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "a");
    let other = Pki::new(dir.path(), "b");
    let srv = https(files(
        pki.server("srv", &["localhost"]),
        Some(pki.ca.clone()),
    ))
    .await;
    let good = client(&pki.ca, Some(pki.client("c", "sidecar")));
    assert!(connect(srv.addr, &good).await.is_ok());
    assert!(
        connect(srv.addr, &client(&pki.ca, None)).await.is_err(),
        "no certificate"
    );
    let foreign = client(&pki.ca, Some(other.client("c", "intruder")));
    assert!(
        connect(srv.addr, &foreign).await.is_err(),
        "another CA's certificate"
    );
}

#[tokio::test]
async fn replaced_files_serve_new_handshakes_and_keep_old_connections() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "a");
    let srv = https(files(pki.server("srv", &["localhost"]), None)).await;
    let c = client(&pki.ca, None);
    let mut before = connect(srv.addr, &c).await.unwrap();
    assert!(!srv.tls.reload().unwrap(), "nothing changed yet");
    // The certificate is rotated: same paths, new contents.
    pki.server("srv", &["localhost"]);
    assert!(srv.tls.reload().unwrap());
    let after = connect(srv.addr, &c).await.unwrap();
    assert_ne!(
        leaf_der(&before),
        leaf_der(&after),
        "a new handshake gets the new certificate"
    );
    assert!(
        get(&mut before).await.unwrap().contains("hello"),
        "the old connection goes on"
    );
    // A broken file keeps the last good configuration.
    std::fs::write(&srv.tls.inner.files.key, "not a key").unwrap();
    assert!(srv.tls.reload().is_err());
    let still = connect(srv.addr, &c).await.unwrap();
    assert_eq!(leaf_der(&still), leaf_der(&after));
}

#[test]
fn a_key_that_does_not_match_or_a_missing_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "a");
    let (cert, _) = pki.server("one", &["localhost"]);
    let (_, other_key) = pki.server("two", &["localhost"]);
    let e = ServerTls::load(files((cert.clone(), other_key), None), &[]).unwrap_err();
    assert!(e.to_string().contains("one.pem"), "{e}");
    let e = ServerTls::load(files((cert, dir.path().join("missing.pem")), None), &[]).unwrap_err();
    assert!(e.to_string().contains("missing.pem"), "{e}");
}

#[tokio::test]
async fn the_tonic_connector_reaches_a_tls_server() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "a");
    let srv = https(files(pki.server("srv", &["localhost", "127.0.0.1"]), None)).await;
    let tls = client(&pki.ca, None);
    let mut connector = tls.connector();
    let uri: http::Uri = format!("http://127.0.0.1:{}", srv.addr.port())
        .parse()
        .unwrap();
    let io = tower::Service::call(&mut connector, uri).await.unwrap();
    let (_, session) = io.get_ref().get_ref();
    assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]));
}
