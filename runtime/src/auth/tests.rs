#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use axum::http::HeaderValue;

use super::testing::{JwksServer, SigningKey, claims, jwks};
use super::{AuthConfig, AuthMetrics, Authenticator, Reason};

const ISS: &str = "https://issuer.test";
const AUD: &str = "clew";

fn bearer(token: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("Bearer {token}")).unwrap()
}

async fn start(config: AuthConfig) -> (Authenticator, AuthMetrics) {
    let metrics = AuthMetrics::new();
    let auth = Authenticator::start("query", &config, &metrics)
        .await
        .unwrap()
        .unwrap();
    (auth, metrics)
}

async fn check(auth: &Authenticator, token: &str) -> Result<(), Reason> {
    auth.admit(Some(&bearer(token)), None).await
}

fn jwt_config(jwks: String) -> AuthConfig {
    AuthConfig {
        jwks: Some(jwks),
        issuer: Some(ISS.into()),
        audience: Some(AUD.into()),
        ..AuthConfig::default()
    }
}

#[test]
fn token_files_skip_blank_lines_and_comments() {
    let set = super::tokens::TokenSet::parse("# ops team\n\n  alpha  \n#beta\nbeta\n");
    assert_eq!(set.len(), 2);
    assert!(set.contains("alpha") && set.contains("beta"));
    assert!(!set.contains("#beta") && !set.contains("alph") && !set.contains(""));
}

#[test]
fn only_bearer_credentials_are_read() {
    let h = |s: &str| HeaderValue::from_str(s).unwrap();
    assert_eq!(super::bearer(&h("Bearer abc")), Some("abc"));
    assert_eq!(super::bearer(&h("bearer  abc ")), Some("abc"));
    assert_eq!(super::bearer(&h("Basic abc")), None);
    assert_eq!(super::bearer(&h("Bearer ")), None);
}

#[tokio::test]
async fn nothing_configured_means_no_authenticator_and_rules_need_a_jwks() {
    let m = AuthMetrics::new();
    assert!(
        Authenticator::start("query", &AuthConfig::default(), &m)
            .await
            .unwrap()
            .is_none()
    );
    let rules_only = AuthConfig {
        issuer: Some(ISS.into()),
        ..AuthConfig::default()
    };
    assert!(
        Authenticator::start("query", &rules_only, &m)
            .await
            .is_err()
    );
    let missing = AuthConfig {
        token_file: Some("/nonexistent/tokens".into()),
        ..AuthConfig::default()
    };
    assert!(Authenticator::start("query", &missing, &m).await.is_err());
}

#[tokio::test]
async fn the_token_file_is_reread_when_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    std::fs::write(&path, "old-token\n").unwrap();
    let config = AuthConfig {
        token_file: Some(path.clone()),
        file_poll: Duration::from_millis(50),
        ..AuthConfig::default()
    };
    let (auth, metrics) = start(config).await;
    assert_eq!(check(&auth, "old-token").await, Ok(()));
    assert_eq!(check(&auth, "new-token").await, Err(Reason::UnknownToken));
    assert_eq!(auth.admit(None, None).await, Err(Reason::Missing));

    std::fs::write(&path, "new-token\n").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(check(&auth, "new-token").await, Ok(()));
    assert_eq!(check(&auth, "old-token").await, Err(Reason::UnknownToken));

    // A failed re-read keeps the last good set.
    std::fs::remove_file(&path).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(check(&auth, "new-token").await, Ok(()));
    assert_eq!(metrics.refusals("query", Reason::UnknownToken), 2);
    assert_eq!(metrics.refusals("query", Reason::Missing), 1);
}

