use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentStatus, StatefulSetStatus};

use super::*;
use crate::desired::{desired_collector_statefulset, desired_deployment};
use crate::fixtures::{defaults, tc};

fn deployment_with(ready: i32, want: i32, failure: Option<&str>) -> Deployment {
    let mut d = desired_deployment(&tc("main"), &defaults());
    d.spec.replicas = Some(want);
    d.status = Some(DeploymentStatus {
        ready_replicas: Some(ready),
        updated_replicas: Some(want),
        replicas: Some(want),
        conditions: failure.map(|m| {
            vec![DeploymentCondition {
                type_: Some("Progressing".to_owned()),
                status: Some("False".to_owned()),
                reason: Some("ProgressDeadlineExceeded".to_owned()),
                message: Some(m.to_owned()),
                ..Default::default()
            }]
        }),
        ..Default::default()
    });
    d
}

#[test]
fn status_keeps_transition_times_until_a_condition_flips() {
    let mut t = tc("main");
    let d = deployment_with(1, 2, None);
    let s1 = desired_status(
        &t,
        &CollectorWorkload::Deployment(d.clone()),
        Redis::default(),
        None,
        "r",
        "2026-01-01T00:00:00Z",
    );
    t.status = Some(s1.clone());
    let s2 = desired_status(
        &t,
        &CollectorWorkload::Deployment(d.clone()),
        Redis::default(),
        None,
        "r",
        "2026-01-01T00:05:00Z",
    );
    let ready = |s: &crate::crd::TraceCollectorStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap()
            .clone()
    };
    assert_eq!(ready(&s2).last_transition_time, "2026-01-01T00:00:00Z");
    t.status = Some(s2);
    let s3 = desired_status(
        &t,
        &CollectorWorkload::Deployment(deployment_with(2, 2, None)),
        Redis::default(),
        None,
        "r",
        "2026-01-01T00:09:00Z",
    );
    assert_eq!(ready(&s3).status, "True");
    assert_eq!(ready(&s3).last_transition_time, "2026-01-01T00:09:00Z");
}

#[test]
fn a_stuck_rollout_is_degraded_with_its_message() {
    let t = tc("main");
    let d = deployment_with(0, 2, Some("ReplicaSet has timed out progressing"));
    let s = desired_status(
        &t,
        &CollectorWorkload::Deployment(d.clone()),
        Redis::default(),
        None,
        "r",
        "2026-01-01T00:00:00Z",
    );
    let degraded = s.conditions.iter().find(|c| c.type_ == "Degraded").unwrap();
    assert_eq!(degraded.status, "True");
    assert_eq!(degraded.reason, "ChildFailing");
    assert!(degraded.message.contains("timed out progressing"));
}

fn condition<'a>(s: &'a TraceCollectorStatus, type_: &str) -> &'a Condition {
    s.conditions.iter().find(|c| c.type_ == type_).unwrap()
}

#[test]
fn a_statefulset_of_collectors_reports_like_a_deployment() {
    let mut t = tc("main");
    t.spec.wal.persistent = true;
    let mut sts = desired_collector_statefulset(&t, &defaults());
    sts.metadata.generation = Some(3);
    sts.status = Some(StatefulSetStatus {
        observed_generation: Some(3),
        replicas: 2,
        ready_replicas: Some(2),
        updated_replicas: Some(1),
        ..StatefulSetStatus::default()
    });
    let w = CollectorWorkload::StatefulSet(sts.clone());
    let s = desired_status(&t, &w, Redis::default(), None, "r", "2026-01-01T00:00:00Z");
    assert_eq!((s.replicas, s.ready_replicas), (2, 2));
    assert_eq!(condition(&s, READY).status, "True");
    // One pod still runs the old template.
    let p = condition(&s, PROGRESSING);
    assert_eq!(
        (p.status.as_str(), p.reason.as_str()),
        ("True", "RollingOut")
    );
    assert_eq!(p.message, "1/2 collectors updated, 2 ready");
    assert_eq!(condition(&s, DEGRADED).status, "False");

    sts.status.as_mut().unwrap().updated_replicas = Some(2);
    let w = CollectorWorkload::StatefulSet(sts);
    let s = desired_status(&t, &w, Redis::default(), None, "r", "2026-01-01T00:00:00Z");
    assert_eq!(condition(&s, PROGRESSING).reason, "Stable");
}

