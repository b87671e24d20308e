//! The ExternalAudience decider: from the facts a pass gathered, the one step it takes and the
//! health the object's state implies. Pure and complete: pause, credentials, ownership (org,
//! claims, the restore record), observe-only, create and its recovery, adoption, updates, runs
//! and their budget and limits, schedules, data expiry and its extension, drift checks, and
//! deletion all decide here, from facts only. What happens after it (a step's AEP calls) carries
//! the verdict out; it never overrides it.
//!
//! Every decision is reproducible from what `kubectl get -o yaml` shows plus the facts (the
//! clock, the credentials' org, other objects' claims, the run budget's grant), and is
//! table-tested below.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::events::EventType;

use super::spec::{ingest_hash_matches, updatable_hash_matches};
use crate::{
    aep::UpsAudience,
    api::{
        Blocked, DeletionPolicy, EventReason, ExternalAudienceSpec, ExternalAudienceStatus, OWNERSHIP_RECORD,
        OwnershipProof, OwnershipRecord, PAUSED, RESYNC_INTERVAL, RETRY_CREATE, RUN_REQUESTED_AT, Reason, RunState,
        conditions,
    },
    config::{MissingAudiencePolicy, RunWindow},
    controller::{
        budget::{Grant, Priority},
        claims::Claim,
        clock::elapsed,
        core::Timing,
        expiry,
        schedule::Schedule,
    },
    status::Health,
};

/// AEP's limit of ingestion runs per audience, as configured.
#[derive(Clone, Copy, Debug)]
pub struct RunLimit {
    /// Runs allowed per window.
    pub max: u32,
    /// The window.
    pub window: RunWindow,
}

impl Default for RunLimit {
    fn default() -> Self {
        RunLimit {
            max: 10,
            window: RunWindow::Lifetime,
        }
    }
}

/// The kind's own switches (from the command line).
#[derive(Clone, Copy, Debug, Default)]
pub struct Settings {
    pub missing_audience_policy: MissingAudiencePolicy,
    pub run_limit: RunLimit,
}

pub use crate::controller::core::facts::{Credentials, Endpoint};

/// What the decider sees.
#[derive(Clone, Debug)]
pub struct Facts<'a> {
    /// The operator's clock.
    pub now: Timestamp,
    /// The host's clock (compared with the API server's `creationTimestamp`).
    pub wall: Timestamp,
    /// `metadata.name`, `metadata.generation`, `metadata.creationTimestamp`, `metadata.uid`.
    pub name: &'a str,
    pub generation: i64,
    pub created: Option<Timestamp>,
    pub uid: Option<&'a str>,
    pub spec: &'a ExternalAudienceSpec,
    pub status: &'a ExternalAudienceStatus,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// The annotations the decision reads.
    pub paused: bool,
    pub run_request: Option<&'a str>,
    pub retry_create: Option<&'a str>,
    /// The drift interval: the annotation's, else the flag's; `Err` names a malformed annotation.
    pub resync: Result<Duration, String>,
    /// `spec.ingestion.schedule` parsed (`Err` names the field and the rule).
    pub schedule: &'a Result<Option<Schedule>, String>,
    pub credentials: Credentials<'a>,
    /// Another object's claim that wins over this object's on the same audience.
    pub claimed_by: Option<&'a Claim>,
    /// The ownership record annotation, parsed (`None` without one).
    pub record: Option<&'a Result<OwnershipRecord, String>>,
    /// The run budget's answer, asked only when a run would start (`None`: not asked).
    pub budget: Option<&'a Grant>,
    /// The cache shows this object's recorded claim (an adopted or re-attached audience is acted
    /// on only then).
    pub cache_holds_claim: bool,
    /// The object's namespace is being deleted (only asked when a deletion lacks credentials).
    pub namespace_terminating: bool,
    /// The AudienceActivations of this object that still exist (a deletion waits for them).
    pub activations: &'a [String],
    /// When this process last checked the object for drift (a cache: `None` after a restart).
    pub last_drift_check: Option<Timestamp>,
    /// When this process started: after a restart, drift checks are due from the first of the
    /// object's slots after it (none owed from the downtime, none early).
    pub started: Timestamp,
    pub timing: &'a Timing,
    pub settings: &'a Settings,
}

/// How a create whose answer was lost may be sent again when the lookups find nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resend {
    /// Not yet: the settle window ends in this long.
    Not(Duration),
    /// The window passed: absence is proven once the lookups find no audience with the name.
    AfterLookup,
}

