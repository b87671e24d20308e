//! The AudienceActivation decider: from the facts a pass gathered (the object, its
//! ExternalAudience, the credentials, the dataflow as read, the clock) to one step and the health
//! it implies. Pure: no I/O, no clock of its own.
//!
//! The rules (reference "aep-activation-api" §6 as this project settled it):
//! * add = read, check, conditioned patch: a selector naming the audience (`value.id` or
//!   `value.systemSegmentId`) with the wanted export settings is done; one with other settings is
//!   replaced at its index with the complete selector as read; none is added with `add` at
//!   `/selectors/-`; always with the etag of the read the change was decided from;
//! * any 2xx is only "accepted": a change is done when a later read shows it (`changePending`
//!   until then); a lost answer is settled by that read, and a change is decided again only after
//!   the settle window has passed without the read showing it;
//! * export settings go to file-based (batch) dataflows only, and are required there;
//! * removal (on delete, `deletionPolicy: Delete`, only of a selector this object added) is one
//!   `remove` at the index a fresh read shows;
//! * an ad hoc export is one request per new value of the annotation, marker first; a request
//!   whose answer was lost is looked for among the audience's export runs and sent again only when
//!   none started within the settle window.

use std::time::Duration;

use jiff::Timestamp;
use kube::runtime::events::EventType;

use crate::{
    aep::{self, ErrorKind, ExportSchedule, Flow, FlowRun, SegmentSelector, SelectorValue},
    api::{AudienceActivationSpec, AudienceActivationStatus, DeletionPolicy, EXPORT_REQUEST_MAX, EventReason, Reason},
    controller::{
        clock::elapsed,
        core::{Timing, facts::Credentials, pass::Note},
    },
    status::Health,
};

/// `changePending.op` values.
pub const OP_ADD: &str = "add";
pub const OP_REPLACE: &str = "replace";
pub const OP_REMOVE: &str = "remove";

/// `exportRequest.state` values.
pub const EXPORT_PENDING: &str = "Pending";
pub const EXPORT_STARTED: &str = "Started";
pub const EXPORT_REFUSED: &str = "Refused";
pub const EXPORT_NOT_SENT: &str = "NotSent";

/// The ExternalAudience an activation names, as the pass found it.
#[derive(Clone, Copy, Debug)]
pub enum Audience<'a> {
    /// No ExternalAudience of that name in the namespace.
    Missing,
    /// It exists and is not Ready: why.
    NotReady(&'a str),
    /// Ready: its AEP audience id and sandbox.
    Ready { audience_id: &'a str, sandbox: &'a str },
}

/// What the decider sees.
#[derive(Clone, Debug)]
pub struct Facts<'a> {
    pub now: Timestamp,
    pub generation: i64,
    pub spec: &'a AudienceActivationSpec,
    pub status: &'a AudienceActivationStatus,
    pub deleting: bool,
    pub paused: bool,
    /// The `export-requested-at` annotation.
    pub export_request: Option<&'a str>,
    pub audience: Audience<'a>,
    /// An older AudienceActivation that maps the same audience into the same dataflow.
    pub claimed_by: Option<&'a str>,
    pub credentials: Credentials<'a>,
    /// The sandbox the pass's credentials act in.
    pub sandbox: Option<&'a str>,
    /// The dataflow as read (`None`: not read).
    pub flow: Option<Result<&'a Flow, &'a aep::Error>>,
    /// Whether `flow` was read after the pending change was sent (a cached read may predate it).
    pub flow_is_fresh: bool,
    pub timing: &'a Timing,
}

