//! The emulator's activation world (reference "aep-activation-api" §1, §2, §6): destination
//! dataflows with their selectors and export runs, the JSON-Patch edits of their selectors, the
//! export schedules that make runs, and the daily batch segmentation schedule and jobs.
//!
//! Everything here is plain data and pure functions of the emulator clock: export runs are made
//! lazily, when a route or the admin view looks (each run keyed by its selector and instant, so
//! looking twice makes nothing twice), and segmentation jobs are derived from the day and the
//! settings, so no background task mutates state. HTTP handling lives in `routes`; AEP's request
//! rules for selectors live in `validate`.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use aep::flows::{
    CONNECTION_SPEC_KINESIS, CONNECTION_SPEC_PROFILE_STORE, CONNECTION_SPEC_S3, ConnectionRef, ConnectionSummary,
    DestinationKind, DurationSummary, EXPORT_MODE_DAILY_FULL, EntitySummary, FLOW_SPEC_PROFILE_STREAMING, FLOW_SPEC_S3,
    Flow, FlowProperties, FlowRun, FlowRunMetrics, FlowRunStatus, InheritedAttributes, LastOperation,
    LastOperationStatus, NAMESPACE_CUSTOMER_AUDIENCE_UPLOAD, RecordSummary, SCHEDULE_TYPE_BATCH_SEGMENTATION,
    SEGMENT_JOB_SOURCE_SCHEDULER, SegmentJob, SegmentJobProperties, SegmentJobStatus, SegmentSchedule, SegmentSelector,
    SelectorList, SpecRef, StatusSummary, TRANSFORMATION_GENERAL, TRIGGER_SCHEDULED, Transformation,
    TransformationParams, segment_entity_id,
};

use super::config::SelectorIdModel;
use super::state::AudienceRec;
use super::validate;

/// Milliseconds per hour.
const HOUR_MS: i64 = 3_600_000;
/// Milliseconds per UTC day.
pub(crate) const DAY_MS: i64 = 86_400_000;
/// Days of segmentation jobs listed (older ones are forgotten).
pub(crate) const SEGMENT_JOB_DAYS: i64 = 30;
/// Export runs kept per flow at most (the oldest go first).
const RUNS_KEPT_PER_FLOW: usize = 20_000;
/// Days searched for the first export instant of a selector.
const FIRST_INSTANT_HORIZON_DAYS: i64 = 800;

/// A fresh etag as AEP gives it: a UUID inside double quotes.
pub(crate) fn new_etag() -> String {
    format!("\"{}\"", uuid::Uuid::new_v4())
}

/// The UTC day (days since the epoch) of an instant in milliseconds.
fn day_of(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS)
}

/// 64-bit FNV-1a: stable ids derived from names (never a secret).
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A deterministic UUID for `(tenant key, salt, n)`.
fn derived_id(key: &str, salt: u64, n: i64) -> String {
    uuid::Uuid::from_u64_pair(fnv(key) ^ salt, (n as u64) ^ salt.rotate_left(17)).to_string()
}

// ---------------------------------------------------------------------------------------------
// Stored records
// ---------------------------------------------------------------------------------------------

/// A stored destination dataflow.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowRec {
    /// Flow id (also the ad hoc API's destination instance id).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// Batch (S3, new card) or streaming (Kinesis).
    pub kind: DestinationKind,
    /// `enabled` or `disabled` (a disabled flow exports nothing).
    pub state: String,
    /// Current etag, quotes embedded.
    pub etag: String,
    /// Source connection id (Profile Store).
    pub source_connection_id: String,
    /// Target connection id.
    pub target_connection_id: String,
    /// The selectors, in order.
    #[serde(default)]
    pub selectors: Vec<SelectorRec>,
    /// Created (ms).
    pub created_at_ms: i64,
    /// Last update (ms).
    pub updated_at_ms: i64,
    /// Creator.
    pub created_by: String,
    /// Last updater.
    pub updated_by: String,
    /// The last change (`lastOperation`).
    #[serde(default)]
    pub last_operation: Option<LastOperation>,
    /// Export runs made so far, oldest first.
    #[serde(default)]
    pub runs: Vec<ExportRunRec>,
}

/// A stored selector and when it was mapped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SelectorRec {
    /// Emulator-only identity, kept across a `replace` (keys the selector's export runs).
    pub uid: String,
    /// The selector as AEP returns it.
    pub selector: SegmentSelector,
    /// When the audience was mapped (ms).
    pub mapped_at_ms: i64,
    /// When its current export settings took effect (mapped or last replaced, ms).
    pub active_from_ms: i64,
}

impl SelectorRec {
    /// The platform id of the selector's audience: `systemSegmentId`, else `id`.
    pub(crate) fn segment_id(&self) -> String {
        let v = &self.selector.value;
        v.system_segment_id.clone().or_else(|| v.id.clone()).unwrap_or_default()
    }
}

/// What started an export run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunTrigger {
    /// A streaming flow exporting a newly mapped audience.
    Streaming,
    /// A batch export after the daily segmentation job.
    AfterSegmentEval,
    /// A batch export at the selector's `startTime` (or every N hours).
    Scheduled,
    /// An ad hoc activation.
    Adhoc,
}

