//! The visualizer's registry, built as the server builds it, against its
//! section of `docs/METRICS.md`.

use std::time::Duration;

use axum::http::StatusCode;

use super::Metrics;

#[test]
fn the_registry_matches_the_catalogue() {
    let metrics = Metrics::new();
    metrics.request("page", StatusCode::OK);
    metrics.upstream(StatusCode::OK, Duration::from_millis(3));
    metrics.upstream_error("timeout");
    clew_runtime::metrics::catalogue_check("visualizer", &metrics.registry);
}
