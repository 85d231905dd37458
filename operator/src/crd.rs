//! The `TraceCollector` custom resource (group `clew.dev`, version `v1alpha1`).
//!
//! The `///` docs on these fields become the descriptions in the CRD schema, so they are
//! the user's reference (`kubectl explain tracecollector.spec`).

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of clew's custom resources.
pub const GROUP: &str = "clew.dev";

/// A clew tracing pipeline in one namespace: replicated collectors, their storage, the web UI
/// and the defaults for the sidecars injected into annotated pods.
// clippy reads repeated `printcolumn(type_ = ...)` arguments as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "clew.dev",
    version = "v1alpha1",
    kind = "TraceCollector",
    namespaced,
    doc = "A clew tracing pipeline: replicated collectors, their storage, the web UI and sidecar defaults.",
    status = "TraceCollectorStatus",
    shortname = "tc",
    category = "clew",
    derive = "PartialEq",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".status.collectorEndpoint",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("!has(self.autoscaler) || self.autoscaler.maxReplicas >= self.autoscaler.minReplicas").message("spec.autoscaler.maxReplicas must be at least spec.autoscaler.minReplicas"))]
#[x_kube(validation = Rule::new("!has(self.storage.cold) || !has(self.storage.cold.filesystem) || has(self.storage.cold.filesystem.existingClaim) || 'ReadWriteMany' in self.storage.cold.filesystem.accessModes || (has(self.autoscaler) ? self.autoscaler.maxReplicas : self.replicas) <= 1").message("spec.storage.cold.filesystem with more than one collector (spec.replicas, or spec.autoscaler.maxReplicas) needs ReadWriteMany in accessModes: every collector reads and writes the same cold blocks"))]
#[serde(rename_all = "camelCase")]
pub struct TraceCollectorSpec {
    /// Number of collector replicas (ignored while `autoscaler` is set). Also settable with
    /// `kubectl scale tracecollector NAME --replicas N`.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: i32,
    /// Container image with all clew binaries. Defaults to the image of this operator's release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Image pull policy of every clew container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// CPU and memory of each collector container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Where assembled traces are stored.
    #[serde(default)]
    pub storage: StorageSpec,
    /// How long traces are kept, as a duration such as `72h` or `30m`.
    #[serde(default = "default_retention")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h|d))+$"))]
    pub retention: String,
    /// Sampling: head sampling applied by instrumented applications (through
    /// `OTEL_TRACES_SAMPLER`) and, with `tail`, tail sampling of assembled traces in the
    /// collectors.
    #[serde(default)]
    pub sampling: SamplingSpec,
    /// The web UI.
    #[serde(default)]
    pub visualizer: VisualizerSpec,
    /// Settings of the sidecar injected into pods that use this collector. Changing them rolls
    /// the annotated workloads.
    #[serde(default)]
    pub sidecar: SidecarSpec,
    /// The PodDisruptionBudget of the collectors.
    #[serde(default)]
    pub pod_disruption_budget: PdbSpec,
    /// When set, a HorizontalPodAutoscaler scales the collectors and `replicas` is ignored.
    /// It scales on CPU utilisation of the request: without a CPU request in `resources`
    /// the collectors request 250m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler: Option<AutoscalerSpec>,
    /// Collector-to-collector replication: each accepted span is made durable on `factor`
    /// collectors, placed by trace ID over the same collector set the sidecars route to.
    #[serde(default)]
    pub replication: ReplicationSpec,
    /// Where each collector keeps its write-ahead log and the copies it holds for its peers.
    #[serde(default)]
    pub wal: WalSpec,
    /// TLS on every hop: sidecars to collectors (mTLS by default), collector to collector,
    /// the query API, the web UI, and the managed Redis. Certificates come from the
    /// operator's CA (re-issued before they expire) unless `secretName` names your own.
    #[serde(default)]
    pub tls: TlsSpec,
}

fn default_replicas() -> i32 {
    2
}

fn default_retention() -> String {
    "72h".to_owned()
}

/// Image pull policy.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    /// Always pull.
    Always,
    /// Pull when the image is not on the node.
    IfNotPresent,
    /// Never pull.
    Never,
}

impl PullPolicy {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// CPU and memory requests and limits, as Kubernetes quantities (`100m`, `256Mi`).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// Minimum resources, e.g. `{cpu: 100m, memory: 128Mi}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, String>,
    /// Maximum resources, e.g. `{memory: 512Mi}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, String>,
}

