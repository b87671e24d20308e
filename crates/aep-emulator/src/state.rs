//! The emulator's world: audiences, operations and runs per (org, sandbox), the per-sandbox log of
//! runs started per UTC day, issued tokens, counters, and the admin views of them. Lifecycles and
//! visibility are evaluated lazily from stored instants, so no background task mutates state.
//!
//! Only plain data and pure transitions live here; HTTP handling is in `routes`, persistence is
//! in `mod.rs`. Tokens are never persisted.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use aep::types::{
    CreateAudienceRequest, DEFAULT_NAMESPACE, ENTITY_TYPE_PROFILE, ExternalAudience, ORIGIN_CUSTOM_UPLOAD, Operation,
    OperationStatus, Run, RunStage, RunStatus, UPS_TYPE_EXTERNAL_SEGMENT, UpsAudience, UpsSandbox,
};

use aep::flows::{DestinationKind, SegmentSelector};

use super::config::{CredentialSpec, Faults, Settings, Visibility};
use super::flows::{ExportClock, FlowHome, FlowRec, RunTrigger};

/// Milliseconds per UTC day.
const DAY_MS: i64 = 86_400_000;

/// Days of the run log kept besides today.
const RUN_LOG_DAYS: i64 = 7;

/// The UTC day (days since the epoch) of an instant in milliseconds.
pub(crate) fn utc_day(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS)
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// Who made a change: the emulator reports the technical account of the client ID.
pub(crate) fn actor(client_id: &str) -> String {
    format!("{client_id}@techacct.adobe.com")
}

/// Persisted state (the `--state-file` content).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Store {
    /// Keyed by `"<org>/<sandbox>"`.
    pub tenants: BTreeMap<String, Tenant>,
    /// How far the emulated service's clock is ahead of the host's (`/_emulator/clock`), ms.
    #[serde(default)]
    pub clock_offset_ms: i64,
}

/// Resources of one (org, sandbox).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Tenant {
    /// IMS org.
    pub org: String,
    /// Sandbox name.
    pub sandbox: String,
    /// Stable sandbox ID.
    pub sandbox_id: String,
    /// Audiences by ID.
    pub audiences: BTreeMap<String, AudienceRec>,
    /// Create operations by ID.
    pub operations: BTreeMap<String, OperationRec>,
    /// Runs started per UTC day (days since the epoch): the sandbox's daily guardrail. Never
    /// decremented, so runs of audiences deleted since still count.
    #[serde(default)]
    pub runs_per_day: BTreeMap<i64, u32>,
    /// Deleted audiences, by ID: AEP keeps their records in the `deleted` lifecycle state
    /// (reference §2.6), listed only by the `property=audienceId==…` lookup, which also returns
    /// inactive audiences (§2.4); every other route answers 404. Their names and
    /// `customAudienceId`s are free again. Bounded: the oldest are forgotten.
    #[serde(default)]
    pub deleted: BTreeMap<String, AudienceRec>,
    /// Destination dataflows by id, with their selectors and export runs.
    #[serde(default)]
    pub flows: BTreeMap<String, FlowRec>,
}

/// Deleted audience records kept per tenant.
const DELETED_KEPT: usize = 10_000;

/// The lifecycle state of a deleted audience.
pub const LIFECYCLE_DELETED: &str = "deleted";

impl Tenant {
    /// Runs started in the sandbox on `day`.
    pub(crate) fn runs_on(&self, day: i64) -> u32 {
        self.runs_per_day.get(&day).copied().unwrap_or(0)
    }

