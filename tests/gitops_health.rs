//! GitOps health, judged by the GitOps tools' own code (issue: install and run it on a real
//! cluster). The operator and the AEP emulator drive real `ExternalAudience` objects through every
//! state users see; each state is captured from the API server as JSON and judged by
//! - Flux, Helm 4 and kpt: `sigs.k8s.io/cli-utils` kstatus `status.Compute` (`hack/kstatus`,
//!   built by `hack/kstatus/build.sh`);
//! - Argo CD: `deploy/argocd/health.lua` in a Lua 5.4 interpreter sandboxed like Argo CD's VM
//!   (`hack/argocd-health/run.lua`, `lua5.4` from `hack/argocd-health/install-lua.sh`).
//!
//! Both run once over all captures; the verdict table (printed, and in every failure message) is
//! the one in the README. The shipped `argocd-cm` patch, the Grafana dashboard and the
//! ServiceMonitor overlay are checked against the Lua, the operator's /metrics and the base.

mod support;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use audience_operator::api::ExternalAudience;
use kube::{
    Api, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams},
};
use serde_json::{Value, json};
use support::operator::{Env, condition_is, condition_reason, is_ready, is_ready_with_current_run, kubectl, wait_gone};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const TIMEOUT: Duration = Duration::from_secs(90);
const PAUSED: &str = "aep.audience-operator.dev/paused";
const CM_KEY: &str = "resource.customizations.health.aep.audience-operator.dev_ExternalAudience";
const CM_KEY_ACTIVATION: &str = "resource.customizations.health.aep.audience-operator.dev_AudienceActivation";

