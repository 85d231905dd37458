//! The ops endpoint: `/metrics` (Prometheus text), `/healthz` (the process
//! is alive) and `/readyz` (it takes traffic).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

/// Renders the Prometheus text exposition.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

#[derive(Clone)]
struct OpsState {
    render: Render,
    ready: Ready,
}

/// The ops router: `render` answers `/metrics`; `/readyz` is 200 while
/// `ready` is true and 503 otherwise.
pub fn router(render: Render, ready: Arc<AtomicBool>) -> axum::Router {
    router_with(render, Arc::new(move || ready.load(Ordering::Acquire)))
}

/// Whether the process is ready, asked on every `/readyz`.
pub type Ready = Arc<dyn Fn() -> bool + Send + Sync>;

/// [`router`] with readiness asked of a function (a flag and, say, the
/// storage's own readiness).
pub fn router_with(render: Render, ready: Ready) -> axum::Router {
    axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(|State(s): State<OpsState>| async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    (s.render)(),
                )
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route(
            "/readyz",
            axum::routing::get(|State(s): State<OpsState>| async move {
                if (s.ready)() {
                    (StatusCode::OK, "ready").into_response()
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
                }
            }),
        )
        .with_state(OpsState { render, ready })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    async fn get(app: &axum::Router, path: &str) -> (u16, String) {
        let r = app
            .clone()
            .oneshot(axum::http::Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn metrics_health_and_readiness() {
        let ready = Arc::new(AtomicBool::new(false));
        let app = router(Arc::new(|| "x_total 3\n".to_string()), ready.clone());
        assert_eq!(get(&app, "/metrics").await, (200, "x_total 3\n".into()));
        assert_eq!(get(&app, "/healthz").await.0, 200);
        assert_eq!(get(&app, "/readyz").await.0, 503);
        ready.store(true, Ordering::Release);
        assert_eq!(get(&app, "/readyz").await, (200, "ready".into()));
    }
}
