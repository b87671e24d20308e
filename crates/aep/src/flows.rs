//! Wire types of AEP's activation surface (reference "aep-activation-api" §1, §2): Flow Service
//! destination dataflows (`/data/foundation/flowservice/flows`), their JSON-Patch edits and their
//! runs, the ad hoc activation API (`/data/core/activation/disflowprovider/adhocrun`), and the
//! segmentation jobs and schedules of `/data/core/ups` (the daily batch segmentation signal).
//!
//! Parsing is lenient like [`crate::types`]: unknown keys are ignored, epoch numbers may be numeric
//! strings, enums keep values they do not know. A selector's value keeps its unknown keys in
//! `extra`, so a `replace` can send the complete selector back as read (§1.7), and a list of
//! selectors never drops an entry it cannot read: entries are addressed by index, and a skipped
//! one would shift every index after it. Helpers answer the questions the operator asks of a flow
//! (where is this audience, is this a file-based destination) and of a run (does it concern this
//! audience, how did it end). Data only: no I/O, no validation policy (the emulator holds AEP's
//! rules).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::de::Deserializer;
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::types::{Link, lenient_i64, lenient_opt, lenient_strings, lenient_vec, string_enum};

/// `type` of every audience selector.
pub const SELECTOR_TYPE_PLATFORM_SEGMENT: &str = "PLATFORM_SEGMENT";
/// Name of the transformation that carries the selectors (the V2 schema spells it with a space,
/// every answer without; reference §4 #7).
pub const TRANSFORMATION_GENERAL: &str = "GeneralTransform";
/// JSON-Pointer of the selectors array of the first transformation.
pub const SELECTORS_PATH: &str = "/transformations/0/params/segmentSelectors/selectors";
/// Namespace of audiences uploaded through the external-audience API.
pub const NAMESPACE_CUSTOMER_AUDIENCE_UPLOAD: &str = "CustomerAudienceUpload";

/// Connection spec of every destination flow's source connection (the Profile Store).
pub const CONNECTION_SPEC_PROFILE_STORE: &str = "8a9c3494-9708-43d7-ae3f-cda01e5030e1";
/// Connection spec of Amazon S3 (new file-based card).
pub const CONNECTION_SPEC_S3: &str = "4fce964d-3f37-408f-9778-e597338a21ee";
/// Connection spec of Amazon Kinesis (streaming).
pub const CONNECTION_SPEC_KINESIS: &str = "86043421-563b-46ec-8e6c-e23184711bf6";
/// Connection spec of Azure Event Hubs (streaming).
pub const CONNECTION_SPEC_EVENT_HUBS: &str = "bf9f5905-92b7-48bf-bf20-455bc6b60a4e";
/// Flow spec of profile-based legacy batch and of streaming destination flows.
pub const FLOW_SPEC_PROFILE_STREAMING: &str = "71471eba-b620-49e4-90fd-23f1fa0174d8";
/// Flow spec of the new Amazon S3 file-based card.
pub const FLOW_SPEC_S3: &str = "1a0514a6-33d4-4c7f-aff8-594799c47549";

/// Target connection specs of file-based (batch) destinations: the new cards (S3, Azure Blob,
/// ADLS Gen2, Data Landing Zone, Google Cloud Storage, SFTP) and the legacy ones (Adobe Campaign,
/// S3, Azure Blob, SFTP) (reference §1.2, D-FILE, D-BATCH).
pub const BATCH_CONNECTION_SPECS: &[&str] = &[
    CONNECTION_SPEC_S3,
    "6d6b59bf-fb58-4107-9064-4d246c0e5bb2",
    "be2c3209-53bc-47e7-ab25-145db8b873e1",
    "10440537-2a7b-4583-ac39-ed38d4b848e8",
    "c5d93acb-ea8b-4b14-8f53-02138444ae99",
    "36965a81-b1c6-401b-99f8-22508f1e6a26",
    "0b23e41a-cb4a-4321-a78f-3b654f5d7d97",
    "4890fc95-5a1f-4983-94bb-e060c08e3f81",
    "e258278b-a4cf-43ac-b158-4fa0ca0d948b",
    "64ef4b8b-a6e0-41b5-9677-3805d1ee5dd0",
];

/// Target connection specs of streaming destinations known to this client (Kinesis, Event Hubs).
pub const STREAMING_CONNECTION_SPECS: &[&str] = &[CONNECTION_SPEC_KINESIS, CONNECTION_SPEC_EVENT_HUBS];

/// Flow specs of file-based destination flows, both generations the docs list (reference §4 #1).
pub const BATCH_FLOW_SPECS: &[&str] = &[
    FLOW_SPEC_S3,
    "752d422f-b16f-4f0d-b1c6-26e448e3b388",
    "17be2013-2549-41ce-96e7-a70363bec293",
    "cd2fc47e-e838-4f38-a581-8fff2f99b63a",
    "585c15c4-6cbf-4126-8f87-e26bff78b657",
    "fd36aaa4-bf2b-43fb-9387-43785eeeb799",
    "269ba276-16fc-47db-92b0-c1049a3c131f",
    "95bd8965-fc8a-4119-b9c3-944c2c2df6d2",
    "354d6aad-4754-46e4-a576-1b384561c440",
];

/// `exportMode` values (batch destinations).
pub const EXPORT_MODE_DAILY_FULL: &str = "DAILY_FULL_EXPORT";
/// `exportMode`: a full file first, then incremental ones.
pub const EXPORT_MODE_FIRST_FULL_THEN_INCREMENTAL: &str = "FIRST_FULL_THEN_INCREMENTAL";
/// `schedule.triggerType`: export right after the daily batch segmentation job.
pub const TRIGGER_AFTER_SEGMENT_EVAL: &str = "AFTER_SEGMENT_EVAL";
/// `schedule.triggerType`: export at `startTime` (UTC).
pub const TRIGGER_SCHEDULED: &str = "SCHEDULED";
/// `schedule.frequency` values allowed with `DAILY_FULL_EXPORT`.
pub const FREQUENCIES_FULL: &[&str] = &["ONCE", "DAILY"];
/// `schedule.frequency` values allowed with `FIRST_FULL_THEN_INCREMENTAL`.
pub const FREQUENCIES_INCREMENTAL: &[&str] = &[
    "DAILY",
    "EVERY_3_HOURS",
    "EVERY_6_HOURS",
    "EVERY_8_HOURS",
    "EVERY_12_HOURS",
];

