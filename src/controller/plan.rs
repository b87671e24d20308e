//! The controller's brain, without I/O: what AEP should receive for a spec (requests and hashes)
//! and which single step a reconcile pass takes next ([`next_step`]).
//!
//! The plan reads only the object (spec, status, generation, the run-request annotation); every
//! decision is therefore reproducible from what `kubectl get -o yaml` shows, and unit-tested as a
//! table below.

use sha2::{Digest, Sha256};

use crate::{
    aep::types::{
        CreateAudienceRequest, Field, FieldLabels, FieldType, PatchAudienceRequest, SourceParams, SourcePathType,
        SourceSpec, StartRunRequest,
    },
    api::{self, ExternalAudienceSpec, ExternalAudienceStatus, RunState, conditions, reasons},
};

/// What the planner sees.
#[derive(Clone, Debug)]
pub struct Facts<'a> {
    pub generation: i64,
    pub audience_name: &'a str,
    pub spec: &'a ExternalAudienceSpec,
    pub status: &'a ExternalAudienceStatus,
    /// Value of the `run-requested-at` annotation.
    pub run_request: Option<&'a str>,
}

/// The one step a pass performs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing recorded: look the name up, then create (or stall if the name is taken).
    Create,
    /// A create may have been sent but its operation id was not recorded: look the audience up by
    /// name, adopt it if found, create only if it is absent.
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
    /// A terminal problem for this generation is already reported: wait for a change.
    Wait,
    /// Converged.
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

/// Hash of the updatable properties (what a PATCH sends).
pub fn updatable_hash(spec: &ExternalAudienceSpec) -> String {
    hash(&patch_request(spec))
}

/// Hash of everything AEP is told about the audience and its ingestion: a change owes a run.
pub fn ingest_hash(spec: &ExternalAudienceSpec, audience_name: &str) -> String {
    hash(&(create_request(spec, audience_name), start_run_request(spec)))
}

fn hash<T: serde::Serialize>(value: &T) -> String {
    // Serialising plain structs is deterministic (field order is declaration order).
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    hex::encode(&Sha256::digest(&bytes)[..16])
}

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

fn wire_string<T: serde::Serialize>(v: &T) -> Option<String> {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_owned))
}

/// The create request for a spec.
pub fn create_request(spec: &ExternalAudienceSpec, audience_name: &str) -> CreateAudienceRequest {
    CreateAudienceRequest {
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
                path: spec.source_spec.path.clone(),
                r#type: match spec.source_spec.type_ {
                    api::SourceKind::File => SourcePathType::File,
                    api::SourceKind::Folder => SourcePathType::Folder,
                },
                source_type: wire_string(&spec.source_spec.source_type),
                cloud_type: spec.source_spec.cloud_type.as_ref().and_then(wire_string),
                base_connection_id: spec.source_spec.base_connection_id.clone(),
                encryption: None,
            },
        },
        ttl_in_days: u32::try_from(spec.ttl_in_days).ok(),
        labels: spec.labels.clone(),
        audience_type: wire_string(&spec.audience_type),
        origin_name: wire_string(&spec.origin_name).unwrap_or_default(),
        namespace: None,
        tags: Vec::new(),
        custom_audience_id: None,
    }
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
        ttl_in_days: u32::try_from(spec.ttl_in_days).ok(),
    }
}

/// The start-run request for a spec.
pub fn start_run_request(spec: &ExternalAudienceSpec) -> StartRunRequest {
    StartRunRequest {
        data_filter_start_time: spec.ingestion.data_filter_start_time,
        data_filter_end_time: spec.ingestion.data_filter_end_time,
        differential_ingestion: Some(spec.ingestion.differential_ingestion),
    }
}

/// Whether a run is owed: the AEP-facing spec changed since the last run (or there never was one
/// for a created audience), or a new run request arrived.
pub fn run_owed(f: &Facts<'_>) -> bool {
    let spec_changed = f.status.ingested_spec_hash.as_deref() != Some(&ingest_hash(f.spec, f.audience_name));
    let requested = f.run_request.is_some() && f.status.ingested_run_request.as_deref() != f.run_request;
    spec_changed || requested
}

/// Reasons that mean "AEP refused this generation; retrying will not help until it changes".
const TERMINAL_FOR_GENERATION: &[&str] = &[
    reasons::REJECTED,
    reasons::OPERATION_FAILED,
    reasons::NAME_TAKEN,
    reasons::AUDIENCE_NOT_FOUND,
];

fn stalled_reason<'a>(f: &'a Facts<'a>) -> Option<&'a str> {
    f.status
        .conditions
        .iter()
        .find(|c| c.type_ == conditions::STALLED && c.status == "True" && c.observed_generation == Some(f.generation))
        .map(|c| c.reason.as_str())
}

