//! Client-side request budget per IMS org, shared by every session of one [`AepClient`].
//!
//! A thousand `ExternalAudience` objects must not stampede AEP: every AEP call (polls included)
//! waits here first. This module only paces requests; it never fails or drops them.
//!
//! [`AepClient`]: super::AepClient

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::Notify;

/// Which lane a request waits in: background reads (drift checks) take a slot only while no
/// foreground request (creates, updates, runs and their polls) of the same org is waiting. One
/// budget, two lanes: background work never adds to the rate, it only yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    /// Work an object is waiting on.
    #[default]
    Foreground,
    /// Periodic checks that may wait.
    Background,
}

/// Transport jitter the spacing leaves room for: a request held up on its way for up to this long
/// (a busy host, a slow network path) still never lands in the same one-second window of AEP's
/// counting as `requests_per_second` others.
pub const JITTER_ALLOWANCE: Duration = Duration::from_millis(100);

/// A keyed GCRA limiter: at most `requests_per_second` per org, spaced evenly (burst of one)
/// `(1 s + JITTER_ALLOWANCE) / requests_per_second` apart. Evenly spaced sends alone keep every
/// one-second window at the limit only if they arrive as sent; with the allowance, `n + 1`
/// requests span at least `1 s + JITTER_ALLOWANCE`, so one delayed by up to the allowance still
/// leaves every window of arrivals at or under the limit.
pub struct OrgRateLimiter {
    limiter: DefaultKeyedRateLimiter<String>,
    /// Foreground requests waiting for a slot, per org.
    waiting: Mutex<HashMap<String, usize>>,
    /// Signalled whenever an org's foreground queue empties.
    drained: Notify,
}

/// Counts one waiting foreground request until dropped (also when its future is cancelled).
struct Waiting<'a> {
    limiter: &'a OrgRateLimiter,
    org: &'a str,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut waiting = self.limiter.lock();
        if let Some(n) = waiting.get_mut(self.org) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                waiting.remove(self.org);
                self.limiter.drained.notify_waiters();
            }
        }
    }
}

impl OrgRateLimiter {
    /// A limiter allowing `requests_per_second` per org (values below 1 are raised to 1).
    pub fn new(requests_per_second: u32) -> Self {
        let rate = requests_per_second.max(1);
        let period = (Duration::from_secs(1) + JITTER_ALLOWANCE) / rate;
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::MIN);
        OrgRateLimiter {
            limiter: RateLimiter::keyed(quota),
            waiting: Mutex::default(),
            drained: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn foreground_waiting(&self, org_id: &str) -> bool {
        self.lock().get(org_id).is_some_and(|n| *n > 0)
    }

    /// Waits until `org_id` may send one more foreground request.
    pub async fn acquire(&self, org_id: &str) {
        self.acquire_with(org_id, Priority::Foreground).await;
    }

    /// Waits until `org_id` may send one more request of `priority`: a background request first
    /// waits until no foreground request of the org is waiting.
    pub async fn acquire_with(&self, org_id: &str, priority: Priority) {
        match priority {
            Priority::Foreground => {
                *self.lock().entry(org_id.to_owned()).or_insert(0) += 1;
                let _waiting = Waiting {
                    limiter: self,
                    org: org_id,
                };
                self.limiter.until_key_ready(&org_id.to_owned()).await;
            }
            Priority::Background => loop {
                let drained = self.drained.notified();
                // Registered before the check, so a queue that empties in between still wakes it.
                if !self.foreground_waiting(org_id) {
                    self.limiter.until_key_ready(&org_id.to_owned()).await;
                    return;
                }
                drained.await;
            },
        }
    }
}

impl std::fmt::Debug for OrgRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrgRateLimiter").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn background_requests_wait_while_foreground_ones_queue() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let limiter = Arc::new(OrgRateLimiter::new(20));
        let order = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(AtomicUsize::new(0));
        // A burst of foreground work is queued first; a background read arrives behind it.
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (limiter, order, done) = (limiter.clone(), order.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                limiter.acquire("A@AdobeOrg").await;
                order.lock().expect("lock").push(format!("fg{i}"));
                done.fetch_add(1, Ordering::SeqCst);
            }));
        }
        tokio::task::yield_now().await;
        let bg = {
            let (limiter, order) = (limiter.clone(), order.clone());
            tokio::spawn(async move {
                limiter.acquire_with("A@AdobeOrg", Priority::Background).await;
                order.lock().expect("lock").push("bg".to_owned());
            })
        };
        for t in tasks {
            t.await.expect("fg");
        }
        bg.await.expect("bg");
        let order = order.lock().expect("lock").clone();
        assert_eq!(order.last().map(String::as_str), Some("bg"), "{order:?}");
        // Another org's background request does not wait for A's queue.
        let started = tokio::time::Instant::now();
        limiter.acquire_with("B@AdobeOrg", Priority::Background).await;
        assert!(started.elapsed() < Duration::from_millis(50));
    }

    #[tokio::test]
    async fn requests_are_spaced_and_orgs_are_independent() {
        let limiter = OrgRateLimiter::new(5);
        limiter.acquire("A@AdobeOrg").await;
        limiter.acquire("B@AdobeOrg").await;
        // No burst: A's next permit is 200 ms away; another org is not affected.
        assert!(limiter.limiter.check_key(&"A@AdobeOrg".to_owned()).is_err());
        assert!(limiter.limiter.check_key(&"C@AdobeOrg".to_owned()).is_ok());
        let started = tokio::time::Instant::now();
        limiter.acquire("A@AdobeOrg").await;
        assert!(started.elapsed() >= std::time::Duration::from_millis(150));
    }

    #[tokio::test]
    async fn n_plus_one_requests_span_more_than_a_second_plus_the_allowance() {
        // 20/s: the 21st request may go no earlier than 1.1 s after the first, so a first request
        // delayed by up to 100 ms still shares no one-second window with 20 others.
        let limiter = OrgRateLimiter::new(20);
        let started = tokio::time::Instant::now();
        for _ in 0..21 {
            limiter.acquire("A@AdobeOrg").await;
        }
        let span = started.elapsed();
        assert!(span >= Duration::from_secs(1) + JITTER_ALLOWANCE, "{span:?}");
        assert!(
            span < Duration::from_millis(1500),
            "the limiter does not over-brake: {span:?}"
        );
    }
}
