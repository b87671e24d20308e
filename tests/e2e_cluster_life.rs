//! End to end: the promises (no duplicate, nothing lost, no wasted run, at most one manager per
//! audience) through what a cluster lives through: a restore from a backup, a rebuild from the
//! same manifests on a new control plane, a copied manifest, a second object naming the same
//! audience, a Secret switched to another org, observe-only objects, and audiences brought under
//! Git with `controller import`.
//!
//! Every check counts what the operator sent (the emulator's `received` counters, which count
//! before any answer) and what exists in AEP, never what the emulator refused.

mod support;

use std::{collections::BTreeMap, path::Path, time::Duration};

use aep_emulator::{AudienceMutation, CredentialSpec, Emulator, RunningEmulator, Stats};
use audience_operator::{
    aep::{AepClient, Session},
    api::{ExternalAudience, OWNERSHIP_RECORD, OwnershipProof, OwnershipRecord},
};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use support::operator::{
    Env, condition_message, condition_reason, is_ready, is_ready_with_current_run, kubectl, wait_gone,
};

const TIMEOUT: Duration = Duration::from_secs(120);

/// Requests the operator sent that change something in AEP.
const MUTATING: [&str; 5] = [
    "create_audience",
    "patch_audience",
    "start_run",
    "delete_audience",
    "extend_ttl",
];

fn delta(before: &Stats, after: &Stats, op: &str) -> u64 {
    after.received(op) - before.received(op)
}

fn total(stats: &Stats) -> u64 {
    stats.received.values().sum()
}

