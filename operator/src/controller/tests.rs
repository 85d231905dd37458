//! Controller behaviour against a mock API server: every request the controller makes is
//! checked in order, and answered the way the API server would.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use kube::ResourceExt;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::*;
use crate::crd::{AutoscalerSpec, ExternalRedis};
use crate::fixtures::{ApiServerVerifier, NS, UID, defaults, path, reconciled, tc};

/// What the mock cluster reports about the children.
#[derive(Clone, Copy)]
struct Cluster {
    collectors_ready: i32,
    redis_ready: bool,
    /// A managed Redis Cluster's bootstrap Job has succeeded.
    redis_formed: bool,
    /// The collectors' other workload kind still exists, from before `spec.wal.persistent`
    /// changed.
    previous_workload: bool,
}

/// An existing object owned by the test TraceCollector, as a GET returns it.
fn owned(api_version: &str, kind: &str, name: &str) -> Value {
    json!({
        "apiVersion": api_version, "kind": kind,
        "metadata": {"name": name, "namespace": NS,
                     "ownerReferences": [{"apiVersion": "clew.dev/v1alpha1", "kind": "TraceCollector",
                                          "name": "main", "uid": UID, "controller": true}]},
        "spec": {}
    })
}

/// A GET of `path` answered with the owned `obj`, then its DELETE.
async fn deleted(v: &mut ApiServerVerifier, path: &str, obj: Value) {
    v.expect(Method::GET, path).await.ok(&obj);
    let del = v.expect(Method::DELETE, path).await;
    del.ok(&json!({"apiVersion": "v1", "kind": "Status", "status": "Success"}));
}

