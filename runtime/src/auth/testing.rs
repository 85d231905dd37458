//! Test support: signing keys the tests make (RSA through the `openssl`
//! command, since ring cannot generate RSA keys; P-256 through ring), JWTs
//! they sign, their JWKS, and a real HTTP server publishing it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use parking_lot::RwLock;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use serde_json::{Value, json};

/// A private key with its `kid`, signing RS256 or ES256.
#[derive(Debug)]
pub struct SigningKey {
    kid: String,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

impl SigningKey {
    /// A fresh 2048-bit RSA key (RS256).
    pub fn rsa(kid: &str) -> Self {
        let out = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-outform",
                "DER",
            ])
            .stderr(std::process::Stdio::null())
            .output()
            .expect("run openssl genpkey");
        assert!(out.status.success(), "openssl genpkey failed");
        // OpenSSL 3 writes a DER RSA key as PKCS#1 (RSAPrivateKey).
        let kp = RsaKeyPair::from_der(&out.stdout).expect("an RSA PKCS#1 key");
        SigningKey {
            kid: kid.into(),
            kind: Kind::Rsa(kp),
        }
    }

    /// A fresh P-256 key (ES256).
    pub fn ec(kid: &str) -> Self {
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("generate P-256");
        let kp = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("a P-256 key");
        SigningKey {
            kid: kid.into(),
            kind: Kind::Ec(kp),
        }
    }

    /// The key's `alg`.
    pub fn alg(&self) -> &'static str {
        match self.kind {
            Kind::Rsa(_) => "RS256",
            Kind::Ec(_) => "ES256",
        }
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> Value {
        match &self.kind {
            Kind::Rsa(kp) => {
                let c = signature::RsaPublicKeyComponents::<Vec<u8>>::from(kp.public());
                json!({"kty": "RSA", "kid": self.kid, "use": "sig", "alg": "RS256",
                       "n": B64.encode(&c.n), "e": B64.encode(&c.e)})
            }
            Kind::Ec(kp) => {
                // Uncompressed point: 0x04, x (32 bytes), y (32 bytes).
                let p = kp.public_key().as_ref();
                json!({"kty": "EC", "kid": self.kid, "use": "sig", "alg": "ES256", "crv": "P-256",
                       "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..65])})
            }
        }
    }

    /// A compact JWS of `claims`, its header naming this key's `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": self.alg(), "typ": "JWT", "kid": self.kid});
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let rng = SystemRandom::new();
        let sig = match &self.kind {
            Kind::Rsa(kp) => {
                let mut sig = vec![0; kp.public().modulus_len()];
                kp.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    input.as_bytes(),
                    &mut sig,
                )
                .expect("RSA signing");
                sig
            }
            Kind::Ec(kp) => kp
                .sign(&rng, input.as_bytes())
                .expect("ECDSA signing")
                .as_ref()
                .to_vec(),
        };
        format!("{input}.{}", B64.encode(sig))
    }
}

/// A JWKS document of these keys' public halves.
pub fn jwks(keys: &[&SigningKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()}).to_string()
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Claims from `iss` for `aud`, expiring `expires_in` seconds from now
/// (negative: already expired).
pub fn claims(iss: &str, aud: &str, expires_in: i64) -> Value {
    json!({"iss": iss, "aud": aud, "sub": "tester", "iat": now(), "exp": now() + expires_in})
}

/// A JWKS published over HTTP at `/jwks.json` by a real axum server.
#[derive(Debug, Clone)]
pub struct JwksServer {
    /// Where it listens.
    pub addr: SocketAddr,
    scheme: &'static str,
    body: Arc<RwLock<String>>,
    hits: Arc<AtomicUsize>,
}

impl JwksServer {
    /// Serves `body` on a loopback port until the runtime ends.
    pub async fn start(body: String) -> Self {
        let (server, app, listener) = Self::parts(body).await;
        tokio::spawn(async move { axum::serve(listener, app).await });
        server
    }

    /// Serves `body` over HTTPS with `tls` until the runtime ends.
    #[cfg(feature = "tls")]
    pub async fn start_https(body: String, tls: crate::tls::ServerTls) -> Self {
        use crate::net::{ConnLimits, ConnMetrics, TrackedListener};
        let (mut server, app, listener) = Self::parts(body).await;
        let listener =
            TrackedListener::new(listener, "jwks", ConnLimits::default(), &ConnMetrics::new());
        tokio::spawn(crate::net::serve_https(
            listener,
            tls,
            app,
            std::future::pending(),
        ));
        server.scheme = "https";
        server
    }

    async fn parts(body: String) -> (Self, axum::Router, tokio::net::TcpListener) {
        let body = Arc::new(RwLock::new(body));
        let hits = Arc::new(AtomicUsize::new(0));
        let (b, h) = (Arc::clone(&body), Arc::clone(&hits));
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                h.fetch_add(1, Ordering::SeqCst);
                let doc = b.read().clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        doc,
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let server = JwksServer {
            addr,
            scheme: "http",
            body,
            hits,
        };
        (server, app, listener)
    }

    /// The JWKS URL.
    pub fn url(&self) -> String {
        format!("{}://{}/jwks.json", self.scheme, self.addr)
    }

    /// Publishes another document (a key rotation).
    pub fn publish(&self, body: String) {
        *self.body.write() = body;
    }

    /// How many times the document was fetched.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}
