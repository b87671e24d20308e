//! The install as users run it (issue: install and run it on a real cluster): the kustomize base
//! and overlay on the real apiserver, least privilege on Secrets, leader election with two
//! replicas, pause, and the metrics people scrape.

mod support;

use std::time::{Duration, Instant};

use audience_operator::api::PAUSED;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;
use support::operator::{Env, install_crd_and_rbac, kubectl, rendered_install, spawn_operator, wait_gone};

const TIMEOUT: Duration = Duration::from_secs(90);
const OPERATOR: &str = "system:serviceaccount:audience-operator:audience-operator";

fn can_i(args: &[&str]) -> bool {
    let mut all = vec!["auth", "can-i"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--as", OPERATOR]);
    let (_, out) = kubectl(&all, None);
    out.trim() == "yes"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_base_and_the_namespaced_overlay_pass_server_side_dry_run() {
    install_crd_and_rbac();
    // The overlay's example namespace must exist for a dry run of the objects inside it.
    let _ = kubectl(&["create", "namespace", "marketing"], None);
    for dir in ["deploy", "deploy/overlays/namespaced"] {
        let path = format!("{}/{dir}", env!("CARGO_MANIFEST_DIR"));
        let (ok, out) = kubectl(&["apply", "--dry-run=server", "-k", &path], None);
        assert!(ok, "kubectl apply --dry-run=server -k {dir}: {out}");
        assert!(
            out.contains("deployment.apps/audience-operator") && out.contains("(server dry run)"),
            "{out}"
        );
    }
    let overlay = rendered_install("deploy/overlays/namespaced");
    assert!(
        !overlay.contains("kind: ClusterRole"),
        "the namespaced overlay has Roles only:\n{overlay}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_identity_cannot_list_or_watch_secrets_cluster_wide() {
    install_crd_and_rbac();
    assert!(!can_i(&["list", "secrets", "--all-namespaces"]), "no cluster-wide list");
    assert!(
        !can_i(&["watch", "secrets", "--all-namespaces"]),
        "no cluster-wide watch"
    );
    assert!(can_i(&["get", "secrets", "-n", "default"]), "get by name");
    assert!(
        can_i(&["patch", "secrets", "-n", "default"]),
        "patch (the in-use finalizer)"
    );
    assert!(!can_i(&["update", "secrets", "-n", "default"]));
    assert!(!can_i(&["delete", "secrets", "-n", "default"]));
    // The namespaced overlay grants list/watch in its one namespace only.
    let (ok, out) = kubectl(
        &["apply", "--server-side", "-f", "-"],
        Some(&rendered_install("deploy/overlays/namespaced")),
    );
    assert!(ok, "{out}");
    assert!(can_i(&["list", "secrets", "-n", "marketing"]));
    assert!(!can_i(&["list", "secrets", "-n", "default"]));
    assert!(!can_i(&["list", "secrets", "--all-namespaces"]));
}

fn log_of(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The operator's /metrics text.
async fn scrape(addr: &str) -> Option<String> {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()
}

fn metrics_addr(log: &str) -> Option<String> {
    log.lines()
        .find(|l| l.contains("Serving /metrics"))
        .and_then(|l| l.split("addr=").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_replicas_only_the_leader_acts_and_the_other_takes_over() {
    let mut env = Env::start_with("leader", |b| b.zero_latency(), Vec::new(), true).await;
    // Both replicas: leader election on a Lease of their own (per test namespace).
    env.stop_operator(false);
    let flags = vec![
        "--leader-elect".to_owned(),
        format!("--leader-elect-lease-name=lease-{}", env.ns),
        "--leader-elect-namespace=audience-operator".to_owned(),
        // The holder renews `grace` before the lease ends, so a frozen leader's lease is still
        // valid for at least `grace` (5 s): the 2.5 s frozen-leader window below stays inside it.
        "--leader-elect-lease-duration=8s".to_owned(),
        "--leader-elect-grace=5s".to_owned(),
        // A short drift interval keeps a pass due at all times: a leader that resumes from a
        // freeze has work to do at once (see the SIGCONT below).
        "--resync-interval=2s".to_owned(),
    ];
    let dir = support::control_plane().dir();
    let (log_a, log_b) = (
        dir.join(format!("leader-a-{}.log", env.ns)),
        dir.join(format!("leader-b-{}.log", env.ns)),
    );
    let a = spawn_operator(&env.ns, &env.emulator.base_url(), &flags, &log_a);
    support::wait_for("replica a to lead", TIMEOUT, || async {
        log_of(&log_a).contains("Acquired leadership").then_some(())
    })
    .await;
    let b = spawn_operator(&env.ns, &env.emulator.base_url(), &flags, &log_b);
    support::wait_for("replica b to follow", TIMEOUT, || async {
        log_of(&log_b).contains("Waiting for leadership").then_some(())
    })
    .await;
    // The follower is ready (a rolling update may proceed) without running the controller.
    let addr_b = support::wait_for("b's metrics address", TIMEOUT, || async {
        metrics_addr(&log_of(&log_b))
    })
    .await;
    let ready = reqwest::get(format!("http://{addr_b}/readyz")).await.expect("readyz");
    assert_eq!(ready.status(), 200, "a healthy follower is ready");

    assert!(env.apply_yaml(&env.seed_yaml()).0);
    env.wait_ready("loyalty-members", TIMEOUT).await;
    // The leader is ready once its cache has synced.
    let addr_a = metrics_addr(&log_of(&log_a)).expect("a's metrics address");
    support::wait_for("the leader's /readyz", TIMEOUT, || async {
        let r = reqwest::get(format!("http://{addr_a}/readyz")).await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    let follower = log_of(&log_b);
    assert!(
        !follower.contains("Planned step") && !follower.contains("AEP request"),
        "the follower neither reconciles nor calls AEP:\n{follower}"
    );
    let sent_by_leader = env.emulator.stats().received.values().sum::<u64>();
    assert!(sent_by_leader > 0);

    // Freeze the leader (SIGSTOP) while it still holds the lease and change the spec: for as long
    // as the lease is valid nobody acts, counted at the emulator (requests) and the apiserver (no
    // status write observes the new generation), though a follower is running.
    let leader_pid = a.pid().expect("leader pid");
    let stopped = std::process::Command::new("kill")
        .args(["-STOP", &leader_pid.to_string()])
        .status()
        .expect("kill -STOP");
    assert!(stopped.success());
    let frozen = Instant::now();
    let before = env.emulator.stats().received.values().sum::<u64>();
    env.merge_spec("loyalty-members", json!({"description": "while the leader is frozen"}))
        .await;
    while frozen.elapsed() < Duration::from_millis(2500) {
        let obj = env.get("loyalty-members").await;
        assert_eq!(
            obj.status.as_ref().and_then(|s| s.observed_generation),
            Some(1),
            "no replica but the leader writes status"
        );
        assert_eq!(
            env.emulator.stats().received.values().sum::<u64>(),
            before,
            "no replica but the leader calls AEP"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !log_of(&log_b).contains("Acquired leadership"),
        "the lease was still valid"
    );

    // Still frozen, the leader's lease runs out and the follower takes over; it converges the
    // change made meanwhile.
    support::wait_for("replica b to take over", TIMEOUT, || async {
        log_of(&log_b).contains("Acquired leadership").then_some(())
    })
    .await;
    let since_freeze = frozen.elapsed();
    env.wait_obj(
        "loyalty-members",
        "Ready after the failover",
        TIMEOUT,
        support::operator::is_ready_with_current_run,
    )
    .await;
    assert!(log_of(&log_b).contains("Planned step"), "the new leader reconciles");
    let patches = env.emulator.stats().received("patch_audience");

    // The old leader resumes (SIGCONT) while work is pending: the new leader is frozen in turn
    // (it still holds the lease) and the spec changed again. The old leader must send nothing
    // before it learns it lost the lease, and then stop; the new leader, resumed, sends the change.
    let signal = |sig: &str, pid: u32| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(ok.success(), "kill {sig} {pid}");
    };
    let new_leader = b.pid().expect("new leader pid");
    signal("-STOP", new_leader);
    env.merge_spec(
        "loyalty-members",
        json!({"description": "while the new leader is frozen"}),
    )
    .await;
    let resumed_at = log_of(&log_a).len();
    signal("-CONT", leader_pid);
    let a = std::sync::Mutex::new(a);
    support::wait_for("the resumed old leader to stop", TIMEOUT, || {
        let stopped = !a.lock().expect("lock").is_running();
        async move { stopped.then_some(()) }
    })
    .await;
    let after_resume = log_of(&log_a)[resumed_at..].to_owned();
    assert!(
        after_resume.contains("Leadership lost"),
        "the old leader stops on losing the lease:\n{after_resume}"
    );
    let sent: Vec<&str> = after_resume
        .lines()
        .filter(|l| l.contains("AEP request") && !l.contains("not sent"))
        .collect();
    assert!(
        sent.is_empty(),
        "the resumed old leader sent AEP requests:\n{}",
        sent.join("\n")
    );
    assert_eq!(
        env.emulator.stats().received("patch_audience"),
        patches,
        "nothing sent while the lease holder was frozen"
    );
    signal("-CONT", new_leader);
    env.wait_obj(
        "loyalty-members",
        "Ready after the new leader resumed",
        TIMEOUT,
        support::operator::is_ready_with_current_run,
    )
    .await;
    assert_eq!(
        env.emulator.stats().received("patch_audience"),
        patches + 1,
        "the second change sent once, by the new leader"
    );
    eprintln!(
        "leader failover: the follower held the lease {:.1} s after the leader froze; the old leader, resumed, \
         stopped without sending ({} requests held back by the fence)",
        since_freeze.as_secs_f64(),
        after_resume
            .lines()
            .filter(|l| l.contains("not sent: the gate is closed"))
            .count()
    );
    drop(b);
}

/// `Paused=True` (a paused object does not move `status.observedGeneration`).
fn paused_condition(o: &audience_operator::api::ExternalAudience) -> bool {
    o.status
        .as_ref()
        .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Paused" && c.status == "True"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_object_makes_no_aep_call_and_deletion_waits_for_the_pause() {
    let env = Env::start("pause", |b| b.zero_latency()).await;
    let paused = env.seed_yaml().replace(
        "  namespace: ",
        &format!("  annotations: {{{PAUSED}: \"true\"}}\n  namespace: "),
    );
    assert!(env.apply_yaml(&paused).0, "{paused}");
    let obj = env
        .wait_obj("loyalty-members", "Paused", TIMEOUT, paused_condition)
        .await;
    assert!(obj.status.as_ref().and_then(|s| s.audience_id.clone()).is_none());
    assert_eq!(
        env.emulator.stats().received.values().sum::<u64>(),
        0,
        "no AEP call while paused"
    );
    let api = env.api();
    let unpause = |v: Option<&str>| Patch::Merge(json!({"metadata": {"annotations": {PAUSED: v}}}));
    api.patch("loyalty-members", &PatchParams::default(), &unpause(None))
        .await
        .expect("unpause");
    let obj = env.wait_ready("loyalty-members", TIMEOUT).await;
    assert!(!paused_condition(&obj), "the Paused condition is gone");
    // Pause again and delete: with deletionPolicy Delete, deletion waits for the pause.
    api.patch("loyalty-members", &PatchParams::default(), &unpause(Some("true")))
        .await
        .expect("pause");
    env.wait_obj("loyalty-members", "Paused", TIMEOUT, paused_condition)
        .await;
    let before = env.emulator.stats().received.values().sum::<u64>();
    api.delete("loyalty-members", &DeleteParams::default())
        .await
        .expect("delete");
    env.wait_obj("loyalty-members", "waiting for the pause", TIMEOUT, |o| {
        o.metadata.deletion_timestamp.is_some()
            && paused_condition(o)
            && o.status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Paused"))
                .is_some_and(|c| c.message.contains("Deletion waits"))
    })
    .await;
    assert_eq!(
        env.emulator.stats().received.values().sum::<u64>(),
        before,
        "no AEP call"
    );
    assert_eq!(env.emulator.state().audiences.len(), 1);
    api.patch("loyalty-members", &PatchParams::default(), &unpause(None))
        .await
        .expect("unpause");
    wait_gone(&api, "loyalty-members", TIMEOUT).await;
    assert!(
        env.emulator.state().audiences.is_empty(),
        "deleted in AEP once unpaused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_the_seed_flow_count_the_work_with_bounded_labels() {
    let env = Env::start("metrics", |b| b.zero_latency()).await;
    assert!(env.apply_yaml(&env.seed_yaml()).0);
    let obj = env.wait_ready("loyalty-members", TIMEOUT).await;
    let audience_id = obj.status.and_then(|s| s.audience_id).expect("audience id");
    let addr = metrics_addr(&env.log_text()).expect("metrics address");
    // Without leader election, ready means the cache has synced; live means serving.
    support::wait_for("/readyz", TIMEOUT, || async {
        let r = reqwest::get(format!("http://{addr}/readyz")).await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    let live = reqwest::get(format!("http://{addr}/healthz")).await.expect("healthz");
    assert_eq!(live.status(), 200);
    // The objects gauge is counted from the cache when scraped; the counters at once.
    let text = support::wait_for("objects gauge", Duration::from_secs(30), || async {
        let text = scrape(&addr).await?;
        text.contains("externalaudience_objects{condition=\"Ready\"} 1")
            .then_some(text)
    })
    .await;
    let value = |prefix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(
        value("externalaudience_aep_requests_total{operation=\"create_audience\"") >= 1.0,
        "{text}"
    );
    assert!(value("externalaudience_aep_requests_total{operation=\"start_run\"") >= 1.0);
    assert!(
        value("externalaudience_aep_requests_total{operation=\"ims_token\"") >= 1.0,
        "token requests"
    );
    assert!(value("externalaudience_ingestion_runs_total{outcome=\"started\"}") >= 1.0);
    assert!(value("externalaudience_ingestion_runs_total{outcome=\"succeeded\"}") >= 1.0);
    assert!(value("externalaudience_reconcile_runs_total") >= 3.0);
    // No label carries an object name, an id or error text.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let labels = line
            .split_once('{')
            .and_then(|(_, rest)| rest.split_once('}'))
            .map(|(l, _)| l);
        for pair in labels.unwrap_or("").split(',').filter(|p| !p.is_empty()) {
            let (_, v) = pair.split_once('=').expect("label pair");
            let v = v.trim_matches('"');
            assert!(
                v.len() <= 32 && v.chars().all(|c| c.is_ascii_alphanumeric() || "_.+-".contains(c)),
                "unbounded label value {v:?} in {line}"
            );
            assert!(
                !v.contains("loyalty") && !v.contains(&audience_id) && !v.contains(&env.ns),
                "{line}"
            );
        }
    }
}

/// A kubeconfig for the control plane as the admin impersonating `user`: a process using it has
/// exactly the rights RBAC gives `user` (here the ServiceAccount of a chart release).
fn impersonating(user: &str, path: &std::path::Path) {
    let admin = std::fs::read_to_string(support::control_plane().admin_kubeconfig()).expect("admin kubeconfig");
    let mut config: serde_yaml_ng::Value = serde_yaml_ng::from_str(&admin).expect("kubeconfig yaml");
    for entry in config["users"].as_sequence_mut().expect("users") {
        entry["user"]["as"] = serde_yaml_ng::Value::from(user);
    }
    std::fs::write(path, serde_yaml_ng::to_string(&config).expect("yaml")).expect("write kubeconfig");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_operator_watches_a_list_of_namespaces_with_the_charts_roles_and_nothing_else() {
    use audience_operator::api::ExternalAudience;
    use kube::{Api, api::PostParams};
    use support::operator::{condition_message, condition_reason, fast_flags, is_ready, wait_obj_in};

    let mut env = Env::start_with("watch-a", |b| b.zero_latency(), Vec::new(), true).await;
    env.stop_operator(false);
    let a = env.ns.clone();
    let b = support::namespace(&env.client, "watch-b").await;
    let c = support::namespace(&env.client, "watch-c").await;
    let release = support::namespace(&env.client, "watch-ops").await;
    env.create_secret_in(&b, "aep-credentials").await;
    env.create_secret_in(&c, "aep-credentials").await;

    // The chart's RBAC for `watchNamespaces={a,b}`, as `helm install` creates it: a Role in a
    // and in b, nothing cluster-wide, nothing in c.
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/helm/audience-operator");
    let out = std::process::Command::new(support::helm())
        .args(["template", "audience-operator", chart, "--namespace", &release])
        .args([
            "--set",
            &format!("watchNamespaces={{{a},{b}}}"),
            "--set",
            "crds.install=false",
        ])
        .output()
        .expect("helm template");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rbac: Vec<&str> = std::str::from_utf8(&out.stdout)
        .expect("utf-8")
        .split("\n---\n")
        .filter(|d| support::operator::is_kind(d, &["ServiceAccount", "Role", "RoleBinding"]))
        .collect();
    assert_eq!(
        rbac.len(),
        1 + 3 * 2,
        "the ServiceAccount, a Role and a binding in a, b and the lease's namespace"
    );
    let (ok, out) = kubectl(&["apply", "--server-side", "-f", "-"], Some(&rbac.join("\n---\n")));
    assert!(ok, "{out}");
    let dir = support::control_plane().dir();
    let kubeconfig = dir.join(format!("release-{release}.kubeconfig"));
    impersonating(
        &format!("system:serviceaccount:{release}:audience-operator"),
        &kubeconfig,
    );

    // The seed in each namespace before the operator starts, so that its first lists of a and b
    // both hold an object (each namespace's list must not replace the other's in the cache); each
    // with its own AEP name (a name is unique in a sandbox).
    for ns in [&a, &b, &c] {
        let seed = env
            .seed_yaml_in(ns)
            .replace("name: Loyalty members", &format!("name: Loyalty members {ns}"));
        let (ok, out) = kubectl(&["apply", "-f", "-"], Some(&seed));
        assert!(ok, "{out}");
    }
    // One operator for both namespaces; Secrets watched, and a missing Secret retried only after
    // 10 minutes, so that only the watch can heal an object waiting for one.
    let mut args = vec![
        "run".to_owned(),
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--namespace={a},{b}"),
        "--watch-secrets".to_owned(),
        format!("--aep-platform-url={}", env.emulator.base_url()),
        format!("--aep-ims-url={}", env.emulator.base_url()),
        "--credentials-retry-interval=10m".to_owned(),
    ];
    args.extend(
        fast_flags()
            .into_iter()
            .filter(|f| !f.starts_with("--credentials-retry-interval")),
    );
    let log = dir.join(format!("operator-list-{a}.log"));
    let spawn = |log: &std::path::Path| {
        envtest::Watched::spawn(
            std::path::Path::new(env!("CARGO_BIN_EXE_controller")),
            &args,
            &[("RUST_LOG".to_owned(), "info,audience_operator=debug".to_owned())],
            log,
        )
        .expect("operator starts")
    };
    let operator = spawn(&log);

    let api = |ns: &str| Api::<ExternalAudience>::namespaced(env.client.clone(), ns);
    let mut ids = Vec::new();
    for ns in [&a, &b] {
        let obj = wait_obj_in(&api(ns), &log, "loyalty-members", "Ready", TIMEOUT, is_ready).await;
        ids.push(obj.status.and_then(|s| s.audience_id).expect("audience id"));
    }
    assert_ne!(ids[0], ids[1], "each namespace's object has its own audience");

    // One claims index over both namespaces: an object in b adopting a's audience is a claimant
    // that sends nothing, and names the holder in a.
    let mut adopter: ExternalAudience = serde_yaml_ng::from_str(
        &env.seed_yaml_in(&b)
            .replace("name: loyalty-members", "name: adopter")
            .replace("name: Loyalty members", "name: Adopter"),
    )
    .expect("adopter");
    adopter.spec.audience_id = Some(ids[0].clone());
    let before = env.emulator.stats();
    api(&b)
        .create(&PostParams::default(), &adopter)
        .await
        .expect("create adopter");
    let claimed = wait_obj_in(&api(&b), &log, "adopter", "Stalled/AudienceClaimed", TIMEOUT, |o| {
        condition_reason(o, "Stalled") == "AudienceClaimed"
    })
    .await;
    let msg = condition_message(&claimed, "Stalled");
    assert!(msg.contains(&format!("{a}/loyalty-members")), "{msg}");

    // The Secret watch in b: an object whose Secret does not exist yet heals when it appears.
    let late = env
        .seed_yaml_in(&b)
        .replace("name: loyalty-members", "name: late")
        .replace("name: Loyalty members", "name: Late")
        .replace("{name: aep-credentials}", "{name: late-credentials}");
    assert!(kubectl(&["apply", "-f", "-"], Some(&late)).0);
    wait_obj_in(&api(&b), &log, "late", "waiting for its Secret", TIMEOUT, |o| {
        condition_reason(o, "Reconciling") == "CredentialsMissing"
    })
    .await;
    env.create_secret_in(&b, "late-credentials").await;
    // Well within the 10-minute retry and the 2-minute grace: only the watch can have woken it.
    wait_obj_in(
        &api(&b),
        &log,
        "late",
        "Ready after its Secret appeared",
        Duration::from_secs(60),
        is_ready,
    )
    .await;

    // What the operator sent: creates for a's, b's and the late object, nothing for the adopter
    // or for c, whose object it never saw (no status, no finalizer).
    let after = env.emulator.stats();
    assert_eq!(after.received("create_audience"), 3, "{after:?}");
    assert_eq!(
        after.received("create_audience") - before.received("create_audience"),
        1,
        "only the late object was created after the adopter appeared"
    );
    let untouched = api(&c).get("loyalty-members").await.expect("c's object");
    let status = untouched.status.unwrap_or_default();
    assert!(
        status.conditions.is_empty() && status.audience_id.is_none() && status.operation_id.is_none(),
        "c is not watched: {status:?}"
    );
    assert!(untouched.metadata.finalizers.unwrap_or_default().is_empty());
    let text = log_of(&log);
    assert!(!text.contains(&c), "the operator never touched namespace {c}");
    assert!(
        !text.to_lowercase().contains("forbidden"),
        "RBAC refused nothing:\n{text}"
    );

    // A restart: the first list of each namespace must not replace the other's in the cache. The
    // cache's view (the objects gauge, counted at scrape time) holds every watched object: 3 Ready
    // (a's, b's, the late one) and the adopter Stalled, though no event follows the lists.
    operator.stop();
    let log = dir.join(format!("operator-list-restarted-{a}.log"));
    let operator = spawn(&log);
    let addr = support::wait_for("the metrics address", TIMEOUT, || async { metrics_addr(&log_of(&log)) }).await;
    support::wait_for("the cache to hold both namespaces' objects", TIMEOUT, || async {
        let text = scrape(&addr).await?;
        (text.contains("externalaudience_objects{condition=\"Ready\"} 3")
            && text.contains("externalaudience_objects{condition=\"Stalled\"} 1"))
        .then_some(())
    })
    .await;
    let still = api(&b).get("adopter").await.expect("adopter");
    assert_eq!(condition_reason(&still, "Stalled"), "AudienceClaimed");
    assert_eq!(
        env.emulator.stats().received("create_audience"),
        3,
        "nothing created after the restart"
    );
    operator.stop();
}
