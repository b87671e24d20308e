//! `kubectl apply` refuses invalid ExternalAudiences with messages that name the field and the
//! rule (OpenAPI + CEL in the CRD), on the real apiserver. One case per rule, table-driven.

mod support;

use serde_json::{Value, json};
use support::operator::{install_crd_and_rbac, kubectl};

fn valid(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "aep.audience-operator.dev/v1alpha1",
        "kind": "ExternalAudience",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "credentialsSecretRef": {"name": "aep-credentials"},
            "sandbox": "prod",
            "name": "Loyalty members",
            "description": "Members exported nightly from the CRM",
            "fields": [
                {"name": "ppid", "type": "string", "identityNs": "email"},
                {"name": "list_id", "type": "string", "labels": ["core/C2"]}
            ],
            "sourceSpec": {"path": "activation/sample-source/example.csv", "type": "file",
                           "sourceType": "Cloud Storage", "baseConnectionId": "1d1d4bc5"},
            "ttlInDays": 40,
            "labels": ["core/C1"],
            "ingestion": {"dataFilterStartTime": 764245635}
        }
    })
}

fn apply(obj: &Value) -> (bool, String) {
    kubectl(&["apply", "-f", "-"], Some(&obj.to_string()))
}

fn set(obj: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer");
    let target = obj.pointer_mut(parent).expect("parent exists");
    match target {
        Value::Object(m) => {
            if value.is_null() {
                m.remove(key);
            } else {
                m.insert(key.to_owned(), value);
            }
        }
        Value::Array(a) => a[key.parse::<usize>().expect("index")] = value,
        _ => panic!("cannot set {pointer}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_are_refused_with_field_named_messages() {
    install_crd_and_rbac();
    let client = support::admin().await;
    let ns = support::namespace(&client, "invalid").await;
    let many_fields: Vec<Value> = (0..42)
        .map(|i| json!({"name": format!("c{i}"), "type": "string", "identityNs": "email"}))
        .collect();
    let cases: Vec<(&str, &str, Value, &str)> = vec![
        ("no fields", "/spec/fields", json!([]), "spec.fields"),
        (
            "more than 41 fields",
            "/spec/fields",
            json!(many_fields),
            "spec.fields: Too many",
        ),
        (
            "no identity field",
            "/spec/fields",
            json!([{"name": "a", "type": "string"}]),
            "spec.fields must contain at least one identity field",
        ),
        (
            "duplicate field names",
            "/spec/fields",
            json!([{"name": "a", "type": "string", "identityNs": "email"}, {"name": "a", "type": "number"}]),
            "spec.fields names must be unique",
        ),
        (
            "unknown field type",
            "/spec/fields/1/type",
            json!("text"),
            "spec.fields[1].type: Unsupported value",
        ),
        ("ttlInDays below 1", "/spec/ttlInDays", json!(0), "spec.ttlInDays"),
        ("ttlInDays above 90", "/spec/ttlInDays", json!(91), "spec.ttlInDays"),
        (
            "path with whitespace",
            "/spec/sourceSpec/path",
            json!("my file.csv"),
            "spec.sourceSpec.path must not contain whitespace",
        ),
        (
            "path with a no-break space (Unicode whitespace)",
            "/spec/sourceSpec/path",
            json!("my\u{a0}file.csv"),
            "spec.sourceSpec.path must not contain whitespace",
        ),
        (
            "path with an ideographic space",
            "/spec/sourceSpec/path",
            json!("my\u{3000}file.csv"),
            "spec.sourceSpec.path must not contain whitespace",
        ),
        (
            "path with a control character",
            "/spec/sourceSpec/path",
            json!("my\u{7}file.csv"),
            "spec.sourceSpec.path must not contain control characters",
        ),
        (
            "path longer than 1024",
            "/spec/sourceSpec/path",
            json!("p".repeat(1025)),
            "spec.sourceSpec.path: Too long",
        ),
        ("empty path", "/spec/sourceSpec/path", json!(""), "spec.sourceSpec.path"),
        (
            "name with a newline",
            "/spec/name",
            json!("Loyalty\nmembers"),
            "spec.name must not contain control characters",
        ),
        (
            "name longer than 256",
            "/spec/name",
            json!("n".repeat(257)),
            "spec.name: Too long",
        ),
        (
            "description longer than 4096",
            "/spec/description",
            json!("d".repeat(4097)),
            "spec.description: Too long",
        ),
        (
            "sandbox with uppercase and spaces",
            "/spec/sandbox",
            json!("My Sandbox"),
            "spec.sandbox: Invalid value",
        ),
        (
            "sandbox longer than 128",
            "/spec/sandbox",
            json!("s".repeat(129)),
            "spec.sandbox: Too long",
        ),
        (
            "audienceId with a slash",
            "/spec/audienceId",
            json!("../other"),
            "spec.audienceId: Invalid value",
        ),
        (
            "baseConnectionId with spaces",
            "/spec/sourceSpec/baseConnectionId",
            json!("a b"),
            "spec.sourceSpec.baseConnectionId: Invalid value",
        ),
        (
            "label longer than 128",
            "/spec/labels",
            json!([format!("core/{}", "C".repeat(130))]),
            "spec.labels[0]: Too long",
        ),
        (
            "more than 64 labels",
            "/spec/labels",
            json!((0..65).map(|i| format!("core/C{i}")).collect::<Vec<_>>()),
            "spec.labels: Too many",
        ),
        (
            "identityNs with a space",
            "/spec/fields/0/identityNs",
            json!("e mail"),
            "spec.fields[0].identityNs: Invalid value",
        ),
        (
            "Secret name that is not a DNS name",
            "/spec/credentialsSecretRef/name",
            json!("AEP_Creds"),
            "spec.credentialsSecretRef.name: Invalid value",
        ),
        (
            "start time after year 9999",
            "/spec/ingestion/dataFilterStartTime",
            json!(253402300800_i64),
            "spec.ingestion.dataFilterStartTime",
        ),
        (
            "source type other than file/folder",
            "/spec/sourceSpec/type",
            json!("blob"),
            "spec.sourceSpec.type: Unsupported value",
        ),
        (
            "sourceType other than Cloud Storage",
            "/spec/sourceSpec/sourceType",
            json!("FTP"),
            "spec.sourceSpec.sourceType: Unsupported value",
        ),
        (
            "unknown cloudType",
            "/spec/sourceSpec/cloudType",
            json!("Dropbox"),
            "spec.sourceSpec.cloudType: Unsupported value",
        ),
        (
            "audienceType other than people",
            "/spec/audienceType",
            json!("accounts"),
            "spec.audienceType: Unsupported value",
        ),
        (
            "originName other than CUSTOM_UPLOAD",
            "/spec/originName",
            json!("UPLOAD"),
            "spec.originName: Unsupported value",
        ),
        ("label without family", "/spec/labels", json!(["C1"]), "spec.labels[0]"),
        (
            "field label without family",
            "/spec/fields/1/labels",
            json!(["deep"]),
            "spec.fields[1].labels[0]",
        ),
        (
            "missing sandbox",
            "/spec/sandbox",
            Value::Null,
            "spec.sandbox: Required value",
        ),
        (
            "missing sourceSpec",
            "/spec/sourceSpec",
            Value::Null,
            "spec.sourceSpec: Required value",
        ),
        (
            "missing ingestion",
            "/spec/ingestion",
            Value::Null,
            "spec.ingestion: Required value",
        ),
        (
            "negative start time",
            "/spec/ingestion/dataFilterStartTime",
            json!(-1),
            "spec.ingestion.dataFilterStartTime",
        ),
        (
            "missing Secret reference",
            "/spec/credentialsSecretRef",
            Value::Null,
            "spec.credentialsSecretRef: Required value",
        ),
        (
            "unknown deletionPolicy",
            "/spec/deletionPolicy",
            json!("Keep"),
            "spec.deletionPolicy: Unsupported value",
        ),
    ];
    let mut failures = Vec::new();
    for (i, (what, pointer, value, expected)) in cases.iter().enumerate() {
        let mut obj = valid(&ns, &format!("bad-{i}"));
        set(&mut obj, pointer, value.clone());
        let (ok, out) = apply(&obj);
        if ok || !out.contains(expected) {
            failures.push(format!("{what}: applied={ok}, expected {expected:?} in: {out}"));
        }
    }
    // Rules spanning two fields.
    let mut obj = valid(&ns, "bad-s3");
    set(&mut obj, "/spec/sourceSpec/cloudType", json!("S3"));
    set(&mut obj, "/spec/sourceSpec/baseConnectionId", Value::Null);
    let (ok, out) = apply(&obj);
    if ok || !out.contains("spec.sourceSpec.baseConnectionId is required when cloudType is S3, GCS or SFTP") {
        failures.push(format!("S3 without baseConnectionId: applied={ok}: {out}"));
    }
    let mut obj = valid(&ns, "bad-window");
    set(&mut obj, "/spec/ingestion/dataFilterEndTime", json!(1));
    let (ok, out) = apply(&obj);
    if ok || !out.contains("spec.ingestion.dataFilterEndTime must not be before dataFilterStartTime") {
        failures.push(format!("end before start: applied={ok}: {out}"));
    }
    // Refresh schedules: the shape and each field's range at apply time, as a CronJob's.
    for (schedule, zone, refused, message) in [
        (
            "61 * * * *",
            None,
            true,
            "spec.ingestion.schedule must be a cron schedule",
        ),
        (
            "0 24 * * *",
            None,
            true,
            "spec.ingestion.schedule must be a cron schedule",
        ),
        (
            "0 2 * * * *",
            None,
            true,
            "spec.ingestion.schedule must be a cron schedule",
        ),
        (
            "0 2 * * 8",
            None,
            true,
            "spec.ingestion.schedule must be a cron schedule",
        ),
        (
            "CRON_TZ=UTC 0 2 * * *",
            None,
            true,
            "spec.ingestion.schedule must be a cron schedule",
        ),
        (
            "0 2 * * *",
            Some("Europe Berlin"),
            true,
            "spec.ingestion.timeZone must be an IANA time zone name",
        ),
        ("0 2 * * *", Some("Europe/Berlin"), false, ""),
        ("*/15 6-22 * JAN-MAR MON-FRI", None, false, ""),
        ("@daily", Some("UTC"), false, ""),
    ] {
        let mut obj = valid(&ns, "scheduled");
        set(&mut obj, "/spec/ingestion/schedule", json!(schedule));
        if let Some(zone) = zone {
            set(&mut obj, "/spec/ingestion/timeZone", json!(zone));
        }
        let (ok, out) = apply(&obj);
        if ok == refused || (refused && !out.contains(message)) {
            failures.push(format!("schedule {schedule:?} zone {zone:?}: applied={ok}: {out}"));
        }
    }
    let mut obj = valid(&ns, "zone-only");
    set(&mut obj, "/spec/ingestion/timeZone", json!("Europe/Berlin"));
    let (ok, out) = apply(&obj);
    if ok || !out.contains("spec.ingestion.timeZone applies to spec.ingestion.schedule") {
        failures.push(format!("time zone without schedule: applied={ok}: {out}"));
    }
    // The shipped invalid sample is refused too.
    let sample = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/samples/invalid-path-with-spaces.yaml"
    ))
    .expect("sample")
    .replace("namespace: marketing", &format!("namespace: {ns}"));
    let (ok, out) = kubectl(&["apply", "-f", "-"], Some(&sample));
    if ok || !out.contains("must not contain whitespace") || !out.contains("identity field") {
        failures.push(format!("invalid sample: applied={ok}: {out}"));
    }
    // The nightly-refresh sample (README's worked example) is accepted.
    let nightly = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/samples/nightly-refresh.yaml"
    ))
    .expect("sample")
    .replace("namespace: marketing", &format!("namespace: {ns}"));
    let (ok, out) = kubectl(&["apply", "-f", "-"], Some(&nightly));
    if !ok {
        failures.push(format!("nightly-refresh sample refused: {out}"));
    }
    // And the valid object is accepted.
    let (ok, out) = apply(&valid(&ns, "good"));
    if !ok {
        failures.push(format!("valid object refused: {out}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immutable_fields_are_refused_with_a_create_new_object_hint() {
    install_crd_and_rbac();
    let client = support::admin().await;
    let ns = support::namespace(&client, "immutable").await;
    let mut base = valid(&ns, "imm");
    set(&mut base, "/spec/audienceId", json!("aud-1"));
    let (ok, out) = apply(&base);
    assert!(ok, "{out}");
    let cases: Vec<(&str, &str, Value, &str)> = vec![
        ("name", "/spec/name", json!("Another name"), "spec.name is immutable"),
        ("name removed", "/spec/name", Value::Null, "spec.name is immutable"),
        ("sandbox", "/spec/sandbox", json!("dev"), "spec.sandbox is immutable"),
        (
            "sourceSpec.path",
            "/spec/sourceSpec/path",
            json!("other.csv"),
            "spec.sourceSpec is immutable",
        ),
        (
            "sourceSpec.type",
            "/spec/sourceSpec/type",
            json!("folder"),
            "spec.sourceSpec is immutable",
        ),
        (
            "sourceSpec.baseConnectionId",
            "/spec/sourceSpec/baseConnectionId",
            json!("x"),
            "spec.sourceSpec is immutable",
        ),
        (
            "field name",
            "/spec/fields/1/name",
            json!("list"),
            "field names, types and identity namespaces are immutable",
        ),
        (
            "field type",
            "/spec/fields/1/type",
            json!("number"),
            "field names, types and identity namespaces are immutable",
        ),
        (
            "field identityNs",
            "/spec/fields/0/identityNs",
            json!("ECID"),
            "field names, types and identity namespaces are immutable",
        ),
        (
            "field added",
            "/spec/fields",
            json!([{"name": "ppid", "type": "string", "identityNs": "email"}, {"name": "list_id", "type": "string"}, {"name": "x", "type": "string"}]),
            "field names, types and identity namespaces are immutable",
        ),
        (
            "audienceId",
            "/spec/audienceId",
            json!("aud-2"),
            "spec.audienceId is immutable",
        ),
        (
            "audienceType",
            "/spec/audienceType",
            json!("accounts"),
            "spec.audienceType",
        ),
        ("originName", "/spec/originName", json!("OTHER"), "spec.originName"),
    ];
    let mut failures = Vec::new();
    for (what, pointer, value, expected) in &cases {
        let mut obj = base.clone();
        set(&mut obj, pointer, value.clone());
        let (ok, out) = apply(&obj);
        if ok || !out.contains(expected) {
            failures.push(format!("{what}: applied={ok}, expected {expected:?} in: {out}"));
        }
        if !ok && expected.contains("immutable") && !out.contains("create a new ExternalAudience") {
            failures.push(format!("{what}: message lacks the create-new hint: {out}"));
        }
    }
    // Updatable fields go through.
    let mut obj = base.clone();
    set(&mut obj, "/spec/description", json!("new"));
    set(&mut obj, "/spec/fields/1/labels", json!(["core/C3"]));
    set(&mut obj, "/spec/ttlInDays", json!(60));
    set(&mut obj, "/spec/labels", json!(["core/C2"]));
    let (ok, out) = apply(&obj);
    if !ok {
        failures.push(format!("updatable change refused: {out}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn valid_activation(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "aep.audience-operator.dev/v1alpha1",
        "kind": "AudienceActivation",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "audienceRef": {"name": "loyalty-members"},
            "dataflowId": "b8f0c5a2-6d1e-4f3b-9c7a-2e5d8f1a0b01",
            "export": {
                "mode": "DAILY_FULL_EXPORT",
                "schedule": {"frequency": "DAILY", "triggerType": "SCHEDULED", "startTime": "13:00",
                             "startDate": "2026-01-01", "endDate": "2026-12-31"},
                "filenameTemplate": "%DESTINATION_NAME%_%SEGMENT_ID%"
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_activations_are_refused_with_field_named_messages() {
    install_crd_and_rbac();
    let client = support::admin().await;
    let ns = support::namespace(&client, "invalid-act").await;
    let (ok, out) = apply(&valid_activation(&ns, "valid"));
    assert!(ok, "the valid activation applies: {out}");
    let s = "/spec/export/schedule";
    let cases: Vec<(&str, &str, Value, &str)> = vec![
        (
            "no dataflow",
            "/spec/dataflowId",
            Value::Null,
            "spec.dataflowId: Required value",
        ),
        (
            "dataflow with a space",
            "/spec/dataflowId",
            json!("a b"),
            "spec.dataflowId",
        ),
        (
            "unknown mode",
            "/spec/export/mode",
            json!("HOURLY"),
            "spec.export.mode: Unsupported value",
        ),
        (
            "incremental frequency with a full export",
            "/spec/export/schedule/frequency",
            json!("EVERY_3_HOURS"),
            "spec.export.schedule.frequency must be ONCE or DAILY with mode DAILY_FULL_EXPORT",
        ),
        (
            "no trigger with a full export",
            "/spec/export/schedule/triggerType",
            Value::Null,
            "spec.export.schedule.triggerType is required with mode DAILY_FULL_EXPORT",
        ),
        (
            "minutes in startTime",
            "/spec/export/schedule/startTime",
            json!("13:30"),
            "spec.export.schedule.startTime",
        ),
        (
            "scheduled without startTime",
            "/spec/export/schedule/startTime",
            Value::Null,
            "spec.export.schedule.startTime is required with triggerType SCHEDULED",
        ),
        (
            "a date that is not YYYY-MM-DD",
            "/spec/export/schedule/startDate",
            json!("01/02/2026"),
            "spec.export.schedule.startDate",
        ),
        (
            "end before start",
            "/spec/export/schedule/endDate",
            json!("2025-12-31"),
            "spec.export.schedule.endDate must not be before startDate",
        ),
        (
            "a slash in the file name",
            "/spec/export/filenameTemplate",
            json!("a/b"),
            "spec.export.filenameTemplate must not contain control characters or '/'",
        ),
        (
            "unknown deletion policy",
            "/spec/deletionPolicy",
            json!("Keep"),
            "spec.deletionPolicy: Unsupported value",
        ),
    ];
    let mut failures = Vec::new();
    for (i, (what, pointer, value, message)) in cases.iter().enumerate() {
        let mut obj = valid_activation(&ns, &format!("case-{i}"));
        set(&mut obj, pointer, value.clone());
        let (ok, out) = apply(&obj);
        if ok || !out.contains(message) {
            failures.push(format!("{what}: applied={ok}, want {message:?}: {out}"));
        }
    }
    // Rules across fields of the schedule.
    let mut once = valid_activation(&ns, "once-with-end");
    set(&mut once, &format!("{s}/frequency"), json!("ONCE"));
    let (ok, out) = apply(&once);
    if ok || !out.contains("spec.export.schedule.endDate does not apply to a one-time export") {
        failures.push(format!("ONCE with endDate: applied={ok}: {out}"));
    }
    let mut after = valid_activation(&ns, "after-eval-with-time");
    set(&mut after, &format!("{s}/triggerType"), json!("AFTER_SEGMENT_EVAL"));
    let (ok, out) = apply(&after);
    if ok
        || !out.contains(
            "spec.export.schedule.startTime does not apply to DAILY_FULL_EXPORT with triggerType AFTER_SEGMENT_EVAL",
        )
    {
        failures.push(format!("AFTER_SEGMENT_EVAL with startTime: applied={ok}: {out}"));
    }
    let mut incremental = valid_activation(&ns, "incremental");
    set(
        &mut incremental,
        "/spec/export/mode",
        json!("FIRST_FULL_THEN_INCREMENTAL"),
    );
    set(&mut incremental, &format!("{s}/frequency"), json!("ONCE"));
    let (ok, out) = apply(&incremental);
    if ok || !out.contains("with mode FIRST_FULL_THEN_INCREMENTAL") {
        failures.push(format!("incremental ONCE: applied={ok}: {out}"));
    }
    set(&mut incremental, &format!("{s}/frequency"), json!("EVERY_6_HOURS"));
    let (ok, out) = apply(&incremental);
    if !ok {
        failures.push(format!("incremental every 6 hours is valid: {out}"));
    }
    // Immutable references.
    for (pointer, value, message) in [
        (
            "/spec/audienceRef/name",
            json!("other"),
            "spec.audienceRef is immutable",
        ),
        (
            "/spec/dataflowId",
            json!("another-flow"),
            "spec.dataflowId is immutable",
        ),
    ] {
        let mut obj = valid_activation(&ns, "valid");
        set(&mut obj, pointer, value);
        let (ok, out) = apply(&obj);
        if ok || !out.contains(message) {
            failures.push(format!("changing {pointer}: applied={ok}: {out}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
