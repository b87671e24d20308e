//! The `AudienceActivation` kind on the managed-resource core: an ExternalAudience mapped into an
//! existing destination dataflow. One pass:
//!
//! 1. **gather** ([`ActivationPass::gather`]): the ExternalAudience from the shared cache, an
//!    older activation of the same audience into the same dataflow, the credentials (the
//!    ExternalAudience's Secret, or the one recorded when the dataflow was first changed), the
//!    dataflow and its export runs from the shared reads ([`crate::controller::reads`]: one read
//!    per dataflow per poll interval, whatever the number of objects);
//! 2. **decide** ([`decide::decide`], pure): one step and the health it implies;
//! 3. **act** (`steps.rs`): a change of the dataflow is decided again from a read taken under the
//!    dataflow's lock, its marker written, and sent conditioned on that read's etag; a 412 reads
//!    again and decides again (bounded);
//! 4. **finish**: one conditioned status write, the event, and when to come back.

pub mod decide;
#[cfg(test)]
mod step_tests;
mod steps;

use std::{
    ops::{Deref, DerefMut},
    sync::Arc,
    time::Duration,
};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{controller::Action, events::EventType, reflector::Store},
};

use self::decide::{Audience, Decision, Facts, Step};
use super::{
    clock::now,
    core::{Base, Context, Error, Outcome, Pass, facts::Creds},
    credentials::CredentialsError,
    reads::{Endpoint, Reads},
    seams::{FlowApi, StatusApi},
};
use crate::{
    aep::{Flow, FlowRun, Session},
    api::{
        ACTIVATION_FINALIZER, AudienceActivation, AudienceActivationStatus, ConditionType, DataflowStatus,
        EXPORT_REQUESTED_AT, EventReason, ExportRun, ExternalAudience, MANAGER, PAUSED,
    },
    status::{Health, with_paused, without_condition},
};

crate::managed_kind!(AudienceActivation, AudienceActivationStatus);

/// The kind's state shared by its passes.
pub struct Shared {
    pub core: Arc<Context>,
    /// The controller's cache of AudienceActivations.
    pub objects: Store<AudienceActivation>,
    /// The ExternalAudience controller's cache (shared, not a second watch).
    pub audiences: Store<ExternalAudience>,
    /// Dataflow reads shared by all objects.
    pub reads: Arc<Reads>,
}

impl Shared {
    /// The ExternalAudience `name` in `namespace`, from the cache.
    fn audience(&self, namespace: &str, name: &str) -> Option<Arc<ExternalAudience>> {
        self.audiences
            .get(&kube::runtime::reflector::ObjectRef::new(name).within(namespace))
    }

    /// An older AudienceActivation in the namespace that maps the same ExternalAudience into the
    /// same dataflow (at most one object manages a selector; the older one, then the lower name).
    fn claimed_by(&self, obj: &AudienceActivation) -> Option<String> {
        let ns = obj.namespace();
        let key = |o: &AudienceActivation| (o.metadata.creation_timestamp.clone().map(|t| t.0), o.name_any());
        let mine = key(obj);
        self.objects
            .state()
            .iter()
            .filter(|o| {
                o.namespace() == ns
                    && o.metadata.uid != obj.metadata.uid
                    && o.spec.audience_ref == obj.spec.audience_ref
                    && o.spec.dataflow_id == obj.spec.dataflow_id
            })
            .filter(|o| key(o) < mine)
            .min_by_key(|o| key(o))
            .map(|o| o.name_any())
    }
}

/// The facts a pass gathered beyond the object itself.
#[derive(Clone, Debug, Default)]
pub(crate) struct Gathered {
    pub(crate) now: Option<Timestamp>,
    pub(crate) audience: Option<Arc<ExternalAudience>>,
    pub(crate) claimed_by: Option<String>,
    pub(crate) credentials: Creds,
    /// The sandbox the credentials act in.
    pub(crate) sandbox: Option<String>,
    pub(crate) flow: Option<Result<Arc<Flow>, Arc<crate::aep::Error>>>,
    pub(crate) flow_is_fresh: bool,
    pub(crate) runs: Option<Arc<Vec<FlowRun>>>,
}

