//! What the cold tier needs of Redis: the traces it may take (walked by
//! earliest start in `i:all`, kept when a span ended after the cut), their
//! removal once taken (a script that checks the trace key still has the
//! length it was read at, so a span stored meanwhile is never removed),
//! the server's memory in use, and a lease key for the one mover.

use std::time::Duration;

use futures_util::future::join_all;

use super::blob::decode_spans;
use super::keys::dep_member;
use super::summary::Summary;
use super::{Inner, PruneStats, Result, Span, corrupt};
use crate::{Movable, Moved, Trace, filter};

pub(super) const REMOVE_LUA: &str = include_str!("remove.lua");
pub(super) const LEASE_LUA: &str = include_str!("lease.lua");

impl Inner {
    /// Up to `limit` traces whose every span ended before `cut`, by
    /// earliest start (the shards' `i:all` pages merged); the version is
    /// the trace key's length.
    pub(super) async fn movable(&self, cut: u64, limit: usize) -> Result<Vec<Movable>> {
        let cut_score = format!("({cut}");
        let shards = self.keys.shards();
        // Per shard: entries walked (moved or kept).
        let mut offsets = vec![0usize; shards];
        let mut out = Vec::new();
        while out.len() < limit {
            let pages = join_all(
                (0..shards).map(|s| self.started_before_scored(s, &cut_score, offsets[s])),
            )
            .await;
            let mut cands: Vec<(f64, usize, Vec<u8>)> = Vec::new();
            for (shard, page) in pages.into_iter().enumerate() {
                cands.extend(page?.into_iter().map(|(tid, score)| (score, shard, tid)));
            }
            if cands.is_empty() {
                break;
            }
            cands.sort_by(|a, b| a.0.total_cmp(&b.0));
            for chunk in cands.chunks(256) {
                let tids: Vec<Vec<u8>> = chunk.iter().map(|c| c.2.clone()).collect();
                let blobs = self.fetch_blobs(&tids).await?;
                for ((_, shard, tid), blob) in chunk.iter().zip(blobs) {
                    offsets[*shard] += 1;
                    if let Some(m) = ended(tid, blob, cut)? {
                        out.push(m);
                        if out.len() == limit {
                            return Ok(out);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Up to a page of a shard's `i:all` entries that started before
    /// `cut`, past the first `offset`, with their scores.
    async fn started_before_scored(
        &self,
        shard: usize,
        cut: &str,
        offset: usize,
    ) -> Result<Vec<(Vec<u8>, f64)>> {
        let all = self.keys.shard(shard).all();
        self.with_retry("movable", |mut conn| {
            let all = &all;
            async move {
                ::redis::cmd("ZRANGEBYSCORE")
                    .arg(all)
                    .arg("-inf")
                    .arg(cut)
                    .arg("WITHSCORES")
                    .arg("LIMIT")
                    .arg(offset)
                    .arg(256)
                    .query_async(&mut conn)
                    .await
            }
        })
        .await
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
        let k = self.keys.of_trace(tid);
        let mut inv = self.remove_script.prepare_invoke();
        inv.key(k.trace(tid)).key(k.orphans(tid)).key(k.deps());
        for (key, _, _) in Summary::of(spans).index_entries(&k) {
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

    /// The trace keys' contents (none for a trace that is gone), read
    /// with one pipeline per shard.
    pub(super) async fn fetch_blobs(&self, tids: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        if tids.is_empty() {
            return Ok(Vec::new());
        }
        let shard_of: Vec<usize> = tids.iter().map(|t| self.keys.shard_of(t)).collect();
        let per: Vec<Vec<Option<Vec<u8>>>> = self
            .per_shard("fetch_traces", |k| {
                let mut pipe = ::redis::pipe();
                for (tid, _) in tids.iter().zip(&shard_of).filter(|(_, s)| **s == k.index()) {
                    pipe.cmd("GET").arg(k.trace(tid));
                }
                pipe
            })
            .await?;
        let mut per: Vec<std::vec::IntoIter<Option<Vec<u8>>>> =
            per.into_iter().map(Vec::into_iter).collect();
        shard_of
            .iter()
            .map(|&s| per[s].next().ok_or_else(|| corrupt("trace fetch reply")))
            .collect()
    }

    /// `used_memory` of the server's `INFO memory`; on a cluster, the sum
    /// over its masters.
    pub(super) async fn used_memory(&self) -> Result<u64> {
        let info: ::redis::Value = self
            .with_retry("stored_bytes", |mut conn| async move {
                ::redis::cmd("INFO")
                    .arg("memory")
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        let texts: Vec<String> = match info {
            ::redis::Value::Map(nodes) => nodes
                .into_iter()
                .filter_map(|(_, v)| ::redis::from_redis_value(v).ok())
                .collect(),
            v => vec![::redis::from_redis_value(v).map_err(|_| corrupt("INFO memory reply"))?],
        };
        texts
            .iter()
            .map(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("used_memory:"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or_else(|| corrupt("INFO memory has no used_memory"))
            })
            .sum()
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

/// The trace stored as `blob`, when it is there and every span ended
/// before `cut`.
fn ended(tid: &[u8], blob: Option<Vec<u8>>, cut: u64) -> Result<Option<Movable>> {
    let Some(blob) = blob else { return Ok(None) };
    let mut spans = decode_spans(&blob)?;
    if spans.is_empty() || spans.iter().any(|s| s.end_time_unix_nano >= cut) {
        return Ok(None);
    }
    filter::sort_spans(&mut spans);
    Ok(Some(Movable {
        trace: Trace {
            trace_id: tid.to_vec(),
            spans,
        },
        version: blob.len() as u64,
    }))
}
