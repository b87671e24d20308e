//! End-to-end fixture: a namespace with the CRD and `deploy/` RBAC installed, an AEP emulator
//! (real HTTP on loopback), a credentials Secret pointing at it, and the operator binary running
//! as its ServiceAccount identity, scoped to the namespace.
#![allow(dead_code)]

use std::{path::PathBuf, process::Command, sync::OnceLock, time::Duration};

use aep_emulator::{Emulator, RunningEmulator};
use audience_operator::api::{ExternalAudience, ExternalAudienceStatus};
use envtest::Watched;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;

use super::{admin, control_plane, namespace, wait_for};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Runs kubectl as the admin; returns (success, stdout+stderr).
pub fn kubectl(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    let mut cmd = Command::new("kubectl");
    cmd.arg("--kubeconfig")
        .arg(control_plane().admin_kubeconfig())
        .args(args);
    cmd.stdin(if stdin.is_some() {
        std::process::Stdio::piped()
    } else {
        std::process::Stdio::null()
    });
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("kubectl runs");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    let out = child.wait_with_output().expect("kubectl output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

use bench::INSTALLED_KINDS;

/// Whether `doc`, one document of a multi-document YAML stream, is of one of `kinds`.
pub fn is_kind(doc: &str, kinds: &[&str]) -> bool {
    doc.lines()
        .find_map(|l| l.strip_prefix("kind: "))
        .is_some_and(|k| kinds.contains(&k.trim()))
}

/// `kubectl kustomize <dir>` filtered to [`INSTALLED_KINDS`], as one multi-document YAML.
pub fn rendered_install(dir: &str) -> String {
    let (ok, out) = kubectl(&["kustomize", &format!("{ROOT}/{dir}")], None);
    assert!(ok, "kubectl kustomize {dir}: {out}");
    out.split("\n---\n")
        .filter(|doc| is_kind(doc, INSTALLED_KINDS))
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// Installs the CRD and the RBAC that `deploy/` renders, once per test binary, as a user would.
pub fn install_crd_and_rbac() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let (ok, out) = kubectl(
            &["apply", "--server-side", "-f", "-"],
            Some(&rendered_install("deploy")),
        );
        assert!(ok, "kubectl apply (deploy/ rendered): {out}");
        let (ok, out) = kubectl(
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/externalaudiences.aep.audience-operator.dev",
                "crd/audienceactivations.aep.audience-operator.dev",
            ],
            None,
        );
        assert!(ok, "crd established: {out}");
    });
}

