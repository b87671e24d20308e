//! The `AudienceActivation` custom resource: one ExternalAudience mapped into one existing AEP
//! destination dataflow (Flow Service), with its export settings for file-based destinations.
//! Types, doc comments (`kubectl explain`), apply-time validation (OpenAPI + CEL) and the
//! annotation it reads. No I/O.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{Blocked, DeletionPolicy};

/// Annotation asking for one ad hoc export of the audience to a file-based dataflow: every new
/// value is one request (AEP's ad hoc activation API); the same value is never sent twice.
pub const EXPORT_REQUESTED_AT: &str = "aep.audience-operator.dev/export-requested-at";
/// Finalizer guarding the removal of the audience from the dataflow.
pub const ACTIVATION_FINALIZER: &str = "audienceactivations.aep.audience-operator.dev/cleanup";
/// Longest value of [`EXPORT_REQUESTED_AT`] that is acted on (longer ones are refused).
pub const EXPORT_REQUEST_MAX: usize = 128;

/// An audience's activation to an AEP destination: the controller maps the ExternalAudience into
/// an existing destination dataflow (adds its audience selector, with the export settings of a
/// file-based destination), keeps the settings in line with the spec, reports the audience's
/// latest export run, and removes the audience from the dataflow on delete.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    doc = "An activation of an ExternalAudience to an existing AEP destination dataflow: the controller adds the audience to the dataflow (with the export settings of a file-based destination), keeps them in line with the spec, reports the latest export run, and removes the audience from the dataflow on delete.",
    group = "aep.audience-operator.dev",
    version = "v1alpha1",
    kind = "AudienceActivation",
    plural = "audienceactivations",
    singular = "audienceactivation",
    shortname = "aact",
    category = "aep",
    namespaced,
    status = "AudienceActivationStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","priority":1}"#,
    printcolumn = r#"{"name":"Audience","type":"string","jsonPath":".spec.audienceRef.name"}"#,
    printcolumn = r#"{"name":"Dataflow","type":"string","jsonPath":".status.dataflow.name"}"#,
    printcolumn = r#"{"name":"Destination","type":"string","jsonPath":".status.dataflow.destinationKind"}"#,
    printcolumn = r#"{"name":"Last Export","type":"string","jsonPath":".status.lastExport.state"}"#,
    printcolumn = r#"{"name":"Audience ID","type":"string","jsonPath":".status.audienceId","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AudienceActivationSpec {
    /// The ExternalAudience (in this namespace) to activate. Immutable. The activation waits
    /// (`Reconciling/AudienceNotReady`) until that object is Ready, and uses its credentials
    /// Secret and sandbox.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.audienceRef is immutable: create a new AudienceActivation instead"))]
    pub audience_ref: AudienceRef,

    /// Id of an existing destination dataflow (AEP UI: Destinations > Browse; Flow Service
    /// `flows/{id}`), in the audience's sandbox. Immutable. Whether it is file-based (batch) or
    /// streaming is read from the dataflow.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.dataflowId is immutable: create a new AudienceActivation instead"))]
    pub dataflow_id: String,

    /// Export settings: required for a file-based (batch) destination, refused by a streaming
    /// one (`Stalled/ExportSettingsInvalid` names the field; nothing is sent). Updatable: a change
    /// replaces the audience's selector in the dataflow. Settings left unset keep AEP's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<ExportSpec>,

    /// What deleting this object does: `Delete` (default) removes the audience from the
    /// dataflow, only if this object added it; `Orphan` leaves it mapped.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// The ExternalAudience an activation maps.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AudienceRef {
    /// `metadata.name` of the ExternalAudience, in this namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub name: String,
}

