//! Test fixtures: TraceCollectors and a mock API server (`tower_test`) that checks, request by
//! request, what the controller sends, and answers like the real API server would.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::{Client, Resource};
use serde_json::{Value, json};
use tower_test::mock::{self, Handle, SendResponse};

use crate::controller::Context;
use crate::crd::{TraceCollector, TraceCollectorSpec, TraceCollectorStatus};
use crate::desired::Defaults;
use crate::metrics::Metrics;

/// Namespace of every test TraceCollector.
pub const NS: &str = "traces";
/// UID of every test TraceCollector.
pub const UID: &str = "5f3c0a6e-0000-4000-8000-000000000001";

/// The operator defaults used in tests.
pub fn defaults() -> Defaults {
    Defaults {
        image: "ghcr.io/clew-dev/clew:test".to_owned(),
    }
}

/// Namespace of the operator in tests.
pub const OPERATOR_NS: &str = "clew-system";
/// The operator's Secret (its CA) in tests.
pub const CA_SECRET: &str = "clew-operator-webhook-tls";

/// The operator's CA as tests configure it: certificates for a year, renewed 30 days ahead.
pub fn pki() -> crate::tls::Pki {
    crate::tls::Pki {
        namespace: OPERATOR_NS.to_owned(),
        secret: CA_SECRET.to_owned(),
        policy: crate::tls::Policy {
            validity: std::time::Duration::from_secs(365 * 86400),
            renew_before: std::time::Duration::from_secs(30 * 86400),
        },
    }
}

/// A TraceCollector `name` in [`NS`] with an all-default spec, generation 1 and no status.
pub fn tc(name: &str) -> TraceCollector {
    let spec: TraceCollectorSpec = serde_json::from_str("{}").unwrap();
    let mut tc = TraceCollector::new(name, spec);
    tc.meta_mut().namespace = Some(NS.to_owned());
    tc.meta_mut().uid = Some(UID.to_owned());
    tc.meta_mut().generation = Some(1);
    tc
}

/// `tc` as already reconciled at its current generation, with `revision` as sidecar revision.
pub fn reconciled(mut tc: TraceCollector, revision: &str) -> TraceCollector {
    tc.status = Some(TraceCollectorStatus {
        observed_generation: tc.metadata.generation,
        sidecar_revision: Some(revision.to_owned()),
        ..TraceCollectorStatus::default()
    });
    tc
}

type ApiServerHandle = Handle<Request<Body>, Response<Body>>;

/// One request the mock API server received.
pub(crate) struct Received {
    /// Path and query.
    pub uri: String,
    /// Content type.
    pub content_type: String,
    /// JSON body (`Null` when empty).
    pub body: Value,
    send: SendResponse<Response<Body>>,
}

impl Received {
    /// Answers 200 with `body`.
    pub fn ok(self, body: &Value) {
        self.send.send_response(
            Response::builder()
                .body(Body::from(serde_json::to_vec(body).unwrap()))
                .unwrap(),
        );
    }

    /// Answers with an API error `Status`.
    pub fn status(self, code: StatusCode, reason: &str) {
        let status = json!({
            "apiVersion": "v1", "kind": "Status", "status": "Failure",
            "message": format!("mock: {reason}"), "reason": reason, "code": code.as_u16()
        });
        self.send.send_response(
            Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&status).unwrap()))
                .unwrap(),
        );
    }
}

/// Plays the API server's side of a reconciliation.
pub(crate) struct ApiServerVerifier(ApiServerHandle);

impl ApiServerVerifier {
    /// The next request, asserted to be `method` on `path` (query ignored).
    pub async fn expect(&mut self, method: Method, path: &str) -> Received {
        let (req, send) =
            tokio::time::timeout(std::time::Duration::from_secs(5), self.0.next_request())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {method} {path}"))
                .unwrap_or_else(|| panic!("client gone before {method} {path}"));
        let uri = req.uri().to_string();
        assert_eq!(
            (req.method(), uri.split('?').next().unwrap()),
            (&method, path),
            "unexpected request {} {uri}",
            req.method()
        );
        let content_type = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        Received {
            uri,
            content_type,
            body,
            send,
        }
    }

