//! Contract tests: the AEP client against the emulator over real HTTP (and HTTPS, with the CA the
//! emulator generates) on loopback (no mocks).
//!
//! Each test starts its own emulator on `127.0.0.1:0`. Waiting uses polling loops with deadlines;
//! the only timing assertions are the `Retry-After` lower bound, the visibility lower bounds of the
//! time-based lookup settings, and "the client's timeout fired before the held answer".

use std::time::{Duration, Instant};

use aep::{
    AepClient, ClientConfig, CreateAudienceRequest, Credentials, ErrorKind, Field, FieldLabels, FieldType,
    OperationStatus, PatchAudienceRequest, RunStatus, Session, SourceParams, SourcePathType, SourceSpec,
    StartRunRequest,
};
use aep_emulator::{
    CredentialSpec, CustomAudienceIdModel, DuplicateNames, Emulator, EmulatorBuilder, Entitlement, Faults,
    LookupVisibility, LostAnswer, LostMode, RunWindow, RunningEmulator, Settings,
};
use serde_json::{Value, json};

const CREATE_ROUTE: &str = "POST /data/core/ais/external-audience/";
const DEADLINE: Duration = Duration::from_secs(10);

async fn start(edit: impl FnOnce(EmulatorBuilder) -> EmulatorBuilder) -> RunningEmulator {
    edit(Emulator::builder().zero_latency())
        .spawn()
        .await
        .expect("emulator starts")
}

fn client(emu: &RunningEmulator) -> AepClient {
    AepClient::new(ClientConfig {
        requests_per_second: 10_000,
        request_timeout: Duration::from_secs(10),
        max_backoff: Duration::from_secs(5),
        ..emu.client_config()
    })
    .expect("client builds")
}

fn session(emu: &RunningEmulator, sandbox: &str) -> Session {
    client(emu).session(&emu.credentials(), sandbox)
}

fn seed_request(name: &str) -> CreateAudienceRequest {
    CreateAudienceRequest {
        name: name.to_owned(),
        description: Some("Upload from data science model".to_owned()),
        fields: vec![
            Field {
                name: "email".into(),
                r#type: FieldType::String,
                identity_ns: Some("email".into()),
                labels: vec![],
            },
            Field {
                name: "score".into(),
                r#type: FieldType::Number,
                identity_ns: None,
                labels: vec!["core/C2".into()],
            },
        ],
        source_spec: SourceSpec {
            params: SourceParams {
                path: "exports/churn/churn_q3.csv".into(),
                r#type: SourcePathType::File,
                source_type: Some("Cloud Storage".into()),
                base_connection_id: Some("0c7c1f0e-3d52-4d5b-9e0e-5a1f2b9f6c11".into()),
                ..SourceParams::default()
            },
        },
        ttl_in_days: Some(40),
        labels: vec!["core/C1".into()],
        audience_type: Some("people".into()),
        origin_name: "CUSTOM_UPLOAD".into(),
        ..CreateAudienceRequest::default()
    }
}

