//! Deletion behind the finalizer: `deletionPolicy: Delete` deletes the audience this object
//! provably owns, `Orphan` leaves it; then the finalizer is released.
//!
//! Rules: decide from a fresh read of the object; never delete an audience without proof of
//! ownership (an id from this object's create operation, `spec.audienceId`, or this object's
//! `customAudienceId`); never hang: a create in flight is waited for and its audience deleted, an
//! operation AEP no longer knows leads to the proof lookup and then to release, an audience that
//! cannot be attributed is left in AEP with a Warning event naming it. Transient AEP failures
//! (5xx, 429, lost answers) show as `Reconciling/Retrying`; refusals as `Stalled/DeleteRefused`.

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, ResourceExt,
    runtime::{controller::Action, events::EventType},
};

use super::{
    Error, claims,
    context::Context,
    credentials::{self, CredentialsError},
    plan,
    reconcile::{Pass, now},
    seams::AepApi,
    steps::{Found, elapsed},
};
use crate::{
    aep::{ErrorKind, OperationStatus},
    api::{DeletionPolicy, ExternalAudience, OwnershipProof, events, reasons},
    status::{Health, stable_message},
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
    ctx: &Context,
    api: &Api<ExternalAudience>,
) -> Result<Action, Error> {
    // Decide from a fresh read: the cache may predate our own last status write (an operation
    // or audience id recorded a moment ago).
    let fresh = match api.get_opt(&cached.name_any()).await.map_err(Error::Kube)? {
        Some(obj) => obj,
        None => return Ok(Action::await_change()),
    };
    let mut pass = Pass::new(&fresh, ctx, api);
    pass.conditioned = false;
    pass.claimed_by = claims::claim_of(&fresh).and_then(|mine| ctx.claims.holder(&mine));
    let action = pass.cleanup().await?;
    // Released in AEP. The Secret keeps its in-use finalizer while other objects use it; this
    // check runs before this object's finalizer goes (a crash repeats it), and once more after
    // (`release_unused_secret` from `reconcile`), so that of objects finishing at the same moment
    // the last one always releases it. Nothing is kept about this object.
    let ns = fresh.namespace().ok_or(Error::MissingNamespace)?;
    release_unused_secret(
        ctx,
        &ns,
        &fresh.spec.credentials_secret_ref.name,
        fresh.metadata.uid.as_deref(),
    )
    .await?;
    ctx.forget_object(&pass.key());
    Ok(action)
}

