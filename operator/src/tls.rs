//! TLS of a TraceCollector's pipeline (`spec.tls`): the certificates the operator issues from
//! its CA ([`certs::Authority`]) to the collectors, the managed Redis and the sidecars, the
//! Secrets that hold them, and their re-issue before expiry or after a CA rotation.
//!
//! Every Secret is updated in place (same name, server-side apply): the kubelet refreshes the
//! mounted files and the binaries re-read them, so nothing restarts.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use time::OffsetDateTime;
use tracing::{info, warn};

use crate::Result;
use crate::certs::{self, Authority, CA_KEY, CERT_KEY, KEY_KEY, NOT_AFTER_ANNOTATION, Usage};
use crate::crd::TraceCollector;
use crate::desired::{FIELD_MANAGER, names, redis_cluster};
use crate::metrics::Metrics;

/// Label on every Secret holding a certificate the operator issued for a pipeline:
/// `collector`, `redis` or `sidecar`. The rotation pass finds them by it.
pub const CERTIFICATE_LABEL: &str = "clew.dev/certificate";
/// Label: namespace of the TraceCollector a Secret belongs to.
pub const COLLECTOR_NAMESPACE_LABEL: &str = "clew.dev/collector-namespace";
/// Label: name of the TraceCollector a Secret belongs to.
pub const COLLECTOR_NAME_LABEL: &str = "clew.dev/collector-name";
/// Annotation: the DNS names the certificate carries, comma-separated.
pub const DNS_NAMES_ANNOTATION: &str = "clew.dev/dns-names";
/// Annotation: where `ca.crt` comes from, `operator` (its CA bundle) or `copied` (the
/// `ca.crt` of `spec.tls.secretName`, refreshed at admission).
pub const TRUST_ANNOTATION: &str = "clew.dev/ca";

/// Who a certificate is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The collectors (and the visualizer): serving, and client to peers and the query API.
    Collector,
    /// The managed Redis: serving, and client of its master and its peers in a cluster.
    Redis,
    /// The sidecars of one namespace: client.
    Sidecar,
}

impl Kind {
    /// The value of [`CERTIFICATE_LABEL`] and of the metric's `kind` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Collector => "collector",
            Self::Redis => "redis",
            Self::Sidecar => "sidecar",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Self::Collector, Self::Redis, Self::Sidecar]
            .into_iter()
            .find(|k| k.as_str() == s)
    }

    /// What its certificates are issued for.
    pub fn usage(self) -> Usage {
        match self {
            Self::Collector => Usage::ServerAndClient,
            // A replica presents it to its master, and a cluster node to its peers on the
            // cluster bus, which requires a client certificate.
            Self::Redis => Usage::ServerAndClient,
            Self::Sidecar => Usage::Client,
        }
    }
}

/// How long issued certificates last and when they are renewed.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Lifetime of an issued certificate (capped at the CA's expiry).
    pub validity: Duration,
    /// Re-issue when less than this remains.
    pub renew_before: Duration,
}

/// Where the operator's CA lives, and the policy of what it issues.
#[derive(Clone, Debug)]
pub struct Pki {
    /// Namespace of the operator's Secret.
    pub namespace: String,
    /// Name of the operator's Secret (the webhook's, holding `ca.key`).
    pub secret: String,
    /// Lifetime and renewal.
    pub policy: Policy,
}

impl Pki {
    /// Reads the CA from the operator's Secret.
    pub async fn authority(&self, client: &Client) -> Result<Authority> {
        let api: Api<Secret> = Api::namespaced(client.clone(), &self.namespace);
        let secret = api.get(&self.secret).await?;
        Authority::from_secret(&secret)
    }
}

