//! `clew-collector`: see `clew-collector --help`.

use clap::Parser as _;
use clew_collector::server::{Config, run};

// Ingest allocates per span on one thread and frees on another (assembly,
// storage); glibc's malloc spent a quarter of the collector's CPU on that
// (arena locks, consolidation). mimalloc's per-thread heaps with deferred
// cross-thread frees do not. It is built with `no_thp` (collector/Cargo.toml):
// advising transparent huge pages made each fresh page fault in and zero
// 2 MiB, which cost more than it saved (docs/PERFORMANCE.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    clew_runtime::init_logging();
    let args = clew_runtime::config::args_with_file::<Config>(
        std::env::args_os().collect(),
        "CLEW_CONFIG",
    )?;
    let config = Config::parse_from(args);
    run(config, clew_runtime::shutdown_signal(), |_| {}).await?;
    Ok(())
}