fn assert_owned(obj: &Value) {
    let owner = &obj["metadata"]["ownerReferences"][0];
    assert_eq!(owner["uid"], UID, "{}", obj["metadata"]["name"]);
    assert_eq!(owner["kind"], "TraceCollector");
    assert_eq!(owner["controller"], true);
    assert_eq!(
        obj["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "clew-operator"
    );
}

/// The children in the controller's order; returns the applied collector workload.
async fn children(v: &mut ApiServerVerifier, tc: &TraceCollector, c: Cluster) -> Value {
    let n = tc.name_any();
    let mut applied = vec![
        v.apply(&path("ConfigMap", &format!("{n}-collector")), |_| {})
            .await,
    ];
    let sampling = path("ConfigMap", &format!("{n}-collector-sampling"));
    if tc.spec.sampling.tail.is_some() {
        applied.push(v.apply(&sampling, |_| {}).await);
    } else {
        v.not_found(&sampling).await;
    }
    applied.extend([
        v.apply(&path("Service", &format!("{n}-collector-headless")), |_| {})
            .await,
        v.apply(&path("Service", &format!("{n}-collector")), |_| {})
            .await,
    ]);
    if tc.spec.storage.redis.external.is_none() {
        applied.push(
            v.apply(&path("Service", &format!("{n}-redis")), |_| {})
                .await,
        );
        let pods = crate::desired::redis_cluster::managed_cluster(tc)
            .map_or(1, crate::desired::redis_cluster::pod_count);
        applied.push(
            v.apply(&path("StatefulSet", &format!("{n}-redis")), |o| {
                let ready = if c.redis_ready { pods } else { 0 };
                o["status"] = json!({"replicas": pods, "readyReplicas": ready});
            })
            .await,
        );
        bootstrap(v, tc, c, &mut applied).await;
    } else {
        // The managed Redis of an earlier spec is removed, but only when this collector owns it.
        let redis = format!("{n}-redis");
        deleted(v, &path("Service", &redis), owned("v1", "Service", &redis)).await;
        v.not_found(&path("StatefulSet", &format!("{n}-redis")))
            .await;
        v.not_found(&path("Job", &format!("{n}-redis-bootstrap")))
            .await;
    }
    if crate::desired::cold::desired_claim(tc).is_some() {
        applied.push(
            v.apply(&path("PersistentVolumeClaim", &format!("{n}-cold")), |_| {})
                .await,
        );
    }
    let want = if tc.spec.autoscaler.is_some() {
        1
    } else {
        tc.spec.replicas
    };
    let (kind, other) = if tc.spec.wal.persistent {
        ("StatefulSet", "Deployment")
    } else {
        ("Deployment", "StatefulSet")
    };
    let collectors = format!("{n}-collector");
    let workload = v
        .apply(&path(kind, &collectors), |o| {
            o["metadata"]["generation"] = json!(1);
            o["status"] = json!({"observedGeneration": 1, "replicas": want,
                                 "updatedReplicas": want, "readyReplicas": c.collectors_ready});
        })
        .await;
    applied.push(workload.clone());
    // The other kind is removed once the wanted one is applied.
    if c.previous_workload {
        deleted(
            v,
            &path(other, &collectors),
            owned("apps/v1", other, &collectors),
        )
        .await;
    } else {
        v.not_found(&path(other, &collectors)).await;
    }
    applied.push(
        v.apply(
            &path("PodDisruptionBudget", &format!("{n}-collector")),
            |_| {},
        )
        .await,
    );
    if tc.spec.autoscaler.is_some() {
        applied.push(
            v.apply(
                &path("HorizontalPodAutoscaler", &format!("{n}-collector")),
                |_| {},
            )
            .await,
        );
    } else {
        v.not_found(&path("HorizontalPodAutoscaler", &format!("{n}-collector")))
            .await;
    }
    applied.push(
        v.apply(&path("Deployment", &format!("{n}-visualizer")), |o| {
            o["status"] = json!({"replicas": 1, "readyReplicas": 1});
        })
        .await,
    );
    applied.push(
        v.apply(&path("Service", &format!("{n}-visualizer")), |_| {})
            .await,
    );
    for obj in &applied {
        assert_owned(obj);
    }
    workload
}

/// The managed Redis Cluster's bootstrap Job, applied (and reported done when Redis is ready);
/// without a cluster, looked for so that one left from before is removed.
async fn bootstrap(
    v: &mut ApiServerVerifier,
    tc: &TraceCollector,
    c: Cluster,
    applied: &mut Vec<Value>,
) {
    let job = path("Job", &format!("{}-redis-bootstrap", tc.name_any()));
    if crate::desired::redis_cluster::managed_cluster(tc).is_none() {
        v.not_found(&job).await;
        return;
    }
    applied.push(
        v.apply(&job, |o| {
            o["status"] = json!({"succeeded": i32::from(c.redis_formed)});
        })
        .await,
    );
}

async fn no_workloads(v: &mut ApiServerVerifier) {
    v.list("/api/v1/namespaces", "Namespace", vec![]).await;
    v.list("/apis/apps/v1/deployments", "Deployment", vec![])
        .await;
    v.list("/apis/apps/v1/statefulsets", "StatefulSet", vec![])
        .await;
    v.list("/apis/apps/v1/daemonsets", "DaemonSet", vec![])
        .await;
}

async fn run(tc: TraceCollector, ctx: Arc<Context>) -> Result<Action> {
    tokio::time::timeout(Duration::from_secs(10), reconcile(Arc::new(tc), ctx))
        .await
        .expect("reconcile finished")
}

/// Reconciles `obj` while `api` plays the API server (and gets a copy of `obj`); afterwards
/// no request may be left unanswered.
async fn scenario<F, Fut>(obj: TraceCollector, api: F) -> (Result<Action>, Arc<Context>)
where
    F: FnOnce(ApiServerVerifier, TraceCollector) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ApiServerVerifier> + Send + 'static,
{
    let (ctx, v) = Context::test();
    let server = tokio::spawn(api(v, obj.clone()));
    let res = run(obj, ctx.clone()).await;
    server.await.unwrap().assert_silent();
    (res, ctx)
}

/// `t` as already reconciled, at its current sidecar revision.
fn settled(t: TraceCollector) -> TraceCollector {
    let revision = inject::sidecar_revision(&t, &defaults());
    reconciled(t, &revision)
}

const READY: Cluster = Cluster {
    collectors_ready: 2,
    redis_ready: true,
    redis_formed: true,
    previous_workload: false,
};

fn condition<'a>(s: &'a crate::crd::TraceCollectorStatus, t: &str) -> &'a crate::crd::Condition {
    s.conditions.iter().find(|c| c.type_ == t).unwrap()
}

