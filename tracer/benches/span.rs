//! Start and end a span with 5 attributes, sampled and unsampled: clew vs
//! opentelemetry_sdk (batch processor, no-op exporter) vs fastrace (no-op
//! reporter), in one run. Each library runs its real export path; only the
//! final exporter discards.
//!
//! `cargo bench -p clew-tracer --bench span`

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

mod common;

use common::{ATTRS, ClewNoop, FastraceNoop, OtelNoop};

fn clew_tracer(sampled: bool) -> clew_tracer::Tracer {
    clew_tracer::Tracer::builder("bench")
        .sampler(if sampled {
            clew_tracer::Sampler::AlwaysOn
        } else {
            clew_tracer::Sampler::AlwaysOff
        })
        .exporter(ClewNoop)
        .build()
}

fn otel_provider(sampled: bool) -> opentelemetry_sdk::trace::SdkTracerProvider {
    opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_sampler(if sampled {
            opentelemetry_sdk::trace::Sampler::AlwaysOn
        } else {
            opentelemetry_sdk::trace::Sampler::AlwaysOff
        })
        .with_batch_exporter(OtelNoop)
        .build()
}

fn bench_spans(c: &mut Criterion) {
    fastrace::set_reporter(FastraceNoop, fastrace::collector::Config::default());

    for sampled in [true, false] {
        let label = if sampled {
            "sampled span, 5 attributes"
        } else {
            "unsampled span, 5 attributes"
        };
        let mut g = c.benchmark_group(label);
        g.measurement_time(Duration::from_secs(4));
        g.warm_up_time(Duration::from_secs(1));

        let t = clew_tracer(sampled);
        g.bench_function("clew", |b| {
            b.iter(|| {
                let mut s = t.start("op");
                for (k, v) in ATTRS {
                    s.set_attribute(k, v);
                }
                s.end();
            })
        });
        t.shutdown(Duration::from_secs(5));

        let provider = otel_provider(sampled);
        {
            use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
            let tracer = provider.tracer("bench");
            g.bench_function("opentelemetry_sdk", |b| {
                b.iter(|| {
                    let mut s = tracer.start("op");
                    for (k, v) in ATTRS {
                        s.set_attribute(opentelemetry::KeyValue::new(k, v));
                    }
                    s.end();
                })
            });
        }
        let _ = provider.shutdown();

        g.bench_function("fastrace", |b| {
            b.iter(|| {
                let parent = fastrace::prelude::SpanContext::random().sampled(sampled);
                let s = fastrace::prelude::Span::root("op", parent).with_properties(|| ATTRS);
                drop(s);
            })
        });
        g.finish();
    }
    fastrace::flush();
}

criterion_group!(benches, bench_spans);
criterion_main!(benches);