/// One pass over one AudienceActivation.
pub(crate) struct ActivationPass<'a> {
    pub(crate) pass: Pass<'a, AudienceActivation>,
    pub(crate) shared: &'a Shared,
    pub(crate) gathered: Gathered,
}

impl<'a> Deref for ActivationPass<'a> {
    type Target = Pass<'a, AudienceActivation>;
    fn deref(&self) -> &Self::Target {
        &self.pass
    }
}

impl DerefMut for ActivationPass<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.pass
    }
}

/// Why an ExternalAudience is not Ready to be activated, if it is not.
fn not_ready(ea: &ExternalAudience) -> Option<String> {
    if ea.metadata.deletion_timestamp.is_some() {
        return Some("it is being deleted".to_owned());
    }
    let Some(st) = ea.status.as_ref() else {
        return Some("it has no status yet".to_owned());
    };
    let ready = st.conditions.iter().find(|c| c.type_ == ConditionType::Ready.as_str());
    match ready {
        Some(c) if c.status == "True" && st.audience_id.is_some() => None,
        Some(c) => Some(format!("{}: {}", c.reason, c.message)),
        None => Some("it has no Ready condition yet".to_owned()),
    }
}

impl<'a> ActivationPass<'a> {
    pub(crate) fn new(
        obj: &'a AudienceActivation,
        shared: &'a Shared,
        api: &'a dyn StatusApi<AudienceActivation>,
    ) -> Self {
        let audience = obj
            .namespace()
            .and_then(|ns| shared.audience(&ns, &obj.spec.audience_ref.name));
        ActivationPass {
            pass: Pass::new(obj, &shared.core, api),
            shared,
            gathered: Gathered {
                now: Some(now().0),
                claimed_by: shared.claimed_by(obj),
                audience,
                ..Gathered::default()
            },
        }
    }

    /// The AEP id of a Ready ExternalAudience (for the status sync before deciding).
    fn ready_audience(&self) -> Option<(String, String)> {
        let ea = self.gathered.audience.as_ref()?;
        if not_ready(ea).is_some() {
            return None;
        }
        Some((ea.status.as_ref()?.audience_id.clone()?, ea.spec.sandbox.clone()))
    }

