//! The axum middleware: `Authorization: Bearer` or 401.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{Authenticator, Reason};

/// Lets a request through only with a valid credential; otherwise answers
/// [`refusal_response`]. Use with
/// `axum::middleware::from_fn_with_state(authenticator, require_bearer)`.
pub async fn require_bearer(
    State(auth): State<Authenticator>,
    req: Request,
    next: Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    match auth
        .admit(req.headers().get(header::AUTHORIZATION), peer)
        .await
    {
        Ok(()) => next.run(req).await,
        Err(reason) => refusal_response(reason),
    }
}

/// `router` with every route behind `auth` ([`require_bearer`]); unchanged
/// when `auth` is `None`.
pub fn protect(router: axum::Router, auth: Option<Authenticator>) -> axum::Router {
    match auth {
        Some(auth) => router.layer(axum::middleware::from_fn_with_state(auth, require_bearer)),
        None => router,
    }
}

/// 401 with `WWW-Authenticate: Bearer realm="clew"` (and
/// `error="invalid_token"` when a credential was given), and the query
/// API's JSON error envelope saying only that.
pub fn refusal_response(reason: Reason) -> Response {
    let (challenge, msg) = if reason.token_given() {
        (
            r#"Bearer realm="clew", error="invalid_token""#,
            "invalid credentials",
        )
    } else {
        (r#"Bearer realm="clew""#, "authentication required")
    };
    let status = StatusCode::UNAUTHORIZED;
    let body = serde_json::json!({
        "data": null, "total": 0, "limit": 0, "offset": 0,
        "errors": [{ "code": status.as_u16(), "msg": msg }],
    });
    let mut resp = (status, axum::Json(body)).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