/// `n` copies of the seed example, each with its own object and AEP name.
fn many(env: &Env, prefix: &str, n: usize) -> String {
    (0..n)
        .map(|i| env.seed_named(&format!("{prefix}-{i}"), &format!("{prefix} members {i}")))
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// The object as `kubectl get -o yaml` or Velero keeps it: spec, labels and annotations; no uid,
/// status, finalizers, resourceVersion, creation time or managed fields.
fn backup(obj: &ExternalAudience) -> Value {
    json!({
        "apiVersion": "aep.audience-operator.dev/v1alpha1",
        "kind": "ExternalAudience",
        "metadata": {
            "name": obj.name_any(),
            "labels": obj.labels(),
            "annotations": obj.annotations(),
        },
        "spec": serde_json::to_value(&obj.spec).expect("spec"),
    })
}

fn audience_id(obj: &ExternalAudience) -> String {
    obj.status
        .as_ref()
        .and_then(|s| s.audience_id.clone())
        .expect("an audience id")
}

fn has_record(obj: &ExternalAudience) -> bool {
    obj.annotations()
        .get(OWNERSHIP_RECORD)
        .and_then(|v| OwnershipRecord::parse(v, &obj.spec.sandbox).ok())
        .is_some_and(|r| {
            Some(&r.audience_id) == obj.status.as_ref().and_then(|s| s.audience_id.as_ref())
                && r.ingested_spec_hash == obj.status.as_ref().and_then(|s| s.ingested_spec_hash.clone())
        })
}

/// Waits until every object of `api` named in `names` is Ready with its current run and carries
/// the ownership record of it.
async fn wait_ready_with_record(env: &Env, names: &[String]) -> Vec<ExternalAudience> {
    let mut out = Vec::new();
    for name in names {
        out.push(
            env.wait_obj(name, "Ready with its ownership record", TIMEOUT, |o| {
                is_ready_with_current_run(o) && has_record(o)
            })
            .await,
        );
    }
    out
}

fn session(emulator: &RunningEmulator) -> Session {
    AepClient::new(emulator.client_config())
        .expect("client")
        .session(&emulator.credentials(), "prod")
}

/// Creates an audience directly in AEP (as a user with curl would), optionally with one finished
/// run; returns its id.
async fn create_directly(s: &Session, name: &str, description: &str, run: bool) -> String {
    let body = json!({
        "name": name,
        "description": description,
        "fields": [{"name": "email", "type": "string", "identityNs": "email"}],
        "sourceSpec": {"params": {"path": "exports/x.csv", "type": "file", "sourceType": "Cloud Storage"}},
        "ttlInDays": 40,
        "labels": ["core/C1"],
        "audienceType": "people",
        "originName": "CUSTOM_UPLOAD",
    });
    let req = serde_json::from_value(body).expect("request");
    let op = s.create_audience(&req).await.expect("create");
    let id = support::wait_for("the operation", TIMEOUT, || async {
        s.get_operation(&op.operation_id).await.ok().and_then(|o| o.audience_id)
    })
    .await;
    if run {
        let req = serde_json::from_value(json!({"dataFilterStartTime": 764245635, "differentialIngestion": false}))
            .expect("run request");
        let r = s.start_run(&id, &req).await.expect("start run");
        support::wait_for("the run", TIMEOUT, || async {
            s.get_run(&id, &r.run_id)
                .await
                .ok()
                .filter(|r| r.status.is_terminal())
                .map(|_| ())
        })
        .await;
    }
    id
}

// ----- restore and rebuild ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_objects_reattach_to_their_audiences_without_a_create_a_run_or_a_patch() {
    let env = Env::start("restore", |b| b.zero_latency()).await;
    let names: Vec<String> = (0..10).map(|i| format!("restore-{i}")).collect();
    assert!(env.apply_yaml(&many(&env, "restore", 10)).0);
    let originals = wait_ready_with_record(&env, &names).await;
    let ids: BTreeMap<String, String> = originals.iter().map(|o| (o.name_any(), audience_id(o))).collect();
    let saved: Vec<Value> = originals.iter().map(backup).collect();

    // The originals go without touching AEP.
    for name in &names {
        env.merge_spec(name, json!({"deletionPolicy": "Orphan"})).await;
    }
    for name in &names {
        env.api().delete(name, &DeleteParams::default()).await.expect("delete");
    }
    for name in &names {
        wait_gone(&env.api(), name, TIMEOUT).await;
    }
    assert_eq!(env.emulator.state().audiences.len(), 10, "orphaned, not deleted");

    // Restore.
    let before = env.emulator.stats();
    for doc in &saved {
        let obj: ExternalAudience = serde_json::from_value(doc.clone()).expect("backup");
        env.api().create(&PostParams::default(), &obj).await.expect("restore");
    }
    let restored = wait_ready_with_record(&env, &names).await;
    let after = env.emulator.stats();
    for obj in &restored {
        assert_eq!(
            audience_id(obj),
            ids[&obj.name_any()],
            "{}: its own audience",
            obj.name_any()
        );
        assert_eq!(
            obj.status.as_ref().and_then(|s| s.ownership),
            Some(OwnershipProof::RestoreRecord)
        );
    }
    for op in MUTATING {
        assert_eq!(delta(&before, &after, op), 0, "{op} sent during the restore");
    }
    assert_eq!(env.emulator.state().audiences.len(), 10, "no duplicate");
}

