//! What a `TraceCollector` should look like in the cluster: pure functions from the custom
//! resource to its child objects. The controller server-side-applies their output, so these
//! functions are the whole of "what the operator wants" and are tested without an API server.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment, StatefulSet,
    StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapEnvSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvFromSource, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretKeySelector, SecurityContext, Service, ServicePort,
    ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::{ManagedRedis, Resources, TraceCollector};

pub mod cold;
pub mod redis_cluster;
pub mod sampling;
pub mod tls;

/// The field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "clew-operator";
/// Pod-template annotation carrying a hash of the collector configuration (rolls pods on change).
pub const CONFIG_HASH_ANNOTATION: &str = "clew.dev/config-hash";

/// Collector ingest gRPC port (OTLP + native + query gRPC).
pub const GRPC_PORT: i32 = 4317;
/// Collector OTLP/HTTP port.
pub const HTTP_PORT: i32 = 4318;
/// Collector Jaeger-compatible query HTTP port.
pub const QUERY_PORT: i32 = 16686;
/// Metrics and health port of the collector.
pub const OPS_PORT: i32 = 9464;
/// Visualizer HTTP port.
pub const VISUALIZER_PORT: i32 = 8080;
/// Redis port.
pub const REDIS_PORT: i32 = 6379;

/// Settings that come from the operator rather than from the custom resource.
#[derive(Clone, Debug)]
pub struct Defaults {
    /// Image used when `spec.image` is unset.
    pub image: String,
}

/// The role of a child workload, the value of `app.kubernetes.io/component`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    /// The collectors.
    Collector,
    /// Managed Redis.
    Redis,
    /// The Job that forms a managed Redis Cluster.
    RedisBootstrap,
    /// The web UI.
    Visualizer,
}

impl Component {
    fn as_str(self) -> &'static str {
        match self {
            Self::Collector => "collector",
            Self::Redis => "redis",
            Self::RedisBootstrap => "redis-bootstrap",
            Self::Visualizer => "visualizer",
        }
    }
}

/// Names of a `TraceCollector`'s children.
pub mod names {
    use super::TraceCollector;
    use kube::ResourceExt;

    /// Collector Deployment or StatefulSet, ClusterIP Service, ConfigMap, PDB and HPA.
    pub fn collector(tc: &TraceCollector) -> String {
        format!("{}-collector", tc.name_any())
    }
    /// ConfigMap with the tail-sampling policy file (`spec.sampling.tail`).
    pub fn sampling(tc: &TraceCollector) -> String {
        format!("{}-collector-sampling", tc.name_any())
    }
    /// Headless Service the sidecars resolve to reach every collector.
    pub fn headless(tc: &TraceCollector) -> String {
        format!("{}-collector-headless", tc.name_any())
    }
    /// PersistentVolumeClaim of a filesystem cold tier (unless `existingClaim` is set).
    pub fn cold(tc: &TraceCollector) -> String {
        format!("{}-cold", tc.name_any())
    }
    /// Redis StatefulSet and its governing Service.
    pub fn redis(tc: &TraceCollector) -> String {
        format!("{}-redis", tc.name_any())
    }
    /// The Job that forms a managed Redis Cluster.
    pub fn redis_bootstrap(tc: &TraceCollector) -> String {
        format!("{}-redis-bootstrap", tc.name_any())
    }
    /// Visualizer Deployment and Service.
    pub fn visualizer(tc: &TraceCollector) -> String {
        format!("{}-visualizer", tc.name_any())
    }
    /// Secret with the collectors' (and visualizer's) certificate, when the operator issues it.
    pub fn collector_tls(tc: &TraceCollector) -> String {
        format!("{}-collector-tls", tc.name_any())
    }
    /// Secret with the managed Redis's serving certificate, when the operator issues it.
    pub fn redis_tls(tc: &TraceCollector) -> String {
        format!("{}-redis-tls", tc.name_any())
    }
    /// The Secret the managed Redis serves with: `spec.tls.secretName` or the one the
    /// operator issues.
    pub fn redis_serving_tls(tc: &TraceCollector) -> String {
        tc.spec
            .tls
            .secret_name
            .clone()
            .unwrap_or_else(|| redis_tls(tc))
    }
    /// Secret with the managed Redis's password and ACL file.
    pub fn redis_auth(tc: &TraceCollector) -> String {
        format!("{}-redis-auth", tc.name_any())
    }
    /// Secret with the sidecars' CA and client certificate, in each namespace with injected
    /// pods; named after the TraceCollector's namespace and name, so two collectors of the
    /// same name never share one.
    pub fn sidecar_tls(tc: &TraceCollector) -> String {
        format!(
            "clew-sidecar-tls-{}-{}",
            tc.namespace().unwrap_or_default(),
            tc.name_any()
        )
    }
    /// The Secret the collectors and the visualizer mount for TLS: `spec.tls.secretName` or
    /// the one the operator issues.
    pub fn serving_tls(tc: &TraceCollector) -> String {
        tc.spec
            .tls
            .secret_name
            .clone()
            .unwrap_or_else(|| collector_tls(tc))
    }
}