/// How and when a file-based destination exports the audience.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode != 'DAILY_FULL_EXPORT' || self.schedule.frequency in ['ONCE', 'DAILY']").message("spec.export.schedule.frequency must be ONCE or DAILY with mode DAILY_FULL_EXPORT").field_path(".schedule.frequency"))]
#[x_kube(validation = Rule::new("self.mode != 'FIRST_FULL_THEN_INCREMENTAL' || self.schedule.frequency in ['DAILY', 'EVERY_3_HOURS', 'EVERY_6_HOURS', 'EVERY_8_HOURS', 'EVERY_12_HOURS']").message("spec.export.schedule.frequency must be DAILY, EVERY_3_HOURS, EVERY_6_HOURS, EVERY_8_HOURS or EVERY_12_HOURS with mode FIRST_FULL_THEN_INCREMENTAL").field_path(".schedule.frequency"))]
#[x_kube(validation = Rule::new("self.mode != 'DAILY_FULL_EXPORT' || has(self.schedule.triggerType)").message("spec.export.schedule.triggerType is required with mode DAILY_FULL_EXPORT: AFTER_SEGMENT_EVAL or SCHEDULED").field_path(".schedule.triggerType"))]
#[x_kube(validation = Rule::new("!(self.mode == 'DAILY_FULL_EXPORT' && has(self.schedule.triggerType) && self.schedule.triggerType == 'AFTER_SEGMENT_EVAL' && has(self.schedule.startTime))").message("spec.export.schedule.startTime does not apply to DAILY_FULL_EXPORT with triggerType AFTER_SEGMENT_EVAL (the export follows the daily segmentation job): remove it").field_path(".schedule.startTime"))]
#[x_kube(validation = Rule::new("!(has(self.schedule.triggerType) && self.schedule.triggerType == 'SCHEDULED') || has(self.schedule.startTime)").message("spec.export.schedule.startTime is required with triggerType SCHEDULED (HH:00, UTC)").field_path(".schedule.startTime"))]
#[x_kube(validation = Rule::new("!(self.mode == 'DAILY_FULL_EXPORT' && self.schedule.frequency == 'ONCE' && has(self.schedule.endDate))").message("spec.export.schedule.endDate does not apply to a one-time export (DAILY_FULL_EXPORT, ONCE): remove it").field_path(".schedule.endDate"))]
pub struct ExportSpec {
    /// `DAILY_FULL_EXPORT` (a full file each time) or `FIRST_FULL_THEN_INCREMENTAL`.
    pub mode: ExportMode,
    /// When to export.
    pub schedule: ExportScheduleSpec,
    /// File name template, e.g. `%DESTINATION_NAME%_%SEGMENT_ID%_%DATETIME(YYYYMMdd_HHmmss)%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    #[x_kube(validation = Rule::new(r"!self.matches('[\\x{00}-\\x{1F}\\x{7F}-\\x{9F}/]')").message("spec.export.filenameTemplate must not contain control characters or '/'"))]
    pub filename_template: Option<String>,
}

/// Export mode of a file-based destination.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
pub enum ExportMode {
    /// A full file of the audience on each export.
    DAILY_FULL_EXPORT,
    /// A full file first, then only the changes.
    FIRST_FULL_THEN_INCREMENTAL,
}

impl ExportMode {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            ExportMode::DAILY_FULL_EXPORT => "DAILY_FULL_EXPORT",
            ExportMode::FIRST_FULL_THEN_INCREMENTAL => "FIRST_FULL_THEN_INCREMENTAL",
        }
    }
}

