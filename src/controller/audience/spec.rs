//! What AEP is told for a spec, and whose an audience found in AEP is. Pure.
//!
//! * Requests: the create, PATCH and start-run bodies built from the spec.
//! * Hashes: whether a PATCH or an ingestion run is owed is decided by comparing hashes of
//!   *versioned projections of the user's spec* (not of the requests built), so a change in how
//!   requests are serialised (a new optional request field, the `customAudienceId`) never owes a
//!   run on upgrade. A new optional spec field joins a projection with `skip_serializing_if` so
//!   that objects that do not set it keep their hash. Hashes written by releases before the
//!   projections (`legacy`) are still recognised.
//! * Attribution: an audience is this object's only with proof ([`attribute`]).

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{
    aep::types::{
        CreateAudienceRequest, Field, FieldLabels, FieldType, PatchAudienceRequest, SourceParams, SourcePathType,
        SourceSpec, StartRunRequest, UpsAudience,
    },
    api::{self, ExternalAudienceSpec},
};

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

#[cfg(test)]
mod tests {
    use super::*;

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
