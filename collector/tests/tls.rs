#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The collector over TLS, driven by clients it did not write where one
//! exists: the real OpenTelemetry Python SDK exports over TLS (gRPC and
//! HTTP) with the CA file; without it, it fails; with mTLS, a client
//! certificate from another CA is refused. Certificates are made here
//! (rcgen).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use clap::Parser as _;
use clew_collector::server::{Bound, Config, run};
use clew_proto::v1 as pb;
use clew_runtime::tls::testing::Pki;
use clew_runtime::tls::{ClientTls, ClientTlsFiles};
use tokio::sync::oneshot;

struct Collector {
    bound: Bound,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

impl Collector {
    async fn start(dir: &Path, tls: &[&str]) -> Collector {
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
            "--wal-fsync",
            "false",
            "--idle-window",
            "200ms",
            "--data-dir",
            data.to_str().unwrap(),
        ];
        args.extend_from_slice(tls);
        let config = Config::try_parse_from(args).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let (bound_tx, bound_rx) = oneshot::channel();
        let done = tokio::spawn(async move {
            run(
                config,
                async {
                    let _ = stopped.await;
                },
                move |b| {
                    let _ = bound_tx.send(b);
                },
            )
            .await
            .unwrap();
        });
        Collector {
            bound: bound_rx.await.unwrap(),
            stop: Some(stop),
            done,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = (&mut self.done).await;
    }
}

fn client(ca: &Path, identity: Option<(std::path::PathBuf, std::path::PathBuf)>) -> ClientTls {
    ClientTls::load(ClientTlsFiles {
        ca: ca.to_owned(),
        identity,
        server_name: Some("localhost".into()),
    })
    .unwrap()
}

fn channel(addr: SocketAddr, tls: &ClientTls) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector_lazy(tls.connector())
}

/// Waits until the trace (hex id) is stored, read through the gRPC Query
/// service over TLS; returns its span count.
async fn stored_spans(addr: SocketAddr, tls: &ClientTls, trace_hex: &str) -> usize {
    let id = (0..16)
        .map(|i| u8::from_str_radix(&trace_hex[2 * i..2 * i + 2], 16).unwrap())
        .collect::<Vec<u8>>();
    let mut q = pb::query_client::QueryClient::new(channel(addr, tls));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = q
            .get_trace(pb::GetTraceRequest {
                trace_id: id.clone(),
            })
            .await;
        match got {
            Ok(t) if !t.get_ref().spans.is_empty() => return t.into_inner().spans.len(),
            _ if Instant::now() > deadline => panic!("trace {trace_hex} never stored"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_otel_sdk_exports_over_tls_with_the_ca_and_fails_without() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "clew");
    let (cert, key) = pki.server("collector", &["localhost", "127.0.0.1"]);
    let c = Collector::start(
        dir.path(),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    )
    .await;
    let https = format!("https://localhost:{}/v1/traces", c.bound.http.port());
    let grpc: SocketAddr = c.bound.grpc;
    let ids = clew_collector::testing::otel_sdk_send_tls(
        grpc,
        &https,
        Some(&pki.ca),
        Duration::from_secs(20),
    )
    .await
    .expect("exports over TLS with the CA");
    let tls = client(&pki.ca, None);
    for key in ["grpc", "http", "grpc-gzip", "http-gzip"] {
        let trace = ids[key].as_str().unwrap();
        assert_eq!(stored_spans(c.bound.grpc, &tls, trace).await, 2, "{key}");
    }
    // A client that does not know TLS is on (plain-text exporters), and
    // one that does not trust the CA, both fail.
    let plain = format!("http://localhost:{}/v1/traces", c.bound.http.port());
    let short = Duration::from_secs(3);
    assert!(
        clew_collector::testing::otel_sdk_send_tls(grpc, &plain, None, short)
            .await
            .is_err()
    );
    let other = Pki::new(dir.path(), "other");
    assert!(
        clew_collector::testing::otel_sdk_send_tls(grpc, &https, Some(&other.ca), short)
            .await
            .is_err()
    );
    c.stop().await;
}

fn span(trace: u8) -> pb::Span {
    pb::Span {
        trace_id: vec![trace; 16],
        span_id: vec![trace; 8],
        name: "op".into(),
        service: "svc".into(),
        start_time_unix_nano: 1,
        end_time_unix_nano: 2,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_takes_spans_only_with_a_certificate_from_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "clew");
    let (cert, key) = pki.server("collector", &["localhost"]);
    let c = Collector::start(
        dir.path(),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--tls-client-ca",
            pki.ca.to_str().unwrap(),
        ],
    )
    .await;
    let export = |tls: ClientTls, trace: u8| {
        let ch = channel(c.bound.grpc, &tls);
        async move {
            pb::collector_client::CollectorClient::new(ch)
                .export(pb::ExportRequest {
                    spans: vec![span(trace)],
                })
                .await
        }
    };
    let sidecar = client(&pki.ca, Some(pki.client("sidecar", "sidecar")));
    assert!(export(sidecar.clone(), 1).await.is_ok());
    assert!(
        export(client(&pki.ca, None), 2).await.is_err(),
        "no client certificate"
    );
    let other = Pki::new(dir.path(), "other");
    let intruder = client(&pki.ca, Some(other.client("intruder", "intruder")));
    assert!(
        export(intruder, 3).await.is_err(),
        "another CA's certificate"
    );
    assert_eq!(
        stored_spans(c.bound.grpc, &sidecar, &"01".repeat(16)).await,
        1
    );
    c.stop().await;
}
