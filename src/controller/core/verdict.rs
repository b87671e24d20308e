//! The one table from an AEP error to what it means for a pass: the health to show, when to come
//! back, the event, and whether the problem blocks the generation. Every step of every kind maps
//! its AEP failures through here, in the apply phase and in deletion alike; the only inputs are
//! the error's kind (decided by the client from the call, HTTP status and AEP's code), the call,
//! and the phase.
//!
//! | error kind | apply | delete |
//! |---|---|---|
//! | Retryable (429, 5xx, network) | Reconciling/Retrying, backoff (≥ Retry-After) | the same |
//! | OutcomeUnknown (lost answer) | Reconciling/Retrying, look again after the operation poll | Reconciling/Retrying, backoff |
//! | NotNow (start-run refused, in use) | Reconciling/RunDeferred, the deferred interval | Stalled/DeleteRefused, backoff |
//! | PermissionDenied (403) | Stalled/PermissionDenied, re-checked on the credentials interval | Stalled/PermissionDenied, backoff |
//! | Unauthorized (401 after a fresh token) | Stalled/CredentialsInvalid, Secret read again | the same, backoff |
//! | Terminal, Conflict (400, 409, 412) | Stalled/RejectedByAEP, blocks the generation | Stalled/DeleteRefused, backoff |
//! | NotFound (404) | Stalled/&lt;the resource&gt;NotFound, blocks the generation | Stalled/DeleteRefused, backoff |
//!
//! Messages carry AEP's own text (never a URL, token or secret), made stable so that a repeat
//! writes nothing.

use kube::runtime::events::EventType;

use super::{
    context::Timing,
    pass::{Next, Outcome},
};
use crate::{
    aep::{ErrorKind, error::Call},
    api::{EventReason, Reason},
    status::{Health, stable_message},
};

/// Whether the pass applies the spec or deletes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Apply,
    Delete,
}

/// The reason a 404 from `call` is reported with: the resource the call names.
fn not_found(call: Call) -> Reason {
    match call {
        Call::GetFlow | Call::ListFlows | Call::PatchFlow | Call::ListFlowRuns | Call::GetFlowRun => {
            Reason::DataflowNotFound
        }
        _ => Reason::AudienceNotFound,
    }
}

/// The event of a deletion that waits on its credentials: the org moved, or the Secret is unusable.
pub fn deletion_wait_event(health: &Health) -> EventReason {
    if health.reason() == Reason::OrganizationChanged.as_str() {
        EventReason::OrganizationChanged
    } else {
        EventReason::CredentialsError
    }
}

/// What `e`, met while doing `what`, means for the pass.
pub fn verdict(e: &crate::aep::Error, what: &str, phase: Phase, t: &Timing) -> Outcome {
    let msg = stable_message(&format!("{what}: {}", e.message()));
    let shown = |health: Health, next: Next, event: EventReason| {
        Outcome::with(health, next).note(EventType::Warning, event, msg.clone())
    };
    let progressing = |reason, next, event| shown(Health::progressing(reason, msg.clone()), next, event);
    let stalled = |reason, next, event| shown(Health::stalled(reason, msg.clone()), next, event);
    let backoff = Next::Backoff(e.kind().retry_after());
    match (phase, e.kind()) {
        (_, ErrorKind::Retryable { retry_after }) => {
            progressing(Reason::Retrying, Next::Backoff(retry_after), EventReason::AEPError)
        }
        (Phase::Apply, ErrorKind::OutcomeUnknown) => {
            progressing(Reason::Retrying, Next::After(t.operation_poll), EventReason::AEPError)
        }
        (Phase::Delete, ErrorKind::OutcomeUnknown) => progressing(Reason::Retrying, backoff, EventReason::AEPError),
        (Phase::Apply, ErrorKind::NotNow { retry_after }) => {
            let d = retry_after.map_or(t.deferred_retry, |r| r.max(t.deferred_retry));
            let reason = if e.call() == Call::StartRun {
                Reason::RunDeferred
            } else {
                Reason::Retrying
            };
            progressing(reason, Next::After(d), EventReason::RunDeferred)
        }
        (Phase::Apply, ErrorKind::PermissionDenied) => stalled(
            Reason::PermissionDenied,
            Next::After(t.credentials_retry),
            EventReason::AEPError,
        ),
        (Phase::Delete, ErrorKind::PermissionDenied) => {
            stalled(Reason::PermissionDenied, backoff, EventReason::AEPError)
        }
        (phase, ErrorKind::Unauthorized) => {
            let next = match phase {
                Phase::Apply => Next::After(t.credentials_retry),
                Phase::Delete => backoff,
            };
            let mut out = stalled(Reason::CredentialsInvalid, next, EventReason::CredentialsError);
            out.forget_credentials = true;
            out
        }
        (Phase::Apply, ErrorKind::Terminal | ErrorKind::Conflict) => {
            Outcome::blocked(Reason::RejectedByAEP, msg.clone(), EventReason::AEPError)
        }
        (Phase::Apply, ErrorKind::NotFound) => {
            Outcome::blocked(not_found(e.call()), msg.clone(), EventReason::AEPError)
        }
        (Phase::Delete, ErrorKind::NotNow { .. } | ErrorKind::Terminal | ErrorKind::Conflict | ErrorKind::NotFound) => {
            shown(
                Health::stalled(
                    Reason::DeleteRefused,
                    format!("AEP refused: {msg}. The finalizer stays until AEP accepts the deletion"),
                ),
                backoff,
                EventReason::DeleteRefused,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn every_kind_has_one_verdict_per_phase_and_deletion_never_blocks() {
        let t = Timing::default();
        for kind in KINDS {
            let e = crate::aep::Error::synthetic(Call::StartRun, kind, "AEP says no");
            let apply = verdict(&e, "starting a run", Phase::Apply, &t);
            let delete = verdict(&e, "deleting", Phase::Delete, &t);
            let health = apply.health.clone().expect("a health");
            assert!(
                health.message().contains("starting a run: AEP says no"),
                "{kind}: {health:?}"
            );
            assert!(
                apply.event.is_some() && delete.event.is_some(),
                "{kind}: a Warning event"
            );
            assert!(!delete.block, "{kind}: a deletion is never blocked");
            assert!(
                matches!(delete.next, Next::Backoff(_)),
                "{kind}: a failed deletion backs off"
            );
            let blocks = matches!(kind, ErrorKind::Terminal | ErrorKind::Conflict | ErrorKind::NotFound);
            assert_eq!(apply.block, blocks, "{kind}");
            assert_eq!(apply.forget_credentials, kind == ErrorKind::Unauthorized, "{kind}");
            let reason = delete.health.expect("health").reason().to_owned();
            match kind {
                ErrorKind::Retryable { .. } | ErrorKind::OutcomeUnknown => assert_eq!(reason, "Retrying"),
                ErrorKind::PermissionDenied => assert_eq!(reason, "PermissionDenied"),
                ErrorKind::Unauthorized => assert_eq!(reason, "CredentialsInvalid"),
                _ => assert_eq!(reason, "DeleteRefused", "{kind}"),
            }
        }
        let not_now = crate::aep::Error::synthetic(Call::StartRun, ErrorKind::NotNow { retry_after: None }, "x");
        assert_eq!(
            verdict(&not_now, "s", Phase::Apply, &t).health.expect("h").reason(),
            "RunDeferred"
        );
    }
}