/// Creates an audience and polls its operation until it succeeds; returns the audience ID.
async fn create_ready(session: &Session, name: &str) -> String {
    let created = session
        .create_audience(&seed_request(name))
        .await
        .expect("create accepted");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let op = session
            .get_operation(&created.operation_id)
            .await
            .expect("operation readable");
        match op.status {
            OperationStatus::Success => return op.audience_id.expect("audience id on success"),
            OperationStatus::Failed => panic!("operation failed: {:?}", op.message),
            _ => {}
        }
        assert!(Instant::now() < deadline, "operation did not finish in time");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn run_to_end(session: &Session, audience_id: &str, run_id: &str) -> RunStatus {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let run = session.get_run(audience_id, run_id).await.expect("run readable");
        if run.status.is_terminal() {
            return run.status;
        }
        assert!(Instant::now() < deadline, "run did not finish in time");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn run_request() -> StartRunRequest {
    StartRunRequest {
        data_filter_start_time: 764_245_635,
        data_filter_end_time: None,
        differential_ingestion: None,
    }
}

/// Raw HTTP with the five AEP headers, for requests the typed client cannot express.
struct Raw {
    http: reqwest::Client,
    base: String,
    token: String,
    org: String,
    client_id: String,
}

impl Raw {
    async fn new(emu: &RunningEmulator) -> Raw {
        aep::install_crypto_provider();
        let http = reqwest::Client::new();
        let base = emu.base_url().as_str().trim_end_matches('/').to_owned();
        let creds = emu.credentials();
        let token: Value = http
            .post(format!("{base}/ims/token/v3"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", creds.client_id.as_str()),
                ("client_secret", "local-secret"),
                ("scope", aep::DEFAULT_SCOPES),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        Raw {
            http,
            base,
            token: token["access_token"].as_str().unwrap().to_owned(),
            org: creds.org_id,
            client_id: creds.client_id,
        }
    }

    fn req(&self, method: reqwest::Method, path: &str, sandbox: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .header("x-api-key", &self.client_id)
            .header("x-gw-ims-org-id", &self.org)
            .header("x-sandbox-name", sandbox)
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut req = self.req(method, path, "dev1");
        if let Some(body) = body {
            req = req.header("Content-Type", "application/json").body(body.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

fn seed_json(name: &str) -> Value {
    json!({
        "name": name,
        "description": "Upload from data science model",
        "fields": [
            {"name": "email", "type": "string", "identityNs": "email"},
            {"name": "score", "type": "number", "labels": ["core/C2"]},
            {"name": "segment_code", "type": "string"}
        ],
        "sourceSpec": {"params": {"path": "exports/churn/churn_q3.csv", "type": "file",
            "sourceType": "Cloud Storage", "baseConnectionId": "0c7c1f0e-3d52-4d5b-9e0e-5a1f2b9f6c11"}},
        "ttlInDays": "40",
        "labels": ["core/C1"],
        "audienceType": "people",
        "originName": "CUSTOM_UPLOAD"
    })
}

#[tokio::test]
async fn seed_flow_goes_from_create_to_a_successful_run() {
    let emu = start(|b| b.operation_timing(Duration::ZERO, 1).run_timing(Duration::ZERO, 1)).await;
    let s = session(&emu, "dev1");
    let created = s.create_audience(&seed_request("Churn risk")).await.unwrap();
    let details = created.operation_details.expect("echo");
    assert_eq!(details.ttl_in_days, Some(40));
    assert_eq!(details.fields[0].identity_ns.as_deref(), Some("Email"));

    let first = s.get_operation(&created.operation_id).await.unwrap();
    assert_eq!(first.status, OperationStatus::Processing);
    assert_eq!(first.audience_id, None);
    let audience_id = create_ready(&s, "Churn risk 2").await;
    let op = s.get_operation(&created.operation_id).await.unwrap();
    assert_eq!(op.status, OperationStatus::Success);
    assert_eq!(op.audience_name.as_deref(), Some("Churn risk"));
    let churn_id = op.audience_id.unwrap();
    assert_ne!(churn_id, audience_id);

    let run = s.start_run(&churn_id, &run_request()).await.unwrap();
    assert_eq!(run.audience_id, churn_id);
    let polled = s.get_run(&churn_id, &run.run_id).await.unwrap();
    assert_eq!(polled.status, RunStatus::Processing);
    assert_eq!(run_to_end(&s, &churn_id, &run.run_id).await, RunStatus::Success);
    let done = s.get_run(&churn_id, &run.run_id).await.unwrap();
    assert_eq!(done.details.len(), 2);
    assert!(done.details.iter().all(|d| d.status == RunStatus::Success));
    let runs = s.list_runs(&churn_id).await.unwrap();
    assert_eq!(runs.len(), 1);

    let record = s.get_audience(&churn_id).await.unwrap();
    assert_eq!(record.name, "Churn risk");
    assert!(record.is_external());
    assert_eq!(record.lifecycle_state.as_deref(), Some("published"));
}

#[tokio::test]
async fn patch_replaces_each_named_property_and_leaves_the_rest() {
    let emu = start(|b| b).await;
    let s = session(&emu, "dev1");
    let id = create_ready(&s, "Patched").await;

    let patched = s
        .patch_audience(
            &id,
            &PatchAudienceRequest {
                labels: Some(vec!["core/C3".into()]),
                fields: Some(vec![FieldLabels {
                    name: "score".into(),
                    labels: vec![],
                }]),
                ..PatchAudienceRequest::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(patched.labels, vec!["core/C3".to_owned()]);
    assert_eq!(patched.description.as_deref(), Some("Upload from data science model"));
    assert!(patched.source_spec.is_some(), "flat sourceSpec parses");

    let again = PatchAudienceRequest {
        description: Some("Refreshed weekly".into()),
        ttl_in_days: Some(60),
        ..PatchAudienceRequest::default()
    };
    s.patch_audience(&id, &again).await.unwrap();
    s.patch_audience(&id, &again).await.unwrap();
    let state = emu.state();
    let view = state.audience(&id).unwrap();
    assert_eq!(view.description.as_deref(), Some("Refreshed weekly"));
    assert_eq!(view.ttl_in_days, Some(60));
    assert_eq!(view.labels, vec!["core/C3".to_owned()]);
    assert_eq!(view.field_labels["score"], Vec::<String>::new());

    let bad = s
        .patch_audience(
            &id,
            &PatchAudienceRequest {
                fields: Some(vec![FieldLabels {
                    name: "nope".into(),
                    labels: vec![],
                }]),
                ..PatchAudienceRequest::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(bad.kind(), ErrorKind::Terminal);
    assert!(bad.message().starts_with("fields[0].name"), "{}", bad.message());
    let missing = s.patch_audience("missing", &again).await.unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn delete_removes_the_audience_everywhere() {
    let emu = start(|b| b).await;
    let s = session(&emu, "dev1");
    let id = create_ready(&s, "Doomed").await;
    s.delete_audience(&id).await.unwrap();
    assert_eq!(s.get_audience(&id).await.unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(s.delete_audience(&id).await.unwrap_err().kind(), ErrorKind::NotFound);
    assert!(s.find_audiences_by_name("Doomed").await.unwrap().is_empty());

    let kept = create_ready(&s, "Kept").await;
    emu.update_faults(|f| f.refuse_delete_in_use = true);
    let refused = s.delete_audience(&kept).await.unwrap_err();
    assert!(matches!(refused.kind(), ErrorKind::NotNow { .. }), "{refused:?}");
    assert_eq!(refused.status(), Some(422));
}

#[tokio::test]
async fn a_deleted_audience_is_kept_as_deleted_and_listed_only_by_its_custom_audience_id() {
    let emu = start(|b| b).await;
    let s = session(&emu, "dev1");
    let mut req = seed_request("Gone soon");
    req.custom_audience_id = Some("k8s-one".into());
    let created = s.create_audience(&req).await.unwrap();
    let id = create_ready_op(&s, &created.operation_id).await;
    s.delete_audience(&id).await.unwrap();
    // Every route answers 404, and the plain lists do not show it.
    assert_eq!(s.get_audience(&id).await.unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(s.list_runs(&id).await.unwrap_err().kind(), ErrorKind::NotFound);
    assert!(s.find_audiences_by_name("Gone soon").await.unwrap().is_empty());
    assert!(s.list_audiences(None).await.unwrap().is_empty());
    // The customAudienceId lookup still lists it, deleted.
    let found = s.find_audiences_by_custom_id("k8s-one").await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(
        (found[0].id.as_str(), found[0].lifecycle_state.as_deref()),
        (id.as_str(), Some("deleted"))
    );
    // Its name and customAudienceId are free again.
    let again = s.create_audience(&req).await.unwrap();
    let new_id = create_ready_op(&s, &again.operation_id).await;
    assert_ne!(new_id, id);
    let found = s.find_audiences_by_custom_id("k8s-one").await.unwrap();
    assert_eq!(found.len(), 2, "the deleted record and the new audience");
    let view = emu.state();
    assert_eq!(view.audiences.len(), 1);
    assert_eq!(view.deleted.len(), 1);
    assert_eq!(view.deleted[0].lifecycle_state, "deleted");
}

#[tokio::test]
async fn list_audiences_pages_through_the_sandbox_and_filters_by_name() {
    let emu = start(|b| b).await;
    let s = session(&emu, "dev1");
    for i in 0..60 {
        create_ready(&s, &format!("List {i:02}")).await;
    }
    create_ready(&s, "Other").await;
    create_ready(&session(&emu, "dev2"), "List in another sandbox").await;
    assert_eq!(s.list_audiences(None).await.unwrap().len(), 61);
    let some = s.list_audiences(Some("list")).await.unwrap();
    assert_eq!(some.len(), 60, "contains, case-insensitive, this sandbox only");
}

#[tokio::test]
async fn a_bounded_list_stops_at_its_page_budget_and_says_so() {
    let emu = start(|b| b).await;
    let s = session(&emu, "dev1");
    for i in 0..150 {
        create_ready(&s, &format!("Bounded {i:03}")).await;
    }
    let before = emu.admin().stats().await.unwrap().received("list_audiences");
    assert!(
        s.list_audiences_within(1).await.unwrap().is_none(),
        "150 audiences need 2 pages of 100"
    );
    let after_one = emu.admin().stats().await.unwrap().received("list_audiences");
    assert_eq!(after_one - before, 1, "no page read beyond the budget");
    let all = s.list_audiences_within(2).await.unwrap().expect("fits in 2 pages");
    assert_eq!(all.len(), 150);
    let after_two = emu.admin().stats().await.unwrap().received("list_audiences");
    assert_eq!(after_two - after_one, 2);
}

#[tokio::test]
async fn find_by_name_follows_next_links_across_pages_and_matches_exactly() {
    let emu = start(|b| b).await;
    let s = session(&emu, "dev1");
    for i in 0..55 {
        create_ready(&s, &format!("Weekly churn {i:02}")).await;
    }
    let wanted = create_ready(&s, "Weekly churn").await;
    let other_sandbox = session(&emu, "dev2");
    create_ready(&other_sandbox, "Weekly churn").await;

    let found = s.find_audiences_by_name("Weekly churn").await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, wanted);
    let pages = emu.stats().requests_for("GET /data/core/ups/audiences");
    assert!(pages >= 2, "expected several pages, got {pages}");
    assert!(s.find_audiences_by_name("weekly churn").await.unwrap().is_empty());
}

#[tokio::test]
async fn every_validation_rule_is_refused_with_a_message_naming_the_field() {
    type Edit = fn(&mut Value);
    let cases: &[(&str, Edit, &str)] = &[
        (
            "1 body is an object",
            |b| *b = json!(["not", "an", "object"]),
            "request body",
        ),
        ("2 name non-empty", |b| b["name"] = json!(""), "name:"),
        (
            "3 fields present",
            |b| {
                b.as_object_mut().unwrap().remove("fields");
            },
            "fields:",
        ),
        ("3 fields at least one", |b| b["fields"] = json!([]), "fields:"),
        (
            "3 fields at most 41",
            |b| {
                let many: Vec<Value> = (0..42)
                    .map(|i| json!({"name": format!("c{i}"), "type": "string", "identityNs": "ECID"}))
                    .collect();
                b["fields"] = Value::Array(many);
            },
            "fields:",
        ),
        (
            "3 field name",
            |b| b["fields"][1]["name"] = json!(""),
            "fields[1].name:",
        ),
        (
            "3 field type",
            |b| b["fields"][2]["type"] = json!("float"),
            "fields[2].type: must be one of string, number, long, integer, date, datetime, boolean",
        ),
        (
            "3 field names unique",
            |b| b["fields"][2]["name"] = json!("score"),
            "fields[2].name:",
        ),
        (
            "4 an identity field",
            |b| {
                b["fields"][0].as_object_mut().unwrap().remove("identityNs");
            },
            "fields:",
        ),
        (
            "4 identityNs non-empty",
            |b| b["fields"][0]["identityNs"] = json!(""),
            "fields[0].identityNs:",
        ),
        ("5 audience label shape", |b| b["labels"] = json!(["C1"]), "labels[0]:"),
        (
            "5 field label shape",
            |b| b["fields"][1]["labels"] = json!(["core/C2", "bad label"]),
            "fields[1].labels[1]:",
        ),
        (
            "6 sourceSpec present",
            |b| {
                b.as_object_mut().unwrap().remove("sourceSpec");
            },
            "sourceSpec:",
        ),
        (
            "6 path present",
            |b| {
                b["sourceSpec"]["params"].as_object_mut().unwrap().remove("path");
            },
            "sourceSpec.params.path:",
        ),
        (
            "6 path without spaces",
            |b| b["sourceSpec"]["params"]["path"] = json!("exports/churn q3.csv"),
            "sourceSpec.params.path:",
        ),
        (
            "6 type file|folder",
            |b| b["sourceSpec"]["params"]["type"] = json!("blob"),
            "sourceSpec.params.type:",
        ),
        (
            "6 sourceType",
            |b| b["sourceSpec"]["params"]["sourceType"] = json!("Database"),
            "sourceSpec.params.sourceType:",
        ),
        (
            "6 cloudType",
            |b| b["sourceSpec"]["params"]["cloudType"] = json!("Dropbox"),
            "sourceSpec.params.cloudType:",
        ),
        (
            "6 baseConnectionId for S3",
            |b| {
                let p = b["sourceSpec"]["params"].as_object_mut().unwrap();
                p.remove("baseConnectionId");
                p.insert("cloudType".into(), json!("S3"));
            },
            "sourceSpec.params.baseConnectionId:",
        ),
        (
            "6 encryption publicKeyId",
            |b| b["sourceSpec"]["params"]["encryption"] = json!({"signVerificationKeyId": "k"}),
            "sourceSpec.params.encryption.publicKeyId:",
        ),
        ("7 ttl at least 1", |b| b["ttlInDays"] = json!(0), "ttlInDays:"),
        ("7 ttl at most 90", |b| b["ttlInDays"] = json!("91"), "ttlInDays:"),
        ("7 ttl an integer", |b| b["ttlInDays"] = json!("forty"), "ttlInDays:"),
        (
            "8 audienceType people",
            |b| b["audienceType"] = json!("accounts"),
            "audienceType:",
        ),
        (
            "9 originName present",
            |b| {
                b.as_object_mut().unwrap().remove("originName");
            },
            "originName:",
        ),
        (
            "9 originName CUSTOM_UPLOAD",
            |b| b["originName"] = json!("AUDIENCE_MANAGER"),
            "originName:",
        ),
        ("10 namespace non-empty", |b| b["namespace"] = json!(" "), "namespace:"),
        (
            "11 tags are tag IDs",
            |b| b["tags"] = json!(["not a tag id"]),
            "tags[0]:",
        ),
    ];
    let emu = start(|b| b).await;
    let raw = Raw::new(&emu).await;
    for (rule, edit, field) in cases {
        let mut body = seed_json(&format!("Rule {rule}"));
        edit(&mut body);
        let (status, err) = raw
            .send(reqwest::Method::POST, "/data/core/ais/external-audience/", Some(&body))
            .await;
        assert_eq!(status, 400, "rule {rule}: {err}");
        assert_eq!(err["errorCode"], "100910-400", "rule {rule}");
        assert_eq!(err["title"], "BAD_REQUEST", "rule {rule}");
        let detail = err["detail"].as_str().unwrap_or_default();
        assert!(
            detail.starts_with(field),
            "rule {rule}: detail {detail:?} should start with {field:?}"
        );
    }
    assert_eq!(emu.stats().creates, 0);

    // The typed client surfaces the same message as a terminal error.
    let s = session(&emu, "dev1");
    let mut req = seed_request("Spaced");
    req.source_spec.params.path = "has space.csv".into();
    let err = s.create_audience(&req).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Terminal);
    assert!(
        err.message().starts_with("sourceSpec.params.path:"),
        "{}",
        err.message()
    );

    // Rule 12: duplicate names in one sandbox are a conflict; other sandboxes are independent.
    create_ready(&s, "Twice").await;
    let dup = s.create_audience(&seed_request("Twice")).await.unwrap_err();
    assert_eq!(dup.kind(), ErrorKind::Conflict);
    assert_eq!(dup.code(), Some("100950-409"));
    create_ready(&session(&emu, "dev2"), "Twice").await;
}

#[tokio::test]
async fn a_second_run_while_one_is_in_progress_is_refused_as_not_now() {
    let emu = start(|b| b.run_timing(Duration::ZERO, 100)).await;
    let s = session(&emu, "dev1");
    let id = create_ready(&s, "Busy").await;
    s.start_run(&id, &run_request()).await.unwrap();
    let err = s.start_run(&id, &run_request()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotNow { retry_after: None });
    assert_eq!(err.status(), Some(422));
    assert!(err.message().contains("already in progress"), "{}", err.message());
    let stats = emu.stats();
    assert_eq!(stats.run_in_progress_refusals, 1);
    assert_eq!(stats.runs_started, 1);
    assert_eq!(stats.max_concurrent_runs_per_audience, 1);
}

#[tokio::test]
async fn guardrails_refuse_runs_as_not_now() {
    let emu = start(|b| {
        b.configure(|s| {
            s.max_runs_per_audience = 2;
            s.max_runs_per_sandbox_per_day = 3;
        })
    })
    .await;
    let s = session(&emu, "dev1");
    let a = create_ready(&s, "A").await;
    let b = create_ready(&s, "B").await;
    for _ in 0..2 {
        let run = s.start_run(&a, &run_request()).await.unwrap();
        run_to_end(&s, &a, &run.run_id).await;
    }
    let per_audience = s.start_run(&a, &run_request()).await.unwrap_err();
    assert!(matches!(per_audience.kind(), ErrorKind::NotNow { .. }));
    assert!(
        per_audience.message().contains("per audience"),
        "{}",
        per_audience.message()
    );

    let run = s.start_run(&b, &run_request()).await.unwrap();
    run_to_end(&s, &b, &run.run_id).await;
    let per_day = s.start_run(&b, &run_request()).await.unwrap_err();
    assert!(matches!(per_day.kind(), ErrorKind::NotNow { .. }));
    assert!(
        per_day.message().contains("per sandbox per day"),
        "{}",
        per_day.message()
    );

    // Configured as 429, the refusal carries Retry-After (and no platform code); whether the client
    // reads it as "not now" or "retry after the hint", it must wait the hint out.
    emu.update_settings(|s| {
        s.guardrail_status = 429;
        s.guardrail_retry_after_secs = 120;
    });
    let throttled = s.start_run(&b, &run_request()).await.unwrap_err();
    assert_eq!(throttled.status(), Some(429));
    assert_eq!(throttled.code(), None);
    assert!(
        matches!(throttled.kind(), ErrorKind::NotNow { .. } | ErrorKind::Retryable { .. }),
        "{throttled:?}"
    );
    assert_eq!(throttled.kind().retry_after(), Some(Duration::from_secs(120)));
    assert_eq!(emu.stats().guardrail_refusals, 3);
}

#[tokio::test]
async fn a_401_refreshes_the_token_once_and_retries() {
    let emu = start(|b| b).await;
    let s = session(&emu, "dev1");
    let id = create_ready(&s, "Refresh").await;
    assert_eq!(emu.stats().tokens_issued, 1);
    assert!(emu.admin().revoke_tokens().await.unwrap() >= 1);

    let record = s.get_audience(&id).await.unwrap();
    assert_eq!(record.id, id);
    let stats = emu.stats();
    assert_eq!(stats.tokens_issued, 2);
    assert_eq!(
        stats.requests_with_status("GET /data/core/ups/audiences/{id}", "401"),
        1
    );

    // Credentials that IMS refuses surface as Unauthorized, without the secret anywhere.
    let mut wrong = emu.credentials();
    wrong.client_secret = "definitely-wrong-secret".to_owned().into();
    let err = client(&emu)
        .session(&wrong, "dev1")
        .get_audience(&id)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthorized);
    assert_eq!(err.status(), Some(401));
    for text in [format!("{err:?}"), err.to_string(), format!("{wrong:?}")] {
        assert!(!text.contains("definitely-wrong-secret"), "{text}");
    }
}

#[tokio::test]
async fn a_429_retry_after_is_honoured_before_retrying() {
    let emu = start(|b| b).await;
    let s = session(&emu, "dev1");
    let id = create_ready(&s, "Throttled").await;
    emu.update_faults(|f| {
        f.rate_limit_next = 1;
        f.retry_after_secs = 1;
    });
    let started = Instant::now();
    let record = s.get_audience(&id).await.unwrap();
    let waited = started.elapsed();
    assert_eq!(record.id, id);
    assert!(waited >= Duration::from_secs(1), "retried after only {waited:?}");
    let route = "GET /data/core/ups/audiences/{id}";
    assert_eq!(emu.stats().requests_with_status(route, "429"), 1);
    assert_eq!(emu.stats().requests_with_status(route, "200"), 1);

    // Non-idempotent calls are not retried: one 503 stays one request.
    emu.update_faults(|f| f.unavailable_next = 1);
    let err = s.create_audience(&seed_request("Once")).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Retryable { .. }), "{err:?}");
    assert_eq!(emu.stats().requests_for(CREATE_ROUTE), 2);
}

#[tokio::test]
async fn commit_then_drop_on_create_is_outcome_unknown_and_not_retried() {
    let emu = start(|b| b).await;
    let s = session(&emu, "dev1");
    emu.update_faults(|f| f.lost_answers.create.next = 1);
    let err = s.create_audience(&seed_request("Dropped")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutcomeUnknown, "{err:?}");
    assert_eq!(err.status(), None);

    let stats = emu.stats();
    assert_eq!(stats.requests_for(CREATE_ROUTE), 1);
    assert_eq!(stats.requests_with_status(CREATE_ROUTE, "dropped"), 1);
    assert_eq!(stats.received("create_audience"), 1, "not retried");
    assert_eq!(stats.creates, 1);
    assert_eq!(stats.lost_answers, 1);
    assert_eq!(stats.connections_dropped, 1);
    assert_eq!(emu.state().audiences_named("dev1", "Dropped").count(), 1);
    // The work was done: the lookup by name finds it.
    assert_eq!(s.find_audiences_by_name("Dropped").await.unwrap().len(), 1);

    let id = create_ready(&s, "Runs dropped").await;
    emu.update_faults(|f| f.lost_answers.start_run.next = 1);
    let err = s.start_run(&id, &run_request()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutcomeUnknown);
    assert_eq!(s.list_runs(&id).await.unwrap().len(), 1);
    assert_eq!(
        emu.stats()
            .requests_for("POST /data/core/ais/external-audience/{id}/runs"),
        1
    );
}

#[tokio::test]
async fn fifty_concurrent_calls_with_an_expired_token_mint_exactly_one_token() {
    let emu = start(|b| b.token_lifetime(Duration::from_secs(1))).await;
    let s = session(&emu, "dev1");
    let id = create_ready(&s, "Concurrent").await;
    assert_eq!(emu.stats().tokens_issued, 1);
    emu.update_settings(|s| s.token_lifetime_secs = 3600);

    // Let the one-second token expire on both sides.
    let expired_at = Instant::now() + Duration::from_millis(1100);
    while Instant::now() < expired_at {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let calls = (0..50).map(|_| {
        let s = s.clone();
        let id = id.clone();
        tokio::spawn(async move { s.get_audience(&id).await })
    });
    for call in futures::future::join_all(calls).await {
        call.unwrap().unwrap();
    }
    let stats = emu.stats();
    assert_eq!(stats.tokens_issued, 2, "one refresh for 50 callers");
    assert_eq!(stats.requests_for("GET /data/core/ups/audiences/{id}"), 50);
    assert_eq!(
        stats.requests_with_status("GET /data/core/ups/audiences/{id}", "401"),
        0
    );
}

#[tokio::test]
async fn docs_shaped_requests_are_answered_per_the_reference() {
    let emu = start(|b| b).await;
    let raw = Raw::new(&emu).await;
    use reqwest::Method;

    // Create without the trailing slash, ttlInDays as the string "40".
    let (status, created) = raw
        .send(
            Method::POST,
            "/data/core/ais/external-audience",
            Some(&seed_json("No slash")),
        )
        .await;
    assert_eq!(status, 202, "{created}");
    assert_eq!(created["operationDetails"]["ttlInDays"], 40);
    assert_eq!(created["operationDetails"]["sourceSpec"]["params"]["type"], "file");
    let op_id = created["operationId"].as_str().unwrap();

    // Singular and plural operation paths.
    for path in ["external-audience", "external-audiences"] {
        let (status, op) = raw
            .send(Method::GET, &format!("/data/core/ais/{path}/operations/{op_id}"), None)
            .await;
        assert_eq!(status, 200);
        assert_eq!(op["status"], "SUCCESS");
    }
    let (_, op) = raw
        .send(
            Method::GET,
            &format!("/data/core/ais/external-audience/operations/{op_id}"),
            None,
        )
        .await;
    let id = op["audienceId"].as_str().unwrap().to_owned();

    // Legacy create alias and flat sourceSpec.
    let mut legacy = seed_json("Legacy");
    legacy["sourceSpec"] = legacy["sourceSpec"]["params"].clone();
    let (status, _) = raw
        .send(Method::POST, "/data/core/ais/external-audience/submit", Some(&legacy))
        .await;
    assert_eq!(status, 202);

    // /run (singular) to start, /run/{id} and /runs/{id} to read.
    let (status, run) = raw
        .send(
            Method::POST,
            &format!("/data/core/ais/external-audience/{id}/run"),
            Some(&json!({"dataFilterStartTime": "764245635"})),
        )
        .await;
    assert_eq!(status, 200, "{run}");
    let run_id = run["runId"].as_str().unwrap();
    for seg in ["run", "runs"] {
        let (status, r) = raw
            .send(
                Method::GET,
                &format!("/data/core/ais/external-audience/{id}/{seg}/{run_id}"),
                None,
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(r["status"], "SUCCESS");
        assert_eq!(r["details"][0]["stage"], "DATASET_INGEST");
    }
    let (status, runs) = raw
        .send(
            Method::GET,
            &format!("/data/core/ais/external-audience/{id}/runs"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1);

    // Extend TTL.
    let (status, ext) = raw
        .send(
            Method::POST,
            &format!("/data/core/ais/external-audience/extend-ttl/{id}"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(ext, json!({"audienceId": id, "name": "No slash"}));

    // ups list: property filter, name contains (case-insensitive), paging links.
    let (_, by_prop) = raw
        .send(
            Method::GET,
            &format!("/data/core/ups/audiences?property=audienceId=={id}"),
            None,
        )
        .await;
    assert_eq!(by_prop["children"].as_array().unwrap().len(), 1);
    let (_, paged) = raw
        .send(Method::GET, "/data/core/ups/audiences?name=L&limit=1", None)
        .await;
    assert_eq!(paged["_page"]["totalCount"], 2);
    assert_eq!(
        paged["_links"]["next"]["href"],
        "@/audiences?start=1&limit=1&totalCount=2"
    );

    // Sandbox isolation: another sandbox sees nothing.
    let other = raw
        .req(Method::GET, &format!("/data/core/ups/audiences/{id}"), "dev2")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status().as_u16(), 404);

    // Delete with a trailing slash: 204, then 404.
    let (status, _) = raw
        .send(Method::DELETE, &format!("/data/core/ais/external-audience/{id}/"), None)
        .await;
    assert_eq!(status, 204);
    let (status, err) = raw
        .send(Method::DELETE, &format!("/data/core/ais/external-audience/{id}"), None)
        .await;
    assert_eq!(status, 404);
    assert_eq!(err["errorCode"], "100940-404");

    // Gateway errors of reference §6.1.
    let url = format!("{}/data/core/ups/audiences", raw.base);
    let gw = |resp: reqwest::Response| async move {
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap();
        (status, body["error_code"].as_str().unwrap_or_default().to_owned())
    };
    let http = &raw.http;
    assert_eq!(gw(http.get(&url).send().await.unwrap()).await, (401, "403010".into()));
    // A well-formed token the emulator never issued is the gateway's 401; a string that cannot be
    // a token at all is the catalogue's 400 `100911-400`.
    let unknown = format!("emu.{}.{}", "0".repeat(32), "f".repeat(32));
    assert_eq!(
        gw(http.get(&url).bearer_auth(&unknown).send().await.unwrap()).await,
        (401, "401013".into())
    );
    let forged = http.get(&url).bearer_auth("forged").send().await.unwrap();
    assert_eq!(forged.status().as_u16(), 400);
    let body: Value = forged.json().await.unwrap();
    assert_eq!(body["errorCode"], "100911-400", "{body}");
    assert_eq!(body["title"], "BAD_REQUEST");
    assert_eq!(body["detail"], "invalid token");
    let authed = || http.get(&url).bearer_auth(&raw.token);
    assert_eq!(gw(authed().send().await.unwrap()).await, (403, "403000".into()));
    assert_eq!(
        gw(authed().header("x-api-key", "other").send().await.unwrap()).await,
        (403, "403003".into())
    );
    assert_eq!(
        gw(authed().header("x-api-key", &raw.client_id).send().await.unwrap()).await,
        (400, "400003".into())
    );
}

#[tokio::test]
async fn the_seed_curl_calls_from_the_docs_work_against_the_emulator() {
    async fn curl(args: &[&str]) -> Value {
        let out = tokio::process::Command::new("curl")
            .arg("--silent")
            .arg("--show-error")
            .arg("--fail-with-body")
            .args(args)
            .output()
            .await
            .expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "curl {args:?} failed: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    let emu = start(|b| b).await;
    let base = emu.base_url().as_str().trim_end_matches('/').to_owned();
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/tutorial-curl.md"))
        .expect("docs/tutorial-curl.md exists");

    // 1. Token (docs: "Get an access token").
    let token_url = format!("{base}/ims/token/v3");
    assert!(docs.contains("/ims/token/v3"));
    let token = curl(&[
        "-X",
        "POST",
        &token_url,
        "-H",
        "Content-Type: application/x-www-form-urlencoded",
        "-d",
        "grant_type=client_credentials",
        "-d",
        "client_id=local-client",
        "-d",
        "client_secret=local-secret",
        "-d",
        "scope=openid,session,AdobeID,read_organizations,additional_info.projectedProductContext",
    ])
    .await;
    assert_eq!(token["token_type"], "bearer");
    assert_eq!(token["expires_in"], 86399);
    let access = token["access_token"].as_str().unwrap().to_owned();
    let auth = format!("Authorization: Bearer {access}");
    let headers = [
        "-H",
        auth.as_str(),
        "-H",
        "x-api-key: local-client",
        "-H",
        "x-gw-ims-org-id: LOCAL0RG@AdobeOrg",
        "-H",
        "x-sandbox-name: prod",
    ];

    // 2. Create (trailing slash, ttlInDays "40").
    assert!(docs.contains("/data/core/ais/external-audience/"));
    assert!(docs.contains("\"ttlInDays\": \"40\""));
    let create_url = format!("{base}/data/core/ais/external-audience/");
    let body = seed_json("Churn risk Q3").to_string();
    let mut args = vec!["-X", "POST", create_url.as_str()];
    args.extend(headers);
    args.extend(["-H", "Content-Type: application/json", "-d", body.as_str()]);
    let created = curl(&args).await;
    assert_eq!(created["operationDetails"]["ttlInDays"], 40);
    let op_id = created["operationId"].as_str().unwrap().to_owned();

    // 3. Operation status.
    assert!(docs.contains("/data/core/ais/external-audience/operations/"));
    let op_url = format!("{base}/data/core/ais/external-audience/operations/{op_id}");
    let mut args = vec!["-X", "GET", op_url.as_str()];
    args.extend(headers);
    let op = curl(&args).await;
    assert_eq!(op["status"], "SUCCESS");
    let audience_id = op["audienceId"].as_str().unwrap().to_owned();

    // 4. Start a run.
    assert!(docs.contains("/runs"));
    let runs_url = format!("{base}/data/core/ais/external-audience/{audience_id}/runs");
    let mut args = vec!["-X", "POST", runs_url.as_str()];
    args.extend(headers);
    args.extend([
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"dataFilterStartTime": 764245635}"#,
    ]);
    let run = curl(&args).await;
    assert_eq!(run["audienceId"], audience_id.as_str());
    let run_id = run["runId"].as_str().unwrap().to_owned();

    // 5. Run status.
    let run_url = format!("{runs_url}/{run_id}");
    let mut args = vec!["-X", "GET", run_url.as_str()];
    args.extend(headers);
    let status = curl(&args).await;
    assert_eq!(status["status"], "SUCCESS");
    assert_eq!(status["runId"], run_id.as_str());

    let stats = emu.stats();
    assert_eq!(stats.tokens_issued, 1);
    assert_eq!(stats.creates, 1);
    assert_eq!(stats.runs_started, 1);
}

#[tokio::test]
async fn ims_refuses_unknown_clients_and_scopes() {
    let emu = start(|b| {
        b.credential(CredentialSpec {
            client_id: "second".into(),
            client_secret: "second-secret".into(),
            org_id: "SECOND@AdobeOrg".into(),
            ..CredentialSpec::default()
        })
    })
    .await;
    let c = client(&emu);
    let mut unknown = Credentials::new("nobody", "x", "SECOND@AdobeOrg");
    unknown.ims_url = Some(emu.base_url());
    let err = c.session(&unknown, "prod").list_runs("a").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthorized);
    assert_eq!(err.status(), Some(400));
    assert_eq!(err.code(), Some("invalid_client"));

    let mut creds = emu.credentials();
    assert_eq!(creds.client_id, "second");
    creds.scopes = "openid,not_a_scope".into();
    let err = c.session(&creds, "prod").list_runs("a").await.unwrap_err();
    assert_eq!(err.code(), Some("invalid_scope"));

    // A token of one org is refused for another org.
    let mut cross = emu.credentials();
    cross.org_id = "OTHER@AdobeOrg".into();
    emu.admin()
        .add_credentials(&CredentialSpec {
            client_id: "second".into(),
            client_secret: "second-secret".into(),
            org_id: "SECOND@AdobeOrg".into(),
            ..CredentialSpec::default()
        })
        .await
        .unwrap();
    let ok = c
        .session(&emu.credentials(), "prod")
        .list_runs("missing")
        .await
        .unwrap_err();
    assert_eq!(ok.kind(), ErrorKind::NotFound);
    let err = c.session(&cross, "prod").list_runs("missing").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthorized);
    assert_eq!(err.code(), Some("100921-401"));
}

#[tokio::test]
async fn state_file_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let emu = start(|b| b.state_file(&path)).await;
    let id = create_ready(&session(&emu, "dev1"), "Persistent").await;
    let before = emu.stats();
    assert_eq!(before.received("create_audience"), 1);
    emu.shutdown().await.unwrap();
    assert!(path.exists());

    // The counters of what clients sent survive too: a soak that restarts the emulator still
    // counts every request.
    let emu = start(|b| b.state_file(&path)).await;
    assert_eq!(emu.stats(), before);
    let record = session(&emu, "dev1").get_audience(&id).await.unwrap();
    assert_eq!(record.name, "Persistent");
    assert_eq!(
        emu.stats().received("get_audience"),
        before.received("get_audience") + 1
    );
}

#[tokio::test]
async fn failures_injected_into_operations_and_runs_are_reported() {
    let emu = start(|b| {
        b.faults(Faults {
            fail_next_operations: 1,
            operation_failure_message: Some("Dataset creation failed: quota exceeded".into()),
            fail_next_runs: 1,
            run_failure_message: Some("malformed row 17".into()),
            ..Faults::default()
        })
    })
    .await;
    let s = session(&emu, "dev1");
    let created = s.create_audience(&seed_request("Fails")).await.unwrap();
    let op = s.get_operation(&created.operation_id).await.unwrap();
    assert_eq!(op.status, OperationStatus::Failed);
    assert_eq!(op.audience_id, None);
    assert_eq!(op.message.as_deref(), Some("Dataset creation failed: quota exceeded"));

    let id = create_ready(&s, "Fails").await;
    let run = s.start_run(&id, &run_request()).await.unwrap();
    assert_eq!(run_to_end(&s, &id, &run.run_id).await, RunStatus::Failed);
    let failed = s.get_run(&id, &run.run_id).await.unwrap();
    assert_eq!(failed.message.as_deref(), Some("malformed row 17"));
    assert_eq!(failed.details[0].message.as_deref(), Some("malformed row 17"));
    let admin = emu.admin();
    let stats = admin.stats().await.unwrap();
    assert_eq!(stats.runs_started, 1);
    admin
        .mutate_audience(
            &id,
            &aep_emulator::AudienceMutation {
                description: Some("changed behind your back".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        s.get_audience(&id).await.unwrap().description.as_deref(),
        Some("changed behind your back")
    );
    admin.delete_audience(&id).await.unwrap();
    assert_eq!(s.get_audience(&id).await.unwrap_err().kind(), ErrorKind::NotFound);
}

// ---------------------------------------------------------------------------------------------
// Behaviours the docs leave open (settings) and fidelity of the emulator
// ---------------------------------------------------------------------------------------------

/// A client whose every call gives up after one attempt and `timeout`.
fn bare_session(emu: &RunningEmulator, timeout: Duration) -> Session {
    AepClient::new(ClientConfig {
        requests_per_second: 10_000,
        request_timeout: timeout,
        max_retries: 0,
        ..emu.client_config()
    })
    .expect("client builds")
    .session(&emu.credentials(), "dev1")
}

/// `?k=v&…`, form-encoded.
fn query(pairs: &[(&str, &str)]) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        q.append_pair(k, v);
    }
    format!("?{}", q.finish())
}

/// Waits until `check` holds, failing after `deadline`.
async fn eventually<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + deadline;
    while !check().await {
        assert!(Instant::now() < until, "{what}: not within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn duplicate_names_are_rejected_or_allowed_per_setting() {
    // Reject (default): even while the first create is still PROCESSING.
    let emu = start(|b| b.operation_timing(Duration::from_millis(400), 0)).await;
    let s = session(&emu, "dev1");
    let first = s.create_audience(&seed_request("Same name")).await.unwrap();
    let dup = s.create_audience(&seed_request("Same name")).await.unwrap_err();
    assert_eq!(dup.kind(), ErrorKind::Conflict);
    assert_eq!(dup.status(), Some(409));
    assert_eq!(dup.code(), Some("100950-409"));
    assert!(dup.message().starts_with("name:"), "{}", dup.message());
    assert_eq!(
        s.get_operation(&first.operation_id).await.unwrap().status,
        OperationStatus::Processing,
        "the conflict came from an unfinished create"
    );
    // Case-sensitive: another spelling is another name.
    s.create_audience(&seed_request("same name")).await.unwrap();
    let state = emu.admin().state().await.unwrap();
    assert_eq!(state.audiences_named("dev1", "Same name").count(), 1);
    assert_eq!(emu.stats().create_conflicts, 1);

    // Allow, switched at runtime through PUT /_emulator/config.
    let admin = emu.admin();
    let mut config = admin.config().await.unwrap();
    assert_eq!(config.duplicate_names, DuplicateNames::Reject);
    config.duplicate_names = DuplicateNames::Allow;
    assert_eq!(
        admin.set_config(&config).await.unwrap().duplicate_names,
        DuplicateNames::Allow
    );
    s.create_audience(&seed_request("Same name")).await.unwrap();
    let state = admin.state().await.unwrap();
    let twins: Vec<_> = state.audiences_named("dev1", "Same name").collect();
    assert_eq!(twins.len(), 2, "{state:?}");
    assert_ne!(twins[0].audience_id, twins[1].audience_id);
}

#[tokio::test]
async fn custom_audience_id_unique_is_echoed_and_enforced() {
    let emu = start(|b| b.operation_timing(Duration::from_millis(300), 0)).await;
    let s = session(&emu, "dev1");
    let raw = Raw::new(&emu).await;
    let mut req = seed_request("With cid");
    req.custom_audience_id = Some("crm-churn-q3".into());
    let created = s.create_audience(&req).await.unwrap();
    let echoed = created.operation_details.as_ref().unwrap();
    assert_eq!(echoed.custom_audience_id.as_deref(), Some("crm-churn-q3"));

    // Reused while the first create is still running: 409.
    let mut again = seed_request("Other name");
    again.custom_audience_id = Some("crm-churn-q3".into());
    let dup = s.create_audience(&again).await.unwrap_err();
    assert_eq!(dup.kind(), ErrorKind::Conflict);
    assert_eq!(dup.code(), Some("100950-409"));
    assert!(dup.message().starts_with("customAudienceId:"), "{}", dup.message());

    let id = create_ready_op(&s, &created.operation_id).await;
    let op = s.get_operation(&created.operation_id).await.unwrap();
    let details = op.operation_details.unwrap();
    assert_eq!(details.custom_audience_id.as_deref(), Some("crm-churn-q3"));
    let (status, found) = raw
        .send(
            reqwest::Method::GET,
            &format!(
                "/data/core/ups/audiences{}",
                query(&[("property", "audienceId==crm-churn-q3")])
            ),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let children = found["children"].as_array().unwrap();
    assert_eq!(children.len(), 1, "{found}");
    assert_eq!(children[0]["id"], id.as_str());
    assert_eq!(children[0]["audienceId"], "crm-churn-q3");
    let patched = s
        .patch_audience(
            &id,
            &PatchAudienceRequest {
                description: Some("x".into()),
                ..PatchAudienceRequest::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(patched.custom_audience_id.as_deref(), Some("crm-churn-q3"));
    let view = emu.state();
    assert_eq!(
        view.audience(&id).unwrap().custom_audience_id.as_deref(),
        Some("crm-churn-q3")
    );
    // After the first finished, still taken.
    let dup = s.create_audience(&again).await.unwrap_err();
    assert_eq!(dup.code(), Some("100950-409"));
    assert_eq!(emu.stats().create_conflicts, 2);
}

#[tokio::test]
async fn custom_audience_id_ignore_drops_it_everywhere() {
    let emu = start(|b| b.configure(|s| s.custom_audience_id = CustomAudienceIdModel::Ignore)).await;
    let s = session(&emu, "dev1");
    let raw = Raw::new(&emu).await;
    let mut req = seed_request("Ignored cid");
    req.custom_audience_id = Some("crm-1".into());
    let created = s.create_audience(&req).await.unwrap();
    assert_eq!(created.operation_details.unwrap().custom_audience_id, None);
    let id = create_ready_op(&s, &created.operation_id).await;
    let op = s.get_operation(&created.operation_id).await.unwrap();
    assert_eq!(op.operation_details.unwrap().custom_audience_id, None);
    let record = s.get_audience(&id).await.unwrap();
    assert_eq!(record.audience_id.as_deref(), Some(id.as_str()), "audienceId = id");
    let (_, found) = raw
        .send(
            reqwest::Method::GET,
            &format!(
                "/data/core/ups/audiences{}",
                query(&[("property", "audienceId==crm-1")])
            ),
            None,
        )
        .await;
    assert_eq!(found["children"].as_array().unwrap().len(), 0, "{found}");
    let patched = s
        .patch_audience(
            &id,
            &PatchAudienceRequest {
                description: Some("x".into()),
                ..PatchAudienceRequest::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(patched.custom_audience_id, None);
    assert_eq!(emu.state().audience(&id).unwrap().custom_audience_id, None);

    // Never checked: the same value (with another name) is accepted.
    let mut again = seed_request("Ignored cid 2");
    again.custom_audience_id = Some("crm-1".into());
    create_ready_op(&s, &s.create_audience(&again).await.unwrap().operation_id).await;
    assert_eq!(emu.stats().create_conflicts, 0);
}

/// Polls one operation until SUCCESS; returns the audience ID.
async fn create_ready_op(s: &Session, operation_id: &str) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let op = s.get_operation(operation_id).await.expect("operation readable");
        match op.status {
            OperationStatus::Success => return op.audience_id.expect("audience id on success"),
            OperationStatus::Failed => panic!("operation failed"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "operation did not finish in time");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const OPERATION_DELAY: Duration = Duration::from_millis(400);

#[tokio::test]
async fn lookup_visibility_immediate_shows_the_audience_at_once() {
    let emu = start(|b| {
        b.operation_timing(OPERATION_DELAY, 0)
            .configure(|s| s.lookup_visibility = LookupVisibility::Immediate)
    })
    .await;
    let s = session(&emu, "dev1");
    let created = s.create_audience(&seed_request("At once")).await.unwrap();
    let found = s.find_audiences_by_name("At once").await.unwrap();
    assert_eq!(found.len(), 1);
    let id = found[0].id.clone();
    s.start_run(&id, &run_request()).await.unwrap();
    let view = emu.state();
    let a = view.audience(&id).unwrap();
    assert!(a.visible && a.lookup_visible, "{a:?}");
    // The operation keeps its own rules.
    let op = s.get_operation(&created.operation_id).await.unwrap();
    assert_eq!(op.status, OperationStatus::Processing);
}

#[tokio::test]
async fn lookup_visibility_after_operation_is_time_based_without_polls() {
    let emu = start(|b| b.operation_timing(OPERATION_DELAY, 0)).await;
    let s = session(&emu, "dev1");
    let sent = Instant::now();
    s.create_audience(&seed_request("Later")).await.unwrap();
    assert!(s.find_audiences_by_name("Later").await.unwrap().is_empty());
    let view = emu.state();
    let a = view.audiences_named("dev1", "Later").next().unwrap().clone();
    assert!(!a.visible && !a.lookup_visible, "{a:?}");
    assert!(a.created_at_ms > 0);
    let not_yet = s.start_run(&a.audience_id, &run_request()).await.unwrap_err();
    assert_eq!(not_yet.kind(), ErrorKind::NotFound);
    assert!(
        sent.elapsed() < OPERATION_DELAY,
        "the checks above ran too late to prove anything"
    );
    // Never polling the operation: it shows up once the delay has passed.
    eventually("audience visible in lookups", DEADLINE, || async {
        !s.find_audiences_by_name("Later").await.unwrap().is_empty()
    })
    .await;
    assert!(sent.elapsed() >= OPERATION_DELAY);
    assert_eq!(emu.stats().operation_polls, 0);
    s.start_run(&a.audience_id, &run_request()).await.unwrap();
}

#[tokio::test]
async fn lookup_visibility_lagged_serves_ais_before_the_lookups() {
    let lag = Duration::from_millis(600);
    let emu = start(|b| {
        b.operation_timing(OPERATION_DELAY, 0).configure(|s| {
            s.lookup_visibility = LookupVisibility::Lagged;
            s.lookup_lag_ms = 600;
        })
    })
    .await;
    let s = session(&emu, "dev1");
    let sent = Instant::now();
    let created = s.create_audience(&seed_request("Lagging")).await.unwrap();
    let id = create_ready_op(&s, &created.operation_id).await;
    // Operation SUCCESS and the ais routes work, while the lookups do not know it yet.
    let run = s.start_run(&id, &run_request()).await.unwrap();
    assert_eq!(run_to_end(&s, &id, &run.run_id).await, RunStatus::Success);
    assert_eq!(s.list_runs(&id).await.unwrap().len(), 1);
    assert_eq!(s.get_audience(&id).await.unwrap_err().kind(), ErrorKind::NotFound);
    assert!(s.find_audiences_by_name("Lagging").await.unwrap().is_empty());
    let view = emu.state();
    let a = view.audience(&id).unwrap();
    assert!(a.visible && !a.lookup_visible, "{a:?}");
    assert!(
        sent.elapsed() < OPERATION_DELAY + lag,
        "the checks above ran too late to prove anything"
    );
    eventually("audience visible in lookups", DEADLINE, || async {
        s.get_audience(&id).await.is_ok()
    })
    .await;
    assert!(sent.elapsed() >= OPERATION_DELAY + lag);
    assert_eq!(s.find_audiences_by_name("Lagging").await.unwrap().len(), 1);
}

/// The four calls whose answers can be lost.
#[derive(Debug, Clone, Copy)]
enum Losable {
    Create,
    StartRun,
    Patch,
    Delete,
}

const MODES: [LostMode; 3] = [LostMode::Drop, LostMode::Error500, LostMode::Timeout];
const CLIENT_TIMEOUT: Duration = Duration::from_millis(500);

/// For each mode: the work is done, the client gets the expected kind of error, the stats count it.
async fn lost_answer_leaves_the_work_done(call: Losable) {
    for mode in MODES {
        let emu = start(|b| b).await;
        let s = bare_session(&emu, CLIENT_TIMEOUT);
        let admin = emu.admin();
        let id = match call {
            Losable::Create => String::new(),
            _ => create_ready(&s, "Target").await,
        };
        let lost = LostAnswer {
            next: 1,
            mode,
            ..LostAnswer::default()
        };
        let mut faults = Faults {
            hang_ms: 3_000,
            ..Faults::default()
        };
        match call {
            Losable::Create => faults.lost_answers.create = lost,
            Losable::StartRun => faults.lost_answers.start_run = lost,
            Losable::Patch => faults.lost_answers.patch = lost,
            Losable::Delete => faults.lost_answers.delete = lost,
        }
        admin.set_faults(&faults).await.unwrap();
        let sent = Instant::now();
        let err = match call {
            Losable::Create => s.create_audience(&seed_request("Lost")).await.map(drop),
            Losable::StartRun => s.start_run(&id, &run_request()).await.map(drop),
            Losable::Patch => s
                .patch_audience(
                    &id,
                    &PatchAudienceRequest {
                        description: Some("patched before the answer was lost".into()),
                        ..PatchAudienceRequest::default()
                    },
                )
                .await
                .map(drop),
            Losable::Delete => s.delete_audience(&id).await,
        }
        .expect_err("the answer is lost");
        let elapsed = sent.elapsed();
        match call {
            Losable::Create | Losable::StartRun => {
                assert_eq!(err.kind(), ErrorKind::OutcomeUnknown, "{call:?} {mode:?}: {err:?}")
            }
            Losable::Patch | Losable::Delete => assert!(
                matches!(err.kind(), ErrorKind::Retryable { .. }),
                "{call:?} {mode:?}: {err:?}"
            ),
        }
        match mode {
            LostMode::Error500 => {
                assert_eq!(err.status(), Some(500), "{call:?}: {err:?}");
                assert_eq!(err.code(), Some("100970-500"));
            }
            LostMode::Drop => assert_eq!(err.status(), None, "{call:?}: {err:?}"),
            LostMode::Timeout => {
                assert_eq!(err.status(), None, "{call:?}: {err:?}");
                assert_eq!(err.category(), "timeout", "{call:?}: {err:?}");
                assert!(
                    elapsed < Duration::from_millis(2_500),
                    "client timeout fired first: {elapsed:?}"
                );
            }
        }
        // The work was done.
        let state = admin.state().await.unwrap();
        match call {
            Losable::Create => {
                assert_eq!(state.audiences_named("dev1", "Lost").count(), 1, "{mode:?}");
                assert_eq!(state.operations.len(), 1, "{mode:?}");
            }
            Losable::StartRun => assert_eq!(state.audience(&id).unwrap().runs.len(), 1, "{mode:?}"),
            Losable::Patch => assert_eq!(
                state.audience(&id).unwrap().description.as_deref(),
                Some("patched before the answer was lost"),
                "{mode:?}"
            ),
            Losable::Delete => assert!(state.audience(&id).is_none(), "{mode:?}"),
        }
        let stats = admin.stats().await.unwrap();
        assert_eq!(stats.lost_answers, 1, "{call:?} {mode:?}");
        let dropped = u64::from(mode != LostMode::Error500);
        assert_eq!(stats.connections_dropped, dropped, "{call:?} {mode:?}");
        let op = match call {
            Losable::Create => "create_audience",
            Losable::StartRun => "start_run",
            Losable::Patch => "patch_audience",
            Losable::Delete => "delete_audience",
        };
        assert_eq!(stats.received(op), 1, "{call:?} {mode:?}: one request, not retried");
    }
}

#[tokio::test]
async fn lost_create_answers_leave_the_audience_created() {
    lost_answer_leaves_the_work_done(Losable::Create).await;
}

#[tokio::test]
async fn lost_start_run_answers_leave_the_run_started() {
    lost_answer_leaves_the_work_done(Losable::StartRun).await;
}

#[tokio::test]
async fn lost_patch_answers_leave_the_patch_applied() {
    lost_answer_leaves_the_work_done(Losable::Patch).await;
}

#[tokio::test]
async fn lost_delete_answers_leave_the_audience_deleted() {
    lost_answer_leaves_the_work_done(Losable::Delete).await;
}

#[tokio::test]
async fn lost_answers_fire_only_for_calls_that_succeed() {
    let emu = start(|b| {
        b.faults(Faults {
            lost_answers: aep_emulator::LostAnswers {
                create: LostAnswer {
                    all: true,
                    mode: LostMode::Error500,
                    ..LostAnswer::default()
                },
                delete: LostAnswer {
                    all: true,
                    mode: LostMode::Error500,
                    ..LostAnswer::default()
                },
                ..Default::default()
            },
            ..Faults::default()
        })
    })
    .await;
    let s = bare_session(&emu, Duration::from_secs(5));
    let mut invalid = seed_request("Invalid");
    invalid.fields.clear();
    let err = s.create_audience(&invalid).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Terminal);
    let err = s.delete_audience("missing").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(emu.stats().lost_answers, 0);
    // A duplicate is refused (409), not lost, even with every create answer lost.
    let _ = s.create_audience(&seed_request("Once")).await.unwrap_err();
    let dup = s.create_audience(&seed_request("Once")).await.unwrap_err();
    assert_eq!(dup.kind(), ErrorKind::Conflict);
    assert_eq!(emu.stats().lost_answers, 1);
}

#[tokio::test]
async fn runs_per_audience_window_is_lifetime_or_day() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let emu = start(|b| b.state_file(&path).configure(|s| s.max_runs_per_audience = 2)).await;
    let s = session(&emu, "dev1");
    let id = create_ready(&s, "Daily").await;
    for _ in 0..2 {
        let run = s.start_run(&id, &run_request()).await.unwrap();
        run_to_end(&s, &id, &run.run_id).await;
    }
    emu.shutdown().await.unwrap();

    // Move both runs (and the sandbox's run log) to yesterday.
    const DAY_MS: i64 = 86_400_000;
    let mut store: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for tenant in store["tenants"].as_object_mut().unwrap().values_mut() {
        for audience in tenant["audiences"].as_object_mut().unwrap().values_mut() {
            for run in audience["runs"].as_array_mut().unwrap() {
                for key in ["created_at_ms", "ready_at_ms"] {
                    run[key] = json!(run[key].as_i64().unwrap() - DAY_MS);
                }
            }
        }
        let log = tenant["runs_per_day"].as_object().unwrap().clone();
        assert_eq!(log.values().map(|v| v.as_u64().unwrap()).sum::<u64>(), 2, "{log:?}");
        tenant["runs_per_day"] = Value::Object(
            log.into_iter()
                .map(|(day, n)| ((day.parse::<i64>().unwrap() - 1).to_string(), n))
                .collect(),
        );
    }
    std::fs::write(&path, serde_json::to_vec(&store).unwrap()).unwrap();

    let emu = start(|b| b.state_file(&path).configure(|s| s.max_runs_per_audience = 2)).await;
    let s = session(&emu, "dev1");
    let lifetime = s.start_run(&id, &run_request()).await.unwrap_err();
    assert!(matches!(lifetime.kind(), ErrorKind::NotNow { .. }), "{lifetime:?}");
    assert!(lifetime.message().contains("per audience"), "{}", lifetime.message());

    emu.update_settings(|s| s.runs_per_audience_window = RunWindow::Day);
    for _ in 0..2 {
        let run = s.start_run(&id, &run_request()).await.unwrap();
        run_to_end(&s, &id, &run.run_id).await;
    }
    let daily = s.start_run(&id, &run_request()).await.unwrap_err();
    assert!(matches!(daily.kind(), ErrorKind::NotNow { .. }), "{daily:?}");
    assert!(daily.message().contains("per audience per day"), "{}", daily.message());
    assert_eq!(emu.state().audience(&id).unwrap().runs.len(), 4);
}

#[tokio::test]
async fn sandbox_run_quota_counts_runs_of_deleted_audiences() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let configure = |b: EmulatorBuilder| b.state_file(&path).configure(|s| s.max_runs_per_sandbox_per_day = 3);
    let emu = start(configure).await;
    let s = session(&emu, "dev1");
    let gone = create_ready(&s, "Gone").await;
    for _ in 0..2 {
        let run = s.start_run(&gone, &run_request()).await.unwrap();
        run_to_end(&s, &gone, &run.run_id).await;
    }
    s.delete_audience(&gone).await.unwrap();
    let also_gone = create_ready(&s, "Also gone").await;
    s.start_run(&also_gone, &run_request()).await.unwrap();
    emu.admin().delete_audience(&also_gone).await.unwrap();

    let kept = create_ready(&s, "Kept").await;
    let refused = s.start_run(&kept, &run_request()).await.unwrap_err();
    assert!(matches!(refused.kind(), ErrorKind::NotNow { .. }), "{refused:?}");
    assert!(
        refused.message().contains("per sandbox per day"),
        "{}",
        refused.message()
    );
    // Another sandbox has its own quota.
    let other = session(&emu, "dev2");
    let elsewhere = create_ready(&other, "Elsewhere").await;
    other.start_run(&elsewhere, &run_request()).await.unwrap();
    let refusals = emu.stats().guardrail_refusals;
    assert_eq!(refusals, 1);
    emu.shutdown().await.unwrap();

    // The log is persisted (and so are the counters).
    let emu = start(configure).await;
    let s = session(&emu, "dev1");
    let refused = s.start_run(&kept, &run_request()).await.unwrap_err();
    assert!(
        refused.message().contains("per sandbox per day"),
        "{}",
        refused.message()
    );
    assert_eq!(emu.stats().guardrail_refusals, refusals + 1);
}

#[tokio::test]
async fn failed_operations_and_runs_carry_no_message_by_default() {
    let emu = start(|b| {
        b.faults(Faults {
            fail_next_operations: 1,
            fail_next_runs: 1,
            ..Faults::default()
        })
    })
    .await;
    assert_eq!(emu.admin().faults().await.unwrap().operation_failure_message, None);
    let raw = Raw::new(&emu).await;
    use reqwest::Method;
    let (status, created) = raw
        .send(
            Method::POST,
            "/data/core/ais/external-audience/",
            Some(&seed_json("Fails")),
        )
        .await;
    assert_eq!(status, 202);
    let op_id = created["operationId"].as_str().unwrap();
    let (_, op) = raw
        .send(
            Method::GET,
            &format!("/data/core/ais/external-audience/operations/{op_id}"),
            None,
        )
        .await;
    assert_eq!(op["status"], "FAILED", "{op}");
    let keys: Vec<&String> = op.as_object().unwrap().keys().collect();
    for absent in ["message", "audienceId", "failureReason", "errorMessage"] {
        assert!(op.get(absent).is_none(), "{absent} in {keys:?}");
    }
    // The typed client sees no message either.
    let s = session(&emu, "dev1");
    assert_eq!(s.get_operation(op_id).await.unwrap().message, None);

    let id = create_ready(&s, "Fails").await;
    let (status, run) = raw
        .send(
            Method::POST,
            &format!("/data/core/ais/external-audience/{id}/runs"),
            Some(&json!({"dataFilterStartTime": 764245635})),
        )
        .await;
    assert_eq!(status, 200);
    let run_id = run["runId"].as_str().unwrap();
    let (_, got) = raw
        .send(
            Method::GET,
            &format!("/data/core/ais/external-audience/{id}/runs/{run_id}"),
            None,
        )
        .await;
    assert_eq!(got["status"], "FAILED", "{got}");
    assert!(got.get("message").is_none(), "{got}");
    let details = got["details"].as_array().unwrap();
    assert_eq!(details.len(), 2);
    for stage in details {
        assert_eq!(stage["status"], "FAILED", "{got}");
        assert!(stage.get("message").is_none(), "{got}");
    }
    let (_, list) = raw
        .send(
            Method::GET,
            &format!("/data/core/ais/external-audience/{id}/runs"),
            None,
        )
        .await;
    assert!(list["runs"][0].get("message").is_none(), "{list}");
}

#[tokio::test]
async fn entitlements_and_malformed_tokens_get_the_catalogue_codes() {
    let spec = |id: &str, entitlement| CredentialSpec {
        client_id: id.into(),
        client_secret: format!("{id}-secret"),
        org_id: "ENT@AdobeOrg".into(),
        entitlement,
    };
    let emu = start(|b| {
        b.credential(spec("full", Entitlement::Full))
            .credential(spec("no-api", Entitlement::NoExternalAudienceApi))
            .credential(spec("no-profile", Entitlement::InvalidProfile))
            .credential(spec("no-region", Entitlement::NoRegion))
    })
    .await;
    let c = client(&emu);
    let creds = |id: &str| {
        let mut creds = Credentials::new(id, format!("{id}-secret"), "ENT@AdobeOrg");
        creds.ims_url = Some(emu.base_url());
        creds.platform_url = Some(emu.base_url());
        creds
    };
    let ok = c
        .session(&creds("full"), "prod")
        .list_runs("missing")
        .await
        .unwrap_err();
    assert_eq!(ok.kind(), ErrorKind::NotFound);

    let err = c
        .session(&creds("no-api"), "prod")
        .list_runs("missing")
        .await
        .unwrap_err();
    assert_eq!((err.status(), err.code()), (Some(401), Some("100922-401")), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::Unauthorized);
    let err = c
        .session(&creds("no-profile"), "prod")
        .list_runs("missing")
        .await
        .unwrap_err();
    assert_eq!((err.status(), err.code()), (Some(403), Some("403025")), "{err:?}");
    assert_eq!(err.message(), "Profile is not valid");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    let err = c
        .session(&creds("no-region"), "prod")
        .list_runs("missing")
        .await
        .unwrap_err();
    assert_eq!((err.status(), err.code()), (Some(403), Some("403027")), "{err:?}");
    assert_eq!(err.message(), "User region is missing");
    // Tokens are issued all the same (the 401 cost one refresh).
    assert_eq!(emu.stats().tokens_issued, 5);
    assert_eq!(emu.stats().token_refusals, 0);
    let listed = emu.admin().config().await.map(drop);
    assert!(listed.is_ok());

    // Malformed bearer strings are 100911-400, whatever else is sent.
    let url = format!("{}data/core/ups/audiences", emu.base_url());
    for token in [
        "forged",
        "emu.short.token",
        "emu.0123.4567",
        &format!("emu.{}", "a".repeat(65)),
    ] {
        let resp = reqwest::Client::new()
            .get(&url)
            .bearer_auth(token)
            .header("x-api-key", "full")
            .header("x-gw-ims-org-id", "ENT@AdobeOrg")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400, "{token}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["errorCode"], "100911-400", "{token}: {body}");
    }
}

#[tokio::test]
async fn injected_errors_and_refusals_use_catalogue_codes_only() {
    let emu = start(|b| b.run_timing(Duration::ZERO, 100)).await;
    let raw = Raw::new(&emu).await;
    let admin = emu.admin();
    let list = format!("{}/data/core/ups/audiences", raw.base);
    let call = || async {
        let resp = raw
            .http
            .get(&list)
            .bearer_auth(&raw.token)
            .header("x-api-key", &raw.client_id)
            .header("x-gw-ims-org-id", &raw.org)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        (status, retry_after, resp.json::<Value>().await.unwrap())
    };
    admin
        .set_faults(&Faults {
            rate_limit_next: 1,
            unavailable_next: 1,
            retry_after_secs: 2,
            ..Faults::default()
        })
        .await
        .unwrap();
    let (status, retry_after, body) = call().await;
    assert_eq!((status, retry_after.as_deref()), (429, Some("2")));
    assert_eq!(
        body,
        json!({"title": "TOO_MANY_REQUESTS", "status": 429, "detail": "Too many requests"})
    );
    let (status, retry_after, body) = call().await;
    assert_eq!((status, retry_after.as_deref()), (503, Some("2")));
    assert!(body.get("errorCode").is_none() && body.get("type").is_none(), "{body}");
    admin
        .set_faults(&Faults {
            server_error_probability: 1.0,
            ..Faults::default()
        })
        .await
        .unwrap();
    let (status, _, body) = call().await;
    assert_eq!(
        (status, body["errorCode"].as_str()),
        (500, Some("100970-500")),
        "{body}"
    );
    admin.set_faults(&Faults::default()).await.unwrap();

    // Run in progress: 422 100960-422, or 409 DUPLICATE_RESOURCE (the catalogue's only 409).
    let s = session(&emu, "dev1");
    let id = create_ready(&s, "Busy").await;
    s.start_run(&id, &run_request()).await.unwrap();
    let runs = format!("/data/core/ais/external-audience/{id}/runs");
    let body = json!({"dataFilterStartTime": 764245635});
    let (status, err) = raw.send(reqwest::Method::POST, &runs, Some(&body)).await;
    assert_eq!((status, err["errorCode"].as_str()), (422, Some("100960-422")), "{err}");
    emu.update_settings(|s| s.run_in_progress_status = 409);
    let (status, err) = raw.send(reqwest::Method::POST, &runs, Some(&body)).await;
    assert_eq!((status, err["errorCode"].as_str()), (409, Some("100950-409")), "{err}");
    assert_eq!(err["title"], "DUPLICATE_RESOURCE");
    let refused = s.start_run(&id, &run_request()).await.unwrap_err();
    assert!(matches!(refused.kind(), ErrorKind::NotNow { .. }), "{refused:?}");

    // Guardrail configured as 429: Retry-After, no platform code.
    emu.update_settings(|s| {
        s.run_in_progress_status = 422;
        s.max_runs_per_audience = 1;
        s.guardrail_status = 429;
        s.guardrail_retry_after_secs = 60;
        s.run_polls = 0;
    });
    let other = create_ready(&s, "Other").await;
    let run = s.start_run(&other, &run_request()).await.unwrap();
    run_to_end(&s, &other, &run.run_id).await;
    let resp = raw
        .req(
            reqwest::Method::POST,
            &format!("/data/core/ais/external-audience/{other}/runs"),
            "dev1",
        )
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(resp.headers()["retry-after"], "60");
    let err: Value = resp.json().await.unwrap();
    assert!(err.get("errorCode").is_none(), "{err}");
    assert!(err["detail"].as_str().unwrap().contains("per audience"), "{err}");
}

#[tokio::test]
async fn received_counts_every_aep_request_before_auth_and_faults() {
    let emu = start(|b| b).await;
    let raw = Raw::new(&emu).await;
    use reqwest::Method;
    // Refused by the gateway (no token) and by an injected fault: counted all the same.
    let anonymous = raw
        .http
        .post(format!("{}/data/core/ais/external-audience/", raw.base))
        .json(&seed_json("Anonymous"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    emu.update_faults(|f| f.rate_limit_next = 1);
    let (status, _) = raw
        .send(
            Method::POST,
            "/data/core/ais/external-audience",
            Some(&seed_json("Throttled")),
        )
        .await;
    assert_eq!(status, 429);
    let (_, created) = raw
        .send(
            Method::POST,
            "/data/core/ais/external-audience/",
            Some(&seed_json("Counted")),
        )
        .await;
    let op_id = created["operationId"].as_str().unwrap();
    let (_, op) = raw
        .send(
            Method::GET,
            &format!("/data/core/ais/external-audiences/operations/{op_id}"),
            None,
        )
        .await;
    let id = op["audienceId"].as_str().unwrap().to_owned();
    let ea = "/data/core/ais/external-audience";
    let run_body = json!({"dataFilterStartTime": 1});
    let (_, run) = raw.send(Method::POST, &format!("{ea}/{id}/run"), Some(&run_body)).await;
    let run_id = run["runId"].as_str().unwrap();
    raw.send(Method::GET, &format!("{ea}/{id}/runs/{run_id}"), None).await;
    raw.send(Method::GET, &format!("{ea}/{id}/runs/"), None).await;
    raw.send(Method::PATCH, &format!("{ea}/{id}"), Some(&json!({"description": "d"})))
        .await;
    raw.send(Method::POST, &format!("{ea}/extend-ttl/{id}"), None).await;
    raw.send(Method::GET, "/data/core/ups/audiences", None).await;
    raw.send(Method::GET, &format!("/data/core/ups/audiences/{id}"), None)
        .await;
    raw.send(Method::DELETE, &format!("{ea}/{id}/"), None).await;
    raw.send(Method::DELETE, &format!("/data/core/ups/audiences/{id}"), None)
        .await;
    raw.send(Method::GET, "/data/core/ais/no-such-route", None).await;

    let stats = emu.admin().stats().await.unwrap();
    let expected = [
        ("create_audience", 3),
        ("get_operation", 1),
        ("start_run", 1),
        ("get_run", 1),
        ("list_runs", 1),
        ("patch_audience", 1),
        ("extend_ttl", 1),
        ("list_audiences", 1),
        ("get_audience", 1),
        ("delete_audience", 1),
        ("delete_ups_audience", 1),
    ];
    for (op, n) in expected {
        assert_eq!(stats.received(op), n, "{op}: {:?}", stats.received);
    }
    assert_eq!(stats.received.len(), expected.len(), "{:?}", stats.received);
    assert_eq!(stats.create_requests, 1, "only one create passed auth and faults");
}

#[tokio::test]
async fn ups_entity_type_filter_keeps_people_audiences_only() {
    let emu = start(|b| b).await;
    let s = session(&emu, "dev1");
    let id = create_ready(&s, "People").await;
    let raw = Raw::new(&emu).await;
    let list = |entity: &'static str| {
        let raw = &raw;
        async move {
            let (status, body) = raw
                .send(
                    reqwest::Method::GET,
                    &format!("/data/core/ups/audiences{}", query(&[("entityType", entity)])),
                    None,
                )
                .await;
            assert_eq!(status, 200);
            body["children"].as_array().unwrap().clone()
        }
    };
    let people = list("_xdm.context.profile").await;
    assert_eq!(people.len(), 1);
    assert_eq!(people[0]["id"], id.as_str());
    assert_eq!(people[0]["entityType"], "_xdm.context.profile");
    assert!(list("_xdm.context.account").await.is_empty());
    assert_eq!(
        s.get_audience(&id).await.unwrap().entity_type.as_deref(),
        Some("_xdm.context.profile")
    );
}

#[tokio::test]
async fn runs_list_honours_limit_sort_and_property_filters() {
    let emu = start(|b| b).await;
    let s = session(&emu, "dev1");
    let id = create_ready(&s, "Demo audience").await;
    let mut ids = Vec::new();
    for fail in [false, true, false] {
        emu.update_faults(|f| f.fail_next_runs = u32::from(fail));
        let run = s.start_run(&id, &run_request()).await.unwrap();
        run_to_end(&s, &id, &run.run_id).await;
        ids.push(run.run_id);
    }
    let raw = Raw::new(&emu).await;
    let now = jiff::Timestamp::now().as_second();
    let list = |pairs: Vec<(&'static str, String)>| {
        let raw = &raw;
        let id = id.clone();
        async move {
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            raw.send(
                reqwest::Method::GET,
                &format!("/data/core/ais/external-audience/{id}/runs{}", query(&pairs)),
                None,
            )
            .await
        }
    };
    let run_ids = |body: &Value| -> Vec<String> {
        body["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["runId"].as_str().unwrap().to_owned())
            .collect()
    };
    let reversed: Vec<String> = ids.iter().rev().cloned().collect();

    // Default: newest first; sortBy createdAt ascending, -createdAt, name.
    let (_, body) = list(vec![]).await;
    assert_eq!(run_ids(&body), reversed);
    assert_eq!(body["_page"], json!({"limit": 20, "count": 3, "totalCount": 3}));
    assert_eq!(run_ids(&list(vec![("sortBy", "createdAt".into())]).await.1), ids);
    assert_eq!(run_ids(&list(vec![("sortBy", "ingestionTime".into())]).await.1), ids);
    assert_eq!(run_ids(&list(vec![("sortBy", "-createdAt".into())]).await.1), reversed);
    assert_eq!(run_ids(&list(vec![("sortBy", "name".into())]).await.1).len(), 3);
    let (status, err) = list(vec![("sortBy", "status".into())]).await;
    assert_eq!((status, err["errorCode"].as_str()), (400, Some("100910-400")));

    // limit: 1..40.
    let (_, one) = list(vec![("limit", "1".into())]).await;
    assert_eq!(run_ids(&one), vec![ids[2].clone()]);
    assert_eq!(one["_page"]["totalCount"], 3);
    assert_eq!(run_ids(&list(vec![("limit", "40".into())]).await.1).len(), 3);
    for bad in ["0", "41", "x"] {
        let (status, err) = list(vec![("limit", bad.into())]).await;
        assert_eq!(status, 400, "limit={bad}");
        assert!(err["detail"].as_str().unwrap().starts_with("limit:"), "{err}");
    }

    // property filters: =, !=, =contains, !=contains (case-insensitive), createdAt bounds, AND.
    let count = |props: &[&str]| {
        let pairs = props.iter().map(|p| ("property", (*p).to_owned())).collect();
        let list = &list;
        async move {
            let (status, body) = list(pairs).await;
            assert_eq!(status, 200, "{body}");
            body["runs"].as_array().unwrap().len()
        }
    };
    assert_eq!(count(&["status=SUCCESS"]).await, 2);
    assert_eq!(count(&["status!=SUCCESS"]).await, 1);
    assert_eq!(count(&["status=containsFAIL"]).await, 1);
    assert_eq!(count(&["status=contains=succ"]).await, 2);
    assert_eq!(count(&["status!=containsSUCC"]).await, 1);
    assert_eq!(count(&["name=Demo audience"]).await, 3);
    assert_eq!(count(&["name!=Demo audience"]).await, 0);
    assert_eq!(count(&["name=containsdemo"]).await, 3);
    assert_eq!(count(&["name!=containsdemo"]).await, 0);
    assert_eq!(count(&["name=containsnothing"]).await, 0);
    let after = format!("createdAt>={}", now - 100);
    let before = format!("createdAt<={}", now - 100);
    let future = format!("ingestionTime>={}", now + 100);
    assert_eq!(count(&[&after]).await, 3);
    assert_eq!(count(&[&before]).await, 0);
    assert_eq!(count(&[&future]).await, 0);
    assert_eq!(count(&[&after, "status=SUCCESS"]).await, 2);
    assert_eq!(count(&[&after, "status=SUCCESS", "status!=containsSUCC"]).await, 0);
    for bad in [
        "foo=bar",
        "createdAt=5",
        "createdAt>=soon",
        "status",
        "status=",
        "name>=a",
    ] {
        let (status, err) = list(vec![("property", bad.into())]).await;
        assert_eq!(status, 400, "property={bad}");
        assert!(err["detail"].as_str().unwrap().starts_with("property:"), "{err}");
    }
}

#[tokio::test]
async fn exactly_41_fields_are_accepted_and_42_refused() {
    let emu = start(|b| b).await;
    let raw = Raw::new(&emu).await;
    let with_fields = |n: usize| {
        let mut body = seed_json(&format!("{n} fields"));
        body["fields"] = Value::Array(
            (0..n)
                .map(|i| match i {
                    0 => json!({"name": "c0", "type": "string", "identityNs": "ECID"}),
                    _ => json!({"name": format!("c{i}"), "type": "string"}),
                })
                .collect(),
        );
        body
    };
    let (status, created) = raw
        .send(
            reqwest::Method::POST,
            "/data/core/ais/external-audience/",
            Some(&with_fields(41)),
        )
        .await;
    assert_eq!(status, 202, "{created}");
    assert_eq!(created["operationDetails"]["fields"].as_array().unwrap().len(), 41);
    let (status, err) = raw
        .send(
            reqwest::Method::POST,
            "/data/core/ais/external-audience/",
            Some(&with_fields(42)),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(err["errorCode"], "100910-400");
    assert!(err["detail"].as_str().unwrap().starts_with("fields:"), "{err}");
}

#[tokio::test]
async fn new_settings_and_faults_round_trip_through_the_admin_api() {
    let emu = start(|b| b).await;
    let base = emu.base_url().as_str().trim_end_matches('/').to_owned();
    let http = reqwest::Client::new();
    let config: Value = http
        .get(format!("{base}/_emulator/config"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(config["duplicate_names"], "reject");
    assert_eq!(config["custom_audience_id"], "unique");
    assert_eq!(config["lookup_visibility"], "after_operation");
    assert_eq!(config["lookup_lag_ms"], 0);
    assert_eq!(config["runs_per_audience_window"], "lifetime");
    let faults: Value = http
        .get(format!("{base}/_emulator/faults"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(faults["hang_ms"], 30_000);
    assert_eq!(
        faults["lost_answers"]["patch"],
        json!({"next": 0, "all": false, "probability": 0.0, "mode": "drop"})
    );
    assert!(faults["operation_failure_message"].is_null());

    // Partial JSON: missing keys take their defaults.
    let put: Settings = http
        .put(format!("{base}/_emulator/config"))
        .json(&json!({"duplicate_names": "allow", "custom_audience_id": "ignore",
            "lookup_visibility": "lagged", "lookup_lag_ms": 250, "runs_per_audience_window": "day"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(put.duplicate_names, DuplicateNames::Allow);
    assert_eq!(put.custom_audience_id, CustomAudienceIdModel::Ignore);
    assert_eq!(put.lookup_visibility, LookupVisibility::Lagged);
    assert_eq!(put.lookup_lag_ms, 250);
    assert_eq!(put.runs_per_audience_window, RunWindow::Day);
    assert_eq!(emu.admin().config().await.unwrap(), put);
    let refused = http
        .put(format!("{base}/_emulator/faults"))
        .json(&json!({"lost_answers": {"create": {"mode": "explode"}}}))
        .send()
        .await
        .unwrap();
    assert!(refused.status().is_client_error());
    let accepted: Faults = http
        .put(format!("{base}/_emulator/faults"))
        .json(&json!({"lost_answers": {"delete": {"all": true, "mode": "error500"}}, "hang_ms": 5}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(accepted.lost_answers.delete.all);
    assert_eq!(accepted.lost_answers.delete.mode, LostMode::Error500);
    assert_eq!(accepted.hang_ms, 5);
}

#[tokio::test]
async fn answer_delay_holds_committed_answers_after_the_work() {
    let emu = start(|b| {
        b.faults(Faults {
            answer_delay_ms: 1_000,
            ..Faults::default()
        })
    })
    .await;
    let s = session(&emu, "dev1");
    let call = tokio::spawn({
        let s = s.clone();
        async move { s.create_audience(&seed_request("Held")).await }
    });
    // The audience exists while the answer is still held back.
    let admin = emu.admin();
    eventually("create committed", DEADLINE, || async {
        admin.state().await.unwrap().audiences_named("dev1", "Held").count() == 1
    })
    .await;
    assert!(!call.is_finished(), "the answer is held after the work");
    call.await.unwrap().unwrap();
    // Refusals are not delayed.
    let started = Instant::now();
    let dup = s.create_audience(&seed_request("Held")).await.unwrap_err();
    assert_eq!(dup.kind(), ErrorKind::Conflict);
    assert!(
        started.elapsed() < Duration::from_millis(1_000),
        "{:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// TLS: the emulator's generated CA is trusted when configured, refused otherwise
// ---------------------------------------------------------------------------------------------

const UNTRUSTED: &str =
    "TLS handshake failed: the endpoint's certificate is not trusted (configure the CA with --aep-ca-file)";

/// A CA that signed nothing the emulator serves.
fn unrelated_ca_pem() -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "some-other-ca");
    params.self_signed(&key).unwrap().pem().into_bytes()
}

#[tokio::test]
async fn tls_emulator_is_trusted_with_its_ca() {
    let emu = start(|b| b.tls()).await;
    let base = emu.base_url();
    assert_eq!(base.scheme(), "https");
    assert_eq!(base.as_str(), format!("https://127.0.0.1:{}/", emu.addr().port()));
    let ca = emu.ca_pem().expect("a TLS emulator has a CA");
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
    assert_eq!(emu.client_config().ca_pem.as_deref(), Some(ca.as_bytes()));
    assert_eq!(emu.credentials().ims_url.as_ref(), Some(&base));

    let s = session(&emu, "dev1");
    let id = create_ready(&s, "Over TLS").await;
    assert_eq!(s.get_audience(&id).await.unwrap().id, id);

    // The admin API is served over the same TLS listener.
    let stats = emu.admin().stats().await.unwrap();
    assert_eq!(stats.tokens_issued, 1);
    assert_eq!(stats.creates, 1);
    assert_eq!(stats.received("create_audience"), 1);
    let by_hand = aep_emulator::AdminClient::new(base.clone())
        .with_ca_pem(ca.as_bytes())
        .unwrap();
    assert_eq!(by_hand.stats().await.unwrap(), emu.stats());
    // …and refused to an admin client that does not trust the CA.
    let untrusting = aep_emulator::AdminClient::new(base)
        .with_ca_pem(&unrelated_ca_pem())
        .unwrap();
    let refused = untrusting.stats().await;
    assert!(matches!(refused, Err(aep_emulator::AdminError::Http(_))), "{refused:?}");
    assert!(
        aep_emulator::AdminClient::new(emu.base_url())
            .with_ca_pem(b"not a certificate")
            .is_err()
    );

    // The hostname form of the address is covered by the certificate too.
    let mut by_name = emu.client_config();
    by_name.platform_url.set_host(Some("localhost")).unwrap();
    by_name.ims_url.set_host(Some("localhost")).unwrap();
    let mut named_creds = emu.credentials();
    named_creds.ims_url = Some(by_name.ims_url.clone());
    named_creds.platform_url = Some(by_name.platform_url.clone());
    let named = AepClient::new(by_name).unwrap().session(&named_creds, "dev1");
    assert_eq!(named.get_audience(&id).await.unwrap().id, id);
}

#[tokio::test]
async fn tls_emulator_is_refused_without_its_ca() {
    use aep::error::Call;
    let emu = start(|b| b.tls()).await;
    let trust = [("system roots", None), ("another CA", Some(unrelated_ca_pem()))];
    for (what, ca_pem) in trust {
        let client = AepClient::new(ClientConfig {
            ca_pem,
            max_retries: 0,
            ..emu.client_config()
        })
        .expect("client builds");
        let s = client.session(&emu.credentials(), "dev1");
        let err = s.create_audience(&seed_request("Refused")).await.unwrap_err();
        assert_eq!(err.call(), Call::Token, "{what}: the token call comes first: {err:?}");
        assert_eq!(err.category(), "tls", "{what}: {err:?}");
        assert_eq!(err.message(), UNTRUSTED, "{what}");
        assert_eq!(err.kind(), ErrorKind::Retryable { retry_after: None }, "{what}");
        assert_eq!(err.status(), None, "{what}");
        assert_eq!(err.to_string(), format!("ims_token: {UNTRUSTED}"), "{what}");
    }
    // The handshake failed before any HTTP request: nothing reached IMS or AEP.
    let stats = emu.stats();
    assert_eq!(stats.token_requests, 0, "{stats:?}");
    assert!(stats.received.values().all(|&n| n == 0), "{:?}", stats.received);
    assert!(stats.requests.is_empty(), "{:?}", stats.requests);
    for op in ["create_audience", "get_operation", "list_audiences", "get_audience"] {
        assert_eq!(stats.received(op), 0, "{op}");
    }
    // The emulator still serves a client that trusts it.
    create_ready(&session(&emu, "dev1"), "Accepted").await;
    assert_eq!(emu.stats().token_requests, 1);

    // A plain-HTTP emulator has no CA to hand out.
    let plain = start(|b| b).await;
    assert_eq!(plain.ca_pem(), None);
    assert_eq!(plain.client_config().ca_pem, None);
    assert_eq!(plain.base_url().scheme(), "http");
}

#[tokio::test]
async fn commit_then_drop_works_over_tls() {
    let emu = start(|b| b.tls()).await;
    let s = session(&emu, "dev1");
    emu.update_faults(|f| f.lost_answers.create.next = 1);
    let err = s.create_audience(&seed_request("Dropped over TLS")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutcomeUnknown, "{err:?}");
    assert_eq!(err.status(), None);
    assert_ne!(err.category(), "tls", "{err:?}");

    let stats = emu.stats();
    assert_eq!(stats.requests_with_status(CREATE_ROUTE, "dropped"), 1);
    assert_eq!(stats.received("create_audience"), 1, "not retried");
    assert_eq!(stats.creates, 1);
    assert_eq!(stats.connections_dropped, 1);
    assert_eq!(emu.state().audiences_named("dev1", "Dropped over TLS").count(), 1);
    // The connection was cut, not the listener: the next call is answered.
    let id = create_ready(&s, "After the drop").await;
    assert_eq!(s.get_audience(&id).await.unwrap().id, id);
}

#[tokio::test]
async fn the_movable_clock_drives_the_daily_run_quota() {
    let emu = start(|b| b.configure(|s| s.max_runs_per_sandbox_per_day = 1)).await;
    let s = session(&emu, "dev1");
    let a = create_ready(&s, "Day one").await;
    let run = s.start_run(&a, &run_request()).await.unwrap();
    run_to_end(&s, &a, &run.run_id).await;
    let refused = s.start_run(&a, &run_request()).await.unwrap_err();
    assert!(
        refused.message().contains("per sandbox per day"),
        "{}",
        refused.message()
    );

    // Through the admin API, as a test in another process would: a day later the quota is back.
    let before = emu.admin().clock().await.unwrap();
    let moved = emu
        .admin()
        .set_clock_offset(before.offset_ms + 86_400_000)
        .await
        .unwrap();
    assert!(moved.now_ms - before.now_ms >= 86_400_000, "{before:?} -> {moved:?}");
    let run = s.start_run(&a, &run_request()).await.unwrap();
    assert_eq!(run_to_end(&s, &a, &run.run_id).await, RunStatus::Success);
    // Run times are on the emulated clock.
    let runs = s.list_runs(&a).await.unwrap();
    let newest = runs.iter().filter_map(|r| r.created_at).max().unwrap();
    assert!(newest * 1000 >= moved.now_ms - 60_000, "{newest} vs {}", moved.now_ms);
}

#[tokio::test]
async fn data_expires_ttl_after_the_last_successful_run_and_extend_ttl_pushes_it_out_once_per_call() {
    const DAY: i64 = 86_400_000;
    let emu = start(|b| b).await;
    let s = session(&emu, "dev1");
    let mut req = seed_request("Expiring");
    req.ttl_in_days = Some(40);
    let created = s.create_audience(&req).await.unwrap();
    let id = create_ready_op(&s, &created.operation_id).await;
    let view = |emu: &RunningEmulator| emu.state().audience(&id).cloned().unwrap();
    assert_eq!(view(&emu).data_expires_at_ms, None, "nothing ingested yet");

    let run = s.start_run(&id, &run_request()).await.unwrap();
    run_to_end(&s, &id, &run.run_id).await;
    let ingested = view(&emu);
    let expires = ingested.data_expires_at_ms.expect("expiry after a successful run");
    let now = emu.now().as_millisecond();
    assert!(
        (expires - now - 40 * DAY).abs() < 60_000,
        "40 days after the run: {expires} vs {now}"
    );
    assert!(!ingested.expired);

    emu.advance_clock(Duration::from_millis((41 * DAY) as u64));
    assert!(view(&emu).expired, "past the TTL");

    // Each call pushes it out by the TTL again, from now once expired.
    let answer = s.extend_ttl(&id).await.unwrap();
    assert_eq!(
        (answer.audience_id.as_str(), answer.name.as_str()),
        (id.as_str(), "Expiring")
    );
    let extended = view(&emu);
    let now = emu.now().as_millisecond();
    assert!(!extended.expired);
    let first = extended.data_expires_at_ms.unwrap();
    assert!((first - now - 40 * DAY).abs() < 60_000, "{first} vs {now}");
    s.extend_ttl(&id).await.unwrap();
    assert_eq!(view(&emu).data_expires_at_ms, Some(first + 40 * DAY), "not idempotent");
    assert_eq!(emu.stats().received("extend_ttl"), 2);
    assert!(s.extend_ttl("no-such-audience").await.is_err());
}

#[tokio::test]
async fn a_closed_gate_sends_nothing_and_says_why_an_open_one_sends() {
    let emu = start(|b| b).await;
    let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gate = open.clone();
    let s = client(&emu)
        .with_gate(move || gate.load(std::sync::atomic::Ordering::SeqCst))
        .session(&emu.credentials(), "dev1");
    let before = emu.admin().stats().await.unwrap().received("create_audience");
    let err = s
        .create_audience(&seed_request("Gated"))
        .await
        .expect_err("the gate is closed");
    assert!(matches!(err.kind(), ErrorKind::Retryable { .. }), "{err:?}");
    assert!(err.to_string().contains("leader lease"), "{err}");
    let after = emu.admin().stats().await.unwrap().received("create_audience");
    assert_eq!(after - before, 0, "a closed gate sends no request");
    open.store(true, std::sync::atomic::Ordering::SeqCst);
    s.create_audience(&seed_request("Gated"))
        .await
        .expect("the gate is open");
    let sent = emu.admin().stats().await.unwrap().received("create_audience");
    assert_eq!(sent - after, 1);
}
