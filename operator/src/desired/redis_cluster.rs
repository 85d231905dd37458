//! The managed Redis Cluster (`spec.storage.redis.managed.cluster`): the managed Redis's
//! StatefulSet grown to 2 × `shards` pods started with `cluster-enabled`, and the Job that
//! joins them into one cluster, once, with `redis-cli --cluster create`. What a cluster node
//! shares with the single managed Redis (volume, image, probe, TLS, ACL file) stays in
//! [`super`] and [`super::tls`]; this module adds what only a cluster needs.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Container, EnvVar, EnvVarSource, ObjectFieldSelector, PodAffinityTerm,
    PodAntiAffinity, PodSpec, PodTemplateSpec, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::{
    Component, REDIS_PORT, labels, meta, names, pod_security_context, port, pull_policy,
    restricted_security_context, selector_labels, svc_host, tls,
};
use crate::crd::{ManagedRedis, ManagedRedisCluster, TraceCollector};
use crate::tls::REDIS_USER;

/// The cluster bus port, Redis's own rule: the client port + 10000.
pub const CLUSTER_BUS_PORT: i32 = REDIS_PORT + 10_000;
/// Where each node keeps its cluster configuration, on its data volume so it outlives the pod.
pub const NODES_CONF: &str = "/data/nodes.conf";

/// The managed cluster's settings, when Redis is managed and a cluster.
pub fn managed_cluster(tc: &TraceCollector) -> Option<&ManagedRedisCluster> {
    let redis = &tc.spec.storage.redis;
    if redis.external.is_some() {
        return None;
    }
    redis.managed.as_ref()?.cluster.as_ref()
}

/// Pods of the cluster: a master and a replica per shard.
pub fn pod_count(cluster: &ManagedRedisCluster) -> i32 {
    cluster.shards * 2
}

/// Every pod's stable DNS name by ordinal, `<tc>-redis-<i>.<tc>-redis.<ns>.svc`: the headless
/// Service that governs the StatefulSet gives each of its pods one.
pub fn pod_hosts(tc: &TraceCollector, cluster: &ManagedRedisCluster) -> Vec<String> {
    let service = svc_host(tc, &names::redis(tc));
    (0..pod_count(cluster))
        .map(|i| format!("{}-{i}.{service}", names::redis(tc)))
        .collect()
}

