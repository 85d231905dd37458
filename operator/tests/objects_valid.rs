#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Everything the operator writes into a cluster — the children of several TraceCollectors
//! (collectors as a Deployment and as a StatefulSet) and injected pods — validated strictly
//! (unknown fields fail) against the Kubernetes 1.29–1.33 schemas. k8s-openapi's types are 1.37's, so this catches a field older clusters lack.

use std::path::Path;
use std::process::Command;

use clew_operator::crd::{
    AutoscalerSpec, ExternalRedis, ServiceType, TraceCollector, TraceCollectorSpec,
};
use clew_operator::desired::{self, CollectorWorkload, Defaults};
use clew_operator::{certs, inject, tls};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

fn collector(spec: Value) -> TraceCollector {
    let spec: TraceCollectorSpec = serde_json::from_value(spec).unwrap();
    let mut tc = TraceCollector::new("main", spec);
    tc.metadata.namespace = Some("shop".into());
    tc.metadata.uid = Some("5f3c0a6e-0000-4000-8000-000000000001".into());
    tc
}

fn children(tc: &TraceCollector, d: &Defaults) -> Vec<Value> {
    let v = |o: &dyn erased::Ser| o.value();
    let mut out = vec![
        v(&desired::desired_config_map(tc)),
        match desired::desired_collectors(tc, d) {
            CollectorWorkload::Deployment(o) => v(&o),
            CollectorWorkload::StatefulSet(o) => v(&o),
        },
        v(&desired::desired_service(tc)),
        v(&desired::desired_headless_service(tc)),
    ];
    out.extend(desired::desired_pdb(tc).map(|o| v(&o)));
    out.extend(desired::desired_hpa(tc).map(|o| v(&o)));
    out.extend(desired::desired_redis(tc).map(|o| v(&o)));
    out.extend(desired::desired_redis_service(tc).map(|o| v(&o)));
    out.extend(desired::redis_cluster::desired_bootstrap_job(tc).map(|o| v(&o)));
    out.extend(desired::desired_visualizer(tc, d).map(|o| v(&o)));
    out.extend(desired::desired_visualizer_service(tc).map(|o| v(&o)));
    out.extend(desired::cold::desired_claim(tc).map(|o| v(&o)));
    out
}

/// The Secrets the operator writes for a TraceCollector with `spec.tls`.
fn secrets(tc: &TraceCollector) -> Vec<Value> {
    let now = time::OffsetDateTime::now_utc();
    let day = std::time::Duration::from_secs(86400);
    let cfg = certs::CertConfig {
        namespace: "clew-system".into(),
        service: "clew-operator-webhook".into(),
        secret: "clew-operator-webhook-tls".into(),
        webhook_configuration: "clew-operator".into(),
        validity: 365 * day,
        renew_before: 30 * day,
    };
    let bundle = certs::generate(&cfg.service, &cfg.namespace, now, cfg.validity).unwrap();
    let ca_secret = certs::secret_for(&cfg, &bundle, None);
    let ca = certs::Authority::from_secret(&ca_secret).unwrap();
    let mut out = vec![serde_json::to_value(&ca_secret).unwrap()];
    let wanted = [
        tls::wanted_collector(tc).unwrap(),
        tls::wanted_redis(tc).unwrap(),
        tls::wanted_sidecar(tc, "shop").unwrap(),
    ];
    for w in wanted {
        let issued = ca
            .issue(&w.common_name, &w.dns_names, w.kind.usage(), now, 365 * day)
            .unwrap();
        out.push(
            serde_json::to_value(tls::secret_for(&w, &ca.bundle, Some(&issued), false)).unwrap(),
        );
    }
    out.push(serde_json::to_value(tls::redis_auth_secret(tc, "not-a-real-password")).unwrap());
    for o in &mut out {
        o["apiVersion"] = json!("v1");
        o["kind"] = json!("Secret");
    }
    out
}

fn kinds_of_now(objects: &[Value], kind: &str) -> usize {
    objects.iter().filter(|o| o["kind"] == kind).count()
}

