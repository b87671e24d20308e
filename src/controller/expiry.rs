//! Data expiration: AEP drops an external audience's data `ttlInDays` after its ingestion
//! (reference §4: it can then no longer be activated and its profile count is 0). AEP's API does
//! not report when, so the expiration is computed (and `status.dataExpiration.source` says how):
//! the end of the last successful run plus `ttlInDays`, or where the last extend-TTL call put it
//! (extend-TTL pushes it out by `ttlInDays` from the expiration, or from now once expired).

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{DataExpiration, ExternalAudienceStatus, RunState};

/// `status.dataExpiration.source` values.
pub const FROM_LAST_RUN: &str = "LastSuccessfulRun";
pub const FROM_EXTENSION: &str = "Extension";

/// Where the data stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Fresh,
    /// Within the warning window.
    ExpiringSoon(Timestamp),
    Expired(Timestamp),
}

fn ttl(ttl_in_days: i32) -> SignedDuration {
    SignedDuration::from_hours(i64::from(ttl_in_days.max(1)) * 24)
}

fn window(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

/// The expiration implied by the status: the later of the last successful run's end plus the
/// TTL and the last extension. `None` before any successful run.
pub fn compute(status: &ExternalAudienceStatus, ttl_in_days: i32) -> Option<DataExpiration> {
    let last_success = status
        .last_run
        .iter()
        .chain(status.run_history.iter())
        .find(|r| r.status == RunState::Success)
        .and_then(|r| r.end_time.as_ref().or(r.start_time.as_ref()))
        .map(|t| t.0);
    let from_run = last_success.and_then(|t| t.checked_add(ttl(ttl_in_days)).ok());
    let previous = status.data_expiration.as_ref();
    let extended = previous.and_then(|d| d.extended_until.as_ref()).map(|t| t.0);
    let (expires_at, source) = match (from_run, extended) {
        (Some(r), Some(e)) if e > r => (e, FROM_EXTENSION),
        (Some(r), _) => (r, FROM_LAST_RUN),
        (None, Some(e)) => (e, FROM_EXTENSION),
        (None, None) => return None,
    };
    Some(DataExpiration {
        expires_at: Time(expires_at),
        source: source.to_owned(),
        extended_until: extended.map(Time),
        last_extended_at: previous.and_then(|d| d.last_extended_at.clone()),
    })
}

/// Fresh, expiring within `warning`, or expired, at `now`.
pub fn state(expiration: Option<&DataExpiration>, now: Timestamp, warning: Duration) -> State {
    match expiration.map(|d| d.expires_at.0) {
        None => State::Fresh,
        Some(at) if now >= at => State::Expired(at),
        Some(at) if now >= at.checked_sub(window(warning)).unwrap_or(Timestamp::MIN) => State::ExpiringSoon(at),
        Some(_) => State::Fresh,
    }
}

/// Whether `autoExtend` should extend now: the data is within the warning window (or expired)
/// and the last extension is at least one TTL ago (once per period).
pub fn extend_due(expiration: Option<&DataExpiration>, ttl_in_days: i32, now: Timestamp, warning: Duration) -> bool {
    let Some(d) = expiration else { return false };
    if state(Some(d), now, warning) == State::Fresh {
        return false;
    }
    d.last_extended_at
        .as_ref()
        .is_none_or(|last| now >= last.0.checked_add(ttl(ttl_in_days)).unwrap_or(Timestamp::MAX))
}

/// The expiration after an extend-TTL call at `now` (from the expiration, or from now once
/// expired).
pub fn extended(expiration: Option<&DataExpiration>, ttl_in_days: i32, now: Timestamp) -> DataExpiration {
    let base = expiration.map_or(now, |d| d.expires_at.0.max(now));
    let until = base.checked_add(ttl(ttl_in_days)).unwrap_or(Timestamp::MAX);
    DataExpiration {
        expires_at: Time(until),
        source: FROM_EXTENSION.to_owned(),
        extended_until: Some(Time(until)),
        last_extended_at: Some(Time(now)),
    }
}

/// When the object should next be looked at for its expiration: the start of the warning window,
/// or the expiration itself.
pub fn next_check(expiration: Option<&DataExpiration>, now: Timestamp, warning: Duration) -> Option<Duration> {
    let at = expiration?.expires_at.0;
    let warn_at = at.checked_sub(window(warning)).unwrap_or(Timestamp::MIN);
    let next = [warn_at, at].into_iter().find(|t| *t > now)?;
    Duration::try_from(next.duration_since(now)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::IngestionRun;

    fn t(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn ran(end: &str, status: RunState) -> ExternalAudienceStatus {
        ExternalAudienceStatus {
            last_run: Some(IngestionRun {
                run_id: "r".into(),
                generation: 1,
                status,
                start_time: Some(Time(t(end) - SignedDuration::from_mins(1))),
                end_time: Some(Time(t(end))),
                message: None,
            }),
            ..Default::default()
        }
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn expiry_is_the_last_successful_run_plus_the_ttl_and_says_so() {
        let st = ran("2028-02-20T10:00:00Z", RunState::Success);
        let d = compute(&st, 10).unwrap();
        // Across the leap day: 10 days after 20 February 2028 is 1 March.
        assert_eq!(d.expires_at.0, t("2028-03-01T10:00:00Z"));
        assert_eq!(d.source, FROM_LAST_RUN);
        assert!(compute(&ran("2028-02-20T10:00:00Z", RunState::Failed), 10).is_none());
        assert!(compute(&ExternalAudienceStatus::default(), 10).is_none());
    }

    #[test]
    fn fresh_then_expiring_within_the_window_then_expired() {
        let d = compute(&ran("2026-11-01T00:00:00Z", RunState::Success), 30).unwrap();
        let w = 3 * DAY;
        assert_eq!(state(Some(&d), t("2026-11-27T23:59:59Z"), w), State::Fresh);
        assert_eq!(
            state(Some(&d), t("2026-11-28T00:00:00Z"), w),
            State::ExpiringSoon(t("2026-12-01T00:00:00Z"))
        );
        assert_eq!(
            state(Some(&d), t("2026-12-01T00:00:00Z"), w),
            State::Expired(t("2026-12-01T00:00:00Z"))
        );
        assert_eq!(
            next_check(Some(&d), t("2026-11-20T00:00:00Z"), w),
            Some(Duration::from_secs(8 * 86_400))
        );
        assert_eq!(next_check(Some(&d), t("2026-11-29T00:00:00Z"), w), Some(2 * DAY));
        assert_eq!(next_check(Some(&d), t("2026-12-02T00:00:00Z"), w), None);
    }

    #[test]
    fn auto_extend_is_due_once_per_ttl_and_an_extension_outlives_an_older_run() {
        let mut st = ran("2026-11-01T00:00:00Z", RunState::Success);
        let w = 3 * DAY;
        let d = compute(&st, 30).unwrap();
        assert!(!extend_due(Some(&d), 30, t("2026-11-20T00:00:00Z"), w), "fresh");
        let now = t("2026-11-29T00:00:00Z");
        assert!(extend_due(Some(&d), 30, now, w), "in the window");
        let e = extended(Some(&d), 30, now);
        assert_eq!(
            e.expires_at.0,
            t("2026-12-31T00:00:00Z"),
            "from the expiration, not from now"
        );
        st.data_expiration = Some(e.clone());
        let again = compute(&st, 30).unwrap();
        assert_eq!(
            (again.expires_at.0, again.source.as_str()),
            (t("2026-12-31T00:00:00Z"), FROM_EXTENSION)
        );
        // A TTL shorter than the window would re-enter it at once: still once per TTL.
        let short = extended(Some(&d), 2, now);
        assert!(!extend_due(Some(&short), 2, now + SignedDuration::from_hours(1), w));
        assert!(extend_due(Some(&short), 2, now + SignedDuration::from_hours(48), w));
        // Expired: extended from now.
        let late = t("2026-12-10T00:00:00Z");
        assert_eq!(extended(Some(&d), 30, late).expires_at.0, t("2027-01-09T00:00:00Z"));
        // A newer successful run beats an older extension.
        st.last_run = ran("2026-12-20T00:00:00Z", RunState::Success).last_run;
        let newer = compute(&st, 30).unwrap();
        assert_eq!(
            (newer.expires_at.0, newer.source.as_str()),
            (t("2027-01-19T00:00:00Z"), FROM_LAST_RUN)
        );
    }
}
