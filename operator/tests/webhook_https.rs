#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The sidecar-injection webhook over real HTTPS, fed AdmissionReview v1 requests shaped like
//! the API server's. The JSON patch it answers is applied to the original pod, and the result
//! must be a valid Kubernetes Pod (it round-trips through the typed `Pod` without losing or
//! mistyping a field).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use clew_operator::certs;
use clew_operator::crd::{TraceCollector, TraceCollectorSpec};
use clew_operator::desired::Defaults;
use clew_operator::metrics::Metrics;
use clew_operator::webhook::{self, WebhookState};
use clew_runtime::net::ConnLimits;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::runtime::{reflector, watcher};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use serde_json::{Value, json};

const SERVICE: &str = "clew-operator-webhook";
const NAMESPACE: &str = "clew-system";

struct Server {
    addr: SocketAddr,
    ca_pem: String,
    metrics: Metrics,
    handle: axum_server::Handle<SocketAddr>,
    _caches: (
        reflector::store::Writer<TraceCollector>,
        reflector::store::Writer<Namespace>,
    ),
}

impl Drop for Server {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

fn collector(name: &str, ns: &str) -> TraceCollector {
    let spec: TraceCollectorSpec = serde_json::from_str("{}").unwrap();
    let mut tc = TraceCollector::new(name, spec);
    tc.metadata.namespace = Some(ns.to_owned());
    tc.metadata.uid = Some(format!("uid-{name}"));
    tc
}

async fn start(native: bool) -> Server {
    start_with(native, ConnLimits::default()).await
}

async fn start_with(native: bool, limits: ConnLimits) -> Server {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let bundle = certs::generate(
        SERVICE,
        NAMESPACE,
        time::OffsetDateTime::now_utc(),
        Duration::from_secs(86400),
    )
    .unwrap();

    let (collectors, mut w) = reflector::store();
    w.apply_watcher_event(&watcher::Event::Apply(collector("main", "shop")));
    w.apply_watcher_event(&watcher::Event::Apply(collector(
        "central",
        "observability",
    )));
    let (namespaces, mut nw) = reflector::store();
    let mut ns: Namespace = serde_json::from_value(json!({
        "metadata": {"name": "payments", "annotations": {"sidecar.clew.dev/inject": "observability/central"}}
    }))
    .unwrap();
    nw.apply_watcher_event(&watcher::Event::Apply(ns.clone()));
    ns.metadata.name = Some("shop".into());
    ns.metadata.annotations = None;
    nw.apply_watcher_event(&watcher::Event::Apply(ns));

    let metrics = Metrics::new();
    let state = Arc::new(WebhookState {
        collectors,
        namespaces,
        defaults: Defaults {
            image: "ghcr.io/clew-dev/clew:test".into(),
        },
        native_sidecars: native,
        metrics: metrics.clone(),
        recorder: None,
        tls: None,
    });
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem(
        bundle.cert_pem.clone().into_bytes(),
        bundle.key_pem.clone().into_bytes(),
    )
    .await
    .unwrap();
    let handle = axum_server::Handle::new();
    let addr = "127.0.0.1:0".parse::<SocketAddr>().unwrap();
    let server = clew_operator::listen::webhook_server(addr, tls, &limits, &metrics.conns)
        .handle(handle.clone())
        .serve(webhook::app(state).into_make_service());
    tokio::spawn(server);
    let addr = handle.listening().await.expect("webhook listening");
    Server {
        addr,
        ca_pem: bundle.ca_pem,
        metrics,
        handle,
        _caches: (w, nw),
    }
}

/// POSTs `body` to /mutate over TLS, verifying the server against `ca_pem` under the Service's
/// DNS name, as the API server does.
async fn post(addr: SocketAddr, ca_pem: &str, body: Vec<u8>) -> Result<(u16, Value), String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(format!("{SERVICE}.{NAMESPACE}.svc")).unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("/mutate?timeout=10s")
        .header("content-type", "application/json")
        .header("host", format!("{SERVICE}.{NAMESPACE}.svc"))
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Ok((status, serde_json::from_slice(&bytes).unwrap()))
}

