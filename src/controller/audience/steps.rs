//! The ExternalAudience steps that call AEP, one method each, and [`AudiencePass::act`], which
//! carries a decision out. Each step makes at most one mutating AEP call and writes its marker
//! first; it interprets AEP's answers (whose an audience found is, whether a run exists) but
//! never revisits the decision that chose it.
//!
//! Ownership: an audience becomes this object's only with proof: the id came from the create
//! operation it recorded, the user named it in `spec.audienceId`, it carries the
//! `customAudienceId` only this object sends, or the object's ownership record names it and AEP
//! confirms it. A name proves nothing: a name held by anything else stalls with
//! `AudienceNameTaken`, and a lost create whose audience cannot be attributed stalls with
//! `CreateOutcomeUnknown` rather than guess.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{ResourceExt, runtime::events::EventType};

use super::{
    AudiencePass, Creds,
    decide::{self, Decision, Resend, Step},
    spec::{self, Attribution, attribute},
};
use crate::{
    aep::{self, ErrorKind, OperationStatus, RunStatus, UpsAudience},
    api::{
        EventReason, IngestionRun, OWNERSHIP_RECORD, ObservedAudience, OwnershipProof, RUN_HISTORY_LIMIT, Reason,
        RunCounts, RunPending, RunState,
    },
    config::{MissingAudiencePolicy, RunWindow},
    controller::{
        clock::now,
        core::{Error, Next, Outcome, verdict::Phase},
        expiry,
        reads::drift_digest,
        seams::AepApi,
    },
    status::{Health, stable_message},
};

/// Whether an audience record is one AEP deleted (it may still be listed, e.g. by the
/// `customAudienceId` lookup, which also returns inactive and deleted audiences).
pub(crate) fn is_deleted(a: &UpsAudience) -> bool {
    a.lifecycle_state
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case("deleted"))
}

/// Whether an audience still exists, after a 404 on one of its routes.
pub(crate) enum Presence {
    /// Both lookups say it is gone.
    Gone,
    /// A lookup still finds it.
    Exists,
}

/// Audiences found by name, split by what proves (or disproves) they are this object's.
#[derive(Default)]
pub(crate) struct Found {
    pub(crate) ours: Option<UpsAudience>,
    pub(crate) foreign: Vec<UpsAudience>,
    pub(crate) unattributable: Vec<UpsAudience>,
}

impl Found {
    pub(crate) fn classify(found: Vec<UpsAudience>, custom_audience_id: &str, sent_at: Option<i64>) -> Self {
        let mut out = Found::default();
        for a in found {
            match attribute(&a, custom_audience_id, sent_at) {
                Attribution::Ours => out.ours = out.ours.or(Some(a)),
                Attribution::Foreign => out.foreign.push(a),
                Attribution::Unattributable => out.unattributable.push(a),
            }
        }
        out
    }
}

