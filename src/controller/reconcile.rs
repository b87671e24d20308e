//! One reconcile pass of an `ExternalAudience`, behind the finalizer (the steps themselves are in
//! `steps.rs`, deletion in `cleanup.rs`):
//!
//! * `apply`: load credentials → [`plan::next_step`] → run that one step (at most one mutating AEP
//!   call) → write the whole status right after it → return when to come back;
//! * `cleanup`: delete the audience this object provably owns in AEP (or orphan it) and release
//!   the finalizer.
//!
//! Non-idempotent calls (create, start run) are guarded by a pending marker written with an
//! optimistic-concurrency precondition *before* the call: a stale cached object makes the write
//! conflict, so nothing is sent twice. A pass that finds a marker without the id looks for proof
//! before it sends again. Polls return a requeue with jitter; nothing sleeps here.
//!
//! The one write path is [`Pass::finish`]: the health comes from the plan of the status the step
//! left (or from the step's own failure), conditions and `status.blocked` follow from it, and an
//! event is published only when the written status changed.

use std::{sync::Arc, time::Duration};

use jiff::Timestamp;
use k8s_openapi::{api::core::v1::ObjectReference, apimachinery::pkg::apis::meta::v1::Time};
use kube::{
    Api, Resource, ResourceExt,
    runtime::{
        controller::Action,
        events::EventType,
        finalizer::{Event as FinalizerEvent, finalizer},
    },
};
use serde_json::json;

use super::{
    Error,
    claims::{self, Claim},
    context::Context,
    credentials::{self, CredentialsError},
    expiry,
    plan::{self, Endpoint, Facts, Plan, Step},
    schedule::Schedule,
    seams::{AepApi, StatusApi},
};
use crate::{
    aep::{self, ErrorKind},
    api::{
        Blocked, ExternalAudience, ExternalAudienceStatus, FINALIZER, MANAGER, OWNERSHIP_RECORD, OwnershipProof,
        OwnershipRecord, PAUSED, RETRY_CREATE, RUN_REQUESTED_AT, conditions, custom_audience_id, events, reasons,
    },
    status::{Health, conditions_for, stable_message, with_condition, with_paused, without_condition},
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
    /// Requeue after exactly this long (a wait until a known time, e.g. the next run budget).
    Exactly(Duration),
}

