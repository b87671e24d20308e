//! What every pass of every kind shares: the Kubernetes and AEP clients, the credentials cache,
//! the event sink, timing settings, per-object backoff, and metrics. Built once at start.
//!
//! In-memory state here is only a cache of what the API server says: this process's last write
//! per object (to skip a GET when the watch cache has not caught up with it yet) and the backoff
//! of failing objects. A restart loses them and changes no decision.

use std::{
    any::{Any, TypeId},
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use kube::{Resource, ResourceExt};

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
    /// This process's last write per object, by kind, while the cache does not show it.
    written: Mutex<HashMap<(TypeId, ObjectKey), Written>>,
    /// Per kind, the resourceVersion the watch cache holds for an object.
    caches: Mutex<HashMap<TypeId, CacheLookup>>,
}

type CacheLookup = Arc<dyn Fn(&ObjectKey) -> Option<String> + Send + Sync>;

/// What this process last wrote to one object.
struct Written {
    /// The resourceVersion our last write produced.
    rv: String,
    /// resourceVersions the object had before that write, each one older than `rv` (a write's
    /// answer is the whole object as it stands after every earlier write): a cached copy at one
    /// of them lags behind our write. Bounded.
    older: VecDeque<String>,
    /// Our last write's answer, trimmed like the cache. The whole entry goes once the cache
    /// shows that write, so answers are kept only while the watch lags.
    object: Arc<dyn Any + Send + Sync>,
}

/// How many earlier resourceVersions of one object are remembered as older than our last write.
const OLDER_KEPT: usize = 8;

/// What a pass can start from, given the cached copy and this process's last write.
pub enum Base<K> {
    /// This process knows no write of its own that the cache does not show (it wrote nothing
    /// since it started, or the cache has caught up with its last write).
    Unwritten,
    /// The cache holds our last write.
    Cached,
    /// The cache lags behind our last write, which is this object: as fresh as a read made when
    /// it was answered (a later write by someone else makes the pass's conditioned first write
    /// fail, as it would after a read).
    Ours(Arc<K>),
    /// The cache shows a version this process did not write and cannot place: read afresh.
    Unknown,
}

/// Drops what the cache keeps no use for: managed fields and kubectl's copy of the last applied
/// manifest, which would double each object's memory for nothing.
pub fn trim<K: Resource>(obj: &mut K) {
    const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
    obj.meta_mut().managed_fields = None;
    if let Some(a) = obj.meta_mut().annotations.as_mut() {
        a.remove(LAST_APPLIED);
    }
}

