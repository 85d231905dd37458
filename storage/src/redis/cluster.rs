//! The Redis backend's metrics, and the watch over a Redis Cluster: every
//! second it reads the slot map, pings the master of each shard's slot
//! (per-node latency), counts failovers (a shard's slot now served by what
//! was its replica) and slot moves (resharding), reads the redirects the
//! masters report (`INFO errorstats`), and marks the store not ready while
//! a shard has no master answering.

use std::collections::{HashMap, HashSet};
use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ::redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use ::redis::{Cmd, Value};
use clew_runtime::metrics::Registry;
use prometheus::{HistogramVec, IntCounter, IntCounterVec, IntGauge};

use super::Inner;
use super::conn::Conn;
use super::keys::slot;

/// How often the cluster is looked at.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// The Redis backend's metrics (`docs/METRICS.md`, "collector redis").
#[derive(Debug, Clone)]
pub struct RedisMetrics {
    registry: Registry,
    pub(super) reconnects: IntCounter,
    pub(super) unreplicated: IntCounter,
    redirects: IntCounterVec,
    failovers: IntCounter,
    slot_moves: IntCounter,
    node_latency: HistogramVec,
    unanswered: IntGauge,
}

impl RedisMetrics {
    pub(super) fn new() -> Self {
        let r = Registry::new();
        let redirects = r.counter_vec(
            "clew_redis_cluster_redirects_total",
            "MOVED and ASK replies the cluster's masters report having sent (INFO errorstats, every client), by kind",
            &["kind"],
        );
        for kind in ["moved", "ask"] {
            redirects.with_label_values(&[kind]);
        }
        RedisMetrics {
            reconnects: r.counter(
                "clew_redis_reconnects_total",
                "Redis calls that failed on a broken, dropped or timed-out connection and were retried after reconnecting",
            ),
            unreplicated: r.counter(
                "clew_redis_writes_unreplicated_total",
                "Writes refused as not stored because fewer replicas than --redis-wait-replicas acknowledged them in time (retried)",
            ),
            redirects,
            failovers: r.counter(
                "clew_redis_cluster_failovers_total",
                "Shards whose slot moved to the node that was its master's replica (a failover)",
            ),
            slot_moves: r.counter(
                "clew_redis_cluster_slot_moves_total",
                "Shards whose slot moved to another master that was not its replica (resharding)",
            ),
            node_latency: r.histogram_vec(
                "clew_redis_node_latency_seconds",
                "PING round trip to each master serving a shard, by node",
                &[0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25, 1.0],
                &["node"],
            ),
            unanswered: r.gauge(
                "clew_redis_cluster_shards_unanswered",
                "Shards whose slot no master answers for (readiness is false while above 0)",
            ),
            registry: r,
        }
    }

    /// The metrics in the Prometheus text format.
    pub(super) fn render(&self) -> String {
        self.registry.render()
    }

    /// Their registry (for the catalogue check).
    #[cfg(test)]
    pub(super) fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// A slot range's master and replicas, as `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Range {
    start: usize,
    end: usize,
    master: String,
    replicas: Vec<String>,
}

/// What the previous look saw.
#[derive(Debug, Default)]
struct Seen {
    /// Per shard: its master and that master's replicas.
    shards: Vec<Option<(String, Vec<String>)>>,
    /// Per node: (MOVED, ASK) replies it reported.
    errorstats: HashMap<String, (u64, u64)>,
}

/// Looks at the cluster every second while the store exists.
pub(super) async fn watch(inner: Weak<Inner>) {
    let mut seen = Seen::default();
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let ready = look(&inner, &mut seen).await;
        inner.ready.store(ready, Ordering::Relaxed);
    }
}

/// One look; whether every shard has a master that answered.
async fn look(inner: &Inner, seen: &mut Seen) -> bool {
    let Conn::Cluster(conn) = &inner.conn else {
        return true;
    };
    let m = &inner.metrics;
    let shards = inner.keys.shards();
    let ranges = match slot_ranges(conn.clone(), inner.cfg.response_timeout).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "redis cluster: no slot map");
            m.unanswered.set(shards as i64);
            return false;
        }
    };
    let now: Vec<Option<(String, Vec<String>)>> = (0..shards)
        .map(|s| {
            let at = slot(&inner.keys.shard(s).all());
            ranges
                .iter()
                .find(|r| (r.start..=r.end).contains(&at))
                .map(|r| (r.master.clone(), r.replicas.clone()))
        })
        .collect();
    count_changes(m, &seen.shards, &now);
    let masters: HashSet<&str> = now.iter().flatten().map(|(m, _)| m.as_str()).collect();
    let mut answered = HashSet::new();
    for node in masters {
        if ping(inner, conn.clone(), node).await {
            answered.insert(node.to_owned());
            redirects(inner, conn.clone(), node, &mut seen.errorstats).await;
        }
    }
    let unanswered = now
        .iter()
        .filter(|s| s.as_ref().is_none_or(|(m, _)| !answered.contains(m)))
        .count();
    m.unanswered.set(unanswered as i64);
    seen.shards = now;
    unanswered == 0
}