/// An event to publish with a status change.
pub(super) type Note = (EventType, &'static str, String);

/// What a step concluded.
pub(super) struct Outcome {
    /// The health to report; `None` means what the plan implies for the status the step left.
    pub(super) health: Option<Health>,
    pub(super) next: Next,
    /// Record the (stalled) health as blocking this generation (`status.blocked`).
    pub(super) block: bool,
    /// Published only when the status write changed something (no event storms).
    pub(super) event: Option<Note>,
}

impl Outcome {
    /// The step moved the state forward; the plan of the new state says what to show.
    pub(super) fn planned(next: Next) -> Self {
        Outcome {
            health: None,
            next,
            block: false,
            event: None,
        }
    }

    /// The step ends with this health.
    pub(super) fn with(health: Health, next: Next) -> Self {
        Outcome {
            health: Some(health),
            next,
            block: false,
            event: None,
        }
    }

    /// A problem only a change can resolve: Stalled, recorded for this generation, and a
    /// Warning event.
    pub(super) fn blocked(reason: &'static str, message: String, event: &'static str) -> Self {
        Outcome {
            health: Some(Health::stalled(reason, message.clone())),
            next: Next::Await,
            block: true,
            event: Some((EventType::Warning, event, message)),
        }
    }

    pub(super) fn note(mut self, type_: EventType, reason: &'static str, note: String) -> Self {
        self.event = Some((type_, reason, note));
        self
    }
}

/// Entry point for the kube-runtime `Controller`.
#[tracing::instrument(skip_all, fields(name = %obj.name_any(), namespace = obj.namespace().unwrap_or_default()))]
pub async fn reconcile(obj: Arc<ExternalAudience>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = obj.namespace().ok_or(Error::MissingNamespace)?;
    let api = Api::<ExternalAudience>::namespaced(ctx.client.clone(), &ns);
    let started = std::time::Instant::now();
    let cleaned_up = std::sync::atomic::AtomicBool::new(false);
    let secret = obj.spec.credentials_secret_ref.name.clone();
    let result = finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            FinalizerEvent::Apply(obj) => apply(&obj, &ctx, &api).await,
            FinalizerEvent::Cleanup(obj) => {
                let done = super::cleanup::cleanup(&obj, &ctx, &api).await;
                cleaned_up.store(done.is_ok(), std::sync::atomic::Ordering::Relaxed);
                done
            }
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    if result.is_ok() && cleaned_up.load(std::sync::atomic::Ordering::Relaxed) {
        // This object's finalizer is gone: of objects that finished at the same moment, each saw
        // the others still holding the Secret before; now the last of them sees none.
        for attempt in 1..=3u64 {
            match super::cleanup::release_unused_secret(&ctx, &ns, &secret, None).await {
                Ok(()) => break,
                Err(e) if attempt == 3 => tracing::warn!(error = %e, "Could not release the credentials Secret"),
                Err(_) => tokio::time::sleep(Duration::from_millis(200 * attempt)).await,
            }
        }
    }
    ctx.metrics.observe_reconcile(started.elapsed());
    result
}

/// Per-object backoff after an error (kube API failures, AEP failures during deletion); a pass
/// that only waits for AEP comes back after its own delay and does not grow the backoff.
pub fn error_policy(obj: Arc<ExternalAudience>, error: &Error, ctx: Arc<Context>) -> Action {
    if let Some(delay) = error.waiting() {
        return Action::requeue(Context::jitter(delay));
    }
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
    pub(super) api: &'a dyn StatusApi,
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
    /// The org and endpoint of the credentials this pass uses: (org id, platform URL).
    pub(super) endpoint: Option<(String, String)>,
    /// Another object's claim that wins over this object's, if any.
    pub(super) claimed_by: Option<Claim>,
    /// The ownership record annotation, parsed.
    pub(super) record: Option<Result<OwnershipRecord, String>>,
}

/// How long after a scheduled time its pass runs (never before it).
const SCHEDULE_WAKE_MARGIN: Duration = Duration::from_millis(500);

static CLOCK_OFFSET: std::sync::OnceLock<jiff::SignedDuration> = std::sync::OnceLock::new();

/// Shifts the operator's clock (`--clock-offset`); set once at start.
pub fn set_clock_offset(offset: Duration) {
    let _ = CLOCK_OFFSET.set(jiff::SignedDuration::try_from(offset).unwrap_or(jiff::SignedDuration::ZERO));
}

/// The operator's clock: the host's, shifted by `--clock-offset` (schedules, expiry, the run
/// budget's day and the times in status follow it).
pub fn now() -> Time {
    let offset = CLOCK_OFFSET.get().copied().unwrap_or(jiff::SignedDuration::ZERO);
    Time(Timestamp::now().saturating_add(offset).unwrap_or(Timestamp::MAX))
}

/// Whether the object carries the pause annotation.
pub(super) fn paused(obj: &ExternalAudience) -> bool {
    obj.annotations()
        .get(PAUSED)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

const PAUSED_MESSAGE: &str =
    "Reconciliation is paused by the aep.audience-operator.dev/paused annotation: no AEP call is made for this object";

async fn apply(cached: &ExternalAudience, ctx: &Context, api: &Api<ExternalAudience>) -> Result<Action, Error> {
    if paused(cached) {
        let mut pass = Pass::new(cached, ctx, api);
        pass.status.conditions = with_paused(&pass.status.conditions, pass.generation, PAUSED_MESSAGE, &now());
        if pass.status != pass.original {
            pass.conditioned = false;
            pass.write_status().await?;
            pass.event(EventType::Normal, events::PAUSED, PAUSED_MESSAGE.to_owned())
                .await;
        }
        return Ok(Action::await_change());
    }
    match apply_once(cached, ctx, api).await {
        // Our base was stale or someone changed the object meanwhile: re-plan from a fresh
        // copy soon, without growing the error backoff.
        Err(Error::Stale) => Ok(Action::requeue(Duration::from_millis(100))),
        other => other,
    }
}

/// A missing or invalid credentials Secret. A missing one is `Reconciling` for a grace period
/// after the object's creation (it may be on its way, e.g. from External Secrets, and a GitOps
/// `wait` must not fail at once), then `Stalled`; either way it is looked for again on a timer.
fn credentials_problem(obj: &ExternalAudience, ctx: &Context, e: &CredentialsError) -> Outcome {
    let msg = e.to_string();
    let note = |o: Outcome| o.note(EventType::Warning, events::CREDENTIALS_ERROR, msg.clone());
    match e {
        CredentialsError::Missing { .. } => {
            let age = obj
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| Timestamp::now().duration_since(t.0).unsigned_abs())
                .unwrap_or_default();
            if age < ctx.timing.secret_grace {
                let retry = Duration::from_secs(5).min(ctx.timing.credentials_retry);
                note(Outcome::with(
                    Health::progressing(reasons::CREDENTIALS_MISSING, format!("{msg}; waiting for it")),
                    Next::After(retry),
                ))
            } else {
                note(Outcome::with(
                    Health::stalled(reasons::CREDENTIALS_MISSING, msg.clone()),
                    Next::After(ctx.timing.credentials_retry),
                ))
            }
        }
        _ => note(Outcome::with(
            Health::stalled(reasons::CREDENTIALS_INVALID, msg.clone()),
            Next::After(ctx.timing.credentials_retry),
        )),
    }
}

async fn apply_once(cached: &ExternalAudience, ctx: &Context, api: &Api<ExternalAudience>) -> Result<Action, Error> {
    let ns = cached.namespace().ok_or(Error::MissingNamespace)?;
    // A schedule only the parser can refuse (the CRD's rule checks its shape): nothing is sent
    // until the spec is fixed.
    let mut probe = Pass::new(cached, ctx, api);
    if let Err(msg) = probe.schedule() {
        return probe
            .finish(Outcome::blocked(
                reasons::INVALID_SCHEDULE,
                msg,
                events::INVALID_SCHEDULE,
            ))
            .await;
    }
    let secret_name = &cached.spec.credentials_secret_ref.name;
    let creds = match ctx.credentials.load(&ctx.client, &ctx.aep, &ns, secret_name).await {
        Ok(c) => c,
        Err(e @ CredentialsError::Kube { .. }) => return Err(Error::Credentials(Box::new(e))),
        Err(e) => {
            return Pass::new(cached, ctx, api)
                .finish(credentials_problem(cached, ctx, &e))
                .await;
        }
    };
    // The object moved to another Secret: the old one keeps the in-use finalizer only while
    // another object uses it.
    let recorded = cached.status.as_ref().and_then(|s| s.credentials_secret.as_deref());
    if let Some(old) = recorded
        && old != secret_name
        && !ctx.secret_in_use(&ns, old, None)
    {
        credentials::release_secret(&ctx.client, &ns, old)
            .await
            .map_err(Error::Kube)?;
    }
    let session = ctx.aep.session(&creds, &cached.spec.sandbox);
    let endpoint = (creds.org_id.clone(), session.platform_url().to_string());
    fn prepare<'p>(
        obj: &'p ExternalAudience,
        ctx: &'p Context,
        api: &'p Api<ExternalAudience>,
        endpoint: &(String, String),
    ) -> Pass<'p> {
        let mut pass = Pass::new(obj, ctx, api);
        pass.prepare(ctx, endpoint);
        pass
    }
    let mut step = prepare(cached, ctx, api, &endpoint).plan().step;
    // The cached object can predate our own last status write. Before any step with an AEP side
    // effect, decide again from a fresh read (one GET), so a stale cache never repeats a call;
    // unless the cache holds exactly our last write (nothing to learn from a GET: a newer write by
    // someone else makes the step's conditioned marker write fail instead). Any other step reads
    // afresh too when this process wrote the object since the cached copy: the pass's first write
    // is conditioned on its base, and a base older than our own write would only conflict (and
    // repeat the step's AEP read) after the requeue that follows our write outran the watch.
    let fresh;
    let mut obj = cached;
    let key = (ns.clone(), cached.name_any());
    let cache_behind_us = ctx.wrote_since(&key, cached.resource_version().as_deref());
    if (step.mutates_aep() || cache_behind_us) && !ctx.holds_last_write(&key, cached.resource_version().as_deref()) {
        fresh = api.get(&cached.name_any()).await.map_err(Error::Kube)?;
        if fresh.resource_version() != cached.resource_version() {
            obj = &fresh;
            step = prepare(obj, ctx, api, &endpoint).plan().step;
        }
    }
    let mut pass = prepare(obj, ctx, api, &endpoint);
    // An audience this object adopted or re-attached to is acted on only once the cache shows
    // the claim: the claim index has then seen every claim recorded before it, so a second
    // object that claimed the same audience a moment earlier is known (and wins).
    if step.mutates_aep()
        && matches!(
            pass.status.ownership,
            Some(OwnershipProof::SpecAudienceId | OwnershipProof::RestoreRecord)
        )
        && cached.status.as_ref().and_then(|s| s.claimed_at.as_ref()) != pass.original.claimed_at.as_ref()
    {
        tracing::debug!(?step, "Waiting for the cache to show this object's claim");
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    pass.status.credentials_secret = Some(secret_name.clone());
    tracing::debug!(?step, "Planned step");
    ctx.metrics.count_step(step.name());
    let out = pass.run(step, &session).await?;
    pass.finish(out).await
}

