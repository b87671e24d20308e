//! Contract tests of the activation surface: the real `aep` client against the emulator over HTTP
//! on loopback (no mocks): destination dataflows read and patched with etags, both selector-id
//! models and both PATCH answers, export validation and guardrails, export runs driven by the
//! emulator clock, segmentation jobs and schedules, ad hoc activation, lost answers, the delete
//! refusal of a mapped audience, request counters and the state file.
//!
//! Each test starts its own emulator. Time-of-day behaviour is pinned by moving the emulated clock
//! to a known instant (`set_now`), never by sleeping.

use std::time::{Duration, Instant};

use aep::{
    AepClient, ClientConfig, CreateAudienceRequest, DestinationKind, ErrorKind, ExportSchedule, Field, FieldType, Flow,
    FlowPatchOp, FlowRunStatus, OperationStatus, SegmentJobStatus, SegmentSelector, SelectorValue, Session,
    SourceParams, SourcePathType, SourceSpec,
};
use aep_emulator::{
    AddSelector, Emulator, EmulatorBuilder, Faults, FlowMutation, LostAnswer, LostMode, NewFlow, PatchAnswer,
    RunTrigger, RunningEmulator, SelectorIdModel,
};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(10);
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

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
        max_backoff: Duration::from_secs(2),
        ..emu.client_config()
    })
    .expect("client builds")
}

fn session(emu: &RunningEmulator) -> Session {
    client(emu).session(&emu.credentials(), "dev1")
}

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

fn audience_request(name: &str, custom_id: Option<&str>) -> CreateAudienceRequest {
    CreateAudienceRequest {
        name: name.to_owned(),
        fields: vec![Field {
            name: "email".into(),
            r#type: FieldType::String,
            identity_ns: Some("Email".into()),
            labels: vec![],
        }],
        source_spec: SourceSpec {
            params: SourceParams {
                path: "exports/churn.csv".into(),
                r#type: SourcePathType::File,
                source_type: Some("Cloud Storage".into()),
                base_connection_id: Some("0c7c1f0e-3d52-4d5b-9e0e-5a1f2b9f6c11".into()),
                ..SourceParams::default()
            },
        },
        origin_name: "CUSTOM_UPLOAD".into(),
        audience_type: Some("people".into()),
        custom_audience_id: custom_id.map(str::to_owned),
        ..CreateAudienceRequest::default()
    }
}