/// A Secret the operator keeps: its place, its certificate (if any) and what `ca.crt` holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Wanted {
    /// Who it is for.
    pub kind: Kind,
    /// Secret name.
    pub name: String,
    /// Secret namespace.
    pub namespace: String,
    /// Common name of the certificate.
    pub common_name: String,
    /// DNS names of the certificate.
    pub dns_names: Vec<String>,
    /// Whether it holds a certificate (a sidecar without mTLS needs only `ca.crt`).
    pub with_cert: bool,
    /// The namespace and name of the TraceCollector.
    pub collector: (String, String),
    /// Owner reference (Secrets in the TraceCollector's namespace only).
    pub owner: Option<OwnerReference>,
}

/// The forms of a Service's in-cluster DNS name.
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    certs::dns_names(service, namespace)
}

/// The names collectors are reached at: the ClusterIP and headless Services (sidecars and
/// peers dial pod IPs with the headless name as server name), and the visualizer's Service,
/// which serves with the same certificate.
pub fn collector_dns_names(tc: &TraceCollector) -> Vec<String> {
    let ns = tc.namespace().unwrap_or_default();
    let mut out = service_dns_names(&names::collector(tc), &ns);
    out.extend(service_dns_names(&names::headless(tc), &ns));
    if tc.spec.visualizer.enabled {
        out.extend(service_dns_names(&names::visualizer(tc), &ns));
    }
    out
}

/// The managed Redis's names, and `localhost` for its own readiness probe; for a cluster, every
/// pod's name too (`<tc>-redis-<i>.<tc>-redis.<ns>.svc`, and with `.cluster.local`), which the
/// collectors dial as seeds and as the hostnames the nodes announce.
pub fn redis_dns_names(tc: &TraceCollector) -> Vec<String> {
    let mut out = service_dns_names(&names::redis(tc), &tc.namespace().unwrap_or_default());
    out.push("localhost".to_owned());
    if let Some(cluster) = redis_cluster::managed_cluster(tc) {
        for host in redis_cluster::pod_hosts(tc, cluster) {
            out.push(format!("{host}.cluster.local"));
            out.push(host);
        }
    }
    out
}

fn collector_key(tc: &TraceCollector) -> (String, String) {
    (tc.namespace().unwrap_or_default(), tc.name_any())
}

/// The collectors' Secret, when the operator issues it (TLS on, no `spec.tls.secretName`).
pub fn wanted_collector(tc: &TraceCollector) -> Option<Wanted> {
    let t = &tc.spec.tls;
    (t.enabled && t.secret_name.is_none()).then(|| Wanted {
        kind: Kind::Collector,
        name: names::collector_tls(tc),
        namespace: tc.namespace().unwrap_or_default(),
        common_name: format!(
            "{}.{}.svc",
            names::collector(tc),
            tc.namespace().unwrap_or_default()
        ),
        dns_names: collector_dns_names(tc),
        with_cert: true,
        collector: collector_key(tc),
        owner: tc.controller_owner_ref(&()),
    })
}

/// The managed Redis's Secret, with TLS on, Redis managed and no `spec.tls.secretName` (whose
/// certificate then serves Redis too).
pub fn wanted_redis(tc: &TraceCollector) -> Option<Wanted> {
    let t = &tc.spec.tls;
    let managed = tc.spec.storage.redis.external.is_none();
    (t.enabled && managed && t.secret_name.is_none()).then(|| Wanted {
        kind: Kind::Redis,
        name: names::redis_tls(tc),
        namespace: tc.namespace().unwrap_or_default(),
        common_name: format!(
            "{}.{}.svc",
            names::redis(tc),
            tc.namespace().unwrap_or_default()
        ),
        dns_names: redis_dns_names(tc),
        with_cert: true,
        collector: collector_key(tc),
        owner: tc.controller_owner_ref(&()),
    })
}