impl<'a> Pass<'a> {
    pub(super) fn new(obj: &'a ExternalAudience, ctx: &'a Context, api: &'a dyn StatusApi) -> Self {
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
            endpoint: None,
            claimed_by: None,
            record: None,
        }
    }

    /// Gathers the facts beyond the object: the credentials' org and endpoint (recorded in status
    /// while nothing was sent yet, so that they become part of the ownership with the first
    /// request), the ownership record annotation, and another object's winning claim.
    pub(super) fn prepare(&mut self, ctx: &Context, endpoint: &(String, String)) {
        let st = &mut self.status;
        if !plan::has_sent(st) || st.org_id.is_none() {
            st.org_id = Some(endpoint.0.clone());
        }
        if !plan::has_sent(st) || st.platform_url.is_none() {
            st.platform_url = Some(endpoint.1.clone());
        }
        // A claim recorded by a release before claims were dated counts from the object's creation.
        if st.audience_id.is_some() && st.claimed_at.is_none() && st.ownership != Some(OwnershipProof::Observed) {
            st.claimed_at = self.obj.metadata.creation_timestamp.clone();
        }
        self.endpoint = Some(endpoint.clone());
        self.record = self
            .obj
            .annotations()
            .get(OWNERSHIP_RECORD)
            .map(|v| OwnershipRecord::parse(v, &self.obj.spec.sandbox));
        self.claimed_by = claims::claim_of(self.obj).and_then(|mut mine| {
            mine.org = mine.org.or_else(|| Some(endpoint.0.clone()));
            ctx.claims.holder(&mine)
        });
    }

    /// The plan for the status as it is now (after whatever the step changed).
    pub(super) fn plan(&self) -> Plan {
        plan::next_step(&self.facts())
    }

    pub(super) fn audience_name(&self) -> &str {
        self.obj.spec.audience_name(&self.name)
    }

    pub(super) fn run_request(&self) -> Option<&str> {
        self.obj.annotations().get(RUN_REQUESTED_AT).map(String::as_str)
    }

    pub(super) fn retry_create(&self) -> Option<&str> {
        self.obj.annotations().get(RETRY_CREATE).map(String::as_str)
    }

    /// The `customAudienceId` this object sends: the recorded one, else derived from its UID.
    pub(super) fn custom_audience_id(&self) -> Result<String, Error> {
        if let Some(cid) = &self.status.custom_audience_id {
            return Ok(cid.clone());
        }
        let uid = self.obj.metadata.uid.as_deref().ok_or(Error::MissingUid)?;
        Ok(custom_audience_id(uid))
    }

    pub(super) fn facts(&self) -> Facts<'_> {
        Facts {
            generation: self.generation,
            audience_name: self.audience_name(),
            spec: &self.obj.spec,
            status: &self.status,
            run_request: self.run_request(),
            retry_create: self.retry_create(),
            schedule_due: self.schedule_due(),
            endpoint: self
                .endpoint
                .as_ref()
                .map(|(org_id, platform_url)| Endpoint { org_id, platform_url }),
            claimed_by: self.claimed_by.as_ref(),
            record: self.record.as_ref(),
        }
    }

    /// Whether the status this pass started from had condition `type_` `True` with `reason`.
    fn was(&self, type_: &str, reason: &str) -> bool {
        self.original
            .conditions
            .iter()
            .any(|c| c.type_ == type_ && c.status == "True" && c.reason == reason)
    }

    /// `spec.expiration.autoExtend` and the data within the warning window (at most once per TTL).
    fn extend_due(&self) -> bool {
        let Some(ttl) = plan::known_ttl(&self.obj.spec, &self.status) else {
            return false;
        };
        self.obj.spec.expiration.as_ref().is_some_and(|e| e.auto_extend)
            && expiry::extend_due(
                expiry::compute(&self.status, ttl).as_ref(),
                ttl,
                now().0,
                self.ctx.timing.expiration_warning,
            )
    }

    /// `spec.ingestion.schedule` and `timeZone`, parsed (`Ok(None)` without a schedule).
    pub(super) fn schedule(&self) -> Result<Option<Schedule>, String> {
        let Some(ingestion) = &self.obj.spec.ingestion else {
            return Ok(None);
        };
        ingestion
            .schedule
            .as_deref()
            .map(|expr| Schedule::parse(expr, ingestion.time_zone.as_deref()))
            .transpose()
    }

    /// The latest scheduled time not yet served: after the last one a run was started for, or
    /// after the schedule was first seen (a schedule added to an existing object owes nothing
    /// for the times before it; a new object's first run covers what came before).
    pub(super) fn schedule_due(&self) -> Option<Time> {
        let schedule = self.schedule().ok()??;
        let after = self
            .status
            .last_scheduled_time
            .as_ref()
            .or(self.status.schedule_since.as_ref())?;
        schedule.latest_due(after.0, now().0).map(Time)
    }

    pub(super) fn key(&self) -> (String, String) {
        (self.obj.namespace().unwrap_or_default(), self.name.clone())
    }

    pub(super) async fn event(&self, type_: EventType, reason: &str, note: String) {
        if !self.ctx.event_is_new(&self.key(), reason, &note) {
            tracing::debug!(reason, "Event repeats the previous one; not published again");
            return;
        }
        self.ctx.event(&self.reference, type_, reason, reason, note).await;
    }

    /// The one place that turns an outcome into status: health (from the outcome, else from the
    /// plan of the status the step left), conditions, `blocked`, one write if anything changed,
    /// then the event; and when to come back.
    pub(super) async fn finish(&mut self, out: Outcome) -> Result<Action, Error> {
        let health = match out.health {
            Some(h) => h,
            None => self.plan().health,
        };
        // Data expiration, computed from the runs (AEP does not report it). An expired audience
        // that is otherwise in sync is Stalled: only a run (or an extension) brings it back.
        let at = now();
        let warning = self.ctx.timing.expiration_warning;
        // Expiry is computed for the data this object ingests (with a TTL it knows); an observed
        // audience's is AEP's business.
        self.status.data_expiration = match plan::known_ttl(&self.obj.spec, &self.status) {
            Some(ttl) if !self.obj.spec.observes() => expiry::compute(&self.status, ttl),
            _ => None,
        };
        let expiration = self.status.data_expiration.clone();
        let state = expiry::state(expiration.as_ref(), at.0, warning);
        let mut event = out.event;
        let health = match (health, state) {
            (Health::Ready { .. }, expiry::State::Expired(when)) => {
                let msg = format!(
                    "The audience's data expired at {when} ({} plus ttlInDays): AEP no longer activates it and its \
                     profile count is 0. Set the {RUN_REQUESTED_AT} annotation to ingest again, or set \
                     spec.expiration.autoExtend to extend it before it expires",
                    if expiration.as_ref().is_some_and(|d| d.source == expiry::FROM_EXTENSION) {
                        "the last extension"
                    } else {
                        "the last successful run"
                    },
                );
                if event.is_none() && !self.was(conditions::STALLED, reasons::DATA_EXPIRED) {
                    event = Some((EventType::Warning, events::DATA_EXPIRED, msg.clone()));
                }
                Health::stalled(reasons::DATA_EXPIRED, msg)
            }
            (h, _) => h,
        };
        self.record_health(&health, out.block);
        if let Some(d) = &expiration {
            let (expiring, reason, message) = match state {
                expiry::State::ExpiringSoon(when) => (
                    true,
                    reasons::DATA_EXPIRING_SOON,
                    format!(
                        "The data expires at {when}, within {}: request a run or set spec.expiration.autoExtend",
                        jiff::SignedDuration::try_from(warning).unwrap_or_default()
                    ),
                ),
                expiry::State::Expired(when) => (false, reasons::DATA_EXPIRED, format!("The data expired at {when}")),
                expiry::State::Fresh => (
                    false,
                    reasons::DATA_FRESH,
                    format!("The data expires at {}", d.expires_at.0),
                ),
            };
            if expiring && event.is_none() && !self.was(conditions::DATA_EXPIRING, reasons::DATA_EXPIRING_SOON) {
                event = Some((EventType::Warning, events::DATA_EXPIRING_SOON, message.clone()));
            }
            self.status.conditions = with_condition(
                &self.status.conditions,
                &self.original.conditions,
                conditions::DATA_EXPIRING,
                expiring,
                reason,
                message,
                self.generation,
                &at,
            );
        }
        if expiration.is_none() {
            self.status.conditions = without_condition(&self.status.conditions, conditions::DATA_EXPIRING);
        }
        self.status.conditions = match &self.status.observed {
            Some(observed) if self.obj.spec.observes() => {
                let (in_sync, reason, message) = if observed.differences.is_empty() {
                    (true, reasons::IN_SYNC, "AEP matches the spec".to_owned())
                } else {
                    (
                        false,
                        reasons::DRIFTED,
                        format!(
                            "AEP differs from the spec in {} (managementPolicy: Observe: nothing is changed in AEP)",
                            observed.differences.join(", ")
                        ),
                    )
                };
                with_condition(
                    &self.status.conditions,
                    &self.original.conditions,
                    conditions::IN_SYNC,
                    in_sync,
                    reason,
                    message,
                    self.generation,
                    &at,
                )
            }
            _ => without_condition(&self.status.conditions, conditions::IN_SYNC),
        };
        if !self.obj.spec.observes() {
            self.status.observed = None;
        }
        let expiry_wake = expiry::next_check(expiration.as_ref(), at.0, warning);
        // The next scheduled time: shown, and this object is looked at again then.
        let schedule = self.schedule().ok().flatten();
        if schedule.is_none() {
            self.status.schedule_since = None;
        } else if self.status.schedule_since.is_none() {
            self.status.schedule_since = Some(now());
        }
        let next_scheduled = schedule.as_ref().and_then(|s| s.next_after(now().0));
        self.status.next_scheduled_time = next_scheduled.map(Time);
        let wake = next_scheduled
            .map(|t| {
                // A little after the time, so that it is due when the pass runs.
                Duration::try_from(t.duration_since(now().0)).unwrap_or_default() + SCHEDULE_WAKE_MARGIN
            })
            .into_iter()
            .chain(expiry_wake.map(|d| d + SCHEDULE_WAKE_MARGIN))
            .min();
        if self.status != self.original {
            self.write_status().await?;
            if let Some((type_, reason, note)) = event {
                self.event(type_, reason, note).await;
            }
        }
        self.write_record().await?;
        let key = self.key();
        Ok(match out.next {
            Next::After(d) => {
                self.ctx.reset_backoff(&key);
                let d = Context::jitter(d);
                Action::requeue(wake.map_or(d, |w| w.min(d)))
            }
            Next::Exactly(d) => {
                self.ctx.reset_backoff(&key);
                Action::requeue(wake.map_or(d, |w| w.min(d)))
            }
            Next::Backoff(retry_after) => Action::requeue(self.ctx.backoff(key, retry_after)),
            Next::Await => {
                self.ctx.reset_backoff(&key);
                wake.map_or_else(Action::await_change, Action::requeue)
            }
        })
    }

    /// Sets conditions (and `blocked` when asked) for `health` in the in-memory status.
    pub(super) fn record_health(&mut self, health: &Health, block: bool) {
        if block && let Health::Stalled { reason, message } = health {
            self.status.blocked = Some(Blocked {
                reason: reason.clone(),
                generation: self.generation,
                message: message.clone(),
            });
        }
        self.status.observed_generation = Some(self.generation);
        self.status.conditions = conditions_for(health, self.generation, &self.original.conditions, &now());
    }

    /// Replaces the whole status (JSON patch on `/status`, field manager [`MANAGER`]). The first
    /// write of a pass is conditioned on the resourceVersion the pass decided from: a stale base
    /// conflicts ([`Error::Stale`]) instead of overwriting newer status.
    pub(super) async fn write_status(&mut self) -> Result<(), Error> {
        let mut ops = Vec::new();
        if self.conditioned {
            let rv = self.rv.as_deref().ok_or(Error::MissingResourceVersion)?;
            ops.push(json!({"op": "replace", "path": "/metadata/resourceVersion", "value": rv}));
        }
        ops.push(json!({"op": "add", "path": "/status", "value": self.status}));
        let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops)).map_err(Error::Serde)?;
        let updated = match self.api.patch_status(&self.name, MANAGER, patch).await {
            Ok(u) => u,
            Err(kube::Error::Api(s)) if s.code == 409 => {
                tracing::debug!("Status write conflicted; re-planning from a fresh copy");
                return Err(Error::Stale);
            }
            Err(e) => return Err(Error::Kube(e)),
        };
        self.conditioned = false;
        self.rv = updated.resource_version();
        if let Some(rv) = &self.rv {
            self.ctx.wrote(self.key(), rv.clone());
        }
        self.original = updated.status.unwrap_or_default();
        self.status = self.original.clone();
        Ok(())
    }

    /// The ownership record the status implies: for an audience this object manages, with its
    /// org, endpoint and claim time recorded.
    pub(super) fn desired_record(&self) -> Option<OwnershipRecord> {
        let st = &self.original;
        if self.obj.spec.observes() || matches!(st.ownership, None | Some(OwnershipProof::Observed)) {
            return None;
        }
        Some(OwnershipRecord {
            v: 1,
            audience_id: st.audience_id.clone()?,
            custom_audience_id: st.custom_audience_id.clone(),
            org_id: st.org_id.clone()?,
            platform_url: st.platform_url.clone()?,
            sandbox: self.obj.spec.sandbox.clone(),
            claimed_by: self.obj.metadata.uid.clone()?,
            claimed_at: st.claimed_at.as_ref()?.0.to_string(),
            applied_spec_hash: st.applied_spec_hash.clone(),
            ingested_spec_hash: st.ingested_spec_hash.clone(),
        })
    }

    /// Keeps the ownership record annotation in line with what status (as written) says, so a
    /// backup taken now can be restored without a create or a run. Only a change in what a
    /// restore needs is written: the audience, its org and endpoint, the claim, and the spec last
    /// ingested (with the one last applied as it stood then).
    async fn write_record(&mut self) -> Result<(), Error> {
        let Some(want) = self.desired_record() else {
            return Ok(());
        };
        let have = self
            .obj
            .annotations()
            .get(OWNERSHIP_RECORD)
            .and_then(|v| OwnershipRecord::parse(v, &self.obj.spec.sandbox).ok());
        if let Some(mut have) = have {
            // A PATCH alone is not recorded: the run that follows it is (every updatable
            // property is part of what a run ingests).
            have.applied_spec_hash = want.applied_spec_hash.clone();
            if have == want {
                return Ok(());
            }
        }
        let updated = self
            .api
            .patch_annotation(&self.name, MANAGER, OWNERSHIP_RECORD, Some(want.to_annotation()))
            .await
            .map_err(Error::Kube)?;
        self.rv = updated.resource_version();
        if let Some(rv) = &self.rv {
            self.ctx.wrote(self.key(), rv.clone());
        }
        Ok(())
    }

    /// Persists a pending marker before a non-idempotent call, conditioned on the object not
    /// having changed since it was read: [`Error::Stale`] when it had (the call is not made; the
    /// pass re-plans from a fresh copy).
    pub(super) async fn write_marker(&mut self) -> Result<(), Error> {
        self.conditioned = true;
        self.write_status().await
    }

    pub(super) async fn run(&mut self, step: Step, s: &impl AepApi) -> Result<Outcome, Error> {
        if !matches!(step, Step::Wait | Step::Held { .. }) {
            // Whatever blocked an earlier generation (or was confirmed away) no longer holds.
            self.status.blocked = None;
        }
        match step {
            Step::Create => self.create(s).await,
            Step::RecoverCreate => self.recover_create(s).await,
            Step::PollOperation { operation_id } => self.poll_operation(s, &operation_id).await,
            Step::Adopt { audience_id } => self.adopt(s, &audience_id).await,
            Step::Update { audience_id } => self.update(s, &audience_id).await,
            Step::PollRun { audience_id, run_id } => self.poll_run(s, &audience_id, &run_id).await,
            Step::RecoverRun { audience_id } => self.recover_run(s, &audience_id).await,
            Step::StartRun { audience_id } => self.start_run(s, &audience_id).await,
            Step::Block { reason, message } => Ok(Outcome::blocked(reason, message, events::AEP_ERROR)),
            Step::Held { reason, message } => {
                let event = match reason {
                    reasons::AUDIENCE_CLAIMED => events::AUDIENCE_CLAIMED,
                    reasons::ORGANIZATION_CHANGED => events::ORGANIZATION_CHANGED,
                    _ => events::AEP_ERROR,
                };
                Ok(Outcome::with(
                    Health::stalled(reason, message.clone()),
                    Next::After(self.ctx.timing.credentials_retry),
                )
                .note(EventType::Warning, event, message))
            }
            Step::Reattach { audience_id } => self.reattach(s, &audience_id).await,
            Step::Observe { audience_id } => self.observe(s, &audience_id).await,
            Step::Wait => Ok(Outcome::planned(Next::Await)),
            Step::Idle { audience_id } if self.extend_due() => self.extend_ttl(s, &audience_id).await,
            Step::Idle { audience_id } => self.idle(s, &audience_id).await,
        }
    }

    /// Maps an AEP error to an outcome. `what` says which call failed.
    pub(super) fn failure(&self, e: &aep::Error, what: &str) -> Outcome {
        tracing::warn!(call = e.call().as_str(), kind = e.kind().as_str(), status = ?e.status(), "AEP call failed");
        self.ctx
            .metrics
            .reconcile_failures
            .get_or_create(&crate::metrics::CategoryLabels { category: e.category() })
            .inc();
        let msg = stable_message(&format!("{what}: {}", e.message()));
        let t = &self.ctx.timing;
        let progressing = |reason, next, event| {
            Outcome::with(Health::progressing(reason, msg.clone()), next).note(EventType::Warning, event, msg.clone())
        };
        let stalled = |reason, next, event| {
            Outcome::with(Health::stalled(reason, msg.clone()), next).note(EventType::Warning, event, msg.clone())
        };
        match e.kind() {
            ErrorKind::Retryable { retry_after } => {
                progressing(reasons::RETRYING, Next::Backoff(retry_after), events::AEP_ERROR)
            }
            ErrorKind::NotNow { retry_after } => {
                let d = retry_after.map_or(t.deferred_retry, |r| r.max(t.deferred_retry));
                progressing(reasons::RUN_DEFERRED, Next::After(d), events::RUN_DEFERRED)
            }
            ErrorKind::OutcomeUnknown => {
                progressing(reasons::RETRYING, Next::After(t.operation_poll), events::AEP_ERROR)
            }
            ErrorKind::PermissionDenied => stalled(
                reasons::PERMISSION_DENIED,
                Next::After(t.credentials_retry),
                events::AEP_ERROR,
            ),
            ErrorKind::Unauthorized => {
                // Read the Secret again next time: it may have been rotated.
                if let Some(ns) = self.obj.namespace() {
                    self.ctx
                        .credentials
                        .invalidate(&self.ctx.aep, &ns, &self.obj.spec.credentials_secret_ref.name);
                }
                stalled(
                    reasons::CREDENTIALS_INVALID,
                    Next::After(t.credentials_retry),
                    events::CREDENTIALS_ERROR,
                )
            }
            ErrorKind::Terminal | ErrorKind::Conflict => {
                Outcome::blocked(reasons::REJECTED, msg.clone(), events::AEP_ERROR)
            }
            ErrorKind::NotFound => Outcome::blocked(reasons::AUDIENCE_NOT_FOUND, msg.clone(), events::AEP_ERROR),
        }
    }
}
