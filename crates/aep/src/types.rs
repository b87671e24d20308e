//! Wire types of the AEP external-audience API, the `/ups/audiences` records, IMS and the
//! error bodies, exactly as they travel as JSON (camelCase).
//!
//! The client serialises requests and parses responses with these; the emulator parses the
//! same requests and produces the same responses, so the two cannot drift. Parsing is lenient
//! (reference §7.1.7): unknown keys are ignored, `ttlInDays` and epoch timestamps may be numbers
//! or numeric strings, `sourceSpec` may be flat or wrapped in `params`, older key spellings are
//! accepted. This module holds data only: no I/O, no validation policy.

use std::fmt;
use std::str::FromStr;

use serde::de::{DeserializeOwned, Deserializer};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `originName` of every external audience.
pub const ORIGIN_CUSTOM_UPLOAD: &str = "CUSTOM_UPLOAD";
/// The only supported `audienceType`.
pub const AUDIENCE_TYPE_PEOPLE: &str = "people";
/// Namespace used when a create request names none.
pub const DEFAULT_NAMESPACE: &str = "CustomerAudienceUpload";
/// The only supported `sourceSpec.params.sourceType`.
pub const SOURCE_TYPE_CLOUD_STORAGE: &str = "Cloud Storage";
/// `type` of external audience records in `/ups/audiences`.
pub const UPS_TYPE_EXTERNAL_SEGMENT: &str = "ExternalSegment";
/// `entityType` of people audiences (external audiences are people audiences) in `/ups/audiences`.
pub const ENTITY_TYPE_PROFILE: &str = "_xdm.context.profile";
/// Accepted `sourceSpec.params.cloudType` values.
pub const CLOUD_TYPES: [&str; 5] = ["S3", "DLZ", "GCS", "Azure", "SFTP"];
/// Cloud types that need a `baseConnectionId`.
pub const CLOUD_TYPES_NEEDING_CONNECTION: [&str; 3] = ["S3", "GCS", "SFTP"];
/// Default and bounds of `ttlInDays`.
pub const TTL_DEFAULT_DAYS: u32 = 30;
/// Smallest accepted `ttlInDays`.
pub const TTL_MIN_DAYS: u32 = 1;
/// Largest accepted `ttlInDays`.
pub const TTL_MAX_DAYS: u32 = 90;
/// Bounds of the `fields` array (reference §3 rule 3).
pub const MAX_FIELDS: usize = 41;

// ---------------------------------------------------------------------------------------------
// Lenient scalar helpers
// ---------------------------------------------------------------------------------------------

/// Reads an integer from a JSON number or an integer-valued string (`40`, `"40"`, `40.0`).
pub fn integer_from_value(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    }
}

pub(crate) fn lenient_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let value = Option::<Value>::deserialize(d)?;
    Ok(value.as_ref().and_then(integer_from_value))
}

pub(crate) fn lenient_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let value = Option::<Value>::deserialize(d)?;
    Ok(value
        .as_ref()
        .and_then(integer_from_value)
        .and_then(|n| u32::try_from(n).ok()))
}

pub(crate) fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Parses the value as `T`, or yields `None` when it is absent or has an unexpected shape.
pub(crate) fn lenient_opt<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    let value = Option::<Value>::deserialize(d)?;
    Ok(value.and_then(|v| serde_json::from_value(v).ok()))
}

/// Parses a list leniently: entries with an unexpected shape are skipped.
pub(crate) fn lenient_vec<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    let value = Option::<Value>::deserialize(d)?;
    Ok(match value {
        Some(Value::Array(items)) => items
            .into_iter()
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect(),
        _ => Vec::new(),
    })
}

pub(crate) fn lenient_strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    lenient_vec(d)
}

macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        $name:ident { $($variant:ident => $wire:literal),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every value, in documentation order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The canonical wire spelling.
            pub fn as_str(&self) -> &'static str {
                match self { $($name::$variant => $wire),+ }
            }
        }

        impl FromStr for $name {
            type Err = String;
            /// Case-insensitive, as the emulator accepts (reference §7.2.5).
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $(if s.eq_ignore_ascii_case($wire) { return Ok($name::$variant); })+
                Err(s.to_owned())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(|bad| {
                    serde::de::Error::custom(format!(
                        "unknown {} {bad:?}", stringify!($name)
                    ))
                })
            }
        }
    };
}