/// A stored export run: one audience exported by one flow.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportRunRec {
    /// Run id.
    pub id: String,
    /// Platform id of the audience (`segment:<id>` in the record summaries).
    pub segment_id: String,
    /// What started it.
    pub trigger: RunTrigger,
    /// `<selector uid>@<instant>` for scheduled and streaming runs (never made twice).
    #[serde(default)]
    pub key: Option<String>,
    /// Started (ms).
    pub started_at_ms: i64,
    /// Completed (ms); processing until then.
    pub completed_at_ms: i64,
    /// Records exported.
    pub records: i64,
}

impl ExportRunRec {
    /// Still exporting at `now`.
    pub(crate) fn in_progress(&self, now: i64) -> bool {
        self.started_at_ms <= now && now < self.completed_at_ms
    }

    /// `success` once completed, `processing` before.
    pub(crate) fn status(&self, now: i64) -> FlowRunStatus {
        if now >= self.completed_at_ms {
            FlowRunStatus::Success
        } else {
            FlowRunStatus::Processing
        }
    }

    /// The run as `GET /runs` shows it.
    pub(crate) fn to_wire(&self, flow: &FlowRec, now: i64) -> FlowRun {
        let status = self.status(now);
        let done = status == FlowRunStatus::Success;
        let output = if done { self.records } else { 0 };
        let entity = EntitySummary {
            id: segment_entity_id(&self.segment_id),
            input_record_count: Some(self.records),
            output_record_count: Some(output),
            skipped_record_count: Some(0),
        };
        FlowRun {
            id: self.id.clone(),
            flow_id: flow.id.clone(),
            created_at: Some(self.started_at_ms),
            updated_at: Some(if done { self.completed_at_ms } else { self.started_at_ms }),
            metrics: Some(FlowRunMetrics {
                duration_summary: Some(DurationSummary {
                    started_at_utc: Some(self.started_at_ms),
                    completed_at_utc: done.then_some(self.completed_at_ms),
                }),
                record_summary: Some(RecordSummary {
                    input_record_count: Some(self.records),
                    output_record_count: Some(output),
                    skipped_record_count: Some(0),
                    source_summaries: vec![ConnectionSummary {
                        id: Some(flow.source_connection_id.clone()),
                        input_record_count: Some(self.records),
                        output_record_count: Some(output),
                        skipped_record_count: Some(0),
                        entity_summaries: Vec::new(),
                    }],
                    target_summaries: vec![ConnectionSummary {
                        id: Some(flow.target_connection_id.clone()),
                        input_record_count: Some(self.records),
                        output_record_count: Some(output),
                        skipped_record_count: Some(0),
                        entity_summaries: vec![entity],
                    }],
                }),
                status_summary: Some(StatusSummary {
                    status,
                    errors: Vec::new(),
                }),
            }),
        }
    }
}

/// The clocks and durations export runs follow (from the settings).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ExportClock {
    /// The emulated "now" (ms).
    pub now: i64,
    /// The daily segmentation job.
    pub segmentation: SegmentationClock,
    /// Streaming: mapping → export start.
    pub streaming_delay_ms: i64,
    /// Duration of one export run.
    pub run_duration_ms: i64,
    /// Runs older than this are neither made nor kept (ms).
    pub retention_ms: i64,
}

impl ExportClock {
    /// From the settings, at `now`.
    pub(crate) fn new(settings: &super::config::Settings, now: i64) -> Self {
        let ms = |v: u64| i64::try_from(v).unwrap_or(i64::MAX / 4).min(i64::MAX / 4);
        ExportClock {
            now,
            segmentation: SegmentationClock::new(settings),
            streaming_delay_ms: ms(settings.streaming_export_delay_ms),
            run_duration_ms: ms(settings.export_run_duration_ms),
            retention_ms: i64::from(settings.flow_runs_retention_days.clamp(1, 366)) * DAY_MS,
        }
    }

    /// Runs started before this are forgotten.
    pub(crate) fn cutoff(&self) -> i64 {
        self.now.saturating_sub(self.retention_ms)
    }
}

/// The daily batch segmentation job: when it starts and how long it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentationClock {
    /// Offset of the job's start in its UTC day (ms).
    pub offset_ms: i64,
    /// Its duration (ms).
    pub duration_ms: i64,
    /// UTC hour (for the cron).
    pub hour: u32,
    /// UTC minute (for the cron).
    pub minute: u32,
}

impl SegmentationClock {
    pub(crate) fn new(settings: &super::config::Settings) -> Self {
        let hour = settings.segmentation_hour_utc.min(23);
        let minute = settings.segmentation_minute_utc.min(59);
        SegmentationClock {
            offset_ms: i64::from(hour) * HOUR_MS + i64::from(minute) * 60_000,
            duration_ms: i64::try_from(settings.segmentation_job_duration_ms)
                .unwrap_or(DAY_MS)
                .min(DAY_MS),
            hour,
            minute,
        }
    }

