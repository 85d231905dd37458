//! Sidecar injection as pure functions: which `TraceCollector` a pod asks for, and the pod
//! with the clew sidecar and the `OTEL_*` environment added. The webhook (`webhook.rs`)
//! turns the difference into a JSON patch.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, ObjectFieldSelector, Pod, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use crate::certs;
use crate::crd::TraceCollector;
use crate::desired::{self, Defaults};

/// Pod (or namespace) annotation asking for a sidecar: `"true"`, `"<name>"`,
/// `"<namespace>/<name>"` or `"false"`.
pub const INJECT_ANNOTATION: &str = "sidecar.clew.dev/inject";
/// Set by the webhook: `injected`, or `skipped: <reason>`.
pub const STATUS_ANNOTATION: &str = "sidecar.clew.dev/status";
/// Set by the webhook on injected pods: the `<namespace>/<name>` of their TraceCollector.
pub const COLLECTOR_ANNOTATION: &str = "sidecar.clew.dev/collector";
/// Hash of the sidecar settings; on workload pod templates it rolls them when settings change.
pub const REVISION_ANNOTATION: &str = "sidecar.clew.dev/revision";
/// Name of the injected container.
pub const SIDECAR_NAME: &str = "clew-sidecar";
/// Ops port of the sidecar (`/metrics`, `/healthz`, `/readyz`).
pub const SIDECAR_OPS_PORT: i32 = 9465;
const SPILL_VOLUME: &str = "clew-sidecar-spill";
const SPILL_DIR: &str = "/var/lib/clew-sidecar";
/// Volume of the sidecar's CA and client certificate (`spec.tls`).
pub const TLS_VOLUME: &str = "clew-sidecar-tls";
/// Where the sidecar finds them.
pub const TLS_DIR: &str = "/etc/clew/sidecar-tls";

/// Which collector a pod's annotation names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// No sidecar (`"false"` or no annotation).
    None,
    /// The only TraceCollector in the pod's namespace (`"true"`).
    OnlyInNamespace,
    /// A named TraceCollector.
    Named {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
}

/// Parses an annotation value; `pod_namespace` completes a bare name.
pub fn parse_selection(value: &str, pod_namespace: &str) -> Result<Selection, String> {
    let v = value.trim();
    match v {
        "" | "false" => Ok(Selection::None),
        "true" => Ok(Selection::OnlyInNamespace),
        _ => {
            let (namespace, name) = match v.split_once('/') {
                Some((ns, name)) => (ns, name),
                None => (pod_namespace, v),
            };
            let valid = |s: &str| {
                !s.is_empty()
                    && s.len() <= 253
                    && s.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'
                    })
            };
            if valid(namespace) && valid(name) {
                Ok(Selection::Named {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                })
            } else {
                Err(format!(
                    "invalid {INJECT_ANNOTATION} value {value:?}: use \"true\", \"false\", \"<name>\" or \"<namespace>/<name>\""
                ))
            }
        }
    }
}

/// What the webhook does with a pod.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// No sidecar asked for.
    NotRequested,
    /// The pod already has the sidecar.
    AlreadyInjected,
    /// Inject the sidecar of this collector.
    Inject(Box<TraceCollector>),
    /// Asked for, but impossible; the reason is recorded on the pod.
    Skip(String),
}

/// Decides for a pod, given its namespace's annotation value and all known collectors.
pub fn decide<'a>(
    pod: &Pod,
    namespace_value: Option<&str>,
    collectors: impl IntoIterator<Item = &'a TraceCollector>,
) -> Decision {
    let pod_ns = pod.namespace().unwrap_or_default();
    // The pod's own value wins over its namespace's default.
    let Some(value) = pod
        .annotations()
        .get(INJECT_ANNOTATION)
        .map(String::as_str)
        .or(namespace_value)
    else {
        return Decision::NotRequested;
    };
    let selection = match parse_selection(value, &pod_ns) {
        Ok(Selection::None) => return Decision::NotRequested,
        Ok(s) => s,
        Err(reason) => return Decision::Skip(reason),
    };
    if is_injected(pod) {
        return Decision::AlreadyInjected;
    }
    if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        return Decision::Skip(
            "hostNetwork pods are not injected: the sidecar's ports would collide on the node"
                .to_owned(),
        );
    }
    match selection {
        Selection::None => Decision::NotRequested,
        Selection::OnlyInNamespace => {
            let in_ns: Vec<_> = collectors
                .into_iter()
                .filter(|tc| tc.namespace().as_deref() == Some(pod_ns.as_str()))
                .collect();
            match in_ns.as_slice() {
                [tc] => Decision::Inject(Box::new((*tc).clone())),
                [] => Decision::Skip(format!(
                    "no TraceCollector in namespace {pod_ns}; create one or name one as <namespace>/<name>"
                )),
                many => Decision::Skip(format!(
                    "{} TraceCollectors in namespace {pod_ns}; name one in {INJECT_ANNOTATION}",
                    many.len()
                )),
            }
        }
        Selection::Named { namespace, name } => collectors
            .into_iter()
            .find(|tc| tc.name_any() == name && tc.namespace().as_deref() == Some(&namespace))
            .map(|tc| Decision::Inject(Box::new(tc.clone())))
            .unwrap_or_else(|| {
                Decision::Skip(format!("TraceCollector {namespace}/{name} not found"))
            }),
    }
}

