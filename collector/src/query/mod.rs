//! The query API: a Jaeger-compatible HTTP JSON API ([`router`], the same
//! paths and shapes as Jaeger's query service, so Grafana's Jaeger data source
//! and Jaeger clients work) and clew's gRPC `Query` service ([`QueryGrpc`]),
//! both over an `Arc<dyn Storage>`.
//!
//! | path | answer (`data`) |
//! |---|---|
//! | `GET /api/services` | service names |
//! | `GET /api/services/{service}/operations` | operation names |
//! | `GET /api/operations?service=&spanKind=` | `[{name, spanKind}]` |
//! | `GET /api/traces?service=&operation=&tags=&tag=&minDuration=&maxDuration=&start=&end=&limit=&lookback=&traceID=` | traces |
//! | `GET /api/traces/{traceID}` | `[trace]`, or 404 |
//! | `GET /api/dependencies?endTs=&lookback=` | `[{parent, child, callCount}]` |
//! | `GET /api/clew/…` | analysis: see [`analysis`] |
//!
//! Differences from Jaeger: `service` may be omitted from a search (any
//! service); without `start` and `lookback` a search is unbounded in time
//! (Jaeger defaults to two days back), and without `end` it has no upper
//! bound (so a span from a host whose clock runs ahead is still found). The
//! tag `error=true` selects spans whose status is ERROR (clew shows that
//! status as that tag). Trace ids are always written as 32 hex digits.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use clew_proto::v1::FilterCriteria;

use crate::storage::{MAX_LIMIT, Storage, StorageError, TraceId};

pub mod analysis;
pub mod grpc;
pub mod jaeger;
pub mod rollups;
#[cfg(test)]
pub(crate) mod tests;

pub use grpc::QueryGrpc;
use jaeger::Envelope;

/// Default lookback of `/api/dependencies`, as in Jaeger: one day.
const DEFAULT_DEPENDENCY_LOOKBACK_MS: u64 = 24 * 60 * 60 * 1_000;

/// Why a query request failed. The response never shows storage internals.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A parameter could not be parsed or is out of range.
    #[error("unable to parse param '{param}': {msg}")]
    BadParam {
        /// The parameter's name, as in the URL.
        param: &'static str,
        /// What is wrong with it.
        msg: String,
    },
    /// A required parameter is missing, or parameters contradict each other.
    #[error("{0}")]
    BadRequest(String),
    /// The trace is not stored.
    #[error("trace not found")]
    TraceNotFound,
    /// The store failed; its `Display` is safe to show.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A bug on the server (an analysis task panicked); details are logged.
    #[error("internal error")]
    Internal,
}

/// Result of a query handler.
pub type Result<T, E = AppError> = std::result::Result<T, E>;

impl AppError {
    pub(crate) fn bad(param: &'static str, msg: impl Into<String>) -> Self {
        AppError::BadParam {
            param,
            msg: msg.into(),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            AppError::BadParam { .. } | AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::TraceNotFound => StatusCode::NOT_FOUND,
            AppError::Storage(StorageError::InvalidTrace(_)) => StatusCode::BAD_REQUEST,
            AppError::Storage(e) if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Storage(_) | AppError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let AppError::Storage(e) = &self {
            tracing::warn!(error = %e.detail(), "query failed");
        }
        let body = Envelope {
            data: (),
            total: 0,
            limit: 0,
            offset: 0,
            errors: Some(vec![jaeger::ErrorEntry {
                code: status.as_u16(),
                // Storage errors display without internals (see StorageError).
                msg: self.to_string(),
            }]),
        };
        (status, Json(body)).into_response()
    }
}

#[derive(Debug, Clone)]
struct AppState {
    storage: Arc<dyn Storage>,
}

/// The Jaeger-compatible query API over `storage`.
pub fn router(storage: Arc<dyn Storage>) -> Router {
    Router::new()
        .route("/api/services", get(services))
        .route(
            "/api/services/{service}/operations",
            get(service_operations),
        )
        .route("/api/operations", get(operations))
        .route("/api/traces", get(find_traces))
        .route("/api/traces/{trace_id}", get(get_trace))
        .route("/api/dependencies", get(dependencies))
        .with_state(AppState {
            storage: storage.clone(),
        })
        // clew's analysis routes under /api/clew/.
        .merge(analysis::routes(storage))
}

/// Query parameters in order, repeated keys kept (`tag=` may repeat).
#[derive(Debug)]
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    pub(crate) fn from(q: Result<Query<Vec<(String, String)>>, QueryRejection>) -> Result<Self> {
        q.map(|Query(v)| Params(v))
            .map_err(|e| AppError::BadRequest(format!("malformed query string: {e}")))
    }

