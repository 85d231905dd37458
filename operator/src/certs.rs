//! Webhook TLS without cert-manager: a self-signed CA and a serving certificate, kept in a
//! Secret, rotated before they expire, with the CA patched into the
//! MutatingWebhookConfiguration's `caBundle`.
//!
//! The leader writes the Secret; every replica serves the certificate it finds there, so all
//! replicas behind the webhook Service present the same chain.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;
use tracing::info;

use crate::desired::FIELD_MANAGER;
use crate::metrics::Metrics;
use crate::{Error, Result};

/// Secret annotation: Unix time at which the serving certificate expires.
pub const NOT_AFTER_ANNOTATION: &str = "clew.dev/not-after";
/// Secret key of the CA bundle (current CA, then the previous one during a rotation).
pub const CA_KEY: &str = "ca.crt";
/// Secret key of the serving certificate.
pub const CERT_KEY: &str = "tls.crt";
/// Secret key of the serving key.
pub const KEY_KEY: &str = "tls.key";
/// Secret key of the CA's private key (in the operator's own Secret only): the CA signs the
/// collectors', sidecars' and Redis's certificates too (see [`crate::tls`]).
pub const CA_PRIVATE_KEY: &str = "ca.key";
/// Common name of the operator's CA.
const CA_COMMON_NAME: &str = "clew-operator webhook CA";

/// Where the webhook certificate lives and how long it lasts.
#[derive(Clone, Debug)]
pub struct CertConfig {
    /// Namespace of the operator, its Service and the Secret.
    pub namespace: String,
    /// Name of the webhook Service (the certificate's DNS names derive from it).
    pub service: String,
    /// Name of the Secret holding the CA and serving certificate.
    pub secret: String,
    /// Name of the MutatingWebhookConfiguration whose `caBundle` is kept current.
    pub webhook_configuration: String,
    /// Lifetime of a generated certificate.
    pub validity: Duration,
    /// Regenerate when less than this remains.
    pub renew_before: Duration,
}

/// A CA and a serving certificate it signed, PEM-encoded.
#[derive(Clone, Debug)]
pub struct Bundle {
    /// The CA certificate.
    pub ca_pem: String,
    /// The CA's private key.
    pub ca_key_pem: String,
    /// The serving certificate.
    pub cert_pem: String,
    /// The serving certificate's private key.
    pub key_pem: String,
    /// Unix time at which both expire.
    pub not_after: i64,
}

/// The DNS names the API server may use for the webhook Service.
pub fn dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// Generates a fresh CA and a serving certificate for the webhook Service, valid from `now`.
pub fn generate(
    service: &str,
    namespace: &str,
    now: OffsetDateTime,
    validity: Duration,
) -> Result<Bundle> {
    let not_before = now - time::Duration::minutes(5);
    let not_after = now + validity;

    let ca_key = KeyPair::generate()?;
    let ca_key_pem = ca_key.serialize_pem();
    let mut ca = ca_params()?;
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(dns_names(service, namespace))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{service}.{namespace}.svc"));
    leaf.distinguished_name = dn;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = not_before;
    leaf.not_after = not_after;
    let cert = leaf.signed_by(&key, &issuer)?;

    Ok(Bundle {
        ca_pem: ca_cert.pem(),
        ca_key_pem,
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_after: not_after.unix_timestamp(),
    })
}

/// The CA's name and constraints; what an issuer needs besides the key (the certificates it
/// signs name the CA by this distinguished name and key identifier).
fn ca_params() -> Result<CertificateParams> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    ca.distinguished_name = dn;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(ca)
}

/// What a certificate the operator issues is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// A server (Redis).
    Server,
    /// A client (sidecars).
    Client,
    /// Both: collectors serve, and present the same certificate to their peers.
    ServerAndClient,
}

/// A certificate and key issued by the operator's CA, PEM-encoded.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
    /// Unix time at which it expires.
    pub not_after: i64,
}

