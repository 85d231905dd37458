//! The mutating admission webhook that injects the clew sidecar into pods (HTTPS, `POST /mutate`).
//!
//! The decision and the mutation are the pure functions of `inject.rs`; this module reads the
//! AdmissionReview, looks collectors and namespaces up in watch-backed caches, answers with a
//! JSON patch, and records why a pod that asked for a sidecar did not get one.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Pod, Secret};
use kube::api::Api;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tracing::{debug, warn};

use crate::certs;
use crate::crd::TraceCollector;
use crate::desired::Defaults;
use crate::inject::{self, Decision, INJECT_ANNOTATION};
use crate::metrics::Metrics;
use crate::tls;

/// What the webhook needs to decide and mutate.
#[derive(Clone)]
pub struct WebhookState {
    /// Every TraceCollector in the cluster (a reflector cache).
    pub collectors: Store<TraceCollector>,
    /// Every namespace (for the namespace-level default annotation).
    pub namespaces: Store<Namespace>,
    /// Operator-level defaults (image).
    pub defaults: Defaults,
    /// Inject native sidecars (Kubernetes 1.29+) rather than regular containers.
    pub native_sidecars: bool,
    /// Operator metrics.
    pub metrics: Metrics,
    /// Publishes an Event for pods that asked for a sidecar and did not get one.
    pub recorder: Option<Recorder>,
    /// Writes the sidecars' TLS Secret into a pod's namespace before a pod of a TraceCollector
    /// with `spec.tls` is injected; without it such pods are not injected.
    pub tls: Option<SidecarTls>,
}

/// What the webhook needs to give sidecars their TLS Secret.
#[derive(Clone)]
pub struct SidecarTls {
    /// The API client.
    pub client: Client,
    /// The operator's CA and what it issues.
    pub pki: tls::Pki,
}

impl std::fmt::Debug for SidecarTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SidecarTls")
            .field("pki", &self.pki)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for WebhookState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookState")
            .field("native_sidecars", &self.native_sidecars)
            .finish_non_exhaustive()
    }
}

/// The webhook's routes: `POST /mutate` and `GET /healthz`.
pub fn app(state: Arc<WebhookState>) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state)
}

fn invalid(msg: &str) -> Response {
    let review = AdmissionResponse::invalid(msg).into_review();
    (StatusCode::BAD_REQUEST, axum::Json(review)).into_response()
}

async fn mutate(State(state): State<Arc<WebhookState>>, body: Bytes) -> Response {
    let review: AdmissionReview<Pod> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            state
                .metrics
                .admissions
                .with_label_values(&["invalid"])
                .inc();
            // serde's message names the offending field; it reveals nothing internal.
            return invalid(&format!("not an AdmissionReview of a Pod: {e}"));
        }
    };
    let req: AdmissionRequest<Pod> = match review.try_into() {
        Ok(r) => r,
        Err(_) => {
            state
                .metrics
                .admissions
                .with_label_values(&["invalid"])
                .inc();
            return invalid("AdmissionReview without a request");
        }
    };
    let (resp, skipped) = match prepare(&state, &req) {
        None => (AdmissionResponse::from(&req), None),
        Some((view, decision)) => {
            let decision = secure(&state, &view, decision).await;
            answer(&state, &req, &view, decision)
        }
    };
    if let (Some((pod, reason)), Some(recorder)) = (skipped, state.recorder.clone()) {
        // Off the request path: the API server is waiting for the answer.
        tokio::spawn(async move { record_skip(&recorder, &pod, &reason).await });
    }
    axum::Json(review_json(resp)).into_response()
}

/// The AdmissionReview response as JSON, with `patch` base64-encoded as the API documents for
/// `[]byte` (kube-rs 5 writes an array of numbers, kube-rs issue #1781).
pub fn review_json(resp: AdmissionResponse) -> serde_json::Value {
    use base64::Engine;
    let patch = resp.patch.clone();
    let mut v = serde_json::to_value(resp.into_review()).unwrap_or_default();
    if let (Some(p), Some(r)) = (patch, v.get_mut("response")) {
        r["patch"] = serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(p));
    }
    v
}

