//! The collector's registry, built as the server builds it (memory storage,
//! so the memory store's metrics are registered too), against its section
//! of `docs/METRICS.md`.

use std::sync::Arc;

use super::Metrics;
use crate::assembly::{Assembler, AssemblerConfig};
use crate::ingest::{Ingest, IngestConfig};
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
    let assembler =
        Arc::new(Assembler::new(AssemblerConfig::default(), Arc::new(sink), wal.clone()).unwrap());
    let ingest = Ingest::new(Arc::clone(&assembler), IngestConfig::default());
    let rollups = Arc::new(crate::rollup::Rollups::new(
        wal.clone(),
        1,
        crate::rollup::RollupConfig::default(),
    ));
    let metrics = Metrics::new(ingest, assembler, wal, store_latency)
        .with_storage(storage)
        .with_rollups(rollups);
    // A scrape first, so the labelled counters have children to gather.
    metrics.render();
    clew_runtime::metrics::catalogue_check("collector", &metrics.registry);
}