pub(crate) use string_enum;

string_enum! {
    /// Column type of an audience field.
    FieldType {
        String => "string",
        Number => "number",
        Long => "long",
        Integer => "integer",
        Date => "date",
        Datetime => "datetime",
        Boolean => "boolean",
    }
}

string_enum! {
    /// Whether `sourceSpec.params.path` names a file or a folder.
    SourcePathType {
        File => "file",
        Folder => "folder",
    }
}

/// Comma-separated list of the canonical spellings of a string enum, for error messages.
pub fn one_of<T: Copy + fmt::Display>(all: &[T]) -> String {
    all.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

macro_rules! status_enum {
    (
        $(#[$meta:meta])*
        $name:ident
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
        pub enum $name {
            /// Still running; also any absent value.
            #[default]
            Processing,
            /// Finished successfully.
            Success,
            /// Finished with a failure.
            Failed,
            /// A value this client does not know; treated as still running (§7.1.6).
            Other(String),
        }

        impl $name {
            /// The wire spelling.
            pub fn as_str(&self) -> &str {
                match self {
                    $name::Processing => "PROCESSING",
                    $name::Success => "SUCCESS",
                    $name::Failed => "FAILED",
                    $name::Other(s) => s,
                }
            }

            /// `SUCCESS` or `FAILED`.
            pub fn is_terminal(&self) -> bool {
                matches!(self, $name::Success | $name::Failed)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                match s.trim().to_ascii_uppercase().as_str() {
                    "PROCESSING" | "IN_PROGRESS" | "RUNNING" | "QUEUED" | "" => $name::Processing,
                    "SUCCESS" | "SUCCEEDED" | "COMPLETED" => $name::Success,
                    "FAILED" | "FAILURE" | "ERROR" => $name::Failed,
                    _ => $name::Other(s.to_owned()),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let value = Option::<Value>::deserialize(d)?;
                Ok(match value {
                    Some(Value::String(s)) => $name::from(s.as_str()),
                    Some(Value::Null) | None => $name::Processing,
                    Some(other) => $name::Other(other.to_string()),
                })
            }
        }
    };
}

status_enum! {
    /// Status of a create operation (`GET …/operations/{id}`).
    OperationStatus
}

status_enum! {
    /// Status of an ingestion run or of one of its stages.
    RunStatus
}

// ---------------------------------------------------------------------------------------------
// Create
// ---------------------------------------------------------------------------------------------

/// Body of `POST /external-audience/` (reference §2.1). Also the `operationDetails` echo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct CreateAudienceRequest {
    /// Display name; unique per sandbox.
    #[serde(default)]
    pub name: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Columns of the source file; at least one carries `identityNs`.
    #[serde(default, deserialize_with = "lenient_vec")]
    pub fields: Vec<Field>,
    /// Where the data lives.
    #[serde(default)]
    pub source_spec: SourceSpec,
    /// Data expiration in days (1..90, default 30); accepted as number or numeric string.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_u32")]
    pub ttl_in_days: Option<u32>,
    /// Audience-level labels such as `core/C1`.
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "lenient_strings")]
    pub labels: Vec<String>,
    /// Only `people`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience_type: Option<String>,
    /// Always `CUSTOM_UPLOAD`.
    #[serde(default)]
    pub origin_name: String,
    /// Defaults to `CustomerAudienceUpload`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Tag IDs.
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "lenient_strings")]
    pub tags: Vec<String>,
    /// Caller-chosen identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_audience_id: Option<String>,
}

/// One column of an external audience.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Field {
    /// Column name in the source file.
    pub name: String,
    /// Column type.
    pub r#type: FieldType,
    /// Identity namespace code for identity columns (`Email`, `ECID`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_ns: Option<String>,
    /// Field-level labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "lenient_strings")]
    pub labels: Vec<String>,
}

/// `sourceSpec`; always serialised wrapped in `params`, parsed flat or wrapped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct SourceSpec {
    /// The source parameters.
    pub params: SourceParams,
}

