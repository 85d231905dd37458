//! Starts and ends N sampled spans with 5 attributes in a plain loop and
//! prints the cost per span: a profiling target for `perf record`, beside
//! the criterion bench.
//!
//! `cargo run --release -p clew-tracer --example spanloop -- 5000000 [noexport]`

use std::time::{Duration, Instant};

use clew_tracer::export::{BoxFuture, ExportBatch, ExportError, SpanExporter};

struct Discard;

impl SpanExporter for Discard {
    fn export<'a>(&'a mut self, batch: &'a ExportBatch) -> BoxFuture<'a, Result<(), ExportError>> {
        std::hint::black_box(batch);
        Box::pin(async { Ok(()) })
    }
}

const ATTRS: [(&str, &str); 5] = [
    ("http.request.method", "GET"),
    ("url.path", "/api/v1/search"),
    ("server.address", "service-a"),
    ("user_agent.original", "clew-bench"),
    ("app.tenant", "acme"),
];

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
    let start = Instant::now();
    for _ in 0..n {
        let mut span = tracer.start("op");
        for (k, v) in ATTRS {
            span.set_attribute(k, v);
        }
        span.end();
    }
    let elapsed = start.elapsed();
    tracer.shutdown(Duration::from_secs(5));
    println!(
        "{:.1} ns per span over {n} spans ({}); {:?}",
        elapsed.as_nanos() as f64 / n as f64,
        if export { "exported" } else { "no exporter" },
        tracer.stats()
    );
}
