//! `crdgen`: prints the TraceCollector CRD as YAML.
//!
//! `crdgen > crds/tracecollector.yaml` and
//! `crdgen --chart > charts/clew/templates/crds.yaml` regenerate the checked-in copies
//! (a test fails when they drift from the Rust types).

fn main() -> anyhow::Result<()> {
    let chart = std::env::args().nth(1).as_deref() == Some("--chart");
    if chart {
        print!("{}", clew_operator::crd_chart_template()?);
    } else {
        print!("{}", clew_operator::crd_yaml()?);
    }
    Ok(())
}
