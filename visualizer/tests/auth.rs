#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Bearer authentication of the visualizer's `/api/`, in process
//! (`Router::oneshot`) in front of a real collector query API on loopback:
//! static tokens re-read on change, JWTs against a JWKS file and URL, and
//! the credential sent on to a collector that checks it too.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use clap::Parser as _;
use clew_runtime::auth::testing::{JwksServer, SigningKey, claims, jwks};
use clew_runtime::auth::{AuthConfig, AuthMetrics, Authenticator};
use clew_visualizer::{AppState, Config, app};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

const ISS: &str = "https://idp.test";
const AUD: &str = "clew-ui";

/// The visualizer with these flags, in front of `collector`.
async fn visualizer(collector: SocketAddr, flags: &[&str]) -> axum::Router {
    let url = format!("http://{collector}");
    let mut args = vec!["clew-visualizer", "--query-url", &url];
    args.extend_from_slice(flags);
    let config = Config::try_parse_from(args).unwrap();
    let state = AppState::new(&config.query_url, Duration::from_secs(10))
        .unwrap()
        .with_auth(&config)
        .await
        .unwrap();
    app(state)
}

async fn get(
    router: &axum::Router,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, axum::http::HeaderMap, String) {
    let mut req = Request::get(path);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let resp = router
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

async fn status(router: &axum::Router, token: Option<&str>) -> StatusCode {
    get(router, "/api/services", token).await.0
}

async fn collector() -> SocketAddr {
    common::collector(common::known_storage().await).await
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn api_needs_a_token_and_the_pages_stay_open() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = write(dir.path(), "tokens", "# ui readers\nalice-token\n");
    let router = visualizer(collector().await, &["--query-token-file", &tokens]).await;

    let (st, headers, body) = get(&router, "/api/services", None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_eq!(headers[header::WWW_AUTHENTICATE], r#"Bearer realm="clew""#);
    assert!(
        body.contains("authentication required") && !body.contains("backend"),
        "{body}"
    );
    let (st, headers, _) = get(&router, "/api/traces?service=payments", Some("bob-token")).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_eq!(
        headers[header::WWW_AUTHENTICATE],
        r#"Bearer realm="clew", error="invalid_token""#
    );

    let (st, _, body) = get(&router, "/api/services", Some("alice-token")).await;
    assert_eq!(st, StatusCode::OK);
    assert!(body.contains("backend"), "{body}");
    for open in [
        "/",
        "/signin?next=%2Fsearch",
        "/assets/auth.js",
        "/assets/pages/signin.js",
        "/healthz",
    ] {
        assert_eq!(get(&router, open, None).await.0, StatusCode::OK, "{open}");
    }
    let metrics = get(&router, "/metrics", None).await.2;
    assert!(
        metrics.contains(r#"clew_auth_refusals_total{reason="unknown_token",surface="query"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_token_file_is_reread_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = write(dir.path(), "tokens", "old\n");
    let router = visualizer(collector().await, &["--query-token-file", &tokens]).await;
    assert_eq!(status(&router, Some("old")).await, StatusCode::OK);
    write(dir.path(), "tokens", "new\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&router, Some("new")).await != StatusCode::OK {
        assert!(
            Instant::now() < deadline,
            "the new token was never accepted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status(&router, Some("old")).await, StatusCode::UNAUTHORIZED);
}

async fn check_jwts(router: &axum::Router, keys: &[&SigningKey]) {
    for key in keys {
        let token = key.sign(&claims(ISS, AUD, 300));
        assert_eq!(
            status(router, Some(&token)).await,
            StatusCode::OK,
            "{}",
            key.alg()
        );
    }
    let stranger = SigningKey::rsa("elsewhere");
    for token in [
        keys[0].sign(&claims(ISS, AUD, -600)),
        keys[0].sign(&claims("https://other.test", AUD, 300)),
        keys[0].sign(&claims(ISS, "clew-query", 300)),
        stranger.sign(&claims(ISS, AUD, 300)),
    ] {
        assert_eq!(status(router, Some(&token)).await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(status(router, None).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn jwts_are_checked_against_a_jwks_file_and_url() {
    let dir = tempfile::tempdir().unwrap();
    let (rsa, ec) = (SigningKey::rsa("r"), SigningKey::ec("e"));
    let file = write(dir.path(), "jwks.json", &jwks(&[&rsa, &ec]));
    let server = JwksServer::start(jwks(&[&ec, &rsa])).await;
    let c = collector().await;
    for source in [file, server.url()] {
        let flags = [
            "--query-jwks",
            &source,
            "--query-jwt-issuer",
            ISS,
            "--query-jwt-audience",
            AUD,
        ];
        check_jwts(&visualizer(c, &flags).await, &[&rsa, &ec]).await;
    }
}

#[tokio::test]
async fn the_credential_is_sent_on_to_a_collector_that_checks_it() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = write(dir.path(), "collector-tokens", "shared\nservice-account\n");
    let config = AuthConfig {
        token_file: Some(tokens.into()),
        ..AuthConfig::default()
    };
    let auth = Authenticator::start("query", &config, &AuthMetrics::new())
        .await
        .unwrap();
    let storage = common::known_storage().await;
    let c = common::serve(clew_runtime::auth::protect(
        clew_collector::query::router(storage),
        auth,
    ))
    .await;

    // The visualizer checks nothing itself: the browser's token decides.
    let open = visualizer(c, &[]).await;
    let (st, headers, _) = get(&open, "/api/services", None).await;
    assert_eq!(
        st,
        StatusCode::UNAUTHORIZED,
        "the collector's 401 is passed on"
    );
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    assert_eq!(status(&open, Some("shared")).await, StatusCode::OK);

    // With its own token for the collector, that one is sent instead.
    let own = write(
        dir.path(),
        "upstream",
        "# for the collector\nservice-account\n",
    );
    let mine = write(dir.path(), "ui-tokens", "ui-user\n");
    let guarded = visualizer(
        c,
        &["--query-token-file", &mine, "--upstream-token-file", &own],
    )
    .await;
    assert_eq!(status(&guarded, Some("ui-user")).await, StatusCode::OK);
    assert_eq!(
        status(&guarded, Some("shared")).await,
        StatusCode::UNAUTHORIZED
    );
}