/// Operator flags used by the tests (fast polls; everything else default).
pub fn fast_flags() -> Vec<String> {
    [
        "--operation-poll-interval=300ms",
        "--run-poll-interval=300ms",
        "--error-backoff-base=200ms",
        "--error-backoff-max=5s",
        "--deferred-retry-interval=5s",
        "--credentials-retry-interval=5s",
        "--metrics-addr=127.0.0.1:0",
        "--create-settle-window=3s",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// The operator binary as its ServiceAccount identity, watching `ns`, with the emulator at `aep`
/// as its (administrator-chosen) AEP and IMS endpoint.
pub fn spawn_operator(ns: &str, aep: &url::Url, extra_flags: &[String], log: &std::path::Path) -> Watched {
    let mut args = vec![
        "run".to_owned(),
        format!("--kubeconfig={}", control_plane().operator_kubeconfig().display()),
        format!("--namespace={ns}"),
        format!("--aep-platform-url={aep}"),
        format!("--aep-ims-url={aep}"),
    ];
    args.extend(fast_flags());
    args.extend(extra_flags.iter().cloned());
    let envs = vec![(
        "RUST_LOG".to_owned(),
        "info,audience_operator=debug,aep=debug".to_owned(),
    )];
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_controller"));
    Watched::spawn(&bin, &args, &envs, log).expect("operator starts")
}

/// A second namespace with its own operator, sharing an [`Env`]'s emulator.
pub struct Side {
    pub ns: String,
    pub operator: Option<Watched>,
    pub log: PathBuf,
}

impl Side {
    pub fn api(&self, client: &Client) -> Api<ExternalAudience> {
        Api::namespaced(client.clone(), &self.ns)
    }
}

pub struct Env {
    pub client: Client,
    pub ns: String,
    pub emulator: RunningEmulator,
    pub operator: Option<Watched>,
    pub log: PathBuf,
    pub extra_flags: Vec<String>,
}

impl Env {
    /// A namespace, an emulator configured by `configure`, the credentials Secret, the operator.
    pub async fn start(
        prefix: &str,
        configure: impl FnOnce(aep_emulator::EmulatorBuilder) -> aep_emulator::EmulatorBuilder,
    ) -> Env {
        Self::start_with(prefix, configure, Vec::new(), true).await
    }

    pub async fn start_with(
        prefix: &str,
        configure: impl FnOnce(aep_emulator::EmulatorBuilder) -> aep_emulator::EmulatorBuilder,
        extra_flags: Vec<String>,
        with_secret: bool,
    ) -> Env {
        install_crd_and_rbac();
        let client = admin().await;
        let ns = namespace(&client, prefix).await;
        let emulator = configure(Emulator::builder().listen("127.0.0.1:0".parse().expect("addr")))
            .spawn()
            .await
            .expect("emulator starts");
        let log = control_plane().dir().join(format!("operator-{ns}.log"));
        let mut env = Env {
            client,
            ns,
            emulator,
            operator: None,
            log,
            extra_flags,
        };
        if with_secret {
            env.create_secret("aep-credentials").await;
        }
        env.start_operator();
        env
    }

    /// The credentials Secret for the emulator's default credential.
    pub async fn create_secret(&self, name: &str) {
        self.create_secret_in(&self.ns, name).await;
    }

    /// The credentials Secret in another namespace.
    pub async fn create_secret_in(&self, ns: &str, name: &str) {
        let creds = self.emulator.credentials();
        let base = self.emulator.base_url().to_string();
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": name},
            "stringData": {
                "clientId": creds.client_id,
                "clientSecret": secrecy::ExposeSecret::expose_secret(&creds.client_secret),
                "orgId": creds.org_id,
                "platformUrl": base,
                "imsUrl": base,
            }
        }))
        .expect("secret json");
        Api::<Secret>::namespaced(self.client.clone(), ns)
            .create(&PostParams::default(), &secret)
            .await
            .expect("create secret");
    }

    /// Another namespace with its own credentials Secret and its own operator (like a second
    /// cluster or team), talking to the same emulator.
    pub async fn start_side(&self, prefix: &str) -> Side {
        let ns = namespace(&self.client, prefix).await;
        self.create_secret_in(&ns, "aep-credentials").await;
        let log = control_plane().dir().join(format!("operator-{ns}.log"));
        let operator = Some(spawn_operator(&ns, &self.emulator.base_url(), &self.extra_flags, &log));
        Side { ns, operator, log }
    }

    pub fn start_operator(&mut self) {
        self.operator = Some(spawn_operator(
            &self.ns,
            &self.emulator.base_url(),
            &self.extra_flags,
            &self.log,
        ));
    }

    /// Stops the operator (SIGKILL when `crash`). Returns whether a SIGKILL landed on a running
    /// operator (always false for a graceful stop).
    pub fn stop_operator(&mut self, crash: bool) -> bool {
        match self.operator.take() {
            Some(op) if crash => op.kill(),
            Some(op) => {
                op.stop();
                false
            }
            None => false,
        }
    }

    /// Whether the operator process is running now.
    pub fn operator_alive(&mut self) -> bool {
        self.operator.as_mut().is_some_and(Watched::is_running)
    }

    /// The operator's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn api(&self) -> Api<ExternalAudience> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Applies a manifest with `kubectl apply` in this namespace.
    pub fn apply_yaml(&self, yaml: &str) -> (bool, String) {
        kubectl(&["apply", "-n", &self.ns, "-f", "-"], Some(yaml))
    }

    /// The seed example, in this namespace.
    pub fn seed_yaml(&self) -> String {
        self.seed_yaml_in(&self.ns)
    }

    /// The seed example, in namespace `ns`.
    pub fn seed_yaml_in(&self, ns: &str) -> String {
        std::fs::read_to_string(format!("{ROOT}/deploy/samples/loyalty-members.yaml"))
            .expect("sample")
            .replace("namespace: marketing", &format!("namespace: {ns}"))
    }

    /// The seed example renamed: object `name`, AEP audience name `audience_name`.
    pub fn seed_named(&self, name: &str, audience_name: &str) -> String {
        self.seed_yaml()
            .replace("name: loyalty-members", &format!("name: {name}"))
            .replace("name: Loyalty members", &format!("name: {audience_name}"))
    }

    pub async fn get(&self, name: &str) -> ExternalAudience {
        self.api().get(name).await.expect("get object")
    }

    pub async fn status(&self, name: &str) -> ExternalAudienceStatus {
        self.get(name).await.status.unwrap_or_default()
    }

    /// Waits until `check` holds for the object, dumping the operator log tail on timeout.
    pub async fn wait_obj(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        check: impl Fn(&ExternalAudience) -> bool,
    ) -> ExternalAudience {
        wait_obj_in(&self.api(), &self.log, name, what, timeout, check).await
    }

    /// Waits for Ready=True at the current generation.
    pub async fn wait_ready(&self, name: &str, timeout: Duration) -> ExternalAudience {
        self.wait_obj(name, "Ready", timeout, is_ready).await
    }

    pub async fn merge_spec(&self, name: &str, spec: serde_json::Value) {
        self.api()
            .patch(name, &PatchParams::default(), &Patch::Merge(json!({"spec": spec})))
            .await
            .expect("patch spec");
    }
}