/// Creates an audience and polls its operation until it succeeds; returns the audience id.
async fn audience(s: &Session, name: &str, custom_id: Option<&str>) -> String {
    let created = s
        .create_audience(&audience_request(name, custom_id))
        .await
        .expect("create accepted");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let op = s
            .get_operation(&created.operation_id)
            .await
            .expect("operation readable");
        match op.status {
            OperationStatus::Success => return op.audience_id.expect("audience id"),
            OperationStatus::Failed => panic!("operation failed"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "operation did not finish");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn flow(emu: &RunningEmulator, name: &str, kind: DestinationKind) -> String {
    emu.admin()
        .create_flow(&NewFlow::new("dev1", name, kind))
        .await
        .expect("flow created")
}

/// A streaming selector naming only the audience.
fn plain(audience_id: &str) -> SegmentSelector {
    SegmentSelector::platform_segment(SelectorValue::for_audience(audience_id))
}

/// A batch selector: daily full export after the segmentation job, from `start_date`.
fn daily(audience_id: &str, start_date: &str) -> SegmentSelector {
    SegmentSelector::platform_segment(SelectorValue {
        id: Some(audience_id.to_owned()),
        export_mode: Some("DAILY_FULL_EXPORT".into()),
        filename_template: Some("%DESTINATION_NAME%_%SEGMENT_ID%_%DATETIME(YYYYMMdd_HHmmss)%".into()),
        schedule: Some(ExportSchedule {
            frequency: Some("DAILY".into()),
            trigger_type: Some("AFTER_SEGMENT_EVAL".into()),
            start_date: Some(start_date.to_owned()),
            ..ExportSchedule::default()
        }),
        ..SelectorValue::default()
    })
}

/// Reads the flow, adds `selector`, returns the fresh read after the change.
async fn add(s: &Session, flow_id: &str, selector: &SegmentSelector) -> Flow {
    let before = s.get_flow(flow_id).await.expect("flow readable");
    s.patch_flow(flow_id, &before.etag, &[FlowPatchOp::add_selector(selector)])
        .await
        .expect("patch accepted");
    s.get_flow(flow_id).await.expect("flow readable")
}

/// Moves the emulated clock so that "now" is `at` (ms since the epoch).
async fn set_now(emu: &RunningEmulator, at: i64) {
    let admin = emu.admin();
    let clock = admin.clock().await.unwrap();
    admin
        .set_clock_offset(clock.offset_ms + (at - clock.now_ms))
        .await
        .unwrap();
}

/// Start of the next UTC day of the emulated clock, and its `YYYY-MM-DD`.
async fn next_midnight(emu: &RunningEmulator) -> (i64, String) {
    let now = emu.admin().clock().await.unwrap().now_ms;
    let midnight = (now.div_euclid(DAY_MS) + 1) * DAY_MS;
    (midnight, date_of(midnight))
}

fn date_of(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .unwrap()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date()
        .to_string()
}

/// Raw HTTP with the AEP headers, for requests the typed client cannot express.
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

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .header("x-api-key", &self.client_id)
            .header("x-gw-ims-org-id", &self.org)
            .header("x-sandbox-name", "dev1");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(body) = body {
            req = req.header("Content-Type", "application/json").body(body.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

// ---------------------------------------------------------------------------------------------
// Read and patch with etags
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_flow_reads_as_items_with_a_quoted_etag_and_its_destination_kind() {
    let emu = start(|b| b).await;
    let s = session(&emu);
    let batch = flow(&emu, "S3 daily", DestinationKind::Batch).await;
    let streaming = flow(&emu, "Kinesis", DestinationKind::Streaming).await;

    let b = s.get_flow(&batch).await.unwrap();
    assert_eq!(b.id, batch);
    assert!(
        b.etag.len() > 2 && b.etag.starts_with('"') && b.etag.ends_with('"'),
        "{}",
        b.etag
    );
    assert_eq!(b.version.as_deref(), Some(b.etag.as_str()));
    assert!(b.is_destination_flow() && b.is_enabled());
    assert!(b.is_batch());
    assert_eq!(b.target_connection_spec_id(), Some(aep::CONNECTION_SPEC_S3));
    assert_eq!(b.transformations[0].name, "GeneralTransform");
    assert!(b.selectors().is_empty());
    assert_eq!(b.sandbox_name.as_deref(), Some("dev1"));

    let k = s.get_flow(&streaming).await.unwrap();
    assert_eq!(k.destination_kind(), DestinationKind::Streaming);
    assert_eq!(k.flow_spec_id(), Some(aep::FLOW_SPEC_PROFILE_STREAMING));
    assert_eq!(k.target_connection_spec_id(), Some(aep::CONNECTION_SPEC_KINESIS));

    // Another sandbox does not see them; an unknown id is a 404 with AEP's message.
    let prod = client(&emu).session(&emu.credentials(), "prod");
    let missing = prod.get_flow(&batch).await.unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound);
    assert_eq!(missing.status(), Some(404));
    assert_eq!(missing.message(), format!("flows not found with id = [{batch}]"));
}

#[tokio::test]
async fn an_add_is_conditioned_on_the_etag_and_changes_it() {
    let emu = start(|b| b).await;
    let s = session(&emu);
    let a = audience(&s, "Churn", None).await;
    let f = flow(&emu, "Kinesis", DestinationKind::Streaming).await;

    let read = s.get_flow(&f).await.unwrap();
    let new_etag = s
        .patch_flow(&f, &read.etag, &[FlowPatchOp::add_selector(&plain(&a))])
        .await
        .unwrap()
        .expect("200 {id, etag} by default");
    assert_ne!(new_etag, read.etag);
    let after = s.get_flow(&f).await.unwrap();
    assert_eq!(after.etag, new_etag);
    assert_eq!(after.position_of(&a), Some(0));
    let value = &after.selectors()[0].value;
    assert_eq!(value.id.as_deref(), Some(a.as_str()));
    assert!(value.create_time.is_some() && value.update_time.is_some());
    let last = after.last_operation.as_ref().expect("lastOperation");
    assert_eq!(last.status.as_ref().unwrap().value.as_deref(), Some("completed"));
    assert_eq!(last.ops.len(), 1);

    // The read it was decided from is stale now: 412, nothing applied.
    let stale = s
        .patch_flow(&f, &read.etag, &[FlowPatchOp::add_selector(&plain(&a))])
        .await
        .unwrap_err();
    assert_eq!(stale.kind(), ErrorKind::Conflict);
    assert_eq!(stale.status(), Some(412));
    assert!(stale.message().starts_with("Supplied version=["), "{}", stale.message());
    assert!(
        stale
            .message()
            .contains("does not match the current version on entity=")
    );
    assert_eq!(s.get_flow(&f).await.unwrap().selectors().len(), 1);

    // A bare etag is quoted by the client and accepted.
    let bare = after.etag.trim_matches('"').to_owned();
    s.patch_flow(&f, &bare, &[FlowPatchOp::remove_selector(0, &after.selectors()[0])])
        .await
        .unwrap();
    assert!(s.get_flow(&f).await.unwrap().selectors().is_empty());
    let stats = emu.stats();
    assert_eq!((stats.flow_patches, stats.flow_patch_conflicts), (2, 1));
}

#[tokio::test]
async fn a_concurrent_writer_makes_the_patch_412_and_a_fresh_read_succeeds() {
    let emu = start(|b| b).await;
    let s = session(&emu);
    let a = audience(&s, "Churn", None).await;
    let f = flow(&emu, "Kinesis", DestinationKind::Streaming).await;
    emu.update_faults(|faults| faults.concurrent_writer_next = 1);

    let read = s.get_flow(&f).await.unwrap();
    let refused = s
        .patch_flow(&f, &read.etag, &[FlowPatchOp::add_selector(&plain(&a))])
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Conflict);
    assert_eq!(emu.stats().concurrent_writes, 1);
    assert_eq!(
        emu.stats().received("patch_flow"),
        1,
        "a 412 is not retried by the client"
    );

    // Read again, decide again: the audience is still absent, so add it once.
    let again = s.get_flow(&f).await.unwrap();
    assert_ne!(again.etag, read.etag);
    assert_eq!(again.position_of(&a), None);
    s.patch_flow(&f, &again.etag, &[FlowPatchOp::add_selector(&plain(&a))])
        .await
        .unwrap();
    assert_eq!(emu.flow(&f).unwrap().count_of(&a), 1);

    // Probability 1: every PATCH meets another writer, whatever it reads.
    let admin = emu.admin();
    let mut faults = admin.faults().await.unwrap();
    faults.concurrent_writer_probability = 1.0;
    assert_eq!(
        admin.set_faults(&faults).await.unwrap().concurrent_writer_probability,
        1.0
    );
    for _ in 0..2 {
        let read = s.get_flow(&f).await.unwrap();
        let err = s
            .patch_flow(&f, &read.etag, &[FlowPatchOp::remove_selector(0, &read.selectors()[0])])
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict);
    }
    assert_eq!(emu.stats().concurrent_writes, 3);
    // A change made behind the operator's back through the admin API moves the etag too.
    let read = s.get_flow(&f).await.unwrap();
    let moved = admin.mutate_flow(&f, &FlowMutation::default()).await.unwrap();
    assert_ne!(moved, read.etag);
}

#[tokio::test]
async fn a_patch_without_if_match_or_with_a_bad_body_is_400() {
    let emu = start(|b| b).await;
    let s = session(&emu);
    let raw = Raw::new(&emu).await;
    let a = audience(&s, "Churn", None).await;
    let f = flow(&emu, "Kinesis", DestinationKind::Streaming).await;
    let path = format!("/data/foundation/flowservice/flows/{f}");
    let add = json!([{"op": "add", "path": "/transformations/0/params/segmentSelectors/selectors/-",
        "value": {"type": "PLATFORM_SEGMENT", "value": {"id": a}}}]);
    let (status, body) = raw.send(reqwest::Method::PATCH, &path, &[], Some(&add)).await;
    assert_eq!(status, 400);
    assert!(
        body["errorMessage"].as_str().unwrap().starts_with("If-Match:"),
        "{body}"
    );

    let etag = s.get_flow(&f).await.unwrap().etag;
    let with = [("If-Match", etag.as_str())];
    let cases = [
        (json!({"op": "add"}), "request body:"),
        (json!([{"op": "move", "path": "/x", "value": 1}]), "operations[0].op:"),
        (
            json!([{"op": "remove", "path": "/transformations/0/params/segmentSelectors/selectors/0"}]),
            "operations[0].value:",
        ),
        (
            json!([{"op": "add", "path": "/transformations/0/params/profileSelectors/selectors/-",
                "value": {"type": "JSON_PATH", "value": {"path": "person.name"}}}]),
            "path:",
        ),
        (
            json!([{"op": "replace", "path": "/transformations/0/params/segmentSelectors/selectors/0",
                "value": {"type": "PLATFORM_SEGMENT", "value": {"id": a}}}]),
            "path: index 0 is out of range",
        ),
    ];
    for (body, prefix) in cases {
        let (status, answer) = raw.send(reqwest::Method::PATCH, &path, &with, Some(&body)).await;
        assert_eq!(status, 400, "{body}");
        let message = answer["errorMessage"].as_str().unwrap();
        assert!(message.starts_with(prefix), "{body}: {message}");
    }
    // Nothing changed: the same etag still applies, with the documented op spelling "ADD".
    let upper = json!([{"op": "ADD", "path": "/transformations/0/params/segmentSelectors/selectors/-",
        "value": {"type": "PLATFORM_SEGMENT", "value": {"id": a}}}]);
    let (status, answer) = raw.send(reqwest::Method::PATCH, &path, &with, Some(&upper)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["id"], f.as_str());
    assert_eq!(emu.stats().flow_patch_rejections, 6);
}

#[tokio::test]
async fn selector_ids_are_stored_as_sent_or_normalised() {
    for model in [SelectorIdModel::AsSent, SelectorIdModel::Normalise] {
        let emu = start(|b| b.configure(|s| s.selector_ids = model)).await;
        let s = session(&emu);
        let a = audience(&s, "Loyal", Some("crm-loyal")).await;
        let f = flow(&emu, "Kinesis", DestinationKind::Streaming).await;
        let read = add(&s, &f, &plain(&a)).await;
        let value = &read.selectors()[0].value;
        let by_value_id = s
            .list_flows(&[(aep::FLOW_FILTER_SELECTOR_ID, a.as_str())])
            .await
            .unwrap();
        let by_custom_id = s
            .list_flows(&[(aep::FLOW_FILTER_SELECTOR_ID, "crm-loyal")])
            .await
            .unwrap();
        match model {
            SelectorIdModel::AsSent => {
                assert_eq!(value.id.as_deref(), Some(a.as_str()));
                assert_eq!(
                    (value.system_segment_id.as_deref(), value.namespace.as_deref()),
                    (None, None)
                );
                assert_eq!((by_value_id.len(), by_custom_id.len()), (1, 0));
            }
            SelectorIdModel::Normalise => {
                assert_eq!(value.id.as_deref(), Some("crm-loyal"));
                assert_eq!(value.system_segment_id.as_deref(), Some(a.as_str()));
                assert_eq!(value.namespace.as_deref(), Some("CustomerAudienceUpload"));
                // The filter is literal: it matches value.id, which holds the external id.
                assert_eq!((by_value_id.len(), by_custom_id.len()), (0, 1));
            }
        }
        // Either way the helpers find the audience by its id.
        assert_eq!(read.position_of(&a), Some(0), "{model:?}");
        // A replace of the whole selector as read keeps it recognisable.
        let mut changed = read.selectors()[0].clone();
        changed.value.name = Some("Loyal members".into());
        s.patch_flow(&f, &read.etag, &[FlowPatchOp::replace_selector(0, &changed)])
            .await
            .unwrap();
        let again = s.get_flow(&f).await.unwrap();
        assert_eq!(again.selectors().len(), 1, "{model:?}");
        assert_eq!(again.selectors()[0].value.name.as_deref(), Some("Loyal members"));
        assert_eq!(again.position_of(&a), Some(0), "{model:?}");
    }
}

#[tokio::test]
async fn patch_answers_are_200_with_the_etag_or_202_without_a_body() {
    let emu = start(|b| b.configure(|s| s.patch_answer = PatchAnswer::Accepted)).await;
    let s = session(&emu);
    let a = audience(&s, "Churn", None).await;
    let f = flow(&emu, "Kinesis", DestinationKind::Streaming).await;
    let read = s.get_flow(&f).await.unwrap();
    let answer = s
        .patch_flow(&f, &read.etag, &[FlowPatchOp::add_selector(&plain(&a))])
        .await
        .unwrap();
    assert_eq!(answer, None, "202: accepted, no etag");
    assert_eq!(
        emu.stats()
            .requests_with_status("PATCH /data/foundation/flowservice/flows/{id}", "202"),
        1
    );
    // The change is only seen by reading again.
    let after = s.get_flow(&f).await.unwrap();
    assert_eq!(after.position_of(&a), Some(0));

    emu.update_settings(|s| s.patch_answer = PatchAnswer::Etag);
    let answer = s
        .patch_flow(
            &f,
            &after.etag,
            &[FlowPatchOp::remove_selector(0, &after.selectors()[0])],
        )
        .await
        .unwrap();
    assert_eq!(answer, Some(s.get_flow(&f).await.unwrap().etag));
}

#[tokio::test]
async fn replace_keeps_unknown_keys_and_removes_address_the_current_indices() {
    let emu = start(|b| b).await;
    let s = session(&emu);
    let ids = [
        audience(&s, "A", None).await,
        audience(&s, "B", None).await,
        audience(&s, "C", None).await,
    ];
    let f = flow(&emu, "S3", DestinationKind::Batch).await;
    let today = date_of(emu.admin().clock().await.unwrap().now_ms);
    for id in &ids {
        let mut selector = daily(id, &today);
        selector
            .value
            .extra
            .insert("enrichmentInfo".into(), json!({"enabled": false}));
        add(&s, &f, &selector).await;
    }
    let read = s.get_flow(&f).await.unwrap();
    let index = read.position_of(&ids[1]).unwrap();
    let mut b = read.selectors()[index].clone();
    assert_eq!(b.value.extra["enrichmentInfo"], json!({"enabled": false}));
    let created = b.value.create_time.clone();
    b.value.schedule.as_mut().unwrap().frequency = Some("ONCE".into());
    s.patch_flow(&f, &read.etag, &[FlowPatchOp::replace_selector(index, &b)])
        .await
        .unwrap();
    let read = s.get_flow(&f).await.unwrap();
    let b = &read.selectors()[index];
    assert_eq!(b.value.schedule.as_ref().unwrap().frequency.as_deref(), Some("ONCE"));
    assert_eq!(
        b.value.extra["enrichmentInfo"],
        json!({"enabled": false}),
        "kept on replace"
    );
    assert_eq!(b.value.create_time, created, "createTime is the service's");

    // RFC 6902: ops apply in order, so removing index 0 twice removes the first two audiences.
    s.patch_flow(
        &f,
        &read.etag,
        &[
            FlowPatchOp::remove_selector(0, &read.selectors()[0]),
            FlowPatchOp::remove_selector(0, &read.selectors()[1]),
        ],
    )
    .await
    .unwrap();
    let read = s.get_flow(&f).await.unwrap();
    let left: Vec<_> = read.selectors().iter().map(|x| x.value.id.clone().unwrap()).collect();
    assert_eq!(left, vec![ids[2].clone()]);
    // A patch whose second op fails changes nothing.
    let err = s
        .patch_flow(
            &f,
            &read.etag,
            &[
                FlowPatchOp::remove_selector(0, &read.selectors()[0]),
                FlowPatchOp::remove_selector(0, &read.selectors()[0]),
            ],
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Terminal);
    assert_eq!(s.get_flow(&f).await.unwrap().etag, read.etag, "all or nothing");
}

fn schedule(v: &mut SelectorValue) -> &mut ExportSchedule {
    v.schedule.as_mut().expect("a batch selector has a schedule")
}

#[tokio::test]
async fn export_settings_are_validated_with_messages_naming_the_field() {
    let emu = start(|b| b).await;
    let s = session(&emu);
    let a = audience(&s, "Churn", None).await;
    let batch = flow(&emu, "S3", DestinationKind::Batch).await;
    let streaming = flow(&emu, "Kinesis", DestinationKind::Streaming).await;
    let with = |edit: &dyn Fn(&mut SelectorValue)| {
        let mut selector = daily(&a, "2025-01-01");
        edit(&mut selector.value);
        selector
    };
    let cases: Vec<(SegmentSelector, &str)> = vec![
        (plain(&a), "exportMode:"),
        (with(&|v| v.export_mode = Some("WEEKLY".into())), "exportMode:"),
        (with(&|v| v.schedule = None), "schedule:"),
        (
            with(&|v| schedule(v).frequency = Some("EVERY_3_HOURS".into())),
            "schedule.frequency:",
        ),
        (
            with(&|v| {
                v.export_mode = Some("FIRST_FULL_THEN_INCREMENTAL".into());
                schedule(v).frequency = Some("ONCE".into());
            }),
            "schedule.frequency:",
        ),
        (with(&|v| schedule(v).trigger_type = None), "schedule.triggerType:"),
        (
            with(&|v| schedule(v).trigger_type = Some("SCHEDULED".into())),
            "schedule.startTime:",
        ),
        (
            with(&|v| {
                schedule(v).trigger_type = Some("SCHEDULED".into());
                schedule(v).start_time = Some("13:30".into());
            }),
            "schedule.startTime:",
        ),
        (
            with(&|v| schedule(v).start_date = Some("01/02/2025".into())),
            "schedule.startDate:",
        ),
        (
            with(&|v| schedule(v).end_date = Some("2024-12-31".into())),
            "schedule.endDate:",
        ),
        (with(&|v| v.id = Some("no-such-audience".into())), "id:"),
    ];
    for (selector, field) in cases {
        let etag = s.get_flow(&batch).await.unwrap().etag;
        let err = s
            .patch_flow(&batch, &etag, &[FlowPatchOp::add_selector(&selector)])
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Terminal, "{selector:?}");
        assert_eq!(err.status(), Some(400));
        assert!(err.message().starts_with(field), "{field}: {}", err.message());
    }
    // Streaming flows refuse export settings.
    let etag = s.get_flow(&streaming).await.unwrap().etag;
    let err = s
        .patch_flow(
            &streaming,
            &etag,
            &[FlowPatchOp::add_selector(&daily(&a, "2025-01-01"))],
        )
        .await
        .unwrap_err();
    assert!(err.message().starts_with("exportMode:"), "{}", err.message());
    assert!(emu.flow(&batch).unwrap().selectors.is_empty());
    // The same selector with valid settings goes in.
    add(&s, &batch, &daily(&a, "2025-01-01")).await;
    assert_eq!(emu.flow(&batch).unwrap().count_of(&a), 1);
}