/// Per captured state, in capture order: (state, kstatus verdict, Argo CD script verdict). `None`:
/// anything but Healthy or Unknown, as Argo CD itself decides deleting objects before any script.
const EXPECTED: &[(&str, &str, Option<&str>)] = &[
    ("created, no status yet", "InProgress", Some("Progressing")),
    ("creating (operation in flight)", "InProgress", Some("Progressing")),
    ("ingesting (run in flight)", "InProgress", Some("Progressing")),
    ("Ready", "Current", Some("Healthy")),
    ("spec changed, not yet observed", "InProgress", Some("Progressing")),
    ("Stalled (operation failed)", "Failed", Some("Degraded")),
    ("Paused (was Ready)", "Current", Some("Suspended")),
    ("deleting (AEP refuses)", "Terminating", None),
    (
        "data expiring soon (Ready, DataExpiring=True)",
        "Current",
        Some("Healthy"),
    ),
    ("data expired (Stalled/DataExpired)", "Failed", Some("Degraded")),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_state_gets_the_kstatus_and_argo_cd_verdict_users_expect() {
    // The tools first: a missing toolchain fails here, not after a minute of operator work.
    let kstatus = tool("hack/kstatus/build.sh");
    let lua = tool("hack/argocd-health/install-lua.sh");

    let mut env = Env::start("gitops", |b| {
        b.operation_timing(Duration::from_secs(3), 0)
            .run_timing(Duration::from_secs(3), 0)
    })
    .await;
    let raw = raw_api(&env);
    let mut captured: Vec<Value> = Vec::new();

    // Created, before the operator wrote anything.
    env.stop_operator(false);
    for yaml in [env.seed_yaml(), env.seed_named("leaving", "Leaving members")] {
        let (ok, out) = env.apply_yaml(&yaml);
        assert!(ok, "kubectl apply: {out}");
    }
    let created = serde_json::to_value(raw.get("loyalty-members").await.expect("get")).expect("json");
    assert_eq!(
        created["status"],
        json!({"observedGeneration": -1}),
        "precondition: only the CRD's status default, no operator write"
    );
    captured.push(created);
    env.start_operator();

    captured.push(
        capture_when(&env, "loyalty-members", "creating", |o| {
            condition_is(o, "Reconciling", "True")
                && ["CreatingAudience", "WaitingForOperation"].contains(&condition_reason(o, "Reconciling").as_str())
                && o.status.as_ref().is_some_and(|s| s.audience_id.is_none())
        })
        .await,
    );
    captured.push(
        capture_when(&env, "loyalty-members", "ingesting", |o| {
            condition_is(o, "Reconciling", "True")
                && condition_reason(o, "Reconciling") == "RunInProgress"
                && o.status
                    .as_ref()
                    .and_then(|s| s.last_run.as_ref())
                    .is_some_and(|r| r.status == audience_operator::api::RunState::Processing)
        })
        .await,
    );
    captured.push(capture_when(&env, "loyalty-members", "Ready", is_ready_with_current_run).await);
    // The other object's create is over too, so the failing operation below can only be doomed's.
    env.wait_ready("leaving", TIMEOUT).await;

    // A spec change, as the API server answers it: nothing has reacted yet.
    let changed = raw
        .patch(
            "loyalty-members",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"description": "Refreshed weekly"}})),
        )
        .await
        .expect("patch description");
    let changed = serde_json::to_value(changed).expect("json");
    assert_eq!(
        (
            &changed["metadata"]["generation"],
            &changed["status"]["observedGeneration"]
        ),
        (&json!(2), &json!(1)),
        "precondition: generation ahead of observedGeneration"
    );
    captured.push(changed);

    env.emulator.update_faults(|f| f.fail_next_operations = 1);
    let (ok, out) = env.apply_yaml(&env.seed_named("doomed", "Doomed members"));
    assert!(ok, "kubectl apply: {out}");
    captured.push(
        capture_when(&env, "doomed", "Stalled", |o| {
            condition_is(o, "Stalled", "True") && condition_reason(o, "Stalled") == "OperationFailed"
        })
        .await,
    );

    // Paused once Ready at the new generation; meanwhile, a deletion AEP refuses.
    env.wait_obj(
        "loyalty-members",
        "Ready at generation 2",
        TIMEOUT,
        is_ready_with_current_run,
    )
    .await;
    annotate_paused(&raw, "loyalty-members", Some("true")).await;
    env.emulator.update_faults(|f| f.refuse_delete_in_use = true);
    env.api()
        .delete("leaving", &DeleteParams::default())
        .await
        .expect("delete");
    let paused = capture_when(&env, "loyalty-members", "Paused", |o| {
        condition_is(o, "Paused", "True") && condition_reason(o, "Paused") == "Paused"
    })
    .await;
    let typed: ExternalAudience = serde_json::from_value(paused.clone()).expect("typed");
    assert!(
        is_ready(&typed),
        "a paused object keeps its Ready condition: {paused:#}"
    );
    captured.push(paused);
    captured.push(
        capture_when(&env, "leaving", "deleting, held by the finalizer", |o| {
            o.metadata.deletion_timestamp.is_some()
                && o.metadata
                    .finalizers
                    .as_ref()
                    .is_some_and(|f| f.iter().any(|f| f == audience_operator::api::FINALIZER))
                && condition_reason(o, "Stalled") == "DeleteRefused"
        })
        .await,
    );

    // Data expiry: one day of TTL is within the 72 h warning window from the start; then the
    // operator's clock moves past it.
    let brief = env
        .seed_named("brief", "Brief members")
        .replace("ttlInDays: 40", "ttlInDays: 1");
    let (ok, out) = env.apply_yaml(&brief);
    assert!(ok, "kubectl apply: {out}");
    captured.push(
        capture_when(&env, "brief", "data expiring soon", |o| {
            is_ready(o)
                && o.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "DataExpiring" && c.status == "True" && c.reason == "DataExpiringSoon")
                })
        })
        .await,
    );
    env.extra_flags.push("--clock-offset=25h".into());
    env.stop_operator(false);
    env.start_operator();
    captured.push(
        capture_when(&env, "brief", "data expired", |o| {
            condition_is(o, "Stalled", "True") && condition_reason(o, "Stalled") == "DataExpired"
        })
        .await,
    );

    // The dashboard asks only for metrics this operator serves.
    let exposition = scrape_metrics(&env).await;

    // Judge every capture with both tools, once.
    let dir = tempfile::tempdir().expect("temp dir");
    let files: Vec<PathBuf> = captured
        .iter()
        .enumerate()
        .map(|(i, obj)| {
            let path = dir.path().join(format!("{i:02}.json"));
            std::fs::write(&path, serde_json::to_vec_pretty(obj).expect("json")).expect("write capture");
            path
        })
        .collect();
    let kstatus_lines = run_tool(Command::new(&kstatus).args(&files));
    let lua_lines = run_tool(
        Command::new(&lua)
            .arg(format!("{ROOT}/hack/argocd-health/run.lua"))
            .arg(format!("{ROOT}/deploy/argocd/health.lua"))
            .args(&files),
    );

    // Clean up before judging, so a wrong verdict leaves no object behind.
    annotate_paused(&raw, "loyalty-members", None).await;
    env.emulator.update_faults(|f| f.refuse_delete_in_use = false);
    for name in ["loyalty-members", "doomed", "brief"] {
        env.api().delete(name, &DeleteParams::default()).await.expect("delete");
    }
    for name in ["loyalty-members", "doomed", "leaving", "brief"] {
        wait_gone(&env.api(), name, TIMEOUT).await;
    }
    env.stop_operator(false);

    let table = verdicts(&captured, &kstatus_lines, &lua_lines);
    println!("{}", render(&table));
    let wrong = wrong_verdicts(EXPECTED, &table);
    assert!(
        wrong.is_empty(),
        "wrong verdicts:\n{}\n\n{}\ncaptures: {}",
        wrong.join("\n"),
        render(&table),
        serde_json::to_string_pretty(&captured).unwrap_or_default()
    );
    check_dashboard(&exposition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_argocd_cm_patch_embeds_health_lua_and_installs_with_kubectl_patch() {
    let lua = std::fs::read_to_string(format!("{ROOT}/deploy/argocd/health.lua")).expect("health.lua");
    let patch_path = format!("{ROOT}/deploy/argocd/argocd-cm-patch.yaml");
    let patch: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&patch_path).expect("patch")).expect("patch yaml");
    assert_eq!(
        (
            patch["kind"].as_str(),
            patch["metadata"]["name"].as_str(),
            patch["metadata"]["namespace"].as_str()
        ),
        (Some("ConfigMap"), Some("argocd-cm"), Some("argocd"))
    );
    for key in [CM_KEY, CM_KEY_ACTIVATION] {
        assert!(
            patch["data"][key].as_str() == Some(lua.as_str()),
            "deploy/argocd/argocd-cm-patch.yaml is stale ({key}): run hack/argocd-health/gen-cm-patch.sh"
        );
    }

    // The install command the patch documents, on an argocd-cm that already holds settings.
    let client = support::admin().await;
    let (ok, out) = kubectl(&["create", "namespace", "argocd"], None);
    assert!(ok, "{out}");
    let (ok, out) = kubectl(
        &[
            "-n",
            "argocd",
            "create",
            "configmap",
            "argocd-cm",
            "--from-literal=url=https://argocd.example.com",
        ],
        None,
    );
    assert!(ok, "{out}");
    let (ok, out) = kubectl(
        &[
            "-n",
            "argocd",
            "patch",
            "configmap",
            "argocd-cm",
            "--type",
            "merge",
            "--patch-file",
            &patch_path,
        ],
        None,
    );
    assert!(ok, "kubectl patch: {out}");
    let cm = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), "argocd")
        .get("argocd-cm")
        .await
        .expect("argocd-cm");
    let data = cm.data.unwrap_or_default();
    assert_eq!(data.get(CM_KEY), Some(&lua), "the health check is installed verbatim");
    assert_eq!(
        data.get("url").map(String::as_str),
        Some("https://argocd.example.com"),
        "existing settings are kept"
    );
    let (ok, out) = kubectl(&["delete", "namespace", "argocd", "--wait=false"], None);
    assert!(ok, "{out}");
}