/// The one step a pass performs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    // ----- no AEP call --------------------------------------------------------------------------
    /// Paused by annotation: only the `Paused` condition is written.
    Pause,
    /// A problem only a change resolves is recorded for this generation: wait.
    Wait,
    /// Record a problem only a change can resolve (`status.blocked`, a Warning event).
    Block { event: EventReason },
    /// Stalled or waiting on something outside the spec that may change on its own (the Secret,
    /// another object's claim, the org): look again after `retry`.
    Hold {
        retry: Duration,
        event: Option<(EventType, EventReason)>,
    },
    /// The run budget is used: nothing is sent until `until`.
    Defer { until: Timestamp },
    /// Act only once the cache shows this object's claim.
    AwaitCache,
    /// Converged: come back for the next drift check (`None`: none is due); the event reports a
    /// problem that does not stop the object (a malformed annotation).
    Idle {
        next: Option<Duration>,
        event: Option<(EventType, EventReason, String)>,
    },
    /// Record when the first drift check is due, spread over one interval (no AEP call).
    ScheduleDriftCheck { at: Timestamp },
    // ----- AEP calls ----------------------------------------------------------------------------
    /// Nothing sent yet: look the name up (a holder that is not provably ours stalls), then create.
    Create,
    /// A create was sent but its answer was lost (or its operation is unknown to AEP): look for the
    /// audience by proof; `resend` says what to do when nothing is found; `confirmed` means the
    /// user allowed a new create although candidates exist (`retry-create` with the token).
    RecoverCreate {
        resend: Resend,
        confirmed: bool,
        token: String,
    },
    /// Poll the create operation.
    PollOperation { operation_id: String },
    /// Adopt the audience named by `spec.audienceId` (or take over an observed one).
    Adopt { audience_id: String },
    /// Re-attach to the audience the ownership record names, once AEP confirms it (reads only).
    Reattach { audience_id: String },
    /// Read the audience and its runs and report them (`managementPolicy: Observe`; reads only).
    Observe { audience_id: String },
    /// PATCH the updatable properties.
    Update { audience_id: String },
    /// Poll the run in flight.
    PollRun { audience_id: String, run_id: String },
    /// A run start may have been sent without its id recorded: find it before starting another.
    RecoverRun { audience_id: String },
    /// Start the run owed; `scheduled_for` is the scheduled time it serves, if one is due.
    StartRun {
        audience_id: String,
        scheduled_for: Option<Time>,
    },
    /// Extend the data expiration (`spec.expiration.autoExtend`).
    ExtendTtl { audience_id: String },
    /// Read the audience and PATCH drifted properties back.
    CheckDrift { audience_id: String },
    // ----- deletion -----------------------------------------------------------------------------
    /// Deletion waits for the object's AudienceActivations to remove the audience from their
    /// dataflows (AEP refuses to delete an audience a destination uses): delete them, wait.
    AwaitActivations { names: Vec<String> },
    /// Release the object without touching AEP (the event says why, if anything).
    Release {
        event: Option<(EventType, EventReason, String)>,
    },
    /// Deletion waits (`paused`: show `Paused`), the finalizer stays.
    WaitDeletion { retry: Duration, paused: bool },
    /// Recorded before ownership was tracked: prove the audience is this object's, then delete.
    DeleteLegacy { audience_id: String },
    /// No audience id yet: resolve the create (its operation, or its audience by proof), then
    /// delete what it made; `settle` is what is left of the window for a lost create.
    ResolveAndDelete {
        operation_id: Option<String>,
        settle: Option<Duration>,
    },
    /// Delete the audience (404 counts as done).
    Delete { audience_id: String },
}

impl Step {
    /// Bounded label for metrics and the events' action.
    pub fn name(&self) -> &'static str {
        match self {
            Step::Pause => "Pause",
            Step::Wait => "Wait",
            Step::Block { .. } => "Block",
            Step::Hold { .. } => "Hold",
            Step::Defer { .. } => "Defer",
            Step::AwaitCache => "AwaitCache",
            Step::Idle { .. } => "Idle",
            Step::ScheduleDriftCheck { .. } => "ScheduleDriftCheck",
            Step::Create => "Create",
            Step::RecoverCreate { .. } => "RecoverCreate",
            Step::PollOperation { .. } => "PollOperation",
            Step::Adopt { .. } => "Adopt",
            Step::Reattach { .. } => "Reattach",
            Step::Observe { .. } => "Observe",
            Step::Update { .. } => "Update",
            Step::PollRun { .. } => "PollRun",
            Step::RecoverRun { .. } => "RecoverRun",
            Step::StartRun { .. } => "StartRun",
            Step::ExtendTtl { .. } => "ExtendTtl",
            Step::CheckDrift { .. } => "CheckDrift",
            Step::AwaitActivations { .. } => "AwaitActivations",
            Step::Release { .. } => "Release",
            Step::WaitDeletion { .. } => "WaitDeletion",
            Step::DeleteLegacy { .. } => "DeleteLegacy",
            Step::ResolveAndDelete { .. } => "ResolveAndDelete",
            Step::Delete { .. } => "Delete",
        }
    }

    /// Whether the step changes nothing in AEP before a marker write conditioned on the
    /// resourceVersion it was decided from: a stale base makes that write conflict, so nothing is
    /// sent twice even without a fresh read.
    pub fn guarded_by_marker(&self) -> bool {
        matches!(self, Step::Create | Step::StartRun { .. })
    }

    /// Whether the step may change something in AEP (it is then decided from a fresh read).
    pub fn mutates_aep(&self) -> bool {
        matches!(
            self,
            Step::Create
                | Step::RecoverCreate { .. }
                | Step::Adopt { .. }
                | Step::Reattach { .. }
                | Step::Update { .. }
                | Step::RecoverRun { .. }
                | Step::StartRun { .. }
                | Step::ExtendTtl { .. }
                | Step::DeleteLegacy { .. }
                | Step::ResolveAndDelete { .. }
                | Step::Delete { .. }
        )
    }
}

/// The step and the health the state implies (what the conditions say while it is pending).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub step: Step,
    pub health: Health,
}

fn decision(step: Step, health: Health) -> Decision {
    Decision { step, health }
}

// ----- helpers of the decision (pure) -------------------------------------------------------------

/// The audience's name in AEP.
pub fn audience_name<'a>(f: &Facts<'a>) -> &'a str {
    f.spec.audience_name(f.name)
}

/// Whether this object has sent anything to AEP for an audience (a create, or a claim on one):
/// from then on the org and endpoint it was sent to are part of its ownership.
pub fn has_sent(st: &ExternalAudienceStatus) -> bool {
    st.audience_id.is_some() || st.operation_id.is_some() || st.create_pending_since.is_some()
}

/// The latest `spec.ingestion.schedule` time not yet served: after the last one a run was
/// started for, or after the schedule was first seen (a schedule added to an existing object owes
/// nothing for the times before it; a new object's first run covers what came before).
pub fn schedule_due(f: &Facts<'_>) -> Option<Time> {
    let schedule = f.schedule.as_ref().ok()?.as_ref()?;
    let after = f
        .status
        .last_scheduled_time
        .as_ref()
        .or(f.status.schedule_since.as_ref())?;
    schedule.latest_due(after.0, f.now).map(Time)
}