    /// The first non-empty value of `key`, as Go's `FormValue` (an empty
    /// value counts as unset).
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, v)| k == key && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, v)| k == key && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn u64(&self, key: &'static str) -> Result<Option<u64>> {
        self.get(key)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| AppError::bad(key, format!("not a non-negative integer: {v:?}")))
            })
            .transpose()
    }

    pub(crate) fn duration(&self, key: &'static str) -> Result<Option<u64>> {
        self.get(key)
            .map(|v| parse_duration(v).map_err(|m| AppError::bad(key, m)))
            .transpose()
    }
}

pub(crate) fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Parses a Go-style duration (`1.5s`, `100ms`, `500us`, `1h30m`) into
/// nanoseconds. Units: `ns`, `us`, `µs`, `ms`, `s`, `m`, `h`; a unit is
/// required except for `0`. Negative durations are refused.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let err = || format!("invalid duration {s:?}");
    if s == "0" {
        return Ok(0);
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.is_empty() {
        return Err(err());
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num = &rest[..num_len];
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(err());
        }
        let value: f64 = num.parse().map_err(|_| err())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale: f64 = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3_600e9,
            "" => return Err(format!("missing unit in duration {s:?}")),
            _ => return Err(format!("unknown unit {unit:?} in duration {s:?}")),
        };
        total += value * scale;
    }
    if !total.is_finite() || total >= u64::MAX as f64 {
        return Err(format!("duration {s:?} is out of range"));
    }
    // Truncation toward zero, as Go does for fractional nanoseconds.
    Ok(total as u64)
}

fn micros_to_nanos(param: &'static str, us: u64) -> Result<u64> {
    us.checked_mul(1_000)
        .ok_or_else(|| AppError::bad(param, "out of range"))
}

fn ok_list<T: serde::Serialize>(items: Vec<T>) -> Response {
    let n = items.len();
    Json(Envelope::ok(items, n)).into_response()
}

async fn services(State(st): State<AppState>) -> Result<Response> {
    Ok(ok_list(st.storage.services().await?))
}

async fn service_operations(
    State(st): State<AppState>,
    Path(service): Path<String>,
) -> Result<Response> {
    let mut names: Vec<String> = st
        .storage
        .operations(&service, None)
        .await?
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    // The same name may come with several kinds.
    names.dedup();
    Ok(ok_list(names))
}