    /// A server-side apply of `path`, by the operator's field manager, with `force`; answered
    /// with the applied object passed through `respond`. Returns the applied object.
    pub async fn apply(&mut self, path: &str, respond: impl FnOnce(&mut Value)) -> Value {
        let r = self.expect(Method::PATCH, path).await;
        assert_eq!(r.content_type, "application/apply-patch+yaml", "{path}");
        assert!(r.uri.contains("fieldManager=clew-operator"), "{}", r.uri);
        assert!(r.uri.contains("force=true"), "{}", r.uri);
        let applied = r.body.clone();
        let mut answer = applied.clone();
        respond(&mut answer);
        r.ok(&answer);
        applied
    }

    /// A GET of `path` answered 404.
    pub async fn not_found(&mut self, path: &str) {
        self.expect(Method::GET, path)
            .await
            .status(StatusCode::NOT_FOUND, "NotFound");
    }

    /// A LIST of `path` answered with `items`.
    pub async fn list(&mut self, path: &str, kind: &str, items: Vec<Value>) {
        let r = self.expect(Method::GET, path).await;
        r.ok(&json!({
            "apiVersion": "v1", "kind": format!("{kind}List"),
            "metadata": {"resourceVersion": "1"}, "items": items
        }));
    }

    /// An Event published in [`NS`]; returns it.
    pub async fn event(&mut self) -> Value {
        let r = self
            .expect(
                Method::POST,
                &format!("/apis/events.k8s.io/v1/namespaces/{NS}/events"),
            )
            .await;
        let ev = r.body.clone();
        r.ok(&ev);
        ev
    }

    /// The status apply of `tc`; returns the written status.
    pub async fn status(&mut self, tc: &TraceCollector) -> TraceCollectorStatus {
        let path = format!(
            "/apis/clew.dev/v1alpha1/namespaces/{NS}/tracecollectors/{}/status",
            tc.metadata.name.as_deref().unwrap()
        );
        let r = self.expect(Method::PATCH, &path).await;
        assert_eq!(r.content_type, "application/apply-patch+yaml");
        assert_eq!(r.body["kind"], "TraceCollector");
        let status: TraceCollectorStatus =
            serde_json::from_value(r.body["status"].clone()).unwrap();
        let mut answer = tc.clone();
        answer.status = Some(status.clone());
        r.ok(&serde_json::to_value(&answer).unwrap());
        status
    }

    /// Asserts that no request is pending.
    pub fn assert_silent(&mut self) {
        use futures_util::FutureExt;
        assert!(
            self.0.next_request().now_or_never().is_none(),
            "the controller called the API server"
        );
    }
}

/// Paths of a test TraceCollector's children.
pub fn path(kind: &str, name: &str) -> String {
    let (group, plural) = match kind {
        "ConfigMap" => ("api/v1", "configmaps"),
        "PersistentVolumeClaim" => ("api/v1", "persistentvolumeclaims"),
        "Service" => ("api/v1", "services"),
        "Deployment" => ("apis/apps/v1", "deployments"),
        "StatefulSet" => ("apis/apps/v1", "statefulsets"),
        "PodDisruptionBudget" => ("apis/policy/v1", "poddisruptionbudgets"),
        "HorizontalPodAutoscaler" => ("apis/autoscaling/v2", "horizontalpodautoscalers"),
        "Job" => ("apis/batch/v1", "jobs"),
        other => panic!("no path for {other}"),
    };
    format!("/{group}/namespaces/{NS}/{plural}/{name}")
}

impl Context {
    /// A context whose client talks to a mock API server.
    pub(crate) fn test() -> (Arc<Self>, ApiServerVerifier) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let ctx = Context::new(client, Metrics::new(), defaults(), Some("test".to_owned()))
            .with_pki(pki());
        (Arc::new(ctx), ApiServerVerifier(handle))
    }
}