#[tokio::test]
async fn the_audiences_per_flow_guardrail_refuses_growth_only() {
    let emu = start(|b| b.configure(|s| s.max_audiences_per_flow = 2)).await;
    let s = session(&emu);
    let f = flow(&emu, "Kinesis", DestinationKind::Streaming).await;
    let mut ids = Vec::new();
    for name in ["A", "B", "C"] {
        ids.push(audience(&s, name, None).await);
    }
    add(&s, &f, &plain(&ids[0])).await;
    add(&s, &f, &plain(&ids[1])).await;
    let read = s.get_flow(&f).await.unwrap();
    let err = s
        .patch_flow(&f, &read.etag, &[FlowPatchOp::add_selector(&plain(&ids[2]))])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Terminal);
    assert!(err.message().starts_with("segmentSelectors:"), "{}", err.message());
    assert!(err.message().contains("at most 2"), "{}", err.message());
    // Lowered below the current size, a removal still goes through.
    emu.update_settings(|s| s.max_audiences_per_flow = 1);
    s.patch_flow(&f, &read.etag, &[FlowPatchOp::remove_selector(1, &read.selectors()[1])])
        .await
        .unwrap();
    assert_eq!(emu.flow(&f).unwrap().selector_ids(), vec![ids[0].as_str()]);
}