    /// Deletes an audience: its record stays, in the `deleted` lifecycle state. Returns whether
    /// it existed.
    pub(crate) fn delete_audience(&mut self, id: &str, now: i64) -> bool {
        let Some(mut rec) = self.audiences.remove(id) else {
            return false;
        };
        rec.lifecycle_state = LIFECYCLE_DELETED.to_owned();
        rec.updated_at_ms = now;
        self.deleted.insert(id.to_owned(), rec);
        while self.deleted.len() > DELETED_KEPT {
            let oldest = self
                .deleted
                .iter()
                .min_by_key(|(_, r)| r.updated_at_ms)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => self.deleted.remove(&k),
                None => break,
            };
        }
        true
    }

    /// The first flow (by id) whose selectors name the audience `id` (by `value.id` or
    /// `systemSegmentId`, or by its `customAudienceId` in `value.id`): AEP refuses to delete an
    /// audience a destination uses (reference "aep-activation-api" §2.4).
    pub(crate) fn flow_using(&self, id: &str) -> Option<&str> {
        let custom = self
            .audiences
            .get(id)
            .and_then(|a| a.definition.custom_audience_id.as_deref());
        self.flows
            .values()
            .find(|f| {
                f.selectors
                    .iter()
                    .any(|s| s.selector.names(id) || custom.is_some_and(|c| s.selector.value.id.as_deref() == Some(c)))
            })
            .map(|f| f.id.as_str())
    }

    /// Where this tenant's flows live, for their wire form.
    pub(crate) fn home(&self) -> FlowHome<'_> {
        FlowHome {
            org: &self.org,
            sandbox: &self.sandbox,
            sandbox_id: &self.sandbox_id,
        }
    }

    /// Makes the export runs due by now of every flow; returns whether any changed.
    pub(crate) fn materialize_runs(&mut self, clock: &ExportClock) -> bool {
        let mut changed = false;
        for flow in self.flows.values_mut() {
            changed |= flow.materialize(clock);
        }
        changed
    }

    /// Logs a run started on `day` and forgets days long past.
    pub(crate) fn log_run(&mut self, day: i64) {
        let count = self.runs_per_day.entry(day).or_insert(0);
        *count = count.saturating_add(1);
        self.runs_per_day.retain(|d, _| *d >= day - RUN_LOG_DAYS);
    }
}

/// A stored audience.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AudienceRec {
    /// `/ais` audience ID and `/ups` `id`.
    pub id: String,
    /// Canonical definition (ttl filled in; `customAudienceId` only when the model keeps it).
    pub definition: CreateAudienceRequest,
    /// `published`, `inactive`, …
    pub lifecycle_state: String,
    /// Backing dataset.
    pub dataset_id: String,
    /// Its create operation is done at this instant (ms); visibility is derived from it.
    pub ready_at_ms: i64,
    /// Created (ms).
    pub created_at_ms: i64,
    /// Last update (ms).
    pub updated_at_ms: i64,
    /// Creator.
    pub created_by: String,
    /// Last updater.
    pub updated_by: String,
    /// Runs, oldest first.
    pub runs: Vec<RunRec>,
    /// Data expiration pushed out by `extend-ttl` to this instant (ms).
    #[serde(default)]
    pub extended_until_ms: Option<i64>,
}

impl AudienceRec {
    /// The audience's TTL: `ttlInDays`, 30 days when none was set (reference §4).
    pub(crate) fn ttl_ms(&self) -> i64 {
        i64::from(self.definition.ttl_in_days.unwrap_or(30)).saturating_mul(DAY_MS)
    }

    /// When the ingested data expires (ms): the end of the last successful run plus the TTL, or
    /// later once extended; `None` before any successful run. Runs must have been advanced.
    pub(crate) fn data_expires_at_ms(&self) -> Option<i64> {
        let from_run = self
            .runs
            .iter()
            .filter(|r| r.ended.as_deref() == Some("SUCCESS"))
            .map(|r| r.ready_at_ms.saturating_add(self.ttl_ms()))
            .max();
        from_run.max(self.extended_until_ms)
    }

    /// `extend-ttl` (reference §2.10): expiration is pushed out by the original TTL, from the
    /// current expiration or from now if the data already expired.
    pub(crate) fn extend_ttl(&mut self, now: i64) {
        let base = self.data_expires_at_ms().unwrap_or(now).max(now);
        self.extended_until_ms = Some(base.saturating_add(self.ttl_ms()));
    }
}

/// A stored create operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OperationRec {
    /// Operation ID.
    pub id: String,
    /// The audience it creates (`None` when it is going to fail).
    pub audience_id: Option<String>,
    /// Echo of the definition.
    pub definition: CreateAudienceRequest,
    /// Message reported when it fails (none unless configured).
    pub failure: Option<String>,
    /// Outcome may be reported from this instant (ms).
    pub ready_at_ms: i64,
    /// Polls answered `PROCESSING` before the outcome.
    pub processing_polls: u32,
    /// Polls seen so far.
    pub polls: u32,
    /// Created (ms).
    pub created_at_ms: i64,
    /// Creator.
    pub created_by: String,
    /// Report `SUCCESS` without the `audienceId` (fault injection).
    #[serde(default)]
    pub omit_audience_id: bool,
}

