//! End to end: ownership and exactly-once under every AEP behaviour the docs leave open (issue:
//! never touch an audience the object cannot prove it owns).
//!
//! Every test counts what the operator did (requests that reached the emulator, audiences and runs
//! that exist), never what the emulator refused; the strictest models (duplicate names allowed,
//! `customAudienceId` ignored) enforce nothing, so a duplicate would show.

mod support;

use std::time::Duration;

use aep_emulator::{
    AudienceView, EmulatorBuilder,
    config::{CustomAudienceIdModel, DuplicateNames, Faults, LookupVisibility, LostAnswer, LostAnswers, LostMode},
};
use audience_operator::{
    aep::AepClient,
    api::{ExternalAudience, OwnershipProof, RETRY_CREATE, custom_audience_id},
};
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;
use support::operator::{
    Env, condition_is, condition_message, condition_reason, is_ready, is_ready_with_current_run, kubectl, wait_gone,
    wait_obj_in,
};

const TIMEOUT: Duration = Duration::from_secs(90);

/// One reading of what the AEP docs leave open.
#[derive(Clone, Copy, Debug)]
struct Model {
    duplicates: DuplicateNames,
    custom_id: CustomAudienceIdModel,
    visibility: LookupVisibility,
}

impl Model {
    /// Every combination: 2 × 2 × 3.
    fn all() -> Vec<Model> {
        let mut out = Vec::new();
        for duplicates in [DuplicateNames::Reject, DuplicateNames::Allow] {
            for custom_id in [CustomAudienceIdModel::Unique, CustomAudienceIdModel::Ignore] {
                for visibility in [
                    LookupVisibility::Immediate,
                    LookupVisibility::AfterOperation,
                    LookupVisibility::Lagged,
                ] {
                    out.push(Model {
                        duplicates,
                        custom_id,
                        visibility,
                    });
                }
            }
        }
        out
    }

    fn apply(self, b: EmulatorBuilder) -> EmulatorBuilder {
        b.configure(|s| {
            s.duplicate_names = self.duplicates;
            s.custom_audience_id = self.custom_id;
            s.lookup_visibility = self.visibility;
            s.lookup_lag_ms = 1_500;
        })
    }

    fn echoes_custom_id(self) -> bool {
        self.custom_id == CustomAudienceIdModel::Unique
    }
}

fn audiences_named(env: &Env, name: &str) -> Vec<AudienceView> {
    env.emulator.state().audiences_named("prod", name).cloned().collect()
}

fn uid(obj: &ExternalAudience) -> String {
    obj.metadata.uid.clone().expect("uid")
}

fn audience_id(obj: &ExternalAudience) -> Option<String> {
    obj.status.as_ref().and_then(|s| s.audience_id.clone())
}

fn settled(o: &ExternalAudience) -> bool {
    is_ready(o) || condition_is(o, "Stalled", "True")
}

/// Runs `scenario` for each model, a few at a time (each has its own emulator and operators).
async fn for_models<F, Fut>(models: Vec<Model>, scenario: F)
where
    F: Fn(usize, Model) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for (batch, chunk) in models.chunks(4).enumerate() {
        futures::future::join_all(chunk.iter().enumerate().map(|(i, m)| scenario(batch * 4 + i, *m))).await;
    }
}

// ----- the two-namespace race -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_namespaces_applying_the_same_manifest_never_share_an_audience_in_any_model() {
    for_models(Model::all(), |i, model| async move {
        race(i, model).await;
    })
    .await;
}

