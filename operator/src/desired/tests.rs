use super::*;
use crate::crd::{AutoscalerSpec, ExternalRedis, ManagedRedis, ReplicationSpec, ServiceType};
use crate::fixtures::{UID, defaults, tc};

fn env_of(c: &Container) -> BTreeMap<String, EnvVar> {
    c.env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.clone()))
        .collect()
}

#[test]
fn every_child_is_owned_labelled_and_namespaced() {
    let t = tc("main");
    let d = defaults();
    let metas = [
        desired_config_map(&t).metadata,
        desired_deployment(&t, &d).metadata,
        desired_service(&t).metadata,
        desired_headless_service(&t).metadata,
        desired_pdb(&t).unwrap().metadata,
        desired_redis(&t).unwrap().metadata,
        desired_redis_service(&t).unwrap().metadata,
        desired_visualizer(&t, &d).unwrap().metadata,
        desired_visualizer_service(&t).unwrap().metadata,
    ];
    for m in metas {
        let owner = &m.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.uid, UID);
        assert_eq!(owner.controller, Some(true));
        assert_eq!(m.namespace.as_deref(), Some("traces"));
        let l = m.labels.unwrap();
        assert_eq!(l["app.kubernetes.io/instance"], "main");
        assert_eq!(l["app.kubernetes.io/managed-by"], "clew-operator");
    }
}

#[test]
fn collector_deployment_runs_the_contracted_binary_and_ports() {
    let t = tc("main");
    let dep = desired_deployment(&t, &defaults());
    assert_eq!(dep.spec.replicas, Some(2));
    let pod = dep.spec.template.spec.unwrap();
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("ghcr.io/clew-dev/clew:test"));
    assert_eq!(
        c.command.as_ref().unwrap()[0],
        "/usr/local/bin/clew-collector"
    );
    let ports: Vec<i32> = c.ports.iter().flatten().map(|p| p.container_port).collect();
    assert_eq!(ports, [4317, 4318, 16686, 9464]);
    assert_eq!(
        c.readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/readyz")
    );
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    // Never a sidecar inside the collectors themselves.
    let ann = dep.spec.template.metadata.unwrap().annotations.unwrap();
    assert_eq!(ann[crate::inject::INJECT_ANNOTATION], "false");
    assert_eq!(
        dep.spec.selector.match_labels.unwrap(),
        selector_labels(&t, Component::Collector)
    );
}

#[test]
fn config_map_points_the_collector_at_managed_redis() {
    let t = tc("main");
    let data = desired_config_map(&t).data.unwrap();
    assert_eq!(data["CLEW_STORAGE"], "redis");
    assert_eq!(data["CLEW_REDIS_URL"], "redis://main-redis.traces.svc:6379");
    assert_eq!(data["CLEW_RETENTION"], "72h");
    assert_eq!(data["CLEW_QUERY_ADDR"], "0.0.0.0:16686");
    assert!(!data.contains_key("CLEW_REDIS_PREFIX"));
}

/// The collector container's environment as the collector sees it: the ConfigMap
/// (`envFrom`), overridden by the container's own `env` (values, or the source's debug form).
fn collector_env(t: &TraceCollector, pod: &PodSpec) -> BTreeMap<String, String> {
    let mut out = desired_config_map(t).data.unwrap();
    for e in pod.containers[0].env.iter().flatten() {
        let v = e
            .value
            .clone()
            .unwrap_or_else(|| format!("{:?}", e.value_from));
        out.insert(e.name.clone(), v);
    }
    out
}

#[test]
fn collectors_replicate_over_the_set_the_sidecars_route_to() {
    let t = tc("main");
    let pod = desired_deployment(&t, &defaults())
        .spec
        .template
        .spec
        .unwrap();
    let env = collector_env(&t, &pod);
    // The same name the injected sidecars resolve: placement follows routing.
    assert_eq!(env["CLEW_PEER_DNS"], headless_dns(&t));
    assert_eq!(
        env["CLEW_PEER_DNS"],
        "main-collector-headless.traces.svc:4317"
    );
    assert_eq!(env["CLEW_REPLICATION_FACTOR"], "2");
    assert_eq!(env["CLEW_REPLICATION_TAKEOVER_AFTER"], "30s");
    assert!(!env.contains_key("CLEW_REPLICATION_MIN_COPIES"));
    assert_eq!(env["CLEW_ADVERTISE_ADDR"], "$(POD_IP):4317");
    assert_eq!(env["CLEW_DATA_DIR"], "/var/lib/clew");
}

#[test]
fn the_advertised_address_is_the_pod_ip_declared_before_it() {
    let t = tc("main");
    let pod = desired_deployment(&t, &defaults())
        .spec
        .template
        .spec
        .unwrap();
    let env = pod.containers[0].env.clone().unwrap();
    let at = |name: &str| env.iter().position(|e| e.name == name).unwrap();
    // `$(POD_IP)` only expands when POD_IP is defined earlier in the list.
    assert!(at("POD_IP") < at("CLEW_ADVERTISE_ADDR"));
    let field = env[at("POD_IP")]
        .value_from
        .as_ref()
        .and_then(|s| s.field_ref.as_ref())
        .unwrap();
    assert_eq!(field.field_path, "status.podIP");
}

