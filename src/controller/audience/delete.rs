//! Deletion behind the finalizer: the decider says whether the object is released without
//! touching AEP (never sent, orphaned, observed, another object's audience, a namespace that is
//! going away), waits (paused, no credentials, another org), or deletes; these steps delete.
//!
//! Rules: decide from a fresh read of the object; never delete an audience without proof of
//! ownership (an id from this object's create operation, `spec.audienceId`, this object's
//! `customAudienceId`, or a confirmed restore record); never hang: a create in flight is waited
//! for and its audience deleted, an operation AEP no longer knows leads to the proof lookup and
//! then to release, an audience that cannot be attributed is left in AEP with a Warning event
//! naming it. Transient AEP failures show as `Reconciling/Retrying`, refusals as
//! `Stalled/DeleteRefused` (the one table, [`verdict`]).

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, ResourceExt,
    runtime::{controller::Action, events::EventType},
};

use super::{AudiencePass, Creds, Shared, decide::Step, steps::Found};
use crate::{
    aep::{ErrorKind, OperationStatus},
    api::{AudienceActivation, EventReason, ExternalAudience, OwnershipProof, Reason},
    controller::{
        clock::now,
        core::{
            Error,
            verdict::{self, Phase},
        },
        credentials::{self, CredentialsError},
        seams::AepApi,
    },
    status::{Health, with_paused},
};

/// What a pending or unfinished create resolved to.
enum Resolved {
    /// This object's audience.
    Audience(String),
    /// Nothing of this object's exists (or nothing can be proven to).
    Nothing,
}

pub(super) async fn cleanup(
    cached: &ExternalAudience,
    shared: &Shared,
    api: &Api<ExternalAudience>,
) -> Result<Action, Error> {
    // Decide from a fresh read: the cache may predate our own last status write (an operation
    // or audience id recorded a moment ago).
    let fresh = match api.get_opt(&cached.name_any()).await.map_err(Error::Kube)? {
        Some(obj) => obj,
        None => return Ok(Action::await_change()),
    };
    let ns = fresh.namespace().ok_or(Error::MissingNamespace)?;
    let mut pass = AudiencePass::new(&fresh, shared, api);
    pass.conditioned = false;
    let recorded_org = pass.pass.status.org_id.clone();
    pass.look_up_claims(recorded_org.as_deref());
    pass.gathered.activations =
        crate::controller::activation::activations_of(&shared.activations, &ns, &fresh.name_any())
            .iter()
            .map(|a| a.name_any())
            .collect();
    let mut decision = pass.decide();
    let mut session = None;
    if decision.step.mutates_aep() {
        // Deleting in AEP needs credentials that still exist: read the Secret now, never the cache.
        let ctx = shared.core.clone();
        let secret = fresh.spec.credentials_secret_ref.name.clone();
        match ctx.credentials.read(&ctx.client, &ctx.aep, &ns, &secret).await {
            Ok(creds) => {
                let s = ctx.aep.session(&creds, &fresh.spec.sandbox);
                pass.gathered.credentials = Creds::Ready(creds.org_id.clone(), s.platform_url().to_string());
                session = Some(s);
            }
            Err(CredentialsError::Kube { source, .. }) => return Err(Error::Kube(source)),
            Err(e) => {
                pass.gathered.credentials = match e {
                    CredentialsError::Missing { .. } => Creds::Missing(e.to_string()),
                    _ => Creds::Invalid(e.to_string()),
                };
                pass.gathered.namespace_terminating = namespace_terminating(&ctx.client, &ns).await?;
            }
        }
        decision = pass.decide();
    }
    pass.pass.action = decision.step.name();
    match decision.step {
        Step::AwaitActivations { names } => {
            // The activations are this object's (ownerReference); the garbage collector would
            // delete them only after this object is gone, which waits for them: delete them here.
            let activations = Api::<AudienceActivation>::namespaced(shared.core.client.clone(), &ns);
            for name in &names {
                let deleting = activations
                    .get_opt(name)
                    .await
                    .map_err(Error::Kube)?
                    .is_none_or(|a| a.metadata.deletion_timestamp.is_some());
                if !deleting {
                    match activations.delete(name, &Default::default()).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(e)) if e.code == 404 => {}
                        Err(e) => return Err(Error::Kube(e)),
                    }
                }
            }
            if pass.report(decision.health.clone()).await? {
                pass.publish((
                    EventType::Normal,
                    EventReason::ActivationsExist,
                    decision.health.message().to_owned(),
                ))
                .await;
            }
            return Err(Error::Waiting(
                "waiting for the audience's activations",
                shared.core.timing.operation_poll,
            ));
        }
        Step::Release { event } => {
            if let Some(note) = event {
                pass.publish(note).await;
            }
        }
        Step::WaitDeletion { retry, paused } => {
            if paused {
                let message = decision.health.message().to_owned();
                pass.status.conditions = with_paused(&pass.status.conditions, pass.generation, &message, &now());
                if pass.changed() {
                    pass.write_status().await?;
                    pass.publish((EventType::Normal, EventReason::DeletionPaused, message))
                        .await;
                }
                return Err(Error::Waiting("paused", retry));
            }
            if pass.report(decision.health.clone()).await? {
                let event = verdict::deletion_wait_event(&decision.health);
                pass.publish((EventType::Warning, event, decision.health.message().to_owned()))
                    .await;
            }
            return Err(Error::Waiting("deletion waits", retry));
        }
        Step::DeleteLegacy { audience_id } => {
            let s = session
                .as_ref()
                .ok_or(Error::Waiting("credentials", shared.core.timing.credentials_retry))?;
            if !pass.legacy_owned(s, &audience_id).await? {
                pass.publish((
                    EventType::Warning,
                    EventReason::AudienceNotDeleted,
                    format!(
                        "Left audience {audience_id} in AEP: this object recorded it before ownership was tracked, and \
                         neither its create operation nor spec.audienceId proves it is this object's"
                    ),
                ))
                .await;
            } else {
                pass.delete_audience(s, &audience_id).await?;
            }
        }
        Step::ResolveAndDelete { operation_id, settle } => {
            let s = session
                .as_ref()
                .ok_or(Error::Waiting("credentials", shared.core.timing.credentials_retry))?;
            if let Resolved::Audience(id) = pass.resolve_create(s, operation_id, settle).await? {
                pass.delete_audience(s, &id).await?;
            }
        }
        Step::Delete { audience_id } => {
            let s = session
                .as_ref()
                .ok_or(Error::Waiting("credentials", shared.core.timing.credentials_retry))?;
            pass.delete_audience(s, &audience_id).await?;
        }
        other => {
            return Err(Error::Config(format!("step {} is not a deletion step", other.name())));
        }
    }
    // Released in AEP. The Secret keeps its in-use finalizer while other objects use it; this
    // check runs before this object's finalizer goes (a crash repeats it), and once more after
    // (from `reconcile`), so that of objects finishing at the same moment the last one always
    // releases it. Nothing is kept about this object.
    release_unused_secret(
        shared,
        &ns,
        &fresh.spec.credentials_secret_ref.name,
        fresh.metadata.uid.as_deref(),
    )
    .await?;
    shared.forget_object(&pass.key());
    Ok(Action::await_change())
}

