//! `clew-collector`: see `clew-collector --help`.

use clap::Parser as _;
use clew_collector::server::{Config, run};

// Ingest allocates per span on one thread and frees on another (assembly,
// storage); glibc's malloc spent a quarter of the collector's CPU on that
// (arena locks, consolidation). mimalloc's per-thread heaps with deferred
// cross-thread frees do not. It is built with `no_thp` (collector/Cargo.toml):
// advising transparent huge pages made each fresh page fault in and zero
// 2 MiB, which cost more than it saved (docs/ARCHITECTURE.md, trace assembly).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (option 15 of mimalloc 3's
/// `mi_option_t`; libmimalloc-sys names only some options).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long freed memory stays with the process before mimalloc returns it
/// to the OS. The collector's working set cycles with the assembly idle
/// window: spans are held about a second, then freed, then the same amount
/// is allocated again. With mimalloc's default of one second, pages went
/// back to the OS just before they were needed and came back through page
/// faults that zero them (9 % of the collector's CPU under load, in
/// `clear_page`). Ten seconds outlasts the cycle; memory freed after a
/// burst still goes back.
const PURGE_DELAY_MS: std::ffi::c_long = 10_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // An operator's own MIMALLOC_PURGE_DELAY wins (mimalloc read it at
    // start-up).
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // The workspace denies unsafe code; this is its one exception.
        // SAFETY: sets a plain integer option of the global allocator;
        // mimalloc reads options atomically, so this is sound at any time.
        #[allow(unsafe_code)]
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS)
        };
    }
    clew_runtime::init_logging();
    // Every connection is a descriptor: the connection limits, not a soft
    // limit of 1024, must bound the collector.
    clew_runtime::net::raise_nofile_limit_logged();
    let args = clew_runtime::config::args_with_file::<Config>(
        std::env::args_os().collect(),
        "CLEW_CONFIG",
    )?;
    let config = Config::parse_from(args);
    run(config, clew_runtime::shutdown_signal(), |_| {}).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    /// Option 15 is the purge delay: its mimalloc 3 default is 1,000 ms
    /// (an upgrade that renumbered the options would make it something
    /// else, and the start-up call would set the wrong option).
    #[test]
    fn option_15_is_mimallocs_purge_delay() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: reads a plain integer option of the global allocator.
        #[allow(unsafe_code)]
        let delay = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(delay, 1_000);
    }
}
