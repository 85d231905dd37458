//! Service A: the HTTP frontend (:8000).
//!
//! - `GET /api/v1/search?q=<words>[&limit=<1..=100>]` → B.Search
//! - `GET /api/v1/process?data=<text>` → B.Process
//!
//! Invalid input gets 400 with `{"error": "..."}` naming the parameter; a
//! failure of B gets 503 (unavailable) or 502 (any other failure) with a
//! generic message. Every answer carries the request's trace id in the
//! `x-trace-id` header and, on success, in the body, so a caller can look
//! the trace up.

use std::time::Instant;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use clew_tracer::instrument::{TraceLayer, TraceService};
use clew_tracer::{Context, Tracer};
use serde::Deserialize;
use serde_json::json;
use tonic::transport::Channel;

use crate::Faults;
use crate::ops::Metrics;
use crate::pb;

/// Longest accepted `q`.
pub const MAX_QUERY_CHARS: usize = 200;
/// Longest accepted `data`.
pub const MAX_DATA_CHARS: usize = 4096;

/// The traced client A uses for B.
pub type BusinessClient = pb::business_client::BusinessClient<TraceService<Channel>>;

/// A traced, lazily connecting client for B at `url`; a call that has no
/// answer after `timeout` fails (and A answers 503).
pub fn business_client(
    url: &str,
    tracer: &Tracer,
    timeout: std::time::Duration,
) -> anyhow::Result<BusinessClient> {
    let channel = crate::downstream(url, timeout)?;
    Ok(pb::business_client::BusinessClient::new(
        tower::ServiceBuilder::new()
            .layer(TraceLayer::grpc_client(tracer.clone()))
            .service(channel),
    ))
}

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Client for B.
    pub business: BusinessClient,
    /// Fault knobs.
    pub faults: Faults,
    /// Request metrics.
    pub metrics: Metrics,
}

/// A's router, traced by `TraceLayer::http_server`.
pub fn app(state: AppState, tracer: Tracer) -> axum::Router {
    axum::Router::new()
        .route("/api/v1/search", axum::routing::get(search))
        .route("/api/v1/process", axum::routing::get(process))
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such endpoint; try /api/v1/search?q=example",
            )
        })
        .with_state(state)
        // Outermost, so the span covers routing and every handler.
        .layer(TraceLayer::http_server(tracer))
}

fn trace_id() -> Option<String> {
    Context::current()
        .span_context()
        .filter(|c| c.trace_id.is_valid())
        .map(|c| c.trace_id.to_string())
}

fn with_trace_header(mut resp: Response) -> Response {
    if let Some(id) = trace_id()
        && let Ok(v) = HeaderValue::from_str(&id)
    {
        resp.headers_mut().insert("x-trace-id", v);
    }
    resp
}

fn error(status: StatusCode, message: &str) -> Response {
    with_trace_header((status, Json(json!({ "error": message }))).into_response())
}

/// Maps a failure of B to A's answer: never B's message.
fn upstream_error(s: &tonic::Status) -> Response {
    tracing::warn!(code = ?s.code(), "business service call failed");
    match s.code() {
        tonic::Code::Unavailable => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "a backend service is unavailable; retry later",
        ),
        // The client's deadline (tonic reports its own timeout as Cancelled).
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "a backend service did not answer in time; retry later",
        ),
        tonic::Code::InvalidArgument => error(StatusCode::BAD_REQUEST, "invalid request"),
        _ => error(StatusCode::BAD_GATEWAY, "a backend service failed"),
    }
}

/// Query parameters of `/api/v1/search`, all optional so every problem
/// gets the same kind of answer.
#[derive(Debug, Deserialize)]
pub struct SearchParams {
    q: Option<String>,
    limit: Option<String>,
}

async fn search(
    State(st): State<AppState>,
    params: Result<Query<SearchParams>, QueryRejection>,
) -> Response {
    let started = Instant::now();
    let Ok(Query(params)) = params else {
        return error(StatusCode::BAD_REQUEST, "the query string is malformed");
    };
    let q = params.q.unwrap_or_default();
    let q = q.trim();
    if q.is_empty() {
        return error(StatusCode::BAD_REQUEST, "parameter q is required");
    }
    if q.chars().count() > MAX_QUERY_CHARS {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("parameter q is longer than {MAX_QUERY_CHARS} characters"),
        );
    }
    let limit = match params.limit.as_deref().map(str::parse::<u32>) {
        None => 10,
        Some(Ok(n)) if (1..=100).contains(&n) => n,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "parameter limit must be an integer from 1 to 100",
            );
        }
    };
    if st.faults.apply().await.fail {
        st.metrics.observe("search", false, started);
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "frontend overloaded (injected fault); retry later",
        );
    }
    let mut client = st.business.clone();
    match client
        .search(pb::SearchRequest {
            query: q.to_string(),
            limit,
        })
        .await
    {
        Ok(r) => {
            let r = r.into_inner();
            st.metrics.observe("search", true, started);
            let results: Vec<_> = r
                .results
                .iter()
                .map(|x| json!({ "id": x.id, "title": x.title, "score": x.score }))
                .collect();
            with_trace_header(
                Json(json!({
                    "query": q,
                    "results": results,
                    "shards": r.shards,
                    "trace_id": trace_id(),
                }))
                .into_response(),
            )
        }
        Err(s) => {
            st.metrics.observe("search", false, started);
            upstream_error(&s)
        }
    }
}

/// Query parameters of `/api/v1/process`.
#[derive(Debug, Deserialize)]
pub struct ProcessParams {
    data: Option<String>,
}

async fn process(
    State(st): State<AppState>,
    params: Result<Query<ProcessParams>, QueryRejection>,
) -> Response {
    let started = Instant::now();
    let Ok(Query(params)) = params else {
        return error(StatusCode::BAD_REQUEST, "the query string is malformed");
    };
    let data = params.data.unwrap_or_default();
    if data.is_empty() {
        return error(StatusCode::BAD_REQUEST, "parameter data is required");
    }
    if data.chars().count() > MAX_DATA_CHARS {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("parameter data is longer than {MAX_DATA_CHARS} characters"),
        );
    }
    if st.faults.apply().await.fail {
        st.metrics.observe("process", false, started);
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "frontend overloaded (injected fault); retry later",
        );
    }
    let mut client = st.business.clone();
    match client.process(pb::ProcessRequest { data }).await {
        Ok(r) => {
            let r = r.into_inner();
            st.metrics.observe("process", true, started);
            with_trace_header(
                Json(json!({
                    "id": r.id,
                    "digest": r.digest,
                    "words": r.words,
                    "trace_id": trace_id(),
                }))
                .into_response(),
            )
        }
        Err(s) => {
            st.metrics.observe("process", false, started);
            upstream_error(&s)
        }
    }
}
