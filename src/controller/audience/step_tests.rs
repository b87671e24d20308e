//! The step-level tier: every step × every [`ErrorKind`] (and the answers AEP gives), with an
//! in-memory AEP ([`FakeAep`], scripted answers, calls recorded), an in-memory status subresource
//! ([`FakeStatus`], resourceVersion preconditions enforced) and the events captured, so a test
//! sees everything a step does. No network, no control plane: the whole table runs in well under
//! a second.

use std::{
    collections::VecDeque,
    ops::Deref,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    ResourceExt,
    runtime::{events::EventType, reflector},
};
use serde_json::json;

use super::{
    AudiencePass, Shared,
    decide::{self, Decision, Resend, Settings, Step},
    spec,
};
use crate::{
    aep::{
        CreateAudienceRequest, CreateAudienceResponse, Error as AepError, ExtendTtlResponse,
        ExternalAudience as AepAudience, Operation, OperationStatus, PatchAudienceRequest, Run, RunStatus,
        StartRunRequest, UpsAudience,
        error::{Call, ErrorKind},
    },
    api::{EventReason, ExternalAudience, ExternalAudienceStatus, IngestionRun, RunPending, RunState, reasons},
    controller::{
        core::{
            Error, Next, Timing,
            events::{Captured, CapturedEvent},
        },
        seams::AepApi,
    },
    status::Health,
};

type Answer<T> = Mutex<VecDeque<Result<T, AepError>>>;

/// Scripted AEP: each call pops the next answer of its queue; a call without one fails the test.
#[derive(Default)]
struct FakeAep {
    find_by_name: Answer<Vec<UpsAudience>>,
    find_by_custom_id: Answer<Vec<UpsAudience>>,
    create: Answer<CreateAudienceResponse>,
    operation: Answer<Operation>,
    audience: Answer<UpsAudience>,
    patch: Answer<AepAudience>,
    start_run: Answer<Run>,
    run: Answer<Run>,
    runs: Answer<Vec<Run>>,
    delete: Answer<()>,
    extend: Answer<ExtendTtlResponse>,
    calls: Mutex<Vec<&'static str>>,
}

fn pop<T>(name: &'static str, calls: &Mutex<Vec<&'static str>>, q: &Answer<T>) -> Result<T, AepError> {
    calls.lock().expect("calls").push(name);
    q.lock()
        .expect("queue")
        .pop_front()
        .unwrap_or_else(|| panic!("unexpected AEP call {name}"))
}

impl FakeAep {
    fn mutating_calls(&self) -> usize {
        self.calls
            .lock()
            .expect("calls")
            .iter()
            .filter(|c| matches!(**c, "create" | "patch" | "start_run" | "delete"))
            .count()
    }
}

impl AepApi for FakeAep {
    async fn find_audiences_by_name(&self, _: &str) -> Result<Vec<UpsAudience>, AepError> {
        pop("find_by_name", &self.calls, &self.find_by_name)
    }
    async fn find_audiences_by_custom_id(&self, _: &str) -> Result<Vec<UpsAudience>, AepError> {
        pop("find_by_custom_id", &self.calls, &self.find_by_custom_id)
    }
    async fn create_audience(&self, _: &CreateAudienceRequest) -> Result<CreateAudienceResponse, AepError> {
        pop("create", &self.calls, &self.create)
    }
    async fn get_operation(&self, _: &str) -> Result<Operation, AepError> {
        pop("operation", &self.calls, &self.operation)
    }
    async fn get_audience(&self, _: &str) -> Result<UpsAudience, AepError> {
        pop("audience", &self.calls, &self.audience)
    }
    async fn patch_audience(&self, _: &str, _: &PatchAudienceRequest) -> Result<AepAudience, AepError> {
        pop("patch", &self.calls, &self.patch)
    }
    async fn start_run(&self, _: &str, _: &StartRunRequest) -> Result<Run, AepError> {
        pop("start_run", &self.calls, &self.start_run)
    }
    async fn get_run(&self, _: &str, _: &str) -> Result<Run, AepError> {
        pop("run", &self.calls, &self.run)
    }
    async fn list_runs(&self, _: &str) -> Result<Vec<Run>, AepError> {
        pop("runs", &self.calls, &self.runs)
    }
    async fn delete_audience(&self, _: &str) -> Result<(), AepError> {
        pop("delete", &self.calls, &self.delete)
    }
    async fn extend_ttl(&self, _: &str) -> Result<ExtendTtlResponse, AepError> {
        pop("extend_ttl", &self.calls, &self.extend)
    }
}

type FakeStatus = crate::controller::core::testing::FakeStatus<ExternalAudience>;

fn object(status: ExternalAudienceStatus) -> ExternalAudience {
    let mut obj: ExternalAudience = serde_json::from_value(json!({
        "apiVersion": "aep.audience-operator.dev/v1alpha1",
        "kind": "ExternalAudience",
        "metadata": {"name": "loyalty", "namespace": "ns", "uid": "u-1", "generation": 1, "resourceVersion": "1"},
        "spec": {
            "credentialsSecretRef": {"name": "aep"},
            "sandbox": "prod",
            "fields": [{"name": "ppid", "type": "string", "identityNs": "email"}],
            "sourceSpec": {"path": "a/b.csv", "type": "file"},
            "ingestion": {"dataFilterStartTime": 764245635},
            "ttlInDays": 30
        }
    }))
    .expect("object");
    obj.status = Some(status);
    obj
}

/// The kind's shared state with no API server (event publishing is captured) and the events.
struct Harness {
    shared: Shared,
    events: Arc<Captured>,
}

impl Deref for Harness {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.shared
    }
}

impl Harness {
    fn events(&self) -> Vec<CapturedEvent> {
        self.events.all()
    }
}

fn context_with(runs_per_sandbox_per_day: u32) -> Harness {
    // No API server: nothing but status and annotation writes (faked) may reach one.
    let (core, events) = crate::controller::core::testing::context(Timing::default());
    let (reader, _writer) = reflector::store();
    Harness {
        shared: super::shared(
            core,
            reader,
            Settings::default(),
            runs_per_sandbox_per_day,
            Duration::ZERO,
        ),
        events,
    }
}

fn context() -> Harness {
    context_with(0)
}

/// A decision to carry out (the health matters only to steps without an AEP call).
fn decision(step: Step) -> Decision {
    Decision {
        step,
        health: Health::ready(""),
    }
}

/// Runs `step` on `status` against `aep`; returns the written status, what the pass chose, the
/// number of status writes and the events.
async fn run_step_ev(
    status: ExternalAudienceStatus,
    step: Step,
    aep: &FakeAep,
) -> (ExternalAudienceStatus, Next, usize, Vec<CapturedEvent>) {
    let ctx = context();
    let obj = object(status);
    let store = FakeStatus::new(obj.clone());
    let mut pass = AudiencePass::new(&obj, &ctx, &store);
    let out = pass.act(decision(step), aep).await.expect("step");
    let next = out.next;
    pass.finish(out, false).await.expect("finish");
    let written = store.obj.lock().expect("obj").status.clone().unwrap_or_default();
    let writes = *store.writes.lock().expect("writes");
    (written, next, writes, ctx.events())
}

/// [`run_step_ev`] without the events.
async fn run_step(status: ExternalAudienceStatus, step: Step, aep: &FakeAep) -> (ExternalAudienceStatus, Next, usize) {
    let (st, next, writes, _) = run_step_ev(status, step, aep).await;
    (st, next, writes)
}

/// Runs the step the decider picks for `status` (the budget asked as the operator does).
async fn run_decided(status: ExternalAudienceStatus, aep: &FakeAep) -> (ExternalAudienceStatus, Step) {
    let ctx = context();
    let obj = object(status);
    let store = FakeStatus::new(obj.clone());
    let mut pass = AudiencePass::new(&obj, &ctx, &store);
    let decided = pass.decide_with_budget();
    let step = decided.step.clone();
    let out = pass.act(decided, aep).await.expect("step");
    pass.finish(out, false).await.expect("finish");
    (store.obj.lock().expect("obj").status.clone().unwrap_or_default(), step)
}

fn recover(resend: Resend) -> Step {
    Step::RecoverCreate {
        resend,
        confirmed: false,
        token: String::new(),
    }
}

fn err(call: Call, kind: ErrorKind) -> AepError {
    AepError::synthetic(call, kind, format!("{kind} from AEP"))
}