/// The operator's CA, as read from its Secret: it signs certificates for the pipeline.
#[derive(Clone)]
pub struct Authority {
    /// The CA bundle to trust: the current CA, then the previous one during a rotation.
    pub bundle: String,
    /// Unix time at which the CA expires; nothing it issues outlives it.
    pub not_after: i64,
    key_pem: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// The CA in the operator's Secret; an error when the Secret has no CA key (cert-manager
    /// manages the webhook certificate, so the operator has nothing to sign with).
    pub fn from_secret(secret: &Secret) -> Result<Self> {
        let name = secret.metadata.name.clone().unwrap_or_default();
        let missing = |k: &str| {
            Error::BadSecret(
                name.clone(),
                format!(
                    "no {k}: the operator has no CA to issue certificates with (is cert-manager managing the webhook certificate? then set spec.tls.secretName)"
                ),
            )
        };
        let bundle = data(secret, CA_KEY).ok_or_else(|| missing(CA_KEY))?;
        let key_pem = data(secret, CA_PRIVATE_KEY).ok_or_else(|| missing(CA_PRIVATE_KEY))?;
        let not_after = not_after(secret).ok_or_else(|| missing(NOT_AFTER_ANNOTATION))?;
        Ok(Self {
            bundle,
            not_after,
            key_pem,
        })
    }

    /// Issues a certificate for `dns_names` (and `common_name`) valid from `now` for
    /// `validity`, but never beyond the CA's own expiry.
    pub fn issue(
        &self,
        common_name: &str,
        dns_names: &[String],
        usage: Usage,
        now: OffsetDateTime,
        validity: Duration,
    ) -> Result<Issued> {
        let not_after = (now + validity).min(
            OffsetDateTime::from_unix_timestamp(self.not_after)
                .map_err(|e| Error::BadSecret("CA".to_owned(), e.to_string()))?,
        );
        let issuer = Issuer::new(ca_params()?, KeyPair::from_pem(&self.key_pem)?);
        let key = KeyPair::generate()?;
        let mut leaf = CertificateParams::new(dns_names.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        leaf.distinguished_name = dn;
        leaf.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        leaf.extended_key_usages = match usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::ServerAndClient => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        leaf.not_before = now - time::Duration::minutes(5);
        leaf.not_after = not_after;
        let cert = leaf.signed_by(&key, &issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after: not_after.unix_timestamp(),
        })
    }
}

/// The `clew.dev/not-after` annotation of a Secret.
pub fn not_after(secret: &Secret) -> Option<i64> {
    secret
        .metadata
        .annotations
        .as_ref()?
        .get(NOT_AFTER_ANNOTATION)?
        .parse()
        .ok()
}

/// A key of a Secret's data as UTF-8.
pub fn data(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

/// Whether the Secret is missing, incomplete, or expires within `renew_before` of `now`.
pub fn needs_renewal(secret: Option<&Secret>, now: OffsetDateTime, renew_before: Duration) -> bool {
    let Some(s) = secret else { return true };
    // A Secret from before the operator issued certificates has no CA key: a new CA.
    if [CA_KEY, CERT_KEY, KEY_KEY, CA_PRIVATE_KEY]
        .iter()
        .any(|k| data(s, k).is_none())
    {
        return true;
    }
    match not_after(s) {
        Some(t) => t - (now.unix_timestamp()) < renew_before.as_secs() as i64,
        None => true,
    }
}

/// The serving certificate and key from a Secret (also one written by cert-manager).
pub fn serving_pair(secret: &Secret) -> Result<(String, String)> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let get =
        |k: &str| data(secret, k).ok_or_else(|| Error::BadSecret(name.clone(), format!("no {k}")));
    Ok((get(CERT_KEY)?, get(KEY_KEY)?))
}

