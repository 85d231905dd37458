#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The checked-in CRD YAML must match the Rust types.

use std::path::Path;

fn repo_file(rel: &str) -> String {
    // The runtime variable: a test binary reused from a build in another
    // checkout must read this checkout's files.
    let dir = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let path = Path::new(&dir).join("..").join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn crds_dir_matches_the_rust_types() {
    assert!(
        repo_file("crds/tracecollector.yaml") == clew_operator::crd_yaml().unwrap(),
        "crds/tracecollector.yaml is stale: run `cargo run -p clew-operator --bin crdgen > crds/tracecollector.yaml`"
    );
}

#[test]
fn chart_crd_template_matches_the_rust_types() {
    assert!(
        repo_file("charts/clew/templates/crds.yaml")
            == clew_operator::crd_chart_template().unwrap(),
        "charts/clew/templates/crds.yaml is stale: run `cargo run -p clew-operator --bin crdgen -- --chart > charts/clew/templates/crds.yaml`"
    );
}

#[test]
fn generated_yaml_has_the_subresources() {
    let yaml = clew_operator::crd_yaml().unwrap();
    assert!(yaml.contains("name: tracecollectors.clew.dev"));
    assert!(yaml.contains("scale:"));
    assert!(yaml.contains("status: {}"));
}