#[test]
fn replication_settings_come_from_the_spec_and_roll_the_collectors() {
    let mut t = tc("main");
    t.spec.replication = ReplicationSpec {
        factor: 3,
        min_copies: Some(2),
        takeover_after: "1m30s".to_owned(),
    };
    let data = desired_config_map(&t).data.unwrap();
    assert_eq!(data["CLEW_REPLICATION_FACTOR"], "3");
    assert_eq!(data["CLEW_REPLICATION_MIN_COPIES"], "2");
    assert_eq!(data["CLEW_REPLICATION_TAKEOVER_AFTER"], "1m30s");
    let hash = |t: &TraceCollector| {
        desired_deployment(t, &defaults())
            .spec
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap()[CONFIG_HASH_ANNOTATION]
            .clone()
    };
    assert_ne!(hash(&t), hash(&tc("main")));
}

#[test]
fn config_change_changes_the_pod_template_hash() {
    let a = tc("main");
    let mut b = tc("main");
    b.spec.retention = "24h".to_owned();
    let hash = |t: &TraceCollector| {
        desired_deployment(t, &defaults())
            .spec
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap()[CONFIG_HASH_ANNOTATION]
            .clone()
    };
    assert_ne!(hash(&a), hash(&b));
    assert_eq!(hash(&a), hash(&tc("main")));
}

#[test]
fn external_redis_reads_the_url_from_the_secret_and_drops_the_statefulset() {
    let mut t = tc("main");
    t.spec.storage.redis.external = Some(ExternalRedis {
        key: "uri".to_owned(),
        ..ExternalRedis::new("redis")
    });
    t.spec.storage.redis.prefix = Some("team-a:".to_owned());
    assert!(desired_redis(&t).is_none());
    assert!(desired_redis_service(&t).is_none());
    let data = desired_config_map(&t).data.unwrap();
    assert!(
        !data.contains_key("CLEW_REDIS_URL"),
        "no secret in the ConfigMap"
    );
    assert_eq!(data["CLEW_REDIS_PREFIX"], "team-a:");
    let dep = desired_deployment(&t, &defaults());
    let c = &dep.spec.template.spec.unwrap().containers[0];
    let sel = env_of(c)["CLEW_REDIS_URL"]
        .value_from
        .clone()
        .unwrap()
        .secret_key_ref
        .unwrap();
    assert_eq!((sel.name.as_str(), sel.key.as_str()), ("redis", "uri"));
}

#[test]
fn managed_redis_gets_a_persistent_volume_of_the_requested_size_and_class() {
    let mut t = tc("main");
    t.spec.storage.redis.managed = Some(ManagedRedis {
        size: "5Gi".to_owned(),
        storage_class: Some("fast".to_owned()),
        ..ManagedRedis::default()
    });
    let sts = desired_redis(&t).unwrap();
    assert_eq!(sts.spec.service_name.as_deref(), Some("main-redis"));
    // Deleting the TraceCollector deletes its data volume too.
    let retention = sts
        .spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .unwrap();
    assert_eq!(retention.when_deleted.as_deref(), Some("Delete"));
    let pvc = &sts.spec.volume_claim_templates.unwrap()[0];
    let spec = pvc.spec.as_ref().unwrap();
    assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
    assert_eq!(
        spec.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"],
        Quantity("5Gi".to_owned())
    );
    let svc = desired_redis_service(&t).unwrap();
    assert_eq!(svc.spec.unwrap().cluster_ip.as_deref(), Some("None"));
}

#[test]
fn headless_service_is_headless_and_clusterip_is_not() {
    let t = tc("main");
    let h = desired_headless_service(&t);
    assert_eq!(h.metadata.name.as_deref(), Some("main-collector-headless"));
    assert_eq!(h.spec.unwrap().cluster_ip.as_deref(), Some("None"));
    let s = desired_service(&t).spec.unwrap();
    assert_eq!(s.type_.as_deref(), Some("ClusterIP"));
    assert!(s.cluster_ip.is_none());
    assert_eq!(headless_dns(&t), "main-collector-headless.traces.svc:4317");
}

#[test]
fn autoscaler_creates_an_hpa_and_leaves_replicas_to_it() {
    let mut t = tc("main");
    assert!(desired_hpa(&t).is_none());
    t.spec.autoscaler = Some(AutoscalerSpec {
        min_replicas: 3,
        max_replicas: 9,
        target_cpu_utilization: 60,
    });
    let hpa = desired_hpa(&t).unwrap();
    assert_eq!(hpa.spec.min_replicas, Some(3));
    assert_eq!(hpa.spec.max_replicas, 9);
    assert_eq!(hpa.spec.scale_target_ref.name, "main-collector");
    let m = &hpa.spec.metrics.unwrap()[0];
    assert_eq!(
        m.resource.as_ref().unwrap().target.average_utilization,
        Some(60)
    );
    assert_eq!(desired_deployment(&t, &defaults()).spec.replicas, None);
}

