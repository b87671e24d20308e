//! Writes the CRDs as YAML: `crdgen <dir>` writes `externalaudience.yaml` and
//! `audienceactivation.yaml` into `<dir>` (`make crds`); without an argument it prints the
//! ExternalAudience CRD.
fn main() -> anyhow::Result<()> {
    match std::env::args_os().nth(1) {
        Some(dir) => {
            let dir = std::path::PathBuf::from(dir);
            for (file, yaml) in audience_operator::api::crd_files()? {
                std::fs::write(dir.join(file), yaml)?;
            }
        }
        None => print!("{}", audience_operator::api::crd_yaml()?),
    }
    Ok(())
}
