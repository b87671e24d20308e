//! The decider as tables: for each fact that decides, the step and the health.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::*;
use crate::{
    api::{DataExpiration, ExpirationSpec, IngestionRun, ManagementPolicy, RunCounts, RunPending, reasons},
    controller::audience::spec::{ingest_hash, updatable_hash},
};

fn spec() -> ExternalAudienceSpec {
    serde_json::from_value(serde_json::json!({
        "credentialsSecretRef": {"name": "aep"},
        "sandbox": "prod",
        "description": "d",
        "fields": [{"name": "ppid", "type": "string", "identityNs": "email"},
                   {"name": "list_id", "type": "string", "labels": ["core/C2"]}],
        "sourceSpec": {"path": "a/b.csv", "type": "file"},
        "ingestion": {"dataFilterStartTime": 764245635}
    }))
    .expect("spec")
}

fn t(s: &str) -> Timestamp {
    s.parse().expect("time")
}

/// The tables' clock.
fn now() -> Time {
    Time(t("2026-01-01T00:00:00Z"))
}

fn converged(spec: &ExternalAudienceSpec) -> ExternalAudienceStatus {
    ExternalAudienceStatus {
        audience_id: Some("aud".into()),
        operation_id: Some("op".into()),
        ownership: Some(OwnershipProof::CreateOperation),
        applied_spec_hash: Some(updatable_hash(spec)),
        ingested_spec_hash: Some(ingest_hash(spec, "loyalty")),
        last_run: Some(IngestionRun {
            run_id: "r1".into(),
            generation: 1,
            status: RunState::Success,
            start_time: None,
            end_time: None,
            message: None,
        }),
        ..Default::default()
    }
}

fn blocked(reason: &str, generation: i64) -> Option<Box<Blocked>> {
    Some(Box::new(Blocked {
        reason: reason.into(),
        generation,
        message: "m".into(),
    }))
}

fn legacy_stalled(reason: &str, generation: i64) -> Condition {
    Condition {
        type_: "Stalled".into(),
        status: "True".into(),
        reason: reason.into(),
        message: String::new(),
        observed_generation: Some(generation),
        last_transition_time: now(),
    }
}

/// Everything a table row can set; [`World::facts`] lends it to the decider.
struct World {
    spec: ExternalAudienceSpec,
    status: ExternalAudienceStatus,
    now: Timestamp,
    created: Option<Timestamp>,
    deleting: bool,
    paused: bool,
    run_request: Option<&'static str>,
    retry_create: Option<String>,
    resync: Result<Duration, String>,
    schedule: Result<Option<Schedule>, String>,
    credentials: Credentials<'static>,
    claimed_by: Option<Claim>,
    record: Option<Result<OwnershipRecord, String>>,
    budget: Option<Grant>,
    cache_holds_claim: bool,
    namespace_terminating: bool,
    activations: Vec<String>,
    last_drift_check: Option<Timestamp>,
    timing: Timing,
    settings: Settings,
}

const ENDPOINT: Endpoint<'static> = Endpoint {
    org_id: "ORG",
    platform_url: "https://platform.adobe.io/",
};

impl World {
    fn new(spec: ExternalAudienceSpec, status: ExternalAudienceStatus) -> Self {
        World {
            spec,
            status,
            now: now().0,
            created: Some(t("2025-12-31T00:00:00Z")),
            deleting: false,
            paused: false,
            run_request: None,
            retry_create: None,
            // Drift checks off unless a row turns them on.
            resync: Ok(Duration::ZERO),
            schedule: Ok(None),
            credentials: Credentials::Ready(ENDPOINT),
            claimed_by: None,
            record: None,
            budget: None,
            cache_holds_claim: true,
            namespace_terminating: false,
            activations: Vec::new(),
            last_drift_check: None,
            timing: Timing::default(),
            settings: Settings::default(),
        }
    }

