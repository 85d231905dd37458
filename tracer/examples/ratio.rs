//! clew against opentelemetry_sdk and fastrace in interleaved slices: the
//! same work as `benches/span.rs` (a sampled span with 5 attributes, each
//! library on its real export path with a discarding exporter), but the
//! libraries take turns every 100,000 spans (after each turn, untimed, the
//! library's pipeline is flushed) and each round's ratio comes from slices
//! measured a fraction of a second apart. On a machine whose speed
//! drifts by tens of percent between seconds (a shared VM), the median of
//! those ratios is steadier than two criterion figures taken seconds apart.
//!
//! `cargo run --release -p clew-tracer --example ratio -- [rounds] [spans per slice]`
//! (defaults: 30 rounds of 100,000 spans).

use std::time::{Duration, Instant};

#[path = "../benches/common/mod.rs"]
mod common;

use common::{ATTRS, ClewNoop, FastraceNoop, OtelNoop};

/// Nanoseconds per span over `n` spans of `f`; then, untimed, `settle`
/// exports what the slice queued, so that no library's backlog runs on
/// into the next library's slice.
fn slice(n: u32, mut f: impl FnMut(), settle: impl FnOnce()) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    let ns = t.elapsed().as_nanos() as f64 / f64::from(n);
    settle();
    ns
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(30);
    let n: u32 = args.next().and_then(|s| s.parse().ok()).unwrap_or(100_000);

    let clew = clew_tracer::Tracer::builder("bench")
        .sampler(clew_tracer::Sampler::AlwaysOn)
        .exporter(ClewNoop)
        .build();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOn)
        .with_batch_exporter(OtelNoop)
        .build();
    fastrace::set_reporter(FastraceNoop, fastrace::collector::Config::default());
    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
    let otel = provider.tracer("bench");

    let mut clew_span = || {
        let mut s = clew.start("op");
        for (k, v) in ATTRS {
            s.set_attribute(k, v);
        }
        s.end();
    };
    let mut otel_span = || {
        let mut s = otel.start("op");
        for (k, v) in ATTRS {
            s.set_attribute(opentelemetry::KeyValue::new(k, v));
        }
        s.end();
    };
    let mut fastrace_span = || {
        let parent = fastrace::prelude::SpanContext::random().sampled(true);
        drop(fastrace::prelude::Span::root("op", parent).with_properties(|| ATTRS));
    };

    let clew_flush = || {
        clew.force_flush(Duration::from_secs(10));
    };
    let otel_flush = || {
        let _ = provider.force_flush();
    };
    let fastrace_flush = fastrace::flush;

    // Warm up every path (allocations, recycled spans, worker threads).
    slice(n, &mut clew_span, clew_flush);
    slice(n, &mut otel_span, otel_flush);
    slice(n, &mut fastrace_span, fastrace_flush);

    let (mut c, mut o, mut f) = (Vec::new(), Vec::new(), Vec::new());
    let (mut vs_otel, mut vs_fastrace) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        // Alternate who goes first, so neither always follows the other.
        let (a, b, d) = if r % 2 == 0 {
            let a = slice(n, &mut clew_span, clew_flush);
            let b = slice(n, &mut otel_span, otel_flush);
            (a, b, slice(n, &mut fastrace_span, fastrace_flush))
        } else {
            let d = slice(n, &mut fastrace_span, fastrace_flush);
            let b = slice(n, &mut otel_span, otel_flush);
            (slice(n, &mut clew_span, clew_flush), b, d)
        };
        c.push(a);
        o.push(b);
        f.push(d);
        vs_otel.push(a / b);
        vs_fastrace.push(a / d);
    }
    let _ = clew.shutdown(Duration::from_secs(5));
    let _ = provider.shutdown();
    fastrace::flush();

    let q = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 10], v[v.len() / 2], v[v.len() * 9 / 10])
    };
    println!(
        "{rounds} rounds of {n} sampled spans with 5 attributes; ns per span, median (p10-p90):"
    );
    for (name, v) in [
        ("clew", &mut c),
        ("opentelemetry_sdk", &mut o),
        ("fastrace", &mut f),
    ] {
        let (lo, mid, hi) = q(v);
        println!("  {name:18} {mid:8.1}  ({lo:.1}-{hi:.1})");
    }
    let (lo, mid, hi) = q(&mut vs_otel);
    println!("clew / opentelemetry_sdk per round: median {mid:.3} (p10 {lo:.3}, p90 {hi:.3})");
    println!(
        "clew / fastrace per round: median {:.3}",
        median(&mut vs_fastrace)
    );
}
