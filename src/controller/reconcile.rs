//! One reconcile pass of an `ExternalAudience`, behind the finalizer (the steps themselves are in
//! `steps.rs`):
//!
//! * `apply`: load credentials → [`plan::next_step`] → run that one step (at most one mutating AEP
//!   call) → write the whole status right after it → return when to come back;
//! * `cleanup`: delete the audience in AEP (or orphan it) and release the finalizer.
//!
//! Non-idempotent calls (create, start run) are guarded by a pending marker written with an
//! optimistic-concurrency precondition *before* the call: a stale cached object makes the write
//! conflict, so nothing is sent twice. A pass that finds a marker without the id looks before it
//! creates. Polls return a requeue with jitter; nothing sleeps here.

use std::{sync::Arc, time::Duration};

use jiff::Timestamp;
use k8s_openapi::{api::core::v1::ObjectReference, apimachinery::pkg::apis::meta::v1::Time};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        events::EventType,
        finalizer::{Event as FinalizerEvent, finalizer},
    },
};
use serde_json::json;

use super::{
    Error,
    context::Context,
    credentials::{self, CredentialsError},
    plan::{self, Facts, Step},
};
use crate::{
    aep::{self, ErrorKind, OperationStatus, Session},
    api::{
        DeletionPolicy, ExternalAudience, ExternalAudienceStatus, FINALIZER, RUN_REQUESTED_AT, RunState, events,
        reasons,
    },
    status::{Health, conditions_for, stable_message},
};

/// When to come back after a pass.
#[derive(Clone, Copy, Debug)]
pub(super) enum Next {
    /// Requeue after this long (jittered); the pass succeeded.
    After(Duration),
    /// The pass hit a transient error: per-object exponential backoff, at least `Retry-After`.
    Backoff(Option<Duration>),
    /// Nothing to do until the object (or its Secret) changes.
    Await,
}

pub(super) struct Outcome {
    pub(super) health: Health,
    pub(super) next: Next,
}

impl Outcome {
    pub(super) fn new(health: Health, next: Next) -> Self {
        Outcome { health, next }
    }
}

/// Entry point for the kube-runtime `Controller`.
#[tracing::instrument(skip_all, fields(name = %obj.name_any(), namespace = obj.namespace().unwrap_or_default()))]
pub async fn reconcile(obj: Arc<ExternalAudience>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = obj.namespace().ok_or(Error::MissingNamespace)?;
    let api = Api::<ExternalAudience>::namespaced(ctx.client.clone(), &ns);
    let started = std::time::Instant::now();
    let result = finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            FinalizerEvent::Apply(obj) => apply(&obj, &ctx, &api).await,
            FinalizerEvent::Cleanup(obj) => cleanup(&obj, &ctx, &api).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.observe_reconcile(started.elapsed());
    result
}

/// Per-object backoff after an unexpected error (kube API failures, finalizer patch errors).
pub fn error_policy(obj: Arc<ExternalAudience>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_failures
        .get_or_create(&crate::metrics::CategoryLabels {
            category: error.category(),
        })
        .inc();
    tracing::warn!(name = %obj.name_any(), error = %error, "Reconcile failed");
    let key = (obj.namespace().unwrap_or_default(), obj.name_any());
    Action::requeue(ctx.backoff(key, error.retry_after()))
}

pub(super) struct Pass<'a> {
    pub(super) ctx: &'a Context,
    pub(super) api: &'a Api<ExternalAudience>,
    pub(super) obj: &'a ExternalAudience,
    pub(super) name: String,
    pub(super) generation: i64,
    pub(super) reference: ObjectReference,
    pub(super) status: ExternalAudienceStatus,
    pub(super) original: ExternalAudienceStatus,
    /// The object's latest resourceVersion known to this pass.
    pub(super) rv: Option<String>,
    /// Whether the next status write is conditioned on `rv`. True for the first write of a pass
    /// (its base may be stale) and for markers; false for writes that record what our own
    /// confirmed base led to (facts that must not be dropped).
    pub(super) conditioned: bool,
}

pub(super) fn now() -> Time {
    Time(Timestamp::now())
}