async fn race(i: usize, model: Model) {
    let env = Env::start_with(
        &format!("race{i}"),
        |b| {
            model
                .apply(b)
                .operation_timing(Duration::from_millis(800), 0)
                .run_timing(Duration::from_millis(200), 0)
        },
        vec!["--resync-interval=1s".into()],
        true,
    )
    .await;
    let side = env.start_side(&format!("race{i}b")).await;
    let name = "Race members";
    let yaml_a = env
        .seed_yaml_in(&env.ns)
        .replace("name: Loyalty members", &format!("name: {name}"));
    let yaml_b = env
        .seed_yaml_in(&side.ns)
        .replace("name: Loyalty members", &format!("name: {name}"));
    // The same manifest at the same moment in two namespaces (two teams, or two clusters syncing
    // one Git repository).
    let (ns_a, ns_b) = (env.ns.clone(), side.ns.clone());
    let a = std::thread::spawn(move || kubectl(&["apply", "-n", &ns_a, "-f", "-"], Some(&yaml_a)));
    let b = std::thread::spawn(move || kubectl(&["apply", "-n", &ns_b, "-f", "-"], Some(&yaml_b)));
    assert!(a.join().expect("apply a").0 && b.join().expect("apply b").0);

    let api_b = side.api(&env.client);
    let obj_a = env
        .wait_obj("loyalty-members", "Ready or Stalled", TIMEOUT, settled)
        .await;
    let obj_b = wait_obj_in(
        &api_b,
        &side.log,
        "loyalty-members",
        "Ready or Stalled",
        TIMEOUT,
        settled,
    )
    .await;
    let (id_a, id_b) = (audience_id(&obj_a), audience_id(&obj_b));
    assert!(
        id_a.is_none() || id_a != id_b,
        "{model:?}: the two objects share audience {id_a:?}"
    );
    for (obj, id) in [(&obj_a, &id_a), (&obj_b, &id_b)] {
        match id {
            Some(_) => assert!(is_ready(obj), "{model:?}: {:?}", obj.status),
            None => assert_eq!(
                condition_reason(obj, "Stalled"),
                "AudienceNameTaken",
                "{model:?}: {}",
                condition_message(obj, "Stalled")
            ),
        }
    }
    // Exactly one audience per proven owner, and none without one.
    let audiences = audiences_named(&env, name);
    let owners = [&id_a, &id_b].iter().filter(|id| id.is_some()).count();
    assert!(owners >= 1, "{model:?}: someone won");
    assert_eq!(audiences.len(), owners, "{model:?}: {audiences:?}");
    for (obj, id) in [(&obj_a, &id_a), (&obj_b, &id_b)] {
        if let Some(id) = id {
            let aud = audiences
                .iter()
                .find(|a| &a.audience_id == id)
                .expect("its audience exists");
            if model.echoes_custom_id() {
                assert_eq!(aud.custom_audience_id, Some(custom_audience_id(&uid(obj))), "{model:?}");
            }
        }
    }
    let stats = env.emulator.stats();
    assert!(stats.received("create_audience") <= 2, "{model:?}: {stats:?}");
    assert_eq!(stats.creates as usize, owners, "{model:?}: creates accepted == owners");

    // Delete the loser (B when both won): the winner's audience stays, the winner stays Ready.
    let a_wins = id_a.is_some();
    let (winner_api, loser_api) = if a_wins {
        (env.api(), api_b.clone())
    } else {
        (api_b.clone(), env.api())
    };
    let (winner_id, loser_id) = if a_wins {
        (id_a.clone(), id_b.clone())
    } else {
        (id_b.clone(), id_a.clone())
    };
    let winner_id = winner_id.expect("a winner");
    loser_api
        .delete("loyalty-members", &DeleteParams::default())
        .await
        .expect("delete the loser");
    wait_gone(&loser_api, "loyalty-members", TIMEOUT).await;
    let state = env.emulator.state();
    assert!(
        state.audience(&winner_id).is_some(),
        "{model:?}: the winner's audience is still in AEP"
    );
    if let Some(loser_id) = loser_id {
        assert!(
            state.audience(&loser_id).is_none(),
            "{model:?}: the loser's own audience is deleted"
        );
    }
    // The winner notices nothing: two more drift checks later it is Ready with the same audience.
    // A drift check reads the sandbox's audience list, or the audience itself.
    let drift_reads = |s: &aep_emulator::Stats| s.received("get_audience") + s.received("list_audiences");
    let reads = drift_reads(&env.emulator.stats());
    support::wait_for("two more drift checks", TIMEOUT, || async {
        (drift_reads(&env.emulator.stats()) >= reads + 2).then_some(())
    })
    .await;
    let winner = winner_api.get("loyalty-members").await.expect("winner");
    assert!(is_ready(&winner), "{model:?}: {:?}", winner.status);
    assert_eq!(audience_id(&winner).as_deref(), Some(winner_id.as_str()), "{model:?}");
    eprintln!(
        "race {model:?}: {} create requests, {} audiences, winner {winner_id}",
        stats.received("create_audience"),
        audiences.len()
    );
}

