//! The run budget shared by every object of one (IMS org, sandbox): AEP allows a fixed number of
//! ingestion runs per sandbox per UTC day (reference §4: 100), whoever starts them. The operator
//! counts the runs it starts per UTC day and spends them by priority, so the sandbox's cap is
//! never what stops a run, and a refused run never costs a request:
//!
//! 1. spec changes and explicit run requests (`run-requested-at`), then scheduled refreshes;
//! 2. within a class, the oldest due first (then by object, for a stable order).
//!
//! An object that must wait is told how much of the budget is used and when it can run next
//! (the next UTC day), and makes no request until then. The count survives restarts: it is
//! seeded from the runs recorded in the objects' status (each object records when its runs
//! started), and a refusal from AEP for the sandbox's daily cap marks the day as spent.
//!
//! Claims are gathered for a short window after the operator starts and after each UTC midnight
//! before any is granted, so that the order holds when every waiting object wakes at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use jiff::Timestamp;

use super::keys::ObjectKey;

/// Why a run is owed, most urgent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// The spec changed (or the audience never had a run), or a run was requested.
    Demand,
    /// A scheduled refresh.
    Scheduled,
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// Start the run now (the budget is charged).
    Go,
    /// Not now: `used` of `limit` runs are spent (or promised to claims ahead of this one) today;
    /// ask again at `until`.
    Wait { used: u32, limit: u32, until: Timestamp },
}

/// How long claims are gathered after start and after midnight before any is granted.
pub const GATHER: Duration = Duration::from_secs(5);
/// A claim not renewed for this long is dropped (its object no longer asks).
const STALE_CLAIM: Duration = Duration::from_secs(600);

#[derive(Debug, Default)]
struct Ledger {
    /// UTC day (days since the epoch) the count is for.
    day: i64,
    used: u32,
    seeded: bool,
    /// Objects were already waiting for this budget when this process started: gather claims
    /// after the start too, so that their order holds.
    contended: bool,
    /// Waiting claims: (priority, due since, object) → last renewed.
    claims: BTreeMap<(Priority, Timestamp, ObjectKey), Timestamp>,
    /// Granted to these objects today, start not yet confirmed (a refund gives it back).
    granted: std::collections::HashSet<ObjectKey>,
}

/// The budget of every (org, sandbox), for one operator process.
#[derive(Debug)]
pub struct RunBudget {
    limit: u32,
    started: Timestamp,
    gather: Duration,
    ledgers: Mutex<HashMap<(String, String), Ledger>>,
}

fn utc_day(t: Timestamp) -> i64 {
    t.as_second().div_euclid(86_400)
}

fn day_start(day: i64) -> Timestamp {
    Timestamp::from_second(day.saturating_mul(86_400)).unwrap_or(Timestamp::MAX)
}

