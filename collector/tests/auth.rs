//! Bearer authentication of the collector's query API (HTTP and gRPC) and
//! of ingest, through the real server over loopback: static tokens from a
//! file re-read on change, JWTs against a JWKS file and a JWKS served over
//! HTTP, and the OpenTelemetry Python SDK sending a token.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use clap::Parser as _;
use clew_collector::server::{Bound, Config, run};
use clew_proto::v1 as pb;
use clew_runtime::auth::testing::{JwksServer, SigningKey, claims, jwks};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

const ISS: &str = "https://idp.test";
const AUD: &str = "clew-query";

/// A collector running in this process, memory storage, every port 0.
struct Collector {
    bound: Bound,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    async fn start(extra: &[&str], data: &Path) -> Self {
        let mut args = vec![
            "clew-collector",
            "--storage",
            "memory",
            "--idle-window",
            "50ms",
        ];
        for flag in ["--grpc-addr", "--http-addr", "--query-addr", "--ops-addr"] {
            args.extend([flag, "127.0.0.1:0"]);
        }
        args.extend(["--data-dir", data.to_str().unwrap()]);
        args.extend_from_slice(extra);
        let config = Config::try_parse_from(args).unwrap();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (bound_tx, bound_rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            let stop = async move {
                let _ = stop_rx.await;
            };
            run(config, stop, move |b| {
                let _ = bound_tx.send(b);
            })
            .await
            .unwrap();
        });
        let bound = tokio::time::timeout(Duration::from_secs(30), bound_rx)
            .await
            .unwrap()
            .unwrap();
        Collector {
            bound,
            stop: Some(stop_tx),
            task,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap();
    }

    async fn query(&self, path: &str, token: Option<&str>) -> Answer {
        get(self.bound.query, path, token).await
    }
}

/// An HTTP answer: status, headers (lower-case names), body.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

