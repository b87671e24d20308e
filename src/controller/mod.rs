//! The controllers: wiring of kube-runtime `Controller`s for each kind on the managed-resource
//! core, and the startup checks.
//!
//! Layout (imports go one way: `audience` → `core` → the leaf modules; nothing imports this file):
//! * [`core`]: the mechanisms every kind shares (a pass, the one status write path, the error
//!   table, events, backoff, the finalizer);
//! * [`audience`]: the `ExternalAudience` kind (its pure decider, its steps);
//! * leaf modules of pure domain logic: [`budget`], [`claims`], [`schedule`], [`expiry`],
//!   [`clock`], [`keys`]; and the I/O seams: [`credentials`] (Secrets), [`seams`] (AEP calls and
//!   status writes behind traits).

pub mod activation;
pub mod audience;
pub mod budget;
pub mod claims;
pub mod clock;
pub mod core;
pub mod credentials;
pub mod expiry;
pub mod keys;
pub mod reads;
pub mod schedule;
pub mod seams;
pub mod watch;

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Client, ResourceExt,
    api::{ListParams, PartialObjectMeta},
    runtime::{
        Controller, Predicate, PredicateConfig, WatchStreamExt,
        events::Reporter,
        predicates,
        reflector::{self, ObjectRef},
        watcher,
    },
};

pub use self::core::{Context, Error, Timing};
pub use credentials::CredentialStore;

use crate::{
    aep::{AepClient, ClientConfig},
    api::{AudienceActivation, ConditionType, ExternalAudience, MANAGER, OWNERSHIP_RECORD},
    config::RunConfig,
    health::Health,
    metrics::Metrics,
};

/// Whether the object is being deleted (kube ships no predicate for it).
fn deletion(obj: &ExternalAudience) -> Option<u64> {
    Some(u64::from(obj.metadata.deletion_timestamp.is_some()))
}

/// The annotations a pass reacts to: all but the ownership record, which the controller itself
/// writes after its status (it is read back only after a restore, when there is no status).
fn user_annotations(obj: &ExternalAudience) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    obj.annotations()
        .iter()
        .filter(|(k, _)| k.as_str() != OWNERSHIP_RECORD)
        .for_each(|kv| kv.hash(&mut hasher));
    Some(hasher.finish())
}

/// What a pass must react to: the spec (generation), annotations (run requests, pause, resync
/// interval, retry-create), finalizers and deletion — not status, not the ownership record.
pub fn triggers() -> impl Predicate<ExternalAudience> + Clone {
    predicates::generation
        .combine(user_annotations)
        .combine(predicates::finalizers)
        .combine(deletion)
}

/// Fails with a hint when a CRD is not installed or not readable in a watched namespace (the
/// controller never installs them).
pub async fn check_crd(client: &Client, scope: &watch::Scope) -> Result<(), Error> {
    readable::<ExternalAudience>(client, scope).await?;
    readable::<AudienceActivation>(client, scope).await
}

/// Lists one object of kind `K` in each watched namespace (or cluster-wide).
async fn readable<K: watch::Watchable>(client: &Client, scope: &watch::Scope) -> Result<(), Error> {
    for api in scope.apis::<K>(client) {
        api.list_metadata(&ListParams::default().limit(1))
            .await
            .map_err(Error::Kube)?;
    }
    Ok(())
}

/// The resourceVersion `store` holds for an object.
fn cached_version<K>(store: reflector::Store<K>) -> impl Fn(&keys::ObjectKey) -> Option<String> + Send + Sync + 'static
where
    K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    move |(ns, name)| store.get(&ObjectRef::new(name).within(ns))?.resource_version()
}

/// Whether an AudienceActivation is being deleted.
fn activation_deletion(obj: &AudienceActivation) -> bool {
    obj.metadata.deletion_timestamp.is_some()
}