/// Whether a run is owed: the AEP-facing spec changed since the last run (or there never was one
/// for a created audience), a new run request arrived, or a scheduled time is due.
pub fn run_owed(f: &Facts<'_>) -> bool {
    demand_owed(f) || schedule_due(f).is_some()
}

/// A run owed by the spec or a run request (not by the schedule).
fn demand_owed(f: &Facts<'_>) -> bool {
    let spec_changed = !ingest_hash_matches(f.status.ingested_spec_hash.as_deref(), f.spec, audience_name(f));
    let requested = f.run_request.is_some() && f.status.ingested_run_request.as_deref() != f.run_request;
    spec_changed || requested
}

/// How the run owed claims the sandbox's budget: spec changes and run requests first (oldest
/// object first), then scheduled refreshes (oldest due time first).
pub fn run_priority(f: &Facts<'_>) -> (Priority, Timestamp) {
    match (demand_owed(f), schedule_due(f)) {
        (false, Some(due)) => (Priority::Scheduled, due.0),
        _ => (Priority::Demand, f.created.unwrap_or(f.now)),
    }
}

/// The audience's TTL in days as far as this object knows it: the spec's, else AEP's default (30)
/// for an audience this object created; `None` for an adopted one whose TTL AEP does not return.
pub fn known_ttl(spec: &ExternalAudienceSpec, status: &ExternalAudienceStatus) -> Option<i32> {
    const AEP_DEFAULT_TTL_DAYS: i32 = 30;
    spec.ttl_in_days.or_else(|| {
        let created_here = status.custom_audience_id.is_some()
            && !matches!(
                status.ownership,
                Some(OwnershipProof::SpecAudienceId | OwnershipProof::Observed)
            );
        created_here.then_some(AEP_DEFAULT_TTL_DAYS)
    })
}

/// The data expiration the status implies (for the audience this object ingests).
/// What AEP's daily segmentation job says about the last successful run (the `Evaluated`
/// condition).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Evaluation {
    /// A scheduler job created after the run ended.
    Done(crate::api::SegmentationSeen),
    /// None yet: the run `run_id`, ended at `ended`.
    Awaiting { run_id: String, ended: Timestamp },
}

/// The last run, if it succeeded: its id and end.
fn last_success(status: &ExternalAudienceStatus) -> Option<(&str, Timestamp)> {
    let run = status.last_run.as_ref()?;
    (run.status == crate::api::RunState::Success).then_some(())?;
    Some((run.run_id.as_str(), run.end_time.as_ref()?.0))
}

/// Whether the segmentation jobs must be read: the last successful run has no job seen yet.
pub fn awaits_segmentation(status: &ExternalAudienceStatus) -> bool {
    last_success(status).is_some_and(|(run_id, _)| status.segmentation.as_ref().is_none_or(|s| s.run_id != run_id))
}

/// Whether the segmentation jobs are worth reading now: the last successful run awaits a job and
/// ended at least one poll interval ago (no daily job follows a run within seconds; later reads
/// are one per poll interval, shared per org and sandbox).
pub fn segmentation_check_due(status: &ExternalAudienceStatus, now: Timestamp, poll: Duration) -> bool {
    awaits_segmentation(status) && last_success(status).is_some_and(|(_, ended)| elapsed(ended, now) >= poll)
}

/// When to look for the segmentation job next, while the last successful run awaits one.
pub fn next_segmentation_check(status: &ExternalAudienceStatus, now: Timestamp, poll: Duration) -> Option<Duration> {
    if !awaits_segmentation(status) {
        return None;
    }
    let (_, ended) = last_success(status)?;
    let since = elapsed(ended, now);
    Some(if since >= poll { poll } else { poll - since })
}

/// The evaluation of the last successful run from the succeeded segmentation jobs read (newest
/// first; `None`: not read): the first job of AEP's scheduler created after the run ended. `None`
/// without a successful run.
pub fn evaluation(status: &ExternalAudienceStatus, jobs: Option<&[crate::aep::SegmentJob]>) -> Option<Evaluation> {
    let (run_id, ended) = last_success(status)?;
    if let Some(seen) = status.segmentation.as_ref().filter(|s| s.run_id == run_id) {
        return Some(Evaluation::Done((**seen).clone()));
    }
    let ended_ms = ended.as_millisecond();
    let job = jobs.into_iter().flatten().filter(|j| {
        j.source.as_deref() == Some("scheduler")
            && j.status == crate::aep::SegmentJobStatus::Succeeded
            && j.creation_time.is_some_and(|t| t > ended_ms)
    });
    let first = job.min_by_key(|j| j.creation_time);
    Some(
        match first.and_then(|j| Some((j, Timestamp::from_millisecond(j.creation_time?).ok()?))) {
            Some((j, created)) => Evaluation::Done(crate::api::SegmentationSeen {
                run_id: run_id.to_owned(),
                job_id: j.id.clone(),
                created_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(created),
            }),
            None => Evaluation::Awaiting {
                run_id: run_id.to_owned(),
                ended,
            },
        },
    )
}

pub fn data_expiration(f: &Facts<'_>) -> Option<crate::api::DataExpiration> {
    match known_ttl(f.spec, f.status) {
        Some(ttl) if !f.spec.observes() => expiry::compute(f.status, ttl),
        _ => None,
    }
}

/// Reasons that releases before `status.blocked` reported as terminal for a generation, read back
/// from the `Stalled` condition of such objects after an upgrade.
const LEGACY_TERMINAL: &[Reason] = &[
    Reason::RejectedByAEP,
    Reason::OperationFailed,
    Reason::AudienceNameTaken,
    Reason::AudienceNotFound,
];