/// kubectl against another control plane.
fn kubectl_at(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    let mut cmd = std::process::Command::new("kubectl");
    cmd.arg("--kubeconfig").arg(kubeconfig).args(args);
    cmd.stdin(if stdin.is_some() {
        std::process::Stdio::piped()
    } else {
        std::process::Stdio::null()
    })
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("kubectl runs");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("stdin");
    }
    let out = child.wait_with_output().expect("kubectl output");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_rebuilt_from_a_backup_reattaches_without_a_create_a_run_or_a_patch() {
    let mut env = Env::start("rebuild", |b| b.zero_latency()).await;
    let names: Vec<String> = (0..10).map(|i| format!("rebuild-{i}")).collect();
    assert!(env.apply_yaml(&many(&env, "rebuild", 10)).0);
    let originals = wait_ready_with_record(&env, &names).await;
    let ids: BTreeMap<String, String> = originals.iter().map(|o| (o.name_any(), audience_id(o))).collect();
    let saved: Vec<Value> = originals.iter().map(backup).collect();
    // The old cluster is lost (its operator with it).
    env.stop_operator(true);

    // A new control plane (new etcd): the install, the namespace, the Secret, the operator.
    let cp = tokio::task::spawn_blocking(|| {
        envtest::ControlPlane::start(&envtest::Config::from_env().expect("config")).expect("second control plane")
    })
    .await
    .expect("start");
    let admin = cp.admin_kubeconfig().to_path_buf();
    let (ok, out) = kubectl_at(
        &admin,
        &["apply", "--server-side", "-f", "-"],
        Some(&support::operator::rendered_install("deploy")),
    );
    assert!(ok, "install: {out}");
    let (ok, out) = kubectl_at(
        &admin,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/externalaudiences.aep.audience-operator.dev",
        ],
        None,
    );
    assert!(ok, "crd: {out}");
    let client = cp.admin_client().await.expect("client");
    let (ok, out) = kubectl_at(&admin, &["create", "namespace", &env.ns], None);
    assert!(ok, "namespace: {out}");
    let secret: Secret = Api::<Secret>::namespaced(env.client.clone(), &env.ns)
        .get("aep-credentials")
        .await
        .expect("the old Secret");
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("aep-credentials".into()),
            ..Default::default()
        },
        data: secret.data,
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), &env.ns)
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret");
    let log = cp.dir().join("operator-rebuild.log");
    let base = env.emulator.base_url();
    let mut args = vec![
        "run".to_owned(),
        format!("--kubeconfig={}", cp.operator_kubeconfig().display()),
        format!("--namespace={}", env.ns),
        format!("--aep-platform-url={base}"),
        format!("--aep-ims-url={base}"),
    ];
    args.extend(support::operator::fast_flags());
    let operator = envtest::Watched::spawn(
        Path::new(env!("CARGO_BIN_EXE_controller")),
        &args,
        &[("RUST_LOG".to_owned(), "info".to_owned())],
        &log,
    )
    .expect("operator");

    let before = env.emulator.stats();
    let api = Api::<ExternalAudience>::namespaced(client.clone(), &env.ns);
    for doc in &saved {
        let obj: ExternalAudience = serde_json::from_value(doc.clone()).expect("backup");
        api.create(&PostParams::default(), &obj).await.expect("restore");
    }
    for name in &names {
        let obj = support::operator::wait_obj_in(&api, &log, name, "Ready on the new cluster", TIMEOUT, |o| {
            is_ready(o) && has_record(o)
        })
        .await;
        assert_eq!(audience_id(&obj), ids[name], "{name}: its own audience");
    }
    let after = env.emulator.stats();
    for op in MUTATING {
        assert_eq!(delta(&before, &after, op), 0, "{op} sent during the rebuild");
    }
    assert_eq!(env.emulator.state().audiences.len(), 10, "no duplicate");
    operator.stop();
    tokio::task::spawn_blocking(move || cp.stop()).await.expect("stop");
}

// ----- clones and double adoption -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_and_a_second_object_naming_the_audience_are_claimants_that_send_nothing() {
    let env = Env::start("claims", |b| b.zero_latency()).await;
    assert!(env.apply_yaml(&env.seed_yaml()).0);
    let owner = wait_ready_with_record(&env, &["loyalty-members".to_owned()])
        .await
        .remove(0);
    let id = audience_id(&owner);

    // A copy of the owner's backup under another name, and a second object adopting the audience.
    let mut clone = backup(&owner);
    clone["metadata"]["name"] = json!("loyalty-copy");
    let clone: ExternalAudience = serde_json::from_value(clone).expect("clone");
    let mut second: ExternalAudience =
        serde_yaml_ng::from_str(&env.seed_named("loyalty-second", "Loyalty second")).expect("second");
    second.spec.audience_id = Some(id.clone());
    let before = env.emulator.stats();
    for obj in [&clone, &second] {
        env.api().create(&PostParams::default(), obj).await.expect("create");
    }
    for name in ["loyalty-copy", "loyalty-second"] {
        let obj = env
            .wait_obj(name, "Stalled/AudienceClaimed", TIMEOUT, |o| {
                condition_reason(o, "Stalled") == "AudienceClaimed"
            })
            .await;
        let msg = condition_message(&obj, "Stalled");
        assert!(msg.contains(&format!("{}/loyalty-members", env.ns)), "{msg}");
        assert!(obj.status.as_ref().and_then(|s| s.audience_id.as_ref()).is_none());
    }
    // A window of several requeues of the claimants: nothing is sent on their behalf (the owner is
    // idle, its drift check 10 minutes away).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let during = env.emulator.stats();
    assert_eq!(
        total(&during) - total(&before),
        0,
        "requests sent while claimed: {during:?}"
    );

    // Deleting them leaves the audience; the owner stays Ready.
    for name in ["loyalty-copy", "loyalty-second"] {
        env.api().delete(name, &DeleteParams::default()).await.expect("delete");
        wait_gone(&env.api(), name, TIMEOUT).await;
    }
    let after = env.emulator.stats();
    assert_eq!(delta(&before, &after, "delete_audience"), 0);
    for op in MUTATING {
        assert_eq!(delta(&before, &after, op), 0, "{op}");
    }
    assert!(env.emulator.state().audience(&id).is_some(), "the audience stays");
    let owner = env.get("loyalty-members").await;
    assert!(is_ready(&owner) && audience_id(&owner) == id);
}

