//! The `ExternalAudience` kind on the managed-resource core. One pass:
//!
//! 1. **gather** the facts ([`Gathered`]): the clock, the credentials Secret (and the org and
//!    endpoint it names), the ownership record annotation, another object's claim on the same
//!    audience, and, when the decision would touch AEP, a fresh copy of the object and the run
//!    budget's grant;
//! 2. **decide** ([`decide::decide`], pure): one step and the health the state implies;
//! 3. **act** (`steps.rs`, `delete.rs`): at most one mutating AEP call, its marker written first;
//! 4. **finish**: one conditioned status write (markers go through the same path), the ownership
//!    record, the event, and when to come back.
//!
//! The kind's shared state ([`Shared`]) holds the cache of objects, the index of their claims on
//! audiences, and the run budget, which is seeded from the objects' status after a restart.

pub mod decide;
mod delete;
pub mod spec;
#[cfg(test)]
mod step_tests;
mod steps;

use std::{
    ops::{Deref, DerefMut},
    sync::Arc,
    time::Duration,
};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api, ResourceExt,
    runtime::{controller::Action, events::EventType, reflector::Store},
};

use self::decide::{Annotations, Decision, Facts, Settings, Step};
use super::{
    budget::{Grant, RunBudget},
    claims::{self, Claim, ClaimIndex},
    clock::{self, now},
    core::{Base, Context, Error, Next, Outcome, Pass},
    credentials::{self, CredentialsError},
    expiry,
    keys::ObjectKey,
    reads::Reads,
    schedule::Schedule,
    seams::{AepApi, StatusApi},
};
use crate::{
    api::{
        AudienceActivation, Blocked, ConditionType, EventReason, ExternalAudience, ExternalAudienceStatus, FINALIZER,
        OWNERSHIP_RECORD, OwnershipProof, OwnershipRecord, Reason,
    },
    status::{Health, with_condition, with_paused, without_condition},
};

crate::managed_kind!(ExternalAudience, ExternalAudienceStatus);

/// The kind's state shared by its passes.
pub struct Shared {
    pub core: Arc<Context>,
    /// The controller's cache of ExternalAudiences.
    pub objects: Store<ExternalAudience>,
    /// The audiences the cached objects claim (at most one object manages an audience).
    pub claims: ClaimIndex,
    /// The daily run budget of each (org, sandbox).
    pub budget: RunBudget,
    pub settings: Settings,
    /// The AudienceActivation controller's cache (a deletion waits for an object's activations).
    pub activations: Store<AudienceActivation>,
    /// AEP reads shared by many objects (segmentation jobs, the sandbox's audience list).
    pub reads: Arc<Reads>,
    /// When this process last checked each object for drift (a cache; lost on restart, which
    /// then checks from the first slot after the start).
    pub drift_checks: std::sync::Mutex<std::collections::HashMap<ObjectKey, Timestamp>>,
}

impl Shared {
    /// Whether an ExternalAudience other than `except_uid` in `namespace` references Secret `name`.
    pub fn secret_in_use(&self, namespace: &str, name: &str, except_uid: Option<&str>) -> bool {
        self.objects.state().iter().any(|ea| {
            ea.namespace().as_deref() == Some(namespace)
                && ea.spec.credentials_secret_ref.name == name
                && ea.metadata.uid.as_deref() != except_uid
        })
    }

    /// Forgets what was kept about an object once it is gone.
    pub fn forget_object(&self, key: &ObjectKey) {
        self.core.forget_object::<ExternalAudience>(key);
        self.budget.forget(key);
        self.drift_checks.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }

    /// Remembers a drift check of `key` made at `at`.
    pub fn drift_checked(&self, key: ObjectKey, at: Timestamp) {
        self.drift_checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, at);
    }

    fn last_drift_check(&self, key: &ObjectKey) -> Option<Timestamp> {
        self.drift_checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
    }
}

pub(crate) use super::core::facts::Creds;

/// The facts a pass gathered beyond the object itself.
#[derive(Clone, Debug)]
pub(crate) struct Gathered {
    pub(crate) now: Timestamp,
    pub(crate) wall: Timestamp,
    pub(crate) credentials: Creds,
    pub(crate) claimed_by: Option<Claim>,
    pub(crate) record: Option<Result<OwnershipRecord, String>>,
    pub(crate) budget: Option<Grant>,
    pub(crate) cache_holds_claim: bool,
    pub(crate) namespace_terminating: bool,
    /// The object's AudienceActivations that still exist (asked only when it is being deleted).
    pub(crate) activations: Vec<String>,
    /// AEP's succeeded segmentation jobs of the sandbox (read only while the last successful run
    /// awaits one).
    pub(crate) segmentation: Option<Arc<Vec<crate::aep::SegmentJob>>>,
    /// For a drift check: the digest of the audience's description and labels as the sandbox's
    /// shared list shows them.
    pub(crate) listed: Option<u64>,
    /// When this process last checked the object for drift.
    pub(crate) last_drift_check: Option<Timestamp>,
    pub(crate) schedule: Result<Option<Schedule>, String>,
}