/// A stored run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRec {
    /// Run ID.
    pub id: String,
    /// Request fields.
    pub data_filter_start_time: i64,
    /// Request fields.
    pub data_filter_end_time: Option<i64>,
    /// Request fields.
    pub differential_ingestion: bool,
    /// Whether it is going to fail.
    #[serde(default)]
    pub fails: bool,
    /// Message reported when it fails (none unless configured).
    pub failure: Option<String>,
    /// Outcome may be reported from this instant (ms).
    pub ready_at_ms: i64,
    /// Polls answered `PROCESSING` before the outcome.
    pub processing_polls: u32,
    /// Polls seen so far.
    pub polls: u32,
    /// Final status, frozen once reached.
    pub ended: Option<String>,
    /// Started (ms).
    pub created_at_ms: i64,
    /// Starter.
    pub created_by: String,
}

impl OperationRec {
    /// Status now, counting this call as a poll when `poll` is set.
    pub(crate) fn advance(&mut self, now: i64, poll: bool) -> OperationStatus {
        let done = now >= self.ready_at_ms && self.polls >= self.processing_polls;
        if poll {
            self.polls = self.polls.saturating_add(1);
        }
        match (done, &self.audience_id) {
            (false, _) => OperationStatus::Processing,
            (true, Some(_)) => OperationStatus::Success,
            (true, None) => OperationStatus::Failed,
        }
    }

    pub(crate) fn to_wire(&self, status: OperationStatus) -> Operation {
        let success = status == OperationStatus::Success;
        Operation {
            operation_id: self.id.clone(),
            audience_id: if success && !self.omit_audience_id {
                self.audience_id.clone()
            } else {
                None
            },
            audience_name: Some(self.definition.name.clone()),
            operation_details: Some(self.definition.clone()),
            message: if status == OperationStatus::Failed {
                self.failure.clone()
            } else {
                None
            },
            status,
            created_by: Some(self.created_by.clone()),
            created_at: Some(self.created_at_ms / 1000),
            updated_by: Some(self.created_by.clone()),
            updated_at: Some(self.ready_at_ms.max(self.created_at_ms) / 1000),
        }
    }
}

impl RunRec {
    /// Status now, counting this call as a poll when `poll` is set; terminal states freeze.
    pub(crate) fn advance(&mut self, now: i64, poll: bool) -> RunStatus {
        if let Some(ended) = &self.ended {
            return RunStatus::from(ended.as_str());
        }
        let done = now >= self.ready_at_ms && self.polls >= self.processing_polls;
        if poll {
            self.polls = self.polls.saturating_add(1);
        }
        if !done {
            return RunStatus::Processing;
        }
        let status = if self.will_fail() {
            RunStatus::Failed
        } else {
            RunStatus::Success
        };
        self.ended = Some(status.as_str().to_owned());
        status
    }

    /// Whether the run is going to fail (older state files only set a message).
    pub(crate) fn will_fail(&self) -> bool {
        self.fails || self.failure.is_some()
    }

    /// Whether the run still counts as in progress (no poll consumed).
    pub(crate) fn in_progress(&mut self, now: i64) -> bool {
        !self.advance(now, false).is_terminal()
    }

    pub(crate) fn to_wire(&self, audience: &AudienceRec, status: Option<RunStatus>) -> Run {
        let details = match &status {
            None => Vec::new(),
            Some(s) => {
                let (first, second, message) = match s {
                    RunStatus::Failed => (RunStatus::Failed, RunStatus::Failed, self.failure.clone()),
                    other => (other.clone(), other.clone(), None),
                };
                vec![
                    RunStage {
                        stage: "DATASET_INGEST".to_owned(),
                        status: first,
                        flow_run_id: Some(format!("{}-dataset", self.id)),
                        message,
                    },
                    RunStage {
                        stage: "PROFILE_STORE_INGEST".to_owned(),
                        status: second,
                        flow_run_id: Some(format!("{}-profile", self.id)),
                        message: None,
                    },
                ]
            }
        };
        Run {
            run_id: self.id.clone(),
            audience_id: audience.id.clone(),
            audience_name: Some(audience.definition.name.clone()),
            message: if status == Some(RunStatus::Failed) {
                self.failure.clone()
            } else {
                None
            },
            status: status.unwrap_or_default(),
            details,
            differential_ingestion: Some(self.differential_ingestion),
            data_filter_start_time: Some(self.data_filter_start_time),
            data_filter_end_time: self.data_filter_end_time,
            created_at: Some(self.created_at_ms / 1000),
            created_by: Some(self.created_by.clone()),
        }
    }
}