/// Trace storage.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Redis, run by the operator (`managed`) or provided by you (`external`).
    #[serde(default)]
    pub redis: RedisSpec,
    /// The cold tier: traces older than `hotRetention` move from Redis to Parquet blocks on a
    /// volume (`filesystem`) or in an S3 bucket (`s3`), and every query reads both tiers.
    /// Unset: traces stay in Redis until `spec.retention`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold: Option<ColdSpec>,
}

/// The cold tier: exactly one of `filesystem` or `s3`. One collector at a time moves traces
/// (it holds a lease in Redis), so every collector shares the same blocks.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.filesystem) != has(self.s3)").message("spec.storage.cold needs exactly one of filesystem and s3"))]
#[serde(rename_all = "camelCase")]
pub struct ColdSpec {
    /// Blocks on a PersistentVolumeClaim mounted by every collector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<ColdFilesystem>,
    /// Blocks in an S3 (or S3-compatible) bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<ColdS3>,
    /// Traces whose newest span ended longer ago than this move cold, as a duration such as
    /// `1h` or `30m`.
    #[serde(default = "default_hot_retention")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h|d))+$"))]
    pub hot_retention: String,
    /// While Redis uses more than this many bytes (its `used_memory`), its oldest traces move
    /// cold too, before `hotRetention`. 0: no bound.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub hot_max_bytes: i64,
    /// Cold blocks whose every span ended longer ago than this are deleted, as a duration such
    /// as `720h` or `30d`; make it longer than `hotRetention`, or blocks are deleted soon after
    /// they are written. Traces are kept this long in all (at least `spec.retention`).
    #[serde(default = "default_cold_retention")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h|d))+$"))]
    pub retention: String,
    /// Traces per block the mover writes; the collector's default (20000) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000000))]
    pub block_traces: Option<i32>,
    /// How often the mover runs, as a duration such as `30s`; the collector's default (30s)
    /// when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h|d))+$"))]
    pub interval: Option<String>,
    /// Blocks smaller than this many bytes are compacted together; the collector's default
    /// (64 MiB) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub compact_below_bytes: Option<i64>,
}

impl ColdSpec {
    /// A cold tier on `filesystem` or `s3` with default retentions.
    pub fn new(filesystem: Option<ColdFilesystem>, s3: Option<ColdS3>) -> Self {
        Self {
            filesystem,
            s3,
            hot_retention: default_hot_retention(),
            hot_max_bytes: 0,
            retention: default_cold_retention(),
            block_traces: None,
            interval: None,
            compact_below_bytes: None,
        }
    }
}

fn default_hot_retention() -> String {
    "1h".to_owned()
}

fn default_cold_retention() -> String {
    "720h".to_owned()
}

/// Cold blocks on a volume. Every collector mounts the same claim: with more than one
/// collector it must be `ReadWriteMany` (NFS, CephFS, EFS, ...). With `ReadWriteOnce` and
/// one collector, the collector Deployment is replaced rather than rolled (`Recreate`), since
/// a second pod could not attach the volume on another node.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.existingClaim) || has(oldSelf.existingClaim) || ((has(self.storageClassName) ? self.storageClassName : '') == (has(oldSelf.storageClassName) ? oldSelf.storageClassName : '') && self.accessModes == oldSelf.accessModes)").message("spec.storage.cold.filesystem.storageClassName and accessModes cannot change once the claim exists (a PersistentVolumeClaim's class and access modes are immutable); to move the blocks to another volume, create it yourself and name it in existingClaim"))]
#[serde(rename_all = "camelCase")]
pub struct ColdFilesystem {
    /// Size of the claim the operator creates, a Kubernetes quantity (it can grow where the
    /// StorageClass allows expansion, never shrink).
    #[serde(default = "default_cold_size")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$"))]
    #[schemars(length(max = 32))]
    pub size: String,
    /// StorageClass of the claim; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
    /// Access modes of the claim: `ReadWriteMany` is needed with more than one collector.
    #[serde(default = "default_cold_access_modes")]
    #[schemars(length(min = 1, max = 2))]
    pub access_modes: Vec<AccessMode>,
    /// A PersistentVolumeClaim you created, in the TraceCollector's namespace, used instead of
    /// one the operator creates (`size`, `storageClassName` and `accessModes` are then
    /// ignored); it must be `ReadWriteMany` with more than one collector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub existing_claim: Option<String>,
}

