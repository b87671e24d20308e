//! One reconcile pass over one object: the status it started from and the one it will write,
//! the one write path, events, and when to come back.
//!
//! Writes: the whole status is replaced with a JSON patch on `/status` (field manager
//! [`MANAGER`]). The first write of a pass, and every marker written before a non-idempotent AEP
//! call, is conditioned on the resourceVersion the pass decided from, so a stale base conflicts
//! ([`Error::Stale`]) instead of overwriting newer status or sending a call twice; later writes of
//! the same pass record what its own confirmed base led to. Nothing else writes status.

use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    ResourceExt,
    runtime::{controller::Action, events::EventType},
};
use serde_json::json;

use super::{
    Managed,
    backoff::jitter,
    context::Context,
    error::Error,
    verdict::{self, Phase},
};
use crate::{
    api::{EventReason, MANAGER, Reason},
    controller::{clock::now, keys::ObjectKey, seams::StatusApi},
    status::{Health, conditions_for},
};

/// When to come back after a pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Requeue after this long (jittered); the pass succeeded.
    After(Duration),
    /// The pass hit a transient error: per-object exponential backoff, at least `Retry-After`.
    Backoff(Option<Duration>),
    /// Nothing to do until the object (or its Secret) changes.
    Await,
    /// Requeue after exactly this long (a wait until a known time, e.g. the next run budget).
    Exactly(Duration),
}

/// An event to publish with a status change.
pub type Note = (EventType, EventReason, String);

/// What a step concluded.
#[derive(Debug)]
pub struct Outcome {
    /// The health to report; `None` means what the decider says about the status the step left.
    pub health: Option<Health>,
    pub next: Next,
    /// Record the (stalled) health as blocking this generation (`status.blocked`).
    pub block: bool,
    /// Published only when the status write changed something (no event storms).
    pub event: Option<Note>,
    /// The credentials were refused: read the Secret again next time.
    pub forget_credentials: bool,
}

impl Outcome {
    /// The step moved the state forward; the decider says what the new state shows.
    pub fn planned(next: Next) -> Self {
        Outcome {
            health: None,
            next,
            block: false,
            event: None,
            forget_credentials: false,
        }
    }

    /// The step ends with this health.
    pub fn with(health: Health, next: Next) -> Self {
        Outcome {
            health: Some(health),
            ..Outcome::planned(next)
        }
    }

    /// A problem only a change can resolve: Stalled, recorded for this generation, and a
    /// Warning event.
    pub fn blocked(reason: Reason, message: String, event: EventReason) -> Self {
        Outcome {
            health: Some(Health::stalled(reason, message.clone())),
            next: Next::Await,
            block: true,
            event: Some((EventType::Warning, event, message)),
            forget_credentials: false,
        }
    }

    /// With an event.
    pub fn note(mut self, type_: EventType, reason: EventReason, note: String) -> Self {
        self.event = Some((type_, reason, note));
        self
    }
}

/// One pass over one object of kind `K`.
pub struct Pass<'a, K: Managed> {
    pub ctx: &'a Context,
    pub api: &'a dyn StatusApi<K>,
    pub obj: &'a K,
    pub name: String,
    pub generation: i64,
    pub reference: ObjectReference,
    /// The status as this pass will write it.
    pub status: K::Status,
    /// The status as last read or written.
    pub original: K::Status,
    /// The object's latest resourceVersion known to this pass.
    pub rv: Option<String>,
    /// Whether the next status write is conditioned on `rv`: true for the first write of a pass
    /// (its base may be stale) and for markers; false for writes that record what our own
    /// confirmed base led to (facts that must not be dropped).
    pub conditioned: bool,
    /// What the pass is doing (the events' action).
    pub action: &'static str,
}

impl<'a, K: Managed> Pass<'a, K> {
    pub fn new(obj: &'a K, ctx: &'a Context, api: &'a dyn StatusApi<K>) -> Self {
        let status = obj.status().cloned().unwrap_or_default();
        Pass {
            ctx,
            api,
            obj,
            name: obj.name_any(),
            generation: obj.meta().generation.unwrap_or_default(),
            reference: obj.object_ref(&()),
            original: status.clone(),
            rv: obj.resource_version(),
            conditioned: true,
            status,
            action: "Reconcile",
        }
    }

