//! The `ExternalAudience` custom resource: types, doc comments (they become `kubectl explain`
//! text), apply-time validation (OpenAPI + CEL), and the stable names the controller writes
//! (condition types, reasons, event reasons, annotations, finalizer, field manager).
//!
//! This module holds types and constants only: no I/O, no reconcile logic.

mod activation;

pub use activation::*;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of the operator's resources.
pub const GROUP: &str = "aep.audience-operator.dev";
/// Finalizer guarding AEP cleanup.
pub const FINALIZER: &str = "externalaudiences.aep.audience-operator.dev/cleanup";
/// Field manager / event reporter of the controller.
pub const MANAGER: &str = "aep.audience-operator.dev/externalaudience-controller";
/// Annotation asking for an ingestion run without a spec change: any new value triggers one run.
pub const RUN_REQUESTED_AT: &str = "aep.audience-operator.dev/run-requested-at";
/// Annotation overriding the drift resync interval of one object (`10m`, `90s`, `0` = off).
pub const RESYNC_INTERVAL: &str = "aep.audience-operator.dev/resync-interval";
/// Annotation that pauses an object: while it is `"true"` the controller makes no AEP call for
/// the object (status shows `Paused=True`); deletion with `deletionPolicy: Delete` waits for the
/// pause to be lifted.
pub const PAUSED: &str = "aep.audience-operator.dev/paused";
/// Annotation that lets a create whose outcome could not be proven be sent again. Its value must
/// equal the pending create's `status.createPendingSince`, so a stale annotation never authorises
/// a later create.
pub const RETRY_CREATE: &str = "aep.audience-operator.dev/retry-create";
/// Annotation holding the object's ownership record ([`OwnershipRecord`], JSON), written by the
/// controller. Unlike status it survives a backup and restore (Velero, `kubectl get -o yaml`) or a
/// rebuild from Git that kept it: a restored object re-attaches to its audience after checking it
/// in AEP, without a create or a run.
pub const OWNERSHIP_RECORD: &str = "aep.audience-operator.dev/ownership";
/// Largest ownership record read (bytes); a longer annotation is refused, not parsed.
pub const OWNERSHIP_RECORD_MAX: usize = 2048;
/// Prefix of the `customAudienceId` the operator sends with every create: followed by the
/// object's UID, it marks the audience as this object's and no other's.
pub const CUSTOM_AUDIENCE_ID_PREFIX: &str = "k8s-";

/// Maximum number of entries kept in `status.runHistory`.
pub const RUN_HISTORY_LIMIT: usize = 5;

/// An Adobe Experience Platform external audience, managed declaratively.
///
/// The controller creates the audience in AEP (an asynchronous operation), starts an ingestion
/// run of its CSV file, and keeps AEP in line with this spec: updatable properties are PATCHed
/// and every spec change is followed by exactly one new ingestion run.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    doc = "An Adobe Experience Platform external audience, managed declaratively: the controller creates it in AEP, ingests its CSV file, keeps AEP in line with the spec (PATCH what AEP can update, then one ingestion run per change) and cleans up on delete.",
    group = "aep.audience-operator.dev",
    version = "v1alpha1",
    kind = "ExternalAudience",
    plural = "externalaudiences",
    singular = "externalaudience",
    shortname = "ea",
    category = "aep",
    namespaced,
    status = "ExternalAudienceStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","priority":1}"#,
    printcolumn = r#"{"name":"Audience ID","type":"string","jsonPath":".status.audienceId"}"#,
    printcolumn = r#"{"name":"Last Run","type":"string","jsonPath":".status.lastRun.status"}"#,
    printcolumn = r#"{"name":"Sandbox","type":"string","jsonPath":".spec.sandbox","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("has(oldSelf.spec.name) ? (has(self.spec.name) && self.spec.name == oldSelf.spec.name) : !has(self.spec.name)").message("spec.name is immutable: AEP cannot rename an audience; create a new ExternalAudience instead"),
    validation = Rule::new("!has(oldSelf.spec.audienceId) || (has(self.spec.audienceId) && self.spec.audienceId == oldSelf.spec.audienceId)").message("spec.audienceId is immutable once set; create a new ExternalAudience to manage another audience"),
    validation = Rule::new("!has(self.spec.audienceId) || has(oldSelf.spec.audienceId) || !has(oldSelf.status) || (has(oldSelf.status.audienceId) ? oldSelf.status.audienceId == self.spec.audienceId : !has(oldSelf.status.operationId))").message("spec.audienceId can be added to an existing object only while it manages no audience and no create operation is in flight (or to name the audience it already manages, status.audienceId); create a new ExternalAudience to manage another audience"),
    validation = Rule::new("!has(self.spec.managementPolicy) || self.spec.managementPolicy != 'Observe' || has(self.spec.audienceId)").message("spec.managementPolicy Observe watches an existing audience, so spec.audienceId must name it").field_path(".spec.audienceId").reason(Reason::FieldValueRequired),
    validation = Rule::new(format!("{CREATES_ITS_AUDIENCE_OR}(has(self.spec.fields) && size(self.spec.fields) > 0)")).message("an object that creates its audience (managementPolicy Manage without spec.audienceId) needs 1 to 41 fields, one of them an identity field").field_path(".spec.fields").reason(Reason::FieldValueRequired),
    validation = Rule::new(format!("{CREATES_ITS_AUDIENCE_OR}has(self.spec.sourceSpec)")).message("an object that creates its audience (managementPolicy Manage without spec.audienceId) needs the location of its CSV file").field_path(".spec.sourceSpec").reason(Reason::FieldValueRequired),
    validation = Rule::new(format!("{CREATES_ITS_AUDIENCE_OR}has(self.spec.ingestion)")).message("an object that creates its audience (managementPolicy Manage without spec.audienceId) ingests it, and needs spec.ingestion.dataFilterStartTime").field_path(".spec.ingestion").reason(Reason::FieldValueRequired),
)]
#[serde(rename_all = "camelCase")]
pub struct ExternalAudienceSpec {
    /// Secret in this namespace holding the Adobe IMS OAuth server-to-server credential:
    /// keys `clientId`, `clientSecret`, `orgId`, and optionally `scopes` (comma-separated),
    /// `imsUrl` and `platformUrl` (to point at another AEP endpoint, e.g. the local emulator).
    pub credentials_secret_ref: SecretRef,

