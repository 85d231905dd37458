//! The TLS parts of the desired objects (`spec.tls`, Redis TLS and auth): configuration keys,
//! Secret volumes and their mounts. Paths only: the certificates are in Secrets
//! ([`crate::tls`]), and what is mounted is re-read by the binaries when the kubelet updates it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    EnvVar, EnvVarSource, ExecAction, KeyToPath, Probe, SecretKeySelector, SecretVolumeSource,
    Volume, VolumeMount,
};

use super::{REDIS_PORT, names, svc_host};
use crate::certs::{CA_KEY, CERT_KEY, KEY_KEY};
use crate::crd::TraceCollector;
use crate::tls::{REDIS_ACL_KEY, REDIS_PASSWORD_KEY, REDIS_USER};

/// Where the collectors and the visualizer find their certificate (`tls.crt`, `tls.key`,
/// `ca.crt`).
pub const TLS_DIR: &str = "/etc/clew/tls";
/// Where the collectors find the CA of Redis's certificate.
pub const REDIS_CA_DIR: &str = "/etc/clew/redis-ca";
/// Where the collectors find their client certificate for an external Redis.
pub const REDIS_CLIENT_DIR: &str = "/etc/clew/redis-client";
/// Where the collectors find the Redis password (`password`).
pub const REDIS_AUTH_DIR: &str = "/etc/clew/redis-auth";
/// Where the managed Redis finds its serving certificate.
pub const REDIS_SERVER_TLS_DIR: &str = "/etc/redis/tls";
/// Where the managed Redis finds its ACL file.
pub const REDIS_SERVER_ACL_DIR: &str = "/etc/redis/acl";

/// Read-only for the owner and the pod's `fsGroup`, which every pod the operator runs sets.
const SECRET_MODE: i32 = 0o440;

fn path(dir: &str, file: &str) -> String {
    format!("{dir}/{file}")
}

