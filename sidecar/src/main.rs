//! `clew-sidecar`: see `clew-sidecar --help`.

use clap::Parser as _;
use clew_sidecar::server::{Config, run};

// One thread is plenty for a per-pod agent and keeps its footprint small.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    clew_runtime::init_logging();
    // Every connection is a descriptor: the connection limits, not a soft
    // limit of 1024, must bound the sidecar.
    clew_runtime::net::raise_nofile_limit_logged();
    let args = clew_runtime::config::args_with_file::<Config>(
        std::env::args_os().collect(),
        "CLEW_SIDECAR_CONFIG",
    )?;
    let config = Config::parse_from(args);
    run(config, clew_runtime::shutdown_signal(), |_| {}).await?;
    Ok(())
}