#[test]
fn the_monitoring_overlay_scrapes_the_operators_metrics_port() {
    let out = Command::new("kubectl")
        .args(["kustomize", &format!("{ROOT}/deploy/overlays/monitoring")])
        .output()
        .expect("kubectl runs (PATH holds the envtest binaries)");
    assert!(
        out.status.success(),
        "kubectl kustomize: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<serde_yaml_ng::Value> = serde_yaml_ng::Deserializer::from_slice(&out.stdout)
        .map(|d| serde::Deserialize::deserialize(d).expect("yaml document"))
        .collect();
    let of_kind = |kind: &'static str| docs.iter().filter(move |d| d["kind"].as_str() == Some(kind));
    let monitors: Vec<_> = of_kind("ServiceMonitor").collect();
    assert_eq!(monitors.len(), 1, "one ServiceMonitor");
    let sm = monitors[0];
    assert_eq!(sm["apiVersion"].as_str(), Some("monitoring.coreos.com/v1"));
    let selector = sm["spec"]["selector"]["matchLabels"].as_mapping().expect("matchLabels");
    let namespaces: Vec<&str> = sm["spec"]["namespaceSelector"]["matchNames"]
        .as_sequence()
        .map(|s| s.iter().filter_map(|n| n.as_str()).collect())
        .unwrap_or_else(|| vec![sm["metadata"]["namespace"].as_str().unwrap_or_default()]);
    let port = sm["spec"]["endpoints"][0]["port"].as_str().expect("endpoint port");
    assert_eq!(port, "metrics");

    let selected: Vec<_> = of_kind("Service")
        .filter(|svc| {
            namespaces.contains(&svc["metadata"]["namespace"].as_str().unwrap_or_default())
                && selector
                    .iter()
                    .all(|(k, v)| svc["metadata"]["labels"].get(k) == Some(v))
        })
        .collect();
    assert_eq!(
        selected.len(),
        1,
        "the ServiceMonitor selects exactly the metrics Service"
    );
    let svc = selected[0];
    let svc_port = svc["spec"]["ports"]
        .as_sequence()
        .and_then(|ports| ports.iter().find(|p| p["name"].as_str() == Some(port)))
        .expect("the Service has the port the ServiceMonitor scrapes");
    // ... which leads to the operator container's metrics port.
    let target = svc_port["targetPort"].as_str().expect("named targetPort");
    let deployment = of_kind("Deployment").next().expect("Deployment");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let svc_selector = svc["spec"]["selector"].as_mapping().expect("Service selector");
    assert!(
        svc_selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
        "the Service selects the operator's pods"
    );
    let container_ports: Vec<&str> = deployment["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|c| c["ports"].as_sequence().into_iter().flatten())
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(
        container_ports.contains(&target),
        "targetPort {target} is a container port: {container_ports:?}"
    );
}

/// Runs a project script that installs or builds a tool and prints its path.
fn tool(script: &str) -> PathBuf {
    let out = Command::new(format!("{ROOT}/{script}"))
        .output()
        .unwrap_or_else(|e| panic!("{script}: {e}"));
    assert!(
        out.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(Path::new(&path).is_file(), "{script} printed {path:?}");
    PathBuf::from(path)
}

fn run_tool(cmd: &mut Command) -> Vec<String> {
    let out = cmd.output().expect("tool runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn raw_api(env: &Env) -> Api<DynamicObject> {
    Api::namespaced_with(
        env.client.clone(),
        &env.ns,
        &ApiResource::erase::<ExternalAudience>(&()),
    )
}

/// Polls object `name` until `check` holds, and returns it as the API server served it (not
/// round-tripped through the Rust types, so no field the types lack is lost).
async fn capture_when(env: &Env, name: &str, what: &str, check: impl Fn(&ExternalAudience) -> bool) -> Value {
    let raw = raw_api(env);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let mut last = Value::Null;
    loop {
        if let Ok(obj) = raw.get(name).await {
            last = serde_json::to_value(obj).expect("json");
            let typed: ExternalAudience = serde_json::from_value(last.clone()).expect("an ExternalAudience");
            if check(&typed) {
                return last;
            }
        }
        if tokio::time::Instant::now() > deadline {
            let log = env.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "timed out after {TIMEOUT:?} waiting for {name} to be {what}\nstatus: {:#}\noperator log tail:\n{}",
                last["status"],
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn annotate_paused(raw: &Api<DynamicObject>, name: &str, value: Option<&str>) {
    raw.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {PAUSED: value}}})),
    )
    .await
    .expect("annotate");
}

/// The operator's /metrics, at the address its log names.
async fn scrape_metrics(env: &Env) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let log = env.log_text();
    let addr = log
        .lines()
        .rev()
        .find(|l| l.contains("Serving /metrics"))
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("addr=")))
        .unwrap_or_else(|| panic!("the operator logs its metrics address:\n{log}"))
        .trim_matches('"')
        .to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.expect("connect /metrics");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: operator\r\n\r\n")
        .await
        .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("response");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.") && head.contains(" 200 "), "{head}");
    body.to_owned()
}