/// The next step for the object.
pub fn next_step(f: &Facts<'_>) -> Step {
    let st = f.status;
    let stalled = stalled_reason(f);
    let Some(audience_id) = st.audience_id.clone() else {
        if stalled.is_some_and(|r| TERMINAL_FOR_GENERATION.contains(&r)) {
            return Step::Wait;
        }
        if let Some(id) = &f.spec.audience_id {
            return Step::Adopt {
                audience_id: id.clone(),
            };
        }
        if let Some(op) = &st.operation_id {
            return Step::PollOperation {
                operation_id: op.clone(),
            };
        }
        if st.create_pending_since.is_some() {
            return Step::RecoverCreate;
        }
        return Step::Create;
    };
    if st.applied_spec_hash.as_deref() != Some(&updatable_hash(f.spec)) {
        if stalled == Some(reasons::REJECTED) {
            return Step::Wait;
        }
        return Step::Update { audience_id };
    }
    if let Some(run) = &st.last_run
        && run.status == RunState::Processing
    {
        return Step::PollRun {
            audience_id,
            run_id: run.run_id.clone(),
        };
    }
    if st.run_pending.is_some() {
        return Step::RecoverRun { audience_id };
    }
    if run_owed(f) {
        if stalled == Some(reasons::REJECTED) {
            return Step::Wait;
        }
        return Step::StartRun { audience_id };
    }
    Step::Idle { audience_id }
}

/// True when the latest run for the current spec failed (Ready stays False, no automatic retry).
pub fn last_run_failed(status: &ExternalAudienceStatus) -> bool {
    status.last_run.as_ref().is_some_and(|r| r.status == RunState::Failed)
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

    fn stalled(reason: &str, generation: i64) -> Condition {
        Condition {
            type_: "Stalled".into(),
            status: "True".into(),
            reason: reason.into(),
            message: String::new(),
            observed_generation: Some(generation),
            last_transition_time: now(),
        }
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
                "marker without operation id recovers",
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
                "rejected create waits for a change",
                base.clone(),
                ExternalAudienceStatus {
                    conditions: vec![stalled(reasons::REJECTED, 1)],
                    ..Default::default()
                },
                None,
                Step::Wait,
            ),
            (
                "rejected create of an older generation retries",
                base.clone(),
                ExternalAudienceStatus {
                    conditions: vec![stalled(reasons::REJECTED, 0)],
                    ..Default::default()
                },
                None,
                Step::Create,
            ),
            (
                "name taken waits",
                base.clone(),
                ExternalAudienceStatus {
                    conditions: vec![stalled(reasons::NAME_TAKEN, 1)],
                    ..Default::default()
                },
                None,
                Step::Wait,
            ),
            (
                "setting spec.audienceId after a name clash adopts",
                adopt.clone(),
                ExternalAudienceStatus {
                    conditions: vec![stalled(reasons::NAME_TAKEN, 0)],
                    ..Default::default()
                },
                None,
                Step::Adopt {
                    audience_id: "existing".into(),
                },
            ),
        ];
        for (name, spec, status, run_request, want) in cases {
            let f = Facts {
                generation: 1,
                audience_name: "loyalty",
                spec: &spec,
                status: &status,
                run_request,
            };
            assert_eq!(next_step(&f), want, "case: {name}");
        }
    }

    #[test]
    fn hashes_ignore_non_aep_fields() {
        let a = spec();
        let mut b = a.clone();
        b.deletion_policy = api::DeletionPolicy::Orphan;
        b.credentials_secret_ref.name = "other".into();
        assert_eq!(ingest_hash(&a, "n"), ingest_hash(&b, "n"));
        assert_eq!(updatable_hash(&a), updatable_hash(&b));
        let mut c = a.clone();
        c.ttl_in_days = 40;
        assert_ne!(updatable_hash(&a), updatable_hash(&c));
        assert_ne!(ingest_hash(&a, "n"), ingest_hash(&c, "n"));
    }

    #[test]
    fn create_request_matches_the_seed_shape() {
        let req = create_request(&spec(), "Loyalty members");
        let v = serde_json::to_value(&req).expect("json");
        assert_eq!(v["name"], "Loyalty members");
        assert_eq!(v["sourceSpec"]["params"]["sourceType"], "Cloud Storage");
        assert_eq!(v["fields"][0]["identityNs"], "email");
        assert_eq!(v["audienceType"], "people");
        assert_eq!(v["originName"], "CUSTOM_UPLOAD");
        assert_eq!(v["ttlInDays"], 30);
    }
}