impl AudiencePass<'_> {
    /// Carries `decision` out: a step without an AEP call yields its outcome at once; the others
    /// make their calls through `s`.
    pub(crate) async fn act(&mut self, decision: Decision, s: &impl AepApi) -> Result<Outcome, Error> {
        if !matches!(decision.step, Step::Wait | Step::Hold { .. } | Step::AwaitCache) {
            // Whatever blocked an earlier generation (or was confirmed away) no longer holds.
            self.status.blocked = None;
        }
        if let Some(out) = super::without_call(&decision, self.gathered.now) {
            return Ok(out);
        }
        match decision.step {
            Step::ScheduleDriftCheck { at } => {
                self.status.next_drift_check = Some(Time(at));
                Ok(Outcome::planned(Next::Exactly(super::until(at, self.gathered.now))))
            }
            Step::Create => self.create(s).await,
            Step::RecoverCreate {
                resend,
                confirmed,
                token,
            } => self.recover_create(s, resend, confirmed, &token).await,
            Step::PollOperation { operation_id } => self.poll_operation(s, &operation_id).await,
            Step::Adopt { audience_id } => self.adopt(s, &audience_id).await,
            Step::Reattach { audience_id } => self.reattach(s, &audience_id).await,
            Step::Observe { audience_id } => self.observe(s, &audience_id).await,
            Step::Update { audience_id } => self.update(s, &audience_id).await,
            Step::PollRun { audience_id, run_id } => self.poll_run(s, &audience_id, &run_id).await,
            Step::RecoverRun { audience_id } => self.recover_run(s, &audience_id).await,
            Step::StartRun {
                audience_id,
                scheduled_for,
            } => self.start_run(s, &audience_id, scheduled_for).await,
            Step::ExtendTtl { audience_id } => self.extend_ttl(s, &audience_id).await,
            Step::CheckDrift { audience_id } => self.check_drift(s, &audience_id).await,
            other => unreachable_step(&other),
        }
    }

    /// The drift interval of this object (the annotation's, else the flag's).
    fn resync_interval(&self) -> Duration {
        self.facts().resync.unwrap_or(self.ctx.timing.resync)
    }

    /// AEP was just read and matches (or was corrected): the next drift check is one interval away.
    /// Remembers the drift check made now (in memory: the schedule's anchor is in status, so a
    /// check writes nothing).
    fn checked(&mut self) {
        let key = self.pass.key();
        self.shared.drift_checked(key, self.gathered.now);
        self.gathered.last_drift_check = Some(self.gathered.now);
    }

    /// Records the claim on `audience_id` (with its proof and when it was made).
    pub(crate) fn claim(&mut self, audience_id: &str, proof: OwnershipProof) {
        self.status.audience_id = Some(audience_id.to_owned());
        self.status.ownership = Some(proof);
        self.status.claimed_at = Some(now());
    }

    /// Drops audiences that cannot be this object's live audience: deleted ones, and ones it
    /// lost before (deleted behind its back, then re-created).
    pub(crate) fn live(&self, found: Vec<UpsAudience>) -> Vec<UpsAudience> {
        found
            .into_iter()
            .filter(|a| !is_deleted(a) && !self.status.lost_audience_ids.contains(&a.id))
            .collect()
    }

    // ----- create -----------------------------------------------------------------------------

    fn name_taken(&self, holder: Option<&str>, detail: &str) -> Outcome {
        let name = self.audience_name();
        let sandbox = &self.obj.spec.sandbox;
        let msg = match holder {
            Some(id) => format!(
                "AEP audience name {name:?} in sandbox {sandbox:?} already belongs to audience {id}, which this object \
                 cannot prove it created. To manage that audience, set spec.audienceId: {id} (for manifests rebuilt \
                 from Git: `controller import --sandbox {sandbox} --secret {secret} --namespace {ns} --attach-to \
                 <manifest folder>` writes it into them); otherwise choose another spec.name (in a new ExternalAudience)",
                secret = self.obj.spec.credentials_secret_ref.name,
                ns = self.obj.namespace().unwrap_or_default(),
            ),
            None => format!(
                "AEP refused to create audience {name:?} in sandbox {sandbox:?}: {detail}. Another audience holds the \
                 name (or is being created with it). To manage it, set spec.audienceId to its id; otherwise choose \
                 another spec.name (in a new ExternalAudience)"
            ),
        };
        Outcome::blocked(
            Reason::AudienceNameTaken,
            stable_message(&msg),
            EventReason::AudienceNameTaken,
        )
    }

    pub(crate) async fn create(&mut self, s: &impl AepApi) -> Result<Outcome, Error> {
        let cid = self.custom_audience_id()?;
        let name = self.audience_name().to_owned();
        let found = match s.find_audiences_by_name(&name).await {
            Ok(found) => Found::classify(self.live(found), &cid, None),
            Err(e) => return Ok(self.failure(&e, "looking up the audience name", Phase::Apply)),
        };
        if let Some(ours) = found.ours {
            return self.record_recovered(&ours.id).await;
        }
        if let Some(holder) = found.foreign.first() {
            return Ok(self.name_taken(Some(&holder.id), ""));
        }
        self.send_create(s, cid, false).await
    }

    /// Marker first (conditioned on the object not having changed), then the POST. `resend`: a
    /// create whose answer was lost was sent before (its outcome is settled as unknown, not as
    /// "nothing", until proof says otherwise).
    async fn send_create(&mut self, s: &impl AepApi, cid: String, resend: bool) -> Result<Outcome, Error> {
        let Some(req) = spec::create_request(&self.obj.spec, self.audience_name(), Some(&cid)) else {
            return Ok(Outcome::blocked(
                Reason::RejectedByAEP,
                "spec.sourceSpec: Required value: the audience must be created, and AEP needs the location of its CSV \
                 file (or set spec.audienceId to adopt an existing audience)"
                    .to_owned(),
                EventReason::AEPError,
            ));
        };
        self.status.create_pending_since = Some(now());
        self.status.custom_audience_id = Some(cid.clone());
        self.write_marker().await?;
        match s.create_audience(&req).await {
            Ok(resp) => {
                tracing::info!(operation_id = %resp.operation_id, "Requested audience creation");
                self.status.operation_id = Some(resp.operation_id.clone());
                self.status.create_pending_since = None;
                self.status.applied_spec_hash = Some(spec::updatable_hash(&self.obj.spec));
                Ok(Outcome::planned(Next::After(self.ctx.timing.operation_poll)).note(
                    EventType::Normal,
                    EventReason::AudienceCreateRequested,
                    format!(
                        "Requested creation of audience {:?} (operation {})",
                        self.audience_name(),
                        resp.operation_id
                    ),
                ))
            }
            Err(e) => match e.kind() {
                // After a lost create, the name may be held by the audience that create made
                // (visible only now): the outcome stays unknown, the marker stays, and the next
                // pass looks for proof again.
                ErrorKind::Conflict if resend => {
                    let msg = stable_message(&format!(
                        "AEP refused the new create of audience {:?} ({}): the audience an earlier create of this \
                         object (whose answer was lost) may have made could hold the name; looking for it by proof \
                         before anything is sent again",
                        self.audience_name(),
                        e.message()
                    ));
                    Ok(Outcome::with(
                        Health::progressing(Reason::ConfirmingCreate, msg.clone()),
                        Next::After(self.ctx.timing.operation_poll),
                    )
                    .note(EventType::Warning, EventReason::AEPError, msg))
                }
                // AEP refused: nothing was created, and a name conflict is not proof of anything.
                ErrorKind::Conflict => {
                    self.status.create_pending_since = None;
                    Ok(self.name_taken(None, e.message()))
                }
                // The answer was lost after sending: the create may have happened. Keep the marker;
                // the next pass looks for proof instead of sending again.
                ErrorKind::OutcomeUnknown => {
                    let msg = stable_message(&format!(
                        "The answer to the create of audience {:?} was lost ({}); looking for it by proof before anything is sent again",
                        self.audience_name(),
                        e.message()
                    ));
                    Ok(Outcome::with(
                        Health::progressing(Reason::ConfirmingCreate, msg.clone()),
                        Next::After(self.ctx.timing.operation_poll),
                    )
                    .note(EventType::Warning, EventReason::AEPError, msg))
                }
                // Not processed (429, 503, not sent) or refused: nothing was created.
                _ => {
                    self.status.create_pending_since = None;
                    Ok(self.failure(&e, "creating the audience", Phase::Apply))
                }
            },
        }
    }

    /// Records an audience found carrying this object's `customAudienceId`.
    async fn record_recovered(&mut self, audience_id: &str) -> Result<Outcome, Error> {
        tracing::info!(audience_id, "Found the audience by its customAudienceId");
        self.claim(audience_id, OwnershipProof::CustomAudienceId);
        self.status.create_pending_since = None;
        // The create carried the spec of its time: PATCH once to be sure.
        self.status.applied_spec_hash = None;
        Ok(Outcome::planned(Next::After(Duration::ZERO)).note(
            EventType::Normal,
            EventReason::AudienceRecovered,
            format!(
                "Found audience {audience_id} carrying this object's customAudienceId (its create's answer was lost)"
            ),
        ))
    }

    /// A create was sent but its answer was lost (or its operation is unknown): find the audience
    /// by proof. Nothing is sent again until its absence is proven (no audience with the name after
    /// the settle window); an audience nobody can attribute stops for a human.
    pub(crate) async fn recover_create(
        &mut self,
        s: &impl AepApi,
        resend: Resend,
        confirmed: bool,
        token: &str,
    ) -> Result<Outcome, Error> {
        let cid = self.custom_audience_id()?;
        let marker_at = self
            .status
            .create_pending_since
            .as_ref()
            .map_or(self.gathered.now, |t| t.0);
        // After an operation AEP forgot, the create may be older than the marker (the id is kept
        // as a record until the audience is lost and re-created).
        let sent_at = if self.status.lost_operation_id.is_some() {
            i64::MIN / 2
        } else {
            marker_at.as_second()
        };
        match s.find_audiences_by_custom_id(&cid).await {
            Ok(found) => {
                if let Some(a) = self.live(found).first() {
                    return self.record_recovered(&a.id).await;
                }
            }
            Err(e) => return Ok(self.failure(&e, "looking for the audience by customAudienceId", Phase::Apply)),
        }
        let found = match s.find_audiences_by_name(self.audience_name()).await {
            Ok(found) => Found::classify(self.live(found), &cid, Some(sent_at)),
            Err(e) => return Ok(self.failure(&e, "looking for the audience by name", Phase::Apply)),
        };
        if let Some(ours) = found.ours {
            return self.record_recovered(&ours.id).await;
        }
        if let Resend::Not(remaining) = resend {
            let msg = format!(
                "The answer to the create of audience {:?} was lost; no audience carries this object's customAudienceId \
                 yet. Looking again until the settle window ends in {}s; nothing is created meanwhile",
                self.audience_name(),
                remaining.as_secs()
            );
            return Ok(Outcome::with(
                Health::progressing(Reason::ConfirmingCreate, msg),
                Next::After(remaining.min(self.ctx.timing.operation_poll)),
            ));
        }
        // An audience the lost create made is visible by now.
        if self.obj.spec.audience_id.is_some() {
            // The user named the audience to manage: adopt it next pass.
            self.status.create_pending_since = None;
            return Ok(Outcome::planned(Next::After(Duration::ZERO)));
        }
        if !found.unattributable.is_empty() {
            if confirmed {
                tracing::info!("Create of unknown outcome confirmed absent by the user; creating again");
                return self.send_create(s, cid, true).await;
            }
            let candidates: Vec<&UpsAudience> = found.unattributable.iter().collect();
            let msg = decide::create_outcome_unknown_message(
                &self.name,
                self.audience_name(),
                &self.obj.spec.sandbox,
                token,
                &candidates,
            );
            return Ok(Outcome::blocked(
                Reason::CreateOutcomeUnknown,
                stable_message(&msg),
                EventReason::CreateOutcomeUnknown,
            ));
        }
        if let Some(holder) = found.foreign.first() {
            self.status.create_pending_since = None;
            return Ok(self.name_taken(Some(&holder.id), ""));
        }
        // Proven absent: the lost create made nothing.
        tracing::info!("No audience with the name exists after the settle window; creating again");
        self.send_create(s, cid, true).await
    }

    pub(crate) async fn poll_operation(&mut self, s: &impl AepApi, operation_id: &str) -> Result<Outcome, Error> {
        let op = match s.get_operation(operation_id).await {
            Ok(op) => op,
            Err(e) if e.kind() == ErrorKind::NotFound => return self.operation_lost(operation_id).await,
            Err(e) => return Ok(self.failure(&e, "reading the create operation", Phase::Apply)),
        };
        match (op.status, op.audience_id) {
            (OperationStatus::Success, Some(id)) => {
                tracing::info!(audience_id = %id, "Audience created");
                self.claim(&id, OwnershipProof::CreateOperation);
                Ok(Outcome::planned(Next::After(Duration::ZERO)).note(
                    EventType::Normal,
                    EventReason::AudienceCreated,
                    format!("Created audience {id}"),
                ))
            }
            (OperationStatus::Success, None) => Ok(Outcome::blocked(
                Reason::UnexpectedAEPResponse,
                format!(
                    "AEP operation {operation_id} reports SUCCESS but no audienceId. Check in AEP whether audience {:?} \
                     exists; if it does, set spec.audienceId to its id",
                    self.audience_name()
                ),
                EventReason::UnexpectedAEPResponse,
            )),
            (OperationStatus::Failed, _) => {
                let msg = stable_message(&format!(
                    "AEP failed to create the audience (operation {operation_id}): {}",
                    op.message.as_deref().unwrap_or("AEP gave no reason")
                ));
                self.status.failed_operation_id = self.status.operation_id.take();
                Ok(Outcome::blocked(
                    Reason::OperationFailed,
                    msg,
                    EventReason::OperationFailed,
                ))
            }
            _ => Ok(Outcome::planned(Next::After(self.ctx.timing.operation_poll))),
        }
    }

    /// AEP no longer knows a recorded create operation: look for its audience by proof.
    async fn operation_lost(&mut self, operation_id: &str) -> Result<Outcome, Error> {
        self.status.lost_operation_id = self.status.operation_id.take();
        self.status.create_pending_since = Some(now());
        if self.status.custom_audience_id.is_none() {
            self.status.custom_audience_id = Some(self.custom_audience_id()?);
        }
        Ok(Outcome::planned(Next::After(Duration::ZERO)).note(
            EventType::Warning,
            EventReason::OperationLost,
            format!("AEP no longer knows create operation {operation_id}; looking for its audience by proof"),
        ))
    }

    pub(crate) async fn adopt(&mut self, s: &impl AepApi, audience_id: &str) -> Result<Outcome, Error> {
        match s.get_audience(audience_id).await {
            Ok(a) if !a.is_external() => Ok(Outcome::blocked(
                Reason::NotAnExternalAudience,
                format!(
                    "spec.audienceId {audience_id} names a {} audience (origin {}), not an external audience; only \
                     external audiences (CUSTOM_UPLOAD) can be managed",
                    a.r#type.as_deref().unwrap_or("non-external"),
                    a.origin_name.as_deref().unwrap_or("unknown")
                ),
                EventReason::AEPError,
            )),
            Ok(a) if is_deleted(&a) => Ok(self.adopt_missing(audience_id)),
            Ok(_) => {
                self.claim(audience_id, OwnershipProof::SpecAudienceId);
                self.status.adopted = true;
                self.status.observed = None;
                self.status.create_pending_since = None;
                self.status.applied_spec_hash = None;
                self.status.ingested_spec_hash = Some(spec::ingest_hash(&self.obj.spec, self.audience_name()));
                Ok(Outcome::planned(Next::After(Duration::ZERO)).note(
                    EventType::Normal,
                    EventReason::AudienceAdopted,
                    format!("Adopted audience {audience_id}"),
                ))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(self.adopt_missing(audience_id)),
            Err(e) => Ok(self.failure(&e, "reading the audience to adopt", Phase::Apply)),
        }
    }

    /// A restored object (no status, an ownership record): re-attach to the recorded audience
    /// once AEP confirms it is the one the record describes. Reads only: the recorded spec hashes
    /// come back with it, so no PATCH and no run is owed unless the spec really changed.
    pub(crate) async fn reattach(&mut self, s: &impl AepApi, audience_id: &str) -> Result<Outcome, Error> {
        let Some(Ok(record)) = self.gathered.record.clone() else {
            return Ok(Outcome::planned(Next::After(Duration::ZERO)));
        };
        let retry = self.ctx.timing.credentials_retry;
        let not_confirmed = |why: String| {
            let msg = stable_message(&format!(
                "The ownership record (annotation {OWNERSHIP_RECORD}) names audience {audience_id}, but {why}. Nothing \
                 is sent to AEP for it: restore what changed, or remove the annotation to create a new audience (or \
                 set spec.audienceId to adopt one)"
            ));
            Ok(Outcome::with(
                Health::stalled(Reason::OwnershipNotConfirmed, msg.clone()),
                Next::After(retry),
            )
            .note(EventType::Warning, EventReason::AEPError, msg))
        };
        if let Creds::Ready(org, platform) = &self.gathered.credentials
            && (record.org_id != *org || record.platform_url != *platform)
        {
            let msg = format!(
                "The ownership record (annotation {OWNERSHIP_RECORD}) says audience {audience_id} lives in IMS org {} \
                 at {}, but the credentials Secret {:?} names org {org} at {platform}. Nothing is sent to either org \
                 for it: restore the Secret, or remove the annotation to create a new audience in the Secret's org",
                record.org_id, record.platform_url, self.obj.spec.credentials_secret_ref.name
            );
            return Ok(Outcome::with(
                Health::stalled(Reason::OrganizationChanged, msg.clone()),
                Next::After(retry),
            )
            .note(EventType::Warning, EventReason::OrganizationChanged, msg));
        }
        let found = match s.get_audience(audience_id).await {
            Ok(a) => a,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return not_confirmed(format!("it does not exist in sandbox {:?}", self.obj.spec.sandbox));
            }
            Err(e) => return Ok(self.failure(&e, "reading the recorded audience", Phase::Apply)),
        };
        if is_deleted(&found) {
            return not_confirmed("AEP reports it deleted".to_owned());
        }
        if !found.is_external() {
            return not_confirmed(format!(
                "it is a {} audience, not an external one",
                found.r#type.as_deref().unwrap_or("non-external")
            ));
        }
        if let Some(org) = found.ims_org_id.as_deref()
            && org != record.org_id
        {
            return not_confirmed(format!("AEP says it belongs to org {org}"));
        }
        if let Some(sandbox) = found.sandbox.as_ref().map(|s| s.sandbox_name.as_str())
            && !sandbox.is_empty()
            && sandbox != self.obj.spec.sandbox
        {
            return not_confirmed(format!("AEP says it lives in sandbox {sandbox:?}"));
        }
        // AEP echoes a caller's identifier in the record's audienceId (the system id otherwise).
        if let (Some(recorded), Some(echoed)) = (&record.custom_audience_id, found.audience_id.as_deref())
            && echoed != found.id
            && echoed != recorded
        {
            return not_confirmed(format!(
                "it carries customAudienceId {echoed:?}, not the recorded {recorded:?}"
            ));
        }
        let runs = match s.list_runs(audience_id).await {
            Ok(runs) => runs,
            Err(e) => return Ok(self.failure(&e, "reading the recorded audience's runs", Phase::Apply)),
        };
        tracing::info!(audience_id, "Re-attached to the audience named by the ownership record");
        self.claim(audience_id, OwnershipProof::RestoreRecord);
        self.status.custom_audience_id = record.custom_audience_id.clone();
        self.status.applied_spec_hash = record.applied_spec_hash.clone();
        self.status.ingested_spec_hash = record.ingested_spec_hash.clone();
        self.status.create_pending_since = None;
        self.record_runs_seen(&runs);
        self.checked();
        Ok(Outcome::planned(Next::After(Duration::ZERO)).note(
            EventType::Normal,
            EventReason::AudienceReattached,
            format!(
                "Re-attached to audience {audience_id} named by the ownership record (checked in AEP: org {}, sandbox \
                 {:?}{}); nothing was created or ingested",
                record.org_id,
                self.obj.spec.sandbox,
                if record.custom_audience_id.is_some() && found.audience_id.as_deref() != Some(found.id.as_str()) {
                    ", customAudienceId"
                } else {
                    ""
                }
            ),
        ))
    }

    /// Takes what AEP's runs list says into status: the latest run, and the runs counted against
    /// the per-audience limit.
    fn record_runs_seen(&mut self, runs: &[aep::Run]) {
        let latest = runs.iter().max_by_key(|r| r.created_at.unwrap_or_default());
        self.status.last_run = latest.map(|r| {
            let state = run_state(&r.status);
            IngestionRun {
                run_id: r.run_id.clone(),
                generation: self.generation,
                status: state,
                start_time: r
                    .created_at
                    .and_then(|t| jiff::Timestamp::from_second(t).ok())
                    .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time),
                end_time: None,
                message: run_message(r),
            }
        });
        let today = now().0.as_second().div_euclid(86_400);
        self.status.run_counts = Some(RunCounts {
            total: u32::try_from(runs.len()).unwrap_or(u32::MAX),
            day: now().0.strftime("%Y-%m-%d").to_string(),
            today: u32::try_from(
                runs.iter()
                    .filter(|r| r.created_at.is_some_and(|t| t.div_euclid(86_400) == today))
                    .count(),
            )
            .unwrap_or(u32::MAX),
        });
    }

    /// `managementPolicy: Observe`: read the audience and its runs, and say where AEP differs
    /// from the spec. Reads only.
    pub(crate) async fn observe(&mut self, s: &impl AepApi, audience_id: &str) -> Result<Outcome, Error> {
        self.checked();
        let again = match self.decide().step {
            Step::Idle { next: Some(d), .. } => Next::Exactly(d),
            _ => Next::Exactly(self.resync_interval().max(Duration::from_secs(1))),
        };
        let missing = |this: &Self| {
            let msg = format!(
                "Audience {audience_id} (spec.audienceId) does not exist in sandbox {:?}; looking again later \
                 (managementPolicy: Observe: nothing is created)",
                this.obj.spec.sandbox
            );
            Ok(Outcome::with(
                Health::stalled(Reason::AudienceNotFound, msg.clone()),
                Next::After(this.ctx.timing.credentials_retry),
            )
            .note(EventType::Warning, EventReason::AudienceMissing, msg))
        };
        let found = match s.get_audience(audience_id).await {
            Ok(a) if !is_deleted(&a) => a,
            Ok(_) => return missing(self),
            Err(e) if e.kind() == ErrorKind::NotFound => return missing(self),
            Err(e) => return Ok(self.failure(&e, "reading the observed audience", Phase::Apply)),
        };
        let runs = match s.list_runs(audience_id).await {
            Ok(runs) => runs,
            Err(e) if e.kind() == ErrorKind::NotFound => return missing(self),
            Err(e) => return Ok(self.failure(&e, "reading the observed audience's runs", Phase::Apply)),
        };
        let mut differences = Vec::new();
        if found.name != self.audience_name() {
            differences.push("name".to_owned());
        }
        if found.description.as_deref().unwrap_or("") != self.obj.spec.description.as_deref().unwrap_or("") {
            differences.push("description".to_owned());
        }
        let (mut have, mut want) = (found.labels.clone(), self.obj.spec.labels.clone());
        have.sort();
        want.sort();
        if have != want {
            differences.push("labels".to_owned());
        }
        let observed = ObservedAudience {
            name: found.name.clone(),
            description: found.description.clone(),
            labels: found.labels.clone(),
            lifecycle_state: found.lifecycle_state.clone(),
            differences: differences.clone(),
        };
        let was = self.original.observed.as_ref().map(|o| o.differences.clone());
        self.status.audience_id = Some(audience_id.to_owned());
        self.status.ownership = Some(OwnershipProof::Observed);
        self.status.claimed_at = None;
        self.status.observed = Some(Box::new(observed));
        self.status.run_pending = None;
        self.record_runs_seen(&runs);
        let health = if differences.is_empty() {
            Health::ready(format!(
                "Observing audience {audience_id} (managementPolicy: Observe): AEP matches the spec"
            ))
        } else {
            Health::ready(format!(
                "Observing audience {audience_id} (managementPolicy: Observe): AEP differs from the spec in {}; \
                 nothing is changed in AEP",
                differences.join(", ")
            ))
        };
        let mut out = Outcome::with(health, again);
        if !differences.is_empty() && was.as_ref() != Some(&differences) {
            out = out.note(
                EventType::Normal,
                EventReason::DriftDetected,
                format!(
                    "Observed audience {audience_id} differs from the spec in {}",
                    differences.join(", ")
                ),
            );
        }
        Ok(out)
    }

    /// The audience to adopt does not exist: re-checked on a long interval (it may still be on
    /// its way to lookups).
    fn adopt_missing(&self, audience_id: &str) -> Outcome {
        let msg = format!(
            "spec.audienceId {audience_id} does not exist in sandbox {:?}",
            self.obj.spec.sandbox
        );
        Outcome::with(
            Health::stalled(Reason::AudienceNotFound, msg.clone()),
            Next::After(self.ctx.timing.credentials_retry),
        )
        .note(EventType::Warning, EventReason::AEPError, msg)
    }

    /// A 404 on one of the audience's routes: both lookups are asked before anything is
    /// concluded (they may lag behind the service, and a 404 may be about a run, not the
    /// audience). `Err` carries the outcome of a lookup that failed.
    pub(crate) async fn presence(&mut self, s: &impl AepApi, audience_id: &str) -> Result<Presence, Outcome> {
        match s.get_audience(audience_id).await {
            Ok(a) if !is_deleted(&a) => return Ok(Presence::Exists),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(self.failure(&e, "confirming whether the audience still exists", Phase::Apply)),
        }
        match s.list_runs(audience_id).await {
            Ok(_) => Ok(Presence::Exists),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Presence::Gone),
            Err(e) => Err(self.failure(&e, "confirming whether the audience still exists", Phase::Apply)),
        }
    }

    /// After a 404 from `what` on the audience: confirmed gone → the missing-audience policy;
    /// still there → try again soon.
    pub(crate) async fn confirm_missing(
        &mut self,
        s: &impl AepApi,
        audience_id: &str,
        what: &str,
    ) -> Result<Outcome, Error> {
        match self.presence(s, audience_id).await {
            Ok(Presence::Gone) => self.audience_missing(audience_id).await,
            Ok(Presence::Exists) => {
                let msg = format!("AEP answered 404 {what}, but audience {audience_id} still exists; trying again");
                Ok(Outcome::with(
                    Health::progressing(Reason::Retrying, msg),
                    Next::After(self.ctx.timing.operation_poll),
                ))
            }
            Err(out) => Ok(out),
        }
    }

    pub(crate) async fn update(&mut self, s: &impl AepApi, audience_id: &str) -> Result<Outcome, Error> {
        match s
            .patch_audience(audience_id, &spec::patch_request(&self.obj.spec))
            .await
        {
            Ok(_) => {
                tracing::info!(audience_id, "Updated audience");
                self.status.applied_spec_hash = Some(spec::updatable_hash(&self.obj.spec));
                Ok(Outcome::planned(Next::After(Duration::ZERO)).note(
                    EventType::Normal,
                    EventReason::AudienceUpdated,
                    format!("Updated description, labels, field labels and ttlInDays of audience {audience_id}"),
                ))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => self.confirm_missing(s, audience_id, "to the PATCH").await,
            Err(e) => Ok(self.failure(&e, "updating the audience", Phase::Apply)),
        }
    }

    // ----- runs -------------------------------------------------------------------------------

    pub(crate) fn record_run(
        &mut self,
        run_id: String,
        status: RunState,
        pending: &RunPending,
        message: Option<String>,
    ) {
        if let Some(prev) = self.status.last_run.take() {
            self.status.run_history.insert(0, prev);
            self.status.run_history.truncate(RUN_HISTORY_LIMIT);
        }
        self.status.last_run = Some(IngestionRun {
            run_id,
            generation: pending.generation,
            status,
            start_time: Some(pending.since.clone()),
            end_time: (status != RunState::Processing).then(now),
            message,
        });
        self.status.ingested_spec_hash = Some(pending.spec_hash.clone());
        self.status.ingested_run_request = pending.run_request.clone();
        if let Some(t) = &pending.scheduled_for {
            self.status.last_scheduled_time = Some(t.clone());
        }
        let org = self.status.org_id.clone().unwrap_or_default();
        self.shared.budget.confirm(&org, &self.obj.spec.sandbox, &self.key());
        let day = pending.since.0.strftime("%Y-%m-%d").to_string();
        let counts = self.status.run_counts.get_or_insert_with(Default::default);
        counts.total += 1;
        if counts.day == day {
            counts.today += 1;
        } else {
            counts.day = day;
            counts.today = 1;
        }
        self.status.run_pending = None;
    }

    pub(crate) async fn start_run(
        &mut self,
        s: &impl AepApi,
        audience_id: &str,
        scheduled_for: Option<Time>,
    ) -> Result<Outcome, Error> {
        // The decider checked that the spec has ingestion settings.
        let Some(request) = spec::start_run_request(&self.obj.spec) else {
            return Ok(Outcome::planned(Next::Await));
        };
        let pending = RunPending {
            since: now(),
            generation: self.generation,
            spec_hash: spec::ingest_hash(&self.obj.spec, self.audience_name()),
            run_request: self.facts().run_request.map(str::to_owned),
            scheduled_for,
        };
        self.status.run_pending = Some(Box::new(pending.clone()));
        if let Err(e) = self.write_marker().await {
            // Nothing was sent: the share of the budget granted for it goes back.
            self.refund_run();
            return Err(e);
        }
        match s.start_run(audience_id, &request).await {
            Ok(run) => {
                tracing::info!(audience_id, run_id = %run.run_id, "Started ingestion run");
                self.ctx.metrics.count_run("started");
                self.record_run(run.run_id.clone(), RunState::Processing, &pending, None);
                Ok(Outcome::planned(Next::After(self.ctx.timing.run_poll)).note(
                    EventType::Normal,
                    EventReason::IngestionStarted,
                    format!(
                        "Started ingestion run {} for generation {}",
                        run.run_id, self.generation
                    ),
                ))
            }
            // The answer was lost after sending: the run may exist. Keep the marker; the next
            // pass looks for it in the audience's runs before starting another.
            Err(e) if e.kind() == ErrorKind::OutcomeUnknown => {
                let msg = stable_message(&format!(
                    "The answer to starting an ingestion run was lost ({}); looking for the run before starting another",
                    e.message()
                ));
                Ok(Outcome::with(
                    Health::progressing(Reason::RunPending, msg.clone()),
                    Next::After(self.ctx.timing.operation_poll),
                )
                .note(EventType::Warning, EventReason::AEPError, msg))
            }
            Err(e) => {
                // Not processed or refused: no run was started; the budget is given back (a
                // refusal for the sandbox's cap then marks the day as spent).
                self.status.run_pending = None;
                self.refund_run();
                match e.kind() {
                    ErrorKind::NotFound => self.confirm_missing(s, audience_id, "to the run start").await,
                    ErrorKind::NotNow { .. } => self.run_refused(s, audience_id, &e).await,
                    _ => Ok(self.failure(&e, "starting an ingestion run", Phase::Apply)),
                }
            }
        }
    }

    /// Gives the run budget granted to this object back (no run was started).
    fn refund_run(&self) {
        let org = self.status.org_id.clone().unwrap_or_default();
        self.shared
            .budget
            .refund(&org, &self.obj.spec.sandbox, &self.key(), now().0);
    }

    /// AEP refused a run for now. It documents no text that tells its refusals apart, so the
    /// reason is settled by elimination from the audience's runs: a run in progress (wait for it),
    /// the per-audience limit (in either window: it will not lift by waiting), otherwise the
    /// sandbox's daily cap (runs started outside this operator count too: the day is spent for
    /// every object of the sandbox).
    async fn run_refused(&mut self, s: &impl AepApi, audience_id: &str, e: &aep::Error) -> Result<Outcome, Error> {
        let runs = match s.list_runs(audience_id).await {
            Ok(runs) => runs,
            Err(_) => return Ok(self.failure(e, "starting an ingestion run", Phase::Apply)),
        };
        if runs.iter().any(|r| !r.status.is_terminal()) {
            return Ok(self.failure(e, "starting an ingestion run (a run is in progress)", Phase::Apply));
        }
        let limit = self.shared.settings.run_limit;
        let today = now().0.as_second().div_euclid(86_400);
        let lifetime = runs.len();
        let on_day = runs
            .iter()
            .filter(|r| r.created_at.is_some_and(|t| t.div_euclid(86_400) == today))
            .count();
        let counted = match limit.window {
            RunWindow::Lifetime => lifetime,
            RunWindow::Day => on_day,
        };
        if lifetime >= limit.max as usize || on_day >= limit.max as usize {
            let window = match limit.window {
                RunWindow::Lifetime => "in its lifetime",
                RunWindow::Day => "today (UTC)",
            };
            let msg = stable_message(&format!(
                "Audience {audience_id} has had {counted} ingestion runs {window} ({lifetime} in all, {on_day} today), \
                 AEP's limit of {} per audience (AEP says: {}). No further run can start: extend the data's TTL \
                 instead of re-ingesting, or manage a new audience with a new ExternalAudience",
                limit.max,
                e.message()
            ));
            return Ok(Outcome::blocked(
                Reason::IngestionLimitReached,
                msg,
                EventReason::IngestionLimitReached,
            ));
        }
        let (org, sandbox, at) = (
            self.status.org_id.clone().unwrap_or_default(),
            self.obj.spec.sandbox.clone(),
            now().0,
        );
        self.shared.budget.spent(&org, &sandbox, at);
        let until = crate::controller::budget::RunBudget::next_window(at);
        let msg = stable_message(&format!(
            "Run deferred: AEP refused to start a run ({}) with none in progress and the audience under its own limit, \
             so the daily run cap of sandbox {sandbox:?} is reached (runs started outside this operator count too); \
             no run of this sandbox is sent before {until}",
            e.message()
        ));
        let wait = Duration::try_from(until.duration_since(at)).unwrap_or_default();
        Ok(Outcome::with(
            Health::progressing(Reason::RunDeferred, msg.clone()),
            Next::Exactly(wait),
        )
        .note(EventType::Warning, EventReason::RunDeferred, msg))
    }

    pub(crate) async fn recover_run(&mut self, s: &impl AepApi, audience_id: &str) -> Result<Outcome, Error> {
        let Some(pending) = self.status.run_pending.clone() else {
            return Ok(Outcome::planned(Next::After(Duration::ZERO)));
        };
        let runs = match s.list_runs(audience_id).await {
            Ok(r) => r,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return self.confirm_missing(s, audience_id, "to the runs list").await;
            }
            Err(e) => return Ok(self.failure(&e, "listing runs after an interrupted start", Phase::Apply)),
        };
        let known: Vec<&str> = self
            .status
            .last_run
            .iter()
            .chain(self.status.run_history.iter())
            .map(|r| r.run_id.as_str())
            .collect();
        // Only this object starts runs on an audience it owns: a run it does not know, started
        // after the marker (allowing for clock skew), is the one whose answer was lost.
        let since = pending.since.0.as_second() - spec::CLOCK_SKEW_SECS;
        let found = runs
            .into_iter()
            .filter(|r| !known.contains(&r.run_id.as_str()) && r.created_at.is_none_or(|t| t >= since))
            .max_by_key(|r| r.created_at.unwrap_or_default());
        match found {
            Some(run) => {
                let state = run_state(&run.status);
                self.record_run(run.run_id.clone(), state, &pending, run_message(&run));
                Ok(Outcome::planned(Next::After(Duration::ZERO)).note(
                    EventType::Normal,
                    EventReason::IngestionStarted,
                    format!("Found ingestion run {} whose start answer was lost", run.run_id),
                ))
            }
            None => {
                // The start never happened: its share of the run budget is given back.
                self.status.run_pending = None;
                let org = self.status.org_id.clone().unwrap_or_default();
                self.shared
                    .budget
                    .refund(&org, &self.obj.spec.sandbox, &self.key(), now().0);
                Ok(Outcome::planned(Next::After(Duration::ZERO)))
            }
        }
    }

    pub(crate) async fn poll_run(
        &mut self,
        s: &impl AepApi,
        audience_id: &str,
        run_id: &str,
    ) -> Result<Outcome, Error> {
        let run = match s.get_run(audience_id, run_id).await {
            Ok(r) => r,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return match self.presence(s, audience_id).await {
                    Ok(Presence::Gone) => self.audience_missing(audience_id).await,
                    // The audience is there but AEP no longer knows the run: whether it ingested
                    // is unknown, and a run is never started again by itself.
                    Ok(Presence::Exists) => {
                        let msg = format!(
                            "AEP no longer knows ingestion run {run_id} of audience {audience_id}; whether it ingested \
                             is unknown"
                        );
                        if let Some(last) = self.status.last_run.as_mut() {
                            last.status = RunState::Failed;
                            last.end_time = Some(now());
                            last.message = Some(msg.clone());
                        }
                        Ok(Outcome::planned(Next::Await).note(EventType::Warning, EventReason::IngestionFailed, msg))
                    }
                    Err(out) => Ok(out),
                };
            }
            Err(e) => return Ok(self.failure(&e, "reading the ingestion run", Phase::Apply)),
        };
        let state = run_state(&run.status);
        if state == RunState::Processing {
            return Ok(Outcome::planned(Next::After(self.ctx.timing.run_poll)));
        }
        let message = run_message(&run);
        if let Some(last) = self.status.last_run.as_mut() {
            last.status = state;
            last.end_time = Some(now());
            last.message = message.clone();
        }
        self.ctx.metrics.count_run(if state == RunState::Success {
            "succeeded"
        } else {
            "failed"
        });
        let out = if state == RunState::Success {
            // AEP was just read and matches: the next drift check is one interval away.
            self.checked();
            tracing::info!(audience_id, run_id, "Ingestion run succeeded");
            Outcome::planned(Next::After(Duration::ZERO)).note(
                EventType::Normal,
                EventReason::IngestionSucceeded,
                format!("Ingestion run {run_id} succeeded"),
            )
        } else {
            let msg = stable_message(&format!(
                "Ingestion run {run_id} failed: {}",
                message.unwrap_or_else(|| "AEP gave no reason".into())
            ));
            Outcome::planned(Next::Await).note(EventType::Warning, EventReason::IngestionFailed, msg)
        };
        Ok(out)
    }

    // ----- steady state -----------------------------------------------------------------------

    /// A drift check: one read, sharing the per-org rate limit; drifted properties are PATCHed
    /// back next, an audience gone behind the operator's back goes to the missing-audience policy.
    pub(crate) async fn check_drift(&mut self, s: &impl AepApi, audience_id: &str) -> Result<Outcome, Error> {
        let drifted = |spec: &crate::api::ExternalAudienceSpec, a: &crate::aep::UpsAudience| {
            drift_digest(a.description.as_deref(), &a.labels) != drift_digest(spec.description.as_deref(), &spec.labels)
        };
        // The sandbox's shared list answers for most objects; one that differs there (the list
        // may predate this object's own last PATCH) or is missing from it is read on its own.
        let spec = &self.obj.spec;
        if self.gathered.listed.take() == Some(drift_digest(spec.description.as_deref(), &spec.labels)) {
            self.checked();
            return Ok(Outcome::planned(Next::Exactly(self.resync_interval())));
        }
        // Drift check: one read, sharing the per-org rate limit.
        match s.get_audience(audience_id).await {
            Ok(a) => {
                self.checked();
                if drifted(&self.obj.spec, &a) {
                    self.status.applied_spec_hash = None;
                    return Ok(Outcome::planned(Next::After(Duration::ZERO)).note(
                        EventType::Normal,
                        EventReason::DriftCorrected,
                        format!("Audience {audience_id} drifted in AEP (description or labels); patching it back to the spec"),
                    ));
                }
                Ok(Outcome::planned(Next::Exactly(self.resync_interval())))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                // Lookups may lag behind the service: confirm on the audience's own routes.
                match s.list_runs(audience_id).await {
                    Err(e) if e.kind() == ErrorKind::NotFound => self.audience_missing(audience_id).await,
                    Err(e) => Ok(self.failure(&e, "confirming the audience is gone", Phase::Apply)),
                    Ok(_) => {
                        tracing::debug!(audience_id, "Audience not yet visible to lookups");
                        Ok(Outcome::planned(Next::After(self.ctx.timing.operation_poll)))
                    }
                }
            }
            Err(e) => Ok(self.failure(&e, "checking the audience for drift", Phase::Apply)),
        }
    }

    /// The audience vanished from AEP behind our back.
    pub(crate) async fn audience_missing(&mut self, audience_id: &str) -> Result<Outcome, Error> {
        match self.shared.settings.missing_audience_policy {
            MissingAudiencePolicy::Stall => {
                let msg = format!(
                    "Audience {audience_id} no longer exists in AEP (deleted outside this operator); delete and re-create this object, or run the operator with --missing-audience-policy=recreate"
                );
                Ok(Outcome::blocked(
                    Reason::AudienceNotFound,
                    msg,
                    EventReason::AudienceMissing,
                ))
            }
            MissingAudiencePolicy::Recreate => {
                let gone = self.status.audience_id.take();
                if let Some(id) = gone {
                    self.status.lost_audience_ids.insert(0, id);
                    self.status.lost_audience_ids.truncate(RUN_HISTORY_LIMIT);
                }
                self.status.operation_id = None;
                self.status.lost_operation_id = None;
                self.status.create_pending_since = None;
                self.status.applied_spec_hash = None;
                self.status.ingested_spec_hash = None;
                self.status.ingested_run_request = None;
                self.status.run_pending = None;
                self.status.adopted = false;
                self.status.ownership = None;
                self.status.claimed_at = None;
                self.status.run_counts = None;
                self.status.data_expiration = None;
                if let Some(prev) = self.status.last_run.take() {
                    self.status.run_history.insert(0, prev);
                    self.status.run_history.truncate(RUN_HISTORY_LIMIT);
                }
                Ok(Outcome::planned(Next::After(Duration::ZERO)).note(
                    EventType::Warning,
                    EventReason::AudienceMissing,
                    format!("Audience {audience_id} was deleted in AEP outside this operator; creating it again"),
                ))
            }
        }
    }
}