/// Waits until `check` holds for object `name` of `api`, dumping the tail of the operator log at
/// `log` on timeout.
pub async fn wait_obj_in(
    api: &Api<ExternalAudience>,
    log: &std::path::Path,
    name: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&ExternalAudience) -> bool,
) -> ExternalAudience {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Ok(obj) = api.get(name).await
            && check(&obj)
        {
            return obj;
        }
        if tokio::time::Instant::now() > deadline {
            let obj = api.get(name).await.ok();
            let log = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = log
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            panic!(
                "timed out after {timeout:?} waiting for {name} to be {what}\nobject status: {:#?}\noperator log tail:\n{}",
                obj.and_then(|o| o.status),
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until object `name` of `api` is gone.
pub async fn wait_gone(api: &Api<ExternalAudience>, name: &str, timeout: Duration) {
    wait_for(&format!("{name} to be gone"), timeout, || async {
        api.get_opt(name).await.ok().flatten().is_none().then_some(())
    })
    .await
}

/// The reason of condition `type_` (empty when absent).
pub fn condition_reason(obj: &ExternalAudience, type_: &str) -> String {
    obj.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .map(|c| c.reason.clone())
        .unwrap_or_default()
}

/// Ready=True for the object's current generation, with observedGeneration caught up.
pub fn is_ready(obj: &ExternalAudience) -> bool {
    condition_is(obj, "Ready", "True")
}

/// Ready, and the latest ingestion run is for the object's current generation.
pub fn is_ready_with_current_run(obj: &ExternalAudience) -> bool {
    is_ready(obj)
        && obj
            .status
            .as_ref()
            .and_then(|s| s.last_run.as_ref())
            .map(|r| r.generation)
            == obj.metadata.generation
}

pub fn condition_is(obj: &ExternalAudience, type_: &str, status: &str) -> bool {
    let generation = obj.metadata.generation;
    obj.status.as_ref().is_some_and(|s| {
        s.observed_generation == generation
            && s.conditions
                .iter()
                .any(|c| c.type_ == type_ && c.status == status && c.observed_generation == generation)
    })
}

pub fn condition_message(obj: &ExternalAudience, type_: &str) -> String {
    obj.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .map(|c| format!("{}: {}", c.reason, c.message))
        .unwrap_or_default()
}

pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    wait_for(what, timeout, check).await
}
