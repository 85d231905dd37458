//! The mover: traces whose newest span ended more than `--hot-retention`
//! ago — and the oldest ones while hot storage holds more than
//! `--hot-max-bytes` — are written to a block, and only once the block is
//! durable and listed are they removed from hot storage (each only if no
//! span arrived meanwhile). A crash in between leaves a trace in both
//! tiers, which reads merge; never in neither. One mover runs at a time
//! per store: the one holding the store's `cold-mover` lease. After
//! moving, it compacts small blocks, deletes blocks past
//! `--cold-retention`, and sweeps what compactions and crashes left.

use std::future::Future;
use std::time::Duration;

use clew_storage::{Moved, StorageError, TraceId};

use crate::ColdError;
use crate::block;
use crate::maintain::MaintainOptions;
use crate::tiered::{Tiered, now_nanos};

/// The lease the mover holds in hot storage.
pub const LEASE: &str = "cold-mover";

/// How the mover works.
#[derive(Debug, Clone)]
pub struct MoverConfig {
    /// Traces whose newest span ended longer ago than this move.
    pub hot_retention: Duration,
    /// While hot storage holds more bytes than this, its oldest traces
    /// move too (`None`: no bound).
    pub hot_max_bytes: Option<u64>,
    /// Cold blocks whose every span ended longer ago than this are deleted.
    pub cold_retention: Duration,
    /// Traces per block written by a move.
    pub block_traces: usize,
    /// Time between rounds.
    pub interval: Duration,
    /// Who holds the lease (the collector's advertised address or pod).
    pub holder: String,
    /// Compaction and sweeping.
    pub maintain: MaintainOptions,
}

