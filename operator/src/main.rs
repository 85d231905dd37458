//! `clew-operator`: the TraceCollector controller and the sidecar-injection webhook.

use clap::Parser;
use clew_operator::run::{Config, run};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = Config::parse();
    tracing_subscriber::registry()
        .with(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with(tracing_subscriber::fmt::layer())
        .init();
    clew_runtime::net::raise_nofile_limit_logged();
    // One process-wide TLS provider for the API client and the webhook server.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    run(cfg, shutdown).await
}