impl Default for ColdFilesystem {
    fn default() -> Self {
        Self {
            size: default_cold_size(),
            storage_class_name: None,
            access_modes: default_cold_access_modes(),
            existing_claim: None,
        }
    }
}

impl ColdFilesystem {
    /// Whether every collector can mount the claim at once (`ReadWriteMany`).
    pub fn shared(&self) -> bool {
        self.existing_claim.is_some() || self.access_modes.contains(&AccessMode::ReadWriteMany)
    }
}

fn default_cold_size() -> String {
    "50Gi".to_owned()
}

fn default_cold_access_modes() -> Vec<AccessMode> {
    vec![AccessMode::ReadWriteOnce]
}

/// A PersistentVolumeClaim access mode.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum AccessMode {
    /// Mounted read-write by the pods of one node.
    ReadWriteOnce,
    /// Mounted read-write by pods on many nodes.
    ReadWriteMany,
}

impl AccessMode {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReadWriteOnce => "ReadWriteOnce",
            Self::ReadWriteMany => "ReadWriteMany",
        }
    }
}

/// Cold blocks in an S3 or S3-compatible bucket (MinIO, Ceph RGW, R2, ...). Several
/// collectors, and several clews with different prefixes, can share one bucket.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("!self.bucket.contains('/')").message("spec.storage.cold.s3.bucket is a bucket name without '/': put a path in spec.storage.cold.s3.prefix"))]
#[x_kube(validation = Rule::new("!has(self.endpoint) || self.endpoint.startsWith('https://') || self.endpoint.startsWith('http://')").message("spec.storage.cold.s3.endpoint must be an http:// or https:// URL, such as https://minio.storage.svc:9000"))]
#[serde(rename_all = "camelCase")]
pub struct ColdS3 {
    /// The bucket; it must exist.
    #[schemars(length(min = 1, max = 255))]
    pub bucket: String,
    /// Path inside the bucket the blocks go under (lets several clews share a bucket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub prefix: Option<String>,
    /// URL of an S3-compatible server (`https://minio.storage.svc:9000`); AWS when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub endpoint: Option<String>,
    /// Region; `us-east-1` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub region: Option<String>,
    /// A Secret in the TraceCollector's namespace with the access key; passed to the
    /// collectors as `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` from the Secret (the
    /// keys never appear in the spec or the pod template). Unset: the pod's ambient
    /// credentials (e.g. EKS web identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<S3CredentialsSecret>,
    /// A Secret in the TraceCollector's namespace with the PEM CA certificate that signed the
    /// endpoint's certificate (a private CA); the system trust store when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<CaSecretRef>,
    /// Longest wait for one S3 request, as a duration such as `30s`; the collector's default
    /// (30s) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h|d))+$"))]
    pub timeout: Option<String>,
}

impl ColdS3 {
    /// A bucket on AWS with ambient credentials, nothing else set.
    pub fn new(bucket: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            prefix: None,
            endpoint: None,
            region: None,
            credentials_secret: None,
            ca_secret: None,
            timeout: None,
        }
    }
}

/// The Secret with the S3 access key.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3CredentialsSecret {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key of the access key id in the Secret.
    #[serde(default = "default_access_key_id_key")]
    #[schemars(length(min = 1, max = 253))]
    pub access_key_id_key: String,
    /// Key of the secret access key in the Secret.
    #[serde(default = "default_secret_access_key_key")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_access_key_key: String,
}

impl S3CredentialsSecret {
    /// The Secret `name` with the keys `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            access_key_id_key: default_access_key_id_key(),
            secret_access_key_key: default_secret_access_key_key(),
        }
    }
}

fn default_access_key_id_key() -> String {
    "AWS_ACCESS_KEY_ID".to_owned()
}

fn default_secret_access_key_key() -> String {
    "AWS_SECRET_ACCESS_KEY".to_owned()
}

/// A CA certificate in a Secret.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaSecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key of the PEM certificate in the Secret.
    #[serde(default = "default_ca_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_ca_key() -> String {
    "ca.crt".to_owned()
}

