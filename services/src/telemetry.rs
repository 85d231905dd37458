//! The tracer each demo service uses, configured like any OpenTelemetry
//! application: `OTEL_SERVICE_NAME`, `OTEL_EXPORTER_OTLP_ENDPOINT`,
//! `OTEL_TRACES_SAMPLER`, `OTEL_RESOURCE_ATTRIBUTES`.

use clew_tracer::Tracer;
use clew_tracer::export::OtlpGrpcExporter;

/// The default OTLP endpoint: a sidecar or collector on localhost.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:4317";

/// A tracer named `service` unless `OTEL_SERVICE_NAME` says otherwise,
/// exporting over OTLP/gRPC to `OTEL_EXPORTER_OTLP_ENDPOINT` (default
/// [`DEFAULT_ENDPOINT`]).
pub fn tracer(service: &str) -> anyhow::Result<Tracer> {
    let mut b = clew_tracer::builder_from_env(service)?;
    let has_endpoint = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|k| std::env::var(k).is_ok_and(|v| !v.trim().is_empty()));
    if !has_endpoint {
        b = b.exporter(OtlpGrpcExporter::new(DEFAULT_ENDPOINT)?);
    }
    Ok(b.try_build()?)
}

/// Logs to stderr with `RUST_LOG` (default `info`).
pub fn init_logging() {
    clew_runtime::init_logging();
}

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    clew_runtime::shutdown_signal().await;
}