/// Answers one admission request as a pure function: it writes no sidecar TLS Secret (the
/// webhook's handler does, see `secure`). Returns the response and, when a requested sidecar
/// was not injected, the pod and the reason (for an Event).
pub fn admit(
    state: &WebhookState,
    req: &AdmissionRequest<Pod>,
) -> (AdmissionResponse, Option<(Pod, String)>) {
    match prepare(state, req) {
        None => (AdmissionResponse::from(req), None),
        Some((view, decision)) => answer(state, req, &view, decision),
    }
}

/// With `spec.tls`, the sidecar's TLS Secret must be in the pod's namespace before the pod
/// is: written here, before the answer. Failing that the pod is not injected (a pod waiting
/// for a Secret volume forever would be worse than one without a sidecar).
async fn secure(state: &WebhookState, view: &Pod, decision: Decision) -> Decision {
    let Decision::Inject(tc) = decision else {
        return decision;
    };
    if !tc.spec.tls.enabled {
        return Decision::Inject(tc);
    }
    let Some(t) = &state.tls else {
        return Decision::Skip("the webhook cannot write the sidecar's TLS Secret".to_owned());
    };
    let ns = view.namespace().unwrap_or_default();
    match tls::ensure_sidecar(&t.client, &t.pki, &tc, &ns, &state.metrics).await {
        Ok(()) => Decision::Inject(tc),
        Err(e) => {
            warn!(namespace = %ns, error = %e, "writing the sidecar TLS secret");
            Decision::Skip(format!("could not write the sidecar's TLS Secret: {e}"))
        }
    }
}

/// The pod as the webhook sees it (with its namespace) and what to do with it; `None` for
/// anything but the CREATE of a pod.
fn prepare(state: &WebhookState, req: &AdmissionRequest<Pod>) -> Option<(Pod, Decision)> {
    let pod = req
        .object
        .as_ref()
        .filter(|_| req.operation == Operation::Create)?;
    // The object of a CREATE may lack its namespace; the request carries it.
    let mut view = pod.clone();
    if view.metadata.namespace.is_none() {
        view.metadata.namespace = req.namespace.clone();
    }
    let ns = view.namespace().unwrap_or_default();
    let ns_value = state
        .namespaces
        .get(&ObjectRef::new(&ns))
        .and_then(|n| n.annotations().get(INJECT_ANNOTATION).cloned());
    let collectors = state.collectors.state();
    let decision = inject::decide(
        &view,
        ns_value.as_deref(),
        collectors.iter().map(|c| c.as_ref()),
    );
    Some((view, decision))
}

/// The response for a decision: the JSON patch, or the pod admitted unchanged.
fn answer(
    state: &WebhookState,
    req: &AdmissionRequest<Pod>,
    view: &Pod,
    decision: Decision,
) -> (AdmissionResponse, Option<(Pod, String)>) {
    let allow = AdmissionResponse::from(req);
    let Some(pod) = req.object.as_ref() else {
        return (allow, None);
    };
    let ns = view.namespace().unwrap_or_default();
    let (label, mutated, skipped) = match decision {
        Decision::NotRequested => ("not_requested", None, None),
        Decision::AlreadyInjected => ("already_injected", None, None),
        Decision::Inject(tc) => (
            "injected",
            Some(inject::inject(
                pod,
                &tc,
                &state.defaults,
                state.native_sidecars,
            )),
            None,
        ),
        Decision::Skip(reason) => (
            "skipped",
            Some(inject::annotate_skip(pod, &reason)),
            Some((view.clone(), reason)),
        ),
    };
    state.metrics.admissions.with_label_values(&[label]).inc();
    debug!(namespace = %ns, pod = %pod_name(view), result = label, "admission");
    let Some(mutated) = mutated else {
        return (allow, skipped);
    };
    let patch = match (serde_json::to_value(pod), serde_json::to_value(&mutated)) {
        (Ok(a), Ok(b)) => json_patch::diff(&a, &b),
        _ => return (allow, skipped),
    };
    match allow.clone().with_patch(patch) {
        Ok(r) => (r, skipped),
        Err(e) => {
            // Never block a pod: admit it unchanged.
            warn!(error = %e, "could not encode the patch");
            (allow, skipped)
        }
    }
}

