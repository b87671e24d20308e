//! End to end on the real control plane + AEP emulator + operator process (issue: core
//! lifecycle). The operator runs with the ServiceAccount identity and `deploy/` RBAC.

#[path = "soak/smoke.rs"]
mod soak_smoke;
mod support;

use std::time::Duration;

use aep_emulator::config::Faults;
use audience_operator::api::RunState;
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
    assert_eq!(run.status, RunState::Success);
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
            .is_some_and(|r| r.status == RunState::Processing)
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
    // Drift checks every 5 s: the restarted operator reads the audience at its next recorded
    // check (a restart never checks early).
    let mut env = Env::start_with(
        "restart",
        |b| b.zero_latency(),
        vec!["--resync-interval=5s".into()],
        true,
    )
    .await;
    assert!(env.apply_yaml(&env.seed_yaml()).0);
    env.wait_ready("loyalty-members", READY_TIMEOUT).await;
    env.stop_operator(false);
    let before = env.emulator.stats();
    let starts_before = env.log_text().matches("Starting ExternalAudience controller").count();
    env.start_operator();
    // The restarted operator is really running (not dead at start): it logs its start and then
    // reads the audience once for its first drift check.
    // (A drift check reads the sandbox's audience list, or the audience itself.)
    let reads_before = before.received("get_audience") + before.received("list_audiences");
    support::wait_for("the restarted operator's first drift check", READY_TIMEOUT, || {
        let log = env.log_text();
        let stats = env.emulator.stats();
        async move {
            (log.matches("Starting ExternalAudience controller").count() > starts_before
                && stats.received("get_audience") + stats.received("list_audiences") > reads_before)
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

/// Drift-check reads sent in a window of `secs` from now: GETs of one audience and pages of the
/// sandbox's audience list (which answers for every object of the sandbox).
async fn reads_in(env: &Env, secs: u64) -> u64 {
    let reads = |s: &aep_emulator::Stats| s.received("get_audience") + s.received("list_audiences");
    let before = reads(&env.emulator.stats());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    reads(&env.emulator.stats()) - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_reads_no_audience_early_and_changes_no_decision() {
    const N: usize = 40;
    // Drift checks every 10 s, so that three windows of 30 s show the steady rate.
    let mut env = Env::start_with(
        "burst",
        |b| b.zero_latency(),
        vec!["--resync-interval=10s".into(), "--aep-requests-per-second=50".into()],
        true,
    )
    .await;
    let yaml = (0..N)
        .map(|i| env.seed_named(&format!("burst-{i}"), &format!("Burst members {i}")))
        .collect::<Vec<_>>()
        .join("\n---\n");
    assert!(env.apply_yaml(&yaml).0);
    for i in 0..N {
        env.wait_obj(
            &format!("burst-{i}"),
            "Ready with a drift check scheduled",
            READY_TIMEOUT,
            |o| is_ready(o) && o.status.as_ref().is_some_and(|s| s.next_drift_check.is_some()),
        )
        .await;
    }
    // Steady state: every object read about once per interval, spread out.
    let first = reads_in(&env, 30).await;
    let second = reads_in(&env, 30).await;
    let busiest = first.max(second);
    let writes = env.emulator.stats();
    // A SIGKILL, and a new operator at once: its first 30 s (the downtime included) read no more
    // than a steady window did, plus a little for the checks it owes from the downtime.
    assert!(env.stop_operator(true), "the kill landed");
    env.start_operator();
    let after = reads_in(&env, 30).await;
    let now = env.emulator.stats();
    assert!(
        after <= busiest + (N as u64) / 4,
        "reads in the 30 s after the restart: {after}; before: {first}, {second} ({N} objects): a restart must not \
         check every object at once"
    );
    assert!(after > 0, "the restarted operator went on checking");
    for op in ["create_audience", "start_run", "patch_audience", "delete_audience"] {
        assert_eq!(
            now.received(op),
            writes.received(op),
            "{op} after the restart: a decision changed"
        );
    }
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
    // Known before AEP refuses: the second run was never sent. And not an endless RunDeferred:
    // no further start-run attempts.
    let sent = env.emulator.stats().received("start_run");
    assert_eq!(sent, 1, "the run over the limit was not sent");
    let n = requests_over(&env, Duration::from_secs(8)).await;
    assert_eq!(
        env.emulator.stats().received("start_run"),
        sent,
        "no more start-run attempts"
    );
    assert!(n <= 1, "quiet while stalled: {n} requests");
}

/// The run starts (epoch seconds, AEP's own record) of an object's audience, oldest first.
fn run_starts(env: &Env, audience_id: &str) -> Vec<i64> {
    let state = env.emulator.state();
    let mut starts: Vec<i64> = state
        .audience(audience_id)
        .map(|a| a.runs.iter().map(|r| r.created_at).collect())
        .unwrap_or_default();
    starts.sort_unstable();
    starts
}

/// The first minute boundary after `t` (epoch seconds).
fn next_minute(t: i64) -> i64 {
    (t / 60 + 1) * 60
}

/// Sleeps until the host clock reads `at` (epoch seconds): drives the scenario's timing against
/// the wall clock the schedule follows; every check below waits on a condition with a deadline.
async fn until_wall_clock(at: i64) {
    let now = jiff::Timestamp::now().as_millisecond();
    if at * 1000 > now {
        tokio::time::sleep(Duration::from_millis((at * 1000 - now) as u64)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_every_minute_schedule_runs_once_per_minute_never_overlapping_and_catches_up_once_after_a_kill() {
    const RUN_SECS: i64 = 5;
    let mut env = Env::start("schedule", |b| {
        b.operation_timing(Duration::from_millis(200), 0)
            .run_timing(Duration::from_secs(RUN_SECS as u64), 0)
    })
    .await;
    let names = ["sched-0", "sched-1", "sched-2"];
    for (i, name) in names.iter().enumerate() {
        let yaml = env.seed_named(name, &format!("Scheduled {i}")).replace(
            "ingestion: {dataFilterStartTime: 764245635, differentialIngestion: true}",
            "ingestion: {dataFilterStartTime: 764245635, differentialIngestion: true, schedule: \"* * * * *\"}",
        );
        assert!(yaml.contains("schedule:"), "the sample's ingestion line changed");
        let (ok, out) = env.apply_yaml(&yaml);
        assert!(ok, "{out}");
    }
    let mut audiences = Vec::new();
    for name in names {
        let obj = env.wait_ready(name, READY_TIMEOUT).await;
        audiences.push(obj.status.and_then(|s| s.audience_id).expect("audience id"));
    }
    // The first boundary at least 10 s away, so every object starts the observed minutes idle.
    let b1 = next_minute(jiff::Timestamp::now().as_second() + 10);
    let (b2, b3, b4) = (b1 + 60, b1 + 120, b1 + 180);

    // 4 s before B2, a spec change on sched-0: its run is in flight across B2, and B2's
    // scheduled run must wait for it.
    until_wall_clock(b2 - 4).await;
    env.merge_spec(
        "sched-0",
        serde_json::json!({"description": "Changed just before a scheduled time"}),
    )
    .await;
    // Served B3 (every object), then the operator dies 10 s before B4 and comes back 15 s after.
    for name in names {
        support::wait_for(&format!("{name} served {b3}"), Duration::from_secs(150), || async {
            let st = env.status(name).await;
            (st.last_scheduled_time.map(|t| t.0.as_second()) == Some(b3)).then_some(())
        })
        .await;
    }
    until_wall_clock(b4 - 10).await;
    assert!(env.stop_operator(true), "the SIGKILL landed on a running operator");
    until_wall_clock(b4 + 15).await;
    let restarted_at = jiff::Timestamp::now().as_second();
    env.start_operator();
    for name in names {
        support::wait_for(&format!("{name} caught up {b4}"), Duration::from_secs(60), || async {
            let st = env.status(name).await;
            let served = st.last_scheduled_time.map(|t| t.0.as_second()) == Some(b4);
            let idle = st.last_run.is_some_and(|r| r.status == RunState::Success);
            (served && idle).then_some(())
        })
        .await;
    }

    for (i, (name, audience)) in names.iter().zip(&audiences).enumerate() {
        let starts = run_starts(&env, audience);
        let in_minute = |from: i64| starts.iter().filter(|s| **s >= from && **s < from + 60).count();
        // One run per minute; sched-0's minute before B2 also holds its spec-change run.
        let expected_b1 = if i == 0 { 2 } else { 1 };
        assert_eq!(
            in_minute(b1),
            expected_b1,
            "{name}: runs in [B1, B2): {starts:?} (B1 {b1})"
        );
        assert_eq!(in_minute(b2), 1, "{name}: runs in [B2, B3): {starts:?} (B1 {b1})");
        assert_eq!(in_minute(b3), 1, "{name}: runs in [B3, B4): {starts:?} (B1 {b1})");
        // Down across B4: exactly one catch-up run, after the restart.
        let after_b4: Vec<_> = starts.iter().filter(|s| **s >= b4).collect();
        assert_eq!(after_b4.len(), 1, "{name}: one catch-up run: {starts:?} (B4 {b4})");
        assert!(*after_b4[0] >= restarted_at - 1, "{name}: caught up after the restart");
        // Never two in flight (the spec-change run included): each run starts after the
        // previous one ended (runs take RUN_SECS; AEP's times are whole seconds).
        for w in starts.windows(2) {
            assert!(
                w[1] - w[0] >= RUN_SECS - 1,
                "{name}: overlapping runs {w:?} in {starts:?}"
            );
        }
        let st = env.status(name).await;
        assert_eq!(
            st.next_scheduled_time.map(|t| t.0.as_second()),
            Some(next_minute(jiff::Timestamp::now().as_second() - 1)),
            "{name}: nextScheduledTime"
        );
    }
    // sched-0's B2 run is the scheduled one, started once the spec-change run had ended.
    let s0 = run_starts(&env, &audiences[0]);
    let spec_run = s0
        .iter()
        .find(|s| **s >= b2 - 5 && **s < b2)
        .expect("the spec-change run before B2");
    let b2_run = s0.iter().find(|s| **s >= b2 && **s < b3).expect("B2's run");
    assert!(
        b2_run - spec_run >= RUN_SECS - 1,
        "B2's run waited for the spec-change run: {s0:?}"
    );
}

/// Restarts the operator with its clock `offset` ahead (the emulator's clock is moved alike).
fn restart_with_clock(env: &mut Env, offset: &str) {
    env.extra_flags.retain(|f| !f.starts_with("--clock-offset="));
    env.extra_flags.push(format!("--clock-offset={offset}"));
    env.stop_operator(false);
    env.start_operator();
}

fn condition(obj: &audience_operator::api::ExternalAudience, type_: &str) -> (String, String, String) {
    obj.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_run_budget_defers_by_priority_sends_nothing_meanwhile_and_resumes_the_next_day() {
    const DAY: Duration = Duration::from_secs(86_400);
    let mut env = Env::start_with(
        "budget",
        // AEP's own cap is far away: what stops the sixth run is the operator.
        |b| b.zero_latency().configure(|s| s.max_runs_per_sandbox_per_day = 1000),
        vec!["--max-runs-per-sandbox-per-day=5".into()],
        true,
    )
    .await;
    let names: Vec<String> = (0..8).map(|i| format!("budget-{i}")).collect();
    let yaml: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            env.seed_named(n, &format!("Budget {i}")).replace(
                "ingestion: {dataFilterStartTime: 764245635, differentialIngestion: true}",
                "ingestion: {dataFilterStartTime: 764245635, differentialIngestion: true, schedule: \"@daily\"}",
            )
        })
        .collect();
    let (ok, out) = env.apply_yaml(&yaml.join("\n---\n"));
    assert!(ok, "{out}");
    let tomorrow = jiff::Timestamp::from_second((jiff::Timestamp::now().as_second() / 86_400 + 1) * 86_400).unwrap();
    let deferred_until = |o: &audience_operator::api::ExternalAudience, until: jiff::Timestamp| {
        let (status, reason, message) = condition(o, "Reconciling");
        status == "True"
            && reason == "RunDeferred"
            && message.contains("(5/5 runs today, UTC)")
            && message.contains(&until.to_string())
    };
    // Day 1: five run (first come, first served: nobody was waiting yet), three wait for tomorrow.
    let (ran, waiting) = support::wait_for("5 Ready and 3 deferred", READY_TIMEOUT, || async {
        let mut ran = Vec::new();
        let mut waiting = Vec::new();
        for n in &names {
            let o = env.get(n).await;
            if is_ready(&o) {
                ran.push(n.clone());
            } else if deferred_until(&o, tomorrow) {
                waiting.push(n.clone());
            }
        }
        (ran.len() == 5 && waiting.len() == 3).then_some((ran, waiting))
    })
    .await;
    assert_eq!(env.emulator.stats().runs_started, 5, "exactly five runs that day");
    // Deferred objects send nothing (and the Ready ones have nothing to send).
    let before: u64 = env.emulator.stats().received.values().sum();
    tokio::time::sleep(Duration::from_secs(8)).await; // an observation window, not a sync
    let after: u64 = env.emulator.stats().received.values().sum();
    assert_eq!(after, before, "no AEP request while deferred");

    // A spec change on a Ready object: it waits too, but goes before the scheduled refreshes.
    let changed = ran[0].clone();
    env.merge_spec(
        &changed,
        serde_json::json!({"description": "Changed while the budget is spent"}),
    )
    .await;
    env.wait_obj(&changed, "deferred spec change", READY_TIMEOUT, |o| {
        deferred_until(o, tomorrow)
    })
    .await;

    // The next day (both clocks): the 3 deferred first runs and the spec change go first (4),
    // then one of the 4 scheduled refreshes (same due time); the other three wait again.
    env.emulator.advance_clock(DAY);
    restart_with_clock(&mut env, "24h");
    let ran_on_day2 = |o: &audience_operator::api::ExternalAudience| {
        is_ready(o)
            && o.status
                .as_ref()
                .and_then(|s| s.last_run.as_ref())
                .and_then(|r| r.start_time.as_ref())
                .is_some_and(|t| t.0 >= tomorrow)
    };
    for n in waiting.iter().chain(std::iter::once(&changed)) {
        env.wait_obj(n, "run on day 2", READY_TIMEOUT, ran_on_day2).await;
    }
    let day3 = jiff::Timestamp::from_second(tomorrow.as_second() + 86_400).unwrap();
    let (refreshed, still) = support::wait_for("1 scheduled refresh ran, 3 wait for day 3", READY_TIMEOUT, || async {
        let mut refreshed = Vec::new();
        let mut still = Vec::new();
        for n in &ran[1..] {
            let o = env.get(n).await;
            if ran_on_day2(&o) {
                refreshed.push(n.clone());
            } else if deferred_until(&o, day3) {
                still.push(n.clone());
            }
        }
        (refreshed.len() == 1 && still.len() == 3).then_some((refreshed, still))
    })
    .await;
    assert_eq!(
        env.emulator.stats().runs_started,
        10,
        "five more runs on day 2: {refreshed:?} ran, {still:?} wait"
    );
    let st = env.status(&changed).await;
    assert_eq!(
        st.last_run.map(|r| r.generation),
        Some(2),
        "the spec change jumped the queue"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_expiry_is_reported_ahead_and_when_it_happens_and_auto_extend_extends_once_per_period() {
    const DAY: Duration = Duration::from_secs(86_400);
    let mut env = Env::start_with(
        "expiry",
        |b| b.zero_latency(),
        vec!["--expiration-warning-window=72h".into()],
        true,
    )
    .await;
    let plain = env
        .seed_named("expiring", "Expiring")
        .replace("ttlInDays: 40", "ttlInDays: 10");
    let extended = env
        .seed_named("extended", "Extended")
        .replace("ttlInDays: 40", "ttlInDays: 10")
        .replace(
            "deletionPolicy: Delete",
            "deletionPolicy: Delete\n  expiration: {autoExtend: true}",
        );
    assert!(
        plain.contains("ttlInDays: 10") && extended.contains("autoExtend"),
        "the sample changed"
    );
    let (ok, out) = env.apply_yaml(&format!("{plain}\n---\n{extended}"));
    assert!(ok, "{out}");
    for n in ["expiring", "extended"] {
        let obj = env.wait_ready(n, READY_TIMEOUT).await;
        let d = obj.status.and_then(|s| s.data_expiration).expect("dataExpiration");
        assert_eq!(d.source, "LastSuccessfulRun");
        let in_days = d.expires_at.0.duration_since(jiff::Timestamp::now()).as_secs_f64() / 86_400.0;
        assert!((in_days - 10.0).abs() < 0.01, "{n}: expires in {in_days} days");
        assert_eq!(condition(&env.get(n).await, "DataExpiring").1, "DataFresh");
    }
    let audience = |n: &str| {
        let env = &env;
        let n = n.to_owned();
        async move { env.status(&n).await.audience_id.expect("audience id") }
    };
    let (plain_id, extended_id) = (audience("expiring").await, audience("extended").await);

    // Eight days on: within the 72 h window. The plain object says so (still Ready); the
    // autoExtend one is extended, once.
    env.emulator.advance_clock(DAY * 8);
    restart_with_clock(&mut env, "192h");
    env.wait_obj("expiring", "the expected budget/expiry state", READY_TIMEOUT, |o| {
        is_ready(o) && condition(o, "DataExpiring").0 == "True" && condition(o, "DataExpiring").1 == "DataExpiringSoon"
    })
    .await;
    env.wait_obj("extended", "the expected budget/expiry state", READY_TIMEOUT, |o| {
        o.status
            .as_ref()
            .and_then(|s| s.data_expiration.as_ref())
            .is_some_and(|d| d.source == "Extension")
    })
    .await;
    assert_eq!(env.emulator.stats().received("extend_ttl"), 1);
    let state = env.emulator.state();
    let aep_extended = state.audience(&extended_id).expect("audience");
    let ours = env.status("extended").await.data_expiration.expect("expiration");
    assert!(!aep_extended.expired);
    // AEP and the operator agree on the new expiration (20 days after the run, within a minute).
    let aep_at = aep_extended.data_expires_at_ms.expect("AEP's expiration");
    assert!(
        (ours.expires_at.0.as_millisecond() - aep_at).abs() < 60_000,
        "{ours:?} vs {aep_at}"
    );

    // Eleven days on: the plain object's data expired (AEP agrees): Stalled, which kstatus reads
    // as Failed and Argo CD as Degraded. The extended one is fresh and is not extended again.
    env.emulator.advance_clock(DAY * 3);
    restart_with_clock(&mut env, "264h");
    let obj = env
        .wait_obj("expiring", "the expected budget/expiry state", READY_TIMEOUT, |o| {
            condition(o, "Stalled").1 == "DataExpired"
        })
        .await;
    assert_eq!(condition(&obj, "Ready").0, "False");
    assert!(
        condition(&obj, "Stalled").2.contains("run-requested-at"),
        "says what to do"
    );
    assert!(
        env.emulator.state().audience(&plain_id).expect("audience").expired,
        "AEP agrees"
    );
    let fresh = env
        .wait_obj("extended", "the expected budget/expiry state", READY_TIMEOUT, |o| {
            is_ready(o) && condition(o, "DataExpiring").1 == "DataFresh"
        })
        .await;
    assert!(fresh.status.is_some());
    assert_eq!(env.emulator.stats().received("extend_ttl"), 1, "once per period");
}
