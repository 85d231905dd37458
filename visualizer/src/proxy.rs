//! Forwards `GET /api/...` to the collector's query API, with the
//! browser's `Authorization` or the visualizer's own token.

use std::io::ErrorKind;
use std::path::Path;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Request, Uri, header};
use axum::response::Response;
use bytes::Bytes;
use clew_runtime::auth::AuthError;
use clew_runtime::tls::{ClientTls, TlsConnector};
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;

use crate::{AppError, AppState, ServeError};

/// The collector's query API and a pooled HTTP/1 client to it.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `http(s)://host:port` plus an optional path prefix, no trailing
    /// slash.
    base: String,
    client: Pool,
    timeout: Duration,
    /// `Bearer <token>` from `--upstream-token-file`, sent in place of the
    /// browser's credential; `None`: the browser's is passed on.
    token: Option<watch::Receiver<HeaderValue>>,
}

/// Plain-text or TLS connections to the collector.
#[derive(Debug, Clone)]
enum Pool {
    Plain(Client<HttpConnector, Empty<Bytes>>),
    Tls(Client<TlsConnector, Empty<Bytes>>),
}

impl Pool {
    fn request(&self, req: Request<Empty<Bytes>>) -> ResponseFuture {
        match self {
            Pool::Plain(c) => c.request(req),
            Pool::Tls(c) => c.request(req),
        }
    }
}

impl Upstream {
    /// Checks `url` (an `http://` URL without query, or `https://` when
    /// `tls` is given) and builds the client; with `tls`, every connection
    /// is TLS with the client configuration in force when it is made.
    pub fn new(url: &str, timeout: Duration, tls: Option<ClientTls>) -> Result<Self, ServeError> {
        let bad = |reason| ServeError::QueryUrl {
            url: url.to_owned(),
            reason,
        };
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        match (uri.scheme_str(), &tls) {
            (Some("http"), None) | (Some("https"), Some(_)) => {}
            (Some("https"), None) => return Err(bad("https:// needs --query-ca")),
            (Some("http"), Some(_)) => return Err(bad("--query-ca is set: use https://")),
            _ => return Err(bad("must start with http:// or https://")),
        }
        if uri.authority().is_none() {
            return Err(bad("has no host"));
        }
        if uri.query().is_some() {
            return Err(bad("must not have a query"));
        }
        let builder = Client::builder(TokioExecutor::new());
        let client = match tls {
            Some(tls) => Pool::Tls(builder.build(tls.connector())),
            None => {
                let mut connector = HttpConnector::new();
                connector.set_connect_timeout(Some(timeout.min(Duration::from_secs(5))));
                connector.set_nodelay(true);
                Pool::Plain(builder.build(connector))
            }
        };
        Ok(Upstream {
            base: url.trim_end_matches('/').to_owned(),
            client,
            timeout,
            token: None,
        })
    }

    /// Sends the token of `path` (its first line that is not blank or a
    /// `#` comment) to the collector; the file is read again every 2 s and
    /// a failed read keeps the token read before.
    pub async fn with_token_file(mut self, path: &Path) -> Result<Self, AuthError> {
        let first = read_token(path).await?;
        let (tx, rx) = watch::channel(first);
        let path = path.to_owned();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            while !tx.is_closed() {
                tick.tick().await;
                match read_token(&path).await {
                    Ok(v) => {
                        tx.send_if_modified(|old| (*old != v).then(|| *old = v).is_some());
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "re-reading --upstream-token-file failed; keeping the token read before")
                    }
                }
            }
        });
        self.token = Some(rx);
        Ok(self)
    }
}

async fn read_token(path: &Path) -> Result<HeaderValue, AuthError> {
    let bad = |source| AuthError::Read {
        path: path.to_owned(),
        source,
    };
    let text = tokio::fs::read_to_string(path).await.map_err(bad)?;
    let token = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or_else(|| {
            bad(std::io::Error::new(
                ErrorKind::InvalidData,
                "holds no token",
            ))
        })?;
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
        bad(std::io::Error::new(
            ErrorKind::InvalidData,
            "not a header value",
        ))
    })?;
    value.set_sensitive(true);
    Ok(value)
}

pub(crate) async fn forward(
    State(st): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    let target: Uri = format!("{}{pq}", st.upstream.base)
        .parse()
        .map_err(|_| AppError::BadPath)?;
    let mut req = Request::get(target)
        .header(header::ACCEPT, "application/json")
        .body(Empty::new())
        .map_err(|_| AppError::BadPath)?;
    let credential = match &st.upstream.token {
        Some(rx) => Some(rx.borrow().clone()),
        None => headers.get(header::AUTHORIZATION).cloned(),
    };
    if let Some(c) = credential {
        req.headers_mut().insert(header::AUTHORIZATION, c);
    }
    let started = Instant::now();
    let resp =
        match tokio::time::timeout(st.upstream.timeout, st.upstream.client.request(req)).await {
            Err(_) => {
                st.metrics.upstream_error("timeout");
                tracing::warn!(path = %uri.path(), "collector query timed out");
                return Err(AppError::Timeout);
            }
            Ok(Err(e)) => {
                st.metrics.upstream_error("unreachable");
                tracing::warn!(path = %uri.path(), error = %e, "collector query failed");
                return Err(AppError::Unreachable);
            }
            Ok(Ok(resp)) => resp,
        };
    st.metrics.upstream(resp.status(), started.elapsed());
    let (parts, body) = resp.into_parts();
    let mut out = Response::builder().status(parts.status);
    if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
        out = out.header(header::CONTENT_TYPE, ct);
    }
    out = out.header(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Streams the collector's body through (a 10,000-span trace is megabytes).
    out.body(Body::new(body)).map_err(|_| AppError::Unreachable)
}