/// The one step a pass performs.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Paused by annotation: only the `Paused` condition is written.
    Pause,
    /// A problem only a change resolves is recorded for this generation: wait.
    Wait,
    /// Record a problem only a change can resolve (`status.blocked`, a Warning event).
    Block { event: EventReason },
    /// Waiting on something outside the spec that may change on its own: look again after `retry`.
    Hold {
        retry: Duration,
        event: Option<EventReason>,
    },
    /// The decision needs the dataflow: read it (afresh when `fresh`) and decide again.
    Read { fresh: bool },
    /// The dataflow read failed: the error table says what it means.
    ReadFailed,
    /// Append the audience's selector (`add` at `/selectors/-`), conditioned on `etag`.
    Add { selector: SegmentSelector, etag: String },
    /// Replace the selector at `index` with `selector`, conditioned on `etag`.
    Replace {
        index: usize,
        selector: SegmentSelector,
        etag: String,
    },
    /// Remove the selector at `index` (it names the audience), conditioned on `etag`.
    Remove {
        index: usize,
        selector: SegmentSelector,
        etag: String,
    },
    /// A change was sent and no read shows it yet: read again after `retry`.
    Confirm { retry: Duration },
    /// A read shows the pending change: record it (`selectorAdded` as given) and clear the marker.
    Confirmed { selector_added: bool },
    /// Record the annotation's value as not sent (why in the message), with a Warning event.
    RefuseExport { value: String, message: String },
    /// Send one ad hoc export of the audience (marker first).
    Export { audience_id: String, value: String },
    /// An ad hoc export is pending: look for its run among the audience's export runs; send it
    /// again only when `resend` (the settle window passed without one).
    SettleExport { audience_id: String, resend: bool },
    /// Converged: look again after `next`.
    Idle { next: Duration },
    /// Release the object (remove the finalizer), with an event.
    Release { event: Option<Note> },
    /// Deletion waits (paused, credentials, a change to confirm): look again after `retry`.
    WaitDeletion { retry: Duration },
}

impl Step {
    /// The step's name (metrics, events' action).
    pub fn name(&self) -> &'static str {
        match self {
            Step::Pause => "Pause",
            Step::Wait => "Wait",
            Step::Block { .. } => "Block",
            Step::Hold { .. } => "Hold",
            Step::Read { .. } => "Read",
            Step::ReadFailed => "ReadFailed",
            Step::Add { .. } => "AddToDataflow",
            Step::Replace { .. } => "UpdateInDataflow",
            Step::Remove { .. } => "RemoveFromDataflow",
            Step::Confirm { .. } => "Confirm",
            Step::Confirmed { .. } => "Confirmed",
            Step::RefuseExport { .. } => "RefuseExport",
            Step::Export { .. } => "Export",
            Step::SettleExport { .. } => "SettleExport",
            Step::Idle { .. } => "Idle",
            Step::Release { .. } => "Release",
            Step::WaitDeletion { .. } => "WaitDeletion",
        }
    }

    /// Whether the step changes the dataflow (made under the dataflow's lock, from a read taken
    /// under it).
    pub fn changes_flow(&self) -> bool {
        matches!(self, Step::Add { .. } | Step::Replace { .. } | Step::Remove { .. })
    }
}

/// A step and the health it implies.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub step: Step,
    pub health: Health,
}

fn decision(step: Step, health: Health) -> Decision {
    Decision { step, health }
}

/// The decision for the facts.
pub fn decide(f: &Facts<'_>) -> Decision {
    if f.deleting { deletion(f) } else { apply(f) }
}

// ----- helpers (pure) ---------------------------------------------------------------------------

/// The selector value this object wants for `audience_id`: the id, and for a file-based
/// dataflow the export settings of the spec.
pub fn wanted_value(spec: &AudienceActivationSpec, audience_id: &str) -> SelectorValue {
    let mut value = SelectorValue::for_audience(audience_id);
    if let Some(export) = &spec.export {
        value.export_mode = Some(export.mode.as_str().to_owned());
        value.filename_template = export.filename_template.clone();
        let s = &export.schedule;
        value.schedule = Some(ExportSchedule {
            frequency: Some(s.frequency.clone()),
            trigger_type: s.trigger_type.clone(),
            start_date: s.start_date.clone(),
            end_date: s.end_date.clone(),
            start_time: s.start_time.clone(),
            extra: Default::default(),
        });
    }
    value
}