/// Why a round stopped.
#[derive(Debug, thiserror::Error)]
pub enum MoverError {
    /// Hot storage failed.
    #[error("hot storage: {0}")]
    Hot(#[from] StorageError),
    /// The cold tier failed.
    #[error("cold tier: {0}")]
    Cold(#[from] ColdError),
}

/// What one round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Round {
    /// Whether this mover held the lease (nothing else happens without it).
    pub leader: bool,
    /// Traces moved and removed from hot storage.
    pub traces: u64,
    /// Their spans.
    pub spans: u64,
    /// Blocks written by moves.
    pub blocks: u64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Moves traces from a [`Tiered`] store's hot storage to its cold tier.
#[derive(Debug, Clone)]
pub struct Mover {
    tiered: Tiered,
    config: MoverConfig,
}

/// At most this many blocks per round for one reason, so that a round
/// ends and renews its lease.
const MAX_BATCHES: usize = 64;

impl Mover {
    /// A mover for `tiered`.
    pub fn new(tiered: Tiered, config: MoverConfig) -> Self {
        Mover { tiered, config }
    }

    fn lease_ttl(&self) -> Duration {
        (self.config.interval * 3).max(Duration::from_secs(30))
    }

    async fn hold_lease(&self) -> Result<bool, StorageError> {
        self.tiered
            .hot()
            .lease(LEASE, &self.config.holder, self.lease_ttl())
            .await
    }

    /// One round: take the lease, move what is due, maintain the tier.
    pub async fn round(&self) -> Result<Round, MoverError> {
        let mut round = Round::default();
        if !self.hold_lease().await? {
            return Ok(round);
        }
        round.leader = true;
        let now = now_nanos();
        let cut = now.saturating_sub(nanos(self.config.hot_retention));
        self.move_due(cut, &mut round).await?;
        self.move_over_budget(&mut round).await?;
        if self.hold_lease().await? {
            self.maintain(now).await?;
        }
        Ok(round)
    }

    async fn move_due(&self, cut: u64, round: &mut Round) -> Result<(), MoverError> {
        let metrics = self.tiered.cold().metrics().cloned();
        for i in 0..MAX_BATCHES {
            if i > 0 && !self.hold_lease().await? {
                break;
            }
            let batch = self
                .tiered
                .hot()
                .movable(cut, self.config.block_traces)
                .await?;
            if i == 0 {
                let oldest = batch
                    .iter()
                    .filter_map(|m| m.trace.spans.iter().map(|s| s.end_time_unix_nano).max())
                    .min();
                let lag = oldest.map_or(0, |end| cut.saturating_sub(end) / 1_000_000_000);
                if let Some(m) = &metrics {
                    m.mover_lag.set(i64::try_from(lag).unwrap_or(i64::MAX));
                }
            }
            let full = batch.len() >= self.config.block_traces;
            if !self.move_batch(batch, round).await? || !full {
                break;
            }
        }
        Ok(())
    }

    async fn move_over_budget(&self, round: &mut Round) -> Result<(), MoverError> {
        let Some(max) = self.config.hot_max_bytes else {
            return Ok(());
        };
        for _ in 0..MAX_BATCHES {
            let Some(bytes) = self.tiered.hot().stored_bytes().await? else {
                tracing::warn!("hot storage cannot tell its size: --hot-max-bytes is not applied");
                return Ok(());
            };
            if bytes <= max || !self.hold_lease().await? {
                return Ok(());
            }
            let batch = self
                .tiered
                .hot()
                .movable(u64::MAX, self.config.block_traces)
                .await?;
            if !self.move_batch(batch, round).await? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Writes `batch` as a block, then removes it from hot storage; false
    /// when nothing was removed (nothing to move, or every trace grew).
    async fn move_batch(
        &self,
        batch: Vec<clew_storage::Movable>,
        round: &mut Round,
    ) -> Result<bool, MoverError> {
        if batch.is_empty() {
            return Ok(false);
        }
        let metrics = self.tiered.cold().metrics().cloned();
        let _t = metrics.as_ref().map(|m| m.move_seconds.start_timer());
        let mut moved = Vec::with_capacity(batch.len());
        let mut spans = Vec::new();
        for m in batch {
            if let Some(id) = TraceId::from_slice(&m.trace.trace_id) {
                moved.push(Moved {
                    trace_id: id,
                    version: m.version,
                });
                spans.extend(m.trace.spans);
            }
        }
        let cold = self.tiered.cold();
        let meta = block::write(
            cold.store(),
            cold.prefix(),
            spans,
            vec![],
            &self.config.maintain.block,
        )
        .await?;
        // Listed before anything leaves hot storage: reads see the trace in
        // one tier or both, never in neither.
        let exclusive = self.tiered.exclusive().await;
        cold.refresh().await?;
        let stats = self.tiered.hot().remove_moved(&moved).await?;
        drop(exclusive);
        round.traces += stats.traces;
        round.spans += stats.spans;
        round.blocks += 1;
        if let Some(m) = &metrics {
            m.blocks_written.with_label_values(&["move"]).inc();
            m.bytes_written.inc_by(meta.bytes);
            m.moved_traces.inc_by(stats.traces);
            m.moved_spans.inc_by(stats.spans);
            m.kept_traces
                .inc_by(moved.len() as u64 - stats.traces.min(moved.len() as u64));
        }
        tracing::info!(block = %meta.id, traces = stats.traces, spans = stats.spans, bytes = meta.bytes, "moved traces to the cold tier");
        Ok(stats.traces > 0)
    }

    async fn maintain(&self, now: u64) -> Result<(), MoverError> {
        let cold = self.tiered.cold();
        let metrics = cold.metrics().cloned();
        let retention_cut = now.saturating_sub(nanos(self.config.cold_retention));
        let done = cold
            .maintain(&self.config.maintain, retention_cut, now)
            .await?;
        if let Some(m) = &metrics {
            if let Some(meta) = &done.compacted {
                m.blocks_written.with_label_values(&["compact"]).inc();
                m.bytes_written.inc_by(meta.bytes);
            }
            m.blocks_deleted
                .with_label_values(&["retention"])
                .inc_by(done.expired);
            m.blocks_deleted
                .with_label_values(&["sweep"])
                .inc_by(done.swept);
        }
        Ok(())
    }

    /// Runs rounds every [`MoverConfig::interval`] until `shutdown`
    /// resolves; a failed round is logged, counted and retried.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut tick = tokio::time::interval(self.config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.round().await {
                if let Some(m) = self.tiered.cold().metrics() {
                    m.mover_errors.inc();
                }
                tracing::warn!(error = %e, "cold tier mover round failed; retrying next round");
            }
        }
    }
}