fn pod(ns: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "service-a-6c9d7f8b5-",
            "namespace": ns,
            "labels": {"app.kubernetes.io/name": "service-a", "pod-template-hash": "6c9d7f8b5"},
            "annotations": annotations,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "service-a-6c9d7f8b5",
                                 "uid": "0b1c", "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {
            "containers": [{
                "name": "app",
                "image": "ghcr.io/clew-dev/clew:test",
                "command": ["/usr/local/bin/service-a"],
                "ports": [{"containerPort": 8000, "name": "http", "protocol": "TCP"}],
                "env": [{"name": "CLEW_SERVICE_B_URL", "value": "http://service-b:8001"}],
                "resources": {"requests": {"cpu": "50m"}},
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent",
                "volumeMounts": [{"name": "kube-api-access-x", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]
            }],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
            "priority": 0,
            "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority",
            "volumes": [{"name": "kube-api-access-x", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}]
        },
        "status": {}
    })
}

/// An AdmissionReview v1 request as kube-apiserver sends it for a Pod CREATE.
fn review(uid: &str, operation: &str, ns: &str, object: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "",
            "namespace": ns,
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                         "uid": "a1b2", "groups": ["system:serviceaccounts", "system:authenticated"]},
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    }))
    .unwrap()
}

/// The response of a review, and the pod after applying its patch (if any).
fn patched(resp: &Value, original: &Value) -> Option<Value> {
    assert_eq!(resp["kind"], "AdmissionReview");
    assert_eq!(resp["apiVersion"], "admission.k8s.io/v1");
    let r = &resp["response"];
    assert_eq!(r["allowed"], true, "{resp}");
    let patch = r.get("patch")?;
    assert_eq!(r["patchType"], "JSONPatch");
    // A Go []byte in JSON: base64.
    let b64 = patch
        .as_str()
        .unwrap_or_else(|| panic!("patch is not a base64 string: {patch}"));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    let mut doc = original.clone();
    json_patch::patch(&mut doc, &patch).unwrap();
    // A valid Pod: the typed Pod reads it, and writing it back loses and changes nothing.
    let typed: Pod = serde_json::from_value(doc.clone()).expect("patched object is a Pod");
    assert_eq!(
        serde_json::to_value(&typed).unwrap(),
        doc,
        "patched pod has unknown or mistyped fields"
    );
    Some(doc)
}

