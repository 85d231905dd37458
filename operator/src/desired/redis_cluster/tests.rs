//! The managed Redis Cluster's objects and an external cluster's settings, as plain functions.
//! `operator/tests/redis_cluster.rs` runs the same commands as real Redis processes.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Container, PodSpec};

use super::super::{
    CollectorWorkload, desired_collectors, desired_config_map, desired_redis,
    desired_redis_service, selector_labels,
};
use super::*;
use crate::crd::{ExternalRedis, ManagedRedis, ManagedRedisCluster};
use crate::fixtures::{defaults, tc};

fn cluster_tc(shards: i32) -> TraceCollector {
    let mut t = tc("main");
    t.spec.storage.redis.managed = Some(ManagedRedis {
        cluster: Some(ManagedRedisCluster { shards }),
        ..ManagedRedis::default()
    });
    t
}

fn redis_pod(sts: &StatefulSet) -> PodSpec {
    sts.spec.template.spec.clone().unwrap()
}

/// Arguments as `--flag value` pairs, so a test asks for a flag's value, not for a substring.
fn flags(c: &Container) -> BTreeMap<String, String> {
    let args = c.args.clone().unwrap_or_default();
    args.chunks(2)
        .map(|p| (p[0].clone(), p.get(1).cloned().unwrap_or_default()))
        .collect()
}

/// What the collector container sees: its ConfigMap overridden by its own `env` (values, or
/// the Secret a value comes from), for the Deployment and the StatefulSet alike.
fn collector_env(t: &TraceCollector) -> BTreeMap<String, String> {
    let pod = match desired_collectors(t, &defaults()) {
        CollectorWorkload::Deployment(d) => d.spec.template.spec.unwrap(),
        CollectorWorkload::StatefulSet(s) => s.spec.template.spec.unwrap(),
    };
    let mut out = desired_config_map(t).data.unwrap();
    for e in pod.containers[0].env.iter().flatten() {
        let v = match (&e.value, &e.value_from) {
            (Some(v), _) => v.clone(),
            (None, Some(src)) => {
                let s = src.secret_key_ref.as_ref();
                s.map_or_else(String::new, |s| format!("secret:{}/{}", s.name, s.key))
            }
            (None, None) => String::new(),
        };
        out.insert(e.name.clone(), v);
    }
    out
}

#[test]
fn an_external_cluster_tells_the_collectors_and_its_seed_list_stays_in_the_secret() {
    for persistent in [false, true] {
        let mut t = tc("main");
        t.spec.wal.persistent = persistent;
        t.spec.storage.redis.external = Some(ExternalRedis {
            cluster: true,
            ..ExternalRedis::new("redis-seeds")
        });
        t.spec.storage.redis.wait_replicas = 1;
        let env = collector_env(&t);
        assert_eq!(env["CLEW_REDIS_CLUSTER"], "true");
        assert_eq!(env["CLEW_REDIS_WAIT_REPLICAS"], "1");
        // The comma-separated seeds are the Secret's value, passed by reference.
        assert_eq!(env["CLEW_REDIS_URL"], "secret:redis-seeds/url");
        assert!(
            !desired_config_map(&t)
                .data
                .unwrap()
                .contains_key("CLEW_REDIS_URL")
        );
        assert!(desired_bootstrap_job(&t).is_none());
        assert!(desired_redis(&t).is_none());
    }
    // Neither set: the collector's defaults (no cluster, no WAIT) by omission.
    let env = collector_env(&tc("main"));
    assert!(!env.contains_key("CLEW_REDIS_CLUSTER"));
    assert!(!env.contains_key("CLEW_REDIS_WAIT_REPLICAS"));
    let mut single = tc("main");
    single.spec.storage.redis.external = Some(ExternalRedis::new("redis-url"));
    assert!(!collector_env(&single).contains_key("CLEW_REDIS_CLUSTER"));
}

