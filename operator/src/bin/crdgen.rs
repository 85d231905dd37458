//! `crdgen`: prints the TraceCollector CRD as YAML (`crdgen > crds/tracecollector.yaml`).

fn main() -> anyhow::Result<()> {
    print!("{}", clew_operator::crd_yaml()?);
    Ok(())
}