/// The problem recorded for the current generation, if any.
pub fn blocked_now(status: &ExternalAudienceStatus, generation: i64) -> Option<Blocked> {
    if let Some(b) = &status.blocked {
        return (b.generation == generation).then(|| (**b).clone());
    }
    status
        .conditions
        .iter()
        .find(|c| {
            c.type_ == conditions::STALLED
                && c.status == "True"
                && c.observed_generation == Some(generation)
                && LEGACY_TERMINAL.iter().any(|r| r.as_str() == c.reason)
        })
        .map(|c| Blocked {
            reason: c.reason.clone(),
            generation,
            message: c.message.clone(),
        })
}

/// The token a `retry-create` annotation must carry to let a create of unknown outcome be sent
/// again: the pending create's timestamp.
pub fn retry_create_token(status: &ExternalAudienceStatus) -> Option<String> {
    status
        .create_pending_since
        .as_ref()
        .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// A deterministic fraction in [0, 1) per object, to spread periodic work over an interval.
pub fn spread(uid: Option<&str>) -> f64 {
    let h = uid.unwrap_or_default().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (h % 10_000) as f64 / 10_000.0
}

/// The org or endpoint the credentials now name, if it is not the one the audience lives in.
fn organization_changed(f: &Facts<'_>) -> Option<String> {
    let st = f.status;
    let Credentials::Ready(now) = f.credentials else {
        return None;
    };
    if !has_sent(st) {
        return None;
    }
    let org_moved = st.org_id.as_deref().is_some_and(|o| o != now.org_id);
    let endpoint_moved = st.platform_url.as_deref().is_some_and(|u| u != now.platform_url);
    if !org_moved && !endpoint_moved {
        return None;
    }
    let what = st.audience_id.as_deref().map_or_else(
        || "the audience this object is creating".to_owned(),
        |id| format!("audience {id}"),
    );
    Some(format!(
        "The credentials Secret {:?} now names IMS org {} at {}, but {what} lives in org {} at {}. Nothing is sent to \
         either org for it (it is never created again elsewhere): restore the Secret's orgId/platformUrl, or create a \
         new ExternalAudience for the other org",
        f.spec.credentials_secret_ref.name,
        now.org_id,
        now.platform_url,
        st.org_id.as_deref().unwrap_or("?"),
        st.platform_url.as_deref().unwrap_or(now.platform_url),
    ))
}

/// The message of an object whose audience another object manages.
pub fn claimed_message(audience_id: &str, sandbox: &str, holder: &Claim) -> String {
    format!(
        "Audience {audience_id} in sandbox {sandbox:?} is managed by ExternalAudience {}, whose claim is older{}; this \
         object sends nothing to AEP for it and never deletes it. Delete this object (a copy, or a second object \
         naming the same audience), or release the audience from {} first (delete it there with deletionPolicy: \
         Orphan, or set its managementPolicy: Observe)",
        holder.object_name(),
        if holder.recorded { "" } else { " (not yet recorded)" },
        holder.object_name(),
    )
}

/// The message of a create whose outcome cannot be proven, with what resolves it.
pub fn create_outcome_unknown_message(
    object: &str,
    audience_name: &str,
    sandbox: &str,
    token: &str,
    candidates: &[&UpsAudience],
) -> String {
    let found = candidates.iter().map(|a| a.id.as_str()).collect::<Vec<_>>().join(", ");
    format!(
        "The answer to this object's create of audience {audience_name:?} (sent at {token}) was lost, and AEP gives no \
         proof of whether it created one: audience(s) {found} in sandbox {sandbox:?} carry that name but not this \
         object's customAudienceId. If one of them was created by this object, set spec.audienceId to its id to manage it. \
         If none was, allow a new create with `kubectl annotate externalaudience/{object} {RETRY_CREATE}={token} --overwrite`"
    )
}

const PAUSED_MESSAGE: &str =
    "Reconciliation is paused by the aep.audience-operator.dev/paused annotation: no AEP call is made for this object";

/// The health a paused object keeps showing (its other conditions are left as they were).
pub fn paused_message(deleting: bool) -> &'static str {
    if deleting {
        "Deletion waits: the object is paused (aep.audience-operator.dev/paused), so the audience is not deleted in \
         AEP; remove the annotation, or set spec.deletionPolicy: Orphan to release it"
    } else {
        PAUSED_MESSAGE
    }
}

// ----- the decision -------------------------------------------------------------------------------

/// The one step for the object, and the health its state implies.
pub fn decide(f: &Facts<'_>) -> Decision {
    if f.deleting { deletion(f) } else { apply(f) }
}

fn hold(health: Health, retry: Duration, event: Option<(EventType, EventReason)>) -> Decision {
    decision(Step::Hold { retry, event }, health)
}

/// A missing or invalid credentials Secret: a missing one is `Reconciling` for a grace period
/// after the object's creation (it may be on its way, e.g. from External Secrets, and a GitOps
/// `wait` must not fail at once), then `Stalled`; either way it is looked for again on a timer.
fn credentials_problem(f: &Facts<'_>) -> Option<Decision> {
    let t = f.timing;
    let event = Some((EventType::Warning, EventReason::CredentialsError));
    match f.credentials {
        Credentials::Missing(msg) => {
            let age = f.created.map(|c| elapsed(c, f.wall)).unwrap_or_default();
            Some(if age < t.secret_grace {
                hold(
                    Health::progressing(Reason::CredentialsMissing, format!("{msg}; waiting for it")),
                    Duration::from_secs(5).min(t.credentials_retry),
                    event,
                )
            } else {
                hold(
                    Health::stalled(Reason::CredentialsMissing, msg),
                    t.credentials_retry,
                    event,
                )
            })
        }
        Credentials::Invalid(msg) => Some(hold(
            Health::stalled(Reason::CredentialsInvalid, msg),
            t.credentials_retry,
            event,
        )),
        Credentials::Ready(_) | Credentials::NotRead => None,
    }
}

