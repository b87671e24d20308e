//! Client-side request budget per IMS org, shared by every session of one [`AepClient`].
//!
//! A thousand `ExternalAudience` objects must not stampede AEP: every AEP call (polls included)
//! waits here first. This module only paces requests; it never fails or drops them.
//!
//! [`AepClient`]: super::AepClient

use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// A keyed GCRA limiter: `requests_per_second` per org, spaced evenly (burst of one), so no
/// one-second window ever holds more than `requests_per_second` requests of one org.
pub struct OrgRateLimiter {
    limiter: DefaultKeyedRateLimiter<String>,
}

impl OrgRateLimiter {
    /// A limiter allowing `requests_per_second` per org (values below 1 are raised to 1).
    pub fn new(requests_per_second: u32) -> Self {
        let rate = NonZeroU32::new(requests_per_second).unwrap_or(NonZeroU32::MIN);
        OrgRateLimiter {
            limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(NonZeroU32::MIN)),
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
}