#[test]
fn an_autoscaled_collector_always_requests_cpu() {
    let cpu_request = |t: &TraceCollector| {
        let d = desired_deployment(t, &defaults());
        let c = &d.spec.template.spec.unwrap().containers[0];
        c.resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("cpu"))
            .map(|q| q.0.clone())
    };
    let mut t = tc("main");
    assert_eq!(cpu_request(&t), None);
    t.spec.autoscaler = Some(AutoscalerSpec {
        min_replicas: 1,
        max_replicas: 4,
        target_cpu_utilization: 75,
    });
    // Nothing to measure utilisation against otherwise.
    assert_eq!(cpu_request(&t).as_deref(), Some(AUTOSCALED_CPU_REQUEST));
    // The user's request wins, and the rest of their resources stay.
    t.spec.resources = Some(Resources {
        requests: BTreeMap::from([("cpu".to_owned(), "1".to_owned())]),
        limits: BTreeMap::from([("memory".to_owned(), "1Gi".to_owned())]),
    });
    assert_eq!(cpu_request(&t).as_deref(), Some("1"));
}

#[test]
fn the_collectors_are_a_deployment_with_an_emptydir_by_default() {
    let t = tc("main");
    let CollectorWorkload::Deployment(dep) = desired_collectors(&t, &defaults()) else {
        panic!("a Deployment without spec.wal.persistent");
    };
    assert_eq!(collector_kind(&t), "Deployment");
    let volumes = dep.spec.template.spec.unwrap().volumes.unwrap();
    assert_eq!(volumes[0].name, "data");
    assert!(volumes[0].empty_dir.is_some());
}

#[test]
fn a_persistent_wal_gives_each_collector_a_volume_claim_in_a_statefulset() {
    let mut t = tc("main");
    t.spec.wal.persistent = true;
    t.spec.wal.size = "20Gi".to_owned();
    t.spec.wal.storage_class = Some("fast".to_owned());
    let CollectorWorkload::StatefulSet(sts) = desired_collectors(&t, &defaults()) else {
        panic!("a StatefulSet with spec.wal.persistent");
    };
    assert_eq!(collector_kind(&t), "StatefulSet");
    assert_eq!(sts.metadata.name.as_deref(), Some("main-collector"));
    assert_eq!(sts.spec.replicas, Some(2));
    // Governed by the headless Service the sidecars and the peers resolve.
    assert_eq!(
        sts.spec.service_name.as_deref(),
        Some("main-collector-headless")
    );
    assert_eq!(sts.spec.pod_management_policy.as_deref(), Some("Parallel"));
    let claim = &sts.spec.volume_claim_templates.as_ref().unwrap()[0];
    assert_eq!(claim.metadata.name.as_deref(), Some("data"));
    let claim_spec = claim.spec.as_ref().unwrap();
    assert_eq!(claim_spec.storage_class_name.as_deref(), Some("fast"));
    assert_eq!(
        claim_spec
            .resources
            .as_ref()
            .unwrap()
            .requests
            .as_ref()
            .unwrap()["storage"],
        Quantity("20Gi".to_owned())
    );
    let retention = sts.spec.persistent_volume_claim_retention_policy.unwrap();
    assert_eq!(retention.when_deleted.as_deref(), Some("Delete"));
    // The claim provides the data volume; the pod is otherwise the Deployment's.
    let pod = sts.spec.template.spec.unwrap();
    assert!(pod.volumes.is_none());
    let dep = desired_deployment(&t, &defaults());
    assert_eq!(pod.containers, dep.spec.template.spec.unwrap().containers);
    assert_eq!(sts.spec.template.metadata, dep.spec.template.metadata);
    let mount = &pod.containers[0].volume_mounts.as_ref().unwrap()[0];
    assert_eq!(
        (mount.name.as_str(), mount.mount_path.as_str()),
        ("data", "/var/lib/clew")
    );
}

#[test]
fn the_autoscaler_scales_whichever_workload_runs_the_collectors() {
    let mut t = tc("main");
    t.spec.autoscaler = Some(AutoscalerSpec {
        min_replicas: 2,
        max_replicas: 4,
        target_cpu_utilization: 75,
    });
    let target = |t: &TraceCollector| desired_hpa(t).unwrap().spec.scale_target_ref;
    assert_eq!(target(&t).kind, "Deployment");
    t.spec.wal.persistent = true;
    assert_eq!(target(&t).kind, "StatefulSet");
    assert_eq!(target(&t).name, "main-collector");
    assert_eq!(
        desired_collector_statefulset(&t, &defaults()).spec.replicas,
        None
    );
}

#[test]
fn pdb_and_visualizer_can_be_turned_off() {
    let mut t = tc("main");
    assert_eq!(
        desired_pdb(&t).unwrap().spec.unwrap().max_unavailable,
        Some(IntOrString::Int(1))
    );
    t.spec.pod_disruption_budget.enabled = false;
    t.spec.visualizer.enabled = false;
    assert!(desired_pdb(&t).is_none());
    assert!(desired_visualizer(&t, &defaults()).is_none());
    assert!(desired_visualizer_service(&t).is_none());
    assert!(visualizer_url(&t).is_none());
}

