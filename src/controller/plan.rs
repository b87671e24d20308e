//! The controller's brain, without I/O: what AEP should receive for a spec (requests and hashes),
//! whose an audience found in AEP is ([`attribute`]), and which single step a reconcile pass takes
//! next together with the health that state implies ([`next_step`]).
//!
//! The plan reads only the object (spec, status, generation, annotations); every decision is
//! therefore reproducible from what `kubectl get -o yaml` shows, and unit-tested as a table below.
//!
//! Hashes: whether a PATCH or an ingestion run is owed is decided by comparing hashes of
//! *versioned projections of the user's spec* (not of the requests we build), so a change in how
//! requests are serialised (a new optional request field, the `customAudienceId`) never owes a run
//! on upgrade. A new optional spec field joins a projection with `skip_serializing_if` so that
//! objects that do not set it keep their hash. Hashes written by releases before the projections
//! (`legacy`) are still recognised.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{
    aep::types::{
        CreateAudienceRequest, Field, FieldLabels, FieldType, PatchAudienceRequest, SourceParams, SourcePathType,
        SourceSpec, StartRunRequest, UpsAudience,
    },
    api::{
        self, Blocked, ExternalAudienceSpec, ExternalAudienceStatus, OWNERSHIP_RECORD, OwnershipProof, OwnershipRecord,
        RETRY_CREATE, RUN_REQUESTED_AT, RunState, conditions, reasons,
    },
    status::Health,
};

use super::claims::Claim;

/// The IMS org and AEP endpoint of the credentials a pass loaded.
#[derive(Clone, Copy, Debug)]
pub struct Endpoint<'a> {
    pub org_id: &'a str,
    pub platform_url: &'a str,
}

/// What the planner sees.
#[derive(Clone, Debug)]
pub struct Facts<'a> {
    pub generation: i64,
    pub audience_name: &'a str,
    pub spec: &'a ExternalAudienceSpec,
    pub status: &'a ExternalAudienceStatus,
    /// Value of the `run-requested-at` annotation.
    pub run_request: Option<&'a str>,
    /// Value of the `retry-create` annotation.
    pub retry_create: Option<&'a str>,
    /// The latest `spec.ingestion.schedule` time not yet served, if one is due.
    pub schedule_due: Option<Time>,
    /// The org and endpoint of the credentials this pass uses (`None` when not read).
    pub endpoint: Option<Endpoint<'a>>,
    /// Another object's claim that wins over this object's on the same audience.
    pub claimed_by: Option<&'a Claim>,
    /// The ownership record annotation, parsed (`None` without one).
    pub record: Option<&'a Result<OwnershipRecord, String>>,
}

impl Facts<'_> {
    /// Facts about the object alone (no credentials read, no other objects known).
    pub fn of_object<'a>(
        generation: i64,
        audience_name: &'a str,
        spec: &'a ExternalAudienceSpec,
        status: &'a ExternalAudienceStatus,
    ) -> Facts<'a> {
        Facts {
            generation,
            audience_name,
            spec,
            status,
            run_request: None,
            retry_create: None,
            schedule_due: None,
            endpoint: None,
            claimed_by: None,
            record: None,
        }
    }
}

/// The one step a pass performs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing sent yet: look the name up (a holder that is not provably ours stalls), then create.
    Create,
    /// A create was sent but its answer was lost (or its operation is unknown to AEP): look for the
    /// audience by proof; create again only once its absence is proven.
    RecoverCreate,
    /// Poll the create operation.
    PollOperation { operation_id: String },
    /// Adopt the audience named by `spec.audienceId`.
    Adopt { audience_id: String },
    /// PATCH the updatable properties.
    Update { audience_id: String },
    /// Poll the run in flight.
    PollRun { audience_id: String, run_id: String },
    /// A run start may have been sent without its id recorded: find it before starting another.
    RecoverRun { audience_id: String },
    /// Start the run owed for this spec / run request.
    StartRun { audience_id: String },
    /// Record a problem only a change can resolve (no AEP call).
    Block { reason: &'static str, message: String },
    /// Stalled by something outside the spec that may change on its own (another object's claim,
    /// the Secret's org): no AEP call, look again later.
    Held { reason: &'static str, message: String },
    /// Re-attach to the audience the ownership record names, after checking it in AEP (reads only).
    Reattach { audience_id: String },
    /// Read the audience and its runs and report them (`managementPolicy: Observe`; reads only).
    Observe { audience_id: String },
    /// A problem only a change can resolve is recorded for this generation: wait.
    Wait,
    /// Converged (or a failed run awaits a change): check for drift when due.
    Idle { audience_id: String },
}

impl Step {
    /// Bounded label for metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Step::Create => "create",
            Step::RecoverCreate => "recover_create",
            Step::PollOperation { .. } => "poll_operation",
            Step::Adopt { .. } => "adopt",
            Step::Update { .. } => "update",
            Step::PollRun { .. } => "poll_run",
            Step::RecoverRun { .. } => "recover_run",
            Step::StartRun { .. } => "start_run",
            Step::Block { .. } => "block",
            Step::Held { .. } => "held",
            Step::Reattach { .. } => "reattach",
            Step::Observe { .. } => "observe",
            Step::Wait => "wait",
            Step::Idle { .. } => "idle",
        }
    }

    /// Whether the step may change something in AEP (it is then planned from a fresh read).
    pub fn mutates_aep(&self) -> bool {
        matches!(
            self,
            Step::Create
                | Step::RecoverCreate
                | Step::Adopt { .. }
                | Step::Update { .. }
                | Step::RecoverRun { .. }
                | Step::StartRun { .. }
        )
    }
}

/// The next step and the health the current state implies (what the conditions say while the
/// step is pending).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub step: Step,
    pub health: Health,
}

// ----- projections and hashes -------------------------------------------------------------------

/// Version tag of the current projections; part of every hash.
const PROJECTION_VERSION: &str = "v1";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FieldProjection<'a> {
    name: &'a str,
    r#type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    identity_ns: Option<&'a str>,
    labels: &'a [String],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SourceProjection<'a> {
    path: &'a str,
    r#type: &'static str,
    source_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    cloud_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    base_connection_id: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IngestionProjection {
    data_filter_start_time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_filter_end_time: Option<i64>,
    differential_ingestion: bool,
}

/// Everything in the user's spec that AEP is told about the audience and its ingestion.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IngestProjection<'a> {
    name: &'a str,
    description: &'a str,
    fields: Vec<FieldProjection<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<SourceProjection<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl_in_days: Option<i32>,
    labels: &'a [String],
    audience_type: &'static str,
    origin_name: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ingestion: Option<IngestionProjection>,
}