/// Every metric the dashboard queries is one the operator exposes (by its `# TYPE` lines, so a
/// family without samples yet counts), and every panel has a query.
fn check_dashboard(exposition: &str) {
    let mut exposed = BTreeSet::new();
    for line in exposition.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some("#"), Some("TYPE"), Some(name), Some(kind)) => {
                let suffixes: &[&str] = match kind {
                    "counter" => &["_total", "_created"],
                    "histogram" => &["_bucket", "_sum", "_count", "_created"],
                    _ => &[""],
                };
                exposed.extend(suffixes.iter().map(|s| format!("{name}{s}")));
            }
            (Some(sample), ..) if !sample.starts_with('#') => {
                exposed.insert(sample.split('{').next().unwrap_or_default().to_owned());
            }
            _ => {}
        }
    }
    let text = std::fs::read_to_string(format!("{ROOT}/deploy/dashboards/audience-operator.json")).expect("dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut used = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("externalaudience_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        used.insert(name);
    }
    let missing: Vec<_> = used.iter().filter(|m| !exposed.contains(*m)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics the operator does not expose: {missing:?}\nexposed: {exposed:?}"
    );
    assert!(used.len() >= 5, "the dashboard covers the operator's metrics: {used:?}");
    for panel in dashboard["panels"].as_array().expect("panels") {
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().map(Vec::as_slice).unwrap_or_default();
        assert!(
            !targets.is_empty()
                && targets
                    .iter()
                    .all(|t| t["expr"].as_str().is_some_and(|e| !e.is_empty())),
            "panel {} has queries",
            panel["title"]
        );
        // A panel that picks an operation, condition or outcome by name picks one that exists
        // (this test's objects make every AEP call such a panel names).
        for expr in targets.iter().filter_map(|t| t["expr"].as_str()) {
            for label in ["operation", "condition", "outcome"] {
                let needle = format!("{label}=\"");
                let mut rest = expr;
                while let Some(at) = rest.find(&needle) {
                    let value = rest[at + needle.len()..].split('"').next().unwrap_or_default();
                    let pair = format!("{label}=\"{value}\"");
                    assert!(
                        exposition.contains(&pair),
                        "panel {} selects {pair}, which the operator's /metrics never showed:\n{exposition}",
                        panel["title"]
                    );
                    rest = &rest[at + needle.len()..];
                }
            }
        }
    }
}

