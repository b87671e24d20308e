//! AudienceActivation end to end: a real kube-apiserver, the operator binary as its
//! ServiceAccount, and the AEP emulator over HTTP with destination dataflows. Every assertion
//! counts what the operator sent (`received`) or what exists (the dataflow's selectors), never an
//! invariant the emulator enforces on its own.

mod support;

use std::time::Duration;

use aep::DestinationKind;
use aep_emulator::NewFlow;
use audience_operator::api::{ACTIVATION_FINALIZER, AudienceActivation, EXPORT_REQUESTED_AT};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::json;
use support::operator::{Env, condition_reason, is_ready, wait_gone};

const TIMEOUT: Duration = Duration::from_secs(90);
const BATCH_FLOW: &str = "b8f0c5a2-6d1e-4f3b-9c7a-2e5d8f1a0b01";
const STREAMING_FLOW: &str = "d3a7e9c1-4b2f-4a6d-8e5c-7f1b2a9c0d02";
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn flags() -> Vec<String> {
    vec!["--activation-poll-interval=1s".into()]
}

/// Emulator settings for activation tests: streaming exports start at once and runs are short;
/// ad hoc exports need no wait after mapping.
fn quick(b: aep_emulator::EmulatorBuilder) -> aep_emulator::EmulatorBuilder {
    b.operation_timing(Duration::from_millis(200), 0)
        .run_timing(Duration::from_millis(300), 0)
        .configure(|s| {
            s.streaming_export_delay_ms = 200;
            s.export_run_duration_ms = 500;
            s.adhoc_min_wait_ms = 0;
            s.segmentation_job_duration_ms = 60_000;
        })
}

fn flow(id: &str, name: &str, kind: DestinationKind) -> NewFlow {
    NewFlow {
        id: Some(id.to_owned()),
        ..NewFlow::new("prod", name, kind)
    }
}

fn sample(env: &Env, file: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/deploy/samples/{file}"))
        .expect("sample")
        .replace("namespace: marketing", &format!("namespace: {}", env.ns))
}

/// An activation of ExternalAudience `audience` into `flow_id` (batch settings when `batch`).
fn activation(name: &str, audience: &str, flow_id: &str, batch: bool) -> String {
    let export = if batch {
        "\n  export:\n    mode: DAILY_FULL_EXPORT\n    schedule: {frequency: DAILY, triggerType: AFTER_SEGMENT_EVAL}"
    } else {
        ""
    };
    format!(
        "apiVersion: aep.audience-operator.dev/v1alpha1\nkind: AudienceActivation\nmetadata:\n  name: {name}\nspec:\n  \
         audienceRef: {{name: {audience}}}\n  dataflowId: {flow_id}{export}\n"
    )
}

fn activations(env: &Env) -> Api<AudienceActivation> {
    Api::namespaced(env.client.clone(), &env.ns)
}