/// Queues the answers of the confirmation that follows a 404: both lookups say it is gone.
fn confirms_gone(aep: &FakeAep) {
    aep.audience
        .lock()
        .expect("q")
        .push_back(Err(err(Call::GetAudience, ErrorKind::NotFound)));
    aep.runs
        .lock()
        .expect("q")
        .push_back(Err(err(Call::ListRuns, ErrorKind::NotFound)));
}

const KINDS: [ErrorKind; 8] = [
    ErrorKind::Retryable { retry_after: None },
    ErrorKind::NotNow { retry_after: None },
    ErrorKind::Terminal,
    ErrorKind::PermissionDenied,
    ErrorKind::NotFound,
    ErrorKind::Conflict,
    ErrorKind::OutcomeUnknown,
    ErrorKind::Unauthorized,
];

fn reason(st: &ExternalAudienceStatus, type_: &str) -> Option<String> {
    st.conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
        .map(|c| c.reason.clone())
}

fn spec_for_hashes() -> ExternalAudience {
    object(ExternalAudienceStatus::default())
}

fn created() -> ExternalAudienceStatus {
    let obj = spec_for_hashes();
    ExternalAudienceStatus {
        audience_id: Some("aud".into()),
        applied_spec_hash: Some(spec::updatable_hash(&obj.spec)),
        ..Default::default()
    }
}

fn ready() -> ExternalAudienceStatus {
    let obj = spec_for_hashes();
    ExternalAudienceStatus {
        ingested_spec_hash: Some(spec::ingest_hash(&obj.spec, "loyalty")),
        last_run: Some(IngestionRun {
            run_id: "r1".into(),
            generation: 1,
            status: RunState::Processing,
            start_time: None,
            end_time: None,
            message: None,
        }),
        ..created()
    }
}

/// What every error of `kind` must lead to, whatever the step (step-specific cases are checked
/// separately below), events included.
fn assert_common(step: &str, kind: ErrorKind, st: &ExternalAudienceStatus, next: Next, events: &[CapturedEvent]) {
    let ctx = format!("{step} × {kind}");
    match kind {
        ErrorKind::Retryable { .. } => {
            assert_eq!(reason(st, "Reconciling").as_deref(), Some(reasons::RETRYING), "{ctx}");
            assert!(matches!(next, Next::Backoff(_)), "{ctx}: backs off");
        }
        ErrorKind::PermissionDenied => {
            assert_eq!(
                reason(st, "Stalled").as_deref(),
                Some(reasons::PERMISSION_DENIED),
                "{ctx}"
            );
            assert!(
                st.blocked.is_none() && matches!(next, Next::After(_)),
                "{ctx}: re-checked later"
            );
        }
        ErrorKind::Unauthorized => {
            assert_eq!(
                reason(st, "Stalled").as_deref(),
                Some(reasons::CREDENTIALS_INVALID),
                "{ctx}"
            );
            assert!(matches!(next, Next::After(_)), "{ctx}");
        }
        ErrorKind::Terminal => {
            assert_eq!(reason(st, "Stalled").as_deref(), Some(reasons::REJECTED), "{ctx}");
            assert!(
                st.blocked.is_some() && matches!(next, Next::Await),
                "{ctx}: waits for a change"
            );
        }
        ErrorKind::NotNow { .. } => {
            // Refused for now: looked at again later, never blocked for the generation, unless it
            // is the per-audience limit (which waiting does not lift).
            let limit = reason(st, "Stalled").as_deref() == Some(reasons::INGESTION_LIMIT_REACHED);
            assert!(
                limit || (st.blocked.is_none() && !matches!(next, Next::Await)),
                "{ctx}: deferred, not dropped: {st:?} {next:?}"
            );
        }
        ErrorKind::NotFound => {
            // Something is missing: never reported Ready, and a step that confirmed its audience
            // gone has handed it to the missing-audience policy (its id is kept as lost).
            assert_ne!(reason(st, "Ready").as_deref(), Some(reasons::READY), "{ctx}");
            assert!(
                st.audience_id.is_some() || st.lost_audience_ids.is_empty() || st.lost_audience_ids == ["aud"],
                "{ctx}: {st:?}"
            );
        }
        ErrorKind::Conflict => {
            // AEP refused: Stalled until a change, recorded for this generation.
            assert!(reason(st, "Stalled").is_some(), "{ctx}: {st:?}");
            assert!(st.blocked.is_some() && matches!(next, Next::Await), "{ctx}");
        }
        ErrorKind::OutcomeUnknown => {
            // The call may have happened: Reconciling, looked at again soon, nothing blocked.
            assert!(reason(st, "Stalled").is_none(), "{ctx}: {st:?}");
            assert!(st.blocked.is_none() && matches!(next, Next::After(_)), "{ctx}");
        }
    }
    assert!(
        events.iter().any(|e| e.type_ == EventType::Warning),
        "{ctx}: a failure publishes a Warning event: {events:?}"
    );
    assert!(
        reason(st, "Reconciling").is_none() || reason(st, "Stalled").is_none(),
        "{ctx}: never Reconciling and Stalled together"
    );
    assert_eq!(st.observed_generation, Some(1), "{ctx}");
}

#[tokio::test]
async fn create_step_under_every_error_kind() {
    for kind in KINDS {
        // The lookup finds nothing; the POST fails with `kind`.
        let aep = FakeAep::default();
        aep.find_by_name.lock().expect("q").push_back(Ok(Vec::new()));
        aep.create
            .lock()
            .expect("q")
            .push_back(Err(err(Call::CreateAudience, kind)));
        let (st, next, _, events) = run_step_ev(Default::default(), Step::Create, &aep).await;
        assert_eq!(aep.mutating_calls(), 1, "{kind}: exactly one create");
        assert_eq!(
            st.custom_audience_id.as_deref(),
            Some("k8s-u-1"),
            "{kind}: the marker names the object"
        );
        match kind {
            ErrorKind::OutcomeUnknown => {
                assert!(
                    st.create_pending_since.is_some(),
                    "the marker stays: the create may have happened"
                );
                assert_eq!(reason(&st, "Reconciling").as_deref(), Some(reasons::CONFIRMING_CREATE));
            }
            ErrorKind::Conflict => {
                assert!(st.create_pending_since.is_none());
                assert_eq!(
                    reason(&st, "Stalled").as_deref(),
                    Some(reasons::NAME_TAKEN),
                    "a 409 is not ours"
                );
            }
            _ => assert!(st.create_pending_since.is_none(), "{kind}: nothing was created"),
        }
        assert_common("create", kind, &st, next, &events);
    }
}

#[tokio::test]
async fn create_step_never_adopts_a_name_it_cannot_prove() {
    let aep = FakeAep::default();
    let foreign = UpsAudience {
        id: "other".into(),
        audience_id: Some("other".into()),
        name: "loyalty".into(),
        origin_name: Some("CUSTOM_UPLOAD".into()),
        ..Default::default()
    };
    aep.find_by_name.lock().expect("q").push_back(Ok(vec![foreign.clone()]));
    let (st, _, _) = run_step(Default::default(), Step::Create, &aep).await;
    assert_eq!(reason(&st, "Stalled").as_deref(), Some(reasons::NAME_TAKEN));
    assert!(st.audience_id.is_none() && aep.mutating_calls() == 0);
    // The same name carrying this object's customAudienceId is its own.
    let aep = FakeAep::default();
    let ours = UpsAudience {
        audience_id: Some("k8s-u-1".into()),
        ..foreign
    };
    aep.find_by_name.lock().expect("q").push_back(Ok(vec![ours]));
    let (st, _, _) = run_step(Default::default(), Step::Create, &aep).await;
    assert_eq!(st.audience_id.as_deref(), Some("other"));
    assert_eq!(aep.mutating_calls(), 0);
}

#[tokio::test]
async fn recover_create_under_every_error_kind_sends_nothing() {
    for kind in KINDS {
        let aep = FakeAep::default();
        aep.find_by_custom_id
            .lock()
            .expect("q")
            .push_back(Err(err(Call::FindAudiences, kind)));
        let status = ExternalAudienceStatus {
            create_pending_since: Some(crate::controller::clock::now()),
            custom_audience_id: Some("k8s-u-1".into()),
            ..Default::default()
        };
        let (st, next, _, events) = run_step_ev(status, recover(Resend::AfterLookup), &aep).await;
        assert_eq!(
            aep.mutating_calls(),
            0,
            "{kind}: a lookup failure never leads to a create"
        );
        assert!(st.create_pending_since.is_some(), "{kind}: the marker stays");
        assert_common("recover_create", kind, &st, next, &events);
    }
}

