//! What the cold tier needs of Redis: the traces it may take (walked by
//! earliest start in `i:all`, kept when a span ended after the cut), their
//! removal once taken (a script that checks the trace key still has the
//! length it was read at, so a span stored meanwhile is never removed),
//! the server's memory in use, and a lease key for the one mover.

use std::time::Duration;

use super::blob::decode_spans;
use super::keys::dep_member;
use super::summary::Summary;
use super::{Inner, PruneStats, Result, Span, corrupt};
use crate::{Movable, Moved, Trace, filter};

pub(super) const REMOVE_LUA: &str = include_str!("remove.lua");
pub(super) const LEASE_LUA: &str = include_str!("lease.lua");

impl Inner {
    /// Up to `limit` traces whose every span ended before `cut`, by
    /// earliest start; the version is the trace key's length.
    pub(super) async fn movable(&self, cut: u64, limit: usize) -> Result<Vec<Movable>> {
        let cut_score = format!("({cut}");
        let mut out = Vec::new();
        let mut offset = 0;
        while out.len() < limit {
            let tids = self.started_before(&cut_score, offset).await?;
            if tids.is_empty() {
                break;
            }
            offset += tids.len();
            let blobs = self.fetch_blobs(&tids).await?;
            for (tid, blob) in tids.into_iter().zip(blobs) {
                let Some(blob) = blob else { continue };
                let mut spans = decode_spans(&blob)?;
                if spans.is_empty() || spans.iter().any(|s| s.end_time_unix_nano >= cut) {
                    continue;
                }
                filter::sort_spans(&mut spans);
                let trace = Trace {
                    trace_id: tid,
                    spans,
                };
                out.push(Movable {
                    trace,
                    version: blob.len() as u64,
                });
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Removes each moved trace whose key still has the length read.
    pub(super) async fn remove_moved(&self, moved: &[Moved]) -> Result<PruneStats> {
        let tids: Vec<Vec<u8>> = moved.iter().map(|m| m.trace_id.0.to_vec()).collect();
        let blobs = self.fetch_blobs(&tids).await?;
        let mut stats = PruneStats::default();
        for (m, blob) in moved.iter().zip(blobs) {
            let Some(blob) = blob.filter(|b| b.len() as u64 == m.version) else {
                continue;
            };
            let spans = decode_spans(&blob)?;
            if self
                .remove_if_unchanged(&m.trace_id.0, m.version, &spans)
                .await?
            {
                stats.traces += 1;
                stats.spans += spans.len() as u64;
            }
        }
        Ok(stats)
    }

    async fn remove_if_unchanged(&self, tid: &[u8], len: u64, spans: &[Span]) -> Result<bool> {
        let k = &self.keys;
        let mut inv = self.remove_script.prepare_invoke();
        inv.key(k.trace(tid)).key(k.orphans(tid)).key(k.deps());
        for (key, _, _) in Summary::of(spans).index_entries(k) {
            inv.key(key);
        }
        inv.arg(len).arg(tid);
        for e in filter::edges(spans.iter()) {
            inv.arg(dep_member(&e.parent, &e.child, e.error, tid, &e.child_span));
        }
        let removed: i64 = self
            .with_retry("remove_moved", |mut conn| {
                let inv = &inv;
                async move { inv.invoke_async(&mut conn).await }
            })
            .await?;
        Ok(removed == 1)
    }

    /// The trace keys' contents (none for a trace that is gone).
    pub(super) async fn fetch_blobs(&self, tids: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        if tids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = ::redis::pipe();
        for tid in tids {
            pipe.cmd("GET").arg(self.keys.trace(tid));
        }
        self.with_retry("fetch_traces", |mut conn| {
            let pipe = &pipe;
            async move { pipe.query_async(&mut conn).await }
        })
        .await
    }

    /// `used_memory` of the server's `INFO memory`.
    pub(super) async fn used_memory(&self) -> Result<u64> {
        let info: String = self
            .with_retry("stored_bytes", |mut conn| async move {
                ::redis::cmd("INFO")
                    .arg("memory")
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| corrupt("INFO memory has no used_memory"))
    }

    /// Takes or extends the lease `name` for `holder`.
    pub(super) async fn lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        let mut inv = self.lease_script.prepare_invoke();
        inv.key(self.keys.lease(name))
            .arg(holder)
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1));
        let held: i64 = self
            .with_retry("lease", |mut conn| {
                let inv = &inv;
                async move { inv.invoke_async(&mut conn).await }
            })
            .await?;
        Ok(held == 1)
    }
}