impl AudienceRec {
    /// Visible to the `/ais` routes (PATCH, DELETE, runs, extend-ttl) at `now`.
    pub(crate) fn ais_visible(&self, visibility: Visibility, now: i64) -> bool {
        visibility.ais(self.created_at_ms, self.ready_at_ms, now)
    }

    /// Visible to the `/ups/audiences` lookups (list, get, delete) at `now`.
    pub(crate) fn lookup_visible(&self, visibility: Visibility, now: i64) -> bool {
        visibility.lookup(self.created_at_ms, self.ready_at_ms, now)
    }

    /// Runs started in the UTC day of `now`.
    pub(crate) fn runs_today(&self, now: i64) -> usize {
        let today = utc_day(now);
        self.runs.iter().filter(|r| utc_day(r.created_at_ms) == today).count()
    }

    pub(crate) fn to_external(&self) -> ExternalAudience {
        let d = &self.definition;
        ExternalAudience {
            audience_id: self.id.clone(),
            audience_name: Some(d.name.clone()),
            description: d.description.clone(),
            fields: d.fields.clone(),
            source_spec: Some(d.source_spec.clone()),
            ttl_in_days: d.ttl_in_days,
            labels: d.labels.clone(),
            audience_type: d.audience_type.clone(),
            origin_name: Some(d.origin_name.clone()),
            namespace: Some(d.namespace.clone().unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned())),
            custom_audience_id: d.custom_audience_id.clone(),
            created_by: Some(self.created_by.clone()),
            created_at: Some(self.created_at_ms / 1000),
            updated_by: Some(self.updated_by.clone()),
            updated_at: Some(self.updated_at_ms / 1000),
        }
    }

    pub(crate) fn to_ups(&self, tenant: &Tenant) -> UpsAudience {
        let d = &self.definition;
        UpsAudience {
            id: self.id.clone(),
            audience_id: Some(d.custom_audience_id.clone().unwrap_or_else(|| self.id.clone())),
            name: d.name.clone(),
            description: d.description.clone(),
            namespace: Some(d.namespace.clone().unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned())),
            ims_org_id: Some(tenant.org.clone()),
            sandbox: Some(UpsSandbox {
                sandbox_id: tenant.sandbox_id.clone(),
                sandbox_name: tenant.sandbox.clone(),
                r#type: if tenant.sandbox == "prod" {
                    "production".to_owned()
                } else {
                    "development".to_owned()
                },
                default: tenant.sandbox == "prod",
            }),
            is_system: Some(false),
            r#type: Some(UPS_TYPE_EXTERNAL_SEGMENT.to_owned()),
            entity_type: Some(ENTITY_TYPE_PROFILE.to_owned()),
            origin_name: Some(ORIGIN_CUSTOM_UPLOAD.to_owned()),
            lifecycle_state: Some(self.lifecycle_state.clone()),
            created_by: Some(self.created_by.clone()),
            dataset_id: Some(self.dataset_id.clone()),
            labels: d.labels.clone(),
            creation_time: Some(self.created_at_ms),
            update_epoch: Some(self.updated_at_ms / 1000),
            update_time: Some(self.updated_at_ms),
            create_epoch: Some(self.created_at_ms / 1000),
        }
    }
}

/// An issued IMS token.
#[derive(Debug, Clone)]
pub(crate) struct TokenRec {
    pub client_id: String,
    pub org_id: String,
    pub expires_at_ms: i64,
}

