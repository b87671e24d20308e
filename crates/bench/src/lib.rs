//! `make bench` and `make soak` drivers (see `src/main.rs` and [`soak`]).

pub mod soak;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, PostParams};
use serde_json::json;

/// The kinds of `deploy/` that the harnesses (and the tests) install: the CRD and exactly the
/// RBAC the kustomize base renders (the Deployment needs a kubelet, which the local control plane
/// has not).
pub const INSTALLED_KINDS: &[&str] = &[
    "CustomResourceDefinition",
    "Namespace",
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
];

/// Creates namespace `ns` with the Secret `aep-credentials` for the emulator's default
/// credential.
pub async fn namespace_with_credentials(client: &kube::Client, ns: &str) -> anyhow::Result<()> {
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": ns}}))?,
    )
    .await
    .with_context(|| format!("creating namespace {ns}"))?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "aep-credentials"},
        "stringData": {"clientId": "local-client", "clientSecret": "local-secret", "orgId": "LOCAL0RG@AdobeOrg"},
    }))?;
    secrets.create(&PostParams::default(), &secret).await?;
    Ok(())
}

/// Peak resident memory (`VmHWM`) of process `pid`, MiB; `None` once it is gone.
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    proc_status_mib(pid, "VmHWM:")
}

/// Resident memory now (`VmRSS`) of process `pid`, MiB; `None` once it is gone.
pub fn rss_mib(pid: u32) -> Option<f64> {
    proc_status_mib(pid, "VmRSS:")
}

/// Resident memory now of process `pid` by kind, MiB: `RssAnon` (heap, stacks) and `RssFile`
/// (mapped code and data of the binary and its libraries).
pub fn rss_split_mib(pid: u32) -> Option<(f64, f64)> {
    Some((proc_status_mib(pid, "RssAnon:")?, proc_status_mib(pid, "RssFile:")?))
}

fn proc_status_mib(pid: u32, field: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}
