//! Wires the collector together: storage, WAL replay, assembly, ingest
//! servers, the ops endpoint (`/metrics`, `/healthz`, `/readyz`), retention,
//! and graceful shutdown that stores everything accepted.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clew_analysis::sampling::Engine;
use clew_runtime::auth::RequireBearer;
use clew_runtime::net::{ConnMetrics, TrackedListener};
use clew_runtime::tls::{ServerTls, TlsIncoming};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::assembly::{Assembler, AssemblerConfig};
use crate::ingest::{Ingest, IngestConfig, NativeGrpc, OtlpGrpcServer};
use crate::metrics::Metrics;
use crate::replication::{
    Copies, Members, ReplicaStore, ReplicationConfig, ReplicationMetrics, Replicator,
};
use crate::sampling::{Sampler, SamplerConfig};
use crate::sink::StorageSink;
use crate::storage::Storage;
use crate::wal::{Wal, WalConfig};

/// Which storage backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StorageKind {
    /// On-disk store inside the binary (redb), under `--data-dir`.
    Embedded,
    /// A Redis server (`--redis-url`).
    Redis,
    /// In memory; lost on restart.
    Memory,
}

clew_runtime::conn_limit_flags!(
    /// Connection limits of the collector's listeners.
    pub struct ConnFlags,
    env = "CLEW_"
);

clew_runtime::server_tls_flags!(
    /// TLS of the gRPC, OTLP/HTTP and query listeners (and of the ops
    /// listener with `--tls-ops`).
    pub struct TlsFlags,
    env = "CLEW_"
);