#[tokio::test]
async fn poll_operation_under_every_error_kind_and_answer() {
    let pending = || ExternalAudienceStatus {
        operation_id: Some("op".into()),
        ..Default::default()
    };
    for kind in KINDS {
        let aep = FakeAep::default();
        aep.operation
            .lock()
            .expect("q")
            .push_back(Err(err(Call::GetOperation, kind)));
        let (st, next, _, events) = run_step_ev(
            pending(),
            Step::PollOperation {
                operation_id: "op".into(),
            },
            &aep,
        )
        .await;
        if kind == ErrorKind::NotFound {
            assert_eq!(
                st.lost_operation_id.as_deref(),
                Some("op"),
                "an unknown operation leads to the proof lookup"
            );
            assert!(st.operation_id.is_none() && st.create_pending_since.is_some());
        } else {
            assert_eq!(st.operation_id.as_deref(), Some("op"), "{kind}: the operation is kept");
        }
        assert_common("poll_operation", kind, &st, next, &events);
    }
    // The answers the reference lists.
    let op = |status: OperationStatus, id: Option<&str>| Operation {
        operation_id: "op".into(),
        status,
        audience_id: id.map(str::to_owned),
        audience_name: None,
        operation_details: None,
        message: None,
        created_by: None,
        created_at: None,
        updated_by: None,
        updated_at: None,
    };
    for (answer, check) in [
        (op(OperationStatus::Processing, None), "pending"),
        (op(OperationStatus::Success, Some("aud")), "created"),
        (op(OperationStatus::Success, None), "no id"),
        (op(OperationStatus::Failed, None), "failed"),
        (op(OperationStatus::Other("WEIRD".into()), None), "pending"),
    ] {
        let aep = FakeAep::default();
        aep.operation.lock().expect("q").push_back(Ok(answer));
        let (st, _, _) = run_step(
            pending(),
            Step::PollOperation {
                operation_id: "op".into(),
            },
            &aep,
        )
        .await;
        match check {
            "pending" => assert_eq!(
                reason(&st, "Reconciling").as_deref(),
                Some(reasons::WAITING_FOR_OPERATION)
            ),
            "created" => assert_eq!(st.audience_id.as_deref(), Some("aud")),
            "no id" => assert_eq!(reason(&st, "Stalled").as_deref(), Some(reasons::UNEXPECTED_RESPONSE)),
            _ => {
                assert_eq!(reason(&st, "Stalled").as_deref(), Some(reasons::OPERATION_FAILED));
                assert_eq!(st.failed_operation_id.as_deref(), Some("op"));
            }
        }
    }
}

#[tokio::test]
async fn update_and_adopt_under_every_error_kind() {
    for kind in KINDS {
        let aep = FakeAep::default();
        aep.patch
            .lock()
            .expect("q")
            .push_back(Err(err(Call::PatchAudience, kind)));
        if kind == ErrorKind::NotFound {
            confirms_gone(&aep);
        }
        let status = ExternalAudienceStatus {
            applied_spec_hash: None,
            ..created()
        };
        let (st, next, _, events) = run_step_ev(
            status,
            Step::Update {
                audience_id: "aud".into(),
            },
            &aep,
        )
        .await;
        assert_eq!(aep.mutating_calls(), 1, "{kind}");
        if kind == ErrorKind::NotFound {
            assert!(
                st.audience_id.is_none() && st.lost_audience_ids == ["aud"],
                "gone behind our back"
            );
        } else {
            assert!(st.applied_spec_hash.is_none(), "{kind}: not applied");
        }
        assert_common("update", kind, &st, next, &events);

        let aep = FakeAep::default();
        aep.audience
            .lock()
            .expect("q")
            .push_back(Err(err(Call::GetAudience, kind)));
        let (st, next, _, events) = run_step_ev(
            Default::default(),
            Step::Adopt {
                audience_id: "x".into(),
            },
            &aep,
        )
        .await;
        assert!(st.audience_id.is_none(), "{kind}: nothing adopted");
        if kind == ErrorKind::NotFound {
            assert_eq!(reason(&st, "Stalled").as_deref(), Some(reasons::AUDIENCE_NOT_FOUND));
            assert!(st.blocked.is_none(), "re-checked on a long interval");
        }
        assert_common("adopt", kind, &st, next, &events);
    }
}

#[tokio::test]
async fn start_run_under_every_error_kind() {
    for kind in KINDS {
        let aep = FakeAep::default();
        aep.start_run
            .lock()
            .expect("q")
            .push_back(Err(err(Call::StartRun, kind)));
        if matches!(kind, ErrorKind::NotNow { .. }) {
            aep.runs.lock().expect("q").push_back(Ok(Vec::new()));
        }
        if kind == ErrorKind::NotFound {
            confirms_gone(&aep);
        }
        let (st, next, writes, events) = run_step_ev(
            created(),
            Step::StartRun {
                audience_id: "aud".into(),
                scheduled_for: None,
            },
            &aep,
        )
        .await;
        assert_eq!(aep.mutating_calls(), 1, "{kind}: one start");
        assert!(writes >= 1, "{kind}: the marker was written before the call");
        match kind {
            ErrorKind::OutcomeUnknown => assert!(st.run_pending.is_some(), "the run may exist: marker kept"),
            ErrorKind::NotNow { .. } => {
                assert!(st.run_pending.is_none());
                assert_eq!(reason(&st, "Reconciling").as_deref(), Some(reasons::RUN_DEFERRED));
            }
            ErrorKind::NotFound => assert!(st.audience_id.is_none(), "gone behind our back"),
            _ => assert!(st.run_pending.is_none(), "{kind}: no run started"),
        }
        assert_common("start_run", kind, &st, next, &events);
    }
}

#[tokio::test]
async fn start_run_refused_at_the_per_audience_limit_stalls_instead_of_deferring() {
    let aep = FakeAep::default();
    aep.start_run
        .lock()
        .expect("q")
        .push_back(Err(err(Call::StartRun, ErrorKind::NotNow { retry_after: None })));
    let run = |i: i64| Run {
        run_id: format!("r{i}"),
        audience_id: "aud".into(),
        audience_name: None,
        status: RunStatus::Success,
        details: Vec::new(),
        differential_ingestion: None,
        data_filter_start_time: None,
        data_filter_end_time: None,
        created_at: Some(i),
        created_by: None,
        message: None,
    };
    aep.runs.lock().expect("q").push_back(Ok((0..10).map(run).collect()));
    let (st, next, _) = run_step(
        created(),
        Step::StartRun {
            audience_id: "aud".into(),
            scheduled_for: None,
        },
        &aep,
    )
    .await;
    assert_eq!(
        reason(&st, "Stalled").as_deref(),
        Some(reasons::INGESTION_LIMIT_REACHED)
    );
    assert!(matches!(next, Next::Await));
}