    /// AEP sandbox the audience lives in (sent as `x-sandbox-name`), e.g. `prod`.
    /// Immutable: an audience cannot move between sandboxes.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.sandbox is immutable: create a new ExternalAudience instead"))]
    pub sandbox: String,

    /// Name of the audience in AEP. Defaults to `metadata.name`. Must be unique in the sandbox.
    /// Immutable: create a new ExternalAudience to use another name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new(r"!self.matches('[\\x{00}-\\x{1F}\\x{7F}-\\x{9F}]')").message("spec.name must not contain control characters"))]
    #[x_kube(validation = Rule::new(r"self.matches('[^\\s\\x{0B}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}]')").message("spec.name must not be blank (only whitespace): AEP refuses it"))]
    pub name: Option<String>,

    /// Free-text description of the audience. Updatable in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub description: Option<String>,

    /// Columns of the CSV file: 1 to 41 fields, at least one of them an identity field
    /// (`identityNs` set). Names, types and identity namespaces are immutable; the `labels` of a
    /// field can change. Required when the object creates its audience (`managementPolicy:
    /// Manage` without `audienceId`); optional for an adopted or observed audience, whose fields
    /// AEP does not return (then no field labels are sent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 41))]
    #[x_kube(validation = Rule::new("size(self) == 0 || self.exists(f, has(f.identityNs))").message("spec.fields must contain at least one identity field (a field with identityNs)"))]
    #[x_kube(validation = Rule::new("self.all(f, self.exists_one(g, g.name == f.name))").message("spec.fields names must be unique"))]
    #[x_kube(validation = Rule::new("self.size() == oldSelf.size() && self.all(f, oldSelf.exists(o, o.name == f.name && o.type == f.type && (has(o.identityNs) ? (has(f.identityNs) && f.identityNs == o.identityNs) : !has(f.identityNs))))").message("spec.fields: field names, types and identity namespaces are immutable (AEP cannot change them; only labels may change): create a new ExternalAudience instead"))]
    pub fields: Vec<AudienceField>,

    /// Where AEP reads the audience's CSV file. Immutable. Required when the object creates its
    /// audience; AEP does not return it for an existing one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.sourceSpec is immutable: create a new ExternalAudience instead"))]
    pub source_spec: Option<SourceSpec>,

    /// Days before the ingested data expires, 1 to 90. Updatable in place. When unset, AEP's
    /// default (30) applies to an audience this object creates, and an adopted audience keeps its
    /// own (AEP does not return it, so its expiration is then not reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 90))]
    pub ttl_in_days: Option<i32>,

    /// Audience-level data usage labels, each `<family>/<label>` such as `core/C1`.
    /// Updatable in place (the whole list is replaced).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(length(max = 128), regex(pattern = r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$"))
    )]
    pub labels: Vec<String>,

    /// Audience type. Only `people` is supported by AEP. Immutable.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.audienceType is immutable: create a new ExternalAudience instead"))]
    pub audience_type: AudienceType,

    /// Origin of the audience. Only `CUSTOM_UPLOAD` is supported for external audiences. Immutable.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.originName is immutable: create a new ExternalAudience instead"))]
    pub origin_name: OriginName,

    /// How ingestion runs pick up files. Required when the object creates its audience; without
    /// it, an adopted audience is managed but never ingested (a run request says what is missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingestion: Option<IngestionSpec>,

    /// `Manage` (default): create or adopt the audience, keep it in line with this spec, ingest
    /// it, and delete it per `deletionPolicy`. `Observe`: only read the audience named by
    /// `audienceId` and its runs, and report whether AEP matches this spec (condition `InSync`);
    /// nothing is ever created, changed, ingested, extended or deleted in AEP. Switching from
    /// `Observe` to `Manage` takes the audience over without an ingestion run unless the spec
    /// owes one.
    #[serde(default)]
    pub management_policy: ManagementPolicy,

    /// What happens in AEP when this object is deleted: `Delete` (default) deletes the audience,
    /// `Orphan` leaves it in AEP.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// What to do about the data expiration (`ttlInDays` after each ingestion). Optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<ExpirationSpec>,

    /// Adopt an existing AEP audience with this ID instead of creating one. The controller then
    /// PATCHes the updatable properties and reports Ready without starting an ingestion run
    /// (request one with the `aep.audience-operator.dev/run-requested-at` annotation). Settable
    /// when the object is created, or later only while the object manages no audience and no
    /// create operation is in flight (e.g. to resolve `AudienceNameTaken` or
    /// `CreateOutcomeUnknown`). Immutable once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"))]
    pub audience_id: Option<String>,
}

/// The start of the root rules that hold only for an object that creates its audience: true for
/// an observed or adopted one.
const CREATES_ITS_AUDIENCE_OR: &str =
    "(has(self.spec.managementPolicy) && self.spec.managementPolicy == 'Observe') || has(self.spec.audienceId) || ";

/// What the controller may do in AEP for an object.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ManagementPolicy {
    /// Create (or adopt), update, ingest and delete the audience.
    #[default]
    Manage,
    /// Only read the audience and its runs; never change anything in AEP.
    Observe,
}

/// Reference to a Secret in the object's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
}

/// One column of the audience's CSV file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AudienceField {
    /// Column name in the source file.
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new(r"!self.matches('[\\x{00}-\\x{1F}\\x{7F}-\\x{9F}]')").message("spec.fields[].name must not contain control characters"))]
    #[x_kube(validation = Rule::new(r"self.matches('[^\\s\\x{0B}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}]')").message("spec.fields[].name must not be blank (only whitespace): AEP refuses it"))]
    pub name: String,
    /// Data type of the column.
    #[serde(rename = "type")]
    pub type_: FieldType,
    /// Identity namespace code for identity columns, e.g. `email`, `ECID`, `CRMID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9_.-]+$"))]
    pub identity_ns: Option<String>,
    /// Field-level data usage labels, each `<family>/<label>` such as `core/C2`. Updatable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(length(max = 128), regex(pattern = r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$"))
    )]
    pub labels: Vec<String>,
}