/// The properties AEP can update in place.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UpdatableProjection<'a> {
    description: &'a str,
    labels: &'a [String],
    field_labels: Vec<(&'a str, &'a [String])>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl_in_days: Option<i32>,
}

fn field_type_str(t: api::FieldType) -> &'static str {
    field_type(t).as_str()
}

fn source_kind_str(k: api::SourceKind) -> &'static str {
    match k {
        api::SourceKind::File => "file",
        api::SourceKind::Folder => "folder",
    }
}

fn cloud_type_str(c: api::CloudType) -> &'static str {
    match c {
        api::CloudType::S3 => "S3",
        api::CloudType::Dlz => "DLZ",
        api::CloudType::Gcs => "GCS",
        api::CloudType::Azure => "Azure",
        api::CloudType::Sftp => "SFTP",
    }
}

const SOURCE_TYPE_CLOUD_STORAGE: &str = "Cloud Storage";
const AUDIENCE_TYPE_PEOPLE: &str = "people";
const ORIGIN_CUSTOM_UPLOAD: &str = "CUSTOM_UPLOAD";

fn ingest_projection<'a>(spec: &'a ExternalAudienceSpec, audience_name: &'a str) -> IngestProjection<'a> {
    IngestProjection {
        name: audience_name,
        description: spec.description.as_deref().unwrap_or(""),
        fields: spec
            .fields
            .iter()
            .map(|f| FieldProjection {
                name: &f.name,
                r#type: field_type_str(f.type_),
                identity_ns: f.identity_ns.as_deref(),
                labels: &f.labels,
            })
            .collect(),
        source: spec.source_spec.as_ref().map(|src| SourceProjection {
            path: &src.path,
            r#type: source_kind_str(src.type_),
            source_type: SOURCE_TYPE_CLOUD_STORAGE,
            cloud_type: src.cloud_type.map(cloud_type_str),
            base_connection_id: src.base_connection_id.as_deref(),
        }),
        ttl_in_days: spec.ttl_in_days,
        labels: &spec.labels,
        audience_type: AUDIENCE_TYPE_PEOPLE,
        origin_name: ORIGIN_CUSTOM_UPLOAD,
        ingestion: spec.ingestion.as_ref().map(|i| IngestionProjection {
            data_filter_start_time: i.data_filter_start_time,
            data_filter_end_time: i.data_filter_end_time,
            differential_ingestion: i.differential_ingestion,
        }),
    }
}

fn digest<T: Serialize>(value: &T) -> String {
    // Serialising plain structs is deterministic (field order is declaration order).
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    hex::encode(&Sha256::digest(&bytes)[..16])
}

/// Hash of the updatable properties (a change owes a PATCH).
pub fn updatable_hash(spec: &ExternalAudienceSpec) -> String {
    let projection = UpdatableProjection {
        description: spec.description.as_deref().unwrap_or(""),
        labels: &spec.labels,
        field_labels: spec
            .fields
            .iter()
            .map(|f| (f.name.as_str(), f.labels.as_slice()))
            .collect(),
        ttl_in_days: spec.ttl_in_days,
    };
    format!("{PROJECTION_VERSION}:{}", digest(&projection))
}

/// Hash of everything AEP is told about the audience and its ingestion: a change owes a run.
pub fn ingest_hash(spec: &ExternalAudienceSpec, audience_name: &str) -> String {
    format!(
        "{PROJECTION_VERSION}:{}",
        digest(&ingest_projection(spec, audience_name))
    )
}

/// Whether `stored` is the updatable hash of `spec` (current or legacy form).
pub fn updatable_hash_matches(stored: Option<&str>, spec: &ExternalAudienceSpec) -> bool {
    stored.is_some_and(|h| h == updatable_hash(spec) || h == legacy::updatable_hash(spec))
}

/// Whether `stored` is the ingest hash of `spec` (current or legacy form).
pub fn ingest_hash_matches(stored: Option<&str>, spec: &ExternalAudienceSpec, audience_name: &str) -> bool {
    stored.is_some_and(|h| h == ingest_hash(spec, audience_name) || h == legacy::ingest_hash(spec, audience_name))
}

/// The hashes of releases before the versioned projections: the serialised requests of that
/// time, frozen here field by field so that they never change with the request builders.
mod legacy {
    use serde::Serialize;

    use super::{digest, field_type_str, source_kind_str};
    use crate::api::ExternalAudienceSpec;

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Field<'a> {
        name: &'a str,
        r#type: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        identity_ns: Option<&'a str>,
        #[serde(skip_serializing_if = "<[String]>::is_empty")]
        labels: &'a [String],
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Params<'a> {
        path: &'a str,
        r#type: &'static str,
        source_type: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        cloud_type: Option<&'static str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        base_connection_id: Option<&'a str>,
    }

    #[derive(Serialize)]
    struct Source<'a> {
        params: Params<'a>,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Create<'a> {
        name: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        description: Option<&'a str>,
        fields: Vec<Field<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        source_spec: Option<Source<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        ttl_in_days: Option<u32>,
        #[serde(skip_serializing_if = "<[String]>::is_empty")]
        labels: &'a [String],
        audience_type: &'static str,
        origin_name: &'static str,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Run {
        data_filter_start_time: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        data_filter_end_time: Option<i64>,
        differential_ingestion: bool,
    }

    #[derive(Serialize)]
    struct FieldLabels<'a> {
        name: &'a str,
        labels: &'a [String],
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Patch<'a> {
        description: &'a str,
        labels: &'a [String],
        fields: Vec<FieldLabels<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        ttl_in_days: Option<u32>,
    }

    pub(super) fn ingest_hash(spec: &ExternalAudienceSpec, audience_name: &str) -> String {
        let create = Create {
            name: audience_name,
            description: spec.description.as_deref(),
            fields: spec
                .fields
                .iter()
                .map(|f| Field {
                    name: &f.name,
                    r#type: field_type_str(f.type_),
                    identity_ns: f.identity_ns.as_deref(),
                    labels: &f.labels,
                })
                .collect(),
            source_spec: spec.source_spec.as_ref().map(|src| Source {
                params: Params {
                    path: &src.path,
                    r#type: source_kind_str(src.type_),
                    source_type: super::SOURCE_TYPE_CLOUD_STORAGE,
                    cloud_type: src.cloud_type.map(super::cloud_type_str),
                    base_connection_id: src.base_connection_id.as_deref(),
                },
            }),
            ttl_in_days: spec.ttl_in_days.and_then(|t| u32::try_from(t).ok()),
            labels: &spec.labels,
            audience_type: super::AUDIENCE_TYPE_PEOPLE,
            origin_name: super::ORIGIN_CUSTOM_UPLOAD,
        };
        let run = spec.ingestion.as_ref().map(|i| Run {
            data_filter_start_time: i.data_filter_start_time,
            data_filter_end_time: i.data_filter_end_time,
            differential_ingestion: i.differential_ingestion,
        });
        digest(&(create, run))
    }

    pub(super) fn updatable_hash(spec: &ExternalAudienceSpec) -> String {
        digest(&Patch {
            description: spec.description.as_deref().unwrap_or(""),
            labels: &spec.labels,
            fields: spec
                .fields
                .iter()
                .map(|f| FieldLabels {
                    name: &f.name,
                    labels: &f.labels,
                })
                .collect(),
            ttl_in_days: spec.ttl_in_days.and_then(|t| u32::try_from(t).ok()),
        })
    }
}