#[tokio::test]
async fn poll_run_recover_run_and_idle_under_every_error_kind() {
    for kind in KINDS {
        let aep = FakeAep::default();
        aep.run.lock().expect("q").push_back(Err(err(Call::GetRun, kind)));
        if kind == ErrorKind::NotFound {
            confirms_gone(&aep);
        }
        let (st, next, _, events) = run_step_ev(
            ready(),
            Step::PollRun {
                audience_id: "aud".into(),
                run_id: "r1".into(),
            },
            &aep,
        )
        .await;
        assert_eq!(aep.mutating_calls(), 0, "{kind}: polling sends nothing");
        if kind == ErrorKind::NotFound {
            // Confirmed gone: the missing-audience policy (re-create), never a Stalled for ever.
            assert!(
                st.audience_id.is_none() && st.lost_audience_ids == ["aud"],
                "{kind}: {st:?}"
            );
            assert!(st.last_run.is_none() && st.run_history.len() == 1, "{kind}");
        } else {
            assert_eq!(
                st.last_run.as_ref().map(|r| r.status),
                Some(RunState::Processing),
                "{kind}"
            );
        }
        assert_common("poll_run", kind, &st, next, &events);

        let aep = FakeAep::default();
        aep.runs.lock().expect("q").push_back(Err(err(Call::ListRuns, kind)));
        if kind == ErrorKind::NotFound {
            aep.audience
                .lock()
                .expect("q")
                .push_back(Err(err(Call::GetAudience, ErrorKind::NotFound)));
            aep.runs
                .lock()
                .expect("q")
                .push_back(Err(err(Call::ListRuns, ErrorKind::NotFound)));
        }
        let pending = ExternalAudienceStatus {
            run_pending: Some(Box::new(RunPending {
                since: crate::controller::clock::now(),
                generation: 1,
                spec_hash: "h".into(),
                run_request: None,
                scheduled_for: None,
            })),
            ..created()
        };
        let (st, next, _, events) = run_step_ev(
            pending,
            Step::RecoverRun {
                audience_id: "aud".into(),
            },
            &aep,
        )
        .await;
        assert_eq!(aep.mutating_calls(), 0, "{kind}: no second start while unsure");
        if kind == ErrorKind::NotFound {
            assert!(st.audience_id.is_none(), "{kind}: confirmed gone");
        } else {
            assert!(st.run_pending.is_some(), "{kind}: marker kept");
        }
        assert_common("recover_run", kind, &st, next, &events);

        let aep = FakeAep::default();
        aep.audience
            .lock()
            .expect("q")
            .push_back(Err(err(Call::GetAudience, kind)));
        if kind == ErrorKind::NotFound {
            // Lookups may lag: the audience's own route confirms it is gone.
            aep.runs
                .lock()
                .expect("q")
                .push_back(Err(err(Call::ListRuns, ErrorKind::NotFound)));
        }
        let done = ExternalAudienceStatus {
            last_run: ready().last_run.map(|r| IngestionRun {
                status: RunState::Success,
                ..r
            }),
            ..ready()
        };
        let (st, next, _, events) = run_step_ev(
            done,
            Step::CheckDrift {
                audience_id: "aud".into(),
            },
            &aep,
        )
        .await;
        if kind == ErrorKind::NotFound {
            assert!(st.audience_id.is_none(), "confirmed gone: re-created next");
        }
        assert_common("idle", kind, &st, next, &events);
    }
}

#[tokio::test]
async fn a_stale_base_never_sends_the_mutating_call() {
    // The object changed since it was read: the marker write conflicts, nothing is sent.
    let ctx = context();
    let obj = object(created());
    let newer = {
        let mut o = obj.clone();
        o.metadata.resource_version = Some("7".into());
        o
    };
    let store = FakeStatus::new(newer);
    let aep = FakeAep::default();
    let mut pass = AudiencePass::new(&obj, &ctx, &store);
    let result = pass
        .act(
            decision(Step::StartRun {
                audience_id: "aud".into(),
                scheduled_for: None,
            }),
            &aep,
        )
        .await;
    assert!(matches!(result, Err(Error::Stale)), "stale base");
    assert_eq!(aep.mutating_calls(), 0);
}

#[tokio::test]
async fn a_malformed_resync_annotation_is_reported_not_ignored() {
    let ctx = context();
    let mut obj = object(ExternalAudienceStatus {
        last_run: ready().last_run.map(|r| IngestionRun {
            status: RunState::Success,
            ..r
        }),
        ..ready()
    });
    obj.metadata.annotations = Some(
        [(crate::api::RESYNC_INTERVAL.to_owned(), "every ten minutes".to_owned())]
            .into_iter()
            .collect(),
    );
    let store = FakeStatus::new(obj.clone());
    let aep = FakeAep::default();
    let mut pass = AudiencePass::new(&obj, &ctx, &store);
    let decided = pass.decide();
    let out = pass.act(decided, &aep).await.expect("idle");
    assert!(
        out.event
            .as_ref()
            .is_some_and(|(_, reason, _)| reason.as_str() == crate::api::events::INVALID_ANNOTATION)
    );
    pass.finish(out, false).await.expect("finish");
    let st = store.obj.lock().expect("obj").status.clone().unwrap_or_default();
    let ready = st.conditions.iter().find(|c| c.type_ == "Ready").expect("Ready");
    assert!(
        ready.status == "True" && ready.message.contains("is ignored"),
        "{ready:?}"
    );
    assert!(
        aep.calls.lock().expect("calls").is_empty(),
        "no drift check with an unknown interval"
    );
    assert!(
        ctx.events()
            .iter()
            .any(|e| e.reason.as_str() == crate::api::events::INVALID_ANNOTATION && e.note.contains("is ignored")),
        "the Warning event names the annotation: {:?}",
        ctx.events()
    );
}

#[test]
fn passes_are_triggered_by_spec_annotations_finalizers_and_deletion_not_status() {
    use kube::runtime::Predicate;
    let p = crate::controller::triggers();
    let base = object(created());
    let h = |o: &ExternalAudience| p.hash_property(o);
    let mut status_only = base.clone();
    status_only.status = Some(ready());
    assert_eq!(h(&base), h(&status_only), "our own status writes trigger nothing");
    let mut changed = base.clone();
    changed.metadata.generation = Some(2);
    assert_ne!(h(&base), h(&changed), "spec");
    let mut annotated = base.clone();
    annotated.metadata.annotations = Some(
        [(crate::api::PAUSED.to_owned(), "true".to_owned())]
            .into_iter()
            .collect(),
    );
    assert_ne!(h(&base), h(&annotated), "annotations");
    let mut finalized = base.clone();
    finalized.metadata.finalizers = Some(vec![crate::api::FINALIZER.to_owned()]);
    assert_ne!(h(&base), h(&finalized), "finalizers");
    let mut deleted = base.clone();
    deleted.metadata.deletion_timestamp = Some(crate::controller::clock::now());
    assert_ne!(h(&base), h(&deleted), "deletion");
}

/// The happy path writes status once per pass, plus the marker before each non-idempotent call:
/// create 2 (marker, operation id), operation SUCCESS 1, start run 2 (marker, run id), run
/// SUCCESS 1. The markers make a lost answer recoverable and each id is recorded as soon as it is
/// known; in the operator the operation's SUCCESS and the run's start share a pass and a write
/// (see the test below), so five writes and the finalizer are the minimum.
#[tokio::test]
async fn the_happy_path_writes_status_once_per_pass_plus_each_marker() {
    let aep = FakeAep::default();
    aep.find_by_name.lock().expect("q").push_back(Ok(Vec::new()));
    aep.create
        .lock()
        .expect("q")
        .push_back(Ok(serde_json::from_value(json!({"operationId": "op"})).expect("answer")));
    let (st, _, writes) = run_step(Default::default(), Step::Create, &aep).await;
    assert_eq!((st.operation_id.as_deref(), writes), (Some("op"), 2), "create");

    let aep = FakeAep::default();
    aep.operation.lock().expect("q").push_back(Ok(serde_json::from_value(
        json!({"operationId": "op", "status": "SUCCESS", "audienceId": "aud"}),
    )
    .expect("answer")));
    let (st, _, writes) = run_step(
        st,
        Step::PollOperation {
            operation_id: "op".into(),
        },
        &aep,
    )
    .await;
    assert_eq!((st.audience_id.as_deref(), writes), (Some("aud"), 1), "operation done");

    let aep = FakeAep::default();
    aep.start_run.lock().expect("q").push_back(Ok(
        serde_json::from_value(json!({"runId": "r1", "audienceId": "aud"})).expect("answer")
    ));
    let (st, _, writes) = run_step(
        created(),
        Step::StartRun {
            audience_id: "aud".into(),
            scheduled_for: None,
        },
        &aep,
    )
    .await;
    assert_eq!(
        (st.last_run.as_ref().map(|r| r.run_id.as_str()), writes),
        (Some("r1"), 2),
        "start run"
    );

    let aep = FakeAep::default();
    aep.run.lock().expect("q").push_back(Ok(serde_json::from_value(
        json!({"runId": "r1", "audienceId": "aud", "status": "SUCCESS"}),
    )
    .expect("answer")));
    let (st, _, writes) = run_step(
        st,
        Step::PollRun {
            audience_id: "aud".into(),
            run_id: "r1".into(),
        },
        &aep,
    )
    .await;
    assert_eq!(
        (reason(&st, "Ready").as_deref(), writes),
        (Some(reasons::READY), 1),
        "run done"
    );
}

