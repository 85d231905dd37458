//! The Redis backend over TLS with an ACL user: the whole conformance
//! suite against a `redis-server` that listens only on `--tls-port` and
//! has its default user turned off; and the connection refused with a
//! wrong password, or without the client certificate a server requiring
//! one asks for. Certificates are made here (rcgen).

use std::sync::Arc;
use std::time::Duration;

use clew_runtime::tls::testing::Pki;

use super::*;
use crate::conformance::Fixture;
use crate::testing::{RedisServer, TlsServer};

struct Secure {
    _dir: tempfile::TempDir,
    pki: Pki,
    server: RedisServer,
}

async fn secure(client_auth: bool) -> Secure {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "redis");
    let (cert, key) = pki.server("server", &["localhost", "127.0.0.1"]);
    let server = RedisServer::start_tls(TlsServer {
        cert,
        key,
        ca: pki.ca.clone(),
        client_auth,
        user: ("clew".into(), "s3cret".into()),
    })
    .await;
    Secure {
        _dir: dir,
        pki,
        server,
    }
}

fn config(
    s: &Secure,
    password: &str,
    client: Option<(std::path::PathBuf, std::path::PathBuf)>,
) -> RedisConfig {
    RedisConfig {
        url: s.server.url(),
        tls: Some(RedisTls {
            ca: Some(s.pki.ca.clone()),
            client,
        }),
        username: Some("clew".into()),
        password: Some(password.into()),
        connect_timeout: Duration::from_secs(2),
        response_timeout: Duration::from_secs(2),
        retries: 1,
        retry_backoff: Duration::from_millis(10),
        ..RedisConfig::default()
    }
}

async fn fixture() -> Fixture {
    let s = secure(false).await;
    let store = RedisStorage::connect(config(&s, "s3cret", None))
        .await
        .unwrap();
    Fixture::with_guard(Arc::new(store), s)
}

conformance_tests!(fixture);

#[tokio::test]
async fn a_wrong_password_or_a_missing_client_certificate_is_refused() {
    let s = secure(true).await;
    let cert = s.pki.client("collector", "collector");
    assert!(
        RedisStorage::connect(config(&s, "s3cret", Some(cert.clone())))
            .await
            .is_ok()
    );
    assert!(
        RedisStorage::connect(config(&s, "wrong", Some(cert)))
            .await
            .is_err()
    );
    assert!(
        RedisStorage::connect(config(&s, "s3cret", None))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn tls_settings_need_a_rediss_url() {
    let cfg = RedisConfig {
        url: "redis://127.0.0.1:1".into(),
        tls: Some(RedisTls::default()),
        ..RedisConfig::default()
    };
    let e = RedisStorage::connect(cfg).await.err().unwrap();
    assert!(e.detail().contains("rediss://"), "{}", e.detail());
}
