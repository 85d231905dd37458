//! clew's analysis routes, next to the Jaeger-compatible ones and with the
//! same envelope and errors (400 naming the parameter, 404 for an unknown
//! trace, 503 when storage is down).
//!
//! | path | answer (`data`) |
//! |---|---|
//! | `GET /api/clew/traces/{traceID}/analysis` | `{traceID, spans, bottlenecks, causal}` |
//! | `GET /api/clew/anomalies?service=&lookback=&end=&limit=` | `{anomalies, groups, startUs, endUs, fromUs, toUs, stepUs, tierUs, structuralFromTraces, structuralTruncated, structuralFromUs?}` |
//! | `GET /api/clew/red?service=&lookback=&step=&end=` | `{series, fromUs, toUs, stepUs, tierUs}` |
//! | `GET /api/clew/dependencies?endTs=&lookback=` | `{services, edges, fromUs, toUs, stepUs, tierUs}` |
//!
//! RED, the dependency graph, latency outliers and error-rate spikes come
//! from the roll-ups of every collector ([`rollups`]): every span of the
//! window, over whole buckets from `fromUs` to `toUs`, with percentiles,
//! medians and MADs from the sketch (within its 1 % relative error).
//!
//! `anomalies` (module `anomalies`) lists single anomalies (at most
//! `limit`); `groups` folds every anomaly found into one row per (kind,
//! service, operation, span kind), with its count, baseline, worst value
//! and ratio, first and last seen, and its [`GROUP_EXAMPLES`] worst
//! anomalies, with their traces from the index. New call edges and missing
//! children need whole traces: they come from the most recent
//! [`MAX_LIMIT`](crate::storage::MAX_LIMIT) traces of the window, and
//! `structuralFromTraces`/`structuralTruncated` say how many were read
//! and whether the window held more.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use crate::query::jaeger::{self, Envelope};
use crate::query::rollups::{self, RedRow};
use crate::query::{AppError, Params, Result, dependency_window, now_nanos};
use crate::storage::{Storage, TraceId};
use clew_analysis::rollup::{Resolution, resolution};
use clew_analysis::{Bottlenecks, CausalAnalysis, causal_order, detect_bottlenecks};

/// Default window of anomalies and RED metrics: one hour.
const DEFAULT_LOOKBACK_NS: u64 = 3_600 * 1_000_000_000;
/// Worst anomalies kept as examples in each anomaly group.
pub const GROUP_EXAMPLES: usize = 5;
/// Most buckets a RED query may ask for.
pub const MAX_BUCKETS: u64 = 1_000;

/// The analysis routes over `storage` (merged into [`crate::query::router`]).
pub fn routes(storage: Arc<dyn Storage>) -> Router {
    Router::new()
        .route("/api/clew/traces/{trace_id}/analysis", get(trace_analysis))
        .route("/api/clew/anomalies", get(anomalies))
        .route("/api/clew/red", get(red))
        .route("/api/clew/dependencies", get(dependencies))
        .with_state(storage)
}

type St = State<Arc<dyn Storage>>;
type Q = std::result::Result<Query<Vec<(String, String)>>, QueryRejection>;

fn ok<T: Serialize>(data: T) -> Response {
    Json(Envelope::ok(data, 0)).into_response()
}

/// Runs CPU-bound analysis off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        tracing::error!(error = %e, "analysis task failed");
        AppError::Internal
    })
}

/// The analysis of one trace.
#[derive(Debug, Serialize)]
struct TraceAnalysis {
    #[serde(rename = "traceID")]
    trace_id: String,
    spans: usize,
    bottlenecks: Bottlenecks,
    causal: CausalAnalysis,
}

