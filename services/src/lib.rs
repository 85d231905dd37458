//! clew's demo services, instrumented the way a user would instrument them:
//! only through clew-tracer's tower layers, with the tracer configured from
//! the standard `OTEL_*` environment variables.
//!
//! - **A** ([`frontend`]): HTTP on :8000, `GET /api/v1/search?q=` and
//!   `GET /api/v1/process?data=`; calls B.
//! - **B** ([`business`]): gRPC on :8001; a search fans out to every shard
//!   of C in parallel, a process call stores then reads back through C.
//! - **C** ([`data`]): gRPC on :8002, an in-memory data layer.
//! - [`traffic`]: drives A with a realistic mix, bad input included.
//!
//! Each service takes [`Faults`]: injected latency, latency spikes and an
//! error rate, so bottlenecks and anomalies show up in the traces.

pub mod business;
pub mod cli;
pub mod data;
pub mod faults;
pub mod frontend;
pub mod ops;
pub mod telemetry;
pub mod traffic;

pub use faults::Faults;

/// Generated types of `clew.demo.v1`.
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod pb {
    tonic::include_proto!("clew.demo.v1");
}

/// A lazily connecting channel to a downstream service at `url`: connecting
/// gives up after a second (then UNAVAILABLE), and a call with no answer
/// after `timeout` fails, so a stalled or unreachable service never leaves
/// a request hanging.
fn downstream(
    url: &str,
    timeout: std::time::Duration,
) -> anyhow::Result<tonic::transport::Channel> {
    Ok(tonic::transport::Endpoint::from_shared(url.to_string())?
        .connect_timeout(std::time::Duration::from_secs(1))
        .timeout(timeout)
        .connect_lazy())
}