/// Collector settings: flags, or `CLEW_*` environment variables.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "clew-collector", version, about = "clew trace collector")]
pub struct Config {
    /// A YAML file of settings: keys are these flags' long names, values
    /// what the flag takes. Flags and environment variables override it.
    #[arg(long, env = "CLEW_CONFIG")]
    pub config: Option<PathBuf>,
    /// gRPC ingest: OTLP TraceService and clew's native Collector.
    #[arg(long, env = "CLEW_GRPC_ADDR", default_value = "0.0.0.0:4317")]
    pub grpc_addr: SocketAddr,
    /// OTLP/HTTP ingest (`POST /v1/traces`).
    #[arg(long, env = "CLEW_HTTP_ADDR", default_value = "0.0.0.0:4318")]
    pub http_addr: SocketAddr,
    /// Query API over HTTP: Jaeger-compatible `/api/...`.
    #[arg(long, env = "CLEW_QUERY_ADDR", default_value = "0.0.0.0:16686")]
    pub query_addr: SocketAddr,
    /// `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "CLEW_OPS_ADDR", default_value = "0.0.0.0:9464")]
    pub ops_addr: SocketAddr,
    /// Storage backend.
    #[arg(long, env = "CLEW_STORAGE", value_enum, default_value = "embedded")]
    pub storage: StorageKind,
    /// Directory for the WAL and the embedded store.
    #[arg(long, env = "CLEW_DATA_DIR", default_value = "./clew-data")]
    pub data_dir: PathBuf,
    /// Redis URL for `--storage redis`; with `--redis-cluster`, the
    /// cluster's seed nodes, comma-separated (`redis://h1:6379,redis://h2:6379`).
    #[arg(long, env = "CLEW_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// The Redis is a Redis Cluster: keys are spread over its masters in
    /// shards, a search fans out to every shard.
    #[arg(long, env = "CLEW_REDIS_CLUSTER")]
    pub redis_cluster: bool,
    /// With `--redis-cluster`: how many shards a new deployment's keys are
    /// split into (an existing one keeps the count it recorded).
    #[arg(long, env = "CLEW_REDIS_SHARDS", default_value_t = crate::storage::redis::DEFAULT_SHARDS as u16, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub redis_shards: u16,
    /// After each write, wait until this many Redis replicas acknowledged
    /// it (`WAIT`) before the WAL lets it go; a write they do not
    /// acknowledge in time is retried. 0: do not wait.
    #[arg(long, env = "CLEW_REDIS_WAIT_REPLICAS", default_value_t = 0)]
    pub redis_wait_replicas: u32,
    /// Prefix of every Redis key.
    #[arg(long, env = "CLEW_REDIS_PREFIX", default_value = "clew:")]
    pub redis_prefix: String,
    /// PEM CA certificates of the Redis server's certificate (with a
    /// `rediss://` URL; without it the system's trust store is used).
    #[arg(long, env = "CLEW_REDIS_CA")]
    pub redis_ca: Option<PathBuf>,
    /// PEM client certificate for a Redis that requires one
    /// (`tls-auth-clients yes`).
    #[arg(long, env = "CLEW_REDIS_CERT", requires = "redis_key")]
    pub redis_cert: Option<PathBuf>,
    /// PEM private key of `--redis-cert`.
    #[arg(long, env = "CLEW_REDIS_KEY", requires = "redis_cert")]
    pub redis_key: Option<PathBuf>,
    /// Redis ACL user (instead of one in the URL).
    #[arg(long, env = "CLEW_REDIS_USERNAME")]
    pub redis_username: Option<String>,
    /// A file holding the Redis password (its first line), instead of one
    /// in the URL; `CLEW_REDIS_PASSWORD` gives it directly.
    #[arg(long, env = "CLEW_REDIS_PASSWORD_FILE")]
    pub redis_password_file: Option<PathBuf>,
    /// How long traces are kept (e.g. `72h`).
    #[arg(long, env = "CLEW_RETENTION", default_value = "72h", value_parser = humantime::parse_duration)]
    pub retention: Duration,
    /// How often expired traces are pruned.
    #[arg(long, env = "CLEW_PRUNE_INTERVAL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub prune_interval: Duration,
    /// A trace is stored after this long without a new span.
    #[arg(long, env = "CLEW_IDLE_WINDOW", default_value = "5s", value_parser = humantime::parse_duration)]
    pub idle_window: Duration,
    /// A trace is cut into fragments at this many spans; with
    /// `--sampling-policy`, the spans beyond it of a trace not decided yet
    /// are dropped (counted in `clew_sampling_dropped_spans_total`).
    #[arg(long, env = "CLEW_MAX_SPANS_PER_TRACE", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_spans_per_trace: u64,
    /// Tail sampling.
    #[command(flatten)]
    pub sampling: SamplingFlags,
    /// Above this many bytes waiting for storage, ingest answers
    /// RESOURCE_EXHAUSTED / 429.
    #[arg(long, env = "CLEW_MEMORY_LIMIT_BYTES", default_value_t = 512 << 20)]
    pub memory_limit_bytes: u64,
    /// Largest ingest request, in bytes.
    #[arg(long, env = "CLEW_MAX_REQUEST_BYTES", default_value_t = 16 << 20)]
    pub max_request_bytes: usize,
    /// Most spans in one ingest request.
    #[arg(long, env = "CLEW_MAX_SPANS_PER_BATCH", default_value_t = 10_000)]
    pub max_spans_per_batch: usize,
    /// Traces kept by the memory backend before the oldest go.
    #[arg(long, env = "CLEW_MEMORY_MAX_TRACES", default_value_t = 100_000)]
    pub memory_max_traces: usize,
    /// Bytes of spans kept by the memory backend (an estimate of their
    /// heap: their strings' lengths plus a fixed overhead per span and
    /// attribute) before the oldest traces go.
    #[arg(long, env = "CLEW_MEMORY_MAX_BYTES", default_value_t = 256 << 20)]
    pub memory_max_bytes: u64,
    /// Count every span into the RED roll-ups at ingest (what the RED and
    /// dependency answers come from).
    #[arg(long, env = "CLEW_ROLLUPS", default_value_t = true, action = clap::ArgAction::Set)]
    pub rollups: bool,
    /// How often the roll-ups are written to storage.
    #[arg(long, env = "CLEW_ROLLUP_FLUSH_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub rollup_flush_interval: Duration,
    /// Export span metrics on `/metrics` as the OpenTelemetry spanmetrics
    /// connector does (`traces_span_metrics_calls_total`,
    /// `traces_span_metrics_duration_milliseconds`), every span counted
    /// before sampling.
    #[arg(long, env = "CLEW_SPANMETRICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub spanmetrics: bool,
    /// Most span-metrics series, the overflow series included; spans of
    /// new series past it count into one `otel_metric_overflow="true"`
    /// series (0: no limit).
    #[arg(
        long,
        env = "CLEW_SPANMETRICS_CARDINALITY_LIMIT",
        default_value_t = 5_000
    )]
    pub spanmetrics_cardinality_limit: usize,
    /// fsync the WAL before acknowledging (turn off only for throwaway runs).
    #[arg(long, env = "CLEW_WAL_FSYNC", default_value_t = true, action = clap::ArgAction::Set)]
    pub wal_fsync: bool,
    /// Connection limits of the gRPC, OTLP/HTTP and query listeners.
    #[command(flatten)]
    pub conn: ConnFlags,
    /// Most connections of the ops listener, apart from the others so that
    /// `/healthz` and `/metrics` answer even when ingest is saturated.
    #[arg(long, env = "CLEW_OPS_MAX_CONNECTIONS", default_value_t = 64)]
    pub ops_max_connections: usize,
    /// Replication between collectors.
    #[command(flatten)]
    pub replication: ReplicationFlags,
    /// TLS of the listeners.
    #[command(flatten)]
    pub tls: TlsFlags,
    /// Serve the ops port (`/metrics`, `/healthz`, `/readyz`) over TLS
    /// too; probes and scrapers must then use HTTPS.
    #[arg(long, env = "CLEW_TLS_OPS", requires = "tls_cert")]
    pub tls_ops: bool,
    /// Bearer authentication of reads and ingest.
    #[command(flatten)]
    pub auth: AuthFlags,
    /// The cold tier.
    #[command(flatten)]
    pub cold: crate::cold::ColdFlags,
}