/// Whether `current` carries every export setting the spec sets (settings the spec leaves unset
/// keep AEP's value).
pub fn settings_match(spec: &AudienceActivationSpec, current: &SelectorValue) -> bool {
    let Some(export) = &spec.export else {
        return true;
    };
    let same = |want: &Option<String>, have: &Option<String>| want.is_none() || want == have;
    let schedule = current.schedule.clone().unwrap_or_default();
    let s = &export.schedule;
    current.export_mode.as_deref() == Some(export.mode.as_str())
        && same(&export.filename_template, &current.filename_template)
        && schedule.frequency.as_deref() == Some(s.frequency.as_str())
        && same(&s.trigger_type, &schedule.trigger_type)
        && same(&s.start_date, &schedule.start_date)
        && same(&s.end_date, &schedule.end_date)
        && same(&s.start_time, &schedule.start_time)
}

/// `current` (as read) with the spec's export settings put in: what a `replace` sends (the
/// complete selector, unknown keys kept).
pub fn merged_selector(spec: &AudienceActivationSpec, current: &SegmentSelector) -> SegmentSelector {
    let mut selector = current.clone();
    let Some(export) = &spec.export else {
        return selector;
    };
    let v = &mut selector.value;
    v.export_mode = Some(export.mode.as_str().to_owned());
    if export.filename_template.is_some() {
        v.filename_template = export.filename_template.clone();
    }
    let mut schedule = v.schedule.clone().unwrap_or_default();
    let s = &export.schedule;
    schedule.frequency = Some(s.frequency.clone());
    for (want, have) in [
        (&s.trigger_type, &mut schedule.trigger_type),
        (&s.start_date, &mut schedule.start_date),
        (&s.end_date, &mut schedule.end_date),
        (&s.start_time, &mut schedule.start_time),
    ] {
        if want.is_some() {
            *have = want.clone();
        }
    }
    v.schedule = Some(schedule);
    // The service sets these; they are not part of a change.
    v.create_time = None;
    v.update_time = None;
    selector
}

/// Why an annotation value is not acted on, if it is not.
pub fn invalid_export_request(value: &str) -> Option<String> {
    if value.trim().is_empty() {
        return Some("annotation aep.audience-operator.dev/export-requested-at is empty".to_owned());
    }
    if value.len() > EXPORT_REQUEST_MAX || value.chars().any(char::is_control) {
        return Some(format!(
            "annotation aep.audience-operator.dev/export-requested-at must be at most {EXPORT_REQUEST_MAX} characters \
             without control characters (e.g. a timestamp)"
        ));
    }
    None
}

/// The newest export run of `audience_id` among `runs` (newest first).
pub fn last_run_of<'r>(runs: &'r [FlowRun], audience_id: &str) -> Option<&'r FlowRun> {
    runs.iter().find(|r| r.concerns(audience_id))
}

/// The run an ad hoc request started, among `runs` (newest first): a run of the audience newer
/// than the one known when the request was made.
pub fn run_after<'r>(
    runs: &'r [FlowRun],
    audience_id: &str,
    after_id: Option<&str>,
    after_ms: Option<i64>,
) -> Option<&'r FlowRun> {
    runs.iter().filter(|r| r.concerns(audience_id)).find(|r| {
        Some(r.id.as_str()) != after_id
            && match after_ms {
                Some(after) => r.created_at.or(r.started_at()).is_some_and(|t| t > after),
                None => true,
            }
    })
}

fn flow_label(flow: &Flow) -> String {
    if flow.name.is_empty() {
        flow.id.clone()
    } else {
        format!("{} ({})", flow.name, flow.id)
    }
}

fn pending_age(f: &Facts<'_>) -> Option<Duration> {
    f.status.change_pending.as_ref().map(|p| elapsed(p.since.0, f.now))
}

// ----- apply ------------------------------------------------------------------------------------