/// The sidecars' Secret in `pod_namespace`, with TLS on: `ca.crt` to verify the collectors and,
/// with mTLS, a client certificate. No owner: it lives outside the TraceCollector's namespace.
pub fn wanted_sidecar(tc: &TraceCollector, pod_namespace: &str) -> Option<Wanted> {
    tc.spec.tls.enabled.then(|| Wanted {
        kind: Kind::Sidecar,
        name: names::sidecar_tls(tc),
        namespace: pod_namespace.to_owned(),
        common_name: format!("clew-sidecar.{pod_namespace}"),
        dns_names: Vec::new(),
        with_cert: tc.spec.tls.mtls(),
        collector: collector_key(tc),
        owner: None,
    })
}

/// Why a Secret must be (re)issued: `new`, `names_changed`, `ca_changed` or `expiring`; `None`
/// when it is current. `trust` is the `ca.crt` it must hold.
pub fn reissue_reason(
    existing: Option<&Secret>,
    wanted: &Wanted,
    trust: &str,
    now: OffsetDateTime,
    renew_before: Duration,
) -> Option<&'static str> {
    let Some(s) = existing else {
        return Some("new");
    };
    let has = |k: &str| certs::data(s, k).is_some();
    if wanted.with_cert != (has(CERT_KEY) && has(KEY_KEY)) {
        return Some("new");
    }
    if certs::data(s, CA_KEY).as_deref() != Some(trust) {
        return Some("ca_changed");
    }
    if !wanted.with_cert {
        return None;
    }
    let names = s
        .annotations()
        .get(DNS_NAMES_ANNOTATION)
        .map(String::as_str);
    if names != Some(wanted.dns_names.join(",").as_str()) {
        return Some("names_changed");
    }
    match certs::not_after(s) {
        Some(t) if t - now.unix_timestamp() >= renew_before.as_secs() as i64 => None,
        _ => Some("expiring"),
    }
}