/// The export schedule of a file-based destination (AEP's `schedule`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.startDate) || !has(self.endDate) || self.endDate >= self.startDate").message("spec.export.schedule.endDate must not be before startDate").field_path(".endDate"))]
pub struct ExportScheduleSpec {
    /// `ONCE` or `DAILY` with `DAILY_FULL_EXPORT`; `DAILY`, `EVERY_3_HOURS`, `EVERY_6_HOURS`,
    /// `EVERY_8_HOURS` or `EVERY_12_HOURS` with `FIRST_FULL_THEN_INCREMENTAL`.
    #[schemars(regex(pattern = r"^(ONCE|DAILY|EVERY_3_HOURS|EVERY_6_HOURS|EVERY_8_HOURS|EVERY_12_HOURS)$"))]
    pub frequency: String,
    /// `AFTER_SEGMENT_EVAL` (right after the daily segmentation job) or `SCHEDULED` (at
    /// `startTime`). Required with `DAILY_FULL_EXPORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(AFTER_SEGMENT_EVAL|SCHEDULED)$"))]
    pub trigger_type: Option<String>,
    /// First day of exports, `YYYY-MM-DD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$"))]
    pub start_date: Option<String>,
    /// Last day of exports, `YYYY-MM-DD`; not for a one-time export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$"))]
    pub end_date: Option<String>,
    /// Time of day of the export, `HH:00` UTC (AEP takes whole hours only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([01][0-9]|2[0-3]):00$"))]
    pub start_time: Option<String>,
}

/// Observed state, written only by the controller.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AudienceActivationStatus {
    /// The `metadata.generation` this status reflects. `-1` until the controller first acts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, `Reconciling` and `Stalled` (kstatus vocabulary).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The AEP id of the audience mapped (from the ExternalAudience's status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience_id: Option<String>,

    /// Where the dataflow lives, recorded with the first change sent to it so that the removal
    /// goes to the same place: the credentials Secret, IMS org, endpoint and sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<ActivationTarget>,

    /// The dataflow as last read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataflow: Option<DataflowStatus>,

    /// True when this object added the audience's selector to the dataflow (and so removes it
    /// on delete with `deletionPolicy: Delete`); false when the audience was already mapped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub selector_added: bool,

    /// Set right before a change of the dataflow is sent; cleared once a read shows its effect.
    /// A pass that finds it settles a lost answer by reading the dataflow, never by sending
    /// blindly again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_pending: Option<ChangePending>,

    /// The latest ad hoc export requested with the `export-requested-at` annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_request: Option<ExportRequest>,

    /// The latest export run of the audience on the dataflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_export: Option<ExportRun>,

    /// A problem only a change can resolve, for the generation it was found at (mirrored by
    /// `Stalled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<Blocked>,
}

/// Where an activation's dataflow lives.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActivationTarget {
    /// The credentials Secret (of the ExternalAudience) used.
    pub credentials_secret: String,
    /// The IMS org.
    pub org_id: String,
    /// The AEP endpoint.
    pub platform_url: String,
    /// The sandbox.
    pub sandbox: String,
}

/// The dataflow as last read.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataflowStatus {
    /// Dataflow id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// `enabled` or `disabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// `batch` (file-based) or `streaming`.
    pub destination_kind: String,
    /// Audiences mapped into it.
    pub audiences: u32,
}

/// A change of the dataflow in flight.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChangePending {
    /// When it was about to be sent.
    pub since: Time,
    /// `add`, `replace` or `remove`.
    pub op: String,
    /// The generation it was decided for.
    pub generation: i64,
}

/// An ad hoc export request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExportRequest {
    /// The annotation value it answers.
    pub value: String,
    /// When the request was about to be sent.
    pub since: Time,
    /// `Pending` (sent or about to be; a lost answer is settled from the dataflow's runs),
    /// `Started`, `Refused` (AEP's message says why) or `NotSent` (the annotation is invalid, or
    /// the dataflow is not file-based).
    pub state: String,
    /// The newest export run of the audience known when the request was made (a later one
    /// is the request's own after a lost answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_run_id: Option<String>,
    /// Its start, epoch ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_run_created_ms: Option<i64>,
    /// The export run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// AEP's message, for a refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One export run of the audience.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExportRun {
    /// AEP's run id.
    pub run_id: String,
    /// `success`, `failed`, `processing` or `waiting`.
    pub state: String,
    /// Start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// End.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// Records exported for the audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records_exported: Option<i64>,
    /// Records skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records_skipped: Option<i64>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