/// Whether the pod already carries the sidecar (in either form).
pub fn is_injected(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else { return false };
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == SIDECAR_NAME)
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// The sidecar container for a collector (without `restartPolicy`, which depends on the cluster).
pub fn sidecar_container(tc: &TraceCollector, defaults: &Defaults) -> Container {
    let s = &tc.spec.sidecar;
    let mut security = desired::restricted_security_context();
    // The app's pod may not set a user; the sidecar must still run as non-root.
    security.run_as_user = Some(65532);
    security.run_as_group = Some(65532);
    Container {
        name: SIDECAR_NAME.to_owned(),
        image: Some(
            tc.spec
                .image
                .clone()
                .unwrap_or_else(|| defaults.image.clone()),
        ),
        image_pull_policy: tc.spec.image_pull_policy.map(|p| p.as_str().to_owned()),
        command: Some(vec!["/usr/local/bin/clew-sidecar".to_owned()]),
        env: Some(sidecar_env(tc)),
        ports: Some(vec![k8s_openapi::api::core::v1::ContainerPort {
            name: Some("clew-ops".to_owned()),
            container_port: SIDECAR_OPS_PORT,
            protocol: Some("TCP".to_owned()),
            ..Default::default()
        }]),
        // Numeric ports: an app container may already use the name.
        startup_probe: Some(k8s_openapi::api::core::v1::Probe {
            failure_threshold: Some(30),
            period_seconds: Some(1),
            ..probe("/healthz")
        }),
        readiness_probe: Some(probe("/readyz")),
        resources: Some(desired::resource_requirements(&s.resources)),
        security_context: Some(security),
        volume_mounts: Some(sidecar_mounts(tc)),
        ..Container::default()
    }
}

/// The sidecar's environment: its listeners, the collectors and its buffers; with
/// `spec.tls`, TLS to the collectors under the headless Service's name (collectors are
/// dialled by pod IP) and, with mTLS, its client certificate.
fn sidecar_env(tc: &TraceCollector) -> Vec<EnvVar> {
    let s = &tc.spec.sidecar;
    let mut out = vec![
        env("CLEW_SIDECAR_GRPC_ADDR", "127.0.0.1:4317"),
        env("CLEW_SIDECAR_HTTP_ADDR", "127.0.0.1:4318"),
        env(
            "CLEW_SIDECAR_OPS_ADDR",
            format!("0.0.0.0:{SIDECAR_OPS_PORT}"),
        ),
        env("CLEW_SIDECAR_COLLECTOR_DNS", desired::headless_dns(tc)),
        env("CLEW_SIDECAR_SPILL_DIR", SPILL_DIR),
        env("CLEW_SIDECAR_BUFFER_BYTES", s.buffer_bytes.to_string()),
        env(
            "CLEW_SIDECAR_SPILL_MAX_BYTES",
            s.spill_max_bytes.to_string(),
        ),
    ];
    if tc.spec.tls.enabled {
        let file = |f: &str| format!("{TLS_DIR}/{f}");
        out.push(env("CLEW_SIDECAR_COLLECTOR_CA", file(certs::CA_KEY)));
        if tc.spec.tls.mtls() {
            out.push(env("CLEW_SIDECAR_COLLECTOR_CERT", file(certs::CERT_KEY)));
            out.push(env("CLEW_SIDECAR_COLLECTOR_KEY", file(certs::KEY_KEY)));
        }
        let host = desired::headless_dns(tc);
        let name = host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h);
        out.push(env("CLEW_SIDECAR_COLLECTOR_SERVER_NAME", name));
    }
    out
}

fn sidecar_mounts(tc: &TraceCollector) -> Vec<VolumeMount> {
    let mut out = vec![VolumeMount {
        name: SPILL_VOLUME.to_owned(),
        mount_path: SPILL_DIR.to_owned(),
        ..VolumeMount::default()
    }];
    if tc.spec.tls.enabled {
        out.push(desired::tls::mount(TLS_VOLUME, TLS_DIR));
    }
    out
}

fn probe(path: &str) -> k8s_openapi::api::core::v1::Probe {
    k8s_openapi::api::core::v1::Probe {
        http_get: Some(k8s_openapi::api::core::v1::HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(SIDECAR_OPS_PORT),
            ..Default::default()
        }),
        period_seconds: Some(5),
        ..Default::default()
    }
}

/// Hash of everything injection takes from a collector; it changes exactly when injected pods
/// would differ, and is what workloads are rolled on.
pub fn sidecar_revision(tc: &TraceCollector, defaults: &Defaults) -> String {
    let container = sidecar_container(tc, defaults);
    let doc = serde_json::json!({
        "container": container,
        "ratio": tc.spec.sampling.ratio,
    });
    desired::short_hash(doc.to_string().as_bytes())
}

