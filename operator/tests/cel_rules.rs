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
    for (spec, message) in cases {
        assert_eq!(check(spec.clone()), vec![message.to_string()], "{spec}");
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
    let schema = schema();
    let spec = json!({
        "storage": {"redis": {"managed": {}}},
        "autoscaler": {"minReplicas": 1, "maxReplicas": 1},
        "tls": {"enabled": true},
    });
    let (old, new) = (defaulted(&schema, spec.clone()), defaulted(&schema, spec));
    let mut seen = Vec::new();
    assert!(violations(&schema, &new, Some(&old), &mut seen).is_empty());
    let text = schema.to_string();
    let total = text.matches("x-kubernetes-validations").count();
    assert_eq!(seen.len(), 6, "rules evaluated: {seen:?}");
    assert_eq!(total, 6, "a rule was added: give it cases above");
}