// ----- lost create answers ----------------------------------------------------------------------

fn lose_next(mode: LostMode) -> LostAnswer {
    LostAnswer {
        next: 1,
        mode,
        ..LostAnswer::default()
    }
}

/// An Env in `model` whose emulator loses the answers in `lost` (timeouts held 3 s, the
/// operator's request timeout 1 s), with operations and runs taking `timing_ms`.
async fn lossy_env(prefix: &str, model: Model, timing_ms: (u64, u64), lost: LostAnswers) -> Env {
    Env::start_with(
        prefix,
        |b| {
            model
                .apply(b)
                .operation_timing(Duration::from_millis(timing_ms.0), 0)
                .run_timing(Duration::from_millis(timing_ms.1), 0)
                .faults(Faults {
                    hang_ms: 3_000,
                    lost_answers: lost,
                    ..Faults::default()
                })
        },
        vec!["--aep-request-timeout=1s".into()],
        true,
    )
    .await
}

const MODES: [LostMode; 3] = [LostMode::Drop, LostMode::Error500, LostMode::Timeout];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_create_answer_never_duplicates_and_stalls_where_there_is_no_proof() {
    for_models(Model::all(), |i, model| async move {
        lost_create(i, model, MODES[i % 3]).await;
    })
    .await;
}

