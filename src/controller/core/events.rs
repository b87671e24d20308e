//! Events: one Normal event per AEP side effect and a Warning per failure, published through
//! kube-runtime's `Recorder`, which caches what it published and folds a repeat into the event's
//! series instead of creating another. The Recorder tells repeats by object, reason and action,
//! not by note, so the action carries a digest of the note: an exact repeat becomes a series, and
//! a new note (another run's id, another error) a new event, never a series under an old text.
//! Publishing failures are logged, never fatal. Events are off the critical path: a pass hands
//! its event to a bounded queue and goes on; a few workers publish them, the events of one object
//! always through the same worker and so in order. A full queue drops the event (counted and
//! logged) rather than slow a pass down. Tests use [`Captured`] to see every event a step
//! publishes.
//!
//! The Recorder keeps every event it published for six minutes (about 3 KiB each, with its key)
//! and scans that cache on each publish. When thousands of objects converge at once that cache
//! was the largest single part of the operator's memory (11 MiB of 36 at 2,000 objects with 512
//! per worker), so each worker starts a new Recorder after [`SERIES_EVENTS`] events: a repeat
//! within that many of one worker's events still folds into its series; past it, it starts a new
//! event. Repeats are rare by design: a pass publishes only when its status write changed
//! something.
//!
//! While thousands of objects converge, thousands of events wait in the queues (about 1,300 per
//! 1,000 objects when the last one turns Ready). Each waits as a [`Queued`]: the object's
//! reference in one string and the note, about 300 bytes, where the `ObjectReference` and
//! `Event` the Recorder takes are about 800; those are built when the event's turn comes.

use std::sync::Mutex;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::api::EventReason;

/// Where events go.
pub trait EventSink: Send + Sync {
    /// Publishes one event about `reference`; `action` says what the controller was doing.
    fn publish<'a>(
        &'a self,
        reference: &'a ObjectReference,
        type_: EventType,
        reason: EventReason,
        action: &'static str,
        note: String,
    ) -> BoxFuture<'a, ()>;
}

/// Workers publishing events.
const WORKERS: usize = 8;
/// Events waiting per worker before new ones are dropped (about 1 KiB each).
const QUEUE: usize = 1024;
/// Events a worker's Recorder publishes (and caches) before the worker starts a new one.
pub const SERIES_EVENTS: usize = 32;

/// Events published to the API server by background workers.
pub struct RecorderSink {
    queues: Vec<tokio::sync::mpsc::Sender<Queued>>,
    dropped: prometheus_client::metrics::counter::Counter,
}

/// An event waiting for its worker, kept small (see the module doc).
struct Queued {
    /// The object's apiVersion, kind, namespace, name and uid, each followed by a NUL (which
    /// none of them can hold).
    regarding: Box<str>,
    type_: EventType,
    reason: EventReason,
    action: &'static str,
    note: Box<str>,
}

impl Queued {
    fn new(
        reference: &ObjectReference,
        type_: EventType,
        reason: EventReason,
        action: &'static str,
        note: String,
    ) -> Queued {
        let mut regarding = String::new();
        for part in [
            &reference.api_version,
            &reference.kind,
            &reference.namespace,
            &reference.name,
            &reference.uid,
        ] {
            regarding.push_str(part.as_deref().unwrap_or_default());
            regarding.push('\0');
        }
        Queued {
            regarding: regarding.into_boxed_str(),
            type_,
            reason,
            action,
            note: note.into_boxed_str(),
        }
    }

    /// The object's key in [`RecorderSink`]'s choice of worker: namespace and name.
    fn object_key(&self) -> &str {
        let mut ends = self.regarding.match_indices('\0').map(|(i, _)| i);
        let start = ends.nth(1).map_or(0, |i| i + 1);
        let end = ends.nth(1).unwrap_or(self.regarding.len());
        &self.regarding[start..end]
    }

    /// The reference and the event the Recorder publishes.
    fn into_event(self) -> (ObjectReference, Event) {
        let mut parts = self
            .regarding
            .split('\0')
            .map(|p| (!p.is_empty()).then(|| p.to_owned()));
        let mut next = || parts.next().flatten();
        let reference = ObjectReference {
            api_version: next(),
            kind: next(),
            namespace: next(),
            name: next(),
            uid: next(),
            ..ObjectReference::default()
        };
        let note = String::from(self.note);
        let event = Event {
            type_: self.type_,
            reason: self.reason.as_str().to_owned(),
            action: format!("{}.{:08x}", self.action, digest(&note)),
            note: Some(note),
            secondary: None,
        };
        (reference, event)
    }
}