/// The Secret holding `trust` as `ca.crt` and, when issued, the certificate.
pub fn secret_for(
    wanted: &Wanted,
    trust: &str,
    issued: Option<&certs::Issued>,
    copied: bool,
) -> Secret {
    let mut labels = BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".to_owned(),
            FIELD_MANAGER.to_owned(),
        ),
        ("app.kubernetes.io/part-of".to_owned(), "clew".to_owned()),
        (
            CERTIFICATE_LABEL.to_owned(),
            wanted.kind.as_str().to_owned(),
        ),
        (
            COLLECTOR_NAMESPACE_LABEL.to_owned(),
            wanted.collector.0.clone(),
        ),
        (COLLECTOR_NAME_LABEL.to_owned(), wanted.collector.1.clone()),
    ]);
    labels.retain(|_, v| !v.is_empty());
    let mut annotations = BTreeMap::from([(
        TRUST_ANNOTATION.to_owned(),
        if copied { "copied" } else { "operator" }.to_owned(),
    )]);
    let mut data = BTreeMap::from([(CA_KEY.to_owned(), ByteString(trust.as_bytes().to_vec()))]);
    if let Some(i) = issued {
        annotations.insert(NOT_AFTER_ANNOTATION.to_owned(), i.not_after.to_string());
        annotations.insert(DNS_NAMES_ANNOTATION.to_owned(), wanted.dns_names.join(","));
        data.insert(
            CERT_KEY.to_owned(),
            ByteString(i.cert_pem.clone().into_bytes()),
        );
        data.insert(
            KEY_KEY.to_owned(),
            ByteString(i.key_pem.clone().into_bytes()),
        );
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(wanted.name.clone()),
            namespace: Some(wanted.namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: wanted.owner.clone().map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        // Opaque: a kubernetes.io/tls Secret must carry tls.crt, which a CA-only one lacks.
        type_: Some("Opaque".to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

/// The CA bundle a Secret must hold, and whether it is a copy of the user's (`secretName`).
#[derive(Clone, Debug)]
pub struct Trust {
    /// The PEM bundle.
    pub pem: String,
    /// Copied from `spec.tls.secretName` rather than the operator's CA.
    pub copied: bool,
}

/// Makes sure the Secret is current, issuing from `ca` and applying it in place when not.
/// Returns why it was (re)issued, if it was.
pub async fn ensure(
    client: &Client,
    wanted: &Wanted,
    ca: Option<&Authority>,
    trust: &Trust,
    policy: &Policy,
    metrics: &Metrics,
) -> Result<Option<&'static str>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &wanted.namespace);
    let existing = api.get_opt(&wanted.name).await?;
    let now = OffsetDateTime::now_utc();
    let Some(reason) = reissue_reason(
        existing.as_ref(),
        wanted,
        &trust.pem,
        now,
        policy.renew_before,
    ) else {
        return Ok(None);
    };
    let issued = if wanted.with_cert {
        let ca = ca.ok_or_else(|| {
            crate::Error::BadSecret(wanted.name.clone(), "no CA to issue from".to_owned())
        })?;
        Some(ca.issue(
            &wanted.common_name,
            &wanted.dns_names,
            wanted.kind.usage(),
            now,
            policy.validity,
        )?)
    } else {
        None
    };
    let secret = secret_for(wanted, &trust.pem, issued.as_ref(), trust.copied);
    api.patch(
        &wanted.name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&secret),
    )
    .await?;
    metrics
        .certificates_issued
        .with_label_values(&[wanted.kind.as_str(), reason])
        .inc();
    info!(secret = %wanted.name, namespace = %wanted.namespace, kind = wanted.kind.as_str(), reason, "issued certificate");
    Ok(Some(reason))
}

/// Makes sure the collectors' and the managed Redis's certificates (and the Redis password)
/// exist and are current, for a TraceCollector with `spec.tls`. Returns what was issued.
pub async fn ensure_for_collector(
    client: &Client,
    pki: &Pki,
    tc: &TraceCollector,
    metrics: &Metrics,
) -> Result<Vec<(Kind, &'static str)>> {
    let wanted: Vec<Wanted> = wanted_collector(tc)
        .into_iter()
        .chain(wanted_redis(tc))
        .collect();
    let mut issued = Vec::new();
    if !wanted.is_empty() {
        let ca = pki.authority(client).await?;
        let trust = Trust {
            pem: ca.bundle.clone(),
            copied: false,
        };
        for w in &wanted {
            if let Some(reason) = ensure(client, w, Some(&ca), &trust, &pki.policy, metrics).await?
            {
                issued.push((w.kind, reason));
            }
        }
    }
    ensure_redis_auth(client, tc).await?;
    Ok(issued)
}

/// Makes sure the sidecars' Secret in `pod_namespace` is current, for a TraceCollector with
/// `spec.tls` (the webhook calls it before injecting a pod). Its `ca.crt` is the operator's CA
/// bundle or, with `spec.tls.secretName`, a copy of that Secret's `ca.crt`.
pub async fn ensure_sidecar(
    client: &Client,
    pki: &Pki,
    tc: &TraceCollector,
    pod_namespace: &str,
    metrics: &Metrics,
) -> Result<()> {
    let Some(wanted) = wanted_sidecar(tc, pod_namespace) else {
        return Ok(());
    };
    let ca = if wanted.with_cert || tc.spec.tls.secret_name.is_none() {
        Some(pki.authority(client).await?)
    } else {
        None
    };
    let trust = match (&tc.spec.tls.secret_name, &ca) {
        (Some(user), _) => Trust {
            pem: copied_ca(client, &tc.namespace().unwrap_or_default(), user).await?,
            copied: true,
        },
        (None, Some(ca)) => Trust {
            pem: ca.bundle.clone(),
            copied: false,
        },
        (None, None) => return Ok(()),
    };
    ensure(client, &wanted, ca.as_ref(), &trust, &pki.policy, metrics).await?;
    Ok(())
}

/// The `ca.crt` of the user's Secret (`spec.tls.secretName`).
async fn copied_ca(client: &Client, namespace: &str, name: &str) -> Result<String> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get(name)
        .await?;
    certs::data(&secret, CA_KEY)
        .ok_or_else(|| crate::Error::BadSecret(name.to_owned(), format!("no {CA_KEY}")))
}