/// Redis storage: exactly one of `managed` or `external`; managed with defaults when neither is set.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("!(has(self.managed) && has(self.external))").message("set only one of spec.storage.redis.managed and spec.storage.redis.external"))]
#[x_kube(validation = Rule::new("has(self.external) || has(oldSelf.external) || ((has(self.managed) && has(self.managed.cluster)) == (has(oldSelf.managed) && has(oldSelf.managed.cluster)))").message("spec.storage.redis.managed.cluster cannot be added or removed: a single Redis and a Redis Cluster lay out their data differently and the operator moves none from one to the other; use a new TraceCollector, or move to an external Redis first"))]
#[x_kube(validation = Rule::new("self.waitReplicas == 0 || has(self.external) || (has(self.managed) && has(self.managed.cluster))").message("spec.storage.redis.waitReplicas needs replicas to wait for: a managed Redis without managed.cluster has none"))]
#[x_kube(validation = Rule::new("self.waitReplicas <= 1 || !has(self.managed) || !has(self.managed.cluster)").message("spec.storage.redis.waitReplicas can be at most 1 with managed.cluster: each shard has one replica"))]
#[serde(rename_all = "camelCase")]
pub struct RedisSpec {
    /// A Redis StatefulSet with a persistent volume, run by the operator: one Redis, or a
    /// Redis Cluster with `cluster`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedRedis>,
    /// A Redis you run; its URL is read from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalRedis>,
    /// Prefix of every Redis key clew writes (lets several clews share one Redis).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub prefix: Option<String>,
    /// After each write, the collectors wait (Redis `WAIT`) until this many replicas hold it
    /// before the write counts as stored, so a failover to one of them loses nothing
    /// acknowledged. 0, the default, does not wait. With `managed.cluster` at most 1 (each
    /// shard has one replica); a managed Redis without `cluster` has no replica to wait for.
    #[serde(default)]
    #[schemars(range(min = 0, max = 100))]
    pub wait_replicas: i32,
}

/// A Redis StatefulSet run by the operator.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedRedis {
    /// Size of the persistent volume (of each pod's, with `cluster`), a Kubernetes quantity.
    #[serde(default = "default_redis_size")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"))]
    pub size: String,
    /// StorageClass of the volume; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    /// Redis image. With `cluster` it also needs `sh`, `awk` and `getent` (the official
    /// images have them).
    #[serde(default = "default_redis_image")]
    pub image: String,
    /// CPU and memory of the Redis container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Run a Redis Cluster instead of one Redis: `shards` masters with one replica each, 2 ×
    /// `shards` pods, formed once by a Job (`<name>-redis-bootstrap`). Cannot be added to or
    /// removed from an existing TraceCollector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ManagedRedisCluster>,
}

impl Default for ManagedRedis {
    fn default() -> Self {
        Self {
            size: default_redis_size(),
            storage_class: None,
            image: default_redis_image(),
            resources: None,
            cluster: None,
        }
    }
}

fn default_redis_size() -> String {
    "1Gi".to_owned()
}

fn default_redis_image() -> String {
    "redis:7.4-alpine".to_owned()
}

/// A Redis Cluster run by the operator: a StatefulSet of 2 × `shards` pods (each shard a
/// master and its replica), each with its own volume, AOF persistence and its cluster
/// configuration, and a headless Service giving every pod a stable DNS name.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("self.shards >= 3").message("spec.storage.redis.managed.cluster.shards must be at least 3: a Redis Cluster fails a master over only with the votes of a majority of at least three masters"))]
#[x_kube(validation = Rule::new("self.shards == oldSelf.shards").message("spec.storage.redis.managed.cluster.shards cannot change: the operator does not move slots between shards (resharding)"))]
#[serde(rename_all = "camelCase")]
pub struct ManagedRedisCluster {
    /// Masters, each serving a share of the 16384 hash slots and followed by one replica
    /// that takes over when it fails. At least 3; fixed once the cluster exists.
    #[schemars(range(max = 100))]
    pub shards: i32,
}

/// A Redis run outside the operator.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalRedis {
    /// Name of a Secret in the TraceCollector's namespace holding the Redis URL
    /// (`redis://[:password@]host:port[/db]`, or `rediss://` with `tls`); with `cluster`, a
    /// comma-separated list of seed nodes (`redis://h1:6379,redis://h2:6379`).
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// Key of the URL in that Secret.
    #[serde(default = "default_secret_key")]
    pub key: String,
    /// TLS to Redis: the CA that signed the server's certificate and, for a Redis with
    /// `tls-auth-clients yes`, a client certificate. The URL must be `rediss://`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ExternalRedisTls>,
    /// Redis ACL user (instead of one in the URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub username: Option<String>,
    /// The Redis password, from a Secret in the TraceCollector's namespace; mounted as a file
    /// (`--redis-password-file`), never put in an environment variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret: Option<SecretKeyRef>,
    /// The Redis is a Redis Cluster: the Secret's URL lists some of its nodes, comma-separated,
    /// and the collectors discover the others (and follow slot moves and failovers) from them.
    #[serde(default)]
    pub cluster: bool,
}

