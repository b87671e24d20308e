//! AEP reads shared by many objects: one read of a destination dataflow and one list of its
//! export runs per dataflow per poll interval, one list of segmentation jobs per (org, sandbox)
//! per poll interval, and the paged list of a sandbox's audiences that drift checks read,
//! whatever the number of objects that ask. Single flight: objects
//! that ask at once wait for the one read in flight.
//!
//! The dataflow's slot is also its write lock: a change to a dataflow is decided from a read taken
//! under the lock and sent before the lock is released, then the slot is emptied (the next reader
//! reads again). Changes from this process never race each other; changes from elsewhere (a human
//! in the UI) are caught by the etag the change is conditioned on.
//!
//! Only a cache of what AEP says: a restart loses it and changes no decision.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::{Mutex as AsyncMutex, MutexGuard};

use crate::aep::{Error, ErrorKind, Flow, FlowRun, SegmentJob, error::Call};

/// Where a dataflow or a sandbox lives: (IMS org, AEP endpoint, sandbox).
pub type Endpoint = (String, String, String);

/// How long a failed read is kept when the failure may pass on its own (429, 5xx, network).
const TRANSIENT_ERROR_TTL: Duration = Duration::from_secs(2);
/// Entries past this many are pruned of those not read for a while.
const PRUNE_ABOVE: usize = 4096;

/// A failure as kept: enough to give every asker the same error.
#[derive(Clone, Debug)]
struct Failure {
    call: Call,
    kind: ErrorKind,
    message: String,
}

impl Failure {
    fn of(e: &Error) -> Self {
        Failure {
            call: e.call(),
            kind: e.kind(),
            message: e.message().to_owned(),
        }
    }

    fn error(&self) -> Error {
        Error::synthetic(self.call, self.kind, self.message.clone())
    }

    fn ttl(&self, max_age: Duration) -> Duration {
        match self.kind {
            ErrorKind::Retryable { .. } | ErrorKind::OutcomeUnknown => max_age.min(TRANSIENT_ERROR_TTL),
            _ => max_age,
        }
    }
}

/// One cached answer: when it was read, and what it was.
pub struct Slot<T> {
    value: Option<(Instant, Result<Arc<T>, Failure>)>,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot { value: None }
    }
}

impl<T> Slot<T> {
    /// The answer if it is younger than `max_age` (a failure: younger than its own TTL).
    fn fresh(&self, max_age: Duration) -> Option<Result<Arc<T>, Error>> {
        let (at, value) = self.value.as_ref()?;
        let ttl = match value {
            Ok(_) => max_age,
            Err(f) => f.ttl(max_age),
        };
        (at.elapsed() < ttl).then(|| value.clone().map_err(|f| f.error()))
    }

    /// The cached answer when fresh enough, else the answer of `read` (kept for the others).
    pub async fn get<F, Fut>(&mut self, max_age: Duration, read: F) -> Result<Arc<T>, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        if let Some(value) = self.fresh(max_age) {
            return value;
        }
        let answer = read().await.map(Arc::new);
        self.value = Some((Instant::now(), answer.as_ref().map(Arc::clone).map_err(Failure::of)));
        answer
    }

    /// Forgets the answer: the next asker reads again.
    pub fn invalidate(&mut self) {
        self.value = None;
    }

    fn read_within(&self, age: Duration) -> bool {
        self.value.as_ref().is_some_and(|(at, _)| at.elapsed() < age)
    }
}

/// The reads of one dataflow.
#[derive(Default)]
pub struct FlowEntry {
    /// The dataflow (and the lock its changes are made under).
    pub flow: AsyncMutex<Slot<Flow>>,
    /// Its export runs, newest first.
    pub runs: AsyncMutex<Slot<Vec<FlowRun>>>,
}

impl FlowEntry {
    /// Takes the dataflow's lock (to read it, or to change it from what a read under the lock
    /// shows).
    pub async fn lock(&self) -> MutexGuard<'_, Slot<Flow>> {
        self.flow.lock().await
    }
}

/// The entries of dataflows by (endpoint, dataflow id), with when each was last asked for.
type FlowEntries = HashMap<(Endpoint, String), (Instant, Arc<FlowEntry>)>;

/// One shared answer per endpoint (org, AEP endpoint, sandbox).
pub struct PerEndpoint<T> {
    slots: Mutex<HashMap<Endpoint, Arc<AsyncMutex<Slot<T>>>>>,
}

impl<T> Default for PerEndpoint<T> {
    fn default() -> Self {
        PerEndpoint {
            slots: Mutex::default(),
        }
    }
}