// ----- a Secret switched to another org -----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_switched_to_another_org_stops_the_object_and_switching_back_heals_it_without_a_run() {
    let second = Emulator::builder()
        .credential(CredentialSpec {
            client_id: "second-client".into(),
            client_secret: "second-secret".into(),
            org_id: "SECOND0RG@AdobeOrg".into(),
            ..CredentialSpec::default()
        })
        .zero_latency()
        .spawn()
        .await
        .expect("second emulator");
    let env = Env::start_with(
        "orgswitch",
        |b| b.zero_latency(),
        vec![
            format!("--allowed-endpoint={}", second.base_url()),
            "--credentials-cache-ttl=1s".into(),
            "--resync-interval=2s".into(),
        ],
        true,
    )
    .await;
    assert!(env.apply_yaml(&env.seed_yaml()).0);
    let obj = wait_ready_with_record(&env, &["loyalty-members".to_owned()])
        .await
        .remove(0);
    let id = audience_id(&obj);
    let secrets = Api::<Secret>::namespaced(env.client.clone(), &env.ns);
    let switch = |creds: audience_operator::aep::Credentials| {
        let secrets = secrets.clone();
        async move {
            let base = creds.platform_url.clone().expect("url").to_string();
            let patch = json!({"stringData": {
                "clientId": creds.client_id,
                "clientSecret": secrecy::ExposeSecret::expose_secret(&creds.client_secret),
                "orgId": creds.org_id,
                "platformUrl": base,
                "imsUrl": base,
            }});
            secrets
                .patch("aep-credentials", &PatchParams::default(), &Patch::Merge(patch))
                .await
                .expect("switch the Secret");
        }
    };
    let before_first = env.emulator.stats();
    switch(second.credentials()).await;
    let stalled = env
        .wait_obj("loyalty-members", "Stalled/OrganizationChanged", TIMEOUT, |o| {
            condition_reason(o, "Stalled") == "OrganizationChanged"
        })
        .await;
    let msg = condition_message(&stalled, "Stalled");
    assert!(
        msg.contains("SECOND0RG@AdobeOrg") && msg.contains("restore the Secret"),
        "{msg}"
    );
    // A window of several passes (the drift interval is 2 s): nothing goes to either org.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(total(&second.stats()), 0, "nothing sent to the second org");
    let during = env.emulator.stats();
    assert_eq!(delta(&before_first, &during, "create_audience"), 0);
    assert!(second.state().audiences.is_empty(), "never re-created elsewhere");

    // Back to the first org: Ready again, on the same audience, without a run.
    switch(env.emulator.credentials()).await;
    let healed = env.wait_ready("loyalty-members", TIMEOUT).await;
    assert_eq!(audience_id(&healed), id);
    let after = env.emulator.stats();
    assert_eq!(delta(&before_first, &after, "start_run"), 0);
    assert_eq!(delta(&before_first, &after, "create_audience"), 0);
    assert_eq!(env.emulator.state().audiences.len(), 1);
    assert_eq!(total(&second.stats()), 0);
}