/// `Accept` header that selects version 2 of the ad hoc activation API (reference §1.14).
pub const ADHOC_ACCEPT_V2: &str = "application/vnd.adobe.adhoc.activation+json; version=2";
/// Most audiences one ad hoc activation job may name (hard guardrail, reference §1.16).
pub const ADHOC_MAX_AUDIENCES: usize = 80;

/// `property` of `GET /flows`: destination flows only (value `true`).
pub const FLOW_FILTER_IS_DESTINATION: &str = "inheritedAttributes.properties.isDestinationFlow";
/// `property` of `GET /flows`: flows to one destination type (value: a connection spec id).
pub const FLOW_FILTER_TARGET_SPEC: &str = "inheritedAttributes.targetConnections[].connectionSpec.id";
/// `property` of `GET /flows`: flows whose selectors carry an audience in `value.id`.
pub const FLOW_FILTER_SELECTOR_ID: &str = "transformations[].params.segmentSelectors.selectors[].value.id";
/// `property` of `GET /flows`: `enabled` or `disabled` flows.
pub const FLOW_FILTER_STATE: &str = "state";

// ---------------------------------------------------------------------------------------------
// Lenient helpers
// ---------------------------------------------------------------------------------------------

/// A string, or a number or boolean written as one; `None` for anything else.
fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(Value::Bool(b)) => Some(b.to_string()),
        _ => None,
    })
}

/// A boolean, or the strings `true` / `false`.
fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::Bool(b)) => Some(b),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Some(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    })
}

/// A value parsed as `T`, or `T::default()` when absent or of an unexpected shape.
fn lenient_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: serde::de::DeserializeOwned + Default,
{
    Ok(lenient_opt(d)?.unwrap_or_default())
}

/// A list of selectors where no entry is ever dropped: an entry that cannot be read becomes an
/// empty selector, so every index still addresses the same entry AEP holds.
fn selectors_keeping_indices<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SegmentSelector>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| serde_json::from_value(v).unwrap_or_default())
            .collect(),
        _ => Vec::new(),
    })
}

// ---------------------------------------------------------------------------------------------
// Flows
// ---------------------------------------------------------------------------------------------

/// A `{id, version}` reference (`flowSpec`, `connectionSpec`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SpecRef {
    /// The spec's id.
    #[serde(default)]
    pub id: String,
    /// Its version, e.g. `1.0`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub version: Option<String>,
}

/// A source or target connection in `inheritedAttributes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionRef {
    /// Connection id.
    #[serde(default)]
    pub id: String,
    /// Its connection spec (the destination type for a target connection).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_opt")]
    pub connection_spec: Option<SpecRef>,
}

/// `inheritedAttributes.properties`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct FlowProperties {
    /// `true` on destination (activation) flows.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_bool")]
    pub is_destination_flow: Option<bool>,
}

/// `inheritedAttributes` of a flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct InheritedAttributes {
    /// Flags of the flow.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_opt")]
    pub properties: Option<FlowProperties>,
    /// The source connections (the Profile Store for destination flows).
    #[serde(default, deserialize_with = "lenient_vec")]
    pub source_connections: Vec<ConnectionRef>,
    /// The target connections; the first one's connection spec names the destination type.
    #[serde(default, deserialize_with = "lenient_vec")]
    pub target_connections: Vec<ConnectionRef>,
}

/// The export schedule of a batch selector (reference §1.5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ExportSchedule {
    /// `ONCE`, `DAILY`, `EVERY_3_HOURS`, …
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub frequency: Option<String>,
    /// `AFTER_SEGMENT_EVAL` or `SCHEDULED`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub trigger_type: Option<String>,
    /// `YYYY-MM-DD`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub start_date: Option<String>,
    /// `YYYY-MM-DD`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub end_date: Option<String>,
    /// `HH:00`, UTC.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub start_time: Option<String>,
    /// Keys this client does not know, sent back unchanged by a `replace`.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The `value` of an audience selector (reference §1.5, A-DEST `BaseSegmentSelectorValue`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct SelectorValue {
    /// The audience: its id as sent, or (for external audiences, as some servers store it) the
    /// external id, with the platform id in `system_segment_id`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub id: Option<String>,
    /// Audience name.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub name: Option<String>,
    /// Audience description.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub description: Option<String>,
    /// The platform id of an externally generated audience.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub system_segment_id: Option<String>,
    /// Origin of the audience, e.g. `CustomerAudienceUpload`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub namespace: Option<String>,
    /// File name template (batch; the schema's `fileNameTemplate` is read too, §4 #6).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "fileNameTemplate",
        deserialize_with = "lenient_string"
    )]
    pub filename_template: Option<String>,
    /// `DAILY_FULL_EXPORT` or `FIRST_FULL_THEN_INCREMENTAL` (batch).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub export_mode: Option<String>,
    /// When to export (batch).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_opt")]
    pub schedule: Option<ExportSchedule>,
    /// Set by the service: epoch seconds (a string on the wire).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub create_time: Option<String>,
    /// Set by the service: epoch seconds (a string on the wire).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub update_time: Option<String>,
    /// Keys this client does not know (`enrichmentInfo`, …), sent back unchanged by a `replace`.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl SelectorValue {
    /// A value naming only the audience.
    pub fn for_audience(audience_id: impl Into<String>) -> Self {
        SelectorValue {
            id: Some(audience_id.into()),
            ..SelectorValue::default()
        }
    }

    /// Whether this value names `audience_id` in `id` or `systemSegmentId`.
    pub fn names(&self, audience_id: &str) -> bool {
        !audience_id.is_empty()
            && (self.id.as_deref() == Some(audience_id) || self.system_segment_id.as_deref() == Some(audience_id))
    }

    /// Whether batch export settings (`exportMode`, `schedule`, `filenameTemplate`) are present.
    pub fn has_export_settings(&self) -> bool {
        self.export_mode.is_some() || self.schedule.is_some() || self.filename_template.is_some()
    }
}

/// One entry of `transformations[0].params.segmentSelectors.selectors`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SegmentSelector {
    /// Always `PLATFORM_SEGMENT` for audiences.
    #[serde(default, deserialize_with = "lenient_default")]
    pub r#type: String,
    /// The audience and its export settings.
    #[serde(default, deserialize_with = "lenient_default")]
    pub value: SelectorValue,
}

