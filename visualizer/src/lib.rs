//! clew's web UI.
//!
//! One axum server ([`app`]) serves the single-page application (HTML,
//! JavaScript, CSS and icons compiled into the binary: no CDN, works
//! offline), proxies `GET /api/...` to the collector's query API so the
//! browser talks to a single origin, and serves `/metrics`, `/healthz` and
//! `/readyz`.
//!
//! The pages (all rendered in the browser from the proxied JSON):
//! search with a duration-over-time scatter plot, the trace waterfall (span
//! tree, critical path, span panel, clock-skew evidence), the service
//! dependency graph, RED dashboards per service and operation, and
//! anomalies with the bottlenecks of the slowest recent traces.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clew_runtime::auth::{Authenticator, require_bearer};
use clew_runtime::net::TrackedListener;
use tokio::net::TcpListener;

mod assets;
mod error;
mod metrics;
mod proxy;

pub use error::AppError;
pub use metrics::Metrics;
pub use proxy::Upstream;

clew_runtime::conn_limit_flags!(
    /// Connection limits of the visualizer's listener.
    pub struct ConnFlags,
    env = "CLEW_VISUALIZER_"
);

clew_runtime::server_tls_flags!(
    /// HTTPS of the UI listener.
    pub struct TlsFlags,
    env = "CLEW_VISUALIZER_"
);

/// Visualizer settings: flags, or `CLEW_*` environment variables.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "clew-visualizer", version, about = "clew's web UI")]
pub struct Config {
    /// Address to serve the UI, the API proxy and `/metrics` `/healthz`
    /// `/readyz` on.
    #[arg(long, env = "CLEW_VISUALIZER_ADDR", default_value = "0.0.0.0:8080")]
    pub addr: SocketAddr,
    /// The collector's query HTTP API, proxied under `/api/`: `http://`,
    /// or `https://` with `--query-ca`.
    #[arg(long, env = "CLEW_QUERY_URL", default_value = "http://127.0.0.1:16686")]
    pub query_url: String,
    /// TLS to the query API.
    #[command(flatten)]
    pub query_tls: QueryTlsFlags,
    /// How long to wait for the collector's answer.
    #[arg(long, env = "CLEW_QUERY_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub query_timeout: Duration,
    /// Connection limits of the listener (it serves `/healthz` too: at the
    /// limit a new connection evicts an idle one).
    #[command(flatten)]
    pub conn: ConnFlags,
    /// Who may read through the visualizer.
    #[command(flatten)]
    pub auth: AuthFlags,
    /// A file holding the bearer token the visualizer sends to the
    /// collector's query API in place of the browser's (re-read when it
    /// changes). Unset, the browser's `Authorization` is passed on.
    #[arg(long, env = "CLEW_VISUALIZER_UPSTREAM_TOKEN_FILE")]
    pub upstream_token_file: Option<std::path::PathBuf>,
    /// HTTPS: the UI, the API proxy and the ops routes over TLS.
    #[command(flatten)]
    pub tls: TlsFlags,
}

/// TLS of the connections to the collector's query API.
#[derive(Debug, Clone, clap::Args)]
pub struct QueryTlsFlags {
    /// PEM CA certificates the collector's certificate must chain to:
    /// `--query-url` is then `https://`. Re-read when it changes (every
    /// `--tls-reload-interval`).
    #[arg(long, env = "CLEW_QUERY_CA")]
    pub query_ca: Option<std::path::PathBuf>,
    /// PEM client certificate for a collector that requires one (mTLS).
    #[arg(long, env = "CLEW_QUERY_CERT", requires_all = ["query_ca", "query_key"])]
    pub query_cert: Option<std::path::PathBuf>,
    /// PEM private key of `--query-cert`.
    #[arg(long, env = "CLEW_QUERY_KEY", requires = "query_cert")]
    pub query_key: Option<std::path::PathBuf>,
    /// The name the collector's certificate carries, when it is not the
    /// host of `--query-url`.
    #[arg(long, env = "CLEW_QUERY_SERVER_NAME", requires = "query_ca")]
    pub query_server_name: Option<String>,
}

impl QueryTlsFlags {
    /// The client configuration (HTTP/1.1), when `--query-ca` is set.
    pub fn load(&self) -> Result<Option<clew_runtime::tls::ClientTls>, ServeError> {
        let Some(ca) = self.query_ca.clone() else {
            return Ok(None);
        };
        let files = clew_runtime::tls::ClientTlsFiles {
            ca,
            identity: self.query_cert.clone().zip(self.query_key.clone()),
            server_name: self.query_server_name.clone(),
        };
        clew_runtime::tls::ClientTls::load_with_alpn(files, &[b"http/1.1"])
            .map(Some)
            .map_err(ServeError::QueryTls)
    }
}

clew_runtime::read_auth_flags!(
    /// Who may read: `/api/` takes `Authorization: Bearer` with one of
    /// these (the pages and assets hold no data and stay open, so the
    /// sign-in page loads); none set, `/api/` is open.
    pub struct AuthFlags,
    env = "CLEW_VISUALIZER_"
);