/// The Secret for a bundle; `previous_ca` stays in the CA bundle so that replicas still
/// serving the old certificate are trusted until they reload.
pub fn secret_for(cfg: &CertConfig, bundle: &Bundle, previous_ca: Option<&str>) -> Secret {
    let mut ca = bundle.ca_pem.clone();
    if let Some(prev) = previous_ca {
        // Only the first (current) CA of the old bundle: bundles never grow beyond two.
        if let Some(first) = first_pem(prev) {
            ca.push_str(&first);
        }
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(cfg.secret.clone()),
            namespace: Some(cfg.namespace.clone()),
            annotations: Some(BTreeMap::from([(
                NOT_AFTER_ANNOTATION.to_owned(),
                bundle.not_after.to_string(),
            )])),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_owned(),
                FIELD_MANAGER.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(BTreeMap::from([
            (CA_KEY.to_owned(), ByteString(ca.into_bytes())),
            (
                CERT_KEY.to_owned(),
                ByteString(bundle.cert_pem.clone().into_bytes()),
            ),
            (
                KEY_KEY.to_owned(),
                ByteString(bundle.key_pem.clone().into_bytes()),
            ),
            (
                CA_PRIVATE_KEY.to_owned(),
                ByteString(bundle.ca_key_pem.clone().into_bytes()),
            ),
        ])),
        ..Secret::default()
    }
}

/// The first certificate of a PEM bundle.
pub fn first_pem(bundle: &str) -> Option<String> {
    const END: &str = "-----END CERTIFICATE-----";
    let end = bundle.find(END)? + END.len();
    Some(format!("{}\n", bundle[..end].trim_start()))
}

/// Makes sure the Secret holds a certificate that is not about to expire (generating and
/// rotating as needed), and that the webhook configuration trusts its CA. Returns the Secret.
pub async fn ensure(client: &Client, cfg: &CertConfig, metrics: &Metrics) -> Result<Secret> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &cfg.namespace);
    let existing = secrets.get_opt(&cfg.secret).await?;
    let now = OffsetDateTime::now_utc();
    let secret = if needs_renewal(existing.as_ref(), now, cfg.renew_before) {
        let bundle = generate(&cfg.service, &cfg.namespace, now, cfg.validity)?;
        let prev_ca = existing.as_ref().and_then(|s| data(s, CA_KEY));
        let desired = secret_for(cfg, &bundle, prev_ca.as_deref());
        let applied = secrets
            .patch(
                &cfg.secret,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&desired),
            )
            .await?;
        metrics.cert_rotations.inc();
        info!(secret = %cfg.secret, not_after = bundle.not_after, "generated webhook certificate");
        applied
    } else {
        existing.ok_or_else(|| Error::BadSecret(cfg.secret.clone(), "vanished".to_owned()))?
    };
    if let Some(t) = not_after(&secret) {
        metrics.cert_not_after.set(t);
    }
    let ca = data(&secret, CA_KEY)
        .ok_or_else(|| Error::BadSecret(cfg.secret.clone(), format!("no {CA_KEY}")))?;
    patch_ca_bundle(client, &cfg.webhook_configuration, ca.as_bytes()).await?;
    Ok(secret)
}

