#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The TraceCollector CRD's CEL validation rules (`x-kubernetes-validations`),
//! evaluated by a real CEL engine (cel-rust) the way the API server does:
//! schema defaults applied first, then each rule with `self` bound to the
//! object at the rule's place in the schema, when that object is present.
//! Transition rules (those using `oldSelf`) run only on updates, with
//! `oldSelf` bound to the stored object at the same place.
//!
//! This machine has no API server; the kind suite applies the same CRs to a
//! real one where Docker is available.

use clew_operator::crd::TraceCollector;
use kube::CustomResourceExt;
use serde_json::{Value, json};

/// The CRD's `openAPIV3Schema`.
fn schema() -> Value {
    let crd = TraceCollector::crd();
    let v = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
    v["openAPIV3Schema"].clone()
}

/// Fills absent properties that have a `default`, recursively (what the API
/// server does before validation).
fn apply_defaults(schema: &Value, obj: &mut Value) {
    let (Some(props), Some(map)) = (schema["properties"].as_object(), obj.as_object_mut()) else {
        return;
    };
    for (name, sub) in props {
        if !map.contains_key(name)
            && let Some(d) = sub.get("default")
        {
            map.insert(name.clone(), d.clone());
        }
        if let Some(child) = map.get_mut(name) {
            apply_defaults(sub, child);
        }
    }
}

/// Every rule of `schema` that applies to `obj` (and to `old`, the stored
/// object at the same place, on an update), with its message, evaluated:
/// the messages of the rules that do not hold.
fn violations(
    schema: &Value,
    obj: &Value,
    old: Option<&Value>,
    rules_seen: &mut Vec<String>,
) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(rules) = schema["x-kubernetes-validations"].as_array() {
        for r in rules {
            let rule = r["rule"].as_str().unwrap();
            let transition = rule.contains("oldSelf");
            if transition && old.is_none() {
                continue;
            }
            rules_seen.push(rule.to_string());
            let program = cel::Program::compile(rule)
                .unwrap_or_else(|e| panic!("rule {rule:?} does not compile: {e:?}"));
            let mut ctx = cel::Context::default();
            ctx.add_variable_from_value("self", cel::to_value(obj).unwrap());
            if let Some(old) = old {
                ctx.add_variable_from_value("oldSelf", cel::to_value(old).unwrap());
            }
            match program.execute(&ctx) {
                Ok(cel::Value::Bool(true)) => {}
                Ok(cel::Value::Bool(false)) => {
                    out.push(r["message"].as_str().unwrap().to_string());
                }
                other => panic!("rule {rule:?} on {obj} gave {other:?}, not a bool"),
            }
        }
    }
    if let (Some(props), Some(map)) = (schema["properties"].as_object(), obj.as_object()) {
        for (name, sub) in props {
            if let Some(child) = map.get(name) {
                let old_child = old.and_then(|o| o.get(name));
                out.extend(violations(sub, child, old_child, rules_seen));
            }
        }
    }
    out
}

/// `spec` as the API server stores it: in a TraceCollector, defaulted.
fn defaulted(schema: &Value, spec: Value) -> Value {
    let mut obj = json!({
        "apiVersion": "clew.dev/v1alpha1",
        "kind": "TraceCollector",
        "metadata": {"name": "main", "namespace": "shop"},
        "spec": spec,
    });
    apply_defaults(schema, &mut obj);
    obj
}

/// What the API server would say about creating `spec`.
fn check(spec: Value) -> Vec<String> {
    let schema = schema();
    let obj = defaulted(&schema, spec);
    violations(&schema, &obj, None, &mut Vec::new())
}

/// What the API server would say about changing `old` into `new`.
fn check_update(old: Value, new: Value) -> Vec<String> {
    let schema = schema();
    let (old, new) = (defaulted(&schema, old), defaulted(&schema, new));
    violations(&schema, &new, Some(&old), &mut Vec::new())
}