#[tokio::test]
async fn create_applies_every_child_and_reports_progress() {
    let starting = Cluster {
        collectors_ready: 0,
        redis_ready: false,
        redis_formed: false,
        previous_workload: false,
    };
    let (res, _) = scenario(tc("main"), move |mut v, t| async move {
        let d = children(&mut v, &t, starting).await;
        assert_eq!(d["spec"]["replicas"], 2);
        no_workloads(&mut v).await;
        let status = v.status(&t).await;
        assert_eq!(status.observed_generation, Some(1));
        assert_eq!(condition(&status, "Ready").status, "False");
        assert_eq!(condition(&status, "Ready").reason, "CollectorsNotReady");
        assert_eq!(condition(&status, "Ready").message, "0/2 collectors ready");
        assert_eq!(condition(&status, "Progressing").status, "True");
        assert_eq!(
            condition(&status, "Replicated").reason,
            "FewerMembersThanFactor"
        );
        assert_eq!(
            status.collector_endpoint.as_deref(),
            Some("http://main-collector.traces.svc:4317")
        );
        assert_eq!(
            status.selector.as_deref(),
            Some(
                "app.kubernetes.io/component=collector,app.kubernetes.io/instance=main,app.kubernetes.io/name=clew"
            )
        );
        assert_eq!(
            status.sidecar_revision,
            Some(inject::sidecar_revision(&t, &defaults()))
        );
        let ev = v.event().await;
        assert_eq!(ev["reason"], "Applied");
        assert_eq!(ev["regarding"]["name"], "main");
        v
    })
    .await;
    assert_eq!(res.unwrap(), Action::requeue(PROGRESS_POLL));
}

#[tokio::test]
async fn ready_children_make_the_collector_ready() {
    let (res, _) = scenario(settled(tc("main")), |mut v, t| async move {
        children(&mut v, &t, READY).await;
        // Same sidecar revision: no workload is listed or rolled.
        let status = v.status(&t).await;
        assert_eq!(status.ready_replicas, 2);
        assert_eq!(condition(&status, "Ready").status, "True");
        assert_eq!(condition(&status, "Progressing").status, "False");
        assert_eq!(condition(&status, "Degraded").status, "False");
        assert_eq!(
            condition(&status, "Replicated").message,
            "2 ready collectors, replication factor 2: each span has 2 copies"
        );
        assert_eq!(v.event().await["reason"], "Ready");
        v
    })
    .await;
    assert_eq!(res.unwrap(), Action::requeue(RESYNC));
}

#[tokio::test]
async fn redis_not_ready_keeps_the_collector_not_ready() {
    let no_redis = Cluster {
        redis_ready: false,
        ..READY
    };
    let (res, _) = scenario(settled(tc("main")), move |mut v, t| async move {
        children(&mut v, &t, no_redis).await;
        let status = v.status(&t).await;
        assert_eq!(condition(&status, "Ready").reason, "RedisNotReady");
        v
    })
    .await;
    assert_eq!(res.unwrap(), Action::requeue(PROGRESS_POLL));
}

fn cluster_tc() -> TraceCollector {
    let mut t = tc("main");
    t.spec.storage.redis.managed = Some(crate::crd::ManagedRedis {
        cluster: Some(crate::crd::ManagedRedisCluster { shards: 3 }),
        ..crate::crd::ManagedRedis::default()
    });
    t
}