/// One pass over one ExternalAudience.
pub(crate) struct AudiencePass<'a> {
    pub(crate) pass: Pass<'a, ExternalAudience>,
    pub(crate) shared: &'a Shared,
    pub(crate) gathered: Gathered,
}

impl<'a> Deref for AudiencePass<'a> {
    type Target = Pass<'a, ExternalAudience>;
    fn deref(&self) -> &Self::Target {
        &self.pass
    }
}

impl DerefMut for AudiencePass<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.pass
    }
}

/// `spec.ingestion.schedule` and `timeZone`, parsed (`Ok(None)` without a schedule).
fn parse_schedule(obj: &ExternalAudience) -> Result<Option<Schedule>, String> {
    let Some(ingestion) = &obj.spec.ingestion else {
        return Ok(None);
    };
    ingestion
        .schedule
        .as_deref()
        .map(|expr| Schedule::parse(expr, ingestion.time_zone.as_deref()))
        .transpose()
}

impl<'a> AudiencePass<'a> {
    /// A pass over `obj` with the facts that need no I/O gathered.
    pub(crate) fn new(obj: &'a ExternalAudience, shared: &'a Shared, api: &'a dyn StatusApi<ExternalAudience>) -> Self {
        let record = obj
            .annotations()
            .get(OWNERSHIP_RECORD)
            .map(|v| OwnershipRecord::parse(v, &obj.spec.sandbox));
        AudiencePass {
            pass: Pass::new(obj, &shared.core, api),
            shared,
            gathered: Gathered {
                now: now().0,
                wall: Timestamp::now(),
                credentials: Creds::NotRead,
                claimed_by: None,
                record,
                budget: None,
                cache_holds_claim: true,
                namespace_terminating: false,
                activations: Vec::new(),
                segmentation: None,
                listed: None,
                last_drift_check: obj
                    .namespace()
                    .and_then(|ns| shared.last_drift_check(&(ns, obj.name_any()))),
                schedule: parse_schedule(obj),
            },
        }
    }

    /// Takes the credentials' org and endpoint: recorded in status while nothing was sent yet,
    /// so that they become part of the ownership with the first request; and another object's
    /// winning claim on the audience this one names.
    pub(crate) fn with_credentials(&mut self, org_id: &str, platform_url: &str) {
        let st = &mut self.pass.status;
        if !decide::has_sent(st) || st.org_id.is_none() {
            st.org_id = Some(org_id.to_owned());
        }
        if !decide::has_sent(st) || st.platform_url.is_none() {
            st.platform_url = Some(platform_url.to_owned());
        }
        // A claim recorded by a release before claims were dated counts from the object's creation.
        if st.audience_id.is_some() && st.claimed_at.is_none() && st.ownership != Some(OwnershipProof::Observed) {
            st.claimed_at = self.pass.obj.metadata.creation_timestamp.clone();
        }
        self.gathered.credentials = Creds::Ready(org_id.to_owned(), platform_url.to_owned());
        self.look_up_claims(Some(org_id));
    }

    /// Another object's claim that wins over this object's, if any.
    pub(crate) fn look_up_claims(&mut self, org_id: Option<&str>) {
        self.gathered.claimed_by = claims::claim_of(self.pass.obj).and_then(|mut mine| {
            mine.org = mine.org.or_else(|| org_id.map(str::to_owned));
            self.shared.claims.holder(&mine)
        });
    }