    /// The job of UTC day `day`: (start, end) in ms.
    pub(crate) fn job(&self, day: i64) -> (i64, i64) {
        let start = day * DAY_MS + self.offset_ms;
        (start, start + self.duration_ms)
    }
}

// ---------------------------------------------------------------------------------------------
// Export schedules
// ---------------------------------------------------------------------------------------------

/// When a batch selector exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cadence {
    /// When the daily segmentation job ends.
    AfterSegmentEval,
    /// Daily at this UTC hour.
    DailyAt(u32),
    /// Every `every` hours, from `offset` (UTC hour).
    EveryHours { every: u32, offset: u32 },
}

/// A batch selector's export schedule, read from its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ExportPlan {
    cadence: Cadence,
    once: bool,
    start_day: Option<i64>,
    end_day: Option<i64>,
}

impl ExportPlan {
    /// The plan of a selector (validated at PATCH; anything unreadable exports after the daily
    /// segmentation job).
    fn of(selector: &SegmentSelector) -> ExportPlan {
        let value = &selector.value;
        let schedule = value.schedule.clone().unwrap_or_default();
        let frequency = schedule.frequency.as_deref().unwrap_or("DAILY");
        let hour = schedule.start_time.as_deref().and_then(validate::start_hour);
        let scheduled = schedule.trigger_type.as_deref() == Some(TRIGGER_SCHEDULED);
        let every = match frequency {
            "EVERY_3_HOURS" => Some(3),
            "EVERY_6_HOURS" => Some(6),
            "EVERY_8_HOURS" => Some(8),
            "EVERY_12_HOURS" => Some(12),
            _ => None,
        };
        let cadence = match (every, scheduled, hour) {
            (Some(every), _, _) => Cadence::EveryHours {
                every,
                offset: hour.unwrap_or(0),
            },
            (None, true, Some(hour)) => Cadence::DailyAt(hour),
            _ => Cadence::AfterSegmentEval,
        };
        let once = frequency == "ONCE" && value.export_mode.as_deref() == Some(EXPORT_MODE_DAILY_FULL);
        ExportPlan {
            cadence,
            once,
            start_day: schedule.start_date.as_deref().and_then(validate::date_day),
            // `endDate` does not apply to a one-time export.
            end_day: if once {
                None
            } else {
                schedule.end_date.as_deref().and_then(validate::date_day)
            },
        }
    }

    fn in_range(&self, day: i64) -> bool {
        self.start_day.is_none_or(|s| day >= s) && self.end_day.is_none_or(|e| day <= e)
    }

    /// The export instants that belong to UTC day `day`, in order.
    fn instants_of_day(&self, day: i64, seg: &SegmentationClock) -> Vec<i64> {
        match self.cadence {
            Cadence::AfterSegmentEval => vec![seg.job(day).1],
            Cadence::DailyAt(hour) => vec![day * DAY_MS + i64::from(hour) * HOUR_MS],
            Cadence::EveryHours { every, offset } => {
                let mut hours: Vec<i64> = (0..24 / every.max(1))
                    .map(|k| i64::from((offset + k * every) % 24))
                    .collect();
                hours.sort_unstable();
                hours.into_iter().map(|h| day * DAY_MS + h * HOUR_MS).collect()
            }
        }
    }

    /// The first export instant strictly after `after`.
    fn first_after(&self, after: i64, seg: &SegmentationClock) -> Option<i64> {
        let from = (day_of(after) - 1).max(self.start_day.unwrap_or(i64::MIN));
        for day in from..from.saturating_add(FIRST_INSTANT_HORIZON_DAYS) {
            if self.end_day.is_some_and(|e| day > e) {
                return None;
            }
            if let Some(t) = self.instants_of_day(day, seg).into_iter().find(|t| *t > after) {
                return Some(t);
            }
        }
        None
    }

    /// The export instants in `(after, until]`.
    fn instants_between(&self, after: i64, until: i64, seg: &SegmentationClock) -> Vec<i64> {
        if self.once {
            return self
                .first_after(after, seg)
                .filter(|t| *t <= until)
                .into_iter()
                .collect();
        }
        if until <= after {
            return Vec::new();
        }
        let mut out = Vec::new();
        for day in (day_of(after) - 1)..=day_of(until) {
            if !self.in_range(day) {
                continue;
            }
            out.extend(
                self.instants_of_day(day, seg)
                    .into_iter()
                    .filter(|t| *t > after && *t <= until),
            );
        }
        out
    }
}

/// Records a run exports: a stable number per audience.
fn records_of(segment_id: &str) -> i64 {
    1_000 + (fnv(segment_id) % 9_000) as i64
}

// ---------------------------------------------------------------------------------------------
// Flows
// ---------------------------------------------------------------------------------------------

/// Where the flow lives, for its wire form.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FlowHome<'a> {
    pub org: &'a str,
    pub sandbox: &'a str,
    pub sandbox_id: &'a str,
}

/// Why an ad hoc export of an audience is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AdhocRefusal {
    /// Not mapped in the flow, not a batch flow, too early or out of schedule range.
    OutOfRange,
    /// An export of the audience on the flow is in progress (this run).
    Running(String),
}