#[test]
fn valid_collectors_pass_every_rule() {
    for spec in [
        json!({}),
        json!({"replicas": 3, "storage": {"redis": {"managed": {"size": "2Gi"}}}}),
        json!({
            "storage": {"redis": {"external": {"secretName": "redis-url"}}},
            "autoscaler": {"minReplicas": 2, "maxReplicas": 2},
            "sidecar": {"bufferBytes": 1048576, "spillMaxBytes": 1048576},
        }),
        json!({"autoscaler": {"minReplicas": 1, "maxReplicas": 10}}),
        json!({"replication": {"factor": 3, "minCopies": 2, "takeoverAfter": "1m"}}),
        json!({"replication": {"factor": 1}, "wal": {"persistent": true, "size": "20Gi"}}),
        // minCopies against the defaulted factor of 2.
        json!({"replication": {"minCopies": 2}}),
        json!({"tls": {"enabled": true}}),
        json!({"tls": {"enabled": true, "clientAuth": false}}),
        // Your own certificate: mTLS off, by default or explicitly.
        json!({"tls": {"enabled": true, "secretName": "clew-tls"}}),
        json!({"tls": {"enabled": true, "secretName": "clew-tls", "clientAuth": false}}),
        json!({"storage": {"redis": {"external": {"secretName": "redis-url",
            "tls": {"caSecretName": "redis-ca", "clientCertSecretName": "redis-client"},
            "username": "clew", "passwordSecret": {"name": "redis-auth"}}}}}),
        // A cold tier on one node's volume with one collector, on a shared volume with many,
        // on a claim of yours, and in S3.
        json!({"replicas": 1, "storage": {"cold": {"filesystem": {}}}}),
        json!({"autoscaler": {"minReplicas": 1, "maxReplicas": 1},
               "storage": {"cold": {"filesystem": {"size": "1Ti"}}}}),
        json!({"replicas": 3, "storage": {"cold": {"filesystem": {
            "accessModes": ["ReadWriteMany"], "storageClassName": "nfs"}}}}),
        json!({"replicas": 3, "storage": {"cold": {"filesystem": {"existingClaim": "nfs-blocks"}}}}),
        json!({"storage": {"cold": {"s3": {"bucket": "traces"}}}}),
        json!({"storage": {"cold": {"s3": {"bucket": "traces", "prefix": "prod/eu",
            "endpoint": "http://minio.storage.svc:9000", "region": "eu-west-1",
            "credentialsSecret": {"name": "s3-creds"}, "caSecret": {"name": "minio-ca"}},
            "hotRetention": "30m", "hotMaxBytes": 1073741824, "retention": "30d"}}}),
        // Redis Clusters: managed (waiting for its one replica per shard), and external
        // (waiting for as many replicas as it has).
        json!({"storage": {"redis": {"managed": {"cluster": {"shards": 3}}}}}),
        json!({"storage": {"redis": {"managed": {"size": "5Gi", "cluster": {"shards": 12}},
            "waitReplicas": 1}}, "tls": {"enabled": true}}),
        json!({"storage": {"redis": {"external": {"secretName": "seeds", "cluster": true},
            "waitReplicas": 2}}}),
        json!({"storage": {"redis": {"external": {"secretName": "redis-url"}, "waitReplicas": 1}}}),
    ] {
        assert_eq!(check(spec.clone()), Vec::<String>::new(), "{spec}");
    }
}

#[test]
fn invalid_collectors_get_the_rule_message() {
    let cases = [
        (
            json!({"storage": {"redis": {
                "managed": {"size": "1Gi"},
                "external": {"secretName": "redis-url"},
            }}}),
            "set only one of spec.storage.redis.managed and spec.storage.redis.external",
        ),
        (
            json!({"autoscaler": {"minReplicas": 5, "maxReplicas": 2}}),
            "spec.autoscaler.maxReplicas must be at least spec.autoscaler.minReplicas",
        ),
        (
            json!({"sidecar": {"bufferBytes": 4096, "spillMaxBytes": 1024}}),
            "spec.sidecar.spillMaxBytes must be at least spec.sidecar.bufferBytes",
        ),
        // Only the spill cap is set: the rule sees the defaulted 8 MiB buffer.
        (
            json!({"sidecar": {"spillMaxBytes": 1024}}),
            "spec.sidecar.spillMaxBytes must be at least spec.sidecar.bufferBytes",
        ),
        (
            json!({"replication": {"factor": 2, "minCopies": 3}}),
            "spec.replication.minCopies must be at most spec.replication.factor",
        ),
        // Against the defaulted factor of 2.
        (
            json!({"replication": {"minCopies": 4}}),
            "spec.replication.minCopies must be at most spec.replication.factor",
        ),
        (
            json!({"tls": {"enabled": true, "secretName": "clew-tls", "clientAuth": true}}),
            "spec.tls.clientAuth needs certificates the operator issues: unset it (or set false) with spec.tls.secretName",
        ),
    ];
    for (spec, message) in cases
        .into_iter()
        .chain(cold_cases())
        .chain(redis_cluster_cases())
    {
        assert_eq!(check(spec.clone()), vec![message.to_string()], "{spec}");
    }
}

const NO_REPLICAS: &str = "spec.storage.redis.waitReplicas needs replicas to wait for: a managed Redis without managed.cluster has none";
const ONE_REPLICA: &str = "spec.storage.redis.waitReplicas can be at most 1 with managed.cluster: each shard has one replica";

