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
        action: &'a str,
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
    queues: Vec<tokio::sync::mpsc::Sender<(ObjectReference, Event)>>,
    dropped: prometheus_client::metrics::counter::Counter,
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
                let (tx, mut rx) = tokio::sync::mpsc::channel::<(ObjectReference, Event)>(QUEUE);
                let (client, reporter) = (client.clone(), reporter.clone());
                tokio::spawn(async move {
                    let mut recorder = Recorder::new(client.clone(), reporter.clone());
                    let mut published = 0;
                    while let Some((reference, ev)) = rx.recv().await {
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
        action: &'a str,
        note: String,
    ) -> BoxFuture<'a, ()> {
        let ev = Event {
            type_,
            reason: reason.as_str().to_owned(),
            action: format!("{action}.{:08x}", digest(&note)),
            note: Some(note),
            secondary: None,
        };
        // One object's events through one worker, in order.
        let key = format!(
            "{}/{}",
            reference.namespace.as_deref().unwrap_or_default(),
            reference.name.as_deref().unwrap_or_default()
        );
        let worker = digest(&key) as usize % self.queues.len().max(1);
        if let Some(queue) = self.queues.get(worker)
            && queue.try_send((reference.clone(), ev)).is_err()
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
        action: &'a str,
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
    use super::digest;

    #[test]
    fn a_new_note_gets_a_new_action_and_a_repeat_the_same() {
        assert_eq!(digest("Started ingestion run r1"), digest("Started ingestion run r1"));
        assert_ne!(digest("Started ingestion run r1"), digest("Started ingestion run r2"));
    }
}