#[tokio::test]
async fn list_flows_filters_and_follows_continuation_tokens() {
    let emu = start(|b| b.configure(|s| s.flow_page_max = 2)).await;
    let s = session(&emu);
    let a = audience(&s, "Churn", None).await;
    let mut batch = Vec::new();
    for i in 0..3 {
        batch.push(flow(&emu, &format!("S3 {i}"), DestinationKind::Batch).await);
    }
    let k1 = flow(&emu, "Kinesis 1", DestinationKind::Streaming).await;
    let mut off = NewFlow::new("dev1", "Kinesis off", DestinationKind::Streaming);
    off.state = "disabled".into();
    let k2 = emu.admin().create_flow(&off).await.unwrap();
    emu.admin()
        .create_flow(&NewFlow::new("prod", "Elsewhere", DestinationKind::Batch))
        .await
        .unwrap();
    emu.advance_clock(Duration::from_secs(1));
    add(&s, &k1, &plain(&a)).await;

    let all = s
        .list_flows(&[(aep::FLOW_FILTER_IS_DESTINATION, "true")])
        .await
        .unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(all[0].id, k1, "the last updated first");
    assert_eq!(emu.stats().received("list_flows"), 3, "pages of 2");
    let s3 = s
        .list_flows(&[(aep::FLOW_FILTER_TARGET_SPEC, aep::CONNECTION_SPEC_S3)])
        .await
        .unwrap();
    let mut s3_ids: Vec<_> = s3.iter().map(|f| f.id.clone()).collect();
    s3_ids.sort();
    batch.sort();
    assert_eq!(s3_ids, batch);
    let mapped = s
        .list_flows(&[
            (aep::FLOW_FILTER_SELECTOR_ID, a.as_str()),
            (aep::FLOW_FILTER_STATE, "enabled"),
        ])
        .await
        .unwrap();
    assert_eq!(mapped.len(), 1);
    assert_eq!(mapped[0].position_of(&a), Some(0));
    let enabled = s.list_flows(&[(aep::FLOW_FILTER_STATE, "enabled")]).await.unwrap();
    assert!(enabled.iter().all(|f| f.id != k2));
    assert_eq!(enabled.len(), 4);
    let unsupported = s.list_flows(&[("owner", "me")]).await.unwrap_err();
    assert_eq!(unsupported.kind(), ErrorKind::Terminal);
    assert!(
        unsupported.message().starts_with("property:"),
        "{}",
        unsupported.message()
    );
}