impl ExternalRedis {
    /// An external Redis whose URL is under `url` in the Secret `secret_name`, nothing else set.
    pub fn new(secret_name: impl Into<String>) -> Self {
        Self {
            secret_name: secret_name.into(),
            key: default_secret_key(),
            tls: None,
            username: None,
            password_secret: None,
            cluster: false,
        }
    }
}

/// TLS to an external Redis.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalRedisTls {
    /// A Secret (in the TraceCollector's namespace) with the CA certificate under `ca.crt`;
    /// the system trust store when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub ca_secret_name: Option<String>,
    /// A `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`) with a client certificate, for a
    /// Redis that requires one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub client_cert_secret_name: Option<String>,
}

/// A key of a Secret in the TraceCollector's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret.
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_password_key() -> String {
    "password".to_owned()
}

fn default_secret_key() -> String {
    "url".to_owned()
}

/// Sampling.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SamplingSpec {
    /// Head sampling: fraction of new traces recorded, from 0 to 1; a sampled parent is
    /// always followed.
    #[serde(default = "default_ratio")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub ratio: f64,
    /// Tail sampling in the collectors: which assembled traces are stored. Unset, every
    /// trace is kept. Every span still counts in the RED and dependency roll-ups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<TailSamplingSpec>,
}

impl Default for SamplingSpec {
    fn default() -> Self {
        Self {
            ratio: default_ratio(),
            tail: None,
        }
    }
}

/// Tail sampling of assembled traces (the OpenTelemetry `tail_sampling` processor's
/// policies; see docs/SAMPLING.md).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TailSamplingSpec {
    /// The policy file, as YAML: `policies:` (and optionally `sample_on_first_match:`) as the
    /// OpenTelemetry `tail_sampling` processor takes them. Checked by the operator: a file
    /// the collector would refuse is reported in the status (naming the line) and not rolled
    /// out.
    #[schemars(length(min = 1, max = 262144))]
    pub policies: String,
    /// How long a trace waits without a new span before it is decided, as a duration such as
    /// `5s` or `500ms`. Defaults to the collector's idle window (5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub decision_wait: Option<String>,
    /// Most traces each collector holds before their decision; above it the trace that
    /// arrived first is dropped (counted in `clew_sampling_dropped_traces_total`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000000))]
    pub max_pending_traces: Option<i64>,
    /// Decisions each collector remembers for spans arriving after them, for each kind
    /// (sampled, not sampled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000000))]
    pub decision_cache_size: Option<i64>,
}

fn default_ratio() -> f64 {
    1.0
}

/// The web UI.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VisualizerSpec {
    /// Whether to run the visualizer.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Number of visualizer replicas.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1, max = 20))]
    pub replicas: i32,
    /// Type of the visualizer's Service.
    #[serde(default)]
    pub service_type: ServiceType,
}

impl Default for VisualizerSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            replicas: 1,
            service_type: ServiceType::ClusterIP,
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_one() -> i32 {
    1
}

/// Service type.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    /// Reachable inside the cluster.
    #[default]
    ClusterIP,
    /// Also on a port of every node.
    NodePort,
    /// Also through a cloud load balancer.
    LoadBalancer,
}

impl ServiceType {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

/// Sidecar defaults for pods injected with this collector.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("self.spillMaxBytes >= self.bufferBytes").message("spec.sidecar.spillMaxBytes must be at least spec.sidecar.bufferBytes"))]
#[serde(rename_all = "camelCase")]
pub struct SidecarSpec {
    /// CPU and memory of the sidecar container.
    #[serde(default = "default_sidecar_resources")]
    pub resources: Resources,
    /// Bytes of spans buffered in memory before spilling to disk.
    #[serde(default = "default_buffer_bytes")]
    #[schemars(range(min = 65536))]
    pub buffer_bytes: i64,
    /// Bytes of the on-disk spill log; the oldest spans are dropped (and counted) beyond it.
    #[serde(default = "default_spill_max_bytes")]
    #[schemars(range(min = 65536))]
    pub spill_max_bytes: i64,
}

impl Default for SidecarSpec {
    fn default() -> Self {
        Self {
            resources: default_sidecar_resources(),
            buffer_bytes: default_buffer_bytes(),
            spill_max_bytes: default_spill_max_bytes(),
        }
    }
}

fn default_sidecar_resources() -> Resources {
    Resources {
        requests: BTreeMap::from([
            ("cpu".to_owned(), "10m".to_owned()),
            ("memory".to_owned(), "32Mi".to_owned()),
        ]),
        limits: BTreeMap::from([("memory".to_owned(), "128Mi".to_owned())]),
    }
}

fn default_buffer_bytes() -> i64 {
    8 << 20
}

fn default_spill_max_bytes() -> i64 {
    256 << 20
}

/// The collectors' PodDisruptionBudget.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PdbSpec {
    /// Whether to create the PodDisruptionBudget.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How many collectors a voluntary disruption may take down at once.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1))]
    pub max_unavailable: i32,
}