struct Verdict {
    state: &'static str,
    object: String,
    kstatus: String,
    kstatus_message: String,
    argo: String,
    argo_message: String,
}

fn verdicts(captured: &[Value], kstatus: &[String], lua: &[String]) -> Vec<Verdict> {
    verdicts_of(EXPECTED, captured, kstatus, lua)
}

/// The captures that got another verdict than `expected` says.
fn wrong_verdicts(expected: &[(&str, &str, Option<&str>)], table: &[Verdict]) -> Vec<String> {
    expected
        .iter()
        .zip(table)
        .filter(|((_, kstatus, argo), v)| {
            v.kstatus != *kstatus
                || match argo {
                    Some(argo) => v.argo != *argo,
                    None => v.argo == "Healthy" || v.argo == "Unknown",
                }
        })
        .map(|((state, kstatus, argo), v)| {
            format!(
                "{state}: kstatus {} (want {kstatus}), Argo CD {} (want {})",
                v.kstatus,
                v.argo,
                argo.unwrap_or("not Healthy")
            )
        })
        .collect()
}

fn verdicts_of(
    expected: &'static [(&'static str, &str, Option<&str>)],
    captured: &[Value],
    kstatus: &[String],
    lua: &[String],
) -> Vec<Verdict> {
    assert_eq!(captured.len(), expected.len(), "one capture per expected state");
    assert_eq!(
        kstatus.len(),
        captured.len(),
        "one kstatus line per object: {kstatus:?}"
    );
    assert_eq!(lua.len(), captured.len(), "one Lua line per object: {lua:?}");
    expected
        .iter()
        .zip(captured)
        .zip(kstatus.iter().zip(lua))
        .map(|((&(state, ..), obj), (k, l))| {
            let k: Vec<&str> = k.splitn(3, '\t').collect();
            let l: Vec<&str> = l.splitn(2, '\t').collect();
            assert_eq!(k.len(), 3, "kstatus line: {k:?}");
            assert_eq!(l.len(), 2, "Lua line: {l:?}");
            let object = obj["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            assert_eq!(k[0], object, "kstatus lines come in input order");
            Verdict {
                state,
                object,
                kstatus: k[1].to_owned(),
                kstatus_message: k[2].to_owned(),
                argo: l[0].to_owned(),
                argo_message: l[1].to_owned(),
            }
        })
        .collect()
}

fn render(table: &[Verdict]) -> String {
    let mut out =
        String::from("| state | object | kstatus (Flux, Helm 4) | Argo CD (health.lua) |\n|---|---|---|---|\n");
    for v in table {
        out.push_str(&format!(
            "| {} | {} | {} ({}) | {} ({}) |\n",
            v.state, v.object, v.kstatus, v.kstatus_message, v.argo, v.argo_message
        ));
    }
    out
}

/// The AudienceActivation states, judged the same way (one health check serves both kinds).
const EXPECTED_ACTIVATION: &[(&str, &str, Option<&str>)] = &[
    ("created, no status yet", "InProgress", Some("Progressing")),
    ("waiting for its audience", "InProgress", Some("Progressing")),
    ("Ready", "Current", Some("Healthy")),
    ("spec changed, not yet observed", "InProgress", Some("Progressing")),
    (
        "Stalled (export settings the dataflow refuses)",
        "Failed",
        Some("Degraded"),
    ),
    ("Paused (was Ready)", "Current", Some("Suspended")),
    ("deleting (paused: the removal waits)", "Terminating", None),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_activation_state_gets_the_kstatus_and_argo_cd_verdict_users_expect() {
    use audience_operator::api::AudienceActivation;
    let kstatus = tool("hack/kstatus/build.sh");
    let lua = tool("hack/argocd-health/install-lua.sh");
    let mut env = Env::start_with(
        "gitops-act",
        |b| {
            b.operation_timing(Duration::from_millis(300), 0)
                .run_timing(Duration::from_millis(300), 0)
        },
        vec!["--activation-poll-interval=1s".into()],
        true,
    )
    .await;
    let batch = env
        .emulator
        .create_flow(&aep_emulator::NewFlow::new("prod", "S3", aep::DestinationKind::Batch));
    let streaming = env.emulator.create_flow(&aep_emulator::NewFlow::new(
        "prod",
        "Kinesis",
        aep::DestinationKind::Streaming,
    ));
    let raw: Api<DynamicObject> = Api::namespaced_with(
        env.client.clone(),
        &env.ns,
        &ApiResource::erase::<AudienceActivation>(&()),
    );
    let manifest = |name: &str, flow: &str| {
        format!(
            "apiVersion: aep.audience-operator.dev/v1alpha1\nkind: AudienceActivation\nmetadata:\n  name: {name}\nspec:\n  \
             audienceRef: {{name: loyalty-members}}\n  dataflowId: {flow}\n  export:\n    mode: DAILY_FULL_EXPORT\n    \
             schedule: {{frequency: DAILY, triggerType: AFTER_SEGMENT_EVAL}}\n"
        )
    };
    let log_path = env.log.clone();
    let capture = |name: &'static str, what: &'static str, check: fn(&AudienceActivation) -> bool| {
        let raw = raw.clone();
        let log = log_path.clone();
        async move {
            let deadline = tokio::time::Instant::now() + TIMEOUT;
            loop {
                if let Ok(obj) = raw.get(name).await {
                    let value = serde_json::to_value(obj).expect("json");
                    let typed: AudienceActivation = serde_json::from_value(value.clone()).expect("typed");
                    if check(&typed) {
                        return value;
                    }
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{name} never {what}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    fn cond(a: &AudienceActivation, type_: &str, reason: &str) -> bool {
        a.status.as_ref().is_some_and(|s| {
            s.observed_generation == a.metadata.generation
                && s.conditions
                    .iter()
                    .any(|c| c.type_ == type_ && c.status == "True" && c.reason == reason)
        })
    }
    let mut captured = Vec::new();
    env.stop_operator(false);
    let (ok, out) = env.apply_yaml(&manifest("to-s3", &batch));
    assert!(ok, "{out}");
    captured.push(serde_json::to_value(raw.get("to-s3").await.expect("get")).expect("json"));
    env.start_operator();
    captured.push(capture("to-s3", "waiting", |a| cond(a, "Reconciling", "AudienceNotReady")).await);
    let (ok, out) = env.apply_yaml(&env.seed_yaml());
    assert!(ok, "{out}");
    captured.push(capture("to-s3", "Ready", |a| cond(a, "Ready", "Ready")).await);
    let changed = raw
        .patch(
            "to-s3",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"export": {"schedule": {"frequency": "ONCE"}}}})),
        )
        .await
        .expect("patch");
    captured.push(serde_json::to_value(changed).expect("json"));
    let (ok, out) = env.apply_yaml(&manifest("to-kinesis", &streaming));
    assert!(ok, "{out}");
    captured.push(capture("to-kinesis", "Stalled", |a| cond(a, "Stalled", "ExportSettingsInvalid")).await);
    capture("to-s3", "Ready again", |a| cond(a, "Ready", "Ready")).await;
    annotate_paused(&raw, "to-s3", Some("true")).await;
    captured.push(capture("to-s3", "Paused", |a| cond(a, "Paused", "Paused")).await);
    raw.delete("to-s3", &DeleteParams::default()).await.expect("delete");
    captured.push(
        capture("to-s3", "deleting", |a| {
            a.metadata.deletion_timestamp.is_some()
                && a.finalizers()
                    .iter()
                    .any(|f| f == audience_operator::api::ACTIVATION_FINALIZER)
        })
        .await,
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let files: Vec<PathBuf> = captured
        .iter()
        .enumerate()
        .map(|(i, obj)| {
            let path = dir.path().join(format!("{i:02}.json"));
            std::fs::write(&path, serde_json::to_vec_pretty(obj).expect("json")).expect("write capture");
            path
        })
        .collect();
    let kstatus_lines = run_tool(Command::new(&kstatus).args(&files));
    let lua_lines = run_tool(
        Command::new(&lua)
            .arg(format!("{ROOT}/hack/argocd-health/run.lua"))
            .arg(format!("{ROOT}/deploy/argocd/health.lua"))
            .args(&files),
    );
    annotate_paused(&raw, "to-s3", None).await;
    env.api()
        .delete("loyalty-members", &DeleteParams::default())
        .await
        .expect("delete");
    wait_gone(&env.api(), "loyalty-members", TIMEOUT).await;
    env.stop_operator(false);

    let table = verdicts_of(EXPECTED_ACTIVATION, &captured, &kstatus_lines, &lua_lines);
    println!("{}", render(&table));
    let wrong = wrong_verdicts(EXPECTED_ACTIVATION, &table);
    assert!(
        wrong.is_empty(),
        "wrong verdicts:\n{}\n\n{}",
        wrong.join("\n"),
        render(&table)
    );
}