/// A create that completes goes on to its first run in the same pass: the run's marker records
/// the audience too, so the two passes write status twice instead of three times; and when that
/// marker conflicts, nothing is sent and nothing is published.
#[tokio::test]
async fn a_completed_create_starts_its_first_run_in_the_same_pass_behind_one_marker() {
    let obj = spec_for_hashes();
    let polled = || ExternalAudienceStatus {
        operation_id: Some("op".into()),
        custom_audience_id: Some("cid".into()),
        applied_spec_hash: Some(spec::updatable_hash(&obj.spec)),
        ..Default::default()
    };
    let answers = || {
        let aep = FakeAep::default();
        aep.operation.lock().expect("q").push_back(Ok(serde_json::from_value(
            json!({"operationId": "op", "status": "SUCCESS", "audienceId": "aud"}),
        )
        .expect("answer")));
        aep.start_run
            .lock()
            .expect("q")
            .push_back(Ok(
                serde_json::from_value(json!({"runId": "r1", "audienceId": "aud"})).expect("answer")
            ));
        aep
    };
    let step = || {
        decision(Step::PollOperation {
            operation_id: "op".into(),
        })
    };

    let (ctx, aep) = (context(), answers());
    let obj = object(polled());
    let store = FakeStatus::new(obj.clone());
    let mut pass = AudiencePass::new(&obj, &ctx, &store);
    let out = pass.act_through(step(), &aep).await.expect("step");
    pass.finish(out, false).await.expect("finish");
    let st = store.obj.lock().expect("obj").status.clone().unwrap_or_default();
    assert_eq!(*aep.calls.lock().expect("calls"), ["operation", "start_run"]);
    assert_eq!(
        *store.writes.lock().expect("writes"),
        2,
        "the marker (with the audience), then the run id"
    );
    assert_eq!(st.audience_id.as_deref(), Some("aud"));
    assert_eq!(
        st.last_run.as_ref().map(|r| (r.run_id.as_str(), r.status)),
        Some(("r1", RunState::Processing))
    );
    assert!(st.run_pending.is_none());
    let events: Vec<_> = ctx.events().into_iter().map(|e| e.reason).collect();
    assert_eq!(events, [EventReason::AudienceCreated, EventReason::IngestionStarted]);

    // Someone wrote the object after the pass's base: the marker conflicts, no run is sent, the
    // audience is not published as created (the next pass reads the operation again).
    let (ctx, aep) = (context(), answers());
    let obj = object(polled());
    let mut newer = obj.clone();
    newer.metadata.resource_version = Some("2".into());
    let store = FakeStatus::new(newer);
    let mut pass = AudiencePass::new(&obj, &ctx, &store);
    assert!(matches!(pass.act_through(step(), &aep).await, Err(Error::Stale)));
    assert_eq!(*aep.calls.lock().expect("calls"), ["operation"]);
    assert_eq!(*store.writes.lock().expect("writes"), 0);
    assert!(ctx.events().is_empty());
}

/// Runs `step` for `obj` with a given context (shared across objects, like the operator's).
/// Runs for `obj` the step the decider picks (asking the run budget as the operator does), with a
/// context shared across objects like the operator's; `expected` is the step the test exercises.
async fn run_step_in(ctx: &Harness, obj: ExternalAudience, expected: Step, aep: &FakeAep) -> ExternalAudienceStatus {
    let store = FakeStatus::new(obj.clone());
    let mut pass = AudiencePass::new(&obj, ctx, &store);
    let decided = pass.decide_with_budget();
    tracing::debug!(expected = expected.name(), decided = decided.step.name(), "Step");
    let out = pass.act(decided, aep).await.expect("step");
    pass.finish(out, false).await.expect("finish");
    store.obj.lock().expect("obj").status.clone().unwrap_or_default()
}

#[tokio::test]
async fn over_the_sandbox_budget_a_run_is_deferred_to_the_next_utc_day_without_a_request() {
    let ctx = context_with(1);
    let with_org = || ExternalAudienceStatus {
        org_id: Some("ORG@AdobeOrg".into()),
        ..created()
    };
    let aep = FakeAep::default();
    aep.start_run.lock().expect("q").push_back(Ok(
        serde_json::from_value(json!({"runId": "r1", "audienceId": "aud"})).expect("answer")
    ));
    let first = run_step_in(
        &ctx,
        object(with_org()),
        Step::StartRun {
            audience_id: "aud".into(),
            scheduled_for: None,
        },
        &aep,
    )
    .await;
    assert_eq!(first.last_run.map(|r| r.run_id).as_deref(), Some("r1"));

    let mut other = object(with_org());
    other.metadata.name = Some("second".into());
    let aep = FakeAep::default();
    let st = run_step_in(
        &ctx,
        other,
        Step::StartRun {
            audience_id: "aud2".into(),
            scheduled_for: None,
        },
        &aep,
    )
    .await;
    assert!(aep.calls.lock().expect("calls").is_empty(), "no request while deferred");
    assert_eq!(reason(&st, "Reconciling").as_deref(), Some(reasons::RUN_DEFERRED));
    let msg = &st
        .conditions
        .iter()
        .find(|c| c.type_ == "Reconciling")
        .expect("c")
        .message;
    let tomorrow = crate::controller::budget::RunBudget::next_window(crate::controller::clock::now().0);
    assert!(
        msg.contains("(1/1 runs today, UTC)") && msg.contains(&tomorrow.to_string()),
        "{msg}"
    );
    assert!(st.run_pending.is_none(), "no marker: nothing was sent");
}

#[tokio::test]
async fn the_per_audience_limit_stalls_before_aep_would_refuse() {
    let aep = FakeAep::default();
    let status = ExternalAudienceStatus {
        run_counts: Some(crate::api::RunCounts {
            total: 10,
            day: "2000-01-01".into(),
            today: 0,
        }),
        ..created()
    };
    let (st, step) = run_decided(status, &aep).await;
    assert!(matches!(step, Step::Block { .. }), "{step:?}");
    assert_eq!(aep.mutating_calls(), 0, "nothing sent");
    assert_eq!(
        reason(&st, "Stalled").as_deref(),
        Some(reasons::INGESTION_LIMIT_REACHED)
    );
    let msg = &st.conditions.iter().find(|c| c.type_ == "Stalled").expect("c").message;
    assert!(
        msg.contains("10 ingestion runs in its lifetime") && msg.contains("autoExtend"),
        "{msg}"
    );
}

/// A Ready status whose last successful run ended `ago` ago (default TTL: 30 days).
fn ingested(ago: jiff::SignedDuration) -> ExternalAudienceStatus {
    let end = crate::controller::clock::now().0 - ago;
    let mut st = ready();
    st.last_run = Some(IngestionRun {
        run_id: "r1".into(),
        generation: 1,
        status: RunState::Success,
        start_time: Some(Time(end)),
        end_time: Some(Time(end)),
        message: None,
    });
    st
}

fn condition_of<'a>(
    st: &'a ExternalAudienceStatus,
    type_: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    st.conditions.iter().find(|c| c.type_ == type_).expect("condition")
}

#[tokio::test]
async fn expiring_data_is_announced_then_reported_expired_as_stalled() {
    let day = jiff::SignedDuration::from_hours(24);
    // 28 of 30 days gone: within the 72 h window, still Ready.
    let (st, _, _) = run_step(ingested(day * 28), Step::Wait, &FakeAep::default()).await;
    assert_eq!(reason(&st, "Ready").as_deref(), Some(reasons::READY));
    let c = condition_of(&st, "DataExpiring");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", reasons::DATA_EXPIRING_SOON)
    );
    assert_eq!(
        st.data_expiration.as_ref().map(|d| d.source.as_str()),
        Some("LastSuccessfulRun")
    );
    // 31 days: expired, Stalled (kstatus Failed, Argo CD Degraded).
    let (st, _, _) = run_step(ingested(day * 31), Step::Wait, &FakeAep::default()).await;
    assert_eq!(reason(&st, "Stalled").as_deref(), Some(reasons::DATA_EXPIRED));
    assert_eq!(condition_of(&st, "DataExpiring").status, "False");
    // 10 days: fresh.
    let (st, _, _) = run_step(ingested(day * 10), Step::Wait, &FakeAep::default()).await;
    assert_eq!(reason(&st, "Ready").as_deref(), Some(reasons::READY));
    assert_eq!(condition_of(&st, "DataExpiring").reason, reasons::DATA_FRESH);
}