impl FlowRec {
    /// A new enabled-or-not flow of `kind` with no selectors.
    pub(crate) fn new(
        name: String,
        description: Option<String>,
        kind: DestinationKind,
        state: String,
        now: i64,
        by: String,
    ) -> Self {
        FlowRec {
            id: uuid::Uuid::new_v4().to_string(),
            name,
            description,
            kind,
            state,
            etag: new_etag(),
            source_connection_id: uuid::Uuid::new_v4().to_string(),
            target_connection_id: uuid::Uuid::new_v4().to_string(),
            selectors: Vec::new(),
            created_at_ms: now,
            updated_at_ms: now,
            created_by: by.clone(),
            updated_by: by,
            last_operation: None,
            runs: Vec::new(),
        }
    }

    /// `state == enabled`.
    pub(crate) fn enabled(&self) -> bool {
        self.state.eq_ignore_ascii_case("enabled")
    }

    fn flow_spec_id(&self) -> &'static str {
        match self.kind {
            DestinationKind::Batch => FLOW_SPEC_S3,
            DestinationKind::Streaming => FLOW_SPEC_PROFILE_STREAMING,
        }
    }

    fn target_spec_id(&self) -> &'static str {
        match self.kind {
            DestinationKind::Batch => CONNECTION_SPEC_S3,
            DestinationKind::Streaming => CONNECTION_SPEC_KINESIS,
        }
    }

    /// Someone wrote the flow (a change, or a concurrent writer): new etag and update time.
    pub(crate) fn touch(&mut self, now: i64, by: &str) {
        self.etag = new_etag();
        self.updated_at_ms = now;
        self.updated_by = by.to_owned();
    }

    /// The flow as `GET /flows/{id}` shows it.
    pub(crate) fn to_wire(&self, home: FlowHome<'_>) -> Flow {
        let spec = |id: &str| {
            Some(SpecRef {
                id: id.to_owned(),
                version: Some("1.0".to_owned()),
            })
        };
        let mut extra = serde_json::Map::new();
        if self.kind == DestinationKind::Batch {
            extra.insert("mandatoryFields".to_owned(), json!([]));
            extra.insert("primaryFields".to_owned(), json!([]));
            extra.insert("profileMapping".to_owned(), json!({}));
        }
        Flow {
            id: self.id.clone(),
            name: self.name.clone(),
            description: self.description.clone(),
            flow_spec: spec(self.flow_spec_id()),
            state: Some(self.state.clone()),
            etag: self.etag.clone(),
            version: Some(self.etag.clone()),
            source_connection_ids: vec![self.source_connection_id.clone()],
            target_connection_ids: vec![self.target_connection_id.clone()],
            inherited_attributes: Some(InheritedAttributes {
                properties: Some(FlowProperties {
                    is_destination_flow: Some(true),
                }),
                source_connections: vec![ConnectionRef {
                    id: self.source_connection_id.clone(),
                    connection_spec: spec(CONNECTION_SPEC_PROFILE_STORE),
                }],
                target_connections: vec![ConnectionRef {
                    id: self.target_connection_id.clone(),
                    connection_spec: spec(self.target_spec_id()),
                }],
            }),
            transformations: vec![Transformation {
                name: TRANSFORMATION_GENERAL.to_owned(),
                params: TransformationParams {
                    segment_selectors: Some(SelectorList {
                        selectors: self.selectors.iter().map(|s| s.selector.clone()).collect(),
                    }),
                    profile_selectors: Some(json!({"selectors": []})),
                    extra,
                },
            }],
            created_at: Some(self.created_at_ms),
            updated_at: Some(self.updated_at_ms),
            created_by: Some(self.created_by.clone()),
            updated_by: Some(self.updated_by.clone()),
            sandbox_id: Some(home.sandbox_id.to_owned()),
            sandbox_name: Some(home.sandbox.to_owned()),
            ims_org_id: Some(home.org.to_owned()),
            last_operation: self.last_operation.clone(),
        }
    }

    /// Records a completed change (`lastOperation`) and gives the flow a new etag.
    pub(crate) fn record_change(&mut self, ops: Vec<Value>, now: i64, by: &str) {
        self.touch(now, by);
        self.last_operation = Some(LastOperation {
            started: Some(now),
            updated: Some(now),
            percent_completed: Some(100),
            status: Some(LastOperationStatus {
                value: Some("completed".to_owned()),
                errors: Vec::new(),
            }),
            ops,
            operation: Some("update".to_owned()),
        });
    }

    /// Makes the export runs due by `clock.now` that are not made yet, and forgets runs past
    /// the retention. Returns whether runs were added or dropped.
    pub(crate) fn materialize(&mut self, clock: &ExportClock) -> bool {
        let before = self.runs.len();
        let cutoff = clock.cutoff();
        self.runs.retain(|r| r.started_at_ms >= cutoff);
        let mut changed = self.runs.len() != before;
        if !self.enabled() {
            return changed;
        }
        let made: HashSet<String> = self.runs.iter().filter_map(|r| r.key.clone()).collect();
        let mut due: Vec<ExportRunRec> = Vec::new();
        for rec in &self.selectors {
            let segment = rec.segment_id();
            if segment.is_empty() {
                continue;
            }
            let (instants, trigger) = match self.kind {
                DestinationKind::Streaming => {
                    let at = rec.mapped_at_ms.saturating_add(clock.streaming_delay_ms);
                    (vec![at], RunTrigger::Streaming)
                }
                DestinationKind::Batch => {
                    let plan = ExportPlan::of(&rec.selector);
                    let trigger = match plan.cadence {
                        Cadence::AfterSegmentEval => RunTrigger::AfterSegmentEval,
                        _ => RunTrigger::Scheduled,
                    };
                    // A one-time export is the first after the mapping, wherever that falls;
                    // recurring ones are looked for within the retention only (bounded work).
                    let after = if plan.once {
                        rec.active_from_ms
                    } else {
                        rec.active_from_ms.max(cutoff.saturating_sub(1))
                    };
                    (plan.instants_between(after, clock.now, &clock.segmentation), trigger)
                }
            };
            for at in instants {
                if at > clock.now || at < cutoff {
                    continue;
                }
                let key = format!("{}@{at}", rec.uid);
                if made.contains(&key) {
                    continue;
                }
                due.push(ExportRunRec {
                    id: uuid::Uuid::new_v4().to_string(),
                    segment_id: segment.clone(),
                    trigger,
                    key: Some(key),
                    started_at_ms: at,
                    completed_at_ms: at.saturating_add(clock.run_duration_ms),
                    records: records_of(&segment),
                });
            }
        }
        if !due.is_empty() {
            changed = true;
            self.runs.extend(due);
            self.runs.sort_by_key(|r| r.started_at_ms);
        }
        if self.runs.len() > RUNS_KEPT_PER_FLOW {
            let excess = self.runs.len() - RUNS_KEPT_PER_FLOW;
            self.runs.drain(..excess);
        }
        changed
    }

    /// Whether an ad hoc export of `audience_id` may start now (reference §1.14): a batch flow,
    /// the audience mapped, at least `min_wait_ms` past its first scheduled activation, today
    /// inside its schedule's dates, and no export of it in progress. Runs must be materialized.
    pub(crate) fn adhoc_check(
        &self,
        audience_id: &str,
        min_wait_ms: i64,
        clock: &ExportClock,
    ) -> Result<String, AdhocRefusal> {
        if self.kind != DestinationKind::Batch || !self.enabled() {
            return Err(AdhocRefusal::OutOfRange);
        }
        let rec = self
            .selectors
            .iter()
            .find(|s| s.selector.names(audience_id))
            .ok_or(AdhocRefusal::OutOfRange)?;
        let plan = ExportPlan::of(&rec.selector);
        let first = plan
            .first_after(rec.mapped_at_ms, &clock.segmentation)
            .ok_or(AdhocRefusal::OutOfRange)?;
        if first.saturating_add(min_wait_ms) > clock.now || (!plan.once && !plan.in_range(day_of(clock.now))) {
            return Err(AdhocRefusal::OutOfRange);
        }
        let segment = rec.segment_id();
        if let Some(run) = self
            .runs
            .iter()
            .find(|r| r.segment_id == segment && r.in_progress(clock.now))
        {
            return Err(AdhocRefusal::Running(run.id.clone()));
        }
        Ok(segment)
    }

    /// Starts an ad hoc export of the audience with platform id `segment_id`; returns the run id.
    pub(crate) fn start_adhoc(&mut self, segment_id: &str, clock: &ExportClock) -> String {
        let run = ExportRunRec {
            id: uuid::Uuid::new_v4().to_string(),
            segment_id: segment_id.to_owned(),
            trigger: RunTrigger::Adhoc,
            key: None,
            started_at_ms: clock.now,
            completed_at_ms: clock.now.saturating_add(clock.run_duration_ms),
            records: records_of(segment_id),
        };
        let id = run.id.clone();
        self.runs.push(run);
        id
    }
}