// ----- requests -----------------------------------------------------------------------------------

fn field_type(t: api::FieldType) -> FieldType {
    match t {
        api::FieldType::String => FieldType::String,
        api::FieldType::Number => FieldType::Number,
        api::FieldType::Long => FieldType::Long,
        api::FieldType::Integer => FieldType::Integer,
        api::FieldType::Date => FieldType::Date,
        api::FieldType::Datetime => FieldType::Datetime,
        api::FieldType::Boolean => FieldType::Boolean,
    }
}

/// The create request for a spec, marked with the object's `customAudienceId`; `None` without
/// `spec.sourceSpec` (the CRD requires it for an object that creates its audience).
pub fn create_request(
    spec: &ExternalAudienceSpec,
    audience_name: &str,
    custom_audience_id: Option<&str>,
) -> Option<CreateAudienceRequest> {
    let source = spec.source_spec.as_ref()?;
    Some(CreateAudienceRequest {
        name: audience_name.to_owned(),
        description: spec.description.clone(),
        fields: spec
            .fields
            .iter()
            .map(|f| Field {
                name: f.name.clone(),
                r#type: field_type(f.type_),
                identity_ns: f.identity_ns.clone(),
                labels: f.labels.clone(),
            })
            .collect(),
        source_spec: SourceSpec {
            params: SourceParams {
                path: source.path.clone(),
                r#type: match source.type_ {
                    api::SourceKind::File => SourcePathType::File,
                    api::SourceKind::Folder => SourcePathType::Folder,
                },
                source_type: Some(SOURCE_TYPE_CLOUD_STORAGE.to_owned()),
                cloud_type: source.cloud_type.map(|c| cloud_type_str(c).to_owned()),
                base_connection_id: source.base_connection_id.clone(),
                encryption: None,
            },
        },
        ttl_in_days: spec.ttl_in_days.and_then(|t| u32::try_from(t).ok()),
        labels: spec.labels.clone(),
        audience_type: Some(AUDIENCE_TYPE_PEOPLE.to_owned()),
        origin_name: ORIGIN_CUSTOM_UPLOAD.to_owned(),
        namespace: None,
        tags: Vec::new(),
        custom_audience_id: custom_audience_id.map(str::to_owned),
    })
}

/// The PATCH request carrying every updatable property (replace semantics).
pub fn patch_request(spec: &ExternalAudienceSpec) -> PatchAudienceRequest {
    PatchAudienceRequest {
        description: Some(spec.description.clone().unwrap_or_default()),
        labels: Some(spec.labels.clone()),
        fields: Some(
            spec.fields
                .iter()
                .map(|f| FieldLabels {
                    name: f.name.clone(),
                    labels: f.labels.clone(),
                })
                .collect(),
        ),
        ttl_in_days: spec.ttl_in_days.and_then(|t| u32::try_from(t).ok()),
    }
}

/// The start-run request for a spec; `None` without `spec.ingestion`.
pub fn start_run_request(spec: &ExternalAudienceSpec) -> Option<StartRunRequest> {
    let ingestion = spec.ingestion.as_ref()?;
    Some(StartRunRequest {
        data_filter_start_time: ingestion.data_filter_start_time,
        data_filter_end_time: ingestion.data_filter_end_time,
        differential_ingestion: Some(ingestion.differential_ingestion),
    })
}

// ----- ownership ----------------------------------------------------------------------------------

/// Whose an audience found in AEP is, as far as proof goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attribution {
    /// It carries this object's `customAudienceId`.
    Ours,
    /// Provably someone else's: it carries another caller's identifier, was created before this
    /// object sent any create, or this object never sent one.
    Foreign,
    /// Nothing says whose it is (AEP did not echo a `customAudienceId`, and it was created after
    /// this object's create may have been sent).
    Unattributable,
}

/// Allowance for clock skew between AEP and the operator when comparing creation times.
pub const CLOCK_SKEW_SECS: i64 = 300;

/// Attributes an audience found by name or identifier. `create_sent_at` is when this object's
/// pending create may have been sent (epoch seconds), `None` when it never sent one.
pub fn attribute(audience: &UpsAudience, custom_audience_id: &str, create_sent_at: Option<i64>) -> Attribution {
    match audience.audience_id.as_deref() {
        Some(cid) if cid == custom_audience_id => return Attribution::Ours,
        // AEP echoes a caller's identifier here; one that is neither ours nor the system id is
        // someone else's.
        Some(other) if other != audience.id => return Attribution::Foreign,
        _ => {}
    }
    let Some(sent_at) = create_sent_at else {
        return Attribution::Foreign;
    };
    let created = audience
        .create_epoch
        .or_else(|| audience.creation_time.map(|ms| ms / 1000));
    match created {
        Some(created) if created < sent_at - CLOCK_SKEW_SECS => Attribution::Foreign,
        _ => Attribution::Unattributable,
    }
}