/// Data type of a CSV column.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    /// Text.
    String,
    /// A decimal number.
    Number,
    /// A 64-bit integer.
    Long,
    /// A 32-bit integer.
    Integer,
    /// A date, `YYYY-MM-DD`.
    Date,
    /// An ISO-8601 date-time with offset.
    Datetime,
    /// `true` or `false`.
    Boolean,
}

/// Cloud-storage location of the CSV file.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.cloudType) || !(self.cloudType in ['S3', 'GCS', 'SFTP']) || has(self.baseConnectionId)").message("spec.sourceSpec.baseConnectionId is required when cloudType is S3, GCS or SFTP"))]
pub struct SourceSpec {
    /// Path of the file or folder inside the source. Must not contain whitespace.
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new(r"!self.matches('[\\s\\x{0B}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}]')").message("spec.sourceSpec.path must not contain whitespace (any Unicode whitespace, as AEP refuses)"))]
    #[x_kube(validation = Rule::new(r"!self.matches('[\\x{00}-\\x{1F}\\x{7F}-\\x{9F}]')").message("spec.sourceSpec.path must not contain control characters"))]
    pub path: String,
    /// Whether `path` names a `file` or a `folder`.
    #[serde(rename = "type")]
    pub type_: SourceKind,
    /// Kind of source. Only `Cloud Storage` is supported.
    #[serde(default)]
    pub source_type: SourceType,
    /// Cloud storage type, if the connection needs it: `S3`, `DLZ`, `GCS`, `Azure` or `SFTP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_type: Option<CloudType>,
    /// Flow Service base connection ID of the storage. Required for S3, GCS and SFTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"))]
    pub base_connection_id: Option<String>,
}

/// Whether a source path is a single file or a folder.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// One file.
    File,
    /// A folder of files.
    Folder,
}

/// Source kind; AEP supports only cloud storage.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SourceType {
    /// Cloud storage (S3, Azure, GCS, the Data Landing Zone, SFTP).
    #[default]
    #[serde(rename = "Cloud Storage")]
    CloudStorage,
}

/// Cloud storage type.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum CloudType {
    /// Amazon S3.
    S3,
    /// Adobe's Data Landing Zone.
    #[serde(rename = "DLZ")]
    Dlz,
    /// Google Cloud Storage.
    #[serde(rename = "GCS")]
    Gcs,
    /// Azure Blob storage.
    Azure,
    /// SFTP.
    #[serde(rename = "SFTP")]
    Sftp,
}

/// Audience type; AEP supports only `people`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AudienceType {
    /// Audiences of people.
    #[default]
    People,
}

/// Origin of an external audience; AEP supports only `CUSTOM_UPLOAD`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum OriginName {
    /// Uploaded from a file.
    #[default]
    #[serde(rename = "CUSTOM_UPLOAD")]
    CustomUpload,
}

/// What deleting the object does in AEP.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Delete the audience in AEP, then release the object.
    #[default]
    Delete,
    /// Leave the audience in AEP and release the object.
    Orphan,
}

/// Data expiration handling.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExpirationSpec {
    /// Extend the expiration with AEP's extend-TTL call (it re-ingests the last successful data
    /// and pushes the expiration out by `ttlInDays`; no ingestion run is spent) once the data is
    /// within the operator's warning window of expiring, at most once per `ttlInDays`, with an
    /// `AudienceTTLExtended` event each time. Default `false`: the object reports
    /// `DataExpiringSoon`, then `DataExpired`.
    #[serde(default)]
    pub auto_extend: bool,
}

/// Parameters of each ingestion run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.dataFilterEndTime) || self.dataFilterEndTime >= self.dataFilterStartTime").message("spec.ingestion.dataFilterEndTime must not be before dataFilterStartTime"))]
#[x_kube(validation = Rule::new("!has(self.timeZone) || has(self.schedule)").message("spec.ingestion.timeZone applies to spec.ingestion.schedule: set a schedule, or remove the time zone"))]
pub struct IngestionSpec {
    /// Files newer than this instant (epoch seconds) are ingested.
    #[schemars(range(min = 0, max = 253_402_300_799_i64))]
    pub data_filter_start_time: i64,
    /// Files older than this instant (epoch seconds) are ingested. Optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 253_402_300_799_i64))]
    pub data_filter_end_time: Option<i64>,
    /// Ingest only the difference since the last run (default `true`) or everything.
    #[serde(default = "default_true")]
    pub differential_ingestion: bool,
    /// Refresh runs on this cron schedule, as a CronJob's `schedule`: five fields (minute, hour,
    /// day of month, month, day of week) or `@hourly`, `@daily`, `@weekly`, `@monthly`,
    /// `@yearly`, evaluated in `timeZone`. Each scheduled time owes one run; times missed while
    /// the operator was down collapse into one; a due run waits for a run in flight. Without it,
    /// runs follow spec changes and run requests only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 120))]
    #[x_kube(validation = Rule::new(schedule_rule()).message("spec.ingestion.schedule must be a cron schedule: five fields (minute 0-59, hour 0-23, day of month 1-31, month 1-12 or JAN-DEC, day of week 0-7 or SUN-SAT; each *, a value, a range a-b, a list a,b or a /step) or @hourly, @daily, @weekly, @monthly, @yearly"))]
    pub schedule: Option<String>,
    /// IANA time zone of `schedule`, as a CronJob's `timeZone` (e.g. `Europe/Berlin`); UTC when
    /// unset. Daylight-saving changes follow the zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$')").message("spec.ingestion.timeZone must be an IANA time zone name such as Europe/Berlin or UTC"))]
    pub time_zone: Option<String>,
}

/// The CEL rule of `spec.ingestion.schedule`: the shape of a five-field cron schedule with each
/// field's range, or a macro. (What only a parser can tell, e.g. 30 February, is reported by the
/// controller as `Stalled/InvalidSchedule`.)
fn schedule_rule() -> String {
    fn field(values: &str, any: &str) -> String {
        let item = format!("({any}|({values})(-({values}))?)(/[1-9][0-9]?)?");
        format!("{item}(,{item})*")
    }
    let months = "0?[1-9]|1[0-2]|JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC";
    let days = "[0-7]|SUN|MON|TUE|WED|THU|FRI|SAT";
    let regex = format!(
        "^(?i)(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|{} +{} +{} +{} +{})$",
        field("[0-5]?[0-9]", "[*]"),
        field("[01]?[0-9]|2[0-3]", "[*]"),
        field("0?[1-9]|[12][0-9]|3[01]", "[*]|[?]"),
        field(months, "[*]"),
        field(days, "[*]|[?]"),
    );
    format!("self.matches('{regex}')")
}