/// The Secret a rotation pass keeps current, reconstructed from the Secret itself (so a pass
/// needs no TraceCollector): `None` for a Secret whose `ca.crt` is a copy of the user's.
pub fn wanted_from_secret(secret: &Secret) -> Option<Wanted> {
    if secret
        .annotations()
        .get(TRUST_ANNOTATION)
        .map(String::as_str)
        != Some("operator")
    {
        return None;
    }
    let labels = secret.labels();
    let kind = Kind::parse(labels.get(CERTIFICATE_LABEL)?)?;
    let dns_names: Vec<String> = secret
        .annotations()
        .get(DNS_NAMES_ANNOTATION)
        .map(|n| {
            n.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let with_cert = certs::data(secret, CERT_KEY).is_some();
    let common_name = match (kind, dns_names.first()) {
        (Kind::Sidecar, _) | (_, None) => {
            format!("clew-sidecar.{}", secret.namespace().unwrap_or_default())
        }
        (_, Some(first)) => format!("{first}.{}.svc", secret.namespace().unwrap_or_default()),
    };
    Some(Wanted {
        kind,
        name: secret.name_any(),
        namespace: secret.namespace()?,
        common_name,
        dns_names,
        with_cert,
        collector: (
            labels
                .get(COLLECTOR_NAMESPACE_LABEL)
                .cloned()
                .unwrap_or_default(),
            labels
                .get(COLLECTOR_NAME_LABEL)
                .cloned()
                .unwrap_or_default(),
        ),
        owner: secret.owner_references().first().cloned(),
    })
}

/// Whether the TraceCollector still wants this Secret (it exists, with `spec.tls`, and would
/// issue this kind); TraceCollectors are looked up once per pass.
async fn still_wanted(
    client: &Client,
    seen: &mut BTreeMap<(String, String), Option<TraceCollector>>,
    wanted: &Wanted,
) -> Result<bool> {
    let key = wanted.collector.clone();
    if !seen.contains_key(&key) {
        let api: Api<TraceCollector> = Api::namespaced(client.clone(), &key.0);
        let tc = api.get_opt(&key.1).await?;
        seen.insert(key.clone(), tc);
    }
    let Some(tc) = seen.get(&key).and_then(Option::as_ref) else {
        return Ok(false);
    };
    Ok(match wanted.kind {
        Kind::Collector => wanted_collector(tc).is_some(),
        Kind::Redis => wanted_redis(tc).is_some(),
        Kind::Sidecar => tc.spec.tls.enabled,
    })
}

/// Deletes a Secret no TraceCollector wants any more (the sidecars' live outside the
/// TraceCollector's namespace, so no owner reference collects them).
async fn remove(client: &Client, wanted: &Wanted) -> Result<()> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &wanted.namespace);
    match api.delete(&wanted.name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.is_not_found() => {}
        Err(e) => return Err(e.into()),
    }
    info!(secret = %wanted.name, namespace = %wanted.namespace, "removed a certificate no TraceCollector uses");
    Ok(())
}

/// Re-issues one Secret if due, or removes it if unwanted; whether it was re-issued.
async fn rotate_one(
    client: &Client,
    pki: &Pki,
    ca: &Authority,
    seen: &mut BTreeMap<(String, String), Option<TraceCollector>>,
    wanted: &Wanted,
    metrics: &Metrics,
) -> Result<bool> {
    if !still_wanted(client, seen, wanted).await? {
        remove(client, wanted).await?;
        return Ok(false);
    }
    let trust = Trust {
        pem: ca.bundle.clone(),
        copied: false,
    };
    let issued = ensure(client, wanted, Some(ca), &trust, &pki.policy, metrics).await?;
    Ok(issued.is_some())
}

