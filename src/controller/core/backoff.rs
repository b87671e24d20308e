//! Per-object exponential backoff for failing passes, with backon's `ExponentialBackoff` kept per
//! object (a success forgets it), and ±10 % jitter on every requeue so that many objects polling
//! at once spread out.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use rand::Rng;

use super::super::keys::ObjectKey;

/// The backoff of every failing object.
pub struct Backoff {
    builder: ExponentialBuilder,
    failing: Mutex<HashMap<ObjectKey, ExponentialBackoff>>,
}

impl Backoff {
    /// Doubling from `base`, capped at `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            builder: ExponentialBuilder::default()
                .with_min_delay(base)
                .with_max_delay(max)
                .with_factor(2.0)
                .without_max_times(),
            failing: Mutex::default(),
        }
    }

    /// The next delay for a failing object: its next backoff step (jittered), and never shorter
    /// than the server's `Retry-After`.
    pub fn next(&self, key: &ObjectKey, retry_after: Option<Duration>) -> Duration {
        let step = {
            let mut map = self.failing.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.clone())
                .or_insert_with(|| self.builder.build())
                .next()
                .unwrap_or(Duration::from_secs(300))
        };
        let d = jitter(step);
        retry_after.map_or(d, |ra| d.max(ra))
    }

    /// Forgets an object's failures (after a pass that did not fail, or once it is gone).
    pub fn reset(&self, key: &ObjectKey) {
        self.failing.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

/// `d` ± 10 %.
pub fn jitter(d: Duration) -> Duration {
    let ms = d.as_millis() as u64;
    if ms < 10 {
        return d;
    }
    let spread = ms / 10;
    Duration::from_millis(rand::rng().random_range(ms - spread..=ms + spread))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_honours_retry_after_and_resets() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
        let key = ("ns".to_owned(), "a".to_owned());
        let within = |d: Duration, want: u64| {
            let ms = d.as_millis() as u64;
            ms >= want * 900 && ms <= want * 1100
        };
        assert!(within(b.next(&key, None), 1));
        assert!(within(b.next(&key, None), 2));
        assert!(within(b.next(&key, None), 4));
        assert!(within(b.next(&key, None), 5), "capped");
        assert!(within(b.next(&key, None), 5));
        assert_eq!(b.next(&key, Some(Duration::from_secs(60))), Duration::from_secs(60));
        b.reset(&key);
        assert!(within(b.next(&key, None), 1), "starts over");
        let other = ("ns".to_owned(), "b".to_owned());
        assert!(within(b.next(&other, None), 1), "per object");
    }
}