#[tokio::test]
async fn a_managed_redis_cluster_is_ready_only_once_its_bootstrap_job_succeeded() {
    let unformed = Cluster {
        redis_formed: false,
        ..READY
    };
    let (res, _) = scenario(settled(cluster_tc()), move |mut v, t| async move {
        children(&mut v, &t, unformed).await;
        let status = v.status(&t).await;
        let ready = condition(&status, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "RedisClusterNotFormed")
        );
        assert!(ready.message.contains("main-redis-bootstrap"), "{ready:?}");
        v
    })
    .await;
    assert_eq!(res.unwrap(), Action::requeue(PROGRESS_POLL));

    let (res, _) = scenario(settled(cluster_tc()), |mut v, t| async move {
        children(&mut v, &t, READY).await;
        let status = v.status(&t).await;
        assert_eq!(condition(&status, "Ready").status, "True");
        assert_eq!(v.event().await["reason"], "Ready");
        v
    })
    .await;
    assert_eq!(res.unwrap(), Action::requeue(RESYNC));
}

#[tokio::test]
async fn a_bootstrap_job_whose_template_changed_is_deleted_and_created_again() {
    let (ctx, mut v) = Context::test();
    let job = path("Job", "main-redis-bootstrap");
    let server = tokio::spawn(async move {
        // A Job's pod template is immutable: the API server refuses the apply.
        v.expect(Method::PATCH, &job)
            .await
            .status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid");
        deleted(
            &mut v,
            &job,
            owned("batch/v1", "Job", "main-redis-bootstrap"),
        )
        .await;
        let created = v.apply(&job, |_| {}).await;
        assert_owned(&created);
        v
    });
    let applied = apply_bootstrap(&cluster_tc(), &ctx).await.unwrap();
    server.await.unwrap().assert_silent();
    assert_eq!(
        applied.unwrap().metadata.name.as_deref(),
        Some("main-redis-bootstrap")
    );
}

#[tokio::test]
async fn scale_updates_the_deployment_replicas() {
    let mut obj = settled(tc("main"));
    obj.spec.replicas = 5;
    obj.metadata.generation = Some(2);
    let (res, _) = scenario(obj, |mut v, t| async move {
        let d = children(&mut v, &t, READY).await;
        assert_eq!(d["spec"]["replicas"], 5);
        let status = v.status(&t).await;
        assert_eq!(status.observed_generation, Some(2));
        assert_eq!(condition(&status, "Ready").message, "2/5 collectors ready");
        let ev = v.event().await;
        assert_eq!(ev["reason"], "Applied");
        assert!(ev["note"].as_str().unwrap().contains("generation 2"));
        v
    })
    .await;
    res.unwrap();
}

#[tokio::test]
async fn autoscaler_gets_an_hpa_and_owns_the_replica_count() {
    let mut obj = tc("main");
    obj.spec.autoscaler = Some(AutoscalerSpec {
        min_replicas: 2,
        max_replicas: 6,
        target_cpu_utilization: 70,
    });
    let (res, _) = scenario(settled(obj), |mut v, t| async move {
        let d = children(&mut v, &t, READY).await;
        assert!(
            d["spec"].get("replicas").is_none(),
            "the HPA owns replicas: {d}"
        );
        v.status(&t).await;
        assert_eq!(v.event().await["reason"], "Ready");
        v
    })
    .await;
    res.unwrap();
}

