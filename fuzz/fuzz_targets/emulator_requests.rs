//! The emulator's request parsing (crate `aep-emulator`): a body is read as JSON the way the
//! routes read it (blank body = `null`), then every public validator of `validate` runs on it; the
//! admin API's JSON bodies are parsed as `axum::Json` parses them. The property is "no panic on
//! any input", plus cheap invariants of the validators' results (stated next to each assertion).
//!
//! The IMS form parsing of `POST /ims/token/v3` is not covered: it is inline in a private handler.

#![no_main]

use std::sync::LazyLock;

use aep_emulator::state::Store;
use aep_emulator::validate::{
    STANDARD_NAMESPACES, canonical_namespace, create_request, known_identity_namespaces, patch_request,
    start_run_request,
};
use aep_emulator::{AudienceMutation, CredentialSpec, Faults, Settings};
use audience_operator::aep::types::{
    CreateAudienceRequest, PatchAudienceRequest, StartRunRequest, TTL_MAX_DAYS, TTL_MIN_DAYS,
};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

/// The stored definition PATCH bodies are checked against: the reference sample, validated.
static STORED: LazyLock<CreateAudienceRequest> = LazyLock::new(|| {
    create_request(&json!({
        "name": "Churn risk — Q3",
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
    }))
    .expect("the reference sample is a valid create body")
});

static STANDARD: LazyLock<Vec<String>> =
    LazyLock::new(|| STANDARD_NAMESPACES.iter().map(|s| (*s).to_owned()).collect());

fuzz_target!(|data: &[u8]| {
    admin_bodies(data);
    let text = String::from_utf8_lossy(data);
    namespace(&text);
    // As `routes::parse_json`: a blank body is `null`, anything else must be JSON.
    let body = if data.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        match serde_json::from_slice::<Value>(data) {
            Ok(v) => v,
            Err(_) => return,
        }
    };
    create(&body);
    patch(&body, &STORED);
    start_run(&body);
});

fn create(body: &Value) {
    let Ok(definition) = create_request(body) else {
        return;
    };
    assert!(!definition.fields.is_empty(), "a valid create has fields");
    assert!(
        definition.fields.iter().any(|f| f.identity_ns.is_some()),
        "a valid create has an identity column"
    );
    let ttl = definition.ttl_in_days.expect("ttlInDays defaults to 30");
    assert!(
        (TTL_MIN_DAYS..=TTL_MAX_DAYS).contains(&ttl),
        "ttlInDays {ttl} out of bounds"
    );
    assert_eq!(
        known_identity_namespaces(&definition, &[]),
        Ok(()),
        "an empty list accepts any"
    );
    let _ = known_identity_namespaces(&definition, &STANDARD);

    // The emulator stores and echoes the canonical form: it is a fixed point of validation, and
    // PATCHing an audience with its own stored definition changes nothing that is immutable.
    let echoed = serde_json::to_value(&definition).expect("a definition serialises");
    assert_eq!(
        create_request(&echoed).as_ref(),
        Ok(&definition),
        "the canonical create body does not validate to itself"
    );
    if let Err(detail) = patch_request(&echoed, &definition) {
        panic!("the stored definition is refused as a PATCH of itself: {detail}");
    }
    patch(body, &definition);
}

fn patch(body: &Value, current: &CreateAudienceRequest) {
    let Ok(p) = patch_request(body, current) else {
        return;
    };
    check_patch(&p, current);
}

fn check_patch(p: &PatchAudienceRequest, current: &CreateAudienceRequest) {
    if let Some(ttl) = p.ttl_in_days {
        assert!(
            (TTL_MIN_DAYS..=TTL_MAX_DAYS).contains(&ttl),
            "patched ttlInDays {ttl} out of bounds"
        );
    }
    for f in p.fields.iter().flatten() {
        assert!(
            current.fields.iter().any(|c| c.name == f.name),
            "PATCH names a field {:?} the audience does not have",
            f.name
        );
    }
}

fn start_run(body: &Value) {
    let Ok(StartRunRequest {
        data_filter_start_time: start,
        data_filter_end_time: end,
        ..
    }) = start_run_request(body)
    else {
        return;
    };
    assert!(start >= 0, "negative dataFilterStartTime {start}");
    if let Some(end) = end {
        assert!(
            end >= start,
            "dataFilterEndTime {end} before dataFilterStartTime {start}"
        );
    }
}

fn namespace(text: &str) {
    let canonical = canonical_namespace(text);
    assert!(
        canonical.eq_ignore_ascii_case(text),
        "{text:?} canonicalised to {canonical:?}"
    );
}

/// The JSON bodies of the admin API (`PUT /_emulator/config`, `/faults`, `POST /credentials`,
/// `PATCH /_emulator/audiences/{id}`) and the state file, parsed as the emulator parses them.
fn admin_bodies(data: &[u8]) {
    if let Ok(settings) = serde_json::from_slice::<Settings>(data) {
        let v = settings.visibility();
        let _ = (
            settings.token_lifetime(),
            v.ais(0, 0, 0),
            v.lookup(i64::MIN, i64::MAX, 0),
        );
    }
    let _ = serde_json::from_slice::<Faults>(data);
    let _ = serde_json::from_slice::<CredentialSpec>(data);
    let _ = serde_json::from_slice::<AudienceMutation>(data);
    let _ = serde_json::from_slice::<Store>(data);
}