impl<T> PerEndpoint<T> {
    /// The answer for `endpoint` when younger than `max_age`, else `read`'s (single flight).
    pub async fn get<F, Fut>(&self, endpoint: &Endpoint, max_age: Duration, read: F) -> Result<Arc<T>, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            if slots.len() > PRUNE_ABOVE {
                slots.retain(|_, slot| {
                    slot.try_lock()
                        .map_or(true, |s| s.read_within(Duration::from_secs(3600)))
                });
            }
            slots.entry(endpoint.clone()).or_default().clone()
        };
        let mut slot = slot.lock().await;
        slot.get(max_age, read).await
    }
}

/// The shared reads of the process.
#[derive(Default)]
pub struct Reads {
    flows: Mutex<FlowEntries>,
    /// Succeeded segmentation jobs of each sandbox, newest first.
    pub jobs: PerEndpoint<Vec<SegmentJob>>,
    /// The audiences the plain list of each sandbox returns: by id, the digest of what a drift
    /// check compares ([`drift_digest`]), not the audiences (a sandbox of thousands is read into
    /// memory at once); `None` for a sandbox whose list is longer than reading its managed
    /// audiences one by one.
    pub audiences: PerEndpoint<Option<HashMap<String, u64>>>,
}

/// A digest of what a drift check compares: the description and the labels (in any order).
pub fn drift_digest(description: Option<&str>, labels: &[String]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut sorted: Vec<&String> = labels.iter().collect();
    sorted.sort();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    description.unwrap_or_default().hash(&mut h);
    sorted.hash(&mut h);
    h.finish()
}

impl Reads {
    /// The entry of dataflow `flow_id` at `endpoint`.
    pub fn flow(&self, endpoint: &Endpoint, flow_id: &str) -> Arc<FlowEntry> {
        let mut flows = self.flows.lock().unwrap_or_else(|p| p.into_inner());
        if flows.len() > PRUNE_ABOVE {
            // Dataflows no object asked about for an hour (ids come from tenants: keep it bounded).
            flows.retain(|_, (at, entry)| at.elapsed() < Duration::from_secs(3600) || Arc::strong_count(entry) > 1);
        }
        let slot = flows
            .entry((endpoint.clone(), flow_id.to_owned()))
            .or_insert_with(|| (Instant::now(), Arc::default()));
        slot.0 = Instant::now();
        slot.1.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn endpoint() -> Endpoint {
        ("org".into(), "https://aep".into(), "prod".into())
    }

    #[tokio::test]
    async fn concurrent_askers_share_one_read_per_interval() {
        let reads = Arc::new(Reads::default());
        let count = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (reads, count) = (reads.clone(), count.clone());
            tasks.push(tokio::spawn(async move {
                let entry = reads.flow(&endpoint(), "flow-1");
                let mut slot = entry.lock().await;
                slot.get(Duration::from_secs(60), || async {
                    count.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok(Flow::default())
                })
                .await
                .map(|_| ())
            }));
        }
        for t in tasks {
            t.await.expect("task").expect("read");
        }
        assert_eq!(count.load(Ordering::SeqCst), 1, "one read for 20 askers");
        let entry = reads.flow(&endpoint(), "flow-1");
        entry.lock().await.invalidate();
        let mut slot = entry.lock().await;
        slot.get(Duration::from_secs(60), || async {
            count.fetch_add(1, Ordering::SeqCst);
            Ok(Flow::default())
        })
        .await
        .expect("read");
        assert_eq!(count.load(Ordering::SeqCst), 2, "an invalidated slot reads again");
    }

    #[tokio::test]
    async fn a_failure_is_shared_and_a_transient_one_briefly() {
        let mut slot: Slot<Flow> = Slot::default();
        let not_found = slot
            .get(Duration::from_secs(60), || async {
                Err(Error::synthetic(Call::GetFlow, ErrorKind::NotFound, "flows not found"))
            })
            .await;
        assert_eq!(not_found.err().map(|e| e.kind()), Some(ErrorKind::NotFound));
        let again = slot
            .get(Duration::from_secs(60), || async { Ok(Flow::default()) })
            .await;
        assert!(again.is_err(), "the kept failure answers within the interval");
        let mut slot: Slot<Flow> = Slot::default();
        let _ = slot
            .get(Duration::from_secs(60), || async {
                Err(Error::synthetic(
                    Call::GetFlow,
                    ErrorKind::Retryable { retry_after: None },
                    "503",
                ))
            })
            .await;
        assert!(slot.fresh(Duration::from_secs(60)).is_some());
        assert!(
            Failure::of(&Error::synthetic(
                Call::GetFlow,
                ErrorKind::Retryable { retry_after: None },
                "x"
            ))
            .ttl(Duration::from_secs(60))
                <= TRANSIENT_ERROR_TTL
        );
    }
}
