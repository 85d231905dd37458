//! Wires the sidecar together: the pipeline, endpoint discovery, the
//! receivers, the ops endpoint and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clew_reliability::CircuitBreakerConfig;
use clew_runtime::net::{ConnMetrics, TrackedListener};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::pipeline::{Pipeline, PipelineConfig};
use crate::receiver::{NativeGrpc, OtlpGrpc, http_router};

clew_runtime::conn_limit_flags!(
    /// Connection limits of the sidecar's listeners.
    pub struct ConnFlags,
    env = "CLEW_SIDECAR_"
);

/// Sidecar settings: flags, or `CLEW_SIDECAR_*` environment variables.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "clew-sidecar",
    version,
    args_override_self = true,
    about = "clew sidecar agent: takes spans on localhost and forwards them to the collectors, routed by trace ID, buffering in memory and on disk"
)]
pub struct Config {
    /// A YAML file of settings: keys are these flags' long names, values
    /// what the flag takes. Flags and environment variables override it.
    #[arg(long, env = "CLEW_SIDECAR_CONFIG")]
    pub config: Option<PathBuf>,
    /// OTLP/gRPC and clew native gRPC listen address.
    #[arg(long, env = "CLEW_SIDECAR_GRPC_ADDR", default_value = "127.0.0.1:4317")]
    pub grpc_addr: SocketAddr,
    /// OTLP/HTTP listen address (`POST /v1/traces`).
    #[arg(long, env = "CLEW_SIDECAR_HTTP_ADDR", default_value = "127.0.0.1:4318")]
    pub http_addr: SocketAddr,
    /// `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "CLEW_SIDECAR_OPS_ADDR", default_value = "0.0.0.0:9465")]
    pub ops_addr: SocketAddr,
    /// Collector endpoints (`host:port` or `http://host:port`), comma-separated.
    #[arg(long, env = "CLEW_SIDECAR_COLLECTORS", value_delimiter = ',')]
    pub collectors: Vec<String>,
    /// `host:port` of a headless Service whose DNS records list the
    /// collectors; re-resolved every `--dns-refresh`.
    #[arg(long, env = "CLEW_SIDECAR_COLLECTOR_DNS")]
    pub collector_dns: Option<String>,
    /// How often the collector DNS name is resolved again.
    #[arg(long, env = "CLEW_SIDECAR_DNS_REFRESH", default_value = "10s", value_parser = humantime::parse_duration)]
    pub dns_refresh: Duration,
    /// PEM CA certificates the collectors' certificates chain to: the
    /// sidecar talks to collectors over TLS. Re-read when it changes.
    #[arg(long, env = "CLEW_SIDECAR_COLLECTOR_CA")]
    pub collector_ca: Option<PathBuf>,
    /// PEM client certificate for collectors that require one (mTLS).
    #[arg(long, env = "CLEW_SIDECAR_COLLECTOR_CERT", requires_all = ["collector_ca", "collector_key"])]
    pub collector_cert: Option<PathBuf>,
    /// PEM private key of `--collector-cert`.
    #[arg(long, env = "CLEW_SIDECAR_COLLECTOR_KEY", requires = "collector_cert")]
    pub collector_key: Option<PathBuf>,
    /// The name the collectors' certificates carry (e.g. the headless
    /// Service's DNS name), when it is not the address dialled.
    #[arg(
        long,
        env = "CLEW_SIDECAR_COLLECTOR_SERVER_NAME",
        requires = "collector_ca"
    )]
    pub collector_server_name: Option<String>,
    /// How often the TLS files are checked for changes.
    #[arg(long, env = "CLEW_SIDECAR_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub tls_reload_interval: Duration,
    /// Directory of the disk spill logs (one per collector endpoint).
    #[arg(
        long,
        env = "CLEW_SIDECAR_SPILL_DIR",
        default_value = "/var/lib/clew-sidecar"
    )]
    pub spill_dir: PathBuf,
    /// Memory buffer limit over all endpoints, in bytes; beyond it spans go
    /// to the spill log.
    #[arg(long, env = "CLEW_SIDECAR_BUFFER_BYTES", default_value_t = 8 << 20)]
    pub buffer_bytes: usize,
    /// Size cap of each endpoint's spill log, in bytes. When the memory
    /// buffer and the spill log are full, applications are told to retry.
    #[arg(long, env = "CLEW_SIDECAR_SPILL_MAX_BYTES", default_value_t = 256 << 20)]
    pub spill_max_bytes: u64,
    /// Largest request sent to a collector, in bytes.
    #[arg(long, env = "CLEW_SIDECAR_BATCH_MAX_BYTES", default_value_t = 2 << 20)]
    pub batch_max_bytes: usize,
    /// Most spans in one request sent to a collector; keep it at most the
    /// collectors' `--max-spans-per-batch` (a collector that refuses a
    /// request as too large gets it again in halves).
    #[arg(long, env = "CLEW_SIDECAR_BATCH_MAX_SPANS", default_value_t = crate::pipeline::DEFAULT_BATCH_MAX_SPANS)]
    pub batch_max_spans: usize,
    /// When a request is acknowledged to the application: `disk` once its
    /// spans, written to the spill log, are acknowledged by a collector or
    /// fsynced, whichever comes first (nothing acknowledged is lost to
    /// kill -9 or a power loss), `memory` once they are in memory
    /// or the spill log (spans only in memory die with the process).
    #[arg(
        long,
        env = "CLEW_SIDECAR_DURABILITY",
        value_enum,
        default_value = "disk"
    )]
    pub durability: crate::pipeline::Durability,
    /// With disk durability, how long written spans wait for the
    /// collector's acknowledgement before they are fsynced: a request is
    /// answered once its spans are acknowledged by a collector or fsynced,
    /// whichever comes first.
    #[arg(long, env = "CLEW_SIDECAR_FSYNC_DELAY", default_value = "20ms", value_parser = humantime::parse_duration)]
    pub fsync_delay: Duration,
    /// Largest request accepted from an application, in bytes.
    #[arg(long, env = "CLEW_SIDECAR_MAX_REQUEST_BYTES", default_value_t = 16 << 20)]
    pub max_request_bytes: usize,
    /// Deadline of one export request to a collector.
    #[arg(long, env = "CLEW_SIDECAR_REQUEST_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Consecutive failed sends that open an endpoint's circuit breaker.
    #[arg(long, env = "CLEW_SIDECAR_BREAKER_FAILURES", default_value_t = 3)]
    pub breaker_failures: u32,
    /// How long an open breaker waits before a trial send.
    #[arg(long, env = "CLEW_SIDECAR_BREAKER_COOL_DOWN", default_value = "2s", value_parser = humantime::parse_duration)]
    pub breaker_cool_down: Duration,
    /// On shutdown, how long to try delivering the memory buffer before
    /// spilling what is left.
    #[arg(long, env = "CLEW_SIDECAR_SHUTDOWN_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,
    /// Connection limits of the gRPC and OTLP/HTTP listeners.
    #[command(flatten)]
    pub conn: ConnFlags,
    /// Most connections of the ops listener, apart from the others so that
    /// `/healthz` and `/metrics` answer even when ingest is saturated.
    #[arg(long, env = "CLEW_SIDECAR_OPS_MAX_CONNECTIONS", default_value_t = 64)]
    pub ops_max_connections: usize,
}