/// Removes the in-use finalizer of Secret `namespace/name` if no object but `except_uid` still
/// needs it (live, or being deleted with its cleanup finalizer).
pub(super) async fn release_unused_secret(
    ctx: &Context,
    namespace: &str,
    name: &str,
    except_uid: Option<&str>,
) -> Result<(), Error> {
    let holders = credentials::secret_holders(&ctx.client, namespace, name, except_uid)
        .await
        .map_err(Error::Kube)?;
    if holders == credentials::Holders::None {
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

impl Pass<'_> {
    async fn cleanup(&mut self) -> Result<Action, Error> {
        let release = Ok(Action::await_change());
        let st = self.status.clone();
        let never_sent = st.audience_id.is_none() && st.operation_id.is_none() && st.create_pending_since.is_none();
        if never_sent {
            return release;
        }
        if self.obj.spec.observes() || st.ownership == Some(OwnershipProof::Observed) {
            if let Some(id) = &st.audience_id {
                self.event(
                    EventType::Normal,
                    events::AUDIENCE_ORPHANED,
                    format!("Left audience {id} in AEP: it was only observed (managementPolicy: Observe)"),
                )
                .await;
            }
            return release;
        }
        if let Some(holder) = self.claimed_by.clone() {
            // Another object manages the audience this one names: never deleted from here.
            let id = &holder.audience.1;
            self.event(
                EventType::Warning,
                events::AUDIENCE_NOT_DELETED,
                format!(
                    "Left audience {id} in AEP: ExternalAudience {} manages it (its claim is older)",
                    holder.object_name()
                ),
            )
            .await;
            return release;
        }
        if self.obj.spec.deletion_policy == DeletionPolicy::Delete && super::reconcile::paused(self.obj) {
            // Paused means no AEP call, deletion included: wait for the pause to be lifted.
            let msg = "Deletion waits: the object is paused (aep.audience-operator.dev/paused), so the audience is not \
                       deleted in AEP; remove the annotation, or set spec.deletionPolicy: Orphan to release it";
            self.status.conditions =
                crate::status::with_paused(&self.status.conditions, self.generation, msg, &super::reconcile::now());
            if self.status != self.original {
                self.write_status().await?;
                self.event(EventType::Normal, events::DELETION_PAUSED, msg.to_owned())
                    .await;
            }
            return Err(Error::Waiting("paused", self.ctx.timing.credentials_retry));
        }
        if self.obj.spec.deletion_policy == DeletionPolicy::Orphan {
            let note = match &st.audience_id {
                Some(id) => format!("Left audience {id} in AEP (deletionPolicy: Orphan)"),
                None => {
                    "Released the object; an audience being created is left in AEP (deletionPolicy: Orphan)".to_owned()
                }
            };
            self.event(EventType::Normal, events::AUDIENCE_ORPHANED, note).await;
            return release;
        }
        let ns = self.obj.namespace().ok_or(Error::MissingNamespace)?;
        let secret = self.obj.spec.credentials_secret_ref.name.clone();
        let creds = match self
            .ctx
            .credentials
            .read(&self.ctx.client, &self.ctx.aep, &ns, &secret)
            .await
        {
            Ok(c) => c,
            Err(CredentialsError::Kube { source, .. }) => return Err(Error::Kube(source)),
            Err(e) => {
                // The rule: deleting in AEP needs the credentials, and they are not remembered.
                // Wait for the Secret (the in-use finalizer normally keeps it until now), unless
                // it can never come back because the namespace is being deleted.
                if namespace_terminating(&self.ctx.client, &ns).await? {
                    self.event(
                        EventType::Warning,
                        events::AUDIENCE_ORPHANED,
                        format!(
                            "Cannot delete the audience in AEP: {e}, and its namespace is being deleted; releasing the \
                             object and leaving the audience in AEP"
                        ),
                    )
                    .await;
                    return release;
                }
                let msg = format!(
                    "Waiting for the credentials to delete the audience in AEP: {e}. Restore the Secret, or set \
                     spec.deletionPolicy: Orphan to release the object and leave the audience in AEP"
                );
                self.cleanup_report(Health::stalled(reasons::CREDENTIALS_MISSING, msg))
                    .await?;
                return Err(Error::Waiting("credentials missing", self.ctx.timing.credentials_retry));
            }
        };
        let s = self.ctx.aep.session(&creds, &self.obj.spec.sandbox);
        // The audience lives in the org and endpoint recorded with it: credentials that now name
        // another are never used for it (deleting there would hit another org's audience, or
        // nothing), and nothing is sent to the old one without its credentials.
        let moved_org = st.org_id.as_deref().is_some_and(|o| o != creds.org_id);
        let moved_endpoint = st
            .platform_url
            .as_deref()
            .is_some_and(|u| u != s.platform_url().as_str());
        if plan::has_sent(&st) && (moved_org || moved_endpoint) {
            let msg = format!(
                "Deletion waits: the credentials Secret {secret:?} now names IMS org {} at {}, but the audience lives in \
                 org {} at {}. Restore the Secret to delete it in AEP, or set spec.deletionPolicy: Orphan to release \
                 the object and leave the audience in AEP",
                creds.org_id,
                s.platform_url(),
                st.org_id.as_deref().unwrap_or("?"),
                st.platform_url.as_deref().unwrap_or("?"),
            );
            if self
                .cleanup_report(Health::stalled(reasons::ORGANIZATION_CHANGED, msg.clone()))
                .await?
            {
                self.event(EventType::Warning, events::ORGANIZATION_CHANGED, msg).await;
            }
            return Err(Error::Waiting(
                "organization changed",
                self.ctx.timing.credentials_retry,
            ));
        }
        let audience_id = match st.audience_id.clone() {
            Some(id) => {
                if st.ownership.is_none() && !self.cleanup_legacy_owned(&s, &id).await? {
                    self.event(
                        EventType::Warning,
                        events::AUDIENCE_NOT_DELETED,
                        format!(
                            "Left audience {id} in AEP: this object recorded it before ownership was tracked, and \
                             neither its create operation nor spec.audienceId proves it is this object's"
                        ),
                    )
                    .await;
                    return release;
                }
                id
            }
            None => match self.cleanup_unfinished_create(&s).await? {
                Resolved::Audience(id) => id,
                Resolved::Nothing => return release,
            },
        };
        self.cleanup_audience(&s, &audience_id).await
    }

    /// Objects recorded by releases before ownership was tracked: prove the audience is theirs.
    async fn cleanup_legacy_owned(&mut self, s: &impl AepApi, audience_id: &str) -> Result<bool, Error> {
        if self.obj.spec.audience_id.as_deref() == Some(audience_id) {
            return Ok(true);
        }
        let Some(op) = self.status.operation_id.clone() else {
            return Ok(false);
        };
        match s.get_operation(&op).await {
            Ok(op) => Ok(op.audience_id.as_deref() == Some(audience_id)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self
                .cleanup_retry(e, "reading the create operation before deleting")
                .await?),
        }
    }

    /// The object has no audience id yet: a create is in flight or its answer was lost. Wait for
    /// the operation (or the settle window), then resolve the audience by proof.
    async fn cleanup_unfinished_create(&mut self, s: &impl AepApi) -> Result<Resolved, Error> {
        if let Some(op) = self.status.operation_id.clone() {
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
                        self.cleanup_report(Health::progressing(reasons::DELETING, msg)).await?;
                        return Err(Error::Waiting("create in flight", self.ctx.timing.operation_poll));
                    }
                },
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(self
                        .cleanup_retry(e, "reading the create operation before deleting")
                        .await?);
                }
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
            Err(e) => {
                return Err(self
                    .cleanup_retry(e, "looking for the audience before deleting")
                    .await?);
            }
        }
        if let Some(since) = self.status.create_pending_since.as_ref().map(|t| t.0) {
            let age = elapsed(since, now().0);
            let settle = self.ctx.timing.create_settle;
            if age < settle {
                let msg = format!(
                    "The answer to this object's create was lost; looking for its audience by customAudienceId for \
                     another {}s before releasing the object",
                    (settle - age).as_secs()
                );
                self.cleanup_report(Health::progressing(reasons::DELETING, msg)).await?;
                return Err(Error::Waiting(
                    "create outcome unknown",
                    (settle - age).min(self.ctx.timing.operation_poll),
                ));
            }
        }
        // Nothing proves an audience is ours. Name any that could be, for a human to check.
        let sent_at = self.status.create_pending_since.as_ref().map(|t| t.0.as_second());
        let found = match s.find_audiences_by_name(self.audience_name()).await {
            Ok(found) => Found::classify(self.live(found), &cid, sent_at.or(Some(i64::MIN / 2))),
            Err(e) => {
                return Err(self
                    .cleanup_retry(e, "looking for the audience before deleting")
                    .await?);
            }
        };
        if let Some(ours) = found.ours {
            self.claim(&ours.id, OwnershipProof::CustomAudienceId);
            self.write_status().await?;
            return Ok(Resolved::Audience(ours.id));
        }
        if !found.unattributable.is_empty() {
            let ids: Vec<&str> = found.unattributable.iter().map(|a| a.id.as_str()).collect();
            self.event(
                EventType::Warning,
                events::AUDIENCE_NOT_DELETED,
                format!(
                    "Released the object without deleting anything in AEP: its create's outcome is unknown, and audience(s) {} \
                     named {:?} cannot be proven to be its own. Check them and delete in AEP by hand if one was made by this object",
                    ids.join(", "),
                    self.audience_name()
                ),
            )
            .await;
        }
        Ok(Resolved::Nothing)
    }

    async fn cleanup_audience(&mut self, s: &impl AepApi, audience_id: &str) -> Result<Action, Error> {
        match s.delete_audience(audience_id).await {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                return Err(self
                    .cleanup_retry(e, &format!("deleting audience {audience_id}"))
                    .await?);
            }
        }
        tracing::info!(audience_id, "Deleted audience");
        self.event(
            EventType::Normal,
            events::AUDIENCE_DELETED,
            format!("Deleted audience {audience_id} in AEP"),
        )
        .await;
        Ok(Action::await_change())
    }

    /// Reports an AEP failure during deletion and returns the error that keeps the finalizer and
    /// backs off: transient failures as `Reconciling/Retrying`, refusals as `Stalled`.
    async fn cleanup_retry(&mut self, e: crate::aep::Error, what: &str) -> Result<Error, Error> {
        let msg = stable_message(&format!("{what}: {}", e.message()));
        let (health, event) = match e.kind() {
            ErrorKind::Retryable { .. } | ErrorKind::OutcomeUnknown => {
                (Health::progressing(reasons::RETRYING, msg.clone()), events::AEP_ERROR)
            }
            ErrorKind::PermissionDenied => (
                Health::stalled(reasons::PERMISSION_DENIED, msg.clone()),
                events::AEP_ERROR,
            ),
            ErrorKind::Unauthorized => (
                Health::stalled(reasons::CREDENTIALS_INVALID, msg.clone()),
                events::CREDENTIALS_ERROR,
            ),
            _ => (
                Health::stalled(
                    reasons::DELETE_REFUSED,
                    format!("AEP refused: {msg}. The finalizer stays until AEP accepts the deletion"),
                ),
                events::DELETE_REFUSED,
            ),
        };
        if self.cleanup_report(health).await? {
            self.event(EventType::Warning, event, msg).await;
        }
        Ok(Error::Aep(Box::new(e)))
    }

    /// Writes the deletion's health; true when it changed.
    async fn cleanup_report(&mut self, health: Health) -> Result<bool, Error> {
        self.record_health(&health, false);
        if self.status == self.original {
            return Ok(false);
        }
        self.write_status().await?;
        Ok(true)
    }
}
