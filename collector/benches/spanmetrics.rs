//! The hot-path cost of the span metrics: `SpanMetrics::record` of a
//! 100-span record (what `Assembler` hands on per WAL record), every span's
//! series already present (the steady state: 20 services × 25 span names ×
//! 2 statuses = 1,000 series), from one thread and from two at once; and
//! past the cardinality limit (every span into the overflow series).

#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use clew_collector::spanmetrics::SpanMetrics;
use clew_proto::v1::{Span, Status};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const BATCH: usize = 100;

/// Record `r`'s spans: 20 services × 25 span names × 2 statuses, 1,000
/// series, durations from 0.1 ms to ~3 s.
fn record(r: usize) -> Vec<Span> {
    (0..BATCH)
        .map(|i| {
            let n = r * BATCH + i;
            let start = 1_700_000_000_000_000_000u64 + n as u64 * 1000;
            Span {
                service: format!("service-{}", n % 20),
                name: format!("GET /api/v1/resource-{}/{{id}}", (n / 20) % 25),
                kind: 2,
                start_time_unix_nano: start,
                end_time_unix_nano: start + 100_000 + (n as u64 * 7_919 % 3_000_000_000),
                status: Some(Status {
                    // Every series also as an error: 1 record in 8 fails.
                    code: if (n / 500).is_multiple_of(8) { 2 } else { 0 },
                    message: String::new(),
                }),
                ..Default::default()
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let records: Vec<Vec<Span>> = (0..64).map(record).collect();
    let mut g = c.benchmark_group("spanmetrics");
    g.throughput(Throughput::Elements(BATCH as u64));

    let m = SpanMetrics::new(5_000);
    for r in &records {
        m.record(r);
    }
    assert_eq!(m.series(), 1_000);
    let mut i = 0;
    g.bench_function("record 100 spans, 1 thread", |b| {
        b.iter(|| {
            i = (i + 1) % records.len();
            m.record(black_box(&records[i]));
        })
    });

    // A second thread recording all along: the lock contended.
    let shared = Arc::new(m);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let other = {
        let (m, stop, records) = (Arc::clone(&shared), Arc::clone(&stop), records.clone());
        std::thread::spawn(move || {
            let mut j = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                j = (j + 1) % records.len();
                m.record(&records[j]);
            }
        })
    };
    g.bench_function("record 100 spans, 2 threads", |b| {
        b.iter(|| {
            i = (i + 1) % records.len();
            shared.record(black_box(&records[i]));
        })
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    other.join().unwrap();

    let full = SpanMetrics::new(1);
    g.bench_function("record 100 spans, all overflow", |b| {
        b.iter(|| {
            i = (i + 1) % records.len();
            full.record(black_box(&records[i]));
        })
    });
    g.finish();

    let mut out = String::new();
    c.bench_function("render 1,000 series", |b| {
        b.iter(|| {
            out.clear();
            shared.render_into(&mut out);
            black_box(out.len())
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
