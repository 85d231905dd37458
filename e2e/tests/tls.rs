#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A sidecar streams to a collector over mTLS while the collector's
//! certificate files are replaced (as a rotated Kubernetes Secret is):
//! ingest goes on, a new connection is served the new certificate, and
//! every span the sidecar acknowledged is stored exactly once. The
//! collector and the sidecar are the real binaries; the certificates are
//! made here (rcgen).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clew_e2e::chaos::WorkDir;
use clew_e2e::http::HttpClient;
use clew_e2e::jaeger::metric;
use clew_e2e::proc::{Proc, free_port, wait_for};
use clew_e2e::spanload::{Load, LoadShape};
use clew_proto::v1 as pb;
use clew_runtime::tls::testing::Pki;
use clew_runtime::tls::{ClientTls, ClientTlsFiles};

fn s(v: &str) -> String {
    v.to_string()
}

fn path(p: &std::path::Path) -> String {
    p.display().to_string()
}

/// The leaf certificate a new TLS connection to `addr` is served.
async fn served_leaf(addr: SocketAddr, tls: &ClientTls) -> Vec<u8> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = tls.server_name("localhost").unwrap();
    let s = tokio_rustls::TlsConnector::from(tls.config())
        .connect(name, tcp)
        .await
        .unwrap();
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn leaf_in(file: &std::path::Path) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::pem_file_iter(file)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