fn apply(f: &Facts<'_>) -> Decision {
    let st = f.status;
    let t = f.timing;
    if f.paused {
        return decision(Step::Pause, Health::ready(PAUSED_MESSAGE));
    }
    // A schedule only the parser can refuse (the CRD's rule checks its shape).
    if let Err(msg) = f.schedule {
        return decision(
            Step::Block {
                event: EventReason::InvalidSchedule,
            },
            Health::stalled(Reason::InvalidSchedule, msg.clone()),
        );
    }
    if let Some(d) = credentials_problem(f) {
        return d;
    }
    if let Some(blocked) = blocked_now(st, f.generation) {
        let retry_confirmed = blocked.reason == Reason::CreateOutcomeUnknown.as_str()
            && f.retry_create.is_some()
            && f.retry_create.map(str::to_owned) == retry_create_token(st);
        if !retry_confirmed {
            let reason = Reason::parse(&blocked.reason).unwrap_or(Reason::RejectedByAEP);
            return decision(Step::Wait, Health::stalled(reason, blocked.message));
        }
    }
    let held = |reason, message: String, event| {
        hold(
            Health::stalled(reason, message),
            t.credentials_retry,
            Some((EventType::Warning, event)),
        )
    };
    if let Some(message) = organization_changed(f) {
        return held(Reason::OrganizationChanged, message, EventReason::OrganizationChanged);
    }
    if let Some(holder) = f.claimed_by {
        return held(
            Reason::AudienceClaimed,
            claimed_message(&holder.audience.1, &holder.audience.0, holder),
            EventReason::AudienceClaimed,
        );
    }
    if f.spec.observes() {
        return observe(f);
    }
    if let Some(id) = &st.audience_id
        && st.ownership == Some(OwnershipProof::Observed)
    {
        // Switched from Observe to Manage: take the audience over (a claim, then a PATCH; a run
        // only if the spec owes one).
        return decision(
            Step::Adopt {
                audience_id: id.clone(),
            },
            Health::progressing(
                Reason::CreatingAudience,
                format!("Taking over audience {id} (managementPolicy: Manage)"),
            ),
        );
    }
    match st.audience_id.clone() {
        None => bring_under_management(f),
        Some(audience_id) => manage(f, audience_id),
    }
}

/// `managementPolicy: Observe`: read when due, otherwise wait for the next read.
fn observe(f: &Facts<'_>) -> Decision {
    let st = f.status;
    // The CRD requires spec.audienceId with Observe.
    let Some(id) = f.spec.audience_id.clone().or_else(|| st.audience_id.clone()) else {
        return hold(
            Health::stalled(
                Reason::AudienceNotFound,
                "spec.managementPolicy Observe needs spec.audienceId to name the audience to observe",
            ),
            f.timing.credentials_retry,
            None,
        );
    };
    let observed = st.audience_id.as_deref() == Some(id.as_str()) && st.observed.is_some();
    if !observed {
        return decision(
            Step::Observe {
                audience_id: id.clone(),
            },
            Health::progressing(
                Reason::CreatingAudience,
                format!("Reading audience {id} (managementPolicy: Observe)"),
            ),
        );
    }
    let health = observed_health(st, &id);
    match drift_schedule(f) {
        DriftSchedule::Due => decision(Step::Observe { audience_id: id }, health),
        DriftSchedule::First(at) => decision(Step::ScheduleDriftCheck { at }, health),
        DriftSchedule::In(next) => decision(Step::Idle { next, event: None }, health),
    }
}

fn observed_health(st: &ExternalAudienceStatus, id: &str) -> Health {
    let differences = st.observed.as_ref().map(|o| o.differences.clone()).unwrap_or_default();
    if differences.is_empty() {
        Health::ready(format!(
            "Observing audience {id} (managementPolicy: Observe): AEP matches the spec"
        ))
    } else {
        Health::ready(format!(
            "Observing audience {id} (managementPolicy: Observe): AEP differs from the spec in {}; nothing is \
             changed in AEP",
            differences.join(", ")
        ))
    }
}

/// No audience yet: finish a create in flight, re-attach after a restore, adopt, or create.
fn bring_under_management(f: &Facts<'_>) -> Decision {
    let st = f.status;
    let name = audience_name(f);
    // A create in flight is finished first, whatever else changed: its audience is never orphaned.
    if let Some(op) = &st.operation_id {
        return decision(
            Step::PollOperation {
                operation_id: op.clone(),
            },
            Health::progressing(Reason::WaitingForOperation, format!("Waiting for AEP operation {op}")),
        );
    }
    if let Some(since) = &st.create_pending_since {
        let settle = f.timing.create_settle;
        let age = elapsed(since.0, f.now);
        let resend = if age < settle {
            Resend::Not(settle - age)
        } else {
            Resend::AfterLookup
        };
        let token = retry_create_token(st).unwrap_or_default();
        return decision(
            Step::RecoverCreate {
                resend,
                confirmed: f.retry_create == Some(token.as_str()),
                token,
            },
            Health::progressing(
                Reason::ConfirmingCreate,
                format!("The answer to the create of audience {name:?} was lost; looking for it by proof"),
            ),
        );
    }
    // A record of an audience this object already lost (deleted behind its back, then
    // re-created) names nothing to re-attach to.
    let record = f
        .record
        .filter(|r| !matches!(r, Ok(rec) if st.lost_audience_ids.contains(&rec.audience_id)));
    let held = |reason, message: String| {
        hold(
            Health::stalled(reason, message),
            f.timing.credentials_retry,
            Some((EventType::Warning, EventReason::AEPError)),
        )
    };
    match record {
        Some(Ok(record)) if f.spec.audience_id.as_ref().is_none_or(|id| *id == record.audience_id) => {
            return decision(
                Step::Reattach {
                    audience_id: record.audience_id.clone(),
                },
                Health::progressing(
                    Reason::Reattaching,
                    format!(
                        "Re-attaching to audience {} named by the ownership record (annotation {OWNERSHIP_RECORD})",
                        record.audience_id
                    ),
                ),
            );
        }
        Some(Ok(record)) => {
            return held(
                Reason::AudienceIdMismatch,
                format!(
                    "The ownership record (annotation {OWNERSHIP_RECORD}) names audience {}, but spec.audienceId \
                     names {}: remove the annotation to adopt spec.audienceId, or remove spec.audienceId to \
                     re-attach to the recorded audience",
                    record.audience_id,
                    f.spec.audience_id.as_deref().unwrap_or_default()
                ),
            );
        }
        Some(Err(problem)) => {
            return held(
                Reason::InvalidOwnershipRecord,
                format!(
                    "{problem}. Nothing is sent to AEP: remove the annotation (to create or adopt as the spec \
                     says), or restore the value the controller wrote"
                ),
            );
        }
        None => {}
    }
    if let Some(id) = &f.spec.audience_id {
        return decision(
            Step::Adopt {
                audience_id: id.clone(),
            },
            Health::progressing(Reason::CreatingAudience, format!("Adopting audience {id}")),
        );
    }
    decision(
        Step::Create,
        Health::progressing(Reason::CreatingAudience, format!("Creating audience {name:?} in AEP")),
    )
}