    /// The facts for the decider.
    pub(crate) fn facts(&self) -> Facts<'_> {
        let obj = self.pass.obj;
        let g = &self.gathered;
        let annotations = obj.metadata.annotations.as_ref();
        let audience = match &g.audience {
            None => Audience::Missing,
            Some(ea) => match (not_ready(ea), ea.status.as_ref().and_then(|s| s.audience_id.as_deref())) {
                (None, Some(audience_id)) => Audience::Ready {
                    audience_id,
                    sandbox: &ea.spec.sandbox,
                },
                _ => Audience::NotReady(
                    ea.status
                        .as_ref()
                        .and_then(|s| s.conditions.iter().find(|c| c.type_ == ConditionType::Ready.as_str()))
                        .map_or("it has no status yet", |c| c.message.as_str()),
                ),
            },
        };
        Facts {
            now: g.now.unwrap_or_else(|| now().0),
            generation: self.pass.generation,
            spec: &obj.spec,
            status: &self.pass.status,
            deleting: obj.metadata.deletion_timestamp.is_some(),
            paused: annotations.and_then(|a| a.get(PAUSED)).is_some_and(|v| v == "true"),
            export_request: annotations.and_then(|a| a.get(EXPORT_REQUESTED_AT)).map(String::as_str),
            audience,
            claimed_by: g.claimed_by.as_deref(),
            credentials: g.credentials.facts(),
            sandbox: g.sandbox.as_deref(),
            flow: g
                .flow
                .as_ref()
                .map(|r| r.as_ref().map(|f| f.as_ref()).map_err(|e| e.as_ref())),
            flow_is_fresh: g.flow_is_fresh,
            timing: &self.ctx.timing,
        }
    }

    pub(crate) fn decide(&self) -> Decision {
        decide::decide(&self.facts())
    }

    /// Where the dataflow lives for this pass: (org, endpoint, sandbox).
    fn endpoint(&self) -> Option<Endpoint> {
        match &self.gathered.credentials {
            Creds::Ready(org, url) => Some((org.clone(), url.clone(), self.gathered.sandbox.clone()?)),
            _ => None,
        }
    }

    /// The credentials Secret and sandbox this pass acts with: those recorded when the dataflow
    /// was first changed, else the ExternalAudience's.
    fn secret_and_sandbox(&self) -> Option<(String, String)> {
        if let Some(t) = &self.pass.status.target {
            return Some((t.credentials_secret.clone(), t.sandbox.clone()));
        }
        let ea = self.gathered.audience.as_ref()?;
        Some((ea.spec.credentials_secret_ref.name.clone(), ea.spec.sandbox.clone()))
    }

    /// Reads the credentials into the pass; the AEP session when usable.
    async fn gather_credentials(&mut self) -> Result<Option<Session>, Error> {
        let Some((secret, sandbox)) = self.secret_and_sandbox() else {
            return Ok(None);
        };
        let ns = self.pass.obj.namespace().ok_or(Error::MissingNamespace)?;
        let ctx = self.shared.core.clone();
        self.gathered.sandbox = Some(sandbox.clone());
        match ctx.credentials.load(&ctx.client, &ctx.aep, &ns, &secret).await {
            Ok(creds) => {
                let session = ctx.aep.session(&creds, &sandbox);
                self.gathered.credentials = Creds::Ready(creds.org_id.clone(), session.platform_url().to_string());
                Ok(Some(session))
            }
            Err(e @ CredentialsError::Kube { .. }) => Err(Error::Credentials(Box::new(e))),
            Err(e @ CredentialsError::Missing { .. }) => {
                self.gathered.credentials = Creds::Missing(e.to_string());
                Ok(None)
            }
            Err(e @ CredentialsError::Invalid { .. }) => {
                self.gathered.credentials = Creds::Invalid(e.to_string());
                Ok(None)
            }
        }
    }

    /// Keeps `status.audienceId` in line with the ExternalAudience's (a new audience there is a
    /// new audience here: what this object added before belonged to the old one).
    fn sync_audience_id(&mut self) {
        if self.pass.obj.metadata.deletion_timestamp.is_some() {
            return;
        }
        let Some((audience_id, _)) = self.ready_audience() else {
            return;
        };
        let st = &mut self.pass.status;
        if st.audience_id.as_deref() != Some(audience_id.as_str()) {
            if st.selector_added || st.change_pending.is_some() {
                tracing::warn!(
                    old = ?st.audience_id,
                    new = %audience_id,
                    "The ExternalAudience names another audience now; the old one's selector is left as it is"
                );
            }
            st.audience_id = Some(audience_id);
            st.selector_added = false;
            st.change_pending = None;
            st.export_request = None;
            st.last_export = None;
        }
    }

    /// Reads the dataflow (shared; afresh when asked) and, when the audience is in it, its
    /// export runs (shared).
    async fn read_flow<A: FlowApi>(&mut self, session: &A, fresh: bool) {
        let Some(endpoint) = self.endpoint() else {
            return;
        };
        let entry = self.shared.reads.flow(&endpoint, &self.pass.obj.spec.dataflow_id);
        let max_age = if fresh {
            Duration::ZERO
        } else {
            self.ctx.timing.activation_poll
        };
        let flow_id = self.pass.obj.spec.dataflow_id.clone();
        let read = {
            let mut slot = entry.lock().await;
            slot.get(max_age, || session.get_flow(&flow_id)).await
        };
        self.gathered.flow_is_fresh = fresh;
        self.gathered.flow = Some(read.map_err(Arc::new));
        self.read_runs(session, &entry).await;
    }

    async fn read_runs<A: FlowApi>(&mut self, session: &A, entry: &crate::controller::reads::FlowEntry) {
        let mapped = match (&self.gathered.flow, &self.pass.status.audience_id) {
            (Some(Ok(flow)), Some(id)) => flow.position_of(id).is_some(),
            _ => false,
        };
        if !mapped || self.pass.obj.metadata.deletion_timestamp.is_some() {
            return;
        }
        let flow_id = self.pass.obj.spec.dataflow_id.clone();
        let mut slot = entry.runs.lock().await;
        match slot
            .get(self.ctx.timing.activation_poll, || session.list_flow_runs(&flow_id))
            .await
        {
            Ok(runs) => self.gathered.runs = Some(runs),
            Err(e) => tracing::debug!(error = %e, "Could not list the dataflow's runs"),
        }
    }

    /// Sets conditions (and `blocked` when asked) for `health`.
    fn record(&mut self, health: &Health, block: bool) {
        if block && let Health::Stalled { reason, message } = health {
            self.pass.status.blocked = Some(crate::api::Blocked {
                reason: reason.as_str().to_owned(),
                generation: self.pass.generation,
                message: message.clone(),
            });
        }
        self.pass.record_health(health);
    }

    fn was_paused(&self) -> bool {
        self.pass
            .original
            .conditions
            .iter()
            .any(|c| c.type_ == ConditionType::Paused.as_str() && c.status == "True")
    }

    /// What the reads show, put in status: the dataflow and the audience's latest export run.
    fn derive_status(&mut self) {
        if let Some(Ok(flow)) = &self.gathered.flow {
            self.pass.status.dataflow = Some(DataflowStatus {
                id: flow.id.clone(),
                name: flow.name.clone(),
                state: flow.state.clone(),
                destination_kind: flow.destination_kind().as_str().to_owned(),
                audiences: u32::try_from(flow.selectors().len()).unwrap_or(u32::MAX),
            });
        }
        let (Some(runs), Some(audience_id)) = (&self.gathered.runs, self.pass.status.audience_id.clone()) else {
            return;
        };
        if let Some(run) = decide::last_run_of(runs, &audience_id) {
            self.pass.status.last_export = Some(export_run(run, &audience_id));
        }
    }

    /// The one place that turns an outcome into status: the health (the outcome's, else what the
    /// decider says about the status the step left), conditions, `blocked`, what the reads show,
    /// one write if anything changed, then the event; and when to come back.
    pub(crate) async fn finish(&mut self, out: Outcome, paused: bool) -> Result<Action, Error> {
        if out.forget_credentials
            && let (Some(ns), Some((secret, _))) = (self.pass.obj.namespace(), self.secret_and_sandbox())
        {
            self.ctx.credentials.invalidate(&self.ctx.aep, &ns, &secret);
        }
        let at = now();
        let mut event = out.event;
        if paused {
            let message =
                "Paused: no call is made to AEP until the annotation aep.audience-operator.dev/paused is removed";
            self.pass.status.conditions = with_paused(&self.pass.status.conditions, self.pass.generation, message, &at);
            if !self.was_paused() {
                event = Some((EventType::Normal, EventReason::Paused, message.to_owned()));
            }
        } else {
            let health = match out.health {
                Some(h) => h,
                None => self.decide().health,
            };
            self.record(&health, out.block);
            self.pass.status.conditions =
                without_condition(&self.pass.status.conditions, ConditionType::Paused.as_str());
            self.derive_status();
        }
        if self.pass.changed() {
            self.pass.write_status().await?;
            if let Some(note) = event {
                self.pass.publish(note).await;
            }
        }
        Ok(self.pass.requeue(out.next, None))
    }
}

