//! clew-tracer: the library applications link to emit spans to clew (or to
//! any OTLP receiver).
//!
//! ```
//! use clew_tracer::{Tracer, Sampler, export::InMemoryExporter};
//!
//! let exporter = InMemoryExporter::new();
//! let tracer = Tracer::builder("checkout")
//!     .sampler(Sampler::AlwaysOn)
//!     .exporter(exporter.clone())
//!     .build();
//! let mut span = tracer.start("charge card");
//! span.set_attribute("amount", 42i64);
//! let child = tracer.span("call bank").parent(&span.context()).start();
//! drop(child); // a dropped span is ended
//! span.end();
//! tracer.force_flush(std::time::Duration::from_secs(1));
//! assert_eq!(exporter.finished_spans().len(), 2);
//! ```
//!
//! - [`Tracer`] / [`Span`]: the span API; parents come from an explicit
//!   [`Context`] or the current one ([`Context::attach`],
//!   [`FutureExt::with_context`]).
//! - [`propagation`]: W3C `traceparent` / `tracestate` / `baggage` and the
//!   `clew-vclock` vector-clock header.
//! - [`clock`]: vector clocks.
//! - [`sampling`]: head samplers.
//! - [`export`]: the non-blocking batch pipeline and exporters (OTLP gRPC,
//!   clew native gRPC, in-memory).
//! - [`reliability`]: circuit breaker, retry with backoff and the disk
//!   spill log (the `clew-reliability` crate, also used by the sidecar and
//!   the collector).
//! - [`instrument`]: tonic, tower/axum HTTP and `tracing` integrations.

pub use clew_model::clock;
pub mod context;
pub mod export;
mod idgen;
pub use clew_model::ids;
pub mod instrument;
pub mod propagation;
/// The reliability primitives (`clew-reliability`), for applications
/// that buffer or retry around their own exports.
pub use clew_reliability as reliability;
pub mod sampling;
pub mod span;
mod time;
pub mod tracer;

pub use clock::{ClockOrdering, VectorClock};
pub use context::{Context, ContextGuard, FutureExt};
pub use ids::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
pub use sampling::Sampler;
pub use span::{KeyValue, Span, SpanBuilder, SpanData, SpanKind, Status, Value};
pub use tracer::{Tracer, TracerBuilder, TracerStats, builder_from_env, builder_from_lookup};

/// Errors of the tracer's fallible constructors.
#[derive(Debug, thiserror::Error)]
pub enum ClewError {
    /// A setting is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An exporter could not be created.
    #[error(transparent)]
    Export(#[from] export::ExportError),
}

/// `Result` with [`ClewError`].
pub type Result<T, E = ClewError> = std::result::Result<T, E>;
