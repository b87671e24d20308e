//! Pure helpers for the status contract: the kstatus condition set (`Ready`, `Reconciling`,
//! `Stalled`), timestamp-preserving condition updates, and the "did anything change?" check.
//!
//! Nothing here does I/O. `lastTransitionTime` moves only when a condition's status flips, so a
//! pass that changes nothing writes nothing (no reconcile storms).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::{ExternalAudienceStatus, Reason, conditions};

/// What a pass concluded about the object, in kstatus terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Converged: `Ready=True`.
    Ready { message: String },
    /// Work is pending: `Reconciling=True`, `Ready=False`.
    Progressing { reason: Reason, message: String },
    /// Cannot progress without a change: `Stalled=True`, `Ready=False`.
    Stalled { reason: Reason, message: String },
}

impl Health {
    pub fn progressing(reason: Reason, message: impl Into<String>) -> Self {
        Health::Progressing {
            reason,
            message: message.into(),
        }
    }
    pub fn stalled(reason: Reason, message: impl Into<String>) -> Self {
        Health::Stalled {
            reason,
            message: message.into(),
        }
    }
    pub fn ready(message: impl Into<String>) -> Self {
        Health::Ready {
            message: message.into(),
        }
    }
    /// The reason written to the `Ready` condition.
    pub fn reason(&self) -> &'static str {
        match self {
            Health::Ready { .. } => Reason::Ready.as_str(),
            Health::Progressing { reason, .. } | Health::Stalled { reason, .. } => reason.as_str(),
        }
    }

    /// Whether this is `Stalled`.
    pub fn is_stalled(&self) -> bool {
        matches!(self, Health::Stalled { .. })
    }
    pub fn message(&self) -> &str {
        match self {
            Health::Ready { message } | Health::Progressing { message, .. } | Health::Stalled { message, .. } => {
                message
            }
        }
    }
}

/// The three conditions for `health`, keeping `lastTransitionTime` of conditions whose status
/// did not change. Never `Reconciling=True` together with `Stalled=True`.
pub fn conditions_for(health: &Health, generation: i64, previous: &[Condition], now: &Time) -> Vec<Condition> {
    let (ready, reconciling, stalled) = match health {
        Health::Ready { .. } => ("True", "False", "False"),
        Health::Progressing { .. } => ("False", "True", "False"),
        Health::Stalled { .. } => ("False", "False", "True"),
    };
    let reason = health.reason();
    let message = health.message();
    let idle_reason = |t: &str| match t {
        conditions::RECONCILING => "Idle",
        _ => "NotStalled",
    };
    [
        (conditions::READY, ready),
        (conditions::RECONCILING, reconciling),
        (conditions::STALLED, stalled),
    ]
    .into_iter()
    .map(|(type_, status)| {
        let active = status == "True" || type_ == conditions::READY;
        let (reason, message) = if active {
            (reason.to_owned(), message.to_owned())
        } else {
            (idle_reason(type_).to_owned(), String::new())
        };
        let last_transition_time = previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.clone());
        Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason,
            message,
            observed_generation: Some(generation),
            last_transition_time,
        }
    })
    .collect()
}

/// `conditions` with `Paused=True` for `generation` added (or kept, with its transition time);
/// everything else is left as it was: a paused object keeps showing its last known state.
pub fn with_paused(conditions: &[Condition], generation: i64, message: &str, now: &Time) -> Vec<Condition> {
    let mut out: Vec<Condition> = conditions
        .iter()
        .filter(|c| c.type_ != conditions::PAUSED)
        .cloned()
        .collect();
    let since = conditions
        .iter()
        .find(|c| c.type_ == conditions::PAUSED && c.status == "True")
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    out.push(Condition {
        type_: conditions::PAUSED.to_owned(),
        status: "True".to_owned(),
        reason: Reason::Paused.as_str().to_owned(),
        message: message.to_owned(),
        observed_generation: Some(generation),
        last_transition_time: since,
    });
    out
}

/// `conditions` with the condition `type_` set (added or replaced), keeping the
/// `lastTransitionTime` it had in `previous` while its status is unchanged.
#[allow(clippy::too_many_arguments)]
pub fn with_condition(
    conditions: &[Condition],
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: i64,
    now: &Time,
) -> Vec<Condition> {
    let status = if status { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    let mut out: Vec<Condition> = conditions.iter().filter(|c| c.type_ != type_).cloned().collect();
    out.push(Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: Some(generation),
        last_transition_time: since,
    });
    out
}