/// Counters (`GET /_emulator/stats`). Route labels are templates, so the map is bounded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    /// `"METHOD /route/{template}"` → status (or `dropped`) → count.
    pub requests: BTreeMap<String, BTreeMap<String, u64>>,
    /// Every request that reached an AEP route, counted before authentication and faults, by
    /// operation: `create_audience`, `get_operation`, `start_run`, `get_run`, `list_runs`,
    /// `patch_audience`, `delete_audience`, `extend_ttl`, `list_audiences`, `get_audience`,
    /// `delete_ups_audience`, `get_flow`, `list_flows`, `patch_flow`, `list_flow_runs`,
    /// `get_flow_run`, `adhoc_run`, `list_segment_jobs`, `list_schedules`.
    pub received: BTreeMap<String, u64>,
    /// Requests to the IMS token endpoint.
    pub token_requests: u64,
    /// Tokens issued.
    pub tokens_issued: u64,
    /// Token requests refused.
    pub token_refusals: u64,
    /// Create requests that passed authentication and fault injection.
    pub create_requests: u64,
    /// Creates accepted (operations started).
    pub creates: u64,
    /// Creates refused as duplicates.
    pub create_conflicts: u64,
    /// Creates refused by validation.
    pub create_rejections: u64,
    /// Operation polls.
    pub operation_polls: u64,
    /// Start-run requests that passed authentication and fault injection.
    pub run_requests: u64,
    /// Runs started.
    pub runs_started: u64,
    /// Start-runs refused because a run was in progress.
    pub run_in_progress_refusals: u64,
    /// Start-runs refused by a guardrail.
    pub guardrail_refusals: u64,
    /// Run polls (get run and list runs).
    pub run_polls: u64,
    /// Successful PATCHes.
    pub patches: u64,
    /// Successful deletes (ais, ups and admin).
    pub deletes: u64,
    /// Deletes refused as "in use".
    pub delete_refusals: u64,
    /// Highest number of simultaneously in-progress runs seen on one audience.
    pub max_concurrent_runs_per_audience: u64,
    /// Connections dropped after committing (lost answers in `drop` and `timeout` mode).
    pub connections_dropped: u64,
    /// Answers lost after the work was done (every mode).
    pub lost_answers: u64,
    /// Injected 429/500/503 answers.
    pub injected_errors: u64,
    /// Most AEP (`/data/core/…`, `/data/foundation/…`) requests one org sent within any
    /// one-second window: checks the client's rate limit.
    pub max_aep_requests_per_second: u64,
    /// Flow PATCHes applied.
    pub flow_patches: u64,
    /// Flow PATCHes refused with 412 (stale `If-Match`).
    pub flow_patch_conflicts: u64,
    /// Flow PATCHes refused with 400 (missing `If-Match`, malformed, invalid selector, guardrail).
    pub flow_patch_rejections: u64,
    /// Concurrent writes injected before a PATCH (`concurrent_writer_*` faults).
    pub concurrent_writes: u64,
    /// Export runs started by ad hoc activation.
    pub adhoc_runs_started: u64,
    /// Ad hoc activations refused (400).
    pub adhoc_refusals: u64,
}

impl Stats {
    /// Requests received for one operation (see [`Stats::received`]), e.g. `create_audience`:
    /// what the client sent, whatever the answer.
    pub fn received(&self, op: &str) -> u64 {
        self.received.get(op).copied().unwrap_or(0)
    }

    /// Requests for one route template, all statuses.
    pub fn requests_for(&self, route: &str) -> u64 {
        self.requests
            .get(route)
            .map(|by_status| by_status.values().sum())
            .unwrap_or(0)
    }

    /// Requests for one route template and status (`"202"`, `"dropped"`, …).
    pub fn requests_with_status(&self, route: &str, status: &str) -> u64 {
        self.requests
            .get(route)
            .and_then(|by_status| by_status.get(status))
            .copied()
            .unwrap_or(0)
    }
}

/// `GET /_emulator/state`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateView {
    /// Every audience (visible or still being created), by tenant then name.
    pub audiences: Vec<AudienceView>,
    /// Deleted audiences (records AEP keeps in the `deleted` lifecycle state).
    #[serde(default)]
    pub deleted: Vec<AudienceView>,
    /// Every create operation.
    pub operations: Vec<OperationView>,
    /// Every destination dataflow, with its selectors and export runs.
    #[serde(default)]
    pub flows: Vec<FlowView>,
}

impl StateView {
    /// Audiences of one sandbox with this name.
    pub fn audiences_named<'a>(
        &'a self,
        sandbox: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a AudienceView> + 'a {
        self.audiences
            .iter()
            .filter(move |a| a.sandbox == sandbox && a.name == name)
    }

    /// The audience with this ID.
    pub fn audience(&self, id: &str) -> Option<&AudienceView> {
        self.audiences.iter().find(|a| a.audience_id == id)
    }

    /// The flow with this ID.
    pub fn flow(&self, id: &str) -> Option<&FlowView> {
        self.flows.iter().find(|f| f.flow_id == id)
    }
}

