//! Keeping the cold tier in shape: small blocks compacted into larger
//! ones, blocks past `--cold-retention` deleted, and what crashes leave
//! behind swept away.
//!
//! Compaction writes the merged block with `replaces` naming its sources
//! and only then deletes them, after a grace period: readers holding the
//! old listing finish their reads first. A crash anywhere leaves either
//! the sources (no merged block yet) or the merged block hiding them; the
//! next sweep deletes what is hidden.

use std::time::Duration;

use clew_proto::v1::Span;

use crate::ColdError;
use crate::block::{self, BlockOptions};
use crate::meta::BlockMeta;
use crate::read::ColdStore;

/// How the tier is maintained.
#[derive(Debug, Clone)]
pub struct MaintainOptions {
    /// Blocks smaller than this are compacted together.
    pub compact_below_bytes: u64,
    /// The most spans one compacted block takes.
    pub compact_max_spans: u64,
    /// Replaced blocks and abandoned partial blocks are deleted this long
    /// after they stopped being read.
    pub grace: Duration,
    /// How blocks are written.
    pub block: BlockOptions,
}

impl Default for MaintainOptions {
    fn default() -> Self {
        MaintainOptions {
            compact_below_bytes: 64 << 20,
            compact_max_spans: 2_000_000,
            grace: Duration::from_secs(300),
            block: BlockOptions::default(),
        }
    }
}

/// What one maintenance pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Maintained {
    /// The compacted block written, if any.
    pub compacted: Option<BlockMeta>,
    /// Blocks deleted because they passed retention.
    pub expired: u64,
    /// Replaced or partial blocks deleted.
    pub swept: u64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl ColdStore {
    /// Merges the small blocks (oldest first, up to
    /// [`MaintainOptions::compact_max_spans`]) into one; `None` when fewer
    /// than two are small.
    pub async fn compact(&self, options: &MaintainOptions) -> Result<Option<BlockMeta>, ColdError> {
        let blocks = self.refresh().await?;
        let mut small: Vec<_> = blocks
            .values()
            .filter(|b| b.meta.bytes < options.compact_below_bytes)
            .collect();
        small.sort_by_key(|b| b.meta.min_start_unix_nano);
        // The first run of neighbours (in time) that fits in one block; a
        // block that cannot grow starts the next run.
        let mut chosen = Vec::new();
        let mut spans_total = 0u64;
        for b in small {
            if spans_total + b.meta.spans > options.compact_max_spans {
                if chosen.len() >= 2 {
                    break;
                }
                chosen.clear();
                spans_total = 0;
                if b.meta.spans >= options.compact_max_spans {
                    continue;
                }
            }
            spans_total += b.meta.spans;
            chosen.push(b);
        }
        if chosen.len() < 2 {
            return Ok(None);
        }
        let mut spans: Vec<Span> = Vec::with_capacity(usize::try_from(spans_total).unwrap_or(0));
        for b in &chosen {
            spans.extend(self.block_spans(b).await?);
        }
        let replaces = chosen.iter().map(|b| b.meta.id.clone()).collect();
        let meta = block::write(
            self.store(),
            self.prefix(),
            dedup(spans),
            replaces,
            &options.block,
        )
        .await?;
        self.refresh().await?;
        Ok(Some(meta))
    }

    /// Deletes the blocks whose every span ended before `older_than`.
    pub async fn expire(&self, older_than_unix_nanos: u64) -> Result<u64, ColdError> {
        let blocks = self.refresh().await?;
        let mut deleted = 0;
        for b in blocks
            .values()
            .filter(|b| b.meta.max_end_unix_nano < older_than_unix_nanos)
        {
            self.delete_block(&b.meta.id).await?;
            deleted += 1;
        }
        if deleted > 0 {
            self.refresh().await?;
        }
        Ok(deleted)
    }

    /// Deletes blocks hidden by a compacted block, and partial blocks
    /// (no `meta.json`), once `grace` has passed since `now`'s view of
    /// them.
    pub async fn sweep(&self, now_unix_nanos: u64, grace: Duration) -> Result<u64, ColdError> {
        self.refresh().await?;
        let cutoff = now_unix_nanos.saturating_sub(nanos(grace));
        let mut doomed: Vec<String> = self
            .replaced()
            .into_iter()
            .chain(self.partial())
            .filter(|(_, since)| *since <= cutoff)
            .map(|(id, _)| id)
            .collect();
        doomed.dedup();
        for id in &doomed {
            self.delete_block(id).await?;
        }
        Ok(doomed.len() as u64)
    }

    /// One pass: compact, expire, sweep.
    pub async fn maintain(
        &self,
        options: &MaintainOptions,
        retention_cutoff_unix_nanos: u64,
        now_unix_nanos: u64,
    ) -> Result<Maintained, ColdError> {
        Ok(Maintained {
            compacted: self.compact(options).await?,
            expired: self.expire(retention_cutoff_unix_nanos).await?,
            swept: self.sweep(now_unix_nanos, options.grace).await?,
        })
    }
}

/// Drops repeated (trace id, span id) pairs: a trace moved twice (its hot
/// copy was not deleted before a crash) is written once.
fn dedup(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort_by(|a, b| (&a.trace_id, &a.span_id).cmp(&(&b.trace_id, &b.span_id)));
    spans.dedup_by(|a, b| a.trace_id == b.trace_id && a.span_id == b.span_id);
    spans
}