fn env_names(container: &Value) -> Vec<String> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn native_sidecar_is_injected_over_https() {
    let s = start(true).await;
    let original = pod("shop", json!({"sidecar.clew.dev/inject": "true"}));
    let (code, resp) = post(
        s.addr,
        &s.ca_pem,
        review("req-1", "CREATE", "shop", original.clone()),
    )
    .await
    .unwrap();
    assert_eq!(code, 200);
    assert_eq!(resp["response"]["uid"], "req-1");
    let doc = patched(&resp, &original).expect("a patch");
    let sidecar = &doc["spec"]["initContainers"][0];
    assert_eq!(sidecar["name"], "clew-sidecar");
    assert_eq!(sidecar["restartPolicy"], "Always");
    assert_eq!(sidecar["command"][0], "/usr/local/bin/clew-sidecar");
    let app = &doc["spec"]["containers"][0];
    let names = env_names(app);
    assert_eq!(
        names[0], "CLEW_SERVICE_B_URL",
        "the app's own env stays first"
    );
    for n in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_SERVICE_NAME",
        "OTEL_RESOURCE_ATTRIBUTES",
    ] {
        assert!(names.contains(&n.to_owned()), "{n} missing in {names:?}");
    }
    let svc = app["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "OTEL_SERVICE_NAME")
        .unwrap();
    assert_eq!(svc["value"], "service-a");
    assert_eq!(
        doc["metadata"]["annotations"]["sidecar.clew.dev/status"],
        "injected"
    );
    assert_eq!(
        doc["metadata"]["annotations"]["sidecar.clew.dev/collector"],
        "shop/main"
    );
    // Everything the pod had is still there.
    assert_eq!(doc["spec"]["volumes"][0]["name"], "kube-api-access-x");
    assert_eq!(doc["spec"]["containers"].as_array().unwrap().len(), 1);

    // The injected pod, sent again (e.g. a re-invocation), is left alone.
    let (_, again) = post(
        s.addr,
        &s.ca_pem,
        review("req-2", "CREATE", "shop", doc.clone()),
    )
    .await
    .unwrap();
    assert!(patched(&again, &doc).is_none(), "injected twice: {again}");
    let m = s.metrics.render();
    assert!(
        m.contains(r#"clew_operator_admissions_total{result="injected"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"clew_operator_admissions_total{result="already_injected"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn older_clusters_get_a_regular_container_and_namespace_defaults_apply() {
    let s = start(false).await;
    // No pod annotation: the payments namespace names observability/central.
    let original = pod("payments", json!({}));
    let (_, resp) = post(
        s.addr,
        &s.ca_pem,
        review("req-3", "CREATE", "payments", original.clone()),
    )
    .await
    .unwrap();
    let doc = patched(&resp, &original).expect("a patch");
    assert!(doc["spec"].get("initContainers").is_none());
    let containers = doc["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 2);
    assert_eq!(containers[1]["name"], "clew-sidecar");
    assert!(containers[1].get("restartPolicy").is_none());
    let dns = containers[1]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "CLEW_SIDECAR_COLLECTOR_DNS")
        .unwrap();
    assert_eq!(
        dns["value"],
        "central-collector-headless.observability.svc:4317"
    );
}

#[tokio::test]
async fn a_pod_that_cannot_be_injected_is_admitted_and_annotated() {
    let s = start(true).await;
    let original = pod("shop", json!({"sidecar.clew.dev/inject": "missing"}));
    let (_, resp) = post(
        s.addr,
        &s.ca_pem,
        review("req-4", "CREATE", "shop", original.clone()),
    )
    .await
    .unwrap();
    let doc = patched(&resp, &original).expect("an annotation patch");
    assert_eq!(
        doc["metadata"]["annotations"]["sidecar.clew.dev/status"],
        "skipped: TraceCollector shop/missing not found"
    );
    assert!(doc["spec"].get("initContainers").is_none());
    assert_eq!(doc["spec"]["containers"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn unannotated_pods_and_updates_pass_through_unchanged() {
    let s = start(true).await;
    let plain = pod("shop", json!({}));
    let (_, resp) = post(
        s.addr,
        &s.ca_pem,
        review("req-5", "CREATE", "shop", plain.clone()),
    )
    .await
    .unwrap();
    assert!(patched(&resp, &plain).is_none());
    let annotated = pod("shop", json!({"sidecar.clew.dev/inject": "true"}));
    let (_, resp) = post(
        s.addr,
        &s.ca_pem,
        review("req-6", "UPDATE", "shop", annotated.clone()),
    )
    .await
    .unwrap();
    assert!(patched(&resp, &annotated).is_none());
    assert_eq!(resp["response"]["uid"], "req-6");
}

#[tokio::test]
async fn garbage_is_a_clear_400_and_untrusted_clients_cannot_connect() {
    let s = start(true).await;
    let (code, resp) = post(
        s.addr,
        &s.ca_pem,
        b"{\"kind\": \"AdmissionReview\", \"request\": 7}".to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(code, 400);
    assert_eq!(resp["response"]["allowed"], false);
    let msg = resp["response"]["status"]["message"].as_str().unwrap();
    assert!(msg.starts_with("not an AdmissionReview of a Pod"), "{msg}");
    // Another CA's certificate does not verify the webhook.
    let other = certs::generate(
        SERVICE,
        NAMESPACE,
        time::OffsetDateTime::now_utc(),
        Duration::from_secs(3600),
    )
    .unwrap();
    let err = post(
        s.addr,
        &other.ca_pem,
        review("x", "CREATE", "shop", pod("shop", json!({}))),
    )
    .await
    .unwrap_err();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}

/// Waits (bounded) until `conn` sees the server close it.
async fn closed_by_server(conn: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

fn conn_metric(s: &Server, name: &str) -> u64 {
    let prefix = format!("{name}{{listener=\"webhook\"}} ");
    s.metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0)
}

#[tokio::test]
async fn excess_and_idle_connections_are_closed_and_https_still_answers() {
    let idle = Duration::from_millis(500);
    let s = start_with(
        true,
        ConnLimits {
            max_connections: 2,
            idle_timeout: idle,
            // Nothing is evictable: the excess connection is refused.
            evict_after: Duration::from_secs(60),
            ..ConnLimits::default()
        },
    )
    .await;
    // Two connections that never start TLS hold the limit.
    let mut a = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let mut b = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while conn_metric(&s, "clew_connections_open") < 2 {
        assert!(std::time::Instant::now() < deadline, "not admitted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    assert!(
        closed_by_server(&mut c).await,
        "the excess connection stays open"
    );
    assert_eq!(conn_metric(&s, "clew_connections_refused_total"), 1);
    // The silent ones are closed after the idle timeout...
    assert!(closed_by_server(&mut a).await && closed_by_server(&mut b).await);
    assert_eq!(conn_metric(&s, "clew_connections_idle_closed_total"), 2);
    // ...and the webhook answers again.
    let body = review(
        "uid-1",
        "CREATE",
        "shop",
        pod("shop", json!({"sidecar.clew.dev/inject": "true"})),
    );
    let (code, _) = post(s.addr, &s.ca_pem, body).await.unwrap();
    assert_eq!(code, 200);
}