// ---------------------------------------------------------------------------------------------
// Export runs, segmentation jobs and schedules on the emulator clock
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_streaming_flow_exports_each_mapped_audience_once_after_the_delay() {
    let emu = start(|b| {
        b.configure(|s| {
            s.streaming_export_delay_ms = 5_000;
            s.export_run_duration_ms = 1_000;
        })
    })
    .await;
    let s = session(&emu);
    let a = audience(&s, "Churn", None).await;
    let f = flow(&emu, "Kinesis", DestinationKind::Streaming).await;
    add(&s, &f, &plain(&a)).await;
    assert!(s.list_flow_runs(&f).await.unwrap().is_empty(), "not yet");

    emu.advance_clock(Duration::from_millis(5_100));
    let runs = s.list_flow_runs(&f).await.unwrap();
    assert_eq!(runs.len(), 1);
    assert!(runs[0].concerns(&a));
    assert_eq!(runs[0].flow_id, f);
    assert_eq!(runs[0].status(), FlowRunStatus::Processing);
    assert_eq!(runs[0].completed_at(), None);

    emu.advance_clock(Duration::from_secs(2));
    let run = s.get_flow_run(&runs[0].id).await.unwrap();
    assert_eq!(run.status(), FlowRunStatus::Success);
    assert!(run.completed_at().unwrap() > run.started_at().unwrap());
    let summary = run.metrics.as_ref().unwrap().record_summary.as_ref().unwrap();
    assert_eq!(
        summary.target_summaries[0].entity_summaries[0].id,
        format!("segment:{a}")
    );
    assert!(summary.input_record_count.unwrap() > 0);
    assert_eq!(summary.input_record_count, summary.output_record_count);

    emu.advance_clock(Duration::from_secs(3 * 86_400));
    assert_eq!(s.list_flow_runs(&f).await.unwrap().len(), 1, "once");
    assert_eq!(s.list_audience_flow_runs(&f, &a).await.unwrap().len(), 1);
    assert!(s.list_audience_flow_runs(&f, "other").await.unwrap().is_empty());
    let view = emu.flow(&f).unwrap();
    assert_eq!(view.runs_of(&a).count(), 1);
    assert_eq!(view.runs[0].trigger, RunTrigger::Streaming);
    let missing = s.get_flow_run("no-such-run").await.unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound);

    // Past the retention the run is no longer listed.
    emu.advance_clock(Duration::from_secs(8 * 86_400));
    assert!(s.list_flow_runs(&f).await.unwrap().is_empty());
}

#[tokio::test]
async fn zero_latency_streaming_exports_are_immediate() {
    let emu = start(|b| b).await;
    let s = session(&emu);
    let a = audience(&s, "Churn", None).await;
    let f = flow(&emu, "Kinesis", DestinationKind::Streaming).await;
    add(&s, &f, &plain(&a)).await;
    let runs = s.list_flow_runs(&f).await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status(), FlowRunStatus::Success);
}

#[tokio::test]
async fn batch_flows_export_after_each_daily_segmentation_job_or_at_their_start_time() {
    let emu = start(|b| b.configure(|s| s.export_run_duration_ms = 10 * 60_000)).await;
    let s = session(&emu);
    let a = audience(&s, "After eval", None).await;
    let b = audience(&s, "At one pm", None).await;
    let f = flow(&emu, "S3", DestinationKind::Batch).await;
    let (midnight, today) = next_midnight(&emu).await;
    set_now(&emu, midnight + 10 * 60_000).await;

    add(&s, &f, &daily(&a, &today)).await;
    let mut once = daily(&b, &today);
    let schedule = once.value.schedule.as_mut().unwrap();
    schedule.frequency = Some("ONCE".into());
    schedule.trigger_type = Some("SCHEDULED".into());
    schedule.start_time = Some("13:00".into());
    add(&s, &f, &once).await;
    assert!(s.list_flow_runs(&f).await.unwrap().is_empty());

    // The schedule and the jobs: 01:00 UTC, SUCCEEDED 30 minutes later.
    let schedules = s.list_schedules().await.unwrap();
    let daily_schedule = schedules.iter().find(|x| x.is_batch_segmentation()).unwrap();
    assert_eq!(daily_schedule.schedule.as_deref(), Some("0 0 1 * * ?"));
    assert_eq!(daily_schedule.daily_time_utc(), Some((1, 0)));
    set_now(&emu, midnight + HOUR_MS + 60_000).await;
    let jobs = s.list_segment_jobs(None, 5).await.unwrap();
    assert_eq!(jobs[0].creation_time, Some(midnight + HOUR_MS));
    assert_eq!(jobs[0].status, SegmentJobStatus::Processing);
    assert!(jobs[0].is_scheduled());
    assert_eq!(
        jobs[0].properties.as_ref().unwrap().schedule_id.as_deref(),
        Some(daily_schedule.id.as_str())
    );
    assert!(
        jobs.windows(2).all(|w| w[0].creation_time > w[1].creation_time),
        "newest first"
    );
    let done = s.list_segment_jobs(Some("SUCCEEDED"), 5).await.unwrap();
    assert_eq!(done.len(), 5);
    assert_eq!(done[0].creation_time, Some(midnight + HOUR_MS - DAY_MS));
    assert!(s.list_flow_runs(&f).await.unwrap().is_empty(), "the job has not ended");

    // The job ends at 01:30: the AFTER_SEGMENT_EVAL audience is exported then.
    set_now(&emu, midnight + HOUR_MS + 31 * 60_000).await;
    let jobs = s.list_segment_jobs(Some("SUCCEEDED"), 1).await.unwrap();
    assert_eq!(jobs[0].creation_time, Some(midnight + HOUR_MS));
    let runs = s.list_flow_runs(&f).await.unwrap();
    assert_eq!(runs.len(), 1);
    assert!(runs[0].concerns(&a));
    assert_eq!(runs[0].started_at(), Some(midnight + HOUR_MS + 30 * 60_000));

    // 13:00 the one-time SCHEDULED export; the next day's job exports the daily one again.
    set_now(&emu, midnight + DAY_MS + 2 * HOUR_MS).await;
    let runs = s.list_flow_runs(&f).await.unwrap();
    let of = |id: &str| runs.iter().filter(|r| r.concerns(id)).count();
    assert_eq!((of(&a), of(&b)), (2, 1), "{runs:?}");
    assert_eq!(
        runs.iter().find(|r| r.concerns(&b)).unwrap().started_at(),
        Some(midnight + 13 * HOUR_MS)
    );
    assert!(
        runs.windows(2).all(|w| w[0].created_at >= w[1].created_at),
        "newest first"
    );
    set_now(&emu, midnight + 3 * DAY_MS + 14 * HOUR_MS).await;
    let runs = s.list_flow_runs(&f).await.unwrap();
    assert_eq!(runs.iter().filter(|r| r.concerns(&b)).count(), 1, "ONCE exports once");
    assert_eq!(runs.iter().filter(|r| r.concerns(&a)).count(), 4);
    let triggers: Vec<RunTrigger> = emu.flow(&f).unwrap().runs.iter().map(|r| r.trigger).collect();
    assert!(triggers.contains(&RunTrigger::Scheduled) && triggers.contains(&RunTrigger::AfterSegmentEval));

    // The segmentation time is a setting.
    emu.update_settings(|s| {
        s.segmentation_hour_utc = 2;
        s.segmentation_minute_utc = 30;
    });
    let schedules = s.list_schedules().await.unwrap();
    assert_eq!(schedules[0].schedule.as_deref(), Some("0 30 2 * * ?"));
}

