//! The `TraceCollector` status as a pure function of what the children report.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;

use crate::crd::{Condition, TraceCollector, TraceCollectorStatus};
use crate::desired::{self, CollectorWorkload};

/// Condition type: the pipeline can take spans and answer queries.
pub const READY: &str = "Ready";
/// Condition type: a rollout is under way.
pub const PROGRESSING: &str = "Progressing";
/// Condition type: a child is failing.
pub const DEGRADED: &str = "Degraded";
/// Condition type: enough collectors are ready for every span to get its configured copies.
pub const REPLICATED: &str = "Replicated";

/// How far a workload's rollout is, whichever kind it is.
#[derive(Debug)]
struct Rollout {
    /// Replicas wanted (`spec.replicas`, as the HPA may have set it).
    want: i32,
    /// Replicas that exist.
    replicas: i32,
    ready: i32,
    updated: i32,
    /// Whether the workload's controller has seen its latest spec.
    observed: bool,
    /// A failure the workload reports in its conditions.
    failure: Option<String>,
}

impl Rollout {
    fn of_deployment(d: &Deployment) -> Self {
        let st = d.status.clone().unwrap_or_default();
        Self {
            want: d.spec.replicas.unwrap_or(1),
            replicas: st.replicas.unwrap_or(0),
            ready: st.ready_replicas.unwrap_or(0),
            updated: st.updated_replicas.unwrap_or(0),
            observed: st.observed_generation >= d.metadata.generation,
            failure: deployment_failure(d),
        }
    }

    /// A StatefulSet reports no progress deadline, so it never has a `failure`.
    fn of_statefulset(s: &StatefulSet) -> Self {
        let st = s.status.clone().unwrap_or_default();
        Self {
            want: s.spec.replicas.unwrap_or(1),
            replicas: st.replicas,
            ready: st.ready_replicas.unwrap_or(0),
            updated: st.updated_replicas.unwrap_or(0),
            observed: st.observed_generation >= s.metadata.generation,
            failure: None,
        }
    }

    fn of_collectors(w: &CollectorWorkload) -> Self {
        match w {
            CollectorWorkload::Deployment(d) => Self::of_deployment(d),
            CollectorWorkload::StatefulSet(s) => Self::of_statefulset(s),
        }
    }
}

/// The managed Redis as the API server returned it: its StatefulSet and, for a cluster, the
/// Job that forms it. Both `None` with an external Redis.
#[derive(Clone, Copy, Debug, Default)]
pub struct Redis<'a> {
    /// The managed Redis's StatefulSet.
    pub statefulset: Option<&'a StatefulSet>,
    /// The managed Redis Cluster's bootstrap Job.
    pub bootstrap: Option<&'a Job>,
}

impl Redis<'_> {
    /// Why the managed Redis cannot take writes yet (a condition reason and message), if it
    /// cannot: pods not all ready, or, for a cluster, the bootstrap Job not yet succeeded.
    fn not_ready(&self, tc: &TraceCollector) -> Option<(&'static str, String)> {
        let sts = self.statefulset?;
        let want = sts.spec.replicas.unwrap_or(1);
        let ready = sts
            .status
            .as_ref()
            .and_then(|st| st.ready_replicas)
            .unwrap_or(0);
        let cluster = desired::redis_cluster::managed_cluster(tc).is_some();
        if ready < want {
            let msg = if cluster {
                format!("{ready}/{want} Redis Cluster pods ready")
            } else {
                "Redis is not ready".to_owned()
            };
            return Some(("RedisNotReady", msg));
        }
        let formed = self
            .bootstrap
            .and_then(|j| j.status.as_ref()?.succeeded)
            .unwrap_or(0)
            >= 1;
        (cluster && !formed).then(|| {
            (
                "RedisClusterNotFormed",
                format!(
                    "the Redis Cluster is not formed yet: Job {} has not succeeded",
                    desired::names::redis_bootstrap(tc)
                ),
            )
        })
    }

    /// The bootstrap Job's failure, when it gave up (condition `Failed`).
    fn failure(&self) -> Option<String> {
        let job = self.bootstrap?;
        let conds = job.status.as_ref()?.conditions.as_ref()?;
        conds
            .iter()
            .find(|c| c.type_ == "Failed" && c.status == "True")
            .map(|c| {
                format!(
                    "{}: {}",
                    job.name_any(),
                    c.message.clone().unwrap_or_default()
                )
            })
    }
}

/// A deployment's failure, if its own conditions report one.
fn deployment_failure(d: &Deployment) -> Option<String> {
    let conds = d.status.as_ref()?.conditions.as_ref()?;
    conds.iter().find_map(|c| {
        let (type_, status) = (c.type_.as_deref(), c.status.as_deref());
        let failed = (type_ == Some("Progressing")
            && status == Some("False")
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded"))
            || (type_ == Some("ReplicaFailure") && status == Some("True"));
        failed.then(|| {
            format!(
                "{}: {}",
                d.name_any(),
                c.message.clone().unwrap_or_default()
            )
        })
    })
}

fn condition(
    previous: Option<&Condition>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &str,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    // The transition time moves only when the status flips.
    let last_transition_time = match previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => now.to_owned(),
    };
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time,
        observed_generation: generation,
    }
}