fn apply(f: &Facts<'_>) -> Decision {
    let st = f.status;
    let t = f.timing;
    let audience_name = &f.spec.audience_ref.name;
    if f.paused {
        return decision(
            Step::Pause,
            Health::progressing(Reason::Paused, "Paused: no call is made to AEP"),
        );
    }
    if let Some(blocked) = st.blocked.as_ref().filter(|b| b.generation == f.generation) {
        let reason = Reason::parse(&blocked.reason).unwrap_or(Reason::RejectedByAEP);
        return decision(Step::Wait, Health::stalled(reason, blocked.message.clone()));
    }
    if let Some(holder) = f.claimed_by {
        return decision(
            Step::Hold {
                retry: t.activation_poll,
                event: Some(EventReason::AudienceClaimed),
            },
            Health::stalled(
                Reason::ActivationClaimed,
                format!(
                    "AudienceActivation {holder} already maps ExternalAudience {audience_name} into dataflow {} (its \
                     claim is older): delete this object, or point it at another dataflow",
                    f.spec.dataflow_id
                ),
            ),
        );
    }
    let wait_for_audience = |why: String| {
        decision(
            Step::Hold {
                retry: t.activation_poll,
                event: None,
            },
            Health::progressing(
                Reason::AudienceNotReady,
                format!("Waiting for ExternalAudience {audience_name}{why}"),
            ),
        )
    };
    let (audience_id, sandbox) = match f.audience {
        Audience::Missing => return wait_for_audience(": it does not exist in this namespace".to_owned()),
        Audience::NotReady(why) => return wait_for_audience(format!(" to be Ready: {why}")),
        Audience::Ready { audience_id, sandbox } => (audience_id, sandbox),
    };
    if let Some(held) = credentials_hold(f, Some(sandbox), Phase::Apply) {
        return held;
    }
    let flow = match f.flow {
        None => {
            return decision(
                Step::Read {
                    fresh: st.change_pending.is_some(),
                },
                activating("Reading the dataflow"),
            );
        }
        Some(Err(e)) => return failed_read(e),
        Some(Ok(flow)) => flow,
    };
    if let Some(problem) = unfit(f, flow) {
        return problem;
    }
    let label = flow_label(flow);
    let pending = st.change_pending.as_ref();
    match flow.position_of(audience_id) {
        Some(index) => {
            let current = &flow.selectors()[index];
            if let Some(p) = pending {
                return decision(
                    Step::Confirmed {
                        selector_added: st.selector_added || p.op == OP_ADD,
                    },
                    activating(format!("Dataflow {label} shows the change")),
                );
            }
            if !settings_match(f.spec, &current.value) {
                return decision(
                    Step::Replace {
                        index,
                        selector: merged_selector(f.spec, current),
                        etag: flow.etag.clone(),
                    },
                    activating(format!(
                        "Updating the export settings of audience {audience_id} in dataflow {label}"
                    )),
                );
            }
            mapped(f, flow, audience_id)
        }
        None => {
            if pending.is_some() && !f.flow_is_fresh {
                return decision(
                    Step::Read { fresh: true },
                    confirming(format!("Reading dataflow {label} to confirm the change sent")),
                );
            }
            if let Some(age) = pending_age(f)
                && age < t.create_settle
            {
                return decision(
                    Step::Confirm {
                        retry: t.operation_poll,
                    },
                    confirming(format!(
                        "A change of dataflow {label} was sent; waiting for a read to show audience {audience_id}"
                    )),
                );
            }
            decision(
                Step::Add {
                    selector: SegmentSelector::platform_segment(wanted_value(f.spec, audience_id)),
                    etag: flow.etag.clone(),
                },
                activating(format!("Adding audience {audience_id} to dataflow {label}")),
            )
        }
    }
}

