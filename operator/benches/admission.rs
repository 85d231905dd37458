//! The operator's hot paths: one pod admission (decide, inject, JSON patch) in process and
//! over HTTPS on a kept-alive connection, and building every child of a TraceCollector.
//!
//! `cargo bench -p clew-operator --bench admission`

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clew_operator::crd::{TraceCollector, TraceCollectorSpec};
use clew_operator::desired::{self, Defaults};
use clew_operator::metrics::Metrics;
use clew_operator::webhook::{self, WebhookState};
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionReview};
use kube::runtime::{reflector, watcher};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use serde_json::json;

fn ok<T, E: std::fmt::Debug>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e:?}"))
}

fn collector() -> TraceCollector {
    let spec: TraceCollectorSpec = ok(serde_json::from_str("{}"));
    let mut tc = TraceCollector::new("main", spec);
    tc.metadata.namespace = Some("shop".into());
    tc.metadata.uid = Some("uid".into());
    tc
}

fn review_body() -> Vec<u8> {
    ok(serde_json::to_vec(&json!({
        "kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": "bench", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop", "operation": "CREATE", "userInfo": {"username": "bench"},
            "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"generateName": "service-a-6c9d7f8b5-", "namespace": "shop",
                             "labels": {"app.kubernetes.io/name": "service-a"},
                             "annotations": {"sidecar.clew.dev/inject": "true"}},
                "spec": {"containers": [{"name": "app", "image": "ghcr.io/clew-dev/clew:bench",
                                         "env": [{"name": "A", "value": "1"}]}]}
            },
            "oldObject": null, "dryRun": false
        }
    })))
}

fn defaults() -> Defaults {
    Defaults {
        image: "ghcr.io/clew-dev/clew:bench".into(),
    }
}

fn state() -> (WebhookState, reflector::store::Writer<TraceCollector>) {
    let (collectors, mut w) = reflector::store();
    w.apply_watcher_event(&watcher::Event::Apply(collector()));
    let (namespaces, _) = reflector::store();
    let state = WebhookState {
        collectors,
        namespaces,
        defaults: defaults(),
        native_sidecars: true,
        metrics: Metrics::new(),
        recorder: None,
        tls: None,
    };
    (state, w)
}

fn in_process(c: &mut Criterion) {
    let (state, _w) = state();
    let body = review_body();
    c.bench_function("admit_in_process", |b| {
        b.iter(|| {
            let review: AdmissionReview<Pod> = ok(serde_json::from_slice(black_box(&body)));
            let req: AdmissionRequest<Pod> = ok(review.try_into());
            let (resp, _) = webhook::admit(&state, &req);
            black_box(webhook::review_json(resp))
        })
    });
    let tc = collector();
    let d = defaults();
    c.bench_function("desired_children", |b| {
        b.iter(|| {
            let t = black_box(&tc);
            black_box((
                desired::desired_config_map(t),
                desired::desired_deployment(t, &d),
                desired::desired_service(t),
                desired::desired_headless_service(t),
                desired::desired_pdb(t),
                desired::desired_redis(t),
                desired::desired_redis_service(t),
                desired::desired_visualizer(t, &d),
                desired::desired_visualizer_service(t),
            ))
        })
    });
}

fn over_https(c: &mut Criterion) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build());
    let (state, _w) = state();
    let bundle = ok(clew_operator::certs::generate(
        "wh",
        "ns",
        time::OffsetDateTime::now_utc(),
        Duration::from_secs(3600),
    ));
    let mut sender = rt.block_on(async {
        let tls = ok(axum_server::tls_rustls::RustlsConfig::from_pem(
            bundle.cert_pem.into_bytes(),
            bundle.key_pem.into_bytes(),
        )
        .await);
        let handle = axum_server::Handle::new();
        let addr: SocketAddr = ok("127.0.0.1:0".parse());
        let server = axum_server::bind_rustls(addr, tls)
            .handle(handle.clone())
            .serve(webhook::app(Arc::new(state)).into_make_service());
        tokio::spawn(server);
        let addr = handle
            .listening()
            .await
            .unwrap_or_else(|| panic!("not listening"));
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(bundle.ca_pem.as_bytes()).flatten() {
            ok(roots.add(cert));
        }
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = ok(tokio::net::TcpStream::connect(addr).await);
        let name = ok(ServerName::try_from("wh.ns.svc"));
        let tls = ok(tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await);
        let (sender, conn) = ok(hyper::client::conn::http1::handshake(TokioIo::new(tls)).await);
        tokio::spawn(conn);
        sender
    });
    let body = Bytes::from(review_body());
    c.bench_function("admit_over_https_keepalive", |b| {
        b.iter(|| {
            rt.block_on(async {
                let req = ok(http::Request::post("/mutate")
                    .header("content-type", "application/json")
                    .body(Full::new(body.clone())));
                // HTTP/1: the connection must have finished the previous exchange.
                ok(sender.ready().await);
                let resp = ok(sender.send_request(req).await);
                black_box(ok(resp.into_body().collect().await).to_bytes())
            })
        })
    });
}

criterion_group!(benches, in_process, over_https);
criterion_main!(benches);