// ---------------------------------------------------------------------------------------------
// JSON-Patch of the selectors
// ---------------------------------------------------------------------------------------------

/// What a selector PATCH needs to know besides the flow.
pub(crate) struct PatchContext<'a> {
    /// The tenant's audiences (a selector must name one of them).
    pub audiences: &'a BTreeMap<String, AudienceRec>,
    /// Whether an audience is visible to the `/ais` routes now.
    pub visible: &'a dyn Fn(&AudienceRec) -> bool,
    /// How selector ids are stored.
    pub ids: SelectorIdModel,
    /// Audiences a flow may hold.
    pub max_audiences: usize,
    /// The emulated "now" (ms).
    pub now: i64,
}

/// The audience a selector value names: by id, `customAudienceId` or `systemSegmentId`.
pub(crate) fn find_audience<'a>(
    audiences: &'a BTreeMap<String, AudienceRec>,
    selector: &SegmentSelector,
) -> Option<&'a AudienceRec> {
    let v = &selector.value;
    let by_id = |id: &str| {
        audiences.get(id).or_else(|| {
            audiences
                .values()
                .find(|a| a.definition.custom_audience_id.as_deref() == Some(id))
        })
    };
    v.system_segment_id
        .as_deref()
        .and_then(|id| audiences.get(id))
        .or_else(|| v.id.as_deref().and_then(by_id))
}