impl SegmentSelector {
    /// A `PLATFORM_SEGMENT` selector with this value.
    pub fn platform_segment(value: SelectorValue) -> Self {
        SegmentSelector {
            r#type: SELECTOR_TYPE_PLATFORM_SEGMENT.to_owned(),
            value,
        }
    }

    /// Whether the selector names `audience_id` (`value.id` or `value.systemSegmentId`).
    pub fn names(&self, audience_id: &str) -> bool {
        self.value.names(audience_id)
    }

    /// The selector as the JSON value of a patch operation.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// `segmentSelectors` / `profileSelectors`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SelectorList {
    /// The selectors, in order; addressed by index.
    #[serde(default, deserialize_with = "selectors_keeping_indices")]
    pub selectors: Vec<SegmentSelector>,
}

/// `transformations[].params`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct TransformationParams {
    /// The activated audiences.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_opt")]
    pub segment_selectors: Option<SelectorList>,
    /// Exported attributes (legacy and streaming flows), kept as read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_selectors: Option<Value>,
    /// Everything else (`profileMapping`, `primaryFields`, `mandatoryFields`, …), kept as read.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One entry of `transformations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Transformation {
    /// `GeneralTransform` for destination flows.
    #[serde(default, deserialize_with = "lenient_default")]
    pub name: String,
    /// Its parameters.
    #[serde(default, deserialize_with = "lenient_default")]
    pub params: TransformationParams,
}

/// `lastOperation.status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LastOperationStatus {
    /// E.g. `completed`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub value: Option<String>,
    /// Errors of the operation, as read.
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "lenient_vec")]
    pub errors: Vec<Value>,
}

/// `lastOperation` of a flow: the last change and how far it got (SPEC-EX, reference §1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct LastOperation {
    /// Epoch ms.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_i64")]
    pub started: Option<i64>,
    /// Epoch ms.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_i64")]
    pub updated: Option<i64>,
    /// 0..100.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_i64")]
    pub percent_completed: Option<i64>,
    /// Outcome so far.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_opt")]
    pub status: Option<LastOperationStatus>,
    /// The JSON-Patch operations of the change, as read.
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "lenient_vec")]
    pub ops: Vec<Value>,
    /// E.g. `update`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub operation: Option<String>,
}

/// A Flow Service dataflow (`GET /flows/{id}`'s `items[0]`, reference §1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Flow {
    /// Flow (dataflow, destination instance) id.
    #[serde(default)]
    pub id: String,
    /// Display name.
    #[serde(default, deserialize_with = "lenient_default")]
    pub name: String,
    /// Free text.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub description: Option<String>,
    /// The flow spec.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_opt")]
    pub flow_spec: Option<SpecRef>,
    /// `enabled` or `disabled`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub state: Option<String>,
    /// The etag exactly as AEP gives it, double quotes embedded (`"\"8b03…\""`): the `If-Match`
    /// value of a PATCH decided from this read.
    #[serde(default, deserialize_with = "lenient_default")]
    pub etag: String,
    /// Same value as `etag`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub version: Option<String>,
    /// Source connection ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "lenient_strings")]
    pub source_connection_ids: Vec<String>,
    /// Target connection ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "lenient_strings")]
    pub target_connection_ids: Vec<String>,
    /// Flags and the connections with their specs.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_opt")]
    pub inherited_attributes: Option<InheritedAttributes>,
    /// `[0]` carries the audience selectors.
    #[serde(default, deserialize_with = "lenient_vec")]
    pub transformations: Vec<Transformation>,
    /// Epoch ms.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_i64")]
    pub created_at: Option<i64>,
    /// Epoch ms.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_i64")]
    pub updated_at: Option<i64>,
    /// Creator.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub created_by: Option<String>,
    /// Last updater.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub updated_by: Option<String>,
    /// Sandbox id.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub sandbox_id: Option<String>,
    /// Sandbox name.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub sandbox_name: Option<String>,
    /// Owning org.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub ims_org_id: Option<String>,
    /// The last change and its progress.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_opt")]
    pub last_operation: Option<LastOperation>,
}

/// Whether a flow exports files on a schedule (batch) or streams (reference §1.15, §6.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DestinationKind {
    /// File-based: every audience needs `exportMode` and a `schedule`; ad hoc exports allowed.
    Batch,
    /// Streaming: audiences carry no export settings.
    Streaming,
}

impl DestinationKind {
    /// `batch` or `streaming`.
    pub fn as_str(&self) -> &'static str {
        match self {
            DestinationKind::Batch => "batch",
            DestinationKind::Streaming => "streaming",
        }
    }
}

impl fmt::Display for DestinationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Flow {
    /// The audience selectors of `transformations[0]`, in order (empty when there are none).
    pub fn selectors(&self) -> &[SegmentSelector] {
        self.transformations
            .first()
            .and_then(|t| t.params.segment_selectors.as_ref())
            .map(|l| l.selectors.as_slice())
            .unwrap_or(&[])
    }

    /// Index of the first selector whose `value.id` or `value.systemSegmentId` is `audience_id`.
    pub fn position_of(&self, audience_id: &str) -> Option<usize> {
        self.selectors().iter().position(|s| s.names(audience_id))
    }

    /// The selector carrying `audience_id`, if any.
    pub fn selector_of(&self, audience_id: &str) -> Option<&SegmentSelector> {
        self.position_of(audience_id).map(|i| &self.selectors()[i])
    }

    /// Whether `transformations[0]` exists, i.e. selectors can be patched at
    /// [`SELECTORS_PATH`] (reference §1.10: new file-based flows may have none yet).
    pub fn has_selector_transformation(&self) -> bool {
        !self.transformations.is_empty()
    }

    /// `inheritedAttributes.properties.isDestinationFlow`.
    pub fn is_destination_flow(&self) -> bool {
        self.inherited_attributes
            .as_ref()
            .and_then(|a| a.properties.as_ref())
            .and_then(|p| p.is_destination_flow)
            .unwrap_or(false)
    }

    /// The connection spec id of the first target connection: the destination type.
    pub fn target_connection_spec_id(&self) -> Option<&str> {
        self.inherited_attributes
            .as_ref()?
            .target_connections
            .first()?
            .connection_spec
            .as_ref()
            .map(|s| s.id.as_str())
            .filter(|s| !s.is_empty())
    }