/// The status record of an export run of `audience_id`.
fn export_run(run: &FlowRun, audience_id: &str) -> ExportRun {
    let to_time = |ms: Option<i64>| ms.and_then(|ms| Timestamp::from_millisecond(ms).ok()).map(Time);
    let entity = crate::aep::segment_entity_id(audience_id);
    let counts = run
        .metrics
        .as_ref()
        .and_then(|m| m.record_summary.as_ref())
        .and_then(|s| {
            s.target_summaries
                .iter()
                .flat_map(|t| &t.entity_summaries)
                .find(|e| e.id == entity)
        });
    ExportRun {
        run_id: run.id.clone(),
        state: run.status().as_str().to_owned(),
        started_at: to_time(run.started_at().or(run.created_at)),
        completed_at: to_time(run.completed_at()),
        records_exported: counts.and_then(|c| c.output_record_count),
        records_skipped: counts.and_then(|c| c.skipped_record_count),
        message: run
            .errors()
            .first()
            .and_then(|e| e.message.clone())
            .map(|m| crate::status::stable_message(&m)),
    }
}

/// Entry point for the kube-runtime `Controller`.
#[tracing::instrument(skip_all, fields(name = %obj.name_any(), namespace = obj.namespace().unwrap_or_default()))]
pub async fn reconcile(obj: Arc<AudienceActivation>, shared: Arc<Shared>) -> Result<Action, Error> {
    let ns = obj.namespace().ok_or(Error::MissingNamespace)?;
    let api = Api::<AudienceActivation>::namespaced(shared.core.client.clone(), &ns);
    let name = obj.name_any();
    let started = std::time::Instant::now();
    let (result, cleaned_up) = super::core::finalizer::with_finalizer(
        &api,
        ACTIVATION_FINALIZER,
        obj,
        |obj| {
            let (shared, api) = (&shared, &api);
            async move { apply(&obj, shared, api).await }
        },
        |obj| {
            let (shared, api) = (&shared, &api);
            async move { cleanup(&obj, shared, api).await }
        },
    )
    .await;
    if cleaned_up {
        shared.core.forget_object::<AudienceActivation>(&(ns, name));
    }
    shared.core.metrics.observe_reconcile(started.elapsed());
    result
}