pub(crate) fn run_state(s: &RunStatus) -> RunState {
    match s {
        RunStatus::Success => RunState::Success,
        RunStatus::Failed => RunState::Failed,
        _ => RunState::Processing,
    }
}

fn run_message(run: &aep::Run) -> Option<String> {
    run.message.clone().or_else(|| {
        let failed: Vec<String> = run
            .details
            .iter()
            .filter(|d| d.status == RunStatus::Failed)
            .map(|d| match &d.message {
                Some(m) => format!("{}: {m}", d.stage),
                None => format!("stage {} failed", d.stage),
            })
            .collect();
        (!failed.is_empty()).then(|| failed.join("; "))
    })
}

impl AudiencePass<'_> {
    /// `spec.expiration.autoExtend`: one extend-TTL call. Not idempotent: a lost answer is retried
    /// and may extend twice (harmless: the expiration moves one more TTL out).
    pub(crate) async fn extend_ttl(&mut self, s: &impl AepApi, audience_id: &str) -> Result<Outcome, Error> {
        let Some(ttl) = decide::known_ttl(&self.obj.spec, &self.status) else {
            return Ok(Outcome::planned(Next::After(Duration::ZERO)));
        };
        let at = now().0;
        let current = expiry::compute(&self.status, ttl);
        match s.extend_ttl(audience_id).await {
            Ok(_) => {
                let extended = expiry::extended(current.as_ref(), ttl, at);
                let msg = format!(
                    "Extended the data expiration of audience {audience_id} to {} (spec.expiration.autoExtend)",
                    extended.expires_at.0
                );
                tracing::info!(audience_id, expires_at = %extended.expires_at.0, "Extended the data expiration");
                self.status.data_expiration = Some(extended);
                Ok(Outcome::planned(Next::After(Duration::ZERO)).note(
                    EventType::Normal,
                    EventReason::AudienceTTLExtended,
                    msg,
                ))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => self.confirm_missing(s, audience_id, "to extend-TTL").await,
            Err(e) => Ok(self.failure(&e, "extending the data expiration", Phase::Apply)),
        }
    }
}

/// A decision that reaches a step method without a call of its own (a bug in the dispatch).
fn unreachable_step(step: &Step) -> Result<Outcome, Error> {
    Err(Error::Config(format!(
        "step {} has no AEP call to make here",
        step.name()
    )))
}
