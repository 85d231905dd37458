//! Certificates the operator issues, checked with rustls's WebPKI verifiers (not ours), and
//! their rotation against a mock API server.

use std::sync::Arc;

use http::Method;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::{Value, json};

use super::*;
use crate::certs::CertConfig;
use crate::controller::Context;
use crate::fixtures::{CA_SECRET, NS, OPERATOR_NS, pki, tc};

const DAY: Duration = Duration::from_secs(86400);

fn tls_tc(name: &str) -> TraceCollector {
    let mut t = tc(name);
    t.spec.tls.enabled = true;
    t
}

/// The operator's Secret with a fresh CA, as `certs::ensure` writes it.
fn ca_secret(now: OffsetDateTime, previous_ca: Option<&str>) -> (Secret, Authority) {
    let cfg = CertConfig {
        namespace: OPERATOR_NS.into(),
        service: "clew-operator-webhook".into(),
        secret: CA_SECRET.into(),
        webhook_configuration: "clew-operator".into(),
        validity: 365 * DAY,
        renew_before: 30 * DAY,
    };
    let bundle = certs::generate(&cfg.service, &cfg.namespace, now, cfg.validity).unwrap();
    let secret = certs::secret_for(&cfg, &bundle, previous_ca);
    let ca = Authority::from_secret(&secret).unwrap();
    (secret, ca)
}