/// The collectors' `CLEW_REDIS_URL` for the cluster: every pod as a seed node, comma-separated
/// (`redis://` or, with TLS, `rediss://`).
pub fn seed_urls(tc: &TraceCollector, cluster: &ManagedRedisCluster, scheme: &str) -> String {
    pod_hosts(tc, cluster)
        .iter()
        .map(|host| format!("{scheme}://{host}:{REDIS_PORT}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The Redis arguments only a cluster node has.
///
/// Each node announces its pod's DNS name and redirects clients by it
/// (`cluster-preferred-endpoint-type hostname`) rather than by pod IP: a pod's IP changes
/// whenever the pod is re-created, its name never does; the collectors' seed list is those
/// names; and with TLS the collectors verify Redis's certificate against the name they dial,
/// which the certificate carries (no certificate could carry the IPs of pods to come). The
/// nodes still reach one another by IP on the cluster bus; [`startup_script`] keeps those
/// current. `protected-mode no` is what the official image's entrypoint sets, which the
/// startup script replaces.
pub fn redis_args(tc: &TraceCollector, tls: bool) -> Vec<String> {
    let announce = format!("$(POD_NAME).{}", svc_host(tc, &names::redis(tc)));
    let mut args = vec![
        "--protected-mode",
        "no",
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        NODES_CONF,
        "--cluster-announce-hostname",
        &announce,
        "--cluster-preferred-endpoint-type",
        "hostname",
    ];
    if tls {
        // The cluster bus and replication over TLS too; each node presents its certificate
        // as a client there (the cluster bus requires one).
        args.extend(["--tls-cluster", "yes", "--tls-replication", "yes"]);
    }
    args.into_iter().map(str::to_owned).collect()
}

/// Before Redis starts: nodes.conf remembers each peer by the IP it had, and a pod re-created
/// elsewhere comes back with another. After every pod was re-created at once (a cluster
/// upgrade, a full restart) no node could reach any other. So each peer is looked up by the
/// hostname it announced (the headless Service publishes pods before they are ready), up to
/// 30 s in all for peers not scheduled yet, and its current IP written in; a peer that does not
/// resolve keeps its old one and is found again through the others' gossip.
const REWRITE_NODES_CONF: &str = r#"set -eu
conf=/data/nodes.conf
if [ -s "$conf" ]; then
  awk '
    function resolve(host,   cmd, line, f, ip) {
      if (host !~ /^[A-Za-z0-9.-]+$/) return ""
      while (1) {
        cmd = "getent hosts " host
        ip = ""
        if ((cmd | getline line) > 0) { split(line, f, " "); ip = f[1] }
        close(cmd)
        if (ip != "" || waited >= 30) return ip
        system("sleep 1"); waited++
      }
    }
    NF >= 8 && split($2, a, ",") >= 2 && a[2] != "" {
      ip = resolve(a[2])
      at = index(a[1], "@")
      if (ip != "" && at > 0) {
        port = substr(a[1], 1, at - 1); sub(/.*:/, "", port)
        $2 = ip ":" port substr($2, at)
      }
    }
    { print }
  ' "$conf" > "$conf.new"
  mv "$conf.new" "$conf"
fi
"#;

/// The node's start: [`REWRITE_NODES_CONF`], then Redis with the container's arguments (`$@`).
/// With TLS, replicas log in to their master as the ACL user: `masteruser` and `masterauth`
/// reach Redis on its standard input, so the password is in no argument or file.
pub fn startup_script(tls: bool) -> String {
    let exec = if tls {
        format!(
            "exec redis-server - \"$@\" <<EOF\nmasteruser {REDIS_USER}\nmasterauth $REDISCLI_AUTH\nEOF\n"
        )
    } else {
        "exec redis-server \"$@\"\n".to_owned()
    };
    format!("{REWRITE_NODES_CONF}{exec}")
}

/// The `POD_NAME` the nodes announce their hostname with (`$(POD_NAME)` in the arguments).
fn pod_name_env() -> EnvVar {
    EnvVar {
        name: "POD_NAME".to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.name".to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// Turns the managed Redis container into a cluster node: started through
/// [`startup_script`], with the cluster arguments, the cluster bus port and `POD_NAME`.
pub fn make_node(c: &mut Container, tc: &TraceCollector, tls: bool) {
    c.command = Some(vec![
        "sh".to_owned(),
        "-c".to_owned(),
        startup_script(tls),
        "redis-server".to_owned(),
    ]);
    c.args.get_or_insert_default().extend(redis_args(tc, tls));
    c.ports
        .get_or_insert_default()
        .push(port("cluster-bus", CLUSTER_BUS_PORT));
    c.env.get_or_insert_default().insert(0, pod_name_env());
}

/// Spreads the nodes over Kubernetes nodes where it can, so one lost machine is less likely to
/// take a master and its replica together.
pub fn spread(tc: &TraceCollector) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(LabelSelector {
                            match_labels: Some(selector_labels(tc, Component::Redis)),
                            ..LabelSelector::default()
                        }),
                        topology_key: "kubernetes.io/hostname".to_owned(),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    }
}

/// The bootstrap Job's script; its arguments are every node's `host:port`.
///
/// It waits until every node answers, then creates the cluster only if no node has been part
/// of one yet (none serves a slot or knows another node): re-running the Job, or a Job
/// re-created over a formed cluster, changes nothing. `redis-cli --cluster create` is given
/// IPs, since the `CLUSTER MEET` it sends takes no hostnames. It succeeds once every node
/// reports `cluster_state:ok` and knows every other node.
const BOOTSTRAP: &str = r#"set -eu
cli() { addr=$1; shift; redis-cli $tls -h "${addr%:*}" -p "${addr##*:}" "$@"; }
field() { cli "$1" cluster info | tr -d '\r' | sed -n "s/^$2://p"; }
for addr in "$@"; do
  until [ "$(cli "$addr" ping 2>/dev/null)" = PONG ]; do
    echo "waiting for $addr"; sleep 2
  done
done
formed=
for addr in "$@"; do
  slots=$(field "$addr" cluster_slots_assigned)
  known=$(field "$addr" cluster_known_nodes)
  if [ -z "$slots" ] || [ -z "$known" ]; then echo "no CLUSTER INFO from $addr"; exit 1; fi
  if [ "$slots" != 0 ] || [ "$known" != 1 ]; then formed=$addr; fi
done
if [ -n "$formed" ]; then
  echo "the cluster exists already ($formed serves slots or knows other nodes): not creating it"
else
  nodes=
  for addr in "$@"; do
    ip=$(getent hosts "${addr%:*}" | awk '{ print $1; exit }')
    if [ -z "$ip" ]; then echo "cannot resolve ${addr%:*}"; exit 1; fi
    nodes="$nodes $ip:${addr##*:}"
  done
  redis-cli $tls --cluster create $nodes --cluster-replicas 1 --cluster-yes
fi
for addr in "$@"; do
  until [ "$(field "$addr" cluster_state)" = ok ] && [ "$(field "$addr" cluster_known_nodes)" = $# ]; do
    echo "waiting for $addr to see the whole cluster"; sleep 2
  done
done
echo "the Redis Cluster is formed: $# nodes"
"#;

/// [`BOOTSTRAP`] with `redis-cli`'s connection flags: TLS with Redis's CA and the ACL user
/// (its password from `REDISCLI_AUTH`), or none.
pub fn bootstrap_script(tls: bool) -> String {
    let flags = if tls {
        format!(
            "--tls --cacert {}/{} --user {REDIS_USER}",
            tls::REDIS_SERVER_TLS_DIR,
            crate::certs::CA_KEY
        )
    } else {
        String::new()
    };
    format!("tls='{flags}'\n{BOOTSTRAP}")
}

/// The Job that forms the cluster (managed cluster only). Never injected with a sidecar; it
/// retries a failed `create` a few times and is kept once done, which is how the status knows
/// the cluster was formed.
pub fn desired_bootstrap_job(tc: &TraceCollector) -> Option<Job> {
    let cluster = managed_cluster(tc)?;
    let managed = tc.spec.storage.redis.managed.clone().unwrap_or_default();
    let (container, volumes) = bootstrap_container(tc, &managed, cluster);
    let annotations = BTreeMap::from([(
        crate::inject::INJECT_ANNOTATION.to_owned(),
        "false".to_owned(),
    )]);
    Some(Job {
        metadata: meta(tc, names::redis_bootstrap(tc), Component::RedisBootstrap),
        spec: Some(JobSpec {
            backoff_limit: Some(6),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(tc, Component::RedisBootstrap)),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes,
                    restart_policy: Some("Never".to_owned()),
                    security_context: Some(pod_security_context(999)),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    })
}

/// The bootstrap container: the Redis image's `redis-cli`, every node's address as arguments
/// and, with TLS, Redis's CA and the ACL user's password.
fn bootstrap_container(
    tc: &TraceCollector,
    managed: &ManagedRedis,
    cluster: &ManagedRedisCluster,
) -> (Container, Option<Vec<k8s_openapi::api::core::v1::Volume>>) {
    let with_tls = tls::managed_redis_tls(tc);
    let mut c = Container {
        name: "bootstrap".to_owned(),
        image: Some(managed.image.clone()),
        image_pull_policy: pull_policy(tc),
        command: Some(vec![
            "sh".to_owned(),
            "-c".to_owned(),
            bootstrap_script(with_tls),
            "bootstrap".to_owned(),
        ]),
        args: Some(
            pod_hosts(tc, cluster)
                .into_iter()
                .map(|host| format!("{host}:{REDIS_PORT}"))
                .collect(),
        ),
        security_context: Some(restricted_security_context()),
        ..Container::default()
    };
    if !with_tls {
        return (c, None);
    }
    c.env = Some(tls::redis_probe_env(tc));
    c.volume_mounts = Some(vec![tls::mount("tls", tls::REDIS_SERVER_TLS_DIR)]);
    let ca = [(crate::certs::CA_KEY, crate::certs::CA_KEY)];
    let volume = tls::secret_volume("tls", &names::redis_serving_tls(tc), &ca, 0o440);
    (c, Some(vec![volume]))
}

#[cfg(test)]
mod tests;