/// The labels every pod of a component carries; also its selector.
pub fn selector_labels(tc: &TraceCollector, component: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "clew".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), tc.name_any()),
        (
            "app.kubernetes.io/component".to_owned(),
            component.as_str().to_owned(),
        ),
    ])
}

/// The selector labels plus `managed-by` and `part-of`.
pub fn labels(tc: &TraceCollector, component: Component) -> BTreeMap<String, String> {
    let mut l = selector_labels(tc, component);
    l.insert(
        "app.kubernetes.io/managed-by".to_owned(),
        FIELD_MANAGER.to_owned(),
    );
    l.insert("app.kubernetes.io/part-of".to_owned(), "clew".to_owned());
    l
}

/// The label selector of the collector pods as a string (the scale subresource's `selector`).
pub fn selector_string(tc: &TraceCollector) -> String {
    selector_labels(tc, Component::Collector)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn meta(tc: &TraceCollector, name: String, component: Component) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: tc.namespace(),
        labels: Some(labels(tc, component)),
        owner_references: tc.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

fn image(tc: &TraceCollector, defaults: &Defaults) -> String {
    tc.spec
        .image
        .clone()
        .unwrap_or_else(|| defaults.image.clone())
}

fn pull_policy(tc: &TraceCollector) -> Option<String> {
    tc.spec.image_pull_policy.map(|p| p.as_str().to_owned())
}

/// Kubernetes `ResourceRequirements` from the CRD's string maps.
pub fn resource_requirements(r: &Resources) -> ResourceRequirements {
    let conv = |m: &BTreeMap<String, String>| {
        (!m.is_empty()).then(|| {
            m.iter()
                .map(|(k, v)| (k.clone(), Quantity(v.clone())))
                .collect()
        })
    };
    ResourceRequirements {
        requests: conv(&r.requests),
        limits: conv(&r.limits),
        ..ResourceRequirements::default()
    }
}

/// CPU request of a collector scaled by an autoscaler when the spec sets none.
pub const AUTOSCALED_CPU_REQUEST: &str = "250m";

/// The collector container's resources: the spec's, plus a CPU request
/// when an autoscaler is set without one (the HPA scales on utilisation of
/// the request and would otherwise never act).
fn collector_resources(tc: &TraceCollector) -> Option<ResourceRequirements> {
    let mut r = tc.spec.resources.as_ref().map(resource_requirements);
    if tc.spec.autoscaler.is_some() {
        let requests = r
            .get_or_insert_with(ResourceRequirements::default)
            .requests
            .get_or_insert_with(BTreeMap::new);
        requests
            .entry("cpu".to_owned())
            .or_insert_with(|| Quantity(AUTOSCALED_CPU_REQUEST.to_owned()));
    }
    r
}

/// A hex SHA-256 prefix: stable across operator builds, unlike `std`'s hasher.
pub fn short_hash(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The restricted-profile container security context every clew container runs with.
pub fn restricted_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

fn pod_security_context(user: i64) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(user),
        run_as_group: Some(user),
        fs_group: Some(user),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

fn port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: port,
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    }
}

fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port,
        target_port: Some(IntOrString::String(name.to_owned())),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    }
}