async fn apply(cached: &ExternalAudience, ctx: &Context, api: &Api<ExternalAudience>) -> Result<Action, Error> {
    match apply_once(cached, ctx, api).await {
        // Our base was stale or someone changed the object meanwhile: re-plan from a fresh
        // copy soon, without growing the error backoff.
        Err(Error::Stale) => Ok(Action::requeue(Duration::from_millis(100))),
        other => other,
    }
}

async fn apply_once(cached: &ExternalAudience, ctx: &Context, api: &Api<ExternalAudience>) -> Result<Action, Error> {
    let ns = cached.namespace().ok_or(Error::MissingNamespace)?;
    let secret_name = &cached.spec.credentials_secret_ref.name;
    let creds = match credentials::load(&ctx.client, &ns, secret_name).await {
        Ok(c) => {
            ctx.remember_credentials(&ns, secret_name, &c);
            c
        }
        Err(e @ CredentialsError::Kube { .. }) => return Err(Error::Credentials(Box::new(e))),
        Err(e) => {
            let reason = match e {
                CredentialsError::Missing { .. } => reasons::CREDENTIALS_MISSING,
                _ => reasons::CREDENTIALS_INVALID,
            };
            let out = Outcome::new(
                Health::stalled(reason, e.to_string()),
                Next::After(ctx.timing.credentials_retry),
            );
            return Pass::new(cached, ctx, api)
                .finish(
                    out,
                    Some((EventType::Warning, events::CREDENTIALS_ERROR, e.to_string())),
                )
                .await;
        }
    };
    let session = ctx.aep.session(&creds, &cached.spec.sandbox);
    let mut step = Pass::new(cached, ctx, api).plan();
    // The cached object can predate our own last status write. Before any step with an AEP side
    // effect, decide again from a fresh read (one GET), so a stale cache never repeats a call.
    let fresh;
    let mut obj = cached;
    if step.mutates_aep() {
        fresh = api.get(&cached.name_any()).await.map_err(Error::Kube)?;
        if fresh.resource_version() != cached.resource_version() {
            obj = &fresh;
            step = Pass::new(obj, ctx, api).plan();
        }
    }
    let mut pass = Pass::new(obj, ctx, api);
    tracing::debug!(?step, "Planned step");
    ctx.metrics.count_step(step.name());
    let out = pass.run(step, &session).await?;
    pass.finish(out, None).await
}

impl<'a> Pass<'a> {
    fn new(obj: &'a ExternalAudience, ctx: &'a Context, api: &'a Api<ExternalAudience>) -> Self {
        let status = obj.status.clone().unwrap_or_default();
        Pass {
            ctx,
            api,
            obj,
            name: obj.name_any(),
            generation: obj.meta().generation.unwrap_or_default(),
            reference: obj.object_ref(&()),
            original: status.clone(),
            rv: obj.resource_version(),
            conditioned: true,
            status,
        }
    }

    pub(super) fn plan(&self) -> Step {
        plan::next_step(&self.facts())
    }

    pub(super) fn audience_name(&self) -> &str {
        self.obj.spec.audience_name(&self.name)
    }

    pub(super) fn run_request(&self) -> Option<&str> {
        self.obj.annotations().get(RUN_REQUESTED_AT).map(String::as_str)
    }

