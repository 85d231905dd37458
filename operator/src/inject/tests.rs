use super::*;
use crate::fixtures::{defaults, tc};
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

fn pod(ns: &str, annotation: Option<&str>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            generate_name: Some("shop-7d9f8b6c4-".to_owned()),
            namespace: Some(ns.to_owned()),
            labels: Some([("app".to_owned(), "shop".to_owned())].into()),
            annotations: annotation.map(|a| [(INJECT_ANNOTATION.to_owned(), a.to_owned())].into()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".to_owned(),
                image: Some("shop:1".to_owned()),
                env: Some(vec![env("OTEL_SERVICE_NAME", "checkout")]),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

fn in_ns(name: &str, ns: &str) -> TraceCollector {
    let mut t = tc(name);
    t.metadata.namespace = Some(ns.to_owned());
    t
}

#[test]
fn annotation_values_parse() {
    assert_eq!(parse_selection("true", "a"), Ok(Selection::OnlyInNamespace));
    assert_eq!(parse_selection("false", "a"), Ok(Selection::None));
    assert_eq!(
        parse_selection("main", "a"),
        Ok(Selection::Named {
            namespace: "a".into(),
            name: "main".into()
        })
    );
    assert_eq!(
        parse_selection("obs/main", "a"),
        Ok(Selection::Named {
            namespace: "obs".into(),
            name: "main".into()
        })
    );
    let err = parse_selection("a/b/c", "a").unwrap_err();
    assert!(err.contains("<namespace>/<name>"), "{err}");
    assert!(parse_selection("Main", "a").is_err());
}

#[test]
fn decisions_follow_the_pod_then_the_namespace() {
    let main = in_ns("main", "traces");
    let all = [main.clone(), in_ns("other", "obs")];
    // No annotation anywhere.
    assert_eq!(
        decide(&pod("traces", None), None, &all),
        Decision::NotRequested
    );
    // Namespace default applies...
    assert_eq!(
        decide(&pod("traces", None), Some("true"), &all),
        Decision::Inject(Box::new(main.clone()))
    );
    // ...and the pod's own value wins.
    assert_eq!(
        decide(&pod("traces", Some("false")), Some("true"), &all),
        Decision::NotRequested
    );
    assert_eq!(
        decide(&pod("shop", Some("obs/other")), Some("false"), &all),
        Decision::Inject(Box::new(all[1].clone()))
    );
}

#[test]
fn impossible_requests_are_skipped_with_a_reason() {
    let all = [in_ns("a", "traces"), in_ns("b", "traces")];
    let Decision::Skip(r) = decide(&pod("traces", Some("true")), None, &all) else {
        panic!()
    };
    assert!(r.contains("2 TraceCollectors in namespace traces"), "{r}");
    let Decision::Skip(r) = decide(&pod("empty", Some("true")), None, &all) else {
        panic!()
    };
    assert!(r.contains("no TraceCollector in namespace empty"), "{r}");
    let Decision::Skip(r) = decide(&pod("traces", Some("c")), None, &all) else {
        panic!()
    };
    assert_eq!(r, "TraceCollector traces/c not found");
    let mut host = pod("traces", Some("a"));
    host.spec.as_mut().unwrap().host_network = Some(true);
    assert!(matches!(decide(&host, None, &all), Decision::Skip(r) if r.contains("hostNetwork")));
}

#[test]
fn native_injection_adds_an_init_sidecar_and_otel_env() {
    let t = in_ns("main", "traces");
    let p = inject(&pod("traces", Some("true")), &t, &defaults(), true);
    let spec = p.spec.as_ref().unwrap();
    let init = &spec.init_containers.as_ref().unwrap()[0];
    assert_eq!(init.name, SIDECAR_NAME);
    assert_eq!(init.restart_policy.as_deref(), Some("Always"));
    assert_eq!(spec.containers.len(), 1);
    let sidecar_env: BTreeMap<_, _> = init
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.as_str(), e.value.clone().unwrap_or_default()))
        .collect();
    assert_eq!(
        sidecar_env["CLEW_SIDECAR_COLLECTOR_DNS"],
        "main-collector-headless.traces.svc:4317"
    );
    assert_eq!(sidecar_env["CLEW_SIDECAR_GRPC_ADDR"], "127.0.0.1:4317");
    assert_eq!(
        sidecar_env["CLEW_SIDECAR_BUFFER_BYTES"],
        (8 << 20).to_string()
    );
    assert_eq!(
        sidecar_env["CLEW_SIDECAR_SPILL_DIR"],
        "/var/lib/clew-sidecar"
    );

    let app_env: Vec<_> = spec.containers[0].env.iter().flatten().collect();
    let get = |n: &str| app_env.iter().find(|e| e.name == n).unwrap();
    assert_eq!(
        get("OTEL_EXPORTER_OTLP_ENDPOINT").value.as_deref(),
        Some("http://127.0.0.1:4317")
    );
    // The app's own service name is kept.
    assert_eq!(get("OTEL_SERVICE_NAME").value.as_deref(), Some("checkout"));
    assert_eq!(
        app_env
            .iter()
            .filter(|e| e.name == "OTEL_SERVICE_NAME")
            .count(),
        1
    );
    let attrs = get("OTEL_RESOURCE_ATTRIBUTES").value.clone().unwrap();
    assert!(attrs.contains("k8s.pod.name=$(CLEW_POD_NAME)"));
    assert!(attrs.contains("k8s.node.name=$(CLEW_NODE_NAME)"));
    // $(VAR) only expands variables defined earlier in the list.
    let pos = |n: &str| app_env.iter().position(|e| e.name == n).unwrap();
    assert!(pos("CLEW_POD_NAME") < pos("OTEL_RESOURCE_ATTRIBUTES"));
    assert_eq!(
        get("CLEW_NODE_NAME")
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path,
        "spec.nodeName"
    );

    let ann = p.annotations();
    assert_eq!(ann[STATUS_ANNOTATION], "injected");
    assert_eq!(ann[COLLECTOR_ANNOTATION], "traces/main");
    assert_eq!(ann[REVISION_ANNOTATION], sidecar_revision(&t, &defaults()));
    let spill = spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "clew-sidecar-spill")
        .unwrap();
    let limit: i64 = spill
        .empty_dir
        .as_ref()
        .unwrap()
        .size_limit
        .as_ref()
        .unwrap()
        .0
        .parse()
        .unwrap();
    assert!(
        limit > t.spec.sidecar.spill_max_bytes,
        "no room above the spill cap: {limit}"
    );
    assert!(is_injected(&p));
    assert_eq!(decide(&p, None, [&t]), Decision::AlreadyInjected);
}

