//! Shared state of the controller: clients, the event recorder, timing settings, per-object
//! error backoff, and metrics. Built once in [`super::run`].

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    ResourceExt,
    runtime::{
        events::{Event, EventType, Recorder},
        reflector::Store,
    },
};
use rand::Rng;

use super::{budget::RunBudget, claims::ClaimIndex, credentials::CredentialStore};
use crate::{
    aep::AepClient,
    api::ExternalAudience,
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

pub type ObjectKey = (String, String);

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
    /// How long a missing credentials Secret is reported as `Reconciling` (it may be on its way,
    /// e.g. from External Secrets) before it is `Stalled`.
    pub secret_grace: Duration,
    /// How long before the data expires it is reported (and auto-extended).
    pub expiration_warning: Duration,
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
            secret_grace: Duration::from_secs(120),
            expiration_warning: Duration::from_secs(72 * 3600),
        }
    }
}

/// Behaviour switches of the controller (from the command line).
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    pub missing_audience_policy: MissingAudiencePolicy,
    pub run_limit: RunLimit,
    /// How long parsed credentials are reused.
    pub credentials_ttl: Duration,
    /// Runs per (org, sandbox) per UTC day; `0` means AEP's documented 100.
    pub runs_per_sandbox_per_day: u32,
    /// How long run-budget claims are gathered after start and after midnight before any is
    /// granted ([`super::budget::GATHER`] in the operator).
    pub budget_gather: Duration,
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
    /// Parsed credentials, short-lived (see [`CredentialStore`]).
    pub credentials: CredentialStore,
    /// The daily run budget of each (org, sandbox).
    pub budget: RunBudget,
    /// The controller's cache of ExternalAudiences (who still uses a Secret).
    pub objects: Store<ExternalAudience>,
    /// The audiences the cached objects claim (at most one object manages an audience).
    pub claims: ClaimIndex,
    failures: Mutex<HashMap<ObjectKey, u32>>,
    /// When each object was last checked for drift.
    resyncs: Mutex<HashMap<ObjectKey, std::time::Instant>>,
    /// The resourceVersion of this process's last status write per object.
    written: Mutex<HashMap<ObjectKey, String>>,
    /// The last event published per object.
    last_events: RepeatFilter,
}

/// Remembers the last event per object (reason, note, when) to drop exact repeats.
#[derive(Debug, Default)]
pub struct RepeatFilter(Mutex<HashMap<ObjectKey, (String, String, std::time::Instant)>>);

impl RepeatFilter {
    /// Whether an event is new for the object at `now` (not the same reason and note as its
    /// previous one within [`REPEATED_EVENT_WINDOW`]); records it when it is.
    pub fn is_new(&self, key: &ObjectKey, reason: &str, note: &str, now: std::time::Instant) -> bool {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((r, n, at)) = map.get(key)
            && r == reason
            && n == note
            && now.saturating_duration_since(*at) < REPEATED_EVENT_WINDOW
        {
            return false;
        }
        map.insert(key.clone(), (reason.to_owned(), note.to_owned(), now));
        true
    }

    fn forget(&self, key: &ObjectKey) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

/// An event equal to the object's previous one (same reason and note) within this window is not
/// published again: the condition already says it, and the write is saved.
pub const REPEATED_EVENT_WINDOW: Duration = Duration::from_secs(600);

impl Context {
    pub fn new(
        client: kube::Client,
        aep: AepClient,
        recorder: Recorder,
        timing: Timing,
        metrics: Arc<Metrics>,
        options: Options,
        objects: Store<ExternalAudience>,
    ) -> Self {
        Context {
            client,
            aep,
            recorder,
            timing,
            metrics,
            missing_audience_policy: options.missing_audience_policy,
            run_limit: options.run_limit,
            credentials: CredentialStore::new(options.credentials_ttl),
            budget: RunBudget::new(
                match options.runs_per_sandbox_per_day {
                    0 => 100,
                    n => n,
                },
                super::reconcile::now().0,
                options.budget_gather,
            ),
            objects,
            claims: ClaimIndex::default(),
            failures: Mutex::default(),
            resyncs: Mutex::default(),
            written: Mutex::default(),
            last_events: RepeatFilter::default(),
        }
    }

    /// Whether an ExternalAudience other than `except_uid` in `namespace` references Secret `name`.
    pub fn secret_in_use(&self, namespace: &str, name: &str, except_uid: Option<&str>) -> bool {
        self.objects.state().iter().any(|ea| {
            ea.namespace().as_deref() == Some(namespace)
                && ea.spec.credentials_secret_ref.name == name
                && ea.metadata.uid.as_deref() != except_uid
        })
    }

    /// Forgets what was kept per object (backoff, drift check time) once it is gone.
    pub fn forget_object(&self, key: &ObjectKey) {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
        self.resyncs.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
        self.written.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
        self.last_events.forget(key);
        self.budget.forget(key);
    }

    /// Whether an event is new for the object (see [`RepeatFilter`]).
    pub fn event_is_new(&self, key: &ObjectKey, reason: &str, note: &str) -> bool {
        self.last_events.is_new(key, reason, note, std::time::Instant::now())
    }

    /// Records the resourceVersion our status write produced.
    pub fn wrote(&self, key: ObjectKey, resource_version: String) {
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, resource_version);
    }

    /// Whether this process wrote the object and the cached copy at `resource_version` is not
    /// that write (the cache lags behind it, or someone wrote after it).
    pub fn wrote_since(&self, key: &ObjectKey, resource_version: Option<&str>) -> bool {
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .is_some_and(|w| Some(w.as_str()) != resource_version)
    }

    /// Whether an object read from the cache at `resource_version` is exactly what this process
    /// last wrote: the cache then already holds our last write, and a fresh read would return the
    /// same object unless someone else wrote since (which the conditioned marker write catches).
    pub fn holds_last_write(&self, key: &ObjectKey, resource_version: Option<&str>) -> bool {
        resource_version.is_some_and(|rv| {
            self.written
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(key)
                .is_some_and(|w| w == rv)
        })
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn an_exact_repeat_within_the_window_is_dropped_and_anything_else_published() {
        let f = RepeatFilter::default();
        let a = ("ns".to_owned(), "a".to_owned());
        let b = ("ns".to_owned(), "b".to_owned());
        let t0 = Instant::now();
        assert!(f.is_new(&a, "AEPError", "503 from AEP", t0));
        assert!(!f.is_new(&a, "AEPError", "503 from AEP", t0 + Duration::from_secs(5)));
        assert!(f.is_new(&b, "AEPError", "503 from AEP", t0), "per object");
        assert!(
            f.is_new(&a, "AEPError", "429 from AEP", t0 + Duration::from_secs(6)),
            "another note"
        );
        assert!(
            f.is_new(&a, "AEPError", "503 from AEP", t0 + Duration::from_secs(7)),
            "not the previous one"
        );
        assert!(
            f.is_new(
                &a,
                "AEPError",
                "503 from AEP",
                t0 + Duration::from_secs(7) + REPEATED_EVENT_WINDOW
            ),
            "after the window"
        );
        f.forget(&a);
        assert!(
            f.is_new(&a, "AEPError", "503 from AEP", t0 + Duration::from_secs(8)),
            "forgotten"
        );
    }
}