/// Tail-sampling flags: with `--sampling-policy`, assembled traces are
/// stored only when the policies keep them (`docs/SAMPLING.md`).
#[derive(Debug, Clone, clap::Args)]
pub struct SamplingFlags {
    /// A tail-sampling policy file (the OpenTelemetry `tail_sampling`
    /// processor's `policies:`). Unset, every trace is kept.
    #[arg(long, env = "CLEW_SAMPLING_POLICY")]
    pub sampling_policy: Option<PathBuf>,
    /// With `--sampling-policy`: how long a trace waits without a new span
    /// before it is decided (the idle window of traces not decided yet;
    /// default `--idle-window`).
    #[arg(long, env = "CLEW_DECISION_WAIT", value_parser = humantime::parse_duration)]
    pub decision_wait: Option<Duration>,
    /// With `--sampling-policy`: decisions remembered for late spans, for
    /// each kind (sampled, not sampled).
    #[arg(long, env = "CLEW_DECISION_CACHE_SIZE", default_value_t = 100_000)]
    pub decision_cache_size: usize,
    /// With `--sampling-policy`: most traces held before their decision;
    /// above it the trace that arrived first is dropped (counted).
    #[arg(long, env = "CLEW_MAX_PENDING_TRACES", default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_pending_traces: u64,
}

impl SamplingFlags {
    /// The sampler of `--sampling-policy`, or `None` without one; a file
    /// that cannot be read or used is an error naming it and the line.
    pub fn sampler(&self, idle_window: Duration) -> Result<Option<Sampler>, ServerError> {
        let Some(path) = &self.sampling_policy else {
            if self.decision_wait.is_some() {
                tracing::warn!("--decision-wait is ignored without --sampling-policy");
            }
            return Ok(None);
        };
        let bad =
            |e: String| ServerError::Config(format!("--sampling-policy {}: {e}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let engine = Engine::from_yaml(&text).map_err(|e| bad(e.to_string()))?;
        let config = SamplerConfig {
            decision_wait: self.decision_wait.unwrap_or(idle_window),
            cache_size: self.decision_cache_size,
            max_pending_traces: usize::try_from(self.max_pending_traces).unwrap_or(usize::MAX),
        };
        tracing::info!(policies = ?engine.policy_names(), decision_wait = ?config.decision_wait, "tail sampling on");
        if engine.is_stateful() {
            tracing::info!("tail sampling: a rate budget restarts with the collector");
        }
        Ok(Some(Sampler::new(engine, config)))
    }
}

clew_runtime::read_auth_flags!(
    /// Who may read: the query HTTP API (`/api/...`) and gRPC `Query`
    /// take `Authorization: Bearer` with one of these; none set, reads
    /// are open.
    pub struct QueryAuthFlags,
    env = "CLEW_"
);

/// Authentication flags: reads, and optionally ingest.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthFlags {
    /// Reads.
    #[command(flatten)]
    pub query: QueryAuthFlags,
    /// Ingest (OTLP gRPC and HTTP, native gRPC) takes `Authorization:
    /// Bearer` with one of the static tokens of this file, one a line
    /// (re-read when it changes; JWTs are not accepted on ingest). Unset,
    /// ingest is open.
    #[arg(long, env = "CLEW_INGEST_TOKEN_FILE")]
    pub ingest_token_file: Option<PathBuf>,
}

/// Replication flags: with `--peers` or `--peer-dns`, every accepted span
/// is kept on more than one collector before it is acknowledged.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplicationFlags {
    /// The collector set: every collector's gRPC address (`host:port`,
    /// comma-separated), this one included. Sidecars must be given the
    /// same addresses: traces are placed by them.
    #[arg(long, env = "CLEW_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// The collector set from DNS: a name (`name:port`) resolving to every
    /// collector, such as a headless Service's; resolved again every
    /// `--peer-dns-refresh`.
    #[arg(long, env = "CLEW_PEER_DNS")]
    pub peer_dns: Option<String>,
    /// How often `--peer-dns` is resolved.
    #[arg(long, env = "CLEW_PEER_DNS_REFRESH", default_value = "5s", value_parser = humantime::parse_duration)]
    pub peer_dns_refresh: Duration,
    /// This collector's gRPC address as the set names it (`host:port`;
    /// on Kubernetes `$(POD_IP):4317`). Defaults to `--grpc-addr` when
    /// that is a specific address.
    #[arg(long, env = "CLEW_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// Copies of each span, this collector's included (0: 2 when the set
    /// has two or more members, else 1). Shrinks to the set's size.
    #[arg(long, env = "CLEW_REPLICATION_FACTOR", default_value_t = 0)]
    pub replication_factor: usize,
    /// Copies that must be durable before a batch is acknowledged (0: the
    /// factor in force).
    #[arg(long, env = "CLEW_REPLICATION_MIN_COPIES", default_value_t = 0)]
    pub replication_min_copies: usize,
    /// Longest wait for a peer to acknowledge a copy.
    #[arg(long, env = "CLEW_REPLICATION_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub replication_timeout: Duration,
    /// PEM CA certificates the peers' certificates chain to: replication
    /// to peers goes over TLS (with this collector's `--tls-cert` as its
    /// client certificate when peers require one).
    #[arg(long, env = "CLEW_PEER_TLS_CA")]
    pub peer_tls_ca: Option<PathBuf>,
    /// The name the peers' certificates carry (e.g. the headless Service's
    /// DNS name), when it is not the address they are dialled at.
    #[arg(long, env = "CLEW_PEER_TLS_SERVER_NAME", requires = "peer_tls_ca")]
    pub peer_tls_server_name: Option<String>,
    /// A peer's unreleased batches are stored by this collector once the
    /// peer has not been heard from for this long.
    #[arg(long, env = "CLEW_REPLICATION_TAKEOVER_AFTER", default_value = "30s", value_parser = humantime::parse_duration)]
    pub replication_takeover_after: Duration,
}