impl<'de> Deserialize<'de> for SourceSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut value = Value::deserialize(d)?;
        let inner = match value.get_mut("params") {
            Some(params) if params.is_object() => params.take(),
            _ => value,
        };
        let params = serde_json::from_value(inner).map_err(serde::de::Error::custom)?;
        Ok(SourceSpec { params })
    }
}

/// `sourceSpec.params` (reference §2.1, newest shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceParams {
    /// File or folder path; must not contain whitespace.
    pub path: String,
    /// `file` or `folder`.
    pub r#type: SourcePathType,
    /// Only `Cloud Storage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_type: Option<String>,
    /// `S3`, `DLZ`, `GCS`, `Azure` or `SFTP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_type: Option<String>,
    /// Flow Service base connection; required for S3, GCS and SFTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_connection_id: Option<String>,
    /// Keys for encrypted source files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
}

impl Default for SourceParams {
    fn default() -> Self {
        SourceParams {
            path: String::new(),
            r#type: SourcePathType::File,
            source_type: None,
            cloud_type: None,
            base_connection_id: None,
            encryption: None,
        }
    }
}

/// `sourceSpec.params.encryption`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Encryption {
    /// Public key used to encrypt the files.
    pub public_key_id: String,
    /// Key to verify signatures (the docs also spell it `signVerificationId`).
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "signVerificationId")]
    pub sign_verification_key_id: Option<String>,
}

/// 202 response of create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateAudienceResponse {
    /// Poll it with `GET …/operations/{id}`.
    pub operation_id: String,
    /// Normalised echo of the definition.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_opt")]
    pub operation_details: Option<CreateAudienceRequest>,
}

/// `GET /external-audience/operations/{id}` (reference §2.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// The operation ID.
    pub operation_id: String,
    /// `PROCESSING`, `SUCCESS`, `FAILED`; anything else counts as pending.
    #[serde(default)]
    pub status: OperationStatus,
    /// Set once `status` is `SUCCESS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience_id: Option<String>,
    /// Name of the audience.
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "name")]
    pub audience_name: Option<String>,
    /// Echo of the definition.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_opt")]
    pub operation_details: Option<CreateAudienceRequest>,
    /// Why a `FAILED` operation failed, when the service says.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "failureReason",
        alias = "errorMessage"
    )]
    pub message: Option<String>,
    /// Who created it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// Epoch seconds.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_i64")]
    pub created_at: Option<i64>,
    /// Who last updated it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<String>,
    /// Epoch seconds.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_i64")]
    pub updated_at: Option<i64>,
}

// ---------------------------------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------------------------------

/// Body of `POST /external-audience/{id}/runs` (reference §2.7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartRunRequest {
    /// Epoch seconds; files newer than this are ingested.
    pub data_filter_start_time: i64,
    /// Epoch seconds; files older than this are ingested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_filter_end_time: Option<i64>,
    /// Delta (true, default) or full ingestion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub differential_ingestion: Option<bool>,
}

/// An ingestion run (reference §2.7, §2.8); parsed leniently per §7.1.7.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    /// Run ID.
    pub run_id: String,
    /// Audience the run belongs to.
    #[serde(default)]
    pub audience_id: String,
    /// Audience name (`audienceName`, older `name`).
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "name")]
    pub audience_name: Option<String>,
    /// Absent means still running.
    #[serde(default)]
    pub status: RunStatus,
    /// One entry per stage.
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "lenient_vec")]
    pub details: Vec<RunStage>,
    /// Delta or full ingestion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub differential_ingestion: Option<bool>,
    /// Epoch seconds.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_i64")]
    pub data_filter_start_time: Option<i64>,
    /// Epoch seconds.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_i64")]
    pub data_filter_end_time: Option<i64>,
    /// Epoch seconds (`createdAt`, older `ingestionTime`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "ingestionTime",
        deserialize_with = "lenient_i64"
    )]
    pub created_at: Option<i64>,
    /// Who started the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// Why a `FAILED` run failed, when the service says.
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "errorMessage")]
    pub message: Option<String>,
}