/// Start-up errors.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Neither `--collectors` nor `--collector-dns` was given.
    #[error(
        "no collectors: set --collectors (CLEW_SIDECAR_COLLECTORS) or --collector-dns (CLEW_SIDECAR_COLLECTOR_DNS)"
    )]
    NoCollectors,
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The pipeline could not start.
    #[error(transparent)]
    Pipeline(#[from] crate::pipeline::Error),
    /// A server failed.
    #[error("server error: {0}")]
    Serve(String),
    /// The TLS files towards the collectors are unusable.
    #[error("--collector-ca/--collector-cert/--collector-key: {0}")]
    Tls(#[from] clew_runtime::tls::TlsError),
}

/// The addresses the sidecar listens on.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// OTLP/gRPC + native.
    pub grpc: SocketAddr,
    /// OTLP/HTTP.
    pub http: SocketAddr,
    /// Ops.
    pub ops: SocketAddr,
}

impl Config {
    /// TLS towards the collectors, with `--collector-ca`.
    pub fn collector_tls(&self) -> Result<Option<clew_runtime::tls::ClientTls>, ServerError> {
        let Some(ca) = &self.collector_ca else {
            return Ok(None);
        };
        let files = clew_runtime::tls::ClientTlsFiles {
            ca: ca.clone(),
            identity: self.collector_cert.clone().zip(self.collector_key.clone()),
            server_name: self.collector_server_name.clone(),
        };
        Ok(Some(clew_runtime::tls::ClientTls::load(files)?))
    }