    fn facts(&self) -> Facts<'_> {
        Facts {
            now: self.now,
            wall: self.now,
            name: "loyalty",
            generation: 1,
            created: self.created,
            uid: Some("u-1"),
            spec: &self.spec,
            status: &self.status,
            deleting: self.deleting,
            paused: self.paused,
            run_request: self.run_request,
            retry_create: self.retry_create.as_deref(),
            resync: self.resync.clone(),
            schedule: &self.schedule,
            credentials: self.credentials,
            claimed_by: self.claimed_by.as_ref(),
            record: self.record.as_ref(),
            budget: self.budget.as_ref(),
            cache_holds_claim: self.cache_holds_claim,
            namespace_terminating: self.namespace_terminating,
            activations: &self.activations,
            last_drift_check: self.last_drift_check,
            started: t("2025-12-31T00:00:00Z"),
            timing: &self.timing,
            settings: &self.settings,
        }
    }

    fn decide(&self) -> Decision {
        decide(&self.facts())
    }
}

fn step_for(
    spec: &ExternalAudienceSpec,
    status: &ExternalAudienceStatus,
    run_request: Option<&'static str>,
) -> Decision {
    let mut w = World::new(spec.clone(), status.clone());
    w.run_request = run_request;
    w.decide()
}

#[test]
fn next_step_table() {
    let base = spec();
    let mut changed = base.clone();
    changed.description = Some("new".into());
    let mut adopt = base.clone();
    adopt.audience_id = Some("existing".into());

    let running = |s: &ExternalAudienceSpec| {
        let mut st = converged(s);
        if let Some(r) = st.last_run.as_mut() {
            r.status = RunState::Processing;
        }
        st
    };
    let idle = Step::Idle {
        next: None,
        event: None,
    };
    let cases: Vec<(
        &str,
        ExternalAudienceSpec,
        ExternalAudienceStatus,
        Option<&'static str>,
        Step,
    )> = vec![
        (
            "fresh object creates",
            base.clone(),
            Default::default(),
            None,
            Step::Create,
        ),
        (
            "marker without operation id recovers by proof",
            base.clone(),
            ExternalAudienceStatus {
                create_pending_since: Some(now()),
                ..Default::default()
            },
            None,
            Step::RecoverCreate {
                resend: Resend::Not(Duration::from_secs(600)),
                confirmed: false,
                token: "2026-01-01T00:00:00Z".into(),
            },
        ),
        (
            "recorded operation is polled",
            base.clone(),
            ExternalAudienceStatus {
                operation_id: Some("op".into()),
                ..Default::default()
            },
            None,
            Step::PollOperation {
                operation_id: "op".into(),
            },
        ),
        (
            "spec.audienceId set while a create is in flight: the create is finished first",
            adopt.clone(),
            ExternalAudienceStatus {
                operation_id: Some("op".into()),
                ..Default::default()
            },
            None,
            Step::PollOperation {
                operation_id: "op".into(),
            },
        ),
        (
            "spec.audienceId adopts",
            adopt.clone(),
            Default::default(),
            None,
            Step::Adopt {
                audience_id: "existing".into(),
            },
        ),
        (
            "created audience without a run starts one",
            base.clone(),
            ExternalAudienceStatus {
                audience_id: Some("aud".into()),
                applied_spec_hash: Some(updatable_hash(&base)),
                ..Default::default()
            },
            None,
            Step::StartRun {
                audience_id: "aud".into(),
                scheduled_for: None,
            },
        ),
        ("converged is idle", base.clone(), converged(&base), None, idle.clone()),
        (
            "description change patches first",
            changed.clone(),
            converged(&base),
            None,
            Step::Update {
                audience_id: "aud".into(),
            },
        ),
        (
            "patched change owes a run",
            changed.clone(),
            ExternalAudienceStatus {
                applied_spec_hash: Some(updatable_hash(&changed)),
                ..converged(&base)
            },
            None,
            Step::StartRun {
                audience_id: "aud".into(),
                scheduled_for: None,
            },
        ),
        (
            "run in flight is polled even if another run is owed",
            changed.clone(),
            ExternalAudienceStatus {
                applied_spec_hash: Some(updatable_hash(&changed)),
                ..running(&base)
            },
            None,
            Step::PollRun {
                audience_id: "aud".into(),
                run_id: "r1".into(),
            },
        ),
        (
            "run marker without run id recovers",
            base.clone(),
            ExternalAudienceStatus {
                run_pending: Some(Box::new(RunPending {
                    since: now(),
                    generation: 1,
                    spec_hash: "h".into(),
                    run_request: None,
                    scheduled_for: None,
                })),
                ..converged(&base)
            },
            None,
            Step::RecoverRun {
                audience_id: "aud".into(),
            },
        ),
        (
            "new run request starts a run",
            base.clone(),
            converged(&base),
            Some("t1"),
            Step::StartRun {
                audience_id: "aud".into(),
                scheduled_for: None,
            },
        ),
        (
            "honoured run request is idle",
            base.clone(),
            ExternalAudienceStatus {
                ingested_run_request: Some("t1".into()),
                ..converged(&base)
            },
            Some("t1"),
            idle.clone(),
        ),
        (
            "failed run is not retried",
            base.clone(),
            ExternalAudienceStatus {
                last_run: converged(&base).last_run.map(|r| IngestionRun {
                    status: RunState::Failed,
                    ..r
                }),
                ..converged(&base)
            },
            None,
            idle.clone(),
        ),
        (
            "a problem blocked at this generation waits",
            base.clone(),
            ExternalAudienceStatus {
                blocked: blocked(reasons::REJECTED, 1),
                ..Default::default()
            },
            None,
            Step::Wait,
        ),
        (
            "a problem blocked at an older generation retries",
            base.clone(),
            ExternalAudienceStatus {
                blocked: blocked(reasons::REJECTED, 0),
                ..Default::default()
            },
            None,
            Step::Create,
        ),
        (
            "legacy Stalled condition of this generation still waits after an upgrade",
            base.clone(),
            ExternalAudienceStatus {
                conditions: vec![legacy_stalled(reasons::NAME_TAKEN, 1)],
                ..Default::default()
            },
            None,
            Step::Wait,
        ),
        (
            "setting spec.audienceId after a name clash adopts",
            adopt.clone(),
            ExternalAudienceStatus {
                blocked: blocked(reasons::NAME_TAKEN, 0),
                ..Default::default()
            },
            None,
            Step::Adopt {
                audience_id: "existing".into(),
            },
        ),
    ];
    for (name, spec, status, run_request, want) in cases {
        assert_eq!(step_for(&spec, &status, run_request).step, want, "case: {name}");
    }
}

