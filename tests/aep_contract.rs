//! Contract tests: the AEP client against the emulator over real HTTP on loopback (no mocks).
//!
//! Each test starts its own emulator on `127.0.0.1:0`. Waiting uses polling loops with deadlines;
//! the only timing assertion is the `Retry-After` lower bound.

use std::time::{Duration, Instant};

use audience_operator::aep::{
    AepClient, ClientConfig, CreateAudienceRequest, Credentials, ErrorKind, Field, FieldLabels, FieldType,
    OperationStatus, PatchAudienceRequest, RunStatus, Session, SourceParams, SourcePathType, SourceSpec,
    StartRunRequest,
};
use audience_operator::emulator::{CredentialSpec, Emulator, EmulatorBuilder, Faults, RunningEmulator};
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
        audience_operator::aep::install_crypto_provider();
        let http = reqwest::Client::new();
        let base = emu.base_url().as_str().trim_end_matches('/').to_owned();
        let creds = emu.credentials();
        let token: Value = http
            .post(format!("{base}/ims/token/v3"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", creds.client_id.as_str()),
                ("client_secret", "local-secret"),
                ("scope", audience_operator::aep::DEFAULT_SCOPES),
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

    // Configured as 429, the refusal carries Retry-After and is still "not now".
    emu.update_settings(|s| {
        s.guardrail_status = 429;
        s.guardrail_retry_after_secs = 120;
    });
    let throttled = s.start_run(&b, &run_request()).await.unwrap_err();
    assert_eq!(
        throttled.kind(),
        ErrorKind::NotNow {
            retry_after: Some(Duration::from_secs(120))
        }
    );
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
    emu.update_faults(|f| f.drop_next_creates = 1);
    let err = s.create_audience(&seed_request("Dropped")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutcomeUnknown, "{err:?}");
    assert_eq!(err.status(), None);

    let stats = emu.stats();
    assert_eq!(stats.requests_for(CREATE_ROUTE), 1);
    assert_eq!(stats.requests_with_status(CREATE_ROUTE, "dropped"), 1);
    assert_eq!(stats.creates, 1);
    assert_eq!(emu.state().audiences_named("dev1", "Dropped").count(), 1);
    // The work was done: the lookup by name finds it.
    assert_eq!(s.find_audiences_by_name("Dropped").await.unwrap().len(), 1);

    let id = create_ready(&s, "Runs dropped").await;
    emu.update_faults(|f| f.drop_next_runs = 1);
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
    assert_eq!(
        gw(http.get(&url).bearer_auth("forged").send().await.unwrap()).await,
        (401, "401013".into())
    );
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
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/aep-emulator.md"))
        .expect("docs/aep-emulator.md exists");

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
    emu.shutdown().await.unwrap();
    assert!(path.exists());

    let emu = start(|b| b.state_file(&path)).await;
    let record = session(&emu, "dev1").get_audience(&id).await.unwrap();
    assert_eq!(record.name, "Persistent");
}

#[tokio::test]
async fn failures_injected_into_operations_and_runs_are_reported() {
    let emu = start(|b| {
        b.faults(Faults {
            fail_next_operations: 1,
            fail_next_runs: 1,
            ..Faults::default()
        })
    })
    .await;
    let s = session(&emu, "dev1");
    let created = s.create_audience(&seed_request("Fails")).await.unwrap();
    let op = s.get_operation(&created.operation_id).await.unwrap();
    assert_eq!(op.status, OperationStatus::Failed);
    assert_eq!(op.audience_id, None);
    assert!(op.message.unwrap().contains("injected"));

    let id = create_ready(&s, "Fails").await;
    let run = s.start_run(&id, &run_request()).await.unwrap();
    assert_eq!(run_to_end(&s, &id, &run.run_id).await, RunStatus::Failed);
    let admin = emu.admin();
    let stats = admin.stats().await.unwrap();
    assert_eq!(stats.runs_started, 1);
    admin
        .mutate_audience(
            &id,
            &audience_operator::emulator::AudienceMutation {
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
