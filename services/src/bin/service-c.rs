//! `service-c`: see `service-c --help`.

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    clew_services::telemetry::init_logging();
    let cfg = clew_services::cli::ServiceCConfig::parse();
    clew_services::cli::run_c(cfg, clew_services::telemetry::shutdown_signal()).await
}