fn default_true() -> bool {
    true
}

// The parts most objects do not hold (`runPending`, `segmentation`, `observed`, `blocked`) are
// boxed: the watch cache holds every object, and an absent box takes 8 bytes where the part
// itself takes 56 to 120 (docs/performance.md, peak RSS at 5,000 objects).
/// Observed state, written only by the controller.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalAudienceStatus {
    /// The `metadata.generation` this status reflects. `-1` until the controller first acts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, `Reconciling` and `Stalled` (kstatus vocabulary).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Set right before the create call is sent; cleared once its operation id is recorded.
    /// A pass that finds it without an operation id looks for the audience by proof
    /// (`customAudienceId`) instead of creating again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_pending_since: Option<Time>,

    /// The `customAudienceId` this object sends with its creates (derived from its UID): the
    /// marker that proves an audience is this object's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_audience_id: Option<String>,

    /// ID of the AEP create operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_id: Option<String>,

    /// The credentials Secret this object last used (it carries the in-use finalizer
    /// `aep.audience-operator.dev/credentials-in-use` while objects use it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,

    /// ID of the last create operation that FAILED (nothing was created by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_operation_id: Option<String>,

    /// ID of a recorded create operation that AEP no longer knows (404); the audience it may have
    /// made was then looked for by proof.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_operation_id: Option<String>,

    /// ID of the audience in AEP. Cleared only if the audience is deleted in AEP behind the
    /// operator's back and then re-created (the old ID moves to `lostAudienceIds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience_id: Option<String>,

    /// True when the audience was adopted through `spec.audienceId` rather than created.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopted: bool,

    /// How `audienceId` is known to be this object's: `CreateOperation` (AEP's answer to a create
    /// this object recorded), `SpecAudienceId` (named by the user) or `CustomAudienceId` (found
    /// carrying this object's `customAudienceId` after a create whose answer was lost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ownership: Option<OwnershipProof>,

    /// Hash of the updatable properties last applied to AEP (create or PATCH).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_spec_hash: Option<String>,

    /// Hash of the AEP-facing spec the latest ingestion run was started for (or adopted at).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingested_spec_hash: Option<String>,

    /// The `run-requested-at` annotation value the latest run was started for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingested_run_request: Option<String>,

    /// The latest `spec.ingestion.schedule` time a run was started for (scheduled times up to it
    /// are served).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scheduled_time: Option<Time>,

    /// The next `spec.ingestion.schedule` time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_scheduled_time: Option<Time>,

    /// Set right before a run is started; cleared once its run id is recorded. A pass that finds
    /// it looks for the run among the audience's runs before starting another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_pending: Option<Box<RunPending>>,

    /// The latest ingestion run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<IngestionRun>,

    /// IDs of audiences that were deleted in AEP outside this operator, newest first (bounded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lost_audience_ids: Vec<String>,

    /// Earlier runs, newest first (bounded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub run_history: Vec<IngestionRun>,

    /// The IMS org of the credentials this object last used: the run budget is shared per org
    /// and sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,

    /// When the data ingested into the audience expires, and how that is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_expiration: Option<DataExpiration>,

    /// Runs this operator started on the current audience (`--max-runs-per-audience`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_counts: Option<RunCounts>,

    /// When this object's claim on `audienceId` was recorded. When two objects claim one
    /// audience, the older claim manages it and the other is `Stalled/AudienceClaimed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_at: Option<Time>,

    /// The AEP endpoint (platform URL) the audience lives in, recorded with `orgId` when the
    /// first request for it is sent: a Secret that later names another org or endpoint stops the
    /// object (`OrganizationChanged`) instead of creating the audience again elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_url: Option<String>,

    /// When drift checks (a read of the audience in AEP, for a managed or an observed one) are
    /// due: this time and every resync interval after it. Recorded once, spread per object, so
    /// that a check writes nothing, a restart checks nothing early and many objects never check
    /// at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_drift_check: Option<Time>,

    /// The AEP daily segmentation job that evaluated the audience after its last successful run
    /// (the `Evaluated` condition): batch destinations export what that job evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segmentation: Option<Box<SegmentationSeen>>,

    /// When the current `spec.ingestion.schedule` was first seen: scheduled times before it owe
    /// no run (adding a schedule to an existing object does not start one at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_since: Option<Time>,

    /// What AEP holds for an observed audience (`managementPolicy: Observe`), and where it
    /// differs from the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<Box<ObservedAudience>>,

    /// A problem that only a change can resolve, for the generation it was found at: the
    /// controller makes no AEP call for that generation until the spec (or, where the message
    /// says so, an annotation) changes. Mirrored by the `Stalled` condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<Box<Blocked>>,
}

/// A segmentation job seen after a successful run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SegmentationSeen {
    /// The run it came after.
    pub run_id: String,
    /// The segmentation job (`source: scheduler`).
    pub job_id: String,
    /// When AEP created the job.
    pub created_at: Time,
}

/// How an audience is proven to be the object's own.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum OwnershipProof {
    /// Its id came from the create operation this object recorded.
    CreateOperation,
    /// The user named it in `spec.audienceId`.
    SpecAudienceId,
    /// It carries the `customAudienceId` only this object sends.
    CustomAudienceId,
    /// The ownership record this object carries (restored from a backup or a Git repository
    /// that kept it) names it, and AEP confirmed it: it exists in the recorded org, endpoint and
    /// sandbox, and carries the recorded `customAudienceId` where AEP echoes one.
    RestoreRecord,
    /// Not owned: only observed (`managementPolicy: Observe`).
    Observed,
}

/// What AEP holds for an observed audience.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObservedAudience {
    /// The audience's name in AEP.
    pub name: String,
    /// Its description in AEP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its audience-level labels in AEP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Its lifecycle state in AEP (`published`, `inactive`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle_state: Option<String>,
    /// The spec fields whose value differs in AEP (`name`, `description`, `labels`); empty
    /// when AEP matches the spec.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub differences: Vec<String>,
}

