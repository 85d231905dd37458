//! `service-a`: see `service-a --help`.

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    clew_services::telemetry::init_logging();
    let cfg = clew_services::cli::ServiceAConfig::parse();
    clew_services::cli::run_a(cfg, clew_services::telemetry::shutdown_signal()).await
}