/// Builds the shared context and runs the controllers until a shutdown signal. AEP requests are
/// sent only while `fence` is open (with leader election: while this replica provably leads).
pub async fn run(
    cfg: RunConfig,
    client: Client,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    fence: crate::leader::Fence,
) -> Result<(), Error> {
    let observer = metrics.clone();
    let ca_pem = match &cfg.aep_ca_file {
        Some(path) => Some(std::fs::read(path).map_err(|e| Error::Config(format!("reading {}: {e}", path.display())))?),
        None => None,
    };
    let aep = AepClient::new(ClientConfig {
        platform_url: cfg.aep_platform_url.clone(),
        ims_url: cfg.aep_ims_url.clone(),
        request_timeout: cfg.aep_request_timeout,
        requests_per_second: cfg.aep_requests_per_second,
        allowed_endpoints: cfg.allowed_endpoints.clone(),
        ca_pem,
        ..ClientConfig::default()
    })
    .map_err(|e| Error::Aep(Box::new(e)))?
    .with_observer(move |ev| observer.observe_aep(ev))
    .with_gate(move || fence.is_open());
    let timing = Timing {
        operation_poll: cfg.operation_poll_interval,
        run_poll: cfg.run_poll_interval,
        deferred_retry: cfg.deferred_retry_interval,
        credentials_retry: cfg.credentials_retry_interval,
        backoff_base: cfg.error_backoff_base,
        backoff_max: cfg.error_backoff_max,
        resync: cfg.resync_interval,
        create_settle: cfg.create_settle_window,
        secret_grace: cfg.secret_grace_period,
        expiration_warning: cfg.expiration_warning_window,
        activation_poll: cfg.activation_poll_interval,
    };
    clock::set_clock_offset(cfg.clock_offset);
    let _ = clock::started();
    let core = Arc::new(Context::new(
        client.clone(),
        aep,
        Arc::new(core::events::RecorderSink::spawn(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: None,
            },
            metrics.events_dropped.clone(),
        )),
        timing,
        metrics.clone(),
        cfg.credentials_cache_ttl,
    ));
    let scope = watch::Scope::of(&cfg.namespaces);
    let (reader, writer) = reflector::store();
    let (activation_reader, activation_writer) = reflector::store::<AudienceActivation>();
    // Where each cache stands, so that a pass whose cache lags only behind this process's own
    // last write starts from that write's answer instead of a GET.
    core.cache_of::<ExternalAudience>(cached_version(reader.clone()));
    core.cache_of::<AudienceActivation>(cached_version(activation_reader.clone()));
    let (observed_core, activation_core) = (core.clone(), core.clone());
    let reads = Arc::new(reads::Reads::default());
    let shared = Arc::new(
        audience::shared(
            core.clone(),
            reader.clone(),
            audience::decide::Settings {
                missing_audience_policy: cfg.missing_audience_policy,
                run_limit: audience::decide::RunLimit {
                    max: cfg.max_runs_per_audience,
                    window: cfg.runs_per_audience_window,
                },
            },
            cfg.max_runs_per_sandbox_per_day,
            budget::GATHER,
        )
        .with_activations(activation_reader.clone(), reads.clone()),
    );
    // Objects by condition, for dashboards: counted from the cache when scraped, never labelled
    // by object.
    let counted = reader.clone();
    metrics.count_objects_with(move || {
        let mut counts = [
            (ConditionType::Ready.as_str(), 0),
            (ConditionType::Reconciling.as_str(), 0),
            (ConditionType::Stalled.as_str(), 0),
            (ConditionType::Paused.as_str(), 0),
        ];
        for ea in counted.state() {
            for c in ea
                .status
                .iter()
                .flat_map(|s| s.conditions.iter())
                .filter(|c| c.status == "True")
            {
                if let Some(entry) = counts.iter_mut().find(|(t, _)| *t == c.type_) {
                    entry.1 += 1;
                }
            }
        }
        counts.to_vec()
    });
    // Claims are indexed from the same stream, before the store sees each event: when the store
    // shows an object, the index holds every claim recorded before it. When an object lets go of
    // an audience, the other objects claiming it are looked at again.
    let (wake, woken) = futures::channel::mpsc::unbounded();
    let claims_shared = shared.clone();
    // An ExternalAudience that changes wakes its activations (they wait for it to be Ready and
    // follow its audience id); an activation that goes wakes its ExternalAudience (a deletion
    // waits for its activations). Both from the watches the controllers already have.
    let (wake_activations, activations_woken) = futures::channel::mpsc::unbounded();
    let (wake_audiences, audiences_woken) = futures::channel::mpsc::unbounded();
    let activations_of_changed = activation_reader.clone();
    // Our own status writes do not trigger passes (every pass that leaves work pending returns
    // an explicit requeue); spec, annotations, finalizers and deletion do.
    let triggers = watch::watch(
        &client,
        &scope,
        watcher::Config::default().any_semantic(),
        reader.clone(),
    )
    // The cache keeps what passes read: not the managed fields or kubectl's copy of the last
    // applied manifest.
    .modify(core::trim)
    .inspect(move |event| {
        let claims = &claims_shared.claims;
        let others = match event {
            Ok(watcher::Event::Apply(ea) | watcher::Event::InitApply(ea)) => claims.apply(ea),
            Ok(watcher::Event::Delete(ea)) => claims.delete(ea),
            Ok(watcher::Event::Init) => {
                claims.relisting();
                Vec::new()
            }
            Ok(watcher::Event::InitDone) => claims.relisted(),
            Err(_) => Vec::new(),
        };
        for other in claims::refs(others) {
            let _ = wake.unbounded_send(other);
        }
    })
    .reflect(writer)
    // Ready once the cache holds its first full list (the store's own ready signal wakes only
    // one waiter, which the Controller takes).
    .inspect(move |event| {
        if let Ok(watcher::Event::InitDone) = event {
            health.set_synced();
        }
        // The answer to our own last write, kept while the cache lagged behind it, is dropped
        // once the cache shows it, or the object is gone.
        observed_core.follow_watch(event);
        if let Ok(watcher::Event::Apply(ea) | watcher::Event::Delete(ea)) = event {
            let ns = ea.namespace().unwrap_or_default();
            for a in activation::activations_of(&activations_of_changed, &ns, &ea.name_any()) {
                let _ = wake_activations.unbounded_send(ObjectRef::from_obj(&*a));
            }
        }
    })
    .applied_objects()
    .predicate_filter(triggers(), PredicateConfig::default())
    .map_ok(core::bare_trigger);
    let mut controller =
        Controller::for_stream(triggers, reader.clone()).reconcile_on(futures::stream::select(woken, audiences_woken));
    let activation_shared = Arc::new(activation::shared(
        core.clone(),
        activation_reader.clone(),
        reader,
        reads,
    ));
    let activation_triggers = watch::watch(
        &client,
        &scope,
        watcher::Config::default().any_semantic(),
        activation_reader.clone(),
    )
    .modify(core::trim)
    .reflect(activation_writer)
    .inspect(move |event| {
        activation_core.follow_watch(event);
        let gone = match event {
            Ok(watcher::Event::Delete(a)) => Some(a),
            Ok(watcher::Event::Apply(a)) if activation_deletion(a) => Some(a),
            _ => None,
        };
        if let Some(a) = gone {
            let ns = a.namespace().unwrap_or_default();
            let _ = wake_audiences.unbounded_send(ObjectRef::new(&a.spec.audience_ref.name).within(&ns));
        }
    })
    .applied_objects()
    .predicate_filter(activation::triggers(), PredicateConfig::default())
    .map_ok(core::bare_trigger);
    let activations = Controller::for_stream(activation_triggers, activation_reader)
        .reconcile_on(activations_woken)
        .with_config(kube::runtime::controller::Config::default().concurrency(cfg.concurrency))
        .shutdown_on_signal()
        .run(activation::reconcile, activation::error_policy, activation_shared)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "Reconcile error reported by the runtime");
            }
        });
    if cfg.watch_secrets {
        // Metadata only: the operator never caches Secret data beyond the credential cache's TTL.
        let store = controller.store();
        let watch_core = core.clone();
        let secret_changes =
            watch::touched::<PartialObjectMeta<Secret>>(&client, &scope, watcher::Config::default().any_semantic());
        controller = controller.watches_stream(secret_changes, move |secret| {
            let ns = secret.namespace();
            let name = secret.name_any();
            if let Some(ns) = &ns {
                watch_core.credentials.invalidate(&watch_core.aep, ns, &name);
            }
            store
                .state()
                .into_iter()
                .filter(|ea| ea.namespace() == ns && ea.spec.credentials_secret_ref.name == name)
                .map(|ea| ObjectRef::from_obj(&*ea))
                .collect::<Vec<_>>()
        });
    }
    let audiences = controller
        .with_config(kube::runtime::controller::Config::default().concurrency(cfg.concurrency))
        .shutdown_on_signal()
        .run(audience::reconcile, audience::error_policy, shared)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "Reconcile error reported by the runtime");
            }
        });
    futures::join!(audiences, activations);
    Ok(())
}
