//! What the operator watches: every namespace, or a list of namespaces, as one event stream per
//! kind feeding one cache (so the claims index, which keeps at most one object per audience, sees
//! every watched object in one process).
//!
//! A list of namespaces is one watch per namespace, merged. kube-runtime's reflector replaces its
//! whole store at each `InitDone`, so the per-namespace lists cannot be passed through as they
//! come: namespace B finishing its list would drop namespace A's objects. [`Merge`] turns them
//! into the events of one watch instead: one `Init` and one `InitDone` once every namespace has
//! listed; later, a namespace that lists again (its watch expired or failed) becomes `Apply` for
//! what it lists and `Delete` for what it no longer holds. [`Merge`] is pure; [`watch`] runs it.

use std::collections::{HashSet, VecDeque};

use futures::{StreamExt, stream::BoxStream};
use kube::{
    Api, Client, Resource,
    runtime::{
        WatchStreamExt,
        reflector::{ObjectRef, Store},
        watcher::{self, Event},
    },
};

/// The namespaces the operator watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace (a ClusterRole).
    All,
    /// These namespaces, at least one, each once (Roles in each).
    Namespaces(Vec<String>),
}

impl Scope {
    /// The scope of `--namespace` values: all namespaces when there are none; duplicates once.
    pub fn of(namespaces: &[String]) -> Scope {
        let mut seen = HashSet::new();
        let list: Vec<String> = namespaces.iter().filter(|ns| seen.insert(*ns)).cloned().collect();
        if list.is_empty() {
            Scope::All
        } else {
            Scope::Namespaces(list)
        }
    }

    /// One API per watched namespace, or the cluster-wide one.
    pub fn apis<K>(&self, client: &Client) -> Vec<Api<K>>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match self {
            Scope::All => vec![Api::all(client.clone())],
            Scope::Namespaces(list) => list.iter().map(|ns| Api::namespaced(client.clone(), ns)).collect(),
        }
    }
}

/// A namespaced kind a watch can follow.
pub trait Watchable:
    Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<K> Watchable for K where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// An event of the merged stream: a watch event, or the deletion of an object the cache holds
/// (the merged stream reads it from the cache when its turn comes, since `Delete` carries it).
#[derive(Debug)]
pub enum Out<K> {
    Event(Event<K>),
    Deleted { namespace: String, name: String },
}

/// Per namespace: the names it holds, and those of a list in progress.
#[derive(Default)]
struct Namespace {
    holds: HashSet<String>,
    listing: Option<HashSet<String>>,
    listed_once: bool,
}

/// Merges the watches of several namespaces into the events of one watch (see the module doc).
pub struct Merge {
    namespaces: Vec<Namespace>,
    /// Whether the merged `InitDone` was sent (every namespace listed once).
    synced: bool,
    /// Before that: objects gone from a namespace while the first lists ran, deleted once the
    /// cache holds the lists.
    stale: HashSet<(usize, String)>,
    names: Vec<String>,
}

impl Merge {
    pub fn new(namespaces: Vec<String>) -> Merge {
        Merge {
            namespaces: namespaces.iter().map(|_| Namespace::default()).collect(),
            synced: false,
            stale: HashSet::new(),
            names: namespaces,
        }
    }

    /// The events that start the merged stream.
    pub fn start<K>(&self) -> Vec<Out<K>> {
        vec![Out::Event(Event::Init)]
    }