#[test]
fn visualizer_proxies_the_collector_query_api() {
    let mut t = tc("main");
    t.spec.visualizer.service_type = ServiceType::LoadBalancer;
    t.spec.visualizer.replicas = 3;
    let v = desired_visualizer(&t, &defaults()).unwrap();
    assert_eq!(v.spec.replicas, Some(3));
    let c = &v.spec.template.spec.unwrap().containers[0];
    let env = env_of(c);
    assert_eq!(
        env["CLEW_QUERY_URL"].value.as_deref(),
        Some("http://main-collector.traces.svc:16686")
    );
    assert_eq!(
        env["CLEW_VISUALIZER_ADDR"].value.as_deref(),
        Some("0.0.0.0:8080")
    );
    let svc = desired_visualizer_service(&t).unwrap().spec.unwrap();
    assert_eq!(svc.type_.as_deref(), Some("LoadBalancer"));
    assert_eq!(
        visualizer_url(&t).as_deref(),
        Some("http://main-visualizer.traces.svc")
    );
}

#[test]
fn spec_image_and_pull_policy_override_the_defaults() {
    let mut t = tc("main");
    t.spec.image = Some("registry.local/clew:dev".to_owned());
    t.spec.image_pull_policy = Some(crate::crd::PullPolicy::Never);
    let c = &desired_deployment(&t, &defaults())
        .spec
        .template
        .spec
        .unwrap()
        .containers[0];
    assert_eq!(c.image.as_deref(), Some("registry.local/clew:dev"));
    assert_eq!(c.image_pull_policy.as_deref(), Some("Never"));
}

fn tls_tc() -> TraceCollector {
    let mut t = tc("main");
    t.spec.tls.enabled = true;
    t
}

fn collector_pod(t: &TraceCollector) -> PodSpec {
    desired_deployment(t, &defaults())
        .spec
        .template
        .spec
        .unwrap()
}

fn secret_volumes(pod: &PodSpec) -> BTreeMap<String, String> {
    pod.volumes
        .iter()
        .flatten()
        .filter_map(|v| {
            let s = v.secret.as_ref()?;
            Some((v.name.clone(), s.secret_name.clone()?))
        })
        .collect()
}

fn mounts(c: &Container) -> BTreeMap<String, String> {
    c.volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.clone(), m.mount_path.clone()))
        .collect()
}

#[test]
fn without_tls_nothing_mounts_a_certificate() {
    let t = tc("main");
    let config = desired_config_map(&t).data.unwrap();
    assert!(
        config
            .keys()
            .all(|k| !k.contains("TLS") && !k.contains("REDIS_CA"))
    );
    assert_eq!(
        config["CLEW_REDIS_URL"],
        "redis://main-redis.traces.svc:6379"
    );
    assert!(secret_volumes(&collector_pod(&t)).is_empty());
    let redis = desired_redis(&t).unwrap().spec.template.spec.unwrap();
    assert!(redis.volumes.is_none());
    assert!(
        !redis.containers[0]
            .args
            .as_ref()
            .unwrap()
            .contains(&"--tls-port".to_owned())
    );
    let vis = desired_visualizer(&t, &defaults())
        .unwrap()
        .spec
        .template
        .spec
        .unwrap();
    assert!(vis.volumes.is_none());
    assert_eq!(
        desired_visualizer_service(&t)
            .unwrap()
            .spec
            .unwrap()
            .ports
            .unwrap()[0]
            .port,
        80
    );
    assert_eq!(
        collector_endpoint(&t),
        "http://main-collector.traces.svc:4317"
    );
}

#[test]
fn tls_collectors_serve_with_mtls_and_replicate_over_tls() {
    let t = tls_tc();
    let config = desired_config_map(&t).data.unwrap();
    assert_eq!(config["CLEW_TLS_CERT"], "/etc/clew/tls/tls.crt");
    assert_eq!(config["CLEW_TLS_KEY"], "/etc/clew/tls/tls.key");
    assert_eq!(config["CLEW_TLS_CLIENT_CA"], "/etc/clew/tls/ca.crt");
    assert_eq!(config["CLEW_PEER_TLS_CA"], "/etc/clew/tls/ca.crt");
    assert_eq!(
        config["CLEW_PEER_TLS_SERVER_NAME"],
        "main-collector-headless.traces.svc"
    );
    // Probes and scrapes stay plain HTTP on the ops port.
    assert!(!config.contains_key("CLEW_TLS_OPS"));
    let pod = collector_pod(&t);
    let c = &pod.containers[0];
    assert_eq!(
        c.readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .scheme,
        None
    );
    assert_eq!(secret_volumes(&pod)["tls"], "main-collector-tls");
    assert_eq!(mounts(c)["tls"], "/etc/clew/tls");
    let tls = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "tls")
        .unwrap();
    assert_eq!(tls.secret.as_ref().unwrap().default_mode, Some(0o440));
    assert_eq!(pod.security_context.as_ref().unwrap().fs_group, Some(65532));
    // The same on the StatefulSet.
    let sts = desired_collector_statefulset(&t, &defaults());
    assert_eq!(
        secret_volumes(&sts.spec.template.spec.unwrap())["tls"],
        "main-collector-tls"
    );
    assert_eq!(
        collector_endpoint(&t),
        "https://main-collector.traces.svc:4317"
    );
    // Turning TLS on changes the configuration, so the collectors roll.
    let hash = |t: &TraceCollector| {
        desired_deployment(t, &defaults())
            .spec
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap()[CONFIG_HASH_ANNOTATION]
            .clone()
    };
    assert_ne!(hash(&t), hash(&tc("main")));
}