/// One destination dataflow in [`StateView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowView {
    /// IMS org.
    pub org: String,
    /// Sandbox.
    pub sandbox: String,
    /// Flow id.
    pub flow_id: String,
    /// Name.
    pub name: String,
    /// `batch` or `streaming`.
    pub kind: DestinationKind,
    /// `enabled` or `disabled`.
    pub state: String,
    /// Current etag (quotes embedded).
    pub etag: String,
    /// The selectors, in order, as `GET /flows/{id}` returns them.
    pub selectors: Vec<SegmentSelector>,
    /// When each selector was mapped (ms), in the same order.
    pub mapped_at_ms: Vec<i64>,
    /// Export runs made so far (within the retention), oldest first.
    pub runs: Vec<ExportRunView>,
}

impl FlowView {
    /// `value.id` of every selector, in order.
    pub fn selector_ids(&self) -> Vec<&str> {
        self.selectors
            .iter()
            .map(|s| s.value.id.as_deref().unwrap_or(""))
            .collect()
    }

    /// How many selectors name `audience_id` (`value.id` or `systemSegmentId`).
    pub fn count_of(&self, audience_id: &str) -> usize {
        self.selectors.iter().filter(|s| s.names(audience_id)).count()
    }

    /// Export runs of one audience (by platform id).
    pub fn runs_of<'a>(&'a self, audience_id: &'a str) -> impl Iterator<Item = &'a ExportRunView> + 'a {
        self.runs.iter().filter(move |r| r.audience_id == audience_id)
    }
}

/// One export run in [`FlowView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportRunView {
    /// Run id.
    pub run_id: String,
    /// Platform id of the audience exported.
    pub audience_id: String,
    /// `streaming`, `after_segment_eval`, `scheduled` or `adhoc`.
    pub trigger: RunTrigger,
    /// `processing` or `success`.
    pub status: String,
    /// Started (ms, emulated clock).
    pub started_at_ms: i64,
    /// Completed (or completes, ms).
    pub completed_at_ms: i64,
}

/// One audience in [`StateView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AudienceView {
    /// IMS org.
    pub org: String,
    /// Sandbox.
    pub sandbox: String,
    /// Audience ID.
    pub audience_id: String,
    /// `customAudienceId` as stored (never with the `ignore` model).
    pub custom_audience_id: Option<String>,
    /// Name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Audience-level labels.
    pub labels: Vec<String>,
    /// Field name → labels.
    pub field_labels: BTreeMap<String, Vec<String>>,
    /// Data expiration.
    pub ttl_in_days: Option<u32>,
    /// Lifecycle state.
    pub lifecycle_state: String,
    /// Created (epoch ms).
    pub created_at_ms: i64,
    /// Visible to the `/ais` routes (PATCH, DELETE, runs) now.
    pub visible: bool,
    /// Visible to the `/ups/audiences` lookups now.
    pub lookup_visible: bool,
    /// Runs, oldest first.
    pub runs: Vec<RunView>,
    /// When the ingested data expires (ms since the epoch, emulated clock), if it was ingested.
    #[serde(default)]
    pub data_expires_at_ms: Option<i64>,
    /// The data has expired: the audience can't be activated and its profile count is 0.
    #[serde(default)]
    pub expired: bool,
}

/// One run in [`AudienceView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunView {
    /// Run ID.
    pub run_id: String,
    /// `PROCESSING`, `SUCCESS`, `FAILED`.
    pub status: String,
    /// Epoch seconds.
    pub created_at: i64,
}

/// One operation in [`StateView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationView {
    /// IMS org.
    pub org: String,
    /// Sandbox.
    pub sandbox: String,
    /// Operation ID.
    pub operation_id: String,
    /// Audience name.
    pub name: String,
    /// Audience ID (for operations that succeed).
    pub audience_id: Option<String>,
    /// Current status (without consuming a poll).
    pub status: String,
}

/// Everything behind the emulator's one lock.
#[derive(Debug)]
pub(crate) struct World {
    pub store: Store,
    pub tokens: HashMap<String, TokenRec>,
    pub credentials: Vec<CredentialSpec>,
    pub settings: Settings,
    pub faults: Faults,
    pub stats: Stats,
    /// Arrival times of AEP requests in the last second, per org.
    pub arrivals: HashMap<String, std::collections::VecDeque<std::time::Instant>>,
    /// `http` or `https`: the scheme of the URLs the emulator hands out (ad hoc `statusURL`).
    pub scheme: &'static str,
}

impl World {
    /// The emulated service's clock: the host's plus the offset tests set through
    /// `/_emulator/clock`. Operations, runs, visibility, data expiry and the daily run counters
    /// follow it; IMS token lifetimes follow the host's.
    pub(crate) fn now_ms(&self) -> i64 {
        now_ms().saturating_add(self.store.clock_offset_ms)
    }