/// `conditions` without the condition `type_`.
pub fn without_condition(conditions: &[Condition], type_: &str) -> Vec<Condition> {
    conditions.iter().filter(|c| c.type_ != type_).cloned().collect()
}

/// The condition of `type_`, if present.
pub fn condition<'a>(status: &'a ExternalAudienceStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

/// True when `type_` is `True` for `generation`.
pub fn is_true_for(status: &ExternalAudienceStatus, type_: &str, generation: i64) -> bool {
    condition(status, type_).is_some_and(|c| c.status == "True" && c.observed_generation == Some(generation))
}

/// One line, at most 1 KiB: condition messages are limited by the API, and a message that changed
/// on every pass would make every pass write. Stability comes from what is put in: only AEP's own
/// error fields (`aep::types::error_message_from_body`, which never takes request ids, timestamps
/// or raw bodies) and the operator's own text.
pub fn stable_message(message: &str) -> String {
    const MAX: usize = 1024;
    let mut out: String = message.split_whitespace().collect::<Vec<_>>().join(" ");
    if out.len() > MAX {
        let mut cut = MAX;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Time {
        Time(s.parse().expect("timestamp"))
    }

    #[test]
    fn ready_sets_ready_true_and_others_false() {
        let c = conditions_for(&Health::ready("ok"), 3, &[], &t("2026-01-01T00:00:00Z"));
        let by = |ty: &str| c.iter().find(|c| c.type_ == ty).cloned().expect("condition");
        assert_eq!(by("Ready").status, "True");
        assert_eq!(by("Reconciling").status, "False");
        assert_eq!(by("Stalled").status, "False");
        assert!(c.iter().all(|c| c.observed_generation == Some(3)));
    }

    #[test]
    fn never_reconciling_and_stalled_together() {
        for h in [
            Health::ready("a"),
            Health::progressing(Reason::Retrying, "b"),
            Health::stalled(Reason::RunFailed, "c"),
        ] {
            let c = conditions_for(&h, 1, &[], &t("2026-01-01T00:00:00Z"));
            let trues: Vec<_> = c
                .iter()
                .filter(|c| c.status == "True")
                .map(|c| c.type_.as_str())
                .collect();
            assert!(!(trues.contains(&"Reconciling") && trues.contains(&"Stalled")), "{h:?}");
        }
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let first = conditions_for(
            &Health::progressing(Reason::Retrying, "m"),
            1,
            &[],
            &t("2026-01-01T00:00:00Z"),
        );
        let same = conditions_for(
            &Health::progressing(Reason::RunPending, "n"),
            2,
            &first,
            &t("2026-01-02T00:00:00Z"),
        );
        assert_eq!(first[0].last_transition_time, same[0].last_transition_time);
        let flipped = conditions_for(&Health::ready("ok"), 2, &same, &t("2026-01-03T00:00:00Z"));
        assert_eq!(flipped[0].last_transition_time, t("2026-01-03T00:00:00Z"));
        // Stalled stayed False: its time is kept.
        assert_eq!(flipped[2].last_transition_time, first[2].last_transition_time);
    }

    #[test]
    fn pausing_adds_one_condition_and_keeps_the_rest() {
        let before = conditions_for(&Health::ready("ok"), 1, &[], &t("2026-01-01T00:00:00Z"));
        let paused = with_paused(&before, 2, "paused", &t("2026-01-02T00:00:00Z"));
        assert_eq!(paused.len(), 4);
        assert_eq!(&paused[..3], &before[..]);
        let again = with_paused(&paused, 3, "paused", &t("2026-01-03T00:00:00Z"));
        assert_eq!(again[3].last_transition_time, t("2026-01-02T00:00:00Z"));
        // Unpausing: the next conditions_for drops it.
        assert_eq!(
            conditions_for(&Health::ready("ok"), 3, &again, &t("2026-01-04T00:00:00Z")).len(),
            3
        );
    }

    #[test]
    fn stable_message_collapses_whitespace_and_bounds_length() {
        assert_eq!(stable_message("a \n  b"), "a b");
        assert!(stable_message(&"x".repeat(5000)).len() <= 1024 + '…'.len_utf8());
    }
}