// ----- the plan -----------------------------------------------------------------------------------

/// Whether a run is owed: the AEP-facing spec changed since the last run (or there never was one
/// for a created audience), a new run request arrived, or a scheduled time is due.
pub fn run_owed(f: &Facts<'_>) -> bool {
    let spec_changed = !ingest_hash_matches(f.status.ingested_spec_hash.as_deref(), f.spec, f.audience_name);
    let requested = f.run_request.is_some() && f.status.ingested_run_request.as_deref() != f.run_request;
    spec_changed || requested || f.schedule_due.is_some()
}

/// The audience's TTL in days as far as this object knows it: the spec's, else AEP's default (30)
/// for an audience this object created; `None` for an adopted one whose TTL AEP does not return.
pub fn known_ttl(spec: &ExternalAudienceSpec, status: &ExternalAudienceStatus) -> Option<i32> {
    const AEP_DEFAULT_TTL_DAYS: i32 = 30;
    spec.ttl_in_days.or_else(|| {
        let created_here = status.custom_audience_id.is_some()
            && !matches!(
                status.ownership,
                Some(OwnershipProof::SpecAudienceId | OwnershipProof::Observed)
            );
        created_here.then_some(AEP_DEFAULT_TTL_DAYS)
    })
}

/// Reasons that releases before `status.blocked` reported as terminal for a generation, read back
/// from the `Stalled` condition of such objects after an upgrade.
const LEGACY_TERMINAL: &[&str] = &[
    reasons::REJECTED,
    reasons::OPERATION_FAILED,
    reasons::NAME_TAKEN,
    reasons::AUDIENCE_NOT_FOUND,
];

/// The problem recorded for the current generation, if any.
pub fn blocked_now(status: &ExternalAudienceStatus, generation: i64) -> Option<Blocked> {
    if let Some(b) = &status.blocked {
        return (b.generation == generation).then(|| b.clone());
    }
    status
        .conditions
        .iter()
        .find(|c| {
            c.type_ == conditions::STALLED
                && c.status == "True"
                && c.observed_generation == Some(generation)
                && LEGACY_TERMINAL.contains(&c.reason.as_str())
        })
        .map(|c| Blocked {
            reason: c.reason.clone(),
            generation,
            message: c.message.clone(),
        })
}

/// The token a `retry-create` annotation must carry to let a create of unknown outcome be sent
/// again: the pending create's timestamp.
pub fn retry_create_token(status: &ExternalAudienceStatus) -> Option<String> {
    status
        .create_pending_since
        .as_ref()
        .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
}

fn plan(step: Step, health: Health) -> Plan {
    Plan { step, health }
}

/// Whether this object has sent anything to AEP for an audience (a create, or a claim on one):
/// from then on the org and endpoint it was sent to are part of its ownership.
pub fn has_sent(st: &ExternalAudienceStatus) -> bool {
    st.audience_id.is_some() || st.operation_id.is_some() || st.create_pending_since.is_some()
}

fn held(reason: &'static str, message: String) -> Plan {
    plan(
        Step::Held {
            reason,
            message: message.clone(),
        },
        Health::stalled(reason, message),
    )
}

/// The org or endpoint the credentials now name, if it is not the one the audience lives in.
fn organization_changed(f: &Facts<'_>) -> Option<String> {
    let st = f.status;
    let now = f.endpoint?;
    if !has_sent(st) {
        return None;
    }
    let org_moved = st.org_id.as_deref().is_some_and(|o| o != now.org_id);
    let endpoint_moved = st.platform_url.as_deref().is_some_and(|u| u != now.platform_url);
    if !org_moved && !endpoint_moved {
        return None;
    }
    let what = st.audience_id.as_deref().map_or_else(
        || "the audience this object is creating".to_owned(),
        |id| format!("audience {id}"),
    );
    Some(format!(
        "The credentials Secret {:?} now names IMS org {} at {}, but {what} lives in org {} at {}. Nothing is sent to \
         either org for it (it is never created again elsewhere): restore the Secret's orgId/platformUrl, or create a \
         new ExternalAudience for the other org",
        f.spec.credentials_secret_ref.name,
        now.org_id,
        now.platform_url,
        st.org_id.as_deref().unwrap_or("?"),
        st.platform_url.as_deref().unwrap_or(now.platform_url),
    ))
}

/// The message of an object whose audience another object manages.
pub fn claimed_message(audience_id: &str, sandbox: &str, holder: &Claim) -> String {
    format!(
        "Audience {audience_id} in sandbox {sandbox:?} is managed by ExternalAudience {}, whose claim is older{}; this \
         object sends nothing to AEP for it and never deletes it. Delete this object (a copy, or a second object \
         naming the same audience), or release the audience from {} first (delete it there with deletionPolicy: \
         Orphan, or set its managementPolicy: Observe)",
        holder.object_name(),
        if holder.recorded { "" } else { " (not yet recorded)" },
        holder.object_name(),
    )
}

