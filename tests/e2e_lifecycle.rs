//! End to end on the real control plane + AEP emulator + operator process (issue: core
//! lifecycle). The operator runs with the ServiceAccount identity and `deploy/` RBAC.

mod support;

use std::time::Duration;

use aep_emulator::config::Faults;
use support::operator::{Env, condition_is, condition_message, is_ready, is_ready_with_current_run, kubectl};

const READY_TIMEOUT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_example_reaches_ready_with_one_audience_and_one_run() {
    let env = Env::start("seed", |b| {
        b.operation_timing(Duration::from_millis(300), 1)
            .run_timing(Duration::from_millis(300), 1)
    })
    .await;
    let (ok, out) = env.apply_yaml(&env.seed_yaml());
    assert!(ok, "kubectl apply: {out}");

    let (ok, out) = kubectl(
        &[
            "wait",
            "-n",
            &env.ns,
            "--for=condition=Ready",
            "--timeout=90s",
            "externalaudience/loyalty-members",
        ],
        None,
    );
    assert!(ok, "kubectl wait: {out}");

    let obj = env.wait_ready("loyalty-members", READY_TIMEOUT).await;
    let st = obj.status.clone().expect("status");
    assert!(st.operation_id.is_some(), "{st:?}");
    let audience_id = st.audience_id.clone().expect("audience id");
    let run = st.last_run.clone().expect("last run");
    assert_eq!(run.status, audience_operator::api::RunState::Success);
    assert_eq!(Some(run.generation), obj.metadata.generation);
    assert!(
        obj.metadata
            .finalizers
            .unwrap_or_default()
            .iter()
            .any(|f| f == audience_operator::api::FINALIZER)
    );

    let state = env.emulator.state();
    let named: Vec<_> = state.audiences_named("prod", "Loyalty members").collect();
    assert_eq!(named.len(), 1, "exactly one audience: {state:?}");
    assert_eq!(named[0].audience_id, audience_id);
    let stats = env.emulator.stats();
    assert_eq!(stats.creates, 1);
    assert_eq!(stats.runs_started, 1);

    // What users see.
    let (ok, out) = kubectl(&["get", "ea", "-n", &env.ns, "-o", "wide"], None);
    assert!(
        ok && out.contains(&audience_id) && out.contains("True") && out.contains("Success"),
        "{out}"
    );

    // Secrets and tokens appear nowhere users or log collectors look.
    let secret = secrecy::ExposeSecret::expose_secret(&env.emulator.credentials().client_secret).to_owned();
    let log = std::fs::read_to_string(&env.log).expect("operator log");
    let (_, yaml) = kubectl(&["get", "ea", "-n", &env.ns, "-o", "yaml"], None);
    let (_, events) = kubectl(&["get", "events.events.k8s.io", "-n", &env.ns, "-o", "yaml"], None);
    for (what, text) in [("operator log", &log), ("object", &yaml), ("events", &events)] {
        assert!(!text.contains(&secret), "the client secret leaked into the {what}");
        assert!(
            !text.to_lowercase().contains("bearer "),
            "a bearer token leaked into the {what}"
        );
    }
    assert!(
        events.contains("IngestionSucceeded") && events.contains("AudienceCreated"),
        "{events}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn description_change_patches_once_and_runs_once_more() {
    let env = Env::start("update", |b| b.zero_latency()).await;
    assert!(env.apply_yaml(&env.seed_yaml()).0);
    env.wait_ready("loyalty-members", READY_TIMEOUT).await;
    let before = env.emulator.stats();

    env.merge_spec(
        "loyalty-members",
        serde_json::json!({"description": "Refreshed weekly"}),
    )
    .await;
    let obj = env
        .wait_obj(
            "loyalty-members",
            "Ready at the new generation",
            READY_TIMEOUT,
            is_ready_with_current_run,
        )
        .await;
    assert_eq!(obj.metadata.generation, Some(2));
    let after = env.emulator.stats();
    assert_eq!(after.patches - before.patches, 1, "exactly one PATCH");
    assert_eq!(after.runs_started - before.runs_started, 1, "exactly one new run");
    let state = env.emulator.state();
    let aud = state
        .audiences_named("prod", "Loyalty members")
        .next()
        .expect("audience");
    assert_eq!(aud.description.as_deref(), Some("Refreshed weekly"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_changes_during_a_run_coalesce_into_one_follow_up_run() {
    let env = Env::start("coalesce", |b| b.zero_latency().run_timing(Duration::from_secs(3), 0)).await;
    assert!(env.apply_yaml(&env.seed_yaml()).0);
    env.wait_obj("loyalty-members", "running its first ingestion", READY_TIMEOUT, |o| {
        o.status
            .as_ref()
            .and_then(|s| s.last_run.as_ref())
            .is_some_and(|r| r.status == audience_operator::api::RunState::Processing)
    })
    .await;
    for i in 0..3 {
        env.merge_spec(
            "loyalty-members",
            serde_json::json!({"description": format!("change {i}")}),
        )
        .await;
    }
    let obj = env
        .wait_obj(
            "loyalty-members",
            "Ready at the final generation",
            READY_TIMEOUT,
            is_ready_with_current_run,
        )
        .await;
    assert_eq!(obj.metadata.generation, Some(4));
    let stats = env.emulator.stats();
    assert_eq!(stats.run_in_progress_refusals, 0, "never two runs at once: {stats:?}");
    assert_eq!(stats.max_concurrent_runs_per_audience, 1);
    assert_eq!(
        stats.runs_started, 2,
        "the first run plus one coalesced follow-up: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_a_ready_operator_makes_no_aep_writes() {
    let mut env = Env::start("restart", |b| b.zero_latency()).await;
    assert!(env.apply_yaml(&env.seed_yaml()).0);
    env.wait_ready("loyalty-members", READY_TIMEOUT).await;
    env.stop_operator(false);
    let before = env.emulator.stats();
    let starts_before = env.log_text().matches("Starting ExternalAudience controller").count();
    env.start_operator();
    // The restarted operator is really running (not dead at start): it logs its start and then
    // reads the audience once for its first drift check.
    let reads_before = before.received("get_audience");
    support::wait_for("the restarted operator's first drift check", READY_TIMEOUT, || {
        let log = env.log_text();
        let stats = env.emulator.stats();
        async move {
            (log.matches("Starting ExternalAudience controller").count() > starts_before
                && stats.received("get_audience") > reads_before)
                .then_some(())
        }
    })
    .await;
    // Observe for one minute: reads (drift check) are allowed, writes are not.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(env.operator_alive(), "the restarted operator is still running");
        let now = env.emulator.stats();
        assert_eq!(now.create_requests, before.create_requests, "no create after restart");
        assert_eq!(now.run_requests, before.run_requests, "no run after restart");
        assert_eq!(now.patches, before.patches, "no PATCH after restart");
        assert_eq!(now.deletes, before.deletes, "no DELETE after restart");
    }
    assert!(is_ready(&env.get("loyalty-members").await));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_secret_is_reported_and_creating_it_heals_the_object() {
    let env = Env::start_with("nosecret", |b| b.zero_latency(), Vec::new(), false).await;
    assert!(env.apply_yaml(&env.seed_yaml()).0);
    let obj = env
        .wait_obj("loyalty-members", "reporting the missing Secret", READY_TIMEOUT, |o| {
            condition_is(o, "Ready", "False") && condition_message(o, "Ready").contains("aep-credentials")
        })
        .await;
    assert!(
        condition_message(&obj, "Ready").starts_with("CredentialsMissing"),
        "{}",
        condition_message(&obj, "Ready")
    );
    // Within the grace period a missing Secret is on its way (External Secrets, Sealed Secrets):
    // Reconciling, not Stalled, so a Flux `wait` does not fail at once.
    assert!(condition_is(&obj, "Reconciling", "True") && !condition_is(&obj, "Stalled", "True"));
    assert_eq!(env.emulator.stats().create_requests, 0);
    // Creating the Secret alone (no touch of the object) heals it through the Secret watch.
    env.create_secret("aep-credentials").await;
    env.wait_ready("loyalty-members", READY_TIMEOUT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_still_missing_after_the_grace_period_is_stalled() {
    let env = Env::start_with(
        "nosecret-late",
        |b| b.zero_latency(),
        vec!["--secret-grace-period=2s".into()],
        false,
    )
    .await;
    assert!(env.apply_yaml(&env.seed_yaml()).0);
    let obj = env
        .wait_obj("loyalty-members", "Stalled on the missing Secret", READY_TIMEOUT, |o| {
            condition_is(o, "Stalled", "True")
        })
        .await;
    assert!(condition_message(&obj, "Stalled").starts_with("CredentialsMissing"));
    // It still heals on its own once the Secret appears (looked for on a timer).
    env.create_secret("aep-credentials").await;
    env.wait_ready("loyalty-members", READY_TIMEOUT).await;
}

/// Counts AEP requests over a window, to prove there is no hot loop.
async fn requests_over(env: &Env, window: Duration) -> u64 {
    let total = |s: &aep_emulator::state::Stats| s.requests.values().flat_map(|m| m.values()).sum::<u64>();
    let before = total(&env.emulator.stats());
    tokio::time::sleep(window).await;
    total(&env.emulator.stats()) - before
}

/// Applies `yaml`, waits for Stalled=True (Ready=False, not Reconciling) with a Stalled message
/// containing every `expected` part, then proves there is no hot loop over 30 s.
async fn assert_stalls_quietly(env: &Env, yaml: &str, expected: &[&str]) {
    assert!(env.apply_yaml(yaml).0);
    let obj = env
        .wait_obj("loyalty-members", "Stalled", READY_TIMEOUT, |o| {
            condition_is(o, "Stalled", "True")
        })
        .await;
    assert!(condition_is(&obj, "Ready", "False"));
    assert!(!condition_is(&obj, "Reconciling", "True"));
    let msg = condition_message(&obj, "Stalled");
    assert!(expected.iter().all(|e| msg.contains(e)), "{msg}");
    let n = requests_over(env, Duration::from_secs(30)).await;
    assert!(n <= 2, "no hot loop: {n} AEP requests in 30s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_operation_stalls_with_aeps_message_and_no_hot_loop() {
    let env = Env::start("opfail", |b| {
        b.zero_latency().faults(Faults {
            fail_all_operations: true,
            operation_failure_message: Some("Dataset creation failed: quota exceeded".into()),
            ..Faults::default()
        })
    })
    .await;
    assert_stalls_quietly(&env, &env.seed_yaml(), &["Dataset creation failed: quota exceeded"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_run_stalls_with_aeps_message_and_is_not_retried() {
    let env = Env::start("runfail", |b| {
        b.zero_latency().faults(Faults {
            fail_all_runs: true,
            run_failure_message: Some("PROFILE_STORE_INGEST: malformed row 17".into()),
            ..Faults::default()
        })
    })
    .await;
    assert_stalls_quietly(&env, &env.seed_yaml(), &["malformed row 17"]).await;
    assert_eq!(
        env.emulator.stats().runs_started,
        1,
        "a failed run is not retried automatically"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_without_a_message_from_aep_still_stall_with_a_clear_reason() {
    // The AEP docs show no failure detail for failed operations and runs: cope with none.
    let env = Env::start("nomsg", |b| {
        b.zero_latency().faults(Faults {
            fail_next_operations: 1,
            ..Faults::default()
        })
    })
    .await;
    assert_stalls_quietly(&env, &env.seed_yaml(), &["OperationFailed", "AEP gave no reason"]).await;
    env.emulator.update_faults(|f| f.fail_next_runs = 1);
    env.merge_spec("loyalty-members", serde_json::json!({"description": "second try"}))
        .await;
    let obj = env
        .wait_obj("loyalty-members", "Stalled on the failed run", READY_TIMEOUT, |o| {
            condition_is(o, "Stalled", "True") && condition_message(o, "Stalled").starts_with("RunFailed")
        })
        .await;
    let msg = condition_message(&obj, "Stalled");
    assert!(
        msg.contains("DATASET_INGEST failed") || msg.contains("AEP gave no reason"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_identity_namespace_is_rejected_by_aep_and_stalls() {
    let env = Env::start("badns", |b| b.zero_latency()).await;
    // The emulator knows only the standard namespaces (and those added with --identity-namespace).
    let yaml = env
        .seed_yaml()
        .replace("identityNs: email", "identityNs: notANamespace");
    assert_stalls_quietly(&env, &yaml, &["identityNs", "notANamespace"]).await;
    assert_eq!(env.emulator.stats().creates, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guardrail_refusal_is_reported_and_retried_on_a_long_interval() {
    let env = Env::start("guardrail", |b| {
        b.zero_latency().configure(|s| s.max_runs_per_sandbox_per_day = 1)
    })
    .await;
    assert!(env.apply_yaml(&env.seed_yaml()).0);
    env.wait_ready("loyalty-members", READY_TIMEOUT).await;
    env.merge_spec(
        "loyalty-members",
        serde_json::json!({"description": "needs a second run"}),
    )
    .await;
    let obj = env
        .wait_obj("loyalty-members", "deferred by the guardrail", READY_TIMEOUT, |o| {
            condition_is(o, "Reconciling", "True") && condition_message(o, "Reconciling").starts_with("RunDeferred")
        })
        .await;
    assert!(condition_is(&obj, "Ready", "False"));
    let stats = env.emulator.stats();
    assert_eq!(stats.guardrail_refusals, 1, "{stats:?}");
    // The operator's test flags retry deferred runs after 5 s: at most a couple of tries in 8 s.
    let n = requests_over(&env, Duration::from_secs(8)).await;
    assert!(n <= 4, "no hot loop: {n} AEP requests in 8s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reaching_the_per_audience_run_limit_stalls_with_what_to_do() {
    let env = Env::start_with(
        "runlimit",
        |b| b.zero_latency().configure(|s| s.max_runs_per_audience = 1),
        vec!["--max-runs-per-audience=1".into()],
        true,
    )
    .await;
    assert!(env.apply_yaml(&env.seed_yaml()).0);
    env.wait_ready("loyalty-members", READY_TIMEOUT).await;
    env.merge_spec(
        "loyalty-members",
        serde_json::json!({"description": "needs a second run"}),
    )
    .await;
    let obj = env
        .wait_obj("loyalty-members", "Stalled on the run limit", READY_TIMEOUT, |o| {
            condition_is(o, "Stalled", "True")
        })
        .await;
    let msg = condition_message(&obj, "Stalled");
    assert!(
        msg.starts_with("IngestionLimitReached")
            && msg.contains("extend the data's TTL")
            && msg.contains("1 per audience"),
        "{msg}"
    );
    // Not an endless RunDeferred: no further start-run attempts.
    let sent = env.emulator.stats().received("start_run");
    let n = requests_over(&env, Duration::from_secs(8)).await;
    assert_eq!(
        env.emulator.stats().received("start_run"),
        sent,
        "no more start-run attempts"
    );
    assert!(n <= 1, "quiet while stalled: {n} requests");
}