fn pod_name(pod: &Pod) -> String {
    pod.metadata
        .name
        .clone()
        .or_else(|| pod.metadata.generate_name.clone())
        .unwrap_or_default()
}

/// What the Event is about: the pod when it has a name; a pod created from `generateName` has
/// none yet at admission, so its controller (e.g. the ReplicaSet), where `kubectl describe`
/// shows it.
fn event_subject(pod: &Pod) -> ObjectReference {
    let owner = pod
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true));
    match (&pod.metadata.name, owner) {
        (None, Some(o)) => ObjectReference {
            api_version: Some(o.api_version.clone()),
            kind: Some(o.kind.clone()),
            name: Some(o.name.clone()),
            uid: Some(o.uid.clone()),
            namespace: pod.namespace(),
            ..ObjectReference::default()
        },
        _ => ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Pod".to_owned()),
            name: Some(pod_name(pod)),
            namespace: pod.namespace(),
            ..ObjectReference::default()
        },
    }
}

pub(crate) async fn record_skip(recorder: &Recorder, pod: &Pod, reason: &str) {
    let reference = event_subject(pod);
    let note = format!("pod {}: {reason}", pod_name(pod));
    let ev = Event {
        type_: EventType::Warning,
        reason: "SidecarNotInjected".to_owned(),
        note: Some(note.chars().take(1000).collect()),
        action: "InjectSidecar".to_owned(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, &reference).await {
        warn!(error = %e, "could not publish the SidecarNotInjected event");
    }
}

/// Whether the API server supports native sidecars, from its `/version`.
pub async fn detect_native_sidecars(client: &Client) -> Result<bool, kube::Error> {
    let v = client.apiserver_version().await?;
    Ok(inject::supports_native_sidecars(&v.major, &v.minor))
}

/// Waits until the TLS Secret exists and holds a serving pair; returns it.
pub async fn wait_for_tls(client: &Client, namespace: &str, secret: &str) -> (String, String) {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut logged = false;
    loop {
        match api.get_opt(secret).await {
            Ok(Some(s)) => match certs::serving_pair(&s) {
                Ok(pair) => return pair,
                Err(e) => warn!(error = %e, "webhook TLS secret not usable yet"),
            },
            Ok(None) if !logged => {
                tracing::info!(secret, "waiting for the webhook TLS secret");
                logged = true;
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "reading the webhook TLS secret"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Reloads the serving certificate whenever the Secret changes (rotation, cert-manager renewal).
pub async fn keep_tls_current(
    client: Client,
    namespace: String,
    secret: String,
    tls: axum_server::tls_rustls::RustlsConfig,
    mut current: String,
    every: Duration,
) {
    let api: Api<Secret> = Api::namespaced(client, &namespace);
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let pair = match api.get_opt(&secret).await {
            Ok(Some(s)) => certs::serving_pair(&s),
            Ok(None) => continue,
            Err(e) => {
                warn!(error = %e, "reading the webhook TLS secret");
                continue;
            }
        };
        match pair {
            Ok((cert, key)) if cert != current => {
                match tls
                    .reload_from_pem(cert.clone().into_bytes(), key.into_bytes())
                    .await
                {
                    Ok(()) => {
                        tracing::info!("reloaded the webhook serving certificate");
                        current = cert;
                    }
                    Err(e) => warn!(error = %e, "could not load the new webhook certificate"),
                }
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "webhook TLS secret unusable"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::Context;
    use crate::fixtures::NS;

    #[tokio::test]
    async fn a_skipped_pod_gets_a_warning_event() {
        let (ctx, mut v) = Context::test();
        let mut pod = Pod::default();
        pod.metadata.generate_name = Some("shop-7d9f-".to_owned());
        pod.metadata.namespace = Some(NS.to_owned());
        let server = tokio::spawn(async move {
            let ev = v.event().await;
            (v, ev)
        });
        record_skip(&ctx.recorder, &pod, "TraceCollector traces/x not found").await;
        let (mut v, ev) = server.await.unwrap();
        v.assert_silent();
        assert_eq!(ev["type"], "Warning");
        assert_eq!(ev["reason"], "SidecarNotInjected");
        assert_eq!(
            ev["note"],
            "pod shop-7d9f-: TraceCollector traces/x not found"
        );
        assert_eq!(ev["regarding"]["kind"], "Pod");
        assert_eq!(ev["regarding"]["name"], "shop-7d9f-");
    }

    #[test]
    fn events_for_unnamed_pods_go_to_their_controller() {
        let mut pod = Pod::default();
        pod.metadata.generate_name = Some("shop-7d9f-".to_owned());
        pod.metadata.namespace = Some(NS.to_owned());
        pod.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "apps/v1".to_owned(),
                kind: "ReplicaSet".to_owned(),
                name: "shop-7d9f".to_owned(),
                uid: "rs-uid".to_owned(),
                controller: Some(true),
                ..Default::default()
            },
        ]);
        let r = event_subject(&pod);
        assert_eq!(r.kind.as_deref(), Some("ReplicaSet"));
        assert_eq!(r.name.as_deref(), Some("shop-7d9f"));
        assert_eq!(r.uid.as_deref(), Some("rs-uid"));
        pod.metadata.name = Some("shop-7d9f-abcde".to_owned());
        assert_eq!(event_subject(&pod).kind.as_deref(), Some("Pod"));
    }

    async fn handshake(addr: std::net::SocketAddr, ca_pem: &str) -> bool {
        use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("svc.clew-system.svc").unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_rotated_secret_is_served_without_a_restart() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let now = time::OffsetDateTime::now_utc();
        let day = Duration::from_secs(86400);
        let old = certs::generate("svc", "clew-system", now, day).unwrap();
        let new = certs::generate("svc", "clew-system", now, day).unwrap();
        let tls = axum_server::tls_rustls::RustlsConfig::from_pem(
            old.cert_pem.clone().into_bytes(),
            old.key_pem.clone().into_bytes(),
        )
        .await
        .unwrap();
        let handle = axum_server::Handle::new();
        tokio::spawn(
            axum_server::bind_rustls("127.0.0.1:0".parse().unwrap(), tls.clone())
                .handle(handle.clone())
                .serve(Router::new().into_make_service()),
        );
        let addr = handle.listening().await.unwrap();
        assert!(handshake(addr, &old.ca_pem).await);
        assert!(!handshake(addr, &new.ca_pem).await);

        let (ctx, mut v) = Context::test();
        let cfg = certs::CertConfig {
            namespace: "clew-system".into(),
            service: "svc".into(),
            secret: "tls".into(),
            webhook_configuration: "clew-operator".into(),
            validity: day,
            renew_before: day / 2,
        };
        let secret =
            serde_json::to_value(certs::secret_for(&cfg, &new, Some(&old.ca_pem))).unwrap();
        let server = tokio::spawn(async move {
            v.expect(
                http::Method::GET,
                "/api/v1/namespaces/clew-system/secrets/tls",
            )
            .await
            .ok(&secret);
            v
        });
        let reloader = tokio::spawn(keep_tls_current(
            ctx.client.clone(),
            "clew-system".into(),
            "tls".into(),
            tls,
            old.cert_pem.clone(),
            Duration::from_secs(3600),
        ));
        let _v = server.await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !handshake(addr, &new.ca_pem).await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "new certificate never served"
            );
            tokio::task::yield_now().await;
        }
        assert!(!handshake(addr, &old.ca_pem).await);
        reloader.abort();
        handle.shutdown();
    }

    /// An AdmissionReview v1 request as kube-apiserver sends it for a Pod CREATE in `ns`.
    fn review(ns: &str, pod: &serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "kind": "AdmissionReview",
            "apiVersion": "admission.k8s.io/v1",
            "request": {
                "uid": "0df28fbd-5f5f-11e8-a0b5-0800275bfc01",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                "name": "",
                "namespace": ns,
                "operation": "CREATE",
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                             "uid": "a1b2", "groups": ["system:serviceaccounts", "system:authenticated"]},
                "object": pod,
                "oldObject": null,
                "dryRun": false,
                "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
            }
        }))
        .unwrap()
    }

    fn app_pod() -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "shop-7d9f8b6c4-", "namespace": "shop",
                         "labels": {"app": "shop"},
                         "annotations": {"sidecar.clew.dev/inject": "traces/main"}},
            "spec": {"containers": [{"name": "app", "image": "shop:1"}]}
        })
    }

    /// The webhook's state with one TraceCollector `traces/main` and the mock API server.
    fn state_with(
        tc: TraceCollector,
    ) -> (
        Arc<WebhookState>,
        crate::fixtures::ApiServerVerifier,
        kube::runtime::reflector::store::Writer<TraceCollector>,
    ) {
        use kube::runtime::{reflector, watcher};
        let (ctx, v) = Context::test();
        let (collectors, mut w) = reflector::store();
        w.apply_watcher_event(&watcher::Event::Apply(tc));
        let (namespaces, _nw) = reflector::store();
        let state = WebhookState {
            collectors,
            namespaces,
            defaults: crate::fixtures::defaults(),
            native_sidecars: true,
            metrics: ctx.metrics.clone(),
            recorder: None,
            tls: Some(SidecarTls {
                client: ctx.client.clone(),
                pki: crate::fixtures::pki(),
            }),
        };
        (Arc::new(state), v, w)
    }

    /// Posts the review to `/mutate`; returns the pod after the answer's patch (if any).
    async fn mutate_pod(state: Arc<WebhookState>, pod: &serde_json::Value) -> serde_json::Value {
        use base64::Engine;
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let req = axum::http::Request::post("/mutate")
            .header("content-type", "application/json")
            .body(axum::body::Body::from(review("shop", pod)))
            .unwrap();
        let resp = app(state).oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let review: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(review["response"]["allowed"], true);
        let mut doc = pod.clone();
        if let Some(p) = review["response"]["patch"].as_str() {
            let bytes = base64::engine::general_purpose::STANDARD.decode(p).unwrap();
            let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
            json_patch::patch(&mut doc, &patch).unwrap();
        }
        doc
    }

    fn ca_secret_json() -> serde_json::Value {
        let cfg = certs::CertConfig {
            namespace: "clew-system".into(),
            service: "clew-operator-webhook".into(),
            secret: crate::fixtures::CA_SECRET.into(),
            webhook_configuration: "clew-operator".into(),
            validity: Duration::from_secs(365 * 86400),
            renew_before: Duration::from_secs(30 * 86400),
        };
        let now = time::OffsetDateTime::now_utc();
        let b = certs::generate(&cfg.service, &cfg.namespace, now, cfg.validity).unwrap();
        let mut v = serde_json::to_value(certs::secret_for(&cfg, &b, None)).unwrap();
        v["apiVersion"] = "v1".into();
        v["kind"] = "Secret".into();
        v
    }

    const CA_PATH: &str = "/api/v1/namespaces/clew-system/secrets/clew-operator-webhook-tls";
    const SIDECAR_SECRET: &str = "/api/v1/namespaces/shop/secrets/clew-sidecar-tls-traces-main";

    #[tokio::test]
    async fn a_tls_collector_s_pod_gets_its_secret_written_first_then_the_tls_sidecar() {
        let mut tc = crate::fixtures::tc("main");
        tc.spec.tls.enabled = true;
        let (state, mut v, _w) = state_with(tc);
        let server = tokio::spawn(async move {
            v.expect(http::Method::GET, CA_PATH)
                .await
                .ok(&ca_secret_json());
            v.not_found(SIDECAR_SECRET).await;
            let secret = v.apply(SIDECAR_SECRET, |_| {}).await;
            (v, secret)
        });
        let pod = mutate_pod(state.clone(), &app_pod()).await;
        let (mut v, secret) = server.await.unwrap();
        v.assert_silent();
        assert_eq!(
            secret["metadata"]["labels"]["clew.dev/certificate"],
            "sidecar"
        );
        for key in ["ca.crt", "tls.crt", "tls.key"] {
            assert!(secret["data"][key].is_string(), "{key}");
        }
        let sidecar = &pod["spec"]["initContainers"][0];
        assert_eq!(sidecar["name"], "clew-sidecar");
        let env: std::collections::BTreeMap<String, serde_json::Value> = sidecar["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap().to_owned(), e["value"].clone()))
            .collect();
        assert_eq!(
            env["CLEW_SIDECAR_COLLECTOR_CA"],
            "/etc/clew/sidecar-tls/ca.crt"
        );
        assert_eq!(
            env["CLEW_SIDECAR_COLLECTOR_CERT"],
            "/etc/clew/sidecar-tls/tls.crt"
        );
        assert_eq!(
            env["CLEW_SIDECAR_COLLECTOR_KEY"],
            "/etc/clew/sidecar-tls/tls.key"
        );
        assert_eq!(
            env["CLEW_SIDECAR_COLLECTOR_SERVER_NAME"],
            "main-collector-headless.traces.svc"
        );
        let volumes = pod["spec"]["volumes"].as_array().unwrap();
        let tls = volumes
            .iter()
            .find(|v| v["name"] == "clew-sidecar-tls")
            .unwrap();
        assert_eq!(tls["secret"]["secretName"], "clew-sidecar-tls-traces-main");
        // The app still talks plain text to its own sidecar.
        let app_env = pod["spec"]["containers"][0]["env"].as_array().unwrap();
        let endpoint = app_env
            .iter()
            .find(|e| e["name"] == "OTEL_EXPORTER_OTLP_ENDPOINT")
            .unwrap();
        assert_eq!(endpoint["value"], "http://127.0.0.1:4317");
        assert_eq!(
            state
                .metrics
                .certificates_issued
                .with_label_values(&["sidecar", "new"])
                .get(),
            1
        );
    }

    #[tokio::test]
    async fn without_tls_the_webhook_writes_nothing_and_mounts_no_certificate() {
        let (state, mut v, _w) = state_with(crate::fixtures::tc("main"));
        let pod = mutate_pod(state, &app_pod()).await;
        v.assert_silent();
        let sidecar = &pod["spec"]["initContainers"][0];
        assert_eq!(sidecar["name"], "clew-sidecar");
        assert!(!sidecar["env"].to_string().contains("COLLECTOR_CA"));
        assert!(
            !pod["spec"]["volumes"]
                .to_string()
                .contains("clew-sidecar-tls")
        );
    }

    #[tokio::test]
    async fn a_secret_that_cannot_be_written_leaves_the_pod_uninjected() {
        let mut tc = crate::fixtures::tc("main");
        tc.spec.tls.enabled = true;
        let (state, mut v, _w) = state_with(tc);
        let server = tokio::spawn(async move {
            v.expect(http::Method::GET, CA_PATH)
                .await
                .status(http::StatusCode::FORBIDDEN, "Forbidden");
            v
        });
        let pod = mutate_pod(state, &app_pod()).await;
        server.await.unwrap().assert_silent();
        assert!(pod["spec"].get("initContainers").is_none(), "{pod}");
        let status = pod["metadata"]["annotations"]["sidecar.clew.dev/status"]
            .as_str()
            .unwrap();
        assert!(
            status.starts_with("skipped: could not write the sidecar's TLS Secret"),
            "{status}"
        );
    }
}
