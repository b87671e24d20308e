//! Writes the CRDs as YAML: `crdgen <dir>...` writes `externalaudience.yaml` and
//! `audienceactivation.yaml` into each `<dir>` (`make crds`: `crds/` and the Helm chart's
//! `files/`); without an argument it prints the ExternalAudience CRD.
fn main() -> anyhow::Result<()> {
    let dirs: Vec<std::path::PathBuf> = std::env::args_os().skip(1).map(Into::into).collect();
    if dirs.is_empty() {
        print!("{}", audience_operator::api::crd_yaml()?);
        return Ok(());
    }
    for (file, yaml) in audience_operator::api::crd_files()? {
        for dir in &dirs {
            std::fs::write(dir.join(file), &yaml)?;
        }
    }
    Ok(())
}
