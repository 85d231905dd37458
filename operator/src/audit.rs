//! Pods that asked for the sidecar but were created without it.
//!
//! The webhook's `failurePolicy: Ignore` lets a pod through unchanged when the
//! webhook is unreachable or too slow, and nothing at admission would say so.
//! The leader watches pods and marks each such pod once: the status
//! annotation (`sidecar.clew.dev/status: skipped: …`) and a Warning Event
//! (`SidecarNotInjected`), as the webhook does for a pod it decides to skip.
//! A pod the webhook saw carries the status annotation already (`injected` or
//! `skipped: …`), so it is never marked twice.

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tracing::{info, warn};

use crate::inject::{self, INJECT_ANNOTATION, STATUS_ANNOTATION, Selection};

/// Why a pod that asked for the sidecar has none.
pub const MISSED: &str = "the injection webhook did not see this pod when it was created (unreachable or too slow, or its namespace is excluded from injection); recreate the pod to get the sidecar";

/// `Some(reason)` when `pod` asked for the sidecar (its own annotation, else
/// its namespace's `namespace_value`), has none, and the webhook never
/// marked it.
pub fn missed_injection(pod: &Pod, namespace_value: Option<&str>) -> Option<&'static str> {
    if pod.annotations().contains_key(STATUS_ANNOTATION)
        || pod.metadata.deletion_timestamp.is_some()
        || inject::is_injected(pod)
    {
        return None;
    }
    let value = pod
        .annotations()
        .get(INJECT_ANNOTATION)
        .map(String::as_str)
        .or(namespace_value)?;
    match inject::parse_selection(value, &pod.namespace().unwrap_or_default()) {
        Ok(Selection::None) => None,
        // An invalid value would have been skipped (and marked) too.
        Ok(_) | Err(_) => Some(MISSED),
    }
}

/// Marks `pod` as not injected for `reason`: the status annotation, then a
/// Warning Event.
pub async fn mark(
    client: &Client,
    recorder: &Recorder,
    pod: &Pod,
    reason: &str,
) -> Result<(), kube::Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "metadata": {"annotations": {STATUS_ANNOTATION: format!("skipped: {reason}")}}
    });
    api.patch(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    crate::webhook::record_skip(recorder, pod, reason).await;
    Ok(())
}

/// Watches every pod (until the task is aborted), marking those that missed
/// their sidecar; `namespaces` gives the namespace defaults.
pub async fn run(client: Client, recorder: Recorder, namespaces: Store<Namespace>) {
    let pods: Api<Pod> = Api::all(client.clone());
    let stream = watcher(pods, watcher::Config::default())
        .default_backoff()
        .applied_objects();
    futures_util::pin_mut!(stream);
    while let Some(ev) = stream.next().await {
        let pod = match ev {
            Ok(pod) => pod,
            Err(e) => {
                warn!(error = %e, "pod watch error");
                continue;
            }
        };
        let ns_value = namespaces
            .get(&ObjectRef::new(&pod.namespace().unwrap_or_default()))
            .and_then(|n| n.annotations().get(INJECT_ANNOTATION).cloned());
        if let Some(reason) = missed_injection(&pod, ns_value.as_deref()) {
            info!(pod = %pod.name_any(), namespace = ?pod.namespace(), "pod missed its sidecar");
            if let Err(e) = mark(&client, &recorder, &pod, reason).await {
                warn!(pod = %pod.name_any(), error = %e, "could not mark a pod that missed its sidecar");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use http::Method;
    use k8s_openapi::api::core::v1::{Container, PodSpec};

    use super::*;
    use crate::controller::Context;
    use crate::fixtures::NS;

    fn pod(annotations: &[(&str, &str)], containers: &[&str]) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some("shop-1".to_owned());
        p.metadata.namespace = Some(NS.to_owned());
        p.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        );
        p.spec = Some(PodSpec {
            containers: containers
                .iter()
                .map(|n| Container {
                    name: (*n).to_owned(),
                    ..Container::default()
                })
                .collect(),
            ..PodSpec::default()
        });
        p
    }

    #[test]
    fn only_pods_that_asked_and_were_never_seen_are_flagged() {
        let asked = [(INJECT_ANNOTATION, "true")];
        // Asked, no sidecar, no mark from the webhook.
        assert_eq!(missed_injection(&pod(&asked, &["app"]), None), Some(MISSED));
        // Asked through the namespace; the pod's own "false" wins.
        assert_eq!(
            missed_injection(&pod(&[], &["app"]), Some("main")),
            Some(MISSED)
        );
        assert_eq!(
            missed_injection(
                &pod(&[(INJECT_ANNOTATION, "false")], &["app"]),
                Some("true")
            ),
            None
        );
        // Not asked.
        assert_eq!(missed_injection(&pod(&[], &["app"]), None), None);
        // Injected, or marked by the webhook (either way).
        assert_eq!(
            missed_injection(&pod(&asked, &["app", inject::SIDECAR_NAME]), None),
            None
        );
        for status in ["injected", "skipped: no TraceCollector in namespace shop"] {
            let marked = [(INJECT_ANNOTATION, "true"), (STATUS_ANNOTATION, status)];
            assert_eq!(missed_injection(&pod(&marked, &["app"]), None), None);
        }
    }

    #[tokio::test]
    async fn a_missed_pod_gets_the_annotation_and_a_warning_event() {
        let (ctx, mut v) = Context::test();
        let p = pod(&[(INJECT_ANNOTATION, "true")], &["app"]);
        let server = tokio::spawn(async move {
            let r = v
                .expect(
                    Method::PATCH,
                    &format!("/api/v1/namespaces/{NS}/pods/shop-1"),
                )
                .await;
            assert_eq!(r.content_type, "application/merge-patch+json");
            assert_eq!(
                r.body["metadata"]["annotations"][STATUS_ANNOTATION],
                format!("skipped: {MISSED}")
            );
            let body = serde_json::to_value(Pod::default()).unwrap();
            r.ok(&body);
            let ev = v.event().await;
            (v, ev)
        });
        mark(&ctx.client, &ctx.recorder, &p, MISSED).await.unwrap();
        let (mut v, ev) = server.await.unwrap();
        v.assert_silent();
        assert_eq!(ev["type"], "Warning");
        assert_eq!(ev["reason"], "SidecarNotInjected");
        assert_eq!(ev["regarding"]["name"], "shop-1");
    }
}
