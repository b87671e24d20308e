//! The operator's clock: the host's, shifted by `--clock-offset` (schedules, data expiry, the run
//! budget's UTC day and the times written to status follow it). Read once per pass, as a fact;
//! the decisions themselves take the time they are given.

use std::sync::OnceLock;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

static CLOCK_OFFSET: OnceLock<SignedDuration> = OnceLock::new();
static STARTED: OnceLock<Timestamp> = OnceLock::new();

/// When this process started, on the operator's clock (the first call fixes it; `run` calls it
/// at start).
pub fn started() -> Timestamp {
    *STARTED.get_or_init(|| now().0)
}

/// Shifts the operator's clock (`--clock-offset`); set once at start.
pub fn set_clock_offset(offset: std::time::Duration) {
    let _ = CLOCK_OFFSET.set(SignedDuration::try_from(offset).unwrap_or(SignedDuration::ZERO));
}

/// The operator's clock now, in whole seconds: what a time in status keeps (`metav1.Time`), so
/// that a time written to status and read back is the same time. A message or a decision made
/// from the finer time would differ from the same one made after the round trip, and a pass
/// would write status again only to drop the fraction.
pub fn now() -> Time {
    let offset = CLOCK_OFFSET.get().copied().unwrap_or(SignedDuration::ZERO);
    let t = Timestamp::now().saturating_add(offset).unwrap_or(Timestamp::MAX);
    Time(Timestamp::from_second(t.as_second()).unwrap_or(t))
}

/// Time from `since` to `now`; zero when `since` lies ahead (a time written by a replica whose
/// clock runs ahead counts as just now, never as long ago).
pub fn elapsed(since: Timestamp, now: Timestamp) -> std::time::Duration {
    std::time::Duration::try_from(now.duration_since(since)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_survives_the_round_trip_through_status() {
        let t = now();
        let back: Time = serde_json::from_value(serde_json::to_value(&t).expect("json")).expect("time");
        assert_eq!(back, t);
        assert_eq!(t.0.subsec_nanosecond(), 0);
    }

    #[test]
    fn a_time_ahead_of_the_clock_is_no_time_ago() {
        let t: Timestamp = "2026-01-01T00:00:00Z".parse().expect("t");
        let later = t + SignedDuration::from_secs(90);
        assert_eq!(elapsed(t, later), std::time::Duration::from_secs(90));
        assert_eq!(elapsed(later, t), std::time::Duration::ZERO);
    }
}