/// Per-object backoff after an error; a pass that only waits comes back after its own delay.
pub fn error_policy(obj: Arc<AudienceActivation>, error: &Error, shared: Arc<Shared>) -> Action {
    if let Some(delay) = error.waiting() {
        return Action::requeue(super::core::backoff::jitter(delay));
    }
    shared.core.count_failure(error.category());
    tracing::warn!(name = %obj.name_any(), error = %error, "Reconcile failed");
    let key = (obj.namespace().unwrap_or_default(), obj.name_any());
    Action::requeue(shared.core.backoff(&key, error.retry_after()))
}

async fn apply(cached: &AudienceActivation, shared: &Shared, api: &Api<AudienceActivation>) -> Result<Action, Error> {
    match apply_once(cached, shared, api).await {
        Err(Error::Stale) => Ok(Action::requeue(Duration::from_millis(100))),
        other => other,
    }
}

/// Adds the ownerReference to the ExternalAudience (server-side apply of that one entry: the
/// garbage collector removes an activation whose audience object is gone, and tools show it as
/// the audience's child).
async fn own(obj: &AudienceActivation, ea: &ExternalAudience, api: &Api<AudienceActivation>) -> Result<(), Error> {
    let Some(uid) = ea.metadata.uid.clone() else {
        return Ok(());
    };
    if obj.owner_references().iter().any(|o| o.uid == uid) {
        return Ok(());
    }
    let owner = OwnerReference {
        api_version: ExternalAudience::api_version(&()).into_owned(),
        kind: ExternalAudience::kind(&()).into_owned(),
        name: ea.name_any(),
        uid,
        controller: None,
        block_owner_deletion: None,
    };
    let patch = serde_json::json!({
        "apiVersion": AudienceActivation::api_version(&()),
        "kind": AudienceActivation::kind(&()),
        "metadata": {"name": obj.name_any(), "ownerReferences": [owner]},
    });
    let params = PatchParams::apply(MANAGER);
    api.patch(&obj.name_any(), &params, &Patch::Apply(patch))
        .await
        .map_err(Error::Kube)?;
    Ok(())
}