    /// The merged events for event `event` of the watch of namespace number `ns`.
    pub fn on<K: Resource>(&mut self, ns: usize, event: Event<K>) -> Vec<Out<K>> {
        let synced = self.synced;
        let state = &mut self.namespaces[ns];
        match event {
            Event::Init => {
                state.listing = Some(HashSet::new());
                Vec::new()
            }
            Event::InitApply(obj) | Event::Apply(obj) => {
                let name = obj.meta().name.clone().unwrap_or_default();
                match &mut state.listing {
                    Some(listing) => {
                        listing.insert(name.clone());
                    }
                    None => {
                        state.holds.insert(name.clone());
                    }
                }
                if synced {
                    vec![Out::Event(Event::Apply(obj))]
                } else {
                    // Until the merged InitDone, everything goes into the reflector's list buffer
                    // (an Apply would go to the store, which InitDone then replaces).
                    self.stale.remove(&(ns, name));
                    vec![Out::Event(Event::InitApply(obj))]
                }
            }
            Event::Delete(obj) => {
                let name = obj.meta().name.clone().unwrap_or_default();
                state.holds.remove(&name);
                if let Some(listing) = &mut state.listing {
                    listing.remove(&name);
                }
                if synced {
                    vec![Out::Event(Event::Delete(obj))]
                } else {
                    self.stale.insert((ns, name));
                    Vec::new()
                }
            }
            Event::InitDone => {
                let listed = state.listing.take().unwrap_or_default();
                let gone: Vec<String> = state.holds.difference(&listed).cloned().collect();
                state.holds = listed;
                state.listed_once = true;
                let namespace = self.names[ns].clone();
                if synced {
                    return gone
                        .into_iter()
                        .map(|name| Out::Deleted {
                            namespace: namespace.clone(),
                            name,
                        })
                        .collect();
                }
                self.stale.extend(gone.into_iter().map(|name| (ns, name)));
                if !self.namespaces.iter().all(|n| n.listed_once) {
                    return Vec::new();
                }
                self.synced = true;
                let mut out = vec![Out::Event(Event::InitDone)];
                let mut stale: Vec<_> = self.stale.drain().collect();
                stale.sort();
                out.extend(stale.into_iter().map(|(ns, name)| Out::Deleted {
                    namespace: self.names[ns].clone(),
                    name,
                }));
                out
            }
        }
    }
}

/// The events of kind `K` in `scope`, each namespace's watch with kube-runtime's default backoff.
/// `cache` is the store the stream is reflected into (a deletion found by a new list is read
/// from it, when its turn comes, so nothing is kept twice).
pub fn watch<K>(
    client: &Client,
    scope: &Scope,
    config: watcher::Config,
    cache: Store<K>,
) -> BoxStream<'static, Result<Event<K>, watcher::Error>>
where
    K: Watchable,
{
    let mut apis = scope.apis::<K>(client);
    // Every namespace, or one: a single watch, as kube-runtime gives it.
    let list = match scope {
        Scope::Namespaces(list) if list.len() > 1 => list.clone(),
        _ => return watcher::watcher(apis.remove(0), config).default_backoff().boxed(),
    };
    let merged = futures::stream::select_all(apis.into_iter().enumerate().map(|(i, api)| {
        watcher::watcher(api, config.clone())
            .default_backoff()
            .map(move |event| (i, event))
            .boxed()
    }));
    let merge = Merge::new(list);
    let pending: VecDeque<Result<Out<K>, watcher::Error>> = merge.start().into_iter().map(Ok).collect();
    futures::stream::unfold(
        (merged, merge, pending, cache),
        |(mut merged, mut merge, mut pending, cache)| async move {
            loop {
                if let Some(next) = pending.pop_front() {
                    let event = match next {
                        Ok(Out::Event(event)) => Ok(event),
                        Ok(Out::Deleted { namespace, name }) => {
                            // Read when its turn comes: the events before it are in the cache.
                            match cache.get(&ObjectRef::new(&name).within(&namespace)) {
                                Some(obj) => Ok(Event::Delete((*obj).clone())),
                                None => continue,
                            }
                        }
                        Err(e) => Err(e),
                    };
                    return Some((event, (merged, merge, pending, cache)));
                }
                let (ns, event) = merged.next().await?;
                match event {
                    Ok(event) => pending.extend(merge.on(ns, event).into_iter().map(Ok)),
                    Err(e) => pending.push_back(Err(e)),
                }
            }
        },
    )
    .boxed()
}