    /// Records an AEP request of `org` and updates the busiest-second counter.
    pub(crate) fn record_arrival(&mut self, org: &str, now: std::time::Instant) {
        let window = std::time::Duration::from_secs(1);
        let arrivals = self.arrivals.entry(org.to_owned()).or_default();
        arrivals.push_back(now);
        while arrivals.front().is_some_and(|t| now.duration_since(*t) >= window) {
            arrivals.pop_front();
        }
        let n = arrivals.len() as u64;
        if n > self.stats.max_aep_requests_per_second {
            self.stats.max_aep_requests_per_second = n;
        }
    }

    pub(crate) fn tenant_mut(&mut self, org: &str, sandbox: &str) -> &mut Tenant {
        self.store
            .tenants
            .entry(format!("{org}/{sandbox}"))
            .or_insert_with(|| Tenant {
                org: org.to_owned(),
                sandbox: sandbox.to_owned(),
                sandbox_id: uuid::Uuid::new_v4().to_string(),
                ..Tenant::default()
            })
    }

    /// Finds an audience by ID in any tenant (admin use).
    pub(crate) fn find_audience_mut(&mut self, id: &str) -> Option<&mut AudienceRec> {
        self.store.tenants.values_mut().find_map(|t| t.audiences.get_mut(id))
    }

    /// The clocks export runs follow now.
    pub(crate) fn export_clock(&self) -> ExportClock {
        ExportClock::new(&self.settings, self.now_ms())
    }

