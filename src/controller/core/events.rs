//! Events: one Normal event per AEP side effect and a Warning per failure, published through
//! kube-runtime's `Recorder`, which caches what it published and folds a repeat into the event's
//! series instead of creating another. The Recorder tells repeats by object, reason and action,
//! not by note, so the action carries a digest of the note: an exact repeat becomes a series, and
//! a new note (another run's id, another error) a new event, never a series under an old text.
//! Publishing failures are logged, never fatal. Tests use [`Captured`] to see every event a step
//! publishes.

use std::sync::Mutex;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};

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

/// Events published to the API server.
pub struct RecorderSink(pub Recorder);

impl EventSink for RecorderSink {
    fn publish<'a>(
        &'a self,
        reference: &'a ObjectReference,
        type_: EventType,
        reason: EventReason,
        action: &'a str,
        note: String,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let ev = Event {
                type_,
                reason: reason.as_str().to_owned(),
                action: format!("{action}.{:08x}", digest(&note)),
                note: Some(note),
                secondary: None,
            };
            if let Err(e) = self.0.publish(&ev, reference).await {
                tracing::warn!(error = %e, reason = reason.as_str(), "Failed to publish event");
            }
        })
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