#[test]
fn a_managed_cluster_is_two_pods_per_shard_each_a_cluster_node_on_its_own_volume() {
    let t = cluster_tc(3);
    let sts = desired_redis(&t).unwrap();
    assert_eq!(sts.spec.replicas, Some(6));
    let spec = &sts.spec;
    assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
    assert_eq!(spec.service_name.as_deref(), Some("main-redis"));
    assert_eq!(spec.volume_claim_templates.as_ref().unwrap().len(), 1);
    let pod = redis_pod(&sts);
    let c = &pod.containers[0];
    let f = flags(c);
    assert_eq!(f["--cluster-enabled"], "yes");
    // Beside the AOF, on the pod's volume: a re-created pod is the same node.
    assert_eq!(f["--cluster-config-file"], "/data/nodes.conf");
    assert_eq!(f["--dir"], "/data");
    assert_eq!(f["--appendonly"], "yes");
    assert_eq!(
        f["--cluster-announce-hostname"],
        "$(POD_NAME).main-redis.traces.svc"
    );
    assert_eq!(f["--cluster-preferred-endpoint-type"], "hostname");
    assert_eq!(f["--protected-mode"], "no");
    assert!(!f.contains_key("--tls-cluster"));
    // `$(POD_NAME)` is the pod's own name, from the downward API.
    let pod_name = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "POD_NAME")
        .unwrap();
    let field = pod_name
        .value_from
        .as_ref()
        .unwrap()
        .field_ref
        .as_ref()
        .unwrap();
    assert_eq!(field.field_path, "metadata.name");
    let ports: Vec<i32> = c.ports.iter().flatten().map(|p| p.container_port).collect();
    assert_eq!(ports, [6379, 16379]);
    let command = c.command.clone().unwrap();
    assert_eq!(&command[..2], ["sh", "-c"]);
    assert!(
        command[2].ends_with("exec redis-server \"$@\"\n"),
        "{}",
        command[2]
    );
    // Spread over the Kubernetes nodes.
    let anti = pod.affinity.unwrap().pod_anti_affinity.unwrap();
    let term = &anti
        .preferred_during_scheduling_ignored_during_execution
        .unwrap()[0];
    assert_eq!(
        term.pod_affinity_term.topology_key,
        "kubernetes.io/hostname"
    );
    assert_eq!(
        term.pod_affinity_term
            .label_selector
            .clone()
            .unwrap()
            .match_labels
            .unwrap(),
        selector_labels(&t, Component::Redis)
    );
}

#[test]
fn the_cluster_service_is_headless_and_names_pods_before_they_are_ready() {
    let svc = desired_redis_service(&cluster_tc(3)).unwrap().spec.unwrap();
    assert_eq!(svc.cluster_ip.as_deref(), Some("None"));
    assert_eq!(svc.publish_not_ready_addresses, Some(true));
    let ports: Vec<(String, i32)> = svc
        .ports
        .unwrap()
        .into_iter()
        .map(|p| (p.name.unwrap(), p.port))
        .collect();
    assert_eq!(
        ports,
        [
            ("redis".to_owned(), 6379),
            ("cluster-bus".to_owned(), 16379)
        ]
    );
    // The single Redis's Service is as it was.
    let single = desired_redis_service(&tc("main")).unwrap().spec.unwrap();
    assert_eq!(single.publish_not_ready_addresses, None);
    assert_eq!(single.ports.unwrap().len(), 1);
}

#[test]
fn the_collectors_get_every_pod_as_a_seed_and_the_cluster_flag() {
    let mut t = cluster_tc(4);
    t.spec.storage.redis.wait_replicas = 1;
    let data = desired_config_map(&t).data.unwrap();
    assert_eq!(data["CLEW_REDIS_CLUSTER"], "true");
    assert_eq!(data["CLEW_REDIS_WAIT_REPLICAS"], "1");
    let seeds: Vec<&str> = data["CLEW_REDIS_URL"].split(',').collect();
    let want: Vec<String> = (0..8)
        .map(|i| format!("redis://main-redis-{i}.main-redis.traces.svc:6379"))
        .collect();
    assert_eq!(seeds, want);
}

