//! The Redis backend on a real Redis Cluster on loopback (six
//! `redis-server --cluster-enabled yes` processes joined by `redis-cli
//! --cluster create … --cluster-replicas 1`): the conformance suite
//! unchanged, the key layout, and writes under failover and resharding.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::keys::{Keys, slot};
use super::*;
use crate::conformance::{Fixture, span};
use crate::testing::RedisCluster;

fn config(cluster: &RedisCluster, prefix: &str) -> RedisConfig {
    RedisConfig {
        url: cluster.urls().join(","),
        cluster: true,
        key_prefix: prefix.into(),
        connect_timeout: Duration::from_millis(500),
        response_timeout: Duration::from_secs(2),
        retries: 2,
        retry_backoff: Duration::from_millis(20),
        ..RedisConfig::default()
    }
}

/// A key prefix no other test of this process uses.
fn prefix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("t{}:", NEXT.fetch_add(1, Ordering::Relaxed))
}

async fn fixture() -> Fixture {
    let cluster = RedisCluster::shared(3).await;
    let store = RedisStorage::connect(config(&cluster, &prefix()))
        .await
        .unwrap();
    Fixture::with_guard(Arc::new(store), cluster)
}

crate::conformance_tests!(fixture);

fn tid(n: u64) -> TraceId {
    let mut b = [0u8; 16];
    b[0] = 0xc1;
    b[8..].copy_from_slice(&n.to_be_bytes());
    TraceId(b)
}