#[test]
fn spec_audience_id_other_than_the_managed_one_blocks() {
    let mut adopt = spec();
    adopt.audience_id = Some("other".into());
    let d = step_for(&adopt, &converged(&spec()), None);
    assert!(matches!(d.step, Step::Block { .. }), "{d:?}");
    assert_eq!(d.health.reason(), reasons::AUDIENCE_ID_MISMATCH);
    assert!(d.health.is_stalled());
}

#[test]
fn retry_create_annotation_resumes_only_with_the_pending_token() {
    let status = ExternalAudienceStatus {
        create_pending_since: Some(now()),
        blocked: blocked(reasons::CREATE_OUTCOME_UNKNOWN, 1),
        ..Default::default()
    };
    let token = retry_create_token(&status).expect("token");
    let with = |annotation: Option<&str>| {
        let mut w = World::new(spec(), status.clone());
        w.retry_create = annotation.map(str::to_owned);
        w.decide().step
    };
    assert_eq!(with(None), Step::Wait);
    assert_eq!(
        with(Some("2025-01-01T00:00:00Z")),
        Step::Wait,
        "a stale token does nothing"
    );
    assert!(
        matches!(with(Some(&token)), Step::RecoverCreate { confirmed: true, .. }),
        "{:?}",
        with(Some(&token))
    );
}