/// Redis Clusters and `waitReplicas` the API server refuses, each with the one message it gives.
fn redis_cluster_cases() -> Vec<(Value, &'static str)> {
    let redis = |r: Value| json!({"storage": {"redis": r}});
    vec![
        (
            redis(json!({"managed": {"cluster": {"shards": 2}}})),
            "spec.storage.redis.managed.cluster.shards must be at least 3: a Redis Cluster fails a master over only with the votes of a majority of at least three masters",
        ),
        (
            redis(json!({"managed": {"cluster": {"shards": 3}},
                         "external": {"secretName": "seeds", "cluster": true}})),
            "set only one of spec.storage.redis.managed and spec.storage.redis.external",
        ),
        // A single managed Redis, explicit or by default, has no replica to wait for.
        (
            redis(json!({"managed": {}, "waitReplicas": 1})),
            NO_REPLICAS,
        ),
        (redis(json!({"waitReplicas": 1})), NO_REPLICAS),
        (
            redis(json!({"managed": {"cluster": {"shards": 3}}, "waitReplicas": 2})),
            ONE_REPLICA,
        ),
    ]
}

const COLD_SHARED: &str = "spec.storage.cold.filesystem with more than one collector (spec.replicas, or spec.autoscaler.maxReplicas) needs ReadWriteMany in accessModes: every collector reads and writes the same cold blocks";

/// Cold tiers the API server refuses, each with the one message it gives.
fn cold_cases() -> Vec<(Value, &'static str)> {
    let cold = |c: Value| json!({"storage": {"cold": c}});
    let one_of = "spec.storage.cold needs exactly one of filesystem and s3";
    vec![
        (cold(json!({})), one_of),
        (cold(json!({"hotRetention": "2h"})), one_of),
        (
            json!({"replicas": 1, "storage": {"cold": {"filesystem": {}, "s3": {"bucket": "traces"}}}}),
            one_of,
        ),
        // The default two collectors on the default ReadWriteOnce volume.
        (cold(json!({"filesystem": {}})), COLD_SHARED),
        (
            json!({"replicas": 1, "autoscaler": {"minReplicas": 1, "maxReplicas": 3},
                   "storage": {"cold": {"filesystem": {"accessModes": ["ReadWriteOnce"]}}}}),
            COLD_SHARED,
        ),
        (
            cold(json!({"s3": {"bucket": "traces/prod"}})),
            "spec.storage.cold.s3.bucket is a bucket name without '/': put a path in spec.storage.cold.s3.prefix",
        ),
        (
            cold(json!({"s3": {"bucket": "traces", "endpoint": "minio:9000"}})),
            "spec.storage.cold.s3.endpoint must be an http:// or https:// URL, such as https://minio.storage.svc:9000",
        ),
    ]
}

const COLD_IMMUTABLE: &str = "spec.storage.cold.filesystem.storageClassName and accessModes cannot change once the claim exists (a PersistentVolumeClaim's class and access modes are immutable); to move the blocks to another volume, create it yourself and name it in existingClaim";

#[test]
fn a_cold_claim_keeps_its_class_and_access_modes() {
    let fs = |f: Value| json!({"replicas": 1, "storage": {"cold": {"filesystem": f}}});
    let ok = [
        // Growing, and other cold settings.
        (fs(json!({"size": "10Gi"})), fs(json!({"size": "20Gi"}))),
        (
            fs(json!({"storageClassName": "nfs"})),
            json!({"replicas": 1, "storage": {"cold": {"filesystem": {"storageClassName": "nfs"},
                   "retention": "60d"}}}),
        ),
        // Moving to a claim of yours, or from one.
        (
            fs(json!({"storageClassName": "nfs"})),
            fs(json!({"existingClaim": "new-blocks"})),
        ),
        (
            fs(json!({"existingClaim": "old-blocks"})),
            fs(json!({"storageClassName": "fast"})),
        ),
        // From S3, or none, to a volume.
        (
            json!({"storage": {"cold": {"s3": {"bucket": "traces"}}}}),
            fs(json!({"storageClassName": "fast"})),
        ),
        (json!({}), fs(json!({}))),
    ];
    for (old, new) in ok {
        assert_eq!(
            check_update(old.clone(), new.clone()),
            Vec::<String>::new(),
            "{old} -> {new}"
        );
    }
    let bad = [
        (fs(json!({})), fs(json!({"storageClassName": "nfs"}))),
        (
            fs(json!({"storageClassName": "nfs"})),
            fs(json!({"storageClassName": "fast"})),
        ),
        (fs(json!({})), fs(json!({"accessModes": ["ReadWriteMany"]}))),
    ];
    for (old, new) in bad {
        assert_eq!(
            check_update(old.clone(), new.clone()),
            vec![COLD_IMMUTABLE.to_string()],
            "{old} -> {new}"
        );
    }
}

const SHARDS_FIXED: &str = "spec.storage.redis.managed.cluster.shards cannot change: the operator does not move slots between shards (resharding)";
const CLUSTER_FIXED: &str = "spec.storage.redis.managed.cluster cannot be added or removed: a single Redis and a Redis Cluster lay out their data differently and the operator moves none from one to the other; use a new TraceCollector, or move to an external Redis first";