async fn apply_once(
    cached: &AudienceActivation,
    shared: &Shared,
    api: &Api<AudienceActivation>,
) -> Result<Action, Error> {
    let ctx = &shared.core;
    let key = (cached.namespace().unwrap_or_default(), cached.name_any());
    // Decide from our own last write: a cache behind it would only conflict.
    let fresh = match ctx.base::<AudienceActivation>(&key, cached.resource_version().as_deref()) {
        Base::Unwritten | Base::Cached => None,
        Base::Ours(ours) => Some(ours),
        Base::Unknown => Some(Arc::new(api.get(&cached.name_any()).await.map_err(Error::Kube)?)),
    };
    let obj = fresh.as_deref().unwrap_or(cached);
    let mut pass = ActivationPass::new(obj, shared, api);
    if let Some(ea) = pass.gathered.audience.clone() {
        own(obj, &ea, api).await?;
    }
    pass.sync_audience_id();
    let decision = pass.decide();
    // Paused, blocked for this generation, waiting for the audience or for an older claim to go:
    // nothing to read.
    let quiet = matches!(decision.step, Step::Pause | Step::Wait)
        || pass.ready_audience().is_none()
        || pass.gathered.claimed_by.is_some();
    if quiet {
        return run(pass, decision, None).await;
    }
    // The dataflow is read only when the decision asks for it: never with credentials that name
    // another place than the one it was changed in.
    let session = pass.gather_credentials().await?;
    let decision = pass.decide();
    run(pass, decision, session.as_ref()).await
}

async fn cleanup(cached: &AudienceActivation, shared: &Shared, api: &Api<AudienceActivation>) -> Result<Action, Error> {
    // Decide from a fresh read: the cache may predate our own last status write.
    let Some(fresh) = api.get_opt(&cached.name_any()).await.map_err(Error::Kube)? else {
        return Ok(Action::await_change());
    };
    let mut pass = ActivationPass::new(&fresh, shared, api);
    pass.pass.conditioned = false;
    let mut decision = pass.decide();
    let mut session = None;
    if !matches!(decision.step, Step::Release { .. }) {
        session = pass.gather_credentials().await?;
        decision = pass.decide();
    }
    pass.pass.action = decision.step.name();
    steps::delete(pass, decision, session.as_ref()).await
}

/// Carries the decision out and finishes the pass.
async fn run(mut pass: ActivationPass<'_>, decision: Decision, session: Option<&Session>) -> Result<Action, Error> {
    tracing::debug!(step = ?decision.step, "Planned step");
    pass.ctx.metrics.count_step(decision.step.name());
    pass.pass.action = decision.step.name();
    let paused = matches!(decision.step, Step::Pause);
    let out = pass.act(decision, session).await?;
    pass.finish(out, paused).await
}

/// Wires the kind.
pub fn shared(
    core: Arc<Context>,
    objects: Store<AudienceActivation>,
    audiences: Store<ExternalAudience>,
    reads: Arc<Reads>,
) -> Shared {
    Shared {
        core,
        objects,
        audiences,
        reads,
    }
}

/// The AudienceActivations in `namespace` that name ExternalAudience `name`.
pub fn activations_of(
    objects: &Store<AudienceActivation>,
    namespace: &str,
    name: &str,
) -> Vec<Arc<AudienceActivation>> {
    objects
        .state()
        .into_iter()
        .filter(|a| a.namespace().as_deref() == Some(namespace) && a.spec.audience_ref.name == name)
        .collect()
}

/// What a pass must react to: the spec, annotations (ad hoc export, pause), finalizers and
/// deletion; not status, not the ownerReference this controller adds.
pub fn triggers() -> impl kube::runtime::Predicate<AudienceActivation> + Clone {
    use kube::runtime::{Predicate, predicates};
    fn deletion(obj: &AudienceActivation) -> Option<u64> {
        Some(u64::from(obj.metadata.deletion_timestamp.is_some()))
    }
    predicates::generation
        .combine(predicates::annotations)
        .combine(predicates::finalizers)
        .combine(deletion)
}