/// Counts shards whose master changed: to its replica (failover) or
/// elsewhere (a slot move).
fn count_changes(
    m: &RedisMetrics,
    before: &[Option<(String, Vec<String>)>],
    now: &[Option<(String, Vec<String>)>],
) {
    for (was, is) in before.iter().zip(now) {
        let (Some((old, replicas)), Some((new, _))) = (was, is) else {
            continue;
        };
        if old == new {
            continue;
        }
        if replicas.contains(new) {
            m.failovers.inc();
            tracing::warn!(from = %old, to = %new, "redis cluster: a shard's master failed over");
        } else {
            m.slot_moves.inc();
            tracing::info!(from = %old, to = %new, "redis cluster: a shard's slot moved");
        }
    }
}

fn by_address(node: &str) -> Option<RoutingInfo> {
    let (host, port) = node.rsplit_once(':')?;
    Some(RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
        host: host.to_owned(),
        port: port.parse().ok()?,
    }))
}

/// `CLUSTER SLOTS`: the ranges, their masters and replicas.
async fn slot_ranges(
    mut conn: ::redis::cluster_async::ClusterConnection,
    timeout: Duration,
) -> Result<Vec<Range>, String> {
    let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
    let reply = tokio::time::timeout(
        timeout,
        conn.route_command(::redis::cmd("CLUSTER").arg("SLOTS").to_owned(), routing),
    )
    .await
    .map_err(|_| "timed out".to_owned())?
    .map_err(|e| e.to_string())?;
    parse_slots(&reply).ok_or_else(|| "unexpected CLUSTER SLOTS reply".to_owned())
}

/// Parses a `CLUSTER SLOTS` reply: per range, start, end, then nodes as
/// (host, port, id, …), the master first.
fn parse_slots(reply: &Value) -> Option<Vec<Range>> {
    let Value::Array(ranges) = reply else {
        return None;
    };
    let int = |v: &Value| match v {
        Value::Int(n) => usize::try_from(*n).ok(),
        _ => None,
    };
    let node = |v: &Value| {
        let Value::Array(parts) = v else { return None };
        let host = match parts.first()? {
            Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            Value::SimpleString(s) => s.clone(),
            _ => return None,
        };
        Some(format!("{host}:{}", int(parts.get(1)?)?))
    };
    ranges
        .iter()
        .map(|r| {
            let Value::Array(r) = r else { return None };
            let nodes: Vec<String> = r.get(2..)?.iter().filter_map(node).collect();
            Some(Range {
                start: int(r.first()?)?,
                end: int(r.get(1)?)?,
                master: nodes.first()?.clone(),
                replicas: nodes.get(1..).map(<[String]>::to_vec).unwrap_or_default(),
            })
        })
        .collect()
}

/// PINGs `node`, recording the round trip; whether it answered.
async fn ping(
    inner: &Inner,
    mut conn: ::redis::cluster_async::ClusterConnection,
    node: &str,
) -> bool {
    let Some(routing) = by_address(node) else {
        return false;
    };
    let started = Instant::now();
    let cmd: Cmd = ::redis::cmd("PING").to_owned();
    let reply =
        tokio::time::timeout(inner.cfg.response_timeout, conn.route_command(cmd, routing)).await;
    let ok = matches!(reply, Ok(Ok(_)));
    if ok {
        inner
            .metrics
            .node_latency
            .with_label_values(&[node])
            .observe(started.elapsed().as_secs_f64());
    }
    ok
}

/// Adds what `node`'s `INFO errorstats` counts of MOVED and ASK since the
/// last look (a restarted node starts again from zero).
async fn redirects(
    inner: &Inner,
    mut conn: ::redis::cluster_async::ClusterConnection,
    node: &str,
    last: &mut HashMap<String, (u64, u64)>,
) {
    let Some(routing) = by_address(node) else {
        return;
    };
    let cmd = ::redis::cmd("INFO").arg("errorstats").to_owned();
    let Ok(Ok(reply)) =
        tokio::time::timeout(inner.cfg.response_timeout, conn.route_command(cmd, routing)).await
    else {
        return;
    };
    let text = match reply {
        Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        Value::VerbatimString { text, .. } => text,
        _ => return,
    };
    let now = (errorstat(&text, "MOVED"), errorstat(&text, "ASK"));
    // The first look only sets the baseline.
    let Some(before) = last.insert(node.to_owned(), now) else {
        return;
    };
    let m = &inner.metrics.redirects;
    m.with_label_values(&["moved"])
        .inc_by(now.0.checked_sub(before.0).unwrap_or(now.0));
    m.with_label_values(&["ask"])
        .inc_by(now.1.checked_sub(before.1).unwrap_or(now.1));
}

/// The count of `errorstat_<kind>:count=N` in an `INFO errorstats` text.
fn errorstat(info: &str, kind: &str) -> u64 {
    let prefix = format!("errorstat_{kind}:count=");
    info.lines()
        .find_map(|l| l.trim().strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
