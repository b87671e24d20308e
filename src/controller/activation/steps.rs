//! The steps of an AudienceActivation pass: they carry out what the decider said, and make at
//! most one change of the dataflow (or one ad hoc export request) per attempt, its marker written
//! first.

use std::{sync::Arc, time::Duration};

use kube::runtime::{controller::Action, events::EventType};

use super::{
    ActivationPass,
    decide::{self, Decision, EXPORT_PENDING, EXPORT_REFUSED, EXPORT_STARTED, OP_ADD, OP_REMOVE, OP_REPLACE, Step},
};
use crate::{
    aep::{ErrorKind, FlowPatchOp},
    api::{ActivationTarget, ChangePending, EventReason, ExportRequest, Reason},
    controller::{
        clock::now,
        core::{Error, Next, Outcome, backoff::jitter, verdict::Phase},
        seams::FlowApi,
    },
    status::{Health, stable_message},
};

/// How many 412s one pass meets (reading again and deciding again after each) before it backs off.
const MAX_CONFLICTS: u32 = 4;

/// What a change step came to.
pub(super) enum Change {
    /// A change was sent (or failed): the outcome.
    Done(Outcome),
    /// The read under the lock decided something else.
    Other(Box<Decision>),
}

impl ActivationPass<'_> {
    fn flow_id(&self) -> String {
        self.pass.obj.spec.dataflow_id.clone()
    }

    fn phase(&self) -> Phase {
        if self.pass.obj.metadata.deletion_timestamp.is_some() {
            Phase::Delete
        } else {
            Phase::Apply
        }
    }

    /// Carries out the decision of an apply pass.
    pub(crate) async fn act<A: FlowApi>(
        &mut self,
        mut decision: Decision,
        session: Option<&A>,
    ) -> Result<Outcome, Error> {
        if let (Step::Read { fresh }, Some(s)) = (&decision.step, session) {
            self.read_flow(s, *fresh).await;
            decision = self.decide();
        }
        if decision.step.changes_flow()
            && let Some(s) = session
        {
            match self.change(s).await? {
                Change::Done(out) => return Ok(out),
                Change::Other(d) => decision = *d,
            }
        }
        self.carry_out(decision, session).await
    }

    /// Reads the dataflow while the decision asks for it (a cached read, then a fresh one when a
    /// pending change needs it), deciding again after each read.
    async fn read_as_decided<A: FlowApi>(&mut self, mut decision: Decision, session: Option<&A>) -> Decision {
        for _ in 0..2 {
            match (&decision.step, session) {
                (Step::Read { fresh }, Some(s)) => {
                    let fresh = *fresh;
                    self.read_flow(s, fresh).await;
                    decision = self.decide();
                }
                _ => break,
            }
        }
        decision
    }

    /// The steps that change no dataflow.
    async fn carry_out<A: FlowApi>(&mut self, decision: Decision, session: Option<&A>) -> Result<Outcome, Error> {
        let health = decision.health.clone();
        let t = self.ctx.timing.clone();
        Ok(match decision.step {
            Step::Pause | Step::Wait => Outcome::planned(Next::Await),
            Step::Block { event } => match &health {
                Health::Stalled { reason, message } => Outcome::blocked(*reason, message.clone(), event),
                _ => Outcome::with(health, Next::Await),
            },
            Step::Hold { retry, event } => {
                let mut out = Outcome::with(health.clone(), Next::After(retry));
                if let Some(reason) = event {
                    out = out.note(EventType::Warning, reason, health.message().to_owned());
                }
                out
            }
            Step::Idle { next } => Outcome::with(health, Next::After(next)),
            Step::Confirm { retry } => Outcome::with(health, Next::After(retry)),
            Step::ReadFailed => {
                let what = format!("reading dataflow {}", self.flow_id());
                match self.gathered.flow.clone() {
                    Some(Err(e)) => self.failure(&e, &what, self.phase()),
                    _ => Outcome::with(health, Next::Backoff(None)),
                }
            }
            Step::Confirmed { selector_added } => {
                let op = self.pass.status.change_pending.take().map(|p| p.op).unwrap_or_default();
                self.pass.status.selector_added = selector_added;
                let audience = self.pass.status.audience_id.clone().unwrap_or_default();
                let flow = self.flow_id();
                let note = match op.as_str() {
                    OP_ADD => Some(format!("Added audience {audience} to dataflow {flow}")),
                    OP_REPLACE => Some(format!(
                        "Updated the export settings of audience {audience} in dataflow {flow}"
                    )),
                    _ => None,
                };
                let out = Outcome::planned(Next::After(t.operation_poll));
                match note {
                    Some(n) => out.note(EventType::Normal, EventReason::AudienceActivated, n),
                    None => out,
                }
            }
            Step::RefuseExport { value, message } => {
                self.pass.status.export_request = Some(ExportRequest {
                    value,
                    since: now(),
                    state: decide::EXPORT_NOT_SENT.to_owned(),
                    after_run_id: None,
                    after_run_created_ms: None,
                    run_id: None,
                    message: Some(message.clone()),
                });
                Outcome::planned(Next::After(t.activation_poll)).note(
                    EventType::Warning,
                    EventReason::InvalidAnnotation,
                    message,
                )
            }
            Step::Export { audience_id, value } => match session {
                Some(s) => self.export(s, &audience_id, value).await?,
                None => Outcome::with(health, Next::Backoff(None)),
            },
            Step::SettleExport { audience_id, resend } => match session {
                Some(s) => self.settle_export(s, &audience_id, resend).await?,
                None => Outcome::with(health, Next::Backoff(None)),
            },
            Step::Read { .. } | Step::Add { .. } | Step::Replace { .. } | Step::Remove { .. } => {
                Outcome::with(health, Next::After(t.credentials_retry))
            }
            Step::Release { .. } | Step::WaitDeletion { .. } => Outcome::planned(Next::Await),
        })
    }

    /// Changes the dataflow: under its lock, reads it (the shared read, afresh after a change or a
    /// 412), decides again from that read, writes the marker, and sends the one operation
    /// conditioned on the read's etag. A 412 proves nothing was applied: read again and decide
    /// again, a few times; a lost answer keeps the marker, for the next read to settle.
    pub(super) async fn change<A: FlowApi>(&mut self, s: &A) -> Result<Change, Error> {
        let Some(endpoint) = self.endpoint() else {
            return Ok(Change::Other(Box::new(self.decide())));
        };
        let flow_id = self.flow_id();
        let entry = self.shared.reads.flow(&endpoint, &flow_id);
        let mut slot = entry.lock().await;
        let mut conflicts = 0;
        loop {
            let max_age = if conflicts > 0 || self.pass.status.change_pending.is_some() || self.gathered.flow_is_fresh {
                Duration::ZERO
            } else {
                self.ctx.timing.activation_poll
            };
            let read = slot.get(max_age, || s.get_flow(&flow_id)).await;
            self.gathered.flow = Some(read.map_err(Arc::new));
            self.gathered.flow_is_fresh = true;
            let decision = self.decide();
            let (op, patch) = match &decision.step {
                Step::Add { selector, .. } => (OP_ADD, FlowPatchOp::add_selector(selector)),
                Step::Replace { index, selector, .. } => (OP_REPLACE, FlowPatchOp::replace_selector(*index, selector)),
                Step::Remove { index, selector, .. } => (OP_REMOVE, FlowPatchOp::remove_selector(*index, selector)),
                _ => return Ok(Change::Other(Box::new(decision))),
            };
            let etag = match &decision.step {
                Step::Add { etag, .. } | Step::Replace { etag, .. } | Step::Remove { etag, .. } => etag.clone(),
                _ => String::new(),
            };
            self.mark_change(op);
            self.pass.record_health(&decision.health);
            self.pass.write_marker().await?;
            let sent = s.patch_flow(&flow_id, &etag, &[patch]).await;
            slot.invalidate();
            let e = match sent {
                Ok(_) => {
                    tracing::info!(op, flow_id = %flow_id, "Dataflow change accepted");
                    return Ok(Change::Done(Outcome::planned(Next::After(
                        self.ctx.timing.operation_poll,
                    ))));
                }
                Err(e) => e,
            };
            match e.kind() {
                ErrorKind::Conflict if conflicts < MAX_CONFLICTS => {
                    conflicts += 1;
                    tracing::debug!(conflicts, flow_id = %flow_id, "Dataflow changed meanwhile (412): reading again");
                    self.pass.status.change_pending = None;
                    tokio::time::sleep(jitter(Duration::from_millis(50 * u64::from(conflicts)))).await;
                }
                ErrorKind::Conflict => {
                    self.pass.status.change_pending = None;
                    let health = Health::progressing(
                        Reason::Activating,
                        format!(
                            "Dataflow {flow_id} kept changing while this object changed it (412); reading it again"
                        ),
                    );
                    return Ok(Change::Done(Outcome::with(health, Next::Backoff(None))));
                }
                ErrorKind::OutcomeUnknown => {
                    let what = format!("changing dataflow {flow_id} (a read settles whether it was applied)");
                    return Ok(Change::Done(self.failure(&e, &what, self.phase())));
                }
                _ => {
                    // Refused or not processed: nothing was applied.
                    self.pass.status.change_pending = None;
                    let what = format!("changing dataflow {flow_id}");
                    return Ok(Change::Done(self.failure(&e, &what, self.phase())));
                }
            }
        }
    }

    /// The marker of a change about to be sent, and where it is sent (recorded with the first).
    fn mark_change(&mut self, op: &str) {
        self.pass.status.change_pending = Some(ChangePending {
            since: now(),
            op: op.to_owned(),
            generation: self.pass.generation,
        });
        if self.pass.status.target.is_none()
            && let (Some((secret, sandbox)), Some((org_id, platform_url, _))) =
                (self.secret_and_sandbox(), self.endpoint())
        {
            self.pass.status.target = Some(ActivationTarget {
                credentials_secret: secret,
                org_id,
                platform_url,
                sandbox,
            });
        }
    }

    /// One ad hoc export request for annotation value `value`: the audience's newest export run
    /// read first (a newer one is the request's after a lost answer), the marker, the call.
    async fn export<A: FlowApi>(&mut self, s: &A, audience_id: &str, value: String) -> Result<Outcome, Error> {
        let flow_id = self.flow_id();
        let before = match s.list_audience_flow_runs(&flow_id, audience_id).await {
            Ok(runs) => runs,
            Err(e) => return Ok(self.failure(&e, "listing the audience's export runs", Phase::Apply)),
        };
        let newest = decide::last_run_of(&before, audience_id);
        let previous = self.pass.status.export_request.clone();
        self.pass.status.export_request = Some(ExportRequest {
            value,
            since: now(),
            state: EXPORT_PENDING.to_owned(),
            after_run_id: newest.map(|r| r.id.clone()),
            after_run_created_ms: newest.and_then(|r| r.created_at.or(r.started_at())),
            run_id: None,
            message: None,
        });
        self.pass.write_marker().await?;
        let t = self.ctx.timing.clone();
        match s.adhoc_run(&flow_id, &[audience_id.to_owned()]).await {
            Ok(orders) => {
                let run_id = orders
                    .iter()
                    .find(|o| o.segment == audience_id)
                    .or(orders.first())
                    .and_then(|o| o.run_id())
                    .map(str::to_owned);
                Ok(self.export_started(run_id, &flow_id, audience_id, t.activation_poll))
            }
            Err(e) => match e.kind() {
                ErrorKind::OutcomeUnknown => Ok(Outcome::planned(Next::After(t.operation_poll)).note(
                    EventType::Warning,
                    EventReason::AEPError,
                    stable_message(&format!(
                        "The answer to the ad hoc export request was lost ({}); looking for its run",
                        e.message()
                    )),
                )),
                ErrorKind::Terminal | ErrorKind::NotFound | ErrorKind::Conflict => {
                    let message = stable_message(e.message());
                    if let Some(r) = self.pass.status.export_request.as_mut() {
                        r.state = EXPORT_REFUSED.to_owned();
                        r.message = Some(message.clone());
                    }
                    Ok(Outcome::planned(Next::After(t.activation_poll)).note(
                        EventType::Warning,
                        EventReason::ExportRefused,
                        format!("AEP refused the ad hoc export of audience {audience_id}: {message}"),
                    ))
                }
                _ => {
                    // Not processed (429, 401, 403): the request is still to be made.
                    self.pass.status.export_request = previous;
                    Ok(self.failure(&e, "requesting an ad hoc export", Phase::Apply))
                }
            },
        }
    }

    fn export_started(&mut self, run_id: Option<String>, flow_id: &str, audience_id: &str, next: Duration) -> Outcome {
        if let Some(r) = self.pass.status.export_request.as_mut() {
            r.state = EXPORT_STARTED.to_owned();
            r.run_id = run_id.clone();
            r.message = None;
        }
        Outcome::planned(Next::After(next)).note(
            EventType::Normal,
            EventReason::ExportStarted,
            format!(
                "Started an ad hoc export of audience {audience_id} to dataflow {flow_id} (run {})",
                run_id.as_deref().unwrap_or("unknown")
            ),
        )
    }

    /// A request whose answer is unknown: its run among the audience's export runs settles it; none
    /// within the settle window proves it never started, and it is made (once) again.
    async fn settle_export<A: FlowApi>(&mut self, s: &A, audience_id: &str, resend: bool) -> Result<Outcome, Error> {
        let flow_id = self.flow_id();
        let Some(request) = self.pass.status.export_request.clone() else {
            return Ok(Outcome::planned(Next::After(self.ctx.timing.activation_poll)));
        };
        let runs = match s.list_audience_flow_runs(&flow_id, audience_id).await {
            Ok(runs) => runs,
            Err(e) => return Ok(self.failure(&e, "listing the audience's export runs", Phase::Apply)),
        };
        let found = decide::run_after(
            &runs,
            audience_id,
            request.after_run_id.as_deref(),
            request.after_run_created_ms,
        );
        if let Some(run) = found {
            let run_id = Some(run.id.clone());
            let next = self.ctx.timing.activation_poll;
            return Ok(self.export_started(run_id, &flow_id, audience_id, next));
        }
        if resend {
            return self.export(s, audience_id, request.value).await;
        }
        Ok(Outcome::planned(Next::After(self.ctx.timing.operation_poll)))
    }

    /// Sets the health and writes the status if it changed; whether it did.
    async fn report(&mut self, health: &Health) -> Result<bool, Error> {
        self.record(health, false);
        if !self.pass.changed() {
            return Ok(false);
        }
        self.pass.write_status().await?;
        Ok(true)
    }
}

