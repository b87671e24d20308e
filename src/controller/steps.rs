//! The steps of a reconcile pass, one method each; [`super::plan::next_step`] picks which one runs.
//!
//! Verbs: `create`/`recover_create`/`adopt` bring an audience into existence or under management,
//! `poll_*` only read from AEP, `update` PATCHes, `start_run`/`recover_run` start or find the one
//! owed ingestion run, `idle` checks for drift. Each makes at most one mutating AEP call and
//! records its result in status right after it.

use std::time::Duration;

use kube::{ResourceExt, runtime::events::EventType};

use super::{
    Error, plan,
    reconcile::{Next, Outcome, Pass, now},
};
use crate::{
    aep::{self, ErrorKind, OperationStatus, RunStatus, Session},
    api::{IngestionRun, RESYNC_INTERVAL, RUN_HISTORY_LIMIT, RunPending, RunState, events, reasons},
    config::MissingAudiencePolicy,
    status::{Health, conditions_for, stable_message},
};

impl Pass<'_> {
    // ----- create -----------------------------------------------------------------------------

    pub(super) async fn create(&mut self, s: &Session) -> Result<Outcome, Error> {
        let name = self.audience_name().to_owned();
        match s.find_audiences_by_name(&name).await {
            Err(e) => return self.report(&e, "looking up the audience name").await,
            Ok(found) if !found.is_empty() => {
                let id = found[0].id.clone();
                let msg = format!(
                    "AEP audience name {name:?} in sandbox {:?} already belongs to audience {id}, which this object did not create. \
                     To manage that audience, set spec.audienceId: {id}; otherwise choose another spec.name",
                    self.obj.spec.sandbox
                );
                return self
                    .publish(
                        Outcome::new(Health::stalled(reasons::NAME_TAKEN, msg.clone()), Next::Await),
                        Some((EventType::Warning, events::NAME_TAKEN, msg)),
                    )
                    .await;
            }
            Ok(_) => {}
        }
        self.status.create_pending_since = Some(now());
        if !self.write_marker().await? {
            return Ok(Outcome::new(self.current_health(), Next::After(Duration::ZERO)));
        }
        self.post_create(s).await
    }

    pub(super) async fn recover_create(&mut self, s: &Session) -> Result<Outcome, Error> {
        let name = self.audience_name().to_owned();
        let found = match s.find_audiences_by_name(&name).await {
            Ok(f) => f,
            Err(e) => {
                return self
                    .report(&e, "looking up an audience whose create was interrupted")
                    .await;
            }
        };
        if let Some(a) = found.first() {
            self.status.audience_id = Some(a.id.clone());
            self.status.create_pending_since = None;
            self.status.applied_spec_hash = None;
            self.write_status().await?;
            self.event(
                EventType::Normal,
                events::AUDIENCE_CREATED,
                format!(
                    "Found audience {} created by an interrupted create of this object",
                    a.id
                ),
            )
            .await;
            return Ok(Outcome::new(self.current_health(), Next::After(Duration::ZERO)));
        }
        // Provably absent (or still being created: AEP then answers 409 and we look again).
        self.status.create_pending_since = Some(now());
        if !self.write_marker().await? {
            return Ok(Outcome::new(self.current_health(), Next::After(Duration::ZERO)));
        }
        self.post_create(s).await
    }

    pub(super) async fn post_create(&mut self, s: &Session) -> Result<Outcome, Error> {
        let req = plan::create_request(&self.obj.spec, self.audience_name());
        match s.create_audience(&req).await {
            Ok(resp) => {
                tracing::info!(operation_id = %resp.operation_id, "Requested audience creation");
                self.status.operation_id = Some(resp.operation_id.clone());
                self.status.create_pending_since = None;
                self.status.applied_spec_hash = Some(plan::updatable_hash(&self.obj.spec));
                self.write_status().await?;
                self.event(
                    EventType::Normal,
                    events::AUDIENCE_CREATE_REQUESTED,
                    format!(
                        "Requested creation of audience {:?} (operation {})",
                        self.audience_name(),
                        resp.operation_id
                    ),
                )
                .await;
                Ok(Outcome::new(
                    Health::progressing(
                        reasons::WAITING_FOR_OPERATION,
                        format!("Waiting for AEP operation {}", resp.operation_id),
                    ),
                    Next::After(self.ctx.timing.operation_poll),
                ))
            }
            Err(e) => {
                match e.kind() {
                    // The create may have happened: keep the marker, look it up next pass.
                    ErrorKind::Conflict => {
                        let msg = "AEP reports the name exists; looking it up to adopt the audience an interrupted create of this object made";
                        return Ok(Outcome::new(
                            Health::progressing(reasons::CREATING, msg),
                            Next::After(self.ctx.timing.operation_poll),
                        ));
                    }
                    ErrorKind::OutcomeUnknown | ErrorKind::Retryable { .. } => {}
                    // Refused outright: nothing was created.
                    _ => self.status.create_pending_since = None,
                }
                self.report(&e, "creating the audience").await
            }
        }
    }

    pub(super) async fn poll_operation(&mut self, s: &Session, operation_id: &str) -> Result<Outcome, Error> {
        let op = match s.get_operation(operation_id).await {
            Ok(op) => op,
            Err(e) => return self.report(&e, "reading the create operation").await,
        };
        match op.status {
            OperationStatus::Success if op.audience_id.is_some() => {
                let id = op.audience_id.unwrap_or_default();
                tracing::info!(audience_id = %id, "Audience created");
                self.status.audience_id = Some(id.clone());
                self.write_status().await?;
                self.event(
                    EventType::Normal,
                    events::AUDIENCE_CREATED,
                    format!("Created audience {id}"),
                )
                .await;
                Ok(Outcome::new(self.current_health(), Next::After(Duration::ZERO)))
            }
            OperationStatus::Failed => {
                let msg = stable_message(&format!(
                    "AEP failed to create the audience (operation {operation_id}): {}",
                    op.message.as_deref().unwrap_or("no reason given")
                ));
                self.status.failed_operation_id = self.status.operation_id.take();
                let out = Outcome::new(Health::stalled(reasons::OPERATION_FAILED, msg.clone()), Next::Await);
                self.status.observed_generation = Some(self.generation);
                self.status.conditions =
                    conditions_for(&out.health, self.generation, &self.original.conditions, &now());
                self.write_status().await?;
                self.event(EventType::Warning, events::OPERATION_FAILED, msg).await;
                Ok(out)
            }
            _ => Ok(Outcome::new(
                Health::progressing(
                    reasons::WAITING_FOR_OPERATION,
                    format!("Waiting for AEP operation {operation_id}"),
                ),
                Next::After(self.ctx.timing.operation_poll),
            )),
        }
    }

    pub(super) async fn adopt(&mut self, s: &Session, audience_id: &str) -> Result<Outcome, Error> {
        match s.get_audience(audience_id).await {
            Ok(_) => {
                self.status.audience_id = Some(audience_id.to_owned());
                self.status.adopted = true;
                self.status.applied_spec_hash = None;
                self.status.ingested_spec_hash = Some(plan::ingest_hash(&self.obj.spec, self.audience_name()));
                self.write_status().await?;
                self.event(
                    EventType::Normal,
                    events::AUDIENCE_ADOPTED,
                    format!("Adopted audience {audience_id}"),
                )
                .await;
                Ok(Outcome::new(self.current_health(), Next::After(Duration::ZERO)))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let msg = format!(
                    "spec.audienceId {audience_id} does not exist in sandbox {:?}",
                    self.obj.spec.sandbox
                );
                self.status.observed_generation = Some(self.generation);
                self.publish(
                    Outcome::new(Health::stalled(reasons::AUDIENCE_NOT_FOUND, msg.clone()), Next::Await),
                    Some((EventType::Warning, events::AEP_ERROR, msg)),
                )
                .await
            }
            Err(e) => self.report(&e, "reading the audience to adopt").await,
        }
    }

    pub(super) async fn update(&mut self, s: &Session, audience_id: &str) -> Result<Outcome, Error> {
        match s
            .patch_audience(audience_id, &plan::patch_request(&self.obj.spec))
            .await
        {
            Ok(_) => {
                tracing::info!(audience_id, "Updated audience");
                self.status.applied_spec_hash = Some(plan::updatable_hash(&self.obj.spec));
                self.write_status().await?;
                self.event(
                    EventType::Normal,
                    events::AUDIENCE_UPDATED,
                    format!("Updated description, labels, field labels and ttlInDays of audience {audience_id}"),
                )
                .await;
                Ok(Outcome::new(self.current_health(), Next::After(Duration::ZERO)))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => self.audience_missing(audience_id).await,
            Err(e) => self.report(&e, "updating the audience").await,
        }
    }

    // ----- runs -------------------------------------------------------------------------------

    pub(super) fn record_run(
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
        self.status.run_pending = None;
    }

    pub(super) async fn start_run(&mut self, s: &Session, audience_id: &str) -> Result<Outcome, Error> {
        let pending = RunPending {
            since: now(),
            generation: self.generation,
            spec_hash: plan::ingest_hash(&self.obj.spec, self.audience_name()),
            run_request: self.run_request().map(str::to_owned),
        };
        self.status.run_pending = Some(pending.clone());
        if !self.write_marker().await? {
            return Ok(Outcome::new(self.current_health(), Next::After(Duration::ZERO)));
        }
        match s.start_run(audience_id, &plan::start_run_request(&self.obj.spec)).await {
            Ok(run) => {
                tracing::info!(audience_id, run_id = %run.run_id, "Started ingestion run");
                self.record_run(run.run_id.clone(), RunState::Processing, &pending, None);
                self.write_status().await?;
                self.event(
                    EventType::Normal,
                    events::INGESTION_STARTED,
                    format!(
                        "Started ingestion run {} for generation {}",
                        run.run_id, self.generation
                    ),
                )
                .await;
                Ok(Outcome::new(
                    self.current_health(),
                    Next::After(self.ctx.timing.run_poll),
                ))
            }
            Err(e) => {
                match e.kind() {
                    // The run may exist: keep the marker; the next pass looks for it first.
                    ErrorKind::OutcomeUnknown | ErrorKind::Retryable { .. } => {}
                    _ => self.status.run_pending = None,
                }
                if e.kind() == ErrorKind::NotFound {
                    self.write_status().await?;
                    return self.audience_missing(audience_id).await;
                }
                self.report(&e, "starting an ingestion run").await
            }
        }
    }

    pub(super) async fn recover_run(&mut self, s: &Session, audience_id: &str) -> Result<Outcome, Error> {
        let Some(pending) = self.status.run_pending.clone() else {
            return Ok(Outcome::new(self.current_health(), Next::After(Duration::ZERO)));
        };
        let runs = match s.list_runs(audience_id).await {
            Ok(r) => r,
            Err(e) => return self.report(&e, "listing runs after an interrupted start").await,
        };
        let known: Vec<&str> = self
            .status
            .last_run
            .iter()
            .chain(self.status.run_history.iter())
            .map(|r| r.run_id.as_str())
            .collect();
        // Allow for clock skew between AEP and us.
        let since = pending.since.0.as_second() - 300;
        let found = runs
            .into_iter()
            .filter(|r| !known.contains(&r.run_id.as_str()) && r.created_at.is_none_or(|t| t >= since))
            .max_by_key(|r| r.created_at.unwrap_or_default());
        match found {
            Some(run) => {
                let state = run_state(&run.status);
                self.record_run(run.run_id.clone(), state, &pending, run.message.clone());
                self.write_status().await?;
                self.event(
                    EventType::Normal,
                    events::INGESTION_STARTED,
                    format!("Found ingestion run {} started by an interrupted pass", run.run_id),
                )
                .await;
            }
            None => {
                self.status.run_pending = None;
                self.write_status().await?;
            }
        }
        Ok(Outcome::new(self.current_health(), Next::After(Duration::ZERO)))
    }

    pub(super) async fn poll_run(&mut self, s: &Session, audience_id: &str, run_id: &str) -> Result<Outcome, Error> {
        let run = match s.get_run(audience_id, run_id).await {
            Ok(r) => r,
            Err(e) => return self.report(&e, "reading the ingestion run").await,
        };
        let state = run_state(&run.status);
        if state == RunState::Processing {
            return Ok(Outcome::new(
                self.current_health(),
                Next::After(self.ctx.timing.run_poll),
            ));
        }
        let message = run_message(&run);
        if let Some(last) = self.status.last_run.as_mut() {
            last.status = state;
            last.end_time = Some(now());
            last.message = message.clone();
        }
        let health = self.current_health();
        self.status.observed_generation = Some(self.generation);
        self.status.conditions = conditions_for(&health, self.generation, &self.original.conditions, &now());
        self.write_status().await?;
        if state == RunState::Success {
            // AEP was just read and matches: the next drift check is one interval away.
            self.ctx.resynced(self.key());
            tracing::info!(audience_id, run_id, "Ingestion run succeeded");
            self.event(
                EventType::Normal,
                events::INGESTION_SUCCEEDED,
                format!("Ingestion run {run_id} succeeded"),
            )
            .await;
        } else {
            let msg = stable_message(&format!(
                "Ingestion run {run_id} failed: {}",
                message.unwrap_or_else(|| "no message from AEP".into())
            ));
            self.event(EventType::Warning, events::INGESTION_FAILED, msg).await;
        }
        let next = if state == RunState::Failed {
            Next::Await
        } else {
            Next::After(Duration::ZERO)
        };
        Ok(Outcome::new(health, next))
    }

    // ----- steady state -----------------------------------------------------------------------

    pub(super) fn resync_interval(&self) -> Duration {
        self.obj
            .annotations()
            .get(RESYNC_INTERVAL)
            .and_then(|v| crate::config::parse_duration(v).ok())
            .unwrap_or(self.ctx.timing.resync)
    }

    pub(super) async fn idle(&mut self, s: &Session, audience_id: &str) -> Result<Outcome, Error> {
        let health = self.current_health();
        if matches!(health, Health::Stalled { .. }) {
            return Ok(Outcome::new(health, Next::Await));
        }
        let interval = self.resync_interval();
        if interval.is_zero() {
            return Ok(Outcome::new(health, Next::Await));
        }
        if !self.ctx.resync_due(&self.key(), interval) {
            return Ok(Outcome::new(health, Next::After(interval)));
        }
        // Drift check: one read, sharing the per-org rate limit.
        match s.get_audience(audience_id).await {
            Ok(a) => {
                self.ctx.resynced(self.key());
                let want_desc = self.obj.spec.description.clone().unwrap_or_default();
                let mut have_labels = a.labels.clone();
                let mut want_labels = self.obj.spec.labels.clone();
                have_labels.sort();
                want_labels.sort();
                if a.description.unwrap_or_default() != want_desc || have_labels != want_labels {
                    self.status.applied_spec_hash = None;
                    self.write_status().await?;
                    self.event(
                        EventType::Normal,
                        events::DRIFT_CORRECTED,
                        format!("Audience {audience_id} drifted in AEP (description or labels); patching it back to the spec"),
                    )
                    .await;
                    return Ok(Outcome::new(self.current_health(), Next::After(Duration::ZERO)));
                }
                Ok(Outcome::new(health, Next::After(interval)))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => self.audience_missing(audience_id).await,
            Err(e) => self.report(&e, "checking the audience for drift").await,
        }
    }

    /// The audience vanished from AEP behind our back.
    pub(super) async fn audience_missing(&mut self, audience_id: &str) -> Result<Outcome, Error> {
        match self.ctx.missing_audience_policy {
            MissingAudiencePolicy::Stall => {
                let msg = format!(
                    "Audience {audience_id} no longer exists in AEP (deleted outside this operator); delete and re-create this object, or run the operator with --missing-audience-policy=recreate"
                );
                self.publish(
                    Outcome::new(Health::stalled(reasons::AUDIENCE_NOT_FOUND, msg.clone()), Next::Await),
                    Some((EventType::Warning, events::AUDIENCE_MISSING, msg)),
                )
                .await
            }
            MissingAudiencePolicy::Recreate => {
                let gone = self.status.audience_id.take();
                if let Some(id) = gone {
                    self.status.lost_audience_ids.insert(0, id);
                    self.status.lost_audience_ids.truncate(RUN_HISTORY_LIMIT);
                }
                self.status.operation_id = None;
                self.status.create_pending_since = None;
                self.status.applied_spec_hash = None;
                self.status.ingested_spec_hash = None;
                self.status.ingested_run_request = None;
                self.status.run_pending = None;
                self.status.adopted = false;
                if let Some(prev) = self.status.last_run.take() {
                    self.status.run_history.insert(0, prev);
                    self.status.run_history.truncate(RUN_HISTORY_LIMIT);
                }
                self.write_status().await?;
                self.event(
                    EventType::Warning,
                    events::AUDIENCE_MISSING,
                    format!("Audience {audience_id} was deleted in AEP outside this operator; creating it again"),
                )
                .await;
                Ok(Outcome::new(self.current_health(), Next::After(Duration::ZERO)))
            }
        }
    }
}

fn run_state(s: &RunStatus) -> RunState {
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
                None => format!("{} failed", d.stage),
            })
            .collect();
        (!failed.is_empty()).then(|| failed.join("; "))
    })
}