// ----- observe only -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observed_audience_is_reported_and_never_changed_over_a_whole_lifecycle() {
    let env = Env::start("observe", |b| b.zero_latency()).await;
    let s = session(&env.emulator);
    let id = create_directly(&s, "Observed members", "As AEP has it", true).await;
    let yaml = format!(
        r#"apiVersion: aep.audience-operator.dev/v1alpha1
kind: ExternalAudience
metadata:
  name: observed
  namespace: {ns}
  annotations: {{aep.audience-operator.dev/resync-interval: 1s}}
spec:
  managementPolicy: Observe
  audienceId: {id}
  credentialsSecretRef: {{name: aep-credentials}}
  sandbox: prod
  name: Observed members
  description: As AEP has it
  labels: [core/C1]
  deletionPolicy: Delete
"#,
        ns = env.ns
    );
    let before = env.emulator.stats();
    let (ok, out) = env.apply_yaml(&yaml);
    assert!(ok, "{out}");
    let obj = env
        .wait_obj("observed", "Ready and InSync", TIMEOUT, |o| {
            is_ready(o) && support::operator::condition_is(o, "InSync", "True")
        })
        .await;
    assert_eq!(audience_id(&obj), id);
    assert!(
        obj.status.as_ref().and_then(|s| s.last_run.as_ref()).is_some(),
        "its run is reported"
    );
    // Someone changes the audience in AEP: reported, not corrected.
    env.emulator
        .admin()
        .mutate_audience(
            &id,
            &AudienceMutation {
                description: Some("changed in the UI".into()),
                ..AudienceMutation::default()
            },
        )
        .await
        .expect("mutate");
    let drifted = env
        .wait_obj("observed", "InSync False", TIMEOUT, |o| {
            support::operator::condition_is(o, "InSync", "False")
        })
        .await;
    assert!(condition_message(&drifted, "InSync").contains("description"));
    assert!(is_ready(&drifted), "an observed audience that differs is still Ready");
    // A run request is ignored by an observer.
    let (ok, out) = kubectl(
        &[
            "annotate",
            "-n",
            &env.ns,
            "ea/observed",
            "aep.audience-operator.dev/run-requested-at=now",
        ],
        None,
    );
    assert!(ok, "{out}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Deleting it (deletionPolicy Delete) leaves the audience.
    env.api()
        .delete("observed", &DeleteParams::default())
        .await
        .expect("delete");
    wait_gone(&env.api(), "observed", TIMEOUT).await;
    let after = env.emulator.stats();
    for op in MUTATING {
        assert_eq!(delta(&before, &after, op), 0, "{op} sent for an observed audience");
    }
    let state = env.emulator.state();
    let aud = state.audience(&id).expect("the audience stays");
    assert_eq!(aud.description.as_deref(), Some("changed in the UI"));
}

// ----- import -------------------------------------------------------------------------------------