impl Default for PdbSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            max_unavailable: 1,
        }
    }
}

/// Horizontal autoscaling of the collectors on CPU.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerSpec {
    /// Fewest collectors.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1, max = 100))]
    pub min_replicas: i32,
    /// Most collectors.
    #[schemars(range(min = 1, max = 100))]
    pub max_replicas: i32,
    /// Target average CPU utilisation, percent of the request.
    #[serde(default = "default_cpu_target")]
    #[schemars(range(min = 10, max = 100))]
    pub target_cpu_utilization: i32,
}

fn default_cpu_target() -> i32 {
    75
}

/// Collector-to-collector replication.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("!has(self.minCopies) || self.minCopies <= self.factor").message("spec.replication.minCopies must be at most spec.replication.factor"))]
#[serde(rename_all = "camelCase")]
pub struct ReplicationSpec {
    /// Copies of each span, each on a different collector (the accepting collector's own WAL
    /// is one; 1 turns replication off). With fewer ready collectors than this, each span
    /// gets one copy per collector and the `Replicated` condition is False.
    #[serde(default = "default_replication_factor")]
    #[schemars(range(min = 1, max = 5))]
    pub factor: i32,
    /// Copies that must be durable before a span is acknowledged (the accepting collector's
    /// own WAL counts as one); the effective factor when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 5))]
    pub min_copies: Option<i32>,
    /// How long a collector holding copies for a peer waits after last hearing from it
    /// before it stores those copies itself, as a duration such as `30s` or `2m`.
    #[serde(default = "default_takeover_after")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h|d))+$"))]
    pub takeover_after: String,
}

impl Default for ReplicationSpec {
    fn default() -> Self {
        Self {
            factor: default_replication_factor(),
            min_copies: None,
            takeover_after: default_takeover_after(),
        }
    }
}

fn default_replication_factor() -> i32 {
    2
}

fn default_takeover_after() -> String {
    "30s".to_owned()
}

/// The collectors' data directory: the write-ahead log and the copies held for peers.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("!self.persistent || !oldSelf.persistent || (self.size == oldSelf.size && (has(self.storageClass) ? self.storageClass : '') == (has(oldSelf.storageClass) ? oldSelf.storageClass : ''))").message("spec.wal.size and spec.wal.storageClass cannot change while spec.wal.persistent stays true (volume claim templates are immutable); set persistent to false, then back to true with the new values"))]
#[serde(rename_all = "camelCase")]
pub struct WalSpec {
    /// Keep each collector's data on a PersistentVolumeClaim of its own, so it outlives the
    /// pod (and, on network-attached storage, the node); the collectors then run as a
    /// StatefulSet. When false, the data is
    /// on an emptyDir and the collectors run as a Deployment. Switching replaces one with the
    /// other (the old pods drain their WAL into storage as they stop).
    #[serde(default)]
    pub persistent: bool,
    /// Size of each collector's volume, a Kubernetes quantity (with `persistent`).
    #[serde(default = "default_wal_size")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"))]
    #[schemars(length(max = 32))]
    pub size: String,
    /// StorageClass of the volumes; the cluster default when unset (with `persistent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class: Option<String>,
}

impl Default for WalSpec {
    fn default() -> Self {
        Self {
            persistent: false,
            size: default_wal_size(),
            storage_class: None,
        }
    }
}

fn default_wal_size() -> String {
    "10Gi".to_owned()
}