/// Reads every span of the acknowledged requests back through the gRPC
/// Query service over TLS: (expected, stored, missing, duplicates).
async fn tally(
    grpc: SocketAddr,
    tls: &ClientTls,
    traces: Vec<(String, Vec<String>)>,
) -> (usize, usize, usize, usize) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect_with_connector_lazy(tls.connector());
    let mut q = pb::query_client::QueryClient::new(channel);
    let (mut expected, mut stored, mut missing, mut duplicates) = (0, 0, 0, 0);
    for (trace, spans) in traces {
        let id: Vec<u8> = (0..16)
            .map(|i| u8::from_str_radix(&trace[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let got = q
            .get_trace(pb::GetTraceRequest { trace_id: id })
            .await
            .map(|t| t.into_inner().spans)
            .unwrap_or_default();
        let ids: Vec<String> = got
            .iter()
            .map(|s| s.span_id.iter().map(|b| format!("{b:02x}")).collect())
            .collect();
        let unique: BTreeSet<&String> = ids.iter().collect();
        duplicates += ids.len() - unique.len();
        for want in &spans {
            expected += 1;
            if unique.contains(want) {
                stored += 1;
            } else {
                missing += 1;
            }
        }
    }
    (expected, stored, missing, duplicates)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_while_a_sidecar_streams_over_mtls() {
    let dir = WorkDir::new("clew-e2e-tls-", "rotate").unwrap();
    let pki = Pki::new(&dir.0, "clew");
    let (cert, key) = pki.server("collector", &["localhost", "127.0.0.1"]);
    let (sidecar_cert, sidecar_key) = pki.client("sidecar", "sidecar");
    let (grpc, http, query, ops) = (free_port(), free_port(), free_port(), free_port());
    let at = |p: u16| format!("127.0.0.1:{p}");
    let _collector = Proc::spawn(
        "collector",
        "clew-collector",
        &[],
        &[
            (s("CLEW_GRPC_ADDR"), at(grpc)),
            (s("CLEW_HTTP_ADDR"), at(http)),
            (s("CLEW_QUERY_ADDR"), at(query)),
            (s("CLEW_OPS_ADDR"), at(ops)),
            (s("CLEW_STORAGE"), s("memory")),
            (s("CLEW_DATA_DIR"), path(&dir.0.join("collector"))),
            (s("CLEW_IDLE_WINDOW"), s("500ms")),
            (s("CLEW_WAL_FSYNC"), s("false")),
            (s("CLEW_TLS_CERT"), path(&cert)),
            (s("CLEW_TLS_KEY"), path(&key)),
            (s("CLEW_TLS_CLIENT_CA"), path(&pki.ca)),
            (s("CLEW_TLS_RELOAD_INTERVAL"), s("200ms")),
        ],
        Some(&dir.0.join("collector.log")),
    )
    .unwrap();
    let http_client = HttpClient::new(Duration::from_secs(5));
    let ops_url = format!("http://127.0.0.1:{ops}");
    let ready = format!("{ops_url}/readyz");
    wait_for("the collector", Duration::from_secs(60), || {
        http_client.ok(&ready)
    })
    .await
    .unwrap();
    let (sgrpc, shttp, sops) = (free_port(), free_port(), free_port());
    let _sidecar = Proc::spawn(
        "sidecar",
        "clew-sidecar",
        &[],
        &[
            (s("CLEW_SIDECAR_GRPC_ADDR"), at(sgrpc)),
            (s("CLEW_SIDECAR_HTTP_ADDR"), at(shttp)),
            (s("CLEW_SIDECAR_OPS_ADDR"), at(sops)),
            (s("CLEW_SIDECAR_COLLECTORS"), at(grpc)),
            (s("CLEW_SIDECAR_SPILL_DIR"), path(&dir.0.join("spill"))),
            (s("CLEW_SIDECAR_COLLECTOR_CA"), path(&pki.ca)),
            (s("CLEW_SIDECAR_COLLECTOR_CERT"), path(&sidecar_cert)),
            (s("CLEW_SIDECAR_COLLECTOR_KEY"), path(&sidecar_key)),
            (s("CLEW_SIDECAR_COLLECTOR_SERVER_NAME"), s("localhost")),
        ],
        Some(&dir.0.join("sidecar.log")),
    )
    .unwrap();
    let sidecar_ops = format!("http://127.0.0.1:{sops}");
    let healthz = format!("{sidecar_ops}/healthz");
    wait_for("the sidecar", Duration::from_secs(30), || {
        http_client.ok(&healthz)
    })
    .await
    .unwrap();
    let forwarded = || {
        metric(
            &http_client,
            &sidecar_ops,
            "clew_sidecar_spans_forwarded_total",
        )
    };
    let shape = LoadShape::new(1_000);
    let load = Load::start(at(sgrpc).parse().unwrap(), shape).unwrap();
    wait_for(
        "spans forwarded over mTLS",
        Duration::from_secs(30),
        || async { forwarded().await.unwrap_or(0.0) >= 1_000.0 },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The Secret is rotated: new certificate and key at the same paths.
    let probe = Arc::new(
        ClientTls::load(ClientTlsFiles {
            ca: pki.ca.clone(),
            identity: Some(pki.client("probe", "probe")),
            server_name: Some("localhost".into()),
        })
        .unwrap(),
    );
    let old_leaf = served_leaf(at(grpc).parse().unwrap(), &probe).await;
    pki.server("collector", &["localhost", "127.0.0.1"]);
    let new_leaf = leaf_in(&cert);
    assert_ne!(old_leaf, new_leaf);
    let rotated = Instant::now();
    wait_for(
        "the new certificate served",
        Duration::from_secs(10),
        || async { served_leaf(at(grpc).parse().unwrap(), &probe).await == new_leaf },
    )
    .await
    .unwrap();
    let took = rotated.elapsed();
    let before = forwarded().await.unwrap_or(0.0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = load.stop().await.unwrap();
    let after = forwarded().await.unwrap_or(0.0);
    assert!(
        after > before + 1_000.0,
        "ingest stopped after the rotation: {before} → {after}"
    );

    // Everything acknowledged is stored exactly once.
    wait_for("the sidecar to drain", Duration::from_secs(30), || async {
        metric(&http_client, &sidecar_ops, "clew_sidecar_buffer_bytes").await == Some(0.0)
            && metric(&http_client, &sidecar_ops, "clew_sidecar_spill_bytes").await == Some(0.0)
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let traces = report
        .acked
        .iter()
        .flat_map(|&seq| shape.expected_traces(seq))
        .collect();
    let (expected, stored, missing, duplicates) =
        tally(at(grpc).parse().unwrap(), &probe, traces).await;
    println!(
        "TLS rotation: new certificate served {:?} after the files changed; acknowledged {expected} spans ({} of {} requests, refused {:?}), stored {stored}, missing {missing}, duplicates {duplicates}",
        took,
        report.acked.len(),
        report.sent,
        report.refused,
    );
    assert!(expected >= 5_000, "too little load: {expected}");
    assert_eq!((missing, duplicates), (0, 0));
    assert_eq!(report.refused_total(), 0, "the sidecar refused requests");
}
