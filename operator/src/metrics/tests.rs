//! The operator's registry, built as `run` builds it, against its section
//! of `docs/METRICS.md`.

use super::Metrics;

#[test]
fn the_registry_matches_the_catalogue() {
    let metrics = Metrics::new();
    metrics.reconcile_errors.with_label_values(&["api"]).inc();
    metrics.admissions.with_label_values(&["injected"]).inc();
    metrics
        .certificates_issued
        .with_label_values(&["collector", "new"])
        .inc();
    clew_runtime::metrics::catalogue_check("operator", &metrics.registry);
}
