//! Shared helpers for the integration tiers: the per-binary control plane, per-test namespaces
//! and deadline-based waiting (never bare sleeps).
#![allow(dead_code)]

use std::{future::Future, time::Duration};

use envtest::ControlPlane;
use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, Client, api::PostParams};

/// The control plane shared by every test of this test binary.
pub fn control_plane() -> &'static ControlPlane {
    ControlPlane::shared()
}

/// An admin client for this test's runtime.
pub async fn admin() -> Client {
    control_plane().admin_client().await.expect("admin client")
}

/// A client authenticated as the operator's ServiceAccount.
pub async fn operator() -> Client {
    control_plane().operator_client().await.expect("operator client")
}

/// Creates a fresh namespace named after the test (plus a random suffix) and returns its name.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    let name = format!("{}-{}", prefix, &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
    }))
    .expect("namespace json");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    name
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
pub mod operator;

/// Helm, built from its pinned Go module by `hack/helm/build.sh` (cached after the first build).
pub fn helm() -> std::path::PathBuf {
    let out = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/hack/helm/build.sh"))
        .output()
        .expect("hack/helm/build.sh runs");
    assert!(
        out.status.success(),
        "hack/helm/build.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}