/// `tc`'s last status with `Degraded` set to True for `reason`: written
/// when a reconcile fails, so the status says so instead of going stale.
/// The other conditions and figures stay as they were.
pub fn failed_status(
    tc: &TraceCollector,
    reason: &str,
    message: String,
    now: &str,
) -> TraceCollectorStatus {
    let mut status = tc.status.clone().unwrap_or_default();
    let degraded = condition(
        tc.condition(DEGRADED),
        DEGRADED,
        true,
        reason,
        message,
        tc.metadata.generation,
        now,
    );
    match status.conditions.iter_mut().find(|c| c.type_ == DEGRADED) {
        Some(c) => *c = degraded,
        None => status.conditions.push(degraded),
    }
    status
}

/// The status to write, from the applied children as the API server returned them.
///
/// `now` is an RFC 3339 timestamp, passed in so the function stays pure.
pub fn desired_status(
    tc: &TraceCollector,
    collectors: &CollectorWorkload,
    redis: Redis<'_>,
    visualizer: Option<&Deployment>,
    sidecar_revision: &str,
    now: &str,
) -> TraceCollectorStatus {
    let collectors = Rollout::of_collectors(collectors);
    let visualizer = visualizer.map(Rollout::of_deployment);
    TraceCollectorStatus {
        observed_generation: tc.metadata.generation,
        replicas: collectors.replicas,
        ready_replicas: collectors.ready,
        selector: Some(desired::selector_string(tc)),
        collector_endpoint: Some(desired::collector_endpoint(tc)),
        visualizer_url: desired::visualizer_url(tc),
        sidecar_revision: Some(sidecar_revision.to_owned()),
        conditions: vec![
            ready_condition(tc, &collectors, &redis, visualizer.as_ref(), now),
            progressing_condition(tc, &collectors, now),
            degraded_condition(tc, &collectors, &redis, visualizer.as_ref(), now),
            replicated_condition(tc, collectors.ready, now),
        ],
    }
}

/// `Ready`: every collector is ready, and so are Redis (a managed cluster: formed) and the
/// visualizer where they exist.
fn ready_condition(
    tc: &TraceCollector,
    collectors: &Rollout,
    redis: &Redis<'_>,
    visualizer: Option<&Rollout>,
    now: &str,
) -> Condition {
    let (want, ready) = (collectors.want, collectors.ready);
    let visualizer_ready = visualizer.is_none_or(|v| v.ready >= v.want);

    let collectors_ready = want > 0 && ready >= want;
    let (ready_ok, ready_reason, ready_msg) = if !collectors_ready {
        (
            false,
            "CollectorsNotReady",
            format!("{ready}/{want} collectors ready"),
        )
    } else if let Some((reason, msg)) = redis.not_ready(tc) {
        (false, reason, msg)
    } else if !visualizer_ready {
        (
            false,
            "VisualizerNotReady",
            "the visualizer is not ready".to_owned(),
        )
    } else {
        (true, "Ready", format!("{ready}/{want} collectors ready"))
    };
    condition(
        tc.condition(READY),
        READY,
        ready_ok,
        ready_reason,
        ready_msg,
        tc.metadata.generation,
        now,
    )
}

/// `Progressing`: the collectors' workload is not yet observed, updated and ready.
fn progressing_condition(tc: &TraceCollector, collectors: &Rollout, now: &str) -> Condition {
    let Rollout {
        want,
        ready,
        updated,
        observed,
        ..
    } = *collectors;
    let rolling = !observed || updated < want || ready < want;
    condition(
        tc.condition(PROGRESSING),
        PROGRESSING,
        rolling,
        if rolling { "RollingOut" } else { "Stable" },
        format!("{updated}/{want} collectors updated, {ready} ready"),
        tc.metadata.generation,
        now,
    )
}

/// `Degraded`: the collector or visualizer Deployment reports a failure, or the managed Redis
/// Cluster's bootstrap Job gave up.
fn degraded_condition(
    tc: &TraceCollector,
    collectors: &Rollout,
    redis: &Redis<'_>,
    visualizer: Option<&Rollout>,
    now: &str,
) -> Condition {
    let failure = collectors
        .failure
        .clone()
        .or_else(|| redis.failure())
        .or_else(|| visualizer.and_then(|v| v.failure.clone()));
    condition(
        tc.condition(DEGRADED),
        DEGRADED,
        failure.is_some(),
        if failure.is_some() {
            "ChildFailing"
        } else {
            "AsExpected"
        },
        failure.unwrap_or_else(|| "no child reports a failure".to_owned()),
        tc.metadata.generation,
        now,
    )
}

/// `Replicated`: at least `spec.replication.factor` collectors are ready. With fewer, the
/// collectors shrink the factor to their number, so each span has one copy per collector.
fn replicated_condition(tc: &TraceCollector, ready: i32, now: &str) -> Condition {
    let factor = tc.spec.replication.factor;
    let collectors = counted(ready, "ready collector", "ready collectors");
    let (ok, reason, consequence) = if ready >= factor {
        (
            true,
            "Replicated",
            format!("each span has {}", counted(factor, "copy", "copies")),
        )
    } else if ready == 0 {
        (
            false,
            "FewerMembersThanFactor",
            "no collector takes spans".to_owned(),
        )
    } else {
        (
            false,
            "FewerMembersThanFactor",
            format!("each span has at most {}", counted(ready, "copy", "copies")),
        )
    };
    condition(
        tc.condition(REPLICATED),
        REPLICATED,
        ok,
        reason,
        format!("{collectors}, replication factor {factor}: {consequence}"),
        tc.metadata.generation,
        now,
    )
}

/// `n` and the noun in the right number.
fn counted(n: i32, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests;