/// An audience under management: keep it in line with the spec, ingest what is owed, watch it.
fn manage(f: &Facts<'_>, audience_id: String) -> Decision {
    let st = f.status;
    if let Some(wanted) = &f.spec.audience_id
        && *wanted != audience_id
    {
        let message = format!(
            "spec.audienceId names audience {wanted}, but this object manages audience {audience_id} (proof: {}); \
             it keeps managing {audience_id}. To manage {wanted}, create a new ExternalAudience",
            st.ownership
                .map(|p| format!("{p:?}"))
                .unwrap_or_else(|| "recorded".into())
        );
        return decision(
            Step::Block {
                event: EventReason::AEPError,
            },
            Health::stalled(Reason::AudienceIdMismatch, message),
        );
    }
    let step = manage_step(f, &audience_id);
    // An audience this object adopted or re-attached to is acted on only once the cache shows the
    // claim: the claim index has then seen every claim recorded before it, so a second object
    // that claimed the same audience a moment earlier is known (and wins).
    if step.step.mutates_aep()
        && matches!(
            st.ownership,
            Some(OwnershipProof::SpecAudienceId | OwnershipProof::RestoreRecord)
        )
        && !f.cache_holds_claim
    {
        return decision(Step::AwaitCache, step.health);
    }
    step
}

fn manage_step(f: &Facts<'_>, audience_id: &str) -> Decision {
    let st = f.status;
    if !updatable_hash_matches(st.applied_spec_hash.as_deref(), f.spec) {
        return decision(
            Step::Update {
                audience_id: audience_id.to_owned(),
            },
            Health::progressing(
                Reason::UpdatingAudience,
                format!("Updating audience {audience_id} in AEP"),
            ),
        );
    }
    if let Some(run) = &st.last_run
        && run.status == RunState::Processing
    {
        return decision(
            Step::PollRun {
                audience_id: audience_id.to_owned(),
                run_id: run.run_id.clone(),
            },
            Health::progressing(
                Reason::RunInProgress,
                format!("Ingestion run {} is in progress", run.run_id),
            ),
        );
    }
    let pending = Health::progressing(Reason::RunPending, "An ingestion run is owed for this spec");
    if st.run_pending.is_some() {
        return decision(
            Step::RecoverRun {
                audience_id: audience_id.to_owned(),
            },
            pending,
        );
    }
    if run_owed(f) {
        return start_run(f, audience_id, pending);
    }
    converged(f, audience_id)
}

/// Runs counted against the per-audience limit in the configured window.
fn runs_counted(f: &Facts<'_>) -> u32 {
    let counts = f.status.run_counts.clone().unwrap_or_default();
    let today = f.now.strftime("%Y-%m-%d").to_string();
    match f.settings.run_limit.window {
        RunWindow::Lifetime => counts.total,
        RunWindow::Day if counts.day == today => counts.today,
        RunWindow::Day => 0,
    }
}

/// A run is owed: the per-audience limit (known from the runs this operator started), the spec's
/// ingestion settings, then the sandbox's daily budget shared with every object of the (org,
/// sandbox). Either way, a run that cannot start costs no request.
fn start_run(f: &Facts<'_>, audience_id: &str, pending: Health) -> Decision {
    let limit = f.settings.run_limit;
    let counted = runs_counted(f);
    if counted >= limit.max {
        let window = match limit.window {
            RunWindow::Lifetime => "in its lifetime",
            RunWindow::Day => "today (UTC)",
        };
        return decision(
            Step::Block {
                event: EventReason::IngestionLimitReached,
            },
            Health::stalled(
                Reason::IngestionLimitReached,
                format!(
                    "Audience {audience_id} has had {counted} ingestion runs {window}, AEP's limit of {} per audience, \
                     so no run is sent (AEP would refuse it): extend the data's TTL instead of re-ingesting \
                     (spec.expiration.autoExtend), or manage a new audience with a new ExternalAudience",
                    limit.max
                ),
            ),
        );
    }
    if f.spec.ingestion.is_none() {
        return decision(
            Step::Block {
                event: EventReason::AEPError,
            },
            Health::stalled(
                Reason::RejectedByAEP,
                format!(
                    "spec.ingestion: Required value: an ingestion run of audience {audience_id} is owed (a run request \
                     or a spec change), but the spec has no spec.ingestion; add spec.ingestion.dataFilterStartTime"
                ),
            ),
        );
    }
    match f.budget {
        Some(Grant::Wait { used, limit, until }) => {
            let sandbox = &f.spec.sandbox;
            decision(
                Step::Defer { until: *until },
                Health::progressing(
                    Reason::RunDeferred,
                    format!(
                        "Run deferred: the run budget of sandbox {sandbox:?} is used ({used}/{limit} runs today, \
                         UTC); this run can start at {until} (spec changes and run requests first, then scheduled \
                         refreshes, oldest first). Nothing is sent to AEP until then"
                    ),
                ),
            )
        }
        Some(Grant::Go) | None => decision(
            Step::StartRun {
                audience_id: audience_id.to_owned(),
                // A run started while a scheduled time is due serves it, whatever else it is for.
                scheduled_for: schedule_due(f),
            },
            pending,
        ),
    }
}