#[test]
fn tls_without_client_auth_or_with_your_own_secret() {
    let mut t = tls_tc();
    t.spec.tls.client_auth = Some(false);
    let config = desired_config_map(&t).data.unwrap();
    assert!(!config.contains_key("CLEW_TLS_CLIENT_CA"));
    assert!(config.contains_key("CLEW_TLS_CERT"));
    let mut own = tls_tc();
    own.spec.tls.secret_name = Some("clew-cert-manager".into());
    assert!(
        !desired_config_map(&own)
            .data
            .unwrap()
            .contains_key("CLEW_TLS_CLIENT_CA")
    );
    assert_eq!(
        secret_volumes(&collector_pod(&own))["tls"],
        "clew-cert-manager"
    );
    let vis = desired_visualizer(&own, &defaults())
        .unwrap()
        .spec
        .template
        .spec
        .unwrap();
    assert_eq!(secret_volumes(&vis)["tls"], "clew-cert-manager");
    // The same certificate serves the managed Redis.
    let redis = desired_redis(&own).unwrap().spec.template.spec.unwrap();
    assert_eq!(secret_volumes(&redis)["tls"], "clew-cert-manager");
    assert_eq!(
        secret_volumes(&collector_pod(&own))["redis-ca"],
        "clew-cert-manager"
    );
}

#[test]
fn tls_managed_redis_is_tls_only_with_a_password_never_in_the_pod_spec() {
    let t = tls_tc();
    let config = desired_config_map(&t).data.unwrap();
    assert_eq!(
        config["CLEW_REDIS_URL"],
        "rediss://main-redis.traces.svc:6379"
    );
    assert_eq!(config["CLEW_REDIS_CA"], "/etc/clew/redis-ca/ca.crt");
    assert_eq!(config["CLEW_REDIS_USERNAME"], "clew");
    assert_eq!(
        config["CLEW_REDIS_PASSWORD_FILE"],
        "/etc/clew/redis-auth/password"
    );
    let pod = collector_pod(&t);
    assert_eq!(secret_volumes(&pod)["redis-ca"], "main-redis-tls");
    assert_eq!(secret_volumes(&pod)["redis-auth"], "main-redis-auth");

    let sts = desired_redis(&t).unwrap();
    let redis = sts.spec.template.spec.clone().unwrap();
    let c = &redis.containers[0];
    let args = c.args.clone().unwrap().join(" ");
    for want in [
        "--port 0",
        "--tls-port 6379",
        "--tls-cert-file /etc/redis/tls/tls.crt",
        "--tls-key-file /etc/redis/tls/tls.key",
        "--tls-ca-cert-file /etc/redis/tls/ca.crt",
        "--tls-auth-clients no",
        "--aclfile /etc/redis/acl/users.acl",
    ] {
        assert!(args.contains(want), "{want} not in {args}");
    }
    assert_eq!(secret_volumes(&redis)["tls"], "main-redis-tls");
    assert_eq!(secret_volumes(&redis)["acl"], "main-redis-auth");
    let probe = c.readiness_probe.as_ref().unwrap().exec.as_ref().unwrap();
    assert!(
        probe
            .command
            .as_ref()
            .unwrap()
            .contains(&"--tls".to_owned())
    );
    // The password reaches the probe by reference only: no literal value anywhere.
    let env = env_of(c);
    let auth = env["REDISCLI_AUTH"].value_from.as_ref().unwrap();
    assert_eq!(
        auth.secret_key_ref.as_ref().unwrap().name,
        "main-redis-auth"
    );
    assert!(env.values().all(|e| e.value.is_none()));
    let whole = serde_json::to_string(&sts.spec).unwrap();
    assert!(
        !whole.contains("requirepass") && !whole.contains(">"),
        "{whole}"
    );
}

#[test]
fn external_redis_gets_its_ca_client_certificate_user_and_password_file() {
    let mut t = tc("main");
    t.spec.storage.redis.external = Some(ExternalRedis {
        tls: Some(crate::crd::ExternalRedisTls {
            ca_secret_name: Some("redis-ca".into()),
            client_cert_secret_name: Some("redis-client".into()),
        }),
        username: Some("tracing".into()),
        password_secret: Some(crate::crd::SecretKeyRef {
            name: "redis-creds".into(),
            key: "pass".into(),
        }),
        ..ExternalRedis::new("redis-url")
    });
    let config = desired_config_map(&t).data.unwrap();
    assert_eq!(config["CLEW_REDIS_CA"], "/etc/clew/redis-ca/ca.crt");
    assert_eq!(config["CLEW_REDIS_CERT"], "/etc/clew/redis-client/tls.crt");
    assert_eq!(config["CLEW_REDIS_KEY"], "/etc/clew/redis-client/tls.key");
    assert_eq!(config["CLEW_REDIS_USERNAME"], "tracing");
    assert_eq!(
        config["CLEW_REDIS_PASSWORD_FILE"],
        "/etc/clew/redis-auth/password"
    );
    let pod = collector_pod(&t);
    let vols = secret_volumes(&pod);
    assert_eq!(vols["redis-ca"], "redis-ca");
    assert_eq!(vols["redis-client"], "redis-client");
    assert_eq!(vols["redis-auth"], "redis-creds");
    // The password's key is mounted as the file the collector reads.
    let auth = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "redis-auth")
        .unwrap();
    let item = &auth.secret.as_ref().unwrap().items.as_ref().unwrap()[0];
    assert_eq!(
        (item.key.as_str(), item.path.as_str()),
        ("pass", "password")
    );
    assert_eq!(
        mounts(&pod.containers[0])["redis-auth"],
        "/etc/clew/redis-auth"
    );
    // Not in the environment.
    assert!(!env_of(&pod.containers[0]).contains_key("CLEW_REDIS_PASSWORD"));
}