fn roots(bundle: &str) -> Arc<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    Arc::new(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn leaf(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// Whether a TLS client trusting `bundle` accepts `cert` for `name` (rustls's WebPKI verifier).
fn server_ok(bundle: &str, cert: &str, name: &str) -> bool {
    let v = rustls::client::WebPkiServerVerifier::builder_with_provider(roots(bundle), provider())
        .build()
        .unwrap();
    let name = ServerName::try_from(name.to_owned()).unwrap();
    v.verify_server_cert(&leaf(cert), &[], &name, &[], UnixTime::now())
        .is_ok()
}

/// Whether an mTLS server trusting `bundle` accepts `cert` as a client certificate.
fn client_ok(bundle: &str, cert: &str) -> bool {
    let v = rustls::server::WebPkiClientVerifier::builder_with_provider(roots(bundle), provider())
        .build()
        .unwrap();
    v.verify_client_cert(&leaf(cert), &[], UnixTime::now())
        .is_ok()
}

fn issue(ca: &Authority, w: &Wanted) -> certs::Issued {
    let now = OffsetDateTime::now_utc();
    ca.issue(&w.common_name, &w.dns_names, w.kind.usage(), now, 365 * DAY)
        .unwrap()
}

#[test]
fn the_collector_certificate_serves_every_service_name_and_is_a_client_too() {
    let (_, ca) = ca_secret(OffsetDateTime::now_utc(), None);
    let t = tls_tc("main");
    let w = wanted_collector(&t).unwrap();
    let cert = issue(&ca, &w).cert_pem;
    for svc in [
        "main-collector",
        "main-collector-headless",
        "main-visualizer",
    ] {
        for name in [
            svc.to_owned(),
            format!("{svc}.{NS}"),
            format!("{svc}.{NS}.svc"),
            format!("{svc}.{NS}.svc.cluster.local"),
        ] {
            assert!(server_ok(&ca.bundle, &cert, &name), "{name}");
        }
    }
    assert!(!server_ok(&ca.bundle, &cert, "main-redis.traces.svc"));
    assert!(!server_ok(&ca.bundle, &cert, "main-collector.other.svc"));
    // Presented to peers and the query API under mTLS.
    assert!(client_ok(&ca.bundle, &cert));
    // Another CA's clients do not trust it.
    let (_, other) = ca_secret(OffsetDateTime::now_utc(), None);
    assert!(!server_ok(
        &other.bundle,
        &cert,
        "main-collector.traces.svc"
    ));
    assert!(!client_ok(&other.bundle, &cert));
}

#[test]
fn without_the_visualizer_its_names_are_not_in_the_certificate() {
    let mut t = tls_tc("main");
    t.spec.visualizer.enabled = false;
    let names = wanted_collector(&t).unwrap().dns_names;
    assert_eq!(names.len(), 8);
    assert!(!names.iter().any(|n| n.contains("visualizer")));
}

#[test]
fn sidecar_certificates_are_clients_only_and_redis_ones_servers_and_clients() {
    let (_, ca) = ca_secret(OffsetDateTime::now_utc(), None);
    let t = tls_tc("main");
    let sidecar = wanted_sidecar(&t, "shop").unwrap();
    assert!(sidecar.with_cert);
    assert_eq!(sidecar.name, "clew-sidecar-tls-traces-main");
    assert_eq!(sidecar.namespace, "shop");
    let cert = issue(&ca, &sidecar).cert_pem;
    assert!(client_ok(&ca.bundle, &cert));
    assert!(!server_ok(&ca.bundle, &cert, "main-collector.traces.svc"));

    let redis = wanted_redis(&t).unwrap();
    let cert = issue(&ca, &redis).cert_pem;
    for name in [
        "main-redis.traces.svc",
        "main-redis.traces.svc.cluster.local",
        "localhost",
    ] {
        assert!(server_ok(&ca.bundle, &cert, name), "{name}");
    }
    // A replica presents it to its master, a cluster node to its peers.
    assert!(client_ok(&ca.bundle, &cert));
}

#[test]
fn a_managed_redis_cluster_certificate_names_every_pod() {
    let (_, ca) = ca_secret(OffsetDateTime::now_utc(), None);
    let mut t = tls_tc("main");
    t.spec.storage.redis.managed = Some(crate::crd::ManagedRedis {
        cluster: Some(crate::crd::ManagedRedisCluster { shards: 3 }),
        ..crate::crd::ManagedRedis::default()
    });
    let redis = wanted_redis(&t).unwrap();
    let cert = issue(&ca, &redis).cert_pem;
    // The seeds the collectors dial and the hostnames the nodes announce.
    for i in 0..6 {
        for name in [
            format!("main-redis-{i}.main-redis.traces.svc"),
            format!("main-redis-{i}.main-redis.traces.svc.cluster.local"),
        ] {
            assert!(server_ok(&ca.bundle, &cert, &name), "{name}");
        }
    }
    assert!(server_ok(&ca.bundle, &cert, "main-redis.traces.svc"));
    assert!(server_ok(&ca.bundle, &cert, "localhost"));
    assert!(!server_ok(
        &ca.bundle,
        &cert,
        "main-redis-6.main-redis.traces.svc"
    ));
    // The cluster bus asks every node for a client certificate.
    assert!(client_ok(&ca.bundle, &cert));
    // A single Redis's certificate has no pod names; the names changing re-issues it.
    let single = wanted_redis(&tls_tc("main")).unwrap();
    assert!(
        !single
            .dns_names
            .iter()
            .any(|n| n.starts_with("main-redis-"))
    );
    assert_eq!(redis.dns_names.len(), single.dns_names.len() + 12);
}

#[test]
fn what_is_issued_follows_the_spec() {
    let plain = tc("main");
    assert!(wanted_collector(&plain).is_none());
    assert!(wanted_redis(&plain).is_none());
    assert!(wanted_sidecar(&plain, "shop").is_none());
    // Your own certificate: the operator issues none for the collectors, and the sidecars
    // get only the CA (no mTLS by default).
    let mut own = tls_tc("main");
    own.spec.tls.secret_name = Some("clew-tls".into());
    assert!(wanted_collector(&own).is_none());
    assert!(!wanted_sidecar(&own, "shop").unwrap().with_cert);
    assert!(wanted_redis(&own).is_none());
    let mut external = tls_tc("main");
    external.spec.storage.redis.external = Some(crate::crd::ExternalRedis::new("redis"));
    assert!(wanted_redis(&external).is_none());
    let mut no_mtls = tls_tc("main");
    no_mtls.spec.tls.client_auth = Some(false);
    assert!(!wanted_sidecar(&no_mtls, "shop").unwrap().with_cert);
}

#[test]
fn a_certificate_is_reissued_when_new_renamed_under_another_ca_or_expiring() {
    let now = OffsetDateTime::now_utc();
    let (_, ca) = ca_secret(now, None);
    let t = tls_tc("main");
    let w = wanted_collector(&t).unwrap();
    let renew = 30 * DAY;
    let current = secret_for(&w, &ca.bundle, Some(&issue(&ca, &w)), false);
    assert_eq!(
        reissue_reason(None, &w, &ca.bundle, now, renew),
        Some("new")
    );
    assert_eq!(
        reissue_reason(Some(&current), &w, &ca.bundle, now, renew),
        None
    );
    // 340 days on, less than 30 remain.
    let later = now + 340 * DAY;
    assert_eq!(
        reissue_reason(Some(&current), &w, &ca.bundle, later, renew),
        Some("expiring")
    );
    let (_, rotated) = ca_secret(now, Some(&ca.bundle));
    assert_eq!(
        reissue_reason(Some(&current), &w, &rotated.bundle, now, renew),
        Some("ca_changed")
    );
    let mut without_visualizer = t.clone();
    without_visualizer.spec.visualizer.enabled = false;
    let renamed = wanted_collector(&without_visualizer).unwrap();
    assert_eq!(
        reissue_reason(Some(&current), &renamed, &ca.bundle, now, renew),
        Some("names_changed")
    );
    // A sidecar Secret that must gain a client certificate (mTLS turned on).
    let ca_only = secret_for(&w, &ca.bundle, None, false);
    assert_eq!(
        reissue_reason(Some(&ca_only), &w, &ca.bundle, now, renew),
        Some("new")
    );
}

#[test]
fn the_issued_certificate_never_outlives_the_ca() {
    let now = OffsetDateTime::now_utc();
    let (_, ca) = ca_secret(now, None);
    let w = wanted_collector(&tls_tc("main")).unwrap();
    let issued = ca
        .issue(&w.common_name, &w.dns_names, Usage::Server, now, 3650 * DAY)
        .unwrap();
    assert_eq!(issued.not_after, ca.not_after);
}

#[test]
fn a_secret_reconstructs_what_to_reissue() {
    let (_, ca) = ca_secret(OffsetDateTime::now_utc(), None);
    let t = tls_tc("main");
    for w in [
        wanted_collector(&t).unwrap(),
        wanted_redis(&t).unwrap(),
        wanted_sidecar(&t, "shop").unwrap(),
    ] {
        let s = secret_for(&w, &ca.bundle, Some(&issue(&ca, &w)), false);
        let back = wanted_from_secret(&s).unwrap();
        assert_eq!(
            (
                back.kind,
                &back.name,
                &back.namespace,
                &back.dns_names,
                back.with_cert,
                &back.collector
            ),
            (
                w.kind,
                &w.name,
                &w.namespace,
                &w.dns_names,
                w.with_cert,
                &w.collector
            )
        );
        assert_eq!(back.owner, w.owner);
    }
    // A copy of the user's CA is refreshed at admission, not by the rotation pass.
    let w = wanted_sidecar(&t, "shop").unwrap();
    assert!(wanted_from_secret(&secret_for(&w, "PEM", None, true)).is_none());
}

fn secret_path(ns: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{ns}/secrets/{name}")
}

fn to_json(s: &Secret) -> Value {
    let mut v = serde_json::to_value(s).unwrap();
    v["apiVersion"] = json!("v1");
    v["kind"] = json!("Secret");
    v
}

fn decode(v: &Value, key: &str) -> String {
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD
        .decode(v["data"][key].as_str().unwrap())
        .unwrap();
    String::from_utf8(b).unwrap()
}

/// A Secret `w` issued `age` ago for a year (or as long as `ca` lasts).
fn issued_at(ca: &Authority, w: &Wanted, issued_on: OffsetDateTime) -> Secret {
    let i = ca
        .issue(
            &w.common_name,
            &w.dns_names,
            w.kind.usage(),
            issued_on,
            365 * DAY,
        )
        .unwrap();
    secret_for(w, &ca.bundle, Some(&i), false)
}

#[tokio::test]
async fn rotation_reissues_in_place_what_expires_or_has_another_ca_and_leaves_the_rest() {
    let now = OffsetDateTime::now_utc();
    let (ca_secret_obj, ca) = ca_secret(now, None);
    let (_, old_ca) = ca_secret(now - 400 * DAY, None);
    let t = tls_tc("main");
    let fresh = wanted_collector(&t).unwrap();
    let expiring = wanted_sidecar(&t, "shop").unwrap();
    let stale_ca = wanted_redis(&t).unwrap();
    let fresh_s = issued_at(&ca, &fresh, now);
    // Issued 340 days ago for a year: 25 days left, within the 30-day window.
    let mut expiring_s = issued_at(&ca, &expiring, now);
    let soon = (now + 25 * DAY).unix_timestamp().to_string();
    expiring_s
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(NOT_AFTER_ANNOTATION.into(), soon);
    let stale_s = issued_at(&old_ca, &stale_ca, now - 10 * DAY);

    let (ctx, mut v) = Context::test();
    let orphan_s = issued_at(&ca, &wanted_sidecar(&tls_tc("gone"), "shop").unwrap(), now);
    let mut items: Vec<Value> = [&fresh_s, &expiring_s, &stale_s].map(to_json).to_vec();
    items.push(to_json(&orphan_s));
    let t = t.clone();
    let (fresh_j, expiring_j, stale_j) = (items[0].clone(), items[1].clone(), items[2].clone());
    let ca_j = to_json(&ca_secret_obj);
    let server = tokio::spawn(async move {
        v.expect(Method::GET, &secret_path(OPERATOR_NS, CA_SECRET))
            .await
            .ok(&ca_j);
        let list = v.expect(Method::GET, "/api/v1/secrets").await;
        assert!(
            list.uri.contains("labelSelector=clew.dev%2Fcertificate"),
            "{}",
            list.uri
        );
        list.ok(&json!({"apiVersion": "v1", "kind": "SecretList", "metadata": {}, "items": items}));
        // The TraceCollector is looked up once for its three Secrets.
        let tc_path = format!("/apis/clew.dev/v1alpha1/namespaces/{NS}/tracecollectors/main");
        v.expect(Method::GET, &tc_path)
            .await
            .ok(&serde_json::to_value(&t).unwrap());
        // Far from expiry under the current CA: read, left alone.
        v.expect(Method::GET, &secret_path(NS, "main-collector-tls"))
            .await
            .ok(&fresh_j);
        // Under the previous CA: re-issued (collectors and Redis before the sidecars).
        let redis = secret_path(NS, "main-redis-tls");
        v.expect(Method::GET, &redis).await.ok(&stale_j);
        let reissued = v.apply(&redis, |_| {}).await;
        // Expiring: the same Secret, re-issued in place.
        let sidecar = secret_path("shop", "clew-sidecar-tls-traces-main");
        v.expect(Method::GET, &sidecar).await.ok(&expiring_j);
        let renewed = v.apply(&sidecar, |_| {}).await;
        // The sidecars' Secret of a TraceCollector that is gone: removed.
        let gone = format!("/apis/clew.dev/v1alpha1/namespaces/{NS}/tracecollectors/gone");
        v.not_found(&gone).await;
        let orphan = secret_path("shop", "clew-sidecar-tls-traces-gone");
        v.expect(Method::DELETE, &orphan)
            .await
            .ok(&json!({"apiVersion": "v1", "kind": "Status", "status": "Success"}));
        (v, renewed, reissued)
    });
    let n = rotate_all(&ctx.client, &pki(), &ctx.metrics).await.unwrap();
    let (mut v, renewed, reissued) = server.await.unwrap();
    v.assert_silent();
    assert_eq!(n, 2);
    let issued = |kind, reason| {
        ctx.metrics
            .certificates_issued
            .with_label_values(&[kind, reason])
            .get()
    };
    assert_eq!(issued("sidecar", "expiring"), 1);
    assert_eq!(issued("redis", "ca_changed"), 1);
    assert_eq!(issued("collector", "expiring"), 0);

    let not_after: i64 = renewed["metadata"]["annotations"][NOT_AFTER_ANNOTATION]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(not_after > (now + 300 * DAY).unix_timestamp());
    assert_eq!(renewed["metadata"]["labels"][CERTIFICATE_LABEL], "sidecar");
    assert!(client_ok(&ca.bundle, &decode(&renewed, CERT_KEY)));
    assert_eq!(decode(&reissued, CA_KEY), ca.bundle);
    assert!(server_ok(
        &ca.bundle,
        &decode(&reissued, CERT_KEY),
        "main-redis.traces.svc"
    ));
    assert!(!server_ok(
        &old_ca.bundle,
        &decode(&reissued, CERT_KEY),
        "main-redis.traces.svc"
    ));
    // Owned by the TraceCollector, as it was.
    assert_eq!(
        reissued["metadata"]["ownerReferences"][0]["uid"],
        crate::fixtures::UID
    );
}

#[tokio::test]
async fn a_tls_collector_gets_its_certificates_and_a_redis_password_once() {
    let now = OffsetDateTime::now_utc();
    let (ca_secret_obj, ca) = ca_secret(now, None);
    let t = tls_tc("main");
    let (ctx, mut v) = Context::test();
    let ca_j = to_json(&ca_secret_obj);
    let server = tokio::spawn(async move {
        v.expect(Method::GET, &secret_path(OPERATOR_NS, CA_SECRET))
            .await
            .ok(&ca_j);
        v.not_found(&secret_path(NS, "main-collector-tls")).await;
        let collector = v
            .apply(&secret_path(NS, "main-collector-tls"), |_| {})
            .await;
        v.not_found(&secret_path(NS, "main-redis-tls")).await;
        let redis = v.apply(&secret_path(NS, "main-redis-tls"), |_| {}).await;
        v.not_found(&secret_path(NS, "main-redis-auth")).await;
        let auth = v.apply(&secret_path(NS, "main-redis-auth"), |_| {}).await;
        (v, collector, redis, auth)
    });
    let issued = ensure_for_collector(&ctx.client, &pki(), &t, &ctx.metrics)
        .await
        .unwrap();
    let (mut v, collector, redis, auth) = server.await.unwrap();
    v.assert_silent();
    assert_eq!(issued, vec![(Kind::Collector, "new"), (Kind::Redis, "new")]);
    assert!(server_ok(
        &ca.bundle,
        &decode(&collector, CERT_KEY),
        "main-collector-headless.traces.svc"
    ));
    assert!(server_ok(
        &ca.bundle,
        &decode(&redis, CERT_KEY),
        "main-redis.traces.svc"
    ));
    let password = decode(&auth, REDIS_PASSWORD_KEY);
    assert_eq!(password.len(), 64);
    let acl = decode(&auth, REDIS_ACL_KEY);
    assert!(acl.starts_with("user default off\nuser clew on #"), "{acl}");
    // Only the password's hash is in Redis's configuration.
    assert!(!acl.contains(&password));
    assert_eq!(
        auth["metadata"]["ownerReferences"][0]["kind"],
        "TraceCollector"
    );

    // A second pass: everything current, the password kept.
    let (collector_s, redis_s, auth_s) = (collector.clone(), redis.clone(), auth.clone());
    let ca_j = to_json(&ca_secret_obj);
    let server = tokio::spawn(async move {
        v.expect(Method::GET, &secret_path(OPERATOR_NS, CA_SECRET))
            .await
            .ok(&ca_j);
        v.expect(Method::GET, &secret_path(NS, "main-collector-tls"))
            .await
            .ok(&collector_s);
        v.expect(Method::GET, &secret_path(NS, "main-redis-tls"))
            .await
            .ok(&redis_s);
        v.expect(Method::GET, &secret_path(NS, "main-redis-auth"))
            .await
            .ok(&auth_s);
        v
    });
    let issued = ensure_for_collector(&ctx.client, &pki(), &t, &ctx.metrics)
        .await
        .unwrap();
    server.await.unwrap().assert_silent();
    assert!(issued.is_empty());
}

#[tokio::test]
async fn without_tls_nothing_is_read_or_written() {
    let (ctx, mut v) = Context::test();
    let issued = ensure_for_collector(&ctx.client, &pki(), &tc("main"), &ctx.metrics)
        .await
        .unwrap();
    assert!(issued.is_empty());
    v.assert_silent();
}

#[test]
fn a_webhook_secret_without_the_ca_key_issues_nothing_and_is_renewed() {
    let now = OffsetDateTime::now_utc();
    let (mut s, _) = ca_secret(now, None);
    assert!(!certs::needs_renewal(Some(&s), now, 30 * DAY));
    // As cert-manager (or an operator from before spec.tls) writes it: no CA key.
    s.data.as_mut().unwrap().remove(certs::CA_PRIVATE_KEY);
    let err = Authority::from_secret(&s).unwrap_err().to_string();
    assert!(
        err.contains("no ca.key") && err.contains("spec.tls.secretName"),
        "{err}"
    );
    // The operator's own Secret then gets a new CA (with its key) on the next check.
    assert!(certs::needs_renewal(Some(&s), now, 30 * DAY));
}