    pub(crate) fn view(&mut self) -> StateView {
        let now = self.now_ms();
        let visibility = self.settings.visibility();
        let clock = self.export_clock();
        let mut view = StateView::default();
        for tenant in self.store.tenants.values_mut() {
            tenant.materialize_runs(&clock);
            for flow in tenant.flows.values() {
                view.flows.push(FlowView {
                    org: tenant.org.clone(),
                    sandbox: tenant.sandbox.clone(),
                    flow_id: flow.id.clone(),
                    name: flow.name.clone(),
                    kind: flow.kind,
                    state: flow.state.clone(),
                    etag: flow.etag.clone(),
                    selectors: flow.selectors.iter().map(|s| s.selector.clone()).collect(),
                    mapped_at_ms: flow.selectors.iter().map(|s| s.mapped_at_ms).collect(),
                    runs: flow
                        .runs
                        .iter()
                        .map(|r| ExportRunView {
                            run_id: r.id.clone(),
                            audience_id: r.segment_id.clone(),
                            trigger: r.trigger,
                            status: r.status(now).as_str().to_owned(),
                            started_at_ms: r.started_at_ms,
                            completed_at_ms: r.completed_at_ms,
                        })
                        .collect(),
                });
            }
            for audience in tenant.deleted.values() {
                view.deleted.push(AudienceView {
                    org: tenant.org.clone(),
                    sandbox: tenant.sandbox.clone(),
                    audience_id: audience.id.clone(),
                    custom_audience_id: audience.definition.custom_audience_id.clone(),
                    name: audience.definition.name.clone(),
                    description: audience.definition.description.clone(),
                    labels: audience.definition.labels.clone(),
                    field_labels: BTreeMap::new(),
                    ttl_in_days: audience.definition.ttl_in_days,
                    lifecycle_state: audience.lifecycle_state.clone(),
                    created_at_ms: audience.created_at_ms,
                    visible: false,
                    lookup_visible: false,
                    runs: Vec::new(),
                    data_expires_at_ms: None,
                    expired: false,
                });
            }
            for audience in tenant.audiences.values_mut() {
                let visible = audience.ais_visible(visibility, now);
                let lookup_visible = audience.lookup_visible(visibility, now);
                let runs = audience
                    .runs
                    .iter_mut()
                    .map(|r| RunView {
                        run_id: r.id.clone(),
                        status: r.advance(now, false).as_str().to_owned(),
                        created_at: r.created_at_ms / 1000,
                    })
                    .collect();
                view.audiences.push(AudienceView {
                    org: tenant.org.clone(),
                    sandbox: tenant.sandbox.clone(),
                    audience_id: audience.id.clone(),
                    custom_audience_id: audience.definition.custom_audience_id.clone(),
                    name: audience.definition.name.clone(),
                    description: audience.definition.description.clone(),
                    labels: audience.definition.labels.clone(),
                    field_labels: audience
                        .definition
                        .fields
                        .iter()
                        .map(|f| (f.name.clone(), f.labels.clone()))
                        .collect(),
                    ttl_in_days: audience.definition.ttl_in_days,
                    lifecycle_state: audience.lifecycle_state.clone(),
                    created_at_ms: audience.created_at_ms,
                    visible,
                    lookup_visible,
                    runs,
                    data_expires_at_ms: audience.data_expires_at_ms(),
                    expired: audience.data_expires_at_ms().is_some_and(|at| at <= now),
                });
            }
            for op in tenant.operations.values_mut() {
                let status = op.advance(now, false);
                view.operations.push(OperationView {
                    org: tenant.org.clone(),
                    sandbox: tenant.sandbox.clone(),
                    operation_id: op.id.clone(),
                    name: op.definition.name.clone(),
                    audience_id: op.audience_id.clone(),
                    status: status.as_str().to_owned(),
                });
            }
        }
        view.audiences.sort_by(|a, b| {
            (&a.org, &a.sandbox, &a.name, &a.audience_id).cmp(&(&b.org, &b.sandbox, &b.name, &b.audience_id))
        });
        view
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_log_counts_per_day_and_forgets_old_days() {
        let mut tenant = Tenant::default();
        tenant.log_run(100);
        tenant.log_run(100);
        tenant.log_run(101);
        assert_eq!(
            (tenant.runs_on(100), tenant.runs_on(101), tenant.runs_on(99)),
            (2, 1, 0)
        );
        tenant.log_run(100 + RUN_LOG_DAYS + 1);
        assert_eq!(tenant.runs_on(100), 0, "pruned");
        assert_eq!(tenant.runs_on(101), 1);
        assert_eq!(utc_day(-1), -1);
        assert_eq!(utc_day(DAY_MS), 1);
    }

    #[test]
    fn older_state_files_load() {
        let tenant: Tenant = serde_json::from_value(serde_json::json!({
            "org": "o", "sandbox": "prod", "sandbox_id": "s", "audiences": {}, "operations": {}
        }))
        .unwrap();
        assert!(tenant.runs_per_day.is_empty());
        let run: RunRec = serde_json::from_value(serde_json::json!({
            "id": "r", "data_filter_start_time": 1, "data_filter_end_time": null,
            "differential_ingestion": true, "failure": "old message", "ready_at_ms": 0,
            "processing_polls": 0, "polls": 0, "ended": null, "created_at_ms": 0, "created_by": "x"
        }))
        .unwrap();
        assert!(run.will_fail(), "an older failing run still fails");
    }

    #[test]
    fn failed_lifecycles_without_a_message_say_nothing() {
        let mut op = OperationRec {
            id: "o".into(),
            audience_id: None,
            definition: CreateAudienceRequest::default(),
            failure: None,
            ready_at_ms: 0,
            processing_polls: 0,
            polls: 0,
            created_at_ms: 0,
            created_by: "x".into(),
            omit_audience_id: false,
        };
        let status = op.advance(1, true);
        assert_eq!(status, OperationStatus::Failed);
        assert_eq!(op.to_wire(status).message, None);

        let mut run = RunRec {
            id: "r".into(),
            data_filter_start_time: 1,
            data_filter_end_time: None,
            differential_ingestion: true,
            fails: true,
            failure: None,
            ready_at_ms: 0,
            processing_polls: 0,
            polls: 0,
            ended: None,
            created_at_ms: 0,
            created_by: "x".into(),
        };
        let audience = AudienceRec {
            id: "a".into(),
            definition: CreateAudienceRequest::default(),
            lifecycle_state: "published".into(),
            dataset_id: "d".into(),
            ready_at_ms: 0,
            created_at_ms: 0,
            updated_at_ms: 0,
            created_by: "x".into(),
            updated_by: "x".into(),
            runs: Vec::new(),
            extended_until_ms: None,
        };
        let status = run.advance(1, true);
        let wire = run.to_wire(&audience, Some(status));
        assert_eq!(wire.status, RunStatus::Failed);
        assert_eq!(wire.message, None);
        assert!(
            wire.details
                .iter()
                .all(|d| d.status == RunStatus::Failed && d.message.is_none())
        );
    }

    #[test]
    fn received_reads_zero_for_unseen_operations() {
        let mut stats = Stats::default();
        stats.received.insert("create_audience".into(), 2);
        assert_eq!(stats.received("create_audience"), 2);
        assert_eq!(stats.received("start_run"), 0);
    }
}
