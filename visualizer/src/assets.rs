//! The single-page app, compiled into the binary.

use axum::extract::Path;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::AppError;

const INDEX: &str = include_str!("../assets/index.html");

const JS: &str = "text/javascript; charset=utf-8";

/// A JavaScript module under `assets/`, served at `/assets/<path>`.
macro_rules! module {
    ($path:literal) => {
        ($path, JS, include_str!(concat!("../assets/", $path)))
    };
}

/// `(path, content type, body)` of every asset under `/assets/`. The UI is
/// native ES modules loaded by `<script type="module">` (`app.js` imports
/// the rest), so every module must be listed here; a handler test checks
/// that every `.js` file under `assets/` (tests aside) is.
const ASSETS: &[(&str, &str, &str)] = &[
    module!("app.js"),
    module!("api.js"),
    module!("auth.js"),
    module!("charts.js"),
    module!("colors.js"),
    module!("dom.js"),
    module!("format.js"),
    module!("router.js"),
    module!("tags.js"),
    module!("upload.js"),
    module!("windows.js"),
    module!("graph/layout.js"),
    module!("pages/anomalies.js"),
    module!("pages/dependencies.js"),
    module!("pages/insights.js"),
    module!("pages/search.js"),
    module!("pages/services.js"),
    module!("pages/signin.js"),
    module!("pages/trace.js"),
    module!("trace/analysis.js"),
    module!("trace/model.js"),
    module!("trace/panel.js"),
    module!("trace/rows.js"),
    module!("trace/state.js"),
    module!("trace/view.js"),
    module!("trace/waterfall.js"),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../assets/app.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("../assets/favicon.svg"),
    ),
];

/// Only our own scripts and styles; inline styles only through the CSSOM
/// (which CSP allows), so injected markup could not style or script itself.
/// `script-src 'self'` covers module scripts and their same-origin imports.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

fn with_headers(content_type: &'static str, body: &'static str, cache: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

pub(crate) async fn asset(Path(path): Path<String>) -> Result<Response, AppError> {
    let (_, ct, body) = ASSETS
        .iter()
        .find(|(name, _, _)| *name == path)
        .ok_or(AppError::NotFound)?;
    // Not fingerprinted, so revalidate: a new binary must not serve stale JS.
    Ok(with_headers(ct, body, "no-cache"))
}

/// Any other path: the app's page (it routes on the path in the browser).
pub(crate) async fn page(method: Method) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, "method not allowed").into_response();
    }
    with_headers("text/html; charset=utf-8", INDEX, "no-cache")
}