/// The next step for the object, and the health its state implies.
pub fn next_step(f: &Facts<'_>) -> Plan {
    let st = f.status;
    if let Some(blocked) = blocked_now(st, f.generation) {
        let retry_confirmed = blocked.reason == reasons::CREATE_OUTCOME_UNKNOWN
            && f.retry_create.is_some()
            && f.retry_create.map(str::to_owned) == retry_create_token(st);
        if !retry_confirmed {
            return plan(Step::Wait, Health::stalled(blocked.reason, blocked.message));
        }
    }
    if let Some(message) = organization_changed(f) {
        return held(reasons::ORGANIZATION_CHANGED, message);
    }
    if let Some(holder) = f.claimed_by {
        return held(
            reasons::AUDIENCE_CLAIMED,
            claimed_message(&holder.audience.1, &holder.audience.0, holder),
        );
    }
    if f.spec.observes() {
        // The CRD requires spec.audienceId with Observe.
        let Some(id) = f.spec.audience_id.clone().or_else(|| st.audience_id.clone()) else {
            return held(
                reasons::AUDIENCE_NOT_FOUND,
                "spec.managementPolicy Observe needs spec.audienceId to name the audience to observe".to_owned(),
            );
        };
        return plan(
            Step::Observe {
                audience_id: id.clone(),
            },
            Health::progressing(
                reasons::CREATING,
                format!("Reading audience {id} (managementPolicy: Observe)"),
            ),
        );
    }
    if let Some(id) = &st.audience_id
        && st.ownership == Some(OwnershipProof::Observed)
    {
        // Switched from Observe to Manage: take the audience over (a claim, then a PATCH; a run
        // only if the spec owes one).
        return plan(
            Step::Adopt {
                audience_id: id.clone(),
            },
            Health::progressing(
                reasons::CREATING,
                format!("Taking over audience {id} (managementPolicy: Manage)"),
            ),
        );
    }
    let Some(audience_id) = st.audience_id.clone() else {
        // A create in flight is finished first, whatever else changed: its audience is never
        // orphaned.
        if let Some(op) = &st.operation_id {
            return plan(
                Step::PollOperation {
                    operation_id: op.clone(),
                },
                Health::progressing(
                    reasons::WAITING_FOR_OPERATION,
                    format!("Waiting for AEP operation {op}"),
                ),
            );
        }
        if st.create_pending_since.is_some() {
            return plan(
                Step::RecoverCreate,
                Health::progressing(
                    reasons::CONFIRMING_CREATE,
                    format!(
                        "The answer to the create of audience {:?} was lost; looking for it by proof",
                        f.audience_name
                    ),
                ),
            );
        }
        // A record of an audience this object already lost (deleted behind its back, then
        // re-created) names nothing to re-attach to.
        let record = f
            .record
            .filter(|r| !matches!(r, Ok(rec) if st.lost_audience_ids.contains(&rec.audience_id)));
        match record {
            Some(Ok(record)) if f.spec.audience_id.as_ref().is_none_or(|id| *id == record.audience_id) => {
                return plan(
                    Step::Reattach {
                        audience_id: record.audience_id.clone(),
                    },
                    Health::progressing(
                        reasons::REATTACHING,
                        format!(
                            "Re-attaching to audience {} named by the ownership record (annotation {OWNERSHIP_RECORD})",
                            record.audience_id
                        ),
                    ),
                );
            }
            Some(Ok(record)) => {
                return held(
                    reasons::AUDIENCE_ID_MISMATCH,
                    format!(
                        "The ownership record (annotation {OWNERSHIP_RECORD}) names audience {}, but spec.audienceId \
                         names {}: remove the annotation to adopt spec.audienceId, or remove spec.audienceId to \
                         re-attach to the recorded audience",
                        record.audience_id,
                        f.spec.audience_id.as_deref().unwrap_or_default()
                    ),
                );
            }
            Some(Err(problem)) => {
                return held(
                    reasons::INVALID_OWNERSHIP_RECORD,
                    format!(
                        "{problem}. Nothing is sent to AEP: remove the annotation (to create or adopt as the spec \
                         says), or restore the value the controller wrote"
                    ),
                );
            }
            None => {}
        }
        if let Some(id) = &f.spec.audience_id {
            return plan(
                Step::Adopt {
                    audience_id: id.clone(),
                },
                Health::progressing(reasons::CREATING, format!("Adopting audience {id}")),
            );
        }
        return plan(
            Step::Create,
            Health::progressing(
                reasons::CREATING,
                format!("Creating audience {:?} in AEP", f.audience_name),
            ),
        );
    };
    if let Some(wanted) = &f.spec.audience_id
        && *wanted != audience_id
    {
        let message = format!(
            "spec.audienceId names audience {wanted}, but this object manages audience {audience_id} (proof: {}); \
             it keeps managing {audience_id}. To manage {wanted}, create a new ExternalAudience",
            st.ownership
                .map(|p| format!("{p:?}"))
                .unwrap_or_else(|| "recorded".into())
        );
        return plan(
            Step::Block {
                reason: reasons::AUDIENCE_ID_MISMATCH,
                message: message.clone(),
            },
            Health::stalled(reasons::AUDIENCE_ID_MISMATCH, message),
        );
    }
    if !updatable_hash_matches(st.applied_spec_hash.as_deref(), f.spec) {
        return plan(
            Step::Update {
                audience_id: audience_id.clone(),
            },
            Health::progressing(reasons::UPDATING, format!("Updating audience {audience_id} in AEP")),
        );
    }
    if let Some(run) = &st.last_run
        && run.status == RunState::Processing
    {
        return plan(
            Step::PollRun {
                audience_id,
                run_id: run.run_id.clone(),
            },
            Health::progressing(
                reasons::RUN_IN_PROGRESS,
                format!("Ingestion run {} is in progress", run.run_id),
            ),
        );
    }
    let pending = Health::progressing(reasons::RUN_PENDING, "An ingestion run is owed for this spec");
    if st.run_pending.is_some() {
        return plan(Step::RecoverRun { audience_id }, pending);
    }
    if run_owed(f) {
        return plan(Step::StartRun { audience_id }, pending);
    }
    let health = idle_health(st, &audience_id);
    plan(Step::Idle { audience_id }, health)
}

fn idle_health(st: &ExternalAudienceStatus, audience_id: &str) -> Health {
    match &st.last_run {
        Some(run) if run.status == RunState::Failed => Health::stalled(
            reasons::RUN_FAILED,
            format!(
                "Ingestion run {} failed: {}. Runs are not retried automatically (AEP caps runs per day): \
                 change the spec or set the {RUN_REQUESTED_AT} annotation to a new value",
                run.run_id,
                run.message.as_deref().unwrap_or("AEP gave no reason")
            ),
        ),
        Some(run) => Health::ready(format!(
            "Audience {audience_id} is in sync; ingestion run {} succeeded",
            run.run_id
        )),
        None => Health::ready(format!(
            "Audience {audience_id} is in sync (adopted; no ingestion run requested)"
        )),
    }
}