async fn trace_analysis(State(st): St, Path(trace_id): Path<String>) -> Result<Response> {
    let id = jaeger::parse_trace_id(&trace_id).map_err(|m| AppError::bad("traceID", m))?;
    let trace = st
        .get_trace(TraceId(id))
        .await?
        .ok_or(AppError::TraceNotFound)?;
    let analysis = blocking(move || TraceAnalysis {
        trace_id: jaeger::hex(&trace.trace_id),
        spans: trace.spans.len(),
        bottlenecks: detect_bottlenecks(&trace),
        causal: causal_order(&trace),
    })
    .await?;
    Ok(ok(analysis))
}

/// `[start, end]` in nanoseconds from `end=` (Unix µs, default now) and
/// `lookback=` (a duration, default one hour).
fn window(p: &Params) -> Result<(u64, u64)> {
    let end = match p.u64("end")? {
        Some(us) => us
            .checked_mul(1_000)
            .ok_or_else(|| AppError::bad("end", "out of range"))?,
        None => now_nanos(),
    };
    let lookback = p.duration("lookback")?.unwrap_or(DEFAULT_LOOKBACK_NS);
    if lookback == 0 {
        return Err(AppError::bad("lookback", "must be greater than 0"));
    }
    Ok((end.saturating_sub(lookback), end))
}

async fn anomalies(State(st): St, q: Q) -> Result<Response> {
    let p = Params::from(q)?;
    let window = window(&p)?;
    let limit = p.u64("limit")?.unwrap_or(200).clamp(1, 10_000) as usize;
    let service = p.get("service").unwrap_or_default().to_owned();
    Ok(ok(anomalies::answer(st, service, window, limit).await?))
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RedAnswer {
    series: Vec<RedRow>,
    #[serde(flatten)]
    covered: Covered,
}

/// The stretch of time the figures cover: the window widened to whole
/// buckets of the tier read.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Covered {
    from_us: u64,
    to_us: u64,
    step_us: u64,
    tier_us: u64,
}

impl From<&Resolution> for Covered {
    fn from(r: &Resolution) -> Covered {
        Covered {
            from_us: r.from_unix_nanos / 1_000,
            to_us: r.to_unix_nanos / 1_000,
            step_us: r.step_nanos / 1_000,
            tier_us: r.tier_nanos / 1_000,
        }
    }
}

async fn red(State(st): St, q: Q) -> Result<Response> {
    let p = Params::from(q)?;
    let (start, end) = window(&p)?;
    let step = match p.duration("step")? {
        Some(0) => return Err(AppError::bad("step", "must be greater than 0")),
        Some(s) => s,
        // 60 points by default.
        None => ((end - start) / 60).max(1),
    };
    let points = (end - start).div_ceil(step);
    if points > MAX_BUCKETS {
        return Err(AppError::bad(
            "step",
            format!("too small for the lookback: at most {MAX_BUCKETS} buckets"),
        ));
    }
    // The finest tier with at most twice the points asked for.
    let res = resolution(start, end, (2 * points).min(MAX_BUCKETS) as usize);
    let service = p.get("service").map(str::to_owned);
    let buckets = rollups::buckets(st.as_ref(), &res).await?;
    let series = blocking(move || rollups::red_rows(&buckets, &res, service.as_deref())).await?;
    Ok(ok(RedAnswer {
        series,
        covered: Covered::from(&res),
    }))
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct DependencyAnswer {
    services: Vec<clew_analysis::ServiceNode>,
    edges: Vec<rollups::Edge>,
    #[serde(flatten)]
    covered: Covered,
}

async fn dependencies(State(st): St, q: Q) -> Result<Response> {
    let (start, end) = dependency_window(&Params::from(q)?)?;
    let res = rollups::summary_resolution(start, end);
    let buckets = rollups::buckets(st.as_ref(), &res).await?;
    let (services, edges) = blocking(move || rollups::graph(&buckets, &res)).await?;
    Ok(ok(DependencyAnswer {
        services,
        edges,
        covered: Covered::from(&res),
    }))
}

mod anomalies;
#[cfg(test)]
mod tests;