/// Deletion behind the finalizer: release, wait, or remove the audience from the dataflow (one
/// `remove` at the index a fresh read shows; the finalizer stays until a read shows it gone).
pub(super) async fn delete<A: FlowApi>(
    mut pass: ActivationPass<'_>,
    mut decision: Decision,
    session: Option<&A>,
) -> Result<Action, Error> {
    let t = pass.ctx.timing.clone();
    decision = pass.read_as_decided(decision, session).await;
    if decision.step.changes_flow()
        && let Some(s) = session
    {
        match pass.change(s).await? {
            Change::Done(out) => {
                let health = out.health.clone().unwrap_or_else(|| {
                    Health::progressing(Reason::Deactivating, "Removing the audience from the dataflow")
                });
                if pass.report(&health).await?
                    && let Some(note) = out.event
                {
                    pass.publish(note).await;
                }
                let key = pass.key();
                let retry = match out.next {
                    Next::After(d) | Next::Exactly(d) => d,
                    Next::Backoff(r) => pass.ctx.backoff(&key, r),
                    Next::Await => t.credentials_retry,
                };
                return Err(Error::Waiting("removing the audience from the dataflow", retry));
            }
            Change::Other(d) => decision = *d,
        }
    }
    match decision.step {
        Step::Release { event } => {
            if let Some(note) = event {
                pass.publish(note).await;
            }
            Ok(Action::await_change())
        }
        Step::ReadFailed => {
            let what = format!("reading dataflow {}", pass.flow_id());
            let out = match pass.gathered.flow.clone() {
                Some(Err(e)) => pass.failure(&e, &what, Phase::Delete),
                _ => Outcome::with(decision.health.clone(), Next::Backoff(None)),
            };
            let health = out.health.clone().unwrap_or(decision.health);
            if pass.report(&health).await?
                && let Some(note) = out.event
            {
                pass.publish(note).await;
            }
            let key = pass.key();
            Err(Error::Waiting("deletion waits for AEP", pass.ctx.backoff(&key, None)))
        }
        Step::WaitDeletion { retry } => {
            let stalled = decision.health.is_stalled();
            if pass.report(&decision.health).await? && stalled {
                let event = crate::controller::core::verdict::deletion_wait_event(&decision.health);
                pass.publish((EventType::Warning, event, decision.health.message().to_owned()))
                    .await;
            }
            Err(Error::Waiting("deletion waits", retry))
        }
        _ => {
            pass.report(&decision.health).await?;
            Err(Error::Waiting("deletion waits", t.credentials_retry))
        }
    }
}