impl ReplicationFlags {
    /// Whether a collector set is configured.
    pub fn enabled(&self) -> bool {
        !self.peers.is_empty() || self.peer_dns.is_some()
    }

    /// The settings, or what is wrong with the flags (named); `identity`
    /// is this collector's certificate and key, its client certificate
    /// towards peers over TLS.
    pub fn config(
        &self,
        grpc_addr: SocketAddr,
        identity: Option<(PathBuf, PathBuf)>,
    ) -> Result<ReplicationConfig, ServerError> {
        let bad = |m: String| Err(ServerError::Config(m));
        if self.replication_factor > 0 && self.replication_min_copies > self.replication_factor {
            return bad(format!(
                "--replication-min-copies ({}) is above --replication-factor ({})",
                self.replication_min_copies, self.replication_factor
            ));
        }
        if self.replication_timeout.is_zero() {
            return bad("--replication-timeout must be above 0".into());
        }
        let me = match &self.advertise_addr {
            Some(a) if !a.trim().is_empty() => {
                clew_model::placement::member_key(a.trim()).to_owned()
            }
            _ if !grpc_addr.ip().is_unspecified() => grpc_addr.to_string(),
            _ => {
                return bad(
                    "--advertise-addr is required with --peers or --peer-dns when --grpc-addr listens on every address".into(),
                );
            }
        };
        Ok(ReplicationConfig {
            me,
            copies: Copies {
                configured: self.replication_factor,
                min: self.replication_min_copies,
            },
            timeout: self.replication_timeout,
            takeover_after: self.replication_takeover_after,
            tls: self.peer_tls(identity)?,
            ..ReplicationConfig::default()
        })
    }

    /// The TLS configuration towards peers, with `--peer-tls-ca`.
    fn peer_tls(
        &self,
        identity: Option<(PathBuf, PathBuf)>,
    ) -> Result<Option<clew_runtime::tls::ClientTls>, ServerError> {
        let Some(ca) = &self.peer_tls_ca else {
            return Ok(None);
        };
        let files = clew_runtime::tls::ClientTlsFiles {
            ca: ca.clone(),
            identity,
            server_name: self.peer_tls_server_name.clone(),
        };
        clew_runtime::tls::ClientTls::load(files)
            .map(Some)
            .map_err(|e| ServerError::Config(format!("--peer-tls-ca: {e}")))
    }
}

/// Why the collector could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The storage backend could not be opened.
    #[error("storage: {0}")]
    Storage(String),
    /// The WAL could not be opened or shut down.
    #[error("wal: {0}")]
    Wal(#[from] crate::wal::Error),
    /// Assembly could not start.
    #[error("assembly: {0}")]
    Assembly(#[from] crate::assembly::Error),
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A server failed while running.
    #[error("server: {0}")]
    Serve(String),
    /// The settings are inconsistent.
    #[error("configuration: {0}")]
    Config(String),
}

/// Addresses actually bound (ports may have been 0).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// gRPC ingest.
    pub grpc: SocketAddr,
    /// OTLP/HTTP ingest.
    pub http: SocketAddr,
    /// Query API (HTTP).
    pub query: SocketAddr,
    /// Ops endpoint.
    pub ops: SocketAddr,
}

/// TLS towards Redis, when a CA or a client certificate is given.
fn redis_tls(config: &Config) -> Option<crate::storage::redis::RedisTls> {
    let client = config.redis_cert.clone().zip(config.redis_key.clone());
    (config.redis_ca.is_some() || client.is_some()).then(|| crate::storage::redis::RedisTls {
        ca: config.redis_ca.clone(),
        client,
    })
}

/// The Redis password: `CLEW_REDIS_PASSWORD`, else the first line of
/// `--redis-password-file`.
fn redis_password(config: &Config) -> Result<Option<String>, ServerError> {
    if let Ok(p) = std::env::var("CLEW_REDIS_PASSWORD") {
        return Ok(Some(p));
    }
    let Some(file) = &config.redis_password_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(file).map_err(|e| {
        ServerError::Config(format!("--redis-password-file {}: {e}", file.display()))
    })?;
    Ok(Some(text.lines().next().unwrap_or_default().to_owned()))
}