/// One rotation pass: every Secret the operator issued, in any namespace, re-issued in place
/// when it expires within `renew_before` or was issued under another CA, and removed when
/// its TraceCollector is gone or no longer uses it. Returns how many were re-issued.
pub async fn rotate_all(client: &Client, pki: &Pki, metrics: &Metrics) -> Result<u64> {
    let ca = pki.authority(client).await?;
    let secrets = Api::<Secret>::all(client.clone())
        .list(&ListParams::default().labels(CERTIFICATE_LABEL))
        .await?;
    let mut wanted: Vec<Wanted> = secrets.iter().filter_map(wanted_from_secret).collect();
    // Collectors first: they trust the old and the new CA at once, so sidecars still on the
    // old CA keep reaching them while their own Secrets are re-issued.
    wanted.sort_by_key(|w| w.kind == Kind::Sidecar);
    let mut seen = BTreeMap::new();
    let mut rotated = 0;
    for wanted in &wanted {
        match rotate_one(client, pki, &ca, &mut seen, wanted, metrics).await {
            Ok(true) => rotated += 1,
            Ok(false) => {}
            Err(e) => {
                warn!(secret = %wanted.name, namespace = %wanted.namespace, error = %e, "re-issuing a certificate")
            }
        }
    }
    Ok(rotated)
}

/// Key of the managed Redis's password in its auth Secret (mounted into the collectors).
pub const REDIS_PASSWORD_KEY: &str = "password";
/// Key of the managed Redis's ACL file in its auth Secret (mounted into Redis): the password
/// appears there only as its SHA-256.
pub const REDIS_ACL_KEY: &str = "users.acl";
/// The ACL user the collectors log in to the managed Redis as.
pub const REDIS_USER: &str = "clew";

/// A random password: 32 bytes from the system's CSPRNG, hex-encoded.
fn random_password() -> Result<String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| {
            crate::Error::BadSecret("redis-auth".to_owned(), "no randomness".to_owned())
        })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The managed Redis's ACL file: the default user off, [`REDIS_USER`] with every right and the
/// password's SHA-256 (`#<hex>`), so the password itself is not in Redis's configuration.
pub fn redis_acl(password: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, password.as_bytes());
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("user default off\nuser {REDIS_USER} on #{hex} ~* &* +@all\n")
}

/// The managed Redis's auth Secret for `password`.
pub fn redis_auth_secret(tc: &TraceCollector, password: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(names::redis_auth(tc)),
            namespace: tc.namespace(),
            labels: Some(crate::desired::labels(tc, crate::desired::Component::Redis)),
            owner_references: tc.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([
            (
                REDIS_PASSWORD_KEY.to_owned(),
                ByteString(password.as_bytes().to_vec()),
            ),
            (
                REDIS_ACL_KEY.to_owned(),
                ByteString(redis_acl(password).into_bytes()),
            ),
        ])),
        ..Secret::default()
    }
}

/// Creates the managed Redis's password once (TLS on, Redis managed). An existing password is
/// kept as it is: changing it would lock the running collectors out, so it is never rotated
/// silently (delete the Secret to get a new one). Returns whether it was created.
pub async fn ensure_redis_auth(client: &Client, tc: &TraceCollector) -> Result<bool> {
    if !tc.spec.tls.enabled || tc.spec.storage.redis.external.is_some() {
        return Ok(false);
    }
    let api: Api<Secret> = Api::namespaced(client.clone(), &tc.namespace().unwrap_or_default());
    let name = names::redis_auth(tc);
    if let Some(s) = api.get_opt(&name).await?
        && certs::data(&s, REDIS_PASSWORD_KEY).is_some()
        && certs::data(&s, REDIS_ACL_KEY).is_some()
    {
        return Ok(false);
    }
    let secret = redis_auth_secret(tc, &random_password()?);
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&secret),
    )
    .await?;
    info!(secret = %name, "created the managed Redis password");
    Ok(true)
}

#[cfg(test)]
mod tests;