    /// The flow spec id.
    pub fn flow_spec_id(&self) -> Option<&str> {
        self.flow_spec.as_ref().map(|s| s.id.as_str()).filter(|s| !s.is_empty())
    }

    /// Batch or streaming, read from the flow itself (reference §6.6), in this order: a known
    /// file-based target connection spec → batch; a known streaming one → streaming; a known
    /// file-based flow spec → batch (the profile-based flow spec `71471eba-…` is shared by legacy
    /// batch and streaming cards, so it decides nothing); selectors already carrying export
    /// settings, or the file-based cards' `profileMapping` / `mandatoryFields` /
    /// `primaryFields` params → batch; otherwise streaming.
    pub fn destination_kind(&self) -> DestinationKind {
        let lower = |s: &str| s.to_ascii_lowercase();
        let target = self.target_connection_spec_id().map(lower);
        let known = |list: &[&str], id: &Option<String>| id.as_deref().is_some_and(|id| list.contains(&id));
        if known(BATCH_CONNECTION_SPECS, &target) {
            return DestinationKind::Batch;
        }
        if known(STREAMING_CONNECTION_SPECS, &target) {
            return DestinationKind::Streaming;
        }
        if known(BATCH_FLOW_SPECS, &self.flow_spec_id().map(lower)) {
            return DestinationKind::Batch;
        }
        let file_params = self.transformations.first().is_some_and(|t| {
            ["profileMapping", "mandatoryFields", "primaryFields"]
                .iter()
                .any(|k| t.params.extra.contains_key(*k))
        });
        if file_params || self.selectors().iter().any(|s| s.value.has_export_settings()) {
            return DestinationKind::Batch;
        }
        DestinationKind::Streaming
    }

    /// A file-based (batch) destination flow: see [`Flow::destination_kind`].
    pub fn is_batch(&self) -> bool {
        self.destination_kind() == DestinationKind::Batch
    }

    /// `state == enabled` (case-insensitive).
    pub fn is_enabled(&self) -> bool {
        self.state.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("enabled"))
    }
}

/// `GET /flows` and `GET /flows/{id}`: `{"items": [...], "_links": {"next": {"href"}}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct FlowList {
    /// The flows of this page.
    #[serde(default, deserialize_with = "lenient_vec")]
    pub items: Vec<Flow>,
    /// The next page, when there is one.
    #[serde(
        rename = "_links",
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_opt"
    )]
    pub links: Option<NextLink>,
}

/// `_links` of a Flow Service list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NextLink {
    /// Link to the next page (its query carries `continuationToken`).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_opt")]
    pub next: Option<Link>,
}

/// 200 answer of `PATCH /flows/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PatchFlowResponse {
    /// The flow id.
    #[serde(default)]
    pub id: String,
    /// The flow's new etag (quotes embedded).
    #[serde(default, deserialize_with = "lenient_default")]
    pub etag: String,
}

string_enum! {
    /// JSON-Patch operation of a flow edit (RFC 6902 subset the destinations API documents).
    PatchOp {
        Add => "add",
        Replace => "replace",
        Remove => "remove",
    }
}

/// One JSON-Patch operation of `PATCH /flows/{id}`. The spec requires `value` on every item, a
/// `remove` included (A-DEST `PatchFlowItem`; reference §1.6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowPatchOp {
    /// `add`, `replace` or `remove`.
    pub op: PatchOp,
    /// JSON-Pointer into the flow.
    pub path: String,
    /// The new value (for `remove`, the selector being removed).
    #[serde(default)]
    pub value: Value,
}

impl FlowPatchOp {
    /// Appends `selector` to the selectors (`/selectors/-`).
    pub fn add_selector(selector: &SegmentSelector) -> Self {
        FlowPatchOp {
            op: PatchOp::Add,
            path: format!("{SELECTORS_PATH}/-"),
            value: selector.to_value(),
        }
    }

    /// Replaces the selector at `index` with `selector` (send the complete selector as read,
    /// changed where needed; reference §1.7).
    pub fn replace_selector(index: usize, selector: &SegmentSelector) -> Self {
        FlowPatchOp {
            op: PatchOp::Replace,
            path: format!("{SELECTORS_PATH}/{index}"),
            value: selector.to_value(),
        }
    }

    /// Removes the selector at `index` (from a fresh read; reference §1.6). The value is the
    /// `{"type":"PLATFORM_SEGMENT","value":{"id":…}}` the spec requires, naming the audience removed.
    pub fn remove_selector(index: usize, removed: &SegmentSelector) -> Self {
        let value = match &removed.value.id {
            Some(id) => json!({"type": SELECTOR_TYPE_PLATFORM_SEGMENT, "value": {"id": id}}),
            None => json!({"type": SELECTOR_TYPE_PLATFORM_SEGMENT, "value": {}}),
        };
        FlowPatchOp {
            op: PatchOp::Remove,
            path: format!("{SELECTORS_PATH}/{index}"),
            value,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dataflow runs
// ---------------------------------------------------------------------------------------------

/// Status of a dataflow run: `statusSummary.status`, read case-insensitively (the enum says
/// `Success`, the examples `success`; reference §4 #10).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum FlowRunStatus {
    /// Finished successfully.
    Success,
    /// Running; also any absent value.
    #[default]
    Processing,
    /// Waiting to run.
    Waiting,
    /// Finished with a failure.
    Failed,
    /// A value this client does not know (treated as not finished).
    Other(String),
}

impl FlowRunStatus {
    /// The wire spelling (lowercase, as the examples show).
    pub fn as_str(&self) -> &str {
        match self {
            FlowRunStatus::Success => "success",
            FlowRunStatus::Processing => "processing",
            FlowRunStatus::Waiting => "waiting",
            FlowRunStatus::Failed => "failed",
            FlowRunStatus::Other(s) => s,
        }
    }

    /// `success` or `failed`.
    pub fn is_terminal(&self) -> bool {
        matches!(self, FlowRunStatus::Success | FlowRunStatus::Failed)
    }
}

impl From<&str> for FlowRunStatus {
    fn from(s: &str) -> Self {
        match s.trim().to_ascii_lowercase().as_str() {
            "success" | "succeeded" | "completed" => FlowRunStatus::Success,
            "processing" | "inprogress" | "in_progress" | "running" | "" => FlowRunStatus::Processing,
            "waiting" | "queued" | "scheduled" => FlowRunStatus::Waiting,
            "failed" | "failure" | "error" => FlowRunStatus::Failed,
            _ => FlowRunStatus::Other(s.to_owned()),
        }
    }
}

impl fmt::Display for FlowRunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for FlowRunStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for FlowRunStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Option::<Value>::deserialize(d)? {
            Some(Value::String(s)) => FlowRunStatus::from(s.as_str()),
            Some(Value::Null) | None => FlowRunStatus::Processing,
            Some(other) => FlowRunStatus::Other(other.to_string()),
        })
    }
}