impl RecorderSink {
    /// Starts the workers (on the current Tokio runtime); `dropped` counts the events a full
    /// queue refused.
    pub fn spawn(
        client: kube::Client,
        reporter: Reporter,
        dropped: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        let queues = (0..WORKERS)
            .map(|_| {
                let (tx, mut rx) = tokio::sync::mpsc::channel::<Queued>(QUEUE);
                let (client, reporter) = (client.clone(), reporter.clone());
                tokio::spawn(async move {
                    let mut recorder = Recorder::new(client.clone(), reporter.clone());
                    let mut published = 0;
                    while let Some(queued) = rx.recv().await {
                        let (reference, ev) = queued.into_event();
                        if published == SERIES_EVENTS {
                            recorder = Recorder::new(client.clone(), reporter.clone());
                            published = 0;
                        }
                        published += 1;
                        if let Err(e) = recorder.publish(&ev, &reference).await {
                            tracing::warn!(error = %e, reason = %ev.reason, "Failed to publish event");
                        }
                    }
                });
                tx
            })
            .collect();
        RecorderSink { queues, dropped }
    }
}

impl EventSink for RecorderSink {
    fn publish<'a>(
        &'a self,
        reference: &'a ObjectReference,
        type_: EventType,
        reason: EventReason,
        action: &'static str,
        note: String,
    ) -> BoxFuture<'a, ()> {
        let queued = Queued::new(reference, type_, reason, action, note);
        // One object's events through one worker, in order.
        let worker = digest(queued.object_key()) as usize % self.queues.len().max(1);
        if let Some(queue) = self.queues.get(worker)
            && queue.try_send(queued).is_err()
        {
            let n = self.dropped.inc() + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n,
                    reason = reason.as_str(),
                    "Event queue full: events dropped"
                );
            }
        }
        Box::pin(async {})
    }
}

/// A short digest of an event's note (FNV-1a, folded to 32 bits).
fn digest(note: &str) -> u32 {
    let h = note.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (h ^ (h >> 32)) as u32
}

/// One captured event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapturedEvent {
    pub object: String,
    pub type_: EventType,
    pub reason: EventReason,
    pub action: String,
    pub note: String,
}

/// Events kept in memory (for tests).
#[derive(Default)]
pub struct Captured(pub Mutex<Vec<CapturedEvent>>);

impl Captured {
    /// Every event so far.
    pub fn all(&self) -> Vec<CapturedEvent> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl EventSink for Captured {
    fn publish<'a>(
        &'a self,
        reference: &'a ObjectReference,
        type_: EventType,
        reason: EventReason,
        action: &'static str,
        note: String,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).push(CapturedEvent {
                object: reference.name.clone().unwrap_or_default(),
                type_,
                reason,
                action: action.to_owned(),
                note,
            });
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{EventReason, EventType, ObjectReference, Queued, digest};

    #[test]
    fn a_queued_event_becomes_the_event_and_reference_it_was_published_with() {
        let reference = ObjectReference {
            api_version: Some("aep.audience-operator.dev/v1alpha1".into()),
            kind: Some("ExternalAudience".into()),
            namespace: Some("marketing".into()),
            name: Some("loyalty-members".into()),
            uid: Some("0b1c7a52-8f0e-4c3b-9d61-3f2a6f4d2e10".into()),
            resource_version: Some("4711".into()),
            field_path: None,
        };
        let note = "Started ingestion run r1".to_owned();
        let queued = Queued::new(
            &reference,
            EventType::Normal,
            EventReason::IngestionStarted,
            "Reconcile",
            note.clone(),
        );
        assert_eq!(queued.object_key(), "marketing\0loyalty-members");
        let (got, event) = queued.into_event();
        // Everything but the version it was published at, which an event does not need.
        assert_eq!(
            got,
            ObjectReference {
                resource_version: None,
                ..reference
            }
        );
        assert_eq!(event.type_, EventType::Normal);
        assert_eq!(event.reason, "IngestionStarted");
        assert_eq!(event.action, format!("Reconcile.{:08x}", digest(&note)));
        assert_eq!(event.note.as_deref(), Some(note.as_str()));
        assert!(event.secondary.is_none());

        // Parts the reference lacks stay absent.
        let bare = ObjectReference {
            name: Some("n".into()),
            ..ObjectReference::default()
        };
        let queued = Queued::new(
            &bare,
            EventType::Warning,
            EventReason::IngestionFailed,
            "Delete",
            String::new(),
        );
        assert_eq!(queued.object_key(), "\0n");
        assert_eq!(queued.into_event().0, bare);
    }

    #[test]
    fn a_new_note_gets_a_new_action_and_a_repeat_the_same() {
        assert_eq!(digest("Started ingestion run r1"), digest("Started ingestion run r1"));
        assert_ne!(digest("Started ingestion run r1"), digest("Started ingestion run r2"));
    }
}