#[test]
fn legacy_injection_appends_a_regular_container() {
    let t = in_ns("main", "traces");
    let p = inject(&pod("traces", Some("true")), &t, &defaults(), false);
    let spec = p.spec.unwrap();
    assert!(spec.init_containers.is_none());
    assert_eq!(spec.containers.len(), 2);
    assert_eq!(spec.containers[1].name, SIDECAR_NAME);
    assert_eq!(spec.containers[1].restart_policy, None);
}

#[test]
fn revision_changes_with_sidecar_settings_only() {
    let a = tc("main");
    let mut b = tc("main");
    b.spec.sidecar.buffer_bytes = 1 << 20;
    let mut c = tc("main");
    c.spec.replicas = 7;
    let r = |t: &TraceCollector| sidecar_revision(t, &defaults());
    assert_ne!(r(&a), r(&b));
    assert_eq!(r(&a), r(&c));
    let mut d = tc("main");
    d.spec.sampling.ratio = 0.5;
    assert_ne!(r(&a), r(&d));
}

#[test]
fn service_name_comes_from_labels_then_owner() {
    let mut p = pod("ns", None);
    assert_eq!(service_name(&p), "shop");
    p.metadata.labels = None;
    assert_eq!(service_name(&p), "shop-7d9f8b6c4");
    p.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            kind: "ReplicaSet".to_owned(),
            name: "service-a-7d9f8b6c4".to_owned(),
            ..Default::default()
        },
    ]);
    assert_eq!(service_name(&p), "service-a");
}