/// `metrics.durationSummary` (epoch ms; `stoppedAtUTC` is the schema's name for the end).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DurationSummary {
    /// Start, epoch ms.
    #[serde(
        rename = "startedAtUTC",
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_i64"
    )]
    pub started_at_utc: Option<i64>,
    /// End, epoch ms; absent while running.
    #[serde(
        rename = "completedAtUTC",
        alias = "stoppedAtUTC",
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_i64"
    )]
    pub completed_at_utc: Option<i64>,
}

/// One entity of a record summary: `segment:<audienceId>` for audience exports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct EntitySummary {
    /// E.g. `segment:<audienceId>`.
    #[serde(default, deserialize_with = "lenient_default")]
    pub id: String,
    /// Records read.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_i64")]
    pub input_record_count: Option<i64>,
    /// Records written.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_i64")]
    pub output_record_count: Option<i64>,
    /// Records skipped.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_i64")]
    pub skipped_record_count: Option<i64>,
}

/// One source or target summary of `metrics.recordSummary`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionSummary {
    /// Connection id.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub id: Option<String>,
    /// Records read.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_i64")]
    pub input_record_count: Option<i64>,
    /// Records written.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_i64")]
    pub output_record_count: Option<i64>,
    /// Records skipped.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_i64")]
    pub skipped_record_count: Option<i64>,
    /// Per entity (audience).
    #[serde(default, deserialize_with = "lenient_vec")]
    pub entity_summaries: Vec<EntitySummary>,
}

/// `metrics.recordSummary`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct RecordSummary {
    /// Records read.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_i64")]
    pub input_record_count: Option<i64>,
    /// Records written.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_i64")]
    pub output_record_count: Option<i64>,
    /// Records skipped.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_i64")]
    pub skipped_record_count: Option<i64>,
    /// Per source connection.
    #[serde(default, deserialize_with = "lenient_vec")]
    pub source_summaries: Vec<ConnectionSummary>,
    /// Per target connection, with `entitySummaries[].id == "segment:<audienceId>"`.
    #[serde(default, deserialize_with = "lenient_vec")]
    pub target_summaries: Vec<ConnectionSummary>,
}

/// One error of `metrics.statusSummary.errors`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct FlowRunError {
    /// Error code.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub code: Option<String>,
    /// Error text.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub message: Option<String>,
}

/// `metrics.statusSummary`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StatusSummary {
    /// How the run stands.
    #[serde(default)]
    pub status: FlowRunStatus,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "lenient_vec")]
    pub errors: Vec<FlowRunError>,
}

/// `metrics` of a dataflow run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct FlowRunMetrics {
    /// Start and end.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_opt")]
    pub duration_summary: Option<DurationSummary>,
    /// Record counts and the audiences exported.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_opt")]
    pub record_summary: Option<RecordSummary>,
    /// Status and errors.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_opt")]
    pub status_summary: Option<StatusSummary>,
}

/// A dataflow run (`GET /runs`, `GET /runs/{id}`; reference §1.12): one export of one audience.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct FlowRun {
    /// Run id.
    #[serde(default)]
    pub id: String,
    /// The flow it belongs to.
    #[serde(default, deserialize_with = "lenient_default")]
    pub flow_id: String,
    /// Epoch ms.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_i64")]
    pub created_at: Option<i64>,
    /// Epoch ms.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_i64")]
    pub updated_at: Option<i64>,
    /// Durations, records, status.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_opt")]
    pub metrics: Option<FlowRunMetrics>,
}

/// The `entitySummaries` id of an audience in a run: `segment:<audienceId>`.
pub fn segment_entity_id(audience_id: &str) -> String {
    format!("segment:{audience_id}")
}

impl FlowRun {
    /// `metrics.statusSummary.status`, [`FlowRunStatus::Processing`] when absent.
    pub fn status(&self) -> FlowRunStatus {
        self.metrics
            .as_ref()
            .and_then(|m| m.status_summary.as_ref())
            .map(|s| s.status.clone())
            .unwrap_or_default()
    }

    /// The audience ids the run's record summaries name (`segment:<id>` entities of the target
    /// and source summaries), without duplicates, in order.
    pub fn audience_ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = Vec::new();
        let Some(summary) = self.metrics.as_ref().and_then(|m| m.record_summary.as_ref()) else {
            return ids;
        };
        for entity in summary
            .target_summaries
            .iter()
            .chain(&summary.source_summaries)
            .flat_map(|s| &s.entity_summaries)
        {
            if let Some(id) = entity.id.strip_prefix("segment:")
                && !ids.contains(&id)
            {
                ids.push(id);
            }
        }
        ids
    }

    /// Whether the run exports `audience_id` (its record summaries name `segment:<audience_id>`).
    pub fn concerns(&self, audience_id: &str) -> bool {
        !audience_id.is_empty() && self.audience_ids().contains(&audience_id)
    }

    /// `metrics.durationSummary.startedAtUTC`, epoch ms.
    pub fn started_at(&self) -> Option<i64> {
        self.metrics.as_ref()?.duration_summary.as_ref()?.started_at_utc
    }

    /// `metrics.durationSummary.completedAtUTC`, epoch ms.
    pub fn completed_at(&self) -> Option<i64> {
        self.metrics.as_ref()?.duration_summary.as_ref()?.completed_at_utc
    }

    /// The errors of a failed run.
    pub fn errors(&self) -> &[FlowRunError] {
        self.metrics
            .as_ref()
            .and_then(|m| m.status_summary.as_ref())
            .map(|s| s.errors.as_slice())
            .unwrap_or(&[])
    }
}

/// `GET /runs`: `{"items": [...], "_links": {"next": {"href"}}}`; `GET /runs/{id}` the same with
/// one item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct FlowRunList {
    /// The runs of this page, newest first.
    #[serde(default, deserialize_with = "lenient_vec")]
    pub items: Vec<FlowRun>,
    /// The next page, when there is one.
    #[serde(
        rename = "_links",
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_opt"
    )]
    pub links: Option<NextLink>,
}