#[test]
fn tls_visualizer_serves_https_and_reads_the_query_api_over_mtls() {
    let t = tls_tc();
    let pod = desired_visualizer(&t, &defaults())
        .unwrap()
        .spec
        .template
        .spec
        .unwrap();
    let c = &pod.containers[0];
    let env = env_of(c);
    let val = |k: &str| env[k].value.clone().unwrap();
    assert_eq!(
        val("CLEW_QUERY_URL"),
        "https://main-collector.traces.svc:16686"
    );
    assert_eq!(val("CLEW_QUERY_CA"), "/etc/clew/tls/ca.crt");
    assert_eq!(val("CLEW_QUERY_CERT"), "/etc/clew/tls/tls.crt");
    assert_eq!(val("CLEW_QUERY_KEY"), "/etc/clew/tls/tls.key");
    assert_eq!(val("CLEW_VISUALIZER_TLS_CERT"), "/etc/clew/tls/tls.crt");
    assert_eq!(val("CLEW_VISUALIZER_TLS_KEY"), "/etc/clew/tls/tls.key");
    let scheme = |p: &Option<Probe>| {
        p.as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .scheme
            .clone()
    };
    assert_eq!(scheme(&c.readiness_probe).as_deref(), Some("HTTPS"));
    assert_eq!(scheme(&c.liveness_probe).as_deref(), Some("HTTPS"));
    assert_eq!(secret_volumes(&pod)["tls"], "main-collector-tls");
    assert_eq!(
        desired_visualizer_service(&t)
            .unwrap()
            .spec
            .unwrap()
            .ports
            .unwrap()[0]
            .port,
        443
    );
    assert_eq!(
        visualizer_url(&t).as_deref(),
        Some("https://main-visualizer.traces.svc")
    );
}

fn cold_tc(cold: serde_json::Value) -> TraceCollector {
    let mut t = tc("main");
    t.spec.storage.cold = Some(serde_json::from_value(cold).unwrap());
    t
}

fn s3_tc() -> TraceCollector {
    cold_tc(serde_json::json!({
        "s3": {"bucket": "traces", "prefix": "/prod/eu/", "endpoint": "https://minio.storage.svc:9000",
               "region": "eu-west-1", "timeout": "10s",
               "credentialsSecret": {"name": "s3-creds", "accessKeyIdKey": "id"},
               "caSecret": {"name": "minio-ca", "key": "root.pem"}},
        "hotRetention": "2h", "hotMaxBytes": 1073741824, "retention": "30d",
        "blockTraces": 5000, "interval": "1m", "compactBelowBytes": 1048576,
    }))
}

#[test]
fn without_a_cold_tier_the_collector_gets_no_cold_setting_volume_or_claim() {
    let t = tc("main");
    let pod = collector_pod(&t);
    let env = collector_env(&t, &pod);
    assert!(
        !env.keys()
            .any(|k| k.contains("COLD") || k.contains("HOT_") || k.starts_with("AWS_")),
        "{env:?}"
    );
    assert!(!mounts(&pod.containers[0]).contains_key("cold"));
    assert!(cold::desired_claim(&t).is_none());
    assert_eq!(
        desired_deployment(&t, &defaults())
            .spec
            .strategy
            .unwrap()
            .type_
            .as_deref(),
        Some("RollingUpdate")
    );
}

#[test]
fn a_filesystem_cold_tier_mounts_its_claim_writable_and_points_the_url_at_it() {
    let t = cold_tc(serde_json::json!({
        "filesystem": {"size": "200Gi", "storageClassName": "nfs", "accessModes": ["ReadWriteMany"]},
    }));
    let claim = cold::desired_claim(&t).unwrap();
    assert_eq!(claim.metadata.name.as_deref(), Some("main-cold"));
    assert_eq!(claim.metadata.owner_references.unwrap()[0].uid, UID);
    let spec = claim.spec.unwrap();
    assert_eq!(spec.access_modes.unwrap(), ["ReadWriteMany"]);
    assert_eq!(spec.storage_class_name.as_deref(), Some("nfs"));
    assert_eq!(
        spec.resources.unwrap().requests.unwrap()["storage"],
        Quantity("200Gi".to_owned())
    );

    let pod = collector_pod(&t);
    let env = collector_env(&t, &pod);
    assert_eq!(env["CLEW_COLD_URL"], "file:///var/lib/clew-cold");
    // The defaults of the spec, written out: the collector's own defaults are the same.
    assert_eq!(env["CLEW_HOT_RETENTION"], "1h");
    assert_eq!(env["CLEW_COLD_RETENTION"], "720h");
    assert_eq!(env["CLEW_HOT_MAX_BYTES"], "0");
    assert!(!env.contains_key("CLEW_COLD_S3_ENDPOINT"));
    assert!(!env.contains_key("CLEW_COLD_INTERVAL"));
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "cold")
        .unwrap();
    let source = volume.persistent_volume_claim.as_ref().unwrap();
    assert_eq!(source.claim_name, "main-cold");
    assert_eq!(source.read_only, Some(false));
    let c = &pod.containers[0];
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "cold")
        .unwrap();
    assert_eq!(mount.mount_path, cold::COLD_DIR);
    assert_ne!(mount.read_only, Some(true));
    // The root filesystem stays read-only; the blocks go on the volume, which the pod's
    // fsGroup makes writable for the collector's user.
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(pod.security_context.as_ref().unwrap().fs_group, Some(65532));
    // Shared by every node: collectors still roll one new before one old.
    let strategy = desired_deployment(&t, &defaults()).spec.strategy.unwrap();
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
}