    /// The facts for the decider.
    pub(crate) fn facts(&self) -> Facts<'_> {
        let obj = self.pass.obj;
        let g = &self.gathered;
        let annotations = Annotations::read(
            obj.metadata.annotations.as_ref().unwrap_or(&EMPTY),
            self.ctx.timing.resync,
        );
        Facts {
            now: g.now,
            wall: g.wall,
            name: &self.pass.name,
            generation: self.pass.generation,
            created: obj.metadata.creation_timestamp.as_ref().map(|t| t.0),
            uid: obj.metadata.uid.as_deref(),
            spec: &obj.spec,
            status: &self.pass.status,
            deleting: obj.metadata.deletion_timestamp.is_some(),
            paused: annotations.paused,
            run_request: annotations.run_request,
            retry_create: annotations.retry_create,
            resync: annotations.resync,
            schedule: &g.schedule,
            credentials: g.credentials.facts(),
            claimed_by: g.claimed_by.as_ref(),
            record: g.record.as_ref(),
            budget: g.budget.as_ref(),
            cache_holds_claim: g.cache_holds_claim,
            namespace_terminating: g.namespace_terminating,
            activations: &g.activations,
            last_drift_check: g.last_drift_check,
            started: clock::started(),
            timing: &self.ctx.timing,
            settings: &self.shared.settings,
        }
    }

    /// The decision for the status as it is now.
    pub(crate) fn decide(&self) -> Decision {
        decide::decide(&self.facts())
    }

    /// The decision, with the run budget's answer when it is to start a run: the budget is asked
    /// only then (a claim queues this object among the sandbox's), and the decision is made again
    /// with the grant.
    pub(crate) fn decide_with_budget(&mut self) -> Decision {
        let decision = self.decide();
        if !matches!(decision.step, Step::StartRun { .. }) {
            return decision;
        }
        let (priority, since) = decide::run_priority(&self.facts());
        let org = self.pass.status.org_id.clone().unwrap_or_default();
        let sandbox = self.pass.obj.spec.sandbox.clone();
        let objects = &self.shared.objects;
        let grant = self.shared.budget.claim(
            &org,
            &sandbox,
            &self.pass.key(),
            priority,
            since,
            self.gathered.now,
            |day| budget_seed(objects, &org, &sandbox, day),
        );
        self.gathered.budget = Some(grant);
        self.decide()
    }

    /// Carries `decision` out ([`AudiencePass::act`]). A create that just completed owes its
    /// audience the first run: when the decider says so, the run starts in this pass and its
    /// marker write records the new audience as well (one status write and one pass fewer per
    /// object). The marker is conditioned on this pass's base; if it conflicts, nothing was sent
    /// and the next pass reads the operation again.
    pub(crate) async fn act_through(&mut self, decision: Decision, s: &impl AepApi) -> Result<Outcome, Error> {
        let polled_create = matches!(decision.step, Step::PollOperation { .. });
        let out = self.act(decision, s).await?;
        if !polled_create || out.health.is_some() || out.next != Next::After(Duration::ZERO) {
            return Ok(out);
        }
        let next = self.decide_with_budget();
        if !matches!(next.step, Step::StartRun { .. }) {
            return Ok(out);
        }
        tracing::debug!(step = ?next.step, "Planned step");
        self.ctx.metrics.count_step(next.step.name());
        let polled = std::mem::replace(&mut self.pass.action, next.step.name());
        let created = out.event;
        let out = self.act(next, s).await?;
        // The audience is recorded now (by the marker, or by the write that follows).
        if let Some((type_, reason, note)) = created {
            self.ctx
                .events
                .publish(&self.pass.reference, type_, reason, polled, note)
                .await;
        }
        Ok(out)
    }

    pub(crate) fn audience_name(&self) -> &str {
        self.pass.obj.spec.audience_name(&self.pass.name)
    }

    /// The `customAudienceId` this object sends: the recorded one, else derived from its UID.
    pub(crate) fn custom_audience_id(&self) -> Result<String, Error> {
        if let Some(cid) = &self.pass.status.custom_audience_id {
            return Ok(cid.clone());
        }
        let uid = self.pass.obj.metadata.uid.as_deref().ok_or(Error::MissingUid)?;
        Ok(crate::api::custom_audience_id(uid))
    }

    /// Whether the status this pass started from had condition `type_` `True` with `reason`.
    fn was(&self, type_: ConditionType, reason: Reason) -> bool {
        self.pass
            .original
            .conditions
            .iter()
            .any(|c| c.type_ == type_.as_str() && c.status == "True" && c.reason == reason.as_str())
    }

    /// Sets conditions (and `blocked` when asked) for `health`.
    pub(crate) fn record(&mut self, health: &Health, block: bool) {
        if block && let Health::Stalled { reason, message } = health {
            self.pass.status.blocked = Some(Box::new(Blocked {
                reason: reason.as_str().to_owned(),
                generation: self.pass.generation,
                message: message.clone(),
            }));
        }
        self.pass.record_health(health);
    }

    /// The one place that turns an outcome into status: the health (the outcome's, else what the
    /// decider says about the status the step left), conditions, `blocked`, the status derived
    /// from it (data expiration, schedule times, what an observed audience shows), one write if
    /// anything changed, the ownership record, then the event; and when to come back.
    pub(crate) async fn finish(&mut self, out: Outcome, paused: bool) -> Result<Action, Error> {
        if out.forget_credentials
            && let Some(ns) = self.pass.obj.namespace()
        {
            self.ctx
                .credentials
                .invalidate(&self.ctx.aep, &ns, &self.pass.obj.spec.credentials_secret_ref.name);
        }
        let at = now();
        let mut event = out.event;
        if paused {
            let message = decide::paused_message(false);
            self.pass.status.conditions = with_paused(&self.pass.status.conditions, self.pass.generation, message, &at);
            if !self.was(ConditionType::Paused, Reason::Paused) {
                event = Some((EventType::Normal, EventReason::Paused, message.to_owned()));
            }
        } else {
            let health = match out.health {
                Some(h) => h,
                None => self.decide().health,
            };
            if !out.block
                && event.is_none()
                && health.reason() == Reason::DataExpired.as_str()
                && !self.was(ConditionType::Stalled, Reason::DataExpired)
            {
                event = Some((
                    EventType::Warning,
                    EventReason::DataExpired,
                    health.message().to_owned(),
                ));
            }
            self.record(&health, out.block);
            event = self.derive_status(event, &at);
            // A write that is made anyway carries the first drift check the next pass would
            // otherwise schedule with a write of its own.
            if self.pass.changed()
                && self.pass.status.next_drift_check.is_none()
                && let Step::ScheduleDriftCheck { at } = self.decide().step
            {
                self.pass.status.next_drift_check = Some(Time(at));
            }
        }
        let wake = self.wake();
        if self.pass.changed() {
            self.pass.write_status().await?;
            if let Some(note) = event {
                self.pass.publish(note).await;
            }
        }
        self.write_record().await?;
        Ok(self.pass.requeue(out.next, wake))
    }

    /// What follows from the status and the clock: the data expiration and its condition, the
    /// schedule's times, and what an observed audience shows.
    fn derive_status(
        &mut self,
        mut event: Option<crate::controller::core::Note>,
        at: &Time,
    ) -> Option<crate::controller::core::Note> {
        let warning = self.ctx.timing.expiration_warning;
        let expiration = decide::data_expiration(&self.facts());
        self.pass.status.data_expiration = expiration.clone();
        let generation = self.pass.generation;
        match &expiration {
            Some(d) => {
                let (expiring, reason, message) = match expiry::state(expiration.as_ref(), at.0, warning) {
                    expiry::State::ExpiringSoon(when) => (
                        true,
                        Reason::DataExpiringSoon,
                        format!(
                            "The data expires at {when}, within {}: request a run or set spec.expiration.autoExtend",
                            jiff::SignedDuration::try_from(warning).unwrap_or_default()
                        ),
                    ),
                    expiry::State::Expired(when) => (false, Reason::DataExpired, format!("The data expired at {when}")),
                    expiry::State::Fresh => (
                        false,
                        Reason::DataFresh,
                        format!("The data expires at {}", d.expires_at.0),
                    ),
                };
                if expiring && event.is_none() && !self.was(ConditionType::DataExpiring, Reason::DataExpiringSoon) {
                    event = Some((EventType::Warning, EventReason::DataExpiringSoon, message.clone()));
                }
                self.pass.status.conditions = with_condition(
                    &self.pass.status.conditions,
                    &self.pass.original.conditions,
                    ConditionType::DataExpiring.as_str(),
                    expiring,
                    reason.as_str(),
                    message,
                    generation,
                    at,
                );
            }
            None => {
                self.pass.status.conditions =
                    without_condition(&self.pass.status.conditions, ConditionType::DataExpiring.as_str());
            }
        }
        let evaluation = decide::evaluation(
            &self.pass.status,
            self.gathered.segmentation.as_deref().map(Vec::as_slice),
        );
        self.pass.status.conditions = match evaluation {
            Some(decide::Evaluation::Done(seen)) => {
                let message = format!(
                    "AEP's daily segmentation job {} ran at {}, after the last successful run {}: batch destinations \
                     export the audience as it evaluated it",
                    seen.job_id, seen.created_at.0, seen.run_id
                );
                self.pass.status.segmentation = Some(Box::new(seen));
                with_condition(
                    &self.pass.status.conditions,
                    &self.pass.original.conditions,
                    ConditionType::Evaluated.as_str(),
                    true,
                    Reason::SegmentationDone.as_str(),
                    message,
                    generation,
                    at,
                )
            }
            Some(decide::Evaluation::Awaiting { run_id, ended }) => with_condition(
                &self.pass.status.conditions,
                &self.pass.original.conditions,
                ConditionType::Evaluated.as_str(),
                false,
                Reason::AwaitingSegmentation.as_str(),
                format!(
                    "The last successful run {run_id} (ended {ended}) has not been evaluated by AEP's daily \
                     segmentation job yet; batch destinations export the audience after it (streaming ones sooner)"
                ),
                generation,
                at,
            ),
            None => without_condition(&self.pass.status.conditions, ConditionType::Evaluated.as_str()),
        };
        let observes = self.pass.obj.spec.observes();
        self.pass.status.conditions = match (&self.pass.status.observed, observes) {
            (Some(observed), true) => {
                let (in_sync, reason, message) = if observed.differences.is_empty() {
                    (true, Reason::InSync, "AEP matches the spec".to_owned())
                } else {
                    (
                        false,
                        Reason::Drifted,
                        format!(
                            "AEP differs from the spec in {} (managementPolicy: Observe: nothing is changed in AEP)",
                            observed.differences.join(", ")
                        ),
                    )
                };
                with_condition(
                    &self.pass.status.conditions,
                    &self.pass.original.conditions,
                    ConditionType::InSync.as_str(),
                    in_sync,
                    reason.as_str(),
                    message,
                    generation,
                    at,
                )
            }
            _ => without_condition(&self.pass.status.conditions, ConditionType::InSync.as_str()),
        };
        if !observes {
            self.pass.status.observed = None;
        }
        let schedule = if observes {
            None
        } else {
            self.gathered.schedule.clone().ok().flatten()
        };
        self.pass.status.next_scheduled_time = schedule.as_ref().and_then(|s| s.next_after(at.0)).map(Time);
        if schedule.is_none() {
            self.pass.status.schedule_since = None;
        } else if self.pass.status.schedule_since.is_none() {
            self.pass.status.schedule_since = Some(at.clone());
        }
        event
    }

    /// When the object must be looked at again whatever the step said: a little after its next
    /// scheduled time (so that it is due then), or when its data enters the warning window or
    /// expires.
    fn wake(&self) -> Option<Duration> {
        /// How long after a scheduled time its pass runs (never before it).
        const SCHEDULE_WAKE_MARGIN: Duration = Duration::from_millis(500);
        let at = now().0;
        let next_scheduled = self
            .pass
            .status
            .next_scheduled_time
            .as_ref()
            .map(|t| Duration::try_from(t.0.duration_since(at)).unwrap_or_default() + SCHEDULE_WAKE_MARGIN);
        let expiry = expiry::next_check(
            self.pass.status.data_expiration.as_ref(),
            at,
            self.ctx.timing.expiration_warning,
        )
        .map(|d| d + SCHEDULE_WAKE_MARGIN);
        // While the last successful run awaits AEP's segmentation job, look for it every poll
        // interval, the first time one interval after the run.
        let segmentation = decide::next_segmentation_check(&self.pass.status, at, self.ctx.timing.activation_poll);
        next_scheduled.into_iter().chain(expiry).chain(segmentation).min()
    }

    /// The ownership record the written status implies: for an audience this object manages, with
    /// its org, endpoint and claim time recorded.
    pub(crate) fn desired_record(&self) -> Option<OwnershipRecord> {
        let st = &self.pass.original;
        let obj = self.pass.obj;
        if obj.spec.observes() || matches!(st.ownership, None | Some(OwnershipProof::Observed)) {
            return None;
        }
        Some(OwnershipRecord {
            v: 1,
            audience_id: st.audience_id.clone()?,
            custom_audience_id: st.custom_audience_id.clone(),
            org_id: st.org_id.clone()?,
            platform_url: st.platform_url.clone()?,
            sandbox: obj.spec.sandbox.clone(),
            claimed_by: obj.metadata.uid.clone()?,
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
            .pass
            .obj
            .annotations()
            .get(OWNERSHIP_RECORD)
            .and_then(|v| OwnershipRecord::parse(v, &self.pass.obj.spec.sandbox).ok());
        if let Some(mut have) = have {
            // A PATCH alone is not recorded: the run that follows it is (every updatable
            // property is part of what a run ingests).
            have.applied_spec_hash = want.applied_spec_hash.clone();
            if have == want {
                return Ok(());
            }
        }
        self.pass
            .write_annotation(OWNERSHIP_RECORD, Some(want.to_annotation()))
            .await
    }
}

static EMPTY: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();

/// Entry point for the kube-runtime `Controller`.
#[tracing::instrument(skip_all, fields(name = %obj.name_any(), namespace = obj.namespace().unwrap_or_default()))]
pub async fn reconcile(obj: Arc<ExternalAudience>, shared: Arc<Shared>) -> Result<Action, Error> {
    let ns = obj.namespace().ok_or(Error::MissingNamespace)?;
    let api = Api::<ExternalAudience>::namespaced(shared.core.client.clone(), &ns);
    let started = std::time::Instant::now();
    let secret = obj.spec.credentials_secret_ref.name.clone();
    let ctx = &shared.core;
    let (result, cleaned_up) = super::core::finalizer::with_finalizer(
        &api,
        FINALIZER,
        obj,
        |obj| {
            let (shared, api) = (&shared, &api);
            async move { apply(&obj, shared, api).await }
        },
        |obj| {
            let (shared, api) = (&shared, &api);
            async move { delete::cleanup(&obj, shared, api).await }
        },
    )
    .await;
    if result.is_ok() && cleaned_up {
        // This object's finalizer is gone: of objects that finished at the same moment, each saw
        // the others still holding the Secret before; now the last of them sees none.
        for attempt in 1..=3u64 {
            match delete::release_unused_secret(&shared, &ns, &secret, None).await {
                Ok(()) => break,
                Err(e) if attempt == 3 => tracing::warn!(error = %e, "Could not release the credentials Secret"),
                Err(_) => tokio::time::sleep(Duration::from_millis(200 * attempt)).await,
            }
        }
    }
    ctx.metrics.observe_reconcile(started.elapsed());
    result
}

/// Per-object backoff after an error (kube API failures, a deletion that waits for AEP); a pass
/// that only waits comes back after its own delay and does not grow the backoff.
pub fn error_policy(obj: Arc<ExternalAudience>, error: &Error, shared: Arc<Shared>) -> Action {
    if let Some(delay) = error.waiting() {
        return Action::requeue(super::core::backoff::jitter(delay));
    }
    shared.core.count_failure(error.category());
    tracing::warn!(name = %obj.name_any(), error = %error, "Reconcile failed");
    let key = (obj.namespace().unwrap_or_default(), obj.name_any());
    Action::requeue(shared.core.backoff(&key, error.retry_after()))
}

async fn apply(cached: &ExternalAudience, shared: &Shared, api: &Api<ExternalAudience>) -> Result<Action, Error> {
    match apply_once(cached, shared, api).await {
        // Our base was stale or someone changed the object meanwhile: decide again from a fresh
        // copy soon, without growing the error backoff.
        Err(Error::Stale) => Ok(Action::requeue(Duration::from_millis(100))),
        other => other,
    }
}

/// Reads the credentials Secret into the pass (a kube error is the pass's error; a missing or
/// invalid Secret is a fact for the decider). Returns the AEP session when they are usable.
async fn gather_credentials(p: &mut AudiencePass<'_>, ns: &str) -> Result<Option<crate::aep::Session>, Error> {
    let ctx = p.shared.core.clone();
    let secret_name = p.pass.obj.spec.credentials_secret_ref.name.clone();
    match ctx.credentials.load(&ctx.client, &ctx.aep, ns, &secret_name).await {
        Ok(creds) => {
            let session = ctx.aep.session(&creds, &p.pass.obj.spec.sandbox);
            p.with_credentials(&creds.org_id, session.platform_url().as_str());
            Ok(Some(session))
        }
        Err(e @ CredentialsError::Kube { .. }) => Err(Error::Credentials(Box::new(e))),
        Err(e @ CredentialsError::Missing { .. }) => {
            p.gathered.credentials = Creds::Missing(e.to_string());
            p.look_up_claims(None);
            Ok(None)
        }
        Err(e @ CredentialsError::Invalid { .. }) => {
            p.gathered.credentials = Creds::Invalid(e.to_string());
            p.look_up_claims(None);
            Ok(None)
        }
    }
}

async fn apply_once(cached: &ExternalAudience, shared: &Shared, api: &Api<ExternalAudience>) -> Result<Action, Error> {
    let ctx = &shared.core;
    let ns = cached.namespace().ok_or(Error::MissingNamespace)?;
    let secret_name = cached.spec.credentials_secret_ref.name.clone();
    let mut pass = AudiencePass::new(cached, shared, api);
    let decision = pass.decide();
    // Paused, or a schedule only the parser refuses: nothing to read, nothing to send.
    let invalid_schedule = decision.health.reason() == Reason::InvalidSchedule.as_str();
    if matches!(decision.step, Step::Pause) || invalid_schedule {
        return run(pass, decision, None).await;
    }
    let mut session = gather_credentials(&mut pass, &ns).await?;
    // The object moved to another Secret: the old one keeps the in-use finalizer only while
    // another object uses it.
    let recorded = cached.status.as_ref().and_then(|s| s.credentials_secret.as_deref());
    if let Some(old) = recorded
        && old != secret_name
        && !shared.secret_in_use(&ns, old, None)
    {
        credentials::release_secret(&ctx.client, &ns, old)
            .await
            .map_err(Error::Kube)?;
    }
    let decision = pass.decide();
    // The cached object can predate our own last status write. Before a step with an AEP side
    // effect, decide again from a fresh read (one GET), so a stale cache never repeats a call;
    // unless the cache holds exactly our last write, or the step sends nothing before a marker
    // write conditioned on its base (a newer write by someone else makes that write fail
    // instead: nothing to learn from a GET). Any other step reads afresh too when this process
    // wrote the object since the cached copy: the pass's first write is conditioned on its base,
    // and a base older than our own write would only conflict. When the cache lags only behind
    // this process's own writes, the last write's answer is the base: it is what a read would
    // have returned when it was answered, and the pass's first write is conditioned on it.
    let key = (ns.clone(), cached.name_any());
    let fresh = match ctx.base::<ExternalAudience>(&key, cached.resource_version().as_deref()) {
        Base::Cached => None,
        Base::Unwritten if !decision.step.mutates_aep() || decision.step.guarded_by_marker() => None,
        Base::Ours(ours) => Some(ours),
        Base::Unwritten | Base::Unknown => Some(Arc::new(api.get(&cached.name_any()).await.map_err(Error::Kube)?)),
    };
    if let Some(fresh) = fresh.as_deref()
        && fresh.resource_version() != cached.resource_version()
    {
        pass = AudiencePass::new(fresh, shared, api);
        session = gather_credentials(&mut pass, &ns).await?;
    }
    // An adopted or re-attached audience is acted on only once the cache shows the claim.
    pass.gathered.cache_holds_claim =
        cached.status.as_ref().and_then(|s| s.claimed_at.as_ref()) == pass.pass.original.claimed_at.as_ref();
    let decision = pass.decide_with_budget();
    pass.pass.status.credentials_secret = Some(secret_name);
    if let Some(s) = &session {
        pass.gather_segmentation(s).await;
        if let Step::CheckDrift { audience_id } = &decision.step {
            pass.gather_listing(s, audience_id).await;
        }
    }
    // Periodic checks wait in the background lane of the org's request budget.
    let session = match &decision.step {
        Step::CheckDrift { .. } | Step::Observe { .. } => session.map(|s| s.background()),
        _ => session,
    };
    run(pass, decision, session.as_ref()).await
}

/// The cached objects with an audience in `endpoint`'s org and sandbox.
fn managed_in(objects: &Store<ExternalAudience>, (org, _, sandbox): &super::reads::Endpoint) -> usize {
    objects
        .state()
        .iter()
        .filter(|o| {
            o.spec.sandbox == *sandbox
                && o.status
                    .as_ref()
                    .is_some_and(|s| s.audience_id.is_some() && s.org_id.as_deref() == Some(org.as_str()))
        })
        .count()
}

/// Pages of 100 the sandbox's list may take to answer for `managed` audiences: read up to 4
/// times per drift interval, it must cost fewer requests than one read per audience.
fn listing_page_budget(managed: usize) -> usize {
    (managed / 4).max(1)
}

impl AudiencePass<'_> {
    /// Where the audience lives, when the credentials name that place: (org, endpoint,
    /// sandbox). Credentials that now name another org or endpoint are never used for shared
    /// reads about it (the decision holds the object instead).
    fn home(&self, session: &crate::aep::Session) -> Option<super::reads::Endpoint> {
        let st = &self.pass.status;
        let home = matches!(&self.gathered.credentials, Creds::Ready(org, url)
            if st.org_id.as_deref() == Some(org.as_str()) && st.platform_url.as_deref() == Some(url.as_str()));
        home.then(|| {
            (
                st.org_id.clone().unwrap_or_default(),
                session.platform_url().to_string(),
                self.pass.obj.spec.sandbox.clone(),
            )
        })
    }

    /// AEP's succeeded segmentation jobs of the sandbox, while the last successful run awaits one
    /// (shared: one list per org and sandbox per poll interval).
    async fn gather_segmentation(&mut self, session: &crate::aep::Session) {
        if !decide::segmentation_check_due(&self.pass.status, self.gathered.now, self.ctx.timing.activation_poll) {
            return;
        }
        let Some(endpoint) = self.home(session) else {
            return;
        };
        let background = session.background();
        let read = self
            .shared
            .reads
            .jobs
            .get(&endpoint, self.ctx.timing.activation_poll, || {
                crate::controller::seams::FlowApi::list_segment_jobs(&background, Some("SUCCEEDED"), 100)
            })
            .await;
        match read {
            Ok(jobs) => self.gathered.segmentation = Some(jobs),
            Err(e) => tracing::debug!(error = %e, "Could not list the segmentation jobs"),
        }
    }

    /// For a drift check: the audience as the sandbox's paged list shows it (shared by every
    /// object of the sandbox: one list per quarter of the drift interval at most, in the
    /// background lane). `None` when it is not in the list or the list failed: the check then
    /// reads the audience itself.
    async fn gather_listing(&mut self, session: &crate::aep::Session, audience_id: &str) {
        let Some(endpoint) = self.home(session) else {
            return;
        };
        let max_age = (self.ctx.timing.resync / 4).max(Duration::from_secs(1));
        let background = session.background();
        let objects = self.shared.objects.clone();
        let here = endpoint.clone();
        let read = self
            .shared
            .reads
            .audiences
            .get(&endpoint, max_age, || async move {
                // Up to 4 lists per interval against one read per managed audience: the list
                // is read only while it costs less (a sandbox full of audiences this operator
                // does not manage is never paged through).
                let managed = managed_in(&objects, &here);
                let list = background.list_audiences_within(listing_page_budget(managed)).await?;
                Ok(list.map(|l| {
                    l.into_iter()
                        .map(|a| (a.id, super::reads::drift_digest(a.description.as_deref(), &a.labels)))
                        .collect()
                }))
            })
            .await;
        match read {
            Ok(listing) => self.gathered.listed = listing.as_ref().as_ref().and_then(|l| l.get(audience_id)).copied(),
            Err(e) => tracing::debug!(error = %e, "Could not list the sandbox's audiences"),
        }
    }
}