/// The ownership record kept in the [`OWNERSHIP_RECORD`] annotation: what proves an audience is
/// the object's, and what was last applied and ingested. Written by the controller; read back
/// only when the object has no status of its own (after a restore), and then trusted only after
/// AEP confirms it: an annotation is tenant-writable, so it is bounded and validated, and its
/// endpoint is only compared with the Secret's, never connected to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OwnershipRecord {
    /// Format version (1).
    pub v: u32,
    /// The audience's id in AEP.
    pub audience_id: String,
    /// The `customAudienceId` it was created with, when this object created it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_audience_id: Option<String>,
    /// The IMS org it lives in.
    pub org_id: String,
    /// The AEP endpoint it lives in.
    pub platform_url: String,
    /// The sandbox it lives in.
    pub sandbox: String,
    /// The UID of the object that recorded it.
    pub claimed_by: String,
    /// When that object's claim was recorded.
    pub claimed_at: String,
    /// Hash of the updatable properties last applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_spec_hash: Option<String>,
    /// Hash of the spec the latest ingestion run was started for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingested_spec_hash: Option<String>,
}

/// A terminal problem for one generation (see `status.blocked`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Blocked {
    /// The `Stalled` reason, e.g. `AudienceNameTaken`.
    pub reason: String,
    /// The `metadata.generation` it was found at.
    pub generation: i64,
    /// What happened and what resolves it.
    pub message: String,
}

/// Marker of a run start in flight.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunPending {
    /// When the start call was about to be sent.
    pub since: Time,
    /// Generation the run is for.
    pub generation: i64,
    /// Hash of the AEP-facing spec the run is for.
    pub spec_hash: String,
    /// The `run-requested-at` annotation value the run is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_request: Option<String>,
    /// The scheduled time the run serves (the latest one due when it started), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_for: Option<Time>,
}

/// When the ingested data expires (reference §4: the audience can then no longer be activated
/// and its profile count drops to 0).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataExpiration {
    /// When the data expires.
    pub expires_at: Time,
    /// How `expiresAt` is known. AEP's API does not report it, so it is computed:
    /// `LastSuccessfulRun` (the end of the last successful run plus `ttlInDays`) or `Extension`
    /// (extend-TTL pushed it out by `ttlInDays`).
    pub source: String,
    /// Where the last extension put the expiration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extended_until: Option<Time>,
    /// When the operator last extended it (`spec.expiration.autoExtend`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_extended_at: Option<Time>,
}

/// Runs started on the current audience.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunCounts {
    /// Since the audience was created or adopted.
    pub total: u32,
    /// The UTC day `today` counts (`YYYY-MM-DD`).
    pub day: String,
    /// On that day.
    pub today: u32,
}

/// One ingestion run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngestionRun {
    /// AEP run ID.
    pub run_id: String,
    /// `metadata.generation` the run ingests.
    pub generation: i64,
    /// `Processing`, `Success` or `Failed`.
    pub status: RunState,
    /// When the run was started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the run was seen finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<Time>,
    /// AEP's message about the run, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// State of an ingestion run.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RunState {
    /// Still running.
    Processing,
    /// Finished successfully.
    Success,
    /// Finished with an error.
    Failed,
}

impl ExternalAudienceSpec {
    /// The audience name in AEP: `spec.name`, else `metadata.name`.
    pub fn audience_name<'a>(&'a self, metadata_name: &'a str) -> &'a str {
        self.name.as_deref().unwrap_or(metadata_name)
    }

    /// Whether the controller only observes (`managementPolicy: Observe`).
    pub fn observes(&self) -> bool {
        self.management_policy == ManagementPolicy::Observe
    }
}

impl OwnershipRecord {
    /// Parses and validates the annotation's value. The error names the annotation and the rule.
    pub fn parse(value: &str, sandbox: &str) -> Result<Self, String> {
        let fail = |rule: &str| format!("annotation {OWNERSHIP_RECORD} is not a valid ownership record: {rule}");
        if value.len() > OWNERSHIP_RECORD_MAX {
            return Err(fail(&format!("it is longer than {OWNERSHIP_RECORD_MAX} bytes")));
        }
        let record: OwnershipRecord = serde_json::from_str(value)
            .map_err(|e| fail(&format!("it is not the JSON the controller writes ({e})")))?;
        if record.v != 1 {
            return Err(fail(&format!("version {} is not known (1 is)", record.v)));
        }
        let id_ok = |v: &str| {
            !v.is_empty()
                && v.len() <= 128
                && v.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
                && v.chars().all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c))
        };
        if !id_ok(&record.audience_id) {
            return Err(fail("audienceId must be 1-128 characters of A-Z, a-z, 0-9, _ . : -"));
        }
        if record.custom_audience_id.as_deref().is_some_and(|c| !id_ok(c)) {
            return Err(fail(
                "customAudienceId must be 1-128 characters of A-Z, a-z, 0-9, _ . : -",
            ));
        }
        let text_ok = |v: &str, max: usize| !v.is_empty() && v.len() <= max && !v.chars().any(char::is_control);
        if !text_ok(&record.org_id, 256) {
            return Err(fail("orgId must be 1-256 characters without control characters"));
        }
        if !text_ok(&record.platform_url, 512) || url::Url::parse(&record.platform_url).is_err() {
            return Err(fail("platformUrl must be a URL of at most 512 characters"));
        }
        if record.sandbox != sandbox {
            return Err(fail(&format!(
                "it names sandbox {:?}, but spec.sandbox is {sandbox:?}",
                record.sandbox
            )));
        }
        if !text_ok(&record.claimed_by, 128) {
            return Err(fail("claimedBy must be an object UID"));
        }
        if record.claimed_at.parse::<jiff::Timestamp>().is_err() {
            return Err(fail("claimedAt must be an RFC 3339 time"));
        }
        let hash_ok = |h: &str| {
            let hex = h.strip_prefix("v1:").unwrap_or(h);
            hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit())
        };
        for h in [&record.applied_spec_hash, &record.ingested_spec_hash]
            .into_iter()
            .flatten()
        {
            if !hash_ok(h) {
                return Err(fail("spec hashes must be 32 hexadecimal digits, optionally after v1:"));
            }
        }
        Ok(record)
    }

    /// The annotation's value.
    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The `customAudienceId` an object with this UID sends: unique to the object, so an audience
