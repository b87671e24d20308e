//! Every parser the AEP client runs on bytes that came from the network: the JSON response types
//! of `aep::types`, the error-body readers, `Retry-After`, the status classification and the IMS
//! token lifetime. The property is "no panic on any input", plus a few cheap invariants that the
//! client relies on (stated next to each assertion).

#![no_main]

use std::time::{Duration, Instant};

use audience_operator::aep::error::{Call, ErrorKind, classify_status, parse_retry_after, status_category};
use audience_operator::aep::ims::{lifetime_from_expires_in, refresh_margin};
use audience_operator::aep::types::{
    CreateAudienceResponse, ExtendTtlResponse, ExternalAudience, GatewayErrorBody, ImsErrorBody, ImsTokenResponse,
    Operation, Run, RunList, ServiceErrorBody, UpsAudience, UpsAudienceList, error_code_from_body,
    error_message_from_body, integer_from_value,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const CALLS: [Call; 10] = [
    Call::Token,
    Call::CreateAudience,
    Call::GetOperation,
    Call::StartRun,
    Call::GetRun,
    Call::ListRuns,
    Call::PatchAudience,
    Call::DeleteAudience,
    Call::GetAudience,
    Call::FindAudiences,
];

fuzz_target!(|data: &[u8]| {
    response_bodies(data);
    let code = error_body(data);
    let text = String::from_utf8_lossy(data);
    let retry_after = retry_after(&text);
    classification(data, code.as_deref(), &text, retry_after);
});

/// `serde_json::from_slice` into each response type, as `AepClient` and `TokenCache` do, then the
/// accessors the client calls on the result.
fn response_bodies(data: &[u8]) {
    if let Ok(r) = serde_json::from_slice::<CreateAudienceResponse>(data) {
        let _ = r.operation_details.map(|d| d.fields.len());
    }
    if let Ok(op) = serde_json::from_slice::<Operation>(data) {
        let _ = (op.status.is_terminal(), op.status.as_str().len(), op.status.to_string());
    }
    if let Ok(run) = serde_json::from_slice::<Run>(data) {
        let _ = (run.status.is_terminal(), run.status.to_string());
    }
    if let Ok(list) = serde_json::from_slice::<RunList>(data) {
        for run in &list.runs {
            let _ = run.status.is_terminal();
        }
    }
    let _ = serde_json::from_slice::<ExternalAudience>(data);
    if let Ok(a) = serde_json::from_slice::<UpsAudience>(data) {
        let _ = a.is_external();
    }
    if let Ok(list) = serde_json::from_slice::<UpsAudienceList>(data) {
        for a in &list.children {
            let _ = a.is_external();
        }
        if let Some(next) = list.page.as_ref().and_then(|p| p.next.as_ref()) {
            let _ = integer_from_value(next);
        }
    }
    let _ = serde_json::from_slice::<ExtendTtlResponse>(data);
    if let Ok(token) = serde_json::from_slice::<ImsTokenResponse>(data) {
        ims_token(&token);
    }
    let _ = serde_json::from_slice::<ImsErrorBody>(data);
    let _ = serde_json::from_slice::<GatewayErrorBody>(data);
    let _ = serde_json::from_slice::<ServiceErrorBody>(data);
    if let Ok(value) = serde_json::from_slice::<Value>(data) {
        let _ = integer_from_value(&value);
    }
}

/// What `TokenCache` does with a parsed token answer.
fn ims_token(token: &ImsTokenResponse) {
    let lifetime = lifetime_from_expires_in(token.expires_in);
    let margin = refresh_margin(lifetime);
    assert!(
        margin <= lifetime,
        "refresh margin {margin:?} exceeds lifetime {lifetime:?}"
    );
    assert!(
        margin <= Duration::from_secs(300),
        "refresh margin {margin:?} above 5 minutes"
    );
    // `TokenCache::token` computes `Instant::now() + lifetime - margin`, which panics on overflow.
    assert!(
        Instant::now().checked_add(lifetime.saturating_sub(margin)).is_some(),
        "expires_in {:?} overflows the refresh deadline",
        token.expires_in
    );
    // `Debug` must never show the token. Only checked where the token cannot appear by accident
    // (long, plain, and not a substring of the other fields or of the redaction marker).
    let t = &token.access_token;
    if t.len() >= 8
        && t.chars().all(|c| c.is_ascii_alphanumeric())
        && !token.token_type.contains(t.as_str())
        && !"[redacted]".contains(t.as_str())
    {
        let shown = format!("{token:?}");
        assert!(!shown.contains(t.as_str()), "Debug of ImsTokenResponse shows the token");
    }
}

/// `error_message_from_body` / `error_code_from_body` as the client runs them on every error body.
fn error_body(data: &[u8]) -> Option<String> {
    if let Some(message) = error_message_from_body(data) {
        // The message is a JSON string value of the body, trimmed and non-empty. A decoded JSON
        // string is never longer than its encoding. (No length cap is applied here: the 1 KiB cap
        // lives in `Error::from_status`.)
        assert!(!message.is_empty(), "empty error message");
        assert_eq!(message, message.trim(), "error message not trimmed");
        assert!(message.len() <= data.len(), "error message longer than the body");
    }
    let code = error_code_from_body(data);
    if let Some(code) = &code {
        assert!(code.len() <= data.len(), "error code longer than the body");
    }
    code
}

/// `parse_retry_after` on the input as header text (the client reads headers as UTF-8).
fn retry_after(text: &str) -> Option<Duration> {
    let now: jiff::Timestamp = "2025-06-01T12:00:00Z".parse().expect("valid timestamp");
    let parsed = parse_retry_after(text, now);
    if let Ok(seconds) = text.trim().parse::<u64>() {
        assert_eq!(parsed, Some(Duration::from_secs(seconds)), "delay-seconds {seconds}");
    }
    // Also at the edges of the timestamp range, where date arithmetic could overflow.
    let _ = parse_retry_after(text, jiff::Timestamp::MIN);
    let _ = parse_retry_after(text, jiff::Timestamp::MAX);
    parsed
}

/// `classify_status` for every call, with a status and code taken from the input.
fn classification(data: &[u8], body_code: Option<&str>, text: &str, retry_after: Option<Duration>) {
    let raw = match data {
        [.., a, b] => u16::from_le_bytes([*a, *b]),
        [a] => u16::from(*a),
        [] => 0,
    };
    // Mostly statuses in 0..600, sometimes any u16.
    let statuses = [if raw & 0x8000 == 0 { raw % 600 } else { raw }, raw];
    let codes = [None, body_code, Some(text.trim())];
    for status in statuses {
        let _ = status_category(status);
        for call in CALLS {
            for code in codes {
                let kind = classify_status(call, status, code, retry_after);
                let _ = (kind.as_str(), kind.to_string(), call.as_str());
                match kind {
                    ErrorKind::Retryable { retry_after: r } | ErrorKind::NotNow { retry_after: r } => {
                        assert_eq!(r, retry_after, "the Retry-After hint is carried unchanged");
                        // Never blindly retry a call that is not idempotent after a gateway error.
                        assert!(
                            call.is_idempotent() || !matches!(status, 500 | 502 | 504),
                            "{call:?} {status} classified as retryable"
                        );
                    }
                    _ => assert_eq!(kind.retry_after(), None),
                }
            }
        }
    }
}