// ---------------------------------------------------------------------------------------------
// Ad hoc activation
// ---------------------------------------------------------------------------------------------

/// Body of `POST /data/core/activation/disflowprovider/adhocrun` (v2; reference §1.14).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct AdhocRequest {
    /// Destination instance (= dataflow) id → audience ids (system ids).
    #[serde(default)]
    pub activation_info: BTreeMap<String, Vec<String>>,
}

/// One entry of the ad hoc answer: an export started for one audience on one flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AdhocOrder {
    /// The audience id.
    #[serde(default, deserialize_with = "lenient_default")]
    pub segment: String,
    /// The destination instance (dataflow) id.
    #[serde(default, deserialize_with = "lenient_default")]
    pub order: String,
    /// `…/data/foundation/flowservice/runs/<runId>`.
    #[serde(rename = "statusURL", default, deserialize_with = "lenient_default")]
    pub status_url: String,
}

impl AdhocOrder {
    /// The run id: the last path segment of `statusURL`.
    pub fn run_id(&self) -> Option<&str> {
        let path = self.status_url.split(['?', '#']).next().unwrap_or("");
        path.trim_end_matches('/').rsplit('/').next().filter(|s| !s.is_empty())
    }
}

/// 200 answer of the ad hoc activation API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AdhocResponse {
    /// One entry per (flow, audience).
    #[serde(default, deserialize_with = "lenient_vec")]
    pub order: Vec<AdhocOrder>,
}

// ---------------------------------------------------------------------------------------------
// Segmentation jobs and schedules
// ---------------------------------------------------------------------------------------------

/// Status of a segment job (reference §2.3).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum SegmentJobStatus {
    /// Created.
    #[default]
    New,
    /// Waiting.
    Queued,
    /// Running.
    Processing,
    /// Finished successfully.
    Succeeded,
    /// Finished with a failure.
    Failed,
    /// Being cancelled.
    Cancelling,
    /// Cancelled.
    Cancelled,
    /// A value this client does not know.
    Other(String),
}

impl SegmentJobStatus {
    /// Every documented value, in documentation order.
    pub const DOCUMENTED: [&'static str; 7] = [
        "NEW",
        "QUEUED",
        "PROCESSING",
        "SUCCEEDED",
        "FAILED",
        "CANCELLING",
        "CANCELLED",
    ];

    /// The wire spelling.
    pub fn as_str(&self) -> &str {
        match self {
            SegmentJobStatus::New => "NEW",
            SegmentJobStatus::Queued => "QUEUED",
            SegmentJobStatus::Processing => "PROCESSING",
            SegmentJobStatus::Succeeded => "SUCCEEDED",
            SegmentJobStatus::Failed => "FAILED",
            SegmentJobStatus::Cancelling => "CANCELLING",
            SegmentJobStatus::Cancelled => "CANCELLED",
            SegmentJobStatus::Other(s) => s,
        }
    }

    /// `SUCCEEDED`, `FAILED` or `CANCELLED`.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            SegmentJobStatus::Succeeded | SegmentJobStatus::Failed | SegmentJobStatus::Cancelled
        )
    }
}

impl From<&str> for SegmentJobStatus {
    fn from(s: &str) -> Self {
        match s.trim().to_ascii_uppercase().as_str() {
            "NEW" => SegmentJobStatus::New,
            "QUEUED" => SegmentJobStatus::Queued,
            "PROCESSING" => SegmentJobStatus::Processing,
            "SUCCEEDED" | "SUCCESS" => SegmentJobStatus::Succeeded,
            "FAILED" => SegmentJobStatus::Failed,
            "CANCELLING" => SegmentJobStatus::Cancelling,
            "CANCELLED" => SegmentJobStatus::Cancelled,
            _ => SegmentJobStatus::Other(s.to_owned()),
        }
    }
}

impl fmt::Display for SegmentJobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for SegmentJobStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for SegmentJobStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Option::<Value>::deserialize(d)? {
            Some(Value::String(s)) => SegmentJobStatus::from(s.as_str()),
            Some(Value::Null) | None => SegmentJobStatus::New,
            Some(other) => SegmentJobStatus::Other(other.to_string()),
        })
    }
}

/// `properties` of a scheduler job: links it to its schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct SegmentJobProperties {
    /// The schedule (`/config/schedules`) that started the job.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub schedule_id: Option<String>,
    /// The schedule's run.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub run_id: Option<String>,
}

/// Source of the daily scheduled segmentation jobs.
pub const SEGMENT_JOB_SOURCE_SCHEDULER: &str = "scheduler";

/// A segment (segmentation) job (`GET /data/core/ups/segment/jobs`; reference §2.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct SegmentJob {
    /// Job id.
    #[serde(default)]
    pub id: String,
    /// Owning org.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub ims_org_id: Option<String>,
    /// `NEW` … `SUCCEEDED`.
    #[serde(default)]
    pub status: SegmentJobStatus,
    /// `scheduler` for the daily job, `api` for on-demand jobs.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub source: Option<String>,
    /// Created, epoch ms.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_i64")]
    pub creation_time: Option<i64>,
    /// Last update, epoch ms.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_i64")]
    pub update_time: Option<i64>,
    /// Last update, epoch seconds.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_i64")]
    pub update_epoch: Option<i64>,
    /// Schedule and schedule-run ids (scheduler jobs).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_opt")]
    pub properties: Option<SegmentJobProperties>,
    /// The audiences evaluated (`[{"segmentId":"*"}]` past 1,500), as read.
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "lenient_vec")]
    pub segments: Vec<Value>,
    /// Timing and counters, as read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Value>,
}

impl SegmentJob {
    /// The daily scheduled job (`source == "scheduler"`).
    pub fn is_scheduled(&self) -> bool {
        self.source
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case(SEGMENT_JOB_SOURCE_SCHEDULER))
    }
}

/// A `/data/core/ups` list: `{"_page": {...}, "children": [...], "_links": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(deserialize = "T: serde::de::DeserializeOwned"))]
pub struct UpsList<T> {
    /// The entries of this page.
    #[serde(default = "Vec::new", deserialize_with = "lenient_vec")]
    pub children: Vec<T>,
    /// Paging summary, as read.
    #[serde(rename = "_page", default, skip_serializing_if = "Option::is_none")]
    pub page: Option<Value>,
    /// Links, as read.
    #[serde(rename = "_links", default, skip_serializing_if = "Option::is_none")]
    pub links: Option<Value>,
}