async fn open_storage(config: &Config) -> Result<Arc<dyn Storage>, ServerError> {
    use crate::storage::{embedded::EmbeddedStorage, memory::MemoryStorage, redis};
    Ok(match config.storage {
        StorageKind::Memory => Arc::new(MemoryStorage::bounded(
            config.memory_max_traces,
            config.memory_max_bytes,
        )),
        StorageKind::Embedded => {
            let path = config.data_dir.join("traces.redb");
            let store = tokio::task::spawn_blocking(move || EmbeddedStorage::open(path))
                .await
                .map_err(|e| ServerError::Storage(e.to_string()))?
                .map_err(|e| ServerError::Storage(e.detail()))?;
            Arc::new(store)
        }
        StorageKind::Redis => {
            let cfg = redis::RedisConfig {
                url: config.redis_url.clone(),
                cluster: config.redis_cluster,
                shards: usize::from(config.redis_shards),
                wait_replicas: config.redis_wait_replicas,
                key_prefix: config.redis_prefix.clone(),
                retention: config.retention,
                tls: redis_tls(config),
                username: config.redis_username.clone(),
                password: redis_password(config)?,
                ..redis::RedisConfig::default()
            };
            Arc::new(
                redis::RedisStorage::connect(cfg)
                    .await
                    .map_err(|e| ServerError::Storage(e.detail()))?,
            )
        }
    })
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

/// The data path: storage, the WAL (replayed), assembly, ingest and the
/// metrics that read them.
struct Core {
    storage: Arc<dyn Storage>,
    wal: Wal,
    assembler: Arc<Assembler>,
    ingest: Ingest,
    metrics: Arc<Metrics>,
    replication: Option<Replication>,
    auth: crate::auth::Guards,
    cold: Option<crate::cold::Cold>,
    rollups: Option<Arc<crate::rollup::Rollups>>,
}

/// Replication's parts, when a collector set is configured.
struct Replication {
    replicator: Replicator,
    replicas: ReplicaStore,
    members: Arc<watch::Sender<Arc<Members>>>,
    takeovers: parking_lot::Mutex<Option<mpsc::UnboundedReceiver<crate::replication::Takeover>>>,
    metrics: Arc<ReplicationMetrics>,
}

/// Opens replication when a collector set is configured: the set, this
/// WAL's incarnation, the replica logs.
async fn open_replication(
    config: &Config,
    wal_dir: PathBuf,
    replay_end: u64,
) -> Result<Option<Replication>, ServerError> {
    let flags = &config.replication;
    if !flags.enabled() {
        return Ok(None);
    }
    let identity = config.tls.tls_cert.clone().zip(config.tls.tls_key.clone());
    let rc = flags.config(config.grpc_addr, identity)?;
    let mut initial = flags.peers.clone();
    if let Some(dns) = &flags.peer_dns {
        match crate::replication::members::resolve(dns).await {
            Ok(list) => initial.extend(list),
            Err(e) => {
                tracing::warn!(name = %dns, error = %e, "resolving the peer DNS name failed; retrying")
            }
        }
    }
    let members = Members::new(initial, &rc.me);
    tracing::info!(me = %rc.me, members = ?members.names(), "collector set");
    let (tx, rx) = watch::channel(Arc::new(members));
    let incarnation = tokio::task::spawn_blocking(move || crate::wal::incarnation(&wal_dir))
        .await
        .map_err(|e| ServerError::Serve(e.to_string()))?
        .map_err(|e| ServerError::Wal(crate::wal::Error::Io(e)))?;
    let metrics = Arc::new(ReplicationMetrics::new());
    let replicator = Replicator::new(
        rc.clone(),
        incarnation,
        replay_end,
        rx.clone(),
        Arc::clone(&metrics),
    );
    let (takeover_tx, takeover_rx) = mpsc::unbounded_channel();
    let (dir, fsync, m) = (
        config.data_dir.join("replicas"),
        config.wal_fsync,
        Arc::clone(&metrics),
    );
    let replicas = tokio::task::spawn_blocking(move || {
        ReplicaStore::open(dir, fsync, rx, rc.takeover_after, m, takeover_tx)
    })
    .await
    .map_err(|e| ServerError::Serve(e.to_string()))??;
    Ok(Some(Replication {
        replicator,
        replicas,
        members: Arc::new(tx),
        takeovers: parking_lot::Mutex::new(Some(takeover_rx)),
        metrics,
    }))
}

/// Who this collector is to the cold tier's lease: its advertised address,
/// else its host name, with its process id.
fn lease_holder(config: &Config) -> String {
    let name = config
        .replication
        .advertise_addr
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "collector".into());
    format!("{name}/{}", std::process::id())
}

