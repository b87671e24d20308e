//! Shared state of the controller: clients, the event recorder, timing settings, per-object
//! error backoff, and metrics. Built once in [`super::run`].

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};
use rand::Rng;

use crate::{
    aep::{AepClient, Credentials},
    config::{MissingAudiencePolicy, RunWindow},
    metrics::Metrics,
};

/// AEP's ingestion limit per audience, as configured.
#[derive(Clone, Copy, Debug)]
pub struct RunLimit {
    /// Runs allowed per window.
    pub max: u32,
    /// The window.
    pub window: RunWindow,
}

impl Default for RunLimit {
    fn default() -> Self {
        RunLimit {
            max: 10,
            window: RunWindow::Lifetime,
        }
    }
}

type ObjectKey = (String, String);

/// Timing knobs of the controller.
#[derive(Clone, Debug)]
pub struct Timing {
    /// Interval between polls of a create operation.
    pub operation_poll: Duration,
    /// Interval between polls of an ingestion run.
    pub run_poll: Duration,
    /// Retry interval after AEP refused a run for now (run in progress, guardrail).
    pub deferred_retry: Duration,
    /// Retry interval for credential / permission problems.
    pub credentials_retry: Duration,
    /// First step of the per-object error backoff.
    pub backoff_base: Duration,
    /// Cap of the per-object error backoff.
    pub backoff_max: Duration,
    /// Periodic resync of a Ready object.
    pub resync: Duration,
    /// How long a create whose answer was lost is looked for by proof before deciding.
    pub create_settle: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            operation_poll: Duration::from_secs(5),
            run_poll: Duration::from_secs(15),
            deferred_retry: Duration::from_secs(300),
            credentials_retry: Duration::from_secs(300),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            resync: Duration::from_secs(600),
            create_settle: Duration::from_secs(600),
        }
    }
}

/// Everything a reconcile pass needs.
pub struct Context {
    pub client: kube::Client,
    pub aep: AepClient,
    pub recorder: Recorder,
    pub timing: Timing,
    pub metrics: Arc<Metrics>,
    pub missing_audience_policy: MissingAudiencePolicy,
    pub run_limit: RunLimit,
    failures: Mutex<HashMap<ObjectKey, u32>>,
    /// Last successfully read credentials per Secret, so an object can still be cleaned up when
    /// its Secret is deleted first (e.g. namespace deletion). Held in memory only.
    credentials: Mutex<HashMap<ObjectKey, Credentials>>,
    /// When each object was last checked for drift.
    resyncs: Mutex<HashMap<ObjectKey, std::time::Instant>>,
}

impl Context {
    pub fn new(
        client: kube::Client,
        aep: AepClient,
        recorder: Recorder,
        timing: Timing,
        metrics: Arc<Metrics>,
        missing_audience_policy: MissingAudiencePolicy,
        run_limit: RunLimit,
    ) -> Self {
        Context {
            client,
            aep,
            recorder,
            timing,
            metrics,
            missing_audience_policy,
            run_limit,
            failures: Mutex::default(),
            credentials: Mutex::default(),
            resyncs: Mutex::default(),
        }
    }

    pub fn remember_credentials(&self, namespace: &str, secret: &str, creds: &Credentials) {
        self.credentials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((namespace.to_owned(), secret.to_owned()), creds.clone());
    }

    pub fn recall_credentials(&self, namespace: &str, secret: &str) -> Option<Credentials> {
        self.credentials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(namespace.to_owned(), secret.to_owned()))
            .cloned()
    }

    /// Whether the object's drift check is due (never checked since start, or `interval` passed).
    pub fn resync_due(&self, key: &ObjectKey, interval: Duration) -> bool {
        self.resyncs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .is_none_or(|at| at.elapsed() >= interval)
    }

    pub fn resynced(&self, key: ObjectKey) {
        self.resyncs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, std::time::Instant::now());
    }

    /// `d` ± 10 % so that many objects polling at once spread out.
    pub fn jitter(d: Duration) -> Duration {
        let ms = d.as_millis() as u64;
        if ms < 10 {
            return d;
        }
        let spread = ms / 10;
        Duration::from_millis(rand::rng().random_range(ms - spread..=ms + spread))
    }

    /// Next backoff for a failing object: exponential from `backoff_base`, capped, jittered, and
    /// never shorter than the server's `Retry-After`.
    pub fn backoff(&self, key: (String, String), retry_after: Option<Duration>) -> Duration {
        let attempts = {
            let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(key).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        let exp = self
            .timing
            .backoff_base
            .saturating_mul(1u32 << attempts.saturating_sub(1).min(16));
        let d = Self::jitter(exp.min(self.timing.backoff_max));
        retry_after.map_or(d, |ra| d.max(ra))
    }

    /// Forget the failures of an object (after a successful pass).
    pub fn reset_backoff(&self, key: &(String, String)) {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }

    /// Publishes an event; failures to publish are logged, never fatal.
    pub async fn event(&self, reference: &ObjectReference, type_: EventType, reason: &str, action: &str, note: String) {
        let ev = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, reference).await {
            tracing::warn!(error = %e, reason, "Failed to publish event");
        }
    }
}