// ---------------------------------------------------------------------------------------------
// Ad hoc activation
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn ad_hoc_activation_exports_now_and_refuses_as_the_docs_say() {
    let emu = start(|b| b.configure(|s| s.export_run_duration_ms = 10 * 60_000)).await;
    let s = session(&emu);
    let raw = Raw::new(&emu).await;
    let a = audience(&s, "Churn risk", None).await;
    let unmapped = audience(&s, "Not mapped", None).await;
    let f = flow(&emu, "S3", DestinationKind::Batch).await;
    let k = flow(&emu, "Kinesis", DestinationKind::Streaming).await;
    let (midnight, today) = next_midnight(&emu).await;
    set_now(&emu, midnight + 10 * 60_000).await;
    add(&s, &f, &daily(&a, &today)).await;
    add(&s, &k, &plain(&a)).await;

    // Before the first scheduled activation (01:30) + 1 hour: out of schedule range.
    let early = s.adhoc_run(&f, &[a.as_str()]).await.unwrap_err();
    assert_eq!(early.kind(), ErrorKind::Terminal);
    assert_eq!(
        early.message(),
        "Segments Churn risk are not part of this dataflow or out of schedule range!"
    );
    set_now(&emu, midnight + 2 * HOUR_MS + 29 * 60_000).await;
    assert!(s.adhoc_run(&f, &[a.as_str()]).await.is_err(), "59 minutes after");
    set_now(&emu, midnight + 2 * HOUR_MS + 31 * 60_000).await;

    let orders = s.adhoc_run(&f, &[a.as_str()]).await.unwrap();
    assert_eq!(orders.len(), 1);
    assert_eq!(
        (orders[0].segment.as_str(), orders[0].order.as_str()),
        (a.as_str(), f.as_str())
    );
    assert!(
        orders[0].status_url.contains("/data/foundation/flowservice/runs/"),
        "{}",
        orders[0].status_url
    );
    let run_id = orders[0].run_id().unwrap().to_owned();
    let run = s.get_flow_run(&run_id).await.unwrap();
    assert_eq!(run.status(), FlowRunStatus::Processing);
    assert!(run.concerns(&a));
    assert!(s.list_flow_runs(&f).await.unwrap().iter().any(|r| r.id == run_id));

    // One export per audience at a time.
    let busy = s.adhoc_run(&f, &[a.as_str()]).await.unwrap_err();
    assert_eq!(
        busy.message(),
        format!("Run already going on for audience {a} for order {f} with run id {run_id}")
    );
    // Not mapped in that flow; a streaming flow.
    let not_mapped = s.adhoc_run(&f, &[unmapped.as_str()]).await.unwrap_err();
    assert_eq!(
        not_mapped.message(),
        "Segments Not mapped are not part of this dataflow or out of schedule range!"
    );
    let streaming = s.adhoc_run(&k, &[a.as_str()]).await.unwrap_err();
    assert!(
        streaming.message().starts_with("Segments Churn risk"),
        "{}",
        streaming.message()
    );
    // More than 80 audiences in one job.
    let many: Vec<String> = (0..81).map(|i| format!("a{i}")).collect();
    let too_many = s.adhoc_run(&f, &many).await.unwrap_err();
    assert_eq!(too_many.kind(), ErrorKind::Terminal);
    assert!(too_many.message().contains("at most 80"), "{}", too_many.message());
    // Unknown destination instance.
    let missing = s.adhoc_run("no-such-flow", &[a.as_str()]).await.unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound);
    // Version 1 (no v2 Accept header) needs exportIds.
    let mut info = serde_json::Map::new();
    info.insert(f.clone(), json!([a.clone()]));
    let body = json!({ "activationInfo": info });
    let (status, v1) = raw
        .send(
            reqwest::Method::POST,
            "/data/core/activation/disflowprovider/adhocrun",
            &[],
            Some(&body),
        )
        .await;
    assert_eq!(status, 400);
    assert!(v1["message"].as_str().unwrap().starts_with("exportIds:"), "{v1}");

    // Once the export has finished, another one may start.
    set_now(&emu, midnight + 3 * HOUR_MS).await;
    assert_eq!(s.get_flow_run(&run_id).await.unwrap().status(), FlowRunStatus::Success);
    s.adhoc_run(&f, &[a.as_str()]).await.unwrap();
    let stats = emu.stats();
    assert_eq!(stats.adhoc_runs_started, 2);
    assert_eq!(stats.adhoc_refusals, 7);
    let adhoc = emu
        .flow(&f)
        .unwrap()
        .runs
        .iter()
        .filter(|r| r.trigger == RunTrigger::Adhoc)
        .count();
    assert_eq!(adhoc, 2);
}