fn import(env: &Env, args: &[&str]) -> String {
    let base = env.emulator.base_url().to_string();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_controller"));
    cmd.arg("import")
        .arg(format!("--aep-platform-url={base}"))
        .arg(format!("--aep-ims-url={base}"))
        .args(args);
    let out = cmd.output().expect("controller import runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "controller import failed: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_audiences_become_ready_objects_without_a_create_or_a_run() {
    let env = Env::start("import", |b| b.zero_latency()).await;
    let s = session(&env.emulator);
    for i in 0..20 {
        let group = if i < 10 { "Watched" } else { "Managed" };
        create_directly(&s, &format!("{group} list {i:02}"), "From the CRM", i % 2 == 0).await;
    }
    // Not external: filtered out by origin (the emulator only makes external ones, so the filter is
    // checked by name here and by origin in the unit tests).
    let dir = tempfile::tempdir().expect("dir");
    let kubeconfig = support::control_plane().admin_kubeconfig().display().to_string();
    let observe_dir = dir.path().join("observe");
    import(
        &env,
        &[
            "--sandbox=prod",
            &format!("--namespace={}", env.ns),
            "--secret=aep-credentials",
            &format!("--kubeconfig={kubeconfig}"),
            "--name-contains=watched",
            &format!("--output-dir={}", observe_dir.display()),
        ],
    );
    // The Manage half from a local env file instead of the Secret.
    let creds = env.emulator.credentials();
    let env_file = dir.path().join("aep.env");
    std::fs::write(
        &env_file,
        format!(
            "AEP_CLIENT_ID={}\nAEP_CLIENT_SECRET={}\nAEP_ORG_ID={}\nAEP_PLATFORM_URL={}\nAEP_IMS_URL={}\n",
            creds.client_id,
            secrecy::ExposeSecret::expose_secret(&creds.client_secret),
            creds.org_id,
            env.emulator.base_url(),
            env.emulator.base_url(),
        ),
    )
    .expect("env file");
    let manage_file = dir.path().join("managed.yaml");
    import(
        &env,
        &[
            "--sandbox=prod",
            &format!("--namespace={}", env.ns),
            &format!("--env-file={}", env_file.display()),
            "--name-contains=Managed",
            "--management-policy=manage",
            &format!("--output={}", manage_file.display()),
        ],
    );
    let files = std::fs::read_dir(&observe_dir).expect("observe dir").count();
    assert_eq!(files, 10, "one file per audience");
    let manage_text = std::fs::read_to_string(&manage_file).expect("managed");
    assert!(manage_text.contains("AEP does not return these, so they are not set: spec.fields"));

    let before = env.emulator.stats();
    for path in [observe_dir.display().to_string(), manage_file.display().to_string()] {
        let (ok, out) = kubectl(&["apply", "-n", &env.ns, "-f", &path], None);
        assert!(ok, "kubectl apply {path}: {out}");
    }
    let list = support::wait_for("20 Ready objects", TIMEOUT, || async {
        let list = env.api().list(&Default::default()).await.ok()?;
        (list.items.len() == 20 && list.items.iter().all(is_ready)).then_some(list)
    })
    .await;
    let observed = list.items.iter().filter(|o| o.spec.observes()).count();
    assert_eq!(observed, 10);
    let ids: std::collections::BTreeSet<String> = list.items.iter().map(audience_id).collect();
    assert_eq!(ids.len(), 20, "each object on its own audience");
    let after = env.emulator.stats();
    assert_eq!(delta(&before, &after, "create_audience"), 0, "no create");
    assert_eq!(delta(&before, &after, "start_run"), 0, "no run");
    assert_eq!(env.emulator.state().audiences.len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_git_rebuild_without_records_is_reattached_by_name_only_when_asked() {
    let env = Env::start("attach", |b| b.zero_latency()).await;
    let s = session(&env.emulator);
    // The audience the old cluster made from the same manifest.
    let seed: ExternalAudience = serde_yaml_ng::from_str(&env.seed_yaml()).expect("seed");
    let req = audience_operator::controller::audience::spec::create_request(
        &seed.spec,
        "Loyalty members",
        Some("k8s-old-uid"),
    )
    .expect("the seed has a sourceSpec");
    let op = s.create_audience(&req).await.expect("create");
    let id = support::wait_for("the operation", TIMEOUT, || async {
        s.get_operation(&op.operation_id).await.ok().and_then(|o| o.audience_id)
    })
    .await;
    // Applied as it is, the Git manifest may not take the audience: its name proves nothing.
    let dir = tempfile::tempdir().expect("dir");
    let git = dir.path().join("git");
    std::fs::create_dir_all(&git).expect("git dir");
    std::fs::write(git.join("loyalty.yaml"), env.seed_yaml()).expect("manifest");
    assert!(env.apply_yaml(&env.seed_yaml()).0);
    let stalled = env
        .wait_obj("loyalty-members", "Stalled/AudienceNameTaken", TIMEOUT, |o| {
            condition_reason(o, "Stalled") == "AudienceNameTaken"
        })
        .await;
    let msg = condition_message(&stalled, "Stalled");
    assert!(
        msg.contains("controller import") && msg.contains("--attach-to"),
        "{msg}"
    );
    env.api()
        .delete("loyalty-members", &DeleteParams::default())
        .await
        .expect("delete");
    wait_gone(&env.api(), "loyalty-members", TIMEOUT).await;

    // Asked: the import writes spec.audienceId into the manifests.
    let out = dir.path().join("out");
    let report = import(
        &env,
        &[
            "--sandbox=prod",
            &format!("--namespace={}", env.ns),
            "--secret=aep-credentials",
            &format!("--kubeconfig={}", support::control_plane().admin_kubeconfig().display()),
            &format!("--attach-to={}", git.display()),
            &format!("--output-dir={}", out.display()),
        ],
    );
    assert!(report.contains(&format!("spec.audienceId set to {id}")), "{report}");
    let attached = std::fs::read_to_string(out.join("loyalty.yaml")).expect("attached manifest");
    let obj: ExternalAudience = serde_yaml_ng::from_str(
        attached
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
            .as_str(),
    )
    .expect("object");
    assert_eq!(obj.spec.audience_id.as_deref(), Some(id.as_str()));
    let before = env.emulator.stats();
    let (ok, text) = kubectl(
        &[
            "apply",
            "-n",
            &env.ns,
            "-f",
            &out.join("loyalty.yaml").display().to_string(),
        ],
        None,
    );
    assert!(ok, "{text}");
    let ready = env.wait_ready("loyalty-members", TIMEOUT).await;
    assert_eq!(audience_id(&ready), id);
    let after = env.emulator.stats();
    assert_eq!(delta(&before, &after, "create_audience"), 0);
    assert_eq!(delta(&before, &after, "start_run"), 0);
    assert_eq!(env.emulator.state().audiences.len(), 1);
}

// ----- defects found in review --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_deleted_together_release_their_secret_even_across_an_operator_kill() {
    let mut env = Env::start("release", |b| b.zero_latency()).await;
    let names: Vec<String> = (0..6).map(|i| format!("release-{i}")).collect();
    assert!(env.apply_yaml(&many(&env, "release", 6)).0);
    for name in &names {
        env.wait_ready(name, TIMEOUT).await;
    }
    let (ok, out) = kubectl(&["delete", "ea", "--all", "-n", &env.ns, "--wait=false"], None);
    assert!(ok, "{out}");
    // Kill the operator as soon as the first object is gone, then start it again.
    support::wait_for("a first object gone", TIMEOUT, || async {
        let list = env.api().list(&Default::default()).await.ok()?;
        (list.items.len() < names.len()).then_some(())
    })
    .await;
    assert!(env.stop_operator(true), "the kill landed");
    env.start_operator();
    for name in &names {
        wait_gone(&env.api(), name, TIMEOUT).await;
    }
    let secrets = Api::<Secret>::namespaced(env.client.clone(), &env.ns);
    support::wait_for("the Secret released", TIMEOUT, || async {
        let s = secrets.get("aep-credentials").await.ok()?;
        (!s.finalizers()
            .iter()
            .any(|f| f == "aep.audience-operator.dev/credentials-in-use"))
        .then_some(())
    })
    .await;
    assert!(env.emulator.state().audiences.is_empty(), "every audience deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audience_deleted_behind_the_operators_back_is_recreated_once_even_when_the_answer_is_lost() {
    use aep_emulator::config::{LostAnswer, LostMode};
    let env = Env::start_with(
        "tombstone",
        |b| b.zero_latency(),
        vec!["--resync-interval=1s".into()],
        true,
    )
    .await;
    assert!(env.apply_yaml(&env.seed_yaml()).0);
    let first = env.wait_ready("loyalty-members", TIMEOUT).await;
    let old = audience_id(&first);
    // The next create's answer is lost after the audience is made; then the audience goes.
    env.emulator.update_faults(|f| {
        f.lost_answers.create = LostAnswer {
            next: 1,
            mode: LostMode::Error500,
            ..LostAnswer::default()
        };
    });
    env.emulator
        .admin()
        .delete_audience(&old)
        .await
        .expect("delete behind its back");
    let again = env
        .wait_obj("loyalty-members", "Ready on a new audience", TIMEOUT, |o| {
            is_ready(o)
                && o.status
                    .as_ref()
                    .and_then(|s| s.audience_id.as_deref())
                    .is_some_and(|id| id != old)
        })
        .await;
    let state = env.emulator.state();
    assert_eq!(state.audiences.len(), 1, "one live audience");
    assert_eq!(state.deleted.len(), 1, "the old one is kept as deleted");
    assert_eq!(state.audiences[0].audience_id, audience_id(&again));
    assert_eq!(
        env.emulator.stats().received("create_audience"),
        2,
        "created once more, not in a loop"
    );
}