impl RunBudget {
    /// `limit` runs per (org, sandbox) per UTC day; `started` is when this process started (on
    /// the operator's clock); claims are gathered for `gather` after it and after each midnight.
    pub fn new(limit: u32, started: Timestamp, gather: Duration) -> Self {
        RunBudget {
            limit,
            started,
            gather,
            ledgers: Mutex::default(),
        }
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Claims a run for `key`. `seed` counts the runs already started today in this sandbox
    /// (from the objects' status) and says whether objects were waiting for the budget; it is
    /// called once per day and process.
    #[allow(clippy::too_many_arguments)]
    pub fn claim(
        &self,
        org: &str,
        sandbox: &str,
        key: &ObjectKey,
        priority: Priority,
        due_since: Timestamp,
        now: Timestamp,
        seed: impl FnOnce(i64) -> (u32, bool),
    ) -> Grant {
        let mut ledgers = self.ledgers.lock().unwrap_or_else(|p| p.into_inner());
        let ledger = ledgers.entry((org.to_owned(), sandbox.to_owned())).or_default();
        let today = utc_day(now);
        if ledger.day != today {
            ledger.day = today;
            ledger.used = 0;
            ledger.seeded = false;
            ledger.granted.clear();
        }
        if !ledger.seeded {
            (ledger.used, ledger.contended) = seed(today);
            ledger.seeded = true;
        }
        let stale = now - jiff::SignedDuration::try_from(STALE_CLAIM).unwrap_or(jiff::SignedDuration::MAX);
        ledger.claims.retain(|(_, _, k), renewed| k != key && *renewed >= stale);
        let me = (priority, due_since, key.clone());
        ledger.claims.insert(me.clone(), now);
        let tomorrow = day_start(today + 1);
        // Gather first: after this process started, and after midnight.
        // After midnight (everyone deferred wakes then), and after this process started if
        // objects were already waiting (a restart must not reorder them).
        let gather = jiff::SignedDuration::try_from(self.gather).unwrap_or(jiff::SignedDuration::ZERO);
        let since = if ledger.contended {
            self.started.max(day_start(today))
        } else {
            day_start(today)
        };
        let gathered = since + gather;
        if now < gathered {
            return Grant::Wait {
                used: ledger.used,
                limit: self.limit,
                until: gathered,
            };
        }
        let ahead = ledger.claims.range(..me.clone()).count() as u32;
        if ledger.used.saturating_add(ahead) < self.limit {
            ledger.claims.remove(&me);
            ledger.used += 1;
            ledger.granted.insert(key.clone());
            Grant::Go
        } else {
            Grant::Wait {
                used: ledger.used.max(self.limit.min(ledger.used + ahead)),
                limit: self.limit,
                until: tomorrow,
            }
        }
    }

    /// A run granted to `key` today was not started after all (AEP did not process it, or it was
    /// never sent): the budget is given back. Nothing happens for a run this process did not
    /// grant today (after a restart the count comes from the runs recorded in status).
    pub fn refund(&self, org: &str, sandbox: &str, key: &ObjectKey, now: Timestamp) {
        let mut ledgers = self.ledgers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = ledgers.get_mut(&(org.to_owned(), sandbox.to_owned()))
            && l.day == utc_day(now)
            && l.granted.remove(key)
        {
            l.used = l.used.saturating_sub(1);
        }
    }

    /// The run granted to `key` was started: it stays counted.
    pub fn confirm(&self, org: &str, sandbox: &str, key: &ObjectKey) {
        let mut ledgers = self.ledgers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = ledgers.get_mut(&(org.to_owned(), sandbox.to_owned())) {
            l.granted.remove(key);
        }
    }

    /// AEP refused a run for the sandbox's daily cap (runs started outside this operator count
    /// too): nothing more today.
    pub fn spent(&self, org: &str, sandbox: &str, now: Timestamp) {
        let mut ledgers = self.ledgers.lock().unwrap_or_else(|p| p.into_inner());
        let l = ledgers.entry((org.to_owned(), sandbox.to_owned())).or_default();
        if l.day != utc_day(now) {
            l.day = utc_day(now);
            l.claims.clear();
        }
        l.seeded = true;
        l.used = self.limit;
    }

    /// Forgets an object's claims (it was deleted).
    pub fn forget(&self, key: &ObjectKey) {
        let mut ledgers = self.ledgers.lock().unwrap_or_else(|p| p.into_inner());
        for l in ledgers.values_mut() {
            l.claims.retain(|(_, _, k), _| k != key);
        }
    }

    /// The start of the UTC day after `now`.
    pub fn next_window(now: Timestamp) -> Timestamp {
        day_start(utc_day(now) + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn key(n: &str) -> ObjectKey {
        ("ns".to_owned(), n.to_owned())
    }

    const START: &str = "2026-11-29T10:00:00Z";

    #[test]
    fn the_budget_of_a_day_is_spent_once_then_everyone_waits_for_the_next_day() {
        let b = RunBudget::new(5, t(START), GATHER);
        let now = t("2026-11-29T10:00:10Z");
        let mut grants = Vec::new();
        for i in 0..8 {
            grants.push(b.claim(
                "org",
                "prod",
                &key(&format!("o{i}")),
                Priority::Scheduled,
                now,
                now,
                |_| (0, false),
            ));
        }
        assert_eq!(grants.iter().filter(|g| **g == Grant::Go).count(), 5);
        for g in &grants[5..] {
            assert_eq!(
                *g,
                Grant::Wait {
                    used: 5,
                    limit: 5,
                    until: t("2026-11-30T00:00:00Z")
                }
            );
        }
        // Another sandbox, another org: their own budgets.
        assert_eq!(
            b.claim("org", "dev", &key("x"), Priority::Scheduled, now, now, |_| (0, false)),
            Grant::Go
        );
        assert_eq!(
            b.claim("org2", "prod", &key("y"), Priority::Scheduled, now, now, |_| (0, false)),
            Grant::Go
        );
    }

    #[test]
    fn demands_jump_the_queue_and_older_dues_go_first_after_midnight() {
        let b = RunBudget::new(2, t(START), GATHER);
        let due = |h: &str| t(&format!("2026-11-29T{h}:00Z"));
        let scheduled = [("s0", "08:00"), ("s1", "06:00"), ("s2", "09:00"), ("s3", "07:00")];
        // Day 1: the budget is spent (2 runs seeded from status); four scheduled claims wait.
        let day1 = t("2026-11-29T10:00:10Z");
        for (k, d) in scheduled {
            let g = b.claim("org", "prod", &key(k), Priority::Scheduled, due(d), day1, |_| (2, true));
            assert!(matches!(g, Grant::Wait { used: 2, limit: 2, .. }), "{g:?}");
        }
        // They all wake just after midnight, and a spec change arrives: nothing is granted while
        // claims are gathered.
        let woke = t("2026-11-30T00:00:02Z");
        for (k, d) in scheduled {
            let g = b.claim("org", "prod", &key(k), Priority::Scheduled, due(d), woke, |_| {
                (0, false)
            });
            assert_eq!(
                g,
                Grant::Wait {
                    used: 0,
                    limit: 2,
                    until: t("2026-11-30T00:00:05Z")
                }
            );
        }
        b.claim("org", "prod", &key("spec"), Priority::Demand, woke, woke, |_| {
            (0, false)
        });
        // Then, whatever order they ask in: the spec change and the oldest scheduled (s1) run.
        let after = t("2026-11-30T00:00:06Z");
        let mut ran = Vec::new();
        for (k, p, d) in [
            ("s2", Priority::Scheduled, due("09:00")),
            ("s0", Priority::Scheduled, due("08:00")),
            ("s3", Priority::Scheduled, due("07:00")),
            ("spec", Priority::Demand, woke),
            ("s1", Priority::Scheduled, due("06:00")),
        ] {
            match b.claim("org", "prod", &key(k), p, d, after, |_| (0, false)) {
                Grant::Go => ran.push(k),
                Grant::Wait { used, limit, until } => {
                    assert_eq!((used, limit), (2, 2), "{k}: the budget is promised to those ahead");
                    assert_eq!(until, t("2026-12-01T00:00:00Z"), "{k}");
                }
            }
        }
        assert_eq!(ran, ["spec", "s1"]);
    }

    #[test]
    fn the_count_is_seeded_once_per_day_refunded_and_spent() {
        let b = RunBudget::new(3, t(START), GATHER);
        let now = t("2026-11-29T12:00:00Z");
        let mut seeded = 0;
        let g = b.claim("org", "prod", &key("a"), Priority::Demand, now, now, |day| {
            seeded += 1;
            assert_eq!(day, utc_day(now));
            (2, false)
        });
        assert_eq!(g, Grant::Go, "2 seeded + this one = 3");
        assert!(matches!(
            b.claim("org", "prod", &key("b"), Priority::Demand, now, now, |_| unreachable!(
                "seeded once"
            )),
            Grant::Wait { used: 3, .. }
        ));
        assert_eq!(seeded, 1);
        b.refund("org", "prod", &key("b"), now);
        assert!(
            matches!(
                b.claim("org", "prod", &key("b"), Priority::Demand, now, now, |_| (0, false)),
                Grant::Wait { .. }
            ),
            "b was never granted: nothing to give back"
        );
        b.refund("org", "prod", &key("a"), now);
        assert_eq!(
            b.claim("org", "prod", &key("b"), Priority::Demand, now, now, |_| (0, false)),
            Grant::Go
        );
        // AEP says the sandbox's cap is reached (runs started elsewhere count too).
        let other = t("2026-11-29T13:00:00Z");
        b.spent("org", "dev", other);
        assert!(matches!(
            b.claim("org", "dev", &key("c"), Priority::Demand, other, other, |_| (0, false)),
            Grant::Wait { used: 3, limit: 3, .. }
        ));
    }

    #[test]
    fn claims_are_gathered_after_a_restart_only_when_objects_were_waiting() {
        let now = t("2026-11-29T10:00:01Z");
        let calm = RunBudget::new(5, t(START), GATHER);
        assert_eq!(
            calm.claim("org", "prod", &key("a"), Priority::Scheduled, now, now, |_| (0, false)),
            Grant::Go
        );
        let busy = RunBudget::new(5, t(START), GATHER);
        assert_eq!(
            busy.claim("org", "prod", &key("a"), Priority::Scheduled, now, now, |_| (3, true)),
            Grant::Wait {
                used: 3,
                limit: 5,
                until: t("2026-11-29T10:00:05Z")
            }
        );
    }

    #[test]
    fn claims_of_deleted_or_silent_objects_do_not_block_others() {
        let b = RunBudget::new(1, t(START), GATHER);
        let day1 = t("2026-11-29T10:00:10Z");
        b.claim("org", "prod", &key("gone"), Priority::Demand, day1, day1, |_| {
            (1, false)
        });
        b.claim("org", "prod", &key("silent"), Priority::Demand, day1, day1, |_| {
            (1, false)
        });
        b.forget(&key("gone"));
        // Next day, after the gather window and long after "silent" last asked.
        let later = t("2026-11-30T01:00:00Z");
        assert_eq!(
            b.claim("org", "prod", &key("new"), Priority::Scheduled, later, later, |_| (
                0, false
            )),
            Grant::Go
        );
    }
}
