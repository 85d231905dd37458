//! What the span benchmark and the `ratio` and `spanloop` examples share:
//! the attributes every span gets, and an exporter per library that
//! discards what it is given (each library's own export machinery still
//! runs). Included with `#[path]` by the examples.

use std::hint::black_box;

/// The 5 string attributes set on every benchmarked span.
pub const ATTRS: [(&str, &str); 5] = [
    ("http.request.method", "GET"),
    ("url.path", "/api/v1/search"),
    ("server.address", "service-a"),
    ("user_agent.original", "clew-bench"),
    ("app.tenant", "acme"),
];

/// clew: a `SpanExporter` that discards.
#[derive(Debug)]
pub struct ClewNoop;

impl clew_tracer::export::SpanExporter for ClewNoop {
    fn export<'a>(
        &'a mut self,
        batch: &'a clew_tracer::export::ExportBatch,
    ) -> clew_tracer::export::BoxFuture<'a, Result<(), clew_tracer::export::ExportError>> {
        black_box(batch);
        Box::pin(async { Ok(()) })
    }
}

/// opentelemetry_sdk: a `SpanExporter` that discards.
#[derive(Debug)]
pub struct OtelNoop;

impl opentelemetry_sdk::trace::SpanExporter for OtelNoop {
    async fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        drop(black_box(batch));
        Ok(())
    }
}

/// fastrace: a `Reporter` that discards.
pub struct FastraceNoop;

impl fastrace::collector::Reporter for FastraceNoop {
    fn report(&mut self, spans: Vec<fastrace::collector::SpanRecord>) {
        drop(black_box(spans));
    }
}