#[test]
fn health_follows_the_step() {
    let base = spec();
    assert_eq!(step_for(&base, &converged(&base), None).health.reason(), reasons::READY);
    let failed = ExternalAudienceStatus {
        last_run: converged(&base).last_run.map(|r| IngestionRun {
            status: RunState::Failed,
            ..r
        }),
        ..converged(&base)
    };
    let h = step_for(&base, &failed, None).health;
    assert_eq!(h.reason(), reasons::RUN_FAILED);
    assert!(h.message().contains("AEP gave no reason"), "{h:?}");
    let waiting = ExternalAudienceStatus {
        operation_id: Some("op".into()),
        ..Default::default()
    };
    assert_eq!(
        step_for(&base, &waiting, None).health.reason(),
        reasons::WAITING_FOR_OPERATION
    );
}

#[test]
fn a_status_written_by_the_release_before_versioned_hashes_owes_nothing() {
    let obj: crate::api::ExternalAudience =
        serde_yaml_ng::from_str(include_str!("../../../tests/fixtures/status-78473e7.yaml")).expect("fixture");
    let status = obj.status.clone().expect("status");
    let mut w = World::new(obj.spec.clone(), status);
    w.status.ownership = None;
    let f = Facts {
        name: "loyalty-members",
        generation: obj.metadata.generation.unwrap_or_default(),
        ..w.facts()
    };
    let d = decide(&f);
    assert!(matches!(d.step, Step::Idle { .. }), "{d:?}");
    assert_eq!(d.health.reason(), reasons::READY);
}

#[test]
fn ownership_steps_come_before_any_aep_call_in_a_fixed_order() {
    let base = spec();
    let other_org = Endpoint {
        org_id: "OTHER",
        platform_url: "https://platform.adobe.io/",
    };
    let holder = Claim {
        audience: ("prod".into(), "aud".into()),
        org: Some("ORG".into()),
        recorded: true,
        since: None,
        created: None,
        object: ("ns".into(), "owner".into()),
    };
    let record = || {
        Ok(OwnershipRecord {
            v: 1,
            audience_id: "rec".into(),
            custom_audience_id: None,
            org_id: "ORG".into(),
            platform_url: "https://platform.adobe.io/".into(),
            sandbox: "prod".into(),
            claimed_by: "u".into(),
            claimed_at: "2026-01-01T00:00:00Z".into(),
            applied_spec_hash: None,
            ingested_spec_hash: None,
        })
    };
    let recorded = ExternalAudienceStatus {
        org_id: Some("ORG".into()),
        ..converged(&base)
    };
    let held = |d: &Decision| match &d.step {
        Step::Hold { .. } => d.health.reason(),
        other => panic!("not held: {other:?}"),
    };
    // The org first (nothing goes to either org), then another object's claim.
    let mut w = World::new(base.clone(), recorded.clone());
    w.credentials = Credentials::Ready(other_org);
    w.claimed_by = Some(holder.clone());
    let d = w.decide();
    assert_eq!(held(&d), reasons::ORGANIZATION_CHANGED);
    assert!(d.health.is_stalled());
    w.credentials = Credentials::Ready(ENDPOINT);
    assert_eq!(held(&w.decide()), reasons::AUDIENCE_CLAIMED);
    // Nothing sent yet: the org is free to change.
    let mut w = World::new(
        base.clone(),
        ExternalAudienceStatus {
            org_id: Some("ORG".into()),
            ..Default::default()
        },
    );
    w.credentials = Credentials::Ready(other_org);
    assert_eq!(w.decide().step, Step::Create);
    // A restored object re-attaches; a garbled record or one of a lost audience does not.
    let mut w = World::new(base.clone(), Default::default());
    w.record = Some(record());
    assert_eq!(
        w.decide().step,
        Step::Reattach {
            audience_id: "rec".into()
        }
    );
    w.record = Some(Err("garbled".into()));
    assert_eq!(held(&w.decide()), reasons::INVALID_OWNERSHIP_RECORD);
    w.record = Some(record());
    w.status.lost_audience_ids = vec!["rec".into()];
    assert_eq!(w.decide().step, Step::Create);
    let mut adopt = base.clone();
    adopt.audience_id = Some("other".into());
    let mut w = World::new(adopt, Default::default());
    w.record = Some(record());
    assert_eq!(held(&w.decide()), reasons::AUDIENCE_ID_MISMATCH);
    // Observe reads; switching back to Manage takes the audience over.
    let mut observe = base.clone();
    observe.management_policy = ManagementPolicy::Observe;
    observe.audience_id = Some("aud".into());
    assert_eq!(
        World::new(observe.clone(), Default::default()).decide().step,
        Step::Observe {
            audience_id: "aud".into()
        }
    );
    let observed = ExternalAudienceStatus {
        audience_id: Some("aud".into()),
        ownership: Some(OwnershipProof::Observed),
        ..Default::default()
    };
    let mut manage = observe.clone();
    manage.management_policy = ManagementPolicy::Manage;
    assert_eq!(
        World::new(manage, observed).decide().step,
        Step::Adopt {
            audience_id: "aud".into()
        }
    );
}