/// Carries the decision out and finishes the pass.
async fn run(
    mut pass: AudiencePass<'_>,
    decision: Decision,
    session: Option<&crate::aep::Session>,
) -> Result<Action, Error> {
    tracing::debug!(step = ?decision.step, "Planned step");
    pass.ctx.metrics.count_step(decision.step.name());
    pass.pass.action = decision.step.name();
    let paused = matches!(decision.step, Step::Pause);
    let out = match session {
        Some(s) => pass.act_through(decision, s).await?,
        None => pass.act(decision, &NoAep).await?,
    };
    pass.finish(out, paused).await
}

/// The run budget's state after a restart, from the objects of (org, sandbox) in the cache: the
/// runs they started on UTC day `day` (`status.runCounts` holds each audience's count of the
/// day), and whether any of them was waiting (`RunDeferred`).
pub(crate) fn budget_seed(objects: &Store<ExternalAudience>, org: &str, sandbox: &str, day: i64) -> (u32, bool) {
    let state = objects.state();
    let statuses: Vec<_> = state
        .iter()
        .filter(|o| o.spec.sandbox == sandbox)
        .filter_map(|o| o.status.as_ref())
        .filter(|st| st.org_id.as_deref() == Some(org))
        .collect();
    let day_name = Timestamp::from_second(day.saturating_mul(86_400))
        .map(|t| t.strftime("%Y-%m-%d").to_string())
        .unwrap_or_default();
    let used = statuses
        .iter()
        .map(|st| {
            let counted = st
                .run_counts
                .as_ref()
                .filter(|c| c.day == day_name)
                .map_or(0, |c| c.today);
            let recorded = st
                .last_run
                .iter()
                .chain(st.run_history.iter())
                .filter(|r| {
                    r.start_time
                        .as_ref()
                        .is_some_and(|t| t.0.as_second().div_euclid(86_400) == day)
                })
                .count() as u32;
            counted.max(recorded)
        })
        .sum();
    let waiting = statuses.iter().any(|st| {
        st.conditions.iter().any(|c| {
            c.type_ == ConditionType::Reconciling.as_str()
                && c.status == "True"
                && c.reason == Reason::RunDeferred.as_str()
        })
    });
    (used, waiting)
}