/// The message of a create whose outcome cannot be proven, with what resolves it.
pub fn create_outcome_unknown_message(
    object: &str,
    audience_name: &str,
    sandbox: &str,
    token: &str,
    candidates: &[&UpsAudience],
) -> String {
    let found = candidates.iter().map(|a| a.id.as_str()).collect::<Vec<_>>().join(", ");
    format!(
        "The answer to this object's create of audience {audience_name:?} (sent at {token}) was lost, and AEP gives no \
         proof of whether it created one: audience(s) {found} in sandbox {sandbox:?} carry that name but not this \
         object's customAudienceId. If one of them was created by this object, set spec.audienceId to its id to manage it. \
         If none was, allow a new create with `kubectl annotate externalaudience/{object} {RETRY_CREATE}={token} --overwrite`"
    )
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    use super::*;
    use crate::api::{IngestionRun, RunPending};

    fn spec() -> ExternalAudienceSpec {
        serde_json::from_value(serde_json::json!({
            "credentialsSecretRef": {"name": "aep"},
            "sandbox": "prod",
            "description": "d",
            "fields": [{"name": "ppid", "type": "string", "identityNs": "email"},
                       {"name": "list_id", "type": "string", "labels": ["core/C2"]}],
            "sourceSpec": {"path": "a/b.csv", "type": "file"},
            "ingestion": {"dataFilterStartTime": 764245635}
        }))
        .expect("spec")
    }

    fn now() -> Time {
        Time("2026-01-01T00:00:00Z".parse().expect("ts"))
    }

    fn converged(spec: &ExternalAudienceSpec) -> ExternalAudienceStatus {
        ExternalAudienceStatus {
            audience_id: Some("aud".into()),
            operation_id: Some("op".into()),
            applied_spec_hash: Some(updatable_hash(spec)),
            ingested_spec_hash: Some(ingest_hash(spec, "loyalty")),
            last_run: Some(IngestionRun {
                run_id: "r1".into(),
                generation: 1,
                status: RunState::Success,
                start_time: None,
                end_time: None,
                message: None,
            }),
            ..Default::default()
        }
    }

    fn blocked(reason: &str, generation: i64) -> Option<Blocked> {
        Some(Blocked {
            reason: reason.into(),
            generation,
            message: "m".into(),
        })
    }

    fn legacy_stalled(reason: &str, generation: i64) -> Condition {
        Condition {
            type_: "Stalled".into(),
            status: "True".into(),
            reason: reason.into(),
            message: String::new(),
            observed_generation: Some(generation),
            last_transition_time: now(),
        }
    }

    fn step_for(spec: &ExternalAudienceSpec, status: &ExternalAudienceStatus, run_request: Option<&str>) -> Plan {
        next_step(&Facts {
            generation: 1,
            audience_name: "loyalty",
            spec,
            status,
            run_request,
            retry_create: None,
            schedule_due: None,
            endpoint: None,
            claimed_by: None,
            record: None,
        })
    }

    #[test]
    fn next_step_table() {
        let base = spec();
        let mut changed = base.clone();
        changed.description = Some("new".into());
        let mut adopt = base.clone();
        adopt.audience_id = Some("existing".into());

        let running = |s: &ExternalAudienceSpec| {
            let mut st = converged(s);
            if let Some(r) = st.last_run.as_mut() {
                r.status = RunState::Processing;
            }
            st
        };
        let cases: Vec<(&str, ExternalAudienceSpec, ExternalAudienceStatus, Option<&str>, Step)> = vec![
            (
                "fresh object creates",
                base.clone(),
                Default::default(),
                None,
                Step::Create,
            ),
            (
                "marker without operation id recovers by proof",
                base.clone(),
                ExternalAudienceStatus {
                    create_pending_since: Some(now()),
                    ..Default::default()
                },
                None,
                Step::RecoverCreate,
            ),
            (
                "recorded operation is polled",
                base.clone(),
                ExternalAudienceStatus {
                    operation_id: Some("op".into()),
                    ..Default::default()
                },
                None,
                Step::PollOperation {
                    operation_id: "op".into(),
                },
            ),
            (
                "spec.audienceId set while a create is in flight: the create is finished first",
                adopt.clone(),
                ExternalAudienceStatus {
                    operation_id: Some("op".into()),
                    ..Default::default()
                },
                None,
                Step::PollOperation {
                    operation_id: "op".into(),
                },
            ),
            (
                "spec.audienceId adopts",
                adopt.clone(),
                Default::default(),
                None,
                Step::Adopt {
                    audience_id: "existing".into(),
                },
            ),
            (
                "created audience without a run starts one",
                base.clone(),
                ExternalAudienceStatus {
                    audience_id: Some("aud".into()),
                    applied_spec_hash: Some(updatable_hash(&base)),
                    ..Default::default()
                },
                None,
                Step::StartRun {
                    audience_id: "aud".into(),
                },
            ),
            (
                "converged is idle",
                base.clone(),
                converged(&base),
                None,
                Step::Idle {
                    audience_id: "aud".into(),
                },
            ),
            (
                "description change patches first",
                changed.clone(),
                converged(&base),
                None,
                Step::Update {
                    audience_id: "aud".into(),
                },
            ),
            (
                "patched change owes a run",
                changed.clone(),
                ExternalAudienceStatus {
                    applied_spec_hash: Some(updatable_hash(&changed)),
                    ..converged(&base)
                },
                None,
                Step::StartRun {
                    audience_id: "aud".into(),
                },
            ),
            (
                "run in flight is polled even if another run is owed",
                changed.clone(),
                ExternalAudienceStatus {
                    applied_spec_hash: Some(updatable_hash(&changed)),
                    ..running(&base)
                },
                None,
                Step::PollRun {
                    audience_id: "aud".into(),
                    run_id: "r1".into(),
                },
            ),
            (
                "run marker without run id recovers",
                base.clone(),
                ExternalAudienceStatus {
                    run_pending: Some(RunPending {
                        since: now(),
                        generation: 1,
                        spec_hash: "h".into(),
                        run_request: None,
                        scheduled_for: None,
                    }),
                    ..converged(&base)
                },
                None,
                Step::RecoverRun {
                    audience_id: "aud".into(),
                },
            ),
            (
                "new run request starts a run",
                base.clone(),
                converged(&base),
                Some("t1"),
                Step::StartRun {
                    audience_id: "aud".into(),
                },
            ),
            (
                "honoured run request is idle",
                base.clone(),
                ExternalAudienceStatus {
                    ingested_run_request: Some("t1".into()),
                    ..converged(&base)
                },
                Some("t1"),
                Step::Idle {
                    audience_id: "aud".into(),
                },
            ),
            (
                "failed run is not retried",
                base.clone(),
                ExternalAudienceStatus {
                    last_run: converged(&base).last_run.map(|r| IngestionRun {
                        status: RunState::Failed,
                        ..r
                    }),
                    ..converged(&base)
                },
                None,
                Step::Idle {
                    audience_id: "aud".into(),
                },
            ),
            (
                "a problem blocked at this generation waits",
                base.clone(),
                ExternalAudienceStatus {
                    blocked: blocked(reasons::REJECTED, 1),
                    ..Default::default()
                },
                None,
                Step::Wait,
            ),
            (
                "a problem blocked at an older generation retries",
                base.clone(),
                ExternalAudienceStatus {
                    blocked: blocked(reasons::REJECTED, 0),
                    ..Default::default()
                },
                None,
                Step::Create,
            ),
            (
                "legacy Stalled condition of this generation still waits after an upgrade",
                base.clone(),
                ExternalAudienceStatus {
                    conditions: vec![legacy_stalled(reasons::NAME_TAKEN, 1)],
                    ..Default::default()
                },
                None,
                Step::Wait,
            ),
            (
                "setting spec.audienceId after a name clash adopts",
                adopt.clone(),
                ExternalAudienceStatus {
                    blocked: blocked(reasons::NAME_TAKEN, 0),
                    ..Default::default()
                },
                None,
                Step::Adopt {
                    audience_id: "existing".into(),
                },
            ),
        ];
        for (name, spec, status, run_request, want) in cases {
            assert_eq!(step_for(&spec, &status, run_request).step, want, "case: {name}");
        }
    }

    #[test]
    fn ownership_steps_come_before_any_aep_call_in_a_fixed_order() {
        use crate::api::{ManagementPolicy, OwnershipRecord};
        let base = spec();
        let endpoint = Endpoint {
            org_id: "ORG",
            platform_url: "https://platform.adobe.io/",
        };
        let other_org = Endpoint {
            org_id: "OTHER",
            platform_url: "https://platform.adobe.io/",
        };
        let holder = Claim {
            audience: ("prod".into(), "aud".into()),
            org: Some("ORG".into()),
            recorded: true,
            since: None,
            created: None,
            object: ("ns".into(), "owner".into()),
        };
        let record = Ok(OwnershipRecord {
            v: 1,
            audience_id: "rec".into(),
            custom_audience_id: None,
            org_id: "ORG".into(),
            platform_url: "https://platform.adobe.io/".into(),
            sandbox: "prod".into(),
            claimed_by: "u".into(),
            claimed_at: "2026-01-01T00:00:00Z".into(),
            applied_spec_hash: None,
            ingested_spec_hash: None,
        });
        let bad_record: Result<OwnershipRecord, String> = Err("garbled".into());
        let recorded = ExternalAudienceStatus {
            org_id: Some("ORG".into()),
            ..converged(&base)
        };
        let plan_of = |spec: &ExternalAudienceSpec,
                       status: &ExternalAudienceStatus,
                       endpoint: Endpoint<'_>,
                       claimed_by: Option<&Claim>,
                       record: Option<&Result<OwnershipRecord, String>>| {
            next_step(&Facts {
                endpoint: Some(endpoint),
                claimed_by,
                record,
                ..Facts::of_object(1, "loyalty", spec, status)
            })
        };
        let held = |p: &Plan| match &p.step {
            Step::Held { reason, .. } => *reason,
            other => panic!("not held: {other:?}"),
        };
        // The org first (nothing goes to either org), then another object's claim.
        let p = plan_of(&base, &recorded, other_org, Some(&holder), None);
        assert_eq!(held(&p), reasons::ORGANIZATION_CHANGED);
        assert!(p.health.is_stalled());
        assert_eq!(
            held(&plan_of(&base, &recorded, endpoint, Some(&holder), None)),
            reasons::AUDIENCE_CLAIMED
        );
        // Nothing sent yet: the org is free to change.
        let fresh = ExternalAudienceStatus {
            org_id: Some("ORG".into()),
            ..Default::default()
        };
        assert_eq!(plan_of(&base, &fresh, other_org, None, None).step, Step::Create);
        // A restored object re-attaches; a garbled record or one of a lost audience does not.
        assert_eq!(
            plan_of(&base, &Default::default(), endpoint, None, Some(&record)).step,
            Step::Reattach {
                audience_id: "rec".into()
            }
        );
        assert_eq!(
            held(&plan_of(&base, &Default::default(), endpoint, None, Some(&bad_record))),
            reasons::INVALID_OWNERSHIP_RECORD
        );
        let lost = ExternalAudienceStatus {
            lost_audience_ids: vec!["rec".into()],
            ..Default::default()
        };
        assert_eq!(plan_of(&base, &lost, endpoint, None, Some(&record)).step, Step::Create);
        let mut adopt = base.clone();
        adopt.audience_id = Some("other".into());
        assert_eq!(
            held(&plan_of(&adopt, &Default::default(), endpoint, None, Some(&record))),
            reasons::AUDIENCE_ID_MISMATCH
        );
        // Observe reads; switching back to Manage takes the audience over.
        let mut observe = base.clone();
        observe.management_policy = ManagementPolicy::Observe;
        observe.audience_id = Some("aud".into());
        assert_eq!(
            plan_of(&observe, &Default::default(), endpoint, None, None).step,
            Step::Observe {
                audience_id: "aud".into()
            }
        );
        let observed = ExternalAudienceStatus {
            audience_id: Some("aud".into()),
            ownership: Some(OwnershipProof::Observed),
            ..Default::default()
        };
        let mut manage = observe.clone();
        manage.management_policy = ManagementPolicy::Manage;
        assert_eq!(
            plan_of(&manage, &observed, endpoint, None, None).step,
            Step::Adopt {
                audience_id: "aud".into()
            }
        );
    }

    #[test]
    fn spec_audience_id_other_than_the_managed_one_blocks() {
        let mut adopt = spec();
        adopt.audience_id = Some("other".into());
        let plan = step_for(&adopt, &converged(&spec()), None);
        assert!(
            matches!(plan.step, Step::Block { reason, .. } if reason == reasons::AUDIENCE_ID_MISMATCH),
            "{plan:?}"
        );
        assert!(plan.health.is_stalled());
    }

    #[test]
    fn retry_create_annotation_resumes_only_with_the_pending_token() {
        let base = spec();
        let status = ExternalAudienceStatus {
            create_pending_since: Some(now()),
            blocked: blocked(reasons::CREATE_OUTCOME_UNKNOWN, 1),
            ..Default::default()
        };
        let token = retry_create_token(&status).expect("token");
        let with = |annotation: Option<&str>| {
            next_step(&Facts {
                generation: 1,
                audience_name: "loyalty",
                spec: &base,
                status: &status,
                run_request: None,
                retry_create: annotation,
                schedule_due: None,
                endpoint: None,
                claimed_by: None,
                record: None,
            })
            .step
        };
        assert_eq!(with(None), Step::Wait);
        assert_eq!(
            with(Some("2025-01-01T00:00:00Z")),
            Step::Wait,
            "a stale token does nothing"
        );
        assert_eq!(with(Some(&token)), Step::RecoverCreate);
    }

    #[test]
    fn health_follows_the_step() {
        let base = spec();
        assert_eq!(step_for(&base, &converged(&base), None).health.reason(), reasons::READY);
        let failed = ExternalAudienceStatus {
            last_run: converged(&base).last_run.map(|r| IngestionRun {
                status: RunState::Failed,
                ..r
            }),
            ..converged(&base)
        };
        let h = step_for(&base, &failed, None).health;
        assert_eq!(h.reason(), reasons::RUN_FAILED);
        assert!(h.message().contains("AEP gave no reason"), "{h:?}");
        let waiting = ExternalAudienceStatus {
            operation_id: Some("op".into()),
            ..Default::default()
        };
        assert_eq!(
            step_for(&base, &waiting, None).health.reason(),
            reasons::WAITING_FOR_OPERATION
        );
    }

    #[test]
    fn hashes_ignore_non_aep_fields_and_request_serialisation() {
        let a = spec();
        let mut b = a.clone();
        b.deletion_policy = api::DeletionPolicy::Orphan;
        b.credentials_secret_ref.name = "other".into();
        b.audience_id = Some("x".into());
        assert_eq!(ingest_hash(&a, "n"), ingest_hash(&b, "n"));
        assert_eq!(updatable_hash(&a), updatable_hash(&b));
        let mut c = a.clone();
        c.ttl_in_days = Some(40);
        assert_ne!(updatable_hash(&a), updatable_hash(&c));
        assert_ne!(ingest_hash(&a, "n"), ingest_hash(&c, "n"));
        // The create request now carries a customAudienceId; the owed-run hash does not move.
        assert!(ingest_hash(&a, "n").starts_with("v1:"));
    }

    #[test]
    fn legacy_hashes_are_still_recognised() {
        let a = spec();
        let legacy_ingest = legacy::ingest_hash(&a, "loyalty");
        assert!(ingest_hash_matches(Some(&legacy_ingest), &a, "loyalty"));
        assert!(updatable_hash_matches(Some(&legacy::updatable_hash(&a)), &a));
        let mut b = a.clone();
        b.description = Some("changed".into());
        assert!(!ingest_hash_matches(Some(&legacy_ingest), &b, "loyalty"));
        assert!(!ingest_hash_matches(None, &a, "loyalty"));
    }

    #[test]
    fn a_status_written_by_the_release_before_versioned_hashes_owes_nothing() {
        let obj: crate::api::ExternalAudience =
            serde_yaml_ng::from_str(include_str!("../../tests/fixtures/status-78473e7.yaml")).expect("fixture");
        let status = obj.status.clone().expect("status");
        let name = obj.spec.audience_name("loyalty-members");
        assert_eq!(
            status.ingested_spec_hash.as_deref(),
            Some(legacy::ingest_hash(&obj.spec, name).as_str())
        );
        assert_eq!(
            status.applied_spec_hash.as_deref(),
            Some(legacy::updatable_hash(&obj.spec).as_str())
        );
        let plan = next_step(&Facts {
            generation: obj.metadata.generation.unwrap_or_default(),
            audience_name: name,
            spec: &obj.spec,
            status: &status,
            run_request: None,
            retry_create: None,
            schedule_due: None,
            endpoint: None,
            claimed_by: None,
            record: None,
        });
        assert!(matches!(plan.step, Step::Idle { .. }), "{plan:?}");
        assert_eq!(plan.health.reason(), reasons::READY);
    }

    #[test]
    fn attribution_needs_proof() {
        let aud = |id: &str, audience_id: Option<&str>, created: i64| UpsAudience {
            id: id.into(),
            audience_id: audience_id.map(str::to_owned),
            name: "n".into(),
            create_epoch: Some(created),
            ..Default::default()
        };
        let sent = Some(10_000);
        assert_eq!(
            attribute(&aud("a", Some("k8s-1"), 10_000), "k8s-1", sent),
            Attribution::Ours
        );
        assert_eq!(
            attribute(&aud("a", Some("k8s-2"), 10_000), "k8s-1", sent),
            Attribution::Foreign,
            "another caller's identifier"
        );
        assert_eq!(
            attribute(&aud("a", Some("a"), 10_000), "k8s-1", sent),
            Attribution::Unattributable,
            "no identifier echoed, created after our create may have been sent"
        );
        assert_eq!(
            attribute(&aud("a", None, 10_000 - CLOCK_SKEW_SECS - 1), "k8s-1", sent),
            Attribution::Foreign,
            "created before our create was sent"
        );
        assert_eq!(
            attribute(&aud("a", None, 10_000), "k8s-1", None),
            Attribution::Foreign,
            "we never sent a create"
        );
    }

    #[test]
    fn create_request_matches_the_seed_shape_and_carries_the_marker() {
        let req = create_request(&spec(), "Loyalty members", Some("k8s-uid"));
        let v = serde_json::to_value(&req).expect("json");
        assert_eq!(v["name"], "Loyalty members");
        assert_eq!(v["sourceSpec"]["params"]["sourceType"], "Cloud Storage");
        assert_eq!(v["fields"][0]["identityNs"], "email");
        assert_eq!(v["audienceType"], "people");
        assert_eq!(v["originName"], "CUSTOM_UPLOAD");
        assert!(
            v.get("ttlInDays").is_none(),
            "without spec.ttlInDays AEP's default applies"
        );
        assert_eq!(v["customAudienceId"], "k8s-uid");
        let mut with_ttl = spec();
        with_ttl.ttl_in_days = Some(40);
        let v = serde_json::to_value(create_request(&with_ttl, "Loyalty members", None)).expect("json");
        assert_eq!(v["ttlInDays"], 40);
        let mut adopted = spec();
        adopted.source_spec = None;
        assert!(
            create_request(&adopted, "x", None).is_none(),
            "no create without a sourceSpec"
        );
    }
}
