//! `service-b`: see `service-b --help`.

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    clew_services::telemetry::init_logging();
    let cfg = clew_services::cli::ServiceBConfig::parse();
    clew_services::cli::run_b(cfg, clew_services::telemetry::shutdown_signal()).await
}
