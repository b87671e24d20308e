//! Client-side request budget per IMS org, shared by every session of one [`AepClient`].
//!
//! A thousand `ExternalAudience` objects must not stampede AEP: every AEP call (polls included)
//! waits here first. This module only paces requests; it never fails or drops them.
//!
//! [`AepClient`]: super::AepClient

use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

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
        }
    }

    /// Waits until `org_id` may send one more request.
    pub async fn acquire(&self, org_id: &str) {
        self.limiter.until_key_ready(&org_id.to_owned()).await;
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