    pub(super) fn facts(&self) -> Facts<'_> {
        Facts {
            generation: self.generation,
            audience_name: self.audience_name(),
            spec: &self.obj.spec,
            status: &self.status,
            run_request: self.run_request(),
        }
    }

    pub(super) fn key(&self) -> (String, String) {
        (self.obj.namespace().unwrap_or_default(), self.name.clone())
    }

    pub(super) async fn event(&self, type_: EventType, reason: &str, note: String) {
        self.ctx.event(&self.reference, type_, reason, reason, note).await;
    }

    /// Writes status and decides the requeue.
    async fn finish(&mut self, out: Outcome, event: Option<(EventType, &str, String)>) -> Result<Action, Error> {
        self.status.observed_generation = Some(self.generation);
        self.status.conditions = conditions_for(&out.health, self.generation, &self.original.conditions, &now());
        if self.status != self.original {
            self.write_status().await?;
            // Events for failures are emitted only when the reported state changes: no event storms.
            if let Some((type_, reason, note)) = event {
                self.event(type_, reason, note).await;
            }
        }
        let key = self.key();
        Ok(match out.next {
            Next::After(d) => {
                self.ctx.reset_backoff(&key);
                Action::requeue(Context::jitter(d))
            }
            Next::Backoff(retry_after) => Action::requeue(self.ctx.backoff(key, retry_after)),
            Next::Await => {
                self.ctx.reset_backoff(&key);
                Action::await_change()
            }
        })
    }

    /// Replaces the whole status (JSON patch on `/status`). The first write of a pass is
    /// conditioned on the resourceVersion the pass decided from: a stale base conflicts
    /// ([`Error::Stale`]) instead of overwriting newer status.
    pub(super) async fn write_status(&mut self) -> Result<(), Error> {
        let mut ops = Vec::new();
        if self.conditioned {
            let rv = self.rv.as_deref().ok_or(Error::MissingResourceVersion)?;
            ops.push(json!({"op": "replace", "path": "/metadata/resourceVersion", "value": rv}));
        }
        ops.push(json!({"op": "add", "path": "/status", "value": self.status}));
        let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops)).map_err(Error::Serde)?;
        let updated = match self
            .api
            .patch_status(&self.name, &PatchParams::default(), &Patch::Json::<()>(patch))
            .await
        {
            Ok(u) => u,
            Err(kube::Error::Api(s)) if s.code == 409 => {
                tracing::debug!("Status write conflicted; re-planning from a fresh copy");
                return Err(Error::Stale);
            }
            Err(e) => return Err(Error::Kube(e)),
        };
        self.conditioned = false;
        self.rv = updated.resource_version();
        self.original = updated.status.unwrap_or_default();
        self.status = self.original.clone();
        Ok(())
    }

    /// Persists a pending marker before a non-idempotent call, conditioned on the object not
    /// having changed since it was read. `Ok(false)`: it had; the call is not made this pass.
    pub(super) async fn write_marker(&mut self) -> Result<bool, Error> {
        self.conditioned = true;
        match self.write_status().await {
            Ok(()) => Ok(true),
            Err(Error::Stale) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn run(&mut self, step: Step, s: &Session) -> Result<Outcome, Error> {
        match step {
            Step::Create => self.create(s).await,
            Step::RecoverCreate => self.recover_create(s).await,
            Step::PollOperation { operation_id } => self.poll_operation(s, &operation_id).await,
            Step::Adopt { audience_id } => self.adopt(s, &audience_id).await,
            Step::Update { audience_id } => self.update(s, &audience_id).await,
            Step::PollRun { audience_id, run_id } => self.poll_run(s, &audience_id, &run_id).await,
            Step::RecoverRun { audience_id } => self.recover_run(s, &audience_id).await,
            Step::StartRun { audience_id } => self.start_run(s, &audience_id).await,
            Step::Wait => Ok(Outcome::new(
                self.reported_stall().unwrap_or_else(|| self.current_health()),
                Next::Await,
            )),
            Step::Idle { audience_id } => self.idle(s, &audience_id).await,
        }
    }

    /// The terminal problem already reported for this generation, kept as is while waiting.
    pub(super) fn reported_stall(&self) -> Option<Health> {
        self.status
            .conditions
            .iter()
            .find(|c| c.type_ == "Stalled" && c.status == "True" && c.observed_generation == Some(self.generation))
            .map(|c| Health::stalled(stalled_reason_const(&c.reason), c.message.clone()))
    }

    /// Health implied by the recorded state, for passes that only moved it forward.
    pub(super) fn current_health(&self) -> Health {
        let st = &self.status;
        if st.audience_id.is_none() {
            return Health::progressing(
                reasons::CREATING,
                format!("Creating audience {:?} in AEP", self.audience_name()),
            );
        }
        if st.applied_spec_hash.as_deref() != Some(&plan::updatable_hash(&self.obj.spec)) {
            return Health::progressing(reasons::UPDATING, "Updating the audience in AEP");
        }
        if let Some(run) = &st.last_run
            && run.status == RunState::Processing
        {
            return Health::progressing(
                reasons::RUN_IN_PROGRESS,
                format!("Ingestion run {} is in progress", run.run_id),
            );
        }
        if st.run_pending.is_some() || plan::run_owed(&self.facts()) {
            return Health::progressing(reasons::RUN_PENDING, "An ingestion run is owed for this spec");
        }
        if let Some(run) = &st.last_run
            && run.status == RunState::Failed
        {
            let msg = run.message.clone().unwrap_or_else(|| "no message from AEP".into());
            return Health::stalled(
                reasons::RUN_FAILED,
                format!(
                    "Ingestion run {} failed: {msg}. Runs are not retried automatically (daily quota): change the spec or set the {RUN_REQUESTED_AT} annotation to a new value",
                    run.run_id
                ),
            );
        }
        let id = st.audience_id.as_deref().unwrap_or_default();
        match &st.last_run {
            Some(run) => Health::ready(format!(
                "Audience {id} is in sync; ingestion run {} succeeded",
                run.run_id
            )),
            None => Health::ready(format!(
                "Audience {id} is in sync (adopted; no ingestion run requested)"
            )),
        }
    }

    /// Maps an AEP error to a reported outcome. `what` says which call failed.
    pub(super) fn failure(&self, e: &aep::Error, what: &str) -> (Outcome, Option<(EventType, &'static str, String)>) {
        let msg = stable_message(&format!("{what}: {}", e.message()));
        let t = &self.ctx.timing;
        // (stalled?, condition reason, when to come back, event reason)
        let (stalled, reason, next, event) = match e.kind() {
            ErrorKind::Retryable { retry_after } => {
                (false, reasons::RETRYING, Next::Backoff(retry_after), events::AEP_ERROR)
            }
            ErrorKind::NotNow { retry_after } => {
                let d = retry_after.map_or(t.deferred_retry, |r| r.max(t.deferred_retry));
                (false, reasons::RUN_DEFERRED, Next::After(d), events::RUN_DEFERRED)
            }
            ErrorKind::Terminal | ErrorKind::Conflict => (true, reasons::REJECTED, Next::Await, events::AEP_ERROR),
            ErrorKind::PermissionDenied => (
                true,
                reasons::PERMISSION_DENIED,
                Next::After(t.credentials_retry),
                events::AEP_ERROR,
            ),
            ErrorKind::Unauthorized => (
                true,
                reasons::CREDENTIALS_INVALID,
                Next::After(t.credentials_retry),
                events::CREDENTIALS_ERROR,
            ),
            ErrorKind::NotFound => (true, reasons::AUDIENCE_NOT_FOUND, Next::Await, events::AEP_ERROR),
            ErrorKind::OutcomeUnknown => (
                false,
                reasons::RETRYING,
                Next::After(t.operation_poll),
                events::AEP_ERROR,
            ),
        };
        let health = if stalled {
            Health::stalled(reason, msg.clone())
        } else {
            Health::progressing(reason, msg.clone())
        };
        (Outcome::new(health, next), Some((EventType::Warning, event, msg)))
    }

    pub(super) async fn report(&mut self, e: &aep::Error, what: &str) -> Result<Outcome, Error> {
        let (out, event) = self.failure(e, what);
        tracing::warn!(call = e.call().as_str(), kind = e.kind().as_str(), status = ?e.status(), "AEP call failed");
        self.publish(out, event).await
    }

    /// Writes the outcome's conditions now, so that the status and the event agree (finish()
    /// then sees no change). The event is emitted only when the reported state changed.
    pub(super) async fn publish(
        &mut self,
        out: Outcome,
        event: Option<(EventType, &str, String)>,
    ) -> Result<Outcome, Error> {
        self.status.observed_generation = Some(self.generation);
        self.status.conditions = conditions_for(&out.health, self.generation, &self.original.conditions, &now());
        if self.status != self.original {
            self.write_status().await?;
            if let Some((type_, reason, note)) = event {
                self.event(type_, reason, note).await;
            }
        }
        Ok(out)
    }
}

fn stalled_reason_const(reason: &str) -> &'static str {
    [
        reasons::REJECTED,
        reasons::OPERATION_FAILED,
        reasons::NAME_TAKEN,
        reasons::AUDIENCE_NOT_FOUND,
        reasons::RUN_FAILED,
        reasons::PERMISSION_DENIED,
        reasons::CREDENTIALS_MISSING,
        reasons::CREDENTIALS_INVALID,
        reasons::DELETE_REFUSED,
    ]
    .into_iter()
    .find(|r| *r == reason)
    .unwrap_or(reasons::REJECTED)
}

// ----- cleanup ----------------------------------------------------------------------------------

async fn cleanup(obj: &ExternalAudience, ctx: &Context, api: &Api<ExternalAudience>) -> Result<Action, Error> {
    let mut pass = Pass::new(obj, ctx, api);
    let ns = obj.namespace().ok_or(Error::MissingNamespace)?;
    let secret = &obj.spec.credentials_secret_ref.name;
    let status = pass.status.clone();
    let never_created =
        status.audience_id.is_none() && status.operation_id.is_none() && status.create_pending_since.is_none();
    if never_created {
        return Ok(Action::await_change());
    }
    if obj.spec.deletion_policy == DeletionPolicy::Orphan {
        let note = match &status.audience_id {
            Some(id) => format!("Left audience {id} in AEP (deletionPolicy: Orphan)"),
            None => "Released the object; an audience being created is left in AEP (deletionPolicy: Orphan)".to_owned(),
        };
        pass.event(EventType::Normal, events::AUDIENCE_ORPHANED, note).await;
        return Ok(Action::await_change());
    }
    let creds = match credentials::load(&ctx.client, &ns, secret).await {
        Ok(c) => c,
        Err(CredentialsError::Kube { source, .. }) => return Err(Error::Kube(source)),
        Err(e) => {
            match ctx.recall_credentials(&ns, secret) {
                Some(c) => c,
                None => {
                    // Without credentials nothing can be deleted; holding the finalizer forever would
                    // block namespace deletion, so release and say so loudly.
                    pass.event(
                    EventType::Warning,
                    events::AUDIENCE_ORPHANED,
                    format!("Cannot delete the audience in AEP: {e}; releasing the object and leaving the audience in AEP"),
                )
                .await;
                    return Ok(Action::await_change());
                }
            }
        }
    };
    let s = ctx.aep.session(&creds, &obj.spec.sandbox);
    let audience_id = match status.audience_id.clone() {
        Some(id) => Some(id),
        None => match &status.operation_id {
            Some(op) => match s.get_operation(op).await {
                Ok(op) if op.status == OperationStatus::Success => op.audience_id,
                Ok(op) if op.status == OperationStatus::Failed => None,
                Ok(_) => return Err(Error::CreateInFlight),
                Err(e) => return Err(Error::Aep(Box::new(e))),
            },
            None => s
                .find_audiences_by_name(obj.spec.audience_name(&pass.name))
                .await
                .map_err(|e| Error::Aep(Box::new(e)))?
                .first()
                .map(|a| a.id.clone()),
        },
    };
    let Some(audience_id) = audience_id else {
        return Ok(Action::await_change());
    };
    match s.delete_audience(&audience_id).await {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => {
            let msg = stable_message(&format!(
                "AEP refused to delete audience {audience_id}: {}",
                e.message()
            ));
            let out = Outcome::new(Health::stalled(reasons::DELETE_REFUSED, msg.clone()), Next::Await);
            pass.publish(out, Some((EventType::Warning, events::DELETE_REFUSED, msg)))
                .await?;
            // Err keeps the finalizer; error_policy backs off.
            return Err(Error::Aep(Box::new(e)));
        }
    }
    tracing::info!(audience_id = %audience_id, "Deleted audience");
    pass.event(
        EventType::Normal,
        events::AUDIENCE_DELETED,
        format!("Deleted audience {audience_id} in AEP"),
    )
    .await;
    Ok(Action::await_change())
}