// ----- what used to be decided elsewhere, now here ---------------------------------------------------

#[test]
fn pause_credentials_and_an_invalid_schedule_decide_before_anything_else() {
    let base = spec();
    let mut w = World::new(base.clone(), converged(&base));
    w.paused = true;
    assert_eq!(w.decide().step, Step::Pause);
    w.paused = false;
    w.schedule = Err("spec.ingestion.schedule \"0 0 30 2 *\" never fires".into());
    let d = w.decide();
    assert!(matches!(d.step, Step::Block { .. }));
    assert_eq!(d.health.reason(), reasons::INVALID_SCHEDULE);
    w.schedule = Ok(None);
    // A missing Secret: Reconciling within the grace period after creation, then Stalled.
    w.credentials = Credentials::Missing("Secret ns/aep not found");
    w.created = Some(w.now - SignedDuration::from_secs(30));
    let d = w.decide();
    assert_eq!(d.health.reason(), reasons::CREDENTIALS_MISSING);
    assert!(!d.health.is_stalled());
    assert!(matches!(d.step, Step::Hold { retry, .. } if retry == Duration::from_secs(5)));
    w.created = Some(w.now - SignedDuration::from_secs(300));
    let d = w.decide();
    assert!(d.health.is_stalled() && d.health.reason() == reasons::CREDENTIALS_MISSING);
    w.credentials = Credentials::Invalid("key clientId: missing");
    assert_eq!(w.decide().health.reason(), reasons::CREDENTIALS_INVALID);
}

#[test]
fn the_settle_window_is_measured_on_the_clock_the_marker_was_written_with() {
    let marker = |ago: i64| ExternalAudienceStatus {
        create_pending_since: Some(Time(now().0 - SignedDuration::from_secs(ago))),
        ..Default::default()
    };
    let resend = |status| match World::new(spec(), status).decide().step {
        Step::RecoverCreate { resend, .. } => resend,
        other => panic!("{other:?}"),
    };
    assert_eq!(resend(marker(60)), Resend::Not(Duration::from_secs(540)));
    assert_eq!(resend(marker(601)), Resend::AfterLookup);
    // Written by a replica whose clock runs an hour ahead: the window has just begun.
    assert_eq!(resend(marker(-3600)), Resend::Not(Duration::from_secs(600)));
}