/// One stage of a run (`DATASET_INGEST`, `PROFILE_STORE_INGEST`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunStage {
    /// Stage name.
    #[serde(default)]
    pub stage: String,
    /// Stage status.
    #[serde(default)]
    pub status: RunStatus,
    /// Flow Service run ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_run_id: Option<String>,
    /// Failure message of the stage, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `GET /external-audience/{id}/runs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct RunList {
    /// The runs, newest first.
    #[serde(default, deserialize_with = "lenient_vec")]
    pub runs: Vec<Run>,
    /// Paging information, when given.
    #[serde(rename = "_page", default, skip_serializing_if = "Option::is_none")]
    pub page: Option<Value>,
}

// ---------------------------------------------------------------------------------------------
// Patch / audience records
// ---------------------------------------------------------------------------------------------

/// Body of `PATCH /external-audience/{id}` (reference §2.5): replace semantics per property.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct PatchAudienceRequest {
    /// Replaces the description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Replaces the audience-level labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// Replaces the labels of the named fields only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<FieldLabels>>,
    /// Replaces the data expiration.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_u32")]
    pub ttl_in_days: Option<u32>,
}

impl PatchAudienceRequest {
    /// True when nothing would be sent.
    pub fn is_empty(&self) -> bool {
        self.description.is_none() && self.labels.is_none() && self.fields.is_none() && self.ttl_in_days.is_none()
    }
}

/// Labels of one field in a PATCH.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldLabels {
    /// Field name.
    pub name: String,
    /// New labels (replaces the old ones; empty clears them).
    #[serde(default, deserialize_with = "null_as_default")]
    pub labels: Vec<String>,
}

/// The external audience as returned by PATCH (reference §2.5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ExternalAudience {
    /// Audience ID.
    #[serde(default)]
    pub audience_id: String,
    /// Name (`audienceName`, older `name`).
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "name")]
    pub audience_name: Option<String>,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Fields with their labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "lenient_vec")]
    pub fields: Vec<Field>,
    /// Source (flat or `params`).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_opt")]
    pub source_spec: Option<SourceSpec>,
    /// Data expiration in days.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_u32")]
    pub ttl_in_days: Option<u32>,
    /// Audience-level labels.
    #[serde(default, deserialize_with = "lenient_strings")]
    pub labels: Vec<String>,
    /// `people`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience_type: Option<String>,
    /// `CUSTOM_UPLOAD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_name: Option<String>,
    /// Audience namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The caller-chosen identifier given at create, when the service keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_audience_id: Option<String>,
    /// Creator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// Epoch seconds.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_i64")]
    pub created_at: Option<i64>,
    /// Last updater.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<String>,
    /// Epoch seconds.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_i64")]
    pub updated_at: Option<i64>,
}

/// Response of `POST /external-audience/extend-ttl/{id}` (reference §2.10).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtendTtlResponse {
    /// Audience ID.
    pub audience_id: String,
    /// Audience name.
    #[serde(default)]
    pub name: String,
}

/// Sandbox object of a `/ups/audiences` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct UpsSandbox {
    /// Sandbox ID.
    #[serde(default)]
    pub sandbox_id: String,
    /// Sandbox name.
    #[serde(default)]
    pub sandbox_name: String,
    /// `production` or `development`.
    #[serde(default)]
    pub r#type: String,
    /// Whether it is the default sandbox.
    #[serde(default)]
    pub default: bool,
}

/// An audience record of `/data/core/ups/audiences` (reference §2.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct UpsAudience {
    /// System ID (the key of `/ups/audiences/{id}`).
    #[serde(default)]
    pub id: String,
    /// Audience ID (equals the `/ais` audience ID, or the caller's `customAudienceId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience_id: Option<String>,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Audience namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Owning org.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ims_org_id: Option<String>,
    /// Owning sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_opt")]
    pub sandbox: Option<UpsSandbox>,
    /// System audience?
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_system: Option<bool>,
    /// `ExternalSegment` for external audiences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#type: Option<String>,
    /// Entity type, `_xdm.context.profile` for people audiences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_type: Option<String>,
    /// `CUSTOM_UPLOAD` for external audiences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_name: Option<String>,
    /// `draft`, `published`, `inactive`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle_state: Option<String>,
    /// Creator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// Backing dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_id: Option<String>,
    /// Audience-level labels.
    #[serde(default, deserialize_with = "lenient_strings")]
    pub labels: Vec<String>,
    /// Epoch milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_i64")]
    pub creation_time: Option<i64>,
    /// Epoch seconds.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_i64")]
    pub update_epoch: Option<i64>,
    /// Epoch milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_i64")]
    pub update_time: Option<i64>,
    /// Epoch seconds.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_i64")]
    pub create_epoch: Option<i64>,
}

