//! `spec.ingestion.schedule`: refresh runs on a cron schedule in a time zone, as a Kubernetes
//! CronJob's `schedule` and `timeZone` (five fields, or `@hourly` … `@yearly`; UTC when no time
//! zone is given). Parsing and evaluation are `croner`'s, on `jiff` time zones, so daylight-saving
//! changes and leap days follow the calendar: a local time the clocks skip fires once right after
//! the change, a local time that happens twice fires once.
//!
//! Each scheduled time owes one run. Times missed while the operator was down (or while a run was
//! in flight) collapse into one: only the latest scheduled time not yet served is due, like a
//! CronJob's `startingDeadlineSeconds` catch-up.

use croner::{Cron, parser::CronParser, parser::Seconds};
use jiff::{Timestamp, tz::TimeZone};

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    tz: TimeZone,
}

impl Schedule {
    /// Parses `spec.ingestion.schedule` and `spec.ingestion.timeZone`. The error names the field
    /// and the rule it breaks.
    pub fn parse(expr: &str, time_zone: Option<&str>) -> Result<Schedule, String> {
        let parser = CronParser::builder().seconds(Seconds::Disallowed).build();
        let cron = parser.parse(expr.trim()).map_err(|e| {
            format!(
                "spec.ingestion.schedule {expr:?} is not a valid cron schedule (five fields: minute hour \
                 day-of-month month day-of-week, or @hourly/@daily/@weekly/@monthly/@yearly): {e}"
            )
        })?;
        // Reject what parses but never fires (e.g. 30 February).
        let probe = Timestamp::UNIX_EPOCH.to_zoned(TimeZone::UTC);
        if cron.find_next_occurrence(&probe, false).is_err() {
            return Err(format!("spec.ingestion.schedule {expr:?} never fires"));
        }
        let tz = match time_zone {
            None => TimeZone::UTC,
            Some(name) => TimeZone::get(name).map_err(|e| {
                format!("spec.ingestion.timeZone {name:?} is not a known IANA time zone (e.g. Europe/Berlin): {e}")
            })?,
        };
        Ok(Schedule { cron, tz })
    }

    /// The latest scheduled time in `(after, now]`: the one run owed now, however many times were
    /// missed since `after`.
    pub fn latest_due(&self, after: Timestamp, now: Timestamp) -> Option<Timestamp> {
        let now = now.to_zoned(self.tz.clone());
        let prev = self.cron.find_previous_occurrence(&now, true).ok()?;
        let prev = prev.timestamp();
        (prev > after).then_some(prev)
    }

    /// The first scheduled time after `now`.
    pub fn next_after(&self, now: Timestamp) -> Option<Timestamp> {
        let now = now.to_zoned(self.tz.clone());
        self.cron.find_next_occurrence(&now, false).ok().map(|z| z.timestamp())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn invalid_schedules_and_zones_name_the_field_and_the_rule() {
        let e = Schedule::parse("61 * * * *", None).unwrap_err();
        assert!(
            e.starts_with("spec.ingestion.schedule \"61 * * * *\" is not a valid cron schedule"),
            "{e}"
        );
        let e = Schedule::parse("0 2 * * * *", None).unwrap_err();
        assert!(e.contains("five fields"), "{e}");
        let e = Schedule::parse("0 0 30 2 *", None).unwrap_err();
        assert!(e.contains("never fires"), "{e}");
        let e = Schedule::parse("0 2 * * *", Some("Mars/Olympus")).unwrap_err();
        assert!(
            e.starts_with("spec.ingestion.timeZone \"Mars/Olympus\" is not a known IANA time zone"),
            "{e}"
        );
        assert!(Schedule::parse("@daily", Some("Europe/Berlin")).is_ok());
    }

    #[test]
    fn missed_times_collapse_into_the_latest_one() {
        let s = Schedule::parse("* * * * *", None).unwrap();
        let last = ts("2026-11-29T10:00:00Z");
        // Down for three and a half minutes: one run owed, for 10:03.
        assert_eq!(
            s.latest_due(last, ts("2026-11-29T10:03:30Z")),
            Some(ts("2026-11-29T10:03:00Z"))
        );
        // Served: nothing until the next minute.
        assert_eq!(
            s.latest_due(ts("2026-11-29T10:03:00Z"), ts("2026-11-29T10:03:59Z")),
            None
        );
        assert_eq!(s.latest_due(last, ts("2026-11-29T10:00:00Z")), None, "(after, now]");
        assert_eq!(
            s.next_after(ts("2026-11-29T10:03:30Z")),
            Some(ts("2026-11-29T10:04:00Z"))
        );
    }

    #[test]
    fn a_nightly_schedule_follows_its_zone_across_daylight_saving_changes() {
        // 02:30 Europe/Berlin: on 2026-03-29 the clocks jump from 02:00 to 03:00 (no 02:30), on
        // 2026-10-25 they fall back from 03:00 to 02:00 (02:30 happens twice).
        let s = Schedule::parse("30 2 * * *", Some("Europe/Berlin")).unwrap();
        // Before the spring change: 02:30 CET = 01:30 UTC.
        assert_eq!(
            s.next_after(ts("2026-03-27T12:00:00Z")),
            Some(ts("2026-03-28T01:30:00Z"))
        );
        // The skipped 02:30 fires once, right after the jump (03:00 CEST = 01:00 UTC), not never.
        let spring = s.next_after(ts("2026-03-28T12:00:00Z")).unwrap();
        assert_eq!(spring, ts("2026-03-29T01:00:00Z"));
        // After it: 02:30 CEST = 00:30 UTC.
        assert_eq!(
            s.next_after(ts("2026-03-29T12:00:00Z")),
            Some(ts("2026-03-30T00:30:00Z"))
        );
        // The doubled 02:30 in autumn fires once (the first, CEST = 00:30 UTC), not twice.
        let first = s.next_after(ts("2026-10-24T12:00:00Z")).unwrap();
        assert_eq!(first, ts("2026-10-25T00:30:00Z"));
        assert_eq!(s.next_after(first), Some(ts("2026-10-26T01:30:00Z")));
        // A missed day across the change is still one run.
        assert_eq!(
            s.latest_due(ts("2026-03-27T01:30:00Z"), ts("2026-03-30T06:00:00Z")),
            Some(ts("2026-03-30T00:30:00Z"))
        );
    }

    #[test]
    fn leap_days_fire_only_in_leap_years() {
        let s = Schedule::parse("0 6 29 2 *", None).unwrap();
        assert_eq!(
            s.next_after(ts("2026-11-29T00:00:00Z")),
            Some(ts("2028-02-29T06:00:00Z"))
        );
        assert_eq!(
            s.next_after(ts("2028-02-29T06:00:00Z")),
            Some(ts("2032-02-29T06:00:00Z"))
        );
        // Daily through the leap day: no day skipped or doubled.
        let d = Schedule::parse("0 0 * * *", None).unwrap();
        assert_eq!(
            d.next_after(ts("2028-02-28T12:00:00Z")),
            Some(ts("2028-02-29T00:00:00Z"))
        );
        assert_eq!(
            d.next_after(ts("2028-02-29T00:00:00Z")),
            Some(ts("2028-03-01T00:00:00Z"))
        );
    }
}