/// TLS on every hop of the pipeline.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("!has(self.secretName) || !has(self.clientAuth) || !self.clientAuth").message("spec.tls.clientAuth needs certificates the operator issues: unset it (or set false) with spec.tls.secretName"))]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Serve TLS on the collectors' ingest, replication and query ports and on the web UI,
    /// have sidecars and the UI verify it, and run the managed Redis TLS-only with a password.
    /// Probes and `/metrics` stay plain HTTP on the ops port.
    #[serde(default)]
    pub enabled: bool,
    /// An existing `kubernetes.io/tls` Secret in this namespace (`tls.crt`, `tls.key`,
    /// `ca.crt`; e.g. from cert-manager) for the collectors, the web UI and the managed
    /// Redis, instead of certificates the operator issues. It must carry the DNS names of the
    /// collector, headless and visualizer Services (and of the managed Redis's, and
    /// `localhost`, with managed Redis; and every Redis pod's,
    /// `<name>-redis-<i>.<name>-redis.<namespace>.svc`, with a managed Redis Cluster), and both
    /// server and client auth usages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: Option<String>,
    /// Collectors require a client certificate (mTLS) from sidecars, peers and the web UI;
    /// the operator issues one to every injected pod. Defaults to true, and to false with
    /// `secretName` (whose CA does not issue the sidecars' certificates). With it, readers
    /// of the query API also need a client certificate from the operator's CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<bool>,
}

impl TlsSpec {
    /// Whether collectors require client certificates.
    pub fn mtls(&self) -> bool {
        self.enabled && self.client_auth.unwrap_or(self.secret_name.is_none())
    }
}