/// The audience is mapped as wanted: Ready, and the ad hoc export requested, if any.
fn mapped(f: &Facts<'_>, flow: &Flow, audience_id: &str) -> Decision {
    let label = flow_label(flow);
    let disabled = if flow.is_enabled() {
        ""
    } else {
        " (the dataflow is disabled: it exports nothing until it is enabled)"
    };
    let ready = Health::ready(format!(
        "Audience {audience_id} is mapped into {} dataflow {label}{disabled}",
        flow.destination_kind()
    ));
    let recorded = f.status.export_request.as_ref();
    if let Some(value) = f.export_request
        && recorded.is_none_or(|r| r.value != value)
    {
        if let Some(problem) = invalid_export_request(value) {
            return decision(
                Step::RefuseExport {
                    value: value.to_owned(),
                    message: problem,
                },
                ready,
            );
        }
        if !flow.is_batch() {
            return decision(
                Step::RefuseExport {
                    value: value.to_owned(),
                    message: format!(
                        "ad hoc exports apply to file-based (batch) dataflows only; dataflow {label} streams"
                    ),
                },
                ready,
            );
        }
        return decision(
            Step::Export {
                audience_id: audience_id.to_owned(),
                value: value.to_owned(),
            },
            ready,
        );
    }
    if let Some(r) = recorded.filter(|r| r.state == EXPORT_PENDING) {
        let resend = elapsed(r.since.0, f.now) >= f.timing.create_settle;
        return decision(
            Step::SettleExport {
                audience_id: audience_id.to_owned(),
                resend,
            },
            ready,
        );
    }
    decision(
        Step::Idle {
            next: f.timing.activation_poll,
        },
        ready,
    )
}

/// A dataflow that cannot take this activation as specified.
fn unfit(f: &Facts<'_>, flow: &Flow) -> Option<Decision> {
    let label = flow_label(flow);
    let block = |reason, message: String| {
        Some(decision(
            Step::Block {
                event: EventReason::AEPError,
            },
            Health::stalled(reason, message),
        ))
    };
    if !flow.is_destination_flow() || !flow.has_selector_transformation() {
        return block(
            Reason::NotADestinationDataflow,
            format!(
                "spec.dataflowId: dataflow {label} is not a destination dataflow that takes audiences (no \
                 transformations[0].params.segmentSelectors)"
            ),
        );
    }
    match (flow.is_batch(), &f.spec.export) {
        (true, None) => block(
            Reason::ExportSettingsInvalid,
            format!(
                "spec.export: required: dataflow {label} is a file-based (batch) destination, which needs mode and \
                 schedule.frequency for every audience"
            ),
        ),
        (false, Some(_)) => block(
            Reason::ExportSettingsInvalid,
            format!(
                "spec.export: must be removed: dataflow {label} is a streaming destination, which takes no export \
                 settings"
            ),
        ),
        _ => None,
    }
}

fn activating(message: impl Into<String>) -> Health {
    Health::progressing(Reason::Activating, message)
}

fn confirming(message: impl Into<String>) -> Health {
    Health::progressing(Reason::ConfirmingActivation, message)
}