// ---------------------------------------------------------------------------------------------
// Lost answers, faults, the delete refusal
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn lost_patch_and_ad_hoc_answers_leave_the_work_done_and_are_never_resent() {
    for mode in [LostMode::Drop, LostMode::Error500, LostMode::Timeout] {
        let emu = start(|b| b).await;
        let s = bare_session(&emu, Duration::from_millis(500));
        let a = audience(&s, "Churn", None).await;
        let f = flow(&emu, "S3", DestinationKind::Batch).await;
        let today = date_of(emu.admin().clock().await.unwrap().now_ms);
        let lost = LostAnswer {
            next: 1,
            mode,
            ..LostAnswer::default()
        };
        emu.admin()
            .set_faults(&Faults {
                hang_ms: 3_000,
                lost_answers: aep_emulator::LostAnswers {
                    patch_flow: lost,
                    adhoc_run: lost,
                    ..Default::default()
                },
                ..Faults::default()
            })
            .await
            .unwrap();
        let read = s.get_flow(&f).await.unwrap();
        let err = s
            .patch_flow(&f, &read.etag, &[FlowPatchOp::add_selector(&daily(&a, &today))])
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::OutcomeUnknown, "{mode:?}: {err:?}");
        if mode == LostMode::Error500 {
            assert_eq!(err.status(), Some(500));
        }
        // The flow tells: the patch was applied (once).
        let after = s.get_flow(&f).await.unwrap();
        assert_ne!(after.etag, read.etag);
        assert_eq!(emu.flow(&f).unwrap().count_of(&a), 1, "{mode:?}");

        emu.advance_clock(Duration::from_secs(3 * 86_400));
        let err = s.adhoc_run(&f, &[a.as_str()]).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::OutcomeUnknown, "{mode:?}: {err:?}");
        let view = emu.flow(&f).unwrap();
        assert_eq!(view.runs.iter().filter(|r| r.trigger == RunTrigger::Adhoc).count(), 1);
        let stats = emu.stats();
        assert_eq!(stats.lost_answers, 2, "{mode:?}");
        assert_eq!(stats.received("patch_flow"), 1, "{mode:?}: not resent");
        assert_eq!(stats.received("adhoc_run"), 1, "{mode:?}: not resent");
        let dropped = if mode == LostMode::Error500 { 0 } else { 2 };
        assert_eq!(stats.connections_dropped, dropped, "{mode:?}");
    }
}

#[tokio::test]
async fn injected_errors_apply_to_the_activation_routes() {
    let emu = start(|b| b).await;
    let s = session(&emu);
    let a = audience(&s, "Churn", None).await;
    let f = flow(&emu, "Kinesis", DestinationKind::Streaming).await;
    // A 429 on a read is retried.
    emu.update_faults(|x| x.rate_limit_next = 1);
    let read = s.get_flow(&f).await.unwrap();
    assert_eq!(emu.stats().received("get_flow"), 2);
    // A 503 on a PATCH means not processed: retryable, but the client does not resend it.
    emu.update_faults(|x| x.unavailable_next = 1);
    let err = s
        .patch_flow(&f, &read.etag, &[FlowPatchOp::add_selector(&plain(&a))])
        .await
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Retryable { .. }), "{err:?}");
    assert_eq!(emu.stats().received("patch_flow"), 1);
    assert!(emu.flow(&f).unwrap().selectors.is_empty());
    // An injected 500 may have come after the work: outcome unknown.
    emu.update_faults(|x| x.server_error_probability = 1.0);
    let err = s
        .patch_flow(&f, &read.etag, &[FlowPatchOp::add_selector(&plain(&a))])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutcomeUnknown);
    let err = bare_session(&emu, Duration::from_secs(5))
        .list_segment_jobs(None, 1)
        .await
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Retryable { .. }), "reads are retryable");
}

