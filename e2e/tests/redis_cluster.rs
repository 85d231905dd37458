#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A collector on a real Redis Cluster (three masters with a replica each,
//! six `redis-server` processes on loopback) with `--redis-wait-replicas
//! 1`, under paced OTLP load, while a master is `kill -9`ed (its replica
//! takes over; the old master comes back as its replica) and then half of
//! a master's slots are resharded with `redis-cli --cluster reshard`.
//! Afterwards every acknowledged span is stored exactly once, and the only
//! refusals clients saw were retryable ones.

use std::time::Duration;

use clew_e2e::chaos::{WorkDir, assert_exactly_once};
use clew_e2e::http::HttpClient;
use clew_e2e::jaeger::{metric, tally};
use clew_e2e::proc::{Proc, free_port, wait_for};
use clew_e2e::spanload::{Load, LoadShape};
use clew_storage::testing::RedisCluster;

/// Spans per second offered.
const RATE: u32 = 2_000;

fn collector(
    dir: &std::path::Path,
    cluster: &RedisCluster,
    grpc: u16,
    query: u16,
    ops: u16,
) -> Proc {
    let env = [
        ("CLEW_GRPC_ADDR", format!("127.0.0.1:{grpc}")),
        ("CLEW_HTTP_ADDR", format!("127.0.0.1:{}", free_port())),
        ("CLEW_QUERY_ADDR", format!("127.0.0.1:{query}")),
        ("CLEW_OPS_ADDR", format!("127.0.0.1:{ops}")),
        ("CLEW_STORAGE", "redis".to_string()),
        ("CLEW_REDIS_URL", cluster.urls().join(",")),
        ("CLEW_REDIS_CLUSTER", "true".to_string()),
        ("CLEW_REDIS_WAIT_REPLICAS", "1".to_string()),
        ("CLEW_DATA_DIR", dir.join("data").display().to_string()),
        ("CLEW_IDLE_WINDOW", "300ms".to_string()),
    ];
    let env: Vec<(String, String)> = env.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    Proc::spawn(
        "collector",
        "clew-collector",
        &[],
        &env,
        Some(&dir.join("collector.log")),
    )
    .unwrap()
}

/// Waits until the load has `n` more acknowledged requests than now.
async fn more_acks(load: &Load, n: usize) {
    let want = load.report().acked.len() + n;
    wait_for(
        "more acknowledged requests",
        Duration::from_secs(60),
        || async move { load.report().acked.len() >= want },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_through_a_master_failover_and_resharding() {
    let dir = WorkDir::new("clew-e2e-cluster-", "failover").unwrap();
    let mut cluster = RedisCluster::start(3).await;
    let (grpc, query, ops) = (free_port(), free_port(), free_port());
    let mut proc = collector(&dir.0, &cluster, grpc, query, ops);
    let http = HttpClient::new(Duration::from_secs(5));
    let (ops, query) = (
        format!("http://127.0.0.1:{ops}"),
        format!("http://127.0.0.1:{query}"),
    );
    let ready = format!("{ops}/readyz");
    wait_for("the collector", Duration::from_secs(60), || http.ok(&ready))
        .await
        .unwrap();

    let shape = LoadShape::new(RATE);
    let load = Load::start(format!("127.0.0.1:{grpc}").parse().unwrap(), shape).unwrap();
    more_acks(&load, 40).await;

    // kill -9 of a master: its replica is promoted, the collector sees it.
    let victim = cluster.masters()[1];
    cluster.kill(victim);
    let failovers = || async {
        metric(&http, &ops, "clew_redis_cluster_failovers_total")
            .await
            .unwrap_or(0.0)
            >= 1.0
    };
    wait_for("the failover seen", Duration::from_secs(60), failovers)
        .await
        .unwrap();
    // The old master comes back as a replica: WAIT 1 is met again.
    cluster.restart(victim);
    cluster.wait_synced().await;
    more_acks(&load, 40).await;

    // Resharding under load: the lowest half of a master's slots move.
    let masters = cluster.masters();
    tokio::task::block_in_place(|| cluster.reshard(masters[0], masters[2], 2_730));
    more_acks(&load, 40).await;
    let report = load.stop().await.unwrap();

    let retryable = ["Unavailable", "ResourceExhausted"];
    assert!(
        report
            .refused
            .keys()
            .all(|code| retryable.contains(&code.as_str())),
        "refusals clients cannot retry: {:?}",
        report.refused
    );
    let traces: Vec<(String, Vec<String>)> = report
        .acked
        .iter()
        .flat_map(|&seq| shape.expected_traces(seq))
        .collect();
    // Stored once the WAL drained into the cluster.
    let mut t = tally(&http, &query, traces.clone(), 8).await;
    for _ in 0..60 {
        if t.missing == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        t = tally(&http, &query, traces.clone(), 8).await;
    }
    eprintln!(
        "{} requests acknowledged, refused {:?}; {t:?}",
        report.acked.len(),
        report.refused
    );
    assert_exactly_once("failover_and_resharding", &t, 10_000);
    assert!(
        metric(&http, &ops, "clew_redis_cluster_slot_moves_total")
            .await
            .unwrap_or(0.0)
            >= 1.0
    );
    assert!(proc.stop(Duration::from_secs(30)).await.unwrap());
}