/// Removes the in-use finalizer of Secret `namespace/name` if no object but `except_uid` still
/// needs it (live, or being deleted with its cleanup finalizer).
pub(super) async fn release_unused_secret(
    shared: &Shared,
    namespace: &str,
    name: &str,
    except_uid: Option<&str>,
) -> Result<(), Error> {
    let ctx = &shared.core;
    let held = credentials::secret_held(&ctx.client, namespace, name, except_uid)
        .await
        .map_err(Error::Kube)?;
    if !held {
        credentials::release_secret(&ctx.client, namespace, name)
            .await
            .map_err(Error::Kube)?;
        ctx.credentials.invalidate(&ctx.aep, namespace, name);
    }
    Ok(())
}

/// Whether `namespace` is being deleted (its Secrets can then never come back).
/// Without permission to read namespaces (the namespaced install has no ClusterRole) the answer is
/// "no": the object then waits for its Secret, which the in-use finalizer normally keeps.
async fn namespace_terminating(client: &kube::Client, namespace: &str) -> Result<bool, Error> {
    match Api::<Namespace>::all(client.clone()).get_opt(namespace).await {
        Ok(ns) => Ok(ns.is_none_or(|n| n.metadata.deletion_timestamp.is_some())),
        Err(kube::Error::Api(s)) if s.code == 403 => Ok(false),
        Err(e) => Err(Error::Kube(e)),
    }
}