/// A plain HTTP/1.1 GET over a fresh connection.
async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Answer {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    Answer {
        status: head.split_whitespace().nth(1).unwrap().parse().unwrap(),
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

fn assert_refused(a: &Answer, token_given: bool) {
    assert_eq!(a.status, 401, "{}", a.body);
    assert!(
        a.head.contains("www-authenticate: bearer realm=\"clew\""),
        "{}",
        a.head
    );
    assert_eq!(
        a.head.contains("error=\"invalid_token\""),
        token_given,
        "{}",
        a.head
    );
    let body: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    let msg = body["errors"][0]["msg"].as_str().unwrap();
    assert!(
        msg == "authentication required" || msg == "invalid credentials",
        "{msg}"
    );
    assert!(body["data"].is_null());
}

/// Polls until `f` holds (the token file is re-read every 2 s).
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_tokens_guard_the_query_api_and_the_file_is_reread() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "# readers\nfirst-token\n\nsecond-token\n").unwrap();
    let c = Collector::start(
        &["--query-token-file", tokens.to_str().unwrap()],
        dir.path(),
    )
    .await;

    assert_refused(&c.query("/api/services", None).await, false);
    assert_refused(&c.query("/api/clew/anomalies", None).await, false);
    assert_refused(&c.query("/api/services", Some("wrong")).await, true);
    for token in ["first-token", "second-token"] {
        let a = c.query("/api/services", Some(token)).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    // The ops endpoint stays open.
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(get(c.bound.ops, path, None).await.status, 200, "{path}");
    }
    let metrics = get(c.bound.ops, "/metrics", None).await.body;
    assert!(
        metrics.contains(r#"clew_auth_refusals_total{reason="missing",surface="query"} 2"#),
        "{metrics}"
    );

    // Rotation: a new token works, a removed one stops, no restart.
    std::fs::write(&tokens, "second-token\nthird-token\n").unwrap();
    eventually("the new token is accepted", async || {
        c.query("/api/services", Some("third-token")).await.status == 200
    })
    .await;
    assert_refused(&c.query("/api/services", Some("first-token")).await, true);
    assert_eq!(
        c.query("/api/services", Some("second-token")).await.status,
        200
    );
    c.stop().await;
}

/// 200 for tokens signed by the JWKS's keys; 401 for the rest.
async fn check_jwts(c: &Collector, keys: &[&SigningKey]) {
    for key in keys {
        let a = c
            .query("/api/services", Some(&key.sign(&claims(ISS, AUD, 300))))
            .await;
        assert_eq!(a.status, 200, "{}: {}", key.alg(), a.body);
    }
    let key = keys[0];
    let stranger = SigningKey::ec("not-published");
    for token in [
        key.sign(&claims(ISS, AUD, -600)),
        key.sign(&claims("https://other-idp.test", AUD, 300)),
        key.sign(&claims(ISS, "another-service", 300)),
        stranger.sign(&claims(ISS, AUD, 300)),
    ] {
        assert_refused(&c.query("/api/services", Some(&token)).await, true);
    }
}

fn jwt_flags(jwks: &str) -> Vec<String> {
    [
        "--query-jwks",
        jwks,
        "--query-jwt-issuer",
        ISS,
        "--query-jwt-audience",
        AUD,
    ]
    .map(String::from)
    .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwts_are_verified_against_a_jwks_file() {
    let dir = tempfile::tempdir().unwrap();
    let (rsa, ec) = (SigningKey::rsa("rsa-1"), SigningKey::ec("ec-1"));
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, jwks(&[&rsa, &ec])).unwrap();
    let flags = jwt_flags(file.to_str().unwrap());
    let c = Collector::start(
        &flags.iter().map(String::as_str).collect::<Vec<_>>(),
        dir.path(),
    )
    .await;
    assert_refused(&c.query("/api/services", None).await, false);
    check_jwts(&c, &[&rsa, &ec]).await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwts_are_verified_against_a_jwks_url_and_rotated_keys_are_fetched() {
    let dir = tempfile::tempdir().unwrap();
    let (rsa, ec) = (SigningKey::rsa("rsa-1"), SigningKey::ec("ec-1"));
    let server = JwksServer::start(jwks(&[&rsa, &ec])).await;
    let flags = jwt_flags(&server.url());
    let c = Collector::start(
        &flags.iter().map(String::as_str).collect::<Vec<_>>(),
        dir.path(),
    )
    .await;
    check_jwts(&c, &[&rsa, &ec]).await;

    // The identity provider rotates: the first token naming the new kid
    // makes the collector fetch the JWKS again (10 s after the last fetch
    // at the earliest).
    let rotated = SigningKey::ec("ec-2");
    server.publish(jwks(&[&rsa, &rotated]));
    let token = rotated.sign(&claims(ISS, AUD, 300));
    eventually("the rotated key is fetched", async || {
        c.query("/api/services", Some(&token)).await.status == 200
    })
    .await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_query_service_refuses_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "reader\n").unwrap();
    let c = Collector::start(
        &["--query-token-file", tokens.to_str().unwrap()],
        dir.path(),
    )
    .await;
    let mut client = pb::query_client::QueryClient::connect(format!("http://{}", c.bound.grpc))
        .await
        .unwrap();
    let find = |token: Option<&str>| {
        let mut req = tonic::Request::new(pb::FindTracesRequest::default());
        if let Some(t) = token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        req
    };
    let e = client.find_traces(find(None)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert_eq!(e.message(), "authentication required");
    let e = client.find_traces(find(Some("guess"))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    client.find_traces(find(Some("reader"))).await.unwrap();
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_with_a_token_file_takes_the_python_sdk_only_with_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("ingest-tokens");
    std::fs::write(&tokens, "sender-token\n").unwrap();
    let c = Collector::start(
        &["--ingest-token-file", tokens.to_str().unwrap()],
        dir.path(),
    )
    .await;
    let http = format!("http://{}/v1/traces", c.bound.http);
    let send = clew_collector::testing::try_otel_sdk_send;

    let refused = send(c.bound.grpc, &http, &[]).await.unwrap_err();
    assert!(refused.contains("grpc export failed"), "{refused}");
    let wrong = ["--header", "authorization=Bearer nope"];
    send(c.bound.grpc, &http, &wrong).await.unwrap_err();

    let ok = ["--header", "authorization=Bearer sender-token"];
    let ids = send(c.bound.grpc, &http, &ok).await.unwrap();
    // Reads stay open here (no query flags): the traces are found.
    for proto in ["grpc", "http", "grpc-gzip", "http-gzip"] {
        let id = ids[proto].as_str().unwrap();
        eventually("the trace is stored", async || {
            c.query(&format!("/api/traces/{id}"), None).await.status == 200
        })
        .await;
    }
    c.stop().await;
}

#[test]
fn jwt_rules_need_a_jwks() {
    let e = Config::try_parse_from(["clew-collector", "--query-jwt-issuer", ISS]).unwrap_err();
    assert!(e.to_string().contains("--query-jwks"), "{e}");
}