#[tokio::test]
async fn deleting_a_mapped_audience_is_refused_until_it_is_unmapped() {
    for model in [SelectorIdModel::AsSent, SelectorIdModel::Normalise] {
        let emu = start(|b| b.configure(|s| s.selector_ids = model)).await;
        let s = session(&emu);
        let a = audience(&s, "Mapped", Some("crm-mapped")).await;
        let f = flow(&emu, "Kinesis", DestinationKind::Streaming).await;
        add(&s, &f, &plain(&a)).await;

        let err = s.delete_audience(&a).await.unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::NotNow { .. }), "{model:?}: {err:?}");
        assert_eq!(err.status(), Some(422));
        assert_eq!(err.code(), Some("100960-422"));
        let used_by = format!("used by destination dataflow {f}");
        assert!(err.message().contains(&used_by), "{}", err.message());
        let raw = Raw::new(&emu).await;
        let (status, body) = raw
            .send(
                reqwest::Method::DELETE,
                &format!("/data/core/ups/audiences/{a}"),
                &[],
                None,
            )
            .await;
        assert_eq!(
            (status, body["errorCode"].as_str()),
            (422, Some("100960-422")),
            "{body}"
        );
        assert!(body["detail"].as_str().unwrap().contains(&used_by), "{body}");
        assert_eq!(emu.stats().delete_refusals, 2);
        assert!(emu.state().audience(&a).is_some());

        // Unmapped (fresh read, remove at its index), the delete goes through.
        let read = s.get_flow(&f).await.unwrap();
        let index = read.position_of(&a).unwrap();
        s.patch_flow(
            &f,
            &read.etag,
            &[FlowPatchOp::remove_selector(index, &read.selectors()[index])],
        )
        .await
        .unwrap();
        s.delete_audience(&a).await.unwrap();
        assert!(emu.state().audience(&a).is_none(), "{model:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Counters, admin API and the state file
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_activation_request_is_counted_by_operation() {
    let emu = start(|b| b).await;
    let s = session(&emu);
    let raw = Raw::new(&emu).await;
    let a = audience(&s, "Churn", None).await;
    let f = flow(&emu, "S3", DestinationKind::Batch).await;
    let before = emu.stats();
    // Refused by the gateway (no token): counted all the same.
    let anonymous = reqwest::Client::new()
        .get(format!("{}/data/foundation/flowservice/flows/{f}", raw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    let read = s.get_flow(&f).await.unwrap();
    s.list_flows(&[]).await.unwrap();
    let today = date_of(emu.admin().clock().await.unwrap().now_ms);
    s.patch_flow(&f, &read.etag, &[FlowPatchOp::add_selector(&daily(&a, &today))])
        .await
        .unwrap();
    s.list_flow_runs(&f).await.unwrap();
    let _ = s.get_flow_run("r").await;
    let _ = s.adhoc_run(&f, &[a.as_str()]).await;
    s.list_segment_jobs(Some("SUCCEEDED"), 10).await.unwrap();
    s.list_schedules().await.unwrap();

    let stats = emu.admin().stats().await.unwrap();
    let expected = [
        ("get_flow", 2),
        ("list_flows", 1),
        ("patch_flow", 1),
        ("list_flow_runs", 1),
        ("get_flow_run", 1),
        ("adhoc_run", 1),
        ("list_segment_jobs", 1),
        ("list_schedules", 1),
    ];
    for (op, n) in expected {
        assert_eq!(
            stats.received(op) - before.received(op),
            n,
            "{op}: {:?}",
            stats.received
        );
    }
    assert_eq!(stats.flow_patches, 1);
    assert_eq!(stats.adhoc_refusals, 1);
    assert_eq!(
        stats.requests_with_status("GET /data/foundation/flowservice/flows/{id}", "401"),
        1
    );
}

#[tokio::test]
async fn activation_settings_and_faults_round_trip_through_the_admin_api() {
    let emu = start(|b| b).await;
    let admin = emu.admin();
    let config = admin.config().await.unwrap();
    assert_eq!(config.max_audiences_per_flow, 250);
    assert_eq!(config.adhoc_min_wait_ms, 3_600_000);
    assert_eq!(config.streaming_export_delay_ms, 0, "zero latency");
    let mut changed = config.clone();
    changed.patch_answer = PatchAnswer::Accepted;
    changed.selector_ids = SelectorIdModel::Normalise;
    changed.segmentation_hour_utc = 4;
    assert_eq!(admin.set_config(&changed).await.unwrap(), changed);
    assert_eq!(admin.config().await.unwrap(), changed);

    let faults = Faults {
        concurrent_writer_probability: 0.25,
        concurrent_writer_next: 2,
        lost_answers: aep_emulator::LostAnswers {
            patch_flow: LostAnswer {
                all: true,
                mode: LostMode::Timeout,
                ..LostAnswer::default()
            },
            adhoc_run: LostAnswer {
                probability: 0.5,
                ..LostAnswer::default()
            },
            ..Default::default()
        },
        ..Faults::default()
    };
    admin.set_faults(&faults).await.unwrap();
    assert_eq!(admin.faults().await.unwrap(), faults);

    // Admin flows: created, mapped as the UI would (batch defaults), unmapped, deleted.
    let s = session(&emu);
    let a = audience(&s, "Churn", Some("crm-churn")).await;
    let f = admin
        .create_flow(&NewFlow::new("dev1", "S3", DestinationKind::Batch))
        .await
        .unwrap();
    let etag = admin.add_selector(&f, &a).await.unwrap();
    let read = s.get_flow(&f).await.unwrap();
    assert_eq!(read.etag, etag);
    let value = &read.selectors()[0].value;
    assert_eq!(value.export_mode.as_deref(), Some("DAILY_FULL_EXPORT"));
    assert_eq!(value.name.as_deref(), Some("Churn"));
    assert_eq!(value.id.as_deref(), Some("crm-churn"), "the id model applies");
    assert_eq!(value.system_segment_id.as_deref(), Some(a.as_str()));
    admin
        .add_selector_with(
            &f,
            &AddSelector {
                audience_id: "platform-segment".into(),
                value: Some(json!({"name": "Built in the UI"})),
            },
        )
        .await
        .unwrap();
    assert_eq!(emu.flow(&f).unwrap().selectors.len(), 2);
    admin.remove_selector(&f, &a).await.unwrap();
    assert_eq!(emu.flow(&f).unwrap().selector_ids(), vec!["platform-segment"]);
    let disabled = admin
        .mutate_flow(
            &f,
            &FlowMutation {
                state: Some("disabled".into()),
                ..FlowMutation::default()
            },
        )
        .await
        .unwrap();
    let read = s.get_flow(&f).await.unwrap();
    assert_eq!((read.etag.as_str(), read.is_enabled()), (disabled.as_str(), false));
    admin.delete_flow(&f).await.unwrap();
    assert_eq!(s.get_flow(&f).await.unwrap_err().kind(), ErrorKind::NotFound);
    assert!(admin.add_selector(&f, &a).await.is_err());
    // In-process helpers do the same.
    let g = emu.create_flow(&NewFlow::new("dev1", "Kinesis", DestinationKind::Streaming));
    assert!(emu.add_selector(&g, &a).is_some());
    assert_eq!(emu.state().flow(&g).unwrap().selectors.len(), 1);
}

#[tokio::test]
async fn flows_survive_a_restart_with_the_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let emu = start(|b| b.state_file(&path)).await;
    let s = session(&emu);
    let a = audience(&s, "Kept", None).await;
    let f = flow(&emu, "Kinesis", DestinationKind::Streaming).await;
    let read = add(&s, &f, &plain(&a)).await;
    let runs = s.list_flow_runs(&f).await.unwrap();
    assert_eq!(runs.len(), 1);
    let before = emu.stats();
    emu.shutdown().await.unwrap();

    let emu = start(|b| b.state_file(&path)).await;
    let s = session(&emu);
    let again = s.get_flow(&f).await.unwrap();
    assert_eq!(again.etag, read.etag);
    assert_eq!(again.selectors(), read.selectors());
    let runs_again = s.list_flow_runs(&f).await.unwrap();
    assert_eq!(
        runs_again.iter().map(|r| &r.id).collect::<Vec<_>>(),
        runs.iter().map(|r| &r.id).collect::<Vec<_>>()
    );
    assert_eq!(emu.stats().flow_patches, before.flow_patches);
    // Still conditioned on the kept etag.
    s.patch_flow(&f, &read.etag, &[FlowPatchOp::remove_selector(0, &read.selectors()[0])])
        .await
        .unwrap();
}

#[tokio::test]
async fn state_files_without_flows_still_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let old = json!({
        "tenants": {"LOCAL0RG@AdobeOrg/dev1": {"org": "LOCAL0RG@AdobeOrg", "sandbox": "dev1",
            "sandbox_id": "s", "audiences": {}, "operations": {}}},
        "clock_offset_ms": 0
    });
    std::fs::write(&path, old.to_string()).unwrap();
    let emu = start(|b| b.state_file(&path)).await;
    assert!(emu.state().flows.is_empty());
    assert!(session(&emu).list_flows(&[]).await.unwrap().is_empty());
}
