//! Prints the ExternalAudience CRD as YAML (`cargo run --bin crdgen > crds/externalaudience.yaml`).
fn main() -> anyhow::Result<()> {
    print!("{}", audience_operator::api::crd_yaml()?);
    Ok(())
}
