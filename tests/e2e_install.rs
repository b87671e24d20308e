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

    // SIGKILL the leader: the follower takes over once the lease expires.
    let killed = Instant::now();
    assert!(a.kill(), "the leader was running");
    support::wait_for("replica b to take over", TIMEOUT, || async {
        log_of(&log_b).contains("Acquired leadership").then_some(())
    })
    .await;
    let failover = killed.elapsed();
    let since_freeze = frozen.elapsed();
    env.merge_spec("loyalty-members", json!({"description": "after the failover"}))
        .await;
    env.wait_obj(
        "loyalty-members",
        "Ready after the failover",
        TIMEOUT,
        support::operator::is_ready_with_current_run,
    )
    .await;
    assert!(log_of(&log_b).contains("Planned step"), "the new leader reconciles");
    eprintln!(
        "leader failover: the follower held the lease {:.1} s after the leader stopped renewing it (frozen, \
         then SIGKILLed {:.1} s before the takeover)",
        since_freeze.as_secs_f64(),
        failover.as_secs_f64()
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
    // The objects gauge is refreshed every 10 s; the counters at once.
    let text = support::wait_for("objects gauge", Duration::from_secs(30), || async {
        let text = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
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