/// When the next drift check is due.
enum DriftSchedule {
    Due,
    /// Never scheduled: record the first one at this time.
    First(Timestamp),
    /// Not due: come back in this long (`None`: checks are off).
    In(Option<Duration>),
}

fn drift_schedule(f: &Facts<'_>) -> DriftSchedule {
    let interval = f.resync.clone().unwrap_or(f.timing.resync);
    if interval.is_zero() {
        return DriftSchedule::In(None);
    }
    match &f.status.next_drift_check {
        None => {
            let offset = interval.mul_f64(spread(f.uid));
            DriftSchedule::First(
                f.now
                    .checked_add(SignedDuration::try_from(offset).unwrap_or(SignedDuration::ZERO))
                    .unwrap_or(Timestamp::MAX),
            )
        }
        Some(anchor) => {
            let since = f.last_drift_check.unwrap_or(f.started);
            let (due, next) = drift_slot(anchor.0, interval, since, f.now);
            if due {
                DriftSchedule::Due
            } else {
                DriftSchedule::In(Some(
                    Duration::try_from(next.duration_since(f.now))
                        .unwrap_or_default()
                        .min(interval),
                ))
            }
        }
    }
}

/// Drift checks of an object are due at `anchor` and every `interval` after it (its slots): one
/// is due `now` when a slot has come since the last check (`since`: that check, or this process's
/// start); and the next slot after `now`. Checks write nothing: the anchor is recorded once, the
/// last check is only remembered by the process.
pub fn drift_slot(anchor: Timestamp, interval: Duration, since: Timestamp, now: Timestamp) -> (bool, Timestamp) {
    let step = interval.as_millis().max(1) as i64;
    let slot = |t: Timestamp| -> i64 {
        let d = t.as_millisecond() - anchor.as_millisecond();
        if d < 0 { -1 } else { d / step }
    };
    let current = slot(now);
    let due = current >= 0 && current > slot(since);
    let next_ms = anchor
        .as_millisecond()
        .saturating_add((current + 1).saturating_mul(step));
    let next = Timestamp::from_millisecond(next_ms).unwrap_or(Timestamp::MAX);
    (due, next)
}

/// Nothing owed: report the health, extend the data's expiration when due, check for drift when
/// due, or wait.
fn converged(f: &Facts<'_>, audience_id: &str) -> Decision {
    let st = f.status;
    let expiration = data_expiration(f);
    let state = expiry::state(expiration.as_ref(), f.now, f.timing.expiration_warning);
    let health = match (&st.last_run, state) {
        (Some(run), _) if run.status == RunState::Failed => {
            return decision(
                Step::Idle {
                    next: None,
                    event: None,
                },
                Health::stalled(
                    Reason::RunFailed,
                    format!(
                        "Ingestion run {} failed: {}. Runs are not retried automatically (AEP caps runs per day): \
                         change the spec or set the {RUN_REQUESTED_AT} annotation to a new value",
                        run.run_id,
                        run.message.as_deref().unwrap_or("AEP gave no reason")
                    ),
                ),
            );
        }
        (_, expiry::State::Expired(when)) => Health::stalled(
            Reason::DataExpired,
            format!(
                "The audience's data expired at {when} ({} plus ttlInDays): AEP no longer activates it and its profile \
                 count is 0. Set the {RUN_REQUESTED_AT} annotation to ingest again, or set spec.expiration.autoExtend \
                 to extend it before it expires",
                if expiration.as_ref().is_some_and(|d| d.source == expiry::FROM_EXTENSION) {
                    "the last extension"
                } else {
                    "the last successful run"
                },
            ),
        ),
        (Some(run), _) => Health::ready(format!(
            "Audience {audience_id} is in sync; ingestion run {} succeeded",
            run.run_id
        )),
        (None, _) => Health::ready(format!(
            "Audience {audience_id} is in sync (adopted; no ingestion run requested)"
        )),
    };
    let extend = f.spec.expiration.as_ref().is_some_and(|e| e.auto_extend)
        && known_ttl(f.spec, st)
            .is_some_and(|ttl| expiry::extend_due(expiration.as_ref(), ttl, f.now, f.timing.expiration_warning));
    if extend {
        return decision(
            Step::ExtendTtl {
                audience_id: audience_id.to_owned(),
            },
            health,
        );
    }
    // A malformed interval annotation is reported (condition message and a Warning event), never
    // silently ignored; the flag's interval applies.
    if let Err(problem) = &f.resync {
        let health = match health {
            Health::Ready { message } => Health::ready(format!("{message}; {problem}")),
            other => other,
        };
        return decision(
            Step::Idle {
                next: Some(f.timing.resync),
                event: Some((EventType::Warning, EventReason::InvalidAnnotation, problem.clone())),
            },
            health,
        );
    }
    match drift_schedule(f) {
        DriftSchedule::Due => decision(
            Step::CheckDrift {
                audience_id: audience_id.to_owned(),
            },
            health,
        ),
        DriftSchedule::First(at) => decision(Step::ScheduleDriftCheck { at }, health),
        DriftSchedule::In(next) => decision(Step::Idle { next, event: None }, health),
    }
}

// ----- deletion -------------------------------------------------------------------------------------

fn release(event: Option<(EventType, EventReason, String)>) -> Decision {
    decision(
        Step::Release { event },
        Health::progressing(Reason::Deleting, "Releasing the object"),
    )
}