/// What the controller's queue needs of a changed object: the queue keys its entries (one per
/// object while it waits for its next pass, so thousands at scale) by a reference made from this
/// copy, and names the object by namespace and name only; the pass reads the cached object. The
/// uid and resourceVersion would be two more strings in each entry, kept for nothing.
pub fn bare_trigger<K: Resource>(mut obj: K) -> K {
    let meta = obj.meta_mut();
    meta.uid = None;
    meta.resource_version = None;
    obj
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
            caches: Mutex::default(),
        }
    }

    /// Tells where the watch cache of kind `K` stands, so that a write's answer is kept only
    /// while that cache lags behind it.
    pub fn cache_of<K: Resource + 'static>(
        &self,
        lookup: impl Fn(&ObjectKey) -> Option<String> + Send + Sync + 'static,
    ) {
        self.caches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(TypeId::of::<K>(), Arc::new(lookup));
    }

    /// Forgets what was kept about an object once it is gone.
    pub fn forget_object<K: 'static>(&self, key: &ObjectKey) {
        self.backoff.reset(key);
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(TypeId::of::<K>(), key.clone()));
    }

    /// Records our write's answer `updated`, made from the object at `base` (the
    /// resourceVersion the write started from).
    pub fn wrote<K>(&self, key: ObjectKey, base: Option<String>, updated: &K)
    where
        K: Resource + Clone + Send + Sync + 'static,
    {
        let Some(rv) = updated.resource_version() else {
            return;
        };
        let cached = self
            .caches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&TypeId::of::<K>())
            .cloned();
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        let key = (TypeId::of::<K>(), key);
        // Under the lock that `observed` takes after the cache has applied an event: either the
        // cache shows this write already, or `observed` will see the answer kept here.
        if cached.is_some_and(|c| c(&key.1).as_deref() == Some(rv.as_str())) {
            written.remove(&key);
            return;
        }
        let (previous, mut older) = written
            .remove(&key)
            .map_or_else(|| (None, VecDeque::new()), |w| (Some(w.rv), w.older));
        for known in [previous, base].into_iter().flatten() {
            if known != rv && !older.contains(&known) {
                if older.len() == OLDER_KEPT {
                    older.pop_front();
                }
                older.push_back(known);
            }
        }
        let mut kept = updated.clone();
        trim(&mut kept);
        written.insert(
            key,
            Written {
                rv,
                older,
                object: Arc::new(kept),
            },
        );
    }

    /// What the watch of kind `K` says to the answers kept for it: one the cache now shows goes
    /// ([`Context::observed`]), and so does any for an object that is gone.
    pub fn follow_watch<K: Resource + 'static, E>(&self, event: &Result<kube::runtime::watcher::Event<K>, E>) {
        use kube::runtime::watcher::Event;
        match event {
            Ok(Event::Apply(obj) | Event::InitApply(obj)) => self.observed(obj),
            Ok(Event::Delete(obj)) => self.forget_object::<K>(&(obj.namespace().unwrap_or_default(), obj.name_any())),
            _ => {}
        }
    }

    /// The watch cache now holds `obj`: if that is our last write, nothing about it is newer than
    /// the cache any more (the entry goes, and with it the kept answer).
    pub fn observed<K: Resource + 'static>(&self, obj: &K) {
        let (Some(ns), Some(rv)) = (obj.meta().namespace.clone(), obj.meta().resource_version.as_deref()) else {
            return;
        };
        let key = (TypeId::of::<K>(), (ns, obj.name_any()));
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        if written.get(&key).is_some_and(|w| w.rv == rv) {
            written.remove(&key);
        }
    }

    /// What a pass over the cached copy of `key` at `cached` can start from.
    pub fn base<K: Send + Sync + 'static>(&self, key: &ObjectKey, cached: Option<&str>) -> Base<K> {
        let key = (TypeId::of::<K>(), key.clone());
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        let Some(w) = written.get(&key) else {
            return Base::Unwritten;
        };
        let Some(cached) = cached else {
            return Base::Unknown;
        };
        if w.rv == cached {
            written.remove(&key);
            return Base::Cached;
        }
        if w.older.iter().any(|o| o == cached)
            && let Ok(obj) = w.object.clone().downcast::<K>()
        {
            return Base::Ours(obj);
        }
        Base::Unknown
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::Base;
    use crate::api::{AudienceActivation, ExternalAudience};

    fn at(rv: &str) -> ExternalAudience {
        let mut ea: ExternalAudience = serde_json::from_value(serde_json::json!({
            "apiVersion": "aep.audience-operator.dev/v1alpha1",
            "kind": "ExternalAudience",
            "metadata": {"name": "a", "namespace": "ns", "resourceVersion": rv,
                         "managedFields": [{"manager": "kubectl"}],
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "spec": {"name": "A", "credentialsSecretRef": {"name": "s"}, "sandbox": "prod",
                     "fields": [{"name": "ppid", "type": "string", "identityNs": "email"}],
                     "sourceSpec": {"path": "a/b.csv", "type": "file"}}
        }))
        .expect("object");
        ea.status = None;
        ea
    }

    fn key() -> crate::controller::keys::ObjectKey {
        ("ns".into(), "a".into())
    }

    fn base(ctx: &super::Context, cached: &str) -> &'static str {
        match ctx.base::<ExternalAudience>(&key(), Some(cached)) {
            Base::Unwritten => "unwritten",
            Base::Cached => "cached",
            Base::Ours(o) => {
                assert!(o.metadata.managed_fields.is_none(), "kept trimmed like the cache");
                assert!(o.annotations().is_empty(), "kept trimmed like the cache");
                match o.metadata.resource_version.as_deref() {
                    Some("3") => "ours@3",
                    Some("4") => "ours@4",
                    other => panic!("unexpected answer kept: {other:?}"),
                }
            }
            Base::Unknown => "unknown",
        }
    }

    use kube::ResourceExt;

    /// A context whose audience cache stands at the returned resourceVersion (tests move it).
    fn context_with_cache_at(rv: &str) -> (Arc<super::Context>, Arc<Mutex<String>>) {
        let (ctx, _) = super::super::testing::context(super::Timing::default());
        let cache = Arc::new(Mutex::new(rv.to_owned()));
        let c = cache.clone();
        ctx.cache_of::<ExternalAudience>(move |_| Some(c.lock().unwrap().clone()));
        (ctx, cache)
    }

    #[test]
    fn a_trigger_names_its_object_as_the_cache_does_without_uid_or_version() {
        use kube::runtime::reflector::ObjectRef;
        let mut ea = at("7");
        ea.metadata.uid = Some("6c1f0e1a-93a5-4a57-8f0e-2f1c8f1b2a10".into());
        let full = ObjectRef::from_obj(&ea);
        assert_eq!(full.extra.uid.as_deref(), Some("6c1f0e1a-93a5-4a57-8f0e-2f1c8f1b2a10"));
        assert_eq!(full.extra.resource_version.as_deref(), Some("7"));

        let bare = super::bare_trigger(ea.clone());
        let bare_ref = ObjectRef::from_obj(&bare);
        assert_eq!(bare_ref.extra.uid, None);
        assert_eq!(bare_ref.extra.resource_version, None);
        // The cache's key finds it: same namespace and name.
        let cache_keys = std::collections::HashSet::from([full]);
        assert!(
            cache_keys.contains(&bare_ref),
            "{bare_ref:?} not found among {cache_keys:?}"
        );
        // Nothing else changes.
        assert_eq!(bare.metadata.name, ea.metadata.name);
        assert_eq!(bare.metadata.namespace, ea.metadata.namespace);
        assert_eq!(
            serde_json::to_value(&bare.spec).unwrap(),
            serde_json::to_value(&ea.spec).unwrap()
        );
    }

    #[tokio::test]
    async fn a_cache_behind_only_our_own_writes_starts_from_our_last_answer() {
        let (ctx, _cache) = context_with_cache_at("2");
        assert_eq!(base(&ctx, "2"), "unwritten");
        // 2 → 3 → 4, both ours; the cache still shows 2.
        ctx.wrote(key(), Some("2".into()), &at("3"));
        ctx.wrote(key(), Some("3".into()), &at("4"));
        assert_eq!(base(&ctx, "2"), "ours@4");
        assert_eq!(base(&ctx, "3"), "ours@4");
        // Someone else's version (or one from before we knew the object): read afresh.
        assert_eq!(base(&ctx, "7"), "unknown");
        assert_eq!(base(&ctx, "1"), "unknown");
        // Another kind under the same name knows nothing of these writes.
        assert!(matches!(
            ctx.base::<AudienceActivation>(&key(), Some("2")),
            Base::Unwritten
        ));
        // An event for a version that is not our last write changes nothing.
        ctx.observed(&at("3"));
        assert_eq!(base(&ctx, "3"), "ours@4");
        // The watch catches up: nothing of ours is newer than the cache, nothing is kept.
        ctx.observed(&at("4"));
        assert_eq!(base(&ctx, "4"), "unwritten");
        assert!(ctx.written.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_answer_the_cache_already_holds_is_not_kept_and_a_gone_object_is_forgotten() {
        let (ctx, cache) = context_with_cache_at("3");
        // The watch delivered our write before its answer came back: nothing is kept.
        ctx.wrote(key(), Some("2".into()), &at("3"));
        assert!(ctx.written.lock().unwrap().is_empty());
        assert_eq!(base(&ctx, "3"), "unwritten");
        // The cache lags again: the next answer is kept, until a pass sees the cache hold it.
        ctx.wrote(key(), Some("3".into()), &at("4"));
        assert_eq!(base(&ctx, "3"), "ours@4");
        *cache.lock().unwrap() = "4".into();
        assert_eq!(base(&ctx, "4"), "cached");
        assert_eq!(base(&ctx, "4"), "unwritten");
        // An object that goes is forgotten.
        ctx.wrote(key(), Some("4".into()), &at("3"));
        ctx.forget_object::<ExternalAudience>(&key());
        assert!(ctx.written.lock().unwrap().is_empty());
    }
}