/// Opens storage and the WAL, replays what the WAL holds into assembly,
/// and builds ingest on top.
async fn open_core(config: &Config) -> Result<Core, ServerError> {
    let sampler = config.sampling.sampler(config.idle_window)?.map(Arc::new);
    let auth = crate::auth::Guards::open(&config.auth).await?;
    let hot = open_storage(config).await?;
    let cold = config
        .cold
        .open(Arc::clone(&hot), lease_holder(config))
        .await?;
    let storage = cold.as_ref().map_or(hot, |c| Arc::clone(&c.storage));
    let wal_dir = config.data_dir.join("wal");
    let wal_config = WalConfig {
        fsync: config.wal_fsync,
        ..WalConfig::default()
    };
    let dir = wal_dir.clone();
    let (wal, replay) = tokio::task::spawn_blocking(move || Wal::open(dir, wal_config))
        .await
        .map_err(|e| ServerError::Serve(e.to_string()))??;
    let replay_end = replay.last().map_or(0, |r| r.seq + 1);
    let replication = open_replication(config, wal_dir.clone(), replay_end).await?;
    let store_latency = Metrics::store_latency_histogram();
    let sink = StorageSink::new(Arc::clone(&storage)).with_latency(store_latency.clone());
    let assembly = AssemblerConfig {
        idle_window: config.idle_window,
        max_spans_per_trace: usize::try_from(config.max_spans_per_trace).unwrap_or(usize::MAX),
        ..AssemblerConfig::default()
    };
    let assembler = Arc::new(match &sampler {
        Some(s) => Assembler::with_sampler(assembly, Arc::new(sink), wal.clone(), Arc::clone(s))?,
        None => Assembler::new(assembly, Arc::new(sink), wal.clone())?,
    });
    let rollups = if config.rollups {
        Some(open_rollups(config, &wal, &wal_dir, storage.as_ref(), &replay).await?)
    } else {
        None
    };
    if let Some(r) = &rollups {
        assembler.set_rollups(Arc::clone(r));
    }
    let span_metrics = config.spanmetrics.then(|| {
        Arc::new(crate::spanmetrics::SpanMetrics::new(
            config.spanmetrics_cardinality_limit,
        ))
    });
    if let Some(s) = &span_metrics {
        assembler.set_span_metrics(Arc::clone(s));
    }
    if !replay.is_empty() {
        tracing::info!(records = replay.len(), "replaying WAL");
        assembler.replay(replay);
    }
    let mut ingest = Ingest::new(
        Arc::clone(&assembler),
        IngestConfig {
            limits: crate::ingest::otlp::Limits {
                max_spans_per_batch: config.max_spans_per_batch,
                ..Default::default()
            },
            max_request_bytes: config.max_request_bytes,
            memory_limit_bytes: config.memory_limit_bytes,
            ..IngestConfig::default()
        },
    );
    if let Some(r) = &replication {
        ingest = ingest.with_replication(r.replicator.clone());
    }
    let metrics = Metrics::new(
        ingest.clone(),
        Arc::clone(&assembler),
        wal.clone(),
        store_latency,
    )
    .with_storage(Arc::clone(&storage));
    let metrics = match &rollups {
        Some(r) => metrics.with_rollups(Arc::clone(r)),
        None => metrics,
    };
    let metrics = match span_metrics {
        Some(s) => metrics.with_span_metrics(s),
        None => metrics,
    };
    let metrics = match sampler {
        Some(s) => metrics.with_sampling(s),
        None => metrics,
    };
    Ok(Core {
        storage,
        wal,
        assembler,
        ingest,
        metrics: Arc::new(metrics),
        replication,
        auth,
        cold,
        rollups,
    })
}

/// The roll-ups of this WAL: the WAL keeps what they have not written
/// (from its checkpoint on), and what earlier runs wrote of the records
/// to replay is read first, so that nothing is counted twice.
async fn open_rollups(
    config: &Config,
    wal: &Wal,
    wal_dir: &std::path::Path,
    storage: &dyn Storage,
    replay: &[crate::wal::WalRecord],
) -> Result<Arc<crate::rollup::Rollups>, ServerError> {
    let dir = wal_dir.to_owned();
    let incarnation = tokio::task::spawn_blocking(move || crate::wal::incarnation(&dir))
        .await
        .map_err(|e| ServerError::Serve(e.to_string()))?
        .map_err(|e| ServerError::Wal(crate::wal::Error::Io(e)))?;
    wal.set_floor(Some(wal.checkpoint()));
    let rollups = crate::rollup::Rollups::new(
        wal.clone(),
        incarnation,
        crate::rollup::RollupConfig {
            flush_interval: config.rollup_flush_interval,
            ..Default::default()
        },
    );
    if let Err(e) = rollups.prepare_replay(storage, replay).await {
        // Without them, spans of replayed records an earlier run counted
        // are counted again.
        tracing::warn!(error = %e.detail(), "roll-ups: earlier runs' parts unreadable; replayed spans may count twice");
    }
    Ok(Arc::new(rollups))
}

/// The four listeners, bound and tracked.
struct Listeners {
    grpc: TrackedListener,
    http: TrackedListener,
    query: TrackedListener,
    ops: TrackedListener,
}

/// Binds every listener. Each bounds its connections; ops has its own
/// small limit so that it is never starved by ingest.
async fn bind_all(config: &Config, conns: &ConnMetrics) -> Result<(Listeners, Bound), ServerError> {
    let limits = config.conn.limits();
    let ops_limits = limits
        .clone()
        .with_max_connections(config.ops_max_connections);
    let track = |l, name, limits| TrackedListener::new(l, name, limits, conns);
    let l = Listeners {
        grpc: track(bind(config.grpc_addr).await?, "grpc", limits.clone()),
        http: track(bind(config.http_addr).await?, "http", limits.clone()),
        query: track(bind(config.query_addr).await?, "query", limits),
        ops: track(bind(config.ops_addr).await?, "ops", ops_limits),
    };
    let bound = Bound {
        grpc: local(&l.grpc)?,
        http: local(&l.http)?,
        query: local(&l.query)?,
        ops: local(&l.ops)?,
    };
    Ok((l, bound))
}

/// Resolves once `rx` says stop.
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// The running servers and background tasks.
struct Servers {
    grpc: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    others: Vec<tokio::task::JoinHandle<()>>,
    retention: tokio::task::JoinHandle<()>,
}

