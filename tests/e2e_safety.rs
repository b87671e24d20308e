//! End to end lifecycle safety (issue: exactly-once create, deletion policy, adoption, drift,
//! credential rotation) on the real control plane + emulator + operator process.

mod support;

use std::time::Duration;

use aep_emulator::{
    AudienceMutation, CredentialSpec,
    config::{DuplicateNames, Faults},
};
use audience_operator::{aep::AepClient, api::RunState};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;
use support::operator::{Env, condition_is, condition_message, is_ready, is_ready_with_current_run};

const TIMEOUT: Duration = Duration::from_secs(90);

fn audiences_named(env: &Env, name: &str) -> usize {
    env.emulator.state().audiences_named("prod", name).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_owned_by_nobody_stalls_with_a_hint_and_spec_audience_id_adopts_it() {
    let env = Env::start("adopt", |b| b.zero_latency()).await;
    // An audience created outside the operator.
    let session = AepClient::new(env.emulator.client_config())
        .expect("client")
        .session(&env.emulator.credentials(), "prod");
    // Same definition as the seed example, but another description (the adoption PATCHes it).
    let seed: audience_operator::api::ExternalAudience = serde_yaml_ng::from_str(&env.seed_yaml()).expect("seed yaml");
    let mut req = audience_operator::controller::audience::spec::create_request(&seed.spec, "Loyalty members", None)
        .expect("the seed has a sourceSpec");
    req.description = Some("made by hand".into());
    let op = session.create_audience(&req).await.expect("create");
    let id = support::wait_for("the outside audience", TIMEOUT, || async {
        session
            .get_operation(&op.operation_id)
            .await
            .ok()
            .and_then(|o| o.audience_id)
    })
    .await;
    let creates_before = env.emulator.stats().create_requests;

    assert!(env.apply_yaml(&env.seed_yaml()).0);
    let obj = env
        .wait_obj("loyalty-members", "Stalled on the name", TIMEOUT, |o| {
            condition_is(o, "Stalled", "True")
        })
        .await;
    let msg = condition_message(&obj, "Stalled");
    assert!(
        msg.starts_with("AudienceNameTaken") && msg.contains(&format!("spec.audienceId: {id}")),
        "{msg}"
    );

    env.merge_spec("loyalty-members", json!({"audienceId": id})).await;
    let obj = env.wait_ready("loyalty-members", TIMEOUT).await;
    let st = obj.status.expect("status");
    assert_eq!(st.audience_id.as_deref(), Some(id.as_str()));
    assert!(st.adopted);
    assert_eq!(
        st.ownership,
        Some(audience_operator::api::OwnershipProof::SpecAudienceId)
    );
    assert!(st.last_run.is_none(), "adoption starts no run");
    let stats = env.emulator.stats();
    assert_eq!(stats.create_requests, creates_before, "zero creates");
    assert_eq!(stats.runs_started, 0);
    assert_eq!(audiences_named(&env, "Loyalty members"), 1);
    // The adopted audience now matches the spec.
    let aud = env.emulator.state().audience(&id).cloned().expect("audience");
    assert_eq!(
        aud.description.as_deref(),
        Some("Members exported nightly from the CRM")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_policy_deletes_orphan_keeps_and_refusal_holds_the_finalizer() {
    let env = Env::start("delete", |b| b.zero_latency()).await;
    let seed = env.seed_yaml();
    let orphan = seed
        .replace("name: loyalty-members", "name: orphan")
        .replace("name: Loyalty members", "name: Orphaned members")
        .replace("deletionPolicy: Delete", "deletionPolicy: Orphan");
    let refused = seed
        .replace("name: loyalty-members", "name: refused")
        .replace("name: Loyalty members", "name: Refused members");
    for y in [&seed, &orphan, &refused] {
        assert!(env.apply_yaml(y).0);
    }
    for n in ["loyalty-members", "orphan", "refused"] {
        env.wait_ready(n, TIMEOUT).await;
    }
    let api = env.api();

    api.delete("loyalty-members", &DeleteParams::default())
        .await
        .expect("delete");
    support::wait_for("loyalty-members gone", TIMEOUT, || async {
        api.get_opt("loyalty-members")
            .await
            .ok()
            .flatten()
            .is_none()
            .then_some(())
    })
    .await;
    assert_eq!(audiences_named(&env, "Loyalty members"), 0, "deleted in AEP");

    api.delete("orphan", &DeleteParams::default()).await.expect("delete");
    support::wait_for("orphan gone", TIMEOUT, || async {
        api.get_opt("orphan").await.ok().flatten().is_none().then_some(())
    })
    .await;
    assert_eq!(audiences_named(&env, "Orphaned members"), 1, "left in AEP");

    env.emulator.update_faults(|f| f.refuse_delete_in_use = true);
    api.delete("refused", &DeleteParams::default()).await.expect("delete");
    let obj = env
        .wait_obj("refused", "reporting the refusal", TIMEOUT, |o| {
            o.metadata.deletion_timestamp.is_some() && condition_message(o, "Stalled").starts_with("DeleteRefused")
        })
        .await;
    assert!(
        obj.metadata
            .finalizers
            .unwrap_or_default()
            .iter()
            .any(|f| f == audience_operator::api::FINALIZER)
    );
    assert_eq!(audiences_named(&env, "Refused members"), 1);
    env.emulator.update_faults(|f| f.refuse_delete_in_use = false);
    support::wait_for("refused gone once the refusal is lifted", TIMEOUT, || async {
        api.get_opt("refused").await.ok().flatten().is_none().then_some(())
    })
    .await;
    assert_eq!(audiences_named(&env, "Refused members"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_corrected_and_a_deleted_audience_is_recreated() {
    let env = Env::start_with("drift", |b| b.zero_latency(), vec!["--resync-interval=2s".into()], true).await;
    assert!(env.apply_yaml(&env.seed_yaml()).0);
    let obj = env.wait_ready("loyalty-members", TIMEOUT).await;
    let id = obj.status.and_then(|s| s.audience_id).expect("audience id");

    let admin = env.emulator.admin();
    admin
        .mutate_audience(
            &id,
            &AudienceMutation {
                description: Some("edited in the UI".into()),
                ..Default::default()
            },
        )
        .await
        .expect("mutate");
    support::wait_for("the description to be corrected", TIMEOUT, || async {
        let state = env.emulator.state();
        (state.audience(&id)?.description.as_deref() == Some("Members exported nightly from the CRM")).then_some(())
    })
    .await;

    admin.delete_audience(&id).await.expect("delete behind our back");
    let obj = env
        .wait_obj("loyalty-members", "Ready with a new audience", TIMEOUT, |o| {
            is_ready(o)
                && o.status
                    .as_ref()
                    .and_then(|s| s.audience_id.as_deref())
                    .is_some_and(|a| a != id)
        })
        .await;
    assert!(obj.status.expect("status").lost_audience_ids.contains(&id));
    assert_eq!(audiences_named(&env, "Loyalty members"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_full_of_other_audiences_is_not_paged_through_for_one_object() {
    let env = Env::start_with(
        "drift-big",
        |b| b.zero_latency(),
        vec!["--resync-interval=2s".into()],
        true,
    )
    .await;
    // 120 audiences this operator does not manage: the sandbox's list takes 2 pages of 100.
    let session = AepClient::new(env.emulator.client_config())
        .expect("client")
        .session(&env.emulator.credentials(), "prod");
    let seed: audience_operator::api::ExternalAudience = serde_yaml_ng::from_str(&env.seed_yaml()).expect("seed yaml");
    let mut operations = Vec::new();
    for i in 0..120 {
        let req =
            audience_operator::controller::audience::spec::create_request(&seed.spec, &format!("Other {i:03}"), None)
                .expect("the seed has a sourceSpec");
        operations.push(session.create_audience(&req).await.expect("create").operation_id);
    }
    for op in &operations {
        support::wait_for("the other audiences", TIMEOUT, || async {
            session.get_operation(op).await.ok().and_then(|o| o.audience_id)
        })
        .await;
    }
    assert!(env.apply_yaml(&env.seed_yaml()).0);
    env.wait_ready("loyalty-members", TIMEOUT).await;
    let before = env.emulator.stats();
    // Several drift checks of the one object (2 s interval).
    support::wait_for("three drift checks", TIMEOUT, || async {
        (env.emulator.stats().received("get_audience") >= before.received("get_audience") + 3).then_some(())
    })
    .await;
    let after = env.emulator.stats();
    let lists = after.received("list_audiences") - before.received("list_audiences");
    let reads = after.received("get_audience") - before.received("get_audience");
    // One audience costs one read per check; the list, longer than that, is abandoned after
    // its first page (paging through it would cost 2 pages per check and no read).
    assert!(lists <= reads + 1, "{lists} list pages for {reads} drift reads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_audience_is_reported_stalled_under_the_stall_policy() {
    let env = Env::start_with(
        "drift-stall",
        |b| b.zero_latency(),
        vec!["--resync-interval=2s".into(), "--missing-audience-policy=stall".into()],
        true,
    )
    .await;
    assert!(env.apply_yaml(&env.seed_yaml()).0);
    let obj = env.wait_ready("loyalty-members", TIMEOUT).await;
    let id = obj.status.and_then(|s| s.audience_id).expect("audience id");
    env.emulator
        .admin()
        .delete_audience(&id)
        .await
        .expect("delete behind our back");
    let obj = env
        .wait_obj("loyalty-members", "Stalled", TIMEOUT, |o| {
            condition_is(o, "Stalled", "True")
        })
        .await;
    assert!(condition_message(&obj, "Stalled").starts_with("AudienceNotFound"));
    assert_eq!(env.emulator.stats().creates, 1, "not recreated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_secret_is_used_on_the_next_call_without_restart() {
    let env = Env::start("rotate", |b| b.zero_latency()).await;
    assert!(env.apply_yaml(&env.seed_yaml()).0);
    env.wait_ready("loyalty-members", TIMEOUT).await;
    let old = env.emulator.credentials();
    let new = CredentialSpec {
        client_id: "rotated-client".into(),
        client_secret: "rotated-secret".into(),
        org_id: old.org_id.clone(),
        ..CredentialSpec::default()
    };
    let admin = env.emulator.admin();
    admin.add_credentials(&new).await.expect("add credentials");
    let secrets = kube::Api::<Secret>::namespaced(env.client.clone(), &env.ns);
    secrets
        .patch(
            "aep-credentials",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"clientId": new.client_id, "clientSecret": new.client_secret}})),
        )
        .await
        .expect("rotate secret");
    admin.revoke_credentials(&old.client_id).await.expect("revoke old");
    admin.revoke_tokens().await.expect("revoke tokens");
    let before = env.emulator.stats().patches;
    env.merge_spec("loyalty-members", json!({"description": "after rotation"}))
        .await;
    let obj = env
        .wait_obj(
            "loyalty-members",
            "Ready after rotation",
            TIMEOUT,
            is_ready_with_current_run,
        )
        .await;
    assert_eq!(
        obj.status.and_then(|s| s.last_run).map(|r| r.status),
        Some(RunState::Success)
    );
    assert_eq!(env.emulator.stats().patches, before + 1);
}

fn many(seed: &str, prefix: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            seed.replace("name: loyalty-members", &format!("name: {prefix}-{i}"))
                .replace("name: Loyalty members", &format!("name: {prefix} audience {i}"))
        })
        .collect::<Vec<_>>()
        .join("\n---\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_objects_under_injected_faults_converge_without_duplicates_within_the_rate_limit() {
    const N: usize = 100;
    const RPS: u64 = 25;
    let env = Env::start_with(
        "faults",
        |b| {
            // Duplicate names allowed: AEP would not stop a second create, so "no duplicate"
            // below is the operator's doing.
            b.zero_latency()
                .configure(|s| s.duplicate_names = DuplicateNames::Allow)
                .faults(Faults {
                    rate_limit_probability: 0.1,
                    server_error_probability: 0.1,
                    retry_after_secs: 1,
                    ..Faults::default()
                })
        },
        vec![format!("--aep-requests-per-second={RPS}"), "--concurrency=16".into()],
        true,
    )
    .await;
    let (ok, out) = env.apply_yaml(&many(&env.seed_yaml(), "bulk", N));
    assert!(ok, "{out}");
    for i in 0..N {
        env.wait_ready(&format!("bulk-{i}"), Duration::from_secs(300)).await;
    }
    let stats = env.emulator.stats();
    assert!(stats.injected_errors > 0, "faults were injected: {stats:?}");
    assert_eq!(stats.creates, N as u64, "creates accepted == objects: {stats:?}");
    assert_eq!(stats.runs_started, N as u64, "runs started == objects: {stats:?}");
    let state = env.emulator.state();
    assert_eq!(state.audiences.len(), N, "audiences created == objects");
    for i in 0..N {
        let name = format!("bulk audience {i}");
        let auds: Vec<_> = state.audiences_named("prod", &name).collect();
        assert_eq!(auds.len(), 1, "{name}: {auds:?}");
        assert_eq!(auds[0].runs.len(), 1, "{name}: {:?}", auds[0].runs);
    }
    // Never over the limit in any one-second window of arrivals (the client leaves room for
    // 100 ms of jitter), and the limiter was really pressed: 100 objects' ~600 requests at 25/s
    // keep it busy for half a minute, so the busiest second is near the limit.
    assert!(
        stats.max_aep_requests_per_second <= RPS,
        "the client-side limit held: busiest second had {} requests (limit {RPS})",
        stats.max_aep_requests_per_second
    );
    assert!(
        stats.max_aep_requests_per_second >= RPS * 8 / 10,
        "the limiter was pressed: busiest second had {} requests (limit {RPS})",
        stats.max_aep_requests_per_second
    );
    eprintln!(
        "{N} objects Ready; {} injected faults; {} AEP requests; busiest second {} (limit {RPS})",
        stats.injected_errors,
        stats
            .requests
            .iter()
            .filter(|(k, _)| k.contains("/data/core"))
            .flat_map(|(_, m)| m.values())
            .sum::<u64>(),
        stats.max_aep_requests_per_second
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_namespace_full_of_objects_completes_and_cleans_up_aep() {
    const N: usize = 5;
    let env = Env::start("nsdelete", |b| b.zero_latency()).await;
    assert!(env.apply_yaml(&many(&env.seed_yaml(), "member", N)).0);
    for i in 0..N {
        env.wait_ready(&format!("member-{i}"), TIMEOUT).await;
    }
    let namespaces = kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(env.client.clone());
    namespaces
        .delete(&env.ns, &DeleteParams::default())
        .await
        .expect("delete namespace");
    support::wait_for("the namespace to be gone", Duration::from_secs(120), || async {
        namespaces.get_opt(&env.ns).await.ok().flatten().is_none().then_some(())
    })
    .await;
    let state = env.emulator.state();
    for i in 0..N {
        assert_eq!(
            state.audiences_named("prod", &format!("member audience {i}")).count(),
            0,
            "deleted in AEP"
        );
    }
}
