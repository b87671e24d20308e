//! What every pass of every kind shares: the Kubernetes and AEP clients, the credentials cache,
//! the event sink, timing settings, per-object backoff, and metrics. Built once at start.
//!
//! In-memory state here is only a cache of what the API server says: the resourceVersion of this
//! process's last status write per object (to skip a GET when the cache already holds it) and the
//! backoff of failing objects. A restart loses them and changes no decision.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use super::{backoff::Backoff, events::EventSink};
use crate::{
    aep::AepClient,
    controller::{credentials::CredentialStore, keys::ObjectKey},
    metrics::Metrics,
};

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
    /// How often destination dataflows, their export runs and segmentation jobs are read.
    pub activation_poll: Duration,
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
            activation_poll: Duration::from_secs(300),
        }
    }
}

/// Everything a pass of any kind needs.
pub struct Context {
    pub client: kube::Client,
    pub aep: AepClient,
    pub events: Arc<dyn EventSink>,
    pub timing: Timing,
    pub metrics: Arc<Metrics>,
    /// Parsed credentials, short-lived (see [`CredentialStore`]).
    pub credentials: CredentialStore,
    backoff: Backoff,
    /// The resourceVersion of this process's last status write per object.
    written: Mutex<HashMap<ObjectKey, String>>,
}

impl Context {
    pub fn new(
        client: kube::Client,
        aep: AepClient,
        events: Arc<dyn EventSink>,
        timing: Timing,
        metrics: Arc<Metrics>,
        credentials_ttl: Duration,
    ) -> Self {
        Context {
            client,
            aep,
            events,
            backoff: Backoff::new(timing.backoff_base, timing.backoff_max),
            timing,
            metrics,
            credentials: CredentialStore::new(credentials_ttl),
            written: Mutex::default(),
        }
    }

    /// Forgets what was kept about an object once it is gone.
    pub fn forget_object(&self, key: &ObjectKey) {
        self.backoff.reset(key);
        self.written.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }

    /// Records the resourceVersion our write produced.
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
    /// last wrote: a fresh read would return the same object unless someone else wrote since
    /// (which the conditioned first write of the pass catches).
    pub fn holds_last_write(&self, key: &ObjectKey, resource_version: Option<&str>) -> bool {
        resource_version.is_some_and(|rv| {
            self.written
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(key)
                .is_some_and(|w| w == rv)
        })
    }

    /// The next backoff delay of a failing object.
    pub fn backoff(&self, key: &ObjectKey, retry_after: Option<Duration>) -> Duration {
        self.backoff.next(key, retry_after)
    }

    /// Forgets the failures of an object (after a pass that did not fail).
    pub fn reset_backoff(&self, key: &ObjectKey) {
        self.backoff.reset(key);
    }

    /// Counts a failure by bounded category.
    pub fn count_failure(&self, category: &'static str) {
        self.metrics
            .reconcile_failures
            .get_or_create(&crate::metrics::CategoryLabels { category })
            .inc();
    }
}