#[tokio::test]
async fn auto_extend_extends_once_within_the_window_and_not_again_that_period() {
    let day = jiff::SignedDuration::from_hours(24);
    let ctx = context();
    let mut obj = object(ingested(day * 28));
    obj.spec.expiration = Some(crate::api::ExpirationSpec { auto_extend: true });
    let aep = FakeAep::default();
    aep.extend.lock().expect("q").push_back(Ok(serde_json::from_value(
        json!({"audienceId": "aud", "name": "loyalty"}),
    )
    .expect("answer")));
    let st = run_step_in(
        &ctx,
        obj.clone(),
        Step::CheckDrift {
            audience_id: "aud".into(),
        },
        &aep,
    )
    .await;
    assert_eq!(*aep.calls.lock().expect("calls"), ["extend_ttl"]);
    let d = st.data_expiration.clone().expect("expiration");
    assert_eq!(d.source, "Extension");
    // Pushed out by the TTL from the old expiration (2 days away): 32 days from now.
    let expected = crate::controller::clock::now().0 + day * 32;
    assert!(
        d.expires_at.0.duration_since(expected).abs() < jiff::SignedDuration::from_secs(60),
        "{d:?}"
    );
    assert_eq!(condition_of(&st, "DataExpiring").status, "False");
    // The next pass is in the same period: no second extension.
    obj.status = Some(st);
    let again = FakeAep::default();
    again.audience.lock().expect("q").push_back(Ok(serde_json::from_value(
        json!({"id": "aud", "name": "loyalty", "labels": ["core/C1"]}),
    )
    .expect("answer")));
    let _ = run_step_in(
        &ctx,
        obj,
        Step::CheckDrift {
            audience_id: "aud".into(),
        },
        &again,
    )
    .await;
    assert!(
        !again.calls.lock().expect("calls").contains(&"extend_ttl"),
        "once per period"
    );
}

// ----- life of a cluster: ownership that survives restore, claims, org, observe ---------------------

const ORG: &str = "ORG@AdobeOrg";
const PLATFORM: &str = "https://platform.adobe.io/";

/// Runs one step for `obj` after gathering the pass's facts as the operator does (the
/// credentials' org and endpoint, the record annotation, the claim index); returns the written
/// object and how many annotation writes were made.
async fn run_prepared(ctx: &Harness, obj: ExternalAudience, aep: &FakeAep) -> (ExternalAudience, Step, usize) {
    let store = FakeStatus::new(obj.clone());
    let mut pass = AudiencePass::new(&obj, ctx, &store);
    pass.with_credentials(ORG, PLATFORM);
    let decided = pass.decide_with_budget();
    let step = decided.step.clone();
    let out = pass.act(decided, aep).await.expect("step");
    pass.finish(out, false).await.expect("finish");
    let written = store.obj.lock().expect("obj").clone();
    let annotations = *store.annotation_writes.lock().expect("writes");
    (written, step, annotations)
}

fn record_for(obj: &ExternalAudience, cid: Option<&str>) -> crate::api::OwnershipRecord {
    crate::api::OwnershipRecord {
        v: 1,
        audience_id: "aud".into(),
        custom_audience_id: cid.map(str::to_owned),
        org_id: ORG.into(),
        platform_url: PLATFORM.into(),
        sandbox: "prod".into(),
        claimed_by: "the-original-uid".into(),
        claimed_at: "2026-01-01T00:00:00Z".into(),
        applied_spec_hash: Some(spec::updatable_hash(&obj.spec)),
        ingested_spec_hash: Some(spec::ingest_hash(&obj.spec, "loyalty")),
    }
}

/// An object as a restore brings it back: the record annotation, no status.
fn restored(cid: Option<&str>) -> ExternalAudience {
    let mut obj = object(ExternalAudienceStatus::default());
    obj.status = None;
    let record = record_for(&obj, cid).to_annotation();
    obj.annotations_mut()
        .insert(crate::api::OWNERSHIP_RECORD.to_owned(), record);
    obj
}

fn ups(id: &str, echoed: &str) -> UpsAudience {
    serde_json::from_value(json!({
        "id": id, "audienceId": echoed, "name": "loyalty", "imsOrgId": ORG,
        "sandbox": {"sandboxId": "s", "sandboxName": "prod", "type": "production", "default": true},
        "type": "ExternalSegment", "originName": "CUSTOM_UPLOAD", "lifecycleState": "published"
    }))
    .expect("ups")
}

/// Epoch seconds `n` hours before now.
fn hour_ago(n: i64) -> i64 {
    crate::controller::clock::now().0.as_second() - n * 3600
}

fn aep_run(id: &str, status: &str, created_at: i64) -> Run {
    serde_json::from_value(json!({"runId": id, "audienceId": "aud", "status": status, "createdAt": created_at}))
        .expect("run")
}

#[tokio::test]
async fn a_restored_object_reattaches_after_aep_confirms_it_and_owes_no_patch_and_no_run() {
    let ctx = context();
    let obj = restored(Some("k8s-the-original-uid"));
    let aep = FakeAep::default();
    aep.audience
        .lock()
        .expect("q")
        .push_back(Ok(ups("aud", "k8s-the-original-uid")));
    aep.runs.lock().expect("q").push_back(Ok(vec![
        aep_run("r0", "SUCCESS", hour_ago(2)),
        aep_run("r1", "SUCCESS", hour_ago(1)),
    ]));
    let (written, step, annotations) = run_prepared(&ctx, obj, &aep).await;
    assert_eq!(
        step,
        Step::Reattach {
            audience_id: "aud".into()
        }
    );
    assert_eq!(aep.mutating_calls(), 0, "reads only");
    let st = written.status.clone().expect("status");
    assert_eq!(st.audience_id.as_deref(), Some("aud"));
    assert_eq!(st.ownership, Some(crate::api::OwnershipProof::RestoreRecord));
    assert_eq!(
        st.custom_audience_id.as_deref(),
        Some("k8s-the-original-uid"),
        "the proof it was created with"
    );
    assert_eq!(
        st.last_run.as_ref().map(|r| r.run_id.as_str()),
        Some("r1"),
        "the latest run"
    );
    assert_eq!(st.run_counts.as_ref().map(|c| c.total), Some(2));
    assert!(st.claimed_at.is_some() && st.org_id.as_deref() == Some(ORG));
    // The record now names this object as the claimant.
    assert_eq!(annotations, 1);
    let record = crate::api::OwnershipRecord::parse(&written.annotations()[crate::api::OWNERSHIP_RECORD], "prod")
        .expect("record");
    assert_eq!(record.claimed_by, "u-1");
    // The next pass is idle and Ready: nothing owed.
    let mut next = written.clone();
    next.metadata.resource_version = Some("9".into());
    let store = FakeStatus::new(next.clone());
    let mut pass = AudiencePass::new(&next, &ctx, &store);
    pass.with_credentials(ORG, PLATFORM);
    let plan = pass.decide();
    assert!(matches!(plan.step, Step::Idle { next: Some(_), .. }), "{plan:?}");
    assert_eq!(plan.health.reason(), reasons::READY);
}

#[tokio::test]
async fn a_record_aep_does_not_confirm_sends_nothing_and_says_what_to_do() {
    // Another customAudienceId echoed: not this record's audience.
    let ctx = context();
    let aep = FakeAep::default();
    aep.audience
        .lock()
        .expect("q")
        .push_back(Ok(ups("aud", "k8s-someone-else")));
    let (written, _, annotations) = run_prepared(&ctx, restored(Some("k8s-the-original-uid")), &aep).await;
    let st = written.status.expect("status");
    assert!(st.audience_id.is_none() && annotations == 0);
    assert_eq!(
        reason(&st, "Stalled").as_deref(),
        Some(reasons::OWNERSHIP_NOT_CONFIRMED)
    );
    assert!(condition_of(&st, "Stalled").message.contains("remove the annotation"));
    // Gone from AEP.
    let aep = FakeAep::default();
    aep.audience
        .lock()
        .expect("q")
        .push_back(Err(err(Call::GetAudience, ErrorKind::NotFound)));
    let (written, _, _) = run_prepared(&ctx, restored(None), &aep).await;
    assert_eq!(
        reason(&written.status.expect("status"), "Stalled").as_deref(),
        Some(reasons::OWNERSHIP_NOT_CONFIRMED)
    );
    assert_eq!(aep.mutating_calls(), 0);
    // A record of another org: not even read in AEP.
    let mut other = restored(None);
    let mut rec = record_for(&other, None);
    rec.org_id = "OTHER@AdobeOrg".into();
    other
        .annotations_mut()
        .insert(crate::api::OWNERSHIP_RECORD.to_owned(), rec.to_annotation());
    let aep = FakeAep::default();
    let (written, _, _) = run_prepared(&ctx, other, &aep).await;
    assert_eq!(
        reason(&written.status.expect("status"), "Stalled").as_deref(),
        Some(reasons::ORGANIZATION_CHANGED)
    );
    assert!(
        aep.calls.lock().expect("calls").is_empty(),
        "nothing sent to either org"
    );
    // A record that does not parse: named, and nothing sent.
    let mut garbled = restored(None);
    garbled.annotations_mut().insert(
        crate::api::OWNERSHIP_RECORD.to_owned(),
        "{\"v\":1,\"audienceId\":\"../x\"}".into(),
    );
    let aep = FakeAep::default();
    let (written, _, _) = run_prepared(&ctx, garbled, &aep).await;
    let st = written.status.expect("status");
    assert_eq!(
        reason(&st, "Stalled").as_deref(),
        Some(reasons::INVALID_OWNERSHIP_RECORD)
    );
    assert!(
        condition_of(&st, "Stalled")
            .message
            .contains(crate::api::OWNERSHIP_RECORD)
    );
    assert!(aep.calls.lock().expect("calls").is_empty());
}

