#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The Helm chart, rendered and linted by the real Helm engine and validated against the
//! Kubernetes 1.29–1.33 schemas (tests/chart/validate_chart.py, run with `$CLEW_PYTHON`, the
//! venv scripts/test.sh sets up with helm-python-sdk and kubernetes-validate).

use std::path::Path;
use std::process::Command;

#[test]
fn chart_renders_lints_and_validates_for_every_value_set() {
    let python = std::env::var("CLEW_PYTHON")
        .expect("CLEW_PYTHON must name a python with helm-python-sdk and kubernetes-validate (run scripts/test.sh)");
    let dir = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let here = Path::new(&dir);
    let out = Command::new(&python)
        .arg(here.join("tests/chart/validate_chart.py"))
        .arg(here.join("../charts/clew"))
        .output()
        .unwrap_or_else(|e| panic!("running {python}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "chart validation failed:\n{stdout}\n{stderr}"
    );
    println!("{stdout}");
    assert!(
        stdout.contains("validated strictly against Kubernetes 1.29.0-1.33.0"),
        "{stdout}"
    );
}