/// carrying it is provably the object's (a name is not: another object may hold the same name).
pub fn custom_audience_id(uid: &str) -> String {
    format!("{CUSTOM_AUDIENCE_ID_PREFIX}{uid}")
}

/// An enum of stable PascalCase names: each variant is written as its own name (`as_str`), read
/// back with `parse`, and listed in `ALL`.
macro_rules! names {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// Every value.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The value written to the API.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => stringify!($variant),)*
                }
            }

            /// The value named `s`, if any.
            pub fn parse(s: &str) -> Option<$name> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

names! {
    /// Condition types (kstatus vocabulary, plus informational ones).
    pub enum ConditionType {
    /// The audience exists, matches the spec, and the latest run for this spec succeeded.
    Ready,
    /// Work is under way (create, PATCH, run in flight, retrying).
    Reconciling,
    /// The controller cannot progress without a change (AEP refused, run failed, bad input).
    Stalled,
    /// Reconciliation is paused by the `aep.audience-operator.dev/paused` annotation.
    Paused,
    /// `True` while the ingested data expires within the warning window (informational: kstatus
    /// and Argo CD read `Ready`, `Reconciling` and `Stalled`; an expired audience is `Stalled`).
    DataExpiring,
    /// For an observed audience (`managementPolicy: Observe`): `True` when AEP matches the spec
    /// (informational: an observed audience that differs is still Ready).
    InSync,    /// For an ExternalAudience: `True` once AEP's daily batch segmentation job ran after the
    /// last successful ingestion (informational: it never blocks Ready; activations to batch
    /// destinations export what that job evaluated).
    Evaluated,
    }
}

/// The condition types as the strings written to status.
pub mod conditions {
    use super::ConditionType;
    pub const READY: &str = ConditionType::Ready.as_str();
    pub const RECONCILING: &str = ConditionType::Reconciling.as_str();
    pub const STALLED: &str = ConditionType::Stalled.as_str();
    pub const PAUSED: &str = ConditionType::Paused.as_str();
    pub const DATA_EXPIRING: &str = ConditionType::DataExpiring.as_str();
    pub const IN_SYNC: &str = ConditionType::InSync.as_str();
}

names! {
    /// Condition reasons: one stable PascalCase vocabulary for every kind.
    pub enum Reason {
    Ready,
    CreatingAudience,
    WaitingForOperation,
    UpdatingAudience,
    RunPending,
    RunInProgress,
    Retrying,
    RunDeferred,
    OperationFailed,
    RunFailed,
    RejectedByAEP,
    PermissionDenied,
    CredentialsMissing,
    CredentialsInvalid,
    AudienceNameTaken,
    AudienceNotFound,
    Deleting,
    DeleteRefused,
    /// Reconciling: a create's answer was lost; looking for the audience by proof.
    ConfirmingCreate,
    /// Stalled: a create's answer was lost and no proof says whether it created an audience.
    CreateOutcomeUnknown,
    /// Stalled: AEP answered in a way its documentation rules out (e.g. SUCCESS without an id).
    UnexpectedAEPResponse,
    /// Stalled: `spec.audienceId` names another audience than the one this object manages.
    AudienceIdMismatch,
    /// Stalled: the audience reached AEP's limit of ingestion runs per audience.
    IngestionLimitReached,
    /// `spec.ingestion.schedule` or `timeZone` is not valid (what the CRD's rule cannot tell).
    InvalidSchedule,
    /// The ingested data expires within the warning window.
    DataExpiringSoon,
    /// The ingested data expired: the audience can't be activated, its profile count is 0.
    DataExpired,
    /// The data expiration was extended (`spec.expiration.autoExtend`).
    AudienceTTLExtended,
    /// The data is not within the warning window of expiring.
    DataFresh,
    /// Stalled: the audience named by `spec.audienceId` is not an external audience.
    NotAnExternalAudience,
    /// Paused by annotation.
    Paused,
    /// Stalled: another object manages the audience this object names (the older claim wins).
    AudienceClaimed,
    /// Stalled: the credentials Secret now names another IMS org or AEP endpoint than the one the
    /// audience lives in.
    OrganizationChanged,
    /// Stalled: the ownership record annotation cannot be read.
    InvalidOwnershipRecord,
    /// Stalled: the ownership record names an audience AEP does not confirm as this object's.
    OwnershipNotConfirmed,
    /// Reconciling: a restored object is re-attaching to the audience its record names.
    Reattaching,
    /// `InSync` True: the observed audience matches the spec.
    InSync,
    /// `InSync` False: the observed audience differs from the spec.
    Drifted,
    /// `InSync` Unknown: the audience has not been read yet.
    NotObserved,
    /// Stalled: AEP does not know the destination dataflow.
    DataflowNotFound,    /// Reconciling: the referenced ExternalAudience is not Ready (or not there yet).
    AudienceNotReady,
    /// Reconciling: the audience is being added to the dataflow, or its export settings changed.
    Activating,
    /// Reconciling: a change to the dataflow was accepted; waiting for a read to show it.
    ConfirmingActivation,
    /// Reconciling: the audience is being removed from the dataflow.
    Deactivating,
    /// Stalled: the export settings do not fit the dataflow (file-based flows need
    /// `spec.export`; streaming flows take none).
    ExportSettingsInvalid,
    /// Stalled: the dataflow is not a destination dataflow that takes audiences.
    NotADestinationDataflow,
    /// Reconciling (for an ExternalAudience being deleted): activations of it still exist.
    ActivationsExist,
    /// Stalled: another AudienceActivation maps the same audience into the same dataflow.
    ActivationClaimed,
    /// Reconciling: an ad hoc export was requested; its answer is being confirmed.
    ExportRequested,
    /// `Evaluated` True: a daily segmentation job ran after the last successful run.
    SegmentationDone,
    /// `Evaluated` False: no daily segmentation job has run since the last successful run.
    AwaitingSegmentation,
    }
}