/// An HTTP GET probe on a named port.
pub fn http_probe(path: &str, port: &str, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(port.to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        ..Probe::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

/// The in-cluster DNS name of a Service of this TraceCollector's namespace.
fn svc_host(tc: &TraceCollector, service: &str) -> String {
    format!("{service}.{}.svc", tc.namespace().unwrap_or_default())
}

/// The in-cluster Redis URL of a managed Redis (`rediss://` with `spec.tls`); of a managed
/// Redis Cluster, every pod as a seed node, comma-separated.
pub fn managed_redis_url(tc: &TraceCollector) -> String {
    tls::managed_redis_url(tc)
}

/// The collector's configuration, read by the collector through `envFrom`.
pub fn desired_config_map(tc: &TraceCollector) -> ConfigMap {
    let mut data = BTreeMap::from([
        ("CLEW_GRPC_ADDR".to_owned(), format!("0.0.0.0:{GRPC_PORT}")),
        ("CLEW_HTTP_ADDR".to_owned(), format!("0.0.0.0:{HTTP_PORT}")),
        (
            "CLEW_QUERY_ADDR".to_owned(),
            format!("0.0.0.0:{QUERY_PORT}"),
        ),
        ("CLEW_OPS_ADDR".to_owned(), format!("0.0.0.0:{OPS_PORT}")),
        ("CLEW_STORAGE".to_owned(), "redis".to_owned()),
        ("CLEW_DATA_DIR".to_owned(), "/var/lib/clew".to_owned()),
        ("CLEW_RETENTION".to_owned(), tc.spec.retention.clone()),
    ]);
    let redis = &tc.spec.storage.redis;
    if let Some(prefix) = &redis.prefix {
        data.insert("CLEW_REDIS_PREFIX".to_owned(), prefix.clone());
    }
    if redis.external.is_none() {
        data.insert("CLEW_REDIS_URL".to_owned(), managed_redis_url(tc));
    }
    data.extend(redis_config(tc));
    data.extend(replication_config(tc));
    data.extend(tls::collector_config(tc));
    data.extend(cold::collector_config(tc));
    data.extend(sampling::collector_config(tc));
    ConfigMap {
        metadata: meta(tc, names::collector(tc), Component::Collector),
        data: Some(data),
        ..ConfigMap::default()
    }
}

/// Redis Cluster and `WAIT`: `CLEW_REDIS_CLUSTER` for a managed cluster or an external one,
/// `CLEW_REDIS_WAIT_REPLICAS` when replicas are waited for (the collector's default is 0).
fn redis_config(tc: &TraceCollector) -> BTreeMap<String, String> {
    let redis = &tc.spec.storage.redis;
    let cluster = match &redis.external {
        Some(ext) => ext.cluster,
        None => redis_cluster::managed_cluster(tc).is_some(),
    };
    let mut data = BTreeMap::new();
    if cluster {
        data.insert("CLEW_REDIS_CLUSTER".to_owned(), "true".to_owned());
    }
    if redis.wait_replicas > 0 {
        data.insert(
            "CLEW_REDIS_WAIT_REPLICAS".to_owned(),
            redis.wait_replicas.to_string(),
        );
    }
    data
}

/// Replication settings: the collector set is the headless Service, the one the sidecars
/// resolve, so copies are placed over the same members that spans are routed to.
fn replication_config(tc: &TraceCollector) -> BTreeMap<String, String> {
    let r = &tc.spec.replication;
    let mut data = BTreeMap::from([
        ("CLEW_PEER_DNS".to_owned(), headless_dns(tc)),
        ("CLEW_REPLICATION_FACTOR".to_owned(), r.factor.to_string()),
        (
            "CLEW_REPLICATION_TAKEOVER_AFTER".to_owned(),
            r.takeover_after.clone(),
        ),
    ]);
    if let Some(min) = r.min_copies {
        data.insert("CLEW_REPLICATION_MIN_COPIES".to_owned(), min.to_string());
    }
    data
}

/// The collectors' workload, as wanted or as the API server returned it.
#[derive(Clone, Debug)]
pub enum CollectorWorkload {
    /// Data on an emptyDir (`spec.wal.persistent` false).
    Deployment(Deployment),
    /// Data on a PersistentVolumeClaim per collector (`spec.wal.persistent` true).
    StatefulSet(StatefulSet),
}

/// The kind of the collectors' workload: a StatefulSet when the WAL is persistent.
pub fn collector_kind(tc: &TraceCollector) -> &'static str {
    if tc.spec.wal.persistent {
        "StatefulSet"
    } else {
        "Deployment"
    }
}

/// The collectors: a Deployment, or with `spec.wal.persistent` a StatefulSet.
pub fn desired_collectors(tc: &TraceCollector, defaults: &Defaults) -> CollectorWorkload {
    if tc.spec.wal.persistent {
        CollectorWorkload::StatefulSet(desired_collector_statefulset(tc, defaults))
    } else {
        CollectorWorkload::Deployment(desired_deployment(tc, defaults))
    }
}

/// The collectors' replica count: none when an autoscaler owns it.
fn collector_replicas(tc: &TraceCollector) -> Option<i32> {
    tc.spec.autoscaler.is_none().then_some(tc.spec.replicas)
}

fn collector_selector(tc: &TraceCollector) -> LabelSelector {
    LabelSelector {
        match_labels: Some(selector_labels(tc, Component::Collector)),
        ..LabelSelector::default()
    }
}

/// The collector Deployment, its data on an emptyDir (used while `spec.wal.persistent` is
/// false). `replicas` is left to the HPA when an autoscaler is set.
pub fn desired_deployment(tc: &TraceCollector, defaults: &Defaults) -> Deployment {
    Deployment {
        metadata: meta(tc, names::collector(tc), Component::Collector),
        spec: DeploymentSpec {
            replicas: collector_replicas(tc),
            selector: collector_selector(tc),
            strategy: Some(collector_strategy(tc)),
            template: collector_template(tc, defaults, Some(empty_dir("data"))),
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

/// How the collector Deployment rolls: a new collector up before an old one stops, unless
/// they share a cold volume that attaches on one node only (`ReadWriteOnce`), which the new
/// pod could wait for forever on another node; then the old collector stops first (its WAL
/// drains into storage, sidecars buffer meanwhile).
fn collector_strategy(tc: &TraceCollector) -> DeploymentStrategy {
    if cold::single_node_volume(tc) {
        return DeploymentStrategy {
            type_: Some("Recreate".to_owned()),
            rolling_update: None,
        };
    }
    DeploymentStrategy {
        type_: Some("RollingUpdate".to_owned()),
        rolling_update: Some(RollingUpdateDeployment {
            max_unavailable: Some(IntOrString::Int(0)),
            max_surge: Some(IntOrString::Int(1)),
        }),
    }
}

/// The collector StatefulSet, each collector's data on a PersistentVolumeClaim of its own
/// (used while `spec.wal.persistent` is true). Governed by the headless Service; pods start
/// and stop in parallel, since collectors need no order.
pub fn desired_collector_statefulset(tc: &TraceCollector, defaults: &Defaults) -> StatefulSet {
    let wal = &tc.spec.wal;
    StatefulSet {
        metadata: meta(tc, names::collector(tc), Component::Collector),
        spec: StatefulSetSpec {
            replicas: collector_replicas(tc),
            service_name: Some(names::headless(tc)),
            pod_management_policy: Some("Parallel".to_owned()),
            selector: collector_selector(tc),
            template: collector_template(tc, defaults, None),
            volume_claim_templates: Some(vec![data_volume_claim(
                tc,
                Component::Collector,
                &wal.size,
                wal.storage_class.clone(),
            )]),
            // A collector scaled away keeps its volume and finds its log again when it
            // comes back; deleting the StatefulSet (the TraceCollector's deletion, or
            // turning persistence off) deletes every claim.
            persistent_volume_claim_retention_policy: Some(claims_deleted_with_the_owner()),
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    }
}

/// The collector pod template; `data` is the data volume unless a claim template provides it.
fn collector_template(
    tc: &TraceCollector,
    defaults: &Defaults,
    data: Option<Volume>,
) -> PodTemplateSpec {
    let config = desired_config_map(tc);
    let hashed = match sampling::hashed(tc) {
        Some(policies) => serde_json::to_vec(&(&config.data, policies)),
        None => serde_json::to_vec(&config.data),
    };
    let config_hash = short_hash(&hashed.unwrap_or_default());
    let (mut volumes, mut mounts) = tls::collector_volumes(tc);
    for (v, m) in [cold::collector_volumes(tc), sampling::collector_volumes(tc)] {
        volumes.extend(v);
        mounts.extend(m);
    }
    let mut container = collector_container(tc, defaults);
    container
        .volume_mounts
        .get_or_insert_default()
        .extend(mounts);
    let mut pod = collector_pod_spec(container, data);
    if !volumes.is_empty() {
        pod.volumes.get_or_insert_default().extend(volumes);
    }
    PodTemplateSpec {
        metadata: Some(collector_template_meta(tc, config_hash)),
        spec: Some(pod),
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

/// The collector's own address in the collector set, `$(POD_IP):4317`: the headless
/// Service resolves to pod IPs, so this is how a collector finds itself among them. In the
/// container's `env` rather than the ConfigMap every pod shares, since it differs per pod.
fn advertise_env() -> Vec<EnvVar> {
    vec![
        EnvVar {
            name: "POD_IP".to_owned(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "status.podIP".to_owned(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
        // Dependent variable: POD_IP must come first.
        env("CLEW_ADVERTISE_ADDR", format!("$(POD_IP):{GRPC_PORT}")),
    ]
}

/// `CLEW_REDIS_URL` from the external Redis's Secret, when Redis is external.
fn external_redis_env(tc: &TraceCollector) -> Vec<EnvVar> {
    let mut env = Vec::new();
    if let Some(ext) = &tc.spec.storage.redis.external {
        // The URL may carry a password: it stays in the Secret, never in the ConfigMap.
        env.push(EnvVar {
            name: "CLEW_REDIS_URL".to_owned(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: ext.secret_name.clone(),
                    key: ext.key.clone(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        });
    }
    env
}

/// The collector container, configured from its ConfigMap.
fn collector_container(tc: &TraceCollector, defaults: &Defaults) -> Container {
    let mut env = advertise_env();
    env.extend(external_redis_env(tc));
    env.extend(cold::collector_env(tc));
    Container {
        name: "collector".to_owned(),
        image: Some(image(tc, defaults)),
        image_pull_policy: pull_policy(tc),
        command: Some(vec!["/usr/local/bin/clew-collector".to_owned()]),
        env_from: Some(vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: names::collector(tc),
                optional: Some(false),
            }),
            ..EnvFromSource::default()
        }]),
        env: Some(env),
        ports: Some(vec![
            port("otlp-grpc", GRPC_PORT),
            port("otlp-http", HTTP_PORT),
            port("query", QUERY_PORT),
            port("ops", OPS_PORT),
        ]),
        readiness_probe: Some(http_probe("/readyz", "ops", 5)),
        liveness_probe: Some(http_probe("/healthz", "ops", 10)),
        resources: collector_resources(tc),
        security_context: Some(restricted_security_context()),
        volume_mounts: Some(vec![VolumeMount {
            name: "data".to_owned(),
            mount_path: "/var/lib/clew".to_owned(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    }
}

/// The collector pod template's labels and annotations (the config hash rolls pods on change).
fn collector_template_meta(tc: &TraceCollector, config_hash: String) -> ObjectMeta {
    let mut template_meta = ObjectMeta {
        labels: Some(labels(tc, Component::Collector)),
        annotations: Some(BTreeMap::from([(
            CONFIG_HASH_ANNOTATION.to_owned(),
            config_hash,
        )])),
        ..ObjectMeta::default()
    };
    // The collectors must never get a sidecar of their own.
    template_meta.annotations.get_or_insert_default().insert(
        crate::inject::INJECT_ANNOTATION.to_owned(),
        "false".to_owned(),
    );
    template_meta
}

/// The collector pod: its container and, without a claim template, its data volume.
fn collector_pod_spec(container: Container, data: Option<Volume>) -> PodSpec {
    PodSpec {
        containers: vec![container],
        security_context: Some(pod_security_context(65532)),
        // The collector drains its WAL into storage on SIGTERM.
        termination_grace_period_seconds: Some(30),
        volumes: data.map(|v| vec![v]),
        ..PodSpec::default()
    }
}

fn collector_ports() -> Vec<ServicePort> {
    vec![
        service_port("otlp-grpc", GRPC_PORT),
        service_port("otlp-http", HTTP_PORT),
        service_port("query", QUERY_PORT),
    ]
}

/// The ClusterIP Service in front of the collectors (SDKs, the visualizer, the query API).
pub fn desired_service(tc: &TraceCollector) -> Service {
    Service {
        metadata: meta(tc, names::collector(tc), Component::Collector),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(selector_labels(tc, Component::Collector)),
            ports: Some(collector_ports()),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The headless Service whose DNS name resolves to every ready collector; sidecars hash trace IDs
/// over those addresses.
pub fn desired_headless_service(tc: &TraceCollector) -> Service {
    Service {
        metadata: meta(tc, names::headless(tc), Component::Collector),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            selector: Some(selector_labels(tc, Component::Collector)),
            ports: Some(collector_ports()),
            publish_not_ready_addresses: Some(false),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The collectors' PodDisruptionBudget, unless disabled.
pub fn desired_pdb(tc: &TraceCollector) -> Option<PodDisruptionBudget> {
    let pdb = &tc.spec.pod_disruption_budget;
    pdb.enabled.then(|| PodDisruptionBudget {
        metadata: meta(tc, names::collector(tc), Component::Collector),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(pdb.max_unavailable)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(tc, Component::Collector)),
                ..LabelSelector::default()
            }),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".to_owned()),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

/// The collectors' HorizontalPodAutoscaler, when `spec.autoscaler` is set.
pub fn desired_hpa(tc: &TraceCollector) -> Option<HorizontalPodAutoscaler> {
    let a = tc.spec.autoscaler.as_ref()?;
    Some(HorizontalPodAutoscaler {
        metadata: meta(tc, names::collector(tc), Component::Collector),
        spec: HorizontalPodAutoscalerSpec {
            min_replicas: Some(a.min_replicas),
            max_replicas: a.max_replicas,
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".to_owned()),
                kind: collector_kind(tc).to_owned(),
                name: names::collector(tc),
            },
            metrics: Some(vec![MetricSpec {
                type_: "Resource".to_owned(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".to_owned(),
                    target: MetricTarget {
                        type_: "Utilization".to_owned(),
                        average_utilization: Some(a.target_cpu_utilization),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            ..HorizontalPodAutoscalerSpec::default()
        },
        ..HorizontalPodAutoscaler::default()
    })
}

/// The governing (headless) Service of the managed Redis, in managed mode. For a cluster it
/// also names the cluster bus, and publishes every pod's DNS name before the pod is ready: the
/// bootstrap Job and restarting nodes look their peers up by it before the cluster is whole.
pub fn desired_redis_service(tc: &TraceCollector) -> Option<Service> {
    if tc.spec.storage.redis.external.is_some() {
        return None;
    }
    let mut spec = ServiceSpec {
        cluster_ip: Some("None".to_owned()),
        selector: Some(selector_labels(tc, Component::Redis)),
        ports: Some(vec![service_port("redis", REDIS_PORT)]),
        ..ServiceSpec::default()
    };
    if redis_cluster::managed_cluster(tc).is_some() {
        spec.ports
            .get_or_insert_default()
            .push(service_port("cluster-bus", redis_cluster::CLUSTER_BUS_PORT));
        spec.publish_not_ready_addresses = Some(true);
    }
    Some(Service {
        metadata: meta(tc, names::redis(tc), Component::Redis),
        spec: Some(spec),
        ..Service::default()
    })
}

/// The managed Redis StatefulSet (one replica, AOF persistence on a PVC), in managed mode; for
/// a cluster, 2 × `shards` pods, each with its own volume, started together (the bootstrap
/// Job needs them all, and a node's restart needs no order).
pub fn desired_redis(tc: &TraceCollector) -> Option<StatefulSet> {
    if tc.spec.storage.redis.external.is_some() {
        return None;
    }
    let managed = tc.spec.storage.redis.managed.clone().unwrap_or_default();
    let cluster = managed.cluster.as_ref();
    Some(StatefulSet {
        metadata: meta(tc, names::redis(tc), Component::Redis),
        spec: StatefulSetSpec {
            replicas: Some(cluster.map_or(1, redis_cluster::pod_count)),
            pod_management_policy: cluster.map(|_| "Parallel".to_owned()),
            service_name: Some(names::redis(tc)),
            selector: LabelSelector {
                match_labels: Some(selector_labels(tc, Component::Redis)),
                ..LabelSelector::default()
            },
            template: redis_template(tc, &managed),
            volume_claim_templates: Some(vec![data_volume_claim(
                tc,
                Component::Redis,
                &managed.size,
                managed.storage_class.clone(),
            )]),
            // The data belongs to the TraceCollector: deleting it deletes
            // the volume too (scaling, which never happens here, keeps it).
            persistent_volume_claim_retention_policy: Some(claims_deleted_with_the_owner()),
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    })
}

/// The Redis container: AOF persistence in `/data`, ready when it answers `PING`. With
/// `spec.tls`, TLS-only with the ACL file and the probe logged in ([`tls::redis_args`]); with
/// `cluster`, a cluster node ([`redis_cluster::make_node`]).
fn redis_container(tc: &TraceCollector, managed: &ManagedRedis) -> Container {
    let mut c = plain_redis_container(tc, managed);
    let with_tls = tls::managed_redis_tls(tc);
    if with_tls {
        c.args.get_or_insert_default().extend(tls::redis_args());
        c.readiness_probe = Some(tls::redis_probe());
        c.env = Some(tls::redis_probe_env(tc));
        c.volume_mounts
            .get_or_insert_default()
            .extend(tls::redis_volumes(tc).1);
    }
    if managed.cluster.is_some() {
        redis_cluster::make_node(&mut c, tc, with_tls);
    }
    c
}

fn plain_redis_container(tc: &TraceCollector, managed: &ManagedRedis) -> Container {
    Container {
        name: "redis".to_owned(),
        image: Some(managed.image.clone()),
        image_pull_policy: pull_policy(tc),
        args: Some(
            [
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--dir",
                "/data",
            ]
            .map(str::to_owned)
            .to_vec(),
        ),
        ports: Some(vec![port("redis", REDIS_PORT)]),
        readiness_probe: Some(Probe {
            exec: Some(k8s_openapi::api::core::v1::ExecAction {
                command: Some(["redis-cli", "ping"].map(str::to_owned).to_vec()),
            }),
            period_seconds: Some(5),
            ..Probe::default()
        }),
        resources: managed.resources.as_ref().map(resource_requirements),
        security_context: Some(restricted_security_context()),
        volume_mounts: Some(vec![VolumeMount {
            name: "data".to_owned(),
            mount_path: "/data".to_owned(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    }
}

/// The Redis pod template, never injected with a sidecar.
fn redis_template(tc: &TraceCollector, managed: &ManagedRedis) -> PodTemplateSpec {
    let container = redis_container(tc, managed);
    let volumes = tls::managed_redis_tls(tc).then(|| tls::redis_volumes(tc).0);
    let mut template_annotations = BTreeMap::new();
    template_annotations.insert(
        crate::inject::INJECT_ANNOTATION.to_owned(),
        "false".to_owned(),
    );
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(tc, Component::Redis)),
            annotations: Some(template_annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            volumes,
            affinity: managed.cluster.as_ref().map(|_| redis_cluster::spread(tc)),
            // The official image's redis user.
            security_context: Some(pod_security_context(999)),
            ..PodSpec::default()
        }),
    }
}

/// Volume claims deleted with their StatefulSet, kept when it scales down.
fn claims_deleted_with_the_owner() -> StatefulSetPersistentVolumeClaimRetentionPolicy {
    StatefulSetPersistentVolumeClaimRetentionPolicy {
        when_deleted: Some("Delete".to_owned()),
        when_scaled: Some("Retain".to_owned()),
    }
}

/// The claim template of a StatefulSet's `data` volume.
fn data_volume_claim(
    tc: &TraceCollector,
    component: Component,
    size: &str,
    storage_class: Option<String>,
) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("data".to_owned()),
            labels: Some(labels(tc, component)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
            storage_class_name: storage_class,
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    Quantity(size.to_owned()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

/// The visualizer Deployment, when enabled.
pub fn desired_visualizer(tc: &TraceCollector, defaults: &Defaults) -> Option<Deployment> {
    let v = &tc.spec.visualizer;
    if !v.enabled {
        return None;
    }
    let (container, volumes) = visualizer_container(tc, defaults);
    Some(Deployment {
        metadata: meta(tc, names::visualizer(tc), Component::Visualizer),
        spec: DeploymentSpec {
            replicas: Some(v.replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(tc, Component::Visualizer)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(tc, Component::Visualizer)),
                    annotations: Some(BTreeMap::from([(
                        crate::inject::INJECT_ANNOTATION.to_owned(),
                        "false".to_owned(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes,
                    security_context: Some(pod_security_context(65532)),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    })
}

/// The visualizer container and, with `spec.tls`, its certificate volume: HTTPS with the
/// collectors' certificate (whose names include the visualizer Service's), probed over HTTPS.
fn visualizer_container(
    tc: &TraceCollector,
    defaults: &Defaults,
) -> (Container, Option<Vec<Volume>>) {
    let query_url = format!(
        "{}://{}:{QUERY_PORT}",
        tls::scheme(tc),
        svc_host(tc, &names::collector(tc))
    );
    let mut envs = vec![
        env("CLEW_VISUALIZER_ADDR", format!("0.0.0.0:{VISUALIZER_PORT}")),
        env("CLEW_QUERY_URL", query_url),
    ];
    envs.extend(tls::visualizer_env(tc).into_iter().map(|(k, v)| env(k, v)));
    let probe = |path: &str, period: i32| {
        let mut p = http_probe(path, "http", period);
        if let Some(get) = p.http_get.as_mut().filter(|_| tc.spec.tls.enabled) {
            // The kubelet does not verify the certificate of an HTTPS probe.
            get.scheme = Some("HTTPS".to_owned());
        }
        p
    };
    let mut container = Container {
        name: "visualizer".to_owned(),
        image: Some(image(tc, defaults)),
        image_pull_policy: pull_policy(tc),
        command: Some(vec!["/usr/local/bin/clew-visualizer".to_owned()]),
        env: Some(envs),
        ports: Some(vec![port("http", VISUALIZER_PORT)]),
        readiness_probe: Some(probe("/readyz", 5)),
        liveness_probe: Some(probe("/healthz", 10)),
        security_context: Some(restricted_security_context()),
        ..Container::default()
    };
    if !tc.spec.tls.enabled {
        return (container, None);
    }
    let secret = names::serving_tls(tc);
    container.volume_mounts = Some(vec![tls::mount("tls", tls::TLS_DIR)]);
    let volume = tls::secret_volume("tls", &secret, &[], 0o440);
    (container, Some(vec![volume]))
}

/// The visualizer Service's port: 443 with `spec.tls`, else 80.
fn visualizer_service_port(tc: &TraceCollector) -> i32 {
    if tc.spec.tls.enabled { 443 } else { 80 }
}

/// The visualizer Service, when the visualizer is enabled.
pub fn desired_visualizer_service(tc: &TraceCollector) -> Option<Service> {
    let v = &tc.spec.visualizer;
    v.enabled.then(|| Service {
        metadata: meta(tc, names::visualizer(tc), Component::Visualizer),
        spec: Some(ServiceSpec {
            type_: Some(v.service_type.as_str().to_owned()),
            selector: Some(selector_labels(tc, Component::Visualizer)),
            ports: Some(vec![ServicePort {
                name: Some("http".to_owned()),
                port: visualizer_service_port(tc),
                target_port: Some(IntOrString::String("http".to_owned())),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

/// Where sidecars and SDKs send spans: the collectors' ClusterIP Service, OTLP gRPC.
pub fn collector_endpoint(tc: &TraceCollector) -> String {
    format!(
        "{}://{}:{GRPC_PORT}",
        tls::scheme(tc),
        svc_host(tc, &names::collector(tc))
    )
}

/// `host:port` of the headless Service, resolved by sidecars (`CLEW_SIDECAR_COLLECTOR_DNS`).
pub fn headless_dns(tc: &TraceCollector) -> String {
    format!("{}:{GRPC_PORT}", svc_host(tc, &names::headless(tc)))
}

/// The in-cluster URL of the web UI, when enabled.
pub fn visualizer_url(tc: &TraceCollector) -> Option<String> {
    tc.spec.visualizer.enabled.then(|| {
        format!(
            "{}://{}",
            tls::scheme(tc),
            svc_host(tc, &names::visualizer(tc))
        )
    })
}

#[cfg(test)]
mod tests;
