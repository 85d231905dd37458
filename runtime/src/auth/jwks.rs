//! OIDC JWTs verified against a JWKS read from a file or fetched from a
//! URL, cached, and refreshed periodically and when a token names a key
//! the cache does not hold (at most once per `min_refresh`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::RwLock;

use super::{AuthError, Reason};

/// Largest JWKS document accepted from a URL.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// How long a JWKS fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Signature algorithms accepted: asymmetric only (a symmetric key in a
/// published JWKS would let anyone who can read it sign tokens).
const ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// Where the JWKS comes from.
#[derive(Debug, Clone)]
pub(super) enum Source {
    File(PathBuf),
    Url(hyper::Uri),
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

impl Source {
    /// `http://…` or `https://…` is a URL, anything else a file path.
    pub(super) fn parse(s: &str) -> Result<Self, AuthError> {
        if s.starts_with("http://") || s.starts_with("https://") {
            let uri = s.parse().map_err(|_| AuthError::JwksUrl(s.to_owned()))?;
            Ok(Source::Url(uri))
        } else {
            Ok(Source::File(PathBuf::from(s)))
        }
    }
}

/// One key of the set, ready to verify with.
#[derive(Clone)]
struct Key {
    key: DecodingKey,
    /// The key's `alg`, when the JWKS names it: a token must then use it.
    alg: Option<Algorithm>,
    family: &'static str,
}

/// The keys of one JWKS document, by `kid`; keys without a `kid` apart.
#[derive(Default)]
struct Keys {
    by_kid: HashMap<String, Key>,
    unnamed: Vec<Key>,
}

impl Keys {
    /// Parses a JWKS; keys this verifier cannot use (symmetric, unknown
    /// types) are skipped, so one odd key does not reject the set.
    fn parse(body: &[u8]) -> Result<Self, String> {
        #[derive(serde::Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let doc: Doc = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        let mut keys = Keys::default();
        for value in doc.keys {
            let Some((kid, key)) = serde_json::from_value::<Jwk>(value).ok().and_then(usable)
            else {
                continue;
            };
            match kid {
                Some(kid) => {
                    keys.by_kid.insert(kid, key);
                }
                None => keys.unnamed.push(key),
            }
        }
        Ok(keys)
    }

    fn len(&self) -> usize {
        self.by_kid.len() + self.unnamed.len()
    }
}

fn usable(jwk: Jwk) -> Option<(Option<String>, Key)> {
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => "RSA",
        AlgorithmParameters::EllipticCurve(_) => "EC",
        _ => return None,
    };
    let alg = match jwk.common.key_algorithm {
        Some(a) => Some(a.to_string().parse::<Algorithm>().ok()?),
        None => None,
    };
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    Some((jwk.common.key_id, Key { key, alg, family }))
}

fn family(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::ES256 | Algorithm::ES384 => "EC",
        _ => "RSA",
    }
}

/// The issuer and audience a token must name.
#[derive(Debug, Clone, Default)]
pub(super) struct Rules {
    pub(super) issuer: Option<String>,
    pub(super) audience: Option<String>,
}

/// The cached JWKS and how to refresh it.
pub(super) struct Jwks {
    source: Source,
    client: Option<HttpsClient>,
    keys: RwLock<Arc<Keys>>,
    /// When the last fetch was attempted; held while fetching, so that
    /// concurrent requests naming an unknown key wait for one fetch.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    min_refresh: Duration,
    rules: Rules,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("source", &self.source)
            .field("keys", &self.keys.read().len())
            .finish_non_exhaustive()
    }
}

impl Jwks {
    /// Loads the set. A file that cannot be read stops start-up; a URL
    /// that does not answer is logged and fetched again later (tokens are
    /// refused until it answers).
    pub(super) async fn open(
        source: Source,
        rules: Rules,
        min_refresh: Duration,
        ca: Option<&Path>,
    ) -> Result<Arc<Self>, AuthError> {
        let client = match &source {
            Source::Url(uri) => Some(https_client(uri.scheme_str() == Some("https"), ca)?),
            Source::File(_) => None,
        };
        let jwks = Arc::new(Jwks {
            source,
            client,
            keys: RwLock::new(Arc::new(Keys::default())),
            last_fetch: tokio::sync::Mutex::new(None),
            min_refresh,
            rules,
        });
        match (jwks.fetch().await, &jwks.source) {
            (Ok(keys), _) => *jwks.keys.write() = Arc::new(keys),
            (Err(e), Source::File(_)) => return Err(e),
            (Err(e), Source::Url(_)) => {
                tracing::warn!(error = %e, "fetching the JWKS failed; JWTs are refused until it answers")
            }
        }
        *jwks.last_fetch.lock().await = Some(Instant::now());
        Ok(jwks)
    }

    async fn fetch(&self) -> Result<Keys, AuthError> {
        let body = match (&self.source, &self.client) {
            (Source::File(path), _) => {
                tokio::fs::read(path)
                    .await
                    .map_err(|source| AuthError::Read {
                        path: path.clone(),
                        source,
                    })?
            }
            (Source::Url(uri), Some(client)) => get(client, uri).await.map_err(AuthError::Jwks)?,
            (Source::Url(_), None) => return Err(AuthError::Jwks("no HTTP client".into())),
        };
        Keys::parse(&body).map_err(|e| AuthError::Jwks(format!("not a JWKS: {e}")))
    }

