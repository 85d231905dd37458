//! `clew-traffic`: see `clew-traffic --help`.

use std::sync::atomic::Ordering;

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    clew_services::telemetry::init_logging();
    let cfg = clew_services::traffic::TrafficConfig::parse();
    let tally =
        clew_services::traffic::run(cfg, clew_services::telemetry::shutdown_signal()).await?;
    println!(
        "ok {} client_errors {} server_errors {} failed {}",
        tally.ok.load(Ordering::Relaxed),
        tally.client_errors.load(Ordering::Relaxed),
        tally.server_errors.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed)
    );
    Ok(())
}
