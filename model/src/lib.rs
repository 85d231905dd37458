//! clew's shared data model, used by the tracer, the sidecar and the
//! collector alike:
//!
//! - [`ids`]: W3C trace and span ids, trace flags and state, the span
//!   context;
//! - [`clock`]: vector clocks and their `clew-vclock` codec;
//! - [`attrs`]: the attribute keys clew adds to OTLP;
//! - [`otlp`]: clew native spans as an OTLP export request;
//! - [`placement`]: which collector a trace goes to, and which keep its
//!   copies (rendezvous hashing by trace ID);
//! - [`now_unix_nanos`]: the wall clock in Unix nanoseconds.

pub mod attrs;
pub mod clock;
pub mod ids;
pub mod otlp;
pub mod placement;

pub use clock::{ClockOrdering, NodeId, VectorClock};
pub use ids::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

/// Now, in Unix nanoseconds (0 before 1970, saturating in 2554).
pub fn now_unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