#[tokio::test]
async fn a_second_claimant_is_stalled_naming_the_owner_and_sends_nothing() {
    let ctx = context();
    // The owner, in the index with a recorded claim.
    let mut owner = object(ExternalAudienceStatus {
        org_id: Some(ORG.into()),
        claimed_at: Some(crate::controller::clock::now()),
        ownership: Some(crate::api::OwnershipProof::SpecAudienceId),
        ..ready()
    });
    owner.metadata.name = Some("owner".into());
    owner.spec.audience_id = Some("aud".into());
    ctx.claims.apply(&owner);
    // A second object naming the same audience, and a clone carrying the owner's record.
    let mut second = object(ExternalAudienceStatus::default());
    second.metadata.name = Some("second".into());
    second.spec.audience_id = Some("aud".into());
    let mut clone = restored(Some("k8s-u-1"));
    clone.metadata.name = Some("clone".into());
    for obj in [second, clone] {
        ctx.claims.apply(&obj);
        let aep = FakeAep::default();
        let (written, step, annotations) = run_prepared(&ctx, obj.clone(), &aep).await;
        assert!(
            matches!(step, Step::Hold { .. })
                && reason(written.status.as_ref().expect("status"), "Stalled").as_deref()
                    == Some(reasons::AUDIENCE_CLAIMED),
            "{step:?}"
        );
        assert!(
            aep.calls.lock().expect("calls").is_empty(),
            "nothing sent on its behalf"
        );
        assert_eq!(annotations, 0);
        let st = written.status.expect("status");
        assert!(
            condition_of(&st, "Stalled")
                .message
                .contains("ExternalAudience ns/owner")
        );
        assert!(st.audience_id.is_none());
    }
}

#[tokio::test]
async fn a_secret_naming_another_org_stops_the_object_before_any_request() {
    let ctx = context();
    for status in [
        ExternalAudienceStatus {
            org_id: Some("FIRST@AdobeOrg".into()),
            ..ready()
        },
        // A create in flight: its operation lives in the first org too.
        ExternalAudienceStatus {
            org_id: Some("FIRST@AdobeOrg".into()),
            operation_id: Some("op".into()),
            ..Default::default()
        },
        ExternalAudienceStatus {
            org_id: Some(ORG.into()),
            platform_url: Some("https://other.example/".into()),
            ..ready()
        },
    ] {
        let aep = FakeAep::default();
        let (written, step, _) = run_prepared(&ctx, object(status.clone()), &aep).await;
        assert!(
            matches!(step, Step::Hold { .. })
                && reason(written.status.as_ref().expect("status"), "Stalled").as_deref()
                    == Some(reasons::ORGANIZATION_CHANGED),
            "{step:?}"
        );
        assert!(
            aep.calls.lock().expect("calls").is_empty(),
            "nothing sent to either org"
        );
        let st = written.status.expect("status");
        assert_eq!(st.org_id, status.org_id, "the recorded org is kept");
    }
    // Before anything was sent, the org simply follows the Secret.
    let aep = FakeAep::default();
    aep.find_by_name.lock().expect("q").push_back(Ok(Vec::new()));
    aep.create
        .lock()
        .expect("q")
        .push_back(Ok(serde_json::from_value(json!({"operationId": "op"})).expect("answer")));
    let (written, step, _) = run_prepared(
        &ctx,
        object(ExternalAudienceStatus {
            org_id: Some("FIRST@AdobeOrg".into()),
            ..Default::default()
        }),
        &aep,
    )
    .await;
    assert_eq!(step, Step::Create);
    let st = written.status.expect("status");
    assert_eq!(
        (st.org_id.as_deref(), st.platform_url.as_deref()),
        (Some(ORG), Some(PLATFORM))
    );
}

#[tokio::test]
async fn observe_reads_reports_drift_and_never_sends_a_mutating_request() {
    let ctx = context();
    let mut obj = object(ExternalAudienceStatus::default());
    obj.spec.management_policy = crate::api::ManagementPolicy::Observe;
    obj.spec.audience_id = Some("aud".into());
    obj.spec.description = Some("what Git says".into());
    let mut found = ups("aud", "aud");
    found.description = Some("what AEP says".into());
    let aep = FakeAep::default();
    aep.audience.lock().expect("q").push_back(Ok(found));
    aep.runs
        .lock()
        .expect("q")
        .push_back(Ok(vec![aep_run("r1", "SUCCESS", 100)]));
    let (written, step, annotations) = run_prepared(&ctx, obj.clone(), &aep).await;
    assert_eq!(
        step,
        Step::Observe {
            audience_id: "aud".into()
        }
    );
    assert_eq!(aep.mutating_calls(), 0);
    assert_eq!(annotations, 0, "no ownership record for an observed audience");
    let st = written.status.clone().expect("status");
    assert_eq!(reason(&st, "Ready").as_deref(), Some(reasons::READY));
    let in_sync = condition_of(&st, "InSync");
    assert_eq!(
        (in_sync.status.as_str(), in_sync.reason.as_str()),
        ("False", reasons::DRIFTED)
    );
    assert!(in_sync.message.contains("description"));
    assert_eq!(
        st.observed.as_ref().map(|o| o.differences.clone()),
        Some(vec!["description".to_owned()])
    );
    assert_eq!(st.ownership, Some(crate::api::OwnershipProof::Observed));
    assert!(st.data_expiration.is_none());
    // A run request annotation changes nothing for an observer.
    let mut requested = written.clone();
    requested
        .annotations_mut()
        .insert(crate::api::RUN_REQUESTED_AT.to_owned(), "now".into());
    let aep = FakeAep::default();
    let (_, step, _) = run_prepared(&ctx, requested, &aep).await;
    assert!(
        matches!(step, Step::Idle { .. }),
        "nothing is read before the next check: {step:?}"
    );
    assert!(aep.calls.lock().expect("calls").is_empty());
    // Switched to Manage: the audience is taken over (a claim), without a run.
    let mut managed = written.clone();
    managed.spec.management_policy = crate::api::ManagementPolicy::Manage;
    let aep = FakeAep::default();
    aep.audience.lock().expect("q").push_back(Ok(ups("aud", "aud")));
    let (written, step, _) = run_prepared(&ctx, managed, &aep).await;
    assert_eq!(
        step,
        Step::Adopt {
            audience_id: "aud".into()
        }
    );
    let st = written.status.expect("status");
    assert_eq!(st.ownership, Some(crate::api::OwnershipProof::SpecAudienceId));
    assert!(st.observed.is_none() && st.conditions.iter().all(|c| c.type_ != "InSync"));
    assert!(
        spec::ingest_hash_matches(st.ingested_spec_hash.as_deref(), &written.spec, "loyalty"),
        "no run owed"
    );
}

#[tokio::test]
async fn a_conflicted_marker_write_gives_the_run_budget_back() {
    let ctx = context_with(1);
    let obj = object(ExternalAudienceStatus {
        org_id: Some(ORG.into()),
        ..created()
    });
    let newer = {
        let mut o = obj.clone();
        o.metadata.resource_version = Some("7".into());
        o
    };
    let store = FakeStatus::new(newer);
    let aep = FakeAep::default();
    let mut pass = AudiencePass::new(&obj, &ctx, &store);
    let result = pass
        .act(
            decision(Step::StartRun {
                audience_id: "aud".into(),
                scheduled_for: None,
            }),
            &aep,
        )
        .await;
    assert!(matches!(result, Err(Error::Stale)));
    // The one run of the day is still there for another object.
    let now = crate::controller::clock::now().0;
    let grant = ctx.budget.claim(
        ORG,
        "prod",
        &("ns".to_owned(), "other".to_owned()),
        crate::controller::budget::Priority::Demand,
        now,
        now,
        |_| (0, false),
    );
    assert_eq!(grant, crate::controller::budget::Grant::Go);
}