async fn lost_create(i: usize, model: Model, mode: LostMode) {
    let lost = LostAnswers {
        create: lose_next(mode),
        ..Default::default()
    };
    let env = lossy_env(&format!("lostc{i}"), model, (500, 200), lost).await;
    assert!(env.apply_yaml(&env.seed_yaml()).0);
    let obj = env
        .wait_obj("loyalty-members", "Ready or Stalled", TIMEOUT, settled)
        .await;
    let stats = env.emulator.stats();
    assert_eq!(stats.lost_answers, 1, "{model:?} {mode:?}: the fault fired: {stats:?}");
    let audiences = audiences_named(&env, "Loyalty members");
    assert_eq!(audiences.len(), 1, "{model:?} {mode:?}: {audiences:?}");
    assert_eq!(
        stats.received("create_audience"),
        1,
        "{model:?} {mode:?}: no second create was sent"
    );
    let made = audiences[0].audience_id.clone();
    if model.echoes_custom_id() {
        // Proof by customAudienceId.
        assert!(is_ready(&obj), "{model:?} {mode:?}: {:?}", obj.status);
        let st = obj.status.expect("status");
        assert_eq!(st.audience_id.as_deref(), Some(made.as_str()));
        assert_eq!(st.ownership, Some(OwnershipProof::CustomAudienceId));
    } else {
        // No proof exists: stop and say what to check and how to resume.
        let msg = condition_message(&obj, "Stalled");
        assert!(
            msg.starts_with("CreateOutcomeUnknown") && msg.contains(&made) && msg.contains(RETRY_CREATE),
            "{model:?} {mode:?}: {msg}"
        );
        assert!(audience_id(&obj).is_none());
        // The human checks and adopts it explicitly.
        env.merge_spec("loyalty-members", json!({"audienceId": made})).await;
        let obj = env.wait_ready("loyalty-members", TIMEOUT).await;
        let st = obj.status.expect("status");
        assert_eq!(st.audience_id.as_deref(), Some(made.as_str()));
        assert_eq!(st.ownership, Some(OwnershipProof::SpecAudienceId));
        assert_eq!(
            env.emulator.stats().received("create_audience"),
            1,
            "{model:?} {mode:?}"
        );
    }
    eprintln!(
        "lost create {model:?} {mode:?}: 1 create sent, 1 audience, {}",
        condition_reason(&env.get("loyalty-members").await, "Ready")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_create_that_made_nothing_is_sent_again_only_once_absence_is_proven() {
    // Strictest model: nothing in AEP would stop or reveal a duplicate. The lost create's operation
    // fails, so no audience exists; after the settle window, no audience with the name exists:
    // proven absent, and exactly one new create is sent.
    let env = Env::start("absent", |b| {
        Model {
            duplicates: DuplicateNames::Allow,
            custom_id: CustomAudienceIdModel::Ignore,
            visibility: LookupVisibility::AfterOperation,
        }
        .apply(b)
        .operation_timing(Duration::from_millis(300), 0)
        .faults(Faults {
            fail_next_operations: 1,
            lost_answers: LostAnswers {
                create: lose_next(LostMode::Error500),
                ..Default::default()
            },
            ..Faults::default()
        })
    })
    .await;
    assert!(env.apply_yaml(&env.seed_yaml()).0);
    let obj = env.wait_ready("loyalty-members", TIMEOUT).await;
    let stats = env.emulator.stats();
    assert_eq!(stats.received("create_audience"), 2, "{stats:?}");
    assert_eq!(audiences_named(&env, "Loyalty members").len(), 1);
    assert_eq!(
        obj.status.and_then(|s| s.ownership),
        Some(OwnershipProof::CreateOperation)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_create_annotation_with_the_pending_token_lets_the_operator_create_again() {
    let env = Env::start("retryc", |b| {
        Model {
            duplicates: DuplicateNames::Allow,
            custom_id: CustomAudienceIdModel::Ignore,
            visibility: LookupVisibility::Immediate,
        }
        .apply(b)
        .faults(Faults {
            lost_answers: LostAnswers {
                create: lose_next(LostMode::Drop),
                ..Default::default()
            },
            ..Faults::default()
        })
    })
    .await;
    assert!(env.apply_yaml(&env.seed_yaml()).0);
    let obj = env
        .wait_obj("loyalty-members", "Stalled", TIMEOUT, |o| {
            condition_is(o, "Stalled", "True")
        })
        .await;
    let token = obj
        .status
        .as_ref()
        .and_then(|s| s.create_pending_since.as_ref())
        .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .expect("pending create");
    // A wrong token changes nothing.
    let api = env.api();
    let annotate = |v: &str| Patch::Merge(json!({"metadata": {"annotations": {RETRY_CREATE: v}}}));
    api.patch(
        "loyalty-members",
        &PatchParams::default(),
        &annotate("2020-01-01T00:00:00Z"),
    )
    .await
    .expect("annotate");
    let sent = env.emulator.stats().received("create_audience");
    support::wait_for("a pass over the annotation", TIMEOUT, || async {
        let o = env.get("loyalty-members").await;
        (condition_reason(&o, "Stalled") == "CreateOutcomeUnknown").then_some(())
    })
    .await;
    assert_eq!(env.emulator.stats().received("create_audience"), sent);
    // The human decided the audience found is not this object's: create anyway.
    api.patch("loyalty-members", &PatchParams::default(), &annotate(&token))
        .await
        .expect("annotate");
    let obj = env.wait_ready("loyalty-members", TIMEOUT).await;
    assert_eq!(env.emulator.stats().received("create_audience"), 2);
    assert_eq!(audiences_named(&env, "Loyalty members").len(), 2);
    assert_eq!(
        obj.status.and_then(|s| s.ownership),
        Some(OwnershipProof::CreateOperation)
    );
}

// ----- lost answers of start-run, PATCH and DELETE ----------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_answers_to_start_run_patch_and_delete_cost_nothing_extra() {
    let strict = Model {
        duplicates: DuplicateNames::Allow,
        custom_id: CustomAudienceIdModel::Ignore,
        visibility: LookupVisibility::AfterOperation,
    };
    futures::future::join_all(MODES.iter().enumerate().map(|(i, mode)| lost_others(i, strict, *mode))).await;
}

async fn lost_others(i: usize, model: Model, mode: LostMode) {
    let lost = LostAnswers {
        start_run: lose_next(mode),
        ..Default::default()
    };
    let env = lossy_env(&format!("losto{i}"), model, (200, 500), lost).await;
    assert!(env.apply_yaml(&env.seed_yaml()).0);
    env.wait_obj(
        "loyalty-members",
        "Ready with its run",
        TIMEOUT,
        is_ready_with_current_run,
    )
    .await;
    let stats = env.emulator.stats();
    assert_eq!(stats.lost_answers, 1, "{mode:?}: {stats:?}");
    assert_eq!(stats.received("start_run"), 1, "{mode:?}: run requests sent");
    assert_eq!(stats.runs_started, 1, "{mode:?}: runs started");

    // PATCH: replace semantics, so a lost answer is simply retried.
    env.emulator.update_faults(|f| f.lost_answers.patch = lose_next(mode));
    env.merge_spec("loyalty-members", json!({"description": "after a lost PATCH answer"}))
        .await;
    env.wait_obj(
        "loyalty-members",
        "Ready at generation 2",
        TIMEOUT,
        is_ready_with_current_run,
    )
    .await;
    let stats = env.emulator.stats();
    assert_eq!(stats.lost_answers, 2, "{mode:?}");
    assert_eq!(stats.runs_started, 2, "{mode:?}: one run for the change");
    assert_eq!(stats.received("start_run"), 2, "{mode:?}");
    let aud = audiences_named(&env, "Loyalty members").pop().expect("audience");
    assert_eq!(aud.description.as_deref(), Some("after a lost PATCH answer"));

    // DELETE: retried until AEP says it is gone; the finalizer never hangs.
    env.emulator.update_faults(|f| f.lost_answers.delete = lose_next(mode));
    env.api()
        .delete("loyalty-members", &DeleteParams::default())
        .await
        .expect("delete");
    wait_gone(&env.api(), "loyalty-members", TIMEOUT).await;
    assert_eq!(env.emulator.stats().lost_answers, 3, "{mode:?}");
    assert!(
        audiences_named(&env, "Loyalty members").is_empty(),
        "{mode:?}: deleted in AEP"
    );
}

// ----- deletion never hangs and never deletes what isn't ours -----------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_while_the_create_is_in_flight_waits_and_deletes_the_audience_it_yields() {
    let env = Env::start("delflight", |b| b.operation_timing(Duration::from_secs(3), 0)).await;
    assert!(env.apply_yaml(&env.seed_yaml()).0);
    env.wait_obj("loyalty-members", "waiting for its operation", TIMEOUT, |o| {
        o.status
            .as_ref()
            .is_some_and(|s| s.operation_id.is_some() && s.audience_id.is_none())
    })
    .await;
    env.api()
        .delete("loyalty-members", &DeleteParams::default())
        .await
        .expect("delete");
    wait_gone(&env.api(), "loyalty-members", TIMEOUT).await;
    let stats = env.emulator.stats();
    assert_eq!(stats.creates, 1);
    assert_eq!(stats.deletes, 1, "the audience the operation yielded was deleted");
    assert!(audiences_named(&env, "Loyalty members").is_empty());
}

/// Stops the operator, applies the seed with the finalizer already on, and writes `status` to it
/// as the admin: a state the operator then finds at start.
async fn object_with_status(env: &mut Env, status: serde_json::Value) -> ExternalAudience {
    env.stop_operator(false);
    assert!(env.apply_yaml(&env.seed_yaml()).0);
    let api = env.api();
    api.patch(
        "loyalty-members",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": [audience_operator::api::FINALIZER]}})),
    )
    .await
    .expect("finalizer");
    api.patch_status(
        "loyalty-members",
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .expect("status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_aep_no_longer_knows_leads_to_the_proof_lookup_then_to_a_create() {
    let mut env = Env::start("oplost", |b| b.zero_latency()).await;
    object_with_status(&mut env, json!({"operationId": "00000000-0000-0000-0000-000000000000"})).await;
    env.start_operator();
    let obj = env.wait_ready("loyalty-members", TIMEOUT).await;
    let st = obj.status.expect("status");
    assert_eq!(
        st.lost_operation_id.as_deref(),
        Some("00000000-0000-0000-0000-000000000000")
    );
    assert_eq!(env.emulator.stats().received("create_audience"), 1);
    assert_eq!(audiences_named(&env, "Loyalty members").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_with_an_unknown_operation_deletes_only_what_carries_the_objects_marker() {
    // Another object's audience with the same name, and an audience carrying this object's
    // customAudienceId: only the latter is deleted, and the finalizer is released.
    let mut env = Env::start("delproof", |b| {
        b.zero_latency()
            .configure(|s| s.duplicate_names = DuplicateNames::Allow)
    })
    .await;
    let obj = object_with_status(&mut env, json!({"operationId": "00000000-0000-0000-0000-000000000000"})).await;
    let seed: ExternalAudience = serde_yaml_ng::from_str(&env.seed_yaml()).expect("seed");
    let session = AepClient::new(env.emulator.client_config())
        .expect("client")
        .session(&env.emulator.credentials(), "prod");
    let foreign = audience_operator::controller::audience::spec::create_request(
        &seed.spec,
        "Loyalty members",
        Some("someone-else"),
    )
    .expect("the seed has a sourceSpec");
    let ours = audience_operator::controller::audience::spec::create_request(
        &seed.spec,
        "Loyalty members",
        Some(&custom_audience_id(&uid(&obj))),
    )
    .expect("the seed has a sourceSpec");
    session.create_audience(&foreign).await.expect("foreign create");
    session.create_audience(&ours).await.expect("our create");
    let before = audiences_named(&env, "Loyalty members");
    assert_eq!(before.len(), 2);
    env.api()
        .delete("loyalty-members", &DeleteParams::default())
        .await
        .expect("delete");
    env.start_operator();
    wait_gone(&env.api(), "loyalty-members", TIMEOUT).await;
    let after = audiences_named(&env, "Loyalty members");
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].custom_audience_id.as_deref(), Some("someone-else"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_error_on_delete_is_retrying_not_stalled() {
    let env = Env::start("del503", |b| b.zero_latency()).await;
    assert!(env.apply_yaml(&env.seed_yaml()).0);
    env.wait_ready("loyalty-members", TIMEOUT).await;
    env.emulator.update_faults(|f| {
        f.unavailable_probability = 1.0;
        f.retry_after_secs = 0;
    });
    env.api()
        .delete("loyalty-members", &DeleteParams::default())
        .await
        .expect("delete");
    let obj = env
        .wait_obj("loyalty-members", "Retrying the deletion", TIMEOUT, |o| {
            o.metadata.deletion_timestamp.is_some() && condition_reason(o, "Reconciling") == "Retrying"
        })
        .await;
    assert!(!condition_is(&obj, "Stalled", "True"), "transient is not Stalled");
    env.emulator.update_faults(|f| f.unavailable_probability = 0.0);
    wait_gone(&env.api(), "loyalty-members", TIMEOUT).await;
    assert!(audiences_named(&env, "Loyalty members").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_reporting_success_without_an_id_stalls_instead_of_waiting_for_ever() {
    let env = Env::start("noid", |b| {
        b.zero_latency().faults(Faults {
            omit_audience_id_next: 1,
            ..Faults::default()
        })
    })
    .await;
    assert!(env.apply_yaml(&env.seed_yaml()).0);
    let obj = env
        .wait_obj("loyalty-members", "Stalled", TIMEOUT, |o| {
            condition_is(o, "Stalled", "True")
        })
        .await;
    let msg = condition_message(&obj, "Stalled");
    assert!(
        msg.starts_with("UnexpectedAEPResponse") && msg.contains("spec.audienceId"),
        "{msg}"
    );
    // No hot loop: the operation is not polled again while nothing changes.
    let polls = env.emulator.stats().received("get_operation");
    let reads = env.emulator.stats().received("list_audiences");
    env.merge_spec("loyalty-members", json!({"description": "a change wakes it up"}))
        .await;
    support::wait_for("a poll after the change", TIMEOUT, || async {
        (env.emulator.stats().received("get_operation") > polls).then_some(())
    })
    .await;
    assert_eq!(
        env.emulator.stats().received("list_audiences"),
        reads,
        "no lookup, no second create"
    );
    assert_eq!(env.emulator.stats().received("create_audience"), 1);
}

// ----- spec.audienceId rules --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_audience_id_cannot_point_elsewhere_once_an_audience_or_create_exists() {
    let env = Env::start("specid", |b| b.operation_timing(Duration::from_secs(2), 0)).await;
    assert!(env.apply_yaml(&env.seed_yaml()).0);
    env.wait_obj("loyalty-members", "creating", TIMEOUT, |o| {
        o.status.as_ref().is_some_and(|s| s.operation_id.is_some())
    })
    .await;
    let with_id = |id: &str| {
        env.seed_yaml().replace(
            "  deletionPolicy: Delete",
            &format!("  deletionPolicy: Delete\n  audienceId: {id}"),
        )
    };
    let (ok, out) = env.apply_yaml(&with_id("somebody-elses"));
    assert!(
        !ok && out.contains("spec.audienceId can be added"),
        "refused while a create is in flight: {out}"
    );
    let obj = env.wait_ready("loyalty-members", TIMEOUT).await;
    let id = audience_id(&obj).expect("audience id");
    let (ok, out) = env.apply_yaml(&with_id("somebody-elses"));
    assert!(
        !ok && out.contains("spec.audienceId can be added"),
        "refused once it manages one: {out}"
    );
    let (ok, out) = env.apply_yaml(&with_id(&id));
    assert!(ok, "naming the audience it manages is allowed: {out}");
    let obj = env.wait_ready("loyalty-members", TIMEOUT).await;
    assert_eq!(audience_id(&obj), Some(id));
    assert_eq!(env.emulator.stats().creates, 1);
}

// ----- upgrades never cost runs -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_object_from_the_previous_release_starts_no_run_after_the_upgrade() {
    // Drift checks every 2 s: the upgraded operator schedules its first check of the object
    // within one interval (spread per object) and makes it then.
    let mut env = Env::start_with(
        "upgrade",
        |b| b.zero_latency(),
        vec!["--resync-interval=2s".into()],
        true,
    )
    .await;
    env.stop_operator(false);
    let fixture: serde_json::Value =
        serde_yaml_ng::from_str(include_str!("fixtures/status-78473e7.yaml")).expect("fixture");
    let spec: ExternalAudience = serde_json::from_value(fixture.clone()).expect("fixture object");
    // The audience and its run exist in AEP, made the way that release made them.
    let session = AepClient::new(env.emulator.client_config())
        .expect("client")
        .session(&env.emulator.credentials(), "prod");
    let req = audience_operator::controller::audience::spec::create_request(&spec.spec, "Loyalty members", None)
        .expect("the seed has a sourceSpec");
    let op = session.create_audience(&req).await.expect("create");
    let aud = support::wait_for("the audience", TIMEOUT, || async {
        session
            .get_operation(&op.operation_id)
            .await
            .ok()
            .and_then(|o| o.audience_id)
    })
    .await;
    let run = session
        .start_run(
            &aud,
            &audience_operator::controller::audience::spec::start_run_request(&spec.spec)
                .expect("the seed has ingestion"),
        )
        .await
        .expect("run");
    // The object at generation 2, as in the fixture, with its status swapped onto these ids.
    let v1 = env.seed_yaml();
    assert!(env.apply_yaml(&v1).0);
    env.merge_spec("loyalty-members", fixture["spec"].clone()).await;
    let obj = env.get("loyalty-members").await;
    assert_eq!(obj.metadata.generation, Some(2));
    let mut status = fixture["status"].clone();
    status["audienceId"] = json!(aud);
    status["operationId"] = json!(op.operation_id);
    status["lastRun"]["runId"] = json!(run.run_id);
    env.api()
        .patch(
            "loyalty-members",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": [audience_operator::api::FINALIZER]}})),
        )
        .await
        .expect("finalizer");
    env.api()
        .patch_status(
            "loyalty-members",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .expect("status");
    let before = env.emulator.stats();
    env.start_operator();
    // The new operator reads the audience once (its first drift check) and then has nothing to do.
    support::wait_for("the new operator's first drift check", TIMEOUT, || async {
        let reads = |s: &aep_emulator::Stats| s.received("get_audience") + s.received("list_audiences");
        (reads(&env.emulator.stats()) > reads(&before)).then_some(())
    })
    .await;
    let obj = env.wait_ready("loyalty-members", TIMEOUT).await;
    let after = env.emulator.stats();
    assert_eq!(
        after.received("start_run"),
        before.received("start_run"),
        "0 runs after the upgrade"
    );
    assert_eq!(after.received("create_audience"), before.received("create_audience"));
    assert_eq!(after.received("patch_audience"), before.received("patch_audience"));
    assert_eq!(audience_id(&obj).as_deref(), Some(aud.as_str()));
}

// ----- crashes ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_markers_and_ids_never_duplicates_a_create_or_a_run() {
    const OBJECTS: usize = 10;
    const KILLS: usize = 30;
    // Strictest model with proof: duplicate names allowed, audiences visible only after their
    // operation. Answers are held back after the work, so kills land between a marker and the
    // recorded id.
    let mut env = Env::start("crash", |b| {
        Model {
            duplicates: DuplicateNames::Allow,
            custom_id: CustomAudienceIdModel::Unique,
            visibility: LookupVisibility::AfterOperation,
        }
        .apply(b)
        .operation_timing(Duration::from_millis(400), 0)
        .run_timing(Duration::from_millis(800), 0)
        .faults(Faults {
            answer_delay_ms: 300,
            ..Faults::default()
        })
    })
    .await;
    let yaml: String = (0..OBJECTS)
        .map(|i| env.seed_named(&format!("crash-{i}"), &format!("Crash audience {i}")))
        .collect::<Vec<_>>()
        .join("\n---\n");
    assert!(env.apply_yaml(&yaml).0);
    let mut rng_state: u64 = 0x9e3779b97f4a7c15;
    let mut landed = 0;
    // Distinct markers (object, marker time) that a kill interrupted.
    let mut interrupted = std::collections::BTreeSet::new();
    for _ in 0..KILLS {
        // A pseudo-random moment in the first 50..1200 ms of each operator life.
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        tokio::time::sleep(Duration::from_millis(50 + rng_state % 1150)).await;
        if env.stop_operator(true) {
            landed += 1;
        }
        // What the kill interrupted: markers written whose id was never recorded.
        for obj in env.api().list(&Default::default()).await.expect("list") {
            let name = obj.metadata.name.clone().unwrap_or_default();
            let st = obj.status.unwrap_or_default();
            if let Some(t) = st.create_pending_since.as_ref().filter(|_| st.operation_id.is_none()) {
                interrupted.insert((name.clone(), "create", t.0));
            }
            if let Some(p) = &st.run_pending {
                interrupted.insert((name, "run", p.since.0));
            }
        }
        env.start_operator();
    }
    for i in 0..OBJECTS {
        env.wait_ready(&format!("crash-{i}"), Duration::from_secs(120)).await;
    }
    let stats = env.emulator.stats();
    let state = env.emulator.state();
    assert_eq!(state.audiences.len(), OBJECTS, "audiences created == objects");
    assert_eq!(
        stats.received("create_audience") as usize,
        OBJECTS,
        "create requests sent == objects"
    );
    assert_eq!(stats.creates as usize, OBJECTS);
    for a in &state.audiences {
        assert_eq!(
            a.runs.len(),
            1,
            "{}: one run for its one generation: {:?}",
            a.name,
            a.runs
        );
    }
    assert_eq!(
        stats.received("start_run") as usize,
        OBJECTS,
        "run requests sent == runs started"
    );
    assert_eq!(stats.runs_started as usize, OBJECTS);
    assert!(landed > 0, "kills landed");
    let creates = interrupted.iter().filter(|(_, kind, _)| *kind == "create").count();
    let runs = interrupted.len() - creates;
    assert!(
        creates > 0 && runs > 0,
        "kills landed between markers and their recorded ids: {interrupted:?}"
    );
    eprintln!(
        "crash: {landed}/{KILLS} SIGKILLs landed; interrupted between marker and id: {creates} creates, {runs} run starts; {} creates sent, {} audiences; {} run starts sent, {} runs",
        stats.received("create_audience"),
        state.audiences.len(),
        stats.received("start_run"),
        stats.runs_started
    );
}