/// The reasons as the strings written to status.
pub mod reasons {
    use super::Reason;
    pub const READY: &str = Reason::Ready.as_str();
    pub const CREATING: &str = Reason::CreatingAudience.as_str();
    pub const WAITING_FOR_OPERATION: &str = Reason::WaitingForOperation.as_str();
    pub const UPDATING: &str = Reason::UpdatingAudience.as_str();
    pub const RUN_PENDING: &str = Reason::RunPending.as_str();
    pub const RUN_IN_PROGRESS: &str = Reason::RunInProgress.as_str();
    pub const RETRYING: &str = Reason::Retrying.as_str();
    pub const RUN_DEFERRED: &str = Reason::RunDeferred.as_str();
    pub const OPERATION_FAILED: &str = Reason::OperationFailed.as_str();
    pub const RUN_FAILED: &str = Reason::RunFailed.as_str();
    pub const REJECTED: &str = Reason::RejectedByAEP.as_str();
    pub const PERMISSION_DENIED: &str = Reason::PermissionDenied.as_str();
    pub const CREDENTIALS_MISSING: &str = Reason::CredentialsMissing.as_str();
    pub const CREDENTIALS_INVALID: &str = Reason::CredentialsInvalid.as_str();
    pub const NAME_TAKEN: &str = Reason::AudienceNameTaken.as_str();
    pub const AUDIENCE_NOT_FOUND: &str = Reason::AudienceNotFound.as_str();
    pub const DELETING: &str = Reason::Deleting.as_str();
    pub const DELETE_REFUSED: &str = Reason::DeleteRefused.as_str();
    pub const CONFIRMING_CREATE: &str = Reason::ConfirmingCreate.as_str();
    pub const CREATE_OUTCOME_UNKNOWN: &str = Reason::CreateOutcomeUnknown.as_str();
    pub const UNEXPECTED_RESPONSE: &str = Reason::UnexpectedAEPResponse.as_str();
    pub const AUDIENCE_ID_MISMATCH: &str = Reason::AudienceIdMismatch.as_str();
    pub const INGESTION_LIMIT_REACHED: &str = Reason::IngestionLimitReached.as_str();
    pub const INVALID_SCHEDULE: &str = Reason::InvalidSchedule.as_str();
    pub const DATA_EXPIRING_SOON: &str = Reason::DataExpiringSoon.as_str();
    pub const DATA_EXPIRED: &str = Reason::DataExpired.as_str();
    pub const AUDIENCE_TTL_EXTENDED: &str = Reason::AudienceTTLExtended.as_str();
    pub const DATA_FRESH: &str = Reason::DataFresh.as_str();
    pub const NOT_EXTERNAL: &str = Reason::NotAnExternalAudience.as_str();
    pub const PAUSED: &str = Reason::Paused.as_str();
    pub const AUDIENCE_CLAIMED: &str = Reason::AudienceClaimed.as_str();
    pub const ORGANIZATION_CHANGED: &str = Reason::OrganizationChanged.as_str();
    pub const INVALID_OWNERSHIP_RECORD: &str = Reason::InvalidOwnershipRecord.as_str();
    pub const OWNERSHIP_NOT_CONFIRMED: &str = Reason::OwnershipNotConfirmed.as_str();
    pub const REATTACHING: &str = Reason::Reattaching.as_str();
    pub const IN_SYNC: &str = Reason::InSync.as_str();
    pub const DRIFTED: &str = Reason::Drifted.as_str();
    pub const NOT_OBSERVED: &str = Reason::NotObserved.as_str();
    pub const DATAFLOW_NOT_FOUND: &str = Reason::DataflowNotFound.as_str();
}

names! {
    /// Event reasons (stable, PascalCase).
    pub enum EventReason {
    AudienceCreateRequested,
    AudienceCreated,
    AudienceAdopted,
    AudienceUpdated,
    AudienceDeleted,
    AudienceOrphaned,
    IngestionStarted,
    IngestionSucceeded,
    IngestionFailed,
    OperationFailed,
    AEPError,
    RunDeferred,
    AudienceNameTaken,
    CredentialsError,
    DeleteRefused,
    DriftCorrected,
    AudienceMissing,
    AudienceRecovered,
    CreateOutcomeUnknown,
    OperationLost,
    AudienceNotDeleted,
    IngestionLimitReached,
    /// `spec.ingestion.schedule` or `timeZone` is not valid (what the CRD's rule cannot tell).
    InvalidSchedule,
    /// The ingested data expires within the warning window.
    DataExpiringSoon,
    /// The ingested data expired: the audience can't be activated, its profile count is 0.
    DataExpired,
    /// The data expiration was extended (`spec.expiration.autoExtend`).
    AudienceTTLExtended,
    /// The data is not within the warning window of expiring.
    DataFresh,
    UnexpectedAEPResponse,
    Paused,
    DeletionPaused,
    InvalidAnnotation,
    /// A restored object re-attached to the audience its ownership record names.
    AudienceReattached,
    AudienceClaimed,
    OrganizationChanged,
    /// An observed audience differs from the spec (nothing is changed in AEP).
    DriftDetected,    /// The audience was added to a destination dataflow (or its export settings updated).
    AudienceActivated,
    /// The audience was removed from a destination dataflow.
    AudienceDeactivated,
    /// A dataflow change met a concurrent writer (412): read again and decided again.
    DataflowChanged,
    /// An ad hoc export was started.
    ExportStarted,
    /// AEP refused an ad hoc export.
    ExportRefused,
    /// The activation cannot proceed: it waits for its audience.
    AudienceNotReady,
    /// An ExternalAudience waits for its activations to be removed before it is deleted.
    ActivationsExist,
    }
}