mod erased {
    /// Serializes any k8s-openapi object (they all carry apiVersion and kind).
    pub trait Ser {
        fn value(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Ser for T {
        fn value(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap()
        }
    }
}

#[test]
fn operator_output_is_valid_for_kubernetes_1_29_to_1_33() {
    let d = Defaults {
        image: "ghcr.io/clew-dev/clew:test".into(),
    };
    let default = collector(json!({}));
    let mut custom = collector(json!({"imagePullPolicy": "Always", "retention": "24h",
        "resources": {"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}}));
    custom.spec.autoscaler = Some(AutoscalerSpec {
        min_replicas: 2,
        max_replicas: 5,
        target_cpu_utilization: 70,
    });
    custom.spec.storage.redis.external = Some(ExternalRedis::new("redis"));
    custom.spec.visualizer.service_type = ServiceType::LoadBalancer;
    // Collectors with persistent volumes, replication settings and an autoscaler.
    let persistent = collector(json!({
        "wal": {"persistent": true, "size": "20Gi", "storageClass": "fast"},
        "replication": {"factor": 3, "minCopies": 2, "takeoverAfter": "1m"},
        "autoscaler": {"minReplicas": 3, "maxReplicas": 6},
    }));
    // TLS everywhere: issued certificates, managed Redis TLS-only with a password.
    let tls = collector(json!({"tls": {"enabled": true}}));
    // Your own certificate, and an external Redis over TLS with a user and a password file.
    let tls_external = collector(json!({
        "tls": {"enabled": true, "secretName": "clew-cert-manager"},
        "wal": {"persistent": true},
        "storage": {"redis": {"external": {"secretName": "redis-url",
            "tls": {"caSecretName": "redis-ca", "clientCertSecretName": "redis-client"},
            "username": "clew", "passwordSecret": {"name": "redis-auth", "key": "pw"}}}},
    }));
    // The cold tier: on a volume the operator claims (one collector, ReadWriteOnce: the
    // Deployment recreates), on a shared volume under a StatefulSet, and in S3 with the key
    // from a Secret and a private CA.
    let cold_rwo = collector(json!({"replicas": 1, "storage": {"cold": {
        "filesystem": {"size": "100Gi", "storageClassName": "standard"},
        "hotRetention": "2h", "retention": "30d"}}}));
    let cold_rwx = collector(json!({"wal": {"persistent": true}, "storage": {"cold": {
        "filesystem": {"accessModes": ["ReadWriteMany"]}, "interval": "1m"}}}));
    let cold_s3 = collector(json!({"tls": {"enabled": true}, "storage": {"cold": {
        "s3": {"bucket": "traces", "prefix": "clew", "endpoint": "https://minio:9000",
               "credentialsSecret": {"name": "s3"}, "caSecret": {"name": "minio-ca"}},
        "hotMaxBytes": 1073741824}}}));
    let mut objects = children(&default, &d);
    for tc in [&cold_rwo, &cold_rwx, &cold_s3] {
        objects.extend(children(tc, &d));
    }
    let kinds_of = |kind: &str| objects.iter().filter(|o| o["kind"] == kind).count();
    assert_eq!(kinds_of("PersistentVolumeClaim"), 2);
    assert!(
        objects
            .iter()
            .any(|o| o["kind"] == "Deployment"
                && o["spec"]["strategy"] == json!({"type": "Recreate"}))
    );
    objects.extend(children(&custom, &d));
    objects.extend(children(&persistent, &d));
    objects.extend(children(&tls, &d));
    objects.extend(children(&tls_external, &d));
    objects.extend(secrets(&tls));
    // Redis Clusters: managed (with its bootstrap Job), managed with TLS under collectors in a
    // StatefulSet (and its certificate naming every pod), and external.
    let cluster = collector(json!({"storage": {"redis": {
        "managed": {"cluster": {"shards": 3}}, "waitReplicas": 1}}}));
    let cluster_tls = collector(
        json!({"tls": {"enabled": true}, "wal": {"persistent": true},
        "storage": {"redis": {"managed": {"size": "5Gi", "cluster": {"shards": 4}}}}}),
    );
    let external_cluster = collector(json!({"storage": {"redis": {
        "external": {"secretName": "redis-seeds", "cluster": true}, "waitReplicas": 1}}}));
    for tc in [&cluster, &cluster_tls, &external_cluster] {
        objects.extend(children(tc, &d));
    }
    objects.extend(secrets(&cluster_tls));
    assert_eq!(kinds_of_now(&objects, "Job"), 2);
    assert!(objects.iter().any(|o| o["kind"] == "StatefulSet"
        && o["metadata"]["name"] == "main-collector"
        && o["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "fast"));

    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "app", "namespace": "shop", "annotations": {"sidecar.clew.dev/inject": "true"}},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]}
    }))
    .unwrap();
    // Native sidecars are only used on 1.29+, which is every version validated here.
    objects.push(serde_json::to_value(inject::inject(&pod, &default, &d, true)).unwrap());
    objects.push(serde_json::to_value(inject::inject(&pod, &custom, &d, false)).unwrap());
    objects.push(serde_json::to_value(inject::inject(&pod, &tls, &d, true)).unwrap());
    objects.push(serde_json::to_value(inject::inject(&pod, &tls_external, &d, false)).unwrap());
    objects.push(serde_json::to_value(inject::annotate_skip(&pod, "no TraceCollector")).unwrap());

    let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join("clew-operator-objects.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&objects).unwrap()).unwrap();
    let python = std::env::var("CLEW_PYTHON")
        .expect("CLEW_PYTHON must name a python with kubernetes-validate (run scripts/test.sh)");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/chart/validate_chart.py");
    let out = Command::new(&python)
        .arg(script)
        .arg("--objects")
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}");
    assert!(
        stdout.contains(&format!("objects: {} ", objects.len())),
        "{stdout}"
    );
}
