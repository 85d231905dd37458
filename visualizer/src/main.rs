//! `clew-visualizer`: see `clew-visualizer --help`.

use clap::Parser as _;
use clew_visualizer::{Config, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    clew_runtime::init_logging();
    clew_runtime::net::raise_nofile_limit_logged();
    let config = Config::parse();
    run(config, shutdown_signal(), |_| {}).await?;
    Ok(())
}

/// Ctrl-C or SIGTERM (what Kubernetes sends before killing a pod).
async fn shutdown_signal() {
    clew_runtime::shutdown_signal().await;
    tracing::info!("shutting down");
}