/// Wires the kind: the claim index fed from the watch stream, and what a pass needs.
pub fn shared(
    core: Arc<Context>,
    objects: Store<ExternalAudience>,
    settings: Settings,
    runs_per_sandbox_per_day: u32,
    budget_gather: Duration,
) -> Shared {
    Shared {
        core,
        objects,
        claims: ClaimIndex::default(),
        budget: RunBudget::new(
            match runs_per_sandbox_per_day {
                0 => 100,
                n => n,
            },
            clock::now().0,
            budget_gather,
        ),
        settings,
        activations: kube::runtime::reflector::store().0,
        reads: Arc::default(),
        drift_checks: Default::default(),
    }
}

impl Shared {
    /// With the AudienceActivation cache and the shared reads of the process.
    pub fn with_activations(mut self, activations: Store<AudienceActivation>, reads: Arc<Reads>) -> Self {
        self.activations = activations;
        self.reads = reads;
        self
    }
}

/// The AEP of a pass that has no credentials: every step that would call it is decided away
/// before (the decider holds such objects), so a call here is a bug, reported as one.
struct NoAep;

impl NoAep {
    fn refuse<T>(call: crate::aep::error::Call) -> Result<T, crate::aep::Error> {
        Err(crate::aep::Error::synthetic(
            call,
            crate::aep::ErrorKind::Unauthorized,
            "no usable credentials for this object".to_owned(),
        ))
    }
}