/// Why the visualizer could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A token file or the JWKS could not be read.
    #[error("{flag}: {source}")]
    Auth {
        /// The flag naming it.
        flag: &'static str,
        /// Why.
        source: clew_runtime::auth::AuthError,
    },
    /// `--query-url` is not a usable `http://` or `https://` URL.
    #[error("invalid --query-url {url:?}: {reason}")]
    QueryUrl {
        /// The value given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The bound listener could not be read back.
    #[error("server failed: {0}")]
    Serve(#[source] std::io::Error),
    /// The TLS certificate or key is unusable.
    #[error("--tls-cert/--tls-key/--tls-client-ca: {0}")]
    Tls(#[from] clew_runtime::tls::TlsError),
    /// The query API's CA or the client certificate is unusable.
    #[error("--query-ca/--query-cert/--query-key: {0}")]
    QueryTls(#[source] clew_runtime::tls::TlsError),
}

/// Shared state of the handlers.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The collector's query API.
    pub upstream: Upstream,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Checks the credential of `/api/` calls; `None`: open.
    pub auth: Option<Authenticator>,
}

impl AppState {
    /// State proxying to `query_url` (plain `http://`), `/api/` open.
    pub fn new(query_url: &str, timeout: Duration) -> Result<Self, ServeError> {
        Ok(Self::proxying(Upstream::new(query_url, timeout, None)?))
    }

    /// State proxying to `upstream`, `/api/` open.
    pub fn proxying(upstream: Upstream) -> Self {
        AppState {
            upstream,
            metrics: Arc::new(Metrics::new()),
            auth: None,
        }
    }

    /// Reads the token files and the JWKS of `config` and starts watching
    /// them.
    pub async fn with_auth(mut self, config: &Config) -> Result<Self, ServeError> {
        let bad = |flag| move |source| ServeError::Auth { flag, source };
        self.auth = Authenticator::start("query", &config.auth.auth_config(), &self.metrics.auth)
            .await
            .map_err(bad("--query-token-file / --query-jwks"))?;
        if self.auth.is_none() {
            tracing::warn!(
                "/api/ is unauthenticated: anyone who reaches the visualizer reads what the collector answers it (set --query-token-file or --query-jwks)"
            );
        }
        if let Some(path) = &config.upstream_token_file {
            self.upstream = self
                .upstream
                .with_token_file(path)
                .await
                .map_err(bad("--upstream-token-file"))?;
        }
        Ok(self)
    }
}

/// The whole visualizer as a router (tests call it with `oneshot`).
pub fn app(state: AppState) -> Router {
    let mut api = get(proxy::forward);
    if let Some(auth) = state.auth.clone() {
        // Only the API: pages and assets hold no data, and the sign-in
        // page must load without a token.
        api = api.layer(middleware::from_fn_with_state(auth, require_bearer));
    }
    Router::new()
        .route("/api/{*path}", api)
        .route("/assets/{*path}", get(assets::asset))
        .route("/metrics", get(metrics::render))
        .route("/healthz", get(|| async { "ok" }))
        // Ready as soon as it serves: the UI must stay reachable while the
        // collector is down, to say so.
        .route("/readyz", get(|| async { "ready" }))
        // Every other GET is a page of the single-page app (deep links).
        .fallback(assets::page)
        // Counts every request by kind and status class.
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}

async fn count(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let kind = match req
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
    {
        Some("/api/{*path}") => "api",
        Some("/assets/{*path}") => "asset",
        Some("/metrics" | "/healthz" | "/readyz") => "ops",
        _ => "page",
    };
    let resp = next.run(req).await;
    st.metrics.request(kind, resp.status());
    resp
}

/// Serves the visualizer on `config.addr` until `shutdown` resolves, then
/// finishes the requests in flight. `on_bound` is told the bound address.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    let query_tls = config.query_tls.load()?;
    let upstream = Upstream::new(&config.query_url, config.query_timeout, query_tls.clone())?;
    let state = AppState::proxying(upstream).with_auth(&config).await?;
    let tls = match config.tls.files() {
        Some(files) => Some(clew_runtime::tls::ServerTls::load(
            files,
            &[b"h2", b"http/1.1"],
        )?),
        None => None,
    };
    let listener = TcpListener::bind(config.addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.addr,
            source,
        })?;
    let listener = TrackedListener::new(listener, "ui", config.conn.limits(), &state.metrics.conns);
    let addr = listener.local_addr().map_err(ServeError::Serve)?;
    tracing::info!(%addr, query_url = %config.query_url, "clew-visualizer listening");
    on_bound(addr);
    let every = config.tls.tls_reload_interval;
    let reloaders: Vec<_> = (tls
        .as_ref()
        .map(|t| t.spawn_reloader(every, "ui"))
        .into_iter())
    .chain(query_tls.map(|t| t.spawn_reloader(every, "query client")))
    .collect();
    clew_runtime::net::serve_http_with(listener, tls, app(state), shutdown).await;
    for r in reloaders {
        r.abort();
    }
    Ok(())
}

/// A JSON error response in the collector's envelope, so the page shows
/// proxy failures exactly like the collector's own errors.
pub(crate) fn envelope_error(status: axum::http::StatusCode, msg: &str) -> Response {
    let body = serde_json::json!({
        "data": null, "total": 0, "limit": 0, "offset": 0,
        "errors": [{ "code": status.as_u16(), "msg": msg }],
    });
    (status, axum::Json(body)).into_response()
}