impl AudiencePass<'_> {
    /// Objects recorded by releases before ownership was tracked: prove the audience is theirs.
    async fn legacy_owned(&mut self, s: &impl AepApi, audience_id: &str) -> Result<bool, Error> {
        if self.obj.spec.audience_id.as_deref() == Some(audience_id) {
            return Ok(true);
        }
        let Some(op) = self.status.operation_id.clone() else {
            return Ok(false);
        };
        match s.get_operation(&op).await {
            Ok(op) => Ok(op.audience_id.as_deref() == Some(audience_id)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.retry(e, "reading the create operation before deleting").await?),
        }
    }

    /// The object has no audience id yet: a create is in flight or its answer was lost. Wait for
    /// the operation (or the settle window), then resolve the audience by proof.
    async fn resolve_create(
        &mut self,
        s: &impl AepApi,
        operation_id: Option<String>,
        settle: Option<std::time::Duration>,
    ) -> Result<Resolved, Error> {
        if let Some(op) = operation_id {
            match s.get_operation(&op).await {
                Ok(o) => match (o.status, o.audience_id) {
                    (OperationStatus::Success, Some(id)) => {
                        // Record it first: even if deletion then fails, the audience is never lost.
                        self.claim(&id, OwnershipProof::CreateOperation);
                        self.write_status().await?;
                        return Ok(Resolved::Audience(id));
                    }
                    (OperationStatus::Failed, _) => return Ok(Resolved::Nothing),
                    (OperationStatus::Success, None) => {}
                    _ => {
                        let msg = format!(
                            "Waiting for create operation {op} to finish, then deleting the audience it creates"
                        );
                        self.report(Health::progressing(Reason::Deleting, msg)).await?;
                        return Err(Error::Waiting("create in flight", self.ctx.timing.operation_poll));
                    }
                },
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(self.retry(e, "reading the create operation before deleting").await?),
            }
        }
        let cid = self.custom_audience_id()?;
        match s.find_audiences_by_custom_id(&cid).await {
            Ok(found) => {
                if let Some(a) = self.live(found).first() {
                    self.claim(&a.id, OwnershipProof::CustomAudienceId);
                    self.status.create_pending_since = None;
                    self.write_status().await?;
                    return Ok(Resolved::Audience(a.id.clone()));
                }
            }
            Err(e) => return Err(self.retry(e, "looking for the audience before deleting").await?),
        }
        if let Some(remaining) = settle {
            let msg = format!(
                "The answer to this object's create was lost; looking for its audience by customAudienceId for \
                 another {}s before releasing the object",
                remaining.as_secs()
            );
            self.report(Health::progressing(Reason::Deleting, msg)).await?;
            return Err(Error::Waiting(
                "create outcome unknown",
                remaining.min(self.ctx.timing.operation_poll),
            ));
        }
        // Nothing proves an audience is ours. Name any that could be, for a human to check.
        let sent_at = self.status.create_pending_since.as_ref().map(|t| t.0.as_second());
        let found = match s.find_audiences_by_name(self.audience_name()).await {
            Ok(found) => Found::classify(self.live(found), &cid, sent_at.or(Some(i64::MIN / 2))),
            Err(e) => return Err(self.retry(e, "looking for the audience before deleting").await?),
        };
        if let Some(ours) = found.ours {
            self.claim(&ours.id, OwnershipProof::CustomAudienceId);
            self.write_status().await?;
            return Ok(Resolved::Audience(ours.id));
        }
        if !found.unattributable.is_empty() {
            let ids: Vec<&str> = found.unattributable.iter().map(|a| a.id.as_str()).collect();
            let note = format!(
                "Released the object without deleting anything in AEP: its create's outcome is unknown, and audience(s) {} \
                 named {:?} cannot be proven to be its own. Check them and delete in AEP by hand if one was made by this object",
                ids.join(", "),
                self.audience_name()
            );
            self.publish((EventType::Warning, EventReason::AudienceNotDeleted, note))
                .await;
        }
        Ok(Resolved::Nothing)
    }

    /// DELETE, with 404 counting as done.
    async fn delete_audience(&mut self, s: &impl AepApi, audience_id: &str) -> Result<(), Error> {
        match s.delete_audience(audience_id).await {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(self.retry(e, &format!("deleting audience {audience_id}")).await?),
        }
        tracing::info!(audience_id, "Deleted audience");
        self.publish((
            EventType::Normal,
            EventReason::AudienceDeleted,
            format!("Deleted audience {audience_id} in AEP"),
        ))
        .await;
        Ok(())
    }

    /// Reports an AEP failure during deletion (the one table) and returns the error that keeps
    /// the finalizer and backs off.
    async fn retry(&mut self, e: crate::aep::Error, what: &str) -> Result<Error, Error> {
        let out = verdict::verdict(&e, what, Phase::Delete, &self.ctx.timing);
        if out.forget_credentials
            && let Some(ns) = self.obj.namespace()
        {
            self.ctx
                .credentials
                .invalidate(&self.ctx.aep, &ns, &self.obj.spec.credentials_secret_ref.name);
        }
        if let Some(health) = out.health
            && self.report(health).await?
            && let Some(note) = out.event
        {
            self.publish(note).await;
        }
        Ok(Error::Aep(Box::new(e)))
    }

    /// Writes the deletion's health; true when it changed.
    async fn report(&mut self, health: Health) -> Result<bool, Error> {
        self.record(&health, false);
        if !self.changed() {
            return Ok(false);
        }
        self.write_status().await?;
        Ok(true)
    }
}