/// What the operator last observed.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TraceCollectorStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Collector replicas that exist.
    #[serde(default)]
    pub replicas: i32,
    /// Collector replicas that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the collector pods (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Where sidecars and SDKs send spans (OTLP gRPC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collector_endpoint: Option<String>,
    /// In-cluster URL of the web UI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visualizer_url: Option<String>,
    /// Hash of the sidecar settings; workloads are rolled when it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar_revision: Option<String>,
    /// `Ready`, `Progressing`, `Degraded` and `Replicated`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// A status condition, as in `metav1.Condition`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`, `Progressing`, `Degraded` or `Replicated`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A `PascalCase` reason.
    pub reason: String,
    /// A human-readable explanation.
    pub message: String,
    /// When `status` last changed (RFC 3339).
    pub last_transition_time: String,
    /// The generation this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl TraceCollector {
    /// The condition of the given type, if any.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    fn schema() -> serde_json::Value {
        let crd = TraceCollector::crd();
        serde_json::to_value(&crd.spec.versions[0].schema).unwrap()
    }

    #[test]
    fn defaults_fill_an_empty_spec() {
        let spec: TraceCollectorSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(spec.replicas, 2);
        assert_eq!(spec.retention, "72h");
        assert_eq!(spec.sampling.ratio, 1.0);
        assert!(spec.visualizer.enabled);
        assert!(spec.pod_disruption_budget.enabled);
        assert_eq!(spec.sidecar.buffer_bytes, 8 << 20);
        assert!(spec.storage.redis.external.is_none());
        assert_eq!(spec.replication.factor, 2);
        assert_eq!(spec.replication.min_copies, None);
        assert_eq!(spec.replication.takeover_after, "30s");
        assert!(!spec.wal.persistent);
        assert_eq!(spec.wal.size, "10Gi");
    }

    #[test]
    fn takeover_after_is_a_duration_like_retention() {
        let spec = &schema()["openAPIV3Schema"]["properties"]["spec"]["properties"];
        let replication = &spec["replication"]["properties"];
        assert_eq!(replication["factor"]["minimum"], 1.0);
        assert_eq!(replication["factor"]["maximum"], 5.0);
        let pattern = replication["takeoverAfter"]["pattern"].as_str().unwrap();
        assert_eq!(pattern, spec["retention"]["pattern"].as_str().unwrap());
        // The collector reads `CLEW_REPLICATION_TAKEOVER_AFTER` with humantime.
        for ok in ["30s", "2m", "1m30s", "1h", "1d"] {
            assert!(humantime::parse_duration(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn the_cold_tier_defaults_to_the_collectors_retentions_and_a_single_node_volume() {
        let spec: TraceCollectorSpec =
            serde_json::from_str(r#"{"storage": {"cold": {"filesystem": {}}}}"#).unwrap();
        let cold = spec.storage.cold.unwrap();
        // The collector's own defaults (`--hot-retention 1h`, `--cold-retention 720h`).
        assert_eq!(cold.hot_retention, "1h");
        assert_eq!(cold.retention, "720h");
        assert_eq!(cold.hot_max_bytes, 0);
        let fs = cold.filesystem.unwrap();
        assert_eq!(fs.access_modes, [AccessMode::ReadWriteOnce]);
        assert_eq!(fs.size, "50Gi");
        assert!(!fs.shared());
        let s3: ColdS3 = serde_json::from_str(
            r#"{"bucket": "b", "credentialsSecret": {"name": "s3"}, "caSecret": {"name": "ca"}}"#,
        )
        .unwrap();
        let creds = s3.credentials_secret.unwrap();
        assert_eq!(creds.access_key_id_key, "AWS_ACCESS_KEY_ID");
        assert_eq!(creds.secret_access_key_key, "AWS_SECRET_ACCESS_KEY");
        assert_eq!(s3.ca_secret.unwrap().key, "ca.crt");
        // Unknown to the collector's humantime parser is refused by the schema's pattern;
        // what the pattern admits, humantime reads.
        let pattern = schema()["openAPIV3Schema"]["properties"]["spec"]["properties"]["storage"]
            ["properties"]["cold"]["properties"]["retention"]["pattern"]
            .clone();
        assert_eq!(pattern, r"^([0-9]+(s|m|h|d))+$");
        for ok in ["30d", "720h", "1d12h", "90m"] {
            assert!(humantime::parse_duration(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn tail_sampling_takes_an_inline_policy_file_and_is_off_by_default() {
        let spec: TraceCollectorSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(spec.sampling.tail, None);
        let spec: TraceCollectorSpec = serde_json::from_str(
            r#"{"sampling": {"tail": {"policies": "policies: []", "decisionWait": "500ms"}}}"#,
        )
        .unwrap();
        let tail = spec.sampling.tail.unwrap();
        assert_eq!(tail.decision_wait.as_deref(), Some("500ms"));
        assert_eq!(spec.sampling.ratio, 1.0);
        let schema = &schema()["openAPIV3Schema"]["properties"]["spec"]["properties"];
        let tail = &schema["sampling"]["properties"]["tail"];
        assert_eq!(tail["required"], serde_json::json!(["policies"]));
        assert_eq!(tail["properties"]["policies"]["minLength"], 1);
        assert_eq!(tail["properties"]["maxPendingTraces"]["minimum"], 1.0);
    }

    #[test]
    fn crd_has_scale_status_and_printer_columns() {
        let crd = TraceCollector::crd();
        assert_eq!(crd.spec.group, "clew.dev");
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        let sub = v.subresources.as_ref().unwrap();
        assert!(sub.status.is_some());
        let scale = sub.scale.as_ref().unwrap();
        assert_eq!(scale.spec_replicas_path, ".spec.replicas");
        assert_eq!(
            scale.label_selector_path.as_deref(),
            Some(".status.selector")
        );
        let cols: Vec<_> = v
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(cols, ["Replicas", "Ready", "Status", "Endpoint", "Age"]);
    }

    #[test]
    fn schema_carries_the_validation_rules_with_readable_messages() {
        let s = schema().to_string();
        for msg in [
            "set only one of spec.storage.redis.managed and spec.storage.redis.external",
            "spec.autoscaler.maxReplicas must be at least spec.autoscaler.minReplicas",
            "spec.sidecar.spillMaxBytes must be at least spec.sidecar.bufferBytes",
            "spec.replication.minCopies must be at most spec.replication.factor",
            "spec.wal.size and spec.wal.storageClass cannot change",
            "spec.storage.cold needs exactly one of filesystem and s3",
            "spec.storage.cold.filesystem with more than one collector",
            "spec.storage.cold.filesystem.storageClassName and accessModes cannot change",
            "spec.storage.cold.s3.bucket is a bucket name without '/'",
            "spec.storage.cold.s3.endpoint must be an http:// or https:// URL",
        ] {
            assert!(s.contains(msg), "missing rule message {msg:?}");
        }
        let spec = &schema()["openAPIV3Schema"]["properties"]["spec"]["properties"];
        assert_eq!(spec["replicas"]["minimum"], 1.0);
        assert_eq!(spec["sampling"]["properties"]["ratio"]["maximum"], 1.0);
        assert_eq!(
            spec["imagePullPolicy"]["enum"],
            serde_json::json!(["Always", "IfNotPresent", "Never"])
        );
    }
}