/// The listeners' TLS, with `--tls-cert`: one configuration offering `h2`
/// (gRPC) and one offering `h2` and `http/1.1`, each re-read every
/// `--tls-reload-interval`.
struct ServingTls {
    grpc: ServerTls,
    http: ServerTls,
    reloaders: Vec<tokio::task::JoinHandle<()>>,
}

impl ServingTls {
    fn load(config: &Config) -> Result<Option<ServingTls>, ServerError> {
        let Some(files) = config.tls.files() else {
            return Ok(None);
        };
        let load = |alpn: &[&[u8]]| {
            ServerTls::load(files.clone(), alpn).map_err(|e| {
                ServerError::Config(format!("--tls-cert/--tls-key/--tls-client-ca: {e}"))
            })
        };
        let grpc = load(&[b"h2"])?;
        let http = load(&[b"h2", b"http/1.1"])?;
        let every = config.tls.tls_reload_interval;
        let reloaders = vec![
            grpc.spawn_reloader(every, "grpc"),
            http.spawn_reloader(every, "http"),
        ];
        tracing::info!(
            mtls = files.client_ca.is_some(),
            ops = config.tls_ops,
            "serving TLS"
        );
        Ok(Some(ServingTls {
            grpc,
            http,
            reloaders,
        }))
    }
}

impl Drop for ServingTls {
    fn drop(&mut self) {
        for r in &self.reloaders {
            r.abort();
        }
    }
}

/// gRPC ingest (OTLP and native) and the gRPC query service.
async fn spawn_grpc(
    config: &Config,
    core: &Core,
    listener: TrackedListener,
    tls: Option<ServerTls>,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Result<(), tonic::transport::Error>> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<OtlpGrpcServer>().await;
    let max = config.max_request_bytes;
    let gzip = tonic::codec::CompressionEncoding::Gzip;
    let native =
        clew_proto::v1::collector_server::CollectorServer::new(NativeGrpc(core.ingest.clone()));
    // Health and replication stay open; ingest and queries check tokens.
    let (ingest_auth, query_auth) = (&core.auth.ingest, &core.auth.query);
    let mut grpc = clew_runtime::net::grpc_server(&config.conn.limits());
    let grpc = grpc
        .add_service(health_service)
        .add_service(RequireBearer::new(
            OtlpGrpcServer::new(core.ingest.clone())
                .max_decoding_message_size(max)
                .accept_compressed(gzip),
            ingest_auth.clone(),
        ))
        .add_service(RequireBearer::new(
            native
                .max_decoding_message_size(max)
                .accept_compressed(gzip),
            ingest_auth.clone(),
        ))
        .add_service(RequireBearer::new(
            crate::query::QueryGrpc(Arc::clone(&core.storage)).into_server(),
            query_auth.clone(),
        ))
        .add_optional_service(core.replication.as_ref().map(|r| {
            crate::replication::ReplicationService(r.replicas.clone()).into_server(2 * max)
        }));
    // Tracked connections set TCP_NODELAY: small replies (acks, query
    // results) must not wait 40 ms for the peer's delayed ACK.
    match tls {
        Some(tls) => tokio::spawn(
            grpc.serve_with_incoming_shutdown(TlsIncoming::new(listener, tls), stopped(stop)),
        ),
        None => {
            tokio::spawn(grpc.serve_with_incoming_shutdown(listener.into_incoming(), stopped(stop)))
        }
    }
}

/// Replication's background tasks: heartbeats, the replica logs' check,
/// takeovers and, with `--peer-dns`, the set's refresh.
fn spawn_replication(
    config: &Config,
    core: &Core,
    r: &Replication,
    stop: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let every = Duration::from_secs(1);
    let mut tasks = vec![
        tokio::spawn(
            r.replicator
                .clone()
                .heartbeat_loop(core.wal.clone(), stop.clone()),
        ),
        tokio::spawn(r.replicas.clone().check_loop(every, stop.clone())),
    ];
    if let Some(jobs) = r.takeovers.lock().take() {
        tasks.push(tokio::spawn(crate::replication::run_takeovers(
            jobs,
            core.ingest.clone(),
            Arc::clone(&r.metrics),
            stop.clone(),
        )));
    }
    if let Some(dns) = config.replication.peer_dns.clone() {
        let refresh = crate::replication::members::dns_loop(
            Arc::clone(&r.members),
            config.replication.peers.clone(),
            dns,
            r.replicator.me().to_owned(),
            config.replication.peer_dns_refresh,
        );
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            tokio::select! {
                _ = refresh => {}
                _ = stopped(stop) => {}
            }
        }));
    }
    tasks
}