fn reason(a: &AudienceActivation, type_: &str) -> Option<(String, String, String)> {
    a.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn act_ready(a: &AudienceActivation) -> bool {
    a.status.as_ref().is_some_and(|s| {
        s.observed_generation == a.metadata.generation
            && s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

async fn wait_act(
    env: &Env,
    name: &str,
    what: &str,
    check: impl Fn(&AudienceActivation) -> bool,
) -> AudienceActivation {
    let api = activations(env);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let mut last = None;
    loop {
        if let Ok(a) = api.get(name).await {
            if check(&a) {
                return a;
            }
            last = Some(a);
        }
        if tokio::time::Instant::now() > deadline {
            let log = env.log_text();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            panic!(
                "timed out waiting for activation {name} to be {what}\nstatus: {:#?}\noperator log tail:\n{}",
                last.and_then(|a| a.status),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn audience_id(env: &Env, name: &str) -> String {
    env.wait_ready(name, TIMEOUT)
        .await
        .status
        .and_then(|s| s.audience_id)
        .expect("audience id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_audience_activates_to_batch_and_streaming_and_deleting_it_unmaps_before_deleting() {
    let env = Env::start_with("act-seed", quick, flags(), true).await;
    env.emulator
        .create_flow(&flow(BATCH_FLOW, "S3 nightly files", DestinationKind::Batch));
    env.emulator
        .create_flow(&flow(STREAMING_FLOW, "Kinesis stream", DestinationKind::Streaming));
    // Activations first: they wait for their audience.
    for file in ["loyalty-members-to-s3.yaml", "loyalty-members-to-kinesis.yaml"] {
        let (ok, out) = env.apply_yaml(&sample(&env, file));
        assert!(ok, "kubectl apply {file}: {out}");
    }
    wait_act(&env, "loyalty-members-to-s3", "waiting for its audience", |a| {
        reason(a, "Reconciling")
            .is_some_and(|(s, r, m)| s == "True" && r == "AudienceNotReady" && m.contains("loyalty-members"))
    })
    .await;
    assert_eq!(
        env.emulator.stats().received("patch_flow"),
        0,
        "nothing sent while the audience is missing"
    );
    let (ok, out) = env.apply_yaml(&env.seed_yaml());
    assert!(ok, "{out}");
    let id = audience_id(&env, "loyalty-members").await;

    let batch = wait_act(&env, "loyalty-members-to-s3", "Ready", act_ready).await;
    let streaming = wait_act(&env, "loyalty-members-to-kinesis", "Ready", act_ready).await;
    for (a, flow_id, kind) in [(&batch, BATCH_FLOW, "batch"), (&streaming, STREAMING_FLOW, "streaming")] {
        let st = a.status.as_ref().expect("status");
        assert_eq!(st.audience_id.as_deref(), Some(id.as_str()));
        assert!(st.selector_added, "the activation added the selector: {st:?}");
        assert_eq!(st.dataflow.as_ref().map(|d| d.destination_kind.as_str()), Some(kind));
        let view = env.emulator.flow(flow_id).expect("flow");
        assert_eq!(
            view.selectors.len(),
            1,
            "{kind}: exactly one selector: {:?}",
            view.selector_ids()
        );
        assert_eq!(view.count_of(&id), 1, "{kind}: the audience once");
        assert!(
            a.owner_references()
                .iter()
                .any(|o| o.kind == "ExternalAudience" && o.name == "loyalty-members"),
            "{kind}: owned by its ExternalAudience"
        );
    }
    let selector = &env.emulator.flow(BATCH_FLOW).expect("flow").selectors[0];
    assert_eq!(selector.value.export_mode.as_deref(), Some("DAILY_FULL_EXPORT"));
    assert_eq!(
        selector.value.schedule.as_ref().and_then(|s| s.trigger_type.as_deref()),
        Some("AFTER_SEGMENT_EVAL")
    );
    assert_eq!(
        env.emulator.stats().received("patch_flow"),
        2,
        "one PATCH per activation"
    );

    // The streaming export starts soon after mapping; the batch one after the next daily
    // segmentation job, which also marks the audience Evaluated.
    wait_act(&env, "loyalty-members-to-kinesis", "showing its export run", |a| {
        a.status.as_ref().and_then(|s| s.last_export.as_ref()).is_some()
    })
    .await;
    env.emulator.advance_clock(Duration::from_secs(26 * 3600));
    let exported = wait_act(&env, "loyalty-members-to-s3", "showing its export run", |a| {
        a.status.as_ref().and_then(|s| s.last_export.as_ref()).is_some()
    })
    .await;
    let run = exported.status.and_then(|s| s.last_export).expect("export");
    assert!(!run.run_id.is_empty() && run.started_at.is_some(), "{run:?}");
    env.wait_obj("loyalty-members", "Evaluated", TIMEOUT, |ea| {
        ea.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Evaluated" && c.status == "True" && c.reason == "SegmentationDone")
        })
    })
    .await;
    assert!(
        is_ready(&env.get("loyalty-members").await),
        "Evaluated never blocks Ready"
    );

    // kubectl delete ea: the selectors go first, then the audience; AEP never refuses a delete.
    env.api()
        .delete("loyalty-members", &DeleteParams::default())
        .await
        .expect("delete");
    let waiting = env
        .wait_obj("loyalty-members", "waiting for its activations", TIMEOUT, |ea| {
            condition_reason(ea, "Reconciling") == "ActivationsExist"
                || condition_reason(ea, "Ready") == "ActivationsExist"
        })
        .await;
    assert!(waiting.metadata.deletion_timestamp.is_some());
    wait_gone(&env.api(), "loyalty-members", TIMEOUT).await;
    for name in ["loyalty-members-to-s3", "loyalty-members-to-kinesis"] {
        assert!(
            activations(&env).get_opt(name).await.expect("get").is_none(),
            "{name} is gone"
        );
    }
    let stats = env.emulator.stats();
    for flow_id in [BATCH_FLOW, STREAMING_FLOW] {
        assert!(
            env.emulator.flow(flow_id).expect("flow").selectors.is_empty(),
            "{flow_id} unmapped"
        );
    }
    assert_eq!(stats.received("patch_flow"), 4, "one add and one remove per activation");
    assert_eq!(stats.received("delete_audience"), 1, "one DELETE of the audience");
    assert_eq!(stats.delete_refusals, 0, "no refused delete was sent");
    assert!(
        env.emulator.state().deleted.iter().any(|d| d.audience_id == id),
        "the audience is deleted in AEP"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_activations_into_one_dataflow_under_a_concurrent_writer_map_each_audience_once() {
    let env = Env::start_with(
        "act-twenty",
        |b| quick(b).configure(|s| s.max_audiences_per_flow = 250),
        flags(),
        true,
    )
    .await;
    let flow_id = env
        .emulator
        .create_flow(&NewFlow::new("prod", "Kinesis stream", DestinationKind::Streaming));
    const N: usize = 20;
    let mut yaml = Vec::new();
    for i in 0..N {
        yaml.push(env.seed_named(&format!("aud-{i:02}"), &format!("Audience {i:02}")));
    }
    yaml.push(env.seed_named("ui-one", "Mapped in the UI"));
    let (ok, out) = env.apply_yaml(&yaml.join("\n---\n"));
    assert!(ok, "{out}");
    let mut ids = Vec::new();
    for i in 0..N {
        ids.push(audience_id(&env, &format!("aud-{i:02}")).await);
    }
    // Someone maps another audience in the UI.
    let ui = audience_id(&env, "ui-one").await;
    env.emulator.add_selector(&flow_id, &ui).expect("ui selector");
    env.emulator.update_faults(|f| f.concurrent_writer_probability = 0.3);
    let docs: Vec<String> = (0..N)
        .map(|i| activation(&format!("act-{i:02}"), &format!("aud-{i:02}"), &flow_id, false))
        .collect();
    let (ok, out) = env.apply_yaml(&docs.join("---\n"));
    assert!(ok, "{out}");
    for i in 0..N {
        wait_act(&env, &format!("act-{i:02}"), "Ready", act_ready).await;
    }
    let view = env.emulator.flow(&flow_id).expect("flow");
    let stats = env.emulator.stats();
    assert_eq!(view.selectors.len(), N + 1, "{:?}", view.selector_ids());
    for id in &ids {
        assert_eq!(view.count_of(id), 1, "audience {id} exactly once");
    }
    assert_eq!(view.count_of(&ui), 1, "the UI's selector is kept");
    assert!(stats.concurrent_writes > 0, "the concurrent writer wrote");
    assert!(stats.flow_patch_conflicts > 0, "and some PATCHes met it (412)");
    assert_eq!(stats.flow_patches, N as u64, "one applied PATCH per activation");
    println!(
        "twenty: {} PATCHes sent, {} met a concurrent write (412), {} flow reads",
        stats.received("patch_flow"),
        stats.flow_patch_conflicts,
        stats.received("get_flow")
    );
}

/// Lost PATCH answers, for one success model and one selector-id model: nothing duplicated,
/// nothing lost, and each change sent once.
async fn lost_patch_answers(prefix: &str, answer: aep_emulator::PatchAnswer, ids: aep_emulator::SelectorIdModel) {
    let env = Env::start_with(
        prefix,
        |b| {
            quick(b).configure(|s| {
                s.patch_answer = answer;
                s.selector_ids = ids;
            })
        },
        flags(),
        true,
    )
    .await;
    let flow_id = env
        .emulator
        .create_flow(&NewFlow::new("prod", "S3 files", DestinationKind::Batch));
    const N: usize = 3;
    let docs: Vec<String> = (0..N)
        .map(|i| env.seed_named(&format!("aud-{i}"), &format!("Audience {i}")))
        .collect();
    let (ok, out) = env.apply_yaml(&docs.join("\n---\n"));
    assert!(ok, "{out}");
    let mut audiences = Vec::new();
    for i in 0..N {
        audiences.push(audience_id(&env, &format!("aud-{i}")).await);
    }
    env.emulator
        .update_faults(|f| f.lost_answers.patch_flow.next = N as u32);
    let docs: Vec<String> = (0..N)
        .map(|i| activation(&format!("act-{i}"), &format!("aud-{i}"), &flow_id, true))
        .collect();
    let (ok, out) = env.apply_yaml(&docs.join("---\n"));
    assert!(ok, "{out}");
    for i in 0..N {
        let a = wait_act(&env, &format!("act-{i}"), "Ready", act_ready).await;
        assert!(
            a.status.is_some_and(|s| s.selector_added),
            "act-{i} knows it added the selector"
        );
    }
    let view = env.emulator.flow(&flow_id).expect("flow");
    assert_eq!(view.selectors.len(), N, "{:?}", view.selector_ids());
    for id in &audiences {
        assert_eq!(view.count_of(id), 1, "{prefix}: audience {id} exactly once");
    }
    let stats = env.emulator.stats();
    assert!(stats.lost_answers >= N as u64, "the answers were lost");
    assert_eq!(
        stats.received("patch_flow"),
        N as u64,
        "{prefix}: each add sent once, settled by a read"
    );

    // Removal with lost answers too: each selector removed once, none of another's.
    env.emulator
        .update_faults(|f| f.lost_answers.patch_flow.next = N as u32);
    for i in 0..N {
        activations(&env)
            .delete(&format!("act-{i}"), &DeleteParams::default())
            .await
            .expect("delete");
    }
    for i in 0..N {
        let name = format!("act-{i}");
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while activations(&env).get_opt(&name).await.expect("get").is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} not gone:\n{}",
                env.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(env.emulator.flow(&flow_id).expect("flow").selectors.is_empty());
    assert_eq!(
        env.emulator.stats().received("patch_flow"),
        2 * N as u64,
        "{prefix}: each remove sent once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_patch_answers_with_an_etag_answer_and_ids_as_sent_never_duplicate_or_lose_a_selector() {
    lost_patch_answers(
        "act-lost-etag",
        aep_emulator::PatchAnswer::Etag,
        aep_emulator::SelectorIdModel::AsSent,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_patch_answers_with_202_and_normalised_ids_never_duplicate_or_lose_a_selector() {
    lost_patch_answers(
        "act-lost-202",
        aep_emulator::PatchAnswer::Accepted,
        aep_emulator::SelectorIdModel::Normalise,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ad_hoc_export_is_one_request_per_annotation_value_across_a_sigkill() {
    let mut env = Env::start_with(
        "act-adhoc",
        |b| quick(b).configure(|s| s.export_run_duration_ms = 2_000),
        flags(),
        true,
    )
    .await;
    env.emulator
        .create_flow(&flow(BATCH_FLOW, "S3 nightly files", DestinationKind::Batch));
    let (ok, out) = env.apply_yaml(&env.seed_yaml());
    assert!(ok, "{out}");
    audience_id(&env, "loyalty-members").await;
    let (ok, out) = env.apply_yaml(&sample(&env, "loyalty-members-to-s3.yaml"));
    assert!(ok, "{out}");
    wait_act(&env, "loyalty-members-to-s3", "Ready", act_ready).await;
    // AEP takes ad hoc exports only after the audience's first scheduled export (the day after
    // the daily segmentation job ran).
    env.emulator.advance_clock(Duration::from_secs(26 * 3600));
    wait_act(&env, "loyalty-members-to-s3", "showing its scheduled export", |a| {
        a.status.as_ref().and_then(|s| s.last_export.as_ref()).is_some()
    })
    .await;

    // The answer is held back after the export started: the kill lands between marker and answer.
    env.emulator.update_faults(|f| f.answer_delay_ms = 5_000);
    annotate(&env, "loyalty-members-to-s3", "v1").await;
    wait_act(&env, "loyalty-members-to-s3", "with its request marker", |a| {
        a.status
            .as_ref()
            .and_then(|s| s.export_request.as_ref())
            .is_some_and(|r| r.value == "v1" && r.state == "Pending")
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while env.emulator.stats().received("adhoc_run") == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the request was sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(env.stop_operator(true), "the SIGKILL landed");
    env.emulator.update_faults(|f| f.answer_delay_ms = 0);
    env.start_operator();
    let started = wait_act(&env, "loyalty-members-to-s3", "with its export run", |a| {
        a.status
            .as_ref()
            .and_then(|s| s.export_request.as_ref())
            .is_some_and(|r| r.value == "v1" && r.state == "Started" && r.run_id.is_some())
    })
    .await;
    let stats = env.emulator.stats();
    assert_eq!(stats.received("adhoc_run"), 1, "one request for v1, across the kill");
    assert_eq!(stats.adhoc_runs_started, 1);
    let run_id = started.status.and_then(|s| s.export_request).and_then(|r| r.run_id);
    let view = env.emulator.flow(BATCH_FLOW).expect("flow");
    assert!(
        view.runs.iter().any(|r| Some(&r.run_id) == run_id.as_ref()),
        "the recorded run is the one AEP started"
    );

    // A new value while that export still runs: AEP's documented 400, reported, not looped.
    annotate(&env, "loyalty-members-to-s3", "v2").await;
    let refused = wait_act(&env, "loyalty-members-to-s3", "refused", |a| {
        a.status
            .as_ref()
            .and_then(|s| s.export_request.as_ref())
            .is_some_and(|r| r.value == "v2" && r.state == "Refused")
    })
    .await;
    let message = refused
        .status
        .and_then(|s| s.export_request)
        .and_then(|r| r.message)
        .unwrap_or_default();
    assert!(message.contains("Run already going on"), "AEP's message: {message}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        env.emulator.stats().received("adhoc_run"),
        2,
        "the refusal is not retried"
    );

    // Once it is over, a new value is one more export.
    annotate(&env, "loyalty-members-to-s3", "v3").await;
    wait_act(&env, "loyalty-members-to-s3", "v3 started", |a| {
        a.status
            .as_ref()
            .and_then(|s| s.export_request.as_ref())
            .is_some_and(|r| r.value == "v3" && r.state == "Started")
    })
    .await;
    assert_eq!(env.emulator.stats().received("adhoc_run"), 3);
    assert_eq!(env.emulator.stats().adhoc_runs_started, 2);
}

async fn annotate(env: &Env, name: &str, value: &str) {
    activations(env)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {EXPORT_REQUESTED_AT: value}}})),
        )
        .await
        .expect("annotate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activations_the_dataflow_cannot_take_stall_with_the_field_or_aeps_message_and_send_nothing() {
    let env = Env::start_with(
        "act-stall",
        |b| quick(b).configure(|s| s.max_audiences_per_flow = 1),
        flags(),
        true,
    )
    .await;
    let batch = env
        .emulator
        .create_flow(&NewFlow::new("prod", "S3 files", DestinationKind::Batch));
    let streaming = env
        .emulator
        .create_flow(&NewFlow::new("prod", "Kinesis", DestinationKind::Streaming));
    let full = env
        .emulator
        .create_flow(&NewFlow::new("prod", "Full", DestinationKind::Streaming));
    let (ok, out) =
        env.apply_yaml(&[env.seed_named("aud", "Audience"), env.seed_named("other", "Other")].join("\n---\n"));
    assert!(ok, "{out}");
    audience_id(&env, "aud").await;
    let other = audience_id(&env, "other").await;
    env.emulator
        .add_selector(&full, &other)
        .expect("the one audience the flow may hold");
    let docs = [
        activation("batch-without-export", "aud", &batch, false),
        activation("streaming-with-export", "aud", &streaming, true),
        activation("unknown-flow", "aud", "0b1d2c3e-0000-4000-8000-000000000000", false),
        activation("over-the-cap", "aud", &full, false),
    ];
    let (ok, out) = env.apply_yaml(&docs.join("---\n"));
    assert!(ok, "{out}");
    let stalled = |want: &'static str, text: &'static str| {
        move |a: &AudienceActivation| {
            reason_is(a, "Stalled", want) && reason(a, "Stalled").is_some_and(|(_, _, m)| m.contains(text))
        }
    };
    wait_act(
        &env,
        "batch-without-export",
        "Stalled",
        stalled("ExportSettingsInvalid", "spec.export: required"),
    )
    .await;
    wait_act(
        &env,
        "streaming-with-export",
        "Stalled",
        stalled("ExportSettingsInvalid", "spec.export: must be removed"),
    )
    .await;
    wait_act(
        &env,
        "unknown-flow",
        "Stalled",
        stalled("DataflowNotFound", "not found"),
    )
    .await;
    wait_act(
        &env,
        "over-the-cap",
        "Stalled",
        stalled("RejectedByAEP", "at most 1 audiences"),
    )
    .await;
    let stats = env.emulator.stats();
    assert_eq!(stats.received("patch_flow"), 1, "only the PATCH AEP refused was sent");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        env.emulator.stats().received("patch_flow"),
        1,
        "a refusal blocks the generation: not sent again"
    );
    // Fixing the spec resumes it.
    activations(&env)
        .patch(
            "batch-without-export",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"export": {"mode": "FIRST_FULL_THEN_INCREMENTAL", "schedule": {"frequency": "EVERY_6_HOURS"}}}})),
        )
        .await
        .expect("patch");
    wait_act(&env, "batch-without-export", "Ready", act_ready).await;
    let fixed = activations(&env).get("batch-without-export").await.expect("get");
    assert!(fixed.finalizers().iter().any(|f| f == ACTIVATION_FINALIZER));
    assert_eq!(
        env.emulator
            .flow(&batch)
            .expect("flow")
            .count_of(&audience_id(&env, "aud").await),
        1
    );
}

fn reason_is(a: &AudienceActivation, type_: &str, want: &str) -> bool {
    reason(a, type_).is_some_and(|(s, r, _)| s == "True" && r == want)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_switched_to_another_org_never_sends_an_activation_or_its_removal_there() {
    use aep_emulator::{CredentialSpec, Emulator};
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
    let mut extra = flags();
    extra.push(format!("--allowed-endpoint={}", second.base_url()));
    extra.push("--credentials-cache-ttl=1s".into());
    let env = Env::start_with("act-org", quick, extra, true).await;
    env.emulator
        .create_flow(&flow(STREAMING_FLOW, "Kinesis stream", DestinationKind::Streaming));
    second.create_flow(&flow(
        STREAMING_FLOW,
        "Kinesis stream elsewhere",
        DestinationKind::Streaming,
    ));
    let (ok, out) = env.apply_yaml(&env.seed_yaml());
    assert!(ok, "{out}");
    let id = audience_id(&env, "loyalty-members").await;
    let (ok, out) = env.apply_yaml(&sample(&env, "loyalty-members-to-kinesis.yaml"));
    assert!(ok, "{out}");
    wait_act(&env, "loyalty-members-to-kinesis", "Ready", act_ready).await;

    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(env.client.clone(), &env.ns);
    let switch = |creds: aep::Credentials| {
        let secrets = secrets.clone();
        async move {
            let base = creds.platform_url.clone().expect("url").to_string();
            let patch = json!({"stringData": {
                "clientId": creds.client_id,
                "clientSecret": secrecy::ExposeSecret::expose_secret(&creds.client_secret),
                "orgId": creds.org_id, "platformUrl": base, "imsUrl": base,
            }});
            secrets
                .patch("aep-credentials", &PatchParams::default(), &Patch::Merge(patch))
                .await
                .expect("switch the Secret");
        }
    };
    switch(second.credentials()).await;
    // The audience stops (OrganizationChanged), so the activation waits for it; deleting the
    // activation meanwhile waits too: its dataflow lives in the first org.
    wait_act(&env, "loyalty-members-to-kinesis", "waiting for its audience", |a| {
        reason_is(a, "Reconciling", "AudienceNotReady")
    })
    .await;
    activations(&env)
        .delete("loyalty-members-to-kinesis", &DeleteParams::default())
        .await
        .expect("delete");
    wait_act(
        &env,
        "loyalty-members-to-kinesis",
        "waiting to be removed in its own org",
        |a| reason_is(a, "Stalled", "OrganizationChanged"),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sent_elsewhere: u64 = second.stats().received.values().sum();
    assert_eq!(sent_elsewhere, 0, "nothing sent to the other org");
    assert_eq!(
        env.emulator.flow(STREAMING_FLOW).expect("flow").count_of(&id),
        1,
        "still mapped"
    );

    // Back to the first org: the removal goes where the mapping is.
    switch(env.emulator.credentials()).await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while activations(&env)
        .get_opt("loyalty-members-to-kinesis")
        .await
        .expect("get")
        .is_some()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not removed:\n{}",
            env.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(env.emulator.flow(STREAMING_FLOW).expect("flow").count_of(&id), 0);
    assert_eq!(second.stats().received.values().sum::<u64>(), 0);
}