#[tokio::test]
async fn jwts_from_a_jwks_file_are_checked() {
    let (rsa, ec, stranger) = (
        SigningKey::rsa("r1"),
        SigningKey::ec("e1"),
        SigningKey::ec("x9"),
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, jwks(&[&rsa, &ec])).unwrap();
    let (auth, _) = start(jwt_config(file.display().to_string())).await;

    assert_eq!(
        check(&auth, &rsa.sign(&claims(ISS, AUD, 300))).await,
        Ok(())
    );
    assert_eq!(check(&auth, &ec.sign(&claims(ISS, AUD, 300))).await, Ok(()));
    let cases = [
        (rsa.sign(&claims(ISS, AUD, -3600)), Reason::Expired),
        (
            ec.sign(&claims("https://elsewhere", AUD, 300)),
            Reason::WrongIssuer,
        ),
        (
            ec.sign(&claims(ISS, "another-app", 300)),
            Reason::WrongAudience,
        ),
        (stranger.sign(&claims(ISS, AUD, 300)), Reason::UnknownKey),
        (
            ec.sign(&serde_json::json!({"iss": ISS, "aud": AUD})),
            Reason::MissingClaim,
        ),
    ];
    for (token, reason) in cases {
        assert_eq!(check(&auth, &token).await, Err(reason));
    }
    let future = serde_json::json!({"iss": ISS, "aud": AUD, "exp": super::testing::now() + 7200,
                                    "nbf": super::testing::now() + 3600});
    assert_eq!(
        check(&auth, &ec.sign(&future)).await,
        Err(Reason::NotYetValid)
    );
    // Another key's signature under a known kid.
    let forged = {
        let good = ec.sign(&claims(ISS, AUD, 300));
        let other = SigningKey::ec("e1").sign(&claims(ISS, AUD, 300));
        let (head, _) = good.rsplit_once('.').unwrap();
        format!("{head}.{}", other.rsplit_once('.').unwrap().1)
    };
    assert_eq!(check(&auth, &forged).await, Err(Reason::BadSignature));
    assert_eq!(check(&auth, "a.b.c").await, Err(Reason::Malformed));
}

#[tokio::test]
async fn a_jwks_url_is_fetched_again_for_an_unknown_key_at_most_once_per_interval() {
    let (old, new) = (SigningKey::ec("old"), SigningKey::rsa("new"));
    let server = JwksServer::start(jwks(&[&old])).await;
    let config = AuthConfig {
        jwks_min_refresh: Duration::from_millis(400),
        ..jwt_config(server.url())
    };
    let (auth, _) = start(config).await;
    assert_eq!(server.hits(), 1);
    assert_eq!(
        check(&auth, &old.sign(&claims(ISS, AUD, 300))).await,
        Ok(())
    );

    // The issuer rotates its keys: the new kid triggers one fetch.
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.publish(jwks(&[&new]));
    assert_eq!(
        check(&auth, &new.sign(&claims(ISS, AUD, 300))).await,
        Ok(())
    );
    assert_eq!(server.hits(), 2);

    // Made-up kids within the interval cause no fetch.
    for i in 0..5 {
        let token = SigningKey::ec(&format!("made-up-{i}")).sign(&claims(ISS, AUD, 300));
        assert_eq!(check(&auth, &token).await, Err(Reason::UnknownKey));
    }
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn an_unreachable_jwks_url_refuses_tokens_without_stopping_start_up() {
    let key = SigningKey::ec("k");
    let config = AuthConfig {
        jwks_min_refresh: Duration::ZERO,
        ..jwt_config("http://127.0.0.1:9/jwks.json".into())
    };
    let (auth, _) = start(config).await;
    assert_eq!(
        check(&auth, &key.sign(&claims(ISS, AUD, 300))).await,
        Err(Reason::UnknownKey)
    );
}

#[test]
fn auth_metrics_match_the_catalogue() {
    let m = AuthMetrics::new();
    crate::metrics::catalogue_check("authentication", &m.registry);
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn an_https_jwks_url_is_trusted_through_the_given_ca_only() {
    use crate::tls::testing::Pki;
    use crate::tls::{ServerTls, ServerTlsFiles, TlsVersion};
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "idp");
    let other = Pki::new(dir.path(), "other");
    let (cert, key) = pki.server("idp", &["127.0.0.1"]);
    let files = ServerTlsFiles {
        cert,
        key,
        client_ca: None,
        min_version: TlsVersion::V1_2,
    };
    let tls = ServerTls::load(files, &[b"http/1.1"]).unwrap();
    let signer = SigningKey::ec("idp-key");
    let server = JwksServer::start_https(jwks(&[&signer]), tls).await;
    assert!(server.url().starts_with("https://"));
    let token = signer.sign(&claims(ISS, AUD, 300));
    let with_ca = |ca: &std::path::Path| AuthConfig {
        jwks_ca: Some(ca.to_owned()),
        jwks_min_refresh: Duration::ZERO,
        ..jwt_config(server.url())
    };
    let (auth, _) = start(with_ca(&pki.ca)).await;
    assert_eq!(check(&auth, &token).await, Ok(()));
    assert_eq!(server.hits(), 1);
    // Trusting another CA, the fetch fails the handshake: the key is never
    // learned and the token is refused (start-up goes on).
    let (auth, _) = start(with_ca(&other.ca)).await;
    assert_eq!(check(&auth, &token).await, Err(Reason::UnknownKey));
    assert_eq!(server.hits(), 1);
    // A CA file that is not PEM stops start-up, naming the file.
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let metrics = AuthMetrics::new();
    let e = Authenticator::start("query", &with_ca(&junk), &metrics)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("junk.pem"), "{e}");
}
