//! Starts and ends N sampled spans with 5 attributes in a plain loop and
//! prints the cost per span: a profiling target for `perf record`, beside
//! the criterion bench.
//!
//! `cargo run --release -p clew-tracer --example spanloop -- 5000000 [noexport]`
//! (`NATTR=0..5` sets how many attributes; it prints wall time and this
//! thread's CPU time per span).

use std::time::{Duration, Instant};

#[path = "../benches/common/mod.rs"]
#[allow(dead_code)]
mod common;

use common::{ATTRS, ClewNoop as Discard};

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let export = args.next().as_deref() != Some("noexport");
    let builder = clew_tracer::Tracer::builder("spanloop").sampler(clew_tracer::Sampler::AlwaysOn);
    let tracer = if export {
        builder.exporter(Discard).build()
    } else {
        builder.build()
    };
    let cpu0 = thread_cpu_seconds();
    let nattr: usize = std::env::var("NATTR")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let start = Instant::now();
    for _ in 0..n {
        let mut span = tracer.start("op");
        for (k, v) in ATTRS.into_iter().take(nattr) {
            span.set_attribute(k, v);
        }
        span.end();
    }
    let elapsed = start.elapsed();
    let cpu = thread_cpu_seconds() - cpu0;
    tracer.shutdown(Duration::from_secs(5));
    println!(
        "{:.1} ns per span over {n} spans ({}); {:.1} ns of this thread's CPU per span; {:?}",
        elapsed.as_nanos() as f64 / n as f64,
        if export { "exported" } else { "no exporter" },
        cpu * 1e9 / n as f64,
        tracer.stats()
    );
}

/// This thread's user + system CPU seconds (Linux; 0 elsewhere), from
/// /proc/thread-self/stat (10 ms resolution: run a few million spans).
fn thread_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/thread-self/stat") else {
        return 0.0;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}