/// Starts every server and the retention loop.
async fn spawn_servers(
    config: &Config,
    core: &Core,
    l: Listeners,
    conns: ConnMetrics,
    ready: Arc<AtomicBool>,
    tls: Option<&ServingTls>,
    stop: watch::Receiver<bool>,
) -> Servers {
    let grpc_tls = tls.map(|t| t.grpc.clone());
    let grpc = spawn_grpc(config, core, l.grpc, grpc_tls, stop.clone()).await;
    let serve = clew_runtime::net::serve_http_with;
    let http_tls = tls.map(|t| t.http.clone());
    let ops_tls = http_tls.clone().filter(|_| config.tls_ops);
    let metrics = Arc::clone(&core.metrics);
    let replication_metrics = core.replication.as_ref().map(|r| Arc::clone(&r.metrics));
    let auth_metrics = core.auth.metrics.clone();
    let cold_metrics = core.cold.as_ref().map(|c| c.metrics.clone());
    let storage = Arc::clone(&core.storage);
    let render = Arc::new(move || {
        let replication = replication_metrics.as_ref().map(|m| m.render());
        let cold = cold_metrics.as_ref().map(|m| m.render());
        metrics.render()
            + &conns.render()
            + &auth_metrics.render()
            + replication.as_deref().unwrap_or_default()
            + cold.as_deref().unwrap_or_default()
            + &storage.render_metrics()
    });
    let storage = Arc::clone(&core.storage);
    let ready = Arc::new(move || ready.load(Ordering::Acquire) && storage.ready());
    let protect = clew_runtime::auth::protect;
    let mut others = vec![
        tokio::spawn(serve(
            l.http,
            http_tls.clone(),
            protect(
                crate::ingest::http_router(core.ingest.clone()),
                core.auth.ingest.clone(),
            ),
            stopped(stop.clone()),
        )),
        tokio::spawn(serve(
            l.query,
            http_tls,
            protect(
                crate::query::router(Arc::clone(&core.storage)),
                core.auth.query.clone(),
            ),
            stopped(stop.clone()),
        )),
        tokio::spawn(serve(
            l.ops,
            ops_tls,
            clew_runtime::ops::router_with(render, ready),
            stopped(stop.clone()),
        )),
    ];
    if let Some(r) = &core.replication {
        others.extend(spawn_replication(config, core, r, &stop));
    }
    if let Some(c) = &core.cold {
        others.push(tokio::spawn(c.mover.clone().run(stopped(stop.clone()))));
    }
    if let Some(r) = &core.rollups {
        let (r, storage) = (Arc::clone(r), Arc::clone(&core.storage));
        let stop = stopped(stop.clone());
        others.push(tokio::spawn(async move { r.run(storage, stop).await }));
    }
    let retention = tokio::spawn(retention_loop(
        Arc::clone(&core.storage),
        Arc::clone(&core.metrics),
        config.cold.total_retention(config.retention),
        config.prune_interval,
        stop,
    ));
    Servers {
        grpc,
        others,
        retention,
    }
}

/// Runs the collector until `shutdown` resolves, then stops taking spans,
/// stores everything accepted, persists the WAL checkpoint and returns.
/// `on_bound` is told the bound addresses once every listener is up.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(Bound) + Send,
) -> Result<(), ServerError> {
    let tls = ServingTls::load(&config)?;
    let core = open_core(&config).await?;
    let conns = ConnMetrics::new();
    let (listeners, bound) = bind_all(&config, &conns).await?;
    let ready = Arc::new(AtomicBool::new(false));
    // One shutdown signal fanned out to every server.
    let (stop_tx, stop_rx) = watch::channel(false);
    let servers = spawn_servers(
        &config,
        &core,
        listeners,
        conns,
        Arc::clone(&ready),
        tls.as_ref(),
        stop_rx,
    )
    .await;

    ready.store(true, Ordering::Release);
    tracing::info!(grpc = %bound.grpc, http = %bound.http, query = %bound.query, ops = %bound.ops, storage = ?config.storage, "collector listening");
    on_bound(bound);

    shutdown.await;
    tracing::info!("shutting down: no new spans; storing what was accepted");
    ready.store(false, Ordering::Release);
    let _ = stop_tx.send(true);
    let grpc_result = servers.grpc.await;
    // Ingest has stopped (gRPC above, HTTP here): store what was accepted.
    let mut others = servers.others.into_iter();
    if let Some(http) = others.next() {
        let _ = http.await;
    }
    core.assembler.flush_all().await;
    let _ = servers.retention.await;
    for task in others {
        let _ = task.await;
    }
    if let Some(r) = &core.replication {
        // Everything accepted is stored: the peers can drop their copies.
        r.replicator.final_heartbeat(&core.wal).await;
        r.replicas.shutdown().await;
    }
    core.wal.shutdown().await?;
    tracing::info!("collector stopped");
    match grpc_result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ServerError::Serve(e.to_string())),
        Err(e) => Err(ServerError::Serve(e.to_string())),
    }
}

fn local(l: &TrackedListener) -> Result<SocketAddr, ServerError> {
    l.local_addr()
        .map_err(|e| ServerError::Serve(format!("local address: {e}")))
}

async fn retention_loop(
    storage: Arc<dyn Storage>,
    metrics: Arc<Metrics>,
    retention: Duration,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let cut = clew_model::now_unix_nanos()
            .saturating_sub(u64::try_from(retention.as_nanos()).unwrap_or(u64::MAX));
        match storage.prune_traces(cut).await {
            Ok(stats) => {
                metrics.record_prune(stats.traces, stats.spans);
                if stats.traces > 0 {
                    tracing::info!(
                        traces = stats.traces,
                        spans = stats.spans,
                        "pruned expired traces"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e.detail(), "pruning failed; will retry"),
        }
        if let Err(e) = storage.prune_rollups(cut).await {
            tracing::warn!(error = %e.detail(), "pruning roll-ups failed; will retry");
        }
    }
}