/// The service name spans of this pod report: a name label, the owning workload, or the pod name.
pub fn service_name(pod: &Pod) -> String {
    let labels = pod.labels();
    if let Some(n) = labels
        .get("app.kubernetes.io/name")
        .or_else(|| labels.get("app"))
    {
        return n.clone();
    }
    if let Some(owner) = pod.owner_references().first() {
        // A ReplicaSet is named <deployment>-<hash>.
        if owner.kind == "ReplicaSet"
            && let Some((deploy, _)) = owner.name.rsplit_once('-')
        {
            return deploy.to_owned();
        }
        return owner.name.clone();
    }
    if let Some(g) = &pod.metadata.generate_name {
        return g.trim_end_matches('-').to_owned();
    }
    pod.name_any()
}

/// The pod with the sidecar injected and the app containers pointed at it.
///
/// `native` selects a native sidecar (an init container with `restartPolicy: Always`,
/// Kubernetes 1.29+); otherwise the sidecar is a regular container.
pub fn inject(pod: &Pod, tc: &TraceCollector, defaults: &Defaults, native: bool) -> Pod {
    let mut pod = pod.clone();
    let revision = sidecar_revision(tc, defaults);
    let service = service_name(&pod);
    let ratio = tc.spec.sampling.ratio;
    let annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(STATUS_ANNOTATION.to_owned(), "injected".to_owned());
    annotations.insert(
        COLLECTOR_ANNOTATION.to_owned(),
        format!("{}/{}", tc.namespace().unwrap_or_default(), tc.name_any()),
    );
    annotations.insert(REVISION_ANNOTATION.to_owned(), revision);

    let spec = pod.spec.get_or_insert_with(Default::default);
    let app_env = [
        field_env("CLEW_POD_NAME", "metadata.name"),
        field_env("CLEW_POD_NAMESPACE", "metadata.namespace"),
        field_env("CLEW_NODE_NAME", "spec.nodeName"),
        env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
        env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        env("OTEL_SERVICE_NAME", service),
        // $(VAR) refers to the downward-API variables above, which must come first.
        env(
            "OTEL_RESOURCE_ATTRIBUTES",
            "k8s.pod.name=$(CLEW_POD_NAME),k8s.namespace.name=$(CLEW_POD_NAMESPACE),k8s.node.name=$(CLEW_NODE_NAME)",
        ),
        env("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        env("OTEL_TRACES_SAMPLER_ARG", ratio.to_string()),
    ];
    for c in &mut spec.containers {
        let envs = c.env.get_or_insert_with(Vec::new);
        for e in &app_env {
            // What the app sets itself wins.
            if !envs.iter().any(|x| x.name == e.name) {
                envs.push(e.clone());
            }
        }
    }

    let mut sidecar = sidecar_container(tc, defaults);
    if native {
        sidecar.restart_policy = Some("Always".to_owned());
        // First, so that other init containers can already send spans.
        spec.init_containers
            .get_or_insert_with(Vec::new)
            .insert(0, sidecar);
    } else {
        sidecar.startup_probe = None;
        spec.containers.push(sidecar);
    }
    // The kubelet evicts a pod whose emptyDir exceeds its limit: leave room above the spill cap
    // for segment headers and the file being rotated.
    let spill = tc.spec.sidecar.spill_max_bytes;
    let size_limit = spill.saturating_add(spill / 4).saturating_add(16 << 20);
    spec.volumes.get_or_insert_with(Vec::new).push(Volume {
        name: SPILL_VOLUME.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity(size_limit.to_string())),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    });
    if tc.spec.tls.enabled {
        // The Secret the webhook wrote into the pod's namespace before answering; readable
        // by the sidecar's user whatever the pod's fsGroup.
        let secret = desired::names::sidecar_tls(tc);
        spec.volumes
            .get_or_insert_with(Vec::new)
            .push(desired::tls::secret_volume(TLS_VOLUME, &secret, &[], 0o444));
    }
    pod
}

/// The pod annotated with why it was not injected.
pub fn annotate_skip(pod: &Pod, reason: &str) -> Pod {
    let mut pod = pod.clone();
    pod.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(STATUS_ANNOTATION.to_owned(), format!("skipped: {reason}"));
    pod
}

/// Whether a server minor version (as `/version` reports it, e.g. `"30"` or `"30+"`) supports
/// native sidecars (1.29+, where `SidecarContainers` is on by default).
pub fn supports_native_sidecars(major: &str, minor: &str) -> bool {
    let digits = |s: &str| {
        s.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u32>()
            .ok()
    };
    match (digits(major), digits(minor)) {
        (Some(1), Some(m)) => m >= 29,
        (Some(major), _) => major > 1,
        _ => false,
    }
}

#[cfg(test)]
mod tests;