impl UpsAudience {
    /// An audience made through the external-audience API.
    pub fn is_external(&self) -> bool {
        self.origin_name.as_deref() == Some(ORIGIN_CUSTOM_UPLOAD)
            || self.r#type.as_deref() == Some(UPS_TYPE_EXTERNAL_SEGMENT)
    }
}

/// One page of `GET /data/core/ups/audiences`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct UpsAudienceList {
    /// The records of this page.
    #[serde(default, deserialize_with = "lenient_vec")]
    pub children: Vec<UpsAudience>,
    /// Paging summary.
    #[serde(
        rename = "_page",
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_opt"
    )]
    pub page: Option<UpsPage>,
    /// Navigation links.
    #[serde(
        rename = "_links",
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_opt"
    )]
    pub links: Option<UpsLinks>,
}

/// `_page` of a `/ups/audiences` list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct UpsPage {
    /// Matching records overall.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_i64")]
    pub total_count: Option<i64>,
    /// Records on this page.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_i64")]
    pub page_size: Option<i64>,
    /// Cursor of the next page (number or string on the wire).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<Value>,
    /// Offset of this page.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_i64")]
    pub start: Option<i64>,
    /// Page size asked for.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_i64")]
    pub limit: Option<i64>,
    /// Number of pages.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_i64")]
    pub total_pages: Option<i64>,
}

/// `_links` of a `/ups/audiences` list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct UpsLinks {
    /// Link to the next page, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_opt")]
    pub next: Option<Link>,
}

/// A HAL-style link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Link {
    /// Target; may be relative and may start with `@/` (reference §2.4).
    #[serde(default)]
    pub href: String,
}

// ---------------------------------------------------------------------------------------------
// IMS and error bodies
// ---------------------------------------------------------------------------------------------

/// IMS `/ims/token/v3` success body. `Debug` redacts the token.
#[derive(Clone, Serialize, Deserialize)]
pub struct ImsTokenResponse {
    /// The bearer token (opaque).
    pub access_token: String,
    /// `bearer`.
    #[serde(default)]
    pub token_type: String,
    /// Lifetime in seconds (milliseconds when larger than 1,000,000).
    #[serde(default, deserialize_with = "lenient_i64")]
    pub expires_in: Option<i64>,
}

impl fmt::Debug for ImsTokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImsTokenResponse")
            .field("access_token", &"[redacted]")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// IMS / OAuth 2.0 error body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImsErrorBody {
    /// `invalid_client`, `invalid_scope`, `unsupported_grant_type`, …
    pub error: String,
    /// Human-readable text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_description: Option<String>,
}

/// Adobe I/O gateway error body (reference §6.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayErrorBody {
    /// Six digits, e.g. `401013`.
    pub error_code: String,
    /// Human-readable text.
    pub message: String,
}

/// AEP service error body (reference §6.2 and the emulator convention of §7.2.15).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServiceErrorBody {
    /// Error type URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#type: Option<String>,
    /// HTTP status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Short summary (`BAD_REQUEST`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Longer text; names the offending field for validation errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Platform code such as `100910-400`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// Tenant report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<Value>,
}

/// Extracts AEP's own message from any error body shape, in the order of reference §7.1.13:
/// `detail`, `title`, `message`, `error_description`, `error_code` (also `errorMessage`,
/// `errorCode`, `error`). Flow Service answers carry `errorMessage` (a 412's
/// `Supplied version=[…] does not match …`, a 404's `flows not found with id = […]`), the ad hoc
/// activation API `message` (`Run already going on for audience …`). Returns `None` for bodies
/// that are not JSON objects. URLs in the text are replaced by `<url>` ([`sanitize_message`]).
pub fn error_message_from_body(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let object = value.as_object()?;
    [
        "detail",
        "title",
        "message",
        "error_description",
        "errorMessage",
        "error_code",
        "errorCode",
        "error",
    ]
    .iter()
    .find_map(|key| match object.get(*key) {
        Some(Value::String(s)) => Some(sanitize_message(s)).filter(|m| !m.is_empty()),
        _ => None,
    })
}

