//! The sidecar's registry, built as the server builds it, against its
//! section of `docs/METRICS.md`.

use super::Metrics;

#[test]
fn the_registry_matches_the_catalogue() {
    let metrics = Metrics::new();
    metrics.received.with_label_values(&["otlp_grpc"]).inc();
    metrics.send_failures.with_label_values(&["a:4317"]).inc();
    metrics.breaker_open.with_label_values(&["a:4317"]).set(1);
    clew_runtime::metrics::catalogue_check("sidecar", &metrics.registry);
}