#[test]
fn the_run_budget_and_the_per_audience_limit_decide_before_a_run_is_sent() {
    let base = spec();
    let owed = ExternalAudienceStatus {
        ingested_spec_hash: None,
        ..converged(&base)
    };
    let mut w = World::new(base.clone(), owed.clone());
    assert!(matches!(w.decide().step, Step::StartRun { .. }));
    let until = t("2026-01-02T00:00:00Z");
    w.budget = Some(Grant::Wait {
        used: 5,
        limit: 5,
        until,
    });
    let d = w.decide();
    assert_eq!(d.step, Step::Defer { until });
    assert_eq!(d.health.reason(), reasons::RUN_DEFERRED);
    assert!(d.health.message().contains("(5/5 runs today, UTC)"), "{d:?}");
    w.budget = Some(Grant::Go);
    assert!(matches!(w.decide().step, Step::StartRun { .. }));
    // The per-audience limit, from the runs this operator counted.
    w.status.run_counts = Some(RunCounts {
        total: 10,
        day: "2000-01-01".into(),
        today: 0,
    });
    let d = w.decide();
    assert!(matches!(d.step, Step::Block { .. }));
    assert_eq!(d.health.reason(), reasons::INGESTION_LIMIT_REACHED);
    assert!(d.health.message().contains("10 ingestion runs in its lifetime"));
    // Per day: yesterday's runs do not count today.
    w.settings.run_limit.window = RunWindow::Day;
    assert!(matches!(w.decide().step, Step::StartRun { .. }));
    // Without ingestion settings, a run owed is reported, never sent.
    let mut adopted = base.clone();
    adopted.ingestion = None;
    adopted.audience_id = Some("aud".into());
    let mut w = World::new(
        adopted,
        ExternalAudienceStatus {
            ownership: Some(OwnershipProof::SpecAudienceId),
            ..owed
        },
    );
    w.run_request = Some("now");
    let d = w.decide();
    assert!(matches!(d.step, Step::Block { .. }), "{d:?}");
    assert!(d.health.message().starts_with("spec.ingestion: Required value"));
}

#[test]
fn a_schedule_owes_a_run_from_when_it_was_first_seen_and_claims_the_budget_as_scheduled() {
    let mut base = spec();
    if let Some(i) = base.ingestion.as_mut() {
        i.schedule = Some("0 * * * *".into());
    }
    let mut w = World::new(base.clone(), converged(&base));
    w.schedule = Ok(Some(Schedule::parse("0 * * * *", None).expect("schedule")));
    // Never seen before: nothing due, however old the object.
    w.created = Some(w.now - SignedDuration::from_hours(5));
    assert!(matches!(w.decide().step, Step::Idle { .. }), "{:?}", w.decide());
    // Seen two hours ago: the latest hour is due, and serves the run.
    w.status.schedule_since = Some(Time(w.now - SignedDuration::from_hours(2)));
    let d = w.decide();
    assert!(
        matches!(&d.step, Step::StartRun { scheduled_for: Some(at), .. } if at.0 == w.now),
        "{d:?}"
    );
    assert_eq!(run_priority(&w.facts()).0, Priority::Scheduled);
}