/// Deletion: `deletionPolicy: Delete` deletes the audience this object provably owns, `Orphan`
/// leaves it; never a DELETE without proof, without the credentials of the org the audience lives
/// in, for an audience another object manages, or for an observed one.
fn deletion(f: &Facts<'_>) -> Decision {
    let st = f.status;
    let t = f.timing;
    if !f.activations.is_empty() {
        return decision(
            Step::AwaitActivations {
                names: f.activations.to_vec(),
            },
            Health::progressing(
                Reason::ActivationsExist,
                format!(
                    "Waiting for AudienceActivation {} to remove the audience from its dataflow before the audience is \
                     deleted",
                    f.activations.join(", ")
                ),
            ),
        );
    }
    if !has_sent(st) {
        return release(None);
    }
    if f.spec.observes() || st.ownership == Some(OwnershipProof::Observed) {
        return release(st.audience_id.as_ref().map(|id| {
            (
                EventType::Normal,
                EventReason::AudienceOrphaned,
                format!("Left audience {id} in AEP: it was only observed (managementPolicy: Observe)"),
            )
        }));
    }
    if let Some(holder) = f.claimed_by {
        return release(Some((
            EventType::Warning,
            EventReason::AudienceNotDeleted,
            format!(
                "Left audience {} in AEP: ExternalAudience {} manages it (its claim is older)",
                holder.audience.1,
                holder.object_name()
            ),
        )));
    }
    if f.spec.deletion_policy == DeletionPolicy::Orphan {
        let note = match &st.audience_id {
            Some(id) => format!("Left audience {id} in AEP (deletionPolicy: Orphan)"),
            None => "Released the object; an audience being created is left in AEP (deletionPolicy: Orphan)".to_owned(),
        };
        return release(Some((EventType::Normal, EventReason::AudienceOrphaned, note)));
    }
    if f.paused {
        // Paused means no AEP call, deletion included: wait for the pause to be lifted.
        return decision(
            Step::WaitDeletion {
                retry: t.credentials_retry,
                paused: true,
            },
            Health::ready(paused_message(true)),
        );
    }
    match f.credentials {
        Credentials::Missing(problem) | Credentials::Invalid(problem) => {
            // Deleting in AEP needs the credentials, and they are not remembered. Wait for the
            // Secret (the in-use finalizer normally keeps it until now), unless it can never come
            // back because the namespace is being deleted.
            if f.namespace_terminating {
                return release(Some((
                    EventType::Warning,
                    EventReason::AudienceOrphaned,
                    format!(
                        "Cannot delete the audience in AEP: {problem}, and its namespace is being deleted; releasing \
                         the object and leaving the audience in AEP"
                    ),
                )));
            }
            return decision(
                Step::WaitDeletion {
                    retry: t.credentials_retry,
                    paused: false,
                },
                Health::stalled(
                    Reason::CredentialsMissing,
                    format!(
                        "Waiting for the credentials to delete the audience in AEP: {problem}. Restore the Secret, or \
                         set spec.deletionPolicy: Orphan to release the object and leave the audience in AEP"
                    ),
                ),
            );
        }
        Credentials::Ready(now) => {
            let moved_org = st.org_id.as_deref().is_some_and(|o| o != now.org_id);
            let moved_endpoint = st.platform_url.as_deref().is_some_and(|u| u != now.platform_url);
            if moved_org || moved_endpoint {
                return decision(
                    Step::WaitDeletion {
                        retry: t.credentials_retry,
                        paused: false,
                    },
                    Health::stalled(
                        Reason::OrganizationChanged,
                        format!(
                            "Deletion waits: the credentials Secret {:?} now names IMS org {} at {}, but the audience \
                             lives in org {} at {}. Restore the Secret to delete it in AEP, or set \
                             spec.deletionPolicy: Orphan to release the object and leave the audience in AEP",
                            f.spec.credentials_secret_ref.name,
                            now.org_id,
                            now.platform_url,
                            st.org_id.as_deref().unwrap_or("?"),
                            st.platform_url.as_deref().unwrap_or("?"),
                        ),
                    ),
                );
            }
        }
        Credentials::NotRead => {}
    }
    let deleting = Health::progressing(Reason::Deleting, "Deleting the audience in AEP");
    match &st.audience_id {
        Some(id) if st.ownership.is_none() => decision(
            Step::DeleteLegacy {
                audience_id: id.clone(),
            },
            deleting,
        ),
        Some(id) => decision(
            Step::Delete {
                audience_id: id.clone(),
            },
            deleting,
        ),
        None => {
            let settle = st.create_pending_since.as_ref().and_then(|since| {
                let age = elapsed(since.0, f.now);
                (age < t.create_settle).then(|| t.create_settle - age)
            });
            decision(
                Step::ResolveAndDelete {
                    operation_id: st.operation_id.clone(),
                    settle,
                },
                deleting,
            )
        }
    }
}

/// The annotations and the drift interval of an object, for [`Facts`].
pub struct Annotations<'a> {
    pub paused: bool,
    pub run_request: Option<&'a str>,
    pub retry_create: Option<&'a str>,
    pub resync: Result<Duration, String>,
}

impl<'a> Annotations<'a> {
    /// Reads them from `annotations`; the interval falls back on `default`.
    pub fn read(annotations: &'a std::collections::BTreeMap<String, String>, default: Duration) -> Self {
        Annotations {
            paused: annotations
                .get(PAUSED)
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("true")),
            run_request: annotations.get(RUN_REQUESTED_AT).map(String::as_str),
            retry_create: annotations.get(RETRY_CREATE).map(String::as_str),
            resync: match annotations.get(RESYNC_INTERVAL) {
                None => Ok(default),
                Some(v) => crate::config::parse_duration(v).map_err(|e| {
                    format!("annotation {RESYNC_INTERVAL} is ignored: {e}; using the default resync interval")
                }),
            },
        }
    }
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