#[test]
fn native_sidecars_from_1_29() {
    assert!(supports_native_sidecars("1", "29"));
    assert!(supports_native_sidecars("1", "33+"));
    assert!(!supports_native_sidecars("1", "28"));
    assert!(!supports_native_sidecars("1", "27+"));
    assert!(!supports_native_sidecars("", ""));
}

fn sidecar_of(p: &Pod) -> &Container {
    p.spec
        .as_ref()
        .unwrap()
        .init_containers
        .iter()
        .flatten()
        .chain(&p.spec.as_ref().unwrap().containers)
        .find(|c| c.name == SIDECAR_NAME)
        .unwrap()
}

fn env_names(c: &Container) -> Vec<String> {
    c.env.iter().flatten().map(|e| e.name.clone()).collect()
}

#[test]
fn tls_collectors_give_their_sidecars_a_certificate_and_the_ca() {
    let mut t = in_ns("main", "traces");
    t.spec.tls.enabled = true;
    for native in [true, false] {
        let p = inject(&pod("shop", Some("traces/main")), &t, &defaults(), native);
        let s = sidecar_of(&p);
        let env: BTreeMap<_, _> = s
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value.clone().unwrap_or_default()))
            .collect();
        assert_eq!(
            env["CLEW_SIDECAR_COLLECTOR_CA"],
            "/etc/clew/sidecar-tls/ca.crt"
        );
        assert_eq!(
            env["CLEW_SIDECAR_COLLECTOR_CERT"],
            "/etc/clew/sidecar-tls/tls.crt"
        );
        assert_eq!(
            env["CLEW_SIDECAR_COLLECTOR_KEY"],
            "/etc/clew/sidecar-tls/tls.key"
        );
        assert_eq!(
            env["CLEW_SIDECAR_COLLECTOR_SERVER_NAME"],
            "main-collector-headless.traces.svc"
        );
        let m = s.volume_mounts.as_ref().unwrap();
        assert!(
            m.iter()
                .any(|m| m.name == TLS_VOLUME && m.read_only == Some(true))
        );
        let v = p.spec.as_ref().unwrap().volumes.as_ref().unwrap();
        let secret = v.iter().find(|v| v.name == TLS_VOLUME).unwrap();
        let src = secret.secret.as_ref().unwrap();
        assert_eq!(
            src.secret_name.as_deref(),
            Some("clew-sidecar-tls-traces-main")
        );
        // Readable by the sidecar's user whatever the app pod's fsGroup.
        assert_eq!(src.default_mode, Some(0o444));
        // The app keeps talking plain text to localhost.
        let app = &p.spec.as_ref().unwrap().containers[0];
        let endpoint = app
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "OTEL_EXPORTER_OTLP_ENDPOINT")
            .unwrap();
        assert_eq!(endpoint.value.as_deref(), Some("http://127.0.0.1:4317"));
    }
    // Without mTLS: the CA only.
    t.spec.tls.client_auth = Some(false);
    let p = inject(&pod("shop", Some("traces/main")), &t, &defaults(), true);
    let names = env_names(sidecar_of(&p));
    assert!(names.contains(&"CLEW_SIDECAR_COLLECTOR_CA".to_owned()));
    assert!(!names.contains(&"CLEW_SIDECAR_COLLECTOR_CERT".to_owned()));
}

#[test]
fn plain_collectors_inject_no_tls_and_turning_tls_on_rolls_the_workloads() {
    let plain = in_ns("main", "traces");
    let p = inject(&pod("shop", Some("traces/main")), &plain, &defaults(), true);
    assert!(
        env_names(sidecar_of(&p))
            .iter()
            .all(|n| !n.contains("COLLECTOR_CA"))
    );
    let volumes = p.spec.as_ref().unwrap().volumes.as_ref().unwrap();
    assert!(volumes.iter().all(|v| v.secret.is_none()));
    let mut tls = plain.clone();
    tls.spec.tls.enabled = true;
    assert_ne!(
        sidecar_revision(&plain, &defaults()),
        sidecar_revision(&tls, &defaults())
    );
}