/// A Secret volume with only `items` (`key` → file name), or every key when empty.
pub fn secret_volume(name: &str, secret: &str, items: &[(&str, &str)], mode: i32) -> Volume {
    let items = (!items.is_empty()).then(|| {
        items
            .iter()
            .map(|(key, file)| KeyToPath {
                key: (*key).to_owned(),
                path: (*file).to_owned(),
                ..KeyToPath::default()
            })
            .collect()
    });
    Volume {
        name: name.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_owned()),
            items,
            default_mode: Some(mode),
            optional: Some(false),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// A read-only mount.
pub fn mount(name: &str, dir: &str) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: dir.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// Whether the managed Redis runs TLS-only with a password.
pub fn managed_redis_tls(tc: &TraceCollector) -> bool {
    tc.spec.tls.enabled && tc.spec.storage.redis.external.is_none()
}

/// The in-cluster URL of the managed Redis (`rediss://` with TLS); of a managed Redis
/// Cluster, the seed list of its pods.
pub fn managed_redis_url(tc: &TraceCollector) -> String {
    let scheme = if managed_redis_tls(tc) {
        "rediss"
    } else {
        "redis"
    };
    if let Some(cluster) = super::redis_cluster::managed_cluster(tc) {
        return super::redis_cluster::seed_urls(tc, cluster, scheme);
    }
    format!(
        "{scheme}://{}:{REDIS_PORT}",
        svc_host(tc, &names::redis(tc))
    )
}

/// The collectors' TLS configuration: serving (mTLS when asked), replication to peers over
/// TLS under the headless Service's name, and Redis TLS and auth. Empty without any of them.
pub fn collector_config(tc: &TraceCollector) -> BTreeMap<String, String> {
    let mut data = BTreeMap::new();
    let mut set = |k: &str, v: String| data.insert(k.to_owned(), v);
    if tc.spec.tls.enabled {
        set("CLEW_TLS_CERT", path(TLS_DIR, CERT_KEY));
        set("CLEW_TLS_KEY", path(TLS_DIR, KEY_KEY));
        if tc.spec.tls.mtls() {
            set("CLEW_TLS_CLIENT_CA", path(TLS_DIR, CA_KEY));
        }
        set("CLEW_PEER_TLS_CA", path(TLS_DIR, CA_KEY));
        set(
            "CLEW_PEER_TLS_SERVER_NAME",
            svc_host(tc, &names::headless(tc)),
        );
    }
    if managed_redis_tls(tc) {
        set("CLEW_REDIS_CA", path(REDIS_CA_DIR, CA_KEY));
        set("CLEW_REDIS_USERNAME", REDIS_USER.to_owned());
        set(
            "CLEW_REDIS_PASSWORD_FILE",
            path(REDIS_AUTH_DIR, REDIS_PASSWORD_KEY),
        );
    }
    if let Some(ext) = &tc.spec.storage.redis.external {
        let tls = ext.tls.as_ref();
        if tls.and_then(|t| t.ca_secret_name.as_ref()).is_some() {
            set("CLEW_REDIS_CA", path(REDIS_CA_DIR, CA_KEY));
        }
        if tls
            .and_then(|t| t.client_cert_secret_name.as_ref())
            .is_some()
        {
            set("CLEW_REDIS_CERT", path(REDIS_CLIENT_DIR, CERT_KEY));
            set("CLEW_REDIS_KEY", path(REDIS_CLIENT_DIR, KEY_KEY));
        }
        if let Some(user) = &ext.username {
            set("CLEW_REDIS_USERNAME", user.clone());
        }
        if ext.password_secret.is_some() {
            set(
                "CLEW_REDIS_PASSWORD_FILE",
                path(REDIS_AUTH_DIR, REDIS_PASSWORD_KEY),
            );
        }
    }
    data
}

/// The collectors' Secret volumes and their mounts, matching [`collector_config`].
pub fn collector_volumes(tc: &TraceCollector) -> (Vec<Volume>, Vec<VolumeMount>) {
    let mut vols = Vec::new();
    let mut add = |name: &str, secret: &str, items: &[(&str, &str)], dir: &str| {
        vols.push((
            secret_volume(name, secret, items, SECRET_MODE),
            mount(name, dir),
        ));
    };
    if tc.spec.tls.enabled {
        add("tls", &names::serving_tls(tc), &[], TLS_DIR);
    }
    if managed_redis_tls(tc) {
        add(
            "redis-ca",
            &names::redis_serving_tls(tc),
            &[(CA_KEY, CA_KEY)],
            REDIS_CA_DIR,
        );
        let password = [(REDIS_PASSWORD_KEY, REDIS_PASSWORD_KEY)];
        add(
            "redis-auth",
            &names::redis_auth(tc),
            &password,
            REDIS_AUTH_DIR,
        );
    }
    if let Some(ext) = &tc.spec.storage.redis.external {
        let tls = ext.tls.clone().unwrap_or_default();
        if let Some(ca) = &tls.ca_secret_name {
            add("redis-ca", ca, &[(CA_KEY, CA_KEY)], REDIS_CA_DIR);
        }
        if let Some(client) = &tls.client_cert_secret_name {
            let items = [(CERT_KEY, CERT_KEY), (KEY_KEY, KEY_KEY)];
            add("redis-client", client, &items, REDIS_CLIENT_DIR);
        }
        if let Some(p) = &ext.password_secret {
            let items = [(p.key.as_str(), REDIS_PASSWORD_KEY)];
            add("redis-auth", &p.name, &items, REDIS_AUTH_DIR);
        }
    }
    vols.into_iter().unzip()
}

/// The managed Redis's TLS and ACL arguments: TLS-only on the Redis port, no client
/// certificates asked for (the collectors log in with the password), users from the ACL file.
pub fn redis_args() -> Vec<String> {
    let tls = |f: &str| path(REDIS_SERVER_TLS_DIR, f);
    vec![
        "--port".to_owned(),
        "0".to_owned(),
        "--tls-port".to_owned(),
        REDIS_PORT.to_string(),
        "--tls-cert-file".to_owned(),
        tls(CERT_KEY),
        "--tls-key-file".to_owned(),
        tls(KEY_KEY),
        "--tls-ca-cert-file".to_owned(),
        tls(CA_KEY),
        "--tls-auth-clients".to_owned(),
        "no".to_owned(),
        "--aclfile".to_owned(),
        path(REDIS_SERVER_ACL_DIR, REDIS_ACL_KEY),
    ]
}

/// The managed Redis's volumes and mounts with TLS: its certificate and its ACL file.
pub fn redis_volumes(tc: &TraceCollector) -> (Vec<Volume>, Vec<VolumeMount>) {
    let tls = names::redis_serving_tls(tc);
    let acl = names::redis_auth(tc);
    (
        vec![
            secret_volume("tls", &tls, &[], SECRET_MODE),
            secret_volume("acl", &acl, &[(REDIS_ACL_KEY, REDIS_ACL_KEY)], SECRET_MODE),
        ],
        vec![
            mount("tls", REDIS_SERVER_TLS_DIR),
            mount("acl", REDIS_SERVER_ACL_DIR),
        ],
    )
}

/// The managed Redis's readiness probe with TLS: `PING` over TLS as the collectors' user, the
/// password from the environment ([`redis_probe_env`]), never from the pod spec.
pub fn redis_probe() -> Probe {
    let command = [
        "redis-cli",
        "--tls",
        "--cacert",
        &path(REDIS_SERVER_TLS_DIR, CA_KEY),
        "-h",
        "localhost",
        "--user",
        REDIS_USER,
        "ping",
    ]
    .map(str::to_owned)
    .to_vec();
    Probe {
        exec: Some(ExecAction {
            command: Some(command),
        }),
        period_seconds: Some(5),
        ..Probe::default()
    }
}

/// `REDISCLI_AUTH` for the probe's `redis-cli`, by reference to the auth Secret.
pub fn redis_probe_env(tc: &TraceCollector) -> Vec<EnvVar> {
    vec![EnvVar {
        name: "REDISCLI_AUTH".to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: names::redis_auth(tc),
                key: REDIS_PASSWORD_KEY.to_owned(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }]
}

/// The visualizer's TLS environment: HTTPS with the collectors' certificate, and the query
/// API over TLS (with that certificate as client certificate under mTLS).
pub fn visualizer_env(tc: &TraceCollector) -> Vec<(&'static str, String)> {
    if !tc.spec.tls.enabled {
        return Vec::new();
    }
    let mut env = vec![
        ("CLEW_VISUALIZER_TLS_CERT", path(TLS_DIR, CERT_KEY)),
        ("CLEW_VISUALIZER_TLS_KEY", path(TLS_DIR, KEY_KEY)),
        ("CLEW_QUERY_CA", path(TLS_DIR, CA_KEY)),
    ];
    if tc.spec.tls.mtls() {
        env.push(("CLEW_QUERY_CERT", path(TLS_DIR, CERT_KEY)));
        env.push(("CLEW_QUERY_KEY", path(TLS_DIR, KEY_KEY)));
    }
    env
}

/// The URL scheme of the collectors' and the visualizer's endpoints.
pub fn scheme(tc: &TraceCollector) -> &'static str {
    if tc.spec.tls.enabled { "https" } else { "http" }
}