#[test]
fn a_read_write_once_cold_volume_replaces_the_collector_instead_of_rolling_it() {
    let mut t = cold_tc(serde_json::json!({"filesystem": {}}));
    t.spec.replicas = 1;
    let claim = cold::desired_claim(&t).unwrap().spec.unwrap();
    assert_eq!(claim.access_modes.unwrap(), ["ReadWriteOnce"]);
    assert_eq!(
        claim.resources.unwrap().requests.unwrap()["storage"],
        Quantity("50Gi".to_owned())
    );
    let strategy = desired_deployment(&t, &defaults()).spec.strategy.unwrap();
    assert_eq!(strategy.type_.as_deref(), Some("Recreate"));
    assert!(strategy.rolling_update.is_none());
}

#[test]
fn an_existing_claim_is_mounted_and_no_claim_is_created() {
    let t = cold_tc(serde_json::json!({"filesystem": {"existingClaim": "blocks-nfs"}}));
    assert!(cold::desired_claim(&t).is_none());
    let pod = collector_pod(&t);
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "cold")
        .unwrap();
    assert_eq!(
        volume.persistent_volume_claim.as_ref().unwrap().claim_name,
        "blocks-nfs"
    );
    // Yours, so assumed shared (documented: ReadWriteMany with more than one collector).
    let strategy = desired_deployment(&t, &defaults()).spec.strategy.unwrap();
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
}

#[test]
fn an_s3_cold_tier_is_configured_and_its_key_comes_only_from_the_secret() {
    let t = s3_tc();
    assert!(cold::desired_claim(&t).is_none());
    let pod = collector_pod(&t);
    let env = collector_env(&t, &pod);
    assert_eq!(env["CLEW_COLD_URL"], "s3://traces/prod/eu");
    assert_eq!(
        env["CLEW_COLD_S3_ENDPOINT"],
        "https://minio.storage.svc:9000"
    );
    assert_eq!(env["CLEW_COLD_S3_REGION"], "eu-west-1");
    assert_eq!(env["CLEW_COLD_S3_TIMEOUT"], "10s");
    assert_eq!(env["CLEW_COLD_S3_CA"], "/etc/clew/cold-ca/ca.crt");
    assert_eq!(env["CLEW_HOT_RETENTION"], "2h");
    assert_eq!(env["CLEW_HOT_MAX_BYTES"], "1073741824");
    assert_eq!(env["CLEW_COLD_RETENTION"], "30d");
    assert_eq!(env["CLEW_COLD_BLOCK_TRACES"], "5000");
    assert_eq!(env["CLEW_COLD_INTERVAL"], "1m");
    assert_eq!(env["CLEW_COLD_COMPACT_BELOW_BYTES"], "1048576");

    // The key as references into the Secret, under the names the S3 client reads.
    let c = &pod.containers[0];
    let vars = env_of(c);
    for (name, key) in [
        ("AWS_ACCESS_KEY_ID", "id"),
        ("AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"),
    ] {
        let v = &vars[name];
        assert_eq!(v.value, None, "{name} has a plain value");
        let r = v
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!((r.name.as_str(), r.key.as_str()), ("s3-creds", key));
        assert_eq!(r.optional, Some(false));
    }
    // Nothing in the ConfigMap or a plain env value names a key or a secret.
    let config = desired_config_map(&t).data.unwrap();
    assert!(
        !config
            .keys()
            .any(|k| k.contains("ACCESS_KEY") || k.contains("CREDENTIALS")),
        "{config:?}"
    );
    assert!(
        c.env
            .iter()
            .flatten()
            .filter(|e| e.value.is_some())
            .all(|e| !e.name.contains("ACCESS_KEY")),
    );

    // The CA, mounted read-only under the file name CLEW_COLD_S3_CA names.
    assert_eq!(secret_volumes(&pod)["cold-ca"], "minio-ca");
    let ca = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "cold-ca")
        .unwrap();
    let item = &ca.secret.as_ref().unwrap().items.as_ref().unwrap()[0];
    assert_eq!(
        (item.key.as_str(), item.path.as_str()),
        ("root.pem", "ca.crt")
    );
    assert_eq!(mounts(c)["cold-ca"], "/etc/clew/cold-ca");
    assert!(!mounts(c).contains_key("cold"));
}

#[test]
fn s3_without_a_prefix_credentials_or_ca_uses_the_bucket_root_and_ambient_credentials() {
    let t = cold_tc(serde_json::json!({"s3": {"bucket": "traces", "prefix": "/"}}));
    let pod = collector_pod(&t);
    let env = collector_env(&t, &pod);
    assert_eq!(env["CLEW_COLD_URL"], "s3://traces");
    for absent in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "CLEW_COLD_S3_CA",
        "CLEW_COLD_S3_ENDPOINT",
    ] {
        assert!(!env.contains_key(absent), "{absent}");
    }
    assert!(!secret_volumes(&pod).contains_key("cold-ca"));
}