    /// Fetches the set again and swaps it in; a failure keeps the old set.
    async fn refresh(&self) {
        match self.fetch().await {
            Ok(keys) => {
                tracing::debug!(keys = keys.len(), "JWKS refreshed");
                *self.keys.write() = Arc::new(keys);
            }
            Err(e) => {
                tracing::warn!(error = %e, "refreshing the JWKS failed; keeping the keys fetched before")
            }
        }
    }

    /// Refreshes for a token naming an unknown key, unless a fetch was
    /// attempted in the last `min_refresh` (a stream of tokens with made-up
    /// key ids must not turn into a stream of fetches).
    async fn refresh_for_unknown_key(&self) {
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.min_refresh) {
            return;
        }
        self.refresh().await;
        *last = Some(Instant::now());
    }

    /// Refreshes every `every` while the set is in use.
    pub(super) fn watch(this: &Arc<Self>, every: Duration) {
        let weak: Weak<Self> = Arc::downgrade(this);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(jwks) = weak.upgrade() else { return };
                let mut last = jwks.last_fetch.lock().await;
                jwks.refresh().await;
                *last = Some(Instant::now());
            }
        });
    }

    /// Verifies `token`'s signature, expiry, issuer and audience; on
    /// success, the subject (for the log).
    pub(super) async fn verify(&self, token: &str) -> Result<Option<String>, Reason> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Reason::Malformed)?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(Reason::BadAlgorithm);
        }
        let mut candidates = self.candidates(header.kid.as_deref(), header.alg);
        if candidates.is_empty() {
            self.refresh_for_unknown_key().await;
            candidates = self.candidates(header.kid.as_deref(), header.alg);
        }
        if candidates.is_empty() {
            return Err(Reason::UnknownKey);
        }
        let validation = self.validation(header.alg);
        let mut refusal = Reason::BadSignature;
        for key in candidates {
            if key.alg.is_some_and(|a| a != header.alg) {
                refusal = Reason::BadAlgorithm;
                continue;
            }
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => return Ok(data.claims.sub),
                Err(e) => refusal = reason(e.kind()),
            }
        }
        Err(refusal)
    }

    fn candidates(&self, kid: Option<&str>, alg: Algorithm) -> Vec<Key> {
        let keys = Arc::clone(&self.keys.read());
        match kid {
            Some(kid) => keys.by_kid.get(kid).cloned().into_iter().collect(),
            None => keys
                .unnamed
                .iter()
                .chain(keys.by_kid.values())
                .filter(|k| k.family == family(alg))
                .cloned()
                .collect(),
        }
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.validate_nbf = true;
        v.leeway = 30;
        let mut required = vec!["exp"];
        if let Some(iss) = &self.rules.issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        match &self.rules.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                required.push("aud");
            }
            None => v.validate_aud = false,
        }
        v.set_required_spec_claims(&required);
        v
    }
}

/// The claims read beyond those `jsonwebtoken` checks.
#[derive(serde::Deserialize)]
struct Claims {
    sub: Option<String>,
}

fn reason(kind: &ErrorKind) -> Reason {
    match kind {
        ErrorKind::ExpiredSignature => Reason::Expired,
        ErrorKind::ImmatureSignature => Reason::NotYetValid,
        ErrorKind::InvalidIssuer => Reason::WrongIssuer,
        ErrorKind::InvalidAudience => Reason::WrongAudience,
        ErrorKind::InvalidSignature | ErrorKind::Crypto(_) => Reason::BadSignature,
        ErrorKind::InvalidAlgorithm => Reason::BadAlgorithm,
        ErrorKind::MissingRequiredClaim(_) => Reason::MissingClaim,
        _ => Reason::Malformed,
    }
}

/// A client for the JWKS URL: rustls (ring) with the CA certificates of
/// `ca`, or else the system's, for `https`; for plain `http` no CA is
/// loaded.
fn https_client(tls: bool, ca: Option<&Path>) -> Result<HttpsClient, AuthError> {
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match (tls, ca) {
        (true, None) => builder
            .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| AuthError::Jwks(format!("no CA certificates for https: {e}")))?,
        (true, Some(ca)) => builder.with_tls_config(client_config(roots(ca)?)?),
        (false, _) => builder.with_tls_config(client_config(rustls::RootCertStore::empty())?),
    };
    let connector = builder.https_or_http().enable_http1().build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

fn client_config(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, AuthError> {
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| AuthError::Jwks(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// The CA certificates of a PEM file.
fn roots(path: &Path) -> Result<rustls::RootCertStore, AuthError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let bad = |what: String| AuthError::Read {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, what),
    };
    let pem = std::fs::read(path).map_err(|source| AuthError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut store = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| bad(format!("not PEM certificates: {e}")))?;
        store
            .add(cert)
            .map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
    }
    if store.is_empty() {
        return Err(bad("no certificate in the file".into()));
    }
    Ok(store)
}

async fn get(client: &HttpsClient, uri: &hyper::Uri) -> Result<Vec<u8>, String> {
    let req = hyper::Request::get(uri.clone())
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let fetch = async {
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("{uri} answered {}", resp.status()));
        }
        let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(body.to_bytes().to_vec())
    };
    tokio::time::timeout(FETCH_TIMEOUT, fetch)
        .await
        .map_err(|_| format!("{uri} did not answer in {FETCH_TIMEOUT:?}"))?
}