#[test]
fn replicated_when_enough_collectors_are_ready_for_the_factor() {
    let mut t = tc("main");
    let replicated = |t: &TraceCollector, ready: i32| {
        let c = replicated_condition(t, ready, "2026-01-01T00:00:00Z");
        (c.status, c.reason, c.message)
    };
    let no = |m: &str| {
        (
            "False".to_owned(),
            "FewerMembersThanFactor".to_owned(),
            m.to_owned(),
        )
    };
    // The default factor is 2.
    assert_eq!(
        replicated(&t, 3),
        (
            "True".to_owned(),
            "Replicated".to_owned(),
            "3 ready collectors, replication factor 2: each span has 2 copies".to_owned()
        )
    );
    assert_eq!(
        replicated(&t, 2).2,
        "2 ready collectors, replication factor 2: each span has 2 copies"
    );
    assert_eq!(
        replicated(&t, 1),
        no("1 ready collector, replication factor 2: each span has at most 1 copy")
    );
    assert_eq!(
        replicated(&t, 0),
        no("0 ready collectors, replication factor 2: no collector takes spans")
    );
    t.spec.replication.factor = 3;
    assert_eq!(
        replicated(&t, 2),
        no("2 ready collectors, replication factor 3: each span has at most 2 copies")
    );
    t.spec.replication.factor = 1;
    assert_eq!(
        replicated(&t, 1).2,
        "1 ready collector, replication factor 1: each span has 1 copy"
    );
}

#[test]
fn the_status_reports_replication_from_the_ready_collectors() {
    let mut t = tc("main");
    t.spec.replication.factor = 3;
    let d = CollectorWorkload::Deployment(deployment_with(2, 3, None));
    let s1 = desired_status(&t, &d, Redis::default(), None, "r", "2026-01-01T00:00:00Z");
    let c = condition(&s1, REPLICATED);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "FewerMembersThanFactor")
    );
    assert_eq!(c.observed_generation, Some(1));
    // The transition time moves when the condition flips, not before.
    t.status = Some(s1);
    let d = CollectorWorkload::Deployment(deployment_with(3, 3, None));
    let s2 = desired_status(&t, &d, Redis::default(), None, "r", "2026-01-01T00:05:00Z");
    let c = condition(&s2, REPLICATED);
    assert_eq!(c.status, "True");
    assert_eq!(c.last_transition_time, "2026-01-01T00:05:00Z");
    t.status = Some(s2);
    let s3 = desired_status(&t, &d, Redis::default(), None, "r", "2026-01-01T00:09:00Z");
    assert_eq!(
        condition(&s3, REPLICATED).last_transition_time,
        "2026-01-01T00:05:00Z"
    );
}

#[test]
fn a_managed_redis_cluster_is_ready_when_every_pod_is_and_the_bootstrap_job_succeeded() {
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
    let mut t = tc("main");
    t.spec.storage.redis.managed = Some(crate::crd::ManagedRedis {
        cluster: Some(crate::crd::ManagedRedisCluster { shards: 3 }),
        ..crate::crd::ManagedRedis::default()
    });
    let collectors = CollectorWorkload::Deployment(deployment_with(2, 2, None));
    let mut sts = crate::desired::desired_redis(&t).unwrap();
    let mut job = crate::desired::redis_cluster::desired_bootstrap_job(&t).unwrap();
    let status = |sts: &StatefulSet, job: &Job| {
        let redis = Redis {
            statefulset: Some(sts),
            bootstrap: Some(job),
        };
        desired_status(&t, &collectors, redis, None, "r", "2026-01-01T00:00:00Z")
    };
    let ready_replicas = |n: i32| StatefulSetStatus {
        replicas: 6,
        ready_replicas: Some(n),
        ..StatefulSetStatus::default()
    };
    // One node short: not ready, whatever the Job says.
    sts.status = Some(ready_replicas(5));
    let s = status(&sts, &job);
    let ready = condition(&s, READY);
    assert_eq!(
        (ready.reason.as_str(), ready.message.as_str()),
        ("RedisNotReady", "5/6 Redis Cluster pods ready")
    );
    // Every node up, the cluster not formed yet.
    sts.status = Some(ready_replicas(6));
    let s = status(&sts, &job);
    assert_eq!(condition(&s, READY).reason, "RedisClusterNotFormed");
    assert_eq!(condition(&s, DEGRADED).status, "False");
    // The Job gave up: Degraded with its message.
    job.status = Some(JobStatus {
        failed: Some(7),
        conditions: Some(vec![JobCondition {
            type_: "Failed".to_owned(),
            status: "True".to_owned(),
            message: Some("Job has reached the specified backoff limit".to_owned()),
            ..JobCondition::default()
        }]),
        ..JobStatus::default()
    });
    let s = status(&sts, &job);
    let degraded = condition(&s, DEGRADED);
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "ChildFailing")
    );
    assert_eq!(
        degraded.message,
        "main-redis-bootstrap: Job has reached the specified backoff limit"
    );
    // Formed.
    job.status = Some(JobStatus {
        succeeded: Some(1),
        ..JobStatus::default()
    });
    let s = status(&sts, &job);
    assert_eq!(condition(&s, READY).status, "True");
    assert_eq!(condition(&s, DEGRADED).status, "False");
}