/// The event reasons as the strings written to events.
pub mod events {
    use super::EventReason;
    pub const AUDIENCE_CREATE_REQUESTED: &str = EventReason::AudienceCreateRequested.as_str();
    pub const AUDIENCE_CREATED: &str = EventReason::AudienceCreated.as_str();
    pub const AUDIENCE_ADOPTED: &str = EventReason::AudienceAdopted.as_str();
    pub const AUDIENCE_UPDATED: &str = EventReason::AudienceUpdated.as_str();
    pub const AUDIENCE_DELETED: &str = EventReason::AudienceDeleted.as_str();
    pub const AUDIENCE_ORPHANED: &str = EventReason::AudienceOrphaned.as_str();
    pub const INGESTION_STARTED: &str = EventReason::IngestionStarted.as_str();
    pub const INGESTION_SUCCEEDED: &str = EventReason::IngestionSucceeded.as_str();
    pub const INGESTION_FAILED: &str = EventReason::IngestionFailed.as_str();
    pub const OPERATION_FAILED: &str = EventReason::OperationFailed.as_str();
    pub const AEP_ERROR: &str = EventReason::AEPError.as_str();
    pub const RUN_DEFERRED: &str = EventReason::RunDeferred.as_str();
    pub const NAME_TAKEN: &str = EventReason::AudienceNameTaken.as_str();
    pub const CREDENTIALS_ERROR: &str = EventReason::CredentialsError.as_str();
    pub const DELETE_REFUSED: &str = EventReason::DeleteRefused.as_str();
    pub const DRIFT_CORRECTED: &str = EventReason::DriftCorrected.as_str();
    pub const AUDIENCE_MISSING: &str = EventReason::AudienceMissing.as_str();
    pub const AUDIENCE_RECOVERED: &str = EventReason::AudienceRecovered.as_str();
    pub const CREATE_OUTCOME_UNKNOWN: &str = EventReason::CreateOutcomeUnknown.as_str();
    pub const OPERATION_LOST: &str = EventReason::OperationLost.as_str();
    pub const AUDIENCE_NOT_DELETED: &str = EventReason::AudienceNotDeleted.as_str();
    pub const INGESTION_LIMIT_REACHED: &str = EventReason::IngestionLimitReached.as_str();
    pub const INVALID_SCHEDULE: &str = EventReason::InvalidSchedule.as_str();
    pub const DATA_EXPIRING_SOON: &str = EventReason::DataExpiringSoon.as_str();
    pub const DATA_EXPIRED: &str = EventReason::DataExpired.as_str();
    pub const AUDIENCE_TTL_EXTENDED: &str = EventReason::AudienceTTLExtended.as_str();
    pub const DATA_FRESH: &str = EventReason::DataFresh.as_str();
    pub const UNEXPECTED_RESPONSE: &str = EventReason::UnexpectedAEPResponse.as_str();
    pub const PAUSED: &str = EventReason::Paused.as_str();
    pub const DELETION_PAUSED: &str = EventReason::DeletionPaused.as_str();
    pub const INVALID_ANNOTATION: &str = EventReason::InvalidAnnotation.as_str();
    pub const AUDIENCE_REATTACHED: &str = EventReason::AudienceReattached.as_str();
    pub const AUDIENCE_CLAIMED: &str = EventReason::AudienceClaimed.as_str();
    pub const ORGANIZATION_CHANGED: &str = EventReason::OrganizationChanged.as_str();
    pub const DRIFT_DETECTED: &str = EventReason::DriftDetected.as_str();
}

type Crd = k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// `crd` with the status default that keeps kstatus from reading a fresh object as done
/// (`observedGeneration: -1` until the controller first writes).
fn with_status_default(mut crd: Crd) -> Crd {
    for version in &mut crd.spec.versions {
        let status = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .and_then(|s| s.properties.as_mut())
            .and_then(|p| p.get_mut("status"));
        if let Some(status) = status {
            status.default = Some(
                k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSON(
                    serde_json::json!({"observedGeneration": -1}),
                ),
            );
        }
    }
    crd
}

/// The ExternalAudience CRD.
pub fn crd() -> Crd {
    with_status_default(ExternalAudience::crd())
}

/// The AudienceActivation CRD.
pub fn activation_crd() -> Crd {
    with_status_default(AudienceActivation::crd())
}

/// The CRDs as committed in `crds/`: (file name, YAML).
pub fn crd_files() -> Result<Vec<(&'static str, String)>, serde_yaml_ng::Error> {
    Ok(vec![
        ("externalaudience.yaml", serde_yaml_ng::to_string(&crd())?),
        ("audienceactivation.yaml", serde_yaml_ng::to_string(&activation_crd())?),
    ])
}

/// The ExternalAudience CRD as YAML, as committed in `crds/externalaudience.yaml`.
pub fn crd_yaml() -> Result<String, serde_yaml_ng::Error> {
    serde_yaml_ng::to_string(&crd())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_crds_match_the_types() {
        // The kustomize install's copies and the Helm chart's.
        let committed = [
            [
                include_str!("../../crds/externalaudience.yaml"),
                include_str!("../../deploy/helm/audience-operator/files/externalaudience.yaml"),
            ],
            [
                include_str!("../../crds/audienceactivation.yaml"),
                include_str!("../../deploy/helm/audience-operator/files/audienceactivation.yaml"),
            ],
        ];
        let generated = crd_files().expect("crd yaml");
        assert_eq!(generated.len(), committed.len());
        for ((file, yaml), copies) in generated.iter().zip(committed) {
            for committed in copies {
                assert!(
                    committed == yaml,
                    "a copy of {file} is stale: run `make crds` (it writes crds/ and the Helm chart's files/)"
                );
            }
        }
    }

    #[test]
    fn status_defaults_observed_generation_to_minus_one() {
        for (file, yaml) in crd_files().expect("crd yaml") {
            assert!(yaml.contains("observedGeneration: -1"), "{file}: {yaml}");
        }
    }

    #[test]
    fn seed_example_deserializes_with_defaults() {
        let spec: ExternalAudienceSpec = serde_json::from_value(serde_json::json!({
            "credentialsSecretRef": {"name": "aep-credentials"},
            "sandbox": "prod",
            "fields": [{"name": "ppid", "type": "string", "identityNs": "email"}],
            "sourceSpec": {"path": "a/b.csv", "type": "file"},
            "ingestion": {"dataFilterStartTime": 764245635}
        }))
        .expect("spec");
        assert_eq!(spec.ttl_in_days, None, "AEP's default applies");
        assert_eq!(spec.deletion_policy, DeletionPolicy::Delete);
        assert_eq!(spec.management_policy, ManagementPolicy::Manage);
        assert!(spec.ingestion.as_ref().is_some_and(|i| i.differential_ingestion));
        assert_eq!(spec.audience_name("loyalty"), "loyalty");
    }
}