/// Applies the `normalise` id model: `value.id` = the audience's `customAudienceId` (else its
/// id), `systemSegmentId` = its id, `namespace` = `CustomerAudienceUpload`.
pub(crate) fn normalise(selector: &mut SegmentSelector, audience: &AudienceRec) {
    let v = &mut selector.value;
    v.id = Some(
        audience
            .definition
            .custom_audience_id
            .clone()
            .unwrap_or_else(|| audience.id.clone()),
    );
    v.system_segment_id = Some(audience.id.clone());
    v.namespace = Some(NAMESPACE_CUSTOMER_AUDIENCE_UPLOAD.to_owned());
}

/// Where an operation points in the selectors array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// `/-`: after the last one.
    End,
    /// `/<n>`.
    Index(usize),
}

fn slot(path: &str) -> Result<Slot, String> {
    let Some(rest) = path.strip_prefix(aep::flows::SELECTORS_PATH) else {
        return Err(format!(
            "path: {path} is not supported; use {}/- (add) or {}/<index> (add, replace, remove)",
            aep::flows::SELECTORS_PATH,
            aep::flows::SELECTORS_PATH
        ));
    };
    match rest {
        "/-" => Ok(Slot::End),
        _ => rest
            .strip_prefix('/')
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && (n.len() == 1 || !n.starts_with('0')))
            .and_then(|n| n.parse::<usize>().ok())
            .map(Slot::Index)
            .ok_or_else(|| format!("path: {path} must end in /- or /<index>")),
    }
}

/// Applies a JSON-Patch array to the selectors of `flow` with RFC 6902 semantics: operations in
/// order, each on the result of the one before, all or nothing. Returns the new selectors, or
/// the `errorMessage` of a 400.
pub(crate) fn apply_patch(flow: &FlowRec, body: &Value, ctx: &PatchContext<'_>) -> Result<Vec<SelectorRec>, String> {
    let ops = match body {
        Value::Array(ops) if !ops.is_empty() => ops,
        _ => return Err("request body: must be a non-empty JSON-Patch array of operations".to_owned()),
    };
    let mut selectors = flow.selectors.clone();
    let now_secs = (ctx.now / 1000).to_string();
    for (i, op) in ops.iter().enumerate() {
        let obj = op
            .as_object()
            .ok_or_else(|| format!("operations[{i}]: must be an object {{op, path, value}}"))?;
        let kind = match obj
            .get("op")
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("add") => "add",
            Some("replace") => "replace",
            Some("remove") => "remove",
            _ => return Err(format!("operations[{i}].op: must be add, replace or remove")),
        };
        let path = obj
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("operations[{i}].path: required"))?;
        let slot = slot(path)?;
        let value = match obj.get("value") {
            None | Some(Value::Null) => {
                return Err(format!(
                    "operations[{i}].value: required on every operation (remove included)"
                ));
            }
            Some(v) => v,
        };
        let len = selectors.len();
        let index = match (kind, slot) {
            ("add", Slot::End) => len,
            ("add", Slot::Index(n)) if n <= len => n,
            (_, Slot::Index(n)) if n < len => n,
            (_, Slot::End) => return Err(format!("path: {kind} needs an index, not /-")),
            (_, Slot::Index(n)) => {
                return Err(format!(
                    "path: index {n} is out of range (the dataflow has {len} audiences)"
                ));
            }
        };
        if kind == "remove" {
            selectors.remove(index);
            continue;
        }
        let mut selector = validate::segment_selector(flow.kind, value)?;
        let audience = find_audience(ctx.audiences, &selector).filter(|a| (ctx.visible)(a));
        let Some(audience) = audience else {
            return Err(format!(
                "id: audience {} not found in this sandbox",
                selector.value.id.as_deref().unwrap_or("")
            ));
        };
        if ctx.ids == SelectorIdModel::Normalise {
            normalise(&mut selector, audience);
        }
        if kind == "add" {
            selector.value.create_time = Some(now_secs.clone());
            selector.value.update_time = Some(now_secs.clone());
            selectors.insert(
                index,
                SelectorRec {
                    uid: uuid::Uuid::new_v4().to_string(),
                    selector,
                    mapped_at_ms: ctx.now,
                    active_from_ms: ctx.now,
                },
            );
        } else {
            let old = &mut selectors[index];
            selector.value.create_time = old.selector.value.create_time.clone();
            selector.value.update_time = Some(now_secs.clone());
            old.selector = selector;
            old.active_from_ms = ctx.now;
        }
    }
    if selectors.len() > ctx.max_audiences && selectors.len() > flow.selectors.len() {
        return Err(format!(
            "segmentSelectors: a dataflow can hold at most {} audiences (guardrail); this change would make {}",
            ctx.max_audiences,
            selectors.len()
        ));
    }
    Ok(selectors)
}

