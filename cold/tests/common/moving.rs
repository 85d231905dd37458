//! A tiered store whose mover runs after stores, for the conformance
//! suite.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use clew_cold::maintain::MaintainOptions;
use clew_cold::mover::{Mover, MoverConfig};
use clew_cold::read::ColdStore;
use clew_cold::tiered::Tiered;
use clew_storage::{
    DependencyLink, FilterCriteria, Movable, Moved, PruneStats, Result, RollupPart, SpanKind,
    Storage, StoreOutcome, Trace, TraceId,
};
use object_store::local::LocalFileSystem;
use object_store::path::Path;

/// A tiered store whose mover runs after every `every`-th store.
#[derive(Debug)]
pub struct Moving {
    tiered: Tiered,
    mover: Mover,
    every: u64,
    stores: AtomicU64,
}

/// A cold tier in a local directory.
pub fn dir_tier(dir: &std::path::Path) -> Arc<ColdStore> {
    let fs = LocalFileSystem::new_with_prefix(dir)
        .unwrap()
        .with_automatic_cleanup(true);
    Arc::new(ColdStore::new(Arc::new(fs), Path::default()))
}

/// `hot` in front of `cold`, everything moved after every `every`-th store.
pub fn moving(hot: Arc<dyn Storage>, cold: Arc<ColdStore>, every: u64) -> Moving {
    let tiered = Tiered::new(hot, cold, Duration::ZERO);
    let config = MoverConfig {
        hot_retention: Duration::ZERO,
        hot_max_bytes: None,
        // Far longer than the suite's timestamps are old: prune decides.
        cold_retention: Duration::from_secs(100 * 365 * 86_400),
        block_traces: 1_000,
        interval: Duration::from_secs(1),
        holder: "test".into(),
        // One block per move: pruning goes block by block.
        maintain: MaintainOptions {
            compact_below_bytes: 0,
            ..MaintainOptions::default()
        },
    };
    let mover = Mover::new(tiered.clone(), config);
    Moving {
        tiered,
        mover,
        every,
        stores: AtomicU64::new(0),
    }
}

#[async_trait]
impl Storage for Moving {
    async fn store_trace(&self, trace: Trace) -> Result<StoreOutcome> {
        let out = self.tiered.store_trace(trace).await?;
        if self
            .stores
            .fetch_add(1, Ordering::SeqCst)
            .is_multiple_of(self.every)
        {
            let round = self.mover.round().await.unwrap();
            assert!(round.leader);
        }
        Ok(out)
    }
    async fn get_trace(&self, id: TraceId) -> Result<Option<Trace>> {
        self.tiered.get_trace(id).await
    }
    async fn list_traces(&self, f: &FilterCriteria) -> Result<Vec<Trace>> {
        self.tiered.list_traces(f).await
    }
    async fn services(&self) -> Result<Vec<String>> {
        self.tiered.services().await
    }
    async fn operations(&self, s: &str, k: Option<SpanKind>) -> Result<Vec<(String, SpanKind)>> {
        self.tiered.operations(s, k).await
    }
    async fn dependencies(&self, start: u64, end: u64) -> Result<Vec<DependencyLink>> {
        self.tiered.dependencies(start, end).await
    }
    async fn prune_traces(&self, cut: u64) -> Result<PruneStats> {
        self.tiered.prune_traces(cut).await
    }
    async fn movable(&self, cut: u64, limit: usize) -> Result<Vec<Movable>> {
        self.tiered.movable(cut, limit).await
    }
    async fn remove_moved(&self, moved: &[Moved]) -> Result<PruneStats> {
        self.tiered.remove_moved(moved).await
    }
    async fn lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        self.tiered.lease(name, holder, ttl).await
    }
    async fn put_rollups(&self, parts: &[RollupPart]) -> Result<()> {
        self.tiered.put_rollups(parts).await
    }
    async fn rollups(&self, width: u64, from: u64, to: u64) -> Result<Vec<RollupPart>> {
        self.tiered.rollups(width, from, to).await
    }
    async fn prune_rollups(&self, ended_by_unix_nanos: u64) -> Result<u64> {
        self.tiered.prune_rollups(ended_by_unix_nanos).await
    }
    fn backend(&self) -> &'static str {
        "tiered"
    }
}