fn failed_read(e: &aep::Error) -> Decision {
    decision(
        Step::ReadFailed,
        Health::progressing(Reason::Retrying, format!("Reading the dataflow: {}", e.message())),
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Apply,
    Delete,
}

/// Credentials that do not allow a call, or that name another place than the one the dataflow
/// was changed in: the decision to wait.
fn credentials_hold(f: &Facts<'_>, sandbox: Option<&str>, phase: Phase) -> Option<Decision> {
    let t = f.timing;
    let wait = |health: Health| {
        Some(match phase {
            Phase::Apply => decision(
                Step::Hold {
                    retry: t.credentials_retry,
                    event: Some(EventReason::CredentialsError),
                },
                health,
            ),
            Phase::Delete => decision(
                Step::WaitDeletion {
                    retry: t.credentials_retry,
                },
                health,
            ),
        })
    };
    let target = f.status.target.as_ref();
    match f.credentials {
        Credentials::Missing(problem) => wait(Health::stalled(Reason::CredentialsMissing, problem.to_owned())),
        Credentials::Invalid(problem) => wait(Health::stalled(Reason::CredentialsInvalid, problem.to_owned())),
        Credentials::NotRead => wait(Health::progressing(Reason::Retrying, "Reading the credentials")),
        Credentials::Ready(now) => {
            let t = target?;
            let moved =
                t.org_id != now.org_id || t.platform_url != now.platform_url || sandbox.is_some_and(|s| s != t.sandbox);
            if !moved {
                return None;
            }
            wait(Health::stalled(
                Reason::OrganizationChanged,
                format!(
                    "The audience was mapped into dataflow {} in IMS org {} at {} (sandbox {}), but the credentials \
                         now name org {} at {} (sandbox {}): restore them, or delete this object with deletionPolicy: \
                         Orphan",
                    f.spec.dataflow_id,
                    t.org_id,
                    t.platform_url,
                    t.sandbox,
                    now.org_id,
                    now.platform_url,
                    sandbox.unwrap_or(&t.sandbox)
                ),
            ))
        }
    }
}

// ----- deletion ---------------------------------------------------------------------------------

fn release(event: Option<Note>) -> Decision {
    decision(
        Step::Release { event },
        Health::progressing(Reason::Deactivating, "Releasing the object"),
    )
}

/// Deletion: with `deletionPolicy: Delete`, the selector this object added is removed (one
/// `remove` at the index a fresh read shows); a selector it did not add, an `Orphan` policy, or a
/// dataflow that no longer exists releases the object without a change.
fn deletion(f: &Facts<'_>) -> Decision {
    let st = f.status;
    let t = f.timing;
    let Some(audience_id) = st.audience_id.as_deref() else {
        return release(None);
    };
    let pending_add = st.change_pending.as_ref().is_some_and(|p| p.op == OP_ADD);
    let pending_remove = st.change_pending.as_ref().is_some_and(|p| p.op == OP_REMOVE);
    let added = st.selector_added || pending_add || pending_remove;
    if f.spec.deletion_policy == DeletionPolicy::Orphan {
        return release(added.then(|| {
            (
                EventType::Normal,
                EventReason::AudienceDeactivated,
                format!(
                    "Left audience {audience_id} mapped into dataflow {} (deletionPolicy: Orphan)",
                    f.spec.dataflow_id
                ),
            )
        }));
    }
    if !added {
        return release(Some((
            EventType::Normal,
            EventReason::AudienceDeactivated,
            format!(
                "Left audience {audience_id} in dataflow {} as found: this object did not add it",
                f.spec.dataflow_id
            ),
        )));
    }
    if f.paused {
        return decision(
            Step::WaitDeletion {
                retry: t.credentials_retry,
            },
            Health::progressing(
                Reason::Paused,
                "Paused: the audience is removed from the dataflow once the pause is lifted",
            ),
        );
    }
    let sandbox = st.target.as_ref().map(|t| t.sandbox.as_str()).or(f.sandbox);
    if let Some(held) = credentials_hold(f, sandbox, Phase::Delete) {
        return held;
    }
    let deactivating = |m: String| Health::progressing(Reason::Deactivating, m);
    let flow = match f.flow {
        None => {
            return decision(
                Step::Read { fresh: true },
                deactivating("Reading the dataflow".to_owned()),
            );
        }
        Some(Err(e)) if e.kind() == ErrorKind::NotFound => {
            return release(Some((
                EventType::Normal,
                EventReason::AudienceDeactivated,
                format!("Dataflow {} no longer exists: nothing to remove", f.spec.dataflow_id),
            )));
        }
        Some(Err(e)) => return failed_read(e),
        Some(Ok(flow)) => flow,
    };
    if !f.flow_is_fresh {
        return decision(
            Step::Read { fresh: true },
            deactivating("Reading the dataflow".to_owned()),
        );
    }
    let label = flow_label(flow);
    match flow.position_of(audience_id) {
        Some(index) => decision(
            Step::Remove {
                index,
                selector: flow.selectors()[index].clone(),
                etag: flow.etag.clone(),
            },
            deactivating(format!("Removing audience {audience_id} from dataflow {label}")),
        ),
        None if pending_add && pending_age(f).is_some_and(|age| age < t.create_settle) => decision(
            Step::WaitDeletion {
                retry: t.operation_poll,
            },
            deactivating(format!(
                "An add to dataflow {label} was sent; waiting for a read to show it before removing it"
            )),
        ),
        None => release(Some((
            EventType::Normal,
            EventReason::AudienceDeactivated,
            format!("Audience {audience_id} is not in dataflow {label}"),
        ))),
    }
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