/// Sets `caBundle` on every webhook of the configuration, if it differs.
pub async fn patch_ca_bundle(client: &Client, name: &str, ca: &[u8]) -> Result<()> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let Some(mut mwc) = api.get_opt(name).await? else {
        tracing::warn!(
            webhook_configuration = name,
            "not found; sidecar injection is off until it exists"
        );
        return Ok(());
    };
    let mut changed = false;
    for w in mwc.webhooks.iter_mut().flatten() {
        if w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) != Some(ca) {
            w.client_config.ca_bundle = Some(ByteString(ca.to_vec()));
            changed = true;
        }
    }
    if changed {
        // A replace carries the resourceVersion: a concurrent edit makes it fail and retry.
        api.replace(name, &PostParams::default(), &mwc).await?;
        info!(webhook_configuration = name, "patched caBundle");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::Context;
    use http::Method;
    use serde_json::json;

    fn cfg() -> CertConfig {
        CertConfig {
            namespace: "clew-system".into(),
            service: "clew-operator-webhook".into(),
            secret: "clew-operator-webhook-tls".into(),
            webhook_configuration: "clew-operator".into(),
            validity: Duration::from_secs(365 * 86400),
            renew_before: Duration::from_secs(30 * 86400),
        }
    }

    #[test]
    fn renewal_is_due_when_missing_incomplete_or_expiring() {
        let now = OffsetDateTime::now_utc();
        let c = cfg();
        assert!(needs_renewal(None, now, c.renew_before));
        let b = generate(&c.service, &c.namespace, now, c.validity).unwrap();
        let s = secret_for(&c, &b, None);
        assert!(!needs_renewal(Some(&s), now, c.renew_before));
        // 340 days later less than 30 days remain.
        let later = now + Duration::from_secs(340 * 86400);
        assert!(needs_renewal(Some(&s), later, c.renew_before));
        let mut incomplete = s.clone();
        incomplete.data.as_mut().unwrap().remove(KEY_KEY);
        assert!(needs_renewal(Some(&incomplete), now, c.renew_before));
    }

    #[test]
    fn rotation_keeps_the_previous_ca_once() {
        let now = OffsetDateTime::now_utc();
        let c = cfg();
        let first = generate(&c.service, &c.namespace, now, c.validity).unwrap();
        let s1 = secret_for(&c, &first, None);
        let second = generate(&c.service, &c.namespace, now, c.validity).unwrap();
        let s2 = secret_for(&c, &second, data(&s1, CA_KEY).as_deref());
        let third = generate(&c.service, &c.namespace, now, c.validity).unwrap();
        let s3 = secret_for(&c, &third, data(&s2, CA_KEY).as_deref());
        let ca3 = data(&s3, CA_KEY).unwrap();
        assert_eq!(ca3.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(ca3.starts_with(&third.ca_pem));
        assert!(ca3.contains(second.ca_pem.trim()));
        assert!(!ca3.contains(first.ca_pem.trim()));
        let (cert, key) = serving_pair(&s3).unwrap();
        assert_eq!(cert, third.cert_pem);
        assert_eq!(key, third.key_pem);
    }

    fn mwc(ca_bundle: Option<&str>) -> serde_json::Value {
        let mut client_config = json!({"service": {"name": "clew-operator-webhook", "namespace": "clew-system", "path": "/mutate"}});
        if let Some(b) = ca_bundle {
            client_config["caBundle"] = json!(b);
        }
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "clew-operator", "resourceVersion": "7"},
            "webhooks": [{"name": "sidecar.clew.dev", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                          "clientConfig": client_config}]
        })
    }

    #[tokio::test]
    async fn ensure_creates_the_secret_and_patches_the_ca_bundle_once() {
        use base64::Engine;
        let (ctx, mut v) = Context::test();
        let c = cfg();
        let secret_path = "/api/v1/namespaces/clew-system/secrets/clew-operator-webhook-tls";
        let mwc_path =
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/clew-operator";
        let server = tokio::spawn(async move {
            v.not_found(secret_path).await;
            let secret = v.apply(secret_path, |_| {}).await;
            assert_eq!(secret["type"], "kubernetes.io/tls");
            v.expect(Method::GET, mwc_path).await.ok(&mwc(None));
            let put = v.expect(Method::PUT, mwc_path).await;
            // The update carries the resourceVersion it read (optimistic concurrency).
            assert_eq!(put.body["metadata"]["resourceVersion"], "7");
            let bundle = put.body["webhooks"][0]["clientConfig"]["caBundle"].clone();
            assert_eq!(bundle, secret["data"]["ca.crt"]);
            let answer = put.body.clone();
            put.ok(&answer);
            (v, secret, bundle)
        });
        let written = ensure(&ctx.client, &c, &ctx.metrics).await.unwrap();
        let (mut v, secret, bundle) = server.await.unwrap();
        v.assert_silent();
        let pem = base64::engine::general_purpose::STANDARD
            .decode(bundle.as_str().unwrap())
            .unwrap();
        assert!(
            String::from_utf8(pem)
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        assert_eq!(ctx.metrics.cert_rotations.get(), 1);
        assert!(ctx.metrics.cert_not_after.get() > OffsetDateTime::now_utc().unix_timestamp());

        // A second pass finds a valid certificate and a current caBundle: nothing is written.
        let server = tokio::spawn(async move {
            v.expect(Method::GET, secret_path).await.ok(&secret);
            v.expect(Method::GET, mwc_path)
                .await
                .ok(&mwc(bundle.as_str()));
            v
        });
        let again = ensure(&ctx.client, &c, &ctx.metrics).await.unwrap();
        server.await.unwrap().assert_silent();
        assert_eq!(again.data, written.data);
        assert_eq!(ctx.metrics.cert_rotations.get(), 1);
    }
}