#[test]
fn the_bootstrap_job_creates_the_cluster_from_every_pod_unless_one_exists() {
    let t = cluster_tc(3);
    let job = desired_bootstrap_job(&t).unwrap();
    assert_eq!(job.metadata.name.as_deref(), Some("main-redis-bootstrap"));
    let spec = job.spec.unwrap();
    let template = spec.template;
    let labels = template.metadata.as_ref().unwrap().labels.clone().unwrap();
    // Not a Redis pod: the Redis Service must never route to it.
    assert_eq!(labels["app.kubernetes.io/component"], "redis-bootstrap");
    let annotations = template.metadata.unwrap().annotations.unwrap();
    assert_eq!(annotations[crate::inject::INJECT_ANNOTATION], "false");
    let pod = template.spec.unwrap();
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("redis:7.4-alpine"));
    let want: Vec<String> = (0..6)
        .map(|i| format!("main-redis-{i}.main-redis.traces.svc:6379"))
        .collect();
    assert_eq!(c.args.clone().unwrap(), want);
    let command = c.command.clone().unwrap();
    assert_eq!(&command[..2], ["sh", "-c"]);
    let script = &command[2];
    let create = script
        .lines()
        .find(|l| l.contains("--cluster create"))
        .unwrap();
    assert!(create.contains("--cluster create $nodes --cluster-replicas 1 --cluster-yes"));
    // The guard: create runs only in the branch where no node serves slots or knows others.
    let guard = script.find("cluster_slots_assigned").unwrap();
    assert!(script.find("cluster_known_nodes").unwrap() < script.find(create).unwrap());
    assert!(guard < script.find(create).unwrap());
    assert!(script.starts_with("tls=''\n"));
    assert!(pod.volumes.is_none());
    // No cluster, no Job.
    assert!(desired_bootstrap_job(&tc("main")).is_none());
}

#[test]
fn a_tls_cluster_runs_its_bus_and_replication_over_tls_as_the_acl_user() {
    let mut t = cluster_tc(3);
    t.spec.tls.enabled = true;
    let sts = desired_redis(&t).unwrap();
    let c = &redis_pod(&sts).containers[0];
    let f = flags(c);
    assert_eq!(f["--port"], "0");
    assert_eq!(f["--tls-port"], "6379");
    assert_eq!(f["--tls-cluster"], "yes");
    assert_eq!(f["--tls-replication"], "yes");
    assert_eq!(f["--tls-cert-file"], "/etc/redis/tls/tls.crt");
    assert_eq!(f["--aclfile"], "/etc/redis/acl/users.acl");
    // Replicas log in to their master as the ACL user; the password only by reference.
    let script = &c.command.as_ref().unwrap()[2];
    assert!(script.contains(
        "exec redis-server - \"$@\" <<EOF\nmasteruser clew\nmasterauth $REDISCLI_AUTH\nEOF\n"
    ));
    let auth = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "REDISCLI_AUTH")
        .unwrap();
    assert_eq!(auth.value, None);
    let secret = auth
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!(
        (secret.name.as_str(), secret.key.as_str()),
        ("main-redis-auth", "password")
    );
    let seeds = &desired_config_map(&t).data.unwrap()["CLEW_REDIS_URL"];
    assert!(
        seeds
            .split(',')
            .all(|s| s.starts_with("rediss://main-redis-")),
        "{seeds}"
    );

    let job = desired_bootstrap_job(&t)
        .unwrap()
        .spec
        .unwrap()
        .template
        .spec
        .unwrap();
    let c = &job.containers[0];
    let script = &c.command.as_ref().unwrap()[2];
    assert!(script.starts_with("tls='--tls --cacert /etc/redis/tls/ca.crt --user clew'\n"));
    assert!(
        c.env
            .iter()
            .flatten()
            .any(|e| e.name == "REDISCLI_AUTH" && e.value.is_none())
    );
    let vol = &job.volumes.unwrap()[0];
    let secret = vol.secret.as_ref().unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("main-redis-tls"));
    // The CA only: the Job needs no key.
    let items: Vec<&str> = secret
        .items
        .iter()
        .flatten()
        .map(|i| i.key.as_str())
        .collect();
    assert_eq!(items, ["ca.crt"]);
}

#[test]
fn the_scripts_leave_nothing_for_the_kubelet_to_expand() {
    // The kubelet replaces `$(NAME)` of a defined variable and `$$` in commands: the scripts'
    // `$(...)` are command substitutions of lowercase commands, and no `$$` appears.
    for script in [
        startup_script(false),
        startup_script(true),
        bootstrap_script(false),
        bootstrap_script(true),
    ] {
        assert!(!script.contains("$$"), "{script}");
        for (i, _) in script.match_indices("$(") {
            let next = script[i + 2..].chars().next().unwrap();
            assert!(next.is_ascii_lowercase(), "{}", &script[i..]);
        }
    }
}