impl AepApi for NoAep {
    async fn find_audiences_by_name(&self, _: &str) -> Result<Vec<crate::aep::UpsAudience>, crate::aep::Error> {
        Self::refuse(crate::aep::error::Call::FindAudiences)
    }
    async fn find_audiences_by_custom_id(&self, _: &str) -> Result<Vec<crate::aep::UpsAudience>, crate::aep::Error> {
        Self::refuse(crate::aep::error::Call::FindAudiences)
    }
    async fn create_audience(
        &self,
        _: &crate::aep::CreateAudienceRequest,
    ) -> Result<crate::aep::CreateAudienceResponse, crate::aep::Error> {
        Self::refuse(crate::aep::error::Call::CreateAudience)
    }
    async fn get_operation(&self, _: &str) -> Result<crate::aep::Operation, crate::aep::Error> {
        Self::refuse(crate::aep::error::Call::GetOperation)
    }
    async fn get_audience(&self, _: &str) -> Result<crate::aep::UpsAudience, crate::aep::Error> {
        Self::refuse(crate::aep::error::Call::GetAudience)
    }
    async fn patch_audience(
        &self,
        _: &str,
        _: &crate::aep::PatchAudienceRequest,
    ) -> Result<crate::aep::ExternalAudience, crate::aep::Error> {
        Self::refuse(crate::aep::error::Call::PatchAudience)
    }
    async fn start_run(&self, _: &str, _: &crate::aep::StartRunRequest) -> Result<crate::aep::Run, crate::aep::Error> {
        Self::refuse(crate::aep::error::Call::StartRun)
    }
    async fn get_run(&self, _: &str, _: &str) -> Result<crate::aep::Run, crate::aep::Error> {
        Self::refuse(crate::aep::error::Call::GetRun)
    }
    async fn list_runs(&self, _: &str) -> Result<Vec<crate::aep::Run>, crate::aep::Error> {
        Self::refuse(crate::aep::error::Call::ListRuns)
    }
    async fn delete_audience(&self, _: &str) -> Result<(), crate::aep::Error> {
        Self::refuse(crate::aep::error::Call::DeleteAudience)
    }
    async fn extend_ttl(&self, _: &str) -> Result<crate::aep::ExtendTtlResponse, crate::aep::Error> {
        Self::refuse(crate::aep::error::Call::ExtendTtl)
    }
}