// ---------------------------------------------------------------------------------------------
// Segmentation schedule and jobs
// ---------------------------------------------------------------------------------------------

/// The daily `batch_segmentation` schedule of a tenant (`GET /config/schedules`).
pub(crate) fn batch_schedule(tenant_key: &str, seg: &SegmentationClock) -> SegmentSchedule {
    SegmentSchedule {
        id: derived_id(tenant_key, 0x5c4e_d01e_0000_0001, 0),
        name: Some("Daily batch segmentation".to_owned()),
        state: Some("active".to_owned()),
        r#type: Some(SCHEDULE_TYPE_BATCH_SEGMENTATION.to_owned()),
        schedule: Some(format!("0 {} {} * * ?", seg.minute, seg.hour)),
        properties: Some(json!({"segments": ["*"]})),
        create_epoch: Some(0),
        update_epoch: Some(0),
    }
}

/// The scheduler's segmentation jobs of the last [`SEGMENT_JOB_DAYS`] days that have started by
/// `now`, oldest first: one per day at the schedule's time, `PROCESSING` until the job's
/// duration has passed, `SUCCEEDED` after.
pub(crate) fn segment_jobs(tenant_key: &str, org: &str, seg: &SegmentationClock, now: i64) -> Vec<SegmentJob> {
    let schedule_id = batch_schedule(tenant_key, seg).id;
    let today = day_of(now);
    ((today - SEGMENT_JOB_DAYS + 1)..=today)
        .filter_map(|day| {
            let (start, end) = seg.job(day);
            if start > now {
                return None;
            }
            let done = now >= end;
            let updated = if done { end } else { start };
            let mut metrics = json!({"totalTime": {"startTimeInMs": start}});
            if done {
                metrics = json!({"totalTime": {"startTimeInMs": start, "endTimeInMs": end,
                    "totalTimeInMs": end - start}});
            }
            Some(SegmentJob {
                id: derived_id(tenant_key, 0x5e61_0b5e_0000_0002, day),
                ims_org_id: Some(org.to_owned()),
                status: if done {
                    SegmentJobStatus::Succeeded
                } else {
                    SegmentJobStatus::Processing
                },
                source: Some(SEGMENT_JOB_SOURCE_SCHEDULER.to_owned()),
                creation_time: Some(start),
                update_time: Some(updated),
                update_epoch: Some(updated / 1000),
                properties: Some(SegmentJobProperties {
                    schedule_id: Some(schedule_id.clone()),
                    run_id: Some(derived_id(tenant_key, 0x7275_6e5f_0000_0003, day)),
                }),
                segments: vec![json!({"segmentId": "*"})],
                metrics: Some(metrics),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aep::flows::{ExportSchedule, SelectorValue};

    const SEG: SegmentationClock = SegmentationClock {
        offset_ms: HOUR_MS,
        duration_ms: 30 * 60_000,
        hour: 1,
        minute: 0,
    };

    fn batch(mode: &str, frequency: &str, trigger: Option<&str>, start_time: Option<&str>) -> SegmentSelector {
        SegmentSelector::platform_segment(SelectorValue {
            id: Some("a".into()),
            export_mode: Some(mode.into()),
            schedule: Some(ExportSchedule {
                frequency: Some(frequency.into()),
                trigger_type: trigger.map(Into::into),
                start_time: start_time.map(Into::into),
                start_date: Some("1970-01-02".into()),
                end_date: Some("1970-01-04".into()),
                ..ExportSchedule::default()
            }),
            ..SelectorValue::default()
        })
    }

    #[test]
    fn export_plans_follow_trigger_frequency_and_dates() {
        let after = ExportPlan::of(&batch("DAILY_FULL_EXPORT", "DAILY", Some("AFTER_SEGMENT_EVAL"), None));
        // Days 1..=3, each when that day's job ends (01:30).
        let all = after.instants_between(0, 10 * DAY_MS, &SEG);
        let job_end = |d: i64| d * DAY_MS + HOUR_MS + 30 * 60_000;
        assert_eq!(all, vec![job_end(1), job_end(2), job_end(3)]);
        // Mapped after day 2's job ended: day 3 only.
        assert_eq!(after.instants_between(job_end(2), 10 * DAY_MS, &SEG), vec![job_end(3)]);

        let once = ExportPlan::of(&batch("DAILY_FULL_EXPORT", "ONCE", Some("SCHEDULED"), Some("13:00")));
        let at13 = |d: i64| d * DAY_MS + 13 * HOUR_MS;
        assert_eq!(once.instants_between(0, 10 * DAY_MS, &SEG), vec![at13(1)]);
        assert_eq!(
            once.first_after(at13(1), &SEG),
            Some(at13(2)),
            "endDate does not apply to ONCE"
        );

        let incremental = ExportPlan::of(&batch(
            "FIRST_FULL_THEN_INCREMENTAL",
            "EVERY_8_HOURS",
            None,
            Some("02:00"),
        ));
        let day1: Vec<i64> = incremental.instants_between(DAY_MS - 1, 2 * DAY_MS - 1, &SEG);
        assert_eq!(
            day1,
            vec![DAY_MS + 2 * HOUR_MS, DAY_MS + 10 * HOUR_MS, DAY_MS + 18 * HOUR_MS]
        );
    }

    #[test]
    fn materialize_makes_each_run_once_and_forgets_old_ones() {
        let mut flow = FlowRec::new(
            "f".into(),
            None,
            DestinationKind::Streaming,
            "enabled".into(),
            0,
            "x".into(),
        );
        flow.selectors.push(SelectorRec {
            uid: "u".into(),
            selector: SegmentSelector::platform_segment(SelectorValue::for_audience("a")),
            mapped_at_ms: 1_000,
            active_from_ms: 1_000,
        });
        let clock = |now| ExportClock {
            now,
            segmentation: SEG,
            streaming_delay_ms: 500,
            run_duration_ms: 100,
            retention_ms: 7 * DAY_MS,
        };
        assert!(!flow.materialize(&clock(1_400)));
        assert!(flow.materialize(&clock(1_500)));
        assert!(!flow.materialize(&clock(1_550)), "made once");
        assert_eq!(flow.runs.len(), 1);
        assert_eq!(flow.runs[0].status(1_550), FlowRunStatus::Processing);
        assert_eq!(flow.runs[0].status(1_600), FlowRunStatus::Success);
        let wire = flow.runs[0].to_wire(&flow, 1_600);
        assert!(wire.concerns("a"));
        assert!(flow.materialize(&clock(8 * DAY_MS)), "past the retention");
        assert!(flow.runs.is_empty());
    }

    #[test]
    fn recurring_exports_are_made_within_the_retention_and_one_time_ones_never_again() {
        let mut flow = FlowRec::new(
            "f".into(),
            None,
            DestinationKind::Batch,
            "enabled".into(),
            0,
            "x".into(),
        );
        let mut daily = batch("DAILY_FULL_EXPORT", "DAILY", Some("AFTER_SEGMENT_EVAL"), None);
        let mut once = batch("DAILY_FULL_EXPORT", "ONCE", Some("SCHEDULED"), Some("13:00"));
        for s in [&mut daily, &mut once] {
            let schedule = s.value.schedule.as_mut().unwrap();
            schedule.start_date = None;
            schedule.end_date = None;
        }
        once.value.id = Some("b".into());
        for (uid, selector) in [("d", daily), ("o", once)] {
            flow.selectors.push(SelectorRec {
                uid: uid.into(),
                selector,
                mapped_at_ms: 0,
                active_from_ms: 0,
            });
        }
        let clock = ExportClock {
            now: 400 * DAY_MS,
            segmentation: SEG,
            streaming_delay_ms: 0,
            run_duration_ms: 0,
            retention_ms: 7 * DAY_MS,
        };
        assert!(flow.materialize(&clock));
        assert!(flow.runs.iter().all(|r| r.started_at_ms >= clock.cutoff()));
        assert_eq!(flow.runs.len(), 7, "one a day within the last 7 days");
        assert!(
            flow.runs.iter().all(|r| r.segment_id == "a"),
            "the one-time export is long past"
        );
    }

    #[test]
    fn segmentation_jobs_are_daily_and_succeed_after_their_duration() {
        let now = 40 * DAY_MS + HOUR_MS + 10 * 60_000;
        let jobs = segment_jobs("o/s", "o", &SEG, now);
        assert_eq!(jobs.len() as i64, SEGMENT_JOB_DAYS);
        let last = jobs.last().unwrap();
        assert_eq!(last.status, SegmentJobStatus::Processing);
        assert_eq!(last.creation_time, Some(40 * DAY_MS + HOUR_MS));
        assert!(
            jobs[..jobs.len() - 1]
                .iter()
                .all(|j| j.status == SegmentJobStatus::Succeeded)
        );
        assert_eq!(segment_jobs("o/s", "o", &SEG, now)[0].id, jobs[0].id, "stable ids");
        let schedule = batch_schedule("o/s", &SEG);
        assert_eq!(schedule.schedule.as_deref(), Some("0 0 1 * * ?"));
        assert_eq!(
            last.properties.as_ref().unwrap().schedule_id.as_deref(),
            Some(schedule.id.as_str())
        );
    }

    #[test]
    fn patch_paths_are_the_selector_array_only() {
        assert_eq!(
            slot("/transformations/0/params/segmentSelectors/selectors/-"),
            Ok(Slot::End)
        );
        assert_eq!(
            slot("/transformations/0/params/segmentSelectors/selectors/12"),
            Ok(Slot::Index(12))
        );
        for bad in [
            "/transformations/0/params/segmentSelectors/selectors",
            "/transformations/0/params/segmentSelectors/selectors/01",
            "/transformations/0/params/segmentSelectors/selectors/x",
            "/transformations/0/params/profileSelectors/selectors/-",
        ] {
            assert!(slot(bad).unwrap_err().starts_with("path:"), "{bad}");
        }
    }
}