#[tokio::test]
async fn external_redis_replaces_the_managed_one() {
    let mut obj = tc("main");
    obj.spec.storage.redis.external = Some(ExternalRedis::new("redis-url"));
    let no_redis = Cluster {
        redis_ready: false,
        ..READY
    };
    let (res, _) = scenario(settled(obj), move |mut v, t| async move {
        let d = children(&mut v, &t, no_redis).await;
        let env = d["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "CLEW_REDIS_URL")
            .unwrap()
            .clone();
        assert_eq!(env["valueFrom"]["secretKeyRef"]["name"], "redis-url");
        // No managed Redis to wait for.
        let status = v.status(&t).await;
        assert_eq!(condition(&status, "Ready").status, "True");
        v.event().await;
        v
    })
    .await;
    res.unwrap();
}

#[tokio::test]
async fn a_persistent_wal_runs_the_collectors_as_a_statefulset() {
    let mut obj = tc("main");
    obj.spec.wal.persistent = true;
    obj.spec.wal.storage_class = Some("fast".to_owned());
    let (res, _) = scenario(settled(obj), |mut v, t| async move {
        let sts = children(&mut v, &t, READY).await;
        assert_eq!(sts["kind"], "StatefulSet");
        let spec = &sts["spec"];
        assert_eq!(spec["replicas"], 2);
        assert_eq!(spec["serviceName"], "main-collector-headless");
        assert_eq!(spec["podManagementPolicy"], "Parallel");
        let claim = &spec["volumeClaimTemplates"][0];
        assert_eq!(claim["metadata"]["name"], "data");
        assert_eq!(claim["spec"]["storageClassName"], "fast");
        assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "10Gi");
        // The status follows the StatefulSet (the scale subresource reads it).
        let status = v.status(&t).await;
        assert_eq!((status.replicas, status.ready_replicas), (2, 2));
        assert_eq!(condition(&status, "Ready").status, "True");
        assert_eq!(condition(&status, "Progressing").status, "False");
        assert_eq!(v.event().await["reason"], "Ready");
        v
    })
    .await;
    assert_eq!(res.unwrap(), Action::requeue(RESYNC));
}

#[tokio::test]
async fn a_filesystem_cold_tier_gets_its_claim_before_the_collectors_mount_it() {
    let mut obj = tc("main");
    obj.spec.storage.cold = Some(crate::crd::ColdSpec::new(
        Some(crate::crd::ColdFilesystem {
            storage_class_name: Some("nfs".to_owned()),
            access_modes: vec![crate::crd::AccessMode::ReadWriteMany],
            ..crate::crd::ColdFilesystem::default()
        }),
        None,
    ));
    let (res, _) = scenario(settled(obj), |mut v, t| async move {
        // children() expects the claim after Redis and before the collectors, and checks
        // that every applied child, the claim included, is owned by the TraceCollector.
        let deployment = children(&mut v, &t, READY).await;
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(
            pod["volumes"][1]["persistentVolumeClaim"]["claimName"],
            "main-cold"
        );
        assert_eq!(deployment["spec"]["strategy"]["type"], "RollingUpdate");
        v.status(&t).await;
        assert_eq!(v.event().await["reason"], "Ready");
        v
    })
    .await;
    assert_eq!(res.unwrap(), Action::requeue(RESYNC));
}

#[tokio::test]
async fn an_s3_cold_tier_or_an_existing_claim_creates_no_claim() {
    let mut s3 = tc("main");
    s3.spec.storage.cold = Some(crate::crd::ColdSpec::new(
        None,
        Some(crate::crd::ColdS3::new("traces")),
    ));
    let mut existing = tc("main");
    existing.spec.storage.cold = Some(crate::crd::ColdSpec::new(
        Some(crate::crd::ColdFilesystem {
            existing_claim: Some("my-nfs".to_owned()),
            ..crate::crd::ColdFilesystem::default()
        }),
        None,
    ));
    for obj in [s3, existing] {
        let (res, _) = scenario(settled(obj), |mut v, t| async move {
            // The mock server fails the test on any request children() does not expect,
            // a claim's included.
            let deployment = children(&mut v, &t, READY).await;
            assert_eq!(deployment["spec"]["strategy"]["type"], "RollingUpdate");
            v.status(&t).await;
            assert_eq!(v.event().await["reason"], "Ready");
            v
        })
        .await;
        assert_eq!(res.unwrap(), Action::requeue(RESYNC));
    }
}