#[tokio::test]
async fn a_marker_from_a_clock_ahead_never_shortens_the_settle_window() {
    let ahead = crate::controller::clock::now().0 + jiff::SignedDuration::from_hours(1);
    let aep = FakeAep::default();
    aep.find_by_custom_id.lock().expect("q").push_back(Ok(Vec::new()));
    aep.find_by_name.lock().expect("q").push_back(Ok(Vec::new()));
    let status = ExternalAudienceStatus {
        create_pending_since: Some(Time(ahead)),
        custom_audience_id: Some("k8s-u-1".into()),
        ..Default::default()
    };
    let (st, step) = run_decided(status, &aep).await;
    assert!(matches!(step, Step::RecoverCreate { .. }), "{step:?}");
    assert_eq!(aep.mutating_calls(), 0, "no create before the window has passed");
    assert_eq!(reason(&st, "Reconciling").as_deref(), Some(reasons::CONFIRMING_CREATE));
}

#[tokio::test]
async fn a_resent_create_answered_409_keeps_the_marker_and_looks_for_proof_again() {
    let long_ago = crate::controller::clock::now().0 - jiff::SignedDuration::from_hours(1);
    let aep = FakeAep::default();
    aep.find_by_custom_id.lock().expect("q").push_back(Ok(Vec::new()));
    aep.find_by_name.lock().expect("q").push_back(Ok(Vec::new()));
    aep.create
        .lock()
        .expect("q")
        .push_back(Err(err(Call::CreateAudience, ErrorKind::Conflict)));
    let status = ExternalAudienceStatus {
        create_pending_since: Some(Time(long_ago)),
        custom_audience_id: Some("k8s-u-1".into()),
        ..Default::default()
    };
    let (st, _, _) = run_step(status, recover(Resend::AfterLookup), &aep).await;
    assert_eq!(aep.mutating_calls(), 1, "the create was sent again once");
    assert!(
        st.create_pending_since.is_some(),
        "the marker stays: the first create may have made it"
    );
    assert_eq!(reason(&st, "Reconciling").as_deref(), Some(reasons::CONFIRMING_CREATE));
    assert_ne!(reason(&st, "Stalled").as_deref(), Some(reasons::NAME_TAKEN));
}

#[tokio::test]
async fn a_lost_or_deleted_audience_is_never_recovered_by_its_custom_id() {
    let mut deleted = ups("gone", "k8s-u-1");
    deleted.lifecycle_state = Some("deleted".into());
    let lost = ups("lost", "k8s-u-1");
    let aep = FakeAep::default();
    aep.find_by_custom_id
        .lock()
        .expect("q")
        .push_back(Ok(vec![deleted, lost]));
    aep.find_by_name.lock().expect("q").push_back(Ok(Vec::new()));
    let status = ExternalAudienceStatus {
        create_pending_since: Some(crate::controller::clock::now()),
        custom_audience_id: Some("k8s-u-1".into()),
        lost_audience_ids: vec!["lost".into()],
        ..Default::default()
    };
    let (st, _) = run_decided(status, &aep).await;
    assert!(
        st.audience_id.is_none(),
        "neither is this object's live audience: {st:?}"
    );
    assert!(st.create_pending_since.is_some());
}

#[tokio::test]
async fn a_404_on_the_audience_routes_is_confirmed_before_it_counts_as_gone() {
    // PATCH says 404, but the audience exists: try again, never re-create.
    let aep = FakeAep::default();
    aep.patch
        .lock()
        .expect("q")
        .push_back(Err(err(Call::PatchAudience, ErrorKind::NotFound)));
    aep.audience.lock().expect("q").push_back(Ok(ups("aud", "aud")));
    let (st, next, _) = run_step(
        ExternalAudienceStatus {
            applied_spec_hash: None,
            ..created()
        },
        Step::Update {
            audience_id: "aud".into(),
        },
        &aep,
    )
    .await;
    assert_eq!(st.audience_id.as_deref(), Some("aud"));
    assert!(st.lost_audience_ids.is_empty());
    assert_eq!(reason(&st, "Reconciling").as_deref(), Some(reasons::RETRYING));
    assert!(matches!(next, Next::After(_)));
    // The run is unknown but the audience exists: the run is reported failed, never re-started.
    let aep = FakeAep::default();
    aep.run
        .lock()
        .expect("q")
        .push_back(Err(err(Call::GetRun, ErrorKind::NotFound)));
    aep.audience.lock().expect("q").push_back(Ok(ups("aud", "aud")));
    let (st, _, _) = run_step(
        ready(),
        Step::PollRun {
            audience_id: "aud".into(),
            run_id: "r1".into(),
        },
        &aep,
    )
    .await;
    assert_eq!(st.last_run.as_ref().map(|r| r.status), Some(RunState::Failed));
    assert_eq!(reason(&st, "Stalled").as_deref(), Some(reasons::RUN_FAILED));
    assert_eq!(aep.mutating_calls(), 0);
}

#[tokio::test]
async fn the_sandbox_cap_is_settled_by_elimination_not_by_aep_wording() {
    let refused = || Err(err(Call::StartRun, ErrorKind::NotNow { retry_after: None }));
    let claim_other = |ctx: &Harness| {
        let now = crate::controller::clock::now().0;
        ctx.budget.claim(
            ORG,
            "prod",
            &("ns".to_owned(), "other".to_owned()),
            crate::controller::budget::Priority::Demand,
            now,
            now,
            |_| (0, false),
        )
    };
    // No run in progress, under the per-audience limit: the sandbox's cap.
    let ctx = context();
    let aep = FakeAep::default();
    aep.start_run.lock().expect("q").push_back(refused());
    aep.runs
        .lock()
        .expect("q")
        .push_back(Ok(vec![aep_run("r0", "SUCCESS", 100)]));
    let st = run_step_in(
        &ctx,
        object(ExternalAudienceStatus {
            org_id: Some(ORG.into()),
            ..created()
        }),
        Step::StartRun {
            audience_id: "aud".into(),
            scheduled_for: None,
        },
        &aep,
    )
    .await;
    assert_eq!(reason(&st, "Reconciling").as_deref(), Some(reasons::RUN_DEFERRED));
    assert!(
        matches!(claim_other(&ctx), crate::controller::budget::Grant::Wait { .. }),
        "the day is spent for the sandbox"
    );
    // A run in progress explains the refusal: the sandbox's budget is untouched.
    let ctx = context();
    let aep = FakeAep::default();
    aep.start_run.lock().expect("q").push_back(refused());
    aep.runs
        .lock()
        .expect("q")
        .push_back(Ok(vec![aep_run("r0", "PROCESSING", 100)]));
    let st = run_step_in(
        &ctx,
        object(ExternalAudienceStatus {
            org_id: Some(ORG.into()),
            ..created()
        }),
        Step::StartRun {
            audience_id: "aud".into(),
            scheduled_for: None,
        },
        &aep,
    )
    .await;
    assert_eq!(reason(&st, "Reconciling").as_deref(), Some(reasons::RUN_DEFERRED));
    assert_eq!(claim_other(&ctx), crate::controller::budget::Grant::Go);
}

#[tokio::test]
async fn a_schedule_added_to_an_existing_object_owes_no_run_for_the_times_before_it() {
    let ctx = context();
    let mut obj = object(ExternalAudienceStatus {
        last_run: ready().last_run.map(|r| IngestionRun {
            status: RunState::Success,
            ..r
        }),
        ..ready()
    });
    obj.metadata.creation_timestamp = Some(Time(
        crate::controller::clock::now().0 - jiff::SignedDuration::from_hours(5),
    ));
    if let Some(i) = obj.spec.ingestion.as_mut() {
        i.schedule = Some("0 * * * *".into());
    }
    let store = FakeStatus::new(obj.clone());
    let pass = AudiencePass::new(&obj, &ctx, &store);
    assert_eq!(
        decide::schedule_due(&pass.facts()),
        None,
        "hours since the object's creation owe nothing"
    );
    assert!(
        matches!(pass.decide().step, Step::ScheduleDriftCheck { .. }),
        "{:?}",
        pass.decide()
    );
    // Once the schedule was first seen, its times count from then.
    let mut seen = obj.clone();
    if let Some(st) = seen.status.as_mut() {
        st.schedule_since = Some(Time(
            crate::controller::clock::now().0 - jiff::SignedDuration::from_hours(2),
        ));
    }
    let pass = AudiencePass::new(&seen, &ctx, &store);
    assert!(decide::schedule_due(&pass.facts()).is_some());
}
