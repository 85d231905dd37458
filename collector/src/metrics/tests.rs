//! The collector's registry, built as the server builds it (memory storage,
//! so the memory store's metrics are registered too), against its section
//! of `docs/METRICS.md`.

use std::sync::Arc;

use clew_analysis::sampling::Engine;
use clew_proto::v1::{Span, Status};

use super::Metrics;
use crate::assembly::{Assembler, AssemblerConfig};
use crate::ingest::{Ingest, IngestConfig};
use crate::sampling::{Sampler, SamplerConfig};
use crate::sink::StorageSink;
use crate::storage::Storage;
use crate::storage::memory::MemoryStorage;
use crate::wal::{Wal, tests::fast_config};

// The assembler starts its flush task on the runtime.
#[tokio::test]
async fn the_registry_matches_the_catalogue() {
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new(1_000));
    let (wal, _) = Wal::open(dir.path(), fast_config()).unwrap();
    let store_latency = Metrics::store_latency_histogram();
    let sink = StorageSink::new(Arc::clone(&storage)).with_latency(store_latency.clone());
    let sampler = Arc::new(Sampler::new(
        Engine::from_yaml(POLICIES).unwrap(),
        SamplerConfig::default(),
    ));
    let assembler = Arc::new(
        Assembler::with_sampler(
            AssemblerConfig::default(),
            Arc::new(sink),
            wal.clone(),
            Arc::clone(&sampler),
        )
        .unwrap(),
    );
    let ingest = Ingest::new(Arc::clone(&assembler), IngestConfig::default());
    let rollups = Arc::new(crate::rollup::Rollups::new(
        wal.clone(),
        1,
        crate::rollup::RollupConfig::default(),
    ));
    let metrics = Metrics::new(ingest, assembler, wal, store_latency)
        .with_storage(storage)
        .with_rollups(rollups)
        .with_sampling(sampler);
    // A scrape first, so the labelled counters have children to gather.
    metrics.render();
    clew_runtime::metrics::catalogue_check("collector", &metrics.registry);
}

const POLICIES: &str = "policies:
  - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}
  - {name: big, type: span_count, span_count: {min_spans: 3}}
";

fn span(trace: u8, error: bool) -> Span {
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![1; 8],
        status: error.then(|| Status {
            code: 2,
            ..Status::default()
        }),
        ..Span::default()
    }
}

#[tokio::test]
async fn sampling_decisions_are_counted_per_policy() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), fast_config()).unwrap();
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new(1_000));
    let sampler = Arc::new(Sampler::new(
        Engine::from_yaml(POLICIES).unwrap(),
        SamplerConfig::default(),
    ));
    let sink = Arc::new(StorageSink::new(storage));
    let assembler = Arc::new(
        Assembler::with_sampler(
            AssemblerConfig::default(),
            sink,
            wal.clone(),
            sampler.clone(),
        )
        .unwrap(),
    );
    let ingest = Ingest::new(Arc::clone(&assembler), IngestConfig::default());
    let metrics = Metrics::new(ingest, assembler, wal, Metrics::store_latency_histogram())
        .with_sampling(Arc::clone(&sampler));
    let before = metrics.render();
    for line in [
        "clew_sampling_traces_total{decision=\"sampled\",policy=\"errors\"} 0",
        "clew_sampling_traces_total{decision=\"sampled\",policy=\"big\"} 0",
        "clew_sampling_dropped_spans_total{reason=\"span_cap\"} 0",
    ] {
        assert!(before.contains(line), "{line} in {before}");
    }
    let judge = |t: u8, spans: &[Span]| sampler.judge(&[t; 16], spans, false, 0);
    assert!(judge(1, &[span(1, true)]));
    assert!(judge(2, &[span(2, false), span(2, true), span(2, false)]));
    assert!(judge(3, &[span(3, false), span(3, false), span(3, false)]));
    assert!(!judge(4, &[span(4, false)]));
    assert!(!judge(4, &[span(4, false), span(4, false)]));
    let text = metrics.render();
    for line in [
        "clew_sampling_traces_total{decision=\"sampled\",policy=\"errors\"} 2",
        "clew_sampling_traces_total{decision=\"sampled\",policy=\"big\"} 1",
        "clew_sampling_traces_total{decision=\"not_sampled\",policy=\"(none)\"} 1",
        "clew_sampling_late_spans_total{decision=\"not_sampled\"} 2",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
}