async fn operations(
    State(st): State<AppState>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response> {
    let p = Params::from(q)?;
    let service = p
        .get("service")
        .ok_or_else(|| AppError::BadRequest("parameter 'service' is required".into()))?;
    let kind = p.get("spanKind").unwrap_or("");
    let kind = jaeger::parse_span_kind(kind).ok_or_else(|| {
        AppError::bad(
            "spanKind",
            format!(
                "unsupported span kind {kind:?}, expecting one of \
                 server, client, producer, consumer, internal, unspecified"
            ),
        )
    })?;
    let ops: Vec<jaeger::Operation> = st
        .storage
        .operations(service, kind)
        .await?
        .into_iter()
        .map(|(name, kind)| jaeger::Operation {
            name,
            span_kind: jaeger::span_kind_name(kind),
        })
        .collect();
    Ok(ok_list(ops))
}

async fn get_trace(State(st): State<AppState>, Path(trace_id): Path<String>) -> Result<Response> {
    let id = jaeger::parse_trace_id(&trace_id).map_err(|m| AppError::bad("traceID", m))?;
    let trace = st
        .storage
        .get_trace(TraceId(id))
        .await?
        .ok_or(AppError::TraceNotFound)?;
    Ok(ok_list(vec![jaeger::to_jaeger(&trace)]))
}

/// The search parameters of `/api/traces`, parsed.
#[derive(Debug, Default, PartialEq)]
struct Search {
    filter: FilterCriteria,
    /// `traceID=` parameters: fetch these and ignore the rest, as Jaeger does.
    trace_ids: Vec<[u8; 16]>,
}

fn parse_search(p: &Params, now_ns: u64) -> Result<Search> {
    let mut trace_ids = Vec::new();
    for id in p.all("traceID") {
        trace_ids.push(jaeger::parse_trace_id(id).map_err(|m| AppError::bad("traceID", m))?);
    }
    let mut tags = BTreeMap::new();
    if let Some(json) = p.get("tags") {
        let map: BTreeMap<String, serde_json::Value> = serde_json::from_str(json)
            .map_err(|e| AppError::bad("tags", format!("expecting a JSON object: {e}")))?;
        for (k, v) in map {
            let v = match v {
                serde_json::Value::String(s) => s,
                // Jaeger's UI sends strings; a bare number or bool matches its rendering.
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                other => {
                    return Err(AppError::bad(
                        "tags",
                        format!("value of {k:?} must be a string, got {other}"),
                    ));
                }
            };
            tags.insert(k, v);
        }
    }
    for kv in p.all("tag") {
        let (k, v) = kv
            .split_once(':')
            .ok_or_else(|| AppError::bad("tag", format!("expecting key:value, got {kv:?}")))?;
        tags.insert(k.to_owned(), v.to_owned());
    }

    // `error=true` is the tag clew derives from an ERROR status (see
    // `jaeger::to_jaeger`), so searching for it means "errors only".
    let errors_only = tags.get("error").is_some_and(|v| v == "true");
    if errors_only {
        tags.remove("error");
    }

    let min = p.duration("minDuration")?.unwrap_or(0);
    let max = p.duration("maxDuration")?.unwrap_or(0);
    if min != 0 && max != 0 && max < min {
        return Err(AppError::BadRequest(
            "'maxDuration' should be greater than 'minDuration'".into(),
        ));
    }

    let end = p
        .u64("end")?
        .map(|us| micros_to_nanos("end", us))
        .transpose()?;
    let start = match p.u64("start")? {
        Some(us) => micros_to_nanos("start", us)?,
        // Jaeger's UI sends "custom" along with start and end; ignore it then.
        None => match p.get("lookback").filter(|l| *l != "custom") {
            Some(l) => {
                let back = parse_duration(l).map_err(|m| AppError::bad("lookback", m))?;
                end.unwrap_or(now_ns).saturating_sub(back)
            }
            None => 0,
        },
    };
    if let Some(end) = end
        && start > end
    {
        return Err(AppError::BadRequest(
            "'start' should be before 'end'".into(),
        ));
    }

    let limit = match p.u64("limit")? {
        None => 0,
        Some(n) => u32::try_from(n.min(MAX_LIMIT as u64)).unwrap_or(u32::MAX),
    };

    Ok(Search {
        filter: FilterCriteria {
            service: p.get("service").unwrap_or_default().to_owned(),
            operation: p.get("operation").unwrap_or_default().to_owned(),
            tags: tags.into_iter().collect(),
            min_duration_nanos: min,
            max_duration_nanos: max,
            start_time_min_unix_nano: start,
            start_time_max_unix_nano: end.unwrap_or(0),
            errors_only,
            limit,
        },
        trace_ids,
    })
}

async fn find_traces(
    State(st): State<AppState>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response> {
    let p = Params::from(q)?;
    let search = parse_search(&p, now_nanos())?;
    let traces = if search.trace_ids.is_empty() {
        st.storage.list_traces(&search.filter).await?
    } else {
        let mut out = Vec::new();
        for id in search.trace_ids.iter().take(MAX_LIMIT) {
            if let Some(t) = st.storage.get_trace(TraceId(*id)).await? {
                out.push(t);
            }
        }
        out
    };
    Ok(ok_list(traces.iter().map(jaeger::to_jaeger).collect()))
}

/// `[start, end]` in nanoseconds from Jaeger's `endTs` (Unix ms, default
/// now) and `lookback` (ms, default one day).
pub(crate) fn dependency_window(p: &Params) -> Result<(u64, u64)> {
    let end_ns = match p.u64("endTs")? {
        Some(ms) => ms
            .checked_mul(1_000_000)
            .ok_or_else(|| AppError::bad("endTs", "out of range"))?,
        None => now_nanos(),
    };
    let lookback_ms = p.u64("lookback")?.unwrap_or(DEFAULT_DEPENDENCY_LOOKBACK_MS);
    Ok((
        end_ns.saturating_sub(lookback_ms.saturating_mul(1_000_000)),
        end_ns,
    ))
}

async fn dependencies(
    State(st): State<AppState>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response> {
    let (start_ns, end_ns) = dependency_window(&Params::from(q)?)?;
    let deps: Vec<jaeger::Dependency> = rollups::edges(st.storage.as_ref(), start_ns, end_ns)
        .await?
        .into_iter()
        .map(|e| jaeger::Dependency {
            parent: e.parent,
            child: e.child,
            call_count: e.calls,
        })
        .collect();
    Ok(ok_list(deps))
}