#[test]
fn data_expiry_and_its_extension_are_decided_from_the_clock() {
    let base = spec();
    let ran = |days_ago: i64| ExternalAudienceStatus {
        custom_audience_id: Some("k8s-u-1".into()),
        last_run: Some(IngestionRun {
            run_id: "r1".into(),
            generation: 1,
            status: RunState::Success,
            start_time: Some(Time(now().0 - SignedDuration::from_hours(24 * days_ago))),
            end_time: Some(Time(now().0 - SignedDuration::from_hours(24 * days_ago))),
            message: None,
        }),
        ..converged(&base)
    };
    // AEP's default TTL (30 days) for an audience this object created.
    assert_eq!(
        World::new(base.clone(), ran(10)).decide().health.reason(),
        reasons::READY
    );
    assert_eq!(
        World::new(base.clone(), ran(28)).decide().health.reason(),
        reasons::READY,
        "expiring soon is still Ready"
    );
    let d = World::new(base.clone(), ran(31)).decide();
    assert_eq!(d.health.reason(), reasons::DATA_EXPIRED);
    assert!(d.health.is_stalled());
    // autoExtend: within the window, once per TTL.
    let mut auto = base.clone();
    auto.expiration = Some(ExpirationSpec { auto_extend: true });
    assert_eq!(
        World::new(auto.clone(), ran(28)).decide().step,
        Step::ExtendTtl {
            audience_id: "aud".into()
        }
    );
    let mut extended = ran(28);
    extended.data_expiration = Some(DataExpiration {
        expires_at: Time(now().0 + SignedDuration::from_hours(24 * 32)),
        source: expiry::FROM_EXTENSION.into(),
        extended_until: Some(Time(now().0 + SignedDuration::from_hours(24 * 32))),
        last_extended_at: Some(now()),
    });
    assert!(matches!(World::new(auto, extended).decide().step, Step::Idle { .. }));
    // An adopted audience's TTL is unknown without spec.ttlInDays: no expiry is claimed.
    let mut adopted = ran(31);
    adopted.ownership = Some(OwnershipProof::SpecAudienceId);
    assert_eq!(World::new(base, adopted).decide().health.reason(), reasons::READY);
}

#[test]
fn drift_checks_are_due_from_the_recorded_time_spread_per_object_and_never_at_once_after_a_restart() {
    let base = spec();
    let interval = Duration::from_secs(600);
    let mut w = World::new(base.clone(), converged(&base));
    w.resync = Ok(interval);
    // Never scheduled: the first check is recorded within one interval, spread per object.
    let first = match w.decide().step {
        Step::ScheduleDriftCheck { at } => at,
        other => panic!("{other:?}"),
    };
    assert!(first >= w.now && first < w.now + SignedDuration::from_secs(600));
    let spread_of = |uid: &str| {
        let f = Facts {
            uid: Some(uid),
            ..w.facts()
        };
        match decide(&f).step {
            Step::ScheduleDriftCheck { at } => at,
            other => panic!("{other:?}"),
        }
    };
    assert_ne!(spread_of("a"), spread_of("b"), "objects spread out");
    // Scheduled in the future: idle until then (whatever this process remembers).
    w.status.next_drift_check = Some(Time(w.now + SignedDuration::from_secs(120)));
    assert_eq!(
        w.decide().step,
        Step::Idle {
            next: Some(Duration::from_secs(120)),
            event: None
        }
    );
    // Due: one read.
    w.status.next_drift_check = Some(Time(w.now - SignedDuration::from_secs(1)));
    assert_eq!(
        w.decide().step,
        Step::CheckDrift {
            audience_id: "aud".into()
        }
    );
    // Off.
    w.resync = Ok(Duration::ZERO);
    assert_eq!(
        w.decide().step,
        Step::Idle {
            next: None,
            event: None
        }
    );
    // A malformed annotation is reported, and the flag's interval applies.
    w.resync = Err("annotation aep.audience-operator.dev/resync-interval is ignored: bad".into());
    let d = w.decide();
    assert!(matches!(d.step, Step::Idle { event: Some(_), .. }));
    assert!(d.health.message().contains("is ignored"), "{d:?}");
    // Checks follow the anchor's slots, every interval, and write nothing: one made in this slot
    // is not made again before the next slot.
    w.resync = Ok(interval);
    let anchor = w.now - SignedDuration::from_secs(1);
    w.status.next_drift_check = Some(Time(anchor));
    w.last_drift_check = Some(w.now);
    assert_eq!(
        w.decide().step,
        Step::Idle {
            next: Some(Duration::from_secs(599)),
            event: None
        },
        "checked in this slot: the next is one interval after the anchor"
    );
    // A restart (nothing remembered) long after the anchor: due only once the first slot after
    // the start comes, never at once.
    w.last_drift_check = None;
    let (due_now, next) = drift_slot(anchor - SignedDuration::from_secs(3 * 600), interval, w.now, w.now);
    assert!(!due_now && next > w.now, "no check owed from before the start");
    let (due, _) = drift_slot(
        anchor,
        interval,
        w.now - SignedDuration::from_secs(2),
        w.now + SignedDuration::from_secs(600),
    );
    assert!(due, "the next slot after the start is due");
}

