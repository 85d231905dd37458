//! Pruning: old traces with their index entries, then the stale entries
//! that traces expired through their TTL left behind.

use std::collections::BTreeMap;

use futures_util::future::join_all;

use super::keys::{dep_member, slot};
use super::summary::Summary;
use super::{Inner, PruneStats, Result, Span, now_ms};
use crate::filter;

/// Traces per pruning round trip.
const PRUNE_CHUNK: usize = 256;

impl Inner {
    /// Removes the traces whose newest span ended before
    /// `older_than_unix_nanos`, with their index entries.
    pub(super) async fn prune(&self, older_than_unix_nanos: u64) -> Result<PruneStats> {
        let mut stats = PruneStats::default();
        for shard in 0..self.keys.shards() {
            self.prune_shard(shard, older_than_unix_nanos, &mut stats)
                .await?;
        }
        self.sweep(older_than_unix_nanos).await?;
        if stats.traces > 0 {
            tracing::info!(traces = stats.traces, spans = stats.spans, "pruned traces");
        }
        Ok(stats)
    }

    /// Prunes one shard's traces (see [`Inner::prune`]).
    async fn prune_shard(
        &self,
        shard: usize,
        older_than: u64,
        stats: &mut PruneStats,
    ) -> Result<()> {
        let cut = format!("({older_than}");
        // Traces that started before the cut but end after it stay, first in
        // `i:all`: the walk skips them.
        let mut kept = 0usize;
        loop {
            let tids = self.started_before(shard, &cut, kept).await?;
            if tids.is_empty() {
                return Ok(());
            }
            let traces = self.fetch_traces(&tids).await?;
            let mut pipe = ::redis::pipe();
            let mut removed = 0;
            for (tid, spans) in &traces {
                if spans.iter().any(|s| s.end_time_unix_nano >= older_than) {
                    kept += 1;
                    continue;
                }
                self.remove_trace(&mut pipe, tid, spans);
                stats.traces += 1;
                stats.spans += spans.len() as u64;
                removed += 1;
            }
            if removed > 0 {
                self.with_retry("prune_traces", |mut conn| {
                    let pipe = &pipe;
                    async move { pipe.query_async::<()>(&mut conn).await }
                })
                .await?;
            }
        }
    }

    /// Up to [`PRUNE_CHUNK`] traces of a shard's `i:all` that started
    /// before `cut`, past the first `kept`.
    pub(super) async fn started_before(
        &self,
        shard: usize,
        cut: &str,
        kept: usize,
    ) -> Result<Vec<Vec<u8>>> {
        let all = self.keys.shard(shard).all();
        self.with_retry("prune_traces", |mut conn| {
            let all = &all;
            async move {
                ::redis::cmd("ZRANGEBYSCORE")
                    .arg(all)
                    .arg("-inf")
                    .arg(cut)
                    .arg("LIMIT")
                    .arg(kept)
                    .arg(PRUNE_CHUNK)
                    .query_async(&mut conn)
                    .await
            }
        })
        .await
    }

    /// Adds to `pipe` the removal of a trace: its index entries, its calls
    /// and its keys.
    fn remove_trace(&self, pipe: &mut ::redis::Pipeline, tid: &[u8], spans: &[Span]) {
        let k = self.keys.of_trace(tid);
        // Each index the trace is in (`i:all` even when its spans
        // expired).
        for (key, _, _) in Summary::of(spans).index_entries(&k) {
            pipe.cmd("ZREM").arg(key).arg(tid).ignore();
        }
        let edges = filter::edges(spans.iter());
        if !edges.is_empty() {
            let mut cmd = ::redis::cmd("ZREM");
            cmd.arg(k.deps());
            for e in &edges {
                cmd.arg(dep_member(&e.parent, &e.child, e.error, tid, &e.child_span));
            }
            pipe.add_command(cmd).ignore();
        }
        pipe.cmd("DEL")
            .arg(k.trace(tid))
            .arg(k.orphans(tid))
            .ignore();
    }

    /// Drops catalogue entries older than the cut, and index entries older than
    /// the cut by more than `max_trace_span` (left behind by traces that expired
    /// through their TTL before they could be pruned).
    async fn sweep(&self, cut_ns: u64) -> Result<()> {
        let k = &self.keys;
        let cut = format!("({cut_ns}");
        let stale = format!("({}", cut_ns.saturating_sub(self.slack_ns()));
        let (services, registered): (Vec<String>, Vec<Vec<u8>>) = self
            .with_retry("prune_traces", |mut conn| {
                let (sk, rk) = (k.services(), k.registry());
                async move {
                    ::redis::pipe()
                        .cmd("ZRANGE")
                        .arg(sk)
                        .arg(0)
                        .arg(-1)
                        .cmd("ZRANGE")
                        .arg(rk)
                        .arg(0)
                        .arg(-1)
                        .query_async(&mut conn)
                        .await
                }
            })
            .await?;
        let mut cmds: Vec<(Vec<u8>, ::redis::Cmd)> = Vec::new();
        let mut zrem_range = |key: Vec<u8>, max: &str| {
            let mut c = ::redis::cmd("ZREMRANGEBYSCORE");
            c.arg(&key).arg("-inf").arg(max);
            cmds.push((key, c));
        };
        zrem_range(k.services(), &cut);
        for svc in &services {
            zrem_range(k.operations(svc), &cut);
        }
        for shard in 0..k.shards() {
            zrem_range(k.shard(shard).deps(), &stale);
        }
        for key in registered {
            zrem_range(key, &stale);
        }
        let forgotten = now_ms().saturating_sub(self.ttl_ms());
        zrem_range(k.registry(), &format!("({forgotten}"));
        self.run_by_slot("prune_traces", cmds).await
    }

    /// Runs commands (each with its key) as pipelines of at most 1,000,
    /// one per hash slot on a cluster; their replies are ignored.
    pub(super) async fn run_by_slot(
        &self,
        what: &'static str,
        cmds: Vec<(Vec<u8>, ::redis::Cmd)>,
    ) -> Result<()> {
        let mut groups: BTreeMap<usize, Vec<::redis::Cmd>> = BTreeMap::new();
        for (key, cmd) in cmds {
            let group = if self.cfg.cluster { slot(&key) } else { 0 };
            groups.entry(group).or_default().push(cmd);
        }
        let pipes: Vec<::redis::Pipeline> = groups
            .values()
            .flat_map(|cmds| cmds.chunks(1_000))
            .map(|chunk| {
                let mut pipe = ::redis::pipe();
                for c in chunk {
                    pipe.add_command(c.clone()).ignore();
                }
                pipe
            })
            .collect();
        let runs = pipes.iter().map(|pipe| {
            self.with_retry(what, move |mut conn| async move {
                pipe.query_async::<()>(&mut conn).await
            })
        });
        join_all(runs).await.into_iter().collect()
    }
}