impl<T> Default for UpsList<T> {
    fn default() -> Self {
        UpsList {
            children: Vec::new(),
            page: None,
            links: None,
        }
    }
}

/// Type of the daily batch segmentation schedule.
pub const SCHEDULE_TYPE_BATCH_SEGMENTATION: &str = "batch_segmentation";

/// A segmentation schedule (`GET /data/core/ups/config/schedules`; reference §2.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct SegmentSchedule {
    /// Schedule id.
    #[serde(default)]
    pub id: String,
    /// Display name.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub name: Option<String>,
    /// `active` or `inactive`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub state: Option<String>,
    /// `batch_segmentation` or `export`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub r#type: Option<String>,
    /// Cron with 6–7 fields (sec min hour dom month dow [year]), e.g. `0 0 1 * * ?`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub schedule: Option<String>,
    /// E.g. `{"segments":["*"]}`, as read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<Value>,
    /// Created, epoch seconds.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_i64")]
    pub create_epoch: Option<i64>,
    /// Updated, epoch seconds.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_i64")]
    pub update_epoch: Option<i64>,
}

impl SegmentSchedule {
    /// The daily batch segmentation schedule (`type == batch_segmentation`).
    pub fn is_batch_segmentation(&self) -> bool {
        self.r#type
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case(SCHEDULE_TYPE_BATCH_SEGMENTATION))
    }

    /// `state == active`.
    pub fn is_active(&self) -> bool {
        self.state.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("active"))
    }

    /// The UTC `(hour, minute)` of a daily cron (`sec min hour * * ?`), when it is one.
    pub fn daily_time_utc(&self) -> Option<(u32, u32)> {
        let fields: Vec<&str> = self.schedule.as_deref()?.split_whitespace().collect();
        if !(6..=7).contains(&fields.len()) {
            return None;
        }
        let minute: u32 = fields[1].parse().ok().filter(|m| *m < 60)?;
        let hour: u32 = fields[2].parse().ok().filter(|h| *h < 24)?;
        let any = |f: &str| matches!(f, "*" | "?");
        (any(fields[3]) && any(fields[4]) && any(fields[5])).then_some((hour, minute))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow_json() -> Value {
        json!({"items": [{
            "id": "f1", "name": "S3 daily", "flowSpec": {"id": FLOW_SPEC_S3, "version": "1.0"},
            "state": "enabled", "etag": "\"8b0351ca-0000-0200-0000-61c4d6700000\"",
            "version": "\"8b0351ca-0000-0200-0000-61c4d6700000\"",
            "inheritedAttributes": {"properties": {"isDestinationFlow": true},
                "sourceConnections": [{"id": "s", "connectionSpec": {"id": CONNECTION_SPEC_PROFILE_STORE}}],
                "targetConnections": [{"id": "t", "connectionSpec": {"id": CONNECTION_SPEC_S3, "version": "1.0"}}]},
            "transformations": [{"name": "GeneralTransform", "params": {
                "segmentSelectors": {"selectors": [
                    {"type": "PLATFORM_SEGMENT", "value": {"id": "a1", "name": "One",
                        "exportMode": "DAILY_FULL_EXPORT",
                        "schedule": {"frequency": "DAILY", "triggerType": "AFTER_SEGMENT_EVAL",
                            "startDate": "2025-01-01", "interval": 1},
                        "enrichmentInfo": {"enabled": false}, "createTime": "1750000000"}},
                    42,
                    {"type": "PLATFORM_SEGMENT", "value": {"id": "ext9001",
                        "systemSegmentId": "979558ae", "namespace": "aamSegments"}}
                ]},
                "profileMapping": {"mappingId": "m", "mappingVersion": 0}}}],
            "createdAt": 1750000000000_i64, "updatedAt": "1750000001000", "futureKey": {"x": 1}
        }]})
    }

    #[test]
    fn a_flow_parses_leniently_and_keeps_selector_indices() {
        let list: FlowList = serde_json::from_value(flow_json()).unwrap();
        let flow = &list.items[0];
        assert_eq!(flow.etag, "\"8b0351ca-0000-0200-0000-61c4d6700000\"");
        assert_eq!(flow.updated_at, Some(1_750_000_001_000));
        assert_eq!(flow.selectors().len(), 3, "an unreadable entry keeps its slot");
        assert_eq!(flow.selectors()[1], SegmentSelector::default());
        assert_eq!(flow.position_of("a1"), Some(0));
        assert_eq!(flow.position_of("ext9001"), Some(2));
        assert_eq!(flow.position_of("979558ae"), Some(2), "systemSegmentId counts");
        assert_eq!(flow.position_of(""), None);
        assert_eq!(flow.position_of("missing"), None);
        assert!(flow.is_destination_flow() && flow.is_enabled());
        assert_eq!(flow.target_connection_spec_id(), Some(CONNECTION_SPEC_S3));
    }

    #[test]
    fn a_replace_sends_the_whole_selector_back_unknown_keys_included() {
        let list: FlowList = serde_json::from_value(flow_json()).unwrap();
        let mut selector = list.items[0].selectors()[0].clone();
        selector.value.schedule.as_mut().unwrap().frequency = Some("ONCE".into());
        let op = FlowPatchOp::replace_selector(0, &selector);
        assert_eq!(
            serde_json::to_value(&op).unwrap(),
            json!({"op": "replace", "path": "/transformations/0/params/segmentSelectors/selectors/0",
                "value": {"type": "PLATFORM_SEGMENT", "value": {"id": "a1", "name": "One",
                    "exportMode": "DAILY_FULL_EXPORT",
                    "schedule": {"frequency": "ONCE", "triggerType": "AFTER_SEGMENT_EVAL",
                        "startDate": "2025-01-01", "interval": 1},
                    "enrichmentInfo": {"enabled": false}, "createTime": "1750000000"}}})
        );
    }

    #[test]
    fn add_and_remove_ops_have_the_documented_shape() {
        let add = FlowPatchOp::add_selector(&SegmentSelector::platform_segment(SelectorValue::for_audience("a")));
        assert_eq!(
            serde_json::to_value(&add).unwrap(),
            json!({"op": "add", "path": "/transformations/0/params/segmentSelectors/selectors/-",
                "value": {"type": "PLATFORM_SEGMENT", "value": {"id": "a"}}})
        );
        let removed = SegmentSelector::platform_segment(SelectorValue::for_audience("a"));
        let remove = FlowPatchOp::remove_selector(3, &removed);
        assert_eq!(
            serde_json::to_value(&remove).unwrap(),
            json!({"op": "remove", "path": "/transformations/0/params/segmentSelectors/selectors/3",
                "value": {"type": "PLATFORM_SEGMENT", "value": {"id": "a"}}})
        );
        let parsed: FlowPatchOp = serde_json::from_value(json!({"op": "ADD", "path": "/x", "value": 1})).unwrap();
        assert_eq!(parsed.op, PatchOp::Add);
    }

    #[test]
    fn destination_kind_is_read_from_the_flow() {
        let with = |spec: Option<&str>, target: Option<&str>| Flow {
            flow_spec: spec.map(|id| SpecRef {
                id: id.into(),
                version: None,
            }),
            inherited_attributes: target.map(|id| InheritedAttributes {
                target_connections: vec![ConnectionRef {
                    id: "t".into(),
                    connection_spec: Some(SpecRef {
                        id: id.into(),
                        version: None,
                    }),
                }],
                ..InheritedAttributes::default()
            }),
            ..Flow::default()
        };
        let cases = [
            (Some(FLOW_SPEC_S3), Some(CONNECTION_SPEC_S3), DestinationKind::Batch),
            (
                Some(FLOW_SPEC_PROFILE_STREAMING),
                Some(CONNECTION_SPEC_KINESIS),
                DestinationKind::Streaming,
            ),
            // Legacy batch cards share the profile flow spec: the target decides.
            (
                Some(FLOW_SPEC_PROFILE_STREAMING),
                Some("0b23e41a-cb4a-4321-a78f-3b654f5d7d97"),
                DestinationKind::Batch,
            ),
            (
                Some("1A0514A6-33D4-4C7F-AFF8-594799C47549"),
                None,
                DestinationKind::Batch,
            ),
            (
                Some(FLOW_SPEC_PROFILE_STREAMING),
                Some("unknown"),
                DestinationKind::Streaming,
            ),
            (None, None, DestinationKind::Streaming),
        ];
        for (spec, target, want) in cases {
            assert_eq!(with(spec, target).destination_kind(), want, "{spec:?} {target:?}");
        }
        let list: FlowList = serde_json::from_value(flow_json()).unwrap();
        assert!(list.items[0].is_batch());
        // An unknown destination whose selectors carry export settings is file-based.
        let mut unknown = with(Some("custom"), Some("custom"));
        unknown.transformations = list.items[0].transformations.clone();
        assert!(unknown.is_batch());
    }

    #[test]
    fn runs_know_their_audiences_and_read_status_case_insensitively() {
        let run: FlowRun = serde_json::from_value(json!({
            "id": "r", "flowId": "f", "createdAt": "1750000000000",
            "metrics": {
                "durationSummary": {"startedAtUTC": 1, "stoppedAtUTC": 2},
                "recordSummary": {"inputRecordCount": 10, "outputRecordCount": 9,
                    "sourceSummaries": [{"id": "s", "entitySummaries": [{"id": "segment:b"}]}],
                    "targetSummaries": [{"id": "t", "entitySummaries": [{"id": "segment:a"}, {"id": "segment:a"}, 7]}]},
                "statusSummary": {"status": "Success", "errors": []}
            }
        }))
        .unwrap();
        assert_eq!(run.status(), FlowRunStatus::Success);
        assert_eq!(run.audience_ids(), vec!["a", "b"]);
        assert!(run.concerns("a") && run.concerns("b") && !run.concerns("c") && !run.concerns(""));
        assert_eq!((run.started_at(), run.completed_at()), (Some(1), Some(2)));
        for (raw, want) in [
            ("success", FlowRunStatus::Success),
            ("SUCCESS", FlowRunStatus::Success),
            ("Processing", FlowRunStatus::Processing),
            ("waiting", FlowRunStatus::Waiting),
            ("FAILED", FlowRunStatus::Failed),
            ("paused", FlowRunStatus::Other("paused".into())),
        ] {
            assert_eq!(FlowRunStatus::from(raw), want, "{raw}");
        }
        assert_eq!(FlowRun::default().status(), FlowRunStatus::Processing);
    }

    #[test]
    fn adhoc_orders_name_their_run() {
        let answer: AdhocResponse = serde_json::from_value(json!({"order": [{"segment": "a", "order": "f",
            "statusURL": "https://platform.adobe.io/data/foundation/flowservice/runs/r-1"}]}))
        .unwrap();
        assert_eq!(answer.order[0].run_id(), Some("r-1"));
        assert_eq!(AdhocOrder::default().run_id(), None);
        let body = AdhocRequest {
            activation_info: BTreeMap::from([("f".to_owned(), vec!["a".to_owned()])]),
        };
        assert_eq!(
            serde_json::to_value(body).unwrap(),
            json!({"activationInfo": {"f": ["a"]}})
        );
    }

    #[test]
    fn jobs_and_schedules_parse_the_documented_samples() {
        let jobs: UpsList<SegmentJob> = serde_json::from_value(json!({
            "_page": {"totalCount": 1, "pageSize": 1},
            "children": [{"id": "j", "status": "SUCCEEDED", "source": "scheduler",
                "creationTime": 1750000000000_i64, "updateEpoch": 1750000100,
                "properties": {"scheduleId": "s", "runId": "r"}, "segments": [{"segmentId": "*"}]}],
            "_links": {"next": {}}
        }))
        .unwrap();
        let job = &jobs.children[0];
        assert_eq!(job.status, SegmentJobStatus::Succeeded);
        assert!(job.is_scheduled() && job.status.is_terminal());
        assert_eq!(job.properties.as_ref().unwrap().schedule_id.as_deref(), Some("s"));
        let schedule: SegmentSchedule = serde_json::from_value(json!({"id": "s", "type": "batch_segmentation",
            "state": "active", "schedule": "0 0 1 * * ?"}))
        .unwrap();
        assert!(schedule.is_batch_segmentation() && schedule.is_active());
        assert_eq!(schedule.daily_time_utc(), Some((1, 0)));
        let weekly = SegmentSchedule {
            schedule: Some("0 30 2 ? * MON".into()),
            ..SegmentSchedule::default()
        };
        assert_eq!(weekly.daily_time_utc(), None);
    }
}