#[tokio::test]
async fn switching_persistence_replaces_the_collector_workload() {
    for persistent in [true, false] {
        let mut obj = settled(tc("main"));
        obj.spec.wal.persistent = persistent;
        obj.metadata.generation = Some(2);
        let switching = Cluster {
            previous_workload: true,
            ..READY
        };
        let (res, _) = scenario(obj, move |mut v, t| async move {
            // children() checks the order: the new kind applied, then the old one deleted.
            let w = children(&mut v, &t, switching).await;
            let kind = if persistent {
                "StatefulSet"
            } else {
                "Deployment"
            };
            assert_eq!(w["kind"], kind);
            v.status(&t).await;
            let ev = v.event().await;
            assert_eq!(ev["reason"], "Applied");
            assert!(
                ev["note"].as_str().unwrap().contains(kind),
                "{}",
                ev["note"]
            );
            assert_eq!(v.event().await["reason"], "Ready");
            v
        })
        .await;
        res.unwrap();
    }
}

fn workload(name: &str, ns: &str, inject: Option<&str>, revision: Option<&str>) -> Value {
    let mut ann = serde_json::Map::new();
    if let Some(i) = inject {
        ann.insert("sidecar.clew.dev/inject".into(), json!(i));
    }
    if let Some(r) = revision {
        ann.insert("sidecar.clew.dev/revision".into(), json!(r));
    }
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": name, "namespace": ns},
           "spec": {"selector": {}, "template": {"metadata": {"annotations": ann}}}})
}

#[tokio::test]
async fn changed_sidecar_settings_roll_the_workloads_that_use_them() {
    let obj = reconciled(tc("main"), "old-revision");
    let rev = inject::sidecar_revision(&obj, &defaults());
    assert_ne!(rev, "old-revision");
    let (res, ctx) = scenario(obj, move |mut v, t| async move {
        children(&mut v, &t, READY).await;
        v.list(
            "/api/v1/namespaces",
            "Namespace",
            vec![json!({"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": "defaulted",
                                     "annotations": {"sidecar.clew.dev/inject": "traces/main"}}})],
        )
        .await;
        v.list(
            "/apis/apps/v1/deployments",
            "Deployment",
            vec![
                workload("uses-true", NS, Some("true"), None),
                workload(
                    "uses-name",
                    "shop",
                    Some("traces/main"),
                    Some("old-revision"),
                ),
                workload("current", NS, Some("main"), Some(&rev)),
                workload("other", NS, Some("other"), None),
                workload("opted-out", NS, Some("false"), None),
                workload("plain", NS, None, None),
                workload("inherits", "defaulted", None, None),
                workload("overrides", "defaulted", Some("false"), None),
            ],
        )
        .await;
        for (ns, name) in [
            (NS, "uses-true"),
            ("shop", "uses-name"),
            ("defaulted", "inherits"),
        ] {
            let r = v
                .expect(
                    Method::PATCH,
                    &format!("/apis/apps/v1/namespaces/{ns}/deployments/{name}"),
                )
                .await;
            assert_eq!(r.content_type, "application/merge-patch+json");
            assert_eq!(
                r.body["spec"]["template"]["metadata"]["annotations"]["sidecar.clew.dev/revision"],
                json!(rev)
            );
            r.ok(&workload(name, ns, None, Some(&rev)));
        }
        v.list("/apis/apps/v1/statefulsets", "StatefulSet", vec![])
            .await;
        v.list("/apis/apps/v1/daemonsets", "DaemonSet", vec![])
            .await;
        let ev = v.event().await;
        assert_eq!(ev["reason"], "WorkloadsRolled");
        assert!(
            ev["note"]
                .as_str()
                .unwrap()
                .contains("rolled 3 workload(s)")
        );
        let status = v.status(&t).await;
        assert_eq!(status.sidecar_revision.as_deref(), Some(rev.as_str()));
        assert_eq!(v.event().await["reason"], "Ready");
        v
    })
    .await;
    res.unwrap();
    assert_eq!(ctx.metrics.workload_rollouts.get(), 3);
}