#[test]
fn cold_settings_roll_the_collectors_and_reach_a_persistent_wal_statefulset() {
    let plain = tc("main");
    let hash = |t: &TraceCollector| {
        desired_deployment(t, &defaults())
            .spec
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap()[CONFIG_HASH_ANNOTATION]
            .clone()
    };
    let mut longer = s3_tc();
    longer.spec.storage.cold.as_mut().unwrap().retention = "60d".to_owned();
    assert_ne!(hash(&plain), hash(&s3_tc()));
    assert_ne!(hash(&s3_tc()), hash(&longer));

    let mut t = cold_tc(serde_json::json!({"filesystem": {"accessModes": ["ReadWriteMany"]}}));
    t.spec.wal.persistent = true;
    let sts = desired_collector_statefulset(&t, &defaults());
    let pod = sts.spec.template.spec.unwrap();
    // Each collector's own WAL claim from the template, the cold claim shared by all.
    assert_eq!(
        sts.spec.volume_claim_templates.unwrap()[0]
            .metadata
            .name
            .as_deref(),
        Some("data")
    );
    let cold = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "cold")
        .unwrap();
    assert_eq!(
        cold.persistent_volume_claim.as_ref().unwrap().claim_name,
        "main-cold"
    );
    let m = mounts(&pod.containers[0]);
    assert_eq!(m["data"], "/var/lib/clew");
    assert_eq!(m["cold"], "/var/lib/clew-cold");
}

const POLICIES: &str =
    "policies:\n  - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}\n";

fn tail_sampled(policies: &str) -> TraceCollector {
    let mut t = tc("main");
    t.spec.sampling.tail = Some(crate::crd::TailSamplingSpec {
        policies: policies.to_owned(),
        decision_wait: Some("2s".to_owned()),
        max_pending_traces: Some(20_000),
        decision_cache_size: None,
    });
    t
}

#[test]
fn tail_sampling_mounts_the_policy_file_and_points_the_collector_at_it() {
    let t = tail_sampled(POLICIES);
    let cm = sampling::desired_config_map(&t).unwrap();
    assert_eq!(cm.metadata.name.as_deref(), Some("main-collector-sampling"));
    assert_eq!(cm.metadata.owner_references.unwrap()[0].uid, UID);
    assert_eq!(cm.data.unwrap()["policy.yaml"], POLICIES);
    let pod = desired_deployment(&t, &defaults())
        .spec
        .template
        .spec
        .unwrap();
    let env = collector_env(&t, &pod);
    assert_eq!(
        env["CLEW_SAMPLING_POLICY"],
        "/etc/clew/sampling/policy.yaml"
    );
    assert_eq!(env["CLEW_DECISION_WAIT"], "2s");
    assert_eq!(env["CLEW_MAX_PENDING_TRACES"], "20000");
    assert!(!env.contains_key("CLEW_DECISION_CACHE_SIZE"));
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "sampling")
        .unwrap();
    let source = volume.config_map.as_ref().unwrap();
    assert_eq!(source.name, "main-collector-sampling");
    assert_eq!(source.items.as_ref().unwrap()[0].key, "policy.yaml");
    let mount = pod.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "sampling")
        .unwrap();
    assert_eq!(mount.mount_path, "/etc/clew/sampling");
    assert_eq!(mount.read_only, Some(true));
}

#[test]
fn without_tail_sampling_nothing_of_it_is_rendered() {
    let t = tc("main");
    assert!(sampling::desired_config_map(&t).is_none());
    assert!(sampling::validate(&t).is_ok());
    let pod = desired_deployment(&t, &defaults())
        .spec
        .template
        .spec
        .unwrap();
    let env = collector_env(&t, &pod);
    assert!(
        !env.keys()
            .any(|k| k.contains("SAMPLING") || k.contains("DECISION"))
    );
    assert!(!pod.volumes.iter().flatten().any(|v| v.name == "sampling"));
}

#[test]
fn a_policy_change_rolls_the_collectors() {
    let hash = |t: &TraceCollector| {
        desired_deployment(t, &defaults())
            .spec
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap()[CONFIG_HASH_ANNOTATION]
            .clone()
    };
    let a = tail_sampled(POLICIES);
    let b = tail_sampled(&POLICIES.replace("ERROR", "OK"));
    assert_ne!(hash(&a), hash(&b));
    assert_ne!(hash(&a), hash(&tc("main")));
    assert_eq!(hash(&a), hash(&tail_sampled(POLICIES)));
}

#[test]
fn a_policy_file_the_collector_would_refuse_is_reported_naming_the_line() {
    assert!(sampling::validate(&tail_sampled(POLICIES)).is_ok());
    let bad = "policies:\n  - name: slow\n    type: latency\n    latency: {threshold_ms: fast}\n";
    let err = sampling::validate(&tail_sampled(bad)).unwrap_err();
    assert!(
        err.starts_with("spec.sampling.tail.policies: line 4"),
        "{err}"
    );
    assert!(err.contains("threshold_ms"), "{err}");
}