#[test]
fn each_shard_owns_an_even_share_of_the_slots() {
    for shards in [1, 3, 16, 64] {
        let k = Keys::new("clew:", Some(shards));
        for s in 0..shards {
            let keys = k.shard(s);
            let at = slot(&keys.all());
            assert!(
                (s * 16_384 / shards..(s + 1) * 16_384 / shards).contains(&at),
                "shard {s} of {shards} in slot {at}"
            );
            // A trace's keys and every index of its shard share one slot.
            for key in [
                keys.trace(b"x"),
                keys.orphans(b"x"),
                keys.deps(),
                keys.service("a"),
            ] {
                assert_eq!(slot(&key), at);
            }
        }
    }
    // One server: the layout of earlier versions, no tags.
    let single = Keys::new("clew:", None);
    assert_eq!(single.shard(0).trace(b"x"), b"clew:tr:x".to_vec());
    assert_eq!(single.services(), b"clew:services".to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_spread_over_every_master() {
    let cluster = RedisCluster::shared(3).await;
    let p = prefix();
    let store = RedisStorage::connect(config(&cluster, &p)).await.unwrap();
    for n in 0..200 {
        let t = tid(n);
        let trace = Trace {
            trace_id: t.0.to_vec(),
            spans: vec![span(t, 1, None, "svc", "op", n, 1)],
        };
        store.store_trace(trace).await.unwrap();
    }
    for port in cluster.masters() {
        let keys = cluster.count_keys(port, &format!("{p}*"));
        assert!(
            keys > 10,
            "master {port} holds {keys} keys of the deployment"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_collector_uses_the_shard_count_recorded_first() {
    let cluster = RedisCluster::shared(3).await;
    let p = prefix();
    let first = RedisStorage::connect(RedisConfig {
        shards: 4,
        ..config(&cluster, &p)
    })
    .await
    .unwrap();
    let t = tid(7);
    let trace = Trace {
        trace_id: t.0.to_vec(),
        spans: vec![span(t, 1, None, "svc", "op", 0, 1)],
    };
    first.store_trace(trace).await.unwrap();
    let second = RedisStorage::connect(RedisConfig {
        shards: 32,
        ..config(&cluster, &p)
    })
    .await
    .unwrap();
    assert_eq!(second.keys.shards(), 4);
    assert_eq!(second.get_trace(t).await.unwrap().unwrap().spans.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_with_a_hash_tag_is_refused_on_a_cluster() {
    let cluster = RedisCluster::shared(3).await;
    let err = RedisStorage::connect(config(&cluster, "{team}:"))
        .await
        .unwrap_err();
    assert!(err.detail().contains("prefix"), "{}", err.detail());
}

/// Writers that store traces in two fragments, retrying every refusal
/// as the collector's WAL does, and remember what was acknowledged.
#[derive(Default)]
struct Load {
    acked: parking_lot::Mutex<HashMap<TraceId, usize>>,
    refusals: AtomicU64,
    other_errors: parking_lot::Mutex<Vec<String>>,
    stop: AtomicBool,
}

impl Load {
    async fn write(self: Arc<Self>, store: Arc<RedisStorage>, writer: u64) {
        let mut n = writer << 32;
        while !self.stop.load(Ordering::Relaxed) {
            n += 1;
            let t = tid(n);
            let parts = [
                vec![span(t, 1, None, "front", "GET", 0, 10)],
                vec![
                    span(t, 2, Some(1), "back", "query", 1, 5),
                    span(t, 3, Some(2), "db", "select", 2, 1),
                ],
            ];
            for spans in parts {
                let count = spans.len();
                self.store_until_acked(&store, t, spans).await;
                *self.acked.lock().entry(t).or_default() += count;
            }
        }
    }

    async fn store_until_acked(&self, store: &RedisStorage, t: TraceId, spans: Vec<Span>) {
        let trace = Trace {
            trace_id: t.0.to_vec(),
            spans,
        };
        loop {
            match store.store_trace(trace.clone()).await {
                Ok(_) => return,
                Err(StorageError::Unavailable { .. }) => {
                    self.refusals.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    self.other_errors.lock().push(e.to_string());
                    return;
                }
            }
        }
    }

    /// Every acknowledged span is stored, once.
    async fn check(&self, store: &RedisStorage) {
        let acked = self.acked.lock().clone();
        assert!(acked.len() > 100, "too little load: {} traces", acked.len());
        let mut wrong = Vec::new();
        for (t, want) in &acked {
            let got = store.get_trace(*t).await.unwrap().map_or(0, |tr| {
                let ids: HashSet<&Vec<u8>> = tr.spans.iter().map(|s| &s.span_id).collect();
                assert_eq!(ids.len(), tr.spans.len(), "a span stored twice");
                tr.spans.len()
            });
            if got != *want {
                wrong.push((*t, got, *want));
            }
        }
        assert!(
            wrong.is_empty(),
            "{} of {} traces lost spans: {:?}",
            wrong.len(),
            acked.len(),
            &wrong[..wrong.len().min(5)]
        );
        assert!(
            self.other_errors.lock().is_empty(),
            "{:?}",
            self.other_errors.lock()
        );
    }
}

async fn start_load(store: &Arc<RedisStorage>) -> (Arc<Load>, Vec<tokio::task::JoinHandle<()>>) {
    let load = Arc::new(Load::default());
    let writers = (0..4)
        .map(|w| tokio::spawn(Arc::clone(&load).write(Arc::clone(store), w)))
        .collect();
    (load, writers)
}

async fn stop_load(load: &Load, writers: Vec<tokio::task::JoinHandle<()>>) {
    load.stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
}

/// Polls `ok` (at most 60 s).
async fn until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn metric(store: &RedisStorage, name: &str) -> f64 {
    store
        .render_metrics()
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_under_load_loses_no_acknowledged_span() {
    let mut cluster = RedisCluster::start(3).await;
    let store = Arc::new(
        RedisStorage::connect(RedisConfig {
            wait_replicas: 1,
            ..config(&cluster, "clew:")
        })
        .await
        .unwrap(),
    );
    let (load, writers) = start_load(&store).await;
    until("load", || load.acked.lock().len() > 200).await;
    let victim = cluster.masters()[1];
    cluster.kill(victim);
    until("the replica promoted", || {
        let m = cluster.masters();
        m.len() == 3 && !m.contains(&victim)
    })
    .await;
    until("the failover seen", || {
        metric(&store, "clew_redis_cluster_failovers_total") >= 1.0
    })
    .await;
    // Its old master comes back as its replica: writes are replicated again.
    cluster.restart(victim);
    cluster.wait_synced().await;
    let before = load.acked.lock().len();
    until("load after the failover", || {
        load.acked.lock().len() > before + 200
    })
    .await;
    stop_load(&load, writers).await;
    load.check(&store).await;
    assert!(store.ready());
    eprintln!(
        "{} traces, {} refusals retried",
        load.acked.lock().len(),
        load.refusals.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_under_load_loses_nothing_and_refuses_nothing() {
    let cluster = RedisCluster::start(3).await;
    let store = Arc::new(
        RedisStorage::connect(config(&cluster, "clew:"))
            .await
            .unwrap(),
    );
    let (load, writers) = start_load(&store).await;
    until("load", || load.acked.lock().len() > 200).await;
    let masters = cluster.masters();
    let (from, to) = (masters[0], masters[1]);
    let shard_slots: Vec<usize> = (0..store.keys.shards())
        .map(|s| slot(&store.keys.shard(s).all()))
        .filter(|&at| cluster.owner_of(at) == from)
        .collect();
    assert!(!shard_slots.is_empty());
    // Half of the first master's slots (the lowest: among them shards'
    // slots) move, keys and all, while the writers write.
    tokio::task::block_in_place(|| cluster.reshard(from, to, 2_730));
    let moved: Vec<usize> = shard_slots
        .iter()
        .copied()
        .filter(|&at| cluster.owner_of(at) == to)
        .collect();
    assert!(!moved.is_empty(), "no shard's slot moved");
    let acked = load.acked.lock().len();
    until("load after resharding", || {
        load.acked.lock().len() > acked + 100
    })
    .await;
    stop_load(&load, writers).await;
    load.check(&store).await;
    for at in moved {
        assert!(
            cluster.keys_in_slot(to, at) > 0,
            "slot {at} moved without its keys"
        );
    }
    assert_eq!(
        load.refusals.load(Ordering::Relaxed),
        0,
        "a refusal reached the caller"
    );
    until("the moves seen", || {
        metric(&store, "clew_redis_cluster_slot_moves_total") >= 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_while_a_shard_has_no_master() {
    let mut cluster = RedisCluster::start(3).await;
    let store = RedisStorage::connect(config(&cluster, "clew:"))
        .await
        .unwrap();
    assert!(store.ready());
    // A master and its replica both gone: their shards have no master.
    let victim = cluster.masters()[2];
    let replica = cluster.replica_of(victim);
    cluster.kill(replica);
    cluster.kill(victim);
    until("not ready", || !store.ready()).await;
    assert!(metric(&store, "clew_redis_cluster_shards_unanswered") >= 1.0);
    assert!(metric(&store, "clew_redis_node_latency_seconds_count") >= 1.0);
    cluster.restart(victim);
    cluster.restart(replica);
    until("ready again", || store.ready()).await;
}

#[test]
fn metrics_are_in_the_catalogue() {
    clew_runtime::metrics::catalogue_check("collector redis", RedisMetrics::new().registry());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_over_tls_with_an_acl_user() {
    let dir = tempfile::tempdir().unwrap();
    let pki = clew_runtime::tls::testing::Pki::new(dir.path(), "redis");
    // The nodes are also each other's clients on the cluster bus.
    let (cert, key) = pki.peer("node", &["localhost", "127.0.0.1"]);
    let tls = crate::testing::ClusterTls {
        cert,
        key,
        ca: pki.ca.clone(),
        user: ("clew".into(), "s3cret".into()),
    };
    let cluster = RedisCluster::start_with(3, Some(tls)).await;
    let secure = |password: &str| RedisConfig {
        tls: Some(RedisTls {
            ca: Some(pki.ca.clone()),
            client: None,
        }),
        username: Some("clew".into()),
        password: Some(password.into()),
        ..config(&cluster, "clew:")
    };
    let store = RedisStorage::connect(secure("s3cret")).await.unwrap();
    let t = tid(1);
    let trace = Trace {
        trace_id: t.0.to_vec(),
        spans: vec![span(t, 1, None, "svc", "op", 0, 1)],
    };
    store.store_trace(trace).await.unwrap();
    assert_eq!(store.get_trace(t).await.unwrap().unwrap().spans.len(), 1);
    let found = store
        .list_traces(&FilterCriteria {
            service: "svc".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert!(RedisStorage::connect(secure("wrong")).await.is_err());
    // Without the CA, the nodes' certificates are not trusted.
    let untrusted = RedisConfig {
        tls: None,
        ..secure("s3cret")
    };
    assert!(RedisStorage::connect(untrusted).await.is_err());
}