#[test]
fn an_adopted_audience_waits_for_the_cache_to_show_its_claim_before_a_mutating_call() {
    let mut base = spec();
    base.audience_id = Some("aud".into());
    let status = ExternalAudienceStatus {
        ownership: Some(OwnershipProof::SpecAudienceId),
        applied_spec_hash: None,
        ..converged(&base)
    };
    let mut w = World::new(base, status);
    w.cache_holds_claim = false;
    assert_eq!(w.decide().step, Step::AwaitCache);
    w.cache_holds_claim = true;
    assert_eq!(
        w.decide().step,
        Step::Update {
            audience_id: "aud".into()
        }
    );
}

#[test]
fn deletion_table() {
    let base = spec();
    let mut orphan = base.clone();
    orphan.deletion_policy = DeletionPolicy::Orphan;
    let mut observe = base.clone();
    observe.management_policy = ManagementPolicy::Observe;
    observe.audience_id = Some("aud".into());
    let owned = ExternalAudienceStatus {
        org_id: Some("ORG".into()),
        platform_url: Some("https://platform.adobe.io/".into()),
        ..converged(&base)
    };
    let holder = Claim {
        audience: ("prod".into(), "aud".into()),
        org: Some("ORG".into()),
        recorded: true,
        since: None,
        created: None,
        object: ("ns".into(), "owner".into()),
    };
    let released = |d: &Decision| matches!(d.step, Step::Release { .. });
    let world = |spec: &ExternalAudienceSpec, status: &ExternalAudienceStatus| {
        let mut w = World::new(spec.clone(), status.clone());
        w.deleting = true;
        w
    };
    assert!(released(&world(&base, &Default::default()).decide()), "never sent");
    assert!(released(&world(&orphan, &owned).decide()), "orphan");
    assert!(released(&world(&observe, &owned).decide()), "observed");
    let mut w = world(&base, &owned);
    w.claimed_by = Some(holder);
    assert!(released(&w.decide()), "another object manages it");
    let mut w = world(&base, &owned);
    w.paused = true;
    assert!(matches!(w.decide().step, Step::WaitDeletion { paused: true, .. }));
    let mut w = world(&base, &owned);
    w.credentials = Credentials::Missing("Secret ns/aep not found");
    let d = w.decide();
    assert!(matches!(d.step, Step::WaitDeletion { paused: false, .. }));
    assert!(d.health.message().contains("Restore the Secret") && d.health.message().contains("Orphan"));
    w.namespace_terminating = true;
    assert!(released(&w.decide()), "the namespace is going away");
    let mut w = world(&base, &owned);
    w.credentials = Credentials::Ready(Endpoint {
        org_id: "OTHER",
        platform_url: "https://platform.adobe.io/",
    });
    assert_eq!(w.decide().health.reason(), reasons::ORGANIZATION_CHANGED);
    assert_eq!(
        world(&base, &owned).decide().step,
        Step::Delete {
            audience_id: "aud".into()
        }
    );
    let legacy = ExternalAudienceStatus {
        ownership: None,
        ..owned.clone()
    };
    assert_eq!(
        world(&base, &legacy).decide().step,
        Step::DeleteLegacy {
            audience_id: "aud".into()
        }
    );
    let pending = ExternalAudienceStatus {
        create_pending_since: Some(Time(now().0 - SignedDuration::from_secs(60))),
        ..Default::default()
    };
    assert_eq!(
        world(&base, &pending).decide().step,
        Step::ResolveAndDelete {
            operation_id: None,
            settle: Some(Duration::from_secs(540))
        }
    );
}