/// The objects of kind `K` that change in `scope` (no cache: every namespace's watch as it comes).
pub fn touched<K>(
    client: &Client,
    scope: &Scope,
    config: watcher::Config,
) -> BoxStream<'static, Result<K, watcher::Error>>
where
    K: Watchable,
{
    futures::stream::select_all(scope.apis::<K>(client).into_iter().map(|api| {
        watcher::watcher(api, config.clone())
            .default_backoff()
            .touched_objects()
            .boxed()
    }))
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::ResourceExt;

    fn cm(name: &str) -> ConfigMap {
        let mut c = ConfigMap::default();
        c.metadata.name = Some(name.to_owned());
        c
    }

    /// The merged events as short strings: `init`, `apply a`, `initapply a`, `delete a`, `done`,
    /// `deleted ns/a`.
    fn show(out: Vec<Out<ConfigMap>>) -> Vec<String> {
        out.into_iter()
            .map(|o| match o {
                Out::Event(Event::Init) => "init".to_owned(),
                Out::Event(Event::InitDone) => "done".to_owned(),
                Out::Event(Event::InitApply(c)) => format!("initapply {}", c.name_any()),
                Out::Event(Event::Apply(c)) => format!("apply {}", c.name_any()),
                Out::Event(Event::Delete(c)) => format!("delete {}", c.name_any()),
                Out::Deleted { namespace, name } => format!("deleted {namespace}/{name}"),
            })
            .collect()
    }

    fn merge() -> Merge {
        Merge::new(vec!["a".to_owned(), "b".to_owned()])
    }

    #[test]
    fn scope_of_no_namespace_is_all_and_duplicates_count_once() {
        assert_eq!(Scope::of(&[]), Scope::All);
        let list = ["x", "y", "x"].map(str::to_owned);
        assert_eq!(
            Scope::of(&list),
            Scope::Namespaces(vec!["x".to_owned(), "y".to_owned()])
        );
    }

    #[test]
    fn one_init_and_one_init_done_once_every_namespace_has_listed() {
        let mut m = merge();
        assert_eq!(show(m.start()), ["init"]);
        assert!(m.on::<ConfigMap>(0, Event::Init).is_empty());
        assert_eq!(show(m.on(0, Event::InitApply(cm("a1")))), ["initapply a1"]);
        assert!(
            show(m.on::<ConfigMap>(0, Event::InitDone)).is_empty(),
            "b has not listed yet"
        );
        // A change in `a` while `b` lists goes to the list buffer, not to the store that the
        // merged InitDone replaces.
        assert_eq!(show(m.on(0, Event::Apply(cm("a2")))), ["initapply a2"]);
        assert!(m.on::<ConfigMap>(1, Event::Init).is_empty());
        assert_eq!(show(m.on(1, Event::InitApply(cm("b1")))), ["initapply b1"]);
        assert_eq!(show(m.on::<ConfigMap>(1, Event::InitDone)), ["done"]);
        // Then watch events pass through.
        assert_eq!(show(m.on(1, Event::Apply(cm("b2")))), ["apply b2"]);
        assert_eq!(show(m.on(0, Event::Delete(cm("a1")))), ["delete a1"]);
    }

    #[test]
    fn a_namespace_listing_again_applies_what_it_lists_and_deletes_what_it_no_longer_holds() {
        let mut m = merge();
        for (ns, name) in [(0, "a1"), (1, "b1")] {
            m.on::<ConfigMap>(ns, Event::Init);
            m.on(ns, Event::InitApply(cm(name)));
        }
        m.on(0, Event::Apply(cm("a2")));
        m.on::<ConfigMap>(0, Event::InitDone);
        assert_eq!(show(m.on::<ConfigMap>(1, Event::InitDone)), ["done"]);
        // `a` lists again (its watch expired): a1 is gone, a2 stays, a3 is new.
        assert!(m.on::<ConfigMap>(0, Event::Init).is_empty());
        assert_eq!(show(m.on(0, Event::InitApply(cm("a2")))), ["apply a2"]);
        assert_eq!(show(m.on(0, Event::InitApply(cm("a3")))), ["apply a3"]);
        assert_eq!(show(m.on::<ConfigMap>(0, Event::InitDone)), ["deleted a/a1"]);
        // `b`'s objects are untouched by `a`'s list.
        assert!(show(m.on::<ConfigMap>(1, Event::Init)).is_empty());
        assert_eq!(show(m.on(1, Event::InitApply(cm("b1")))), ["apply b1"]);
        assert!(show(m.on::<ConfigMap>(1, Event::InitDone)).is_empty());
    }

    #[test]
    fn objects_gone_before_every_namespace_listed_are_deleted_after_the_merged_init_done() {
        let mut m = merge();
        m.on::<ConfigMap>(0, Event::Init);
        m.on(0, Event::InitApply(cm("a1")));
        m.on(0, Event::InitApply(cm("a2")));
        m.on::<ConfigMap>(0, Event::InitDone);
        // While `b` lists: a1 is deleted, `a` lists again without a2, and a1 comes back.
        assert!(m.on(0, Event::Delete(cm("a1"))).is_empty());
        m.on::<ConfigMap>(0, Event::Init);
        assert_eq!(show(m.on(0, Event::InitApply(cm("a1")))), ["initapply a1"]);
        m.on::<ConfigMap>(0, Event::InitDone);
        m.on::<ConfigMap>(1, Event::Init);
        assert_eq!(show(m.on::<ConfigMap>(1, Event::InitDone)), ["done", "deleted a/a2"]);
    }
}
