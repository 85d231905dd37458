//! Command-line entry points of the demo binaries (kept here so each
//! binary is one call and tests can run the services in-process).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use clew_tracer::Tracer;
use clew_tracer::instrument::TraceLayer;
use tokio::net::TcpListener;
use tonic::service::Routes;

use crate::Faults;
use crate::ops::{self, Metrics};

/// Service A's settings.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "service-a",
    version,
    about = "Demo service A: HTTP frontend, calls service B"
)]
pub struct ServiceAConfig {
    /// HTTP listen address.
    #[arg(long, env = "CLEW_SERVICE_A_ADDR", default_value = "0.0.0.0:8000")]
    pub addr: SocketAddr,
    /// URL of service B.
    #[arg(
        long,
        env = "CLEW_SERVICE_B_URL",
        default_value = "http://127.0.0.1:8001"
    )]
    pub service_b: String,
    /// How long A waits for B's answer (then 503).
    #[arg(long, env = "CLEW_SERVICE_B_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub service_b_timeout: std::time::Duration,
    /// `/metrics` and `/healthz`.
    #[arg(long, env = "CLEW_SERVICE_A_OPS_ADDR", default_value = "0.0.0.0:9470")]
    pub ops_addr: SocketAddr,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub faults: Faults,
}

/// Service B's settings.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "service-b",
    version,
    about = "Demo service B: gRPC business logic, calls service C"
)]
pub struct ServiceBConfig {
    /// gRPC listen address.
    #[arg(long, env = "CLEW_SERVICE_B_ADDR", default_value = "0.0.0.0:8001")]
    pub addr: SocketAddr,
    /// URL of service C.
    #[arg(
        long,
        env = "CLEW_SERVICE_C_URL",
        default_value = "http://127.0.0.1:8002"
    )]
    pub service_c: String,
    /// How long B waits for each of C's answers (then UNAVAILABLE).
    #[arg(long, env = "CLEW_SERVICE_C_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub service_c_timeout: std::time::Duration,
    /// `/metrics` and `/healthz`.
    #[arg(long, env = "CLEW_SERVICE_B_OPS_ADDR", default_value = "0.0.0.0:9471")]
    pub ops_addr: SocketAddr,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub faults: Faults,
}

/// Service C's settings.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "service-c", version, about = "Demo service C: gRPC data layer")]
pub struct ServiceCConfig {
    /// gRPC listen address.
    #[arg(long, env = "CLEW_SERVICE_C_ADDR", default_value = "0.0.0.0:8002")]
    pub addr: SocketAddr,
    /// `/metrics` and `/healthz`.
    #[arg(long, env = "CLEW_SERVICE_C_OPS_ADDR", default_value = "0.0.0.0:9472")]
    pub ops_addr: SocketAddr,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub faults: Faults,
}

/// Binds `addr` and the ops address, serves `serve` until `stop`, then
/// flushes the tracer.
async fn serve_with_ops<F, Fut>(
    name: &'static str,
    addr: SocketAddr,
    ops_addr: SocketAddr,
    faults: &Faults,
    stop: impl Future<Output = ()> + Send + 'static,
    serve: F,
) -> anyhow::Result<()>
where
    F: FnOnce(Tracer, Metrics, TcpListener, tokio::sync::watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    faults.validate().map_err(anyhow::Error::msg)?;
    let tracer = crate::telemetry::tracer(name)?;
    let metrics = Metrics::new(name);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut ops_rx = rx.clone();
    let ops = tokio::spawn(ops::serve(ops_addr, metrics.clone(), async move {
        let _ = ops_rx.wait_for(|s| *s).await;
    }));
    tracing::info!(service = name, %addr, ops = %ops_addr, "listening");
    tokio::spawn(async move {
        stop.await;
        let _ = tx.send(true);
    });
    let result = serve(tracer.clone(), metrics, listener, rx).await;
    let _ = ops.await;
    let t = tracer.clone();
    // Flushing blocks on the export thread: keep it off the runtime.
    let _ = tokio::task::spawn_blocking(move || t.shutdown(Duration::from_secs(5))).await;
    tracing::info!(service = name, "stopped");
    result
}

async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Serves gRPC `routes`, traced by `TraceLayer::grpc_server`, until `rx`
/// turns true.
async fn serve_grpc(
    routes: Routes,
    tracer: Tracer,
    listener: TcpListener,
    rx: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    tonic::transport::Server::builder()
        .layer(TraceLayer::grpc_server(tracer))
        .add_routes(routes)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            stopped(rx),
        )
        .await?;
    Ok(())
}

/// Runs service A until `stop`.
pub async fn run_a(
    cfg: ServiceAConfig,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let faults = cfg.faults.clone();
    serve_with_ops(
        "service-a",
        cfg.addr,
        cfg.ops_addr,
        &cfg.faults,
        stop,
        |tracer, metrics, listener, rx| async move {
            let business =
                crate::frontend::business_client(&cfg.service_b, &tracer, cfg.service_b_timeout)?;
            let app = crate::frontend::app(
                crate::frontend::AppState {
                    business,
                    faults,
                    metrics,
                },
                tracer,
            );
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped(rx))
                .await?;
            Ok(())
        },
    )
    .await
}

/// Runs service B until `stop`.
pub async fn run_b(
    cfg: ServiceBConfig,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let faults = cfg.faults.clone();
    serve_with_ops(
        "service-b",
        cfg.addr,
        cfg.ops_addr,
        &cfg.faults,
        stop,
        |tracer, metrics, listener, rx| async move {
            let data =
                crate::business::data_client(&cfg.service_c, &tracer, cfg.service_c_timeout)?;
            let svc = crate::business::BusinessService::new(tracer.clone(), data, faults, metrics);
            serve_grpc(Routes::new(svc.into_server()), tracer, listener, rx).await
        },
    )
    .await
}

/// Runs service C until `stop`.
pub async fn run_c(
    cfg: ServiceCConfig,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let faults = cfg.faults.clone();
    serve_with_ops(
        "service-c",
        cfg.addr,
        cfg.ops_addr,
        &cfg.faults,
        stop,
        |tracer, metrics, listener, rx| async move {
            let svc = crate::data::DataService::new(tracer.clone(), faults, metrics);
            serve_grpc(Routes::new(svc.into_server()), tracer, listener, rx).await
        },
    )
    .await
}
