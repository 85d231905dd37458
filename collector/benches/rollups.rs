//! The hot-path cost of the roll-ups: `Rollups::record` of a 100-span
//! record (ten traces of ten spans over 20 services, each span the child of
//! the trace's root or of the span before it, every id fresh), with the
//! call pairing turning its generations as at 300k spans/s with the default
//! 10 s window; and the same spans without ids (RED only, no pairing).

#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use clew_collector::rollup::{RollupConfig, Rollups};
use clew_collector::wal::{Wal, WalConfig};
use clew_proto::v1::{Span, Status};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const BATCH: u64 = 100;
/// Records between turns: 3M spans, 10 s at 300k spans/s.
const TURN_EVERY: u64 = 30_000;

/// Record `r`'s spans; `ids`: with trace and span ids (paired).
fn record(r: u64, now: u64, ids: bool) -> Vec<Span> {
    (0..BATCH)
        .map(|i| {
            let n = r * BATCH + i;
            let (trace, pos) = (n / 10, n % 10);
            let id = |k: u64| (trace * 16 + k + 1).to_be_bytes().to_vec();
            let parent = match pos {
                0 => Vec::new(),
                p if p % 2 == 1 => id(0),
                p => id(p - 1),
            };
            let start = now + n * 1_000;
            Span {
                trace_id: if ids {
                    (trace + 1).to_be_bytes().repeat(2)
                } else {
                    Vec::new()
                },
                span_id: if ids { id(pos) } else { Vec::new() },
                parent_span_id: if ids { parent } else { Vec::new() },
                service: format!("service-{}", (trace + pos / 3) % 20),
                name: format!("op-{}", n % 20),
                kind: if pos == 0 { 2 } else { 3 },
                start_time_unix_nano: start,
                end_time_unix_nano: start + 100_000 + n * 7_919 % 50_000_000,
                status: Some(Status {
                    code: if n.is_multiple_of(50) { 2 } else { 0 },
                    message: String::new(),
                }),
                ..Default::default()
            }
        })
        .collect()
}

fn run(c: &mut Criterion, name: &str, ids: bool) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = rt
        .block_on(async { Wal::open(dir.path(), WalConfig::default()) })
        .unwrap();
    let config = RollupConfig {
        call_window: Duration::ZERO,
        ..RollupConfig::default()
    };
    let rollups = Rollups::new(wal, 1, config);
    let now = clew_model::now_unix_nanos();
    // Distinct records, built ahead: ids never repeat within a window.
    let records: Vec<Vec<Span>> = (0..TURN_EVERY).map(|r| record(r, now, ids)).collect();
    let mut g = c.benchmark_group("rollups");
    g.throughput(Throughput::Elements(BATCH));
    let mut r = 0u64;
    g.bench_function(name, |b| {
        b.iter(|| {
            let i = r % TURN_EVERY;
            if i == 0 && r > 0 {
                rollups.floor(r);
            }
            rollups.record(r, black_box(&records[i as usize]));
            r += 1;
        })
    });
    g.finish();
}

fn bench(c: &mut Criterion) {
    run(c, "record 100 spans, paired", true);
    run(c, "record 100 spans, no ids (RED only)", false);
}

criterion_group!(benches, bench);
criterion_main!(benches);