/// Longest error message taken from an answer (it reaches status and events).
pub const MAX_ERROR_MESSAGE_CHARS: usize = 300;

/// One line of printable text, at most [`MAX_ERROR_MESSAGE_CHARS`] characters: control characters
/// become spaces, whitespace runs collapse, and URLs (`http://…`, `https://…`, which may carry
/// query strings with ids or signatures) become `<url>`.
pub fn sanitize_message(s: &str) -> String {
    let cleaned: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let mut out = cleaned.split_whitespace().map(redact_url).collect::<Vec<_>>().join(" ");
    if let Some((cut, _)) = out.char_indices().nth(MAX_ERROR_MESSAGE_CHARS) {
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// A whitespace-free word with everything from its first `http://` or `https://` on replaced by
/// `<url>` (never longer than the word).
fn redact_url(word: &str) -> std::borrow::Cow<'_, str> {
    let lower = word.to_ascii_lowercase();
    let start = [lower.find("http://"), lower.find("https://")]
        .into_iter()
        .flatten()
        .min();
    match start {
        Some(at) => std::borrow::Cow::Owned(format!("{}<url>", &word[..at])),
        None => std::borrow::Cow::Borrowed(word),
    }
}

/// Extracts the platform or gateway code (`errorCode`, `error_code`, `error`) from an error body.
pub fn error_code_from_body(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let object = value.as_object()?;
    ["errorCode", "error_code", "error"]
        .iter()
        .find_map(|key| object.get(*key).and_then(Value::as_str).map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn create_request_serialises_like_the_seed() {
        let req = CreateAudienceRequest {
            name: "Churn".into(),
            description: None,
            fields: vec![Field {
                name: "email".into(),
                r#type: FieldType::String,
                identity_ns: Some("email".into()),
                labels: vec![],
            }],
            source_spec: SourceSpec {
                params: SourceParams {
                    path: "a/b.csv".into(),
                    r#type: SourcePathType::File,
                    source_type: Some(SOURCE_TYPE_CLOUD_STORAGE.into()),
                    base_connection_id: Some("conn".into()),
                    ..SourceParams::default()
                },
            },
            ttl_in_days: Some(40),
            origin_name: ORIGIN_CUSTOM_UPLOAD.into(),
            audience_type: Some(AUDIENCE_TYPE_PEOPLE.into()),
            ..CreateAudienceRequest::default()
        };
        let value = serde_json::to_value(&req).unwrap();
        assert_eq!(
            value,
            json!({
                "name": "Churn",
                "fields": [{"name": "email", "type": "string", "identityNs": "email"}],
                "sourceSpec": {"params": {"path": "a/b.csv", "type": "file",
                    "sourceType": "Cloud Storage", "baseConnectionId": "conn"}},
                "ttlInDays": 40,
                "audienceType": "people",
                "originName": "CUSTOM_UPLOAD"
            })
        );
    }

    #[test]
    fn ttl_in_days_accepts_numeric_strings() {
        let a: PatchAudienceRequest = serde_json::from_value(json!({"ttlInDays": "40"})).unwrap();
        assert_eq!(a.ttl_in_days, Some(40));
        let b: ExternalAudience = serde_json::from_value(json!({"ttlInDays": 41})).unwrap();
        assert_eq!(b.ttl_in_days, Some(41));
        let c: ExternalAudience = serde_json::from_value(json!({"ttlInDays": "x"})).unwrap();
        assert_eq!(c.ttl_in_days, None);
    }

    #[test]
    fn source_spec_parses_flat_and_wrapped() {
        let flat: SourceSpec = serde_json::from_value(json!({"path": "p", "type": "FOLDER"})).unwrap();
        let wrapped: SourceSpec = serde_json::from_value(json!({"params": {"path": "p", "type": "folder"}})).unwrap();
        assert_eq!(flat, wrapped);
        assert_eq!(flat.params.r#type, SourcePathType::Folder);
        assert_eq!(
            serde_json::to_value(&flat).unwrap(),
            json!({"params": {"path": "p", "type": "folder"}})
        );
    }

    #[test]
    fn run_parses_older_spellings_and_absent_status() {
        let run: Run = serde_json::from_value(json!({
            "runId": "r", "audienceId": "a", "name": "n", "ingestionTime": "1750000000",
            "unknownKey": {"nested": true}
        }))
        .unwrap();
        assert_eq!(run.status, RunStatus::Processing);
        assert_eq!(run.audience_name.as_deref(), Some("n"));
        assert_eq!(run.created_at, Some(1_750_000_000));

        let done: Run = serde_json::from_value(json!({
            "runId": "r", "audienceId": "a", "audienceName": "n", "status": "success",
            "details": [{"stage": "DATASET_INGEST", "status": "FAILED", "flowRunId": "f"}, 42]
        }))
        .unwrap();
        assert_eq!(done.status, RunStatus::Success);
        assert_eq!(done.details.len(), 1);
        assert_eq!(done.details[0].status, RunStatus::Failed);
    }

    #[test]
    fn operation_status_is_lenient() {
        let op: Operation = serde_json::from_value(json!({
            "operationId": "o", "status": "QUEUED_FOR_LATER", "operationDetails": "garbage"
        }))
        .unwrap();
        assert_eq!(op.status, OperationStatus::Other("QUEUED_FOR_LATER".into()));
        assert!(!op.status.is_terminal());
        assert!(op.operation_details.is_none());
    }

    #[test]
    fn ups_list_parses_the_reference_sample() {
        let list: UpsAudienceList = serde_json::from_value(json!({
            "children": [{"id": "d3", "audienceId": "d3", "name": "Churn", "type": "ExternalSegment",
                "originName": "CUSTOM_UPLOAD", "lifecycleState": "published", "labels": ["core/C1"],
                "creationTime": 1750000000000_i64, "sandbox": {"sandboxName": "dev1"}}],
            "_page": {"totalCount": 1, "pageSize": 1, "next": "1"},
            "_links": {"next": {"href": "@/audiences?start=1&limit=1&totalCount=1"}}
        }))
        .unwrap();
        assert!(list.children[0].is_external());
        assert_eq!(
            list.links.unwrap().next.unwrap().href,
            "@/audiences?start=1&limit=1&totalCount=1"
        );
    }

    #[test]
    fn error_message_follows_the_reference_order() {
        let body = br#"{"title":"BAD_REQUEST","detail":"name: must be a non-empty string"}"#;
        assert_eq!(
            error_message_from_body(body).as_deref(),
            Some("name: must be a non-empty string")
        );
        let gw = br#"{"error_code":"401013","message":"Oauth token is not valid"}"#;
        assert_eq!(error_message_from_body(gw).as_deref(), Some("Oauth token is not valid"));
        assert_eq!(error_code_from_body(gw).as_deref(), Some("401013"));
        let ims = br#"{"error":"invalid_client","error_description":"bad secret"}"#;
        assert_eq!(error_message_from_body(ims).as_deref(), Some("bad secret"));
        assert_eq!(error_message_from_body(b"<html>"), None);
    }

    #[test]
    fn flow_service_and_ad_hoc_error_bodies_give_their_messages_without_urls() {
        let stale = br#"{"errorMessage":"Supplied version=[\"a\"] does not match the current version on entity=[\"b\"]","errorDetails":"x"}"#;
        assert_eq!(
            error_message_from_body(stale).as_deref(),
            Some(r#"Supplied version=["a"] does not match the current version on entity=["b"]"#)
        );
        let adhoc = br#"{"message":"Segments Churn are not part of this dataflow or out of schedule range!"}"#;
        assert_eq!(
            error_message_from_body(adhoc).as_deref(),
            Some("Segments Churn are not part of this dataflow or out of schedule range!")
        );
        let with_url = br#"{"errorMessage":"see (https://platform.adobe.io/x?sig=secret) or HTTP://h/y now"}"#;
        assert_eq!(
            error_message_from_body(with_url).as_deref(),
            Some("see (<url> or <url> now")
        );
    }

    #[test]
    fn ims_token_debug_is_redacted() {
        let t = ImsTokenResponse {
            access_token: "super-secret-token".into(),
            token_type: "bearer".into(),
            expires_in: Some(86399),
        };
        assert!(!format!("{t:?}").contains("super-secret-token"));
    }
}
