//! The attribute keys clew adds to OTLP, so that a span exported over OTLP
//! carries everything clew's native span does.

/// Span attribute carrying the vector clock at start (its `clew-vclock`
/// encoding).
pub const CLOCK_START: &str = "clew.clock.start";
/// Span attribute carrying the vector clock at end.
pub const CLOCK_END: &str = "clew.clock.end";
/// Resource attribute naming the vector-clock node of the process.
pub const NODE: &str = "clew.node";
/// Resource attribute naming the service (OpenTelemetry's).
pub const SERVICE_NAME: &str = "service.name";