/// The outcome of a step that makes no AEP call: the decision's health, and when to look again.
pub(crate) fn without_call(decision: &Decision, now: Timestamp) -> Option<Outcome> {
    let health = decision.health.clone();
    let note = |type_, reason| (type_, reason, health.message().to_owned());
    Some(match &decision.step {
        Step::Pause => Outcome::planned(Next::Await),
        Step::Wait => Outcome::planned(Next::Await),
        Step::Block { event } => {
            let Health::Stalled { reason, message } = &health else {
                return None;
            };
            Outcome::blocked(*reason, message.clone(), *event)
        }
        Step::Hold { retry, event } => {
            let mut out = Outcome::with(health.clone(), Next::After(*retry));
            out.event = event.map(|(t, r)| note(t, r));
            out
        }
        Step::Defer { until } => {
            let wait = Duration::try_from(until.duration_since(now)).unwrap_or_default();
            Outcome::with(health.clone(), Next::Exactly(wait)).note(
                EventType::Normal,
                EventReason::RunDeferred,
                health.message().to_owned(),
            )
        }
        Step::AwaitCache => Outcome::with(health, Next::Exactly(Duration::from_millis(200))),
        Step::Idle { next, event } => {
            let mut out = Outcome::with(health, next.map_or(Next::Await, Next::Exactly));
            out.event = event.clone();
            out
        }
        _ => return None,
    })
}

/// How long from `now` until `at` (zero once passed).
pub(crate) fn until(at: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(now)).unwrap_or_default()
}