    /// The pipeline settings these flags describe.
    pub fn pipeline(&self) -> PipelineConfig {
        let mut p = PipelineConfig::new(self.spill_dir.clone());
        p.buffer_bytes = self.buffer_bytes;
        p.spill_max_bytes = self.spill_max_bytes;
        p.batch_max_bytes = self.batch_max_bytes;
        p.batch_max_spans = self.batch_max_spans.max(1);
        p.durability = self.durability;
        p.fsync_delay = self.fsync_delay;
        p.request_timeout = self.request_timeout;
        p.breaker = CircuitBreakerConfig {
            consecutive_failures: self.breaker_failures,
            cool_down: self.breaker_cool_down,
            ..p.breaker
        };
        p.shutdown_timeout = self.shutdown_timeout;
        p
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

fn local(l: &TrackedListener) -> Result<SocketAddr, ServerError> {
    l.local_addr()
        .map_err(|e| ServerError::Serve(format!("local address: {e}")))
}

/// Resolves a headless Service name to one endpoint per address.
pub async fn resolve(name: &str) -> std::io::Result<Vec<String>> {
    let mut out: Vec<String> = tokio::net::lookup_host(name)
        .await?
        .map(|a| format!("http://{a}"))
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// Re-resolves `name` every `every` and sets the endpoints to the `fixed`
/// ones (from `--collectors`) plus the answer.
async fn dns_loop(
    pipeline: Pipeline,
    fixed: Vec<String>,
    name: String,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        match resolve(&name).await {
            // An empty answer during a rollout must not strand spans: keep
            // the last known set until the name resolves again.
            Ok(list) if !list.is_empty() => {
                let list: Vec<String> = fixed.iter().cloned().chain(list).collect();
                if let Err(e) = pipeline.set_endpoints(&list) {
                    tracing::warn!(error = %e, "collector endpoints from DNS rejected");
                }
                pipeline.metrics().dns_refreshes.inc();
            }
            Ok(_) => {
                tracing::warn!(name = %name, "collector DNS name has no addresses; keeping the last set")
            }
            Err(e) => {
                tracing::warn!(name = %name, error = %e, "resolving collectors failed; keeping the last set")
            }
        }
    }
}

/// Opens the pipeline and sets its first endpoints: the `--collectors`
/// ones (returned, for the DNS refreshes) plus what the DNS name resolves
/// to now.
async fn open_pipeline(config: &Config) -> Result<(Pipeline, Vec<String>), ServerError> {
    if config.collectors.iter().all(|c| c.trim().is_empty()) && config.collector_dns.is_none() {
        return Err(ServerError::NoCollectors);
    }
    let mut settings = config.pipeline();
    settings.tls = config.collector_tls()?;
    if let Some(tls) = &settings.tls {
        // Lives as long as the process: new connections use the files in force.
        tls.spawn_reloader(config.tls_reload_interval, "collectors");
    }
    let pipeline = Pipeline::open(settings, crate::metrics::Metrics::new())?;
    let fixed: Vec<String> = config
        .collectors
        .iter()
        .filter(|c| !c.trim().is_empty())
        .cloned()
        .collect();
    let mut initial = fixed.clone();
    if let Some(name) = &config.collector_dns {
        match resolve(name).await {
            Ok(list) => initial.extend(list),
            Err(e) => {
                tracing::warn!(name = %name, error = %e, "resolving collectors failed; will retry")
            }
        }
    }
    pipeline.set_endpoints(&initial)?;
    Ok((pipeline, fixed))
}

/// The three listeners, bound and tracked.
struct Listeners {
    grpc: TrackedListener,
    http: TrackedListener,
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
        http: track(bind(config.http_addr).await?, "http", limits),
        ops: track(bind(config.ops_addr).await?, "ops", ops_limits),
    };
    let bound = Bound {
        grpc: local(&l.grpc)?,
        http: local(&l.http)?,
        ops: local(&l.ops)?,
    };
    Ok((l, bound))
}

/// Resolves once `rx` says stop.
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

type GrpcTask = JoinHandle<Result<(), tonic::transport::Error>>;

/// Starts the receivers (gRPC, HTTP) and the ops endpoint.
fn spawn_servers(
    config: &Config,
    pipeline: &Pipeline,
    l: Listeners,
    conns: ConnMetrics,
    ready: Arc<AtomicBool>,
    stop: &watch::Receiver<bool>,
) -> (GrpcTask, JoinHandle<()>, JoinHandle<()>) {
    let max = config.max_request_bytes;
    let gzip = tonic::codec::CompressionEncoding::Gzip;
    let native =
        clew_proto::v1::collector_server::CollectorServer::new(NativeGrpc(pipeline.clone()));
    let grpc = clew_runtime::net::grpc_server(&config.conn.limits())
        .add_service(
            TraceServiceServer::new(OtlpGrpc(pipeline.clone()))
                .max_decoding_message_size(max)
                .accept_compressed(gzip),
        )
        .add_service(
            native
                .max_decoding_message_size(max)
                .accept_compressed(gzip),
        )
        .serve_with_incoming_shutdown(l.grpc.into_incoming(), stopped(stop.clone()));
    let serve = clew_runtime::net::serve_http;
    let http = serve(
        l.http,
        http_router(pipeline.clone(), max),
        stopped(stop.clone()),
    );
    let render_pipeline = pipeline.clone();
    let render = Arc::new(move || {
        render_pipeline.pending();
        render_pipeline.metrics().render() + &conns.render()
    });
    let ops = serve(
        l.ops,
        clew_runtime::ops::router(render, ready),
        stopped(stop.clone()),
    );
    (tokio::spawn(grpc), tokio::spawn(http), tokio::spawn(ops))
}

/// Waits up to `drain` for a server to stop, then closes what is still
/// connected: a client holding a stream open must not keep the sidecar
/// from delivering or spilling what it holds before the pod is killed.
async fn drain_server<T>(
    mut task: JoinHandle<T>,
    drain: Duration,
    what: &str,
) -> Option<Result<T, tokio::task::JoinError>> {
    match tokio::time::timeout(drain, &mut task).await {
        Ok(r) => Some(r),
        Err(_) => {
            tracing::warn!(
                server = what,
                "clients still connected after the shutdown timeout; closing them"
            );
            task.abort();
            None
        }
    }
}

/// Runs the sidecar until `shutdown` resolves; then stops taking spans,
/// delivers or spills what it holds, and returns.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(Bound) + Send,
) -> Result<(), ServerError> {
    let (pipeline, fixed) = open_pipeline(&config).await?;
    let conns = ConnMetrics::new();
    let (listeners, bound) = bind_all(&config, &conns).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let ready = Arc::new(AtomicBool::new(false));
    let (grpc, http, ops) = spawn_servers(
        &config,
        &pipeline,
        listeners,
        conns,
        Arc::clone(&ready),
        &stop_rx,
    );
    let dns = config.collector_dns.clone().map(|name| {
        let p = pipeline.clone();
        tokio::spawn(dns_loop(
            p,
            fixed,
            name,
            config.dns_refresh,
            stop_rx.clone(),
        ))
    });
    ready.store(true, Ordering::Release);
    tracing::info!(grpc = %bound.grpc, http = %bound.http, ops = %bound.ops, endpoints = ?pipeline.endpoints(), "sidecar listening");
    on_bound(bound);

    shutdown.await;
    tracing::info!("shutting down: no new spans; delivering or spilling what is held");
    ready.store(false, Ordering::Release);
    let _ = stop_tx.send(true);
    let grpc_result = drain_server(grpc, config.shutdown_timeout, "grpc").await;
    drain_server(http, config.shutdown_timeout, "http").await;
    if let Some(dns) = dns {
        let _ = dns.await;
    }
    pipeline.shutdown().await;
    let _ = ops.await;
    let (mem, spill) = pipeline.pending();
    tracing::info!(memory_bytes = mem, spill_bytes = spill, "sidecar stopped");
    match grpc_result {
        Some(Ok(Err(e))) => Err(ServerError::Serve(e.to_string())),
        Some(Err(e)) => Err(ServerError::Serve(e.to_string())),
        _ => Ok(()),
    }
}