#[tokio::test]
async fn api_failure_publishes_a_warning_marks_the_status_degraded_and_backs_off() {
    let (ctx, mut v) = Context::test();
    // Reconciled and ready before.
    let mut obj = reconciled(tc("main"), "r1");
    obj.status
        .as_mut()
        .unwrap()
        .conditions
        .push(crate::crd::Condition {
            type_: "Ready".to_owned(),
            status: "True".to_owned(),
            reason: "Ready".to_owned(),
            message: "2/2 collectors ready".to_owned(),
            last_transition_time: "2026-11-24T10:00:00Z".to_owned(),
            observed_generation: Some(1),
        });
    let before = obj.clone();
    let server = tokio::spawn(async move {
        v.expect(Method::PATCH, &path("ConfigMap", "main-collector"))
            .await
            .status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError");
        let ev = v.event().await;
        assert_eq!(ev["type"], "Warning");
        assert_eq!(ev["reason"], "ReconcileFailed");
        // The status says so: Degraded, the earlier conditions kept.
        let status = v.status(&before).await;
        let degraded = condition(&status, "Degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "ReconcileFailed")
        );
        assert!(degraded.message.contains("InternalError"), "{degraded:?}");
        assert_eq!(condition(&status, "Ready").status, "True");
        v
    });
    let err = run(obj.clone(), ctx.clone()).await.unwrap_err();
    server.await.unwrap().assert_silent();
    let obj = Arc::new(obj);
    assert_eq!(
        error_policy(obj.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
    assert_eq!(
        error_policy(obj.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(10))
    );
    assert_eq!(
        ctx.metrics
            .reconcile_errors
            .with_label_values(&["api"])
            .get(),
        2
    );
}

#[tokio::test]
async fn deleted_collector_is_left_to_the_garbage_collector() {
    let (ctx, mut v) = Context::test();
    let mut obj = tc("main");
    obj.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    let action = run(obj, ctx).await.unwrap();
    assert_eq!(action, Action::await_change());
    v.assert_silent();
}

#[tokio::test]
async fn children_owned_by_someone_else_are_never_deleted() {
    let (ctx, mut v) = Context::test();
    let server = tokio::spawn(async move {
        // Same name, but no owner reference to this TraceCollector: a user's object.
        v.expect(Method::GET, &path("Service", "main-redis"))
            .await
            .ok(&json!({"apiVersion": "v1", "kind": "Service",
                        "metadata": {"name": "main-redis", "namespace": NS}, "spec": {}}));
        v
    });
    remove::<Service>(&ctx.client, &tc("main"), "main-redis")
        .await
        .unwrap();
    server.await.unwrap().assert_silent();
}

#[test]
fn backoff_doubles_up_to_five_minutes() {
    let secs: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
    assert_eq!(secs, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
}

#[test]
fn template_selection_matches_names_and_namespaces() {
    let main = tc("main");
    let t = |v: &str| k8s_openapi::api::core::v1::PodTemplateSpec {
        metadata: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            annotations: Some([(INJECT_ANNOTATION.to_owned(), v.to_owned())].into()),
            ..Default::default()
        }),
        spec: None,
    };
    assert!(template_uses(&t("true"), NS, None, &main));
    assert!(!template_uses(&t("true"), "elsewhere", None, &main));
    assert!(template_uses(&t("main"), NS, None, &main));
    assert!(template_uses(&t("traces/main"), "elsewhere", None, &main));
    assert!(!template_uses(&t("other/main"), "elsewhere", None, &main));
    assert!(!template_uses(&t("false"), NS, Some("true"), &main));
    let bare = k8s_openapi::api::core::v1::PodTemplateSpec::default();
    assert!(template_uses(&bare, NS, Some("true"), &main));
    assert!(!template_uses(&bare, NS, None, &main));
}

/// The operator's Secret with a fresh CA, as JSON.
fn ca_secret() -> Value {
    let cfg = crate::certs::CertConfig {
        namespace: crate::fixtures::OPERATOR_NS.into(),
        service: "clew-operator-webhook".into(),
        secret: crate::fixtures::CA_SECRET.into(),
        webhook_configuration: "clew-operator".into(),
        validity: Duration::from_secs(365 * 86400),
        renew_before: Duration::from_secs(30 * 86400),
    };
    let now = time::OffsetDateTime::now_utc();
    let bundle = crate::certs::generate(&cfg.service, &cfg.namespace, now, cfg.validity).unwrap();
    let mut v = serde_json::to_value(crate::certs::secret_for(&cfg, &bundle, None)).unwrap();
    v["apiVersion"] = json!("v1");
    v["kind"] = json!("Secret");
    v
}

#[tokio::test]
async fn tls_issues_the_certificates_before_the_pods_that_mount_them() {
    let mut obj = tc("main");
    obj.spec.tls.enabled = true;
    let (res, ctx) = scenario(settled(obj), |mut v, t| async move {
        let secret = |name: &str| format!("/api/v1/namespaces/{NS}/secrets/{name}");
        v.expect(
            Method::GET,
            "/api/v1/namespaces/clew-system/secrets/clew-operator-webhook-tls",
        )
        .await
        .ok(&ca_secret());
        for name in ["main-collector-tls", "main-redis-tls", "main-redis-auth"] {
            v.not_found(&secret(name)).await;
            let applied = v.apply(&secret(name), |_| {}).await;
            assert_owned(&applied);
        }
        let ev = v.event().await;
        assert_eq!(ev["reason"], "CertificatesIssued");
        assert_eq!(
            ev["note"],
            "issued certificates: collector (new), redis (new)"
        );
        let workload = children(&mut v, &t, READY).await;
        let pod = &workload["spec"]["template"]["spec"];
        assert_eq!(
            pod["volumes"][1]["secret"]["secretName"],
            "main-collector-tls"
        );
        let status = v.status(&t).await;
        assert_eq!(
            status.collector_endpoint.as_deref(),
            Some("https://main-collector.traces.svc:4317")
        );
        assert_eq!(
            status.visualizer_url.as_deref(),
            Some("https://main-visualizer.traces.svc")
        );
        assert_eq!(v.event().await["reason"], "Ready");
        v
    })
    .await;
    assert_eq!(res.unwrap(), Action::requeue(RESYNC));
    let issued = |kind| {
        ctx.metrics
            .certificates_issued
            .with_label_values(&[kind, "new"])
            .get()
    };
    assert_eq!((issued("collector"), issued("redis")), (1, 1));
}

#[tokio::test]
async fn a_bad_tail_sampling_policy_is_reported_and_nothing_is_rolled_out() {
    let (ctx, mut v) = Context::test();
    let mut obj = reconciled(tc("main"), "r1");
    obj.spec.sampling.tail = Some(crate::crd::TailSamplingSpec {
        policies: "policies:\n  - {name: slow, type: latency, latency: {threshold_ms: -1}}\n"
            .to_owned(),
        decision_wait: None,
        max_pending_traces: None,
        decision_cache_size: None,
    });
    let before = obj.clone();
    let server = tokio::spawn(async move {
        // No child is applied: the first request is the Event.
        let ev = v.event().await;
        assert_eq!(ev["type"], "Warning");
        assert_eq!(ev["reason"], "InvalidSpec");
        let status = v.status(&before).await;
        let degraded = condition(&status, "Degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "InvalidSpec")
        );
        assert!(
            degraded
                .message
                .contains("spec.sampling.tail.policies: policy `slow` (line 2)"),
            "{degraded:?}"
        );
        v
    });
    let err = run(obj, ctx.clone()).await.unwrap_err();
    server.await.unwrap().assert_silent();
    assert_eq!(err.metric_label(), "invalid");
}