#[test]
fn a_managed_cluster_keeps_its_shards_and_stays_a_cluster() {
    let redis = |r: Value| json!({"storage": {"redis": r}});
    let cluster = |shards: i32| redis(json!({"managed": {"cluster": {"shards": shards}}}));
    let external = redis(json!({"external": {"secretName": "seeds", "cluster": true}}));
    let ok = [
        // Other settings of the cluster change freely.
        (
            cluster(3),
            redis(
                json!({"managed": {"cluster": {"shards": 3}, "image": "redis:7.4"},
                         "waitReplicas": 1}),
            ),
        ),
        // To an external Redis and back: the managed data goes with its StatefulSet either way.
        (cluster(3), external.clone()),
        (external.clone(), cluster(6)),
        (redis(json!({"managed": {}})), external),
    ];
    for (old, new) in ok {
        assert_eq!(
            check_update(old.clone(), new.clone()),
            Vec::<String>::new(),
            "{old} -> {new}"
        );
    }
    let bad = [
        (cluster(3), cluster(4), SHARDS_FIXED),
        (cluster(6), cluster(3), SHARDS_FIXED),
        // A single managed Redis, explicit or by default, to a cluster, and back.
        (redis(json!({"managed": {}})), cluster(3), CLUSTER_FIXED),
        (json!({}), cluster(3), CLUSTER_FIXED),
        (
            cluster(3),
            redis(json!({"managed": {"size": "2Gi"}})),
            CLUSTER_FIXED,
        ),
    ];
    for (old, new, message) in bad {
        assert_eq!(
            check_update(old.clone(), new.clone()),
            vec![message.to_string()],
            "{old} -> {new}"
        );
    }
}

const WAL_IMMUTABLE: &str = "spec.wal.size and spec.wal.storageClass cannot change while spec.wal.persistent stays true (volume claim templates are immutable); set persistent to false, then back to true with the new values";

#[test]
fn persistent_volumes_keep_their_size_and_class() {
    let persistent = |wal: Value| json!({"wal": wal});
    let ok = [
        // Turning persistence on or off may come with any size.
        (
            json!({}),
            persistent(json!({"persistent": true, "size": "5Gi"})),
        ),
        (
            persistent(json!({"persistent": true, "size": "5Gi"})),
            persistent(json!({"persistent": false, "size": "50Gi"})),
        ),
        // Without persistence nothing is claimed yet.
        (
            persistent(json!({"size": "5Gi"})),
            persistent(json!({"size": "50Gi", "storageClass": "fast"})),
        ),
        // Unchanged volumes, other fields changed.
        (
            persistent(json!({"persistent": true, "storageClass": "fast"})),
            json!({"replicas": 4, "wal": {"persistent": true, "storageClass": "fast"}}),
        ),
    ];
    for (old, new) in ok {
        assert_eq!(
            check_update(old.clone(), new.clone()),
            Vec::<String>::new(),
            "{old} -> {new}"
        );
    }
    let bad = [
        (
            persistent(json!({"persistent": true})),
            persistent(json!({"persistent": true, "size": "20Gi"})),
        ),
        (
            persistent(json!({"persistent": true})),
            persistent(json!({"persistent": true, "storageClass": "fast"})),
        ),
        (
            persistent(json!({"persistent": true, "storageClass": "fast"})),
            persistent(json!({"persistent": true, "storageClass": "slow"})),
        ),
    ];
    for (old, new) in bad {
        assert_eq!(
            check_update(old.clone(), new.clone()),
            vec![WAL_IMMUTABLE.to_string()],
            "{old} -> {new}"
        );
    }
}

#[test]
fn every_rule_in_the_crd_is_exercised() {
    // All rules are reached by an update of a spec that sets every guarded object.
    // (The cold tier is a volume or a bucket, so two specs reach its rules.)
    let schema = schema();
    let mut seen = Vec::new();
    for cold in [
        json!({"filesystem": {}}),
        json!({"s3": {"bucket": "traces", "endpoint": "https://s3.local"}}),
    ] {
        let spec = json!({
            "storage": {"redis": {"managed": {"cluster": {"shards": 3}}}, "cold": cold},
            "autoscaler": {"minReplicas": 1, "maxReplicas": 1},
            "tls": {"enabled": true},
        });
        let (old, new) = (defaulted(&schema, spec.clone()), defaulted(&schema, spec));
        assert!(violations(&schema, &new, Some(&old), &mut seen).is_empty());
    }
    seen.sort();
    seen.dedup();
    let text = schema.to_string();
    let total = text.matches("\"rule\"").count();
    assert_eq!(seen.len(), 16, "rules evaluated: {seen:?}");
    assert_eq!(total, 16, "a rule was added: give it cases above");
}