    pub fn key(&self) -> ObjectKey {
        (self.obj.namespace().unwrap_or_default(), self.name.clone())
    }

    /// Sets the kstatus conditions (`Ready`, `Reconciling`, `Stalled`) for `health` and
    /// `observedGeneration`, keeping each condition's transition time while its status holds.
    /// Informational conditions are the kind's to add after.
    pub fn record_health(&mut self, health: &Health) {
        K::set_observed_generation(&mut self.status, self.generation);
        let conditions = conditions_for(health, self.generation, K::conditions(&self.original), &now());
        K::set_conditions(&mut self.status, conditions);
    }

    /// Whether anything in the status changed since it was read or last written.
    pub fn changed(&self) -> bool {
        self.status != self.original
    }

    /// Replaces the whole status. The first write of a pass is conditioned on the resourceVersion
    /// the pass decided from: a stale base conflicts ([`Error::Stale`]).
    pub async fn write_status(&mut self) -> Result<(), Error> {
        let mut ops = Vec::new();
        if self.conditioned {
            let rv = self.rv.as_deref().ok_or(Error::MissingResourceVersion)?;
            ops.push(json!({"op": "replace", "path": "/metadata/resourceVersion", "value": rv}));
        }
        ops.push(json!({"op": "add", "path": "/status", "value": self.status}));
        let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops)).map_err(Error::Serde)?;
        let updated = match self.api.patch_status(&self.name, MANAGER, patch).await {
            Ok(u) => u,
            Err(kube::Error::Api(s)) if s.code == 409 => {
                tracing::debug!("Status write conflicted; deciding again from a fresh copy");
                return Err(Error::Stale);
            }
            Err(e) => return Err(Error::Kube(e)),
        };
        self.conditioned = false;
        self.wrote(&updated);
        self.original = updated.status().cloned().unwrap_or_default();
        self.status = self.original.clone();
        Ok(())
    }

    /// Persists a pending marker before a non-idempotent call, conditioned on the object not
    /// having changed since it was read: [`Error::Stale`] when it had (the call is not made).
    pub async fn write_marker(&mut self) -> Result<(), Error> {
        self.conditioned = true;
        self.write_status().await
    }

    /// Sets (or removes) one annotation the controller keeps (a merge patch of that key).
    pub async fn write_annotation(&mut self, key: &str, value: Option<String>) -> Result<(), Error> {
        let updated = self
            .api
            .patch_annotation(&self.name, MANAGER, key, value)
            .await
            .map_err(Error::Kube)?;
        self.wrote(&updated);
        Ok(())
    }

    fn wrote(&mut self, updated: &K) {
        let base = std::mem::replace(&mut self.rv, updated.resource_version());
        self.ctx.wrote(self.key(), base, updated);
    }

    /// Publishes an event about the object.
    pub async fn publish(&self, (type_, reason, note): Note) {
        self.ctx
            .events
            .publish(&self.reference, type_, reason, self.action, note)
            .await;
    }

    /// What an AEP error means for this pass (the one table, [`verdict::verdict`]); logged and
    /// counted here.
    pub fn failure(&self, e: &crate::aep::Error, what: &str, phase: Phase) -> Outcome {
        tracing::warn!(call = e.call().as_str(), kind = e.kind().as_str(), status = ?e.status(), "AEP call failed");
        self.ctx.count_failure(e.category());
        verdict::verdict(e, what, phase, &self.ctx.timing)
    }

    /// The action that brings the object back: `next`, or `wake` when that is sooner (a
    /// scheduled time, an expiry check). A pass that did not fail forgets the object's backoff.
    pub fn requeue(&self, next: Next, wake: Option<Duration>) -> Action {
        let key = self.key();
        match next {
            Next::After(d) => {
                self.ctx.reset_backoff(&key);
                let d = jitter(d);
                Action::requeue(wake.map_or(d, |w| w.min(d)))
            }
            Next::Exactly(d) => {
                self.ctx.reset_backoff(&key);
                Action::requeue(wake.map_or(d, |w| w.min(d)))
            }
            Next::Backoff(retry_after) => Action::requeue(self.ctx.backoff(&key, retry_after)),
            Next::Await => {
                self.ctx.reset_backoff(&key);
                wake.map_or_else(Action::await_change, Action::requeue)
            }
        }
    }
}
